//! [`Ec2`] over aws-sdk-ec2.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types as t;

use crate::error::AwsError;
use crate::{
    Attachment, AttachmentState, CreateSnapshotSet, CreateVolume, Ec2, Instance,
    InstanceTypeLimits, ModifyVolume, Snapshot, Volume, VolumeState, VolumeType,
};

/// Loads the AWS configuration the usual way: region, credentials (the instance role, IRSA
/// or Pod Identity — never keys in our objects) and `AWS_ENDPOINT_URL` from the environment.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

/// The production [`Ec2`]: aws-sdk-ec2 with the SDK's standard retries for transient
/// failures; throttling that outlasts them comes back as [`crate::ErrorKind::Throttled`]
/// for the controller to back off per object.
#[derive(Clone)]
pub struct SdkEc2 {
    client: Client,
    /// The EBS direct APIs (ListChangedBlocks), same credentials and endpoint.
    ebs: aws_sdk_ebs::Client,
}

impl SdkEc2 {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        SdkEc2 {
            client: Client::new(config),
            ebs: aws_sdk_ebs::Client::new(config),
        }
    }

    /// As [`SdkEc2::new`], with `observer` told of every HTTP attempt (SDK retries
    /// included) as `(action, outcome)`, outcome `ok`, `throttled` or `error`: the
    /// operator's `pgml_ec2_requests_total`, one count per request the endpoint sees.
    pub fn with_observer(config: &aws_config::SdkConfig, observer: RequestObserver) -> Self {
        let counter = CountAttempts(observer);
        let ec2 = aws_sdk_ec2::config::Builder::from(config)
            .interceptor(counter.clone())
            .build();
        let ebs = aws_sdk_ebs::config::Builder::from(config)
            .interceptor(counter)
            .build();
        SdkEc2 {
            client: Client::from_conf(ec2),
            ebs: aws_sdk_ebs::Client::from_conf(ebs),
        }
    }

    pub fn from_clients(client: Client, ebs: aws_sdk_ebs::Client) -> Self {
        SdkEc2 { client, ebs }
    }

    /// Every volume that matches `filters`, all pages.
    async fn volumes_where(&self, filters: Vec<t::Filter>) -> Result<Vec<Volume>, AwsError> {
        let mut pages = self
            .client
            .describe_volumes()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut vols = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("DescribeVolumes", e))?;
            vols.extend(page.volumes().iter().map(volume));
        }
        Ok(vols)
    }

    /// Every snapshot of this account that matches `filters`, all pages.
    async fn snapshots_where(&self, filters: Vec<t::Filter>) -> Result<Vec<Snapshot>, AwsError> {
        let mut pages = self
            .client
            .describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut snaps = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("DescribeSnapshots", e))?;
            snaps.extend(page.snapshots().iter().map(snapshot));
        }
        Ok(snaps)
    }
}

/// Told of each HTTP attempt: the operation name (`CreateVolume`, `ListChangedBlocks`…)
/// and its outcome (`ok`, `throttled` or `error`, as the EC2 simulator's statistics name
/// them).
pub type RequestObserver = std::sync::Arc<dyn Fn(&str, &'static str) + Send + Sync>;

/// The interceptor behind [`SdkEc2::with_observer`]. `read_after_attempt` runs once per
/// attempt, after the answer (if any) was read, so the SDK's own retries are each counted.
#[derive(Clone)]
struct CountAttempts(RequestObserver);

impl std::fmt::Debug for CountAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CountAttempts")
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "CountAttempts"
    }

    fn read_after_attempt(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let action = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| "unknown".into());
        let response = context.response();
        let outcome = attempt_outcome(
            response.map(|r| r.status().as_u16()),
            response.and_then(|r| r.body().bytes()),
        );
        (self.0)(&action, outcome);
        Ok(())
    }
}

