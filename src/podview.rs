//! The cluster-wide pod view: each node publishes a small record per static pod under
//! `<prefix>/pods/<node>/<namespace>/<name>`, attached to the node's subnet lease, and
//! `weftctl pods -A` lists every node's records like `kubectl get pods -A -o wide`.
//!
//! A record follows the pod's status file (written by the pod runtime) and goes away with the
//! pod; attached to the node's etcd lease, it also goes away with the node. Records are read
//! back by operators' tools, and any etcd client can write them: the reader treats them as
//! hostile (keys must match the record, text is made safe for a terminal).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::pod::status::{self, PodRecord};
use crate::status::StatusBoard;
use crate::store::{timed, EtcdStore, StoreError};

/// How often the node compares its pods with its published records.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(2);

/// The longest node, namespace or pod name accepted in a key (a DNS subdomain).
const MAX_NAME: usize = 253;

/// One pod as the cluster sees it: the columns of `kubectl get pods -A -o wide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSummary {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The node running it (`spec.nodeName`).
    pub node: String,
    /// The node's public IP.
    #[serde(rename = "hostIP")]
    pub host_ip: Option<Ipv4Addr>,
    /// READY: `ready/total` app containers.
    pub ready: String,
    /// STATUS: `Running`, `CrashLoopBackOff`, `Completed`, ...
    pub status: String,
    /// RESTARTS.
    pub restarts: u32,
    /// The pod's IP; empty before the network is set up.
    #[serde(rename = "podIP")]
    pub pod_ip: String,
    /// `metadata.creationTimestamp` (RFC 3339), for AGE.
    pub created: Option<String>,
    /// `metadata.labels`, for `-l` and `--show-labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl PodSummary {
    /// The summary of a pod runtime status record on `node`.
    pub fn of(record: &PodRecord, node: &str, host_ip: Option<Ipv4Addr>) -> PodSummary {
        let pod = &record.pod;
        let cols = status::columns(pod);
        PodSummary {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            node: node.to_string(),
            host_ip,
            ready: cols.ready,
            status: cols.status,
            restarts: cols.restarts,
            pod_ip: pod.status.pod_ip.clone(),
            created: pod.metadata.creation_timestamp.clone(),
            labels: pod.metadata.labels.clone(),
        }
    }
}

