//! [`FakeEc2`]: an in-memory [`crate::Ec2`] for unit tests of whole reconciles, without the
//! sandbox (cargo feature `fake`; a crate that tests with it enables the feature on its
//! pgml-aws dev-dependency).
//!
//! It models what controller logic depends on: instances with a zone, a type and a root
//! volume; volumes `creating` → `available` ⇄ `in-use` → `deleting` → gone (or `error`);
//! ClientToken idempotency; attachments with device names, "already in use" and attachment
//! limits; tags and EC2's `tag:` filters (`*`, `?`); CreateSnapshots over one instance's
//! volumes, `pending` → `completed` (or `error`). Each state in transition holds for as
//! many describes of it as [`Timing`] says (none by default: the answer to a create says
//! `creating`, as EC2's does, the next look says `available`).
//!
//! Errors carry EC2's codes and messages and are classified by the same
//! [`crate::classify`] as [`crate::SdkEc2`]'s, then go through the same adapter rules
//! (a detach or delete of what is gone succeeds, an unknown instance is `None`). The fake
//! answers as `SdkEc2` does once the SDK's own retries are spent: one call, one answer.
//!
//! Tests steer it three ways: rules on calls ([`FakeEc2::on`]: fail with any code, fail
//! after taking effect, throttle, give no answer, delay in tokio time), faults of state
//! ([`FakeEc2::stick_attachments`], [`FakeEc2::fail_volume`], [`FakeEc2::lose_volume`],
//! [`FakeEc2::fail_next_snapshots`]), and reading what was called ([`FakeEc2::calls`],
//! [`FakeEc2::count`]).
//!
//! Left out: multi-attach, volume types other than gp3/io2, DescribeVolumesModifications,
//! the 6-hour wait between modifications, pagination, eventual consistency of tag searches.

mod ec2;
mod rules;
mod snapshots;
mod steer;
mod volumes;
mod world;

#[cfg(test)]
mod tests;

use std::sync::{Mutex, MutexGuard};

pub use rules::{Call, Outcome, RuleId, When};
pub use world::{ROOT_DEVICE, default_limits};

use crate::AwsError;
use world::World;

/// The EC2 actions the fake answers, as [`Call::action`] names them.
pub const ACTIONS: [&str; 13] = [
    "DescribeInstances",
    "DescribeInstanceTypes",
    "CreateVolume",
    "DescribeVolumes",
    "AttachVolume",
    "DetachVolume",
    "ModifyVolume",
    "DeleteVolume",
    "CreateSnapshots",
    "DescribeSnapshots",
    "CreateTags",
    "ListChangedBlocks",
    "DeleteSnapshot",
];

/// How many describes of a resource show each state in transition before it moves on
/// (0: the next look shows where it ends). The answer of the call that started it always
/// says `creating`, `attaching` or `pending`, as EC2's does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub creating: u32,
    pub attaching: u32,
    pub detaching: u32,
    pub deleting: u32,
    /// A modification in flight: another ModifyVolume meanwhile is refused with
    /// IncorrectModificationState.
    pub modifying: u32,
    pub snapshot_pending: u32,
}

/// An error as EC2 answers it: a code and an HTTP status, both missing when nothing came
/// back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ec2Error {
    pub code: Option<String>,
    pub status: Option<u16>,
    pub message: String,
}

impl Ec2Error {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Ec2Error {
            code: Some(code.to_string()),
            status: Some(status_of(code)),
            message: message.into(),
        }
    }

    /// As `SdkEc2` turns the same answer into an error.
    fn into_aws(self, action: &'static str) -> AwsError {
        AwsError::answered(
            action,
            self.code.as_deref(),
            self.status,
            "DispatchFailure",
            self.message,
        )
    }
}

/// The HTTP status EC2 answers error `code` with.
fn status_of(code: &str) -> u16 {
    match code {
        "RequestLimitExceeded" | "Unavailable" | "ServiceUnavailable" => 503,
        "InternalError" | "InternalFailure" => 500,
        "UnauthorizedOperation" | "Blocked" => 403,
        "AuthFailure" => 401,
        _ => 400,
    }
}

