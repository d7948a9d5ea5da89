//! Logging to stderr (never stdout, which carries only the CNI result) and an optional file.
//!
//! Errors go to stderr and the file; per-operation info lines only to the file, so a runtime
//! capturing stderr sees the plugin speak only when something went wrong.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Where log lines go: stderr, plus `logFile` from the config when given.
#[derive(Debug, Default)]
pub struct Log {
    file: Option<File>,
}

impl Log {
    /// Logs to stderr, and appends to `path` when given (an unopenable file is reported on
    /// stderr). `path` must be a regular file: it is opened without blocking, so a FIFO or device
    /// named there cannot hang the plugin, and anything but a regular file is refused.
    pub fn new(path: Option<&Path>) -> Result<Log> {
        let Some(path) = path else {
            return Ok(Log::default());
        };
        let opened = File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        let file = match opened {
            Ok(file) => file,
            // A FIFO without a reader (a device without a driver) answers ENXIO when opened
            // without blocking.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                return Err(Error::InvalidConfig(format!(
                    "logFile {} is not a regular file",
                    path.display()
                )))
            }
            Err(e) => {
                eprintln!("weft: open log file {}: {e}", path.display());
                return Ok(Log::default());
            }
        };
        match file.metadata() {
            Ok(meta) if meta.is_file() => Ok(Log { file: Some(file) }),
            Ok(_) => Err(Error::InvalidConfig(format!(
                "logFile {} is not a regular file",
                path.display()
            ))),
            Err(source) => Err(Error::Io {
                op: "stat log file",
                path: path.to_path_buf(),
                source,
            }),
        }
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
