//! What the PgmlCluster tests share: a namespace with the real operator and node agents
//! (and, for the tests at the data level, the test bed's kubelet running the instance
//! managers), the cluster applied as `kubectl apply --server-side` would, and waits on the
//! cluster, its Pods, its Events and its `-rw` Service that fail with the processes' logs.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use pgml_api::{PgmlCluster, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::kubelet::{Instance, Kubelet};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::{self, Poll, poll_for, wait_gone};
use serde_json::{Value, json};

/// How long each wait on the cluster, its Pods and its Events may take.
pub const TIMEOUT: Duration = Duration::from_secs(240);

/// A test's namespace with one PgmlCluster, the operator and one agent per node it uses.
pub struct ClusterFixture {
    pub sb: &'static Sandbox,
    pub ns: TestNamespace,
    /// The PgmlCluster's name.
    pub cluster: &'static str,
    pub operator: Proc,
    pub agents: Vec<Proc>,
    /// Runs the instance managers of the namespace's Pods (see [`Self::with_kubelet`]).
    pub kubelet: Option<Kubelet>,
    /// How often the waits poll (500 ms unless [`Self::polling`] says otherwise).
    pub every: Duration,
    /// How many lines of each manager's log go in failure messages.
    log_lines: usize,
}

impl ClusterFixture {
    /// A namespace `prefix-…` with the CRDs, the operator (with `operator_env` set, when
    /// any) and an agent on each of the sandbox's nodes at these indexes.
    pub async fn start(
        prefix: &str,
        cluster: &'static str,
        nodes: &[usize],
        operator_env: &[(&str, &str)],
    ) -> ClusterFixture {
        let sb = Sandbox::get();
        let client = client().await;
        ensure_crds(&client, pgml_api::crds()).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let mut operator = procs::operator(sb, ns.name());
        if !operator_env.is_empty() {
            operator.stop(Duration::from_secs(10));
            for (k, v) in operator_env {
                operator.set_env(k, v);
            }
            operator.start();
        }
        let agents = procs::agents(sb, nodes, ns.name());
        ClusterFixture {
            sb,
            ns,
            cluster,
            operator,
            agents,
            kubelet: None,
            every: Duration::from_millis(500),
            log_lines: 0,
        }
    }

    /// Starts the test bed's kubelet on the namespace (`extra_env` added to every manager's
    /// environment); the last `log_lines` of each manager's log go in failure messages.
    pub fn with_kubelet(mut self, extra_env: &[(&str, &str)], log_lines: usize) -> Self {
        self.kubelet = Some(Kubelet::start(
            self.sb,
            self.ns.client().clone(),
            self.ns.name(),
            extra_env,
        ));
        self.log_lines = log_lines;
        self
    }

    /// The waits poll every `every`.
    pub fn polling(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    pub fn clusters(&self) -> Api<PgmlCluster> {
        self.ns.api()
    }

    pub fn pods(&self) -> Api<Pod> {
        self.ns.api()
    }

    /// The processes' logs (paths, and the managers' last lines), for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- operator log: {}\n", self.operator.log_path().display());
        for a in &self.agents {
            s += &format!("--- agent log: {}\n", a.log_path().display());
        }
        if let Some(k) = &self.kubelet {
            s += &k.logs(self.log_lines);
        }
        s
    }

    /// Applies the cluster as `kubectl apply --server-side` would.
    pub async fn apply(&self, manifest: &Value) {
        self.clusters()
            .patch(
                self.cluster,
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(manifest),
            )
            .await
            .expect("applying the PgmlCluster");
    }

    /// Waits (up to [`TIMEOUT`]) until the cluster satisfies `ok`; panics with its status and
    /// the logs.
    pub async fn wait_cluster(&self, what: &str, ok: impl Fn(&PgmlCluster) -> bool) -> PgmlCluster {
        self.wait_obj(&self.clusters(), self.cluster, what, ok)
            .await
    }

