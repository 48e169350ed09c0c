"""The EBS direct APIs that moto answers only for StartSnapshot snapshots, answered here for
the snapshots the simulator made itself (CreateSnapshot / CreateSnapshots keep an image of
each): ListChangedBlocks and ListSnapshotBlocks.

EBS compares snapshots in 512 KiB blocks. The images are sparse reflink copies, so only
the regions holding data in either image are read (SEEK_DATA / SEEK_HOLE); a block is
changed when its bytes differ. Tokens are opaque strings, as in AWS; GetSnapshotBlock is
not offered.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

BLOCK_SIZE = 512 * 1024
DEFAULT_MAX_RESULTS = 10000

CHANGED_RE = re.compile(r"^/snapshots/(snap-[0-9a-f]+)/changedblocks$")
BLOCKS_RE = re.compile(r"^/snapshots/(snap-[0-9a-f]+)/blocks$")


def data_ranges(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte ranges holding data in a sparse file."""
    out = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    return out


def blocks_with_data(path: Path | None) -> set[int]:
    if path is None or not path.exists():
        return set()
    idx = set()
    for start, end in data_ranges(path):
        idx.update(range(start // BLOCK_SIZE, (end + BLOCK_SIZE - 1) // BLOCK_SIZE))
    return idx


def _read(path: Path | None, index: int) -> bytes:
    if path is None or not path.exists():
        return b""
    with open(path, "rb") as f:
        f.seek(index * BLOCK_SIZE)
        return f.read(BLOCK_SIZE)


def _same(a: bytes, b: bytes) -> bool:
    # A missing or short read is zeros, as an unwritten EBS block.
    n = max(len(a), len(b))
    return a.ljust(n, b"\0") == b.ljust(n, b"\0")


def changed_blocks(first: Path | None, second: Path) -> list[int]:
    """Block indexes whose content differs between two images (all blocks holding data in
    `second` when there is no `first`)."""
    candidates = blocks_with_data(first) | blocks_with_data(second)
    if first is None:
        return sorted(i for i in candidates if _read(second, i).strip(b"\0"))
    return sorted(i for i in candidates if not _same(_read(first, i), _read(second, i)))


def error(status: int, kind: str, message: str, reason: str | None = None) -> tuple[int, list, bytes]:
    body = {"Message": message}
    if reason:
        body["Reason"] = reason
    headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", kind)]
    return status, headers, json.dumps(body).encode()


def answer(store, path: str, query: dict) -> tuple[int, list, bytes] | None:
    """The reply to an EBS direct API request for a snapshot this simulator made, or None
    to let moto answer it."""
    m = CHANGED_RE.match(path) or BLOCKS_RE.match(path)
    if not m:
        return None
    second = m.group(1)
    with store.lock:
        snaps = store.data["snapshots"]
        rec2 = snaps.get(second)
        first = query.get("firstSnapshotId")
        rec1 = snaps.get(first) if first else None
    if rec2 is None:
        return None  # not ours: perhaps a StartSnapshot snapshot moto knows
    if first and rec1 is None:
        return error(404, "ResourceNotFoundException", f"snapshot {first} does not exist", "SNAPSHOT_NOT_FOUND")
    if rec1 is not None and rec1["volume_id"] != rec2["volume_id"]:
        # AWS requires both snapshots to come from the same volume lineage.
        return error(400, "ValidationException", f"{first} and {second} are not snapshots of the same volume",
                     "INVALID_DEPENDENCY_REQUEST")
    img2 = store.snapshot_image(second)
    img1 = store.snapshot_image(first) if first else None
    try:
        max_results = int(query.get("maxResults") or DEFAULT_MAX_RESULTS)
        start = int(query.get("pageToken") or query.get("startingBlockIndex") or 0)
    except ValueError:
        return error(400, "ValidationException", "maxResults, pageToken and startingBlockIndex must be integers")
    if CHANGED_RE.match(path):
        indexes = changed_blocks(img1, img2)
    else:
        indexes = sorted(i for i in blocks_with_data(img2) if _read(img2, i).strip(b"\0"))
    page = [i for i in indexes if i >= start][:max_results]
    rest = [i for i in indexes if i >= start][max_results:]
    body = {
        "ExpiryTime": time.time() + 3600,
        "VolumeSize": rec2["size"],
        "BlockSize": BLOCK_SIZE,
    }
    if CHANGED_RE.match(path):
        body["ChangedBlocks"] = [
            {"BlockIndex": i, "FirstBlockToken": f"{first}:{i}" if first else None, "SecondBlockToken": f"{second}:{i}"}
            for i in page
        ]
        for b in body["ChangedBlocks"]:
            if b["FirstBlockToken"] is None:
                del b["FirstBlockToken"]
    else:
        body["Blocks"] = [{"BlockIndex": i, "BlockToken": f"{second}:{i}"} for i in page]
    if rest:
        body["NextToken"] = str(rest[0])
    return 200, [("Content-Type", "application/json")], json.dumps(body).encode()
