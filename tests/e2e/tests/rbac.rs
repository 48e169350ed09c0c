//! The operator and the node agents with exactly the chart's Kubernetes permissions: its
//! ServiceAccounts, ClusterRoles, Roles and bindings (rendered by helm from
//! `charts/pgml-operator`) applied to the sandbox's RBAC-enabled apiserver, and the
//! processes run with TokenRequest kubeconfigs of those ServiceAccounts, never as admin.
//!
//! - ZfsPool and EbsSnapshot, the chart watching the test's namespace only (its Roles
//!   there, ClusterRoles for Nodes and PersistentVolumes alone): a RAID0 pool of two gp3
//!   volumes becomes Ready, a snapshot of it (held by the agent: standby.signal in its fake
//!   PGDATA) Completes, a pool restored from it on another node becomes Ready, and deleting
//!   everything removes the volumes and snapshots from EC2; nothing in any log was
//!   forbidden; the same account holds none of its namespaced permissions in any other
//!   namespace.
//! - PgmlCluster at the object level, watching one namespace too: the operator makes the
//!   instance's ServiceAccount, Role and RoleBinding (RBAC's escalation check: it must hold
//!   what the Role grants, here through its own Role), its Pod, claim, volume, Services,
//!   ConfigMap and Secrets.
//! - One verb taken away from the chart's ClusterRole (every namespace watched), or from
//!   its Role in the watched namespace: the operator (and the agent) exit non-zero at start
//!   naming exactly that permission.
//! - Without the sandbox: the chart's roles, both renderings, grant exactly what the
//!   operator checks for.

mod cluster_common;
mod snapshot_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use pgml_api::ZfsPool;
use pgml_api::common::keys;
use pgml_api::snapshot::SnapshotPhase;
use pgml_operator::permissions::{Permission, Scope, needed};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{snapshots_tagged, volumes_tagged};
use pgml_testbed::kube::{TestNamespace, client, client_of, ensure_crds};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::rbac::{ChartRbac, Watch, rbac_only, remove_verb, render};
use pgml_testbed::wait::{has_condition, wait_gone};
use serde_json::{Value, json};
use snapshot_common::{Fixture, fake_pgdata, has_standby_signal, hold_over};

/// How long a process that lacks a permission may take to say so and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Who the API server says a kubeconfig is.
async fn username(path: &std::path::Path) -> String {
    let r = Api::<SelfSubjectReview>::all(client_of(path).await)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview");
    r.status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default()
}

/// The lines of a process's log that say the API server refused something.
fn forbidden_lines(p: &Proc) -> Vec<String> {
    p.log()
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("forbidden") || l.contains("lacks") && l.contains("permission")
        })
        .map(str::to_string)
        .collect()
}

fn assert_never_forbidden(procs: &[&Proc]) {
    for p in procs {
        let bad = forbidden_lines(p);
        assert!(
            bad.is_empty(),
            "{} was refused something with the chart's permissions:\n{}",
            p.log_path().display(),
            bad.join("\n")
        );
        assert!(
            p.log()
                .contains("every Kubernetes permission needed is granted"),
            "{} never passed its permission check",
            p.log_path().display()
        );
    }
}