/// EC2's filter patterns: `*` any run of characters, `?` one, `\` escapes the next.
pub fn glob(pattern: &str, value: &str) -> bool {
    fn go(p: &[char], v: &[char]) -> bool {
        match p.split_first() {
            None => v.is_empty(),
            Some(('*', rest)) => (0..=v.len()).any(|i| go(rest, &v[i..])),
            Some(('?', rest)) => !v.is_empty() && go(rest, &v[1..]),
            Some(('\\', rest)) if !rest.is_empty() => {
                v.first() == Some(&rest[0]) && go(&rest[1..], &v[1..])
            }
            Some((c, rest)) => v.first() == Some(c) && go(rest, &v[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    go(&p, &v)
}

#[derive(Default)]
struct Inner {
    world: World,
    rules: Vec<rules::Rule>,
    /// Each with its sequence number (the answer finds its call by it).
    calls: Vec<(u64, Call)>,
    next_call: u64,
    next_rule: u64,
}

/// The in-memory EC2. Share it as `Arc<FakeEc2>`: one clone as the controllers'
/// `Arc<dyn Ec2>`, one for the test to steer and question.
#[derive(Default)]
pub struct FakeEc2 {
    inner: Mutex<Inner>,
}

impl FakeEc2 {
    /// An empty EC2 whose transitions end at the next look.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_timing(timing: Timing) -> Self {
        let fake = Self::new();
        fake.set_timing(timing);
        fake
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn world<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        f(&mut self.lock().world)
    }

    /// Applies to transitions started from now on.
    pub fn set_timing(&self, timing: Timing) {
        self.world(|w| w.timing = timing);
    }

    // ---- rules -----------------------------------------------------------------------

    /// A rule for calls of `action` (one of [`ACTIONS`], or `"*"` for all; anything else
    /// panics, so a misspelt rule cannot silently never fire).
    pub fn on(&self, action: &str) -> When<'_> {
        When::new(self, action)
    }

    /// How many calls rule `id` has fired on.
    pub fn fired(&self, id: RuleId) -> usize {
        self.lock()
            .rules
            .iter()
            .find(|r| r.id == id)
            .map_or(0, |r| r.fired)
    }

    /// Rules with a number of calls to fire on that have not fired on all of them yet.
    pub fn unfired(&self) -> Vec<RuleId> {
        self.lock()
            .rules
            .iter()
            .filter(|r| r.armed() && r.limited())
            .map(|r| r.id)
            .collect()
    }

    pub fn remove_rule(&self, id: RuleId) {
        self.lock().rules.retain(|r| r.id != id);
    }

    pub fn clear_rules(&self) {
        self.lock().rules.clear();
    }

    // ---- what was called -------------------------------------------------------------

    /// Every call so far, in the order they arrived.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.iter().map(|(_, c)| c.clone()).collect()
    }

    /// The calls of `action`.
    pub fn calls_of(&self, action: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|(_, c)| c.action == action)
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// How many calls of `action` arrived (whatever their outcome).
    pub fn count(&self, action: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|(_, c)| c.action == action)
            .count()
    }

    /// How many calls of `action` EC2 answered with success.
    pub fn count_ok(&self, action: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|(_, c)| c.action == action && c.outcome == Outcome::Ok)
            .count()
    }

    /// The actions called, in order.
    pub fn actions(&self) -> Vec<&'static str> {
        self.lock().calls.iter().map(|(_, c)| c.action).collect()
    }

    /// Forgets the calls so far (rules and the world stay).
    pub fn forget_calls(&self) {
        self.lock().calls.clear();
    }

    /// One call: recorded, ruled (delays, failures), then `op` on the world unless a rule
    /// failed it first.
    async fn run<T>(
        &self,
        method: &'static str,
        action: &'static str,
        args: Vec<(String, String)>,
        op: impl FnOnce(&mut World, i64) -> Result<T, Ec2Error>,
    ) -> Result<T, Ec2Error> {
        let call = Call {
            action,
            method,
            args,
            outcome: Outcome::InFlight,
        };
        let (seq, plan) = {
            let mut g = self.lock();
            let plan = rules::plan(&mut g.rules, &call);
            g.next_call += 1;
            let seq = g.next_call;
            g.calls.push((seq, call));
            (seq, plan)
        };
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        let result = match plan.fail {
            Some(e) if !plan.fail_after_effect => Err(e),
            fail => {
                let done = op(&mut self.lock().world, unix_now());
                match fail {
                    Some(e) => Err(e),
                    None => done,
                }
            }
        };
        if !plan.delay_answer.is_zero() {
            tokio::time::sleep(plan.delay_answer).await;
        }
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Error(e.code.clone().unwrap_or_else(|| "DispatchFailure".into())),
        };
        if let Some((_, c)) = self.lock().calls.iter_mut().find(|(n, _)| *n == seq) {
            c.outcome = outcome;
        }
        result
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
