//! A RAIDZ1 pool built with pgml-zfs's builders inside one simulated node, on Nitro-style
//! by-id links to sparse image files, while a second node's zfs-fuse runs beside it.
//!
//! Needs the sandbox (two simulated nodes at least): `make sandbox-up`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use pgml_testbed::Sandbox;
use pgml_testbed::nodes::{node_destroy_pool, node_dialect, node_exec_ok, node_zfs, zfs_answers};
use pgml_testbed::sandbox::NodeInfo;
use pgml_zfs::command::{self, Layout, Mount, PoolSpec};
use pgml_zfs::{
    DatasetName, DevicePath, Dialect, Health, HostPath, LIST_COLUMNS, ObservedLayout, PoolName,
    postgres_defaults,
};

const MEMBERS: usize = 5;
const IMAGE_BYTES: u64 = 256 << 20;

fn pool_names(node: &NodeInfo, d: Dialect) -> anyhow::Result<Vec<String>> {
    let out = node_zfs(node, &command::list_pools(d, None))?;
    Ok(pgml_zfs::parse_zpool_list(&out, LIST_COLUMNS)?
        .into_iter()
        .map(|p| p.name)
        .collect())
}

/// Destroys the pool and removes links and images, even when the test fails half-way.
struct Cleanup<'a> {
    node: &'a NodeInfo,
    pool: PoolName,
    links: Vec<PathBuf>,
    images: PathBuf,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = node_destroy_pool(self.node, &self.pool);
        for l in &self.links {
            let _ = std::fs::remove_file(l);
        }
        let _ = std::fs::remove_dir_all(&self.images);
    }
}

fn sparse_image(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(IMAGE_BYTES)?;
    Ok(())
}

#[test]
fn raidz1_pool_in_one_node_beside_another() -> anyhow::Result<()> {
    let sb = Sandbox::get();
    ensure!(
        sb.nodes.len() >= 2,
        "this test needs two simulated nodes, the sandbox has {}",
        sb.nodes.len()
    );
    let (a, b) = (&sb.nodes[0], &sb.nodes[1]);
    ensure!(
        zfs_answers(a) && zfs_answers(b),
        "both nodes' zfs-fuse daemons must answer"
    );
    let d = node_dialect(a)?;
    assert_eq!(d, node_dialect(b)?);

    // Unique per run: 16 hex digits from the clock, then the member index (17 like EBS).
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let stamp = format!("{:016x}", nanos ^ ((std::process::id() as u64) << 40));
    let pool = PoolName::new(format!("e2e{}", &stamp[8..]))?;
    let images = sb.dir.join("tmp").join(format!("zfs-node-{stamp}"));
    std::fs::create_dir_all(&images)?;
    let mut cleanup = Cleanup {
        node: a,
        pool: pool.clone(),
        links: Vec::new(),
        images: images.clone(),
    };

    // What the EBS simulator does on AttachVolume: an image and a by-id link in the node.
    let mut devices = Vec::new();
    let mut volume_ids = Vec::new();
    for i in 0..MEMBERS {
        let vol = format!("{stamp}{i:x}");
        let img = images.join(format!("vol-{vol}.img"));
        sparse_image(&img)?;
        let link = a
            .dev_dir
            .join(format!("nvme-Amazon_Elastic_Block_Store_vol{vol}"));
        std::os::unix::fs::symlink(&img, &link)?;
        cleanup.links.push(link.clone());
        devices.push(DevicePath::new(link.to_string_lossy().into_owned())?);
        volume_ids.push(format!("vol-{vol}"));
    }

    let spec = PoolSpec {
        name: pool.clone(),
        layout: Layout::Raidz1,
        devices: devices.clone(),
        ashift: Some(12),
        pool_properties: vec![],
        fs_properties: postgres_defaults(),
        mount: Mount::None,
        altroot: None,
    };
    node_zfs(a, &command::create_pool(d, &spec)?)?;

    // Isolation: the pool exists in node A's daemon only, and both daemons still answer.
    assert!(pool_names(a, d)?.contains(&pool.to_string()));
    assert!(
        !pool_names(b, d)?.contains(&pool.to_string()),
        "node B's zfs-fuse sees node A's pool"
    );
    assert!(zfs_answers(a) && zfs_answers(b));

    // A dataset mounted under the node's mount folder, data written and read back inside.
    let ds = DatasetName::from(pool.clone()).child("pgdata")?;
    let mnt = a.mnt_dir.join(pool.as_str()).join("pgdata");
    let mount = Mount::At(HostPath::new(mnt.to_string_lossy().into_owned())?);
    node_zfs(
        a,
        &command::create_dataset(d, &ds, &postgres_defaults(), Some(&mount), false),
    )?;
    let blob = mnt.join("blob").to_string_lossy().into_owned();
    node_exec_ok(
        a,
        &[
            "dd",
            "if=/dev/urandom",
            &format!("of={blob}"),
            "bs=1M",
            "count=32",
            "conv=fsync",
            "status=none",
        ],
    )?;
    let written = node_exec_ok(a, &["sha256sum", &blob])?;
    node_exec_ok(a, &["zpool", "scrub", pool.as_str()])?;
    assert_eq!(node_exec_ok(a, &["sha256sum", &blob])?, written);
    assert!(
        !Path::new(&blob).exists(),
        "the dataset mount leaked into the host namespace"
    );

    let props = pgml_zfs::parse_zfs_get(&node_zfs(
        a,
        &command::get_properties(
            &ds,
            &["recordsize", "compression", "atime", "xattr", "mountpoint"],
        )?,
    )?)?;
    let props = pgml_zfs::list::by_name(&props);
    let p = &props[ds.as_str()];
    assert_eq!(p["recordsize"], "32768");
    assert_eq!(
        p["compression"],
        if d == Dialect::ZfsFuse { "on" } else { "lz4" }
    );
    assert_eq!(p["atime"], "off");
    assert_eq!(p["mountpoint"], mnt.to_string_lossy());

    // zpool status parses as an ONLINE raidz1 over exactly our five by-id links.
    let st = pgml_zfs::parse_status(&node_zfs(a, &command::status(d, Some(&pool)))?)?;
    assert_eq!(st.len(), 1);
    let st = &st[0];
    assert_eq!(st.name, pool.as_str());
    assert_eq!(st.state, Health::Online);
    assert_eq!(st.layout(), ObservedLayout::Raidz1);
    let members = st.members();
    assert_eq!(members.len(), MEMBERS);
    for (m, (dev, vol)) in members.iter().zip(devices.iter().zip(&volume_ids)) {
        assert_eq!(m.state, Some(Health::Online));
        assert_eq!(m.path(), Some(dev.as_str()));
        assert_eq!(m.ebs_volume_id().as_deref(), Some(vol.as_str()));
    }
    let sizes = pgml_zfs::parse_zpool_list(
        &node_zfs(a, &command::list_pools(d, Some(&pool)))?,
        LIST_COLUMNS,
    )?;
    assert_eq!(sizes[0].health, Health::Online);
    assert!(sizes[0].allocated.unwrap() >= 32 << 20, "{:?}", sizes[0]);

    node_destroy_pool(a, &pool)?;
    assert!(!pool_names(a, d)?.contains(&pool.to_string()));
    drop(cleanup);
    Ok(())
}
