//! Image archives: the two formats `weftctl image import` reads (an OCI image layout and a
//! `docker save` archive), unpacked into scratch space and resolved to one image's config and
//! layers, every blob verified against its digest.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;

use super::layer::{clean_entry_path, entry_path, maybe_decompress, HashingReader};
use super::{io_err, normalize_name, ImageError};

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
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
pub(super) struct ExtractedArchive {
    archive: PathBuf,
    dir: PathBuf,
    links: BTreeMap<PathBuf, PathBuf>,
}

impl ExtractedArchive {
    pub(super) fn extract(archive: &Path, dir: &Path) -> Result<Self, ImageError> {
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
        // Read like a layer (layer::apply_layer), but members land in scratch space as they
        // are and links are only recorded: the outer tar is a container of blobs, not a rootfs.
        let mut tar = tar::Archive::new(maybe_decompress(archive)?);
        let mut links = BTreeMap::new();
        let entries = tar
            .entries()
            .map_err(|e| format(format!("read tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format(format!("read tar entry: {e}")))?;
            let (raw, rel) = entry_path(&entry).map_err(|e| format(format!("entry path: {e}")))?;
            let rel = rel.map_err(|r| bad(&raw, r.to_string()))?;
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
    pub(super) fn path(&self, member: &str) -> Result<PathBuf, ImageError> {
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

    pub(super) fn format(&self, reason: String) -> ImageError {
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
    pub(super) fn verified_blob(&self, member: &str, digest: &str) -> Result<PathBuf, ImageError> {
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
        let digest = desc.digest().to_string();
        let member = self.blob_member(&digest)?;
        let path = self.verified_blob(&member, &digest)?;
        let size = desc.size();
        let actual = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
        if actual != size {
            return Err(self.format(format!(
                "blob {digest}: size {actual} != descriptor size {size}"
            )));
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
pub(super) struct ResolvedImage {
    pub(super) name: Option<String>,
    pub(super) config_path: PathBuf,
    pub(super) config_digest: String,
    /// (archive member, expected compressed digest if known) per layer, bottom first.
    pub(super) layers: Vec<(String, Option<String>)>,
}

impl ExtractedArchive {
    /// Resolves the archive, in whichever of the two formats it is, to one image.
    pub(super) fn resolve(&self, wanted: Option<&str>) -> Result<ResolvedImage, ImageError> {
        if self.has("oci-layout") && self.has("index.json") {
            self.resolve_oci(wanted)
        } else if self.has("manifest.json") {
            self.resolve_docker(wanted)
        } else {
            Err(self.format(
                "neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)".into(),
            ))
        }
    }

    fn resolve_oci(&self, wanted: Option<&str>) -> Result<ResolvedImage, ImageError> {
        let index: ImageIndex = self.read_json("index.json", "OCI index")?;
        let mut candidates: Vec<&Descriptor> = index.manifests().iter().collect();
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
            self.format(format!(
                "index.json lists {} manifests and none is the single match for linux/{}",
                index.manifests().len(),
                host_arch()
            ))
        })?;
        let name = descriptor_name(desc);
        let manifest = self.oci_manifest(desc, 0)?;
        let config_path = self.oci_blob(manifest.config())?;
        Ok(ResolvedImage {
            name,
            config_path,
            config_digest: manifest.config().digest().to_string(),
            layers: manifest
                .layers()
                .iter()
                .map(|l| {
                    let digest = l.digest().to_string();
                    Ok((self.blob_member(&digest)?, Some(digest)))
                })
                .collect::<Result<_, ImageError>>()?,
        })
    }

    /// Follows nested image indexes down to one image manifest.
    fn oci_manifest(&self, desc: &Descriptor, depth: u32) -> Result<ImageManifest, ImageError> {
        if depth > 4 {
            return Err(self.format("image indexes nested too deep".into()));
        }
        let path = self.oci_blob(desc)?;
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        let media_type = desc.media_type().to_string();
        let is_index = media_type.ends_with("image.index.v1+json")
            || media_type.ends_with("manifest.list.v2+json")
            || serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .is_some_and(|v| v.get("manifests").is_some());
        if is_index {
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                    what: "OCI image index",
                    path: path.clone(),
                    source,
                })?;
            let candidates: Vec<&Descriptor> = index.manifests().iter().collect();
            let inner = pick_platform(&candidates).ok_or_else(|| {
                self.format(format!(
                    "image index {} has no manifest for linux/{}",
                    desc.digest(),
                    host_arch()
                ))
            })?;
            return self.oci_manifest(inner, depth + 1);
        }
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            what: "OCI image manifest",
            path,
            source,
        })
    }

    fn resolve_docker(&self, wanted: Option<&str>) -> Result<ResolvedImage, ImageError> {
        let entries: Vec<DockerManifestEntry> =
            self.read_json("manifest.json", "docker manifest")?;
        let entry = match entries.len() {
            0 => return Err(self.format("manifest.json lists no image".into())),
            1 => &entries[0],
            n => {
                let w = wanted.ok_or_else(|| {
                    self.format(format!(
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
                    .ok_or_else(|| self.format(format!("manifest.json has no image tagged {w}")))?
            }
        };
        let config_hex = Path::new(&entry.config)
            .file_name()
            .map(|f| f.to_string_lossy().trim_end_matches(".json").to_string())
            .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| {
                self.format(format!(
                    "config {:?} is not named by its digest; cannot verify it",
                    entry.config
                ))
            })?;
        let config_digest = format!("sha256:{config_hex}");
        let config_path = self.verified_blob(&entry.config, &config_digest)?;
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
}

/// The image name a descriptor carries in its annotations, if any.
fn descriptor_name(desc: &Descriptor) -> Option<String> {
    let annotations = desc.annotations().as_ref()?;
    if let Some(n) = annotations.get("io.containerd.image.name") {
        return Some(n.clone());
    }
    annotations
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
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
        })
    });
    let first = matching.next()?;
    Some(*first)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
