#!/usr/bin/env bash
# `npm run demo`: builds outboxd and runs it end to end against a throwaway Postgres with the
# stdout sink (scripts/demo.mjs), on a supported Node.js (installed into the cache if the
# machine's is older; see scripts/lib/node.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source scripts/lib/node.sh
ensure_node
npm run -s build
exec node scripts/demo.mjs "$@"
