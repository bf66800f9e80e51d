//! The block allocation table: one 64-bit entry per payload block, with a sector bitmap entry
//! after every `chunk ratio` payload entries. An entry is a 3-bit state, 17 reserved bits and
//! the block's file offset in MiB (44 bits).

use crate::error::{Error, Result};

/// Payload block states.
pub const PAYLOAD_BLOCK_NOT_PRESENT: u8 = 0;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_UNDEFINED: u8 = 1;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_ZERO: u8 = 2;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_UNMAPPED: u8 = 3;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_FULLY_PRESENT: u8 = 6;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u8 = 7;
/// Sector bitmap block states.
pub const SB_BLOCK_NOT_PRESENT: u8 = 0;
/// See [`SB_BLOCK_NOT_PRESENT`].
pub const SB_BLOCK_PRESENT: u8 = 6;
/// Bytes of a sector bitmap block.
pub const SECTOR_BITMAP_BLOCK: u64 = 1 << 20;
/// Sectors one sector bitmap block describes: 2^23, a bit each.
pub const SECTORS_PER_BITMAP: u64 = 1 << 23;
const RESERVED_MASK: u64 = 0x000f_fff8;

/// One BAT entry, split into its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatEntry {
    /// `State` (bits 0-2).
    pub state: u8,
    /// `FileOffsetMB` (bits 20-63).
    pub file_offset_mb: u64,
}

impl BatEntry {
    /// Splits `raw`; reserved bits must be zero.
    pub fn parse(raw: u64, at: u64) -> Result<BatEntry> {
        if raw & RESERVED_MASK != 0 {
            return Err(Error::malformed(
                "vhdx BAT",
                at,
                format!("entry {raw:#018x} has reserved bits set"),
            ));
        }
        Ok(BatEntry {
            state: (raw & 7) as u8,
            file_offset_mb: raw >> 20,
        })
    }

    /// The entry's 64 bits.
    pub fn to_raw(self) -> u64 {
        (self.file_offset_mb << 20) | u64::from(self.state)
    }

    /// Where the block is in the file.
    pub fn file_offset(self) -> u64 {
        self.file_offset_mb << 20
    }
}

/// The BAT's shape for a disk: how many payload and sector bitmap entries, and how they
/// interleave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatGeometry {
    /// Bytes per payload block.
    pub block_size: u64,
    /// Payload blocks per sector bitmap block (per chunk).
    pub chunk_ratio: u64,
    /// Payload blocks covering the disk.
    pub data_blocks: u64,
    /// Sector bitmap blocks covering them.
    pub bitmap_blocks: u64,
    /// Entries the BAT holds: up to the last payload entry (fixed and dynamic disks) or the
    /// last sector bitmap entry (differencing disks).
    pub entries: u64,
}

impl BatGeometry {
    /// The geometry of a disk of `size` bytes in blocks of `block_size` bytes with sectors of
    /// `sector_size` bytes (both already checked: powers of two, block ≤ 256 MiB, sector 512 or
    /// 4096, so the chunk ratio is a whole number from 16 to 32768).
    pub fn new(size: u64, block_size: u32, sector_size: u32, differencing: bool) -> BatGeometry {
        let block_size = u64::from(block_size);
        let chunk_ratio = (SECTORS_PER_BITMAP * u64::from(sector_size)) / block_size;
        let data_blocks = size.div_ceil(block_size);
        let bitmap_blocks = data_blocks.div_ceil(chunk_ratio);
        let entries = if differencing {
            bitmap_blocks * (chunk_ratio + 1)
        } else if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
        BatGeometry {
            block_size,
            chunk_ratio,
            data_blocks,
            bitmap_blocks,
            entries,
        }
    }

    /// The BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// The BAT index of the sector bitmap entry of the chunk that holds payload block `block`.
    pub fn bitmap_index(&self, block: u64) -> u64 {
        (block / self.chunk_ratio) * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// Whether BAT index `index` is a sector bitmap entry.
    pub fn is_bitmap_index(&self, index: u64) -> bool {
        index % (self.chunk_ratio + 1) == self.chunk_ratio
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_into_state_and_offset() {
        let e = BatEntry::parse(0x0080_0006, 0).unwrap();
        assert_eq!(e.state, PAYLOAD_BLOCK_FULLY_PRESENT);
        assert_eq!(e.file_offset_mb, 8);
        assert_eq!(e.file_offset(), 8 << 20);
        assert_eq!(e.to_raw(), 0x0080_0006);
        let e = BatEntry::parse(0x0080_0016, 0x20_0008).unwrap_err();
        assert!(e.to_string().contains("0x200008"), "{e}");
        assert!(e.to_string().contains("reserved"), "{e}");
    }

    #[test]
    fn the_chunk_ratio_interleaves_bitmap_entries() {
        // qemu's 24 MiB disk in 8 MiB blocks of 512-byte sectors: 512 blocks a chunk.
        let g = BatGeometry::new(24 << 20, 8 << 20, 512, false);
        assert_eq!(
            (g.chunk_ratio, g.data_blocks, g.bitmap_blocks, g.entries),
            (512, 3, 1, 3)
        );
        assert_eq!(BatGeometry::new(24 << 20, 8 << 20, 512, true).entries, 513);
        // 1 MiB blocks of 512-byte sectors: 4096 a chunk; 4096 B sectors and 256 MiB blocks: 128.
        assert_eq!(BatGeometry::new(1, 1 << 20, 512, false).chunk_ratio, 4096);
        assert_eq!(BatGeometry::new(1, 256 << 20, 4096, false).chunk_ratio, 128);
        // Past one chunk: a bitmap entry sits between payload entries 4095 and 4096.
        let g = BatGeometry::new(4097 << 20, 1 << 20, 512, false);
        assert_eq!(g.entries, 4098);
        assert_eq!(g.payload_index(4095), 4095);
        assert_eq!(g.bitmap_index(4095), 4096);
        assert!(g.is_bitmap_index(4096));
        assert_eq!(g.payload_index(4096), 4097);
        assert_eq!(BatGeometry::new(0, 1 << 20, 512, false).entries, 0);
    }
}
