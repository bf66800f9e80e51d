//! The GUID partition table (UEFI specification, chapter 5): a header in the second logical
//! block with a CRC32 over itself, an array of partition entries with a CRC32 kept in the
//! header, and a backup header in the disk's last block pointing at a backup array. All fields
//! are little-endian; GUIDs are stored mixed-endian (the first three fields little-endian).

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{Error, Result};
use crate::limits::MAX_GPT_ARRAY_BYTES;

use super::disk::Disk;

pub(crate) const SIGNATURE: &[u8; 8] = b"EFI PART";
pub(crate) const MIN_HEADER_SIZE: u32 = 92;
pub(crate) const MIN_ENTRY_SIZE: u32 = 128;

pub(crate) const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A GUID as the 16 bytes stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// All zeros: an unused entry's type, or no GUID.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The textual form, lower case (`c12a7328-f81f-11d2-ba4b-00a0c93ec93b`).
    pub fn to_text(&self) -> String {
        let b = &self.0;
        format!(
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            LittleEndian::read_u32(&b[0..4]),
            LittleEndian::read_u16(&b[4..6]),
            LittleEndian::read_u16(&b[6..8]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

/// The GPT header's fields, named as the UEFI specification names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GptHeader {
    pub revision: u32,
    pub header_size: u32,
    pub header_crc32: u32,
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Guid,
    pub partition_entry_lba: u64,
    pub number_of_partition_entries: u32,
    pub size_of_partition_entry: u32,
    pub partition_entry_array_crc32: u32,
}

impl GptHeader {
    /// Parses the header in `block` (one logical block) read at disk `offset`: signature,
    /// header size and CRC, and the entry array's size.
    pub fn parse(block: &[u8], offset: u64) -> Result<GptHeader> {
        const S: &str = "gpt header";
        if block.len() < 512 || &block[0..8] != SIGNATURE {
            return Err(Error::malformed(S, offset, "no 'EFI PART' signature"));
        }
        let header_size = LittleEndian::read_u32(&block[12..16]);
        let Some(header_len) = usize::try_from(header_size)
            .ok()
            .filter(|&n| header_size >= MIN_HEADER_SIZE && n <= block.len())
        else {
            return Err(Error::malformed(
                S,
                offset + 12,
                format!("header size {header_size}"),
            ));
        };
        let stored = LittleEndian::read_u32(&block[16..20]);
        let mut copy = block[..header_len].to_vec();
        copy[16..20].fill(0);
        let computed = CRC32.checksum(&copy);
        if stored != computed {
            return Err(Error::malformed(
                S,
                offset + 16,
                format!("header CRC32 {stored:#010x} does not match its bytes ({computed:#010x})"),
            ));
        }
        let mut disk_guid = Guid::default();
        disk_guid.0.copy_from_slice(&block[56..72]);
        let h = GptHeader {
            revision: LittleEndian::read_u32(&block[8..12]),
            header_size,
            header_crc32: stored,
            my_lba: LittleEndian::read_u64(&block[24..32]),
            alternate_lba: LittleEndian::read_u64(&block[32..40]),
            first_usable_lba: LittleEndian::read_u64(&block[40..48]),
            last_usable_lba: LittleEndian::read_u64(&block[48..56]),
            disk_guid,
            partition_entry_lba: LittleEndian::read_u64(&block[72..80]),
            number_of_partition_entries: LittleEndian::read_u32(&block[80..84]),
            size_of_partition_entry: LittleEndian::read_u32(&block[84..88]),
            partition_entry_array_crc32: LittleEndian::read_u32(&block[88..92]),
        };
        let size = h.size_of_partition_entry;
        if size < MIN_ENTRY_SIZE || !size.is_power_of_two() {
            return Err(Error::malformed(
                S,
                offset + 84,
                format!("partition entry size {size}"),
            ));
        }
        if h.array_bytes() > MAX_GPT_ARRAY_BYTES {
            return Err(Error::limit(
                S,
                offset + 80,
                format!(
                    "{} entries of {size} bytes (more than {MAX_GPT_ARRAY_BYTES} bytes)",
                    h.number_of_partition_entries
                ),
            ));
        }
        Ok(h)
    }

    /// Bytes of the partition entry array.
    pub fn array_bytes(&self) -> u64 {
        u64::from(self.number_of_partition_entries) * u64::from(self.size_of_partition_entry)
    }
}

/// One partition entry, with the name decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GptEntry {
    /// 1-based index in the array.
    pub index: u32,
    pub partition_type_guid: Guid,
    pub unique_partition_guid: Guid,
    pub starting_lba: u64,
    pub ending_lba: u64,
    pub attributes: u64,
    pub partition_name: String,
}

/// The table read from one header and its array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gpt {
    pub header: GptHeader,
    pub entries: Vec<GptEntry>,
    /// The logical block size the table was found with.
    pub block_size: u64,
}

