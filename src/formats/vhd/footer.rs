//! The VHD footer ("hard disk footer"): the 512-byte record at the end of every VHD, copied to
//! offset 0 in dynamic and differencing disks. All fields are big-endian.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};

pub(crate) const FOOTER_SIZE: usize = 512;
pub(crate) const COOKIE: &[u8; 8] = b"conectix";
/// `features`: bit 1 is reserved and always set.
pub const FEATURES_RESERVED: u32 = 0x2;
/// `features`: bit 0, the disk is temporary (a candidate for deletion on shutdown).
pub const FEATURES_TEMPORARY: u32 = 0x1;
/// Every `features` bit the specification defines; the others "are also reserved and should be
/// set to 0", and a footer with one set is refused.
pub const FEATURES_KNOWN: u32 = FEATURES_RESERVED | FEATURES_TEMPORARY;
/// `file_format_version`: 1.0, the only version.
pub const FILE_FORMAT_VERSION: u32 = 0x0001_0000;
/// `data_offset` of a fixed disk: no dynamic header.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01 00:00:00 UTC.
pub const VHD_EPOCH: u64 = 946_684_800;
/// The largest CHS geometry (65535 cylinders, 16 heads, 255 sectors per track).
pub const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;

/// The footer's `disk_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskType {
    /// 2: the disk's bytes, then the footer.
    Fixed,
    /// 3: blocks allocated on write, found through the BAT.
    Dynamic,
    /// 4: a dynamic disk whose unallocated blocks read from a parent.
    Differencing,
}

impl DiskType {
    pub(crate) fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// `disk_geometry`: cylinders, heads, sectors per track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders (at most 65535).
    pub cylinders: u16,
    /// Heads (at most 16).
    pub heads: u8,
    /// Sectors per track (at most 255).
    pub sectors_per_track: u8,
}

impl Geometry {
    /// Sectors the geometry addresses.
    pub fn sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    /// The geometry the VHD specification's algorithm gives for `total_sectors` (it rounds
    /// down; callers that must not lose data search upwards).
    pub fn for_sectors(total_sectors: u64) -> Geometry {
        let total = total_sectors.min(MAX_GEOMETRY_SECTORS);
        let (sectors_per_track, heads, cylinders_times_heads);
        if total >= 65535 * 16 * 63 {
            sectors_per_track = 255;
            heads = 16;
            cylinders_times_heads = total / 255;
        } else {
            let mut spt = 17;
            let mut cth = total / 17;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                spt = 31;
                h = 16;
                cth = total / 31;
            }
            if cth >= h * 1024 {
                spt = 63;
                h = 16;
                cth = total / 63;
            }
            sectors_per_track = spt;
            heads = h;
            cylinders_times_heads = cth;
        }
        Geometry {
            // Each value is bounded by the branches above (heads ≤ 16, cylinders ≤ 65535).
            cylinders: u16::try_from(cylinders_times_heads / heads).unwrap_or(u16::MAX),
            heads: u8::try_from(heads).unwrap_or(16),
            sectors_per_track: u8::try_from(sectors_per_track).unwrap_or(255),
        }
    }
}

/// Which field gives the disk's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SizeSource {
    /// cylinders × heads × sectors per track × 512 (Virtual PC and old qemu).
    Geometry,
    /// The footer's `current_size` (everyone else).
    CurrentSize,
}

impl SizeSource {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SizeSource::Geometry => "geometry",
            SizeSource::CurrentSize => "current_size",
        }
    }
}

/// The footer's fields, named as the VHD specification names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// features: flag bits; [`FEATURES_RESERVED`] is always set.
    pub features: u32,
    /// file_format_version: [`FILE_FORMAT_VERSION`].
    pub file_format_version: u32,
    /// data_offset: where the dynamic header is; [`NO_DATA_OFFSET`] for a fixed disk.
    pub data_offset: u64,
    /// time_stamp: creation time, in seconds since 2000-01-01 UTC ([`VHD_EPOCH`]).
    pub time_stamp: u32,
    /// creator_application: the tool that made the file (`vpc `, `qemu`, `win `, ...).
    pub creator_application: [u8; 4],
    /// creator_version: that tool's version.
    pub creator_version: u32,
    /// creator_host_os: the host it ran on (`Wi2k`, `Mac `).
    pub creator_host_os: [u8; 4],
    /// original_size: the disk's size in bytes when it was created.
    pub original_size: u64,
    /// current_size: the disk's size in bytes now.
    pub current_size: u64,
    /// disk_geometry: the CHS geometry, which some creators size the disk by.
    pub disk_geometry: Geometry,
    /// disk_type: fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// checksum: one's complement of the footer's byte sum.
    pub checksum: u32,
    /// unique_id: identifies the disk; a child names its parent by it.
    pub unique_id: [u8; 16],
    /// saved_state: 1 when the disk is in a saved state (a suspended VM).
    pub saved_state: u8,
}

