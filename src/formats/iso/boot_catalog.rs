//! The El Torito boot catalog: 32-byte entries in the sector the boot record names. A
//! validation entry (header id 1, a checksum, the key bytes `55 AA`), the initial/default entry,
//! then sections: a section header (0x90, or 0x91 for the last) naming a platform and how many
//! section entries follow, each entry optionally followed by extension entries (0x44). An entry
//! names a boot image: its first sector (`load_rba`), its length in 512-byte sectors, and how
//! the firmware emulates it (formats/iso.md).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::limits::MAX_ISO_BOOT_CATALOG;

use super::descriptor::SECTOR;

const ENTRY: usize = 32;
const HEADER_VALIDATION: u8 = 0x01;
const HEADER_MORE: u8 = 0x90;
const HEADER_LAST: u8 = 0x91;
const EXTENSION: u8 = 0x44;
const BOOTABLE: u8 = 0x88;
const NOT_BOOTABLE: u8 = 0x00;
/// In a section entry's media byte: extension entries follow. In an extension entry's
/// second byte: more extension entries follow.
const CONTINUES: u8 = 0x20;

/// The platform an entry boots on (the validation entry's or the section header's platform id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Platform {
    /// 0x00: x86 PCs booting through the BIOS.
    X86,
    /// 0x01: PowerPC.
    PowerPc,
    /// 0x02: Mac.
    Mac,
    /// 0xEF: UEFI (the boot image is a FAT file system holding the EFI loader).
    Efi,
    /// Any other id.
    Other,
}

impl Platform {
    fn from_id(id: u8) -> Platform {
        match id {
            0x00 => Platform::X86,
            0x01 => Platform::PowerPc,
            0x02 => Platform::Mac,
            0xef => Platform::Efi,
            _ => Platform::Other,
        }
    }
}

/// How the firmware presents the boot image (the low nibble of the media byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Emulation {
    /// The image is loaded and run as it is (every modern disc).
    NoEmulation,
    /// A 1.2 MB floppy.
    Floppy1_2,
    /// A 1.44 MB floppy.
    Floppy1_44,
    /// A 2.88 MB floppy.
    Floppy2_88,
    /// A hard disk (the image starts with an MBR).
    HardDisk,
}

/// One boot entry: the initial/default entry, or a section entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootEntry {
    /// The platform it boots on.
    pub platform: Platform,
    /// The platform id as the catalog gives it.
    pub platform_id: u8,
    /// Whether the boot indicator is 0x88 (bootable) rather than 0x00.
    pub bootable: bool,
    /// How the image is presented.
    pub emulation: Emulation,
    /// The real-mode segment the image is loaded at (0: the default, 0x7C0).
    pub load_segment: u16,
    /// The image's length in 512-byte sectors, as the entry gives it.
    pub sector_count: u16,
    /// The image's first 2048-byte sector.
    pub load_rba: u32,
    /// The section it is in (counted from 1); `None` for the initial/default entry.
    pub section: Option<u32>,
}

/// The boot catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootCatalog {
    /// The validation entry's platform id (the initial entry's platform).
    pub platform_id: u8,
    /// The validation entry's manufacturer id string.
    pub id_string: String,
    /// The initial/default entry, then every section entry in catalog order.
    pub entries: Vec<BootEntry>,
}

impl BootCatalog {
    /// How many bytes to read for the catalog at sector `sector` of an image of `len` bytes:
    /// up to [`MAX_ISO_BOOT_CATALOG`], never past the end. The catalog must start inside the
    /// image with room for its first two entries.
    pub fn span(sector: u32, len: u64) -> Result<(u64, usize)> {
        let offset = u64::from(sector) * SECTOR;
        let available = len.saturating_sub(offset);
        if available < 2 * ENTRY as u64 || sector < 17 {
            return Err(Error::malformed(
                "el torito boot record",
                0x8800 + 0x47,
                format!(
                    "the boot catalog at sector {sector} (offset {offset}) lies outside the image of {len} bytes"
                ),
            ));
        }
        Ok((
            offset,
            usize::try_from(available.min(MAX_ISO_BOOT_CATALOG as u64)).unwrap_or(0),
        ))
    }

