//! The dynamic disk header (1024 bytes at the footer's `data_offset`), its parent locators, and
//! the block allocation table (BAT) it points to. All fields are big-endian.

use byteorder::{BigEndian, ByteOrder};

use super::footer::checksum;
use crate::error::{Error, Result};
use crate::limits::MAX_VHD_BLOCK_SIZE;

pub(crate) const HEADER_SIZE: usize = 1024;
pub(crate) const COOKIE: &[u8; 8] = b"cxsparse";
/// `header_version`: 1.0, the only version.
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// A BAT entry for a block that is not allocated.
pub const UNALLOCATED: u32 = u32::MAX;
/// The block size qemu-img, Hyper-V and Virtual PC write.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// Parent locator slots in the header.
pub const LOCATOR_COUNT: usize = 8;

/// One parent locator entry: where a differencing disk's parent path is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    /// `W2ru` (relative Windows path, UTF-16LE), `W2ku` (absolute), `Wi2r`/`Wi2k` (deprecated),
    /// `Mac `, `MacX` (file URL, UTF-8).
    pub platform_code: [u8; 4],
    /// platform_data_space: room reserved for the locator data (sectors, per the
    /// specification; some writers count bytes). Not used by ims.
    pub platform_data_space: u32,
    /// platform_data_length: bytes of locator data.
    pub platform_data_length: u32,
    /// platform_data_offset: where the locator data is in the file.
    pub platform_data_offset: u64,
}

/// The dynamic disk header's fields, named as the VHD specification names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// data_offset: the next structure; unused, always all ones.
    pub data_offset: u64,
    /// table_offset: where the BAT starts.
    pub table_offset: u64,
    /// header_version: [`HEADER_VERSION`].
    pub header_version: u32,
    /// max_table_entries: BAT entries, one per block of the disk.
    pub max_table_entries: u32,
    /// block_size: bytes of disk per block (a power of two; 2 MiB by default).
    pub block_size: u32,
    /// checksum: one's complement of the header's byte sum.
    pub checksum: u32,
    /// parent_unique_id: the parent footer's `unique_id` (differencing disks).
    pub parent_unique_id: [u8; 16],
    /// parent_time_stamp: the parent's modification time, in seconds since 2000-01-01 UTC.
    pub parent_time_stamp: u32,
    /// The parent's file name (UTF-16BE in the file).
    pub parent_unicode_name: String,
    /// parent_locator_entries: the eight locator slots.
    pub parent_locators: Vec<ParentLocator>,
}

impl DynamicHeader {
    /// Parses the header read at file `offset`.
    pub fn parse(buf: &[u8; HEADER_SIZE], offset: u64) -> Result<DynamicHeader> {
        const S: &str = "vhd dynamic header";
        if &buf[0..8] != COOKIE {
            return Err(Error::malformed(S, offset, "no 'cxsparse' cookie"));
        }
        let stored = BigEndian::read_u32(&buf[36..40]);
        let computed = checksum(buf, 36);
        if stored != computed {
            return Err(Error::malformed(
                S,
                offset,
                format!(
                    "checksum {stored:#010x} does not match the header's bytes ({computed:#010x})"
                ),
            ));
        }
        let block_size = BigEndian::read_u32(&buf[32..36]);
        if !block_size.is_power_of_two() || !(512..=MAX_VHD_BLOCK_SIZE).contains(&block_size) {
            return Err(Error::malformed(
                S,
                offset + 32,
                format!(
                    "block size {block_size} is not a power of two from 512 to {MAX_VHD_BLOCK_SIZE}"
                ),
            ));
        }
        let name_units: Vec<u16> = buf[64..576]
            .chunks_exact(2)
            .map(BigEndian::read_u16)
            .take_while(|&u| u != 0)
            .collect();
        let parent_locators = buf[576..576 + 24 * LOCATOR_COUNT]
            .chunks_exact(24)
            .map(|e| {
                let mut platform_code = [0u8; 4];
                platform_code.copy_from_slice(&e[0..4]);
                ParentLocator {
                    platform_code,
                    platform_data_space: BigEndian::read_u32(&e[4..8]),
                    platform_data_length: BigEndian::read_u32(&e[8..12]),
                    platform_data_offset: BigEndian::read_u64(&e[16..24]),
                }
            })
            .collect();
        let mut parent_unique_id = [0u8; 16];
        parent_unique_id.copy_from_slice(&buf[40..56]);
        Ok(DynamicHeader {
            data_offset: BigEndian::read_u64(&buf[8..16]),
            table_offset: BigEndian::read_u64(&buf[16..24]),
            header_version: BigEndian::read_u32(&buf[24..28]),
            max_table_entries: BigEndian::read_u32(&buf[28..32]),
            block_size,
            checksum: stored,
            parent_unique_id,
            parent_time_stamp: BigEndian::read_u32(&buf[56..60]),
            parent_unicode_name: String::from_utf16_lossy(&name_units),
            parent_locators,
        })
    }

