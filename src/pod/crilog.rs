//! The CRI container log format the kubelet and log shippers read from `/var/log/pods`:
//! one record per line, `<RFC3339Nano UTC> <stdout|stderr> <F|P> <message>`, where `P` marks a
//! partial line that the next record continues.

use std::time::SystemTime;

pub use crate::timestamp::rfc3339_nano;

/// Longest message of one record; longer lines are split into `P` records.
pub const MAX_RECORD: usize = 16 * 1024;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// The timestamp as written (RFC 3339 with nanoseconds).
    pub timestamp: &'a str,
    /// The stream.
    pub stream: Stream,
    /// `false` for a `P` record continued by the next one.
    pub complete: bool,
    /// The message, without the line break.
    pub message: &'a str,
}

/// Formats one record (with its trailing newline). `message` must not contain a newline.
pub fn format_record(time: SystemTime, stream: Stream, complete: bool, message: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{} {} {} ",
        rfc3339_nano(time),
        stream.as_str(),
        if complete { "F" } else { "P" }
    )
    .into_bytes();
    out.extend_from_slice(message);
    out.push(b'\n');
    out
}

/// Parses one record line (without its newline); `None` when it is not in CRI format.
pub fn parse_record(line: &str) -> Option<LogRecord<'_>> {
    let mut parts = line.splitn(4, ' ');
    let timestamp = parts.next()?;
    let stream = match parts.next()? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let complete = match parts.next()? {
        "F" => true,
        "P" => false,
        _ => return None,
    };
    Some(LogRecord {
        timestamp,
        stream,
        complete,
        message: parts.next().unwrap_or(""),
    })
}

/// The plain text a CRI log file holds (what `kubectl logs` prints): messages joined, partial
/// records continued; lines not in CRI format are passed through.
pub fn log_text(contents: &str) -> String {
    let mut out = String::new();
    for line in contents.lines() {
        match parse_record(line) {
            Some(r) => {
                out.push_str(r.message);
                if r.complete {
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_848_073, 123_456_789);
        assert_eq!(rfc3339_nano(t), "2026-11-28T06:41:13.123456789Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_nano(leap), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn records_round_trip() {
        let rec = format_record(UNIX_EPOCH, Stream::Stderr, false, b"half a line");
        let text = String::from_utf8_lossy(&rec);
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000000000Z stderr P half a line\n"
        );
        let parsed = parse_record(text.trim_end_matches('\n'));
        assert_eq!(
            parsed,
            Some(LogRecord {
                timestamp: "1970-01-01T00:00:00.000000000Z",
                stream: Stream::Stderr,
                complete: false,
                message: "half a line",
            })
        );
        let file = "t stdout P hel\nt stdout F lo\nt stderr F \nraw\n";
        assert_eq!(log_text(file), "hello\n\nraw\n");
    }
}
