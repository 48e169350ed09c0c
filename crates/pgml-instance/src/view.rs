//! The cluster as this instance reads it: its PgmlCluster and the cluster's Pods.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use pgml_api::PgmlCluster;
use pgml_api::cluster::SeedFrom;

use crate::decide::{Peer, View};
use crate::report::{CLUSTER_LABEL, FENCED_ANNOTATION, InstanceReport, STATUS_ANNOTATION};

/// Reads the cluster and its Pods. Fails when either cannot be read or this instance's
/// own Pod is not among them: no decision is made on a partial view.
pub async fn fetch(
    clusters: &Api<PgmlCluster>,
    pods: &Api<Pod>,
    cluster: &str,
    me: &str,
) -> anyhow::Result<View> {
    let c = clusters
        .get(cluster)
        .await
        .with_context(|| format!("reading PgmlCluster {cluster}"))?;
    let list = pods
        .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={cluster}")))
        .await
        .context("listing the cluster's Pods")?;
    build(&c, &list.items, me)
}

/// Watches the PgmlCluster and the cluster's Pods; notifies on every change (a missed
/// watch only delays the next look to the regular tick).
pub fn watch_changes(client: kube::Client, namespace: &str, cluster: &str) -> Arc<Notify> {
    let notify = Arc::new(Notify::new());
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let clusters: Api<PgmlCluster> = Api::namespaced(client, namespace);
    let pod_events = watcher(
        pods,
        watcher::Config::default().labels(&format!("{CLUSTER_LABEL}={cluster}")),
    )
    .default_backoff()
    .map(|_| ())
    .boxed();
    let cluster_events = watcher(
        clusters,
        watcher::Config::default().fields(&format!("metadata.name={cluster}")),
    )
    .default_backoff()
    .map(|_| ())
    .boxed();
    let n = notify.clone();
    tokio::spawn(async move {
        let mut events = futures::stream::select(pod_events, cluster_events);
        while events.next().await.is_some() {
            n.notify_one();
        }
    });
    notify
}

/// The view from already-read objects (pure, for tests).
pub fn build(c: &PgmlCluster, pods: &[Pod], me: &str) -> anyhow::Result<View> {
    let status = c.status.clone().unwrap_or_default();
    // The controller records a fence in status too (a recreated Pod may not carry the
    // annotation yet): either is enough.
    let fenced_in_status = |name: &str| status.instances.iter().any(|i| i.name == name && i.fenced);
    let mut fenced = None;
    let mut peers = BTreeMap::new();
    for p in pods {
        let Some(name) = p.metadata.name.as_deref() else {
            continue;
        };
        let ann = p.metadata.annotations.as_ref();
        let is_fenced = ann
            .and_then(|a| a.get(FENCED_ANNOTATION))
            .is_some_and(|v| v == "true")
            || fenced_in_status(name);
        if name == me {
            fenced = Some(is_fenced);
            continue;
        }
        let report = ann
            .and_then(|a| a.get(STATUS_ANNOTATION))
            .and_then(|s| serde_json::from_str::<InstanceReport>(s).ok());
        peers.insert(
            name.to_string(),
            Peer {
                fenced: is_fenced,
                report,
            },
        );
    }
    let fenced = fenced.with_context(|| {
        format!("this instance's Pod {me} is not among the cluster's Pods (label {CLUSTER_LABEL})")
    })?;
    Ok(View {
        me: me.to_string(),
        fenced,
        target_primary: status.target_primary,
        current_primary: status.current_primary,
        instances: status.instances.into_iter().map(|i| i.name).collect(),
        seed_from_basebackup: c.spec.replicas.seed_from == SeedFrom::PgBasebackup,
        app_database: c.spec.app().0,
        maximum_lag_bytes: c
            .spec
            .replicas
            .maximum_lag_bytes
            .and_then(|b| u64::try_from(b).ok()),
        system_identifier: status.system_identifier,
        backup_schedule: c
            .spec
            .backups
            .pgbackrest
            .as_ref()
            .map(|p| p.schedule.clone())
            .unwrap_or_default(),
        restore: c
            .spec
            .bootstrap_pgbackrest()
            .map(|p| crate::decide::Restore {
                stanza: p.stanza.clone(),
                backup_set: p.backup_set.clone(),
                on_snapshot: c.spec.bootstrap_snapshot().is_some(),
                target: c.spec.recovery_target().cloned(),
            }),
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ann: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {CLUSTER_LABEL: "c"}, "annotations": ann}
        }))
        .unwrap()
    }

    fn cluster() -> PgmlCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
            "metadata": {"name": "c"},
            "spec": {"storage": {"zfs": {"template": {"volumes": {"sizeGiB": 10}, "datasets": [{"name": "pgdata"}]}}},
                     "replicas": {"seedFrom": "PgBasebackup"}},
            "status": {"targetPrimary": "c-2", "currentPrimary": "c-1",
                       "instances": [{"name": "c-1"}, {"name": "c-2"}, {"name": "c-3", "fenced": true}]}
        }))
        .unwrap()
    }

    #[test]
    fn reads_status_fencing_and_reports() {
        let report = r#"{"role":"primary","running":true,"ready":true,"streaming":false,"address":"1.2.3.4:5432","standbySignal":false,"fenced":false,"demoted":false,"updated":""}"#;
        let pods = [
            pod(
                "c-1",
                serde_json::json!({FENCED_ANNOTATION: "true", STATUS_ANNOTATION: report}),
            ),
            pod("c-2", serde_json::json!({STATUS_ANNOTATION: "not json"})),
        ];
        let v = build(&cluster(), &pods, "c-2").unwrap();
        assert!(!v.fenced);
        assert_eq!(v.target_primary.as_deref(), Some("c-2"));
        assert_eq!(v.current_primary.as_deref(), Some("c-1"));
        assert_eq!(v.instances, ["c-1", "c-2", "c-3"]);
        assert!(v.seed_from_basebackup);
        assert_eq!(v.system_identifier, None, "never bootstrapped");
        let p = &v.peers["c-1"];
        assert!(p.fenced);
        assert_eq!(p.report.as_ref().unwrap().address, "1.2.3.4:5432");
        let v = build(&cluster(), &pods, "c-1").unwrap();
        assert!(v.fenced);
        assert!(
            v.peers["c-2"].report.is_none(),
            "an unreadable report is no report"
        );
    }

    #[test]
    fn a_fence_recorded_in_status_counts_without_the_annotation() {
        let pods = [
            pod("c-2", serde_json::json!({})),
            pod("c-3", serde_json::json!({})),
        ];
        assert!(build(&cluster(), &pods, "c-3").unwrap().fenced);
        assert!(build(&cluster(), &pods, "c-2").unwrap().peers["c-3"].fenced);
    }

    #[test]
    fn reads_the_recorded_system_identifier() {
        let mut c = cluster();
        c.status.as_mut().unwrap().system_identifier = Some("7318791534227411232".into());
        let pods = [pod("c-2", serde_json::json!({}))];
        let v = build(&c, &pods, "c-2").unwrap();
        assert_eq!(v.system_identifier.as_deref(), Some("7318791534227411232"));
    }

    #[test]
    fn no_view_without_its_own_pod() {
        assert!(build(&cluster(), &[], "c-1").is_err());
    }
}
