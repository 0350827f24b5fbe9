#!/usr/bin/env bash
# Builds the Helm CLI from the Go module proxy into a cache outside the repository, once, for
# test/integration/helm.test.ts. Needs Go; the first build takes a few minutes. Prints the path of
# the helm binary (and nothing else on stdout).
#   HELM_VERSION   helm release (default v3.22.0)
#   OUTBOXD_CACHE  cache root (default ~/.cache/outboxd); the binary is $OUTBOXD_CACHE/bin/helm
set -euo pipefail
version="${HELM_VERSION:-v3.22.0}"
cache="${OUTBOXD_CACHE:-$HOME/.cache/outboxd}"
bin="$cache/bin"
helm="$bin/helm"
# A binary that is there is kept, unless Go can tell it was built from another helm version.
if [ -x "$helm" ]; then
  if ! command -v go >/dev/null || go version -m "$helm" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+helm\.sh/helm/v3[[:space:]]+$version[[:space:]]"; then
    echo "$helm"
    exit 0
  fi
fi
command -v go >/dev/null || { echo "install-helm: go is needed to build helm $version (or put a helm binary at $helm)" >&2; exit 1; }
mkdir -p "$bin"
echo "install-helm: building helm $version into $bin (a few minutes the first time)" >&2
# CGO off: a static binary, as the official helm releases are.
CGO_ENABLED=0 GOBIN="$bin" go install "helm.sh/helm/v3/cmd/helm@$version" >&2
"$helm" version >/dev/null
echo "$helm"
