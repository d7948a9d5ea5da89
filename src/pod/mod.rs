//! The pod runtime core: images, OCI bundles, the OCI runtime and its shim, pause sandboxes
//! (lower half), and manifests, the per-pod controller, CNI and status (upper half).

pub mod actions;
pub mod backoff;
pub mod bundle;
pub mod cli;
pub mod cni;
pub mod config;
pub mod container_spec;
pub mod controller;
pub mod crilog;
pub mod debug;
pub mod describe;
pub mod downward;
pub mod events;
pub mod exec;
pub mod image;
pub mod image_gc;
pub mod image_source;
pub mod layout;
pub mod lifecycle;
pub mod manifest;
pub mod pod_worker;
pub mod probe;
pub mod process;
pub mod resources;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
pub mod security;
pub mod selector;
pub mod status;
pub mod worker_error;
