//! The region table: two 64 KiB copies, at 192 KiB and 256 KiB, each checksummed with
//! CRC-32C, listing where the file's regions are (the BAT and the metadata region, each by its
//! GUID). Little-endian.

use byteorder::{ByteOrder, LittleEndian};
use uuid::Uuid;

use super::header::MIB;
use super::{BAT_REGION, METADATA_REGION, checksum, guid, put_guid};
use crate::error::{Error, Result};

/// `Signature`: "regi".
pub const SIGNATURE: &[u8; 4] = b"regi";
/// Bytes of a region table.
pub const TABLE_SIZE: usize = 64 << 10;
/// Where the two copies are.
pub const TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
/// The most entries a table may hold (`EntryCount`).
pub const MAX_ENTRIES: u32 = 2047;
const ENTRY_SIZE: usize = 32;
const CHECKSUM_AT: usize = 4;

/// One region table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    /// `Guid`: which region.
    pub guid: Uuid,
    /// `FileOffset`: where it is, a multiple of 1 MiB, at least 1 MiB.
    pub file_offset: u64,
    /// `Length`: its bytes, a multiple of 1 MiB.
    pub length: u32,
    /// `Required`: bit 0 set when a reader must know the region to open the file.
    pub required: bool,
}

impl RegionEntry {
    /// One past the region's last byte.
    pub fn end(&self) -> u64 {
        self.file_offset + u64::from(self.length)
    }
}

/// A region table's entries and the two regions every VHDX has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    /// The entries, in the table's order.
    pub entries: Vec<RegionEntry>,
    /// The BAT region.
    pub bat: RegionEntry,
    /// The metadata region.
    pub metadata: RegionEntry,
}

impl RegionTable {
    /// Parses and checks the copy at file offset `at` from its 64 KiB: signature, checksum,
    /// entry count, each entry's alignment and reserved bits, no entry twice, every required
    /// region known, the BAT and metadata regions present, no two regions overlapping.
    pub fn parse(buf: &[u8], at: u64) -> Result<RegionTable> {
        let bad =
            |off: u64, problem: String| Error::malformed("vhdx region table", at + off, problem);
        let Some(buf) = buf.get(..TABLE_SIZE) else {
            return Err(Error::truncated(
                "vhdx region table",
                at,
                TABLE_SIZE as u64,
                buf.len() as u64,
            ));
        };
        if &buf[..4] != SIGNATURE {
            return Err(bad(0, "no \"regi\" signature".into()));
        }
        let stored = LittleEndian::read_u32(&buf[CHECKSUM_AT..]);
        let computed = checksum(buf, CHECKSUM_AT);
        if stored != computed {
            return Err(bad(
                4,
                format!("checksum {stored:#010x}, the table's CRC-32C is {computed:#010x}"),
            ));
        }
        let count = LittleEndian::read_u32(&buf[8..]);
        if count > MAX_ENTRIES {
            return Err(bad(8, format!("{count} entries, more than {MAX_ENTRIES}")));
        }
        let mut entries: Vec<RegionEntry> = Vec::new();
        for i in 0..count as usize {
            let off = 16 + i * ENTRY_SIZE;
            let e = &buf[off..off + ENTRY_SIZE];
            let required = LittleEndian::read_u32(&e[28..]);
            let entry = RegionEntry {
                guid: guid(&e[..16]),
                file_offset: LittleEndian::read_u64(&e[16..]),
                length: LittleEndian::read_u32(&e[24..]),
                required: required & 1 == 1,
            };
            let off = off as u64;
            if required & !1 != 0 {
                return Err(bad(off + 28, format!("reserved bits set in {required:#x}")));
            }
            if entry.file_offset < MIB
                || !entry.file_offset.is_multiple_of(MIB)
                || !u64::from(entry.length).is_multiple_of(MIB)
            {
                return Err(bad(
                    off + 16,
                    format!(
                        "region {} at {:#x} of {:#x} bytes is not on 1 MiB boundaries past the \
                         header section",
                        entry.guid, entry.file_offset, entry.length
                    ),
                ));
            }
            if entries.iter().any(|x| x.guid == entry.guid) {
                return Err(bad(off, format!("region {} is listed twice", entry.guid)));
            }
            let known = entry.guid == BAT_REGION || entry.guid == METADATA_REGION;
            if entry.required && !known {
                return Err(Error::unsupported(format!(
                    "vhdx region {} (required, unknown to ims)",
                    entry.guid
                )));
            }
            if let Some(other) = entries
                .iter()
                .find(|x| x.file_offset < entry.end() && entry.file_offset < x.end())
            {
                return Err(bad(
                    off + 16,
                    format!(
                        "region {} at {:#x} overlaps region {} at {:#x}",
                        entry.guid, entry.file_offset, other.guid, other.file_offset
                    ),
                ));
            }
            entries.push(entry);
        }
        let find = |id: Uuid, name: &str| {
            entries
                .iter()
                .find(|e| e.guid == id)
                .copied()
                .ok_or_else(|| bad(8, format!("no {name} region")))
        };
        let bat = find(BAT_REGION, "BAT")?;
        let metadata = find(METADATA_REGION, "metadata")?;
        if metadata.length == 0 || bat.length == 0 {
            return Err(bad(8, "an empty BAT or metadata region".into()));
        }
        Ok(RegionTable {
            entries,
            bat,
            metadata,
        })
    }

