//! QCOW2 images made by qemu-img read back byte for byte like their raw source, and `map`
//! agrees with `qemu-img map --output json`, for every variant qemu-img makes; backing chains
//! are refused by default and followed only inside the allowed directory; malformed images
//! (hand-built below, so those tests need no qemu-img) fail with the right error, never a panic.

mod common;

use ims::References;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{Rng, have_qemu_img, qemu_img, s};
use ims::{BlockReader, ExtentState, OpenOptions};

/// A raw disk of `size` bytes mixing data and zeros at several scales: 64 KiB pieces (random,
/// zeros, text, half random), a 3 MiB zero run (a whole 2 MiB cluster), 256 KiB pieces, and a
/// tail that ends inside a cluster. Zero pieces are left as holes.
fn make_raw(path: &Path, size: usize) -> Vec<u8> {
    let mut rng = Rng::new(0x5eed);
    let mut data = vec![0u8; size];
    let fill = |piece: &mut [u8], kind: usize, rng: &mut Rng| match kind % 4 {
        0 => rng.fill(piece),
        1 => {}
        2 => piece
            .iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = b"qcow2 read test "[j % 16]),
        _ => {
            let half = piece.len() / 2;
            rng.fill(&mut piece[..half]);
        }
    };
    let mib = 1 << 20;
    for (i, piece) in data[..(4 * mib).min(size)].chunks_mut(64 << 10).enumerate() {
        fill(piece, i, &mut rng);
    }
    if size > 7 * mib {
        for (i, piece) in data[7 * mib..].chunks_mut(256 << 10).enumerate() {
            fill(piece, i + 2, &mut rng);
        }
    }
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size as u64).unwrap();
    for (i, piece) in data.chunks(4096).enumerate() {
        if piece.iter().any(|&b| b != 0) {
            f.write_all_at(piece, (i * 4096) as u64).unwrap();
        }
    }
    data
}

/// 12 MiB and a bit: the last cluster of every cluster size is partial.
const RAW_SIZE: usize = (12 << 20) + 4608;

fn open(path: &Path) -> ims::Result<Arc<dyn BlockReader>> {
    let image = ims::open(path, &OpenOptions::default())?;
    assert_eq!(image.format(), ims::Format::Qcow2);
    Ok(image.reader().expect("qcow2 is random access"))
}

fn open_allowing(path: &Path, dir: &Path) -> ims::Result<Arc<dyn BlockReader>> {
    let options = OpenOptions {
        format: None,
        references: References::Confined(dir.to_path_buf()),
    };
    Ok(ims::open(path, &options)?.reader().expect("random access"))
}

/// Reads the whole disk in pieces that straddle cluster boundaries.
fn read_all(r: &dyn BlockReader) -> ims::Result<Vec<u8>> {
    let size = r.virtual_size() as usize;
    let mut out = vec![0u8; size];
    for (i, chunk) in out.chunks_mut((1 << 20) + 4096).enumerate() {
        r.read_at(chunk, (i * ((1 << 20) + 4096)) as u64)?;
    }
    Ok(out)
}

/// Small reads across cluster boundaries of every size the tests use.
fn check_small_reads(r: &dyn BlockReader, expected: &[u8]) {
    let size = expected.len() as u64;
    let mut rng = Rng::new(7);
    for _ in 0..200 {
        let boundary = (rng.next() % size) & !511;
        let start = boundary.saturating_sub(rng.next() % 700);
        let len = (1 + rng.next() % 5000).min(size - start);
        let mut buf = vec![0xeeu8; len as usize];
        r.read_at(&mut buf, start).unwrap();
        assert!(
            buf == expected[start as usize..(start + len) as usize],
            "read of {len} at {start}"
        );
    }
    let mut one = [0u8; 1];
    assert!(r.read_at(&mut one, size).is_err());
}

/// A map entry reduced to what both sides report: (start, length, state, compressed, offset).
type Row = (u64, u64, ExtentState, bool, Option<u64>);

