//! The `weft` CNI plugin driven by container runtimes nobody here wrote: Debian's podman 4.3
//! (CNI backend) and containerd 1.6 (`ctr run --cni`), with weft chained with the reference
//! `portmap` as the runtimes' network.
//!
//! Each test owns a node namespace and a private mount namespace (held by a sleeping process)
//! in which `/run`, `/var/lib` and `/opt` are empty tmpfs and the fixed CNI paths the runtimes
//! use (`/etc/cni/net.d`, `/opt/cni/bin`, the libcni cache `/var/lib/cni`) are bind mounts of
//! the test's own directories. Every runtime command runs inside both namespaces, so bridges,
//! veths and firewall rules land in the node namespace, and runtime state, network namespace
//! files and caches never touch the machine's own paths. Images are built offline from Debian's
//! static busybox and loaded as `docker save` archives: no registry is contacted.

mod common;
#[path = "common/image.rs"]
mod image;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use image::{layer, Entry, ImageBuilder, BUSYBOX};
use serde_json::{json, Value};

/// Where Debian's reference plugins live.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The image every container runs.
const IMAGE: &str = "localhost/weft-busybox:test";
/// What the image's web server answers.
const PAGE: &str = "weft-ok";

/// Run by the namespace holder (argument: the test directory). `--make-rprivate` first, so no
/// mount made here propagates to the machine.
const HOLDER_SCRIPT: &str = r#"set -e
d=$1
mount -n --make-rprivate /
for dir in /run /var/lib /opt; do mount -n -t tmpfs -o mode=0755 weft-test "$dir"; done
mkdir -p /run/netns /opt/cni/bin /var/lib/cni
mount -n --bind "$d/bin" /opt/cni/bin
mount -n --bind "$d/cache" /var/lib/cni
mount -n --bind "$d/net.d" /etc/cni/net.d
echo ready
exec sleep 1000000
"#;

/// The busybox applets the test containers use.
const APPLETS: &[&str] = &["sh", "httpd", "wget", "ip", "sleep", "cat", "true"];

