//! Format detection from the first bytes of a file and its last 512.
//!
//! Every signature is checked; a file that carries two formats' signatures is ambiguous.
//! Formats ims knows but does not handle are recognised so that they are refused by name instead
//! of being read as raw disks. Raw is the answer only when nothing else matches.
//!
//! Naming the format does not lift the ambiguity: [`check_named`] refuses a file that carries
//! another format's strong signature at that format's own place, or a signature inside the named
//! format's own header (the polyglot rule, formats/probe.md), as OpenStack's format inspector does
//! since CVE-2024-32498. Only raw, which has no structure to confuse, is read as named.

use crate::error::{Error, Result};
use crate::formats::Format;
use crate::storage::Storage;

/// How many bytes at the start of the file the probe looks at: enough to reach the ISO 9660
/// primary volume descriptor at 32 KiB.
pub const HEAD_LEN: usize = 0x8000 + 2048;
/// How many bytes at the end of the file the probe looks at: a ZVHD2 final footer page (4096);
/// the VHD footer and a DMG trailer are its last 512.
pub const TAIL_LEN: usize = 4096;
/// The VHD footer and the DMG `koly` trailer: the last 512 bytes.
const FOOTER_LEN: usize = 512;

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

/// The first [`HEAD_LEN`] and last [`TAIL_LEN`] bytes of `storage` (fewer in a small file).
fn window(storage: &dyn Storage) -> Result<(Vec<u8>, Vec<u8>)> {
    let len = storage.len();
    let mut head = vec![0u8; HEAD_LEN.min(usize::try_from(len).unwrap_or(HEAD_LEN))];
    let n = storage.read_at(&mut head, 0)?;
    head.truncate(n);
    let tail_len = TAIL_LEN.min(head.len());
    let mut tail = vec![0u8; tail_len];
    let n = storage.read_at(&mut tail, len - tail_len as u64)?;
    tail.truncate(n);
    Ok((head, tail))
}

/// Reads the probe window of `storage` and names its format.
pub fn probe_storage(storage: &dyn Storage) -> Result<Format> {
    let (head, tail) = window(storage)?;
    probe(&head, &tail)
}

/// Reads the probe window of `storage` and applies the polyglot rule to `format`, the format
/// the caller named: see [`check_named`].
pub fn check_named_storage(storage: &dyn Storage, format: Format) -> Result<()> {
    if format == Format::Raw {
        return Ok(());
    }
    let (head, tail) = window(storage)?;
    check_named(&head, &tail, format)
}

/// The polyglot rule for a file the caller says is `format`: refused as [`Error::Ambiguous`]
/// when it carries another format's strong signature at that format's own place (a VHD footer
/// at the end of a qcow2, a qcow2 header at the start of a fixed VHD), or a signature inside the
/// named format's own header (a qcow2 header cluster). Raw is never refused: it has no
/// structure, and whatever its bytes hold is guest data.
pub fn check_named(head: &[u8], tail: &[u8], format: Format) -> Result<()> {
    if format == Format::Raw {
        return Ok(());
    }
    let named = Detected::Supported(format);
    if let Some((other, _)) = detect(head, tail)
        .into_iter()
        .find(|(d, s)| *s == Strength::Strong && *d != named)
    {
        return Err(ambiguous(format.name(), other.name()));
    }
    header_polyglot(head, format)
}

/// What naming the format cannot fix: two strong signatures, or one inside the other's header.
const POLYGLOT: &str =
    " at once (a polyglot, refused even when the format is named: see formats/probe.md)";

fn ambiguous(first: &'static str, second: &'static str) -> Error {
    Error::Ambiguous {
        file: Default::default(),
        first,
        second,
        hint: POLYGLOT,
    }
}

