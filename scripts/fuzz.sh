#!/usr/bin/env bash
# make fuzz: runs each cargo-fuzz target (fuzz/fuzz_targets) for a bounded time, starting
# from the corpus kept in the repo (fuzz/corpus/<target>, read only; what libFuzzer finds
# goes to fuzz/work/<target>). Installs what is missing: the nightly toolchain (cargo-fuzz
# needs it for the sanitizer flags) and cargo-fuzz. A crash stops the run: its input is in
# fuzz/artifacts/<target>/ — turn it into a unit test beside the code it broke.
#
#   PGML_FUZZ_SECONDS   seconds per target (default 300)
#   PGML_FUZZ_TARGETS   space-separated subset (default: all)
#   PGML_FUZZ_KEEP=1    merge new coverage back into fuzz/corpus (minimized) afterwards
# A summary (runs, coverage, corpus size per target) is written to bench/results/fuzz.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds="${PGML_FUZZ_SECONDS:-300}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)" >&2
  rustup toolchain install nightly --profile minimal >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi

targets="${PGML_FUZZ_TARGETS:-$(cargo +nightly fuzz list --fuzz-dir fuzz | tr '\n' ' ')}"
mkdir -p fuzz/work
mkdir -p bench/results
summary=bench/results/fuzz.md
{
  echo "# make fuzz: $(date -u +%Y-%m-%dT%H:%M:%SZ), ${seconds}s per target, $(nproc) CPUs"
  echo
  echo "| target | runs | exec/s | coverage (cov) | features (ft) | corpus | crashes |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
} > "$summary"
for t in $targets; do cargo +nightly fuzz build --fuzz-dir fuzz -O "$t"; done
rc=0
for t in $targets; do
  work="fuzz/work/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  log="fuzz/work/$t.log"
  echo "fuzz: $t for ${seconds}s (log: $log)"
  status=0
  cargo +nightly fuzz run --fuzz-dir fuzz -O "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
  runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  speed=$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  last=$(grep -E '#[0-9]+.*cov: ' "$log" | tail -n1)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
  corpus=$(find "$work" "fuzz/corpus/$t" -type f | wc -l)
  crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
  echo "| $t | $runs | $speed | $cov | $ft | $corpus | $crashes |" >> "$summary"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    rc=1
    echo "fuzz: $t FAILED (exit $status); the input is in fuzz/artifacts/$t/; the end of $log:" >&2
    tail -n 40 "$log" >&2
  fi
  if [ "${PGML_FUZZ_KEEP:-0}" = 1 ]; then
    # Adds to the repo's corpus only the inputs that reach new coverage.
    cargo +nightly fuzz run --fuzz-dir fuzz -O "$t" "fuzz/corpus/$t" "$work" -- -merge=1 >>"$log" 2>&1 || true
  fi
done
cat "$summary"
# The plot and the index of bench/results, when the venv with matplotlib is there.
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  .venv/bin/python tests/bench/plot.py >/dev/null || true
fi
exit $rc
