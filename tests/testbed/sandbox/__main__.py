"""`python -m sandbox up|down|status|env` — the whole test bed, detached.

up      builds nothing; starts etcd + kube-apiserver + kube-controller-manager (binaries
        from $PGML_K8S_BIN, see tests/testbed/k8s/build.sh), installs crds/, starts moto
        behind the EBS simulator on an XFS reflink store, an HTTPS front to moto's S3
        (for pgBackRest; CA and certificate made by openssl in tls/), then the
        simulated nodes (one EC2 instance, one Node object and one mount namespace with its own zfs-fuse each),
        then kwok (binary from tests/testbed/kwok/build.sh), which keeps those Nodes Ready
        and runs the Pods bound to them, and writes sandbox.json, kubeconfig and env into
        the sandbox folder.
nodes-add N  starts extra nodes (zones in turn) until the sandbox has N of them, placed
        before the last, sacrificial node in sandbox.json; `up --extra-nodes N` does it at start.
down    stops all of it and removes the state (the logs stay).
status  says what runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys

from . import aws, dns, k8s, kwok, nodes, proc, realnode, s3tls, store

REPO = pathlib.Path(__file__).resolve().parents[3]
REGION = "us-east-1"
# Three nodes in three zones, named as EKS names them, so that the manifests in examples/
# apply unchanged here and read like what a user has. A fourth, in the first zone, is for
# tests that break a node's storage on purpose: a raid0 pool that lost a member suspends
# its I/O, and zfs-fuse then hangs every command on that node.
NODES = [
    ("ip-10-0-1-10.ec2.internal", "us-east-1a"),
    ("ip-10-0-2-10.ec2.internal", "us-east-1b"),
    ("ip-10-0-3-10.ec2.internal", "us-east-1c"),
    ("ip-10-0-1-20.ec2.internal", "us-east-1a"),
]
# Real nodes (sandbox/realnode.py): a kubelet with containerd and runc each, in two zones.
REAL_NODES = [
    ("ip-10-0-1-30.ec2.internal", "us-east-1a"),
    ("ip-10-0-2-30.ec2.internal", "us-east-1b"),
]
REAL_NODE_TAINT = "pgml.io/database"
INSTANCE_TYPE = "m7i.xlarge"


def sandbox_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PGML_SANDBOX") or REPO / ".sandbox").resolve()


def _log(msg: str) -> None:
    print(f"sandbox: {msg}", file=sys.stderr, flush=True)


def _node_manifest(name: str, az: str, instance_id: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/region": REGION,
                "topology.kubernetes.io/zone": az,
                "node.kubernetes.io/instance-type": INSTANCE_TYPE,
                "type": "kwok",
            },
            # Marks the node as simulated: kwok manages exactly the nodes with it.
            "annotations": {kwok.NODE_ANNOTATION[0]: kwok.NODE_ANNOTATION[1]},
        },
        "spec": {"providerID": f"aws:///{az}/{instance_id}"},
    }


def _node_ip(name: str) -> str:
    """The private IP an EC2 node name stands for: ip-10-0-1-10.ec2.internal -> 10.0.1.10."""
    return name.split(".", 1)[0].removeprefix("ip-").replace("-", ".")


def _node_addresses(name: str) -> dict:
    """The status addresses a kubelet on EC2 reports (kwok keeps those it finds, and gives a
    Pod its node's InternalIP as hostIP)."""
    return {"status": {"addresses": [
        {"type": "InternalIP", "address": _node_ip(name)},
        {"type": "InternalDNS", "address": name},
        {"type": "Hostname", "address": name},
    ]}}


def _write_state(d: pathlib.Path, state: dict) -> None:
    tmp = d / "sandbox.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(d / "sandbox.json")


def _write_env(d: pathlib.Path, state: dict) -> None:
    lines = {
        "PGML_SANDBOX": str(d),
        "KUBECONFIG": state["kube"]["kubeconfig"],
        "AWS_ENDPOINT_URL": state["aws"]["endpoint"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "PGML_SIM_ADMIN": state["aws"]["admin"],
        "PGML_S3_TLS_ENDPOINT": state["s3"]["endpoint"],
        "PGML_S3_CA_FILE": state["s3"]["ca_file"],
    }
    text = "".join(f"export {k}={json.dumps(v)}\n" for k, v in lines.items())
    text += f'export PATH={json.dumps(str(d / "bin"))}:"$PATH"\n'
    (d / "env").write_text(text)


def _start_one_node(d: pathlib.Path, state: dict, logs: pathlib.Path, name: str, az: str,
                    extra: bool = False) -> dict:
    """One simulated node: an EC2 instance in moto, a mount namespace with its zfs-fuse, the
    simulator told where its by-id links go, and its Node object. Recorded in state["nodes"]
    (an extra node goes before the last, sacrificial one, so that nodes[0..3] and the last
    stay what tests expect)."""
    instance_id = aws.run_instance(state["aws"]["endpoint"], az, INSTANCE_TYPE)
    info = nodes.start_node(d, name, logs)
    info.update(instance_id=instance_id, az=az, instance_type=INSTANCE_TYPE)
    if extra:
        info["extra"] = True
        state["nodes"].insert(len(state["nodes"]) - 1, info)
    else:
        state["nodes"].append(info)
    _write_state(d, state)
    aws.register_node(state["aws"]["admin"], instance_id, info["dev_dir"])
    k8s.kubectl(d, "apply", "--server-side", "--field-manager=pgml-sandbox", "-f", "-",
                input=json.dumps(_node_manifest(name, az, instance_id)))
    k8s.kubectl(d, "patch", "node", name, "--subresource=status", "--type=merge",
                "-p", json.dumps(_node_addresses(name)))
    _log(f"node {name}: {instance_id} in {az}, zfs-fuse pid {info.get('zfs_pid')}")
    return info


def _start_real_node(d: pathlib.Path, state: dict, logs: pathlib.Path, bin_dir: pathlib.Path,
                     name: str, az: str, images: list[pathlib.Path]) -> dict:
    """One real node: an EC2 instance in moto, the simulator's links, a Node object made
    with the labels EKS gives (the kubelet then registers into it) and the kubelet with its
    containerd. Recorded in state["real_nodes"]."""
    instance_id = aws.run_instance(state["aws"]["endpoint"], az, INSTANCE_TYPE)
    manifest = _node_manifest(name, az, instance_id)
    del manifest["metadata"]["annotations"]
    # Dedicated database nodes, as docs/install.md advises: only what tolerates
    # pgml.io/database runs there (the chart's agent does by default; the operator, the
    # instances and test clients say so), and the operator never places the simulated
    # nodes' instances here.
    manifest["spec"]["taints"] = [{"key": REAL_NODE_TAINT, "value": "true", "effect": "NoSchedule"}]
    manifest["metadata"]["labels"]["type"] = "real"
    manifest["metadata"]["labels"][REAL_NODE_TAINT] = "true"
    k8s.kubectl(d, "apply", "--server-side", "--field-manager=pgml-sandbox", "-f", "-",
                input=json.dumps(manifest))
    index = len(state["real_nodes"]) + 1
    info = realnode.start_node(d, state["kube"], bin_dir, logs, name, _node_ip(name), index,
                               manifest["spec"]["providerID"], images)
    info.update(instance_id=instance_id, az=az, instance_type=INSTANCE_TYPE)
    state["real_nodes"].append(info)
    _write_state(d, state)
    aws.register_node(state["aws"]["admin"], instance_id, info["dev_dir"])
    _log(f"real node {name}: {instance_id} in {az}, kubelet pid {info['kubelet_pid']}")
    return info


def _start_real_nodes(d: pathlib.Path, state: dict, logs: pathlib.Path, bin_dir: pathlib.Path,
                      count: int) -> None:
    images = sorted(pathlib.Path(realnode.images_dir()).glob("*.tar"))
    state.setdefault("real_nodes", [])
    for name, az in REAL_NODES[:count]:
        _start_real_node(d, state, logs, bin_dir, name, az, images)
    state["shared"] = realnode.start_shared(d, state["kube"], bin_dir, logs, REAL_NODES[0][0])
    _write_state(d, state)
    state["dns"] = dns.start(d, state["kube"]["kubeconfig"], logs)
    _write_state(d, state)
    k8s.kubectl(d, "wait", "--for=condition=Ready", "--timeout=120s",
                *(f"node/{n}" for n, _ in REAL_NODES[:count]), timeout=150)
    _log(f"{count} real node(s) Ready")


def extra_node_name(k: int) -> tuple[str, str]:
    """The k-th extra node (0-based): zones in turn, ip-10-0-<zone>-<100+k>."""
    zone = k % 3 + 1
    return f"ip-10-0-{zone}-{100 + k}.ec2.internal", f"{REGION}{'abc'[zone - 1]}"


def _add_extra_nodes(d: pathlib.Path, state: dict, logs: pathlib.Path, count: int) -> list[str]:
    """Starts extra nodes until the sandbox has `count` of them (for benches that need more
    attachments than four instances take); kwok keeps them Ready as it does the others."""
    have = sum(1 for n in state["nodes"] if n.get("extra"))
    names = []
    for k in range(have, count):
        name, az = extra_node_name(k)
        _start_one_node(d, state, logs, name, az, extra=True)
        names.append(name)
    if names:
        k8s.kubectl(d, "wait", "--for=condition=Ready", "--timeout=120s",
                    *(f"node/{n}" for n in names), timeout=150)
    return names


def nodes_add(args) -> int:
    """`nodes-add N`: the running sandbox gets extra nodes until it has N of them."""
    d = sandbox_dir()
    f = d / "sandbox.json"
    if not f.exists():
        _log("no sandbox")
        return 1
    state = json.loads(f.read_text())
    try:
        names = _add_extra_nodes(d, state, d / "logs", args.count)
    except BaseException as e:
        _log(f"adding nodes failed: {e} (`down` stops those started)")
        return 1
    _log(f"{len(names)} extra node(s) started; {sum(1 for n in state['nodes'] if n.get('extra'))} in all")
    return 0


def up(args) -> int:
    d = sandbox_dir()
    if (d / "sandbox.json").exists():
        _log(f"{d} holds a sandbox already; stopping it first")
        down(args)
    bin_dir = pathlib.Path(args.k8s_bin or os.environ.get("PGML_K8S_BIN", ""))
    if not (bin_dir / "kube-apiserver").exists():
        _log("no Kubernetes binaries: pass --k8s-bin or set PGML_K8S_BIN "
             "(tests/testbed/k8s/build.sh prints the folder)")
        return 2
    logs = d / "logs"
    d.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    venv_python = args.python or sys.executable

    state: dict = {"region": REGION, "nodes": [], "dir": str(d)}
    # Written after each step, so `down` can stop whatever a failed `up` started.
    try:
        _log("starting the image store (XFS, reflink)")
        store_dir = store.start(d)
        realnode.prepare_host()
        _log("starting etcd, kube-apiserver, kube-controller-manager")
        kube = k8s.start(d, bin_dir, logs)
        state["kube"] = kube
        _write_state(d, state)
        crds = k8s.install_crds(d, pathlib.Path(args.crds))
        _log(f"installed {len(crds)} CRDs")
        _log("starting moto and the EBS simulator")
        state["aws"] = aws.start(d, store_dir, logs, venv_python)
        _write_state(d, state)
        _log("starting the HTTPS front of moto's S3 (for pgBackRest)")
        state["s3"] = s3tls.start(d, logs, venv_python, state["aws"]["moto"])
        _write_state(d, state)
        for name, az in NODES:
            _start_one_node(d, state, logs, name, az)
        _log("starting kwok (the simulated nodes' kubelet)")
        state["kwok"] = kwok.start(d, pathlib.Path(kube["kubeconfig"]), logs,
                                   pathlib.Path(args.kwok_bin) if args.kwok_bin else None)
        _write_state(d, state)
        k8s.kubectl(d, "wait", "--for=condition=Ready", "--timeout=60s",
                    *(f"node/{name}" for name, _ in NODES), timeout=90)
        _log(f"kwok pid {state['kwok']['pid']}: nodes Ready")
        if getattr(args, "extra_nodes", 0):
            _add_extra_nodes(d, state, logs, args.extra_nodes)
        if args.real_nodes:
            _start_real_nodes(d, state, logs, bin_dir, args.real_nodes)
    except BaseException as e:
        _log(f"start failed: {e}")
        down(args)
        return 1
    _write_env(d, state)
    _log(f"up: source {d / 'env'} to use kubectl and the AWS CLI against it")
    print(d)
    return 0


def down(args) -> int:
    d = sandbox_dir()
    f = d / "sandbox.json"
    state = json.loads(f.read_text()) if f.exists() else {}
    if "dns" in state:
        dns.stop(state["dns"])
    if "shared" in state:
        realnode.stop_shared(state["shared"])
    for info in reversed(state.get("real_nodes", [])):
        try:
            realnode.stop_node(info)
        except Exception as e:  # keep going: the rest must still stop
            _log(f"stopping real node {info.get('name')}: {e}")
    if "kwok" in state:
        try:
            kwok.stop(state["kwok"])
        except Exception as e:  # keep going: the rest must still stop
            _log(f"stopping kwok: {e}")
    for info in reversed(state.get("nodes", [])):
        try:
            nodes.stop_node(info)
        except Exception as e:  # keep going: the rest must still stop
            _log(f"stopping node {info.get('name')}: {e}")
    if "s3" in state:
        s3tls.stop(state["s3"])
    if "aws" in state:
        aws.stop(state["aws"])
    if "kube" in state:
        k8s.stop(state["kube"])
    store.stop(d)
    realnode.teardown_host()
    for p in ("sandbox.json", "env", "kubeconfig"):
        (d / p).unlink(missing_ok=True)
    for p in ("k8s", "kwok", "nodes", "bin", "store", "tmp", "tls", "coredns"):
        shutil.rmtree(d / p, ignore_errors=True)
    if state:
        _log("down")
    return 0


def status(args) -> int:
    f = sandbox_dir() / "sandbox.json"
    if not f.exists():
        print("no sandbox")
        return 1
    state = json.loads(f.read_text())
    out = {"kube": k8s.status(state["kube"]) if "kube" in state else None}
    out["kwok"] = kwok.status(state["kwok"]) if "kwok" in state else None
    if "s3" in state:
        out["s3"] = {"endpoint": state["s3"]["endpoint"], "alive": proc.alive(state["s3"].get("pid"))}
    out["nodes"] = {n["name"]: nodes.node_status(n) for n in state.get("nodes", [])}
    out["real_nodes"] = {n["name"]: realnode.node_status(n) for n in state.get("real_nodes", [])}
    print(json.dumps(out, indent=2))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start the sandbox, detached")
    u.add_argument("--k8s-bin", help="folder with kube-apiserver, etcd, ... (default $PGML_K8S_BIN)")
    u.add_argument("--kwok-bin", help="folder with kwok and stages.yaml (default $PGML_KWOK_BIN, "
                   "else where tests/testbed/kwok/build.sh puts them)")
    u.add_argument("--python", help="python of the venv with moto (default: this one)")
    u.add_argument("--crds", default=str(REPO / "crds"), help="CRD folder to install (default: crds/)")
    u.add_argument("--extra-nodes", type=int, default=0,
                   help="extra simulated nodes beyond the four (for benches; see nodes-add)")
    u.add_argument("--real-nodes", type=int, default=int(os.environ.get("PGML_REAL_NODES", "0")),
                   choices=range(0, len(REAL_NODES) + 1),
                   help="real nodes (kubelet, containerd, runc) beside the simulated ones "
                        "(default $PGML_REAL_NODES, else 0)")
    a = sub.add_parser("nodes-add", help="start extra nodes in the running sandbox until it has N")
    a.add_argument("count", type=int)
    sub.add_parser("down", help="stop the sandbox")
    sub.add_parser("status", help="what runs")
    args = p.parse_args()
    return {"up": up, "down": down, "status": status, "nodes-add": nodes_add}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
