//! The node's image store: imports OCI image layout and `docker save` archives, verifies every
//! blob's digest, unpacks the layers in order (with whiteouts) into one flattened root
//! filesystem per image, and resolves image names the way Docker does (`busybox` ==
//! `busybox:latest` == `docker.io/library/busybox:latest`).
//!
//! Layout under the store root:
//! `images/<config-digest-hex>/{rootfs/,image.json}`, `repositories.json` (name → image id),
//! `tmp/` (imports in progress), `lock` (flock held while importing).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Default root of the image store (`--image-root`).
pub const DEFAULT_IMAGE_ROOT: &str = "/var/lib/weft/images";

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

/// Metadata kept beside each unpacked image.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    id: String,
    config: ImageConfig,
    layers: Vec<String>,
    size: u64,
}

/// The on-disk image store of one node.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// Canonical form of an image reference: `domain/path:tag`, with Docker's defaults
/// (`docker.io`, `library/`, `latest`).
pub fn normalize_name(name: &str) -> Result<String, ImageError> {
    let invalid = |reason| ImageError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.contains('@') {
        return Err(invalid("digest references are not supported; use NAME:TAG"));
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, "latest"),
    };
    if name.len() > 255 {
        return Err(invalid("longer than 255 characters"));
    }
    let tag_ok = tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !tag_ok {
        return Err(invalid(
            "tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
        ));
    }
    let (domain, path) = match repo.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            if !is_registry_domain(first) {
                return Err(invalid(
                    "registry must be a host name of [A-Za-z0-9-] labels, with an optional :port",
                ));
            }
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), repo.to_string()),
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if !path.split('/').all(is_path_component) {
        return Err(invalid(
            "repository must be components of lowercase alphanumerics joined by '.', '_', '__' \
             or '-' runs, separated by '/'",
        ));
    }
    Ok(format!("{domain}/{path}:{tag}"))
}

/// A repository path component of the distribution reference grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (so never `.`, `..` or empty).
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut run: Vec<u8> = Vec::new();
    for &b in bytes {
        if alnum(b) {
            let ok = run.is_empty()
                || run == b"."
                || run == b"_"
                || run == b"__"
                || run.iter().all(|&r| r == b'-');
            if !ok {
                return false;
            }
            run.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            run.push(b);
        } else {
            return false;
        }
    }
    true
}

/// A registry host of the reference grammar: DNS-style labels of `[A-Za-z0-9-]` (not starting
/// or ending with `-`), separated by `.`, with an optional numeric `:port`.
fn is_registry_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && host.split('.').all(label_ok)
}

