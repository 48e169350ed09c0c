//! Shared by the crate's integration tests: the repository's manifests and the generated
//! schemas.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

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

pub fn load(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The openAPIV3Schema of a kind, as generated (not as stored in crds/).
pub fn schema_of(kind: &str) -> Value {
    let crd = pgml_api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
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
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
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
