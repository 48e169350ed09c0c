//! Names and labels of everything a cluster owns (docs/design/pgmlcluster.md, "Names").

use std::collections::BTreeMap;

use pgml_api::common::keys;
use sha2::{Digest, Sha256};

/// Label on instance Pods: `primary` or `replica`, set from `status.currentPrimary`.
pub const ROLE: &str = "pgml.io/role";
pub const ROLE_PRIMARY: &str = "primary";
pub const ROLE_REPLICA: &str = "replica";
/// Annotation on a Pod: its instance manager must stop PostgreSQL and never start it.
pub const FENCED: &str = pgml_api::instance::FENCED_ANNOTATION;
/// Annotation on a Pod: the digest of the spec the operator made it with.
pub const POD_SPEC: &str = "pgml.io/pod-spec";
/// Annotation on a Pod: Karpenter does not consolidate or drift its node voluntarily.
pub const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";
/// Annotation on a Pod, written by its instance manager (JSON, `pgml_api::instance`).
pub const INSTANCE_STATUS: &str = pgml_api::instance::STATUS_ANNOTATION;
/// StorageClass name of the local PersistentVolumes over ZFS datasets.
pub const STORAGE_CLASS: &str = "pgml-zfs";
/// What `seededFrom` says of an instance that copies its data with pg_basebackup.
pub const PG_BASEBACKUP: &str = "pg_basebackup";
/// The instance Pod's main container, which runs the instance manager (`Builder::pod`).
pub const CONTAINER: &str = "postgres";
/// Field manager of the marks the controller changes on live Pods (role label, fence):
/// a Pod's spec is immutable, so these are applied apart from the Pod that created it.
pub const MARKS_MANAGER: &str = "pgml-operator-marks";
/// Field manager of the seed EbsSnapshots: the EbsSnapshot controller applies their
/// labels as `pgml-operator`, an apply that would drop a spec made by the same manager.
pub const SEED_MANAGER: &str = "pgml-operator-cluster";
/// The dataset that holds PostgreSQL's data directory.
pub const PGDATA_DATASET: &str = "pgdata";
/// The dataset that holds PostgreSQL's WAL, when the pool's template has it.
pub const WAL_DATASET: &str = "pgwal";

/// The cluster and its namespace: everything is named from these two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRef {
    pub namespace: String,
    pub name: String,
}

impl ClusterRef {
    /// `C-n`: the instance, its Pod, ZfsPool and PVC.
    pub fn instance(&self, n: u32) -> String {
        format!("{}-{n}", self.name)
    }

    /// The number of instance `C-n`, if the name is one of this cluster's.
    pub fn index_of(&self, instance: &str) -> Option<u32> {
        let n = instance.strip_prefix(&self.name)?.strip_prefix('-')?;
        if n.starts_with('0') {
            return None;
        }
        n.parse().ok().filter(|n| *n > 0)
    }

    fn digest(&self) -> String {
        let h = Sha256::digest(format!("{}/{}", self.namespace, self.name).as_bytes());
        hex::encode(h)
    }

    /// The pool's name on the node: `C-n-<6 hex of sha256(N/C)>`, at most 48 characters
    /// (ZFS names are per node, not per namespace: two namespaces' `main-1` differ).
    pub fn pool_name(&self, n: u32) -> String {
        let suffix = format!("-{}", &self.digest()[..6]);
        let mut base = self.instance(n);
        base.truncate(48 - suffix.len());
        format!("{}{suffix}", base.trim_end_matches('-'))
    }

    /// The PersistentVolume of an instance: `pgml-<8 hex of sha256(N/C)>-C-n`.
    pub fn pv_name(&self, n: u32) -> String {
        format!("pgml-{}-{}", &self.digest()[..8], self.instance(n))
    }

    /// The PersistentVolume over an instance's `pgwal` dataset: [`Self::pv_name`] and
    /// `-wal`.
    pub fn wal_pv_name(&self, n: u32) -> String {
        format!("{}-wal", self.pv_name(n))
    }