    /// The 1024 bytes of this header, with the checksum computed. Parent fields are written only
    /// as far as ims writes them (no differencing disks): zero.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        BigEndian::write_u64(&mut b[8..16], self.data_offset);
        BigEndian::write_u64(&mut b[16..24], self.table_offset);
        BigEndian::write_u32(&mut b[24..28], self.header_version);
        BigEndian::write_u32(&mut b[28..32], self.max_table_entries);
        BigEndian::write_u32(&mut b[32..36], self.block_size);
        b[40..56].copy_from_slice(&self.parent_unique_id);
        BigEndian::write_u32(&mut b[56..60], self.parent_time_stamp);
        let sum = checksum(&b, 36);
        BigEndian::write_u32(&mut b[36..40], sum);
        b
    }

    /// Bytes of the sector bitmap in front of each block: one bit per sector, padded to a whole
    /// sector.
    pub fn bitmap_size(&self) -> u64 {
        (u64::from(self.block_size) / 512)
            .div_ceil(8)
            .next_multiple_of(512)
    }

    /// Bytes of the BAT on disk: 4 per entry, padded to a whole sector.
    pub fn bat_size(&self) -> u64 {
        (u64::from(self.max_table_entries) * 4).next_multiple_of(512)
    }
}

/// Decodes a parent locator's bytes as a path, by its platform code.
pub fn locator_path(locator: &ParentLocator, data: &[u8]) -> Option<String> {
    match &locator.platform_code {
        b"W2ru" | b"W2ku" => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        b"Wi2r" | b"Wi2k" | b"Mac " | b"MacX" => {
            let text = String::from_utf8_lossy(data);
            Some(text.trim_end_matches('\0').to_string())
        }
        _ => None,
    }
}

/// Whether sector `sector` of a block is marked present in its bitmap (most significant bit
/// first).
pub fn sector_present(bitmap: &[u8], sector: u64) -> bool {
    usize::try_from(sector / 8)
        .ok()
        .and_then(|i| bitmap.get(i))
        .is_some_and(|byte| byte & (0x80 >> (sector % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_reads_parent_fields() {
        let h = DynamicHeader {
            data_offset: u64::MAX,
            table_offset: 1536,
            header_version: HEADER_VERSION,
            max_table_entries: 5,
            block_size: DEFAULT_BLOCK_SIZE,
            checksum: 0,
            parent_unique_id: [0; 16],
            parent_time_stamp: 0,
            parent_unicode_name: String::new(),
            parent_locators: vec![
                ParentLocator {
                    platform_code: [0; 4],
                    platform_data_space: 0,
                    platform_data_length: 0,
                    platform_data_offset: 0
                };
                LOCATOR_COUNT
            ],
        };
        let mut bytes = h.to_bytes();
        let back = DynamicHeader::parse(&bytes, 512).unwrap();
        assert_eq!(
            DynamicHeader {
                checksum: 0,
                ..back
            },
            h
        );
        assert_eq!(h.bitmap_size(), 512);
        assert_eq!(h.bat_size(), 512);
        // A parent name and a relative locator, as a differencing disk carries them.
        for (i, u) in "base.vhd".encode_utf16().enumerate() {
            BigEndian::write_u16(&mut bytes[64 + 2 * i..], u);
        }
        bytes[576..580].copy_from_slice(b"W2ru");
        BigEndian::write_u32(&mut bytes[580..584], 1);
        BigEndian::write_u32(&mut bytes[584..588], 20);
        BigEndian::write_u64(&mut bytes[592..600], 4096);
        let sum = checksum(&bytes, 36);
        BigEndian::write_u32(&mut bytes[36..40], sum);
        let back = DynamicHeader::parse(&bytes, 512).unwrap();
        assert_eq!(back.parent_unicode_name, "base.vhd");
        assert_eq!(&back.parent_locators[0].platform_code, b"W2ru");
        assert_eq!(back.parent_locators[0].platform_data_offset, 4096);
        let path: Vec<u8> = ".\\base.vhd"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert_eq!(
            locator_path(&back.parent_locators[0], &path).unwrap(),
            ".\\base.vhd"
        );
    }

    #[test]
    fn bad_block_size_and_checksum_are_malformed() {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        BigEndian::write_u32(&mut b[32..36], 3 << 20);
        let sum = checksum(&b, 36);
        BigEndian::write_u32(&mut b[36..40], sum);
        assert!(
            DynamicHeader::parse(&b, 512)
                .unwrap_err()
                .to_string()
                .contains("block size")
        );
        b[100] = 1;
        assert!(
            DynamicHeader::parse(&b, 512)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
    }

    #[test]
    fn bitmap_bits_are_most_significant_first() {
        let bitmap = [0b1000_0001u8, 0];
        assert!(sector_present(&bitmap, 0));
        assert!(!sector_present(&bitmap, 1));
        assert!(sector_present(&bitmap, 7));
        assert!(!sector_present(&bitmap, 8));
        assert!(!sector_present(&bitmap, 1 << 40));
    }
}
