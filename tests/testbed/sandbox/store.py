"""The simulator's image store: an XFS filesystem with reflink on a loop device, so that a
snapshot or a volume made from one is a copy-on-write clone, as cheap as on EBS."""

from __future__ import annotations

import pathlib
import subprocess

# Sparse: only the blocks volumes really write take space on the host.
STORE_SIZE = "200G"


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True)


def mounted(path: pathlib.Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0


def start(sandbox_dir: pathlib.Path) -> pathlib.Path:
    """Creates and mounts `<sandbox>/store` (XFS, reflink=1, on a sparse loop image)."""
    image = sandbox_dir / "store.xfs"
    mnt = sandbox_dir / "store"
    mnt.mkdir(parents=True, exist_ok=True)
    if mounted(mnt):
        return mnt
    if not image.exists():
        _run(["truncate", "-s", STORE_SIZE, str(image)])
        _run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)])
    # `-o loop` gives an autoclear loop device: unmounting frees it.
    _run(["mount", "-o", "loop", "-t", "xfs", str(image), str(mnt)])
    return mnt


def stop(sandbox_dir: pathlib.Path) -> None:
    """Unmounts the store (lazily if something still holds it) and removes its image."""
    mnt = sandbox_dir / "store"
    if mounted(mnt):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    image = sandbox_dir / "store.xfs"
    if image.exists():
        image.unlink()
