//! Checks the CRD schema cannot make: they need another object (the snapshot a pool restores
//! from, the node's instance type) or more than a CEL rule should do (a full cron parse,
//! ZFS property values).
//!
//! Where they are enforced: the operator runs them at the start of every reconcile, before it
//! touches AWS or a node. A failure sets the `SpecValid` condition to False with the error's
//! [`SpecError::reason`], emits one Warning event, and the object waits for a spec change; no
//! admission webhook is involved, so the API works without one.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::cluster::PgmlCluster;
use crate::ebs::{EbsVolumes, limits};
use crate::snapshot::{EbsSnapshot, SnapshotPhase};
use crate::zfspool::{
    Layout, ZFS_NATIVE_PROPERTIES, ZFS_OFF_ONLY_PROPERTIES, ZfsPoolSpec, ZfsPoolTemplate,
};

/// A spec that is well-formed but cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("{field}: {message}")]
    InvalidSchedule { field: String, message: String },

    #[error("ZFS property {name}: {message}")]
    InvalidZfsProperty { name: String, message: String },

    #[error("postgresql.parameters.{name}: {message}")]
    InvalidParameter { name: String, message: String },

    #[error("postgresql.pgHba[{index}]: {message}")]
    InvalidPgHba { index: usize, message: String },

    #[error(
        "{wanted} volumes do not fit: instance type {instance_type} can attach {available} more EBS volumes"
    )]
    TooManyVolumes {
        wanted: i32,
        available: i32,
        instance_type: String,
    },

    #[error("restoreFrom: EbsSnapshot {name} is {phase}, not Completed")]
    SnapshotNotCompleted { name: String, phase: String },

    #[error(
        "restoreFrom: EbsSnapshot {name} holds {snapshot} volumes but the pool asks for {pool}"
    )]
    RestoreVolumeCount {
        name: String,
        snapshot: i32,
        pool: i32,
    },

    #[error("restoreFrom: EbsSnapshot {name} is of a {snapshot} pool but this pool is {pool}")]
    RestoreLayout {
        name: String,
        snapshot: String,
        pool: String,
    },

    #[error(
        "restoreFrom: volumes of {pool} GiB are smaller than member {member}'s snapshot of {snapshot} GiB"
    )]
    RestoreTooSmall {
        member: i32,
        snapshot: i64,
        pool: i64,
    },

    #[error("primary: {name} is not an instance of this cluster (instances: {known})")]
    UnknownPrimary { name: String, known: String },

    #[error(
        "consistency Fsfreeze: PgmlCluster {cluster} keeps its data on ZFS, which has no fsfreeze"
    )]
    FsfreezeOnZfs { cluster: String },
}

impl SpecError {
    /// CamelCase reason for the `SpecValid` condition and the Warning event.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::InvalidSchedule { .. } => "InvalidSchedule",
            SpecError::InvalidZfsProperty { .. } => "InvalidZfsProperty",
            SpecError::InvalidParameter { .. } => "InvalidParameter",
            SpecError::InvalidPgHba { .. } => "InvalidPgHba",
            SpecError::TooManyVolumes { .. } => "TooManyVolumes",
            SpecError::SnapshotNotCompleted { .. } => "SnapshotNotCompleted",
            SpecError::RestoreVolumeCount { .. }
            | SpecError::RestoreLayout { .. }
            | SpecError::RestoreTooSmall { .. } => "RestoreMismatch",
            SpecError::UnknownPrimary { .. } => "UnknownPrimary",
            SpecError::FsfreezeOnZfs { .. } => "FsfreezeOnZfs",
        }
    }

    /// Whether waiting may fix it without a spec change (the snapshot completing).
    pub fn may_resolve_by_itself(&self) -> bool {
        matches!(self, SpecError::SnapshotNotCompleted { .. })
    }
}

/// ZFS properties: native names from the allowlist admission enforces
/// ([`ZFS_NATIVE_PROPERTIES`]), each with a check of its value. User properties
/// (`module:name`) are passed through.
pub fn check_zfs_properties(props: &BTreeMap<String, String>) -> Vec<SpecError> {
    let mut errors = Vec::new();
    for (name, value) in props {
        if name.contains(':') {
            continue;
        }
        let check = if ZFS_NATIVE_PROPERTIES.contains(&name.as_str()) {
            // Every allowlisted name has a value check (a unit test keeps it so).
            zfs_value_check(name, value).unwrap_or(Ok(()))
        } else {
            Err(format!(
                "{name} is not a property the agent sets (allowed: {}); use a user property (module:{name}) for metadata",
                ZFS_NATIVE_PROPERTIES.join(", ")
            ))
        };
        if let Err(message) = check {
            errors.push(SpecError::InvalidZfsProperty {
                name: name.clone(),
                message,
            });
        }
    }
    errors
}

