//! VMDK interoperability with qemu-img both ways (every subformat, zeroed grains, streams on
//! pipes), with Debian's vmdk-stream-converter and libvmdk where installed, and malformed or
//! hostile files: each gives its error and opens no other file.

mod common;

use ims::References;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use byteorder::{ByteOrder, LittleEndian};
use common::{
    assert_only_block_is_data, have_qemu_img, ims, mixed_raw, qemu_compare, qemu_img, s,
    sparse_file,
};
use ims::OpenOptions;

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs ims with `stdin` as its standard input.
fn ims_with_stdin(args: &[&str], stdin: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ims"))
        .args(args)
        .stdin(std::fs::File::open(stdin).unwrap())
        .output()
        .unwrap()
}

#[test]
fn reads_every_qemu_img_subformat() {
    if !have_qemu_img("reads_every_qemu_img_subformat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let out = dir.path().join("out.raw");
    // A whole number of grains, and a size that ends inside a grain and a sector.
    for size in [6 << 20, (3 << 20) + 4096 + 1000] {
        mixed_raw(&src, size, size);
        for sub in [
            "monolithicSparse",
            "streamOptimized",
            "monolithicFlat",
            "twoGbMaxExtentSparse",
            "twoGbMaxExtentFlat",
        ] {
            for zeroed in ["off", "on"] {
                if zeroed == "on" && sub.contains("Flat") {
                    continue;
                }
                let sub_dir = dir.path().join(format!("{sub}-{zeroed}-{size}"));
                std::fs::create_dir_all(&sub_dir).unwrap();
                let vmdk = sub_dir.join("q.vmdk");
                qemu_img(&[
                    "convert",
                    "-q",
                    "-f",
                    "raw",
                    "-O",
                    "vmdk",
                    "-o",
                    &format!("subformat={sub},zeroed_grain={zeroed}"),
                    s(&src),
                    s(&vmdk),
                ]);
                let r = ims(&[
                    "convert",
                    "-O",
                    "raw",
                    "--allow-references",
                    s(&sub_dir),
                    s(&vmdk),
                    s(&out),
                ]);
                ok(&r, &format!("{sub} zeroed_grain={zeroed}"));
                assert!(
                    qemu_compare(&src, "raw", &out, "raw"),
                    "{sub} {zeroed} {size}"
                );
                let theirs: serde_json::Value = serde_json::from_slice(
                    &qemu_img(&["info", "--output", "json", s(&vmdk)]).stdout,
                )
                .unwrap();
                let ours: serde_json::Value = serde_json::from_slice(
                    &ims(&[
                        "info",
                        "--output",
                        "json",
                        "--allow-references",
                        s(&sub_dir),
                        s(&vmdk),
                    ])
                    .stdout,
                )
                .unwrap();
                assert_eq!(ours["format"], "vmdk", "{sub}");
                assert_eq!(ours["virtual-size"], theirs["virtual-size"], "{sub}");
                // Split and flat disks are other files: refused without permission.
                if sub != "monolithicSparse" && sub != "streamOptimized" {
                    let r = ims(&["convert", "-O", "raw", s(&vmdk), s(&out)]);
                    assert_eq!(r.status.code(), Some(1), "{sub}");
                    assert!(
                        String::from_utf8_lossy(&r.stderr).contains("extent file reference"),
                        "{}",
                        String::from_utf8_lossy(&r.stderr)
                    );
                }
                // Streams read front to back from stdin.
                if sub == "streamOptimized" {
                    let r = ims_with_stdin(
                        &["convert", "-f", "vmdk", "-O", "raw", "-", s(&out)],
                        &vmdk,
                    );
                    ok(&r, "qemu-img stream from stdin");
                    assert!(qemu_compare(&src, "raw", &out, "raw"), "stdin {size}");
                }
            }
        }
    }
}

#[test]
fn zeroed_grain_entries_read_as_zeros() {
    if !have_qemu_img("zeroed_grain_entries_read_as_zeros") {
        return;
    }
    let have_io = Command::new("qemu-io").arg("--version").output().is_ok();
    if !have_io {
        common::skip(
            "zeroed_grain_entries_read_as_zeros",
            "qemu-io is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let vmdk = dir.path().join("z.vmdk");
    let expect = dir.path().join("expect.raw");
    let out = dir.path().join("out.raw");
    mixed_raw(&src, 4 << 20, 9);
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        s(&src),
        s(&vmdk),
    ]);
    // Zero two allocated grains: qemu turns them into zeroed-grain entries (GTE 1).
    let io = Command::new("qemu-io")
        .args(["-f", "vmdk", "-c", "write -z 0 128k", s(&vmdk)])
        .output()
        .unwrap();
    ok(&io, "qemu-io write -z");
    qemu_img(&["convert", "-q", "-O", "raw", s(&vmdk), s(&expect)]);
    ok(&ims(&["convert", "-O", "raw", s(&vmdk), s(&out)]), "zeroed");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&expect).unwrap()
    );
    assert!(
        std::fs::read(&out).unwrap()[..128 << 10]
            .iter()
            .all(|&b| b == 0)
    );
    let map: serde_json::Value =
        serde_json::from_slice(&ims(&["map", "--output", "json", s(&vmdk)]).stdout).unwrap();
    assert_eq!(map[0]["zero"], true, "{map}");
}

