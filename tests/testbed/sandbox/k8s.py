"""The sandbox's Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager.

The binaries come from `tests/testbed/k8s/build.sh` (one multi-call binary built from the
k8s.io/kubernetes Go module, with symlinks `etcd`, `kube-apiserver`,
`kube-controller-manager`, `kubectl`). Every process runs in its own session (and so its
own process group) and logs to `<log_dir>/<name>.log`, so the control plane outlives
whoever started it: `make sandbox-up` starts it, a later `make sandbox-down` stops it from
the state dict `start()` returned (save it whole, e.g. in sandbox.json: it is plain JSON).

Files, under `<sandbox_dir>`:
  kubeconfig          admin kubeconfig (client cert CN=admin, O=system:masters), self-contained
  bin/kubectl         symlink to the kubectl built with the control plane
  k8s/pki/            ca.{crt,key}, apiserver.{crt,key}, admin.{crt,key}, kcm.{crt,key},
                      sa.{key,pub} (service-account signing key pair)
  k8s/tokens.csv      static bearer tokens (see below)
  k8s/kcm.kubeconfig  kube-controller-manager's kubeconfig (CN=system:kube-controller-manager)
  k8s/etcd/           etcd's data (fsync off: test data only)
  k8s/audit-policy.yaml, k8s/audit.log
                      kube-apiserver's audit log (see AUDIT_POLICY): one JSON line per
                      write request (create/update/patch/delete) by anyone, and per read
                      (get/list) by a ServiceAccount, at level Metadata (who, userAgent,
                      verb, resource, name, code; never a body). On unless
                      PGML_SANDBOX_AUDIT=0 when the sandbox starts; rotated at 100 MB, one old file kept.

Static tokens (`state["token_file"]`): kube-apiserver's --token-auth-file, a CSV file with
one identity per line: `token,user,uid,"group1,group2"` (the group column is optional and
quoted when it holds several groups). kube-apiserver reads it only when it starts, so:
  * identities known up front: pass `start(..., extra_tokens=[{"user": "u", "groups": [...]}])`;
    their tokens are in `state["tokens"][user]`;
  * later: `add_token(state, user, groups)` appends a line and restarts kube-apiserver
    (a couple of seconds); or use ServiceAccount tokens (TokenRequest), which need no restart.
Bearer tokens are accepted beside client certs: `kubectl --token=T --server=S
--certificate-authority=CA` or a kubeconfig made by `token_kubeconfig()`.

Every external command is an argument vector; nothing here builds a shell string.
"""

from __future__ import annotations

import base64
import csv
import datetime
import io
import ipaddress
import json
import os
import pathlib
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import proc

