//! What the fake records of each call, and the rules that make calls fail, stall or throttle.

use std::sync::Arc;
use std::time::Duration;

use super::{ACTIONS, Ec2Error, FakeEc2};

/// One call the fake received: the EC2 action it stands for, the trait method that made it,
/// its key arguments under EC2's parameter names (`VolumeId`, `InstanceId`, `Device`,
/// `ClientToken`, `Size`, `tag:<key>`…, repeated for lists), and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub action: &'static str,
    pub method: &'static str,
    pub args: Vec<(String, String)>,
    pub outcome: Outcome,
}

impl Call {
    /// The first value of argument `name`.
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of argument `name`, in order.
    pub fn args_named(&self, name: &str) -> Vec<&str> {
        self.args
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether any argument has `value` (a volume, instance or snapshot ID, a token, a tag
    /// value): how a rule is scoped to one test's resources.
    pub fn mentions(&self, value: &str) -> bool {
        self.args.iter().any(|(_, v)| v == value)
    }
}

/// How a call ended, as EC2 answered it (before the adapter's own rules: a DeleteVolume
/// answered `InvalidVolume.NotFound` is recorded so, though the caller sees success).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still waiting (an injected delay, or the caller dropped the future).
    InFlight,
    Ok,
    /// The error code (`DispatchFailure` when there was no answer at all).
    Error(String),
}

/// Identifies an injected rule, to ask how often it fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub(super) u64);

type Predicate = Arc<dyn Fn(&Call) -> bool + Send + Sync>;

/// What a rule does to a call it fires on.
#[derive(Clone, Debug)]
pub(super) enum Effect {
    Fail(Ec2Error),
    Delay(Duration),
}

#[derive(Clone)]
pub(super) struct Rule {
    pub id: RuleId,
    action: Option<&'static str>,
    when: Vec<Predicate>,
    skip: usize,
    /// `None`: every matching call.
    times: Option<usize>,
    after_effect: bool,
    effect: Effect,
    seen: usize,
    pub fired: usize,
}

impl Rule {
    fn matches(&self, call: &Call) -> bool {
        self.action.is_none_or(|a| a == call.action) && self.when.iter().all(|p| p(call))
    }

    fn spent(&self) -> bool {
        self.times.is_some_and(|n| self.fired >= n)
    }

    /// Whether the rule may still fire on a call at some point.
    pub fn armed(&self) -> bool {
        !self.spent()
    }

    /// Whether the rule fires on a limited number of calls.
    pub fn limited(&self) -> bool {
        self.times.is_some()
    }
}

/// What the rules decided for one call.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Waited before the call takes effect.
    pub delay: Duration,
    /// Waited after it took effect, before the answer.
    pub delay_answer: Duration,
    pub fail: Option<Ec2Error>,
    /// The failure comes after the call took effect (an ambiguous outcome).
    pub fail_after_effect: bool,
}

/// Applies `rules` to `call`, in the order they were added: every matching delay adds up,
/// the first matching failure wins (later failures are not used up by this call).
pub(super) fn plan(rules: &mut [Rule], call: &Call) -> Plan {
    let mut plan = Plan::default();
    for r in rules.iter_mut() {
        if r.spent() || !r.matches(call) {
            continue;
        }
        r.seen += 1;
        if r.seen <= r.skip {
            continue;
        }
        match &r.effect {
            Effect::Delay(d) if r.after_effect => plan.delay_answer += *d,
            Effect::Delay(d) => plan.delay += *d,
            Effect::Fail(_) if plan.fail.is_some() => continue,
            Effect::Fail(e) => {
                plan.fail = Some(e.clone());
                plan.fail_after_effect = r.after_effect;
            }
        }
        r.fired += 1;
    }
    plan
}

