//! `deploy/iam/operator-policy.json` read against this crate, the only place the operator
//! calls AWS (`src/sdk.rs`): it allows exactly the actions the code calls, every statement is
//! pinned to one region, every statement that reaches an existing volume or snapshot is
//! limited to this installation's (its `pgml.io/installation` tag equal to the role's), new
//! volumes and snapshots must be requested with that tag, new volumes must be encrypted; and
//! the Pod Identity trust policy names the account and the association. These check the
//! documents, not IAM's evaluation of them (docs/iam.md: the policy simulator does that).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

const INSTALLATION: &str = "${aws:PrincipalTag/pgml.io/installation}";

fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn json(path: &str) -> Value {
    serde_json::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn statements(policy: &Value) -> &[Value] {
    policy["Statement"].as_array().expect("Statement is a list")
}

/// A string or a list of strings, as IAM allows for Action and Resource.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

/// Every AWS operation `src/sdk.rs` calls, as IAM actions: each call's errors are named
/// `err("<Operation>", …)`; ListChangedBlocks is the EBS direct API's, the rest EC2's.
fn called() -> BTreeSet<String> {
    let src = repo_file("crates/pgml-aws/src/sdk.rs");
    let ops: BTreeSet<String> = src
        .split("err(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    assert!(ops.len() >= 10, "found only {ops:?} in src/sdk.rs");
    ops.into_iter()
        .map(|op| match op.as_str() {
            "ListChangedBlocks" => format!("ebs:{op}"),
            _ => format!("ec2:{op}"),
        })
        .collect()
}

fn policy() -> Value {
    json("deploy/iam/operator-policy.json")
}

/// The statement's `StringEquals` value of `key`, if any.
fn equals<'a>(s: &'a Value, key: &str) -> Option<&'a str> {
    s["Condition"]["StringEquals"][key].as_str()
}

fn on_volumes_or_snapshots(s: &Value) -> bool {
    strings(&s["Resource"])
        .iter()
        .any(|r| r.ends_with(":volume/*") || r.ends_with(":snapshot/*"))
}

/// The statement requires the existing resource's `pgml.io/installation` tag to be the
/// role's.
fn existing_is_this_installations(s: &Value) -> bool {
    ["ec2:ResourceTag", "aws:ResourceTag"]
        .iter()
        .any(|k| equals(s, &format!("{k}/pgml.io/installation")) == Some(INSTALLATION))
}

/// The opt-in tag of volumes made by others (the EBS CSI driver) that this installation may
/// snapshot.
const OPT_IN: &str = "ec2:ResourceTag/pgml.io/snapshots-by";

/// A statement on volumes that opted in to this installation's snapshots. It must allow
/// CreateSnapshots on volumes and nothing else.
fn opted_in_for_this_installation(s: &Value) -> bool {
    if equals(s, OPT_IN) != Some(INSTALLATION) {
        return false;
    }
    assert_eq!(
        strings(&s["Action"]),
        ["ec2:CreateSnapshots"],
        "opted-in volumes may only be snapshotted: {s}"
    );
    assert_eq!(strings(&s["Resource"]), ["arn:aws:ec2:*:*:volume/*"], "{s}");
    true
}

#[test]
fn the_policy_allows_exactly_the_actions_the_code_calls() {
    let p = policy();
    let mut allowed = BTreeSet::new();
    for s in statements(&p) {
        assert_eq!(s["Effect"], "Allow", "{s}");
        for a in strings(&s["Action"]) {
            assert!(!a.contains('*'), "a wildcard action: {s}");
            allowed.insert(a.to_string());
        }
        if strings(&s["Resource"]).contains(&"*") {
            assert!(
                strings(&s["Action"])
                    .iter()
                    .all(|a| a.starts_with("ec2:Describe")),
                "only Describe* may name every resource: {s}"
            );
        }
    }
    assert_eq!(
        allowed,
        called(),
        "the policy's actions and src/sdk.rs's calls"
    );
}

#[test]
fn every_statement_is_pinned_to_one_region() {
    let p = policy();
    let regions: BTreeSet<&str> = statements(&p)
        .iter()
        .map(|s| {
            equals(s, "aws:RequestedRegion")
                .unwrap_or_else(|| panic!("no aws:RequestedRegion: {s}"))
        })
        .collect();
    assert_eq!(regions.len(), 1, "{regions:?}");
}

#[test]
fn volumes_and_snapshots_are_this_installations_only() {
    let p = policy();
    let mut scoped = 0;
    for s in statements(&p).iter().filter(|s| on_volumes_or_snapshots(s)) {
        let sid = s["Sid"].as_str().unwrap_or_default();
        let requested = equals(s, "aws:RequestTag/pgml.io/installation") == Some(INSTALLATION);
        if existing_is_this_installations(s) || requested {
            scoped += 1;
            // Either way, the operator's own tag too.
            assert!(
                ["ec2:ResourceTag", "aws:ResourceTag", "aws:RequestTag"]
                    .iter()
                    .any(|k| equals(s, &format!("{k}/pgml.io/managed-by")) == Some("pgml-operator")),
                "{sid}: no pgml.io/managed-by condition"
            );
            continue;
        }
        if opted_in_for_this_installation(s) {
            continue;
        }
        // The one exception: tags written by the create calls themselves (whose statements
        // check the requested tags), never on an existing resource.
        assert_eq!(
            sid, "TagOnCreate",
            "{sid} reaches volumes or snapshots of any installation: {s}"
        );
        assert_eq!(strings(&s["Action"]), ["ec2:CreateTags"]);
        assert_eq!(
            strings(&s["Condition"]["StringEquals"]["ec2:CreateAction"]),
            ["CreateVolume", "CreateSnapshots"]
        );
    }
    assert!(scoped >= 7, "only {scoped} statements are scoped");
    // Every action that changes, deletes or reads into an existing volume or snapshot is
    // allowed there only under the installation condition.
    for action in [
        "ec2:AttachVolume",
        "ec2:DetachVolume",
        "ec2:ModifyVolume",
        "ec2:DeleteVolume",
        "ec2:DeleteSnapshot",
        "ebs:ListChangedBlocks",
    ] {
        let covering: Vec<&Value> = statements(&p)
            .iter()
            .filter(|s| strings(&s["Action"]).contains(&action) && on_volumes_or_snapshots(s))
            .collect();
        assert!(!covering.is_empty(), "{action} on no volume or snapshot");
        for s in covering {
            assert!(
                existing_is_this_installations(s),
                "{action} is not limited to this installation's: {s}"
            );
        }
    }
}

