//! Builds small container images for tests, without network: layers are tars made in memory
//! (the busybox layer from Debian's static `/usr/bin/busybox`), packed as an OCI image layout
//! archive or a `docker save` archive.
//!
//! ```ignore
//! let archive = dir.join("busybox.tar");
//! ImageBuilder::new().layer(busybox_layer()?).cmd(&["sh"]).name("busybox:latest").write_oci(&archive)?;
//! ```

#![allow(dead_code)] // each test file uses a different part of this builder

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where the test images' busybox comes from (Debian's `busybox-static`).
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// The busybox applets linked into the test image's `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "nc", "sleep", "hostname", "touch", "mkdir", "rm", "test", "true",
    "false", "ps", "seq", "env", "id", "pwd", "printf", "wc", "grep", "kill", "mount", "head",
    "stat",
];

/// One entry of a layer tar.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory with its mode.
    Dir(String, u32),
    /// A regular file with contents and mode.
    File(String, Vec<u8>, u32),
    /// A symlink and its target.
    Symlink(String, String),
    /// A hard link and the archive path it links to.
    Hardlink(String, String),
    /// A device node or FIFO: path, entry type, major, minor, mode.
    Special(String, tar::EntryType, u32, u32, u32),
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn hex_of(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// A layer tar holding `entries`, in order. Paths are written as given (so tests can also build
/// hostile archives with `../` or absolute names).
pub fn layer(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        match entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                append_raw(&mut builder, &mut header, path, &[])?;
            }
            Entry::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                append_raw(&mut builder, &mut header, path, data)?;
            }
            Entry::Special(path, kind, major, minor, mode) => {
                header.set_entry_type(*kind);
                header.set_mode(*mode);
                header.set_size(0);
                header.set_device_major(*major)?;
                header.set_device_minor(*minor)?;
                append_raw(&mut builder, &mut header, path, &[])?;
            }
            Entry::Symlink(path, target) | Entry::Hardlink(path, target) => {
                let kind = if matches!(entry, Entry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                header.set_entry_type(kind);
                header.set_mode(0o777);
                header.set_size(0);
                // set_link_name refuses nothing we need; raw bytes keep hostile targets intact.
                let name = header
                    .as_old_mut()
                    .linkname
                    .iter_mut()
                    .zip(target.as_bytes().iter().chain(std::iter::repeat(&0u8)));
                for (dst, src) in name {
                    *dst = *src;
                }
                append_raw(&mut builder, &mut header, path, &[])?;
            }
        }
    }
    builder.into_inner()
}

/// Writes `path` into the header's name field byte for byte (the tar crate's `append_data`
/// would reject `..` and absolute paths, which the hostile-archive tests need).
fn append_raw(
    builder: &mut tar::Builder<Vec<u8>>,
    header: &mut tar::Header,
    path: &str,
    data: &[u8],
) -> io::Result<()> {
    if path.len() > 99 {
        return Err(io::Error::other(format!("test tar path too long: {path}")));
    }
    let name = &mut header.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_cksum();
    builder.append(header, data)
}

/// The busybox layer: `/bin/busybox` plus symlinks for [`APPLETS`], `/etc/passwd`, `/etc/group`,
/// and empty `/tmp`, `/root`, `/data`.
pub fn busybox_layer() -> io::Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("read {BUSYBOX} (install busybox-static): {e}"),
        )
    })?;
    let mut entries = vec![
        Entry::Dir("bin".into(), 0o755),
        Entry::Dir("etc".into(), 0o755),
        Entry::Dir("tmp".into(), 0o1777),
        Entry::Dir("root".into(), 0o700),
        Entry::Dir("data".into(), 0o755),
        Entry::File("bin/busybox".into(), busybox, 0o755),
        Entry::File(
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
            0o644,
        ),
        Entry::File(
            "etc/group".into(),
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
            0o644,
        ),
    ];
    for applet in APPLETS {
        entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
    }
    layer(&entries)
}

fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes)?;
    enc.finish()
}

