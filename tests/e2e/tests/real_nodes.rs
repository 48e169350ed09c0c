//! What the project ships, run for real: the chart installed with `helm install`, its
//! operator Deployment (two replicas, leader election) and agent DaemonSet run as containers
//! by real kubelets (containerd, runc) on the sandbox's real nodes, from the images
//! `scripts/images.sh` builds (no registry: loaded into each node's containerd).
//!
//! The agent runs as the chart runs it: privileged, hostPID, the node's own `zpool`/`zfs`
//! through `nsenter --target 1 --mount` (PID 1 of the node's PID namespace), datasets
//! mounted under the chart's mount root with Bidirectional propagation. The operator reaches
//! the API through the `kubernetes` Service (kube-proxy) with its ServiceAccount's projected
//! token, and EC2 through the EBS simulator on the nodes' network.

mod hold_common;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use pgml_api::common::keys;
use pgml_api::snapshot::{HoldState, SnapshotPhase};
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::volumes_tagged;
use pgml_testbed::aws::{SimAdmin, snapshots_tagged};
use pgml_testbed::kube::{TestNamespace, client};
use pgml_testbed::nodes::node_exec_ok;
use pgml_testbed::rbac::helm;
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::sandbox::repo_root;
use pgml_testbed::wait::{has_condition, snapshot_settled, wait_for, wait_gone};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(240);

/// The chart installed into `ns`, watching only `ns` (so it never touches what the other
/// tests' operators manage), with the sandbox's images and endpoints.
struct Release {
    name: String,
    ns: String,
}

impl Release {
    fn install(sb: &Sandbox, ns: &str) -> Release {
        let name = format!("r-{}", &ns[ns.len() - 6..]);
        let values = std::env::temp_dir().join(format!("pgml-values-{ns}.yaml"));
        std::fs::write(&values, values_yaml(sb, &name, ns)).unwrap();
        let out = helm_cmd(sb)
            .args(["install", &name])
            .arg(repo_root().join("charts/pgml-operator"))
            .args(["--namespace", ns, "--values"])
            .arg(&values)
            .output()
            .expect("running helm");
        assert!(
            out.status.success(),
            "helm install failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Release {
            name,
            ns: ns.to_string(),
        }
    }

    fn fullname(&self) -> String {
        format!("{}-pgml-operator", self.name)
    }

