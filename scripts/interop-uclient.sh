#!/usr/bin/env bash
# Runs the interoperability test with coturn's turnutils_uclient (tests/interop.rs), installing
# coturn first when it is missing, and prints every uclient command with its output.
# UTURN_REQUIRE_INTEROP=1 turns a missing tool into a failure instead of a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
UTURN_REQUIRE_INTEROP=1 exec cargo test -p uturn --test interop -- --nocapture "$@"
