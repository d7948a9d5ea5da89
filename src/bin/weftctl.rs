//! `weftctl`: the operator CLI. One subcommand per concern; each is an enum variant of
//! [`Command`] with its own argument struct and one `async fn` that runs it.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::stream::{self, StreamExt, TryStreamExt};
use ipnetwork::Ipv4Network;
use weft::config::NetworkConfig;
use weft::lease::{subnets_prefix, LeaseAttrs, RawLease};
use weft::store::{EtcdArgs, EtcdStore, StoreError};
use weft::subnet::parse_subnet_key;
use weft::validate::{validate_leases, LeasePolicy, NodeIdentity};

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
    /// Import images into the node's image store and list them.
    Image(weft::pod::image::ImageArgs),
    /// List the node's static pods like `kubectl get pods -o wide` (`-o json`: a v1 PodList).
    Pods(weft::pod::cli::PodsArgs),
    /// Print a pod container's log (`-c CONTAINER`, `--previous`).
    Logs(weft::pod::cli::LogsArgs),
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
    Pods(#[from] weft::pod::cli::CliError),
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

impl LeaseRow {
    /// A row for whatever a key holds: as much as parses, empty cells for the rest.
    fn from_raw(prefix: &str, raw: &RawLease, expires: Option<SystemTime>) -> LeaseRow {
        let name = raw
            .key
            .strip_prefix(&subnets_prefix(prefix))
            .unwrap_or(&raw.key);
        let attrs = LeaseAttrs::from_json(&raw.key, &raw.value).ok();
        LeaseRow {
            subnet: parse_subnet_key(name).map_or_else(|_| name.to_string(), |n| n.to_string()),
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
        Command::Image(args) => Ok(weft::pod::image::run_cli(&args, &mut std::io::stdout())?),
        Command::Pods(args) => Ok(weft::pod::cli::pods(
            &args,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )?),
        Command::Logs(args) => Ok(weft::pod::cli::logs(&args, &mut std::io::stdout())?),
    }
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

/// `2026-11-28T06:43:06Z`. Times before 1970 print as the epoch.
fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
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