/// The output of `ims convert` of `src` to `dst` with `opts`, with the CID masked.
fn masked(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let head = &b[..b.len().min(64 << 10)];
    if let Some(i) = head.windows(4).position(|w| w == b"CID=") {
        b[i + 4..i + 12].fill(b'x');
    }
    b
}

#[test]
fn qemu_img_reads_what_ims_writes() {
    if !have_qemu_img("qemu_img_reads_what_ims_writes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let vmdk = dir.path().join("w.vmdk");
    // The same name in another directory: the descriptor names its own file.
    std::fs::create_dir_all(dir.path().join("again")).unwrap();
    let again = dir.path().join("again/w.vmdk");
    for size in [5 << 20, (2 << 20) + 3 * 512, 70 << 20] {
        mixed_raw(&src, size, size + 1);
        for sub in ["monolithicSparse", "streamOptimized", "monolithicFlat"] {
            let opts = format!("subformat={sub}");
            let r = ims(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &opts,
                "-j",
                "1",
                s(&src),
                s(&vmdk),
            ]);
            ok(&r, &opts);
            assert!(qemu_compare(&src, "raw", &vmdk, "vmdk"), "{sub} {size}");
            if sub != "monolithicFlat" {
                qemu_img(&["check", "-q", "-f", "vmdk", s(&vmdk)]);
            }
            // ims reads its own output back.
            let back = dir.path().join("back.raw");
            ok(
                &ims(&[
                    "convert",
                    "-O",
                    "raw",
                    "--allow-references",
                    s(dir.path()),
                    s(&vmdk),
                    s(&back),
                ]),
                "read back",
            );
            assert!(qemu_compare(&src, "raw", &back, "raw"), "{sub} back");
            // The same bytes whatever the number of workers (the CID is random).
            if sub != "monolithicFlat" {
                let r = ims(&[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "vmdk",
                    "-o",
                    &opts,
                    "-j",
                    "3",
                    s(&src),
                    s(&again),
                ]);
                ok(&r, "-j 3");
                assert!(
                    masked(&std::fs::read(&vmdk).unwrap())
                        == masked(&std::fs::read(&again).unwrap()),
                    "{sub} differs between -j 1 and -j 3"
                );
            } else {
                let flat = dir.path().join("w-flat.vmdk");
                assert_eq!(
                    std::fs::metadata(&flat).unwrap().len(),
                    size.next_multiple_of(512)
                );
            }
        }
    }
}

