use super::*;

fn t(s: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
}

fn vol(i: i32, att: &str) -> VolumeStatus {
    VolumeStatus {
        index: i,
        volume_id: Some(format!("vol-{i}")),
        state: Some("in-use".into()),
        attachment_state: Some(att.into()),
        ..Default::default()
    }
}

fn facts(atts: &[&str]) -> Facts {
    Facts {
        generation: Some(2),
        node_name: "node-a".into(),
        pool_name: "tank".into(),
        count: 3,
        instance_id: "i-1".into(),
        instance_type: "m7i.large".into(),
        availability_zone: "us-east-1a".into(),
        volumes: atts
            .iter()
            .enumerate()
            .map(|(i, a)| vol(i as i32, a))
            .collect(),
        ..Default::default()
    }
}

fn cond<'a>(s: &'a ZfsPoolStatus, t: &str) -> &'a Condition {
    condition(s, t).unwrap_or_else(|| panic!("no {t}"))
}

#[test]
fn transition_time_is_kept_while_status_stays() {
    let mut conds = vec![];
    set_condition(
        &mut conds,
        &[],
        c::READY,
        false,
        "A",
        "m",
        Stamp {
            generation: Some(1),
            now: &t(100),
        },
    );
    let old = conds.clone();
    set_condition(
        &mut conds,
        &old,
        c::READY,
        false,
        "B",
        "m2",
        Stamp {
            generation: Some(2),
            now: &t(200),
        },
    );
    assert_eq!(conds[0].last_transition_time, t(100));
    assert_eq!(
        (conds[0].reason.as_str(), conds[0].observed_generation),
        ("B", Some(2))
    );
    let old = conds.clone();
    set_condition(
        &mut conds,
        &old,
        c::READY,
        true,
        "C",
        "m3",
        Stamp {
            generation: Some(2),
            now: &t(300),
        },
    );
    assert_eq!(conds[0].last_transition_time, t(300));
    assert_eq!(conds.len(), 1);
}

#[test]
fn attached_volumes_wait_for_the_agent() {
    let s = compute(&facts(&["attached"; 3]), &ZfsPoolStatus::default(), &t(1));
    assert_eq!(cond(&s, c::VOLUMES_ATTACHED).status, c::TRUE);
    let ready = cond(&s, c::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        (c::FALSE, reason::WAITING_FOR_AGENT)
    );
    assert!(ready.message.contains("node-a"), "{}", ready.message);
    assert_eq!(cond(&s, c::PROGRESSING).status, c::TRUE);
    assert_eq!(s.phase, Some(PoolPhase::Importing));
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(2))
    );
}

#[test]
fn phases_follow_progress() {
    let mut f = facts(&["attached"]);
    assert_eq!(
        compute(&f, &Default::default(), &t(1)).phase,
        Some(PoolPhase::Creating)
    );
    f = facts(&["attached", "attaching", "detached"]);
    let s = compute(&f, &Default::default(), &t(1));
    assert_eq!(s.phase, Some(PoolPhase::Attaching));
    assert_eq!(cond(&s, c::VOLUMES_ATTACHED).reason, reason::ATTACHING);
    f = facts(&["attached"; 3]);
    f.agent = AgentView {
        imported: true,
        healthy: true,
        health: Some("ONLINE".into()),
        ..Default::default()
    };
    let s = compute(&f, &Default::default(), &t(1));
    assert_eq!(s.phase, Some(PoolPhase::Online));
    assert_eq!(cond(&s, c::READY).status, c::TRUE);
    assert_eq!(cond(&s, c::PROGRESSING).status, c::FALSE);
}

