//! Every branch of the plan, from observed objects built as the builder builds them.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use pgml_api::cluster::{InstanceStatus, PgmlClusterStatus};
use pgml_api::{EbsSnapshot, ZfsPool};
use serde_json::json;

use super::*;
use crate::cluster::names::{self, MARKS_MANAGER, SEED_MANAGER};
use crate::cluster::placement::ready_node;
use crate::cluster::roles::Transition;
use crate::cluster::status::reason;
use crate::runtime::FIELD_MANAGER;

const GRACE: Duration = Duration::from_secs(30);
const ID: &str = "7318791534227411232";

fn zfs(instances: i32) -> Value {
    json!({"instances": instances, "storage": {"zfs": {"template": {"volumes": {"count": 2, "sizeGiB": 10}}}}})
}

fn ext4(instances: i32) -> Value {
    json!({"instances": instances, "storage": {"persistentVolumeClaim": {"size": "10Gi"}}})
}

fn cluster(spec: Value) -> PgmlCluster {
    serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
        "metadata": {"name": "main", "namespace": "db", "uid": "u-1", "generation": 1},
        "spec": spec,
    }))
    .unwrap()
}

/// Three Ready nodes in three zones, nothing else.
fn fresh() -> Observed {
    Observed {
        nodes: vec![
            ready_node("node-a", "za"),
            ready_node("node-b", "zb"),
            ready_node("node-c", "zc"),
        ],
        ..Observed::default()
    }
}

fn rec(n: u32, node: &str, seeded_from: Option<&str>) -> Rec {
    Rec {
        n,
        name: format!("main-{n}"),
        node: node.into(),
        zone: Some(format!("z{}", node.trim_start_matches("node-"))),
        seeded_from: seeded_from.map(Into::into),
        fenced: false,
    }
}

fn recorded_as(recs: &[Rec], primary: &str) -> PgmlClusterStatus {
    let entry = |r: &Rec| InstanceStatus {
        name: r.name.clone(),
        node: Some(r.node.clone()),
        availability_zone: r.zone.clone(),
        pool: Some(r.name.clone()),
        role: None,
        ready: false,
        lsn: None,
        lag_bytes: None,
        seeded_from: r.seeded_from.clone(),
        fenced: r.fenced,
        pool_health: None,
        node_leaving: None,
    };
    PgmlClusterStatus {
        instances: recs.iter().map(entry).collect(),
        current_primary: Some(primary.into()),
        target_primary: Some(primary.into()),
        ..PgmlClusterStatus::default()
    }
}

fn as_instance(r: &Rec, role: PodRole) -> Instance {
    instance(r, role)
}

/// The pool as the builder makes it, its `pgdata` and `pgwal` mounted or not.
fn stored_pool(b: &Builder, r: &Rec, mounted: bool) -> ZfsPool {
    stored_pool_with(b, r, mounted, mounted)
}

fn stored_pool_with(b: &Builder, r: &Rec, pgdata: bool, pgwal: bool) -> ZfsPool {
    let mut v = b.pool(&as_instance(r, PodRole::Replica)).unwrap();
    let pool = b.c.pool_name(r.n);
    v["status"] = json!({"datasets": [
        {"name": "pgdata", "mountPath": format!("/mnt/{pool}/pgdata"), "mounted": pgdata},
        {"name": "pgwal", "mountPath": format!("/mnt/{pool}/pgwal"), "mounted": pgwal},
    ]});
    serde_json::from_value(v).unwrap()
}

fn stored_pvc(b: &Builder, r: &Rec) -> PersistentVolumeClaim {
    serde_json::from_value(b.pvc(&as_instance(r, PodRole::Replica))).unwrap()
}

fn stored_wal_pvc(b: &Builder, r: &Rec) -> PersistentVolumeClaim {
    serde_json::from_value(b.wal_pvc(&as_instance(r, PodRole::Replica))).unwrap()
}

/// The Pod as the builder makes it with `role`, running, its manager reporting `report`.
fn stored_pod(b: &Builder, r: &Rec, role: PodRole, report: Option<Value>) -> Pod {
    let mut v = b.pod(&as_instance(r, role));
    if let Some(report) = report {
        v["metadata"]["annotations"] = json!({names::INSTANCE_STATUS: report.to_string()});
    }
    v["status"] = json!({"phase": "Running"});
    serde_json::from_value(v).unwrap()
}

fn primary_report() -> Value {
    json!({"role": "primary", "running": true, "ready": true, "lsn": "0/5", "systemIdentifier": ID})
}

fn replica_report(streaming: bool) -> Value {
    json!({"role": "replica", "running": true, "ready": true, "streaming": streaming, "replayLsn": "0/5"})
}

fn seed(name: &str, phase: Option<&str>) -> EbsSnapshot {
    serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
        "metadata": {"name": name, "namespace": "db", "labels": {"pgml.io/cluster": "main"}},
        "spec": {"source": {"cluster": {"name": "main", "instance": "main-1"}}},
        "status": phase.map(|p| json!({"phase": p})),
    }))
    .unwrap()
}

fn being_deleted<K: kube::Resource>(mut o: K) -> K {
    let t = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
    o.meta_mut().deletion_timestamp = Some(pgml_api::common::Time(t));
    o
}

/// main-1 on node-a recorded as the primary, its database's identity recorded or not.
fn single(identity: bool) -> (Observed, Rec) {
    let r = rec(1, "node-a", None);
    let mut o = fresh();
    o.status = recorded_as(std::slice::from_ref(&r), "main-1");
    o.status.system_identifier = identity.then(|| ID.into());
    (o, r)
}

/// An ext4 pair recorded with their claims: main-1 the primary, main-2 a replica copied
/// by pg_basebackup.
fn pair(b: &Builder) -> (Observed, [Rec; 2]) {
    let recs = [
        rec(1, "node-a", None),
        rec(2, "node-b", Some(PG_BASEBACKUP)),
    ];
    let mut o = fresh();
    o.status = recorded_as(&recs, "main-1");
    for r in &recs {
        o.pvcs.insert(r.name.clone(), stored_pvc(b, r));
    }
    (o, recs)
}

/// The pair with the identity recorded, main-1's Pod gone, main-2 streaming.
fn primary_pod_gone(b: &Builder) -> Observed {
    let (mut o, recs) = pair(b);
    o.status.system_identifier = Some(ID.into());
    let pod = stored_pod(b, &recs[1], PodRole::Replica, Some(replica_report(true)));
    o.pods.insert("main-2".into(), pod);
    o
}

