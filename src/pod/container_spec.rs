//! What a container of a pod is made of, assembled from the manifest and the node: its volumes
//! on disk (emptyDir, Downward API, fsGroup ownership, hostPath types), its mounts, its env with
//! Downward API references resolved, and the whole [`ContainerSpec`] the OCI runtime starts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::bundle::{container_user, ContainerSpec, MountSpec};
use super::config::PodConfig;
use super::downward;
use super::image::Image;
use super::layout::{container_id, PodId, PodLayout};
use super::manifest::{Container, Pod, ResourceFieldRef};
use super::resources::{self, ContainerResources, QosClass};
use super::seccomp;
use super::security::{self, Seccomp};
use super::worker_error::WorkerError;

/// What every container of one pod is assembled from.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    /// The node's pod runtime settings.
    pub cfg: &'a PodConfig,
    /// The pod (with `spec.nodeName` set).
    pub pod: &'a Pod,
    /// Its checked identity.
    pub id: &'a PodId,
    /// Where its files live.
    pub layout: &'a PodLayout,
    /// Its address, once the network is attached.
    pub pod_ip: Option<IpAddr>,
    /// Its QoS class.
    pub qos: QosClass,
    /// The node's memory, for `oom_score_adj`.
    pub memory_capacity: u64,
}

