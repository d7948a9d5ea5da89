//! RFC 3339 UTC timestamps, as Kubernetes (seconds) and CRI logs (nanoseconds) write them.
//! One place for every caller, over the `humantime` crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second `humantime` can print (9999-12-31T23:59:59Z).
const LAST_PRINTABLE: Duration = Duration::from_secs(253_402_300_799);

/// `t` clamped into what RFC 3339 with four-digit years can show: times before 1970 print as
/// the epoch, times after 9999 as its last second (the formatter fails outside that range).
fn printable(t: SystemTime) -> SystemTime {
    t.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST_PRINTABLE)
}

/// `t` with second precision (`2026-11-28T06:34:22Z`), as Kubernetes writes times.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(printable(t)).to_string()
}

/// `t` with nanoseconds (`2026-11-28T06:41:13.123456789Z`), as CRI logs write times.
pub fn rfc3339_nano(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(printable(t)).to_string()
}

/// Parses an RFC 3339 UTC time (`YYYY-MM-DDTHH:MM:SS[.frac]Z`) to whole seconds.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = humantime::parse_rfc3339(s).ok()?;
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_times_are_clamped_not_a_panic() {
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        assert_eq!(
            parse_rfc3339("2026-11-28T06:34:22.9Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_795_847_662))
        );
    }
}
