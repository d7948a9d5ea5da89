//! `weftctl`: the operator CLI. One subcommand per concern; each is an enum variant of
//! [`Command`] with its own argument struct and one `async fn` that runs it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::stream::{self, StreamExt, TryStreamExt};
use ipnetwork::{Ipv4Network, Ipv6Network};
use weft::config::NetworkConfig;
use weft::lease::{subnets_prefix, LeaseAttrs, RawLease};
use weft::netconf::{self, ConfigChange};
use weft::podview::{self, PodSummary};
use weft::probe::PeerHealth;
use weft::status::{rfc3339_utc, MacText, NodeStatus, PeerStatus};
use weft::store::{EtcdStore, StoreError};

#[path = "flags/etcd.rs"]
mod etcd_flags;
use etcd_flags::EtcdArgs;
use weft::subnet::parse_dual_subnet_key;
use weft::validate::{validate_leases, LeasePolicy, NodeIdentity};

#[path = "weftctl/image.rs"]
mod image;

/// How many lease TTL lookups run at once.
const TTL_LOOKUPS_IN_FLIGHT: usize = 64;

#[derive(Debug, Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Inspect and operate a weft cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the cluster's subnet leases (subnet, public IP, backend, VTEP MAC, expiry) and
    /// whether each passes validation against the network config (and why not).
    Leases(LeasesArgs),
    /// Import images into the node's image store, list, remove and prune them.
    Image(image::ImageArgs),
    /// List the node's static pods like `kubectl get pods -o wide` (`-o json`: a v1 PodList);
    /// `-A`: every node's pods, from etcd.
    Pods(PodsCommand),
    /// Print a pod container's log (`-c CONTAINER`, `--previous`).
    Logs(LogsArgs),
    /// Run a command in a running container of a pod on this node, like `kubectl exec`:
    /// `weftctl exec POD [-c CONTAINER] [-i] [-t] -- COMMAND [ARG...]`. The command's exit
    /// code is weftctl's.
    Exec(ExecArgs),
    /// Run an ephemeral debug container in a pod on this node, like `kubectl debug --image`:
    /// it joins the pod's network, IPC and UTS namespaces (and `--target`'s PID namespace),
    /// prints its output, is removed when it exits, and its exit code is weftctl's.
    Debug(DebugArgs),
    /// Show a pod on this node like `kubectl describe pod`: labels, annotations, node, IP, QoS
    /// class, containers (state, last state, restarts, probes, mounts) and the pod's events.
    Describe(DescribeArgs),
    /// Read, check and change the network config in etcd (`<prefix>/config`).
    Network(NetworkArgs),
    /// This node's weftd: lease and expiry, backend, readiness, peers, last reconcile.
    Status(StatusArgs),
    /// Write weftctl's man pages and shell completions into DIR (package build).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory.
        dir: PathBuf,
    },
}

/// The on-disk locations shared by weftd's pod runtime and weftctl.
#[derive(Debug, Clone, Args)]
struct PodPaths {
    /// Per-pod state and status directories.
    #[arg(long, env = "WEFTD_POD_ROOT", default_value = weft::pod::layout::DEFAULT_POD_ROOT)]
    pod_root: PathBuf,
    /// The image store.
    #[arg(long, env = "WEFTD_IMAGE_ROOT", default_value = weft::pod::layout::DEFAULT_IMAGE_ROOT)]
    image_root: PathBuf,
    /// Container logs (`<dir>/<ns>_<name>_<uid>/<container>/<restart>.log`).
    #[arg(long, env = "WEFTD_POD_LOG_DIR", default_value = weft::pod::layout::DEFAULT_POD_LOG_DIR)]
    pod_log_dir: PathBuf,
}

/// `weftctl pods [-o json|wide]`.
#[derive(Debug, Clone, Args)]
struct PodsArgs {
    /// Where the node keeps pods.
    #[command(flatten)]
    paths: PodPaths,
    /// Output format: `wide` (the default table) or `json` (a v1 PodList).
    #[arg(short = 'o', long = "output", default_value = "wide")]
    output: String,
    /// Only pods whose labels match, as `kubectl -l`: `app=web`, `app==web`, `tier!=db`,
    /// `env in (prod,qa)`, `env notin (dev)`, `app` (present), `!canary` (absent), joined by `,`.
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    /// Add a LABELS column (`key=value,...`).
    #[arg(long = "show-labels")]
    show_labels: bool,
}

/// `weftctl logs POD [-c CONTAINER] [--previous]`.
#[derive(Debug, Clone, Args)]
struct LogsArgs {
    /// Where the node keeps pods.
    #[command(flatten)]
    paths: PodPaths,
    /// The pod: `NAME` (namespace from `-n`) or `NAMESPACE/NAME`.
    pod: String,
    /// The container; may be omitted when the pod has a single app container.
    #[arg(short = 'c', long = "container")]
    container: Option<String>,
    /// The pod's namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    /// Print the previous run's log (the one before the last restart).
    #[arg(short = 'p', long = "previous")]
    previous: bool,
}

impl LogsArgs {
    fn request(self) -> weft::pod::cli::LogsRequest {
        weft::pod::cli::LogsRequest {
            pod_root: self.paths.pod_root,
            pod_log_dir: self.paths.pod_log_dir,
            pod: self.pod,
            container: self.container,
            namespace: self.namespace,
            previous: self.previous,
        }
    }
}

