//! The master boot record: boot code, four partition entries and the 0x55AA signature in the
//! disk's first sector, and the chain of extended boot records (EBRs) that holds logical
//! partitions inside an extended partition. All fields are little-endian.

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{Error, Result};
use crate::limits::MAX_MBR_LOGICAL;

use super::disk::Disk;

pub(crate) const SECTOR: u64 = 512;
/// Bytes of boot code before the disk signature.
pub const BOOT_CODE_SIZE: usize = 440;
const ENTRIES_AT: usize = 446;
const ENTRY_SIZE: usize = 16;
/// `partition_type` of a GPT protective partition.
pub const TYPE_GPT_PROTECTIVE: u8 = 0xee;
/// `partition_type` of an EFI system partition.
pub const TYPE_EFI_SYSTEM: u8 = 0xef;

/// One 16-byte partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MbrEntry {
    pub boot_indicator: u8,
    pub partition_type: u8,
    pub starting_lba: u32,
    pub size_in_lba: u32,
}

impl MbrEntry {
    fn parse(b: &[u8]) -> MbrEntry {
        MbrEntry {
            boot_indicator: b[0],
            partition_type: b[4],
            starting_lba: LittleEndian::read_u32(&b[8..12]),
            size_in_lba: LittleEndian::read_u32(&b[12..16]),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.partition_type == 0 || self.size_in_lba == 0
    }

    pub fn is_extended(&self) -> bool {
        matches!(self.partition_type, 0x05 | 0x0f | 0x85)
    }
}

/// A parsed boot record (the MBR or one EBR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootRecord {
    pub unique_mbr_disk_signature: u32,
    pub entries: [MbrEntry; 4],
}

impl BootRecord {
    /// Parses a 512-byte boot record read at disk `offset`; the signature must be 0x55AA and
    /// every boot indicator 0x00 or 0x80 (anything else is boot code or a file system's boot
    /// sector, not a partition table).
    pub fn parse(sector: &[u8; 512], offset: u64) -> Result<BootRecord> {
        const S: &str = "mbr";
        if sector[510..512] != [0x55, 0xaa] {
            return Err(Error::malformed(S, offset + 510, "no 0x55AA signature"));
        }
        let mut entries = [MbrEntry::parse(&[0u8; 16]); 4];
        for (i, e) in entries.iter_mut().enumerate() {
            let at = ENTRIES_AT + i * ENTRY_SIZE;
            *e = MbrEntry::parse(&sector[at..at + ENTRY_SIZE]);
            if !matches!(e.boot_indicator, 0x00 | 0x80) {
                return Err(Error::malformed(
                    S,
                    offset + at as u64,
                    format!(
                        "boot indicator {:#04x} of entry {}",
                        e.boot_indicator,
                        i + 1
                    ),
                ));
            }
        }
        Ok(BootRecord {
            unique_mbr_disk_signature: LittleEndian::read_u32(&sector[440..444]),
            entries,
        })
    }
}

/// Whether the boot-code area of the first sector holds anything (a BIOS boot loader).
pub fn has_boot_code(sector: &[u8; 512]) -> bool {
    sector[..BOOT_CODE_SIZE].iter().any(|&b| b != 0)
}

/// A partition found in the MBR or the EBR chain, in sectors from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MbrPartition {
    /// 1-4 for primary partitions, 5 on for logical ones.
    pub number: u32,
    pub partition_type: u8,
    pub bootable: bool,
    pub start_lba: u64,
    pub sectors: u64,
}

