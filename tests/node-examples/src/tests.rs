use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Value, json};

use super::*;

const DATABASE_LABEL: &str = "pgml.io/database";

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(Schemas::load)
}

fn example_files() -> Vec<PathBuf> {
    let dir = repo_root().join("examples/nodes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every document of every example, with the file it came from.
fn examples() -> Vec<(String, Value)> {
    example_files()
        .into_iter()
        .flat_map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            documents(&path).into_iter().map(move |d| (name.clone(), d))
        })
        .collect()
}

fn example(kind: &str) -> Value {
    examples()
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in examples/nodes"))
}

#[test]
fn every_node_example_is_accepted_by_the_schema_of_its_kind() {
    let all = examples();
    let mut kinds: Vec<&str> = all.iter().filter_map(|(_, d)| d["kind"].as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["ClusterConfig", "EC2NodeClass", "NodePool"]);
    for (file, object) in &all {
        let refusals = schemas().refusals(object);
        assert!(
            refusals.is_empty(),
            "examples/nodes/{file}: {} {} is refused:\n  {}",
            object["kind"],
            object["metadata"]["name"],
            refusals.join("\n  ")
        );
    }
}

/// Each mistake, made in a valid example, is refused: the checks look where it matters.
#[test]
fn mistakes_in_the_examples_are_refused() {
    /// What is wrong, a part of the refusal it must bring, and how to make it.
    type Mistake = (&'static str, &'static str, fn(&mut Value));
    let cases: [(&str, Vec<Mistake>); 3] = [
        (
            "EC2NodeClass",
            vec![
                ("a misspelt field", "'userdata' was unexpected", |o| {
                    rename(o, "/spec", "userData", "userdata")
                }),
                ("a misspelt nested field", "'type' was unexpected", |o| {
                    rename(o, "/spec/blockDeviceMappings/0/ebs", "volumeType", "type")
                }),
                ("a family v1 dropped", "\"Ubuntu\" is not one of", |o| {
                    o["spec"]["amiFamily"] = json!("Ubuntu");
                }),
                (
                    "a size that is no quantity",
                    "\"50GB\" does not match",
                    |o| {
                        o["spec"]["blockDeviceMappings"][0]["ebs"]["volumeSize"] = json!("50GB");
                    },
                ),
                (
                    "no subnets",
                    "\"subnetSelectorTerms\" is a required property",
                    |o| remove(o, "/spec", "subnetSelectorTerms"),
                ),
                (
                    "no family without an alias (CEL)",
                    "must specify amiFamily if amiSelectorTerms does not contain an alias",
                    |o| remove(o, "/spec", "amiFamily"),
                ),
                (
                    "an alias beside another term (CEL)",
                    "'alias' is mutually exclusive",
                    |o| {
                        o["spec"]["amiSelectorTerms"] =
                            json!([{"alias": "al2023@latest"}, {"id": "ami-0123456789abcdef0"}]);
                    },
                ),
                (
                    "both a role and an instance profile (CEL)",
                    "must specify exactly one of ['role', 'instanceProfile']",
                    |o| {
                        o["spec"]["instanceProfile"] = json!("KarpenterNodeInstanceProfile");
                    },
                ),
            ],
        ),
        (
            "NodePool",
            vec![
                ("a misspelt field", "'taint' was unexpected", |o| {
                    rename(o, "/spec/template/spec", "taints", "taint")
                }),
                (
                    "an unknown taint effect",
                    "\"NoScheduled\" is not one of",
                    |o| {
                        o["spec"]["template"]["spec"]["taints"][0]["effect"] = json!("NoScheduled");
                    },
                ),
                (
                    "a budget that is no count",
                    "\"none\" does not match",
                    |o| {
                        o["spec"]["disruption"]["budgets"][0]["nodes"] = json!("none");
                    },
                ),
                (
                    "a restricted label (CEL)",
                    "label \"karpenter.sh/nodepool\" is restricted",
                    |o| {
                        o["spec"]["template"]["metadata"]["labels"]["karpenter.sh/nodepool"] =
                            json!("x");
                    },
                ),
                (
                    "In with no values (CEL)",
                    "requirements with operator 'In' must have a value defined",
                    |o| {
                        o["spec"]["template"]["spec"]["requirements"][0]["values"] = json!([]);
                    },
                ),
                (
                    "no node class",
                    "\"nodeClassRef\" is a required property",
                    |o| remove(o, "/spec/template/spec", "nodeClassRef"),
                ),
            ],
        ),
        (
            "ClusterConfig",
            vec![
                (
                    "a misspelt field",
                    "'preBootstrapCommand' was unexpected",
                    |o| {
                        rename(
                            o,
                            "/managedNodeGroups/0",
                            "preBootstrapCommands",
                            "preBootstrapCommand",
                        )
                    },
                ),
                (
                    "an unknown image family",
                    "\"Ubuntu24.04\" is not one of",
                    |o| {
                        o["managedNodeGroups"][0]["amiFamily"] = json!("Ubuntu24.04");
                    },
                ),
                (
                    "labels that are not strings",
                    "true is not of type \"string\"",
                    |o| {
                        o["managedNodeGroups"][0]["labels"][DATABASE_LABEL] = json!(true);
                    },
                ),
                ("no region", "\"region\" is a required property", |o| {
                    remove(o, "/metadata", "region")
                }),
            ],
        ),
    ];
    for (kind, mistakes) in cases {
        let valid = example(kind);
        for (what, expect, make) in mistakes {
            let mut wrong = valid.clone();
            make(&mut wrong);
            assert_ne!(wrong, valid, "{kind}, {what}: the mistake changed nothing");
            let refusals = schemas().refusals(&wrong);
            assert!(
                refusals.iter().any(|r| r.contains(expect)),
                "{kind} with {what}: expected a refusal containing {expect:?}, got {refusals:?}"
            );
        }
    }
}

