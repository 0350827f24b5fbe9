#!/usr/bin/env bash
# Fetches the Apache Kafka broker jars (KRaft, single node) from Maven Central into a cache
# outside the repository, once. Prints the directory holding the jars (and nothing else on stdout).
#   KAFKA_VERSION  broker version (default: scripts/versions.json)
#   OUTBOXD_CACHE  cache root (default ~/.cache/outboxd)
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
version="${KAFKA_VERSION:-$(pinned kafka)}"
dest="$OUTBOXD_CACHE/kafka-$version"
# Bump when the dependency list below changes, so stale caches are refetched.
recipe="2"
if [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$recipe" ]; then
  echo "$dest/libs"
  exit 0
fi
rm -rf "$dest/libs" "$dest/.complete"
mkdir -p "$dest/libs"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Kafka 4.x logs through slf4j 1.7 -> log4j2 (log4j-api/log4j-core come with kafka_2.13);
# log4j-slf4j-impl is the slf4j-1.x binding the Kafka distribution ships. (slf4j-reload4j was
# the Kafka 3.x choice and would route all broker logs into an unconfigured log4j 1.)
# kafka-tools is not needed: kafka.tools.StorageTool lives in kafka_2.13 itself.
cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>outboxd</groupId><artifactId>kafka-fetch</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
(cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dest/libs" >&2)
echo "$recipe" >"$dest/.complete"
echo "$dest/libs"
