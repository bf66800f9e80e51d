//! Which partition table a disk has (GPT, MBR with logical partitions, or none), its partitions
//! in bytes, and what is wrong with them: partitions that overlap another or run past the end of
//! the disk are listed with the problem and not looked into.

use serde::Serialize;

use super::disk::Disk;
use super::gpt::{self, Gpt};
use super::mbr::{self, BootRecord, MbrPartition, SECTOR};

/// The kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TableKind {
    /// A GUID partition table (a protective MBR before it).
    Gpt,
    /// A DOS partition table, with logical partitions in extended ones.
    Mbr,
    /// No table: the disk is empty or holds one file system from its first byte.
    None,
}

impl TableKind {
    /// `gpt`, `mbr` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
            TableKind::None => "none",
        }
    }
}

/// What the partition's type field says, as an id and a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionType {
    /// The GPT type GUID, or the MBR type byte as `0x83`.
    pub id: String,
    /// A readable name (`EFI System`, `Linux filesystem`), or `unknown`.
    pub name: &'static str,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// 1-based: the GPT entry's index, or 1-4 primary and 5 on logical for MBR.
    pub number: u32,
    /// Offset on the disk, in bytes.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the entry's type field says.
    #[serde(rename = "type")]
    pub partition_type: PartitionType,
    /// The GPT partition name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The GPT unique partition GUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_uuid: Option<String>,
    /// The MBR active flag, or GPT's legacy BIOS bootable attribute.
    pub bootable: bool,
    /// What is wrong with the entry; such a partition is not looked into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// An MBR extended partition: a container of logical partitions, not a volume.
    #[serde(skip)]
    pub container: bool,
}

impl Partition {
    pub(crate) fn is_esp(&self) -> bool {
        self.partition_type.name == "EFI System"
    }
    pub(crate) fn is_bios_boot(&self) -> bool {
        self.partition_type.name == "BIOS boot"
    }
    /// Whether the entry may be read as a volume.
    pub fn trusted(&self) -> bool {
        self.problem.is_none() && !self.container && self.size > 0
    }
}

/// The disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// GPT, MBR or none.
    pub kind: TableKind,
    /// GPT disk GUID, or the MBR disk signature as 8 hex digits.
    pub disk_id: Option<String>,
    /// The entries, by partition number (MBR logical partitions after the primary ones).
    pub partitions: Vec<Partition>,
    /// Whether the first sector holds boot code (a BIOS boot loader) before the table.
    pub mbr_boot_code: bool,
    /// The GPT's logical block size, 512 otherwise.
    pub block_size: u64,
    /// What was odd about the table.
    pub notes: Vec<String>,
}