/// A bad node, namespace or pod name, or a record that does not belong under its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A name that cannot be a key component.
    #[error("{what} {value:?}: {reason}")]
    Name {
        /// `node`, `namespace` or `pod`.
        what: &'static str,
        /// The name.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The value under a key is not a pod summary.
    #[error("pod record {key}: {reason}")]
    Value {
        /// The etcd key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// `<prefix>/pods/`.
pub fn pods_prefix(prefix: &str) -> String {
    format!("{}/pods/", prefix.trim_end_matches('/'))
}

/// `<prefix>/pods/<node>/`.
pub fn node_prefix(prefix: &str, node: &str) -> Result<String, RecordError> {
    check_name("node", node)?;
    Ok(format!("{}{node}/", pods_prefix(prefix)))
}

/// `<prefix>/pods/<node>/<namespace>/<name>`.
pub fn record_key(prefix: &str, summary: &PodSummary) -> Result<String, RecordError> {
    check_name("namespace", &summary.namespace)?;
    check_name("pod", &summary.name)?;
    Ok(format!(
        "{}{}/{}",
        node_prefix(prefix, &summary.node)?,
        summary.namespace,
        summary.name
    ))
}

fn check_name(what: &'static str, value: &str) -> Result<(), RecordError> {
    let reason = if value.is_empty() {
        "is empty"
    } else if value.len() > MAX_NAME {
        "is longer than 253 characters"
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        "may hold only lower-case letters, digits, '-' and '.'"
    } else {
        return Ok(());
    };
    Err(RecordError::Name {
        what,
        value: value.to_string(),
        reason,
    })
}

/// Parses the record under `key` (below [`pods_prefix`]); it must name the pod its key names.
pub fn parse_record(prefix: &str, key: &str, value: &[u8]) -> Result<PodSummary, RecordError> {
    let bad = |reason: String| RecordError::Value {
        key: key.to_string(),
        reason,
    };
    let summary: PodSummary =
        serde_json::from_slice(value).map_err(|e| bad(format!("not a pod record: {e}")))?;
    let expected = record_key(prefix, &summary).map_err(|e| bad(e.to_string()))?;
    if expected != key {
        return Err(bad(format!(
            "describes {}/{} on {}, which belongs under {expected}",
            summary.namespace, summary.name, summary.node
        )));
    }
    Ok(summary)
}

/// What one publishing round does to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordChange {
    /// Put `value` at `key` (new, changed, or now under another etcd lease).
    Put {
        /// The key.
        key: String,
        /// The JSON record.
        value: String,
    },
    /// Delete `key`: the pod is gone.
    Delete {
        /// The key.
        key: String,
    },
}

/// A published record: its value and the etcd lease it is attached to.
pub type Published = BTreeMap<String, (String, Option<i64>)>;

/// The changes that make `published` match `desired` under etcd lease `lease`.
pub fn plan(
    desired: &BTreeMap<String, String>,
    published: &Published,
    lease: Option<i64>,
) -> Vec<RecordChange> {
    let mut changes: Vec<RecordChange> = desired
        .iter()
        .filter(|(key, value)| published.get(*key) != Some(&((*value).clone(), lease)))
        .map(|(key, value)| RecordChange::Put {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    changes.extend(
        published
            .keys()
            .filter(|key| !desired.contains_key(*key))
            .map(|key| RecordChange::Delete { key: key.clone() }),
    );
    changes
}

/// The records this node should have published: one per status file under `pod_root`.
fn desired_records(
    prefix: &str,
    node: &str,
    host_ip: Option<Ipv4Addr>,
    pod_root: &Path,
) -> Option<BTreeMap<String, String>> {
    let records = match crate::pod::cli::read_pods(pod_root) {
        Ok(records) => records,
        Err(e) => {
            // Not "no pods": planning from an empty set would delete every record.
            warn!(error = %e, "read the pods' status files; publishing what was there before");
            return None;
        }
    };
    let desired = records
        .iter()
        .filter_map(|record| {
            let summary = PodSummary::of(record, node, host_ip);
            match record_key(prefix, &summary) {
                Ok(key) => Some((key, serde_json::to_string(&summary).ok()?)),
                Err(e) => {
                    warn!(error = %e, "pod not published");
                    None
                }
            }
        })
        .collect();
    Some(desired)
}

/// Keeps `<prefix>/pods/<node>/` in step with the pods under `pod_root`, every
/// [`PUBLISH_INTERVAL`], once the node holds a lease. Runs until the task is dropped.
pub async fn publish(store: EtcdStore, node: String, pod_root: PathBuf, board: Arc<StatusBoard>) {
    let prefix = store.prefix().to_string();
    let own_prefix = match node_prefix(&prefix, &node) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "the node name cannot be an etcd key; pods are not published");
            return;
        }
    };
    let mut published: Option<Published> = None;
    let mut ticks = tokio::time::interval(PUBLISH_INTERVAL);
    loop {
        ticks.tick().await;
        let status = board.snapshot();
        let Some(lease) = status.lease else {
            continue;
        };
        let etcd_lease = lease.etcd_lease;
        let desired = {
            let (prefix, node, root) = (prefix.clone(), node.clone(), pod_root.clone());
            let host_ip = status.public_ip;
            match tokio::task::spawn_blocking(move || {
                desired_records(&prefix, &node, host_ip, &root)
            })
            .await
            {
                Ok(Some(d)) => d,
                // Unreadable this round: the records stay as they are.
                Ok(None) | Err(_) => continue,
            }
        };
        let current = match published.take() {
            Some(p) => p,
            None => match list_published(&store, &own_prefix).await {
                Ok(p) => p,
                Err(e) => {
                    debug!(error = %e, "list published pod records; retrying");
                    continue;
                }
            },
        };
        match apply(&store, &plan(&desired, &current, etcd_lease), etcd_lease).await {
            Ok(()) => {
                published = Some(
                    desired
                        .into_iter()
                        .map(|(k, v)| (k, (v, etcd_lease)))
                        .collect(),
                )
            }
            // Unknown state: list again next round.
            Err(e) => warn!(error = %e, "publish pod records; retrying"),
        }
    }
}

async fn list_published(store: &EtcdStore, own_prefix: &str) -> Result<Published, StoreError> {
    let resp = timed(
        "list pod records",
        own_prefix,
        store
            .client()
            .kv_client()
            .get(own_prefix, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    (kv.lease() != 0).then_some(kv.lease()),
                ),
            )
        })
        .collect())
}

