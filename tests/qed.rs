//! QED interoperability with qemu-img: a committed fixture made by qemu-img reads byte for
//! byte, with qemu-img's `info` keys and `map`; images qemu-img makes now, and backing chains
//! made with qemu-img and qemu-io, read as qemu-img reads them; the need-check flag is honoured
//! by checking the tables.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::catalog::ok_json;
use common::{convert_to_raw, have, have_qemu_img, ims, mixed_raw, qemu_img, s};

/// Unpacks `testdata/formats/NAME.gz` into `dir`.
fn fixture(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    std::fs::write(&out, common::gunzipped("formats", name)).unwrap();
    out
}

#[test]
fn the_fixture_reads_as_the_disk_it_was_made_from() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read(fixture(dir.path(), "formats.raw")).unwrap();
    let qed = fixture(dir.path(), "plain.qed");
    assert!(convert_to_raw(&[s(&qed)], &dir.path().join("o.raw")) == raw);
    let info = ok_json(&ims(&["info", "--output", "json", s(&qed)]));
    assert_eq!(info["format"], "qed");
    assert_eq!(info["virtual-size"], raw.len() as u64);
    assert_eq!(info["cluster-size"], 65536);
    assert_eq!(info["format-specific"]["data"]["need-check"], false);
}

#[test]
fn the_fixture_agrees_with_qemu_img_on_info_and_map() {
    if !have_qemu_img("the_fixture_agrees_with_qemu_img_on_info_and_map") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qed = fixture(dir.path(), "plain.qed");
    let ours = ok_json(&ims(&["info", "--output", "json", s(&qed)]));
    let theirs = ok_json(&qemu_img(&["info", "--output", "json", s(&qed)]));
    for key in ["format", "virtual-size", "cluster-size", "dirty-flag"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    let ours = ims(&["map", "--output", "json", s(&qed)]);
    let theirs = qemu_img(&["map", "--output", "json", s(&qed)]);
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout).trim(),
        String::from_utf8_lossy(&theirs.stdout).trim()
    );
}

#[test]
fn reads_what_qemu_img_makes() {
    if !have_qemu_img("reads_what_qemu_img_makes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let qed = dir.path().join("q.qed");
    for (size, opts) in [
        (4 << 20, "cluster_size=65536"),
        ((3 << 20) + 512, "cluster_size=4096"),
        (5 << 20, "cluster_size=1048576,table_size=16"),
    ] {
        mixed_raw(&src, size, size);
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qed",
            "-o",
            opts,
            s(&src),
            s(&qed),
        ]);
        let ours = convert_to_raw(&[s(&qed)], &dir.path().join("o.raw"));
        assert!(ours == std::fs::read(&src).unwrap(), "{size} {opts}");
        let ours = ims(&["map", "--output", "json", s(&qed)]);
        let theirs = qemu_img(&["map", "--output", "json", s(&qed)]);
        assert_eq!(ours.stdout, theirs.stdout, "{size} {opts}");
    }
}

#[test]
fn backing_files_only_where_allowed() {
    if !have_qemu_img("backing_files_only_where_allowed")
        || !have("backing_files_only_where_allowed", &["qemu-io"])
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "plain.qed");
    let top = dir.path().join("top.qed");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qed",
        "-b",
        "plain.qed",
        "-F",
        "qed",
        s(&top),
    ]);
    let io = Command::new("qemu-io")
        .args([
            "-c",
            "write -P 0x5a 1M 64k",
            "-c",
            "write -z 2560k 64k",
            s(&top),
        ])
        .output()
        .unwrap();
    assert!(io.status.success());
    let out = dir.path().join("o.raw");
    // Refused by default, naming the reference.
    let r = ims(&["convert", "-O", "raw", s(&top), s(&out)]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("backing file reference \"plain.qed\""));
    // `info` names it.
    let info = ok_json(&ims(&["info", "--output", "json", s(&top)]));
    assert_eq!(info["backing-filename"], "plain.qed");
    // Allowed inside the directory: read as qemu-img reads it.
    let ours = convert_to_raw(&["--allow-references", s(dir.path()), s(&top)], &out);
    let theirs = dir.path().join("theirs.raw");
    qemu_img(&["convert", "-q", "-O", "raw", s(&top), s(&theirs)]);
    assert!(ours == std::fs::read(&theirs).unwrap());
}

#[test]
fn need_check_reads_only_tables_that_check_clean() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read(fixture(dir.path(), "formats.raw")).unwrap();
    let qed = fixture(dir.path(), "plain.qed");
    let mut b = std::fs::read(&qed).unwrap();
    b[16] |= 2; // QED_F_NEED_CHECK
    std::fs::write(&qed, &b).unwrap();
    assert!(convert_to_raw(&[s(&qed)], &dir.path().join("o.raw")) == raw);
    let info = ok_json(&ims(&["info", "--output", "json", s(&qed)]));
    assert_eq!(info["format-specific"]["data"]["need-check"], true);
    // The second L2 entry made to share the first's cluster: refused, saying why.
    let l2 = u64::from_le_bytes(b[0x10000..0x10008].try_into().unwrap()) as usize;
    let first = b[l2..l2 + 8].to_vec();
    b[l2 + 8..l2 + 16].copy_from_slice(&first);
    std::fs::write(&qed, &b).unwrap();
    let r = ims(&["info", s(&qed)]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("malformed qed L2 table") && err.contains("need-check"),
        "{err}"
    );
}
