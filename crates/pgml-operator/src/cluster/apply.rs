//! Apply: the plan's steps in order against the API server, then the status and the
//! Events. A short driver: what to write is the plan's; here only whether a stored object
//! already has it (read just before its write), the answers, and the failover timer.
//!
//! observe ([`Observed::load`]) → [`plan::layout`] → apply → the timer → [`plan::plan`] →
//! apply → status ([`status::compute`], [`status::commit`]) → Events.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, Secret};
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    PostParams, Preconditions,
};
use kube::runtime::controller::Action;
use pgml_api::PgmlCluster;
use serde_json::Value;

use super::build::{Builder, stale_irsa_annotation};
use super::compare::{to_value, unchanged};
use super::names::SecretKind;
use super::observe::Observed;
use super::plan::{self, Missing, Step, Watch, When};
use super::roles::Roles;
use super::secrets;
use super::status::{self, Notice, reason};
use crate::runtime::conditions::now;
use crate::runtime::{Context, Error, FIELD_MANAGER, events, object_key};

/// What the apply found along the way.
#[derive(Default)]
struct Done {
    /// The Events to publish once the status is written, in the order they came, each
    /// with the object it is about when there is one (see [`events::publish_related`]).
    notes: Vec<(Notice, Option<ObjectReference>)>,
    /// Why the cluster is not complete, as only a read could tell (a missing Secret).
    building: Vec<String>,
}

pub async fn reconcile(cluster: &PgmlCluster, ctx: &Context) -> Result<Action, Error> {
    let b = Builder::new(cluster, &ctx.settings.cluster.instance_image)
        .ok_or(Error::Incomplete("namespace or name"))?
        .with_network_policy(ctx.settings.cluster.network_policies);
    let o = Observed::load(ctx, cluster, &b.c).await?;
    let mut done = Done::default();
    let layout = plan::layout(&b, &o);
    run(ctx, &b, &layout.steps, &mut done).await?;
    let lost_for = loss_timer(ctx, cluster, &layout.watch);
    let grace = ctx.settings.cluster.failover_grace;
    let plan = plan::plan(&b, &o, &layout, lost_for, grace);
    log_roles(&b, &plan.roles);
    run(ctx, &b, &plan.steps, &mut done).await?;

    let summary = plan::summary(&b, &o, &layout, &plan, done.building);
    let new = status::compute(&summary, &o.status, cluster.metadata.generation, &now());
    status::commit(ctx, cluster, &o.status, &new).await?;
    for ((warning, why, note), related) in done.notes {
        events::publish_related(ctx, cluster, related, warning, &why, note).await;
    }
    let after = plan::requeue(&plan, &summary, &ctx.settings.requeue);
    Ok(Action::requeue(after))
}

/// How long the watched instance has been lost (`None`: it is not), by the Context's
/// timers, which stop for every other instance.
fn loss_timer(ctx: &Context, cluster: &PgmlCluster, watch: &Watch) -> Option<Duration> {
    let key = |name: &str| format!("{}/lost/{name}", object_key(cluster));
    for name in &watch.others {
        ctx.held_for(&key(name), false);
    }
    let watched = watch.watched.as_deref().unwrap_or_default();
    ctx.held_for(&key(watched), watch.lost)
}

fn log_roles(b: &Builder, roles: &Roles) {
    for f in &roles.fence {
        tracing::warn!(cluster = %b.c.name, instance = %f, "fencing the lost primary");
    }
    if let Some((kind, from, to)) = &roles.started {
        tracing::info!(cluster = %b.c.name, ?kind, %from, %to, "change of primary started");
    }
}

/// Runs the steps in order; the first error ends the reconcile.
async fn run(ctx: &Context, b: &Builder<'_>, steps: &[Step], done: &mut Done) -> Result<(), Error> {
    for step in steps {
        match step {
            Step::Secret { kind, missing } => secret(ctx, b, *kind, missing, done).await?,
            Step::Apply {
                body,
                manager,
                when,
                then,
            } => {
                if write(ctx, b, body, manager, *when).await? {
                    let about = events::reference_to(body);
                    done.notes.extend(then.clone().map(|n| (n, about)));
                }
            }
            Step::Delete { body, then } => {
                if delete(ctx, body).await? {
                    let about = events::reference_to(body);
                    done.notes.extend(then.clone().map(|n| (n, about)));
                }
            }
            Step::Remove { instance, bodies } => {
                for body in bodies {
                    delete(ctx, body).await?;
                }
                tracing::info!(cluster = %b.c.name, %instance, "instance removed (scale down)");
            }
            Step::Note(n, about) => {
                let about = about.as_ref().and_then(events::reference_to);
                done.notes.push((n.clone(), about));
            }
        }
    }
    Ok(())
}

