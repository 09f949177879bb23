#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust, where it is missing (Debian packages; idempotent).
# CI (.ci/run) runs it before the test command; run it once on a new machine.
#   - python3-aiosmtpd: the real SMTP server the e-mail notification tests deliver to;
#   - python3: the stock HMAC check of webhook signatures (Python's hmac module);
#   - openapi-spec-validator (PyPI, in a venv under ~/.cache/locker-hub): the stock validator
#     tests/tests/openapi.rs runs on the gateway's /openapi.json (no Debian package for it);
#   - chromium + chromium-driver: the real browser the console tests (tests/src/browser.rs) drive
#     through WebDriver (/usr/bin/chromium, /usr/bin/chromedriver; $CHROMIUM / $CHROMEDRIVER override).
#   - socat + python3-serial(-asyncio) + python3-pymodbus: the RS-485 tests (tests/tests/rs485.rs) make
#     pseudo-terminal pairs with socat and read the RTU simulators with pymodbus in serial mode.
#   - mosquitto-clients + python3-paho-mqtt (1.6.1, MQTT 5 and 3.1.1): the stock clients the edge's
#     MQTT interop tests run (tests/src/interop.rs; paho under Debian's /usr/bin/python3 if the
#     python3 on PATH lacks it).
#   - nats-server (Debian's, 2.9): the NATS JetStream cluster the cluster-mode tests
#     (tests/tests/cluster.rs) start on loopback; $NATS_SERVER overrides the binary.
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

# --- OpenAPI validator (openapi-spec-validator, in its own venv) ---
# tests/tests/openapi.rs looks for it at $OPENAPI_SPEC_VALIDATOR, then in this venv, then on PATH.
openapi_venv="${XDG_CACHE_HOME:-$HOME/.cache}/locker-hub/openapi-validator"
if [ ! -x "$openapi_venv/bin/openapi-spec-validator" ]; then
    echo "openapi-spec-validator not found: installing it from PyPI into $openapi_venv" >&2
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    rm -rf "$openapi_venv"
    python3 -m venv "$openapi_venv"
    "$openapi_venv/bin/pip" install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7,<1'
fi
"$openapi_venv/bin/openapi-spec-validator" --version >/dev/null

# --- the console's browser tests (chromium + chromedriver) ---
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "chromium or chromedriver not found: installing Debian's chromium and chromium-driver" >&2
    apt_install chromium chromium-driver
fi
/usr/bin/chromedriver --version >/dev/null

# --- RS-485 / Modbus RTU tests (socat pty pairs, pymodbus serial client) ---
# tests/tests/rs485.rs uses /usr/bin/socat and Debian's /usr/bin/python3 with pyserial + pymodbus.
if ! command -v socat >/dev/null 2>&1 \
    || ! /usr/bin/python3 -c 'import serial, serial_asyncio; from pymodbus.client import ModbusSerialClient' >/dev/null 2>&1; then
    echo "socat or pymodbus not found: installing Debian's socat, python3-serial and python3-pymodbus" >&2
    apt_install socat python3 python3-serial python3-serial-asyncio python3-pymodbus
fi
/usr/bin/python3 -c 'from pymodbus.client import ModbusSerialClient' >/dev/null

# --- MQTT interop with stock clients (mosquitto_sub/mosquitto_pub, Python paho-mqtt) ---
if ! command -v mosquitto_sub >/dev/null 2>&1 || ! command -v mosquitto_pub >/dev/null 2>&1; then
    echo "mosquitto_sub/mosquitto_pub not found: installing Debian's mosquitto-clients" >&2
    apt_install mosquitto-clients
fi
if ! python3 -c 'import paho.mqtt.client' >/dev/null 2>&1 \
    && ! /usr/bin/python3 -c 'import paho.mqtt.client' >/dev/null 2>&1; then
    echo "paho-mqtt not found: installing Debian's python3-paho-mqtt" >&2
    apt_install python3 python3-paho-mqtt
fi
# (`mosquitto_sub --help` exits non-zero: its text is checked, not its status)
case "$(mosquitto_sub --help 2>&1 || true)" in
    *mqttv5*) ;;
    *) echo "mosquitto_sub has no MQTT 5 (-V mqttv5): mosquitto-clients >= 1.6 needed" >&2; exit 1 ;;
esac

# --- cluster mode (a three-node NATS JetStream cluster on loopback) ---
if [ -z "${NATS_SERVER:-}" ] && ! command -v nats-server >/dev/null 2>&1; then
    echo "nats-server not found: installing Debian's nats-server" >&2
    apt_install nats-server
fi
"${NATS_SERVER:-nats-server}" --version >/dev/null

echo "test dependencies: OK"
