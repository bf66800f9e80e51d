//! ZVHD2's two tables at the end of the file: the index (one 16-byte entry per data record, in
//! block order, in segments of 512 KiB) and the block bitmap (one bit per block, least
//! significant bit first, in segments of 4096 bytes). The entry of block *b* is the one
//! numbered by how many bits are set before bit *b*.
//!
//! The layout is described in `formats/zvhd.md`.

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{Error, Result};

use super::PAGE;
use crate::limits::MAX_ZVHD_RECORD_LEN;

/// Bytes of one index entry.
pub const INDEX_ENTRY_LEN: u64 = 16;
/// Bytes of one index segment.
pub const INDEX_SEG_SIZE: u32 = 512 << 10;
/// Bytes of one bitmap segment.
pub const BITMAP_SEG_SIZE: u32 = 4096;
/// Index entries per segment.
pub const INDEX_ENTRIES_PER_SEG: u64 = INDEX_SEG_SIZE as u64 / INDEX_ENTRY_LEN;
/// Blocks per bitmap segment.
pub const BLOCKS_PER_BITMAP_SEG: u64 = BITMAP_SEG_SIZE as u64 * 8;

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// File offset of the record.
    pub blk_offset: u64,
    /// The block the record holds.
    pub blk_num: u32,
    /// The record's length in the file.
    pub blk_disk_size: u32,
}

impl IndexEntry {
    pub fn decode(bytes: &[u8; INDEX_ENTRY_LEN as usize]) -> Self {
        IndexEntry {
            blk_offset: LittleEndian::read_u64(&bytes[0..8]),
            blk_num: LittleEndian::read_u32(&bytes[8..12]),
            blk_disk_size: LittleEndian::read_u32(&bytes[12..16]),
        }
    }

    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN as usize] {
        let mut b = [0u8; INDEX_ENTRY_LEN as usize];
        LittleEndian::write_u64(&mut b[0..8], self.blk_offset);
        LittleEndian::write_u32(&mut b[8..12], self.blk_num);
        LittleEndian::write_u32(&mut b[12..16], self.blk_disk_size);
        b
    }

    /// The end of the record in the file.
    pub fn end(&self) -> Option<u64> {
        self.blk_offset.checked_add(u64::from(self.blk_disk_size))
    }

    /// Checks an entry found at file offset `at` that should hold block `expected_blk`, with
    /// records confined to `[PAGE, data_end)`.
    pub fn check(&self, expected_blk: u64, data_end: u64, at: u64) -> Result<()> {
        let bad = |problem: String| Error::malformed("zvhd2 index entry", at, problem);
        if u64::from(self.blk_num) != expected_blk {
            return Err(bad(format!(
                "holds block {} where the bitmap puts block {expected_blk}",
                self.blk_num
            )));
        }
        if self.blk_offset < PAGE || !self.blk_offset.is_multiple_of(PAGE) {
            return Err(bad(format!(
                "record offset {} is not a page boundary after the header",
                self.blk_offset
            )));
        }
        let size = u64::from(self.blk_disk_size);
        if size == 0 || !size.is_multiple_of(PAGE) {
            return Err(bad(format!(
                "record length {size} is not a whole number of pages"
            )));
        }
        if size > MAX_ZVHD_RECORD_LEN {
            return Err(Error::limit(
                "zvhd2 index entry",
                at,
                format!("record length {size} is over {MAX_ZVHD_RECORD_LEN} bytes"),
            ));
        }
        match self.end() {
            Some(end) if end <= data_end => Ok(()),
            _ => Err(bad(format!(
                "record at {} of {size} bytes runs past the data area, which ends at {data_end}",
                self.blk_offset
            ))),
        }
    }
}

/// The block bitmap, loaded whole, with the count of set bits before each segment.
#[derive(Debug, Clone)]
pub struct Bitmap {
    bytes: Vec<u8>,
    /// Set bits before each segment of [`BITMAP_SEG_SIZE`] bytes.
    seg_rank: Vec<u64>,
}

impl Bitmap {
    /// Checks a bitmap read at file offset `at`: no bit at or past `blocks` is set and
    /// `non_zero` bits are set in all.
    pub fn new(bytes: Vec<u8>, blocks: u64, non_zero: u64, at: u64) -> Result<Self> {
        let seg = BITMAP_SEG_SIZE as usize;
        let mut seg_rank = Vec::with_capacity(bytes.len().div_ceil(seg));
        let mut total = 0u64;
        for chunk in bytes.chunks(seg) {
            seg_rank.push(total);
            total += chunk.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
        }
        if total != non_zero {
            return Err(Error::malformed(
                "zvhd2 bitmap",
                at,
                format!("{total} bits are set, the footer counts {non_zero} data blocks"),
            ));
        }
        let map = Bitmap { bytes, seg_rank };
        // Bits past the last block: check the rest of the byte holding it, then whole bytes.
        let first_byte = usize::try_from(blocks / 8).unwrap_or(usize::MAX);
        for (i, &byte) in map.bytes.iter().enumerate().skip(first_byte) {
            let base = (i as u64) * 8;
            // Only the byte holding the last block has bits below `blocks`.
            let past = if base >= blocks {
                byte
            } else {
                byte & (0xffu8 << (blocks - base))
            };
            if past != 0 {
                return Err(Error::malformed(
                    "zvhd2 bitmap",
                    at.saturating_add(i as u64),
                    format!(
                        "bit for block {} is set, the disk has {blocks} blocks",
                        base + u64::from(past.trailing_zeros())
                    ),
                ));
            }
        }
        Ok(map)
    }

