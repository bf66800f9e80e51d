//! Format detection from the first bytes of a file and its last 512.
//!
//! Every signature is checked; a file that carries two formats' signatures is ambiguous and
//! must be opened with an explicit format. Formats ims knows but does not handle are recognised
//! so that they are refused by name instead of being read as raw disks. Raw is the answer only
//! when nothing else matches.

use crate::error::{Error, Result};
use crate::formats::Format;
use crate::storage::Storage;

/// How many bytes at the start of the file the probe looks at: enough to reach the ISO 9660
/// primary volume descriptor at 32 KiB.
pub const HEAD_LEN: usize = 0x8000 + 2048;
/// How many bytes at the end of the file the probe looks at (the VHD footer).
pub const TAIL_LEN: usize = 512;

/// A format that was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Detected {
    /// A format ims reads.
    Supported(Format),
    /// A format ims recognises and refuses, with its name.
    Refused(&'static str),
}

impl Detected {
    fn name(self) -> &'static str {
        match self {
            Detected::Supported(f) => f.name(),
            Detected::Refused(name) => name,
        }
    }
}

/// How strongly a signature identifies a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Strength {
    /// A signature inside the disk's own data area (ISO 9660 at 32 KiB): also found in disk
    /// images that merely contain such a file system, so it counts only when nothing stronger
    /// matches.
    Weak,
    /// A magic number at a structural position (offset 0, or the VHD footer).
    Strong,
}

/// Reads the probe window of `storage` and names its format.
pub fn probe_storage(storage: &dyn Storage) -> Result<Format> {
    let len = storage.len();
    let mut head = vec![0u8; HEAD_LEN.min(usize::try_from(len).unwrap_or(HEAD_LEN))];
    let n = storage.read_at(&mut head, 0)?;
    head.truncate(n);
    let tail_len = TAIL_LEN.min(head.len());
    let mut tail = vec![0u8; tail_len];
    let n = storage.read_at(&mut tail, len - tail_len as u64)?;
    tail.truncate(n);
    probe(&head, &tail)
}

/// Names the format of a file whose first bytes are `head` and last bytes `tail` (up to 512;
/// `tail` may overlap `head` in small files).
pub fn probe(head: &[u8], tail: &[u8]) -> Result<Format> {
    let found = detect(head, tail);
    let strongest = found.iter().map(|(_, s)| *s).max();
    let mut matches: Vec<Detected> = Vec::new();
    for (d, s) in &found {
        if Some(*s) == strongest && !matches.contains(d) {
            matches.push(*d);
        }
    }
    match matches.as_slice() {
        [] => Ok(Format::Raw),
        [Detected::Supported(f)] => Ok(*f),
        [Detected::Refused(name)] => Err(Error::unsupported(format!(
            "{name} images are not supported"
        ))),
        [first, second, ..] => Err(Error::Ambiguous {
            file: Default::default(),
            first: first.name(),
            second: second.name(),
        }),
    }
}

/// Every signature that `head` and `tail` carry.
fn detect(head: &[u8], tail: &[u8]) -> Vec<(Detected, Strength)> {
    use Detected::{Refused, Supported};
    use Strength::{Strong, Weak};
    let mut found = Vec::new();
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);

    if at(0, b"QFI\xfb") {
        let version = head
            .get(4..8)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        found.push((
            match version {
                Some(2) | Some(3) => Supported(Format::Qcow2),
                Some(1) => Refused("qcow version 1"),
                _ => Refused("qcow of an unknown version"),
            },
            Strong,
        ));
    }
    // Hosted sparse extent ("KDMV"), including streamOptimized; ESX sparse ("COWD").
    if at(0, b"KDMV") || at(0, b"COWD") || is_vmdk_descriptor(head) {
        found.push((Supported(Format::Vmdk), Strong));
    }
    // A VHD footer at the end; dynamic disks also keep a copy at offset 0.
    if (tail.len() == TAIL_LEN && tail.starts_with(b"conectix")) || at(0, b"conectix") {
        found.push((Supported(Format::Vhd), Strong));
    }
    // ZVHD formats: the reference compares the first 6 bytes of the cookie.
    if at(0, b"stream") {
        found.push((Supported(Format::Zvhd), Strong));
    }
    if at(0, b"z2strm") {
        found.push((Supported(Format::Zvhd2), Strong));
    }

    if at(0, b"vhdxfile") {
        found.push((Refused("vhdx"), Strong));
    }
    // VirtualBox: the signature 0xbeda107f (little-endian) at 0x40 after a text banner.
    if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        found.push((Refused("vdi"), Strong));
    }
    if at(0, b"QED\0") {
        found.push((Refused("qed"), Strong));
    }
    if at(0, b"LUKS\xba\xbe") {
        found.push((Refused("luks (encrypted)"), Strong));
    }
    if at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt") {
        found.push((Refused("parallels"), Strong));
    }
    if at(0, b"Bochs Virtual HD Image") {
        found.push((Refused("bochs"), Strong));
    }
    // ISO 9660: "CD001" in the first volume descriptor, at sector 16 of 2048 bytes.
    if at(0x8001, b"CD001") {
        found.push((Refused("iso (ISO 9660 file system)"), Weak));
    }
    found
}

