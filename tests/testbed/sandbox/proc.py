"""Process helpers shared by k8s.py, aws.py and nodes.py. Standard library only.

Every sandbox process runs detached in its own session (and so leads its own process
group), logs to its own file, and is stopped later, often by another `python -m sandbox`
run, from nothing but the pid kept in sandbox.json. Hence the care taken here:
  * a pid may have been reused since: `is_ours(pid, name)` checks it still runs `name`
    before anything is signalled;
  * a child of this process that has exited stays a zombie, which still answers kill(0):
    `alive()` reaps it (and keeps its exit code for `exit_code()`), and treats any other
    zombie (state Z/X in /proc/<pid>/stat) as gone.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import socket
import subprocess
import time

# After SIGKILL a process is gone as soon as the kernel has torn it down; this is a bound.
KILL_WAIT = 5.0
COMM_LEN = 15  # /proc/<pid>/comm holds at most TASK_COMM_LEN - 1 characters

_exit_codes: dict[int, int] = {}


def proc_state(pid: int) -> str | None:
    """The state letter from /proc/<pid>/stat (R, S, D, Z, X, ...), None if no such pid."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the state follows the last ')'.
    return text[text.rindex(")") + 2 :].split(" ", 1)[0]


def alive(pid: int | None) -> bool:
    """True if pid runs (not a zombie). Reaps it if it is an exited child of ours."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            _exit_codes[pid] = os.waitstatus_to_exitcode(status)
            return False
    except ChildProcessError:  # not our child
        pass
    return proc_state(pid) not in ("Z", "X", None)


def exit_code(pid: int) -> int | None:
    """The exit code of a child that alive() reaped (negative: killed by that signal)."""
    return _exit_codes.get(pid)


def is_ours(pid: int | None, name: str) -> bool:
    """True if pid is alive and still runs `name` (a guard against pid reuse): `name` is
    the argv[0] basename or /proc/<pid>/comm (which the kernel cuts to 15 characters)."""
    if not alive(pid):
        return False
    try:
        comm = pathlib.Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
    except OSError:
        comm = None
    if comm is not None and comm == name[:COMM_LEN]:
        return True
    try:
        argv0 = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return os.path.basename(argv0.decode(errors="replace")) == name


def spawn(argv: list[str], log_file: pathlib.Path, cwd: pathlib.Path | str | None = None,
          env: dict[str, str] | None = None) -> int:
    """Start argv detached: its own session and process group (so it outlives the caller
    and its group can be signalled), stdin from /dev/null, stdout and stderr appended to
    log_file after a start banner. Returns the pid; stop it with terminate()."""
    log_file = pathlib.Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"\n==== {stamp} start: {list(argv)!r}\n".encode())
        log.flush()
        p = subprocess.Popen(
            list(argv),
            cwd=str(cwd) if cwd else None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    # Detached on purpose: whoever stops it uses the pid, not this Popen object (and
    # alive() reaps it). This keeps Popen.__del__ from warning about a running child.
    p.returncode = 0
    return p.pid


def _signal(pid: int, sig: int, group: bool) -> bool:
    """Send sig to pid's process group (only if pid leads one) or to pid. False if gone."""
    try:
        if group and os.getpgid(pid) == pid:
            try:
                os.killpg(pid, sig)
                return True
            except PermissionError:
                pass
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # cannot signal it: the wait below reports that it did not stop
    return True


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if not alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def terminate(pid: int | None, name: str | None = None, grace: float = 10.0,
              group: bool = True) -> bool:
    """Stop pid: SIGTERM, wait up to `grace` seconds, then SIGKILL and wait until it is
    gone (grace=0: SIGKILL at once, like a crash). group=True signals the process group
    pid leads (as spawn() makes it), else pid alone. With a name, a pid that no longer
    runs `name` (see is_ours) is left alone. True when nothing of ours runs any more."""
    if name is not None and not is_ours(pid, name):
        return True
    if not alive(pid):
        return True
    steps = [(signal.SIGTERM, grace)] if grace > 0 else []
    steps.append((signal.SIGKILL, KILL_WAIT))
    for sig, wait in steps:
        if not _signal(pid, sig, group):
            return True
        if _wait_gone(pid, wait):
            return True
    return not alive(pid)


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bound together, so they differ, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def log_tail(path: pathlib.Path, n: int = 30) -> str:
    """The last n lines of a log file, or "(no log)"."""
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