impl PodContext<'_> {
    /// The spec of run `restart` of `c` from `image` (the runtime state of an earlier run with
    /// the same id is the caller's to remove).
    pub fn container_spec(
        &self,
        c: &Container,
        restart: u32,
        image: Image,
    ) -> Result<ContainerSpec, WorkerError> {
        let mounts = self.mounts(c)?;
        let security = security::effective(
            self.pod.spec.security_context.as_ref(),
            c.security_context.as_ref(),
            self.pod.spec.host_namespaces(),
            self.cfg.seccomp_default,
        );
        let seccomp = match &security.seccomp {
            Seccomp::RuntimeDefault => Some(seccomp::runtime_default(
                &security.capabilities,
                std::env::consts::ARCH,
            )),
            Seccomp::Unconfined => None,
            Seccomp::Localhost(name) => Some(seccomp::localhost(&self.cfg.seccomp_root, name)?),
        };
        let resources = ContainerResources::of(c.resources.as_ref());
        let layout_err = |source| WorkerError::Layout {
            what: format!("container {}", c.name),
            source,
        };
        let id = container_id(self.id, &c.name, restart).map_err(layout_err)?;
        let log_path = self
            .layout
            .container_log(self.id, &c.name, restart)
            .map_err(layout_err)?;
        let spec = ContainerSpec {
            id,
            pod_id: self.id.dir_name(),
            name: c.name.clone(),
            image,
            command: c.command.clone().unwrap_or_default(),
            args: c.args.clone().unwrap_or_default(),
            env: self.env(c),
            working_dir: c.working_dir.clone(),
            mounts,
            hostname: self.pod.hostname().to_string(),
            log_path,
            oom_score_adj: resources::oom_score_adj(self.qos, &resources, self.memory_capacity),
            security,
            seccomp,
            resources,
            pids_limit: self.cfg.pids_limit,
        };
        container_user(&spec)?;
        Ok(spec)
    }

    /// Creates the pod's emptyDir and Downward API volumes, owned by `fsGroup` when set.
    pub fn create_volumes(&self) -> Result<(), WorkerError> {
        let fs_group = self
            .pod
            .spec
            .security_context
            .as_ref()
            .and_then(|s| s.fs_group)
            .and_then(|g| u32::try_from(g).ok());
        let layout_err = |what: String| move |source| WorkerError::Layout { what, source };
        for v in &self.pod.spec.volumes {
            if let (Some(gid), true) = (fs_group, v.empty_dir.is_some() || v.downward_api.is_some())
            {
                let root = self
                    .layout
                    .volume_dir(self.id, &v.name)
                    .map_err(layout_err(format!("fsGroup {gid} on volume {}", v.name)))?;
                std::fs::create_dir_all(&root)
                    .and_then(|()| set_volume_group(&root, gid))
                    .map_err(|source| WorkerError::Io {
                        op: format!("fsGroup {gid} on volume {}", v.name),
                        path: root.clone(),
                        source,
                    })?;
            }
            if let Some(d) = &v.downward_api {
                let what = format!("downwardAPI volume {}", v.name);
                let root = self
                    .layout
                    .volume_dir(self.id, &v.name)
                    .map_err(layout_err(what.clone()))?;
                for item in &d.items {
                    let path = self
                        .layout
                        .volume_file(self.id, &v.name, &item.path)
                        .map_err(layout_err(what.clone()))?;
                    let text = match (&item.field_ref, &item.resource_field_ref) {
                        (Some(f), _) => downward_file(self.pod, &f.field_path),
                        (None, Some(r)) => self.volume_resource_field(r),
                        (None, None) => String::new(),
                    };
                    path.parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| std::fs::write(&path, text))
                        .and_then(|()| fs_group.map_or(Ok(()), |gid| set_volume_group(&root, gid)))
                        .map_err(|source| WorkerError::Io {
                            op: format!("write downwardAPI volume {} file", v.name),
                            path: path.clone(),
                            source,
                        })?;
                }
                continue;
            }
            if v.empty_dir.is_some() {
                let path = self
                    .layout
                    .volume_dir(self.id, &v.name)
                    .map_err(layout_err(format!("emptyDir {}", v.name)))?;
                std::fs::create_dir_all(&path)
                    .and_then(|()| {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                    })
                    .and_then(|()| fs_group.map_or(Ok(()), |gid| set_volume_group(&path, gid)))
                    .map_err(|source| WorkerError::Io {
                        op: format!("create emptyDir {}", v.name),
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// The container's volume mounts, hostPath sources made to exist as their type asks.
    pub fn mounts(&self, c: &Container) -> Result<Vec<MountSpec>, WorkerError> {
        let mut out = Vec::new();
        for m in &c.volume_mounts {
            let v = self
                .pod
                .spec
                .volumes
                .iter()
                .find(|v| v.name == m.name)
                .ok_or_else(|| WorkerError::Volume(format!("volume {} not found", m.name)))?;
            let source = if v.empty_dir.is_some() || v.downward_api.is_some() {
                self.layout
                    .volume_dir(self.id, &v.name)
                    .map_err(|source| WorkerError::Layout {
                        what: format!("volume {}", v.name),
                        source,
                    })?
            } else if let Some(hp) = &v.host_path {
                prepare_host_path(&hp.path, hp.kind.as_deref().unwrap_or("")).map_err(
                    |problem| WorkerError::HostPath {
                        volume: v.name.clone(),
                        path: hp.path.clone(),
                        problem,
                    },
                )?;
                PathBuf::from(&hp.path)
            } else {
                return Err(WorkerError::Volume(format!(
                    "volume {} has no source",
                    v.name
                )));
            };
            out.push(MountSpec {
                source,
                destination: m.mount_path.clone(),
                // Downward API files are the runtime's to write, as in Kubernetes.
                read_only: m.read_only || v.downward_api.is_some(),
            });
        }
        Ok(out)
    }

    /// The container's env with Downward API references resolved.
    pub fn env(&self, c: &Container) -> Vec<(String, String)> {
        let meta = &self.pod.metadata;
        c.env
            .iter()
            .map(|e| {
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.as_str());
                let value = match field {
                    Some("metadata.name") => meta.name.clone(),
                    Some("metadata.namespace") => meta.namespace.clone(),
                    Some("metadata.uid") => meta.uid.clone(),
                    Some("spec.nodeName") => self.cfg.node_name.clone(),
                    Some("status.podIP") => {
                        self.pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
                    }
                    Some("status.hostIP") => self
                        .cfg
                        .host_ip
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                    _ => match e
                        .value_from
                        .as_ref()
                        .and_then(|v| v.resource_field_ref.as_ref())
                    {
                        Some(r) => self.resource_field(c, r),
                        None => e.value.clone().unwrap_or_default(),
                    },
                };
                (e.name.clone(), value)
            })
            .collect()
    }

    /// A validated volume `resourceFieldRef` on this node.
    fn volume_resource_field(&self, r: &ResourceFieldRef) -> String {
        downward_resource_file(self.pod, r, self.node_allocatable())
    }

    /// What unset limits become: the node's cpus and memory.
    fn node_allocatable(&self) -> downward::NodeAllocatable {
        downward::NodeAllocatable {
            cpu_milli: std::thread::available_parallelism().map_or(1000, |n| n.get() as u64 * 1000),
            memory_bytes: self.memory_capacity,
        }
    }

    /// A validated `resourceFieldRef` of `c`; unset limits are the node's cpus and memory.
    fn resource_field(&self, c: &Container, r: &ResourceFieldRef) -> String {
        let res = ContainerResources::of(c.resources.as_ref());
        downward::resource_field_value(
            &r.resource,
            r.divisor.as_ref(),
            &res,
            self.node_allocatable(),
        )
        .unwrap_or_default()
    }
}

/// The content of a `downwardAPI` volume file for a validated `resourceFieldRef`: the named
/// container's value, divided and rounded up as for env (no trailing newline, as the kubelet).
pub fn downward_resource_file(
    pod: &Pod,
    r: &ResourceFieldRef,
    node: downward::NodeAllocatable,
) -> String {
    let name = r.container_name.as_deref().unwrap_or_default();
    pod.spec
        .init_containers
        .iter()
        .chain(&pod.spec.containers)
        .find(|c| c.name == name)
        .and_then(|c| {
            let res = ContainerResources::of(c.resources.as_ref());
            downward::resource_field_value(&r.resource, r.divisor.as_ref(), &res, node).ok()
        })
        .unwrap_or_default()
}

/// The content of a `downwardAPI` volume file for `field` (labels and annotations: one
/// `key="value"` a line, sorted, as the kubelet writes them).
pub fn downward_file(pod: &Pod, field: &str) -> String {
    let pairs = |map: &BTreeMap<String, String>| -> String {
        map.iter()
            .map(|(k, v)| format!("{k}={}\n", serde_json::Value::String(v.clone())))
            .collect()
    };
    match field {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "metadata.labels" => pairs(&pod.metadata.labels),
        "metadata.annotations" => pairs(&pod.metadata.annotations),
        _ => String::new(),
    }
}

/// kubelet's volume ownership for `fsGroup`: every file and directory under `root` gets group
/// `gid` and group read/write (directories also setgid, so new files inherit the group).
fn set_volume_group(root: &Path, gid: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(root)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(root, None, Some(gid))?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | 0o2070))?;
        for entry in std::fs::read_dir(root)? {
            set_volume_group(&entry?.path(), gid)?;
        }
    } else {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | 0o060))?;
    }
    Ok(())
}

