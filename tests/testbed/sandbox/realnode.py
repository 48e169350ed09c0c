"""Real nodes: a kubelet with its own containerd and runc, in a node's namespaces.

A real node is what a simulated node is (an EC2 instance in moto, its own zfs-fuse daemon,
the simulator's by-id links) plus what runs containers, as on an EKS node:

* its own **mount and PID namespaces** (`unshare -m -p --fork --mount-proc`): PID 1 of the
  namespace is a small reaper (`INIT`), so a `hostPID` Pod (the agent) sees the node's
  processes and `nsenter --target 1 --mount` reaches the node's mount namespace, where the
  node's zfs-fuse serves `zpool`/`zfs`; `/` is made rshared inside, so the kubelet's
  Bidirectional mount propagation works; `/dev/disk/by-id` is the node's EBS NVMe links and
  the chart's mount root (`MOUNT_ROOT`), the agent's state folder and `/var/log` are the
  node's own folders;
* **containerd** (Debian's 1.6) with its own root, state, socket and CNI configuration, runc
  through `runc-wrapper` (this machine lacks CAP_SYS_RESOURCE: a negative `oom_score_adj`
  in a bundle is raised to 0 before runc sees it), the images of `scripts/images.sh`
  imported (there is no registry);
* the **kubelet** built with the control plane (tests/testbed/k8s), cgroupfs driver under
  its own cgroup root, authenticated with a `system:node:<name>` client certificate, serving
  on the node's address (an address of the host's `pgml-host` veth: the host network is
  shared by the nodes, as the nodes of one VPC share a network);
* **CNI**: a bridge per node (`pgml<i>`, 10.245.<i>.0/24, no masquerade: Pods see each
  other's addresses) with host-local IPAM and portmap, from Debian's
  containernetworking-plugins; routes between the bridges are the host's own.

Shared by all real nodes (one host network): **kube-proxy** (iptables mode) for Services and
**kube-scheduler** for Pods the operator does not bind itself; the cluster DNS is
`sandbox/dns.py`. The simulated (kwok) nodes get a NoSchedule taint so the scheduler never
places a Pod there.

Every external command is an argument vector; nothing here builds a shell string.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import k8s, nodes, proc

HOST_IF = "pgml-host"
PEER_IF = "pgml-nodes"
CONTROL_IP = k8s.CONTROL_IP
# Not kwok's 10.244.0.0/16: the simulated Pods' made-up addresses must not be routable here.
POD_CIDR = "10.245.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
# The agent's mount root and hold records as the chart's defaults put them
# (agent.mountRoot, agent.stateDir); bound to the node's own folders inside.
MOUNT_ROOT = "/var/lib/pgml"
STATE_DIR = "/var/lib/pgml-agent"
PAUSE_IMAGE = "localhost/pause:dev"
CNI_BIN = "/usr/lib/cni"
START_TIMEOUT = 90.0

# PID 1 of a node's PID namespace: reaps whatever is reparented to it (containerd shims).
INIT = """
import os, signal, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)
"""

# containerd's runc BinaryName: lower a negative oom_score_adj to 0 (no CAP_SYS_RESOURCE
# here), then exec the real runc with the same arguments.
RUNC_WRAPPER = """#!/usr/bin/python3
import json, os, sys
args = sys.argv[1:]
if "create" in args or "run" in args:
    bundle = "."
    for i, a in enumerate(args):
        if a in ("--bundle", "-b") and i + 1 < len(args):
            bundle = args[i + 1]
        elif a.startswith("--bundle="):
            bundle = a.split("=", 1)[1]
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            spec = json.load(f)
        p = spec.get("process") or {}
        if p.get("oomScoreAdj", 0) < 0:
            p["oomScoreAdj"] = 0
            with open(path + ".tmp", "w") as f:
                json.dump(spec, f)
            os.replace(path + ".tmp", path)
    except FileNotFoundError:
        pass
