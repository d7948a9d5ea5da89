//! A pod's events, as the kubelet records them for `kubectl describe pod` (Pulled, Created,
//! Started, Killing, BackOff, Unhealthy, OOMKilled, SandboxChanged): kept per pod in a file of
//! its directory (so they survive weftd restarts and go with the pod), repeated events folded
//! into one with a count as Kubernetes aggregates them, and bounded to the newest
//! [`MAX_EVENTS`].

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::status::rfc3339;

/// How many distinct events a pod keeps (the oldest go first).
pub const MAX_EVENTS: usize = 64;

/// `Normal` or `Warning`, as Kubernetes types events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

/// One (possibly repeated) event of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodEvent {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// One CamelCase word: `Started`, `BackOff`, ...
    pub reason: String,
    /// What happened, naming the container.
    pub message: String,
    /// How often it happened.
    pub count: u32,
    /// RFC 3339 time of the first occurrence.
    pub first_timestamp: String,
    /// RFC 3339 time of the last occurrence.
    pub last_timestamp: String,
}

/// Adds an event to `events` at `now`: a repeat of the newest event with the same type,
/// reason and message only counts up and moves to the end; at most [`MAX_EVENTS`] are kept.
pub fn add(events: &mut Vec<PodEvent>, kind: EventType, reason: &str, message: &str, now: &str) {
    let same = events
        .iter()
        .rposition(|e| e.kind == kind && e.reason == reason && e.message == message);
    let event = match same {
        Some(i) => {
            let mut e = events.remove(i);
            e.count = e.count.saturating_add(1);
            e.last_timestamp = now.to_string();
            e
        }
        None => PodEvent {
            kind,
            reason: reason.to_string(),
            message: message.to_string(),
            count: 1,
            first_timestamp: now.to_string(),
            last_timestamp: now.to_string(),
        },
    };
    events.push(event);
    let excess = events.len().saturating_sub(MAX_EVENTS);
    events.drain(..excess);
}

/// The events kept in `file`; none when it is missing or unreadable (they are informational).
pub fn read(file: &Path) -> Vec<PodEvent> {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records an event in `file` (0600, replaced atomically). A failure costs only the event, so it
/// is logged rather than returned: the pod's work goes on.
pub fn record(file: &Path, kind: EventType, reason: &str, message: &str) {
    let mut events = read(file);
    add(
        &mut events,
        kind,
        reason,
        message,
        &rfc3339(SystemTime::now()),
    );
    if let Err(e) = write(file, &events) {
        tracing::warn!(file = %file.display(), reason, error = %e, "record pod event");
    }
}

fn write(file: &Path, events: &[PodEvent]) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(events).map_err(std::io::Error::other)?;
    crate::atomic_file::write_atomic(file, &json, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_fold_into_a_count_and_the_oldest_go_first() {
        let mut ev = Vec::new();
        add(
            &mut ev,
            EventType::Normal,
            "Started",
            "Started container app",
            "t1",
        );
        add(
            &mut ev,
            EventType::Warning,
            "BackOff",
            "Back-off restarting failed container app",
            "t2",
        );
        add(
            &mut ev,
            EventType::Normal,
            "Started",
            "Started container app",
            "t3",
        );
        assert_eq!(
            ev.iter()
                .map(|e| (
                    e.reason.as_str(),
                    e.count,
                    e.first_timestamp.as_str(),
                    e.last_timestamp.as_str()
                ))
                .collect::<Vec<_>>(),
            [("BackOff", 1, "t2", "t2"), ("Started", 2, "t1", "t3")]
        );
        for i in 0..MAX_EVENTS {
            add(
                &mut ev,
                EventType::Normal,
                "Pulled",
                &format!("image {i}"),
                "t4",
            );
        }
        assert_eq!(ev.len(), MAX_EVENTS);
        assert_eq!(ev[0].message, "image 0");
    }

    #[test]
    fn the_file_is_private_and_survives_a_reread() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.json");
        assert!(read(&file).is_empty());
        record(
            &file,
            EventType::Warning,
            "Unhealthy",
            "Liveness probe failed",
        );
        record(
            &file,
            EventType::Warning,
            "Unhealthy",
            "Liveness probe failed",
        );
        let ev = read(&file);
        assert_eq!(
            (ev.len(), ev[0].count, ev[0].kind),
            (1, 2, EventType::Warning)
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&file, b"not json").unwrap();
        assert!(read(&file).is_empty());
    }
}
