//! The hosted sparse extent header (`KDMV`): 512 bytes at the start of every monolithicSparse,
//! streamOptimized and split sparse extent file (and, in the stream layout, its copy in the
//! footer). All fields are little-endian; offsets are in 512-byte sectors. See formats/vmdk.md,
//! "Hosted sparse extents".

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{Error, Result};
use crate::limits::{MAX_GRAIN_SECTORS, MAX_GTES_PER_GT, MAX_VMDK_DISK_BYTES};

/// Bytes per sector: VMDK counts offsets and sizes in 512-byte sectors.
pub(crate) const SECTOR: u64 = 512;
pub(crate) const HEADER_SIZE: usize = 512;
pub(crate) const MAGIC: &[u8; 4] = b"KDMV";
/// `flags` bit 0: the four newline characters are valid (detects text-mode transfers).
pub const FLAG_NEWLINE_TEST: u32 = 1 << 0;
/// Bit 1: a redundant GD and GTs exist (ims reads only the primary ones).
pub const FLAG_REDUNDANT_GT: u32 = 1 << 1;
/// Bit 2: a GTE of 1 is a zeroed grain.
pub const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
/// Bit 16: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Bit 17: grains and metadata carry markers (streamOptimized).
pub const FLAG_MARKERS: u32 = 1 << 17;
/// Every flag the format defines; the specification says the others are zero.
pub const KNOWN_FLAGS: u32 =
    FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT | FLAG_ZEROED_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS;
/// `gdOffset` of a streamOptimized header whose GD lies at the end (the footer gives it).
pub const GD_AT_END: u64 = u64::MAX;
/// `compressAlgorithm`: deflate in a zlib stream.
pub const COMPRESSION_DEFLATE: u16 = 1;
/// A GTE of 1 in an extent with [`FLAG_ZEROED_GRAIN`]: the grain reads as zeros.
pub const GTE_ZEROED: u32 = 1;
/// The newline characters of the test, in order.
pub const NEWLINE_CHARS: [u8; 4] = [b'\n', b' ', b'\r', b'\n'];

/// Size of a grain marker's head: `lba` (u64) and `size` (u32).
pub const GRAIN_MARKER_HEAD: u64 = 12;

/// The largest compressed grain accepted for a grain of `grain_bytes`: deflate's worst case
/// is a few bytes per 16 KiB block over the input, so twice the grain is a generous bound.
pub fn max_compressed(grain_bytes: u64) -> u64 {
    grain_bytes.saturating_mul(2).saturating_add(4096)
}

const S: &str = "vmdk sparse header";

