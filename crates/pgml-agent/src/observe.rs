//! Reading the node: devices, the imported pool, importable pools, datasets. Produces the
//! [`Observed`] that [`crate::decide`] judges, plus the raw facts the status report needs.

use std::collections::BTreeMap;

use pgml_api::zfspool::{ZfsPool, ZfsPoolStatus};
use pgml_zfs::{Dialect, HostPath, PoolListEntry, PoolName, PoolStatus, ZfsError, command};

use crate::decide::{Imported, Member, Observed, Placement, PoolMember, SeenPool};
use crate::devices::{Discovery, Lookup, blkid_probe, parse_blkid_type};
use crate::exec::Output;
use crate::reconcile::{Ctx, Error, relative_mount};

/// What was read, beyond what `decide` needs.
#[derive(Clone, Debug)]
pub struct Facts {
    pub observed: Observed,
    /// The imported pool's name (ours, or the one found by our recorded GUID).
    pub imported_name: Option<PoolName>,
    pub list: Option<PoolListEntry>,
    pub status: Option<PoolStatus>,
    /// Indexes whose link exists but whose NVMe serial names another volume.
    pub stale: Vec<(i32, String)>,
    /// `(index, volume ID, size GiB)` as the controller reported them.
    pub sizes: Vec<(i32, Option<i64>)>,
    /// The spec's datasets where ZFS has them: `(name, mount point, mounted)`.
    pub datasets: Vec<(String, String, bool)>,
}

/// Everything the agent reads of the node for `pool` (ZFS name `name`), in one go.
pub async fn observe(pool: &ZfsPool, ctx: &Ctx, name: &PoolName) -> Result<Facts, Error> {
    let spec = &pool.spec.template;
    let status = pool.status.clone().unwrap_or_default();
    let deleting = pool.metadata.deletion_timestamp.is_some();
    let count = spec.volumes.count.max(0) as usize;
    let MemberFacts {
        mut members,
        stale,
        sizes,
    } = expected_members(&status, count, &ctx.discovery);
    let recorded_guid = status.pool_guid.as_deref().and_then(|g| g.parse().ok());
    let list = listed_pool(ctx, name, recorded_guid).await?;
    let on_node = match &list {
        Some(l) => imported_pool(pool, ctx, l).await?,
        None => OnNode::default(),
    };
    let all_present = count > 0 && members.iter().all(|m| m.device.is_some() && m.attached);
    let importable = if on_node.imported.is_none() && all_present && !deleting {
        importable_pools(ctx, &mut members).await?
    } else {
        Vec::new()
    };
    let grown = on_node.imported.is_some() && ctx.sizes_changed(pool, &sizes);
    Ok(Facts {
        observed: Observed {
            pool_name: name.to_string(),
            layout: spec.layout,
            deleting,
            reclaim: spec.reclaim_policy,
            replacement: spec.member_replacement,
            restore: pool.spec.restore_from.is_some(),
            count,
            members,
            recorded_guid,
            imported: on_node.imported,
            importable,
            missing_datasets: on_node.datasets.missing,
            misplaced_datasets: on_node.datasets.misplaced,
            grown,
        },
        imported_name: on_node.name,
        list,
        status: on_node.status,
        stale,
        sizes,
        datasets: on_node.datasets.found,
    })
}

/// The members the spec asks for, as the controller reported their volumes and the node
/// shows their devices.
struct MemberFacts {
    members: Vec<Member>,
    /// See [`Facts::stale`].
    stale: Vec<(i32, String)>,
    /// See [`Facts::sizes`].
    sizes: Vec<(i32, Option<i64>)>,
}

