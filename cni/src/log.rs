//! Logging to stderr (never stdout, which carries only the CNI result) and an optional file.
//!
//! Errors go to stderr and the file; per-operation info lines only to the file, so a runtime
//! capturing stderr sees the plugin speak only when something went wrong.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where log lines go: stderr, plus `logFile` from the config when given.
#[derive(Debug, Default)]
pub struct Log {
    file: Option<File>,
}

impl Log {
    /// Logs to stderr, and appends to `path` when given (an unopenable file is reported on stderr).
    pub fn new(path: Option<&Path>) -> Log {
        let file = path.and_then(|p| {
            File::options()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| eprintln!("weft: open log file {}: {e}", p.display()))
                .ok()
        });
        Log { file }
    }

    /// An informational line (log file only).
    pub fn info(&self, message: fmt::Arguments<'_>) {
        if self.file.is_some() {
            self.write("info", message, false);
        }
    }

    /// An error line (stderr and log file).
    pub fn error(&self, message: fmt::Arguments<'_>) {
        self.write("error", message, true);
    }

    fn write(&self, level: &str, message: fmt::Arguments<'_>, to_stderr: bool) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let line = format!(
            "{now:.6} weft {level} pid={} {message}\n",
            std::process::id()
        );
        if to_stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let Some(mut file) = self.file.as_ref() {
            let _ = file.write_all(line.as_bytes());
        }
    }
}
