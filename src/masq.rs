//! `--ip-masq`: Flannel's masquerade and forward rules as nftables, in one table of weft's
//! own (`table ip weft`, and `table ip6 weft` with IPv6), replaced atomically by one
//! `nft -f -` transaction.

use std::process::Stdio;

use ipnetwork::{Ipv4Network, Ipv6Network};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The nftables table that holds all of weft's rules.
pub const TABLE: &str = "weft";

/// The packet mark kube-proxy sets on traffic it will masquerade itself (0x4000); Flannel
/// leaves such packets alone to avoid double NAT.
const KUBE_PROXY_MASQ_MARK: u32 = 0x4000;

/// An `nft` run that failed.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// `nft` could not be started or fed.
    #[error("{op} nftables table ip {TABLE}: run nft: {source}")]
    Spawn {
        /// `apply` or `remove`.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused the transaction.
    #[error("{op} nftables table ip {TABLE}: nft exited with {status}: {stderr}")]
    Refused {
        /// `apply` or `remove`.
        op: &'static str,
        /// nft's exit status.
        status: std::process::ExitStatus,
        /// nft's error output.
        stderr: String,
    },
}

/// The nft script that replaces `table ip weft` with the rules for cluster `network` and this
/// node's pod `subnet`, as Flannel's rule set: no NAT between pods of the cluster (nor for
/// packets kube-proxy marked), NAT pod traffic leaving the cluster except to multicast, no NAT
/// for outside traffic to this node's pods, NAT outside traffic to other nodes' pods; plus
/// forward accept for the cluster network.
pub fn masq_ruleset(network: Ipv4Network, subnet: Ipv4Network) -> String {
    let n = Ipv4Network::new(network.network(), network.prefix()).unwrap_or(network);
    let s = Ipv4Network::new(subnet.network(), subnet.prefix()).unwrap_or(subnet);
    family_ruleset("ip", "224.0.0.0/4", n, s)
}

/// The IPv6 twin of [`masq_ruleset`] (`table ip6 weft`), as Flannel's IPv6 masquerade rules:
/// pod traffic leaving the cluster is masqueraded except to multicast (`ff00::/8`).
pub fn masq6_ruleset(network: Ipv6Network, subnet: Ipv6Network) -> String {
    let n = Ipv6Network::new(network.network(), network.prefix()).unwrap_or(network);
    let s = Ipv6Network::new(subnet.network(), subnet.prefix()).unwrap_or(subnet);
    family_ruleset("ip6", "ff00::/8", n, s)
}

/// The rule set of one address family: nft spells the table family and the address match
/// alike (`ip`/`ip6`), so the two families differ only in that word and the multicast range.
fn family_ruleset(
    family: &str,
    multicast: &str,
    n: impl std::fmt::Display,
    s: impl std::fmt::Display,
) -> String {
    let mark = KUBE_PROXY_MASQ_MARK;
    let f = family;
    format!(
        "table {f} {TABLE}\n\
         delete table {f} {TABLE}\n\
         table {f} {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\tmeta mark & {mark:#x} == {mark:#x} return\n\
         \t\t{f} saddr {n} {f} daddr {n} return\n\
         \t\t{f} saddr {n} {f} daddr != {multicast} masquerade fully-random\n\
         \t\t{f} saddr != {n} {f} daddr {s} return\n\
         \t\t{f} saddr != {n} {f} daddr {n} masquerade fully-random\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\t{f} saddr {n} accept\n\
         \t\t{f} daddr {n} accept\n\
         \t}}\n\
         }}\n"
    )
}

/// The nft script that removes `table ip weft` and `table ip6 weft` whether or not they exist.
pub fn remove_ruleset() -> String {
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip6 {TABLE}\ndelete table ip6 {TABLE}\n"
    )
}

async fn nft_transaction(op: &'static str, script: &str) -> Result<(), MasqError> {
    let spawn_err = |source| MasqError::Spawn { op, source };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(spawn_err)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MasqError::Refused {
            op,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Installs (or atomically replaces) weft's masquerade and forward rules.
pub async fn apply(network: Ipv4Network, subnet: Ipv4Network) -> Result<(), MasqError> {
    nft_transaction("apply", &masq_ruleset(network, subnet)).await
}

/// Installs the rules of each family the node has (`v4`, `v6`: cluster network and node
/// subnet) in one transaction, and drops the table of a family it has not.
pub async fn apply_families(
    v4: Option<(Ipv4Network, Ipv4Network)>,
    v6: Option<(Ipv6Network, Ipv6Network)>,
) -> Result<(), MasqError> {
    let mut script = match v4 {
        Some((network, subnet)) => masq_ruleset(network, subnet),
        None => format!("table ip {TABLE}\ndelete table ip {TABLE}\n"),
    };
    script.push_str(&match v6 {
        Some((network, subnet)) => masq6_ruleset(network, subnet),
        None => format!("table ip6 {TABLE}\ndelete table ip6 {TABLE}\n"),
    });
    nft_transaction("apply", &script).await
}

/// Removes weft's table; succeeds when it is already gone.
pub async fn remove() -> Result<(), MasqError> {
    nft_transaction("remove", &remove_ruleset()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_is_flannels_masquerade_set() {
        let text = masq_ruleset(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
        );
        let expected = "table ip weft
delete table ip weft
table ip weft {
\tchain postrouting {
\t\ttype nat hook postrouting priority 100; policy accept;
\t\tmeta mark & 0x4000 == 0x4000 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}
\tchain forward {
\t\ttype filter hook forward priority 0; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn ruleset_uses_network_addresses_not_host_bits() {
        let text = masq_ruleset(
            "10.244.7.9/16".parse().unwrap(),
            "10.244.3.1/24".parse().unwrap(),
        );
        assert!(text.contains("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return"));
        assert!(text.contains("ip daddr 10.244.3.0/24 return"));
        assert!(!text.contains("10.244.7.9"));
    }

    #[test]
    fn remove_script_tolerates_missing_table() {
        assert_eq!(
            remove_ruleset(),
            "table ip weft\ndelete table ip weft\ntable ip6 weft\ndelete table ip6 weft\n"
        );
    }

    #[test]
    fn ipv6_ruleset_is_flannels_ip6_masquerade_set() {
        let text = masq6_ruleset(
            "fd00:10:244::/48".parse().unwrap(),
            "fd00:10:244:3::1/64".parse().unwrap(),
        );
        assert!(text.starts_with("table ip6 weft\ndelete table ip6 weft\ntable ip6 weft {\n"));
        for rule in [
            "ip6 saddr fd00:10:244::/48 ip6 daddr fd00:10:244::/48 return",
            "ip6 saddr fd00:10:244::/48 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 saddr != fd00:10:244::/48 ip6 daddr fd00:10:244:3::/64 return",
            "ip6 saddr != fd00:10:244::/48 ip6 daddr fd00:10:244::/48 masquerade fully-random",
            "ip6 saddr fd00:10:244::/48 accept",
        ] {
            assert!(text.contains(&format!("\t\t{rule}\n")), "{rule}\n{text}");
        }
    }
}
