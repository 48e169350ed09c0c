//! postgresql.conf and pg_hba.conf of a cluster: the operator's defaults for PostgresML
//! (and for ZFS when the data is on ZFS), then the user's parameters on top.

use std::collections::BTreeMap;

use pgml_api::PgmlClusterSpec;

use super::build::{CONFIG_DIR, PGDATA, PORT, SOCKET_DIR};
use super::names::SecretKind;
use crate::pgbackrest::{self, PgTarget, RenderError};

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

/// postgresql.conf: one `name = 'value'` line per parameter, sorted; pgBackRest's
/// archiving settings (when configured) over the user's.
pub fn postgresql_conf(spec: &PgmlClusterSpec, archiving: Option<&Archiving>) -> String {
    let mut out = String::from(
        "# Written by pgml-operator from the PgmlCluster's spec.postgresql; edits here are overwritten.\n",
    );
    let mut p = parameters(spec);
    if let Some(a) = archiving {
        p.extend(a.parameters.clone());
    }
    for (k, v) in p {
        out.push_str(&format!("{k} = {}\n", quote(&v)));
    }
    out
}

/// pgBackRest's part of the ConfigMap `C-config`: the file (key `pgbackrest.conf`, at
/// [`pgbackrest::POD_CONFIG_PATH`] in the Pod) and the `postgresql.conf` settings that
/// archive WAL through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archiving {
    pub file: String,
    pub parameters: BTreeMap<String, String>,
}

/// Where PostgreSQL is in an instance Pod, for the stanza (`pg1-*`): PGDATA, the port,
/// and the socket folder the instance manager uses (its `PGML_SOCKET_DIR` default).
pub fn pod_target() -> PgTarget {
    PgTarget {
        data_dir: PGDATA.into(),
        port: PORT as u16,
        socket_dir: Some(SOCKET_DIR.into()),
    }
}