/// The steps, one line each: what, which object, how and what is said.
fn describe(steps: &[Step]) -> Vec<String> {
    let object = |b: &Value| {
        let kind = b["kind"].as_str().unwrap_or_default();
        format!(
            "{kind} {}",
            b["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let then = |n: &Option<Notice>| n.as_ref().map(|(_, r, _)| format!(" then {r}"));
    steps
        .iter()
        .map(|s| match s {
            Step::Secret { kind, missing } => {
                let what = match missing {
                    Missing::Create(_) => "create",
                    Missing::Report(_) => "report",
                };
                format!("secret {kind:?} {what} if missing")
            }
            Step::Apply {
                body,
                manager,
                when,
                then: t,
            } => {
                let how = match when {
                    When::Always => "",
                    When::Changed => " if changed",
                    When::ChangedOrStaleIrsa => " if changed or IRSA stale",
                };
                let who = if *manager == FIELD_MANAGER {
                    String::new()
                } else {
                    format!(" as {manager}")
                };
                let said = then(t).unwrap_or_default();
                format!("apply {}{who}{how}{said}", object(body))
            }
            Step::Delete { body, then: t } => {
                format!("delete {}{}", object(body), then(t).unwrap_or_default())
            }
            Step::Remove { instance, bodies } => {
                let kinds: Vec<String> = bodies.iter().map(object).collect();
                format!("remove {instance}: {}", kinds.join(", "))
            }
            Step::Note((warning, r, _), _) => {
                format!("{} {r}", if *warning { "warn" } else { "note" })
            }
        })
        .collect()
}

/// The second half's steps for these instances, the layout being the cluster-wide steps.
fn instance_steps(b: &Builder, o: &Observed, lost_for: Option<Duration>) -> (Plan, Vec<String>) {
    let l = layout(b, o);
    let p = plan(b, o, &l, lost_for, GRACE);
    let steps = describe(&p.steps);
    (p, steps)
}

fn body_of<'a>(steps: &'a [Step], kind: &str, name: &str) -> &'a Value {
    steps
        .iter()
        .find_map(|s| match s {
            Step::Apply { body, .. }
                if body["kind"] == kind && body["metadata"]["name"] == name =>
            {
                Some(body)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no apply of {kind} {name}: {:?}", describe(steps)))
}

// The first half.

#[test]
fn a_fresh_cluster_gets_its_secrets_its_shared_objects_and_instances_in_two_zones() {
    let c = cluster(zfs(2));
    let b = Builder::new(&c, "img").unwrap();
    let l = layout(&b, &fresh());
    assert_eq!(
        describe(&l.steps),
        [
            "secret Superuser create if missing",
            "secret App create if missing",
            "secret Replication create if missing",
            "apply ConfigMap main-config if changed",
            "apply Service main-rw if changed",
            "apply Service main-ro if changed",
            "apply Service main-r if changed",
            "apply PodDisruptionBudget main-primary if changed",
            "apply PodDisruptionBudget main-replicas if changed",
            "apply ServiceAccount main-instance if changed or IRSA stale",
            "apply Role main-instance if changed",
            "apply RoleBinding main-instance if changed",
        ]
    );
    let Step::Secret {
        missing: Missing::Create((false, reason, said)),
        ..
    } = &l.steps[1]
    else {
        panic!("{:?}", l.steps[1]);
    };
    assert_eq!(
        (reason.as_str(), said.as_str()),
        (reason::SECRET_CREATED, "created Secret main-app (user app)")
    );
    assert_eq!(
        l.recs,
        [
            rec(1, "node-a", None),
            rec(2, "node-b", Some("main-2-seed"))
        ],
        "the bootstrap instance starts empty, the next is seeded by snapshot"
    );
    assert_eq!((l.unplaced.as_ref(), l.spec_errors.len()), (None, 0));
    let expected = Watch {
        watched: None,
        lost: false,
        others: vec!["main-1".into(), "main-2".into()],
    };
    assert_eq!(l.watch, expected);
}

#[test]
fn a_missing_secret_is_reported_not_made_once_the_cluster_has_a_primary() {
    let c = cluster(zfs(1));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = fresh();
    o.status = recorded_as(&[rec(1, "node-a", None)], "main-1");
    let l = layout(&b, &o);
    let Step::Secret {
        kind: SecretKind::Replication,
        missing: Missing::Report(why),
    } = &l.steps[2]
    else {
        panic!("{:?}", l.steps[2]);
    };
    assert!(
        why.starts_with("Secret main-replication is missing;")
            && why.contains("with user streaming_replica and the password PostgreSQL has"),
        "{why}"
    );
}

#[test]
fn an_unrenderable_pgbackrest_config_is_a_spec_error_and_its_config_map_is_left() {
    let mut spec = ext4(1);
    spec["backups"] = json!({"pgbackrest": {"s3": {"bucket": "b-1", "region": "eu-west-1",
        "endpoint": "http://minio:9000"}}});
    let c = cluster(spec);
    let b = Builder::new(&c, "img").unwrap();
    let l = layout(&b, &fresh());
    let steps = describe(&l.steps);
    assert_eq!(steps[3], "warn PgBackRestConfigInvalid");
    assert!(steps.iter().all(|s| !s.contains("ConfigMap")), "{steps:?}");
    assert_eq!(
        steps.len(),
        3 + 1 + 8,
        "the Services, budgets and RBAC still are"
    );
    assert_eq!(l.spec_errors.len(), 1);
    assert!(
        l.spec_errors[0].starts_with("spec.backups.pgbackrest: ")
            && l.spec_errors[0].ends_with("; ConfigMap main-config is left as it was"),
        "{:?}",
        l.spec_errors
    );
}

#[test]
fn replicas_are_seeded_by_snapshot_on_zfs_when_asked_else_by_pg_basebackup() {
    let seeded = |spec: Value| {
        let c = cluster(spec);
        let b = Builder::new(&c, "img").unwrap();
        let l = layout(&b, &fresh());
        l.recs
            .iter()
            .map(|r| r.seeded_from.clone())
            .collect::<Vec<_>>()
    };
    let snapshot = Some("main-2-seed".to_string());
    assert_eq!(seeded(zfs(2)), [None, snapshot]);
    let mut basebackup = zfs(2);
    basebackup["replicas"] = json!({"seedFrom": "PgBasebackup"});
    let pg = Some(PG_BASEBACKUP.to_string());
    assert_eq!(seeded(basebackup), [None, pg.clone()]);
    assert_eq!(seeded(ext4(2)), [None, pg]);
}

#[test]
fn once_the_cluster_had_a_primary_no_new_instance_starts_empty() {
    let c = cluster(zfs(1));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = fresh();
    o.status.current_primary = Some("main-1".into());
    let l = layout(&b, &o);
    assert_eq!(l.recs, [rec(1, "node-a", Some("main-1-seed"))]);
}

#[test]
fn objects_without_a_status_record_are_adopted() {
    let c = cluster(zfs(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = fresh();
    let restored = rec(1, "node-b", Some("snap-x"));
    let pool = stored_pool(&b, &restored, false);
    o.pools.insert("main-1".into(), pool);
    let pod = stored_pod(&b, &rec(3, "node-a", None), PodRole::Replica, None);
    o.pods.insert("main-3".into(), pod);
    // Being deleted, or not this cluster's: not adopted.
    let going = being_deleted(stored_pool(&b, &rec(5, "node-c", None), false));
    o.pools.insert("main-5".into(), going);
    let other = stored_pool(&b, &rec(1, "node-c", None), false);
    o.pools.insert("other-1".into(), other);
    let l = layout(&b, &o);
    assert_eq!(l.recs, [restored, rec(3, "node-a", None)]);
    assert_eq!(recorded(&b, &o), l.recs);
}

#[test]
fn new_instances_are_numbered_after_any_object_left() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = fresh();
    o.status = recorded_as(&[rec(1, "node-a", None)], "main-1");
    // A removed instance's claim, still going away.
    let left = being_deleted(stored_pvc(&b, &rec(4, "node-b", None)));
    o.pvcs.insert("main-4".into(), left);
    let l = layout(&b, &o);
    let names: Vec<&str> = l.recs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["main-1", "main-5"]);
    assert_eq!(l.recs[1].seeded_from.as_deref(), Some(PG_BASEBACKUP));
}

#[test]
fn scaling_down_removes_the_highest_numbers_first_never_the_primary_nor_the_target() {
    let c = cluster(zfs(1));
    let b = Builder::new(&c, "img").unwrap();
    let three = [
        rec(1, "node-a", None),
        rec(2, "node-b", Some("main-2-seed")),
        rec(3, "node-c", Some("main-3-seed")),
    ];
    let mut o = fresh();
    o.status = recorded_as(&three, "main-3");
    let l = layout(&b, &o);
    let removals: Vec<String> = describe(&l.steps).into_iter().skip(12).collect();
    let pv = |n: u32| format!("PersistentVolume {}", b.c.pv_name(n));
    let wal_pv = |n: u32| format!("PersistentVolume {}", b.c.wal_pv_name(n));
    assert_eq!(
        removals,
        [
            format!(
                "remove main-2: Pod main-2, PersistentVolumeClaim main-2, PersistentVolumeClaim main-2-wal, ZfsPool main-2, {}, {}, EbsSnapshot main-2-seed",
                pv(2),
                wal_pv(2)
            ),
            format!(
                "remove main-1: Pod main-1, PersistentVolumeClaim main-1, PersistentVolumeClaim main-1-wal, ZfsPool main-1, {}, {}, EbsSnapshot main-1-seed",
                pv(1),
                wal_pv(1)
            ),
        ]
    );
    assert_eq!(l.recs, [three[2].clone()]);

    // A change of primary under way keeps both ends: one fewer than asked is all it can.
    o.status.target_primary = Some("main-1".into());
    let l = layout(&b, &o);
    let names: Vec<&str> = l.recs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["main-1", "main-3"]);

    // On ext4 an instance is its Pod and claim.
    let c = cluster(ext4(1));
    let b = Builder::new(&c, "img").unwrap();
    let l = layout(&b, &o);
    assert_eq!(
        describe(&l.steps)[12..],
        ["remove main-2: Pod main-2, PersistentVolumeClaim main-2"]
    );
}

/// The Pods the instances' Role lets them patch, checking that the Role lets them patch no
/// other Pod and read Pods only as a list and a watch.
fn patchable(l: &Layout) -> Vec<String> {
    let role = body_of(&l.steps, "Role", "main-instance");
    let pods: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"] == json!(["pods"]))
        .collect();
    let mut names = vec![];
    for rule in pods {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        match rule["resourceNames"].as_array() {
            Some(n) => {
                assert_eq!(verbs, ["patch"], "{rule}");
                names.extend(n.iter().map(|v| v.as_str().unwrap().to_string()));
            }
            None => assert_eq!(verbs, ["list", "watch"], "{rule}"),
        }
    }
    names
}

#[test]
fn the_instances_may_patch_their_own_clusters_pods_only() {
    let c = cluster(zfs(2));
    let b = Builder::new(&c, "img").unwrap();
    // A fresh cluster: the instances placed now, before their Pods exist.
    assert_eq!(patchable(&layout(&b, &fresh())), ["main-1", "main-2"]);
    // Nothing placed (no node): no patch rule at all, rather than one naming no Pod (an
    // empty resourceNames allows every Pod).
    let l = layout(&b, &Observed::default());
    assert!(l.recs.is_empty() && l.unplaced.is_some());
    assert_eq!(patchable(&l), Vec::<String>::new());
    let role = body_of(&l.steps, "Role", "main-instance");
    assert_eq!(role["rules"].as_array().unwrap().len(), 2, "{role}");

    // Scaling up from one: the new instance's name comes with its placement.
    let c = cluster(zfs(3));
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, r) = single(true);
    o.pods.insert(
        "main-1".into(),
        stored_pod(&b, &r, PodRole::Primary, Some(primary_report())),
    );
    let l = layout(&b, &o);
    assert_eq!(patchable(&l), ["main-1", "main-2", "main-3"]);
}

#[test]
fn a_departing_pod_stays_patchable_until_it_is_gone() {
    let c = cluster(zfs(1));
    let b = Builder::new(&c, "img").unwrap();
    let three = [
        rec(1, "node-a", None),
        rec(2, "node-b", Some("main-2-seed")),
        rec(3, "node-c", Some("main-3-seed")),
    ];
    let mut o = fresh();
    o.status = recorded_as(&three, "main-3");
    for r in &three {
        let pod = stored_pod(&b, r, PodRole::Replica, Some(replica_report(true)));
        o.pods.insert(r.name.clone(), pod);
    }
    // The reconcile that removes main-1 and main-2: their Pods still run.
    assert_eq!(patchable(&layout(&b, &o)), ["main-1", "main-2", "main-3"]);

    // The next: no longer recorded, main-2's Pod still shutting down, main-1's gone.
    o.status = recorded_as(&three[2..], "main-3");
    o.pods.remove("main-1");
    let going = o.pods.remove("main-2").unwrap();
    o.pods.insert("main-2".into(), being_deleted(going));
    let l = layout(&b, &o);
    assert_eq!(l.recs, [three[2].clone()]);
    assert_eq!(patchable(&l), ["main-2", "main-3"]);

    // Gone: only the instance left.
    o.pods.remove("main-2");
    assert_eq!(patchable(&layout(&b, &o)), ["main-3"]);

    // A Pod labelled with the cluster but not named as its instances are: not patchable.
    let mut stray = o.pods["main-3"].clone();
    stray.metadata.name = Some("main-x".into());
    o.pods.insert("main-x".into(), stray);
    assert_eq!(patchable(&layout(&b, &o)), ["main-3"]);
}

#[test]
fn an_instance_with_no_node_that_fits_is_unplaced() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = fresh();
    o.nodes.truncate(1);
    let l = layout(&b, &o);
    assert_eq!(l.recs.len(), 1);
    let why = l.unplaced.unwrap();
    assert!(
        why.starts_with("no node for another instance: 2 needed, 1 placed;"),
        "{why}"
    );

    let mut spec = ext4(2);
    spec["nodeSelector"] = json!({"pool": "db"});
    let c = cluster(spec);
    let b = Builder::new(&c, "img").unwrap();
    let l = layout(&b, &fresh());
    assert!(l.recs.is_empty());
    assert!(l.unplaced.unwrap().contains("2 needed, 0 placed"));
}

#[test]
fn the_loss_timed_is_the_primarys_or_while_a_change_is_under_way_the_targets() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = primary_pod_gone(&b);
    // The primary's Pod is gone: lost.
    let l = layout(&b, &o);
    let expected = Watch {
        watched: Some("main-1".into()),
        lost: true,
        others: vec!["main-2".into()],
    };
    assert_eq!(l.watch, expected);
    // Promoting main-2, which runs: its loss is the one timed, and it is not lost.
    o.status.target_primary = Some("main-2".into());
    let l = layout(&b, &o);
    let expected = Watch {
        watched: Some("main-2".into()),
        lost: false,
        others: vec!["main-1".into()],
    };
    assert_eq!(l.watch, expected);
}

