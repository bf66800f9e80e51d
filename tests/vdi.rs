//! VDI interoperability with qemu-img both ways: committed fixtures made by qemu-img (static and
//! dynamic) read byte for byte, with qemu-img's `info` keys and `map`; images qemu-img makes now
//! read as qemu-img reads them; images ims writes pass `qemu-img check` and `compare`; a
//! differencing image is refused as a reference.

mod common;

use std::path::{Path, PathBuf};

use common::catalog::ok_json;
use common::{have_qemu_img, ims, mixed_raw, qemu_compare, qemu_img, s};

/// Unpacks `testdata/formats/NAME.gz` into `dir`.
fn fixture(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    std::fs::write(&out, common::gunzipped("formats", name)).unwrap();
    out
}

#[test]
fn fixtures_read_as_the_disk_they_were_made_from() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read(fixture(dir.path(), "formats.raw")).unwrap();
    for (name, image_type) in [("dynamic.vdi", "dynamic"), ("static.vdi", "static")] {
        let vdi = fixture(dir.path(), name);
        let out = dir.path().join("out.raw");
        let r = ims(&["convert", "-O", "raw", s(&vdi), s(&out)]);
        assert!(
            r.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(std::fs::read(&out).unwrap() == raw, "{name}");
        let info = ok_json(&ims(&["info", "--output", "json", s(&vdi)]));
        assert_eq!(info["format"], "vdi");
        assert_eq!(info["virtual-size"], raw.len() as u64);
        assert_eq!(info["cluster-size"], 1 << 20);
        assert_eq!(info["format-specific"]["data"]["image-type"], image_type);
    }
}

#[test]
fn fixtures_agree_with_qemu_img_on_info_and_map() {
    if !have_qemu_img("fixtures_agree_with_qemu_img_on_info_and_map") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in ["dynamic.vdi", "static.vdi"] {
        let vdi = fixture(dir.path(), name);
        let ours = ok_json(&ims(&["info", "--output", "json", s(&vdi)]));
        let theirs = ok_json(&qemu_img(&["info", "--output", "json", s(&vdi)]));
        for key in ["format", "virtual-size", "cluster-size", "dirty-flag"] {
            assert_eq!(ours[key], theirs[key], "{name} {key}");
        }
        // The unpacked fixture has no holes, so the maps agree line for line.
        let ours = ims(&["map", "--output", "json", s(&vdi)]);
        let theirs = qemu_img(&["map", "--output", "json", s(&vdi)]);
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout).trim(),
            String::from_utf8_lossy(&theirs.stdout).trim(),
            "{name}"
        );
    }
}

#[test]
fn reads_what_qemu_img_makes() {
    if !have_qemu_img("reads_what_qemu_img_makes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let out = dir.path().join("out.raw");
    // A whole number of blocks, a partial last block, and a size that is not whole sectors
    // (qemu-img rounds it up).
    for size in [4 << 20, (3 << 20) + (64 << 10), 3_000_001] {
        mixed_raw(&src, size, size);
        for opts in ["static=off", "static=on"] {
            let vdi = dir.path().join("q.vdi");
            qemu_img(&[
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vdi",
                "-o",
                opts,
                s(&src),
                s(&vdi),
            ]);
            let r = ims(&["convert", "-O", "raw", s(&vdi), s(&out)]);
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
            let theirs = dir.path().join("theirs.raw");
            qemu_img(&["convert", "-q", "-O", "raw", s(&vdi), s(&theirs)]);
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&theirs).unwrap(),
                "{size} {opts}"
            );
            let ours = ok_json(&ims(&["info", "--output", "json", s(&vdi)]));
            let q = ok_json(&qemu_img(&["info", "--output", "json", s(&vdi)]));
            assert_eq!(ours["virtual-size"], q["virtual-size"], "{size} {opts}");
            // qemu-img leaves the zeros of a static image as holes in the file; both maps
            // report them as stored zeros.
            let ours = ims(&["map", "--output", "json", s(&vdi)]);
            let theirs = qemu_img(&["map", "--output", "json", s(&vdi)]);
            assert_eq!(
                String::from_utf8_lossy(&ours.stdout).trim(),
                String::from_utf8_lossy(&theirs.stdout).trim(),
                "{size} {opts}"
            );
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
    let vdi = dir.path().join("w.vdi");
    for size in [4 << 20, (5 << 20) + 512, 3_000_001] {
        mixed_raw(&src, size, size + 7);
        for opts in [None, Some("static=on"), Some("static=off")] {
            let mut args = vec!["convert", "-f", "raw", "-O", "vdi"];
            if let Some(o) = opts {
                args.extend(["-o", o]);
            }
            args.extend([s(&src), s(&vdi)]);
            let r = ims(&args);
            assert!(
                r.status.success(),
                "{opts:?}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            qemu_img(&["check", "-q", "-f", "vdi", s(&vdi)]);
            assert!(qemu_compare(&src, "raw", &vdi, "vdi"), "{size} {opts:?}");
            let q = ok_json(&qemu_img(&["info", "--output", "json", s(&vdi)]));
            assert_eq!(
                q["virtual-size"],
                size.next_multiple_of(512),
                "{size} {opts:?}"
            );
            // ims reads its own output back as the source.
            let back = dir.path().join("back.raw");
            assert!(
                ims(&["convert", "-O", "raw", s(&vdi), s(&back)])
                    .status
                    .success()
            );
            let mut want = std::fs::read(&src).unwrap();
            want.resize(size.next_multiple_of(512) as usize, 0);
            assert!(std::fs::read(&back).unwrap() == want);
        }
    }
    // Dynamic images store only the blocks that hold data.
    mixed_raw(&src, 8 << 20, 1);
    let sparse = dir.path().join("sparse.raw");
    common::sparse_file(&sparse, 8 << 20, 3 << 20, &[7u8; 4096]);
    assert!(
        ims(&["convert", "-O", "vdi", s(&sparse), s(&vdi)])
            .status
            .success()
    );
    assert_eq!(std::fs::metadata(&vdi).unwrap().len(), 0x400 + (1 << 20));
    assert!(qemu_compare(&sparse, "raw", &vdi, "vdi"));
}

#[test]
fn a_differencing_image_is_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    let vdi = fixture(dir.path(), "dynamic.vdi");
    let mut b = std::fs::read(&vdi).unwrap();
    // image_type 4 (differencing) and the parent's uuid in uuid_link.
    b[0x4c] = 4;
    b[0x1a8..0x1b8].copy_from_slice(&[0x11; 16]);
    std::fs::write(&vdi, &b).unwrap();
    let out = dir.path().join("out.raw");
    let r = ims(&["convert", "-O", "raw", s(&vdi), s(&out)]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("parent locator reference") && err.contains("11111111-1111"),
        "{err}"
    );
    // Allowed references do not help: a VDI parent is found by UUID, not by name.
    let r = ims(&[
        "convert",
        "--allow-references",
        s(dir.path()),
        "-O",
        "raw",
        s(&vdi),
        s(&out),
    ]);
    assert!(!r.status.success());
    // `info` names the parent without opening it.
    let info = ok_json(&ims(&["info", "--output", "json", s(&vdi)]));
    assert_eq!(
        info["format-specific"]["data"]["image-type"],
        "differencing"
    );
    assert_eq!(
        info["format-specific"]["data"]["parent-uuid"],
        "11111111-1111-1111-1111-111111111111"
    );
}