/// Merges rows that continue each other.
fn merge(rows: impl IntoIterator<Item = Row>) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for r in rows {
        if let Some(last) = out.last_mut() {
            let offsets_continue = match (last.4, r.4) {
                (None, None) => true,
                (Some(a), Some(b)) => a + last.1 == b,
                _ => false,
            };
            if last.0 + last.1 == r.0 && last.2 == r.2 && last.3 == r.3 && offsets_continue {
                last.1 += r.1;
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// `qemu-img map --output json`, as rows: present and not zero is data; present, zero and
/// data (a preallocated cluster in a hole of the file) is a hole; present and zero only is
/// zero; not present is unallocated.
fn qemu_map(path: &Path) -> Vec<Row> {
    let out = qemu_img(&["map", "--output", "json", s(path)]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    merge(entries.iter().map(|e| {
        let flag = |k: &str| e[k].as_bool().unwrap_or(false);
        let state = match (flag("present"), flag("zero"), flag("data")) {
            (false, _, _) => ExtentState::Unallocated,
            (true, true, true) => ExtentState::Hole,
            (true, true, false) => ExtentState::Zero,
            (true, false, _) => ExtentState::Data,
        };
        (
            e["start"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            state,
            flag("compressed"),
            e["offset"].as_u64(),
        )
    }))
}

/// ims's map of the whole disk, as rows. With `drop_offsets` the offsets are left out (a chain's
/// backing extents carry none on our side).
fn ims_map(r: &dyn BlockReader, drop_offsets: bool) -> Vec<Row> {
    let size = r.virtual_size();
    let extents = r.map(0, size).unwrap();
    ims::block::check_map(&extents, 0, size).unwrap();
    merge(extents.iter().map(|e| {
        (
            e.start,
            e.length,
            e.state,
            e.compressed,
            if drop_offsets { None } else { e.host_offset },
        )
    }))
}

fn without_offsets(rows: Vec<Row>) -> Vec<Row> {
    merge(rows.into_iter().map(|(a, b, c, d, _)| (a, b, c, d, None)))
}

/// Converts `raw` to `name` with qemu-img and these arguments, then checks ims's reading and
/// map against the raw and qemu-img map.
fn check_variant(dir: &Path, raw: &Path, expected: &[u8], name: &str, args: &[&str]) {
    let img = dir.join(name);
    let mut full = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
    full.extend_from_slice(args);
    full.extend_from_slice(&[s(raw), s(&img)]);
    qemu_img(&full);
    let r = open(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(r.virtual_size(), expected.len() as u64, "{name}");
    let back = read_all(r.as_ref()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        back == expected,
        "{name}: read-back differs from the raw source"
    );
    check_small_reads(r.as_ref(), expected);
    assert_eq!(
        ims_map(r.as_ref(), false),
        qemu_map(&img),
        "{name}: map differs from qemu-img map"
    );
}

#[test]
fn reads_every_qemu_img_variant() {
    if !have_qemu_img("reads_every_qemu_img_variant") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let expected = make_raw(&raw, RAW_SIZE);
    for (name, args) in [
        ("v2.qcow2", &["-o", "compat=0.10"][..]),
        ("v3.qcow2", &["-o", "compat=1.1"]),
        ("zlib.qcow2", &["-c"]),
        ("zstd.qcow2", &["-c", "-o", "compression_type=zstd"]),
        ("extl2.qcow2", &["-o", "extended_l2=on"]),
        ("extl2-2m.qcow2", &["-o", "extended_l2=on,cluster_size=2M"]),
        ("c4k.qcow2", &["-o", "cluster_size=4096"]),
        ("c2m.qcow2", &["-o", "cluster_size=2M"]),
        (
            "c2m-zstd.qcow2",
            &["-c", "-o", "cluster_size=2M,compression_type=zstd"],
        ),
        ("lazy.qcow2", &["-o", "lazy_refcounts=on"]),
        ("prealloc.qcow2", &["-o", "preallocation=metadata"]),
        ("refcount1.qcow2", &["-o", "refcount_bits=1"]),
    ] {
        check_variant(dir.path(), &raw, &expected, name, args);
    }
}

#[test]
fn reads_512_byte_clusters() {
    if !have_qemu_img("reads_512_byte_clusters") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("small.raw");
    let expected = make_raw(&raw, (3 << 20) + 1536);
    check_variant(
        dir.path(),
        &raw,
        &expected,
        "c512.qcow2",
        &["-o", "cluster_size=512"],
    );
    check_variant(
        dir.path(),
        &raw,
        &expected,
        "c512-zlib.qcow2",
        &["-c", "-o", "cluster_size=512"],
    );
    check_variant(
        dir.path(),
        &raw,
        &expected,
        "c512-v2.qcow2",
        &["-o", "cluster_size=512,compat=0.10"],
    );
}

#[test]
fn format_specific_matches_qemu_img_info() {
    if !have_qemu_img("format_specific_matches_qemu_img_info") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (opts, compat) in [
        ("compat=1.1,lazy_refcounts=on,extended_l2=on", "1.1"),
        ("compat=0.10", "0.10"),
    ] {
        let img = dir.path().join("info.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", opts, s(&img), "64M"]);
        let info = qemu_img(&["info", "--output", "json", s(&img)]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        let ours = open(&img)
            .unwrap()
            .info()
            .map(|i| serde_json::to_value(i).unwrap())
            .unwrap();
        assert_eq!(ours["type"], "qcow2");
        assert_eq!(ours["data"]["compat"], compat);
        for (key, value) in info["format-specific"]["data"].as_object().unwrap() {
            assert_eq!(&ours["data"][key], value, "{opts}: {key}");
        }
        assert_eq!(ours["data"]["cluster-size"], info["cluster-size"]);
    }
}

/// Runs qemu-io with `commands` on `img`, when it is installed.
fn qemu_io(img: &Path, commands: &[&str]) -> bool {
    let mut cmd = Command::new("qemu-io");
    for c in commands {
        cmd.args(["-c", c]);
    }
    match cmd.arg(img).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => panic!(
            "qemu-io {commands:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => {
            common::skip("the qemu-io part", "qemu-io is not installed");
            false
        }
    }
}

/// The image's bytes as qemu-img reads them.
fn qemu_read(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("qemu-read.raw");
    qemu_img(&["convert", "-q", "-O", "raw", s(img), s(&out)]);
    std::fs::read(&out).unwrap()
}

#[test]
fn zero_clusters_and_subclusters() {
    if !have_qemu_img("zero_clusters_and_subclusters") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Version 3 zero flag: plain (no host cluster) and preallocated; data around them.
    let img = dir.path().join("zero.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    if !qemu_io(
        &img,
        &[
            "write -P 0x11 0 256k",
            "write -z 64k 64k",
            "write -z 256k 128k",
            "write -P 0x22 1M 4k",
            "write -P 0x33 2M 64k",
            "write -z -u 2M 64k",
        ],
    ) {
        return;
    }
    // Extended L2: subclusters of 2 KiB allocated, zero and unallocated in one cluster.
    let ext = dir.path().join("zero-ext.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        s(&ext),
        "4M",
    ]);
    qemu_io(
        &ext,
        &[
            "write -P 0x44 0 4k",
            "write -z 8k 6k",
            "write -P 0x55 20k 2k",
            "write -P 0x66 64k 64k",
            "write -z 66k 2k",
            "write -P 0x77 1M 2k",
        ],
    );
    for img in [&img, &ext] {
        let r = open(img).unwrap();
        assert_eq!(
            read_all(r.as_ref()).unwrap(),
            qemu_read(img, dir.path()),
            "{img:?}"
        );
        assert_eq!(ims_map(r.as_ref(), false), qemu_map(img), "{img:?}");
    }
    let r = open(&img).unwrap();
    let map = r.map(64 << 10, 64 << 10).unwrap();
    assert_eq!(map.len(), 1);
    assert_eq!(map[0].state, ExtentState::Zero);
}

#[test]
fn corrupt_and_dirty_images_are_readable() {
    if !have_qemu_img("corrupt_and_dirty_images_are_readable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let expected = make_raw(&raw, 2 << 20);
    let img = dir.path().join("flags.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&img),
    ]);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    // Incompatible features: dirty (bit 0) and corrupt (bit 1).
    f.write_all_at(&3u64.to_be_bytes(), 72).unwrap();
    drop(f);
    let r = open(&img).unwrap();
    assert_eq!(read_all(r.as_ref()).unwrap(), expected);
    let info = r.info().map(|i| serde_json::to_value(i).unwrap()).unwrap();
    assert_eq!(info["data"]["corrupt"], true);
    assert_eq!(info["data"]["dirty"], true);
}

#[test]
fn internal_snapshots_are_listed() {
    if !have_qemu_img("internal_snapshots_are_listed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    make_raw(&raw, 1 << 20);
    let img = dir.path().join("snap.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&img),
    ]);
    qemu_img(&["snapshot", "-c", "first", s(&img)]);
    qemu_img(&["snapshot", "-c", "second one", s(&img)]);
    let r = open(&img).unwrap();
    let info = r.info().map(|i| serde_json::to_value(i).unwrap()).unwrap();
    let snaps = info["data"]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["name"], "first");
    assert_eq!(snaps[1]["name"], "second one");
    assert_eq!(snaps[0]["id"], "1");
    assert_eq!(snaps[0]["vm-state-size"], 0);
    assert!(snaps[0]["date-sec"].as_u64().unwrap() > 1_600_000_000);
    // Reading is unaffected: the active state is the raw.
    assert_eq!(read_all(r.as_ref()).unwrap(), std::fs::read(&raw).unwrap());
}

#[test]
fn many_threads_read_one_reader() {
    if !have_qemu_img("many_threads_read_one_reader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let expected = Arc::new(make_raw(&raw, 8 << 20));
    let img = dir.path().join("zlib-4k.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&raw),
        s(&img),
    ]);
    let r = open(&img).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let r = r.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 1);
                for _ in 0..100 {
                    let start = rng.next() % (8 << 20);
                    let len = (1 + rng.next() % (300 << 10)).min((8 << 20) - start);
                    let mut buf = vec![0u8; len as usize];
                    r.read_at(&mut buf, start).unwrap();
                    assert!(buf == expected[start as usize..(start + len) as usize]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// A base image (8 MiB, from a raw) and a 16 MiB child of it in `dir`, with writes over both
/// the base's data and its zeros, and past the base's end.
fn make_chain(dir: &Path, backing_name: &str) -> Option<PathBuf> {
    let raw = dir.join("base.raw");
    make_raw(&raw, 8 << 20);
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&dir.join("base.qcow2")),
    ]);
    let child = dir.join("child.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        backing_name,
        "-F",
        "qcow2",
        s(&child),
        "16M",
    ]);
    qemu_io(
        &child,
        &[
            "write -P 0x11 0 64k",
            "write -z 128k 64k",
            "write -P 0x22 4M 1M",
            "write -P 0x33 9M 64k",
        ],
    )
    .then_some(child)
}

#[test]
fn backing_chain_refused_by_default_and_read_when_allowed() {
    if !have_qemu_img("backing_chain_refused_by_default_and_read_when_allowed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(child) = make_chain(dir.path(), "base.qcow2") else {
        return;
    };
    let e = open(&child).err().expect("backing file refused by default");
    assert_eq!(e.kind(), "external-reference");
    assert!(e.to_string().contains("base.qcow2"), "{e}");

    let r = open_allowing(&child, dir.path()).unwrap();
    assert_eq!(r.virtual_size(), 16 << 20);
    let expected = qemu_read(&child, dir.path());
    assert!(read_all(r.as_ref()).unwrap() == expected);
    check_small_reads(r.as_ref(), &expected);
    // qemu-img map walks the chain too; it reports host offsets in the backing file, ims none.
    assert_eq!(ims_map(r.as_ref(), true), without_offsets(qemu_map(&child)));
    let info = r.info().map(|i| serde_json::to_value(i).unwrap()).unwrap();
    assert_eq!(info["data"]["backing-filename"], "base.qcow2");
    assert_eq!(info["data"]["backing-filename-format"], "qcow2");
}

#[test]
fn backing_chain_with_a_raw_base_and_no_format() {
    if !have_qemu_img("backing_chain_with_a_raw_base_and_no_format") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    make_raw(&raw, 4 << 20);
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&mid),
        "4M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        s(&top),
        "4M",
    ]);
    if !qemu_io(&mid, &["write -P 0x5a 1M 128k"]) || !qemu_io(&top, &["write -P 0xa5 1088k 128k"]) {
        return;
    }
    // Turn the backing format extension into an unknown one (skipped), so that the format of
    // mid.qcow2 is probed.
    let mut head = std::fs::read(&top).unwrap();
    let at = (112..4096)
        .step_by(8)
        .find(|&i| head[i..i + 4] == 0xe279_2acau32.to_be_bytes())
        .expect("backing format extension");
    head[at..at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    std::fs::write(&top, &head).unwrap();
    assert_eq!(
        open_allowing(&top, dir.path())
            .unwrap()
            .info()
            .map(|i| serde_json::to_value(i).unwrap())
            .unwrap()["data"]
            .get("backing-filename-format"),
        None
    );
    let r = open_allowing(&top, dir.path()).unwrap();
    assert!(read_all(r.as_ref()).unwrap() == qemu_read(&top, dir.path()));
}

