//! QCOW2 tables: the L1 and L2 entry layouts (standard, compressed and extended entries with
//! their subcluster bitmaps) and refcount table and block entries. The geometry that follows
//! from the header is in `geometry.rs`, the internal snapshot table in `snapshot.rs`.
//!
//! Everything here is pure decoding and arithmetic, so the reader, the writer and the checker
//! share one definition of each bit. The layouts are described in `formats/qcow2.md`.

pub use super::geometry::{Geometry, SUBCLUSTERS_PER_CLUSTER, TABLE_ENTRY_SIZE};
pub use super::snapshot::{Snapshot, read_snapshot_table};

use byteorder::{BigEndian, ByteOrder};

/// Bits 9-55 of an L1 entry: the offset of an L2 table.
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bits 9-55 of a standard L2 entry: the offset of a host cluster.
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bits 9-63 of a refcount table entry: the offset of a refcount block.
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Bit 63 of L1 and L2 entries: the refcount is exactly one (COPIED).
pub const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: the cluster is compressed.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry (version 3 without extended L2): the cluster reads as zeros.
pub const OFLAG_ZERO: u64 = 1;
/// Bits of an L1 entry that must be zero: 0-8 and 56-62.
pub const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// Bits of a standard L2 entry that must be zero (bit 0 is the zero flag, handled apart): 1-8 and 56-61.
pub const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// Bits of a refcount table entry that must be zero: 0-8.
pub const REFT_RESERVED_MASK: u64 = 0x1ff;
/// Compressed data is counted in sectors of this size.
pub const COMPRESSED_SECTOR_SIZE: u64 = 512;
/// An L1 table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Entry(pub u64);

impl L1Entry {
    /// Offset of the L2 table, or 0 when the whole range is unallocated.
    pub fn l2_offset(self) -> u64 {
        self.0 & L1E_OFFSET_MASK
    }

    /// The COPIED flag: the L2 table's refcount is exactly 1, so it may be written in place.
    pub fn copied(self) -> bool {
        self.0 & OFLAG_COPIED != 0
    }

    /// Reserved bits that are set (should be 0).
    pub fn reserved_bits(self) -> u64 {
        self.0 & L1E_RESERVED_MASK
    }
}

/// One L2 entry: the 64-bit cluster descriptor, and with extended L2 entries the 64-bit
/// subcluster bitmap (0 otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Entry {
    /// The cluster descriptor: host offset or compressed location, and the flag bits.
    pub descriptor: u64,
    /// The subcluster allocation and zero bits (extended L2 entries only).
    pub bitmap: u64,
}

impl L2Entry {
    /// The cluster is stored compressed (bit 62).
    pub fn is_compressed(self) -> bool {
        self.descriptor & OFLAG_COMPRESSED != 0
    }

    /// The COPIED flag: the cluster's refcount is exactly 1, so it may be written in place.
    pub fn copied(self) -> bool {
        self.descriptor & OFLAG_COPIED != 0
    }

    /// Host cluster offset of a standard (uncompressed) entry; 0 when none is allocated.
    pub fn host_offset(self) -> u64 {
        self.descriptor & L2E_OFFSET_MASK
    }

    /// The zero flag of a standard entry (meaningful for version 3 without extended L2).
    pub fn zero_flag(self) -> bool {
        self.descriptor & OFLAG_ZERO != 0
    }

    /// Reserved bits of a standard entry that are set (should be 0).
    pub fn reserved_bits(self) -> u64 {
        self.descriptor & L2E_STD_RESERVED_MASK
    }
}

/// What a standard (uncompressed) L2 entry without subclusters says about its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterType {
    /// Nothing stored: read from the backing file, or zeros.
    Unallocated,
    /// Reads as zeros; `host` is a preallocated host cluster, if any.
    Zero {
        /// The preallocated host cluster.
        host: Option<u64>,
    },
    /// Stored uncompressed at `host`.
    Normal {
        /// Where the cluster is in the image file.
        host: u64,
    },
}