// The second half.

#[test]
fn bootstrap_names_the_first_instance_primary_and_makes_its_pool_first() {
    let c = cluster(zfs(2));
    let b = Builder::new(&c, "img").unwrap();
    let (p, steps) = instance_steps(&b, &fresh(), None);
    assert_eq!(
        (p.roles.current.as_deref(), p.roles.target.as_deref()),
        (Some("main-1"), Some("main-1"))
    );
    assert_eq!(steps, ["apply ZfsPool main-1 then PoolCreated"]);
    let pool = body_of(&p.steps, "ZfsPool", "main-1");
    assert!(pool["spec"]["restoreFrom"].is_null());
    assert_eq!(
        p.building,
        [
            "main-1: waiting for ZfsPool main-1 to mount pgdata",
            "main-2: waiting for a ready instance to snapshot",
        ]
    );
    assert!(!p.urgent);
}

#[test]
fn with_nothing_placed_no_primary_is_named() {
    let c = cluster(zfs(2));
    let b = Builder::new(&c, "img").unwrap();
    let o = Observed::default();
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(p.roles, Roles::default());
    assert!(steps.is_empty() && p.building.is_empty());
}

#[test]
fn a_mounted_pool_gets_its_volume_then_the_claim_and_the_pod() {
    let c = cluster(zfs(1));
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, r) = single(false);
    o.pools.insert("main-1".into(), stored_pool(&b, &r, true));
    let (p, steps) = instance_steps(&b, &o, None);
    let (pv, wal_pv) = (b.c.pv_name(1), b.c.wal_pv_name(1));
    assert_eq!(
        steps,
        [
            format!("apply PersistentVolume {pv} if changed then VolumeBound"),
            format!("apply PersistentVolume {wal_pv} if changed then VolumeBound"),
            "apply PersistentVolumeClaim main-1".into(),
            "apply PersistentVolumeClaim main-1-wal".into(),
            "apply Pod main-1 then PodCreated".into(),
        ]
    );
    let wal = body_of(&p.steps, "PersistentVolume", &wal_pv);
    let wal_path = format!("/mnt/{}/pgwal", b.c.pool_name(1));
    assert_eq!(wal["spec"]["local"]["path"], wal_path.as_str());
    assert_eq!(wal["spec"]["claimRef"]["name"], "main-1-wal");
    let claim = body_of(&p.steps, "PersistentVolumeClaim", "main-1-wal");
    assert_eq!(claim["spec"]["volumeName"], wal_pv.as_str());
    let Step::Apply {
        body,
        then: Some((_, _, said)),
        ..
    } = &p.steps[0]
    else {
        panic!()
    };
    let path = format!("/mnt/{}/pgdata", b.c.pool_name(1));
    assert_eq!(body["spec"]["local"]["path"], path.as_str());
    assert_eq!(
        said,
        &format!("PersistentVolume {pv} at {path} on node-a for main-1")
    );
    // No identity recorded: the primary's Pod carries no role label (no -rw routing).
    let pod = body_of(&p.steps, "Pod", "main-1");
    assert!(pod["metadata"]["labels"][names::ROLE].is_null(), "{pod}");

    o.status.system_identifier = Some(ID.into());
    let (p, _) = instance_steps(&b, &o, None);
    let pod = body_of(&p.steps, "Pod", "main-1");
    assert_eq!(pod["metadata"]["labels"][names::ROLE], names::ROLE_PRIMARY);
}

