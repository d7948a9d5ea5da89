//! Gratuitous ARP from the pod's interface, so neighbours that cached an earlier owner of a
//! re-used address (the node above all) switch to the new MAC at once instead of after their
//! entry goes stale (tens of seconds).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// EtherType of ARP.
const ETH_P_ARP: u16 = 0x0806;

/// Opens a packet socket for ARP frames in the calling thread's network namespace.
pub fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The ARP request announcing `ip` at `mac` (sender and target address both `ip`), as the
/// kernel's own `arping -U`-style announcement looks.
pub fn announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut frame = [0u8; 28];
    frame[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    frame[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    frame[4] = 6;
    frame[5] = 4;
    frame[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    frame[8..14].copy_from_slice(&mac);
    frame[14..18].copy_from_slice(&ip.octets());
    frame[24..28].copy_from_slice(&ip.octets());
    frame
}

/// Broadcasts the announcement of `ip` at `mac` out of interface `index`.
pub fn announce(socket: &OwnedFd, index: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let frame = announcement(mac, ip);
    // SAFETY: sockaddr_ll is plain old data; zeroed is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = i32::try_from(index)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range"))?;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: the frame and address outlive the call; the lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_layout() {
        let frame = announcement([0x0a, 0, 0, 0, 0, 7], Ipv4Addr::new(10, 244, 7, 2));
        assert_eq!(
            frame,
            [
                0, 1, 8, 0, 6, 4, 0, 1, 0x0a, 0, 0, 0, 0, 7, 10, 244, 7, 2, 0, 0, 0, 0, 0, 0, 10,
                244, 7, 2
            ]
        );
    }
}
