#!/usr/bin/env bash
# make bench: install what is missing, start the sandbox, run each benchmark binary of
# tests/bench (or those named in $PGML_BENCH), stop the sandbox. Results: bench/results/.
# Benchmarks are not tests: they measure, repeat, and write medians with min and max; then
# tests/bench/plot.py draws bench/results/<name>.png and indexes the tables in bench/results/README.md.
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
# provision spreads 200 pools of 4 volumes, 7 per node (m7i.xlarge attaches 32 EBS
# volumes): 29 nodes, the four of the sandbox and 25 more.
case " $benches " in
  *" provision "*) sandbox nodes-add "${PGML_BENCH_EXTRA_NODES:-25}" >/dev/null ;;
esac

rc=0
for b in $benches; do
  echo "bench: $b"
  cargo run -q -p pgml-bench --bin "$b" || { rc=1; echo "bench: $b failed (logs in .sandbox/logs)"; }
done
# A PNG per bench (bench/results/<name>.png) and the index of the latest tables
# (bench/results/README.md): matplotlib from .venv (tests/testbed/requirements.txt).
"$py" tests/bench/plot.py || rc=1
ls -l bench/results/ 2>/dev/null || true
exit $rc
