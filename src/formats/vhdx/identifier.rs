//! The file type identifier: the first structure of a VHDX, at offset 0 of the 64 KiB it owns.
//! An 8-byte signature, then the name of the program that created the file (UTF-16LE, up to
//! 256 characters), informational only.

use crate::error::{Error, Result};

/// `Signature`: "vhdxfile".
pub const SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Bytes the identifier's fields take (the rest of its 64 KiB is reserved).
pub const IDENTIFIER_SIZE: usize = 8 + 512;

/// The file type identifier's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentifier {
    /// `Creator`: the program that made the file, decoded up to its first NUL.
    pub creator: String,
}

impl FileIdentifier {
    /// Parses the identifier from the first [`IDENTIFIER_SIZE`] bytes of the file.
    pub fn parse(buf: &[u8]) -> Result<FileIdentifier> {
        if buf.get(..8) != Some(&SIGNATURE[..]) {
            return Err(Error::malformed(
                "vhdx file type identifier",
                0,
                "no \"vhdxfile\" signature",
            ));
        }
        let creator = buf.get(8..IDENTIFIER_SIZE).unwrap_or_default();
        let units: Vec<u16> = creator
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Ok(FileIdentifier {
            creator: String::from_utf16_lossy(&units),
        })
    }

    /// The identifier's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; IDENTIFIER_SIZE];
        out[..8].copy_from_slice(SIGNATURE);
        for (i, unit) in self.creator.encode_utf16().take(255).enumerate() {
            out[8 + 2 * i..10 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_round_trips_and_the_signature_is_required() {
        let id = FileIdentifier {
            creator: "ims 0.1".into(),
        };
        let b = id.to_bytes();
        assert_eq!(&b[..8], b"vhdxfile");
        assert_eq!(&b[8..12], &[b'i', 0, b'm', 0]);
        assert_eq!(FileIdentifier::parse(&b).unwrap(), id);
        let mut bad = b.clone();
        bad[0] = b'V';
        assert_eq!(FileIdentifier::parse(&bad).unwrap_err().kind(), "malformed");
        assert!(FileIdentifier::parse(&b[..4]).is_err());
    }
}
