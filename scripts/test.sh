#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs format
# and lint checks and every test. Exits non-zero on any failure. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

apt_ready=""
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "missing: $* (install them, or run as root so this script can)" >&2
    exit 1
  fi
  if [ -z "$apt_ready" ]; then
    apt-get update -qq
    apt_ready=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
command -v curl >/dev/null || { say "installing curl"; apt_install curl ca-certificates; }
command -v redis-server >/dev/null || { say "installing redis-server"; apt_install redis-server; }
# Custom-domain tests run a real DNS server whose records they change.
command -v dnsmasq >/dev/null || { say "installing dnsmasq"; apt_install dnsmasq-base; }
# ACME tests get certificates from pebble, the ACME test CA.
command -v pebble >/dev/null || { say "installing pebble"; apt_install pebble; }
# kubectl (1.30+, for its WebSocket exec and port-forward) drives tests/kubectl.rs; Debian's own
# kubernetes-client is too old, so only a configured Kubernetes apt source can supply it.
command -v kubectl >/dev/null || { say "installing kubectl"; ( apt_install kubectl ) 2>/dev/null || say "kubectl unavailable: the kubectl tests will be skipped"; }
# The admin API's OpenAPI document is exercised by schemathesis (a property-based API tester).
python3 -m schemathesis.cli --version >/dev/null 2>&1 || { say "installing schemathesis"; python3 -m pip install --quiet --disable-pip-version-check schemathesis; }
# Hundreds of concurrent upgraded sessions in one test process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

say "k8s manifests"
./k8s/validate.sh
