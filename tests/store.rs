//! The etcd edge against a real etcd. Each test starts its own etcd inside a network namespace
//! it creates (`weft-st-<pid>-<n>`) and talks to it from a thread that joined that namespace, so
//! nothing touches the machine's own network. Needs root, `ip` and `/usr/bin/etcd`.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::Client;
use ipnetwork::Ipv4Network;
use weft::config::NetworkConfig;
use weft::lease::{Lease, LeaseAttrs};
use weft::store::{
    EtcdOptions, EtcdStore, LeaseEvent, LeaseLostReason, OwnLease, StoreError, LIST_PAGE,
};

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A real etcd in a private network namespace; killed and removed on drop, also on failure.
struct EtcdNs {
    ns: String,
    dir: PathBuf,
    etcd: Option<Child>,
    /// How to reach this etcd once it is up.
    ready: EtcdOptions,
}

fn run_ok(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl EtcdNs {
    /// etcd over plain HTTP.
    fn start() -> EtcdNs {
        EtcdNs::launch(false)
    }

    /// etcd over HTTPS with client certificates, from a CA made for this test.
    fn start_tls() -> EtcdNs {
        EtcdNs::launch(true)
    }

    fn launch(tls: bool) -> EtcdNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let ns = format!("weft-st-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        run_ok(&["ip", "netns", "add", &ns]);
        // From here on, Drop removes the namespace even if a later step panics.
        let mut me = EtcdNs {
            ns,
            dir,
            etcd: None,
            ready: opts(PREFIX),
        };
        run_ok(&[
            "ip", "netns", "exec", &me.ns, "ip", "link", "set", "lo", "up",
        ]);
        std::fs::create_dir_all(&me.dir).expect("create etcd temp dir");
        let scheme = if tls { "https" } else { "http" };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &me.ns, "/usr/bin/etcd", "--name", "st"])
            .arg("--data-dir")
            .arg(me.dir.join("data"))
            .arg(format!("--listen-client-urls={scheme}://127.0.0.1:2379"))
            .arg(format!("--advertise-client-urls={scheme}://127.0.0.1:2379"))
            .args([
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=st=http://127.0.0.1:2380",
            ]);
        if tls {
            make_certs(&me.dir);
            let f = |name: &str| me.dir.join(name).display().to_string();
            cmd.arg(format!("--cert-file={}", f("server.pem")))
                .arg(format!("--key-file={}", f("server.key")))
                .arg(format!("--trusted-ca-file={}", f("ca.pem")))
                .arg("--client-cert-auth");
            me.ready = EtcdOptions {
                endpoints: vec!["https://127.0.0.1:2379".into()],
                cafile: Some(me.dir.join("ca.pem")),
                certfile: Some(me.dir.join("client.pem")),
                keyfile: Some(me.dir.join("client.key")),
                ..opts(PREFIX)
            };
        }
        let log = File::create(me.dir.join("etcd.log")).expect("create etcd log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup etcd log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd in the namespace");
        me.etcd = Some(child);
        me
    }

    /// Runs async test code on a thread inside the namespace, once etcd answers there.
    fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let ns = self.ns.clone();
        let log = self.dir.join("etcd.log");
        let ready = self.ready.clone();
        let handle = std::thread::spawn(move || {
            let nsfd = File::open(format!("/run/netns/{ns}")).expect("open netns");
            nix::sched::setns(&nsfd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                wait_ready(&ready, &log).await;
                f().await
            })
        });
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn etcd_pid(&self) -> nix::unistd::Pid {
        let pid = self.etcd.as_ref().expect("etcd running").id();
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"))
    }

    fn kill_etcd(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdNs {
    fn drop(&mut self) {
        self.kill_etcd();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_ready(ready: &EtcdOptions, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = EtcdStore::connect(ready).await {
            if s.network_config().await.is_ok() {
                return;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "etcd did not answer within 20 s; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_certs(dir: &std::path::Path) {
    let d = |name: &str| dir.join(name).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["openssl", "req", "-x509"];
    ca.extend(ec);
    let (ca_key, ca_pem) = (d("ca.key"), d("ca.pem"));
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
        "-days",
        "2",
        "-subj",
        "/CN=weft-test-ca",
    ]);
    run_ok(&ca);
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let (key, csr, pem, ext) = (
            d(&format!("{name}.key")),
            d(&format!("{name}.csr")),
            d(&format!("{name}.pem")),
            d(&format!("{name}.ext")),
        );
        std::fs::write(
            &ext,
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .expect("write extension file");
        let mut req = vec!["openssl", "req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=weft-test"]);
        run_ok(&req);
        run_ok(&[
            "openssl",
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

fn opts(prefix: &str) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec!["http://127.0.0.1:2379".into()],
        prefix: prefix.into(),
        ..EtcdOptions::default()
    }
}

async fn store() -> EtcdStore {
    EtcdStore::connect(&opts(PREFIX)).await.expect("connect")
}

async fn raw() -> Client {
    Client::connect(["http://127.0.0.1:2379"], None)
        .await
        .expect("raw connect")
}

async fn put_config(json: &str) -> NetworkConfig {
    raw()
        .await
        .put(format!("{PREFIX}/config"), json, None)
        .await
        .expect("put config");
    NetworkConfig::parse(json).expect("test config parses")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test IP")
}

fn net(s: &str) -> Ipv4Network {
    s.parse().expect("test subnet")
}

fn vxlan(public_ip: &str, mac: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ipv6: None,
        backend_v6_data: None,
        public_ip: ip(public_ip),
        backend_type: "vxlan".into(),
        backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac})),
    }
}