/// Polls `left` until it returns nothing, up to `timeout`; returns what is left.
async fn until_empty<T, F, Fut>(timeout: Duration, mut left: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let l = left().await;
        if l.is_empty() || Instant::now() >= deadline {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn zfspool_and_ebssnapshot_flows_pass_with_the_charts_permissions() {
    let sb = Sandbox::get();
    let admin = client().await;
    ensure_crds(&admin, pgml_api::crds()).await;
    let ns = TestNamespace::new(&admin, "rbac").await;
    let rbac = ChartRbac::install(sb, &admin, ns.name(), Watch::Namespace, |_| {})
        .await
        .unwrap_or_else(|e| panic!("installing the chart's RBAC: {e:#}"));
    assert_eq!(
        username(&rbac.operator_kubeconfig).await,
        format!("system:serviceaccount:{}:{}", ns.name(), rbac.fullname)
    );
    assert_eq!(
        username(&rbac.agent_kubeconfig).await,
        format!(
            "system:serviceaccount:{}:{}-agent",
            ns.name(),
            rbac.fullname
        )
    );

    let operator = procs::operator_with_env(sb, ns.name(), &rbac.operator_env());
    let agents = [0, 1]
        .iter()
        .map(|&i| procs::agent_with_env(sb, &sb.nodes[i], ns.name(), &rbac.agent_env()))
        .collect();
    let f = Fixture {
        sb,
        ns,
        operator,
        agents,
    };
    let (src_node, dst_node) = (&f.sb.nodes[0], &f.sb.nodes[1]);

    // A RAID0 of two gp3 volumes, Ready.
    let src = f.unique("src");
    let pool = f.ready_pool(&src, src_node, "raid0", 2).await;
    let src_uid = pool.uid().unwrap();
    assert_eq!(
        volumes_tagged(f.sb, keys::POOL_UID, &src_uid).await.len(),
        2
    );
    fake_pgdata(src_node, &src);

    // A snapshot of it, held by the agent (standby.signal stamped, then removed).
    f.snapshot("snap", &src, "").await;
    f.wait_phase("snap", SnapshotPhase::Completed).await;
    let snap = f
        .wait_snapshot("snap", "hold over", Duration::from_secs(60), |s| {
            hold_over(s) == Some(true)
        })
        .await;
    assert_eq!(snap.status.as_ref().unwrap().snapshots.len(), 2);
    assert!(
        !has_standby_signal(src_node, &src),
        "the hold left standby.signal behind"
    );
    let snap_uid = snap.uid().unwrap();
    assert_eq!(
        snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &snap_uid)
            .await
            .len(),
        2
    );

    // Restored on another node.
    let copy = f.unique("copy");
    f.create_pool(&copy, dst_node, "raid0", 2, Some("snap"))
        .await;
    let restored = f.wait_pool_ready(&copy).await;
    assert_eq!(
        restored
            .status
            .as_ref()
            .and_then(|s| s.restored_from.as_deref()),
        Some("snap")
    );
    let copy_uid = restored.uid().unwrap();

    // Deleting everything cleans EC2 up: volumes (reclaimPolicy Delete) and snapshots.
    f.delete_snapshot("snap").await;
    wait_gone(&f.snapshots(), "snap", Duration::from_secs(120)).await;
    for p in [&src, &copy] {
        f.pools().delete(p, &DeleteParams::default()).await.unwrap();
    }
    for p in [&src, &copy] {
        wait_gone(&f.pools(), p, Duration::from_secs(180)).await;
    }
    for uid in [&src_uid, &copy_uid] {
        let left = until_empty(Duration::from_secs(60), || {
            volumes_tagged(f.sb, keys::POOL_UID, uid)
        })
        .await;
        assert!(
            left.is_empty(),
            "volumes left in EC2: {left:?}\n{}",
            f.logs()
        );
    }
    let left = until_empty(Duration::from_secs(60), || {
        snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &snap_uid)
    })
    .await;
    assert!(
        left.is_empty(),
        "snapshots left in EC2: {left:?}\n{}",
        f.logs()
    );

    let mut all: Vec<&Proc> = vec![&f.operator];
    all.extend(f.agents.iter());
    assert_never_forbidden(&all);
    // Watching one namespace, the account holds its namespaced permissions there and nowhere
    // else: the same check for every namespace, or for another one, finds each of them
    // missing (Secrets, Pods, RBAC objects among them) and nothing else.
    let sa = client_of(&rbac.operator_kubeconfig).await;
    pgml_operator::permissions::check(&sa, Some(f.name()), Some(f.name()))
        .await
        .expect("the chart grants the operator what it needs in its namespace");
    let namespaced = needed()
        .iter()
        .filter(|p| p.scope == Scope::Watched)
        .count();
    for (other, where_) in [
        (None, "in all namespaces".to_string()),
        (Some("default"), "in namespace default".to_string()),
    ] {
        let err = pgml_operator::permissions::check(&sa, other, Some(f.name()))
            .await
            .expect_err("the operator's account holds nothing namespaced outside its namespace")
            .to_string();
        for what in [
            format!("cannot create secrets {where_}"),
            format!("cannot patch pods {where_}"),
            format!("cannot create roles.rbac.authorization.k8s.io {where_}"),
            format!("lacks {namespaced} Kubernetes permissions"),
        ] {
            assert!(err.contains(&what), "no `{what}` in: {err}");
        }
        assert!(
            !err.contains("nodes") && !err.contains("persistentvolumes"),
            "{err}"
        );
    }

    // The agent checked as many permissions as its ClusterRole grants, and was granted
    // each: the chart gives the agent exactly what it checks for, nothing more.
    let release = ChartRbac::release(f.name());
    let objects = rbac_only(render(&release, f.name(), &[]).expect("helm template"));
    let grants = granted(&objects, "ClusterRole", &format!("{}-agent", rbac.fullname));
    for a in &f.agents {
        assert_eq!(
            checked(a),
            Some(grants.len()),
            "{}: the agent's ClusterRole grants {grants:?}",
            a.log_path().display()
        );
    }
    f.finish().await;
    rbac.cleanup().await;
}