/// The value check of a native property; `None` for a name it does not know.
fn zfs_value_check(name: &str, value: &str) -> Option<Result<(), String>> {
    if ZFS_OFF_ONLY_PROPERTIES.contains(&name) {
        return Some(one_of(value, &["off"]));
    }
    Some(match name {
        "recordsize" => check_record_size(value),
        "compression" => one_of(
            value,
            &[
                "on",
                "off",
                "lz4",
                "lzjb",
                "gzip",
                "gzip-1",
                "gzip-6",
                "gzip-9",
                "zle",
                "zstd",
                "zstd-fast",
            ],
        ),
        "atime" | "relatime" => one_of(value, &["on", "off"]),
        "xattr" => one_of(value, &["on", "off", "sa", "dir"]),
        "logbias" => one_of(value, &["latency", "throughput"]),
        "sync" => one_of(value, &["standard", "always", "disabled"]),
        "primarycache" | "secondarycache" => one_of(value, &["all", "none", "metadata"]),
        "redundant_metadata" => one_of(value, &["all", "most", "some", "none"]),
        "dnodesize" => one_of(value, &["legacy", "auto", "1k", "2k", "4k", "8k", "16k"]),
        "checksum" => one_of(
            value,
            &[
                "on",
                "off",
                "fletcher2",
                "fletcher4",
                "sha256",
                "sha512",
                "skein",
                "edonr",
                "blake3",
            ],
        ),
        "copies" => one_of(value, &["1", "2", "3"]),
        "quota" | "refquota" | "reservation" | "refreservation" => check_size_or_none(value),
        _ => return None,
    })
}

/// Checks PostgreSQL parameters and pg_hba lines as admission does, for objects admitted
/// before those rules: no control character in a value (refused, not rewritten), no `trust`
/// method and no control character but tab in a pg_hba line.
pub fn check_postgresql(config: &crate::cluster::PostgresConfig) -> Vec<SpecError> {
    let mut errors = Vec::new();
    for (name, value) in &config.parameters {
        if value.chars().any(|c| c.is_ascii_control()) {
            errors.push(SpecError::InvalidParameter {
                name: name.clone(),
                message: "the value contains a control character (newline, tab, NUL…)".into(),
            });
        }
    }
    for (index, line) in config.pg_hba.iter().enumerate() {
        if line.chars().any(|c| c.is_ascii_control() && c != '\t') {
            errors.push(SpecError::InvalidPgHba {
                index,
                message: "the line contains a control character other than tab".into(),
            });
        }
        if let Some(method) = pg_hba_refused_method(line) {
            errors.push(SpecError::InvalidPgHba {
                index,
                message: format!(
                    "the {method} method is refused: every connection must authenticate"
                ),
            });
        }
    }
    errors
}

/// The refused method ([`crate::cluster::PG_HBA_REFUSED_METHODS`]) a pg_hba line names as
/// one of its fields, if any: what admission's rule looks for, the same way (quotes dropped
/// as PostgreSQL drops them, fields split on its blanks and on commas, any ASCII case).
pub fn pg_hba_refused_method(line: &str) -> Option<&'static str> {
    let unquoted = line.replace('"', "");
    unquoted
        .split([' ', '\t', '\r', '\n', ','])
        .find_map(|field| {
            crate::cluster::PG_HBA_REFUSED_METHODS
                .iter()
                .find(|m| field.eq_ignore_ascii_case(m))
                .copied()
        })
}

fn one_of(value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!("{value} is not one of {}", allowed.join(", ")))
    }
}

