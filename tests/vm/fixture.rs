//! VM fixture: Debian's kernel in QEMU on a test-made segment, driven through a control agent.
//!
//! * [`Segment`]: the underlay namespace of `common` (bridge `br0`, here with 192.0.2.1/24) and a
//!   real etcd at [`Etcd::IP`] on it; one tap per VM on the bridge; QEMU runs inside that namespace,
//!   so nothing touches the root namespace.
//! * [`Vm`]: one QEMU (1 vCPU, 768 MiB; KVM only where a probe guest boots under it, else TCG)
//!   booting the cached Debian kernel with a busybox initramfs built here (see `guest/init`): the
//!   host's `/usr` and the workspace's binaries read-only over 9p, a persistent per-VM directory
//!   at `/var/lib/weft` (weftd's state and subnet.env survive reboots), weftd started by the
//!   guest's init from `weftd.args` in that directory. Commands run through the agent on a
//!   virtio-serial port.
//!
//! QEMU is killed on drop, also when the test panics (and by the kernel when the test process
//! dies: parent-death signal); its name carries the owner pid like every test-made name, so
//! `scripts/lib/leftovers.sh` reports a QEMU whose test is gone.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// Where `scripts/setup.sh` unpacks Debian's kernel package (`WEFT_VM_CACHE` overrides).
const DEFAULT_CACHE: &str = "/var/cache/weft-vm";
/// Modules the guest needs, loaded with their dependencies first.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "bridge",
    "veth",
    "vxlan",
    "tun",
    "overlay",
    // The kernel WireGuard data path (the host kernel has no such module).
    "wireguard",
];
/// How long a boot (or reboot) may take before the test fails with the console's tail.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// The guest's memory; QEMU's RSS is about 550 MiB with it.
const MEMORY_MIB: &str = "768";

/// The kernel and the initramfs every VM of this test process boots.
#[derive(Debug)]
struct Image {
    kernel: PathBuf,
    initrd: PathBuf,
    /// Holds the initramfs.
    _dir: tempfile::TempDir,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("WEFT_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// The unpacked kernel package: `<cache>/kernel/{boot,lib/modules/<version>}`.
fn kernel_tree() -> (PathBuf, PathBuf) {
    let root = cache_dir().join("kernel");
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .ok()
        .and_then(|entries| {
            entries.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no Debian kernel in {}: run scripts/setup.sh (it fetches linux-image-*-amd64)",
                boot.display()
            )
        });
    let version = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .unwrap_or_default();
    (vmlinuz, root.join("lib/modules").join(version))
}

/// Module name (with `_`) -> path, from `modules.order`.
fn module_index(modules: &Path) -> BTreeMap<String, PathBuf> {
    let order = modules.join("modules.order");
    let text = std::fs::read_to_string(&order)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", order.display()));
    text.lines()
        .filter_map(|line| {
            let rel = line.trim();
            let name = Path::new(rel)
                .file_stem()?
                .to_string_lossy()
                .replace('-', "_");
            Some((name, modules.join(rel)))
        })
        .collect()
}

/// The `depends=` field of a module's `.modinfo`.
fn module_depends(path: &Path) -> Vec<String> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let needle = b"\0depends=";
    let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) else {
        return Vec::new();
    };
    let rest = &bytes[at + needle.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// Depth-first: every module after the modules it depends on.
fn load_order(index: &BTreeMap<String, PathBuf>, wanted: &[&str]) -> Vec<String> {
    fn visit(name: &str, index: &BTreeMap<String, PathBuf>, out: &mut Vec<String>) {
        if out.iter().any(|m| m == name) {
            return;
        }
        let Some(path) = index.get(name) else {
            panic!("module {name} is not in the kernel package's modules.order");
        };
        for dep in module_depends(path) {
            visit(&dep, index, out);
        }
        out.push(name.to_string());
    }
    let mut out = Vec::new();
    for name in wanted {
        visit(name, index, &mut out);
    }
    out
}

fn write_file(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn mkdir(path: &Path) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

/// Builds the initramfs once per test process.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let (kernel, modules) = kernel_tree();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", unique_name("vmimage")))
            .tempdir_in("/dev/shm")
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let stage = dir.path().join("root");
        for sub in [
            "bin", "modules", "etc/weft", "usr", "proc", "sys", "dev", "run", "tmp", "root",
        ] {
            mkdir(&stage.join(sub));
        }
        std::fs::copy("/usr/bin/busybox", stage.join("bin/busybox"))
            .unwrap_or_else(|e| panic!("copy busybox (busybox-static, scripts/setup.sh): {e}"));
        // Debian's binaries expect merged /usr: the loader and libraries come from the 9p /usr.
        for (link, target) in [("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "bin")] {
            symlink(target, stage.join(link)).unwrap_or_else(|e| panic!("symlink {link}: {e}"));
        }
        mkdir(&stage.join("var"));
        symlink("/run", stage.join("var/run")).unwrap_or_else(|e| panic!("symlink var/run: {e}"));

        let index = module_index(&modules);
        let order = load_order(&index, MODULES);
        for name in &order {
            std::fs::copy(
                &index[name],
                stage.join("modules").join(format!("{name}.ko")),
            )
            .unwrap_or_else(|e| panic!("copy module {name}: {e}"));
        }
        write_file(
            &stage.join("modules/order"),
            &(order.join("\n") + "\n"),
            0o644,
        );

        let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/guest");
        let read = |name: &str| {
            std::fs::read_to_string(guest.join(name))
                .unwrap_or_else(|e| panic!("read guest/{name}: {e}"))
        };
        write_file(&stage.join("init"), &read("init"), 0o755);
        write_file(&stage.join("etc/inittab"), &read("inittab"), 0o644);
        write_file(&stage.join("etc/weft/agent.py"), &read("agent.py"), 0o644);
        write_file(&stage.join("etc/weft/weftd-run"), &read("weftd-run"), 0o755);
        write_file(&stage.join("etc/weft/shutdown"), &read("shutdown"), 0o755);
        write_file(
            &stage.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n",
            0o644,
        );
        write_file(&stage.join("etc/group"), "root:x:0:\n", 0o644);

        let list = Command::new("find")
            .arg(".")
            .current_dir(&stage)
            .output()
            .unwrap_or_else(|e| panic!("find: {e}"));
        let initrd = dir.path().join("initrd.cpio");
        let out = File::create(&initrd).unwrap_or_else(|e| panic!("create initrd: {e}"));
        let mut cpio = Command::new("/usr/bin/busybox")
            .args(["cpio", "-o", "-H", "newc"])
            .current_dir(&stage)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("busybox cpio: {e}"));
        if let Some(mut stdin) = cpio.stdin.take() {
            stdin
                .write_all(&list.stdout)
                .unwrap_or_else(|e| panic!("cpio stdin: {e}"));
        }
        let done = cpio
            .wait_with_output()
            .unwrap_or_else(|e| panic!("cpio: {e}"));
        assert!(
            done.status.success(),
            "cpio failed: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        Image {
            kernel,
            initrd,
            _dir: dir,
        }
    })
}