async fn apply(
    store: &EtcdStore,
    changes: &[RecordChange],
    lease: Option<i64>,
) -> Result<(), StoreError> {
    let mut kv = store.client().kv_client();
    for change in changes {
        match change {
            RecordChange::Put { key, value } => {
                let options = lease.map(|id| PutOptions::new().with_lease(id));
                timed(
                    "put pod record",
                    key,
                    kv.put(key.as_str(), value.as_str(), options),
                )
                .await?;
                info!(key = %key, "pod record published");
            }
            RecordChange::Delete { key } => {
                timed("delete pod record", key, kv.delete(key.as_str(), None)).await?;
                info!(key = %key, "pod record removed");
            }
        }
    }
    Ok(())
}

/// Every node's pod records, sorted by namespace and name; records that do not parse or sit
/// under the wrong key are returned as errors beside them, never dropped silently.
pub async fn list_cluster(
    store: &EtcdStore,
) -> Result<(Vec<PodSummary>, Vec<RecordError>), StoreError> {
    let prefix = pods_prefix(store.prefix());
    let resp = timed(
        "list pod records",
        &prefix,
        store
            .client()
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        match parse_record(store.prefix(), &key, kv.value()) {
            Ok(pod) => pods.push(pod),
            Err(e) => errors.push(e),
        }
    }
    pods.sort_by(|a, b| (&a.namespace, &a.name, &a.node).cmp(&(&b.namespace, &b.name, &b.node)));
    Ok((pods, errors))
}

/// `s` with control characters (terminal escapes) replaced, for printing hostile text.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/coreos.com/network";

    #[test]
    fn pods_that_cannot_be_read_are_not_planned_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            desired_records(PREFIX, "node1", None, dir.path()),
            Some(BTreeMap::new()),
            "no pods: nothing to publish"
        );
        // A pod root that cannot be listed: no plan at all, so no record is deleted.
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "x").unwrap();
        assert_eq!(desired_records(PREFIX, "node1", None, &not_a_dir), None);
    }

    fn summary(name: &str) -> PodSummary {
        PodSummary {
            namespace: "default".into(),
            name: name.into(),
            node: "node1".into(),
            host_ip: Some(Ipv4Addr::new(192, 0, 2, 11)),
            ready: "1/1".into(),
            status: "Running".into(),
            restarts: 0,
            pod_ip: "10.244.3.5".into(),
            created: Some("2026-12-03T08:00:00Z".into()),
            labels: Default::default(),
        }
    }

    #[test]
    fn keys_are_built_from_checked_names() {
        assert_eq!(
            record_key(PREFIX, &summary("web")).unwrap(),
            "/coreos.com/network/pods/node1/default/web"
        );
        let mut s = summary("web");
        s.node = "../x".into();
        assert!(record_key(PREFIX, &s).is_err());
        s.node = "node1".into();
        s.name = "a/b".into();
        assert!(record_key(PREFIX, &s).is_err());
        s.name = String::new();
        assert!(record_key(PREFIX, &s).is_err());
    }

    #[test]
    fn a_record_must_sit_under_its_own_key() {
        let value = serde_json::to_vec(&summary("web")).unwrap();
        let key = "/coreos.com/network/pods/node1/default/web";
        assert_eq!(parse_record(PREFIX, key, &value).unwrap(), summary("web"));
        let e = parse_record(PREFIX, "/coreos.com/network/pods/node2/default/web", &value)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("belongs under /coreos.com/network/pods/node1/default/web"),
            "{e}"
        );
        let e = parse_record(PREFIX, key, b"{\"name\":1}")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("pod record {key}: not a pod record")),
            "{e}"
        );
    }

    #[test]
    fn plan_puts_new_changed_and_re_leased_records_and_deletes_gone_ones() {
        let desired: BTreeMap<String, String> = [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]
        .into();
        let published: Published = [
            ("a".to_string(), ("1".to_string(), Some(7))),
            ("b".to_string(), ("old".to_string(), Some(7))),
            ("c".to_string(), ("3".to_string(), Some(7))),
        ]
        .into();
        assert_eq!(
            plan(&desired, &published, Some(7)),
            vec![
                RecordChange::Put {
                    key: "b".into(),
                    value: "2".into()
                },
                RecordChange::Delete { key: "c".into() },
            ]
        );
        // A new etcd lease (the node re-acquired its subnet): everything is put again.
        assert_eq!(plan(&desired, &published, Some(8)).len(), 3);
        let in_step: Published = desired
            .iter()
            .map(|(k, v)| (k.clone(), (v.clone(), Some(7))))
            .collect();
        assert!(plan(&desired, &in_step, Some(7)).is_empty());
    }

    #[test]
    fn printable_defuses_terminal_escapes() {
        assert_eq!(printable("web\u{1b}[2J\n"), "web?[2J?");
    }
}
