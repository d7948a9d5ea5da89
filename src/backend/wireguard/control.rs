//! weftd's side of the userspace data path process ([`super::datapath`]): where its control
//! socket lives, how weftd starts it (a re-exec of its own binary, argument vector only, in
//! a session of its own so a SIGKILL of weftd does not reach it), talks to it (UAPI `set=1`
//! and `get=1`, [`super::uapi`]) and stops it (a backend switch, an incompatible process).
//! Its counters reach `/metrics` through [`DataPathCounters`], fetched with `get=1`.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read as _, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::datapath::DataPathArgs;
use super::uapi::{self, DeviceView, SetRequest};
use super::userspace::WireGuardCounters;
use super::WireGuardError;

/// weftd's hidden subcommand that runs the data path process.
pub const SUBCOMMAND: &str = "wireguard-datapath";
/// How long a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a started process may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped process may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The control socket of the data path of `device`: `<state_dir>/<device>.sock`, as
/// wireguard-go names its socket after its interface.
pub fn socket_path(state_dir: &Path, device: &str) -> PathBuf {
    state_dir.join(format!("{device}.sock"))
}

/// The control socket of a data path process.
#[derive(Debug, Clone)]
pub struct ControlSocket {
    path: PathBuf,
}

impl ControlSocket {
    /// The socket at `path`.
    pub fn new(path: PathBuf) -> ControlSocket {
        ControlSocket { path }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, op: &'static str) -> impl FnOnce(io::Error) -> WireGuardError {
        let path = self.path.clone();
        move |source| WireGuardError::Control { op, path, source }
    }

    fn connect(&self) -> Result<UnixStream, WireGuardError> {
        let stream = UnixStream::connect(&self.path).map_err(self.err("connect to"))?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
            .map_err(self.err("configure"))?;
        Ok(stream)
    }

    /// Sends one request (its lines) and returns the answer's lines up to the empty one.
    fn exchange(&self, request: &str) -> Result<String, WireGuardError> {
        let mut stream = self.connect()?;
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.write_all(b"\n"))
            .map_err(self.err("write to"))?;
        let mut reader = BufReader::new(stream).take(uapi::MAX_REQUEST as u64);
        let mut answer = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(self.err("read from"))?;
            if n == 0 || line == "\n" {
                return Ok(answer);
            }
            answer.push_str(&line);
        }
    }

    /// `get=1`: the device, its peers and counters.
    pub fn get(&self) -> Result<DeviceView, WireGuardError> {
        let answer = self.exchange("get=1\n")?;
        uapi::parse_device(&answer).map_err(|e| WireGuardError::Refused {
            path: self.path.clone(),
            reason: format!("get=1: {e}"),
        })
    }

    /// `set=1` with `req`.
    pub fn set(&self, req: &SetRequest) -> Result<(), WireGuardError> {
        let answer = self.exchange(&uapi::format_set(req))?;
        match uapi::parse_errno(&answer) {
            Ok(0) => Ok(()),
            Ok(n) => Err(WireGuardError::Refused {
                path: self.path.clone(),
                reason: format!(
                    "set=1: errno={n} ({})",
                    io::Error::from_raw_os_error(n as i32)
                ),
            }),
            Err(e) => Err(WireGuardError::Refused {
                path: self.path.clone(),
                reason: format!("set=1: {e}"),
            }),
        }
    }

    /// The pid of the process answering on the socket (its peer credentials), if one does.
    pub fn pid(&self) -> Option<i32> {
        let stream = UnixStream::connect(&self.path).ok()?;
        let cred =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .ok()?;
        Some(cred.pid())
    }
}

/// Starts the data path process with `args` (the running binary, re-executed as `weftd
/// wireguard-datapath`, its own session, only the logging variables of the environment) and
/// waits until it answers on its socket.
pub fn spawn(args: &DataPathArgs) -> Result<Child, WireGuardError> {
    let socket = ControlSocket::new(args.socket.clone());
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("weftd")
        .arg(SUBCOMMAND)
        .arg("--socket")
        .arg(&args.socket)
        .arg("--device")
        .arg(&args.device)
        .arg("--bind")
        .arg(args.bind.to_string())
        .arg("--offloads")
        .arg(args.offloads.to_string())
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k == "RUST_LOG" || k == "NO_COLOR"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(socket.err("start the process of"))?;
    let start = Instant::now();
    loop {
        if socket.get().is_ok() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(WireGuardError::Refused {
                path: args.socket.clone(),
                reason: format!("the data path process exited with {status} before answering"),
            });
        }
        if start.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(WireGuardError::Refused {
                path: args.socket.clone(),
                reason: format!("the data path process did not answer within {START_TIMEOUT:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` runs. A zombie nobody has reaped yet has ended, but a zombie main thread
/// counts as running while another thread of the process is still ending: the process's
/// descriptors (its TUN queues, its sockets) are open until the last one is gone.
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let zombie = stat
                .rsplit_once(") ")
                .is_none_or(|(_, rest)| rest.starts_with('Z'));
            !zombie || std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1)
        }
        Err(_) => false,
    }
}

