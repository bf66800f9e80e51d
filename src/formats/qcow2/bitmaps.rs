//! The QCOW2 persistent dirty bitmaps: the bitmap directory the bitmaps header extension points
//! to, each entry naming a bitmap table whose entries point to clusters of bitmap data. ims
//! never reads the bitmaps; it only needs where they are, so that no guest cluster can be stored
//! over them (the open-time consistency pass marks them as metadata).

use crate::error::{Error, Result};
use crate::limits::{MAX_QCOW2_BITMAP_DIRECTORY_SIZE, MAX_QCOW2_BITMAP_TABLE_SIZE};
use crate::storage::{Storage, read_exact_at};

use byteorder::{BigEndian, ByteOrder};

use super::header::BitmapsExtension;
use super::tables::decode_table;

/// Size of the fixed part of a bitmap directory entry.
pub const BITMAP_DIRECTORY_ENTRY_HEADER: usize = 24;
/// Bits 9-55 of a bitmap table entry: the offset of a cluster of bitmap data.
const BITMAP_TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

const D: &str = "qcow2 bitmap directory";

/// The fixed 24 bytes that open a bitmap directory entry, named as the specification names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BitmapDirectoryEntry {
    pub bitmap_table_offset: u64,
    /// Entries (8 bytes each) in the bitmap table.
    pub bitmap_table_size: u32,
    pub flags: u32,
    pub bitmap_type: u8,
    pub granularity_bits: u8,
    pub name_size: u16,
    pub extra_data_size: u32,
}

impl BitmapDirectoryEntry {
    pub fn parse(b: &[u8; BITMAP_DIRECTORY_ENTRY_HEADER]) -> Self {
        BitmapDirectoryEntry {
            bitmap_table_offset: BigEndian::read_u64(&b[0..8]),
            bitmap_table_size: BigEndian::read_u32(&b[8..12]),
            flags: BigEndian::read_u32(&b[12..16]),
            bitmap_type: b[16],
            granularity_bits: b[17],
            name_size: BigEndian::read_u16(&b[18..20]),
            extra_data_size: BigEndian::read_u32(&b[20..24]),
        }
    }

    /// Bytes the entry takes in the directory: the fixed part, extra data and name, padded to 8.
    fn len(&self) -> u64 {
        (BITMAP_DIRECTORY_ENTRY_HEADER as u64
            + u64::from(self.extra_data_size)
            + u64::from(self.name_size))
        .next_multiple_of(8)
    }
}

/// One bitmap's table: where it is and its entries (already read).
#[derive(Debug)]
pub(crate) struct BitmapTable {
    /// Where its directory entry is, for errors.
    pub entry_at: u64,
    pub offset: u64,
    pub entries: Vec<u64>,
}

impl BitmapTable {
    /// The clusters of bitmap data the table points to, with the offset of each entry.
    pub fn data_clusters(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, &e)| (e & BITMAP_TABLE_OFFSET_MASK, self.offset + i as u64 * 8))
            .filter(|&(c, _)| c != 0)
    }
}