#[test]
fn a_kind_without_a_vendored_schema_is_refused() {
    let refusals =
        schemas().refusals(&json!({"apiVersion": "karpenter.sh/v1beta1", "kind": "NodePool"}));
    assert!(refusals[0].contains("no schema"), "{refusals:?}");
}

#[test]
fn the_node_pool_uses_the_node_class_beside_it() {
    let class = example("EC2NodeClass");
    let pool = example("NodePool");
    let reference = &pool["spec"]["template"]["spec"]["nodeClassRef"];
    assert_eq!(reference["group"], "karpenter.k8s.aws");
    assert_eq!(reference["kind"], "EC2NodeClass");
    assert_eq!(reference["name"], class["metadata"]["name"]);
}

/// The database nodes carry the label and taint `docs/install.md` and the examples' comments
/// name, and the chart's agent, with its default tolerations, runs on them.
#[test]
fn the_chart_agent_runs_on_the_database_nodes_by_default() {
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("charts/pgml-operator/values.yaml")).unwrap(),
    )
    .unwrap();
    let tolerations = values["agent"]["tolerations"].as_array().unwrap().clone();
    let pool = example("NodePool");
    let cluster = example("ClusterConfig");
    let group = &cluster["managedNodeGroups"][0];
    let nodes = [
        (
            "NodePool",
            &pool["spec"]["template"]["metadata"]["labels"],
            &pool["spec"]["template"]["spec"]["taints"],
        ),
        ("ClusterConfig", &group["labels"], &group["taints"]),
    ];
    for (kind, labels, taints) in nodes {
        assert_eq!(labels[DATABASE_LABEL], "true", "{kind}: labels {labels}");
        let taints = taints.as_array().unwrap();
        assert!(
            taints.iter().any(|t| t["key"] == DATABASE_LABEL),
            "{kind}: no {DATABASE_LABEL} taint"
        );
        for taint in taints {
            assert!(
                tolerations.iter().any(|t| tolerates(t, taint)),
                "{kind}: the chart's agent.tolerations {tolerations:?} do not tolerate {taint}"
            );
        }
    }
}

/// A toleration as the scheduler matches it against a taint.
fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let key = toleration["key"].as_str();
    let operator = toleration["operator"].as_str().unwrap_or("Equal");
    let key_ok = match key {
        None | Some("") => operator == "Exists",
        Some(k) => taint["key"] == k,
    };
    let value_ok = operator == "Exists" || toleration["value"] == taint["value"];
    let effect_ok = match toleration["effect"].as_str() {
        None | Some("") => true,
        Some(e) => taint["effect"] == e,
    };
    key_ok && value_ok && effect_ok
}

#[test]
fn toleration_matching() {
    let taint = json!({"key": "pgml.io/database", "value": "true", "effect": "NoSchedule"});
    assert!(tolerates(
        &json!({"key": "pgml.io/database", "operator": "Exists"}),
        &taint
    ));
    assert!(tolerates(&json!({"operator": "Exists"}), &taint));
    assert!(tolerates(
        &json!({"key": "pgml.io/database", "value": "true"}),
        &taint
    ));
    assert!(!tolerates(
        &json!({"key": "pgml.io/database", "value": "yes"}),
        &taint
    ));
    assert!(!tolerates(
        &json!({"key": "pgml.io/database", "operator": "Exists", "effect": "NoExecute"}),
        &taint
    ));
    assert!(!tolerates(
        &json!({"key": "dedicated", "operator": "Exists"}),
        &taint
    ));
}

/// The node bootstrap in each example is valid bash, installs Ubuntu's OpenZFS tools and loads
/// the module.
#[test]
fn bootstrap_scripts_are_bash_that_installs_and_loads_zfs() {
    let class = example("EC2NodeClass");
    let cluster = example("ClusterConfig");
    let eksctl: Vec<&str> = cluster["managedNodeGroups"][0]["preBootstrapCommands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let scripts = [
        (
            "EC2NodeClass userData",
            class["spec"]["userData"].as_str().unwrap().to_string(),
        ),
        // eksctl runs each command as `/bin/bash -c <command>`: each must parse alone.
        ("ClusterConfig preBootstrapCommands", eksctl.join("\n")),
    ];
    for (what, script) in &scripts {
        assert!(script.contains("apt-get"), "{what}: no apt-get");
        assert!(
            script.contains("zfsutils-linux"),
            "{what}: no zfsutils-linux"
        );
        assert!(script.contains("modprobe zfs"), "{what}: no modprobe zfs");
        assert_eq!(bash_syntax(script), Ok(()), "{what}");
    }
    for command in eksctl {
        assert_eq!(
            bash_syntax(command),
            Ok(()),
            "preBootstrapCommands: {command}"
        );
    }
    assert!(bash_syntax("if true; then echo").is_err());
}

fn bash_syntax(script: &str) -> Result<(), String> {
    let out = std::process::Command::new("bash")
        .args(["-n", "-c", script])
        .output()
        .expect("running bash");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn at<'a>(object: &'a mut Value, pointer: &str) -> &'a mut serde_json::Map<String, Value> {
    object
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {pointer}"))
}

fn rename(object: &mut Value, pointer: &str, from: &str, to: &str) {
    let map = at(object, pointer);
    let value = map
        .remove(from)
        .unwrap_or_else(|| panic!("no {from} at {pointer}"));
    map.insert(to.into(), value);
}

fn remove(object: &mut Value, pointer: &str, key: &str) {
    at(object, pointer)
        .remove(key)
        .unwrap_or_else(|| panic!("no {key} at {pointer}"));
}
