//! The agent's decisions as pure functions: what a lease table, a renew answer, a watch
//! failure or a new network config mean for the node. The event loop in [`super`] carries
//! them out against etcd ([`crate::store::LeaseStore`]) and the kernel
//! ([`crate::backend::DataPath`]); here they are tested without either.

use crate::config::{ConfigChange, NetworkConfig};
use crate::lease::{LeaseAttrs, RawLeaseTable};
use crate::store::{LeaseLostReason, OwnLease, StoreError};

/// Whether the lease table still shows the node's own lease (`own`: its attributes) as this
/// node's — the same PublicIP, or in an IPv6-only network (every PublicIP 0.0.0.0) the same
/// PublicIPv6, as the renewal checks; the reason it was lost otherwise (deleted or expired,
/// taken by another writer, overwritten).
pub fn own_lease_lost(
    table: &RawLeaseTable,
    key: &str,
    own: &LeaseAttrs,
) -> Option<LeaseLostReason> {
    match table.get(key) {
        None => Some(LeaseLostReason::Deleted),
        Some(raw) => match LeaseAttrs::from_json(key, &raw.value) {
            Ok(a) if a.same_node(own) => None,
            Ok(a) => Some(LeaseLostReason::TakenBy(a.public_ip)),
            Err(e) => Some(LeaseLostReason::Invalid(e.to_string())),
        },
    }
}

/// What to do after asking etcd to renew the lease.
#[derive(Debug)]
pub enum AfterRenew {
    /// Renewed: run on with the new expiry.
    Renewed(OwnLease),
    /// The lease is gone or someone else's: acquire one again (the old subnet first).
    Reacquire(LeaseLostReason),
    /// etcd did not answer: keep the data path and try again shortly.
    RetrySoon(StoreError),
}

/// Classifies a renew answer.
pub fn after_renew(result: Result<OwnLease, StoreError>) -> AfterRenew {
    match result {
        Ok(own) => AfterRenew::Renewed(own),
        Err(StoreError::LeaseLost { reason, .. }) => AfterRenew::Reacquire(reason),
        Err(e) => AfterRenew::RetrySoon(e),
    }
}

/// What to do when the lease watch ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWatchError {
    /// etcd compacted past the watch: re-list and watch again at once.
    RelistNow,
    /// etcd is away: keep the data path, back off, reconnect.
    BackOff,
}

/// Classifies a watch failure.
pub fn after_watch_error(err: &StoreError) -> AfterWatchError {
    match err {
        StoreError::Compacted { .. } => AfterWatchError::RelistNow,
        _ => AfterWatchError::BackOff,
    }
}

/// What a config read from etcd means for the running node.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigDecision {
    /// The same text as last seen: nothing to say.
    Unchanged,
    /// The key was deleted: keep running, refuse.
    Deleted,
    /// Not a valid config: keep running, refuse.
    Invalid(String),
    /// Rewritten without a change that matters.
    Same,
    /// A change weftd applies at once (`SubnetMin`, `SubnetMax`).
    ApplyLive(NetworkConfig),
    /// A new `Network`, `SubnetLen` or `Backend`: refused until weftd restarts.
    NeedsRestart(NetworkConfig),
}

/// Compares the config text now in etcd (`None`: deleted) with the running config and the
/// text it was last compared with.
pub fn config_decision(
    running: &NetworkConfig,
    last_text: Option<&str>,
    text: Option<&str>,
) -> ConfigDecision {
    if text == last_text {
        return ConfigDecision::Unchanged;
    }
    let Some(text) = text else {
        return ConfigDecision::Deleted;
    };
    let new = match NetworkConfig::parse(text) {
        Ok(new) => new,
        Err(e) => return ConfigDecision::Invalid(e.to_string()),
    };
    match running.change_to(&new) {
        ConfigChange::Same => ConfigDecision::Same,
        ConfigChange::Live => ConfigDecision::ApplyLive(new),
        ConfigChange::NeedsRestart => ConfigDecision::NeedsRestart(new),
    }
}

/// How a changed lease table reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Read the kernel, diff everything, apply (start, resync, repairs, a new own subnet).
    Full,
    /// Apply only the changed peers' entries against the last pass.
    Incremental,
}

/// The pass a watch event gets: incremental while the node is published and nothing waits
/// for repair; a full pass when subnet.env is not written (a new own subnet), the external
/// interface is gone, or a failed pass waits for its retry.
pub fn pass_for_changes(published: bool, ext_gone: bool, retry_pending: bool) -> Pass {
    if published && !ext_gone && !retry_pending {
        Pass::Incremental
    } else {
        Pass::Full
    }
}

/// When changes noted `now` are applied: at once after a quiet spell, else one `period` after
/// the last pass, so a burst becomes one pass per period and no change waits longer.
pub fn apply_changes_at(
    now: std::time::Instant,
    last_pass: Option<std::time::Instant>,
    period: std::time::Duration,
) -> std::time::Instant {
    match last_pass {
        Some(last) => now.max(last + period),
        None => now,
    }
}

