//! The kubelet's part for PgmlCluster instance Pods, so that the instance manager runs as
//! the Pod would run it. kwok (the sandbox's kubelet) marks Pods Running but runs nothing;
//! this runs the main container of every Pod labelled `pgml.io/cluster` in one namespace,
//! bound (`spec.nodeName`) to a sandbox node and not being deleted:
//!
//! - volumes resolved as the kubelet would: the claim → its bound PersistentVolume →
//!   `spec.local.path` (the pool's dataset, mounted in the node's mount namespace); the
//!   ConfigMap and Secret volumes written as files under a folder of the Pod's on the node
//!   (`<node root>/pods/<namespace>/<pod>-<uid>/<mountPath>`; Secret files mode 0600, owned
//!   by root, which the manager runs as; ConfigMap files 0644, read by `postgres`) and
//!   rewritten when the ConfigMap changes (as the kubelet refreshes ConfigMap volumes);
//! - the container's environment from the Pod spec (values, downward-API `fieldRef`s,
//!   `secretKeyRef`/`configMapKeyRef`), paths below a volume's mountPath translated to where
//!   that volume is on the node; then only what the test bed must change: a free port
//!   (`PGPORT`), 127.0.0.1 advertised and listened on, the socket folder, PostgreSQL's bin
//!   folder, a look every second, and the caller's extra variables;
//! - the API reached as the Pod's ServiceAccount (a TokenRequest for `spec.serviceAccountName`,
//!   in a kubeconfig of the Pod's): the Role the operator made is what the manager gets;
//! - `pgml-instance run` started inside the node's mount namespace
//!   ([`crate::procs::in_node_process`], log `<sandbox>/logs/tests/kubelet-<ns>-<pod>.log`),
//!   stopped with SIGTERM (and waited for) when its Pod is deleted; a manager that exits by
//!   itself is restarted after a back-off (10 s, doubling, at most 5 min), its Pod's status
//!   saying so (container terminated, Ready False), as `restartPolicy: Always` does.
//!
//! One departure from what the operator renders: the test bed's PostgreSQL 15 (Debian's) has
//! no `pgml` extension (PostgresML is not packaged for Debian), so `pgml` is dropped from
//! `shared_preload_libraries` when the ConfigMap's `postgresql.conf` is written (the file
//! says so in a comment). Everything else is used as rendered: the operator's pg_hba.conf
//! (peer on the socket, scram-sha-256 over TCP, `streaming_replica` for replication) and the
//! Secrets' passwords. Clients of the test connect over TCP as `postgres` with the
//! superuser Secret's password ([`Kubelet::postgres`]).
//!
//! [`Kubelet::kill`] plays a lost primary: the manager and the postmaster SIGKILLed and not
//! restarted, the Pod's status showing the container terminated (exit 137, Ready False).
//! The harness needs a multi-threaded Tokio runtime (it blocks a worker while a manager
//! stops).

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::pg::{PG_BIN, Postgres, SOCKET_DIR, free_port};
use crate::procs::{self, Proc};
use crate::sandbox::{NodeInfo, Sandbox};

const CLUSTER_LABEL: &str = "pgml.io/cluster";
/// What the kubelet waits after a container's first exit before starting it again.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(500);
const STOP: Duration = Duration::from_secs(90);

/// Where a Pod's volumes are on its node: each container mountPath and the node path of its
/// volume. Volumes other than the claim live under the Pod's own folder, at their mountPath.
#[derive(Clone, Debug, PartialEq)]
pub struct Mounts {
    /// The Pod's folder on the node.
    pub root: String,
    /// (mountPath, node path).
    pub list: Vec<(String, String)>,
}

impl Mounts {
    /// The node path of a path inside the container: below a mountPath (the deepest that
    /// holds it), that volume's; a folder holding mountPaths of the Pod's folder (e.g.
    /// `/etc/pgml/secrets` above `/etc/pgml/secrets/superuser`), the same folder under it;
    /// else None (not a path of a volume).
    pub fn node_path(&self, path: &str) -> Option<String> {
        let path = path.trim_end_matches('/');
        let below = |m: &str| path == m || path.starts_with(&format!("{m}/"));
        if let Some((m, host)) = self
            .list
            .iter()
            .filter(|(m, _)| below(m.trim_end_matches('/')))
            .max_by_key(|(m, _)| m.len())
        {
            return Some(format!("{host}{}", &path[m.trim_end_matches('/').len()..]));
        }
        let holds = self.list.iter().any(|(m, host)| {
            m.starts_with(&format!("{path}/")) && *host == format!("{}{m}", self.root)
        });
        holds.then(|| format!("{}{path}", self.root))
    }
}

