//! WireGuard's cross-platform userspace API (wireguard.com/xplatform), the text protocol
//! `wg(8)` speaks to wireguard-go, as weftd speaks it to its userspace data path process over
//! a unix socket: a request is `set=1` or `get=1` and `key=value` lines up to an empty line;
//! the answer is `errno=N` (0 on success) and an empty line, after a `get`'s `key=value`
//! lines. Keys are lowercase hex. Peer lines follow the `public_key=` that opens the peer.
//!
//! What weft adds, all prefixed `weft_` so no known key is bent: the device-level
//! `weft_own_subnet=` (the node's pod subnets, one line per family; decrypted packets for other
//! destinations are dropped), and in a `get` answer the device's identity (`weft_device=`, `weft_bind=`,
//! `weft_public_key=`, `weft_offloads=`) and the data path's counters (`weft_<counter>=`).
//! A `get` never answers the private key (it never leaves weftd but towards the data path).
//!
//! Pure: parsing and formatting without I/O. A request is parsed whole before anything is
//! applied, so a bad line changes nothing; errors name the line and the key, and never the
//! value of a key line.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnetwork::IpNetwork;

use crate::wireguard_key::{SecretKey, WireGuardKey, KEY_LEN};

/// Longest request the data path reads (a `set` of every peer of a large cluster fits).
pub const MAX_REQUEST: usize = 16 << 20;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get=1`: the device and its peers.
    Get,
    /// `set=1`: changes to the device and its peers.
    Set(SetRequest),
}

/// The changes of one `set=1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `private_key=`.
    pub private_key: Option<SecretKey>,
    /// `listen_port=`.
    pub listen_port: Option<u16>,
    /// `replace_peers=true`: peers not named in this request are removed.
    pub replace_peers: bool,
    /// `weft_own_subnet=` lines: the pod subnets decrypted packets must be for (replacing
    /// the device's when any is given).
    pub own_subnets: Vec<IpNetwork>,
    /// The peers named, in order.
    pub peers: Vec<PeerSet>,
}

/// The lines of one peer in a `set=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSet {
    /// `public_key=`, which opens the peer.
    pub key: WireGuardKey,
    /// `remove=true`.
    pub remove: bool,
    /// `update_only=true`: only if the peer exists.
    pub update_only: bool,
    /// `endpoint=`.
    pub endpoint: Option<SocketAddr>,
    /// `replace_allowed_ips=true`: the allowed IPs named here replace the peer's.
    pub replace_allowed_ips: bool,
    /// `allowed_ip=` lines.
    pub allowed: Vec<IpNetwork>,
    /// `persistent_keepalive_interval=`.
    pub keepalive: Option<u16>,
    /// `preshared_key=` (all zeros: none).
    pub psk: Option<Option<SecretKey>>,
}

impl PeerSet {
    /// A peer line group that names only the key.
    pub fn new(key: WireGuardKey) -> PeerSet {
        PeerSet {
            key,
            remove: false,
            update_only: false,
            endpoint: None,
            replace_allowed_ips: false,
            allowed: Vec::new(),
            keepalive: None,
            psk: None,
        }
    }
}

/// The device as a `get=1` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceView {
    /// `listen_port=`.
    pub listen_port: u16,
    /// `weft_device=`: the TUN device the data path owns.
    pub device: String,
    /// `weft_bind=`: the underlay address its sockets are bound to.
    pub bind: Option<SocketAddr>,
    /// `weft_public_key=`: the public half of the private key set, if one is.
    pub public_key: Option<WireGuardKey>,
    /// `weft_own_subnet=` lines.
    pub own_subnets: Vec<IpNetwork>,
    /// `weft_offloads=`: the offloads the kernel granted its TUN queues and sockets.
    pub offloads: String,
    /// `weft_offloads_asked=`: whether the process was started asking for offloads (the
    /// kernel may have granted none); absent from a process that does not say.
    pub offloads_asked: Option<bool>,
    /// `weft_<name>=`: the data path's counters.
    pub counters: BTreeMap<String, u64>,
    /// The peers, by key.
    pub peers: BTreeMap<WireGuardKey, PeerView>,
}

