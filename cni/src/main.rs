//! `weft`: the CNI plugin wiring pods into a weft (Flannel-compatible) node's bridge.

mod config;
mod env;
mod error;
mod ip;
mod ipam;
mod result;
mod subnet_env;
mod version;

fn main() {}
