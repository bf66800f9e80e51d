//! The volume descriptor set of an ISO 9660 (ECMA-119) image: 2048-byte descriptors from
//! sector 16 up to the set terminator. ims reads the primary volume descriptor (the label, the
//! volume's size, the root directory), a Joliet supplementary descriptor where there is one,
//! and the El Torito boot record, which points at the boot catalog (formats/iso.md).

use crate::error::{Error, Result};
use crate::limits::MAX_ISO_DESCRIPTORS;

/// The size of a volume descriptor, and of the sectors ISO 9660 and El Torito count in.
pub const SECTOR: u64 = 2048;
/// The first volume descriptor's sector: the 32 KiB before it are the system area.
pub const FIRST_DESCRIPTOR_SECTOR: u64 = 16;
/// Every descriptor's standard identifier, at byte 1.
pub const STANDARD_IDENTIFIER: &[u8; 5] = b"CD001";
/// The boot system identifier of an El Torito boot record, padded with zeros to 32 bytes.
pub const EL_TORITO_ID: &[u8] = b"EL TORITO SPECIFICATION";

/// A descriptor's type (byte 0).
const TYPE_BOOT_RECORD: u8 = 0;
const TYPE_PRIMARY: u8 = 1;
const TYPE_SUPPLEMENTARY: u8 = 2;
const TYPE_PARTITION: u8 = 3;
const TYPE_TERMINATOR: u8 = 255;

/// A directory's place on the volume, from its directory record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Its first logical block (of 2048 bytes).
    pub location: u32,
    /// Its length in bytes.
    pub data_length: u32,
}

/// The primary volume descriptor's fields ims uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryVolumeDescriptor {
    /// The system identifier (bytes 8..40), trimmed.
    pub system_identifier: String,
    /// The volume identifier (bytes 40..72), trimmed: the label `blkid` shows.
    pub volume_identifier: String,
    /// The volume's size in logical blocks.
    pub volume_space_size: u32,
    /// The logical block size (2048 on every disc ims reads).
    pub logical_block_size: u16,
    /// The root directory.
    pub root: Extent,
}

impl PrimaryVolumeDescriptor {
    /// The volume's size in bytes.
    pub fn volume_bytes(&self) -> u64 {
        u64::from(self.volume_space_size) * u64::from(self.logical_block_size)
    }
}

/// The volume descriptor set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDescriptorSet {
    /// The primary volume descriptor (the first, where a disc has several).
    pub primary: PrimaryVolumeDescriptor,
    /// The root of the Joliet tree (a supplementary descriptor with a UCS-2 escape sequence).
    pub joliet_root: Option<Extent>,
    /// The sector of the El Torito boot catalog, from the boot record.
    pub boot_catalog: Option<u32>,
    /// How many descriptors the set has, the terminator included.
    pub descriptors: u64,
}

/// A both-byte-order number: the little-endian copy, then the big-endian one; they must agree.
fn both_u32(d: &[u8], at: usize, offset: u64, field: &str) -> Result<u32> {
    let le = d.get(at..at + 4).and_then(|b| b.try_into().ok());
    let be = d.get(at + 4..at + 8).and_then(|b| b.try_into().ok());
    match (le.map(u32::from_le_bytes), be.map(u32::from_be_bytes)) {
        (Some(l), Some(b)) if l == b => Ok(l),
        (Some(l), Some(b)) => Err(Error::malformed(
            "iso volume descriptor",
            offset + at as u64,
            format!("{field}: the little-endian copy says {l}, the big-endian one {b}"),
        )),
        _ => Err(Error::truncated(
            "iso volume descriptor",
            offset + at as u64,
            8,
            0,
        )),
    }
}

fn both_u16(d: &[u8], at: usize, offset: u64, field: &str) -> Result<u16> {
    let le = d.get(at..at + 2).and_then(|b| b.try_into().ok());
    let be = d.get(at + 2..at + 4).and_then(|b| b.try_into().ok());
    match (le.map(u16::from_le_bytes), be.map(u16::from_be_bytes)) {
        (Some(l), Some(b)) if l == b => Ok(l),
        (Some(l), Some(b)) => Err(Error::malformed(
            "iso volume descriptor",
            offset + at as u64,
            format!("{field}: the little-endian copy says {l}, the big-endian one {b}"),
        )),
        _ => Err(Error::truncated(
            "iso volume descriptor",
            offset + at as u64,
            4,
            0,
        )),
    }
}

