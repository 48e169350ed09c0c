#!/usr/bin/env bash
# make test: install what is missing, check the generated CRDs, start the sandbox, run every
# test (unit and against the sandbox), stop the sandbox. The sandbox's logs stay in
# .sandbox/logs; on failure their tails are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

t0=$(date +%s)
k8s_bin=$(scripts/deps.sh | tail -n1)
echo "test: dependencies ready ($(( $(date +%s) - t0 ))s)"

make -s crds-check
cargo build --workspace --all-targets
cargo test --workspace --no-run -q 2>/dev/null || cargo test --workspace --no-run

py=$PWD/.venv/bin/python
sandbox() { PYTHONPATH=$PWD/tests/testbed "$py" -m sandbox "$@"; }
sandbox down >/dev/null 2>&1 || true
sandbox up --k8s-bin "$k8s_bin" --python "$py" >/dev/null
trap 'sandbox down >/dev/null 2>&1 || true' EXIT

threads="${PGML_TEST_THREADS:-4}"
# Test binaries that mostly wait on the clock (schedule.rs watches five real minutes of
# cron slots) run beside the others instead of after them; everything else runs one binary
# after another, as `cargo test --workspace` would.
beside=(schedule)
rc=0
mkdir -p .sandbox/logs
pids=()
for t in "${beside[@]}"; do
  ( cargo test -p pgml-e2e --test "$t" -- --test-threads="$threads" >".sandbox/logs/test-$t.log" 2>&1 ) &
  pids+=($!)
done
others=()
for f in tests/e2e/tests/*.rs; do
  t=$(basename "$f" .rs)
  case " ${beside[*]} " in *" $t "*) ;; *) others+=(--test "$t") ;; esac
done
cargo test --workspace --exclude pgml-e2e -- --test-threads="$threads" || rc=$?
cargo test -p pgml-e2e "${others[@]}" -- --test-threads="$threads" || rc=$?
for i in "${!pids[@]}"; do
  t=${beside[$i]}
  if wait "${pids[$i]}"; then
    grep -E '^(test |running|test result)' ".sandbox/logs/test-$t.log" || true
  else
    rc=1
    echo "==== tests/e2e/tests/$t.rs failed:"; cat ".sandbox/logs/test-$t.log"
  fi
done
if [ $rc -ne 0 ]; then
  for f in .sandbox/logs/*.log; do
    echo "==== tail of $f"; tail -n 30 "$f"
  done
fi
echo "test: finished in $(( $(date +%s) - t0 ))s"
exit $rc
