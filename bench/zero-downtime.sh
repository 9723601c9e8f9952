#!/usr/bin/env bash
# Zero-downtime figures (issue 6): requests sent, failed and the slowest latency during N
# redeploys (default 10) of an app with two web instances under wrk, and the time of a
# rollback from the command to the old version answering. Loopback only; wrk runs a fixed time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v wrk >/dev/null || { echo "zero-downtime: wrk is needed (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet --bin berth
cargo build --release --quiet -p berth-testkit --bin bench-zero
exec target/release/bench-zero "$PWD/target/release/berth" "${1:-10}"
