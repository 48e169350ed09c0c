//! Where a new instance goes: a Ready node that matches the node selector, whose taints
//! the instance tolerates and that holds no other instance of the cluster; the zone with
//! the fewest instances first; ties by node name. Chosen once, recorded in status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use pgml_api::common::condition;

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What placement needs of a Node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    pub zone: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// The Ready condition: `Some(true)` Ready, `Some(false)` NotReady or Unknown, `None`
    /// never reported.
    pub ready: Option<bool>,
    pub unschedulable: bool,
}

impl NodeFacts {
    pub fn of(node: &Node) -> NodeFacts {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.clone().unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == condition::READY))
            .map(|c| c.status == condition::TRUE);
        NodeFacts {
            name: node.metadata.name.clone().unwrap_or_default(),
            zone: labels.get(ZONE_LABEL).cloned(),
            labels,
            taints: spec.taints.unwrap_or_default(),
            ready,
            unschedulable: spec.unschedulable.unwrap_or(false),
        }
    }

    /// A node that reports NotReady (or Unknown) is not used. One that never reported a
    /// condition (a node object registered before its kubelet) is given the benefit of the
    /// doubt: the Pod waits for it like any Pod bound to a starting node.
    pub fn usable(&self) -> bool {
        self.ready != Some(false) && !self.unschedulable
    }
}

/// Taints that say a node is going away, by who puts them there: Karpenter v1
/// (`disrupted`) and before (`disruption=disrupting`), the cluster autoscaler, the AWS Node
/// Termination Handler (spot interruption, scheduled maintenance, an Auto Scaling group's
/// scale-in, a rebalance recommendation when it drains on one), and Kubernetes' own
/// out-of-service taint (a node shut down).
pub const LEAVING_TAINTS: [&str; 8] = [
    "karpenter.sh/disrupted",
    "karpenter.sh/disruption",
    "ToBeDeletedByClusterAutoscaler",
    "aws-node-termination-handler/spot-itn",
    "aws-node-termination-handler/scheduled-maintenance",
    "aws-node-termination-handler/asg-lifecycle-termination",
    "aws-node-termination-handler/rebalance-recommendation",
    "node.kubernetes.io/out-of-service",
];

impl NodeFacts {
    /// Why the node is going away, if it is: one of [`LEAVING_TAINTS`] with an effect
    /// that keeps Pods off (a `PreferNoSchedule` one is only a hint: the Node Termination
    /// Handler's rebalance recommendation when it does not drain), or cordoned (a drain,
    /// a managed node group's update). The instance there is a primary to switch away
    /// from before its Pod is evicted, and a Pod not to make again there.
    pub fn leaving(&self) -> Option<String> {
        let taint = self
            .taints
            .iter()
            .find(|t| t.effect != "PreferNoSchedule" && LEAVING_TAINTS.contains(&t.key.as_str()));
        if let Some(t) = taint {
            return Some(format!(
                "node {} is tainted {}:{}",
                self.name, t.key, t.effect
            ));
        }
        self.unschedulable
            .then(|| format!("node {} is cordoned", self.name))
    }
}

/// Whether `tolerations` tolerate `taint` (Kubernetes' matching rules).
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key = t.key.as_deref().unwrap_or_default();
        let exists = t.operator.as_deref() == Some("Exists");
        let key_ok = (key.is_empty() && exists) || key == taint.key;
        let value_ok = exists
            || t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
        effect_ok && key_ok && value_ok
    })
}

/// Whether an instance with this selector and these tolerations may run on `node`.
pub fn fits(
    node: &NodeFacts,
    selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
) -> bool {
    node.usable()
        && node.leaving().is_none()
        && selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
        && node
            .taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .all(|t| tolerates(tolerations, t))
}

/// The node for a new instance, given the nodes and zones the cluster's instances already
/// use; `None` when no node fits.
pub fn choose(
    nodes: &[NodeFacts],
    used: &[(String, Option<String>)],
    selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
) -> Option<NodeFacts> {
    let in_zone = |z: &Option<String>| used.iter().filter(|(_, uz)| uz == z).count();
    nodes
        .iter()
        .filter(|n| !used.iter().any(|(u, _)| *u == n.name))
        .filter(|n| fits(n, selector, tolerations))
        .min_by(|a, b| {
            in_zone(&a.zone)
                .cmp(&in_zone(&b.zone))
                .then_with(|| a.name.cmp(&b.name))
        })
        .cloned()
}

