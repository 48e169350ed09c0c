//! GitOps with Argo CD, on the sandbox with the real operator and node agent: the examples
//! (a ZfsPool, an EbsSnapshot of it, a PgmlCluster) are applied as Argo CD applies them with
//! `ServerSideApply=true` (server-side apply, field manager `argocd-controller`, its
//! tracking annotation), and then:
//! - the health checks (docs/argocd/health, run as Argo CD runs them) say Progressing at
//!   every look while the object is provisioned, and Healthy once it is Ready / Completed;
//! - nothing drifts from Git: `metadata.generation` is still 1, no field manager but Argo
//!   CD's owns anything under `spec` (the operator and agent own `status`, their finalizer
//!   and `pgml.io/*` labels), a dry-run apply of the Git manifest (Argo CD's server-side
//!   diff) returns the live spec and generation, every field in Git reads back unchanged
//!   (Argo CD's default diff), and applying the manifest again changes nothing;
//! - a change in Git (the pool's volumes grow) is Progressing until the operator has
//!   observed and done it, then Healthy and synced on generation 2;
//! - a spec the schema lets through and the operator refuses (recordsize 3K) is Degraded
//!   with the operator's reason, still with no spec written by anyone but Argo CD.

mod argocd_common;
mod snapshot_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use argocd_common::{Health, health_of};
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use pgml_testbed::manifests::missing_or_changed;
use pgml_testbed::sandbox::repo_root;
use pgml_testbed::wait::wait_gone;
use serde_json::{Value, json};
use snapshot_common::{Fixture, READY_TIMEOUT, SNAPSHOT_TIMEOUT};

/// Argo CD's field manager for server-side apply.
const ARGOCD: &str = "argocd-controller";
const APP: &str = "databases";