/// Each of the `count` members: its volume from the stored status, its device found by
/// the volume ID (a link to another volume's device is stale, no device).
fn expected_members(status: &ZfsPoolStatus, count: usize, discovery: &Discovery) -> MemberFacts {
    let mut members = Vec::new();
    let mut stale = Vec::new();
    let mut sizes = Vec::new();
    for i in 0..count as i32 {
        let v = status.volumes.iter().find(|v| v.index == i);
        let volume_id = v.and_then(|v| v.volume_id.clone());
        let device = match volume_id.as_deref().map(|id| discovery.find(id)) {
            Some(Lookup::Found { path, .. }) => Some(path.to_string_lossy().into_owned()),
            Some(Lookup::Stale { serial, .. }) => {
                stale.push((i, serial));
                None
            }
            _ => None,
        };
        sizes.push((i, v.and_then(|v| v.size_gib)));
        members.push(Member {
            index: i,
            replaced_volume_id: v.and_then(|v| v.replaced_volume_id.clone()),
            attached: v.and_then(|v| v.attachment_state.as_deref()) == Some("attached"),
            volume_id,
            device,
            signature: None,
        });
    }
    MemberFacts {
        members,
        stale,
        sizes,
    }
}

/// The pool `zpool list` shows by our name, else by the GUID the status recorded.
async fn listed_pool(
    ctx: &Ctx,
    name: &PoolName,
    recorded_guid: Option<u64>,
) -> Result<Option<PoolListEntry>, Error> {
    let listed = pgml_zfs::parse_zpool_list(
        &ctx.runner
            .ok(&command::list_pools(ctx.dialect, None))
            .await?,
        command::LIST_COLUMNS,
    )?;
    Ok(listed
        .iter()
        .find(|p| p.name == name.as_str())
        .or_else(|| {
            listed
                .iter()
                .find(|p| recorded_guid.is_some() && p.guid == recorded_guid)
        })
        .cloned())
}

/// What the node shows of an imported pool; all empty when none is.
#[derive(Default)]
struct OnNode {
    imported: Option<Imported>,
    /// See [`Facts::imported_name`].
    name: Option<PoolName>,
    status: Option<PoolStatus>,
    datasets: DatasetFacts,
}

/// The imported pool `l`: its `zpool status`, and, unless it is being deleted, where its
/// datasets are.
async fn imported_pool(pool: &ZfsPool, ctx: &Ctx, l: &PoolListEntry) -> Result<OnNode, Error> {
    let n = PoolName::new(l.name.clone())?;
    let st = status_of(
        &n,
        &ctx.runner
            .ok(&command::status(ctx.dialect, Some(&n)))
            .await?,
    )?;
    let datasets = if pool.metadata.deletion_timestamp.is_none() {
        let have = datasets(ctx, &n).await?;
        dataset_facts(pool, &n, altroot_prefix(l), &have)
    } else {
        DatasetFacts::default()
    };
    Ok(OnNode {
        imported: Some(imported_from(l, &st)),
        name: Some(n),
        status: Some(st),
        datasets,
    })
}

/// The prefix ZFS shows mount points under: the pool's altroot, when it has one.
fn altroot_prefix(l: &PoolListEntry) -> &str {
    l.altroot
        .as_deref()
        .filter(|r| r.starts_with('/'))
        .unwrap_or("")
        .trim_end_matches('/')
}

/// The spec's datasets against what ZFS has: which are missing, which are not mounted
/// where the spec wants them, and the ones to report.
#[derive(Default)]
struct DatasetFacts {
    missing: Vec<String>,
    misplaced: Vec<(String, Placement)>,
    /// See [`Facts::datasets`].
    found: Vec<(String, String, bool)>,
}

