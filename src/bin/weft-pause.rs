//! `weft-pause`: the process that holds a pod's namespaces. It sleeps, reaps zombies and exits
//! 0 on SIGTERM or SIGINT.
//!
//! `weft-pause` alone just pauses (usable as a pause container's command).
//! `weft-pause --sandbox --hostname NAME --pid-file FILE` first unshares new network, IPC and UTS
//! namespaces, sets the hostname, brings `lo` up, then daemonizes (fork + setsid) and writes the
//! daemon's pid to FILE before the foreground process exits 0.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, fork, sethostname, setsid, ForkResult, Pid};

struct SandboxArgs {
    hostname: String,
    pid_file: PathBuf,
}

fn parse_args() -> Result<Option<SandboxArgs>, String> {
    let mut args = std::env::args().skip(1);
    let mut sandbox = false;
    let mut hostname = None;
    let mut pid_file = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
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
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("unshare net/ipc/uts: {e}"))?;
    sethostname(&args.hostname).map_err(|e| format!("sethostname {:?}: {e}", args.hostname))?;
    loopback_up()?;
    // SAFETY: single-threaded here; the child only makes async-signal-safe calls until it returns
    // into plain Rust code of this single-threaded program.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            let tmp = args.pid_file.with_extension("tmp");
            fs::write(&tmp, format!("{child}\n"))
                .and_then(|()| fs::rename(&tmp, &args.pid_file))
                .map_err(|e| format!("write pid file {}: {e}", args.pid_file.display()))?;
            std::process::exit(0);
        }
        ForkResult::Child => {
            setsid().map_err(|e| format!("setsid: {e}"))?;
            chdir("/").map_err(|e| format!("chdir /: {e}"))?;
            weft::pod::process::stdio_to_dev_null()
        }
    }
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
