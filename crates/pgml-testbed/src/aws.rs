//! AWS clients aimed at the sandbox's EBS simulator (ebssim, in front of moto), and a small
//! client for the simulator's admin API (`<proxy>/_sim`: faults, stats, nodes).
//!
//! The admin client is blocking (std `TcpStream`, HTTP/1.1, `Connection: close`): the
//! simulator runs in another process on loopback, so calling it from an async test is fine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use serde_json::{Value, json};

use crate::sandbox::{NodeInfo, Sandbox};

/// Static credentials: moto accepts any.
pub const TEST_ACCESS_KEY: &str = "testing";
pub const TEST_SECRET_KEY: &str = "testing";

/// The AMI `run_instance` helpers use: one moto 5.2 ships in every region.
pub const TEST_AMI: &str = "ami-12c6146b";

/// SDK config for the sandbox: the proxy as endpoint, static credentials, the sandbox's
/// region and the given retry behaviour.
pub async fn sdk_config(sb: &Sandbox, retry: RetryConfig) -> aws_config::SdkConfig {
    let creds = aws_sdk_ec2::config::Credentials::new(
        TEST_ACCESS_KEY,
        TEST_SECRET_KEY,
        None,
        None,
        "pgml-testbed",
    );
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&sb.aws.endpoint)
        .region(aws_config::Region::new(sb.region.clone()))
        .credentials_provider(creds)
        .retry_config(retry)
        .load()
        .await
}

/// An EC2 client through the simulator with the SDK's standard retries.
pub async fn ec2_client(sb: &Sandbox) -> aws_sdk_ec2::Client {
    ec2_client_with(sb, RetryConfig::standard()).await
}

/// An EC2 client with the given retries, e.g. `RetryConfig::disabled()` to see injected
/// faults exactly as AWS sends them.
pub async fn ec2_client_with(sb: &Sandbox, retry: RetryConfig) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(sb, retry).await)
}

/// A 1 GiB gp3 volume made in `node`'s zone, tagged `pgml.io/namespace=<namespace>` (so a
/// failed run's volume is found by its namespace), and attached to the node's instance at
/// the first free device name from `/dev/sdp` (other tests attach to the same instances).
/// Returns its ID; its by-id link is then on the node ([`ebs_link`]).
pub async fn attached_volume(
    ec2: &aws_sdk_ec2::Client,
    node: &NodeInfo,
    namespace: &str,
) -> String {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification, VolumeType};
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Volume)
        .tags(
            Tag::builder()
                .key(pgml_api::common::keys::NAMESPACE)
                .value(namespace)
                .build(),
        )
        .build();
    let volume = ec2
        .create_volume()
        .availability_zone(&node.az)
        .size(1)
        .volume_type(VolumeType::Gp3)
        .tag_specifications(tags)
        .send()
        .await
        .expect("CreateVolume")
        .volume_id
        .expect("volume id");
    let mut attached = Err(String::new());
    for letter in 'p'..='z' {
        let r = ec2
            .attach_volume()
            .volume_id(&volume)
            .instance_id(&node.instance_id)
            .device(format!("/dev/sd{letter}"))
            .send()
            .await;
        attached = r.map(|_| ()).map_err(|e| format!("{e:?}"));
        if attached.is_ok() {
            break;
        }
    }
    attached.expect("AttachVolume");
    volume
}

/// An EBS direct API client through the simulator (forwarded to moto unchanged; moto knows
/// only snapshots begun with StartSnapshot there).
pub async fn ebs_client(sb: &Sandbox) -> aws_sdk_ebs::Client {
    ebs_client_with(sb, RetryConfig::standard()).await
}

pub async fn ebs_client_with(sb: &Sandbox, retry: RetryConfig) -> aws_sdk_ebs::Client {
    aws_sdk_ebs::Client::new(&sdk_config(sb, retry).await)
}

/// The by-id name Nitro instances give an EBS volume's NVMe device:
/// `vol-0abc` → `nvme-Amazon_Elastic_Block_Store_vol0abc`.
pub fn ebs_link_name(volume_id: &str) -> String {
    format!(
        "nvme-Amazon_Elastic_Block_Store_vol{}",
        volume_id.strip_prefix("vol-").unwrap_or(volume_id)
    )
}

