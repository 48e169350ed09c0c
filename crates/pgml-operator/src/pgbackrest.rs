//! pgBackRest for a PgmlCluster, as pure functions: the `pgbackrest.conf` the cluster's
//! ConfigMap (`C-config`) carries, the `archive_command` / `restore_command` for
//! `postgresql.conf`, the stanza name, the environment variables an instance Pod needs
//! per credentials mode, and the `ContinuousArchiving` condition from `pg_stat_archiver`.
//!
//! Credentials are never written: [`PgBackRest`] has no field for a key, and the rendered
//! file only ever says where pgBackRest finds them (`repo1-s3-key-type`):
//! - `InstanceRole` → `auto`: temporary credentials of the node's EC2 instance profile,
//!   from the instance metadata service;
//! - `IRSA` → `web-id`: pgBackRest reads `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE`
//!   (set in the Pod by EKS's webhook, [`pod_env_names`]) and calls
//!   `AssumeRoleWithWebIdentity`;
//! - `PodIdentity` → `pod-id`, which **pgBackRest 2.45 does not have**: EKS Pod Identity
//!   came with pgBackRest 2.58 (pgbackrest/pgbackrest PR #2719; it reads
//!   `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
//!   2.45 has no key type that gets the Pod's role: `auto` would silently use the *node's*
//!   instance role instead (another identity, maybe with other rights), so the renderer
//!   still writes `pod-id`; 2.45 refuses the option at once (seen here: `ERROR: [032]:
//!   'pod-id' is not allowed for 'repo1-s3-key-type' option`; `archive-push` fails, the
//!   `ContinuousArchiving` condition says so) rather than archiving as the wrong role. An
//!   image with pgBackRest ≥ 2.58 is needed for `PodIdentity`.

use std::fmt::Write as _;

use pgml_api::cluster::{CredentialsMode, PgBackRest};

/// Where the instance Pods mount the ConfigMap `C-config` (`PGML_CONFIG_DIR`); the
/// rendered file is its key `pgbackrest.conf`.
pub const CONFIG_KEY: &str = "pgbackrest.conf";
/// The rendered file's path inside an instance Pod.
pub const POD_CONFIG_PATH: &str = "/etc/pgml/config/pgbackrest.conf";
/// The pgBackRest program the commands call (on the image's PATH).
pub const PROGRAM: &str = "pgbackrest";

/// Where PostgreSQL is, for the stanza section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTarget {
    /// PGDATA (`pg1-path`).
    pub data_dir: String,
    /// `pg1-port`.
    pub port: u16,
    /// The Unix socket folder (`pg1-socket-path`); `None`: pgBackRest's default.
    pub socket_dir: Option<String>,
}

/// What cannot be rendered. The CRD's schema already refuses most of it; the renderer
/// checks again so that nothing it did not expect (a newline above all) reaches the INI.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("{what} {value:?} is not allowed in pgbackrest.conf: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

fn invalid(what: &'static str, value: &str, why: &'static str) -> RenderError {
    RenderError::Invalid {
        what,
        value: value.to_string(),
        why,
    }
}

