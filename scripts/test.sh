#!/usr/bin/env bash
# `make test`: lint, then every test of the workspace, integration tests against the real local stack
# (started here if it is not running; left running afterwards, `make down` stops it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "local stack"
bash scripts/stack.sh up

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
# Binaries first: end-to-end tests run them.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\nall tests: %d passed, %d failed, %d skipped\n", p, f, s; exit (f > 0) }' target/test-output.txt
