//! The header/footer record shared by ZVHD and ZVHD2: one 4096-byte page whose first 512 bytes
//! hold the fields (a VHD footer's layout, little-endian), with ZVHD2's index and bitmap fields
//! in the space ZVHD leaves reserved, and a checksum over those 512 bytes.
//!
//! [`ZvhdHeader::decode`] only decodes; the checks are separate ([`verify_checksum`],
//! [`ZvhdHeader::check_sizes`]) because the two formats check different copies. The layout is
//! described in `formats/zvhd.md`.

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{Error, Result};

use super::{BLOCK_SIZE, PAGE};

/// Bytes of the record that carry fields; the checksum covers exactly these.
pub const FIELDS_LEN: usize = 512;
/// The cookie of a ZVHD file (readers compare its first 6 bytes).
pub const ZVHD_COOKIE: [u8; 8] = *b"stream\0\0";
/// The cookie of a ZVHD2 file.
pub const ZVHD2_COOKIE: [u8; 8] = *b"z2strm\0\0";
/// How many bytes of the cookie readers compare.
pub const COOKIE_COMPARED: usize = 6;
/// `features` as written.
pub const FEATURES: u32 = 2;
/// `ff_version` as written (1.0).
pub const FF_VERSION: u32 = 0x0001_0000;
/// `data_offset` as written (none).
pub const DATA_OFFSET: u64 = u64::MAX;
/// `crtr_app` as written.
pub const CREATOR_APP: [u8; 4] = *b"tap\0";
/// `crtr_ver` as written (1.4).
pub const CREATOR_VERSION: u32 = 0x0001_0004;
/// `type` as written.
pub const DISK_TYPE: u32 = 4;
/// `zvhd2_version` as written.
pub const ZVHD2_VERSION: u8 = 1;
/// The `orig_size` to `curr_size` rounding: a whole GiB.
pub const CURR_SIZE_ALIGN: u64 = 1 << 30;
/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC, the timestamp's epoch.
pub const TIMESTAMP_EPOCH: u64 = 946_684_800;

/// Field offsets inside the 512 bytes.
mod off {
    pub const COOKIE: usize = 0;
    pub const FEATURES: usize = 8;
    pub const FF_VERSION: usize = 12;
    pub const DATA_OFFSET: usize = 16;
    pub const TIMESTAMP: usize = 24;
    pub const CRTR_APP: usize = 28;
    pub const CRTR_VER: usize = 32;
    pub const CRTR_OS: usize = 36;
    pub const ORIG_SIZE: usize = 40;
    pub const CURR_SIZE: usize = 48;
    pub const GEOMETRY: usize = 56;
    pub const TYPE: usize = 60;
    pub const CHECKSUM: usize = 64;
    pub const UUID: usize = 68;
    pub const SAVED: usize = 84;
    pub const HIDDEN: usize = 85;
    pub const ALIGN_64: usize = 86;
    pub const ZVHD2_VERSION: usize = 87;
    pub const BLOCK_SIZE: usize = 88;
    pub const MAX_BLK_NUM: usize = 92;
    pub const INDEX_LBA: usize = 96;
    pub const BITMAP_LBA: usize = 104;
    pub const INDEX_SIZE: usize = 112;
    pub const BITMAP_SIZE: usize = 116;
    pub const INDEX_SEG_SIZE: usize = 120;
    pub const BITMAP_SEG_SIZE: usize = 124;
    pub const INDEX_SEG_NUM: usize = 128;
    pub const BITMAP_SEG_NUM: usize = 132;
    pub const NON_ZERO_BLK_NUM: usize = 136;
    pub const INDEX_CONTAINS_ZERO_BLK: usize = 140;
    pub const COMPRESS_METHOD: usize = 141;
}

/// Offset of `non_zero_blk_num`, the one field the ZVHD2 middle footer changes.
pub const NON_ZERO_BLK_NUM_OFFSET: usize = off::NON_ZERO_BLK_NUM;

/// Which of the two formats a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Kind {
    Zvhd,
    Zvhd2,
}

