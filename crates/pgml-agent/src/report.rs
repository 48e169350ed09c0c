//! The agent's part of `ZfsPool.status`, and nothing else: what it applies with server-side
//! apply (field manager `pgml-agent`), and how it tells that nothing changed.

use k8s_openapi::jiff::Timestamp;
use pgml_api::common::{Condition, Time};
use pgml_api::zfspool::{DatasetStatus, ResilverStatus, ZfsPool, ZfsPoolStatus};
use serde::Serialize;
use serde_json::{Value, json};

/// The field manager of every agent write.
pub const FIELD_MANAGER: &str = "pgml-agent";

/// The condition types the agent owns (design: docs/design/zfspool.md).
pub mod cond {
    pub use pgml_api::common::condition::{
        DEVICES_FOUND, POOL_HEALTHY, POOL_IMPORTED, POOL_RELEASED,
    };
    pub const ALL: &[&str] = &[DEVICES_FOUND, POOL_IMPORTED, POOL_HEALTHY, POOL_RELEASED];
}

/// `volumes[i]` fields the agent owns.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentVolume {
    pub index: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_state: Option<String>,
    /// The volume `member_state` is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_volume_id: Option<String>,
}

impl AgentVolume {
    /// Carries any agent field (an entry with only its index is not written).
    fn has_fields(&self) -> bool {
        self.device.is_some() || self.member_state.is_some() || self.member_volume_id.is_some()
    }
}

/// Every status field the agent owns; serialized, it is the whole apply body's `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_guid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zfs_dialect: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<AgentVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resilver: Option<ResilverStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<DatasetStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl AgentStatus {
    /// The agent-owned part of a status as stored (to compare with what it would apply).
    pub fn extract(s: &ZfsPoolStatus) -> AgentStatus {
        let mut conditions: Vec<Condition> = s
            .conditions
            .iter()
            .filter(|c| cond::ALL.contains(&c.type_.as_str()))
            .cloned()
            .collect();
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        AgentStatus {
            pool_guid: s.pool_guid.clone(),
            zfs_dialect: s.zfs_dialect.clone(),
            health: s.health.clone(),
            size: s.size.clone(),
            size_bytes: s.size_bytes,
            allocated_bytes: s.allocated_bytes,
            free_bytes: s.free_bytes,
            volumes: s
                .volumes
                .iter()
                .map(|v| AgentVolume {
                    index: v.index,
                    device: v.device.clone(),
                    member_state: v.member_state.clone(),
                    member_volume_id: v.member_volume_id.clone(),
                })
                .filter(AgentVolume::has_fields)
                .collect(),
            resilver: s.resilver.clone(),
            datasets: s.datasets.clone(),
            conditions,
        }
    }

    /// Canonical order, empty volume entries dropped: what [`Self::extract`] would read back.
    pub fn normalized(mut self) -> AgentStatus {
        self.volumes.retain(AgentVolume::has_fields);
        self.volumes.sort_by_key(|v| v.index);
        self.datasets.sort_by(|a, b| a.name.cmp(&b.name));
        self.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        self
    }

    /// The server-side apply body for the status subresource: only agent fields.
    pub fn apply_body(&self) -> Value {
        json!({
            "apiVersion": "pgml.io/v1alpha1",
            "kind": "ZfsPool",
            "status": self,
        })
    }
}

/// What the agent concluded for one condition type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: String,
    pub message: String,
}

impl Verdict {
    pub fn new(
        type_: &'static str,
        status: &'static str,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Verdict {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Conditions from verdicts: `observedGeneration` of the judged spec; `lastTransitionTime`
/// kept from the existing condition when its status did not change.
pub fn conditions(verdicts: &[Verdict], pool: &ZfsPool, now: Timestamp) -> Vec<Condition> {
    let existing = pool
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut out: Vec<Condition> = verdicts
        .iter()
        .map(|v| {
            let prev = existing.iter().find(|c| c.type_ == v.type_);
            let since = match prev {
                Some(p) if p.status == v.status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: v.type_.to_string(),
                status: v.status.to_string(),
                reason: v.reason.clone(),
                message: v.message.clone(),
                observed_generation: pool.metadata.generation,
                last_transition_time: since,
            }
        })
        .collect();
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Sizes as `zpool list` prints them (1024-based, three significant digits): `4.97G`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "K", "M", "G", "T", "P", "E"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        return format!("{bytes}B");
    }
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    format!("{s}{}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(status: serde_json::Value) -> ZfsPool {
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "tank", "namespace": "db", "generation": 3},
            "spec": {"nodeName": "n1", "volumes": {"count": 3, "sizeGiB": 10}, "layout": "raidz1"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn transition_time_kept_when_status_unchanged() {
        let old = "2026-01-01T00:00:00Z";
        let p = pool(json!({"conditions": [
            {"type": "PoolImported", "status": "True", "reason": "Created", "message": "",
             "lastTransitionTime": old, "observedGeneration": 2},
            {"type": "PoolHealthy", "status": "False", "reason": "Degraded", "message": "",
             "lastTransitionTime": old},
            {"type": "Ready", "status": "False", "reason": "X", "message": "",
             "lastTransitionTime": old},
        ]}));
        let now: Timestamp = "2026-02-02T00:00:00Z".parse().unwrap();
        let c = conditions(
            &[
                Verdict::new(cond::POOL_IMPORTED, "True", "Imported", "imported"),
                Verdict::new(cond::POOL_HEALTHY, "True", "Online", "ONLINE"),
            ],
            &p,
            now,
        );
        assert_eq!(c.len(), 2);
        let imported = c.iter().find(|c| c.type_ == "PoolImported").unwrap();
        assert_eq!(imported.last_transition_time.0.to_string(), old);
        assert_eq!(imported.observed_generation, Some(3));
        assert_eq!(imported.reason, "Imported");
        let healthy = c.iter().find(|c| c.type_ == "PoolHealthy").unwrap();
        assert_eq!(healthy.last_transition_time.0, now);
    }

    #[test]
    fn extract_ignores_controller_fields_and_apply_body_has_only_agent_fields() {
        let p = pool(json!({
            "phase": "Online", "instanceId": "i-1", "observedGeneration": 3,
            "poolGuid": "42", "health": "ONLINE",
            "volumes": [
                {"index": 0, "volumeId": "vol-1", "attachmentState": "attached", "device": "/d/a", "memberState": "ONLINE"},
                {"index": 1, "volumeId": "vol-2", "attachmentState": "attached"},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }));
        let a = AgentStatus::extract(p.status.as_ref().unwrap());
        assert_eq!(a.volumes.len(), 1);
        assert!(a.conditions.is_empty());
        let body = a.apply_body();
        let status = body["status"].as_object().unwrap();
        let keys: Vec<&str> = status.keys().map(String::as_str).collect();
        assert_eq!(keys, ["health", "poolGuid", "volumes"]);
        assert_eq!(
            body["status"]["volumes"],
            json!([{"index": 0, "device": "/d/a", "memberState": "ONLINE"}])
        );
        // Read back equals itself once normalized: a resync that changes nothing writes nothing.
        assert_eq!(a.clone().normalized(), a);
    }

    #[test]
    fn sizes_like_zpool() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(5_335_154_688), "4.97G");
        assert_eq!(human_size(19_998_441_472), "18.6G");
        assert_eq!(human_size(427_349_245_952), "398G");
    }
}
