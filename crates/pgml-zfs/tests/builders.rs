//! Command builders: exact argument vectors per dialect.

use pgml_zfs::command::*;
use pgml_zfs::*;

fn devs(n: usize) -> Vec<DevicePath> {
    (0..n)
        .map(|i| {
            DevicePath::new(format!(
                "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc{i:013}"
            ))
            .unwrap()
        })
        .collect()
}

fn spec(layout: Layout, n: usize) -> PoolSpec {
    PoolSpec {
        name: PoolName::new("db1").unwrap(),
        layout,
        devices: devs(n),
        ashift: Some(12),
        pool_properties: vec![Property::new("autoexpand", "on").unwrap()],
        fs_properties: postgres_defaults(),
        mount: Mount::None,
        altroot: None,
    }
}

#[test]
fn create_raidz1_per_dialect() {
    let s = spec(Layout::Raidz1, 5);
    let o = create_pool(Dialect::OpenZfs, &s).unwrap();
    assert_eq!(o.program, "zpool");
    let head = &o.args[..o.args.len() - 5];
    assert_eq!(
        head,
        [
            "create",
            "-o",
            "ashift=12",
            "-o",
            "autoexpand=on",
            "-O",
            "recordsize=32K",
            "-O",
            "compression=lz4",
            "-O",
            "atime=off",
            "-O",
            "xattr=sa",
            "-O",
            "logbias=throughput",
            "-m",
            "none",
            "db1",
            "raidz1"
        ]
    );
    let f = create_pool(Dialect::ZfsFuse, &s).unwrap();
    assert!(
        f.args.contains(&"compression=on".to_string()) && f.args.contains(&"xattr=on".to_string())
    );
    assert!(!f.args.iter().any(|a| a == "-f"));
    assert_eq!(f.args.last().unwrap(), s.devices[4].as_str());
}

#[test]
fn create_stripe_and_refusals() {
    let s = spec(Layout::Stripe, 4);
    let c = create_pool(Dialect::OpenZfs, &s).unwrap();
    assert!(!c.args.contains(&"raidz1".to_string()));
    assert_eq!(c.args[c.args.len() - 5], "db1");
    assert!(matches!(
        create_pool(Dialect::OpenZfs, &spec(Layout::Raidz1, 2)),
        Err(ZfsError::TooFewDevices { .. })
    ));
    let mut dup = spec(Layout::Stripe, 2);
    dup.devices.push(dup.devices[0].clone());
    assert!(matches!(
        create_pool(Dialect::OpenZfs, &dup),
        Err(ZfsError::DuplicateDevice(_))
    ));
}

#[test]
fn datasets_imports_and_the_rest() {
    let ds = DatasetName::new("db1/pgdata").unwrap();
    let mnt = Mount::At(HostPath::new("/var/lib/pgml/db1/pgdata").unwrap());
    let c = create_dataset(
        Dialect::ZfsFuse,
        &ds,
        &postgres_defaults(),
        Some(&mnt),
        false,
    );
    assert_eq!(
        c.argv(),
        [
            "zfs",
            "create",
            "-o",
            "recordsize=32K",
            "-o",
            "compression=on",
            "-o",
            "atime=off",
            "-o",
            "xattr=on",
            "-o",
            "logbias=throughput",
            "-o",
            "mountpoint=/var/lib/pgml/db1/pgdata",
            "db1/pgdata"
        ]
    );

    let imp = ImportSpec {
        target: ImportTarget::Guid(Guid(1571646023327248049)),
        new_name: Some(PoolName::new("db1restore").unwrap()),
        search_dirs: vec![HostPath::new("/dev/disk/by-id").unwrap()],
        altroot: Some(HostPath::new("/mnt/alt").unwrap()),
        mount: true,
        force: false,
    };
    assert_eq!(
        import_pool(Dialect::ZfsFuse, &imp).unwrap().args,
        [
            "import",
            "-d",
            "/dev/disk/by-id",
            "-R",
            "/mnt/alt",
            "1571646023327248049",
            "db1restore"
        ]
    );
    let no_mount = ImportSpec {
        mount: false,
        ..imp
    };
    assert!(matches!(
        import_pool(Dialect::ZfsFuse, &no_mount),
        Err(ZfsError::Unsupported { .. })
    ));
    assert_eq!(
        import_pool(Dialect::OpenZfs, &no_mount).unwrap().args[1],
        "-N"
    );

    let pool = PoolName::new("db1").unwrap();
    assert_eq!(
        status(Dialect::OpenZfs, Some(&pool)).args,
        ["status", "-P", "-p", "db1"]
    );
    assert_eq!(
        status(Dialect::ZfsFuse, Some(&pool)).args,
        ["status", "db1"]
    );
    assert_eq!(
        list_pools(Dialect::ZfsFuse, None).args,
        [
            "list",
            "-H",
            "-o",
            "name,size,allocated,free,health,guid,altroot"
        ]
    );
    assert_eq!(list_pools(Dialect::OpenZfs, Some(&pool)).args[2], "-p");
    assert_eq!(
        get_pool_properties(Dialect::ZfsFuse, &pool, &["guid"])
            .unwrap()
            .args,
        ["get", "guid", "db1"]
    );
    assert!(get_properties(&ds, &["used", "bad,prop"]).is_err());
    assert_eq!(
        replace_device(&pool, &DeviceRef::Guid(Guid(42)), &devs(1)[0]).args,
        ["replace", "db1", "42", devs(1)[0].as_str()]
    );
    assert_eq!(
        online_expand(&pool, &DeviceRef::Path(devs(1)[0].clone())).args[..3],
        ["online", "-e", "db1"]
    );
    assert!(labelclear(Dialect::ZfsFuse, &devs(1)[0]).is_err());
    assert_eq!(
        set_pool_property(&pool, &Property::new("autoexpand", "on").unwrap()).args,
        ["set", "autoexpand=on", "db1"]
    );
    assert_eq!(
        set_property(
            Dialect::ZfsFuse,
            &ds,
            &Property::new("relatime", "on").unwrap()
        ),
        None
    );
    assert_eq!(export_pool(&pool, false).args, ["export", "db1"]);
    assert_eq!(destroy_pool(&pool, false).args, ["destroy", "db1"]);
}

