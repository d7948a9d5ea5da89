//! The on-disk image store: one flattened root filesystem per image, a name → id map, and an
//! import that stages everything in scratch space and renames it into place.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use oci_spec::image::ImageConfiguration;

use super::archive::ExtractedArchive;
use super::layer::{apply_layer, maybe_decompress, HashingReader};
use super::{io_err, normalize_name, Image, ImageConfig, ImageError, ImageRef};
use crate::atomic_file::write_atomic;

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
        write_atomic(&path, &bytes, 0o644).map_err(io_err("write", &path))
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
        let resolved = extracted.resolve(wanted.as_deref())?;
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
        let config_file: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| ImageError::Json {
                what: "image config",
                path: resolved.config_path.clone(),
                source,
            })?;
        let diff_ids = config_file.rootfs().diff_ids().clone();
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
                let mut hashing = HashingReader::new(maybe_decompress(&path)?);
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
            let cc = config_file.config().clone().unwrap_or_default();
            let record = ImageRecord {
                id: id.clone(),
                config: ImageConfig {
                    entrypoint: cc.entrypoint().clone().unwrap_or_default(),
                    cmd: cc.cmd().clone().unwrap_or_default(),
                    env: cc.env().clone().unwrap_or_default(),
                    working_dir: cc.working_dir().clone().filter(|w| !w.is_empty()),
                    user: cc.user().clone().filter(|u| !u.is_empty()),
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

/// One unpacked image as garbage collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// Image id (`sha256:<hex>`).
    pub id: String,
    /// Names tagging it (canonical); empty for an image untagged while a pod used it.
    pub names: Vec<String>,
    /// Bytes of regular files in its root filesystem.
    pub size: u64,
    /// When a container last started from it (else when it was imported).
    pub last_used: SystemTime,
    /// When it was imported.
    pub imported: SystemTime,
}

impl ImageStore {
    fn image_dir(&self, id: &str) -> PathBuf {
        self.root
            .join("images")
            .join(id.trim_start_matches("sha256:"))
    }

    /// Records that a container starts from image `id` now (the LRU clock of image GC): the
    /// modification time of its `image.json`.
    pub fn mark_used(&self, id: &str) -> Result<(), ImageError> {
        let path = self.image_dir(id).join("image.json");
        File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .map_err(io_err("mark used", &path))
    }

    /// Every unpacked image, tagged or not, with its names and times.
    pub fn stored(&self) -> Result<Vec<StoredImage>, ImageError> {
        let repos = self.repositories()?;
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let hex = entry.file_name().to_string_lossy().into_owned();
            let record_path = entry.path().join("image.json");
            // An import that died before its rename leaves no image.json: nothing to count.
            let Ok(meta) = fs::metadata(&record_path) else {
                continue;
            };
            let id = format!("sha256:{hex}");
            let size = self.load("", &id).map(|i| i.size).unwrap_or(0);
            let dir_meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
            out.push(StoredImage {
                names: repos
                    .iter()
                    .filter(|(_, v)| **v == id)
                    .map(|(n, _)| n.clone())
                    .collect(),
                size,
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                imported: dir_meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                id,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Resolves `name_or_id` (a name, or `sha256:<hex>`) to an image id and the names to drop
    /// with it: the one name, or every name of the id.
    pub fn resolve_for_removal(
        &self,
        name_or_id: &str,
    ) -> Result<(String, Vec<String>), ImageError> {
        let repos = self.repositories()?;
        let not_found = |name: String| ImageError::NotFound {
            name,
            root: self.root.clone(),
        };
        if name_or_id.starts_with("sha256:") {
            if !self.image_dir(name_or_id).join("image.json").is_file() {
                return Err(not_found(name_or_id.to_string()));
            }
            let names = repos
                .iter()
                .filter(|(_, id)| id.as_str() == name_or_id)
                .map(|(n, _)| n.clone())
                .collect();
            return Ok((name_or_id.to_string(), names));
        }
        let canonical = normalize_name(name_or_id)?;
        match repos.get(&canonical) {
            Some(id) => Ok((id.clone(), vec![canonical])),
            None => Err(not_found(canonical)),
        }
    }

    /// Removes the tags `names`, then the image `id` itself when no name is left on it and
    /// `keep_content` is false. Returns whether the content was deleted.
    pub fn remove(
        &self,
        id: &str,
        names: &[String],
        keep_content: bool,
    ) -> Result<bool, ImageError> {
        let _lock = self.lock()?;
        let mut repos = self.repositories()?;
        for n in names {
            repos.remove(n);
        }
        self.write_repositories(&repos)?;
        if keep_content || repos.values().any(|v| v == id) {
            return Ok(false);
        }
        let dir = self.image_dir(id);
        // Rename first: a half-deleted tree must never be seen as an image.
        let doomed = self.root.join("tmp").join(format!(
            "remove-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::rename(&dir, &doomed).map_err(io_err("move aside", &dir))?;
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?;
        tracing::info!(id = %id, "removed image");
        Ok(true)
    }
}
