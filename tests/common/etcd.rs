//! [`Etcd`]: one real etcd on the underlay, plain or with TLS.

use super::*;

/// One key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value, exactly as stored.
    pub value: String,
    /// The etcd lease id attached to the key, 0 for none.
    pub lease: i64,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
}

/// A real etcd (3.4, `/usr/bin/etcd`) in its own namespace on the underlay at [`Etcd::IP`].
#[derive(Debug)]
pub struct Etcd {
    child: Mutex<Option<Child>>,
    ns: Netns,
    dir: tempfile::TempDir,
    /// Server certificate, key and CA for clients on the underlay ([`Etcd::new_tls`]).
    tls: Option<EtcdTls>,
}

/// PEM files of an etcd that serves TLS with client certificates on the underlay.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The server certificate (its subjectAltName must hold [`Etcd::IP`]).
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    /// The CA client certificates must be signed by.
    pub ca: PathBuf,
}

impl Etcd {
    /// etcd's address on the underlay.
    pub const IP: &'static str = "192.0.2.254";

    /// Starts etcd attached to `underlay` and waits until it answers.
    pub fn new(underlay: &Underlay) -> Etcd {
        let ns = Netns::new("etcd");
        underlay.attach(&ns, Self::IP);
        let etcd = Etcd {
            child: Mutex::new(None),
            ns,
            dir: temp_dir("etcd"),
            tls: None,
        };
        etcd.start();
        etcd
    }

    /// Like [`Etcd::new`], but nodes must speak TLS with a client certificate signed by
    /// `tls.ca`; [`Etcd::etcdctl`] keeps plain HTTP on 127.0.0.1 inside etcd's namespace.
    pub fn new_tls(underlay: &Underlay, tls: EtcdTls) -> Etcd {
        let ns = Netns::new("etcd");
        underlay.attach(&ns, Self::IP);
        let etcd = Etcd {
            child: Mutex::new(None),
            ns,
            dir: temp_dir("etcd"),
            tls: Some(tls),
        };
        etcd.start();
        etcd
    }

    /// `http://192.0.2.254:2379` (`https://` for [`Etcd::new_tls`]), the client URL for nodes.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:2379", Self::IP)
    }

    /// The etcd namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        read_to_string_lossy(&self.log_path())
    }

    /// Starts etcd (same data dir as before) and waits until it serves requests.
    pub fn start(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            guard.is_none(),
            "etcd in {} is already running",
            self.ns.name()
        );
        let data = self.dir.path().join("data");
        let data = data.to_string_lossy();
        let client_urls = format!("{},http://127.0.0.1:2379", self.endpoint());
        log_marker(&self.log_path(), "start etcd");
        let (out, err) = log_stdio(&self.log_path());
        let mut cmd = self.ns.command("etcd");
        cmd.args([
            "--name",
            "weft-test",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client_urls,
            "--advertise-client-urls",
            &self.endpoint(),
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "weft-test=http://127.0.0.1:2380",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot spawn etcd {cmd:?}: {e}"),
        };
        *guard = Some(child);
        drop(guard);
        let start = Instant::now();
        loop {
            let out = self.etcdctl(&["get", "--", "/weft-harness-ping"]);
            if out.status.success() {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "etcd in {} not serving after 30 s: {}\netcd log:\n{}",
                    self.ns.name(),
                    String::from_utf8_lossy(&out.stderr),
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops etcd (SIGTERM, wait); the data dir is kept for [`Etcd::start`].
    pub fn stop(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            terminate(&mut child, "etcd", Duration::from_secs(10));
        }
    }

    /// Runs `etcdctl args..` (API v3) against this etcd, from inside its namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.ns.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                "http://127.0.0.1:2379",
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "5s",
            ])
            .args(args);
        output_of(&mut cmd)
    }

    fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        if !out.status.success() {
            panic!(
                "etcdctl {} failed: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn etcdctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-w", "json"];
        all.extend_from_slice(args);
        let out = self.etcdctl_ok(&all);
        match serde_json::from_str(&out) {
            Ok(v) => v,
            Err(e) => panic!("etcdctl {}: invalid JSON ({e}): {out}", args.join(" ")),
        }
    }

    /// Puts `key` = `value` with no etcd lease (for subnets: a reservation).
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", "--", key, value]);
    }

    /// Grants an etcd lease of `ttl_secs`, puts `key` = `value` under it, returns the lease id.
    pub fn put_with_ttl(&self, key: &str, value: &str, ttl_secs: u64) -> i64 {
        let grant = self.etcdctl_json(&["lease", "grant", &ttl_secs.to_string()]);
        let id = grant["ID"]
            .as_i64()
            .unwrap_or_else(|| panic!("etcdctl lease grant {ttl_secs}: no ID in {grant}"));
        self.etcdctl_ok(&["put", &format!("--lease={id:x}"), "--", key, value]);
        id
    }

    /// The value of `key`, exactly as stored.
    pub fn get(&self, key: &str) -> Option<String> {
        self.get_kv(key).map(|kv| kv.value)
    }

    /// `key` with its lease and revisions.
    pub fn get_kv(&self, key: &str) -> Option<Kv> {
        self.kvs(&["get", "--", key]).into_iter().next()
    }

    /// Every key under `prefix`, sorted by key, with its value.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.get_prefix_kv(prefix)
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect()
    }

    /// Every key under `prefix`, sorted by key, with lease and revisions.
    pub fn get_prefix_kv(&self, prefix: &str) -> Vec<Kv> {
        self.kvs(&["get", "--prefix", "--", prefix])
    }

    fn kvs(&self, args: &[&str]) -> Vec<Kv> {
        let v = self.etcdctl_json(args);
        let Some(kvs) = v["kvs"].as_array() else {
            return Vec::new();
        };
        let b64 = |field: &Value| -> String {
            let s = field.as_str().unwrap_or_default();
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => panic!("etcdctl {}: bad base64 {s:?}: {e}", args.join(" ")),
            }
        };
        kvs.iter()
            .map(|kv| Kv {
                key: b64(&kv["key"]),
                value: b64(&kv["value"]),
                lease: kv["lease"].as_i64().unwrap_or(0),
                create_revision: kv["create_revision"].as_i64().unwrap_or(0),
                mod_revision: kv["mod_revision"].as_i64().unwrap_or(0),
            })
            .collect()
    }

    /// Deletes `key`; true if it existed.
    pub fn del(&self, key: &str) -> bool {
        self.etcdctl_json(&["del", "--", key])["deleted"]
            .as_i64()
            .unwrap_or(0)
            > 0
    }

    /// Revokes an etcd lease (its keys disappear at once).
    pub fn revoke(&self, lease: i64) {
        self.etcdctl_ok(&["lease", "revoke", &format!("{lease:x}")]);
    }

    /// Remaining TTL in seconds of etcd lease `lease`, None if it has expired or never existed.
    pub fn lease_ttl(&self, lease: i64) -> Option<i64> {
        let v = self.etcdctl_json(&["lease", "timetolive", &format!("{lease:x}")]);
        v["ttl"].as_i64().filter(|ttl| *ttl >= 0)
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let v = self.etcdctl_json(&["get", "--", "/weft-harness-ping"]);
        v["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("etcdctl get: no header.revision in {v}"))
    }

    /// Compacts history up to the current revision (watchers on older revisions get `compacted`).
    pub fn compact(&self) {
        let rev = self.revision();
        self.etcdctl_ok(&["compact", "--physical", &rev.to_string()]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            kill_and_reap(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "----- etcd log ({}), last 30 lines -----\n{}",
                self.ns.name(),
                tail(&self.log(), 30)
            );
        }
    }
}