impl Kind {
    pub fn cookie(self) -> [u8; 8] {
        match self {
            Kind::Zvhd => ZVHD_COOKIE,
            Kind::Zvhd2 => ZVHD2_COOKIE,
        }
    }
}

/// Every field of the record, named as the reference driver names it. ZVHD leaves the ZVHD2
/// fields zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZvhdHeader {
    /// cookie: `stream\0\0` (ZVHD) or `z2strm\0\0` (ZVHD2).
    pub cookie: [u8; 8],
    /// features: VHD feature bits (2: the reserved bit).
    pub features: u32,
    /// ff_version: file format version, 0x00010000.
    pub ff_version: u32,
    /// data_offset: unused, all ones.
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    /// crtr_app: the creator application (`tap\0`).
    pub crtr_app: [u8; 4],
    /// crtr_ver: the creator's version.
    pub crtr_ver: u32,
    /// crtr_os: the creator's host OS (0).
    pub crtr_os: u32,
    /// The disk's real size in bytes (a multiple of 512).
    pub orig_size: u64,
    /// `orig_size` rounded up to a whole GiB: the size the reference reports.
    pub curr_size: u64,
    /// geometry: VHD CHS geometry of `orig_size` (cylinders << 16, heads << 8, sectors);
    /// informational.
    pub geometry: u32,
    /// type: the VHD disk type (4).
    pub disk_type: u32,
    /// checksum: complement of the byte sum of the 512 field bytes.
    pub checksum: u32,
    /// uuid: random, identifies the image.
    pub uuid: [u8; 16],
    /// saved: VHD saved state (0).
    pub saved: u8,
    /// hidden: 0; set only by blktap's old checksum rule.
    pub hidden: u8,
    /// align_64: 0.
    pub align_64: u8,
    /// zvhd2_version: 1 in ZVHD2, 0 in ZVHD.
    pub zvhd2_version: u8,
    /// block_size: bytes of disk per block (2 MiB).
    pub block_size: u32,
    /// max_blk_num: blocks in `orig_size`, rounded up.
    pub max_blk_num: u32,
    /// index_lba: where the index starts, in bytes (final footer only).
    pub index_lba: u64,
    /// bitmap_lba: where the bitmap starts, in bytes (final footer only).
    pub bitmap_lba: u64,
    /// index_size: bytes of index (`index_seg_num` segments).
    pub index_size: u32,
    /// bitmap_size: bytes of bitmap (`bitmap_seg_num` segments).
    pub bitmap_size: u32,
    /// index_seg_size: bytes per index segment.
    pub index_seg_size: u32,
    /// bitmap_seg_size: bytes per bitmap segment.
    pub bitmap_seg_size: u32,
    /// index_seg_num: index segments.
    pub index_seg_num: u32,
    /// bitmap_seg_num: bitmap segments.
    pub bitmap_seg_num: u32,
    /// non_zero_blk_num: blocks with a record (data blocks).
    pub non_zero_blk_num: u32,
    /// index_contains_zero_blk: 0 (the index lists data blocks only).
    pub index_contains_zero_blk: u8,
    /// compress_method: 0 zlib, 1 zstd.
    pub compress_method: u8,
}

