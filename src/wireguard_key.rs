//! WireGuard keys as Flannel (and `wg`) write them: 32 bytes in standard base64 with padding,
//! 44 characters. Public keys travel in leases (`BackendData.PublicKey`); a pre-shared key sits
//! in the network config (`Backend.PSK`); the private key stays in a file on the node. Pure
//! parsing, no I/O: the etcd side and the data path share it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Bytes of a Curve25519 key or a pre-shared key.
pub const KEY_LEN: usize = 32;

/// Why a text is not a WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not standard base64 with padding.
    #[error("is not base64")]
    NotBase64,
    /// Decodes to the wrong number of bytes.
    #[error("decodes to {0} bytes, a WireGuard key has 32")]
    WrongLength(usize),
}

/// A public key (or any key whose value may be shown): printed as base64, as `wg show` does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireGuardKey([u8; KEY_LEN]);

impl WireGuardKey {
    /// Parses 44 characters of standard base64 (as Go's `wgtypes.ParseKey` of a lease value).
    pub fn parse(text: &str) -> Result<WireGuardKey, KeyError> {
        decode(text).map(WireGuardKey)
    }

    /// The key's bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> WireGuardKey {
        WireGuardKey(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Display for WireGuardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl std::fmt::Debug for WireGuardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireGuardKey({self})")
    }
}

/// A key that must never reach a log: the node's private key, the cluster's pre-shared key.
/// No `Display`; `Debug` prints only that a key is there.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Parses 44 characters of standard base64; surrounding ASCII whitespace (a key file's
    /// trailing newline, which Go's decoder skips) is ignored.
    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        decode(text.trim_ascii()).map(SecretKey)
    }

    /// The key's bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        SecretKey(bytes)
    }

    /// The key's bytes, for the cipher.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key in base64, for the key file only.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

fn decode(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let bytes = STANDARD.decode(text).map_err(|_| KeyError::NotBase64)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_and_print_as_wg_writes_them() {
        let text = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let key = WireGuardKey::parse(text).unwrap();
        assert_eq!(key.to_string(), text);
        assert_eq!(
            SecretKey::parse(&format!("{text}\n")).unwrap().to_base64(),
            text
        );
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        assert_eq!(WireGuardKey::parse("not a key"), Err(KeyError::NotBase64));
        assert_eq!(WireGuardKey::parse(""), Err(KeyError::WrongLength(0)));
        assert_eq!(WireGuardKey::parse("AAAA"), Err(KeyError::WrongLength(3)));
        // 33 bytes.
        assert_eq!(
            WireGuardKey::parse(&STANDARD.encode([7u8; 33])),
            Err(KeyError::WrongLength(33))
        );
        // Unpadded and URL-safe alphabets are not what wg writes.
        assert_eq!(
            WireGuardKey::parse("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg"),
            Err(KeyError::NotBase64)
        );
        assert_eq!(
            WireGuardKey::parse("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp_Dg="),
            Err(KeyError::NotBase64)
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = SecretKey::from_bytes([9; KEY_LEN]);
        assert_eq!(format!("{secret:?}"), "SecretKey(..)");
    }
}