/// A rule being built: which calls ([`When::matching`], [`When::when`]), which of them
/// ([`When::skip`], [`When::times`], once by default), then what happens to them
/// ([`When::fail`], [`When::throttle`], [`When::no_answer`], [`When::delay`]), which adds
/// the rule.
#[must_use = "a rule is added by fail, throttle, no_answer or delay"]
pub struct When<'a> {
    fake: &'a FakeEc2,
    action: Option<&'static str>,
    when: Vec<Predicate>,
    skip: usize,
    times: Option<usize>,
    after_effect: bool,
}

impl<'a> When<'a> {
    pub(super) fn new(fake: &'a FakeEc2, action: &str) -> Self {
        let action = match action {
            "*" => None,
            a => Some(
                *ACTIONS
                    .iter()
                    .find(|k| **k == a)
                    .unwrap_or_else(|| panic!("the fake knows no EC2 action {a:?}: {ACTIONS:?}")),
            ),
        };
        When {
            fake,
            action,
            when: vec![],
            skip: 0,
            times: Some(1),
            after_effect: false,
        }
    }

    /// Only calls with an argument equal to `value` ([`Call::mentions`]).
    pub fn matching(self, value: impl Into<String>) -> Self {
        let value = value.into();
        self.when(move |c| c.mentions(&value))
    }

    /// Only calls for which `predicate` holds.
    pub fn when(mut self, predicate: impl Fn(&Call) -> bool + Send + Sync + 'static) -> Self {
        self.when.push(Arc::new(predicate));
        self
    }

    /// Lets the first `n` matching calls through untouched.
    pub fn skip(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    /// Fires on `n` matching calls (the default is 1).
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    /// Fires on every matching call.
    pub fn always(mut self) -> Self {
        self.times = None;
        self
    }

    /// The effect comes after the call took effect: a failure is an ambiguous outcome (the
    /// volume exists, the caller saw a 500), a delay holds the answer, not the action.
    pub fn after_effect(mut self) -> Self {
        self.after_effect = true;
        self
    }

    /// Fails with EC2 error `code`, with the HTTP status EC2 gives it (503 for
    /// RequestLimitExceeded and Unavailable, 500 for InternalError, 400 for most) and a
    /// message of its own; classified as [`crate::SdkEc2`] classifies that answer.
    pub fn fail(self, code: &str) -> RuleId {
        let message = format!("injected {code}");
        self.fail_with(code, super::status_of(code), &message)
    }

    /// Fails with EC2 error `code`, HTTP `status` and `message` (the operator reads some
    /// messages, e.g. "already in use").
    pub fn fail_with(self, code: &str, status: u16, message: &str) -> RuleId {
        self.add(Effect::Fail(Ec2Error {
            code: Some(code.to_string()),
            status: Some(status),
            message: message.to_string(),
        }))
    }

    /// Throttles: RequestLimitExceeded, HTTP 503, as EC2 answers a call over its rate.
    pub fn throttle(self) -> RuleId {
        self.fail_with("RequestLimitExceeded", 503, "Request limit exceeded.")
    }

    /// No answer at all (a connection reset or a timeout): transient, code
    /// `DispatchFailure`.
    pub fn no_answer(self) -> RuleId {
        self.add(Effect::Fail(Ec2Error {
            code: None,
            status: None,
            message: "injected: no answer".into(),
        }))
    }

    /// Waits `d` (tokio time: a test under `tokio::time::pause` does not wait) before the
    /// call takes effect, or with [`When::after_effect`] before it answers.
    pub fn delay(self, d: Duration) -> RuleId {
        self.add(Effect::Delay(d))
    }

    fn add(self, effect: Effect) -> RuleId {
        let mut g = self.fake.lock();
        g.next_rule += 1;
        let id = RuleId(g.next_rule);
        g.rules.push(Rule {
            id,
            action: self.action,
            when: self.when,
            skip: self.skip,
            times: self.times,
            after_effect: self.after_effect,
            effect,
            seen: 0,
            fired: 0,
        });
        id
    }
}
