//! `kubectl pgml status`: what the objects say, gathered into a [`Summary`] (pure, from the
//! objects), printed as one screen of text ([`render`], pure) or as JSON (the summary).

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use pgml_api::cluster::{
    ArchivingStatus, BackupRef, ClusterPhase, InstanceRole, InstanceStatus, Storage,
};
use pgml_api::common::{Condition, Time, condition as c, keys};
use pgml_api::snapshot::SnapshotPhase;
use pgml_api::{EbsSnapshot, PgmlCluster, PgmlClusterStatus, ZfsPool};
use serde::Serialize;

use crate::paint::{BOLD, GREEN, Paint, RED, YELLOW};
use crate::units::{age, bytes};

/// How many snapshots and Warning events the status lists.
pub const SNAPSHOTS_SHOWN: usize = 5;
pub const EVENTS_SHOWN: usize = 5;

/// Everything `status` shows of one cluster.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub name: String,
    pub namespace: String,
    pub phase: Option<String>,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub current_primary: Option<String>,
    pub target_primary: Option<String>,
    /// `spec.primary`, when a switchover was asked for.
    pub requested_primary: Option<String>,
    pub instances_desired: i32,
    pub instances_ready: i32,
    pub image: String,
    /// `zfs` or `persistentVolumeClaim`, with its shape in words.
    pub storage_mode: String,
    pub storage: String,
    pub conditions: Vec<ConditionLine>,
    pub instances: Vec<InstanceLine>,
    /// Set when `spec.backups.pgbackrest` is.
    pub archiving: Option<Archiving>,
    pub snapshots: Snapshots,
    /// Recent Warning events of the cluster, newest first.
    pub warnings: Vec<EventLine>,
    /// The restore of the database (`spec.bootstrap`), until it first serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<pgml_api::cluster::RestoreStatus>,
    /// `status.pgmlVersion`: the `pgml` extension in the application database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgml_version: Option<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLine {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// The condition's observedGeneration is behind the object's generation.
    pub stale: bool,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceLine {
    pub name: String,
    /// Primary, Replica or unknown (`None`).
    pub role: Option<String>,
    pub ready: bool,
    pub fenced: bool,
    /// Why its node is going away (cordoned, tainted for disruption), if it is.
    pub node_leaving: Option<String>,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub seeded_from: Option<String>,
    pub pool: Option<String>,
    /// The pool's health: the ZfsPool's own status, else what the cluster status copied.
    pub pool_health: Option<String>,
    pub pool_phase: Option<String>,
    pub pool_size_bytes: Option<i64>,
    pub pool_allocated_bytes: Option<i64>,
    pub pool_free_bytes: Option<i64>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Archiving {
    /// `s3://bucket/path` (path defaulted as the operator does).
    pub repository: String,
    /// The ContinuousArchiving condition, when reported.
    pub condition: Option<ConditionLine>,
    pub status: Option<ArchivingStatus>,
    pub last_backup: Option<BackupRef>,
    pub full_schedule: Option<String>,
    pub incremental_schedule: Option<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Snapshots {
    /// `spec.backups.snapshots.schedule`.
    pub schedule: Option<String>,
    pub next_schedule_time: Option<Time>,
    /// `status.lastSnapshot`: the newest Completed snapshot.
    pub last_completed: Option<String>,
    /// The LastSnapshotSucceeded condition.
    pub condition: Option<ConditionLine>,
    /// How many EbsSnapshots of the cluster exist (seeds included).
    pub total: usize,
    /// The newest ones, newest first.
    pub recent: Vec<SnapshotLine>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotLine {
    pub name: String,
    pub phase: Option<String>,
    /// `scheduled` (made by the cluster's schedule), `seed` (made to seed a replica) or
    /// `manual`.
    pub origin: String,
    /// The instance captured, when known.
    pub instance: Option<String>,
    /// Capture time, else creation time.
    pub taken: Option<Time>,
    pub size_gib: Option<i64>,
    /// Why it failed (its Ready condition), for a Failed one.
    pub message: Option<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    pub reason: String,
    pub message: String,
    pub count: i32,
    pub last_seen: Option<Time>,
}

fn condition_line(k: &Condition, generation: Option<i64>) -> ConditionLine {
    ConditionLine {
        type_: k.type_.clone(),
        status: k.status.clone(),
        reason: k.reason.clone(),
        message: k.message.clone(),
        stale: matches!((k.observed_generation, generation), (Some(o), Some(g)) if o < g),
    }
}

fn phase_word(p: ClusterPhase) -> String {
    format!("{p:?}")
}

fn snapshot_phase_word(p: SnapshotPhase) -> String {
    format!("{p:?}")
}

/// The order conditions are listed in: the ones users look at first, then the others as
/// the status has them.
const CONDITION_ORDER: &[&str] = &[
    c::READY,
    c::DEGRADED,
    c::PROGRESSING,
    c::SPEC_VALID,
    c::CONTINUOUS_ARCHIVING,
    c::LAST_BACKUP_SUCCEEDED,
    c::LAST_SNAPSHOT_SUCCEEDED,
];

/// The instance an EbsSnapshot captured: the pool it reports, else the instance asked for.
fn snapshot_instance(s: &EbsSnapshot) -> Option<String> {
    s.status
        .as_ref()
        .and_then(|st| st.zfs_pool.clone())
        .or_else(|| s.spec.source.cluster.as_ref()?.instance.clone())
}

fn snapshot_taken(s: &EbsSnapshot) -> Option<Time> {
    s.status
        .as_ref()
        .and_then(|st| st.capture_time.clone())
        .or_else(|| s.metadata.creation_timestamp.clone())
}

fn snapshot_origin(s: &EbsSnapshot) -> &'static str {
    let labels = s.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(keys::SCHEDULED_BY)) {
        "scheduled"
    } else if labels.is_some_and(|l| l.contains_key(keys::CLUSTER)) {
        "seed"
    } else {
        "manual"
    }
}

fn snapshot_failure(s: &EbsSnapshot) -> Option<String> {
    let st = s.status.as_ref()?;
    if st.phase != Some(SnapshotPhase::Failed) {
        return None;
    }
    let ready = st.conditions.iter().find(|k| k.type_ == c::READY)?;
    Some(if ready.message.is_empty() {
        ready.reason.clone()
    } else {
        format!("{}: {}", ready.reason, ready.message)
    })
}

fn event_time(e: &Event) -> Option<Time> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| Time(t.0))
        .or_else(|| e.last_timestamp.clone())
        .or_else(|| e.event_time.as_ref().map(|t| Time(t.0)))
        .or_else(|| e.metadata.creation_timestamp.clone())
}

