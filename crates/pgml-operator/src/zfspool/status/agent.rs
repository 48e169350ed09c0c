//! What the node agent reports of the pool, read from the object (the agent writes these
//! fields and conditions; the controller only reads them).

use pgml_api::common::condition as c;
use pgml_api::zfspool::ZfsPoolStatus;

use super::is_true;

/// A member the agent reports in a state other than ONLINE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SickMember {
    pub index: i32,
    pub volume_id: Option<String>,
    /// Its `memberState` (UNAVAIL, FAULTED…).
    pub state: String,
}

/// A member as the agent reported it: the device it found, the member's state and the
/// volume that state is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedMember {
    pub index: i32,
    pub device: Option<String>,
    pub state: Option<String>,
    /// `memberVolumeId` (not written by agents older than the field).
    pub volume_id: Option<String>,
}

/// What the node agent reports, read from the object.
#[derive(Debug, Default, Clone)]
pub struct AgentView {
    pub imported: bool,
    pub healthy: bool,
    pub health: Option<String>,
    /// Members not ONLINE.
    pub sick_members: Vec<SickMember>,
    /// Every member as the agent reported it.
    pub members: Vec<ReportedMember>,
    /// A resilver runs (`status.resilver.inProgress`).
    pub resilvering: bool,
    pub resilver_percent: Option<i32>,
}

impl AgentView {
    pub fn read(s: &ZfsPoolStatus) -> AgentView {
        AgentView {
            imported: is_true(s, c::POOL_IMPORTED),
            healthy: is_true(s, c::POOL_HEALTHY),
            health: s.health.clone(),
            sick_members: s
                .volumes
                .iter()
                .filter_map(|v| {
                    let st = v.member_state.as_deref()?;
                    (st != "ONLINE").then(|| SickMember {
                        index: v.index,
                        volume_id: v.member_volume_id.clone().or_else(|| v.volume_id.clone()),
                        state: st.to_string(),
                    })
                })
                .collect(),
            members: s
                .volumes
                .iter()
                .map(|v| ReportedMember {
                    index: v.index,
                    device: v.device.clone(),
                    state: v.member_state.clone(),
                    volume_id: v.member_volume_id.clone(),
                })
                .collect(),
            resilvering: s.resilver.as_ref().is_some_and(|r| r.in_progress),
            resilver_percent: s.resilver.as_ref().and_then(|r| r.percent_done),
        }
    }

    fn reported(&self, index: i32) -> Option<&ReportedMember> {
        self.members.iter().find(|m| m.index == index)
    }

    /// The agent's state of member `index`, when its report is about `volume_id`: the
    /// agent names that volume beside the state (`memberVolumeId`). An agent older than that
    /// field writes a member's device (the volume's by-id link) and its state from the same
    /// pass, so there a device naming another volume means the state describes that other
    /// volume (the report predates a replacement).
    pub fn member_state(&self, index: i32, volume_id: &str) -> Option<&str> {
        let m = self.reported(index)?;
        if let Some(about) = m.volume_id.as_deref() {
            return (about == volume_id).then_some(m.state.as_deref()).flatten();
        }
        let link = format!(
            "nvme-Amazon_Elastic_Block_Store_vol{}",
            volume_id.strip_prefix("vol-").unwrap_or(volume_id)
        );
        let named = m
            .device
            .as_deref()
            .and_then(|d| d.rsplit('/').next())
            .is_some_and(|name| name == link);
        named.then_some(m.state.as_deref()).flatten()
    }

    /// The agent's state of member `index`, whatever volume it describes.
    pub fn reported_state(&self, index: i32) -> Option<&str> {
        self.reported(index).and_then(|m| m.state.as_deref())
    }
}
