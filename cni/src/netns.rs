//! A network namespace: opening and validating a path (`CNI_NETNS`, a pod's sandbox), and
//! reaching into it. Also the library `weft_netns`, so that the pod core (its probes) enters a
//! namespace the way the plugin does, without the plugin linking tokio or etcd.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

/// Why `CNI_NETNS` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not exist (the container is gone).
    #[error("network namespace {path} does not exist")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// The path exists but is not a network namespace.
    #[error("{path} is not a network namespace: {reason}")]
    NotNetns {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// The calling thread could not return from the container namespace: nothing may continue.
    #[error("cannot return to the node namespace after entering {path}: {source}")]
    Restore {
        /// The container namespace entered.
        path: PathBuf,
        /// The error of the second setns.
        source: io::Error,
    },
    /// Opening or entering the namespace failed otherwise.
    #[error("{op} network namespace {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path given.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// An open handle on a container network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens `path` and checks that it is a namespace file (on nsfs, as bind mounts and /proc/<pid>/ns/net are).
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        // NotFound from the stat or the open: the container (and its namespace) is gone.
        let failed = |op: &'static str| {
            move |source: io::Error| match source.kind() {
                io::ErrorKind::NotFound => NetnsError::Missing {
                    path: path.to_path_buf(),
                },
                _ => NetnsError::Io {
                    op,
                    path: path.to_path_buf(),
                    source,
                },
            }
        };
        // A namespace file is a regular file on nsfs: a FIFO named here would block the open
        // forever, and opening a device can wake its driver, so neither is opened at all
        // (and the open itself never blocks nor takes a controlling terminal, should the
        // path change in between; the nsfs check below has the last word).
        let meta = std::fs::metadata(path).map_err(failed("stat"))?;
        if !meta.is_file() {
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                "a directory"
            } else if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_char_device() || kind.is_block_device() {
                "a device"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            return Err(NetnsError::NotNetns {
                path: path.to_path_buf(),
                reason: format!("{what}, not a namespace file; not opened"),
            });
        }
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(failed("open"))?;
        let fs = fstatfs(&file).map_err(|errno| NetnsError::Io {
            op: "statfs",
            path: path.to_path_buf(),
            source: io::Error::from(errno),
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NetnsError::NotNetns {
                path: path.to_path_buf(),
                reason: "not a namespace file (not on nsfs)".into(),
            });
        }
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The path the namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file (for `IFLA_NET_NS_FD`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `open` with the calling thread inside this namespace, for creating sockets, which
    /// stay bound there. The thread enters just long enough and returns at once (a helper thread
    /// would cost a scheduler round trip on a busy node).
    pub fn within<T>(&self, open: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let home_path = Path::new("/proc/thread-self/ns/net");
        let home = File::open(home_path).map_err(|source| NetnsError::Io {
            op: "open own",
            path: home_path.to_path_buf(),
            source,
        })?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
            if errno == nix::errno::Errno::EINVAL {
                NetnsError::NotNetns {
                    path: self.path.clone(),
                    reason: "setns(CLONE_NEWNET) refused it".into(),
                }
            } else {
                NetnsError::Io {
                    op: "enter",
                    path: self.path.clone(),
                    source: io::Error::from(errno),
                }
            }
        })?;
        let opened = open();
        setns(&home, CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Restore {
            path: self.path.clone(),
            source: io::Error::from(errno),
        })?;
        Ok(opened)
    }
}
