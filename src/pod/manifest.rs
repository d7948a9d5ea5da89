//! Static pod manifests: Kubernetes `v1` `Pod` objects read from YAML or JSON files,
//! validated, with the UID a static pod gets when its manifest names none.
//!
//! Parsing is pure: [`parse_manifest`] takes the file's path and bytes and returns the pod
//! plus the warnings for fields weft ignores, or an error naming the file, the field and
//! the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::image::normalize_name;
use super::layout::{check_dns_label, check_dns_subdomain, check_uid, LayoutError, PodId};
use super::resources::{self, ResourceRequirements};
use super::security::{self, HostNamespaces, PodSecurityContext, SecurityContext};

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// The file is not YAML/JSON of the Pod schema (a type error, a missing required field).
    #[error("manifest {file}: {reason}")]
    Syntax {
        /// The manifest file.
        file: PathBuf,
        /// The parser's message, with the field path and location.
        reason: String,
    },
    /// A field has a value weft cannot run.
    #[error("manifest {file}: field {field}: {reason}")]
    Invalid {
        /// The manifest file.
        file: PathBuf,
        /// The field, as a JSON path (`spec.containers[0].name`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A Kubernetes `v1` `Pod`, restricted to the fields a node-local runtime uses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `apiVersion`, must be `v1`.
    #[serde(default)]
    pub api_version: String,
    /// `kind`, must be `Pod`.
    #[serde(default)]
    pub kind: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `spec`.
    pub spec: PodSpec,
}

/// `metadata` of a pod.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    #[serde(default)]
    pub namespace: String,
    /// `metadata.uid`; filled with a stable hash by [`parse_manifest`] when absent.
    #[serde(default)]
    pub uid: String,
    /// `metadata.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp` (RFC 3339), set by weft when the pod is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// `metadata.deletionTimestamp` (RFC 3339), set by weft while the pod stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
}

/// `spec` of a pod.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// `spec.initContainers`, run one at a time before the app containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    /// `spec.containers`, the app containers.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// `spec.volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// `spec.restartPolicy`.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// `spec.terminationGracePeriodSeconds`, 30 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u64>,
    /// `spec.hostname`, the pod name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `spec.nodeName`, filled with the node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `spec.securityContext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// `spec.hostNetwork`: the node's network (and UTS) namespace, no CNI call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// `spec.hostPID`: the node's PID namespace.
    #[serde(
        default,
        rename = "hostPID",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub host_pid: bool,
    /// `spec.hostIPC`: the node's IPC namespace.
    #[serde(
        default,
        rename = "hostIPC",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub host_ipc: bool,
}

impl PodSpec {
    /// The host namespaces the pod shares.
    pub fn host_namespaces(&self) -> HostNamespaces {
        HostNamespaces {
            network: self.host_network,
            pid: self.host_pid,
            ipc: self.host_ipc,
        }
    }
}

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum RestartPolicy {
    /// Restart every container that exits (the default).
    #[default]
    Always,
    /// Restart containers that exit non-zero.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// A container of `spec.containers` or `spec.initContainers`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// `name`, unique among all containers of the pod.
    #[serde(default)]
    pub name: String,
    /// `image`, `NAME[:TAG]` as imported into the image store.
    #[serde(default)]
    pub image: String,
    /// `command`; the image's entrypoint when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `args`; the image's cmd when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// `workingDir`; the image's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `ports` (informational: all containers share the pod's network namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// `volumeMounts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// `livenessProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// `readinessProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// `startupProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// `imagePullPolicy`: accepted; images are never pulled (they are imported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// `securityContext` (wins over the pod's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// `resources`: cpu and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// An entry of a container's `env`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// `name`.
    pub name: String,
    /// `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `valueFrom` (Downward API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// `env[].valueFrom`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    /// `fieldRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
    /// `resourceFieldRef`: a cpu or memory request or limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<ResourceFieldRef>,
}

/// `valueFrom.resourceFieldRef`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceFieldRef {
    /// The container whose resources are read (in `env`: this container when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// One of [`super::downward::RESOURCE_FIELDS`].
    pub resource: String,
    /// What the value is divided by (`1m`, `1Mi`, ...; `1` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divisor: Option<resources::Quantity>,
}

/// `valueFrom.fieldRef`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    /// `fieldPath`, one of [`DOWNWARD_FIELDS`].
    pub field_path: String,
    /// `apiVersion` (only `v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// The Downward API field paths weft resolves for `env[].valueFrom.fieldRef`.
pub const DOWNWARD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "status.podIP",
    "status.hostIP",
];

/// A container port.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// `containerPort`.
    pub container_port: u16,
    /// `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `protocol` (TCP, UDP, SCTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A container's `volumeMounts` entry.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// `name` of a pod volume.
    pub name: String,
    /// `mountPath`, absolute, inside the container.
    pub mount_path: String,
    /// `readOnly`.
    #[serde(default)]
    pub read_only: bool,
}

/// A pod volume.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// `name`.
    pub name: String,
    /// `emptyDir`: a per-pod directory, removed with the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirSource>,
    /// `hostPath`: a directory of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathSource>,
    /// `downwardAPI`: files holding the pod's own metadata.
    #[serde(
        default,
        rename = "downwardAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub downward_api: Option<DownwardApiSource>,
}

/// `volumes[].downwardAPI`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct DownwardApiSource {
    /// `items`: one file per field.
    #[serde(default)]
    pub items: Vec<DownwardApiFile>,
}

/// `volumes[].downwardAPI.items[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownwardApiFile {
    /// `path`, relative to the volume.
    pub path: String,
    /// `fieldRef`, one of [`DOWNWARD_VOLUME_FIELDS`] (this or `resourceFieldRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
    /// `resourceFieldRef`: a named container's cpu or memory request or limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<ResourceFieldRef>,
}

/// The field paths a `downwardAPI` volume can hold (labels and annotations one `key="value"` a line).
pub const DOWNWARD_VOLUME_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
];

/// `volumes[].emptyDir`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirSource {
    /// `medium` (`""` or `Memory`; both are a directory here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
}