    fn uninstall(&self, sb: &Sandbox) {
        let out = helm_cmd(sb)
            .args(["uninstall", &self.name, "--namespace", &self.ns, "--wait"])
            .output()
            .expect("running helm");
        assert!(
            out.status.success(),
            "helm uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn helm_cmd(sb: &Sandbox) -> Command {
    let mut c = Command::new(helm().expect("helm"));
    c.env("KUBECONFIG", &sb.kube.kubeconfig);
    c
}

/// The values a platform team would give on EKS with dedicated database nodes (label and
/// taint `pgml.io/database`, as docs/install.md says: the sandbox's real nodes have both,
/// its simulated ones neither), but for the sandbox's images (loaded into
/// containerd: pullPolicy Never), its EC2 endpoint and moto's test keys (env of the
/// operator: there is no IMDS for Pods here), and no NVMe serial check (the simulator's
/// devices are links to image files).
fn values_yaml(sb: &Sandbox, release: &str, ns: &str) -> String {
    let endpoint = &sb.aws.endpoint;
    format!(
        r#"operator:
  image: {{repository: localhost/pgml-operator, tag: dev, pullPolicy: Never}}
  watchNamespace: {ns}
  installation: {release}
  logFormat: text
  nodeSelector: {{pgml.io/database: "true"}}
  tolerations: [{{key: pgml.io/database, operator: Exists}}]
  extraEnv:
    - {{name: AWS_ENDPOINT_URL, value: "{endpoint}"}}
    - {{name: AWS_ACCESS_KEY_ID, value: testing}}
    - {{name: AWS_SECRET_ACCESS_KEY, value: testing}}
agent:
  image: {{repository: localhost/pgml-agent, tag: dev, pullPolicy: Never}}
  checkNvmeSerial: false
  # Each release's agents keep their own hold records: an agent ends every hold it finds
  # recorded there, and the releases of this file's tests run side by side.
  stateDir: /var/lib/pgml-agent/{release}
  logFormat: text
  nodeSelector: {{pgml.io/database: "true"}}
  # The simulator's device links point into its image store: the agent resolves them.
  extraVolumes:
    - {{name: ebs-store, hostPath: {{path: "{store}", type: Directory}}}}
  extraVolumeMounts:
    - {{name: ebs-store, mountPath: "{store}", readOnly: true}}
aws:
  region: {region}
"#,
        region = sb.region,
        store = sb.dir.join("store").display(),
    )
}

fn kubectl(sb: &Sandbox, args: &[&str]) -> String {
    let out = Command::new(sb.kubectl())
        .arg(format!("--kubeconfig={}", sb.kube.kubeconfig.display()))
        .args(args)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_rollout(ns: &TestNamespace, r: &Release, nodes: usize) {
    let deploys: Api<Deployment> = ns.api();
    wait_for(
        &deploys,
        &r.fullname(),
        "operator Deployment available",
        TIMEOUT,
        |d: &Deployment| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2),
    )
    .await;
    let ds: Api<DaemonSet> = ns.api();
    wait_for(
        &ds,
        &format!("{}-agent", r.fullname()),
        "agent DaemonSet ready",
        TIMEOUT,
        |d: &DaemonSet| d.status.as_ref().map(|s| s.number_ready) == Some(nodes as i32),
    )
    .await;
}

fn pool_manifest(name: &str, node: &str) -> ZfsPool {
    let text = format!(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  layout: raidz1\n  reclaimPolicy: Delete\n  volumes: {{count: 3, type: gp3, sizeGiB: 1}}\n  datasets:\n  - name: pgdata\n    properties: {{recordsize: 8K}}\n"
    );
    serde_yaml::from_str(&text).unwrap()
}

#[tokio::test]
async fn the_chart_runs_in_containers_and_builds_a_raidz1_pool_on_a_real_node() {
    let sb = Sandbox::get();
    let real = sb.real_nodes(2);
    let client = client().await;
    let ns = TestNamespace::new(&client, "helm").await;
    let release = Release::install(sb, ns.name());
    wait_rollout(&ns, &release, real.len()).await;

    // The operator and the agents are containers on the real nodes, as their images say.
    let pods: Api<Pod> = ns.api();
    let listed = pods.list(&ListParams::default()).await.unwrap();
    let real_names: Vec<&str> = real.iter().map(|n| n.name.as_str()).collect();
    for p in &listed.items {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            real_names.contains(&node.as_str()),
            "{:?} on {node}",
            p.metadata.name
        );
        let phase = p.status.as_ref().and_then(|s| s.phase.clone());
        assert_eq!(phase.as_deref(), Some("Running"), "{:?}", p.metadata.name);
    }
    let operator_uid = kubectl(
        sb,
        &[
            "exec",
            "-n",
            ns.name(),
            &format!("deploy/{}", release.fullname()),
            "--",
            "id",
            "-u",
        ],
    );
    assert_eq!(
        operator_uid.trim(),
        "65532",
        "the operator runs as the image's nonroot user"
    );
    // Two replicas, one leader: the Lease names one of the two operator Pods.
    let leases: Api<Lease> = ns.api();
    let operators: Vec<String> = listed
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .filter(|n| n.starts_with(&release.fullname()) && !n.contains("-agent-"))
        .collect();
    assert_eq!(operators.len(), 2, "{operators:?}");
    let lease = wait_for(
        &leases,
        "pgml-operator",
        "a leader",
        TIMEOUT,
        |l: &Lease| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_ref())
                .is_some()
        },
    )
    .await;
    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap();
    assert!(
        operators.contains(&holder),
        "the Lease holder {holder} is one of {operators:?}"
    );

    // A raidz1 pool of three volumes on the first real node, built by the agent container.
    let api: Api<ZfsPool> = ns.api();
    api.create(
        &PostParams::default(),
        &pool_manifest("tank", &real[0].name),
    )
    .await
    .unwrap();
    let pool = wait_for(&api, "tank", "raidz1 pool Ready", TIMEOUT, |o: &ZfsPool| {
        has_condition(o, "Ready", "True")
    })
    .await;
    let zpool = pool
        .status
        .as_ref()
        .and_then(|s| s.pool_name.clone())
        .expect("status.poolName");
    let status = node_exec_ok(&real[0], &["zpool", "status", &zpool]).unwrap();
    assert!(status.contains("raidz1"), "{status}");
    assert!(status.contains("ONLINE"), "{status}");
    // The agent container reaches the same pool through the host's tools.
    let agent_pod = listed
        .items
        .iter()
        .find(|p| {
            p.metadata
                .name
                .as_deref()
                .unwrap_or_default()
                .contains("-agent-")
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(real[0].name.as_str())
        })
        .and_then(|p| p.metadata.name.clone())
        .expect("an agent Pod on the first real node");
    let seen = kubectl(
        sb,
        &[
            "exec",
            "-n",
            ns.name(),
            &agent_pod,
            "--",
            "/usr/local/bin/host-zpool",
            "list",
            "-H",
            "-o",
            "name",
        ],
    );
    assert!(seen.lines().any(|l| l.trim() == zpool), "{seen}");
    let mounted = node_exec_ok(&real[0], &["cat", "/proc/self/mountinfo"]).unwrap();
    assert!(
        mounted.contains(&format!("/var/lib/pgml/{zpool}")),
        "the pool's datasets are mounted under the chart's mount root on the node"
    );

    // Deleting the pool deletes its volumes (reclaimPolicy Delete): nothing leaks.
    let uid = pool.metadata.uid.clone().unwrap();
    api.delete("tank", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "tank", TIMEOUT).await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = volumes_tagged(sb, keys::POOL_UID, &uid).await;
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "volumes left after deletion: {left:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    cluster_in_containers(sb, &ns, real).await;

    release.uninstall(sb);
    ns.cleanup().await;
}

const CLUSTER: &str = "db";
const PG_IMAGE: &str = "localhost/pgml-postgres:15";

/// Dedicated database nodes: what runs there says so.
fn on_database_nodes() -> serde_json::Value {
    json!({
        "nodeSelector": {"pgml.io/database": "true"},
        "tolerations": [{"key": "pgml.io/database", "operator": "Exists"}],
    })
}

/// A 2-instance PgmlCluster on raidz1 pools, the PostgreSQL stand-in image, the replica
/// seeded from an EbsSnapshot (the default).
fn cluster_manifest() -> serde_json::Value {
    let mut spec = json!({
        "instances": 2,
        "image": PG_IMAGE,
        "storage": {"zfs": {"template": {
            "layout": "raidz1",
            "volumes": {"count": 3, "type": "gp3", "sizeGiB": 1},
            "reclaimPolicy": "Delete",
        }}},
        "replicas": {"seedFrom": "Snapshot"},
    });
    spec.as_object_mut()
        .unwrap()
        .extend(on_database_nodes().as_object().unwrap().clone());
    json!({"apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
           "metadata": {"name": CLUSTER}, "spec": spec})
}

