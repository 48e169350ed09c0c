//! pgml-operator's controllers, as a library so tests can run them in-process against the
//! sandbox with their own kube Client and [`pgml_aws::Ec2`].

pub mod zfspool;

pub use zfspool::{Context, Settings, run, run_until};