/// `volumes[].hostPath`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPathSource {
    /// `path` on the node, absolute.
    pub path: String,
    /// `type`: `""`, `Directory`, `DirectoryOrCreate`, `File`, `FileOrCreate`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A liveness, readiness or startup probe.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// `exec`: run a command in the container; exit 0 is success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// `httpGet`: a 2xx/3xx answer on the pod IP is success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// `tcpSocket`: a TCP connect to the pod IP is success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    /// `initialDelaySeconds`.
    #[serde(default)]
    pub initial_delay_seconds: u64,
    /// `periodSeconds`, 10 when 0.
    #[serde(default)]
    pub period_seconds: u64,
    /// `timeoutSeconds`, 1 when 0.
    #[serde(default)]
    pub timeout_seconds: u64,
    /// `failureThreshold`, 3 when 0.
    #[serde(default)]
    pub failure_threshold: u32,
    /// `successThreshold`, 1 when 0.
    #[serde(default)]
    pub success_threshold: u32,
}

/// `probe.exec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct ExecAction {
    /// `command`.
    #[serde(default)]
    pub command: Vec<String>,
}

/// `probe.httpGet`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    /// `path`, `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `port`: a number or the name of a container port.
    pub port: PortRef,
}

/// `probe.tcpSocket`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct TcpSocketAction {
    /// `port`: a number or the name of a container port.
    pub port: PortRef,
}

/// A port given as a number or as the name of a container port (Kubernetes' IntOrString).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A container port's `name`.
    Name(String),
}

impl Default for PortRef {
    fn default() -> Self {
        PortRef::Number(0)
    }
}

/// The grace period used when `terminationGracePeriodSeconds` is absent.
pub const DEFAULT_GRACE_SECONDS: u64 = 30;

impl Pod {
    /// `namespace/name`, the key a pod is known by on this node.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// The init containers followed by the app containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.spec
            .init_containers
            .iter()
            .chain(self.spec.containers.iter())
    }

    /// The termination grace period in seconds (default 30).
    pub fn grace_seconds(&self) -> u64 {
        self.spec
            .termination_grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_SECONDS)
    }

    /// The pod's hostname (`spec.hostname`, else the pod name).
    pub fn hostname(&self) -> &str {
        self.spec.hostname.as_deref().unwrap_or(&self.metadata.name)
    }
}

impl Container {
    /// The port number a probe's [`PortRef`] designates, resolving names against `ports`.
    pub fn resolve_port(&self, port: &PortRef) -> Option<u16> {
        match port {
            PortRef::Number(0) => None,
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port),
        }
    }
}

/// A manifest that parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedManifest {
    /// The pod, namespace and UID filled in.
    pub pod: Pod,
    /// One line per ignored unknown field (`spec.containers[0].resources: unknown field, ignored`).
    pub warnings: Vec<String>,
    /// SHA-256 of the file's bytes, hex: a change restarts the pod.
    pub content_hash: String,
}

/// Whether `path` names a manifest file (`*.yaml`, `*.yml`, `*.json`, not hidden).
pub fn is_manifest_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("yaml" | "yml" | "json"))
}

/// The largest manifest weft reads (files and URL bodies): a Pod object is a few KiB, and
/// Kubernetes' API server refuses objects over 1.5 MiB.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// The parser's budgets for one manifest: a Pod nests about ten levels deep and holds a few
/// hundred nodes, so these refuse hostile input (deep `[[[`, alias bombs, many documents)
/// early while leaving real manifests far inside them.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 32;
    budget.flow_nesting_limit = 32;
    budget.max_documents = 1;
    budget.max_nodes = 100_000;
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_total_scalar_bytes = MAX_MANIFEST_BYTES;
    budget.max_reader_input_bytes = Some(MAX_MANIFEST_BYTES);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // The parser would quote the offending lines; a manifest may be a link to any file, so
    // errors carry the location only, never content.
    options.with_snippet = false;
    options
}

/// The parser's message without the values it quotes from the input (`string "…"`), so an
/// error never echoes file content.
fn redact_parser_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let quoted = &rest[i + "string \"".len()..];
        let mut end = quoted.len();
        let mut escaped = false;
        for (j, ch) in quoted.char_indices() {
            match ch {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &quoted[end.min(quoted.len())..];
    }
    out.push_str(rest);
    // One line, bounded: parser messages may carry more context than an operator needs.
    let line = out.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    line.chars().take(300).collect()
}