    /// Parses the catalog from `bytes` (read at image offset `offset`, as [`span`](Self::span)
    /// says); every boot image must lie inside the image of `len` bytes.
    pub fn parse(bytes: &[u8], offset: u64, len: u64) -> Result<BootCatalog> {
        let at = |pos: usize| offset + pos as u64;
        // Each entry as a fixed-size array, so that its fields are read at constant offsets.
        let entry = |pos: usize| -> Result<&[u8; ENTRY]> {
            match pos
                .checked_add(ENTRY)
                .and_then(|end| bytes.get(pos..end))
                .and_then(|e| <&[u8; ENTRY]>::try_from(e).ok())
            {
                Some(e) => Ok(e),
                None if bytes.len() >= MAX_ISO_BOOT_CATALOG => Err(Error::limit(
                    "el torito boot catalog",
                    at(pos),
                    format!("the catalog runs past {MAX_ISO_BOOT_CATALOG} bytes"),
                )),
                None => Err(Error::truncated(
                    "el torito boot catalog",
                    at(pos),
                    ENTRY as u64,
                    bytes.len().saturating_sub(pos) as u64,
                )),
            }
        };
        let v = entry(0)?;
        if v[0] != HEADER_VALIDATION || v[30..32] != [0x55, 0xaa] {
            return Err(Error::malformed(
                "el torito validation entry",
                offset,
                "no header id 1 with the key bytes 55 AA",
            ));
        }
        let sum = v.chunks_exact(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        if sum != 0 {
            return Err(Error::malformed(
                "el torito validation entry",
                offset,
                format!("the checksum does not add up (the words sum to {sum:#06x})"),
            ));
        }
        let platform_id = v[1];
        let mut out = BootCatalog {
            platform_id,
            id_string: super::descriptor::text_field(&v[4..28]),
            entries: vec![boot_entry(
                entry(ENTRY)?,
                platform_id,
                None,
                at(ENTRY),
                len,
            )?],
        };
        let mut pos = 2 * ENTRY;
        let mut section = 0u32;
        // After the default entry the catalog ends unless a section header follows (zeros,
        // usually); after a 0x90 header another header must follow.
        let mut more_sections = false;
        loop {
            let h = match entry(pos) {
                Ok(h) => h,
                Err(e) if more_sections => return Err(e),
                Err(_) => break,
            };
            if h[0] != HEADER_MORE && h[0] != HEADER_LAST {
                if more_sections {
                    return Err(Error::malformed(
                        "el torito section header",
                        at(pos),
                        format!(
                            "the section header before says more follow (0x90), but this entry's indicator is {:#04x}",
                            h[0]
                        ),
                    ));
                }
                break;
            }
            more_sections = h[0] == HEADER_MORE;
            section += 1;
            let platform = h[1];
            let count = u16::from_le_bytes([h[2], h[3]]);
            pos += ENTRY;
            for _ in 0..count {
                let e = entry(pos)?;
                out.entries
                    .push(boot_entry(e, platform, Some(section), at(pos), len)?);
                pos += ENTRY;
                let mut more = e[1] & CONTINUES != 0;
                while more {
                    let x = entry(pos)?;
                    if x[0] != EXTENSION {
                        return Err(Error::malformed(
                            "el torito section entry extension",
                            at(pos),
                            format!(
                                "the entry before says an extension follows, but its indicator is {:#04x}",
                                x[0]
                            ),
                        ));
                    }
                    more = x[1] & CONTINUES != 0;
                    pos += ENTRY;
                }
            }
            if h[0] == HEADER_LAST {
                break;
            }
        }
        Ok(out)
    }

    /// Whether a bootable entry is for x86 BIOS machines.
    pub fn boots_bios(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.bootable && e.platform == Platform::X86)
    }

