//! postgresql.conf and pg_hba.conf of a cluster: the operator's defaults for PostgresML
//! (and for ZFS when the data is on ZFS), then the user's parameters on top.

use std::collections::BTreeMap;

use pgml_api::PgmlClusterSpec;

use super::names::SecretKind;

/// Defaults on every cluster. Replication needs the senders and slots; `hot_standby` lets
/// replicas serve reads; `wal_log_hints` keeps pg_rewind possible after a failover.
const DEFAULTS: &[(&str, &str)] = &[
    ("hot_standby", "on"),
    ("max_replication_slots", "16"),
    ("max_wal_senders", "16"),
    ("shared_preload_libraries", "pgml"),
    ("wal_level", "replica"),
    ("wal_log_hints", "on"),
];

/// On ZFS: copy-on-write never tears a page (the record is written whole or not at all),
/// so full-page images are dead weight; zero-filling and recycling WAL segments only cost
/// writes on a file system that never overwrites in place.
const ZFS_DEFAULTS: &[(&str, &str)] = &[
    ("full_page_writes", "off"),
    ("wal_init_zero", "off"),
    ("wal_recycle", "off"),
];

/// The effective parameters: defaults, ZFS defaults when on ZFS, the user's on top, and
/// `pgml` always in `shared_preload_libraries`.
pub fn parameters(spec: &PgmlClusterSpec) -> BTreeMap<String, String> {
    let mut p: BTreeMap<String, String> = DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if spec.storage.zfs.is_some() {
        p.extend(
            ZFS_DEFAULTS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    p.extend(spec.postgresql.parameters.clone());
    let libs = p.entry("shared_preload_libraries".into()).or_default();
    let has_pgml = libs
        .split(',')
        .any(|l| l.trim().trim_matches('"') == "pgml");
    if !has_pgml {
        *libs = if libs.trim().is_empty() {
            "pgml".into()
        } else {
            format!("{},pgml", libs.trim())
        };
    }
    p
}

/// A value in single quotes, quotes doubled (postgresql.conf syntax), newlines dropped.
fn quote(v: &str) -> String {
    let clean: String = v.chars().filter(|c| *c != '\n' && *c != '\r').collect();
    format!("'{}'", clean.replace('\'', "''"))
}

/// postgresql.conf: one `name = 'value'` line per parameter, sorted.
pub fn postgresql_conf(spec: &PgmlClusterSpec) -> String {
    let mut out = String::from(
        "# Written by pgml-operator from the PgmlCluster's spec.postgresql; edits here are overwritten.\n",
    );
    for (k, v) in parameters(spec) {
        out.push_str(&format!("{k} = {}\n", quote(&v)));
    }
    out
}

/// pg_hba.conf: local connections (the instance manager), replication by its role, the
/// user's lines, then password access for everyone else.
pub fn pg_hba(spec: &PgmlClusterSpec) -> String {
    let repl = SecretKind::Replication.username();
    let mut out =
        String::from("# Written by pgml-operator; add lines with spec.postgresql.pgHba.\n");
    out.push_str("local all all peer\n");
    out.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
    out.push_str("host all all ::1/128 scram-sha-256\n");
    out.push_str(&format!("host replication {repl} all scram-sha-256\n"));
    for line in &spec.postgresql.pg_hba {
        out.push_str(line.trim());
        out.push('\n');
    }
    out.push_str("host all all all scram-sha-256\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(storage: &str, postgresql: &str) -> PgmlClusterSpec {
        serde_yaml::from_str(&format!("storage: {storage}\npostgresql: {postgresql}\n")).unwrap()
    }

    const ZFS: &str = "{zfs: {template: {volumes: {sizeGiB: 10}}}}";
    const PVC: &str = "{persistentVolumeClaim: {size: 10Gi}}";

    #[test]
    fn zfs_turns_off_what_copy_on_write_makes_useless_unless_the_user_says() {
        let p = parameters(&spec(
            ZFS,
            "{parameters: {wal_recycle: 'on', shared_buffers: 8GB}}",
        ));
        assert_eq!(p["full_page_writes"], "off");
        assert_eq!(p["wal_init_zero"], "off");
        assert_eq!(p["wal_recycle"], "on");
        assert_eq!(p["shared_buffers"], "8GB");
        assert_eq!(p["shared_preload_libraries"], "pgml");
        let ext4 = parameters(&spec(PVC, "{}"));
        assert!(!ext4.contains_key("full_page_writes"));
        assert!(!ext4.contains_key("wal_recycle"));
    }

    #[test]
    fn pgml_is_always_preloaded() {
        let p = parameters(&spec(
            PVC,
            "{parameters: {shared_preload_libraries: 'pg_stat_statements'}}",
        ));
        assert_eq!(p["shared_preload_libraries"], "pg_stat_statements,pgml");
        let p = parameters(&spec(
            PVC,
            "{parameters: {shared_preload_libraries: 'pgml,auto_explain'}}",
        ));
        assert_eq!(p["shared_preload_libraries"], "pgml,auto_explain");
        let p = parameters(&spec(PVC, "{parameters: {shared_preload_libraries: ''}}"));
        assert_eq!(p["shared_preload_libraries"], "pgml");
    }

    #[test]
    fn conf_lines_are_quoted() {
        let conf = postgresql_conf(&spec(
            ZFS,
            "{parameters: {search_path: \"'$user', public\"}}",
        ));
        assert!(
            conf.contains("search_path = '''$user'', public'\n"),
            "{conf}"
        );
        assert!(conf.contains("full_page_writes = 'off'\n"));
        assert!(conf.contains("shared_preload_libraries = 'pgml'\n"));
    }

    #[test]
    fn hba_has_the_operators_lines_then_the_users() {
        let hba = pg_hba(&spec(PVC, "{pgHba: ['host all all 10.0.0.0/8 md5']}"));
        let lines: Vec<&str> = hba.lines().collect();
        let user = lines
            .iter()
            .position(|l| *l == "host all all 10.0.0.0/8 md5")
            .unwrap();
        let repl = lines
            .iter()
            .position(|l| *l == "host replication streaming_replica all scram-sha-256")
            .unwrap();
        assert!(repl < user);
        assert_eq!(lines.last(), Some(&"host all all all scram-sha-256"));
    }
}
