//! Dereference: the objects a cluster owns and the nodes it may use, read once per
//! reconcile.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::ListParams;
use pgml_api::{EbsSnapshot, ZfsPool};

use super::names::ClusterRef;
use super::placement::NodeFacts;
use crate::zfspool::{Context, Error};

/// What exists now, by name.
pub struct World {
    pub pods: BTreeMap<String, Pod>,
    pub pools: BTreeMap<String, ZfsPool>,
    pub pvcs: BTreeMap<String, PersistentVolumeClaim>,
    pub snapshots: BTreeMap<String, EbsSnapshot>,
    pub nodes: Vec<NodeFacts>,
}

fn by_name<K: kube::Resource>(items: Vec<K>) -> BTreeMap<String, K> {
    items
        .into_iter()
        .filter_map(|o| Some((o.meta().name.clone()?, o)))
        .collect()
}

impl World {
    pub async fn load(ctx: &Context, c: &ClusterRef) -> Result<World, Error> {
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
        let snapshots = Api::<EbsSnapshot>::namespaced(client.clone(), ns)
            .list(&lp)
            .await?;
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await?;
        Ok(World {
            pods: by_name(pods.items),
            pools: by_name(pools.items),
            pvcs: by_name(pvcs.items),
            snapshots: by_name(snapshots.items),
            nodes: nodes.items.iter().map(NodeFacts::of).collect(),
        })
    }

    pub fn node(&self, name: &str) -> Option<&NodeFacts> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
