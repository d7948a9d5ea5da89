//! Changing the network config (`<prefix>/config`) without breaking the cluster: the checks and
//! the write behind `weftctl network get | set | validate`.
//!
//! A new config is parsed by [`NetworkConfig::parse`], the code weftd runs, so what passes here
//! is what every node accepts. A change that leaves existing leases outside the new range would
//! orphan them (their nodes' routes and pods no longer fit the network); [`ConfigChange`] names
//! them so the caller can refuse. The write is a transaction on the key's revision, so a change
//! made by somebody else between the check and the write is not overwritten.

use std::fmt::Write as _;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::config::{BackendConfig, ConfigError, NetworkConfig};
use crate::lease::{config_key, Lease};
use crate::store::{timed, EtcdStore, StoreError};

/// The network config as stored, with the revision a write must find unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConfig {
    /// The JSON text at `<prefix>/config`.
    pub raw: String,
    /// The key's `mod_revision`.
    pub mod_revision: i64,
}

/// What replacing the stored config with a new one does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// The stored config, defaulted; `None` when there is none or it does not parse.
    pub old: Option<NetworkConfig>,
    /// The new config, defaulted.
    pub new: NetworkConfig,
    /// Leases (and reservations) the new config could not have handed out.
    pub orphaned: Vec<Lease>,
}

impl ConfigChange {
    /// Compares `new` with `old` against the leases in etcd.
    pub fn new(old: Option<NetworkConfig>, new: NetworkConfig, leases: &[Lease]) -> ConfigChange {
        let orphaned = leases
            .iter()
            .filter(|l| !new.fits_lease(&l.subnet, l.ipv6_subnet.as_ref()))
            .cloned()
            .collect();
        ConfigChange { old, new, orphaned }
    }

    /// Whether the effective config stays the same.
    pub fn is_noop(&self) -> bool {
        self.old.as_ref() == Some(&self.new)
    }

    /// Whether nodes switch their data path.
    pub fn changes_backend(&self) -> bool {
        self.old
            .as_ref()
            .is_some_and(|old| old.backend.type_name() != self.new.backend.type_name())
    }

    /// The effective fields, one a line: ` field: value` when unchanged, `-field: old` and
    /// `+field: new` when changed (like a unified diff).
    pub fn diff(&self) -> String {
        let new = effective_fields(&self.new);
        let old = self.old.as_ref().map(effective_fields).unwrap_or_default();
        let mut out = String::new();
        for (field, value) in &new {
            match old.iter().find(|(f, _)| f == field) {
                Some((_, was)) if was == value => {
                    let _ = writeln!(out, " {field}: {value}");
                }
                Some((_, was)) => {
                    let _ = writeln!(out, "-{field}: {was}\n+{field}: {value}");
                }
                None => {
                    let _ = writeln!(out, "+{field}: {value}");
                }
            }
        }
        for (field, was) in &old {
            if !new.iter().any(|(f, _)| f == field) {
                let _ = writeln!(out, "-{field}: {was}");
            }
        }
        out
    }
}

/// A config's effective values under Flannel's field names, defaults filled in.
pub fn effective_fields(cfg: &NetworkConfig) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("Network", cfg.network.to_string()),
        ("SubnetLen", cfg.subnet_len.to_string()),
        ("SubnetMin", cfg.subnet_min.to_string()),
        ("SubnetMax", cfg.subnet_max.to_string()),
        ("Backend.Type", cfg.backend.type_name().to_string()),
    ];
    // The IPv6 fields are shown when they matter, so an IPv4 cluster's diff stays as it was.
    if !cfg.enable_ipv4 {
        fields.insert(0, ("EnableIPv4", "false".to_string()));
    }
    if let Some(v6) = &cfg.ipv6 {
        fields.push(("IPv6Network", v6.network.to_string()));
        fields.push(("IPv6SubnetLen", v6.subnet_len.to_string()));
        fields.push(("IPv6SubnetMin", v6.subnet_min.to_string()));
        fields.push(("IPv6SubnetMax", v6.subnet_max.to_string()));
    }
    match &cfg.backend {
        BackendConfig::Vxlan {
            vni,
            port,
            direct_routing,
            mtu,
        } => {
            fields.push(("Backend.VNI", vni.to_string()));
            fields.push(("Backend.Port", port.to_string()));
            fields.push(("Backend.DirectRouting", direct_routing.to_string()));
            fields.push((
                "Backend.MTU",
                mtu.map_or("interface MTU - 50".to_string(), |m| m.to_string()),
            ));
        }
        BackendConfig::Udp { port } => fields.push(("Backend.Port", port.to_string())),
        BackendConfig::HostGw => {}
        BackendConfig::WireGuard(wg) => {
            fields.push(("Backend.ListenPort", wg.listen_port.to_string()));
            fields.push(("Backend.ListenPortV6", wg.listen_port_v6.to_string()));
            let psk = if wg.psk.is_some() { "set" } else { "none" };
            fields.push(("Backend.PSK", psk.to_string()));
            fields.push((
                "Backend.MTU",
                wg.mtu
                    .map_or("interface MTU".to_string(), |m| m.to_string()),
            ));
            fields.push((
                "Backend.PersistentKeepaliveInterval",
                wg.persistent_keepalive.to_string(),
            ));
            fields.push(("Backend.Mode", wg.mode.as_str().to_string()));
        }
    }
    fields
}

/// Parses `raw` as weftd does; the error names where the text came from.
pub fn validate(origin: &str, raw: &str) -> Result<NetworkConfig, InvalidConfig> {
    NetworkConfig::parse(raw).map_err(|source| InvalidConfig {
        origin: origin.to_string(),
        source,
    })
}