#[test]
fn stream_goes_to_stdout_and_comes_back_from_stdin() {
    if !have_qemu_img("stream_goes_to_stdout_and_comes_back_from_stdin") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let stream = dir.path().join("s.vmdk");
    let out = dir.path().join("out.raw");
    mixed_raw(&src, (9 << 20) + 512, 3);
    let r = Command::new(env!("CARGO_BIN_EXE_ims"))
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized,adapter_type=ide,hwversion=10",
            s(&src),
            "-",
        ])
        .stdout(std::fs::File::create(&stream).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    ok(&r, "stream to stdout");
    assert!(qemu_compare(&src, "raw", &stream, "vmdk"));
    qemu_img(&["check", "-q", "-f", "vmdk", s(&stream)]);
    let bytes = std::fs::read(&stream).unwrap();
    let text = String::from_utf8_lossy(&bytes[512..4096]);
    for needle in [
        "createType=\"streamOptimized\"",
        "ddb.virtualHWVersion = \"10\"",
        "ddb.adapterType = \"ide\"",
        "ddb.geometry.heads = \"16\"",
        "ddb.toolsVersion",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // VMware's layout: GD at end in the header, then footer and end-of-stream marker.
    assert_eq!(LittleEndian::read_u32(&bytes[4..8]), 3);
    assert_eq!(LittleEndian::read_u32(&bytes[8..12]), 0x30001);
    assert_eq!(LittleEndian::read_u64(&bytes[56..64]), u64::MAX);
    let n = bytes.len();
    assert_eq!(&bytes[n - 512..], &[0u8; 512][..], "end-of-stream marker");
    assert_eq!(
        LittleEndian::read_u32(&bytes[n - 1536 + 12..]),
        3,
        "footer marker"
    );
    assert_eq!(&bytes[n - 1024..n - 1020], b"KDMV");
    let r = ims_with_stdin(
        &["convert", "-f", "vmdk", "-O", "raw", "-", s(&out)],
        &stream,
    );
    ok(&r, "stream from stdin");
    assert!(qemu_compare(&src, "raw", &out, "raw"));
    // monolithicSparse needs to seek: refused on stdout.
    let r = ims(&["convert", "-f", "raw", "-O", "vmdk", s(&src), "-"]);
    assert_ne!(r.status.code(), Some(0));
}

/// `/usr/bin/python3` with module `module`, if both are installed.
fn python_with(module: &str, test: &str, package: &str) -> Option<&'static str> {
    let py = "/usr/bin/python3";
    let ok = Command::new(py)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        common::skip(
            test,
            &format!("python3 module {module} is not installed (apt-get install {package})"),
        );
        return None;
    }
    Some(py)
}

#[test]
fn reads_what_vmdk_stream_converter_writes() {
    let test = "reads_what_vmdk_stream_converter_writes";
    let Some(py) = python_with("VMDKstream", test, "vmdk-stream-converter") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let vmdk = dir.path().join("vsc.vmdk");
    let out = dir.path().join("out.raw");
    let data = mixed_raw(&src, 6 << 20, 77);
    let r = Command::new(py)
        .args([
            "-c",
            "import sys, VMDKstream; VMDKstream.convert_to_stream(sys.argv[1], sys.argv[2])",
            s(&src),
            s(&vmdk),
        ])
        .output()
        .unwrap();
    ok(&r, "vmdk-stream-converter");
    ok(&ims(&["convert", "-O", "raw", s(&vmdk), s(&out)]), "file");
    assert!(std::fs::read(&out).unwrap() == data);
    let r = ims_with_stdin(&["convert", "-f", "vmdk", "-O", "raw", "-", s(&out)], &vmdk);
    ok(&r, "stdin");
    assert!(std::fs::read(&out).unwrap() == data);
}

/// vmdk-stream-converter converts a file whose size is not a whole number of sectors into a disk
/// of the next whole sector, and its last grain inflates to just the file's remaining bytes
/// (qemu-img refuses to read that grain): the rest of the sector reads as zeros.
#[test]
fn reads_the_stream_converters_short_last_grain() {
    let test = "reads_the_stream_converters_short_last_grain";
    let Some(py) = python_with("VMDKstream", test, "vmdk-stream-converter") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let vmdk = dir.path().join("vsc.vmdk");
    let out = dir.path().join("out.raw");
    for size in [(3u64 << 20) + 1000, (4 << 20) - 24] {
        let mut data = mixed_raw(&src, size, size);
        let r = Command::new(py)
            .args([
                "-c",
                "import sys, VMDKstream; VMDKstream.convert_to_stream(sys.argv[1], sys.argv[2])",
                s(&src),
                s(&vmdk),
            ])
            .output()
            .unwrap();
        ok(&r, "vmdk-stream-converter");
        data.resize(size.next_multiple_of(512) as usize, 0);
        ok(&ims(&["convert", "-O", "raw", s(&vmdk), s(&out)]), "file");
        assert!(std::fs::read(&out).unwrap() == data, "file, {size} bytes");
        let r = ims_with_stdin(&["convert", "-f", "vmdk", "-O", "raw", "-", s(&out)], &vmdk);
        ok(&r, "stdin");
        assert!(std::fs::read(&out).unwrap() == data, "stdin, {size} bytes");
    }
}

