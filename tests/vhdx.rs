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
