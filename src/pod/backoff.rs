//! Crash-loop back-off for restarted containers, as kubelet does it: the first restart happens
//! at once, the next waits `base` (10 s), each further one twice as long up to `cap` (5 min),
//! and a container that ran cleanly for `reset_after` (10 min) starts over with an immediate
//! restart. Pod setup (sandbox, network) retries wait `base` from the first failure on.

use std::time::Duration;

/// The back-off parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The delay before the second restart (the first one is immediate).
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

/// The back-off state of one container (or of a pod's setup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Backoff {
    /// Restarts since the last reset.
    pub streak: u32,
}

impl Backoff {
    /// kubelet's wait before restarting a container whose last run lasted `ran`, and the
    /// back-off state once that restart happened. Pure: the caller keeps the new state when
    /// it does restart.
    pub fn restart(self, policy: &BackoffPolicy, ran: Duration) -> (Duration, Backoff) {
        let streak = if ran >= policy.reset_after {
            0
        } else {
            self.streak
        };
        let delay = match streak {
            0 => Duration::ZERO,
            n => delay_for(policy, n - 1),
        };
        let next = Backoff {
            streak: streak.saturating_add(1),
        };
        (delay, next)
    }

    /// Records a failed pod setup step and returns how long to wait before the retry: `base`,
    /// then doubling up to `cap` (a setup failure is not a crash: no immediate retry).
    pub fn on_failure(&mut self, policy: &BackoffPolicy) -> Duration {
        let delay = delay_for(policy, self.streak);
        self.streak = self.streak.saturating_add(1);
        delay
    }
}

/// `base * 2^n`, at most `cap`.
pub fn delay_for(policy: &BackoffPolicy, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
    policy
        .base
        .checked_mul(factor)
        .map_or(policy.cap, |d| d.min(policy.cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(1);

    fn restarts(b: &mut Backoff, p: &BackoffPolicy, ran: Duration) -> u64 {
        let (delay, next) = b.restart(p, ran);
        *b = next;
        delay.as_secs()
    }

    #[test]
    fn first_restart_at_once_then_ten_seconds_doubling_to_five_minutes() {
        let p = BackoffPolicy::default();
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| restarts(&mut b, &p, SHORT)).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.streak, 9);
    }

    #[test]
    fn ten_minutes_of_clean_running_resets() {
        let p = BackoffPolicy::default();
        let mut b = Backoff::default();
        restarts(&mut b, &p, SHORT);
        restarts(&mut b, &p, SHORT);
        assert_eq!(restarts(&mut b, &p, Duration::from_secs(599)), 20);
        assert_eq!(restarts(&mut b, &p, Duration::from_secs(600)), 0);
        assert_eq!(restarts(&mut b, &p, SHORT), 10);
    }

    #[test]
    fn restart_is_pure_until_kept() {
        let p = BackoffPolicy::default();
        let b = Backoff { streak: 2 };
        assert_eq!(b.restart(&p, SHORT), b.restart(&p, SHORT));
        assert_eq!(b.restart(&p, SHORT).1, Backoff { streak: 3 });
    }

    #[test]
    fn setup_failures_wait_base_first() {
        let p = BackoffPolicy::default();
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..3).map(|_| b.on_failure(&p).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40]);
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
        let max = Backoff { streak: u32::MAX };
        assert_eq!(max.restart(&p, SHORT).0, Duration::from_secs(2));
    }
}