/// What is wrong with a hostPath volume's source, given its `type`.
#[derive(Debug, thiserror::Error)]
pub enum HostPathProblem {
    /// `DirectoryOrCreate`/`FileOrCreate`: it could not be created.
    #[error("create: {0}")]
    Create(#[source] std::io::Error),
    /// `FileOrCreate`: its parent directory could not be created.
    #[error("create parent: {0}")]
    CreateParent(#[source] std::io::Error),
    /// `Directory`: it is not a directory.
    #[error("not a directory")]
    NotADirectory,
    /// `File`: it is not a regular file.
    #[error("not a file")]
    NotAFile,
    /// No `type`: it has to exist.
    #[error("does not exist")]
    Missing,
}

/// Makes a hostPath volume's source exist as its `type` asks; the problem otherwise.
fn prepare_host_path(path: &str, kind: &str) -> Result<(), HostPathProblem> {
    let p = Path::new(path);
    match kind {
        "DirectoryOrCreate" if !p.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
            .map_err(HostPathProblem::Create),
        "FileOrCreate" if !p.exists() => {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(HostPathProblem::CreateParent)?;
            }
            std::fs::File::create(p)
                .map(drop)
                .map_err(HostPathProblem::Create)
        }
        "Directory" | "DirectoryOrCreate" if !p.is_dir() => Err(HostPathProblem::NotADirectory),
        "File" | "FileOrCreate" if !p.is_file() => Err(HostPathProblem::NotAFile),
        "" if !p.exists() => Err(HostPathProblem::Missing),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_prepared_per_type() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("made/here");
        let ds = d.to_str().unwrap();
        let problem = |kind| prepare_host_path(ds, kind).map_err(|e| e.to_string());
        assert_eq!(problem(""), Err("does not exist".into()));
        assert_eq!(problem("Directory"), Err("not a directory".into()));
        prepare_host_path(ds, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        assert_eq!(problem("File"), Err("not a file".into()));
        let f = dir.path().join("f/file");
        prepare_host_path(f.to_str().unwrap(), "FileOrCreate").unwrap();
        assert!(f.is_file());
        prepare_host_path(f.to_str().unwrap(), "File").unwrap();
    }

    #[test]
    fn downward_files_hold_the_pods_metadata() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web, tier: \"front end\"}\n  annotations: {note: 'say \"hi\"'}\nspec:\n  containers: [{name: c, image: busybox}]\n";
        let pod = crate::pod::manifest::parse_manifest(Path::new("/m/web.yaml"), text.as_bytes())
            .unwrap()
            .pod;
        assert_eq!(downward_file(&pod, "metadata.name"), "web");
        assert_eq!(downward_file(&pod, "metadata.namespace"), "default");
        assert_eq!(
            downward_file(&pod, "metadata.labels"),
            "app=\"web\"\ntier=\"front end\"\n"
        );
        assert_eq!(
            downward_file(&pod, "metadata.annotations"),
            "note=\"say \\\"hi\\\"\"\n"
        );
        assert_eq!(downward_file(&pod, "metadata.uid"), pod.metadata.uid);
    }

    #[test]
    fn downward_resource_files_hold_the_named_containers_value_divided() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n    - name: c\n      image: busybox\n      resources: {limits: {cpu: 500m, memory: 64Mi}, requests: {memory: 32Mi}}\n    - {name: d, image: busybox}\n  volumes:\n    - name: res\n      downwardAPI:\n        items:\n          - {path: cpu, resourceFieldRef: {containerName: c, resource: limits.cpu, divisor: 1m}}\n";
        let pod = crate::pod::manifest::parse_manifest(Path::new("/m/web.yaml"), text.as_bytes())
            .unwrap()
            .pod;
        let node = downward::NodeAllocatable {
            cpu_milli: 4000,
            memory_bytes: 1 << 30,
        };
        let file = |container: &str, resource: &str, divisor: Option<&str>| {
            let r = ResourceFieldRef {
                container_name: Some(container.to_string()),
                resource: resource.to_string(),
                divisor: divisor.map(|d| crate::pod::resources::Quantity::Text(d.to_string())),
            };
            downward_resource_file(&pod, &r, node)
        };
        assert_eq!(file("c", "limits.cpu", Some("1m")), "500");
        assert_eq!(file("c", "limits.cpu", None), "1");
        assert_eq!(file("c", "limits.memory", Some("1Mi")), "64");
        assert_eq!(file("c", "requests.memory", None), "33554432");
        // Unset limits are the node's.
        assert_eq!(file("d", "limits.memory", Some("1Mi")), "1024");
        assert_eq!(file("d", "limits.cpu", None), "4");
    }
}
