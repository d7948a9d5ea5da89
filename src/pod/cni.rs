//! Calling a CNI network the way libcni does: the first config file of the conf dir by name,
//! each plugin of the list in order with the previous result as `prevResult`, the result cached
//! under `<cache_dir>/results/<network>-<containerID>-<ifname>`, DEL in reverse order with the
//! cached result, DEL after a failed ADD.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The interface name pods get.
pub const POD_IFNAME: &str = "eth0";

/// Errors of a CNI operation.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The conf dir holds no usable network config.
    #[error("cni: no network config (*.conflist, *.conf, *.json) in {dir}{detail}")]
    NoConfig {
        /// The conf dir.
        dir: PathBuf,
        /// Why the files present were skipped.
        detail: String,
    },
    /// A config file is not a CNI network config.
    #[error("cni: config {file}: {reason}")]
    Config {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        #[source]
        reason: ConfigProblem,
    },
    /// A plugin binary is in none of the bin dirs.
    #[error("cni: plugin {plugin:?} of network {network} not found in {dirs}")]
    PluginNotFound {
        /// The plugin `type`.
        plugin: String,
        /// The network.
        network: String,
        /// The searched dirs, `:`-joined.
        dirs: String,
    },
    /// Running a plugin failed.
    #[error("cni: {command} {plugin} for container {container}: spawn {path}: {source}")]
    Spawn {
        /// `ADD` / `DEL`.
        command: &'static str,
        /// The plugin `type`.
        plugin: String,
        /// The container ID.
        container: String,
        /// The binary.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A plugin reported an error.
    #[error(
        "cni: {command} {plugin} for container {container} failed: code {code}: {msg}{details}"
    )]
    Plugin {
        /// `ADD` / `DEL`.
        command: &'static str,
        /// The plugin `type`.
        plugin: String,
        /// The container ID.
        container: String,
        /// The CNI error code (spec: 1-7, 11, 50, 51, 100+), or the exit status if no JSON error.
        code: i64,
        /// The error message.
        msg: String,
        /// `: details` when given.
        details: String,
    },
    /// A plugin's ADD output is not a result.
    #[error("cni: {command} {plugin} for container {container}: bad output: {reason}")]
    BadOutput {
        /// `ADD` / `DEL`.
        command: &'static str,
        /// The plugin `type`.
        plugin: String,
        /// The container ID.
        container: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the result cache failed.
    #[error("cni: {op} result cache {path}: {reason}")]
    Cache {
        /// The operation.
        op: &'static str,
        /// The cache file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
}

/// A loaded network configuration list (a `.conf` is turned into a one-plugin list).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// `name`.
    pub name: String,
    /// `cniVersion`.
    pub cni_version: String,
    /// `plugins`, each a JSON object with at least `type`.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from.
    pub source: PathBuf,
}

/// What a pod attachment is called: the container (sandbox) ID, its netns and pod identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The sandbox's ID (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The netns path (`CNI_NETNS`), e.g. `/run/netns/<name>`.
    pub netns: PathBuf,
    /// The interface inside (`CNI_IFNAME`).
    pub ifname: String,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME`.
    pub pod_name: String,
    /// `K8S_POD_UID`.
    pub pod_uid: String,
}

impl Attachment {
    /// The `CNI_ARGS` value kubelet passes.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }

    fn arg_pairs(&self) -> Vec<[String; 2]> {
        [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", self.pod_namespace.as_str()),
            ("K8S_POD_NAME", self.pod_name.as_str()),
            ("K8S_POD_INFRA_CONTAINER_ID", self.container_id.as_str()),
            ("K8S_POD_UID", self.pod_uid.as_str()),
        ]
        .iter()
        .map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }
}

/// The result of ADD: the last plugin's result.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// The JSON result.
    pub raw: Value,
}

impl CniResult {
    /// The first IP address of the result (`ips[].address`, or `ip4.ip` of 0.2.0 results).
    pub fn pod_ip(&self) -> Option<IpAddr> {
        let cidr = self.raw["ips"]
            .as_array()
            .and_then(|ips| ips.iter().find_map(|ip| ip["address"].as_str()))
            .or_else(|| self.raw["ip4"]["ip"].as_str())?;
        cidr.split('/').next()?.parse().ok()
    }
}

/// Where CNI plugins and the result cache are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniRuntime {
    /// Directories searched for plugin binaries, in order (`CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
    /// The cache root (`/var/lib/cni`); results go to `<cache_dir>/results/`.
    pub cache_dir: PathBuf,
}