#[test]
fn faulted_raid0_says_restore_from_snapshot() {
    let mut f = facts(&["attached"; 3]);
    f.agent = AgentView {
        imported: true,
        healthy: false,
        health: Some("FAULTED".into()),
        sick_members: vec![SickMember {
            index: 1,
            volume_id: Some("vol-1".into()),
            state: "UNAVAIL".into(),
        }],
        ..Default::default()
    };
    let s = compute(&f, &Default::default(), &t(1));
    let d = cond(&s, c::DEGRADED);
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        (c::TRUE, reason::POOL_FAULTED)
    );
    assert!(
        d.message.contains("member 1 (vol-1) is UNAVAIL"),
        "{}",
        d.message
    );
    assert!(d.message.contains("snapshot"), "{}", d.message);
    assert_eq!(s.phase, Some(PoolPhase::Failed));
    f.layout = Layout::Raidz1;
    f.agent.health = Some("DEGRADED".into());
    let s = compute(&f, &Default::default(), &t(1));
    assert_eq!(cond(&s, c::DEGRADED).reason, reason::POOL_DEGRADED);
    assert_eq!(s.phase, Some(PoolPhase::Degraded));
}

#[test]
fn a_replacement_is_reported_until_the_pool_is_online() {
    let mut f = facts(&["attached"; 3]);
    f.layout = Layout::Raidz1;
    f.agent = AgentView {
        imported: true,
        healthy: false,
        health: Some("DEGRADED".into()),
        ..Default::default()
    };
    // Recorded, not created yet: an entry without a volume.
    f.volumes[1] = VolumeStatus {
        index: 1,
        generation: 1,
        replaced_volume_id: Some("vol-1".into()),
        ..Default::default()
    };
    f.repair = RepairView::Replacing {
        index: 1,
        old: "vol-1".into(),
        new: None,
        attached: false,
    };
    let s = compute(&f, &Default::default(), &t(1));
    let d = cond(&s, c::DEGRADED);
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        (c::TRUE, reason::MEMBER_REPLACING)
    );
    assert!(
        d.message.contains("member 1 (vol-1) is lost"),
        "{}",
        d.message
    );
    assert_eq!(cond(&s, c::READY).reason, reason::MEMBER_REPLACING);
    assert_eq!(cond(&s, c::PROGRESSING).status, c::TRUE);
    assert_eq!(s.phase, Some(PoolPhase::Degraded));
    assert_eq!(s.volumes[1].generation, 1);
    // Progress, not a warning (MemberLost was the warning).
    let n = notices(&Default::default(), &s);
    assert!(
        n.iter()
            .any(|(w, r, _)| !*w && r == reason::MEMBER_REPLACING),
        "{n:?}"
    );

    f.repair = RepairView::Resilvering {
        index: 1,
        old: "vol-1".into(),
        new: "vol-9".into(),
        percent: Some(40),
    };
    let s2 = compute(&f, &s, &t(5));
    let d = cond(&s2, c::DEGRADED);
    assert_eq!(d.reason, reason::RESILVERING);
    assert!(d.message.contains("40% done"), "{}", d.message);
    assert_eq!(s2.phase, Some(PoolPhase::Resilvering));
    assert_eq!(d.last_transition_time, t(1), "still Degraded since t=1");

    // Done: the agent says ONLINE, nothing is replaced any longer.
    f.volumes[1] = vol(1, "attached");
    f.repair = RepairView::None;
    f.agent.health = Some("ONLINE".into());
    f.agent.healthy = true;
    let s3 = compute(&f, &s2, &t(9));
    assert_eq!(cond(&s3, c::DEGRADED).status, c::FALSE);
    assert_eq!(cond(&s3, c::READY).status, c::TRUE);
    assert_eq!(s3.phase, Some(PoolPhase::Online));
}

#[test]
fn manual_replacement_tells_the_user_what_to_do() {
    let mut f = facts(&["attached"; 3]);
    f.layout = Layout::Raidz1;
    f.repair = RepairView::Manual(vec![
        "member 2 (vol-2) is lost: its volume is in EBS state error".into(),
    ]);
    let s = compute(&f, &Default::default(), &t(1));
    let d = cond(&s, c::DEGRADED);
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        (c::TRUE, reason::MEMBER_LOST)
    );
    assert!(d.message.contains("member 2 (vol-2)"), "{}", d.message);
    assert!(
        d.message.contains("memberReplacement to Automatic"),
        "{}",
        d.message
    );
    assert_eq!(cond(&s, c::PROGRESSING).status, c::FALSE);
    assert_eq!(s.phase, Some(PoolPhase::Degraded));
    let n = notices(&Default::default(), &s);
    assert!(
        n.iter().any(|(w, r, _)| *w && r == reason::MEMBER_LOST),
        "{n:?}"
    );
}

