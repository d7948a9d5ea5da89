//! `securityContext` of pods and containers: the manifest types, their validation, and the
//! effective settings of one container (container level wins over pod level) that the bundle
//! turns into OCI `process`/`linux` fields. Pure logic, no I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::bundle::DEFAULT_CAPABILITIES;

/// Every capability the kernel knows (through CAP_CHECKPOINT_RESTORE, Linux 5.9): what
/// `privileged` and `add: [ALL]` grant.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Kubernetes' safe sysctls: namespaced, and unable to affect other pods or the node. Others
/// are refused (kubelet refuses them unless `--allowed-unsafe-sysctls` lists them).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// `spec.securityContext`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSecurityContext {
    /// `runAsUser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// `runAsGroup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// `runAsNonRoot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// `supplementalGroups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supplemental_groups: Vec<i64>,
    /// `fsGroup`: group owner of the pod's volumes, also a supplemental group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<i64>,
    /// `fsGroupChangePolicy` (accepted; ownership is always applied, as with `Always`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group_change_policy: Option<String>,
    /// `sysctls`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<Sysctl>,
    /// `seccompProfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<SeccompProfile>,
}

/// A container's `securityContext`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityContext {
    /// `runAsUser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// `runAsGroup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// `runAsNonRoot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// `capabilities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// `privileged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// `readOnlyRootFilesystem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    /// `allowPrivilegeEscalation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    /// `seccompProfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<SeccompProfile>,
}

/// `securityContext.capabilities`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// `add` (`NET_ADMIN` or `CAP_NET_ADMIN`, or `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    /// `drop`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

/// `securityContext.sysctls[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sysctl {
    /// `name`.
    pub name: String,
    /// `value`.
    pub value: String,
}

/// `securityContext.seccompProfile`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompProfile {
    /// `type`: `RuntimeDefault`, `Unconfined` or `Localhost`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `localhostProfile`: a path under the node's seccomp root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localhost_profile: Option<String>,
}

/// The seccomp policy a container runs under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    /// containerd's default profile.
    RuntimeDefault,
    /// No filter.
    Unconfined,
    /// A profile file under the node's seccomp root.
    Localhost(String),
}

/// The host namespaces a pod shares (`hostNetwork`, `hostPID`, `hostIPC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostNamespaces {
    /// The node's network (and, as in Kubernetes, UTS) namespace.
    pub network: bool,
    /// The node's PID namespace.
    pub pid: bool,
    /// The node's IPC namespace.
    pub ipc: bool,
}

/// One container's effective security settings, ready for the OCI bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSecurity {
    /// `runAsUser`; the image's user when `None`.
    pub run_as_user: Option<u32>,
    /// `runAsGroup`; the user's primary group when `None`.
    pub run_as_group: Option<u32>,
    /// Refuse to start as uid 0.
    pub run_as_non_root: bool,
    /// Supplemental groups (pod `supplementalGroups` then `fsGroup`).
    pub supplemental_groups: Vec<u32>,
    /// Bounding = permitted = effective set.
    pub capabilities: Vec<String>,
    /// `privileged`: every capability, no masked paths, writable /sys, all devices.
    pub privileged: bool,
    /// Read-only root filesystem.
    pub read_only_root: bool,
    /// `no_new_privs`.
    pub no_new_privileges: bool,
    /// The seccomp policy.
    pub seccomp: Seccomp,
    /// Sysctls set in the pod's namespaces.
    pub sysctls: Vec<(String, String)>,
    /// Host namespaces the pod shares.
    pub host: HostNamespaces,
}

impl Default for ContainerSecurity {
    fn default() -> Self {
        ContainerSecurity {
            run_as_user: None,
            run_as_group: None,
            run_as_non_root: false,
            supplemental_groups: Vec::new(),
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            privileged: false,
            read_only_root: false,
            no_new_privileges: true,
            seccomp: Seccomp::RuntimeDefault,
            sysctls: Vec::new(),
            host: HostNamespaces::default(),
        }
    }
}