/// GPT partition type GUIDs and their names.
const GPT_TYPES: &[(&str, &str)] = &[
    ("c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "EFI System"),
    ("21686148-6449-6e6f-744e-656564454649", "BIOS boot"),
    ("0fc63daf-8483-4772-8e79-3d69d8477de4", "Linux filesystem"),
    ("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "Linux swap"),
    ("e6d6d379-f507-44c2-a23c-238f2a3df928", "Linux LVM"),
    ("a19d880f-05fc-4d3b-a006-743f0f84911e", "Linux RAID"),
    (
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        "Linux root (x86-64)",
    ),
    (
        "b921b045-1df0-41c3-af44-4c6f280d3fae",
        "Linux root (ARM-64)",
    ),
    ("44479540-f297-41b2-9af7-d131d5f0458a", "Linux root (x86)"),
    ("933ac7e1-2eb4-4f13-b844-0e14e2aef915", "Linux home"),
    (
        "bc13c2ff-59e6-4262-a352-b275fd6f7172",
        "Linux extended boot",
    ),
    ("8da63339-0007-60c0-c436-083ac8230908", "Linux reserved"),
    ("ca7d7ccb-63ed-4c53-861c-1742536059cc", "Linux LUKS"),
    (
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
        "Microsoft basic data",
    ),
    ("e3c9e316-0b5c-4db8-817d-f92df00215ae", "Microsoft reserved"),
    (
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac",
        "Windows recovery environment",
    ),
    (
        "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3",
        "Microsoft LDM metadata",
    ),
    ("af9b60a0-1431-4f62-bc68-3311714a69ad", "Microsoft LDM data"),
    (
        "024dee41-33e7-11d3-9d69-0008c781f39f",
        "MBR partition scheme",
    ),
    ("6a898cc3-1dd2-11b2-99a6-080020736631", "ZFS"),
    ("516e7cba-6ecf-11d6-8ff8-00022d09712b", "FreeBSD ZFS"),
    ("48465300-0000-11aa-aa11-00306543ecac", "Apple HFS/HFS+"),
    ("7c3457ef-0000-11aa-aa11-00306543ecac", "Apple APFS"),
];

/// MBR partition type bytes and their names.
const MBR_TYPES: &[(u8, &str)] = &[
    (0x01, "FAT12"),
    (0x04, "FAT16 <32M"),
    (0x05, "Extended"),
    (0x06, "FAT16"),
    (0x07, "HPFS/NTFS/exFAT"),
    (0x0b, "W95 FAT32"),
    (0x0c, "W95 FAT32 (LBA)"),
    (0x0e, "W95 FAT16 (LBA)"),
    (0x0f, "W95 Extended (LBA)"),
    (0x11, "Hidden FAT12"),
    (0x14, "Hidden FAT16 <32M"),
    (0x16, "Hidden FAT16"),
    (0x17, "Hidden HPFS/NTFS"),
    (0x1b, "Hidden W95 FAT32"),
    (0x1c, "Hidden W95 FAT32 (LBA)"),
    (0x1e, "Hidden W95 FAT16 (LBA)"),
    (0x27, "Hidden NTFS WinRE"),
    (0x42, "SFS (Windows dynamic disk)"),
    (0x82, "Linux swap"),
    (0x83, "Linux"),
    (0x85, "Linux extended"),
    (0x8e, "Linux LVM"),
    (0xa5, "FreeBSD"),
    (0xa6, "OpenBSD"),
    (0xee, "GPT protective"),
    (0xef, "EFI System"),
    (0xfd, "Linux raid autodetect"),
];

fn gpt_type(guid: &gpt::Guid) -> PartitionType {
    let id = guid.to_text();
    let name = GPT_TYPES
        .iter()
        .find(|(g, _)| *g == id)
        .map_or("unknown", |(_, n)| n);
    PartitionType { id, name }
}

fn mbr_type(ty: u8) -> PartitionType {
    PartitionType {
        id: format!("{ty:#04x}"),
        name: MBR_TYPES
            .iter()
            .find(|(t, _)| *t == ty)
            .map_or("unknown", |(_, n)| n),
    }
}

/// Whether `sector` is a FAT or NTFS boot sector (a file system from the first byte of the
/// disk), which can carry 0x55AA without being a partition table.
pub fn is_volume_boot_sector(sector: &[u8; 512]) -> bool {
    if &sector[3..11] == b"NTFS    " || &sector[3..11] == b"EXFAT   " {
        return true;
    }
    let bytes_per_sector = u16::from_le_bytes([sector[11], sector[12]]);
    let sectors_per_cluster = sector[13];
    let reserved = u16::from_le_bytes([sector[14], sector[15]]);
    let fats = sector[16];
    matches!(sector[0], 0xeb | 0xe9)
        && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sectors_per_cluster.is_power_of_two()
        && reserved > 0
        && matches!(fats, 1 | 2)
}

/// Reads the partition table. Problems with the table become notes, or problems of single
/// partitions; only a failure to read the disk itself is an error.
pub fn read_table(disk: &Disk) -> Table {
    let mut table = Table {
        kind: TableKind::None,
        disk_id: None,
        partitions: Vec::new(),
        mbr_boot_code: false,
        block_size: SECTOR,
        notes: Vec::new(),
    };
    let mut sector = [0u8; 512];
    if disk.read_at(&mut sector, 0).is_err() {
        return table;
    }
    let boot_record = BootRecord::parse(&sector, 0).ok();
    let protective = boot_record.as_ref().is_some_and(|r| {
        r.entries
            .iter()
            .any(|e| e.partition_type == mbr::TYPE_GPT_PROTECTIVE)
    });
    // A GPT: the signature in the second logical block (512 or 4096 bytes), or a protective
    // MBR whose primary header is gone (then the backup is looked for).
    let block_size = [512u64, 4096]
        .into_iter()
        .find(|&bs| gpt::has_signature(disk, 1, bs));
    if block_size.is_some() || protective {
        let bs = block_size.unwrap_or(512);
        table.kind = TableKind::Gpt;
        table.block_size = bs;
        table.mbr_boot_code = boot_record.is_some() && mbr::has_boot_code(&sector);
        if !protective {
            table.notes.push("the GPT has no protective MBR".into());
        } else if boot_record.as_ref().is_some_and(|r| {
            r.entries
                .iter()
                .any(|e| !e.is_empty() && e.partition_type != mbr::TYPE_GPT_PROTECTIVE)
        }) {
            table
                .notes
                .push("hybrid MBR: the MBR also lists partitions; the GPT is used".into());
        }
        match gpt::read(disk, bs) {
            Ok((gpt, note)) => {
                table.notes.extend(note);
                gpt_partitions(&gpt, &mut table);
            }
            Err(e) => table.notes.push(format!("the GPT cannot be used: {e}")),
        }
    } else if let Some(record) = boot_record.filter(|_| !is_volume_boot_sector(&sector)) {
        table.kind = TableKind::Mbr;
        table.mbr_boot_code = mbr::has_boot_code(&sector);
        table.disk_id = Some(format!("{:08x}", record.unique_mbr_disk_signature));
        mbr_partitions(disk, &record, &mut table);
    }
    check_placement(disk.size(), &mut table.partitions);
    table
}

fn gpt_partitions(gpt: &Gpt, table: &mut Table) {
    table.disk_id = Some(gpt.header.disk_guid.to_text());
    let bs = gpt.block_size;
    for e in &gpt.entries {
        let mut problem = None;
        let start = e.starting_lba.checked_mul(bs);
        let size = e
            .ending_lba
            .checked_sub(e.starting_lba)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(bs));
        if e.ending_lba < e.starting_lba {
            problem = Some(format!(
                "ends (LBA {}) before it starts (LBA {})",
                e.ending_lba, e.starting_lba
            ));
        } else if e.starting_lba < gpt.header.first_usable_lba
            || e.ending_lba > gpt.header.last_usable_lba
        {
            table.notes.push(format!(
                "partition {} lies outside the GPT's usable blocks",
                e.index
            ));
        }
        table.partitions.push(Partition {
            number: e.index,
            start: start.unwrap_or(u64::MAX),
            size: size.unwrap_or(0),
            partition_type: gpt_type(&e.partition_type_guid),
            name: Some(e.partition_name.clone()).filter(|n| !n.is_empty()),
            partition_uuid: Some(e.unique_partition_guid.to_text()),
            // Attribute bit 2: legacy BIOS bootable.
            bootable: e.attributes & 4 != 0,
            problem: problem.or_else(|| {
                (start.is_none() || size.is_none()).then(|| "offset overflows".to_string())
            }),
            container: false,
        });
    }
}

fn mbr_partitions(disk: &Disk, record: &BootRecord, table: &mut Table) {
    let mut found: Vec<MbrPartition> = Vec::new();
    let mut extended_seen = false;
    for (i, e) in record.entries.iter().enumerate() {
        if e.is_empty() {
            continue;
        }
        let p = MbrPartition {
            number: i as u32 + 1,
            partition_type: e.partition_type,
            bootable: e.boot_indicator == 0x80,
            start_lba: u64::from(e.starting_lba),
            sectors: u64::from(e.size_in_lba),
        };
        if e.is_extended() {
            if extended_seen {
                table.notes.push(format!(
                    "partition {} is a second extended partition; ignored",
                    i + 1
                ));
            } else {
                extended_seen = true;
                let (logical, notes) = mbr::read_logical(disk, p.start_lba, p.sectors);
                table.notes.extend(notes);
                found.push(p);
                found.extend(logical);
                continue;
            }
        }
        found.push(p);
    }
    found.sort_by_key(|p| p.number);
    for p in found {
        table.partitions.push(Partition {
            number: p.number,
            start: p.start_lba * SECTOR,
            size: p.sectors * SECTOR,
            partition_type: mbr_type(p.partition_type),
            name: None,
            partition_uuid: table
                .disk_id
                .as_ref()
                .map(|id| format!("{id}-{:02x}", p.number)),
            bootable: p.bootable,
            problem: None,
            container: matches!(p.partition_type, 0x05 | 0x0f | 0x85) && p.number <= 4,
        });
    }
}

/// Marks partitions that start at 0, run past the end of the disk, or overlap another
/// (an extended partition may contain its logical partitions).
fn check_placement(disk_size: u64, parts: &mut [Partition]) {
    for p in parts.iter_mut() {
        if p.problem.is_some() {
            continue;
        }
        if p.size == 0 {
            p.problem = Some("empty".into());
        } else if p.start == 0 {
            p.problem = Some("starts in the partition table's own sector".into());
        } else if p
            .start
            .checked_add(p.size)
            .is_none_or(|end| end > disk_size)
        {
            p.problem = Some(format!(
                "runs past the end of the disk ({} bytes at {} on a disk of {disk_size})",
                p.size, p.start
            ));
        }
    }
    // One sweep in start order: a partition that starts before the furthest end so far
    // overlaps the partition that reaches there (no quadratic pass over a 1 MiB entry array).
    let mut order: Vec<usize> = (0..parts.len()).filter(|&i| !parts[i].container).collect();
    order.sort_by_key(|&i| parts[i].start);
    let mut furthest: Option<(u64, usize)> = None;
    for i in order {
        let end = parts[i].start.saturating_add(parts[i].size);
        if let Some((f_end, f)) = furthest
            && parts[i].start < f_end
        {
            let (a, b) = (parts[f].number, parts[i].number);
            if parts[i].problem.is_none() {
                parts[i].problem = Some(format!("overlaps partition {a}"));
            }
            if parts[f].problem.is_none() {
                parts[f].problem = Some(format!("overlaps partition {b}"));
            }
        }
        if furthest.is_none_or(|(f_end, _)| end > f_end) {
            furthest = Some((end, i));
        }
    }
    // A logical partition must lie inside its container.
    if let Some(container) = parts.iter().find(|p| p.container).cloned() {
        let c_end = container.start.saturating_add(container.size);
        for p in parts
            .iter_mut()
            .filter(|p| p.number > 4 && p.problem.is_none())
        {
            if p.start < container.start || p.start.saturating_add(p.size) > c_end {
                p.problem = Some(format!(
                    "lies outside its extended partition {}",
                    container.number
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::disk::tests::mem_disk;
    use crate::inspect::gpt::tests::{LINUX_FS, write_gpt};
    use byteorder::{ByteOrder, LittleEndian};

    fn mbr(entries: &[(u8, u8, u32, u32)]) -> [u8; 512] {
        let mut s = [0u8; 512];
        for (i, (boot, ty, start, size)) in entries.iter().enumerate() {
            let e = &mut s[446 + 16 * i..462 + 16 * i];
            e[0] = *boot;
            e[4] = *ty;
            LittleEndian::write_u32(&mut e[8..12], *start);
            LittleEndian::write_u32(&mut e[12..16], *size);
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    #[test]
    fn mbr_partitions_past_the_end_and_overlapping_are_not_trusted() {
        let mut disk = vec![0u8; 8 << 20];
        let s = mbr(&[
            (0x80, 0x83, 2048, 4096),
            (0, 0x83, 4096, 2048),
            (0, 0x82, 8192, 100_000),
        ]);
        disk[..512].copy_from_slice(&s);
        let t = read_table(&mem_disk(disk));
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.partitions.len(), 3);
        assert!(t.partitions[0].bootable);
        assert_eq!(t.partitions[0].partition_type.name, "Linux");
        assert!(
            t.partitions[0]
                .problem
                .as_ref()
                .unwrap()
                .contains("overlaps partition 2")
        );
        assert!(
            t.partitions[1]
                .problem
                .as_ref()
                .unwrap()
                .contains("overlaps partition 1")
        );
        assert!(
            t.partitions[2]
                .problem
                .as_ref()
                .unwrap()
                .contains("past the end")
        );
        assert!(!t.mbr_boot_code);
    }

    #[test]
    fn gpt_with_protective_mbr() {
        let mut disk = vec![0u8; 4 << 20];
        write_gpt(&mut disk, &[(LINUX_FS, 2048, 4095, "root")]);
        disk[..512].copy_from_slice(&mbr(&[(0, 0xee, 1, 8191)]));
        let t = read_table(&mem_disk(disk));
        assert_eq!(t.kind, TableKind::Gpt);
        assert!(t.notes.is_empty(), "{:?}", t.notes);
        let p = &t.partitions[0];
        assert_eq!((p.number, p.start, p.size), (1, 2048 * 512, 2048 * 512));
        assert_eq!(p.partition_type.name, "Linux filesystem");
        assert!(p.trusted());
    }

    #[test]
    fn fat_boot_sector_is_not_a_table() {
        let mut s = [0u8; 512];
        s[0] = 0xeb;
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[13] = 4;
        s[14] = 4;
        s[16] = 2;
        s[510] = 0x55;
        s[511] = 0xaa;
        let mut disk = vec![0u8; 1 << 20];
        disk[..512].copy_from_slice(&s);
        assert_eq!(read_table(&mem_disk(disk)).kind, TableKind::None);
    }
}
