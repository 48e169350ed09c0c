//! "Never two writable primaries", watched from outside: a sampler that asks every
//! instance's server whether it accepts writes (`pg_is_in_recovery()` = false; a server that
//! does not answer is not writable) and reads every instance's report
//! (`pgml.io/instance-status`) from one list of the Pods, at a fixed pace, until stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

use crate::pg::{PG_BIN, SOCKET_DIR};

/// One instance to watch: its Pod's name and how to reach its server.
#[derive(Clone, Debug)]
pub struct Target {
    pub pod: String,
    pub port: u16,
    /// The superuser's password: connect over TCP to 127.0.0.1 with it; None: the socket
    /// in [`SOCKET_DIR`] as `postgres` (trust).
    pub password: Option<String>,
}

/// `pg_is_in_recovery()` = false on the server: Some(true) when it accepts writes,
/// Some(false) in recovery, None when it does not answer.
pub async fn writable(t: &Target) -> Option<bool> {
    let mut c = tokio::process::Command::new(format!("{PG_BIN}/psql"));
    let host = match &t.password {
        Some(pw) => {
            c.env("PGPASSWORD", pw);
            "127.0.0.1"
        }
        None => SOCKET_DIR,
    };
    let out = c
        .args(["-X", "-A", "-t", "-h", host, "-p", &t.port.to_string()])
        .args(["-U", "postgres", "-d", "postgres"])
        .args(["-c", "SELECT pg_is_in_recovery()"])
        .env("PGCONNECT_TIMEOUT", "2")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim() == "f")
}

/// An annotation of a Pod.
pub fn annotation_of(p: &Pod, key: &str) -> Option<String> {
    p.metadata.annotations.as_ref()?.get(key).cloned()
}

/// The instance manager's report (`pgml.io/instance-status`), parsed.
pub fn report_of(p: &Pod) -> Option<Value> {
    serde_json::from_str(&annotation_of(p, "pgml.io/instance-status")?).ok()
}

/// The report says running primary, not demoted, and the Pod is not fenced.
pub fn reports_primary(p: &Pod) -> bool {
    let fenced = annotation_of(p, "pgml.io/fenced").as_deref() == Some("true");
    let is = |r: &Value, k: &str| r[k].as_bool() == Some(true);
    !fenced
        && report_of(p)
            .is_some_and(|r| r["role"] == "primary" && is(&r, "running") && !is(&r, "demoted"))
}

/// One look at every target, in the order given.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_ms: u128,
    pub writable: Vec<Option<bool>>,
    pub reports_primary: Vec<bool>,
}

impl Sample {
    pub fn writable_count(&self) -> usize {
        self.writable.iter().filter(|w| **w == Some(true)).count()
    }
}

/// Samples the targets every `every` until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(pods: Api<Pod>, targets: Vec<Target>, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                // The servers at once, then the reports from one list (one moment).
                let asks: Vec<_> = targets
                    .iter()
                    .cloned()
                    .map(|t| tokio::spawn(async move { writable(&t).await }))
                    .collect();
                let mut w = Vec::with_capacity(asks.len());
                for a in asks {
                    w.push(a.await.ok().flatten());
                }
                let listed = pods.list(&ListParams::default()).await.ok();
                let reports_primary = targets
                    .iter()
                    .map(|t| {
                        listed.as_ref().is_some_and(|l| {
                            l.items.iter().any(|p| {
                                p.metadata.name.as_deref() == Some(&t.pod) && reports_primary(p)
                            })
                        })
                    })
                    .collect();
                samples.push(Sample {
                    at_ms: t0.elapsed().as_millis(),
                    writable: w,
                    reports_primary,
                });
                tokio::time::sleep(every).await;
            }
            samples
        });
        Sampler { stop, task }
    }

    /// Stops sampling; every sample taken.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the sampler panicked")
    }
}

/// Panics at the first sample with two writable servers, or two instances reporting a
/// running primary (none fenced), naming `phase`; also when fewer than 6 samples were taken.
pub fn assert_one_primary(samples: &[Sample], phase: &str) {
    assert!(samples.len() > 5, "{phase}: too few samples: {samples:?}");
    for s in samples {
        assert!(
            s.writable_count() < 2,
            "{phase}: two writable primaries at {} ms: {s:?}",
            s.at_ms
        );
        assert!(
            s.reports_primary.iter().filter(|r| **r).count() < 2,
            "{phase}: two instances report running primary at {} ms: {s:?}",
            s.at_ms
        );
    }
}
