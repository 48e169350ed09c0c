#!/usr/bin/env bash
# Sweeps chaos seeds: runs the chaos test once per seed on one sandbox and
# prints a line per seed (seed, result, violations, seconds), then a summary line. The seeds
# are random unless given: scripts/chaos-sweep.sh [COUNT] [SEED...]
#   PGML_CHAOS_PROFILE=ci scripts/chaos-sweep.sh 30      # 30 random seeds, the CI profile
#   PGML_CHAOS_PROFILE=full scripts/chaos-sweep.sh 5
# Each seed's log is kept in .sandbox/logs/chaos-sweep/<seed>.log; the results are appended
# to .sandbox/logs/chaos-sweep/results.tsv (record them in docs/design/chaos.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export PGML_CHAOS_PROFILE="${PGML_CHAOS_PROFILE:-ci}"
count=${1:-10}
shift || true
seeds=("$@")
while [ ${#seeds[@]} -lt "$count" ]; do
  seeds+=("$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')")
done

py=$PWD/.venv/bin/python
sandbox() { PYTHONPATH=$PWD/tests/testbed "$py" -m sandbox "$@"; }
sbx="${PGML_SANDBOX:-$PWD/.sandbox}"
out="$sbx/logs/chaos-sweep"
mkdir -p "$out"
k8s_bin=$(scripts/deps.sh | tail -n1)
# Built once, then staged: the seeds run the same binaries, whatever builds beside them
# (a test finds the operator and agent binaries next to its own folder).
cargo build -p pgml-operator -p pgml-agent --bins
exe=$(cargo test -p pgml-e2e --test chaos --no-run --message-format=json 2>/dev/null |
  "$py" -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "chaos" and m.get("executable"):
        print(m["executable"])')
bin="$out/bin"
rm -rf "$bin" && mkdir -p "$bin/deps"
target_bin=$(dirname "$(dirname "$exe")")
for b in "$target_bin"/pgml-*; do [ -x "$b" ] && [ -f "$b" ] && cp "$b" "$bin/"; done
cp "$exe" "$bin/deps/chaos"
if [ ! -f "$sbx/sandbox.json" ]; then
  sandbox up --k8s-bin "$k8s_bin" --python "$py" >/dev/null
  trap 'sandbox down >/dev/null 2>&1 || true' EXIT
fi
echo "chaos-sweep: $PGML_CHAOS_PROFILE profile, ${#seeds[@]} seeds, on $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')"
pass=0
fail=0
for seed in "${seeds[@]}"; do
  t=$(date +%s)
  log="$out/$seed.log"
  if PGML_CHAOS_SEED=$seed "$bin/deps/chaos" --nocapture flow_under_kills >"$log" 2>&1; then
    result=pass
    pass=$((pass + 1))
  else
    result=FAIL
    fail=$((fail + 1))
  fi
  violations=$(grep -oE '^chaos: run [0-9]+: VIOLATION .*' "$log" | sed 's/^chaos: //' | paste -sd';' || true)
  line=$(printf '%s\t%s\t%s\t%ss\t%s' "$PGML_CHAOS_PROFILE" "$seed" "$result" "$(($(date +%s) - t))" "${violations:--}")
  echo "$line" | tee -a "$out/results.tsv"
done
echo "chaos-sweep: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
