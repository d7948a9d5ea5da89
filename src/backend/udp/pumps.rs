//! What the pump threads of the two userspace data paths (UDP here, WireGuard's userspace
//! path) share: their sizes, the thread set that stops and joins on drop, and the test for
//! an error that ends a pump.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use tun_rs::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};

/// How long a pump blocks before it looks at the stop flag again.
pub(crate) const POLL_MS: u16 = 200;
/// Messages per `recvmmsg`; each can hold a 64 KiB GRO batch.
pub(crate) const RECV_MESSAGES: usize = 16;
/// Room for one TUN read: a 64 KiB super-packet behind its virtio-net header.
pub(crate) const READ_BUFFER: usize = VIRTIO_NET_HDR_LEN + 65_535;
/// Room behind a TUN read for the headers `offload::spread` puts between the segments: 64
/// segments of up to 120 header bytes (super-packets cut finer go out from two iovecs per
/// datagram).
pub(crate) const SPREAD_ROOM: usize = 64 * 120;

/// The virtio-net header of a packet read without one (no offloads).
pub(crate) const PLAIN: VirtioNetHdr = VirtioNetHdr {
    flags: 0,
    gso_type: 0,
    hdr_len: 0,
    gso_size: 0,
    csum_start: 0,
    csum_offset: 0,
};

/// Whether an I/O error means the TUN queue or socket is gone for good.
pub(crate) fn is_fatal(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EBADFD) | Some(libc::EBADF))
}

/// Named threads sharing one stop flag; dropping the set raises the flag and joins them
/// (each pump looks at the flag at least every [`POLL_MS`]).
pub(crate) struct PumpThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The data path, as the panic log names it (`UDP`, `WireGuard`).
    what: &'static str,
}

impl PumpThreads {
    /// An empty set for the data path `what`.
    pub(crate) fn new(what: &'static str) -> Self {
        PumpThreads {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            what,
        }
    }

    /// The flag the threads watch.
    pub(crate) fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Starts `run` on a thread called `name`.
    pub(crate) fn spawn(
        &mut self,
        name: String,
        run: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let thread = std::thread::Builder::new().name(name).spawn(run)?;
        self.threads.push(thread);
        Ok(())
    }
}

impl Drop for PumpThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!(data_path = self.what, "a data path thread panicked");
            }
        }
    }
}

/// Writes the pumps' `counters` (name, value, help) as Prometheus counters named
/// `<prefix>_<name>_total` (the encoder appends `_total`).
pub(crate) fn encode_counters(
    encoder: &mut DescriptorEncoder,
    prefix: &str,
    counters: &[(&str, &AtomicU64, &str)],
) -> std::fmt::Result {
    for (name, value, help) in counters {
        let counter = ConstCounter::new(value.load(Ordering::Relaxed));
        let family = format!("{prefix}_{name}");
        counter.encode(encoder.encode_descriptor(&family, help, None, counter.metric_type())?)?;
    }
    Ok(())
}