/// Classifies a standard entry (not compressed, no subclusters) of an image of `version`.
/// Fails with the problem when the entry cannot be right.
pub(crate) fn classify_standard(
    entry: L2Entry,
    version: u32,
    cluster_size: u64,
) -> std::result::Result<ClusterType, String> {
    let host = entry.host_offset();
    if !host.is_multiple_of(cluster_size) {
        return Err(format!(
            "host cluster offset {host:#x} is not aligned to a cluster"
        ));
    }
    if entry.zero_flag() {
        if version < 3 {
            return Err("zero flag set in a version 2 image".into());
        }
        return Ok(ClusterType::Zero {
            host: (host != 0).then_some(host),
        });
    }
    Ok(if host == 0 {
        ClusterType::Unallocated
    } else {
        ClusterType::Normal { host }
    })
}

/// What an extended L2 entry's bitmap says about one subcluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubclusterState {
    /// Allocation bit set: stored in the host cluster.
    Allocated,
    /// Zero bit set: reads as zeros.
    Zero,
    /// Neither: read from the backing file, or zeros.
    Unallocated,
    /// Both bits set, which the format forbids.
    Invalid,
}

/// The state of subcluster `index` (0..32) in an extended L2 entry's `bitmap`: allocation
/// bits are 0-31, zero bits 32-63.
pub fn subcluster_state(bitmap: u64, index: u32) -> SubclusterState {
    let index = index % SUBCLUSTERS_PER_CLUSTER;
    let alloc = bitmap >> index & 1 != 0;
    let zero = bitmap >> (index + SUBCLUSTERS_PER_CLUSTER) & 1 != 0;
    match (alloc, zero) {
        (true, true) => SubclusterState::Invalid,
        (true, false) => SubclusterState::Allocated,
        (false, true) => SubclusterState::Zero,
        (false, false) => SubclusterState::Unallocated,
    }
}

/// A compressed cluster descriptor: where the compressed bytes start and how many 512-byte
/// sectors they touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedDescriptor {
    /// Byte offset of the compressed data in the file (not aligned).
    pub host_offset: u64,
    /// Sectors the data touches, counting the one holding `host_offset` (the stored field is this
    /// minus one).
    pub sectors: u64,
}

impl CompressedDescriptor {
    /// Decodes the descriptor bits (0-61) of a compressed L2 entry.
    pub fn decode(descriptor: u64, geometry: &Geometry) -> Self {
        let shift = geometry.csize_shift();
        let host_offset = descriptor & ((1u64 << shift) - 1);
        let additional = (descriptor >> shift) & geometry.csize_mask();
        CompressedDescriptor {
            host_offset,
            sectors: additional + 1,
        }
    }

    /// The L2 entry for `compressed_len` bytes of compressed data at `host_offset`, with the
    /// compressed flag set; `None` when the offset or length do not fit the descriptor.
    pub fn encode(host_offset: u64, compressed_len: u64, geometry: &Geometry) -> Option<u64> {
        let shift = geometry.csize_shift();
        if compressed_len == 0 || host_offset >= 1u64 << shift.min(56) {
            return None;
        }
        let last = host_offset.checked_add(compressed_len - 1)?;
        let additional = last / COMPRESSED_SECTOR_SIZE - host_offset / COMPRESSED_SECTOR_SIZE;
        if additional > geometry.csize_mask() {
            return None;
        }
        Some(OFLAG_COMPRESSED | additional << shift | host_offset)
    }

    /// Bytes from `host_offset` to the end of the last sector the data touches: what a reader
    /// reads (the data itself may end earlier in that sector).
    pub fn length(&self) -> u64 {
        self.sectors * COMPRESSED_SECTOR_SIZE - self.host_offset % COMPRESSED_SECTOR_SIZE
    }

    /// One past the last byte of the last sector, or `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        self.host_offset.checked_add(self.length())
    }
}

/// Decodes a big-endian table of 64-bit entries (L1, L2, refcount table). A trailing partial
/// entry is ignored.
pub fn decode_table(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(BigEndian::read_u64).collect()
}

