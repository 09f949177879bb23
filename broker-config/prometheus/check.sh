#!/usr/bin/env bash
# Checks the Prometheus assets shipped in this folder with promtool:
#   - `promtool check rules` on the alerting rules (syntax, PromQL, templates),
#   - `promtool test rules` on their unit tests (each alert fires, and does not fire just under
#     its threshold),
#   - `promtool check config` on the example scrape configuration.
# Installs promtool (Debian's `prometheus` package) where it is missing. CI (.ci/run) runs it.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool not found: installing Debian's prometheus package" >&2
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y --no-install-recommends prometheus; then
        "${sudo[@]}" apt-get update
        "${sudo[@]}" apt-get install -y --no-install-recommends prometheus
    fi
    # The package starts a Prometheus server on :9090 where services run; checking needs
    # only promtool, so stop it again (ignored where there is no service manager).
    "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

promtool --version | head -n 1
promtool check rules alerts.yml
promtool test rules alerts.test.yml
promtool check config prometheus.yml
echo "prometheus assets: OK"