    /// Whether a bootable entry is for UEFI machines.
    pub fn boots_uefi(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.bootable && e.platform == Platform::Efi)
    }
}

/// The initial/default entry or a section entry at image offset `offset`.
fn boot_entry(
    e: &[u8; ENTRY],
    platform_id: u8,
    section: Option<u32>,
    offset: u64,
    len: u64,
) -> Result<BootEntry> {
    let bootable = match e[0] {
        BOOTABLE => true,
        NOT_BOOTABLE => false,
        other => {
            return Err(Error::malformed(
                "el torito boot entry",
                offset,
                format!("the boot indicator is {other:#04x}, not 0x88 or 0x00"),
            ));
        }
    };
    let emulation = match e[1] & 0x0f {
        0 => Emulation::NoEmulation,
        1 => Emulation::Floppy1_2,
        2 => Emulation::Floppy1_44,
        3 => Emulation::Floppy2_88,
        4 => Emulation::HardDisk,
        other => {
            return Err(Error::malformed(
                "el torito boot entry",
                offset,
                format!("unknown boot media type {other}"),
            ));
        }
    };
    let sector_count = u16::from_le_bytes([e[6], e[7]]);
    let load_rba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
    let start = u64::from(load_rba) * SECTOR;
    // An entry of the image's first sector count (0 or 1 for many EFI images, which the
    // firmware reads whole) still starts inside the image.
    let end = start + u64::from(sector_count.max(1)) * 512;
    if bootable && end > len {
        return Err(Error::malformed(
            "el torito boot entry",
            offset,
            format!(
                "the boot image (sector {load_rba}, {sector_count} × 512 bytes) lies outside the image of {len} bytes"
            ),
        ));
    }
    Ok(BootEntry {
        platform: Platform::from_id(platform_id),
        platform_id,
        bootable,
        emulation,
        load_segment: u16::from_le_bytes([e[2], e[3]]),
        sector_count,
        load_rba,
        section,
    })
}

