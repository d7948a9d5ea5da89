//! `weft-shim`: the per-container supervisor (weft's conmon / containerd-shim).
//!
//! `weft-shim --runtime runc --runtime-root DIR --bundle DIR --id ID --log FILE` daemonizes
//! (fork, setsid, fork, so it survives weftd), records itself in `<bundle>/shim.json`, and lets the
//! foreground process exit 0. The daemon runs `<runtime> --root DIR run --bundle DIR
//! --pid-file <bundle>/container.pid ID` in the foreground, copies the container's stdout and
//! stderr into FILE in CRI log format, reaps orphans (it is a child subreaper), and when the
//! runtime returns writes the exit status atomically to `<bundle>/exit.json`. While the container
//! runs, `<runtime> events` reports OOM kills in its cgroup (cgroup v1 or v2), so a container
//! the OOM killer ended exits as `OOMKilled`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Child;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, fork, pipe, setsid, ForkResult, Pid};
use weft::atomic_file::write_atomic;
use weft::pod::crilog::{format_record, Stream, MAX_RECORD};
use weft::pod::layout::LOG_FILE_MODE;
use weft::pod::process::{stdio_to_dev_null, ProcessId};
use weft::pod::runtime::{ExitReason, ExitStatus};

struct Args {
    runtime: String,
    runtime_root: PathBuf,
    bundle: PathBuf,
    id: String,
    log: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut runtime, mut runtime_root, mut bundle, mut id, mut log) =
        (None, None, None, None, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--runtime" => runtime = Some(value()?),
            "--runtime-root" => runtime_root = Some(PathBuf::from(value()?)),
            "--bundle" => bundle = Some(PathBuf::from(value()?)),
            "--id" => id = Some(value()?),
            "--log" => log = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        runtime: runtime.ok_or("--runtime is required")?,
        runtime_root: runtime_root.ok_or("--runtime-root is required")?,
        bundle: bundle.ok_or("--bundle is required")?,
        id: id.ok_or("--id is required")?,
        log: log.ok_or("--log is required")?,
    })
}

/// Copies one output stream into the log, one CRI record per line (split at [`MAX_RECORD`]).
fn copy_stream(reader: impl Read, stream: Stream, log: Arc<Mutex<File>>) {
    let mut reader = BufReader::with_capacity(MAX_RECORD, reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match reader
            .by_ref()
            .take(MAX_RECORD as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let newline = line.last() == Some(&b'\n');
        if newline {
            line.pop();
        }
        // Only a record cut at MAX_RECORD is partial; text before EOF ends its line.
        let record = format_record(SystemTime::now(), stream, newline || n < MAX_RECORD, &line);
        if let Ok(mut file) = log.lock() {
            if file.write_all(&record).is_err() {
                return;
            }
        }
    }
}

/// Watches the container's cgroup for OOM kills with `<runtime> events` once the container
/// exists; sets `oom` when one is reported. Ends when `done` is set and the events process is
/// killed.
struct OomWatch {
    oom: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    events: Arc<Mutex<Option<Child>>>,
    thread: thread::JoinHandle<()>,
}

impl OomWatch {
    fn start(args: &Args, pid_file: PathBuf) -> OomWatch {
        let oom = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let events: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let (o, d, ev) = (oom.clone(), done.clone(), events.clone());
        let mut cmd = Command::new(&args.runtime);
        cmd.arg("--root")
            .arg(&args.runtime_root)
            .args(["events", "--interval", "3600s", &args.id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let thread = thread::spawn(move || {
            while !pid_file.exists() {
                if d.load(Ordering::Relaxed) {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
            let Ok(mut child) = cmd.spawn() else { return };
            let out = child.stdout.take();
            if let Ok(mut slot) = ev.lock() {
                *slot = Some(child);
            }
            let Some(out) = out else { return };
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if event["type"] == "oom" {
                    o.store(true, Ordering::Relaxed);
                }
            }
        });
        OomWatch {
            oom,
            done,
            events,
            thread,
        }
    }

    /// Stops watching; whether an OOM kill was reported.
    fn finish(self) -> bool {
        self.done.store(true, Ordering::Relaxed);
        // The OOM event is written before the container's exit is seen; let it be read.
        thread::sleep(Duration::from_millis(50));
        if let Ok(mut slot) = self.events.lock() {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = self.thread.join();
        self.oom.load(Ordering::Relaxed)
    }
}

/// Runs the container to its end and returns its exit status.
fn supervise(args: &Args) -> ExitStatus {
    let pid_file = args.bundle.join("container.pid");
    let log = match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(&args.log)
    {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            eprintln!(
                "weft-shim {}: open log {}: {e}",
                args.id,
                args.log.display()
            );
            return start_error();
        }
    };
    let child = Command::new(&args.runtime)
        .arg("--root")
        .arg(&args.runtime_root)
        .arg("run")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("weft-shim: spawn {}: {e}", args.runtime);
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&format_record(
                    SystemTime::now(),
                    Stream::Stderr,
                    true,
                    msg.as_bytes(),
                ));
            }
            return start_error();
        }
    };
    let oom_watch = OomWatch::start(args, pid_file.clone());
    let mut copiers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let log = Arc::clone(&log);
        copiers.push(thread::spawn(move || copy_stream(out, Stream::Stdout, log)));
    }
    if let Some(err) = child.stderr.take() {
        let log = Arc::clone(&log);
        copiers.push(thread::spawn(move || copy_stream(err, Stream::Stderr, log)));
    }
    let status = child.wait();
    let oom_killed = oom_watch.finish();
    for copier in copiers {
        let _ = copier.join();
    }
    // Orphans of the container (reparented to us as subreaper) are gone with its pid namespace.
    while let Ok(s) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
    let code = match status {
        Ok(s) => s.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
        }),
        Err(_) => 255,
    };
    let started_at = fs::metadata(&pid_file).and_then(|m| m.modified()).ok();
    let reason = match (started_at, code) {
        (None, _) => ExitReason::StartError,
        (Some(_), 0) => ExitReason::Completed,
        (Some(_), _) if oom_killed => ExitReason::OomKilled,
        (Some(_), _) => ExitReason::Error,
    };
    ExitStatus {
        code,
        reason,
        started_at,
        finished_at: SystemTime::now(),
    }
}