#[derive(Debug, Args)]
struct PodsCommand {
    #[command(flatten)]
    local: PodsArgs,
    /// Every node's pods in every namespace, as published in etcd (`<prefix>/pods/`).
    #[arg(short = 'A', long = "all-namespaces")]
    all: bool,
    #[command(flatten)]
    etcd: EtcdArgs,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// Where the node keeps pods.
    #[command(flatten)]
    paths: PodPaths,
    /// The pod: `NAME` (namespace from `-n`) or `NAMESPACE/NAME`.
    pod: String,
    /// The container (default: the pod's first app container).
    #[arg(short = 'c', long = "container")]
    container: Option<String>,
    /// The pod's namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    /// Pass stdin to the command (without it the command reads an empty input).
    #[arg(short = 'i', long = "stdin")]
    stdin: bool,
    /// Give the command a terminal (needs one on weftctl's stdin, as `kubectl exec -t`).
    #[arg(short = 't', long = "tty")]
    tty: bool,
    /// The OCI runtime weftd runs containers with (weftd's --oci-runtime).
    #[arg(long, env = "WEFTD_OCI_RUNTIME", default_value = "runc")]
    oci_runtime: PathBuf,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct DebugArgs {
    /// Where the node keeps pods and images.
    #[command(flatten)]
    paths: PodPaths,
    /// The pod: `NAME` (namespace from `-n`) or `NAMESPACE/NAME`.
    pod: String,
    /// The debug container's image (imported with `weftctl image import`).
    #[arg(long)]
    image: String,
    /// A container whose PID namespace the debug container joins (its processes become visible).
    #[arg(long)]
    target: Option<String>,
    /// The pod's namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    /// The OCI runtime weftd runs containers with (weftd's --oci-runtime).
    #[arg(long, env = "WEFTD_OCI_RUNTIME", default_value = "runc")]
    oci_runtime: PathBuf,
    /// The command and its arguments, after `--` (default: the image's).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct DescribeArgs {
    /// Where the node keeps pods.
    #[command(flatten)]
    paths: PodPaths,
    /// The kind of object: `pod` (also `pods`, `po`).
    #[arg(value_parser = ["pod", "pods", "po"])]
    kind: String,
    /// The pod: `NAME` (namespace from `-n`) or `NAMESPACE/NAME`.
    pod: String,
    /// The pod's namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// weftd's status socket (weftd's --status-socket).
    #[arg(
        long,
        env = "WEFTD_STATUS_SOCKET",
        default_value = "/run/weft/weftd.sock"
    )]
    socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Args)]
struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
    /// Print the stored config (`--effective`: every field with Flannel's defaults filled in).
    Get {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print the effective values instead of the stored JSON.
        #[arg(long)]
        effective: bool,
    },
    /// Check a config file (`-` for stdin) with the rules weftd applies; prints its effective values.
    Validate {
        /// The JSON file.
        file: PathBuf,
    },
    /// Validate a config file (`-` for stdin), show the change, and store it. Refuses a change
    /// that leaves existing leases outside the new range unless `--force`.
    Set {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The JSON file.
        file: PathBuf,
        /// Store it even though existing leases would be orphaned.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct LeasesArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// An aligned table for people.
    Table,
    /// A JSON array for scripts.
    Json,
}

