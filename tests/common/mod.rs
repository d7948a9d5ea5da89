//! Integration-test harness: real etcd, real network namespaces, real kernel devices.
//!
//! Every topology lives in network namespaces this harness creates; nothing touches the root
//! namespace and no packet can leave (the underlay bridge has no uplink). Names are unique per
//! test (`weft-<pid>-<counter>-<role>`), so tests run in parallel, and everything is removed on
//! drop, also when the test panics. Namespaces left behind by a test process that was killed
//! (so its destructors never ran) are removed the next time any test creates a namespace.
//!
//! Use it from a test file with `mod common;` and `use common::*;`. One file per fixture
//! (`netns.rs`, `underlay.rs`, `etcd.rs`, `node.rs`, `pod.rs`, `cluster.rs`, `etcd_cluster.rs`,
//! `capture.rs`),
//! the helpers they share in `support.rs`; everything is re-exported here. Images for pod tests
//! are built by `image.rs`, included by the files that need it.
//!
//! # API (kept stable; other test files depend on it)
//!
//! * [`Netns`]: `Netns::new(role)`, `name()`, `path()`, `command(program)`, `exec(&[..]) -> Output`,
//!   `exec_ok(&[..]) -> String`, `spawn(&[..]) -> Child`, `ip(&[..]) -> String` (`ip -n NAME ..`),
//!   `ip_json(&[..]) -> Vec<Value>`, `run(|| ..)` (closure on a thread inside the namespace, e.g. to
//!   open sockets there), `sysctl(key, value)`, `pids()`.
//! * [`Underlay`]: a namespace with bridge `br0` for 192.0.2.0/24; `attach(&Netns, "192.0.2.N")`
//!   gives the namespace an `eth0` on the bridge.
//! * [`Etcd`]: a real etcd at [`Etcd::IP`] on the underlay (`Etcd::new_tls` for TLS with client
//!   certificates towards the nodes); `endpoint()`, `put`, `put_with_ttl`,
//!   `get`, `get_kv`, `get_prefix`, `del`, `revision`, `compact`, `stop`, `start`, `etcdctl`, `log`.
//! * [`Node`]: a namespace on the underlay at 192.0.2.(10+index) with `net.ipv4.ip_forward=1`;
//!   `start_weftd(&[extra args])`, `start_weftd_env`, `kill9`, `stop`, `restart`, `is_running`, `weftd_pid`, `log`, `subnet_env`,
//!   `wait_subnet_env`, `subnet`, `lease_key`, `wait_until`, `wait_for`, `routes`, `neighbours`,
//!   `fdb`, `link`, `http_get` (healthz server at 127.0.0.1:[`Node::HEALTHZ_PORT`]), `add_pod`,
//!   `add_pod_in`.
//! * [`Pod`]: a namespace wired by hand to the node's `cni0` bridge; `ip()`, `netns()`, `exec`,
//!   `tcp_check(&other) -> bool`, `traffic_probe(&other) -> TrafficProbe` (numbered UDP
//!   datagrams echoed back, counting the lost ones, for "pod traffic never stops" tests),
//!   `tiny_mss_transfer(&other, bytes, mss) -> TinyMssTransfer` (TCP to a listener advertising
//!   a tiny MSS, so the overlay sees super-packets of hundreds of segments; `assert_whole`).
//! * [`Cluster`]: `Cluster::new(n_nodes, config_json)` (underlay + etcd + config at
//!   [`NETWORK_CONFIG_KEY`] + n nodes, weftd not yet running), `start()` (weftd everywhere, waits
//!   for every subnet.env), `add_node()`, `wait_mesh(timeout)`, `node(i)`, `switch_backend(config, type, programmed, a, b)`, `dump()`.
//! * [`EtcdCluster`]: `EtcdCluster::new(&underlay, 3)`, a real etcd cluster, member `i` in its own
//!   namespace at 192.0.2.(251+i); `endpoints()` (comma-separated, for `--etcd-endpoints`),
//!   `member(i)` ([`EtcdMember`]: `ip`, `netns`, `is_running`, `metric(name)` from `/metrics`),
//!   `leader`, `wait_leader`, `move_leader(i)`, `kill(i)`, `kill_all`, `start(i)`, `start_all`,
//!   `partition(i)`/`heal(i)` (nftables drop in the member's namespace), `put`, `get`, `etcdctl`.
//! * [`Capture`]: `Capture::start(&underlay, pcap_filter)`, a `tcpdump` on the underlay's
//!   bridge ports; `finish() -> (raw pcap bytes, one text line per packet)`; [`etcd_ip`].
//! * Free functions: [`unique_name`], [`wait_for`], [`wait_until`], [`bin_path`], [`lease_key`],
//!   [`subnet_of`], [`vxlan_lease_value`], [`flannel_vxlan_lease_value`], [`expected_subnet_env`], [`tcp_source_seen`],
//!   [`wire_pod`], [`cleanup_stale`], [`nft_apply`].
//!
//! Panics are the error reporting of this module: every failure names the command, the
//! namespace and the output, and node/etcd logs are printed when a test fails.

#![allow(dead_code)] // each tests/*.rs uses a different part of this shared harness

mod capture;
mod cluster;
mod etcd;
mod etcd_cluster;
mod netns;
mod node;
mod pod;
mod support;
mod underlay;

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use capture::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use etcd::*;
#[allow(unused_imports)]
pub use etcd_cluster::*;
#[allow(unused_imports)]
pub use netns::*;
#[allow(unused_imports)]
pub use node::*;
#[allow(unused_imports)]
pub use pod::*;
#[allow(unused_imports)]
pub use support::*;
#[allow(unused_imports)]
pub use underlay::*;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use ipnetwork::Ipv4Network;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

/// etcd key prefix weftd uses by default (Flannel's).
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// etcd key of the network config.
pub const NETWORK_CONFIG_KEY: &str = "/coreos.com/network/config";
/// A plain VXLAN network config for 10.244.0.0/16. Nodes lease only from 10.244.100.0/24 to
/// 10.244.199.0/24 (`SubnetMin`/`SubnetMax`), so a fake lease a test puts outside that range
/// (a bad key, a sentinel peer) can never land on a real node's own subnet by chance.
pub const VXLAN_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","Backend":{"Type":"vxlan"}}"#;