/// Whether `head` starts like a VMDK text descriptor: comment and blank lines, then a line
/// `version=1`, `2` or `3` (as qemu-img decides), or the usual `# Disk DescriptorFile` banner.
fn is_vmdk_descriptor(head: &[u8]) -> bool {
    if head.starts_with(b"# Disk DescriptorFile") {
        return true;
    }
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'#') {
            continue;
        }
        if line.iter().all(|&b| b == b' ') {
            continue;
        }
        return matches!(line, b"version=1" | b"version=2" | b"version=3");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_with(off: usize, magic: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; HEAD_LEN];
        h[off..off + magic.len()].copy_from_slice(magic);
        h
    }

    fn probe_head(h: &[u8]) -> Result<Format> {
        probe(h, &h[h.len() - TAIL_LEN..])
    }

    #[test]
    fn recognises_each_supported_magic() {
        let mut q = head_with(0, b"QFI\xfb\0\0\0\x03");
        assert_eq!(probe_head(&q).unwrap(), Format::Qcow2);
        q[7] = 2;
        assert_eq!(probe_head(&q).unwrap(), Format::Qcow2);
        assert_eq!(probe_head(&head_with(0, b"KDMV")).unwrap(), Format::Vmdk);
        assert_eq!(
            probe_head(&head_with(0, b"stream\0\0")).unwrap(),
            Format::Zvhd
        );
        assert_eq!(
            probe_head(&head_with(0, b"z2strm\0\0")).unwrap(),
            Format::Zvhd2
        );
        let mut vhd = vec![0u8; 4096];
        vhd[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        assert_eq!(probe_head(&vhd).unwrap(), Format::Vhd);
        assert_eq!(probe_head(&[0u8; 4096]).unwrap(), Format::Raw);
    }

    #[test]
    fn recognises_descriptors() {
        let d = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\n";
        assert_eq!(probe(d, d).unwrap(), Format::Vmdk);
        let d = b"# comment\r\n   \r\nversion=3\r\ncreateType=\"monolithicFlat\"\r\n";
        assert_eq!(probe(d, d).unwrap(), Format::Vmdk);
        let d = b"hello\nversion=1\n";
        assert_eq!(probe(d, d).unwrap(), Format::Raw);
    }

    #[test]
    fn refuses_known_unsupported_formats_by_name() {
        for (off, magic, name) in [
            (0, &b"vhdxfile"[..], "vhdx"),
            (0x40, &[0x7f, 0x10, 0xda, 0xbe][..], "vdi"),
            (0, b"QED\0", "qed"),
            (0, b"QFI\xfb\0\0\0\x01", "qcow version 1"),
            (0, b"LUKS\xba\xbe", "luks"),
            (0x8001, b"CD001", "iso"),
        ] {
            let e = probe_head(&head_with(off, magic)).unwrap_err();
            assert_eq!(e.kind(), "unsupported", "{name}");
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn two_formats_are_ambiguous() {
        let mut h = head_with(0, b"QFI\xfb\0\0\0\x03");
        let n = h.len();
        h[n - 512..n - 504].copy_from_slice(b"conectix");
        let e = probe_head(&h).unwrap_err();
        assert_eq!(e.kind(), "ambiguous");
        // A disk image holding an ISO file system at 32 KiB is still what its header says.
        let mut q = head_with(0, b"QFI\xfb\0\0\0\x03");
        q[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(probe_head(&q).unwrap(), Format::Qcow2);
    }

    #[test]
    fn short_inputs_do_not_panic() {
        for len in 0..16 {
            let h = vec![b'Q'; len];
            let _ = probe(&h, &h);
        }
        assert_eq!(probe(b"abc", b"abc").unwrap(), Format::Raw);
    }
}
