//! The VDI header: a 64-byte text banner, the signature at 0x40, and the version 1.1 fields that
//! say where the block map and the data blocks are. All numbers are little-endian. See
//! formats/vdi.md.

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{Error, Result};

/// Bytes of the header as ims reads and writes it: banner, signature, version and the fields up
/// to the LCHS geometry and its padding (one sector).
pub const HEADER_SIZE: usize = 512;
/// `signature` at 0x40.
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Where the signature is.
pub const SIGNATURE_AT: usize = 0x40;
/// `version`: major 1, minor 1 (the only version VirtualBox writes since 2008).
pub const VERSION_1_1: u32 = 0x0001_0001;
/// `header_size` of a version 1.1 header without the LCHS geometry (what qemu-img writes).
pub const HEADER_SIZE_V1_1: u32 = 0x180;
/// `header_size` of a version 1.1 header with the LCHS geometry (what VirtualBox writes).
pub const HEADER_SIZE_V1_1_PLUS: u32 = 0x190;
/// The banner ims writes (the text qemu-img writes too).
pub const BANNER: &[u8] = b"<<< QEMU VM Virtual Disk Image >>>\n";
/// `sector_size`: the only one VirtualBox and qemu use.
pub const SECTOR_SIZE: u32 = 512;
/// The block size of every VDI VirtualBox and qemu write: 1 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
/// A block map entry for a block never written: zeros (or the parent's, in a differencing image).
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// A block map entry for a block discarded or written as zeros: reads as zeros.
pub const ZERO: u32 = 0xffff_fffe;

/// `image_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageType {
    /// 1 ("normal"): blocks allocated as they are written.
    Dynamic,
    /// 2 ("fixed"): every block allocated at creation.
    Static,
    /// 3: an undo image (VirtualBox's old immutable-disk journal).
    Undo,
    /// 4: a differencing image, whose unallocated blocks are its parent's.
    Differencing,
}

impl ImageType {
    fn from_code(code: u32) -> Option<ImageType> {
        match code {
            1 => Some(ImageType::Dynamic),
            2 => Some(ImageType::Static),
            3 => Some(ImageType::Undo),
            4 => Some(ImageType::Differencing),
            _ => None,
        }
    }

    /// The on-disk code.
    pub fn code(self) -> u32 {
        match self {
            ImageType::Dynamic => 1,
            ImageType::Static => 2,
            ImageType::Undo => 3,
            ImageType::Differencing => 4,
        }
    }

    /// What `info` calls it.
    pub fn name(self) -> &'static str {
        match self {
            ImageType::Dynamic => "dynamic",
            ImageType::Static => "static",
            ImageType::Undo => "undo",
            ImageType::Differencing => "differencing",
        }
    }
}

/// The header's fields, named as VirtualBox names them (without its `u`/`cb` prefixes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiHeader {
    /// The banner's text up to its first NUL or newline.
    pub text: String,
    /// `version` (0x00010001 for 1.1).
    pub version: u32,
    /// `header_size`: bytes of header counted from 0x48 (where this field is).
    pub header_size: u32,
    /// `image_type`.
    pub image_type: ImageType,
    /// `image_flags` (no flag changes how an image is read).
    pub image_flags: u32,
    /// `description`, up to its first NUL.
    pub description: String,
    /// `offset_bmap`: where the block map starts.
    pub offset_bmap: u32,
    /// `offset_data`: where block 0 of the data area starts.
    pub offset_data: u32,
    /// Legacy geometry: cylinders, heads, sectors.
    pub cylinders: u32,
    /// Legacy geometry heads.
    pub heads: u32,
    /// Legacy geometry sectors per track.
    pub sectors: u32,
    /// `sector_size`.
    pub sector_size: u32,
    /// `disk_size`: the disk's size in bytes.
    pub disk_size: u64,
    /// `block_size`: bytes of data per block.
    pub block_size: u32,
    /// `block_extra`: bytes of per-block header before each block's data (0 in every known image).
    pub block_extra: u32,
    /// `blocks_in_image`: entries in the block map.
    pub blocks_in_image: u32,
    /// `blocks_allocated`: entries that point at a stored block.
    pub blocks_allocated: u32,
    /// `uuid_image`: this image's identity.
    pub uuid_image: [u8; 16],
    /// `uuid_last_snap`: changed on every modification.
    pub uuid_last_snap: [u8; 16],
    /// `uuid_link`: the parent's `uuid_image`, in a differencing image.
    pub uuid_link: [u8; 16],
    /// `uuid_parent`: the parent's `uuid_last_snap` when this image was made.
    pub uuid_parent: [u8; 16],
}

