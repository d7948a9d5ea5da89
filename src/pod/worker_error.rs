//! The pod worker's errors: pod setup (directory, volumes, sandbox, network) and container
//! start, each naming the object and the operation, with the Kubernetes reason a user sees in
//! `weftctl pods` as [`WorkerError::reason`].

use std::path::PathBuf;

use super::bundle::BundleError;
use super::cni::CniError;
use super::container_spec::HostPathProblem;
use super::image::ImageError;
use super::layout::LayoutError;
use super::runtime::RuntimeError;
use super::sandbox::SandboxError;
use super::seccomp::SeccompError;

/// Why a pod setup step or a container start failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A file or directory of the pod could not be made.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A volume, mount or container name cannot name a path under the pod's roots.
    #[error("{what}: {source}")]
    Layout {
        /// The object whose path was refused.
        what: String,
        /// The refusal.
        source: LayoutError,
    },
    /// A volume mount names no volume, or a volume has no source.
    #[error("{0}")]
    Volume(String),
    /// A hostPath volume's source does not match its `type`.
    #[error("volume {volume}: hostPath {path}: {problem}")]
    HostPath {
        /// The volume.
        volume: String,
        /// The host path.
        path: String,
        /// What is wrong with it.
        #[source]
        problem: HostPathProblem,
    },
    /// The pause process could not be started.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The pod network could not be attached.
    #[error(transparent)]
    Network(#[from] CniError),
    /// A container was to start in a pod without a sandbox.
    #[error("the pod has no sandbox")]
    NoSandbox,
    /// The image store cannot be read.
    #[error(transparent)]
    ImageStore(ImageError),
    /// The container's image is not in the store (weft does not pull).
    #[error("{0} (images are not pulled: import it with `weftctl image import`)")]
    ImageMissing(ImageError),
    /// A `Localhost` seccomp profile is missing or invalid.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The container's process or user cannot be worked out.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The OCI runtime failed to start the container.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl WorkerError {
    /// The Kubernetes reason for this failure, as kubelet reports it (`status.reason` of the
    /// pod, `state.waiting.reason` of a container).
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::Io { .. } | WorkerError::Layout { .. } => "CreateContainerConfigError",
            WorkerError::Volume(_) | WorkerError::HostPath { .. } => "CreateContainerConfigError",
            WorkerError::Seccomp(_) | WorkerError::Bundle(_) => "CreateContainerConfigError",
            WorkerError::Sandbox(_) => "FailedCreatePodSandBox",
            WorkerError::Network(_) => "FailedCreatePodSandBox",
            WorkerError::NoSandbox | WorkerError::ImageStore(_) => "CreateContainerError",
            WorkerError::ImageMissing(_) => "ErrImageNeverPull",
            WorkerError::Runtime(_) => "RunContainerError",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_kubernetes_reasons() {
        let missing = ImageError::NotFound {
            name: "busybox".into(),
            root: "/var/lib/weft/images".into(),
        };
        assert_eq!(
            WorkerError::ImageMissing(missing).reason(),
            "ErrImageNeverPull"
        );
        assert_eq!(WorkerError::NoSandbox.reason(), "CreateContainerError");
        assert_eq!(
            WorkerError::Volume("volume x not found".into()).reason(),
            "CreateContainerConfigError"
        );
        let e = WorkerError::HostPath {
            volume: "data".into(),
            path: "/srv/data".into(),
            problem: HostPathProblem::NotADirectory,
        };
        assert_eq!(
            e.to_string(),
            "volume data: hostPath /srv/data: not a directory"
        );
    }
}