KUBE_VERSION = "v1.35.4"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The host's address on the nodes' side (sandbox/realnode.py puts it on a veth before the
# control plane starts): where Pods in real containers reach kube-apiserver (the
# `kubernetes` Service's endpoint), the EBS simulator and the cluster DNS.
CONTROL_IP = "10.0.255.1"

START_TIMEOUT = 120.0  # a 2-core machine busy compiling can take a while
STOP_TIMEOUT = 10.0
# kube-apiserver's graceful shutdown waits for open watches (kube-controller-manager's, the
# operator's) up to its request timeout (60s); a restart does not wait that long.
APISERVER_RESTART_GRACE = 3.0

# Start order; stop goes the other way.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")

# Controllers the test bed relies on are all in the default set ("*"): garbagecollector,
# namespace, serviceaccount, serviceaccount-token, deployment, replicaset, statefulset,
# daemonset, job, endpointslice, ... (bootstrapsigner/tokencleaner stay off, as upstream).
KCM_CONTROLLERS = "*"


# The audit policy (audit.k8s.io/v1): writes by anyone and reads by ServiceAccounts (the
# operator and agents when they run with chart RBAC), at level Metadata, one line per
# request (RequestReceived omitted); nothing else. Watches are not logged. Costs one short
# JSON line per write: the benchmarks count who writes what (bench steady_state).
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
    verbs: ["get", "list"]
  - level: None
"""
AUDIT_MAX_MB = 100


def audit_enabled() -> bool:
    """The audit log is on unless PGML_SANDBOX_AUDIT=0 (read when the sandbox starts)."""
    return os.environ.get("PGML_SANDBOX_AUDIT", "1") != "0"


class K8sError(RuntimeError):
    pass


# --------------------------------------------------------------------------- processes


def _stop(pid: int | None, name: str, grace: float = STOP_TIMEOUT) -> None:
    """SIGTERM the component's process group, SIGKILL after `grace` seconds (grace=0:
    SIGKILL at once, like a crash). A pid that no longer runs `name` is left alone."""
    if not proc.terminate(pid, name, grace):
        raise K8sError(f"{name} (pid {pid}) survived SIGKILL")


# --------------------------------------------------------------------------- PKI


def _write_key(path: pathlib.Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: pathlib.Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _make_pki(pki: pathlib.Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pgml-sandbox-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki / "ca.key", ca_key)
    _write_cert(pki / "ca.crt", ca)

    def leaf(stem: str, cn: str, orgs: tuple[str, ...], server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, orgs))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=False, key_cert_sign=False,
                    crl_sign=False, content_commitment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes"),
                        x509.DNSName("kubernetes.default"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.DNSName("kubernetes.default.svc.cluster.local"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address(SERVICE_IP)),
                        x509.IPAddress(ipaddress.ip_address(CONTROL_IP)),
                    ]
                ),
                critical=False,
            )
        cert = b.sign(ca_key, hashes.SHA256())
        _write_key(pki / f"{stem}.key", key)
        _write_cert(pki / f"{stem}.crt", cert)

    leaf("apiserver", "kube-apiserver", (), server=True)
    leaf("admin", "admin", ("system:masters",), server=False)
    leaf("kcm", "system:kube-controller-manager", ("system:masters",), server=False)
    # kube-apiserver's client certificate towards the kubelets (logs, exec, port-forward).
    leaf("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",), server=False)
    leaf("scheduler", "system:kube-scheduler", (), server=False)
    leaf("proxy", "system:kube-proxy", (), server=False)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _b64(path: pathlib.Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _kubeconfig_text(server: str, ca: pathlib.Path, user: str, auth: dict) -> str:
    # JSON is YAML: kubectl and every client library read it.
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "sandbox", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}
            ],
            "users": [{"name": user, "user": auth}],
            "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": user}}],
            "current-context": "sandbox",
            "preferences": {},
        },
        indent=2,
    ) + "\n"


def _write_cert_kubeconfig(path: pathlib.Path, server: str, pki: pathlib.Path, stem: str, user: str) -> None:
    path.write_text(
        _kubeconfig_text(
            server,
            pki / "ca.crt",
            user,
            {
                "client-certificate-data": _b64(pki / f"{stem}.crt"),
                "client-key-data": _b64(pki / f"{stem}.key"),
            },
        )
    )
    path.chmod(0o600)


def token_kubeconfig(state: dict, token: str, path: pathlib.Path, user: str = "token-user") -> pathlib.Path:
    """Write a kubeconfig for `state`'s apiserver that authenticates with a bearer token."""
    path = pathlib.Path(path)
    path.write_text(_kubeconfig_text(state["server"], pathlib.Path(state["ca_file"]), user, {"token": token}))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- tokens


def _token_line(token: str, user: str, uid: str, groups) -> str:
    buf = io.StringIO()
    row = [token, user, uid]
    if groups:
        row.append(",".join(groups))
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


def add_token(
    state: dict,
    user: str,
    groups: list[str] | tuple[str, ...] = (),
    token: str | None = None,
    uid: str | None = None,
    restart: bool = True,
) -> str:
    """Append a static token for `user` to the token file; returns the token.

    kube-apiserver reads the file only at start, so by default it is restarted (state is
    updated in place with the new pid). With restart=False, batch several and call
    restart_apiserver(state) once.
    """
    token = token or secrets.token_hex(16)
    with open(state["token_file"], "a") as f:
        f.write(_token_line(token, user, uid or f"uid-{user}", groups))
    state.setdefault("tokens", {})[user] = token
    if restart:
        restart_apiserver(state)
    return token


