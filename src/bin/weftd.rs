//! `weftd`: the weft node agent.

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use tracing::{error, warn};
use weft::daemon::{self, DaemonOptions};
use weft::notify::ServiceNotifier;
use weft::pod::config::PodConfig;
use weft::pod::layout;

#[path = "flags/etcd.rs"]
mod etcd_flags;
use etcd_flags::EtcdArgs;

/// Node agent of the weft overlay: leases a pod subnet from etcd, programs the overlay and
/// keeps one route, neighbour and FDB entry per peer node in step with etcd.
#[derive(Debug, Parser)]
#[command(name = "weftd", version)]
struct Flags {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Interface (name or IPv4 address) carrying the overlay; default: the default route's.
    #[arg(long, env = "WEFTD_IFACE")]
    iface: Option<String>,
    /// Address published to other nodes; default: the interface's address.
    #[arg(long, env = "WEFTD_PUBLIC_IP")]
    public_ip: Option<Ipv4Addr>,
    /// IPv6 address published to other nodes when the network has IPv6 (Flannel's
    /// --public-ipv6); default: the interface's first routable IPv6 address.
    #[arg(long, env = "WEFTD_PUBLIC_IPV6")]
    public_ipv6: Option<std::net::Ipv6Addr>,
    /// Where to write Flannel's subnet.env.
    #[arg(
        long,
        env = "WEFTD_SUBNET_FILE",
        default_value = "/run/weft/subnet.env"
    )]
    subnet_file: PathBuf,
    /// Directory for everything weftd persists (VTEP MAC, pod state).
    #[arg(long, env = "WEFTD_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// Minutes before expiry at which the subnet lease is renewed.
    #[arg(long, env = "WEFTD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60)]
    subnet_lease_renew_margin: u64,
    /// Masquerade pod traffic leaving the cluster network (nftables).
    #[arg(long, env = "WEFTD_IP_MASQ")]
    ip_masq: bool,
    /// UDP backend: run without offloads (no virtio-net headers on flannel0, no UDP GSO or
    /// GRO), one packet per read and write as Flannel does; for kernels that misbehave with
    /// them, and to rule them out when debugging.
    #[arg(long, env = "WEFTD_NO_UDP_OFFLOADS")]
    no_udp_offloads: bool,
    /// WireGuard backend: `kernel` (the kernel's WireGuard; fails where the kernel has none),
    /// `userspace` (weft's own data path on a TUN device), or `auto`: the kernel's where it
    /// can create a wireguard device, else userspace. The choice is logged.
    #[arg(long, env = "WEFTD_WIREGUARD_DATAPATH", default_value = "auto")]
    wireguard_datapath: weft::backend::wireguard::WireGuardDataPath,
    /// VXLAN and host-gw: route each IPv4 peer through a nexthop object of its own
    /// (`ip route ... nhid N`, N the peer subnet's address as a number) instead of Flannel's
    /// `X/24 via X.0 dev flannel.1 onlink`; much faster to program at thousands of peers, but a
    /// different route shape (off by default). Switching back converts the routes and removes
    /// weft's nexthops.
    #[arg(long, env = "WEFTD_ROUTE_NEXTHOPS")]
    route_nexthops: bool,
    /// Serve /healthz, /readyz and /metrics on this address (off by default).
    #[arg(long, env = "WEFTD_HEALTHZ_ADDR")]
    healthz_addr: Option<SocketAddr>,
    /// Run the static pods whose manifests (v1 Pod, YAML or JSON) are in this directory.
    #[arg(long, env = "WEFTD_POD_MANIFEST_PATH")]
    pod_manifest_path: Option<PathBuf>,
    /// Also run the static pod served at this https:// (or, with a warning, http://) URL
    /// (kubelet's static pod URL), refetched every 20 s.
    #[arg(long, env = "WEFTD_MANIFEST_URL", requires = "pod_manifest_path")]
    manifest_url: Option<String>,
    /// PEM CA certificates trusted for an https:// manifest URL, besides the system's roots.
    #[arg(long, env = "WEFTD_MANIFEST_URL_CA_FILE", requires = "manifest_url")]
    manifest_url_ca_file: Option<PathBuf>,
    /// CNI network configurations; the first `.conflist`/`.conf` by name is used.
    #[arg(long, env = "WEFTD_CNI_CONF_DIR", default_value = layout::DEFAULT_CNI_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// Directories searched for CNI plugins, comma-separated or repeated.
    #[arg(
        long,
        env = "WEFTD_CNI_BIN_DIR",
        default_value = layout::DEFAULT_CNI_BIN_DIR,
        value_delimiter = ','
    )]
    cni_bin_dir: Vec<PathBuf>,
    /// Where cached CNI results are kept (`<dir>/results`).
    #[arg(long, env = "WEFTD_CNI_CACHE_DIR", default_value = layout::DEFAULT_CNI_CACHE_DIR)]
    cni_cache_dir: PathBuf,
    /// OCI runtime for containers (`runc` or `crun`).
    #[arg(long, env = "WEFTD_OCI_RUNTIME", default_value = layout::DEFAULT_OCI_RUNTIME)]
    oci_runtime: PathBuf,
    /// Per-pod state (sandbox, containers, status).
    #[arg(long, env = "WEFTD_POD_ROOT", default_value = layout::DEFAULT_POD_ROOT)]
    pod_root: PathBuf,
    /// Imported images (`weftctl image import`).
    #[arg(long, env = "WEFTD_IMAGE_ROOT", default_value = layout::DEFAULT_IMAGE_ROOT)]
    image_root: PathBuf,
    /// Image GC runs when the image root's filesystem is at least this full (percent;
    /// kubelet's imageGCHighThresholdPercent).
    #[arg(long, env = "WEFTD_IMAGE_GC_HIGH_THRESHOLD", default_value_t = 85,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    image_gc_high_threshold: u8,
    /// Image GC frees unused images down to this usage (percent; imageGCLowThresholdPercent).
    #[arg(long, env = "WEFTD_IMAGE_GC_LOW_THRESHOLD", default_value_t = 80,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: u8,
    /// Images imported more recently than this many seconds are never collected
    /// (imageMinimumGCAge, 2 min).
    #[arg(long, env = "WEFTD_IMAGE_MINIMUM_GC_AGE", default_value_t = 120)]
    image_minimum_gc_age: u64,
    /// Seconds between two measurements of the image root's filesystem by image GC.
    #[arg(long, env = "WEFTD_IMAGE_GC_INTERVAL", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    image_gc_interval: u64,
    /// Container logs: `<dir>/<ns>_<name>_<uid>/<container>/<restartCount>.log`.
    #[arg(long, env = "WEFTD_POD_LOG_DIR", default_value = layout::DEFAULT_POD_LOG_DIR)]
    pod_log_dir: PathBuf,
    /// Run containers without a `seccompProfile` Unconfined instead of under RuntimeDefault
    /// (containerd's default profile), as kubelet does without `--seccomp-default`.
    #[arg(long, env = "WEFTD_NO_SECCOMP_DEFAULT")]
    no_seccomp_default: bool,
    /// Where `seccompProfile: {type: Localhost}` profiles are looked up.
    #[arg(
        long,
        env = "WEFTD_SECCOMP_ROOT",
        default_value = layout::DEFAULT_SECCOMP_ROOT
    )]
    seccomp_root: PathBuf,
    /// Most processes (and threads) each container may have (cgroup pids.max); default: unlimited.
    #[arg(long, env = "WEFTD_PIDS_LIMIT", value_parser = clap::value_parser!(i64).range(1..))]
    pids_limit: Option<i64>,
    /// This node's name (`spec.nodeName`); default: the hostname.
    #[arg(long, env = "WEFTD_NODE_NAME")]
    node_name: Option<String>,
    /// Container restart back-off in milliseconds before the second restart (the first is
    /// immediate); doubles up to the cap.
    #[arg(
        long,
        env = "WEFTD_POD_BACKOFF_BASE_MS",
        default_value_t = 10_000,
        hide = true
    )]
    pod_backoff_base_ms: u64,
    /// Longest container restart back-off in milliseconds.
    #[arg(
        long,
        env = "WEFTD_POD_BACKOFF_CAP_MS",
        default_value_t = 300_000,
        hide = true
    )]
    pod_backoff_cap_ms: u64,
    /// Seconds of the etcd lease attached to the subnet key (Flannel: 24 h); lower only in tests.
    #[arg(
        long,
        env = "WEFTD_SUBNET_LEASE_TTL",
        default_value_t = 86_400,
        hide = true
    )]
    subnet_lease_ttl: u64,
    /// Seconds between full reconciles of the kernel against the lease table weftd keeps from
    /// its etcd watch (no etcd request).
    #[arg(long, env = "WEFTD_RESYNC_INTERVAL", default_value_t = 30)]
    resync_interval: u64,
    /// Mean seconds between safety re-lists of every lease from etcd while the watch runs
    /// (each spread at random over 0.5x to 1.5x, so nodes do not re-list together); a broken or
    /// compacted watch re-lists at once regardless.
    #[arg(long, env = "WEFTD_RELIST_INTERVAL", default_value_t = 1800)]
    relist_interval: u64,
    /// Unix socket (0600) where `weftctl status` asks for the node's status; default:
    /// weftd.sock beside --subnet-file.
    #[arg(long, env = "WEFTD_STATUS_SOCKET")]
    status_socket: Option<PathBuf>,
    /// Seconds between probes of every peer over the overlay (small and full-MTU ICMP echoes
    /// with DF, and one on the underlay), with a diagnosis logged when a pattern matches an MTU
    /// black hole, dropped encapsulation or a stale lease; 0 turns probing off.
    #[arg(long, env = "WEFTD_PEER_PROBE_INTERVAL", default_value_t = 10.0)]
    peer_probe_interval: f64,
    /// Write weftd's man page and shell completions into this directory and exit (package build).
    #[arg(long, hide = true, value_name = "DIR")]
    generate_docs: Option<PathBuf>,
}