os.execv("/usr/sbin/runc", ["runc", *args])
"""


class RealNodeError(RuntimeError):
    pass


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- host network


def prepare_host() -> None:
    """The veth whose `pgml-host` end carries CONTROL_IP and the real nodes' addresses, and
    forwarding between the nodes' bridges. Idempotent."""
    if _run(["ip", "link", "show", HOST_IF], check=False).returncode != 0:
        _run(["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF])
    for dev in (HOST_IF, PEER_IF):
        _run(["ip", "link", "set", dev, "up"])
    add_address(CONTROL_IP)
    for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
        f = pathlib.Path("/proc/sys") / key
        if f.exists() and f.read_text().strip() != value:
            f.write_text(value)


def add_address(ip: str) -> None:
    r = _run(["ip", "addr", "add", f"{ip}/32", "dev", HOST_IF], check=False)
    if r.returncode != 0 and "File exists" not in r.stderr:
        raise RealNodeError(f"ip addr add {ip}: {r.stderr.strip()}")


def teardown_host() -> None:
    """Removes the veth (and with it every address on it) and the nodes' bridges."""
    _run(["ip", "link", "del", HOST_IF], check=False)
    for line in _run(["ip", "-o", "link", "show", "type", "bridge"], check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("pgml"):
            _run(["ip", "link", "del", name], check=False)


# --------------------------------------------------------------------------- certificates


def _client_cert(pki: pathlib.Path, stem: str, cn: str, orgs: tuple[str, ...]) -> None:
    """A client certificate signed by the sandbox CA (k8s/pki/ca.*)."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    k8s._write_key(pki / f"{stem}.key", key)
    k8s._write_cert(pki / f"{stem}.crt", cert)


def _kubeconfig(kube: dict, stem: str, user: str, path: pathlib.Path) -> pathlib.Path:
    k8s._write_cert_kubeconfig(path, kube["server"], pathlib.Path(kube["pki_dir"]), stem, user)
    return path


# --------------------------------------------------------------------------- one node


def _nsenter(init_pid: int, argv: list[str]) -> list[str]:
    return ["nsenter", "-t", str(init_pid), "-m", "-p", "--", *argv]


def node_exec(info: dict, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return _run(_nsenter(int(info["init_pid"]), argv), check=check)


def _child_of(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        if not proc.alive(pid):
            break
        time.sleep(0.02)
    raise RealNodeError(f"unshare (pid {pid}) started no namespace init")


def _cgroup_root(name: str) -> str:
    """The kubelet's cgroup root, made under every v1 controller (cpuset copied from its
    parent, as a new cpuset cgroup starts empty)."""
    root = f"/pgml-{name.split('.')[0]}"
    base = pathlib.Path("/sys/fs/cgroup")
    for ctrl in base.iterdir():
        if not ctrl.is_dir() or ctrl.name == "unified":
            continue
        d = ctrl / root.lstrip("/")
        d.mkdir(exist_ok=True)
        if ctrl.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((ctrl / f).read_text())
    return root


def _containerd_config(root: pathlib.Path, index: int) -> pathlib.Path:
    cd = root / "containerd"
    for d in ("root", "state", "net.d", "ipam"):
        (cd / d).mkdir(parents=True, exist_ok=True)
    wrapper = cd / "runc-wrapper"
    wrapper.write_text(RUNC_WRAPPER)
    wrapper.chmod(0o755)
    (cd / "net.d" / "10-pgml.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": f"pgml{index}",
        "plugins": [
            {"type": "bridge", "bridge": f"pgml{index}", "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(cd / "ipam"),
                      "ranges": [[{"subnet": f"10.245.{index}.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2))
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{cd / 'root'}"
state = "{cd / 'state'}"
[grpc]
  address = "{cd / 'containerd.sock'}"
[ttrpc]
  address = "{cd / 'containerd.sock.ttrpc'}"
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_unprivileged_ports = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cd / 'net.d'}"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{wrapper}"
        SystemdCgroup = false
"""
    conf = cd / "config.toml"
    conf.write_text(text)
    return conf


def _kubelet_config(root: pathlib.Path, info: dict, cgroup_root: str, healthz_port: int) -> pathlib.Path:
    kl = root / "kubelet"
    kl.mkdir(parents=True, exist_ok=True)
    resolv = kl / "resolv.conf"
    resolv.write_text(f"nameserver {CONTROL_IP}\n")
    conf = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": info["ip"],
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{root / 'containerd' / 'containerd.sock'}",
        "providerID": info["provider_id"],
        "clusterDNS": [CONTROL_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": info["ca_file"]},
        },
        "authorization": {"mode": "Webhook"},
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "localStorageCapacityIsolation": False,
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "syncFrequency": "10s",
        "nodeStatusUpdateFrequency": "10s",
    }
    path = kl / "config.yaml"
    path.write_text(json.dumps(conf, indent=2))
    return path


def start_node(sandbox_dir: pathlib.Path, kube: dict, bin_dir: pathlib.Path, log_dir: pathlib.Path,
               name: str, ip: str, index: int, provider_id: str, images: list[pathlib.Path]) -> dict:
    """Starts one real node (namespaces, zfs-fuse, containerd with `images`, kubelet).

    Returns {"name", "ip", "ns_pid", "init_pid", "zfs_pid", "containerd_pid", "kubelet_pid",
    "root", "dev_dir", "mnt_dir", "cgroup_root", "containerd_sock", "real": True}."""
    sandbox_dir = pathlib.Path(sandbox_dir).resolve()
    root = sandbox_dir / "nodes" / name
    dev_dir = root / "dev" / "disk" / "by-id"
    mnt_dir = root / "mnt"
    state_dir = root / "agent-state"
    var_log = root / "var-log"
    for d in (dev_dir, mnt_dir, state_dir, var_log, log_dir):
        d.mkdir(parents=True, exist_ok=True)
    # Mount points, empty on the host (this host has no /dev/disk), mounted over inside.
    for d in (*nodes.ZFS_STATE_DIRS, MOUNT_ROOT, STATE_DIR, "/dev/disk"):
        pathlib.Path(d).mkdir(parents=True, exist_ok=True)
    add_address(ip)
    ns_pid = proc.spawn(
        ["unshare", "-m", "-p", "--fork", "--kill-child", "--mount-proc", "--propagation", "private",
         "--", "python3", "-c", INIT],
        log_dir / f"ns-{name}.log",
    )
    info = {"name": name, "ip": ip, "ns_pid": ns_pid, "init_pid": None, "root": str(root),
            "dev_dir": str(dev_dir), "mnt_dir": str(mnt_dir), "real": True,
            "ca_file": kube["ca_file"], "provider_id": provider_id,
            "containerd_sock": str(root / "containerd" / "containerd.sock")}
    try:
        info["init_pid"] = _child_of(ns_pid)
        _wait_ns(info)
        for d in nodes.ZFS_STATE_DIRS:
            node_exec(info, ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", d])
        node_exec(info, ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/dev/disk"])
        node_exec(info, ["mkdir", "-p", "/dev/disk/by-id"])
        node_exec(info, ["mount", "--bind", str(dev_dir), "/dev/disk/by-id"])
        node_exec(info, ["mount", "--bind", str(mnt_dir), MOUNT_ROOT])
        node_exec(info, ["mount", "--bind", str(state_dir), STATE_DIR])
        # The kubelet's container logs (/var/log/pods, /var/log/containers): each node its
        # own, or one kubelet's log cleanup removes the other's Pods' logs.
        node_exec(info, ["mount", "--bind", str(var_log), "/var/log"])
        node_exec(info, ["mount", "--make-rshared", "/"])

        zlog = log_dir / f"zfs-{name}.log"
        info["zfs_pid"] = proc.spawn(_nsenter(info["init_pid"], ["zfs-fuse", "--no-daemon", "--no-kstat-mount"]), zlog)
        _wait_cmd(info, ["zpool", "list", "-H"], info["zfs_pid"], zlog, "zfs-fuse")

        conf = _containerd_config(root, index)
        clog = log_dir / f"containerd-{name}.log"
        info["containerd_pid"] = proc.spawn(_nsenter(info["init_pid"], ["containerd", "--config", str(conf)]), clog)
        ctr = ["ctr", "--address", info["containerd_sock"], "-n", "k8s.io"]
        _wait_cmd(info, [*ctr, "version"], info["containerd_pid"], clog, "containerd")
        for image in images:
            node_exec(info, [*ctr, "images", "import", "--no-unpack", str(image)])

        info["cgroup_root"] = _cgroup_root(name)
        kl_dir = root / "kubelet"
        kl_dir.mkdir(parents=True, exist_ok=True)
        pki = pathlib.Path(kube["pki_dir"])
        stem = f"kubelet-{name.split('.')[0]}"
        _client_cert(pki, stem, f"system:node:{name}", ("system:nodes",))
        kubeconfig = _kubeconfig(kube, stem, f"system:node:{name}", kl_dir / "kubeconfig")
        (healthz,) = proc.free_ports(1)
        kconf = _kubelet_config(root, info, info["cgroup_root"], healthz)
        klog = log_dir / f"kubelet-{name}.log"
        info["kubelet_pid"] = proc.spawn(_nsenter(info["init_pid"], [
            str(bin_dir / "kubelet"),
            f"--config={kconf}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={kl_dir / 'root'}",
            f"--cert-dir={kl_dir / 'pki'}",
            f"--hostname-override={name}",
            f"--node-ip={ip}",
            "--v=1",
        ]), klog)
    except BaseException:
        stop_node(info)
        raise
    return info


def _wait_ns(info: dict) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if node_exec(info, ["true"], check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise RealNodeError(f"namespace of {info['name']} cannot be entered")


def _wait_cmd(info: dict, argv: list[str], pid: int, log: pathlib.Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive(pid):
            raise RealNodeError(f"{what} of {info['name']} exited: {proc.log_tail(log, 10)}")
        r = node_exec(info, argv, check=False)
        if r.returncode == 0:
            return
        last = (r.stderr or r.stdout).strip()
        time.sleep(0.2)
    raise RealNodeError(f"{what} of {info['name']} not ready in {START_TIMEOUT}s: {last}")


def stop_node(info: dict) -> None:
    """Stops the kubelet, then everything in the node's PID namespace (its init going takes
    containerd, the shims and the containers with it), then removes its cgroups. Idempotent."""
    for key, name in (("kubelet_pid", "nsenter"), ("containerd_pid", "nsenter"), ("zfs_pid", "nsenter")):
        proc.terminate(info.get(key), name, 10)
    proc.terminate(info.get("ns_pid"), "unshare", 5, group=False)
    root = info.get("cgroup_root")
    if root:
        # The namespace's last processes leave their cgroups a moment after it ends.
        for _ in range(20):
            if _remove_cgroups(root):
                break
            time.sleep(0.25)


def _remove_cgroups(root: str) -> bool:
    """Removes the node's cgroups under every hierarchy (v1 controllers and the unified
    one the kubelet also uses); True when none is left."""
    base = pathlib.Path("/sys/fs/cgroup")
    left = False
    for ctrl in base.iterdir():
        d = ctrl / root.lstrip("/")
        if not d.is_dir():
            continue
        # Deepest first: a cgroup with children cannot be removed.
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            d.rmdir()
        except OSError:
            left = True
    return not left


# --------------------------------------------------------------------------- shared parts


def start_shared(sandbox_dir: pathlib.Path, kube: dict, bin_dir: pathlib.Path, log_dir: pathlib.Path,
                 proxy_node: str) -> dict:
    """kube-proxy (one for the one host network) and kube-scheduler."""
    d = pathlib.Path(sandbox_dir) / "k8s"
    proxy_kc = _kubeconfig(kube, "proxy", "system:kube-proxy", d / "proxy.kubeconfig")
    sched_kc = _kubeconfig(kube, "scheduler", "system:kube-scheduler", d / "scheduler.kubeconfig")
    pm, ph, ss = proc.free_ports(3)
    proxy_conf = d / "kube-proxy.yaml"
    proxy_conf.write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(proxy_kc)},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": proxy_node,
        "metricsBindAddress": f"127.0.0.1:{pm}",
        "healthzBindAddress": f"127.0.0.1:{ph}",
        # No sysctl writes for conntrack (the host's limits are what they are).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }, indent=2))
    state = {"pids": {}, "proxy_bin": str(bin_dir / "kube-proxy")}
    state["pids"]["kube-proxy"] = proc.spawn(
        [str(bin_dir / "kube-proxy"), f"--config={proxy_conf}", "--v=1"], log_dir / "kube-proxy.log")
    state["pids"]["kube-scheduler"] = proc.spawn([
        str(bin_dir / "kube-scheduler"),
        f"--kubeconfig={sched_kc}",
        f"--authentication-kubeconfig={sched_kc}",
        f"--authorization-kubeconfig={sched_kc}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={ss}",
        "--v=1",
    ], log_dir / "kube-scheduler.log")
    return state


def stop_shared(state: dict, bin_dir: pathlib.Path | None = None) -> None:
    """Stops kube-scheduler and kube-proxy, then removes the iptables rules kube-proxy made
    (`kube-proxy --cleanup`), so the host is left as it was."""
    for name in ("kube-scheduler", "kube-proxy"):
        proc.terminate(state.get("pids", {}).get(name), None, 10)
    binary = state.get("proxy_bin") or (bin_dir and str(pathlib.Path(bin_dir) / "kube-proxy"))
    if binary:
        subprocess.run([binary, "--cleanup"], capture_output=True, timeout=60, check=False)


def node_status(info: dict) -> dict:
    return {
        "name": info.get("name"),
        "real": True,
        "ns_alive": proc.alive(info.get("ns_pid")),
        "containerd_alive": proc.alive(info.get("containerd_pid")),
        "kubelet_alive": proc.alive(info.get("kubelet_pid")),
        "zfs_alive": proc.alive(info.get("zfs_pid")),
    }


def images_dir() -> pathlib.Path:
    cache = pathlib.Path(os.environ.get("PGML_CACHE") or pathlib.Path.home() / ".cache" / "pgml-operator")
    return cache / "images" / "out"

