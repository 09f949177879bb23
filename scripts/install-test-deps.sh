#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, where it is missing (Debian packages; idempotent).
# CI (.ci/run) runs it before the test command; run it once on a new machine.
#   - python3-aiosmtpd: the real SMTP server the e-mail notification tests deliver to;
#   - python3: the stock HMAC check of webhook signatures (Python's hmac module).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# apt_install PACKAGE... : installs the packages, refreshing the index once if needed.
apt_install() {
    if ! "${sudo[@]}" apt-get install -y --no-install-recommends "$@"; then
        "${sudo[@]}" apt-get update
        "${sudo[@]}" apt-get install -y --no-install-recommends "$@"
    fi
}

# --- e-mail notifications (aiosmtpd) ---
# (the tests use python3 from PATH, else Debian's /usr/bin/python3: either having it is enough)
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1 \
    && ! /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
    echo "aiosmtpd not found: installing Debian's python3-aiosmtpd" >&2
    apt_install python3 python3-aiosmtpd
fi

echo "test dependencies: OK"