fn key(subnet: Ipv4Network) -> String {
    format!("{PREFIX}/subnets/{}-{}", subnet.ip(), subnet.prefix())
}

/// The raw value and etcd lease id of a key, `None` if absent.
async fn raw_get(k: &str) -> Option<(String, i64, i64)> {
    let resp = raw().await.get(k, None).await.expect("raw get");
    resp.kvs().first().map(|kv| {
        (
            String::from_utf8_lossy(kv.value()).into_owned(),
            kv.lease(),
            kv.mod_revision(),
        )
    })
}

#[test]
fn acquire_on_empty_store_writes_flannels_key_and_value() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        assert_eq!(s.network_config().await.unwrap(), None);
        let cfg = put_config(CONFIG).await;
        assert_eq!(s.network_config().await.unwrap().as_deref(), Some(CONFIG));

        let attrs = vxlan("192.0.2.1", "aa:bb:cc:dd:ee:01");
        let own = s.acquire(&cfg, &attrs, None, DAY).await.unwrap();
        assert!(cfg.contains_subnet(&own.subnet), "{own:?}");
        assert!(own.etcd_lease.is_some());
        let (value, lease, _) = raw_get(&key(own.subnet)).await.expect("key exists");
        assert_eq!(
            value,
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}"#
        );
        assert_eq!(Some(lease), own.etcd_lease);
        let ttl = raw().await.lease_time_to_live(lease, None).await.unwrap();
        assert_eq!(ttl.granted_ttl(), 86400);
        let expires = own.expires.expect("leased key has an expiry");
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(86300), "{left:?}");

        let snap = s.list_leases().await.unwrap();
        assert_eq!(snap.leases.len(), 1);
        assert_eq!(snap.leases[0].subnet, own.subnet);
        assert_eq!(snap.leases[0].attrs, attrs);
        assert_eq!(snap.leases[0].etcd_lease, own.etcd_lease);
        assert!(snap.revision >= snap.leases[0].mod_revision);
        let shown = s.lease_expiry(lease).await.unwrap().expect("not expired");
        assert!(shown.duration_since(SystemTime::now()).unwrap() > Duration::from_secs(86300));
    });
}

/// Flannel's `subnetRegex` (pkg/subnet/subnet.go), which flanneld matches keys against.
const FLANNEL_SUBNET_REGEX: &str = r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$";

fn dual(public_ip: &str, mac: &str, public_ipv6: &str, mac6: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ipv6: Some(public_ipv6.parse().expect("test IPv6")),
        backend_v6_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac6})),
        ..vxlan(public_ip, mac)
    }
}

/// Nodes starting together in a dual-stack network: a claim only checks that its exact key is
/// free, and two keys can share a subnet (`10.244.5.0-24&fd00::a:0-64`, `10.244.9.0-24&fd00::a:0-64`).
/// With more nodes than half the IPv6 range racing, some pick the same subnet; every node must
/// still end with subnets no other node holds.
#[test]
fn dual_stack_nodes_racing_for_subnets_never_share_one() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        // 12 IPv6 subnets (fd00:10:244::/64 .. fd00:10:244:b::/64) for 8 nodes.
        let cfg = put_config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetMin":"fd00:10:244::","IPv6SubnetMax":"fd00:10:244:b::"}"#,
        )
        .await;
        let mut stores = Vec::new();
        for _ in 0..8 {
            stores.push(store().await);
        }
        let claims = stores.iter().enumerate().map(|(i, s)| {
            let attrs = dual(
                &format!("192.0.2.{}", 10 + i),
                &format!("aa:bb:cc:dd:ee:{:02x}", 10 + i),
                &format!("2001:db8::{}", 10 + i),
                &format!("aa:bb:cc:dd:e6:{:02x}", 10 + i),
            );
            let cfg = &cfg;
            async move { s.acquire(cfg, &attrs, None, DAY).await }
        });
        let leases: Vec<_> = futures::future::join_all(claims)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("acquire: {e}")))
            .collect();
        let v4: BTreeSet<_> = leases.iter().map(|l| l.subnet).collect();
        let v6: BTreeSet<_> = leases.iter().map(|l| l.ipv6_subnet.expect("IPv6 subnet")).collect();
        assert_eq!((v4.len(), v6.len()), (8, 8), "shared subnets: {leases:#?}");
        // etcd holds exactly the eight winning keys.
        let held = stores[0].list_leases().await.unwrap().leases;
        assert_eq!(held.len(), 8, "{held:#?}");
        for l in &leases {
            assert!(
                held.iter()
                    .any(|h| (h.subnet, h.ipv6_subnet) == (l.subnet, l.ipv6_subnet)),
                "{l:?} not in etcd"
            );
        }
    });
}