/// A Ready, schedulable node in `zone`, untainted (tests).
#[cfg(test)]
pub fn ready_node(name: &str, zone: &str) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        zone: Some(zone.into()),
        labels: BTreeMap::from([(ZONE_LABEL.into(), zone.into())]),
        taints: vec![],
        ready: Some(true),
        unschedulable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: &str) -> NodeFacts {
        ready_node(name, zone)
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn place_all(nodes: &[NodeFacts], n: usize) -> Vec<String> {
        let mut used: Vec<(String, Option<String>)> = vec![];
        for _ in 0..n {
            let Some(c) = choose(nodes, &used, &BTreeMap::new(), &[]) else {
                break;
            };
            used.push((c.name.clone(), c.zone.clone()));
        }
        used.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn spreads_across_zones_then_fills_by_name() {
        let nodes = vec![
            node("a-2", "1a"),
            node("a-1", "1a"),
            node("b-1", "1b"),
            node("c-1", "1c"),
        ];
        assert_eq!(place_all(&nodes, 3), ["a-1", "b-1", "c-1"]);
        assert_eq!(place_all(&nodes, 5), ["a-1", "b-1", "c-1", "a-2"]);
    }

    #[test]
    fn a_node_leaves_when_cordoned_or_tainted_for_disruption() {
        let mut n = node("a-1", "1a");
        assert_eq!(n.leaving(), None);
        n.taints = vec![taint("dedicated", Some("db"), "NoSchedule")];
        assert_eq!(n.leaving(), None, "an ordinary taint");
        n.taints
            .push(taint("karpenter.sh/disrupted", None, "NoSchedule"));
        assert_eq!(
            n.leaving().as_deref(),
            Some("node a-1 is tainted karpenter.sh/disrupted:NoSchedule")
        );
        for key in LEAVING_TAINTS {
            n.taints = vec![taint(key, Some("x"), "NoExecute")];
            assert!(n.leaving().is_some(), "{key}");
            n.taints = vec![taint(key, Some("x"), "PreferNoSchedule")];
            assert_eq!(n.leaving(), None, "{key} as a hint only");
        }
        n.taints = vec![];
        n.unschedulable = true;
        assert_eq!(n.leaving().as_deref(), Some("node a-1 is cordoned"));
    }

    #[test]
    fn honours_selector_taints_and_readiness() {
        let mut tainted = node("b-1", "1b");
        tainted.taints = vec![taint("dedicated", Some("db"), "NoSchedule")];
        let mut down = node("c-1", "1c");
        down.ready = Some(false);
        let mut fresh = node("c-2", "1c");
        fresh.ready = None;
        let mut other = node("a-1", "1a");
        other.labels.insert("pool".into(), "web".into());
        let nodes = vec![other, tainted.clone(), down, fresh];
        assert_eq!(place_all(&nodes, 3), ["a-1", "c-2"]);

        let tol = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("db".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        assert!(fits(&tainted, &BTreeMap::new(), std::slice::from_ref(&tol)));
        let wrong = Toleration {
            value: Some("web".into()),
            ..tol.clone()
        };
        assert!(!fits(&tainted, &BTreeMap::new(), &[wrong]));
        let all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(fits(&tainted, &BTreeMap::new(), &[all]));
        let soft = NodeFacts {
            taints: vec![taint("x", None, "PreferNoSchedule")],
            ..node("d", "1d")
        };
        assert!(fits(&soft, &BTreeMap::new(), &[]));

        let sel = BTreeMap::from([("pool".to_string(), "web".to_string())]);
        let chosen = choose(&nodes, &[], &sel, &[]).unwrap();
        assert_eq!(chosen.name, "a-1");
        assert!(choose(&nodes, &[("a-1".into(), Some("1a".into()))], &sel, &[]).is_none());
    }
}
