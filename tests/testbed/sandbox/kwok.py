"""kwok: the kubelet of the simulated nodes, for their Pods and their heartbeats.

The binary and its Stages come from `tests/testbed/kwok/build.sh` (sigs.k8s.io/kwok, the
version in tests/testbed/kwok/VERSION) in `<cache>/kwok/<version>/bin/{kwok,stages.yaml}`.

kwok manages only the Nodes annotated `kwok.x-k8s.io/node=fake` (the sandbox's, see
NODE_ANNOTATION), and plays kwok's default Stages on them and their Pods:
  * node-initialize: status only (Ready and the other conditions, phase Running, capacity
    and nodeInfo where unset); addresses already in the status are kept;
  * node-heartbeat-with-lease: a Lease in kube-node-lease renewed every few seconds (what
    kube-controller-manager's node lifecycle controller reads), the conditions now and then;
  * pod-ready: a Pod with spec.nodeName on one of those nodes becomes Running, Ready,
    Initialized (init containers Completed, sidecars running) with a pod IP from POD_CIDR
    and the node's InternalIP as hostIP;
  * pod-complete: a Running Pod owned by a Job becomes Succeeded;
  * pod-delete: a Pod being deleted is removed (as the kubelet does after its grace period).
It writes nothing else: no labels, annotations, taints or spec of the Nodes (providerID
and the topology labels stay as the sandbox created them), nothing on the nodes' hosts (the
node agents and zfs-fuse are host processes, not Pods). Pods without spec.nodeName stay
Pending: there is no kube-scheduler (the operator binds its Pods itself).

Every external command is an argument vector; nothing here builds a shell string.
"""

from __future__ import annotations

import os
import pathlib
import time
import urllib.error
import urllib.request

from . import proc

KWOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "kwok"  # tests/testbed/kwok
NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# Pod IPs: away from the sandbox's service range (10.0.0.0/24, which is also kwok's default)
# and from the nodes' VPC addresses (10.0.x.y).
POD_CIDR = "10.244.0.0/16"
# As kwokctl sets it: the Lease lasts 40 s, kwok renews it well within that.
LEASE_SECONDS = 40
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class KwokError(RuntimeError):
    pass


def version() -> str:
    return (KWOK_DIR / "VERSION").read_text().strip()


def default_bin_dir() -> pathlib.Path:
    """Where tests/testbed/kwok/build.sh puts kwok: $PGML_KWOK_BIN, else
    ${PGML_CACHE:-~/.cache/pgml-operator}/kwok/<VERSION>/bin."""
    if os.environ.get("PGML_KWOK_BIN"):
        return pathlib.Path(os.environ["PGML_KWOK_BIN"])
    cache = os.environ.get("PGML_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pgml-operator")
    return pathlib.Path(cache) / "kwok" / version() / "bin"


def _healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3.0) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def start(sandbox_dir: pathlib.Path, kubeconfig: pathlib.Path, log_dir: pathlib.Path,
          bin_dir: pathlib.Path | None = None) -> dict:
    """Start kwok against the sandbox's kube-apiserver; return its state (plain JSON):
      pid, port (its HTTP server on loopback: /healthz, /metrics), argv, log, version, bin.
    Waits until /healthz answers. On failure it is stopped again and KwokError raised."""
    sandbox_dir = pathlib.Path(sandbox_dir).resolve()
    log_dir = pathlib.Path(log_dir).resolve()
    bin_dir = pathlib.Path(bin_dir or default_bin_dir()).resolve()
    kwok, stages = bin_dir / "kwok", bin_dir / "stages.yaml"
    if not os.access(kwok, os.X_OK) or not stages.is_file():
        raise KwokError(f"{kwok} or {stages} missing: run scripts/deps.sh "
                        "(or tests/testbed/kwok/build.sh, which prints the folder)")
    home = sandbox_dir / "kwok"  # its $HOME: a ~/.kwok/kwok.yaml of the user's is not read
    home.mkdir(parents=True, exist_ok=True)
    (port,) = proc.free_ports(1)
    log = log_dir / "kwok.log"
    argv = [
        str(kwok),
        f"--kubeconfig={kubeconfig}",
        f"--config={stages}",
        "--manage-nodes-with-annotation-selector={}={}".format(*NODE_ANNOTATION),
        f"--cidr={POD_CIDR}",
        f"--node-lease-duration-seconds={LEASE_SECONDS}",
        f"--server-address=127.0.0.1:{port}",
    ]
    env = dict(os.environ, HOME=str(home))
    state = {"pid": None, "port": port, "argv": argv, "log": str(log),
             "version": version(), "bin": str(bin_dir)}
    try:
        state["pid"] = proc.spawn(argv, log, cwd=home, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthz(port):
            if not proc.alive(state["pid"]):
                raise KwokError(f"kwok exited ({proc.exit_code(state['pid'])}) at start:\n"
                                f"{proc.log_tail(log, 20)}")
            if time.monotonic() > deadline:
                raise KwokError(f"kwok not healthy after {START_TIMEOUT:.0f}s:\n{proc.log_tail(log, 20)}")
            time.sleep(0.2)
    except BaseException:
        stop(state)
        raise
    return state


def stop(state: dict) -> None:
    """SIGTERM kwok, SIGKILL after a few seconds. Idempotent; a reused pid is left alone.
    The Nodes keep their last status; their Leases expire, and kube-controller-manager
    then marks them NotReady (as for a kubelet that stopped)."""
    pid = state.get("pid")
    if pid and not proc.terminate(int(pid), "kwok", STOP_TIMEOUT):
        raise KwokError(f"kwok (pid {pid}) survived SIGKILL")


def status(state: dict) -> dict:
    """{"alive": process runs, "healthy": /healthz answers, "pid", "log"}."""
    alive = proc.is_ours(state.get("pid"), "kwok")
    return {"alive": alive, "healthy": alive and _healthz(int(state.get("port") or 0)),
            "pid": state.get("pid"), "log": state.get("log")}