/// Parses and validates the manifest `file` whose content is `bytes`.
///
/// YAML and JSON are both read by the YAML parser (JSON is YAML), within [`yaml_options`]'
/// budgets and in time linear in the input. The namespace defaults to `default`; the UID,
/// when absent, is a hash of namespace, name, file and content, so it is stable while the
/// file is unchanged, as kubelet does for static pods.
pub fn parse_manifest(file: &Path, bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let syntax = |reason: String| ManifestError::Syntax {
        file: file.to_path_buf(),
        reason,
    };
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(syntax(format!(
            "{} bytes is over the {MAX_MANIFEST_BYTES}-byte limit",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| syntax(format!("not UTF-8: {e}")))?;
    let yaml_error = |e: serde_saphyr::Error| syntax(redact_parser_message(&e.to_string()));
    // The tree first: it shows whether the document is an object at all, and finds the
    // fields weft does not know.
    let tree: serde_json::Value =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(yaml_error)?;
    if !tree.is_object() {
        return Err(syntax(format!(
            "the document is {}, not a Pod object",
            json_kind(&tree)
        )));
    }
    // Typed from the tree, which is already within the budgets; the error names the field.
    let mut pod: Pod = serde_path_to_error::deserialize(&tree).map_err(|e| {
        let reason = redact_parser_message(&e.inner().to_string());
        match e.path().to_string() {
            root if root == "." => syntax(reason),
            field => ManifestError::Invalid {
                file: file.to_path_buf(),
                field,
                reason,
            },
        }
    })?;
    let mut warnings = Vec::new();
    unknown_fields(&tree, "", Shape::Pod, &mut warnings);
    let content_hash = hex(&Sha256::digest(bytes));
    // Both are the runtime's to set, as the API server does.
    pod.metadata.creation_timestamp = None;
    pod.metadata.deletion_timestamp = None;
    if pod.metadata.namespace.is_empty() {
        pod.metadata.namespace = "default".to_string();
    }
    validate(&pod).map_err(|(field, reason)| ManifestError::Invalid {
        file: file.to_path_buf(),
        field,
        reason,
    })?;
    if pod.metadata.uid.is_empty() {
        let mut h = Sha256::new();
        for part in [
            pod.metadata.namespace.as_bytes(),
            pod.metadata.name.as_bytes(),
            file.as_os_str().as_encoded_bytes(),
            bytes,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        pod.metadata.uid = uid_from_digest(&h.finalize());
    }
    Ok(ParsedManifest {
        pod,
        warnings,
        content_hash,
    })
}

/// "a string", "a list", … for an error about the document's top level.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "empty",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats the first 16 bytes of a digest as a UUID (8-4-4-4-12).
fn uid_from_digest(d: &[u8]) -> String {
    let h = hex(&d[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

type FieldError = (String, String);

fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, FieldError> {
    Err((field.into(), reason.into()))
}

/// A name check's error as `(field, reason)`.
fn name_error(e: LayoutError) -> FieldError {
    match e {
        LayoutError::InvalidName { field, value, rule } => {
            (field, format!("{value:?} is not {rule}"))
        }
        other => (String::new(), other.to_string()),
    }
}

fn validate(pod: &Pod) -> Result<(), FieldError> {
    if pod.api_version != "v1" {
        return err(
            "apiVersion",
            format!("must be \"v1\", got {:?}", pod.api_version),
        );
    }
    if pod.kind != "Pod" {
        return err("kind", format!("must be \"Pod\", got {:?}", pod.kind));
    }
    let meta = &pod.metadata;
    if meta.name.is_empty() {
        return err("metadata.name", "required");
    }
    // Namespace, name and UID name the pod's directories: the layout's rules apply.
    check_dns_subdomain("metadata.name", &meta.name).map_err(name_error)?;
    check_dns_label("metadata.namespace", &meta.namespace).map_err(name_error)?;
    if !meta.uid.is_empty() {
        check_uid("metadata.uid", &meta.uid).map_err(name_error)?;
    }
    // A generated UID is 36 characters: check the directory name with one that long.
    let uid = if meta.uid.is_empty() {
        "0".repeat(36)
    } else {
        meta.uid.clone()
    };
    PodId::new(&meta.namespace, &meta.name, &uid).map_err(name_error)?;
    if let Some(h) = &pod.spec.hostname {
        check_dns_label("spec.hostname", h).map_err(name_error)?;
    }
    if pod.spec.containers.is_empty() {
        return err("spec.containers", "at least one container is required");
    }
    if let Some(grace) = pod.spec.termination_grace_period_seconds {
        check_seconds("spec.terminationGracePeriodSeconds", grace)?;
    }
    if let Some(sc) = &pod.spec.security_context {
        security::validate_pod(sc, pod.spec.host_namespaces())?;
    }
    let containers: BTreeMap<&str, &Container> = pod
        .spec
        .init_containers
        .iter()
        .chain(&pod.spec.containers)
        .map(|c| (c.name.as_str(), c))
        .collect();
    let volumes = validate_volumes(&pod.spec.volumes, &containers)?;
    let mut names = BTreeSet::new();
    let groups = [
        ("spec.initContainers", &pod.spec.init_containers),
        ("spec.containers", &pod.spec.containers),
    ];
    for (group, containers) in groups {
        for (i, c) in containers.iter().enumerate() {
            let at = format!("{group}[{i}]");
            validate_container(&at, c, &volumes)?;
            if !names.insert(c.name.as_str()) {
                return err(
                    format!("{at}.name"),
                    format!("duplicate container name {:?}", c.name),
                );
            }
            if group == "spec.initContainers"
                && (c.liveness_probe.is_some()
                    || c.readiness_probe.is_some()
                    || c.startup_probe.is_some())
            {
                return err(at, "init containers may not have probes");
            }
        }
    }
    Ok(())
}

fn validate_volumes<'a>(
    volumes: &'a [Volume],
    containers: &BTreeMap<&str, &Container>,
) -> Result<BTreeSet<&'a str>, FieldError> {
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let at = format!("spec.volumes[{i}]");
        check_dns_label(&format!("{at}.name"), &v.name).map_err(name_error)?;
        if !names.insert(v.name.as_str()) {
            return err(
                format!("{at}.name"),
                format!("duplicate volume name {:?}", v.name),
            );
        }
        let sources = [
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.downward_api.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => {
                return err(
                    at,
                    "no supported volume source (supported: emptyDir, hostPath, downwardAPI)",
                )
            }
            1 => {}
            _ => {
                return err(
                    at,
                    "exactly one of emptyDir, hostPath, downwardAPI is allowed",
                )
            }
        }
        if let Some(hp) = &v.host_path {
            if !hp.path.starts_with('/') {
                return err(
                    format!("{at}.hostPath.path"),
                    format!("{:?} is not absolute", hp.path),
                );
            }
            let kinds = ["", "Directory", "DirectoryOrCreate", "File", "FileOrCreate"];
            if let Some(k) = &hp.kind {
                if !kinds.contains(&k.as_str()) {
                    return err(
                        format!("{at}.hostPath.type"),
                        format!("unsupported type {k:?} (supported: {kinds:?})"),
                    );
                }
            }
        }
        for (j, item) in v
            .downward_api
            .iter()
            .flat_map(|d| d.items.iter())
            .enumerate()
        {
            let at = format!("{at}.downwardAPI.items[{j}]");
            let p = Path::new(&item.path);
            let relative = !item.path.is_empty()
                && p.is_relative()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !relative {
                return err(
                    format!("{at}.path"),
                    format!("{:?} must be a relative path without '..'", item.path),
                );
            }
            match (&item.field_ref, &item.resource_field_ref) {
                (Some(f), None) => {
                    if !DOWNWARD_VOLUME_FIELDS.contains(&f.field_path.as_str()) {
                        return err(
                            format!("{at}.fieldRef.fieldPath"),
                            format!(
                                "unsupported field {:?} (supported: {DOWNWARD_VOLUME_FIELDS:?})",
                                f.field_path
                            ),
                        );
                    }
                }
                (None, Some(r)) => {
                    let at = format!("{at}.resourceFieldRef");
                    // In a volume there is no "this container": the kubelet requires the name.
                    let name = r.container_name.as_deref().unwrap_or_default();
                    let Some(c) = containers.get(name) else {
                        return err(
                            format!("{at}.containerName"),
                            format!("{name:?} names no container of this pod"),
                        );
                    };
                    let src = EnvVarSource {
                        field_ref: None,
                        resource_field_ref: Some(r.clone()),
                    };
                    check_resource_field(&at, &src, c)?;
                }
                _ => return err(at, "exactly one of fieldRef, resourceFieldRef is required"),
            }
        }
    }
    Ok(names)
}

/// Checks an env `resourceFieldRef`: a known resource, a divisor Kubernetes accepts, and no
/// other container than this one (a node without an API server resolves only its own).
fn check_resource_field(at: &str, src: &EnvVarSource, c: &Container) -> Result<(), FieldError> {
    let Some(r) = &src.resource_field_ref else {
        return Ok(());
    };
    if let Some(name) = r.container_name.as_deref().filter(|n| *n != c.name) {
        return err(
            format!("{at}.containerName"),
            format!("{name:?}: only the container's own resources can be read"),
        );
    }
    let probe = resources::ContainerResources::default();
    let node = super::downward::NodeAllocatable {
        cpu_milli: 1000,
        memory_bytes: 1,
    };
    super::downward::resource_field_value(&r.resource, r.divisor.as_ref(), &probe, node)
        .map(|_| ())
        .or_else(|e| err(at.to_string(), e.to_string()))
}

fn validate_container(at: &str, c: &Container, volumes: &BTreeSet<&str>) -> Result<(), FieldError> {
    check_dns_label(&format!("{at}.name"), &c.name).map_err(name_error)?;
    if c.image.trim().is_empty() {
        return err(format!("{at}.image"), "required");
    }
    normalize_name(&c.image).map_err(|e| (format!("{at}.image"), e.to_string()))?;
    if let Some(sc) = &c.security_context {
        security::validate_container(at, sc)?;
    }
    if let Some(r) = &c.resources {
        resources::validate(at, r)?;
    }
    if let Some(dir) = &c.working_dir {
        if !dir.starts_with('/') {
            return err(
                format!("{at}.workingDir"),
                format!("{dir:?} is not absolute"),
            );
        }
    }
    for (j, e) in c.env.iter().enumerate() {
        let at = format!("{at}.env[{j}]");
        if e.name.is_empty() || e.name.contains('=') {
            return err(format!("{at}.name"), format!("invalid name {:?}", e.name));
        }
        match (&e.value, &e.value_from) {
            (Some(_), Some(_)) => return err(at, "value and valueFrom are exclusive"),
            (_, Some(src)) => match &src.field_ref {
                None if src.resource_field_ref.is_some() => {
                    check_resource_field(&format!("{at}.valueFrom.resourceFieldRef"), src, c)?
                }
                Some(f) if DOWNWARD_FIELDS.contains(&f.field_path.as_str()) => {}
                Some(f) => {
                    return err(
                        format!("{at}.valueFrom.fieldRef.fieldPath"),
                        format!(
                            "unsupported field {:?} (supported: {DOWNWARD_FIELDS:?})",
                            f.field_path
                        ),
                    )
                }
                None => {
                    return err(
                        format!("{at}.valueFrom"),
                        "only fieldRef and resourceFieldRef are supported on a node without an API server",
                    )
                }
            },
            (_, None) => {}
        }
    }
    for (j, p) in c.ports.iter().enumerate() {
        if p.container_port == 0 {
            return err(
                format!("{at}.ports[{j}].containerPort"),
                "must be between 1 and 65535",
            );
        }
    }
    let mut paths = BTreeSet::new();
    for (j, m) in c.volume_mounts.iter().enumerate() {
        let at = format!("{at}.volumeMounts[{j}]");
        if !volumes.contains(m.name.as_str()) {
            return err(
                format!("{at}.name"),
                format!("no volume named {:?} in spec.volumes", m.name),
            );
        }
        if !m.mount_path.starts_with('/') {
            return err(
                format!("{at}.mountPath"),
                format!("{:?} is not absolute", m.mount_path),
            );
        }
        if !paths.insert(m.mount_path.as_str()) {
            return err(
                format!("{at}.mountPath"),
                format!("{:?} is mounted twice", m.mount_path),
            );
        }
    }
    let probes = [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ];
    for (kind, probe) in probes {
        if let Some(p) = probe {
            validate_probe(&format!("{at}.{kind}"), c, p)?;
        }
    }
    Ok(())
}

/// The most seconds a duration field takes: Kubernetes' int32 for probe timings, and the
/// same bound for the grace period, so that every deadline weft computes from one stays far
/// inside what a clock can hold (2^31 s is 68 years).
pub const MAX_SECONDS: u64 = i32::MAX as u64;

fn check_seconds(at: &str, value: u64) -> Result<(), FieldError> {
    if value > MAX_SECONDS {
        return err(at, format!("{value} is more than {MAX_SECONDS} seconds"));
    }
    Ok(())
}

fn validate_probe(at: &str, c: &Container, p: &Probe) -> Result<(), FieldError> {
    for (field, value) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("periodSeconds", p.period_seconds),
        ("timeoutSeconds", p.timeout_seconds),
    ] {
        check_seconds(&format!("{at}.{field}"), value)?;
    }
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
    ];
    if handlers.iter().filter(|h| **h).count() != 1 {
        return err(at, "exactly one of exec, httpGet, tcpSocket is required");
    }
    if let Some(e) = &p.exec {
        if e.command.is_empty() {
            return err(format!("{at}.exec.command"), "required");
        }
    }
    let port = match (&p.http_get, &p.tcp_socket) {
        (Some(h), _) => Some(("httpGet", &h.port)),
        (_, Some(t)) => Some(("tcpSocket", &t.port)),
        _ => None,
    };
    if let Some((kind, port)) = port {
        if c.resolve_port(port).is_none() {
            return err(
                format!("{at}.{kind}.port"),
                format!("{port:?} is neither a port number nor a named container port"),
            );
        }
    }
    Ok(())
}

/// The object types of the schema, to find the fields weft does not know.
#[derive(Clone, Copy)]
enum Shape {
    Pod,
    Meta,
    Spec,
    Container,
    Env,
    ValueFrom,
    FieldRef,
    ResourceFieldRef,
    Port,
    Mount,
    Volume,
    DownwardApi,
    DownwardItem,
    EmptyDir,
    HostPath,
    Probe,
    Exec,
    HttpGet,
    TcpSocket,
}

/// How a known field's value is shaped: a leaf, an object, or a list of objects.
enum Field {
    Leaf,
    Obj(Shape),
    List(Shape),
}

fn known_fields(shape: Shape) -> &'static [(&'static str, Field)] {
    use Field::{Leaf, List, Obj};
    match shape {
        Shape::Pod => &[
            ("apiVersion", Leaf),
            ("kind", Leaf),
            ("metadata", Obj(Shape::Meta)),
            ("spec", Obj(Shape::Spec)),
        ],
        Shape::Meta => &[
            ("name", Leaf),
            ("namespace", Leaf),
            ("uid", Leaf),
            ("labels", Leaf),
            ("annotations", Leaf),
            ("creationTimestamp", Leaf),
            ("deletionTimestamp", Leaf),
        ],
        Shape::Spec => &[
            ("initContainers", List(Shape::Container)),
            ("containers", List(Shape::Container)),
            ("volumes", List(Shape::Volume)),
            ("restartPolicy", Leaf),
            ("terminationGracePeriodSeconds", Leaf),
            ("hostname", Leaf),
            ("nodeName", Leaf),
            // Checked field by field by the typed parser (unknown fields there are errors).
            ("securityContext", Leaf),
            ("hostNetwork", Leaf),
            ("hostPID", Leaf),
            ("hostIPC", Leaf),
        ],
        Shape::Container => &[
            ("name", Leaf),
            ("image", Leaf),
            ("command", Leaf),
            ("args", Leaf),
            ("env", List(Shape::Env)),
            ("workingDir", Leaf),
            ("ports", List(Shape::Port)),
            ("volumeMounts", List(Shape::Mount)),
            ("livenessProbe", Obj(Shape::Probe)),
            ("readinessProbe", Obj(Shape::Probe)),
            ("startupProbe", Obj(Shape::Probe)),
            ("imagePullPolicy", Leaf),
            ("securityContext", Leaf),
            ("resources", Leaf),
        ],
        Shape::Env => &[
            ("name", Leaf),
            ("value", Leaf),
            ("valueFrom", Obj(Shape::ValueFrom)),
        ],
        Shape::ValueFrom => &[
            ("fieldRef", Obj(Shape::FieldRef)),
            ("resourceFieldRef", Obj(Shape::ResourceFieldRef)),
        ],
        Shape::ResourceFieldRef => &[
            ("containerName", Leaf),
            ("resource", Leaf),
            ("divisor", Leaf),
        ],
        Shape::FieldRef => &[("fieldPath", Leaf), ("apiVersion", Leaf)],
        Shape::Port => &[("containerPort", Leaf), ("name", Leaf), ("protocol", Leaf)],
        Shape::Mount => &[("name", Leaf), ("mountPath", Leaf), ("readOnly", Leaf)],
        Shape::Volume => &[
            ("name", Leaf),
            ("emptyDir", Obj(Shape::EmptyDir)),
            ("hostPath", Obj(Shape::HostPath)),
            ("downwardAPI", Obj(Shape::DownwardApi)),
        ],
        Shape::DownwardApi => &[("items", List(Shape::DownwardItem))],
        Shape::DownwardItem => &[
            ("path", Leaf),
            ("fieldRef", Obj(Shape::FieldRef)),
            ("resourceFieldRef", Obj(Shape::ResourceFieldRef)),
        ],
        Shape::EmptyDir => &[("medium", Leaf)],
        Shape::HostPath => &[("path", Leaf), ("type", Leaf)],
        Shape::Probe => &[
            ("exec", Obj(Shape::Exec)),
            ("httpGet", Obj(Shape::HttpGet)),
            ("tcpSocket", Obj(Shape::TcpSocket)),
            ("initialDelaySeconds", Leaf),
            ("periodSeconds", Leaf),
            ("timeoutSeconds", Leaf),
            ("failureThreshold", Leaf),
            ("successThreshold", Leaf),
        ],
        Shape::Exec => &[("command", Leaf)],
        Shape::HttpGet => &[("path", Leaf), ("port", Leaf)],
        Shape::TcpSocket => &[("port", Leaf)],
    }
}