/// Checks one value against an allowed character set (and never a control character,
/// `=`, `[`, `]`, quote, space or `%`, which the INI file or the shell of
/// `archive_command` would read differently).
fn check(
    what: &'static str,
    value: &str,
    allowed: impl Fn(char) -> bool,
    why: &'static str,
) -> Result<(), RenderError> {
    if value.is_empty() {
        return Err(invalid(what, value, "empty"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(invalid(what, value, "control characters (newlines)"));
    }
    if !value.chars().all(allowed) {
        return Err(invalid(what, value, why));
    }
    Ok(())
}

fn dns_label(what: &'static str, value: &str) -> Result<(), RenderError> {
    check(
        what,
        value,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "a DNS label (a-z, 0-9, -)",
    )?;
    if value.len() > 63 || value.starts_with('-') || value.ends_with('-') {
        return Err(invalid(what, value, "a DNS label (a-z, 0-9, -)"));
    }
    Ok(())
}

fn path_like(what: &'static str, value: &str) -> Result<(), RenderError> {
    check(
        what,
        value,
        |c| c.is_ascii_alphanumeric() || "/_.-".contains(c),
        "an absolute path of letters, digits, / _ . -",
    )?;
    if !value.starts_with('/') || value.split('/').any(|s| s == "..") {
        return Err(invalid(
            what,
            value,
            "an absolute path of letters, digits, / _ . -",
        ));
    }
    Ok(())
}

/// The stanza: the cluster's name. A cluster's repository path is its own (default
/// `/pgbackrest/<namespace>/<cluster>`), so the name alone is unique in it; a user-set
/// `s3.path` must not be shared by two clusters of the same name.
pub fn stanza(cluster: &str) -> String {
    cluster.to_string()
}

/// The repository path: `s3.path`, else `/pgbackrest/<namespace>/<cluster>`.
pub fn repo_path(namespace: &str, cluster: &str, spec: &PgBackRest) -> String {
    match &spec.s3.path {
        Some(p) if p.len() > 1 => p.trim_end_matches('/').to_string(),
        Some(p) => p.clone(),
        None => format!("/pgbackrest/{namespace}/{cluster}"),
    }
}

/// `repo1-s3-key-type` for a credentials mode (see the module's documentation).
pub fn key_type(mode: CredentialsMode) -> &'static str {
    match mode {
        CredentialsMode::InstanceRole => "auto",
        CredentialsMode::Irsa => "web-id",
        CredentialsMode::PodIdentity => "pod-id",
    }
}

/// The environment variables pgBackRest reads in an instance Pod for a credentials mode.
/// EKS sets them (IRSA's webhook, the Pod Identity agent's webhook); the PostgreSQL server
/// must be started with them so that its `archive_command` inherits them. None for the
/// instance role (the metadata service is found without any).
pub fn pod_env_names(mode: CredentialsMode) -> &'static [&'static str] {
    match mode {
        CredentialsMode::InstanceRole => &[],
        CredentialsMode::Irsa => &["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"],
        CredentialsMode::PodIdentity => &[
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        ],
    }
}

/// The S3 endpoint split for pgBackRest: host (`repo1-s3-endpoint`) and port
/// (`repo1-storage-port`, when not 443). pgBackRest speaks HTTPS only: an `http://`
/// endpoint is refused.
fn endpoint(spec: &PgBackRest) -> Result<(String, Option<u16>), RenderError> {
    let Some(raw) = &spec.s3.endpoint else {
        return Ok((format!("s3.{}.amazonaws.com", spec.s3.region), None));
    };
    if raw.starts_with("http://") {
        return Err(invalid(
            "s3.endpoint",
            raw,
            "pgBackRest's S3 driver speaks HTTPS only",
        ));
    }
    let rest = raw.strip_prefix("https://").unwrap_or(raw);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid("s3.endpoint", raw, "a port of 1-65535"))?;
            (h, (port != 443).then_some(port))
        }
        None => (rest, None),
    };
    check(
        "s3.endpoint",
        host,
        |c| c.is_ascii_alphanumeric() || c == '.' || c == '-',
        "a host name (letters, digits, . -) with an optional https:// and :port",
    )?;
    Ok((host.to_string(), port))
}

/// Host-style URIs (`bucket.endpoint`) on AWS's own endpoints; path-style
/// (`endpoint/bucket`) on any other (S3-compatible stores, IP addresses) and for buckets
/// with dots, whose host name AWS's wildcard certificate does not cover.
fn path_style(host: &str, bucket: &str) -> bool {
    !host.ends_with(".amazonaws.com") || bucket.contains('.')
}

