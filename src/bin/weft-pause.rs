//! `weft-pause`: the process that holds a pod's namespaces. It sleeps, reaps zombies and exits
//! 0 on SIGTERM or SIGINT.
//!
//! `weft-pause` alone just pauses (usable as a pause container's command).
//! `weft-pause --sandbox --hostname NAME --pid-file FILE [--netns-file F] [--ipc-file F]
//! [--uts-file F]` first unshares a new namespace for each file given, bind-mounts it onto that
//! (existing, empty) file, sets the hostname (UTS) and brings `lo` up (network), then daemonizes
//! (fork + setsid), writes the daemon's pid to FILE before the foreground process exits 0, and
//! the daemon drops every capability: all it does from then on is wait and reap.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, fork, sethostname, setsid, ForkResult, Pid};
use weft::atomic_file::write_atomic;

struct SandboxArgs {
    hostname: String,
    pid_file: PathBuf,
    netns_file: Option<PathBuf>,
    ipc_file: Option<PathBuf>,
    uts_file: Option<PathBuf>,
}

fn parse_args() -> Result<Option<SandboxArgs>, String> {
    let mut args = std::env::args().skip(1);
    let mut sandbox = false;
    let mut hostname = None;
    let mut pid_file = None;
    let (mut netns_file, mut ipc_file, mut uts_file) = (None, None, None);
    while let Some(arg) = args.next() {
        let mut path = || {
            args.next()
                .map(PathBuf::from)
                .ok_or(format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--netns-file" => netns_file = Some(path()?),
            "--ipc-file" => ipc_file = Some(path()?),
            "--uts-file" => uts_file = Some(path()?),
            "--sandbox" => sandbox = true,
            "--hostname" => hostname = Some(args.next().ok_or("--hostname needs a value")?),
            "--pid-file" => {
                pid_file = Some(PathBuf::from(
                    args.next().ok_or("--pid-file needs a value")?,
                ))
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !sandbox {
        return Ok(None);
    }
    Ok(Some(SandboxArgs {
        hostname: hostname.ok_or("--sandbox needs --hostname")?,
        pid_file: pid_file.ok_or("--sandbox needs --pid-file")?,
        netns_file,
        ipc_file,
        uts_file,
    }))
}

nix::ioctl_read_bad!(get_if_flags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(set_if_flags, libc::SIOCSIFFLAGS, libc::ifreq);

/// Brings the loopback device of the current network namespace up.
fn loopback_up() -> Result<(), String> {
    let sock: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    // Setting IFF_UP on `lo` is one ioctl; nix has no interface-flags call, and a netlink
    // socket would cost this tiny static program more than the ioctl it replaces.
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq naming "lo"; the ioctls only read/write it.
    unsafe {
        get_if_flags(sock.as_raw_fd(), &mut req).map_err(|e| format!("SIOCGIFFLAGS lo: {e}"))?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        set_if_flags(sock.as_raw_fd(), &req).map_err(|e| format!("SIOCSIFFLAGS lo up: {e}"))?;
    }
    Ok(())
}

/// Enters the sandbox namespaces and daemonizes. Returns in the daemon only; the foreground
/// process exits from here.
fn enter_sandbox(args: &SandboxArgs) -> Result<(), String> {
    let kinds = [
        ("net", CloneFlags::CLONE_NEWNET, &args.netns_file),
        ("ipc", CloneFlags::CLONE_NEWIPC, &args.ipc_file),
        ("uts", CloneFlags::CLONE_NEWUTS, &args.uts_file),
    ];
    let mut flags = CloneFlags::empty();
    for (_, flag, file) in &kinds {
        if file.is_some() {
            flags |= *flag;
        }
    }
    unshare(flags).map_err(|e| format!("unshare {flags:?}: {e}"))?;
    // Held by files from here on, so containers never join through this process's pid.
    for (kind, _, file) in &kinds {
        if let Some(file) = file {
            let source = format!("/proc/self/ns/{kind}");
            mount(
                Some(source.as_str()),
                file,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind-mount {source} onto {}: {e}", file.display()))?;
        }
    }
    if args.uts_file.is_some() {
        sethostname(&args.hostname).map_err(|e| format!("sethostname {:?}: {e}", args.hostname))?;
    }
    if args.netns_file.is_some() {
        loopback_up()?;
    }
    // SAFETY: single-threaded here; the child only makes async-signal-safe calls until it returns
    // into plain Rust code of this single-threaded program.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            write_atomic(&args.pid_file, format!("{child}\n").as_bytes(), 0o644)
                .map_err(|e| format!("write pid file {}: {e}", args.pid_file.display()))?;
            std::process::exit(0);
        }
        ForkResult::Child => {
            setsid().map_err(|e| format!("setsid: {e}"))?;
            chdir("/").map_err(|e| format!("chdir /: {e}"))?;
            weft::pod::process::stdio_to_dev_null().map_err(|e| e.to_string())?;
            drop_capabilities()
        }
    }
}

/// `struct __user_cap_header_struct` of capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct` of capset(2).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability (bounding, ambient, effective, permitted, inheritable) and sets
/// no_new_privs: a compromised pause process can do nothing root could.
fn drop_capabilities() -> Result<(), String> {
    let last: u64 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    // nix wraps neither PR_CAPBSET_DROP, PR_CAP_AMBIENT nor capset(2): raw calls, integers and
    // the kernel's own capability structs only.
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only; EINVAL for caps the kernel lacks is fine.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
    // SAFETY: integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and data are the layouts capset(2) version 3 reads.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(())
}

/// Sleeps until SIGTERM or SIGINT, reaping children on SIGCHLD.
fn pause() -> ExitCode {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("weft-pause: block signals: {e}");
        return ExitCode::FAILURE;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => return ExitCode::SUCCESS,
            Ok(_) => {
                while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    if status == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Err(e) => {
                eprintln!("weft-pause: sigwait: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft-pause: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(sandbox) = args {
        if let Err(e) = enter_sandbox(&sandbox) {
            eprintln!("weft-pause: {e}");
            return ExitCode::FAILURE;
        }
    }
    pause()
}
