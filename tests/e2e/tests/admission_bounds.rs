//! The chart's bounds on the operator (issue 17): its ValidatingAdmissionPolicy
//! `F-operator-bounds` (templates/admission-policy.yaml), applied to the sandbox's
//! apiserver with the chart's RBAC, denies the operator's ServiceAccount Pods that reach
//! the host (hostPath volumes, privileged containers, privilege escalation, added
//! capabilities, the host's namespaces) and PersistentVolumes outside the agent's mount
//! root (hostPath, a local path elsewhere or with `..`), while what the operator really
//! makes (its instance Pod and local PV, rendered by `pgml_operator::cluster::build`)
//! passes, and other users (the admin here) are not bound by it.
//!
//! And `F-agent-bounds`: an agent's ServiceAccount writes the status of its own node's
//! ZfsPools and held EbsSnapshots only, as the node name in its Pod-bound token says.
//!
//! Every create is a dry run (`dryRun=All`): admission, and so the policy, runs, nothing is
//! stored.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, Pod, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pgml_api::PgmlCluster;
use pgml_operator::cluster::build::{Builder, Instance, PodRole};
use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client, client_of};
use pgml_testbed::rbac::{ChartAdmissionPolicy, ChartRbac, Watch};
use serde_json::{Value, json};

/// The chart's default `agent.mountRoot`.
const MOUNT_ROOT: &str = "/var/lib/pgml";
/// The ServiceAccount of the test's Pods (the instance Pod's: `<cluster>-instance`); made
/// by the test, since the ServiceAccount admission plugin refuses Pods of a missing one.
const POD_SA: &str = "main-instance";

/// A dry-run create of `obj`: Ok, or the apiserver's refusal (its message).
async fn create<K>(api: &Api<K>, obj: &Value) -> Result<(), String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let typed: K = serde_json::from_value(obj.clone())
        .unwrap_or_else(|e| panic!("not a valid object: {e}: {obj}"));
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&dry_run, &typed).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message.clone()),
        Err(e) => panic!("creating {obj}: {e}"),
    }
}

/// A plain Pod with one container, changed by `edit`.
fn pod(name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": POD_SA,
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "busybox"}],
        },
    });
    edit(&mut p["spec"]);
    p
}

/// A local PersistentVolume on node-1 at `path`.
fn local_pv(name: &str, path: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "pgml-local",
            "local": {"path": path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1"]}
            ]}]}},
        },
    })
}

/// A test namespace `prefix-…` with the chart's RBAC (watching it) and its admission
/// policies applied.
async fn chart_in_namespace(
    sb: &'static Sandbox,
    admin: &Client,
    prefix: &str,
) -> (TestNamespace, ChartRbac, ChartAdmissionPolicy) {
    let ns = TestNamespace::new(admin, prefix).await;
    let rbac = ChartRbac::install(sb, admin, ns.name(), Watch::Namespace, |_| {})
        .await
        .unwrap_or_else(|e| panic!("installing the chart's RBAC: {e:#}"));
    let policy = ChartAdmissionPolicy::install(admin, ns.name(), &[])
        .await
        .unwrap_or_else(|e| panic!("applying the chart's admission policy: {e:#}"));
    (ns, rbac, policy)
}

