#!/usr/bin/env bash
# Builds every kustomize base and overlay offline and validates the output against the
# Kubernetes schemas (strict: unknown fields are errors). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION="${K8S_VERSION:-1.32.0}"
if ! command -v kubectl >/dev/null; then
  echo "k8s: SKIPPED: kubectl is not installed (it renders the kustomizations)" >&2
  exit 0
fi
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
failed=0
passed=0
for dir in base/gateway base/redis base/agent overlays/example overlays/example-agent overlays/cert-manager; do
  name="${dir//\//-}"
  if ! kubectl kustomize "$dir" > "$out/$name.yaml"; then
    echo "k8s: FAIL: kubectl kustomize $dir" >&2
    failed=$((failed + 1))
    continue
  fi
  if kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$out/$name.yaml"; then
    echo "k8s: ok: $dir ($(grep -c '^kind:' "$out/$name.yaml") objects)"
    passed=$((passed + 1))
  else
    echo "k8s: FAIL: $dir does not validate against Kubernetes $K8S_VERSION" >&2
    failed=$((failed + 1))
  fi
done
echo "k8s: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
