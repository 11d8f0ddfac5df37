#!/bin/sh
# Creates the audrey-federation system user and group, the state directory, the directory for
# key and certificate files, and lets the group read the config. Idempotent; the .rpm's
# post-install script and, in the same words, the body of the .deb's postinst.
# DPKG_ROOT (set by dpkg --root, or by the packaging test) is the root to act in.
set -e
root="${DPKG_ROOT:-}"
name=audrey-federation
if ! grep -q "^$name:" "$root/etc/passwd" 2>/dev/null; then
    useradd ${root:+--prefix "$root"} --system --user-group \
        --home-dir /var/lib/$name --no-create-home \
        --shell /usr/sbin/nologin --comment "Audrey federation sidecar" $name
fi
ids=$(awk -F: -v n="$name" '$1 == n { print $3 ":" $4 }' "$root/etc/passwd")
install -d -m 0700 "$root/var/lib/$name"
chown "$ids" "$root/var/lib/$name"
# Keys and certificates (docs/install.md): root writes, the service's group reads.
if [ ! -d "$root/etc/$name/tls" ]; then
    install -d -m 0750 "$root/etc/$name/tls"
    chown "0:${ids#*:}" "$root/etc/$name/tls"
fi
if [ -f "$root/etc/$name/config.toml" ]; then
    chgrp "${ids#*:}" "$root/etc/$name/config.toml"
    chmod 0640 "$root/etc/$name/config.toml"
fi