/// The sparse extent header, its fields named as VMware's specification names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// version: 1, 2 (zeroed-grain entries) or 3 (stream-optimized).
    pub version: u32,
    /// flags: the `FLAG_*` bits.
    pub flags: u32,
    /// The extent's size in sectors.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain_size: u64,
    /// descriptorOffset: sector of the embedded descriptor (0 when there is none).
    pub descriptor_offset: u64,
    /// descriptorSize: sectors reserved for the embedded descriptor.
    pub descriptor_size: u64,
    /// numGTEsPerGT: entries per grain table (512 in every known writer).
    pub num_gtes_per_gt: u32,
    /// rgdOffset: sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// gdOffset: sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub over_head: u64,
    /// uncleanShutdown: the extent was not closed cleanly.
    pub unclean_shutdown: u8,
    /// singleEndLineChar, nonEndLineChar, doubleEndLineChar1 and 2: [`NEWLINE_CHARS`].
    pub newline_chars: [u8; 4],
    /// compressAlgorithm: 0 (none) or [`COMPRESSION_DEFLATE`].
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Parses and checks a header read at file `offset`: magic, version, grain size, GT size,
    /// capacity, newline test and compression. Offsets are checked against the file by the
    /// caller, which knows its length.
    pub fn parse(buf: &[u8; HEADER_SIZE], offset: u64) -> Result<SparseHeader> {
        if buf.get(0..4) != Some(&MAGIC[..]) {
            return Err(Error::malformed(S, offset, "no KDMV magic"));
        }
        let u32_at = |i: usize| buf.get(i..i + 4).map_or(0, LittleEndian::read_u32);
        let u64_at = |i: usize| buf.get(i..i + 8).map_or(0, LittleEndian::read_u64);
        let h = SparseHeader {
            version: u32_at(4),
            flags: u32_at(8),
            capacity: u64_at(12),
            grain_size: u64_at(20),
            descriptor_offset: u64_at(28),
            descriptor_size: u64_at(36),
            num_gtes_per_gt: u32_at(44),
            rgd_offset: u64_at(48),
            gd_offset: u64_at(56),
            over_head: u64_at(64),
            unclean_shutdown: buf.get(72).copied().unwrap_or(0),
            newline_chars: [
                buf.get(73).copied().unwrap_or(0),
                buf.get(74).copied().unwrap_or(0),
                buf.get(75).copied().unwrap_or(0),
                buf.get(76).copied().unwrap_or(0),
            ],
            compress_algorithm: buf.get(77..79).map_or(0, LittleEndian::read_u16),
        };
        if !(1..=3).contains(&h.version) {
            return Err(Error::unsupported(format!(
                "vmdk sparse extent version {}",
                h.version
            )));
        }
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(Error::malformed(
                S,
                offset + 8,
                format!(
                    "flags {:#x} set bits the format does not define ({:#x})",
                    h.flags,
                    h.flags & !KNOWN_FLAGS
                ),
            ));
        }
        if h.grain_size == 0 || !h.grain_size.is_power_of_two() {
            return Err(Error::malformed(
                S,
                offset + 20,
                format!("grain size {} sectors is not a power of two", h.grain_size),
            ));
        }
        if h.grain_size > MAX_GRAIN_SECTORS {
            return Err(Error::limit(
                S,
                offset + 20,
                format!(
                    "grain of {} sectors (ims reads at most {MAX_GRAIN_SECTORS})",
                    h.grain_size
                ),
            ));
        }
        if h.num_gtes_per_gt == 0 || h.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(Error::malformed(
                S,
                offset + 44,
                format!(
                    "{} entries per grain table (1 to {MAX_GTES_PER_GT})",
                    h.num_gtes_per_gt
                ),
            ));
        }
        if h.capacity
            .checked_mul(SECTOR)
            .is_none_or(|b| b > MAX_VMDK_DISK_BYTES)
        {
            return Err(Error::limit(
                S,
                offset + 12,
                format!(
                    "capacity of {} sectors is over {MAX_VMDK_DISK_BYTES} bytes",
                    h.capacity
                ),
            ));
        }
        if h.flags & FLAG_NEWLINE_TEST != 0 && h.newline_chars != NEWLINE_CHARS {
            return Err(Error::malformed(
                S,
                offset + 73,
                "newline test characters altered (was the file copied in text mode?)",
            ));
        }
        if h.flags & FLAG_COMPRESSED != 0 && h.compress_algorithm != COMPRESSION_DEFLATE {
            return Err(Error::unsupported(format!(
                "vmdk compression algorithm {}",
                h.compress_algorithm
            )));
        }
        Ok(h)
    }

    /// The header's 512 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        LittleEndian::write_u32(&mut b[4..8], self.version);
        LittleEndian::write_u32(&mut b[8..12], self.flags);
        LittleEndian::write_u64(&mut b[12..20], self.capacity);
        LittleEndian::write_u64(&mut b[20..28], self.grain_size);
        LittleEndian::write_u64(&mut b[28..36], self.descriptor_offset);
        LittleEndian::write_u64(&mut b[36..44], self.descriptor_size);
        LittleEndian::write_u32(&mut b[44..48], self.num_gtes_per_gt);
        LittleEndian::write_u64(&mut b[48..56], self.rgd_offset);
        LittleEndian::write_u64(&mut b[56..64], self.gd_offset);
        LittleEndian::write_u64(&mut b[64..72], self.over_head);
        b[72] = self.unclean_shutdown;
        b[73..77].copy_from_slice(&self.newline_chars);
        LittleEndian::write_u16(&mut b[77..79], self.compress_algorithm);
        b
    }

    /// Grains are compressed ([`FLAG_COMPRESSED`]).
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Grains and metadata open with markers ([`FLAG_MARKERS`]).
    pub fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// A grain table entry of 1 means a zeroed grain ([`FLAG_ZEROED_GRAIN`]).
    pub fn zeroed_grain(&self) -> bool {
        self.flags & FLAG_ZEROED_GRAIN != 0
    }

    /// Bytes per grain (at most [`MAX_GRAIN_SECTORS`] × 512, checked by `parse`).
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * SECTOR
    }

    /// The extent's size in bytes (checked by `parse`).
    pub fn disk_bytes(&self) -> u64 {
        self.capacity * SECTOR
    }

    /// Grains in the extent.
    pub fn grains(&self) -> u64 {
        self.capacity.div_ceil(self.grain_size)
    }

    /// Entries in the grain directory: one per GT of `num_gtes_per_gt` grains.
    pub fn gd_entries(&self) -> u64 {
        self.grains().div_ceil(u64::from(self.num_gtes_per_gt))
    }

    /// Bytes of one grain table.
    pub fn gt_bytes(&self) -> u64 {
        u64::from(self.num_gtes_per_gt) * 4
    }

    /// Sectors of one grain table: what a stream's grain-table marker must say.
    pub fn gt_sectors(&self) -> u64 {
        self.gt_bytes().div_ceil(SECTOR)
    }

    /// Sectors of the grain directory: what a stream's grain-directory marker must say.
    pub fn gd_sectors(&self) -> u64 {
        (self.gd_entries() * 4).div_ceil(SECTOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// qemu-img 10's monolithicSparse header for an 8 MiB disk.
    fn qemu_header() -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let head: [u8; 79] = [
            0x4b, 0x44, 0x4d, 0x56, 0x01, 0, 0, 0, 0x03, 0, 0, 0, 0x00, 0x40, 0, 0, 0, 0, 0, 0,
            0x80, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0, 0, 0x00,
            0x02, 0, 0, 0x15, 0, 0, 0, 0, 0, 0, 0, 0x1a, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0,
            0, 0, 0x00, 0x0a, 0x20, 0x0d, 0x0a, 0x00, 0x00,
        ];
        b[..79].copy_from_slice(&head);
        b
    }

    #[test]
    fn parses_qemu_img_header_and_writes_it_back() {
        let b = qemu_header();
        let h = SparseHeader::parse(&b, 0).unwrap();
        assert_eq!(h.version, 1);
        assert_eq!(h.flags, FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT);
        assert_eq!(h.capacity, 16384);
        assert_eq!(h.grain_size, 128);
        assert_eq!((h.descriptor_offset, h.descriptor_size), (1, 20));
        assert_eq!(h.num_gtes_per_gt, 512);
        assert_eq!((h.rgd_offset, h.gd_offset, h.over_head), (21, 26, 128));
        assert_eq!(h.gd_entries(), 1);
        assert_eq!(h.to_bytes(), b);
    }

    #[test]
    fn refuses_bad_fields() {
        let set = |at: usize, bytes: &[u8]| {
            let mut b = qemu_header();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            SparseHeader::parse(&b, 0).map(|_| ()).unwrap_err().kind()
        };
        assert_eq!(set(0, b"KDMX"), "malformed");
        assert_eq!(set(4, &[9]), "unsupported");
        assert_eq!(set(20, &[100]), "malformed");
        assert_eq!(set(20, &[0]), "malformed");
        assert_eq!(set(20, &[0, 0, 1]), "limit-exceeded");
        assert_eq!(set(44, &[0, 4]), "malformed");
        assert_eq!(set(12, &[0xff; 8]), "limit-exceeded");
        assert_eq!(set(73, b"\n \n\n"), "malformed");
        assert_eq!(set(8, &[0, 0, 1]), "unsupported");
    }
}
