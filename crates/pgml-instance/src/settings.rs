//! Following the cluster's configuration while PostgreSQL runs: the kubelet updates the
//! ConfigMap's files in place (`PGML_CONFIG_DIR`); a change is applied with a reload, and
//! the parameters that need a restart to take effect (`pg_settings.pending_restart`) are
//! reported, for the operator to restart the instances one at a time.

use std::path::Path;

use crate::postgres::Pg;

/// The ConfigMap's files PostgreSQL reads (included or pointed at by the managed include).
pub const FILES: [&str; 3] = ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"];

/// What the files say now, as one value that changes when any of them does (a missing file
/// counts as empty). Only ever compared within this process.
pub fn digest(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in FILES {
        f.hash(&mut h);
        std::fs::read(dir.join(f)).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

/// What this process knows of the running server's configuration.
#[derive(Debug, Default)]
pub struct Follow {
    /// The files' digest when the server last (re)loaded them; None: not since it started.
    loaded: Option<u64>,
    /// The parameters the server reports as waiting for a restart, by name.
    pub pending_restart: Vec<String>,
}

impl Follow {
    /// Whether the server must reload for the files as they are now: once after each
    /// start (the files may have changed between its start and this look), then whenever
    /// they change.
    pub fn needs_reload(&self, now: u64) -> bool {
        self.loaded != Some(now)
    }

    /// The server stopped: the next one reads the files at its start.
    pub fn stopped(&mut self) {
        self.loaded = None;
        self.pending_restart.clear();
    }

    /// One look at a running, reachable server: reload when the files changed, then read
    /// which parameters wait for a restart. Errors are returned, the state kept as it was
    /// (the next look tries again).
    pub async fn look(&mut self, pg: &Pg, dir: &Path) -> anyhow::Result<()> {
        let now = digest(dir);
        if self.needs_reload(now) {
            pg.reload().await?;
            if self.loaded.is_some() {
                tracing::info!("the cluster's configuration changed: reloaded");
            }
            self.loaded = Some(now);
        }
        let rows = pg
            .query("SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")
            .await?;
        let pending: Vec<String> = rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect();
        if pending != self.pending_restart && !pending.is_empty() {
            tracing::info!(parameters = ?pending, "parameters wait for a restart");
        }
        self.pending_restart = pending;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder removed at the end.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_digest_follows_every_file_postgresql_reads_and_nothing_else() {
        let root = std::env::temp_dir().join(format!("pgml-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dir = Dir(root);
        let d0 = digest(dir.path());
        std::fs::write(dir.path().join("postgresql.conf"), "work_mem = '4MB'\n").unwrap();
        let d1 = digest(dir.path());
        assert_ne!(d0, d1);
        std::fs::write(dir.path().join("pgbackrest.conf"), "[global]\n").unwrap();
        assert_eq!(digest(dir.path()), d1, "not a file PostgreSQL reads");
        std::fs::write(dir.path().join("pg_hba.conf"), "local all all peer\n").unwrap();
        let d2 = digest(dir.path());
        assert_ne!(d1, d2);
        assert_eq!(digest(dir.path()), d2, "stable");
        // The same bytes moved to another file are another configuration.
        std::fs::remove_file(dir.path().join("pg_hba.conf")).unwrap();
        std::fs::write(dir.path().join("pg_ident.conf"), "local all all peer\n").unwrap();
        assert_ne!(digest(dir.path()), d2);
    }

    #[test]
    fn a_reload_once_after_each_start_then_on_every_change() {
        let mut f = Follow::default();
        assert!(f.needs_reload(1), "after a start");
        f.loaded = Some(1);
        assert!(!f.needs_reload(1));
        assert!(f.needs_reload(2), "changed");
        f.pending_restart = vec!["shared_buffers".into()];
        f.stopped();
        assert!(f.needs_reload(1) && f.pending_restart.is_empty());
    }
}