/// A client Pod with psql, pointed at the `-rw` Service by its DNS name, with the
/// superuser's password from the cluster's Secret.
fn client_pod() -> Pod {
    let secret =
        |key: &str| json!({"secretKeyRef": {"name": format!("{CLUSTER}-superuser"), "key": key}});
    let mut spec = json!({
        "containers": [{
            "name": "psql",
            "image": PG_IMAGE,
            "command": ["sleep", "infinity"],
            "env": [
                {"name": "PGHOST", "value": format!("{CLUSTER}-rw")},
                {"name": "PGUSER", "valueFrom": secret("username")},
                {"name": "PGPASSWORD", "valueFrom": secret("password")},
                {"name": "PGDATABASE", "value": "postgres"},
                {"name": "PGCONNECT_TIMEOUT", "value": "5"},
            ],
        }],
        "terminationGracePeriodSeconds": 1,
    });
    spec.as_object_mut()
        .unwrap()
        .extend(on_database_nodes().as_object().unwrap().clone());
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client"}, "spec": spec}))
    .unwrap()
}

fn psql(sb: &Sandbox, ns: &str, pod: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(sb.kubectl())
        .arg(format!("--kubeconfig={}", sb.kube.kubeconfig.display()))
        .args([
            "exec",
            "-n",
            ns,
            pod,
            "--",
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        ])
        .output()
        .expect("running kubectl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `kubectl exec` into an instance's postgres container.
fn in_instance(sb: &Sandbox, ns: &str, pod: &str, argv: &[&str]) -> String {
    let mut args = vec!["exec", "-n", ns, pod, "-c", "postgres", "--"];
    args.extend_from_slice(argv);
    kubectl(sb, &args)
}

/// psql as `postgres` over the instance's own socket (peer authentication).
fn local_psql(sb: &Sandbox, ns: &str, pod: &str, sql: &str) -> String {
    let argv = [
        "runuser", "-u", "postgres", "--", "psql", "-h", "/tmp", "-Atc", sql,
    ];
    in_instance(sb, ns, pod, &argv).trim().to_string()
}

/// psql in the client Pod through the `-rw` Service, retried while the Service has no
/// ready endpoint or the primary restarts.
async fn client_psql(sb: &Sandbox, ns: &str, sql: &str) -> String {
    let mut last = String::new();
    for _ in 0..60 {
        match psql(sb, ns, "client", sql) {
            Ok(out) => return out,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!("{sql} through {CLUSTER}-rw: {last}");
}

/// Waits until `sql` on `pod` (as postgres, locally) answers `want`.
async fn wait_answer(sb: &Sandbox, ns: &str, pod: &str, sql: &str, want: &str, what: &str) {
    let mut seen = String::new();
    for _ in 0..60 {
        seen = local_psql(sb, ns, pod, sql);
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(seen, want, "{what}");
}

/// Waits until both instances are ready; returns (primary, replica).
async fn wait_two_ready(
    clusters: &Api<PgmlCluster>,
    what: &str,
    timeout: Duration,
) -> (String, String) {
    let ready = wait_for(clusters, CLUSTER, what, timeout, |c: &PgmlCluster| {
        c.status.as_ref().and_then(|s| s.ready_instances) == Some(2)
    })
    .await;
    let status = ready.status.unwrap();
    let primary = status.current_primary.clone().expect("a primary");
    let replica = status
        .instances
        .iter()
        .find(|i| i.name != primary)
        .map(|i| i.name.clone())
        .expect("a replica");
    (primary, replica)
}

async fn cluster_in_containers(sb: &Sandbox, ns: &TestNamespace, real: &[NodeInfo]) {
    let clusters: Api<PgmlCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let manifest = serde_json::from_value(cluster_manifest()).unwrap();
    clusters
        .create(&PostParams::default(), &manifest)
        .await
        .unwrap();
    pods.create(&PostParams::default(), &client_pod())
        .await
        .unwrap();
    let (primary, replica) =
        wait_two_ready(&clusters, "2 instances ready", Duration::from_secs(420)).await;
    for p in [&primary, &replica] {
        let node = pods
            .get(p)
            .await
            .unwrap()
            .spec
            .and_then(|s| s.node_name)
            .unwrap_or_default();
        assert!(
            real.iter().any(|n| n.name == node),
            "{p} on {node}, not a real node"
        );
    }
    wait_for(&pods, "client", "client Running", TIMEOUT, |p: &Pod| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;

    // PostgreSQL runs in the container as the image's postgres user, PGDATA on the pool.
    let ps = in_instance(
        sb,
        ns.name(),
        &primary,
        &["ps", "-o", "user=,comm=", "-C", "postgres"],
    );
    assert!(
        ps.lines().count() > 1 && ps.lines().all(|l| l.starts_with("postgres ")),
        "{ps}"
    );
    let mounts = in_instance(sb, ns.name(), &primary, &["cat", "/proc/self/mountinfo"]);
    assert!(
        mounts
            .lines()
            .any(|l| l.contains("/pgdata") && l.contains("fuse")),
        "PGDATA on the pool's dataset:\n{mounts}"
    );

    // The application database, with pgml created in it (the stand-in image's extension).
    let c = wait_for(
        &clusters,
        CLUSTER,
        "pgml created in the application database",
        TIMEOUT,
        |c: &PgmlCluster| {
            c.status.as_ref().and_then(|s| s.pgml_version.as_deref()) == Some("standin")
        },
    )
    .await;
    assert!(has_condition(&c, "PgmlExtension", "True"), "{:?}", c.status);
    let argv = [
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-h",
        "/tmp",
        "-d",
        "app",
        "-Atc",
        "SELECT pgml.standin()",
    ];
    let standin = in_instance(sb, ns.name(), &primary, &argv);
    assert!(standin.contains("not PostgresML"), "{standin}");

    // Rows through the -rw Service (by its DNS name), read back on the replica.
    client_psql(sb, ns.name(), "CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g").await;
    wait_answer(
        sb,
        ns.name(),
        &replica,
        "SELECT count(*) FROM t",
        "1000",
        "the replica streams the rows",
    )
    .await;

    readiness_follows_the_replicas_lag(sb, ns, &replica).await;

    snapshot_with_the_agent_killed_in_the_hold(sb, ns, real).await;
    let acked = load_with_the_primary_killed(sb, ns, real, &primary).await;

    // Every acknowledged row is there, and the replica streams them all.
    let (primary, replica) = wait_two_ready(
        &clusters,
        "2 instances ready again",
        Duration::from_secs(300),
    )
    .await;
    let want = none_lost(sb, ns.name(), "load", &acked).await.to_string();
    wait_answer(
        sb,
        ns.name(),
        &replica,
        "SELECT count(*) FROM load",
        &want,
        "the replica streams every row after the primary's restart",
    )
    .await;
    // The primary is no standby (a hold's standby.signal was taken away).
    assert_eq!(
        local_psql(sb, ns.name(), &primary, "SELECT pg_is_in_recovery()"),
        "f"
    );

    drain_the_primarys_node(sb, ns).await;
    roll_a_new_pod_spec(sb, ns).await;
    parameters_reload_or_roll(sb, ns).await;

    // Deleting the cluster and the snapshot leaves no volume and no snapshot of the test's.
    clusters
        .delete(CLUSTER, &DeleteParams::default())
        .await
        .unwrap();
    let snaps: Api<EbsSnapshot> = ns.api();
    snaps
        .delete("before-load", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&clusters, CLUSTER, TIMEOUT).await;
    wait_gone(&snaps, "before-load", TIMEOUT).await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let vols = volumes_tagged(sb, keys::NAMESPACE, ns.name()).await;
        let sets = snapshots_tagged(sb, keys::NAMESPACE, ns.name()).await;
        if vols.is_empty() && sets.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {vols:?} {sets:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The Pod's Ready condition, as the kubelet sets it from the readiness probe.
fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the `-ro` Service has `pod` as a ready endpoint (`served`), or has not.
async fn wait_ro(ns: &TestNamespace, pod: &str, served: bool) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    let service = format!("{CLUSTER}-ro");
    loop {
        let ready = pgml_testbed::kube::ready_endpoints(&ns.api(), &service).await;
        if ready.iter().any(|(p, _)| p == pod) == served {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{service} ready endpoints {ready:?}: {pod} should be served: {served}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `spec.replicas.maximumLagBytes` set to 1 MiB; the replica's replay paused while 8 MiB
/// are written: the kubelet's readiness probe (the manager's `/readyz`) turns the replica
/// not Ready and the `-ro` Service drops it; replay resumed, it is Ready and served again.
/// The bound is taken away after (the kills that follow make lag on purpose).
async fn readiness_follows_the_replicas_lag(sb: &Sandbox, ns: &TestNamespace, replica: &str) {
    let clusters: Api<PgmlCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let bound = |b: serde_json::Value| {
        json!({"apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
               "spec": {"replicas": {"seedFrom": "Snapshot", "maximumLagBytes": b}}})
    };
    let merge = |v| Patch::Merge(v);
    clusters
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &merge(bound(json!(1024 * 1024))),
        )
        .await
        .unwrap();
    wait_ro(ns, replica, true).await;
    local_psql(sb, ns.name(), replica, "SELECT pg_wal_replay_pause()");
    client_psql(sb, ns.name(), "CREATE TABLE lagging AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g").await;
    wait_for(
        &pods,
        replica,
        "the lagging replica not Ready",
        TIMEOUT,
        |p: &Pod| !pod_ready(p),
    )
    .await;
    wait_ro(ns, replica, false).await;
    local_psql(sb, ns.name(), replica, "SELECT pg_wal_replay_resume()");
    wait_for(
        &pods,
        replica,
        "the replica Ready again",
        TIMEOUT,
        pod_ready,
    )
    .await;
    wait_ro(ns, replica, true).await;
    clusters
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &merge(bound(serde_json::Value::Null)),
        )
        .await
        .unwrap();
}

/// containerd's ID of a Pod's container (`containerd://<id>` in its status).
async fn container_id(pods: &Api<Pod>, pod: &str, container: &str) -> String {
    let p = pods.get(pod).await.unwrap();
    p.status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == container)
        .and_then(|c| c.container_id)
        .and_then(|id| id.strip_prefix("containerd://").map(str::to_string))
        .unwrap_or_else(|| panic!("no containerd ID for {pod}/{container}"))
}

/// SIGKILL to a container's first process, through the node's containerd (as an OOM kill
/// or a crash would end it); the kubelet restarts it.
async fn kill_container(node: &NodeInfo, pods: &Api<Pod>, pod: &str, container: &str) {
    let id = container_id(pods, pod, container).await;
    let sock = node
        .containerd_sock
        .as_ref()
        .expect("a real node")
        .display()
        .to_string();
    node_exec_ok(
        node,
        &[
            "ctr",
            "--address",
            &sock,
            "-n",
            "k8s.io",
            "tasks",
            "kill",
            "-s",
            "SIGKILL",
            &id,
        ],
    )
    .unwrap_or_else(|e| panic!("killing {pod}/{container}: {e}"));
}

/// SIGKILL to the agent container on `node` (see [`kill_container`]); returns once the
/// kubelet has restarted it (and, with `ready`, once all its Pod's containers are ready).
async fn kill_the_agent_on(node: &NodeInfo, pods: &Api<Pod>, ready: bool) {
    let agents = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=agent"))
        .await
        .unwrap();
    let agent = agents
        .items
        .iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.name.as_str()))
        .unwrap_or_else(|| panic!("no agent on {}", node.name));
    let agent_name = agent.metadata.name.clone().unwrap();
    let before = restarts(agent, "agent");
    kill_container(node, pods, &agent_name, "agent").await;
    let what = if ready {
        "the agent container restarted and ready"
    } else {
        "the agent container restarted"
    };
    wait_for(pods, &agent_name, what, TIMEOUT, |p: &Pod| {
        restarts(p, "agent") > before
            && (!ready
                || p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().all(|c| c.ready)))
    })
    .await;
}

fn restarts(p: &Pod, container: &str) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .map_or(0, |c| c.restart_count)
}

/// An EbsSnapshot of the cluster whose CreateSnapshots answers 8 s late, so the hold lasts:
/// the agent container of the held node is killed in it. The restarted agent (its hold
/// records survive in its state folder) or the deadline ends the hold; the snapshot settles.
async fn snapshot_with_the_agent_killed_in_the_hold(
    sb: &Sandbox,
    ns: &TestNamespace,
    real: &[NodeInfo],
) {
    let snaps: Api<EbsSnapshot> = ns.api();
    let pods: Api<Pod> = ns.api();
    let _slow = SimAdmin::from_sandbox(sb)
        .fault(
            json!({"kind": "latency", "action": "CreateSnapshots", "match": ns.name(), "ms": 8000}),
        )
        .unwrap();
    let snap: EbsSnapshot = serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
        "metadata": {"name": "before-load"},
        "spec": {"source": {"cluster": {"name": CLUSTER}}, "deletionPolicy": "Delete",
                 "freezeTimeoutSeconds": 30},
    }))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    let held = wait_for(
        &snaps,
        "before-load",
        "the hold in place (Capturing)",
        TIMEOUT,
        |s: &EbsSnapshot| {
            s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Capturing)
        },
    )
    .await;
    let node_name = held
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("status.nodeName");
    let node = real
        .iter()
        .find(|n| n.name == node_name)
        .expect("the held node is a real node");
    kill_the_agent_on(node, &pods, true).await;
    let settled = snapshot_settled(&snaps, "before-load", TIMEOUT, String::new)
        .await
        .unwrap();
    let hold = settled.status.as_ref().and_then(|s| s.hold.clone());
    assert!(
        !matches!(hold.as_ref().map(|h| h.state), Some(HoldState::Held)),
        "the hold ended: {hold:?}"
    );
}

