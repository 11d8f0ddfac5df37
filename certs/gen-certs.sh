#!/usr/bin/env bash
# gen-certs.sh: a development PKI for audrey-federation's AMQP 1.0 mutual TLS.
#
# Usage: certs/gen-certs.sh OUTDIR SITE [SITE...]
#
# Writes into OUTDIR:
#   ca.pem / ca.key           development CA (reused if both already exist, so sites can be added later)
#   server.pem / server.key   broker certificate: CN=localhost, SAN DNS:localhost, IP:127.0.0.1
#   <site>.pem / <site>.key   client certificate per site: CN=<site>, EKU clientAuth
# Existing pairs are kept (the script is safe to re-run to add sites); delete a pair to reissue it.
# Keys are written with mode 0600. For development and tests only: see certs/README.md.
set -euo pipefail
umask 077

usage() {
    echo "usage: $0 OUTDIR SITE [SITE...]" >&2
    exit 2
}

[ "$#" -ge 2 ] || usage
out=$1
shift

command -v openssl >/dev/null || { echo "$0: openssl not found in PATH" >&2; exit 1; }

for site in "$@"; do
    if ! [[ "$site" =~ ^[A-Za-z0-9_-]+$ ]]; then
        echo "$0: site id '$site' must be ASCII letters, digits, '-' or '_'" >&2
        exit 2
    fi
    case "$site" in
        ca | server) echo "$0: site id '$site' is reserved" >&2; exit 2 ;;
    esac
done

mkdir -p "$out"
days=${CERT_DAYS:-825}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# new_key FILE: a P-256 key in PKCS#8 PEM, mode 0600.
new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

# issue NAME CN EXTFILE: key + certificate signed by the CA; an existing pair is kept
# (rotate by deleting it first, see README.md).
issue() {
    local name=$1 cn=$2 ext=$3
    if [ -f "$out/$name.pem" ] && [ -f "$out/$name.key" ]; then
        echo "keeping $out/$name.pem $out/$name.key (CN=$cn)"
        return
    fi
    new_key "$out/$name.key"
    openssl req -new -key "$out/$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
    openssl x509 -req -in "$tmp/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
        -CAcreateserial -CAserial "$tmp/ca.srl" -days "$days" -sha256 \
        -extfile "$ext" -out "$out/$name.pem" 2>/dev/null
    chmod 644 "$out/$name.pem"
    echo "wrote $out/$name.pem $out/$name.key (CN=$cn)"
}

if [ -f "$out/ca.pem" ] && [ -f "$out/ca.key" ]; then
    echo "reusing CA $out/ca.pem"
else
    new_key "$out/ca.key"
    # A unique name per CA, so two development PKIs are never mistaken for each other.
    ca_id=$(openssl rand -hex 4)
    cat >"$tmp/ca.ext" <<CAEXT
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = audrey-federation development CA $ca_id
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CAEXT
    openssl req -new -x509 -key "$out/ca.key" -config "$tmp/ca.ext" -days "$days" -sha256 \
        -out "$out/ca.pem"
    chmod 644 "$out/ca.pem"
    echo "wrote $out/ca.pem $out/ca.key (new development CA)"
fi

cat >"$tmp/server.ext" <<SRVEXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
SRVEXT
issue server localhost "$tmp/server.ext"

cat >"$tmp/client.ext" <<CLIEXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
CLIEXT
for site in "$@"; do
    issue "$site" "$site" "$tmp/client.ext"
done
