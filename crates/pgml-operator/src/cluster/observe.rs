//! Observe: the objects a cluster owns, the nodes it may use and the status it has, read
//! once per reconcile, before anything is decided.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::ListParams;
use pgml_api::cluster::PgmlClusterStatus;
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};

use super::names::ClusterRef;
use super::placement::NodeFacts;
use crate::runtime::{Context, Error};

/// What exists now, by name.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The cluster's status as the reconcile read it (what the apiserver had).
    pub status: PgmlClusterStatus,
    pub pods: BTreeMap<String, Pod>,
    pub pools: BTreeMap<String, ZfsPool>,
    pub pvcs: BTreeMap<String, PersistentVolumeClaim>,
    /// The cluster's own EbsSnapshots (replica seeds, labelled with the cluster).
    pub snapshots: BTreeMap<String, EbsSnapshot>,
    /// The other EbsSnapshots whose source is the cluster (scheduled ones, a user's).
    pub backups: Vec<EbsSnapshot>,
    pub nodes: Vec<NodeFacts>,
}

/// Being deleted.
pub fn deleting<K: kube::Resource>(o: &K) -> bool {
    o.meta().deletion_timestamp.is_some()
}

fn by_name<K: kube::Resource>(items: Vec<K>) -> BTreeMap<String, K> {
    items
        .into_iter()
        .filter_map(|o| Some((o.meta().name.clone()?, o)))
        .collect()
}

/// Labelled `pgml.io/cluster: <cluster>` (the cluster's own objects).
fn labelled(s: &EbsSnapshot, cluster: &str) -> bool {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(pgml_api::common::keys::CLUSTER))
        .is_some_and(|v| v == cluster)
}

impl Observed {
    pub async fn load(
        ctx: &Context,
        cluster: &PgmlCluster,
        c: &ClusterRef,
    ) -> Result<Observed, Error> {
        let lp = ListParams::default().labels(&c.selector());
        let client = &ctx.client;
        let ns = c.namespace.as_str();
        let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&lp).await?;
        let pools = Api::<ZfsPool>::namespaced(client.clone(), ns)
            .list(&lp)
            .await?;
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .list(&lp)
            .await?;
        // One list for all: the seeds (labelled) with `bootstrap.snapshot` (read by name,
        // whatever it is of), and every snapshot of the cluster.
        let all_snapshots = Api::<EbsSnapshot>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?;
        let bootstrap = cluster.spec.bootstrap_snapshot();
        let (seeds, others): (Vec<EbsSnapshot>, Vec<EbsSnapshot>) =
            all_snapshots.items.into_iter().partition(|s| {
                labelled(s, &c.name)
                    || bootstrap.is_some_and(|b| s.metadata.name.as_deref() == Some(b))
            });
        let of_cluster = |s: &EbsSnapshot| {
            let src = s.spec.source.cluster.as_ref();
            src.is_some_and(|src| src.name == c.name)
        };
        let backups = others.into_iter().filter(of_cluster).collect();
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await?;
        Ok(Observed {
            status: cluster.status.clone().unwrap_or_default(),
            pods: by_name(pods.items),
            pools: by_name(pools.items),
            pvcs: by_name(pvcs.items),
            snapshots: by_name(seeds),
            backups,
            nodes: nodes.items.iter().map(NodeFacts::of).collect(),
        })
    }

    pub fn node(&self, name: &str) -> Option<&NodeFacts> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
