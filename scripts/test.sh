#!/usr/bin/env bash
# The whole test suite: what the README's second command runs and what CI runs.
# Installs the third-party peers the interop tests need (Debian's coturn, PyPI's aioice) when
# they are missing, then runs every test of the workspace with the interop tests required
# (they fail instead of skipping when their peer is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
UTURN_REQUIRE_INTEROP=1 cargo test --workspace --locked
