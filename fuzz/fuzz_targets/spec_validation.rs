//! The checks the operator makes beyond the CRD schema (`pgml_api::validate`), on whatever a
//! user could write: any JSON or YAML that deserializes into a PgmlCluster, ZfsPool or
//! EbsSnapshot goes through every check without a panic, and each error has a reason and a
//! message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgml_api::validate::{
    SpecError, check_attachments, check_cluster, check_pool_schedule, check_pool_template,
    check_restore, performance_ceiling,
};
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};

fn explained(errors: &[SpecError]) {
    for e in errors {
        assert!(!e.reason().is_empty());
        assert!(!e.to_string().is_empty());
        let _ = e.may_resolve_by_itself();
    }
}

fn parse<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    serde_json::from_slice(data)
        .ok()
        .or_else(|| serde_yaml::from_slice(data).ok())
}

fuzz_target!(|data: &[u8]| {
    if let Some(c) = parse::<PgmlCluster>(data) {
        explained(&check_cluster(&c));
    }
    if let Some(p) = parse::<ZfsPool>(data) {
        explained(&check_pool_template(&p.spec.template));
        explained(&check_pool_schedule(&p.spec));
        let free = data.len() as i32 % 40 - 2;
        if let Err(e) = check_attachments(&p.spec.template.volumes, free, "m6i.large") {
            explained(&[e]);
        }
        let c = performance_ceiling(
            &p.spec.template.volumes,
            p.spec.template.layout,
            Some(40_000),
            None,
        );
        assert!(c.iops <= c.volume_iops.max(40_000));
        if let Some(s) = parse::<EbsSnapshot>(data)
            && let Err(e) = check_restore(&p.spec, &s)
        {
            explained(&[e]);
        }
    }
});
