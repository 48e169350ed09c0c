"""An HTTPS front to moto's S3, for clients that speak only HTTPS (pgBackRest's S3 driver).

`start()` makes a CA and a server certificate with `openssl` in `<sandbox>/tls/` (for
`127.0.0.1` and `localhost`, as DNS and IP names: pgBackRest 2.45 checks DNS names only)
and starts `python -m sandbox.s3tls` on a free loopback port, which forwards every request
as it came (method, path, headers, body) to moto and its answer back. Standard library
only. Nothing of EC2 goes through it: the EBS simulator stays what AWS SDKs use.

    state = start(sandbox_dir, log_dir, python, moto_url)
    # {"endpoint": "https://127.0.0.1:PORT", "host": "127.0.0.1", "port": PORT,
    #  "ca_file": ".../tls/ca.crt", "pid": ..., "argv": [...]}
    stop(state)
"""

from __future__ import annotations

import argparse
import http.client
import os
import pathlib
import ssl
import subprocess
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ebssim.server import read_body

from . import proc

TESTBED_DIR = pathlib.Path(__file__).resolve().parent.parent  # tests/testbed
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-connection", "content-length"}


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])}: {r.stderr.strip()}")


def make_certs(tls_dir: pathlib.Path) -> dict:
    """A CA (ca.crt) and a server certificate signed by it (server.crt, server.key) for
    127.0.0.1 and localhost. Made fresh at each sandbox start; keys never leave the folder."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "30", "-subj", "/CN=pgml sandbox S3 CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=tls_dir)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=tls_dir)
    (tls_dir / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:127.0.0.1,DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "30", "-extfile", "server.ext",
             cwd=tls_dir)
    for f in ("ca.crt", "server.crt"):
        os.chmod(tls_dir / f, 0o644)  # the CA is read by pgBackRest running as postgres
    os.chmod(tls_dir, 0o755)
    return {"ca_file": str(tls_dir / "ca.crt"), "cert": str(tls_dir / "server.crt"),
            "key": str(tls_dir / "server.key")}


def start(sandbox_dir, log_dir, python: str, moto_url: str) -> dict:
    sandbox_dir, log_dir = pathlib.Path(sandbox_dir), pathlib.Path(log_dir)
    certs = make_certs(sandbox_dir / "tls")
    port = proc.free_ports(1)[0]
    argv = [python, "-m", "sandbox.s3tls", "--port", str(port), "--moto", moto_url,
            "--cert", certs["cert"], "--key", certs["key"]]
    log = log_dir / "s3tls.log"
    pid = proc.spawn(argv, log, cwd=TESTBED_DIR, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    state = {"endpoint": f"https://127.0.0.1:{port}", "host": "127.0.0.1", "port": port,
             "ca_file": certs["ca_file"], "pid": pid, "argv": argv}
    ctx = ssl.create_default_context(cafile=certs["ca_file"])
    deadline = time.monotonic() + 30
    while True:
        if not proc.alive(pid):
            raise RuntimeError(f"s3tls (pid {pid}) exited before serving:\n{proc.log_tail(log, 20)}")
        try:
            c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
            c.request("GET", "/moto-api/data.json")
            c.getresponse().read()
            c.close()
            return state
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(state)
            raise RuntimeError(f"s3tls did not answer on {port}:\n{proc.log_tail(log, 20)}")
        time.sleep(0.1)


def stop(state: dict) -> None:
    pid = state.get("pid")
    name = os.path.basename(state["argv"][0]) if state.get("argv") else None
    if pid and not proc.terminate(int(pid), name):
        print(f"s3tls.stop: pid {pid} survived SIGKILL", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    moto: tuple[str, int]  # set on the subclass by serve()

    def log_message(self, fmt, *args):
        pass

    def read_body(self) -> bytes:
        return read_body(self.headers, self.rfile)

    def do_any(self) -> None:
        t0 = time.monotonic()
        body = self.read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            c = http.client.HTTPConnection(*self.moto, timeout=600)
            c.request(self.command, self.path, body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            status, out_headers = r.status, r.getheaders()
            c.close()
        except Exception as e:  # keep serving
            status, out_headers, data = 502, [("Content-Type", "text/plain")], f"s3tls: {e!r}".encode()
        self.send_response(status)
        length = None
        for k, v in out_headers:
            lk = k.lower()
            if lk == "content-length":
                length = v
            elif lk not in HOP and lk not in ("server", "date"):
                self.send_header(k, v)
        # HEAD answers carry the object's length and no body.
        self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        print(f"{self.command} {urllib.parse.urlsplit(self.path).path} {status} "
              f"{(time.monotonic() - t0) * 1000:.1f}ms", file=sys.stderr, flush=True)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_any


def serve(port: int, moto_url: str, cert: str, key: str, host: str = "127.0.0.1") -> None:
    u = urllib.parse.urlsplit(moto_url)
    handler = type("BoundHandler", (Handler,), {"moto": (u.hostname, u.port or 80)})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print(f"s3tls: https://{host}:{port} -> {moto_url}", file=sys.stderr, flush=True)
    httpd.serve_forever()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sandbox.s3tls", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--moto", required=True, help="moto server URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args(argv)
    serve(a.port, a.moto, a.cert, a.key, a.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
