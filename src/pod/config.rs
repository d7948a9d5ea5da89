//! The node's pod runtime settings, shared by the controller and the pod workers; weftd's flags
//! map onto it, and its defaults are the layout module's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::backoff::BackoffPolicy;
use super::image_gc::GcPolicy;
use super::layout::{self, PodLayout};

/// Everything the pod runtime needs to know about the node; weftd's flags map onto it.
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// `--pod-manifest-path`: the static pod manifest directory.
    pub manifest_dir: PathBuf,
    /// `--manifest-url`: an `http://` or `https://` URL serving one more Pod manifest
    /// (kubelet's static pod URL).
    pub manifest_url: Option<String>,
    /// `--manifest-url-ca-file`: PEM CA certificates trusted for an `https://` manifest URL,
    /// besides the system's roots.
    pub manifest_url_ca_file: Option<PathBuf>,
    /// How often the manifest URL is fetched (kubelet: 20 s).
    pub manifest_url_interval: Duration,
    /// How long one fetch of the manifest URL may take in all (kubelet: 10 s).
    pub manifest_url_deadline: Duration,
    /// `--cni-conf-dir` (`/etc/cni/net.d`).
    pub cni_conf_dir: PathBuf,
    /// `--cni-bin-dir` (`/opt/cni/bin`), searched in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The CNI result cache root (`/var/lib/cni`).
    pub cni_cache_dir: PathBuf,
    /// `--oci-runtime` (`runc`).
    pub oci_runtime: PathBuf,
    /// `--pod-root` (`/var/lib/weft/pods`), one directory per pod.
    pub pod_root: PathBuf,
    /// `--image-root` (`/var/lib/weft/images`).
    pub image_root: PathBuf,
    /// `--pod-log-dir` (`/var/log/pods`).
    pub pod_log_dir: PathBuf,
    /// `--node-name` (the hostname): `spec.nodeName`.
    pub node_name: String,
    /// The node's address: `status.hostIP`.
    pub host_ip: Option<IpAddr>,
    /// Container restart back-off (10 s doubling to 5 min, reset after 10 min).
    pub backoff: BackoffPolicy,
    /// How often the manifest directory is rescanned.
    pub rescan_interval: Duration,
    /// Image garbage collection thresholds (kubelet's defaults: 85 %, 80 %, 2 min).
    pub image_gc: GcPolicy,
    /// How often image GC measures the image store's filesystem (kubelet: 5 min).
    pub image_gc_interval: Duration,
    /// Containers without a `seccompProfile` run under RuntimeDefault (kubelet's
    /// `--seccomp-default`); `false` leaves them Unconfined, as kubelet does by default.
    pub seccomp_default: bool,
    /// Where `Localhost` seccomp profiles live (kubelet: `/var/lib/kubelet/seccomp`).
    pub seccomp_root: PathBuf,
    /// `pids.max` of every container; `None`: unlimited.
    pub pids_limit: Option<i64>,
    /// The node's `subnet.env`: pods whose address is outside its `FLANNEL_SUBNET` get a new
    /// sandbox (and address) when the node's subnet changes.
    pub subnet_file: Option<PathBuf>,
}

impl PodConfig {
    /// Where this node's pods and logs live on disk.
    pub fn layout(&self) -> PodLayout {
        PodLayout::new(&self.pod_root, &self.pod_log_dir)
    }

    /// A config with the documented defaults for everything but the manifest directory.
    pub fn new(manifest_dir: PathBuf, node_name: String) -> Self {
        PodConfig {
            manifest_dir,
            manifest_url: None,
            manifest_url_ca_file: None,
            manifest_url_interval: Duration::from_secs(20),
            manifest_url_deadline: Duration::from_secs(10),
            cni_conf_dir: layout::DEFAULT_CNI_CONF_DIR.into(),
            cni_bin_dirs: vec![layout::DEFAULT_CNI_BIN_DIR.into()],
            cni_cache_dir: layout::DEFAULT_CNI_CACHE_DIR.into(),
            oci_runtime: layout::DEFAULT_OCI_RUNTIME.into(),
            pod_root: layout::DEFAULT_POD_ROOT.into(),
            image_root: layout::DEFAULT_IMAGE_ROOT.into(),
            pod_log_dir: layout::DEFAULT_POD_LOG_DIR.into(),
            node_name,
            host_ip: None,
            backoff: BackoffPolicy::default(),
            rescan_interval: Duration::from_secs(1),
            image_gc: GcPolicy::default(),
            image_gc_interval: Duration::from_secs(300),
            seccomp_default: true,
            seccomp_root: layout::DEFAULT_SECCOMP_ROOT.into(),
            pids_limit: None,
            subnet_file: None,
        }
    }
}
