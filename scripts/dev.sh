#!/usr/bin/env bash
# make dev: the sandbox, the operator on the host, one agent inside each simulated node's
# mount namespace, the manifests in examples/ applied, and what `kubectl get` shows.
# Stays up until Ctrl-C, then tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=$root/.venv/bin/python
sandbox() { PYTHONPATH=$root/tests/testbed "$py" -m sandbox "$@"; }
target=${CARGO_TARGET_DIR:-$root/target}

k8s_bin=$(scripts/deps.sh | tail -n1)
# shellcheck source=scripts/lib/supervise.sh
source scripts/lib/supervise.sh
mkdir -p .sandbox/logs
teardown() {
  # Its output goes to a file first: a closed stdout must not cut the teardown short.
  sandbox down >.sandbox/logs/dev-teardown.log 2>&1
  cat .sandbox/logs/dev-teardown.log 2>/dev/null || true
}
# From here on, the first Ctrl-C or TERM (even during start-up) tears the sandbox down and
# ends the script.
supervise_init dev teardown .sandbox/logs/dev-stop.log
sandbox up --k8s-bin "$k8s_bin" --python "$py" >/dev/null

# shellcheck disable=SC1091
source .sandbox/env
logs=.sandbox/logs
# Metrics and probes: the operator on 127.0.0.1:8080, the agents (which share the host's
# network: the nodes are mount namespaces) on 8081, 8082, ...
PGML_METRICS_ADDR=127.0.0.1:8080 "$target/debug/pgml-operator" --log-format text >"$logs/pgml-operator.log" 2>&1 &
supervise_add $!
port=8081
while read -r name ns_pid dev_dir mnt_dir; do
  nsenter -t "$ns_pid" -m -- env NODE_NAME="$name" PGML_DEV_DIR="$dev_dir" PGML_MOUNT_ROOT="$mnt_dir" \
    PGML_METRICS_ADDR="127.0.0.1:$port" KUBECONFIG="$KUBECONFIG" \
    "$target/debug/pgml-agent" --log-format text >"$logs/pgml-agent-$name.log" 2>&1 &
  supervise_add $!
  port=$((port + 1))
done < <("$py" -c 'import json,sys; [print(n["name"], n["ns_pid"], n["dev_dir"], n["mnt_dir"]) for n in json.load(open(sys.argv[1]))["nodes"]]' .sandbox/sandbox.json)

# The kubelet's part for the clusters' instance Pods: kwok marks them Running, this runs
# their container's `pgml-instance run` (and so PostgreSQL) on the simulated nodes.
"$target/debug/pgml-kubelet" demo >"$logs/pgml-kubelet.log" 2>&1 &
supervise_add $!

kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n demo -f examples/
# The pools built from new volumes become Ready once the operator has provisioned and
# attached their EBS volumes and the agents have built them; a pool restored from a
# snapshot waits for that snapshot.
fresh=$(kubectl get zfspools -n demo -o jsonpath='{range .items[?(!@.spec.restoreFrom)]}zfspool/{.metadata.name} {end}' 2>/dev/null || true)
if [ -z "$fresh" ]; then
  fresh=$(kubectl get zfspools -n demo -o go-template='{{range .items}}{{if not .spec.restoreFrom}}zfspool/{{.metadata.name}} {{end}}{{end}}')
fi
echo "dev: waiting for $fresh to be Ready"
# shellcheck disable=SC2086
kubectl wait -n demo --for=condition=Ready --timeout=180s $fresh || echo "dev: not Ready yet; see $logs"
# Then the snapshots of those pools, and the pools restored from them.
snaps=$(kubectl get ebssnapshots -n demo -o go-template='{{range .items}}{{if .spec.source.zfsPool}}ebssnapshot/{{.metadata.name}} {{end}}{{end}}')
if [ -n "$snaps" ]; then
  echo "dev: waiting for $snaps to be Completed"
  # shellcheck disable=SC2086
  kubectl wait -n demo --for=jsonpath='{.status.phase}'=Completed --timeout=120s $snaps || echo "dev: not Completed yet; see $logs"
fi
restored=$(kubectl get zfspools -n demo -o go-template='{{range .items}}{{if .spec.restoreFrom}}zfspool/{{.metadata.name}} {{end}}{{end}}')
if [ -n "$restored" ]; then
  echo "dev: waiting for $restored (restored from snapshots) to be Ready"
  # shellcheck disable=SC2086
  kubectl wait -n demo --for=condition=Ready --timeout=180s $restored || echo "dev: not Ready yet; see $logs"
fi
# The ZFS cluster that fits the sandbox's nodes: PostgreSQL started by its instance manager.
echo "dev: waiting for pgmlcluster/sandbox to be Healthy"
kubectl wait -n demo --for=jsonpath='{.status.phase}'=Healthy --timeout=180s pgmlcluster/sandbox \
  || echo "dev: not Healthy yet; see $logs/pgml-kubelet.log and $logs/tests/"
echo
echo "\$ kubectl get nodes -L topology.kubernetes.io/zone"
kubectl get nodes -L topology.kubernetes.io/zone
echo
for kind in zfspools ebssnapshots pgmlclusters; do
  echo "\$ kubectl get $kind -n demo -o wide"
  kubectl get "$kind" -n demo -o wide 2>&1 || true
  echo
done
echo "\$ kubectl pgml status sandbox -n demo      # the kubectl plugin (target/debug/kubectl-pgml)"
PATH="$target/debug:$PATH" kubectl pgml status sandbox -n demo 2>&1 || true
echo
echo "\$ curl -s 127.0.0.1:8080/metrics | grep -E '^pgml_(leader|zfspool_health|ec2_requests_total)'"
curl -s 127.0.0.1:8080/metrics | grep -E '^pgml_(leader|zfspool_health|ec2_requests_total)' | head -n 12 || true
echo
cat <<MSG
dev: running. In another terminal:
  source .sandbox/env          # KUBECONFIG, AWS_ENDPOINT_URL, kubectl on PATH
  kubectl get zfspools -n demo
  kubectl describe zfspool -n demo <name>
  kubectl describe ebssnapshot -n demo analytics-nightly
  kubectl describe pgmlcluster -n demo sandbox
  kubectl patch pgmlcluster -n demo sandbox --type merge -p '{"spec":{"instances":2}}'   # a replica seeded from a snapshot
  PATH=$target/debug:\$PATH kubectl pgml status sandbox -n demo   # also: snapshot, restore, switchover
  curl -s 127.0.0.1:8080/metrics   # the operator's metrics (agents: 8081, 8082, ...)
  aws ec2 describe-volumes     # (with the AWS CLI) what the operator made in the simulated EC2
Logs: .sandbox/logs/ (pgml-operator.log, pgml-agent-<node>.log, pgml-kubelet.log, tests/kubelet-demo-<pod>.log (PostgreSQL), kube-apiserver.log, ebssim.log, ...)
Ctrl-C stops everything.
MSG
# Report a process that exits (once), and keep the rest running until Ctrl-C or TERM.
supervise_forever