/// Loads the first network config of `conf_dir` by file name (`.conflist`, `.conf`, `.json`).
///
/// Files that fail to parse are skipped, as kubelet does, and named in the error if none loads.
pub fn load_network(conf_dir: &Path) -> Result<NetworkList, CniError> {
    let entries = std::fs::read_dir(conf_dir).map_err(|e| CniError::NoConfig {
        dir: conf_dir.to_path_buf(),
        detail: format!(": {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut skipped = Vec::new();
    for file in files {
        match std::fs::read(&file)
            .map_err(ConfigProblem::Read)
            .and_then(|bytes| network_list(&file, &bytes))
        {
            Ok(list) => return Ok(list),
            Err(reason) => skipped.push(format!("{}: {reason}", file.display())),
        }
    }
    Err(CniError::NoConfig {
        dir: conf_dir.to_path_buf(),
        detail: if skipped.is_empty() {
            String::new()
        } else {
            format!(" (skipped {})", skipped.join("; "))
        },
    })
}

/// Parses a config file's bytes: a conflist, or a single plugin config turned into a list.
pub fn parse_network(file: &Path, bytes: &[u8]) -> Result<NetworkList, CniError> {
    network_list(file, bytes).map_err(|reason| CniError::Config {
        file: file.to_path_buf(),
        reason,
    })
}

/// What is wrong with a network config file; names the field where one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// The file could not be read.
    #[error(transparent)]
    Read(std::io::Error),
    /// The bytes are not JSON.
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The JSON is not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// `name` is missing or empty.
    #[error("field name: required")]
    NoName,
    /// A conflist without `plugins`.
    #[error("field plugins: required in a conflist")]
    NoPlugins,
    /// `plugins[i]` is not an object.
    #[error("field plugins[{0}]: not an object")]
    PluginNotAnObject(usize),
    /// `plugins` is empty.
    #[error("field plugins: empty")]
    EmptyPlugins,
    /// A plugin's `type` is empty or could name a path outside the bin dirs.
    #[error("field plugins[{index}].type: invalid {ty:?}")]
    BadType {
        /// The plugin's index.
        index: usize,
        /// The `type` as given.
        ty: String,
    },
}

/// [`parse_network`]'s work; the error names the field and what is wrong with it.
fn network_list(file: &Path, bytes: &[u8]) -> Result<NetworkList, ConfigProblem> {
    let v: Value = serde_json::from_slice(bytes).map_err(ConfigProblem::NotJson)?;
    let obj = v.as_object().ok_or(ConfigProblem::NotAnObject)?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or(ConfigProblem::NoName)?
        .to_string();
    let cni_version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.1.0")
        .to_string();
    let is_list = file.extension().and_then(|e| e.to_str()) == Some("conflist")
        || obj.contains_key("plugins");
    let plugins: Vec<Map<String, Value>> = if is_list {
        let list = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or(ConfigProblem::NoPlugins)?;
        let mut out = Vec::new();
        for (i, p) in list.iter().enumerate() {
            out.push(
                p.as_object()
                    .ok_or(ConfigProblem::PluginNotAnObject(i))?
                    .clone(),
            );
        }
        out
    } else {
        vec![obj.clone()]
    };
    if plugins.is_empty() {
        return Err(ConfigProblem::EmptyPlugins);
    }
    for (i, p) in plugins.iter().enumerate() {
        let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
        // The type names a binary: a path separator would escape the bin dirs.
        if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
            return Err(ConfigProblem::BadType {
                index: i,
                ty: ty.to_string(),
            });
        }
    }
    Ok(NetworkList {
        name,
        cni_version,
        plugins,
        source: file.to_path_buf(),
    })
}

/// The stdin config for one plugin: its own config with `name`, `cniVersion` and `prevResult`.
pub fn plugin_config(
    list: &NetworkList,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    match prev {
        Some(p) => conf.insert("prevResult".into(), p.clone()),
        None => conf.remove("prevResult"),
    };
    Value::Object(conf)
}

fn plugin_type(plugin: &Map<String, Value>) -> String {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Whether a CNI version is at least 0.4.0 (DEL gets `prevResult` from then on).
fn at_least_0_4(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    major > 0 || minor >= 4
}

impl CniRuntime {
    /// The cache file of an attachment to `network`.
    pub fn cache_file(&self, network: &str, att: &Attachment) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{network}-{}-{}", att.container_id, att.ifname))
    }

    fn find_plugin(&self, network: &str, ty: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: ty.to_string(),
                network: network.to_string(),
                dirs: self.cni_path(),
            })
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Runs one plugin; returns its stdout parsed as JSON (`Null` when empty).
    fn exec(
        &self,
        command: &'static str,
        list: &NetworkList,
        plugin: &Map<String, Value>,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let ty = plugin_type(plugin);
        let path = self.find_plugin(&list.name, &ty)?;
        let stdin = plugin_config(list, plugin, prev).to_string();
        let spawn_err = |source| CniError::Spawn {
            command,
            plugin: ty.clone(),
            container: att.container_id.clone(),
            path: path.clone(),
            source,
        };
        let mut child = Command::new(&path)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_PATH", self.cni_path())
            .env("CNI_ARGS", att.cni_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        let stdout: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&out.stdout).into_owned())
            })
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let (code, msg, details) = match &stdout {
                Value::Object(e) => (
                    e.get("code")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::from(out.status.code().unwrap_or(-1))),
                    e.get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    e.get("details")
                        .and_then(Value::as_str)
                        .filter(|d| !d.is_empty())
                        .map_or_else(String::new, |d| format!(": {d}")),
                ),
                other => (
                    i64::from(out.status.code().unwrap_or(-1)),
                    format!("{other} {stderr}").trim().to_string(),
                    String::new(),
                ),
            };
            return Err(CniError::Plugin {
                command,
                plugin: ty,
                container: att.container_id.clone(),
                code,
                msg,
                details,
            });
        }
        Ok(stdout)
    }

    /// ADD: every plugin in order, each given the previous result; caches the final result.
    ///
    /// On failure the whole list is deleted again (in reverse order) before the error returns.
    pub fn add(&self, list: &NetworkList, att: &Attachment) -> Result<CniResult, CniError> {
        match self.add_chain(list, att) {
            Ok(result) => Ok(result),
            Err(e) => {
                if let Err(del) = self.del_chain(list, att, None) {
                    tracing::warn!(container = %att.container_id, error = %del, "cni: DEL after failed ADD");
                }
                Err(e)
            }
        }
    }

    fn add_chain(&self, list: &NetworkList, att: &Attachment) -> Result<CniResult, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let out = self.exec("ADD", list, plugin, att, prev.as_ref())?;
            if !out.is_object() {
                return Err(CniError::BadOutput {
                    command: "ADD",
                    plugin: plugin_type(plugin),
                    container: att.container_id.clone(),
                    reason: format!("expected a JSON result, got {out}"),
                });
            }
            prev = Some(out);
        }
        let raw = prev.unwrap_or(Value::Null);
        self.write_cache(list, att, &raw)?;
        Ok(CniResult { raw })
    }

    fn write_cache(
        &self,
        list: &NetworkList,
        att: &Attachment,
        result: &Value,
    ) -> Result<(), CniError> {
        let path = self.cache_file(&list.name, att);
        let err = |op, e: std::io::Error| CniError::Cache {
            op,
            path: path.clone(),
            reason: e.to_string(),
        };
        let conf =
            json!({"cniVersion": list.cni_version, "name": list.name, "plugins": list.plugins});
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": att.container_id,
            "config": BASE64.encode(conf.to_string().as_bytes()),
            "ifName": att.ifname,
            "networkName": list.name,
            "netns": att.netns,
            "cniArgs": att.arg_pairs(),
            "result": result,
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err("create dir for", e))?;
        }
        // The cache holds the network config: root-only, like libcni's.
        crate::atomic_file::write_atomic(&path, entry.to_string().as_bytes(), 0o600)
            .map_err(|e| err("write", e))
    }

    /// Reads the cached ADD of `att` to `network`: the network list it used and its result.
    pub fn cached(&self, network: &str, att: &Attachment) -> Option<(NetworkList, Value)> {
        let path = self.cache_file(network, att);
        let entry: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        let conf = BASE64.decode(entry["config"].as_str()?).ok()?;
        let list = parse_network(&path.with_extension("conflist"), &conf).ok()?;
        Some((list, entry["result"].clone()))
    }

    /// DEL: every plugin in reverse order with the cached result as `prevResult` (CNI ≥ 0.4.0),
    /// using the network config cached at ADD when there is one; then drops the cache entry.
    ///
    /// Every plugin is called even if one fails, so a failure leaks as little as possible; the
    /// first error is returned.
    pub fn del(&self, list: &NetworkList, att: &Attachment) -> Result<(), CniError> {
        let (list, prev) = match self.cached(&list.name, att) {
            Some((cached, result)) => (cached, Some(result)),
            None => (list.clone(), None),
        };
        self.del_chain(&list, att, prev.as_ref())?;
        let path = self.cache_file(&list.name, att);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CniError::Cache {
                op: "remove",
                path,
                reason: e.to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn del_chain(
        &self,
        list: &NetworkList,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let prev = prev.filter(|_| at_least_0_4(&list.cni_version));
        let mut first = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", list, plugin, att, prev) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Parses a `CNI_ARGS` string into its pairs (for tests and diagnostics).
pub fn parse_cni_args(args: &str) -> BTreeMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The pod worker's seam to the pod network: attach, detach and what was attached, so its
/// logic can run against another network (or a fake) and [`CniRuntime`] stays one
/// implementation.
pub trait PodNetwork {
    /// Attaches `att` to the network `list` (CNI ADD).
    fn add(&self, list: &NetworkList, att: &Attachment) -> Result<CniResult, CniError>;
    /// The network list and result of an earlier attachment of `att` to `network`.
    fn cached(&self, network: &str, att: &Attachment) -> Option<(NetworkList, Value)>;
    /// Detaches `att` (CNI DEL); succeeds when already gone.
    fn del(&self, list: &NetworkList, att: &Attachment) -> Result<(), CniError>;
}

impl PodNetwork for CniRuntime {
    fn add(&self, list: &NetworkList, att: &Attachment) -> Result<CniResult, CniError> {
        CniRuntime::add(self, list, att)
    }

    fn cached(&self, network: &str, att: &Attachment) -> Option<(NetworkList, Value)> {
        CniRuntime::cached(self, network, att)
    }

    fn del(&self, list: &NetworkList, att: &Attachment) -> Result<(), CniError> {
        CniRuntime::del(self, list, att)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[
        {"type":"bridge","bridge":"cni0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.244.1.0/24"}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    fn att() -> Attachment {
        Attachment {
            container_id: "abc123".into(),
            netns: "/run/netns/weft-abc123".into(),
            ifname: POD_IFNAME.into(),
            pod_namespace: "default".into(),
            pod_name: "myapp-pod".into(),
            pod_uid: "u-1".into(),
        }
    }

    #[test]
    fn cni_args_are_kubelets() {
        assert_eq!(
            att().cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=myapp-pod;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1"
        );
        assert_eq!(parse_cni_args(&att().cni_args())["K8S_POD_UID"], "u-1");
    }

    #[test]
    fn plugin_config_gets_name_version_and_prev_result() {
        let list = parse_network(Path::new("/c/10-podnet.conflist"), BRIDGE.as_bytes()).unwrap();
        assert_eq!(list.plugins.len(), 2);
        let prev = json!({"cniVersion":"1.0.0","ips":[{"address":"10.244.1.2/24"}]});
        let conf = plugin_config(&list, &list.plugins[1], Some(&prev));
        assert_eq!(conf["name"], "podnet");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["type"], "portmap");
        assert_eq!(conf["prevResult"]["ips"][0]["address"], "10.244.1.2/24");
        let first = plugin_config(&list, &list.plugins[0], None);
        assert!(first.get("prevResult").is_none());
        assert_eq!(first["ipam"]["type"], "host-local");
    }

    #[test]
    fn a_single_conf_becomes_a_one_plugin_list() {
        let conf = r#"{"cniVersion":"0.4.0","name":"n","type":"weft"}"#;
        let list = parse_network(Path::new("/c/n.conf"), conf.as_bytes()).unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0]["type"], "weft");
        assert_eq!(list.cni_version, "0.4.0");
    }

    #[test]
    fn broken_configs_are_rejected_with_the_field() {
        let p = Path::new("/c/x.conflist");
        let err = |bytes: &[u8]| parse_network(p, bytes).unwrap_err().to_string();
        assert_eq!(
            err(br#"{"plugins":[]}"#),
            "cni: config /c/x.conflist: field name: required"
        );
        assert_eq!(
            err(br#"{"name":"n"}"#),
            "cni: config /c/x.conflist: field plugins: required in a conflist"
        );
        assert_eq!(
            err(br#"{"name":"n","plugins":[{"type":"../../bin/sh"}]}"#),
            "cni: config /c/x.conflist: field plugins[0].type: invalid \"../../bin/sh\""
        );
        assert!(err(b"{").starts_with("cni: config /c/x.conflist: not JSON"));
    }

    #[test]
    fn the_first_loadable_file_by_name_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        std::fs::write(dir.path().join("10-podnet.conflist"), BRIDGE).unwrap();
        std::fs::write(
            dir.path().join("20-other.conf"),
            r#"{"name":"other","type":"weft"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("00-readme.txt"), "not a config").unwrap();
        let list = load_network(dir.path()).unwrap();
        assert_eq!(list.name, "podnet");
        assert_eq!(list.source, dir.path().join("10-podnet.conflist"));
        let empty = tempfile::tempdir().unwrap();
        let msg = load_network(empty.path()).unwrap_err().to_string();
        assert!(msg.contains("no network config"), "{msg}");
    }

    #[test]
    fn pod_ip_comes_from_the_result() {
        let r = CniResult {
            raw: json!({"ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1"}]}),
        };
        assert_eq!(r.pod_ip(), Some("10.244.1.7".parse().unwrap()));
        let old = CniResult {
            raw: json!({"ip4":{"ip":"10.244.2.3/24"}}),
        };
        assert_eq!(old.pod_ip(), Some("10.244.2.3".parse().unwrap()));
        assert_eq!(CniResult { raw: json!({}) }.pod_ip(), None);
    }

    #[test]
    fn version_gate_for_prev_result_on_del() {
        assert!(!at_least_0_4("0.3.1"));
        assert!(at_least_0_4("0.4.0"));
        assert!(at_least_0_4("1.0.0"));
    }

    #[test]
    fn plugin_errors_carry_code_and_msg_and_cache_survives_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = bin.join("failing");
        std::fs::write(
            &script,
            "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"code\":11,\"msg\":\"try again\",\"details\":\"busy\"}'; exit 1; fi\necho \"$CNI_COMMAND $CNI_ARGS\" >> \"$(dirname \"$0\")/../log\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let rt = CniRuntime {
            bin_dirs: vec![dir.path().join("missing"), bin],
            cache_dir: dir.path().join("cache"),
        };
        let list = parse_network(
            Path::new("/c/f.conf"),
            br#"{"cniVersion":"1.0.0","name":"f","type":"failing"}"#,
        )
        .unwrap();
        let e = rt.add(&list, &att()).unwrap_err();
        assert!(
            matches!(&e, CniError::Plugin { code: 11, msg, .. } if msg == "try again"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "cni: ADD failing for container abc123 failed: code 11: try again: busy"
        );
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert!(
            log.starts_with("DEL IgnoreUnknown=1;K8S_POD_NAMESPACE=default;"),
            "DEL after failed ADD: {log}"
        );
        assert!(!rt.cache_file("f", &att()).exists());

        let result = json!({"cniVersion":"1.0.0","ips":[{"address":"10.244.1.9/24"}]});
        rt.write_cache(&list, &att(), &result).unwrap();
        let (cached_list, cached_result) = rt.cached("f", &att()).unwrap();
        assert_eq!(cached_list.plugins, list.plugins);
        assert_eq!(cached_result, result);
        rt.del(&list, &att()).unwrap();
        assert!(!rt.cache_file("f", &att()).exists());
        let missing = CniRuntime {
            bin_dirs: vec![dir.path().join("none")],
            cache_dir: rt.cache_dir.clone(),
        };
        assert!(matches!(
            missing.add(&list, &att()),
            Err(CniError::PluginNotFound { .. })
        ));
    }
}