/// How many permissions a process checked at start-up (all granted).
fn checked(p: &Proc) -> Option<usize> {
    p.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "every Kubernetes permission needed is granted")
        .and_then(|v| v["permissions"].as_u64())
        .map(|n| n as usize)
}

#[tokio::test]
async fn a_pgmlcluster_makes_its_objects_and_its_instances_rbac_as_the_operator_account() {
    // The fixture starts its processes as admin: they are started again, before any
    // PgmlCluster exists, as the chart's ServiceAccounts (which exist only once the
    // namespace does).
    let mut f = cluster_common::ClusterFixture::start("rbacpg", "main", &[0, 1], &[]).await;
    let admin = client().await;
    let rbac = ChartRbac::install(f.sb, &admin, f.ns.name(), Watch::Namespace, |_| {})
        .await
        .unwrap_or_else(|e| panic!("installing the chart's RBAC: {e:#}"));
    let restart = |p: &mut Proc, env: &[(&str, &str)]| {
        p.stop(Duration::from_secs(10));
        for (k, v) in env {
            p.set_env(k, v);
        }
        p.start();
    };
    restart(&mut f.operator, &rbac.operator_env());
    for a in &mut f.agents {
        restart(a, &rbac.agent_env());
    }
    let since = f.operator.log().len();

    f.apply(&cluster_common::zfs_cluster(
        "main",
        1,
        json!({"count": 1, "sizeGiB": 1}),
        json!({}),
    ))
    .await;
    let pools: Api<ZfsPool> = f.ns.api();
    let pool = f
        .wait_obj(&pools, "main-1", "Ready", |p: &ZfsPool| {
            has_condition(p, "Ready", "True")
        })
        .await;
    f.wait_pod("main-1", "made", |_| true).await;
    let c = f
        .wait_cluster("one instance placed", |c| {
            c.status.as_ref().is_some_and(|s| s.instances.len() == 1)
        })
        .await;
    assert_eq!(
        c.status.as_ref().unwrap().current_primary.as_deref(),
        Some("main-1")
    );

    // What only the operator's ServiceAccount made.
    let sa: Api<ServiceAccount> = f.ns.api();
    let roles: Api<Role> = f.ns.api();
    let bindings: Api<RoleBinding> = f.ns.api();
    let instance_sa = f
        .pods()
        .get("main-1")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.service_account_name)
        .expect("the instance Pod names its ServiceAccount");
    let owned_by_operator = |managers: Vec<String>| managers.iter().any(|m| m == "pgml-operator");
    let managers = |m: &kube::api::ObjectMeta| -> Vec<String> {
        m.managed_fields
            .iter()
            .flatten()
            .filter_map(|f| f.manager.clone())
            .collect()
    };
    let s = sa.get(&instance_sa).await.unwrap();
    assert!(owned_by_operator(managers(&s.metadata)), "{:?}", s.metadata);
    let r = roles.get(&instance_sa).await.unwrap();
    assert!(owned_by_operator(managers(&r.metadata)));
    let b = bindings.get(&instance_sa).await.unwrap();
    assert!(owned_by_operator(managers(&b.metadata)));
    let claims: Api<PersistentVolumeClaim> = f.ns.api();
    assert!(claims.get_opt("main-1").await.unwrap().is_some());
    let cms: Api<ConfigMap> = f.ns.api();
    assert!(
        !cms.list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|c| c.labels().get(keys::CLUSTER).map(String::as_str) == Some("main"))
            .collect::<Vec<_>>()
            .is_empty(),
        "no ConfigMap of the cluster"
    );
    let pod: Pod = f.pods().get("main-1").await.unwrap();
    assert!(owned_by_operator(managers(&pod.metadata)));

    // Deleting the cluster removes its pool's volumes (the finalizer, as the account).
    let uid = pool.uid().unwrap();
    f.delete_cluster(&DeleteParams::default()).await;
    f.wait_pools_gone(&["main-1"]).await;
    let left = until_empty(Duration::from_secs(60), || {
        volumes_tagged(f.sb, keys::POOL_UID, &uid)
    })
    .await;
    assert!(
        left.is_empty(),
        "volumes left in EC2: {left:?}\n{}",
        f.logs()
    );

    let log = f.operator.log();
    let bad: Vec<&str> = log[since..]
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        bad.is_empty(),
        "the operator was refused something with the chart's permissions:\n{}",
        bad.join("\n")
    );
    assert!(log[since..].contains("every Kubernetes permission needed is granted"));
    for a in &f.agents {
        assert!(forbidden_lines(a).is_empty(), "{}", a.log_path().display());
    }
    f.finish().await;
    rbac.cleanup().await;
}