/// The summary of `cluster` from the namespace's ZfsPools, EbsSnapshots and Events (any
/// list of them: only those of this cluster count).
pub fn summarize(
    cluster: &PgmlCluster,
    pools: &[ZfsPool],
    snapshots: &[EbsSnapshot],
    events: &[Event],
) -> Summary {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let st = cluster.status.clone().unwrap_or_default();
    let spec = &cluster.spec;
    let conditions = ordered_conditions(&st.conditions, generation);
    let storage = storage_words(&spec.storage);
    let archiving = archiving(cluster, &name, &st, &conditions);
    let snapshots = cluster_snapshots(cluster, &name, &st, &conditions, snapshots);
    let warnings = recent_warnings(&name, events);
    Summary {
        name,
        namespace: cluster.metadata.namespace.clone().unwrap_or_default(),
        phase: st.phase.map(phase_word),
        generation,
        observed_generation: st.observed_generation,
        current_primary: st.current_primary.clone(),
        target_primary: st.target_primary.clone(),
        requested_primary: spec.primary.clone(),
        instances_desired: spec.instances,
        instances_ready: st.ready_instances.unwrap_or(0),
        image: spec.image.clone(),
        storage_mode: storage.mode,
        storage: storage.shape,
        conditions,
        instances: instance_lines(&st.instances, pools),
        archiving,
        snapshots,
        warnings,
        restore: st.restore.clone(),
        pgml_version: st.pgml_version.clone(),
    }
}

/// The status's conditions as lines, in [`CONDITION_ORDER`] (the sort is stable: the
/// others keep the status's order).
fn ordered_conditions(conditions: &[Condition], generation: Option<i64>) -> Vec<ConditionLine> {
    let mut conditions: Vec<&Condition> = conditions.iter().collect();
    conditions.sort_by_key(|k| {
        CONDITION_ORDER
            .iter()
            .position(|t| *t == k.type_)
            .unwrap_or(CONDITION_ORDER.len())
    });
    conditions
        .into_iter()
        .map(|k| condition_line(k, generation))
        .collect()
}

/// The condition of type `t` among the summary's lines, for the section that shows it too.
fn find_condition(conditions: &[ConditionLine], t: &str) -> Option<ConditionLine> {
    conditions.iter().find(|k| k.type_ == t).cloned()
}

/// The storage an instance gets, named ([`Summary::storage_mode`]) and in words
/// ([`Summary::storage`]).
struct StorageWords {
    mode: String,
    shape: String,
}

/// `spec.storage` in words: ZFS pools of EBS volumes, a PVC, or nothing set yet.
fn storage_words(storage: &Storage) -> StorageWords {
    let (mode, shape) = match (&storage.zfs, &storage.persistent_volume_claim) {
        (Some(z), _) => {
            let v = &z.template.volumes;
            (
                "zfs".to_string(),
                format!(
                    "ZfsPool per instance: {} x {} GiB {} ({})",
                    v.count,
                    v.size_gib,
                    v.volume_type.as_str(),
                    z.template.layout.as_str()
                ),
            )
        }
        (None, Some(p)) => (
            "persistentVolumeClaim".to_string(),
            format!(
                "PVC per instance: {} ({})",
                p.size,
                p.storage_class_name
                    .as_deref()
                    .unwrap_or("default StorageClass")
            ),
        ),
        (None, None) => ("none".into(), "no storage set".into()),
    };
    StorageWords { mode, shape }
}

/// Each instance the status lists, with its pool's own health and capacity when the
/// ZfsPool is among `pools`.
fn instance_lines(instances: &[InstanceStatus], pools: &[ZfsPool]) -> Vec<InstanceLine> {
    instances
        .iter()
        .map(|i| {
            let pool_name = i.pool.clone().unwrap_or_else(|| i.name.clone());
            let pool = pools
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(pool_name.as_str()));
            let ps = pool.and_then(|p| p.status.as_ref());
            InstanceLine {
                name: i.name.clone(),
                role: i.role.map(|r| match r {
                    InstanceRole::Primary => "Primary".to_string(),
                    InstanceRole::Replica => "Replica".to_string(),
                }),
                ready: i.ready,
                fenced: i.fenced,
                node_leaving: i.node_leaving.clone(),
                node: i.node.clone(),
                zone: i.availability_zone.clone(),
                lsn: i.lsn.clone(),
                lag_bytes: i.lag_bytes,
                seeded_from: i.seeded_from.clone(),
                pool: i.pool.clone(),
                pool_health: ps
                    .and_then(|s| s.health.clone())
                    .or_else(|| i.pool_health.clone()),
                pool_phase: ps.and_then(|s| s.phase).map(|p| format!("{p:?}")),
                pool_size_bytes: ps.and_then(|s| s.size_bytes),
                pool_allocated_bytes: ps.and_then(|s| s.allocated_bytes),
                pool_free_bytes: ps.and_then(|s| s.free_bytes),
            }
        })
        .collect()
}

