//! `ims check` against `qemu-img check`: the same verdict, exit code and figures on clean images,
//! on leaks and on corruptions made by editing refcounts.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::{have_qemu_img, ims, mixed_raw, qemu_img, s};

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Both checkers' exit codes and JSON reports.
fn both(
    path: &Path,
) -> (
    (Option<i32>, serde_json::Value),
    (Option<i32>, serde_json::Value),
) {
    let ours = ims(&["check", "--output", "json", s(path)]);
    let theirs = Command::new("qemu-img")
        .args(["check", "--output", "json", s(path)])
        .output()
        .unwrap();
    let parse = |o: &std::process::Output| {
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    };
    (
        (ours.status.code(), parse(&ours)),
        (theirs.status.code(), parse(&theirs)),
    )
}

/// Sets the 16-bit refcount of `cluster` in the image's first refcount block.
fn set_refcount(path: &Path, cluster: u64, value: u16) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut h = [0u8; 104];
    f.read_exact_at(&mut h, 0).unwrap();
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, be64(&h, 48)).unwrap();
    let block = u64::from_be_bytes(entry) & !0x1ff;
    f.write_all_at(&value.to_be_bytes(), block + cluster * 2)
        .unwrap();
}

#[test]
fn clean_images_agree_with_qemu_img() {
    if !have_qemu_img("clean_images_agree_with_qemu_img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src, 6 << 20, 31);
    let img = dir.path().join("x.qcow2");
    for (tool, args) in [
        ("qemu-img", &["-c"][..]),
        ("qemu-img", &["-o", "compat=0.10,cluster_size=4096"][..]),
        ("qemu-img", &["-o", "extended_l2=on"][..]),
        ("qemu-img", &["-o", "preallocation=metadata"][..]),
        ("ims", &["-c", "-o", "compression_type=zstd"][..]),
        ("ims", &["-o", "cluster_size=512"][..]),
    ] {
        let mut full = vec!["convert", "-f", "raw", "-O", "qcow2"];
        full.extend_from_slice(args);
        full.extend_from_slice(&[s(&src), s(&img)]);
        if tool == "ims" {
            assert!(ims(&full).status.success());
        } else {
            let mut q = vec!["convert", "-q"];
            q.extend_from_slice(&full[1..]);
            qemu_img(&q);
        }
        let ((our_code, ours), (their_code, theirs)) = both(&img);
        assert_eq!(our_code, Some(0), "{tool} {args:?}: {ours}");
        assert_eq!(our_code, their_code, "{tool} {args:?}");
        for key in [
            "image-end-offset",
            "total-clusters",
            "allocated-clusters",
            "fragmented-clusters",
            "compressed-clusters",
            "check-errors",
        ] {
            assert_eq!(ours[key], theirs[key], "{tool} {args:?}: {key}");
        }
        let human = String::from_utf8(ims(&["check", s(&img)]).stdout).unwrap();
        assert!(
            human.starts_with("No errors were found on the image."),
            "{human}"
        );
    }
}

#[test]
fn leaks_and_corruptions_are_found_with_qemu_img_exit_codes() {
    if !have_qemu_img("leaks_and_corruptions_are_found_with_qemu_img_exit_codes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src, 2 << 20, 32);
    let good = dir.path().join("good.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&src),
        s(&good),
    ]);
    let len = std::fs::metadata(&good).unwrap().len();
    let clusters = len / 65536;

    // A leak: one more cluster at the end of the file with refcount 1 and no reference.
    let leak = dir.path().join("leak.qcow2");
    std::fs::copy(&good, &leak).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&leak)
        .unwrap()
        .set_len(len + 65536)
        .unwrap();
    set_refcount(&leak, clusters, 1);
    let ((code, ours), (their_code, theirs)) = both(&leak);
    assert_eq!(code, Some(3), "{ours}");
    assert_eq!(code, their_code);
    assert_eq!(ours["leaks"], 1);
    assert_eq!(ours["leaks"], theirs["leaks"]);
    let human = String::from_utf8(ims(&["check", s(&leak)]).stdout).unwrap();
    assert!(
        human.contains(&format!("Leaked cluster {clusters} refcount=1 reference=0")),
        "{human}"
    );

    // A corruption: the last data cluster's refcount set to 0.
    let bad = dir.path().join("bad.qcow2");
    std::fs::copy(&good, &bad).unwrap();
    let map: Vec<serde_json::Value> =
        serde_json::from_slice(&qemu_img(&["map", "--output", "json", s(&bad)]).stdout).unwrap();
    let host = map
        .iter()
        .filter(|e| e["data"] == true)
        .filter_map(|e| e["offset"].as_u64())
        .max()
        .unwrap();
    set_refcount(&bad, host / 65536, 0);
    let ((code, ours), (their_code, theirs)) = both(&bad);
    assert_eq!(code, Some(2), "{ours}");
    assert_eq!(code, their_code);
    assert!(ours["corruptions"].as_u64().unwrap() >= 1);
    assert_eq!(ours["corruptions"], theirs["corruptions"]);
}

#[test]
fn raw_has_nothing_to_check_and_broken_files_cannot_be_checked() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("a.raw");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    assert_eq!(ims(&["check", s(&raw)]).status.code(), Some(63));
    let broken = dir.path().join("b.qcow2");
    let mut h = vec![0u8; 4096];
    h[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
    h[20..24].copy_from_slice(&40u32.to_be_bytes());
    std::fs::write(&broken, &h).unwrap();
    let out = ims(&["check", s(&broken)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster_bits"));
}