/// How long a guest may take under KVM before KVM counts as not booting it usefully.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// QEMU's accelerator: `WEFT_VM_ACCEL` if set; else `kvm` if a probe guest answers under KVM
/// within [`KVM_PROBE_TIMEOUT`], else `tcg`. Nested KVM on some machines runs stock kernels only
/// by emulating them instruction by instruction (or not at all), slower than TCG. The verdict is
/// cached per host kernel and guest kernel.
fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        if let Ok(a) = std::env::var("WEFT_VM_ACCEL") {
            return if a == "kvm" { "kvm" } else { "tcg" };
        }
        if !Path::new("/dev/kvm").exists() {
            return "tcg";
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let guest = image()
            .kernel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let cache = cache_dir().join(format!(
            "accel-{}-{}",
            host.trim(),
            guest.unwrap_or_default()
        ));
        match std::fs::read_to_string(&cache).as_deref().map(str::trim) {
            Ok("kvm") => return "kvm",
            Ok("tcg") => return "tcg",
            _ => {}
        }
        let verdict = if kvm_boots() { "kvm" } else { "tcg" };
        eprintln!(
            "QEMU accelerator: {verdict} (cached in {})",
            cache.display()
        );
        let _ = std::fs::write(&cache, verdict);
        verdict
    })
}

