//! `weft`: the CNI plugin wiring pods into a weft (Flannel-compatible) node's bridge.
//!
//! stdin carries the network configuration, `CNI_*` variables the operation; stdout carries only
//! the result or the spec's error JSON, logs go to stderr (and `logFile`).

mod commands;
mod config;
mod env;
mod error;
mod ip;
mod ipam;
mod log;
mod netlink;
mod result;
mod subnet_env;
mod version;

/// The namespace helper is the `weft_netns` library of this package (shared with weftd).
use weft_netns as netns;

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::config::{peek_version, NetConf};
use crate::env::{AttachmentEnv, Command};
use crate::error::{Error, Result};
use crate::log::Log;

fn main() -> ExitCode {
    let get = |name: &str| std::env::var(name).ok();
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|source| Error::Io {
            op: "read network configuration from",
            path: "stdin".into(),
            source,
        });
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .as_ref()
        .and_then(peek_version)
        .filter(|v| version::SUPPORTED.contains(v))
        .map(str::to_string)
        .unwrap_or_else(|| version::LATEST.to_string());
    let outcome = read.and_then(|_| run(&get, &stdin));
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(output) => {
            if let Some(output) = output {
                let _ = writeln!(stdout, "{output}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            let _ = writeln!(stdout, "{}", err.to_json(&version));
            eprintln!("weft: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the operation named by `CNI_COMMAND`; `Some` output is printed on stdout.
fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>> {
    let command = Command::parse(&get("CNI_COMMAND").unwrap_or_default())?;
    if command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": version::LATEST,
            "supportedVersions": version::SUPPORTED,
        })));
    }
    let conf = NetConf::parse(stdin)?;
    let log = Log::new(conf.log_file.as_deref())?;
    match command {
        Command::Add => {
            let env = AttachmentEnv::from_env(get, true)?;
            commands::add(&conf, &env, &log).map(Some)
        }
        Command::Del => {
            let env = AttachmentEnv::from_env(get, false)?;
            commands::del(&conf, &env, &log).map(|_| None)
        }
        Command::Check => {
            let env = AttachmentEnv::from_env(get, true)?;
            commands::check(&conf, &env).map(|_| None)
        }
        Command::Gc => commands::gc(&conf, &log).map(|_| None),
        Command::Status => commands::status(&conf).map(|_| None),
        Command::Version => Ok(None),
    }
}