# --------------------------------------------------------------------------- readiness


def _client_ctx(state_or_pki) -> ssl.SSLContext:
    pki = pathlib.Path(state_or_pki["pki_dir"]) if isinstance(state_or_pki, dict) else state_or_pki
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _get(url: str, ctx: ssl.SSLContext, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _wait_http(url: str, ctx: ssl.SSLContext, pid: int, name: str, log_file: pathlib.Path,
               timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive(pid):
            raise K8sError(f"{name} exited during start-up; last log lines:\n{proc.log_tail(log_file)}")
        try:
            code, body = _get(url, ctx, timeout=5.0)
            if code == 200:
                return
            last = f"HTTP {code}: {body[-500:]}"
        except (OSError, ssl.SSLError) as e:
            last = repr(e)
        time.sleep(0.3)
    raise K8sError(f"{name} not healthy at {url} after {timeout:.0f}s ({last}); log:\n{proc.log_tail(log_file)}")


def _wait_etcd(port: int, pid: int, log_file: pathlib.Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if not proc.alive(pid):
            raise K8sError(f"etcd exited during start-up; last log lines:\n{proc.log_tail(log_file)}")
        try:
            with urllib.request.urlopen(url, timeout=3.0) as r:
                if r.status == 200 and json.loads(r.read()).get("health") == "true":
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise K8sError(f"etcd not healthy after {timeout:.0f}s; log:\n{proc.log_tail(log_file)}")


def _wait_apiserver(state: dict) -> None:
    _wait_http(
        state["server"] + "/readyz",
        _client_ctx(state),
        state["pids"]["kube-apiserver"],
        "kube-apiserver",
        pathlib.Path(state["log_dir"]) / "kube-apiserver.log",
    )


# --------------------------------------------------------------------------- public API


def start(
    sandbox_dir: pathlib.Path,
    bin_dir: pathlib.Path,
    log_dir: pathlib.Path,
    extra_tokens: list[dict] | None = None,
) -> dict:
    """Start etcd, kube-apiserver and kube-controller-manager; return the state dict.

    The returned dict is JSON-serialisable; keep it whole for stop()/restart_apiserver():
      server       "https://127.0.0.1:PORT" (kube-apiserver)
      kubeconfig   <sandbox_dir>/kubeconfig, admin (CN=admin, O=system:masters)
      token_file   <sandbox_dir>/k8s/tokens.csv (format in the module docstring)
      tokens       {"admin": TOKEN, <user>: TOKEN for each of extra_tokens}
      ca_file      CA that signed the serving and client certs (and signs CSRs)
      pki_dir      all keys and certs
      kubectl      <sandbox_dir>/bin/kubectl
      sa_issuer    the service-account token issuer
      pids         {"etcd": PID, "kube-apiserver": PID, "kube-controller-manager": PID}
      ports        {"etcd": P, "etcd-peer": P, "kube-apiserver": P, "kube-controller-manager": P}
      argv         the command line of each component (used to restart it)
      log_dir      <log_dir>; each component logs to <log_dir>/<name>.log
      version      "v1.35.4"
      audit_log    <sandbox_dir>/k8s/audit.log (None when PGML_SANDBOX_AUDIT=0)
    extra_tokens: [{"user": NAME, "groups": [...], "token": optional, "uid": optional}]
    On failure everything already started is stopped again and K8sError is raised.
    """
    sandbox_dir = pathlib.Path(sandbox_dir).resolve()
    bin_dir = pathlib.Path(bin_dir).resolve()
    log_dir = pathlib.Path(log_dir).resolve()
    for c in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        if not os.access(bin_dir / c, os.X_OK):
            raise K8sError(f"{bin_dir / c} missing: run tests/testbed/k8s/build.sh")

    k8s_dir = sandbox_dir / "k8s"
    pki = k8s_dir / "pki"
    etcd_dir = k8s_dir / "etcd"
    if etcd_dir.exists():  # a fresh cluster each start; stale data would not match the new CA
        subprocess.run(["rm", "-rf", "--", str(etcd_dir)], check=True)
    k8s_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    _make_pki(pki)

    etcd_port, peer_port, api_port, kcm_port = proc.free_ports(4)
    server = f"https://127.0.0.1:{api_port}"

    tokens: dict[str, str] = {"admin": secrets.token_hex(16)}
    token_file = k8s_dir / "tokens.csv"
    lines = [_token_line(tokens["admin"], "admin", "uid-admin", ["system:masters"])]
    for t in extra_tokens or ():
        tok = t.get("token") or secrets.token_hex(16)
        tokens[t["user"]] = tok
        lines.append(_token_line(tok, t["user"], t.get("uid") or f"uid-{t['user']}", t.get("groups") or ()))
    token_file.write_text("".join(lines))
    token_file.chmod(0o600)

    kubeconfig = sandbox_dir / "kubeconfig"
    _write_cert_kubeconfig(kubeconfig, server, pki, "admin", "admin")
    kcm_kubeconfig = k8s_dir / "kcm.kubeconfig"
    _write_cert_kubeconfig(kcm_kubeconfig, server, pki, "kcm", "system:kube-controller-manager")

    (sandbox_dir / "bin").mkdir(exist_ok=True)
    kubectl = sandbox_dir / "bin" / "kubectl"
    if kubectl.is_symlink() or kubectl.exists():
        kubectl.unlink()
    kubectl.symlink_to(bin_dir / "kubectl")

    audit_flags: list[str] = []
    audit_log = None
    if audit_enabled():
        policy = k8s_dir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        audit_log = k8s_dir / "audit.log"
        audit_flags = [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            f"--audit-log-maxsize={AUDIT_MAX_MB}",
            "--audit-log-maxbackup=1",
            "--audit-log-format=json",
        ]

    argv = {
        "etcd": [
            str(bin_dir / "etcd"),
            "--name=sandbox",
            f"--data-dir={etcd_dir}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true",
        ],
        "kube-apiserver": [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--secure-port={api_port}",
            # Loopback for the host's clients, CONTROL_IP for Pods in containers.
            "--bind-address=0.0.0.0",
            f"--advertise-address={CONTROL_IP}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # Node: the real nodes' kubelets (system:node:<name>), with NodeRestriction.
            "--authorization-mode=Node,RBAC",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            # The nodes' names do not resolve here: reach kubelets by their InternalIP.
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={token_file}",
            # The `kubernetes` Service's endpoint is CONTROL_IP: Pods on the real nodes
            # reach it through kube-proxy, as in-cluster clients do.
            "--endpoint-reconciler-type=lease",
            *audit_flags,
            "--v=1",
        ],
        "kube-controller-manager": [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}",
            f"--authorization-kubeconfig={kcm_kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            f"--controllers={KCM_CONTROLLERS}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--v=1",
        ],
    }

    state = {
        "server": server,
        "kubeconfig": str(kubeconfig),
        "token_file": str(token_file),
        "tokens": tokens,
        "ca_file": str(pki / "ca.crt"),
        "pki_dir": str(pki),
        "kubectl": str(kubectl),
        "sa_issuer": SA_ISSUER,
        "pids": {},
        "ports": {
            "etcd": etcd_port,
            "etcd-peer": peer_port,
            "kube-apiserver": api_port,
            "kube-controller-manager": kcm_port,
        },
        "argv": argv,
        "log_dir": str(log_dir),
        "version": KUBE_VERSION,
        "audit_log": str(audit_log) if audit_log else None,
    }

    try:
        pid = proc.spawn(argv["etcd"], log_dir / "etcd.log")
        state["pids"]["etcd"] = pid
        _wait_etcd(etcd_port, pid, log_dir / "etcd.log")

        state["pids"]["kube-apiserver"] = proc.spawn(argv["kube-apiserver"], log_dir / "kube-apiserver.log")
        _wait_apiserver(state)

        pid = proc.spawn(argv["kube-controller-manager"], log_dir / "kube-controller-manager.log")
        state["pids"]["kube-controller-manager"] = pid
        # Its serving cert is self-signed in memory: health is checked without verification.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        _wait_http(f"https://127.0.0.1:{kcm_port}/healthz", insecure, pid,
                   "kube-controller-manager", log_dir / "kube-controller-manager.log")
    except BaseException:
        stop(state)
        raise
    return state


def stop(state: dict) -> None:
    """SIGTERM each component (newest first), SIGKILL after a few seconds. Idempotent.

    kube-controller-manager goes first: while its watches are open, kube-apiserver's
    graceful shutdown waits for them. Raises K8sError if a component survived SIGKILL
    (after trying to stop the others)."""
    pids = state.get("pids") or {}
    errors = []
    for name in reversed(COMPONENTS):
        try:
            _stop(pids.get(name), name)
        except K8sError as e:
            errors.append(str(e))
    if errors:
        raise K8sError("; ".join(errors))


def restart_apiserver(state: dict, down_seconds: float = 0.0,
                      grace: float = APISERVER_RESTART_GRACE) -> dict:
    """Stop kube-apiserver (SIGTERM, SIGKILL after `grace` seconds; grace=0 kills it at
    once, like a crash), stay down `down_seconds`, start it again with the same flags and
    wait for /readyz. etcd keeps the data. Updates state["pids"] in place; returns state."""
    _stop(state["pids"].get("kube-apiserver"), "kube-apiserver", grace)
    if down_seconds:
        time.sleep(down_seconds)
    log = pathlib.Path(state["log_dir"]) / "kube-apiserver.log"
    state["pids"]["kube-apiserver"] = proc.spawn(state["argv"]["kube-apiserver"], log)
    _wait_apiserver(state)
    return state


def status(state: dict) -> dict:
    """{component: True/False} – process alive (and apiserver /readyz answering 200)."""
    out = {name: proc.is_ours(state.get("pids", {}).get(name), name) for name in COMPONENTS}
    if out["kube-apiserver"]:
        try:
            out["kube-apiserver"] = _get(state["server"] + "/readyz", _client_ctx(state))[0] == 200
        except (OSError, ssl.SSLError):
            out["kube-apiserver"] = False
    return out


def kubectl(sandbox_dir: pathlib.Path, *args: str, check: bool = True, timeout: float = 120.0,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run the sandbox's kubectl with its admin kubeconfig; returns the CompletedProcess."""
    sandbox_dir = pathlib.Path(sandbox_dir)
    argv = [str(sandbox_dir / "bin" / "kubectl"), f"--kubeconfig={sandbox_dir / 'kubeconfig'}", *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise K8sError(f"{' '.join(argv)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p


def install_crds(sandbox_dir: pathlib.Path, crd_dir: pathlib.Path, timeout: float = 60.0) -> list[str]:
    """`kubectl apply --server-side -f <crd_dir>` and wait until every CRD applied is
    Established. Does nothing if the folder has no *.yaml / *.yml file. Returns the names
    of the CRDs applied ("customresourcedefinition.apiextensions.k8s.io/<name>")."""
    crd_dir = pathlib.Path(crd_dir)
    if not crd_dir.is_dir() or not any(
        p.suffix in (".yaml", ".yml") for p in crd_dir.iterdir() if p.is_file()
    ):
        return []
    p = kubectl(
        sandbox_dir, "apply", "--server-side", "--force-conflicts",
        "--field-manager=pgml-sandbox", "-o", "name", "-f", str(crd_dir),
    )
    crds = [
        line.strip() for line in p.stdout.splitlines()
        if line.strip().startswith("customresourcedefinition.apiextensions.k8s.io/")
    ]
    if crds:
        kubectl(sandbox_dir, "wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                *crds, timeout=timeout + 30)
    return crds