    /// Waits (up to [`TIMEOUT`]) until Pod `pod` exists and satisfies `ok`.
    pub async fn wait_pod(&self, pod: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Pod {
        self.wait_obj(&self.pods(), pod, what, ok).await
    }

    /// Waits (up to [`TIMEOUT`]) until object `name` exists and satisfies `ok`; panics with
    /// its status and the logs.
    pub async fn wait_obj<K>(
        &self,
        api: &Api<K>,
        name: &str,
        what: &str,
        ok: impl Fn(&K) -> bool,
    ) -> K
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
    {
        let how = Poll {
            timeout: TIMEOUT,
            every: self.every,
            missing_is_not_yet: true,
        };
        poll_for(api, name, what, how, || self.logs(), ok)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until Pod `pod`'s role label is `role`.
    pub async fn wait_role(&self, pod: &str, role: &str) {
        self.wait_pod(pod, &format!("role label {role}"), |p| {
            role_of(p).as_deref() == Some(role)
        })
        .await;
    }

    /// Waits until the Pods' role labels are these.
    pub async fn wait_roles(&self, roles: &[(&str, &str)]) {
        for (pod, role) in roles {
            self.wait_role(pod, role).await;
        }
    }

    /// Waits until Pod `pod` carries the fenced annotation.
    pub async fn wait_fenced(&self, pod: &str) {
        self.wait_pod(pod, "fenced", |p| {
            p.annotations().get("pgml.io/fenced").map(String::as_str) == Some("true")
        })
        .await;
    }

    /// Waits (up to [`TIMEOUT`]) for an Event in the namespace that `ok` accepts.
    pub async fn wait_event(&self, what: &str, ok: impl Fn(&Event) -> bool) -> Event {
        self.wait_event_within(what, TIMEOUT, ok).await
    }

    /// Waits (up to `timeout`) for an Event in the namespace that `ok` accepts.
    pub async fn wait_event_within(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Event) -> bool,
    ) -> Event {
        wait::wait_event(&self.ns.api(), what, timeout, || self.logs(), ok).await
    }

    /// The ready addresses behind the cluster's `-rw` Service.
    pub async fn rw_addresses(&self) -> Vec<String> {
        let service = format!("{}-rw", self.cluster);
        pgml_testbed::kube::ready_endpoints(&self.ns.api(), &service)
            .await
            .into_iter()
            .flat_map(|(_, a)| a)
            .collect()
    }

    /// Waits (up to [`TIMEOUT`]) until `ip` (Pod `pod`'s) is the `-rw` Service's only
    /// ready address.
    pub async fn wait_rw_address(&self, pod: &str, ip: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let got = self.rw_addresses().await;
            if got == [ip] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}-rw endpoints {got:?}, want [{ip}] ({pod})",
                self.cluster
            );
            tokio::time::sleep(self.every).await;
        }
    }

    /// The instance's server, once the kubelet runs its manager.
    pub async fn instance(&self, pod: &str) -> Instance {
        self.kubelet
            .as_ref()
            .expect("a fixture with a kubelet")
            .wait_instance(pod, TIMEOUT)
            .await
    }

    /// The instance's WAL is on its pool's `pgwal` dataset: `PGDATA/pg_wal` (as its node
    /// sees it) is a symlink to the `pg_wal` folder of the dataset's mount (the ZfsPool's
    /// status), WAL segments are there, and PostgreSQL reads them through the link
    /// (`pg_ls_waldir`). Returns the link's target.
    pub async fn assert_wal_on_pgwal(&self, pod: &str) -> String {
        let pool = self.ns.api::<ZfsPool>().get(pod).await.unwrap();
        let mount = pool
            .status
            .as_ref()
            .and_then(|s| s.datasets.iter().find(|d| d.name == "pgwal"))
            .and_then(|d| d.mount_path.clone())
            .unwrap_or_else(|| panic!("{pod}: the pool reports no pgwal mount: {pool:?}"));
        let want = format!("{mount}/pg_wal");
        let i = self.instance(pod).await;
        let link = format!("{}/pg_wal", i.pgdata);
        let target = pgml_testbed::nodes::node_exec_ok(&i.node, &["readlink", &link])
            .unwrap_or_else(|e| panic!("{pod}: {link} is not a symlink: {e:#}"));
        assert_eq!(target.trim(), want, "{pod}: where PGDATA/pg_wal links");
        let listed = pgml_testbed::nodes::node_exec_ok(&i.node, &["ls", "-1", &want])
            .unwrap_or_else(|e| panic!("{pod}: listing {want}: {e:#}"));
        let segments: Vec<&str> = listed
            .lines()
            .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
            .collect();
        assert!(
            !segments.is_empty(),
            "{pod}: no WAL segment in {want}: {listed:?}"
        );
        let seen = i
            .postgres()
            .sql("SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'")
            .unwrap();
        assert_ne!(seen, "0", "{pod}: PostgreSQL sees no WAL segment in pg_wal");
        target.trim().to_string()
    }

    /// Stops every instance manager (SIGTERM, waiting for each), if a kubelet runs them.
    pub fn shutdown_kubelet(&mut self) {
        if let Some(k) = &mut self.kubelet {
            k.shutdown();
        }
    }

    /// Deletes the cluster and waits until it is gone.
    pub async fn delete_cluster(&self, params: &DeleteParams) {
        self.clusters().delete(self.cluster, params).await.unwrap();
        wait_gone(&self.clusters(), self.cluster, TIMEOUT).await;
    }

    /// Waits until each of these pools is gone.
    pub async fn wait_pools_gone(&self, pools: &[impl AsRef<str>]) {
        let api: Api<ZfsPool> = self.ns.api();
        for p in pools {
            wait_gone(&api, p.as_ref(), TIMEOUT).await;
        }
    }

    /// Stops the managers, the operator and the agents, then deletes the namespace.
    pub async fn finish(mut self) {
        self.shutdown_kubelet();
        self.operator.stop(Duration::from_secs(10));
        for a in &mut self.agents {
            a.stop(Duration::from_secs(10));
        }
        self.ns.cleanup().await;
    }
}