/// Test catalogs, built entry by entry.
#[cfg(test)]
pub(crate) mod build {
    /// A validation entry for `platform` with its checksum.
    pub fn validation(platform: u8) -> [u8; 32] {
        let mut v = [0u8; 32];
        v[0] = 1;
        v[1] = platform;
        v[4..8].copy_from_slice(b"TEST");
        v[30] = 0x55;
        v[31] = 0xaa;
        let sum = v.chunks_exact(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        v[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
        v
    }

    /// A bootable no-emulation entry loading `count` sectors from `rba`.
    pub fn entry(rba: u32, count: u16) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[0] = 0x88;
        e[6..8].copy_from_slice(&count.to_le_bytes());
        e[8..12].copy_from_slice(&rba.to_le_bytes());
        e
    }

    /// A section header: `last` (0x91) or not (0x90), for `platform`, with `count` entries.
    pub fn header(last: bool, platform: u8, count: u16) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[0] = if last { 0x91 } else { 0x90 };
        h[1] = platform;
        h[2..4].copy_from_slice(&count.to_le_bytes());
        h
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const LEN: u64 = 100 * 2048;

    fn catalog(entries: &[[u8; 32]]) -> Vec<u8> {
        let mut c: Vec<u8> = entries.concat();
        c.resize(2048, 0);
        c
    }

    #[test]
    fn reads_a_hybrid_catalog() {
        let c = catalog(&[
            validation(0),
            entry(30, 4),
            header(true, 0xef, 1),
            entry(40, 64),
        ]);
        let cat = BootCatalog::parse(&c, 20 * 2048, LEN).unwrap();
        assert_eq!(cat.entries.len(), 2);
        assert_eq!(cat.entries[0].platform, Platform::X86);
        assert_eq!(cat.entries[0].section, None);
        assert_eq!(cat.entries[1].platform, Platform::Efi);
        assert_eq!(cat.entries[1].section, Some(1));
        assert_eq!(cat.entries[1].load_rba, 40);
        assert!(cat.boots_bios() && cat.boots_uefi());
        // UEFI only: the validation entry names EFI.
        let c = catalog(&[validation(0xef), entry(40, 0)]);
        let cat = BootCatalog::parse(&c, 20 * 2048, LEN).unwrap();
        assert!(!cat.boots_bios() && cat.boots_uefi());
        // A not-bootable default entry boots nothing.
        let mut e = entry(30, 4);
        e[0] = 0;
        let cat = BootCatalog::parse(&catalog(&[validation(0), e]), 0, LEN).unwrap();
        assert!(!cat.boots_bios());
    }

    #[test]
    fn follows_sections_and_extensions() {
        let mut with_ext = entry(41, 4);
        with_ext[1] = CONTINUES;
        let mut ext = [0u8; 32];
        ext[0] = EXTENSION;
        let c = catalog(&[
            validation(0),
            entry(30, 4),
            header(false, 0, 1),
            with_ext,
            ext,
            header(true, 0xef, 1),
            entry(40, 4),
            // After the last section: not part of the catalog.
            entry(99, 4),
        ]);
        let cat = BootCatalog::parse(&c, 0, LEN).unwrap();
        assert_eq!(cat.entries.len(), 3);
        assert_eq!(cat.entries[2].section, Some(2));
        // An extension announced but absent.
        let c = catalog(&[validation(0), entry(30, 4), header(true, 0, 1), with_ext]);
        assert_eq!(
            BootCatalog::parse(&c, 0, LEN).unwrap_err().kind(),
            "malformed"
        );
    }

    #[test]
    fn refuses_hostile_catalogs() {
        let kind = |c: &[u8]| BootCatalog::parse(c, 0, LEN).unwrap_err().kind();
        let mut v = validation(0);
        v[5] ^= 1;
        assert_eq!(kind(&catalog(&[v, entry(30, 4)])), "malformed");
        let mut no_key = validation(0);
        no_key[31] = 0;
        assert_eq!(kind(&catalog(&[no_key, entry(30, 4)])), "malformed");
        let mut bad = entry(30, 4);
        bad[0] = 0x77;
        assert_eq!(kind(&catalog(&[validation(0), bad])), "malformed");
        // A boot image past the end of the image.
        assert_eq!(kind(&catalog(&[validation(0), entry(100, 4)])), "malformed");
        // A section claiming more entries than the catalog read holds.
        let c = catalog(&[validation(0), entry(30, 4), header(true, 0, 100)]);
        assert_eq!(kind(&c), "truncated");
        // ... and more than the cap.
        let mut big = catalog(&[validation(0), entry(30, 4), header(true, 0, 65535)]);
        big.resize(MAX_ISO_BOOT_CATALOG, 0);
        for e in big[96..].chunks_exact_mut(32) {
            e.copy_from_slice(&entry(30, 4));
        }
        assert_eq!(kind(&big), "limit-exceeded");
        // Section headers that never end (0x90 after 0x90) stop at the cap.
        let mut chain = catalog(&[validation(0), entry(30, 4)]);
        chain.resize(MAX_ISO_BOOT_CATALOG, 0);
        for e in chain[64..].chunks_exact_mut(32) {
            e.copy_from_slice(&header(false, 0, 0));
        }
        assert_eq!(kind(&chain), "limit-exceeded");
        // A 0x90 header followed by no header.
        let c = catalog(&[
            validation(0),
            entry(30, 4),
            header(false, 0, 1),
            entry(30, 4),
        ]);
        assert_eq!(kind(&c), "malformed");
        // Too short for the first two entries.
        assert_eq!(kind(&validation(0)), "truncated");
        // The catalog outside the image.
        assert_eq!(
            BootCatalog::span(1000, LEN).unwrap_err().kind(),
            "malformed"
        );
        assert_eq!(
            BootCatalog::span(20, LEN).unwrap(),
            (20 * 2048, MAX_ISO_BOOT_CATALOG)
        );
        assert_eq!(BootCatalog::span(90, LEN).unwrap(), (90 * 2048, 10 * 2048));
    }
}
