//! The `ims` binary's contract: verbs, options, exit codes and error messages, driven on files
//! made in the test.

mod common;

use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{allocated, have_qemu_img, ims, mixed_raw, qemu_img, s, sparse_file};

#[test]
fn raw_with_holes_converts_to_an_equal_sparse_raw() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let dst = dir.path().join("dst.raw");
    let data = mixed_raw(&src, (8 << 20) + 1000, 1);
    let out = ims(&["convert", "-f", "raw", "-O", "raw", s(&src), s(&dst)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    // A quarter of the image is zeros: the output keeps those as holes.
    assert!(
        allocated(&dst) <= allocated(&src) + (64 << 10),
        "output lost its holes"
    );
}

#[test]
fn sparse_64_gib_raw_converts_quickly_and_stays_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.raw");
    let dst = dir.path().join("big.out");
    let f = std::fs::File::create(&src).unwrap();
    let size = 64u64 << 30;
    f.set_len(size).unwrap();
    for off in [0, size / 2, size - (1 << 20)] {
        f.write_all_at(&[0xa5; 1 << 20], off).unwrap();
    }
    drop(f);
    let t = Instant::now();
    let out = ims(&["convert", "-O", "raw", s(&src), s(&dst)]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Well under a second in release; a debug build gets some slack.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), size);
    assert!(allocated(&dst) < 16 << 20, "output is not sparse");
    let mut buf = vec![0u8; 1 << 20];
    let g = std::fs::File::open(&dst).unwrap();
    g.read_exact_at(&mut buf, size / 2).unwrap();
    assert!(buf.iter().all(|&b| b == 0xa5));
    let cmp = ims(&["compare", s(&src), s(&dst)]);
    assert_eq!(cmp.status.code(), Some(0));
}

#[test]
fn stdout_output_pipes_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = mixed_raw(&src, 3 << 20, 2);
    let out = ims(&["convert", "-O", "raw", s(&src), "-"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, data);
}

#[test]
fn output_is_identical_for_every_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src, 5 << 20, 3);
    let one = ims(&["convert", "-j", "1", "-O", "raw", s(&src), "-"]);
    let four = ims(&["convert", "-j", "4", "-O", "raw", s(&src), "-"]);
    assert!(one.status.success() && four.status.success());
    assert_eq!(one.stdout, four.stdout);
}

