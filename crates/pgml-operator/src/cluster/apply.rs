//! The reconcile of a PgmlCluster: read what exists (`world`), decide the instances
//! (placement, scaling, seeding) and the primary (`roles`), build the objects (`build`),
//! apply only what differs (`compare`), then write the status (`status`).

use k8s_openapi::api::core::v1::{PersistentVolume, Pod, Secret};
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::Action;
use pgml_api::PgmlCluster;
use pgml_api::cluster::{PgmlClusterStatus, SeedFrom};
use pgml_api::snapshot::SnapshotPhase;
use serde_json::{Value, json};

use super::archiving;
use super::build::{Builder, Instance, PodRole, stale_irsa_annotation};
use super::compare::covers;
use super::identity;
use super::members::{Rec, donor, instance_statuses, members, pgdata_mount};
use super::names::{self, PG_BASEBACKUP, SecretKind};
use super::placement;
use super::roles::{self, Member, Roles};
use super::secrets;
use super::snapshots;
use super::status::{self, Notice, Summary};
use super::world::World;
use crate::runtime::conditions::now;
use crate::runtime::{Context, Error, FIELD_MANAGER, events};

/// Field manager of the marks the controller changes on live Pods (role label, fence):
/// a Pod's spec is immutable, so these are applied apart from the Pod that created it.
pub const MARKS_MANAGER: &str = "pgml-operator-marks";
/// Field manager of the seed EbsSnapshots: the EbsSnapshot controller applies their
/// labels as `pgml-operator`, an apply that would drop a spec made by the same manager.
pub const SEED_MANAGER: &str = "pgml-operator-cluster";

/// What is known of a stored object before applying.
enum Stored {
    Known(Option<Value>),
    Fetch,
}

struct Run<'a> {
    ctx: &'a Context,
    cluster: &'a PgmlCluster,
    b: Builder<'a>,
    w: World,
    notes: Vec<Notice>,
    building: Vec<String>,
    /// What in the spec could not be built (beyond `validate::check_cluster`).
    spec_errors: Vec<String>,
    /// The primary's Pod may be labelled primary: the stored status records the
    /// database's identity ([`identity::routable`]; see there why the stored one).
    routable: bool,
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

/// The fields an apply would set, without the type (a typed object serializes it, a
/// dynamic one may not).
fn content(desired: &Value) -> Value {
    let mut v = desired.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
    }
    v
}

fn to_value<T: serde::Serialize>(o: &T) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

fn deleting<K: kube::Resource>(o: &K) -> bool {
    o.meta().deletion_timestamp.is_some()
}

