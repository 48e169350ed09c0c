//! The hold record: one JSON file per snapshot UID in the agent's state directory, written
//! before the node is touched and updated before each step, so that an agent that died at
//! any line knows on restart what it did and undoes it (docs/design/ebssnapshot.md).

use std::io::Write;
use std::path::{Path, PathBuf};

use pgml_api::snapshot::{EbsSnapshot, HoldState};
use serde::{Deserialize, Serialize};

use super::datadir::STANDBY_SIGNAL;

/// standby.signal as the hold left it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Stamp {
    /// Nothing stamped (yet, or `standbySignal: Never`, or no data directory).
    #[default]
    None,
    /// We create (or created) it: recorded before the file is written, removed at release.
    Ours { path: String },
    /// It was there before us: the source is a standby; never removed.
    AlreadyPresent { path: String },
}

/// The freeze, recorded before the guard is started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Freeze {
    pub mount: String,
    /// The guard's PID once started (it is also found in /proc by the snapshot UID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_pid: Option<u32>,
    /// When the guard reported `frozen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_at_ms: Option<i64>,
}

/// How a hold ended on the node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Released,
    Expired,
    Failed,
}

/// The node side is undone; only the status write (and then the record's removal) is left.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Undone {
    pub end: End,
    pub at_ms: i64,
    pub signal_removed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_millis: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub held_at_ms: i64,
    /// `held_at + spec.freezeTimeoutSeconds`: everything is undone by then, whoever is alive.
    pub deadline_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    #[serde(default)]
    pub stamp: Stamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<Freeze>,
    /// `hold: Held` was applied.
    #[serde(default)]
    pub held: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone: Option<Undone>,
}

impl Record {
    pub fn new(uid: &str, namespace: &str, name: &str, now_ms: i64, timeout_s: i32) -> Record {
        Record {
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            held_at_ms: now_ms,
            deadline_ms: now_ms + i64::from(timeout_s.max(1)) * 1000,
            mount_path: None,
            stamp: Stamp::None,
            freeze: None,
            held: false,
            undone: None,
        }
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.deadline_ms
    }

    /// The record of a hold rebuilt from the status the agent wrote (`hold: Held`), when the
    /// state directory lost it (wiped, or not kept across a node's reboot): what it says is
    /// enough to undo the hold in time — the standby.signal it created, the freeze.
    pub fn from_status(obj: &EbsSnapshot) -> Option<Record> {
        let st = obj.status.as_ref()?;
        let h = st.hold.as_ref().filter(|h| h.state == HoldState::Held)?;
        let held_at_ms = h.held_at.as_ref()?.0.as_millisecond();
        let deadline_ms = h.deadline.as_ref()?.0.as_millisecond();
        let signal = |dir: &Option<String>| {
            dir.as_ref()
                .map(|d| format!("{}/{STANDBY_SIGNAL}", d.trim_end_matches('/')))
        };
        let stamp = match &st.standby_signal {
            Some(s) if s.already_present => Stamp::AlreadyPresent {
                path: signal(&s.path)?,
            },
            Some(s) if s.stamped && !s.removed => Stamp::Ours {
                path: signal(&s.path)?,
            },
            _ => Stamp::None,
        };
        let freeze = match (h.frozen, &h.mount_path) {
            (true, Some(m)) => Some(Freeze {
                mount: m.clone(),
                guard_pid: None,
                frozen_at_ms: Some(held_at_ms),
            }),
            (true, None) => return None,
            (false, _) => None,
        };
        Some(Record {
            uid: obj.metadata.uid.clone()?,
            namespace: obj.metadata.namespace.clone()?,
            name: obj.metadata.name.clone()?,
            held_at_ms,
            deadline_ms,
            mount_path: h.mount_path.clone(),
            stamp,
            freeze,
            held: true,
            undone: None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("hold record {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("hold record {path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{0:?} is not a Kubernetes UID")]
    BadUid(String),
}

/// The state directory (`--state-dir`).
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// UIDs name files: only what a UID is made of, so no name escapes the folder.
fn valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, uid: &str) -> Result<PathBuf, StoreError> {
        if !valid_uid(uid) {
            return Err(StoreError::BadUid(uid.to_string()));
        }
        Ok(self.dir.join(format!("{uid}.json")))
    }

    /// Where the guard of `uid` writes what it prints (`frozen`, `thawed <ms>`).
    pub fn guard_output(&self, uid: &str) -> Result<PathBuf, StoreError> {
        if !valid_uid(uid) {
            return Err(StoreError::BadUid(uid.to_string()));
        }
        Ok(self.dir.join(format!("{uid}.guard")))
    }

    pub fn read(&self, uid: &str) -> Result<Option<Record>, StoreError> {
        let path = self.path(uid)?;
        read_file(&path)
    }

    /// Atomically (temporary file, fsync, rename, fsync of the folder): a crash leaves the
    /// old record or the new one, never half of one.
    pub fn write(&self, r: &Record) -> Result<(), StoreError> {
        let path = self.path(&r.uid)?;
        let tmp = self.dir.join(format!(".{}.json.tmp", r.uid));
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let body = serde_json::to_vec_pretty(r).map_err(|source| StoreError::Json {
            path: path.display().to_string(),
            source,
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        sync_dir(&self.dir).map_err(io)
    }

    /// Removes the record and the guard's output; already gone is fine.
    pub fn remove(&self, uid: &str) -> Result<(), StoreError> {
        let path = self.path(uid)?;
        for p in [path.clone(), self.guard_output(uid)?] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        path: p.display().to_string(),
                        source,
                    });
                }
            }
        }
        sync_dir(&self.dir).map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Every record's UID (from the file names).
    pub fn uids(&self) -> Result<Vec<String>, StoreError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.display().to_string(),
            source,
        })?;
        let mut out: Vec<String> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let uid = name.strip_suffix(".json")?;
                valid_uid(uid).then(|| uid.to_string())
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

