//! Status conditions with the conventions kubectl, kstatus (Flux) and Argo CD read:
//! `lastTransitionTime` moves only when the status flips, `Reconciling` and `Stalled` are present
//! only while True and never together.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    Ready,
    ZoneFailureTolerant,
    Reconciling,
    Stalled,
    /// Present only with `resilience.reserveCapacity`: every placeholder pod is scheduled.
    FailoverCapacityReserved,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::ZoneFailureTolerant => "ZoneFailureTolerant",
            Self::Reconciling => "Reconciling",
            Self::Stalled => "Stalled",
            Self::FailoverCapacityReserved => "FailoverCapacityReserved",
        }
    }
}

/// The conditions a reconcile wants, before timestamps are merged with the previous status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditions {
    pub wanted: Vec<(ConditionType, bool, String, String)>,
}

impl Conditions {
    pub fn set(&mut self, type_: ConditionType, status: bool, reason: &str, message: impl Into<String>) {
        self.wanted.retain(|(t, ..)| *t != type_);
        self.wanted.push((type_, status, reason.to_string(), message.into()));
    }

    /// Merge into `previous`, keeping `lastTransitionTime` of conditions whose status did not flip.
    pub fn into_status(self, previous: &[Condition], generation: Option<i64>, now: &Time) -> Vec<Condition> {
        let mut out: Vec<Condition> = Vec::new();
        for (type_, status, reason, message) in self.wanted {
            let status_str = if status { "True" } else { "False" };
            // Reconciling and Stalled are abnormal-true conditions: present only while True.
            if matches!(type_, ConditionType::Reconciling | ConditionType::Stalled) && !status {
                continue;
            }
            let cond = Condition {
                type_: type_.as_str().to_string(),
                status: status_str.to_string(),
                reason,
                message,
                observed_generation: generation,
                last_transition_time: now.clone(),
            };
            set_condition(&mut out, previous, cond);
        }
        out
    }
}

/// Put `cond` into `out`, reusing the transition time from `previous` when the status is unchanged.
fn set_condition(out: &mut Vec<Condition>, previous: &[Condition], mut cond: Condition) {
    if let Some(old) = previous.iter().find(|c| c.type_ == cond.type_)
        && old.status == cond.status
    {
        cond.last_transition_time = old.last_transition_time.clone();
    }
    out.retain(|c| c.type_ != cond.type_);
    out.push(cond);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut c = Conditions::default();
        c.set(ConditionType::Ready, false, "Progressing", "waiting");
        let first = c.into_status(&[], Some(1), &t(100));

        let mut c = Conditions::default();
        c.set(ConditionType::Ready, false, "Progressing", "still waiting");
        let second = c.into_status(&first, Some(1), &t(200));
        assert_eq!(second[0].last_transition_time, t(100));
        assert_eq!(second[0].message, "still waiting");

        let mut c = Conditions::default();
        c.set(ConditionType::Ready, true, "Available", "ok");
        let third = c.into_status(&second, Some(2), &t(300));
        assert_eq!(third[0].last_transition_time, t(300));
        assert_eq!(third[0].observed_generation, Some(2));
    }

    #[test]
    fn abnormal_true_conditions_vanish_when_false() {
        let mut c = Conditions::default();
        c.set(ConditionType::Ready, true, "Available", "ok");
        c.set(ConditionType::Reconciling, false, "Done", "");
        c.set(ConditionType::Stalled, false, "Done", "");
        let out = c.into_status(&[], None, &t(1));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].type_, "Ready");
    }
}
