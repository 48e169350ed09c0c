//! The chart's RBAC on the sandbox, and kubeconfigs of its ServiceAccounts: so that the
//! operator and the agents run with exactly the permissions `helm install` gives them, not
//! as admin.
//!
//! The chart is rendered with the test bed's helm (`PGML_HELM`, else
//! `tests/testbed/helm/build.sh --print`) into the test's namespace with a release name of
//! its own, watching that namespace only (Roles there) or every namespace (the chart's
//! default: ClusterRoles), see [`Watch`], so that the cluster-scoped objects (ClusterRoles, ClusterRoleBindings: named
//! after the release) never collide with those of a test running beside it. Its
//! ServiceAccounts, Roles and bindings are server-side applied with the admin client; a
//! token from the TokenRequest API makes a kubeconfig per identity.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::sandbox::{Sandbox, repo_root};

/// The kinds of the chart that make up its RBAC (what the tests apply of it).
pub const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// The kinds of the chart's bounds on the operator (templates/admission-policy.yaml).
pub const ADMISSION_POLICY_KINDS: [&str; 2] = [
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

const FIELD_MANAGER: &str = "pgml-e2e-rbac";

/// The helm binary: `$PGML_HELM`, else the one `tests/testbed/helm/build.sh` built.
pub fn helm() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("PGML_HELM") {
        return Ok(PathBuf::from(h));
    }
    let script = repo_root().join("tests/testbed/helm/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('/'))
        .map(PathBuf::from);
    match path {
        Some(p) if out.status.success() && p.exists() => Ok(p),
        _ => bail!(
            "no helm: `{} --print` said {:?} / {:?}; run scripts/deps.sh (or set PGML_HELM)",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `helm template <release> charts/pgml-operator --namespace <namespace>` with `set`
/// (`key=value` each), as objects.
pub fn render(release: &str, namespace: &str, set: &[&str]) -> anyhow::Result<Vec<Value>> {
    let chart = repo_root().join("charts/pgml-operator");
    let mut cmd = Command::new(helm()?);
    cmd.args(["template", release])
        .arg(&chart)
        .args(["--namespace", namespace]);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().context("running helm template")?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("helm's output is not UTF-8")?;
    let mut objects = vec![];
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).context("parsing helm's output")?;
        if v.is_object() {
            objects.push(v);
        }
    }
    Ok(objects)
}

/// Only the chart's RBAC objects (see [`RBAC_KINDS`]).
pub fn rbac_only(objects: Vec<Value>) -> Vec<Value> {
    objects
        .into_iter()
        .filter(|o| RBAC_KINDS.contains(&o["kind"].as_str().unwrap_or_default()))
        .collect()
}

/// Takes `verb` away from every rule of the rendered `kind`/`name` that grants it on
/// `resource` (e.g. `zfspools/status`), the other verbs and resources of the rule kept.
/// Returns how many rules changed.
pub fn remove_verb(
    objects: &mut [Value],
    kind: &str,
    name: &str,
    resource: &str,
    verb: &str,
) -> usize {
    let mut changed = 0;
    for o in objects.iter_mut() {
        if o["kind"] != kind || o["metadata"]["name"] != name {
            continue;
        }
        let Some(rules) = o["rules"].as_array_mut() else {
            continue;
        };
        let mut split = vec![];
        for rule in rules.iter_mut() {
            let names = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (resources, verbs) = (names("resources"), names("verbs"));
            if !resources.iter().any(|r| r == resource) || !verbs.iter().any(|v| v == verb) {
                continue;
            }
            // The resource keeps the rule's other verbs in a rule of its own; the rule keeps
            // its other resources.
            let mut own = rule.clone();
            own["resources"] = json!([resource]);
            own["verbs"] = json!(verbs.iter().filter(|v| *v != verb).collect::<Vec<_>>());
            rule["resources"] = json!(
                resources
                    .iter()
                    .filter(|r| *r != resource)
                    .collect::<Vec<_>>()
            );
            if own["verbs"].as_array().is_some_and(|v| !v.is_empty()) {
                split.push(own);
            }
            changed += 1;
        }
        rules.retain(|r| r["resources"].as_array().is_some_and(|a| !a.is_empty()));
        rules.extend(split);
    }
    changed
}

/// How the chart is rendered for a test: its `operator.watchNamespace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// `operator.watchNamespace` = the test's namespace: the namespaced permissions are Roles
    /// there; the ClusterRoles grant only Nodes and PersistentVolumes.
    Namespace,
    /// The chart's default, every namespace: all of it in the ClusterRoles.
    All,
}

/// The chart's RBAC applied in a test's namespace, with a kubeconfig for each of its two
/// ServiceAccounts.
pub struct ChartRbac {
    client: Client,
    /// The release's full name F: the operator's ServiceAccount and ClusterRole; `F-agent`
    /// the agent's.
    pub fullname: String,
    pub namespace: String,
    pub operator_kubeconfig: PathBuf,
    pub agent_kubeconfig: PathBuf,
    /// The cluster-scoped objects applied, for [`ChartRbac::cleanup`].
    cluster_scoped: Vec<(String, String)>,
}

impl ChartRbac {
    /// The release name a test namespace's chart is rendered with (unique per test, so the
    /// ClusterRoles named after it are too).
    pub fn release(namespace: &str) -> String {
        format!("{namespace}-rel")
    }

    /// Renders the chart into `namespace` (watching it alone, or every namespace: `watch`),
    /// lets `edit` change the RBAC objects (to take a permission away, say), applies them and
    /// makes the kubeconfigs. The processes themselves are told the namespace either way
    /// ([`crate::procs`] sets `PGML_WATCH_NAMESPACE`).
    pub async fn install(
        sb: &Sandbox,
        client: &Client,
        namespace: &str,
        watch: Watch,
        edit: impl FnOnce(&mut Vec<Value>),
    ) -> anyhow::Result<ChartRbac> {
        let release = Self::release(namespace);
        let watched = format!("operator.watchNamespace={namespace}");
        let set: Vec<&str> = match watch {
            Watch::Namespace => vec![&watched],
            Watch::All => vec![],
        };
        let mut objects = rbac_only(render(&release, namespace, &set)?);
        let fullname = objects
            .iter()
            .find(|o| o["kind"] == "ServiceAccount" && !name_of(o).ends_with("-agent"))
            .map(name_of)
            .context("the chart renders no operator ServiceAccount")?;
        edit(&mut objects);
        let mut cluster_scoped = vec![];
        for o in &objects {
            apply(client, o).await?;
            if o["metadata"]["namespace"].is_null() {
                cluster_scoped.push((
                    o["kind"].as_str().unwrap_or_default().to_string(),
                    name_of(o),
                ));
            }
        }
        let dir = sb.dir.join("rbac").join(namespace);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let operator_kubeconfig = dir.join("operator.kubeconfig");
        let agent_kubeconfig = dir.join("agent.kubeconfig");
        service_account_kubeconfig(sb, client, namespace, &fullname, &operator_kubeconfig).await?;
        service_account_kubeconfig(
            sb,
            client,
            namespace,
            &format!("{fullname}-agent"),
            &agent_kubeconfig,
        )
        .await?;
        // The apiserver's authorizer learns of new roles and bindings through its informers:
        // a process started at once could be refused what the chart grants.
        for (sa, kubeconfig) in [
            (fullname.clone(), &operator_kubeconfig),
            (format!("{fullname}-agent"), &agent_kubeconfig),
        ] {
            for probe in probes(&objects, &sa) {
                wait_allowed(kubeconfig, &probe).await?;
            }
        }
        Ok(ChartRbac {
            client: client.clone(),
            fullname,
            namespace: namespace.to_string(),
            operator_kubeconfig,
            agent_kubeconfig,
            cluster_scoped,
        })
    }

    /// `KUBECONFIG` of the operator's ServiceAccount, for [`crate::procs::operator_with_env`].
    pub fn operator_env(&self) -> Vec<(&str, &str)> {
        vec![("KUBECONFIG", path_str(&self.operator_kubeconfig))]
    }

    /// `KUBECONFIG` of the agent's ServiceAccount, for [`crate::procs::agent_with_env`].
    pub fn agent_env(&self) -> Vec<(&str, &str)> {
        vec![("KUBECONFIG", path_str(&self.agent_kubeconfig))]
    }

    /// Deletes the cluster-scoped objects (the namespaced ones go with the namespace).
    pub async fn cleanup(self) {
        for (kind, name) in &self.cluster_scoped {
            let ar = rbac_resource(kind);
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            let _ = api.delete(name, &DeleteParams::background()).await;
        }
    }
}

/// The chart's admission policy bounding the operator's Pods and PersistentVolumes
/// (`F-operator-bounds` and its binding, templates/admission-policy.yaml), rendered with the
/// release name of [`ChartRbac::release`] for the same namespace (so that it binds that
/// release's operator ServiceAccount) and server-side applied with the admin client.
/// The apiserver enforces a new policy some time after it is stored: wait for it yourself.
pub struct ChartAdmissionPolicy {
    client: Client,
    /// The policy's (and the binding's) name.
    pub name: String,
    /// The objects as rendered.
    pub objects: Vec<Value>,
}

impl ChartAdmissionPolicy {
    /// Renders the chart into `namespace` with `set` (`key=value` each) and applies its
    /// admission policy and binding.
    pub async fn install(
        client: &Client,
        namespace: &str,
        set: &[&str],
    ) -> anyhow::Result<ChartAdmissionPolicy> {
        let release = ChartRbac::release(namespace);
        let objects: Vec<Value> = render(&release, namespace, set)?
            .into_iter()
            .filter(|o| ADMISSION_POLICY_KINDS.contains(&o["kind"].as_str().unwrap_or_default()))
            .collect();
        let name = objects
            .iter()
            .find(|o| o["kind"] == "ValidatingAdmissionPolicy")
            .map(name_of)
            .context("the chart renders no ValidatingAdmissionPolicy (admissionPolicy.enabled?)")?;
        // The policy before its binding (a binding of a missing policy is ignored, but the
        // order keeps the log readable).
        for kind in ADMISSION_POLICY_KINDS {
            for o in objects.iter().filter(|o| o["kind"] == kind) {
                apply(client, o).await?;
            }
        }
        Ok(ChartAdmissionPolicy {
            client: client.clone(),
            name,
            objects,
        })
    }

    /// Deletes the binding and the policy (both cluster-scoped).
    pub async fn cleanup(self) {
        for kind in ADMISSION_POLICY_KINDS.iter().rev() {
            for o in self.objects.iter().filter(|o| o["kind"] == *kind) {
                let api: Api<DynamicObject> =
                    Api::all_with(self.client.clone(), &rbac_resource(kind));
                let _ = api.delete(&name_of(o), &DeleteParams::background()).await;
            }
        }
    }
}

/// One permission each binding of ServiceAccount `sa` grants (the first of its role's
/// rules), as SelfSubjectAccessReview resource attributes, in the binding's namespace.
fn probes(objects: &[Value], sa: &str) -> Vec<Value> {
    let mut out = vec![];
    for b in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let binds_sa = b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa);
        let role = objects.iter().find(|o| {
            o["kind"] == b["roleRef"]["kind"] && o["metadata"]["name"] == b["roleRef"]["name"]
        });
        let Some(rule) = role
            .filter(|_| binds_sa)
            .and_then(|r| r["rules"].as_array())
            .and_then(|rules| rules.first())
        else {
            continue;
        };
        let (Some(group), Some(resource), Some(verb)) = (
            rule["apiGroups"][0].as_str(),
            rule["resources"][0].as_str(),
            rule["verbs"][0].as_str(),
        ) else {
            continue;
        };
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        out.push(json!({
            "group": group, "resource": resource, "subresource": sub, "verb": verb,
            "namespace": b["metadata"]["namespace"].as_str().unwrap_or_default(),
        }));
    }
    out
}

