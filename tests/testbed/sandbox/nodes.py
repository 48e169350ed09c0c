"""Simulated nodes: one private mount namespace and one zfs-fuse daemon per node.

A node is a long-lived holder process (`unshare -m --propagation private -- sleep infinity`)
in its own session, so it outlives whoever started it: the sandbox runs detached. Inside its
mount namespace /var/run/zfs, /var/lib/zfs and /var/lock/zfs are private tmpfs mounts, so
that node's `zpool`/`zfs` reach that node's own daemon and see only its pools (a restored
copy of a pool has its source's GUID and could not be imported beside it in one daemon).

Every external command is an argument vector; nothing here builds a shell string.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

from . import proc

# The directories zfs-fuse and its clients share: socket, pool cache, lock.
ZFS_STATE_DIRS = ("/var/run/zfs", "/var/lib/zfs", "/var/lock/zfs")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class NodeError(RuntimeError):
    pass


def _nsenter(ns_pid: int, argv: list[str]) -> list[str]:
    return ["nsenter", "-t", str(ns_pid), "-m", "--", *argv]


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def node_exec(
    info: dict, argv: list[str], check: bool = True, timeout: float | None = 120.0
) -> subprocess.CompletedProcess:
    """Runs argv inside the node's mount namespace and returns the completed process."""
    if isinstance(argv, str):
        raise TypeError("node_exec takes an argument vector, not a shell string")
    return subprocess.run(
        _nsenter(int(info["ns_pid"]), list(argv)),
        check=check,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait_pool_list(ns_pid: int, zfs_pid: int, log_file: pathlib.Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive(zfs_pid):
            raise NodeError(f"zfs-fuse (pid {zfs_pid}) exited at start; see {log_file}")
        r = subprocess.run(
            _nsenter(ns_pid, ["zpool", "list", "-H"]),
            capture_output=True,
            text=True,
            timeout=15,
        )
        if r.returncode == 0:
            return
        last = (r.stderr or r.stdout).strip()
        time.sleep(0.2)
    raise NodeError(f"zfs-fuse did not answer `zpool list` in {START_TIMEOUT}s: {last}")


def start_node(sandbox_dir: pathlib.Path, name: str, log_dir: pathlib.Path) -> dict:
    """Creates the node's folders, its mount namespace and its zfs-fuse daemon.

    Returns {"name", "ns_pid", "zfs_pid", "root", "dev_dir", "mnt_dir"}.
    """
    sandbox_dir = pathlib.Path(sandbox_dir).resolve()
    log_dir = pathlib.Path(log_dir).resolve()
    root = sandbox_dir / "nodes" / name
    dev_dir = root / "dev" / "disk" / "by-id"
    mnt_dir = root / "mnt"
    for d in (dev_dir, mnt_dir, log_dir):
        d.mkdir(parents=True, exist_ok=True)
    # Mount points for the tmpfs: empty folders on the host, mounted over only inside.
    for d in ZFS_STATE_DIRS:
        pathlib.Path(d).mkdir(parents=True, exist_ok=True)

    ns_pid = proc.spawn(
        ["unshare", "-m", "--propagation", "private", "--", "sleep", "infinity"],
        log_dir / f"ns-{name}.log",
    )
    info = {
        "name": name,
        "ns_pid": ns_pid,
        "zfs_pid": None,
        "root": str(root),
        "dev_dir": str(dev_dir),
        "mnt_dir": str(mnt_dir),
    }
    try:
        # unshare execs sleep once the namespace exists: wait for it to differ from ours.
        host_ns = _mnt_ns(os.getpid())
        deadline = time.monotonic() + 10
        while _mnt_ns(ns_pid) in (host_ns, None):
            if not proc.alive(ns_pid):
                raise NodeError(f"namespace holder for {name} exited ({proc.exit_code(ns_pid)}): "
                                f"{proc.log_tail(log_dir / f'ns-{name}.log', 5)}")
            if time.monotonic() > deadline:
                raise NodeError(f"namespace holder for {name} never left the host namespace")
            time.sleep(0.02)

        for d in ZFS_STATE_DIRS:
            subprocess.run(
                _nsenter(ns_pid, ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", d]),
                check=True,
                capture_output=True,
                text=True,
            )

        log_file = log_dir / f"zfs-{name}.log"
        # nsenter with only -m execs zfs-fuse itself, so this pid is the daemon's.
        info["zfs_pid"] = proc.spawn(_nsenter(ns_pid, ["zfs-fuse", "--no-daemon", "--no-kstat-mount"]), log_file)
        _wait_pool_list(ns_pid, info["zfs_pid"], log_file)
    except BaseException:
        stop_node(info)
        raise
    return info


def stop_node(info: dict) -> None:
    """Stops the node's zfs-fuse (SIGTERM, then waits) and then its namespace holder.

    Pools are neither exported nor destroyed: zfs-fuse unmounts and syncs on SIGTERM, and a
    pool left imported is found again from its devices. Idempotent.
    """
    zfs_pid = info.get("zfs_pid")
    ns_pid = info.get("ns_pid")
    if not proc.terminate(zfs_pid, "zfs-fuse", STOP_TIMEOUT, group=False):
        raise NodeError(f"zfs-fuse pid {zfs_pid} of node {info.get('name')} would not stop")
    # Destroying the namespace (its last process exiting) drops every mount in it.
    if not proc.terminate(ns_pid, "sleep", 5, group=False):
        raise NodeError(f"namespace holder pid {ns_pid} of node {info.get('name')} would not stop")


def node_status(info: dict) -> dict:
    """Whether the holder and the daemon are alive."""
    return {
        "name": info.get("name"),
        "ns_alive": proc.is_ours(info.get("ns_pid"), "sleep"),
        "zfs_alive": proc.is_ours(info.get("zfs_pid"), "zfs-fuse"),
    }


if __name__ == "__main__":
    # Smoke test, from tests/testbed: python3 -m sandbox.nodes /tmp/sbx
    # (starts two nodes, lists pools, stops them)
    import json
    import sys

    base = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/pgml-nodes-smoke")
    nodes = [start_node(base, n, base / "logs") for n in ("node-a", "node-b")]
    try:
        print(json.dumps(nodes, indent=2))
        for n in nodes:
            print(n["name"], node_exec(n, ["zpool", "list"]).stdout.strip())
    finally:
        for n in nodes:
            stop_node(n)
    print(json.dumps([node_status(n) for n in nodes]))
