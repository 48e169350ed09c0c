"""One instant for several volumes: EC2 CreateSnapshots is crash-consistent across the
volumes of an instance (every snapshot of the set is taken at the same point in time).

The simulator copies one image after another, and the node keeps writing in between: a
ZFS pool striped over those volumes could then be captured with a transaction group on one
member and not on another, a state no crash can leave. So the processes that have a
member's image open (the node's zfs-fuse daemon, which writes its vdevs through them) are
stopped (SIGSTOP: a write already inside the kernel completes first) for the time of the
copies and continued after, whatever happens. A writer the kernel itself drives (a loop
device under ext4) has no process to stop; a single volume needs no common instant.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

log = logging.getLogger("ebssim.pause")

# How long to wait for every thread of a writer to stop.
STOP_TIMEOUT = 2.0


def writers(paths) -> set[int]:
    """PIDs of the processes (other than this one) with one of these files open."""
    targets = {os.path.realpath(p) for p in paths}
    me = os.getpid()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    found.add(int(entry))
                    break
            except OSError:
                continue
    return found


def _all_stopped(pid: int) -> bool:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True  # gone
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


@contextlib.contextmanager
def paused(paths):
    """Stops the writers of `paths` for the duration of the block."""
    stopped: list[int] = []
    try:
        for pid in sorted(writers(paths)):
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while stopped and not all(_all_stopped(p) for p in stopped):
            if time.monotonic() > deadline:
                log.warning("writers %s not all stopped after %.1fs; copying anyway", stopped, STOP_TIMEOUT)
                break
            time.sleep(0.001)
        yield stopped
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
