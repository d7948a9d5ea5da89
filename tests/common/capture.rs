//! A `tcpdump` capture on every port of the underlay bridge (forwarded frames do not pass `br0`
//! itself), for tests that check what nodes send each other.

use std::process::{Child, Stdio};
use std::time::Duration;

use super::*;

/// A running capture writing to a file; stopped and read with [`Capture::finish`].
pub struct Capture {
    child: Child,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// Starts capturing what matches the pcap `filter` (e.g. `ip and not host 192.0.2.2`).
    /// Filters for pod traffic leave out `igmp` (and, for IPv6, multicast and ICMPv6): an
    /// interface coming up in a node sends membership reports (from 0.0.0.0 where it has no
    /// IPv4 address) for a second or two, which is the kernel's, not the pods'.
    pub fn start(underlay: &Underlay, filter: &str) -> Capture {
        let dir = tempfile::tempdir().expect("capture dir");
        let file = dir.path().join("underlay.pcap");
        let err = dir.path().join("tcpdump.err");
        let child = underlay
            .netns()
            .command("tcpdump")
            .args([
                "-i",
                "any",
                "--immediate-mode",
                "-U",
                "-n",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("tcpdump stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("tcpdump (scripts/setup.sh installs it): {e}"));
        wait_until(Duration::from_secs(10), "tcpdump listening", || {
            std::fs::read_to_string(&err).is_ok_and(|t| t.contains("listening on"))
        });
        Capture {
            child,
            file,
            _dir: dir,
        }
    }

    /// Stops the capture; returns the raw file and `tcpdump -r`'s one line per packet.
    pub fn finish(mut self) -> (Vec<u8>, Vec<String>) {
        std::thread::sleep(Duration::from_millis(500));
        // SIGINT lets tcpdump flush its file.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let raw = std::fs::read(&self.file).expect("read capture");
        let text = host_ok(
            "tcpdump",
            &["-r", &self.file.to_string_lossy(), "-n", "-q", "-t"],
        );
        (raw, text.lines().map(str::to_string).collect())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // A test that fails before finish() leaves no tcpdump behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The etcd address of `cluster`, to leave its traffic out of a capture.
pub fn etcd_ip(cluster: &Cluster) -> String {
    let endpoint = cluster.etcd.endpoint();
    let host = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    host.split(':').next().unwrap_or_default().to_string()
}