#[test]
fn references_leaving_the_directory_are_refused() {
    if !have_qemu_img("references_leaving_the_directory_are_refused") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    let allowed = root.path().join("allowed");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&allowed).unwrap();
    let Some(_) = make_chain(&outside, "base.qcow2") else {
        return;
    };
    let base = outside.join("base.qcow2");
    let refused = |child: &Path| {
        let e = open_allowing(child, &allowed).err().expect("refused");
        assert_eq!(e.kind(), "external-reference", "{child:?}: {e}");
    };
    // A relative name with "..".
    let child = allowed.join("dotdot.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "../outside/base.qcow2",
        "-F",
        "qcow2",
        s(&child),
        "8M",
    ]);
    refused(&child);
    // An absolute name.
    let child = allowed.join("absolute.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&base),
        "-F",
        "qcow2",
        s(&child),
        "8M",
    ]);
    refused(&child);
    // A symbolic link inside the directory that points out of it.
    std::os::unix::fs::symlink(&base, allowed.join("link.qcow2")).unwrap();
    let child = allowed.join("via-link.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "link.qcow2",
        "-F",
        "qcow2",
        s(&child),
        "8M",
    ]);
    refused(&child);
    // A protocol.
    let child = allowed.join("nbd.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "nbd://127.0.0.1:10809/x",
        "-F",
        "raw",
        s(&child),
        "8M",
    ]);
    refused(&child);
    // Allowed in the child's own directory, the chain reads.
    assert!(open_allowing(&outside.join("child.qcow2"), &outside).is_ok());
}

