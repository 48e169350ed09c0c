//! The files this process writes for PostgreSQL and what it reads back: the managed include
//! file, the replication credentials, `host:port` addresses, pg_controldata's output. Pure
//! (but for reading the credentials), tested without a server.

use std::path::Path;

use anyhow::{Context, bail};

use super::Pg;
use crate::report::Lsn;

/// The include file this process owns in PGDATA, rewritten before every start.
pub const MANAGED_CONF: &str = "pgml-instance.conf";
/// Settings that live in [`MANAGED_CONF`]; a copy in postgresql.auto.conf (read last by
/// PostgreSQL) would override them, so it is removed from there.
pub(super) const MANAGED_KEYS: &[&str] = &[
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
    // A restore's replay: the manager writes them while it restores (crate::restore),
    // and `pgbackrest restore` writes its own in postgresql.auto.conf, which would win.
    "restore_command",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_inclusive",
    "recovery_target_action",
];

/// Replication credentials (`username`, `password` files of the replication Secret).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// Reads `<dir>/username` and `<dir>/password`; None when the folder or a file is not
    /// there. Values are refused unless made of characters that need no quoting in a
    /// connection string (the controller's are base64url).
    pub fn read(dir: &Path) -> anyhow::Result<Option<Credentials>> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string());
        let (Ok(username), Ok(password)) = (read("username"), read("password")) else {
            return Ok(None);
        };
        let user_ok = !username.is_empty()
            && username.len() <= 63
            && username
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !username.starts_with(|c: char| c.is_ascii_digit());
        if !user_ok {
            bail!("the replication user name must be lowercase letters, digits and _");
        }
        let pw_ok = !password.is_empty()
            && password
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.~+/=".contains(c));
        if !pw_ok {
            bail!("the replication password holds characters outside base64url");
        }
        Ok(Some(Credentials { username, password }))
    }
}

/// What pg_controldata says of a stopped cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlData {
    /// `Database cluster state` (e.g. `shut down`, `shut down in recovery`, `in production`).
    pub state: String,
    /// `Latest checkpoint location`.
    pub checkpoint: Option<Lsn>,
    /// `Database system identifier`: which database this data directory holds.
    pub system_identifier: Option<String>,
}

/// `host:port` → (host, port), the port checked to be a number.
pub fn split_address(a: &str) -> anyhow::Result<(&str, &str)> {
    let (h, p) = a
        .rsplit_once(':')
        .with_context(|| format!("{a:?} is not host:port"))?;
    if h.is_empty() || p.parse::<u16>().is_err() {
        bail!("{a:?} is not host:port");
    }
    Ok((h, p))
}

pub(super) fn strip_keys(text: &str, keys: &[&str]) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !keys.contains(&key)
        })
        .collect::<Vec<_>>()
        .join("\n");
    if text.ends_with('\n') && !out.is_empty() {
        out.push('\n');
    }
    out
}

pub fn parse_control_data(out: &str) -> ControlData {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_string())
    };
    ControlData {
        state: field("Database cluster state").unwrap_or_default(),
        checkpoint: field("Latest checkpoint location")
            .as_deref()
            .and_then(Lsn::parse),
        system_identifier: field("Database system identifier")
            .filter(|s| pgml_api::instance::is_system_identifier(s)),
    }
}