/// The operator's postgresql.conf as the test bed's PostgreSQL can load it: `pgml` taken
/// out of `shared_preload_libraries` (the only change), with a comment saying so.
pub fn testbed_postgresql_conf(conf: &str) -> String {
    let mut out = String::new();
    for line in conf.lines() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        if key.trim() != "shared_preload_libraries" || line.trim_start().starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let value = value.trim().trim_matches('\'');
        let kept: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty() && l.trim_matches('"') != "pgml")
            .collect();
        out.push_str(
            "# pgml-testbed kubelet: `pgml` dropped from shared_preload_libraries: the test \
             bed's PostgreSQL 15 (Debian) has no pgml extension.\n",
        );
        out.push_str(&format!(
            "shared_preload_libraries = '{}'\n",
            kept.join(",")
        ));
    }
    out
}

/// A Pod's main container: the one that runs `pgml-instance`, else the first.
fn main_container(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .find(|c| {
            c.command
                .as_ref()
                .and_then(|c| c.first())
                .is_some_and(|c| c.ends_with("/pgml-instance"))
        })
        .or(spec.containers.first())
}

/// One running (or lost) instance Pod.
struct Run {
    uid: String,
    node: NodeInfo,
    port: u16,
    /// The manager's `/metrics` and probes (`PGML_STATUS_ADDRESS`, on 127.0.0.1).
    status_port: u16,
    pgdata: String,
    root: PathBuf,
    /// ConfigMap name → the folder its files go to.
    config_maps: Vec<(String, PathBuf)>,
    /// The data last written, per ConfigMap.
    written: BTreeMap<String, BTreeMap<String, String>>,
    superuser_password: String,
    image: String,
    container: String,
    proc: Proc,
    /// Killed by [`Kubelet::kill`]: never restarted.
    lost: bool,
    restarts: i32,
    /// Exited by itself: started again at this moment.
    restart_at: Option<Instant>,
    started_at: String,
}

struct Inner {
    sb: &'static Sandbox,
    client: Client,
    namespace: String,
    extra_env: Vec<(String, String)>,
    runs: Mutex<BTreeMap<String, Run>>,
    /// Why a Pod does not run yet (the last error resolving it), for failure messages.
    waiting: Mutex<BTreeMap<String, String>>,
    stop: std::sync::atomic::AtomicBool,
}

/// The kubelet's part for the instance Pods of one namespace (see the module doc).
pub struct Kubelet {
    inner: Arc<Inner>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// How a test reaches one instance's server.
#[derive(Clone, Debug)]
pub struct Instance {
    pub pod: String,
    pub node: NodeInfo,
    pub port: u16,
    /// The manager's `/metrics`, `/readyz`, … on 127.0.0.1.
    pub status_port: u16,
    /// PGDATA as the node sees it.
    pub pgdata: String,
    pub superuser_password: String,
    pub log: PathBuf,
}

impl Instance {
    /// A client's handle (over TCP, with the superuser's password); dropping it leaves the
    /// server alone.
    pub fn postgres(&self) -> Postgres {
        Postgres::attach(
            &self.node,
            &self.pgdata,
            self.port,
            &self.superuser_password,
        )
    }