#[test]
fn backing_loops_stop_at_the_depth_limit() {
    if !have_qemu_img("backing_loops_stop_at_the_depth_limit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&a), "1M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", s(&b), "1M"]);
    qemu_img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", s(&a)]);
    qemu_img(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", s(&b)]);
    let e = open_allowing(&a, dir.path()).err().expect("loop refused");
    assert_eq!(e.kind(), "limit-exceeded", "{e}");
}

#[test]
fn external_data_file_is_refused() {
    if !have_qemu_img("external_data_file_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("df.qcow2");
    let data = dir.path().join("df.data");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s(&data)),
        s(&img),
        "16M",
    ]);
    let e = open(&img).err().expect("refused");
    assert_eq!(e.kind(), "external-reference");
    assert!(e.to_string().contains("df.data"), "{e}");
    let e = open_allowing(&img, dir.path()).err().expect("refused");
    assert_eq!(e.kind(), "unsupported", "{e}");
}

// ---- Hand-built images: no qemu-img needed. ----

const CLUSTER: usize = 0x10000;
const L1_AT: usize = 0x30000;
const L2_AT: usize = 0x40000;
const DATA_AT: usize = 0x50000;
const COMPRESSED_AT: usize = 0x60000;

fn pattern(seed: u8) -> Vec<u8> {
    (0..CLUSTER)
        .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 8) as u8)
        .collect()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A 1 MiB version 3 image with 64 KiB clusters: cluster 0 stored, cluster 1 compressed
