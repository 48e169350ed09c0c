//! Restore (`spec.restoreFrom`): the EbsSnapshot a pool's members are created from,
//! checked against the pool before anything is created (see docs/design/zfspool.md).

use std::collections::BTreeMap;

use kube::Api;
use pgml_api::ZfsPool;
use pgml_api::validate;
use pgml_api::zfspool::ZfsPoolStatus;

use super::build;
use super::status::reason;
use crate::runtime::{Context, Error};

/// Where a restored pool's members come from.
#[derive(Debug, Clone)]
pub struct Restore {
    pub name: String,
    pub sources: BTreeMap<usize, String>,
    pub rate_mibps: Option<i32>,
}

/// Why a restore cannot go on: the snapshot is missing, not Completed yet, or does not fit
/// the pool (SpecValid=False). Nothing is created meanwhile ([`super::plan::restore_blocked`]
/// says when to look again).
#[derive(Debug)]
pub struct Blocked {
    /// The SpecValid reason, when the spec is at fault.
    pub spec_error: Option<&'static str>,
    pub reason: &'static str,
    pub message: String,
    /// The snapshot may still become usable by itself (not Completed yet).
    pub waiting: bool,
}

/// `spec.restoreFrom`, while the pool still has members to create from it (once every
/// member exists, `status.restoredFrom` is set and the snapshot is no longer needed): the
/// EbsSnapshot it names, checked against the pool.
pub async fn resolve(
    pool: &ZfsPool,
    ctx: &Context,
    observed: &ZfsPoolStatus,
) -> Result<Result<Option<Restore>, Blocked>, Error> {
    let Some(from) = &pool.spec.restore_from else {
        return Ok(Ok(None));
    };
    if observed.restored_from.is_some() {
        return Ok(Ok(None));
    }
    let ns = pool.metadata.namespace.as_deref().unwrap_or_default();
    let name = &from.ebs_snapshot_name;
    let api: Api<pgml_api::EbsSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let Some(snap) = api.get_opt(name).await? else {
        return Ok(Err(Blocked {
            spec_error: None,
            reason: reason::SNAPSHOT_NOT_FOUND,
            message: format!(
                "restoreFrom: EbsSnapshot {name} does not exist; no volumes were created"
            ),
            waiting: false,
        }));
    };
    if let Err(e) = validate::check_restore(&pool.spec, &snap) {
        let waiting = e.may_resolve_by_itself();
        return Ok(Err(Blocked {
            spec_error: (!waiting).then(|| e.reason()),
            reason: e.reason(),
            message: format!("{e}; no volumes were created"),
            waiting,
        }));
    }
    let count = pool.spec.template.volumes.count.max(0) as usize;
    match build::restore_sources(&snap, count) {
        Ok(sources) => Ok(Ok(Some(Restore {
            name: name.clone(),
            sources,
            rate_mibps: from.volume_initialization_rate_mibps,
        }))),
        Err(m) => Ok(Err(Blocked {
            spec_error: Some("RestoreMismatch"),
            reason: "RestoreMismatch",
            message: format!("restoreFrom: {m}; no volumes were created"),
            waiting: false,
        })),
    }
}
