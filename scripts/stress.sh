#!/usr/bin/env bash
# The close/start race at 10,000 rounds on each backend, then the whole
# test suite with two CPU hogs beside it (as on a shared, loaded machine).
# Bounded: every part stops by itself; takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${OVERLAPPED_STRESS_ROUNDS:-10000}"
for backend in uring epoll; do
  echo "== close/start race, $rounds rounds, $backend"
  OVERLAPPED_BACKEND=$backend OVERLAPPED_STRESS_ROUNDS=$rounds \
    cargo test -q -p overlapped --lib driver::tests::an_operation_started_as_its_socket_closes
  OVERLAPPED_BACKEND=$backend OVERLAPPED_STRESS_ROUNDS=$rounds \
    cargo test -q -p overlapped --test close a_port_receive_started_while_another_thread_closes
done
echo "== the whole suite beside two CPU hogs"
cargo build -q --tests
hogs=()
for _ in 1 2; do
  timeout 1800 sh -c 'while :; do :; done' &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null || true' EXIT
for backend in uring epoll; do
  echo "-- $backend"
  OVERLAPPED_BACKEND=$backend cargo test -q
done