#[tokio::test]
async fn the_operator_may_not_create_pods_or_volumes_that_reach_the_host() {
    let sb = Sandbox::get();
    let admin = client().await;
    let (ns, rbac, policy) = chart_in_namespace(sb, &admin, "bounds").await;
    assert_eq!(policy.name, format!("{}-operator-bounds", rbac.fullname));

    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": POD_SA}})).unwrap();
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await
        .expect("creating the Pods' ServiceAccount");

    let operator = client_of(&rbac.operator_kubeconfig).await;
    let op_pods: Api<Pod> = Api::namespaced(operator.clone(), ns.name());
    let op_pvs: Api<PersistentVolume> = Api::all(operator);
    let admin_pods: Api<Pod> = ns.api();
    let admin_pvs: Api<PersistentVolume> = Api::all(admin.clone());

    // A policy is enforced some time after it is stored: until the operator's hostPath Pod
    // is refused by it. Without the policy (or with one that does not bind the operator)
    // the Pod is created (dry run) and the test fails here.
    let host_path = pod("host-path", |s| {
        s["volumes"] = json!([{"name": "host", "hostPath": {"path": "/"}}]);
        s["containers"][0]["volumeMounts"] = json!([{"name": "host", "mountPath": "/host"}]);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        match create(&op_pods, &host_path).await {
            Err(m) if m.contains(&policy.name) => break m,
            Err(m) => panic!("the operator's hostPath Pod was refused, not by the policy: {m}"),
            Ok(()) if Instant::now() > deadline => panic!(
                "the operator may still create a Pod with a hostPath volume 30 s after the policy {} was applied",
                policy.name
            ),
            Ok(()) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    assert!(
        refusal.contains("spec.volumes[].hostPath"),
        "the refusal does not name the field: {refusal}"
    );

    // Pods the operator may not make, each refused naming its field.
    let denied_pods = [
        (
            pod("privileged", |s| {
                s["containers"][0]["securityContext"] = json!({"privileged": true});
            }),
            "spec.containers[].securityContext.privileged",
        ),
        (
            pod("privileged-init", |s| {
                s["initContainers"] = json!([{"name": "i", "image": "busybox",
                    "securityContext": {"privileged": true}}]);
            }),
            "spec.initContainers[].securityContext.privileged",
        ),
        (
            pod("escalation", |s| {
                s["containers"][0]["securityContext"] = json!({"allowPrivilegeEscalation": true});
            }),
            "spec.containers[].securityContext.allowPrivilegeEscalation",
        ),
        (
            pod("capabilities", |s| {
                s["containers"][0]["securityContext"] =
                    json!({"capabilities": {"add": ["SYS_ADMIN"]}});
            }),
            "spec.containers[].securityContext.capabilities.add",
        ),
        (
            pod("host-network", |s| s["hostNetwork"] = json!(true)),
            "spec.hostNetwork",
        ),
        (
            pod("host-pid", |s| s["hostPID"] = json!(true)),
            "spec.hostPID",
        ),
        (
            pod("host-ipc", |s| s["hostIPC"] = json!(true)),
            "spec.hostIPC",
        ),
    ];
    for (p, field) in &denied_pods {
        let name = &p["metadata"]["name"];
        match create(&op_pods, p).await {
            Ok(()) => panic!("the operator may create Pod {name} ({field})"),
            Err(m) => assert!(
                m.contains(&policy.name) && m.contains(field),
                "Pod {name}: expected a refusal by {} naming {field}, got: {m}",
                policy.name
            ),
        }
    }

    // PersistentVolumes the operator may not make.
    let host_path_pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("{}-host-path", ns.name())},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": format!("{MOUNT_ROOT}/x")},
        },
    });
    // A `..` segment: the apiserver's own validation of local paths refuses it before
    // admission ("must not contain '..'"), the policy's rule says "'..' path segment" should
    // that ever change; either refusal names '..'.
    let denied_pvs = [
        (
            local_pv(&format!("{}-outside", ns.name()), "/etc"),
            "under the mount root",
        ),
        (
            local_pv(&format!("{}-root", ns.name()), MOUNT_ROOT),
            "under the mount root",
        ),
        (
            local_pv(
                &format!("{}-prefix", ns.name()),
                &format!("{MOUNT_ROOT}x/p/pgdata"),
            ),
            "under the mount root",
        ),
        (
            local_pv(
                &format!("{}-dotdot", ns.name()),
                &format!("{MOUNT_ROOT}/p/../../../etc"),
            ),
            "'..'",
        ),
        (host_path_pv.clone(), "spec.hostPath"),
    ];
    for (pv, want) in &denied_pvs {
        let path = &pv["spec"]["local"]["path"];
        match create(&op_pvs, pv).await {
            Ok(()) => panic!("the operator may create a PersistentVolume at {path} ({want})"),
            Err(m) => assert!(
                (m.contains(&policy.name) || *want == "'..'") && m.contains(want),
                "PV at {path}: expected a refusal by {} saying {want:?}, got: {m}",
                policy.name
            ),
        }
    }

    // What the operator makes today passes: its instance Pod and local PV, as
    // pgml_operator::cluster::build renders them (shareProcessNamespace, an emptyDir, PVC,
    // ConfigMap and Secret volumes, no securityContext), for a cluster in this namespace.
    // The owner reference to a PgmlCluster that does not exist is left out: the policy
    // does not look at it.
    let cluster: PgmlCluster = serde_yaml::from_str(&format!(
        "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {{name: main, namespace: {}, uid: u-1}}\nspec:\n  instances: 3\n  storage: {{zfs: {{template: {{volumes: {{count: 3, sizeGiB: 10}}, layout: raidz1, reclaimPolicy: Delete}}}}}}\n",
        ns.name()
    ))
    .expect("a PgmlCluster");
    let b = Builder::new(&cluster, "busybox").expect("a builder");
    let inst = Instance {
        n: 1,
        name: "main-1".into(),
        node: "node-1".into(),
        role: PodRole::Primary,
        fenced: false,
        restore_from: None,
        protect: false,
    };
    let mut instance_pod = b.pod(&inst);
    instance_pod["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    assert_eq!(instance_pod["spec"]["serviceAccountName"], POD_SA);
    if let Err(m) = create(&op_pods, &instance_pod).await {
        panic!("the operator's own instance Pod was refused: {m}\n{instance_pod:#}");
    }
    let path = format!("{MOUNT_ROOT}/{}/pgdata", b.c.pool_name(1));
    let instance_pv = b.pv(&inst, &path);
    if let Err(m) = create(&op_pvs, &instance_pv).await {
        panic!("the operator's own local PV at {path} was refused: {m}\n{instance_pv:#}");
    }

    // The policy binds the operator only: the admin may make the same objects.
    if let Err(m) = create(&admin_pods, &host_path).await {
        panic!("the admin's hostPath Pod was refused: {m}");
    }
    if let Err(m) = create(&admin_pods, &denied_pods[0].0).await {
        panic!("the admin's privileged Pod was refused: {m}");
    }
    if let Err(m) = create(&admin_pvs, &denied_pvs[0].0).await {
        panic!("the admin's local PV at /etc was refused: {m}");
    }
    if let Err(m) = create(&admin_pvs, &host_path_pv).await {
        panic!("the admin's hostPath PV was refused: {m}");
    }

    policy.cleanup().await;
    rbac.cleanup().await;
    ns.cleanup().await;
}