/// Asks, as the kubeconfig's identity, until the API server allows `attributes` (20 s).
async fn wait_allowed(kubeconfig: &Path, attributes: &Value) -> anyhow::Result<()> {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let api: Api<SelfSubjectAccessReview> = Api::all(crate::kube::try_client_of(kubeconfig).await?);
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = api.create(&PostParams::default(), &review).await?;
        if r.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{} is still refused {attributes} 20 s after the chart's RBAC was applied",
                kubeconfig.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("sandbox paths are UTF-8")
}

fn name_of(o: &Value) -> String {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn rbac_resource(kind: &str) -> ApiResource {
    let gvk = if kind == "ServiceAccount" {
        GroupVersionKind::gvk("", "v1", kind)
    } else if ADMISSION_POLICY_KINDS.contains(&kind) {
        GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind)
    } else {
        GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind)
    };
    ApiResource::from_gvk(&gvk)
}

/// Server-side applies one rendered object (admin client).
async fn apply(client: &Client, o: &Value) -> anyhow::Result<()> {
    let kind = o["kind"].as_str().context("an object without kind")?;
    let name = name_of(o);
    let ar = rbac_resource(kind);
    let api: Api<DynamicObject> = match o["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(o),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// Writes to `path` a kubeconfig of ServiceAccount `namespace/service_account`: the
/// sandbox's (server, CA) with a token from the TokenRequest API as its only user, and
/// `namespace` as its context's namespace. Whatever uses it has exactly that account's
/// permissions.
pub async fn service_account_kubeconfig(
    sb: &Sandbox,
    client: &Client,
    namespace: &str,
    service_account: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let spec = json!({"audiences": [], "expirationSeconds": 86400});
    token_kubeconfig(sb, client, namespace, service_account, spec, path).await
}

/// [`service_account_kubeconfig`] with the token bound to Pod `pod_name` (UID `pod_uid`), as
/// the kubelet's projected tokens are: the apiserver adds the Pod's node to the token's
/// user (extra `authentication.kubernetes.io/node-name`), and the token dies with the Pod.
pub async fn pod_bound_kubeconfig(
    sb: &Sandbox,
    client: &Client,
    namespace: &str,
    service_account: &str,
    (pod_name, pod_uid): (&str, &str),
    path: &Path,
) -> anyhow::Result<()> {
    let spec = json!({"audiences": [], "expirationSeconds": 3600,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid}});
    token_kubeconfig(sb, client, namespace, service_account, spec, path).await
}

async fn token_kubeconfig(
    sb: &Sandbox,
    client: &Client,
    namespace: &str,
    service_account: &str,
    spec: Value,
    path: &Path,
) -> anyhow::Result<()> {
    let req: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec
    }))?;
    let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &req)
        .await
        .with_context(|| format!("a token for ServiceAccount {namespace}/{service_account}"))?
        .status
        .map(|s| s.token)
        .context("the TokenRequest has no token")?;
    let admin = std::fs::read_to_string(&sb.kube.kubeconfig)?;
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&admin)?;
    kc["users"] = serde_yaml::to_value(json!([{"name": "pod", "user": {"token": token}}]))?;
    if let Some(contexts) = kc["contexts"].as_sequence_mut() {
        for c in contexts {
            c["context"]["user"] = "pod".into();
            c["context"]["namespace"] = namespace.into();
        }
    }
    write_private(path, serde_yaml::to_string(&kc)?.as_bytes())
}