/// Short form of a canonical name for display (`docker.io/library/busybox:latest` → `busybox:latest`).
pub fn familiar_name(canonical: &str) -> &str {
    canonical
        .strip_prefix("docker.io/library/")
        .or_else(|| canonical.strip_prefix("docker.io/"))
        .unwrap_or(canonical)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads the rest of the stream and returns `sha256:<hex>` of all of it.
    fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(format!("sha256:{}", hex(&self.hasher.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A file that is transparently gunzipped when it starts with the gzip magic.
fn maybe_gunzip(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(io_err("read", path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("seek", path))?;
    let reader = BufReader::new(file);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(GzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// An archive entry path as safe relative components: no `..`, not absolute.
fn clean_entry_path(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok(out)
}

/// Resolves `rel` inside `root` like a chroot would: symlinks are followed with `root` as `/`,
/// and any step that would leave `root` is an error. Missing directories are created when
/// `create` is set. Returns the absolute path of the resolved location.
fn resolve_in_root(root: &Path, rel: &Path, create: bool) -> Result<PathBuf, String> {
    let mut cur = PathBuf::new();
    let mut pending: VecDeque<OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if !cur.pop() {
                return Err(format!("{} escapes the root", rel.display()));
            }
            continue;
        }
        let candidate = cur.join(&name);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(format!("{}: too many levels of symlinks", rel.display()));
                }
                let target = fs::read_link(&full)
                    .map_err(|e| format!("readlink {}: {e}", full.display()))?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut next: VecDeque<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                next.extend(pending);
                pending = next;
            }
            Ok(meta) if meta.is_dir() => cur = candidate,
            Ok(_) => {
                if !pending.is_empty() {
                    return Err(format!("{} is not a directory", candidate.display()));
                }
                cur = candidate;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if create {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(|e| format!("mkdir {}: {e}", full.display()))?;
                }
                cur = candidate;
            }
            Err(e) => return Err(format!("stat {}: {e}", full.display())),
        }
    }
    Ok(root.join(cur))
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes everything under `dir` (a path relative to `root`) that this layer did not write.
fn apply_opaque(root: &Path, dir: &Path, written: &HashSet<PathBuf>) -> io::Result<()> {
    let full = root.join(dir);
    let entries = match fs::read_dir(&full) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let rel = dir.join(entry.file_name());
        if !written.contains(&rel) {
            remove_any(&entry.path())?;
        } else if entry.file_type()?.is_dir() {
            apply_opaque(root, &rel, written)?;
        }
    }
    Ok(())
}

/// Creates a layer's device node or FIFO as containerd does when it runs as root: `mknod`
/// with the entry's device numbers, then its owner and mode. Without the right to make
/// devices (not root, or in a user namespace) device nodes are skipped, as containerd
/// skips them in a user namespace. They are reachable only inside containers, whose device
/// cgroup decides what opening them does, because the store root is 0700.
fn make_special_file(header: &tar::Header, dest: &Path) -> io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let kind = header.entry_type();
    let mode = header.mode()? & 0o7777;
    let (flag, dev) = if kind.is_fifo() {
        (SFlag::S_IFIFO, 0)
    } else {
        let major = header.device_major()?.unwrap_or(0);
        let minor = header.device_minor()?.unwrap_or(0);
        let flag = if kind.is_character_special() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        (flag, makedev(major.into(), minor.into()))
    };
    match mknod(dest, flag, Mode::from_bits_truncate(mode), dev) {
        Ok(()) => {}
        Err(nix::errno::Errno::EPERM) if !kind.is_fifo() => {
            tracing::debug!(path = %dest.display(), "no right to create device nodes: skipped");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let uid = header.uid()?;
    let gid = header.gid()?;
    let owner = |id: u64| u32::try_from(id).map_err(|_| io::Error::other("owner id out of range"));
    std::os::unix::fs::lchown(dest, Some(owner(uid)?), Some(owner(gid)?))?;
    // mknod's mode was cut by the umask, and chown cleared set-id bits.
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
}

/// Unpacks one layer tar stream onto `rootfs`, applying AUFS-style whiteouts.
fn apply_layer(
    rootfs: &Path,
    reader: impl Read,
    archive: &Path,
    layer: &str,
) -> Result<u64, ImageError> {
    let unsafe_path = |entry: &Path, reason: String| ImageError::UnsafePath {
        archive: archive.to_path_buf(),
        layer: layer.to_string(),
        entry: entry.display().to_string(),
        reason,
    };
    let format = |reason: String| ImageError::Format {
        archive: archive.to_path_buf(),
        reason: format!("layer {layer}: {reason}"),
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_unpack_xattrs(true);
    tar.set_overwrite(true);
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut size = 0u64;
    let entries = tar
        .entries()
        .map_err(|e| format(format!("read tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format(format!("read tar entry: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| format(format!("entry path: {e}")))?
            .into_owned();
        let rel = clean_entry_path(&raw).map_err(|r| unsafe_path(&raw, r.to_string()))?;
        let Some(base) = rel.file_name().map(|b| b.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if let Some(hidden) = base.strip_prefix(".wh.") {
            let parent =
                resolve_in_root(rootfs, &parent_rel, false).map_err(|r| unsafe_path(&raw, r))?;
            let parent_rel = parent
                .strip_prefix(rootfs)
                .unwrap_or(Path::new(""))
                .to_path_buf();
            if hidden == ".wh..opq" {
                apply_opaque(rootfs, &parent_rel, &written)
                    .map_err(io_err("apply opaque whiteout in", &parent))?;
            } else if !hidden.starts_with(".wh.") {
                let target = parent.join(hidden);
                remove_any(&target).map_err(io_err("apply whiteout to", &target))?;
            }
            continue;
        }
        let parent =
            resolve_in_root(rootfs, &parent_rel, true).map_err(|r| unsafe_path(&raw, r))?;
        let dest = parent.join(&base);
        let kind = entry.header().entry_type();
        if let Ok(existing) = fs::symlink_metadata(&dest) {
            if !(existing.is_dir() && kind.is_dir()) {
                remove_any(&dest).map_err(io_err("replace", &dest))?;
            }
        }
        if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(|e| format(format!("entry {}: link name: {e}", raw.display())))?
                .ok_or_else(|| {
                    format(format!("entry {}: hard link without target", raw.display()))
                })?
                .into_owned();
            let link_rel = clean_entry_path(&link)
                .map_err(|r| unsafe_path(&raw, format!("hard link target: {r}")))?;
            let link_parent =
                resolve_in_root(rootfs, link_rel.parent().unwrap_or(Path::new("")), false)
                    .map_err(|r| unsafe_path(&raw, format!("hard link target: {r}")))?;
            let source = link_parent.join(link_rel.file_name().unwrap_or_default());
            fs::hard_link(&source, &dest).map_err(io_err("hard link", &dest))?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            make_special_file(entry.header(), &dest)
                .map_err(|e| format(format!("unpack {}: {e}", raw.display())))?;
        } else {
            if kind.is_file() {
                size += entry.header().size().unwrap_or(0);
            }
            entry
                .unpack(&dest)
                .map_err(|e| format(format!("unpack {}: {e}", raw.display())))?;
        }
        let written_rel = dest.strip_prefix(rootfs).unwrap_or(&rel).to_path_buf();
        let mut ancestor = Some(written_rel.as_path());
        while let Some(a) = ancestor {
            if a.as_os_str().is_empty() || !written.insert(a.to_path_buf()) {
                break;
            }
            ancestor = a.parent();
        }
    }
    Ok(size)
}

/// OCI content descriptor.
#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Deserialize, Default)]
struct ContainerConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The Go architecture name of this machine, as used in image platforms.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The outer archive unpacked into a scratch directory; symlinks among its entries (older
/// `docker save` links duplicate layers) are kept as a map and resolved lexically.
struct ExtractedArchive {
    archive: PathBuf,
    dir: PathBuf,
    links: BTreeMap<PathBuf, PathBuf>,
}

impl ExtractedArchive {
    fn extract(archive: &Path, dir: &Path) -> Result<Self, ImageError> {
        let bad = |entry: &Path, reason: String| ImageError::UnsafePath {
            archive: archive.to_path_buf(),
            layer: "archive".to_string(),
            entry: entry.display().to_string(),
            reason,
        };
        let format = |reason: String| ImageError::Format {
            archive: archive.to_path_buf(),
            reason,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create", dir))?;
        let mut tar = tar::Archive::new(maybe_gunzip(archive)?);
        let mut links = BTreeMap::new();
        let entries = tar
            .entries()
            .map_err(|e| format(format!("read tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format(format!("read tar entry: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| format(format!("entry path: {e}")))?
                .into_owned();
            let rel = clean_entry_path(&raw).map_err(|r| bad(&raw, r.to_string()))?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            let kind = entry.header().entry_type();
            let dest = dir.join(&rel);
            if kind.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dest)
                    .map_err(io_err("create", &dest))?;
            } else if kind.is_file() {
                if let Some(p) = dest.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(p)
                        .map_err(io_err("create", p))?;
                }
                let mut out = File::create(&dest).map_err(io_err("create", &dest))?;
                io::copy(&mut entry, &mut out).map_err(io_err("write", &dest))?;
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| format(format!("entry {}: link name: {e}", raw.display())))?
                    .ok_or_else(|| format(format!("entry {}: link without target", raw.display())))?
                    .into_owned();
                // Symlink targets are relative to the link's directory, hard link targets to the archive root.
                let base = if kind.is_symlink() {
                    rel.parent().unwrap_or(Path::new("")).to_path_buf()
                } else {
                    PathBuf::new()
                };
                let resolved = lexical_join(&base, &target).ok_or_else(|| {
                    bad(
                        &raw,
                        format!("link target {} escapes the archive", target.display()),
                    )
                })?;
                links.insert(rel, resolved);
            } else {
                return Err(bad(
                    &raw,
                    format!("unexpected entry type {kind:?} in an image archive"),
                ));
            }
        }
        Ok(ExtractedArchive {
            archive: archive.to_path_buf(),
            dir: dir.to_path_buf(),
            links,
        })
    }

    /// The on-disk path of an archive member, following archive-internal links.
    fn path(&self, member: &str) -> Result<PathBuf, ImageError> {
        let mut rel = clean_entry_path(Path::new(member)).map_err(|r| ImageError::UnsafePath {
            archive: self.archive.clone(),
            layer: "archive".to_string(),
            entry: member.to_string(),
            reason: r.to_string(),
        })?;
        for _ in 0..16 {
            match self.links.get(&rel) {
                Some(next) => rel = next.clone(),
                None => return Ok(self.dir.join(rel)),
            }
        }
        Err(self.format(format!("{member}: too many links")))
    }

    fn has(&self, member: &str) -> bool {
        self.path(member).map(|p| p.is_file()).unwrap_or(false)
    }

    fn format(&self, reason: String) -> ImageError {
        ImageError::Format {
            archive: self.archive.clone(),
            reason,
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        member: &str,
        what: &'static str,
    ) -> Result<T, ImageError> {
        let path = self.path(member)?;
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json { what, path, source })
    }

    /// Verifies a blob against its descriptor digest and returns its path.
    fn verified_blob(&self, member: &str, digest: &str) -> Result<PathBuf, ImageError> {
        let path = self.path(member)?;
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let actual = HashingReader::new(BufReader::new(file))
            .finish()
            .map_err(io_err("read", &path))?;
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                archive: self.archive.clone(),
                blob: member.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(path)
    }

    /// The archive member holding the blob `digest` (`blobs/sha256/<hex>`).
    fn blob_member(&self, digest: &str) -> Result<String, ImageError> {
        digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .map(|h| format!("blobs/sha256/{h}"))
            .ok_or_else(|| self.format(format!("unsupported digest {digest:?} (sha256 only)")))
    }

    fn oci_blob(&self, desc: &Descriptor) -> Result<PathBuf, ImageError> {
        let member = self.blob_member(&desc.digest)?;
        let path = self.verified_blob(&member, &desc.digest)?;
        if let Some(size) = desc.size {
            let actual = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
            if actual != size {
                return Err(self.format(format!(
                    "blob {}: size {actual} != descriptor size {size}",
                    desc.digest
                )));
            }
        }
        Ok(path)
    }
}

/// `base/target` normalized lexically, or `None` when it climbs above the top.
fn lexical_join(base: &Path, target: &Path) -> Option<PathBuf> {
    let mut out = if target.is_absolute() {
        PathBuf::new()
    } else {
        base.to_path_buf()
    };
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n),
            // Climbing above the top is an escape.
            Component::ParentDir => out.pop().then_some(())?,
            _ => {}
        }
    }
    Some(out)
}

/// What an archive resolved to before unpacking.
struct ResolvedImage {
    name: Option<String>,
    config_path: PathBuf,
    config_digest: String,
    /// (archive member, expected compressed digest if known) per layer, bottom first.
    layers: Vec<(String, Option<String>)>,
}

/// Removes a directory tree when dropped (import scratch space).
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "remove import scratch dir");
            }
        }
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`. The root is 0700 (as containerd's
    /// snapshot store): images may hold setuid binaries, device nodes and world-writable
    /// directories, which must be reachable only inside containers. A store made by an older
    /// weft with another mode is tightened.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in [root.to_path_buf(), root.join("images"), root.join("tmp")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create", &dir))?;
        }
        let meta = fs::metadata(root).map_err(io_err("stat", root))?;
        if meta.permissions().mode() & 0o7777 != 0o700 {
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(io_err("restrict to 0700", root))?;
        }
        let root = std::path::absolute(root).map_err(io_err("resolve", root))?;
        Ok(ImageStore { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> Result<Flock<File>, ImageError> {
        let path = self.root.join("lock");
        let file = File::create(&path).map_err(io_err("create", &path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, source)| ImageError::Lock { path, source })
    }

    fn repositories(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.root.join("repositories.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                what: "image repositories",
                path,
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn write_repositories(&self, repos: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let path = self.root.join("repositories.json");
        let bytes = serde_json::to_vec_pretty(repos).map_err(|source| ImageError::Json {
            what: "image repositories",
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes).map_err(io_err("write", &path))
    }

    /// Imports an OCI image layout archive or a `docker save` archive (plain or gzipped), verifying
    /// every blob, and tags it `name` (else the name recorded in the archive).
    pub fn import(&self, archive: &Path, name: Option<&str>) -> Result<ImageRef, ImageError> {
        let wanted = name.map(normalize_name).transpose()?;
        let _lock = self.lock()?;
        let scratch = ScratchDir(self.root.join("tmp").join(format!(
            "import-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )));
        let extracted = ExtractedArchive::extract(archive, &scratch.0.join("archive"))?;
        let resolved = if extracted.has("oci-layout") && extracted.has("index.json") {
            self.resolve_oci(&extracted, wanted.as_deref())?
        } else if extracted.has("manifest.json") {
            self.resolve_docker(&extracted, wanted.as_deref())?
        } else {
            return Err(extracted.format(
                "neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)".into(),
            ));
        };
        let name = match (wanted, &resolved.name) {
            (Some(n), _) => n,
            (None, Some(n)) => normalize_name(n)?,
            (None, None) => {
                return Err(
                    extracted.format("the archive names no image; pass --name NAME:TAG".into())
                );
            }
        };
        let config_bytes =
            fs::read(&resolved.config_path).map_err(io_err("read", &resolved.config_path))?;
        let config_file: ConfigFile =
            serde_json::from_slice(&config_bytes).map_err(|source| ImageError::Json {
                what: "image config",
                path: resolved.config_path.clone(),
                source,
            })?;
        let diff_ids = config_file.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != resolved.layers.len() {
            return Err(extracted.format(format!(
                "image config lists {} diff_ids but the manifest {} layers",
                diff_ids.len(),
                resolved.layers.len()
            )));
        }
        let id = resolved.config_digest.clone();
        let id_hex = id.trim_start_matches("sha256:").to_string();
        let image_dir = self.root.join("images").join(&id_hex);
        if !image_dir.join("image.json").is_file() {
            let staging = scratch.0.join("image");
            let rootfs = staging.join("rootfs");
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&rootfs)
                .map_err(io_err("create", &rootfs))?;
            let mut size = 0;
            for ((member, digest), diff_id) in resolved.layers.iter().zip(&diff_ids) {
                let path = match digest {
                    Some(d) => extracted.verified_blob(member, d)?,
                    None => extracted.path(member)?,
                };
                let mut hashing = HashingReader::new(maybe_gunzip(&path)?);
                size += apply_layer(&rootfs, &mut hashing, archive, member)?;
                let actual = hashing.finish().map_err(io_err("read", &path))?;
                if &actual != diff_id {
                    return Err(ImageError::DigestMismatch {
                        archive: archive.to_path_buf(),
                        blob: format!("{member} (uncompressed)"),
                        expected: diff_id.clone(),
                        actual,
                    });
                }
            }
            let cc = config_file.config.unwrap_or_default();
            let record = ImageRecord {
                id: id.clone(),
                config: ImageConfig {
                    entrypoint: cc.entrypoint.unwrap_or_default(),
                    cmd: cc.cmd.unwrap_or_default(),
                    env: cc.env.unwrap_or_default(),
                    working_dir: cc.working_dir.filter(|w| !w.is_empty()),
                    user: cc.user.filter(|u| !u.is_empty()),
                },
                layers: diff_ids,
                size,
            };
            let record_path = staging.join("image.json");
            let bytes = serde_json::to_vec_pretty(&record).map_err(|source| ImageError::Json {
                what: "image record",
                path: record_path.clone(),
                source,
            })?;
            fs::write(&record_path, bytes).map_err(io_err("write", &record_path))?;
            if image_dir.exists() {
                fs::remove_dir_all(&image_dir).map_err(io_err("remove incomplete", &image_dir))?;
            }
            fs::rename(&staging, &image_dir).map_err(io_err("rename into place", &image_dir))?;
        }
        let mut repos = self.repositories()?;
        repos.insert(name.clone(), id.clone());
        self.write_repositories(&repos)?;
        tracing::info!(image = %name, id = %id, "imported image");
        Ok(ImageRef { name, id })
    }

    fn resolve_oci(
        &self,
        ar: &ExtractedArchive,
        wanted: Option<&str>,
    ) -> Result<ResolvedImage, ImageError> {
        let index: OciIndex = ar.read_json("index.json", "OCI index")?;
        let mut candidates: Vec<&Descriptor> = index.manifests.iter().collect();
        if candidates.len() > 1 {
            if let Some(w) = wanted {
                let named: Vec<&Descriptor> = candidates
                    .iter()
                    .copied()
                    .filter(|d| {
                        descriptor_name(d)
                            .and_then(|n| normalize_name(&n).ok())
                            .as_deref()
                            == Some(w)
                    })
                    .collect();
                if !named.is_empty() {
                    candidates = named;
                }
            }
        }
        let desc = pick_platform(&candidates).ok_or_else(|| {
            ar.format(format!(
                "index.json lists {} manifests and none is the single match for linux/{}",
                index.manifests.len(),
                host_arch()
            ))
        })?;
        let name = descriptor_name(desc);
        let manifest = self.oci_manifest(ar, desc, 0)?;
        let config_path = ar.oci_blob(&manifest.config)?;
        Ok(ResolvedImage {
            name,
            config_path,
            config_digest: manifest.config.digest.clone(),
            layers: manifest
                .layers
                .iter()
                .map(|l| Ok((ar.blob_member(&l.digest)?, Some(l.digest.clone()))))
                .collect::<Result<_, ImageError>>()?,
        })
    }

    /// Follows nested image indexes down to one image manifest.
    fn oci_manifest(
        &self,
        ar: &ExtractedArchive,
        desc: &Descriptor,
        depth: u32,
    ) -> Result<OciManifest, ImageError> {
        if depth > 4 {
            return Err(ar.format("image indexes nested too deep".into()));
        }
        let path = ar.oci_blob(desc)?;
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        let is_index = desc.media_type.ends_with("image.index.v1+json")
            || desc.media_type.ends_with("manifest.list.v2+json")
            || serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .is_some_and(|v| v.get("manifests").is_some());
        if is_index {
            let index: OciIndex =
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                    what: "OCI image index",
                    path: path.clone(),
                    source,
                })?;
            let candidates: Vec<&Descriptor> = index.manifests.iter().collect();
            let inner = pick_platform(&candidates).ok_or_else(|| {
                ar.format(format!(
                    "image index {} has no manifest for linux/{}",
                    desc.digest,
                    host_arch()
                ))
            })?;
            return self.oci_manifest(ar, inner, depth + 1);
        }
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            what: "OCI image manifest",
            path,
            source,
        })
    }

    fn resolve_docker(
        &self,
        ar: &ExtractedArchive,
        wanted: Option<&str>,
    ) -> Result<ResolvedImage, ImageError> {
        let entries: Vec<DockerManifestEntry> = ar.read_json("manifest.json", "docker manifest")?;
        let entry = match entries.len() {
            0 => return Err(ar.format("manifest.json lists no image".into())),
            1 => &entries[0],
            n => {
                let w = wanted.ok_or_else(|| {
                    ar.format(format!(
                        "manifest.json lists {n} images; pass --name to pick one"
                    ))
                })?;
                entries
                    .iter()
                    .find(|e| {
                        e.repo_tags
                            .iter()
                            .flatten()
                            .any(|t| normalize_name(t).ok().as_deref() == Some(w))
                    })
                    .ok_or_else(|| ar.format(format!("manifest.json has no image tagged {w}")))?
            }
        };
        let config_hex = Path::new(&entry.config)
            .file_name()
            .map(|f| f.to_string_lossy().trim_end_matches(".json").to_string())
            .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| {
                ar.format(format!(
                    "config {:?} is not named by its digest; cannot verify it",
                    entry.config
                ))
            })?;
        let config_digest = format!("sha256:{config_hex}");
        let config_path = ar.verified_blob(&entry.config, &config_digest)?;
        let layers = entry
            .layers
            .iter()
            .map(|l| {
                let digest = l
                    .strip_prefix("blobs/sha256/")
                    .filter(|h| h.len() == 64)
                    .map(|h| format!("sha256:{h}"));
                (l.clone(), digest)
            })
            .collect();
        Ok(ResolvedImage {
            name: entry.repo_tags.as_ref().and_then(|t| t.first().cloned()),
            config_path,
            config_digest,
            layers,
        })
    }

    fn load(&self, name: &str, id: &str) -> Result<Image, ImageError> {
        let dir = self
            .root
            .join("images")
            .join(id.trim_start_matches("sha256:"));
        let record_path = dir.join("image.json");
        let bytes = fs::read(&record_path).map_err(io_err("read", &record_path))?;
        let record: ImageRecord =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                what: "image record",
                path: record_path,
                source,
            })?;
        Ok(Image {
            name: name.to_string(),
            id: record.id,
            rootfs: dir.join("rootfs"),
            config: record.config,
            size: record.size,
        })
    }

    /// Every tagged image, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        self.repositories()?
            .iter()
            .map(|(name, id)| self.load(name, id))
            .collect()
    }

    /// Looks an image up by name (`busybox`, `busybox:latest`, `docker.io/library/busybox:latest`)
    /// or by id (`sha256:<hex>`).
    pub fn get(&self, name: &str) -> Result<Image, ImageError> {
        let repos = self.repositories()?;
        if name.starts_with("sha256:") {
            return match repos.iter().find(|(_, id)| id.as_str() == name) {
                Some((n, id)) => self.load(n, id),
                None => Err(ImageError::NotFound {
                    name: name.to_string(),
                    root: self.root.clone(),
                }),
            };
        }
        let canonical = normalize_name(name)?;
        match repos.get(&canonical) {
            Some(id) => self.load(&canonical, id),
            None => Err(ImageError::NotFound {
                name: canonical,
                root: self.root.clone(),
            }),
        }
    }
}

/// The image name a descriptor carries in its annotations, if any.
fn descriptor_name(desc: &Descriptor) -> Option<String> {
    if let Some(n) = desc.annotations.get("io.containerd.image.name") {
        return Some(n.clone());
    }
    desc.annotations
        .get("org.opencontainers.image.ref.name")
        .filter(|n| n.contains(':') || n.contains('/'))
        .cloned()
}

/// The single candidate, or the one for linux on this machine's architecture.
fn pick_platform<'a>(candidates: &[&'a Descriptor]) -> Option<&'a Descriptor> {
    if candidates.len() == 1 {
        return Some(candidates[0]);
    }
    let mut matching = candidates.iter().filter(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == host_arch())
    });
    let first = matching.next()?;
    Some(*first)
}

/// Writes `bytes` to `path` through a temp file and a rename, so readers see old or new, never half.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize_like_docker() {
        let canonical = "docker.io/library/busybox:latest";
        for n in [
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox:latest",
            "docker.io/busybox",
        ] {
            assert_eq!(normalize_name(n).ok().as_deref(), Some(canonical), "{n}");
        }
        assert_eq!(
            normalize_name("localhost:5000/app").ok().as_deref(),
            Some("localhost:5000/app:latest")
        );
        assert_eq!(
            normalize_name("quay.io/org/app:v1.2").ok().as_deref(),
            Some("quay.io/org/app:v1.2")
        );
        assert_eq!(
            normalize_name("me/app:1").ok().as_deref(),
            Some("docker.io/me/app:1")
        );
        assert!(normalize_name("Busybox").is_err());
        for bad in [
            "a/../..:1",
            "a/..",
            "./a",
            "a//b",
            "a/.b",
            "a-/b",
            "a..b",
            "a___b",
            "quay..io/a",
            "localhost:x/a",
            "busybox:.1",
            "busybox:-1",
        ] {
            let e = normalize_name(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("image name {bad:?}: ")), "{e}");
        }
        for good in [
            "a.b/c",
            "a__b",
            "a---b",
            "my-registry.example:5000/team/app:v1_2.3",
        ] {
            assert!(normalize_name(good).is_ok(), "{good}");
        }
        assert!(normalize_name("busybox:").is_err());
        assert!(normalize_name("busybox@sha256:00").is_err());
        assert_eq!(familiar_name(canonical), "busybox:latest");
        assert_eq!(familiar_name("quay.io/org/app:v1"), "quay.io/org/app:v1");
    }

    #[test]
    fn image_table_is_aligned() {
        let image = |name: &str, size| Image {
            name: name.to_string(),
            id: format!("sha256:{}", "ab".repeat(32)),
            rootfs: PathBuf::from("/x"),
            config: ImageConfig::default(),
            size,
        };
        let table = render_images(&[
            image("docker.io/library/busybox:latest", 1_982_256),
            image("example.com/a/b:v1", 12),
        ]);
        assert_eq!(
            table,
            "IMAGE                ID             SIZE\n\
             busybox:latest       abababababab   2.0MB\n\
             example.com/a/b:v1   abababababab   12B\n"
        );
    }

    #[test]
    fn entry_paths_reject_traversal() {
        assert_eq!(
            clean_entry_path(Path::new("./bin/sh")),
            Ok(PathBuf::from("bin/sh"))
        );
        assert!(clean_entry_path(Path::new("../etc/passwd")).is_err());
        assert!(clean_entry_path(Path::new("a/../../b")).is_err());
        assert!(clean_entry_path(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn lexical_join_stays_inside() {
        assert_eq!(
            lexical_join(Path::new("a/b"), Path::new("../c/layer.tar")),
            Some(PathBuf::from("a/c/layer.tar"))
        );
        assert_eq!(lexical_join(Path::new("a"), Path::new("../../x")), None);
        assert_eq!(
            lexical_join(Path::new("a"), Path::new("/x")),
            Some(PathBuf::from("x"))
        );
    }

    #[test]
    fn resolve_follows_symlinks_inside_root_only() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        fs::create_dir_all(root.path().join("usr/lib"))?;
        std::os::unix::fs::symlink("/usr/lib", root.path().join("lib"))?;
        std::os::unix::fs::symlink("../../..", root.path().join("evil"))?;
        assert_eq!(
            resolve_in_root(root.path(), Path::new("lib"), false),
            Ok(root.path().join("usr/lib"))
        );
        assert!(resolve_in_root(root.path(), Path::new("evil/x"), false).is_err());
        Ok(())
    }
}

/// `weftctl image`: import archives into and list a node's image store.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageArgs {
    /// The image store (weftd's `--image-root`).
    #[arg(long, global = true, env = "WEFTD_IMAGE_ROOT", default_value = DEFAULT_IMAGE_ROOT)]
    pub image_root: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The `weftctl image` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout archive or a `docker save` archive (plain or gzipped).
    Import {
        /// The archive file.
        file: PathBuf,
        /// Tag it NAME[:TAG] instead of the name recorded in the archive.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images in the store.
    Ls,
}

/// `1.9MB`-style sizes, as `docker images` prints them.
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

/// The `weftctl image ls` table.
pub fn render_images(images: &[Image]) -> String {
    let rows: Vec<[String; 3]> = images
        .iter()
        .map(|i| {
            let hex = i.id.trim_start_matches("sha256:");
            [
                familiar_name(&i.name).to_string(),
                hex[..hex.len().min(12)].to_string(),
                human_size(i.size),
            ]
        })
        .collect();
    let width = rows
        .iter()
        .map(|r| r[0].len())
        .chain(std::iter::once("IMAGE".len()))
        .max()
        .unwrap_or(5);
    let mut out = format!("{:<width$}   {:<12}   SIZE\n", "IMAGE", "ID");
    for [name, id, size] in rows {
        out.push_str(&format!("{name:<width$}   {id:<12}   {size}\n"));
    }
    out
}

/// Runs `weftctl image ...`, printing to `out`.
pub fn run_cli(args: &ImageArgs, out: &mut impl Write) -> Result<(), ImageError> {
    let store = ImageStore::open(&args.image_root)?;
    let stdout = |e| ImageError::Io {
        op: "write",
        path: PathBuf::from("stdout"),
        source: e,
    };
    match &args.command {
        ImageCommand::Import { file, name } => {
            let r = store.import(file, name.as_deref())?;
            writeln!(out, "imported {} ({})", familiar_name(&r.name), r.id).map_err(stdout)
        }
        ImageCommand::Ls => out
            .write_all(render_images(&store.list()?).as_bytes())
            .map_err(stdout),
    }
}
