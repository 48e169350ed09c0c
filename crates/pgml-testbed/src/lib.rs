//! Test-bed support: everything a test needs to reach the running sandbox.
//!
//! The sandbox (see `tests/testbed/README.md`) is started by `make sandbox-up` or `make test`.
//! A test that runs without it fails loudly and says how to start it; nothing is skipped.

pub mod aws;
pub mod failpoint;
pub mod kube;
pub mod kubelet;
pub mod manifests;
pub mod nodes;
pub mod pg;
pub mod primaries;
pub mod procs;
pub mod rbac;
pub mod sandbox;
pub mod wait;

pub use sandbox::{Sandbox, workspace_bin};