/// Offset of the refcount block a refcount table entry points to (0: not allocated).
pub fn refcount_block_offset(entry: u64) -> u64 {
    entry & REFT_OFFSET_MASK
}

/// Reads refcount `index` of a refcount block with entries of `1 << order` bits. Sub-byte
/// entries count from the least significant bit of each byte; wider ones are big-endian.
/// `None` when `index` is outside the block.
pub fn get_refcount(block: &[u8], index: u64, order: u32) -> Option<u64> {
    if order > 6 {
        return None;
    }
    let bits = 1u32 << order;
    if bits < 8 {
        let per_byte = u64::from(8 / bits);
        let byte = *block.get(usize::try_from(index / per_byte).ok()?)?;
        let shift = (index % per_byte) as u32 * bits;
        let mask = (1u8 << bits) - 1;
        return Some(u64::from((byte >> shift) & mask));
    }
    let width = (bits / 8) as usize;
    let start = usize::try_from(index).ok()?.checked_mul(width)?;
    let bytes = block.get(start..start.checked_add(width)?)?;
    Some(bytes.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
}

/// Writes refcount `index` of a refcount block (the inverse of [`get_refcount`]). Returns false,
/// changing nothing, when `index` is outside the block or `value` does not fit the width.
pub fn set_refcount(block: &mut [u8], index: u64, order: u32, value: u64) -> bool {
    if order > 6 {
        return false;
    }
    let bits = 1u32 << order;
    if bits < 64 && value >> bits != 0 {
        return false;
    }
    if bits < 8 {
        let per_byte = u64::from(8 / bits);
        let Some(byte) = usize::try_from(index / per_byte)
            .ok()
            .and_then(|i| block.get_mut(i))
        else {
            return false;
        };
        let shift = (index % per_byte) as u32 * bits;
        let mask = ((1u8 << bits) - 1) << shift;
        // `value` fits in `bits` bits, checked above.
        *byte = (*byte & !mask) | ((value as u8) << shift);
        return true;
    }
    let width = (bits / 8) as usize;
    let Some(start) = usize::try_from(index)
        .ok()
        .and_then(|i| i.checked_mul(width))
    else {
        return false;
    };
    let Some(bytes) = start
        .checked_add(width)
        .and_then(|end| block.get_mut(start..end))
    else {
        return false;
    };
    bytes.copy_from_slice(&value.to_be_bytes()[8 - width..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(bits: u32) -> Geometry {
        Geometry::new(bits, false, 4).unwrap()
    }

    #[test]
    fn l1_entry_bits() {
        let e = L1Entry(0x8000_0000_0005_0000);
        assert_eq!(e.l2_offset(), 0x50000);
        assert!(e.copied());
        assert_eq!(e.reserved_bits(), 0);
        assert_eq!(
            L1Entry(0x0100_0000_0000_0001).reserved_bits(),
            0x0100_0000_0000_0001
        );
    }

    #[test]
    fn standard_entries() {
        let std = |d| L2Entry {
            descriptor: d,
            bitmap: 0,
        };
        assert_eq!(
            classify_standard(std(0x8000_0000_0005_0000), 3, 65536),
            Ok(ClusterType::Normal { host: 0x50000 })
        );
        assert_eq!(
            classify_standard(std(0), 2, 65536),
            Ok(ClusterType::Unallocated)
        );
        assert_eq!(
            classify_standard(std(1), 3, 65536),
            Ok(ClusterType::Zero { host: None })
        );
        assert_eq!(
            classify_standard(std(0x8000_0000_0007_0001), 3, 65536),
            Ok(ClusterType::Zero {
                host: Some(0x70000)
            })
        );
        assert!(classify_standard(std(1), 2, 65536).is_err());
        assert!(classify_standard(std(0x8000_0000_0005_0200), 3, 65536).is_err());
        assert_eq!(std(0x0000_0000_0005_0002).reserved_bits(), 2);
    }

    #[test]
    fn compressed_descriptor_from_qemu() {
        // An entry qemu-img 10 wrote for a 64 KiB cluster: 40 sectors at 0x50000.
        let g = geo(16);
        let entry = 0x49c0_0000_0005_0000u64;
        assert!(
            L2Entry {
                descriptor: entry,
                bitmap: 0
            }
            .is_compressed()
        );
        let d = CompressedDescriptor::decode(entry, &g);
        assert_eq!(d.host_offset, 0x50000);
        assert_eq!(d.sectors, 40);
        assert_eq!(d.length(), 40 * 512);
        // Unaligned start: the first sector is only partly ours.
        let d = CompressedDescriptor::decode(0x4000_0000_0009_eeb1, &g);
        assert_eq!(d.host_offset, 0x9eeb1);
        assert_eq!(d.sectors, 1);
        assert_eq!(d.length(), 512 - 0xb1);
        assert_eq!(d.end(), Some(0x9f000));
    }

    #[test]
    fn compressed_descriptor_round_trips() {
        for bits in [9, 12, 16, 21] {
            let g = geo(bits);
            for (host, len) in [
                (0x1234u64, 1u64),
                (0x10000, 512),
                (0x10001, 512),
                (0x7ff, 1 << bits),
            ] {
                let entry = CompressedDescriptor::encode(host, len, &g).unwrap();
                let d = CompressedDescriptor::decode(entry, &g);
                assert_eq!(d.host_offset, host);
                assert!(
                    d.length() >= len && d.length() < len + 1024,
                    "{bits} {host} {len}"
                );
            }
            // Longer than the sector field can count.
            assert!(CompressedDescriptor::encode(0, (2 << bits) + 1, &g).is_none());
        }
        // 512-byte clusters: the field holds 0 or 1 extra sector.
        let g = geo(9);
        assert_eq!(g.csize_shift(), 61);
        let d = CompressedDescriptor::decode(OFLAG_COMPRESSED | 1 << 61 | 0x600, &g);
        assert_eq!((d.host_offset, d.sectors), (0x600, 2));
    }

    #[test]
    fn subcluster_bitmap() {
        let bitmap = 0b101u64 | (0b1010u64 << 32);
        assert_eq!(subcluster_state(bitmap, 0), SubclusterState::Allocated);
        assert_eq!(subcluster_state(bitmap, 1), SubclusterState::Zero);
        assert_eq!(subcluster_state(bitmap, 2), SubclusterState::Allocated);
        assert_eq!(subcluster_state(bitmap, 3), SubclusterState::Zero);
        assert_eq!(subcluster_state(bitmap, 4), SubclusterState::Unallocated);
        assert_eq!(subcluster_state(1 | 1 << 32, 0), SubclusterState::Invalid);
        assert_eq!(subcluster_state(1 << 31, 31), SubclusterState::Allocated);
    }

    #[test]
    fn refcounts_of_every_width() {
        for order in 0..=6u32 {
            let bits = 1u32 << order;
            let mut block = vec![0u8; 64];
            let entries = 64 * 8 / u64::from(bits);
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            for i in 0..entries {
                assert!(set_refcount(&mut block, i, order, (i * 7 + 1) & max));
            }
            for i in 0..entries {
                assert_eq!(
                    get_refcount(&block, i, order),
                    Some((i * 7 + 1) & max),
                    "order {order}"
                );
            }
            assert_eq!(get_refcount(&block, entries, order), None);
            assert!(!set_refcount(&mut block, entries, order, 0));
            if bits < 64 {
                assert!(!set_refcount(&mut block, 0, order, 1 << bits));
            }
        }
        // 16-bit refcounts are big-endian; 1-bit ones start at the least significant bit.
        assert_eq!(get_refcount(&[0x01, 0x02], 0, 4), Some(0x0102));
        assert_eq!(get_refcount(&[0b0000_0010], 1, 0), Some(1));
        assert_eq!(refcount_block_offset(0x0000_0000_0002_01ff), 0x20000);
    }

    #[test]
    fn decodes_big_endian_tables() {
        assert_eq!(
            decode_table(&[0, 0, 0, 0, 0, 1, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 1, 9]),
            vec![0x10000, 0xff00_0000_0000_0001]
        );
    }
}