#[tokio::test]
async fn a_verb_taken_away_stops_the_operator_and_the_agent_naming_it() {
    let sb = Sandbox::get();
    let admin = client().await;
    ensure_crds(&admin, pgml_api::crds()).await;
    let ns = TestNamespace::new(&admin, "rbacx").await;
    let release = ChartRbac::release(ns.name());
    let rbac = ChartRbac::install(sb, &admin, ns.name(), Watch::All, |objects| {
        // The names follow the chart's contract: F = "<release>-pgml-operator".
        let f = format!("{release}-pgml-operator");
        assert_eq!(
            remove_verb(objects, "ClusterRole", &f, "zfspools/status", "patch"),
            1,
            "the chart's ClusterRole {f} grants patch on zfspools/status in one rule"
        );
        assert_eq!(
            remove_verb(
                objects,
                "ClusterRole",
                &format!("{f}-agent"),
                "ebssnapshots/status",
                "patch"
            ),
            1
        );
    })
    .await
    .unwrap_or_else(|e| panic!("installing the chart's RBAC: {e:#}"));

    let started = Instant::now();
    let mut operator = procs::operator_with_env(sb, ns.name(), &rbac.operator_env());
    operator.wait_exit(EXIT_TIMEOUT);
    let code = operator.exit_status().and_then(|s| s.code());
    let log = operator.log();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the operator did not exit non-zero within {EXIT_TIMEOUT:?} (exit code {code:?}):\n{log}"
    );
    let expected = format!(
        "cannot patch zfspools/status.pgml.io in namespace {} (ServiceAccount {}/{})",
        ns.name(),
        ns.name(),
        rbac.fullname
    );
    assert!(log.contains(&expected), "no `{expected}` in:\n{log}");
    // Exactly that one, and said once in the log line and once as the exit error.
    assert!(
        log.contains("pgml-operator lacks 1 Kubernetes permission it needs"),
        "{log}"
    );
    eprintln!("operator exited {code:?} after {:?}", started.elapsed());

    // Watching every namespace (the chart's default), the same check says so.
    let sa = client_of(&rbac.operator_kubeconfig).await;
    let err = pgml_operator::permissions::check(&sa, None, Some(ns.name()))
        .await
        .expect_err("patch on zfspools/status is missing in every namespace")
        .to_string();
    assert!(
        err.contains("cannot patch zfspools/status.pgml.io in all namespaces (ServiceAccount"),
        "{err}"
    );
    assert!(err.contains("lacks 1 Kubernetes permission"), "{err}");

    let node = &sb.nodes[0];
    let mut agent = procs::agent_with_env(sb, node, ns.name(), &rbac.agent_env());
    agent.wait_exit(EXIT_TIMEOUT);
    let code = agent.exit_status().and_then(|s| s.code());
    let log = agent.log();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the agent did not exit non-zero within {EXIT_TIMEOUT:?} (exit code {code:?}):\n{log}"
    );
    let expected = format!(
        "cannot patch ebssnapshots/status.pgml.io in namespace {} (ServiceAccount {}/{}-agent)",
        ns.name(),
        ns.name(),
        rbac.fullname
    );
    assert!(log.contains(&expected), "no `{expected}` in:\n{log}");
    assert!(
        log.contains("pgml-agent lacks 1 Kubernetes permission it needs"),
        "{log}"
    );

    ns.cleanup().await;
    rbac.cleanup().await;
}

