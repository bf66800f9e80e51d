//! QCOW2 images written by ims pass `qemu-img check` with no errors or leaks and read back
//! identical to their source in qemu-img, for every option qemu-img users pass.

mod common;

use std::path::Path;
use std::process::Command;

use common::{have_qemu_img, ims, mixed_raw, s};

/// Converts `src` with ims and checks the result with qemu-img; returns the output's bytes.
fn write_and_check(src: &Path, dst: &Path, args: &[&str]) -> Vec<u8> {
    let mut full = vec!["convert", "-f", "raw", "-O", "qcow2"];
    full.extend_from_slice(args);
    full.extend_from_slice(&[s(src), s(dst)]);
    let out = ims(&full);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Command::new("qemu-img")
        .args(["check", "--output", "json", s(dst)])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&check.stdout)
        .unwrap_or_else(|_| panic!("{args:?}: {}", String::from_utf8_lossy(&check.stderr)));
    assert_eq!(check.status.code(), Some(0), "{args:?}: {report}");
    assert!(
        report.get("corruptions").is_none() && report.get("leaks").is_none(),
        "{args:?}: {report}"
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2", s(src), s(dst)])
        .output()
        .unwrap();
    assert_eq!(
        cmp.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    std::fs::read(dst).unwrap()
}

#[test]
fn every_option_passes_qemu_img_check_and_compare() {
    if !have_qemu_img("every_option_passes_qemu_img_check_and_compare") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    // Not a whole number of clusters or sectors: the tail is a partial cluster.
    mixed_raw(&src, (6 << 20) + 1000, 11);
    let dst = dir.path().join("out.qcow2");
    for args in [
        &[][..],
        &["-c"],
        &["-c", "-o", "compression_type=zstd"],
        &["-c", "-o", "compression_type=zlib"],
        &["-o", "compat=0.10"],
        &["-c", "-o", "compat=0.10"],
        &["-o", "cluster_size=2M"],
        &["-c", "-o", "cluster_size=2M"],
        &["-o", "cluster_size=4096"],
        &["-o", "lazy_refcounts=on"],
        // 512-byte clusters: a refcount block covers only 128 KiB, so many are written mid-stream.
        &["-o", "cluster_size=512"],
        &["-c", "-o", "cluster_size=512,compression_type=zstd"],
    ] {
        write_and_check(&src, &dst, args);
    }
}

#[test]
fn zstd_header_and_compat_are_what_qemu_img_reports() {
    if !have_qemu_img("zstd_header_and_compat_are_what_qemu_img_reports") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src, 1 << 20, 12);
    let dst = dir.path().join("out.qcow2");
    for (args, compat, ctype) in [
        (&["-c", "-o", "compression_type=zstd"][..], "1.1", "zstd"),
        (&["-c"][..], "1.1", "zlib"),
        (&["-o", "compat=0.10"][..], "0.10", "zlib"),
    ] {
        write_and_check(&src, &dst, args);
        let info = Command::new("qemu-img")
            .args(["info", "--output", "json", s(&dst)])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["format-specific"]["data"]["compat"], compat, "{args:?}");
        assert_eq!(
            v["format-specific"]["data"]["compression-type"], ctype,
            "{args:?}"
        );
        assert_eq!(v["virtual-size"], 1 << 20);
    }
}

#[test]
fn output_bytes_are_the_same_for_every_thread_count() {
    if !have_qemu_img("output_bytes_are_the_same_for_every_thread_count") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src, 4 << 20, 13);
    let dst = dir.path().join("out.qcow2");
    for mode in [&["-c"][..], &["-c", "-o", "compression_type=zstd"], &[]] {
        let mut one_args = vec!["-j", "1"];
        one_args.extend_from_slice(mode);
        let one = write_and_check(&src, &dst, &one_args);
        let mut three_args = vec!["-j", "3"];
        three_args.extend_from_slice(mode);
        let three = write_and_check(&src, &dst, &three_args);
        assert!(
            one == three,
            "{mode:?}: output differs between -j 1 and -j 3"
        );
    }
}

#[test]
fn zero_ranges_stay_unallocated_and_sparse_disks_stay_small() {
    if !have_qemu_img("zero_ranges_stay_unallocated_and_sparse_disks_stay_small") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("sparse.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(64 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x5a; 1 << 20], 40 << 30).unwrap();
    drop(f);
    let dst = dir.path().join("out.qcow2");
    write_and_check(&src, &dst, &[]);
    assert!(std::fs::metadata(&dst).unwrap().len() < 4 << 20);
    let map = Command::new("qemu-img")
        .args(["map", "--output", "json", s(&dst)])
        .output()
        .unwrap();
    let extents: Vec<serde_json::Value> = serde_json::from_slice(&map.stdout).unwrap();
    let data: u64 = extents
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(data, 1 << 20);
}

#[test]
fn empty_disk_and_stdout_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    std::fs::write(&src, b"").unwrap();
    let dst = dir.path().join("out.qcow2");
    if have_qemu_img("empty_disk_and_stdout_and_bad_options") {
        write_and_check(&src, &dst, &["-c"]);
    }
    let out = ims(&["convert", "-O", "qcow2", s(&src), "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be written to a pipe"));
    for bad in [
        "cluster_size=3000",
        "compat=2.0",
        "compression_type=lz4",
        "backing_file=/etc/passwd",
    ] {
        let out = ims(&["convert", "-O", "qcow2", "-o", bad, s(&src), s(&dst)]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
    }
}