/// The outcome of one attempt from its HTTP status and body: `ok` for a 2xx, `throttled`
/// for EC2's `RequestLimitExceeded` (HTTP 503), any `Throttling…` code, or HTTP 429 (the
/// EBS direct APIs), `error` for anything else, including no answer at all.
pub fn attempt_outcome(status: Option<u16>, body: Option<&[u8]>) -> &'static str {
    let Some(status) = status else {
        return "error";
    };
    if (200..300).contains(&status) {
        return "ok";
    }
    if status == 429 {
        return "throttled";
    }
    let text = body.map(String::from_utf8_lossy).unwrap_or_default();
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.trim());
    match code {
        Some(c) if c == "RequestLimitExceeded" || c.starts_with("Throttling") => "throttled",
        _ if text.contains("ThrottlingException") => "throttled",
        _ => "error",
    }
}

/// A deletion whose target is already gone has done its job.
pub(crate) fn gone_is_done<T>(r: Result<T, AwsError>) -> Result<(), AwsError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A describe by ID of something EC2 does not know answers "nothing", not an error.
pub(crate) fn unknown_is_none<T>(e: AwsError) -> Result<Option<T>, AwsError> {
    if e.is_not_found() { Ok(None) } else { Err(e) }
}

/// A DetachVolume refused because the volume is not attached (IncorrectState "is in the
/// 'available' state") or gone has done its job.
pub(crate) fn detached_already(e: AwsError) -> Result<(), AwsError> {
    if e.is_not_found() || e.code == "IncorrectState" && e.message.contains("available") {
        Ok(())
    } else {
        Err(e)
    }
}

fn err<E, R>(action: &'static str, e: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let status = e.raw_response().map(|r| r.status_code());
    let code = e.code().map(str::to_string);
    let message = e
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{e}"));
    AwsError::answered(action, code.as_deref(), status, sdk_error_name(&e), message)
}

fn sdk_error_name<E, R>(e: &SdkError<E, R>) -> &'static str {
    match e {
        SdkError::ConstructionFailure(_) => "ConstructionFailure",
        SdkError::TimeoutError(_) => "Timeout",
        SdkError::DispatchFailure(_) => "DispatchFailure",
        SdkError::ResponseError(_) => "ResponseError",
        SdkError::ServiceError(_) => "ServiceError",
        _ => "Unknown",
    }
}