/// The one's complement of the byte sum of `record`, with the 4 checksum bytes at
/// `checksum_at` counted as zero (the footer's and the dynamic header's rule).
pub fn checksum(record: &[u8], checksum_at: usize) -> u32 {
    let sum = record.iter().enumerate().fold(0u32, |acc, (i, &b)| {
        if (checksum_at..checksum_at + 4).contains(&i) {
            acc
        } else {
            acc.wrapping_add(u32::from(b))
        }
    });
    !sum
}

impl Footer {
    /// Parses a footer read at file `offset`; the cookie, checksum and disk type must be right,
    /// no `features` bit outside [`FEATURES_KNOWN`] may be set (bit 1, which the specification
    /// says is always set, may be clear: old tools leave it so), and `current_size` must be a
    /// whole number of sectors.
    pub fn parse(buf: &[u8; FOOTER_SIZE], offset: u64) -> Result<Footer> {
        const S: &str = "vhd footer";
        if &buf[0..8] != COOKIE {
            return Err(Error::malformed(S, offset, "no 'conectix' cookie"));
        }
        let stored = BigEndian::read_u32(&buf[64..68]);
        let computed = checksum(buf, 64);
        if stored != computed {
            return Err(Error::malformed(
                S,
                offset,
                format!(
                    "checksum {stored:#010x} does not match the footer's bytes ({computed:#010x})"
                ),
            ));
        }
        let disk_type = match BigEndian::read_u32(&buf[60..64]) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            other => {
                return Err(Error::malformed(
                    S,
                    offset + 60,
                    format!("unknown disk type {other}"),
                ));
            }
        };
        let features = BigEndian::read_u32(&buf[8..12]);
        if features & !FEATURES_KNOWN != 0 {
            return Err(Error::malformed(
                S,
                offset + 8,
                format!(
                    "features {features:#010x} sets bits the specification reserves as zero \
                     (only {FEATURES_KNOWN:#x} are defined)"
                ),
            ));
        }
        let current_size = BigEndian::read_u64(&buf[48..56]);
        if current_size % 512 != 0 {
            return Err(Error::malformed(
                S,
                offset + 48,
                format!("current size {current_size} is not a whole number of 512-byte sectors"),
            ));
        }
        let mut creator_application = [0u8; 4];
        creator_application.copy_from_slice(&buf[28..32]);
        let mut creator_host_os = [0u8; 4];
        creator_host_os.copy_from_slice(&buf[36..40]);
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(&buf[68..84]);
        Ok(Footer {
            features,
            file_format_version: BigEndian::read_u32(&buf[12..16]),
            data_offset: BigEndian::read_u64(&buf[16..24]),
            time_stamp: BigEndian::read_u32(&buf[24..28]),
            creator_application,
            creator_version: BigEndian::read_u32(&buf[32..36]),
            creator_host_os,
            original_size: BigEndian::read_u64(&buf[40..48]),
            current_size,
            disk_geometry: Geometry {
                cylinders: BigEndian::read_u16(&buf[56..58]),
                heads: buf[58],
                sectors_per_track: buf[59],
            },
            disk_type,
            checksum: stored,
            unique_id,
            saved_state: buf[84],
        })
    }

    /// The 512 bytes of this footer, with the checksum computed.
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        BigEndian::write_u32(&mut b[8..12], self.features);
        BigEndian::write_u32(&mut b[12..16], self.file_format_version);
        BigEndian::write_u64(&mut b[16..24], self.data_offset);
        BigEndian::write_u32(&mut b[24..28], self.time_stamp);
        b[28..32].copy_from_slice(&self.creator_application);
        BigEndian::write_u32(&mut b[32..36], self.creator_version);
        b[36..40].copy_from_slice(&self.creator_host_os);
        BigEndian::write_u64(&mut b[40..48], self.original_size);
        BigEndian::write_u64(&mut b[48..56], self.current_size);
        BigEndian::write_u16(&mut b[56..58], self.disk_geometry.cylinders);
        b[58] = self.disk_geometry.heads;
        b[59] = self.disk_geometry.sectors_per_track;
        BigEndian::write_u32(&mut b[60..64], self.disk_type.code());
        b[68..84].copy_from_slice(&self.unique_id);
        b[84] = self.saved_state;
        let sum = checksum(&b, 64);
        BigEndian::write_u32(&mut b[64..68], sum);
        b
    }

    /// The disk's size and where it came from: the CHS geometry for images made by Virtual PC
    /// (`vpc `) and old qemu (`qemu`), the footer's `current_size` for every other creator and
    /// whenever the geometry is the largest one (which cannot describe bigger disks). See
    /// formats/vhd.md for the sources.
    pub fn virtual_size(&self) -> (u64, SizeSource) {
        let geometry_sectors = self.disk_geometry.sectors();
        let chs_creator = matches!(&self.creator_application, b"vpc " | b"qemu");
        if chs_creator && geometry_sectors != MAX_GEOMETRY_SECTORS {
            (geometry_sectors * 512, SizeSource::Geometry)
        } else {
            (self.current_size, SizeSource::CurrentSize)
        }
    }

    /// The creator application as text, for `info`.
    pub fn creator(&self) -> String {
        String::from_utf8_lossy(&self.creator_application)
            .trim_end_matches(['\0', ' '])
            .to_string()
    }
}

