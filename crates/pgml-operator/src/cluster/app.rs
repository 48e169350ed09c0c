//! What the status says of the application database: the `PgmlExtension` condition and
//! `status.pgmlVersion`, from the current primary's report (its manager makes the database,
//! its owner and the extension). Pure.
//!
//! - `True`, `Installed`: `pgml` is created in the application database.
//! - `False`, `NotAvailable`: the image offers no `pgml` (`pg_available_extensions`); the
//!   database works without it.
//! - `False`, `AppDatabaseFailed`: the database, its owner or the extension could not be
//!   made (the manager's error; it tries again).
//! - `Unknown`, `NoReport`: no primary has reported its application database yet.
//!
//! `status.pgmlVersion` keeps the last version reported while no primary reports.

use pgml_api::cluster::PgmlClusterStatus;
use pgml_api::common::condition as c;

use super::archiving::{Seen, set};
use crate::runtime::conditions::Stamp;

pub mod reason {
    pub const INSTALLED: &str = "Installed";
    pub const NOT_AVAILABLE: &str = "NotAvailable";
    pub const APP_DATABASE_FAILED: &str = "AppDatabaseFailed";
    pub const NO_REPORT: &str = "NoReport";
}

/// The condition's (status, reason, message), and the version to show.
pub fn judge(seen: &Seen) -> ((&'static str, &'static str, String), Option<String>) {
    let report = seen.report.as_ref().filter(|r| r.is_primary() && r.running);
    let Some(app) = report.and_then(|r| r.app.as_ref()) else {
        let who = seen.primary.as_deref().unwrap_or("no primary yet");
        let msg = format!("the primary ({who}) has not reported its application database yet");
        return ((c::UNKNOWN, reason::NO_REPORT, msg), None);
    };
    let db = &app.database;
    if let Some(e) = &app.error {
        let msg = format!("database {db}: {e}");
        return ((c::FALSE, reason::APP_DATABASE_FAILED, msg), None);
    }
    match &app.pgml {
        Some(v) => {
            let msg = format!("pgml {v} is created in database {db}");
            ((c::TRUE, reason::INSTALLED, msg), Some(v.clone()))
        }
        None => {
            let msg = format!(
                "the image ({}) offers no pgml extension (pg_available_extensions); database {db} is ready without it",
                seen.image
            );
            ((c::FALSE, reason::NOT_AVAILABLE, msg), None)
        }
    }
}

/// Sets `PgmlExtension` and `status.pgmlVersion`.
pub fn fill(seen: &Seen, observed: &PgmlClusterStatus, out: &mut PgmlClusterStatus, stamp: Stamp) {
    let (cond, version) = judge(seen);
    let keep = cond.1 == reason::NO_REPORT;
    out.conditions.retain(|x| x.type_ != c::PGML_EXTENSION);
    set(
        &mut out.conditions,
        &observed.conditions,
        c::PGML_EXTENSION,
        cond,
        stamp,
    );
    out.pgml_version = if keep {
        observed.pgml_version.clone()
    } else {
        version
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_api::instance::{AppReport, InstanceReport, Role};

    fn seen(app: Option<AppReport>) -> Seen {
        Seen {
            configured: false,
            primary: Some("main-1".into()),
            image: "img:1".into(),
            report: Some(InstanceReport {
                role: Role::Primary,
                running: true,
                app,
                ..Default::default()
            }),
        }
    }

    fn app(pgml: Option<&str>, error: Option<&str>) -> Option<AppReport> {
        Some(AppReport {
            database: "shop".into(),
            pgml: pgml.map(Into::into),
            error: error.map(Into::into),
        })
    }

    #[test]
    fn each_case_has_its_reason_and_says_why() {
        let ((s, r, m), v) = judge(&seen(app(Some("2.10.0"), None)));
        assert_eq!(
            (s, r, v.as_deref()),
            (c::TRUE, reason::INSTALLED, Some("2.10.0"))
        );
        assert!(m.contains("database shop"), "{m}");
        let ((s, r, m), v) = judge(&seen(app(None, None)));
        assert_eq!((s, r, v), (c::FALSE, reason::NOT_AVAILABLE, None));
        assert!(m.contains("img:1") && m.contains("ready without it"), "{m}");
        let ((s, r, m), _) = judge(&seen(app(None, Some("permission denied"))));
        assert_eq!((s, r), (c::FALSE, reason::APP_DATABASE_FAILED));
        assert!(m.contains("permission denied"), "{m}");
        let ((s, r, m), _) = judge(&seen(None));
        assert_eq!((s, r), (c::UNKNOWN, reason::NO_REPORT));
        assert!(m.contains("main-1"), "{m}");
        // A replica's report says nothing of it.
        let mut replica = seen(app(Some("2.10.0"), None));
        replica.report.as_mut().unwrap().role = Role::Replica;
        assert_eq!(judge(&replica).0.1, reason::NO_REPORT);
    }
}