/// Collects `path: unknown field, ignored` for every field of `value` the schema lacks.
fn unknown_fields(value: &serde_json::Value, at: &str, shape: Shape, out: &mut Vec<String>) {
    let Some(map) = value.as_object() else {
        return;
    };
    let fields = known_fields(shape);
    for (key, v) in map {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match fields.iter().find(|(name, _)| *name == key) {
            None => out.push(format!("{path}: unknown field, ignored")),
            Some((_, Field::Leaf)) => {}
            Some((_, Field::Obj(s))) => unknown_fields(v, &path, *s, out),
            Some((_, Field::List(s))) => {
                for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                    unknown_fields(item, &format!("{path}[{i}]"), *s, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ParsedManifest, ManifestError> {
        parse_manifest(Path::new("/etc/weft/manifests/p.yaml"), text.as_bytes())
    }

    fn invalid_field(text: &str) -> String {
        match parse(text) {
            Err(ManifestError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid-field error, got {other:?}"),
        }
    }

    const MYAPP: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: myapp-pod
  labels:
    app: myapp
spec:
  containers:
    - name: myapp-container
      image: busybox
      command: ["sh", "-c", "echo Hello Kubernetes! && sleep 3600"]
"#;

    #[test]
    fn resource_field_refs_are_checked() {
        let pod = |env: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n    - name: app\n      image: busybox\n      env: [{{name: X, valueFrom: {{resourceFieldRef: {env}}}}}]\n")
        };
        let parse = |env: &str| parse_manifest(Path::new("/m/p.yaml"), pod(env).as_bytes());
        assert!(parse("{resource: limits.memory, divisor: 1Mi}").is_ok());
        assert!(parse("{resource: requests.cpu, divisor: 1m, containerName: app}").is_ok());
        for (env, want) in [
            (
                "{resource: limits.memory, divisor: 3Mi}",
                "divisor \"3Mi\" is not valid",
            ),
            (
                "{resource: limits.storage}",
                "\"limits.storage\" is not supported",
            ),
            (
                "{resource: limits.cpu, containerName: other}",
                "containerName",
            ),
        ] {
            let e = match parse(env) {
                Ok(_) => panic!("{env} accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(want), "{env}: {e}");
        }
    }

    #[test]
    fn parses_the_classic_myapp_pod_with_defaults() {
        let m = parse(MYAPP).unwrap();
        assert_eq!(m.pod.full_name(), "default/myapp-pod");
        assert_eq!(m.pod.spec.restart_policy, RestartPolicy::Always);
        assert_eq!(m.pod.grace_seconds(), 30);
        assert_eq!(m.pod.hostname(), "myapp-pod");
        assert_eq!(m.pod.metadata.labels["app"], "myapp");
        let c = &m.pod.spec.containers[0];
        assert_eq!(c.image, "busybox");
        assert_eq!(
            c.command.as_deref().unwrap()[2],
            "echo Hello Kubernetes! && sleep 3600"
        );
        assert!(c.args.is_none());
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        assert_eq!(m.content_hash.len(), 64);
    }

    #[test]
    fn json_manifests_parse_like_yaml() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"kube-system"},
            "spec":{"restartPolicy":"Never","terminationGracePeriodSeconds":5,
            "containers":[{"name":"c","image":"busybox:1.36","args":["sleep","1"]}]}}"#;
        let m = parse_manifest(Path::new("/m/j.json"), json.as_bytes()).unwrap();
        assert_eq!(m.pod.full_name(), "kube-system/j");
        assert_eq!(m.pod.spec.restart_policy, RestartPolicy::Never);
        assert_eq!(m.pod.grace_seconds(), 5);
    }

    #[test]
    fn uid_is_stable_for_the_same_file_and_changes_with_content() {
        let a = parse(MYAPP).unwrap().pod.metadata.uid;
        let b = parse(MYAPP).unwrap().pod.metadata.uid;
        assert_eq!(a, b);
        assert_eq!(a.len(), 36);
        let changed = MYAPP.replace("3600", "3601");
        assert_ne!(parse(&changed).unwrap().pod.metadata.uid, a);
        let other_file = parse_manifest(Path::new("/m/other.yaml"), MYAPP.as_bytes()).unwrap();
        assert_ne!(other_file.pod.metadata.uid, a);
        let explicit = MYAPP.replace("  labels:", "  uid: 1234-abcd\n  labels:");
        assert_eq!(parse(&explicit).unwrap().pod.metadata.uid, "1234-abcd");
    }

    #[test]
    fn security_context_and_resources_are_typed_and_checked() {
        let text = MYAPP.replace(
            "      image: busybox",
            "      image: busybox\n      securityContext: {runAsUser: 1000, capabilities: {drop: [ALL]}}\n      resources: {limits: {cpu: 100m, memory: 32Mi}}",
        ) + "  hostNetwork: true\n  securityContext: {runAsNonRoot: true}\n";
        let m = parse(&text).unwrap();
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        assert!(m.pod.spec.host_network);
        let c = &m.pod.spec.containers[0];
        assert_eq!(
            c.security_context.as_ref().and_then(|s| s.run_as_user),
            Some(1000)
        );
        assert!(c.resources.as_ref().is_some_and(|r| r.limits.len() == 2));
        // A misspelt field inside securityContext must not silently run the container unconfined.
        let typo = MYAPP.replace(
            "      image: busybox",
            "      image: busybox\n      securityContext: {capabilities: {dorp: [ALL]}}",
        );
        let e = parse(&typo).unwrap_err().to_string();
        assert!(e.contains("dorp"), "{e}");
        let bad = MYAPP.replace(
            "      image: busybox",
            "      image: busybox\n      resources: {limits: {memory: 12 apples}}",
        );
        let e = parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("spec.containers[0].resources.limits.memory"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_warnings_with_their_path() {
        let text = MYAPP.replace(
            "      image: busybox",
            "      image: busybox\n      stdin: true\n      tty: true",
        ) + "status:\n  phase: Running\n";
        let m = parse(&text).unwrap();
        assert_eq!(
            m.warnings,
            vec![
                "spec.containers[0].stdin: unknown field, ignored",
                "spec.containers[0].tty: unknown field, ignored",
                "status: unknown field, ignored",
            ]
        );
    }

    #[test]
    fn type_errors_name_the_field() {
        let text = MYAPP.replace(
            "      image: busybox",
            "      image: busybox\n      ports: 80",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest /etc/weft/manifests/p.yaml: field spec.containers[0].ports: \
             invalid type: integer `80`, expected a sequence"
        );
        let broken = parse("metadata: {name: [x\n").unwrap_err().to_string();
        assert!(broken.contains("line"), "{broken}");
    }

    #[test]
    fn errors_never_quote_file_content() {
        let secret = "s3cr3t-MARKER-value";
        for text in [
            format!("{secret}\n"),
            format!("root:x:0:0:{secret}:/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\n"),
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec: {secret}\n"),
            format!("apiVersion: v1\nkind: Pod\nmetadata: \"{secret}\"\n"),
            format!("- {secret}\n"),
            format!("{secret}: [\n"),
            format!("*{secret}\n"),
            format!("a: *{secret}\n"),
            format!("!{secret} x\n"),
            format!("\"{secret}\n"),
            format!("'{secret}\n"),
            format!("%{secret} 1\n"),
            format!("@{secret}\n"),
            format!("`{secret}\n"),
            format!("{{\"a\": \"{secret}\\q\"}}\n"),
            format!("a: |{secret}\n  x\n"),
            format!("a: 1\n{secret}\n"),
            format!("{secret}:\n  - a\n b\n"),
        ] {
            let msg = parse(&text).unwrap_err().to_string();
            assert!(!msg.contains(secret), "{msg}");
            assert!(
                msg.starts_with("manifest /etc/weft/manifests/p.yaml: "),
                "{msg}"
            );
        }
        let msg = parse(&format!("{secret}\n")).unwrap_err().to_string();
        assert_eq!(
            msg,
            "manifest /etc/weft/manifests/p.yaml: the document is a string, not a Pod object"
        );
    }

    #[test]
    fn deep_nesting_is_refused_at_once() {
        // The input that kept the previous parser busy for half a minute.
        let nested = "[".repeat(100 * 1024);
        let started = std::time::Instant::now();
        let e = parse(&nested).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, ManifestError::Syntax { .. }), "{e}");
        eprintln!("100 KiB of '[' refused in {took:?}: {e}");
        let deep_block = (0..200)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect::<String>();
        assert!(parse(&deep_block).is_err());
    }

    #[test]
    fn oversize_and_multi_document_input_is_refused() {
        let big = format!("{MYAPP}# {}\n", "x".repeat(MAX_MANIFEST_BYTES));
        let msg = parse(&big).unwrap_err().to_string();
        assert!(msg.contains("over the 1048576-byte limit"), "{msg}");
        let two = format!("{MYAPP}---\n{MYAPP}");
        assert!(parse(&two).is_err());
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
        assert!(parse(bomb).is_err());
    }

    #[test]
    fn invalid_values_name_the_field() {
        assert_eq!(
            invalid_field(&MYAPP.replace("apiVersion: v1", "apiVersion: v2")),
            "apiVersion"
        );
        assert_eq!(
            invalid_field(&MYAPP.replace("name: myapp-pod", "name: My_App")),
            "metadata.name"
        );
        assert_eq!(
            invalid_field(&MYAPP.replace("image: busybox", "image: \"\"")),
            "spec.containers[0].image"
        );
        let e = parse(&MYAPP.replace("image: busybox", "image: a/../..:1")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest /etc/weft/manifests/p.yaml: field spec.containers[0].image: image name \
             \"a/../..:1\": repository must be components of lowercase alphanumerics joined by \
             '.', '_', '__' or '-' runs, separated by '/'"
        );
        assert_eq!(
            invalid_field(&MYAPP.replace("myapp-container", "Bad Name")),
            "spec.containers[0].name"
        );
        let no_containers = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {}\n";
        assert_eq!(invalid_field(no_containers), "spec.containers");
        let e = parse(&MYAPP.replace("name: myapp-pod", "name: \"\"")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest /etc/weft/manifests/p.yaml: field metadata.name: required"
        );
        // Durations a deadline is computed from: bounded (a huge one overflowed the clock and
        // panicked the pod's teardown, leaving it behind for good).
        let huge = "9223372036854775807";
        let e = parse(&MYAPP.replace(
            "spec:\n",
            &format!("spec:\n  terminationGracePeriodSeconds: {huge}\n"),
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "manifest /etc/weft/manifests/p.yaml: field spec.terminationGracePeriodSeconds: \
                 {huge} is more than 2147483647 seconds"
            )
        );
        for field in ["initialDelaySeconds", "periodSeconds", "timeoutSeconds"] {
            let probe = format!(
                "      livenessProbe: {{exec: {{command: [\"true\"]}}, {field}: {huge}}}\n"
            );
            let e = parse(&(MYAPP.to_string() + &probe)).unwrap_err();
            assert!(
                e.to_string().contains(&format!(
                    "field spec.containers[0].livenessProbe.{field}: {huge} is more than"
                )),
                "{e}"
            );
        }
        let fine = MYAPP.replace(
            "spec:\n",
            "spec:\n  terminationGracePeriodSeconds: 2147483647\n",
        );
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn names_that_become_paths_follow_kubernetes_rules() {
        let with_uid =
            |uid: &str| MYAPP.replace("  labels:", &format!("  uid: {uid:?}\n  labels:"));
        let e = parse(&with_uid("../../../../../victim")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest /etc/weft/manifests/p.yaml: field metadata.uid: \"../../../../../victim\" \
             is not a valid UID (lowercase alphanumerics and '-', at most 63 characters)"
        );
        for uid in ["a/b", "A", "x_y", &"1".repeat(64)] {
            assert_eq!(invalid_field(&with_uid(uid)), "metadata.uid", "{uid}");
        }
        let long = format!(
            "{}.{}.{}.{}",
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(60),
            "d".repeat(60)
        );
        assert_eq!(
            invalid_field(&MYAPP.replace("name: myapp-pod", &format!("name: {long}"))),
            "metadata.name"
        );
        let ns = |n: &str| MYAPP.replace("  labels:", &format!("  namespace: {n:?}\n  labels:"));
        assert_eq!(invalid_field(&ns("..")), "metadata.namespace");
        assert_eq!(invalid_field(&ns("a.b")), "metadata.namespace");
        assert_eq!(
            invalid_field(&MYAPP.replace("name: myapp-pod", "name: \"../x\"")),
            "metadata.name"
        );
        assert_eq!(
            invalid_field(&INIT.replace("- name: work\n", "- name: \"../w\"\n")),
            "spec.volumes[0].name"
        );
    }

    #[test]
    fn restart_policy_must_be_one_of_three() {
        let text = MYAPP.replace("spec:\n", "spec:\n  restartPolicy: Sometimes\n");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("spec.restartPolicy"), "{msg}");
        assert!(msg.contains("Sometimes"), "{msg}");
    }

    const INIT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: init-demo}
spec:
  volumes:
    - name: work
      emptyDir: {}
    - name: host
      hostPath: {path: /srv/data, type: DirectoryOrCreate}
  initContainers:
    - name: first
      image: busybox
      volumeMounts: [{name: work, mountPath: /work}]
    - name: second
      image: busybox
      volumeMounts: [{name: work, mountPath: /work}]
  containers:
    - name: app
      image: busybox
      env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: PLAIN, value: x}
      ports: [{name: http, containerPort: 8080}]
      volumeMounts:
        - {name: work, mountPath: /work, readOnly: true}
        - {name: host, mountPath: /data}
      readinessProbe: {httpGet: {path: /, port: http}}
      livenessProbe: {tcpSocket: {port: 8080}}
"#;

    #[test]
    fn init_containers_volumes_downward_env_and_probes_parse() {
        let m = parse(INIT).unwrap();
        let names: Vec<_> = m.pod.all_containers().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["first", "second", "app"]);
        let app = &m.pod.spec.containers[0];
        assert!(app.volume_mounts[0].read_only);
        let fr = app.env[1].value_from.as_ref().unwrap().field_ref.as_ref();
        assert_eq!(fr.unwrap().field_path, "status.podIP");
        let http = app.readiness_probe.as_ref().unwrap().http_get.as_ref();
        assert_eq!(app.resolve_port(&http.unwrap().port), Some(8080));
        assert_eq!(
            m.pod.spec.volumes[1]
                .host_path
                .as_ref()
                .unwrap()
                .kind
                .as_deref(),
            Some("DirectoryOrCreate")
        );
    }

    #[test]
    fn references_between_fields_are_checked() {
        assert_eq!(
            invalid_field(&INIT.replace(
                "{name: host, mountPath: /data}",
                "{name: nope, mountPath: /data}"
            )),
            "spec.containers[0].volumeMounts[1].name"
        );
        assert_eq!(
            invalid_field(&INIT.replace(
                "fieldPath: metadata.name",
                "fieldPath: spec.serviceAccountName"
            )),
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath"
        );
        assert_eq!(
            invalid_field(&INIT.replace("port: http", "port: https")),
            "spec.containers[0].readinessProbe.httpGet.port"
        );
        assert_eq!(
            invalid_field(&INIT.replace("name: second", "name: app")),
            "spec.containers[0].name"
        );
        assert_eq!(
            invalid_field(&INIT.replace("path: /srv/data", "path: srv/data")),
            "spec.volumes[1].hostPath.path"
        );
        assert_eq!(
            invalid_field(&INIT.replace("emptyDir: {}", "configMap: {name: x}")),
            "spec.volumes[0]"
        );
    }

    #[test]
    fn downward_api_volumes_are_validated() {
        let text = INIT.replace(
            "    - name: host\n      hostPath: {path: /srv/data, type: DirectoryOrCreate}\n",
            "    - name: host\n      downwardAPI:\n        items:\n          - {path: labels, fieldRef: {fieldPath: metadata.labels}}\n",
        );
        let m = parse(&text).unwrap();
        let d = m.pod.spec.volumes[1].downward_api.as_ref().unwrap();
        assert_eq!(
            d.items[0].field_ref.as_ref().unwrap().field_path,
            "metadata.labels"
        );
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        assert_eq!(
            invalid_field(&text.replace("path: labels", "path: ../x")),
            "spec.volumes[1].downwardAPI.items[0].path"
        );
        assert_eq!(
            invalid_field(&text.replace("metadata.labels", "status.podIP")),
            "spec.volumes[1].downwardAPI.items[0].fieldRef.fieldPath"
        );
        // A resourceFieldRef names a container of the pod and a valid resource and divisor.
        let res = |r: &str| {
            text.replace(
                "fieldRef: {fieldPath: metadata.labels}",
                &format!("resourceFieldRef: {{{r}}}"),
            )
        };
        parse(&res(
            "containerName: app, resource: limits.memory, divisor: 1Mi",
        ))
        .unwrap();
        let at = "spec.volumes[1].downwardAPI.items[0].resourceFieldRef";
        assert_eq!(
            invalid_field(&res("resource: limits.memory")),
            format!("{at}.containerName")
        );
        assert_eq!(
            invalid_field(&res("containerName: nope, resource: limits.memory")),
            format!("{at}.containerName")
        );
        assert_eq!(
            invalid_field(&res(
                "containerName: app, resource: limits.memory, divisor: 1m"
            )),
            at
        );
        assert_eq!(
            invalid_field(&res("containerName: app, resource: limits.gpu")),
            at
        );
        assert_eq!(
            invalid_field(&text.replace(
                "fieldRef: {fieldPath: metadata.labels}",
                "fieldRef: {fieldPath: metadata.labels}, resourceFieldRef: {containerName: app, resource: limits.cpu}"
            )),
            "spec.volumes[1].downwardAPI.items[0]"
        );
    }

    #[test]
    fn restart_policies_decide_on_exit_codes() {
        assert!(RestartPolicy::Always.restarts(0));
        assert!(RestartPolicy::Always.restarts(1));
        assert!(!RestartPolicy::OnFailure.restarts(0));
        assert!(RestartPolicy::OnFailure.restarts(137));
        assert!(!RestartPolicy::Never.restarts(1));
    }

    #[test]
    fn manifest_files_are_yaml_yml_json_and_not_hidden() {
        assert!(is_manifest_file(Path::new("/m/a.yaml")));
        assert!(is_manifest_file(Path::new("/m/a.yml")));
        assert!(is_manifest_file(Path::new("/m/a.json")));
        assert!(!is_manifest_file(Path::new("/m/a.yaml.swp")));
        assert!(!is_manifest_file(Path::new("/m/.a.yaml")));
        assert!(!is_manifest_file(Path::new("/m/README")));
    }

    #[test]
    fn serializes_back_to_kubernetes_field_names() {
        let m = parse(INIT).unwrap();
        let v = serde_json::to_value(&m.pod).unwrap();
        assert_eq!(v["spec"]["initContainers"][1]["name"], "second");
        assert_eq!(
            v["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/work"
        );
        assert_eq!(v["spec"]["restartPolicy"], "Always");
        assert_eq!(v["metadata"]["namespace"], "default");
    }
}
