#!/bin/sh
# Creates the audrey-federation system user and group, the state directory, and lets the
# group read the config. Idempotent; shared by the .deb postinst and the .rpm scripts.
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
if [ -f "$root/etc/$name/config.toml" ]; then
    chgrp "${ids#*:}" "$root/etc/$name/config.toml"
    chmod 0640 "$root/etc/$name/config.toml"
fi