#[test]
fn dual_stack_and_ipv6_only_acquire_write_flannels_keys() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let re = regex::Regex::new(FLANNEL_SUBNET_REGEX).unwrap();
        let s = store().await;
        let cfg = put_config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
        )
        .await;
        let attrs = dual("192.0.2.1", "aa:bb:cc:dd:ee:01", "2001:db8::1", "aa:bb:cc:dd:e6:01");
        let own = s.acquire(&cfg, &attrs, None, DAY).await.unwrap();
        let v6 = own.ipv6_subnet.expect("a dual-stack lease has an IPv6 subnet");
        assert!(cfg.fits_lease(&own.subnet, Some(&v6)), "{own:?}");
        let k = own.key(PREFIX);
        assert_eq!(
            k,
            format!("{PREFIX}/subnets/{}-24&{}-64", own.subnet.ip(), v6.ip())
        );
        let caps = re.captures(&k).expect("Flannel's regex matches the key");
        assert_eq!(&caps[3], v6.ip().to_string());
        let (value, _, _) = raw_get(&k).await.expect("key exists");
        assert_eq!(
            value,
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:e6:01"}}"#
        );
        // A second node gets other subnets in both families; a restart gets the same ones.
        let other = s
            .acquire(
                &cfg,
                &dual("192.0.2.2", "aa:bb:cc:dd:ee:02", "2001:db8::2", "aa:bb:cc:dd:e6:02"),
                None,
                DAY,
            )
            .await
            .unwrap();
        assert_ne!(other.subnet, own.subnet);
        assert_ne!(other.ipv6_subnet, own.ipv6_subnet);
        let again = s.acquire(&cfg, &attrs, None, DAY).await.unwrap();
        assert_eq!((again.subnet, again.ipv6_subnet), (own.subnet, own.ipv6_subnet));
        assert_eq!(again.ipv6_subnet, s.renew(&again, DAY).await.unwrap().ipv6_subnet);

        // IPv6-only: Flannel's key `0.0.0.0-0&...`; nodes are told apart by PublicIPv6.
        let cfg6 = put_config(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:20::/48"}"#,
        )
        .await;
        let only6 = |ip6: &str, mac6: &str| LeaseAttrs {
            public_ip: ip("0.0.0.0"),
            backend_data: None,
            ..dual("0.0.0.0", "aa:bb:cc:dd:ee:00", ip6, mac6)
        };
        let a = s.acquire(&cfg6, &only6("2001:db8::1", "aa:bb:cc:dd:e6:01"), None, DAY).await.unwrap();
        let b = s.acquire(&cfg6, &only6("2001:db8::2", "aa:bb:cc:dd:e6:02"), None, DAY).await.unwrap();
        let ka = a.key(PREFIX);
        assert!(ka.starts_with(&format!("{PREFIX}/subnets/0.0.0.0-0&fd00:20:0:")), "{ka}");
        assert!(re.is_match(&ka), "{ka}");
        assert_ne!(a.ipv6_subnet, b.ipv6_subnet);
        let (value, _, _) = raw_get(&ka).await.expect("key exists");
        assert_eq!(
            value,
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:e6:01"}}"#
        );
        // A restarted IPv6-only node finds its lease by PublicIPv6.
        let a2 = s.acquire(&cfg6, &only6("2001:db8::1", "aa:bb:cc:dd:e6:01"), None, DAY).await.unwrap();
        assert_eq!(a2.ipv6_subnet, a.ipv6_subnet);
    });
}

#[test]
fn previous_ipv6_subnet_is_asked_for_when_free() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        let cfg = put_config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
        )
        .await;
        let wanted: ipnetwork::Ipv6Network = "fd00:10:244:77::/64".parse().unwrap();
        let a = dual(
            "192.0.2.1",
            "aa:bb:cc:dd:ee:01",
            "2001:db8::1",
            "aa:bb:cc:dd:e6:01",
        );
        let own = s
            .acquire_dual(&cfg, &a, Some(net("10.244.77.0/24")), Some(wanted), DAY)
            .await
            .unwrap();
        assert_eq!(own.ipv6_subnet, Some(wanted));
        assert_eq!(own.subnet, net("10.244.77.0/24"));
        // Taken by another node: a free one instead.
        let b = dual(
            "192.0.2.2",
            "aa:bb:cc:dd:ee:02",
            "2001:db8::2",
            "aa:bb:cc:dd:e6:02",
        );
        let other = s
            .acquire_dual(&cfg, &b, None, Some(wanted), DAY)
            .await
            .unwrap();
        assert_ne!(other.ipv6_subnet, Some(wanted));
        assert!(other.ipv6_subnet.is_some());
    });
}

#[test]
fn same_public_ip_gets_same_subnet_and_new_attrs() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        let cfg = put_config(CONFIG).await;
        let first = s
            .acquire(&cfg, &vxlan("192.0.2.1", "aa:bb:cc:dd:ee:01"), None, DAY)
            .await
            .unwrap();
        let other = s
            .acquire(&cfg, &vxlan("192.0.2.2", "aa:bb:cc:dd:ee:02"), None, DAY)
            .await
            .unwrap();
        assert_ne!(first.subnet, other.subnet);
        // Same attrs: same subnet, same etcd lease kept alive, no write.
        let (_, _, rev_before) = raw_get(&key(first.subnet)).await.unwrap();
        let again = s
            .acquire(&cfg, &vxlan("192.0.2.1", "aa:bb:cc:dd:ee:01"), None, DAY)
            .await
            .unwrap();
        assert_eq!(again.subnet, first.subnet);
        assert_eq!(again.etcd_lease, first.etcd_lease);
        let (_, _, rev_after) = raw_get(&key(first.subnet)).await.unwrap();
        assert_eq!(rev_before, rev_after);
        // A new VTEP MAC (and a previous subnet elsewhere) still gets the same subnet, value updated.
        let moved = s
            .acquire(
                &cfg,
                &vxlan("192.0.2.1", "aa:bb:cc:dd:ee:99"),
                Some(net("10.244.200.0/24")),
                DAY,
            )
            .await
            .unwrap();
        assert_eq!(moved.subnet, first.subnet);
        let (value, lease, _) = raw_get(&key(first.subnet)).await.unwrap();
        assert!(value.contains("aa:bb:cc:dd:ee:99"), "{value}");
        assert_eq!(Some(lease), moved.etcd_lease);
        assert_eq!(s.list_leases().await.unwrap().leases.len(), 2);
    });
}