/// Renders `pgbackrest.conf`: `[global]` (the S3 repository, where the credentials come
/// from, retention, compression, logs) and `[<stanza>]` (where PostgreSQL is). Never a
/// key, secret or token: there is no input for one.
pub fn render_config(
    namespace: &str,
    cluster: &str,
    spec: &PgBackRest,
    pg: &PgTarget,
) -> Result<String, RenderError> {
    dns_label("namespace", namespace)?;
    dns_label("cluster name", cluster)?;
    let bucket = &spec.s3.bucket;
    check(
        "s3.bucket",
        bucket,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-',
        "a bucket name (a-z, 0-9, . -)",
    )?;
    let region = &spec.s3.region;
    check(
        "s3.region",
        region,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "a region (a-z, 0-9, -)",
    )?;
    let path = repo_path(namespace, cluster, spec);
    path_like("s3.path", &path)?;
    path_like("PGDATA", &pg.data_dir)?;
    if let Some(s) = &pg.socket_dir {
        path_like("socket folder", s)?;
    }
    if spec.retention.full < 1 {
        return Err(invalid(
            "retention.full",
            &spec.retention.full.to_string(),
            "at least 1",
        ));
    }
    let (host, port) = endpoint(spec)?;

    let mut ini = Ini::default();
    ini.comment(&format!(
        "Rendered by pgml-operator for {namespace}/{cluster}; do not edit."
    ));
    ini.comment("No key or secret here, ever: repo1-s3-key-type says where they come from.");
    ini.section("global");
    ini.kv("repo1-type", "s3");
    ini.kv("repo1-s3-bucket", bucket);
    ini.kv("repo1-s3-region", region);
    ini.kv("repo1-s3-endpoint", &host);
    if let Some(p) = port {
        ini.kv("repo1-storage-port", &p.to_string());
    }
    if path_style(&host, bucket) {
        ini.kv("repo1-s3-uri-style", "path");
    }
    ini.kv("repo1-path", &path);
    ini.kv("repo1-s3-key-type", key_type(spec.credentials.mode));
    ini.kv("repo1-retention-full", &spec.retention.full.to_string());
    ini.kv("process-max", "2");
    ini.kv("compress-type", "lz4");
    ini.kv("start-fast", "y");
    ini.kv("archive-async", "n");
    ini.kv("log-level-console", "info");
    ini.kv("log-level-stderr", "warn");
    ini.kv("log-level-file", "off");
    ini.section(&stanza(cluster));
    ini.kv("pg1-path", &pg.data_dir);
    ini.kv("pg1-port", &pg.port.to_string());
    if let Some(s) = &pg.socket_dir {
        ini.kv("pg1-socket-path", s);
    }
    Ok(ini.0)
}

/// An INI text being written. Every value reaching it was checked (no control character),
/// which `kv` asserts again.
#[derive(Default)]
struct Ini(String);

impl Ini {
    fn comment(&mut self, text: &str) {
        debug_assert!(!text.chars().any(|c| c.is_control()));
        let _ = writeln!(self.0, "# {text}");
    }
    fn section(&mut self, name: &str) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        let _ = writeln!(self.0, "[{name}]");
    }
    fn kv(&mut self, key: &str, value: &str) {
        assert!(
            !value.chars().any(|c| c.is_control()) && !key.contains('='),
            "unchecked value reached the INI"
        );
        let _ = writeln!(self.0, "{key}={value}");
    }
}

/// `archive_command` for postgresql.conf: push `%p` to the stanza's archive with the
/// rendered file at `config_path`.
pub fn archive_command(config_path: &str, cluster: &str) -> Result<String, RenderError> {
    path_like("config path", config_path)?;
    dns_label("cluster name", cluster)?;
    Ok(format!(
        "{PROGRAM} --config={config_path} --stanza={} archive-push %p",
        stanza(cluster)
    ))
}

/// `restore_command` for postgresql.conf (a replica catching up from the archive, a
/// point-in-time restore).
pub fn restore_command(config_path: &str, cluster: &str) -> Result<String, RenderError> {
    path_like("config path", config_path)?;
    dns_label("cluster name", cluster)?;
    Ok(format!(
        "{PROGRAM} --config={config_path} --stanza={} archive-get %f \"%p\"",
        stanza(cluster)
    ))
}

