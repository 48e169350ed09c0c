"""`python -m sandbox.restart_apiserver [--down S] [--kill]` — restart the running sandbox's
kube-apiserver mid-flow (chaos tests): stop it (SIGTERM, SIGKILL after a grace period; with
--kill at once, like a crash), stay down S seconds, start it again with the same flags and
wait for /readyz. etcd keeps the data. sandbox.json gets the new pid. The sandbox folder is
$PGML_SANDBOX (else <repo>/.sandbox), as for `python -m sandbox`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from . import k8s

REPO = pathlib.Path(__file__).resolve().parents[3]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.restart_apiserver", description=__doc__)
    p.add_argument("--down", type=float, default=0.0, help="seconds it stays down (default 0)")
    p.add_argument("--kill", action="store_true", help="SIGKILL it instead of SIGTERM")
    args = p.parse_args()
    d = pathlib.Path(os.environ.get("PGML_SANDBOX") or REPO / ".sandbox").resolve()
    f = d / "sandbox.json"
    if not f.exists():
        print(f"no sandbox in {d}", file=sys.stderr)
        return 1
    state = json.loads(f.read_text())
    grace = 0.0 if args.kill else k8s.APISERVER_RESTART_GRACE
    k8s.restart_apiserver(state["kube"], down_seconds=args.down, grace=grace)
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(f)
    print(f"sandbox: kube-apiserver restarted, pid {state['kube']['pids']['kube-apiserver']}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