#[test]
fn previous_subnet_is_honoured_when_free_and_in_range() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        let cfg = put_config(CONFIG).await;
        let a = s
            .acquire(
                &cfg,
                &vxlan("192.0.2.1", "aa:00:00:00:00:01"),
                Some(net("10.244.77.0/24")),
                DAY,
            )
            .await
            .unwrap();
        assert_eq!(a.subnet, net("10.244.77.0/24"));
        // Taken by A: B gets another one.
        let b = s
            .acquire(
                &cfg,
                &vxlan("192.0.2.2", "aa:00:00:00:00:02"),
                Some(net("10.244.77.0/24")),
                DAY,
            )
            .await
            .unwrap();
        assert_ne!(b.subnet, net("10.244.77.0/24"));
        // Outside the config's Network, or not a /24: not reused.
        let c = s
            .acquire(
                &cfg,
                &vxlan("192.0.2.3", "aa:00:00:00:00:03"),
                Some(net("10.245.5.0/24")),
                DAY,
            )
            .await
            .unwrap();
        assert!(cfg.contains_subnet(&c.subnet));
        let d = s
            .acquire(
                &cfg,
                &vxlan("192.0.2.4", "aa:00:00:00:00:04"),
                Some(net("10.244.0.0/24")),
                DAY,
            )
            .await
            .unwrap();
        assert_ne!(
            d.subnet,
            net("10.244.0.0/24"),
            "the first subnet is below SubnetMin"
        );
        // A key whose value does not parse is still occupied: not claimed, not retried forever.
        raw()
            .await
            .put(key(net("10.244.88.0/24")), "{garbage", None)
            .await
            .unwrap();
        let e = s
            .acquire(
                &cfg,
                &vxlan("192.0.2.5", "aa:00:00:00:00:05"),
                Some(net("10.244.88.0/24")),
                DAY,
            )
            .await
            .unwrap();
        assert!(cfg.contains_subnet(&e.subnet));
        assert_ne!(e.subnet, net("10.244.88.0/24"));
        assert_eq!(
            raw_get(&key(net("10.244.88.0/24"))).await.unwrap().0,
            "{garbage"
        );
    });
}

/// weftd's start claims from the listing it keeps as its table (`acquire_listed`): keys that
/// do not parse are skipped there as in a fresh listing, and still count as occupied; a
/// lease of this node in the listing is reused with the revision the listing read.
#[test]
fn acquire_from_a_listing_skips_hostile_keys_and_reuses_the_nodes_lease() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        let cfg = put_config(CONFIG).await;
        let mut client = raw().await;
        let garbage = key(net("10.244.88.0/24"));
        client.put(garbage.as_str(), "{garbage", None).await.unwrap();
        let escape = format!("{PREFIX}/subnets/../../config");
        let value = r#"{"PublicIP":"192.0.2.8","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:00:00:00:00:08"}}"#;
        client.put(escape.as_str(), value, None).await.unwrap();
        let other = s
            .acquire(&cfg, &vxlan("192.0.2.9", "aa:00:00:00:00:09"), None, DAY)
            .await
            .unwrap();

        let listed = s.list_network().await.unwrap();
        assert_eq!(listed.leases.len(), 3, "the listing holds every key, raw");
        let mine = s
            .acquire_listed(
                &cfg,
                &vxlan("192.0.2.1", "aa:00:00:00:00:01"),
                (Some(net("10.244.88.0/24")), None),
                DAY,
                &listed,
            )
            .await
            .unwrap();
        assert!(cfg.contains_subnet(&mine.subnet));
        assert_ne!(mine.subnet, net("10.244.88.0/24"), "a key that does not parse is occupied");
        assert_ne!(mine.subnet, other.subnet);
        assert_eq!(raw_get(&garbage).await.unwrap().0, "{garbage");
        assert_eq!(raw_get(&escape).await.unwrap().0, value);

        // The other node restarting with a new VTEP MAC reuses its key from the listing.
        let listed = s.list_network().await.unwrap();
        let again = s
            .acquire_listed(
                &cfg,
                &vxlan("192.0.2.9", "aa:00:00:00:00:99"),
                (None, None),
                DAY,
                &listed,
            )
            .await
            .unwrap();
        assert_eq!(again.subnet, other.subnet);
        assert!(raw_get(&key(other.subnet)).await.unwrap().0.contains("aa:00:00:00:00:99"));
    });
}

#[test]
fn own_lease_outside_a_changed_config_is_replaced() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        let old_cfg = put_config(r#"{"Network": "10.99.0.0/16"}"#).await;
        let old = s
            .acquire(
                &old_cfg,
                &vxlan("192.0.2.1", "aa:00:00:00:00:01"),
                None,
                DAY,
            )
            .await
            .unwrap();
        let cfg = put_config(CONFIG).await;
        let new = s
            .acquire(
                &cfg,
                &vxlan("192.0.2.1", "aa:00:00:00:00:01"),
                Some(old.subnet),
                DAY,
            )
            .await
            .unwrap();
        assert!(cfg.contains_subnet(&new.subnet), "{new:?}");
        assert_eq!(raw_get(&key(old.subnet)).await, None, "stale lease deleted");
        assert_eq!(s.list_leases().await.unwrap().leases.len(), 1);
    });
}