/// pgBackRest's repository, WAL archiving and last backup; `None` when it is not
/// configured.
fn archiving(
    cluster: &PgmlCluster,
    name: &str,
    st: &PgmlClusterStatus,
    conditions: &[ConditionLine],
) -> Option<Archiving> {
    cluster.spec.backups.pgbackrest.as_ref().map(|p| {
        let path = p.s3.path.clone().unwrap_or_else(|| {
            format!(
                "/pgbackrest/{}/{name}",
                cluster.metadata.namespace.as_deref().unwrap_or("default")
            )
        });
        Archiving {
            repository: format!("s3://{}{}", p.s3.bucket, path),
            condition: find_condition(conditions, c::CONTINUOUS_ARCHIVING),
            status: st.archiving.clone(),
            last_backup: st.last_backup.clone(),
            full_schedule: p.schedule.full.clone(),
            incremental_schedule: p.schedule.incremental.clone(),
        }
    })
}

/// The snapshot schedule and how it went, with the newest of the EbsSnapshots whose
/// source is the cluster `name`.
fn cluster_snapshots(
    cluster: &PgmlCluster,
    name: &str,
    st: &PgmlClusterStatus,
    conditions: &[ConditionLine],
    snapshots: &[EbsSnapshot],
) -> Snapshots {
    let of_cluster = newest_snapshots_of(name, snapshots);
    Snapshots {
        schedule: cluster
            .spec
            .backups
            .snapshots
            .as_ref()
            .and_then(|s| s.scheduled.schedule.clone()),
        next_schedule_time: st.schedule.next_schedule_time.clone(),
        last_completed: st.last_snapshot.as_ref().map(|r| r.name.clone()),
        condition: find_condition(conditions, c::LAST_SNAPSHOT_SUCCEEDED),
        total: of_cluster.len(),
        recent: of_cluster
            .iter()
            .take(SNAPSHOTS_SHOWN)
            .map(|s| snapshot_line(s))
            .collect(),
    }
}

/// The EbsSnapshots of the cluster `name`, newest first (by capture or creation time, then
/// by name, so the order is the same at every look).
fn newest_snapshots_of<'a>(name: &str, snapshots: &'a [EbsSnapshot]) -> Vec<&'a EbsSnapshot> {
    let mut of_cluster: Vec<&EbsSnapshot> = snapshots
        .iter()
        .filter(|s| {
            s.spec
                .source
                .cluster
                .as_ref()
                .is_some_and(|src| src.name == name)
        })
        .collect();
    of_cluster.sort_by(|a, b| {
        let t = |s: &EbsSnapshot| snapshot_taken(s).map(|t| t.0);
        t(b).cmp(&t(a))
            .then_with(|| b.metadata.name.cmp(&a.metadata.name))
    });
    of_cluster
}

fn snapshot_line(s: &EbsSnapshot) -> SnapshotLine {
    SnapshotLine {
        name: s.metadata.name.clone().unwrap_or_default(),
        phase: s
            .status
            .as_ref()
            .and_then(|st| st.phase)
            .map(snapshot_phase_word),
        origin: snapshot_origin(s).into(),
        instance: snapshot_instance(s),
        taken: snapshot_taken(s),
        size_gib: s.status.as_ref().and_then(|st| st.size_gib),
        message: snapshot_failure(s),
    }
}

/// The newest [`EVENTS_SHOWN`] Warning events of the PgmlCluster `name`, newest first.
fn recent_warnings(name: &str, events: &[Event]) -> Vec<EventLine> {
    let mut warnings: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.involved_object.kind.as_deref() == Some("PgmlCluster")
                && e.involved_object.name.as_deref() == Some(name)
        })
        .collect();
    warnings.sort_by(|a, b| event_time(b).map(|t| t.0).cmp(&event_time(a).map(|t| t.0)));
    warnings
        .into_iter()
        .take(EVENTS_SHOWN)
        .map(|e| EventLine {
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1),
            last_seen: event_time(e),
        })
        .collect()
}

