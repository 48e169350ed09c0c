#!/usr/bin/env bash
# make chaos: install what is missing, start the sandbox, run the chaos test with the full
# profile (PGML_CHAOS_PROFILE=full: 50 operator kills, 50 agent kills, apiserver restarts,
# every EC2 fault kind several times; docs/design/chaos.md), stop the sandbox. The test writes
# bench/results/chaos.{json,md}. PGML_CHAOS_SEED=<n> replays a run (the seed is printed).
# PGML_CHAOS_PROFILE=ci runs the short profile that `make test` runs.
# With PGML_CHAOS_KEEP_SANDBOX=1 a sandbox already running in $PGML_SANDBOX is used and kept.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export PGML_CHAOS_PROFILE="${PGML_CHAOS_PROFILE:-full}"

t0=$(date +%s)
k8s_bin=$(scripts/deps.sh | tail -n1)
cargo build -p pgml-operator -p pgml-agent --bins
cargo test -p pgml-e2e --test chaos --no-run

py=$PWD/.venv/bin/python
sandbox() { PYTHONPATH=$PWD/tests/testbed "$py" -m sandbox "$@"; }
sbx="${PGML_SANDBOX:-$PWD/.sandbox}"
if [ "${PGML_CHAOS_KEEP_SANDBOX:-}" = 1 ] && [ -f "$sbx/sandbox.json" ]; then
  echo "chaos: using the sandbox running in $sbx"
else
  sandbox down >/dev/null 2>&1 || true
  sandbox up --k8s-bin "$k8s_bin" --python "$py" >/dev/null
  trap 'sandbox down >/dev/null 2>&1 || true' EXIT
fi

mkdir -p "$sbx/logs"
set +e
cargo test -p pgml-e2e --test chaos -- --nocapture flow_under_kills 2>&1 | tee "$sbx/logs/chaos-$PGML_CHAOS_PROFILE.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$PGML_CHAOS_PROFILE" = full ]; then
  ls -l bench/results/chaos.json bench/results/chaos.md 2>/dev/null || true
  # The plot and the index of bench/results (matplotlib from .venv).
  "$py" tests/bench/plot.py || rc=1
fi
echo "chaos: finished in $(( $(date +%s) - t0 ))s (log: $sbx/logs/chaos-$PGML_CHAOS_PROFILE.log)"
exit $rc