#[test]
fn a_lost_raid0_member_is_faulted_before_the_agent_says_so() {
    let mut f = facts(&["attached"; 3]);
    f.repair = RepairView::Raid0(vec![
        "member 0 (vol-0) is lost: its volume is in EBS state error".into(),
    ]);
    let s = compute(&f, &Default::default(), &t(1));
    let d = cond(&s, c::DEGRADED);
    assert_eq!(d.reason, reason::POOL_FAULTED);
    assert!(d.message.contains("member 0 (vol-0)"), "{}", d.message);
    assert!(d.message.contains("snapshot"), "{}", d.message);
    assert_eq!(s.phase, Some(PoolPhase::Failed));
    assert_eq!(cond(&s, c::READY).status, c::FALSE);
}

#[test]
fn member_states_count_only_when_the_report_is_about_the_volume() {
    let s = ZfsPoolStatus {
        volumes: vec![
            VolumeStatus {
                index: 0,
                volume_id: Some("vol-0new".into()),
                device: Some("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0old".into()),
                member_state: Some("UNAVAIL".into()),
                ..Default::default()
            },
            VolumeStatus {
                index: 1,
                volume_id: Some("vol-0b".into()),
                device: Some("/x/nvme-Amazon_Elastic_Block_Store_vol0b".into()),
                member_state: Some("ONLINE".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let a = AgentView::read(&s);
    assert_eq!(a.member_state(0, "vol-0new"), None);
    assert_eq!(a.member_state(0, "vol-0old"), Some("UNAVAIL"));
    assert_eq!(a.reported_state(0), Some("UNAVAIL"));
    assert_eq!(a.member_state(1, "vol-0b"), Some("ONLINE"));
}

#[test]
fn member_states_follow_the_volume_the_agent_names_beside_them() {
    let s = ZfsPoolStatus {
        volumes: vec![
            // Mid-replacement: the state is the old volume's, whatever the device.
            VolumeStatus {
                index: 0,
                volume_id: Some("vol-0new".into()),
                device: Some("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0new".into()),
                member_state: Some("UNAVAIL".into()),
                member_volume_id: Some("vol-0old".into()),
                ..Default::default()
            },
            // A lost device has no link: the state is still the named volume's.
            VolumeStatus {
                index: 1,
                volume_id: Some("vol-0b".into()),
                member_state: Some("FAULTED".into()),
                member_volume_id: Some("vol-0b".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let a = AgentView::read(&s);
    assert_eq!(a.member_state(0, "vol-0new"), None);
    assert_eq!(a.member_state(0, "vol-0old"), Some("UNAVAIL"));
    assert_eq!(a.member_state(1, "vol-0b"), Some("FAULTED"));
    assert_eq!(a.sick_members[0].volume_id.as_deref(), Some("vol-0old"));
}

#[test]
fn attach_problems_stop_progress_with_their_reason() {
    let mut f = facts(&["attached", "detached", "attached"]);
    f.attach_problem = Some(AttachProblem {
        reason: reason::ATTACHED_ELSEWHERE,
        message: "vol-1 is attached to i-9".into(),
    });
    let s = compute(&f, &Default::default(), &t(1));
    assert_eq!(
        cond(&s, c::VOLUMES_ATTACHED).reason,
        reason::ATTACHED_ELSEWHERE
    );
    assert_eq!(cond(&s, c::PROGRESSING).status, c::FALSE);
    let n = notices(&ZfsPoolStatus::default(), &s);
    assert!(
        n.iter()
            .any(|(w, r, _)| *w && r == reason::ATTACHED_ELSEWHERE),
        "{n:?}"
    );
}

#[test]
fn a_lasting_attachment_is_reported_but_still_progressing() {
    let mut f = facts(&["attached", "attaching", "attached"]);
    f.attach_problem = Some(AttachProblem {
        reason: reason::ATTACHMENT_STUCK,
        message: "member 1 attaching for 300s".into(),
    });
    let s = compute(&f, &Default::default(), &t(1));
    assert_eq!(
        cond(&s, c::VOLUMES_ATTACHED).reason,
        reason::ATTACHMENT_STUCK
    );
    assert_eq!(cond(&s, c::PROGRESSING).status, c::TRUE);
    let n = notices(&ZfsPoolStatus::default(), &s);
    assert!(
        n.iter()
            .any(|(w, r, _)| *w && r == reason::ATTACHMENT_STUCK),
        "{n:?}"
    );
}

#[test]
fn performance_limited_when_the_instance_caps() {
    let mut f = facts(&["attached"; 3]);
    f.performance = Some(PerformanceCeiling {
        volume_iops: 9000,
        volume_throughput_mibps: 375,
        instance_iops: Some(6000),
        instance_throughput_mibps: Some(1000),
        iops: 6000,
        throughput_mibps: 375,
        limited_by: "Instance".into(),
    });
    let s = compute(&f, &Default::default(), &t(1));
    assert_eq!(cond(&s, c::PERFORMANCE_LIMITED).status, c::TRUE);
    f.performance.as_mut().unwrap().limited_by = "Volumes".into();
    let s = compute(&f, &Default::default(), &t(1));
    assert_eq!(cond(&s, c::PERFORMANCE_LIMITED).status, c::FALSE);
}

#[test]
fn recomputing_from_the_result_is_a_no_op() {
    let f = facts(&["attached"; 3]);
    let first = compute(&f, &ZfsPoolStatus::default(), &t(1));
    // The observed status also carries the agent's fields: they do not count.
    let mut observed = first.clone();
    observed.health = Some("ONLINE".into());
    observed.volumes[0].device = Some("/dev/disk/by-id/x".into());
    observed.conditions.push(Condition {
        type_: c::POOL_IMPORTED.into(),
        status: c::FALSE.into(),
        reason: "Importing".into(),
        message: String::new(),
        observed_generation: Some(2),
        last_transition_time: t(1),
    });
    let again = compute(&f, &observed, &t(500));
    assert_eq!(again, owned_view(&observed));
    assert!(notices(&observed, &again).is_empty());
}

#[test]
fn blocked_keeps_the_rest_and_warns_once() {
    let s = blocked(
        &ZfsPoolStatus::default(),
        Some(1),
        None,
        reason::NODE_WITHOUT_PROVIDER_ID,
        "node x has no spec.providerID",
        &t(1),
    );
    assert_eq!(cond(&s, c::READY).reason, reason::NODE_WITHOUT_PROVIDER_ID);
    assert_eq!(s.phase, Some(PoolPhase::Pending));
    let n = notices(&ZfsPoolStatus::default(), &s);
    assert_eq!(
        n,
        vec![(
            true,
            reason::NODE_WITHOUT_PROVIDER_ID.to_string(),
            "node x has no spec.providerID".to_string()
        )]
    );
    let again = blocked(
        &s,
        Some(1),
        None,
        reason::NODE_WITHOUT_PROVIDER_ID,
        "node x has no spec.providerID",
        &t(50),
    );
    assert_eq!(again, s);
    assert!(notices(&s, &again).is_empty());

    let inv = blocked(
        &ZfsPoolStatus::default(),
        Some(3),
        Some(("InvalidZfsProperty", "bad")),
        "InvalidSpec",
        "bad",
        &t(1),
    );
    assert_eq!(cond(&inv, c::SPEC_VALID).status, c::FALSE);
    assert_eq!(inv.phase, Some(PoolPhase::Failed));
}
