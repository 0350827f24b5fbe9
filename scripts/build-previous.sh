#!/usr/bin/env bash
# Builds the previous release of outboxd (scripts/versions.json previousRelease.commit) from this
# repository's own history, once, into a cache outside the repository, for the upgrade test
# (test/faults/upgrade.test.ts). It runs with this checkout's node_modules: the previous release
# needs no dependency this one lacks. Prints the path of its dist/main.js (and nothing else on stdout).
#   OUTBOXD_CACHE  cache root (default ~/.cache/outboxd); the build is $OUTBOXD_CACHE/outboxd-<commit>
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
commit="$(pinned previousRelease.commit)"
dir="$OUTBOXD_CACHE/outboxd-$commit"
main="$dir/dist/main.js"
if [ -f "$main" ]; then
  # Its dependencies are this checkout's (the cache may have been built from another one).
  ln -sfn "$OUTBOXD_ROOT/node_modules" "$dir/node_modules"
  echo "$main"
  exit 0
fi
git -C "$OUTBOXD_ROOT" cat-file -e "$commit^{commit}" 2>/dev/null ||
  die "commit $commit (the previous release, for the upgrade test) is not in this clone's history: fetch it (git fetch --unshallow)"
note "building the previous release ($commit) into $dir"
rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
git -C "$OUTBOXD_ROOT" archive "$commit" src package.json tsconfig.json tsconfig.build.json | tar -x -C "$dir.tmp"
ln -s "$OUTBOXD_ROOT/node_modules" "$dir.tmp/node_modules"
(cd "$dir.tmp" && node "$OUTBOXD_ROOT/node_modules/typescript/bin/tsc" -p tsconfig.build.json) >&2
rm -rf "$dir" && mv "$dir.tmp" "$dir"
echo "$main"
