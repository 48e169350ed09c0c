//! The EC2/EBS adapter of pgml-operator.
//!
//! Controllers talk to AWS only through the [`Ec2`] trait: a small surface of the calls the
//! operator needs, with errors already classified ([`AwsError`]) so that a reconciler can
//! decide between backing off, retrying, waiting for a spec change, or treating "already
//! gone" as success. [`SdkEc2`] implements it over aws-sdk-ec2; `fake::FakeEc2` (cargo
//! feature `fake`) in memory, for unit tests.

mod batch;
mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod limit;
mod node;
mod sdk;
mod token;
mod types;

pub use batch::Batched;
pub use error::{AwsError, ErrorKind, classify};
pub use limit::{Bucket, Class, LimitEvent, LimitObserver, Limited, RateLimits};
pub use node::parse_provider_id;
pub use sdk::{SdkEc2, sdk_config};
pub use token::{client_token, device_name_hint};
pub use types::*;

use async_trait::async_trait;

/// The EC2 calls the operator makes. Every mutating call is idempotent: creations carry a
/// deterministic client token, deletions and detachments treat "not found" as done.
#[async_trait]
pub trait Ec2: Send + Sync {
    /// The instance behind a node, or `None` when EC2 does not know it.
    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, AwsError>;

    /// Several instances in one call; unknown IDs are left out of the answer.
    async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Instance>, AwsError>;

    /// EBS limits of an instance type (bandwidth, IOPS, attachment slots).
    async fn instance_type_limits(
        &self,
        instance_type: &str,
    ) -> Result<InstanceTypeLimits, AwsError>;

    /// Creates a volume. Repeating the call with the same `client_token` returns the same
    /// volume instead of making a second one.
    async fn create_volume(&self, req: &CreateVolume) -> Result<Volume, AwsError>;

    /// All volumes matching the tag filters, in one call (pages followed).
    async fn find_volumes(&self, tags: &[(String, String)]) -> Result<Vec<Volume>, AwsError>;

    /// Volumes whose tag `key` has any of `values`, in one call (pages followed).
    async fn find_volumes_any(&self, key: &str, values: &[String])
    -> Result<Vec<Volume>, AwsError>;

    /// Volumes by ID; IDs that do not exist are left out of the answer rather than failing it.
    async fn describe_volumes(&self, ids: &[String]) -> Result<Vec<Volume>, AwsError>;

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<AttachmentState, AwsError>;

    /// Detaches; a volume already detached (or gone) is success.
    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), AwsError>;

    /// Changes size, IOPS or throughput of a volume in place.
    async fn modify_volume(&self, req: &ModifyVolume) -> Result<(), AwsError>;

    /// Deletes; a volume already gone is success.
    async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError>;

    /// One crash-consistent set of snapshots of volumes attached to one instance
    /// (EC2 CreateSnapshots, boot volume excluded, `exclude_volume_ids` left out, the
    /// request's tags and each volume's tags on every snapshot). The capture instant is the
    /// request. Not idempotent (EC2 takes no client token here): callers tag the set with
    /// something that finds it again after a crash.
    async fn create_snapshot_set(&self, req: &CreateSnapshotSet)
    -> Result<Vec<Snapshot>, AwsError>;

    /// Snapshots by ID; IDs that do not exist (deleted) are left out of the answer.
    async fn describe_snapshots(&self, ids: &[String]) -> Result<Vec<Snapshot>, AwsError>;

    /// Every volume attached (or attaching, detaching) to an instance, boot volume included.
    async fn attached_volumes(&self, instance_id: &str) -> Result<Vec<Volume>, AwsError>;

    /// Adds (or overwrites) tags on resources; idempotent.
    async fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), AwsError>;

    /// Bytes that differ between two snapshots of one volume (EBS direct API
    /// ListChangedBlocks: changed blocks × block size), `first` the older.
    async fn changed_bytes(&self, first: &str, second: &str) -> Result<i64, AwsError>;

    /// Snapshots matching the tag filters.
    async fn find_snapshots(&self, tags: &[(String, String)]) -> Result<Vec<Snapshot>, AwsError>;

    /// Deletes; a snapshot already gone is success.
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), AwsError>;
}