/// One peer as a `get=1` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerView {
    /// `endpoint=`.
    pub endpoint: Option<SocketAddr>,
    /// `allowed_ip=` lines.
    pub allowed: Vec<IpNetwork>,
    /// `persistent_keepalive_interval=`.
    pub keepalive: u16,
}

/// Why a request or an answer was refused: the line (1-based) and key, and why; never the
/// value of a key line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    /// Not `key=value` text, or no `set=1`/`get=1` first.
    #[error("line {line}: {reason}")]
    Protocol {
        /// The line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A request the data path cannot carry out as a whole (another port, peers before the
    /// private key, a peer without an endpoint).
    #[error("{key}: {reason}")]
    Refused {
        /// The key that cannot be honoured.
        key: String,
        /// Why not.
        reason: String,
    },
    /// A known key with a value it cannot take, or an unknown key.
    #[error("line {line}: {key}: {reason}")]
    Invalid {
        /// The line.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong (with the value, unless it is a key).
        reason: String,
    },
}

impl UapiError {
    /// The `errno=` the answer carries: EPROTO for text that is no request, EINVAL for a bad
    /// value (as wireguard-go answers).
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::Protocol { .. } => libc::EPROTO,
            UapiError::Invalid { .. } | UapiError::Refused { .. } => libc::EINVAL,
        }
    }
}

/// The value of a line, quoted and cut short for an error message.
fn shown(value: &str) -> String {
    let cut: String = value.chars().take(64).collect();
    format!("{cut:?}")
}

fn invalid(line: usize, key: &str, reason: impl Into<String>) -> UapiError {
    UapiError::Invalid {
        line,
        // Keys are short words; an attacker's long one is cut.
        key: key.chars().take(40).collect(),
        reason: reason.into(),
    }
}

/// 32 bytes from 64 hex digits.
fn parse_hex_key(value: &str) -> Option<[u8; KEY_LEN]> {
    let bytes = value.as_bytes();
    if bytes.len() != 2 * KEY_LEN {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// 64 lowercase hex digits.
fn hex(bytes: &[u8; KEY_LEN]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_bool(line: usize, key: &str, value: &str) -> Result<bool, UapiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(invalid(
            line,
            key,
            format!("{} is not true or false", shown(other)),
        )),
    }
}

fn parse_endpoint(line: usize, key: &str, value: &str) -> Result<SocketAddr, UapiError> {
    match value.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Ok(a),
        Ok(_) => Err(invalid(
            line,
            key,
            format!("{} has no address or port", shown(value)),
        )),
        Err(_) => Err(invalid(
            line,
            key,
            format!("{} is not an address:port", shown(value)),
        )),
    }
}

fn parse_subnet(line: usize, key: &str, value: &str) -> Result<IpNetwork, UapiError> {
    let net = value
        .parse::<IpNetwork>()
        .map_err(|_| invalid(line, key, format!("{} is not an IP prefix", shown(value))))?;
    // WireGuard keeps the network of an allowed IP with host bits set.
    IpNetwork::new(net.network(), net.prefix())
        .map_err(|e| invalid(line, key, format!("{}: {e}", shown(value))))
}

fn parse_number<T: std::str::FromStr>(line: usize, key: &str, value: &str) -> Result<T, UapiError> {
    value
        .parse()
        .map_err(|_| invalid(line, key, format!("{} is out of range", shown(value))))
}

/// Splits a line into key and value.
fn split(line: usize, text: &str) -> Result<(&str, &str), UapiError> {
    text.split_once('=').ok_or_else(|| UapiError::Protocol {
        line,
        reason: format!("{} is not key=value", shown(text)),
    })
}

