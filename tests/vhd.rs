//! VHD interoperability with qemu-img (`vpc`) both ways, differencing disks built by the test,
//! and malformed structures.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use byteorder::{BigEndian, ByteOrder};
use common::{
    allocated, assert_only_block_is_data, have_qemu_img, ims, mixed_raw, qemu_compare, qemu_img, s,
    sparse_file,
};
use ims::formats::vhd::dynamic::{DynamicHeader, HEADER_VERSION, ParentLocator, UNALLOCATED};
use ims::formats::vhd::footer::{
    DiskType, FEATURES_RESERVED, FILE_FORMAT_VERSION, Footer, Geometry, checksum,
};

#[test]
fn reads_every_qemu_img_variant_and_agrees_on_size() {
    if !have_qemu_img("reads_every_qemu_img_variant_and_agrees_on_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let out = dir.path().join("out.raw");
    // A CHS-aligned size, a whole number of MiB, and an odd one.
    for size in [20468 * 512, 8 << 20, 10_000_000] {
        mixed_raw(&src, size, size);
        for sub in ["fixed", "dynamic"] {
            for force in ["off", "on"] {
                let vhd = dir.path().join(format!("q-{sub}-{force}.vhd"));
                qemu_img(&[
                    "convert",
                    "-q",
                    "-f",
                    "raw",
                    "-O",
                    "vpc",
                    "-o",
                    &format!("subformat={sub},force_size={force}"),
                    s(&src),
                    s(&vhd),
                ]);
                // Probed, not named: the footer (or its copy at 0) identifies the file.
                let r = ims(&["convert", "-O", "raw", s(&vhd), s(&out)]);
                assert!(
                    r.status.success(),
                    "{sub} {force}: {}",
                    String::from_utf8_lossy(&r.stderr)
                );
                assert!(
                    qemu_compare(&src, "raw", &out, "raw"),
                    "{size} {sub} {force}"
                );
                let theirs: serde_json::Value = serde_json::from_slice(
                    &qemu_img(&["info", "-f", "vpc", "--output", "json", s(&vhd)]).stdout,
                )
                .unwrap();
                let ours: serde_json::Value =
                    serde_json::from_slice(&ims(&["info", "--output", "json", s(&vhd)]).stdout)
                        .unwrap();
                assert_eq!(ours["format"], "vhd");
                assert_eq!(
                    ours["virtual-size"], theirs["virtual-size"],
                    "{size} {sub} {force}"
                );
                let source = &ours["format-specific"]["data"]["size-source"];
                assert_eq!(
                    source,
                    if force == "on" {
                        "current_size"
                    } else {
                        "geometry"
                    }
                );
            }
        }
    }
}

#[test]
fn qemu_img_reads_what_ims_writes() {
    if !have_qemu_img("qemu_img_reads_what_ims_writes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let vhd = dir.path().join("w.vhd");
    for size in [20468 * 512, 10_000_000, (5 << 20) + 512] {
        mixed_raw(&src, size, size + 1);
        for opts in [
            "subformat=dynamic",
            "subformat=fixed",
            "subformat=dynamic,force_size=on",
            "subformat=fixed,force_size=on",
        ] {
            let r = ims(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhd",
                "-o",
                opts,
                s(&src),
                s(&vhd),
            ]);
            assert!(
                r.status.success(),
                "{opts}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            assert!(qemu_compare(&src, "raw", &vhd, "vpc"), "{size} {opts}");
            let info: serde_json::Value = serde_json::from_slice(
                &qemu_img(&["info", "-f", "vpc", "--output", "json", s(&vhd)]).stdout,
            )
            .unwrap();
            let vsize = info["virtual-size"].as_u64().unwrap();
            if opts.contains("force_size=on") {
                assert_eq!(vsize, size.next_multiple_of(512), "{opts}");
            } else {
                assert!(vsize >= size, "{opts}");
            }
            // And ims reads its own output back.
            let back = dir.path().join("back.raw");
            assert!(
                ims(&["convert", "-O", "raw", s(&vhd), s(&back)])
                    .status
                    .success()
            );
            assert!(qemu_compare(&src, "raw", &back, "raw"));
        }
    }
}

#[test]
fn dynamic_output_leaves_zero_blocks_out() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("sparse.raw");
    sparse_file(&src, 1 << 30, 300 << 20, &[9u8; 4096]);
    let vhd = dir.path().join("d.vhd");
    assert!(
        ims(&[
            "convert",
            "-O",
            "vhd",
            "-o",
            "force_size=on",
            s(&src),
            s(&vhd)
        ])
        .status
        .success()
    );
    // Footer copy, header, BAT (512 entries = 2 KiB), one block with its bitmap, footer.
    let len = std::fs::metadata(&vhd).unwrap().len();
    assert_eq!(len, 512 + 1024 + 2048 + 512 + (2 << 20) + 512);
    if have_qemu_img("dynamic_output_leaves_zero_blocks_out") {
        assert!(qemu_compare(&src, "raw", &vhd, "vpc"));
    }
}

#[test]
fn fixed_vhd_holes_map_as_zeros_and_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("sparse.raw");
    sparse_file(&src, 256 << 20, 100 << 20, &[9u8; 4096]);
    let vhd = dir.path().join("f.vhd");
    let made = ims(&[
        "convert",
        "-O",
        "vhd",
        "-o",
        "subformat=fixed,force_size=on",
        s(&src),
        s(&vhd),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The writer left the zero ranges as holes; the map must say so (one data run, zeros
    // around it), as the file system reports them.
    let map = ims(&["map", "-f", "vhd", "--output", "json", s(&vhd)]);
    assert_only_block_is_data(&map.stdout, 100 << 20, 256 << 20);
    // Converting it reads only that and writes a sparse raw equal to the source.
    let out = dir.path().join("out.raw");
    assert!(
        ims(&["convert", "-f", "vhd", "-O", "raw", s(&vhd), s(&out)])
            .status
            .success()
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    assert!(allocated(&out) < 4 << 20);
}

#[test]
fn fixed_vhd_streams_to_stdout_and_dynamic_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = mixed_raw(&src, 3 << 20, 21);
    let out = ims(&[
        "convert",
        "-O",
        "vhd",
        "-o",
        "subformat=fixed,force_size=on",
        s(&src),
        "-",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), data.len() + 512);
    assert_eq!(&out.stdout[..data.len()], &data[..]);
    let footer: [u8; 512] = out.stdout[data.len()..].try_into().unwrap();
    let f = Footer::parse(&footer, 0).unwrap();
    assert_eq!(f.disk_type, DiskType::Fixed);
    assert_eq!(f.current_size, 3 << 20);
    let out = ims(&["convert", "-O", "vhd", s(&src), "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be written to a pipe"));
}

#[test]
fn azure_profile_is_fixed_with_a_whole_mib() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src, 10_000_000, 22);
    let vhd = dir.path().join("az.vhd");
    assert!(
        ims(&[
            "convert",
            "-O",
            "vhd",
            "-o",
            "profile=azure",
            s(&src),
            s(&vhd)
        ])
        .status
        .success()
    );
    let bytes = std::fs::read(&vhd).unwrap();
    let footer: [u8; 512] = bytes[bytes.len() - 512..].try_into().unwrap();
    let f = Footer::parse(&footer, 0).unwrap();
    assert_eq!(f.disk_type, DiskType::Fixed);
    assert_eq!(f.current_size, 10 << 20);
    assert_eq!(bytes.len() as u64, f.current_size + 512);
    assert_eq!(f.disk_geometry.sectors(), 65535 * 16 * 255);
    if have_qemu_img("azure_profile_is_fixed_with_a_whole_mib") {
        assert!(qemu_compare(&src, "raw", &vhd, "vpc"));
    }
}

/// Builds a differencing VHD over `parent` whose block 0 holds `child_sectors` (sector index,
/// byte) and whose other sectors fall through to the parent.
fn make_child(
    child: &Path,
    parent_id: [u8; 16],
    size: u64,
    locator: &str,
    name: &str,
    child_sectors: &[(u64, u8)],
) {
    let block_size: u32 = 2 << 20;
    let blocks = size.div_ceil(u64::from(block_size)) as u32;
    let mut locators = vec![
        ParentLocator {
            platform_code: [0; 4],
            platform_data_space: 0,
            platform_data_length: 0,
            platform_data_offset: 0,
        };
        8
    ];
    let locator_bytes: Vec<u8> = locator
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    locators[0] = ParentLocator {
        platform_code: if locator.contains(':') {
            *b"W2ku"
        } else {
            *b"W2ru"
        },
        platform_data_space: 1,
        platform_data_length: locator_bytes.len() as u32,
        platform_data_offset: 4096,
    };
    let header = DynamicHeader {
        data_offset: u64::MAX,
        table_offset: 2048,
        header_version: HEADER_VERSION,
        max_table_entries: blocks,
        block_size,
        checksum: 0,
        parent_unique_id: parent_id,
        parent_time_stamp: 0,
        parent_unicode_name: name.into(),
        parent_locators: locators.clone(),
    };
    let mut hb = header.to_bytes();
    // to_bytes leaves parent fields out: fill the name and the locator, then the checksum.
    for (i, u) in name.encode_utf16().enumerate() {
        BigEndian::write_u16(&mut hb[64 + 2 * i..], u);
    }
    let l = &locators[0];
    hb[576..580].copy_from_slice(&l.platform_code);
    BigEndian::write_u32(&mut hb[580..584], l.platform_data_space);
    BigEndian::write_u32(&mut hb[584..588], l.platform_data_length);
    BigEndian::write_u64(&mut hb[592..600], l.platform_data_offset);
    let sum = checksum(&hb, 36);
    BigEndian::write_u32(&mut hb[36..40], sum);
    let footer = Footer {
        features: FEATURES_RESERVED,
        file_format_version: FILE_FORMAT_VERSION,
        data_offset: 512,
        time_stamp: 0,
        creator_application: *b"win ",
        creator_version: 0x000a_0000,
        creator_host_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        disk_geometry: Geometry::for_sectors(size / 512),
        disk_type: DiskType::Differencing,
        checksum: 0,
        unique_id: [0xcc; 16],
        saved_state: 0,
    }
    .to_bytes();
    let f = std::fs::File::create(child).unwrap();
    f.write_all_at(&footer, 0).unwrap();
    f.write_all_at(&hb, 512).unwrap();
    let mut bat = vec![UNALLOCATED; blocks as usize];
    let block_at: u64 = 8192;
    bat[0] = (block_at / 512) as u32;
    let bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.to_be_bytes()).collect();
    f.write_all_at(&bat_bytes, 2048).unwrap();
    f.write_all_at(&locator_bytes, 4096).unwrap();
    let mut bitmap = [0u8; 512];
    for &(sector, byte) in child_sectors {
        bitmap[(sector / 8) as usize] |= 0x80 >> (sector % 8);
        f.write_all_at(&[byte; 512], block_at + 512 + sector * 512)
            .unwrap();
    }
    f.write_all_at(&bitmap, block_at).unwrap();
    let end = block_at + 512 + u64::from(block_size);
    f.write_all_at(&footer, end).unwrap();
}