impl Flags {
    fn into_options(self) -> DaemonOptions {
        let status_socket = self.status_socket.unwrap_or_else(|| {
            self.subnet_file
                .parent()
                .unwrap_or(std::path::Path::new("/run/weft"))
                .join(weft::status::SOCKET_NAME)
        });
        let pods = self.pod_manifest_path.map(|manifest_dir| {
            let node_name = self.node_name.unwrap_or_else(hostname);
            let mut cfg = PodConfig::new(manifest_dir, node_name);
            cfg.manifest_url = self.manifest_url;
            cfg.manifest_url_ca_file = self.manifest_url_ca_file;
            cfg.cni_conf_dir = self.cni_conf_dir;
            cfg.cni_bin_dirs = self.cni_bin_dir;
            cfg.cni_cache_dir = self.cni_cache_dir;
            cfg.oci_runtime = self.oci_runtime;
            cfg.pod_root = self.pod_root;
            cfg.image_root = self.image_root;
            cfg.image_gc = weft::pod::image_gc::GcPolicy {
                high_percent: self.image_gc_high_threshold,
                low_percent: self
                    .image_gc_low_threshold
                    .min(self.image_gc_high_threshold),
                min_age: std::time::Duration::from_secs(self.image_minimum_gc_age),
            };
            cfg.image_gc_interval = std::time::Duration::from_secs(self.image_gc_interval);
            cfg.pod_log_dir = self.pod_log_dir;
            cfg.seccomp_default = !self.no_seccomp_default;
            cfg.seccomp_root = self.seccomp_root;
            cfg.pids_limit = self.pids_limit;
            cfg.subnet_file = Some(self.subnet_file.clone());
            cfg.backoff.base = Duration::from_millis(self.pod_backoff_base_ms.max(1));
            cfg.backoff.cap =
                Duration::from_millis(self.pod_backoff_cap_ms.max(self.pod_backoff_base_ms));
            cfg
        });
        DaemonOptions {
            pods,
            etcd: self.etcd.options(),
            iface: self.iface,
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
            subnet_file: self.subnet_file,
            state_dir: self.state_dir,
            renew_margin: Duration::from_secs(self.subnet_lease_renew_margin * 60),
            lease_ttl: Duration::from_secs(self.subnet_lease_ttl.max(5)),
            ip_masq: self.ip_masq,
            udp_offloads: !self.no_udp_offloads,
            wireguard_datapath: self.wireguard_datapath,
            route_nexthops: self.route_nexthops,
            healthz_addr: self.healthz_addr,
            resync_interval: Duration::from_secs(self.resync_interval.max(1)),
            relist_interval: Duration::from_secs(self.relist_interval.max(1)),
            notifier: ServiceNotifier::default(),
            status_socket: Some(status_socket),
            probe_interval: (self.peer_probe_interval > 0.0)
                .then(|| Duration::from_secs_f64(self.peer_probe_interval.clamp(0.1, 3600.0))),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == weft::backend::wireguard::control::SUBCOMMAND)
    {
        return run_wireguard_datapath();
    }
    // Before the first thread: the variables leave the environment children inherit.
    let notifier = ServiceNotifier::take_from_env();
    let matches = Flags::command().get_matches();
    let flags = match Flags::from_arg_matches(&matches) {
        Ok(flags) => flags,
        Err(e) => e.exit(),
    };
    if let Some(dir) = &flags.generate_docs {
        return match weft::docs::generate(Flags::command(), "8", dir) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                error!(dir = %dir.display(), error = %e, "write man page and completions");
                ExitCode::FAILURE
            }
        };
    }
    if matches.value_source("etcd_password") == Some(ValueSource::CommandLine) {
        warn!(
            "--etcd-password is visible to every local user in ps and /proc/<pid>/cmdline; \
             use --etcd-password-file (or WEFTD_ETCD_PASSWORD_FILE) instead"
        );
    }
    if flags.subnet_lease_renew_margin * 60 >= flags.subnet_lease_ttl {
        error!(
            margin_minutes = flags.subnet_lease_renew_margin,
            ttl_seconds = flags.subnet_lease_ttl,
            "--subnet-lease-renew-margin must be shorter than the lease's 24 h lifetime"
        );
        return ExitCode::from(2);
    }
    let opts = DaemonOptions {
        notifier,
        ..flags.into_options()
    };
    limit_heap_growth();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(opts, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "weftd stopped");
            ExitCode::FAILURE
        }
    }
}