/// Parses one request: its lines without the empty line that ends it.
pub fn parse_request(text: &str) -> Result<Request, UapiError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let Some((_, first)) = lines.next() else {
        return Err(UapiError::Protocol {
            line: 1,
            reason: "empty request".to_string(),
        });
    };
    match first {
        "get=1" => match lines.next() {
            None => Ok(Request::Get),
            Some((line, l)) => Err(UapiError::Protocol {
                line,
                reason: format!("{} after get=1", shown(l)),
            }),
        },
        "set=1" => parse_set(lines).map(Request::Set),
        other => Err(UapiError::Protocol {
            line: 1,
            reason: format!("{} is neither set=1 nor get=1", shown(other)),
        }),
    }
}

fn parse_set<'a>(lines: impl Iterator<Item = (usize, &'a str)>) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    for (line, text) in lines {
        let (key, value) = split(line, text)?;
        if key == "public_key" {
            let bytes =
                parse_hex_key(value).ok_or_else(|| invalid(line, key, "not 64 hex digits"))?;
            req.peers
                .push(PeerSet::new(WireGuardKey::from_bytes(bytes)));
            continue;
        }
        if let Some(peer) = req.peers.last_mut() {
            match key {
                "remove" => peer.remove = parse_bool(line, key, value)?,
                "update_only" => peer.update_only = parse_bool(line, key, value)?,
                "endpoint" => peer.endpoint = Some(parse_endpoint(line, key, value)?),
                "replace_allowed_ips" => peer.replace_allowed_ips = parse_bool(line, key, value)?,
                "allowed_ip" => peer.allowed.push(parse_subnet(line, key, value)?),
                "persistent_keepalive_interval" => {
                    peer.keepalive = Some(parse_number(line, key, value)?)
                }
                "preshared_key" => {
                    let bytes = parse_hex_key(value)
                        .ok_or_else(|| invalid(line, key, "not 64 hex digits"))?;
                    peer.psk =
                        Some((bytes != [0u8; KEY_LEN]).then(|| SecretKey::from_bytes(bytes)));
                }
                "protocol_version" if value == "1" => {}
                "protocol_version" => {
                    return Err(invalid(line, key, format!("{} is not 1", shown(value))))
                }
                other => return Err(invalid(line, other, "not a peer key this data path knows")),
            }
            continue;
        }
        match key {
            "private_key" => {
                let bytes =
                    parse_hex_key(value).ok_or_else(|| invalid(line, key, "not 64 hex digits"))?;
                req.private_key = Some(SecretKey::from_bytes(bytes));
            }
            "listen_port" => req.listen_port = Some(parse_number(line, key, value)?),
            "replace_peers" => req.replace_peers = parse_bool(line, key, value)?,
            "weft_own_subnet" => req.own_subnets.push(parse_subnet(line, key, value)?),
            // No firewall marks: the sockets carry none.
            "fwmark" if value == "0" => {}
            other => {
                return Err(invalid(
                    line,
                    other,
                    "not a device key this data path knows",
                ))
            }
        }
    }
    Ok(req)
}

/// The text of `req`, without the empty line that ends it.
pub fn format_set(req: &SetRequest) -> String {
    let mut out = String::from("set=1\n");
    if let Some(k) = &req.private_key {
        out.push_str(&format!("private_key={}\n", hex(k.as_bytes())));
    }
    if let Some(p) = req.listen_port {
        out.push_str(&format!("listen_port={p}\n"));
    }
    if req.replace_peers {
        out.push_str("replace_peers=true\n");
    }
    for s in &req.own_subnets {
        out.push_str(&format!("weft_own_subnet={s}\n"));
    }
    for p in &req.peers {
        out.push_str(&format!("public_key={}\n", hex(p.key.as_bytes())));
        if p.remove {
            out.push_str("remove=true\n");
            continue;
        }
        if p.update_only {
            out.push_str("update_only=true\n");
        }
        if let Some(psk) = &p.psk {
            let bytes = psk.as_ref().map_or([0u8; KEY_LEN], |k| *k.as_bytes());
            out.push_str(&format!("preshared_key={}\n", hex(&bytes)));
        }
        if let Some(e) = p.endpoint {
            out.push_str(&format!("endpoint={e}\n"));
        }
        if let Some(k) = p.keepalive {
            out.push_str(&format!("persistent_keepalive_interval={k}\n"));
        }
        if p.replace_allowed_ips {
            out.push_str("replace_allowed_ips=true\n");
        }
        for a in &p.allowed {
            out.push_str(&format!("allowed_ip={a}\n"));
        }
    }
    out
}

