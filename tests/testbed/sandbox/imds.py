"""An EC2 instance metadata service for one network namespace, without touching the host's
network: `python -m sandbox.imds --netns-pid PID --s3-port PORT` (from tests/testbed).

A process of the test (e.g. `unshare -n sleep infinity`, PID) holds a fresh network
namespace whose loopback is up and also carries 169.254.169.254 (the test runs `ip` inside
it). This process stays in the host's namespace; one of its threads joins the other one
(setns(2) is per thread) and listens there on
- 169.254.169.254:80: IMDS as pgBackRest's `repo1-s3-key-type=auto` uses it (IMDSv2
  `PUT /latest/api/token`, then `GET /latest/meta-data/iam/security-credentials/` → the
  role's name, `GET …/<role>` → temporary credentials: moto's test keys and a token);
- 127.0.0.1:PORT: a byte pipe to the host's 127.0.0.1:PORT (the sandbox's HTTPS front of
  S3), each upstream connection opened by a thread that stayed in the host's namespace.

So a PostgreSQL server started inside that namespace archives with the instance-role key
type exactly as on EC2, and reaches S3 at the same address and certificate as the host.
Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import queue
import secrets
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLONE_NEWNET = 0x40000000
IMDS_ADDR = "169.254.169.254"


def join_netns(pid: int) -> None:
    """Moves the calling thread into the network namespace of `pid`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns(net of {pid}): {os.strerror(err)}")
    finally:
        os.close(fd)


def log(msg: str) -> None:
    print(f"imds: {msg}", file=sys.stderr, flush=True)


class Imds(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    role = "pgml-node-role"
    key, secret = "testing", "testing"
    tokens: set[str] = set()

    def log_message(self, fmt, *args):
        pass

    def reply(self, status: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        log(f"{self.command} {self.path} {status}")

    def do_PUT(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if self.path != "/latest/api/token":
            return self.reply(404, "not found")
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        self.reply(200, token)

    def do_GET(self):
        token = self.headers.get("x-aws-ec2-metadata-token")
        if token is not None and token not in self.tokens:
            return self.reply(401, "unauthorized")
        base = "/latest/meta-data/iam/security-credentials"
        path = self.path.rstrip("/")
        if path == base:
            return self.reply(200, self.role)
        if path == f"{base}/{self.role}":
            now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            body = {
                "Code": "Success",
                "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "Type": "AWS-HMAC",
                "AccessKeyId": self.key,
                "SecretAccessKey": self.secret,
                "Token": "sandbox-session-token",
                "Expiration": (now + datetime.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            return self.reply(200, json.dumps(body), "application/json")
        self.reply(404, "not found")


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst,):
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def dispatcher(accepted: queue.Queue, port: int) -> None:
    """Runs in the host's namespace: opens the upstream side of each accepted connection."""
    while True:
        inner = accepted.get()
        try:
            outer = socket.create_connection(("127.0.0.1", port), timeout=30)
            outer.settimeout(None)
        except OSError as e:
            log(f"upstream 127.0.0.1:{port}: {e}")
            inner.close()
            continue
        a = threading.Thread(target=pump, args=(inner, outer), daemon=True)
        b = threading.Thread(target=pump, args=(outer, inner), daemon=True)
        a.start()
        b.start()
        threading.Thread(target=lambda: (a.join(), b.join(), inner.close(), outer.close()),
                         daemon=True).start()


def inside(pid: int, port: int, accepted: queue.Queue, ready: threading.Event,
           errors: list) -> None:
    try:
        join_netns(pid)
        httpd = ThreadingHTTPServer((IMDS_ADDR, 80), Imds)
        httpd.daemon_threads = True
        fwd = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        fwd.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        fwd.bind(("127.0.0.1", port))
        fwd.listen(64)
    except Exception as e:
        errors.append(e)
        ready.set()
        return

    def accept_loop():
        while True:
            conn, _ = fwd.accept()
            accepted.put(conn)

    # Threads made by this one share its namespace: fine, they only accept and serve.
    threading.Thread(target=accept_loop, daemon=True).start()
    ready.set()
    httpd.serve_forever()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sandbox.imds", description=__doc__.splitlines()[0])
    ap.add_argument("--netns-pid", type=int, required=True)
    ap.add_argument("--s3-port", type=int, required=True)
    ap.add_argument("--role", default=Imds.role)
    a = ap.parse_args(argv)
    Imds.role = a.role
    accepted: queue.Queue = queue.Queue()
    ready, errors = threading.Event(), []
    threading.Thread(target=dispatcher, args=(accepted, a.s3_port), daemon=True).start()
    t = threading.Thread(target=inside, args=(a.netns_pid, a.s3_port, accepted, ready, errors),
                         daemon=True)
    t.start()
    ready.wait()
    if errors:
        log(f"failed: {errors[0]!r}")
        return 1
    log(f"serving http://{IMDS_ADDR}/ and 127.0.0.1:{a.s3_port} -> host 127.0.0.1:{a.s3_port} "
        f"in the network namespace of pid {a.netns_pid}")
    print("ready", flush=True)
    t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