impl ZvhdHeader {
    /// A fresh header as the reference writer makes it at creation (ZVHD2's index fields 0).
    /// `orig_size` must be a non-zero multiple of 512 (see [`orig_size_for`]).
    pub(crate) fn new(
        kind: Kind,
        orig_size: u64,
        timestamp: u32,
        uuid: [u8; 16],
        compress_method: u8,
    ) -> Result<Self> {
        let curr_size = curr_size_for(orig_size).ok_or_else(|| {
            Error::InvalidArgument(format!("disk size {orig_size} is too large for ZVHD"))
        })?;
        let zvhd2 = kind == Kind::Zvhd2;
        let max_blk_num = if zvhd2 {
            u32::try_from(orig_size.div_ceil(BLOCK_SIZE)).map_err(|_| {
                Error::InvalidArgument(format!(
                    "disk size {orig_size} needs more than 2^32 blocks of 2 MiB"
                ))
            })?
        } else {
            0
        };
        Ok(ZvhdHeader {
            cookie: kind.cookie(),
            features: FEATURES,
            ff_version: FF_VERSION,
            data_offset: DATA_OFFSET,
            timestamp,
            crtr_app: CREATOR_APP,
            crtr_ver: CREATOR_VERSION,
            crtr_os: 0,
            orig_size,
            curr_size,
            geometry: geometry(orig_size),
            disk_type: DISK_TYPE,
            checksum: 0,
            uuid,
            saved: 0,
            hidden: 0,
            align_64: 0,
            zvhd2_version: if zvhd2 { ZVHD2_VERSION } else { 0 },
            block_size: if zvhd2 { BLOCK_SIZE as u32 } else { 0 },
            max_blk_num,
            index_lba: 0,
            bitmap_lba: 0,
            index_size: 0,
            bitmap_size: 0,
            index_seg_size: 0,
            bitmap_seg_size: 0,
            index_seg_num: 0,
            bitmap_seg_num: 0,
            non_zero_blk_num: 0,
            index_contains_zero_blk: 0,
            compress_method: if zvhd2 { compress_method } else { 0 },
        })
    }