fn parse_size(value: &str) -> Option<u64> {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &value[digits.len()..];
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn check_record_size(value: &str) -> Result<(), String> {
    match parse_size(value) {
        Some(n) if n.is_power_of_two() && (512..=1 << 20).contains(&n) => Ok(()),
        _ => Err(format!(
            "{value} must be a power of two from 512 to 1M (e.g. 32K)"
        )),
    }
}

fn check_size_or_none(value: &str) -> Result<(), String> {
    if value == "none" || parse_size(value).is_some() {
        Ok(())
    } else {
        Err(format!("{value} must be a size such as 100G, or none"))
    }
}

/// Checks a pool template's ZFS properties (pool-wide and per dataset).
pub fn check_pool_template(template: &ZfsPoolTemplate) -> Vec<SpecError> {
    let mut errors = check_zfs_properties(&template.filesystem_properties);
    for dataset in &template.datasets {
        errors.extend(check_zfs_properties(&dataset.properties));
    }
    errors
}

/// Checks that `volumes` fit on an instance with `free_attachments` EBS attachment slots
/// left (from the instance type's limit minus what is attached already).
pub fn check_attachments(
    volumes: &EbsVolumes,
    free_attachments: i32,
    instance_type: &str,
) -> Result<(), SpecError> {
    if volumes.count > free_attachments {
        return Err(SpecError::TooManyVolumes {
            wanted: volumes.count,
            available: free_attachments,
            instance_type: instance_type.to_string(),
        });
    }
    Ok(())
}

/// Checks that a pool can be restored from `snapshot`: completed, same layout and member
/// count, and volumes at least as large as each member's snapshot.
pub fn check_restore(pool: &ZfsPoolSpec, snapshot: &EbsSnapshot) -> Result<(), SpecError> {
    let name = snapshot.metadata.name.clone().unwrap_or_default();
    let status = snapshot.status.clone().unwrap_or_default();
    if status.phase != Some(SnapshotPhase::Completed) {
        let phase = status
            .phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "not started".into());
        return Err(SpecError::SnapshotNotCompleted { name, phase });
    }
    let layout = pool.template.layout.as_str();
    if let Some(snap_layout) = status.layout.as_deref()
        && snap_layout != layout
    {
        return Err(SpecError::RestoreLayout {
            name,
            snapshot: snap_layout.into(),
            pool: layout.into(),
        });
    }
    let members = status.snapshots.len() as i32;
    if members != pool.template.volumes.count {
        return Err(SpecError::RestoreVolumeCount {
            name,
            snapshot: members,
            pool: pool.template.volumes.count,
        });
    }
    for member in &status.snapshots {
        if let Some(size) = member.size_gib
            && size > pool.template.volumes.size_gib
        {
            return Err(SpecError::RestoreTooSmall {
                member: member.member_index,
                snapshot: size,
                pool: pool.template.volumes.size_gib,
            });
        }
    }
    Ok(())
}

/// Checks a PgmlCluster: schedules parse as cron, parameters and pg_hba lines are safe to
/// write, pool properties are known, and a switchover target names an instance the status
/// lists.
pub fn check_cluster(cluster: &PgmlCluster) -> Vec<SpecError> {
    let mut errors = Vec::new();
    let spec = &cluster.spec;
    if let Some(pgbr) = &spec.backups.pgbackrest {
        for (field, expr) in [
            ("backups.pgbackrest.schedule.full", &pgbr.schedule.full),
            (
                "backups.pgbackrest.schedule.incremental",
                &pgbr.schedule.incremental,
            ),
        ] {
            if let Some(expr) = expr
                && let Err(message) = check_cron(expr)
            {
                errors.push(SpecError::InvalidSchedule {
                    field: field.into(),
                    message,
                });
            }
        }
    }
    if let Some(snapshots) = &spec.backups.snapshots
        && let Some(expr) = &snapshots.scheduled.schedule
        && let Err(message) = check_cron(expr)
    {
        errors.push(SpecError::InvalidSchedule {
            field: "backups.snapshots.schedule".into(),
            message,
        });
    }
    errors.extend(check_postgresql(&spec.postgresql));
    if let Some(zfs) = &spec.storage.zfs {
        errors.extend(check_pool_template(&zfs.template));
    }
    if let (Some(primary), Some(status)) = (&spec.primary, &cluster.status)
        && !status.instances.is_empty()
        && !status.instances.iter().any(|i| &i.name == primary)
    {
        let known = status
            .instances
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        errors.push(SpecError::UnknownPrimary {
            name: primary.clone(),
            known,
        });
    }
    errors
}

