#!/usr/bin/python3
"""Reads one message from a broker queue with Qpid Proton (an AMQP 1.0 client independent
of ours) over mutual TLS with SASL EXTERNAL, and prints every part of it as one JSON object
on stdout: header, properties with their AMQP types, application properties with their AMQP
types, and the body sections. The wire-format test compares that to docs/wire-format.md.

usage: inspect_message.py URL ADDRESS CA CERT KEY [TIMEOUT_SECONDS]
"""
import json
import sys

from proton import SSLDomain, symbol, ubyte, ulong
from proton.utils import BlockingConnection


def typed(value):
    """A value and the AMQP type Proton decoded it as."""
    if isinstance(value, bool):
        return {"type": "boolean", "value": value}
    for cls, name in ((ubyte, "ubyte"), (ulong, "ulong"), (symbol, "symbol")):
        if isinstance(value, cls):
            return {"type": name, "value": int(value) if name != "symbol" else str(value)}
    if isinstance(value, str):
        return {"type": "string", "value": value}
    if isinstance(value, int):
        return {"type": "int(other)", "value": value}
    if isinstance(value, (bytes, memoryview)):
        return {"type": "binary", "value": bytes(value).decode("utf-8", "replace")}
    return {"type": type(value).__name__, "value": repr(value)}


def main():
    url, address, ca, cert, key = sys.argv[1:6]
    timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 20.0
    ssl = SSLDomain(SSLDomain.MODE_CLIENT)
    ssl.set_trusted_ca_db(ca)
    ssl.set_credentials(cert, key, None)
    ssl.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    conn = BlockingConnection(url, ssl_domain=ssl, allowed_mechs="EXTERNAL", timeout=timeout)
    try:
        receiver = conn.create_receiver(address, credit=1)
        msg = receiver.receive(timeout=timeout)
        receiver.accept()
    finally:
        conn.close()
    body = msg.body
    print(json.dumps({
        "durable": msg.durable,
        "id": typed(msg.id),
        "subject": typed(msg.subject),
        "content_type": typed(msg.content_type),
        "creation_time": msg.creation_time,
        "properties": {k: typed(v) for k, v in (msg.properties or {}).items()},
        "body_type": type(body).__name__,
        "body": bytes(body).decode("utf-8") if isinstance(body, (bytes, memoryview)) else repr(body),
    }))


if __name__ == "__main__":
    main()
