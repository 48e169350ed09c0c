"""Start and stop moto (EC2/EBS/S3/STS in server mode) and the EBS simulator in front of it.

Standard library only, so the orchestrator can import it before or outside the venv; the
processes themselves run with the venv's python (`venv_python`).

    state = start(sandbox_dir, store_dir, log_dir, venv_python)
    register_node(state["admin"], instance_id, dev_dir)
    iid = run_instance(state["endpoint"], "us-east-1a", "m7i.xlarge")
    stop(state)
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from . import proc
from .k8s import CONTROL_IP

TESTBED_DIR = Path(__file__).resolve().parent.parent  # tests/testbed: holds the ebssim package

# An AMI moto 5.2 ships in every region (moto rejects unknown ImageIds with InvalidAMIID).
DEFAULT_AMI = "ami-12c6146b"
EC2_VERSION = "2016-11-15"


def free_port() -> int:
    return proc.free_ports(1)[0]


def _spawn(argv: list[str], log_file: Path, cwd: Path) -> int:
    return proc.spawn(argv, log_file, cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _name(state: dict, component: str) -> str | None:
    """What /proc shows for a component (the interpreter), to guard against pid reuse;
    None for a state from before start() recorded its argv (then there is no guard)."""
    argv = (state.get("argv") or {}).get(component)
    return os.path.basename(argv[0]) if argv else None


def _stop(state: dict, component: str) -> None:
    pid = (state.get("pids") or {}).get(component)
    if pid and not proc.terminate(int(pid), _name(state, component)):
        raise RuntimeError(f"{component} (pid {pid}) survived SIGKILL")


def _wait_http(url: str, pid: int, log_file: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive(pid):
            raise RuntimeError(f"{log_file.stem} (pid {pid}) exited with {proc.exit_code(pid)} "
                               f"before serving {url}:\n{proc.log_tail(log_file, 20)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except urllib.error.HTTPError:
            return  # it answers: good enough
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n{proc.log_tail(log_file, 20)}")
        time.sleep(0.1)


def _ebssim_argv(venv_python: str, store_dir: Path, port: int, moto_url: str) -> list[str]:
    # On CONTROL_IP, not loopback: the operator in a Pod on a real node reaches it there too.
    return [venv_python, "-m", "ebssim", "--store", str(store_dir), "--host", CONTROL_IP,
            "--port", str(port), "--moto", moto_url]


def start(sandbox_dir: Path, store_dir: Path, log_dir: Path, venv_python: str) -> dict:
    """Start moto_server and ebssim on free loopback ports; wait until both answer.

    Returns {"endpoint": proxy URL (what AWS SDKs use), "moto": moto URL,
             "admin": proxy URL + "/_sim", "pids": {"moto": pid, "ebssim": pid},
             "argv": {"moto": [...], "ebssim": [...]}}.
    """
    sandbox_dir, store_dir, log_dir = Path(sandbox_dir), Path(store_dir), Path(log_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    moto_port, sim_port = proc.free_ports(2)
    moto_url = f"http://127.0.0.1:{moto_port}"
    sim_url = f"http://{CONTROL_IP}:{sim_port}"
    state = {
        "endpoint": sim_url,
        "moto": moto_url,
        "admin": sim_url + "/_sim",
        "pids": {},
        "argv": {
            # moto's server with tags looked up by resource ID (ebssim/moto_server.py).
            "moto": [venv_python, "-m", "ebssim.moto_server", "-H", "127.0.0.1", "-p", str(moto_port)],
            "ebssim": _ebssim_argv(venv_python, store_dir, sim_port, moto_url),
        },
    }
    try:
        moto_log = log_dir / "moto.log"
        state["pids"]["moto"] = _spawn(state["argv"]["moto"], moto_log, cwd=TESTBED_DIR)
        _wait_http(moto_url + "/moto-api/data.json", state["pids"]["moto"], moto_log)
        sim_log = log_dir / "ebssim.log"
        state["pids"]["ebssim"] = _spawn(state["argv"]["ebssim"], sim_log, cwd=TESTBED_DIR)
        _wait_http(sim_url + "/_sim/health", state["pids"]["ebssim"], sim_log)
    except BaseException:
        stop(state)
        raise
    return state


def restart_ebssim(state: dict, store_dir: Path, log_dir: Path, venv_python: str) -> dict:
    """Kill the proxy and start it again on the same port with the same store (its records
    survive in <store>/state.json). Returns the updated state."""
    _stop(state, "ebssim")
    port = urllib.parse.urlsplit(state["endpoint"]).port
    argv = _ebssim_argv(venv_python, store_dir, port, state["moto"])
    sim_log = Path(log_dir) / "ebssim.log"
    pid = _spawn(argv, sim_log, cwd=TESTBED_DIR)
    _wait_http(state["endpoint"] + "/_sim/health", pid, sim_log)
    return dict(state, pids=dict(state["pids"], ebssim=pid), argv=dict(state.get("argv") or {}, ebssim=argv))


def stop(state: dict) -> None:
    """Stop ebssim, then moto (the process groups start() made; SIGTERM, then SIGKILL).
    Idempotent and best effort: it does not raise (`down` goes on to stop the rest), a
    process that survived SIGKILL is reported on stderr. A pid that no longer runs the
    interpreter start() used is left alone."""
    for name in ("ebssim", "moto"):
        try:
            _stop(state, name)
        except RuntimeError as e:
            print(f"aws.stop: {e}", file=sys.stderr, flush=True)


def _admin(admin_url: str, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(admin_url.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"ebssim admin {method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None


def register_node(admin_url: str, instance_id: str, dev_dir) -> dict:
    """Tell the simulator which directory is that instance's /dev/disk/by-id."""
    return _admin(admin_url, "POST", "/nodes", {"instance_id": instance_id, "dev_dir": str(dev_dir)})


def ec2_call(endpoint: str, region: str, params: dict) -> str:
    """One EC2 Query API call through the proxy; returns the XML text. moto does not check
    signatures but routes by the credential scope, so a fixed unsigned header will do."""
    p = dict(params)
    p.setdefault("Version", EC2_VERSION)
    auth = (f"AWS4-HMAC-SHA256 Credential=testing/20240101/{region}/ec2/aws4_request, "
            "SignedHeaders=host, Signature=0")
    req = urllib.request.Request(
        endpoint.rstrip("/") + "/",
        data=urllib.parse.urlencode(p).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Authorization": auth},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"EC2 {params.get('Action')}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None


def run_instance(endpoint: str, az: str, instance_type: str, ami: str = DEFAULT_AMI) -> str:
    """RunInstances in the given AZ (region = AZ minus its letter); returns the instance id.
    moto also makes an 8 GiB root volume (/dev/sda1) for it, which CreateSnapshots includes
    unless ExcludeBootVolume is set."""
    region = az[:-1]
    xml = ec2_call(endpoint, region, {
        "Action": "RunInstances",
        "ImageId": ami,
        "MinCount": "1",
        "MaxCount": "1",
        "InstanceType": instance_type,
        "Placement.AvailabilityZone": az,
    })
    m = re.search(r"<instanceId>(i-[0-9a-f]+)</instanceId>", xml)
    if not m:
        raise RuntimeError(f"RunInstances answered without an instance id: {xml[:500]}")
    return m.group(1)
