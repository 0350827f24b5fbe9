# Shared by the scripts in scripts/: the cache root, pinned versions, and one-line failures.
# Sourced, never run.
OUTBOXD_ROOT="${OUTBOXD_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
OUTBOXD_CACHE="${OUTBOXD_CACHE:-$HOME/.cache/outboxd}"
export OUTBOXD_CACHE

# pinned KEY: a value from scripts/versions.json ("node", "kafka", "postgres.15", ...).
pinned() {
  local key="$1" file="$OUTBOXD_ROOT/scripts/versions.json"
  # Any node can read JSON; this runs before the right node is on PATH.
  node -e 'let v = require(process.argv[1]); for (const k of process.argv[2].split(".")) v = v?.[k];
           if (typeof v !== "string") process.exit(1); process.stdout.write(v)' "$file" "$key" ||
    die "scripts/versions.json has no version for $key"
}

# die MESSAGE: one line on stderr naming what is wrong, then exit 1.
die() {
  printf 'outboxd prereqs: %s\n' "$*" >&2
  exit 1
}

note() { printf '[prereqs] %s\n' "$*" >&2; }
