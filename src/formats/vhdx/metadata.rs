//! The metadata region: a 64 KiB table at its start (a 32-byte header and 32-byte entries),
//! then the items the entries point to. The known items say the block size, whether blocks stay
//! allocated (fixed) or come from a parent (differencing), the disk's size, identity and
//! sector sizes, and where its parent is. Little-endian.

use byteorder::{ByteOrder, LittleEndian};
use uuid::Uuid;

use super::locator::ParentLocator;
use super::{guid, put_guid};
use crate::error::{Error, Result};
use crate::storage::{Storage, read_exact_at};

/// `Signature`: "metadata".
pub const SIGNATURE: &[u8; 8] = b"metadata";
/// Bytes of the table at the start of the region; items start at or after it.
pub const TABLE_SIZE: usize = 64 << 10;
/// The most entries (`EntryCount`).
pub const MAX_ENTRIES: u16 = 2047;
/// The largest item (`Length`).
pub const MAX_ITEM: u32 = 1 << 20;
const ENTRY_SIZE: usize = 32;

/// `IsUser`, `IsVirtualDisk`, `IsRequired`: the entry's flag bits.
pub const IS_USER: u32 = 1;
/// See [`IS_USER`].
pub const IS_VIRTUAL_DISK: u32 = 2;
/// See [`IS_USER`].
pub const IS_REQUIRED: u32 = 4;

