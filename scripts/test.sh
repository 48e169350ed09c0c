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

rc=0
cargo test --workspace -- --test-threads="${PGML_TEST_THREADS:-4}" || rc=$?
if [ $rc -ne 0 ]; then
  for f in .sandbox/logs/*.log; do
    echo "==== tail of $f"; tail -n 30 "$f"
  done
fi
echo "test: finished in $(( $(date +%s) - t0 ))s"
exit $rc
