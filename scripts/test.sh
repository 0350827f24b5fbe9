#!/usr/bin/env bash
# `npm test`: installs what the suite needs (scripts/prereqs.sh), then runs the whole suite on a
# supported Node.js: type check, lint, build, vitest (unit, integration and fault tests against
# real services), and the benchmark smoke run. Extra arguments go to vitest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
outboxd_prereqs
node --version >&2
npm run -s typecheck
npm run -s lint
npm run -s build
npx vitest run "$@"
npm run -s bench:smoke
