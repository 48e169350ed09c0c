//! [`Ec2`] for [`FakeEc2`]: each method is one recorded call (none where `SdkEc2` makes
//! none, e.g. an empty list of IDs), answered by the world, then the adapter's rules as
//! `SdkEc2` applies them.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::FakeEc2;
use crate::sdk::{detached_already, gone_is_done, unknown_is_none};
use crate::{
    AttachmentState, AwsError, CreateSnapshotSet, CreateVolume, Ec2, Instance, InstanceTypeLimits,
    ModifyVolume, Snapshot, Volume,
};

fn arg(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn each(k: &str, values: &[String]) -> Vec<(String, String)> {
    values.iter().map(|v| arg(k, v)).collect()
}

fn tag_args<'a>(tags: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<(String, String)> {
    tags.into_iter()
        .map(|(k, v)| (format!("tag:{k}"), v.clone()))
        .collect()
}

#[async_trait]
impl Ec2 for FakeEc2 {
    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, AwsError> {
        let action = "DescribeInstances";
        let args = vec![arg("InstanceId", instance_id)];
        match self
            .run("describe_instance", action, args, |w, _| {
                w.describe_instance(instance_id)
            })
            .await
        {
            Ok(i) => Ok(Some(i)),
            Err(e) => unknown_is_none(e.into_aws(action)),
        }
    }

