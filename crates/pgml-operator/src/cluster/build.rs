//! The objects of a cluster, built from the PgmlCluster and what the reconcile decided, as
//! the JSON bodies that are server-side applied. No client: everything here is tested
//! from YAML.

use pgml_api::PgmlCluster;
use pgml_api::cluster::CredentialsMode;
use pgml_api::common::keys;
use pgml_api::zfspool::{Layout, RestoreFrom, ZfsPoolSpec};
use serde_json::{Value, json};

use super::config::{self, Archiving};
use super::names::{self, ClusterRef, SecretKind};
use crate::pgbackrest::{self, RenderError};

/// Where the instance's volume is mounted in its Pod.
pub const DATA_MOUNT: &str = "/var/lib/postgresql/data";
/// PGDATA: a folder below the mount (an ext4 volume's root holds lost+found).
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// Where the instance's `pgwal` volume is mounted in its Pod, when its pool has one.
pub const WAL_MOUNT: &str = "/var/lib/postgresql/wal";
/// The WAL directory (`PGML_WAL_DIR`): a folder below that mount, as PGDATA is below its
/// own; `PGDATA/pg_wal` links to it.
pub const WAL_DIR: &str = "/var/lib/postgresql/wal/pg_wal";
pub const CONTROLLER_DIR: &str = "/controller";
pub const CONFIG_DIR: &str = "/etc/pgml/config";
/// The folder of PostgreSQL's Unix socket in the Pod (the instance manager's
/// `PGML_SOCKET_DIR` default): pgBackRest's `pg1-socket-path`.
pub const SOCKET_DIR: &str = "/tmp";
/// The annotation by which EKS's IRSA webhook gives a ServiceAccount's Pods an IAM role
/// (it sets `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE` in them).
pub const IRSA_ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
pub const SECRETS_DIR: &str = "/etc/pgml/secrets";
pub const PORT: i32 = 5432;
/// The instance manager's `/metrics` and probes (`PGML_STATUS_ADDRESS`).
pub const STATUS_PORT: i32 = 9187;
/// Where the operator's image keeps the instance manager.
pub const INSTANCE_BINARY: &str = "/usr/local/bin/pgml-instance";

/// What every builder needs.
pub struct Builder<'a> {
    pub c: ClusterRef,
    pub cluster: &'a PgmlCluster,
    /// The image holding `pgml-instance` (the operator's).
    pub instance_image: &'a str,
    /// pgBackRest's file and settings, rendered once (an error is the spec's: nothing of
    /// the ConfigMap is applied then).
    pub archiving: Result<Option<Archiving>, RenderError>,
    /// The source repository's file of `bootstrap.pgbackrest`, rendered once.
    pub bootstrap_source: Result<Option<String>, RenderError>,
    /// Whether the cluster gets its NetworkPolicy (`--network-policies`).
    pub network_policy: bool,
}

/// Whether the stored ServiceAccount `stored` carries IRSA's role annotation, applied by
/// `manager`, which `desired` no longer has (pgBackRest's mode changed, or pgBackRest was
/// removed): only an apply without it removes it. An annotation someone else set is theirs.
pub fn stale_irsa_annotation(stored: &Value, desired: &Value, manager: &str) -> bool {
    if !desired["metadata"]["annotations"][IRSA_ROLE_ARN].is_null()
        || stored["metadata"]["annotations"][IRSA_ROLE_ARN].is_null()
    {
        return false;
    }
    let field = format!("f:{IRSA_ROLE_ARN}");
    stored["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] == manager && m["operation"] == "Apply")
        .any(|m| !m["fieldsV1"]["f:metadata"]["f:annotations"][&field].is_null())
}

/// The `pgml.io/role` label of an instance's Pod, which the Services select on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRole {
    /// `primary`: the `-rw` Service sends clients to it.
    Primary,
    /// `replica`: the `-ro` Service.
    Replica,
    /// No role label: the primary of a cluster whose database's identity is not recorded
    /// in status yet (`identity::routable`), so that no client writes to a database an
    /// instance manager could still make again (only `-r`, every instance, selects it).
    Unrouted,
}

/// One instance as decided by the reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub n: u32,
    pub name: String,
    pub node: String,
    pub role: PodRole,
    pub fenced: bool,
    /// The EbsSnapshot its pool is restored from.
    pub restore_from: Option<String>,
    /// Kept from Karpenter's voluntary disruption (`karpenter.sh/do-not-disrupt`): the
    /// instances a change of primary is between, while it is under way.
    pub protect: bool,
}

