//! VHDX interoperability with qemu-img both ways, the committed fixtures made by qemu-img, and
//! the disk a VHDX's map describes.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::{have_qemu_img, ims, mixed_raw, qemu_compare, qemu_img, s};

/// The gunzipped bytes of `testdata/vhdx/NAME.gz`.
fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/vhdx")
        .join(format!("{name}.gz"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
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
