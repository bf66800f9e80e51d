//! ISO 9660 boot information: the El Torito boot record volume descriptor points at a boot
//! catalog whose validation entry and section headers name the platforms the disc boots on
//! (0x00 x86 BIOS, 0xEF UEFI).

use byteorder::{ByteOrder, LittleEndian};

use crate::error::Result;

use super::disk::Volume;

const SECTOR: u64 = 2048;
const EL_TORITO: &[u8] = b"EL TORITO SPECIFICATION";
const PLATFORM_X86: u8 = 0x00;
const PLATFORM_EFI: u8 = 0xef;

/// Whether the disc boots on BIOS and on UEFI machines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootPlatforms {
    /// The boot catalog has an x86 (BIOS) entry.
    pub bios: bool,
    /// The boot catalog has an EFI entry.
    pub uefi: bool,
}

/// Reads the volume descriptors (16 on, up to the terminator) and the boot catalog.
pub fn boot_platforms(vol: &Volume) -> Result<BootPlatforms> {
    let mut out = BootPlatforms::default();
    let mut catalog = None;
    for i in 16..64 {
        let Some(d) = vol.read_vec(i * SECTOR, SECTOR as usize)? else {
            break;
        };
        if &d[1..6] != b"CD001" || d[0] == 255 {
            break;
        }
        if d[0] == 0 && d[7..7 + EL_TORITO.len()] == *EL_TORITO {
            catalog = Some(u64::from(LittleEndian::read_u32(&d[0x47..0x4b])));
        }
    }
    let Some(lba) = catalog else {
        return Ok(out);
    };
    let Some(c) = lba
        .checked_mul(SECTOR)
        .map(|at| vol.read_vec(at, SECTOR as usize))
        .transpose()?
        .flatten()
    else {
        return Ok(out);
    };
    // The validation entry: header id 1, platform, key bytes 0x55 0xAA.
    if c[0] != 1 || c[30..32] != [0x55, 0xaa] {
        return Ok(out);
    }
    let mut mark = |platform: u8| match platform {
        PLATFORM_X86 => out.bios = true,
        PLATFORM_EFI => out.uefi = true,
        _ => {}
    };
    // The default entry (at 32) boots on the validation entry's platform when bootable.
    if c[32] == 0x88 {
        mark(c[1]);
    }
    // Section headers (0x90 more follow, 0x91 last), each followed by its entries.
    let mut pos = 64;
    while pos + 32 <= c.len() {
        let indicator = c[pos];
        if indicator != 0x90 && indicator != 0x91 {
            break;
        }
        let platform = c[pos + 1];
        let entries = usize::from(LittleEndian::read_u16(&c[pos + 2..pos + 4]));
        let bootable = (0..entries).any(|e| c.get(pos + 32 + e * 32) == Some(&0x88));
        if bootable {
            mark(platform);
        }
        pos += 32 * (1 + entries);
        if indicator == 0x91 {
            break;
        }
    }
    Ok(out)
}