fn uuid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[at..at + 16]);
    u
}

fn text_of(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

impl VdiHeader {
    /// Parses and checks the header's own fields (the block map and data area are checked
    /// against the file by the reader).
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<VdiHeader> {
        let signature = LittleEndian::read_u32(&b[SIGNATURE_AT..]);
        if signature != SIGNATURE {
            return Err(Error::malformed(
                "vdi header",
                SIGNATURE_AT as u64,
                format!("signature {signature:#x} is not {SIGNATURE:#x}"),
            ));
        }
        let version = LittleEndian::read_u32(&b[0x44..]);
        if version != VERSION_1_1 {
            return Err(Error::unsupported(format!(
                "vdi version {}.{} (ims reads version 1.1)",
                version >> 16,
                version & 0xffff
            )));
        }
        let header_size = LittleEndian::read_u32(&b[0x48..]);
        // The fields read below end at 0x1c8 (0x180 bytes after 0x48); the header must hold
        // them and fit the sector.
        if !(HEADER_SIZE_V1_1..=(HEADER_SIZE - 0x48) as u32).contains(&header_size) {
            return Err(Error::malformed(
                "vdi header",
                0x48,
                format!(
                    "header_size {header_size} is not between {HEADER_SIZE_V1_1} and {}",
                    HEADER_SIZE - 0x48
                ),
            ));
        }
        let code = LittleEndian::read_u32(&b[0x4c..]);
        let image_type = ImageType::from_code(code).ok_or_else(|| {
            Error::malformed("vdi header", 0x4c, format!("image_type {code} is unknown"))
        })?;
        let h = VdiHeader {
            text: text_of(&b[..SIGNATURE_AT]),
            version,
            header_size,
            image_type,
            image_flags: LittleEndian::read_u32(&b[0x50..]),
            description: text_of(&b[0x54..0x154]),
            offset_bmap: LittleEndian::read_u32(&b[0x154..]),
            offset_data: LittleEndian::read_u32(&b[0x158..]),
            cylinders: LittleEndian::read_u32(&b[0x15c..]),
            heads: LittleEndian::read_u32(&b[0x160..]),
            sectors: LittleEndian::read_u32(&b[0x164..]),
            sector_size: LittleEndian::read_u32(&b[0x168..]),
            disk_size: LittleEndian::read_u64(&b[0x170..]),
            block_size: LittleEndian::read_u32(&b[0x178..]),
            block_extra: LittleEndian::read_u32(&b[0x17c..]),
            blocks_in_image: LittleEndian::read_u32(&b[0x180..]),
            blocks_allocated: LittleEndian::read_u32(&b[0x184..]),
            uuid_image: uuid_at(b, 0x188),
            uuid_last_snap: uuid_at(b, 0x198),
            uuid_link: uuid_at(b, 0x1a8),
            uuid_parent: uuid_at(b, 0x1b8),
        };
        h.check()?;
        Ok(h)
    }

    /// The checks that need no other structure.
    fn check(&self) -> Result<()> {
        if self.sector_size != SECTOR_SIZE {
            return Err(Error::unsupported(format!(
                "vdi sector_size {} (only 512)",
                self.sector_size
            )));
        }
        if self.block_extra != 0 {
            return Err(Error::unsupported(format!(
                "vdi block_extra {} (per-block headers)",
                self.block_extra
            )));
        }
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(512..=crate::limits::MAX_VDI_BLOCK_SIZE).contains(&bs) {
            return Err(Error::malformed(
                "vdi header",
                0x178,
                format!(
                    "block_size {bs} is not a power of two from 512 to {}",
                    crate::limits::MAX_VDI_BLOCK_SIZE
                ),
            ));
        }
        for (at, v, what) in [
            (0x154, self.offset_bmap, "offset_bmap"),
            (0x158, self.offset_data, "offset_data"),
        ] {
            if !v.is_multiple_of(SECTOR_SIZE) {
                return Err(Error::malformed(
                    "vdi header",
                    at,
                    format!("{what} {v:#x} is not a multiple of 512"),
                ));
            }
        }
        // The block map starts after the header and ends before the data area.
        let header_end = 0x48 + u64::from(self.header_size);
        if u64::from(self.offset_bmap) < header_end {
            return Err(Error::malformed(
                "vdi header",
                0x154,
                format!(
                    "offset_bmap {:#x} lies inside the header (which ends at {header_end:#x})",
                    self.offset_bmap
                ),
            ));
        }
        let bmap_end = u64::from(self.offset_bmap) + 4 * u64::from(self.blocks_in_image);
        if u64::from(self.offset_data) < bmap_end {
            return Err(Error::malformed(
                "vdi header",
                0x158,
                format!(
                    "offset_data {:#x} lies inside the block map (which ends at {bmap_end:#x})",
                    self.offset_data
                ),
            ));
        }
        let capacity = u64::from(self.blocks_in_image) * u64::from(bs);
        if self.disk_size > capacity {
            return Err(Error::malformed(
                "vdi header",
                0x170,
                format!(
                    "disk_size {} is more than the {} blocks of {bs} bytes of the block map",
                    self.disk_size, self.blocks_in_image
                ),
            ));
        }
        if self.blocks_allocated > self.blocks_in_image {
            return Err(Error::malformed(
                "vdi header",
                0x184,
                format!(
                    "blocks_allocated {} is more than blocks_in_image {}",
                    self.blocks_allocated, self.blocks_in_image
                ),
            ));
        }
        Ok(())
    }

    /// The disk's size: `disk_size` rounded down to whole sectors, as qemu reads it
    /// (`VBoxManage convertfromraw` can leave a partial sector).
    pub fn virtual_size(&self) -> u64 {
        self.disk_size - self.disk_size % 512
    }

    /// Whether the image names a parent (a differencing image).
    pub fn has_parent(&self) -> bool {
        self.image_type == ImageType::Differencing || self.uuid_link != [0; 16]
    }

    /// The header as stored.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let text = self.text.as_bytes();
        let n = text.len().min(SIGNATURE_AT - 1);
        b[..n].copy_from_slice(&text[..n]);
        if n < SIGNATURE_AT - 1 && !self.text.is_empty() {
            b[n] = b'\n';
        }
        LittleEndian::write_u32(&mut b[SIGNATURE_AT..], SIGNATURE);
        LittleEndian::write_u32(&mut b[0x44..], self.version);
        LittleEndian::write_u32(&mut b[0x48..], self.header_size);
        LittleEndian::write_u32(&mut b[0x4c..], self.image_type.code());
        LittleEndian::write_u32(&mut b[0x50..], self.image_flags);
        let d = self.description.as_bytes();
        let n = d.len().min(255);
        b[0x54..0x54 + n].copy_from_slice(&d[..n]);
        LittleEndian::write_u32(&mut b[0x154..], self.offset_bmap);
        LittleEndian::write_u32(&mut b[0x158..], self.offset_data);
        LittleEndian::write_u32(&mut b[0x15c..], self.cylinders);
        LittleEndian::write_u32(&mut b[0x160..], self.heads);
        LittleEndian::write_u32(&mut b[0x164..], self.sectors);
        LittleEndian::write_u32(&mut b[0x168..], self.sector_size);
        LittleEndian::write_u64(&mut b[0x170..], self.disk_size);
        LittleEndian::write_u32(&mut b[0x178..], self.block_size);
        LittleEndian::write_u32(&mut b[0x17c..], self.block_extra);
        LittleEndian::write_u32(&mut b[0x180..], self.blocks_in_image);
        LittleEndian::write_u32(&mut b[0x184..], self.blocks_allocated);
        b[0x188..0x198].copy_from_slice(&self.uuid_image);
        b[0x198..0x1a8].copy_from_slice(&self.uuid_last_snap);
        b[0x1a8..0x1b8].copy_from_slice(&self.uuid_link);
        b[0x1b8..0x1c8].copy_from_slice(&self.uuid_parent);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VdiHeader {
        VdiHeader {
            text: String::from_utf8_lossy(BANNER).trim_end().to_string(),
            version: VERSION_1_1,
            header_size: HEADER_SIZE_V1_1,
            image_type: ImageType::Dynamic,
            image_flags: 0,
            description: String::new(),
            offset_bmap: 0x200,
            offset_data: 0x400,
            cylinders: 0,
            heads: 0,
            sectors: 0,
            sector_size: 512,
            disk_size: 8 << 20,
            block_size: DEFAULT_BLOCK_SIZE,
            block_extra: 0,
            blocks_in_image: 8,
            blocks_allocated: 3,
            uuid_image: [1; 16],
            uuid_last_snap: [2; 16],
            uuid_link: [0; 16],
            uuid_parent: [0; 16],
        }
    }

    /// The bytes qemu-img 10 writes for an 8 MiB dynamic image with 3 blocks allocated.
    #[test]
    fn fields_are_where_qemu_img_puts_them() {
        let b = sample().to_bytes();
        assert_eq!(&b[..35], b"<<< QEMU VM Virtual Disk Image >>>\n");
        assert_eq!(
            &b[0x40..0x50],
            &[
                0x7f, 0x10, 0xda, 0xbe, 1, 0, 1, 0, 0x80, 1, 0, 0, 1, 0, 0, 0
            ]
        );
        assert_eq!(&b[0x154..0x15c], &[0, 2, 0, 0, 0, 4, 0, 0]);
        assert_eq!(&b[0x168..0x16c], &[0, 2, 0, 0]);
        assert_eq!(
            &b[0x170..0x188],
            &[
                0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0
            ]
        );
        assert_eq!(VdiHeader::parse(&b).unwrap(), sample());
    }

    #[test]
    fn bad_fields_are_refused_with_their_offset() {
        let cases: [(usize, &[u8], &str, &str); 9] = [
            (0x40, &[0, 0, 0, 0], "malformed", "0x40"),
            (0x44, &[0, 0, 1, 0], "unsupported", "version 1.0"),
            (0x48, &[0x10, 0, 0, 0], "malformed", "0x48"),
            (0x4c, &[9, 0, 0, 0], "malformed", "image_type 9"),
            (0x154, &[0x10, 0, 0, 0], "malformed", "offset_bmap"),
            (0x154, &[0, 0, 0, 0], "malformed", "inside the header"),
            (0x168, &[0, 0x10, 0, 0], "unsupported", "sector_size"),
            (0x178, &[0, 0, 0x30, 0], "malformed", "block_size"),
            (0x184, &[9, 0, 0, 0], "malformed", "blocks_allocated"),
        ];
        for (at, bytes, kind, needle) in cases {
            let mut b = sample().to_bytes();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let e = VdiHeader::parse(&b).unwrap_err();
            assert_eq!(e.kind(), kind, "{at:#x}: {e}");
            assert!(e.to_string().contains(needle), "{at:#x}: {e}");
        }
        // A disk larger than its block map.
        let mut h = sample();
        h.disk_size = (8 << 20) + 512;
        assert!(
            VdiHeader::parse(&h.to_bytes())
                .unwrap_err()
                .to_string()
                .contains("disk_size")
        );
        // The block map running into the data area.
        let mut h = sample();
        h.blocks_in_image = 200;
        h.disk_size = 1 << 20;
        assert!(
            VdiHeader::parse(&h.to_bytes())
                .unwrap_err()
                .to_string()
                .contains("inside the block map")
        );
    }

    #[test]
    fn odd_disk_sizes_round_down_and_parents_are_seen() {
        let mut h = sample();
        h.disk_size = (7 << 20) + 700;
        assert_eq!(h.virtual_size(), (7 << 20) + 512);
        assert!(!h.has_parent());
        h.uuid_link = [3; 16];
        assert!(h.has_parent());
    }
}
