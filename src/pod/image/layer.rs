//! Layers: digests of streams, decompression, and unpacking a layer tar onto a root
//! filesystem with AUFS-style whiteouts, never writing outside it.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use super::{io_err, ImageError};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that hashes everything read through it.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(super) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads the rest of the stream and returns `sha256:<hex>` of all of it.
    pub(super) fn finish(mut self) -> io::Result<String> {
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

/// A layer (or archive) file, decompressed by its magic number: gzip (`tar+gzip`), zstd
/// (`tar+zstd`, as buildkit and podman write), or read as is (plain tar). The magic, not the
/// media type, decides: `docker save` archives carry no media types.
pub(super) fn maybe_decompress(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match file.read(&mut magic[n..]).map_err(io_err("read", path))? {
            0 => break,
            k => n += k,
        }
    }
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("seek", path))?;
    let reader = BufReader::new(file);
    if n >= 2 && magic[..2] == GZIP_MAGIC {
        Ok(Box::new(GzDecoder::new(reader)))
    } else if n == 4 && magic == ZSTD_MAGIC {
        let decoder = zstd::stream::read::Decoder::with_buffer(reader)
            .map_err(io_err("start zstd decoder for", path))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(reader))
    }
}

/// An archive entry path as safe relative components: no `..`, not absolute.
pub(super) fn clean_entry_path(path: &Path) -> Result<PathBuf, &'static str> {
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

/// The names and `..` steps of `path`, in order (`.` and `/` say nothing to a walk).
fn steps(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// A tar entry's path as written (for messages) and as safe relative components (or why not);
/// the error is the tar header's.
pub(super) fn entry_path<R: Read>(
    entry: &tar::Entry<'_, R>,
) -> io::Result<(PathBuf, Result<PathBuf, &'static str>)> {
    let raw = entry.path()?.into_owned();
    let rel = clean_entry_path(&raw);
    Ok((raw, rel))
}

/// Why a path cannot be resolved inside a root.
#[derive(Debug, thiserror::Error)]
pub(super) enum RootPathError {
    /// A `..` or a symlink leads out of the root.
    #[error("{} escapes the root", .0.display())]
    Escapes(PathBuf),
    /// More than 40 symlinks on the way (a loop, or a bomb).
    #[error("{}: too many levels of symlinks", .0.display())]
    SymlinkLoop(PathBuf),
    /// A step that has to be a directory is a file.
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// Reading a link, making a directory or looking at a step failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// `readlink`, `mkdir` or `stat`.
        op: &'static str,
        /// The step.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Resolves `rel` inside `root` like a chroot would: symlinks are followed with `root` as `/`,
/// and any step that would leave `root` is an error. Missing directories are created when
/// `create` is set. Returns the absolute path of the resolved location.
pub(super) fn resolve_in_root(
    root: &Path,
    rel: &Path,
    create: bool,
) -> Result<PathBuf, RootPathError> {
    let io_err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| RootPathError::Io { op, path, source }
    };
    let mut cur = PathBuf::new();
    let mut pending = steps(rel);
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if !cur.pop() {
                return Err(RootPathError::Escapes(rel.to_path_buf()));
            }
            continue;
        }
        let candidate = cur.join(&name);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(RootPathError::SymlinkLoop(rel.to_path_buf()));
                }
                let target = fs::read_link(&full).map_err(io_err("readlink", &full))?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut next = steps(&target);
                next.extend(pending);
                pending = next;
            }
            Ok(meta) if meta.is_dir() => cur = candidate,
            Ok(_) => {
                if !pending.is_empty() {
                    return Err(RootPathError::NotADirectory(candidate));
                }
                cur = candidate;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if create {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(io_err("mkdir", &full))?;
                }
                cur = candidate;
            }
            Err(e) => return Err(io_err("stat", &full)(e)),
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
pub(super) fn apply_layer(
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
        let (raw, rel) = entry_path(&entry).map_err(|e| format(format!("entry path: {e}")))?;
        let rel = rel.map_err(|r| unsafe_path(&raw, r.to_string()))?;
        let Some(base) = rel.file_name().map(|b| b.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if let Some(hidden) = base.strip_prefix(".wh.") {
            let parent = resolve_in_root(rootfs, &parent_rel, false)
                .map_err(|r| unsafe_path(&raw, r.to_string()))?;
            let parent_rel = parent
                .strip_prefix(rootfs)
                .unwrap_or(Path::new(""))
                .to_path_buf();
            if hidden == ".wh..opq" {
                apply_opaque(rootfs, &parent_rel, &written)
                    .map_err(io_err("apply opaque whiteout in", &parent))?;
            } else if matches!(hidden, "" | "." | "..") || hidden.contains('/') {
                // `.wh..` would remove the directory above, `.wh.` the one it is in.
                return Err(unsafe_path(
                    &raw,
                    format!("whiteout of {hidden:?} names no entry of its directory"),
                ));
            } else if !hidden.starts_with(".wh.") {
                let target = parent.join(hidden);
                remove_any(&target).map_err(io_err("apply whiteout to", &target))?;
            }
            continue;
        }
        let parent = resolve_in_root(rootfs, &parent_rel, true)
            .map_err(|r| unsafe_path(&raw, r.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn resolve_follows_symlinks_inside_root_only() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        fs::create_dir_all(root.path().join("usr/lib"))?;
        std::os::unix::fs::symlink("/usr/lib", root.path().join("lib"))?;
        std::os::unix::fs::symlink("../../..", root.path().join("evil"))?;
        assert_eq!(
            resolve_in_root(root.path(), Path::new("lib"), false).ok(),
            Some(root.path().join("usr/lib"))
        );
        assert!(resolve_in_root(root.path(), Path::new("evil/x"), false).is_err());
        Ok(())
    }
}
