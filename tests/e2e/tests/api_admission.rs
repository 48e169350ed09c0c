//! The API at admission, against the sandbox's real kube-apiserver: every manifest in
//! `examples/` is accepted and reads back with what was sent, and every manifest in
//! `tests/manifests/invalid/` is rejected with the message its `# expect:` line names.
//!
//! Objects are written the way `kubectl apply` writes them: a POST (a PUT for the update
//! cases) with `fieldValidation=Strict`, so unknown fields are errors rather than silently
//! dropped. Each test works in its own namespace. The CRDs and the admission policy that
//! ships with them are (re)applied from the Rust types first, so the test checks what this
//! commit generates even if the sandbox was started with older files in `crds/`.

use kube::api::PostParams;
use kube::{Client, core::Request};
use pgml_testbed::kube::{TestNamespace, client};
use pgml_testbed::manifests::{file_name, invalid_cases, load, missing_or_changed, yaml_files};
use serde_json::Value;
use tokio::sync::OnceCell;

fn collection(ns: &str, obj: &Value) -> String {
    let plural = match obj["kind"].as_str().unwrap() {
        "ZfsPool" => "zfspools",
        "EbsSnapshot" => "ebssnapshots",
        "PgmlCluster" => "pgmlclusters",
        other => panic!("not a pgml.io kind: {other}"),
    };
    format!("/apis/pgml.io/v1alpha1/namespaces/{ns}/{plural}")
}

/// Creates `obj` in `ns` with strict field validation; returns the stored object.
async fn create(client: &Client, ns: &str, obj: &Value) -> Result<Value, kube::Error> {
    let mut req = Request::new(collection(ns, obj))
        .create(&PostParams::default(), serde_json::to_vec(obj).unwrap())
        .unwrap();
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    *req.uri_mut() = format!("{uri}{sep}fieldValidation=Strict").parse().unwrap();
    client.request::<Value>(req).await
}

/// Replaces the stored object `name` with `obj` (strict field validation).
async fn replace(client: &Client, ns: &str, obj: &Value) -> Result<Value, kube::Error> {
    let name = obj["metadata"]["name"].as_str().unwrap();
    let mut req = Request::new(collection(ns, obj))
        .replace(
            name,
            &PostParams::default(),
            serde_json::to_vec(obj).unwrap(),
        )
        .unwrap();
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    *req.uri_mut() = format!("{uri}{sep}fieldValidation=Strict").parse().unwrap();
    client.request::<Value>(req).await
}

async fn get(client: &Client, ns: &str, obj: &Value) -> Value {
    let name = obj["metadata"]["name"].as_str().unwrap();
    let req = Request::new(collection(ns, obj))
        .get(name, &Default::default())
        .unwrap();
    client
        .request::<Value>(req)
        .await
        .unwrap_or_else(|e| panic!("reading back {name}: {e}"))
}

