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
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

TESTBED_DIR = Path(__file__).resolve().parent.parent  # tests/testbed: holds the ebssim package

# An AMI moto 5.2 ships in every region (moto rejects unknown ImageIds with InvalidAMIID).
DEFAULT_AMI = "ami-12c6146b"
EC2_VERSION = "2016-11-15"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(argv: list[str], log_file: Path, cwd: Path | None = None) -> subprocess.Popen:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab")
    try:
        return subprocess.Popen(
            argv,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: detached from ours
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    finally:
        out.close()


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait_http(url: str, proc: subprocess.Popen, log_file: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before serving {url}:\n{_tail(log_file)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except urllib.error.HTTPError:
            return  # it answers: good enough
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n{_tail(log_file)}")
        time.sleep(0.1)


def start(sandbox_dir: Path, store_dir: Path, log_dir: Path, venv_python: str) -> dict:
    """Start moto_server and ebssim on free loopback ports; wait until both answer.

    Returns {"endpoint": proxy URL (what AWS SDKs use), "moto": moto URL,
             "admin": proxy URL + "/_sim", "pids": {"moto": pid, "ebssim": pid}}.
    """
    sandbox_dir, store_dir, log_dir = Path(sandbox_dir), Path(store_dir), Path(log_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    moto_port, sim_port = free_port(), free_port()
    while sim_port == moto_port:
        sim_port = free_port()
    moto_url = f"http://127.0.0.1:{moto_port}"
    sim_url = f"http://127.0.0.1:{sim_port}"

    moto_log = log_dir / "moto.log"
    moto = _spawn([venv_python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)], moto_log, cwd=sandbox_dir)
    try:
        _wait_http(moto_url + "/moto-api/data.json", moto, moto_log)
        sim_log = log_dir / "ebssim.log"
        sim = _spawn(
            [venv_python, "-m", "ebssim", "--store", str(store_dir), "--port", str(sim_port), "--moto", moto_url],
            sim_log,
            cwd=TESTBED_DIR,
        )
        try:
            _wait_http(sim_url + "/_sim/health", sim, sim_log)
        except Exception:
            _kill_group(sim.pid)
            raise
    except Exception:
        _kill_group(moto.pid)
        raise
    return {
        "endpoint": sim_url,
        "moto": moto_url,
        "admin": sim_url + "/_sim",
        "pids": {"moto": moto.pid, "ebssim": sim.pid},
    }


def restart_ebssim(state: dict, store_dir: Path, log_dir: Path, venv_python: str) -> dict:
    """Kill the proxy and start it again on the same port with the same store (its records
    survive in <store>/state.json). Returns the updated state."""
    _kill_group(state["pids"]["ebssim"])
    port = urllib.parse.urlsplit(state["endpoint"]).port
    sim_log = Path(log_dir) / "ebssim.log"
    sim = _spawn(
        [venv_python, "-m", "ebssim", "--store", str(store_dir), "--port", str(port), "--moto", state["moto"]],
        sim_log,
        cwd=TESTBED_DIR,
    )
    _wait_http(state["endpoint"] + "/_sim/health", sim, sim_log)
    return dict(state, pids=dict(state["pids"], ebssim=sim.pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _kill_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by pid (made by start_new_session), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def stop(state: dict) -> None:
    """Stop ebssim, then moto (the process groups start() made)."""
    pids = state.get("pids", {})
    for name in ("ebssim", "moto"):
        if pids.get(name):
            _kill_group(int(pids[name]))


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