/// An example from examples/, as JSON.
fn example(file: &str) -> Value {
    let path = repo_root().join("examples").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// What Argo CD sends: the manifest in the destination namespace with its tracking
/// annotation.
fn as_argocd_sends(mut m: Value, ns: &str) -> Value {
    let kind = m["kind"].as_str().unwrap().to_string();
    let name = m["metadata"]["name"].as_str().unwrap().to_string();
    m["metadata"]["namespace"] = json!(ns);
    m["metadata"]["annotations"] = json!({
        "argocd.argoproj.io/tracking-id": format!("{APP}:pgml.io/{kind}:{ns}/{name}"),
    });
    m
}

fn api_of(f: &Fixture, kind: &str) -> Api<DynamicObject> {
    let ar = match kind {
        "ZfsPool" => ApiResource::erase::<ZfsPool>(&()),
        "EbsSnapshot" => ApiResource::erase::<EbsSnapshot>(&()),
        "PgmlCluster" => ApiResource::erase::<PgmlCluster>(&()),
        _ => panic!("kind {kind}"),
    };
    Api::namespaced_with(f.ns.client().clone(), f.name(), &ar)
}

/// Server-side apply of `m` as Argo CD (no force: a conflict with another manager fails).
async fn argocd_apply(api: &Api<DynamicObject>, m: &Value, dry_run: bool) -> Value {
    let name = m["metadata"]["name"].as_str().unwrap();
    let mut pp = PatchParams::apply(ARGOCD);
    pp.dry_run = dry_run;
    let obj = api
        .patch(name, &pp, &Patch::Apply(m))
        .await
        .unwrap_or_else(|e| {
            panic!("server-side apply of {name} as {ARGOCD} (dry run {dry_run}): {e}")
        });
    serde_json::to_value(obj).unwrap()
}

async fn live(api: &Api<DynamicObject>, name: &str) -> Value {
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

fn conditions_true(o: &Value, t: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
}

/// Polls the live object until `done`, running its health check at every look: before
/// `done`, it must be Progressing. Returns the object and the distinct healths seen.
async fn watch_health(
    f: &Fixture,
    api: &Api<DynamicObject>,
    name: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> (Value, Vec<Health>) {
    let start = Instant::now();
    let mut seen: Vec<Health> = Vec::new();
    loop {
        let o = live(api, name).await;
        if done(&o) {
            return (o, seen);
        }
        let h = health_of(&o);
        assert_eq!(
            h.status,
            "Progressing",
            "{name} while provisioning: {h:?}\nstatus: {}\n{}",
            o["status"],
            f.logs()
        );
        if seen.last() != Some(&h) {
            println!("{name}: {} \"{}\"", h.status, h.message);
            seen.push(h);
        }
        assert!(
            start.elapsed() < timeout,
            "{name} not done after {timeout:?}; status: {}\n{}",
            o["status"],
            f.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The top-level keys of a managedFields `fieldsV1` under `at` (e.g. `f:metadata`).
fn keys_at<'a>(fields: &'a Value, at: &str) -> BTreeSet<&'a str> {
    fields[at]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Checks what each field manager owns: Argo CD owns the spec in Git, every other manager
/// only `status`, finalizers and `pgml.io/*` labels or annotations. Returns manager →
/// owned paths, for the log, or what is owned by whom it should not be.
fn check_owners(o: &Value) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let name = o["metadata"]["name"].as_str().unwrap();
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let entries = o["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    let mut argocd_owns_spec = false;
    for e in entries {
        let manager = e["manager"].as_str().unwrap_or("?").to_string();
        let sub = e["subresource"].as_str().unwrap_or("");
        let fields = &e["fieldsV1"];
        let owned = owners
            .entry(format!(
                "{manager} ({} {sub})",
                e["operation"].as_str().unwrap_or("?")
            ))
            .or_default();
        for top in fields
            .as_object()
            .map(|m| m.keys().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if top == "f:metadata" {
                for k in keys_at(fields, "f:metadata") {
                    match k {
                        "f:labels" | "f:annotations" => {
                            for key in keys_at(&fields["f:metadata"], k) {
                                owned.insert(format!("metadata.{}.{}", &k[2..], &key[2..]));
                            }
                        }
                        _ => {
                            owned.insert(format!("metadata.{}", &k[2..]));
                        }
                    }
                }
            } else {
                owned.insert(top[2..].to_string());
            }
        }
        if manager == ARGOCD {
            argocd_owns_spec |= fields.get("f:spec").is_some();
            continue;
        }
        for path in owned.iter() {
            let allowed = path == "status"
                || path == "metadata.finalizers"
                || path.starts_with("metadata.labels.pgml.io/")
                || path.starts_with("metadata.annotations.pgml.io/");
            if !allowed {
                return Err(format!(
                    "{name}: manager {manager} owns {path}, which is Git's (managedFields: {e})"
                ));
            }
        }
    }
    if !argocd_owns_spec {
        return Err(format!("{name}: {ARGOCD} owns no spec: {entries:?}"));
    }
    Ok(owners)
}

/// `o` without what changes with every write (resourceVersion, managedFields' times) and
/// without status.
fn comparable(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    o
}

/// The no-drift checks of the module doc on the live object `o` and the Git manifest `m`.
/// `generation`: the number of specs Argo CD applied (1, or 2 after a change in Git).
async fn assert_synced(api: &Api<DynamicObject>, m: &Value, o: &Value, generation: i64) {
    let name = m["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        o["metadata"]["generation"],
        json!(generation),
        "{name}: the spec was written after Argo CD's apply: {}",
        o["metadata"]["managedFields"]
    );
    let owners = check_owners(o).unwrap_or_else(|e| panic!("{e}"));
    println!("{name}: field owners {owners:#?}");
    // Every manager has a name (the binaries send a User-Agent): none is `unknown`, the
    // name the apiserver gives writes that carry neither a field manager nor a User-Agent.
    let unnamed: Vec<&String> = owners.keys().filter(|k| k.starts_with("unknown")).collect();
    assert!(
        unnamed.is_empty(),
        "{name}: unnamed field managers {unnamed:?}: {owners:#?}"
    );

    // Argo CD's default diff: every field in Git reads back as written (the schema's
    // defaults are more fields, not a change).
    if let Some(d) = missing_or_changed(&m["spec"], &o["spec"], "spec") {
        panic!("{name}: Git and live differ: {d}");
    }
    if let Some(d) = missing_or_changed(
        &m["metadata"]["annotations"],
        &o["metadata"]["annotations"],
        "metadata.annotations",
    ) {
        panic!("{name}: {d}");
    }

    // Server-side diff: a dry-run apply of Git changes neither spec nor generation.
    let dry = argocd_apply(api, m, true).await;
    assert_eq!(
        dry["spec"], o["spec"],
        "{name}: a dry-run apply of Git changes the spec"
    );
    assert_eq!(
        dry["metadata"]["generation"], o["metadata"]["generation"],
        "{name}: dry run"
    );
    assert_eq!(
        comparable(&dry),
        comparable(o),
        "{name}: a dry-run apply of Git changes the object"
    );

    // Syncing again (Argo CD's periodic apply) writes nothing outside status.
    let again = argocd_apply(api, m, false).await;
    let now = live(api, name).await;
    assert_eq!(
        comparable(&again),
        comparable(o),
        "{name}: applying Git again changed it"
    );
    assert_eq!(now["metadata"]["generation"], json!(generation), "{name}");
}

#[tokio::test]
async fn examples_applied_as_argocd_become_healthy_and_stay_synced() {
    let f = Fixture::start("argosync", &[0]).await;
    let node = &f.sb.nodes[0];
    let ns = f.name().to_string();

    // examples/zfspool-raid0-gp3.yaml, on a sandbox node, 1-GiB volumes, two of them, and
    // reclaimPolicy Delete so the test leaves no volume.
    let pool_name = f.unique("analytics");
    let mut pool = example("zfspool-raid0-gp3.yaml");
    pool["metadata"]["name"] = json!(pool_name);
    pool["spec"]["nodeName"] = json!(node.name);
    pool["spec"]["volumes"]["count"] = json!(2);
    pool["spec"]["volumes"]["sizeGiB"] = json!(1);
    pool["spec"]["reclaimPolicy"] = json!("Delete");
    let pool = as_argocd_sends(pool, &ns);
    let pools = api_of(&f, "ZfsPool");
    let applied = argocd_apply(&pools, &pool, false).await;
    assert_eq!(applied["metadata"]["generation"], json!(1));

    let (ready, seen) = watch_health(&f, &pools, &pool_name, READY_TIMEOUT, |o| {
        conditions_true(o, "Ready")
    })
    .await;
    assert!(!seen.is_empty(), "the pool was never seen provisioning");
    let h = health_of(&ready);
    assert_eq!(h.status, "Healthy", "{h:?}");
    assert!(h.message.starts_with("PoolOnline: pool "), "{h:?}");
    assert_synced(&pools, &pool, &ready, 1).await;

    // examples/ebssnapshot-zfspool.yaml, of that pool.
    let mut snap = example("ebssnapshot-zfspool.yaml");
    snap["spec"]["source"]["zfsPool"]["name"] = json!(pool_name);
    let snap = as_argocd_sends(snap, &ns);
    let snap_name = snap["metadata"]["name"].as_str().unwrap().to_string();
    let snaps = api_of(&f, "EbsSnapshot");
    argocd_apply(&snaps, &snap, false).await;
    let (done, seen) = watch_health(&f, &snaps, &snap_name, SNAPSHOT_TIMEOUT, |o| {
        matches!(o["status"]["phase"].as_str(), Some("Completed" | "Failed"))
    })
    .await;
    assert_eq!(
        done["status"]["phase"],
        "Completed",
        "{}\n{}",
        done["status"],
        f.logs()
    );
    assert!(!seen.is_empty(), "the snapshot was never seen in progress");
    let h = health_of(&done);
    assert_eq!(h.status, "Healthy", "{h:?}");
    assert!(h.message.starts_with("Completed: "), "{h:?}");
    assert_synced(&snaps, &snap, &done, 1).await;

    // The pool is still Healthy and synced after its snapshot (the agent's hold, the
    // operator's label on the snapshot).
    let pool_now = live(&pools, &pool_name).await;
    assert_eq!(health_of(&pool_now).status, "Healthy");
    assert_synced(&pools, &pool, &pool_now, 1).await;

    // A change in Git: the volumes grow to 2 GiB. Progressing at every look (the new
    // generation not yet observed, then EBS modifying the volumes) until Ready again on
    // generation 2; then synced as before.
    let mut grown = pool.clone();
    grown["spec"]["volumes"]["sizeGiB"] = json!(2);
    let applied = argocd_apply(&pools, &grown, false).await;
    assert_eq!(applied["metadata"]["generation"], json!(2));
    let h = health_of(&applied);
    assert_eq!(h.status, "Progressing", "right after the sync: {h:?}");
    let (regrown, _) = watch_health(&f, &pools, &pool_name, READY_TIMEOUT, |o| {
        o["status"]["observedGeneration"] == json!(2)
            && o["status"]["phase"] == "Online"
            && conditions_true(o, "Ready")
    })
    .await;
    let sizes: Vec<&Value> = regrown["status"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["sizeGiB"])
        .collect();
    assert_eq!(sizes, [&json!(2), &json!(2)], "{}", regrown["status"]);
    assert_eq!(health_of(&regrown).status, "Healthy");
    assert_synced(&pools, &grown, &regrown, 2).await;

    // A spec the schema lets through and the operator refuses: Degraded, naming why, and
    // the operator still writes no spec.
    let bad_name = f.unique("badprops");
    let mut bad = pool.clone();
    bad["metadata"]["name"] = json!(bad_name);
    bad["spec"]["datasets"][0]["properties"]["recordsize"] = json!("3K");
    let bad = as_argocd_sends(bad, &ns);
    argocd_apply(&pools, &bad, false).await;
    let (failed, _) = watch_health(&f, &pools, &bad_name, Duration::from_secs(60), |o| {
        o["status"]["phase"] == "Failed"
    })
    .await;
    let h = health_of(&failed);
    assert_eq!(h.status, "Degraded", "{h:?}");
    assert!(
        h.message
            .starts_with("Spec invalid: InvalidZfsProperty: ZFS property recordsize: 3K"),
        "{h:?}"
    );
    assert_synced(&pools, &bad, &failed, 1).await;

    // examples/pgmlcluster-minimal.yaml at the object level: placed nowhere (no node has
    // the label), so it waits Pending with every default from the schema.
    let mut cluster = example("pgmlcluster-minimal.yaml");
    cluster["spec"]["nodeSelector"] = json!({"pgml.io/e2e-no-such-node": "true"});
    cluster["spec"]["storage"]["zfs"]["template"]["volumes"]["sizeGiB"] = json!(1);
    let cluster = as_argocd_sends(cluster, &ns);
    let cluster_name = cluster["metadata"]["name"].as_str().unwrap().to_string();
    let clusters = api_of(&f, "PgmlCluster");
    argocd_apply(&clusters, &cluster, false).await;
    let (pending, _) = watch_health(&f, &clusters, &cluster_name, Duration::from_secs(60), |o| {
        o["status"]["observedGeneration"] == json!(1) && o["status"]["phase"] == "Pending"
    })
    .await;
    let h = health_of(&pending);
    assert_eq!(h.status, "Progressing", "{h:?}");
    assert!(h.message.starts_with("NoNodeAvailable: "), "{h:?}");
    assert_synced(&clusters, &cluster, &pending, 1).await;

    // Deleting: the cluster goes with its finalizer while the operator runs.
    clusters
        .delete(&cluster_name, &DeleteParams::default())
        .await
        .unwrap();
    let typed: Api<PgmlCluster> = f.ns.api();
    wait_gone(&typed, &cluster_name, Duration::from_secs(60)).await;
    f.finish().await;
}

/// The ownership check fails on what it is there to catch: another manager owning a field
/// of the spec, or a label that is not the operator's.
#[test]
fn the_owner_check_catches_spec_written_by_another_manager() {
    let obj = |other: Value| {
        json!({"metadata": {"name": "p", "managedFields": [
            {"manager": ARGOCD, "operation": "Apply", "fieldsV1": {"f:spec": {"f:nodeName": {}}}},
            other,
        ]}})
    };
    let ok = obj(
        json!({"manager": "pgml-operator", "operation": "Apply", "subresource": "status",
        "fieldsV1": {"f:status": {"f:phase": {}}}}),
    );
    check_owners(&ok).expect("status owned by the operator is fine");
    for bad in [
        json!({"manager": "pgml-operator", "operation": "Apply",
            "fieldsV1": {"f:spec": {"f:volumes": {"f:sizeGiB": {}}}}}),
        json!({"manager": "pgml-operator", "operation": "Update",
            "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}}),
    ] {
        let err = check_owners(&obj(bad.clone())).expect_err("not caught");
        assert!(err.contains("manager pgml-operator owns"), "{err}");
    }
}