#[test]
fn objects_as_decided_are_not_applied_again_and_a_changed_pool_is_without_a_note() {
    let c = cluster(zfs(1));
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, r) = single(true);
    o.pools.insert("main-1".into(), stored_pool(&b, &r, true));
    o.pvcs.insert("main-1".into(), stored_pvc(&b, &r));
    o.pvcs.insert("main-1-wal".into(), stored_wal_pvc(&b, &r));
    let pod = stored_pod(&b, &r, PodRole::Primary, Some(primary_report()));
    o.pods.insert("main-1".into(), pod);
    let (p, steps) = instance_steps(&b, &o, None);
    let (pv, wal_pv) = (b.c.pv_name(1), b.c.wal_pv_name(1));
    assert_eq!(
        steps,
        [
            format!("apply PersistentVolume {pv} if changed then VolumeBound"),
            format!("apply PersistentVolume {wal_pv} if changed then VolumeBound"),
        ]
    );
    assert!(p.building.is_empty());

    let mut moved = stored_pool(&b, &r, true);
    moved.spec.template.volumes.size_gib = 20;
    o.pools.insert("main-1".into(), moved);
    let (_, steps) = instance_steps(&b, &o, None);
    assert_eq!(
        steps[0], "apply ZfsPool main-1",
        "applied again, nothing said"
    );
}

#[test]
fn the_wal_volume_waits_for_pgwal_mounted_and_only_when_the_template_has_it() {
    let c = cluster(zfs(1));
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, r) = single(false);
    o.pools
        .insert("main-1".into(), stored_pool_with(&b, &r, true, false));
    let (p, steps) = instance_steps(&b, &o, None);
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(
        p.building,
        ["main-1: waiting for ZfsPool main-1 to mount pgwal"]
    );
    // A template with pgdata alone: WAL stays in PGDATA, nothing of pgwal is made.
    let c = cluster(json!({"instances": 1, "storage": {"zfs": {"template": {
        "volumes": {"count": 2, "sizeGiB": 10},
        "datasets": [{"name": "pgdata"}],
    }}}}));
    let b = Builder::new(&c, "img").unwrap();
    assert!(!b.has_wal());
    o.pools
        .insert("main-1".into(), stored_pool_with(&b, &r, true, false));
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(
        steps,
        [
            format!(
                "apply PersistentVolume {} if changed then VolumeBound",
                b.c.pv_name(1)
            ),
            "apply PersistentVolumeClaim main-1".into(),
            "apply Pod main-1 then PodCreated".into(),
        ]
    );
    let pod = body_of(&p.steps, "Pod", "main-1");
    assert!(!pod.to_string().contains("pgwal"), "{pod}");
    assert!(!pod.to_string().contains("PGML_WAL_DIR"), "{pod}");
}

#[test]
fn a_pool_being_deleted_holds_its_instance_back() {
    let c = cluster(zfs(1));
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, r) = single(false);
    o.pools
        .insert("main-1".into(), being_deleted(stored_pool(&b, &r, true)));
    let (p, steps) = instance_steps(&b, &o, None);
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(p.building, ["main-1: its ZfsPool is being deleted"]);
}

/// main-1 primary and serving, main-2 recorded seeded from `main-2-seed`, without a pool.
fn seeding(b: &Builder) -> Observed {
    let one = rec(1, "node-a", None);
    let two = rec(2, "node-b", Some("main-2-seed"));
    let mut o = fresh();
    o.status = recorded_as(&[one.clone(), two], "main-1");
    o.status.system_identifier = Some(ID.into());
    o.pools.insert("main-1".into(), stored_pool(b, &one, true));
    o.pvcs.insert("main-1".into(), stored_pvc(b, &one));
    o.pvcs.insert("main-1-wal".into(), stored_wal_pvc(b, &one));
    let pod = stored_pod(b, &one, PodRole::Primary, Some(primary_report()));
    o.pods.insert("main-1".into(), pod);
    o
}

/// The steps and wait of main-2 alone (main-1's volume checks aside: pgdata's and
/// pgwal's).
fn second(b: &Builder, o: &Observed) -> (Vec<String>, Vec<String>, Plan) {
    let (p, steps) = instance_steps(b, o, None);
    let steps = steps.into_iter().skip(2).collect();
    (steps, p.building.clone(), p)
}