fn api_for(ctx: &Context, desired: &Value) -> Option<(Api<DynamicObject>, String)> {
    let av = desired["apiVersion"].as_str()?;
    let kind = desired["kind"].as_str()?;
    let (group, version) = av.split_once('/').unwrap_or(("", av));
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let name = desired["metadata"]["name"].as_str()?.to_string();
    let api = match desired["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        None => Api::all_with(ctx.client.clone(), &ar),
    };
    Some((api, name))
}

/// Server-side applies `body` as `manager`, unless `when` asks to read the stored object
/// first and it already has every field. Returns whether it wrote.
async fn write(
    ctx: &Context,
    b: &Builder<'_>,
    body: &Value,
    manager: &str,
    when: When,
) -> Result<bool, Error> {
    let (api, name) = api_for(ctx, body).ok_or(Error::Incomplete("kind or name"))?;
    if when != When::Always {
        let stored = api.get_opt(&name).await?.map(|o| to_value(&o));
        let stale = when == When::ChangedOrStaleIrsa
            && stored
                .as_ref()
                .is_some_and(|s| stale_irsa_annotation(s, body, FIELD_MANAGER));
        if !stale && unchanged(stored.as_ref(), body) {
            return Ok(false);
        }
    }
    let pp = PatchParams::apply(manager).force();
    api.patch(&name, &pp, &Patch::Apply(body)).await?;
    let kind = body["kind"].as_str().unwrap_or_default();
    tracing::info!(cluster = %b.c.name, namespace = %b.c.namespace, object = %format!("{kind} {name}"), "applied");
    Ok(true)
}

/// Deletes an object; already gone is fine. Returns whether it deleted.
/// Deletes the object `body` names; with a `metadata.uid`, only that very object (one
/// made again since is not ours to delete: a conflict, taken as already gone).
async fn delete(ctx: &Context, body: &Value) -> Result<bool, Error> {
    let (api, name) = api_for(ctx, body).ok_or(Error::Incomplete("kind or name"))?;
    let mut params = DeleteParams::background();
    if let Some(uid) = body["metadata"]["uid"].as_str() {
        params.preconditions = Some(Preconditions {
            uid: Some(uid.into()),
            resource_version: None,
        });
    }
    match api.delete(&name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A credentials Secret: nothing when it exists; when missing, made with a new password
/// or reported, as the plan says.
async fn secret(
    ctx: &Context,
    b: &Builder<'_>,
    kind: SecretKind,
    missing: &Missing,
    done: &mut Done,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &b.c.namespace);
    let name = b.c.secret(kind);
    if api.get_metadata_opt(&name).await?.is_some() {
        return Ok(());
    }
    let created = match missing {
        Missing::Report(why) => {
            let warning = (true, reason::SECRET_MISSING.into(), why.clone());
            done.notes.push((warning, Some(secret_ref(b, &name))));
            done.building.push(why.clone());
            return Ok(());
        }
        Missing::Create(created) => created,
    };
    let password =
        secrets::password().map_err(|e| Error::Other(format!("no randomness from the OS: {e}")))?;
    let secret: Secret = serde_json::from_value(b.secret(kind, &password))
        .map_err(|e| Error::Other(format!("building Secret {name}: {e}")))?;
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&pp, &secret).await {
        Ok(_) => done
            .notes
            .push((created.clone(), Some(secret_ref(b, &name)))),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn secret_ref(b: &Builder<'_>, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        name: Some(name.into()),
        namespace: Some(b.c.namespace.clone()),
        ..ObjectReference::default()
    }
}

/// The PersistentVolumes of a cluster (cluster-scoped, so outside the garbage collector's
/// reach): what the finalizer deletes.
pub async fn delete_volumes(ctx: &Context, cluster: &PgmlCluster) -> Result<usize, Error> {
    let (Some(ns), Some(name)) = (&cluster.metadata.namespace, &cluster.metadata.name) else {
        return Err(Error::Incomplete("namespace or name"));
    };
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let lp = kube::api::ListParams::default().labels(&format!(
        "{}={name},{}={ns}",
        pgml_api::common::keys::CLUSTER,
        pgml_api::common::keys::NAMESPACE
    ));
    let mut n = 0;
    for pv in api.list(&lp).await?.items {
        let pv_name = pv.name_any();
        match api.delete(&pv_name, &DeleteParams::background()).await {
            Ok(_) => n += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}