/// Walks the EBR chain of the extended partition starting at `extended_lba` with
/// `extended_sectors` sectors. Returns the logical partitions, numbered from 5, and a note for
/// each problem that ended the walk early.
pub(crate) fn read_logical(
    disk: &Disk,
    extended_lba: u64,
    extended_sectors: u64,
) -> (Vec<MbrPartition>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let mut ebr_lba = extended_lba;
    let mut seen = std::collections::HashSet::new();
    let mut number = 5;
    loop {
        if out.len() >= MAX_MBR_LOGICAL {
            notes.push(format!(
                "more than {MAX_MBR_LOGICAL} logical partitions; the rest are ignored"
            ));
            break;
        }
        if !seen.insert(ebr_lba) {
            notes.push(format!("the EBR chain loops back to sector {ebr_lba}"));
            break;
        }
        let mut sector = [0u8; 512];
        let Some(offset) = ebr_lba.checked_mul(SECTOR) else {
            break;
        };
        if let Err(e) = disk.read_at(&mut sector, offset) {
            notes.push(format!("EBR at sector {ebr_lba} cannot be read: {e}"));
            break;
        }
        let ebr = match BootRecord::parse(&sector, offset) {
            Ok(r) => r,
            Err(e) => {
                notes.push(e.to_string());
                break;
            }
        };
        let logical = ebr.entries[0];
        if !logical.is_empty() {
            out.push(MbrPartition {
                number,
                partition_type: logical.partition_type,
                bootable: logical.boot_indicator == 0x80,
                start_lba: ebr_lba + u64::from(logical.starting_lba),
                sectors: u64::from(logical.size_in_lba),
            });
            number += 1;
        }
        let next = ebr.entries[1];
        if next.is_empty() || !next.is_extended() {
            break;
        }
        let rel = u64::from(next.starting_lba);
        if rel == 0 || rel >= extended_sectors {
            notes.push(format!(
                "EBR at sector {ebr_lba} links outside its extended partition"
            ));
            break;
        }
        ebr_lba = extended_lba + rel;
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::disk::tests::mem_disk;

    pub fn entry(boot: u8, ty: u8, start: u32, size: u32) -> [u8; 16] {
        let mut e = [0u8; 16];
        e[0] = boot;
        e[4] = ty;
        LittleEndian::write_u32(&mut e[8..12], start);
        LittleEndian::write_u32(&mut e[12..16], size);
        e
    }

    fn record(entries: &[[u8; 16]]) -> [u8; 512] {
        let mut s = [0u8; 512];
        for (i, e) in entries.iter().enumerate() {
            s[446 + 16 * i..462 + 16 * i].copy_from_slice(e);
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    #[test]
    fn parses_entries_and_refuses_boot_sectors() {
        let mut s = record(&[entry(0x80, 0x83, 2048, 4096), entry(0, 0x05, 8192, 8192)]);
        LittleEndian::write_u32(&mut s[440..444], 0xdead_beef);
        let r = BootRecord::parse(&s, 0).unwrap();
        assert_eq!(r.unique_mbr_disk_signature, 0xdead_beef);
        assert_eq!(r.entries[0].starting_lba, 2048);
        assert!(r.entries[1].is_extended());
        assert!(r.entries[2].is_empty());
        assert!(!has_boot_code(&s));
        s[0] = 0xeb;
        assert!(has_boot_code(&s));
        s[446] = 0x12;
        assert!(BootRecord::parse(&s, 0).is_err());
        s[446] = 0;
        s[511] = 0;
        assert!(BootRecord::parse(&s, 0).is_err());
    }

    #[test]
    fn walks_the_ebr_chain_and_stops_at_a_loop() {
        let mut disk = vec![0u8; 64 * 512];
        // Extended partition at sector 10, 50 sectors; two logical partitions.
        let ebr1 = record(&[entry(0, 0x83, 2, 8), entry(0, 0x05, 20, 20)]);
        let ebr2 = record(&[entry(0, 0x82, 2, 8), entry(0, 0x05, 0, 0)]);
        disk[10 * 512..11 * 512].copy_from_slice(&ebr1);
        disk[30 * 512..31 * 512].copy_from_slice(&ebr2);
        let (parts, notes) = read_logical(&mem_disk(disk.clone()), 10, 50);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].number, parts[0].start_lba), (5, 12));
        assert_eq!(
            (parts[1].number, parts[1].start_lba, parts[1].partition_type),
            (6, 32, 0x82)
        );
        // The second EBR links back to the first.
        let looping = record(&[entry(0, 0x82, 2, 8), entry(0, 0x05, 0, 0)]);
        let mut l = looping;
        l[446 + 16..462 + 16].copy_from_slice(&entry(0, 0x05, 20, 20));
        disk[30 * 512..31 * 512].copy_from_slice(&l);
        let ebr1_again = record(&[entry(0, 0x83, 2, 8), entry(0, 0x05, 20, 20)]);
        disk[10 * 512..11 * 512].copy_from_slice(&ebr1_again);
        // 30 -> 10 + 20 = 30 again.
        let (parts, notes) = read_logical(&mem_disk(disk), 10, 50);
        assert_eq!(parts.len(), 2);
        assert!(notes[0].contains("loops"), "{notes:?}");
    }
}
