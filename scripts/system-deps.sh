#!/usr/bin/env bash
# System packages some tests need (network namespaces, a terminal multiplexer
# for the shell tests).  Installed only when missing and only when we can
# (root with apt); otherwise the tests that need them skip with a reason.
set -u
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# avahi for the test that checks our mDNS records are visible to avahi-browse.
command -v avahi-browse >/dev/null 2>&1 || need+=(avahi-utils avahi-daemon dbus)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
    || echo "warning: could not install ${need[*]}; tests needing them will skip"
else
  echo "note: ${need[*]} missing and not root; tests needing them will skip"
fi
exit 0