/// File Parameters: block size and flags.
pub const FILE_PARAMETERS: Uuid = uuid::uuid!("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
/// Virtual Disk Size.
pub const VIRTUAL_DISK_SIZE: Uuid = uuid::uuid!("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
/// Virtual Disk ID (the SCSI page 83 identity).
pub const VIRTUAL_DISK_ID: Uuid = uuid::uuid!("BECA12AB-B2E6-4523-93EF-C309E000C746");
/// Logical Sector Size.
pub const LOGICAL_SECTOR_SIZE: Uuid = uuid::uuid!("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
/// Physical Sector Size.
pub const PHYSICAL_SECTOR_SIZE: Uuid = uuid::uuid!("CDA348C7-445D-4471-9CC9-E9885251C556");
/// Parent Locator.
pub const PARENT_LOCATOR: Uuid = uuid::uuid!("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");

/// File Parameters' `LeaveBlockAllocated` bit.
pub const LEAVE_BLOCK_ALLOCATED: u32 = 1;
/// File Parameters' `HasParent` bit.
pub const HAS_PARENT: u32 = 2;
/// The smallest and largest `BlockSize`.
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// See [`MIN_BLOCK_SIZE`].
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// The largest `VirtualDiskSize`: 64 TiB.
pub const MAX_DISK_SIZE: u64 = 64 << 40;

/// One metadata table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataEntry {
    /// `ItemID`.
    pub item_id: Uuid,
    /// `Offset`: from the start of the region, at least 64 KiB (0 for an empty item).
    pub offset: u32,
    /// `Length`: at most 1 MiB.
    pub length: u32,
    /// The `IsUser`, `IsVirtualDisk` and `IsRequired` bits.
    pub flags: u32,
}

/// The known items, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The table's entries.
    pub entries: Vec<MetadataEntry>,
    /// `BlockSize`: bytes per payload block, a power of two in 1 MiB..=256 MiB.
    pub block_size: u32,
    /// `LeaveBlockAllocated`: a fixed VHDX.
    pub leave_block_allocated: bool,
    /// `HasParent`: a differencing VHDX.
    pub has_parent: bool,
    /// `VirtualDiskSize`, in bytes.
    pub virtual_disk_size: u64,
    /// `VirtualDiskId`.
    pub virtual_disk_id: Uuid,
    /// `LogicalSectorSize`: 512 or 4096.
    pub logical_sector_size: u32,
    /// `PhysicalSectorSize`: 512 or 4096.
    pub physical_sector_size: u32,
    /// The parent locator (differencing disks).
    pub parent_locator: Option<ParentLocator>,
}

/// Parses and checks the table (the region's first 64 KiB); `at` is the region's file offset
/// and `region_length` its size. Items must lie inside the region, past the table, without
/// overlapping; an (item, user) pair appears once; an unknown required item is unsupported.
pub fn parse_table(buf: &[u8], at: u64, region_length: u64) -> Result<Vec<MetadataEntry>> {
    let bad =
        |off: u64, problem: String| Error::malformed("vhdx metadata table", at + off, problem);
    let Some(buf) = buf.get(..TABLE_SIZE) else {
        return Err(Error::truncated(
            "vhdx metadata table",
            at,
            TABLE_SIZE as u64,
            buf.len() as u64,
        ));
    };
    if &buf[..8] != SIGNATURE {
        return Err(bad(0, "no \"metadata\" signature".into()));
    }
    let count = LittleEndian::read_u16(&buf[10..]);
    if count > MAX_ENTRIES {
        return Err(bad(10, format!("{count} entries, more than {MAX_ENTRIES}")));
    }
    if LittleEndian::read_u16(&buf[8..]) != 0 || buf[12..32].iter().any(|&b| b != 0) {
        return Err(bad(8, "reserved bytes are not zero".into()));
    }
    let mut entries: Vec<MetadataEntry> = Vec::new();
    for i in 0..usize::from(count) {
        let off = 32 + i * ENTRY_SIZE;
        let e = &buf[off..off + ENTRY_SIZE];
        let entry = MetadataEntry {
            item_id: guid(&e[..16]),
            offset: LittleEndian::read_u32(&e[16..]),
            length: LittleEndian::read_u32(&e[20..]),
            flags: LittleEndian::read_u32(&e[24..]),
        };
        let off = off as u64;
        if entry.flags & !(IS_USER | IS_VIRTUAL_DISK | IS_REQUIRED) != 0
            || LittleEndian::read_u32(&e[28..]) != 0
        {
            return Err(bad(
                off + 24,
                format!("reserved bits set in item {}", entry.item_id),
            ));
        }
        let end = u64::from(entry.offset) + u64::from(entry.length);
        let placed = if entry.length == 0 {
            entry.offset == 0
        } else {
            entry.offset as usize >= TABLE_SIZE && end <= region_length && entry.length <= MAX_ITEM
        };
        if !placed {
            return Err(bad(
                off + 16,
                format!(
                    "item {} at {:#x} of {} bytes is not inside the region past the table",
                    entry.item_id, entry.offset, entry.length
                ),
            ));
        }
        let user = entry.flags & IS_USER;
        if entries
            .iter()
            .any(|x| x.item_id == entry.item_id && x.flags & IS_USER == user)
        {
            return Err(bad(off, format!("item {} is listed twice", entry.item_id)));
        }
        if let Some(other) = entries.iter().find(|x| {
            entry.length > 0
                && x.length > 0
                && x.offset < entry.offset + entry.length
                && entry.offset < x.offset + x.length
        }) {
            return Err(bad(
                off + 16,
                format!(
                    "item {} at {:#x} overlaps item {} at {:#x}",
                    entry.item_id, entry.offset, other.item_id, other.offset
                ),
            ));
        }
        let known = user == 0
            && [
                FILE_PARAMETERS,
                VIRTUAL_DISK_SIZE,
                VIRTUAL_DISK_ID,
                LOGICAL_SECTOR_SIZE,
                PHYSICAL_SECTOR_SIZE,
                PARENT_LOCATOR,
            ]
            .contains(&entry.item_id);
        if entry.flags & IS_REQUIRED != 0 && !known {
            return Err(Error::unsupported(format!(
                "vhdx metadata item {} (required, unknown to ims)",
                entry.item_id
            )));
        }
        entries.push(entry);
    }
    Ok(entries)
}

impl Metadata {
    /// Reads the region at `at` of `length` bytes: its table, then each known item, checked.
    pub fn read(storage: &dyn Storage, at: u64, length: u64) -> Result<Metadata> {
        let mut table = vec![0u8; TABLE_SIZE];
        read_exact_at(storage, &mut table, at, "vhdx metadata table")?;
        let entries = parse_table(&table, at, length)?;
        let item = |id: Uuid, len: usize| -> Result<Option<(Vec<u8>, u64)>> {
            let Some(e) = entries
                .iter()
                .find(|e| e.item_id == id && e.flags & IS_USER == 0)
            else {
                return Ok(None);
            };
            let where_ = at + u64::from(e.offset);
            if len != 0 && e.length as usize != len {
                return Err(Error::malformed(
                    "vhdx metadata item",
                    where_,
                    format!("item {id} has {} bytes, not {len}", e.length),
                ));
            }
            let mut b = vec![0u8; e.length as usize];
            read_exact_at(storage, &mut b, where_, "vhdx metadata item")?;
            Ok(Some((b, where_)))
        };
        let required = |id: Uuid, len: usize, name: &str| -> Result<(Vec<u8>, u64)> {
            item(id, len)?.ok_or_else(|| {
                Error::malformed("vhdx metadata table", at, format!("no {name} item"))
            })
        };
        let (params, params_at) = required(FILE_PARAMETERS, 8, "file parameters")?;
        let block_size = LittleEndian::read_u32(&params);
        let bits = LittleEndian::read_u32(&params[4..]);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(Error::malformed(
                "vhdx file parameters",
                params_at,
                format!("block size {block_size} is not a power of two from 1 MiB to 256 MiB"),
            ));
        }
        if bits & !(LEAVE_BLOCK_ALLOCATED | HAS_PARENT) != 0 {
            return Err(Error::malformed(
                "vhdx file parameters",
                params_at + 4,
                format!("reserved bits set in {bits:#x}"),
            ));
        }
        let sector = |id, name: &'static str| -> Result<u32> {
            let (b, where_) = required(id, 4, name)?;
            let v = LittleEndian::read_u32(&b);
            if v != 512 && v != 4096 {
                return Err(Error::malformed(
                    "vhdx metadata item",
                    where_,
                    format!("{name} {v} is neither 512 nor 4096"),
                ));
            }
            Ok(v)
        };
        let logical_sector_size = sector(LOGICAL_SECTOR_SIZE, "logical sector size")?;
        let physical_sector_size = sector(PHYSICAL_SECTOR_SIZE, "physical sector size")?;
        let (size, size_at) = required(VIRTUAL_DISK_SIZE, 8, "virtual disk size")?;
        let virtual_disk_size = LittleEndian::read_u64(&size);
        if virtual_disk_size > MAX_DISK_SIZE
            || !virtual_disk_size.is_multiple_of(u64::from(logical_sector_size))
        {
            return Err(Error::malformed(
                "vhdx virtual disk size",
                size_at,
                format!(
                    "{virtual_disk_size} bytes is not a multiple of the {logical_sector_size}-byte \
                     sector up to 64 TiB"
                ),
            ));
        }
        let (id, _) = required(VIRTUAL_DISK_ID, 16, "virtual disk id")?;
        let has_parent = bits & HAS_PARENT != 0;
        // Only a differencing disk's locator means anything; another disk's is not read.
        let parent_locator = match item(PARENT_LOCATOR, 0)? {
            Some((b, where_)) if has_parent => Some(ParentLocator::parse(&b, where_)?),
            _ => None,
        };
        if has_parent && parent_locator.is_none() {
            return Err(Error::malformed(
                "vhdx metadata table",
                at,
                "a differencing disk (HasParent) without a parent locator",
            ));
        }
        Ok(Metadata {
            entries,
            block_size,
            leave_block_allocated: bits & LEAVE_BLOCK_ALLOCATED != 0 && !has_parent,
            has_parent,
            virtual_disk_size,
            virtual_disk_id: guid(&id),
            logical_sector_size,
            physical_sector_size,
            parent_locator,
        })
    }

    /// The region's bytes for a disk without a parent: the table, then the five items.
    pub fn region_bytes(&self, region_length: usize) -> Vec<u8> {
        let mut b = vec![0u8; region_length];
        b[..8].copy_from_slice(SIGNATURE);
        let mut params = [0u8; 8];
        LittleEndian::write_u32(&mut params, self.block_size);
        LittleEndian::write_u32(&mut params[4..], u32::from(self.leave_block_allocated));
        let items: [(Uuid, u32, Vec<u8>); 5] = [
            (FILE_PARAMETERS, IS_REQUIRED, params.to_vec()),
            (
                VIRTUAL_DISK_SIZE,
                IS_REQUIRED | IS_VIRTUAL_DISK,
                self.virtual_disk_size.to_le_bytes().to_vec(),
            ),
            (
                VIRTUAL_DISK_ID,
                IS_REQUIRED | IS_VIRTUAL_DISK,
                self.virtual_disk_id.to_bytes_le().to_vec(),
            ),
            (
                LOGICAL_SECTOR_SIZE,
                IS_REQUIRED | IS_VIRTUAL_DISK,
                self.logical_sector_size.to_le_bytes().to_vec(),
            ),
            (
                PHYSICAL_SECTOR_SIZE,
                IS_REQUIRED | IS_VIRTUAL_DISK,
                self.physical_sector_size.to_le_bytes().to_vec(),
            ),
        ];
        LittleEndian::write_u16(&mut b[10..], items.len() as u16);
        let mut data_at = TABLE_SIZE;
        for (i, (id, flags, data)) in items.iter().enumerate() {
            let o = 32 + i * ENTRY_SIZE;
            put_guid(&mut b[o..o + 16], id);
            LittleEndian::write_u32(&mut b[o + 16..], data_at as u32);
            LittleEndian::write_u32(&mut b[o + 20..], data.len() as u32);
            LittleEndian::write_u32(&mut b[o + 24..], *flags);
            b[data_at..data_at + data.len()].copy_from_slice(data);
            data_at += data.len();
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    pub(crate) fn sample() -> Metadata {
        Metadata {
            entries: Vec::new(),
            block_size: 8 << 20,
            leave_block_allocated: false,
            has_parent: false,
            virtual_disk_size: 24 << 20,
            virtual_disk_id: Uuid::from_u128(5),
            logical_sector_size: 512,
            physical_sector_size: 4096,
            parent_locator: None,
        }
    }

    fn read(b: Vec<u8>) -> Result<Metadata> {
        let len = b.len() as u64;
        Metadata::read(&MemoryStorage::new(b), 0, len)
    }

    #[test]
    fn the_items_round_trip_where_qemu_puts_them() {
        let b = sample().region_bytes(1 << 20);
        assert_eq!(&b[..8], b"metadata");
        assert_eq!(b[10], 5);
        // File parameters first, at 64 KiB, 8 bytes, required.
        assert_eq!(&b[32..36], &[0x37, 0x67, 0xa1, 0xca]);
        assert_eq!(&b[48..60], &[0, 0, 1, 0, 8, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(&b[0x10000..0x10008], &[0, 0, 0x80, 0, 0, 0, 0, 0]);
        let m = read(b).unwrap();
        assert_eq!(m.entries.len(), 5);
        assert_eq!(
            Metadata {
                entries: Vec::new(),
                ..m
            },
            sample()
        );
    }

    #[test]
    fn bad_items_are_refused() {
        let check = |edit: &dyn Fn(&mut Vec<u8>), needle: &str| {
            let mut b = sample().region_bytes(1 << 20);
            edit(&mut b);
            let e = read(b).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        };
        // Block size not a power of two, too small, too large.
        for v in [3u32 << 20, 512 << 10, 512 << 20] {
            check(
                &|b| LittleEndian::write_u32(&mut b[0x10000..], v),
                "block size",
            );
        }
        check(&|b| b[0x10004] = 4, "reserved bits");
        check(
            &|b| LittleEndian::write_u64(&mut b[0x10008..], 1000),
            "virtual disk size",
        );
        check(
            &|b| LittleEndian::write_u64(&mut b[0x10008..], (64 << 40) + 512),
            "64 TiB",
        );
        check(
            &|b| LittleEndian::write_u32(&mut b[0x10020..], 1024),
            "neither 512 nor 4096",
        );
        // An item outside the region, inside the table, overlapping another, of a wrong size.
        check(
            &|b| LittleEndian::write_u32(&mut b[48..], 0xffffc),
            "not inside the region",
        );
        check(
            &|b| LittleEndian::write_u32(&mut b[48..], 0x100),
            "not inside the region",
        );
        check(
            &|b| LittleEndian::write_u32(&mut b[80..], 0x10004),
            "overlaps",
        );
        check(&|b| LittleEndian::write_u32(&mut b[52..], 4), "not 8");
        // Missing item; differencing without a locator; unknown required item.
        check(&|b| b[32] ^= 1, "unknown");
        check(&|b| b[10] = 4, "no physical sector size");
        check(&|b| b[0x10004] = 2, "without a parent locator");
        check(&|b| b[9] = 1, "reserved bytes");
        check(&|b| LittleEndian::write_u16(&mut b[10..], 2048), "2047");
    }
}
