//! The operator and the node agents as real processes, the way they run in a cluster:
//! the operator on the host with the sandbox's kubeconfig and AWS endpoint, one agent per
//! node inside that node's mount namespace. Tests kill them (gracefully or with SIGKILL at
//! any moment) and start them again.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sandbox::{NodeInfo, Sandbox, workspace_bin};

/// A running binary of ours. Dropping it kills it (SIGKILL), so a failing test leaves
/// nothing behind.
pub struct Proc {
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// The log's length when the current run started (its own lines come after).
    run_offset: usize,
    /// How the last run ended, once it ended by itself.
    exit: Option<std::process::ExitStatus>,
}

impl Proc {
    fn spawn(name: String, command: Vec<String>, env: Vec<(String, String)>, log: PathBuf) -> Proc {
        let mut p = Proc {
            name,
            command,
            env,
            log,
            child: None,
            run_offset: 0,
            exit: None,
        };
        p.start();
        p
    }

    /// Starts the process (again), appending to the same log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.run_offset = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Sets (or replaces) an environment variable for the next [`Proc::start`], e.g.
    /// `PGML_FAILPOINTS` to have the process die at a chosen step.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// Removes an environment variable for the next [`Proc::start`].
    pub fn unset_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Waits until the process exits by itself (e.g. at a failpoint); true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// How the last run ended when it exited by itself (seen by [`Proc::running`] or
    /// [`Proc::wait_exit`]).
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.exit
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL to the process and every process below it (its children, theirs…), found
    /// first so that none is reparented away: what killing a container does to the
    /// processes in it. A daemon that left the tree (a postmaster started by `pg_ctl`) is
    /// the caller's to kill.
    pub fn kill_tree(&mut self) {
        let Some(root) = self.pid() else {
            return;
        };
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // `pid (comm) state ppid …`: comm may hold spaces, so read after the last ')'.
                let ppid = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((pid, ppid))
            })
            .collect();
        let mut tree = vec![root];
        let mut i = 0;
        while i < tree.len() {
            let p = tree[i];
            tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
            i += 1;
        }
        for pid in tree.iter().skip(1) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        self.kill();
    }

    pub fn log_path(&self) -> &PathBuf {
        &self.log
    }

    /// The log so far (for assertions and for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address the metrics endpoint (/metrics, /healthz, /readyz) of the current run
    /// is bound to: the `metrics_addr` its log names since it was (re)started (the tests'
    /// processes bind port 0), once it is there; `None` after `timeout`.
    pub fn metrics_addr(&self, timeout: Duration) -> Option<std::net::SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            let run = log.get(self.run_offset..).unwrap_or_default();
            let found = run.lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v.get("metrics_addr")?.as_str()?.parse().ok()
            });
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash at any line would; waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to `timeout`) for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running (false once it exited on its own).
    /// An exited process is forgotten, so that [`Proc::start`] may start it again.
    pub fn running(&mut self) -> bool {
        let alive = match self.child.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    false
                }
                Ok(None) => true,
                Err(_) => false,
            },
            None => false,
        };
        if !alive {
            self.child = None;
        }
        alive
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn common_env(sb: &Sandbox) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "KUBECONFIG".into(),
            sb.kube.kubeconfig.display().to_string(),
        ),
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("PGML_LOG_FORMAT".into(), "json".into()),
    ];
    if let Ok(v) = std::env::var("RUST_LOG") {
        env.push(("RUST_LOG".into(), v));
    }
    env
}

/// Sets (or replaces) each of `over` in `env`.
fn overlay(env: &mut Vec<(String, String)>, over: &[(&str, &str)]) {
    for (k, v) in over {
        env.retain(|(have, _)| have != k);
        env.push((k.to_string(), v.to_string()));
    }
}

fn log_file(sb: &Sandbox, name: &str) -> PathBuf {
    let dir = sb.dir.join("logs").join("tests");
    std::fs::create_dir_all(&dir).expect("test log folder");
    dir.join(format!("{name}.log"))
}