/// Boots a probe guest under KVM (no NIC; only the host's `/usr` for the agent) and tells whether
/// its agent answers within [`KVM_PROBE_TIMEOUT`].
fn kvm_boots() -> bool {
    let image = image();
    let Ok(dir) = tempfile::Builder::new()
        .prefix(&format!("{}-", unique_name("kvmprobe")))
        .tempdir_in("/dev/shm")
    else {
        return false;
    };
    let run = dir.path().display().to_string();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-name",
        &unique_name("kvmprobe"),
        "-machine",
        "q35",
        "-accel",
        "kvm",
    ])
    .args(["-cpu", "host", "-smp", "1", "-m", MEMORY_MIB, "-nodefaults"])
    .args(["-no-user-config", "-display", "none", "-nic", "none"])
    .args(["-serial", &format!("file:{run}/console.log")])
    .arg("-kernel")
    .arg(&image.kernel)
    .arg("-initrd")
    .arg(&image.initrd)
    .args([
        "-append",
        "console=ttyS0 weft.ip=192.0.2.99/24 weft.name=kvmprobe",
    ])
    .args(["-device", "virtio-serial-pci", "-chardev"])
    .arg(format!(
        "socket,id=agent,path={run}/agent.sock,server=on,wait=off"
    ))
    .args([
        "-device",
        "virtserialport,chardev=agent,name=weft.agent",
        "-virtfs",
    ])
    .arg("local,path=/usr,mount_tag=usr,security_model=none,multidevs=remap,readonly=on")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: as in `spawn_qemu`.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    let deadline = Instant::now() + KVM_PROBE_TIMEOUT;
    let mut answered = false;
    while !answered && Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        if let Ok(mut stream) = UnixStream::connect(dir.path().join("agent.sock")) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            if stream
                .write_all(b"{\"id\":1,\"argv\":[\"true\"]}\n")
                .is_ok()
            {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["id"] == json!(1)) {
                        answered = true;
                        break;
                    }
                    line.clear();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    kill_qemu(&mut child);
    answered
}

/// Boots `vms` at the same time; returns the time until the last one answers.
pub fn boot_all(vms: &[&Vm]) -> Duration {
    let start = Instant::now();
    for vm in vms {
        vm.start();
    }
    for vm in vms {
        vm.wait_agent(None);
    }
    start.elapsed()
}

/// Reboots `vms` at the same time (guest `reboot`); returns the time until the last one answers
/// from its new boot.
pub fn reboot_all(vms: &[&Vm]) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = vms
            .iter()
            .map(|vm| scope.spawn(move || vm.reboot()))
            .collect();
        for h in handles {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    start.elapsed()
}