/// A fixed-width text field, trailing spaces and NULs trimmed.
pub fn text_field(b: &[u8]) -> String {
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The root directory record (34 bytes at 156) of a primary or supplementary descriptor.
fn root_extent(d: &[u8], offset: u64) -> Result<Extent> {
    let record = d.get(156..190).unwrap_or(&[]);
    if record.first() != Some(&34) {
        return Err(Error::malformed(
            "iso root directory record",
            offset + 156,
            format!(
                "the record's length is {}, not 34",
                record.first().copied().unwrap_or(0)
            ),
        ));
    }
    Ok(Extent {
        location: both_u32(d, 156 + 2, offset, "root directory location")?,
        data_length: both_u32(d, 156 + 10, offset, "root directory length")?,
    })
}

fn read_primary(d: &[u8], offset: u64) -> Result<PrimaryVolumeDescriptor> {
    let logical_block_size = both_u16(d, 128, offset, "logical block size")?;
    if logical_block_size != SECTOR as u16 {
        return Err(Error::unsupported(format!(
            "iso images with a logical block size of {logical_block_size} bytes (only 2048)"
        )));
    }
    Ok(PrimaryVolumeDescriptor {
        system_identifier: text_field(d.get(8..40).unwrap_or(&[])),
        volume_identifier: text_field(d.get(40..72).unwrap_or(&[])),
        volume_space_size: both_u32(d, 80, offset, "volume space size")?,
        logical_block_size,
        root: root_extent(d, offset)?,
    })
}

/// Whether a supplementary descriptor's escape sequences (bytes 88..120) name UCS-2 (Joliet:
/// `%/@`, `%/C` or `%/E`, levels 1 to 3).
fn is_joliet(d: &[u8]) -> bool {
    d.get(88..91)
        .is_some_and(|e| matches!(e, b"%/@" | b"%/C" | b"%/E"))
}

impl VolumeDescriptorSet {
    /// Reads the set through `read` (which fills a buffer from an offset of an image of `len`
    /// bytes): every descriptor from sector 16 must carry `CD001` and version 1, there must be
    /// a primary volume descriptor and a terminator within [`MAX_ISO_DESCRIPTORS`], and the
    /// volume the primary descriptor describes must fit in `len`.
    pub fn read(read: &mut dyn FnMut(&mut [u8], u64) -> Result<()>, len: u64) -> Result<Self> {
        let mut primary_vd = None;
        let mut joliet_root = None;
        let mut boot_catalog = None;
        let mut d = vec![0u8; SECTOR as usize];
        for i in 0..MAX_ISO_DESCRIPTORS {
            let offset = (FIRST_DESCRIPTOR_SECTOR + i) * SECTOR;
            if offset + SECTOR > len {
                return Err(Error::truncated(
                    "iso volume descriptor",
                    offset,
                    SECTOR,
                    len.saturating_sub(offset),
                ));
            }
            read(&mut d, offset)?;
            if d.get(1..6) != Some(&STANDARD_IDENTIFIER[..]) || d.get(6) != Some(&1) {
                return Err(Error::malformed(
                    "iso volume descriptor",
                    offset,
                    "no CD001 standard identifier of version 1 (the set ends without a terminator)",
                ));
            }
            match d.first().copied().unwrap_or(TYPE_TERMINATOR) {
                TYPE_TERMINATOR => {
                    let Some(primary) = primary_vd else {
                        return Err(Error::malformed(
                            "iso volume descriptor set",
                            offset,
                            "the set ends without a primary volume descriptor",
                        ));
                    };
                    let set = VolumeDescriptorSet {
                        primary,
                        joliet_root,
                        boot_catalog,
                        descriptors: i + 1,
                    };
                    set.check_fits(len)?;
                    return Ok(set);
                }
                TYPE_PRIMARY if primary_vd.is_none() => {
                    primary_vd = Some(read_primary(&d, offset)?)
                }
                TYPE_SUPPLEMENTARY if joliet_root.is_none() && is_joliet(&d) => {
                    joliet_root = Some(root_extent(&d, offset)?);
                }
                TYPE_BOOT_RECORD if d.get(7..7 + EL_TORITO_ID.len()) == Some(EL_TORITO_ID) => {
                    if boot_catalog.is_some() {
                        return Err(Error::malformed(
                            "el torito boot record",
                            offset,
                            "a second El Torito boot record",
                        ));
                    }
                    let at = d.get(0x47..0x4b).and_then(|b| b.try_into().ok());
                    boot_catalog = at.map(u32::from_le_bytes);
                }
                TYPE_PRIMARY | TYPE_SUPPLEMENTARY | TYPE_BOOT_RECORD | TYPE_PARTITION => {}
                other => {
                    return Err(Error::malformed(
                        "iso volume descriptor",
                        offset,
                        format!("unknown volume descriptor type {other}"),
                    ));
                }
            }
        }
        Err(Error::limit(
            "iso volume descriptor set",
            FIRST_DESCRIPTOR_SECTOR * SECTOR,
            format!("no set terminator among the first {MAX_ISO_DESCRIPTORS} descriptors"),
        ))
    }

    /// The volume, the descriptors and the root directory must lie inside the image.
    fn check_fits(&self, len: u64) -> Result<()> {
        let volume = self.primary.volume_bytes();
        if volume > len {
            return Err(Error::truncated(
                "iso volume (primary volume descriptor's volume space size)",
                FIRST_DESCRIPTOR_SECTOR * SECTOR + 80,
                volume,
                len,
            ));
        }
        let set_end = (FIRST_DESCRIPTOR_SECTOR + self.descriptors) * SECTOR;
        if volume < set_end {
            return Err(Error::malformed(
                "iso primary volume descriptor",
                FIRST_DESCRIPTOR_SECTOR * SECTOR + 80,
                format!(
                    "the volume space size ({volume} bytes) ends before the descriptor set ({set_end})"
                ),
            ));
        }
        for root in std::iter::once(self.primary.root).chain(self.joliet_root) {
            let end = u64::from(root.location) * SECTOR + u64::from(root.data_length);
            if end > volume || u64::from(root.location) < FIRST_DESCRIPTOR_SECTOR {
                return Err(Error::malformed(
                    "iso root directory record",
                    FIRST_DESCRIPTOR_SECTOR * SECTOR + 156,
                    format!(
                        "the root directory (block {}, {} bytes) lies outside the volume of {volume} bytes",
                        root.location, root.data_length
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads the set from `bytes`, an image held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let len = bytes.len() as u64;
        Self::read(
            &mut |buf, at| {
                let start = usize::try_from(at).unwrap_or(usize::MAX);
                let src = start
                    .checked_add(buf.len())
                    .and_then(|end| bytes.get(start..end))
                    .ok_or_else(|| Error::truncated("iso image", at, buf.len() as u64, 0))?;
                buf.copy_from_slice(src);
                Ok(())
            },
            len,
        )
    }
}

/// Test images: a minimal volume descriptor set, built byte by byte.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// A descriptor of `kind` with the standard identifier and version 1.
    pub fn descriptor(kind: u8) -> Vec<u8> {
        let mut d = vec![0u8; SECTOR as usize];
        d[0] = kind;
        d[1..6].copy_from_slice(STANDARD_IDENTIFIER);
        d[6] = 1;
        d
    }

    fn both32(d: &mut [u8], at: usize, v: u32) {
        d[at..at + 4].copy_from_slice(&v.to_le_bytes());
        d[at + 4..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    /// A root directory record at 156 of `d`.
    pub fn root(d: &mut [u8], location: u32, len: u32) {
        d[156] = 34;
        both32(d, 158, location);
        both32(d, 166, len);
        d[156 + 25] = 2;
        d[156 + 32] = 1;
    }

    /// A primary volume descriptor labelled `label` for a volume of `blocks` blocks, its root
    /// directory one block at block `root_at`.
    pub fn primary(label: &str, blocks: u32, root_at: u32) -> Vec<u8> {
        let mut d = descriptor(TYPE_PRIMARY);
        d[8..40].fill(b' ');
        d[40..72].fill(b' ');
        d[40..40 + label.len()].copy_from_slice(label.as_bytes());
        both32(&mut d, 80, blocks);
        d[128..130].copy_from_slice(&2048u16.to_le_bytes());
        d[130..132].copy_from_slice(&2048u16.to_be_bytes());
        root(&mut d, root_at, 2048);
        d
    }

    /// An El Torito boot record pointing at the catalog in sector `catalog`.
    pub fn boot_record(catalog: u32) -> Vec<u8> {
        let mut d = descriptor(TYPE_BOOT_RECORD);
        d[7..7 + EL_TORITO_ID.len()].copy_from_slice(EL_TORITO_ID);
        d[0x47..0x4b].copy_from_slice(&catalog.to_le_bytes());
        d
    }

    /// An image of `blocks` sectors with `descriptors` from sector 16 (the terminator added).
    pub fn image(blocks: u32, descriptors: &[Vec<u8>]) -> Vec<u8> {
        let mut img = vec![0u8; blocks as usize * SECTOR as usize];
        let mut at = 16 * SECTOR as usize;
        for d in descriptors.iter().chain([&descriptor(TYPE_TERMINATOR)]) {
            img[at..at + SECTOR as usize].copy_from_slice(d);
            at += SECTOR as usize;
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn reads_the_primary_descriptor_and_the_boot_record() {
        let img = image(40, &[primary("IMS_TEST", 40, 20), boot_record(19)]);
        let set = VolumeDescriptorSet::from_bytes(&img).unwrap();
        assert_eq!(set.primary.volume_identifier, "IMS_TEST");
        assert_eq!(set.primary.volume_bytes(), 40 * 2048);
        assert_eq!(
            set.primary.root,
            Extent {
                location: 20,
                data_length: 2048
            }
        );
        assert_eq!(set.boot_catalog, Some(19));
        assert_eq!(set.descriptors, 3);
        assert_eq!(set.joliet_root, None);
    }

    #[test]
    fn refuses_bad_sets() {
        let kind = |img: &[u8]| VolumeDescriptorSet::from_bytes(img).unwrap_err().kind();
        // No terminator: the sector after the primary descriptor is not a descriptor.
        let mut img = image(40, &[primary("X", 40, 20)]);
        img[17 * 2048 + 1] = b'X';
        assert_eq!(kind(&img), "malformed");
        // A terminator with no primary descriptor before it.
        assert_eq!(kind(&image(40, &[boot_record(19)])), "malformed");
        // The volume is larger than the file (a truncated upload).
        assert_eq!(kind(&image(40, &[primary("X", 41, 20)])), "truncated");
        // The two copies of the volume size disagree.
        let mut p = primary("X", 40, 20);
        p[84] = 9;
        assert_eq!(kind(&image(40, &[p])), "malformed");
        // The root directory outside the volume.
        assert_eq!(kind(&image(40, &[primary("X", 40, 40)])), "malformed");
        // Two boot records.
        assert_eq!(
            kind(&image(
                40,
                &[primary("X", 40, 20), boot_record(19), boot_record(19)]
            )),
            "malformed"
        );
        // An unknown descriptor type.
        assert_eq!(
            kind(&image(40, &[primary("X", 40, 20), descriptor(7)])),
            "malformed"
        );
        // A 512-byte logical block.
        let mut p = primary("X", 40, 20);
        p[128..130].copy_from_slice(&512u16.to_le_bytes());
        p[130..132].copy_from_slice(&512u16.to_be_bytes());
        assert_eq!(kind(&image(40, &[p])), "unsupported");
        // Too short for a descriptor at all.
        assert_eq!(kind(&vec![0u8; 16 * 2048 + 100]), "truncated");
    }

    #[test]
    fn a_set_without_a_terminator_stops_at_the_cap() {
        let n = MAX_ISO_DESCRIPTORS as usize + 20;
        let mut img = vec![0u8; (16 + n) * 2048];
        let p = primary("X", (16 + n) as u32, 16);
        img[16 * 2048..17 * 2048].copy_from_slice(&p);
        for i in 1..n {
            let at = (16 + i) * 2048;
            img[at..at + 2048].copy_from_slice(&descriptor(TYPE_PARTITION));
        }
        assert_eq!(
            VolumeDescriptorSet::from_bytes(&img).unwrap_err().kind(),
            "limit-exceeded"
        );
    }

    #[test]
    fn recognises_joliet() {
        let mut s = descriptor(TYPE_SUPPLEMENTARY);
        s[88..91].copy_from_slice(b"%/E");
        root(&mut s, 21, 2048);
        let img = image(40, &[primary("X", 40, 20), s]);
        let set = VolumeDescriptorSet::from_bytes(&img).unwrap();
        assert_eq!(set.joliet_root.map(|r| r.location), Some(21));
    }
}