/// A table's cell: its text and the colour it is printed in, if any.
type Cell = (String, Option<&'static str>);

/// A table: columns padded to their widest cell. Colour codes are not counted.
fn table(p: &Paint, header: &[&str], rows: &[Vec<Cell>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, (cell, _)) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<Cell>| {
        let mut s = String::from("  ");
        for (i, (cell, colour)) in cells.iter().enumerate() {
            let pad = width[i] - cell.chars().count();
            let text = match colour {
                Some(code) => p.code(code, cell),
                None => cell.clone(),
            };
            s += &text;
            if i + 1 < cells.len() {
                s += &" ".repeat(pad + 2);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out += &line(header.iter().map(|h| (h.to_string(), Some(BOLD))).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

fn dash(v: Option<impl ToString>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

/// One line of a long message.
fn shorten(s: &str, max: usize) -> String {
    let one = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        one
    } else {
        one.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

fn ago(now: Timestamp, t: &Option<Time>) -> String {
    t.as_ref()
        .map(|t| age(now, t.0))
        .unwrap_or_else(|| "-".into())
}

/// The status as text: summary, conditions, instances, archiving and backups, snapshots,
/// warnings. `now` gives ages; `colour` adds ANSI colours (only for a terminal).
pub fn render(s: &Summary, now: Timestamp, colour: bool) -> String {
    let p = Paint::new(colour);
    [
        overview(s, &p),
        conditions_section(s, &p),
        instances_section(s, &p),
        archiving_section(s, &p, now),
        snapshots_section(s, &p, now),
        warnings_section(s, &p, now),
    ]
    .concat()
}

/// One `key: value` line, the values aligned.
fn kv(k: &str, v: String) -> String {
    format!("  {:<16}{v}\n", format!("{k}:"))
}

/// A section's title, after a blank line.
fn heading(p: &Paint, title: &str) -> String {
    format!("\n{}\n", p.code(BOLD, title))
}

/// The head of the screen: which cluster, its phase and primary, how many instances are
/// ready, its storage and image, and whether the operator has caught up with the spec.
fn overview(s: &Summary, p: &Paint) -> String {
    let phase = s.phase.as_deref().unwrap_or("Unknown");
    let phase_colour = match phase {
        "Healthy" => GREEN,
        "Failed" => RED,
        _ => YELLOW,
    };
    let mut out = format!(
        "{} {}/{}\n",
        p.code(BOLD, "PgmlCluster"),
        s.namespace,
        p.code(BOLD, &s.name)
    );
    out += &kv("Phase", p.code(phase_colour, phase));
    out += &kv("Primary", primary_words(s));
    if let Some(r) = &s.requested_primary
        && s.current_primary.as_deref() != Some(r.as_str())
    {
        out += &kv("Requested", format!("spec.primary {r}"));
    }
    out += &kv("Instances", readiness_words(s, p));
    out += &kv("Storage", format!("{} — {}", s.storage_mode, s.storage));
    out += &kv("Image", s.image.clone());
    if let Some(v) = &s.pgml_version {
        out += &kv("pgml", v.clone());
    }
    out += &kv("Generation", generation_words(s, p));
    if let Some(r) = &s.restore {
        out += &kv("Restoring from", r.base.clone());
        out += &kv(
            "Target",
            r.target
                .clone()
                .unwrap_or_else(|| "the end of the archived WAL".into()),
        );
        let replay = match (&r.replayed_lsn, r.target_reached) {
            (Some(l), true) => format!("replayed to {l}, target reached: promoting"),
            (Some(l), false) => format!("replayed to {l}"),
            (None, _) => "not started".into(),
        };
        out += &kv("WAL", replay);
        if let Some(f) = &r.failure {
            out += &kv("Failed", p.code(RED, f));
        }
    }
    out
}

/// The primary, and the one being switched to while a switchover is under way.
fn primary_words(s: &Summary) -> String {
    match (&s.current_primary, &s.target_primary) {
        (Some(c), Some(t)) if c != t => format!("{c} (switching to {t})"),
        (Some(c), _) => c.clone(),
        (None, Some(t)) => format!("none yet (target {t})"),
        (None, None) => "none".into(),
    }
}

/// Ready instances of those listed and desired: green only when all agree.
fn readiness_words(s: &Summary, p: &Paint) -> String {
    let total = s.instances.len();
    let ready_colour = if s.instances_ready as usize == total && total as i32 == s.instances_desired
    {
        GREEN
    } else {
        YELLOW
    };
    p.code(
        ready_colour,
        &format!(
            "{}/{} ready ({} desired)",
            s.instances_ready, total, s.instances_desired
        ),
    )
}

/// The generation, in yellow while the operator has not observed it.
fn generation_words(s: &Summary, p: &Paint) -> String {
    match (s.generation, s.observed_generation) {
        (Some(g), Some(o)) if o < g => p.code(
            YELLOW,
            &format!("{g} (observed {o}: the operator has not caught up with the spec yet)"),
        ),
        (Some(g), Some(o)) => format!("{g} (observed {o})"),
        (Some(g), None) => p.code(YELLOW, &format!("{g} (not observed yet)")),
        (None, _) => "-".into(),
    }
}

fn conditions_section(s: &Summary, p: &Paint) -> String {
    let mut out = heading(p, "Conditions");
    if s.conditions.is_empty() {
        out += "  none reported yet\n";
    } else {
        let rows: Vec<_> = s.conditions.iter().map(condition_row).collect();
        out += &table(p, &["TYPE", "STATUS", "REASON", "MESSAGE"], &rows);
    }
    out
}

/// A condition's row: its status green when it is the good one, the message on one line.
fn condition_row(k: &ConditionLine) -> Vec<Cell> {
    // Degraded is good when False; the others when True.
    let good = if k.type_ == c::DEGRADED || k.type_ == c::PROGRESSING {
        k.status == c::FALSE
    } else {
        k.status == c::TRUE
    };
    let colour = if good { GREEN } else { YELLOW };
    let mut msg = shorten(&k.message, 100);
    if k.stale {
        msg = format!("(stale) {msg}");
    }
    vec![
        (k.type_.clone(), None),
        (k.status.clone(), Some(colour)),
        (k.reason.clone(), None),
        (msg, None),
    ]
}

/// The instances' table, then where each seeded replica was seeded from.
fn instances_section(s: &Summary, p: &Paint) -> String {
    let mut out = heading(p, "Instances");
    if s.instances.is_empty() {
        out += "  none placed yet\n";
        return out;
    }
    let rows: Vec<_> = s.instances.iter().map(instance_row).collect();
    out += &table(
        p,
        &[
            "NAME",
            "ROLE",
            "STATUS",
            "NODE",
            "ZONE",
            "LSN",
            "LAG",
            "POOL",
            "HEALTH",
            "USED / SIZE",
        ],
        &rows,
    );
    for i in s.instances.iter().filter(|i| i.seeded_from.is_some()) {
        out += &format!(
            "  {} was seeded from {}\n",
            i.name,
            i.seeded_from.as_deref().unwrap_or_default()
        );
    }
    out
}

/// An instance's row: a fenced instance shows as Fenced whatever its role; a primary has
/// no lag.
fn instance_row(i: &InstanceLine) -> Vec<Cell> {
    let role = if i.fenced {
        "Fenced".to_string()
    } else {
        i.role.clone().unwrap_or_else(|| "-".into())
    };
    let (status, sc) = if i.fenced {
        ("Fenced", RED)
    } else if i.node_leaving.is_some() {
        ("NodeLeaving", YELLOW)
    } else if i.ready {
        ("Ready", GREEN)
    } else {
        ("NotReady", YELLOW)
    };
    let lag = match (i.role.as_deref(), i.lag_bytes) {
        (Some("Primary"), _) => "-".to_string(),
        (_, Some(b)) => bytes(b),
        (_, None) => "-".into(),
    };
    let health = i.pool_health.clone().unwrap_or_else(|| "-".into());
    let hc = match health.as_str() {
        "ONLINE" => Some(GREEN),
        "-" => None,
        _ => Some(RED),
    };
    vec![
        (i.name.clone(), None),
        (
            role.clone(),
            (role == "Primary")
                .then_some(BOLD)
                .or(i.fenced.then_some(RED)),
        ),
        (status.to_string(), Some(sc)),
        (dash(i.node.as_ref()), None),
        (dash(i.zone.as_ref()), None),
        (dash(i.lsn.as_ref()), None),
        (lag, None),
        (dash(i.pool.as_ref()), None),
        (health, hc),
        (pool_capacity(i), None),
    ]
}

/// `used / size (percent)` of the instance's pool; the size alone while nothing is
/// reported as used.
fn pool_capacity(i: &InstanceLine) -> String {
    match (i.pool_allocated_bytes, i.pool_size_bytes) {
        (Some(a), Some(t)) if t > 0 => {
            format!("{} / {} ({}%)", bytes(a), bytes(t), a * 100 / t)
        }
        (None, Some(t)) => bytes(t),
        _ => "-".into(),
    }
}

/// pgBackRest: the repository, WAL archiving (last archived, last failed) and backups.
fn archiving_section(s: &Summary, p: &Paint, now: Timestamp) -> String {
    let mut out = heading(p, "Continuous archiving (pgBackRest)");
    let Some(a) = &s.archiving else {
        out += "  not configured (spec.backups.pgbackrest unset)\n";
        return out;
    };
    out += &kv("Repository", a.repository.clone());
    if let Some(k) = &a.condition {
        let colour = if k.status == c::TRUE { GREEN } else { RED };
        out += &kv(
            "Archiving",
            format!(
                "{} {} {}",
                p.code(colour, &k.status),
                k.reason,
                shorten(&k.message, 80)
            )
            .trim_end()
            .to_string(),
        );
    }
    let st = a.status.clone().unwrap_or_default();
    out += &kv(
        "Last archived",
        match &st.last_archived_wal {
            Some(w) => format!("{w} ({} ago)", ago(now, &st.last_archived_time)),
            None => "-".into(),
        },
    );
    if let Some(w) = &st.last_failed_wal {
        out += &kv(
            "Last failed",
            p.code(
                RED,
                &format!("{w} ({} ago)", ago(now, &st.last_failed_time)),
            ),
        );
    }
    out += &kv(
        "Backups",
        format!(
            "full {}, incremental {}",
            a.full_schedule.as_deref().unwrap_or("not scheduled"),
            a.incremental_schedule.as_deref().unwrap_or("not scheduled")
        ),
    );
    out += &kv("Last backup", last_backup_words(&a.last_backup, p, now));
    out
}

/// The last pgBackRest backup: label, type, how it ended and how long ago.
fn last_backup_words(b: &Option<BackupRef>, p: &Paint, now: Timestamp) -> String {
    let Some(b) = b else {
        return "none yet".into();
    };
    let outcome = if b.succeeded {
        p.code(GREEN, "succeeded")
    } else {
        p.code(RED, "failed")
    };
    format!(
        "{} {} {outcome} ({} ago)",
        b.label.as_deref().unwrap_or("-"),
        b.backup_type.as_deref().unwrap_or("-"),
        ago(now, &b.completion_time)
    )
}

/// EbsSnapshots: the schedule, the last completed one, a failure of the last, and the
/// newest few (with how many older ones there are).
fn snapshots_section(s: &Summary, p: &Paint, now: Timestamp) -> String {
    let mut out = heading(p, "Snapshots (EbsSnapshot)");
    let sn = &s.snapshots;
    out += &kv(
        "Schedule",
        match &sn.schedule {
            Some(cron) => match &sn.next_schedule_time {
                Some(t) => format!("{cron} (next {})", t.0),
                None => cron.clone(),
            },
            None => "none (take one with `kubectl pgml snapshot`)".into(),
        },
    );
    out += &kv(
        "Last completed",
        sn.last_completed.clone().unwrap_or_else(|| "none".into()),
    );
    if let Some(k) = &sn.condition
        && k.status != c::TRUE
    {
        out += &kv(
            "Last snapshot",
            p.code(RED, &format!("{}: {}", k.reason, shorten(&k.message, 240))),
        );
    }
    if sn.recent.is_empty() {
        out += "  no EbsSnapshot of this cluster\n";
        return out;
    }
    let rows: Vec<_> = sn.recent.iter().map(|x| snapshot_row(x, now)).collect();
    out += &table(
        p,
        &["NAME", "PHASE", "ORIGIN", "INSTANCE", "AGE", "MESSAGE"],
        &rows,
    );
    if sn.total > sn.recent.len() {
        out += &format!(
            "  … and {} older (kubectl get ebssnapshots -n {})\n",
            sn.total - sn.recent.len(),
            s.namespace
        );
    }
    out
}

/// A snapshot's row: its phase coloured, why it failed when it did.
fn snapshot_row(x: &SnapshotLine, now: Timestamp) -> Vec<Cell> {
    let phase = x.phase.clone().unwrap_or_else(|| "Pending".into());
    let pc = match phase.as_str() {
        "Completed" => GREEN,
        "Failed" => RED,
        _ => YELLOW,
    };
    vec![
        (x.name.clone(), None),
        (phase, Some(pc)),
        (x.origin.clone(), None),
        (dash(x.instance.as_ref()), None),
        (ago(now, &x.taken), None),
        (
            x.message
                .as_deref()
                .map(|m| shorten(m, 80))
                .unwrap_or_default(),
            None,
        ),
    ]
}

fn warnings_section(s: &Summary, p: &Paint, now: Timestamp) -> String {
    let mut out = heading(p, "Recent warnings");
    if s.warnings.is_empty() {
        out += "  none\n";
    } else {
        let rows: Vec<_> = s.warnings.iter().map(|e| warning_row(e, now)).collect();
        out += &table(p, &["AGE", "REASON", "MESSAGE"], &rows);
    }
    out
}

/// A Warning event's row: how long ago, why, and how many times when more than once.
fn warning_row(e: &EventLine, now: Timestamp) -> Vec<Cell> {
    let count = if e.count > 1 {
        format!(" (x{})", e.count)
    } else {
        String::new()
    };
    vec![
        (ago(now, &e.last_seen), None),
        (e.reason.clone(), Some(YELLOW)),
        (format!("{}{count}", shorten(&e.message, 110)), None),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2026-11-27T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn cluster() -> PgmlCluster {
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
            "metadata": {"name": "main", "namespace": "db", "generation": 4},
            "spec": {
                "instances": 2, "image": "ghcr.io/postgresml/postgresml:2.10.0",
                "storage": {"zfs": {"template": {"volumes": {"count": 2, "sizeGiB": 100}}}},
                "backups": {
                    "pgbackrest": {"s3": {"bucket": "backups", "region": "us-east-1"},
                                   "schedule": {"full": "0 2 * * 0"}},
                    "snapshots": {"schedule": "0 */6 * * *"}
                }
            },
            "status": {
                "observedGeneration": 3, "phase": "Degraded",
                "currentPrimary": "main-1", "targetPrimary": "main-1", "readyInstances": 1,
                "conditions": [
                    {"type": "SpecValid", "status": "True", "reason": "Valid", "message": "",
                     "lastTransitionTime": NOW, "observedGeneration": 3},
                    {"type": "Ready", "status": "False", "reason": "InstancesNotReady",
                     "message": "main-2 is not streaming", "lastTransitionTime": NOW,
                     "observedGeneration": 4},
                    {"type": "ContinuousArchiving", "status": "True", "reason": "Archiving",
                     "message": "", "lastTransitionTime": NOW}
                ],
                "instances": [
                    {"name": "main-1", "node": "n1", "availabilityZone": "us-east-1a",
                     "pool": "main-1", "role": "Primary", "ready": true, "lsn": "0/3000060",
                     "poolHealth": "ONLINE"},
                    {"name": "main-2", "node": "n2", "availabilityZone": "us-east-1b",
                     "pool": "main-2", "role": "Replica", "ready": false, "lsn": "0/3000000",
                     "lagBytes": 96, "seededFrom": "main-2-seed", "poolHealth": "DEGRADED",
                     "nodeLeaving": "node n2 is cordoned"}
                ],
                "archiving": {"lastArchivedWal": "000000010000000000000003",
                              "lastArchivedTime": "2026-11-27T11:59:00Z"},
                "lastBackup": {"label": "20261127-020000F", "type": "full",
                               "completionTime": "2026-11-27T02:10:00Z", "succeeded": true},
                "lastSnapshot": {"name": "main-202611271200"},
                "pgmlVersion": "2.10.0",
                "nextScheduleTime": "2026-11-27T18:00:00Z"
            }
        }))
        .unwrap()
    }

    fn pool(name: &str, health: &str) -> ZfsPool {
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": name, "namespace": "db"},
            "spec": {"nodeName": "n1", "volumes": {"count": 2, "sizeGiB": 100}},
            "status": {"phase": "Online", "health": health,
                       "sizeBytes": 200i64 << 30, "allocatedBytes": 50i64 << 30,
                       "freeBytes": 150i64 << 30}
        }))
        .unwrap()
    }

    fn snapshot(
        name: &str,
        cluster: &str,
        phase: &str,
        at: &str,
        labels: serde_json::Value,
    ) -> EbsSnapshot {
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
            "metadata": {"name": name, "namespace": "db", "labels": labels, "creationTimestamp": at},
            "spec": {"source": {"cluster": {"name": cluster}}},
            "status": {"phase": phase, "captureTime": at, "zfsPool": "main-2",
                       "conditions": [{"type": "Ready",
                                       "status": if phase == "Completed" {"True"} else {"False"},
                                       "reason": if phase == "Failed" {"SnapshotError"} else {"Completed"},
                                       "message": if phase == "Failed" {"AWS said error"} else {""},
                                       "lastTransitionTime": at}]}
        }))
        .unwrap()
    }

    fn event(name: &str, kind: &str, type_: &str, reason: &str, at: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{name}.{reason}"), "namespace": "db"},
            "involvedObject": {"kind": kind, "name": name},
            "type": type_, "reason": reason, "message": format!("{reason} happened"),
            "lastTimestamp": at, "count": 3
        }))
        .unwrap()
    }

    fn inputs() -> (Vec<ZfsPool>, Vec<EbsSnapshot>, Vec<Event>) {
        let pools = vec![
            pool("main-1", "ONLINE"),
            pool("main-2", "DEGRADED"),
            pool("other-1", "FAULTED"),
        ];
        let snaps = vec![
            snapshot(
                "main-202611271200",
                "main",
                "Completed",
                "2026-11-27T11:00:00Z",
                json!({"pgml.io/scheduled-by": "PgmlCluster.main"}),
            ),
            snapshot(
                "by-hand",
                "main",
                "Failed",
                "2026-11-27T11:30:00Z",
                json!({}),
            ),
            snapshot(
                "main-2-seed",
                "main",
                "Capturing",
                "2026-11-27T11:50:00Z",
                json!({"pgml.io/cluster": "main"}),
            ),
            snapshot(
                "other-snap",
                "other",
                "Completed",
                "2026-11-27T11:55:00Z",
                json!({}),
            ),
        ];
        let events = vec![
            event(
                "main",
                "PgmlCluster",
                "Warning",
                "PoolDegraded",
                "2026-11-27T11:58:00Z",
            ),
            event(
                "main",
                "PgmlCluster",
                "Normal",
                "Created",
                "2026-11-27T11:59:00Z",
            ),
            event(
                "other",
                "PgmlCluster",
                "Warning",
                "NotOurs",
                "2026-11-27T11:59:00Z",
            ),
            event(
                "main",
                "ZfsPool",
                "Warning",
                "PoolWarning",
                "2026-11-27T11:59:00Z",
            ),
        ];
        (pools, snaps, events)
    }

    #[test]
    fn summary_takes_only_this_clusters_objects_newest_first() {
        let (pools, snaps, events) = inputs();
        let s = summarize(&cluster(), &pools, &snaps, &events);
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!((s.generation, s.observed_generation), (Some(4), Some(3)));
        assert_eq!(s.conditions[0].type_, "Ready", "Ready first");
        assert!(
            s.conditions
                .iter()
                .find(|k| k.type_ == "SpecValid")
                .unwrap()
                .stale
        );
        assert!(!s.conditions[0].stale);
        assert_eq!(s.instances.len(), 2);
        assert_eq!(s.instances[1].pool_health.as_deref(), Some("DEGRADED"));
        assert_eq!(
            s.instances[1].node_leaving.as_deref(),
            Some("node n2 is cordoned")
        );
        assert_eq!(instance_row(&s.instances[1])[2].0, "NodeLeaving");
        assert_eq!(instance_row(&s.instances[0])[2].0, "Ready");
        assert_eq!(s.instances[0].pool_size_bytes, Some(200 << 30));
        let names: Vec<_> = s.snapshots.recent.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["main-2-seed", "by-hand", "main-202611271200"]);
        let origins: Vec<_> = s
            .snapshots
            .recent
            .iter()
            .map(|x| x.origin.as_str())
            .collect();
        assert_eq!(origins, ["seed", "manual", "scheduled"]);
        assert_eq!(
            s.snapshots.recent[1].message.as_deref(),
            Some("SnapshotError: AWS said error")
        );
        assert_eq!(s.warnings.len(), 1);
        assert_eq!(s.warnings[0].reason, "PoolDegraded");
        assert_eq!(s.warnings[0].count, 3);
        let a = s.archiving.as_ref().unwrap();
        assert_eq!(a.repository, "s3://backups/pgbackrest/db/main");
        assert_eq!(a.condition.as_ref().unwrap().reason, "Archiving");
    }

    #[test]
    fn text_has_every_section_and_no_colour_off_a_terminal() {
        let (pools, snaps, events) = inputs();
        let s = summarize(&cluster(), &pools, &snaps, &events);
        let text = render(&s, now(), false);
        eprintln!("{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("PgmlCluster db/main"), "{text}");
        for section in [
            "Conditions",
            "Instances",
            "Continuous archiving (pgBackRest)",
            "Snapshots (EbsSnapshot)",
            "Recent warnings",
        ] {
            assert!(text.lines().any(|l| l == section), "{section}: {text}");
        }
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("Phase:"), ["Phase:", "Degraded"]);
        assert_eq!(line("pgml:"), ["pgml:", "2.10.0"]);
        assert!(line("Instances:").contains(&"1/2"));
        assert!(line("Generation:").contains(&"4"));
        assert!(
            text.contains("observed 3: the operator has not caught up"),
            "{text}"
        );
        let m1 = line("main-1  ");
        assert_eq!(&m1[..4], ["main-1", "Primary", "Ready", "n1"]);
        assert!(
            m1.contains(&"ONLINE") && m1.contains(&"0/3000060"),
            "{m1:?}"
        );
        assert!(m1.contains(&"(25%)"), "{m1:?}");
        let m2 = line("main-2  Replica");
        assert!(
            m2.contains(&"NodeLeaving") && m2.contains(&"DEGRADED"),
            "{m2:?}"
        );
        assert!(m2.contains(&"96") && m2.contains(&"B"), "lag: {m2:?}");
        assert!(text.contains("main-2 was seeded from main-2-seed"));
        assert_eq!(
            line("InstancesNotReady")[..3],
            ["Ready", "False", "InstancesNotReady"]
        );
        assert!(line("Last archived:").contains(&"000000010000000000000003"));
        assert!(line("Last backup:").contains(&"20261127-020000F"));
        assert!(line("Last backup:").contains(&"succeeded"));
        assert!(line("Schedule:").contains(&"2026-11-27T18:00:00Z)"));
        let by_hand = line("by-hand");
        assert_eq!(
            &by_hand[..5],
            ["by-hand", "Failed", "manual", "main-2", "30m"]
        );
        assert!(by_hand.contains(&"error"), "{by_hand:?}");
        assert_eq!(
            &line("main-202611271200  ")[..3],
            ["main-202611271200", "Completed", "scheduled"]
        );
        assert!(
            !text.contains("other-snap")
                && !text.contains("NotOurs")
                && !text.contains("PoolWarning")
        );
        assert!(line("PoolDegraded").contains(&"(x3)"));
    }

    #[test]
    fn colours_only_when_asked() {
        let (pools, snaps, events) = inputs();
        let s = summarize(&cluster(), &pools, &snaps, &events);
        let text = render(&s, now(), true);
        assert!(text.contains("\x1b[32mONLINE\x1b[0m"), "{text}");
        assert!(text.contains("\x1b[31mDEGRADED\x1b[0m"), "{text}");
    }

    #[test]
    fn a_new_cluster_without_status_or_backups_says_so() {
        let mut c = cluster();
        c.status = None;
        c.spec.backups = Default::default();
        let s = summarize(&c, &[], &[], &[]);
        let text = render(&s, now(), false);
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().eq(["Phase:", "Unknown"])),
            "{text}"
        );
        assert!(text.contains("none placed yet"), "{text}");
        assert!(
            text.contains("not configured (spec.backups.pgbackrest unset)"),
            "{text}"
        );
        assert!(text.contains("no EbsSnapshot of this cluster"), "{text}");
        assert!(text.contains("(not observed yet)"), "{text}");
    }

    #[test]
    fn pvc_storage_shows_its_claims_without_pool_health() {
        let mut c = cluster();
        c.spec.storage = serde_json::from_value(
            json!({"persistentVolumeClaim": {"size": "100Gi", "storageClassName": "gp3-ext4"}}),
        )
        .unwrap();
        for i in &mut c.status.as_mut().unwrap().instances {
            i.pool_health = None;
        }
        let s = summarize(&c, &[], &[], &[]);
        assert_eq!(s.storage_mode, "persistentVolumeClaim");
        let text = render(&s, now(), false);
        assert!(
            text.contains("PVC per instance: 100Gi (gp3-ext4)"),
            "{text}"
        );
        let m1: Vec<_> = text
            .lines()
            .find(|l| l.trim_start().starts_with("main-1 "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            m1[m1.len() - 3..],
            ["main-1", "-", "-"],
            "pool, health, size: {m1:?}"
        );
    }

    #[test]
    fn json_names_fields_in_camel_case() {
        let (pools, snaps, events) = inputs();
        let s = summarize(&cluster(), &pools, &snaps, &events);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["currentPrimary"], "main-1");
        assert_eq!(v["instances"][1]["lagBytes"], 96);
        assert_eq!(v["instances"][0]["poolHealth"], "ONLINE");
        assert_eq!(v["snapshots"]["recent"][0]["origin"], "seed");
        assert_eq!(v["conditions"][0]["type"], "Ready");
        assert_eq!(v["archiving"]["lastBackup"]["type"], "full");
    }

    #[test]
    fn conditions_users_look_at_come_first_and_the_others_keep_their_order() {
        let k = |t: &str, observed: Option<i64>| -> Condition {
            serde_json::from_value(json!({"type": t, "status": "True", "reason": "R",
                "message": "", "lastTransitionTime": NOW, "observedGeneration": observed}))
            .unwrap()
        };
        let lines = ordered_conditions(
            &[
                k("Zeta", None),
                k("SpecValid", Some(1)),
                k("Alpha", Some(2)),
                k("Ready", Some(2)),
            ],
            Some(2),
        );
        let types: Vec<_> = lines.iter().map(|l| l.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "SpecValid", "Zeta", "Alpha"]);
        let stale: Vec<_> = lines.iter().map(|l| l.stale).collect();
        assert_eq!(stale, [false, true, false, false]);
    }

    #[test]
    fn storage_set_to_neither_is_said_so() {
        let w = storage_words(&serde_json::from_value(json!({})).unwrap());
        assert_eq!(
            (w.mode.as_str(), w.shape.as_str()),
            ("none", "no storage set")
        );
    }

    #[test]
    fn primary_says_a_switchover_under_way() {
        let (pools, snaps, events) = inputs();
        let mut s = summarize(&cluster(), &pools, &snaps, &events);
        assert_eq!(primary_words(&s), "main-1");
        s.target_primary = Some("main-2".into());
        assert_eq!(primary_words(&s), "main-1 (switching to main-2)");
        s.current_primary = None;
        assert_eq!(primary_words(&s), "none yet (target main-2)");
        s.target_primary = None;
        assert_eq!(primary_words(&s), "none");
    }

    #[test]
    fn pool_capacity_is_a_share_only_of_a_known_size() {
        let (pools, snaps, events) = inputs();
        let mut i = summarize(&cluster(), &pools, &snaps, &events)
            .instances
            .remove(0);
        assert_eq!(pool_capacity(&i), "50.0 GiB / 200.0 GiB (25%)");
        i.pool_size_bytes = Some(0);
        assert_eq!(pool_capacity(&i), "-", "no division by a size of 0");
        i.pool_allocated_bytes = None;
        i.pool_size_bytes = Some(1 << 30);
        assert_eq!(pool_capacity(&i), bytes(1 << 30));
    }
}
