//! The UDP backend's underlay socket: batched receive (`recvmmsg`) with UDP GRO, and sends
//! of many datagrams in one call, with UDP GSO (`UDP_SEGMENT`) where the kernel has it and
//! `sendmmsg` where it does not. IPv4 or IPv6; an IPv6 socket bound to `::` also carries
//! IPv4 (as v4-mapped addresses), for a WireGuard device whose peers are of either family.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags};
use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6,
};
use nix::sys::time::TimeVal;

/// `UDP_SEGMENT` from `linux/udp.h` (Linux 4.18): GSO size of a send.
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` from `linux/udp.h` (Linux 5.0): deliver coalesced datagrams with their size.
const UDP_GRO: libc::c_int = 104;
/// The kernel refuses UDP GSO sends of more segments than this (`UDP_MAX_SEGMENTS`, 64 on
/// kernels before 6.7).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload of one (GSO) send: 65535 minus IPv4 and UDP headers (IPv6 allows a
/// little more; one limit keeps the batching the same for both).
pub const MAX_GSO_BYTES: usize = 65_507;
/// Socket buffer size asked for; traffic comes in bursts of 64 KiB GSO batches.
const SOCKET_BUFFER: usize = 8 << 20;
/// How long a receive waits for a first message, so a pump looks at its stop flag this often.
pub const RECV_TIMEOUT_MS: libc::suseconds_t = 200;
/// Receive buffer per message: one GRO batch can be a whole 64 KiB.
pub const RECV_BUFFER: usize = 65_536;

/// One datagram to send, in two parts (a header and a payload) the kernel gathers.
pub type Datagram<'a> = [&'a [u8]; 2];

fn datagram_len(d: &Datagram<'_>) -> usize {
    d[0].len() + d[1].len()
}

fn iovecs(d: &Datagram<'_>) -> [libc::iovec; 2] {
    d.map(|part| libc::iovec {
        iov_base: part.as_ptr() as *mut libc::c_void,
        iov_len: part.len(),
    })
}

/// Appends `part` to the iovecs `iov[from..]`, extending the last one instead when `part`
/// starts where it ends; empty parts are left out.
pub fn push_merged(iov: &mut Vec<libc::iovec>, from: usize, part: &[u8]) {
    if part.is_empty() {
        return;
    }
    if iov.len() > from {
        if let Some(last) = iov.last_mut() {
            if (last.iov_base as usize).wrapping_add(last.iov_len) == part.as_ptr() as usize {
                last.iov_len += part.len();
                return;
            }
        }
    }
    iov.push(libc::iovec {
        iov_base: part.as_ptr() as *mut libc::c_void,
        iov_len: part.len(),
    });
}

/// A bound UDP socket of the data path.
#[derive(Debug)]
pub struct UnderlaySocket {
    fd: OwnedFd,
    /// Whether the socket is `AF_INET6` (IPv4 destinations then go out v4-mapped).
    v6: bool,
    gso: AtomicBool,
    gro: bool,
}

/// A destination as `sendmsg` takes it.
#[derive(Clone, Copy)]
enum RawAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl RawAddr {
    fn name(&mut self) -> (*mut libc::c_void, libc::socklen_t) {
        match self {
            RawAddr::V4(sa) => (
                (sa as *mut libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            RawAddr::V6(sa) => (
                (sa as *mut libc::sockaddr_in6).cast(),
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

fn sockaddr_in6(addr: SocketAddrV6) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: addr.port().to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: addr.ip().octets(),
        },
        sin6_scope_id: addr.scope_id(),
    }
}

/// The sender of a received message (v4-mapped IPv6 as the IPv4 address it is).
fn source_of(sa: &libc::sockaddr_storage) -> IpAddr {
    match i32::from(sa.ss_family) {
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote an AF_INET6 address, a sockaddr_in6, into the storage.
            let sa6 =
                unsafe { &*(sa as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sa6.sin6_addr.s6_addr);
            ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)
        }
        libc::AF_INET => {
            // SAFETY: the kernel wrote an AF_INET address, a sockaddr_in, into the storage.
            let sa4 =
                unsafe { &*(sa as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            IpAddr::V4(Ipv4Addr::from(u32::from_be(sa4.sin_addr.s_addr)))
        }
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

impl UnderlaySocket {
    /// Opens a UDP socket bound to `addr` with `SO_REUSEPORT` (so every worker has its own
    /// socket on the same port), large buffers, and, when `offloads`, GSO/GRO switched on
    /// where available. An IPv6 socket bound to `::` takes IPv4 as well; one bound to an
    /// IPv6 address only IPv6.
    pub fn bind(addr: impl Into<SocketAddr>, offloads: bool) -> io::Result<Self> {
        let addr = addr.into();
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let fd = socket::socket(
            family,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Udp,
        )?;
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
        // FORCE needs CAP_NET_ADMIN; without it the plain option is capped by rmem_max.
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            socket::setsockopt(&fd, sockopt::RcvBuf, &SOCKET_BUFFER)?;
        }
        if socket::setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
            socket::setsockopt(&fd, sockopt::SndBuf, &SOCKET_BUFFER)?;
        }
        let timeout = TimeVal::new(0, RECV_TIMEOUT_MS * 1000);
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
        match addr {
            SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
            SocketAddr::V6(a) => {
                socket::setsockopt(&fd, sockopt::Ipv6V6Only, &!a.ip().is_unspecified())?;
                socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?
            }
        }
        // Setting a GSO size of 0 succeeds exactly on kernels that know UDP_SEGMENT.
        let gso = offloads && socket::setsockopt(&fd, sockopt::UdpGsoSegment, &0).is_ok();
        let gro = offloads && socket::setsockopt(&fd, sockopt::UdpGroSegment, &true).is_ok();
        Ok(UnderlaySocket {
            fd,
            v6: addr.is_ipv6(),
            gso: AtomicBool::new(gso),
            gro,
        })
    }

    /// `dst` as this socket's family takes it: IPv4 v4-mapped on an IPv6 socket; an IPv6
    /// destination on an IPv4 socket is refused.
    fn raw(&self, dst: SocketAddr) -> io::Result<RawAddr> {
        match (dst, self.v6) {
            (SocketAddr::V4(a), false) => Ok(RawAddr::V4(sockaddr_in(a))),
            (SocketAddr::V4(a), true) => Ok(RawAddr::V6(sockaddr_in6(SocketAddrV6::new(
                a.ip().to_ipv6_mapped(),
                a.port(),
                0,
                0,
            )))),
            (SocketAddr::V6(a), true) => Ok(RawAddr::V6(sockaddr_in6(a))),
            (SocketAddr::V6(_), false) => Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
        }
    }

    /// Whether sends use UDP GSO (cleared for good after the kernel refused one).
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether the kernel may hand over coalesced datagrams (UDP GRO).
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Sends each of `datagrams` to `dst` as its own UDP datagram, made of its two parts (a
    /// header and a payload, either may be empty: they are gathered by the kernel, not
    /// copied here). With GSO, runs of equal size (the last of a run may be shorter) go out
    /// in one `sendmsg`; otherwise, or when the kernel refuses GSO, one `sendmmsg` carries
    /// the whole batch.
    pub fn send_datagrams(
        &self,
        dst: impl Into<SocketAddr>,
        datagrams: &[Datagram<'_>],
    ) -> io::Result<()> {
        if datagrams.is_empty() {
            return Ok(());
        }
        let dst = self.raw(dst.into())?;
        let mut sent = 0;
        if self.gso() && datagrams.len() > 1 {
            match self.send_gso_runs(dst, datagrams, &mut sent) {
                Ok(()) => return Ok(()),
                // EIO: the route's device cannot checksum-offload GSO; EINVAL: limits differ.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) => {
                    self.gso.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "UDP GSO send refused; falling back to sendmmsg");
                }
                Err(e) => return Err(e),
            }
        }
        // Only what GSO did not already send, so no datagram goes out twice.
        self.send_mmsg(dst, &datagrams[sent..])
    }

    /// Sends `datagrams` in GSO runs, all runs in one `sendmmsg` (so the receiver finds
    /// them queued together); `sent` counts the datagrams already sent when it fails.
    fn send_gso_runs(
        &self,
        dst: RawAddr,
        datagrams: &[Datagram<'_>],
        sent: &mut usize,
    ) -> io::Result<()> {
        // Runs as (first datagram, end, segment size).
        let mut runs: Vec<(usize, usize, u16)> = Vec::new();
        let mut start = 0;
        while start < datagrams.len() {
            let seg = datagram_len(&datagrams[start]);
            let mut end = start + 1;
            let mut bytes = seg;
            // A run: equal sizes, optionally closed by one shorter datagram.
            while end < datagrams.len()
                && end - start < MAX_GSO_SEGMENTS
                && bytes + datagram_len(&datagrams[end]) <= MAX_GSO_BYTES
                && datagram_len(&datagrams[end]) <= seg
            {
                bytes += datagram_len(&datagrams[end]);
                end += 1;
                if datagram_len(&datagrams[end - 1]) < seg {
                    break;
                }
            }
            let seg = u16::try_from(seg).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            runs.push((start, end, seg));
            start = end;
        }
        let mut sa = dst;
        let (name, namelen) = sa.name();
        // Per run its iovecs, parts that lie back to back in memory merged into one: each
        // iovec costs the kernel a separate user copy.
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(2 * datagrams.len());
        let mut spans: Vec<Range<usize>> = Vec::with_capacity(runs.len());
        for &(first, end, _) in &runs {
            let from = iov.len();
            for part in datagrams[first..end].iter().flatten() {
                push_merged(&mut iov, from, part);
            }
            spans.push(from..iov.len());
        }
        // Per run room for one cmsg carrying a u16, aligned as the kernel expects.
        let mut control = vec![[0u64; 4]; runs.len()];
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(runs.len());
        for ((&(first, end, seg), control), span) in runs.iter().zip(control.iter_mut()).zip(&spans)
        {
            // SAFETY: mmsghdr is plain old data; all-zero is valid.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            let msg = &mut m.msg_hdr;
            msg.msg_name = name;
            msg.msg_namelen = namelen;
            msg.msg_iov = iov[span.start..].as_mut_ptr();
            msg.msg_iovlen = span.len();
            if end - first > 1 {
                msg.msg_control = control.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                msg.msg_controllen =
                    unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
                // SAFETY: msg_control points at `control`, which is large enough for one
                // cmsg of a u16 (CMSG_SPACE of 2 bytes is at most 24 bytes).
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(msg);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg);
                }
            }
            msgs.push(m);
        }
        self.sendmmsg_all(&mut msgs, |done| *sent = runs[done - 1].1)
    }

    fn send_mmsg(&self, dst: RawAddr, datagrams: &[Datagram<'_>]) -> io::Result<()> {
        if datagrams.is_empty() {
            return Ok(());
        }
        let mut sa = dst;
        let (name, namelen) = sa.name();
        let mut iov: Vec<[libc::iovec; 2]> = datagrams.iter().map(iovecs).collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain old data; all-zero is valid.
                let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
                m.msg_hdr.msg_name = name;
                m.msg_hdr.msg_namelen = namelen;
                m.msg_hdr.msg_iov = v.as_mut_ptr();
                m.msg_hdr.msg_iovlen = v.len();
                m
            })
            .collect();
        self.sendmmsg_all(&mut msgs, |_| {})
    }

    /// Sends every message with as few `sendmmsg` calls as the kernel allows; `progress` gets
    /// the number of messages sent so far after each call. The messages' pointers must stay
    /// valid for the call.
    fn sendmmsg_all(
        &self,
        msgs: &mut [libc::mmsghdr],
        mut progress: impl FnMut(usize),
    ) -> io::Result<()> {
        let mut done = 0;
        while done < msgs.len() {
            let rest = &mut msgs[done..];
            // SAFETY: the caller's mmsghdrs point at live sa/iov/control buffers.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if rc == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            // A short count means the next message failed; the next call reports why.
            done += rc as usize;
            progress(done);
        }
        Ok(())
    }

    /// Receives up to `batch.capacity()` messages, waiting up to [`RECV_TIMEOUT_MS`] for the
    /// first (one blocking call instead of poll and receive); returns how many, 0 when none
    /// came in time.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let n = batch.bufs.len();
        let mut iov: Vec<libc::iovec> = batch
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..n)
            .map(|i| {
                // SAFETY: mmsghdr is plain old data; all-zero is valid.
                let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
                m.msg_hdr.msg_name = (&mut batch.addrs[i] as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &mut iov[i];
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_control = batch.control[i].as_mut_ptr().cast();
                m.msg_hdr.msg_controllen = mem::size_of_val(&batch.control[i]);
                m
            })
            .collect();
        let rc = loop {
            // SAFETY: every mmsghdr points at live buffers, addresses and control areas of
            // `batch` and `iov` for the duration of the call.
            let rc = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(err),
            }
        };
        for (i, m) in msgs.iter().take(rc).enumerate() {
            batch.lens[i] = m.msg_len as usize;
            batch.truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            batch.segment[i] = gro_segment_size(&m.msg_hdr).unwrap_or(batch.lens[i]);
            batch.sources[i] = source_of(&batch.addrs[i]);
        }
        Ok(rc)
    }
}

/// Blocks until `fd` is readable or `timeout_ms` passed; EINTR counts as a timeout.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: u16) -> io::Result<()> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, timeout_ms) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The segment size of a GRO-coalesced message, from its `UDP_GRO` control message.
fn gro_segment_size(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: hdr was filled by recvmmsg; CMSG_FIRSTHDR/NXTHDR walk only within
    // msg_controllen bytes of its control buffer.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(size).ok().filter(|s| *s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// Reusable receive state for [`UnderlaySocket::recv_batch`]: buffers and per-message results.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    control: Vec<[u64; 8]>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    segment: Vec<usize>,
    sources: Vec<IpAddr>,
}

impl RecvBatch {
    /// Room for `messages` messages of up to [`RECV_BUFFER`] bytes each.
    pub fn new(messages: usize) -> Self {
        RecvBatch {
            bufs: vec![vec![0u8; RECV_BUFFER]; messages],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            addrs: vec![unsafe { mem::zeroed::<libc::sockaddr_storage>() }; messages],
            control: vec![[0u64; 8]; messages],
            lens: vec![0; messages],
            truncated: vec![false; messages],
            segment: vec![0; messages],
            sources: vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED); messages],
        }
    }

    /// Message `i` of the last receive: its sender, its bytes (several datagrams of the
    /// segment size, the last maybe shorter, when the kernel coalesced them; empty for an
    /// empty datagram), the segment size (at least 1), and whether it was truncated.
    pub fn message(&self, i: usize) -> (IpAddr, &[u8], usize, bool) {
        let data = &self.bufs[i][..self.lens[i].min(RECV_BUFFER)];
        let seg = self.segment[i].max(1);
        (self.sources[i], data, seg, self.truncated[i])
    }

    /// The receive buffers, buffer `i` holding message `i`, to rearrange messages in place.
    pub fn buffers_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread in a fresh, private network namespace with `lo` up (needs root;
    /// the namespace disappears with the thread, nothing outside it is touched).
    fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare a network namespace (tests run as root)");
                let up = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .expect("run ip link set lo up");
                assert!(up.success(), "ip link set lo up: {up}");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Sends four datagrams (three of 1000 bytes, one of 500) and returns what arrived.
    fn round_trip(force_sendmmsg: bool) -> (bool, Vec<Vec<u8>>) {
        in_private_netns(|| {
            let lo = Ipv4Addr::LOCALHOST;
            let rx =
                UnderlaySocket::bind(SocketAddrV4::new(lo, 8285), true).expect("bind receiver");
            let tx = UnderlaySocket::bind(SocketAddrV4::new(lo, 8286), true).expect("bind sender");
            if force_sendmmsg {
                tx.gso.store(false, Ordering::Relaxed);
            }
            let payloads: Vec<Vec<u8>> = [1000usize, 1000, 1000, 500]
                .iter()
                .enumerate()
                .map(|(i, n)| vec![i as u8 + 1; *n])
                .collect();
            // The first datagram in two parts, to check that they are gathered; the second
            // and third back to back in one buffer (their iovecs are merged), cut unevenly.
            let (head, tail) = payloads[0].split_at(300);
            let joined = [payloads[1].as_slice(), payloads[2].as_slice()].concat();
            let (second, third) = joined.split_at(1000);
            let (second_head, second_tail) = second.split_at(400);
            let mut slices: Vec<Datagram<'_>> =
                vec![[head, tail], [second_head, second_tail], [&[][..], third]];
            slices.push([payloads[3].as_slice(), &[][..]]);
            tx.send_datagrams(SocketAddrV4::new(lo, 8285), &slices)
                .expect("send datagrams");
            let mut batch = RecvBatch::new(8);
            let mut got = Vec::new();
            for _ in 0..50 {
                let n = rx.recv_batch(&mut batch).expect("receive");
                for i in 0..n {
                    let (src, data, seg, truncated) = batch.message(i);
                    assert_eq!(src, IpAddr::V4(lo));
                    assert!(!truncated);
                    got.extend(data.chunks(seg).map(|d| d.to_vec()));
                }
                if got.len() >= 4 {
                    break;
                }
            }
            (tx.gso(), got)
        })
    }

    #[test]
    fn back_to_back_parts_share_an_iovec() {
        let buf = [7u8; 100];
        let other = [8u8; 20];
        let mut iov = Vec::new();
        push_merged(&mut iov, 0, &buf[..30]);
        push_merged(&mut iov, 0, &buf[30..30]);
        push_merged(&mut iov, 0, &buf[30..100]);
        push_merged(&mut iov, 0, &other[..10]);
        assert_eq!(
            iov.len(),
            2,
            "empty parts are left out, adjacent ones merged"
        );
        assert_eq!(
            (iov[0].iov_base as *const u8, iov[0].iov_len),
            (buf.as_ptr(), 100)
        );
        assert_eq!(
            (iov[1].iov_base as *const u8, iov[1].iov_len),
            (other.as_ptr(), 10)
        );
        // The next message's iovecs start at 2: never merged into the previous message's.
        push_merged(&mut iov, 2, &other[10..15]);
        push_merged(&mut iov, 2, &other[15..]);
        assert_eq!(iov.len(), 3);
        assert_eq!(iov[1].iov_len, 10);
        assert_eq!(
            (iov[2].iov_base as *const u8, iov[2].iov_len),
            (other[10..].as_ptr(), 10)
        );
    }

    fn expected() -> Vec<Vec<u8>> {
        vec![vec![1; 1000], vec![2; 1000], vec![3; 1000], vec![4; 500]]
    }

    #[test]
    fn gso_send_arrives_as_separate_datagrams() {
        let (gso, got) = round_trip(false);
        assert!(gso, "this kernel (>= 4.18) has UDP_SEGMENT");
        assert_eq!(got, expected());
    }

    #[test]
    fn a_dual_stack_socket_talks_to_ipv4_and_ipv6_peers() {
        in_private_netns(|| {
            let lo4 = Ipv4Addr::LOCALHOST;
            let lo6 = std::net::Ipv6Addr::LOCALHOST;
            let dual = UnderlaySocket::bind(
                SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 51820),
                true,
            )
            .expect("bind [::]:51820");
            let v4 = UnderlaySocket::bind(SocketAddrV4::new(lo4, 7000), true).expect("bind v4");
            let v6 =
                UnderlaySocket::bind(SocketAddrV6::new(lo6, 7001, 0, 0), true).expect("bind v6");
            // An IPv4 socket cannot reach an IPv6 peer: refused, not sent somewhere else.
            let e = v4
                .send_datagrams(SocketAddrV6::new(lo6, 51820, 0, 0), &[[b"x", &[][..]]])
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EAFNOSUPPORT));
            v4.send_datagrams(SocketAddrV4::new(lo4, 51820), &[[b"four", &[][..]]])
                .expect("send v4");
            v6.send_datagrams(SocketAddrV6::new(lo6, 51820, 0, 0), &[[b"six", &[][..]]])
                .expect("send v6");
            let mut batch = RecvBatch::new(8);
            let mut got = Vec::new();
            for _ in 0..50 {
                let n = dual.recv_batch(&mut batch).expect("receive");
                for i in 0..n {
                    let (src, data, _, _) = batch.message(i);
                    got.push((src, data.to_vec()));
                }
                if got.len() >= 2 {
                    break;
                }
            }
            got.sort();
            assert_eq!(
                got,
                [
                    (IpAddr::V4(lo4), b"four".to_vec()),
                    (IpAddr::V6(lo6), b"six".to_vec())
                ],
                "an IPv4 sender shows as IPv4, not v4-mapped"
            );
            // And back: IPv4 as v4-mapped from the dual-stack socket, in a GSO batch.
            let two = [[&b"a1"[..], &[][..]], [&b"a2"[..], &[][..]]];
            dual.send_datagrams(SocketAddrV4::new(lo4, 7000), &two)
                .expect("send to v4 from [::]");
            dual.send_datagrams(SocketAddrV6::new(lo6, 7001, 0, 0), &two)
                .expect("send to v6 from [::]");
            for (sock, want) in [(&v4, IpAddr::V4(lo4)), (&v6, IpAddr::V6(lo6))] {
                let mut seen = Vec::new();
                for _ in 0..50 {
                    let n = sock.recv_batch(&mut batch).expect("receive back");
                    for i in 0..n {
                        let (src, data, seg, _) = batch.message(i);
                        assert_eq!(src, want);
                        seen.extend(data.chunks(seg).map(|d| d.to_vec()));
                    }
                    if seen.len() >= 2 {
                        break;
                    }
                }
                assert_eq!(seen, [b"a1".to_vec(), b"a2".to_vec()]);
            }
        })
    }

    #[test]
    fn sendmmsg_fallback_arrives_as_separate_datagrams() {
        let (gso, got) = round_trip(true);
        assert!(!gso);
        assert_eq!(got, expected());
    }
}
