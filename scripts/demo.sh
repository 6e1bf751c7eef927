#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the remcopy demo. Arguments go to `remcopy demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/remcopy demo "$@"