/// Writes a file only its owner may read (it holds a token), atomically.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role() -> Vec<Value> {
        vec![json!({
            "kind": "ClusterRole", "metadata": {"name": "op"},
            "rules": [
                {"apiGroups": ["pgml.io"], "resources": ["zfspools/status", "ebssnapshots/status"], "verbs": ["patch"]},
                {"apiGroups": ["pgml.io"], "resources": ["zfspools"], "verbs": ["get", "patch"]},
            ]
        })]
    }

    #[test]
    fn each_binding_of_a_service_account_gives_one_probe() {
        let mut objects = role();
        objects.extend([
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "op"},
                   "roleRef": {"kind": "ClusterRole", "name": "op"},
                   "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "t"}]}),
            json!({"kind": "Role", "metadata": {"name": "le", "namespace": "t"},
                   "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "le", "namespace": "t"},
                   "roleRef": {"kind": "Role", "name": "le"},
                   "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "t"}]}),
        ]);
        let p = probes(&objects, "op");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["resource"], "zfspools");
        assert_eq!(p[0]["subresource"], "status");
        assert_eq!(p[0]["verb"], "patch");
        assert_eq!(p[0]["namespace"], "");
        assert_eq!(p[1]["resource"], "leases");
        assert_eq!(p[1]["namespace"], "t");
        assert!(probes(&objects, "op-agent").is_empty());
    }

    #[test]
    fn removing_a_verb_keeps_the_rest_of_the_rule() {
        let mut o = role();
        assert_eq!(
            remove_verb(&mut o, "ClusterRole", "op", "zfspools/status", "patch"),
            1
        );
        let rules = o[0]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0]["resources"], json!(["ebssnapshots/status"]));
        assert_eq!(rules[1]["resources"], json!(["zfspools"]));
    }

    #[test]
    fn removing_one_of_several_verbs_splits_the_resource_off() {
        let mut o = role();
        assert_eq!(
            remove_verb(&mut o, "ClusterRole", "op", "zfspools", "patch"),
            1
        );
        let rules = o[0]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1]["resources"], json!(["zfspools"]));
        assert_eq!(rules[1]["verbs"], json!(["get"]));
        assert_eq!(
            remove_verb(&mut o, "ClusterRole", "other", "zfspools", "get"),
            0
        );
    }
}
