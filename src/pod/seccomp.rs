//! Seccomp profiles for containers: `RuntimeDefault` is containerd's default profile, kept in
//! `seccomp-default.json` beside this file (origin and version recorded in it), with its
//! capability and architecture conditions resolved per container as containerd's
//! `DefaultProfile` does; `Localhost` profiles are OCI `linux.seccomp` JSON files under the
//! node's seccomp root.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

/// containerd's default profile with moby-style `includes`/`excludes` conditions.
const DEFAULT_PROFILE: &str = include_str!("seccomp-default.json");

/// Largest `Localhost` profile weft reads.
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// Errors loading a `Localhost` profile, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile name is not a plain relative path.
    #[error("seccomp profile {name:?}: must be a relative path without '..'")]
    BadName {
        /// `localhostProfile`.
        name: String,
    },
    /// The profile file cannot be read.
    #[error("seccomp profile {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    arch_map: std::collections::BTreeMap<String, Vec<String>>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    includes: Condition,
    #[serde(default)]
    excludes: Condition,
}

#[derive(Debug, Default, Deserialize)]
struct Condition {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

impl Rule {
    /// containerd adds a rule when the container holds its capability / runs on its
    /// architecture, and leaves the `!admin` rules out when it holds CAP_SYS_ADMIN.
    fn applies(&self, caps: &[String], arch: &str) -> bool {
        let has = |c: &String| caps.contains(c);
        let inc = &self.includes;
        let exc = &self.excludes;
        (inc.caps.is_empty() || inc.caps.iter().all(has))
            && (inc.arches.is_empty() || inc.arches.iter().any(|a| a == arch))
            && !exc.caps.iter().any(has)
            && !exc.arches.iter().any(|a| a == arch)
    }
}

/// The `RuntimeDefault` OCI `linux.seccomp` for a container whose bounding capability set is
/// `caps`, on architecture `arch` (`std::env::consts::ARCH`).
pub fn runtime_default(caps: &[String], arch: &str) -> Value {
    // The file is part of the source tree and checked by a unit test: it always parses.
    let profile: Profile = match serde_json::from_str(DEFAULT_PROFILE) {
        Ok(p) => p,
        Err(_) => return json!({"defaultAction": "SCMP_ACT_ERRNO"}),
    };
    let syscalls: Vec<Value> = profile
        .syscalls
        .iter()
        .filter(|r| r.applies(caps, arch))
        .map(|r| {
            let mut rule = json!({"names": r.names, "action": r.action});
            if !r.args.is_empty() {
                rule["args"] = json!(r.args);
            }
            if let Some(errno) = r.errno_ret {
                rule["errnoRet"] = json!(errno);
            }
            rule
        })
        .collect();
    json!({
        "defaultAction": profile.default_action,
        "architectures": profile.arch_map.get(arch).cloned().unwrap_or_default(),
        "syscalls": syscalls,
    })
}

/// Reads the `Localhost` profile `name` under `root` (an OCI `linux.seccomp` object).
pub fn localhost(root: &Path, name: &str) -> Result<Value, SeccompError> {
    let plain = !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(SeccompError::BadName {
            name: name.to_string(),
        });
    }
    let path = root.join(name);
    let read = |reason: String| SeccompError::Read {
        path: path.clone(),
        reason,
    };
    let file = fs::File::open(&path).map_err(|e| read(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| read(e.to_string()))?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(read(format!("larger than {MAX_PROFILE_BYTES} bytes")));
    }
    let profile: Value = serde_json::from_str(&text).map_err(|e| read(e.to_string()))?;
    if !profile["defaultAction"].is_string() {
        return Err(read("no defaultAction: not an OCI seccomp profile".into()));
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &Value, name: &str) -> bool {
        profile["syscalls"].as_array().is_some_and(|rules| {
            rules.iter().any(|r| {
                r["action"] == "SCMP_ACT_ALLOW"
                    && r["names"]
                        .as_array()
                        .is_some_and(|n| n.iter().any(|n| n == name))
            })
        })
    }

    #[test]
    fn default_profile_parses_and_names_its_origin() {
        let raw: Value = serde_json::from_str(DEFAULT_PROFILE).unwrap();
        assert!(raw["origin"]
            .as_str()
            .unwrap()
            .contains("contrib/seccomp/seccomp_default.go"));
        assert!(serde_json::from_str::<Profile>(DEFAULT_PROFILE).is_ok());
    }

    #[test]
    fn namespace_and_mount_calls_need_cap_sys_admin() {
        let plain = runtime_default(&[], "x86_64");
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(allowed(&plain, "read") && allowed(&plain, "arch_prctl"));
        for blocked in ["unshare", "mount", "setns", "reboot", "bpf", "init_module"] {
            assert!(!allowed(&plain, blocked), "{blocked} allowed");
        }
        // clone only without namespace flags; clone3 answers ENOSYS so libc falls back.
        let clone3 = plain["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"][0] == "clone3")
            .unwrap();
        assert_eq!(clone3["errnoRet"], 38);
        let admin = runtime_default(&["CAP_SYS_ADMIN".to_string()], "x86_64");
        assert!(allowed(&admin, "unshare") && allowed(&admin, "mount"));
        assert!(!admin["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["names"][0] == "clone3" && r["action"] == "SCMP_ACT_ERRNO"));
        assert_eq!(
            plain["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        assert!(!allowed(&runtime_default(&[], "aarch64"), "arch_prctl"));
    }

    #[test]
    fn localhost_profiles_stay_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ok.json"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("bad.json"), r#"{"x":1}"#).unwrap();
        assert_eq!(
            localhost(dir.path(), "ok.json").unwrap()["defaultAction"],
            "SCMP_ACT_ALLOW"
        );
        assert!(matches!(
            localhost(dir.path(), "../etc/passwd"),
            Err(SeccompError::BadName { .. })
        ));
        assert!(matches!(
            localhost(dir.path(), "/etc/passwd"),
            Err(SeccompError::BadName { .. })
        ));
        assert!(localhost(dir.path(), "bad.json").is_err());
        assert!(localhost(dir.path(), "missing.json").is_err());
    }
}