#[test]
fn a_new_replicas_seed_is_taken_of_a_donor_then_awaited() {
    let c = cluster(zfs(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = seeding(&b);
    let (steps, building, p) = second(&b, &o);
    assert_eq!(
        steps,
        [format!(
            "apply EbsSnapshot main-2-seed as {SEED_MANAGER} then Seeding"
        )]
    );
    let body = body_of(&p.steps, "EbsSnapshot", "main-2-seed");
    assert_eq!(
        body["spec"]["source"]["cluster"],
        json!({"name": "main", "instance": "main-1"})
    );
    assert_eq!(
        building,
        ["main-2: seed snapshot main-2-seed of main-1 requested"]
    );

    // No ready instance to take it of.
    let mut down = o.clone();
    down.pods.clear();
    let (p, _) = instance_steps(&b, &down, None);
    assert!(
        describe(&p.steps)
            .iter()
            .all(|s| !s.contains("EbsSnapshot"))
    );
    assert!(
        p.building
            .contains(&"main-2: waiting for a ready instance to snapshot".to_string())
    );

    for (phase, said) in [(None, "Pending"), (Some("Capturing"), "Capturing")] {
        o.snapshots
            .insert("main-2-seed".into(), seed("main-2-seed", phase));
        let (steps, building, _) = second(&b, &o);
        assert!(steps.is_empty(), "{steps:?}");
        assert_eq!(
            building,
            [format!("main-2: seed snapshot main-2-seed is {said}")]
        );
    }
}

#[test]
fn a_failed_seed_is_deleted_to_be_taken_again() {
    let c = cluster(zfs(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = seeding(&b);
    o.snapshots
        .insert("main-2-seed".into(), seed("main-2-seed", Some("Failed")));
    let (steps, building, _) = second(&b, &o);
    assert_eq!(steps, ["delete EbsSnapshot main-2-seed", "warn SeedFailed"]);
    assert_eq!(
        building,
        ["main-2: its seed snapshot failed, taking another"]
    );
}

#[test]
fn a_completed_seed_gives_the_pool_it_is_restored_from() {
    let c = cluster(zfs(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = seeding(&b);
    o.snapshots
        .insert("main-2-seed".into(), seed("main-2-seed", Some("Completed")));
    let (steps, _, p) = second(&b, &o);
    assert_eq!(steps, ["apply ZfsPool main-2 then PoolCreated"]);
    let pool = body_of(&p.steps, "ZfsPool", "main-2");
    assert_eq!(
        pool["spec"]["restoreFrom"]["ebsSnapshotName"],
        "main-2-seed"
    );
    let Some(Step::Apply {
        then: Some((_, _, said)),
        ..
    }) = p.steps.last()
    else {
        panic!()
    };
    assert_eq!(
        said,
        "created ZfsPool main-2 on node node-b, restored from EbsSnapshot main-2-seed"
    );
}

#[test]
fn the_seed_goes_once_its_instance_streams() {
    let c = cluster(zfs(2));
    let b = Builder::new(&c, "img").unwrap();
    let two = rec(2, "node-b", Some("main-2-seed"));
    let mut o = seeding(&b);
    o.snapshots
        .insert("main-2-seed".into(), seed("main-2-seed", Some("Completed")));
    o.pools.insert("main-2".into(), stored_pool(&b, &two, true));
    o.pvcs.insert("main-2".into(), stored_pvc(&b, &two));
    o.pvcs.insert("main-2-wal".into(), stored_wal_pvc(&b, &two));
    let at = |o: &mut Observed, streaming: bool| {
        let report = Some(replica_report(streaming));
        let pod = stored_pod(&b, &two, PodRole::Replica, report);
        o.pods.insert("main-2".into(), pod);
        let (steps, _, _) = second(&b, o);
        steps
            .into_iter()
            .filter(|s| s.contains("EbsSnapshot"))
            .collect::<Vec<_>>()
    };
    assert!(at(&mut o, false).is_empty(), "not streaming yet");
    assert_eq!(
        at(&mut o, true),
        ["delete EbsSnapshot main-2-seed then SeedDeleted"]
    );
    let going = being_deleted(seed("main-2-seed", Some("Completed")));
    o.snapshots.insert("main-2-seed".into(), going);
    assert!(at(&mut o, true).is_empty(), "already going");
    o.snapshots.clear();
    assert!(at(&mut o, true).is_empty(), "already gone");
}

#[test]
fn a_lost_primarys_pod_is_not_made_again_while_a_replica_can_take_over() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = primary_pod_gone(&b);
    let (p, steps) = instance_steps(&b, &o, Some(Duration::from_secs(10)));
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(
        p.building,
        ["main-1: the primary's Pod is gone; failing over after the grace period"]
    );
    assert!(p.urgent, "the loss is timed");
    assert_eq!(p.roles.target.as_deref(), Some("main-1"));

    // Fenced already (recorded so): nothing to hide, its Pod is made again, fenced.
    let mut fenced = o.clone();
    fenced.status.instances[0].fenced = true;
    let (p, steps) = instance_steps(&b, &fenced, Some(Duration::from_secs(10)));
    assert_eq!(steps, ["apply Pod main-1 then PodCreated"]);
    assert!(p.building.is_empty(), "{:?}", p.building);

    // No replica that can take over: the Pod is made again.
    o.pods.clear();
    let (_, steps) = instance_steps(&b, &o, Some(Duration::from_secs(10)));
    assert_eq!(
        steps,
        [
            "apply Pod main-1 then PodCreated",
            "apply Pod main-2 then PodCreated"
        ]
    );
}

#[test]
fn past_the_grace_the_lost_primary_is_fenced_and_its_pod_made_fenced() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let o = primary_pod_gone(&b);
    let (p, steps) = instance_steps(&b, &o, Some(GRACE));
    assert_eq!(p.roles.fence, ["main-1"]);
    let started = Some((Transition::Failover, "main-1".into(), "main-2".into()));
    assert_eq!(p.roles.started, started);
    assert!(p.recs[0].fenced && p.members[0].fenced);
    // The replica being promoted is kept from Karpenter's consolidation meanwhile.
    assert_eq!(
        steps,
        [
            "apply Pod main-1 then PodCreated".to_string(),
            format!("apply Pod main-2 as {MARKS_MANAGER}")
        ]
    );
    let marks = body_of(&p.steps, "Pod", "main-2");
    assert_eq!(
        marks["metadata"]["annotations"][names::DO_NOT_DISRUPT],
        "true"
    );
    let pod = body_of(&p.steps, "Pod", "main-1");
    assert_eq!(pod["metadata"]["annotations"][names::FENCED], "true");
    let Step::Apply {
        then: Some((_, _, said)),
        ..
    } = &p.steps[0]
    else {
        panic!()
    };
    assert_eq!(said, "created Pod main-1 on node node-a (fenced)");
    assert!(p.urgent);
}

#[test]
fn a_live_pod_fenced_is_annotated_by_the_marks_manager() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = primary_pod_gone(&b);
    let one = rec(1, "node-a", None);
    let pod = stored_pod(&b, &one, PodRole::Primary, Some(primary_report()));
    o.pods.insert("main-1".into(), pod);
    // Its node is NotReady: lost, though its Pod is there.
    o.nodes[0].ready = Some(false);
    let (p, steps) = instance_steps(&b, &o, Some(GRACE));
    assert_eq!(p.roles.fence, ["main-1"]);
    assert_eq!(
        steps,
        [
            format!("apply Pod main-1 as {MARKS_MANAGER} then Fencing"),
            format!("apply Pod main-2 as {MARKS_MANAGER}")
        ]
    );
    let marks = body_of(&p.steps, "Pod", "main-1");
    assert!(marks.get("spec").is_none(), "the marks only");
    assert_eq!(marks["metadata"]["annotations"][names::FENCED], "true");
}

#[test]
fn a_pod_being_deleted_is_waited_for() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = primary_pod_gone(&b);
    let two = rec(2, "node-b", Some(PG_BASEBACKUP));
    let pod = stored_pod(&b, &two, PodRole::Replica, Some(replica_report(true)));
    o.pods.insert("main-2".into(), being_deleted(pod));
    let (p, _) = instance_steps(&b, &o, None);
    assert!(
        p.building
            .contains(&"main-2: its Pod is being deleted".to_string())
    );
    assert!(describe(&p.steps).iter().all(|s| !s.contains("main-2")));
}

#[test]
fn a_single_outdated_instance_is_restarted_in_place() {
    let c = cluster(ext4(1));
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, r) = single(true);
    o.pvcs.insert("main-1".into(), stored_pvc(&b, &r));
    let mut pod = stored_pod(&b, &r, PodRole::Primary, Some(primary_report()));
    pod.spec.as_mut().unwrap().containers[0].image = Some("postgres:old".into());
    pod.metadata.uid = Some("uid-1".into());
    o.pods.insert("main-1".into(), pod);
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(steps, ["delete Pod main-1 then RollingUpdate"]);
    // Only that very Pod (a precondition on its uid).
    let Step::Delete { body, .. } = &p.steps[0] else {
        panic!()
    };
    assert_eq!(body["metadata"]["uid"], "uid-1");
    assert_eq!(
        p.rollout.as_deref(),
        Some("0 of 1 instances updated; restarting main-1")
    );
}

#[test]
fn a_pod_is_outdated_by_the_digest_it_was_made_with_not_by_how_the_apiserver_stores_it() {
    let mut spec = ext4(1);
    spec["resources"] = json!({"requests": {"cpu": "0.5"}});
    let c = cluster(spec);
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, r) = single(true);
    o.pvcs.insert("main-1".into(), stored_pvc(&b, &r));
    // As stored: the quantity rewritten by the apiserver, the digest annotation kept.
    let mut v = b.pod(&as_instance(&r, PodRole::Primary));
    v["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("500m");
    v["metadata"]["annotations"][names::INSTANCE_STATUS] = json!(primary_report().to_string());
    v["status"] = json!({"phase": "Running"});
    o.pods
        .insert("main-1".into(), serde_json::from_value(v.clone()).unwrap());
    let (p, steps) = instance_steps(&b, &o, None);
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(p.rollout, None);

    // The cluster's spec changed since: outdated, the first difference named.
    v["metadata"]["annotations"][names::POD_SPEC] = json!("0123456789abcdef");
    v["spec"]["containers"][0]["image"] = json!("old");
    o.pods
        .insert("main-1".into(), serde_json::from_value(v).unwrap());
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(steps, ["delete Pod main-1 then RollingUpdate"]);
    let Step::Delete {
        then: Some((_, _, said)),
        ..
    } = &p.steps[0]
    else {
        panic!()
    };
    assert!(said.contains("spec.containers[postgres].image"), "{said}");
}

/// The pair serving, `outdated` running an older image.
fn pair_with_old_image(b: &Builder, outdated: &[&str]) -> Observed {
    let (mut o, _) = serving_pair(b);
    for name in outdated {
        let pod = o.pods.get_mut(*name).unwrap();
        pod.spec.as_mut().unwrap().containers[0].image = Some("postgres:old".into());
    }
    o
}

#[test]
fn a_new_image_rolls_the_replica_first_then_switches_over_then_the_old_primary() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let o = pair_with_old_image(&b, &["main-1", "main-2"]);
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(steps, ["delete Pod main-2 then RollingUpdate"]);
    assert_eq!(p.roles.started, None);

    // The replica updated: a switchover to it, said as the roll's.
    let mut o = pair_with_old_image(&b, &["main-1"]);
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(
        p.roles.started,
        Some((Transition::Switchover, "main-1".into(), "main-2".into()))
    );
    assert!(
        steps.contains(&"note RollingUpdate".to_string()),
        "{steps:?}"
    );
    assert!(!steps.iter().any(|s| s.starts_with("delete")), "{steps:?}");
    assert_eq!(
        p.rollout.as_deref(),
        Some("1 of 2 instances updated; switching over to main-2")
    );

    // Done: the old primary, a replica now, is restarted.
    o.status.current_primary = Some("main-2".into());
    o.status.target_primary = Some("main-2".into());
    let recs = [
        rec(1, "node-a", None),
        rec(2, "node-b", Some(PG_BASEBACKUP)),
    ];
    let mut demoted = stored_pod(&b, &recs[0], PodRole::Primary, Some(replica_report(true)));
    demoted.spec.as_mut().unwrap().containers[0].image = Some("postgres:old".into());
    o.pods.insert("main-1".into(), demoted);
    let promoted = stored_pod(&b, &recs[1], PodRole::Primary, Some(primary_report()));
    o.pods.insert("main-2".into(), promoted);
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(p.roles.started, None);
    assert!(
        steps.contains(&"delete Pod main-1 then RollingUpdate".to_string()),
        "{steps:?}"
    );

    // spec.primary pinning the old primary holds the roll, and says so.
    let mut spec = ext4(2);
    spec["primary"] = json!("main-1");
    let c = cluster(spec);
    let b = Builder::new(&c, "img").unwrap();
    let o = pair_with_old_image(&b, &["main-1"]);
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(p.roles.started, None);
    assert!(!steps.iter().any(|s| s.starts_with("delete")), "{steps:?}");
    assert!(p.rollout.unwrap().contains("spec.primary keeps main-1"));
}

