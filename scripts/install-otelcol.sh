#!/usr/bin/env bash
# Builds a minimal OpenTelemetry Collector (an OTLP receiver and a file exporter, from
# scripts/otelcol/main.go) from the Go module proxy into a cache outside the repository, once,
# for test/integration/otel-collector.test.ts. Needs Go; the first build takes a minute or two.
# Prints the path of the binary (and nothing else on stdout).
#   OTELCOL_VERSION  collector release (default: scripts/versions.json; core and contrib modules
#                    are kept at this one release, as the collector requires)
#   OUTBOXD_CACHE    cache root (default ~/.cache/outboxd); the binary is $OUTBOXD_CACHE/bin/outboxd-otelcol
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
version="${OTELCOL_VERSION:-$(pinned otelcol)}"
bin="$OUTBOXD_CACHE/bin"
otelcol="$bin/outboxd-otelcol"
# A binary that is there is kept while it was built from this release and this main.go (its stamp).
stamp="$version $(sha256sum "$OUTBOXD_ROOT/scripts/otelcol/main.go" | cut -c1-64)"
if [ -x "$otelcol" ] && [ "$(cat "$otelcol.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$otelcol"
  exit 0
fi
command -v go >/dev/null || die "the OpenTelemetry Collector is missing and go is not installed to build it: install Go 1.24+ (https://go.dev/dl) or put a collector with the otlp receiver and the file exporter at $otelcol"
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
note "building an OpenTelemetry Collector $version (otlp receiver, file exporter) into $bin with go (a minute or two the first time)"
cp "$OUTBOXD_ROOT/scripts/otelcol/main.go" "$work/"
(
  cd "$work"
  go mod init outboxd.test/otelcol >/dev/null 2>&1
  go get "go.opentelemetry.io/collector/otelcol@$version" \
    "go.opentelemetry.io/collector/receiver/otlpreceiver@$version" \
    "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@$version" >&2
  # The config providers, at the release of confmap that the collector just pulled in.
  confmap="$(go list -m -f '{{.Version}}' go.opentelemetry.io/collector/confmap)"
  go get "go.opentelemetry.io/collector/confmap/provider/fileprovider@$confmap" \
    "go.opentelemetry.io/collector/confmap/provider/envprovider@$confmap" >&2
  go mod tidy >&2
  # CGO off: a static binary, as the official collector releases are.
  CGO_ENABLED=0 go build -trimpath -o "$otelcol" . >&2
) || die "building the OpenTelemetry Collector $version failed (see above)"
"$otelcol" --version >/dev/null
echo "$stamp" >"$otelcol.stamp"
echo "$otelcol"