/// Each dataset of the spec in `have` (the pool `n`'s, mount points under `root`).
fn dataset_facts(
    pool: &ZfsPool,
    n: &PoolName,
    root: &str,
    have: &BTreeMap<String, Mounted>,
) -> DatasetFacts {
    let mut facts = DatasetFacts::default();
    for d in &pool.spec.template.datasets {
        let want = format!("{root}{}", relative_mount(pool, d));
        if let Some(m) = have.get(&format!("{n}/{}", d.name)) {
            // Reported only where the spec wants it: a pool restored from a
            // snapshot is imported with its source's mount points until they are
            // set, and a PersistentVolume made from that passing path would point
            // at the source's folder for ever (local.path cannot change).
            let placed = m.mountpoint == want;
            let path = if placed {
                m.mountpoint.clone()
            } else {
                "-".into()
            };
            facts
                .found
                .push((d.name.clone(), path, placed && m.mounted));
        }
        match have.get(&format!("{n}/{}", d.name)) {
            None => facts.missing.push(d.name.clone()),
            Some(m) if m.mountpoint != want => {
                facts.misplaced.push((d.name.clone(), Placement::Elsewhere))
            }
            Some(m) if !m.mounted => facts.misplaced.push((d.name.clone(), Placement::Unmounted)),
            Some(_) => {}
        }
    }
    facts
}

/// The pools `zpool import -d` finds among the devices, and what each member's device
/// carries (`blkid`): asked only when no pool is imported and every member is there.
async fn importable_pools(ctx: &Ctx, members: &mut [Member]) -> Result<Vec<SeenPool>, Error> {
    let dir = HostPath::new(ctx.discovery.dev_dir.to_string_lossy().into_owned())?;
    let out = ctx
        .runner
        .run(&command::list_importable(std::slice::from_ref(&dir)))
        .await?;
    let importable = importable_from(ctx.dialect, &out)?;
    for m in members {
        if let Some(dev) = &m.device {
            let out = ctx.runner.run(&blkid_probe(dev)).await?;
            m.signature = parse_blkid_type(&out.stdout);
        }
    }
    Ok(importable)
}

/// The pool `zpool status <name>` printed. Output without it is an error, never "not
/// imported": that would send the agent to import or create a pool that is there.
fn status_of(name: &PoolName, out: &str) -> Result<PoolStatus, Error> {
    pgml_zfs::parse_status(out)?
        .into_iter()
        .find(|p| p.name == name.as_str())
        .ok_or_else(|| {
            Error::Zfs(ZfsError::Parse {
                command: "zpool status",
                reason: format!("no pool {name} in the output"),
                line: out.lines().next().unwrap_or("").chars().take(200).collect(),
            })
        })
}

fn imported_from(l: &PoolListEntry, st: &PoolStatus) -> Imported {
    Imported {
        guid: l.guid,
        health: st.state.as_str().to_string(),
        members: st
            .members()
            .into_iter()
            .map(|v| PoolMember {
                volume_id: v.ebs_volume_id(),
                handle: match (v.guid(), v.path()) {
                    (Some(g), _) => g.to_string(),
                    (None, Some(p)) if v.name.starts_with('/') => p.to_string(),
                    _ => v.name.clone(),
                },
                state: v
                    .state
                    .as_ref()
                    .map_or("UNKNOWN", |s| s.as_str())
                    .to_string(),
            })
            .collect(),
        // Also a scan line not read in full: it is not known to be over.
        resilvering: st.resilvering(),
    }
}

/// The pools `zpool import -d <dir>` lists ([`pgml_zfs::parse_import_answer`]: each
/// dialect's "none" is an answer, anything else without a pool an error).
fn importable_from(dialect: Dialect, out: &Output) -> Result<Vec<SeenPool>, ZfsError> {
    let pools = pgml_zfs::parse_import_answer(dialect, out.code, &out.stdout, &out.stderr)?;
    Ok(pools
        .into_iter()
        .map(|p| SeenPool {
            guid: p.id,
            volume_ids: p
                .members()
                .iter()
                .filter_map(|v| v.ebs_volume_id())
                .collect(),
            name: p.name,
        })
        .collect())
}

/// A dataset's mount as `zfs list` shows it.
#[derive(Clone, Debug)]
struct Mounted {
    mountpoint: String,
    mounted: bool,
}