#[test]
fn new_volumes_must_be_encrypted_and_tagged_for_this_installation() {
    let p = policy();
    let creates: Vec<&Value> = statements(&p)
        .iter()
        .filter(|s| strings(&s["Action"]).contains(&"ec2:CreateVolume"))
        .filter(|s| {
            strings(&s["Resource"])
                .iter()
                .any(|r| r.ends_with(":volume/*"))
        })
        .collect();
    assert_eq!(creates.len(), 1, "one statement creates volumes");
    let s = creates[0];
    assert_eq!(s["Condition"]["Bool"]["ec2:Encrypted"], "true", "{s}");
    assert_eq!(
        equals(s, "aws:RequestTag/pgml.io/installation"),
        Some(INSTALLATION)
    );
    assert_eq!(
        equals(s, "aws:RequestTag/pgml.io/managed-by"),
        Some("pgml-operator")
    );
}

#[test]
fn the_pod_identity_trust_names_the_account_the_association_and_the_service_account() {
    let t = json("deploy/iam/operator-trust-pod-identity.json");
    let s = statements(&t);
    assert_eq!(s.len(), 1);
    let s = &s[0];
    assert_eq!(s["Principal"]["Service"], "pods.eks.amazonaws.com");
    assert_eq!(strings(&s["Action"]), ["sts:AssumeRole", "sts:TagSession"]);
    let account = equals(s, "aws:SourceAccount").expect("aws:SourceAccount");
    assert!(account.len() == 12 && account.chars().all(|c| c.is_ascii_digit()));
    let arn = s["Condition"]["ArnLike"]["aws:SourceArn"]
        .as_str()
        .expect("aws:SourceArn (ArnLike)");
    assert!(
        arn.starts_with("arn:aws:eks:")
            && arn.contains(&format!(":{account}:podidentityassociation/")),
        "{arn}"
    );
    assert_eq!(
        equals(s, "aws:RequestTag/kubernetes-namespace"),
        Some("pgml-system")
    );
    assert_eq!(
        equals(s, "aws:RequestTag/kubernetes-service-account"),
        Some("pgml-operator")
    );
}

#[test]
fn every_policy_file_is_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/iam");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).expect("deploy/iam") {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(v["Version"], "2012-10-17", "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 5, "{n} policy files in {}", dir.display());
}

/// PVC sources: a volume the EBS CSI driver made may be snapshotted (only that) once tagged
/// `pgml.io/snapshots-by=<installation>`, and docs/iam.md's StorageClass example sets that
/// very tag through the driver's `tagSpecification_<n>` parameter.
#[test]
fn csi_volumes_opt_in_to_snapshots_through_their_storage_class() {
    let p = policy();
    let opted: Vec<&Value> = statements(&p)
        .iter()
        .filter(|s| opted_in_for_this_installation(s))
        .collect();
    assert_eq!(opted.len(), 1, "one statement for opted-in volumes");
    assert!(equals(opted[0], "aws:RequestedRegion").is_some());
    // No other statement names the opt-in tag: it opens nothing else.
    for s in statements(&p) {
        let text = s.to_string();
        assert!(
            std::ptr::eq(s, opted[0]) || !text.contains("pgml.io/snapshots-by"),
            "{s}"
        );
    }
    let doc = repo_file("docs/iam.md");
    let class: Vec<&str> = doc
        .split("```yaml")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains("kind: StorageClass"))
        .collect();
    assert_eq!(class.len(), 1, "docs/iam.md shows one StorageClass");
    let sc: serde_yaml::Value = serde_yaml::from_str(class[0]).expect("the example is YAML");
    assert_eq!(sc["provisioner"], "ebs.csi.aws.com");
    let params = sc["parameters"].as_mapping().expect("parameters");
    let tags: Vec<&str> = params
        .iter()
        .filter(|(k, _)| {
            k.as_str()
                .is_some_and(|k| k.starts_with("tagSpecification_"))
        })
        .filter_map(|(_, v)| v.as_str())
        .collect();
    let key = OPT_IN.trim_start_matches("ec2:ResourceTag/");
    assert!(
        tags.iter().any(|t| t
            .split_once('=')
            .is_some_and(|(k, v)| k == key && !v.is_empty())),
        "the StorageClass tags no {key}: {tags:?}"
    );
    assert_eq!(
        params.get("encrypted").and_then(|v| v.as_str()),
        Some("true")
    );
}