impl Run<'_> {
    fn note(&mut self, warning: bool, reason: &str, note: String) {
        self.notes.push((warning, reason.into(), note));
    }

    /// Server-side applies `desired` unless the stored object already has every field of
    /// it. Returns whether it wrote.
    async fn ensure(&self, desired: &Value, stored: Stored) -> Result<bool, Error> {
        self.ensure_as(FIELD_MANAGER, desired, stored).await
    }

    async fn ensure_as(
        &self,
        manager: &str,
        desired: &Value,
        stored: Stored,
    ) -> Result<bool, Error> {
        let (api, name) = api_for(self.ctx, desired).ok_or(Error::Incomplete("kind or name"))?;
        let stored = match stored {
            Stored::Known(v) => v,
            Stored::Fetch => api.get_opt(&name).await?.map(|o| to_value(&o)),
        };
        if stored.is_some_and(|s| covers(&s, &content(desired))) {
            return Ok(false);
        }
        api.patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(desired),
        )
        .await?;
        Ok(true)
    }

    /// Deletes an object; already gone is fine.
    async fn delete(&self, desired: &Value) -> Result<bool, Error> {
        let (api, name) = api_for(self.ctx, desired).ok_or(Error::Incomplete("kind or name"))?;
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The credentials Secrets, created once. An existing one is never read (only its
    /// metadata is) nor rewritten.
    /// Once the cluster has a primary, a missing Secret is not made again: its password is
    /// the one PostgreSQL holds, and a new one would break replication and clients
    /// silently. It is reported instead (restore it, or create it with the password set in
    /// PostgreSQL).
    async fn ensure_secrets(&mut self, bootstrapped: bool) -> Result<(), Error> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.b.c.namespace);
        for kind in SecretKind::ALL {
            let name = self.b.c.secret(kind);
            if api.get_metadata_opt(&name).await?.is_some() {
                continue;
            }
            if bootstrapped {
                let why = format!(
                    "Secret {name} is missing; the operator does not make a new password for a cluster that exists: restore it, or create it with user {} and the password PostgreSQL has",
                    kind.username()
                );
                self.note(true, "SecretMissing", why.clone());
                self.building.push(why);
                continue;
            }
            let password = secrets::password()
                .map_err(|e| Error::Other(format!("no randomness from the OS: {e}")))?;
            let secret: Secret = serde_json::from_value(self.b.secret(kind, &password))
                .map_err(|e| Error::Other(format!("building Secret {name}: {e}")))?;
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match api.create(&pp, &secret).await {
                Ok(_) => self.note(
                    false,
                    "SecretCreated",
                    format!("created Secret {name} (user {})", kind.username()),
                ),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// ConfigMap, Services and the instances' RBAC. A ConfigMap that cannot be rendered
    /// (pgBackRest's part) is left as it is: a spec error, never half applied.
    async fn ensure_shared(&mut self) -> Result<(), Error> {
        let mut bodies = vec![];
        match self.b.config_map() {
            Ok(cm) => bodies.push(cm),
            Err(e) => {
                let why = format!(
                    "spec.backups.pgbackrest: {e}; ConfigMap {} is left as it was",
                    self.b.c.config()
                );
                self.note(true, "PgBackRestConfigInvalid", why.clone());
                self.spec_errors.push(why);
            }
        }
        bodies.extend(self.b.services());
        bodies.extend(self.b.rbac());
        for body in bodies {
            let stored = if body["kind"] == "ServiceAccount" {
                // IRSA's role annotation once the mode changed: covered (extra fields are)
                // but to be removed, which only an apply without it does.
                let (api, name) = api_for(self.ctx, &body).ok_or(Error::Incomplete("name"))?;
                let sa = api.get_opt(&name).await?.map(|o| to_value(&o));
                match sa {
                    Some(sa) if stale_irsa_annotation(&sa, &body, FIELD_MANAGER) => {
                        Stored::Known(None)
                    }
                    sa => Stored::Known(sa),
                }
            } else {
                Stored::Fetch
            };
            if self.ensure(&body, stored).await? {
                let what = format!(
                    "{} {}",
                    body["kind"].as_str().unwrap_or_default(),
                    body["metadata"]["name"].as_str().unwrap_or_default()
                );
                tracing::info!(cluster = %self.b.c.name, namespace = %self.b.c.namespace, object = %what, "applied");
            }
        }
        Ok(())
    }

    /// The instances recorded in status, plus any whose pool or Pod exists without a
    /// record (a status write lost after the objects were made).
    fn recorded(&self, observed: &PgmlClusterStatus) -> Vec<Rec> {
        let c = &self.b.c;
        let mut recs: Vec<Rec> = observed
            .instances
            .iter()
            .filter_map(|i| {
                Some(Rec {
                    n: c.index_of(&i.name)?,
                    name: i.name.clone(),
                    node: i.node.clone()?,
                    zone: i.availability_zone.clone(),
                    seeded_from: i.seeded_from.clone(),
                    fenced: i.fenced,
                })
            })
            .collect();
        let adopt_pools = self
            .w
            .pools
            .iter()
            .filter(|(_, p)| !deleting(*p))
            .map(|(name, p)| {
                let seeded = p
                    .spec
                    .restore_from
                    .as_ref()
                    .map(|r| r.ebs_snapshot_name.clone());
                (name.clone(), p.spec.node_name.clone(), seeded)
            });
        let adopt_pods = self
            .w
            .pods
            .iter()
            .filter(|(_, p)| !deleting(*p))
            .filter_map(|(name, p)| {
                let node = p.spec.as_ref()?.node_name.clone()?;
                Some((name.clone(), node, None))
            });
        for (name, node, seeded_from) in adopt_pools.chain(adopt_pods).collect::<Vec<_>>() {
            let Some(n) = c.index_of(&name) else { continue };
            if recs.iter().any(|r| r.n == n) {
                continue;
            }
            let zone = self.w.node(&node).and_then(|f| f.zone.clone());
            recs.push(Rec {
                n,
                name,
                node,
                zone,
                seeded_from,
                fenced: false,
            });
        }
        recs.sort_by_key(|r| r.n);
        recs
    }

    /// Scales down (highest numbers first, never the primary nor the target), then places
    /// new instances. Returns the instances and, when a node was missing, why.
    async fn scale(
        &mut self,
        observed: &PgmlClusterStatus,
        desired: usize,
    ) -> Result<(Vec<Rec>, Option<String>), Error> {
        let spec = &self.cluster.spec;
        let mut recs = self.recorded(observed);
        let keep = |r: &Rec| {
            Some(r.name.as_str()) == observed.current_primary.as_deref()
                || Some(r.name.as_str()) == observed.target_primary.as_deref()
        };
        while recs.len() > desired {
            let Some(at) = recs.iter().rposition(|r| !keep(r)) else {
                break;
            };
            let r = recs.remove(at);
            self.remove(&r).await?;
        }
        let bootstrap = recs.is_empty() && observed.current_primary.is_none();
        let mut unplaced = None;
        let mut next = self.highest_index(&recs);
        while recs.len() < desired {
            let used: Vec<(String, Option<String>)> = recs
                .iter()
                .map(|r| (r.node.clone(), r.zone.clone()))
                .collect();
            let Some(node) =
                placement::choose(&self.w.nodes, &used, &spec.node_selector, &spec.tolerations)
            else {
                unplaced = Some(format!(
                    "no node for another instance: {} needed, {} placed; an instance needs a Ready node matching nodeSelector, tolerating its taints, with no other instance of this cluster",
                    desired,
                    recs.len()
                ));
                break;
            };
            next += 1;
            let seeded_from = if bootstrap && recs.is_empty() {
                None
            } else if spec.storage.zfs.is_some() && spec.replicas.seed_from == SeedFrom::Snapshot {
                Some(self.b.c.seed(next))
            } else {
                Some(PG_BASEBACKUP.to_string())
            };
            recs.push(Rec {
                n: next,
                name: self.b.c.instance(next),
                node: node.name.clone(),
                zone: node.zone.clone(),
                seeded_from,
                fenced: false,
            });
        }
        Ok((recs, unplaced))
    }

    /// The highest instance number in use by any object (a removed instance's objects may
    /// still be going away).
    fn highest_index(&self, recs: &[Rec]) -> u32 {
        let c = &self.b.c;
        let names = self
            .w
            .pools
            .keys()
            .chain(self.w.pods.keys())
            .chain(self.w.pvcs.keys());
        names
            .filter_map(|n| c.index_of(n))
            .chain(recs.iter().map(|r| r.n))
            .max()
            .unwrap_or(0)
    }

    /// Deletes an instance's objects: Pod, claim, pool, volume and seed.
    async fn remove(&mut self, r: &Rec) -> Result<(), Error> {
        let i = self.instance(r, false);
        let mut bodies = vec![self.b.pod(&i), self.b.pvc(&i)];
        bodies.extend(self.b.pool(&i));
        if self.cluster.spec.storage.zfs.is_some() {
            bodies.push(self.b.pv(&i, ""));
            bodies.push(self.b.seed_snapshot(r.n, ""));
        }
        for body in &bodies {
            self.delete(body).await?;
        }
        tracing::info!(cluster = %self.b.c.name, instance = %r.name, "instance removed (scale down)");
        Ok(())
    }

    fn instance(&self, r: &Rec, primary: bool) -> Instance {
        let role = match (primary, self.routable) {
            (true, true) => PodRole::Primary,
            (true, false) => PodRole::Unrouted,
            (false, _) => PodRole::Replica,
        };
        Instance {
            n: r.n,
            name: r.name.clone(),
            node: r.node.clone(),
            role,
            fenced: r.fenced,
            restore_from: r.seeded_from.clone().filter(|s| s != PG_BASEBACKUP),
        }
    }

    /// The seed snapshot of a new instance: made of a donor, awaited until Completed.
    /// True once the pool may be restored from it.
    async fn seed_ready(
        &mut self,
        r: &Rec,
        seed: &str,
        members: &[Member],
        current: Option<&str>,
    ) -> Result<bool, Error> {
        let phase = self
            .w
            .snapshots
            .get(seed)
            .map(|s| s.status.as_ref().and_then(|st| st.phase));
        match phase {
            Some(Some(SnapshotPhase::Completed)) => return Ok(true),
            Some(Some(SnapshotPhase::Failed)) => {
                let body = self.b.seed_snapshot(r.n, "");
                self.delete(&body).await?;
                self.note(true, "SeedFailed", format!("EbsSnapshot {seed} to seed {} failed; it is deleted and a new one will be taken", r.name));
                self.building.push(format!(
                    "{}: its seed snapshot failed, taking another",
                    r.name
                ));
            }
            Some(p) => {
                let p = p
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "Pending".into());
                self.building
                    .push(format!("{}: seed snapshot {seed} is {p}", r.name));
            }
            None => match donor(members, current, &r.name) {
                Some(d) => {
                    let body = self.b.seed_snapshot(r.n, &d);
                    self.ensure_as(SEED_MANAGER, &body, Stored::Known(None))
                        .await?;
                    self.note(
                        false,
                        "Seeding",
                        format!("taking EbsSnapshot {seed} of {d} to seed {}", r.name),
                    );
                    self.building
                        .push(format!("{}: seed snapshot {seed} of {d} requested", r.name));
                }
                None => self.building.push(format!(
                    "{}: waiting for a ready instance to snapshot",
                    r.name
                )),
            },
        }
        Ok(false)
    }

    /// An instance's pool, volume, claim and Pod, in that order, each once the one before
    /// is usable.
    async fn ensure_instance(
        &mut self,
        r: &Rec,
        roles: &Roles,
        members: &[Member],
    ) -> Result<(), Error> {
        let current = roles.current.as_deref();
        let i = self.instance(r, current == Some(r.name.as_str()));
        if self.cluster.spec.storage.zfs.is_some() {
            let pool = self.w.pools.get(&r.name).cloned();
            if let Some(p) = &pool
                && deleting(p)
            {
                self.building
                    .push(format!("{}: its ZfsPool is being deleted", r.name));
                return Ok(());
            }
            if pool.is_none()
                && let Some(seed) = i.restore_from.clone()
                && !self.seed_ready(r, &seed, members, current).await?
            {
                return Ok(());
            }
            let body = self.b.pool(&i).ok_or(Error::Incomplete("storage.zfs"))?;
            if self
                .ensure(&body, Stored::Known(pool.as_ref().map(to_value)))
                .await?
                && pool.is_none()
            {
                let from = i
                    .restore_from
                    .as_ref()
                    .map(|s| format!(", restored from EbsSnapshot {s}"))
                    .unwrap_or_default();
                self.note(
                    false,
                    "PoolCreated",
                    format!("created ZfsPool {} on node {}{from}", r.name, r.node),
                );
            }
            let path = pool.as_ref().and_then(pgdata_mount);
            let Some(path) = path else {
                self.building.push(format!(
                    "{}: waiting for ZfsPool {} to mount pgdata",
                    r.name, r.name
                ));
                return Ok(());
            };
            if self.ensure(&self.b.pv(&i, &path), Stored::Fetch).await? {
                self.note(
                    false,
                    "VolumeBound",
                    format!(
                        "PersistentVolume {} at {path} on {} for {}",
                        self.b.c.pv_name(r.n),
                        r.node,
                        r.name
                    ),
                );
            }
        }
        let pvc = self.w.pvcs.get(&r.name).map(to_value);
        let created = pvc.is_none();
        if self.ensure(&self.b.pvc(&i), Stored::Known(pvc)).await? && created {
            tracing::info!(cluster = %self.b.c.name, instance = %r.name, "claim created");
        }
        self.ensure_pod(r, &i, roles, members).await?;
        self.drop_seed(r, members).await
    }

    async fn ensure_pod(
        &mut self,
        r: &Rec,
        i: &Instance,
        roles: &Roles,
        members: &[Member],
    ) -> Result<(), Error> {
        let Some(pod) = self.w.pods.get(&r.name).cloned() else {
            // The primary's Pod is gone: recreating it now would hide the loss. When a
            // replica can take over, the failover grace decides first.
            let current = roles.current.as_deref() == Some(r.name.as_str());
            let settled = roles.current == roles.target;
            if current
                && settled
                && !r.fenced
                && roles::failover_candidate(members, &r.name).is_some()
            {
                self.building.push(format!(
                    "{}: the primary's Pod is gone; failing over after the grace period",
                    r.name
                ));
                return Ok(());
            }
            self.ensure(&self.b.pod(i), Stored::Known(None)).await?;
            let fenced = if r.fenced { " (fenced)" } else { "" };
            self.note(
                false,
                "PodCreated",
                format!("created Pod {} on node {}{fenced}", r.name, r.node),
            );
            return Ok(());
        };
        if deleting(&pod) {
            self.building
                .push(format!("{}: its Pod is being deleted", r.name));
            return Ok(());
        }
        // A Pod's spec cannot change in place; a new image or resources reach it only when
        // it is made again. Said, not done: restarting instances is the user's call here.
        if !covers(&to_value(&pod.spec), &self.b.pod(i)["spec"]) {
            self.note(
                true,
                "PodOutdated",
                format!(
                    "Pod {} runs an older spec than the cluster's (image, resources, scheduling): delete it to have it made again (replicas first, then switch over)",
                    r.name
                ),
            );
        }
        let marks = self.b.pod_marks(i);
        if covers(&to_value(&pod.metadata), &marks) {
            return Ok(());
        }
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": marks});
        Api::<Pod>::namespaced(self.ctx.client.clone(), &self.b.c.namespace)
            .patch(
                &r.name,
                &PatchParams::apply(MARKS_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        if r.fenced && pod.annotations().get(names::FENCED).map(String::as_str) != Some("true") {
            self.note(
                true,
                "Fencing",
                format!(
                    "annotated Pod {} {}=true: its PostgreSQL stops and stays stopped",
                    r.name,
                    names::FENCED
                ),
            );
        }
        Ok(())
    }

    /// Deletes the seed snapshot once its instance streams from the primary.
    async fn drop_seed(&mut self, r: &Rec, members: &[Member]) -> Result<(), Error> {
        let Some(seed) = r.seeded_from.as_deref().filter(|s| *s != PG_BASEBACKUP) else {
            return Ok(());
        };
        if self.w.snapshots.get(seed).is_none_or(deleting) {
            return Ok(());
        }
        let streaming = members
            .iter()
            .find(|m| m.name == r.name)
            .and_then(|m| m.reported.as_ref())
            .is_some_and(|rep| rep.streaming);
        if streaming && self.delete(&self.b.seed_snapshot(r.n, "")).await? {
            self.note(
                false,
                "SeedDeleted",
                format!(
                    "{} streams from the primary; deleted its seed EbsSnapshot {seed}",
                    r.name
                ),
            );
        }
        Ok(())
    }
}

pub async fn reconcile(cluster: &PgmlCluster, ctx: &Context) -> Result<Action, Error> {
    let b = Builder::new(cluster, &ctx.settings.cluster.instance_image)
        .ok_or(Error::Incomplete("namespace or name"))?;
    let w = World::load(ctx, &b.c).await?;
    let mut run = Run {
        ctx,
        cluster,
        b,
        w,
        notes: vec![],
        building: vec![],
        spec_errors: vec![],
        routable: cluster.status.as_ref().is_some_and(identity::routable),
    };
    let observed = cluster.status.clone().unwrap_or_default();
    let spec = &cluster.spec;

    run.ensure_secrets(observed.current_primary.is_some())
        .await?;
    run.ensure_shared().await?;

    let desired = spec.instances.max(1) as usize;
    let (mut recs, unplaced) = run.scale(&observed, desired).await?;

    // Who is primary.
    let mut ms = members(&recs, &run.w);
    let current = observed.current_primary.as_deref();
    let settled = observed
        .target_primary
        .as_deref()
        .is_none_or(|t| Some(t) == current);
    // The instance whose loss matters: the primary, or the one being promoted.
    let watched = if settled {
        current
    } else {
        observed.target_primary.as_deref()
    };
    let lost = watched
        .and_then(|c| ms.iter().find(|m| m.name == c))
        .is_some_and(roles::lost);
    let key = |name: &str| format!("{}/lost/{name}", crate::runtime::object_key(cluster));
    // One timer at a time: another instance's (an earlier primary's) must not carry over.
    for r in recs.iter().filter(|r| Some(r.name.as_str()) != watched) {
        ctx.held_for(&key(&r.name), false);
    }
    let lost_for = ctx.held_for(&key(watched.unwrap_or_default()), lost);
    let first = recs
        .first()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| run.b.c.instance(1));
    // Nothing placed yet (no node fits): no primary to name either, so that the first
    // instance placed later is still the bootstrap one.
    let decided = if recs.is_empty() {
        Roles {
            current: observed.current_primary.clone(),
            target: observed.target_primary.clone(),
            ..Roles::default()
        }
    } else {
        roles::decide(&roles::Input {
            first: &first,
            current,
            target: observed.target_primary.as_deref(),
            wanted: spec.primary.as_deref(),
            members: &ms,
            lost_for,
            grace: ctx.settings.cluster.failover_grace,
        })
    };
    for f in &decided.fence {
        for r in recs.iter_mut().filter(|r| &r.name == f) {
            r.fenced = true;
        }
        for m in ms.iter_mut().filter(|m| &m.name == f) {
            m.fenced = true;
        }
        tracing::warn!(cluster = %run.b.c.name, instance = %f, "fencing the lost primary");
    }
    if let Some((kind, from, to)) = &decided.started {
        tracing::info!(cluster = %run.b.c.name, ?kind, %from, %to, "change of primary started");
    }

    for r in recs.clone() {
        run.ensure_instance(&r, &decided, &ms).await?;
    }

    let summary = Summary {
        desired: desired as i32,
        instances: instance_statuses(&recs, &ms, decided.current.as_deref(), &run.w.pools),
        current: decided.current.clone(),
        target: decided.target.clone(),
        building: run.building.clone(),
        roles_waiting: decided.waiting.clone(),
        unplaced,
        spec_errors: pgml_api::validate::check_cluster(cluster)
            .iter()
            .map(ToString::to_string)
            .chain(run.spec_errors.iter().cloned())
            .collect(),
        snapshots: snapshots::last_snapshot(&run.b.c.name, &run.w.backups),
        // Recorded in this status write; the Pod is labelled primary in a later reconcile
        // (`run.routable` is the stored status's).
        system_identifier: identity::to_record(
            observed.system_identifier.as_deref(),
            decided.current.as_deref(),
            &ms,
        ),
        pgbackrest: archiving::Seen {
            configured: spec.backups.pgbackrest.is_some(),
            primary: decided.current.clone(),
            report: decided
                .current
                .as_deref()
                .and_then(|p| ms.iter().find(|m| m.name == p))
                .and_then(|m| m.reported.clone()),
        },
    };
    let new = status::compute(&summary, &observed, cluster.metadata.generation, &now());
    status::commit(ctx, cluster, &observed, &new).await?;
    for (warning, why, note) in std::mem::take(&mut run.notes) {
        events::publish(ctx, cluster, warning, &why, note).await;
    }

    let s = &ctx.settings;
    Ok(if lost_for.is_some() || decided.target != decided.current {
        Action::requeue(std::time::Duration::from_secs(2))
    } else if !summary.building.is_empty() || summary.unplaced.is_some() {
        Action::requeue(s.requeue.progress)
    } else {
        Action::requeue(s.requeue.ready)
    })
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