#[test]
fn short_file_is_a_tiny_raw_image() {
    // As qemu-img does: too short for any signature, so it is raw.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("short");
    std::fs::write(&f, b"abc").unwrap();
    let out = ims(&["info", "--output", "json", s(&f)]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "raw");
    assert_eq!(v["virtual-size"], 3);
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let out = ims(&["convert", "-O", "raw", s(&empty), "-"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn directory_and_missing_file_fail_with_exit_1_and_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = ims(&["info", s(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
    let missing = dir.path().join("missing.raw");
    let out = ims(&["info", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.raw") && err.contains("No such file"),
        "{err}"
    );
    let out = ims(&[
        "convert",
        "-O",
        "raw",
        s(&missing),
        s(&dir.path().join("x")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("x").exists());
}

#[test]
fn unknown_output_format_and_option_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.raw");
    mixed_raw(&src, 1 << 20, 4);
    let out = ims(&[
        "convert",
        "-O",
        "nosuchformat",
        s(&src),
        s(&dir.path().join("b")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown image format 'nosuchformat'"));
    let out = ims(&[
        "convert",
        "-O",
        "raw",
        "-o",
        "bogus=1",
        s(&src),
        s(&dir.path().join("b")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no option 'bogus'"));
    let out = ims(&[
        "convert",
        "-f",
        "vpc",
        "-O",
        "raw",
        s(&src),
        s(&dir.path().join("b")),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "vpc is accepted as a name for vhd"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("unknown image format"));
}

#[test]
fn info_and_map_speak_qemu_img_json() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.raw");
    sparse_file(&src, 16 << 20, 4 << 20, &[1u8; 1 << 20]);
    let out = ims(&["info", "--output", "json", s(&src)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "raw");
    assert_eq!(v["virtual-size"], 16 << 20);
    assert_eq!(v["filename"], s(&src));
    assert!(v["actual-size"].as_u64().unwrap() >= 1 << 20);
    let human = String::from_utf8(ims(&["info", s(&src)]).stdout).unwrap();
    assert!(
        human.contains("file format: raw")
            && human.contains("virtual size: 16 MiB (16777216 bytes)")
    );

    let out = ims(&["map", "--output", "json", s(&src)]);
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if have_qemu_img("info_and_map_speak_qemu_img_json") {
        let theirs: serde_json::Value =
            serde_json::from_slice(&qemu_img(&["map", "--output", "json", s(&src)]).stdout)
                .unwrap();
        assert_eq!(ours, theirs);
    } else {
        assert_eq!(ours.as_array().unwrap().len(), 3);
    }
}

/// Preallocated images whose file has holes: the format stored those bytes, the file system
/// says they are zeros, and qemu-img reports them as data and zero (and prints only real data
/// in the human form).
#[test]
fn map_reports_holes_under_stored_ranges_as_qemu_img() {
    if !have_qemu_img("map_reports_holes_under_stored_ranges_as_qemu_img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, fmt, opts) in [
        ("p.qcow2", "qcow2", "preallocation=metadata"),
        ("f.vhd", "vpc", "subformat=fixed"),
        ("s.vdi", "vdi", "static=on"),
    ] {
        let image = dir.path().join(name);
        qemu_img(&["create", "-q", "-f", fmt, "-o", opts, s(&image), "4M"]);
        let written = std::process::Command::new("qemu-io")
            .args(["-f", fmt, "-c", "write -P 7 64k 64k", s(&image)])
            .output()
            .unwrap();
        assert!(written.status.success(), "qemu-io on {name}");
        for output in ["json", "human"] {
            let ours = ims(&["map", "--output", output, s(&image)]);
            let theirs = qemu_img(&["map", "-f", fmt, "--output", output, s(&image)]);
            assert_eq!(
                String::from_utf8_lossy(&ours.stdout).trim(),
                String::from_utf8_lossy(&theirs.stdout).trim(),
                "{name} {output}"
            );
        }
    }
}

#[test]
fn compare_agrees_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    let b = dir.path().join("b.raw");
    let c = dir.path().join("c.raw");
    let data = mixed_raw(&a, 10_000_000, 5);
    std::fs::write(&b, &data).unwrap();
    let mut changed = data.clone();
    changed[7_000_001] ^= 0x40;
    std::fs::write(&c, &changed).unwrap();
    let longer = dir.path().join("longer.raw");
    std::fs::write(&longer, &data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&longer)
        .unwrap()
        .set_len(12_000_000)
        .unwrap();
    let missing = dir.path().join("missing.raw");
    let cases: [(&[&str], i32); 5] = [
        (&[s(&a), s(&b)], 0),
        (&[s(&a), s(&c)], 1),
        (&[s(&a), s(&longer)], 0),
        (&["-s", s(&a), s(&longer)], 1),
        (&[s(&a), s(&missing)], 2),
    ];
    let qemu = have_qemu_img("compare_agrees_with_qemu_img");
    for (args, code) in cases {
        let mut full = vec!["compare"];
        full.extend_from_slice(args);
        let ours = ims(&full);
        assert_eq!(ours.status.code(), Some(code), "{args:?}");
        if qemu {
            let theirs = Command::new("qemu-img").args(&full).output().unwrap();
            assert_eq!(ours.status.code(), theirs.status.code(), "{args:?}");
            if code != 2 {
                assert_eq!(ours.stdout, theirs.stdout, "{args:?}");
            }
        }
    }
}

#[test]
fn unsupported_formats_are_refused_by_name() {
    if !have_qemu_img("unsupported_formats_are_refused_by_name") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // VHDX, VDI and QED are read since issue 18; qemu-img still makes two formats ims refuses.
    let luks = dir.path().join("x.luks");
    let made = qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=sec0,data=passphrase",
        "-f",
        "luks",
        "-o",
        "key-secret=sec0,iter-time=10",
        s(&luks),
        "16M",
    ]);
    assert!(made.status.success(), "{made:?}");
    let parallels = dir.path().join("x.parallels");
    qemu_img(&["create", "-q", "-f", "parallels", s(&parallels), "64M"]);
    for (f, name) in [(&luks, "luks"), (&parallels, "parallels")] {
        let out = ims(&["info", s(f)]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unsupported") && err.contains(name),
            "{name}: {err}"
        );
    }
}

#[test]
fn progress_json_reports_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.raw");
    mixed_raw(&src, 4 << 20, 6);
    let out = Command::new(env!("CARGO_BIN_EXE_ims"))
        .args([
            "convert",
            "--progress",
            "json",
            "-O",
            "raw",
            s(&src),
            s(&dir.path().join("b.raw")),
        ])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2);
    assert_eq!(lines.last().unwrap()["percent"], 100);
    assert_eq!(lines.last().unwrap()["done"], 4 << 20);
}

#[test]
fn info_names_a_backing_file_that_convert_refuses() {
    if !have_qemu_img("info_names_a_backing_file_that_convert_refuses") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "16M"]);
    let child = dir.path().join("child.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&child),
    ]);
    let out = ims(&["info", "--output", "json", s(&child)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backing-filename"], "base.qcow2");
    assert_eq!(v["backing-filename-format"], "qcow2");
    assert_eq!(v["cluster-size"], 65536);
    let out = ims(&[
        "convert",
        "-O",
        "raw",
        s(&child),
        s(&dir.path().join("x.raw")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("backing file reference \"base.qcow2\" refused")
    );
    let out = ims(&[
        "convert",
        "--allow-references",
        s(dir.path()),
        "-O",
        "raw",
        s(&child),
        "-",
    ]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 16 << 20);
}

#[test]
fn usage_errors_exit_1_as_qemu_img() {
    let out = ims(&["convert", "--no-such-option", "a", "b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-option"));
    assert_eq!(ims(&["compare", "only-one"]).status.code(), Some(1));
    assert_eq!(ims(&["--version"]).status.code(), Some(0));
}

#[test]
fn a_bare_option_means_on_as_in_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.raw");
    mixed_raw(&src, 1_000_000, 9);
    let out = ims(&[
        "convert",
        "-O",
        "vhd",
        "-o",
        "subformat=fixed,force_size",
        s(&src),
        "-",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // force_size keeps the size (rounded to a sector): data then the 512-byte footer.
    assert_eq!(out.stdout.len(), 1_000_448 + 512);
}

/// The names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_convert_leaves_no_output_and_keeps_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src, 8 << 20, 11);
    let cut = dir.path().join("cut.qcow2");
    let out = ims(&["convert", "-O", "qcow2", s(&src), s(&cut)]);
    assert!(out.status.success());
    // The second half of the disk's clusters now lie past the end of the file: the image
    // opens, and its conversion fails once the output is made.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cut)
        .unwrap();
    let be64 = |at: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, at).unwrap();
        u64::from_be_bytes(b)
    };
    let mask = 0x00ff_ffff_ffff_fe00;
    let l2 = be64(be64(40) & mask) & mask;
    for i in 64..128u64 {
        if be64(l2 + i * 8) != 0 {
            let past_end = (1u64 << 63) | ((1 << 40) + (i << 16));
            f.write_all_at(&past_end.to_be_bytes(), l2 + i * 8).unwrap();
        }
    }
    drop(f);
    assert!(ims(&["info", s(&cut)]).status.success());
    let before = names(dir.path());

    for (dst, opts) in [
        ("dst.raw", "raw"),
        ("dst.qcow2", "qcow2"),
        ("dst.vmdk", "vmdk"),
    ] {
        let mut args = vec!["convert", "-O", opts];
        if opts == "vmdk" {
            args.extend(["-o", "subformat=monolithicFlat"]);
        }
        let dst = dir.path().join(dst);
        args.extend([s(&cut), s(&dst)]);
        let out = ims(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cut.qcow2"), "{err}");
        assert_eq!(names(dir.path()), before, "{args:?} left a file");

        // A file the conversion would have replaced is left as it was.
        std::fs::write(&dst, b"keep me").unwrap();
        assert_eq!(ims(&args).status.code(), Some(1));
        assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");
        std::fs::remove_file(&dst).unwrap();
    }
}

#[test]
fn an_interrupted_convert_removes_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src, 64 << 20, 12);
    let dst = dir.path().join("dst.qcow2");
    let child = Command::new(env!("CARGO_BIN_EXE_ims"))
        .args(["convert", "-c", "-O", "qcow2", s(&src), s(&dst)])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the output is being written.
    let t = Instant::now();
    while names(dir.path()).len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(20), "no output appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    assert_eq!(names(dir.path()), ["src.raw"]);
}

/// A reader that stops early (`ims map ... | head -c 1`) ends ims as it ends qemu-img, by
/// SIGPIPE, without a panic message about a broken pipe.
#[test]
fn a_closed_pipe_ends_ims_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("striped.raw");
    // 4096 data runs: a map far longer than a pipe's buffer.
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(32 << 20).unwrap();
    for i in 0..4096u64 {
        f.write_all_at(&[1u8; 512], i * 8192).unwrap();
    }
    let script = format!(
        "'{}' map --output json '{}' | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}} >&2",
        env!("CARGO_BIN_EXE_ims"),
        img.display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim(), "141", "killed by SIGPIPE: {err}");
}