/// A monolithicSparse extent in the layout VMware uses for a sparse file written front to back:
/// `gdOffset` is GD_AT_END in the header and the real one is in a footer, between a footer marker
/// and an end-of-stream marker, at the end. Made here from qemu-img's monolithicSparse file (which
/// has a redundant directory too); qemu-img and ims must read the same disk.
#[test]
fn reads_monolithic_sparse_with_its_directory_at_the_end() {
    if !have_qemu_img("reads_monolithic_sparse_with_its_directory_at_the_end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let vmdk = dir.path().join("q.vmdk");
    let out = dir.path().join("out.raw");
    let data = mixed_raw(&src, 5 << 20, 11);
    ok(
        &qemu_img(&["convert", "-f", "raw", "-O", "vmdk", s(&src), s(&vmdk)]),
        "qemu-img",
    );
    let mut b = std::fs::read(&vmdk).unwrap();
    let header = b[..512].to_vec();
    LittleEndian::write_u64(&mut b[56..64], u64::MAX);
    let mut marker = [0u8; 512];
    LittleEndian::write_u64(&mut marker[0..8], 1);
    LittleEndian::write_u32(&mut marker[12..16], 3);
    b.extend_from_slice(&marker);
    b.extend_from_slice(&header);
    b.extend_from_slice(&[0u8; 512]);
    std::fs::write(&vmdk, &b).unwrap();
    ok(&ims(&["convert", "-O", "raw", s(&vmdk), s(&out)]), "ims");
    assert!(std::fs::read(&out).unwrap() == data);
    assert!(
        qemu_compare(&vmdk, "vmdk", &out, "raw"),
        "qemu-img reads the same"
    );
    let info = ims(&["info", "--output", "json", s(&vmdk)]);
    ok(&info, "info");
    // The header alone, without the footer, is refused.
    b.truncate(b.len() - 1536);
    std::fs::write(&vmdk, &b).unwrap();
    let r = ims(&["info", s(&vmdk)]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("vmdk footer"));
}

#[test]
fn libvmdk_reads_what_ims_writes() {
    let have_info = Command::new("vmdkinfo").arg("-V").output().is_ok();
    if !have_info {
        common::skip(
            "libvmdk_reads_what_ims_writes",
            "vmdkinfo is not installed (apt-get install libvmdk-utils)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src, (5 << 20) + 512, 5);
    let pyvmdk = python_with(
        "pyvmdk",
        "libvmdk_reads_what_ims_writes (data)",
        "python3-libvmdk",
    );
    for sub in ["monolithicSparse", "streamOptimized", "monolithicFlat"] {
        let vmdk = dir.path().join(format!("{sub}.vmdk"));
        let opts = format!("subformat={sub}");
        ok(
            &ims(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &opts,
                s(&src),
                s(&vmdk),
            ]),
            sub,
        );
        let info = Command::new("vmdkinfo").arg(s(&vmdk)).output().unwrap();
        ok(&info, &format!("vmdkinfo {sub}"));
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(
            text.contains("5.0 MiB") || text.contains("5243392"),
            "{text}"
        );
        if let Some(py) = pyvmdk {
            let script = "import sys, pyvmdk\nh = pyvmdk.handle()\nh.open(sys.argv[1])\nh.open_extent_data_files()\nd = h.read_buffer(h.get_media_size())\nsys.exit(0 if d == open(sys.argv[2], 'rb').read() else 1)";
            let r = Command::new(py)
                .args(["-c", script, s(&vmdk), s(&src)])
                .current_dir(dir.path())
                .output()
                .unwrap();
            ok(&r, &format!("pyvmdk reads {sub}"));
        }
    }
}

// ---- malformed and hostile files ----

/// A monolithicSparse image written by ims, and its bytes.
fn sparse_image(dir: &Path, sub: &str) -> (PathBuf, Vec<u8>) {
    let src = dir.join("msrc.raw");
    mixed_raw(&src, 2 << 20, 11);
    let vmdk = dir.join(format!("good-{sub}.vmdk"));
    ok(
        &ims(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            s(&src),
            s(&vmdk),
        ]),
        "make image",
    );
    let bytes = std::fs::read(&vmdk).unwrap();
    (vmdk, bytes)
}

/// Opens `bytes` as a VMDK file with `options` and reads the whole disk; returns the error.
fn open_and_read(path: &Path, bytes: &[u8], allow: Option<&Path>) -> ims::Error {
    std::fs::write(path, bytes).unwrap();
    let options = OpenOptions {
        format: Some(ims::Format::Vmdk),
        references: allow.map_or(References::Deny, |d| References::Confined(d.to_path_buf())),
    };
    let image = match ims::open(path, &options) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let reader = image.reader().expect("random access");
    let size = reader.virtual_size();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(1 << 20);
        if let Err(e) = reader.read_at(&mut buf[..n as usize], pos) {
            return e;
        }
        pos += n;
    }
    panic!("{} opened and read without an error", path.display());
}