impl<'a> Builder<'a> {
    pub fn new(cluster: &'a PgmlCluster, instance_image: &'a str) -> Option<Builder<'a>> {
        let c = ClusterRef {
            namespace: cluster.metadata.namespace.clone()?,
            name: cluster.metadata.name.clone()?,
        };
        let archiving = config::archiving(&c.namespace, &c.name, &cluster.spec);
        let bootstrap_source = config::bootstrap_source(&c.namespace, &cluster.spec);
        Some(Builder {
            c,
            cluster,
            instance_image,
            bootstrap_source,
            archiving,
            network_policy: false,
        })
    }

    /// With the cluster's NetworkPolicy or without.
    pub fn with_network_policy(mut self, on: bool) -> Builder<'a> {
        self.network_policy = on;
        self
    }

    fn owner(&self) -> Value {
        json!([{
            "apiVersion": "pgml.io/v1alpha1",
            "kind": "PgmlCluster",
            "name": self.c.name,
            "uid": self.cluster.metadata.uid.clone().unwrap_or_default(),
            "controller": true,
            "blockOwnerDeletion": true,
        }])
    }

    fn meta(&self, name: &str, labels: std::collections::BTreeMap<String, String>) -> Value {
        json!({
            "name": name,
            "namespace": self.c.namespace,
            "labels": labels,
            "ownerReferences": self.owner(),
        })
    }

    /// The ZfsPool of an instance: the cluster's template on the instance's node.
    pub fn pool(&self, i: &Instance) -> Option<Value> {
        let zfs = self.cluster.spec.storage.zfs.as_ref()?;
        let spec = ZfsPoolSpec {
            node_name: i.node.clone(),
            pool_name: Some(self.c.pool_name(i.n)),
            template: zfs.template.clone(),
            restore_from: i.restore_from.as_ref().map(|s| RestoreFrom {
                ebs_snapshot_name: s.clone(),
                volume_initialization_rate_mibps: None,
            }),
            snapshots: None,
        };
        Some(json!({
            "apiVersion": "pgml.io/v1alpha1",
            "kind": "ZfsPool",
            "metadata": self.meta(&i.name, self.c.instance_labels(i.n)),
            "spec": spec,
        }))
    }

    /// Usable size of an instance's storage, as a quantity.
    pub fn capacity(&self) -> String {
        if let Some(zfs) = &self.cluster.spec.storage.zfs {
            let v = &zfs.template.volumes;
            let data = match zfs.template.layout {
                Layout::Raidz1 => (v.count - 1).max(1),
                _ => v.count,
            };
            return format!("{}Gi", v.size_gib * i64::from(data));
        }
        self.cluster
            .spec
            .storage
            .persistent_volume_claim
            .as_ref()
            .map(|p| p.size.clone())
            .unwrap_or_default()
    }

    /// Whether the instances' pools have a `pgwal` dataset (ZFS storage whose template
    /// lists it, as the default does): WAL goes there, on a volume of its own.
    pub fn has_wal(&self) -> bool {
        self.cluster.spec.storage.zfs.as_ref().is_some_and(|z| {
            z.template
                .datasets
                .iter()
                .any(|d| d.name == names::WAL_DATASET)
        })
    }

    /// The local PersistentVolume over the pool's `pgdata` dataset, pre-bound to the PVC.
    /// Cluster-scoped: no owner reference (the finalizer deletes it).
    pub fn pv(&self, i: &Instance, path: &str) -> Value {
        self.local_pv(i, path, self.c.pv_name(i.n), &i.name)
    }

    /// The local PersistentVolume over the pool's `pgwal` dataset, pre-bound to the WAL
    /// claim ([`Self::has_wal`]).
    pub fn wal_pv(&self, i: &Instance, path: &str) -> Value {
        self.local_pv(i, path, self.c.wal_pv_name(i.n), &self.c.wal_claim(i.n))
    }

    fn local_pv(&self, i: &Instance, path: &str, name: String, claim: &str) -> Value {
        let mut labels = self.c.instance_labels(i.n);
        labels.insert(keys::NAMESPACE.into(), self.c.namespace.clone());
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "capacity": {"storage": self.capacity()},
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": "Filesystem",
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": names::STORAGE_CLASS,
                "local": {"path": path},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": self.c.namespace, "name": claim},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [i.node]}
                ]}]}},
            },
        })
    }

    /// The instance's claim: bound to its PV on ZFS, from the StorageClass on ext4 (with
    /// the node preselected, as the scheduler would, since the Pod is not scheduled).
    pub fn pvc(&self, i: &Instance) -> Value {
        let mut meta = self.meta(&i.name, self.c.instance_labels(i.n));
        let mut spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": self.capacity()}},
        });
        match &self.cluster.spec.storage.persistent_volume_claim {
            Some(p) => {
                if let Some(class) = &p.storage_class_name {
                    spec["storageClassName"] = json!(class);
                }
                meta["annotations"] = json!({"volume.kubernetes.io/selected-node": i.node});
            }
            None => {
                spec["storageClassName"] = json!(names::STORAGE_CLASS);
                spec["volumeName"] = json!(self.c.pv_name(i.n));
            }
        }
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec})
    }

    /// The claim of the instance's `pgwal` volume, bound to its PV ([`Self::has_wal`]).
    pub fn wal_pvc(&self, i: &Instance) -> Value {
        let meta = self.meta(&self.c.wal_claim(i.n), self.c.instance_labels(i.n));
        let spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": self.capacity()}},
            "storageClassName": names::STORAGE_CLASS,
            "volumeName": self.c.wal_pv_name(i.n),
        });
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec})
    }

    /// The metadata the controller changes on a live Pod: the role label, the fence, and
    /// Karpenter's do-not-disrupt while a change of primary is under way.
    pub fn pod_marks(&self, i: &Instance) -> Value {
        let mut labels = self.c.instance_labels(i.n);
        let role = match i.role {
            PodRole::Primary => Some(names::ROLE_PRIMARY),
            PodRole::Replica => Some(names::ROLE_REPLICA),
            PodRole::Unrouted => None,
        };
        if let Some(role) = role {
            labels.insert(names::ROLE.into(), role.into());
        }
        let mut meta = json!({"name": i.name, "namespace": self.c.namespace, "labels": labels});
        let mut annotations = serde_json::Map::new();
        if i.fenced {
            annotations.insert(names::FENCED.into(), json!("true"));
        }
        if i.protect {
            annotations.insert(names::DO_NOT_DISRUPT.into(), json!("true"));
        }
        if !annotations.is_empty() {
            meta["annotations"] = Value::Object(annotations);
        }
        meta
    }

    /// The instance's Pod on its node: the init container copies the instance manager in,
    /// the main container runs it with the cluster's image.
    pub fn pod(&self, i: &Instance) -> Value {
        let spec = &self.cluster.spec;
        let mut meta = self.pod_marks(i);
        meta["ownerReferences"] = self.owner();
        let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
        let mut env = vec![
            json!({"name": "POD_NAME"}),
            json!({"name": "POD_NAMESPACE"}),
            json!({"name": "PGML_ADVERTISE_HOST"}),
        ];
        for (e, path) in env
            .iter_mut()
            .zip(["metadata.name", "metadata.namespace", "status.podIP"])
        {
            e.as_object_mut()
                .expect("an object")
                .extend(field(path).as_object().expect("an object").clone());
        }
        for (k, v) in [
            ("CLUSTER_NAME", self.c.name.clone()),
            ("PGDATA", PGDATA.into()),
            ("PGPORT", PORT.to_string()),
            ("PGML_STATUS_ADDRESS", format!("0.0.0.0:{STATUS_PORT}")),
            ("PGML_CONFIG_DIR", CONFIG_DIR.into()),
            ("PGML_SECRETS_DIR", SECRETS_DIR.into()),
            (
                "PGML_REPLICATION_SECRET_DIR",
                format!("{SECRETS_DIR}/replication"),
            ),
        ] {
            env.push(json!({"name": k, "value": v}));
        }
        // On ZFS, the instance manager starts nothing while PGDATA is not on the pool's
        // pgdata dataset (after a reboot whose pool was not imported, the PV's folder is an
        // empty one on the root disk).
        if spec.storage.zfs.is_some() {
            let dataset = format!("{}/{}", self.c.pool_name(i.n), names::PGDATA_DATASET);
            env.push(json!({"name": "PGML_EXPECT_DATASET", "value": dataset}));
        }
        // WAL on the pool's pgwal dataset, checked the same way.
        if self.has_wal() {
            let dataset = format!("{}/{}", self.c.pool_name(i.n), names::WAL_DATASET);
            env.push(json!({"name": "PGML_WAL_DIR", "value": WAL_DIR}));
            env.push(json!({"name": "PGML_EXPECT_WAL_DATASET", "value": dataset}));
        }
        let mut main = json!({
            "name": "postgres",
            "image": spec.image,
            "command": [format!("{CONTROLLER_DIR}/pgml-instance"), "run"],
            "env": env,
            "ports": [
                {"name": "postgres", "containerPort": PORT, "protocol": "TCP"},
                {"name": "metrics", "containerPort": STATUS_PORT, "protocol": "TCP"},
            ],
            // The instance manager answers them (docs/design/pgmlcluster.md, "Probes"):
            // start-up once it read its cluster, liveness while it answers, readiness while
            // PostgreSQL accepts connections (a replica within maximumLagBytes).
            "startupProbe": probe("/startupz", 5, 60),
            "livenessProbe": probe("/healthz", 10, 3),
            "readinessProbe": probe("/readyz", 5, 2),
            "volumeMounts": [
                {"name": "pgdata", "mountPath": DATA_MOUNT},
                {"name": "controller", "mountPath": CONTROLLER_DIR},
                {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
                {"name": "superuser", "mountPath": format!("{SECRETS_DIR}/superuser"), "readOnly": true},
                {"name": "replication", "mountPath": format!("{SECRETS_DIR}/replication"), "readOnly": true},
                {"name": "app", "mountPath": format!("{SECRETS_DIR}/app"), "readOnly": true},
            ],
        });
        if let Some(r) = &spec.resources {
            main["resources"] = json!(r);
        }
        if self.has_wal()
            && let Some(mounts) = main["volumeMounts"].as_array_mut()
        {
            mounts.insert(1, json!({"name": "pgwal", "mountPath": WAL_MOUNT}));
        }
        let mut pod_spec = json!({
            "nodeName": i.node,
            "serviceAccountName": self.c.service_account(),
            // The instance manager is the container's first process and does not reap: with
            // the pod's pause process as PID 1, a killed postmaster cannot linger as a zombie
            // that keeps its socket lock and blocks the restart.
            "shareProcessNamespace": true,
            "initContainers": [{
                "name": "bootstrap-controller",
                "image": self.instance_image,
                "command": ["cp", INSTANCE_BINARY, format!("{CONTROLLER_DIR}/pgml-instance")],
                "volumeMounts": [{"name": "controller", "mountPath": CONTROLLER_DIR}],
            }],
            "containers": [main],
            "volumes": [
                {"name": "pgdata", "persistentVolumeClaim": {"claimName": i.name}},
                {"name": "controller", "emptyDir": {}},
                {"name": "config", "configMap": {"name": self.c.config()}},
                {"name": "superuser", "secret": {"secretName": self.c.secret(SecretKind::Superuser)}},
                {"name": "replication", "secret": {"secretName": self.c.secret(SecretKind::Replication)}},
                {"name": "app", "secret": {"secretName": self.c.secret(SecretKind::App)}},
            ],
            "affinity": self.affinity(),
        });
        if self.has_wal()
            && let Some(volumes) = pod_spec["volumes"].as_array_mut()
        {
            let claim = self.c.wal_claim(i.n);
            volumes.insert(
                1,
                json!({"name": "pgwal", "persistentVolumeClaim": {"claimName": claim}}),
            );
        }
        if !spec.node_selector.is_empty() {
            pod_spec["nodeSelector"] = json!(spec.node_selector);
        }
        if !spec.tolerations.is_empty() {
            pod_spec["tolerations"] = json!(spec.tolerations);
        }
        // What the Pod was made from, compared later rather than the stored spec: the
        // apiserver rewrites quantities (`0.5` → `500m`) and admission webhooks may rewrite
        // images, neither of which is a change of ours to roll out.
        let annotations = meta
            .as_object_mut()
            .expect("an object")
            .entry("annotations")
            .or_insert_with(|| json!({}));
        annotations[names::POD_SPEC] = json!(spec_digest(&pod_spec));
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec})
    }

    /// The user's affinity plus the operator's: never two instances on one node.
    fn affinity(&self) -> Value {
        let mut a = self
            .cluster
            .spec
            .affinity
            .as_ref()
            .map(|a| json!(a))
            .unwrap_or_else(|| json!({}));
        let term = json!({
            "labelSelector": {"matchLabels": self.c.labels()},
            "topologyKey": "kubernetes.io/hostname",
        });
        let anti = &mut a["podAntiAffinity"];
        if anti.is_null() {
            *anti = json!({});
        }
        let req = &mut anti["requiredDuringSchedulingIgnoredDuringExecution"];
        match req.as_array_mut() {
            Some(list) => list.push(term),
            None => *req = json!([term]),
        }
        a
    }

    /// `C-rw` (the primary), `C-ro` (replicas), `C-r` (any instance).
    pub fn services(&self) -> Vec<Value> {
        let mut rw = self.c.labels();
        rw.insert(names::ROLE.into(), names::ROLE_PRIMARY.into());
        let mut ro = self.c.labels();
        ro.insert(names::ROLE.into(), names::ROLE_REPLICA.into());
        [
            (self.c.service_rw(), rw),
            (self.c.service_ro(), ro),
            (self.c.service_r(), self.c.labels()),
        ]
        .into_iter()
        .map(|(name, selector)| {
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": self.meta(&name, self.c.labels()),
                "spec": {
                    "type": "ClusterIP",
                    "selector": selector,
                    "ports": [{"name": "postgres", "port": PORT, "targetPort": PORT, "protocol": "TCP"}],
                },
            })
        })
        .collect()
    }

    /// `C-primary` and `C-replicas`: the primary is never evicted (a drain of its node
    /// waits until the operator switched over and its Pod is a replica's), and of the
    /// replicas at most one is evicted at a time. Only `minAvailable` counts work for Pods
    /// whose owner has no scale subresource. `enablePDB: false`: both allow every
    /// eviction (kept rather than deleted, so that turning them back on is one write).
    pub fn disruption_budgets(&self) -> Vec<Value> {
        let on = self.cluster.spec.enable_pdb;
        let replicas = self.cluster.spec.instances.max(1) - 1;
        let budget = |name: String, role: &str, min: i32| {
            let mut selector = self.c.labels();
            selector.insert(names::ROLE.into(), role.into());
            json!({
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": self.meta(&name, self.c.labels()),
                "spec": {
                    "minAvailable": if on { min } else { 0 },
                    "selector": {"matchLabels": selector},
                },
            })
        };
        vec![
            budget(self.c.pdb_primary(), names::ROLE_PRIMARY, 1),
            budget(
                self.c.pdb_replicas(),
                names::ROLE_REPLICA,
                (replicas - 1).max(0),
            ),
        ]
    }

    /// `C-postgres`, when asked for: PostgreSQL's port (the only one the instance Pods
    /// serve) reachable only from the cluster's own Pods (replication) and from Pods of
    /// its namespace labelled `pgml.io/client-C: "true"`; nothing else reaches them.
    pub fn network_policy(&self) -> Option<Value> {
        if !self.network_policy {
            return None;
        }
        let client = format!("pgml.io/client-{}", self.c.name);
        Some(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self.meta(&format!("{}-postgres", self.c.name), self.c.labels()),
            "spec": {
                "podSelector": {"matchLabels": self.c.labels()},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [
                        {"podSelector": {"matchLabels": self.c.labels()}},
                        {"podSelector": {"matchLabels": {client: "true"}}},
                    ],
                    "ports": [{"port": PORT, "protocol": "TCP"}],
                }],
            },
        }))
    }

    /// `C-config`: postgresql.conf, pg_hba.conf and pg_ident.conf, and with pgBackRest its
    /// `pgbackrest.conf` (the instance manager finds it there, see the design doc). An
    /// error when pgBackRest's part cannot be rendered: then none of it is.
    pub fn config_map(&self) -> Result<Value, RenderError> {
        let archiving = self.archiving.clone()?;
        let source = self.bootstrap_source.clone()?;
        let mut data = json!({
            "postgresql.conf": config::postgresql_conf(&self.cluster.spec, archiving.as_ref()),
            "pg_hba.conf": config::pg_hba(&self.cluster.spec),
            "pg_ident.conf": config::pg_ident(),
        });
        if let Some(a) = archiving {
            data[pgbackrest::CONFIG_KEY] = json!(a.file);
        }
        if let Some(file) = source {
            data[config::BOOTSTRAP_CONFIG_KEY] = json!(file);
        }
        Ok(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.meta(&self.c.config(), self.c.labels()),
            "data": data,
        }))
    }

    /// The ServiceAccount's annotations: with pgBackRest on IRSA, the role for EKS's
    /// webhook. Pod Identity is an EKS association (nothing here); the instance role is
    /// the node's.
    fn service_account_annotations(&self) -> Option<Value> {
        // The cluster's own repository's role, else (a restore into a cluster without
        // one) the source's: one role per ServiceAccount, which the CRD keeps unambiguous.
        let spec = &self.cluster.spec;
        let own = spec.backups.pgbackrest.as_ref().map(|p| &p.credentials);
        let source = spec.bootstrap_pgbackrest().map(|p| &p.credentials);
        own.into_iter()
            .chain(source)
            .filter(|c| c.mode == CredentialsMode::Irsa)
            .find_map(|c| c.service_account_role_arn.as_ref())
            .map(|arn| json!({IRSA_ROLE_ARN: arn}))
    }

    /// A credentials Secret, made once. `password` comes from [`super::secrets`].
    pub fn secret(&self, kind: SecretKind, password: &str) -> Value {
        let (database, owner) = self.cluster.spec.app();
        let user = match kind {
            SecretKind::App => owner.as_str(),
            _ => kind.username(),
        };
        let mut data = json!({"username": user, "password": password});
        if kind == SecretKind::App {
            data["dbname"] = json!(database);
            data["uri"] = json!(format!(
                "postgresql://{user}:{password}@{}.{}.svc:{PORT}/{database}",
                self.c.service_rw(),
                self.c.namespace
            ));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/basic-auth",
            "metadata": self.meta(&self.c.secret(kind), self.c.labels()),
            "stringData": data,
        })
    }

    /// The instance Pods' identity, as pgml-instance uses it: it gets and watches its
    /// PgmlCluster (one `resourceName`), lists and watches the Pods by the cluster's label
    /// (RBAC cannot narrow a list by label: every Pod of the namespace, read only), and
    /// patches its own Pod's status annotation. `pods` are the names it may patch: the
    /// cluster's instance Pods ([`super::plan::layout`] says which), never another's. With
    /// none, no patch rule at all: an empty `resourceNames` would allow every Pod.
    pub fn rbac(&self, pods: &[String]) -> Vec<Value> {
        let name = self.c.service_account();
        let mut sa_meta = self.meta(&name, self.c.labels());
        if let Some(a) = self.service_account_annotations() {
            sa_meta["annotations"] = a;
        }
        let mut rules = vec![
            json!({"apiGroups": ["pgml.io"], "resources": ["pgmlclusters"], "resourceNames": [self.c.name], "verbs": ["get", "list", "watch"]}),
            json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}),
        ];
        if !pods.is_empty() {
            rules.push(json!({"apiGroups": [""], "resources": ["pods"], "resourceNames": pods, "verbs": ["patch"]}));
        }
        vec![
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": sa_meta}),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": self.meta(&name, self.c.labels()),
                "rules": rules,
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": self.meta(&name, self.c.labels()),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.c.namespace}],
            }),
        ]
    }

    /// The EbsSnapshot a new instance is restored from, of `donor`.
    pub fn seed_snapshot(&self, n: u32, donor: &str) -> Value {
        json!({
            "apiVersion": "pgml.io/v1alpha1",
            "kind": "EbsSnapshot",
            "metadata": self.meta(&self.c.seed(n), self.c.instance_labels(n)),
            "spec": {"source": {"cluster": {"name": self.c.name, "instance": donor}}},
        })
    }
}