/// Formats a 16-byte unique id as a UUID string.
pub fn uuid_string(id: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*id).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Footer {
        Footer {
            features: FEATURES_RESERVED,
            file_format_version: FILE_FORMAT_VERSION,
            data_offset: 512,
            time_stamp: 0x2ce6ad80,
            creator_application: *b"win ",
            creator_version: 0x000a_0000,
            creator_host_os: *b"Wi2k",
            original_size: 10 << 20,
            current_size: 10 << 20,
            disk_geometry: Geometry::for_sectors(20480),
            disk_type: DiskType::Dynamic,
            checksum: 0,
            unique_id: [7; 16],
            saved_state: 0,
        }
    }

    #[test]
    fn round_trips_and_checks_the_checksum() {
        let f = sample();
        let bytes = f.to_bytes();
        assert_eq!(&bytes[0..8], b"conectix");
        assert_eq!(&bytes[28..32], b"win ");
        assert_eq!(BigEndian::read_u32(&bytes[60..64]), 3);
        let back = Footer::parse(&bytes, 0).unwrap();
        assert_eq!(back.checksum, checksum(&bytes, 64));
        assert_eq!(
            Footer {
                checksum: 0,
                ..back
            },
            f
        );
        let mut bad = bytes;
        bad[100] ^= 1;
        assert_eq!(Footer::parse(&bad, 0).unwrap_err().kind(), "malformed");
        let mut typ = f.to_bytes();
        BigEndian::write_u32(&mut typ[60..64], 5);
        let sum = checksum(&typ, 64);
        BigEndian::write_u32(&mut typ[64..68], sum);
        assert!(
            Footer::parse(&typ, 0)
                .unwrap_err()
                .to_string()
                .contains("disk type 5")
        );
    }

    #[test]
    fn reserved_feature_bits_and_partial_sectors_are_refused() {
        let reseal = |f: &mut [u8; FOOTER_SIZE]| {
            let sum = checksum(f, 64);
            BigEndian::write_u32(&mut f[64..68], sum);
        };
        for (features, ok) in [
            (0, true),
            (FEATURES_RESERVED, true),
            (FEATURES_RESERVED | FEATURES_TEMPORARY, true),
            (0x4, false),
            (0x8000_0002, false),
        ] {
            let mut b = sample().to_bytes();
            BigEndian::write_u32(&mut b[8..12], features);
            reseal(&mut b);
            let r = Footer::parse(&b, 1024);
            assert_eq!(r.is_ok(), ok, "features {features:#x}");
            if let Err(e) = r {
                assert!(e.to_string().contains("offset 0x408"), "{e}");
            }
        }
        let mut b = sample().to_bytes();
        BigEndian::write_u64(&mut b[48..56], (10 << 20) + 1);
        reseal(&mut b);
        let e = Footer::parse(&b, 0).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
    }

    #[test]
    fn geometry_follows_the_specification_algorithm() {
        // Values from the algorithm in the VHD specification's appendix.
        assert_eq!(
            Geometry::for_sectors(20480),
            Geometry {
                cylinders: 301,
                heads: 4,
                sectors_per_track: 17
            }
        );
        let g = Geometry::for_sectors(127 << 21);
        assert_eq!((g.heads, g.sectors_per_track), (16, 255));
        assert_eq!(
            Geometry::for_sectors(u64::MAX).sectors(),
            MAX_GEOMETRY_SECTORS
        );
    }

    #[test]
    fn size_rule_depends_on_the_creator() {
        let mut f = sample();
        f.current_size = 10 << 20;
        assert_eq!(f.virtual_size(), (10 << 20, SizeSource::CurrentSize));
        f.creator_application = *b"vpc ";
        assert_eq!(f.virtual_size(), (20468 * 512, SizeSource::Geometry));
        f.disk_geometry = Geometry {
            cylinders: 65535,
            heads: 16,
            sectors_per_track: 255,
        };
        assert_eq!(f.virtual_size().1, SizeSource::CurrentSize);
    }
}