/// A config text that weftd would refuse.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {source}")]
pub struct InvalidConfig {
    /// The file or etcd key the text came from.
    pub origin: String,
    /// What is wrong with it.
    pub source: ConfigError,
}

/// Reads `<prefix>/config` with its revision; `None` when the key does not exist.
pub async fn read(store: &EtcdStore) -> Result<Option<StoredConfig>, StoreError> {
    let key = config_key(store.prefix());
    let resp = timed(
        "get network config",
        &key,
        store.client().kv_client().get(key.clone(), None),
    )
    .await?;
    Ok(resp.kvs().first().map(|kv| StoredConfig {
        raw: String::from_utf8_lossy(kv.value()).into_owned(),
        mod_revision: kv.mod_revision(),
    }))
}

/// Writes `raw` to `<prefix>/config` if the key is still as `seen` (`None`: still absent).
/// Returns [`StoreError::Conflict`] when somebody changed it in between.
pub async fn write(
    store: &EtcdStore,
    raw: &str,
    seen: Option<&StoredConfig>,
) -> Result<(), StoreError> {
    let key = config_key(store.prefix());
    let unchanged = match seen {
        Some(stored) => Compare::mod_revision(key.clone(), CompareOp::Equal, stored.mod_revision),
        None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
    };
    let txn = Txn::new()
        .when([unchanged])
        .and_then([TxnOp::put(key.clone(), raw, None)]);
    let resp = timed(
        "put network config",
        &key,
        store.client().kv_client().txn(txn),
    )
    .await?;
    if resp.succeeded() {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            op: "put network config",
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn lease(subnet: &str, etcd_lease: Option<i64>) -> Lease {
        Lease {
            ipv6_subnet: None,
            subnet: subnet.parse().unwrap(),
            attrs: LeaseAttrs {
                public_ipv6: None,
                backend_v6_data: None,
                public_ip: "192.0.2.11".parse().unwrap(),
                backend_type: "vxlan".into(),
                backend_data: None,
            },
            etcd_lease,
            mod_revision: 1,
        }
    }

    #[test]
    fn ipv6_leases_are_judged_by_both_families() {
        let dual =
            cfg(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48"}"#);
        let mut fits = lease("10.244.1.0/24", Some(7));
        fits.ipv6_subnet = Some("fd00:0:0:1::/64".parse().unwrap());
        let mut outside = lease("10.244.2.0/24", Some(7));
        outside.ipv6_subnet = Some("fd01:0:0:1::/64".parse().unwrap());
        let v4_only = lease("10.244.3.0/24", Some(7));
        let change = ConfigChange::new(
            None,
            dual.clone(),
            &[fits, outside.clone(), v4_only.clone()],
        );
        assert_eq!(change.orphaned, vec![outside, v4_only]);
        let text = change.diff();
        assert!(
            text.contains("+IPv6Network: fd00::/48\n+IPv6SubnetLen: 64\n"),
            "{text}"
        );
        let v6_only = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48"}"#);
        assert_eq!(
            effective_fields(&v6_only)[0],
            ("EnableIPv4", "false".to_string())
        );
    }

    #[test]
    fn leases_outside_the_new_range_are_orphaned() {
        let old = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let leases = [
            lease("10.244.1.0/24", Some(7)),
            lease("10.244.200.0/24", None),
        ];
        let narrower = cfg(r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.100.0"}"#);
        let change = ConfigChange::new(Some(old.clone()), narrower, &leases);
        assert_eq!(change.orphaned, vec![leases[1].clone()]);
        // Another SubnetLen orphans every lease: no /24 fits a /25 layout.
        let change = ConfigChange::new(
            Some(old.clone()),
            cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#),
            &leases,
        );
        assert_eq!(change.orphaned.len(), 2);
        // A wider network keeps them.
        let change = ConfigChange::new(
            Some(old),
            cfg(r#"{"Network":"10.244.0.0/15","SubnetLen":24}"#),
            &leases,
        );
        assert!(change.orphaned.is_empty());
    }

    #[test]
    fn diff_marks_changed_fields_only() {
        let change = ConfigChange::new(
            Some(cfg(r#"{"Network":"10.244.0.0/16"}"#)),
            cfg(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#),
            &[],
        );
        assert_eq!(
            change.diff(),
            " Network: 10.244.0.0/16\n SubnetLen: 24\n SubnetMin: 10.244.1.0\n SubnetMax: 10.244.255.0\n\
             -Backend.Type: vxlan\n+Backend.Type: udp\n\
             -Backend.Port: 8472\n+Backend.Port: 8285\n\
             -Backend.VNI: 1\n-Backend.DirectRouting: false\n-Backend.MTU: interface MTU - 50\n"
        );
        assert!(change.changes_backend());
        assert!(!change.is_noop());
        let same = ConfigChange::new(
            Some(cfg(r#"{"Network":"10.244.0.0/16"}"#)),
            cfg(r#"{"network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#),
            &[],
        );
        assert!(same.is_noop());
        let first = ConfigChange::new(None, cfg(r#"{"Network":"10.244.0.0/16"}"#), &[]);
        assert!(first.diff().starts_with("+Network: 10.244.0.0/16\n"));
    }

    #[test]
    fn validation_names_the_origin_field_and_value() {
        let e = validate("net.json", r#"{"Network":"10.244.0.0/16","SubnetLen":33}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("net.json: "), "{e}");
        assert!(e.contains("SubnetLen = 33"), "{e}");
    }
}