/// The `key=value` lines of a `get=1` answer (without `errno=`).
pub fn format_device(view: &DeviceView) -> String {
    let mut out = format!("listen_port={}\n", view.listen_port);
    out.push_str(&format!("weft_device={}\n", view.device));
    if let Some(b) = view.bind {
        out.push_str(&format!("weft_bind={b}\n"));
    }
    if let Some(k) = view.public_key {
        out.push_str(&format!("weft_public_key={}\n", hex(k.as_bytes())));
    }
    for s in &view.own_subnets {
        out.push_str(&format!("weft_own_subnet={s}\n"));
    }
    out.push_str(&format!("weft_offloads={}\n", view.offloads));
    if let Some(asked) = view.offloads_asked {
        out.push_str(&format!("weft_offloads_asked={asked}\n"));
    }
    for (name, value) in &view.counters {
        out.push_str(&format!("weft_{name}={value}\n"));
    }
    for (key, peer) in &view.peers {
        out.push_str(&format!("public_key={}\n", hex(key.as_bytes())));
        if let Some(e) = peer.endpoint {
            out.push_str(&format!("endpoint={e}\n"));
        }
        out.push_str(&format!(
            "persistent_keepalive_interval={}\n",
            peer.keepalive
        ));
        for a in &peer.allowed {
            out.push_str(&format!("allowed_ip={a}\n"));
        }
    }
    out
}

/// Parses a `get=1` answer: its lines up to the empty one, `errno=` last. An errno other than
/// 0 is returned as the error's reason.
pub fn parse_device(text: &str) -> Result<DeviceView, UapiError> {
    let mut view = DeviceView::default();
    let mut peer: Option<WireGuardKey> = None;
    let mut errno = None;
    for (i, text) in text.lines().enumerate() {
        let line = i + 1;
        let (key, value) = split(line, text)?;
        if key == "errno" {
            errno = Some(parse_number::<i64>(line, key, value)?);
            continue;
        }
        if key == "public_key" {
            let bytes =
                parse_hex_key(value).ok_or_else(|| invalid(line, key, "not 64 hex digits"))?;
            let k = WireGuardKey::from_bytes(bytes);
            view.peers.entry(k).or_default();
            peer = Some(k);
            continue;
        }
        if let Some(p) = peer.and_then(|k| view.peers.get_mut(&k)) {
            match key {
                "endpoint" => p.endpoint = parse_endpoint(line, key, value).ok(),
                "allowed_ip" => p.allowed.push(parse_subnet(line, key, value)?),
                "persistent_keepalive_interval" => p.keepalive = parse_number(line, key, value)?,
                // Handshake times, byte counts, the PSK of other implementations.
                _ => {}
            }
            continue;
        }
        match key {
            "listen_port" => view.listen_port = parse_number(line, key, value)?,
            "weft_device" => view.device = value.to_string(),
            // A wildcard address is a bind address, unlike an endpoint.
            "weft_bind" => {
                let bind = value.parse().map_err(|_| {
                    invalid(
                        line,
                        key,
                        format!("{} is not an address:port", shown(value)),
                    )
                })?;
                view.bind = Some(bind);
            }
            "weft_public_key" => {
                let bytes =
                    parse_hex_key(value).ok_or_else(|| invalid(line, key, "not 64 hex digits"))?;
                view.public_key = Some(WireGuardKey::from_bytes(bytes));
            }
            "weft_own_subnet" => view.own_subnets.push(parse_subnet(line, key, value)?),
            "weft_offloads" => view.offloads = value.to_string(),
            "weft_offloads_asked" => {
                let asked = value.parse().map_err(|_| {
                    invalid(line, key, format!("{} is not true or false", shown(value)))
                })?;
                view.offloads_asked = Some(asked);
            }
            _ => {
                if let Some(name) = key.strip_prefix("weft_") {
                    view.counters
                        .insert(name.to_string(), parse_number(line, key, value)?);
                }
            }
        }
    }
    match errno {
        Some(0) => Ok(view),
        Some(n) => Err(UapiError::Protocol {
            line: 0,
            reason: format!("errno={n}"),
        }),
        None => Err(UapiError::Protocol {
            line: 0,
            reason: "no errno= line".to_string(),
        }),
    }
}