/// A failed `weftctl` command.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Image(#[from] weft::pod::image::ImageError),
    #[error("{0}")]
    ImageGc(#[from] weft::pod::image_gc::GcError),
    #[error("{0}")]
    Pods(#[from] weft::pod::cli::CliError),
    #[error("{0}")]
    Exec(#[from] weft::pod::exec::ExecError),
    #[error("{0}")]
    Debug(#[from] weft::pod::debug::DebugError),
    #[error("run {runtime}: {source}")]
    Spawn {
        runtime: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    InvalidConfig(#[from] weft::netconf::InvalidConfig),
    #[error("read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write man pages and completions to {dir}: {source}")]
    WriteDocs {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Status(#[from] weft::status::StatusError),
    #[error("no network config at {0}")]
    NoConfig(String),
    #[error("refusing to store the new config: it would orphan {0} lease(s) listed above; --force stores it anyway")]
    WouldOrphan(usize),
}

/// One row of `weftctl leases`; also its JSON object.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct LeaseRow {
    /// The subnet, or the key's last part when it is not a subnet.
    subnet: String,
    /// `None` when the value is not a lease.
    #[serde(rename = "publicIP")]
    public_ip: Option<Ipv4Addr>,
    backend_type: String,
    #[serde(rename = "vtepMAC")]
    vtep_mac: Option<String>,
    backend_data: Option<serde_json::Value>,
    /// The etcd lease id in hex, as `etcdctl lease list` prints it; `None` for a reservation.
    etcd_lease: Option<String>,
    reserved: bool,
    /// RFC 3339 UTC; `None` for a reservation or an expired etcd lease.
    expires: Option<String>,
    /// Why nodes refuse the lease (validation against the network config); `None` when it is
    /// accepted.
    rejected: Option<String>,
    /// The kind of rejection, as in weftd's `weft_leases_rejected_total{reason}`.
    reject_reason: Option<&'static str>,
    /// Whether the lease was validated (there is a valid network config to judge it by).
    #[serde(skip)]
    checked: bool,
}

/// A peer's subnets as the tables show them: dual stack both (`10.244.4.0/24,fd00:10:244:4::/64`),
/// IPv6-only (IPv4 part `0.0.0.0/0`) the IPv6 one.
fn subnets_text(v4: Ipv4Network, v6: Option<Ipv6Network>) -> String {
    match v6 {
        Some(v6) if v4.prefix() == 0 => v6.to_string(),
        Some(v6) => format!("{v4},{v6}"),
        None => v4.to_string(),
    }
}

/// The HEALTH cell of one probe: its diagnosis, `-` before the first.
fn diagnosis_text(h: Option<&PeerHealth>) -> String {
    h.map_or_else(|| "-".to_string(), |h| h.diagnosis.as_str().to_string())
}

/// The PATH MTU cell of one probe.
fn path_mtu_text(h: Option<&PeerHealth>) -> String {
    match h.map(|h| (h.path_mtu, h.path_mtu_below)) {
        Some((Some(mtu), _)) => mtu.to_string(),
        Some((None, Some(below))) => format!("<{below}"),
        _ => "-".to_string(),
    }
}

/// A peer's public addresses as the status table shows them: `PublicIP`, `PublicIP,PublicIPv6`
/// for a dual-stack peer with both, `PublicIPv6` alone for an IPv6-only peer.
fn public_ips_text(p: &PeerStatus) -> String {
    match p.public_ipv6 {
        Some(v6) if p.subnet.prefix() == 0 => v6.to_string(),
        Some(v6) => format!("{},{v6}", p.public_ip),
        None => p.public_ip.to_string(),
    }
}

impl LeaseRow {
    /// A row for whatever a key holds: as much as parses, empty cells for the rest.
    fn from_raw(prefix: &str, raw: &RawLease, expires: Option<SystemTime>) -> LeaseRow {
        let name = raw
            .key
            .strip_prefix(&subnets_prefix(prefix))
            .unwrap_or(&raw.key);
        let attrs = LeaseAttrs::from_json(&raw.key, &raw.value).ok();
        LeaseRow {
            subnet: parse_dual_subnet_key(name)
                .map_or_else(|_| name.to_string(), |d| subnets_text(d.v4, d.v6)),
            public_ip: attrs.as_ref().map(|a| a.public_ip),
            backend_type: attrs
                .as_ref()
                .map(|a| a.backend_type.clone())
                .unwrap_or_default(),
            vtep_mac: attrs
                .as_ref()
                .and_then(|a| a.vtep_mac().map(str::to_string)),
            backend_data: attrs.and_then(|a| a.backend_data),
            etcd_lease: (raw.etcd_lease != 0).then(|| format!("{:x}", raw.etcd_lease)),
            reserved: raw.etcd_lease == 0,
            expires: expires.map(rfc3339_utc),
            rejected: None,
            reject_reason: None,
            checked: false,
        }
    }

    fn status_cell(&self) -> String {
        match (&self.rejected, self.checked) {
            (Some(why), _) => format!("rejected: {why}"),
            (None, true) => "ok".to_string(),
            (None, false) => "unchecked".to_string(),
        }
    }

    fn expires_cell(&self) -> &str {
        match (&self.expires, self.reserved) {
            (_, true) => "reserved",
            (Some(t), false) => t,
            (None, false) => "expired",
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let direct = match &cli.command {
        Command::Exec(args) => Some(exec(args)),
        Command::Debug(args) => Some(debug(args)),
        _ => None,
    };
    if let Some(result) = direct {
        return result.unwrap_or_else(|e| {
            eprintln!("weftctl: {e}");
            ExitCode::FAILURE
        });
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    match cli.command {
        Command::Leases(args) => leases(args).await,
        Command::Image(args) => Ok(image::run(&args, &mut std::io::stdout())?),
        Command::Pods(args) if args.all => cluster_pods(&args).await,
        Command::Pods(args) => Ok(weft::pod::cli::pods(
            &args.local.paths.pod_root,
            &args.local.output,
            args.local.selector.as_deref(),
            args.local.show_labels,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )?),
        Command::Logs(args) => Ok(weft::pod::cli::logs(
            &args.request(),
            &mut std::io::stdout(),
        )?),
        Command::Exec(args) => exec(&args).map(|_| ()),
        Command::Debug(args) => debug(&args).map(|_| ()),
        Command::Describe(args) => describe(&args),
        Command::Network(args) => network(args.command).await,
        Command::Status(args) => {
            let status = weft::status::fetch(&args.socket)?;
            match args.output {
                Output::Table => print!("{}", render_status(&status, SystemTime::now())),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
            }
            Ok(())
        }
        Command::GenerateDocs { dir } => {
            weft::docs::generate(<Cli as clap::CommandFactory>::command(), "8", &dir)
                .map_err(|source| CtlError::WriteDocs { dir, source })?;
            Ok(())
        }
    }
}

async fn network(command: NetworkCommand) -> Result<(), CtlError> {
    match command {
        NetworkCommand::Get { etcd, effective } => {
            let store = EtcdStore::connect(&etcd.options()).await?;
            let key = weft::lease::config_key(store.prefix());
            let stored = netconf::read(&store)
                .await?
                .ok_or_else(|| CtlError::NoConfig(key.clone()))?;
            if effective {
                let cfg = netconf::validate(&key, &stored.raw)?;
                print!("{}", render_fields(&cfg));
            } else {
                println!("{}", stored.raw.trim_end());
            }
            Ok(())
        }
        NetworkCommand::Validate { file } => {
            let (origin, raw) = read_input(&file)?;
            let cfg = netconf::validate(&origin, &raw)?;
            println!("{origin}: valid");
            print!("{}", render_fields(&cfg));
            Ok(())
        }
        NetworkCommand::Set { etcd, file, force } => {
            let (origin, raw) = read_input(&file)?;
            let new = netconf::validate(&origin, &raw)?;
            let store = EtcdStore::connect(&etcd.options()).await?;
            let key = weft::lease::config_key(store.prefix());
            let stored = netconf::read(&store).await?;
            let old = stored
                .as_ref()
                .and_then(|s| match NetworkConfig::parse(&s.raw) {
                    Ok(cfg) => Some(cfg),
                    Err(e) => {
                        eprintln!(
                            "weftctl: the stored config at {key} is invalid ({e}); replacing it"
                        );
                        None
                    }
                });
            let leases = store.list_leases().await?.leases;
            let change = ConfigChange::new(old, new, &leases);
            if change.is_noop() && stored.as_ref().is_some_and(|s| s.raw.trim() == raw.trim()) {
                println!("{key}: unchanged");
                return Ok(());
            }
            println!("--- {key}\n+++ {origin}");
            print!("{}", change.diff());
            if change.changes_backend() {
                println!("note: every node switches its data path to {} (pods on nodes with different backends cannot talk meanwhile)", change.new.backend.type_name());
            }
            if !change.orphaned.is_empty() {
                println!("leases outside the new range ({}):", change.orphaned.len());
                for lease in &change.orphaned {
                    let kind = if lease.is_reservation() {
                        "reservation"
                    } else {
                        "lease"
                    };
                    println!("  {}  {}  {kind}", lease.subnet, lease.attrs.public_ip);
                }
                if !force {
                    return Err(CtlError::WouldOrphan(change.orphaned.len()));
                }
            }
            netconf::write(&store, raw.trim(), stored.as_ref()).await?;
            println!("{key}: stored");
            Ok(())
        }
    }
}

/// `weftctl exec`: the OCI runtime's `exec` in the container, its exit code passed through.
fn exec(args: &ExecArgs) -> Result<ExitCode, CtlError> {
    use std::io::IsTerminal;
    use std::process::Stdio;
    let layout = weft::pod::layout::PodLayout::new(&args.paths.pod_root, &args.paths.pod_log_dir);
    let target = weft::pod::exec::resolve(
        &layout,
        &args.pod,
        &args.namespace,
        args.container.as_deref(),
    )?;
    // As kubectl: a terminal is only given when there is one to drive it.
    let tty = args.tty && std::io::stdin().is_terminal();
    if args.tty && !tty {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
    }
    let argv = weft::pod::exec::runtime_args(&target, tty, &args.command)?;
    let stdin = if args.stdin || tty {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    let status = std::process::Command::new(&args.oci_runtime)
        .args(argv)
        .stdin(stdin)
        .status()
        .map_err(|source| CtlError::Spawn {
            runtime: args.oci_runtime.clone(),
            source,
        })?;
    // A command killed by a signal exits 128+signal, as a shell reports it.
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `weftctl debug`: the debug container's output, its exit code passed through.
fn debug(args: &DebugArgs) -> Result<ExitCode, CtlError> {
    let layout = weft::pod::layout::PodLayout::new(&args.paths.pod_root, &args.paths.pod_log_dir);
    let images = weft::pod::image::ImageStore::open(&args.paths.image_root)?;
    let req = weft::pod::debug::DebugRequest {
        pod: args.pod.clone(),
        namespace: args.namespace.clone(),
        image: args.image.clone(),
        target: args.target.clone(),
        command: args.command.clone(),
    };
    let code = weft::pod::debug::run(
        &layout,
        &images,
        &args.oci_runtime.to_string_lossy(),
        &req,
        &mut std::io::stdout(),
    )?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `weftctl describe pod`: the pod's record and events as kubectl describes a pod.
fn describe(args: &DescribeArgs) -> Result<(), CtlError> {
    use weft::pod::exec::{find_pod, pod_ref, ExecError};
    let layout = weft::pod::layout::PodLayout::new(&args.paths.pod_root, &args.paths.pod_log_dir);
    let (ns, name) = pod_ref(&args.pod, &args.namespace)?;
    let pods = weft::pod::cli::read_pods(layout.pod_root())?;
    let rec = find_pod(&pods, &layout, ns, name)?;
    let id =
        weft::pod::layout::PodId::new(ns, name, &rec.pod.metadata.uid).map_err(ExecError::from)?;
    let events = weft::pod::events::read(&layout.events(&id));
    print!(
        "{}",
        weft::pod::describe::describe_pod(rec, &events, SystemTime::now())
    );
    Ok(())
}

/// `weftctl pods -A`: every node's published pods.
async fn cluster_pods(args: &PodsCommand) -> Result<(), CtlError> {
    let store = EtcdStore::connect(&args.etcd.options()).await?;
    let selector = weft::pod::selector::parse(args.local.selector.as_deref().unwrap_or(""))
        .map_err(weft::pod::cli::CliError::from)?;
    let (mut pods, errors) = podview::list_cluster(&store).await?;
    pods.retain(|p| selector.matches(&p.labels));
    for e in &errors {
        eprintln!("weftctl: skipping {}", podview::printable(&e.to_string()));
    }
    match args.local.output.as_str() {
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&pods).unwrap_or_else(|_| "[]".to_string())
        ),
        _ if pods.is_empty() => eprintln!("No pods found."),
        _ => print!(
            "{}",
            render_cluster_pods(&pods, SystemTime::now(), args.local.show_labels)
        ),
    }
    Ok(())
}

/// `kubectl get pods -A -o wide`'s columns (and LABELS when `show_labels`), text made safe for
/// a terminal.
fn render_cluster_pods(pods: &[PodSummary], now: SystemTime, show_labels: bool) -> String {
    let none = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            podview::printable(s)
        }
    };
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            let age = p
                .created
                .as_deref()
                .and_then(weft::pod::status::parse_rfc3339)
                .and_then(|t| now.duration_since(t).ok())
                .map_or_else(
                    || "<unknown>".to_string(),
                    weft::pod::status::human_duration,
                );
            let mut row = vec![
                podview::printable(&p.namespace),
                podview::printable(&p.name),
                podview::printable(&p.ready),
                podview::printable(&p.status),
                p.restarts.to_string(),
                age,
                none(&p.pod_ip),
                podview::printable(&p.node),
            ];
            if show_labels {
                row.push(podview::printable(&weft::pod::cli::labels_cell(&p.labels)));
            }
            row
        })
        .collect();
    let mut header = vec![
        "NAMESPACE",
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
    ];
    if show_labels {
        header.push("LABELS");
    }
    render_columns(&header, &rows)
}

/// The text of `file`, `-` meaning stdin; with the name errors should give.
fn read_input(file: &Path) -> Result<(String, String), CtlError> {
    let read = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    let origin = if file == Path::new("-") {
        "stdin".to_string()
    } else {
        file.display().to_string()
    };
    read.map(|raw| (origin, raw))
        .map_err(|source| CtlError::ReadFile {
            path: file.to_path_buf(),
            source,
        })
}

fn render_fields(cfg: &NetworkConfig) -> String {
    netconf::effective_fields(cfg)
        .into_iter()
        .map(|(field, value)| format!("{field}: {value}\n"))
        .collect()
}

async fn leases(args: LeasesArgs) -> Result<(), CtlError> {
    let store = EtcdStore::connect(&args.etcd.options()).await?;
    let snapshot = store.list_network().await?;
    // Judged as any node judges them, minus what only a node knows (its own addresses and MAC).
    let policy = match snapshot.config.as_deref().map(NetworkConfig::parse) {
        Some(Ok(config)) => Some(LeasePolicy {
            prefix: store.prefix().to_string(),
            config,
            node: NodeIdentity::default(),
        }),
        Some(Err(e)) => {
            eprintln!("weftctl: leases are not validated: {e}");
            None
        }
        None => {
            eprintln!("weftctl: leases are not validated: no network config in etcd");
            None
        }
    };
    let rejected: std::collections::HashMap<String, _> = policy
        .as_ref()
        .map(|p| validate_leases(p, &snapshot.leases).rejected)
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.key.clone(), r.reason))
        .collect();
    let mut raws = snapshot.leases;
    raws.sort_by(|a, b| a.key.cmp(&b.key));
    let prefix = store.prefix().to_string();
    let mut rows: Vec<LeaseRow> = stream::iter(raws.iter())
        .map(|raw| {
            let store = store.clone();
            let prefix = prefix.clone();
            async move {
                let expires = match raw.etcd_lease {
                    0 => None,
                    id => store.lease_expiry(id).await?,
                };
                Ok::<_, StoreError>(LeaseRow::from_raw(&prefix, raw, expires))
            }
        })
        .buffered(TTL_LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await?;
    for (row, raw) in rows.iter_mut().zip(&raws) {
        row.checked = policy.is_some();
        if let Some(reason) = rejected.get(&raw.key) {
            row.rejected = Some(reason.to_string());
            row.reject_reason = Some(reason.label());
        }
    }
    rows.sort_by_key(|r| (r.subnet.parse::<Ipv4Network>().ok(), r.subnet.clone()));
    match args.output {
        Output::Table => print!("{}", render_table(&rows)),
        Output::Json => println!("{}", render_json(&rows)),
    }
    Ok(())
}

/// `weftctl status` for people: the node, then one row per peer.
fn render_status(s: &NodeStatus, now: SystemTime) -> String {
    let mut out = String::new();
    let dash = || "-".to_string();
    let node = match (&s.public_ip, &s.interface) {
        (Some(ip), Some(iface)) => format!("{ip} on {iface}"),
        _ => dash(),
    };
    let ready = if s.ready {
        "yes".to_string()
    } else {
        format!("no ({})", s.phase)
    };
    let lease = s
        .lease
        .as_ref()
        .map_or_else(dash, |l| match l.expires_unix {
            Some(t) => {
                let at = UNIX_EPOCH + Duration::from_secs(t);
                let left = at.duration_since(now).map_or("expired".to_string(), |d| {
                    format!("in {}", human_duration(d))
                });
                format!("{}, expires {} ({left})", l.subnet, rfc3339_utc(at))
            }
            None => format!("{}, reservation (never expires)", l.subnet),
        });
    let backend = s.backend.as_ref().map_or_else(dash, |b| {
        format!("{}, device {}, pod MTU {}", b.kind, b.device, b.mtu)
    });
    let reconcile = s.last_reconcile.as_ref().map_or_else(dash, |r| {
        let at = UNIX_EPOCH + Duration::from_secs(r.at_unix);
        let outcome = match &r.error {
            Some(e) => format!("failed: {e}"),
            None => format!(
                "{} added, {} stale removed, {} refused by the kernel",
                r.added, r.removed, r.failed
            ),
        };
        format!(
            "{} ({:.1} ms): {outcome}",
            rfc3339_utc(at),
            r.took_seconds * 1e3
        )
    });
    for (label, value) in [
        ("Node", node),
        ("Version", s.version.clone()),
        ("Ready", ready),
        ("Lease", lease),
        ("Backend", backend),
        (
            "Offloads",
            s.backend
                .as_ref()
                .map_or_else(dash, |b| non_empty(&b.offloads)),
        ),
        ("Last reconcile", reconcile),
    ] {
        out.push_str(&format!("{:<16}{value}\n", format!("{label}:")));
    }
    // Entries the kernel held that no lease justified: someone else's routes, or weft's own
    // from a peer that left while weftd was down.
    if let Some(stale) = &s.last_stale {
        let at = rfc3339_utc(UNIX_EPOCH + Duration::from_secs(stale.at_unix));
        out.push_str(&format!(
            "{:<16}{} at {at}:\n",
            "Stale removed:", stale.found
        ));
        for e in &stale.entries {
            out.push_str(&format!("{:<16}{} {}\n", "", e.kind, e.destination));
        }
        if stale.found > stale.entries.len() {
            out.push_str(&format!(
                "{:<16}and {} more\n",
                "",
                stale.found - stale.entries.len()
            ));
        }
    }
    out.push_str(&format!("Peers ({}):\n", s.peers.len()));
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            // A dual-stack peer's IPv6 probe is shown after its IPv4 one where they differ.
            let both = |text: fn(Option<&PeerHealth>) -> String| {
                let v4 = text(p.health.as_ref());
                match p.health6.as_deref().map(|h| text(Some(h))) {
                    Some(v6) if v6 != v4 => format!("{v4},{v6}"),
                    _ => v4,
                }
            };
            vec![
                subnets_text(p.subnet, p.subnet6),
                public_ips_text(p),
                p.backend_type.to_string(),
                p.vtep_mac.as_ref().map_or_else(dash, MacText::to_string),
                p.state.as_str().to_string(),
                both(diagnosis_text),
                p.health
                    .as_ref()
                    .or(p.health6.as_deref())
                    .and_then(|h| h.rtt_seconds)
                    .map_or_else(dash, |rtt| format!("{:.2}ms", rtt * 1e3)),
                both(path_mtu_text),
            ]
        })
        .collect();
    out.push_str(&render_columns(
        &[
            "SUBNET",
            "PUBLIC IP",
            "BACKEND",
            "VTEP MAC",
            "STATE",
            "HEALTH",
            "RTT",
            "PATH MTU",
        ],
        &rows,
    ));
    if !s.rejected.is_empty() {
        // Rejected by validation (not believed) or refused by the route guard (valid, but
        // its route would cut this node off): never programmed, each with why.
        out.push_str(&format!("Not programmed ({}):\n", s.rejected.len()));
        let rows: Vec<Vec<String>> = s
            .rejected
            .iter()
            .map(|r| {
                vec![
                    r.subnet.clone().unwrap_or_else(|| r.key.clone()),
                    r.by.as_str().to_string(),
                    r.reason.clone(),
                    r.why.clone(),
                ]
            })
            .collect();
        out.push_str(&render_columns(
            &["SUBNET", "STATE", "REASON", "WHY"],
            &rows,
        ));
    }
    out
}

/// The text, or `-` when an older weftd sent none.
fn non_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

/// `1d2h`, `3h4m`, `5m6s`, `7s`: the two largest units.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// kubectl-style columns: a header, left-aligned cells separated by at least two spaces.
fn render_columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// kubectl-style: a header, left-aligned columns separated by at least two spaces.
fn render_table(rows: &[LeaseRow]) -> String {
    let header = [
        "SUBNET",
        "PUBLIC IP",
        "BACKEND",
        "VTEP MAC",
        "EXPIRES",
        "STATUS",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.subnet.clone(),
                r.public_ip
                    .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
                if r.backend_type.is_empty() {
                    "-".to_string()
                } else {
                    r.backend_type.clone()
                },
                r.vtep_mac.clone().unwrap_or_else(|| "-".to_string()),
                r.expires_cell().to_string(),
                r.status_cell(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: [&str; 6]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header);
    for row in &cells {
        out.push_str(&line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5],
        ]));
    }
    out
}

fn render_json(rows: &[LeaseRow]) -> String {
    // Rows hold only strings, numbers and JSON values: serialising cannot fail.
    serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_path_mtu_cell_names_a_size_below_the_ladder() {
        let h = |path_mtu, path_mtu_below| PeerHealth {
            reachable: true,
            rtt_seconds: None,
            path_mtu,
            path_mtu_below,
            diagnosis: weft::probe::Diagnosis::MtuBlackHole,
            at_unix: 0,
            confirm_misses: 0,
            pending_below: None,
        };
        assert_eq!(path_mtu_text(Some(&h(Some(1350), None))), "1350");
        assert_eq!(path_mtu_text(Some(&h(None, Some(580)))), "<580");
        assert_eq!(path_mtu_text(Some(&h(None, None))), "-");
        assert_eq!(path_mtu_text(None), "-");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_utc(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(at(1_795_848_186)), "2026-11-28T06:43:06Z");
        assert_eq!(rfc3339_utc(at(4_102_444_799)), "2099-12-31T23:59:59Z");
    }

    const PREFIX: &str = "/coreos.com/network";

    fn raw(subnet_key: &str, value: &str, etcd_lease: i64) -> RawLease {
        RawLease {
            key: format!("{PREFIX}/subnets/{subnet_key}"),
            value: value.as_bytes().to_vec(),
            etcd_lease,
            create_revision: 5,
            mod_revision: 5,
        }
    }

    fn rows() -> Vec<LeaseRow> {
        let vx = raw(
            "10.244.1.0-24",
            r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}"#,
            0x694d854330fc5110,
        );
        let reserved = raw(
            "10.244.12.0-24",
            r#"{"PublicIP":"192.0.2.100","BackendType":"host-gw"}"#,
            0,
        );
        let expired = raw("10.244.1.0-24", &String::from_utf8_lossy(&vx.value), 7);
        let mut junk = LeaseRow::from_raw(PREFIX, &raw("junk", "{", 9), None);
        junk.checked = true;
        junk.rejected = Some("subnet key \"junk\": no '-<prefix length>'".into());
        junk.reject_reason = Some("bad_key");
        let mut rows = vec![
            LeaseRow::from_raw(PREFIX, &vx, Some(at(1_795_848_186))),
            LeaseRow::from_raw(PREFIX, &reserved, None),
            LeaseRow::from_raw(PREFIX, &expired, None),
            junk,
        ];
        rows[0].checked = true;
        rows[1].checked = true;
        rows
    }

    #[test]
    fn table() {
        assert_eq!(
            render_table(&rows()),
            "SUBNET          PUBLIC IP    BACKEND  VTEP MAC           EXPIRES               STATUS\n\
             10.244.1.0/24   192.0.2.1    vxlan    aa:bb:cc:dd:ee:01  2026-11-28T06:43:06Z  ok\n\
             10.244.12.0/24  192.0.2.100  host-gw  -                  reserved              ok\n\
             10.244.1.0/24   192.0.2.1    vxlan    aa:bb:cc:dd:ee:01  expired               unchecked\n\
             junk            -            -        -                  expired               rejected: subnet key \"junk\": no '-<prefix length>'\n"
        );
        assert_eq!(
            render_table(&[]),
            "SUBNET  PUBLIC IP  BACKEND  VTEP MAC  EXPIRES  STATUS\n"
        );
    }

    #[test]
    fn json() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&rows())).unwrap();
        assert_eq!(
            v[0],
            serde_json::json!({
                "subnet": "10.244.1.0/24",
                "publicIP": "192.0.2.1",
                "backendType": "vxlan",
                "vtepMAC": "aa:bb:cc:dd:ee:01",
                "backendData": {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"},
                "etcdLease": "694d854330fc5110",
                "reserved": false,
                "expires": "2026-11-28T06:43:06Z",
                "rejected": null,
                "rejectReason": null
            })
        );
        assert_eq!(v[1]["reserved"], true);
        assert_eq!(v[1]["expires"], serde_json::Value::Null);
        assert_eq!(v[1]["vtepMAC"], serde_json::Value::Null);
        assert_eq!(v[3]["subnet"], "junk");
        assert_eq!(v[3]["publicIP"], serde_json::Value::Null);
        assert_eq!(v[3]["rejectReason"], "bad_key");
        assert_eq!(render_json(&[]), "[]");
    }

    #[test]
    fn status_table() {
        let status: NodeStatus = serde_json::from_value(serde_json::json!({
            "version": "0.1.0", "interface": "eth0", "publicIP": "192.0.2.11",
            "ready": true, "phase": "ready",
            "lease": {"subnet": "10.244.3.0/24", "reservation": false, "expiresUnix": 1_795_848_186},
            "backend": {"type": "vxlan", "device": "flannel.1", "mtu": 1450,
                        "offloads": "not applicable"},
            "peers": [{"subnet": "10.244.4.0/24", "publicIP": "192.0.2.12", "backendType": "vxlan",
                       "vtepMAC": "aa:bb:cc:dd:ee:01", "state": "programmed",
                       "health": {"reachable": true, "rttSeconds": 0.0004, "pathMtu": 1350,
                                  "diagnosis": "mtu-black-hole", "atUnix": 0}}],
            "rejected": [{"key": "/coreos.com/network/subnets/10.244.9.0-24",
                          "subnet": "10.244.9.0/24", "by": "validation", "reason": "public_ip",
                          "why": "PublicIP 127.0.0.1 is a loopback address"},
                         {"key": "/coreos.com/network/subnets/192.0.2.0-24",
                          "subnet": "192.0.2.0/24", "by": "route-guard", "reason": "route_overlap",
                          "why": "route to 192.0.2.0/24 overlaps address 192.0.2.11 of this node"}],
            "lastReconcile": {"atUnix": 1_795_848_000, "tookSeconds": 0.0012, "added": 3,
                              "removed": 1, "failed": 0, "error": null},
            "lastStale": {"atUnix": 1_795_847_000, "found": 1,
                          "entries": [{"kind": "route",
                                       "destination": "10.244.77.0/24 via 10.244.77.0 dev flannel.1"}]}
        }))
        .unwrap();
        assert_eq!(
            render_status(&status, at(1_795_848_186 - 3_700)),
            "Node:           192.0.2.11 on eth0\n\
             Version:        0.1.0\n\
             Ready:          yes\n\
             Lease:          10.244.3.0/24, expires 2026-11-28T06:43:06Z (in 1h1m)\n\
             Backend:        vxlan, device flannel.1, pod MTU 1450\n\
             Offloads:       not applicable\n\
             Last reconcile: 2026-11-28T06:40:00Z (1.2 ms): 3 added, 1 stale removed, 0 refused by the kernel\n\
             Stale removed:  1 at 2026-11-28T06:23:20Z:\n\
             \x20               route 10.244.77.0/24 via 10.244.77.0 dev flannel.1\n\
             Peers (1):\n\
             SUBNET         PUBLIC IP   BACKEND  VTEP MAC           STATE       HEALTH          RTT     PATH MTU\n\
             10.244.4.0/24  192.0.2.12  vxlan    aa:bb:cc:dd:ee:01  programmed  mtu-black-hole  0.40ms  1350\n\
             Not programmed (2):\n\
             SUBNET         STATE     REASON         WHY\n\
             10.244.9.0/24  rejected  public_ip      PublicIP 127.0.0.1 is a loopback address\n\
             192.0.2.0/24   refused   route_overlap  route to 192.0.2.0/24 overlaps address 192.0.2.11 of this node\n"
        );
        let waiting = NodeStatus {
            phase: "waiting for a valid network config at /coreos.com/network/config".into(),
            ..NodeStatus::default()
        };
        let text = render_status(&waiting, at(0));
        assert!(
            text.contains("Ready:          no (waiting for a valid network config at /coreos.com/network/config)\n"),
            "{text}"
        );
    }

    #[test]
    fn status_table_names_the_ipv6_subnets_addresses_and_health_of_dual_stack_and_ipv6_only_peers()
    {
        let status: NodeStatus = serde_json::from_value(serde_json::json!({
            "version": "0.1.0", "interface": "eth0", "publicIP": "192.0.2.11",
            "ready": true, "phase": "ready",
            "peers": [{"subnet": "0.0.0.0/0", "subnetIPv6": "fd00:10:244:2::/64",
                       "publicIP": "0.0.0.0", "publicIPv6": "2001:db8::2",
                       "backendType": "vxlan", "vtepMAC": null, "state": "programmed",
                       "health": {"reachable": true, "rttSeconds": 0.0004, "pathMtu": 1430,
                                  "diagnosis": "healthy", "atUnix": 0}},
                      {"subnet": "10.244.4.0/24", "subnetIPv6": "fd00:10:244:4::/64",
                       "publicIP": "192.0.2.12", "publicIPv6": "2001:db8::12",
                       "backendType": "vxlan", "vtepMAC": null, "state": "programmed",
                       "health": {"reachable": true, "rttSeconds": 0.0003, "pathMtu": 1430,
                                  "diagnosis": "healthy", "atUnix": 0},
                       "healthIPv6": {"reachable": true, "rttSeconds": 0.0005, "pathMtu": 1330,
                                      "diagnosis": "mtu-black-hole", "atUnix": 0}}]
        }))
        .unwrap();
        let text = render_status(&status, at(0));
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("SUBNET"))
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec![
                    "fd00:10:244:2::/64",
                    "2001:db8::2",
                    "vxlan",
                    "-",
                    "programmed",
                    "healthy",
                    "0.40ms",
                    "1430"
                ],
                vec![
                    "10.244.4.0/24,fd00:10:244:4::/64",
                    "192.0.2.12,2001:db8::12",
                    "vxlan",
                    "-",
                    "programmed",
                    "healthy,mtu-black-hole",
                    "0.30ms",
                    "1430,1330"
                ]
            ],
            "{text}"
        );
    }

    #[test]
    fn cluster_pods_table() {
        let pod = |ns: &str, name: &str, node: &str, ip: &str| PodSummary {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            host_ip: None,
            ready: "1/1".into(),
            status: "Running".into(),
            restarts: 2,
            pod_ip: ip.into(),
            created: Some("2026-11-28T06:00:00Z".into()),
            labels: [("app".to_string(), ns.to_string())].into(),
        };
        let pods = [
            pod("default", "web", "node1", "10.244.3.5"),
            pod("kube-system", "dns\u{1b}[2J", "node2", ""),
        ];
        assert_eq!(
            render_cluster_pods(&pods, at(1_795_848_186), false),
            "NAMESPACE    NAME     READY  STATUS   RESTARTS  AGE  IP          NODE\n\
             default      web      1/1    Running  2         43m  10.244.3.5  node1\n\
             kube-system  dns?[2J  1/1    Running  2         43m  <none>      node2\n"
        );
        let with_labels = render_cluster_pods(&pods[..1], at(1_795_848_186), true);
        assert!(
            with_labels
                .lines()
                .next()
                .unwrap()
                .ends_with("NODE   LABELS")
                && with_labels.ends_with("node1  app=default\n"),
            "{with_labels}"
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    fn leases_args(cli: Cli) -> LeasesArgs {
        match cli.command {
            Command::Leases(args) => args,
            #[allow(unreachable_patterns)]
            other => panic!("expected leases, got {other:?}"),
        }
    }

    #[test]
    fn cli_flags_and_defaults() {
        let cli = Cli::try_parse_from([
            "weftctl",
            "leases",
            "-o",
            "json",
            "--etcd-endpoints",
            "https://a:2379,https://b:2379",
            "--etcd-prefix",
            "/x/network",
            "--etcd-cafile",
            "/ca.pem",
        ])
        .unwrap();
        let args = leases_args(cli);
        assert_eq!(args.output, Output::Json);
        let o = args.etcd.options();
        assert_eq!(o.endpoints, vec!["https://a:2379", "https://b:2379"]);
        assert_eq!(o.prefix, "/x/network");
        assert_eq!(o.cafile, Some("/ca.pem".into()));
        let cli = Cli::try_parse_from(["weftctl", "leases"]).unwrap();
        let args = leases_args(cli);
        assert_eq!(args.output, Output::Table);
        assert_eq!(args.etcd.options().endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(args.etcd.options().prefix, "/coreos.com/network");
    }
}