#[test]
fn no_pod_is_restarted_while_the_primary_changes() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = pair_with_old_image(&b, &["main-1", "main-2"]);
    // A drain moves the primary: the roll waits for it.
    o.nodes[0].unschedulable = true;
    let (p, steps) = instance_steps(&b, &o, None);
    assert!(p.roles.started.is_some());
    assert!(!steps.iter().any(|s| s.starts_with("delete")), "{steps:?}");
}

#[test]
fn the_role_label_follows_the_decision_once_the_identity_is_stored() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, recs) = pair(&b);
    // Made before the identity was recorded: neither routed yet.
    let report = [primary_report(), replica_report(true)];
    for (r, report) in recs.iter().zip(report) {
        let pod = stored_pod(&b, r, PodRole::Unrouted, Some(report));
        o.pods.insert(r.name.clone(), pod);
    }
    let (_, steps) = instance_steps(&b, &o, None);
    assert_eq!(
        steps,
        [format!("apply Pod main-2 as {MARKS_MANAGER}")],
        "the replica is labelled, the primary is not until the identity is stored"
    );

    o.status.system_identifier = Some(ID.into());
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(
        steps,
        [
            format!("apply Pod main-1 as {MARKS_MANAGER}"),
            format!("apply Pod main-2 as {MARKS_MANAGER}"),
        ]
    );
    let marks = body_of(&p.steps, "Pod", "main-1");
    assert_eq!(
        marks["metadata"]["labels"][names::ROLE],
        names::ROLE_PRIMARY
    );
}

