//! The node's image store: imports OCI image layout and `docker save` archives, verifies every
//! blob's digest, unpacks the layers in order (with whiteouts) into one flattened root
//! filesystem per image, and resolves image names the way Docker does (`busybox` ==
//! `busybox:latest` == `docker.io/library/busybox:latest`).
//!
//! Layout under the store root:
//! `images/<config-digest-hex>/{rootfs/,image.json}`, `repositories.json` (name → image id),
//! `tmp/` (imports in progress), `lock` (flock held while importing).

mod archive;
mod layer;
mod reference;
mod store;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use reference::{familiar_name, normalize_name};
pub use store::{ImageStore, StoredImage};

pub use super::layout::DEFAULT_IMAGE_ROOT;

/// Largest image file [`read_image_file`] reads (`/etc/passwd`, `/etc/group`).
const MAX_IMAGE_FILE: u64 = 1 << 20;

/// The text of the small file `rel` (`etc/passwd`) of the unpacked image root `rootfs`, read
/// on the node as the container would see it: symlinks resolved inside the root (an image's
/// `etc/passwd -> /dev/zero` or `etc -> /etc` names the image's own paths, not the node's),
/// only a regular file, opened without following a last symlink and without blocking, at
/// most [`MAX_IMAGE_FILE`] bytes. `None` when it is missing, something else or too large.
pub fn read_image_file(rootfs: &Path, rel: &str) -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = layer::resolve_in_root(rootfs, Path::new(rel), false).ok()?;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_IMAGE_FILE {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_IMAGE_FILE).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Errors of the image store, each naming the object, the operation and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation failed.
    #[error("image store: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A blob's content does not hash to the digest that names it.
    #[error("archive {archive}: blob {blob}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The archive being imported.
        archive: PathBuf,
        /// The blob (path in the archive or role).
        blob: String,
        /// The digest the archive claims.
        expected: String,
        /// The digest of the content.
        actual: String,
    },
    /// An archive entry would be written outside the image root (or the archive itself).
    #[error("archive {archive}: {layer}: entry {entry:?} rejected: {reason}")]
    UnsafePath {
        /// The archive being imported.
        archive: PathBuf,
        /// The layer (or `archive` for the outer tar).
        layer: String,
        /// The entry's path as written in the tar.
        entry: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The archive is not a valid OCI layout or `docker save` archive.
    #[error("archive {archive}: {reason}")]
    Format {
        /// The archive being imported.
        archive: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON document of the archive or the store could not be parsed.
    #[error("parse {what} {path}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// Where it was read from.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// An image name is not a valid reference.
    #[error("image name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// No image of that name is in the store.
    #[error("image {name:?} not found in store {root}")]
    NotFound {
        /// The name looked up (canonical form).
        name: String,
        /// The store root.
        root: PathBuf,
    },
    /// The store lock could not be taken.
    #[error("image store: lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The errno.
        source: nix::errno::Errno,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { op, path, source }
}

/// The runtime-relevant part of an image's configuration (the OCI/Docker `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=VALUE` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`, if set and non-empty.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User` (`uid`, `uid:gid`, `name` or `name:group`), if set and non-empty.
    #[serde(default)]
    pub user: Option<String>,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Canonical name it was looked up by (`docker.io/library/busybox:latest`).
    pub name: String,
    /// Image id: the digest of its config blob (`sha256:<hex>`).
    pub id: String,
    /// The flattened, read-only root filesystem (an overlayfs lowerdir).
    pub rootfs: PathBuf,
    /// Entrypoint, Cmd, Env, WorkingDir, User.
    pub config: ImageConfig,
    /// Bytes of regular files in the unpacked root filesystem.
    pub size: u64,
}

/// A name → id pair, as returned by [`ImageStore::import`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Canonical name (`docker.io/library/busybox:latest`).
    pub name: String,
    /// Image id (`sha256:<hex>` of the config blob).
    pub id: String,
}