fn read_file(path: &Path) -> Result<Option<Record>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| StoreError::Json {
                path: path.display().to_string(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// fsync of a folder, so that a file created, renamed or removed in it stays so.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UID: &str = "0b6f7c1e-3c1a-4f5e-9d7a-1a2b3c4d5e6f";

    #[test]
    fn record_round_trips_and_reads_as_documented() {
        let mut r = Record::new(UID, "db", "snap-1", 1_000, 10);
        assert_eq!(r.deadline_ms, 11_000);
        assert!(!r.expired(10_999));
        assert!(r.expired(11_000));
        r.stamp = Stamp::Ours {
            path: "/m/pgdata/standby.signal".into(),
        };
        r.freeze = Some(Freeze {
            mount: "/m".into(),
            guard_pid: Some(42),
            frozen_at_ms: None,
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["stamp"],
            json!({"kind": "ours", "path": "/m/pgdata/standby.signal"})
        );
        assert_eq!(v["freeze"], json!({"mount": "/m", "guardPid": 42}));
        assert_eq!(v["deadlineMs"], 11_000);
        assert!(v.get("undone").is_none());
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        // An older, smaller record (written right before the first step) still reads.
        let minimal: Record = serde_json::from_value(json!({
            "uid": UID, "namespace": "db", "name": "s", "heldAtMs": 1, "deadlineMs": 2,
        }))
        .unwrap();
        assert_eq!(minimal.stamp, Stamp::None);
        assert!(!minimal.held);
    }

    #[test]
    fn a_lost_record_is_rebuilt_from_the_held_status() {
        let obj = |status: serde_json::Value| -> EbsSnapshot {
            serde_json::from_value(json!({
                "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
                "metadata": {"name": "s", "namespace": "db", "uid": UID},
                "spec": {"source": {"persistentVolumeClaim": {"name": "p"}}},
                "status": status,
            }))
            .unwrap()
        };
        let held = json!({"state": "Held", "heldAt": "2027-01-15T08:00:00Z",
                          "deadline": "2027-01-15T08:00:10Z", "frozen": true,
                          "mountPath": "/k/globalmount"});
        let r = Record::from_status(&obj(json!({
            "phase": "Capturing", "hold": held,
            "standbySignal": {"stamped": true, "removed": false,
                              "path": "/k/globalmount/pgdata", "alreadyPresent": false},
        })))
        .unwrap();
        assert_eq!(
            r.stamp,
            Stamp::Ours {
                path: "/k/globalmount/pgdata/standby.signal".into()
            }
        );
        assert_eq!(r.deadline_ms - r.held_at_ms, 10_000);
        assert_eq!(r.freeze.as_ref().unwrap().mount, "/k/globalmount");
        assert!(r.held && r.undone.is_none());
        assert_eq!((r.uid.as_str(), r.namespace.as_str()), (UID, "db"));
        // A standby's own signal stays the standby's.
        let r = Record::from_status(&obj(json!({
            "hold": held,
            "standbySignal": {"stamped": true, "removed": false, "path": "/d",
                              "alreadyPresent": true},
        })))
        .unwrap();
        assert!(matches!(r.stamp, Stamp::AlreadyPresent { .. }));
        // Nothing to rebuild from a hold that is not Held, or from no hold.
        let mut ended = held.clone();
        ended["state"] = json!("Released");
        assert_eq!(Record::from_status(&obj(json!({"hold": ended}))), None);
        assert_eq!(
            Record::from_status(&obj(json!({"phase": "Preparing"}))),
            None
        );
    }

    #[test]
    fn store_writes_reads_lists_and_removes() {
        let dir = std::env::temp_dir().join(format!("pgml-hold-store-{}", std::process::id()));
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.read(UID).unwrap(), None);
        let r = Record::new(UID, "db", "s", 5, 3);
        s.write(&r).unwrap();
        std::fs::write(s.guard_output(UID).unwrap(), "frozen\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        assert_eq!(s.uids().unwrap(), vec![UID.to_string()]);
        assert_eq!(s.read(UID).unwrap(), Some(r));
        s.remove(UID).unwrap();
        s.remove(UID).unwrap();
        assert!(s.uids().unwrap().is_empty());
        assert!(!s.guard_output(UID).unwrap().exists());
        assert!(matches!(s.read("../etc"), Err(StoreError::BadUid(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