/// An HTTP probe of the instance manager's status port.
/// The digest of a Pod spec as the builder makes it (`names::POD_SPEC`): 16 hex digits of
/// its JSON's SHA-256.
pub fn spec_digest(spec: &Value) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(spec.to_string().as_bytes());
    hex::encode(h)[..16].to_string()
}

fn probe(path: &str, period: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": "metrics", "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(spec: &str) -> PgmlCluster {
        serde_yaml::from_str(&format!(
            "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {{name: main, namespace: db, uid: u-1}}\nspec:\n{spec}"
        ))
        .unwrap()
    }

    const ZFS: &str = "  instances: 3\n  storage: {zfs: {template: {volumes: {count: 3, sizeGiB: 10}, layout: raidz1, reclaimPolicy: Delete}}}\n";

    fn inst(n: u32, primary: bool) -> Instance {
        Instance {
            n,
            name: format!("main-{n}"),
            node: format!("node-{n}"),
            role: if primary {
                PodRole::Primary
            } else {
                PodRole::Replica
            },
            fenced: false,
            restore_from: None,
            protect: false,
        }
    }

    #[test]
    fn pool_is_the_template_on_the_node_named_per_namespace() {
        let c = cluster(ZFS);
        let b = Builder::new(&c, "op:1").unwrap();
        let mut i = inst(2, false);
        i.restore_from = Some("main-2-seed".into());
        let p = b.pool(&i).unwrap();
        assert_eq!(p["metadata"]["name"], "main-2");
        assert_eq!(p["metadata"]["labels"]["pgml.io/instance"], "main-2");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(p["spec"]["nodeName"], "node-2");
        assert_eq!(p["spec"]["poolName"], b.c.pool_name(2));
        assert_eq!(p["spec"]["layout"], "raidz1");
        assert_eq!(p["spec"]["reclaimPolicy"], "Delete");
        assert_eq!(p["spec"]["volumes"]["count"], 3);
        assert_eq!(p["spec"]["restoreFrom"]["ebsSnapshotName"], "main-2-seed");
        assert!(
            b.pool(&inst(1, true)).unwrap()["spec"]
                .get("restoreFrom")
                .is_none()
        );
    }

    #[test]
    fn pv_and_pvc_are_prebound_on_the_node() {
        let c = cluster(ZFS);
        let b = Builder::new(&c, "op:1").unwrap();
        let pv = b.pv(&inst(1, true), "/var/lib/pgml/main-1-abc/pgdata");
        assert_eq!(
            pv["spec"]["local"]["path"],
            "/var/lib/pgml/main-1-abc/pgdata"
        );
        assert_eq!(pv["spec"]["capacity"]["storage"], "20Gi");
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["claimRef"]["name"], "main-1");
        assert_eq!(pv["spec"]["claimRef"]["namespace"], "db");
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
                [0],
            "node-1"
        );
        assert!(pv["metadata"].get("ownerReferences").is_none());
        let pvc = b.pvc(&inst(1, true));
        assert_eq!(pvc["spec"]["volumeName"], b.c.pv_name(1));
        assert_eq!(pvc["spec"]["storageClassName"], "pgml-zfs");
        // The pgwal dataset's volume and claim, bound to each other the same way.
        assert!(b.has_wal());
        let pv = b.wal_pv(&inst(1, true), "/var/lib/pgml/main-1-abc/pgwal");
        assert_eq!(pv["metadata"]["name"], b.c.wal_pv_name(1));
        assert_eq!(
            pv["spec"]["local"]["path"],
            "/var/lib/pgml/main-1-abc/pgwal"
        );
        assert_eq!(pv["spec"]["claimRef"]["name"], "main-1-wal");
        assert_eq!(pv["metadata"]["labels"]["pgml.io/cluster"], "main");
        let pvc = b.wal_pvc(&inst(1, true));
        assert_eq!(pvc["metadata"]["name"], "main-1-wal");
        assert_eq!(pvc["spec"]["volumeName"], b.c.wal_pv_name(1));
        assert_eq!(pvc["spec"]["storageClassName"], "pgml-zfs");

        let ext4 =
            cluster("  storage: {persistentVolumeClaim: {storageClassName: gp3, size: 50Gi}}\n");
        let b = Builder::new(&ext4, "op:1").unwrap();
        let env = b.pod(&inst(1, false))["spec"]["containers"][0]["env"].clone();
        for name in [
            "PGML_EXPECT_DATASET",
            "PGML_WAL_DIR",
            "PGML_EXPECT_WAL_DATASET",
        ] {
            assert!(
                !env.as_array().unwrap().iter().any(|e| e["name"] == name),
                "ext4: no dataset to expect, WAL in PGDATA: {name}"
            );
        }
        assert!(!b.has_wal());
        assert!(b.pool(&inst(1, true)).is_none());
        let pvc = b.pvc(&inst(1, true));
        assert_eq!(pvc["spec"]["storageClassName"], "gp3");
        assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "50Gi");
        assert!(pvc["spec"].get("volumeName").is_none());
        assert_eq!(
            pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
            "node-1"
        );
    }

    #[test]
    fn pod_runs_the_instance_manager_on_its_node() {
        let c = cluster(&format!(
            "{ZFS}  image: pg:1\n  resources: {{limits: {{memory: 1Gi}}}}\n  nodeSelector: {{pool: db}}\n  tolerations: [{{key: dedicated, operator: Exists}}]\n  affinity: {{podAntiAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: [{{topologyKey: zone, labelSelector: {{matchLabels: {{app: x}}}}}}]}}}}\n"
        ));
        let b = Builder::new(&c, "ghcr.io/pgml/pgml-operator:9").unwrap();
        let mut i = inst(2, false);
        i.fenced = true;
        let pod = b.pod(&i);
        assert_eq!(pod["metadata"]["labels"]["pgml.io/role"], "replica");
        assert_eq!(pod["metadata"]["labels"]["pgml.io/cluster"], "main");
        assert_eq!(pod["metadata"]["annotations"]["pgml.io/fenced"], "true");
        let s = &pod["spec"];
        assert_eq!(s["nodeName"], "node-2");
        assert_eq!(
            s["shareProcessNamespace"], true,
            "zombies of PostgreSQL are reaped"
        );
        assert_eq!(
            s["initContainers"][0]["image"],
            "ghcr.io/pgml/pgml-operator:9"
        );
        assert_eq!(s["initContainers"][0]["command"][1], INSTANCE_BINARY);
        let main = &s["containers"][0];
        assert_eq!(main["image"], "pg:1");
        assert_eq!(main["command"], json!(["/controller/pgml-instance", "run"]));
        assert_eq!(main["resources"]["limits"]["memory"], "1Gi");
        let env = main["env"].as_array().unwrap();
        let get = |k: &str| env.iter().find(|e| e["name"] == k).cloned().unwrap();
        assert_eq!(
            get("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            get("PGML_ADVERTISE_HOST")["valueFrom"]["fieldRef"]["fieldPath"],
            "status.podIP"
        );
        assert_eq!(get("CLUSTER_NAME")["value"], "main");
        assert_eq!(get("PGDATA")["value"], PGDATA);
        assert_eq!(
            get("PGML_EXPECT_DATASET")["value"],
            format!("{}/pgdata", b.c.pool_name(2))
        );
        assert_eq!(get("PGPORT")["value"], "5432");
        assert_eq!(
            get("PGML_REPLICATION_SECRET_DIR")["value"],
            "/etc/pgml/secrets/replication"
        );
        assert_eq!(
            s["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "main-2"
        );
        // The template's pgwal dataset (a default one): WAL on its own claim, below its
        // mount as PGDATA is below its own, on the pgwal dataset.
        assert_eq!(
            s["volumes"][1],
            json!({"name": "pgwal", "persistentVolumeClaim": {"claimName": "main-2-wal"}})
        );
        assert_eq!(
            main["volumeMounts"][1],
            json!({"name": "pgwal", "mountPath": WAL_MOUNT})
        );
        assert_eq!(get("PGML_WAL_DIR")["value"], WAL_DIR);
        assert!(WAL_DIR.starts_with(&format!("{WAL_MOUNT}/")));
        assert_eq!(
            get("PGML_EXPECT_WAL_DATASET")["value"],
            format!("{}/pgwal", b.c.pool_name(2))
        );
        assert_eq!(s["nodeSelector"]["pool"], "db");
        assert_eq!(s["tolerations"][0]["key"], "dedicated");
        let anti =
            s["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .unwrap();
        assert_eq!(anti.len(), 2, "the user's term and the operator's");
        assert_eq!(
            anti[1]["labelSelector"]["matchLabels"]["pgml.io/cluster"],
            "main"
        );
        // Annotated with the digest of its spec only: the same spec, the same digest.
        let pod = b.pod(&inst(1, true));
        assert_eq!(
            pod["metadata"]["annotations"],
            json!({"pgml.io/pod-spec": spec_digest(&pod["spec"])})
        );
        assert_eq!(
            b.pod(&inst(1, false))["metadata"]["annotations"],
            pod["metadata"]["annotations"],
            "the role is no part of the spec"
        );
        assert_eq!(
            b.pod(&inst(1, true))["metadata"]["labels"]["pgml.io/role"],
            "primary"
        );
        let unrouted = Instance {
            role: PodRole::Unrouted,
            ..inst(1, true)
        };
        let labels = &b.pod(&unrouted)["metadata"]["labels"];
        assert!(labels.get("pgml.io/role").is_none(), "{labels}");
        assert_eq!(labels["pgml.io/cluster"], "main");
    }

    #[test]
    fn services_select_by_role_and_secrets_carry_credentials() {
        let c = cluster(ZFS);
        let b = Builder::new(&c, "op").unwrap();
        let s = b.services();
        assert_eq!(s[0]["metadata"]["name"], "main-rw");
        assert_eq!(s[0]["spec"]["selector"]["pgml.io/role"], "primary");
        assert_eq!(s[1]["metadata"]["name"], "main-ro");
        assert_eq!(s[1]["spec"]["selector"]["pgml.io/role"], "replica");
        assert_eq!(s[2]["metadata"]["name"], "main-r");
        assert!(s[2]["spec"]["selector"].get("pgml.io/role").is_none());
        let app = b.secret(SecretKind::App, "pw");
        assert_eq!(
            app["stringData"]["uri"],
            "postgresql://app:pw@main-rw.db.svc:5432/app"
        );
        assert_eq!(
            b.secret(SecretKind::Replication, "x")["stringData"]["username"],
            "streaming_replica"
        );
        let cm = b.config_map().unwrap();
        assert!(cm["data"].get("pgbackrest.conf").is_none());
        assert!(
            !cm["data"]["postgresql.conf"]
                .as_str()
                .unwrap()
                .contains("archive_command")
        );
        assert!(
            cm["data"]["postgresql.conf"]
                .as_str()
                .unwrap()
                .contains("full_page_writes = 'off'")
        );
        let seed = b.seed_snapshot(3, "main-2");
        assert_eq!(seed["metadata"]["name"], "main-3-seed");
        assert_eq!(seed["spec"]["source"]["cluster"]["instance"], "main-2");
    }

    fn with_pgbackrest(credentials: &str) -> PgmlCluster {
        cluster(&format!(
            "{ZFS}  backups: {{pgbackrest: {{s3: {{bucket: pgml-backups, region: eu-west-1}}, credentials: {credentials}}}}}\n"
        ))
    }

    /// `bootstrap.pgbackrest`: the source repository's own file beside the cluster's, its
    /// stanza and default path the source's; the IRSA role of a source on IRSA goes on the
    /// ServiceAccount when the cluster has no repository of its own.
    #[test]
    fn the_source_repository_of_a_restore_is_in_the_config_map() {
        let c = cluster(&format!(
            "{ZFS}  bootstrap: {{pgbackrest: {{stanza: prod, s3: {{bucket: old-backups, region: eu-west-1}}, credentials: {{mode: IRSA, serviceAccountRoleArn: 'arn:aws:iam::123456789012:role/reader'}}}}, recoveryTarget: {{name: before}}}}\n"
        ));
        let b = Builder::new(&c, "op").unwrap();
        let cm = b.config_map().unwrap();
        let file = cm["data"][config::BOOTSTRAP_CONFIG_KEY].as_str().unwrap();
        assert!(file.contains("repo1-s3-bucket=old-backups\n"), "{file}");
        assert!(file.contains("repo1-path=/pgbackrest/db/prod\n"), "{file}");
        assert!(file.contains("repo1-s3-key-type=web-id\n"), "{file}");
        assert!(file.contains("\n[prod]\npg1-path="), "{file}");
        assert!(cm["data"].get("pgbackrest.conf").is_none());
        assert_eq!(
            b.service_account_annotations(),
            Some(json!({IRSA_ROLE_ARN: "arn:aws:iam::123456789012:role/reader"}))
        );
        // Without it, no such file.
        let plain = with_pgbackrest("{}");
        let cm = Builder::new(&plain, "op").unwrap().config_map().unwrap();
        assert!(cm["data"].get(config::BOOTSTRAP_CONFIG_KEY).is_none());
    }

    #[test]
    fn pgbackrest_is_in_the_config_map() {
        let c = with_pgbackrest("{}");
        let b = Builder::new(&c, "op").unwrap();
        let cm = b.config_map().unwrap();
        let file = cm["data"]["pgbackrest.conf"].as_str().unwrap();
        assert!(file.contains("repo1-s3-key-type=auto\n"), "{file}");
        assert!(
            file.contains("[main]\npg1-path=/var/lib/postgresql/data/pgdata\n"),
            "{file}"
        );
        let conf = cm["data"]["postgresql.conf"].as_str().unwrap();
        assert!(conf.contains("archive_mode = 'on'\n"), "{conf}");
        assert!(conf.contains(
            "archive_command = 'pgbackrest --config=/etc/pgml/config/pgbackrest.conf --stanza=main archive-push %p'\n"
        ), "{conf}");
        // Mounted where the commands read it.
        let pod = b.pod(&inst(1, true));
        let mounts = pod["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m["mountPath"] == CONFIG_DIR && m["name"] == "config")
        );
    }

    #[test]
    fn the_service_account_carries_the_irsa_role_only() {
        let sa = |c: &PgmlCluster| Builder::new(c, "op").unwrap().rbac(&[])[0].clone();
        let irsa = with_pgbackrest(
            "{mode: IRSA, serviceAccountRoleArn: 'arn:aws:iam::123456789012:role/pgbackrest'}",
        );
        assert_eq!(
            sa(&irsa)["metadata"]["annotations"][IRSA_ROLE_ARN],
            "arn:aws:iam::123456789012:role/pgbackrest"
        );
        for c in [
            with_pgbackrest("{mode: PodIdentity}"),
            with_pgbackrest("{mode: InstanceRole}"),
            cluster(ZFS),
        ] {
            assert!(
                sa(&c)["metadata"].get("annotations").is_none(),
                "{:?}",
                c.spec.backups
            );
        }
        // No credential of any kind reaches the Pod's own environment.
        let b = Builder::new(&irsa, "op").unwrap();
        let pod = b.pod(&inst(1, true));
        let env = pod["spec"]["containers"][0]["env"].to_string();
        assert!(!env.contains("AWS_") && !env.contains("arn:aws"), "{env}");
    }

    #[test]
    fn the_instance_role_patches_the_named_pods_only_and_reads_pods_as_a_list() {
        let c = cluster(ZFS);
        let b = Builder::new(&c, "op").unwrap();
        let names: Vec<String> = (1..=3).map(|n| b.c.instance(n)).collect();
        let rbac = b.rbac(&names);
        let role = &rbac[1];
        assert_eq!(role["kind"], "Role");
        assert_eq!(
            role["rules"],
            json!([
                {"apiGroups": ["pgml.io"], "resources": ["pgmlclusters"], "resourceNames": ["main"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["pods"], "resourceNames": ["main-1", "main-2", "main-3"], "verbs": ["patch"]},
            ])
        );
        // No Pod to name: no patch rule (an empty resourceNames would allow every Pod).
        let none = b.rbac(&[]);
        let rules = none[1]["rules"].as_array().unwrap();
        assert!(
            rules
                .iter()
                .all(|r| !r["verbs"].to_string().contains("patch")),
            "{rules:?}"
        );
        assert_eq!(rbac[2]["subjects"][0]["name"], "main-instance");
    }

    #[test]
    fn an_unrenderable_pgbackrest_gives_no_config_map() {
        let c = cluster(&format!(
            "{ZFS}  backups: {{pgbackrest: {{s3: {{bucket: b-1, region: eu-west-1, endpoint: 'http://minio:9000'}}}}}}\n"
        ));
        let b = Builder::new(&c, "op").unwrap();
        assert!(
            b.config_map()
                .unwrap_err()
                .to_string()
                .contains("HTTPS only")
        );
    }

    #[test]
    fn an_irsa_annotation_of_ours_is_stale_once_the_mode_changes() {
        let irsa = with_pgbackrest(
            "{mode: IRSA, serviceAccountRoleArn: 'arn:aws:iam::123456789012:role/pgbackrest'}",
        );
        let role = Builder::new(&irsa, "op").unwrap().rbac(&[])[0].clone();
        let stored = |manager: &str| {
            let mut sa = role.clone();
            sa["metadata"]["managedFields"] = json!([{
                "manager": manager, "operation": "Apply", "apiVersion": "v1",
                "fieldsV1": {"f:metadata": {"f:annotations": {"f:eks.amazonaws.com/role-arn": {}}}},
            }]);
            sa
        };
        let plain = Builder::new(&cluster(ZFS), "op").unwrap().rbac(&[])[0].clone();
        assert!(stale_irsa_annotation(
            &stored("pgml-operator"),
            &plain,
            "pgml-operator"
        ));
        // Still IRSA: nothing stale. Set by someone else: theirs.
        assert!(!stale_irsa_annotation(
            &stored("pgml-operator"),
            &role,
            "pgml-operator"
        ));
        assert!(!stale_irsa_annotation(
            &stored("kubectl"),
            &plain,
            "pgml-operator"
        ));
        assert!(!stale_irsa_annotation(&plain, &plain, "pgml-operator"));
    }

    #[test]
    fn the_network_policy_admits_the_clusters_pods_and_its_labelled_clients_only() {
        let c: PgmlCluster = serde_yaml::from_str(
            "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {name: main, namespace: db, uid: u-1}\nspec:\n  storage: {persistentVolumeClaim: {size: 10Gi}}\n",
        )
        .unwrap();
        assert!(
            Builder::new(&c, "op").unwrap().network_policy().is_none(),
            "off unless asked"
        );
        let b = Builder::new(&c, "op").unwrap().with_network_policy(true);
        let np = b.network_policy().unwrap();
        assert_eq!(np["metadata"]["name"], "main-postgres");
        assert_eq!(np["metadata"]["ownerReferences"][0]["kind"], "PgmlCluster");
        assert_eq!(
            np["spec"]["podSelector"]["matchLabels"],
            json!({"pgml.io/cluster": "main"})
        );
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
        let rules = np["spec"]["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 1, "one rule: nothing but PostgreSQL's port");
        assert_eq!(
            rules[0]["ports"],
            json!([{"port": 5432, "protocol": "TCP"}])
        );
        assert_eq!(
            rules[0]["from"],
            json!([
                {"podSelector": {"matchLabels": {"pgml.io/cluster": "main"}}},
                {"podSelector": {"matchLabels": {"pgml.io/client-main": "true"}}},
            ]),
            "same-namespace Pods only (no namespaceSelector)"
        );
        // The instance Pods are what it selects.
        let pod = b.pod(&Instance {
            n: 1,
            name: "main-1".into(),
            node: "n".into(),
            role: PodRole::Primary,
            fenced: false,
            restore_from: None,
            protect: false,
        });
        assert_eq!(pod["metadata"]["labels"]["pgml.io/cluster"], "main");
    }
}