    /// The claim of an instance's `pgwal` volume: `C-n-wal` (never an instance's name:
    /// those end with their number).
    pub fn wal_claim(&self, n: u32) -> String {
        format!("{}-wal", self.instance(n))
    }

    /// The EbsSnapshot a new instance is seeded from.
    pub fn seed(&self, n: u32) -> String {
        format!("{}-seed", self.instance(n))
    }

    pub fn service_rw(&self) -> String {
        format!("{}-rw", self.name)
    }
    pub fn service_ro(&self) -> String {
        format!("{}-ro", self.name)
    }
    pub fn service_r(&self) -> String {
        format!("{}-r", self.name)
    }
    /// The PodDisruptionBudget of the primary's Pod.
    pub fn pdb_primary(&self) -> String {
        format!("{}-primary", self.name)
    }
    /// The PodDisruptionBudget of the replicas' Pods.
    pub fn pdb_replicas(&self) -> String {
        format!("{}-replicas", self.name)
    }
    pub fn config(&self) -> String {
        format!("{}-config", self.name)
    }
    pub fn secret(&self, which: SecretKind) -> String {
        format!("{}-{}", self.name, which.suffix())
    }
    /// The instance Pods' ServiceAccount, Role and RoleBinding.
    pub fn service_account(&self) -> String {
        format!("{}-instance", self.name)
    }

    /// `pgml.io/cluster: C`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(keys::CLUSTER.to_string(), self.name.clone())])
    }

    /// The cluster's label plus `pgml.io/instance: C-n`.
    pub fn instance_labels(&self, n: u32) -> BTreeMap<String, String> {
        let mut l = self.labels();
        l.insert(keys::INSTANCE.to_string(), self.instance(n));
        l
    }

    /// Label selector of every object of the cluster.
    pub fn selector(&self) -> String {
        format!("{}={}", keys::CLUSTER, self.name)
    }
}

/// The three Secrets of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    Superuser,
    App,
    Replication,
}

impl SecretKind {
    pub const ALL: [SecretKind; 3] = [
        SecretKind::Superuser,
        SecretKind::App,
        SecretKind::Replication,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            SecretKind::Superuser => "superuser",
            SecretKind::App => "app",
            SecretKind::Replication => "replication",
        }
    }

    /// The PostgreSQL role the Secret is for.
    pub fn username(self) -> &'static str {
        match self {
            SecretKind::Superuser => "postgres",
            SecretKind::App => "app",
            SecretKind::Replication => "streaming_replica",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ns: &str, name: &str) -> ClusterRef {
        ClusterRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn instance_names_round_trip() {
        let m = c("db", "main");
        assert_eq!(m.instance(3), "main-3");
        assert_eq!(m.index_of("main-3"), Some(3));
        assert_eq!(m.index_of("main-12"), Some(12));
        assert_eq!(m.index_of("main-0"), None);
        assert_eq!(m.index_of("main-03"), None);
        assert_eq!(m.index_of("main-x"), None);
        assert_eq!(m.index_of("mainx-1"), None);
        assert_eq!(m.index_of("main-1-seed"), None);
        assert_eq!(c("db", "main-1").index_of("main-1-2"), Some(2));
    }

    #[test]
    fn pool_and_volume_names_differ_per_namespace_and_fit() {
        let a = c("a", "main");
        let b = c("b", "main");
        assert_ne!(a.pool_name(1), b.pool_name(1));
        assert!(a.pool_name(1).starts_with("main-1-"));
        assert_eq!(a.pool_name(1).len(), "main-1-".len() + 6);
        assert!(a.pv_name(2).starts_with("pgml-"));
        assert!(a.pv_name(2).ends_with("-main-2"));
        assert_ne!(a.pv_name(2), b.pv_name(2));
        let long = c("ns", &"a".repeat(45));
        let p = long.pool_name(16);
        assert!(p.len() <= 48, "{p}");
        assert!(p.starts_with(&"a".repeat(40)));
        assert_eq!(a.seed(4), "main-4-seed");
        assert_eq!(a.secret(SecretKind::Replication), "main-replication");
    }
}
