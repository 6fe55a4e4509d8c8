#!/usr/bin/env bash
# Runs the loom models of the driver's lock-free protocols (see
# crates/overlapped/src/driver/sync/mod.rs): every interleaving of each
# model, up to LOOM_MAX_PREEMPTIONS preemptions (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
# A target directory of its own: the loom build differs from the normal
# one in every crate, and would otherwise evict it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"
cargo test -p overlapped --lib --release -- loom_models "$@"