/// A PgmlCluster `name` of `instances` on RAID0 ZfsPools of these `volumes` (deleted with
/// the cluster), with `spec_extra`'s fields added to (or replacing) the spec's.
pub fn zfs_cluster(name: &str, instances: i32, volumes: Value, spec_extra: Value) -> Value {
    let mut m = json!({
        "apiVersion": "pgml.io/v1alpha1",
        "kind": "PgmlCluster",
        "metadata": {"name": name},
        "spec": {
            "instances": instances,
            "storage": {"zfs": {"template": {
                "volumes": volumes,
                "layout": "raid0",
                "reclaimPolicy": "Delete",
            }}},
        },
    });
    if let (Some(spec), Some(extra)) = (m["spec"].as_object_mut(), spec_extra.as_object()) {
        spec.extend(extra.clone());
    }
    m
}

/// A Pod's `pgml.io/role` label.
pub fn role_of(p: &Pod) -> Option<String> {
    p.labels().get("pgml.io/role").cloned()
}

/// An instance's Pod as the controller would make it (labels, node, the manager as its
/// command), for tests where no controller makes it.
pub fn instance_pod(cluster: &str, name: &str, node: &NodeInfo) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"pgml.io/cluster": cluster, "pgml.io/instance": name}},
        "spec": {
            "nodeName": node.name,
            "containers": [{"name": "postgres", "image": pgml_api::cluster::DEFAULT_IMAGE,
                            "command": ["/controller/pgml-instance", "run"]}]
        }
    }))
    .unwrap()
}

impl ClusterFixture {
    /// Binds Pod `pod`'s config folder (the kubelet's copy of the ConfigMap, on `node`) at
    /// `/etc/pgml/config` in the node's mount namespace, where the rendered
    /// `archive_command` reads `pgbackrest.conf`, as the container's mount would; undone
    /// when the guard is dropped. One such bind per node at a time.
    pub async fn bind_pod_config<'a>(&self, node: &'a NodeInfo, pod: &str) -> Unbind<'a> {
        let uid = self.pods().get(pod).await.unwrap().uid().unwrap();
        // The kubelet's folder of this Pod: `<node>/pods/<namespace>/<pod>-<uid prefix>`.
        let pods_dir = node.root.join("pods").join(self.ns.name());
        let pod_dir = std::fs::read_dir(&pods_dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(&format!("{pod}-")))
                    .is_some_and(|u| uid.starts_with(u))
            })
            .unwrap_or_else(|| panic!("no folder of {pod} in {}", pods_dir.display()));
        let dir = format!("{}{POD_CONFIG_DIR}", pod_dir.display());
        assert!(
            std::path::Path::new(&dir).join("pgbackrest.conf").is_file(),
            "the kubelet did not write pgbackrest.conf in {dir}"
        );
        std::fs::create_dir_all(POD_CONFIG_DIR).expect("creating the mount point");
        let out = pgml_testbed::nodes::node_exec(node, &["mount", "--bind", &dir, POD_CONFIG_DIR])
            .expect("nsenter mount");
        assert!(
            out.status.success(),
            "mount {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Unbind { node, dir }
    }
}