/// The userspace WireGuard data path process weftd starts for itself (`weftd
/// wireguard-datapath`, hidden): it gets the private key over its socket, never here.
#[derive(Debug, Parser)]
#[command(name = "weftd wireguard-datapath", hide = true)]
struct DataPathFlags {
    /// The control socket to create.
    #[arg(long)]
    socket: PathBuf,
    /// The TUN device to own.
    #[arg(long)]
    device: String,
    /// Underlay address and listen port to bind.
    #[arg(long)]
    bind: std::net::SocketAddr,
    /// Ask the kernel for TUN and UDP offloads.
    #[arg(long, action = clap::ArgAction::Set)]
    offloads: bool,
}

fn run_wireguard_datapath() -> ExitCode {
    let flags = DataPathFlags::parse_from(std::env::args_os().skip(1));
    let args = weft::backend::wireguard::datapath::DataPathArgs {
        socket: flags.socket,
        device: flags.device,
        bind: flags.bind,
        offloads: flags.offloads,
    };
    match weft::backend::wireguard::datapath::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "WireGuard data path stopped");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}

/// The kernel's host name, as kubelet's default node name.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A full pass at thousands of peers allocates large, short-lived buffers (kernel dumps,
/// netlink batches). Give each its own mapping, returned to the system when freed, instead of
/// heap that glibc keeps (its mmap threshold otherwise grows to 32 MiB after the first such
/// buffer is freed), and keep to two arenas for two workers plus the blocking pool.
fn limit_heap_growth() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
