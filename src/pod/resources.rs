//! Container `resources`: quantities, the pod's QoS class, and the cgroup settings and
//! `oom_score_adj` kubelet derives from them. Pure logic; runc writes the values into the
//! cgroup (v1 or v2: runc converts `cpu.shares` to `cpu.weight` on v2).

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResources, LinuxResourcesBuilder,
};
use oci_spec::OciSpecError;
use serde::{Deserialize, Serialize};

/// `resources` of a container.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequirements {
    /// `limits`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    /// `requests`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
}

/// A Kubernetes quantity as written in a manifest (`100m`, `0.5`, `32Mi`, `1e9`, `2`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Quantity {
    /// A bare integer.
    Int(i64),
    /// A bare decimal.
    Float(f64),
    /// A string with an optional suffix.
    Text(String),
}

/// Resource names weft enforces; `ephemeral-storage` is accepted and not enforced.
pub const RESOURCE_NAMES: &[&str] = &["cpu", "memory", "ephemeral-storage"];

impl Quantity {
    /// The value in thousandths (`100m` → 100, `2` → 2000, `32Mi` → 33554432000), rounded up
    /// like Kubernetes' `MilliValue`; `None` for a malformed or negative quantity.
    pub fn milli(&self) -> Option<u128> {
        match self {
            Quantity::Int(i) => u128::try_from(*i).ok().map(|v| v * 1000),
            Quantity::Float(f) if f.is_finite() && *f >= 0.0 && *f < 1e30 => {
                Some((f * 1000.0).ceil() as u128)
            }
            Quantity::Float(_) => None,
            Quantity::Text(s) => parse_milli(s.trim()),
        }
    }

    /// The value in whole units, rounded up (`Value()` in Kubernetes).
    pub fn value(&self) -> Option<u128> {
        self.milli().map(|m| m.div_ceil(1000))
    }
}

/// `<decimal><suffix>` in thousandths. Suffixes: binary `Ki Mi Gi Ti Pi Ei`, decimal
/// `n u m k M G T P E`, exponent `e<n>`/`E<n>`.
fn parse_milli(s: &str) -> Option<u128> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.is_empty() || num.len() > 40 {
        return None;
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Value × 10^9 as an integer, so every suffix down to `n` stays exact.
    let mut nanos: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    nanos = nanos.checked_mul(1_000_000_000)?;
    let frac9: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    nanos = nanos.checked_add(frac9.parse::<u128>().ok()?)?;
    let pow = |b: u128, e: u32| b.checked_pow(e);
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (pow(1000, 2)?, 1),
        "G" => (pow(1000, 3)?, 1),
        "T" => (pow(1000, 4)?, 1),
        "P" => (pow(1000, 5)?, 1),
        "E" => (pow(1000, 6)?, 1),
        "Ki" => (1024, 1),
        "Mi" => (pow(1024, 2)?, 1),
        "Gi" => (pow(1024, 3)?, 1),
        "Ti" => (pow(1024, 4)?, 1),
        "Pi" => (pow(1024, 5)?, 1),
        "Ei" => (pow(1024, 6)?, 1),
        e => {
            let exp: u32 = e.strip_prefix(['e', 'E'])?.parse().ok()?;
            if exp > 18 {
                return None;
            }
            (pow(10, exp)?, 1)
        }
    };
    // milli = nanos × mul / div / 10^6, rounded up.
    let scaled = nanos.checked_mul(mul)?;
    Some(scaled.div_ceil(div.checked_mul(1_000_000)?))
}

/// The pod's QoS class, as `status.qosClass` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosClass {
    /// Every container has cpu and memory limits equal to its requests.
    Guaranteed,
    /// Some container has a request or limit, not all guaranteed.
    Burstable,
    /// No container has any request or limit.
    BestEffort,
}

impl QosClass {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// A container's cpu and memory, in millicores and bytes, with requests defaulted to limits
/// (what the API server does before kubelet sees a pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerResources {
    /// cpu request, millicores.
    pub cpu_request: Option<u64>,
    /// cpu limit, millicores.
    pub cpu_limit: Option<u64>,
    /// memory request, bytes.
    pub memory_request: Option<u64>,
    /// memory limit, bytes.
    pub memory_limit: Option<u64>,
}

impl ContainerResources {
    /// From a validated `resources` (absent: all `None`).
    pub fn of(r: Option<&ResourceRequirements>) -> ContainerResources {
        let Some(r) = r else {
            return ContainerResources::default();
        };
        let get = |m: &BTreeMap<String, Quantity>, k: &str, milli: bool| {
            m.get(k)
                .and_then(|q| if milli { q.milli() } else { q.value() })
                .map(|v| u64::try_from(v).unwrap_or(u64::MAX))
        };
        let cpu_limit = get(&r.limits, "cpu", true);
        let memory_limit = get(&r.limits, "memory", false);
        ContainerResources {
            cpu_request: get(&r.requests, "cpu", true).or(cpu_limit),
            cpu_limit,
            memory_request: get(&r.requests, "memory", false).or(memory_limit),
            memory_limit,
        }
    }