/// The command line that runs workspace binary `bin` with `args` inside `node`'s mount
/// namespace.
fn in_node(node: &NodeInfo, bin: &str, args: &[&str]) -> Vec<String> {
    let mut command = vec![
        "nsenter".into(),
        "-t".into(),
        node.ns_pid.to_string(),
        "-m".into(),
        "--".into(),
        workspace_bin(bin).display().to_string(),
    ];
    command.extend(args.iter().map(|a| a.to_string()));
    command
}

/// The operator, watching one namespace (so that tests running side by side do not act on
/// each other's objects), with AWS pointed at the simulator.
pub fn operator(sb: &Sandbox, namespace: &str) -> Proc {
    operator_with_env(sb, namespace, &[])
}

/// [`operator`] with `over` set over its environment from its first start: e.g. the
/// `KUBECONFIG` of a ServiceAccount ([`crate::rbac`]), so that it has exactly that
/// account's permissions.
pub fn operator_with_env(sb: &Sandbox, namespace: &str, over: &[(&str, &str)]) -> Proc {
    let mut env = common_env(sb);
    env.extend([
        ("AWS_ENDPOINT_URL".into(), sb.aws.endpoint.clone()),
        (
            "AWS_ACCESS_KEY_ID".into(),
            crate::aws::TEST_ACCESS_KEY.into(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            crate::aws::TEST_SECRET_KEY.into(),
        ),
        ("AWS_REGION".into(), sb.region.clone()),
        ("PGML_WATCH_NAMESPACE".into(), namespace.into()),
        // One Lease per test namespace, so that operators of tests running side by side do
        // not follow each other; a stable identity, so that this Proc started again (after
        // a SIGKILL or a failpoint) takes its own Lease back at once, as a restarted
        // container of the same Pod does.
        ("PGML_LEASE_NAMESPACE".into(), namespace.into()),
        ("POD_NAME".into(), format!("pgml-operator-{namespace}")),
        // Port 0: never a clash; the port is read from the log ([`Proc::metrics_addr`]).
        ("PGML_METRICS_ADDR".into(), "127.0.0.1:0".into()),
    ]);
    overlay(&mut env, over);
    let bin = workspace_bin("pgml-operator").display().to_string();
    // Replicas of one namespace (a POD_NAME of their own in `over`) log apart.
    let log = match over.iter().find(|(k, _)| *k == "POD_NAME") {
        Some((_, pod)) => format!("operator-{namespace}-{pod}"),
        None => format!("operator-{namespace}"),
    };
    Proc::spawn(
        format!("pgml-operator[{namespace}]"),
        vec![bin],
        env,
        log_file(sb, &log),
    )
}

/// Where the agent of `namespace` on `node` keeps its state (the hold records).
pub fn agent_state_dir(node: &NodeInfo, namespace: &str) -> PathBuf {
    node.root.join("agent-state").join(namespace)
}

/// A node agent on each of the sandbox's nodes at these indexes, watching one namespace.
pub fn agents(sb: &Sandbox, nodes: &[usize], namespace: &str) -> Vec<Proc> {
    nodes
        .iter()
        .map(|&i| agent(sb, &sb.nodes[i], namespace))
        .collect()
}

/// A node agent inside `node`'s mount namespace, watching one namespace.
pub fn agent(sb: &Sandbox, node: &NodeInfo, namespace: &str) -> Proc {
    agent_with_env(sb, node, namespace, &[])
}

/// [`agent`] with `over` set over its environment from its first start (see
/// [`operator_with_env`]).
pub fn agent_with_env(
    sb: &Sandbox,
    node: &NodeInfo,
    namespace: &str,
    over: &[(&str, &str)],
) -> Proc {
    let mut env = common_env(sb);
    env.extend([
        ("NODE_NAME".into(), node.name.clone()),
        ("PGML_DEV_DIR".into(), node.dev_dir.display().to_string()),
        ("PGML_MOUNT_ROOT".into(), node.mnt_dir.display().to_string()),
        ("PGML_WATCH_NAMESPACE".into(), namespace.into()),
        (
            "PGML_STATE_DIR".into(),
            agent_state_dir(node, namespace).display().to_string(),
        ),
        ("PGML_METRICS_ADDR".into(), "127.0.0.1:0".into()),
    ]);
    overlay(&mut env, over);
    Proc::spawn(
        format!("pgml-agent[{}/{namespace}]", node.name),
        in_node(node, "pgml-agent", &[]),
        env,
        log_file(sb, &format!("agent-{}-{namespace}", node.name)),
    )
}

/// Workspace binary `bin` with `args` inside `node`'s mount namespace, with the sandbox's
/// kubeconfig, PATH and log format plus `env`, logging to `<sandbox>/logs/tests/<log>.log`.
pub fn in_node_process(
    sb: &Sandbox,
    node: &NodeInfo,
    name: String,
    bin: &str,
    args: &[&str],
    env: Vec<(String, String)>,
    log: &str,
) -> Proc {
    let mut all = common_env(sb);
    all.extend(env);
    Proc::spawn(name, in_node(node, bin, args), all, log_file(sb, log))
}

/// An instance manager (`pgml-instance run`) inside `node`'s mount namespace, the way the
/// instance Pod `name` of PgmlCluster `cluster` runs it: PGDATA on the node's pool, its own
/// port, advertised and listening on 127.0.0.1, the socket in the host-shared /tmp, trust
/// authentication (the test bed has no secrets), initdb's own configuration (the
/// operator's ConfigMap preloads pgml, which the test bed's PostgreSQL lacks), a look every
/// second. [`crate::kubelet`] runs it from a real Pod instead (Secrets, ConfigMap).
pub fn instance(
    sb: &Sandbox,
    node: &NodeInfo,
    namespace: &str,
    cluster: &str,
    name: &str,
    pgdata: &str,
    port: u16,
) -> Proc {
    let env = vec![
        ("POD_NAME".into(), name.into()),
        ("POD_NAMESPACE".into(), namespace.into()),
        ("CLUSTER_NAME".into(), cluster.into()),
        ("PGDATA".into(), pgdata.into()),
        ("PGPORT".into(), port.to_string()),
        (
            "PGML_STATUS_ADDRESS".into(),
            format!("127.0.0.1:{}", crate::pg::free_port()),
        ),
        ("PGML_ADVERTISE_HOST".into(), "127.0.0.1".into()),
        ("PGML_LISTEN_ADDRESSES".into(), "127.0.0.1".into()),
        ("PGML_SOCKET_DIR".into(), crate::pg::SOCKET_DIR.into()),
        ("PGML_PG_BIN".into(), crate::pg::PG_BIN.into()),
        ("PGML_LOCAL_AUTH".into(), "trust".into()),
        ("PGML_HOST_AUTH".into(), "trust".into()),
        ("PGML_INTERVAL_SECONDS".into(), "1".into()),
        (
            "PGML_REPLICATION_SECRET_DIR".into(),
            node.root
                .join("no-replication-secret")
                .display()
                .to_string(),
        ),
    ];
    in_node_process(
        sb,
        node,
        format!("pgml-instance[{namespace}/{name}]"),
        "pgml-instance",
        &["run"],
        env,
        &format!("instance-{namespace}-{name}"),
    )
}

/// `GET http://<addr><path>` (HTTP/1.1, `Connection: close`): the status and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP answer from {addr}{path}: {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line from {addr}{path}: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of sample `name` whose labels include every one of `labels`, in a
/// Prometheus text exposition (`None`: no such sample). With several matches, their sum
/// (e.g. a counter over the values of a label not given).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            continue;
        }
        let rest = format!(",{rest}");
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!(",{k}=\"{v}\"")))
        {
            let v: f64 = value.parse().ok()?;
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}
