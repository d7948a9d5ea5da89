//! One way to replace a file: write a temporary file beside it, set its mode, fsync, rename it
//! over the target, so a reader (or a crash) sees the old content or the new, never half of it.
//!
//! Standard library only: the CNI plugin crate includes this file by path, and it must not link
//! tokio or etcd.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Writes `bytes` to `path` with permissions `mode` through a temporary file in the same
/// directory and a rename. The temporary file is removed when any step fails.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `.<name>.tmp-<pid>-<n>` beside `path`: hidden, and unique per process and call, so two
/// writers of the same file never share a temporary file.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_with_the_mode_and_leaves_no_temporary() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.json");
        fs::write(&path, "old")?;
        write_atomic(&path, b"new", 0o600)?;
        assert_eq!(fs::read_to_string(&path)?, "new");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
        assert_eq!(names.len(), 1, "{names:?}");
        Ok(())
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("target");
        fs::create_dir(&target)?;
        fs::write(target.join("x"), "keep")?;
        // Renaming a file over a non-empty directory fails; nothing may be left behind.
        assert!(write_atomic(&target, b"new", 0o644).is_err());
        assert_eq!(fs::read_to_string(target.join("x"))?, "keep");
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
