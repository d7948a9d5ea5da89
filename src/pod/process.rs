//! Small process helpers shared by the sandbox and the runtime: identity of a pid across
//! restarts (pid + start time, so a reused pid is not mistaken for ours), graceful termination,
//! locating weft's helper binaries, and running them.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process identified by pid and kernel start time (clock ticks since boot), stable across a
/// restart of the daemon that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid in the host pid namespace.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_time: u64,
}

/// Parses `(state, start_time)` out of the contents of `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // comm may contain spaces and parentheses; the fields after the last ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

impl ProcessId {
    /// Identifies the live process `pid`, or `None` when there is none (or only a zombie).
    pub fn of(pid: i32) -> Option<ProcessId> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        match parse_stat(&stat)? {
            ('Z' | 'X', _) => None,
            (_, start_time) => Some(ProcessId { pid, start_time }),
        }
    }

    /// Whether this very process (not a later one reusing the pid) is still running.
    pub fn is_alive(&self) -> bool {
        ProcessId::of(self.pid) == Some(*self)
    }

    /// Sends `signal` if the process is still this one; `false` when it is gone.
    pub fn signal(&self, signal: Signal) -> bool {
        self.is_alive() && kill(Pid::from_raw(self.pid), signal).is_ok()
    }

    /// Waits up to `timeout` for the process to end; `true` when it has.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_alive() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL and up to 5 s more; `true` when it is gone.
    pub fn terminate(&self, grace: Duration) -> bool {
        if self.signal(Signal::SIGTERM) && self.wait_gone(grace) {
            return true;
        }
        self.signal(Signal::SIGKILL);
        self.wait_gone(Duration::from_secs(5))
    }
}

/// Path of one of weft's helper binaries (`weft-pause`, `weft-shim`): beside the running
/// executable, or one directory up (test binaries live in `target/<profile>/deps`), else the bare
/// name for a `PATH` lookup.
pub fn helper_binary(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(name)
}

/// Why [`stdio_to_dev_null`] or [`run_helper`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// `/dev/null` could not be opened.
    #[error("open /dev/null: {0}")]
    OpenDevNull(#[source] std::io::Error),
    /// A standard stream could not be pointed at `/dev/null`.
    #[error("dup2 /dev/null: {0}")]
    Dup2(#[source] nix::errno::Errno),
    /// The helper program could not be started.
    #[error("spawn: {0}")]
    Spawn(#[source] std::io::Error),
    /// The helper program failed: its exit status and what it wrote to stderr.
    #[error("{status}: {stderr}")]
    Failed {
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr, trimmed.
        stderr: String,
    },
}

/// Points stdin, stdout and stderr at `/dev/null`: the last step of weft-shim's and
/// weft-pause's daemonizing, once nothing is left to report to the parent.
pub fn stdio_to_dev_null() -> Result<(), HelperError> {
    use std::os::fd::AsRawFd;
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(HelperError::OpenDevNull)?;
    for fd in 0..=2 {
        nix::unistd::dup2(null.as_raw_fd(), fd).map_err(HelperError::Dup2)?;
    }
    Ok(())
}

/// Runs a helper program (weft-shim, weft-pause) that daemonizes and exits: stdin and stdout
/// closed, the error is its exit status and stderr.
pub fn run_helper(cmd: &mut Command) -> Result<(), HelperError> {
    let output = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(HelperError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HelperError::Failed {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_comm() {
        let stat =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_fake_one_is_not() {
        let me = ProcessId::of(std::process::id() as i32);
        assert!(me.is_some_and(|p| p.is_alive()));
        let stale = me.map(|p| ProcessId {
            pid: p.pid,
            start_time: p.start_time + 1,
        });
        assert!(stale.is_some_and(|p| !p.is_alive()));
    }
}
