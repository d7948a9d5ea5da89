//! The node's WireGuard private key: generated once, kept in a 0600 file, so a restart or a
//! reboot does not re-key the node (peers would drop it until they saw the new lease). The
//! file holds the key in base64 as Flannel's `/run/flannel/wgkey` does; `WIREGUARD_KEY_FILE`
//! names another file, as for flanneld. The key is never logged and never leaves the node:
//! only its public half goes into the lease.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::backend::BackendError;
use crate::wireguard_key::{SecretKey, WireGuardKey, KEY_LEN};

/// Flannel's environment variable naming the private key file.
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";
/// The key file's name under `--state-dir` when `WIREGUARD_KEY_FILE` is not set.
pub const KEY_FILE_NAME: &str = "wireguard.key";

/// Where the private key lives: `$WIREGUARD_KEY_FILE`, else `<state_dir>/wireguard.key`.
pub fn key_path(state_dir: &Path, env: Option<&std::ffi::OsStr>) -> PathBuf {
    match env {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => state_dir.join(KEY_FILE_NAME),
    }
}

/// The public key of `private` (Curve25519).
pub fn public_key(private: &SecretKey) -> WireGuardKey {
    let secret = boringtun::x25519::StaticSecret::from(*private.as_bytes());
    WireGuardKey::from_bytes(boringtun::x25519::PublicKey::from(&secret).to_bytes())
}

fn state_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackendError {
    let path = path.to_path_buf();
    move |source| BackendError::State { op, path, source }
}

/// Reads the private key at `path`, or generates one and writes it there (mode 0600, the
/// directory created 0700). A file that holds no key is an error, not a reason to re-key.
/// Returns the key and whether it was generated now.
pub fn load_or_create(path: &Path) -> Result<(SecretKey, bool), BackendError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let key = SecretKey::parse(&text).map_err(|e| BackendError::BadState {
                path: path.to_path_buf(),
                // The reason only: the text may be (part of) a key.
                reason: format!("not a WireGuard private key: {e}"),
            })?;
            tighten(path)?;
            Ok((key, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = SecretKey::from_bytes(rand::random::<[u8; KEY_LEN]>());
            let dir = path.parent().unwrap_or(Path::new("."));
            if !dir.exists() {
                fs::create_dir_all(dir).map_err(state_err("create key directory", dir))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(state_err("restrict key directory", dir))?;
            }
            crate::atomic_file::write_atomic(path, key.to_base64().as_bytes(), 0o600)
                .map_err(state_err("write WireGuard key file", path))?;
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(state_err("sync key directory", dir))?;
            Ok((key, true))
        }
        Err(e) => Err(state_err("read WireGuard key file", path)(e)),
    }
}

/// A key file others can read is made 0600 (an operator may have copied it in carelessly).
fn tighten(path: &Path) -> Result<(), BackendError> {
    let meta = fs::metadata(path).map_err(state_err("stat WireGuard key file", path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "WireGuard key file was readable by others; made it 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(state_err("restrict WireGuard key file", path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_kept_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir.path().join("state"), None);
        assert_eq!(path, dir.path().join("state/wireguard.key"));
        let (key, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again, key);
        assert_eq!(public_key(&again), public_key(&key));
        // Flannel's file: the base64 key, a trailing newline tolerated; mode tightened.
        fs::write(&path, format!("{}\n", key.to_base64())).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create(&path).unwrap().0, key);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_broken_key_file_is_an_error_naming_the_file_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        fs::write(&path, "c2VjcmV0IGJ1dCBzaG9ydA==").unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("not a WireGuard private key"), "{e}");
        assert!(
            !e.contains("c2VjcmV0"),
            "the file's text must not be echoed: {e}"
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "c2VjcmV0IGJ1dCBzaG9ydA==",
            "the file is left alone"
        );
    }

    #[test]
    fn the_environment_names_the_file_as_for_flanneld() {
        let p = key_path(
            Path::new("/var/lib/weft"),
            Some("/run/flannel/wgkey".as_ref()),
        );
        assert_eq!(p, PathBuf::from("/run/flannel/wgkey"));
    }

    #[test]
    fn public_key_matches_wg_pubkey() {
        // `echo 'YAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=' | wg pubkey`
        let private = SecretKey::parse("YAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(
            public_key(&private).to_string(),
            "Y2FD6uTgrq+/bbBAXCNOtE+PGk8Papoh7qaWBpQUXn0="
        );
    }
}