    /// For [`crate::primaries::Sampler`].
    pub fn target(&self) -> crate::primaries::Target {
        crate::primaries::Target {
            pod: self.pod.clone(),
            port: self.port,
            password: Some(self.superuser_password.clone()),
        }
    }
}

impl Kubelet {
    /// Starts watching `namespace`'s instance Pods; `extra_env` is added to every
    /// manager's environment last (e.g. pgBackRest's variables).
    pub fn start(
        sb: &'static Sandbox,
        client: Client,
        namespace: &str,
        extra_env: &[(&str, &str)],
    ) -> Kubelet {
        let inner = Arc::new(Inner {
            sb,
            client,
            namespace: namespace.into(),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            runs: Mutex::new(BTreeMap::new()),
            waiting: Mutex::new(BTreeMap::new()),
            stop: Default::default(),
        });
        let me = inner.clone();
        let task = tokio::spawn(async move {
            while !me.stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = me.pass().await {
                    eprintln!("kubelet[{}]: {e:#}", me.namespace);
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Kubelet {
            inner,
            task: Some(task),
        }
    }

    /// The instance of Pod `pod`, once its manager was started.
    pub fn instance(&self, pod: &str) -> Option<Instance> {
        let runs = self.inner.runs.lock().unwrap();
        let r = runs.get(pod)?;
        Some(Instance {
            pod: pod.into(),
            node: r.node.clone(),
            port: r.port,
            status_port: r.status_port,
            pgdata: r.pgdata.clone(),
            superuser_password: r.superuser_password.clone(),
            log: r.proc.log_path().clone(),
        })
    }

    /// Waits (up to `timeout`) for Pod `pod`'s manager to be started; panics saying why
    /// it is not.
    pub async fn wait_instance(&self, pod: &str, timeout: Duration) -> Instance {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.instance(pod) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "the kubelet did not start {pod} within {timeout:?}: {}",
                self.why_waiting(pod)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Why a Pod's manager is not started (the last resolution error), if known.
    pub fn why_waiting(&self, pod: &str) -> String {
        self.inner
            .waiting
            .lock()
            .unwrap()
            .get(pod)
            .cloned()
            .unwrap_or_else(|| "no Pod bound to a sandbox node seen yet".into())
    }

    /// The last `lines` lines of Pod `pod`'s manager log (PostgreSQL's output included).
    pub fn log_tail(&self, pod: &str, lines: usize) -> String {
        let Some(i) = self.instance(pod) else {
            return format!("({pod}: no manager started: {})", self.why_waiting(pod));
        };
        let text = std::fs::read_to_string(&i.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- {pod} ({}), last {lines} lines:\n{}",
            i.log.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// Every manager's log tail, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let pods: Vec<String> = self.inner.runs.lock().unwrap().keys().cloned().collect();
        pods.iter()
            .map(|p| self.log_tail(p, lines))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A crashed container: its manager and its postmaster SIGKILLed (everything in the
    /// container dies with it), the manager started again after the back-off, as
    /// `restartPolicy: Always` does. False when the kubelet does not run `pod` (yet).
    pub fn crash(&self, pod: &str) -> bool {
        let (node, pgdata, port) = {
            let mut runs = self.inner.runs.lock().unwrap();
            let Some(r) = runs.get_mut(pod).filter(|r| !r.lost) else {
                return false;
            };
            // The manager and what it runs (a `pgbackrest restore`, `pg_basebackup`).
            r.proc.kill_tree();
            (r.node.clone(), r.pgdata.clone(), r.port)
        };
        if let Some(pid) = Postgres::attach(&node, &pgdata, port, "").postmaster_pid() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        true
    }

    /// A lost instance: its manager and its postmaster SIGKILLed, not restarted, and its
    /// Pod's status saying the container terminated (exit 137) and the Pod is not Ready.
    pub async fn kill(&self, pod: &str) {
        let (node, pgdata, port, image, container, restarts, started) = {
            let mut runs = self.inner.runs.lock().unwrap();
            let r = runs
                .get_mut(pod)
                .unwrap_or_else(|| panic!("the kubelet runs no {pod}"));
            r.lost = true;
            r.restart_at = None;
            r.proc.kill();
            (
                r.node.clone(),
                r.pgdata.clone(),
                r.port,
                r.image.clone(),
                r.container.clone(),
                r.restarts,
                r.started_at.clone(),
            )
        };
        if let Some(pid) = Postgres::attach(&node, &pgdata, port, "").postmaster_pid() {
            let ok = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "SIGKILL to {pod}'s postmaster {pid}");
        }
        self.inner
            .container_status(pod, &container, &image, restarts, &started, false)
            .await
            .unwrap_or_else(|e| panic!("writing {pod}'s container status: {e:#}"));
    }

    /// Stops every manager (SIGTERM, waiting for each), then the watch.
    pub fn shutdown(&mut self) {
        self.inner
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let runs = std::mem::take(&mut *self.inner.runs.lock().unwrap());
        for (_, mut r) in runs {
            r.proc.stop(STOP);
            let _ = std::fs::remove_dir_all(&r.root);
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .expect("now is a valid time")
        .to_string()
}

/// Blocks this worker (the multi-threaded runtime moves its other tasks away).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Inner {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One look at the Pods: stop what is gone, start what is new, restart what exited,
    /// refresh the ConfigMap files.
    async fn pass(&self) -> anyhow::Result<()> {
        let pods: Api<Pod> = self.api();
        let listed = pods
            .list(&ListParams::default().labels(CLUSTER_LABEL))
            .await
            .context("listing Pods")?
            .items;
        let live: BTreeMap<String, &Pod> = listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| Some((p.metadata.name.clone()?, p)))
            .collect();
        // Gone, being deleted, or replaced by a Pod of the same name: SIGTERM and wait.
        let gone: Vec<String> = {
            let runs = self.runs.lock().unwrap();
            runs.iter()
                .filter(|(n, r)| {
                    live.get(*n)
                        .is_none_or(|p| p.metadata.uid.as_deref() != Some(&r.uid))
                })
                .map(|(n, _)| n.clone())
                .collect()
        };
        for name in gone {
            let r = self.runs.lock().unwrap().remove(&name);
            if let Some(mut r) = r {
                blocking(|| r.proc.stop(STOP));
                // The kubelet cleans a deleted Pod's volumes up (the Secrets' files too).
                let _ = std::fs::remove_dir_all(&r.root);
            }
        }
        for (name, pod) in &live {
            let known = self.runs.lock().unwrap().contains_key(name);
            if !known {
                let Some(node) = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .and_then(|n| self.sb.nodes.iter().find(|x| x.name == n))
                else {
                    continue;
                };
                match self.run_pod(pod, node).await {
                    Ok(r) => {
                        self.waiting.lock().unwrap().remove(name);
                        self.runs.lock().unwrap().insert(name.clone(), r);
                    }
                    Err(e) => {
                        self.waiting
                            .lock()
                            .unwrap()
                            .insert(name.clone(), format!("{e:#}"));
                    }
                }
                continue;
            }
            // One Pod's trouble (the API busy a moment) does not hold the others up.
            if let Err(e) = self.supervise(name).await {
                eprintln!("kubelet[{}]: {name}: {e:#}", self.namespace);
            }
            if let Err(e) = self.refresh_config(name).await {
                eprintln!("kubelet[{}]: {name}: {e:#}", self.namespace);
            }
        }
        Ok(())
    }

    /// Restarts a manager that exited by itself, after the back-off, and says so in the
    /// Pod's status as the kubelet does.
    async fn supervise(&self, name: &str) -> anyhow::Result<()> {
        enum Step {
            Exited,
            Restarted,
        }
        let (step, container, image, restarts, started) = {
            let mut runs = self.runs.lock().unwrap();
            let Some(r) = runs.get_mut(name) else {
                return Ok(());
            };
            if r.lost {
                return Ok(());
            }
            let step = match r.restart_at {
                None if !r.proc.running() => {
                    let backoff = FIRST_BACKOFF
                        .saturating_mul(1 << r.restarts.clamp(0, 5))
                        .min(MAX_BACKOFF);
                    r.restart_at = Some(Instant::now() + backoff);
                    eprintln!("kubelet: {name}'s manager exited; restarting in {backoff:?}");
                    Step::Exited
                }
                Some(at) if Instant::now() >= at => {
                    r.restart_at = None;
                    r.restarts += 1;
                    r.started_at = now();
                    r.proc.start();
                    Step::Restarted
                }
                _ => return Ok(()),
            };
            (
                step,
                r.container.clone(),
                r.image.clone(),
                r.restarts,
                r.started_at.clone(),
            )
        };
        let running = matches!(step, Step::Restarted);
        self.container_status(name, &container, &image, restarts, &started, running)
            .await
    }

    /// Writes the main container's status (and the Ready conditions that follow from it)
    /// in the Pod's status, as the kubelet reports a container that ran and exited, or runs.
    async fn container_status(
        &self,
        pod: &str,
        container: &str,
        image: &str,
        restarts: i32,
        started_at: &str,
        running: bool,
    ) -> anyhow::Result<()> {
        let t = now();
        let state = if running {
            json!({"running": {"startedAt": started_at}})
        } else {
            json!({"terminated": {"exitCode": 137, "reason": "Error", "startedAt": started_at, "finishedAt": t}})
        };
        let ready = if running { "True" } else { "False" };
        let reason = if running { "" } else { "ContainersNotReady" };
        let cond = |ty: &str| json!({"type": ty, "status": ready, "reason": reason, "lastTransitionTime": t});
        let body = json!({"status": {
            "conditions": [cond("Ready"), cond("ContainersReady")],
            "containerStatuses": [{
                "name": container, "image": image, "imageID": "", "ready": running,
                "started": running, "restartCount": restarts, "state": state,
            }],
        }});
        self.api::<Pod>()
            .patch_status(pod, &PatchParams::default(), &Patch::Strategic(&body))
            .await
            .with_context(|| format!("patching {pod}'s status"))?;
        Ok(())
    }

    /// Rewrites the files of a ConfigMap volume whose data changed.
    async fn refresh_config(&self, name: &str) -> anyhow::Result<()> {
        let maps = match self.runs.lock().unwrap().get(name) {
            Some(r) => r.config_maps.clone(),
            None => return Ok(()),
        };
        for (cm, dir) in maps {
            let Some(data) = self.config_map_data(&cm).await? else {
                continue;
            };
            let mut runs = self.runs.lock().unwrap();
            let Some(r) = runs.get_mut(name) else {
                return Ok(());
            };
            if r.written.get(&cm) != Some(&data) {
                write_config_files(&dir, &data)?;
                r.written.insert(cm, data);
            }
        }
        Ok(())
    }

    async fn config_map_data(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<BTreeMap<String, String>>> {
        Ok(self
            .api::<ConfigMap>()
            .get_opt(name)
            .await
            .with_context(|| format!("reading ConfigMap {name}"))?
            .map(|c| c.data.unwrap_or_default()))
    }

    async fn secret_data(&self, name: &str) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let s: Secret = self
            .api::<Secret>()
            .get_opt(name)
            .await
            .with_context(|| format!("reading Secret {name}"))?
            .with_context(|| format!("Secret {name} does not exist (yet)"))?;
        let mut out: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in s.string_data.unwrap_or_default() {
            out.insert(k, v.into_bytes());
        }
        Ok(out)
    }

    /// The node path of the PersistentVolume bound to claim `claim`.
    async fn claim_path(&self, claim: &str) -> anyhow::Result<String> {
        let pvc: PersistentVolumeClaim = self
            .api::<PersistentVolumeClaim>()
            .get_opt(claim)
            .await?
            .with_context(|| format!("claim {claim} does not exist (yet)"))?;
        let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase != Some("Bound") {
            bail!("claim {claim} is not Bound yet ({phase:?})");
        }
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .with_context(|| format!("claim {claim} names no volume"))?;
        let pv: PersistentVolume = Api::<PersistentVolume>::all(self.client.clone())
            .get(&pv_name)
            .await
            .with_context(|| format!("reading PersistentVolume {pv_name}"))?;
        pv.spec
            .as_ref()
            .and_then(|s| s.local.as_ref())
            .map(|l| l.path.clone())
            .with_context(|| format!("PersistentVolume {pv_name} is not a local volume"))
    }

    /// A kubeconfig of the Pod's ServiceAccount (a token from the TokenRequest API), so
    /// that the manager has exactly the Pod's permissions.
    async fn pod_kubeconfig(&self, pod: &Pod, root: &Path) -> anyhow::Result<PathBuf> {
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let path = root.join("kubeconfig");
        crate::rbac::service_account_kubeconfig(self.sb, &self.client, &self.namespace, &sa, &path)
            .await?;
        Ok(path)
    }

    /// Resolves a Pod's volumes and environment, writes its files, starts its manager.
    async fn run_pod(&self, pod: &Pod, node: &NodeInfo) -> anyhow::Result<Run> {
        let name = pod.metadata.name.clone().context("a Pod has a name")?;
        let uid = pod.metadata.uid.clone().context("a Pod has a uid")?;
        let spec = pod.spec.as_ref().context("a Pod has a spec")?;
        let c = main_container(pod).context("the Pod has no container")?;
        let root = node
            .root
            .join("pods")
            .join(&self.namespace)
            .join(format!("{name}-{}", &uid[..uid.len().min(8)]));
        let root_s = root.display().to_string();
        let mut mounts = Mounts {
            root: root_s.clone(),
            list: vec![],
        };
        let mut config_maps = vec![];
        let mut secrets = vec![];
        for m in c.volume_mounts.iter().flatten() {
            let v = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .with_context(|| format!("no volume {}", m.name))?;
            let at = format!("{root_s}{}", m.mount_path);
            if let Some(claim) = &v.persistent_volume_claim {
                let path = self.claim_path(&claim.claim_name).await?;
                mounts.list.push((m.mount_path.clone(), path));
                continue;
            }
            if let Some(cm) = &v.config_map {
                config_maps.push((cm.name.clone(), PathBuf::from(&at)));
            } else if let Some(s) = &v.secret {
                let sname = s
                    .secret_name
                    .clone()
                    .context("a secret volume names none")?;
                secrets.push((sname, PathBuf::from(&at)));
            }
            mounts.list.push((m.mount_path.clone(), at));
        }
        let claim = mounts
            .list
            .iter()
            .find(|(_, h)| !h.starts_with(&root_s))
            .context("the Pod mounts no claim")?
            .clone();
        // Files: the Pod's folder (traversable by postgres), ConfigMaps, Secrets.
        std::fs::create_dir_all(&root)?;
        for (_, h) in mounts.list.iter().filter(|(_, h)| h.starts_with(&root_s)) {
            std::fs::create_dir_all(h)?;
        }
        traversable(&node.root.join("pods"))?;
        let mut written = BTreeMap::new();
        for (cm, dir) in &config_maps {
            let data = self
                .config_map_data(cm)
                .await?
                .with_context(|| format!("ConfigMap {cm} does not exist (yet)"))?;
            write_config_files(dir, &data)?;
            written.insert(cm.clone(), data);
        }
        let mut superuser_password = String::new();
        for (s, dir) in &secrets {
            let data = self.secret_data(s).await?;
            for (k, v) in &data {
                write_file(&dir.join(k), v, 0o600)?;
            }
            if s.ends_with("-superuser") {
                superuser_password = data
                    .get("password")
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
            }
        }
        let kubeconfig = self.pod_kubeconfig(pod, &root).await?;
        // The instance manager's emptyDir (it writes its passfile there, outside PGDATA).
        let run_dir = root.join("run");
        std::fs::create_dir_all(&run_dir).with_context(|| format!("{}", run_dir.display()))?;
        let port = free_port();
        let status_port = free_port();
        let mut env = self.container_env(pod, c, &mounts).await?;
        let pgdata = env
            .iter()
            .find(|(k, _)| k == "PGDATA")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| claim.1.clone());
        let overrides = [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("PGPORT", port.to_string()),
            ("PGML_STATUS_ADDRESS", format!("127.0.0.1:{status_port}")),
            ("PGML_ADVERTISE_HOST", "127.0.0.1".into()),
            ("PGML_LISTEN_ADDRESSES", "127.0.0.1".into()),
            ("PGML_SOCKET_DIR", SOCKET_DIR.into()),
            ("PGML_PG_BIN", PG_BIN.into()),
            ("PGML_INTERVAL_SECONDS", "1".into()),
            ("PGML_RUN_DIR", run_dir.display().to_string()),
        ];
        for (k, v) in overrides
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(self.extra_env.iter().cloned())
        {
            env.retain(|(x, _)| *x != k);
            env.push((k, v));
        }
        let args: Vec<String> = c
            .command
            .iter()
            .flatten()
            .skip(1)
            .chain(c.args.iter().flatten())
            .cloned()
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started_at = now();
        let proc = blocking(|| {
            procs::in_node_process(
                self.sb,
                node,
                format!("pgml-instance[{}/{name}]", self.namespace),
                "pgml-instance",
                &args,
                env,
                &format!("kubelet-{}-{name}", self.namespace),
            )
        });
        Ok(Run {
            uid,
            node: node.clone(),
            port,
            status_port,
            pgdata,
            root,
            config_maps,
            written,
            superuser_password,
            image: c.image.clone().unwrap_or_default(),
            container: c.name.clone(),
            proc,
            lost: false,
            restarts: 0,
            restart_at: None,
            started_at,
        })
    }

    /// The container's environment as the kubelet makes it, paths below a volume's
    /// mountPath translated to the node's.
    async fn container_env(
        &self,
        pod: &Pod,
        c: &Container,
        mounts: &Mounts,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut env = vec![];
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    if let Some(f) = &from.field_ref {
                        field(pod, &f.field_path)?
                    } else if let Some(s) = &from.secret_key_ref {
                        let data = self.secret_data(&s.name).await?;
                        String::from_utf8_lossy(
                            data.get(&s.key)
                                .with_context(|| format!("Secret {} has no {}", s.name, s.key))?,
                        )
                        .into_owned()
                    } else if let Some(k) = &from.config_map_key_ref {
                        self.config_map_data(&k.name)
                            .await?
                            .and_then(|d| d.get(&k.key).cloned())
                            .with_context(|| format!("ConfigMap {} has no {}", k.name, k.key))?
                    } else {
                        bail!("{}: this kind of valueFrom is not played here", e.name)
                    }
                }
                (None, None) => String::new(),
            };
            let value = if value.starts_with('/') {
                mounts.node_path(&value).unwrap_or(value)
            } else {
                value
            };
            env.push((e.name.clone(), value));
        }
        Ok(env)
    }
}

/// A downward-API field of the Pod.
fn field(pod: &Pod, path: &str) -> anyhow::Result<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let v = match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
        _ => bail!("fieldRef {path} is not played here"),
    };
    Ok(v.unwrap_or_default())
}

/// Makes `top` and every folder below it traversable (0755): PostgreSQL reads the
/// ConfigMap's files as `postgres`; the Secrets' files stay 0600.
fn traversable(top: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755))?;
    for d in walk(top)? {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
            out.push(p);
        }
    }
    Ok(out)
}

