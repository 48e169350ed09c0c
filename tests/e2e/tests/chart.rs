//! The packaging: the Helm chart (charts/pgml-operator) lints clean and renders what the
//! contract names, its values schema refuses bad values with a clear message, one watched
//! namespace moves every namespaced permission out of the ClusterRoles into Roles there, the
//! optional NetworkPolicies admit only `networkPolicy.metricsFrom` to the metrics ports, the
//! chart's CRDs, the kustomize base (deploy/base) and the single-namespace overlay are not
//! stale, and the rendered chart, the kustomize base and each overlay are accepted by the
//! sandbox's real kube-apiserver (server-side apply, dry run).
//!
//! Only the tests that say `Sandbox::get()` need the sandbox; the others run helm alone.
//!
//! Helm: `$PGML_HELM`, else the one tests/testbed/helm/build.sh builds (scripts/deps.sh
//! builds it; the script builds it if missing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_yaml::Value;

use pgml_testbed::Sandbox;
use pgml_testbed::sandbox::repo_root;

/// The namespace deploy/base installs into (and the chart is rendered for).
const NS: &str = "pgml-system";
const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/pgml-operator";

fn root() -> PathBuf {
    repo_root()
}

fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(p) = std::env::var_os("PGML_HELM") {
            return PathBuf::from(p);
        }
        let out = Command::new("bash")
            .arg("tests/testbed/helm/build.sh")
            .arg("--print")
            .current_dir(root())
            .output()
            .expect("running tests/testbed/helm/build.sh");
        assert!(
            out.status.success(),
            "tests/testbed/helm/build.sh --print failed (scripts/deps.sh builds Helm):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        let path = PathBuf::from(path);
        assert!(path.is_file(), "no helm at {}", path.display());
        path
    })
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {} failed:\n{}{}",
        program.display(),
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `helm template` of the chart as release `release` in NS, with extra arguments.
fn template(release: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        release,
        "charts/pgml-operator",
        "--namespace",
        NS,
    ];
    args.extend_from_slice(extra);
    ok(helm(), &args)
}

/// Every object of a multi-document YAML stream. serde_yaml refuses duplicate keys, which
/// kubectl's client-side parsing and kustomize also refuse.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v = Value::deserialize(d).unwrap_or_else(|e| panic!("rendered YAML: {e}"));
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = objs
                .iter()
                .map(|o| format!("{:?}/{:?}", o["kind"], o["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} rendered; have {have:?}")
        })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// A container's env as name → value (or "fieldRef:<path>").
fn env(container: &Value) -> BTreeMap<String, String> {
    seq(&container["env"])
        .iter()
        .map(|e| {
            let v = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some(p) => format!("fieldRef:{p}"),
                None => s(&e["value"]).to_string(),
            };
            (s(&e["name"]).to_string(), v)
        })
        .collect()
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    seq(&workload["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn helm_lint_is_clean_with_defaults_and_with_servicemonitor_and_irsa() {
    let irsa =
        format!("operator.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE_ARN}");
    for extra in [
        vec![],
        vec![
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set-string",
            irsa.as_str(),
        ],
        vec![
            "--set",
            "agent.zfs.tools=bundled",
            "--set",
            "operator.watchNamespace=databases",
            "--set",
            "networkPolicy.enabled=true",
        ],
    ] {
        let mut args = vec!["lint", "--strict", "charts/pgml-operator"];
        args.extend_from_slice(&extra);
        let out = ok(helm(), &args);
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint {extra:?}:\n{out}"
        );
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint {extra:?} is not clean:\n{out}"
        );
    }
}

#[test]
fn values_schema_rejects_bad_values_with_the_path_and_the_rule() {
    for (set, want) in [
        (
            "operator.replicas=two",
            "at '/operator/replicas': got string, want integer",
        ),
        (
            "agent.zfs.tools=zfs-fuse",
            "at '/agent/zfs/tools': value must be one of 'host', 'bundled'",
        ),
        (
            "operator.replica=3",
            "at '/operator': additional properties 'replica' not allowed",
        ),
        ("aws.region=US East", "at '/aws/region'"),
        ("agent.mountRoot=relative/path", "at '/agent/mountRoot'"),
        (
            "operator.installation=Prod_A",
            "at '/operator/installation'",
        ),
    ] {
        let out = run(
            helm(),
            &["template", "x", "charts/pgml-operator", "--set", set],
        );
        let err = text(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(want),
            "--set {set}: expected {want:?} in:\n{err}"
        );
    }
}