/// (deflate), cluster 2 a plain zero cluster, cluster 3 a preallocated zero cluster, the rest
/// unallocated. Returns the file and the disk it holds.
fn built_image() -> (Vec<u8>, Vec<u8>) {
    let mut b = vec![0u8; 0x80000];
    b[..4].copy_from_slice(b"QFI\xfb");
    put32(&mut b, 4, 3);
    put32(&mut b, 20, 16);
    put64(&mut b, 24, 1 << 20);
    put32(&mut b, 36, 1);
    put64(&mut b, 40, L1_AT as u64);
    put64(&mut b, 48, 0x10000);
    put32(&mut b, 56, 1);
    put32(&mut b, 96, 4);
    put32(&mut b, 100, 112);
    // Refcount table -> one block at 0x20000 counting the 8 clusters.
    put64(&mut b, 0x10000, 0x20000);
    for i in 0..8 {
        b[0x20000 + 2 * i + 1] = 1;
    }
    put64(&mut b, L1_AT, (1 << 63) | L2_AT as u64);
    let a = pattern(3);
    let c = pattern(5);
    b[DATA_AT..DATA_AT + CLUSTER].copy_from_slice(&a);
    let z = deflate(&c);
    b[COMPRESSED_AT..COMPRESSED_AT + z.len()].copy_from_slice(&z);
    let sectors = ((COMPRESSED_AT + z.len() - 1) / 512 - COMPRESSED_AT / 512) as u64;
    put64(&mut b, L2_AT, (1 << 63) | DATA_AT as u64);
    put64(
        &mut b,
        L2_AT + 8,
        (1 << 62) | (sectors << 54) | COMPRESSED_AT as u64,
    );
    put64(&mut b, L2_AT + 16, 1);
    put64(&mut b, L2_AT + 24, (1 << 63) | 0x70000 | 1);
    let mut disk = vec![0u8; 1 << 20];
    disk[..CLUSTER].copy_from_slice(&a);
    disk[CLUSTER..2 * CLUSTER].copy_from_slice(&c);
    (b, disk)
}

