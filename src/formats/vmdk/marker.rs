//! The markers of a streamOptimized VMDK: each grain and each metadata block (grain table,
//! grain directory, footer, end of stream) opens with one, at the start of a sector. See
//! `formats/vmdk.md`.

use byteorder::{ByteOrder, LittleEndian};

/// A marker fills one sector.
const SECTOR: usize = 512;

/// The type of a metadata marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MarkerType {
    /// 0: the stream ends here.
    EndOfStream,
    /// 1: a grain table follows.
    GrainTable,
    /// 2: the grain directory follows.
    GrainDirectory,
    /// 3: the footer (a copy of the header) follows.
    Footer,
    /// A type the format does not define.
    Other(u32),
}

impl MarkerType {
    pub(crate) fn code(self) -> u32 {
        match self {
            MarkerType::EndOfStream => 0,
            MarkerType::GrainTable => 1,
            MarkerType::GrainDirectory => 2,
            MarkerType::Footer => 3,
            MarkerType::Other(c) => c,
        }
    }

    fn from_code(c: u32) -> MarkerType {
        match c {
            0 => MarkerType::EndOfStream,
            1 => MarkerType::GrainTable,
            2 => MarkerType::GrainDirectory,
            3 => MarkerType::Footer,
            other => MarkerType::Other(other),
        }
    }
}

/// A marker at the start of a sector: `val` (u64), `size` (u32), then for metadata `type` (u32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Marker {
    /// A compressed grain of `size` bytes for the sectors from `lba`; the data follows the head.
    Grain {
        /// The grain's first sector in the virtual disk.
        lba: u64,
        /// Bytes of compressed data.
        size: u32,
    },
    /// Metadata of `num_sectors` sectors follows this marker's sector.
    Metadata {
        /// Sectors of metadata after the marker.
        num_sectors: u64,
        /// What the metadata is.
        kind: MarkerType,
    },
}

impl Marker {
    /// Parses the marker at the start of `sector` (at least 16 bytes).
    pub fn parse(sector: &[u8]) -> Option<Marker> {
        let val = LittleEndian::read_u64(sector.get(0..8)?);
        let size = LittleEndian::read_u32(sector.get(8..12)?);
        let kind = LittleEndian::read_u32(sector.get(12..16)?);
        Some(if size != 0 {
            Marker::Grain { lba: val, size }
        } else {
            Marker::Metadata {
                num_sectors: val,
                kind: MarkerType::from_code(kind),
            }
        })
    }

    /// A metadata marker's sector.
    pub fn metadata_sector(num_sectors: u64, kind: MarkerType) -> [u8; SECTOR] {
        let mut b = [0u8; SECTOR];
        LittleEndian::write_u64(&mut b[0..8], num_sectors);
        LittleEndian::write_u32(&mut b[12..16], kind.code());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grain_and_metadata_markers() {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&128u64.to_le_bytes());
        b[8..12].copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(
            Marker::parse(&b),
            Some(Marker::Grain { lba: 128, size: 77 })
        );
        let footer = Marker::metadata_sector(1, MarkerType::Footer);
        assert_eq!(
            Marker::parse(&footer),
            Some(Marker::Metadata {
                num_sectors: 1,
                kind: MarkerType::Footer
            })
        );
        b[8..12].fill(0);
        b[12..16].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            Marker::parse(&b),
            Some(Marker::Metadata {
                num_sectors: 128,
                kind: MarkerType::Other(9)
            })
        );
        assert_eq!(MarkerType::Other(9).code(), 9);
        assert_eq!(Marker::parse(&b[..15]), None);
    }
}