#[test]
fn differencing_disk_reads_through_its_parent_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let base_raw = dir.path().join("base.raw");
    let data = mixed_raw(&base_raw, 4 << 20, 23);
    let parent = dir.path().join("base.vhd");
    assert!(
        ims(&[
            "convert",
            "-O",
            "vhd",
            "-o",
            "force_size=on",
            s(&base_raw),
            s(&parent)
        ])
        .status
        .success()
    );
    let pbytes = std::fs::read(&parent).unwrap();
    let pf: [u8; 512] = pbytes[pbytes.len() - 512..].try_into().unwrap();
    let parent_id = Footer::parse(&pf, 0).unwrap().unique_id;
    let child = dir.path().join("child.vhd");
    make_child(
        &child,
        parent_id,
        4 << 20,
        ".\\base.vhd",
        "base.vhd",
        &[(0, 0xaa), (5, 0xbb)],
    );

    // Refused by default, naming the parent.
    let out = ims(&[
        "convert",
        "-O",
        "raw",
        s(&child),
        s(&dir.path().join("x.raw")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parent locator") && err.contains("base.vhd"),
        "{err}"
    );

    // Allowed: sectors 0 and 5 from the child, the rest from the parent.
    let merged = dir.path().join("merged.raw");
    let out = ims(&[
        "convert",
        "--allow-references",
        s(dir.path()),
        "-O",
        "raw",
        s(&child),
        s(&merged),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expect = data.clone();
    expect[..512].fill(0xaa);
    expect[5 * 512..6 * 512].fill(0xbb);
    assert_eq!(std::fs::read(&merged).unwrap(), expect);

    // A parent whose unique id differs is refused.
    let other = dir.path().join("other.vhd");
    make_child(&other, [1; 16], 4 << 20, ".\\base.vhd", "base.vhd", &[]);
    let out = ims(&[
        "convert",
        "--allow-references",
        s(dir.path()),
        "-O",
        "raw",
        s(&other),
        "-",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unique id"));

    // An absolute locator is never followed, even when its file exists and references are allowed.
    let abs = dir.path().join("abs.vhd");
    let abs_path = format!("{}", parent.display());
    make_child(&abs, parent_id, 4 << 20, &abs_path, &abs_path, &[]);
    let out = ims(&[
        "convert",
        "--allow-references",
        s(dir.path()),
        "-O",
        "raw",
        s(&abs),
        "-",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
}

/// A qemu-img-independent dynamic VHD made by ims, to damage.
fn dynamic_vhd(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let src = dir.join("src.raw");
    mixed_raw(&src, 6 << 20, 24);
    let vhd = dir.join("d.vhd");
    assert!(
        ims(&["convert", "-O", "vhd", s(&src), s(&vhd)])
            .status
            .success()
    );
    let bytes = std::fs::read(&vhd).unwrap();
    (vhd, bytes)
}

fn fails_with(path: &Path, bytes: &[u8], needle: &str) {
    std::fs::write(path, bytes).unwrap();
    let out = ims(&["convert", "-f", "vhd", "-O", "raw", s(path), "-"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{needle}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

fn fix_header_checksum(bytes: &mut [u8]) {
    let sum = checksum(&bytes[512..1536], 36);
    BigEndian::write_u32(&mut bytes[512 + 36..512 + 40], sum);
}

#[test]
fn malformed_structures_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (vhd, good) = dynamic_vhd(dir.path());
    let bad = dir.path().join("bad.vhd");
    let n = good.len();

    // Bad checksum in both footer copies.
    let mut b = good.clone();
    b[64] ^= 0xff;
    b[n - 512 + 64] ^= 0xff;
    fails_with(&bad, &b, "checksum");

    // Only the footer at the end damaged: the copy at 0 is used, and info says so.
    let mut b = good.clone();
    b[n - 512 + 64] ^= 0xff;
    std::fs::write(&bad, &b).unwrap();
    let out = ims(&["info", "-f", "vhd", "--output", "json", s(&bad)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("copy at offset 0"));

    // BAT offset past the end of the file.
    let mut b = good.clone();
    BigEndian::write_u64(&mut b[512 + 16..], 1 << 40);
    fix_header_checksum(&mut b);
    fails_with(&bad, &b, "BAT");

    // A BAT entry pointing past the end of the file.
    let mut b = good.clone();
    BigEndian::write_u32(&mut b[1536..], 0x0100_0000);
    fails_with(&bad, &b, "block 0");

    // Huge max table entries: the declared table cannot be in the file, and nothing huge is allocated.
    let mut b = good.clone();
    BigEndian::write_u32(&mut b[512 + 28..], u32::MAX);
    fix_header_checksum(&mut b);
    fails_with(&bad, &b, "entries");

    // Too few table entries for the disk.
    let mut b = good.clone();
    BigEndian::write_u32(&mut b[512 + 28..], 1);
    fix_header_checksum(&mut b);
    fails_with(&bad, &b, "cannot hold");

    // Block size not a power of two.
    let mut b = good.clone();
    BigEndian::write_u32(&mut b[512 + 32..], 3 << 20);
    fix_header_checksum(&mut b);
    fails_with(&bad, &b, "power of two");

    // Unknown disk type.
    let mut b = good.clone();
    for at in [0, n - 512] {
        BigEndian::write_u32(&mut b[at + 60..], 9);
        let sum = checksum(&b[at..at + 512], 64);
        BigEndian::write_u32(&mut b[at + 64..], sum);
    }
    fails_with(&bad, &b, "disk type 9");

    // Truncated: the file ends inside the last block (and the end footer is gone).
    fails_with(&bad, &good[..n - 4096], "block");
    // Too short for a footer.
    fails_with(&bad, &good[..100], "truncated");

    // The undamaged file still reads.
    assert!(
        ims(&["convert", "-O", "raw", s(&vhd), "-"])
            .status
            .success()
    );
}

#[test]
fn libvhdi_reads_ims_output_when_installed() {
    // libvhdi's Python binding (Debian python3-libvhdi) reads the whole disk; vhdiinfo
    // (libvhdi-utils) only the headers.
    let pyvhdi = Command::new("/usr/bin/python3")
        .args(["-c", "import pyvhdi"])
        .output()
        .is_ok_and(|o| o.status.success());
    let vhdiinfo = Command::new("vhdiinfo").arg("-V").output().is_ok();
    if !pyvhdi && !vhdiinfo {
        common::skip(
            "libvhdi_reads_ims_output_when_installed",
            "neither python3-libvhdi nor libvhdi-utils is installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = mixed_raw(&src, 10_000_000, 25);
    for sub in ["dynamic", "fixed"] {
        let vhd = dir.path().join(format!("{sub}.vhd"));
        assert!(
            ims(&[
                "convert",
                "-O",
                "vhd",
                "-o",
                &format!("subformat={sub}"),
                s(&src),
                s(&vhd)
            ])
            .status
            .success()
        );
        if vhdiinfo {
            let out = Command::new("vhdiinfo").arg(s(&vhd)).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("(10027008 bytes)"), "{sub}: {text}");
        }
        if pyvhdi {
            let script = "import pyvhdi,sys\nf=pyvhdi.file(); f.open(sys.argv[1])\nsys.stdout.buffer.write(f.read_buffer(f.get_media_size()))";
            let out = Command::new("/usr/bin/python3")
                .args(["-c", script, s(&vhd)])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout.len(), 10_027_008, "{sub}");
            assert!(
                out.stdout[..data.len()] == data[..],
                "{sub}: libvhdi reads other bytes"
            );
            assert!(out.stdout[data.len()..].iter().all(|&b| b == 0));
        }
    }
}
