//! The running sandbox, as described by `<sandbox>/sandbox.json`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use serde::Deserialize;

/// A simulated node: a Kubernetes Node backed by a moto EC2 instance, with its own mount
/// namespace and zfs-fuse daemon.
#[derive(Clone, Debug, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub instance_id: String,
    pub az: String,
    #[serde(default)]
    pub instance_type: String,
    /// A process holding the node's mount namespace (`nsenter -t ns_pid -m`).
    pub ns_pid: u32,
    pub root: PathBuf,
    pub dev_dir: PathBuf,
    pub mnt_dir: PathBuf,
    #[serde(default)]
    pub zfs_pid: Option<u32>,
    /// A real node (`sandbox/realnode.py`): PID 1 of its PID namespace, entered with the
    /// mount namespace (`nsenter -t init_pid -m -p`), since its `/proc` is that namespace's.
    #[serde(default)]
    pub init_pid: Option<u32>,
    /// A real node's address (its kubelet's and its Pods' host address).
    #[serde(default)]
    pub ip: Option<String>,
    /// A real node's containerd socket.
    #[serde(default)]
    pub containerd_sock: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct KubeInfo {
    pub server: String,
    pub kubeconfig: PathBuf,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AwsInfo {
    /// The EBS simulator proxy: what every AWS SDK client points at.
    pub endpoint: String,
    /// moto itself, behind the proxy (for checks that must bypass the simulator).
    pub moto: String,
    /// The simulator's admin API base URL (`.../_sim`).
    pub admin: String,
}

/// The HTTPS front of moto's S3 (`tests/testbed/sandbox/s3tls.py`), for clients that speak
/// only HTTPS (pgBackRest): its certificate is signed by a CA made at sandbox start.
#[derive(Clone, Debug, Deserialize)]
pub struct S3TlsInfo {
    /// `https://127.0.0.1:<port>`.
    pub endpoint: String,
    /// `127.0.0.1` (the certificate names it as a DNS name and an IP address).
    pub host: String,
    pub port: u16,
    /// The CA that signed the front's certificate (readable by `postgres`).
    pub ca_file: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Sandbox {
    #[serde(skip)]
    pub dir: PathBuf,
    pub region: String,
    pub kube: KubeInfo,
    pub aws: AwsInfo,
    pub nodes: Vec<NodeInfo>,
    /// Nodes with a real kubelet, containerd and runc (`up --real-nodes N`).
    #[serde(default)]
    pub real_nodes: Vec<NodeInfo>,
    /// Absent in a sandbox started before the HTTPS front existed: see [`Sandbox::s3_tls`].
    #[serde(default)]
    pub s3: Option<S3TlsInfo>,
}

impl Sandbox {
    /// The sandbox directory: `$PGML_SANDBOX`, else `<repo>/.sandbox`.
    pub fn dir() -> PathBuf {
        if let Some(d) = std::env::var_os("PGML_SANDBOX") {
            return PathBuf::from(d);
        }
        repo_root().join(".sandbox")
    }

    /// Loads the running sandbox once per test process. Panics with a clear message when
    /// the sandbox is not running: a test that needs it must fail, not skip.
    pub fn get() -> &'static Sandbox {
        static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
        SANDBOX.get_or_init(|| match Self::load(&Self::dir()) {
            Ok(s) => s,
            Err(e) => panic!(
                "the test bed is not running ({e:#}). Start it with `make sandbox-up` \
                 (or run the whole suite with `make test`)"
            ),
        })
    }

    pub fn load(dir: &Path) -> anyhow::Result<Sandbox> {
        let file = dir.join("sandbox.json");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let mut s: Sandbox =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        s.dir = dir.to_path_buf();
        if s.nodes.is_empty() {
            bail!("{} lists no simulated nodes", file.display());
        }
        Ok(s)
    }

    /// The node reserved for tests that break storage on purpose (the sandbox's last): a
    /// raid0 pool that lost a member can leave that node's zfs-fuse hung.
    pub fn sacrificial_node(&self) -> &NodeInfo {
        self.nodes.last().expect("the sandbox has nodes")
    }

    pub fn node(&self, name: &str) -> &NodeInfo {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no simulated node named {name} in the sandbox"))
    }

    /// The real nodes (a kubelet with containerd each); panics, saying how to start them,
    /// when the sandbox has fewer than `n`.
    pub fn real_nodes(&self, n: usize) -> &[NodeInfo] {
        if self.real_nodes.len() < n {
            panic!(
                "{} has {} real node(s), this test needs {n}: start the sandbox with \
                 `--real-nodes {n}` (PGML_REAL_NODES={n}; `make test` does)",
                self.dir.display(),
                self.real_nodes.len()
            );
        }
        &self.real_nodes[..n]
    }

    /// The HTTPS front of moto's S3; panics, saying to restart the sandbox, when it has none.
    pub fn s3_tls(&self) -> &S3TlsInfo {
        self.s3.as_ref().unwrap_or_else(|| {
            panic!(
                "{} has no HTTPS S3 front (`s3` in sandbox.json): restart the sandbox \
                 (`make sandbox-down sandbox-up`)",
                self.dir.display()
            )
        })
    }

    /// The kubectl built with the control plane.
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("bin").join("kubectl")
    }
}

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crate lives in <repo>/crates/<name>")
        .to_path_buf()
}

/// A binary of this workspace (built by `cargo build --workspace` before the tests run):
/// tests live in another package, so Cargo's `CARGO_BIN_EXE_*` does not reach them.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A test: <target>/debug/deps/<test>-<hash> → <target>/debug/<name>; a binary (the
    // benchmarks): <target>/debug/<bench> → <target>/debug/<name>.
    let parent = exe.parent().expect("the executable's folder");
    let dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().expect("target/<profile> folder")
    } else {
        parent
    };
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as `make test` does)",
        bin.display()
    );
    bin
}