/// Rows inserted one transaction each by psql in the client Pod through the `-rw`
/// Service (RETURNING: psql prints an ID only once its commit is acknowledged), until the
/// connection is lost or the 20,000 rows are in.
struct Load {
    child: tokio::process::Child,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<String>,
}

impl Load {
    /// Creates `table` and starts inserting into it; returns once 200 rows are in.
    async fn start(sb: &Sandbox, ns: &TestNamespace, table: &str) -> Load {
        psql(
            sb,
            ns.name(),
            "client",
            &format!("CREATE TABLE {table} (id int primary key, at timestamptz default now())"),
        )
        .unwrap();
        let script: String = (1..=20000)
            .map(|i| format!("INSERT INTO {table} (id) VALUES ({i}) RETURNING id;\n"))
            .collect();
        let mut child = tokio::process::Command::new(sb.kubectl())
            .arg(format!("--kubeconfig={}", sb.kube.kubeconfig.display()))
            .args([
                "exec",
                "-i",
                "-n",
                ns.name(),
                "client",
                "--",
                "psql",
                "-At",
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl exec psql");
        let mut stdin = child.stdin.take().unwrap();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(script.as_bytes()).await;
        });
        let mut stdout = child.stdout.take().unwrap();
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out).await;
            out
        });
        let deadline = std::time::Instant::now() + TIMEOUT;
        let count = format!("SELECT count(*) FROM {table}");
        loop {
            let n = psql(sb, ns.name(), "client", &count).unwrap_or_default();
            if n.parse::<u32>().unwrap_or(0) >= 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the load never got going"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Load {
            child,
            writer,
            reader,
        }
    }

    /// The IDs whose commits were acknowledged. psql ends at a lost connection; kubectl
    /// exec may wait on its stdin: it is closed, and kubectl ended if it still waits.
    async fn acknowledged(mut self) -> Vec<u32> {
        self.writer.abort();
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let out = self.reader.await.unwrap();
        let acked: Vec<u32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        assert!(acked.len() >= 200, "rows acknowledged: {}", acked.len());
        acked
    }
}

