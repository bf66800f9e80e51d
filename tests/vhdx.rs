//! VHDX interoperability with qemu-img both ways, the committed fixtures made by qemu-img, and
//! the disk a VHDX's map describes.

mod common;

use std::path::{Path, PathBuf};

use common::{have_qemu_img, ims, mixed_raw, qemu_compare, qemu_img, s};

/// The gunzipped bytes of `testdata/vhdx/NAME.gz`.
fn fixture(name: &str) -> Vec<u8> {
    common::gunzipped("vhdx", name)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn info(path: &Path) -> serde_json::Value {
    let out = ims(&["info", "--output", "json", s(path)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn committed_fixtures_read_as_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let raw = fixture("small.raw");
    for (name, subformat) in [
        ("small-dynamic.vhdx", "dynamic"),
        ("small-fixed.vhdx", "fixed"),
    ] {
        let vhdx = write(dir.path(), name, &fixture(name));
        let out = dir.path().join("out.raw");
        let r = ims(&["convert", "-O", "raw", s(&vhdx), s(&out)]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(std::fs::read(&out).unwrap() == raw, "{name}");
        let i = info(&vhdx);
        assert_eq!(i["format"], "vhdx");
        assert_eq!(i["virtual-size"], 3 << 20);
        assert_eq!(i["cluster-size"], 1 << 20);
        let data = &i["format-specific"]["data"];
        assert_eq!(data["subformat"], subformat);
        assert_eq!(data["block-size"], 1 << 20);
        assert_eq!(data["log-size"], 1 << 20);
        assert_eq!(data["logical-sector-size"], 512);
        assert_eq!(data["creator"], "QEMU v10.0.2");
    }
}

/// Every data extent of `ims map` is at its offset in the file: reading the file there gives
/// the disk's bytes, and every other extent reads as zeros.
#[test]
fn the_map_locates_every_stored_byte() {
    let dir = tempfile::tempdir().unwrap();
    let raw = fixture("small.raw");
    for name in ["small-dynamic.vhdx", "small-fixed.vhdx"] {
        let bytes = fixture(name);
        let vhdx = write(dir.path(), name, &bytes);
        let out = ims(&["map", "--output", "json", s(&vhdx)]);
        assert!(out.status.success());
        let map: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut covered = 0;
        let mut data = 0;
        for e in &map {
            let start = e["start"].as_u64().unwrap() as usize;
            let len = e["length"].as_u64().unwrap() as usize;
            assert_eq!(start, covered);
            covered += len;
            let want = &raw[start..start + len];
            if e["data"] == true {
                let at = e["offset"].as_u64().unwrap() as usize;
                assert_eq!(&bytes[at..at + len], want, "{name} at {start}");
                data += len;
            } else {
                assert!(want.iter().all(|&b| b == 0), "{name} at {start}");
            }
        }
        assert_eq!(covered, raw.len());
        // Blocks 0 and 2 (the file was written without holes); block 1 holds only zeros and
        // is not stored.
        assert_eq!(data, 2 << 20, "{name}");
    }
}

#[test]
fn reads_every_qemu_img_variant_and_agrees_on_size() {
    if !have_qemu_img("reads_every_qemu_img_variant_and_agrees_on_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let out = dir.path().join("out.raw");
    for size in [24u64 << 20, (40 << 20) + 512 * 7] {
        mixed_raw(&src, size, size);
        for opts in [
            "subformat=dynamic",
            "subformat=fixed",
            "block_size=1048576",
            "block_size=33554432,log_size=4194304",
            "subformat=fixed,block_size=268435456",
            "block_state_zero=off",
        ] {
            let vhdx = dir.path().join("q.vhdx");
            let _ = std::fs::remove_file(&vhdx);
            qemu_img(&[
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                opts,
                s(&src),
                s(&vhdx),
            ]);
            // Probed, not named.
            let r = ims(&["convert", "-O", "raw", s(&vhdx), s(&out)]);
            assert!(
                r.status.success(),
                "{opts}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            assert!(qemu_compare(&src, "raw", &out, "raw"), "{size} {opts}");
            let theirs: serde_json::Value = serde_json::from_slice(
                &qemu_img(&["info", "-f", "vhdx", "--output", "json", s(&vhdx)]).stdout,
            )
            .unwrap();
            let ours = info(&vhdx);
            assert_eq!(ours["virtual-size"], theirs["virtual-size"], "{opts}");
            assert_eq!(ours["cluster-size"], theirs["cluster-size"], "{opts}");
        }
    }
}

#[test]
fn qemu_img_checks_and_compares_what_ims_writes() {
    if !have_qemu_img("qemu_img_checks_and_compares_what_ims_writes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    // A whole number of blocks, and a size that is not even a whole sector.
    for size in [24u64 << 20, 10_000_001] {
        mixed_raw(&src, size, size + 1);
        for opts in [
            "subformat=dynamic",
            "subformat=fixed",
            "block_size=1M,log_size=2M",
            "subformat=fixed,block_size=33554432,log_size=4194304",
        ] {
            let vhdx = dir.path().join("w.vhdx");
            let r = ims(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                opts,
                s(&src),
                s(&vhdx),
            ]);
            assert!(
                r.status.success(),
                "{opts}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            let check = std::process::Command::new("qemu-img")
                .args(["check", "-f", "vhdx", s(&vhdx)])
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{opts}: {}",
                String::from_utf8_lossy(&check.stdout)
            );
            assert!(qemu_compare(&src, "raw", &vhdx, "vhdx"), "{size} {opts}");
            let theirs: serde_json::Value = serde_json::from_slice(
                &qemu_img(&["info", "-f", "vhdx", "--output", "json", s(&vhdx)]).stdout,
            )
            .unwrap();
            assert_eq!(theirs["virtual-size"], size.next_multiple_of(512), "{opts}");
            // And ims reads it back.
            let back = dir.path().join("back.raw");
            assert!(
                ims(&["convert", "-O", "raw", s(&vhdx), s(&back)])
                    .status
                    .success()
            );
            assert!(qemu_compare(&src, "raw", &back, "raw"), "{size} {opts}");
        }
    }
}

#[test]
fn a_dynamic_vhdx_stores_only_blocks_with_data_and_a_fixed_one_streams() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "small.raw", &fixture("small.raw"));
    let dynamic = dir.path().join("d.vhdx");
    let r = ims(&[
        "convert",
        "-O",
        "vhdx",
        "-o",
        "block_size=1M",
        s(&src),
        s(&dynamic),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The header section, log, BAT and metadata (4 MiB), then blocks 0 and 2; block 1 is zeros.
    assert_eq!(std::fs::metadata(&dynamic).unwrap().len(), 6 << 20);
    // A fixed VHDX needs no seeking: written to stdout, it is the same disk.
    let out = ims(&[
        "convert",
        "-O",
        "vhdx",
        "-o",
        "subformat=fixed,block_size=1M",
        s(&src),
        "-",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 7 << 20);
    let fixed = write(dir.path(), "f.vhdx", &out.stdout);
    assert_eq!(
        info(&fixed)["format-specific"]["data"]["subformat"],
        "fixed"
    );
    for (vhdx, name) in [(&dynamic, "dynamic"), (&fixed, "fixed")] {
        let back = dir.path().join("back.raw");
        assert!(
            ims(&["convert", "-O", "raw", s(vhdx), s(&back)])
                .status
                .success()
        );
        assert!(
            std::fs::read(&back).unwrap() == fixture("small.raw"),
            "{name}"
        );
    }
    // A dynamic one must seek.
    let out = ims(&["convert", "-O", "vhdx", s(&src), "-"]);
    assert!(!out.status.success());
}

#[test]
fn libvhdi_reads_ims_output_when_installed() {
    let pyvhdi = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import pyvhdi"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pyvhdi {
        common::skip(
            "libvhdi_reads_ims_output_when_installed",
            "python3-libvhdi is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = mixed_raw(&src, 10_000_000, 31);
    for sub in ["dynamic", "fixed"] {
        let vhdx = dir.path().join(format!("{sub}.vhdx"));
        let opts = format!("subformat={sub},block_size=1M");
        let r = ims(&["convert", "-O", "vhdx", "-o", &opts, s(&src), s(&vhdx)]);
        assert!(r.status.success());
        let script = "import pyvhdi,sys\nf=pyvhdi.file(); f.open(sys.argv[1])\nsys.stdout.buffer.write(f.read_buffer(f.get_media_size()))";
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script, s(&vhdx)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // 10,000,000 bytes rounded up to a whole sector.
        assert_eq!(out.stdout.len(), 10_000_384, "{sub}");
        assert!(
            out.stdout[..data.len()] == data[..],
            "{sub}: libvhdi reads other bytes"
        );
        assert!(out.stdout[data.len()..].iter().all(|&b| b == 0));
    }
}

/// A log entry laid out as the specification describes: header and descriptors in the first
/// sector, one data sector per data descriptor (its first 8 and last 4 bytes moved into the
/// descriptor, the sequence number split around the rest), CRC-32C over the whole entry.
/// `writes`: (file offset, zero length or 4096, the sector's bytes for a data write).
fn log_entry(seq: u64, guid: &uuid::Uuid, writes: &[(u64, u64, Option<&[u8]>)]) -> Vec<u8> {
    use byteorder::{ByteOrder, LittleEndian};
    let data: Vec<&[u8]> = writes.iter().filter_map(|w| w.2).collect();
    let length = (1 + data.len()) * 4096;
    let mut b = vec![0u8; length];
    b[..4].copy_from_slice(b"loge");
    LittleEndian::write_u32(&mut b[8..], length as u32);
    LittleEndian::write_u32(&mut b[12..], 0); // the tail: the first entry, at the log's start
    LittleEndian::write_u64(&mut b[16..], seq);
    LittleEndian::write_u32(&mut b[24..], writes.len() as u32);
    b[32..48].copy_from_slice(&guid.to_bytes_le());
    LittleEndian::write_u64(&mut b[48..], 8 << 20); // FlushedFileOffset
    LittleEndian::write_u64(&mut b[56..], 9 << 20); // LastFileOffset
    let mut sector = 1;
    for (i, (offset, len, bytes)) in writes.iter().enumerate() {
        let d = 64 + i * 32;
        LittleEndian::write_u64(&mut b[d + 16..], *offset);
        LittleEndian::write_u64(&mut b[d + 24..], seq);
        match bytes {
            None => {
                b[d..d + 4].copy_from_slice(b"zero");
                LittleEndian::write_u64(&mut b[d + 8..], *len);
            }
            Some(s) => {
                b[d..d + 4].copy_from_slice(b"desc");
                b[d + 4..d + 8].copy_from_slice(&s[4092..]);
                b[d + 8..d + 16].copy_from_slice(&s[..8]);
                let at = sector * 4096;
                b[at..at + 4].copy_from_slice(b"data");
                LittleEndian::write_u32(&mut b[at + 4..], (seq >> 32) as u32);
                b[at + 8..at + 4092].copy_from_slice(&s[8..4092]);
                LittleEndian::write_u32(&mut b[at + 4092..], seq as u32);
                sector += 1;
            }
        }
    }
    let sum = crc32c::crc32c(&b);
    LittleEndian::write_u32(&mut b[4..], sum);
    b
}

/// A VHDX left with two log entries (an unclean shutdown): the first zeroes the BAT's first
/// sector, the second rewrites it to map block 0 to a block appended past the old end of the
/// file and block 3 to where it was. Read as the replayed disk; the file is not written.
#[test]
fn a_vhdx_with_log_entries_reads_as_the_replayed_disk() {
    use byteorder::{ByteOrder, LittleEndian};
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut disk = vec![0u8; 4 * MIB];
    for (i, block) in disk.chunks_mut(MIB).enumerate() {
        block.fill(b'A' + i as u8);
    }
    let src = write(dir.path(), "src.raw", &disk);
    let clean = dir.path().join("clean.vhdx");
    let r = ims(&[
        "convert",
        "-O",
        "vhdx",
        "-o",
        "block_size=1M",
        s(&src),
        s(&clean),
    ]);
    assert!(r.status.success());
    let mut b = std::fs::read(&clean).unwrap();
    // ims's layout: log at 1 MiB, BAT at 2 MiB, metadata at 3 MiB, blocks from 4 MiB.
    assert_eq!(b.len(), 8 * MIB);
    assert_eq!(LittleEndian::read_u64(&b[2 * MIB..]), (4 << 20) | 6);
    // The new block 0, written before the crash (payload is never logged).
    b.extend(std::iter::repeat_n(b'E', MIB));
    let guid = uuid::Uuid::from_u128(0x00c0_ffee);
    let mut bat = vec![0u8; 4096];
    LittleEndian::write_u64(&mut bat[0..], (8 << 20) | 6);
    LittleEndian::write_u64(&mut bat[24..], (7 << 20) | 6);
    let first = log_entry(10, &guid, &[((2 * MIB) as u64, 4096, None)]);
    let second = log_entry(11, &guid, &[((2 * MIB) as u64, 4096, Some(&bat))]);
    b[MIB..MIB + first.len()].copy_from_slice(&first);
    let at = MIB + first.len();
    b[at..at + second.len()].copy_from_slice(&second);
    for h in [64 << 10, 128 << 10] {
        b[h + 48..h + 64].copy_from_slice(&guid.to_bytes_le());
        b[h + 4..h + 8].fill(0);
        let sum = crc32c::crc32c(&b[h..h + 4096]);
        LittleEndian::write_u32(&mut b[h + 4..], sum);
    }
    let dirty = write(dir.path(), "dirty.vhdx", &b);
    let out = dir.path().join("out.raw");
    let r = ims(&["convert", "-O", "raw", s(&dirty), s(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let got = std::fs::read(&out).unwrap();
    assert!(got[..MIB].iter().all(|&x| x == b'E'));
    assert!(got[MIB..3 * MIB].iter().all(|&x| x == 0));
    assert!(got[3 * MIB..].iter().all(|&x| x == b'D'));
    assert_eq!(
        info(&dirty)["format-specific"]["data"]["log-entries-replayed"],
        2
    );
    assert!(std::fs::read(&dirty).unwrap() == b, "the file was written");

    // The second entry torn: the first alone is the active sequence, and the BAT's first
    // sector reads as zeros: every block not present.
    let mut torn = b.clone();
    torn[at + 4096 + 100] ^= 1;
    let torn = write(dir.path(), "torn.vhdx", &torn);
    let r = ims(&["convert", "-O", "raw", s(&torn), s(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&out).unwrap().iter().all(|&x| x == 0));
    assert_eq!(
        info(&torn)["format-specific"]["data"]["log-entries-replayed"],
        1
    );

    // Entries of another log (the header's GUID changed since): no valid sequence.
    let mut other = b.clone();
    for h in [64 << 10, 128 << 10] {
        other[h + 48] ^= 1;
        other[h + 4..h + 8].fill(0);
        let sum = crc32c::crc32c(&other[h..h + 4096]);
        LittleEndian::write_u32(&mut other[h + 4..], sum);
    }
    let other = write(dir.path(), "other.vhdx", &other);
    let r = ims(&["info", s(&other)]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("no valid sequence"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// Writes `disk` as a dynamic VHDX of 1 MiB blocks with ims.
fn vhdx_of(dir: &Path, name: &str, disk: &[u8]) -> Vec<u8> {
    let src = write(dir, &format!("{name}.raw"), disk);
    let out = dir.join(name);
    let r = ims(&[
        "convert",
        "-O",
        "vhdx",
        "-o",
        "block_size=1M",
        s(&src),
        s(&out),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    std::fs::read(&out).unwrap()
}

/// A differencing VHDX built by the test over a parent ims wrote: block 0 fully present, block
/// 1 partially present (its first half, per the sector bitmap), blocks 2 and 3 the parent's.
/// Read only with references allowed, and only over the parent the child's parent_linkage
/// names.
#[test]
fn a_differencing_vhdx_reads_through_its_parent() {
    use byteorder::{ByteOrder, LittleEndian};
    use ims::formats::vhdx::locator::ParentLocator;
    const MIB: usize = 1 << 20;
    const METADATA: usize = 3 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let mut parent_disk = vec![0u8; 4 * MIB];
    for (i, block) in parent_disk.chunks_mut(MIB).enumerate() {
        block.fill(b'0' + i as u8);
    }
    let parent = vhdx_of(dir.path(), "parent.vhdx", &parent_disk);
    let guid = info(&dir.path().join("parent.vhdx"))["format-specific"]["data"]["data-write-guid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut child_disk = vec![0u8; 4 * MIB];
    child_disk[..MIB].fill(b'C');
    child_disk[MIB..2 * MIB].fill(b'c');
    let mut child = vhdx_of(dir.path(), "child-base.vhdx", &child_disk);
    assert_eq!(child.len(), 6 * MIB);
    let make = |child: &mut Vec<u8>, linkage: &str| {
        let item = ParentLocator::to_bytes(&[
            ("parent_linkage", linkage),
            ("relative_path", ".\\parent.vhdx"),
            ("absolute_win32_path", "\\\\?\\C:\\elsewhere\\parent.vhdx"),
        ]);
        child[METADATA + 0x10004] = 2; // HasParent
        let at = METADATA + 0x20000;
        child[at..at + item.len()].copy_from_slice(&item);
        let e = METADATA + 32 + 5 * 32;
        let id = uuid::uuid!("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
        child[e..e + 16].copy_from_slice(&id.to_bytes_le());
        LittleEndian::write_u32(&mut child[e + 16..], 0x20000);
        LittleEndian::write_u32(&mut child[e + 20..], item.len() as u32);
        LittleEndian::write_u32(&mut child[e + 24..], 4);
        LittleEndian::write_u16(&mut child[METADATA + 10..], 6);
        // Block 1 partially present; the chunk's sector bitmap (BAT entry 4096, the chunk
        // ratio of 1 MiB blocks of 512-byte sectors) at 6 MiB.
        LittleEndian::write_u64(&mut child[2 * MIB + 8..], (5 << 20) | 7);
        LittleEndian::write_u64(&mut child[2 * MIB + 4096 * 8..], (6 << 20) | 6);
        child.resize(7 * MIB, 0);
        // Block 1's bits start at byte 256 of the bitmap (2048 sectors a block, a bit each):
        // its first 1024 sectors are present.
        child[6 * MIB + 256..6 * MIB + 256 + 128].fill(0xff);
    };
    make(&mut child, &format!("{{{guid}}}"));
    write(dir.path(), "parent.vhdx", &parent);
    let child_path = write(dir.path(), "child.vhdx", &child);
    let out = dir.path().join("out.raw");

    // References refused by default, named in the error.
    let r = ims(&["convert", "-O", "raw", s(&child_path), s(&out)]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("parent.vhdx"));

    let allow = s(dir.path());
    let r = ims(&[
        "convert",
        "--allow-references",
        allow,
        "-O",
        "raw",
        s(&child_path),
        s(&out),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let got = std::fs::read(&out).unwrap();
    let mut want = parent_disk.clone();
    want[..MIB].fill(b'C');
    want[MIB..MIB + MIB / 2].fill(b'c');
    assert!(got == want, "the child over its parent reads other bytes");
    let i = ims(&[
        "info",
        "--allow-references",
        allow,
        "--output",
        "json",
        s(&child_path),
    ]);
    let i: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    assert_eq!(i["format-specific"]["data"]["subformat"], "differencing");

    // A parent whose data changed since (another DataWriteGuid): refused.
    let mut stale = std::fs::read(&child_path).unwrap();
    make(&mut stale, "{00000000-1111-2222-3333-444444444444}");
    let stale = write(dir.path(), "stale.vhdx", &stale);
    let r = ims(&[
        "convert",
        "--allow-references",
        allow,
        "-O",
        "raw",
        s(&stale),
        s(&out),
    ]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("DataWriteGuid"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// ZERO, UNMAPPED and UNDEFINED blocks of a dynamic disk read as zeros, even when their entry
/// keeps the offset of the block they had (as the specification allows), and map as zeros.
#[test]
fn blocks_not_fully_present_read_as_zeros() {
    use byteorder::{ByteOrder, LittleEndian};
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut disk = vec![0u8; 4 * MIB];
    for (i, block) in disk.chunks_mut(MIB).enumerate() {
        block.fill(b'A' + i as u8);
    }
    let mut b = vhdx_of(dir.path(), "states.vhdx", &disk);
    LittleEndian::write_u64(&mut b[2 * MIB + 8..], 2); // ZERO
    LittleEndian::write_u64(&mut b[2 * MIB + 16..], (6 << 20) | 3); // UNMAPPED, old offset
    LittleEndian::write_u64(&mut b[2 * MIB + 24..], (7 << 20) | 1); // UNDEFINED, old offset
    let path = write(dir.path(), "states.vhdx", &b);
    let out = dir.path().join("out.raw");
    assert!(
        ims(&["convert", "-O", "raw", s(&path), s(&out)])
            .status
            .success()
    );
    let got = std::fs::read(&out).unwrap();
    assert!(got[..MIB].iter().all(|&x| x == b'A'));
    assert!(got[MIB..].iter().all(|&x| x == 0));
    let map = ims(&["map", "--output", "json", s(&path)]);
    let map: Vec<serde_json::Value> = serde_json::from_slice(&map.stdout).unwrap();
    assert_eq!(common::data_runs(&map), [(0, MIB as u64)]);
}