/// Serialises the VM groups of all test processes on this machine: two 768 MiB TCG guests at a
/// time are what 2 shared cores carry.
pub fn vm_lock() -> nix::fcntl::Flock<File> {
    let path = std::env::temp_dir().join("weft-vm-tier.lock");
    let file = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------

/// The segment the VMs share: the underlay bridge with 192.0.2.1/24 and etcd on it.
pub struct Segment {
    pub etcd: Etcd,
    pub underlay: Underlay,
}

impl Segment {
    /// Underlay + etcd, and `config` at the network's config key.
    pub fn new(config: &str) -> Segment {
        let underlay = Underlay::new();
        underlay
            .netns()
            .ip(&["addr", "add", "192.0.2.1/24", "dev", "br0"]);
        let etcd = Etcd::new(&underlay);
        etcd.put(NETWORK_CONFIG_KEY, config);
        Segment { etcd, underlay }
    }

    /// Creates VM `index` (address 192.0.2.(10+index)) with its tap; not yet booted.
    pub fn vm(&self, index: u32) -> Vm {
        let name = unique_name(&format!("vm{index}"));
        let tap = format!("tap{index}");
        let ns = self.underlay.netns();
        ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        ns.ip(&["link", "set", &tap, "master", "br0", "up"]);
        let run = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in("/dev/shm")
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let state = run.path().join("state");
        mkdir(&state);
        let ip = format!("192.0.2.{}", 10 + index);
        let vm = Vm {
            name,
            index,
            ip,
            tap,
            netns: ns.name().to_string(),
            run,
            state,
            qemu: Mutex::new(None),
            agent: Mutex::new(None),
            ids: AtomicU64::new(1),
            boot_id: Mutex::new(String::new()),
        };
        vm.set_weftd_args(&vm.default_weftd_args(&self.etcd.endpoint()));
        vm
    }
}

/// One reply of the guest agent.
#[derive(Debug, Clone)]
pub struct Reply {
    pub rc: i64,
    pub stdout: String,
    pub stderr: String,
}

struct Agent {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

/// One test VM.
pub struct Vm {
    name: String,
    index: u32,
    ip: String,
    tap: String,
    netns: String,
    /// QEMU's sockets, console log; `state/` is the guest's persistent `/var/lib/weft`.
    run: tempfile::TempDir,
    state: PathBuf,
    qemu: Mutex<Option<Child>>,
    agent: Mutex<Option<Agent>>,
    ids: AtomicU64,
    boot_id: Mutex<String>,
}

impl Vm {
    /// The guest's underlay address.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The guest's IPv6 underlay address (2001:db8::(10+index), beside its IPv4 one).
    pub fn ip6(&self) -> String {
        format!("2001:db8::{}", 10 + self.index)
    }

    /// The VM's name (also QEMU's `-name`, carrying the owner pid).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// weftd's arguments as the guest's init starts it.
    pub fn default_weftd_args(&self, etcd: &str) -> Vec<String> {
        [
            "--etcd-endpoints",
            etcd,
            "--iface",
            "eth0",
            "--subnet-file",
            "/var/lib/weft/subnet.env",
            "--state-dir",
            "/var/lib/weft/state",
            // 9p cannot hold a Unix socket; subnet.env sits on 9p to survive reboots.
            "--status-socket",
            "/run/weftd.sock",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Writes the argument file weftd is started with at the next (re)start.
    pub fn set_weftd_args(&self, args: &[String]) {
        write_file(
            &self.state.join("weftd.args"),
            &(args.join("\n") + "\n"),
            0o600,
        );
    }

    /// The host directory behind the guest's `/var/lib/weft`.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The id of the boot the agent last answered from.
    pub fn boot_id(&self) -> String {
        self.boot_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// weftd's log in the guest (kept across reboots).
    pub fn weftd_log(&self) -> String {
        std::fs::read_to_string(self.state.join("weftd.log")).unwrap_or_default()
    }

    /// The guest's serial console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.run.path().join("console.log")).unwrap_or_default()
    }

    fn sock(&self) -> PathBuf {
        self.run.path().join("agent.sock")
    }

    /// Starts QEMU and waits until the guest's agent answers; panics (with the console) if the
    /// guest does not come up within [`BOOT_TIMEOUT`]. Returns the boot time.
    pub fn boot(&self) -> Duration {
        let start = Instant::now();
        self.start();
        self.wait_agent(None);
        start.elapsed()
    }

    /// Starts QEMU without waiting for the guest.
    fn start(&self) {
        let mut qemu = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = qemu.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                panic!("{} is already running", self.name);
            }
        }
        let _ = std::fs::remove_file(self.sock());
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *qemu = Some(self.spawn_qemu());
    }

    fn spawn_qemu(&self) -> Child {
        let image = image();
        let accel = accel();
        let cpu = if accel == "kvm" { "host" } else { "max" };
        let run = self.run.path().display().to_string();
        let mac = format!("52:54:00:12:34:{:02x}", 0x10 + self.index);
        let virtfs = |tag: &str, path: &str, ro: bool| {
            format!(
                "local,path={path},mount_tag={tag},security_model=none,multidevs=remap{}",
                if ro { ",readonly=on" } else { "" }
            )
        };
        let bin_dir = bin_path("weftd")
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let args: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            "1".into(),
            "-m".into(),
            MEMORY_MIB.into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{run}/console.log"),
            "-kernel".into(),
            image.kernel.display().to_string(),
            "-initrd".into(),
            image.initrd.display().to_string(),
            "-append".into(),
            format!(
                "console=ttyS0 loglevel=4 weft.ip={}/24 weft.ip6={}/64 weft.name=vm{}",
                self.ip,
                self.ip6(),
                self.index
            ),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!("socket,id=agent,path={run}/agent.sock,server=on,wait=off"),
            "-device".into(),
            "virtserialport,chardev=agent,name=weft.agent".into(),
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac}"),
            "-virtfs".into(),
            virtfs("usr", "/usr", true),
            "-virtfs".into(),
            virtfs("weftbin", &bin_dir, true),
            "-virtfs".into(),
            virtfs("state", &self.state.display().to_string(), false),
        ];
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "qemu-system-x86_64"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::create(self.run.path().join("qemu.err"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        // SAFETY: prctl is async-signal-safe; the parent-death signal ends QEMU when the test
        // process dies without running destructors.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64 (qemu-system-x86): {e}"))
    }

    fn qemu_alive(&self) -> bool {
        let mut qemu = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        qemu.as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn boot_failure(&self, what: &str) -> ! {
        let err = std::fs::read_to_string(self.run.path().join("qemu.err")).unwrap_or_default();
        panic!(
            "{}: {what}\n--- qemu stderr ---\n{err}\n--- console (tail) ---\n{}\n--- weftd.log (tail) ---\n{}",
            self.name,
            tail(&self.console(), 60),
            tail(&self.weftd_log(), 40)
        )
    }

    /// Waits until the agent answers (from a boot other than `old_boot`, if given) and records
    /// the boot id.
    fn wait_agent(&self, old_boot: Option<&str>) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if !self.qemu_alive() {
                self.boot_failure("QEMU exited while booting");
            }
            if Instant::now() > deadline {
                self.boot_failure(&format!(
                    "the guest agent did not answer within {BOOT_TIMEOUT:?}"
                ));
            }
            if let Some(reply) = self.request(
                json!({"argv": ["cat", "/proc/sys/kernel/random/boot_id"]}),
                Duration::from_secs(3),
            ) {
                let id = reply.stdout.trim().to_string();
                if reply.rc == 0 && !id.is_empty() && Some(id.as_str()) != old_boot {
                    *self.boot_id.lock().unwrap_or_else(|p| p.into_inner()) = id;
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Sends one request and waits up to `timeout` for its reply; `None` if the agent is not
    /// reachable or does not answer in time (the connection is then dropped and remade).
    fn request(&self, mut req: Value, timeout: Duration) -> Option<Reply> {
        let mut guard = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let stream = UnixStream::connect(self.sock()).ok()?;
            let reader = BufReader::new(stream.try_clone().ok()?);
            *guard = Some(Agent {
                writer: stream,
                reader,
            });
        }
        let agent = guard.as_mut()?;
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        req["id"] = json!(id);
        let line = req.to_string() + "\n";
        if agent.writer.write_all(line.as_bytes()).is_err() {
            *guard = None;
            return None;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = agent.reader.get_ref().set_read_timeout(Some(left));
            let mut buf = String::new();
            match agent.reader.read_line(&mut buf) {
                Ok(0) => {
                    *guard = None;
                    return None;
                }
                Ok(_) => {
                    let Ok(msg) = serde_json::from_str::<Value>(&buf) else {
                        continue;
                    };
                    if msg["id"].as_u64() != Some(id) {
                        continue; // a hello, or a reply to a request a reboot cut short
                    }
                    return Some(Reply {
                        rc: msg["rc"].as_i64().unwrap_or(-1),
                        stdout: msg["stdout"].as_str().unwrap_or("").to_string(),
                        stderr: msg["stderr"].as_str().unwrap_or("").to_string(),
                    });
                }
                Err(_) => {
                    // A timeout leaves a partial line behind: start afresh next time.
                    *guard = None;
                    return None;
                }
            }
        }
    }

    /// Runs `argv` in the guest (no shell) with `env` and `stdin`; panics if the agent is gone.
    pub fn run_full(&self, argv: &[&str], env: &[(&str, &str)], stdin: &str) -> Reply {
        let env: serde_json::Map<String, Value> =
            env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let req = json!({"argv": argv, "env": env, "stdin": stdin, "timeout": 60});
        self.request(req, Duration::from_secs(90))
            .unwrap_or_else(|| self.boot_failure(&format!("the agent did not answer {argv:?}")))
    }

    /// Runs `argv` in the guest.
    pub fn run(&self, argv: &[&str]) -> Reply {
        self.run_full(argv, &[], "")
    }

    /// Runs `argv` in the guest and returns stdout; panics naming the command on failure.
    pub fn run_ok(&self, argv: &[&str]) -> String {
        let r = self.run(argv);
        if r.rc != 0 {
            panic!(
                "{}: {argv:?} failed ({}): {}{}",
                self.name, r.rc, r.stdout, r.stderr
            );
        }
        r.stdout
    }

    /// Starts `argv` detached in the guest.
    pub fn spawn(&self, argv: &[&str]) {
        let req = json!({"argv": argv, "background": true});
        let r = self
            .request(req, Duration::from_secs(30))
            .unwrap_or_else(|| self.boot_failure(&format!("the agent did not start {argv:?}")));
        assert_eq!(
            r.rc, 0,
            "{}: cannot start {argv:?}: {}",
            self.name, r.stderr
        );
    }

    /// Debian's `ip -j ARGS` in the guest.
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut argv = vec!["/usr/bin/ip", "-j"];
        argv.extend_from_slice(args);
        let out = self.run_ok(&argv);
        serde_json::from_str(&out).unwrap_or_default()
    }

    /// The guest's subnet.env, once weftd wrote it.
    pub fn wait_subnet_env(&self, timeout: Duration) -> String {
        wait_for(timeout, &format!("subnet.env on {}", self.name), || {
            std::fs::read_to_string(self.state.join("subnet.env"))
                .ok()
                .filter(|t| t.contains("FLANNEL_SUBNET="))
        })
    }

    /// Guest `reboot` (busybox's: init runs the shutdown actions, then the kernel restarts and
    /// QEMU resets the machine). Returns the time until the agent answers from the new boot.
    pub fn reboot(&self) -> Duration {
        let old = self
            .boot_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let start = Instant::now();
        // The reply may not make it out before the guest goes down.
        let _ = self.request(
            json!({"argv": ["/bin/busybox", "reboot"]}),
            Duration::from_secs(5),
        );
        self.wait_agent(Some(&old));
        start.elapsed()
    }

    /// Power loss: QEMU killed without warning.
    pub fn power_off(&self) {
        let mut qemu = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = qemu.take() {
            kill_qemu(&mut child);
        }
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Creates pod `name` in the guest: a network namespace wired by the weft CNI plugin.
    /// Returns the pod's address.
    pub fn add_pod(&self, name: &str) -> String {
        self.add_pod_addresses(name).swap_remove(0)
    }

    /// [`Vm::add_pod`] returning every address the plugin gave the pod (IPv4 first, then
    /// IPv6 in a dual-stack network).
    pub fn add_pod_addresses(&self, name: &str) -> Vec<String> {
        self.run_ok(&["/usr/bin/ip", "netns", "add", name]);
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "weft-vm",
            "type": "weft",
            "subnetFile": "/var/lib/weft/subnet.env",
            "dataDir": "/run/cni-networks",
        })
        .to_string();
        let netns = format!("/run/netns/{name}");
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", name),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/weft"),
        ];
        let r = self.run_full(&["/opt/weft/weft"], &env, &conf);
        assert_eq!(
            r.rc, 0,
            "{}: CNI ADD {name}: {}{}",
            self.name, r.stdout, r.stderr
        );
        let result: Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{}: CNI ADD result {}: {e}", self.name, r.stdout));
        let addresses: Vec<String> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .filter_map(|a| a.split('/').next())
            .map(str::to_string)
            .collect();
        assert!(
            !addresses.is_empty(),
            "{}: CNI ADD {name} gave no address: {}",
            self.name,
            r.stdout
        );
        addresses
    }

    /// TCP from pod `from` here to `to_ip` where `server` listens in pod `to_pod`: the token
    /// sent arrives on the other side. Each call listens on a port of its own.
    pub fn pod_tcp(&self, from: &str, server: &Vm, to_pod: &str, to_ip: &str) -> bool {
        static PORT: AtomicU64 = AtomicU64::new(7000);
        let port = PORT.fetch_add(1, Ordering::Relaxed);
        let token = format!("weft-{}-{}-{}", self.name, server.name, port);
        let port_s = port.to_string();
        let out = format!("/tmp/tcp-{port}.out");
        server.run(&["rm", "-f", &out]);
        server.spawn(&[
            "/bin/sh",
            "-c",
            // Fixed script; the port and file come as positional arguments.
            "exec /usr/bin/ip netns exec \"$0\" /bin/busybox nc -l -p \"$1\" > \"$2\"",
            to_pod,
            &port_s,
            &out,
        ]);
        // Retried while the listener starts or the peers still learn of each other.
        let sent = wait_for_bool(Duration::from_secs(20), || {
            let r = self.run_full(
                &[
                    "/usr/bin/ip",
                    "netns",
                    "exec",
                    from,
                    "/bin/busybox",
                    "nc",
                    "-w",
                    "3",
                    to_ip,
                    &port_s,
                ],
                &[],
                &(token.clone() + "\n"),
            );
            r.rc == 0
        });
        sent && wait_for_bool(Duration::from_secs(5), || {
            server.run(&["cat", &out]).stdout.contains(&token)
        })
    }
}

/// Polls `probe` every 500 ms for up to `timeout`; true as soon as it holds.
pub fn wait_for_bool(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn kill_qemu(child: &mut Child) {
    // `ip netns exec` execs QEMU, so the child is QEMU itself.
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.qemu.lock().unwrap_or_else(|p| p.into_inner()).take() {
            kill_qemu(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} console (tail) ---\n{}\n--- {} weftd.log (tail) ---\n{}",
                self.name,
                tail(&self.console(), 40),
                self.name,
                tail(&self.weftd_log(), 60)
            );
        }
        let _ = Command::new("ip")
            .args(["-n", &self.netns, "link", "del", &self.tap])
            .stderr(Stdio::null())
            .status();
    }
}