/// The IDs of `table` through the `-rw` Service.
async fn ids_in(sb: &Sandbox, ns: &str, table: &str) -> std::collections::BTreeSet<u32> {
    let sql = format!("SELECT string_agg(id::text, ',' ORDER BY id) FROM {table}");
    let have = client_psql(sb, ns, &sql).await;
    have.split(',').filter_map(|x| x.parse().ok()).collect()
}

/// Asserts that every acknowledged ID is in `table`.
async fn none_lost(sb: &Sandbox, ns: &str, table: &str, acked: &[u32]) -> usize {
    let have = ids_in(sb, ns, table).await;
    let lost: Vec<&u32> = acked.iter().filter(|i| !have.contains(i)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged rows of {table} lost: {lost:?} (of {} acknowledged)",
        acked.len()
    );
    have.len()
}

/// A load runs while the primary's container is SIGKILLed. Returns the acknowledged IDs.
async fn load_with_the_primary_killed(
    sb: &Sandbox,
    ns: &TestNamespace,
    real: &[NodeInfo],
    primary: &str,
) -> Vec<u32> {
    let pods: Api<Pod> = ns.api();
    let load = Load::start(sb, ns, "load").await;
    let pod = pods.get(primary).await.unwrap();
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let node = real
        .iter()
        .find(|n| n.name == node_name)
        .expect("the primary is on a real node");
    let before = restarts(&pod, "postgres");
    kill_container(node, &pods, primary, "postgres").await;
    let acked = load.acknowledged().await;
    wait_for(
        &pods,
        primary,
        "the primary's container restarted",
        TIMEOUT,
        |p: &Pod| restarts(p, "postgres") > before,
    )
    .await;
    acked
}