/// `zfs list -H -o name,mountpoint,mounted -r <pool>`: the datasets and their mounts.
async fn datasets(ctx: &Ctx, pool: &PoolName) -> Result<BTreeMap<String, Mounted>, Error> {
    let c = pgml_zfs::Command::new(
        "zfs",
        [
            "list",
            "-H",
            "-o",
            "name,mountpoint,mounted",
            "-r",
            pool.as_str(),
        ],
    );
    let out = ctx.runner.ok(&c).await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t').map(str::trim);
            let (name, mountpoint, mounted) = (f.next()?, f.next()?, f.next()?);
            Some((
                name.to_string(),
                Mounted {
                    mountpoint: mountpoint.to_string(),
                    mounted: mounted == "yes",
                },
            ))
        })
        .collect())
}

/// `openzfs` or `zfs-fuse`, as `status.zfsDialect` spells it.
pub fn dialect_name(d: Dialect) -> &'static str {
    match d {
        Dialect::OpenZfs => "openzfs",
        Dialect::ZfsFuse => "zfs-fuse",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! public {
        ($f:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../pgml-zfs/tests/fixtures/public/",
                $f
            ))
        };
    }

    fn listed(name: &str) -> PoolListEntry {
        PoolListEntry {
            name: name.into(),
            size: None,
            allocated: None,
            free: None,
            health: pgml_zfs::Health::Online,
            guid: Some(7),
            altroot: None,
        }
    }

    fn output(code: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            code: Some(code),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn status_without_the_pool_is_an_error_not_an_absent_pool() {
        let name = PoolName::new("lwastor04").unwrap();
        let out = public!("openzfs-2.x-resilvered.txt");
        assert_eq!(status_of(&name, out).unwrap().name, "lwastor04");
        for out in ["", "no pools available\n", "garbage\n"] {
            assert!(status_of(&name, out).is_err(), "{out:?}");
        }
        let other = PoolName::new("tank").unwrap();
        assert!(status_of(&other, out).is_err());
    }

    #[test]
    fn a_scan_line_not_read_in_full_counts_as_resilvering() {
        let done = public!("openzfs-2.x-resilvered.txt");
        let l = listed("lwastor04");
        let st = |out: &str| pgml_zfs::parse_status(out).unwrap().remove(0);
        assert!(!imported_from(&l, &st(done)).resilvering);
        // Cut inside the line: `decide` must not start a replacement meanwhile.
        let cut = &done[..done.find(" 17:21:34").unwrap()];
        assert!(imported_from(&l, &st(cut)).resilvering);
        let running = public!("openzfs-2.2.4-resilver-in-progress.txt");
        assert!(imported_from(&listed("merced216"), &st(running)).resilvering);
        let paused = public!("openzfs-2.3.1-scrub-paused.txt");
        assert!(!imported_from(&listed("tank1"), &st(paused)).resilvering);
    }

    #[test]
    fn no_importable_pool_is_an_answer_and_garbage_is_not() {
        // OpenZFS: exit 1, the sentence on stderr, nothing on stdout.
        let none = output(1, "", "no pools available to import\n");
        for d in [Dialect::OpenZfs, Dialect::ZfsFuse] {
            assert_eq!(importable_from(d, &none).unwrap(), vec![]);
            for out in [
                output(0, "", ""),
                output(1, "", "cannot discover pools: permission denied\n"),
                output(0, "garbage\n", ""),
            ] {
                assert!(importable_from(d, &out).is_err(), "{d:?} {out:?}");
            }
        }
        // zfs-fuse: exit 1 and not a word (its answer on the test bed); from OpenZFS that
        // silence is not an answer.
        let silent = output(1, "", "");
        assert_eq!(importable_from(Dialect::ZfsFuse, &silent).unwrap(), vec![]);
        assert!(importable_from(Dialect::OpenZfs, &silent).is_err());
        let listing = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../pgml-zfs/tests/fixtures/openzfs/import-list.txt"
        ));
        let seen = importable_from(Dialect::OpenZfs, &output(0, listing, "")).unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].volume_ids.len(), 5);
    }

    /// zfs-fuse's own listing of a raidz1 pool whose member 2 is gone (recorded live): a
    /// node that restarts after the controller recorded that member's replacement, before
    /// `zpool replace`, imports it (and resumes the replacement) rather than refusing.
    #[test]
    fn a_pool_listed_with_the_member_being_replaced_is_imported() {
        use crate::decide::{Action, decide};
        use pgml_api::zfspool::{Layout, MemberReplacement, ReclaimPolicy};
        let listing = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../pgml-zfs/tests/fixtures/zfs-fuse/import-list-degraded.txt"
        ));
        let seen = importable_from(Dialect::ZfsFuse, &output(0, listing, "")).unwrap();
        let vol = |i: i32| format!("vol-0abc0000000000{i:03}");
        let member = |i: i32, v: i32| Member {
            index: i,
            volume_id: Some(vol(v)),
            attached: true,
            device: Some(format!("/dev/disk/by-id/x{v}")),
            ..Default::default()
        };
        let mut o = Observed {
            pool_name: "tank".into(),
            layout: Layout::Raidz1,
            deleting: false,
            reclaim: ReclaimPolicy::Retain,
            replacement: MemberReplacement::Automatic,
            restore: false,
            count: 5,
            members: vec![
                member(0, 0),
                member(1, 1),
                member(2, 5),
                member(3, 3),
                member(4, 4),
            ],
            recorded_guid: seen[0].guid,
            imported: None,
            importable: seen,
            missing_datasets: vec![],
            misplaced_datasets: vec![],
            grown: false,
        };
        // Before: the status differs from the disks at member 2 and nothing says why.
        assert!(
            matches!(decide(&o), Action::Refuse { .. }),
            "{:?}",
            decide(&o)
        );
        o.members[2].replaced_volume_id = Some(vol(2));
        assert_eq!(
            decide(&o),
            Action::Import {
                guid: 14370293499042966157,
                force: false
            }
        );
    }

    #[test]
    fn datasets_are_reported_only_where_the_spec_wants_them() {
        let pool: ZfsPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "tank", "namespace": "db"},
            "spec": {"nodeName": "n1", "volumes": {"count": 2, "sizeGiB": 10},
                     "datasets": [{"name": "pgdata"}, {"name": "pgwal"},
                                  {"name": "extra", "mountPoint": "/x/y"}, {"name": "gone"}]},
        }))
        .unwrap();
        let mounted = |path: &str, mounted| Mounted {
            mountpoint: path.into(),
            mounted,
        };
        let have = BTreeMap::from([
            ("tank/pgdata".to_string(), mounted("/mnt/tank/pgdata", true)),
            ("tank/pgwal".to_string(), mounted("/elsewhere", true)),
            ("tank/extra".to_string(), mounted("/mnt/x/y", false)),
        ]);
        let f = dataset_facts(&pool, &PoolName::new("tank").unwrap(), "/mnt", &have);
        assert_eq!(f.missing, ["gone"]);
        assert_eq!(
            f.misplaced,
            [
                ("pgwal".to_string(), Placement::Elsewhere),
                ("extra".to_string(), Placement::Unmounted)
            ]
        );
        let found: Vec<_> = f
            .found
            .iter()
            .map(|(n, p, m)| (n.as_str(), p.as_str(), *m))
            .collect();
        assert_eq!(
            found,
            [
                ("pgdata", "/mnt/tank/pgdata", true),
                ("pgwal", "-", false),
                ("extra", "/mnt/x/y", false)
            ]
        );
    }

    #[test]
    fn mount_points_show_under_an_absolute_altroot_only() {
        let mut l = listed("tank");
        assert_eq!(altroot_prefix(&l), "");
        l.altroot = Some("/mnt/restore/".into());
        assert_eq!(altroot_prefix(&l), "/mnt/restore");
        l.altroot = Some("-".into());
        assert_eq!(altroot_prefix(&l), "");
    }
}