/// The most a pool's volumes deliver, capped by the instance type's EBS limits when known.
pub fn performance_ceiling(
    volumes: &EbsVolumes,
    layout: Layout,
    instance_iops: Option<i64>,
    instance_throughput_mibps: Option<i64>,
) -> crate::zfspool::PerformanceCeiling {
    // Reads touch every member; count all of them. (raidz1 writes pay parity, which the
    // status documents rather than models.)
    let _ = layout;
    let n = i64::from(volumes.count);
    let volume_iops = n * volumes.effective_iops();
    let volume_tp = n * volumes.effective_throughput_mibps();
    let iops = instance_iops.map_or(volume_iops, |cap| cap.min(volume_iops));
    let tp = instance_throughput_mibps.map_or(volume_tp, |cap| cap.min(volume_tp));
    let limited = iops < volume_iops || tp < volume_tp;
    crate::zfspool::PerformanceCeiling {
        volume_iops,
        volume_throughput_mibps: volume_tp,
        instance_iops,
        instance_throughput_mibps,
        iops,
        throughput_mibps: tp,
        limited_by: if limited { "Instance" } else { "Volumes" }.to_string(),
    }
}

/// Parses a 5-field cron expression (or an `@daily`-style macro) and checks every value is in
/// range and that it can fire. The schema only checks the shape. The scheduler evaluates
/// schedules with the same parser ([`crate::cron::Cron`]), so what passes here is exactly
/// what runs.
pub fn check_cron(expr: &str) -> Result<(), String> {
    crate::cron::Cron::parse(expr).map(|_| ())
}

/// Checks a ZfsPool's snapshot schedule (`spec.snapshots.schedule`).
pub fn check_pool_schedule(pool: &ZfsPoolSpec) -> Vec<SpecError> {
    pool.snapshots
        .as_ref()
        .and_then(|s| s.schedule.as_deref())
        .and_then(|expr| check_cron(expr).err())
        .map(|message| SpecError::InvalidSchedule {
            field: "snapshots.schedule".into(),
            message,
        })
        .into_iter()
        .collect()
}