#[test]
fn rendered_chart_has_the_contracts_objects_settings_and_least_privilege() {
    let objs = objects(&template("pgml-operator", &["--include-crds"]));

    // CRDs, copied from crds/.
    for crd in [
        "pgmlclusters.pgml.io",
        "zfspools.pgml.io",
        "ebssnapshots.pgml.io",
    ] {
        find(&objs, "CustomResourceDefinition", crd);
    }
    // The admission policy that ships with them (Retain to Delete needs an annotation).
    find(
        &objs,
        "ValidatingAdmissionPolicy",
        pgml_api::policy::POLICY_NAME,
    );
    find(
        &objs,
        "ValidatingAdmissionPolicyBinding",
        pgml_api::policy::POLICY_NAME,
    );
    // The bounds on the operator's own Pods and PersistentVolumes (on by default; its
    // enforcement: tests/e2e/tests/admission_bounds.rs).
    let bounds = find(
        &objs,
        "ValidatingAdmissionPolicy",
        "pgml-operator-operator-bounds",
    );
    assert_eq!(
        bounds["spec"]["matchConditions"][0]["expression"],
        format!("request.userInfo.username == 'system:serviceaccount:{NS}:pgml-operator'").as_str()
    );
    let binding = find(
        &objs,
        "ValidatingAdmissionPolicyBinding",
        "pgml-operator-operator-bounds",
    );
    assert_eq!(binding["spec"]["validationActions"][0], "Deny");
    // No ServiceMonitor unless asked for.
    assert!(!objs.iter().any(|o| o["kind"] == "ServiceMonitor"));

    // Operator Deployment.
    let dep = find(&objs, "Deployment", "pgml-operator");
    assert_eq!(dep["metadata"]["namespace"], NS);
    assert_eq!(dep["spec"]["replicas"].as_u64(), Some(2));
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "pgml-operator");
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let op = container(dep, "operator");
    assert_eq!(s(&op["image"]), "ghcr.io/pgml/pgml-operator:0.1.0");
    let sc = &op["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(seq(&sc["capabilities"]["drop"]), [Value::from("ALL")]);
    let e = env(op);
    for (k, v) in [
        ("POD_NAME", "fieldRef:metadata.name"),
        ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
        ("PGML_METRICS_ADDR", "0.0.0.0:8080"),
        ("PGML_LEADER_ELECT", "true"),
        ("PGML_LEASE_NAME", "pgml-operator"),
        ("PGML_LEASE_NAMESPACE", NS),
        ("PGML_INSTANCE_IMAGE", "ghcr.io/pgml/pgml-operator:0.1.0"),
        ("PGML_INSTALLATION", "pgml-operator"),
    ] {
        assert_eq!(e.get(k).map(String::as_str), Some(v), "operator env {k}");
    }
    assert!(!e.contains_key("PGML_WATCH_NAMESPACE") && !e.contains_key("AWS_REGION"));
    assert_eq!(op["ports"][0]["name"], "metrics");
    assert_eq!(op["ports"][0]["containerPort"].as_u64(), Some(8080));
    assert_eq!(op["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(op["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(op["resources"]["requests"]["memory"].is_string());

    // At most one operator replica away at a time (voluntary disruptions).
    let pdb = find(&objs, "PodDisruptionBudget", "pgml-operator");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_u64(), Some(1));
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pdb["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector")
    {
        assert_eq!(&labels[k], v, "PodDisruptionBudget selector {k:?}");
    }

    // Metrics Service selects the operator Pods.
    let svc = find(&objs, "Service", "pgml-operator-metrics");
    assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");
    assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(8080));
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(
            &labels[k], v,
            "Service selector {k:?} matches the operator Pods"
        );
    }

    // Agent DaemonSet: /dev, the mount root with Bidirectional propagation, the state dir,
    // host ZFS tools through nsenter (hostPID).
    let ds = find(&objs, "DaemonSet", "pgml-operator-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "pgml-operator-agent");
    assert_eq!(pod["hostPID"], true);
    assert!(
        pod["hostNetwork"].is_null(),
        "the agent needs no host network"
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].as_u64(),
        Some(1)
    );
    assert!(
        seq(&pod["tolerations"])
            .iter()
            .any(|t| t["key"] == "pgml.io/database" && t["operator"] == "Exists"),
        "the agent tolerates database nodes"
    );
    let ag = container(ds, "agent");
    assert_eq!(ag["securityContext"]["privileged"], true);
    let host_path = |volume: &str| -> String {
        let v = seq(&pod["volumes"])
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap_or_else(|| panic!("no volume {volume}"));
        s(&v["hostPath"]["path"]).to_string()
    };
    let mount = |path: &str| -> &Value {
        seq(&ag["volumeMounts"])
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("the agent does not mount {path}"))
    };
    assert_eq!(host_path(s(&mount("/dev")["name"])), "/dev");
    let root_mount = mount("/var/lib/pgml");
    assert_eq!(host_path(s(&root_mount["name"])), "/var/lib/pgml");
    assert_eq!(root_mount["mountPropagation"], "Bidirectional");
    assert_eq!(
        host_path(s(&mount("/var/lib/pgml-agent")["name"])),
        "/var/lib/pgml-agent"
    );
    let e = env(ag);
    for (k, v) in [
        ("NODE_NAME", "fieldRef:spec.nodeName"),
        ("PGML_METRICS_ADDR", "0.0.0.0:8081"),
        ("PGML_MOUNT_ROOT", "/var/lib/pgml"),
        ("PGML_STATE_DIR", "/var/lib/pgml-agent"),
        ("PGML_ZPOOL", "/usr/local/bin/host-zpool"),
        ("PGML_ZFS", "/usr/local/bin/host-zfs"),
    ] {
        assert_eq!(e.get(k).map(String::as_str), Some(v), "agent env {k}");
    }
    assert_eq!(ag["ports"][0]["containerPort"].as_u64(), Some(8081));
    assert_eq!(ag["livenessProbe"]["httpGet"]["path"], "/healthz");

    // RBAC: the ClusterRoles bound to the right ServiceAccounts, no "*" anywhere, status
    // subresources patch only.
    for (role, sa) in [
        ("pgml-operator", "pgml-operator"),
        ("pgml-operator-agent", "pgml-operator-agent"),
    ] {
        let cr = find(&objs, "ClusterRole", role);
        for rule in seq(&cr["rules"]) {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                for v in seq(&rule[field]) {
                    assert!(!s(v).contains('*'), "ClusterRole {role} has {field} {v:?}");
                }
            }
            for r in seq(&rule["resources"]) {
                if s(r).ends_with("/status") {
                    assert_eq!(seq(&rule["verbs"]), [Value::from("patch")], "{role} {r:?}");
                }
            }
        }
        let crb = find(&objs, "ClusterRoleBinding", role);
        assert_eq!(crb["roleRef"]["name"], role);
        assert_eq!(crb["subjects"][0]["name"], sa);
        assert_eq!(crb["subjects"][0]["namespace"], NS);
        find(&objs, "ServiceAccount", sa);
    }
    let le = find(&objs, "Role", "pgml-operator-leader-election");
    assert_eq!(le["metadata"]["namespace"], NS);
    assert!(
        seq(&le["rules"])
            .iter()
            .any(|r| seq(&r["resources"]).contains(&Value::from("leases")))
    );
    find(&objs, "RoleBinding", "pgml-operator-leader-election");

    // Release names, options.
    let irsa =
        format!("operator.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE_ARN}");
    let objs = objects(&template(
        "prod",
        &[
            "--set",
            "agent.zfs.tools=bundled",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "operator.watchNamespace=databases",
            "--set",
            "aws.region=eu-west-1",
            "--set-string",
            irsa.as_str(),
        ],
    ));
    let dep = find(&objs, "Deployment", "prod-pgml-operator");
    let e = env(container(dep, "operator"));
    assert_eq!(e["PGML_WATCH_NAMESPACE"], "databases");
    assert_eq!(e["AWS_REGION"], "eu-west-1");
    assert_eq!(
        e["PGML_INSTALLATION"], "prod",
        "the release's name by default"
    );
    let sa = find(&objs, "ServiceAccount", "prod-pgml-operator");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        ROLE_ARN
    );
    let ds = find(&objs, "DaemonSet", "prod-pgml-operator-agent");
    // Bundled tools need no nsenter, but PVC holds still read the node's mount table and
    // the freeze guard joins the node's cgroups: hostPID either way.
    assert_eq!(ds["spec"]["template"]["spec"]["hostPID"], true);
    assert_eq!(env(container(ds, "agent"))["PGML_HOST_PID1"], "true");
    assert_eq!(env(container(ds, "agent"))["PGML_ZPOOL"], "/usr/sbin/zpool");
    let sm = find(&objs, "ServiceMonitor", "prod-pgml-operator");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    find(&objs, "Service", "prod-pgml-operator-metrics");
}