    /// Decodes the fields of `bytes` without checking anything.
    pub fn decode(bytes: &[u8; FIELDS_LEN]) -> Self {
        let u32_at = |o: usize| LittleEndian::read_u32(&bytes[o..o + 4]);
        let u64_at = |o: usize| LittleEndian::read_u64(&bytes[o..o + 8]);
        let mut cookie = [0u8; 8];
        cookie.copy_from_slice(&bytes[off::COOKIE..off::COOKIE + 8]);
        let mut crtr_app = [0u8; 4];
        crtr_app.copy_from_slice(&bytes[off::CRTR_APP..off::CRTR_APP + 4]);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&bytes[off::UUID..off::UUID + 16]);
        ZvhdHeader {
            cookie,
            features: u32_at(off::FEATURES),
            ff_version: u32_at(off::FF_VERSION),
            data_offset: u64_at(off::DATA_OFFSET),
            timestamp: u32_at(off::TIMESTAMP),
            crtr_app,
            crtr_ver: u32_at(off::CRTR_VER),
            crtr_os: u32_at(off::CRTR_OS),
            orig_size: u64_at(off::ORIG_SIZE),
            curr_size: u64_at(off::CURR_SIZE),
            geometry: u32_at(off::GEOMETRY),
            disk_type: u32_at(off::TYPE),
            checksum: u32_at(off::CHECKSUM),
            uuid,
            saved: bytes[off::SAVED],
            hidden: bytes[off::HIDDEN],
            align_64: bytes[off::ALIGN_64],
            zvhd2_version: bytes[off::ZVHD2_VERSION],
            block_size: u32_at(off::BLOCK_SIZE),
            max_blk_num: u32_at(off::MAX_BLK_NUM),
            index_lba: u64_at(off::INDEX_LBA),
            bitmap_lba: u64_at(off::BITMAP_LBA),
            index_size: u32_at(off::INDEX_SIZE),
            bitmap_size: u32_at(off::BITMAP_SIZE),
            index_seg_size: u32_at(off::INDEX_SEG_SIZE),
            bitmap_seg_size: u32_at(off::BITMAP_SEG_SIZE),
            index_seg_num: u32_at(off::INDEX_SEG_NUM),
            bitmap_seg_num: u32_at(off::BITMAP_SEG_NUM),
            non_zero_blk_num: u32_at(off::NON_ZERO_BLK_NUM),
            index_contains_zero_blk: bytes[off::INDEX_CONTAINS_ZERO_BLK],
            compress_method: bytes[off::COMPRESS_METHOD],
        }
    }

    /// The 512 field bytes, with `checksum` as it stands (see [`Self::seal`]).
    pub fn encode(&self) -> [u8; FIELDS_LEN] {
        let mut b = [0u8; FIELDS_LEN];
        let put32 = |b: &mut [u8; FIELDS_LEN], o: usize, v: u32| {
            LittleEndian::write_u32(&mut b[o..o + 4], v)
        };
        b[off::COOKIE..off::COOKIE + 8].copy_from_slice(&self.cookie);
        put32(&mut b, off::FEATURES, self.features);
        put32(&mut b, off::FF_VERSION, self.ff_version);
        LittleEndian::write_u64(&mut b[off::DATA_OFFSET..], self.data_offset);
        put32(&mut b, off::TIMESTAMP, self.timestamp);
        b[off::CRTR_APP..off::CRTR_APP + 4].copy_from_slice(&self.crtr_app);
        put32(&mut b, off::CRTR_VER, self.crtr_ver);
        put32(&mut b, off::CRTR_OS, self.crtr_os);
        LittleEndian::write_u64(&mut b[off::ORIG_SIZE..], self.orig_size);
        LittleEndian::write_u64(&mut b[off::CURR_SIZE..], self.curr_size);
        put32(&mut b, off::GEOMETRY, self.geometry);
        put32(&mut b, off::TYPE, self.disk_type);
        put32(&mut b, off::CHECKSUM, self.checksum);
        b[off::UUID..off::UUID + 16].copy_from_slice(&self.uuid);
        b[off::SAVED] = self.saved;
        b[off::HIDDEN] = self.hidden;
        b[off::ALIGN_64] = self.align_64;
        b[off::ZVHD2_VERSION] = self.zvhd2_version;
        put32(&mut b, off::BLOCK_SIZE, self.block_size);
        put32(&mut b, off::MAX_BLK_NUM, self.max_blk_num);
        LittleEndian::write_u64(&mut b[off::INDEX_LBA..], self.index_lba);
        LittleEndian::write_u64(&mut b[off::BITMAP_LBA..], self.bitmap_lba);
        put32(&mut b, off::INDEX_SIZE, self.index_size);
        put32(&mut b, off::BITMAP_SIZE, self.bitmap_size);
        put32(&mut b, off::INDEX_SEG_SIZE, self.index_seg_size);
        put32(&mut b, off::BITMAP_SEG_SIZE, self.bitmap_seg_size);
        put32(&mut b, off::INDEX_SEG_NUM, self.index_seg_num);
        put32(&mut b, off::BITMAP_SEG_NUM, self.bitmap_seg_num);
        put32(&mut b, off::NON_ZERO_BLK_NUM, self.non_zero_blk_num);
        b[off::INDEX_CONTAINS_ZERO_BLK] = self.index_contains_zero_blk;
        b[off::COMPRESS_METHOD] = self.compress_method;
        b
    }

    /// Sets the checksum over the current fields.
    pub fn seal(&mut self) {
        self.checksum = checksum(&self.encode());
    }

    /// A whole 4096-byte page: the fields, then zeros (the reference leaves bytes 512..4095
    /// uninitialised; we write zeros).
    pub fn page(&self) -> Vec<u8> {
        let mut page = vec![0u8; PAGE as usize];
        page[..FIELDS_LEN].copy_from_slice(&self.encode());
        page
    }

    /// Whether the first 6 bytes of the cookie are `kind`'s.
    pub(crate) fn has_cookie(&self, kind: Kind) -> bool {
        self.cookie[..COOKIE_COMPARED] == kind.cookie()[..COOKIE_COMPARED]
    }

    /// Checks the cookie against `kind`.
    pub(crate) fn check_cookie(
        &self,
        kind: Kind,
        structure: &'static str,
        offset: u64,
    ) -> Result<()> {
        if self.has_cookie(kind) {
            return Ok(());
        }
        Err(Error::malformed(
            structure,
            offset,
            format!(
                "cookie {:?} is not {:?}",
                String::from_utf8_lossy(&self.cookie[..COOKIE_COMPARED]),
                String::from_utf8_lossy(&kind.cookie()[..COOKIE_COMPARED]),
            ),
        ))
    }

    /// Checks `orig_size` and `curr_size` (both formats).
    pub fn check_sizes(&self, structure: &'static str, offset: u64) -> Result<()> {
        if self.orig_size == 0 {
            return Err(Error::malformed(structure, offset, "orig_size is 0"));
        }
        if !self.orig_size.is_multiple_of(512) {
            return Err(Error::malformed(
                structure,
                offset,
                format!("orig_size {} is not a multiple of 512", self.orig_size),
            ));
        }
        match curr_size_for(self.orig_size) {
            Some(c) if c == self.curr_size => Ok(()),
            expected => Err(Error::malformed(
                structure,
                offset,
                format!(
                    "curr_size {} is not orig_size {} rounded up to a GiB ({})",
                    self.curr_size,
                    self.orig_size,
                    expected.map_or_else(|| "overflows".to_string(), |c| c.to_string())
                ),
            )),
        }
    }

    /// The number of 2 MiB blocks the disk's `orig_size` spans.
    pub fn blocks(&self) -> u64 {
        self.orig_size.div_ceil(BLOCK_SIZE)
    }

    /// The creation time as seconds since the Unix epoch.
    pub fn unix_time(&self) -> u64 {
        u64::from(self.timestamp) + TIMESTAMP_EPOCH
    }

    /// The creator application and version, as `tap 1.4`.
    pub fn creator(&self) -> String {
        let app: String = self
            .crtr_app
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
            .collect();
        format!("{app} {}.{}", self.crtr_ver >> 16, self.crtr_ver & 0xffff)
    }
}

