"""The simulator's records: nodes, volumes, attachments, snapshots, fault rules.

Everything lives in memory under one lock and is written to `<store>/state.json` after each
change (atomically: temp file + rename), so a restarted proxy keeps its records. Image files
live beside it: `<store>/volumes/<vol-id>.img`, `<store>/snapshots/<snap-id>.img`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import uuid
from pathlib import Path

log = logging.getLogger("ebssim")

GiB = 1024**3
LINK_PREFIX = "nvme-Amazon_Elastic_Block_Store_vol"


def link_name(volume_id: str) -> str:
    """The by-id name Nitro instances give an EBS volume: `vol-0abc` -> `...vol0abc`."""
    return LINK_PREFIX + volume_id.replace("vol-", "", 1)


class Store:
    def __init__(self, root: Path, reflink: str = "auto"):
        self.root = Path(root).resolve()
        self.reflink = reflink
        self.lock = threading.RLock()
        for d in ("volumes", "snapshots", "tmp"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.file = self.root / "state.json"
        # nodes: instance_id -> {"dev_dir": str}
        # volumes: vol_id -> {"size": GiB, "attachments": [{"instance_id", "device", "pending"}],
        #                     "failed": bool}
        # snapshots: snap_id -> {"volume_id", "size", "has_image"}
        # rules: list of fault rule dicts (see faults.py); next_rule: int
        self.data = {"nodes": {}, "volumes": {}, "snapshots": {}, "rules": [], "next_rule": 1}
        if self.file.exists():
            loaded = json.loads(self.file.read_text())
            self.data.update(loaded)
            log.info(
                "loaded state: %d nodes, %d volumes, %d snapshots, %d fault rules",
                len(self.data["nodes"]),
                len(self.data["volumes"]),
                len(self.data["snapshots"]),
                len(self.data["rules"]),
            )
        # temp copies left by a crash mid-request
        for f in (self.root / "tmp").iterdir():
            f.unlink(missing_ok=True)

    # ---- persistence -------------------------------------------------------------------
    def save(self) -> None:
        with self.lock:
            tmp = self.file.with_suffix(".json.tmp")
            # Compact: written after every change, under the lock every request takes.
            tmp.write_text(json.dumps(self.data, separators=(",", ":")))
            os.replace(tmp, self.file)

    # ---- paths -------------------------------------------------------------------------
    def volume_image(self, vol: str) -> Path:
        return self.root / "volumes" / f"{vol}.img"

    def snapshot_image(self, snap: str) -> Path:
        return self.root / "snapshots" / f"{snap}.img"

    def tmp_path(self) -> Path:
        return self.root / "tmp" / f"{uuid.uuid4().hex}.img"

    # ---- file operations ---------------------------------------------------------------
    def copy(self, src: Path, dst: Path) -> None:
        """Copy-on-write copy where the filesystem can (XFS reflink), else a sparse copy."""
        subprocess.run(
            ["cp", f"--reflink={self.reflink}", "--", str(src), str(dst)],
            check=True,
            capture_output=True,
        )

    @staticmethod
    def ensure_size(path: Path, size_gib: int) -> None:
        """Create a sparse image, or grow one, to size_gib GiB (never shrinks)."""
        want = int(size_gib) * GiB
        with open(path, "ab") as f:
            if f.seek(0, os.SEEK_END) < want:
                f.truncate(want)

    # ---- nodes and links ---------------------------------------------------------------
    def node_dev_dir(self, instance_id: str) -> Path | None:
        n = self.data["nodes"].get(instance_id)
        return Path(n["dev_dir"]) if n else None

    def make_link(self, vol: str, instance_id: str) -> None:
        dev = self.node_dev_dir(instance_id)
        if dev is None:
            log.warning("attach %s to %s: no node registered for that instance, no link", vol, instance_id)
            return
        dev.mkdir(parents=True, exist_ok=True)
        link = dev / link_name(vol)
        tmp = dev / f".{link.name}.{uuid.uuid4().hex[:8]}"
        os.symlink(self.volume_image(vol), tmp)
        os.replace(tmp, link)

    def remove_link(self, vol: str, instance_id: str) -> None:
        dev = self.node_dev_dir(instance_id)
        if dev is not None:
            (dev / link_name(vol)).unlink(missing_ok=True)