/// The namespace the one-namespace renderings watch (deploy/overlays/single-namespace's).
const WATCHED: &str = "databases";

/// `(role, apiGroup, resource[/sub], verb)` for every verb of every rule of every object of
/// `kind` (ClusterRole or Role) rendered.
fn grants(objs: &[Value], kind: &str) -> Vec<(String, String, String, String)> {
    let mut out = vec![];
    for role in objs.iter().filter(|o| o["kind"] == kind) {
        let name = s(&role["metadata"]["name"]);
        for rule in seq(&role["rules"]) {
            for g in seq(&rule["apiGroups"]) {
                for r in seq(&rule["resources"]) {
                    for v in seq(&rule["verbs"]) {
                        out.push((name.into(), s(g).into(), s(r).into(), s(v).into()));
                    }
                }
            }
        }
    }
    out
}

/// Namespaced resources the operator or the agent use: none of them may be granted by a
/// ClusterRole once the chart watches one namespace.
const NAMESPACED: [&str; 16] = [
    "pods",
    "networkpolicies",
    "poddisruptionbudgets",
    "secrets",
    "services",
    "configmaps",
    "persistentvolumeclaims",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "events",
    "leases",
    "pgmlclusters",
    "zfspools",
    "ebssnapshots",
    "pgmlclusters/finalizers",
];