/// How many `reason` Events the namespace has (a series counts once per occurrence).
async fn events_of(ns: &TestNamespace, reason: &str) -> i32 {
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// `kubectl drain` of the primary's node under a write load: the primary's
/// PodDisruptionBudget holds its eviction while the operator switches over (once) to the
/// replica on the other node; then the old primary, a replica by now, is evicted and not
/// made again on the cordoned node; every acknowledged commit is on the new primary. After
/// `kubectl uncordon` the old primary comes back as a replica with every row.
async fn drain_the_primarys_node(sb: &Sandbox, ns: &TestNamespace) {
    let clusters: Api<PgmlCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (primary, replica) = wait_two_ready(&clusters, "2 instances ready to drain", TIMEOUT).await;
    let node = pods
        .get(&primary)
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .unwrap();
    let switchovers = events_of(ns, "SwitchingOver").await;
    let load = Load::start(sb, ns, "drained").await;

    let selector = format!("pgml.io/cluster={CLUSTER}");
    let drain = tokio::process::Command::new(sb.kubectl())
        .arg(format!("--kubeconfig={}", sb.kube.kubeconfig.display()))
        .args(["drain", &node, "--pod-selector", &selector])
        .args([
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=300s",
        ])
        .output();
    let started = std::time::Instant::now();
    let drain = tokio::spawn(drain);
    // The old primary's Pod is deleted only once the replica is the primary.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let gone = match pods.get_opt(&primary).await.unwrap() {
            None => true,
            Some(p) => p.metadata.deletion_timestamp.is_some(),
        };
        if gone {
            let c = clusters.get(CLUSTER).await.unwrap();
            let current = c.status.and_then(|s| s.current_primary);
            assert_eq!(
                current.as_deref(),
                Some(replica.as_str()),
                "{primary} was evicted before the switchover to {replica}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{primary} never evicted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let evicted_after = started.elapsed();
    let out = drain.await.unwrap().expect("running kubectl drain");
    eprintln!(
        "drain: {primary} evicted {evicted_after:?} after kubectl drain began, once {replica} was the primary; drain done in {:?}",
        started.elapsed()
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl drain: {said}");
    assert!(
        said.contains("disruption budget"),
        "the budget held the primary's eviction: {said}"
    );
    let acked = load.acknowledged().await;
    assert_eq!(
        events_of(ns, "SwitchingOver").await,
        switchovers + 1,
        "one switchover"
    );

    // Not made again on the cordoned node; the status says why.
    let c = wait_for(
        &clusters,
        CLUSTER,
        "the drained instance's node leaving",
        TIMEOUT,
        |c: &PgmlCluster| {
            c.status.as_ref().is_some_and(|s| {
                s.instances
                    .iter()
                    .any(|i| i.name == primary && i.node_leaving.is_some())
            })
        },
    )
    .await;
    let why = c
        .status
        .unwrap()
        .instances
        .into_iter()
        .find(|i| i.name == primary);
    let why = why.and_then(|i| i.node_leaving).unwrap();
    assert_eq!(why, format!("node {node} is cordoned"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        pods.get_opt(&primary).await.unwrap().is_none(),
        "{primary}'s Pod made again on the cordoned node {node}"
    );
    none_lost(sb, ns.name(), "drained", &acked).await;

    kubectl(sb, &["uncordon", &node]);
    let (now_primary, back) = wait_two_ready(
        &clusters,
        "the drained instance back as a replica",
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(
        (now_primary.as_str(), back.as_str()),
        (replica.as_str(), primary.as_str())
    );
    let n = none_lost(sb, ns.name(), "drained", &acked).await;
    wait_answer(
        sb,
        ns.name(),
        &primary,
        "SELECT count(*) FROM drained",
        &n.to_string(),
        "the old primary streams every row after the drain",
    )
    .await;
}

/// A new Pod spec (the container's resources) rolled out under a write load: the replica
/// first, then one switchover to it, then the old primary as a replica; phase Upgrading
/// meanwhile, never both instances down, and every acknowledged commit kept.
async fn roll_a_new_pod_spec(sb: &Sandbox, ns: &TestNamespace) {
    let clusters: Api<PgmlCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (primary, replica) = wait_two_ready(&clusters, "2 instances ready to roll", TIMEOUT).await;
    let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
    let before = [
        uid(&pods.get(&primary).await.unwrap()),
        uid(&pods.get(&replica).await.unwrap()),
    ];
    let switchovers = events_of(ns, "SwitchingOver").await;
    let load = Load::start(sb, ns, "rolled").await;
    let resources = json!({"requests": {"memory": "64Mi", "cpu": "50m"}});
    clusters
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": resources}})),
        )
        .await
        .unwrap();
    let has_new_spec = |p: &Pod| {
        let c = &p.spec.as_ref().unwrap().containers[0];
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        r.and_then(|r| r.get("memory")).map(|q| q.0.as_str()) == Some("64Mi")
    };
    let rolled = std::time::Instant::now();
    // Sampled until both run the new spec and the cluster is Healthy again.
    let (mut min_ready, mut upgrading) = (2, false);
    let mut replaced: Vec<String> = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(420);
    loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("pgml.io/cluster={CLUSTER}")))
            .await
            .unwrap();
        let ready = list.items.iter().filter(|p| pod_ready(p)).count();
        min_ready = min_ready.min(ready);
        for p in &list.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            if !before.contains(&uid(p)) && !replaced.contains(&name) {
                replaced.push(name);
            }
        }
        let c = clusters.get(CLUSTER).await.unwrap();
        let st = c.status.unwrap_or_default();
        upgrading |= st.phase == Some(pgml_api::cluster::ClusterPhase::Upgrading);
        let updated = list.items.len() == 2 && list.items.iter().all(has_new_spec);
        if updated
            && st.ready_instances == Some(2)
            && st.phase == Some(pgml_api::cluster::ClusterPhase::Healthy)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the roll never finished: {:?} {:?}",
            st.phase,
            st.conditions
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "roll: {replaced:?} restarted in that order, done in {:?} (never fewer than {min_ready} ready)",
        rolled.elapsed()
    );
    assert!(upgrading, "phase Upgrading during the roll");
    assert!(
        min_ready >= 1,
        "both instances down at once during the roll"
    );
    assert_eq!(
        replaced,
        [replica.clone(), primary.clone()],
        "replica first"
    );
    let acked = load.acknowledged().await;
    assert_eq!(
        events_of(ns, "SwitchingOver").await,
        switchovers + 1,
        "exactly one switchover"
    );
    assert!(events_of(ns, "RollingUpdate").await >= 2);
    let (now_primary, _) =
        wait_two_ready(&clusters, "2 instances ready after the roll", TIMEOUT).await;
    assert_eq!(now_primary, replica);
    let n = none_lost(sb, ns.name(), "rolled", &acked).await;
    wait_answer(
        sb,
        ns.name(),
        &primary,
        "SELECT count(*) FROM rolled",
        &n.to_string(),
        "the old primary streams every row after the roll",
    )
    .await;
}