/// Whether `pid` is a data path process (its command line names [`SUBCOMMAND`]).
fn is_data_path(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|w| w == SUBCOMMAND.as_bytes()))
}

/// Stops the data path process answering on `socket`, if any (SIGTERM, SIGKILL after
/// [`STOP_TIMEOUT`]), reaps it when it is `child`, and removes the socket. Returns the pid
/// stopped.
pub fn stop(socket: &Path, child: Option<&mut Child>) -> Result<Option<i32>, WireGuardError> {
    let control = ControlSocket::new(socket.to_path_buf());
    let pid = control.pid().filter(|p| is_data_path(*p));
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let start = Instant::now();
        let mut child = child.filter(|c| c.id() as i32 == pid);
        loop {
            if let Some(c) = child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
            } else {
                // Reaps it if this weftd started it under an earlier backend; ECHILD otherwise.
                let _ = nix::sys::wait::waitpid(
                    Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
                if !running(pid) {
                    break;
                }
            }
            if start.elapsed() > STOP_TIMEOUT {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                if let Some(c) = child.as_mut() {
                    let _ = c.wait();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!(pid, socket = %socket.display(), "stopped the WireGuard data path process");
    }
    match std::fs::remove_file(socket) {
        Ok(()) => Ok(pid),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(pid),
        Err(source) => Err(WireGuardError::Control {
            op: "remove",
            path: socket.to_path_buf(),
            source,
        }),
    }
}

/// The data path's counters on weftd's `/metrics` (`weft_wireguard_<name>_total`), summed
/// over the devices' data path processes, fetched with `get=1` at every scrape; the last
/// values fetched from a process stand while it does not answer. Devices on the kernel's
/// WireGuard add nothing.
#[derive(Debug, Default)]
pub struct DataPathCounters {
    /// Per device: its socket and the counters last fetched from it.
    devices: Mutex<BTreeMap<String, FetchedCounters>>,
}

/// A device's data path socket and the counters last fetched from it.
#[derive(Debug)]
struct FetchedCounters {
    socket: ControlSocket,
    last: BTreeMap<String, u64>,
}

impl DataPathCounters {
    /// Fetches `device`'s counters from `socket` from now on (None: the kernel's data path).
    pub fn attach(&self, device: &str, socket: Option<ControlSocket>) {
        let mut devices = match self.devices.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match socket {
            Some(socket) => {
                let fetched = FetchedCounters {
                    socket,
                    last: BTreeMap::new(),
                };
                devices.insert(device.to_string(), fetched);
            }
            None => {
                devices.remove(device);
            }
        }
    }

    /// Fetches every device's counters and returns their sums.
    fn refresh(&self) -> WireGuardCounters {
        let mut devices = match self.devices.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let sum = WireGuardCounters::default();
        for (device, FetchedCounters { socket, last }) in devices.iter_mut() {
            match socket.get() {
                Ok(view) => *last = view.counters,
                Err(e) => {
                    tracing::debug!(device = %device, error = %e, "fetch WireGuard data path counters")
                }
            }
            for (name, v, _) in sum.rows() {
                v.fetch_add(last.get(name).copied().unwrap_or(0), Ordering::Relaxed);
            }
        }
        sum
    }
}

impl Collector for DataPathCounters {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.refresh().encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::running;
    use std::time::{Duration, Instant};

    /// A process whose main thread has ended (a zombie in `/proc/<pid>/stat`) while another
    /// thread still runs holds its descriptors: it counts as running until the last thread is
    /// gone. (The data path's TUN queues stayed attached in exactly this state.)
    #[test]
    fn a_zombie_main_thread_with_a_live_thread_counts_as_running() {
        // The main thread leaves with the raw exit syscall (60: the thread alone, not the
        // process), the other thread lives on for a second.
        let script = "import ctypes, threading, time\n\
                      threading.Thread(target=time.sleep, args=(1,)).start()\n\
                      time.sleep(0.1)\n\
                      ctypes.CDLL(None).syscall(60, 0)\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .spawn()
            .expect("python3");
        let pid = child.id() as i32;
        let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stat().contains(") Z") {
            assert!(
                Instant::now() < deadline,
                "the main thread never ended: {}",
                stat()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            running(pid),
            "a zombie main thread with a live thread read as ended"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(pid) {
            assert!(Instant::now() < deadline, "the process never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = child.wait().expect("reap");
        assert!(status.success(), "{status}");
    }
}