/// Reads `bytes` from stdin with the CLI; returns its stderr (it must fail cleanly).
fn stdin_fails(dir: &Path, bytes: &[u8], needle: &str) {
    let p = dir.join("stdin.vmdk");
    std::fs::write(&p, bytes).unwrap();
    let out = dir.join("stdin.raw");
    let r = ims_with_stdin(&["convert", "-f", "vmdk", "-O", "raw", "-", s(&out)], &p);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{needle}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

fn expect(e: ims::Error, kind: &str, needle: &str) {
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(needle), "expected {needle:?} in {e}");
}

#[test]
fn malformed_sparse_extents_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, good) = sparse_image(dir.path(), "monolithicSparse");
    let bad = dir.path().join("bad.vmdk");
    let gd = LittleEndian::read_u64(&good[56..64]) as usize * 512;

    // A grain table past the end of the file.
    let mut b = good.clone();
    LittleEndian::write_u32(&mut b[gd..], 0x00ff_ffff);
    expect(
        open_and_read(&bad, &b, None),
        "malformed",
        "grain directory",
    );

    // A grain past the end of the file.
    let mut b = good.clone();
    let gt = LittleEndian::read_u32(&good[gd..]) as usize * 512;
    LittleEndian::write_u32(&mut b[gt..], 0x00ff_ffff);
    expect(open_and_read(&bad, &b, None), "malformed", "grain table");

    // A huge capacity: over the cap, and under it but with a GD that cannot be in the file.
    let mut b = good.clone();
    LittleEndian::write_u64(&mut b[12..20], 1 << 50);
    expect(open_and_read(&bad, &b, None), "limit-exceeded", "capacity");
    let mut b = good.clone();
    LittleEndian::write_u64(&mut b[12..20], 1 << 36);
    expect(
        open_and_read(&bad, &b, None),
        "malformed",
        "grain directory",
    );

    // Grain size, GT size, newline test, descriptor over the cap.
    let mut b = good.clone();
    LittleEndian::write_u64(&mut b[20..28], 100);
    expect(open_and_read(&bad, &b, None), "malformed", "power of two");
    let mut b = good.clone();
    LittleEndian::write_u32(&mut b[44..48], 100_000);
    expect(
        open_and_read(&bad, &b, None),
        "malformed",
        "entries per grain table",
    );
    let mut b = good.clone();
    b[75] = b'\n';
    expect(open_and_read(&bad, &b, None), "malformed", "newline");
    let mut b = good.clone();
    LittleEndian::write_u64(&mut b[36..44], 1 << 20);
    expect(
        open_and_read(&bad, &b, None),
        "limit-exceeded",
        "descriptor",
    );

    // An embedded descriptor without extents, and one claiming more than the header holds.
    let desc_at = 512;
    let text = String::from_utf8_lossy(&good[desc_at..desc_at + 1024]).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("RW "))
        .unwrap()
        .to_string();
    let mut b = good.clone();
    let i = desc_at + text.find(&line).unwrap();
    b[i..i + 2].copy_from_slice(b"# ");
    expect(open_and_read(&bad, &b, None), "malformed", "no extents");
    let mut b = good.clone();
    let bigger = line.replace("RW 4096 ", "RW 9999 ");
    assert_ne!(bigger, line);
    b[i..i + bigger.len()].copy_from_slice(bigger.as_bytes());
    expect(
        open_and_read(&bad, &b, None),
        "malformed",
        "extent of 9999 sectors",
    );

    // A truncated file.
    expect(
        open_and_read(&bad, &good[..300], None),
        "truncated",
        "sparse header",
    );
}

