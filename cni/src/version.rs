//! CNI spec versions: which ones weft speaks and what each allows.

use std::fmt;

use crate::error::{Error, Result};

/// The versions listed by VERSION, oldest first.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version; used for output when the caller's version is unknown.
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch` CNI spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    major: u32,
    minor: u32,
    patch: u32,
}

impl Version {
    /// 0.4.0: first version with CHECK.
    pub const V0_4_0: Version = Version::new(0, 4, 0);
    /// 1.0.0: `ips[].version` dropped from results.
    pub const V1_0_0: Version = Version::new(1, 0, 0);
    /// 1.1.0: GC and STATUS.
    pub const V1_1_0: Version = Version::new(1, 1, 0);

    /// A version from its three numbers.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses `major.minor.patch`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Version::new(major, minor, patch))
    }

    /// Parses a config's `cniVersion` and checks weft supports it (code 1 otherwise).
    pub fn supported(text: &str) -> Result<Version> {
        if !SUPPORTED.contains(&text) {
            return Err(Error::IncompatibleVersion {
                version: text.to_string(),
                reason: format!("weft supports {}", SUPPORTED.join(", ")),
            });
        }
        Version::parse(text).ok_or_else(|| Error::IncompatibleVersion {
            version: text.to_string(),
            reason: "not a major.minor.patch version".into(),
        })
    }

    /// Fails with code 1 unless this version is at least `min`, which `command` needs.
    pub fn require(self, min: Version, command: &str) -> Result<()> {
        if self < min {
            return Err(Error::IncompatibleVersion {
                version: self.to_string(),
                reason: format!("{command} needs cniVersion {min} or newer"),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_version_is_supported_and_ordered() {
        let parsed: Vec<Version> = SUPPORTED
            .iter()
            .map(|v| Version::supported(v).unwrap())
            .collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(parsed[4].to_string(), LATEST);
    }

    #[test]
    fn unsupported_versions_are_code_1() {
        for bad in ["0.2.0", "0.1.0", "2.0.0", "1.0", "", "abc", "1.0.0.0"] {
            let err = Version::supported(bad).unwrap_err();
            assert_eq!(err.code(), 1, "{bad}");
        }
    }

    #[test]
    fn require_gates_commands() {
        let v = Version::supported("0.3.1").unwrap();
        assert_eq!(v.require(Version::V0_4_0, "CHECK").unwrap_err().code(), 1);
        let v = Version::supported("1.1.0").unwrap();
        assert!(v.require(Version::V1_1_0, "GC").is_ok());
        let v = Version::supported("1.0.0").unwrap();
        assert!(v.require(Version::V1_1_0, "STATUS").is_err());
    }
}