/// Reads the header at `lba` and its entry array, checking both CRCs.
pub(crate) fn read_at_lba(disk: &Disk, lba: u64, block_size: u64) -> Result<Gpt> {
    let offset = lba
        .checked_mul(block_size)
        .ok_or_else(|| Error::malformed("gpt header", lba, "lba overflows"))?;
    let mut block = vec![0u8; block_size as usize];
    disk.read_at(&mut block, offset)?;
    let header = GptHeader::parse(&block, offset)?;
    if header.my_lba != lba {
        return Err(Error::malformed(
            "gpt header",
            offset + 24,
            format!("my_lba {} but the header is at {lba}", header.my_lba),
        ));
    }
    let array_at = header
        .partition_entry_lba
        .checked_mul(block_size)
        .ok_or_else(|| Error::malformed("gpt header", offset + 72, "entry array lba overflows"))?;
    let len = header.array_bytes();
    if array_at
        .checked_add(len)
        .is_none_or(|end| end > disk.size())
    {
        return Err(Error::truncated(
            "gpt partition entry array",
            array_at,
            len,
            disk.size().saturating_sub(array_at),
        ));
    }
    let mut array = vec![0u8; crate::block::usize_len(len)?];
    disk.read_at(&mut array, array_at)?;
    let computed = CRC32.checksum(&array);
    if computed != header.partition_entry_array_crc32 {
        return Err(Error::malformed(
            "gpt partition entry array",
            array_at,
            format!(
                "CRC32 {computed:#010x} does not match the header's {:#010x}",
                header.partition_entry_array_crc32
            ),
        ));
    }
    let mut entries = Vec::new();
    for (i, e) in array
        .chunks_exact(crate::block::usize_len(u64::from(
            header.size_of_partition_entry,
        ))?)
        .enumerate()
    {
        let mut partition_type_guid = Guid::default();
        partition_type_guid.0.copy_from_slice(&e[0..16]);
        if partition_type_guid.is_zero() {
            continue;
        }
        let mut unique_partition_guid = Guid::default();
        unique_partition_guid.0.copy_from_slice(&e[16..32]);
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(LittleEndian::read_u16)
            .take_while(|&c| c != 0)
            .collect();
        entries.push(GptEntry {
            index: i as u32 + 1,
            partition_type_guid,
            unique_partition_guid,
            starting_lba: LittleEndian::read_u64(&e[32..40]),
            ending_lba: LittleEndian::read_u64(&e[40..48]),
            attributes: LittleEndian::read_u64(&e[48..56]),
            partition_name: String::from_utf16_lossy(&name),
        });
    }
    Ok(Gpt {
        header,
        entries,
        block_size,
    })
}

/// Whether a block at `lba` starts with the GPT signature (before any check).
pub fn has_signature(disk: &Disk, lba: u64, block_size: u64) -> bool {
    let mut sig = [0u8; 8];
    lba.checked_mul(block_size)
        .is_some_and(|o| disk.read_at(&mut sig, o).is_ok() && &sig == SIGNATURE)
}

