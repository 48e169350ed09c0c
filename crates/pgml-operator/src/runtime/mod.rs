//! What every controller shares, and the one way they run: the context (clients,
//! settings, backoff state), one classified error type, conditions, Events, server-side
//! apply, the ownership check before anything in EC2 is detached or deleted, and the runner that wires a controller's steps to kube-runtime. No controller
//! imports another's internals; they all import from here.

pub mod conditions;
pub mod context;
pub mod controller;
pub mod devices;
pub mod error;
pub mod events;
pub mod ownership;
pub mod ssa;

pub use context::{
    ClusterSettings, Context, PoolSettings, Requeue, Settings, SnapshotSettings,
    default_instance_image,
};
pub use controller::{Reconciled, object_key};
pub use error::{Class, Error};

/// The field manager of everything the controllers write.
pub const FIELD_MANAGER: &str = "pgml-operator";