/// The checksum of a record: the bitwise NOT of the sum of its 512 field bytes, with the
/// checksum field taken as zero.
pub fn checksum(bytes: &[u8; FIELDS_LEN]) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(off::CHECKSUM..off::CHECKSUM + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// Checks a record's stored checksum, accepting blktap's legacy exception: a record with
/// `hidden` set, written by `tap` 0.1 or 1.1, whose checksum was computed with `hidden` = 0.
pub fn verify_checksum(
    bytes: &[u8; FIELDS_LEN],
    structure: &'static str,
    offset: u64,
) -> Result<()> {
    let stored = LittleEndian::read_u32(&bytes[off::CHECKSUM..off::CHECKSUM + 4]);
    let computed = checksum(bytes);
    if stored == computed {
        return Ok(());
    }
    let h = ZvhdHeader::decode(bytes);
    if h.hidden != 0
        && h.crtr_app[..3] == *b"tap"
        && matches!(h.crtr_ver, 0x0000_0001 | 0x0001_0001)
    {
        let mut copy = *bytes;
        copy[off::HIDDEN] = 0;
        if checksum(&copy) == stored {
            return Ok(());
        }
    }
    Err(Error::malformed(
        structure,
        offset,
        format!("checksum {stored:#010x} does not match the fields ({computed:#010x})"),
    ))
}

/// `orig_size` for a disk of `size` bytes: rounded up to a whole sector.
pub fn orig_size_for(size: u64) -> Option<u64> {
    size.checked_next_multiple_of(512)
}

/// `curr_size` for an `orig_size`: rounded up to a whole GiB.
pub fn curr_size_for(orig_size: u64) -> Option<u64> {
    orig_size.checked_next_multiple_of(CURR_SIZE_ALIGN)
}

/// The VHD cylinder/head/sector geometry of a disk of `orig_size` bytes, packed as
/// `cylinders << 16 | heads << 8 | sectors_per_track`. Informational only.
pub fn geometry(orig_size: u64) -> u32 {
    const MAX_SECTORS: u64 = 65535 * 16 * 255;
    let n = orig_size.div_ceil(512).clamp(1, MAX_SECTORS);
    let (spt, heads) = if n >= 65535 * 16 * 63 {
        (255u64, 16u64)
    } else {
        let mut spt = 17u64;
        let mut cth = n / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = n / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
        }
        (spt, heads)
    };
    let cylinders = n / spt / heads;
    // cylinders < 65536 because n is capped; heads ≤ 16 and spt ≤ 255.
    let cylinders = u32::try_from(cylinders).unwrap_or(u32::from(u16::MAX)) & 0xffff;
    (cylinders << 16) | ((heads as u32) << 8) | spt as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of `empty.zstd.zvhd2`, a vector made by the reference driver.
    pub(crate) fn reference_header() -> [u8; FIELDS_LEN] {
        let file = include_bytes!("../../../testdata/zvhd/empty.zstd.zvhd2");
        let mut out = [0u8; FIELDS_LEN];
        out.copy_from_slice(&file[..FIELDS_LEN]);
        out
    }

    #[test]
    fn decodes_and_checks_the_reference_header() {
        let bytes = reference_header();
        let h = ZvhdHeader::decode(&bytes);
        assert!(h.has_cookie(Kind::Zvhd2));
        assert!(!h.has_cookie(Kind::Zvhd));
        assert_eq!(h.timestamp, 753_315_200);
        assert_eq!(h.unix_time(), 1_700_000_000);
        assert_eq!(h.orig_size, 3 << 20);
        assert_eq!(h.curr_size, 1 << 30);
        assert_eq!(h.geometry, 0x005A_0411);
        assert_eq!(h.checksum, 0xffff_e9b5);
        assert_eq!(h.max_blk_num, 2);
        assert_eq!(h.block_size, 2 << 20);
        assert_eq!(h.compress_method, 1);
        assert_eq!(h.creator(), "tap 1.4");
        verify_checksum(&bytes, "test", 0).unwrap();
        h.check_sizes("test", 0).unwrap();
        assert_eq!(h.encode(), bytes);
        // The writer's fresh header is the same record.
        let mut fresh = ZvhdHeader::new(Kind::Zvhd2, 3 << 20, 753_315_200, h.uuid, 1).unwrap();
        fresh.seal();
        assert_eq!(fresh, h);
    }

    #[test]
    fn a_changed_byte_breaks_the_checksum_but_bytes_past_512_do_not_count() {
        let mut bytes = reference_header();
        bytes[200] = 1;
        let e = verify_checksum(&bytes, "zvhd header", 0).unwrap_err();
        assert_eq!(e.kind(), "malformed");
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn legacy_hidden_exception() {
        let mut h = ZvhdHeader::decode(&reference_header());
        h.crtr_ver = 0x0001_0001;
        h.hidden = 0;
        h.seal();
        h.hidden = 1;
        let bytes = h.encode();
        verify_checksum(&bytes, "test", 0).unwrap();
        // Not for another creator version.
        let mut other = h.clone();
        other.crtr_ver = CREATOR_VERSION;
        other.hidden = 0;
        other.seal();
        other.hidden = 1;
        assert!(verify_checksum(&other.encode(), "test", 0).is_err());
        // Not for another application.
        let mut other = h.clone();
        other.crtr_app = *b"qem\0";
        other.hidden = 0;
        other.seal();
        other.hidden = 1;
        assert!(verify_checksum(&other.encode(), "test", 0).is_err());
    }

    #[test]
    fn sizes_follow_the_reference() {
        assert_eq!(curr_size_for(5_243_392), Some(1 << 30));
        assert_eq!(curr_size_for(67_108_864), Some(1 << 30));
        assert_eq!(curr_size_for(68_723_671_040), Some(69_793_218_560));
        assert_eq!(curr_size_for(u64::MAX - 511), None);
        let mut h = ZvhdHeader::decode(&reference_header());
        h.curr_size = h.orig_size;
        assert!(h.check_sizes("t", 0).is_err());
        h.orig_size = 0;
        assert!(h.check_sizes("t", 0).is_err());
        h.orig_size = 513;
        assert!(h.check_sizes("t", 0).is_err());
    }

    #[test]
    fn geometry_matches_observed_values() {
        assert_eq!(geometry(5_243_392), 0x0096_0411);
        assert_eq!(geometry(67_108_864), 0x03C3_0811);
        assert_eq!(geometry(3 << 20), 0x005A_0411);
        assert_eq!(geometry(40 << 20), 0x03C3_0511);
        assert_eq!(geometry(68_723_671_040), 0x8082_10FF);
        // Extremes do not overflow.
        let _ = geometry(0);
        let _ = geometry(u64::MAX);
    }
}