#[test]
fn malformed_streams_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, good) = sparse_image(dir.path(), "streamOptimized");
    let bad = dir.path().join("bad.vmdk");
    let n = good.len();

    // Unterminated: footer and end-of-stream marker cut off.
    let cut = &good[..n - 1536];
    expect(
        open_and_read(&bad, cut, None),
        "malformed",
        "unterminated stream",
    );
    stdin_fails(dir.path(), cut, "unterminated stream");
    // Cut inside a grain.
    let first = 128 * 512;
    stdin_fails(dir.path(), &good[..first + 700], "truncated");

    // A grain marker with the wrong LBA: the GT says grain 0, the marker says grain 2, which
    // is also the next grain in the stream.
    let mut b = good.clone();
    assert_eq!(LittleEndian::read_u64(&b[first..]), 0);
    LittleEndian::write_u64(&mut b[first..], 256);
    expect(
        open_and_read(&bad, &b, None),
        "malformed",
        "marker says LBA 256",
    );
    // From a pipe: grains out of order, and a marker not at a grain.
    stdin_fails(dir.path(), &b, "does not come after");
    LittleEndian::write_u64(&mut b[first..], 5);
    stdin_fails(dir.path(), &b, "not the start of a grain");

    // A compressed size past the end, and an unknown marker.
    let mut b = good.clone();
    LittleEndian::write_u32(&mut b[first + 8..], 0x7fff_ffff);
    expect(
        open_and_read(&bad, &b, None),
        "malformed",
        "compressed size",
    );
    stdin_fails(dir.path(), &b, "too large");
    let mut b = good.clone();
    b[first..first + 16].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0]);
    stdin_fails(dir.path(), &b, "unknown marker type 9");

    // A grain whose data is not a zlib stream.
    let mut b = good.clone();
    b[first + 12..first + 16].copy_from_slice(b"junk");
    expect(
        open_and_read(&bad, &b, None),
        "malformed",
        "compressed grain",
    );
    stdin_fails(dir.path(), &b, "compressed grain");

    // A monolithicSparse (no markers) cannot come from a pipe.
    let (_, sparse) = sparse_image(dir.path(), "monolithicSparse");
    stdin_fails(dir.path(), &sparse, "streamOptimized");
}

/// Whether `args` run under strace opens a path containing `needle` (None when strace is absent).
fn opens_file(args: &[&str], needle: &str) -> Option<bool> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("trace");
    let r = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2,stat,newfstatat,statx,readlink",
        ])
        .arg("-o")
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_ims"))
        .args(args)
        .output()
        .ok()?;
    if !log.exists() {
        eprintln!("strace did not run: {}", String::from_utf8_lossy(&r.stderr));
        return None;
    }
    let trace = std::fs::read_to_string(&log).unwrap();
    Some(trace.contains(needle))
}

#[test]
fn flat_extent_holes_map_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    // A 64 MiB flat extent with 4 KiB of data at 10 MiB; the rest is holes.
    sparse_file(
        &dir.path().join("d-flat.vmdk"),
        64 << 20,
        10 << 20,
        &[7u8; 4096],
    );
    let desc = dir.path().join("d.vmdk");
    std::fs::write(
        &desc,
        descriptor("d-flat.vmdk").replace("RW 2048 FLAT", "RW 131072 FLAT"),
    )
    .unwrap();
    let out = ims(&[
        "map",
        "-f",
        "vmdk",
        "--output",
        "json",
        "--allow-references",
        s(dir.path()),
        s(&desc),
    ]);
    ok(&out, "map");
    assert_only_block_is_data(&out.stdout, 10 << 20, 64 << 20);
}

fn descriptor(extent: &str) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"{extent}\" 0\nddb.adapterType = \"ide\"\n"
    )
}

#[test]
fn hostile_descriptors_open_no_other_file() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("inside");
    std::fs::create_dir_all(&inside).unwrap();
    let secret = dir.path().join("secret-extent.raw");
    std::fs::write(&secret, vec![b'S'; 2048 * 512]).unwrap();
    let evil = inside.join("evil.vmdk");
    let have_strace = Command::new("strace").arg("-V").output().is_ok();
    if !have_strace {
        eprintln!(
            "hostile_descriptors_open_no_other_file: strace is not installed; checking the errors only"
        );
    }
    for target in [
        "/etc/passwd".to_string(),
        "../../../../etc/passwd".to_string(),
        "../secret-extent.raw".to_string(),
        secret.to_str().unwrap().to_string(),
        "/dev/zero".to_string(),
    ] {
        let text = descriptor(&target);
        for allow in [None, Some(dir.path()), Some(inside.as_path())] {
            let e = open_and_read(&evil, text.as_bytes(), allow);
            expect(e, "external-reference", "extent file reference");
            if have_strace {
                let mut args = vec!["convert", "-f", "vmdk", "-O", "raw"];
                if let Some(a) = allow {
                    args.extend(["--allow-references", s(a)]);
                }
                let out = dir.path().join("o.raw");
                args.extend([s(&evil), s(&out)]);
                let leaf = Path::new(&target).file_name().unwrap().to_str().unwrap();
                assert_eq!(opens_file(&args, leaf), Some(false), "{target} {allow:?}");
            }
        }
    }
    // Embedded extents: a descriptor naming another file is refused (not silently read as the
    // file itself), and that file is never opened.
    let (_, mut good) = sparse_image(dir.path(), "monolithicSparse");
    let text = String::from_utf8_lossy(&good[512..2048]).to_string();
    let old = text
        .lines()
        .find(|l| l.starts_with("RW "))
        .unwrap()
        .to_string();
    let i = 512 + text.find(&old).unwrap();
    let new = format!(
        "{:<width$}",
        "RW 4096 SPARSE \"/etc/passwd\"",
        width = old.len()
    );
    good[i..i + old.len()].copy_from_slice(new.as_bytes());
    let emb = inside.join("embedded.vmdk");
    std::fs::write(&emb, &good).unwrap();
    let out = dir.path().join("emb.raw");
    let r = ims(&["convert", "-O", "raw", s(&emb), s(&out)]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("names another file"), "{err}");
    if have_strace {
        assert_eq!(
            opens_file(&["convert", "-O", "raw", s(&emb), s(&out)], "passwd"),
            Some(false)
        );
    }
}