/// The AWS per-type size limits, for callers that want them without the schema.
pub fn size_limits(volume_type: crate::ebs::VolumeType) -> (i64, i64) {
    match volume_type {
        crate::ebs::VolumeType::Gp3 => (limits::GP3_MIN_GIB, limits::GP3_MAX_GIB),
        crate::ebs::VolumeType::Io2 => (limits::IO2_MIN_GIB, limits::IO2_MAX_GIB),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{EbsSnapshotStatus, MemberSnapshot};
    use crate::zfspool::ZfsPoolSpec;

    fn pool(yaml: &str) -> ZfsPoolSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn cron_accepts_common_schedules() {
        for ok in [
            "0 3 * * *",
            "*/15 * * * *",
            "0 2 * * 0",
            "0 2 * * 1-6",
            "0 0 1 JAN,JUL *",
            "30 4 * * MON-FRI",
            "@daily",
            "@hourly",
            "0 */6 * * *",
            "0 0 * * 7",
        ] {
            assert_eq!(check_cron(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn cron_rejects_out_of_range_and_malformed() {
        for (bad, why) in [
            ("60 * * * *", "60 is outside 0-59"),
            ("0 24 * * *", "24 is outside 0-23"),
            ("0 0 0 * *", "0 is outside 1-31"),
            ("0 0 * 13 *", "13 is outside 1-12"),
            ("0 0 * * 8", "8 is outside 0-7"),
            ("*/0 * * * *", "step 0"),
            ("0 5-2 * * *", "runs backwards"),
            ("0 0 * *", "has 4 fields"),
            ("@sometimes", "not a known schedule macro"),
            ("0 0 * * FUNDAY", "FUNDAY is not a number"),
        ] {
            let err = check_cron(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn pool_schedule_is_checked() {
        let ok = pool("nodeName: n\nvolumes: {sizeGiB: 10}\nsnapshots: {schedule: '*/5 * * * *'}");
        assert_eq!(check_pool_schedule(&ok), vec![]);
        let none = pool("nodeName: n\nvolumes: {sizeGiB: 10}");
        assert_eq!(check_pool_schedule(&none), vec![]);
        let bad = pool("nodeName: n\nvolumes: {sizeGiB: 10}\nsnapshots: {schedule: '0 0 31 2 *'}");
        let errors = check_pool_schedule(&bad);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].reason(), "InvalidSchedule");
        assert!(
            errors[0].to_string().starts_with("snapshots.schedule: "),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn zfs_properties_are_checked() {
        let props: BTreeMap<String, String> = [
            ("recordsize", "32K"),
            ("compression", "lz4"),
            ("atime", "off"),
            ("com.example:owner", "dba"),
            ("quota", "none"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        assert_eq!(check_zfs_properties(&props), vec![]);

        let bad: BTreeMap<String, String> = [
            ("recordsize", "33K"),
            ("logbias", "fast"),
            ("recordsze", "32K"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let errors = check_zfs_properties(&bad);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().all(|e| e.reason() == "InvalidZfsProperty"));
        assert!(errors[0].to_string().contains("logbias"), "{}", errors[0]);
    }

    #[test]
    fn zfs_native_properties_are_the_allowlist() {
        // Every name admission allows has a value check here…
        for name in ZFS_NATIVE_PROPERTIES {
            assert!(
                zfs_value_check(name, "x").is_some(),
                "{name} is allowed but its value is not checked"
            );
        }
        // …and what it refuses, the operator refuses too (objects admitted before the list).
        for (name, value) in [
            ("sharenfs", "on"),
            ("sharesmb", "on"),
            ("devices", "off"),
            ("keylocation", "prompt"),
            ("encryption", "on"),
            ("readonly", "on"),
            ("mountpoint", "/x"),
            ("setuid", "on"),
            ("exec", "on"),
        ] {
            let props = [(name.to_string(), value.to_string())].into();
            assert_eq!(check_zfs_properties(&props).len(), 1, "{name}={value}");
        }
        let hardened = [("setuid", "off"), ("exec", "off")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(check_zfs_properties(&hardened), vec![]);
    }

    #[test]
    fn postgresql_values_and_pg_hba_are_refused_not_rewritten() {
        let config = crate::cluster::PostgresConfig {
            parameters: [
                ("work_mem", "64MB\narchive_command = x"),
                ("shared_buffers", "8GB"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            pg_hba: vec![
                "host all all 10.0.0.0/8 scram-sha-256".into(),
                "host all all 10.0.0.0/8 \"TRUST\"".into(),
                "local\tall\tall\tpeer".into(),
                "local all all peer\0".into(),
            ],
        };
        let errors: Vec<String> = check_postgresql(&config)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "postgresql.parameters.work_mem: the value contains a control character (newline, tab, NUL…)",
                "postgresql.pgHba[1]: the trust method is refused: every connection must authenticate",
                "postgresql.pgHba[3]: the line contains a control character other than tab",
            ]
        );
        assert_eq!(
            pg_hba_refused_method("host all all 10.0.0.0/8 t\"rus\"t"),
            Some("trust")
        );
        assert_eq!(
            pg_hba_refused_method("host all trusted 10.0.0.0/8 md5"),
            None
        );
    }

    #[test]
    fn default_template_properties_are_valid() {
        let p = pool("nodeName: n\nvolumes: {sizeGiB: 10}");
        assert_eq!(check_pool_template(&p.template), vec![]);
    }

    #[test]
    fn attachments_limit_the_volume_count() {
        let p = pool("nodeName: n\nvolumes: {count: 8, sizeGiB: 10}");
        assert_eq!(
            check_attachments(&p.template.volumes, 8, "m7i.large"),
            Ok(())
        );
        let err = check_attachments(&p.template.volumes, 5, "m7i.large").unwrap_err();
        assert_eq!(
            err.to_string(),
            "8 volumes do not fit: instance type m7i.large can attach 5 more EBS volumes"
        );
    }

    fn snapshot(phase: Option<SnapshotPhase>, layout: &str, sizes: &[i64]) -> EbsSnapshot {
        let mut s = EbsSnapshot::new(
            "nightly",
            serde_yaml::from_str("source: {zfsPool: {name: p}}").unwrap(),
        );
        s.status = Some(EbsSnapshotStatus {
            phase,
            layout: Some(layout.into()),
            snapshots: sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| MemberSnapshot {
                    member_index: i as i32,
                    size_gib: Some(size),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        s
    }

    #[test]
    fn restore_needs_a_completed_matching_snapshot() {
        let p = pool("nodeName: n\nlayout: raidz1\nvolumes: {count: 3, sizeGiB: 100}");
        let ok = snapshot(Some(SnapshotPhase::Completed), "raidz1", &[100, 100, 100]);
        assert_eq!(check_restore(&p, &ok), Ok(()));

        let pending = snapshot(Some(SnapshotPhase::Finalizing), "raidz1", &[100, 100, 100]);
        let err = check_restore(&p, &pending).unwrap_err();
        assert!(err.may_resolve_by_itself());
        assert_eq!(
            err.to_string(),
            "restoreFrom: EbsSnapshot nightly is Finalizing, not Completed"
        );

        let raid0 = snapshot(Some(SnapshotPhase::Completed), "raid0", &[100, 100, 100]);
        assert!(matches!(
            check_restore(&p, &raid0),
            Err(SpecError::RestoreLayout { .. })
        ));

        let four = snapshot(
            Some(SnapshotPhase::Completed),
            "raidz1",
            &[100, 100, 100, 100],
        );
        assert!(matches!(
            check_restore(&p, &four),
            Err(SpecError::RestoreVolumeCount {
                snapshot: 4,
                pool: 3,
                ..
            })
        ));

        let bigger = snapshot(Some(SnapshotPhase::Completed), "raidz1", &[100, 200, 100]);
        let err = check_restore(&p, &bigger).unwrap_err();
        assert_eq!(err.reason(), "RestoreMismatch");
        assert!(matches!(
            err,
            SpecError::RestoreTooSmall {
                member: 1,
                snapshot: 200,
                pool: 100
            }
        ));
    }

    #[test]
    fn cluster_checks_schedules_and_switchover_target() {
        let mut c: PgmlCluster = serde_yaml::from_str(
            "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {name: main}\nspec:\n  storage: {persistentVolumeClaim: {size: 10Gi}}\n  primary: main-9\n  backups:\n    pgbackrest: {s3: {bucket: bkt, region: us-east-1}, schedule: {full: '0 25 * * *'}}\n    snapshots: {schedule: '@daily'}\n",
        )
        .unwrap();
        assert_eq!(
            check_cluster(&c).len(),
            1,
            "no status yet: the primary is not checked"
        );
        c.status = Some(crate::cluster::PgmlClusterStatus {
            instances: ["main-1", "main-2"]
                .iter()
                .map(|n| crate::cluster::InstanceStatus {
                    name: n.to_string(),
                    node: None,
                    availability_zone: None,
                    pool: None,
                    role: None,
                    ready: true,
                    lsn: None,
                    lag_bytes: None,
                    seeded_from: None,
                    fenced: false,
                    pool_health: None,
                    node_leaving: None,
                })
                .collect(),
            ..Default::default()
        });
        let errors = check_cluster(&c);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            errors[0].to_string(),
            "backups.pgbackrest.schedule.full: hour \"25\": 25 is outside 0-23"
        );
        assert_eq!(
            errors[1].to_string(),
            "primary: main-9 is not an instance of this cluster (instances: main-1, main-2)"
        );
    }

    #[test]
    fn performance_ceiling_caps_at_the_instance() {
        let p = pool(
            "nodeName: n\nvolumes: {count: 4, sizeGiB: 250, iops: 6000, throughputMiBps: 500}",
        );
        let free = performance_ceiling(&p.template.volumes, p.template.layout, None, None);
        assert_eq!(
            (free.iops, free.throughput_mibps, free.limited_by.as_str()),
            (24000, 2000, "Volumes")
        );
        // m7i.large: 40000 IOPS, 1250 MiB/s maximum EBS throughput.
        let capped = performance_ceiling(
            &p.template.volumes,
            p.template.layout,
            Some(40000),
            Some(1250),
        );
        assert_eq!(
            (
                capped.iops,
                capped.throughput_mibps,
                capped.limited_by.as_str()
            ),
            (24000, 1250, "Instance")
        );
        let baseline = pool("nodeName: n\nvolumes: {count: 4, sizeGiB: 250}");
        let b = performance_ceiling(
            &baseline.template.volumes,
            baseline.template.layout,
            None,
            None,
        );
        assert_eq!((b.iops, b.throughput_mibps), (12000, 500));
        let io2 = pool("nodeName: n\nvolumes: {type: io2, count: 2, sizeGiB: 100, iops: 10000}");
        let i = performance_ceiling(&io2.template.volumes, io2.template.layout, None, None);
        assert_eq!((i.iops, i.throughput_mibps), (20000, 2 * 2560));
    }

    #[test]
    fn size_limits_per_type() {
        assert_eq!(size_limits(crate::ebs::VolumeType::Gp3), (1, 65536));
        assert_eq!(size_limits(crate::ebs::VolumeType::Io2), (4, 65536));
    }
}
