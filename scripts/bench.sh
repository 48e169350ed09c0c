#!/usr/bin/env bash
# make bench: install what is missing, start the sandbox, run each benchmark binary of
# tests/bench (or those named in $PGML_BENCH), stop the sandbox. Results: bench/results/.
# Benchmarks are not tests: they measure, repeat, and write medians with min and max.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

k8s_bin=$(scripts/deps.sh | tail -n1)
cargo build --workspace --bins
benches=${PGML_BENCH:-$(cd tests/bench/src/bin && ls *.rs | sed 's/\.rs$//' | tr '\n' ' ')}

py=$PWD/.venv/bin/python
sandbox() { PYTHONPATH=$PWD/tests/testbed "$py" -m sandbox "$@"; }
sandbox down >/dev/null 2>&1 || true
sandbox up --k8s-bin "$k8s_bin" --python "$py" >/dev/null
trap 'sandbox down >/dev/null 2>&1 || true' EXIT

rc=0
for b in $benches; do
  echo "bench: $b"
  cargo run -q -p pgml-bench --bin "$b" || { rc=1; echo "bench: $b failed (logs in .sandbox/logs)"; }
done
ls -l bench/results/ 2>/dev/null || true
exit $rc
