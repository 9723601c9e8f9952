#!/usr/bin/env bash
# Supervision figures (issue 4): time from SIGKILL of a web instance to its next answer
# through the router, and memory with 1, 10 and 100 running apps: Berth's daemon and helpers
# beside supervisord running the same processes, in one run. Loopback only; bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet --bin berth
cargo build --release --quiet -p berth-testkit --bin bench-supervise
if [ ! -d target/test-tools/supervisor ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target target/test-tools supervisor
fi
exec target/release/bench-supervise "$PWD/target/release/berth" "$PWD/target/test-tools"