    /// Whether block `b` has a record.
    pub fn is_set(&self, b: u64) -> bool {
        let byte = usize::try_from(b / 8)
            .ok()
            .and_then(|i| self.bytes.get(i))
            .copied()
            .unwrap_or(0);
        byte & (1 << (b % 8)) != 0
    }

    /// How many bits are set before bit `b`: the index entry number of block `b`.
    pub fn rank(&self, b: u64) -> u64 {
        let seg_bits = u64::from(BITMAP_SEG_SIZE) * 8;
        let seg = usize::try_from(b / seg_bits).unwrap_or(usize::MAX);
        let Some(&before) = self.seg_rank.get(seg) else {
            return self.seg_rank.last().copied().unwrap_or(0);
        };
        let seg_start = seg * BITMAP_SEG_SIZE as usize;
        let byte = usize::try_from(b / 8).unwrap_or(usize::MAX);
        let whole = self
            .bytes
            .get(seg_start..byte.min(self.bytes.len()))
            .unwrap_or_default()
            .iter()
            .map(|x| u64::from(x.count_ones()))
            .sum::<u64>();
        let partial = self
            .bytes
            .get(byte)
            .map_or(0, |x| u64::from((x & ((1u8 << (b % 8)) - 1)).count_ones()));
        before + whole + partial
    }

    /// The blocks whose bits are set, in increasing order.
    pub fn set_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.bytes.iter().enumerate().flat_map(|(i, &byte)| {
            (0..8u64)
                .filter(move |bit| byte & (1 << bit) != 0)
                .map(move |bit| i as u64 * 8 + bit)
        })
    }
}

/// Builds bitmap segment `seg` for the data blocks `blocks` (increasing), consuming those that
/// fall in it from the front.
pub fn bitmap_segment(
    seg: u64,
    blocks: &mut std::iter::Peekable<impl Iterator<Item = u64>>,
) -> Vec<u8> {
    let seg_bits = u64::from(BITMAP_SEG_SIZE) * 8;
    let mut out = vec![0u8; BITMAP_SEG_SIZE as usize];
    let first = seg * seg_bits;
    while let Some(&b) = blocks.peek() {
        if b >= first + seg_bits {
            break;
        }
        blocks.next();
        if let Some(rel) = b.checked_sub(first) {
            out[(rel / 8) as usize] |= 1 << (rel % 8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_entry_decodes() {
        // tiny.zstd.zvhd2 at 81920: (4096, 0, 4096), then (8192, 2, 69632).
        let b = [0u8, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
        let e = IndexEntry::decode(&b);
        assert_eq!(
            e,
            IndexEntry {
                blk_offset: 4096,
                blk_num: 0,
                blk_disk_size: 4096
            }
        );
        assert_eq!(e.encode(), b);
        e.check(0, 8192, 0).unwrap();
        assert!(e.check(1, 8192, 0).is_err());
        assert!(e.check(0, 4096, 0).is_err());
        let odd = IndexEntry {
            blk_offset: 4097,
            ..e
        };
        assert!(odd.check(0, 1 << 20, 0).is_err());
        let zero = IndexEntry { blk_offset: 0, ..e };
        assert!(zero.check(0, 1 << 20, 0).is_err());
        let huge = IndexEntry {
            blk_disk_size: 8 << 20,
            ..e
        };
        assert_eq!(
            huge.check(0, u64::MAX, 0).unwrap_err().kind(),
            "limit-exceeded"
        );
        let wrap = IndexEntry {
            blk_offset: u64::MAX - 4095,
            ..e
        };
        assert!(wrap.check(0, u64::MAX, 0).is_err());
    }

    #[test]
    fn bitmap_rank_and_checks() {
        // sparse: blocks 0, 7, 8 and 31 of 32.
        let mut bytes = vec![0u8; 4096];
        bytes[..4].copy_from_slice(&[0x81, 0x01, 0x00, 0x80]);
        let m = Bitmap::new(bytes.clone(), 32, 4, 0).unwrap();
        assert_eq!(m.set_blocks().collect::<Vec<_>>(), vec![0, 7, 8, 31]);
        assert_eq!([0, 7, 8, 31].map(|b| m.rank(b)), [0, 1, 2, 3]);
        assert!(m.is_set(7) && !m.is_set(6) && !m.is_set(1 << 40));
        assert!(Bitmap::new(bytes.clone(), 32, 3, 0).is_err());
        assert!(Bitmap::new(bytes.clone(), 31, 4, 0).is_err());
        // Two segments: bits 32767, 32768 and 32769 (the huge vector).
        let mut two = vec![0u8; 8192];
        two[4095] = 0x80;
        two[4096] = 0x03;
        let m = Bitmap::new(two.clone(), 32770, 3, 0).unwrap();
        assert_eq!(m.rank(32767), 0);
        assert_eq!(m.rank(32768), 1);
        assert_eq!(m.rank(32769), 2);
        let mut it = m.set_blocks().peekable();
        assert_eq!(bitmap_segment(0, &mut it), two[..4096]);
        assert_eq!(bitmap_segment(1, &mut it), two[4096..]);
    }
}