fn start_error() -> ExitStatus {
    ExitStatus {
        code: 255,
        reason: ExitReason::StartError,
        started_at: None,
        finished_at: SystemTime::now(),
    }
}

/// Daemonizes by a double fork (fork, setsid, fork: the daemon is no session leader and
/// nobody's child but init's). Returns in the daemon only; the foreground process waits until
/// the daemon has recorded itself in `shim.json` (or reports why it could not) and exits.
fn daemonize(args: &Args) -> Result<(), String> {
    let (report_read, report_write) = pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: single-threaded at this point; both sides continue in ordinary Rust code.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            drop(report_write);
            let mut report = String::new();
            File::from(report_read)
                .read_to_string(&mut report)
                .map_err(|e| format!("read daemon report: {e}"))?;
            // Reap the intermediate process, which exits right after the second fork.
            waitpid(child, None).map_err(|e| format!("wait for intermediate {child}: {e}"))?;
            if report == "ok" {
                std::process::exit(0);
            }
            Err(if report.is_empty() {
                "daemon exited without reporting".to_string()
            } else {
                report
            })
        }
        ForkResult::Child => {
            drop(report_read);
            let mut report = File::from(report_write);
            if let Err(e) = setsid() {
                let _ = write!(report, "setsid: {e}");
                std::process::exit(1);
            }
            // SAFETY: still single-threaded.
            match unsafe { fork() } {
                Ok(ForkResult::Parent { .. }) => std::process::exit(0),
                Ok(ForkResult::Child) => {}
                Err(e) => {
                    let _ = write!(report, "second fork: {e}");
                    std::process::exit(1);
                }
            }
            match become_daemon(args) {
                Ok(()) => {
                    report
                        .write_all(b"ok")
                        .map_err(|e| format!("report to foreground: {e}"))?;
                    Ok(())
                }
                Err(e) => {
                    let _ = report.write_all(e.as_bytes());
                    std::process::exit(1);
                }
            }
        }
    }
}

/// The daemon's own setup: cwd `/`, child subreaper, `shim.json`, stdio on `/dev/null`.
fn become_daemon(args: &Args) -> Result<(), String> {
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("set child subreaper: {e}"))?;
    let me = ProcessId::of(std::process::id() as i32).ok_or("own /proc entry unreadable")?;
    let path = args.bundle.join("shim.json");
    let bytes = serde_json::to_vec(&me).map_err(|e| format!("encode shim identity: {e}"))?;
    write_atomic(&path, &bytes, 0o644).map_err(|e| format!("write {}: {e}", path.display()))?;
    stdio_to_dev_null().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft-shim: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = daemonize(&args) {
        eprintln!("weft-shim {}: {e}", args.id);
        return ExitCode::FAILURE;
    }
    let status = supervise(&args);
    let path = args.bundle.join("exit.json");
    match serde_json::to_vec(&status) {
        Ok(bytes) if write_atomic(&path, &bytes, 0o644).is_ok() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
