//! ZFS command building and output parsing, for OpenZFS 2.x (Ubuntu nodes) and zfs-fuse
//! (pool version 23, the test bed). Pure: no I/O, no processes, no async.
//!
//! The agent runs [`dialect::version_probe`], hands its output to [`detect`], then builds
//! each command with the functions in [`command`] (argument vectors over validated names,
//! never shell strings) and reads the results with the parsers ([`parse_status`],
//! [`parse_zpool_list`], [`parse_zfs_get`], [`parse_zpool_get`], [`parse_import_list`]).

pub mod command;
pub mod dialect;
mod error;
pub mod list;
pub mod names;
pub mod props;
mod scan;
pub mod size;
pub mod status;

pub use command::{
    Command, DeviceRef, ImportSpec, ImportTarget, LIST_COLUMNS, Layout, Mount, PoolSpec,
};
pub use dialect::{Detected, Dialect, detect};
pub use error::{Result, ZfsError};
pub use list::{
    OPENZFS_DEFAULT_COLUMNS, PoolListEntry, PropertyValue, ZFS_FUSE_DEFAULT_COLUMNS, parse_zfs_get,
    parse_zpool_get, parse_zpool_list,
};
pub use names::{DatasetName, DevicePath, Guid, HostPath, PoolName};
pub use props::{Adjustment, Property, map_properties, postgres_defaults};
pub use status::{
    Health, ObservedLayout, PoolStatus, Scan, ScanKind, ScanState, Vdev, VdevKind, ebs_volume_id,
    parse_import_answer, parse_import_list, parse_status,
};