/// The table: the primary when it is sound, else the backup (at the primary's alternate LBA,
/// or the disk's last block), with a note saying the primary was damaged.
pub(crate) fn read(disk: &Disk, block_size: u64) -> Result<(Gpt, Option<String>)> {
    let primary = read_at_lba(disk, 1, block_size);
    let primary_err = match primary {
        Ok(g) => return Ok((g, None)),
        Err(e) => e,
    };
    let Some(last) = (disk.size() / block_size).checked_sub(1) else {
        return Err(primary_err);
    };
    let backup = read_at_lba(disk, last, block_size);
    match backup {
        Ok(g) => Ok((
            g,
            Some(format!(
                "the primary GPT is damaged ({primary_err}); the backup at LBA {last} was used"
            )),
        )),
        Err(_) => Err(primary_err),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inspect::disk::tests::mem_disk;

    /// Writes a GPT (primary and backup) for `parts` of (type, first, last, name) onto a disk
    /// image of 512-byte blocks.
    pub fn write_gpt(disk: &mut [u8], parts: &[([u8; 16], u64, u64, &str)]) {
        let blocks = (disk.len() / 512) as u64;
        let mut array = vec![0u8; 128 * 128];
        for (i, (ty, first, last, name)) in parts.iter().enumerate() {
            let e = &mut array[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(ty);
            e[16] = i as u8 + 1;
            LittleEndian::write_u64(&mut e[32..40], *first);
            LittleEndian::write_u64(&mut e[40..48], *last);
            for (j, c) in name.encode_utf16().enumerate() {
                LittleEndian::write_u16(&mut e[56 + 2 * j..58 + 2 * j], c);
            }
        }
        let array_crc = CRC32.checksum(&array);
        for (my, alt, entries) in [(1, blocks - 1, 2), (blocks - 1, 1, blocks - 33)] {
            let mut h = [0u8; 92];
            h[0..8].copy_from_slice(SIGNATURE);
            LittleEndian::write_u32(&mut h[8..12], 0x0001_0000);
            LittleEndian::write_u32(&mut h[12..16], 92);
            LittleEndian::write_u64(&mut h[24..32], my);
            LittleEndian::write_u64(&mut h[32..40], alt);
            LittleEndian::write_u64(&mut h[40..48], 34);
            LittleEndian::write_u64(&mut h[48..56], blocks - 34);
            h[56] = 0x42;
            LittleEndian::write_u64(&mut h[72..80], entries);
            LittleEndian::write_u32(&mut h[80..84], 128);
            LittleEndian::write_u32(&mut h[84..88], 128);
            LittleEndian::write_u32(&mut h[88..92], array_crc);
            let crc = CRC32.checksum(&h);
            LittleEndian::write_u32(&mut h[16..20], crc);
            let at = (my * 512) as usize;
            disk[at..at + 92].copy_from_slice(&h);
            let at = (entries * 512) as usize;
            disk[at..at + array.len()].copy_from_slice(&array);
        }
    }

    pub const LINUX_FS: [u8; 16] = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];

    #[test]
    fn guid_text_is_mixed_endian() {
        assert_eq!(
            Guid(LINUX_FS).to_text(),
            "0fc63daf-8483-4772-8e79-3d69d8477de4"
        );
    }

    #[test]
    fn reads_primary_then_backup_when_the_primary_is_damaged() {
        let mut disk = vec![0u8; 4 << 20];
        write_gpt(&mut disk, &[(LINUX_FS, 2048, 4095, "root")]);
        let (gpt, note) = read(&mem_disk(disk.clone()), 512).unwrap();
        assert!(note.is_none());
        assert_eq!(gpt.entries.len(), 1);
        assert_eq!(gpt.entries[0].partition_name, "root");
        assert_eq!(
            (gpt.entries[0].starting_lba, gpt.entries[0].ending_lba),
            (2048, 4095)
        );
        // A flipped bit in the primary array: its CRC fails, the backup is used.
        disk[2 * 512 + 40] ^= 1;
        let (gpt, note) = read(&mem_disk(disk.clone()), 512).unwrap();
        assert_eq!(gpt.header.my_lba, (4 << 20) / 512 - 1);
        assert_eq!(gpt.entries[0].ending_lba, 4095);
        assert!(note.unwrap().contains("backup"));
        // Both damaged: the primary's error.
        let last = disk.len() - 512;
        disk[last + 20] ^= 1;
        let e = read(&mem_disk(disk), 512).unwrap_err();
        assert!(e.to_string().contains("partition entry array"), "{e}");
    }

    #[test]
    fn refuses_huge_entry_arrays() {
        let mut block = [0u8; 512];
        block[0..8].copy_from_slice(SIGNATURE);
        LittleEndian::write_u32(&mut block[12..16], 92);
        LittleEndian::write_u32(&mut block[80..84], u32::MAX);
        LittleEndian::write_u32(&mut block[84..88], 128);
        let crc = CRC32.checksum(&block[..92]);
        LittleEndian::write_u32(&mut block[16..20], crc);
        assert_eq!(
            GptHeader::parse(&block, 512).unwrap_err().kind(),
            "limit-exceeded"
        );
    }
}
