//! The repository's manifests as tests read them: `examples/` and the invalid cases in
//! `tests/manifests/invalid/` (each with the message it must be rejected with).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::sandbox::repo_root;

/// `*.yaml` files in a repository folder, sorted.
pub fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// A YAML file as JSON.
pub fn load(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// An invalid-manifest case: the file, the message expected, and the object it updates
/// (for transition rules).
pub struct Case {
    pub path: PathBuf,
    pub expect: String,
    pub object: Value,
    pub before: Option<Value>,
}

impl Case {
    pub fn name(&self) -> String {
        file_name(&self.path)
    }

    /// Cases whose rule is an OpenAPI constraint (minimum, pattern, enum, list keys,
    /// unknown fields), enforced by the apiserver's schema validation rather than CEL.
    pub fn is_openapi(&self) -> bool {
        [
            "should be",
            "should match",
            "Unsupported value",
            "Duplicate value",
            "unknown field",
        ]
        .iter()
        .any(|p| self.expect.starts_with(p))
    }
}

/// Every case in `tests/manifests/invalid/`: `NN-name.yaml` with a `# expect: <message>`
/// header, plus `NN-name.before.yaml` when the case is an update.
pub fn invalid_cases() -> Vec<Case> {
    yaml_files("tests/manifests/invalid")
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".before.yaml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let expect = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no '# expect: ' line", path.display()))
                .trim()
                .to_string();
            let before_path =
                PathBuf::from(path.to_string_lossy().replace(".yaml", ".before.yaml"));
            let before = before_path.exists().then(|| load(&before_path));
            Case {
                object: load(&path),
                path,
                expect,
                before,
            }
        })
        .collect()
}

/// `None` when every field in `sent` is in `got` with the same value. `got` may have more:
/// the apiserver adds the schema's defaults (layout, encrypted, datasets…) to what it
/// stores, and those are not a change to what the user wrote. Lists must match in length
/// and element by element; numbers compare by value (`1` and `1.0` are one JSON number).
pub fn missing_or_changed(sent: &Value, got: &Value, at: &str) -> Option<String> {
    match (sent, got) {
        (Value::Object(s), Value::Object(g)) => s.iter().find_map(|(k, v)| match g.get(k) {
            None => Some(format!("{at}.{k} was dropped")),
            Some(gv) => missing_or_changed(v, gv, &format!("{at}.{k}")),
        }),
        (Value::Array(s), Value::Array(g)) if s.len() == g.len() => s
            .iter()
            .zip(g)
            .enumerate()
            .find_map(|(i, (a, b))| missing_or_changed(a, b, &format!("{at}[{i}]"))),
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        _ if sent == got => None,
        _ => Some(format!("{at}: sent {sent}, read back {got}")),
    }
}

/// `name`'s ZFS pool name on its node: pool names are per node, not per namespace, so each
/// run gets its own (a failed run leaves its pools imported).
pub fn zpool_name(name: &str, ns: &str) -> String {
    format!("{name}-{}", &ns[ns.len() - 6..])
}

/// A RAID0 ZfsPool `name` on `node` (pool name [`zpool_name`]) of `count` gp3 volumes of
/// `size_gib` GiB each, with a `pgdata` dataset (recordsize 8K), restored from the
/// EbsSnapshot `restore_from` if given.
pub fn raid0_pool<T: serde::de::DeserializeOwned>(
    name: &str,
    ns: &str,
    node: &str,
    (count, size_gib): (u32, u32),
    restore_from: Option<&str>,
) -> T {
    let restore = restore_from
        .map(|s| format!("  restoreFrom: {{ebsSnapshotName: {s}}}\n"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  poolName: {}\n  layout: raid0\n  reclaimPolicy: Delete\n  volumes: {{count: {count}, type: gp3, sizeGiB: {size_gib}}}\n  datasets:\n  - name: pgdata\n    properties: {{recordsize: 8K}}\n{restore}",
        zpool_name(name, ns)
    );
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}