/// Signatures inside `format`'s own header, where no guest data can be: a qcow2 header cluster
/// (cluster 0, which holds only the header and its extensions) that carries an ISO 9660 volume
/// descriptor at 32 KiB, or a qcow2 header sector that ends like an MBR with a protective GPT
/// entry. Such a file is read as two different disks by a tool that sees the other format
/// (a raw reader finds the partition table or the ISO, qemu the qcow2).
fn header_polyglot(head: &[u8], format: Format) -> Result<()> {
    if format == Format::Vhdx && head.starts_with(b"vhdxfile") {
        return vhdx_header_polyglot(head);
    }
    if format != Format::Qcow2 || !head.starts_with(b"QFI\xfb") {
        return Ok(());
    }
    if head.get(510..512) == Some(&[0x55, 0xaa][..])
        && (0..4).any(|i| head.get(446 + 16 * i + 4) == Some(&0xee))
    {
        return Err(ambiguous(
            "qcow2",
            "gpt (a protective MBR in the qcow2 header sector)",
        ));
    }
    let cluster_bits = head
        .get(20..24)
        .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        .unwrap_or(0);
    let in_header_cluster = (9..=30).contains(&cluster_bits) && (1u64 << cluster_bits) > ISO_AT;
    if in_header_cluster && head.get(0x8001..0x8006) == Some(&b"CD001"[..]) {
        return Err(ambiguous(
            "qcow2",
            "iso (an ISO 9660 descriptor in the qcow2 header cluster)",
        ));
    }
    Ok(())
}

/// The same rule for a VHDX: its first MiB (identifier, headers, region tables) never holds
/// guest data, so an MBR boot signature with a protective GPT entry in its first sector, or an
/// ISO 9660 descriptor at 32 KiB (inside the identifier's 64 KiB), makes it a second disk.
fn vhdx_header_polyglot(head: &[u8]) -> Result<()> {
    if head.get(510..512) == Some(&[0x55, 0xaa][..])
        && (0..4).any(|i| head.get(446 + 16 * i + 4) == Some(&0xee))
    {
        return Err(ambiguous(
            "vhdx",
            "gpt (a protective MBR in the vhdx file type identifier)",
        ));
    }
    if head.get(0x8001..0x8006) == Some(&b"CD001"[..]) {
        return Err(ambiguous(
            "vhdx",
            "iso (an ISO 9660 descriptor in the vhdx header section)",
        ));
    }
    Ok(())
}

/// Where the ISO 9660 primary volume descriptor starts: sector 16 of 2048 bytes.
const ISO_AT: u64 = 0x8000;

/// Names the format of a file whose first bytes are `head` and last bytes `tail` (up to
/// [`TAIL_LEN`]; `tail` may overlap `head` in small files).
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
        [Detected::Supported(f)] => header_polyglot(head, *f).map(|()| *f),
        [Detected::Refused(name)] => Err(Error::unsupported(format!(
            "{name} images are not supported"
        ))),
        [first, second, ..] => Err(Error::Ambiguous {
            file: Default::default(),
            first: first.name(),
            second: second.name(),
            // Two weak signatures: the caller knows which the file is. Two strong ones: no
            // name lifts the ambiguity (check_named refuses it too).
            hint: if strongest == Some(Strength::Strong) {
                POLYGLOT
            } else {
                "; name the format with -f"
            },
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
                Some(1) => Supported(Format::Qcow),
                _ => Refused("qcow of an unknown version"),
            },
            Strong,
        ));
    }
    // Hosted sparse extent ("KDMV"), including streamOptimized; ESX sparse ("COWD").
    if at(0, b"KDMV") || at(0, b"COWD") || is_vmdk_descriptor(head) {
        found.push((Supported(Format::Vmdk), Strong));
    }
    // The last 512 bytes, when the file has that many.
    let footer = tail
        .len()
        .checked_sub(FOOTER_LEN)
        .map(|start| &tail[start..]);
    // A VHD footer at the end; dynamic disks also keep a copy at offset 0.
    if footer.is_some_and(|f| f.starts_with(b"conectix")) || at(0, b"conectix") {
        found.push((Supported(Format::Vhd), Strong));
    }
    // ZVHD formats: the reference compares the first 6 bytes of the cookie.
    if at(0, b"stream") {
        found.push((Supported(Format::Zvhd), Strong));
    }
    // ZVHD2: the header page at 0, the final footer page (the header again, filled in) in the
    // last 4096 bytes.
    if at(0, b"z2strm") || (tail.len() == TAIL_LEN && tail.starts_with(b"z2strm")) {
        found.push((Supported(Format::Zvhd2), Strong));
    }

    if at(0, b"vhdxfile") {
        found.push((Supported(Format::Vhdx), Strong));
    }
    // VirtualBox: the signature 0xbeda107f (little-endian) at 0x40 after a "<<< ... >>>" text
    // banner (qemu probes the signature alone; the banner's wording varies by vendor).
    if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        found.push((
            if is_vdi_banner(head) {
                Supported(Format::Vdi)
            } else {
                Refused("vdi (its signature without the \"<<< ... >>>\" text banner)")
            },
            Strong,
        ));
    }
    if at(0, b"QED\0") {
        found.push((Supported(Format::Qed), Strong));
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
    // cloop (compressed loop, Knoppix): a shell script header, as qemu's cloop driver probes it
    // ("#!/bin/sh\n#V2.0 Format: cloop\n"; other versions change the number).
    if at(0, b"#!/bin/sh\n#V") && is_cloop_banner(head) {
        found.push((Refused("cloop"), Strong));
    }
    // Apple DMG (UDIF): the 512-byte `koly` trailer at the end.
    if footer.is_some_and(|f| f.starts_with(b"koly")) {
        found.push((Refused("dmg (Apple disk image)"), Strong));
    }
    // ISO 9660: "CD001" in the first volume descriptor, at sector 16 of 2048 bytes. An ISO is
    // its own kind of image (read as its bytes, inspected and registered as an ISO, never
    // converted): src/formats/iso.
    if at(0x8001, b"CD001") {
        found.push((Supported(Format::Iso), Weak));
    }
    found
}

