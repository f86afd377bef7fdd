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

# Tests start the services they need (a registry, etcd) themselves, inside their own
# namespaces. A package's own service, which Debian enables and starts at install on a
# systemd machine (docker-registry would listen on :5000 on every address), is stopped
# and disabled again: only for packages installed just now, never one the machine had.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    for pkg in "${missing[@]}"; do
        for unit in $(dpkg-query -L "$pkg" 2>/dev/null | grep -E '^/lib/systemd/system/[^/]+\.service$' || true); do
            unit="$(basename "$unit")"
            echo "disabling $unit (installed with $pkg; tests run their own instance)"
            systemctl disable --now "$unit" || true
        done
    done
fi