/// `bytes` compressed by the `zstd` program (scripts/setup.sh installs it).
fn zstd_cli(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut child = std::process::Command::new("zstd")
        .args(["-q", "-c", "-3"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::other(format!("run zstd (scripts/setup.sh installs it): {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("zstd stdin"))?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| io::Error::other("zstd writer panicked"))??;
    if !out.status.success() {
        return Err(io::Error::other(format!("zstd: {}", out.status)));
    }
    Ok(out.stdout)
}

/// An image under construction: layers (uncompressed tars, bottom first) and config.
#[derive(Debug, Clone, Default)]
pub struct ImageBuilder {
    layers: Vec<Vec<u8>>,
    gzip: bool,
    zstd: bool,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    name: Option<String>,
}

/// What was written, for tests that tamper with or check digests.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Config blob digest: the image id the store must report.
    pub config_digest: String,
    /// Manifest digest (OCI archives).
    pub manifest_digest: String,
    /// Layer blob digests as stored (compressed when gzip).
    pub layer_digests: Vec<String>,
}

impl ImageBuilder {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// The busybox image: one busybox layer, `Cmd ["sh"]`, `PATH` set, named `busybox:latest`.
    pub fn busybox() -> io::Result<Self> {
        Ok(Self::new()
            .layer(busybox_layer()?)
            .cmd(&["sh"])
            .env(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
            .name("busybox:latest"))
    }

    /// Adds a layer on top.
    pub fn layer(mut self, tar: Vec<u8>) -> Self {
        self.layers.push(tar);
        self
    }

    /// Gzip-compress the layers.
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Compress the layers with the `zstd` command line (OCI `tar+zstd`), so the store reads
    /// a stream written by a zstd implementation nobody here wrote.
    pub fn zstd(mut self, on: bool) -> Self {
        self.zstd = on;
        self
    }

    /// Sets `Entrypoint`.
    pub fn entrypoint(mut self, argv: &[&str]) -> Self {
        self.entrypoint = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets `Cmd`.
    pub fn cmd(mut self, argv: &[&str]) -> Self {
        self.cmd = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets `Env`.
    pub fn env(mut self, env: &[&str]) -> Self {
        self.env = env.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets `WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.to_string());
        self
    }

    /// The name recorded in the archive (`RepoTags` / `org.opencontainers.image.ref.name`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    fn config(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.layers.iter().map(|l| digest(l)).collect();
        let mut config = json!({
            "Env": self.env,
            "Cmd": self.cmd,
        });
        if !self.entrypoint.is_empty() {
            config["Entrypoint"] = json!(self.entrypoint);
        }
        if let Some(dir) = &self.working_dir {
            config["WorkingDir"] = json!(dir);
        }
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap_or_default()
    }

    fn layer_blobs(&self) -> io::Result<Vec<Vec<u8>>> {
        self.layers
            .iter()
            .map(|l| match (self.gzip, self.zstd) {
                (true, _) => gzip(l),
                (false, true) => zstd_cli(l),
                (false, false) => Ok(l.clone()),
            })
            .collect()
    }

    /// Writes an OCI image layout archive (`oci-layout`, `index.json`, `blobs/sha256/*`).
    pub fn write_oci(&self, path: &Path) -> io::Result<BuiltImage> {
        let config = self.config();
        let blobs = self.layer_blobs()?;
        let layer_media = match (self.gzip, self.zstd) {
            (true, _) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (false, true) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (false, false) => "application/vnd.oci.image.layer.v1.tar",
        };
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": blobs.iter().map(|b| json!({"mediaType": layer_media, "digest": digest(b), "size": b.len()})).collect::<Vec<_>>(),
        }))
        .map_err(io::Error::other)?;
        let mut annotations = serde_json::Map::new();
        if let Some(name) = &self.name {
            annotations.insert("org.opencontainers.image.ref.name".into(), json!(name));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(&manifest),
                "size": manifest.len(),
                "annotations": annotations,
                "platform": {"architecture": "amd64", "os": "linux"},
            }],
        }))
        .map_err(io::Error::other)?;
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), index),
        ];
        files.push((
            format!("blobs/sha256/{}", hex_of(&digest(&manifest))),
            manifest.clone(),
        ));
        files.push((
            format!("blobs/sha256/{}", hex_of(&digest(&config))),
            config.clone(),
        ));
        for b in &blobs {
            files.push((format!("blobs/sha256/{}", hex_of(&digest(b))), b.clone()));
        }
        write_archive(path, &files)?;
        Ok(BuiltImage {
            config_digest: digest(&config),
            manifest_digest: digest(&manifest),
            layer_digests: blobs.iter().map(|b| digest(b)).collect(),
        })
    }

    /// Writes a classic `docker save` archive (`manifest.json`, `<config hex>.json`,
    /// `<n>/layer.tar`).
    pub fn write_docker(&self, path: &Path) -> io::Result<BuiltImage> {
        let config = self.config();
        let blobs = self.layer_blobs()?;
        let config_name = format!("{}.json", hex_of(&digest(&config)));
        let layer_names: Vec<String> = (0..blobs.len())
            .map(|i| format!("{:064x}/layer.tar", i + 1))
            .collect();
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": self.name.iter().collect::<Vec<_>>(),
            "Layers": layer_names,
        }]))
        .map_err(io::Error::other)?;
        let mut files = vec![
            ("manifest.json".to_string(), manifest.clone()),
            (config_name, config.clone()),
        ];
        for (name, blob) in layer_names.iter().zip(&blobs) {
            files.push((name.clone(), blob.clone()));
        }
        write_archive(path, &files)?;
        Ok(BuiltImage {
            config_digest: digest(&config),
            manifest_digest: digest(&manifest),
            layer_digests: blobs.iter().map(|b| digest(b)).collect(),
        })
    }
}

/// Writes a plain tar of `files` (directories implied).
pub fn write_archive(path: &Path, files: &[(String, Vec<u8>)]) -> io::Result<()> {
    let mut builder = tar::Builder::new(fs::File::create(path)?);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, name, data.as_slice())?;
    }
    builder.into_inner()?.sync_all()
}

/// Reads an archive written by [`write_archive`] back as `(name, bytes)` pairs (to tamper with it).
pub fn read_archive(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut archive = tar::Archive::new(fs::File::open(path)?);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        io::Read::read_to_end(&mut entry, &mut data)?;
        out.push((name, data));
    }
    Ok(out)
}
