//! The agent's state machine: from what it observed of one ZfsPool on this node, the next
//! step. Pure (no I/O), so every branch is tested from plain values.

use pgml_api::zfspool::{Layout, MemberReplacement, ReclaimPolicy};

/// One member of the pool as the controller reported it and the agent found it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Member {
    pub index: i32,
    /// `status.volumes[i].volumeId` (the controller's).
    pub volume_id: Option<String>,
    /// `status.volumes[i].replacedVolumeId`: the volume this member's replaces, while the
    /// replacement is under way (the controller's).
    pub replaced_volume_id: Option<String>,
    /// `status.volumes[i].attachmentState == attached` (the controller's).
    pub attached: bool,
    /// The by-id device, when present (and its serial, where checkable, confirmed).
    pub device: Option<String>,
    /// What `blkid -p` found on the device (`zfs_member`, `ext4`…), if anything.
    pub signature: Option<String>,
}

/// A pool ZFS knows of: imported, or importable from the device folder.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeenPool {
    pub name: String,
    pub guid: Option<u64>,
    /// The EBS volume IDs of its members (from their by-id paths).
    pub volume_ids: Vec<String>,
}

/// The imported pool of this ZfsPool (same name or recorded GUID).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imported {
    pub guid: Option<u64>,
    pub health: String,
    /// Leaves of the pool: (volume ID from path or `was`, GUID or path to name it by, state).
    pub members: Vec<PoolMember>,
    pub resilvering: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolMember {
    pub volume_id: Option<String>,
    /// How `zpool replace` names it: the GUID for a member that is gone, else its path.
    pub handle: String,
    pub state: String,
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The pool's name on the node.
    pub pool_name: String,
    pub layout: Layout,
    pub deleting: bool,
    pub reclaim: ReclaimPolicy,
    pub replacement: MemberReplacement,
    /// `spec.restoreFrom` is set: the devices carry a copy of a pool never exported.
    pub restore: bool,
    /// `spec.volumes.count`.
    pub count: usize,
    pub members: Vec<Member>,
    pub recorded_guid: Option<u64>,
    pub imported: Option<Imported>,
    /// Pools `zpool import -d <dev dir>` lists (only looked at when none is imported).
    pub importable: Vec<SeenPool>,
    /// Datasets of the spec that do not exist yet (only when imported).
    pub missing_datasets: Vec<String>,
    /// Datasets of the spec mounted elsewhere than it asks (a restored copy keeps its
    /// source's mount points).
    pub misplaced_datasets: Vec<(String, Placement)>,
    /// A member's volume grew since the pool last expanded.
    pub grown: bool,
}

/// What is wrong with where a dataset is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Its `mountpoint` is not the one the spec asks for.
    Elsewhere,
    /// Right `mountpoint`, not mounted (a remount that failed, e.g. "dataset is busy").
    Unmounted,
}

/// Why nothing can be done yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The controller has not reported every member's volume ID yet.
    VolumeIds,
    /// Some volumes are not attached yet (indexes).
    Attachment(Vec<i32>),
    /// Attached, but the by-id device is not there (indexes).
    Devices(Vec<i32>),
}

/// The next step for one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Wait(Wait),
    /// Devices carry another pool's labels or a file system: never created over.
    Refuse {
        device: String,
        reason: String,
    },
    Import {
        guid: u64,
        force: bool,
    },
    Create,
    CreateDatasets(Vec<String>),
    /// `zfs set mountpoint=` where the spec asks, or `zfs mount` where it already points.
    Mount(Vec<(String, Placement)>),
    /// `zpool online -e` every member.
    Expand,
    /// `zpool replace <pool> <old> <new>`.
    Replace {
        index: i32,
        old: String,
        new: String,
    },
    /// Imported and as the spec asks: report.
    Steady,
    Export,
    Destroy,
    /// Deleting and nothing is (any longer) imported.
    Released,
}

