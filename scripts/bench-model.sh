#!/usr/bin/env bash
# Model service benchmark (no servers needed): training time of one year of hourly history for 50
# categories (default settings, and the whole year with every row), and forecast request latency
# p50/p99 on loopback under concurrent load, printed next to the /healthz baseline of the same run
# (the HTTP stack without forecast work). Aims: training < 60 s, forecast p99 < 5 ms.
#
#   bash scripts/bench-model.sh [CONNECTIONS] [REQUESTS]      (default 16 and 40000)
#
# The machine may be shared (2 cores, other builds): the load average is printed with the figures;
# the load generator and the server run in one process on one core each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export BENCH_CONNECTIONS=${1:-16} BENCH_REQUESTS=${2:-40000}
cargo build --release --quiet -p cartstream-model-service --example bench
echo "load before: $(uptime | sed 's/.*load average/load average/')   cores: $(nproc)"
./target/release/examples/bench
echo "load after:  $(uptime | sed 's/.*load average/load average/')"
