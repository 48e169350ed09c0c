//! Reading the node: devices, the imported pool, importable pools, datasets. Produces the
//! [`Observed`] that [`crate::decide`] judges, plus the raw facts the status report needs.

use std::collections::BTreeMap;

use pgml_api::zfspool::ZfsPool;
use pgml_zfs::{Dialect, HostPath, PoolListEntry, PoolName, PoolStatus, ZfsError, command};

use crate::decide::{Imported, Member, Observed, Placement, PoolMember, SeenPool};
use crate::devices::{Lookup, blkid_probe, parse_blkid_type};
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

pub async fn observe(pool: &ZfsPool, ctx: &Ctx, name: &PoolName) -> Result<Facts, Error> {
    let spec = &pool.spec.template;
    let status = pool.status.clone().unwrap_or_default();
    let count = spec.volumes.count.max(0) as usize;
    let mut members = Vec::new();
    let mut stale = Vec::new();
    let mut sizes = Vec::new();
    for i in 0..count as i32 {
        let v = status.volumes.iter().find(|v| v.index == i);
        let volume_id = v.and_then(|v| v.volume_id.clone());
        let device = match volume_id.as_deref().map(|id| ctx.discovery.find(id)) {
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
            attached: v.and_then(|v| v.attachment_state.as_deref()) == Some("attached"),
            volume_id,
            device,
            signature: None,
        });
    }
    let recorded_guid = status.pool_guid.as_deref().and_then(|g| g.parse().ok());

    let listed = pgml_zfs::parse_zpool_list(
        &ctx.runner
            .ok(&command::list_pools(ctx.dialect, None))
            .await?,
        command::LIST_COLUMNS,
    )?;
    let list = listed
        .iter()
        .find(|p| p.name == name.as_str())
        .or_else(|| {
            listed
                .iter()
                .find(|p| recorded_guid.is_some() && p.guid == recorded_guid)
        })
        .cloned();
    let mut imported = None;
    let mut imported_name = None;
    let mut pool_status = None;
    let mut missing_datasets = Vec::new();
    let mut misplaced_datasets = Vec::new();
    let mut found_datasets = Vec::new();
    if let Some(l) = &list {
        let n = PoolName::new(l.name.clone())?;
        let st = status_of(
            &n,
            &ctx.runner
                .ok(&command::status(ctx.dialect, Some(&n)))
                .await?,
        )?;
        imported = Some(imported_from(l, &st));
        let st = Some(st);
        if pool.metadata.deletion_timestamp.is_none() {
            let have = datasets(ctx, &n).await?;
            // With an altroot, ZFS shows mount points below it.
            let root = l
                .altroot
                .as_deref()
                .filter(|r| r.starts_with('/'))
                .unwrap_or("")
                .trim_end_matches('/');
            for d in &spec.datasets {
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
                    found_datasets.push((d.name.clone(), path, placed && m.mounted));
                }
                match have.get(&format!("{n}/{}", d.name)) {
                    None => missing_datasets.push(d.name.clone()),
                    Some(m) if m.mountpoint != want => {
                        misplaced_datasets.push((d.name.clone(), Placement::Elsewhere))
                    }
                    Some(m) if !m.mounted => {
                        misplaced_datasets.push((d.name.clone(), Placement::Unmounted))
                    }
                    Some(_) => {}
                }
            }
        }
        imported_name = Some(n);
        pool_status = st;
    }

    let mut importable = Vec::new();
    let all_present = count > 0 && members.iter().all(|m| m.device.is_some() && m.attached);
    if imported.is_none() && all_present && pool.metadata.deletion_timestamp.is_none() {
        let dir = HostPath::new(ctx.discovery.dev_dir.to_string_lossy().into_owned())?;
        let out = ctx
            .runner
            .run(&command::list_importable(std::slice::from_ref(&dir)))
            .await?;
        importable = importable_from(ctx.dialect, &out)?;
        for m in &mut members {
            if let Some(dev) = &m.device {
                let out = ctx.runner.run(&blkid_probe(dev)).await?;
                m.signature = parse_blkid_type(&out.stdout);
            }
        }
    }

    let grown = imported.is_some() && ctx.sizes_changed(pool, &sizes);
    Ok(Facts {
        observed: Observed {
            pool_name: name.to_string(),
            layout: spec.layout,
            deleting: pool.metadata.deletion_timestamp.is_some(),
            reclaim: spec.reclaim_policy,
            replacement: spec.member_replacement,
            restore: pool.spec.restore_from.is_some(),
            count,
            members,
            recorded_guid,
            imported,
            importable,
            missing_datasets,
            misplaced_datasets,
            grown,
        },
        imported_name,
        list,
        status: pool_status,
        stale,
        sizes,
        datasets: found_datasets,
    })
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
}
