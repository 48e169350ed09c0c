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

# The images the real nodes run (tests/e2e/tests/real_nodes.rs): the debug binaries just
# built, wrapped (scripts/images.sh caches by content: seconds when nothing changed).
target=$(cargo metadata --format-version 1 --no-deps | "$PWD/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
t1=$(date +%s)
scripts/images.sh --bin-dir "$target/debug" >/dev/null
echo "test: images ready ($(( $(date +%s) - t1 ))s)"

py=$PWD/.venv/bin/python
sandbox() { PYTHONPATH=$PWD/tests/testbed "$py" -m sandbox "$@"; }
sandbox down >/dev/null 2>&1 || true
sandbox up --k8s-bin "$k8s_bin" --python "$py" --real-nodes 2 >/dev/null
trap 'sandbox down >/dev/null 2>&1 || true' EXIT

threads="${PGML_TEST_THREADS:-4}"
# Every test binary runs even when one fails (--no-fail-fast): a failure never hides the rest.
# Test binaries that mostly wait on the clock (schedule.rs watches five real minutes of
# cron slots; real_nodes.rs waits on containers, a slowed CreateSnapshots and restarts, on
# the real nodes, which no other test uses) run beside the others instead of after them.
beside=(schedule real_nodes)
rc=0
mkdir -p .sandbox/logs
out=.sandbox/logs/test-output.log
: >"$out"
pids=()
for t in "${beside[@]}"; do
  ( cargo test --no-fail-fast -p pgml-e2e --test "$t" -- --test-threads="$threads" >".sandbox/logs/test-$t.log" 2>&1 ) &
  pids+=($!)
done
others=()
for f in tests/e2e/tests/*.rs; do
  t=$(basename "$f" .rs)
  case " ${beside[*]} " in *" $t "*) ;; *) others+=(--test "$t") ;; esac
done
cargo test --no-fail-fast --workspace --exclude pgml-e2e -- --test-threads="$threads" 2>&1 | tee -a "$out" || rc=1
cargo test --no-fail-fast -p pgml-e2e "${others[@]}" -- --test-threads="$threads" 2>&1 | tee -a "$out" || rc=1
for i in "${!pids[@]}"; do
  t=${beside[$i]}
  if wait "${pids[$i]}"; then
    grep -E '^(test |running|test result)' ".sandbox/logs/test-$t.log" || true
  else
    rc=1
    echo "==== tests/e2e/tests/$t.rs failed:"; cat ".sandbox/logs/test-$t.log"
  fi
  cat ".sandbox/logs/test-$t.log" >>"$out"
done
if [ $rc -ne 0 ]; then
  for f in .sandbox/logs/*.log; do
    case "$f" in "$out" | .sandbox/logs/test-*.log) continue ;; esac
    echo "==== tail of $f"; tail -n 30 "$f"
  done
fi
# One line for the whole run, from every binary's `test result:` line (unit, e2e, doc tests).
read -r passed failed binaries < <(awk '
  /^test result: / { n++; for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
  END { print p + 0, f + 0, n + 0 }' "$out")
failing=$(grep -E '^    `(-p|--)' "$out" | tr -d '`' | sed 's/^ *//' | sort -u | paste -sd',' || true)
if [ -n "$failing" ]; then echo "test: failing test binaries: $failing"; fi
if [ $rc -ne 0 ] && [ "$failed" -eq 0 ]; then
  # A binary that did not build or crashed before reporting counts as one failure.
  failed=1
fi
echo "test: $binaries test targets ran (unit, e2e and doc tests), finished in $(( $(date +%s) - t0 ))s"
echo "test: $passed passed, $failed failed"
exit $rc