/// The next step.
pub fn decide(o: &Observed) -> Action {
    if o.deleting {
        return match (&o.imported, o.reclaim) {
            (None, _) => Action::Released,
            // Never export or destroy a same-named pool that is not ours.
            (Some(imp), _) if not_ours(o, imp).is_some() => Action::Released,
            (Some(_), ReclaimPolicy::Retain) => Action::Export,
            (Some(_), ReclaimPolicy::Delete) => Action::Destroy,
        };
    }
    if let Some(imp) = &o.imported {
        if let Some(refusal) = not_ours(o, imp) {
            return refusal;
        }
        if !o.missing_datasets.is_empty() {
            return Action::CreateDatasets(o.missing_datasets.clone());
        }
        if !o.misplaced_datasets.is_empty() {
            return Action::Mount(o.misplaced_datasets.clone());
        }
        if let Some(r) = replacement(o, imp) {
            return r;
        }
        if o.grown {
            return Action::Expand;
        }
        return Action::Steady;
    }
    if o.members.len() < o.count || o.members.iter().any(|m| m.volume_id.is_none()) {
        return Action::Wait(Wait::VolumeIds);
    }
    let unattached: Vec<i32> = o
        .members
        .iter()
        .filter(|m| !m.attached)
        .map(|m| m.index)
        .collect();
    if !unattached.is_empty() {
        return Action::Wait(Wait::Attachment(unattached));
    }
    let absent: Vec<i32> = o
        .members
        .iter()
        .filter(|m| m.device.is_none())
        .map(|m| m.index)
        .collect();
    if !absent.is_empty() {
        return Action::Wait(Wait::Devices(absent));
    }
    build(o)
}

/// A pool imported under our name that is not ours: not our recorded GUID, and none of its
/// members is one of our volumes (another pool of the same name on this node).
fn not_ours(o: &Observed, imp: &Imported) -> Option<Action> {
    if o.recorded_guid.is_some() && o.recorded_guid == imp.guid {
        return None;
    }
    let ours = |v: &Option<String>| {
        o.members
            .iter()
            .any(|m| m.volume_id.is_some() && m.volume_id == *v)
    };
    if imp.members.iter().any(|m| ours(&m.volume_id)) {
        return None;
    }
    let device = imp
        .members
        .first()
        .map_or_else(|| o.pool_name.clone(), |m| m.handle.clone());
    Some(Action::Refuse {
        device,
        reason: format!(
            "belongs to another pool named {} already imported on this node (GUID {})",
            o.pool_name,
            imp.guid.map_or("unknown".into(), |g| g.to_string())
        ),
    })
}

/// All devices present, nothing imported: import, refuse or create.
fn build(o: &Observed) -> Action {
    let ours: Vec<&str> = o
        .members
        .iter()
        .filter_map(|m| m.volume_id.as_deref())
        .collect();
    let device_of = |vol: &str| {
        o.members
            .iter()
            .find(|m| m.volume_id.as_deref() == Some(vol))
            .and_then(|m| m.device.clone())
            .unwrap_or_else(|| vol.to_string())
    };
    for p in &o.importable {
        let Some(shared) = p.volume_ids.iter().find(|v| ours.contains(&v.as_str())) else {
            continue;
        };
        // Ours: the GUID we recorded; or, before any was recorded, our name (a restart
        // between `zpool create` and the first status write); or any pool on exactly our
        // volumes when restoring (a copy keeps its source's name and GUID).
        let ours_by_identity = match o.recorded_guid {
            Some(g) => p.guid == Some(g),
            None => o.restore || p.name == o.pool_name,
        };
        let members = match (ours_by_identity, o.recorded_guid) {
            // Only a pool the status recorded can be in the middle of a replacement.
            (true, Some(_)) => compare_members(o, &p.volume_ids),
            (true, None) => exactly(&ours, &p.volume_ids),
            (false, _) => Err(String::new()),
        };
        match (members, p.guid) {
            (Ok(()), Some(guid)) => {
                return Action::Import {
                    guid,
                    force: o.restore,
                };
            }
            (Err(why), _) if ours_by_identity && !why.is_empty() => {
                return Action::Refuse {
                    device: device_of(shared),
                    reason: format!(
                        "belongs to this pool ({}, GUID {}) but {why}",
                        p.name,
                        p.guid.map_or("unknown".into(), |g| g.to_string())
                    ),
                };
            }
            _ => {}
        }
        return Action::Refuse {
            device: device_of(shared),
            reason: format!(
                "carries the labels of ZFS pool {} (GUID {}), not this pool's",
                p.name,
                p.guid.map_or("unknown".into(), |g| g.to_string())
            ),
        };
    }
    if let Some(m) = o.members.iter().find(|m| m.signature.is_some()) {
        let sig = m.signature.as_deref().unwrap_or_default();
        let device = m.device.clone().unwrap_or_default();
        let reason = if sig == "zfs_member" {
            "carries ZFS labels of a pool that cannot be imported here (active elsewhere or destroyed)".to_string()
        } else {
            format!("carries a {sig} file system")
        };
        return Action::Refuse { device, reason };
    }
    Action::Create
}

