//! IPv4 and IPv6 prefix arithmetic (kept here so the plugin links no network-types crate).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 address with a prefix length, e.g. `10.244.1.1/24` (host bits may be set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Why a string is not an `a.b.c.d/len` prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an IPv4 prefix (a.b.c.d/len, len 0-32)")]
pub struct ParseNetError {
    text: String,
}

impl Ipv4Net {
    /// `0.0.0.0/0`.
    pub const DEFAULT_ROUTE: Ipv4Net = Ipv4Net {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
    };

    /// A prefix from an address and a length; `None` when the length exceeds 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then_some(Ipv4Net { addr, prefix })
    }

    /// The address as given (host bits kept).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p)),
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The broadcast (last) address of the prefix.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// This prefix with host bits cleared.
    pub fn trunc(&self) -> Ipv4Net {
        Ipv4Net {
            addr: self.network(),
            prefix: self.prefix,
        }
    }
}

/// A static address as runtimes ask for one: `10.244.7.5`, or with a prefix
/// (`10.244.7.5/24`, the prefix being the node subnet's business and not used); anything
/// else after the address is refused.
pub fn parse_static_ipv4(text: &str) -> Option<Ipv4Addr> {
    if text.contains('/') {
        text.parse::<Ipv4Net>().ok().map(|net| net.addr())
    } else {
        text.parse().ok()
    }
}

impl FromStr for Ipv4Net {
    type Err = ParseNetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseNetError {
            text: text.to_string(),
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        Ipv4Net::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv6 address with a prefix length, e.g. `fd00:10:244:1::1/64` (host bits may be set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Net {
    addr: Ipv6Addr,
    prefix: u8,
}

/// Why a string is not an IPv6 `addr/len` prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an IPv6 prefix (addr/len, len 0-128)")]
pub struct ParseNet6Error {
    text: String,
}

impl Ipv6Net {
    /// `::/0`.
    pub const DEFAULT_ROUTE: Ipv6Net = Ipv6Net {
        addr: Ipv6Addr::UNSPECIFIED,
        prefix: 0,
    };

    /// A prefix from an address and a length; `None` when the length exceeds 128.
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Option<Self> {
        (prefix <= 128).then_some(Ipv6Net { addr, prefix })
    }

    /// The address as given (host bits kept).
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u128 {
        match self.prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }

    /// The last address of the prefix.
    pub fn last(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) | !self.mask())
    }

    /// This prefix with host bits cleared.
    pub fn trunc(&self) -> Ipv6Net {
        Ipv6Net {
            addr: self.network(),
            prefix: self.prefix,
        }
    }
}

impl FromStr for Ipv6Net {
    type Err = ParseNet6Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseNet6Error {
            text: text.to_string(),
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(err)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        Ipv6Net::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let net: Ipv4Net = "10.244.1.1/24".parse().unwrap();
        assert_eq!(net.network(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(net.broadcast(), Ipv4Addr::new(10, 244, 1, 255));
        assert_eq!(net.trunc().to_string(), "10.244.1.0/24");
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all, Ipv4Net::DEFAULT_ROUTE);
        assert_eq!(all.broadcast(), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn ipv6_arithmetic() {
        let net: Ipv6Net = "fd00:10:244:1::1/64".parse().unwrap();
        assert_eq!(net.network().to_string(), "fd00:10:244:1::");
        assert_eq!(net.last().to_string(), "fd00:10:244:1:ffff:ffff:ffff:ffff");
        assert_eq!(net.trunc().to_string(), "fd00:10:244:1::/64");
        for bad in ["fd00::", "fd00::/129", "10.0.0.0/8", "x/8", ""] {
            assert!(bad.parse::<Ipv6Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }
}