/// The delay until the next safety re-list: `mean` spread over 0.5x to 1.5x by `unit`, a
/// random number in [0, 1), so a cluster's nodes do not re-list from etcd together.
pub fn jittered(mean: std::time::Duration, unit: f64) -> std::time::Duration {
    mean.mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lease::RawLease;

    const KEY: &str = "/coreos.com/network/subnets/10.244.1.0-24";

    fn table(value: &str) -> RawLeaseTable {
        [RawLease {
            key: KEY.to_string(),
            value: value.as_bytes().to_vec(),
            etcd_lease: 7,
            create_revision: 1,
            mod_revision: 2,
        }]
        .into_iter()
        .collect()
    }

    fn me() -> Ipv4Addr {
        "192.0.2.1".parse().unwrap()
    }

    fn own() -> OwnLease {
        OwnLease {
            ipv6_subnet: None,
            subnet: "10.244.1.0/24".parse().unwrap(),
            attrs: LeaseAttrs {
                public_ipv6: None,
                backend_v6_data: None,
                public_ip: me(),
                backend_type: "vxlan".into(),
                backend_data: None,
            },
            etcd_lease: Some(7),
            expires: None,
        }
    }

    #[test]
    fn own_lease_is_held_lost_taken_or_overwritten() {
        let me = own().attrs;
        let mine = r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan"}"#;
        assert_eq!(own_lease_lost(&table(mine), KEY, &me), None);
        assert_eq!(
            own_lease_lost(&RawLeaseTable::default(), KEY, &me),
            Some(LeaseLostReason::Deleted)
        );
        let theirs = r#"{"PublicIP":"192.0.2.9","BackendType":"vxlan"}"#;
        assert_eq!(
            own_lease_lost(&table(theirs), KEY, &me),
            Some(LeaseLostReason::TakenBy("192.0.2.9".parse().unwrap()))
        );
        assert!(matches!(
            own_lease_lost(&table("not json"), KEY, &me),
            Some(LeaseLostReason::Invalid(_))
        ));
        // IPv6-only: every PublicIP is 0.0.0.0, the node is its PublicIPv6.
        let me6 = LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
            ..own().attrs
        };
        let mine6 = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::1","BackendType":"vxlan"}"#;
        assert_eq!(own_lease_lost(&table(mine6), KEY, &me6), None);
        let theirs6 = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::9","BackendType":"vxlan"}"#;
        assert!(
            matches!(
                own_lease_lost(&table(theirs6), KEY, &me6),
                Some(LeaseLostReason::TakenBy(_))
            ),
            "another IPv6-only node's write is a takeover"
        );
    }

    #[test]
    fn renew_answers_mean_renewed_reacquire_or_retry() {
        assert!(matches!(after_renew(Ok(own())), AfterRenew::Renewed(_)));
        let lost = StoreError::LeaseLost {
            subnet: own().subnet,
            reason: LeaseLostReason::Deleted,
        };
        assert!(matches!(
            after_renew(Err(lost)),
            AfterRenew::Reacquire(LeaseLostReason::Deleted)
        ));
        let down = StoreError::Compacted { revision: 3 };
        assert!(matches!(after_renew(Err(down)), AfterRenew::RetrySoon(_)));
    }

    #[test]
    fn compaction_relists_at_once_and_anything_else_backs_off() {
        assert_eq!(
            after_watch_error(&StoreError::Compacted { revision: 9 }),
            AfterWatchError::RelistNow
        );
        let lost = StoreError::LeaseLost {
            subnet: own().subnet,
            reason: LeaseLostReason::Deleted,
        };
        assert_eq!(after_watch_error(&lost), AfterWatchError::BackOff);
    }

    #[test]
    fn config_changes_are_applied_live_refused_or_ignored() {
        let text = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
        let running = NetworkConfig::parse(text).unwrap();
        assert_eq!(
            config_decision(&running, Some(text), Some(text)),
            ConfigDecision::Unchanged
        );
        assert_eq!(
            config_decision(&running, Some(text), None),
            ConfigDecision::Deleted
        );
        assert!(matches!(
            config_decision(&running, Some(text), Some("{")),
            ConfigDecision::Invalid(_)
        ));
        let respelled = r#"{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}"#;
        assert_eq!(
            config_decision(&running, Some(text), Some(respelled)),
            ConfigDecision::Same
        );
        let live =
            r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.20.0","Backend":{"Type":"vxlan"}}"#;
        assert!(matches!(
            config_decision(&running, Some(text), Some(live)),
            ConfigDecision::ApplyLive(_)
        ));
        let moved = r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan"}}"#;
        assert!(matches!(
            config_decision(&running, Some(text), Some(moved)),
            ConfigDecision::NeedsRestart(_)
        ));
        let udp = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;
        assert!(matches!(
            config_decision(&running, Some(text), Some(udp)),
            ConfigDecision::NeedsRestart(_)
        ));
    }

    #[test]
    fn watch_events_apply_incrementally_only_on_a_healthy_published_node() {
        assert_eq!(pass_for_changes(true, false, false), Pass::Incremental);
        assert_eq!(pass_for_changes(false, false, false), Pass::Full);
        assert_eq!(pass_for_changes(true, true, false), Pass::Full);
        assert_eq!(pass_for_changes(true, false, true), Pass::Full);
    }

    #[test]
    fn safety_relists_spread_over_half_to_one_and_a_half_times_the_mean() {
        let mean = std::time::Duration::from_secs(600);
        assert_eq!(jittered(mean, 0.0).as_secs(), 300);
        assert_eq!(jittered(mean, 0.5).as_secs(), 600);
        assert_eq!(jittered(mean, 0.999).as_secs(), 899);
        assert_eq!(jittered(mean, 7.0).as_secs(), 900);
    }

    #[test]
    fn a_lone_change_goes_at_once_and_a_burst_waits_at_most_one_period() {
        use std::time::{Duration, Instant};
        let period = Duration::from_millis(20);
        let t0 = Instant::now();
        assert_eq!(apply_changes_at(t0, None, period), t0);
        let quiet = t0 + Duration::from_secs(1);
        assert_eq!(apply_changes_at(quiet, Some(t0), period), quiet);
        let burst = t0 + Duration::from_millis(5);
        assert_eq!(apply_changes_at(burst, Some(t0), period), t0 + period);
    }
}