/// The managed settings: where to listen, and how to follow a primary when in recovery.
/// pg_hba.conf with `map=<map>` added to its `local … peer` lines (those without options).
pub fn peer_mapped(hba: &str, map: &str) -> String {
    hba.lines()
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            if fields.first() == Some(&"local") && fields.last() == Some(&"peer") {
                format!("{l} map={map}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

pub fn managed_conf(
    pg: &Pg,
    instance: &str,
    primary: Option<&str>,
    creds: Option<&Credentials>,
) -> anyhow::Result<String> {
    let conninfo = match primary {
        Some(a) => {
            let (host, port) = split_address(a)?;
            if !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c))
            {
                bail!("{host:?} is not a host name or address");
            }
            let user = creds.map_or(pg.superuser.as_str(), |c| c.username.as_str());
            let mut s = format!("host={host} port={port} user={user} application_name={instance}");
            // The password stays out of this file (it is in PGDATA, so in every snapshot
            // and backup): libpq reads it from the passfile the manager writes.
            if creds.is_some() {
                let passfile = pg.passfile();
                let p = passfile.to_string_lossy();
                if !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
                {
                    bail!("{p:?}: the passfile path must be letters, digits and /._-");
                }
                s += &format!(" passfile={p}");
            }
            s
        }
        None => String::new(),
    };
    // The operator's parameters first, so that the settings below win over them.
    let mut operator = String::new();
    if let Some(dir) = &pg.config_dir {
        for (file, line) in [
            ("postgresql.conf", "include_if_exists"),
            ("pg_hba.conf", "hba_file"),
            ("pg_ident.conf", "ident_file"),
        ] {
            let path = dir.join(file);
            if path.exists() {
                let p = path.to_string_lossy();
                if p.contains(['\'', '\\', '\n']) {
                    bail!("{p:?}: a configuration path cannot hold quotes or newlines");
                }
                operator += &format!("{line} = '{p}'\n");
            }
        }
    }
    Ok(format!(
        "# Written by pgml-instance before each start and when the primary changes. Do not edit.\n\
         {operator}\
         port = {}\n\
         listen_addresses = '{}'\n\
         unix_socket_directories = '{}'\n\
         hot_standby = on\n\
         primary_conninfo = '{conninfo}'\n\
         primary_slot_name = '{}'\n\
         recovery_target_timeline = 'latest'\n",
        pg.port,
        pg.listen_addresses,
        pg.socket_dir.display(),
        crate::report::slot_name(instance),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_peer_lines_get_the_map() {
        let hba = "# local all all peer\nlocal   all   all   peer\nlocal replication all peer\n\
                   host all all 127.0.0.1/32 peer\nlocal all all trust\n";
        assert_eq!(
            peer_mapped(hba, "m"),
            "# local all all peer\nlocal   all   all   peer map=m\nlocal replication all peer map=m\n\
             host all all 127.0.0.1/32 peer\nlocal all all trust\n"
        );
    }

    #[test]
    fn control_data_fields() {
        let out = "pg_control version number:            1300\n\
                   Catalog version number:               202209061\n\
                   Database system identifier:           7318791534227411232\n\
                   Database cluster state:               shut down\n\
                   Latest checkpoint location:           0/6000028\n\
                   Latest checkpoint's REDO location:    0/6000028\n";
        assert_eq!(
            parse_control_data(out),
            ControlData {
                state: "shut down".into(),
                checkpoint: Lsn::parse("0/6000028"),
                system_identifier: Some("7318791534227411232".into()),
            }
        );
        assert_eq!(parse_control_data("garbage").system_identifier, None);
    }

    #[test]
    fn auto_conf_loses_managed_keys_only() {
        let t = "# Do not edit this file manually!\nprimary_conninfo = 'host=x'\nwork_mem = '8MB'\nport=5433\n";
        assert_eq!(
            strip_keys(t, MANAGED_KEYS),
            "# Do not edit this file manually!\nwork_mem = '8MB'\n"
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(
            split_address("10.0.0.1:5432").unwrap(),
            ("10.0.0.1", "5432")
        );
        assert!(split_address("10.0.0.1").is_err());
        assert!(split_address("h:x").is_err());
        assert!(split_address(":5432").is_err());
    }

    #[test]
    fn conf_for_a_replica_and_a_primary() {
        let pg = Pg {
            bin: "/b".into(),
            data: "/d".into(),
            wal_dir: None,
            port: 5433,
            socket_dir: "/tmp".into(),
            listen_addresses: "*".into(),
            superuser: "postgres".into(),
            local_auth: "peer".into(),
            host_auth: "scram-sha-256".into(),
            config_dir: None,
            drop_to: None,
            run_dir: "/controller".into(),
            db: Default::default(),
        };
        let creds = Credentials {
            username: "streaming_replica".into(),
            password: "abc-_".into(),
        };
        let t = managed_conf(&pg, "main-2", Some("10.0.0.1:5432"), Some(&creds)).unwrap();
        assert!(t.contains("primary_conninfo = 'host=10.0.0.1 port=5432 user=streaming_replica application_name=main-2 passfile=/controller/replication.pgpass'"), "{t}");
        assert!(
            !t.contains("abc-_"),
            "the password is not in the configuration: {t}"
        );
        assert!(t.contains("primary_slot_name = 'main_2'"));
        assert!(t.contains("recovery_target_timeline = 'latest'"));
        assert!(t.contains("port = 5433"));
        let t = managed_conf(&pg, "main-1", None, None).unwrap();
        assert!(t.contains("primary_conninfo = ''"));
        assert!(managed_conf(&pg, "main-1", Some("a'b:5432"), None).is_err());
        assert!(!t.contains("hba_file"));
    }

    #[test]
    fn the_operators_config_comes_first() {
        let dir = std::env::temp_dir().join(format!("pgml-inst-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("postgresql.conf"), "work_mem = '8MB'\n").unwrap();
        std::fs::write(dir.join("pg_hba.conf"), "local all all peer\n").unwrap();
        let pg = Pg {
            bin: "/b".into(),
            data: "/d".into(),
            wal_dir: None,
            port: 5432,
            socket_dir: "/tmp".into(),
            listen_addresses: "*".into(),
            superuser: "postgres".into(),
            local_auth: "peer".into(),
            host_auth: "scram-sha-256".into(),
            config_dir: Some(dir.clone()),
            drop_to: None,
            run_dir: "/controller".into(),
            db: Default::default(),
        };
        let t = managed_conf(&pg, "main-1", None, None).unwrap();
        let include = t
            .find(&format!(
                "include_if_exists = '{}/postgresql.conf'",
                dir.display()
            ))
            .expect("include");
        let hba = t
            .find(&format!("hba_file = '{}/pg_hba.conf'", dir.display()))
            .expect("hba_file");
        assert!(include < t.find("port =").unwrap() && hba < t.find("port =").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn credentials_are_checked() {
        let dir = std::env::temp_dir().join(format!("pgml-inst-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Credentials::read(&dir).unwrap().is_none());
        std::fs::write(dir.join("username"), "streaming_replica\n").unwrap();
        std::fs::write(dir.join("password"), "a'b").unwrap();
        assert!(Credentials::read(&dir).is_err());
        std::fs::write(dir.join("password"), "Zm9v_-").unwrap();
        let c = Credentials::read(&dir).unwrap().unwrap();
        assert_eq!(c.username, "streaming_replica");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