/// Where the simulator puts a volume's by-id link on a node.
pub fn ebs_link(node: &NodeInfo, volume_id: &str) -> PathBuf {
    node.dev_dir.join(ebs_link_name(volume_id))
}

/// The admin API of the EBS simulator.
#[derive(Clone, Debug)]
pub struct SimAdmin {
    /// `host:port`
    addr: String,
    /// path prefix, normally `/_sim`
    prefix: String,
}

impl SimAdmin {
    /// From the admin base URL, e.g. `http://127.0.0.1:4567/_sim`.
    pub fn new(admin_url: &str) -> anyhow::Result<Self> {
        let rest = admin_url
            .strip_prefix("http://")
            .with_context(|| format!("admin URL {admin_url} is not http://"))?;
        let (addr, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        Ok(Self {
            addr: addr.to_string(),
            prefix: prefix.to_string(),
        })
    }

    pub fn from_sandbox(sb: &Sandbox) -> Self {
        Self::new(&sb.aws.admin).expect("sandbox.json aws.admin is an http:// URL")
    }

    /// One request; `path` is relative to the admin prefix (e.g. `/faults`). Returns the
    /// JSON answer, or an error carrying the simulator's message for non-2xx answers.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(&self.addr)
            .with_context(|| format!("connecting to the EBS simulator at {}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.prefix,
            self.addr,
            body.len()
        );
        let (status, payload) = exchange(&mut s, &req, "malformed answer from the simulator")?;
        let payload = payload.as_str();
        if !(200..300).contains(&status) {
            bail!("ebssim {method} {path}: HTTP {status}: {payload}");
        }
        if payload.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(payload)
            .with_context(|| format!("ebssim {method} {path}: not JSON: {payload}"))
    }

    /// Adds a fault rule (see `tests/testbed/ebssim/README.md`); returns it with its `id`.
    pub fn add_fault(&self, rule: Value) -> anyhow::Result<Value> {
        self.call("POST", "/faults", Some(&rule))
    }

    /// Adds a fault rule that is removed when the guard drops (also on panic).
    pub fn fault(&self, rule: Value) -> anyhow::Result<FaultGuard> {
        let r = self.add_fault(rule)?;
        let id = r["id"]
            .as_str()
            .context("fault rule without id")?
            .to_string();
        Ok(FaultGuard {
            admin: self.clone(),
            id,
        })
    }

    pub fn clear_fault(&self, id: &str) -> anyhow::Result<()> {
        self.call("DELETE", &format!("/faults/{id}"), None)
            .map(|_| ())
    }

    /// Removes every fault rule (all tests'): for harness setup/teardown, not inside tests
    /// that run in parallel.
    pub fn clear_all_faults(&self) -> anyhow::Result<()> {
        self.call("DELETE", "/faults", None).map(|_| ())
    }

    pub fn faults(&self) -> anyhow::Result<Value> {
        self.call("GET", "/faults", None)
    }

    /// `{"since": epoch, "actions": {Action: {ok, throttled, error, total, ms}}, "total": {...}}`
    pub fn stats(&self) -> anyhow::Result<Value> {
        self.call("GET", "/stats", None)
    }

    /// One action's count for one outcome (`ok`, `throttled`, `error`, `total`).
    pub fn count(&self, action: &str, outcome: &str) -> anyhow::Result<u64> {
        Ok(self.stats()?["actions"][action][outcome]
            .as_u64()
            .unwrap_or(0))
    }

    pub fn reset_stats(&self) -> anyhow::Result<()> {
        self.call("POST", "/stats/reset", None).map(|_| ())
    }

    pub fn register_node(&self, instance_id: &str, dev_dir: &Path) -> anyhow::Result<Value> {
        self.call(
            "POST",
            "/nodes",
            Some(&json!({"instance_id": instance_id, "dev_dir": dev_dir})),
        )
    }

    /// Turns on EC2-style per-action token buckets, e.g.
    /// `{"enabled": true, "scale": 1.0, "buckets": {"AttachVolume": {"size": 5, "refill": 1}}}`.
    pub fn set_ratelimits(&self, cfg: Value) -> anyhow::Result<Value> {
        self.call("POST", "/ratelimits", Some(&cfg))
    }

    pub fn clear_ratelimits(&self) -> anyhow::Result<()> {
        self.call("DELETE", "/ratelimits", None).map(|_| ())
    }

    /// The simulator's records (nodes, volumes, attachments, snapshots, rules).
    pub fn state(&self) -> anyhow::Result<Value> {
        self.call("GET", "/state", None)
    }
}

/// A fault rule that is removed on drop.
#[derive(Debug)]
pub struct FaultGuard {
    admin: SimAdmin,
    pub id: String,
}

impl FaultGuard {
    pub fn clear(self) {}
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        if let Err(e) = self.admin.clear_fault(&self.id) {
            eprintln!("could not clear fault rule {}: {e:#}", self.id);
        }
    }
}