#[test]
fn sync_pool_commits_the_open_transaction_group_in_both_dialects() {
    let pool = PoolName::new("tank").unwrap();
    assert_eq!(
        sync_pool(Dialect::OpenZfs, &pool, "u-1").unwrap().argv(),
        ["zpool", "sync", "tank"]
    );
    assert_eq!(
        sync_pool(Dialect::ZfsFuse, &pool, "3f2a-9b")
            .unwrap()
            .argv(),
        ["zfs", "set", "pgml.io:synced=3f2a-9b", "tank"]
    );
    assert!(sync_pool(Dialect::ZfsFuse, &pool, "a b").is_err());
    assert!(sync_pool(Dialect::ZfsFuse, &pool, "").is_err());
}

#[test]
fn every_built_command_runs_in_the_c_locale() {
    let pool = PoolName::new("db1").unwrap();
    let ds = DatasetName::new("db1/pgdata").unwrap();
    let dev = devs(1).remove(0);
    let prop = Property::new("autoexpand", "on").unwrap();
    let imp = ImportSpec {
        target: ImportTarget::Name(pool.clone()),
        new_name: None,
        search_dirs: vec![HostPath::new("/dev/disk/by-id").unwrap()],
        altroot: None,
        mount: true,
        force: false,
    };
    let mut built = vec![
        pgml_zfs::dialect::version_probe(),
        list_importable(&imp.search_dirs),
        export_pool(&pool, true),
        destroy_pool(&pool, true),
        destroy_dataset(&ds),
        set_pool_property(&pool, &prop),
        replace_device(&pool, &DeviceRef::Guid(Guid(42)), &dev),
        online_expand(&pool, &DeviceRef::Path(dev.clone())),
        online(&pool, &DeviceRef::Path(dev.clone())),
        get_properties(&ds, &[]).unwrap(),
        labelclear(Dialect::OpenZfs, &dev).unwrap(),
        Command::new("zfs", ["list"]),
    ];
    for d in [Dialect::OpenZfs, Dialect::ZfsFuse] {
        built.extend([
            create_pool(d, &spec(Layout::Raidz1, 3)).unwrap(),
            create_pool(d, &spec(Layout::Stripe, 1)).unwrap(),
            create_dataset(d, &ds, &postgres_defaults(), Some(&Mount::None), true),
            import_pool(d, &imp).unwrap(),
            status(d, None),
            status(d, Some(&pool)),
            list_pools(d, None),
            get_pool_properties(d, &pool, &["guid"]).unwrap(),
            sync_pool(d, &pool, "u-1").unwrap(),
            set_property(d, &ds, &Property::new("atime", "off").unwrap()).unwrap(),
        ]);
    }
    for c in &built {
        assert!(
            c.env.contains(&("LC_ALL".to_string(), "C".to_string())),
            "{c} runs without LC_ALL=C: {:?}",
            c.env
        );
    }
}