/// `NET_ADMIN` / `cap_net_admin` → `CAP_NET_ADMIN`.
fn cap_name(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

fn seccomp_of(p: &SeccompProfile) -> Seccomp {
    match p.kind.as_str() {
        "Unconfined" => Seccomp::Unconfined,
        "Localhost" => Seccomp::Localhost(p.localhost_profile.clone().unwrap_or_default()),
        _ => Seccomp::RuntimeDefault,
    }
}

/// The effective settings of a container from the pod's and its own `securityContext`
/// (validated), the pod's host namespaces and whether RuntimeDefault seccomp is the default.
///
/// Capabilities follow containerd's CRI order: `add: [ALL]` grants every capability,
/// `drop: [ALL]` then empties the set, named adds are added, named drops removed.
pub fn effective(
    pod: Option<&PodSecurityContext>,
    c: Option<&SecurityContext>,
    host: HostNamespaces,
    seccomp_default: bool,
) -> ContainerSecurity {
    let pod_default = PodSecurityContext::default();
    let ctr_default = SecurityContext::default();
    let p = pod.unwrap_or(&pod_default);
    let s = c.unwrap_or(&ctr_default);
    let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let privileged = s.privileged == Some(true);
    let mut caps: Vec<String> = if privileged {
        ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    if let Some(cc) = s.capabilities.as_ref().filter(|_| !privileged) {
        if cc.add.iter().any(|a| a == "ALL") {
            caps = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        }
        if cc.drop.iter().any(|d| d == "ALL") {
            caps.clear();
        }
        for a in cc.add.iter().filter(|a| *a != "ALL") {
            let a = cap_name(a);
            if !caps.contains(&a) {
                caps.push(a);
            }
        }
        let drop: BTreeSet<String> = cc.drop.iter().map(|d| cap_name(d)).collect();
        caps.retain(|c| !drop.contains(c));
    }
    let seccomp = if privileged {
        Seccomp::Unconfined
    } else {
        match s.seccomp_profile.as_ref().or(p.seccomp_profile.as_ref()) {
            Some(profile) => seccomp_of(profile),
            None if seccomp_default => Seccomp::RuntimeDefault,
            None => Seccomp::Unconfined,
        }
    };
    let mut groups: Vec<u32> = p
        .supplemental_groups
        .iter()
        .chain(p.fs_group.iter())
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    groups.dedup();
    ContainerSecurity {
        run_as_user: id(s.run_as_user.or(p.run_as_user)),
        run_as_group: id(s.run_as_group.or(p.run_as_group)),
        run_as_non_root: s.run_as_non_root.or(p.run_as_non_root) == Some(true),
        supplemental_groups: groups,
        capabilities: caps,
        privileged,
        read_only_root: s.read_only_root_filesystem == Some(true),
        // Stricter than kubelet (which sets it only for `false`): off only when asked for.
        no_new_privileges: !privileged && s.allow_privilege_escalation != Some(true),
        seccomp,
        sysctls: p
            .sysctls
            .iter()
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect(),
        host,
    }
}

/// Why a container may not start as the user it resolved to (`runAsNonRoot`), in kubelet's
/// words; `None` when it may.
pub fn non_root_violation(
    sec: &ContainerSecurity,
    image_user: Option<&str>,
    uid: u32,
) -> Option<String> {
    if !sec.run_as_non_root {
        return None;
    }
    if sec.run_as_user.is_none() {
        if let Some(user) = image_user.filter(|u| !u.is_empty()) {
            let name = user.split(':').next().unwrap_or(user);
            if name.parse::<u32>().is_err() {
                return Some(format!(
                    "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root"
                ));
            }
        }
    }
    (uid == 0).then(|| "container has runAsNonRoot and image will run as root".to_string())
}

/// A validation failure: the field path and the reason.
pub type FieldError = (String, String);

fn check_id(at: String, v: Option<i64>) -> Result<(), FieldError> {
    match v {
        Some(v) if !(0..=i64::from(u32::MAX - 1)).contains(&v) => {
            Err((at, format!("{v} is not a valid user or group id")))
        }
        _ => Ok(()),
    }
}

fn check_seccomp(at: &str, p: &Option<SeccompProfile>) -> Result<(), FieldError> {
    let Some(p) = p else { return Ok(()) };
    match (p.kind.as_str(), &p.localhost_profile) {
        ("RuntimeDefault" | "Unconfined", None) => Ok(()),
        ("Localhost", Some(name)) => {
            let plain = !name.is_empty()
                && std::path::Path::new(name)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if plain {
                Ok(())
            } else {
                Err((
                    format!("{at}.seccompProfile.localhostProfile"),
                    format!("{name:?} must be a relative path without '..'"),
                ))
            }
        }
        ("Localhost", None) => Err((
            format!("{at}.seccompProfile.localhostProfile"),
            "required for type Localhost".into(),
        )),
        ("RuntimeDefault" | "Unconfined", Some(_)) => Err((
            format!("{at}.seccompProfile.localhostProfile"),
            "only allowed for type Localhost".into(),
        )),
        (other, _) => Err((
            format!("{at}.seccompProfile.type"),
            format!("{other:?} is not one of RuntimeDefault, Unconfined, Localhost"),
        )),
    }
}

/// Validates `spec.securityContext` against the pod's host namespaces: ids in range, seccomp
/// types, and only safe sysctls (none of the network's with `hostNetwork`, none of IPC's with
/// `hostIPC`, since they would change the node).
pub fn validate_pod(p: &PodSecurityContext, host: HostNamespaces) -> Result<(), FieldError> {
    let at = "spec.securityContext";
    check_id(format!("{at}.runAsUser"), p.run_as_user)?;
    check_id(format!("{at}.runAsGroup"), p.run_as_group)?;
    check_id(format!("{at}.fsGroup"), p.fs_group)?;
    for (i, g) in p.supplemental_groups.iter().enumerate() {
        check_id(format!("{at}.supplementalGroups[{i}]"), Some(*g))?;
    }
    check_seccomp(at, &p.seccomp_profile)?;
    let mut seen = BTreeSet::new();
    for (i, s) in p.sysctls.iter().enumerate() {
        let field = format!("{at}.sysctls[{i}].name");
        // Kubernetes accepts '/' as the separator too.
        let name = s.name.replace('/', ".");
        if !SAFE_SYSCTLS.contains(&name.as_str()) {
            return Err((
                field,
                format!(
                    "{:?} is not a safe sysctl (allowed: {})",
                    s.name,
                    SAFE_SYSCTLS.join(", ")
                ),
            ));
        }
        if host.network && name.starts_with("net.") {
            return Err((
                field,
                format!(
                    "{:?} would change the node's network namespace (hostNetwork)",
                    s.name
                ),
            ));
        }
        if host.ipc && name.starts_with("kernel.") {
            return Err((
                field,
                format!(
                    "{:?} would change the node's IPC namespace (hostIPC)",
                    s.name
                ),
            ));
        }
        if s.value.contains(['\n', '\0']) || s.value.len() > 256 {
            return Err((
                format!("{at}.sysctls[{i}].value"),
                "must be one line of at most 256 bytes".into(),
            ));
        }
        if !seen.insert(name) {
            return Err((field, format!("{:?} is set twice", s.name)));
        }
    }
    Ok(())
}

/// Validates a container's `securityContext` (`at` is its field path).
pub fn validate_container(at: &str, s: &SecurityContext) -> Result<(), FieldError> {
    let at = format!("{at}.securityContext");
    check_id(format!("{at}.runAsUser"), s.run_as_user)?;
    check_id(format!("{at}.runAsGroup"), s.run_as_group)?;
    check_seccomp(&at, &s.seccomp_profile)?;
    if let Some(c) = &s.capabilities {
        for (list, names) in [("add", &c.add), ("drop", &c.drop)] {
            for (i, n) in names.iter().enumerate() {
                if n != "ALL" && !ALL_CAPABILITIES.contains(&cap_name(n).as_str()) {
                    return Err((
                        format!("{at}.capabilities.{list}[{i}]"),
                        format!("{n:?} is not a Linux capability"),
                    ));
                }
            }
        }
    }
    if s.privileged == Some(true) && s.allow_privilege_escalation == Some(false) {
        return Err((
            format!("{at}.allowPrivilegeEscalation"),
            "cannot be false when privileged is true".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(json: &str) -> SecurityContext {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn container_level_wins_over_pod_level() {
        let pod: PodSecurityContext = serde_json::from_str(
            r#"{"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true, "supplementalGroups": [4000], "fsGroup": 2000, "seccompProfile": {"type": "Unconfined"}}"#,
        )
        .unwrap();
        let c = ctx(r#"{"runAsUser": 1001, "seccompProfile": {"type": "RuntimeDefault"}}"#);
        let e = effective(Some(&pod), Some(&c), HostNamespaces::default(), false);
        assert_eq!(e.run_as_user, Some(1001));
        assert_eq!(e.run_as_group, Some(3000));
        assert!(e.run_as_non_root);
        assert_eq!(e.supplemental_groups, [4000, 2000]);
        assert_eq!(e.seccomp, Seccomp::RuntimeDefault);
        let e = effective(Some(&pod), None, HostNamespaces::default(), true);
        assert_eq!(e.seccomp, Seccomp::Unconfined);
        assert_eq!(e.run_as_user, Some(1000));
    }

    #[test]
    fn seccomp_defaults_follow_the_flag() {
        let h = HostNamespaces::default();
        assert_eq!(
            effective(None, None, h, true).seccomp,
            Seccomp::RuntimeDefault
        );
        assert_eq!(effective(None, None, h, false).seccomp, Seccomp::Unconfined);
        let privileged =
            ctx(r#"{"privileged": true, "seccompProfile": {"type": "RuntimeDefault"}}"#);
        let e = effective(None, Some(&privileged), h, true);
        assert_eq!(e.seccomp, Seccomp::Unconfined);
        assert_eq!(e.capabilities.len(), ALL_CAPABILITIES.len());
        assert!(!e.no_new_privileges);
    }

    #[test]
    fn capabilities_add_and_drop_like_containerd() {
        let h = HostNamespaces::default();
        let caps = |json: &str| effective(None, Some(&ctx(json)), h, true).capabilities;
        assert_eq!(caps("{}").len(), DEFAULT_CAPABILITIES.len());
        assert!(caps(r#"{"capabilities": {"drop": ["ALL"]}}"#).is_empty());
        assert_eq!(
            caps(r#"{"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}"#),
            ["CAP_NET_BIND_SERVICE"]
        );
        let c = caps(r#"{"capabilities": {"add": ["NET_ADMIN"], "drop": ["CHOWN", "cap_kill"]}}"#);
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_CHOWN".to_string()) && !c.contains(&"CAP_KILL".to_string()));
        let all_but = caps(r#"{"capabilities": {"add": ["ALL"], "drop": ["SYS_ADMIN"]}}"#);
        assert_eq!(all_but.len(), ALL_CAPABILITIES.len() - 1);
    }

    #[test]
    fn privilege_escalation_is_off_unless_asked_for() {
        let h = HostNamespaces::default();
        assert!(effective(None, None, h, true).no_new_privileges);
        let allow = ctx(r#"{"allowPrivilegeEscalation": true}"#);
        assert!(!effective(None, Some(&allow), h, true).no_new_privileges);
    }

    #[test]
    fn run_as_non_root_refuses_root() {
        let h = HostNamespaces::default();
        let e = effective(None, Some(&ctx(r#"{"runAsNonRoot": true}"#)), h, true);
        assert!(non_root_violation(&e, None, 0).is_some_and(|m| m.contains("will run as root")));
        assert!(non_root_violation(&e, Some("1000"), 1000).is_none());
        assert!(non_root_violation(&e, Some("www"), 33)
            .is_some_and(|m| m.contains("non-numeric user (www)")));
        let e = effective(
            None,
            Some(&ctx(r#"{"runAsNonRoot": true, "runAsUser": 0}"#)),
            h,
            true,
        );
        assert!(non_root_violation(&e, None, 0).is_some());
        assert!(non_root_violation(&effective(None, None, h, true), None, 0).is_none());
    }

    #[test]
    fn validation_names_the_field() {
        let h = HostNamespaces::default();
        let bad_cap = ctx(r#"{"capabilities": {"add": ["NET_ADMN"]}}"#);
        assert_eq!(
            validate_container("spec.containers[0]", &bad_cap)
                .unwrap_err()
                .0,
            "spec.containers[0].securityContext.capabilities.add[0]"
        );
        let bad =
            ctx(r#"{"seccompProfile": {"type": "Localhost", "localhostProfile": "../../etc/x"}}"#);
        assert!(validate_container("c", &bad).is_err());
        assert!(
            validate_container("c", &ctx(r#"{"seccompProfile": {"type": "Strict"}}"#)).is_err()
        );
        assert!(validate_container("c", &ctx(r#"{"runAsUser": -1}"#)).is_err());
        let pod = |y: &str| serde_json::from_str::<PodSecurityContext>(y).unwrap();
        let unsafe_sysctl = pod(r#"{"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}"#);
        let e = validate_pod(&unsafe_sysctl, h).unwrap_err();
        assert_eq!(e.0, "spec.securityContext.sysctls[0].name");
        assert!(e.1.contains("not a safe sysctl"), "{}", e.1);
        let net = pod(r#"{"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}"#);
        assert!(validate_pod(&net, h).is_ok());
        let host_net = HostNamespaces { network: true, ..h };
        assert!(validate_pod(&net, host_net).is_err());
        assert!(serde_json::from_str::<SecurityContext>(r#"{"privilegd": true}"#).is_err());
    }
}