/// The `errno=` of an answer to a `set=1` (its only line).
pub fn parse_errno(text: &str) -> Result<i64, UapiError> {
    for (i, text) in text.lines().enumerate() {
        let (key, value) = split(i + 1, text)?;
        if key == "errno" {
            return parse_number(i + 1, key, value);
        }
    }
    Err(UapiError::Protocol {
        line: 0,
        reason: "no errno= line".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const KEY_B: &str = "Y2FD6uTgrq+/bbBAXCNOtE+PGk8Papoh7qaWBpQUXn0=";

    fn key(k: &str) -> WireGuardKey {
        WireGuardKey::parse(k).unwrap()
    }

    #[test]
    fn a_set_reads_back_as_written_with_hex_keys() {
        let private = SecretKey::parse(KEY_B).unwrap();
        let mut peer = PeerSet::new(key(KEY_A));
        peer.endpoint = Some("192.0.2.12:51820".parse().unwrap());
        peer.replace_allowed_ips = true;
        peer.allowed = vec!["10.244.2.0/24".parse().unwrap()];
        peer.keepalive = Some(25);
        peer.psk = Some(Some(SecretKey::parse(KEY_A).unwrap()));
        let mut gone = PeerSet::new(key(KEY_B));
        gone.remove = true;
        let req = SetRequest {
            private_key: Some(private),
            listen_port: Some(51820),
            replace_peers: true,
            own_subnets: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:1::/64".parse().unwrap(),
            ],
            peers: vec![peer, gone],
        };
        let text = format_set(&req);
        // The xplatform spelling, hex keys.
        assert!(text.starts_with("set=1\nprivate_key=636143"), "{text}");
        assert!(text.contains("\npublic_key=c5320103"), "{text}");
        assert!(text.contains("\nendpoint=192.0.2.12:51820\n"), "{text}");
        assert!(text.contains("\nallowed_ip=10.244.2.0/24\n"), "{text}");
        assert!(text.contains("\nremove=true\n"), "{text}");
        assert_eq!(parse_request(&text), Ok(Request::Set(req)));
        assert_eq!(parse_request("get=1"), Ok(Request::Get));
    }

    #[test]
    fn a_get_answer_reads_back_as_written() {
        let mut view = DeviceView {
            listen_port: 51820,
            device: "flannel-wg".to_string(),
            bind: Some("[::]:51820".parse().unwrap()),
            public_key: Some(key(KEY_B)),
            own_subnets: vec!["10.244.1.0/24".parse().unwrap()],
            offloads: "tun-tso udp-gso".to_string(),
            offloads_asked: Some(true),
            ..Default::default()
        };
        view.counters.insert("tx_packets".to_string(), 7);
        view.peers.insert(
            key(KEY_A),
            PeerView {
                endpoint: Some("192.0.2.12:51820".parse().unwrap()),
                allowed: vec!["10.244.2.0/24".parse().unwrap()],
                keepalive: 0,
            },
        );
        let text = format!("{}errno=0\n", format_device(&view));
        assert_eq!(parse_device(&text), Ok(view));
        assert!(parse_device("errno=22\n").is_err());
        assert!(parse_device("listen_port=1\n").is_err(), "no errno");
        assert_eq!(parse_errno("errno=0\n"), Ok(0));
    }

    #[test]
    fn hostile_requests_are_refused_with_the_line_and_key_and_never_a_key_value() {
        let peer = format!("public_key={}\n", hex(key(KEY_A).as_bytes()));
        let secret = "zz".repeat(32);
        let cases: Vec<(String, i32, &str)> = vec![
            (String::new(), libc::EPROTO, "empty"),
            ("hello".into(), libc::EPROTO, "neither"),
            ("get=1\nset=1".into(), libc::EPROTO, "after get=1"),
            ("set=1\ngarbage".into(), libc::EPROTO, "not key=value"),
            (
                format!("set=1\nprivate_key={secret}"),
                libc::EINVAL,
                "private_key: not 64 hex",
            ),
            ("set=1\nprivate_key=00".into(), libc::EINVAL, "private_key"),
            (
                "set=1\nlisten_port=70000".into(),
                libc::EINVAL,
                "listen_port",
            ),
            ("set=1\nlisten_port=-1".into(), libc::EINVAL, "listen_port"),
            (
                "set=1\nreplace_peers=yes".into(),
                libc::EINVAL,
                "replace_peers",
            ),
            ("set=1\nfwmark=7".into(), libc::EINVAL, "fwmark"),
            (
                "set=1\nendpoint=192.0.2.1:1".into(),
                libc::EINVAL,
                "device key",
            ),
            ("set=1\npublic_key=xyz".into(), libc::EINVAL, "public_key"),
            (
                format!("set=1\n{peer}endpoint=[2001:db8::1]:0"),
                libc::EINVAL,
                "no address or port",
            ),
            (
                format!("set=1\n{peer}endpoint=0.0.0.0:51820"),
                libc::EINVAL,
                "no address or port",
            ),
            (
                format!("set=1\n{peer}endpoint=nowhere"),
                libc::EINVAL,
                "endpoint",
            ),
            (
                format!("set=1\n{peer}allowed_ip=10.0.0.0/33"),
                libc::EINVAL,
                "allowed_ip",
            ),
            (
                format!("set=1\n{peer}allowed_ip=fd00::/129"),
                libc::EINVAL,
                "allowed_ip",
            ),
            (
                format!("set=1\n{peer}persistent_keepalive_interval=65536"),
                libc::EINVAL,
                "persistent",
            ),
            (
                format!("set=1\n{peer}preshared_key={secret}"),
                libc::EINVAL,
                "preshared_key",
            ),
            (
                format!("set=1\n{peer}protocol_version=2"),
                libc::EINVAL,
                "protocol_version",
            ),
            (
                format!("set=1\n{peer}listen_port=1"),
                libc::EINVAL,
                "peer key",
            ),
            (
                format!("set=1\n{}=1", "k".repeat(5000)),
                libc::EINVAL,
                "device key",
            ),
            (
                "set=1\n\u{0}\u{1}=\u{ff}".into(),
                libc::EINVAL,
                "device key",
            ),
        ];
        for (text, errno, says) in cases {
            let err = parse_request(&text).expect_err(&text);
            assert_eq!(err.errno(), errno, "{text:?}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(says), "{text:?}: {msg}");
            assert!(!msg.contains(&secret), "a key value in the error: {msg}");
            assert!(msg.len() < 300, "error not cut short: {msg}");
        }
    }

    #[test]
    fn allowed_ips_keep_their_network_and_a_zero_psk_is_none() {
        let text = format!(
            "set=1\npublic_key={}\nallowed_ip=10.244.2.7/24\npreshared_key={}",
            hex(key(KEY_A).as_bytes()),
            "0".repeat(64)
        );
        let Ok(Request::Set(req)) = parse_request(&text) else {
            panic!("{text}");
        };
        assert_eq!(req.peers[0].allowed, vec!["10.244.2.0/24".parse().unwrap()]);
        assert_eq!(req.peers[0].psk, Some(None));
    }
}
