"""Fault rules, EC2-style token buckets and call statistics.

Rule kinds (see README.md for the JSON):
  request faults, checked on every EC2 Query API call:
    throttle  -> HTTP 503 RequestLimitExceeded
    error     -> HTTP 500 InternalError / 503 Unavailable (or another status/code)
    latency   -> sleep `ms` before forwarding
  state faults:
    attach_stuck     -> attachments of `volume_id` stay `attaching` (no by-id link) until cleared
    snapshot_pending -> snapshots show `pending` (a `snapshot_id`, or the next `count` ones)
    snapshot_error   -> snapshots show `error`   (same selection)
    volume_fail      -> the volume's image disappears; the volume shows impaired/error
"""

from __future__ import annotations

import random
import threading
import time

REQUEST_KINDS = ("throttle", "error", "latency")
SNAPSHOT_KINDS = ("snapshot_pending", "snapshot_error")
STATE_KINDS = ("attach_stuck", "volume_fail") + SNAPSHOT_KINDS
KINDS = REQUEST_KINDS + STATE_KINDS


class RuleError(ValueError):
    pass


def validate(rule: dict) -> dict:
    kind = rule.get("kind")
    if kind not in KINDS:
        raise RuleError(f"kind must be one of {', '.join(KINDS)}")
    r = dict(rule)
    if kind in REQUEST_KINDS:
        actions = r.get("action", "*")
        r["action"] = [actions] if isinstance(actions, str) else list(actions)
        p = float(r.get("probability", 1.0))
        if not 0.0 <= p <= 1.0:
            raise RuleError("probability must be within [0, 1]")
        r["probability"] = p
        if kind == "latency":
            r["ms"] = int(r.get("ms", 0))
            if r.setdefault("phase", "response") not in ("request", "response"):
                raise RuleError("phase must be request (sleep before forwarding) or response")
        if kind == "error":
            status = int(r.get("status", 500))
            r["status"] = status
            r.setdefault("code", "Unavailable" if status == 503 else "InternalError")
            r.setdefault(
                "message",
                "The service is unavailable. Please try again shortly."
                if status == 503
                else "An internal error has occurred.",
            )
            if r.setdefault("when", "before") not in ("before", "after"):
                raise RuleError("when must be before or after")
    if kind in ("attach_stuck", "volume_fail") and not r.get("volume_id"):
        raise RuleError(f"{kind} needs volume_id")
    if kind in SNAPSHOT_KINDS:
        if not r.get("snapshot_id") and r.get("count") is None:
            raise RuleError(f"{kind} needs snapshot_id or count (the next N snapshots)")
        r.setdefault("snapshots", [r["snapshot_id"]] if r.get("snapshot_id") else [])
    if r.get("count") is not None:
        r["count"] = int(r["count"])
    return r


class RuleRng:
    """One RNG per rule, seeded when the rule says so (deterministic tests)."""

    def __init__(self):
        self._rngs: dict[str, random.Random] = {}

    def get(self, rule: dict) -> random.Random:
        rng = self._rngs.get(rule["id"])
        if rng is None:
            rng = random.Random(rule.get("seed"))
            self._rngs[rule["id"]] = rng
        return rng


def request_matches(rule: dict, action: str, params: dict) -> bool:
    if "*" not in rule["action"] and action not in rule["action"]:
        return False
    m = rule.get("match")
    if m is not None and m not in params.values():
        return False
    return True


# ---- EC2 throttling: per-action token buckets (ec2 devguide, ec2-api-throttling.html) -------
BUCKET_CLASSES = {
    "describe": (100, 20.0),
    "describe_unfiltered": (50, 10.0),
    "mutating": (50, 5.0),
    "resource": (100, 5.0),
    "tags": (100, 10.0),
}
RESOURCE_ACTIONS = {"CreateVolume", "DeleteVolume", "CreateSnapshot", "CreateSnapshots", "DeleteSnapshot"}
UNFILTERED_CANDIDATES = {"DescribeVolumes", "DescribeSnapshots", "DescribeInstances"}


def bucket_key(action: str, params: dict) -> tuple[str, str]:
    """(bucket name, class) for a call: unfiltered Describe{Volumes,Snapshots,Instances}
    share the action's own smaller bucket."""
    if action in ("CreateTags", "DeleteTags"):
        return action, "tags"
    if action in RESOURCE_ACTIONS:
        return action, "resource"
    if action.startswith(("Describe", "List", "Get")):
        if action in UNFILTERED_CANDIDATES and not any(
            k.startswith(("Filter.", "VolumeId.", "SnapshotId.", "InstanceId.", "MaxResults", "NextToken"))
            for k in params
        ):
            return action + ":unfiltered", "describe_unfiltered"
        return action, "describe"
    return action, "mutating"


class RateLimiter:
    def __init__(self):
        self.lock = threading.Lock()
        self.enabled = False
        self.scale = 1.0
        self.overrides: dict[str, dict] = {}
        self.buckets: dict[str, list] = {}  # name -> [tokens, last_refill, class]

    def configure(self, cfg: dict) -> None:
        with self.lock:
            self.enabled = bool(cfg.get("enabled", True))
            self.scale = float(cfg.get("scale", 1.0))
            self.overrides = dict(cfg.get("buckets", {}))
            self.buckets.clear()

    def disable(self) -> None:
        with self.lock:
            self.enabled = False
            self.buckets.clear()

    def _params(self, name: str, cls: str) -> tuple[float, float]:
        size, refill = BUCKET_CLASSES[cls]
        o = self.overrides.get(name) or self.overrides.get(name.split(":")[0]) or self.overrides.get(cls)
        if o:
            size = o.get("size", size)
            refill = o.get("refill", refill)
        return float(size), float(refill) * self.scale

    def take(self, action: str, params: dict) -> bool:
        """True when the call may proceed (a token was taken)."""
        if not self.enabled:
            return True
        name, cls = bucket_key(action, params)
        with self.lock:
            size, refill = self._params(name, cls)
            now = time.monotonic()
            b = self.buckets.setdefault(name, [size, now, cls])
            b[0] = min(size, b[0] + (now - b[1]) * refill)
            b[1] = now
            if b[0] >= 1.0:
                b[0] -= 1.0
                return True
            return False

    def describe(self) -> dict:
        with self.lock:
            out = {}
            for name, (tokens, _, cls) in self.buckets.items():
                size, refill = self._params(name, cls)
                out[name] = {"tokens": round(tokens, 3), "size": size, "refill": refill}
            return {
                "enabled": self.enabled,
                "scale": self.scale,
                "buckets": self.overrides,
                "classes": {k: {"size": s, "refill": r} for k, (s, r) in BUCKET_CLASSES.items()},
                "state": out,
            }


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.actions: dict[str, dict] = {}
            self.since = time.time()

    def record(self, action: str, outcome: str, ms: float) -> None:
        with self.lock:
            a = self.actions.setdefault(action, {"ok": 0, "throttled": 0, "error": 0, "total": 0, "ms": 0.0})
            a[outcome] += 1
            a["total"] += 1
            a["ms"] += ms

    def snapshot(self) -> dict:
        with self.lock:
            acts = {k: dict(v, ms=round(v["ms"], 1)) for k, v in self.actions.items()}
            total = {"ok": 0, "throttled": 0, "error": 0, "total": 0}
            for v in acts.values():
                for k in total:
                    total[k] += v[k]
            return {"since": self.since, "actions": acts, "total": total}