    async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Instance>, AwsError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let action = "DescribeInstances";
        self.run(
            "describe_instances",
            action,
            each("InstanceId", ids),
            |w, _| Ok(ids.iter().filter_map(|id| w.instance(id)).collect()),
        )
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn instance_type_limits(
        &self,
        instance_type: &str,
    ) -> Result<InstanceTypeLimits, AwsError> {
        let action = "DescribeInstanceTypes";
        let args = vec![arg("InstanceType", instance_type)];
        self.run("instance_type_limits", action, args, |w, _| {
            w.instance_type_limits(instance_type)
        })
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn create_volume(&self, req: &CreateVolume) -> Result<Volume, AwsError> {
        let action = "CreateVolume";
        let mut args = vec![
            arg("ClientToken", &req.client_token),
            arg("AvailabilityZone", &req.availability_zone),
            arg("VolumeType", req.volume_type.as_str()),
            arg("Size", req.size_gib),
        ];
        args.extend(req.snapshot_id.iter().map(|s| arg("SnapshotId", s)));
        args.extend(req.iops.iter().map(|s| arg("Iops", s)));
        args.extend(req.throughput_mibps.iter().map(|s| arg("Throughput", s)));
        args.extend(tag_args(&req.tags));
        self.run("create_volume", action, args, |w, _| w.create_volume(req))
            .await
            .map_err(|e| e.into_aws(action))
    }

    async fn find_volumes(&self, tags: &[(String, String)]) -> Result<Vec<Volume>, AwsError> {
        let action = "DescribeVolumes";
        let args = tag_args(tags.iter().map(|(k, v)| (k, v)));
        self.run(
            "find_volumes",
            action,
            args,
            |w, _| Ok(w.find_volumes(tags)),
        )
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn find_volumes_any(
        &self,
        key: &str,
        values: &[String],
    ) -> Result<Vec<Volume>, AwsError> {
        if values.is_empty() {
            return Ok(vec![]);
        }
        let action = "DescribeVolumes";
        let args = each(&format!("tag:{key}"), values);
        self.run("find_volumes_any", action, args, |w, _| {
            Ok(w.describe_where(|v| {
                v.base
                    .tags
                    .get(key)
                    .is_some_and(|t| values.iter().any(|p| super::glob(p, t)))
            }))
        })
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn describe_volumes(&self, ids: &[String]) -> Result<Vec<Volume>, AwsError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let action = "DescribeVolumes";
        self.run("describe_volumes", action, each("VolumeId", ids), |w, _| {
            Ok(w.describe_where(|v| ids.contains(&v.base.volume_id)))
        })
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<AttachmentState, AwsError> {
        let action = "AttachVolume";
        let args = vec![
            arg("VolumeId", volume_id),
            arg("InstanceId", instance_id),
            arg("Device", device),
        ];
        self.run("attach_volume", action, args, |w, _| {
            w.attach(volume_id, instance_id, device)
        })
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), AwsError> {
        let action = "DetachVolume";
        let args = vec![
            arg("VolumeId", volume_id),
            arg("InstanceId", instance_id),
            arg("Force", force),
        ];
        match self
            .run("detach_volume", action, args, |w, _| {
                w.detach(volume_id, instance_id)
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => detached_already(e.into_aws(action)),
        }
    }

    async fn modify_volume(&self, req: &ModifyVolume) -> Result<(), AwsError> {
        let action = "ModifyVolume";
        let mut args = vec![arg("VolumeId", &req.volume_id)];
        args.extend(req.size_gib.iter().map(|s| arg("Size", s)));
        args.extend(req.iops.iter().map(|s| arg("Iops", s)));
        args.extend(req.throughput_mibps.iter().map(|s| arg("Throughput", s)));
        self.run("modify_volume", action, args, |w, _| w.modify(req))
            .await
            .map_err(|e| e.into_aws(action))
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError> {
        let action = "DeleteVolume";
        let args = vec![arg("VolumeId", volume_id)];
        let r = self
            .run("delete_volume", action, args, |w, _| w.delete(volume_id))
            .await;
        gone_is_done(r.map_err(|e| e.into_aws(action)))
    }

    async fn create_snapshot_set(
        &self,
        req: &CreateSnapshotSet,
    ) -> Result<Vec<Snapshot>, AwsError> {
        let action = "CreateSnapshots";
        let mut args = vec![arg("InstanceId", &req.instance_id)];
        args.extend(each("ExcludeDataVolumeId", &req.exclude_volume_ids));
        args.push(arg("Description", &req.description));
        args.extend(tag_args(&req.tags));
        self.run("create_snapshot_set", action, args, |w, now| {
            w.create_snapshot_set(req, now)
        })
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn describe_snapshots(&self, ids: &[String]) -> Result<Vec<Snapshot>, AwsError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let action = "DescribeSnapshots";
        self.run(
            "describe_snapshots",
            action,
            each("SnapshotId", ids),
            |w, _| Ok(w.describe_snapshots(|s| ids.contains(&s.base.snapshot_id))),
        )
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn attached_volumes(&self, instance_id: &str) -> Result<Vec<Volume>, AwsError> {
        let action = "DescribeVolumes";
        let args = vec![arg("attachment.instance-id", instance_id)];
        self.run("attached_volumes", action, args, |w, _| {
            Ok(w.describe_where(|v| v.attachments.iter().any(|a| a.instance == instance_id)))
        })
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        if resource_ids.is_empty() || tags.is_empty() {
            return Ok(());
        }
        let action = "CreateTags";
        let mut args = each("ResourceId", resource_ids);
        args.extend(tag_args(tags));
        self.run("create_tags", action, args, |w, _| {
            w.create_tags(resource_ids, tags)
        })
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn changed_bytes(&self, first: &str, second: &str) -> Result<i64, AwsError> {
        let action = "ListChangedBlocks";
        let args = vec![
            arg("FirstSnapshotId", first),
            arg("SecondSnapshotId", second),
        ];
        self.run("changed_bytes", action, args, |w, _| {
            w.changed_bytes(first, second)
        })
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn find_snapshots(&self, tags: &[(String, String)]) -> Result<Vec<Snapshot>, AwsError> {
        let action = "DescribeSnapshots";
        let args = tag_args(tags.iter().map(|(k, v)| (k, v)));
        self.run("find_snapshots", action, args, |w, _| {
            Ok(w.find_snapshots(tags))
        })
        .await
        .map_err(|e| e.into_aws(action))
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), AwsError> {
        let action = "DeleteSnapshot";
        let args = vec![arg("SnapshotId", snapshot_id)];
        let r = self
            .run("delete_snapshot", action, args, |w, _| {
                w.delete_snapshot(snapshot_id)
            })
            .await;
        gone_is_done(r.map_err(|e| e.into_aws(action)))
    }
}
