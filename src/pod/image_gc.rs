//! Image removal and garbage collection as kubelet does it: an image a pod uses is never
//! removed; when the filesystem holding the image store passes the high threshold, unused
//! images older than the minimum age go, least recently used first, until usage is under the
//! low threshold.
//!
//! Images are unpacked flat (one root filesystem per image), so no layer is shared on disk:
//! removing an image frees exactly its own tree.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::image::{ImageError, ImageStore, StoredImage};
use super::status;

/// kubelet's image GC settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// `imageGCHighThresholdPercent`: usage at or over which GC runs (85).
    pub high_percent: u8,
    /// `imageGCLowThresholdPercent`: usage GC frees down to (80).
    pub low_percent: u8,
    /// `imageMinimumGCAge`: images imported more recently are never collected (2 min).
    pub min_age: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

/// Size and free space of a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Total size.
    pub capacity: u64,
    /// Space available to unprivileged writers (what `df` shows as free).
    pub available: u64,
}

impl DiskUsage {
    /// The filesystem holding `path`.
    pub fn of(path: &Path) -> std::io::Result<DiskUsage> {
        let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
        let block = st.fragment_size();
        Ok(DiskUsage {
            capacity: st.blocks() * block,
            available: st.blocks_available() * block,
        })
    }

    /// Used share in percent, as kubelet computes it (capacity minus available).
    pub fn used_percent(&self) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        (self.capacity - self.available.min(self.capacity)) * 100 / self.capacity
    }
}

/// The images GC would remove, in order: nothing while usage is under `high_percent`; else
/// unused images older than `min_age`, least recently used first, until their sizes add up to
/// the bytes that bring usage down to `low_percent`.
pub fn plan(
    images: &[StoredImage],
    in_use: &BTreeSet<String>,
    usage: DiskUsage,
    policy: GcPolicy,
    now: SystemTime,
) -> Vec<String> {
    if usage.used_percent() < u64::from(policy.high_percent) {
        return Vec::new();
    }
    let used = usage.capacity - usage.available.min(usage.capacity);
    let target = usage.capacity / 100 * u64::from(policy.low_percent);
    let mut to_free = used.saturating_sub(target);
    let mut candidates: Vec<&StoredImage> = images
        .iter()
        .filter(|i| !in_use.contains(&i.id))
        .filter(|i| now.duration_since(i.imported).unwrap_or_default() >= policy.min_age)
        .collect();
    candidates.sort_by_key(|i| (i.last_used, i.id.clone()));
    let mut out = Vec::new();
    for image in candidates {
        if to_free == 0 {
            break;
        }
        to_free = to_free.saturating_sub(image.size.max(1));
        out.push(image.id.clone());
    }
    out
}