    /// The table's 64 KiB, checksummed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; TABLE_SIZE];
        b[..4].copy_from_slice(SIGNATURE);
        LittleEndian::write_u32(&mut b[8..], self.entries.len() as u32);
        for (i, e) in self.entries.iter().enumerate() {
            let o = 16 + i * ENTRY_SIZE;
            put_guid(&mut b[o..o + 16], &e.guid);
            LittleEndian::write_u64(&mut b[o + 16..], e.file_offset);
            LittleEndian::write_u32(&mut b[o + 24..], e.length);
            LittleEndian::write_u32(&mut b[o + 28..], u32::from(e.required));
        }
        let sum = checksum(&b, CHECKSUM_AT);
        LittleEndian::write_u32(&mut b[CHECKSUM_AT..], sum);
        b
    }

    /// A table of the two regions.
    pub fn new(bat: RegionEntry, metadata: RegionEntry) -> RegionTable {
        RegionTable {
            entries: vec![bat, metadata],
            bat,
            metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RegionTable {
        let e = |guid, mib: u64| RegionEntry {
            guid,
            file_offset: mib << 20,
            length: 1 << 20,
            required: true,
        };
        RegionTable::new(e(BAT_REGION, 2), e(METADATA_REGION, 3))
    }

    fn reparse(b: &mut [u8]) -> Result<RegionTable> {
        b[4..8].fill(0);
        let sum = checksum(b, 4);
        LittleEndian::write_u32(&mut b[4..], sum);
        RegionTable::parse(b, TABLE_OFFSETS[0])
    }

    #[test]
    fn the_bat_guid_is_stored_in_its_binary_form() {
        let b = sample().to_bytes();
        assert_eq!(&b[..4], b"regi");
        assert_eq!(b[8], 2);
        // 2DC27766-F623-4200-9D64-115E9BFD4A08
        assert_eq!(
            &b[16..32],
            &[
                0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
                0x4a, 0x08
            ]
        );
        assert_eq!(&b[32..40], &[0, 0, 0x20, 0, 0, 0, 0, 0]);
        assert_eq!(RegionTable::parse(&b, 0).unwrap(), sample());
    }

    #[test]
    fn bad_tables_are_refused() {
        let base = sample().to_bytes();
        let mut b = base.clone();
        b[1000] = 1;
        assert!(
            RegionTable::parse(&b, 0)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        // Overlapping regions.
        let mut b = base.clone();
        LittleEndian::write_u64(&mut b[16 + 32 + 16..], 2 << 20);
        let e = reparse(&mut b).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        // Unaligned.
        let mut b = base.clone();
        LittleEndian::write_u64(&mut b[32..], (2 << 20) + 512);
        assert!(reparse(&mut b).unwrap_err().to_string().contains("1 MiB"));
        // Reserved bits.
        let mut b = base.clone();
        b[16 + 28] = 3;
        assert!(
            reparse(&mut b)
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
        // Too many entries.
        let mut b = base.clone();
        LittleEndian::write_u32(&mut b[8..], 2048);
        assert!(reparse(&mut b).unwrap_err().to_string().contains("2047"));
        // A required region ims does not know.
        let mut b = base.clone();
        b[16 + 32] ^= 0xff;
        assert_eq!(reparse(&mut b).unwrap_err().kind(), "unsupported");
        // The same region twice.
        let mut b = base.clone();
        let first: Vec<u8> = b[16..32].to_vec();
        b[48..64].copy_from_slice(&first);
        LittleEndian::write_u64(&mut b[64..], 3 << 20);
        assert!(reparse(&mut b).unwrap_err().to_string().contains("twice"));
        // No metadata region.
        let mut b = base;
        LittleEndian::write_u32(&mut b[8..], 1);
        assert!(
            reparse(&mut b)
                .unwrap_err()
                .to_string()
                .contains("no metadata")
        );
    }
}
