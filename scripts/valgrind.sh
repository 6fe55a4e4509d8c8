#!/usr/bin/env bash
# Runs the behaviour tests that drop, cancel and close with operations in
# flight under valgrind's memcheck; any error fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
# valgrind cannot follow a thread blocked in io_uring_enter (the others stop
# running), so reapers sleep in poll(2) here; `cargo test` covers the default.
export OVERLAPPED_WAIT=poll
# The close/start race, at fewer rounds than in `cargo test`: each round
# costs a hundred times more under valgrind.
export OVERLAPPED_STRESS_ROUNDS=100
for test in cancel close hooks recv udp event routine port session; do
  binary=$(cargo test -p overlapped --test "$test" --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -n 1)
  echo "== valgrind: $test"
  valgrind --error-exitcode=1 --leak-check=no -q "$binary" --test-threads=1 -q
done