fn is_namespaced(resource: &str) -> bool {
    let base = resource.split('/').next().unwrap_or_default();
    NAMESPACED.contains(&resource) || NAMESPACED.contains(&base)
}

#[test]
fn with_a_watched_namespace_no_cluster_role_grants_anything_namespaced() {
    // The check below is not empty: with the default (every namespace) the ClusterRoles do
    // grant Secrets, Pods and RBAC objects.
    let wide = grants(&objects(&template("pgml-operator", &[])), "ClusterRole");
    for r in [
        "secrets",
        "pods",
        "roles",
        "rolebindings",
        "zfspools/status",
    ] {
        assert!(
            wide.iter().any(|(_, _, res, _)| res == r),
            "the default ClusterRoles no longer grant {r}: this test checks nothing"
        );
    }

    let watch = format!("operator.watchNamespace={WATCHED}");
    let objs = objects(&template("pgml-operator", &["--set", &watch]));
    let cluster = grants(&objs, "ClusterRole");
    let namespaced: Vec<_> = cluster
        .iter()
        .filter(|(_, _, r, _)| is_namespaced(r))
        .collect();
    assert!(
        namespaced.is_empty(),
        "watching {WATCHED}, ClusterRoles still grant namespaced objects (secrets, pods, RBAC…): {namespaced:?}"
    );
    // What stays cluster-wide is exactly what the code uses of Nodes (read) and
    // PersistentVolumes (the local volumes it makes and deletes).
    let left: BTreeSet<(&str, &str, &str)> = cluster
        .iter()
        .map(|(role, _, r, v)| (role.as_str(), r.as_str(), v.as_str()))
        .collect();
    let expected: BTreeSet<(&str, &str, &str)> = [
        ("pgml-operator", "nodes", "get"),
        ("pgml-operator", "nodes", "list"),
        ("pgml-operator", "nodes", "watch"),
        ("pgml-operator", "persistentvolumes", "get"),
        ("pgml-operator", "persistentvolumes", "list"),
        ("pgml-operator", "persistentvolumes", "create"),
        ("pgml-operator", "persistentvolumes", "patch"),
        ("pgml-operator", "persistentvolumes", "delete"),
        ("pgml-operator-agent", "nodes", "get"),
    ]
    .into_iter()
    .collect();
    assert_eq!(left, expected, "the ClusterRoles watching {WATCHED}");
    assert!(cluster.iter().all(|(_, g, _, _)| g.is_empty()));

    // What left the ClusterRoles is in Roles in the watched namespace, bound to the release's
    // ServiceAccounts; each namespaced row of the default ClusterRoles is in one of them.
    let roles = grants(&objs, "Role");
    for (role, sa) in [
        ("pgml-operator", "pgml-operator"),
        ("pgml-operator-agent", "pgml-operator-agent"),
    ] {
        let r = find(&objs, "Role", role);
        assert_eq!(r["metadata"]["namespace"], WATCHED, "Role {role}");
        let rb = find(&objs, "RoleBinding", role);
        assert_eq!(rb["metadata"]["namespace"], WATCHED, "RoleBinding {role}");
        assert_eq!(rb["roleRef"]["kind"], "Role");
        assert_eq!(rb["roleRef"]["name"], role);
        assert_eq!(rb["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(rb["subjects"][0]["name"], sa);
        assert_eq!(rb["subjects"][0]["namespace"], NS);
        let moved: BTreeSet<_> = wide
            .iter()
            .filter(|(n, _, r, _)| n == role && is_namespaced(r))
            .map(|(_, g, r, v)| (g, r, v))
            .collect();
        let there: BTreeSet<_> = roles
            .iter()
            .filter(|(n, _, _, _)| n == role)
            .map(|(_, g, r, v)| (g, r, v))
            .collect();
        assert!(!moved.is_empty());
        assert_eq!(
            moved, there,
            "Role {role} in {WATCHED} grants what the default ClusterRole {role} grants on namespaced objects"
        );
    }
    // No Role anywhere else but the leader election's in the release namespace.
    for r in objs.iter().filter(|o| o["kind"] == "Role") {
        let name = s(&r["metadata"]["name"]);
        let ns = s(&r["metadata"]["namespace"]);
        assert!(
            ns == WATCHED || (ns == NS && name == "pgml-operator-leader-election"),
            "Role {ns}/{name}"
        );
    }

    // Both workloads watch that namespace only: its Roles grant nothing elsewhere.
    let dep = find(&objs, "Deployment", "pgml-operator");
    assert_eq!(
        env(container(dep, "operator"))["PGML_WATCH_NAMESPACE"],
        WATCHED
    );
    let ds = find(&objs, "DaemonSet", "pgml-operator-agent");
    assert_eq!(env(container(ds, "agent"))["PGML_WATCH_NAMESPACE"], WATCHED);
    // By default the agent watches every namespace, as its ClusterRole allows.
    let default = objects(&template("pgml-operator", &[]));
    let ds = find(&default, "DaemonSet", "pgml-operator-agent");
    assert!(!env(container(ds, "agent")).contains_key("PGML_WATCH_NAMESPACE"));
}

#[test]
fn network_policies_admit_only_metrics_from_to_the_metrics_ports() {
    // Off by default.
    let objs = objects(&template("pgml-operator", &[]));
    assert!(!objs.iter().any(|o| o["kind"] == "NetworkPolicy"));

    let objs = objects(&template(
        "pgml-operator",
        &["--set", "networkPolicy.enabled=true"],
    ));
    let policies: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .collect();
    assert_eq!(policies.len(), 2);
    for (policy, workload, kind, name, port) in [
        (
            "pgml-operator",
            "pgml-operator",
            "Deployment",
            "operator",
            8080,
        ),
        (
            "pgml-operator-agent",
            "pgml-operator-agent",
            "DaemonSet",
            "agent",
            8081,
        ),
    ] {
        let np = find(&objs, "NetworkPolicy", policy);
        assert_eq!(np["metadata"]["namespace"], NS);
        let spec = &np["spec"];
        // It selects this workload's Pods, and not the other's.
        let w = find(&objs, kind, workload);
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        let selector = spec["podSelector"]["matchLabels"]
            .as_mapping()
            .expect("matchLabels");
        assert!(!selector.is_empty());
        for (k, v) in selector {
            assert_eq!(
                &labels[k], v,
                "NetworkPolicy {policy} selects {kind} {workload}"
            );
        }
        let other = if kind == "Deployment" {
            find(&objs, "DaemonSet", "pgml-operator-agent")
        } else {
            find(&objs, "Deployment", "pgml-operator")
        };
        let other_labels = &other["spec"]["template"]["metadata"]["labels"];
        assert!(
            selector.iter().any(|(k, v)| &other_labels[k] != v),
            "NetworkPolicy {policy} also selects the other workload"
        );
        // Ingress only, one rule: the metrics port, from the monitoring namespace.
        assert_eq!(seq(&spec["policyTypes"]), [Value::from("Ingress")]);
        let ingress = seq(&spec["ingress"]);
        assert_eq!(ingress.len(), 1, "NetworkPolicy {policy}: {ingress:?}");
        let ports = seq(&ingress[0]["ports"]);
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0]["port"], "metrics");
        let c = container(w, name);
        assert!(
            seq(&c["ports"])
                .iter()
                .any(|p| p["name"] == "metrics" && p["containerPort"].as_u64() == Some(port)),
            "{kind} {workload} has no port metrics ({port})"
        );
        let from = seq(&ingress[0]["from"]);
        assert_eq!(from.len(), 1);
        assert_eq!(
            from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "monitoring"
        );
    }

    // No source given: no ingress at all (never an empty `from`, which would admit anyone).
    let objs = objects(&template(
        "pgml-operator",
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set-json",
            "networkPolicy.metricsFrom=[]",
        ],
    ));
    for policy in ["pgml-operator", "pgml-operator-agent"] {
        let np = find(&objs, "NetworkPolicy", policy);
        assert_eq!(np["spec"]["policyTypes"][0], "Ingress");
        assert!(
            seq(&np["spec"]["ingress"]).is_empty() && np["spec"]["ingress"].is_sequence(),
            "{policy}: {:?}",
            np["spec"]["ingress"]
        );
    }
}