/// Builds the test image as a `docker save` archive at `path`.
fn write_image(path: &Path) {
    let busybox = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("read {BUSYBOX} (install busybox-static): {e}"));
    let mut entries = vec![
        Entry::Dir("bin".into(), 0o755),
        Entry::Dir("etc".into(), 0o755),
        Entry::Dir("tmp".into(), 0o1777),
        Entry::Dir("www".into(), 0o755),
        Entry::File("bin/busybox".into(), busybox, 0o755),
        Entry::File(
            "etc/passwd".into(),
            b"root:x:0:0:root:/:/bin/sh\n".to_vec(),
            0o644,
        ),
        Entry::File(
            "www/index.html".into(),
            format!("{PAGE}\n").into_bytes(),
            0o644,
        ),
    ];
    for applet in APPLETS {
        entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
    }
    let tar = layer(&entries).unwrap_or_else(|e| panic!("image layer: {e}"));
    ImageBuilder::new()
        .layer(tar)
        .cmd(&["sh"])
        .env(&["PATH=/bin"])
        .name(IMAGE)
        .write_docker(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A node namespace, a private mount namespace and the runtimes' configuration.
struct RuntimeHost {
    node: Netns,
    dir: tempfile::TempDir,
    holder: Child,
    containerd: Option<Child>,
}

impl RuntimeHost {
    /// `subnet` is FLANNEL_SUBNET (`10.244.40.1/24`).
    fn new(subnet: &str) -> RuntimeHost {
        assert!(
            Path::new("/etc/cni/net.d").is_dir(),
            "/etc/cni/net.d is missing: run scripts/setup.sh (podman creates it)"
        );
        for tool in ["podman", "containerd", "ctr", "nsenter", "unshare"] {
            let found = Command::new("sh")
                .args(["-c", "command -v \"$1\"", "sh", tool])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(found, "{tool} is not installed: run scripts/setup.sh");
        }
        let node = Netns::new("rtnode");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", unique_name("runtimes")))
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let d = dir.path();
        for sub in [
            "bin", "net.d", "cache", "data", "tmp", "root", "runroot", "ctd",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap_or_else(|e| panic!("mkdir {sub}: {e}"));
        }
        symlink(bin_path("weft"), d.join("bin/weft")).unwrap_or_else(|e| panic!("{e}"));
        for plugin in ["portmap", "loopback", "bridge", "host-local"] {
            symlink(
                Path::new(REFERENCE_PLUGINS).join(plugin),
                d.join("bin").join(plugin),
            )
            .unwrap_or_else(|e| panic!("link {plugin}: {e}"));
        }
        let write = |name: &str, text: String| {
            std::fs::write(d.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"))
        };
        write(
            "subnet.env",
            format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
        );
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "weftnet",
            "plugins": [
                {"type": "weft", "subnetFile": d.join("subnet.env"), "dataDir": d.join("data"),
                 "logFile": d.join("weft.log"), "capabilities": {"ips": true, "mac": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        write("net.d/10-weftnet.conflist", conflist.to_string());
        // Root here lacks CAP_SYS_RESOURCE: podman's default ulimits (above the hard limits)
        // would make runc fail, so they are set below them.
        write(
            "containers.conf",
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\"]\n\
                 network_config_dir = \"{netd}\"\ndefault_network = \"weftnet\"\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{events}\"\ntmp_dir = \"{tmp}\"\nruntime = \"runc\"\n",
                bin = d.join("bin").display(),
                netd = d.join("net.d").display(),
                events = d.join("events.log").display(),
                tmp = d.join("tmp").display(),
            ),
        );
        write(
            "storage.conf",
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("root").display(),
                d.join("runroot").display()
            ),
        );
        write("registries.conf", String::new());
        let mut holder = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(["unshare", "--mount", "sh", "-c", HOLDER_SCRIPT, "sh"])
            // libmount would record the mounts in the machine's /run/mount/utab otherwise.
            .env("LIBMOUNT_UTAB", d.join("utab"))
            .arg(d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn namespace holder: {e}"));
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut e) = holder.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("namespace holder failed: {line}{err}");
        }
        let host = RuntimeHost {
            node,
            dir,
            holder,
            containerd: None,
        };
        let image = host.path("busybox.tar");
        write_image(&image);
        host.podman_ok(&["load", "-q", "-i", &image.display().to_string()]);
        host
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `program` inside the node and mount namespaces, with podman's configuration.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "-t",
            &self.holder.id().to_string(),
            "--net",
            "--mount",
            "--",
        ])
        .arg(program)
        .env("CONTAINERS_CONF", self.path("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
        .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
        .stdin(Stdio::null());
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = self.command(program);
        cmd.args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"))
    }

    fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\nstdout: {}\nstderr: {}\nweft log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.path("weft.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let mut full = vec!["--log-level", "error"];
        full.extend_from_slice(args);
        self.run_ok("podman", &full)
    }

    /// `podman inspect` of one container.
    fn inspect(&self, name: &str) -> Value {
        let text = self.podman_ok(&["inspect", name]);
        let list: Vec<Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("inspect {name}: {e}: {text}"));
        list.into_iter()
            .next()
            .unwrap_or_else(|| panic!("inspect {name}: empty"))
    }

    /// Address and MAC of `name` on `network`.
    fn podman_address(&self, name: &str, network: &str) -> (String, String) {
        let info = self.inspect(name);
        let net = &info["NetworkSettings"]["Networks"][network];
        (
            net["IPAddress"].as_str().unwrap_or_default().to_string(),
            net["MacAddress"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Starts containerd with its own root, state, socket and config; waits for its socket.
    fn start_containerd(&mut self) {
        let d = self.path("ctd");
        let config = format!(
            "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{root}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{root}/containerd.sock.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{root}/opt\"\n",
            root = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap_or_else(|e| panic!("{e}"));
        let log = std::fs::File::create(d.join("containerd.log")).unwrap_or_else(|e| panic!("{e}"));
        let child = self
            .command("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn containerd: {e}"));
        self.containerd = Some(child);
        wait_until(Duration::from_secs(20), "containerd socket", || {
            self.ctr(&["version"]).status.success()
        });
        let image = self.path("busybox.tar").display().to_string();
        self.ctr_ok(&["images", "import", "--snapshotter", "native", &image]);
    }

    /// `ctr ARGS` against this test's containerd, in the test's namespace `wefttest`.
    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("ctr");
        cmd.arg("--address")
            .arg(self.path("ctd/containerd.sock"))
            .args(["--namespace", "wefttest"])
            .args(args);
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args)
            .output()
            .unwrap_or_else(|e| panic!("run ctr {args:?}: {e}"))
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\nstdout: {}\nstderr: {}\nweft log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.path("weft.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Address files left in weft's IPAM directory.
    fn allocations(&self) -> Vec<String> {
        let dir = self.path("data/weftnet");
        std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts that nothing of any container is left: address files, veths, libcni cache
    /// entries, portmap's per-container firewall rules.
    fn assert_clean(&self, what: &str) {
        assert_eq!(
            self.allocations(),
            Vec::<String>::new(),
            "{what}: address files"
        );
        let veths: Vec<String> = self
            .node
            .ip_json(&["link", "show", "type", "veth"])
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .filter(|name| name != "outside0")
            .collect();
        assert_eq!(
            veths,
            Vec::<String>::new(),
            "{what}: veths in the node namespace"
        );
        let cache: Vec<String> = walk(&self.path("cache"));
        assert_eq!(cache, Vec::<String>::new(), "{what}: libcni cache entries");
        let rules = self.node.exec_ok(&["iptables-save"]);
        let leftovers: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A CNI-DN-") || l.contains("CNI-HOSTPORT-DNAT -p"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{what}: portmap rules left: {leftovers:?}"
        );
    }
}

impl Drop for RuntimeHost {
    fn drop(&mut self) {
        let _ = self
            .command("podman")
            .args(["rm", "-af", "-t", "0"])
            .output();
        if let Some(mut containerd) = self.containerd.take() {
            let _ = containerd.kill();
            let _ = containerd.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // The runtimes' parent cgroups (cgroupfs): removed once empty (a parallel test's
        // containers keep them busy, and the last test removes them).
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for controller in controllers.filter_map(Result::ok) {
                for parent in ["libpod_parent/conmon", "libpod_parent", "wefttest"] {
                    let _ = std::fs::remove_dir(controller.path().join(parent));
                }
            }
        }
    }
}

/// Regular files under `dir` (relative paths).
fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(
                    path.strip_prefix(dir)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    found
}

/// An HTTP GET of `/` at `addr` from inside `from`; the body, or the error.
fn http_get(from: &Netns, addr: SocketAddr) -> Result<String, String> {
    from.run(|| {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        stream
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok(reply)
    })
}

fn socket(ip: &str, port: u16) -> SocketAddr {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap_or_else(|e| panic!("address {ip:?}: {e}"));
    SocketAddr::from((ip, port))
}

/// A client namespace wired to the node by a veth: node 198.51.100.1, client 198.51.100.2.
fn outside_client(host: &RuntimeHost) -> Netns {
    let client = Netns::new("rtclient");
    let node_end = "outside0";
    host.node.ip(&[
        "link",
        "add",
        node_end,
        "type",
        "veth",
        "peer",
        "name",
        "uplink",
        "netns",
        client.name(),
    ]);
    host.node
        .ip(&["addr", "add", "198.51.100.1/24", "dev", node_end]);
    host.node.ip(&["link", "set", node_end, "up"]);
    client.ip(&["addr", "add", "198.51.100.2/24", "dev", "uplink"]);
    client.ip(&["link", "set", "uplink", "up"]);
    client.ip(&["route", "add", "default", "via", "198.51.100.1"]);
    client
}

#[test]
fn podman_containers_talk_over_tcp_and_a_published_port_answers() {
    let started = Instant::now();
    let host = RuntimeHost::new("10.244.40.1/24");
    host.podman_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "18080:8080",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    let (web_ip, _) = host.podman_address("web", "weftnet");
    assert!(web_ip.starts_with("10.244.40."), "{web_ip}");
    let page = host.podman_ok(&[
        "run",
        "--rm",
        IMAGE,
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{web_ip}:8080/"),
    ]);
    assert_eq!(page, PAGE, "container -> container over TCP");
    // The published port, from a machine outside the node.
    let client = outside_client(&host);
    let reply = wait_for(Duration::from_secs(5), "published port 18080", || {
        http_get(&client, socket("198.51.100.1", 18080)).ok()
    });
    assert!(reply.contains(PAGE), "{reply}");
    host.podman_ok(&["rm", "-f", "-t", "0", "web"]);
    host.assert_clean("after podman rm");
    eprintln!("podman TCP + portmap: {:?}", started.elapsed());
}

#[test]
fn podman_static_ip_and_mac_survive_network_reload() {
    let started = Instant::now();
    let host = RuntimeHost::new("10.244.41.1/24");
    host.podman_ok(&[
        "run",
        "-d",
        "--name",
        "fixed",
        "--ip",
        "10.244.41.50",
        "--mac-address",
        "0a:00:00:41:00:50",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    assert_eq!(
        host.podman_address("fixed", "weftnet"),
        ("10.244.41.50".to_string(), "0a:00:00:41:00:50".to_string())
    );
    host.podman_ok(&["network", "reload", "fixed"]);
    assert_eq!(
        host.podman_address("fixed", "weftnet"),
        ("10.244.41.50".to_string(), "0a:00:00:41:00:50".to_string()),
        "network reload keeps the address"
    );
    let reply = http_get(&host.node, socket("10.244.41.50", 8080))
        .unwrap_or_else(|e| panic!("node -> container after reload: {e}"));
    assert!(reply.contains(PAGE), "{reply}");
    // An address outside the subnet is refused, not replaced by another one.
    let out = host.run(
        "podman",
        &["run", "--rm", "--ip", "10.244.99.5", IMAGE, "true"],
    );
    assert!(!out.status.success(), "--ip outside the subnet must fail");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("10.244.99.5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    host.podman_ok(&["rm", "-f", "-t", "0", "fixed"]);
    host.assert_clean("after podman rm");
    eprintln!("podman static ip/mac + reload: {:?}", started.elapsed());
}

#[test]
fn podman_weft_as_a_second_network() {
    let started = Instant::now();
    let host = RuntimeHost::new("10.244.42.1/24");
    let reference = json!({
        "cniVersion": "1.0.0",
        "name": "refnet",
        "plugins": [{
            "type": "bridge", "bridge": "refbr0", "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "dataDir": host.path("data"),
                     "ranges": [[{"subnet": "10.244.250.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}
        }]
    });
    std::fs::write(host.path("net.d/20-refnet.conflist"), reference.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    // `podman network connect`: weft joins a container whose first network owns the default route.
    host.podman_ok(&[
        "run",
        "-d",
        "--name",
        "two",
        "--network",
        "refnet",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    host.podman_ok(&["network", "connect", "weftnet", "two"]);
    let (weft_ip, _) = host.podman_address("two", "weftnet");
    let (ref_ip, _) = host.podman_address("two", "refnet");
    assert!(weft_ip.starts_with("10.244.42."), "{weft_ip}");
    assert!(ref_ip.starts_with("10.244.250."), "{ref_ip}");
    let routes = host.podman_ok(&["exec", "two", "ip", "-4", "route", "show"]);
    // One default route, the first network's; weft adds only the cluster route.
    let defaults: Vec<&str> = routes
        .lines()
        .filter(|l| l.starts_with("default"))
        .collect();
    assert_eq!(defaults.len(), 1, "{routes}");
    assert!(
        defaults[0].starts_with("default via 10.244.250.1 "),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.0.0/16 via 10.244.42.1 dev "),
        "{routes}"
    );
    let reply = http_get(&host.node, socket(&weft_ip, 8080))
        .unwrap_or_else(|e| panic!("node -> weft address of the container: {e}"));
    assert!(reply.contains(PAGE), "{reply}");
    // Disconnecting removes weft's part only: the first network keeps its default route.
    host.podman_ok(&["network", "disconnect", "weftnet", "two"]);
    let routes = host.podman_ok(&["exec", "two", "ip", "-4", "route", "show"]);
    assert!(
        routes.contains("default via 10.244.250.1 ") && !routes.contains("10.244.0.0/16"),
        "{routes}"
    );
    assert_eq!(host.allocations(), Vec::<String>::new());
    host.podman_ok(&["rm", "-f", "-t", "0", "two"]);
    host.assert_clean("after podman rm");
    eprintln!("podman second network: {:?}", started.elapsed());
}

#[test]
fn podman_thirty_cycles_and_ten_parallel_runs_leave_nothing() {
    let started = Instant::now();
    let host = RuntimeHost::new("10.244.43.1/24");
    for cycle in 0..30u16 {
        let port = format!("{}:8080", 19000 + cycle);
        let name = format!("cycle{cycle}");
        host.podman_ok(&[
            "run", "--rm", "--name", &name, "-p", &port, IMAGE, "ip", "-4", "addr",
        ]);
    }
    host.assert_clean("after 30 run/remove cycles");
    let cycles = started.elapsed();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..10u16)
            .map(|i| {
                let host = &host;
                s.spawn(move || {
                    let port = format!("{}:8080", 19100 + i);
                    let name = format!("parallel{i}");
                    host.podman_ok(&[
                        "run", "--rm", "--name", &name, "-p", &port, IMAGE, "ip", "-4", "addr",
                        "show", "eth0",
                    ])
                })
            })
            .collect();
        for run in runs {
            let out = run.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            assert!(out.contains("inet 10.244.43."), "{out}");
        }
    });
    host.assert_clean("after 10 parallel runs");
    eprintln!(
        "podman 30 cycles: {cycles:?}, then 10 parallel: {:?}",
        started.elapsed() - cycles
    );
}

#[test]
fn containerd_ctr_run_cni_containers_talk_and_cycles_leave_nothing() {
    let started = Instant::now();
    let mut host = RuntimeHost::new("10.244.44.1/24");
    host.start_containerd();
    let run = |name: &'static str, argv: &[&'static str]| -> Vec<&'static str> {
        let mut args = vec![
            "run",
            "--rm",
            "--cni",
            "--snapshotter",
            "native",
            IMAGE,
            name,
        ];
        args.extend_from_slice(argv);
        args
    };
    let mut server = host
        .ctr_command(&run("web", &["httpd", "-f", "-p", "8080", "-h", "/www"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("ctr run web: {e}"));
    let web_ip = wait_for(Duration::from_secs(20), "web's address file", || {
        let dir = host.path("data/weftnet");
        host.allocations().into_iter().find(|ip| {
            std::fs::read_to_string(dir.join(ip)).is_ok_and(|c| c.starts_with("wefttest-web"))
        })
    });
    let url = format!("http://{web_ip}:8080/");
    let mut client = run("client", &["wget", "-q", "-O", "-"]);
    client.push(&url);
    let page = wait_for(Duration::from_secs(10), "client's page", || {
        let out = host.ctr(&client);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert_eq!(page, PAGE, "container -> container over TCP");
    host.ctr_ok(&["task", "kill", "-s", "SIGKILL", "web"]);
    server
        .wait()
        .unwrap_or_else(|e| panic!("wait for ctr run web: {e}"));
    for cycle in 0..10 {
        let name: &'static str =
            ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"][cycle];
        let out = host.ctr_ok(&run(name, &["ip", "-4", "addr", "show", "eth0"]));
        assert!(out.contains("inet 10.244.44."), "{out}");
    }
    host.assert_clean("after ctr run --rm");
    eprintln!("containerd: {:?}", started.elapsed());
}

/// `podman network inspect` of a weft network shows only what podman knows about a network it
/// did not create: the name, the first plugin's type as driver, and no subnets or IPAM.
#[test]
fn podman_network_inspect_shows_no_subnets() {
    let host = RuntimeHost::new("10.244.44.1/24");
    let text = host.podman_ok(&["network", "inspect", "weftnet"]);
    let list: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("podman network inspect is not JSON ({e}): {text}"));
    let net = &list[0];
    assert_eq!(net["name"], "weftnet", "{net}");
    assert_eq!(net["driver"], "weft", "{net}");
    assert!(
        net["subnets"].as_array().is_none_or(|s| s.is_empty()),
        "subnets shown: {net}"
    );
    for flag in ["ipv6_enabled", "internal", "dns_enabled"] {
        assert_eq!(net[flag], false, "{flag}: {net}");
    }
    assert!(
        net["ipam_options"].as_object().is_none_or(|o| o.is_empty()),
        "IPAM shown: {net}"
    );
    host.assert_clean("after podman network inspect");
}