/// Every volume moto holds with tag `key=value` (straight from the SDK, bypassing the
/// operator's own adapter), sorted by ID.
pub async fn volumes_tagged(
    sb: &Sandbox,
    key: &str,
    value: &str,
) -> Vec<aws_sdk_ec2::types::Volume> {
    let out = ec2_client(sb)
        .await
        .describe_volumes()
        .filters(tag_filter(key, value))
        .send()
        .await
        .expect("DescribeVolumes through the simulator");
    let mut v = out.volumes().to_vec();
    v.sort_by_key(|v| v.volume_id().unwrap_or_default().to_string());
    v
}

/// Every live snapshot of the account moto holds with tag `key=value` (straight from the
/// SDK), sorted by ID.
pub async fn snapshots_tagged(
    sb: &Sandbox,
    key: &str,
    value: &str,
) -> Vec<aws_sdk_ec2::types::Snapshot> {
    let out = ec2_client(sb)
        .await
        .describe_snapshots()
        .owner_ids("self")
        .filters(tag_filter(key, value))
        .send()
        .await
        .expect("DescribeSnapshots through the simulator");
    let mut v = out.snapshots().to_vec();
    v.sort_by_key(|s| s.snapshot_id().unwrap_or_default().to_string());
    v
}

fn tag_filter(key: &str, value: &str) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// The value of a snapshot's tag `key`.
pub fn snapshot_tag<'a>(s: &'a aws_sdk_ec2::types::Snapshot, key: &str) -> Option<&'a str> {
    s.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The IDs of `vols` (those that have one), collected as the caller needs them.
pub fn volume_ids<C: FromIterator<String>>(vols: &[aws_sdk_ec2::types::Volume]) -> C {
    vols.iter()
        .filter_map(|v| v.volume_id().map(str::to_string))
        .collect()
}

/// What a test made in EC2 through the operator's adapter, removed at the end whatever
/// happened (detached, then deleted; already-gone counts as done).
#[derive(Default)]
pub struct Made {
    pub attached: Vec<(String, String)>,
    pub volumes: Vec<String>,
    pub snapshots: Vec<String>,
}

impl Made {
    pub async fn clean(&self, ec2: &dyn pgml_aws::Ec2) {
        for (vol, iid) in &self.attached {
            let _ = ec2.detach_volume(vol, iid, true).await;
        }
        for v in &self.volumes {
            let _ = ec2.delete_volume(v).await;
        }
        for s in &self.snapshots {
            let _ = ec2.delete_snapshot(s).await;
        }
    }
}

/// One S3 REST call (path style) to moto through the EBS simulator, which forwards every
/// non-EC2 request to moto as it came. moto checks no signature but routes by the
/// credential scope, so a fixed unsigned `Authorization` naming service `s3` will do (as
/// the sandbox's own EC2 calls do). Returns the status and the body.
pub fn s3_call(sb: &Sandbox, method: &str, path_and_query: &str) -> anyhow::Result<(u16, String)> {
    let addr = sb
        .aws
        .endpoint
        .strip_prefix("http://")
        .with_context(|| format!("endpoint {} is not http://", sb.aws.endpoint))?
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20240101/{}/s3/aws4_request, \
         SignedHeaders=host, Signature=0",
        sb.region
    );
    let req = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\
         x-amz-content-sha256: UNSIGNED-PAYLOAD\r\nx-amz-date: 20240101T000000Z\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    exchange(&mut s, &req, "malformed S3 answer")
}