/// Files of a folder, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn chart_crds_and_deploy_base_are_not_stale() {
    let root = root();
    let crds = files(&root.join("crds"));
    let chart = files(&root.join("charts/pgml-operator/crds"));
    assert!(!crds.is_empty());
    assert!(
        crds == chart,
        "charts/pgml-operator/crds differs from crds/ ({:?} vs {:?}): run: cp crds/*.yaml charts/pgml-operator/crds/",
        crds.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>()
    );

    // gen-deploy.sh DIR writes DIR/base and DIR/overlays/single-namespace.
    let tmp = std::env::temp_dir().join(format!("pgml-chart-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new("bash")
        .arg("scripts/gen-deploy.sh")
        .arg(&tmp)
        .env("PGML_HELM", helm())
        .current_dir(&root)
        .output()
        .expect("running scripts/gen-deploy.sh");
    assert!(
        out.status.success(),
        "scripts/gen-deploy.sh: {}",
        text(&out.stderr)
    );
    let generated = ["base", "overlays/single-namespace"].map(|dir| {
        (
            dir,
            files(&tmp.join(dir)),
            files(&root.join("deploy").join(dir)),
        )
    });
    let _ = std::fs::remove_dir_all(&tmp);
    for (dir, fresh, committed) in generated {
        assert!(!fresh.is_empty(), "gen-deploy.sh wrote nothing in {dir}");
        assert_eq!(
            fresh.keys().collect::<Vec<_>>(),
            committed.keys().collect::<Vec<_>>(),
            "deploy/{dir} is stale: run scripts/gen-deploy.sh and commit"
        );
        for (name, body) in &fresh {
            assert!(
                committed[name] == *body,
                "deploy/{dir}/{name} is stale: run scripts/gen-deploy.sh and commit"
            );
        }
    }
}

/// A namespace the dry runs need (the release namespace; the watched one, where the
/// one-namespace renderings put their Roles), made for real (a namespaced object's dry run
/// needs its namespace), and deleted afterwards unless it was there before.
struct Namespace {
    name: &'static str,
    created: bool,
}

impl Namespace {
    fn ensure(name: &'static str) -> Namespace {
        let sb = Sandbox::get();
        let kc = sb.kube.kubeconfig.to_string_lossy().into_owned();
        let get = run(
            &sb.kubectl(),
            &["--kubeconfig", &kc, "get", "namespace", name],
        );
        if get.status.success() {
            return Namespace {
                name,
                created: false,
            };
        }
        ok(
            &sb.kubectl(),
            &["--kubeconfig", &kc, "create", "namespace", name],
        );
        Namespace {
            name,
            created: true,
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if self.created {
            let sb = Sandbox::get();
            let kc = sb.kube.kubeconfig.to_string_lossy().into_owned();
            let _ = run(
                &sb.kubectl(),
                &[
                    "--kubeconfig",
                    &kc,
                    "delete",
                    "namespace",
                    self.name,
                    "--wait=false",
                ],
            );
        }
    }
}

/// Server-side apply, dry run, of a manifest: every object must be accepted. Returns how
/// many were.
fn dry_run_apply(what: &str, yaml: &str) -> usize {
    let sb = Sandbox::get();
    let kc = sb.kube.kubeconfig.to_string_lossy().into_owned();
    let n = objects(yaml).len();
    assert!(n > 10, "{what}: only {n} objects");
    let file = std::env::temp_dir().join(format!(
        "pgml-chart-{}-{}.yaml",
        std::process::id(),
        what.replace('/', "_")
    ));
    std::fs::write(&file, yaml).unwrap();
    let path = file.to_string_lossy().into_owned();
    // --force-conflicts: other tests may really apply the same cluster-scoped objects
    // (ClusterRoles, CRDs) under another field manager; acceptance is what is checked here.
    let out = run(
        &sb.kubectl(),
        &[
            "--kubeconfig",
            &kc,
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "pgml-chart-test",
            "--dry-run=server",
            "-f",
            &path,
        ],
    );
    let _ = std::fs::remove_file(&file);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: the apiserver refused it:\n{stdout}{}",
        text(&out.stderr)
    );
    let accepted = stdout
        .lines()
        .filter(|l| l.ends_with("serverside-applied (server dry run)"))
        .count();
    assert_eq!(
        accepted, n,
        "{what}: {accepted} of {n} objects accepted:\n{stdout}"
    );
    accepted
}

#[test]
fn the_apiserver_accepts_the_rendered_chart_and_the_kustomize_output() {
    let sb = Sandbox::get();
    let _ns = Namespace::ensure(NS);
    let _watched = Namespace::ensure(WATCHED);
    let watch = format!("operator.watchNamespace={WATCHED}");
    let kc = sb.kube.kubeconfig.to_string_lossy().into_owned();
    let irsa =
        format!("operator.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE_ARN}");

    let chart = template(
        "pgml-operator",
        &["--include-crds", "--set-string", irsa.as_str()],
    );
    let n = dry_run_apply("chart", &chart);
    assert_eq!(
        n, 21,
        "3 CRDs, the Retain-to-Delete ValidatingAdmissionPolicy and its binding, the operator-bounds and agent-bounds ValidatingAdmissionPolicies and their bindings, 2 ServiceAccounts, 2 ClusterRoles and bindings, a Role and binding, PodDisruptionBudget, Service, Deployment, DaemonSet"
    );
    let n = dry_run_apply(
        "chart-bundled",
        &template(
            "pgml-operator",
            &[
                "--set",
                "agent.zfs.tools=bundled",
                "--set",
                &watch,
                "--set",
                "networkPolicy.enabled=true",
            ],
        ),
    );
    assert_eq!(
        n, 22,
        "the 16 objects besides the CRDs and the Retain-to-Delete policy, 2 Roles and RoleBindings in {WATCHED}, 2 NetworkPolicies"
    );
    // The per-cluster PostgreSQL policy of docs/security.md, in the watched namespace.
    let out = run(
        &sb.kubectl(),
        &[
            "--kubeconfig",
            &kc,
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager",
            "pgml-chart-test",
            "-n",
            WATCHED,
            "-f",
            "deploy/networkpolicy/pgmlcluster.yaml",
        ],
    );
    assert!(
        out.status.success(),
        "deploy/networkpolicy/pgmlcluster.yaml refused: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    for dir in [
        "deploy",
        "deploy/base",
        "deploy/overlays/irsa",
        "deploy/overlays/single-namespace",
    ] {
        let yaml = ok(&sb.kubectl(), &["--kubeconfig", &kc, "kustomize", dir]);
        let objs = objects(&yaml);
        find(&objs, "Namespace", NS);
        let dep = find(&objs, "Deployment", "pgml-operator");
        let e = env(container(dep, "operator"));
        match dir {
            "deploy/overlays/irsa" => {
                let sa = find(&objs, "ServiceAccount", "pgml-operator");
                assert!(
                    s(&sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
                        .starts_with("arn:aws:iam::")
                );
                assert!(e.contains_key("AWS_REGION"));
            }
            "deploy/overlays/single-namespace" => {
                assert_eq!(e["PGML_WATCH_NAMESPACE"], WATCHED);
                // The overlay is the chart watching that namespace, object for object (its
                // Roles there, the ClusterRoles cut down, both workloads' env), plus the
                // Namespace of the base.
                let chart = comparable(objects(&template(
                    "pgml-operator",
                    &["--include-crds", "--set", &watch],
                )));
                let mut overlay = comparable(objs.clone());
                assert!(
                    overlay
                        .remove(&("Namespace".into(), String::new(), NS.into()))
                        .is_some()
                );
                assert_eq!(
                    overlay.keys().collect::<Vec<_>>(),
                    chart.keys().collect::<Vec<_>>(),
                    "{dir} and the chart with {watch} render different objects"
                );
                for (k, o) in &overlay {
                    assert!(
                        *o == chart[k],
                        "{dir}: {k:?} is not what the chart with {watch} renders:\n{}\nvs\n{}",
                        serde_yaml::to_string(o).unwrap(),
                        serde_yaml::to_string(&chart[k]).unwrap()
                    );
                }
                let namespaced: Vec<_> = grants(&objs, "ClusterRole")
                    .into_iter()
                    .filter(|(_, _, r, _)| is_namespaced(r))
                    .collect();
                assert!(namespaced.is_empty(), "{dir}: {namespaced:?}");
            }
            _ => assert!(!e.contains_key("PGML_WATCH_NAMESPACE")),
        }
        let expected = if dir == "deploy/overlays/single-namespace" {
            26
        } else {
            22
        };
        assert_eq!(
            dry_run_apply(dir, &yaml),
            expected,
            "{dir}: the chart's 21 objects and the Namespace (single-namespace: and 2 Roles and RoleBindings in {WATCHED})"
        );
    }
}

/// Objects by (kind, namespace, name), without Helm's own labels and with each container's
/// env sorted by name (a kustomize patch appends where the chart inserts): what an overlay
/// and the chart rendering it stands for must agree on.
fn comparable(objs: Vec<Value>) -> BTreeMap<(String, String, String), Value> {
    fn strip_helm_labels(meta: Option<&mut Value>) {
        if let Some(labels) = meta
            .and_then(|m| m.get_mut("labels"))
            .and_then(Value::as_mapping_mut)
        {
            labels.remove("helm.sh/chart");
            labels.remove("app.kubernetes.io/managed-by");
        }
    }
    /// kustomize writes a whole float (a CRD's `maximum: 60.0`) as an integer; both are
    /// the same number to the API server.
    fn whole_floats_as_integers(v: &mut Value) {
        match v {
            Value::Number(n) => {
                if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && n.is_f64()) {
                    *v = Value::from(f as i64);
                }
            }
            Value::Sequence(s) => s.iter_mut().for_each(whole_floats_as_integers),
            Value::Mapping(m) => m.values_mut().for_each(whole_floats_as_integers),
            _ => {}
        }
    }
    objs.into_iter()
        .map(|mut o| {
            whole_floats_as_integers(&mut o);
            strip_helm_labels(o.get_mut("metadata"));
            if let Some(template) = o.get_mut("spec").and_then(|s| s.get_mut("template")) {
                strip_helm_labels(template.get_mut("metadata"));
                let containers = template
                    .get_mut("spec")
                    .and_then(|s| s.get_mut("containers"))
                    .and_then(Value::as_sequence_mut);
                for c in containers.into_iter().flatten() {
                    if let Some(env) = c.get_mut("env").and_then(Value::as_sequence_mut) {
                        env.sort_by_key(|e| s(&e["name"]).to_string());
                    }
                }
            }
            let key = (
                s(&o["kind"]).to_string(),
                s(&o["metadata"]["namespace"]).to_string(),
                s(&o["metadata"]["name"]).to_string(),
            );
            (key, o)
        })
        .collect()
}

/// The operator's Pods meet the `restricted` Pod Security Standard (non-root, no
/// privilege escalation, all capabilities dropped, RuntimeDefault seccomp); the agent's,
/// privileged for ZFS, do not, and the apiserver says so. Checked with the PodSecurity
/// admission's warnings on a namespace labelled warn=restricted.
#[test]
fn the_operator_meets_the_restricted_pod_security_standard_and_the_agent_is_flagged() {
    let sb = Sandbox::get();
    let kc = sb.kube.kubeconfig.to_string_lossy().into_owned();
    let ns = format!("pgml-chart-psa-{}", std::process::id());
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    pod-security.kubernetes.io/warn: restricted\n"
    );
    let file = std::env::temp_dir().join(format!("{ns}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    let path = file.to_string_lossy().into_owned();
    ok(&sb.kubectl(), &["--kubeconfig", &kc, "apply", "-f", &path]);
    struct Gone(String, String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let sb = Sandbox::get();
            let _ = run(
                &sb.kubectl(),
                &[
                    "--kubeconfig",
                    &self.1,
                    "delete",
                    "namespace",
                    &self.0,
                    "--wait=false",
                ],
            );
        }
    }
    let _gone = Gone(ns.clone(), kc.clone());

    let rendered = ok(
        helm(),
        &[
            "template",
            "pgml-operator",
            "charts/pgml-operator",
            "--namespace",
            &ns,
        ],
    );
    let objs = objects(&rendered);
    let warnings = |kind: &str, name: &str| -> String {
        let obj = find(&objs, kind, name);
        std::fs::write(&file, serde_yaml::to_string(obj).unwrap()).unwrap();
        let out = run(
            &sb.kubectl(),
            &[
                "--kubeconfig",
                &kc,
                "apply",
                "--server-side",
                "--dry-run=server",
                "-f",
                &path,
            ],
        );
        assert!(
            out.status.success(),
            "{kind} {name} refused: {}",
            text(&out.stderr)
        );
        text(&out.stderr)
    };
    let op = warnings("Deployment", "pgml-operator");
    assert!(
        !op.contains("PodSecurity"),
        "the operator Deployment would violate the restricted standard:\n{op}"
    );
    let agent = warnings("DaemonSet", "pgml-operator-agent");
    let _ = std::fs::remove_file(&file);
    for what in [
        "would violate PodSecurity \"restricted",
        "privileged",
        "hostPath",
    ] {
        assert!(
            agent.contains(what),
            "expected {what:?} in the agent's PodSecurity warning:\n{agent}"
        );
    }
}