/// Reads the bitmap directory `ext` names and every bitmap table, each checked to be bounded and
/// inside the file of `file_len` bytes.
pub(crate) fn read(
    file: &dyn Storage,
    file_len: u64,
    ext: &BitmapsExtension,
) -> Result<Vec<BitmapTable>> {
    let size = ext.bitmap_directory_size;
    let offset = ext.bitmap_directory_offset;
    if size > MAX_QCOW2_BITMAP_DIRECTORY_SIZE {
        return Err(Error::limit(
            D,
            offset,
            format!("{size} bytes, more than {MAX_QCOW2_BITMAP_DIRECTORY_SIZE}"),
        ));
    }
    if offset.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(Error::truncated(D, offset, size, file_len));
    }
    let mut dir = vec![0u8; crate::block::usize_len(size)?];
    read_exact_at(file, &mut dir, offset, D)?;
    let mut tables = Vec::new();
    let mut pos = 0u64;
    for _ in 0..ext.nb_bitmaps {
        let at = offset + pos;
        let Some(head) = usize::try_from(pos)
            .ok()
            .and_then(|p| dir.get(p..p + BITMAP_DIRECTORY_ENTRY_HEADER))
            .and_then(|h| <&[u8; BITMAP_DIRECTORY_ENTRY_HEADER]>::try_from(h).ok())
        else {
            return Err(Error::malformed(
                D,
                at,
                format!(
                    "{} bitmaps do not fit in a directory of {size} bytes",
                    ext.nb_bitmaps
                ),
            ));
        };
        let e = BitmapDirectoryEntry::parse(head);
        pos += e.len();
        if pos > size {
            return Err(Error::malformed(
                D,
                at,
                "the entry runs past the end of the directory",
            ));
        }
        let table_len = u64::from(e.bitmap_table_size) * 8;
        if table_len > MAX_QCOW2_BITMAP_TABLE_SIZE {
            return Err(Error::limit(
                D,
                at,
                format!(
                    "a bitmap table of {table_len} bytes, more than {MAX_QCOW2_BITMAP_TABLE_SIZE}"
                ),
            ));
        }
        if e.bitmap_table_offset
            .checked_add(table_len)
            .is_none_or(|end| end > file_len)
        {
            return Err(Error::truncated(
                "qcow2 bitmap table",
                e.bitmap_table_offset,
                table_len,
                file_len,
            ));
        }
        let mut raw = vec![0u8; crate::block::usize_len(table_len)?];
        read_exact_at(file, &mut raw, e.bitmap_table_offset, "qcow2 bitmap table")?;
        let entries = decode_table(&raw);
        tables.push(BitmapTable {
            entry_at: at,
            offset: e.bitmap_table_offset,
            entries,
        });
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_directory_entry_and_its_length() {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&0x5_0000u64.to_be_bytes());
        b[8..12].copy_from_slice(&3u32.to_be_bytes());
        b[12..16].copy_from_slice(&2u32.to_be_bytes());
        b[16] = 1;
        b[17] = 16;
        b[18..20].copy_from_slice(&5u16.to_be_bytes());
        let e = BitmapDirectoryEntry::parse(&b);
        assert_eq!(e.bitmap_table_offset, 0x5_0000);
        assert_eq!(e.bitmap_table_size, 3);
        assert_eq!((e.flags, e.bitmap_type, e.granularity_bits), (2, 1, 16));
        assert_eq!(e.name_size, 5);
        // 24 + 5, padded to 8.
        assert_eq!(e.len(), 32);
    }

    #[test]
    fn reads_tables_and_refuses_them_outside_the_file() {
        use crate::storage::MemoryStorage;
        let mut file = vec![0u8; 0x3000];
        // Directory at 0x1000: one bitmap "b", table of 2 entries at 0x2000.
        let mut e = [0u8; 24];
        e[0..8].copy_from_slice(&0x2000u64.to_be_bytes());
        e[8..12].copy_from_slice(&2u32.to_be_bytes());
        e[18..20].copy_from_slice(&1u16.to_be_bytes());
        file[0x1000..0x1018].copy_from_slice(&e);
        file[0x1018] = b'b';
        file[0x2000..0x2008].copy_from_slice(&0x2_0000u64.to_be_bytes());
        file[0x2008..0x2010].copy_from_slice(&1u64.to_be_bytes());
        let ext = BitmapsExtension {
            nb_bitmaps: 1,
            bitmap_directory_size: 32,
            bitmap_directory_offset: 0x1000,
        };
        let storage = MemoryStorage::new(file.clone());
        let tables = read(&storage, 0x3000, &ext).unwrap();
        let clusters: Vec<_> = tables[0].data_clusters().collect();
        // The second entry (bit 0: all ones) has no cluster.
        assert_eq!(clusters, vec![(0x2_0000, 0x2000)]);
        let two = BitmapsExtension {
            nb_bitmaps: 2,
            ..ext
        };
        assert_eq!(
            read(&storage, 0x3000, &two).unwrap_err().kind(),
            "malformed"
        );
        file[0x1000..0x1008].copy_from_slice(&0x2ff8u64.to_be_bytes());
        let storage = MemoryStorage::new(file);
        assert_eq!(
            read(&storage, 0x3000, &ext).unwrap_err().kind(),
            "truncated"
        );
    }
}
