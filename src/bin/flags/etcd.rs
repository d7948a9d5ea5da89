//! The `--etcd-*` flags of `weftd` and `weftctl` (included by both binaries): flags belong to
//! the binaries, the connection options they describe to `weft::store`.

use std::fmt;
use std::path::PathBuf;

use weft::store::{EtcdOptions, DEFAULT_ETCD_ENDPOINTS, DEFAULT_ETCD_PREFIX};

/// The `--etcd-*` flags shared by `weftd` and `weftctl`, each also read from `WEFTD_ETCD_*`.
#[derive(Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated.
    #[arg(long = "etcd-endpoints", env = "WEFTD_ETCD_ENDPOINTS", value_delimiter = ',',
          default_value = DEFAULT_ETCD_ENDPOINTS)]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix of the network.
    #[arg(long = "etcd-prefix", env = "WEFTD_ETCD_PREFIX", default_value = DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,
    /// CA certificate (PEM) for etcd over TLS.
    #[arg(long = "etcd-cafile", env = "WEFTD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd over TLS.
    #[arg(long = "etcd-certfile", env = "WEFTD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key (PEM) for etcd over TLS.
    #[arg(long = "etcd-keyfile", env = "WEFTD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user name.
    #[arg(long = "etcd-username", env = "WEFTD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password. Visible to every local user in `ps`: prefer `--etcd-password-file`.
    #[arg(
        long = "etcd-password",
        env = "WEFTD_ETCD_PASSWORD",
        hide_env_values = true,
        conflicts_with = "etcd_password_file"
    )]
    pub etcd_password: Option<String>,
    /// File holding the etcd password (one trailing newline is ignored); keep it 0600.
    #[arg(long = "etcd-password-file", env = "WEFTD_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
}

impl fmt::Debug for EtcdArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.options(), f)
    }
}

impl EtcdArgs {
    /// The connection options these flags describe.
    pub fn options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            cafile: self.etcd_cafile.clone(),
            certfile: self.etcd_certfile.clone(),
            keyfile: self.etcd_keyfile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
            password_file: self.etcd_password_file.clone(),
        }
    }
}