#[test]
fn reservation_is_honoured_and_never_handed_to_another_node() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        // A /28 holds three /30 node subnets: .4, .8 and .12.
        let cfg = put_config(r#"{"Network": "10.1.2.0/28"}"#).await;
        let reserved = net("10.1.2.8/30");
        let mut c = raw().await;
        c.put(
            key(reserved),
            vxlan("192.0.2.10", "aa:00:00:00:00:10").to_json(),
            None,
        )
        .await
        .unwrap();
        let b = s
            .acquire(
                &cfg,
                &vxlan("192.0.2.11", "aa:00:00:00:00:11"),
                Some(reserved),
                DAY,
            )
            .await
            .unwrap();
        assert_ne!(b.subnet, reserved);
        let c2 = s
            .acquire(&cfg, &vxlan("192.0.2.12", "aa:00:00:00:00:12"), None, DAY)
            .await
            .unwrap();
        assert_ne!(c2.subnet, reserved);
        // Only the reservation is left, and it is not ours.
        let err = s
            .acquire(&cfg, &vxlan("192.0.2.13", "aa:00:00:00:00:13"), None, DAY)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NoFreeSubnet { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "no free subnet in 10.1.2.0/28 between 10.1.2.4 and 10.1.2.12: 3 subnets taken"
        );
        // The reservation's owner gets it, stays a reservation, and its value follows the attrs.
        let a = s
            .acquire(&cfg, &vxlan("192.0.2.10", "aa:00:00:00:00:99"), None, DAY)
            .await
            .unwrap();
        assert_eq!(
            a,
            OwnLease {
                ipv6_subnet: None,
                subnet: reserved,
                attrs: vxlan("192.0.2.10", "aa:00:00:00:00:99"),
                etcd_lease: None,
                expires: None
            }
        );
        let (value, lease, _) = raw_get(&key(reserved)).await.unwrap();
        assert_eq!(lease, 0, "still a reservation");
        assert!(value.contains("aa:00:00:00:00:99"), "{value}");
        assert_eq!(s.renew(&a, DAY).await.unwrap(), a);
        let listed = s.list_leases().await.unwrap();
        let r: Vec<&Lease> = listed
            .leases
            .iter()
            .filter(|l| l.is_reservation())
            .collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].subnet, reserved);
    });
}

#[test]
fn racing_acquirers_on_one_forced_subnet_end_distinct() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let cfg = put_config(CONFIG).await;
        for round in 0..5u8 {
            let (s1, s2, s3) = (store().await, store().await, store().await);
            // Losers of earlier rounds took random subnets: force one nobody holds yet.
            let taken: Vec<_> = s1
                .list_leases()
                .await
                .unwrap()
                .leases
                .into_iter()
                .map(|l| l.subnet)
                .collect();
            let forced = (10..=250u8)
                .map(|third| net(&format!("10.244.{third}.0/24")))
                .find(|n| !taken.contains(n))
                .unwrap();
            let a1 = vxlan(&format!("192.0.2.{}", 10 * round + 1), "aa:00:00:00:00:01");
            let a2 = vxlan(&format!("192.0.2.{}", 10 * round + 2), "aa:00:00:00:00:02");
            let a3 = vxlan(&format!("192.0.2.{}", 10 * round + 3), "aa:00:00:00:00:03");
            let (r1, r2, r3) = tokio::join!(
                s1.acquire(&cfg, &a1, Some(forced), DAY),
                s2.acquire(&cfg, &a2, Some(forced), DAY),
                s3.acquire(&cfg, &a3, Some(forced), DAY),
            );
            let (r1, r2, r3) = (r1.unwrap(), r2.unwrap(), r3.unwrap());
            let subnets = [r1.subnet, r2.subnet, r3.subnet];
            assert!(
                subnets.contains(&forced),
                "one of them got the forced subnet: {subnets:?}"
            );
            assert_ne!(r1.subnet, r2.subnet);
            assert_ne!(r1.subnet, r3.subnet);
            assert_ne!(r2.subnet, r3.subnet);
            for (r, a) in [(&r1, &a1), (&r2, &a2), (&r3, &a3)] {
                let (value, _, _) = raw_get(&key(r.subnet)).await.unwrap();
                assert_eq!(value, a.to_json(), "each key holds its winner's value");
            }
        }
    });
}

#[test]
fn watch_sees_put_and_delete_with_prev_and_skips_junk() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let prefix = "/weft-test/net/";
        let s = EtcdStore::connect(&opts(prefix)).await.unwrap();
        assert_eq!(s.prefix(), "/weft-test/net");
        let mut c = raw().await;
        c.put("/weft-test/net/config", CONFIG, None).await.unwrap();
        let cfg = NetworkConfig::parse(CONFIG).unwrap();
        let snap = s.list_leases().await.unwrap();
        let mut w = s.watch(snap.revision + 1).await.unwrap();

        // Junk under the prefix is skipped, not an error.
        c.put("/weft-test/net/subnets/garbage", "x", None)
            .await
            .unwrap();
        c.put("/weft-test/net/subnets/10.244.9.0-24", "{not json", None)
            .await
            .unwrap();
        let attrs = vxlan("192.0.2.5", "aa:00:00:00:00:05");
        let own = s
            .acquire(&cfg, &attrs, Some(net("10.244.3.0/24")), DAY)
            .await
            .unwrap();
        let events = w.next().await.unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        let LeaseEvent::Put(put) = &events[0] else {
            panic!("expected a put, got {events:?}");
        };
        assert_eq!(put.subnet, net("10.244.3.0/24"));
        assert_eq!(put.attrs, attrs);
        assert_eq!(put.etcd_lease, own.etcd_lease);
        assert_eq!(w.revision(), put.mod_revision);

        c.delete("/weft-test/net/subnets/10.244.3.0-24", None)
            .await
            .unwrap();
        let events = w.next().await.unwrap();
        let [LeaseEvent::Delete { subnet, prev }] = events.as_slice() else {
            panic!("expected one delete, got {events:?}");
        };
        assert_eq!(*subnet, net("10.244.3.0/24"));
        let prev = prev.as_ref().expect("prev_kv delivered");
        assert_eq!(prev.attrs, attrs);
        assert_eq!(prev.etcd_lease, own.etcd_lease);
        // A deleted bad-valued key still yields a delete for its subnet, without prev.
        c.delete("/weft-test/net/subnets/10.244.9.0-24", None)
            .await
            .unwrap();
        let events = w.next().await.unwrap();
        assert_eq!(
            events,
            vec![LeaseEvent::Delete {
                subnet: net("10.244.9.0/24"),
                prev: None
            }]
        );
        // The bad entries were skipped by the listing too.
        c.put("/weft-test/net/subnets/10.244.9.0-24", "{not json", None)
            .await
            .unwrap();
        assert!(s.list_leases().await.unwrap().leases.is_empty());
    });
}