/// Writes a ConfigMap's keys as files (0644: PostgreSQL reads them as `postgres`), the
/// `postgresql.conf` without `pgml` preloaded (see the module doc).
fn write_config_files(dir: &Path, data: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for (k, v) in data {
        let text = if k == "postgresql.conf" {
            testbed_postgresql_conf(v)
        } else {
            v.clone()
        };
        write_file(&dir.join(k), text.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Writes a file whole (temporary file, then rename: a reader never sees half of it),
/// owned by root with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("kubelet-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Mounts {
        let root = "/n/pods/ns/c-1-abcd".to_string();
        Mounts {
            list: vec![
                (
                    "/var/lib/postgresql/data".into(),
                    "/n/mnt/pool/pgdata".into(),
                ),
                ("/etc/pgml/config".into(), format!("{root}/etc/pgml/config")),
                (
                    "/etc/pgml/secrets/superuser".into(),
                    format!("{root}/etc/pgml/secrets/superuser"),
                ),
                (
                    "/etc/pgml/secrets/replication".into(),
                    format!("{root}/etc/pgml/secrets/replication"),
                ),
            ],
            root,
        }
    }

    #[test]
    fn container_paths_become_node_paths() {
        let m = mounts();
        assert_eq!(
            m.node_path("/var/lib/postgresql/data/pgdata").as_deref(),
            Some("/n/mnt/pool/pgdata/pgdata")
        );
        assert_eq!(
            m.node_path("/var/lib/postgresql/data").as_deref(),
            Some("/n/mnt/pool/pgdata")
        );
        assert_eq!(
            m.node_path("/etc/pgml/config").as_deref(),
            Some("/n/pods/ns/c-1-abcd/etc/pgml/config")
        );
        assert_eq!(
            m.node_path("/etc/pgml/secrets/replication").as_deref(),
            Some("/n/pods/ns/c-1-abcd/etc/pgml/secrets/replication")
        );
        // A folder above two mounts of the Pod's folder: the same folder there.
        assert_eq!(
            m.node_path("/etc/pgml/secrets").as_deref(),
            Some("/n/pods/ns/c-1-abcd/etc/pgml/secrets")
        );
        // Not a volume's path; a prefix that is not a path component.
        assert_eq!(m.node_path("/usr/lib/postgresql/15/bin"), None);
        assert_eq!(m.node_path("/var/lib/postgresql/database"), None);
        // Above the claim only: the claim is not under the Pod's folder.
        assert_eq!(m.node_path("/var/lib/postgresql"), None);
    }

    #[test]
    fn pgml_is_dropped_from_the_preloaded_libraries_only() {
        let conf = "# Written by pgml-operator\nhot_standby = 'on'\nshared_preload_libraries = 'pg_stat_statements,pgml'\nwal_level = 'replica'\n";
        let out = testbed_postgresql_conf(conf);
        assert!(
            out.contains("\nshared_preload_libraries = 'pg_stat_statements'\n"),
            "{out}"
        );
        assert!(out.contains("# pgml-testbed kubelet: `pgml` dropped"));
        assert!(out.starts_with("# Written by pgml-operator\nhot_standby = 'on'\n"));
        assert!(out.ends_with("wal_level = 'replica'\n"));
        let only = testbed_postgresql_conf("shared_preload_libraries = 'pgml'\n");
        assert!(only.ends_with("shared_preload_libraries = ''\n"), "{only}");
    }
}
