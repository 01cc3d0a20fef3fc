#!/bin/sh
# Browse _ppcp._tcp with avahi-browse from inside a network namespace.
# Run through `ip netns exec`, which gives this script a private mount
# namespace: a tmpfs on /run keeps the private D-Bus and avahi-daemon (and
# their pid files and sockets) away from the host's.
set -eu
mount -t tmpfs tmpfs /run
mkdir -p /run/dbus
dbus-daemon --system --fork
log=/run/avahi.log
avahi-daemon --no-drop-root --no-chroot --no-rlimits --no-proc-title >"$log" 2>&1 &
avahi=$!
trap 'kill $avahi 2>/dev/null; kill $(cat /run/dbus/pid) 2>/dev/null' EXIT
# Bounded wait for the daemon's ready line.
i=0
until grep -q "Server startup complete" "$log"; do
  i=$((i + 1))
  if [ $i -gt 100 ]; then echo "avahi-daemon did not start:" >&2; cat "$log" >&2; exit 3; fi
  sleep 0.05
done
echo "avahi ready" >&2
# Resolve, parseable output, terminate once the cache is exhausted ("all for now").
timeout "${1:-10}" avahi-browse --resolve --parsable --terminate _ppcp._tcp
