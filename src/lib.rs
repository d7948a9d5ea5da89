//! weft: a Flannel-compatible overlay network for pods.
//!
//! The crate is split along Flannel's lines: [`config`], [`subnet`], [`lease`], [`validate`] and
//! [`store`] know the network configuration and etcd and nothing of the kernel; [`backend`] and
//! [`netlink`] know the data path and nothing of etcd; [`daemon`] wires a lease stream into a
//! backend.

pub mod atomic_file;
pub mod backend;
pub mod config;
pub mod daemon;
pub mod docs;
pub mod health;
pub mod http_client;
pub mod lease;
pub mod masq;
pub mod netconf;
pub mod netlink;
pub mod notify;
pub mod pod;
pub mod podview;
pub mod probe;
pub mod status;
pub mod store;
pub mod subnet;
pub mod subnet_env;
pub mod timestamp;
pub mod validate;
pub mod wireguard_key;
