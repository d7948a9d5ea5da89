//! [`EtcdCluster`]: a three-member etcd cluster with faults (kill, partition, leader moves).

use super::*;

/// One member of an [`EtcdCluster`]: a real etcd in its own namespace on the underlay.
#[derive(Debug)]
pub struct EtcdMember {
    child: Mutex<Option<Child>>,
    partitioned: AtomicBool,
    name: String,
    ip: String,
    initial_cluster: String,
    /// Shared by the members of one cluster, unique per test.
    cluster_token: String,
    ns: Netns,
    dir: tempfile::TempDir,
}

impl EtcdMember {
    /// The member's name (`m0`, `m1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's underlay address.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// `http://IP:2379`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// The member's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The member's log so far.
    pub fn log(&self) -> String {
        read_to_string_lossy(&self.log_path())
    }

    /// True while the etcd process runs.
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// True while [`EtcdCluster::partition`] cuts the member off.
    pub fn is_partitioned(&self) -> bool {
        self.partitioned.load(Ordering::Relaxed)
    }

    /// Spawns etcd (same data dir every time) without waiting for it to serve: a member of a
    /// cluster serves only once a quorum is up.
    fn spawn(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = guard.as_mut() {
            assert!(
                !matches!(child.try_wait(), Ok(None)),
                "etcd member {} is already running",
                self.name
            );
        }
        let data = self.dir.path().join("data");
        let data = data.to_string_lossy();
        let client_urls = format!("{},http://127.0.0.1:2379", self.endpoint());
        let peer_url = format!("http://{}:2380", self.ip);
        log_marker(&self.log_path(), "start etcd member");
        let (out, err) = log_stdio(&self.log_path());
        let mut cmd = self.ns.command("etcd");
        cmd.args([
            "--name",
            &self.name,
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client_urls,
            "--advertise-client-urls",
            &self.endpoint(),
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &self.cluster_token,
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        match cmd.spawn() {
            Ok(child) => *guard = Some(child),
            Err(e) => panic!("cannot spawn etcd member {} {cmd:?}: {e}", self.name),
        }
    }

    /// SIGKILLs the member (no clean shutdown) and reaps it.
    fn kill(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match guard.take() {
            Some(mut child) => {
                kill_and_reap(&mut child);
                log_marker(&self.log_path(), "etcd member killed with SIGKILL");
            }
            None => panic!("etcd member {} is not running", self.name),
        }
    }

    /// `etcdctl args..` from inside this member's namespace against `endpoints`.
    fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        let mut cmd = self.ns.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                endpoints,
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "5s",
            ])
            .args(args);
        output_of(&mut cmd)
    }

    /// This member's `endpoint status` (member id, leader id, raft term), asked on 127.0.0.1.
    fn status(&self) -> Option<Value> {
        let out = self.etcdctl(
            "http://127.0.0.1:2379",
            &["endpoint", "status", "-w", "json"],
        );
        if !out.status.success() {
            return None;
        }
        let list = serde_json::from_slice::<Value>(&out.stdout).ok()?;
        list.as_array()?.first().map(|s| s["Status"].clone())
    }

    /// A value of etcd's Prometheus metrics (`/metrics` on the member's client port), summed
    /// over its label sets; None if the member does not answer.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 2379));
        let text = self.ns.run(|| -> Option<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            stream.write_all(request.as_bytes()).ok()?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).ok()?;
            Some(String::from_utf8_lossy(&response).into_owned())
        })?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

