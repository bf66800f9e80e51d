//! The architecture of a guest's executables: from the ELF header (`e_machine`, with
//! `EI_CLASS` and `EI_DATA` to tell 32 from 64 bits and the byte order) and from the PE/COFF
//! header (`Machine`, after the MZ stub's `e_lfanew`).

use byteorder::{BigEndian, ByteOrder, LittleEndian};

/// The architecture an ELF file is built for, named as distributions name it.
pub fn elf_arch(b: &[u8]) -> Option<&'static str> {
    if b.len() < 20 || &b[0..4] != b"\x7fELF" {
        return None;
    }
    let class64 = match b[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match b[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let e_machine = if little {
        LittleEndian::read_u16(&b[18..20])
    } else {
        BigEndian::read_u16(&b[18..20])
    };
    Some(match (e_machine, class64, little) {
        (0x3e, true, _) => "x86_64",
        (0x03, false, _) => "i686",
        (0xb7, true, _) => "aarch64",
        (0x28, false, _) => "armv7l",
        (0xf3, true, _) => "riscv64",
        (0x15, true, true) => "ppc64le",
        (0x15, true, false) => "ppc64",
        (0x14, false, _) => "ppc",
        (0x16, true, _) => "s390x",
        (0x08, true, true) => "mips64el",
        (0x102, true, _) => "loongarch64",
        _ => return None,
    })
}

/// The architecture of a PE image (a Windows DLL, driver or EFI application).
pub fn pe_arch(b: &[u8]) -> Option<&'static str> {
    if b.len() < 0x40 || &b[0..2] != b"MZ" {
        return None;
    }
    let e_lfanew = usize::try_from(LittleEndian::read_u32(&b[0x3c..0x40])).ok()?;
    let header = b.get(e_lfanew..e_lfanew.checked_add(6)?)?;
    if &header[0..4] != b"PE\0\0" {
        return None;
    }
    Some(match LittleEndian::read_u16(&header[4..6]) {
        0x8664 => "x86_64",
        0x014c => "i686",
        0xaa64 => "aarch64",
        0x01c4 => "armv7l",
        0x5064 => "riscv64",
        0x6264 => "loongarch64",
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal 64-bit little-endian ELF header for `e_machine`.
    pub fn elf64(e_machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16] = 2;
        b[18..20].copy_from_slice(&e_machine.to_le_bytes());
        b
    }

    #[test]
    fn elf_machines() {
        assert_eq!(elf_arch(&elf64(0x3e)), Some("x86_64"));
        assert_eq!(elf_arch(&elf64(0xb7)), Some("aarch64"));
        let mut be = elf64(0);
        be[5] = 2;
        be[18..20].copy_from_slice(&0x15u16.to_be_bytes());
        assert_eq!(elf_arch(&be), Some("ppc64"));
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
        assert_eq!(elf_arch(&elf64(0x3e)[..10]), None);
    }

    #[test]
    fn pe_machines() {
        let mut b = vec![0u8; 0x100];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        b[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        assert_eq!(pe_arch(&b), Some("aarch64"));
        b[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pe_arch(&b), None);
    }
}