    fn is_empty(&self) -> bool {
        *self == ContainerResources::default()
    }

    fn is_guaranteed(&self) -> bool {
        self.cpu_limit.is_some()
            && self.memory_limit.is_some()
            && self.cpu_request == self.cpu_limit
            && self.memory_request == self.memory_limit
    }
}

/// The QoS class of a pod whose containers (init and app) have `containers` resources.
pub fn qos_class(containers: &[ContainerResources]) -> QosClass {
    if containers.iter().all(ContainerResources::is_empty) {
        QosClass::BestEffort
    } else if containers.iter().all(ContainerResources::is_guaranteed) {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// kubelet's `oom_score_adj` for a container (pkg/kubelet/qos/policy.go): -997 for
/// Guaranteed, 1000 for BestEffort, and for Burstable `1000 - 1000 × request / capacity`
/// kept within 3..=999, so a Burstable container is always killed before a Guaranteed one
/// and after a BestEffort one.
pub fn oom_score_adj(qos: QosClass, c: &ContainerResources, memory_capacity: u64) -> i32 {
    match qos {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            let request = u128::from(c.memory_request.unwrap_or(0));
            let capacity = u128::from(memory_capacity.max(1));
            let adj = 1000 - (1000 * request / capacity).min(1000) as i32;
            adj.clamp(3, 999)
        }
    }
}

/// kubelet's cpu shares for a request in millicores (`MilliCPUToShares`): 1024 per core,
/// at least 2 (also for no request).
pub fn cpu_shares(milli: Option<u64>) -> u64 {
    let m = milli.unwrap_or(0);
    (m.saturating_mul(1024) / 1000).max(2)
}

/// CFS period kubelet uses (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// kubelet's CFS quota for a limit in millicores (`MilliCPUToQuota`): the period's share,
/// at least 1 ms.
pub fn cpu_quota(milli: u64) -> i64 {
    let q = milli.saturating_mul(CPU_PERIOD_US) / 1000;
    i64::try_from(q.max(1000)).unwrap_or(i64::MAX)
}

/// The OCI `linux.resources` for a container: devices denied (privileged: allowed), cpu
/// shares and quota, memory limit, pids limit.
pub fn linux_resources(
    c: &ContainerResources,
    pids_limit: Option<i64>,
    privileged: bool,
) -> Result<LinuxResources, OciSpecError> {
    let mut cpu = LinuxCpuBuilder::default().shares(cpu_shares(c.cpu_request));
    if let Some(limit) = c.cpu_limit {
        cpu = cpu.quota(cpu_quota(limit)).period(CPU_PERIOD_US);
    }
    let devices = LinuxDeviceCgroupBuilder::default()
        .allow(privileged)
        .access("rwm")
        .build()?;
    let mut res = LinuxResourcesBuilder::default()
        .devices(vec![devices])
        .cpu(cpu.build()?);
    if let Some(limit) = c.memory_limit {
        res = res.memory(
            LinuxMemoryBuilder::default()
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .build()?,
        );
    }
    if let Some(limit) = pids_limit {
        res = res.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    res.build()
}

/// Validates a container's `resources` (`at` is its field path): known names, well-formed
/// non-negative quantities, requests not above limits.
pub fn validate(at: &str, r: &ResourceRequirements) -> Result<(), (String, String)> {
    for (kind, map) in [("limits", &r.limits), ("requests", &r.requests)] {
        for (name, q) in map {
            let field = format!("{at}.resources.{kind}.{name}");
            if !RESOURCE_NAMES.contains(&name.as_str()) {
                return Err((
                    field,
                    format!(
                        "unsupported resource (supported: {})",
                        RESOURCE_NAMES.join(", ")
                    ),
                ));
            }
            if q.milli().is_none() {
                return Err((field, format!("{q:?} is not a valid quantity")));
            }
        }
    }
    for name in ["cpu", "memory"] {
        let (Some(req), Some(lim)) = (
            r.requests.get(name).and_then(Quantity::milli),
            r.limits.get(name).and_then(Quantity::milli),
        ) else {
            continue;
        };
        if req > lim {
            return Err((
                format!("{at}.resources.requests.{name}"),
                format!("must be less than or equal to the {name} limit"),
            ));
        }
    }
    Ok(())
}

/// `MemTotal` of `/proc/meminfo` contents, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::Text(s.into())
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(q("100m").milli(), Some(100));
        assert_eq!(q("0.5").milli(), Some(500));
        assert_eq!(q("2").milli(), Some(2000));
        assert_eq!(Quantity::Int(2).milli(), Some(2000));
        assert_eq!(Quantity::Float(0.25).milli(), Some(250));
        assert_eq!(q("32Mi").value(), Some(32 << 20));
        assert_eq!(q("1G").value(), Some(1_000_000_000));
        assert_eq!(q("129e6").value(), Some(129_000_000));
        assert_eq!(q("1.5Gi").value(), Some(3 << 29));
        assert_eq!(q("1u").milli(), Some(1), "rounded up");
        for bad in ["", "abc", "1Xi", "-1", "1.2.3", "m", "1e99"] {
            assert_eq!(q(bad).milli(), None, "{bad}");
        }
        assert_eq!(Quantity::Int(-5).milli(), None);
    }

    fn res(
        cpu_req: Option<u64>,
        cpu_lim: Option<u64>,
        mem_req: Option<u64>,
        mem_lim: Option<u64>,
    ) -> ContainerResources {
        ContainerResources {
            cpu_request: cpu_req,
            cpu_limit: cpu_lim,
            memory_request: mem_req,
            memory_limit: mem_lim,
        }
    }

    #[test]
    fn requests_default_to_limits_and_qos_follows() {
        let r: ResourceRequirements =
            serde_json::from_str(r#"{"limits": {"cpu": "500m", "memory": "64Mi"}}"#).unwrap();
        let c = ContainerResources::of(Some(&r));
        assert_eq!(c, res(Some(500), Some(500), Some(64 << 20), Some(64 << 20)));
        assert_eq!(qos_class(&[c]), QosClass::Guaranteed);
        assert_eq!(
            qos_class(&[c, ContainerResources::default()]),
            QosClass::Burstable
        );
        assert_eq!(
            qos_class(&[ContainerResources::default()]),
            QosClass::BestEffort
        );
        let burst = res(Some(100), Some(200), None, None);
        assert_eq!(qos_class(&[burst]), QosClass::Burstable);
    }

    #[test]
    fn oom_score_adj_matches_kubelet() {
        let cap = 8 << 30;
        let g = res(Some(1), Some(1), Some(1), Some(1));
        assert_eq!(oom_score_adj(QosClass::Guaranteed, &g, cap), -997);
        assert_eq!(oom_score_adj(QosClass::BestEffort, &g, cap), 1000);
        let half = res(None, None, Some(4 << 30), None);
        assert_eq!(oom_score_adj(QosClass::Burstable, &half, cap), 500);
        let none = res(Some(100), None, None, None);
        assert_eq!(oom_score_adj(QosClass::Burstable, &none, cap), 999);
        let huge = res(None, None, Some(16 << 30), None);
        assert_eq!(oom_score_adj(QosClass::Burstable, &huge, cap), 3);
    }

    #[test]
    fn cgroup_values_match_kubelet() {
        assert_eq!(cpu_shares(None), 2);
        assert_eq!(cpu_shares(Some(100)), 102);
        assert_eq!(cpu_shares(Some(1000)), 1024);
        assert_eq!(cpu_quota(100), 10_000);
        assert_eq!(cpu_quota(1), 1000);
        let as_json =
            |r: Result<LinuxResources, OciSpecError>| serde_json::to_value(r.unwrap()).unwrap();
        let r = as_json(linux_resources(
            &res(Some(100), Some(100), None, Some(32 << 20)),
            Some(64),
            false,
        ));
        assert_eq!(
            r["cpu"],
            serde_json::json!({"shares": 102, "quota": 10000, "period": 100000})
        );
        assert_eq!(r["memory"]["limit"], 32 << 20);
        assert_eq!(r["pids"]["limit"], 64);
        assert_eq!(
            r["devices"],
            serde_json::json!([{"allow": false, "access": "rwm"}])
        );
        let none = as_json(linux_resources(&ContainerResources::default(), None, false));
        assert!(none.get("memory").is_none() && none.get("pids").is_none());
    }

    #[test]
    fn validation_names_field_and_value() {
        let r: ResourceRequirements =
            serde_json::from_str(r#"{"limits": {"memory": "lots"}}"#).unwrap();
        let e = validate("spec.containers[0]", &r).unwrap_err();
        assert_eq!(e.0, "spec.containers[0].resources.limits.memory");
        assert!(e.1.contains("lots"));
        let r: ResourceRequirements = serde_json::from_str(r#"{"limits": {"gpu": 1}}"#).unwrap();
        assert!(validate("c", &r).is_err());
        let r: ResourceRequirements =
            serde_json::from_str(r#"{"limits": {"cpu": "1"}, "requests": {"cpu": 2}}"#).unwrap();
        assert_eq!(validate("c", &r).unwrap_err().0, "c.resources.requests.cpu");
        assert_eq!(mem_total("MemTotal:       16384 kB\n"), Some(16 << 20));
    }
}
