//! The Downward API's `resourceFieldRef`: a container's cpu or memory request or limit as the
//! text an environment variable or volume file holds, as the kubelet computes it
//! (`ExtractContainerResourceValue`): the value divided by the divisor and rounded up, a limit
//! that is not set standing for the node's allocatable amount, a request that is not set for 0.
//! Pure: the caller supplies the container's resources and the node's capacity.

use super::resources::{ContainerResources, Quantity};

/// A `resourceFieldRef` weft cannot resolve: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceFieldError {
    /// `resource` is not one of [`RESOURCE_FIELDS`].
    #[error("resourceFieldRef.resource {0:?} is not supported (supported: limits.cpu, requests.cpu, limits.memory, requests.memory)")]
    Resource(String),
    /// The divisor is not one Kubernetes accepts for the resource.
    #[error("resourceFieldRef.divisor {divisor:?} is not valid for {resource} (cpu: 1m or 1; memory: 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei)")]
    Divisor {
        /// The resource.
        resource: String,
        /// The divisor as written.
        divisor: String,
    },
}

/// The resources a `resourceFieldRef` may name.
pub const RESOURCE_FIELDS: &[&str] = &[
    "limits.cpu",
    "requests.cpu",
    "limits.memory",
    "requests.memory",
];

/// What the node can give a container: a limit that is not set stands for this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAllocatable {
    /// cpu, millicores.
    pub cpu_milli: u64,
    /// memory, bytes.
    pub memory_bytes: u64,
}

fn divisor_text(d: &Quantity) -> String {
    match d {
        Quantity::Int(i) => i.to_string(),
        Quantity::Float(f) => f.to_string(),
        Quantity::Text(s) => s.clone(),
    }
}

/// The value of `resource` for a container with `c`, divided by `divisor` (default `1`) and
/// rounded up: `limits.cpu` of `500m` is `1` with divisor `1` and `500` with `1m`;
/// `limits.memory` of `64Mi` is `67108864`, or `64` with divisor `1Mi`.
pub fn resource_field_value(
    resource: &str,
    divisor: Option<&Quantity>,
    c: &ContainerResources,
    node: NodeAllocatable,
) -> Result<String, ResourceFieldError> {
    let is_cpu = match resource {
        "limits.cpu" | "requests.cpu" => true,
        "limits.memory" | "requests.memory" => false,
        other => return Err(ResourceFieldError::Resource(other.to_string())),
    };
    let bad_divisor = || ResourceFieldError::Divisor {
        resource: resource.to_string(),
        divisor: divisor.map(divisor_text).unwrap_or_default(),
    };
    // The divisor in the unit the value is kept in: millicores for cpu, bytes for memory.
    let div: u128 = match divisor {
        None => {
            if is_cpu {
                1000
            } else {
                1
            }
        }
        Some(d) => {
            let milli = d.milli().ok_or_else(bad_divisor)?;
            let allowed: &[u128] = if is_cpu {
                &[1, 1000]
            } else {
                &[
                    1_000,
                    1_000_000,
                    1_000_000_000,
                    1_000_000_000_000,
                    1_000_000_000_000_000,
                    1_000_000_000_000_000_000,
                    1_000_000_000_000_000_000_000,
                    1_024_000,
                    1_048_576_000,
                    1_073_741_824_000,
                    1_099_511_627_776_000,
                    1_125_899_906_842_624_000,
                    1_152_921_504_606_846_976_000,
                ]
            };
            if !allowed.contains(&milli) {
                return Err(bad_divisor());
            }
            if is_cpu {
                milli
            } else {
                milli / 1000
            }
        }
    };
    let value = match resource {
        "limits.cpu" => c.cpu_limit.unwrap_or(node.cpu_milli),
        "requests.cpu" => c.cpu_request.unwrap_or(0),
        "limits.memory" => c.memory_limit.unwrap_or(node.memory_bytes),
        _ => c.memory_request.unwrap_or(0),
    };
    Ok(u128::from(value).div_ceil(div).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: NodeAllocatable = NodeAllocatable {
        cpu_milli: 2000,
        memory_bytes: 8 << 30,
    };

    fn q(s: &str) -> Quantity {
        Quantity::Text(s.to_string())
    }

    #[test]
    fn values_are_divided_and_rounded_up_as_kubernetes_does() {
        let c = ContainerResources {
            cpu_request: Some(250),
            cpu_limit: Some(500),
            memory_request: Some(32 << 20),
            memory_limit: Some((64 << 20) + 1),
        };
        let v =
            |r: &str, d: Option<Quantity>| resource_field_value(r, d.as_ref(), &c, NODE).unwrap();
        assert_eq!(v("limits.cpu", None), "1");
        assert_eq!(v("limits.cpu", Some(q("1m"))), "500");
        assert_eq!(v("requests.cpu", Some(q("1m"))), "250");
        assert_eq!(v("requests.cpu", Some(Quantity::Int(1))), "1");
        assert_eq!(v("requests.memory", None), "33554432");
        assert_eq!(v("requests.memory", Some(q("1Mi"))), "32");
        // One byte over 64Mi is 65Mi, rounded up.
        assert_eq!(v("limits.memory", Some(q("1Mi"))), "65");
        assert_eq!(v("requests.memory", Some(q("1k"))), "33555");
        assert_eq!(v("requests.memory", Some(q("1Ki"))), "32768");
    }

    #[test]
    fn unset_limits_are_the_nodes_and_unset_requests_zero() {
        let none = ContainerResources::default();
        let v = |r: &str, d: &str| resource_field_value(r, Some(&q(d)), &none, NODE).unwrap();
        assert_eq!(v("limits.cpu", "1"), "2");
        assert_eq!(v("limits.cpu", "1m"), "2000");
        assert_eq!(v("limits.memory", "1Gi"), "8");
        assert_eq!(v("requests.cpu", "1m"), "0");
        assert_eq!(v("requests.memory", "1"), "0");
    }

    #[test]
    fn unknown_resources_and_divisors_are_refused() {
        let c = ContainerResources::default();
        let e = |r: &str, d: Option<Quantity>| {
            resource_field_value(r, d.as_ref(), &c, NODE)
                .unwrap_err()
                .to_string()
        };
        assert!(e("limits.ephemeral-storage", None)
            .contains("\"limits.ephemeral-storage\" is not supported"));
        assert!(e("limits.cpu", Some(q("2"))).contains("divisor \"2\" is not valid for limits.cpu"));
        assert!(e("limits.cpu", Some(q("1Mi"))).contains("not valid"));
        assert!(e("limits.memory", Some(q("1m"))).contains("not valid"));
        assert!(e("limits.memory", Some(q("3Mi"))).contains("not valid"));
        assert!(e("requests.memory", Some(q("-1"))).contains("not valid"));
    }
}
