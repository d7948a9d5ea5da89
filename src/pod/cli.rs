//! The library half of `weftctl pods` and `weftctl logs` (their flags are the binary's): read the status files and container logs a node's pod
//! runtime writes, and print them the way `kubectl get pods -o wide` and `kubectl logs` do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::crilog::log_text;
use super::layout::{LayoutError, PodId, PodLayout, EPHEMERAL_FILE, INVALID_FILE};
use super::status::{self, PodRecord};

/// What `weftctl logs` asks for.
#[derive(Debug, Clone)]
pub struct LogsRequest {
    /// The pod root (`--pod-root`).
    pub pod_root: PathBuf,
    /// The container log root (`--pod-log-dir`).
    pub pod_log_dir: PathBuf,
    /// The pod: `NAME` (namespace from `namespace`) or `NAMESPACE/NAME`.
    pub pod: String,
    /// The container; may be omitted when the pod has a single app container.
    pub container: Option<String>,
    /// The pod's namespace.
    pub namespace: String,
    /// The previous run's log (the one before the last restart).
    pub previous: bool,
}

/// A manifest the runtime could not load, as listed in [`INVALID_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidManifest {
    /// The file.
    pub file: String,
    /// The error, naming the field and the reason.
    pub error: String,
}

/// Errors of the pod subcommands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Reading a directory or file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A status file is unreadable.
    #[error(transparent)]
    Status(#[from] status::StatusError),
    /// The pod is not on this node.
    #[error("pod {0} not found in {1}")]
    NoPod(String, PathBuf),
    /// The container is not in the pod, or must be named.
    #[error("{0}")]
    Container(String),
    /// There is no previous run.
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious {
        /// The container.
        container: String,
        /// The pod.
        pod: String,
    },
    /// The pod or container named in a status file cannot name a path.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A `-l` selector that does not parse.
    #[error(transparent)]
    Selector(#[from] super::selector::SelectorError),
    /// An unknown `-o` value.
    #[error("unsupported output format {0:?} (supported: wide, json)")]
    Output(String),
}

/// Reads the status record of every pod under `pod_root`, sorted by namespace and name.
pub fn read_pods(pod_root: &Path) -> Result<Vec<PodRecord>, CliError> {
    let entries = match std::fs::read_dir(pod_root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CliError::Io {
                op: "list",
                path: pod_root.to_path_buf(),
                source,
            })
        }
    };
    let mut pods = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if dir.join(status::STATUS_FILE).is_file() {
            let mut record = status::read_record(&dir)?;
            record.pod.status.ephemeral_container_statuses =
                super::debug::read_ephemeral(&dir.join(EPHEMERAL_FILE));
            pods.push(record);
        }
    }
    pods.sort_by(|a, b| {
        let key = |r: &PodRecord| {
            (
                r.pod.metadata.namespace.clone(),
                r.pod.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(pods)
}

/// Reads the invalid-manifest list the runtime keeps under `pod_root` (empty when none).
pub fn read_invalid(pod_root: &Path) -> Vec<InvalidManifest> {
    std::fs::read(pod_root.join(INVALID_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The `kubectl get pods -o wide`-like table (NAMESPACE first when a pod is outside `default`).
pub fn pods_table(pods: &[PodRecord], now: SystemTime) -> String {
    pods_table_labels(pods, now, false)
}

/// Labels as `kubectl --show-labels` prints them: `k=v` joined by `,` in key order, or `<none>`.
pub fn labels_cell(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".to_string();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// [`pods_table`], with a LABELS column when `show_labels`.
pub fn pods_table_labels(pods: &[PodRecord], now: SystemTime, show_labels: bool) -> String {
    let with_ns = pods.iter().any(|r| r.pod.metadata.namespace != "default");
    let mut rows = vec![vec![
        "NAME".to_string(),
        "READY".into(),
        "STATUS".into(),
        "RESTARTS".into(),
        "AGE".into(),
        "IP".into(),
        "NODE".into(),
    ]];
    if with_ns {
        rows[0].insert(0, "NAMESPACE".into());
    }
    if show_labels {
        rows[0].push("LABELS".into());
    }
    for r in pods {
        let p = &r.pod;
        let cols = status::columns(p);
        let age = p
            .metadata
            .creation_timestamp
            .as_deref()
            .and_then(status::parse_rfc3339)
            .and_then(|t| now.duration_since(t).ok())
            .map_or_else(|| "<unknown>".to_string(), status::human_duration);
        let mut row = vec![
            p.metadata.name.clone(),
            cols.ready,
            cols.status,
            cols.restarts.to_string(),
            age,
            none_if_empty(&p.status.pod_ip),
            p.spec
                .node_name
                .clone()
                .unwrap_or_else(|| "<none>".to_string()),
        ];
        if with_ns {
            row.insert(0, p.metadata.namespace.clone());
        }
        if show_labels {
            row.push(labels_cell(&p.metadata.labels));
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn none_if_empty(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

/// A Kubernetes `v1` `PodList` of `pods`.
pub fn pod_list_json(pods: &[PodRecord]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": ""},
        "items": pods.iter().map(|r| &r.pod).collect::<Vec<_>>(),
    })
}

/// `weftctl pods`: the table (and invalid manifests on `err`) or, for `output` `json`, the
/// JSON list on `out`; only pods whose labels match `selector` (`kubectl -l`'s syntax), with a
/// LABELS column when `show_labels`.
pub fn pods(
    pod_root: &Path,
    output: &str,
    selector: Option<&str>,
    show_labels: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let selector = super::selector::parse(selector.unwrap_or(""))?;
    let mut pods = read_pods(pod_root)?;
    pods.retain(|r| selector.matches(&r.pod.metadata.labels));
    let io = |source| CliError::Io {
        op: "write",
        path: PathBuf::from("<stdout>"),
        source,
    };
    match output {
        "json" => {
            let text = serde_json::to_string_pretty(&pod_list_json(&pods))
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            writeln!(out, "{text}").map_err(io)
        }
        "wide" | "" => {
            if pods.is_empty() {
                writeln!(err, "No pods found in {}.", pod_root.display()).map_err(io)?;
            } else {
                let table = pods_table_labels(&pods, SystemTime::now(), show_labels);
                out.write_all(table.as_bytes()).map_err(io)?;
            }
            for bad in read_invalid(pod_root) {
                writeln!(err, "invalid manifest {}: {}", bad.file, bad.error).map_err(io)?;
            }
            Ok(())
        }
        other => Err(CliError::Output(other.to_string())),
    }
}

/// `weftctl logs`: prints the container's current (or previous) log.
pub fn logs(args: &LogsRequest, out: &mut dyn Write) -> Result<(), CliError> {
    let (ns, name) = args
        .pod
        .split_once('/')
        .unwrap_or((args.namespace.as_str(), args.pod.as_str()));
    let pods = read_pods(&args.pod_root)?;
    let rec = pods
        .iter()
        .find(|r| r.pod.metadata.namespace == ns && r.pod.metadata.name == name)
        .ok_or_else(|| CliError::NoPod(format!("{ns}/{name}"), args.pod_root.clone()))?;
    let p = &rec.pod;
    let statuses = p
        .status
        .init_container_statuses
        .iter()
        .chain(&p.status.container_statuses);
    let container = match &args.container {
        Some(c) => c.clone(),
        None if p.spec.containers.len() == 1 => p.spec.containers[0].name.clone(),
        None => {
            let names: Vec<_> = p.spec.containers.iter().map(|c| c.name.as_str()).collect();
            return Err(CliError::Container(format!(
                "a container name must be specified for pod {name}, choose one of: {names:?}"
            )));
        }
    };
    let st = statuses
        .clone()
        .find(|s| s.name == container)
        .ok_or_else(|| {
            let names: Vec<_> = statuses.map(|s| s.name.as_str()).collect();
            CliError::Container(format!(
                "container {container} is not valid for pod {name}, choose one of: {names:?}"
            ))
        })?;
    let restart = if args.previous {
        st.restart_count
            .checked_sub(1)
            .ok_or_else(|| CliError::NoPrevious {
                container: container.clone(),
                pod: name.to_string(),
            })?
    } else {
        st.restart_count
    };
    let layout = PodLayout::new(&args.pod_root, &args.pod_log_dir);
    let pod = PodId::new(ns, name, &p.metadata.uid)?;
    let path = layout.container_log(&pod, &container, restart)?;
    let text = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        // A container that has not started has no log yet: print nothing, as kubectl would.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(CliError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    out.write_all(log_text(&text).as_bytes())
        .map_err(|source| CliError::Io {
            op: "write",
            path: PathBuf::from("<stdout>"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::manifest::parse_manifest;
    use crate::pod::status::{ContainerState, ContainerStatus, PodObject, StartTimings};
    use std::time::Duration;

    fn record(ns: &str, name: &str, ip: &str) -> PodRecord {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  containers:\n    - {{name: app, image: busybox}}\n"
        );
        let m = parse_manifest(Path::new("/m/p.yaml"), text.as_bytes()).unwrap();
        let mut o = PodObject::new(&m.pod);
        o.metadata.creation_timestamp = Some("2026-11-28T06:00:00Z".into());
        o.spec.node_name = Some("node-a".into());
        o.status.pod_ip = ip.into();
        o.status.container_statuses = vec![ContainerStatus {
            ready: true,
            restart_count: 2,
            ..ContainerStatus {
                state: ContainerState::running("2026-11-28T06:00:01Z"),
                ..ContainerStatus::new("app", "busybox", "")
            }
        }];
        status::refresh(&m.pod.spec, &mut o.status, "2026-11-28T06:00:01Z");
        PodRecord {
            pod: o,
            manifest: "/m/p.yaml".into(),
            timings: StartTimings::default(),
        }
    }

    #[test]
    fn table_looks_like_kubectl_wide() {
        let now = status::parse_rfc3339("2026-11-28T06:05:30Z").unwrap();
        let t = pods_table(&[record("default", "myapp-pod", "10.244.1.5")], now);
        assert_eq!(
            t,
            "NAME        READY   STATUS    RESTARTS   AGE     IP           NODE\n\
             myapp-pod   1/1     Running   2          5m30s   10.244.1.5   node-a\n"
        );
        let t = pods_table(
            &[record("kube-system", "p", "")],
            now + Duration::from_secs(3600),
        );
        assert!(t.starts_with("NAMESPACE     NAME"), "{t}");
        assert!(t.contains("<none>"), "{t}");
    }

    #[test]
    fn selector_filters_and_show_labels_adds_a_column() {
        let root = tempfile::tempdir().unwrap();
        let pod_root = root.path().join("pods");
        let layout = PodLayout::new(&pod_root, &root.path().join("logs"));
        for (name, labels) in [
            ("web", &[("app", "web"), ("tier", "front")][..]),
            ("db", &[("app", "db")][..]),
            ("bare", &[][..]),
        ] {
            let mut rec = record("default", name, "10.244.1.5");
            rec.pod.metadata.uid = format!("uid-{name}");
            rec.pod.metadata.labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let dir = layout.pod_dir(&PodId::new("default", name, &rec.pod.metadata.uid).unwrap());
            std::fs::create_dir_all(&dir).unwrap();
            status::write_record(&dir, &rec).unwrap();
        }
        let run = |selector: Option<&str>, show_labels: bool| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            pods(&pod_root, "wide", selector, show_labels, &mut out, &mut err).map(|()| {
                let names: Vec<String> = String::from_utf8(out)
                    .unwrap()
                    .lines()
                    .skip(1)
                    .map(|l| {
                        let cols: Vec<&str> = l.split_whitespace().collect();
                        format!(
                            "{} {}",
                            cols[0],
                            if show_labels {
                                cols[cols.len() - 1]
                            } else {
                                ""
                            }
                        )
                    })
                    .collect();
                names.join(";")
            })
        };
        assert_eq!(run(None, false).unwrap(), "bare ;db ;web ");
        assert_eq!(run(Some("app=web"), false).unwrap(), "web ");
        assert_eq!(
            run(Some("app in (web,db),tier notin (front)"), false).unwrap(),
            "db "
        );
        assert_eq!(run(Some("!app"), false).unwrap(), "bare ");
        assert_eq!(
            run(Some("app!=web"), true).unwrap(),
            "bare <none>;db app=db"
        );
        assert_eq!(
            run(Some("app"), true).unwrap(),
            "db app=db;web app=web,tier=front"
        );
        let e = run(Some("app in (web"), false).unwrap_err().to_string();
        assert!(e.contains("invalid label selector \"app in (web\""), "{e}");
    }

    #[test]
    fn json_is_a_pod_list() {
        let v = pod_list_json(&[record("default", "a", "10.244.1.5")]);
        assert_eq!(v["kind"], "PodList");
        assert_eq!(v["items"][0]["metadata"]["name"], "a");
        assert_eq!(v["items"][0]["status"]["podIP"], "10.244.1.5");
        assert_eq!(
            v["items"][0]["status"]["containerStatuses"][0]["restartCount"],
            2
        );
    }

    #[test]
    fn logs_pick_the_run_and_the_container() {
        let root = tempfile::tempdir().unwrap();
        let (pod_root, pod_log_dir) = (root.path().join("pods"), root.path().join("logs"));
        let rec = record("default", "web", "10.244.1.5");
        let uid = rec.pod.metadata.uid.clone();
        let layout = PodLayout::new(&pod_root, &pod_log_dir);
        let pod = PodId::new("default", "web", &uid).unwrap();
        let dir = layout.pod_dir(&pod);
        std::fs::create_dir_all(&dir).unwrap();
        status::write_record(&dir, &rec).unwrap();
        for (run, msg) in [(1, "first run"), (2, "second run")] {
            let p = layout.container_log(&pod, "app", run).unwrap();
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("2026-11-28T06:00:00Z stdout F {msg}\n")).unwrap();
        }
        let mut args = LogsRequest {
            pod_root,
            pod_log_dir,
            pod: "web".into(),
            container: None,
            namespace: "default".into(),
            previous: false,
        };
        let run = |a: &LogsRequest| {
            let mut out = Vec::new();
            logs(a, &mut out).map(|()| String::from_utf8(out).unwrap())
        };
        assert_eq!(run(&args).unwrap(), "second run\n");
        args.previous = true;
        assert_eq!(run(&args).unwrap(), "first run\n");
        args.container = Some("nope".into());
        let e = run(&args).unwrap_err().to_string();
        assert!(e.contains("container nope is not valid for pod web"), "{e}");
        args.pod = "default/other".into();
        assert!(matches!(run(&args), Err(CliError::NoPod(..))));
    }
}
