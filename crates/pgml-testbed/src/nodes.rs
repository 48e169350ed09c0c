//! Run commands inside a simulated node: `nsenter -t <ns_pid> -m -- <argv>`.
//!
//! Each node has its own mount namespace with private `/var/run/zfs`, `/var/lib/zfs` and
//! `/var/lock/zfs`, so `zpool`/`zfs` run this way reach that node's own zfs-fuse daemon.
//! Everything is an argument vector; nothing goes through a shell.

use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};

use crate::sandbox::NodeInfo;

fn nsenter_args(node: &NodeInfo, argv: &[&str]) -> anyhow::Result<Vec<String>> {
    if argv.is_empty() {
        bail!("node_exec on {}: empty argv", node.name);
    }
    let mut args = match node.init_pid {
        // A real node: its mount namespace mounts its own PID namespace's /proc.
        Some(init) => vec!["-t".to_string(), init.to_string(), "-m".into(), "-p".into()],
        None => vec!["-t".to_string(), node.ns_pid.to_string(), "-m".to_string()],
    };
    args.push("--".to_string());
    args.extend(argv.iter().map(|s| s.to_string()));
    Ok(args)
}

/// A `std::process::Command` that runs `argv` inside the node (stdin closed).
pub fn node_command(node: &NodeInfo, argv: &[&str]) -> anyhow::Result<Command> {
    let mut c = Command::new("nsenter");
    c.args(nsenter_args(node, argv)?).stdin(Stdio::null());
    Ok(c)
}

/// Runs `argv` inside the node and returns its output, whatever its exit status.
pub fn node_exec(node: &NodeInfo, argv: &[&str]) -> anyhow::Result<Output> {
    node_command(node, argv)?
        .output()
        .with_context(|| format!("running {argv:?} on node {}", node.name))
}

/// Runs `argv` inside the node; fails (with its stderr) unless it exits 0; returns stdout.
pub fn node_exec_ok(node: &NodeInfo, argv: &[&str]) -> anyhow::Result<String> {
    let out = node_exec(node, argv)?;
    check(node, argv, out)
}

fn check(node: &NodeInfo, argv: &[&str], out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{argv:?} on node {} exited {}: {}",
            node.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("{argv:?} on node {}: stdout not UTF-8", node.name))
}

/// Writes `mib` MiB of random data to `file` inside the node, fsync'ed.
pub fn node_write_random(node: &NodeInfo, file: &str, mib: u32) -> anyhow::Result<()> {
    node_exec_ok(
        node,
        &[
            "dd",
            "if=/dev/urandom",
            &format!("of={file}"),
            "bs=1M",
            &format!("count={mib}"),
            "conv=fsync",
            "status=none",
        ],
    )
    .map(|_| ())
}

/// Async [`node_exec`], for tests that must not block the runtime.
pub async fn node_exec_async(node: &NodeInfo, argv: &[&str]) -> anyhow::Result<Output> {
    tokio::process::Command::new("nsenter")
        .args(nsenter_args(node, argv)?)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {argv:?} on node {}", node.name))
}

/// Async [`node_exec_ok`].
pub async fn node_exec_ok_async(node: &NodeInfo, argv: &[&str]) -> anyhow::Result<String> {
    let out = node_exec_async(node, argv).await?;
    check(node, argv, out)
}

/// The zfs-fuse daemon of this node is alive and answering (`zpool list` works inside).
pub fn zfs_answers(node: &NodeInfo) -> bool {
    node_exec(node, &["zpool", "list", "-H"]).is_ok_and(|o| o.status.success())
}

/// Runs a ZFS command built by pgml-zfs inside the node; its stdout, or an error with stderr.
pub fn node_zfs(node: &NodeInfo, c: &pgml_zfs::Command) -> anyhow::Result<String> {
    let argv = c.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    node_exec_ok(node, &argv)
}

/// The ZFS dialect the node's tools speak (zfs-fuse in the sandbox).
pub fn node_dialect(node: &NodeInfo) -> anyhow::Result<pgml_zfs::Dialect> {
    let probe = pgml_zfs::dialect::version_probe().argv();
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    let out = node_exec(node, &probe)?;
    Ok(pgml_zfs::detect(
        out.status.code(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )?
    .dialect)
}

/// Runs `f` again while zfs-fuse answers "pool is busy", for up to ten seconds: it does for
/// a moment after a dataset was last used (its FUSE mount lets go late). Any other error,
/// or a busy one past the deadline, is returned.
pub fn retry_while_busy<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Err(e) if format!("{e:#}").contains("busy") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

/// Destroys a pool inside the node, [`retry_while_busy`].
pub fn node_destroy_pool(node: &NodeInfo, pool: &pgml_zfs::PoolName) -> anyhow::Result<()> {
    let destroy = pgml_zfs::command::destroy_pool(pool, false);
    retry_while_busy(|| node_zfs(node, &destroy)).map(|_| ())
}

/// Whether `path` exists inside the node (`test -e`, so a FUSE or loop mount only the node
/// sees counts).
pub fn node_path_exists(node: &NodeInfo, path: &str) -> anyhow::Result<bool> {
    Ok(node_exec(node, &["test", "-e", path])?.status.success())
}

/// An ext4 file system made on a loop device over an EBS volume's image file and mounted
/// inside the node, as the EBS CSI driver stages a volume (`…/globalmount`). Dropping it
/// thaws (in case), unmounts and detaches the loop device, also when a test fails.
pub struct NodeExt4 {
    node: NodeInfo,
    /// The loop device, e.g. `/dev/loop5`.
    pub loop_dev: String,
    /// Where it is mounted inside the node.
    pub mount: String,
    mounted: bool,
}

impl NodeExt4 {
    /// `losetup -f --show <image>`, `mkfs.ext4`, `mount` at `mount` (created) — all inside
    /// the node's mount namespace.
    pub fn create(
        node: &NodeInfo,
        image: &std::path::Path,
        mount: &str,
    ) -> anyhow::Result<NodeExt4> {
        let image = image.to_str().context("image path is not UTF-8")?;
        let loop_dev = node_exec_ok(node, &["losetup", "-f", "--show", image])?
            .trim()
            .to_string();
        let mut fs = NodeExt4 {
            node: node.clone(),
            loop_dev,
            mount: mount.to_string(),
            mounted: false,
        };
        node_exec_ok(node, &["mkfs.ext4", "-q", &fs.loop_dev])?;
        node_exec_ok(node, &["mkdir", "-p", mount])?;
        node_exec_ok(node, &["mount", "-t", "ext4", &fs.loop_dev, mount])?;
        fs.mounted = true;
        Ok(fs)
    }

    /// Unmounts and detaches now (what drop does), reporting failures.
    pub fn remove(mut self) -> anyhow::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        if self.mounted {
            // A file system left frozen cannot be unmounted; not frozen answers an error.
            let _ = node_exec(&self.node, &["fsfreeze", "-u", &self.mount]);
            node_exec_ok(&self.node, &["umount", &self.mount])?;
            self.mounted = false;
        }
        if !self.loop_dev.is_empty() {
            node_exec_ok(&self.node, &["losetup", "-d", &self.loop_dev])?;
            self.loop_dev.clear();
        }
        Ok(())
    }
}

impl Drop for NodeExt4 {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("cleaning up {} on {}: {e:#}", self.mount, self.node.name);
        }
    }
}
