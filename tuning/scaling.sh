#!/usr/bin/env bash
# Multi-core scaling, one command: tuning/scaling.sh [--workers 1,2,4,8,16] [--quick] (see tuning/README.md).
set -euo pipefail
exec python3 "$(dirname "$0")/scaling.py" "$@"