#[tokio::test]
async fn examples_are_accepted_and_read_back_unchanged() {
    let client = client().await;
    ensure_crds_once(&client).await;
    let ns = TestNamespace::new(&client, "api-examples").await;
    let examples = yaml_files("examples");
    assert!(examples.len() >= 7, "too few examples: {examples:?}");
    for path in &examples {
        let sent = load(path);
        let created = create(&client, ns.name(), &sent)
            .await
            .unwrap_or_else(|e| panic!("{} was rejected: {e}", file_name(path)));
        assert_eq!(created["metadata"]["generation"], 1, "{}", file_name(path));
        let back = get(&client, ns.name(), &sent).await;
        if let Some(diff) = missing_or_changed(&sent["spec"], &back["spec"], "spec") {
            panic!(
                "{}: {diff}\nread back: {}",
                file_name(path),
                serde_json::to_string_pretty(&back["spec"]).unwrap()
            );
        }
        // What was stored also deserializes into the operator's types.
        let kind = sent["kind"].as_str().unwrap();
        let typed = match kind {
            "ZfsPool" => serde_json::from_value::<pgml_api::ZfsPool>(back.clone()).map(|_| ()),
            "EbsSnapshot" => {
                serde_json::from_value::<pgml_api::EbsSnapshot>(back.clone()).map(|_| ())
            }
            _ => serde_json::from_value::<pgml_api::PgmlCluster>(back.clone()).map(|_| ()),
        };
        typed.unwrap_or_else(|e| {
            panic!(
                "{}: stored object does not deserialize: {e}",
                file_name(path)
            )
        });
        // Re-applying the same object unchanged must pass every transition rule.
        replace(&client, ns.name(), &back)
            .await
            .unwrap_or_else(|e| panic!("{}: a no-op update was rejected: {e}", file_name(path)));
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn schema_defaults_are_applied_on_create() {
    let client = client().await;
    ensure_crds_once(&client).await;
    let ns = TestNamespace::new(&client, "api-defaults").await;
    let pool: Value = serde_yaml::from_str(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {name: bare}\nspec: {nodeName: node-a, volumes: {sizeGiB: 10}}",
    )
    .unwrap();
    let stored = create(&client, ns.name(), &pool).await.unwrap();
    let spec = &stored["spec"];
    assert_eq!(spec["layout"], "raid0");
    assert_eq!(spec["reclaimPolicy"], "Retain");
    assert_eq!(spec["volumes"]["type"], "gp3");
    assert_eq!(spec["volumes"]["count"], 1);
    assert_eq!(spec["volumes"]["encrypted"], true);
    assert_eq!(spec["filesystemProperties"]["atime"], "off");
    assert_eq!(spec["datasets"][0]["name"], "pgdata");
    assert_eq!(spec["datasets"][0]["properties"]["recordsize"], "32K");
    let snap: Value = serde_yaml::from_str(
        "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {name: bare}\nspec: {source: {zfsPool: {name: bare}}}",
    )
    .unwrap();
    let stored = create(&client, ns.name(), &snap).await.unwrap();
    assert_eq!(stored["spec"]["standbySignal"], "Auto");
    assert_eq!(stored["spec"]["consistency"], "Auto");
    assert_eq!(stored["spec"]["deletionPolicy"], "Delete");
    assert_eq!(stored["spec"]["freezeTimeoutSeconds"], 10);
    let cluster: Value = serde_yaml::from_str(
        "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {name: bare}\nspec: {storage: {persistentVolumeClaim: {size: 10Gi}}}",
    )
    .unwrap();
    let stored = create(&client, ns.name(), &cluster).await.unwrap();
    assert_eq!(stored["spec"]["image"], pgml_api::cluster::DEFAULT_IMAGE);
    assert_eq!(stored["spec"]["instances"], 1);
    assert_eq!(stored["spec"]["replicas"]["seedFrom"], "Snapshot");
    ns.cleanup().await;
}

#[tokio::test]
async fn invalid_manifests_are_rejected_with_their_message() {
    let client = client().await;
    ensure_crds_once(&client).await;
    let ns = TestNamespace::new(&client, "api-invalid").await;
    let cases = invalid_cases();
    assert!(cases.len() >= 22, "only {} invalid manifests", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = file_name(&case.path);
        let result = match &case.before {
            None => create(&client, ns.name(), &case.object).await,
            Some(before) => {
                let stored = match create(&client, ns.name(), before).await {
                    Ok(stored) => stored,
                    Err(e) => {
                        failures.push(format!(
                            "{name}: the valid object before the update was rejected: {e}"
                        ));
                        continue;
                    }
                };
                let mut update = case.object.clone();
                update["metadata"]["resourceVersion"] =
                    stored["metadata"]["resourceVersion"].clone();
                replace(&client, ns.name(), &update).await
            }
        };
        match result {
            Ok(_) => failures.push(format!("{name}: accepted, expected {:?}", case.expect)),
            Err(kube::Error::Api(status)) if status.message.contains(&case.expect) => {
                assert!(
                    matches!(status.code, 400 | 422),
                    "{name}: HTTP {}",
                    status.code
                );
            }
            Err(e) => failures.push(format!("{name}: expected {:?}, got: {e}", case.expect)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    ns.cleanup().await;
}

/// Transition rules refuse shrinking and immutable changes; these legitimate changes must
/// still go through.
#[tokio::test]
async fn legitimate_updates_are_accepted() {
    let client = client().await;
    ensure_crds_once(&client).await;
    let ns = TestNamespace::new(&client, "api-updates").await;
    let pool: Value = serde_yaml::from_str(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {name: grow}\nspec: {nodeName: node-a, volumes: {count: 2, sizeGiB: 100}}",
    )
    .unwrap();
    let mut stored = create(&client, ns.name(), &pool).await.unwrap();
    for (what, change) in [
        ("grow each volume", serde_json::json!({"sizeGiB": 200})),
        (
            "add a volume to the stripe",
            serde_json::json!({"count": 3}),
        ),
        (
            "provision IOPS and throughput",
            serde_json::json!({"iops": 6000, "throughputMiBps": 500}),
        ),
        (
            "switch to io2",
            serde_json::json!({"type": "io2", "iops": 16000, "throughputMiBps": null}),
        ),
        ("retag", serde_json::json!({"tags": {"team": "ml"}})),
    ] {
        let mut next = stored.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                next["spec"]["volumes"].as_object_mut().unwrap().remove(k);
            } else {
                next["spec"]["volumes"][k] = v.clone();
            }
        }
        stored = replace(&client, ns.name(), &next)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    assert_eq!(stored["spec"]["volumes"]["sizeGiB"], 200);
    assert_eq!(stored["metadata"]["generation"], 6);

    let cluster: Value = serde_yaml::from_str(
        "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {name: grow}\nspec: {storage: {persistentVolumeClaim: {size: 10Gi}}}",
    )
    .unwrap();
    let mut stored = create(&client, ns.name(), &cluster).await.unwrap();
    stored["spec"]["storage"]["persistentVolumeClaim"]["size"] = "20Gi".into();
    stored["spec"]["instances"] = 3.into();
    stored["spec"]["primary"] = "grow-2".into();
    replace(&client, ns.name(), &stored)
        .await
        .expect("grow a PVC, scale out, switch over");

    // Retain to Delete, confirmed by the annotation; and back, which needs nothing.
    let pool: Value = serde_yaml::from_str(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {name: keep}\nspec: {nodeName: node-a, volumes: {sizeGiB: 10}, reclaimPolicy: Retain}",
    )
    .unwrap();
    let mut stored = create(&client, ns.name(), &pool).await.unwrap();
    stored["spec"]["reclaimPolicy"] = "Delete".into();
    stored["metadata"]["annotations"] =
        serde_json::json!({pgml_api::policy::ALLOW_DELETE_POLICY_ANNOTATION: "true"});
    let mut stored = replace(&client, ns.name(), &stored)
        .await
        .expect("Retain to Delete with the annotation");
    stored["spec"]["reclaimPolicy"] = "Retain".into();
    stored["metadata"]["annotations"] = serde_json::json!({});
    replace(&client, ns.name(), &stored)
        .await
        .expect("Delete to Retain");
    ns.cleanup().await;
}

/// This commit's CRDs and admission policy, applied once per test binary.
async fn ensure_crds_once(client: &Client) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        pgml_testbed::kube::ensure_crds(client, pgml_api::crds()).await;
        pgml_testbed::kube::ensure_admission_policy(client).await;
    })
    .await;
}