#[test]
fn descriptors_without_extents_deltas_and_devices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.vmdk");
    let e = open_and_read(&p, b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n", None);
    expect(e, "malformed", "no extents");
    // A delta disk: refused unless references are allowed.
    let delta = "version=1\nCID=12345678\nparentCID=abcdef01\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"monolithicSparse\"\nRW 2048 ZERO\n";
    expect(
        open_and_read(&p, delta.as_bytes(), None),
        "external-reference",
        "base.vmdk",
    );
    // Allowed, the parent must be there and have the CID the child names.
    let base = dir.path().join("base.vmdk");
    std::fs::write(
        &base,
        "version=1\nCID=abcdef02\nparentCID=ffffffff\nRW 2048 ZERO\n",
    )
    .unwrap();
    expect(
        open_and_read(&p, delta.as_bytes(), Some(dir.path())),
        "malformed",
        "parentCID",
    );
    std::fs::write(
        &base,
        "version=1\nCID=abcdef01\nparentCID=ffffffff\nRW 2048 ZERO\n",
    )
    .unwrap();
    std::fs::write(&p, delta).unwrap();
    let options = OpenOptions {
        references: References::Confined(dir.path().to_path_buf()),
        ..Default::default()
    };
    let image = ims::open(&p, &options).unwrap();
    assert_eq!(image.virtual_size(), 2048 * 512);
    // Devices and raw device mappings are never opened.
    let dev = "version=1\ncreateType=\"fullDevice\"\nRW 2048 FLAT \"/dev/sda\" 0\n";
    expect(
        open_and_read(&p, dev.as_bytes(), Some(dir.path())),
        "unsupported",
        "fullDevice",
    );
    let rdm = "version=1\nRW 2048 VMFSRDM \"disk-rdm.vmdk\"\n";
    expect(
        open_and_read(&p, rdm.as_bytes(), Some(dir.path())),
        "unsupported",
        "VMFSRDM",
    );
    // A flat extent shorter than the descriptor says.
    std::fs::write(dir.path().join("short-flat.vmdk"), vec![1u8; 1000 * 512]).unwrap();
    let short = "version=1\nRW 2048 FLAT \"short-flat.vmdk\" 0\n";
    expect(
        open_and_read(&p, short.as_bytes(), Some(dir.path())),
        "truncated",
        "flat extent",
    );
    // A descriptor file over the cap.
    let mut huge = b"version=1\n".to_vec();
    huge.resize((1 << 20) + 1, b'\n');
    expect(
        open_and_read(&p, &huge, None),
        "limit-exceeded",
        "descriptor",
    );
    // A flat disk made of a zero extent and a flat one reads through both.
    std::fs::write(dir.path().join("part-flat.vmdk"), vec![7u8; 1024 * 512]).unwrap();
    let mixed = "version=1\nCID=01020304\nparentCID=ffffffff\nRW 1024 ZERO\nRW 1024 FLAT \"part-flat.vmdk\" 0\n";
    std::fs::write(&p, mixed).unwrap();
    let out = dir.path().join("mixed.raw");
    ok(
        &ims(&[
            "convert",
            "-O",
            "raw",
            "--allow-references",
            s(dir.path()),
            s(&p),
            s(&out),
        ]),
        "zero+flat",
    );
    let data = std::fs::read(&out).unwrap();
    assert!(data[..1024 * 512].iter().all(|&b| b == 0));
    assert!(data[1024 * 512..].iter().all(|&b| b == 7));
    // For info, a refused extent opens, is named, and fails only when read.
    let deferred = OpenOptions {
        references: References::Defer,
        ..Default::default()
    };
    let image = ims::open(&p, &deferred).unwrap();
    let info = serde_json::to_string(&image.info()).unwrap();
    assert!(info.contains("part-flat.vmdk"), "{info}");
    let mut buf = vec![0u8; 4096];
    let e = image
        .reader()
        .unwrap()
        .read_at(&mut buf, 1024 * 512)
        .unwrap_err();
    assert_eq!(e.kind(), "external-reference");
    let info = ims(&["info", s(&p)]);
    ok(&info, "info without references");
    let _ = std::io::stdout().flush();
}

