#!/usr/bin/env bash
# Installs confluent-kafka (Python; its wheel bundles librdkafka) into a venv outside the
# repository, once: test/integration/kafka-compression.test.ts reads every compressed payload back
# with it, a Kafka client independent of kafkajs and of outboxd's codecs. Prints the venv's python
# (and nothing else on stdout).
#   OUTBOXD_CACHE  cache root (default ~/.cache/outboxd); the venv is $OUTBOXD_CACHE/venv-confluent-kafka-<version>
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
version="$(pinned confluentKafka)"
venv="$OUTBOXD_CACHE/venv-confluent-kafka-$version"
python="$venv/bin/python"
if [ -x "$python" ] && "$python" -c 'import confluent_kafka' 2>/dev/null; then
  echo "$python"
  exit 0
fi
command -v python3 >/dev/null || die "python3 is missing: install it (Debian: sudo apt-get install -y python3 python3-venv)"
rm -rf "$venv"
mkdir -p "$OUTBOXD_CACHE"
note "installing confluent-kafka $version into $venv"
if ! python3 -m venv "$venv" >&2; then
  # Debian's python3 needs python3-venv for ensurepip; root can install it.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    rm -rf "$venv"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null 2>&1 &&
      python3 -m venv "$venv" >&2
  fi
  [ -x "$python" ] || die "python3 -m venv failed: install python3-venv (sudo apt-get install -y python3-venv)"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "confluent-kafka==$version" >&2 || die "pip install confluent-kafka==$version failed"
"$python" -c 'import confluent_kafka' || die "confluent-kafka is installed but does not import"
echo "$python"
