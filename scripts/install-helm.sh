#!/usr/bin/env bash
# Builds the Helm CLI from the Go module proxy into a cache outside the repository, once, for
# test/integration/helm.test.ts. Needs Go; the first build takes a few minutes. Prints the path of
# the helm binary (and nothing else on stdout).
#   HELM_VERSION   helm release (default: scripts/versions.json)
#   OUTBOXD_CACHE  cache root (default ~/.cache/outboxd); the binary is $OUTBOXD_CACHE/bin/helm
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
version="${HELM_VERSION:-$(pinned helm)}"
bin="$OUTBOXD_CACHE/bin"
helm="$bin/helm"
# A binary that is there is kept, unless Go can tell it was built from another helm version.
if [ -x "$helm" ]; then
  if ! command -v go >/dev/null || go version -m "$helm" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+helm\.sh/helm/v3[[:space:]]+$version[[:space:]]"; then
    echo "$helm"
    exit 0
  fi
fi
command -v go >/dev/null || die "helm is missing and go is not installed to build it: install Go 1.24+ (https://go.dev/dl) or put a helm $version binary at $helm"
mkdir -p "$bin"
note "building helm $version into $bin with go (a few minutes the first time)"
# CGO off: a static binary, as the official helm releases are.
CGO_ENABLED=0 GOBIN="$bin" go install "helm.sh/helm/v3/cmd/helm@$version" >&2
"$helm" version >/dev/null
echo "$helm"
