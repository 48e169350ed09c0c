"""The cluster DNS of the real nodes: CoreDNS (tests/testbed/coredns, built from its Go
module), a host process on CONTROL_IP:53, which the kubelets give their Pods as
`clusterDNS`. Its `kubernetes` plugin answers `<svc>.<ns>.svc.cluster.local` from the
apiserver (admin kubeconfig); there is no upstream resolver here, so nothing is forwarded.
See tests/testbed/coredns/README.md.

Every external command is an argument vector; nothing here builds a shell string.
"""

from __future__ import annotations

import pathlib
import subprocess
import time
import urllib.error
import urllib.request

from . import proc
from .k8s import CONTROL_IP

START_TIMEOUT = 60.0


class DnsError(RuntimeError):
    pass


def coredns_bin() -> pathlib.Path:
    """Where tests/testbed/coredns/build.sh puts it (it prints the folder last)."""
    script = pathlib.Path(__file__).resolve().parents[1] / "coredns" / "build.sh"
    out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True)
    return pathlib.Path(out.stdout.strip().splitlines()[-1]) / "coredns"


COREFILE = """.:53 {{
    bind {addr}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
"""


def start(sandbox_dir: pathlib.Path, kubeconfig: str, log_dir: pathlib.Path) -> dict:
    d = pathlib.Path(sandbox_dir) / "coredns"
    d.mkdir(parents=True, exist_ok=True)
    health, ready = proc.free_ports(2)
    corefile = d / "Corefile"
    corefile.write_text(COREFILE.format(addr=CONTROL_IP, health=health, ready=ready,
                                        kubeconfig=kubeconfig))
    binary = coredns_bin()
    log = pathlib.Path(log_dir) / "coredns.log"
    pid = proc.spawn([str(binary), "-conf", str(corefile)], log)
    state = {"pid": pid, "addr": CONTROL_IP, "ready": f"http://127.0.0.1:{ready}/ready"}
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not proc.alive(pid):
            raise DnsError(f"coredns exited: {proc.log_tail(log, 10)}")
        try:
            with urllib.request.urlopen(state["ready"], timeout=2) as r:
                if r.status == 200:
                    return state
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    stop(state)
    raise DnsError(f"coredns not ready in {START_TIMEOUT}s: {proc.log_tail(log, 10)}")


def stop(state: dict) -> None:
    proc.terminate(state.get("pid"), None, 5)


