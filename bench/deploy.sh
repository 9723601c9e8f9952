#!/usr/bin/env bash
# Deploy timings (issue 3): git push start to the new version answering through the router, for
# a Python app's (a) first deploy, (b) code-only change, (c) changed requirements, medians of
# RUNS runs (default 5), with pip and with uv, beside piku's per-push pip step measured in
# the same run.
# Loopback only: a private sshd and daemon on free ports; PyPI for the first download of flask.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-5}
cargo build --release --quiet --bin berth
cargo build --release --quiet -p berth-testkit --bin bench-deploy
# With uv installed in target/test-tools (scripts/test does that), the uv build is timed too.
exec target/release/bench-deploy "$PWD/target/release/berth" "$runs" "$PWD/target/test-tools/bin"
