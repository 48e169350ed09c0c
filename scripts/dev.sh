#!/usr/bin/env bash
# make dev: the sandbox with two real nodes (kubelet, containerd, runc) beside the simulated
# ones, and two installations of the operator:
#   - the chart, installed with helm into pgml-system from the images scripts/images.sh
#     builds (operator Deployment, agent DaemonSet, instance Pods: real containers on the
#     real nodes), watching the namespace `databases`, where tests/testbed/dev/databases.yaml
#     makes a 2-instance PgmlCluster;
#   - the operator on the host and one agent inside each simulated node's mount namespace,
#     watching `demo`, where the manifests in examples/ are applied (their node names are
#     the simulated nodes').
# Then what `kubectl get` shows. Stays up until Ctrl-C, then tears everything down.
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
echo "dev: building the images (scripts/images.sh: cached)"
scripts/images.sh --bin-dir "$target/debug" >/dev/null
sandbox up --k8s-bin "$k8s_bin" --python "$py" --real-nodes 2 >/dev/null

# shellcheck disable=SC1091
source .sandbox/env
logs=.sandbox/logs
# Metrics and probes: the operator on 127.0.0.1:8080, the agents (which share the host's
# network: the nodes are mount namespaces) on 8081, 8082, ...
PGML_WATCH_NAMESPACE=demo PGML_METRICS_ADDR=127.0.0.1:8080 "$target/debug/pgml-operator" --log-format text >"$logs/pgml-operator.log" 2>&1 &
supervise_add $!
port=8081
while read -r name ns_pid dev_dir mnt_dir; do
  nsenter -t "$ns_pid" -m -- env PGML_WATCH_NAMESPACE=demo NODE_NAME="$name" PGML_DEV_DIR="$dev_dir" PGML_MOUNT_ROOT="$mnt_dir" \
    PGML_METRICS_ADDR="127.0.0.1:$port" KUBECONFIG="$KUBECONFIG" \
    "$target/debug/pgml-agent" --log-format text >"$logs/pgml-agent-$name.log" 2>&1 &
  supervise_add $!
  port=$((port + 1))
done < <("$py" -c 'import json,sys; [print(n["name"], n["ns_pid"], n["dev_dir"], n["mnt_dir"]) for n in json.load(open(sys.argv[1]))["nodes"]]' .sandbox/sandbox.json)

# The kubelet's part for the clusters' instance Pods: kwok marks them Running, this runs
# their container's `pgml-instance run` (and so PostgreSQL) on the simulated nodes.
"$target/debug/pgml-kubelet" demo >"$logs/pgml-kubelet.log" 2>&1 &
supervise_add $!

# The chart on the real nodes: the values a platform team gives for dedicated database nodes,
# plus the sandbox's images (no registry: pullPolicy Never), EC2 endpoint and moto's test
# keys (no IMDS for Pods here), and the simulator's image store (where its device links point).
helm=$(bash tests/testbed/helm/build.sh --print 2>/dev/null | tail -n1)
store=$root/.sandbox/store
cat >.sandbox/dev-values.yaml <<VALUES
operator:
  image: {repository: localhost/pgml-operator, tag: dev, pullPolicy: Never}
  watchNamespace: databases
  logFormat: text
  nodeSelector: {pgml.io/database: "true"}
  tolerations: [{key: pgml.io/database, operator: Exists}]
  extraEnv:
    - {name: AWS_ENDPOINT_URL, value: "$AWS_ENDPOINT_URL"}
    - {name: AWS_ACCESS_KEY_ID, value: testing}
    - {name: AWS_SECRET_ACCESS_KEY, value: testing}
agent:
  image: {repository: localhost/pgml-agent, tag: dev, pullPolicy: Never}
  checkNvmeSerial: false
  logFormat: text
  nodeSelector: {pgml.io/database: "true"}
  extraVolumes: [{name: ebs-store, hostPath: {path: "$store", type: Directory}}]
  extraVolumeMounts: [{name: ebs-store, mountPath: "$store", readOnly: true}]
aws:
  region: $AWS_REGION
VALUES
kubectl create namespace databases --dry-run=client -o yaml | kubectl apply -f - >/dev/null
echo "dev: helm install pgml-operator charts/pgml-operator -n pgml-system (images localhost/*:dev)"
"$helm" install pgml-operator charts/pgml-operator -n pgml-system --create-namespace \
  --values .sandbox/dev-values.yaml --wait --timeout 180s >/dev/null \
  || echo "dev: the chart is not ready yet; see kubectl get pods -n pgml-system"
kubectl apply -n databases -f tests/testbed/dev/databases.yaml

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
echo "dev: waiting for pgmlcluster/pgml (databases, on the real nodes) to have 2 ready instances"
kubectl wait -n databases --for=jsonpath='{.status.readyInstances}'=2 --timeout=300s pgmlcluster/pgml \
  || echo "dev: not ready yet; see kubectl get pods -n databases"
echo
echo "\$ kubectl get nodes -L topology.kubernetes.io/zone,pgml.io/database -o wide"
kubectl get nodes -L topology.kubernetes.io/zone,pgml.io/database -o wide
echo
echo "\$ kubectl get pods -n pgml-system -o wide; kubectl get pods -n databases -o wide"
kubectl get pods -n pgml-system -o wide
kubectl get pods -n databases -o wide
echo
echo "\$ kubectl exec -n databases pgml-1 -c postgres -- ps -o user,pid,cmd -C postgres | head -3"
kubectl exec -n databases pgml-1 -c postgres -- ps -o user,pid,cmd -C postgres 2>&1 | head -3 || true
echo
echo "\$ kubectl get pgmlclusters,zfspools -n databases"
kubectl get pgmlclusters,zfspools -n databases 2>&1 || true
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
  kubectl get pods -A -o wide  # the chart's operator and agents, the instances: containers on the real nodes
  kubectl logs -n pgml-system deploy/pgml-operator
  kubectl exec -it -n databases pgml-1 -c postgres -- runuser -u postgres -- psql -h /tmp
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