/// Sends one HTTP/1.1 request (with `Connection: close`) and reads the whole answer: its
/// status and body. `malformed` starts the error for an answer with no head/body split.
fn exchange(s: &mut TcpStream, req: &str, malformed: &str) -> anyhow::Result<(u16, String)> {
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{malformed}: {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, payload.to_string()))
}

/// S3 CreateBucket in the sandbox's region (moto; an existing bucket of ours is fine).
pub fn s3_create_bucket(sb: &Sandbox, bucket: &str) -> anyhow::Result<()> {
    let (status, body) = s3_call(sb, "PUT", &format!("/{bucket}"))?;
    if !(200..300).contains(&status) && !body.contains("BucketAlreadyOwnedByYou") {
        bail!("S3 CreateBucket {bucket}: HTTP {status}: {body}");
    }
    Ok(())
}

/// S3 ListObjectsV2: the keys under `prefix` (up to 1000, enough for a test).
pub fn s3_list_keys(sb: &Sandbox, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    let (status, body) = s3_call(
        sb,
        "GET",
        &format!("/{bucket}?list-type=2&max-keys=1000&prefix={prefix}"),
    )?;
    if status != 200 {
        bail!("S3 ListObjectsV2 {bucket}/{prefix}: HTTP {status}: {body}");
    }
    Ok(body
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect())
}

/// An EC2 instance metadata service for processes of the test, without touching the host's
/// network: a fresh network namespace (held by `unshare -n sleep infinity`, loopback up
/// and carrying 169.254.169.254) where `tests/testbed/sandbox/imds.py` serves IMDSv2
/// (the instance role `pgml-node-role`, whose temporary credentials are moto's test keys)
/// and pipes 127.0.0.1:`s3_port` to the host's, the sandbox's HTTPS front of S3. A
/// program started through [`NodeImds::wrapper`] sees EC2's metadata service as on an
/// instance: pgBackRest's `repo1-s3-key-type=auto` works unchanged. Both processes are
/// killed on drop.
pub struct NodeImds {
    holder: std::process::Child,
    server: std::process::Child,
    /// The holder's PID: `nsenter -t <pid> -n` enters the namespace.
    pub netns_pid: u32,
    /// The service's log: one line per request.
    pub log: PathBuf,
}

impl NodeImds {
    pub fn start(s3_port: u16) -> anyhow::Result<NodeImds> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let holder = Command::new("unshare")
            .args(["-n", "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .context("unshare -n")?;
        let pid = holder.id();
        let mut me = NodeImds {
            holder,
            server: Command::new("true").spawn().context("true")?,
            netns_pid: pid,
            log: PathBuf::from(format!("/tmp/pgml-imds-{pid}.log")),
        };
        // unshare execs sleep once the namespace is made: wait until the PID's namespace
        // is no longer ours.
        let own = std::fs::read_link("/proc/self/ns/net")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .as_ref()
            == Some(&own)
        {
            if std::time::Instant::now() > deadline {
                bail!("unshare -n (pid {pid}) made no network namespace");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let p = pid.to_string();
        for args in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"],
        ] {
            let out = Command::new("nsenter")
                .args(["-t", &p, "-n", "--"])
                .args(&args)
                .output()
                .context("nsenter ip")?;
            if !out.status.success() {
                bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let _ = me.server.wait();
        me.server = Command::new("python3")
            .args(["-m", "sandbox.imds", "--netns-pid", &p, "--s3-port"])
            .arg(s3_port.to_string())
            .current_dir(crate::sandbox::repo_root().join("tests/testbed"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&me.log)?)
            .spawn()
            .context("python3 -m sandbox.imds")?;
        let mut line = String::new();
        std::io::BufReader::new(me.server.stdout.take().expect("stdout")).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!(
                "sandbox.imds did not start (said {line:?}): {}",
                std::fs::read_to_string(&me.log).unwrap_or_default()
            );
        }
        Ok(me)
    }

    /// How many times the role's credentials were handed out.
    pub fn credentials_served(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/security-credentials/") && l.ends_with(" 200"))
            .count()
    }

    /// The command prefix that runs a program in the namespace (`nsenter -t <pid> -n --`).
    pub fn wrapper(&self) -> Vec<String> {
        ["nsenter", "-t", &self.netns_pid.to_string(), "-n", "--"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for NodeImds {
    fn drop(&mut self) {
        for c in [&mut self.server, &mut self.holder] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
