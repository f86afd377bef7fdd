#!/usr/bin/env bash
# ensure-debs.sh PKG...: install (apt-get) only those Debian packages that are not installed.
# Used by `make deps` (everything the tests use) and `make demo` (what the demo needs), so a
# fresh Debian 12 machine with only a Rust toolchain can run either.
set -euo pipefail
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "all Debian packages present: $*"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
    exit 1
fi
echo "installing missing Debian packages: ${missing[*]}"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
