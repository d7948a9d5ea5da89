//! Crash-loop back-off for restarted containers, as kubelet does it: the first restart waits
//! `base` (10 s), each further one twice as long up to `cap` (5 min), and a container that ran
//! cleanly for `reset_after` (10 min) starts over at `base`.

use std::time::Duration;

/// The back-off parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// A run at least this long resets the back-off.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// The back-off state of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Backoff {
    /// Restarts since the last reset.
    pub streak: u32,
}

impl Backoff {
    /// Records an exit after a run of `ran` and returns how long to wait before the restart.
    pub fn on_exit(&mut self, policy: &BackoffPolicy, ran: Duration) -> Duration {
        if ran >= policy.reset_after {
            self.streak = 0;
        }
        let delay = delay_for(policy, self.streak);
        self.streak = self.streak.saturating_add(1);
        delay
    }
}

/// The delay before restart number `streak + 1` since the last reset: `base * 2^streak`, at most `cap`.
pub fn delay_for(policy: &BackoffPolicy, streak: u32) -> Duration {
    let factor = 1u32.checked_shl(streak).unwrap_or(u32::MAX);
    policy
        .base
        .checked_mul(factor)
        .map_or(policy.cap, |d| d.min(policy.cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let p = BackoffPolicy::default();
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.on_exit(&p, SHORT).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.streak, 8);
    }

    #[test]
    fn ten_minutes_of_clean_running_resets() {
        let p = BackoffPolicy::default();
        let mut b = Backoff::default();
        b.on_exit(&p, SHORT);
        b.on_exit(&p, SHORT);
        assert_eq!(
            b.on_exit(&p, Duration::from_secs(599)),
            Duration::from_secs(40)
        );
        assert_eq!(
            b.on_exit(&p, Duration::from_secs(600)),
            Duration::from_secs(10)
        );
        assert_eq!(b.on_exit(&p, SHORT), Duration::from_secs(20));
    }

    #[test]
    fn configurable_base_and_cap_and_no_overflow() {
        let p = BackoffPolicy {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(2),
            reset_after: Duration::from_secs(5),
        };
        assert_eq!(delay_for(&p, 0), Duration::from_millis(500));
        assert_eq!(delay_for(&p, 1), Duration::from_secs(1));
        assert_eq!(delay_for(&p, 2), Duration::from_secs(2));
        assert_eq!(delay_for(&p, 3), Duration::from_secs(2));
        assert_eq!(delay_for(&p, 40), Duration::from_secs(2));
        assert_eq!(delay_for(&p, u32::MAX), Duration::from_secs(2));
    }
}