/// Waits until `SHOW parameter` answers `want` on both instances (the kubelet brings a
/// changed ConfigMap to the Pods' files within its sync period).
async fn wait_setting(sb: &Sandbox, ns: &str, pods: [&str; 2], parameter: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    for pod in pods {
        loop {
            let seen = local_psql(sb, ns, pod, &format!("SHOW {parameter}"));
            if seen == want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{parameter} on {pod} is {seen}, not {want}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// PostgreSQL parameters: a reload-only one reaches both instances with a reload (no Pod
/// made again, no container restarted); one that needs a restart is reported by both
/// (`pendingRestart`) and restarts nothing.
async fn parameters_reload_or_roll(sb: &Sandbox, ns: &TestNamespace) {
    let clusters: Api<PgmlCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (primary, replica) = wait_two_ready(&clusters, "2 instances ready", TIMEOUT).await;
    let ids = |p: &Pod| (p.metadata.uid.clone(), restarts(p, "postgres"));
    let before = [
        ids(&pods.get(&primary).await.unwrap()),
        ids(&pods.get(&replica).await.unwrap()),
    ];
    let switchovers = events_of(ns, "SwitchingOver").await;
    let set = |params: serde_json::Value| {
        let clusters = clusters.clone();
        async move {
            let patch = json!({"spec": {"postgresql": {"parameters": params}}});
            clusters
                .patch(CLUSTER, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .unwrap();
        }
    };
    let started = std::time::Instant::now();
    set(json!({"work_mem": "7MB"})).await;
    wait_setting(sb, ns.name(), [&primary, &replica], "work_mem", "7MB").await;
    eprintln!("work_mem reloaded on both in {:?}", started.elapsed());
    let after = [
        ids(&pods.get(&primary).await.unwrap()),
        ids(&pods.get(&replica).await.unwrap()),
    ];
    assert_eq!(
        after, before,
        "a reload-only parameter restarted an instance"
    );

    // A parameter that needs a restart: reported by both instances, nothing restarted
    // (rolling those restarts is not built yet).
    let started = std::time::Instant::now();
    set(json!({"shared_buffers": "48MB"})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    for pod in [&primary, &replica] {
        loop {
            let p = pods.get(pod).await.unwrap();
            let report = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(pgml_api::instance::STATUS_ANNOTATION))
                .and_then(|r| serde_json::from_str::<pgml_api::instance::InstanceReport>(r).ok());
            if report.is_some_and(|r| r.pending_restart == ["shared_buffers"]) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{pod} never reported shared_buffers pending a restart"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    eprintln!(
        "shared_buffers reported pending a restart on both in {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = [
        ids(&pods.get(&primary).await.unwrap()),
        ids(&pods.get(&replica).await.unwrap()),
    ];
    assert_eq!(after, before, "an instance was restarted");
    assert_eq!(
        events_of(ns, "SwitchingOver").await,
        switchovers,
        "a switchover"
    );
    wait_setting(sb, ns.name(), [&primary, &replica], "work_mem", "7MB").await;
}

/// An ext4 PVC made by the EBS CSI driver (a PV of driver ebs.csi.aws.com, its volume
/// staged at `…/globalmount` by the kubelet, in the node's mount namespace), snapshotted
/// with `consistency: Fsfreeze` by the chart's operator and agent. The agent container sees
/// only its own mounts: it finds the volume's mount in the node's table (/proc/1/mountinfo,
/// hostPID) and freezes it through /proc/1/root. The freeze guard it starts moves into the
/// node's cgroups (PID 1's), so when the agent container is SIGKILLed mid-hold, and the
/// runtime kills whatever is left in that container's cgroup, the guard lives on and keeps
/// the file system frozen until the restarted agent tells it to thaw.
#[tokio::test]
async fn an_ext4_pvc_hold_outlives_a_killed_agent_container() {
    use hold_common::{fake_pgdata, guards_of};
    use k8s_openapi::api::core::v1::PersistentVolume;
    use pgml_testbed::aws::{attached_volume, ebs_link, ec2_client};
    use pgml_testbed::nodes::{NodeExt4, node_command, node_exec};

    let sb = Sandbox::get();
    let real = sb.real_nodes(2);
    let node = &real[0];
    let client = client().await;
    let ns = TestNamespace::new(&client, "helmfreeze").await;
    let release = Release::install(sb, ns.name());
    wait_rollout(&ns, &release, real.len()).await;

    // The EBS CSI driver's part: a volume attached to the node, ext4, staged at globalmount.
    let ec2 = ec2_client(sb).await;
    let volume = attached_volume(&ec2, node, ns.name()).await;
    let image = std::fs::canonicalize(ebs_link(node, &volume))
        .expect("the volume's by-id link on the node after AttachVolume");
    let pv_name = format!("pv-{}", ns.name());
    let mount = format!(
        "{}/kubelet/plugins/kubernetes.io/csi/ebs.csi.aws.com/{pv_name}/globalmount",
        node.root.display()
    );
    let fs = NodeExt4::create(node, &image, &mount).expect("ext4 on a loop device");
    let pgdata = format!("{mount}/pgdata");
    fake_pgdata(node, &pgdata);
    pgml_testbed::kube::csi_volume_and_claim(&client, ns.name(), &pv_name, "data", &volume).await;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());

    // CreateSnapshots answers 15 s late: the file system stays frozen that long.
    let _slow = SimAdmin::from_sandbox(sb)
        .fault(
            json!({"kind": "latency", "action": "CreateSnapshots", "match": ns.name(), "ms": 15000}),
        )
        .unwrap();
    let snaps: Api<EbsSnapshot> = ns.api();
    let snap: EbsSnapshot = serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
        "metadata": {"name": "of-pvc"},
        "spec": {"source": {"persistentVolumeClaim": {"name": "data"}}, "consistency": "Fsfreeze",
                 "freezeTimeoutSeconds": 60, "deletionPolicy": "Delete"},
    }))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    let held = wait_for(
        &snaps,
        "of-pvc",
        "the file system frozen by the agent in its container",
        TIMEOUT,
        |s: &EbsSnapshot| {
            s.status
                .as_ref()
                .and_then(|st| st.hold.as_ref())
                .is_some_and(|h| h.state == HoldState::Held && h.frozen)
                || s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Failed)
        },
    )
    .await;
    let st = held.status.clone().unwrap();
    assert_ne!(st.phase, Some(SnapshotPhase::Failed), "{st:#?}");
    assert_eq!(
        st.hold.as_ref().and_then(|h| h.mount_path.clone()),
        Some(format!("/proc/1/root{mount}")),
        "the kubelet's mount, reached through the node's PID 1"
    );
    let uid = held.metadata.uid.clone().unwrap();
    let guards = guards_of(&uid);
    assert_eq!(guards.len(), 1, "one freeze guard");
    let guard = guards[0];
    let cgroups = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(
        cgroups(guard),
        cgroups(node.init_pid.expect("a real node's PID 1")),
        "the guard is in the node's cgroups, not the agent container's"
    );
    let writes = std::cell::Cell::new(0);
    let write = |secs: u32| {
        writes.set(writes.get() + 1);
        let file = format!("{mount}/write-{}", writes.get());
        node_command(node, &["timeout", &secs.to_string(), "touch", &file])
            .unwrap()
            .spawn()
            .unwrap()
    };
    let mut w = write(60);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(w.try_wait().unwrap().is_none(), "not frozen while Held");

    // SIGKILL to the agent container: containerd kills all that is left in its cgroup.
    let pods: Api<Pod> = ns.api();
    kill_the_agent_on(node, &pods, false).await;
    assert_eq!(
        guards_of(&uid),
        [guard],
        "the guard outlived the killed agent container"
    );
    assert!(
        w.try_wait().unwrap().is_none(),
        "the file system stays frozen while the hold lasts"
    );

    // The capture answers; the restarted agent ends the hold through the guard.
    let settled = snapshot_settled(&snaps, "of-pvc", TIMEOUT, String::new)
        .await
        .unwrap();
    let st = settled.status.clone().unwrap();
    assert_eq!(st.phase, Some(SnapshotPhase::Completed), "{st:#?}");
    let frozen = st.frozen_millis.expect("frozenMillis");
    assert!((10_000..60_000).contains(&frozen), "frozenMillis {frozen}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the write still blocks after the snapshot completed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = node_exec(node, &["timeout", "5", "touch", &format!("{mount}/after")]).unwrap();
    assert!(out.status.success(), "writable after the hold");
    assert!(
        guards_of(&uid).is_empty(),
        "the guard exited after the thaw"
    );
    assert!(
        !node_exec(node, &["test", "-e", &format!("{pgdata}/standby.signal")])
            .unwrap()
            .status
            .success(),
        "standby.signal removed"
    );

    snaps
        .delete("of-pvc", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&snaps, "of-pvc", TIMEOUT).await;
    release.uninstall(sb);
    fs.remove()
        .expect("unmounting and detaching the loop device");
    let _ = ec2
        .detach_volume()
        .volume_id(&volume)
        .instance_id(&node.instance_id)
        .force(true)
        .send()
        .await;
    let _ = ec2.delete_volume().volume_id(&volume).send().await;
    let _ = pvs.delete(&pv_name, &DeleteParams::default()).await;
    ns.cleanup().await;
}
