# Supervision for a script that runs background processes until it is told to stop (make dev).
# Source it, then:
#   supervise_init NAME TEARDOWN   # TEARDOWN: a function run once, after the children are gone
#   some-daemon & supervise_add $!
#   supervise_forever               # reports a child that exits; returns only through a signal
#
# The first Ctrl-C (INT), TERM or the script's own exit stops the children, runs TEARDOWN once
# and ends the script (130 for INT, 143 for TERM). Two things are guarded, both seen in make
# dev before: a trap that returns into the wait loop (the script ran on, reporting nothing,
# until a second Ctrl-C, and a TERM never ended it), and a closed output pipe (`make dev | tee
# log`, then Ctrl-C kills tee too): SIGPIPE is ignored and every line the teardown prints is
# also kept in a file, so a write that fails stops no step of it.

supervise_name=supervise
supervise_teardown=:
supervise_pids=()
supervise_log=

supervise_init() {
  supervise_name=$1
  supervise_teardown=$2
  supervise_log=${3:-}
  trap '_supervise_stop 130' INT
  trap '_supervise_stop 143' TERM
  trap '_supervise_stop' EXIT
}

supervise_add() { supervise_pids+=("$@"); }

# Prints a line, never failing: stdout may be a pipe whose reader is gone.
supervise_say() {
  if [ -n "$supervise_log" ]; then printf '%s\n' "$*" >>"$supervise_log" 2>/dev/null || true; fi
  printf '%s\n' "$*" 2>/dev/null || true
}

supervise_forever() {
  while true; do
    local alive=() p
    for p in "${supervise_pids[@]}"; do
      if kill -0 "$p" 2>/dev/null; then alive+=("$p"); else supervise_say "$supervise_name: process $p exited"; fi
    done
    supervise_pids=("${alive[@]}")
    # A foreground sleep would hold a trap back until it ends; `wait` returns at the signal.
    sleep 10 &
    wait $! 2>/dev/null || true
  done
}

_supervise_stop() {
  local rc=${1:-$?}
  trap - INT TERM EXIT
  trap '' PIPE
  set +e
  supervise_say ""
  supervise_say "$supervise_name: stopping"
  local p jobs_left
  for p in "${supervise_pids[@]}" $(jobs -p); do kill -TERM "$p" 2>/dev/null; done
  # Give the children 20 s to stop on TERM, then KILL what is left.
  for _ in $(seq 1 40); do
    jobs_left=$(jobs -pr)
    [ -z "$jobs_left" ] && break
    sleep 0.5
  done
  for p in $(jobs -pr); do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  "$supervise_teardown"
  supervise_say "$supervise_name: stopped"
  exit "$rc"
}