/// pgBackRest for the cluster `namespace/name`: `None` without `spec.backups.pgbackrest`;
/// an error (reported as `SpecValid` False) when something in it cannot be rendered.
/// `archive_mode` needs a restart of PostgreSQL to change; the commands only a reload.
pub fn archiving(
    namespace: &str,
    name: &str,
    spec: &PgmlClusterSpec,
) -> Result<Option<Archiving>, RenderError> {
    let Some(pgbr) = &spec.backups.pgbackrest else {
        return Ok(None);
    };
    debug_assert_eq!(
        format!("{CONFIG_DIR}/{}", pgbackrest::CONFIG_KEY),
        pgbackrest::POD_CONFIG_PATH
    );
    let file = pgbackrest::render_config(namespace, name, pgbr, &pod_target())?;
    let path = pgbackrest::POD_CONFIG_PATH;
    let parameters = [
        ("archive_mode", "on".to_string()),
        ("archive_command", pgbackrest::archive_command(path, name)?),
        ("restore_command", pgbackrest::restore_command(path, name)?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(Some(Archiving { file, parameters }))
}

/// The ConfigMap key of the repository a restore reads (`bootstrap.pgbackrest`): the
/// instance manager's `pgbackrest-bootstrap.conf`.
pub const BOOTSTRAP_CONFIG_KEY: &str = "pgbackrest-bootstrap.conf";

/// The source repository's `pgbackrest.conf` for `bootstrap.pgbackrest` (its stanza, its
/// path: `s3.path`, else `/pgbackrest/<namespace>/<stanza>`), rendered as the cluster's
/// own is, no key in it; `None` without one. Kept for the cluster's life: it is only
/// read while the database is restored, and says where it came from afterwards.
pub fn bootstrap_source(
    namespace: &str,
    spec: &PgmlClusterSpec,
) -> Result<Option<String>, RenderError> {
    let Some(src) = spec.bootstrap_pgbackrest() else {
        return Ok(None);
    };
    let repo = pgml_api::cluster::PgBackRest {
        s3: src.s3.clone(),
        credentials: src.credentials.clone(),
        schedule: Default::default(),
        retention: Default::default(),
    };
    pgbackrest::render_config(namespace, &src.stanza, &repo, &pod_target()).map(Some)
}

/// The pg_ident.conf map of local (socket) connections: each system user as the database
/// user of the same name, and `root` as the superuser: the instance manager connects with
/// its driver from its own process, which runs as root where the image's user is root
/// (`root` in the container can become `postgres` anyway; no other user gains anything).
pub const LOCAL_MAP: &str = "pgml-local";

/// pg_ident.conf: [`LOCAL_MAP`].
pub fn pg_ident() -> String {
    let su = SecretKind::Superuser.username();
    format!(
        "# Written by pgml-operator: who may connect on the socket as whom.\n\
         {LOCAL_MAP} /^(.*)$ \\1\n\
         {LOCAL_MAP} root {su}\n"
    )
}

/// pg_hba.conf: local connections (the instance manager, through [`pg_ident`]), replication
/// by its role, the user's lines, then password access for everyone else.
pub fn pg_hba(spec: &PgmlClusterSpec) -> String {
    let repl = SecretKind::Replication.username();
    let mut out =
        String::from("# Written by pgml-operator; add lines with spec.postgresql.pgHba.\n");
    out.push_str(&format!("local all all peer map={LOCAL_MAP}\n"));
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
        let conf = postgresql_conf(
            &spec(ZFS, "{parameters: {search_path: \"'$user', public\"}}"),
            None,
        );
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

    const PGBR: &str = "{pgbackrest: {s3: {bucket: pgml-backups, region: eu-west-1}}}";

    fn with_backups(backups: &str, parameters: &str) -> PgmlClusterSpec {
        serde_yaml::from_str(&format!(
            "storage: {ZFS}\npostgresql: {{parameters: {parameters}}}\nbackups: {backups}\n"
        ))
        .unwrap()
    }

    #[test]
    fn pgbackrest_adds_its_file_and_archives_through_it() {
        let spec = with_backups(PGBR, "{archive_mode: 'off', work_mem: 64MB}");
        let a = archiving("prod", "main", &spec).unwrap().unwrap();
        assert!(a.file.contains("\n[main]\npg1-path=/var/lib/postgresql/data/pgdata\npg1-port=5432\npg1-socket-path=/tmp\n"), "{}", a.file);
        assert!(a.file.contains("repo1-s3-bucket=pgml-backups\n"));
        assert!(a.file.contains("repo1-path=/pgbackrest/prod/main\n"));
        let conf = postgresql_conf(&spec, Some(&a));
        let lines: Vec<&str> = conf.lines().collect();
        for want in [
            "archive_mode = 'on'",
            "archive_command = 'pgbackrest --config=/etc/pgml/config/pgbackrest.conf --stanza=main archive-push %p'",
            "restore_command = 'pgbackrest --config=/etc/pgml/config/pgbackrest.conf --stanza=main archive-get %f \"%p\"'",
            "work_mem = '64MB'",
        ] {
            assert!(lines.contains(&want), "{want} missing:\n{conf}");
        }
        assert!(
            !conf.contains("archive_mode = 'off'"),
            "pgBackRest's settings win: {conf}"
        );
    }

    #[test]
    fn without_pgbackrest_nothing_archives() {
        let spec = with_backups("{}", "{}");
        assert_eq!(archiving("prod", "main", &spec).unwrap(), None);
        let conf = postgresql_conf(&spec, None);
        assert!(!conf.contains("archive"), "{conf}");
    }

    #[test]
    fn an_endpoint_pgbackrest_cannot_use_is_an_error() {
        let spec = with_backups(
            "{pgbackrest: {s3: {bucket: b-1, region: eu-west-1, endpoint: 'http://minio:9000'}}}",
            "{}",
        );
        let e = archiving("prod", "main", &spec).unwrap_err().to_string();
        assert!(e.contains("HTTPS only"), "{e}");
    }
}