#[test]
fn watch_from_a_compacted_revision_reports_compacted() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        let cfg = put_config(CONFIG).await;
        let start = s.list_leases().await.unwrap().revision;
        for i in 1..=3 {
            s.acquire(
                &cfg,
                &vxlan(&format!("192.0.2.{i}"), "aa:00:00:00:00:01"),
                None,
                DAY,
            )
            .await
            .unwrap();
        }
        let now = s.list_leases().await.unwrap().revision;
        raw().await.compact(now, None).await.unwrap();
        let mut w = s.watch(start + 1).await.unwrap();
        match w.next().await {
            Err(StoreError::Compacted { revision }) => assert_eq!(revision, now),
            other => panic!("expected Compacted, got {other:?}"),
        }
        // From the current revision the watch works again.
        let mut w = s.watch(now + 1).await.unwrap();
        s.acquire(&cfg, &vxlan("192.0.2.9", "aa:00:00:00:00:09"), None, DAY)
            .await
            .unwrap();
        assert!(matches!(w.next().await.unwrap()[0], LeaseEvent::Put(_)));
    });
}

#[test]
fn renew_keeps_alive_or_replaces_the_etcd_lease() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        let cfg = put_config(CONFIG).await;
        let attrs = vxlan("192.0.2.1", "aa:00:00:00:00:01");
        let own = s
            .acquire(&cfg, &attrs, None, Duration::from_secs(60))
            .await
            .unwrap();
        let id = own.etcd_lease.unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let before = raw()
            .await
            .lease_time_to_live(id, None)
            .await
            .unwrap()
            .ttl();
        assert!(before <= 58, "TTL went down: {before}");
        let (_, _, rev) = raw_get(&key(own.subnet)).await.unwrap();
        let renewed = s.renew(&own, Duration::from_secs(60)).await.unwrap();
        assert_eq!(renewed.etcd_lease, Some(id), "same etcd lease kept alive");
        let after = raw()
            .await
            .lease_time_to_live(id, None)
            .await
            .unwrap()
            .ttl();
        assert!(after >= 59, "TTL reset by the keep-alive: {after}");
        assert_eq!(raw_get(&key(own.subnet)).await.unwrap().2, rev, "no write");
        assert!(renewed.expires > own.expires);

        // A new TTL moves the key to a new etcd lease and drops the old one.
        let longer = s.renew(&renewed, Duration::from_secs(120)).await.unwrap();
        let new_id = longer.etcd_lease.unwrap();
        assert_ne!(new_id, id);
        let mut c = raw().await;
        assert_eq!(
            c.lease_time_to_live(new_id, None)
                .await
                .unwrap()
                .granted_ttl(),
            120
        );
        assert_eq!(
            c.lease_time_to_live(id, None).await.unwrap().ttl(),
            -1,
            "old lease revoked"
        );
        let (value, lease, _) = raw_get(&key(own.subnet)).await.unwrap();
        assert_eq!((value, lease), (attrs.to_json(), new_id));
    });
}

#[test]
fn renew_of_a_lost_lease_is_distinguishable() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        let cfg = put_config(CONFIG).await;
        let attrs = vxlan("192.0.2.1", "aa:00:00:00:00:01");
        let own = s.acquire(&cfg, &attrs, None, DAY).await.unwrap();
        let mut c = raw().await;

        c.delete(key(own.subnet), None).await.unwrap();
        match s.renew(&own, DAY).await {
            Err(StoreError::LeaseLost {
                subnet,
                reason: LeaseLostReason::Deleted,
            }) => assert_eq!(subnet, own.subnet),
            other => panic!("expected LeaseLost Deleted, got {other:?}"),
        }

        // Re-acquiring gets the same subnet back while it is free.
        let back = s
            .acquire(&cfg, &attrs, Some(own.subnet), DAY)
            .await
            .unwrap();
        assert_eq!(back.subnet, own.subnet);

        // Taken over by another node.
        c.put(
            key(own.subnet),
            vxlan("192.0.2.66", "aa:00:00:00:00:66").to_json(),
            None,
        )
        .await
        .unwrap();
        match s.renew(&back, DAY).await {
            Err(StoreError::LeaseLost {
                reason: LeaseLostReason::TakenBy(ip),
                ..
            }) => assert_eq!(ip, Ipv4Addr::new(192, 0, 2, 66)),
            other => panic!("expected LeaseLost TakenBy, got {other:?}"),
        }
    });
}