/// Reads `bytes` as a VMDK file and from a pipe; any result but a panic is fine.
fn read_anyhow(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let options = OpenOptions {
        format: Some(ims::Format::Vmdk),
        ..Default::default()
    };
    if let Ok(image) = ims::open(path, &options) {
        let reader = image.reader().unwrap();
        let size = reader.virtual_size().min(4 << 20);
        let mut buf = vec![0u8; size as usize];
        let _ = reader.read_at(&mut buf, 0);
        let _ = reader.map(0, size);
    }
    use ims::ChunkStream;
    if let Ok(mut s) = ims::formats::vmdk::StreamReader::new(bytes) {
        let mut n = 0;
        while let Ok(Some(c)) = s.next_chunk() {
            n += 1;
            if c.end() >= 4 << 20 || n > 10_000 {
                break;
            }
        }
    }
}

#[test]
fn mutated_images_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.vmdk");
    let mut rng = common::Rng::new(42);
    for sub in ["monolithicSparse", "streamOptimized"] {
        let (_, good) = sparse_image(dir.path(), sub);
        // Mutations where the structures are: header, descriptor, first grain, the tail.
        let hot = [0..80, 512..1024, 10752..12288, 65536..65600];
        for i in 0..400 {
            let mut b = good.clone();
            let n = good.len();
            let ranges: Vec<std::ops::Range<usize>> = hot
                .iter()
                .cloned()
                .chain([n - 1600..n, n / 2..n / 2 + 64])
                .collect();
            for _ in 0..1 + i % 4 {
                let r = &ranges[(rng.next() as usize) % ranges.len()];
                let at = r.start + (rng.next() as usize) % (r.end - r.start);
                b[at] = match rng.next() % 4 {
                    0 => 0,
                    1 => 0xff,
                    2 => b[at] ^ (1 << (rng.next() % 8)),
                    _ => rng.next() as u8,
                };
            }
            if i % 50 == 0 {
                b.truncate((rng.next() as usize) % n);
            }
            read_anyhow(&path, &b);
        }
    }
}

/// A small file can describe a 64 TiB extent whose 2 Mi grain directory entries are all empty:
/// `map` and `convert` step a grain table at a time (not a grain: a billion steps) and end at
/// once.
#[test]
fn a_huge_extent_without_grain_tables_maps_and_converts_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("empty.vmdk");
    let mut b = vec![0u8; 512];
    b[0..4].copy_from_slice(b"KDMV");
    LittleEndian::write_u32(&mut b[4..], 1);
    LittleEndian::write_u32(&mut b[8..], 1);
    LittleEndian::write_u64(&mut b[12..], 1 << 37);
    LittleEndian::write_u64(&mut b[20..], 128);
    LittleEndian::write_u32(&mut b[44..], 512);
    LittleEndian::write_u64(&mut b[56..], 1);
    LittleEndian::write_u64(&mut b[64..], 1 + 16384);
    b[73..77].copy_from_slice(b"\n \r\n");
    b.resize(512 + (8 << 20), 0);
    std::fs::write(&img, &b).unwrap();
    let start = std::time::Instant::now();
    let map = ims(&["map", "--output", "json", s(&img)]);
    ok(&map, "map");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&map.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["length"], 1u64 << 46);
    assert_eq!(rows[0]["data"], false);
    let out = dir.path().join("out.qcow2");
    ok(
        &ims(&["convert", "-O", "qcow2", s(&img), s(&out)]),
        "convert",
    );
    let took = start.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
}