#[test]
fn a_switchover_in_progress_is_urgent() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let mut o = primary_pod_gone(&b);
    o.status.target_primary = Some("main-2".into());
    let (p, _) = instance_steps(&b, &o, None);
    assert_eq!(p.roles.target.as_deref(), Some("main-2"));
    assert!(p.urgent);
}

// What comes after the apply.

#[test]
fn the_summary_puts_what_the_apply_found_first_and_joins_the_spec_errors() {
    let mut spec = ext4(1);
    spec["backups"] = json!({"pgbackrest": {"s3": {"bucket": "b-1", "region": "eu-west-1",
        "endpoint": "http://minio:9000"}}});
    spec["postgresql"] = json!({"parameters": {"work_mem": "4MB\n"}});
    let c = cluster(spec);
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, r) = single(false);
    let pod = stored_pod(&b, &r, PodRole::Unrouted, Some(primary_report()));
    o.pods.insert("main-1".into(), pod);
    let l = layout(&b, &o);
    let mut p = plan(&b, &o, &l, None, GRACE);
    p.building.push("main-1: something".into());
    let s = summary(&b, &o, &l, &p, vec!["Secret main-app is missing".into()]);
    assert_eq!(
        s.building,
        ["Secret main-app is missing", "main-1: something"]
    );
    assert_eq!(s.spec_errors.len(), 2, "{:?}", s.spec_errors);
    assert!(s.spec_errors[1].contains("ConfigMap main-config is left as it was"));
    assert_eq!(s.system_identifier.as_deref(), Some(ID), "to be recorded");
    assert_eq!((s.desired, s.current.as_deref()), (1, Some("main-1")));
    assert!(s.pgbackrest.configured && s.pgbackrest.report.is_some());
    assert_eq!(s.instances.len(), 1);
}

#[test]
fn requeue_is_soon_while_the_primary_changes_then_at_the_progress_or_ready_pace() {
    let pace = Requeue::default();
    let c = cluster(ext4(1));
    let b = Builder::new(&c, "img").unwrap();
    let o = fresh();
    let l = layout(&b, &o);
    let mut p = plan(&b, &o, &l, None, GRACE);
    let mut s = summary(&b, &o, &l, &p, vec![]);
    assert_eq!(requeue(&p, &s, &pace), pace.ready);
    s.unplaced = Some("no node".into());
    assert_eq!(requeue(&p, &s, &pace), pace.progress);
    s.unplaced = None;
    s.building.push("main-1: waiting".into());
    assert_eq!(requeue(&p, &s, &pace), pace.progress);
    p.urgent = true;
    assert_eq!(requeue(&p, &s, &pace), CHANGING);
}

/// `bootstrap.snapshot`: the first instance's pool is restored from the user's EbsSnapshot
/// once it is Completed and of a ZFS pool. Until then no pool is made and the cluster says
/// why; the operator never takes, deletes or replaces that snapshot.
#[test]
fn a_bootstrap_snapshot_restores_the_first_pool_once_usable_and_is_never_touched() {
    let mut spec = zfs(2);
    spec["bootstrap"] = json!({"snapshot": {"name": "nightly"}});
    let c = cluster(spec);
    let b = Builder::new(&c, "img").unwrap();
    let l = layout(&b, &fresh());
    let seeded: Vec<_> = l.recs.iter().map(|r| r.seeded_from.clone()).collect();
    assert_eq!(seeded, [Some("nightly".into()), Some("main-2-seed".into())]);

    let user = |status: Value| -> EbsSnapshot {
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
            "metadata": {"name": "nightly", "namespace": "db"},
            "spec": {"source": {"cluster": {"name": "source"}}},
            "status": status,
        }))
        .unwrap()
    };
    let first = |o: &Observed| {
        let (p, steps) = instance_steps(&b, o, None);
        let steps: Vec<String> = steps
            .into_iter()
            .filter(|s| {
                s.contains("ZfsPool") || s.contains("EbsSnapshot") || s.contains("Bootstrap")
            })
            .collect();
        let waits: Vec<String> = p
            .building
            .iter()
            .filter(|w| w.starts_with("main-1:"))
            .cloned()
            .collect();
        (steps, waits, p)
    };
    // Not on the node the snapshot was taken on (its pool's GUID is imported there).
    let mut o = fresh();
    o.snapshots.insert(
        "nightly".into(),
        user(json!({"phase": "Completed", "nodeName": "node-a", "zfsPool": "source-1"})),
    );
    let l = layout(&b, &o);
    assert_eq!(l.recs[0].node, "node-b", "{:?}", l.recs);
    let cases = [
        (None, "does not exist in this namespace"),
        (
            Some(json!({"phase": "Capturing"})),
            "is Capturing, not Completed",
        ),
        (
            Some(json!({"phase": "Failed"})),
            "failed: nothing can be restored from it",
        ),
        (
            Some(json!({"phase": "Completed", "source": "PersistentVolumeClaim/data"})),
            "is not of a ZFS pool (PersistentVolumeClaim/data)",
        ),
    ];
    for (status, said) in cases {
        o.snapshots.clear();
        if let Some(st) = status {
            o.snapshots.insert("nightly".into(), user(st));
        }
        let (steps, waits, _) = first(&o);
        assert_eq!(steps, ["warn BootstrapSnapshotNotReady"], "{said}");
        assert_eq!(waits.len(), 1, "{waits:?}");
        assert!(
            waits[0].contains("EbsSnapshot nightly (spec.bootstrap.snapshot)")
                && waits[0].contains(said),
            "{waits:?}"
        );
    }
    o.snapshots.insert(
        "nightly".into(),
        user(json!({"phase": "Completed", "source": "PgmlCluster/source", "zfsPool": "source-1"})),
    );
    let (steps, waits, p) = first(&o);
    assert_eq!(steps, ["apply ZfsPool main-1 then PoolCreated"]);
    assert!(waits.iter().all(|w| !w.contains("nightly")), "{waits:?}");
    let pool = body_of(&p.steps, "ZfsPool", "main-1");
    assert_eq!(pool["spec"]["restoreFrom"]["ebsSnapshotName"], "nightly");

    // The restored primary runs and main-1 is recorded as seeded from it: the snapshot stays.
    let one = rec(1, "node-a", Some("nightly"));
    o.status = recorded_as(std::slice::from_ref(&one), "main-1");
    o.status.system_identifier = Some(ID.into());
    o.pools.insert("main-1".into(), stored_pool(&b, &one, true));
    o.pvcs.insert("main-1".into(), stored_pvc(&b, &one));
    let pod = stored_pod(&b, &one, PodRole::Primary, Some(primary_report()));
    o.pods.insert("main-1".into(), pod);
    let (p, steps) = instance_steps(&b, &o, None);
    assert!(
        steps.iter().all(|s| !s.contains("EbsSnapshot nightly")),
        "{steps:?}"
    );
    assert!(
        body_of(&p.steps, "EbsSnapshot", "main-2-seed")["spec"]["source"]["cluster"]["instance"]
            == "main-1"
    );
}