#[test]
fn expired_lease_is_lost_then_reacquired() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        let cfg = put_config(CONFIG).await;
        let attrs = vxlan("192.0.2.1", "aa:00:00:00:00:01");
        let own = s
            .acquire(&cfg, &attrs, None, Duration::from_secs(2))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while raw_get(&key(own.subnet)).await.is_some() {
            assert!(Instant::now() < deadline, "key did not expire");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let err = s.renew(&own, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        let back = s
            .acquire(&cfg, &attrs, Some(own.subnet), DAY)
            .await
            .unwrap();
        assert_eq!(back.subnet, own.subnet);
        assert_eq!(s.lease_expiry(own.etcd_lease.unwrap()).await.unwrap(), None);
    });
}

#[test]
fn requests_to_a_dead_etcd_fail_instead_of_hanging() {
    let etcd = EtcdNs::start();
    let pid = etcd.etcd_pid();
    etcd.run(move || async move {
        let s = store().await;
        assert_eq!(s.network_config().await.unwrap(), None);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill etcd");
        let t = Instant::now();
        let err = s.network_config().await.unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "took {:?}",
            t.elapsed()
        );
        assert!(
            err.to_string()
                .starts_with("etcd get network config /coreos.com/network/config: "),
            "{err}"
        );
        let err = s.list_leases().await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("etcd list leases /coreos.com/network/subnets/: "),
            "{err}"
        );
    });
}

/// Waits until every thread of `pid` is in the stopped state ('T' in /proc/PID/task/*/stat).
fn wait_stopped(pid: nix::unistd::Pid) {
    let tasks = format!("/proc/{pid}/task");
    let all_stopped = || {
        let Ok(dir) = std::fs::read_dir(&tasks) else {
            return false;
        };
        dir.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('T'))
                })
                .unwrap_or(false)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_stopped() {
        assert!(
            Instant::now() < deadline,
            "etcd (pid {pid}) did not stop within 5 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn requests_to_a_frozen_etcd_time_out() {
    let etcd = EtcdNs::start();
    let pid = etcd.etcd_pid();
    etcd.run(move || async move {
        let s = store().await;
        let cfg = put_config(CONFIG).await;
        let own = s
            .acquire(&cfg, &vxlan("192.0.2.1", "aa:00:00:00:00:01"), None, DAY)
            .await
            .unwrap();
        // A stopped etcd keeps its TCP connections open but never answers.
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop etcd");
        // kill(2) returns before every thread has stopped; on a loaded machine a thread still
        // running could answer the next request.
        wait_stopped(pid);
        let t = Instant::now();
        let err = s.renew(&own, DAY).await.unwrap_err();
        let took = t.elapsed();
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        assert!(matches!(err, StoreError::Timeout { .. }), "{err}");
        assert!(took < Duration::from_secs(15), "took {took:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "etcd get own lease {}: no answer within 10s",
                key(own.subnet)
            )
        );
    });
}

/// Runs the real `weftctl` inside the namespace.
fn weftctl(etcd: &EtcdNs, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &etcd.ns, env!("CARGO_BIN_EXE_weftctl")])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run weftctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn weftctl_leases_prints_table_and_json() {
    let etcd = EtcdNs::start();
    let (own, reserved) = etcd.run(|| async {
        let s = EtcdStore::connect(&opts("/weft-ctl/network"))
            .await
            .unwrap();
        let cfg = NetworkConfig::parse(CONFIG).unwrap();
        let own = s
            .acquire(
                &cfg,
                &vxlan("192.0.2.1", "aa:bb:cc:dd:ee:01"),
                Some(net("10.244.1.0/24")),
                DAY,
            )
            .await
            .unwrap();
        let reserved = LeaseAttrs {
            public_ipv6: None,
            backend_v6_data: None,
            public_ip: ip("192.0.2.100"),
            backend_type: "host-gw".into(),
            backend_data: None,
        };
        raw()
            .await
            .put(
                "/weft-ctl/network/subnets/10.244.12.0-24",
                reserved.to_json(),
                None,
            )
            .await
            .unwrap();
        (own, reserved)
    });
    let (ok, out, err) = weftctl(
        &etcd,
        &["leases"],
        &[("WEFTD_ETCD_PREFIX", "/weft-ctl/network")],
    );
    assert!(ok, "weftctl failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[0]),
        ["SUBNET", "PUBLIC", "IP", "BACKEND", "VTEP", "MAC", "EXPIRES", "STATUS"]
    );
    let row = cols(lines[1]);
    assert_eq!(
        row[..4],
        ["10.244.1.0/24", "192.0.2.1", "vxlan", "aa:bb:cc:dd:ee:01"]
    );
    // RFC 3339 UTC, about 24 h ahead: "YYYY-MM-DDTHH:MM:SSZ".
    assert!(
        row[4].len() == 20 && row[4].as_bytes()[10] == b'T' && row[4].ends_with('Z'),
        "{out}"
    );
    // Without a network config under this prefix, nothing can be validated.
    assert_eq!(row[5], "unchecked", "{out}");
    assert!(
        err.contains("leases are not validated: no network config"),
        "{err}"
    );
    assert_eq!(
        cols(lines[2]),
        [
            "10.244.12.0/24",
            "192.0.2.100",
            "host-gw",
            "-",
            "reserved",
            "unchecked"
        ]
    );

    let (ok, out, err) = weftctl(
        &etcd,
        &["leases", "-o", "json", "--etcd-prefix", "/weft-ctl/network"],
        &[],
    );
    assert!(ok, "weftctl failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("weftctl -o json is JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(v[0]["subnet"], "10.244.1.0/24");
    assert_eq!(v[0]["vtepMAC"], "aa:bb:cc:dd:ee:01");
    assert_eq!(v[0]["etcdLease"], format!("{:x}", own.etcd_lease.unwrap()));
    assert_eq!(v[1]["publicIP"], reserved.public_ip.to_string());
    assert_eq!(v[1]["reserved"], true);

    // An unreachable etcd is a clear error and a failing exit status, not a hang.
    let (ok, _, err) = weftctl(
        &etcd,
        &["leases", "--etcd-endpoints", "http://127.0.0.1:1"],
        &[],
    );
    assert!(!ok);
    assert!(
        err.starts_with("weftctl: etcd list network /coreos.com/network/: "),
        "{err}"
    );
}

#[test]
fn tls_with_client_certificates() {
    let etcd = EtcdNs::start_tls();
    let tls = etcd.ready.clone();
    etcd.run(move || async move {
        let s = EtcdStore::connect(&tls).await.expect("connect over TLS");
        assert_eq!(s.network_config().await.unwrap(), None);
        let cfg = NetworkConfig::parse(CONFIG).unwrap();
        let own = s
            .acquire(&cfg, &vxlan("192.0.2.1", "aa:00:00:00:00:01"), None, DAY)
            .await
            .unwrap();
        assert_eq!(s.list_leases().await.unwrap().leases[0].subnet, own.subnet);
        // Without a client certificate the server refuses us.
        let no_cert = EtcdOptions {
            certfile: None,
            keyfile: None,
            ..tls.clone()
        };
        let s = EtcdStore::connect(&no_cert).await.unwrap();
        assert!(s.network_config().await.is_err());
        // Half a key pair is a clear error.
        let half = EtcdOptions {
            keyfile: None,
            ..tls.clone()
        };
        let err = EtcdStore::connect(&half).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "etcd options: --etcd-certfile and --etcd-keyfile must be given together"
        );
        let missing = EtcdOptions {
            cafile: Some("/nonexistent/ca.pem".into()),
            ..tls
        };
        let err = EtcdStore::connect(&missing).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("etcd: read CA file /nonexistent/ca.pem: "),
            "{err}"
        );
    });
}