/// A status write (dry run) of `name` by `api`'s user: Ok, or the apiserver's refusal.
async fn write_status<K>(api: &Api<K>, name: &str, status: Value) -> Result<(), String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let dry_run = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    match api
        .patch_status(name, &dry_run, &Patch::Merge(json!({ "status": status })))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message.clone()),
        Err(e) => panic!("writing the status of {name}: {e}"),
    }
}

/// The chart's `F-agent-bounds`: the agent's ServiceAccount, with a token bound to its Pod
/// on one node (as the kubelet mounts it), writes the status of that node's ZfsPools and of
/// the EbsSnapshots held there, and no other's; with a token bound to no Pod, none at all.
/// Its RBAC alone (the chart's Role) would let it write them all.
#[tokio::test]
async fn an_agent_writes_status_only_for_its_own_node() {
    use pgml_api::{EbsSnapshot, ZfsPool};
    let sb = Sandbox::get();
    let admin = client().await;
    let (ns, rbac, policy) = chart_in_namespace(sb, &admin, "agentbounds").await;
    let bounds = format!("{}-agent-bounds", rbac.fullname);
    let (here, there) = (sb.nodes[0].name.as_str(), sb.nodes[1].name.as_str());

    // A pool on each node and a snapshot held on each (and one not held anywhere), made
    // by the admin; no controller runs in this namespace.
    let pools: Api<ZfsPool> = ns.api();
    for (name, node) in [("p-here", here), ("p-there", there)] {
        let p: ZfsPool = serde_yaml::from_str(&format!(
            "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {{name: {name}}}\nspec: {{nodeName: {node}, volumes: {{sizeGiB: 10}}}}\n"
        ))
        .unwrap();
        pools.create(&PostParams::default(), &p).await.unwrap();
    }
    let snaps: Api<EbsSnapshot> = ns.api();
    for (name, node) in [
        ("s-here", Some(here)),
        ("s-there", Some(there)),
        ("s-none", None),
    ] {
        let labels = node.map_or(json!({}), |n| json!({ pgml_api::common::keys::NODE: n }));
        let s: EbsSnapshot = serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
            "metadata": {"name": name, "labels": labels},
            "spec": {"source": {"zfsPool": {"name": "p-here"}}},
        }))
        .unwrap();
        snaps.create(&PostParams::default(), &s).await.unwrap();
    }

    // The agent's Pod on node `here` (kwok plays its kubelet) and a token bound to it.
    let agent_sa = format!("{}-agent", rbac.fullname);
    let agent_pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent-here"},
        "spec": {
            "serviceAccountName": agent_sa, "automountServiceAccountToken": false,
            "nodeName": here, "containers": [{"name": "agent", "image": "busybox"}],
        },
    }))
    .unwrap();
    let agent_pod = ns
        .api::<Pod>()
        .create(&PostParams::default(), &agent_pod)
        .await
        .unwrap();
    let bound_kc = sb
        .dir
        .join("rbac")
        .join(ns.name())
        .join("agent-bound.kubeconfig");
    pgml_testbed::rbac::pod_bound_kubeconfig(
        sb,
        &admin,
        ns.name(),
        &agent_sa,
        ("agent-here", agent_pod.metadata.uid.as_deref().unwrap()),
        &bound_kc,
    )
    .await
    .unwrap_or_else(|e| panic!("a Pod-bound token: {e:#}"));
    let bound = client_of(&bound_kc).await;
    let unbound = client_of(&rbac.agent_kubeconfig).await;
    let pool_status = json!({"instanceType": "m7i.large"});
    let snap_status = json!({"lsn": "0/3000000"});

    // Until the policy is enforced: the token bound to no Pod is refused by it. Without the
    // policy, RBAC lets that write through and the test fails here.
    let unbound_pools: Api<ZfsPool> = Api::namespaced(unbound.clone(), ns.name());
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        match write_status(&unbound_pools, "p-here", pool_status.clone()).await {
            Err(m) if m.contains(&bounds) => break m,
            Err(m) => panic!("the unbound agent token was refused, not by {bounds}: {m}"),
            Ok(()) if Instant::now() > deadline => panic!(
                "an agent token bound to no Pod still writes pool status 30 s after {bounds} was applied"
            ),
            Ok(()) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    assert!(refusal.contains("no node name"), "{refusal}");
    let unbound_snaps: Api<EbsSnapshot> = Api::namespaced(unbound, ns.name());
    let m = write_status(&unbound_snaps, "s-here", snap_status.clone())
        .await
        .expect_err("an unbound token writes no snapshot status");
    assert!(m.contains(&bounds) && m.contains("no node name"), "{m}");

    // Bound to its Pod on `here`: its own node's objects, and only those.
    let my_pools: Api<ZfsPool> = Api::namespaced(bound.clone(), ns.name());
    let my_snaps: Api<EbsSnapshot> = Api::namespaced(bound, ns.name());
    write_status(&my_pools, "p-here", pool_status.clone())
        .await
        .unwrap_or_else(|m| panic!("the agent of {here} may write its pool's status: {m}"));
    write_status(&my_snaps, "s-here", snap_status.clone())
        .await
        .unwrap_or_else(|m| panic!("the agent of {here} may write its hold's status: {m}"));
    let m = write_status(&my_pools, "p-there", pool_status.clone())
        .await
        .expect_err("another node's pool");
    assert!(
        m.contains(&bounds)
            && m.contains(&format!("agent of node {here}"))
            && m.contains(&format!("ZfsPool p-there has spec.nodeName {there}")),
        "{m}"
    );
    let m = write_status(&my_snaps, "s-there", snap_status.clone())
        .await
        .expect_err("a snapshot held on another node");
    assert!(
        m.contains(&bounds)
            && m.contains(&format!(
                "EbsSnapshot s-there has label pgml.io/node {there}"
            )),
        "{m}"
    );
    let m = write_status(&my_snaps, "s-none", snap_status.clone())
        .await
        .expect_err("a snapshot held nowhere");
    assert!(m.contains(&bounds) && m.contains("(none)"), "{m}");

    // Other users are not bound by it.
    write_status(&pools, "p-there", pool_status).await.unwrap();
    write_status(&snaps, "s-none", snap_status).await.unwrap();

    policy.cleanup().await;
    rbac.cleanup().await;
    ns.cleanup().await;
}
