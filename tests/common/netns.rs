//! [`Netns`]: a network namespace with a per-test unique name.

use super::*;

/// A network namespace with a per-test unique name, removed (with every process in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `weft-<pid>-<n>-<role>` with `lo` up.
    pub fn new(role: &str) -> Netns {
        STALE_CLEANUP.call_once(cleanup_stale);
        let name = unique_name(role);
        host_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A `Command` running `program` inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    fn command_of(&self, args: &[&str]) -> Command {
        let (program, rest) = match args.split_first() {
            Some(split) => split,
            None => panic!("exec in netns {}: empty argument vector", self.name),
        };
        let mut cmd = self.command(program);
        cmd.args(rest);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace and returns its output (any exit status).
    pub fn exec(&self, args: &[&str]) -> Output {
        output_of(&mut self.command_of(args))
    }

    /// Runs a command inside the namespace; panics unless it succeeds; returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        output_ok(&mut self.command_of(args))
    }

    /// Starts a command inside the namespace with stdin/stdout/stderr discarded.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let mut cmd = self.command_of(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot spawn {cmd:?}: {e}"),
        }
    }

    /// `ip -n NAME args..`; panics unless it succeeds; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        output_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip -j -n NAME args..` parsed (an empty output is an empty list).
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let out = output_ok(Command::new("ip").args(["-j", "-n", &self.name]).args(args));
        parse_json_list(&out, &format!("ip -j -n {} {}", self.name, args.join(" ")))
    }

    /// `bridge -j -n NAME args..` parsed.
    pub fn bridge_json(&self, args: &[&str]) -> Vec<Value> {
        let out = output_ok(
            Command::new("bridge")
                .args(["-j", "-n", &self.name])
                .args(args),
        );
        parse_json_list(
            &out,
            &format!("bridge -j -n {} {}", self.name, args.join(" ")),
        )
    }

    /// Sets a sysctl inside this namespace only (e.g. `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Turns IPv6 duplicate address detection off here (all, default and an existing `eth0`),
    /// so IPv6 addresses are usable at once.
    pub fn no_dad(&self) {
        for key in ["all", "default"] {
            self.sysctl(&format!("net.ipv6.conf.{key}.accept_dad"), "0");
        }
        if self
            .exec(&["ip", "link", "show", "dev", "eth0"])
            .status
            .success()
        {
            self.sysctl("net.ipv6.conf.eth0.accept_dad", "0");
        }
    }

    /// Moves the calling thread into this namespace (for threads that live in it).
    pub fn enter(&self) {
        let file = match File::open(self.path()) {
            Ok(f) => f,
            Err(e) => panic!("open {}: {e}", self.path().display()),
        };
        if let Err(e) = nix::sched::setns(file, CloneFlags::CLONE_NEWNET) {
            panic!("setns into netns {}: {e}", self.name);
        }
    }

    /// Runs `f` on a fresh thread inside this namespace; sockets it creates stay in the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                self.enter();
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Pids of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        host_ok("ip", &["netns", "pids", &self.name])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_netns_processes(&self.name);
        let out = output_of(Command::new("ip").args(["netns", "del", &self.name]));
        if !out.status.success() {
            eprintln!(
                "harness: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

pub fn parse_json_list(out: &str, what: &str) -> Vec<Value> {
    if out.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str::<Value>(out) {
        Ok(Value::Array(items)) => items,
        Ok(other) => panic!("{what}: expected a JSON list, got {other}"),
        Err(e) => panic!("{what}: invalid JSON ({e}): {out}"),
    }
}
