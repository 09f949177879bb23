#!/bin/sh
# Installs Debian's Mosquitto broker (for `locker-sim bench`'s side-by-side runs) if missing.
# The benchmark writes its own mosquitto.conf (TLS, require_certificate, use_identity_as_username)
# and starts mosquitto itself; the system service is not needed and is not enabled here.
set -eu
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    echo "mosquitto already installed: $( (command -v mosquitto || echo /usr/sbin/mosquitto) )"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends mosquitto
# Debian starts the packaged service on port 1883; the benchmark does not use it.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now mosquitto 2>/dev/null || true; fi
echo "installed: $(/usr/sbin/mosquitto -h 2>/dev/null | head -1 || true)"