/// Writes `bytes` to a file and opens it, then reads and maps the whole disk.
fn open_built(bytes: &[u8]) -> ims::Result<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("built.qcow2");
    std::fs::write(&path, bytes).unwrap();
    let r = open(&path)?;
    r.map(0, r.virtual_size())?;
    read_all(r.as_ref())
}

/// The error kind opening, mapping or reading the built image gives after `patch`.
fn kind_after(patch: impl FnOnce(&mut Vec<u8>)) -> &'static str {
    let (mut b, _) = built_image();
    patch(&mut b);
    match open_built(&b) {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    }
}

#[test]
fn built_image_reads_and_maps() {
    let (b, disk) = built_image();
    assert_eq!(open_built(&b).unwrap(), disk);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("built.qcow2");
    std::fs::write(&path, &b).unwrap();
    let r = open(&path).unwrap();
    let map = r.map(0, 1 << 20).unwrap();
    let states: Vec<_> = map
        .iter()
        .map(|e| (e.start, e.length, e.state, e.compressed, e.host_offset))
        .collect();
    assert_eq!(
        states,
        vec![
            (0, 0x10000, ExtentState::Data, false, Some(DATA_AT as u64)),
            (0x10000, 0x10000, ExtentState::Data, true, None),
            (0x20000, 0x10000, ExtentState::Zero, false, None),
            (0x30000, 0x10000, ExtentState::Zero, false, Some(0x70000)),
            (0x40000, 0xc0000, ExtentState::Unallocated, false, None),
        ]
    );
    // The same through the probe and with the format named.
    let options = OpenOptions {
        format: Some(ims::Format::Qcow2),
        ..Default::default()
    };
    assert_eq!(ims::open(&path, &options).unwrap().virtual_size(), 1 << 20);
}