/// A user's `bootstrap.snapshot` named like the operator's seed of the first instance
/// (`main-1-seed`) is still the user's: a Failed one is reported, not deleted and taken
/// again, and it is not deleted when that instance streams (a replica after a failover).
#[test]
fn a_bootstrap_snapshot_named_like_a_seed_is_still_never_deleted() {
    let mut spec = zfs(2);
    spec["bootstrap"] = json!({"snapshot": {"name": "main-1-seed"}});
    let c = cluster(spec);
    let b = Builder::new(&c, "img").unwrap();
    let mut o = fresh();
    o.snapshots
        .insert("main-1-seed".into(), seed("main-1-seed", Some("Failed")));
    let (_, steps) = instance_steps(&b, &o, None);
    assert!(
        steps.iter().all(|s| !s.contains("EbsSnapshot main-1-seed")),
        "{steps:?}"
    );
    assert!(
        steps.contains(&"warn BootstrapSnapshotNotReady".to_string()),
        "{steps:?}"
    );

    // main-1 restored from it, now a streaming replica of main-2.
    let one = rec(1, "node-a", Some("main-1-seed"));
    let two = rec(2, "node-b", Some("main-2-seed"));
    o.snapshots
        .insert("main-1-seed".into(), seed("main-1-seed", Some("Completed")));
    o.status = recorded_as(&[one.clone(), two.clone()], "main-2");
    o.status.system_identifier = Some(ID.into());
    o.pools.insert("main-1".into(), stored_pool(&b, &one, true));
    o.pvcs.insert("main-1".into(), stored_pvc(&b, &one));
    let pod = stored_pod(&b, &one, PodRole::Replica, Some(replica_report(true)));
    o.pods.insert("main-1".into(), pod);
    let (_, steps) = instance_steps(&b, &o, None);
    assert!(
        steps
            .iter()
            .all(|s| !s.contains("delete EbsSnapshot main-1-seed")),
        "{steps:?}"
    );
}

// Node life.

/// The ext4 pair serving: main-1 the primary on node-a, main-2 streaming on node-b.
fn serving_pair(b: &Builder) -> (Observed, [Rec; 2]) {
    let (mut o, recs) = pair(b);
    o.status.system_identifier = Some(ID.into());
    let primary = stored_pod(b, &recs[0], PodRole::Primary, Some(primary_report()));
    let replica = stored_pod(b, &recs[1], PodRole::Replica, Some(replica_report(true)));
    o.pods.insert("main-1".into(), primary);
    o.pods.insert("main-2".into(), replica);
    (o, recs)
}

#[test]
fn a_drained_primary_is_switched_away_from_and_no_pod_is_made_on_its_node_until_it_is_back() {
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, recs) = serving_pair(&b);
    o.nodes[0].unschedulable = true;

    // A switchover to main-2 starts; both Pods it is between are kept from Karpenter's
    // consolidation meanwhile.
    let (p, steps) = instance_steps(&b, &o, None);
    assert_eq!(
        p.roles.started,
        Some((Transition::Switchover, "main-1".into(), "main-2".into()))
    );
    assert!(p.urgent);
    for pod in ["main-1", "main-2"] {
        let marks = body_of(&p.steps, "Pod", pod);
        assert_eq!(
            marks["metadata"]["annotations"][names::DO_NOT_DISRUPT],
            "true",
            "{pod}: {steps:?}"
        );
    }
    assert_eq!(
        p.members[0].leaving.as_deref(),
        Some("node node-a is cordoned")
    );

    // Done: main-2 the primary, main-1's Pod evicted. It is not made again on the cordoned
    // node (a drain would evict it again), and no Pod is protected any more.
    o.status.current_primary = Some("main-2".into());
    o.status.target_primary = Some("main-2".into());
    o.pods.remove("main-1");
    let promoted = stored_pod(&b, &recs[1], PodRole::Replica, Some(primary_report()));
    o.pods.insert("main-2".into(), promoted);
    let (p, steps) = instance_steps(&b, &o, None);
    assert!(
        !steps.iter().any(|s| s.starts_with("apply Pod main-1")),
        "{steps:?}"
    );
    let waits = p.building.join("; ");
    assert!(waits.contains("main-1: node node-a is cordoned"), "{waits}");
    let marks = body_of(&p.steps, "Pod", "main-2");
    assert!(marks["metadata"].get("annotations").is_none(), "{marks}");

    // Uncordoned: made again.
    o.nodes[0].unschedulable = false;
    let (_, steps) = instance_steps(&b, &o, None);
    assert!(
        steps.contains(&"apply Pod main-1 then PodCreated".to_string()),
        "{steps:?}"
    );
}

#[test]
fn a_new_instance_is_not_placed_on_a_node_tainted_for_disruption_even_when_tolerated() {
    let mut spec = zfs(1);
    spec["tolerations"] = json!([{"operator": "Exists"}]);
    let c = cluster(spec);
    let b = Builder::new(&c, "img").unwrap();
    let mut o = fresh();
    o.nodes[0].taints = vec![k8s_openapi::api::core::v1::Taint {
        key: "karpenter.sh/disrupted".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    }];
    let l = layout(&b, &o);
    assert_eq!(l.recs[0].node, "node-b");
}

#[test]
fn the_budgets_hold_the_primary_and_let_one_replica_go_at_a_time() {
    let budgets = |spec: Value| {
        let c = cluster(spec);
        let b = Builder::new(&c, "img").unwrap();
        let l = layout(&b, &fresh());
        ["main-primary", "main-replicas"].map(|n| {
            let body = body_of(&l.steps, "PodDisruptionBudget", n);
            let sel = &body["spec"]["selector"]["matchLabels"];
            assert_eq!(sel["pgml.io/cluster"], "main");
            (
                sel["pgml.io/role"].as_str().unwrap().to_string(),
                body["spec"]["minAvailable"].as_i64().unwrap(),
            )
        })
    };
    let p = || ("primary".to_string(), 1);
    let r = |n| ("replica".to_string(), n);
    assert_eq!(budgets(zfs(3)), [p(), r(1)]);
    assert_eq!(budgets(zfs(2)), [p(), r(0)]);
    assert_eq!(budgets(zfs(1)), [p(), r(0)]);
    assert_eq!(budgets(zfs(5)), [p(), r(3)]);
    let mut off = zfs(3);
    off["enablePDB"] = json!(false);
    assert_eq!(budgets(off), [("primary".to_string(), 0), r(0)]);
}

#[test]
fn parameters_waiting_for_a_restart_are_not_rolled() {
    // Reported by one instance before another has the new configuration, they would
    // switch the primary back and forth (see `outdated`).
    let c = cluster(ext4(2));
    let b = Builder::new(&c, "img").unwrap();
    let (mut o, recs) = serving_pair(&b);
    let mut pending = primary_report();
    pending["pendingRestart"] = json!(["shared_buffers"]);
    let primary = stored_pod(&b, &recs[0], PodRole::Primary, Some(pending));
    o.pods.insert("main-1".into(), primary);
    let (p, steps) = instance_steps(&b, &o, None);
    assert!(steps.is_empty() && p.rollout.is_none(), "{steps:?}");
    assert_eq!(p.roles.started, None);
}