/// A real etcd cluster of several members, member `i` in its own namespace on the underlay at
/// 192.0.2.(251+i), for fault tests: kill the leader, partition a member with nftables inside
/// its namespace, stop every member and bring them back.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// The address of member 0; member `i` is at this + `i`.
    pub const FIRST_IP: u8 = 251;

    /// Starts `n` members (at most 3) on `underlay` and waits until the cluster serves writes.
    pub fn new(underlay: &Underlay, n: u8) -> EtcdCluster {
        assert!((1..=3).contains(&n), "an etcd cluster of {n} members");
        let ips: Vec<String> = (0..n)
            .map(|i| format!("192.0.2.{}", Self::FIRST_IP + i))
            .collect();
        let initial_cluster = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}=http://{ip}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_token = unique_name("etcd-cluster");
        let members = ips
            .into_iter()
            .enumerate()
            .map(|(i, ip)| {
                let ns = Netns::new(&format!("etcd{i}"));
                underlay.attach(&ns, &ip);
                EtcdMember {
                    child: Mutex::new(None),
                    partitioned: AtomicBool::new(false),
                    name: format!("m{i}"),
                    ip,
                    initial_cluster: initial_cluster.clone(),
                    cluster_token: cluster_token.clone(),
                    ns,
                    dir: temp_dir(&format!("etcd{i}")),
                }
            })
            .collect();
        let cluster = EtcdCluster { members };
        cluster.start_all();
        cluster
    }

    /// Every client URL, comma-separated, as `--etcd-endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdMember::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &EtcdMember {
        &self.members[i]
    }

    /// The members.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Starts every member that is not running at once (a lone member cannot serve) and waits
    /// (30 s) until a write goes through.
    pub fn start_all(&self) {
        for m in &self.members {
            if !m.is_running() {
                m.spawn();
            }
        }
        self.wait_serving(Duration::from_secs(30));
    }

    /// Waits until a quorum answers: a write through the cluster succeeds.
    pub fn wait_serving(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let out = self.etcdctl(&["put", "--", "/weft-harness-ping", "x"]);
            if out.status.success() {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "etcd cluster not serving after {timeout:?}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.logs_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts member `i` again (same data dir) without waiting.
    pub fn start(&self, i: usize) {
        self.members[i].spawn();
    }

    /// SIGKILLs member `i`.
    pub fn kill(&self, i: usize) {
        self.members[i].kill();
    }

    /// SIGKILLs every running member.
    pub fn kill_all(&self) {
        for m in &self.members {
            if m.is_running() {
                m.kill();
            }
        }
    }

    /// The index of the current leader, as the running, reachable members see it (they must
    /// agree).
    pub fn leader(&self) -> Option<usize> {
        let statuses: Vec<(usize, Value)> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_running() && !m.is_partitioned())
            .filter_map(|(i, m)| Some((i, m.status()?)))
            .collect();
        let leader_id = statuses.first()?.1["leader"].as_u64()?;
        if statuses
            .iter()
            .any(|(_, s)| s["leader"].as_u64() != Some(leader_id))
        {
            return None;
        }
        statuses
            .iter()
            .find(|(_, s)| s["header"]["member_id"].as_u64() == Some(leader_id))
            .map(|(i, _)| *i)
    }

    /// Waits (10 s) for an agreed leader and returns its index.
    pub fn wait_leader(&self) -> usize {
        wait_for(Duration::from_secs(10), "an etcd leader", || self.leader())
    }

    /// Hands leadership to member `i` and waits until every member agrees.
    pub fn move_leader(&self, i: usize) {
        let current = self.wait_leader();
        if current == i {
            return;
        }
        let target = self.members[i]
            .status()
            .and_then(|s| s["header"]["member_id"].as_u64())
            .unwrap_or_else(|| panic!("etcd member {} has no status", self.members[i].name));
        let leader = &self.members[current];
        let out = leader.etcdctl(
            "http://127.0.0.1:2379",
            &["move-leader", &format!("{target:x}")],
        );
        assert!(
            out.status.success(),
            "etcdctl move-leader to {}: {}",
            self.members[i].name,
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(Duration::from_secs(10), "leadership moved", || {
            self.leader() == Some(i)
        });
    }

    /// Cuts member `i` off the underlay: an nftables table in its namespace drops everything in
    /// and out of `eth0` (peers and clients alike, no RST: connections just go silent).
    pub fn partition(&self, i: usize) {
        let m = &self.members[i];
        let rules = "table inet weft_fault {\n\
             chain input { type filter hook input priority -10; policy accept; iifname \"eth0\" drop; }\n\
             chain output { type filter hook output priority -10; policy accept; oifname \"eth0\" drop; }\n\
             }\n";
        nft_apply(&m.ns, rules);
        m.partitioned.store(true, Ordering::Relaxed);
    }

    /// Removes the partition of member `i` and waits until every member agrees on a leader: the
    /// healed member comes back with a higher raft term (etcd 3.4 runs without pre-vote), which
    /// unseats the leader and holds writes for an election.
    pub fn heal(&self, i: usize) {
        let m = &self.members[i];
        m.ns.exec_ok(&["nft", "delete", "table", "inet", "weft_fault"]);
        m.partitioned.store(false, Ordering::Relaxed);
        self.wait_leader();
    }

    /// `etcdctl args..` against every member, run from a member that is up and reachable
    /// (etcdctl picks a working endpoint).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let from = self
            .members
            .iter()
            .find(|m| !m.is_partitioned())
            .unwrap_or_else(|| panic!("every etcd member is partitioned"));
        from.etcdctl(&self.endpoints(), args)
    }

    /// `etcdctl args..`, which must succeed; a request that timed out (an election under way)
    /// is sent again for up to 20 s. Only for requests that may be repeated (put, get).
    fn etcdctl_ok(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = self.etcdctl(args);
        while !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("deadline exceeded")
            && Instant::now() < deadline
        {
            println!("etcdctl {}: timed out, sending it again", args.join(" "));
            std::thread::sleep(Duration::from_millis(200));
            out = self.etcdctl(args);
        }
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

    /// Puts `key` = `value` with no etcd lease.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", "--", key, value]);
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl_ok(&["get", "--print-value-only", "--", key]);
        let value = out.strip_suffix('\n').unwrap_or(&out);
        (!out.is_empty()).then(|| value.to_string())
    }

    /// The last lines of every member's log (for failure messages).
    pub fn logs_tail(&self, n: usize) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "----- etcd {} ({}) -----\n{}",
                    m.name,
                    m.ip,
                    tail(&m.log(), n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &self.members {
            let mut guard = m.child.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(mut child) = guard.take() {
                kill_and_reap(&mut child);
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(20));
        }
    }
}

/// Loads an nftables ruleset (`nft -f -`) inside `ns`.
pub fn nft_apply(ns: &Netns, rules: &str) {
    let mut cmd = ns.command("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run nft in {}: {e}", ns.name()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(rules.as_bytes()) {
            panic!("nft -f - in {}: {e}", ns.name());
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("nft -f - in {}: {e}", ns.name()),
    };
    assert!(
        out.status.success(),
        "nft -f - in {} failed: {}\n{rules}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}