#[test]
fn malformed_images_fail_with_the_right_error() {
    // Fields of the header.
    assert_eq!(
        kind_after(|b| put32(b, 20, 8)),
        "malformed",
        "cluster_bits 8"
    );
    assert_eq!(
        kind_after(|b| put32(b, 20, 22)),
        "malformed",
        "cluster_bits 22"
    );
    assert_eq!(
        kind_after(|b| put32(b, 20, u32::MAX)),
        "malformed",
        "cluster_bits huge"
    );
    assert_eq!(
        kind_after(|b| put32(b, 36, 0x7fff_ffff)),
        "limit-exceeded",
        "huge L1"
    );
    assert_eq!(kind_after(|b| put32(b, 36, 0)), "malformed", "L1 too small");
    assert_eq!(
        kind_after(|b| put64(b, 40, 0x1000_0000_0000)),
        "truncated",
        "L1 past EOF"
    );
    assert_eq!(
        kind_after(|b| put64(b, 40, 0x30200)),
        "malformed",
        "L1 unaligned"
    );
    assert_eq!(
        kind_after(|b| put64(b, 48, 0)),
        "malformed",
        "refcount table over the header"
    );
    assert_eq!(
        kind_after(|b| put64(b, 48, 0x80000)),
        "truncated",
        "refcount table past EOF"
    );
    assert_eq!(
        kind_after(|b| put32(b, 56, 0)),
        "malformed",
        "no refcount table"
    );
    assert_eq!(
        kind_after(|b| {
            put32(b, 60, 10_000);
            put64(b, 64, 0x70000);
        }),
        "truncated",
        "snapshot table past EOF"
    );
    assert_eq!(kind_after(|b| put32(b, 32, 1)), "unsupported", "AES");
    assert_eq!(kind_after(|b| put32(b, 32, 2)), "unsupported", "LUKS");
    assert_eq!(kind_after(|b| put32(b, 4, 4)), "unsupported", "version 4");
    assert_eq!(
        kind_after(|b| b.truncate(60)),
        "truncated",
        "header cut short"
    );
    // An unknown incompatible feature bit is refused by number.
    let (mut b, _) = built_image();
    put64(&mut b, 72, 1 << 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bit5.qcow2");
    std::fs::write(&path, &b).unwrap();
    let e = open(&path).err().unwrap();
    assert_eq!(e.kind(), "unsupported");
    assert!(e.to_string().contains("bit 5"), "{e}");
    // Tables and entries, found when reading.
    assert_eq!(
        kind_after(|b| put64(b, L1_AT, 0x1000_0000_0000)),
        "truncated",
        "L2 past EOF"
    );
    assert_eq!(
        kind_after(|b| put64(b, L1_AT, 0x40200)),
        "malformed",
        "L2 unaligned"
    );
    assert_eq!(
        kind_after(|b| put64(b, L2_AT, 0x1000_0000_0000)),
        "truncated",
        "data past EOF"
    );
    assert_eq!(
        kind_after(|b| put64(b, L2_AT, 0x50200)),
        "malformed",
        "data unaligned"
    );
    assert_eq!(
        kind_after(|b| put64(b, L2_AT + 8, (1 << 62) | (3 << 54) | 0x7ff00)),
        "truncated",
        "compressed past EOF"
    );
    assert_eq!(
        kind_after(|b| b[COMPRESSED_AT..COMPRESSED_AT + 64].fill(0xff)),
        "malformed",
        "compressed garbage"
    );
    assert_eq!(
        kind_after(|b| b.truncate(COMPRESSED_AT + 100)),
        "truncated",
        "file ends inside the compressed cluster"
    );
    // A version 2 image cannot have zero clusters.
    assert_eq!(
        kind_after(|b| {
            put32(b, 4, 2);
            b[72..112].fill(0);
        }),
        "malformed",
        "zero flag in v2"
    );
}

#[test]
fn references_in_built_images() {
    // A backing file name after the header.
    let name = b"../../etc/passwd";
    let kind = kind_after(|b| {
        put64(b, 8, 0x200);
        put32(b, 16, name.len() as u32);
        b[0x200..0x200 + name.len()].copy_from_slice(name);
    });
    assert_eq!(kind, "external-reference");
    // An external data file: the feature bit and the name extension.
    let kind = kind_after(|b| {
        put64(b, 72, 1 << 2);
        put32(b, 112, 0x4441_5441);
        put32(b, 116, 4);
        b[120..124].copy_from_slice(b"data");
    });
    assert_eq!(kind, "external-reference");
}

#[test]
fn extended_l2_entries_that_cannot_be_right() {
    // Re-lay the built image with extended L2 entries (16 bytes each).
    let ext = |descriptor: u64, bitmap: u64| {
        let (mut b, _) = built_image();
        let incompatible = 1u64 << 4;
        put64(&mut b, 72, incompatible);
        b[L2_AT..L2_AT + CLUSTER].fill(0);
        put64(&mut b, L2_AT, descriptor);
        put64(&mut b, L2_AT + 8, bitmap);
        match open_built(&b) {
            Ok(disk) => Ok(disk),
            Err(e) => Err(e.kind()),
        }
    };
    // Subclusters 0-1 allocated, 2 zero, the rest unallocated.
    let disk = ext((1 << 63) | DATA_AT as u64, 0b11 | (0b100 << 32)).unwrap();
    let a = pattern(3);
    assert_eq!(&disk[..4096], &a[..4096]);
    assert!(disk[4096..].iter().all(|&b| b == 0));
    // Allocated and zero at once.
    assert_eq!(
        ext((1 << 63) | DATA_AT as u64, 1 | (1 << 32)),
        Err("malformed")
    );
    // Allocated without a host cluster.
    assert_eq!(ext(0, 1), Err("malformed"));
    // Zero subclusters without a host cluster are fine.
    assert!(ext(0, 0xffff_ffff << 32).unwrap().iter().all(|&b| b == 0));
}

mod mutations {
    use super::*;
    use proptest::prelude::*;

    /// Where a mutation lands: the header, the refcount table, the L1 entry, the first L2
    /// entries, the start of the compressed data, or anywhere.
    fn target() -> impl Strategy<Value = usize> {
        prop_oneof![
            0usize..128,
            0x200usize..0x240,
            0x10000usize..0x10010,
            L1_AT..L1_AT + 16,
            L2_AT..L2_AT + 64,
            COMPRESSED_AT..COMPRESSED_AT + 64,
            0usize..0x80000,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Damaged images open, map and read without panicking: every outcome is Ok or Err.
        #[test]
        fn damaged_images_never_panic(
            flips in proptest::collection::vec((target(), any::<u8>()), 1..8),
            cut in prop_oneof![Just(usize::MAX), 0usize..0x80000],
        ) {
            let (mut b, _) = built_image();
            for (at, v) in flips {
                b[at] = v;
            }
            b.truncate(cut);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("damaged.qcow2");
            std::fs::write(&path, &b).unwrap();
            let options = OpenOptions { format: Some(ims::Format::Qcow2), ..Default::default() };
            let Ok(image) = ims::open(&path, &options) else {
                return Ok(());
            };
            let r = image.reader().unwrap();
            // The size field may be damaged: look at no more than 4 MiB of the disk.
            let size = r.virtual_size().min(4 << 20);
            if let Ok(map) = r.map(0, size) {
                ims::block::check_map(&map, 0, size).unwrap();
            }
            let mut buf = vec![0u8; 256 << 10];
            for at in (0..size).step_by(256 << 10) {
                let n = (size - at).min(256 << 10) as usize;
                let _ = r.read_at(&mut buf[..n], at);
            }
        }
    }
}

/// Persistent dirty bitmaps made by qemu-img: the image reads as qemu-img reads it, and an L2
/// entry pointing at the bitmap directory, a bitmap table or a cluster of bitmap data (metadata
/// a reader would expose as guest data) is refused at open.
#[test]
fn bitmaps_are_metadata_no_guest_cluster_may_use() {
    if !have_qemu_img("bitmaps_are_metadata_no_guest_cluster_may_use") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("bm.qcow2");
    let ok = |o: std::process::Output| assert!(o.status.success(), "{o:?}");
    ok(qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "64M"]));
    ok(qemu_img(&["bitmap", "--add", s(&img), "b0"]));
    ok(qemu_img(&["bitmap", "--add", "-g", "512", s(&img), "b1"]));
    assert!(qemu_io(&img, &["write -P 7 0 1M", "write -P 9 3M 64k"]));
    let expected = qemu_read(&img, dir.path());
    assert_eq!(read_all(&*open(&img).unwrap()).unwrap(), expected);

    let b = std::fs::read(&img).unwrap();
    let be64 = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let be32 = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    // The bitmaps header extension (0x23852875), after the header's header_length bytes.
    let mut at = be32(100) as usize;
    let (directory, directory_size) = loop {
        let (kind, len) = (be32(at), be32(at + 4) as usize);
        assert_ne!(kind, 0, "no bitmaps extension");
        if kind == 0x2385_2875 {
            break (be64(at + 24) as usize, be64(at + 16));
        }
        at += 8 + len.next_multiple_of(8);
    };
    assert!(directory_size > 0);
    let table = be64(directory) as usize;
    // b1 (512-byte granularity) has data for the written ranges; find a data cluster.
    let mut data = None;
    let mut entry_at = directory;
    for _ in 0..2 {
        let (t, n) = (be64(entry_at) as usize, be32(entry_at + 8) as usize);
        for i in 0..n {
            let e = be64(t + 8 * i) & 0x00ff_ffff_ffff_fe00;
            if e != 0 {
                data = Some(e as usize);
            }
        }
        let extra = be32(entry_at + 20) as usize;
        let name = u16::from_be_bytes([b[entry_at + 18], b[entry_at + 19]]) as usize;
        entry_at += (24 + extra + name).next_multiple_of(8);
    }
    let data = data.expect("a cluster of bitmap data");
    // The L2 entry of guest cluster 0 (written, so allocated): the first entry of the first L2
    // table, which the first L1 entry (l1_table_offset at byte 40) names.
    let l1 = be64(40) as usize;
    let l2 = (be64(l1) & 0x00ff_ffff_ffff_fe00) as usize;
    for (what, target) in [
        ("bitmap directory", directory & !0xffff),
        ("bitmap table", table),
        ("bitmap data", data),
    ] {
        let mut bad = b.clone();
        let entry = (1u64 << 63) | target as u64;
        bad[l2..l2 + 8].copy_from_slice(&entry.to_be_bytes());
        let p = dir.path().join("bad.qcow2");
        std::fs::write(&p, &bad).unwrap();
        let e = open(&p).err().unwrap_or_else(|| panic!("{what}: opened"));
        assert_eq!(e.kind(), "malformed", "{what}: {e}");
        assert!(e.to_string().contains("bitmap"), "{what}: {e}");
    }
}
