"""The proxy: forwards every request to moto, adds the EBS data plane to EC2 calls, and
serves the admin API under /_sim/."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import re
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import direct, faults, pause
from .state import Store

log = logging.getLogger("ebssim")

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15"  # what moto 5.2 answers with
ET.register_namespace("", EC2_NS)

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}
CRED_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")
FAKE_AUTH = "AWS4-HMAC-SHA256 Credential=ebssim/20240101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0"

# EC2 actions the simulator has something to do with (others pass straight through).
DATA_PLANE = {
    "TerminateInstances",
    "CreateVolume",
    "DeleteVolume",
    "AttachVolume",
    "DetachVolume",
    "ModifyVolume",
    "CreateSnapshot",
    "CreateSnapshots",
    "DeleteSnapshot",
    "DescribeVolumes",
    "DescribeSnapshots",
    "DescribeVolumeStatus",
}


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def ec2_error(status: int, code: str, message: str) -> Reply:
    rid = str(uuid.uuid4())
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{rid}</RequestID></Response>"
    ).encode()
    return Reply(status, [("Content-Type", "text/xml;charset=UTF-8"), ("x-amzn-RequestId", rid)], body)


# ---- XML helpers -----------------------------------------------------------------------
def _t(el, path: str) -> str | None:
    e = el.find("/".join("{*}" + p for p in path.split("/")))
    return e.text if e is not None else None


def _set(el, tag: str, value: str) -> None:
    e = el.find("{*}" + tag)
    if e is None:
        e = ET.SubElement(el, f"{{{EC2_NS}}}{tag}")
    e.text = value


def _items(root, set_tag: str):
    s = root.find("{*}" + set_tag)
    return [] if s is None else s.findall("{*}item")


def _xml(root) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _indexed(params: dict, prefix: str) -> list[str]:
    """Values of `Prefix.1`, `Prefix.2`, ... in index order."""
    out = []
    for k, v in params.items():
        if k.startswith(prefix + "."):
            rest = k[len(prefix) + 1 :]
            if rest.isdigit():
                out.append((int(rest), v))
    return [v for _, v in sorted(out)]


class Sim:
    def __init__(self, store: Store, moto_url: str):
        self.store = store
        u = urllib.parse.urlsplit(moto_url)
        self.moto_host, self.moto_port = u.hostname, u.port or 80
        self.stats = faults.Stats()
        self.limiter = faults.RateLimiter()
        self.rngs = faults.RuleRng()
        # Check + act + record as one step, per resource rather than for the whole
        # simulator: a hundred pools' creates and attaches proceed side by side, as on EC2.
        self.keyed = KeyedLocks()
        self.tls = threading.local()  # .auth: the Authorization header of the current request
        self.resume_pending_attachments()

    # ---- talking to moto -----------------------------------------------------------------
    def forward(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Reply:
        conn = http.client.HTTPConnection(self.moto_host, self.moto_port, timeout=600)
        try:
            hdrs = {}
            for k, v in headers:
                if k.lower() not in HOP_BY_HOP:
                    hdrs[k] = v
            if body or method in ("POST", "PUT", "PATCH"):
                hdrs["Content-Length"] = str(len(body))
            conn.request(method, path, body=body or None, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            out = [(k, v) for k, v in r.getheaders() if k.lower() not in HOP_BY_HOP]
            return Reply(r.status, out, data)
        finally:
            conn.close()

    def moto_ec2(self, params: dict) -> Reply:
        """A call of the simulator's own to moto (not counted, no faults). It carries the
        Authorization header of the request being handled: moto picks region and account
        from its credential scope (it does not check signatures)."""
        p = dict(params)
        p.setdefault("Version", "2016-11-15")
        body = urllib.parse.urlencode(p).encode()
        auth = getattr(self.tls, "auth", None) or FAKE_AUTH
        return self.forward(
            "POST",
            "/",
            [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"), ("Authorization", auth)],
            body,
        )

    def moto_volumes(self, params: dict) -> list:
        r = self.moto_ec2(dict(params, Action="DescribeVolumes"))
        if not r.ok:
            return []
        return _items(ET.fromstring(r.body), "volumeSet")

    # ---- request faults ----------------------------------------------------------------
    def request_faults(self, action: str, params: dict) -> tuple[int, int, dict | None]:
        """(latency ms before forwarding, latency ms before answering, the throttle/error
        rule that fired or None)."""
        latency, fired = {"request": 0, "response": 0}, None
        changed = False
        with self.store.lock:
            rules = self.store.data["rules"]
            for r in list(rules):
                if r["kind"] not in faults.REQUEST_KINDS or not faults.request_matches(r, action, params):
                    continue
                if r["kind"] != "latency" and fired is not None:
                    continue
                if r["probability"] < 1.0 and self.rngs.get(r).random() >= r["probability"]:
                    continue
                if r.get("count") is not None:
                    r["count"] -= 1
                    changed = True
                    if r["count"] <= 0:
                        rules.remove(r)
                r["fired"] = r.get("fired", 0) + 1
                if r["kind"] == "latency":
                    latency[r["phase"]] += r["ms"]
                else:
                    fired = r
            if changed:
                self.store.save()
        return latency["request"], latency["response"], fired

    # ---- the EC2 entry point -----------------------------------------------------------
    def ec2(self, action: str, params: dict, fwd) -> tuple[Reply, str]:
        """fwd(params or None) forwards the request to moto (re-encoded when params given).
        Returns the reply and the outcome for the stats."""
        before, after, rule = self.request_faults(action, params)
        if before:
            time.sleep(before / 1000.0)
        reply, outcome = self._ec2(action, params, fwd, rule)
        if after:
            time.sleep(after / 1000.0)
        return reply, outcome

    def _ec2(self, action: str, params: dict, fwd, rule) -> tuple[Reply, str]:
        if not self.limiter.take(action, params):
            return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded."), "throttled"
        if rule is not None and rule["kind"] == "throttle":
            return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded."), "throttled"
        if rule is not None and rule["when"] == "before":
            return ec2_error(rule["status"], rule["code"], rule["message"]), "error"
        handler = getattr(self, "do_" + action, None) if action in DATA_PLANE else None
        reply = handler(params, fwd) if handler else fwd(None)
        if rule is not None:  # an error after the action took effect
            return ec2_error(rule["status"], rule["code"], rule["message"]), "error"
        return reply, ("ok" if reply.ok else "error")

    # ---- volumes -----------------------------------------------------------------------
    def do_CreateVolume(self, params, fwd) -> Reply:
        token = params.get("ClientToken")
        if not token:
            return self._create_volume(params, fwd)
        # EC2 makes a create with a ClientToken idempotent (moto does not): the same token
        # with the same parameters answers the volume made the first time; with other
        # parameters it is IdempotentParameterMismatch. The operator's crash safety rests on
        # this, so the simulator keeps the tokens (in its persisted state).
        fingerprint = hashlib.sha256(
            json.dumps(sorted((k, v) for k, v in params.items() if k != "ClientToken")).encode()
        ).hexdigest()
        with self.keyed.hold(f"token:{token}"):
            with self.store.lock:
                seen = self.store.data.setdefault("client_tokens", {}).get(token)
            if seen is None:
                r = self._create_volume(params, fwd)
                if r.ok:
                    vol = _t(ET.fromstring(r.body), "volumeId")
                    with self.store.lock:
                        self.store.data["client_tokens"][token] = {"fingerprint": fingerprint, "volume_id": vol}
                        self.store.save()
                return r
        if seen["fingerprint"] != fingerprint:
            return ec2_error(400, "IdempotentParameterMismatch",
                             f"The client token {token} was used before with other parameters.")
        return self._volume_as_create_response(seen["volume_id"])

    def _volume_as_create_response(self, vol: str) -> Reply:
        """The CreateVolume answer for a volume that exists (or existed): its fields as
        DescribeVolumes has them, or only its ID and state `deleted` once it is gone."""
        out = ET.Element(f"{{{EC2_NS}}}CreateVolumeResponse")
        ET.SubElement(out, f"{{{EC2_NS}}}requestId").text = str(uuid.uuid4())
        items = self.moto_volumes({"VolumeId.1": vol})
        if items:
            for child in items[0]:
                if child.tag != f"{{{EC2_NS}}}attachmentSet":
                    out.append(child)
        else:
            ET.SubElement(out, f"{{{EC2_NS}}}volumeId").text = vol
            ET.SubElement(out, f"{{{EC2_NS}}}status").text = "deleted"
        return Reply(200, [("Content-Type", "text/xml")], _xml(out))

    def _create_volume(self, params, fwd) -> Reply:
        snap = params.get("SnapshotId")
        if snap:
            st = self.snapshot_forced_state(snap)
            if st in ("pending", "error"):
                return ec2_error(400, "IncorrectState", f"Snapshot '{snap}' is in state '{st}'.")
        r = fwd(None)
        if not r.ok:
            return r
        root = ET.fromstring(r.body)
        vol, size = _t(root, "volumeId"), int(_t(root, "size") or 1)
        img = self.store.volume_image(vol)
        tmp = self.store.tmp_path()
        snap_rec = self.store.data["snapshots"].get(snap) if snap else None
        if snap_rec and snap_rec.get("has_image") and self.store.snapshot_image(snap).exists():
            self.store.copy(self.store.snapshot_image(snap), tmp)
        self.store.ensure_size(tmp, size)
        tmp.rename(img)
        with self.store.lock:
            self.store.data["volumes"][vol] = {"size": size, "attachments": [], "failed": False, "snapshot": snap}
            self.store.save()
        _set(root, "status", "creating")  # what EC2 answers; moto says available at once
        return Reply(r.status, r.headers, _xml(root))

    def do_DeleteVolume(self, params, fwd) -> Reply:
        r = fwd(None)
        if r.ok:
            vol = params.get("VolumeId")
            with self.store.lock:
                rec = self.store.data["volumes"].pop(vol, None)
                for a in (rec or {}).get("attachments", []):
                    self.store.remove_link(vol, a["instance_id"])
                self.store.save()
            self.store.volume_image(vol).unlink(missing_ok=True)
        return r

    def do_ModifyVolume(self, params, fwd) -> Reply:
        r = fwd(None)
        if r.ok and params.get("Size"):
            vol = params["VolumeId"]
            with self.store.lock:
                rec = self.store.data["volumes"].get(vol)
                if rec is not None:
                    rec["size"] = max(rec["size"], int(params["Size"]))
                    self.store.save()
            img = self.store.volume_image(vol)
            if img.exists():
                self.store.ensure_size(img, int(params["Size"]))
        return r

    def volume_record(self, vol: str) -> dict | None:
        """The record of a volume, made from moto's view when the simulator has none
        (root volumes of RunInstances, volumes made before a store was wiped)."""
        with self.store.lock:
            rec = self.store.data["volumes"].get(vol)
        if rec is not None:
            return rec
        items = self.moto_volumes({"VolumeId.1": vol})
        if not items:
            return None
        rec = {"size": int(_t(items[0], "size") or 1), "attachments": [], "failed": False, "snapshot": None}
        with self.store.lock:
            rec = self.store.data["volumes"].setdefault(vol, rec)
            self.store.save()
        return rec

    def do_AttachVolume(self, params, fwd) -> Reply:
        # Check + attach + record as one step for this volume and this instance's names.
        vol, iid = params.get("VolumeId"), params.get("InstanceId")
        with self.keyed.hold(f"volume:{vol}", f"instance:{iid}"):
            return self._attach(params, fwd)

    def _attach(self, params, fwd) -> Reply:
        vol, iid, device = params.get("VolumeId"), params.get("InstanceId"), params.get("Device")
        # moto 5.2 attaches an attached volume again and lets a second volume take a device
        # name in use (dropping the first from the instance's mapping); EC2 refuses both.
        with self.store.lock:
            for v, rec in self.store.data["volumes"].items():
                for a in rec.get("attachments", []):
                    if v == vol:
                        return ec2_error(400, "VolumeInUse", f"{vol} is already attached to an instance")
                    if a["instance_id"] == iid and a.get("device") == device:
                        return ec2_error(400, "InvalidParameterValue", f"Attachment point {device} is already in use")
        r = fwd(None)
        if not r.ok:
            return r
        rec = self.volume_record(vol)
        if rec is None:
            return r
        img = self.store.volume_image(vol)
        if not img.exists() and not rec.get("failed"):
            self.store.ensure_size(img, rec["size"])  # e.g. a root volume re-attached
        with self.store.lock:
            stuck = self.stuck_rules(vol)
            att = {"instance_id": iid, "device": device, "pending": bool(stuck)}
            rec["attachments"] = [a for a in rec["attachments"] if a["instance_id"] != iid] + [att]
            if stuck:
                durations = [s.get("duration_ms") for s in stuck]
                if all(d is not None for d in durations):
                    att["until"] = time.time() + max(durations) / 1000.0
                    self.schedule_attach(vol, iid, att["until"])
            else:
                self.store.make_link(vol, iid)
            self.store.save()
        return r

    def stuck_rules(self, vol: str) -> list:
        return [x for x in self.store.data["rules"] if x["kind"] == "attach_stuck" and x["volume_id"] == vol]

    def schedule_attach(self, vol: str, iid: str, until: float) -> None:
        t = threading.Timer(max(0.0, until - time.time()), self.finish_attach, (vol, iid, True))
        t.daemon = True
        t.start()

    def finish_attach(self, vol: str, iid: str, timed: bool = False) -> None:
        with self.store.lock:
            rec = self.store.data["volumes"].get(vol)
            for a in (rec or {}).get("attachments", []):
                if a["instance_id"] == iid and a.get("pending"):
                    if timed and self.stuck_rules(vol) and time.time() < a.get("until", 0):
                        continue
                    a["pending"] = False
                    a.pop("until", None)
                    self.store.make_link(vol, iid)
            self.store.save()

    def resume_pending_attachments(self) -> None:
        with self.store.lock:
            for vol, rec in self.store.data["volumes"].items():
                for a in rec.get("attachments", []):
                    if not a.get("pending"):
                        continue
                    if not self.stuck_rules(vol):
                        self.finish_attach(vol, a["instance_id"])
                    elif a.get("until"):
                        self.schedule_attach(vol, a["instance_id"], a["until"])

    def do_DetachVolume(self, params, fwd) -> Reply:
        vol, iid = params.get("VolumeId"), params.get("InstanceId")
        p = None
        if not iid:
            # moto answers HTTP 500 without InstanceId: fill it in from the records.
            with self.store.lock:
                rec = self.store.data["volumes"].get(vol)
                atts = [a["instance_id"] for a in (rec or {}).get("attachments", [])]
            if not atts:
                for item in self.moto_volumes({"VolumeId.1": vol}):
                    atts = [_t(a, "instanceId") for a in _items(item, "attachmentSet")]
            if len(atts) == 1:
                iid = atts[0]
                p = dict(params, InstanceId=iid)
            elif not atts:
                return ec2_error(400, "IncorrectState", f"Volume '{vol}' is in the 'available' state.")
            else:
                return ec2_error(400, "InvalidParameterCombination", f"Volume '{vol}' is attached to more than one instance: give InstanceId.")
        r = fwd(p)
        if r.ok:
            with self.store.lock:
                rec = self.store.data["volumes"].get(vol)
                if rec is not None:
                    rec["attachments"] = [a for a in rec["attachments"] if a["instance_id"] != iid]
                self.store.remove_link(vol, iid)
                self.store.save()
        return r

    def do_DescribeVolumes(self, params, fwd) -> Reply:
        r = fwd(None)
        if not r.ok:
            return r
        with self.store.lock:
            vols = self.store.data["volumes"]
            special = {v for v, rec in vols.items() if rec.get("failed") or any(a.get("pending") for a in rec["attachments"])}
            if not special:
                return r
            root = ET.fromstring(r.body)
            for item in _items(root, "volumeSet"):
                vol = _t(item, "volumeId")
                if vol not in special:
                    continue
                rec = vols[vol]
                pending = {a["instance_id"] for a in rec["attachments"] if a.get("pending")}
                for a in _items(item, "attachmentSet"):
                    if _t(a, "instanceId") in pending:
                        _set(a, "status", "attaching")
                        _set(item, "status", "in-use")
                if rec.get("failed"):
                    _set(item, "status", "error")
        return Reply(r.status, r.headers, _xml(root))

    def do_DescribeVolumeStatus(self, params, fwd) -> Reply:
        """moto 5.2 does not implement it (HTTP 500): answer from DescribeVolumes."""
        ids = _indexed(params, "VolumeId")
        q = {f"VolumeId.{i + 1}": v for i, v in enumerate(ids)}
        r = self.moto_ec2(dict(q, Action="DescribeVolumes"))
        if not r.ok:
            return r
        out = ET.Element(f"{{{EC2_NS}}}DescribeVolumeStatusResponse")
        ET.SubElement(out, f"{{{EC2_NS}}}requestId").text = str(uuid.uuid4())
        vs = ET.SubElement(out, f"{{{EC2_NS}}}volumeStatusSet")
        with self.store.lock:
            for item in _items(ET.fromstring(r.body), "volumeSet"):
                vol = _t(item, "volumeId")
                failed = bool(self.store.data["volumes"].get(vol, {}).get("failed"))
                it = ET.SubElement(vs, f"{{{EC2_NS}}}item")
                for tag, val in (("volumeId", vol), ("availabilityZone", _t(item, "availabilityZone"))):
                    ET.SubElement(it, f"{{{EC2_NS}}}{tag}").text = val
                st = ET.SubElement(it, f"{{{EC2_NS}}}volumeStatus")
                ET.SubElement(st, f"{{{EC2_NS}}}status").text = "impaired" if failed else "ok"
                det = ET.SubElement(st, f"{{{EC2_NS}}}details")
                for name, val in (("io-enabled", "failed" if failed else "passed"), ("io-performance", "not-applicable")):
                    d = ET.SubElement(det, f"{{{EC2_NS}}}item")
                    ET.SubElement(d, f"{{{EC2_NS}}}name").text = name
                    ET.SubElement(d, f"{{{EC2_NS}}}status").text = val
                ET.SubElement(it, f"{{{EC2_NS}}}eventsSet")
                ET.SubElement(it, f"{{{EC2_NS}}}actionsSet")
        return Reply(200, [("Content-Type", "text/xml;charset=UTF-8")], _xml(out))

    # ---- instances -------------------------------------------------------------------------
    def do_TerminateInstances(self, params, fwd) -> Reply:
        r = fwd(None)
        if r.ok:
            gone = set(_indexed(params, "InstanceId"))
            with self.store.lock:
                for vol, rec in list(self.store.data["volumes"].items()):
                    keep = []
                    for a in rec["attachments"]:
                        if a["instance_id"] in gone:
                            self.store.remove_link(vol, a["instance_id"])
                        else:
                            keep.append(a)
                    rec["attachments"] = keep
                self.store.save()
        return r

    # ---- snapshots -----------------------------------------------------------------------
    def capture(self, vol: str) -> object:
        """Copy a volume's image now (the snapshot's point in time). Returns the temp copy, or
        None when the volume has no image (root volume never used, failed volume)."""
        img = self.store.volume_image(vol)
        if not img.exists():
            return None
        tmp = self.store.tmp_path()
        try:
            self.store.copy(img, tmp)
        except Exception:
            log.exception("copying %s", img)
            tmp.unlink(missing_ok=True)
            return None
        return tmp

    def keep_snapshot(self, snap: str, vol: str, size: int, tmp) -> None:
        if tmp is not None:
            tmp.rename(self.store.snapshot_image(snap))
        with self.store.lock:
            self.store.data["snapshots"][snap] = {"volume_id": vol, "size": size, "has_image": tmp is not None}
            now = time.time()
            for rule in self.store.data["rules"]:
                if rule["kind"] in faults.SNAPSHOT_KINDS and (rule.get("count") or 0) > 0 and not rule.get("snapshot_id"):
                    if rule.get("volume_id") in (None, vol):
                        rule["snapshots"][snap] = now
                        rule["count"] -= 1
                        break
            self.store.save()

    def do_CreateSnapshot(self, params, fwd) -> Reply:
        vol = params.get("VolumeId")
        tmp = self.capture(vol)  # before moto sees the request: EBS's point in time
        try:
            r = fwd(None)
            if not r.ok:
                return r
            root = ET.fromstring(r.body)
            snap = _t(root, "snapshotId")
            self.keep_snapshot(snap, vol, int(_t(root, "volumeSize") or 0), tmp)
            tmp = None
            _set(root, "status", self.snapshot_forced_state(snap) or "pending")  # EC2 answers pending
            return Reply(r.status, r.headers, _xml(root))
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def do_CreateSnapshots(self, params, fwd) -> Reply:
        iid = params.get("InstanceSpecification.InstanceId")
        excluded = set(_indexed(params, "InstanceSpecification.ExcludeDataVolumeId"))
        # What moto will snapshot: every volume in the instance's block device mapping.
        vols = self.moto_volumes({"Filter.1.Name": "attachment.instance-id", "Filter.1.Value.1": iid})
        tags = {_t(v, "volumeId"): [(_t(t, "key"), _t(t, "value")) for t in _items(v, "tagSet")] for v in vols}
        copies = {}
        try:
            members = [vol for vol in tags if vol not in excluded]
            # One instant for the whole set (see pause.py).
            with pause.paused([self.store.volume_image(v) for v in members]) as stopped:
                t0 = time.monotonic()
                for vol in members:
                    copies[vol] = self.capture(vol)
                if stopped:
                    log.info("CreateSnapshots %s: %d volumes copied with writers %s paused %.0f ms",
                             iid, len(members), stopped, (time.monotonic() - t0) * 1000)
            r = fwd(None)
            if not r.ok:
                return r
            root = ET.fromstring(r.body)
            sset = root.find("{*}snapshotSet")
            copy_tags = params.get("CopyTagsFromSource") == "volume"
            for item in list(sset.findall("{*}item")) if sset is not None else []:
                vol, snap = _t(item, "volumeId"), _t(item, "snapshotId")
                if vol in excluded:
                    # moto 5.2 ignores ExcludeDataVolumeId: undo its snapshot of that volume.
                    self.moto_ec2({"Action": "DeleteSnapshot", "SnapshotId": snap})
                    sset.remove(item)
                    continue
                self.keep_snapshot(snap, vol, int(_t(item, "volumeSize") or 0), copies.pop(vol, None))
                if copy_tags and tags.get(vol):
                    # moto 5.2 ignores CopyTagsFromSource: copy the volume's tags ourselves.
                    q = {"Action": "CreateTags", "ResourceId.1": snap}
                    ts = item.find("{*}tagSet")
                    if ts is None:
                        ts = ET.SubElement(item, f"{{{EC2_NS}}}tagSet")
                    for i, (k, v) in enumerate(tags[vol], 1):
                        q[f"Tag.{i}.Key"], q[f"Tag.{i}.Value"] = k, v or ""
                        t = ET.SubElement(ts, f"{{{EC2_NS}}}item")
                        ET.SubElement(t, f"{{{EC2_NS}}}key").text = k
                        ET.SubElement(t, f"{{{EC2_NS}}}value").text = v or ""
                    self.moto_ec2(q)
                _set(item, "state", self.snapshot_forced_state(snap) or "pending")
            return Reply(r.status, r.headers, _xml(root))
        finally:
            for tmp in copies.values():
                if tmp is not None:
                    tmp.unlink(missing_ok=True)

    def do_DeleteSnapshot(self, params, fwd) -> Reply:
        r = fwd(None)
        if r.ok:
            snap = params.get("SnapshotId")
            with self.store.lock:
                self.store.data["snapshots"].pop(snap, None)
                self.store.save()
            self.store.snapshot_image(snap).unlink(missing_ok=True)
        return r

    def snapshot_forced_state(self, snap: str) -> str | None:
        now = time.time()
        with self.store.lock:
            for rule in self.store.data["rules"]:
                if rule["kind"] in faults.SNAPSHOT_KINDS and snap in rule["snapshots"]:
                    d = rule.get("duration_ms")
                    if d is not None and now - rule["snapshots"][snap] >= d / 1000.0:
                        continue
                    return "pending" if rule["kind"] == "snapshot_pending" else "error"
        return None

    def do_DescribeSnapshots(self, params, fwd) -> Reply:
        r = fwd(None)
        if not r.ok:
            return r
        with self.store.lock:
            if not any(x["kind"] in faults.SNAPSHOT_KINDS and x["snapshots"] for x in self.store.data["rules"]):
                return r
        root = ET.fromstring(r.body)
        for item in _items(root, "snapshotSet"):
            st = self.snapshot_forced_state(_t(item, "snapshotId"))
            if st:
                _set(item, "status", st)
                _set(item, "progress", "0%" if st == "pending" else "100%")
                if st == "error":
                    _set(item, "stateMessage", "Simulated snapshot failure (ebssim)")
        return Reply(r.status, r.headers, _xml(root))

    # ---- admin: faults -----------------------------------------------------------------
    def add_rule(self, body: dict) -> dict:
        rule = faults.validate(body)
        with self.store.lock:
            rule["id"] = f"f-{self.store.data['next_rule']}"
            self.store.data["next_rule"] += 1
            if rule["kind"] in faults.SNAPSHOT_KINDS:
                rule["snapshots"] = {s: time.time() for s in rule["snapshots"]}
            if rule["kind"] == "volume_fail":
                self.fail_volume(rule["volume_id"])
            self.store.data["rules"].append(rule)
            self.store.save()
        return rule

    def fail_volume(self, vol: str) -> None:
        """The volume's image disappears: truncated (so a process holding it open reads
        nothing) and unlinked (so the by-id link dangles). Permanent, like a lost volume."""
        rec = self.store.data["volumes"].get(vol)
        if rec is None:
            rec = self.store.data["volumes"][vol] = {"size": 0, "attachments": [], "failed": False, "snapshot": None}
        rec["failed"] = True
        img = self.store.volume_image(vol)
        if img.exists():
            with open(img, "r+b") as f:
                f.truncate(0)
            img.unlink()

    def remove_rules(self, rule_id: str | None) -> int:
        with self.store.lock:
            rules = self.store.data["rules"]
            gone = [r for r in rules if rule_id is None or r["id"] == rule_id]
            self.store.data["rules"] = [r for r in rules if r not in gone]
            for r in gone:
                if r["kind"] == "attach_stuck" and not self.stuck_rules(r["volume_id"]):
                    rec = self.store.data["volumes"].get(r["volume_id"])
                    for a in (rec or {}).get("attachments", []):
                        if a.get("pending"):
                            self.finish_attach(r["volume_id"], a["instance_id"])
            self.store.save()
        return len(gone)

    def register_node(self, body: dict) -> dict:
        iid, dev = body.get("instance_id"), body.get("dev_dir")
        if not iid or not dev:
            raise faults.RuleError("instance_id and dev_dir are required")
        Path(dev).mkdir(parents=True, exist_ok=True)
        links = []
        with self.store.lock:
            self.store.data["nodes"][iid] = {"dev_dir": str(Path(dev).resolve())}
            for vol, rec in self.store.data["volumes"].items():
                for a in rec["attachments"]:
                    if a["instance_id"] == iid and not a.get("pending") and self.store.volume_image(vol).exists():
                        self.store.make_link(vol, iid)
                        links.append(vol)
            self.store.save()
        return {"instance_id": iid, "dev_dir": self.store.data["nodes"][iid]["dev_dir"], "linked": links}


def read_body(headers, rfile) -> bytes:
    """A request's body, whether sent with Content-Length or chunked (the AWS SDKs do both)."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        chunks = []
        while True:
            size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(rfile.read(size))
            rfile.readline()
        return b"".join(chunks)
    n = int(headers.get("Content-Length") or 0)
    return rfile.read(n) if n else b""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sim: Sim  # set on the subclass by serve()

    def log_message(self, fmt, *args):  # the proxy logs its own one line per request
        pass

    def read_body(self) -> bytes:
        return read_body(self.headers, self.rfile)

    def send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for k, v in reply.headers:
            if k.lower() not in ("server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def send_json(self, status: int, obj) -> None:
        self.send(Reply(status, [("Content-Type", "application/json")], json.dumps(obj).encode()))

    def do_any(self) -> None:
        t0 = time.monotonic()
        body = self.read_body()
        if self.path.startswith("/_sim"):
            try:
                self.admin(body)
            except (faults.RuleError, ValueError, KeyError) as e:
                self.send_json(400, {"error": str(e)})
            except Exception as e:  # keep serving
                log.exception("admin %s %s", self.command, self.path)
                self.send_json(500, {"error": repr(e)})
            return
        sim = self.sim
        auth = self.headers.get("Authorization") or ""
        m = CRED_RE.search(auth) or CRED_RE.search(urllib.parse.unquote(self.path))
        service = m.group(1) if m else None
        params: dict = {}
        ctype = (self.headers.get("Content-Type") or "").lower()
        if self.command == "POST" and "x-www-form-urlencoded" in ctype:
            params = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        elif self.command == "GET" and "Action=" in self.path:
            params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query, keep_blank_values=True))
        action = params.get("Action")
        headers = list(self.headers.items())

        def fwd(new_params):
            b = body if new_params is None else urllib.parse.urlencode(new_params).encode()
            return sim.forward(self.command, self.path, headers, b)

        try:
            split = urllib.parse.urlsplit(self.path)
            ours = None
            if service == "ebs" and self.command == "GET":
                ours = direct.answer(sim.store, split.path, dict(urllib.parse.parse_qsl(split.query)))
            if ours is not None:
                reply = Reply(*ours)
                outcome = "ok" if reply.ok else "error"
                name = "ebs:" + ("ListChangedBlocks" if split.path.endswith("changedblocks") else "ListSnapshotBlocks")
            elif action and service in ("ec2", None):
                sim.tls.auth = auth
                reply, outcome = sim.ec2(action, params, fwd)
                name = action
            else:
                reply = fwd(None)
                outcome = "ok" if reply.ok else ("throttled" if reply.status == 429 else "error")
                name = f"{service or '?'}:{action or self.command}"
        except Exception as e:
            log.exception("%s failed", action or self.path)
            reply, outcome, name = ec2_error(500, "InternalError", f"ebssim: {e!r}"), "error", action or self.command
        ms = (time.monotonic() - t0) * 1000.0
        sim.stats.record(name, outcome, ms)
        self.send(reply)
        log.info("%s %d %s %.1fms", name, reply.status, outcome, ms)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_any

    # ---- admin API -----------------------------------------------------------------------
    def admin(self, body: bytes) -> None:
        sim = self.sim
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        parts = path.split("/")[2:]  # after "", "_sim"
        req = json.loads(body) if body.strip() else {}
        cmd = self.command
        route = "/".join(parts[:1])
        if route == "health" and cmd == "GET":
            return self.send_json(200, {"ok": True})
        if route == "nodes":
            if cmd == "POST":
                return self.send_json(200, sim.register_node(req))
            if cmd == "GET":
                with sim.store.lock:
                    return self.send_json(200, sim.store.data["nodes"])
            if cmd == "DELETE" and len(parts) == 2:
                with sim.store.lock:
                    gone = sim.store.data["nodes"].pop(parts[1], None)
                    sim.store.save()
                return self.send_json(200, {"removed": gone is not None})
        if route == "stats":
            if cmd == "GET":
                return self.send_json(200, sim.stats.snapshot())
            if cmd == "POST" and parts[1:] == ["reset"]:
                sim.stats.reset()
                return self.send_json(200, {"ok": True})
        if route == "faults":
            if cmd == "GET":
                with sim.store.lock:
                    return self.send_json(200, {"rules": sim.store.data["rules"]})
            if cmd == "POST":
                rules = req if isinstance(req, list) else [req]
                added = [sim.add_rule(r) for r in rules]
                return self.send_json(200, added if isinstance(req, list) else added[0])
            if cmd == "DELETE":
                rid = parts[1] if len(parts) == 2 else None
                return self.send_json(200, {"removed": sim.remove_rules(rid)})
        if route == "ratelimits":
            if cmd == "GET":
                return self.send_json(200, sim.limiter.describe())
            if cmd == "POST":
                sim.limiter.configure(req)
                return self.send_json(200, sim.limiter.describe())
            if cmd == "DELETE":
                sim.limiter.disable()
                return self.send_json(200, sim.limiter.describe())
        if route == "state" and cmd == "GET":
            with sim.store.lock:
                return self.send_json(200, sim.store.data)
        self.send_json(404, {"error": f"no admin route {cmd} {path}"})


class KeyedLocks:
    """A lock per key, made on first use; several keys are taken in sorted order (no
    deadlock between two requests holding overlapping keys)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def hold(self, *keys: str):
        with self._guard:
            locks = [self._locks.setdefault(k, threading.Lock()) for k in sorted(set(keys))]
        for lk in locks:
            lk.acquire()
        try:
            yield
        finally:
            for lk in reversed(locks):
                lk.release()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


def serve(store_dir: Path, port: int, moto_url: str, host: str = "127.0.0.1", reflink: str = "auto") -> None:
    sim = Sim(Store(store_dir, reflink=reflink), moto_url)
    handler = type("BoundHandler", (Handler,), {"sim": sim})
    srv = Server((host, port), handler)
    log.info("ebssim listening on http://%s:%d, forwarding to %s, store %s", host, srv.server_port, moto_url, sim.store.root)
    srv.serve_forever()