/// The HTTP status of a raw response, whatever its type.
pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn tag_map(tags: &[t::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn tag_spec(resource: t::ResourceType, tags: &BTreeMap<String, String>) -> t::TagSpecification {
    let mut spec = t::TagSpecification::builder().resource_type(resource);
    for (k, v) in tags {
        spec = spec.tags(t::Tag::builder().key(k).value(v).build());
    }
    spec.build()
}

/// A filter matching any of `values` (EC2 ORs the values of one filter).
fn any_of(name: &str, values: &[String]) -> t::Filter {
    t::Filter::builder()
        .name(name)
        .set_values(Some(values.to_vec()))
        .build()
}

fn tag_filters(tags: &[(String, String)]) -> Vec<t::Filter> {
    tags.iter()
        .map(|(k, v)| {
            t::Filter::builder()
                .name(format!("tag:{k}"))
                .values(v)
                .build()
        })
        .collect()
}

fn instance(i: &t::Instance) -> Instance {
    Instance {
        instance_id: i.instance_id().unwrap_or_default().to_string(),
        availability_zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_string(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
        block_devices: i
            .block_device_mappings()
            .iter()
            .filter_map(|m| {
                Some((
                    m.device_name()?.to_string(),
                    m.ebs()?.volume_id()?.to_string(),
                ))
            })
            .collect(),
        root_device_name: i.root_device_name().map(str::to_string),
    }
}

fn volume(v: &t::Volume) -> Volume {
    Volume {
        volume_id: v.volume_id().unwrap_or_default().to_string(),
        availability_zone: v.availability_zone().unwrap_or_default().to_string(),
        state: VolumeState::parse(v.state().map(|s| s.as_str()).unwrap_or_default()),
        volume_type: v
            .volume_type()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        size_gib: v.size().unwrap_or_default(),
        iops: v.iops(),
        throughput_mibps: v.throughput(),
        encrypted: v.encrypted().unwrap_or(false),
        snapshot_id: v
            .snapshot_id()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        attachments: v
            .attachments()
            .iter()
            .map(|a| Attachment {
                instance_id: a.instance_id().unwrap_or_default().to_string(),
                device: a.device().unwrap_or_default().to_string(),
                state: a
                    .state()
                    .map(|s| AttachmentState::parse(s.as_str()))
                    .unwrap_or(AttachmentState::Unknown),
            })
            .collect(),
        tags: tag_map(v.tags()),
    }
}

/// `Snapshot` (DescribeSnapshots) and `SnapshotInfo` (CreateSnapshots) carry the same
/// fields under two SDK types.
macro_rules! snapshot_of {
    ($s:expr) => {
        Snapshot {
            snapshot_id: $s.snapshot_id().unwrap_or_default().to_string(),
            volume_id: $s.volume_id().unwrap_or_default().to_string(),
            state: $s
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            progress: $s.progress().map(str::to_string),
            volume_size_gib: $s.volume_size(),
            start_time: $s.start_time().map(|t| t.secs()),
            state_message: None,
            tags: tag_map($s.tags()),
        }
    };
}

fn snapshot(s: &t::Snapshot) -> Snapshot {
    Snapshot {
        state_message: s
            .state_message()
            .filter(|m| !m.is_empty())
            .map(str::to_string),
        ..snapshot_of!(s)
    }
}

fn snapshot_info(s: &t::SnapshotInfo) -> Snapshot {
    snapshot_of!(s)
}

#[async_trait]
impl Ec2 for SdkEc2 {
    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, AwsError> {
        let out = match self
            .client
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => return unknown_is_none(err("DescribeInstances", e)),
        };
        let found = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id));
        Ok(found.map(instance))
    }

    async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Instance>, AwsError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        // A filter on instance-id (unlike InstanceIds) leaves an unknown ID out of the
        // answer instead of failing the whole call.
        let filter = any_of("instance-id", ids);
        let mut pages = self
            .client
            .describe_instances()
            .filters(filter)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("DescribeInstances", e))?;
            found.extend(
                page.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .map(instance),
            );
        }
        Ok(found)
    }

    async fn instance_type_limits(
        &self,
        instance_type: &str,
    ) -> Result<InstanceTypeLimits, AwsError> {
        let out = self
            .client
            .describe_instance_types()
            .instance_types(t::InstanceType::from(instance_type))
            .send()
            .await
            .map_err(|e| err("DescribeInstanceTypes", e))?;
        let Some(info) = out.instance_types().first() else {
            return Err(AwsError::new(
                "DescribeInstanceTypes",
                crate::ErrorKind::NotFound,
                "InvalidInstanceType",
                format!("EC2 does not know instance type {instance_type}"),
            ));
        };
        let ebs = info.ebs_info();
        let opt = ebs.and_then(|e| e.ebs_optimized_info());
        Ok(InstanceTypeLimits {
            instance_type: instance_type.to_string(),
            baseline_iops: opt.and_then(|o| o.baseline_iops()).map(i64::from),
            maximum_iops: opt.and_then(|o| o.maximum_iops()).map(i64::from),
            // EC2 reports MB/s; the operator speaks MiB/s like the volume API.
            baseline_throughput_mibps: opt
                .and_then(|o| o.baseline_throughput_in_m_bps())
                .map(|mb| (mb * 1e6 / 1_048_576.0) as i64),
            maximum_throughput_mibps: opt
                .and_then(|o| o.maximum_throughput_in_m_bps())
                .map(|mb| (mb * 1e6 / 1_048_576.0) as i64),
            maximum_ebs_attachments: ebs.and_then(|e| e.maximum_ebs_attachments()).map(i64::from),
            nvme_supported: ebs
                .and_then(|e| e.nvme_support())
                .is_some_and(|n| n.as_str() != "unsupported"),
        })
    }

    async fn create_volume(&self, req: &CreateVolume) -> Result<Volume, AwsError> {
        let vt = match req.volume_type {
            VolumeType::Gp3 => t::VolumeType::Gp3,
            VolumeType::Io2 => t::VolumeType::Io2,
        };
        let out = self
            .client
            .create_volume()
            .availability_zone(&req.availability_zone)
            .volume_type(vt)
            .size(req.size_gib)
            .set_iops(req.iops)
            .set_throughput(req.throughput_mibps)
            .encrypted(req.encrypted)
            .set_kms_key_id(req.kms_key_id.clone())
            .set_snapshot_id(req.snapshot_id.clone())
            .set_volume_initialization_rate(req.volume_initialization_rate_mibps)
            .client_token(&req.client_token)
            .tag_specifications(tag_spec(t::ResourceType::Volume, &req.tags))
            .send()
            .await
            .map_err(|e| err("CreateVolume", e))?;
        Ok(Volume {
            volume_id: out.volume_id().unwrap_or_default().to_string(),
            availability_zone: out.availability_zone().unwrap_or_default().to_string(),
            state: VolumeState::parse(out.state().map(|s| s.as_str()).unwrap_or_default()),
            volume_type: out
                .volume_type()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            size_gib: out.size().unwrap_or(req.size_gib),
            iops: out.iops(),
            throughput_mibps: out.throughput(),
            encrypted: out.encrypted().unwrap_or(req.encrypted),
            snapshot_id: out
                .snapshot_id()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            attachments: vec![],
            tags: tag_map(out.tags()),
        })
    }

    async fn find_volumes(&self, tags: &[(String, String)]) -> Result<Vec<Volume>, AwsError> {
        self.volumes_where(tag_filters(tags)).await
    }

    async fn find_volumes_any(
        &self,
        key: &str,
        values: &[String],
    ) -> Result<Vec<Volume>, AwsError> {
        if values.is_empty() {
            return Ok(vec![]);
        }
        self.volumes_where(vec![any_of(&format!("tag:{key}"), values)])
            .await
    }

    async fn describe_volumes(&self, ids: &[String]) -> Result<Vec<Volume>, AwsError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        // A filter on volume-id (unlike VolumeIds) does not fail the whole call when one of
        // the IDs no longer exists: the missing one is simply absent from the answer.
        let filter = any_of("volume-id", ids);
        let out = self
            .client
            .describe_volumes()
            .filters(filter)
            .send()
            .await
            .map_err(|e| err("DescribeVolumes", e))?;
        Ok(out.volumes().iter().map(volume).collect())
    }

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<AttachmentState, AwsError> {
        let out = self
            .client
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device)
            .send()
            .await
            .map_err(|e| err("AttachVolume", e))?;
        Ok(out
            .state()
            .map(|s| AttachmentState::parse(s.as_str()))
            .unwrap_or(AttachmentState::Unknown))
    }

    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), AwsError> {
        match self
            .client
            .detach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .force(force)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => detached_already(err("DetachVolume", e)),
        }
    }

    async fn modify_volume(&self, req: &ModifyVolume) -> Result<(), AwsError> {
        self.client
            .modify_volume()
            .volume_id(&req.volume_id)
            .set_size(req.size_gib)
            .set_iops(req.iops)
            .set_throughput(req.throughput_mibps)
            .send()
            .await
            .map_err(|e| err("ModifyVolume", e))?;
        Ok(())
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError> {
        let r = self
            .client
            .delete_volume()
            .volume_id(volume_id)
            .send()
            .await;
        gone_is_done(r.map_err(|e| err("DeleteVolume", e)))
    }

    async fn create_snapshot_set(
        &self,
        req: &CreateSnapshotSet,
    ) -> Result<Vec<Snapshot>, AwsError> {
        let spec = t::InstanceSpecification::builder()
            .instance_id(&req.instance_id)
            .exclude_boot_volume(true)
            .set_exclude_data_volume_ids(
                (!req.exclude_volume_ids.is_empty()).then(|| req.exclude_volume_ids.clone()),
            )
            .build();
        let out = self
            .client
            .create_snapshots()
            .instance_specification(spec)
            .description(&req.description)
            .copy_tags_from_source(t::CopyTagsFromSource::Volume)
            .set_tag_specifications(
                (!req.tags.is_empty())
                    .then(|| vec![tag_spec(t::ResourceType::Snapshot, &req.tags)]),
            )
            .send()
            .await
            .map_err(|e| err("CreateSnapshots", e))?;
        Ok(out.snapshots().iter().map(snapshot_info).collect())
    }

    async fn describe_snapshots(&self, ids: &[String]) -> Result<Vec<Snapshot>, AwsError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        // As for volumes: a filter leaves a deleted snapshot out instead of failing the call.
        self.snapshots_where(vec![any_of("snapshot-id", ids)]).await
    }

    async fn attached_volumes(&self, instance_id: &str) -> Result<Vec<Volume>, AwsError> {
        self.volumes_where(vec![any_of(
            "attachment.instance-id",
            &[instance_id.to_string()],
        )])
        .await
    }

    async fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        if resource_ids.is_empty() || tags.is_empty() {
            return Ok(());
        }
        self.client
            .create_tags()
            .set_resources(Some(resource_ids.to_vec()))
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| t::Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| err("CreateTags", e))?;
        Ok(())
    }

    async fn changed_bytes(&self, first: &str, second: &str) -> Result<i64, AwsError> {
        let mut pages = self
            .ebs
            .list_changed_blocks()
            .first_snapshot_id(first)
            .second_snapshot_id(second)
            .into_paginator()
            .send();
        let mut bytes = 0i64;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("ListChangedBlocks", e))?;
            let block = i64::from(page.block_size().unwrap_or(512 * 1024));
            bytes += page.changed_blocks().len() as i64 * block;
        }
        Ok(bytes)
    }

    async fn find_snapshots(&self, tags: &[(String, String)]) -> Result<Vec<Snapshot>, AwsError> {
        self.snapshots_where(tag_filters(tags)).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), AwsError> {
        let r = self
            .client
            .delete_snapshot()
            .snapshot_id(snapshot_id)
            .send()
            .await;
        gone_is_done(r.map_err(|e| err("DeleteSnapshot", e)))
    }
}

#[cfg(test)]
mod tests {
    use super::attempt_outcome;

    #[test]
    fn outcomes_as_the_simulator_counts_them() {
        let throttle = b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>";
        assert_eq!(attempt_outcome(Some(200), Some(b"<ok/>")), "ok");
        assert_eq!(attempt_outcome(Some(503), Some(throttle)), "throttled");
        let unavailable =
            b"<Response><Errors><Error><Code>Unavailable</Code></Error></Errors></Response>";
        assert_eq!(attempt_outcome(Some(503), Some(unavailable)), "error");
        let throttling = b"<Response><Errors><Error><Code>ThrottlingException</Code></Error></Errors></Response>";
        assert_eq!(attempt_outcome(Some(400), Some(throttling)), "throttled");
        assert_eq!(attempt_outcome(Some(429), None), "throttled");
        assert_eq!(
            attempt_outcome(Some(400), Some(b"{\"__type\":\"ThrottlingException\"}")),
            "throttled"
        );
        assert_eq!(
            attempt_outcome(Some(400), Some(b"<Code>InvalidVolume.NotFound</Code>")),
            "error"
        );
        assert_eq!(attempt_outcome(None, None), "error");
    }
}