/// The volumes on disk are exactly `ours`.
fn exactly(ours: &[&str], on_disk: &[String]) -> Result<(), String> {
    let same = on_disk.len() == ours.len() && on_disk.iter().all(|v| ours.contains(&v.as_str()));
    if same { Ok(()) } else { Err(String::new()) }
}

/// Whether the pool's members on disk (`on_disk`, volume IDs) are the status's members,
/// allowing for one replacement under way: a member whose status records a
/// `replacedVolumeId` may show on disk as its old volume, its new one or both (the node
/// restarted before or during `zpool replace`; the agent then resumes it). Any other
/// difference, or more than one member differing, is an error that says which volumes
/// differ. The pool is known to be ours (its GUID is the recorded one).
fn compare_members(o: &Observed, on_disk: &[String]) -> Result<(), String> {
    let on = |v: &Option<String>| v.as_deref().is_some_and(|v| on_disk.iter().any(|d| d == v));
    let known: Vec<&str> = o
        .members
        .iter()
        .flat_map(|m| [m.volume_id.as_deref(), m.replaced_volume_id.as_deref()])
        .flatten()
        .collect();
    let strangers: Vec<&str> = on_disk
        .iter()
        .map(String::as_str)
        .filter(|v| !known.contains(v))
        .collect();
    if !strangers.is_empty() {
        return Err(format!(
            "its members on the devices include {}, which the status does not record",
            strangers.join(", ")
        ));
    }
    // Members not on disk exactly as the status says: (member, some volume of it is there).
    let differing: Vec<(&Member, bool)> = o
        .members
        .iter()
        .filter_map(|m| {
            let (new_on, old_on) = (on(&m.volume_id), on(&m.replaced_volume_id));
            (!new_on || old_on).then_some((m, new_on || old_on))
        })
        .collect();
    let describe = |m: &Member| {
        format!(
            "member {} ({})",
            m.index,
            m.volume_id.as_deref().unwrap_or("no volume")
        )
    };
    match differing.as_slice() {
        [] => Ok(()),
        [(m, true)] if m.replaced_volume_id.is_some() => Ok(()),
        [(m, _)] if m.replaced_volume_id.is_none() => Err(format!(
            "{} is not among its members on the devices, and no replacement of it is recorded",
            describe(m)
        )),
        [(m, _)] => Err(format!(
            "neither {} nor the volume it replaces ({}) is among its members on the devices",
            describe(m),
            m.replaced_volume_id.as_deref().unwrap_or_default()
        )),
        many => Err(format!(
            "its members on the devices differ from the status in {} members ({}); only the one member under replacement may differ",
            many.len(),
            many.iter()
                .map(|(m, _)| describe(m))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A raidz1 member whose volume the controller replaced: the old leaf (gone) and the new
/// device (present, not in the pool).
fn replacement(o: &Observed, imp: &Imported) -> Option<Action> {
    if o.layout != Layout::Raidz1 || o.replacement == MemberReplacement::Manual || imp.resilvering {
        return None;
    }
    let in_pool = |v: &str| {
        imp.members
            .iter()
            .any(|m| m.volume_id.as_deref() == Some(v))
    };
    let new = o.members.iter().find(|m| {
        m.attached && m.device.is_some() && m.volume_id.as_deref().is_some_and(|v| !in_pool(v))
    })?;
    let ours: Vec<&str> = o
        .members
        .iter()
        .filter_map(|m| m.volume_id.as_deref())
        .collect();
    // The old leaf: not ONLINE, or an EBS volume the controller no longer lists (it saw the
    // volume fail in EC2 before ZFS touched it: zfs-fuse, or a pool without I/O, still shows
    // the leaf ONLINE, and nothing else would make ZFS look).
    let old = imp.members.iter().find(|m| match m.volume_id.as_deref() {
        Some(v) => !ours.contains(&v),
        None => m.state != "ONLINE",
    })?;
    Some(Action::Replace {
        index: new.index,
        old: old.handle.clone(),
        new: new.device.clone()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: i32) -> Member {
        Member {
            index: i,
            volume_id: Some(format!("vol-0{i}")),
            attached: true,
            device: Some(format!(
                "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0{i}"
            )),
            signature: None,
            ..Default::default()
        }
    }

    fn base(layout: Layout, n: i32) -> Observed {
        Observed {
            pool_name: "tank".into(),
            layout,
            deleting: false,
            reclaim: ReclaimPolicy::Retain,
            replacement: MemberReplacement::Automatic,
            restore: false,
            count: n as usize,
            members: (0..n).map(member).collect(),
            recorded_guid: None,
            imported: None,
            importable: vec![],
            missing_datasets: vec![],
            misplaced_datasets: vec![],
            grown: false,
        }
    }

    fn imported(n: i32) -> Imported {
        Imported {
            guid: Some(7),
            health: "ONLINE".into(),
            members: (0..n)
                .map(|i| PoolMember {
                    volume_id: Some(format!("vol-0{i}")),
                    handle: format!("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0{i}"),
                    state: "ONLINE".into(),
                })
                .collect(),
            resilvering: false,
        }
    }

    fn seen(name: &str, guid: u64, vols: &[&str]) -> SeenPool {
        SeenPool {
            name: name.into(),
            guid: Some(guid),
            volume_ids: vols.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn waits_for_ids_then_attachment_then_devices() {
        let mut o = base(Layout::Raid0, 4);
        o.members.truncate(3);
        assert_eq!(decide(&o), Action::Wait(Wait::VolumeIds));
        let mut o = base(Layout::Raid0, 4);
        o.members[1].volume_id = None;
        assert_eq!(decide(&o), Action::Wait(Wait::VolumeIds));
        let mut o = base(Layout::Raid0, 4);
        o.members[2].attached = false;
        assert_eq!(decide(&o), Action::Wait(Wait::Attachment(vec![2])));
        let mut o = base(Layout::Raid0, 4);
        o.members[3].device = None;
        assert_eq!(decide(&o), Action::Wait(Wait::Devices(vec![3])));
    }

    #[test]
    fn creates_on_blank_devices() {
        assert_eq!(decide(&base(Layout::Raidz1, 5)), Action::Create);
    }

    #[test]
    fn adopts_an_imported_pool_and_resumes_datasets() {
        let mut o = base(Layout::Raid0, 4);
        o.imported = Some(imported(4));
        assert_eq!(decide(&o), Action::Steady);
        // A restart between create and datasets: the pool exists, datasets are missing.
        o.missing_datasets = vec!["pgwal".into()];
        assert_eq!(decide(&o), Action::CreateDatasets(vec!["pgwal".into()]));
        o.missing_datasets.clear();
        // A restored copy mounted where its source was.
        o.misplaced_datasets = vec![("pgdata".into(), Placement::Elsewhere)];
        assert_eq!(
            decide(&o),
            Action::Mount(vec![("pgdata".into(), Placement::Elsewhere)])
        );
        o.misplaced_datasets.clear();
        o.grown = true;
        assert_eq!(decide(&o), Action::Expand);
    }

    #[test]
    fn imports_own_pool_by_name_or_recorded_guid() {
        let vols = ["vol-00", "vol-01", "vol-02"];
        let mut o = base(Layout::Raidz1, 3);
        o.importable = vec![seen("other", 1, &["vol-99"]), seen("tank", 9, &vols)];
        assert_eq!(
            decide(&o),
            Action::Import {
                guid: 9,
                force: false
            }
        );
        o.recorded_guid = Some(9);
        o.importable = vec![seen("renamed", 9, &vols)];
        assert_eq!(
            decide(&o),
            Action::Import {
                guid: 9,
                force: false
            }
        );
    }

    /// A node that restarts during a replacement: the status records vol-09 for member 1,
    /// replacing vol-01; on disk the pool has the old volume (`zpool replace` not run yet),
    /// both (resilvering) or the new one (resilvered). Each imports, and the replacement
    /// then resumes; any other difference refuses, saying which.
    #[test]
    fn imports_its_pool_in_the_middle_of_a_replacement_and_resumes_it() {
        let mut o = base(Layout::Raidz1, 3);
        o.recorded_guid = Some(9);
        o.members[1].volume_id = Some("vol-09".into());
        o.members[1].replaced_volume_id = Some("vol-01".into());
        o.members[1].device = Some("/d/nvme-Amazon_Elastic_Block_Store_vol09".into());
        let import = Action::Import {
            guid: 9,
            force: false,
        };
        for disk in [
            &["vol-00", "vol-01", "vol-02"][..],
            &["vol-00", "vol-01", "vol-09", "vol-02"],
            &["vol-00", "vol-09", "vol-02"],
        ] {
            o.importable = vec![seen("tank", 9, disk)];
            assert_eq!(decide(&o), import, "{disk:?}");
        }
        // Imported with the old member UNAVAIL: the replacement resumes.
        let mut after = o.clone();
        after.importable.clear();
        let mut imp = imported(3);
        imp.guid = Some(9);
        imp.health = "DEGRADED".into();
        imp.members[1].state = "UNAVAIL".into();
        imp.members[1].handle = "1234".into();
        after.imported = Some(imp);
        assert_eq!(
            decide(&after),
            Action::Replace {
                index: 1,
                old: "1234".into(),
                new: "/d/nvme-Amazon_Elastic_Block_Store_vol09".into()
            }
        );

        let refusal = |o: &Observed| match decide(o) {
            Action::Refuse { reason, .. } => reason,
            a => panic!("{a:?}"),
        };
        // Another member differs as well.
        o.importable = vec![seen("tank", 9, &["vol-00", "vol-01", "vol-07"])];
        let why = refusal(&o);
        assert!(
            why.contains("vol-07") && why.contains("not record"),
            "{why}"
        );
        o.importable = vec![seen("tank", 9, &["vol-00", "vol-09"])];
        let why = refusal(&o);
        assert!(
            why.contains("member 2 (vol-02)") && why.contains("no replacement"),
            "{why}"
        );
        o.importable = vec![seen("tank", 9, &["vol-00", "vol-01"])];
        let why = refusal(&o);
        assert!(
            why.contains("2 members") && why.contains("member 2 (vol-02)"),
            "{why}"
        );
        // Neither the new volume nor the old one.
        o.importable = vec![seen("tank", 9, &["vol-00", "vol-02"])];
        let why = refusal(&o);
        assert!(why.contains("neither member 1 (vol-09)"), "{why}");
        assert!(why.contains("vol-01"), "{why}");
        // Two members differ: one under replacement is all that may.
        let mut two = o.clone();
        two.members[2].volume_id = Some("vol-08".into());
        two.members[2].replaced_volume_id = Some("vol-02".into());
        two.importable = vec![seen("tank", 9, &["vol-00", "vol-01", "vol-02"])];
        let why = refusal(&two);
        assert!(why.contains("2 members"), "{why}");
        // The old volume without a replacement recorded is not ours.
        let mut plain = base(Layout::Raidz1, 3);
        plain.recorded_guid = Some(9);
        plain.members[1].volume_id = Some("vol-09".into());
        plain.importable = vec![seen("tank", 9, &["vol-00", "vol-01", "vol-02"])];
        let why = refusal(&plain);
        assert!(why.contains("vol-01"), "{why}");
        // A pool of another GUID on these volumes stays someone else's.
        o.importable = vec![seen("tank", 4, &["vol-00", "vol-01", "vol-02"])];
        assert!(refusal(&o).contains("not this pool's"));
    }

    #[test]
    fn restore_imports_the_copy_with_force() {
        let mut o = base(Layout::Raidz1, 3);
        o.restore = true;
        o.importable = vec![seen("source", 5, &["vol-00", "vol-01", "vol-02"])];
        assert_eq!(
            decide(&o),
            Action::Import {
                guid: 5,
                force: true
            }
        );
    }

    #[test]
    fn refuses_foreign_labels_naming_the_device() {
        let mut o = base(Layout::Raid0, 2);
        o.importable = vec![seen("someone", 3, &["vol-01", "vol-77"])];
        match decide(&o) {
            Action::Refuse { device, reason } => {
                assert!(device.ends_with("vol01"), "{device}");
                assert!(reason.contains("someone"), "{reason}");
            }
            a => panic!("{a:?}"),
        }
        // Same name but another GUID than the one recorded: not ours either.
        let mut o = base(Layout::Raid0, 2);
        o.recorded_guid = Some(1);
        o.importable = vec![seen("tank", 2, &["vol-00", "vol-01"])];
        assert!(matches!(decide(&o), Action::Refuse { .. }));
        // Our name, but only on part of the devices.
        let mut o = base(Layout::Raid0, 2);
        o.importable = vec![seen("tank", 2, &["vol-00"])];
        assert!(matches!(decide(&o), Action::Refuse { .. }));
    }

    #[test]
    fn refuses_file_systems_and_unimportable_zfs_labels() {
        let mut o = base(Layout::Raid0, 3);
        o.members[1].signature = Some("ext4".into());
        match decide(&o) {
            Action::Refuse { device, reason } => {
                assert!(device.ends_with("vol01"));
                assert!(reason.contains("ext4"));
            }
            a => panic!("{a:?}"),
        }
        o.members[1].signature = Some("zfs_member".into());
        assert!(matches!(decide(&o), Action::Refuse { .. }));
    }

    #[test]
    fn never_adopts_a_same_named_pool_on_other_volumes() {
        let mut o = base(Layout::Raid0, 2);
        let mut imp = imported(2);
        for m in &mut imp.members {
            m.volume_id = Some("vol-99".into());
        }
        o.imported = Some(imp);
        assert!(matches!(decide(&o), Action::Refuse { .. }));
        let mut d = o.clone();
        d.deleting = true;
        d.reclaim = ReclaimPolicy::Delete;
        assert_eq!(decide(&d), Action::Released, "never destroys another pool");
        // Ours by the recorded GUID even if members were all replaced since.
        o.recorded_guid = Some(7);
        assert_eq!(decide(&o), Action::Steady);
    }

    #[test]
    fn deletion() {
        let mut o = base(Layout::Raid0, 2);
        o.deleting = true;
        assert_eq!(
            decide(&o),
            Action::Released,
            "never built: released at once"
        );
        o.imported = Some(imported(2));
        assert_eq!(decide(&o), Action::Export);
        o.reclaim = ReclaimPolicy::Delete;
        assert_eq!(decide(&o), Action::Destroy);
        // Deletion wins over anything else, devices missing included.
        o.members[0].device = None;
        o.missing_datasets = vec!["pgdata".into()];
        assert_eq!(decide(&o), Action::Destroy);
    }

    #[test]
    fn replaces_a_lost_raidz1_member_with_the_new_volume() {
        let mut o = base(Layout::Raidz1, 3);
        let mut imp = imported(3);
        imp.health = "DEGRADED".into();
        imp.members[1].state = "UNAVAIL".into();
        imp.members[1].handle = "1234".into();
        o.imported = Some(imp.clone());
        // Same volume still recorded: nothing to replace with yet.
        assert_eq!(decide(&o), Action::Steady);
        // The controller attached vol-09 for index 1.
        o.members[1].volume_id = Some("vol-09".into());
        o.members[1].device = Some("/d/nvme-Amazon_Elastic_Block_Store_vol09".into());
        assert_eq!(
            decide(&o),
            Action::Replace {
                index: 1,
                old: "1234".into(),
                new: "/d/nvme-Amazon_Elastic_Block_Store_vol09".into()
            }
        );
        // Also when ZFS has not noticed yet (the leaf still ONLINE): its volume is no longer
        // one of ours. A leaf without a volume ID must not be ONLINE to be replaced.
        let mut p = o.clone();
        p.imported.as_mut().unwrap().members[1].state = "ONLINE".into();
        assert!(matches!(decide(&p), Action::Replace { index: 1, .. }));
        p.imported.as_mut().unwrap().members[1].volume_id = None;
        assert_eq!(decide(&p), Action::Steady);
        // Not while its device is missing, not while resilvering, not when manual.
        let mut p = o.clone();
        p.members[1].device = None;
        assert_eq!(decide(&p), Action::Steady);
        let mut p = o.clone();
        p.imported.as_mut().unwrap().resilvering = true;
        assert_eq!(decide(&p), Action::Steady);
        let mut p = o.clone();
        p.replacement = MemberReplacement::Manual;
        assert_eq!(decide(&p), Action::Steady);
        // raid0 never replaces: the pool is FAULTED and must come back from a snapshot.
        let mut p = o.clone();
        p.layout = Layout::Raid0;
        assert_eq!(decide(&p), Action::Steady);
    }
}
