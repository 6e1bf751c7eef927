#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every test: lint, types, then pytest on 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
# The drill on 500 pairs (125 per controller: enough for per-pair costs to show), so its
# summary table is in the log of every test run.
.venv/bin/remcopy demo --pairs 500
exec .venv/bin/pytest -n 2 "$@"