/// Where an instance Pod mounts the ConfigMap (and `archive_command` reads
/// pgbackrest.conf).
pub const POD_CONFIG_DIR: &str = "/etc/pgml/config";

/// Undoes [`ClusterFixture::bind_pod_config`] when dropped (a failing test included).
pub struct Unbind<'a> {
    node: &'a NodeInfo,
    /// The Pod's config folder, as the host sees it.
    pub dir: String,
}

impl Drop for Unbind<'_> {
    fn drop(&mut self) {
        let _ = pgml_testbed::nodes::node_exec(self.node, &["umount", POD_CONFIG_DIR]);
        let _ = std::fs::remove_dir(POD_CONFIG_DIR);
        let _ = std::fs::remove_dir("/etc/pgml");
    }
}

/// `kubectl pgml <args> -n <ns> --kubeconfig <sandbox>`, with the plugin's folder first on
/// PATH: kubectl finds `kubectl-pgml` there, as it would after an install.
pub fn kubectl_pgml(ns: &str, args: &[&str]) -> std::process::Command {
    let sb = Sandbox::get();
    let bin = pgml_testbed::sandbox::workspace_bin("kubectl-pgml");
    let dir = bin.parent().expect("the plugin's folder").to_path_buf();
    let mut path = vec![dir];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut cmd = std::process::Command::new(sb.kubectl());
    cmd.arg("pgml")
        .args(args)
        .args(["-n", ns, "--kubeconfig"])
        .arg(&sb.kube.kubeconfig)
        .env("PATH", std::env::join_paths(path).unwrap())
        .env_remove("KUBECONFIG");
    cmd
}

/// Rows and a checksum of the restore tests' table `written`, as the server has them.
pub fn rows_and_sum(pg: &pgml_testbed::pg::Postgres) -> String {
    pg.sql("SELECT count(*) || ' ' || md5(coalesce(string_agg(id || ':' || payload, ',' ORDER BY id), '')) FROM written")
        .unwrap()
}

/// Applies a PgmlCluster manifest (named in it) as `kubectl apply --server-side` would.
pub async fn apply_cluster(clusters: &Api<PgmlCluster>, m: &Value) {
    let name = m["metadata"]["name"].as_str().expect("the manifest's name");
    clusters
        .patch(
            name,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(m),
        )
        .await
        .unwrap_or_else(|e| panic!("applying PgmlCluster {name}: {e}"));
}

impl ClusterFixture {
    /// EbsSnapshot `name` of cluster `cluster` (deleted with its AWS snapshots), once
    /// Completed.
    pub async fn snapshot_completed(&self, name: &str, cluster: &str) -> pgml_api::EbsSnapshot {
        let snaps: Api<pgml_api::EbsSnapshot> = self.ns.api();
        let snap: pgml_api::EbsSnapshot = serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
            "metadata": {"name": name},
            "spec": {"source": {"cluster": {"name": cluster}}, "deletionPolicy": "Delete"},
        }))
        .unwrap();
        snaps
            .create(&kube::api::PostParams::default(), &snap)
            .await
            .unwrap();
        self.wait_obj(&snaps, name, "the snapshot Completed", |s| {
            s.status.as_ref().and_then(|st| st.phase)
                == Some(pgml_api::snapshot::SnapshotPhase::Completed)
        })
        .await
    }
}

impl ClusterFixture {
    /// [`Self::with_kubelet`] for instance managers that reach the sandbox's S3 with
    /// pgBackRest: moto's test keys through their environment (never in a file or object)
    /// and the sandbox's CA, which pgBackRest needs for its HTTPS front.
    pub fn with_s3_kubelet(self, log_lines: usize) -> Self {
        let ca = self.sb.s3_tls().ca_file.to_string_lossy().into_owned();
        self.with_kubelet(
            &[
                ("PGBACKREST_REPO1_STORAGE_CA_FILE", &ca),
                ("PGBACKREST_REPO1_S3_KEY_TYPE", "shared"),
                (
                    "PGBACKREST_REPO1_S3_KEY",
                    pgml_testbed::aws::TEST_ACCESS_KEY,
                ),
                (
                    "PGBACKREST_REPO1_S3_KEY_SECRET",
                    pgml_testbed::aws::TEST_SECRET_KEY,
                ),
            ],
            log_lines,
        )
    }
}