#[test]
fn username_and_password() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let mut c = raw().await;
        let _ = c.role_add("root").await;
        c.user_add("root", "s3cret-pw", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();

        let err = match EtcdStore::connect(&opts(PREFIX)).await {
            Ok(s) => s.network_config().await.unwrap_err(),
            Err(e) => e,
        };
        assert!(!err.to_string().contains("s3cret"), "{err}");

        let good = EtcdOptions {
            username: Some("root".into()),
            password: Some("s3cret-pw".into()),
            ..opts(PREFIX)
        };
        let s = EtcdStore::connect(&good)
            .await
            .expect("authenticated connect");
        let cfg = NetworkConfig::parse(CONFIG).unwrap();
        s.acquire(&cfg, &vxlan("192.0.2.1", "aa:00:00:00:00:01"), None, DAY)
            .await
            .unwrap();
        assert_eq!(s.list_leases().await.unwrap().leases.len(), 1);

        let bad = EtcdOptions {
            password: Some("wrong-pw".into()),
            ..good
        };
        let err = EtcdStore::connect(&bad).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("etcd connect to http://127.0.0.1:2379: "),
            "{text}"
        );
        assert!(
            !text.contains("wrong-pw") && !format!("{err:?}").contains("wrong-pw"),
            "{err:?}"
        );
    });
}

/// Range requests etcd has answered so far (its own gRPC counters on /metrics).
async fn range_requests() -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect("127.0.0.1:2379")
        .await
        .expect("connect to etcd for /metrics");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("ask for /metrics");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("read /metrics");
    let total: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{") && l.contains("grpc_method=\"Range\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        body.contains("grpc_server_handled_total"),
        "etcd's /metrics has no gRPC counters:\n{}",
        &body[..body.len().min(500)]
    );
    total
}

#[test]
fn a_large_network_is_listed_in_pages_at_one_revision() {
    let etcd = EtcdNs::start();
    etcd.run(|| async {
        let s = store().await;
        put_config(CONFIG).await;
        let mut c = raw().await;
        // Two full pages and a bit: with the config key, three Range requests.
        let n = 2 * usize::try_from(LIST_PAGE).expect("page fits usize") + 7;
        let keys: Vec<String> = (0..n)
            .map(|i| format!("{PREFIX}/subnets/10.{}.{}.0-24", 100 + i / 256, i % 256))
            .collect();
        for chunk in keys.chunks(100) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|k| {
                    etcd_client::TxnOp::put(
                        k.as_str(),
                        r#"{"PublicIP":"192.0.2.9","BackendType":"host-gw"}"#,
                        None,
                    )
                })
                .collect();
            c.txn(etcd_client::Txn::new().and_then(ops))
                .await
                .expect("write leases");
        }
        let head = c.get("/", None).await.expect("read revision");
        let revision = head.header().expect("header").revision();
        let before = range_requests().await;
        let snap = s.list_network().await.expect("list network");
        let ranges = range_requests().await - before;
        assert_eq!(
            ranges, 3.0,
            "one Range request per page of {LIST_PAGE} keys"
        );
        assert_eq!(snap.revision, revision);
        assert_eq!(snap.config.as_deref(), Some(CONFIG));
        let mut want = keys.clone();
        want.sort();
        let got: Vec<&str> = snap.leases.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(
            got, want,
            "every key once, in order, across page boundaries"
        );
        let leases = s.list_leases().await.expect("list leases");
        assert_eq!(leases.leases.len(), n);
        assert_eq!(leases.revision, revision);
    });
}