/// Whether `head` starts with VirtualBox's text banner: `<<< `, then `>>>` before the signature
/// at 0x40.
fn is_vdi_banner(head: &[u8]) -> bool {
    head.starts_with(b"<<< ")
        && head
            .get(4..0x40)
            .is_some_and(|text| text.windows(3).any(|w| w == b">>>"))
}

/// Whether the second line of `head` (after `#!/bin/sh`) names the cloop format.
fn is_cloop_banner(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n')
        .nth(1)
        .is_some_and(|line| line.windows(13).any(|w| w == b"Format: cloop"))
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
    fn recognises_vdi_qed_and_qcow_version_1() {
        let mut vdi = head_with(0x40, &[0x7f, 0x10, 0xda, 0xbe]);
        vdi[..40].copy_from_slice(b"<<< Oracle VM VirtualBox Disk Image >>>\n");
        assert_eq!(probe_head(&vdi).unwrap(), Format::Vdi);
        assert_eq!(probe_head(&head_with(0, b"QED\0")).unwrap(), Format::Qed);
        assert_eq!(
            probe_head(&head_with(0, b"QFI\xfb\0\0\0\x01")).unwrap(),
            Format::Qcow
        );
        let e = probe_head(&head_with(0, b"QFI\xfb\0\0\0\x04")).unwrap_err();
        assert!(e.to_string().contains("unknown version"), "{e}");
        // A VHD footer at the end of a VDI: two formats.
        let n = vdi.len();
        vdi[n - 512..n - 504].copy_from_slice(b"conectix");
        assert_eq!(probe_head(&vdi).unwrap_err().kind(), "ambiguous");
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
    fn recognises_vhdx_by_its_file_type_identifier() {
        assert_eq!(
            probe_head(&head_with(0, b"vhdxfile")).unwrap(),
            Format::Vhdx
        );
        assert_eq!(probe_head(&head_with(8, b"vhdxfile")).unwrap(), Format::Raw);
    }

    #[test]
    fn a_vhdx_header_section_holding_an_iso_or_a_gpt_is_ambiguous() {
        let mut h = head_with(0, b"vhdxfile");
        h[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(probe_head(&h).unwrap_err().kind(), "ambiguous");
        assert!(check_named(&h, &h[h.len() - 512..], Format::Vhdx).is_err());
        let mut h = head_with(0, b"vhdxfile");
        h[510] = 0x55;
        h[511] = 0xaa;
        h[446 + 4] = 0xee;
        assert_eq!(probe_head(&h).unwrap_err().kind(), "ambiguous");
    }

    #[test]
    fn refuses_known_unsupported_formats_by_name() {
        for (off, magic, name) in [
            (
                0x40,
                &[0x7f, 0x10, 0xda, 0xbe][..],
                "vdi (its signature without",
            ),
            (0, b"LUKS\xba\xbe", "luks"),
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
        // A qcow2 with 4 KiB clusters may hold guest data at 32 KiB: an ISO there is the
        // guest's, and the file is what its header says.
        let mut q = head_with(0, b"QFI\xfb\0\0\0\x03");
        q[20..24].copy_from_slice(&12u32.to_be_bytes());
        q[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(probe_head(&q).unwrap(), Format::Qcow2);
        // With 64 KiB clusters, 32 KiB is inside the header cluster: an ISO and a qcow2 at once.
        q[20..24].copy_from_slice(&16u32.to_be_bytes());
        assert_eq!(probe_head(&q).unwrap_err().kind(), "ambiguous");
        // A file with nothing but the ISO 9660 signature is an ISO, never ambiguous.
        let iso = head_with(0x8001, b"CD001");
        assert_eq!(probe_head(&iso).unwrap(), Format::Iso);
        // Named iso, a qcow2 header at 0 is a second format: ambiguous.
        let mut q_iso = head_with(0, b"QFI\xfb\0\0\0\x03");
        q_iso[0x8001..0x8006].copy_from_slice(b"CD001");
        let tail = q_iso[q_iso.len() - TAIL_LEN..].to_vec();
        assert_eq!(
            check_named(&q_iso, &tail, Format::Iso).unwrap_err().kind(),
            "ambiguous"
        );
    }

    #[test]
    fn recognises_cloop_and_dmg() {
        let cloop = b"#!/bin/sh\n#V2.0 Format: cloop\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\nexit $?\n";
        let e = probe(cloop, cloop).unwrap_err();
        assert!(e.to_string().contains("cloop"), "{e}");
        let script = b"#!/bin/sh\necho hello\n";
        assert_eq!(probe(script, script).unwrap(), Format::Raw);
        let mut dmg = vec![0u8; 8192];
        dmg[8192 - 512..8192 - 508].copy_from_slice(b"koly");
        let e = probe_head(&dmg).unwrap_err();
        assert_eq!(e.kind(), "unsupported");
        assert!(e.to_string().contains("dmg"), "{e}");
        // "koly" anywhere but the trailer's place is data.
        let mut data = vec![0u8; 8192];
        data[8192 - 1024..8192 - 1020].copy_from_slice(b"koly");
        assert_eq!(probe_head(&data).unwrap(), Format::Raw);
    }

    /// Naming the format does not lift the ambiguity; raw is read as named.
    #[test]
    fn named_formats_refuse_polyglots() {
        let n = HEAD_LEN;
        let mut qcow2_vhd = head_with(0, b"QFI\xfb\0\0\0\x03");
        qcow2_vhd[n - 512..n - 504].copy_from_slice(b"conectix");
        let tail = |h: &[u8]| h[h.len() - TAIL_LEN..].to_vec();
        for f in [Format::Qcow2, Format::Vhd, Format::Vmdk] {
            let e = check_named(&qcow2_vhd, &tail(&qcow2_vhd), f).unwrap_err();
            assert_eq!(e.kind(), "ambiguous", "{f}");
        }
        assert!(check_named(&qcow2_vhd, &tail(&qcow2_vhd), Format::Raw).is_ok());
        // A ZVHD2 final footer page at the end of a VMDK.
        let mut vmdk = head_with(0, b"KDMV");
        vmdk[n - 4096..n - 4090].copy_from_slice(b"z2strm");
        assert!(check_named(&vmdk, &tail(&vmdk), Format::Vmdk).is_err());
        assert_eq!(probe_head(&vmdk).unwrap_err().kind(), "ambiguous");
        // An MBR with a protective GPT entry in the qcow2 header sector; the same MBR in a
        // fixed VHD's first sector is the guest's.
        let mut q = head_with(0, b"QFI\xfb\0\0\0\x03");
        q[446 + 4] = 0xee;
        q[510] = 0x55;
        q[511] = 0xaa;
        assert!(check_named(&q, &tail(&q), Format::Qcow2).is_err());
        assert_eq!(probe_head(&q).unwrap_err().kind(), "ambiguous");
        let mut fixed = head_with(446 + 4, &[0xee]);
        fixed[510] = 0x55;
        fixed[511] = 0xaa;
        fixed[n - 512..n - 504].copy_from_slice(b"conectix");
        assert!(check_named(&fixed, &tail(&fixed), Format::Vhd).is_ok());
        assert_eq!(probe_head(&fixed).unwrap(), Format::Vhd);
        // The format's own signatures are not a second format.
        let mut dynamic = head_with(0, b"conectix");
        dynamic[n - 512..n - 504].copy_from_slice(b"conectix");
        assert!(check_named(&dynamic, &tail(&dynamic), Format::Vhd).is_ok());
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