// pg_stat_archiver and the `ContinuousArchiving` condition live with the instance report
// (the instance manager reads the one, the controller computes the other).
pub use pgml_api::instance::{
    ArchiverStats, ArchivingCondition, archiving_reason as reason, continuous_archiving,
};

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_api::cluster::{BackupRetention, S3Credentials, S3Repository};

    fn spec(mode: CredentialsMode) -> PgBackRest {
        PgBackRest {
            s3: S3Repository {
                bucket: "pgml-backups".into(),
                region: "eu-west-1".into(),
                path: None,
                endpoint: None,
            },
            credentials: S3Credentials {
                mode,
                service_account_role_arn: (mode == CredentialsMode::Irsa)
                    .then(|| "arn:aws:iam::123456789012:role/pgbackrest".into()),
            },
            schedule: Default::default(),
            retention: BackupRetention::default(),
        }
    }

    fn pg() -> PgTarget {
        PgTarget {
            data_dir: "/var/lib/postgresql/data/pgdata".into(),
            port: 5432,
            socket_dir: Some("/tmp".into()),
        }
    }

    fn lines(conf: &str) -> Vec<&str> {
        conf.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    }

    fn value<'a>(conf: &'a str, key: &str) -> Option<&'a str> {
        conf.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    #[test]
    fn instance_role_is_auto_with_defaults() {
        let conf =
            render_config("prod", "main", &spec(CredentialsMode::InstanceRole), &pg()).unwrap();
        assert_eq!(
            lines(&conf),
            [
                "[global]",
                "repo1-type=s3",
                "repo1-s3-bucket=pgml-backups",
                "repo1-s3-region=eu-west-1",
                "repo1-s3-endpoint=s3.eu-west-1.amazonaws.com",
                "repo1-path=/pgbackrest/prod/main",
                "repo1-s3-key-type=auto",
                "repo1-retention-full=2",
                "process-max=2",
                "compress-type=lz4",
                "start-fast=y",
                "archive-async=n",
                "log-level-console=info",
                "log-level-stderr=warn",
                "log-level-file=off",
                "[main]",
                "pg1-path=/var/lib/postgresql/data/pgdata",
                "pg1-port=5432",
                "pg1-socket-path=/tmp",
            ]
        );
        assert_eq!(stanza("main"), "main");
        assert!(pod_env_names(CredentialsMode::InstanceRole).is_empty());
    }

    #[test]
    fn no_key_secret_or_token_in_any_mode() {
        for mode in [
            CredentialsMode::InstanceRole,
            CredentialsMode::Irsa,
            CredentialsMode::PodIdentity,
        ] {
            let conf = render_config("prod", "main", &spec(mode), &pg()).unwrap();
            for l in lines(&conf) {
                let key = l.split('=').next().unwrap();
                assert!(
                    !matches!(
                        key,
                        "repo1-s3-key" | "repo1-s3-key-secret" | "repo1-s3-token" | "repo1-s3-role"
                    ) && !key.contains("secret")
                        && !key.contains("token")
                        && !key.contains("cipher-pass"),
                    "{mode:?}: {l}"
                );
            }
            assert_eq!(
                value(&conf, "repo1-s3-key-type"),
                Some(key_type(mode)),
                "{mode:?}"
            );
            // The ARN of IRSA comes from the Pod's environment, not the file.
            assert!(!conf.contains("arn:aws"), "{mode:?}");
        }
    }

    #[test]
    fn irsa_is_web_id_pod_identity_is_pod_id() {
        let irsa = render_config("prod", "main", &spec(CredentialsMode::Irsa), &pg()).unwrap();
        assert_eq!(value(&irsa, "repo1-s3-key-type"), Some("web-id"));
        assert_eq!(
            pod_env_names(CredentialsMode::Irsa),
            ["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"]
        );
        let pod =
            render_config("prod", "main", &spec(CredentialsMode::PodIdentity), &pg()).unwrap();
        assert_eq!(value(&pod, "repo1-s3-key-type"), Some("pod-id"));
        assert_eq!(
            pod_env_names(CredentialsMode::PodIdentity),
            [
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
            ]
        );
    }

    #[test]
    fn endpoint_path_and_uri_style() {
        let mut s = spec(CredentialsMode::InstanceRole);
        s.s3.endpoint = Some("https://127.0.0.1:9443/".into());
        s.s3.path = Some("/backups/x/".into());
        s.retention.full = 7;
        let conf = render_config("prod", "main", &s, &pg()).unwrap();
        assert_eq!(value(&conf, "repo1-s3-endpoint"), Some("127.0.0.1"));
        assert_eq!(value(&conf, "repo1-storage-port"), Some("9443"));
        assert_eq!(value(&conf, "repo1-s3-uri-style"), Some("path"));
        assert_eq!(value(&conf, "repo1-path"), Some("/backups/x"));
        assert_eq!(value(&conf, "repo1-retention-full"), Some("7"));

        s.s3.endpoint = Some("s3.us-east-1.amazonaws.com:443".into());
        let conf = render_config("prod", "main", &s, &pg()).unwrap();
        assert_eq!(
            value(&conf, "repo1-s3-endpoint"),
            Some("s3.us-east-1.amazonaws.com")
        );
        assert_eq!(value(&conf, "repo1-storage-port"), None);
        assert_eq!(value(&conf, "repo1-s3-uri-style"), None);

        // A dotted bucket is not covered by AWS's wildcard certificate: path style.
        s.s3.bucket = "pgml.backups".into();
        let conf = render_config("prod", "main", &s, &pg()).unwrap();
        assert_eq!(value(&conf, "repo1-s3-uri-style"), Some("path"));

        let no_socket = PgTarget {
            socket_dir: None,
            ..pg()
        };
        let conf = render_config("prod", "main", &s, &no_socket).unwrap();
        assert_eq!(value(&conf, "pg1-socket-path"), None);
    }

    #[test]
    fn refuses_what_could_break_the_ini() {
        let ok = spec(CredentialsMode::InstanceRole);
        let bad = |f: &dyn Fn(&mut PgBackRest)| {
            let mut s = ok.clone();
            f(&mut s);
            render_config("prod", "main", &s, &pg()).unwrap_err()
        };
        bad(&|s| s.s3.bucket = "b\nrepo1-s3-key=x".into());
        bad(&|s| s.s3.bucket = "b=c".into());
        bad(&|s| s.s3.region = "eu-west-1\r".into());
        bad(&|s| s.s3.path = Some("/a\n[global]".into()));
        bad(&|s| s.s3.path = Some("/a/../b".into()));
        bad(&|s| s.s3.path = Some("relative".into()));
        bad(&|s| s.s3.endpoint = Some("http://minio:9000".into()));
        bad(&|s| s.s3.endpoint = Some("host\n:1".into()));
        bad(&|s| s.s3.endpoint = Some("host:99999".into()));
        bad(&|s| s.s3.endpoint = Some("ho st".into()));
        bad(&|s| s.retention.full = 0);
        assert!(render_config("pro\nd", "main", &ok, &pg()).is_err());
        assert!(render_config("prod", "Main", &ok, &pg()).is_err());
        assert!(render_config("prod", "-main", &ok, &pg()).is_err());
        let mut p = pg();
        p.data_dir = "/data\npg1-path=/etc".into();
        assert!(render_config("prod", "main", &ok, &p).is_err());
        let mut p = pg();
        p.socket_dir = Some("/tmp x".into());
        assert!(render_config("prod", "main", &ok, &p).is_err());
        assert!(archive_command("/etc/x y.conf", "main").is_err());
        assert!(archive_command("/etc/x.conf", "ma;in").is_err());
    }

    #[test]
    fn postgres_commands() {
        assert_eq!(
            archive_command(POD_CONFIG_PATH, "main").unwrap(),
            "pgbackrest --config=/etc/pgml/config/pgbackrest.conf --stanza=main archive-push %p"
        );
        assert_eq!(
            restore_command(POD_CONFIG_PATH, "main").unwrap(),
            "pgbackrest --config=/etc/pgml/config/pgbackrest.conf --stanza=main archive-get %f \"%p\""
        );
        // Safe inside postgresql.conf's single quotes.
        assert!(
            !archive_command(POD_CONFIG_PATH, "main")
                .unwrap()
                .contains('\'')
        );
    }
}