/// Image ids the pods under `pod_root` use: every container status's `imageID`, and what each
/// container's image name resolves to now (a container not started yet still needs it).
pub fn images_in_use(pod_root: &Path, store: &ImageStore) -> Result<BTreeSet<String>, GcError> {
    let mut used = BTreeSet::new();
    let entries = match std::fs::read_dir(pod_root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(used),
        Err(source) => {
            return Err(GcError::Pods {
                path: pod_root.display().to_string(),
                reason: source.to_string(),
            })
        }
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.join(status::STATUS_FILE).is_file() {
            continue;
        }
        // A pod whose record cannot be read blocks GC: its images are unknown.
        let record = status::read_record(&dir).map_err(|e| GcError::Pods {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let st = &record.pod.status;
        for s in st
            .init_container_statuses
            .iter()
            .chain(&st.container_statuses)
        {
            if !s.image_id.is_empty() {
                used.insert(s.image_id.clone());
            }
        }
        let spec = &record.pod.spec;
        for c in spec.init_containers.iter().chain(&spec.containers) {
            if let Ok(image) = store.get(&c.image) {
                used.insert(image.id);
            }
        }
    }
    Ok(used)
}

/// Errors of image removal and GC.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The pods' records could not be read, so what is in use is unknown.
    #[error("read pod records {path}: {reason}")]
    Pods {
        /// The pod root or pod directory.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The image is used by a pod and `--force` was not given.
    #[error(
        "image {name} ({id}) is used by a pod; --force untags it and removes it when the pod goes"
    )]
    InUse {
        /// The name or id given.
        name: String,
        /// Its image id.
        id: String,
    },
    /// The filesystem of the store could not be measured.
    #[error("measure filesystem of {path}: {source}")]
    Usage {
        /// The store root.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `weftctl image rm`: untags `name_or_id` (a name, or an id with all its names) and removes
/// the image unless a pod uses it; with `force`, a used image is untagged and kept until its
/// pod goes (the next prune or GC removes it). Returns whether content was deleted.
pub fn remove(
    store: &ImageStore,
    pod_root: &Path,
    name_or_id: &str,
    force: bool,
) -> Result<bool, GcError> {
    let (id, names) = store.resolve_for_removal(name_or_id)?;
    let used = images_in_use(pod_root, store)?.contains(&id);
    if used && !force {
        return Err(GcError::InUse {
            name: name_or_id.to_string(),
            id,
        });
    }
    Ok(store.remove(&id, &names, used)?)
}

/// `weftctl image prune`: removes every image no pod uses. Returns the removed ids.
pub fn prune(store: &ImageStore, pod_root: &Path) -> Result<Vec<String>, GcError> {
    let in_use = images_in_use(pod_root, store)?;
    let mut removed = Vec::new();
    for image in store.stored()? {
        if !in_use.contains(&image.id) && store.remove(&image.id, &image.names, false)? {
            removed.push(image.id);
        }
    }
    Ok(removed)
}

/// Images removed by automatic GC since weftd started (`weft_image_gc_removed_total`).
pub static GC_REMOVED: AtomicU64 = AtomicU64::new(0);
/// Bytes freed by automatic GC since weftd started (`weft_image_gc_freed_bytes_total`).
pub static GC_FREED_BYTES: AtomicU64 = AtomicU64::new(0);

/// One automatic GC pass: measures the store's filesystem and removes what [`plan`] says.
/// Returns the removed ids.
pub fn collect(
    store: &ImageStore,
    pod_root: &Path,
    policy: GcPolicy,
) -> Result<Vec<String>, GcError> {
    let usage = DiskUsage::of(store.root()).map_err(|source| GcError::Usage {
        path: store.root().display().to_string(),
        source,
    })?;
    if usage.used_percent() < u64::from(policy.high_percent) {
        return Ok(Vec::new());
    }
    let images = store.stored()?;
    let in_use = images_in_use(pod_root, store)?;
    let doomed = plan(&images, &in_use, usage, policy, SystemTime::now());
    let mut removed = Vec::new();
    for id in doomed {
        let Some(image) = images.iter().find(|i| i.id == id) else {
            continue;
        };
        if store.remove(&image.id, &image.names, false)? {
            GC_REMOVED.fetch_add(1, Ordering::Relaxed);
            GC_FREED_BYTES.fetch_add(image.size, Ordering::Relaxed);
            tracing::info!(
                id = %image.id,
                names = ?image.names,
                bytes = image.size,
                used_percent = usage.used_percent(),
                "image GC removed an unused image"
            );
            removed.push(id);
        }
    }
    Ok(removed)
}

/// Runs [`collect`] every `interval` on a thread of its own until `stop` is set; a failed pass
/// is logged and retried at the next interval.
pub fn spawn(
    image_root: &Path,
    pod_root: &Path,
    policy: GcPolicy,
    interval: Duration,
    stop: Arc<AtomicBool>,
) {
    let (image_root, pod_root) = (image_root.to_path_buf(), pod_root.to_path_buf());
    let spawned = std::thread::Builder::new()
        .name("image-gc".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let pass = ImageStore::open(&image_root)
                    .map_err(GcError::from)
                    .and_then(|store| collect(&store, &pod_root, policy));
                if let Err(e) = pass {
                    tracing::warn!(root = %image_root.display(), error = %e, "image GC");
                }
                let mut slept = Duration::ZERO;
                while slept < interval && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    slept += Duration::from_millis(100);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "start image GC thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn image(id: &str, size: u64, last_used: u64) -> StoredImage {
        StoredImage {
            id: id.to_string(),
            names: vec![format!("docker.io/library/{id}:latest")],
            size,
            last_used: UNIX_EPOCH + Duration::from_secs(last_used),
            imported: UNIX_EPOCH + Duration::from_secs(10),
        }
    }

    #[test]
    fn plan_is_lru_skips_used_and_young_images_and_stops_at_the_low_mark() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        let policy = GcPolicy::default();
        let images = [
            image("a", 40, 300),
            image("b", 40, 100),
            image("c", 40, 200),
            image("used", 40, 50),
        ];
        let in_use: BTreeSet<String> = ["used".to_string()].into();
        let at = |available| DiskUsage {
            capacity: 1000,
            available,
        };
        // 84 % used: under the high mark, nothing.
        assert!(plan(&images, &in_use, at(160), policy, now).is_empty());
        // 90 % used: 100 bytes to free down to 80 %: the three oldest unused, never "used".
        assert_eq!(
            plan(&images, &in_use, at(100), policy, now),
            ["b", "c", "a"]
        );
        // 86 % used: 60 bytes: two images.
        assert_eq!(plan(&images, &in_use, at(140), policy, now), ["b", "c"]);
        // Imported under two minutes ago: kept.
        let young = [StoredImage {
            imported: now - Duration::from_secs(30),
            ..image("new", 400, 0)
        }];
        assert!(plan(&young, &BTreeSet::new(), at(0), policy, now).is_empty());
    }
}