#[tokio::test]
async fn a_verb_taken_away_from_the_watched_namespaces_role_stops_the_operator_and_the_agent() {
    let sb = Sandbox::get();
    let admin = client().await;
    ensure_crds(&admin, pgml_api::crds()).await;
    let ns = TestNamespace::new(&admin, "rbacw").await;
    let release = ChartRbac::release(ns.name());
    let f = format!("{release}-pgml-operator");
    let rbac = ChartRbac::install(sb, &admin, ns.name(), Watch::Namespace, |objects| {
        // Watching one namespace, Secrets and the agent's pools are granted by the Roles
        // there, and only there.
        assert_eq!(
            remove_verb(objects, "Role", &f, "secrets", "create"),
            1,
            "the chart's Role {f} grants create on secrets in one rule"
        );
        assert_eq!(
            remove_verb(objects, "Role", &format!("{f}-agent"), "zfspools", "watch"),
            1
        );
        // Neither grant comes back through another rule or the ClusterRole.
        for kind in ["ClusterRole", "Role"] {
            for (name, resource, verb) in [
                (f.clone(), "secrets", "create"),
                (format!("{f}-agent"), "zfspools", "watch"),
            ] {
                assert_eq!(
                    remove_verb(objects, kind, &name, resource, verb),
                    0,
                    "{kind} {name} grants {verb} {resource} a second time"
                );
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("installing the chart's RBAC: {e:#}"));

    let mut operator = procs::operator_with_env(sb, ns.name(), &rbac.operator_env());
    operator.wait_exit(EXIT_TIMEOUT);
    let code = operator.exit_status().and_then(|s| s.code());
    let log = operator.log();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the operator did not exit non-zero within {EXIT_TIMEOUT:?} (exit code {code:?}):\n{log}"
    );
    let expected = format!(
        "cannot create secrets in namespace {} (ServiceAccount {}/{f})",
        ns.name(),
        ns.name()
    );
    assert!(log.contains(&expected), "no `{expected}` in:\n{log}");
    assert!(
        log.contains("pgml-operator lacks 1 Kubernetes permission it needs"),
        "{log}"
    );

    let mut agent = procs::agent_with_env(sb, &sb.nodes[0], ns.name(), &rbac.agent_env());
    agent.wait_exit(EXIT_TIMEOUT);
    let code = agent.exit_status().and_then(|s| s.code());
    let log = agent.log();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the agent did not exit non-zero within {EXIT_TIMEOUT:?} (exit code {code:?}):\n{log}"
    );
    let expected = format!(
        "cannot watch zfspools.pgml.io in namespace {} (ServiceAccount {}/{f}-agent)",
        ns.name(),
        ns.name()
    );
    assert!(log.contains(&expected), "no `{expected}` in:\n{log}");
    assert!(
        log.contains("pgml-agent lacks 1 Kubernetes permission it needs"),
        "{log}"
    );

    ns.cleanup().await;
    rbac.cleanup().await;
}

/// `(group, resource[/sub], verb)` for every verb of every rule of the rendered object.
fn granted(objects: &[Value], kind: &str, name: &str) -> BTreeSet<(String, String, String)> {
    let o = objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"));
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in o["rules"].as_array().into_iter().flatten() {
        assert!(
            rule["resourceNames"].is_null(),
            "{kind} {name}: a rule limited to resourceNames: {rule}"
        );
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

/// Fails naming what `granted` has that `wanted` has not, and the other way round.
fn assert_grants(
    what: &str,
    granted: &BTreeSet<(String, String, String)>,
    wanted: &BTreeSet<(String, String, String)>,
) {
    let missing: Vec<_> = wanted.difference(granted).collect();
    let extra: Vec<_> = granted.difference(wanted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, granted but never used {extra:?}"
    );
}

#[test]
fn the_charts_operator_roles_grant_exactly_what_the_operator_checks_for() {
    let release = "t";
    let f = format!("{release}-pgml-operator");
    let row = |p: &Permission| {
        let mut r = p.resource.to_string();
        if let Some(s) = p.subresource {
            r = format!("{r}/{s}");
        }
        (p.group.to_string(), r, p.verb.to_string())
    };
    let table = needed();
    let rows = |scopes: &[Scope]| -> BTreeSet<_> {
        table
            .iter()
            .filter(|p| scopes.contains(&p.scope))
            .map(row)
            .collect()
    };
    // The leader-election Role: the Lease, and core Events in the release namespace (the
    // chart's contract grants them for the Lease's holder; nothing needs more).
    let contract_extra: BTreeSet<_> = ["create", "patch"]
        .iter()
        .map(|v| (String::new(), "events".to_string(), v.to_string()))
        .collect();
    let leader_election = |objects: &[Value]| {
        let name = format!("{f}-leader-election");
        let role = objects
            .iter()
            .find(|o| o["kind"] == "Role" && o["metadata"]["name"] == name.as_str())
            .expect("a leader-election Role");
        assert_eq!(role["metadata"]["namespace"], "ops");
        let lease_role: BTreeSet<_> = granted(objects, "Role", &name)
            .difference(&contract_extra)
            .cloned()
            .collect();
        assert_grants(&format!("Role {name}"), &lease_role, &rows(&[Scope::Lease]));
    };

    // Every namespace (the default): the ClusterRole holds the namespaced rows and the
    // cluster-scoped ones.
    let every = rbac_only(render(release, "ops", &[]).expect("helm template"));
    assert_grants(
        &format!("ClusterRole {f}"),
        &granted(&every, "ClusterRole", &f),
        &rows(&[Scope::Watched, Scope::Cluster]),
    );
    leader_election(&every);
    assert!(
        !every.iter().any(|o| o["kind"] == "Role"
            && o["metadata"]["name"] != format!("{f}-leader-election").as_str())
    );

    // One namespace: the ClusterRole holds the cluster-scoped rows only, a Role in the
    // watched namespace the namespaced ones.
    let one =
        rbac_only(render(release, "ops", &["operator.watchNamespace=db"]).expect("helm template"));
    assert_grants(
        &format!("ClusterRole {f} watching db"),
        &granted(&one, "ClusterRole", &f),
        &rows(&[Scope::Cluster]),
    );
    let role = one
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["name"] == f.as_str())
        .expect("a Role in the watched namespace");
    assert_eq!(role["metadata"]["namespace"], "db");
    assert_grants(
        &format!("Role {f} in db"),
        &granted(&one, "Role", &f),
        &rows(&[Scope::Watched]),
    );
    leader_election(&one);

    // The agent: the same split of the same grants, its Node alone cluster-wide.
    let agent = format!("{f}-agent");
    let everywhere = granted(&every, "ClusterRole", &agent);
    let cluster = granted(&one, "ClusterRole", &agent);
    let there = granted(&one, "Role", &agent);
    assert_eq!(
        cluster,
        BTreeSet::from([(String::new(), "nodes".into(), "get".into())])
    );
    assert!(cluster.is_disjoint(&there));
    assert_grants(
        &format!("ClusterRole and Role {agent} watching db"),
        &cluster.union(&there).cloned().collect(),
        &everywhere,
    );
}
