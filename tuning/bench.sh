#!/usr/bin/env bash
# The end-to-end benchmark, one command: tuning/bench.sh [--quick] (see tuning/README.md).
set -euo pipefail
exec python3 "$(dirname "$0")/bench.py" "$@"
