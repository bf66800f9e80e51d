//! Hostile VDI, QED and QCOW (version 1) images: each case is a real image (written by ims for
//! VDI; qemu-img's committed fixtures for QED and QCOW) with one structure damaged the way the
//! classes of issue 20 describe — entries out of the file, entries at the image's own metadata,
//! two guest ranges sharing stored data, impossible sizes and flags, decompression bombs,
//! reference loops — and must fail with one exact error kind, within 2 seconds and 256 MiB,
//! without a panic, through the library and through the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use byteorder::{BigEndian, ByteOrder, LittleEndian};
use common::{mixed_raw, s};
use ims::{CreateOptions, Format, OpenOptions, References, Target};

const MIB: u64 = 1 << 20;
/// Per case, through the library and through each CLI command.
const TIME: Duration = Duration::from_secs(2);
/// Peak memory of any `ims` process the CLI half starts.
const MAX_RSS_KIB: i64 = 256 * 1024;

struct Case {
    name: String,
    expect: &'static str,
    bytes: Vec<u8>,
    /// Follow references inside the case's directory.
    allow: bool,
    /// Other files placed beside the image.
    extra: Vec<(&'static str, Vec<u8>)>,
    /// The damage is in data that only a read decodes: `info` and `map` succeed.
    at_read: bool,
}

fn case(name: &str, expect: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        name: name.into(),
        expect,
        bytes,
        allow: false,
        extra: Vec::new(),
        at_read: false,
    }
}

impl Case {
    fn allow(mut self) -> Self {
        self.allow = true;
        self
    }
    fn at_read(mut self) -> Self {
        self.at_read = true;
        self
    }
    fn with(mut self, name: &'static str, bytes: Vec<u8>) -> Self {
        self.extra.push((name, bytes));
        self
    }
}

/// The gunzipped bytes of `testdata/formats/NAME.gz`.
fn fixture(name: &str) -> Vec<u8> {
    common::gunzipped("formats", name)
}

fn edit(base: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = base.to_vec();
    f(&mut b);
    b
}

/// A dynamic VDI of 4 MiB written by ims: blocks 0, 2 and 3 hold data, block 1 is zeros.
fn vdi_base(dir: &Path) -> Vec<u8> {
    let raw = dir.join("vdi-base.raw");
    mixed_raw(&raw, 4 * MIB, 9);
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; MIB as usize], MIB).unwrap();
    let out = dir.join("base.vdi");
    let image = ims::open(&raw, &OpenOptions::default()).unwrap();
    let options = CreateOptions::from_pairs(Format::Vdi, &[], false).unwrap();
    let w = ims::create(Format::Vdi, Target::File(out.clone()), 4 * MIB, &options).unwrap();
    ims::convert(image, w, &Default::default(), &mut |_| {}).unwrap();
    std::fs::read(out).unwrap()
}

fn vdi_cases(dir: &Path) -> Vec<Case> {
    let b = vdi_base(dir);
    assert_eq!(
        LittleEndian::read_u32(&b[0x184..]),
        3,
        "the base stores three blocks"
    );
    let map = 0x200;
    let entry = |i: usize| map + 4 * i;
    let le32 = |b: &mut Vec<u8>, at: usize, v: u32| LittleEndian::write_u32(&mut b[at..], v);
    vec![
        case("vdi: the base image", "ok", b.clone()),
        case(
            "vdi: version 1.0",
            "unsupported",
            edit(&b, |b| le32(b, 0x44, 0x0001_0000)),
        ),
        case(
            "vdi: undo image",
            "unsupported",
            edit(&b, |b| le32(b, 0x4c, 3)),
        ),
        case(
            "vdi: unknown image type",
            "malformed",
            edit(&b, |b| le32(b, 0x4c, 7)),
        ),
        case(
            "vdi: block_extra",
            "unsupported",
            edit(&b, |b| le32(b, 0x17c, 512)),
        ),
        case(
            "vdi: sector size 4096",
            "unsupported",
            edit(&b, |b| le32(b, 0x168, 4096)),
        ),
        case(
            "vdi: block size not a power of two",
            "malformed",
            edit(&b, |b| le32(b, 0x178, 3 << 19)),
        ),
        case(
            "vdi: header_size past the sector",
            "malformed",
            edit(&b, |b| le32(b, 0x48, 0x1000)),
        ),
        // Amplification: two disk blocks read from one stored block.
        case(
            "vdi: two blocks share one stored block",
            "malformed",
            edit(&b, |b| {
                let first = LittleEndian::read_u32(&b[entry(0)..]);
                le32(b, entry(2), first);
                le32(b, 0x184, 2);
            }),
        ),
        case(
            "vdi: every block is one stored block",
            "malformed",
            edit(&b, |b| {
                for i in 0..4 {
                    le32(b, entry(i), 0);
                }
                le32(b, 0x184, 4);
            }),
        ),
        case(
            "vdi: entry past the image's blocks",
            "malformed",
            edit(&b, |b| le32(b, entry(0), 4)),
        ),
        case(
            "vdi: entry past the end of the file",
            "truncated",
            edit(&b, |b| {
                let n = b.len() - 0x400 - (MIB as usize) / 2;
                b.truncate(0x400 + n);
            }),
        ),
        case(
            "vdi: blocks_allocated disagrees",
            "malformed",
            edit(&b, |b| le32(b, 0x184, 2)),
        ),
        // Metadata overlap: the data area over the block map or the header.
        case(
            "vdi: data area inside the block map",
            "malformed",
            edit(&b, |b| le32(b, 0x158, 0x200)),
        ),
        case(
            "vdi: block map inside the header",
            "malformed",
            edit(&b, |b| le32(b, 0x154, 0)),
        ),
        case(
            "vdi: block map not sector-aligned",
            "malformed",
            edit(&b, |b| le32(b, 0x154, 0x208)),
        ),
        // Sizes that do not add up.
        case(
            "vdi: disk larger than the block map",
            "malformed",
            edit(&b, |b| {
                LittleEndian::write_u64(&mut b[0x170..], 4 * MIB + 512);
            }),
        ),
        case(
            "vdi: block map past the cap",
            "limit-exceeded",
            edit(&b, |b| {
                let blocks = (16u32 << 20) + 1;
                le32(b, 0x180, blocks);
                le32(b, 0x158, (0x200 + 4 * blocks).next_multiple_of(512));
            }),
        ),
        case(
            "vdi: block map past the end of the file",
            "truncated",
            edit(&b, |b| {
                le32(b, 0x180, 1 << 20);
                le32(b, 0x158, 0x200 + (4 << 20));
            }),
        ),
        case("vdi: truncated header", "truncated", b[..300].to_vec()),
        // A differencing image names its parent by UUID only: a reference, never followed.
        case(
            "vdi: differencing",
            "external-reference",
            edit(&b, |b| {
                le32(b, 0x4c, 4);
                b[0x1a8..0x1b8].copy_from_slice(&[7; 16]);
            }),
        ),
        case(
            "vdi: differencing, references allowed",
            "external-reference",
            edit(&b, |b| {
                le32(b, 0x4c, 4);
                b[0x1a8..0x1b8].copy_from_slice(&[7; 16]);
            }),
        )
        .allow(),
    ]
}

fn qed_cases() -> Vec<Case> {
    let b = fixture("plain.qed");
    let le64 = |b: &mut Vec<u8>, at: usize, v: u64| LittleEndian::write_u64(&mut b[at..], v);
    let l1 = 0x10000usize;
    let l2 = LittleEndian::read_u64(&b[l1..]) as usize;
    let first = LittleEndian::read_u64(&b[l2..]);
    assert!(first > 0 && l2 > 0);
    let with_backing = |b: &[u8], name: &str| {
        edit(b, |b| {
            le64(b, 16, 1);
            b[0x40..0x40 + name.len()].copy_from_slice(name.as_bytes());
            LittleEndian::write_u32(&mut b[56..], 0x40);
            LittleEndian::write_u32(&mut b[60..], name.len() as u32);
        })
    };
    vec![
        case("qed: the fixture", "ok", b.clone()),
        case(
            "qed: unknown feature",
            "unsupported",
            edit(&b, |b| le64(b, 16, 0x10)),
        ),
        case(
            "qed: cluster size not a power of two",
            "malformed",
            edit(&b, |b| LittleEndian::write_u32(&mut b[4..], 65536 + 4096)),
        ),
        case(
            "qed: tables past the cap",
            "limit-exceeded",
            edit(&b, |b| {
                LittleEndian::write_u32(&mut b[4..], 64 << 20);
                LittleEndian::write_u32(&mut b[8..], 16);
            }),
        ),
        case(
            "qed: image size not whole sectors",
            "malformed",
            edit(&b, |b| le64(b, 48, (3 << 20) + 100)),
        ),
        case(
            "qed: image size past what the tables address",
            "malformed",
            edit(&b, |b| le64(b, 48, 1 << 62)),
        ),
        case(
            "qed: L1 table in the header",
            "malformed",
            edit(&b, |b| le64(b, 40, 0)),
        ),
        case(
            "qed: L1 table past the end",
            "truncated",
            edit(&b, |b| le64(b, 40, 1 << 30)),
        ),
        // Metadata overlap.
        case(
            "qed: L1 entry at the L1 table",
            "malformed",
            edit(&b, |b| le64(b, l1, l1 as u64)),
        ),
        case(
            "qed: two L1 entries share an L2 table",
            "malformed",
            edit(&b, |b| le64(b, l1 + 8, l2 as u64)),
        ),
        case(
            "qed: L2 entry at the L2 table",
            "malformed",
            edit(&b, |b| le64(b, l2 + 8, l2 as u64)),
        ),
        case(
            "qed: L2 entry at the L1 table",
            "malformed",
            edit(&b, |b| le64(b, l2 + 8, l1 as u64)),
        ),
        case(
            "qed: L2 entry in the header",
            "malformed",
            edit(&b, |b| le64(b, l2 + 8, 4096)),
        ),
        // Amplification.
        case(
            "qed: two guest clusters share a host cluster",
            "malformed",
            edit(&b, |b| le64(b, l2 + 8, first)),
        ),
        case(
            "qed: a whole L2 table on one host cluster",
            "malformed",
            edit(&b, |b| {
                for j in 0..32768 {
                    le64(b, l2 + 8 * j, first);
                }
            }),
        ),
        // Out of the file, misaligned.
        case(
            "qed: L2 entry past the end",
            "truncated",
            edit(&b, |b| le64(b, l2 + 8, 1 << 40)),
        ),
        case(
            "qed: L2 entry not aligned",
            "malformed",
            edit(&b, |b| le64(b, l2 + 8, first + 512)),
        ),
        case(
            "qed: truncated L2 table",
            "truncated",
            b[..l2 + 4096].to_vec(),
        ),
        // The need-check flag: opened when the tables check clean, refused when not.
        case("qed: need-check, clean", "ok", edit(&b, |b| le64(b, 16, 2))),
        case(
            "qed: need-check, shared cluster",
            "malformed",
            edit(&b, |b| {
                le64(b, 16, 2);
                le64(b, l2 + 8, first);
            }),
        ),
        // References.
        case(
            "qed: backing file",
            "external-reference",
            with_backing(&b, "base.qed"),
        ),
        case(
            "qed: backing file name outside the header",
            "malformed",
            edit(&with_backing(&b, "x"), |b| {
                LittleEndian::write_u32(&mut b[56..], 0x10000);
            }),
        ),
        case(
            "qed: backing file is itself",
            "external-reference",
            with_backing(&b, "img"),
        )
        .allow(),
        case(
            "qed: backing file escapes",
            "external-reference",
            with_backing(&b, "../outside.raw"),
        )
        .allow(),
        case(
            "qed: backing loop a -> b -> a",
            "limit-exceeded",
            with_backing(&b, "b.qed"),
        )
        .allow()
        .with("b.qed", with_backing(&b, "img")),
    ]
}

fn qcow_cases() -> Vec<Case> {
    let b = fixture("plain.qcow");
    let c = fixture("compressed.qcow");
    let be64 = |b: &mut Vec<u8>, at: usize, v: u64| BigEndian::write_u64(&mut b[at..], v);
    let l1 = BigEndian::read_u64(&b[40..]) as usize;
    let l2 = BigEndian::read_u64(&b[l1..]) as usize;
    let first = BigEndian::read_u64(&b[l2..]);
    // The compressed fixture's first L2 entry is compressed (text at the start of the disk).
    let cl1 = BigEndian::read_u64(&c[40..]) as usize;
    let cl2 = BigEndian::read_u64(&c[cl1..]) as usize;
    let cfirst = BigEndian::read_u64(&c[cl2..]);
    assert!(
        cfirst >> 63 == 1,
        "the compressed fixture starts with a compressed cluster"
    );
    let compressed = |offset: u64, size: u64| (1 << 63) | (size << (63 - 12)) | offset;
    let with_backing = |b: &[u8], name: &str| {
        // The name goes at the end of the file, where nothing else is.
        edit(b, |b| {
            let at = b.len() as u64;
            b.extend_from_slice(name.as_bytes());
            be64(b, 8, at);
            BigEndian::write_u32(&mut b[16..], name.len() as u32);
        })
    };
    // Deflate data of two clusters of zeros: more than a cluster once inflated.
    let bomb = {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut e, &vec![0u8; 1 << 20]).unwrap();
        e.finish().unwrap()
    };
    vec![
        case("qcow: the fixture", "ok", b.clone()),
        case("qcow: the compressed fixture", "ok", c.clone()),
        case("qcow: AES", "unsupported", edit(&b, |b| b[39] = 1)),
        case(
            "qcow: unknown crypt method",
            "malformed",
            edit(&b, |b| b[39] = 9),
        ),
        case(
            "qcow: cluster_bits 20",
            "malformed",
            edit(&b, |b| b[32] = 20),
        ),
        case("qcow: l2_bits 3", "malformed", edit(&b, |b| b[33] = 3)),
        case(
            "qcow: L1 past the cap",
            "limit-exceeded",
            edit(&b, |b| be64(b, 24, 1 << 62)),
        ),
        case(
            "qcow: L1 past the end",
            "truncated",
            edit(&b, |b| be64(b, 40, 1 << 40)),
        ),
        case(
            "qcow: truncated L2 table",
            "truncated",
            b[..l2 + 100].to_vec(),
        ),
        // Metadata overlap.
        case(
            "qcow: L2 table over the header",
            "malformed",
            edit(&b, |b| be64(b, l1, 8)),
        ),
        case(
            "qcow: L2 table over the L1 table",
            "malformed",
            edit(&b, |b| be64(b, l1, l1 as u64)),
        ),
        case(
            "qcow: two L1 entries share an L2 table",
            "malformed",
            edit(&b, |b| be64(b, l1 + 8, l2 as u64)),
        ),
        case(
            "qcow: data cluster over the L2 table",
            "malformed",
            edit(&b, |b| be64(b, l2 + 8, (l2 as u64) / 4096 * 4096)),
        ),
        case(
            "qcow: compressed cluster over the L1 table",
            "malformed",
            edit(&b, |b| be64(b, l2 + 8, compressed(l1 as u64, 100))),
        ),
        // Amplification.
        case(
            "qcow: two guest clusters share a host cluster",
            "malformed",
            edit(&b, |b| be64(b, l2 + 8, first)),
        ),
        case(
            "qcow: a whole L2 table on one host cluster",
            "malformed",
            edit(&b, |b| {
                for j in 0..512 {
                    be64(b, l2 + 8 * j, first);
                }
            }),
        ),
        case(
            "qcow: two guest clusters share compressed data",
            "malformed",
            edit(&c, |c| be64(c, cl2 + 8, cfirst)),
        ),
        case(
            "qcow: compressed data inside a data cluster",
            "malformed",
            edit(&b, |b| be64(b, l2 + 8, compressed(first + 100, 100))),
        ),
        // Out of the file, misaligned, empty.
        case(
            "qcow: data cluster past the end",
            "truncated",
            edit(&b, |b| be64(b, l2 + 8, 1 << 40)),
        ),
        case(
            "qcow: data cluster not aligned",
            "malformed",
            edit(&b, |b| be64(b, l2 + 8, first + 512)),
        ),
        case(
            "qcow: compressed past the end",
            "malformed",
            edit(&b, |b| be64(b, l2 + 8, compressed(1 << 40, 100))),
        ),
        case(
            "qcow: compressed of no bytes",
            "malformed",
            edit(&b, |b| be64(b, l2 + 8, compressed(1 << 20, 0))),
        ),
        // Decompression: a bomb and garbage, refused when read.
        case(
            "qcow: compressed bomb",
            "malformed",
            edit(&b, |b| {
                let at = b.len() as u64;
                b.extend_from_slice(&bomb);
                be64(b, l2 + 8, compressed(at, bomb.len() as u64));
            }),
        )
        .at_read(),
        case(
            "qcow: compressed garbage",
            "malformed",
            edit(&b, |b| {
                let at = b.len() as u64;
                b.extend_from_slice(&[0xff; 300]);
                be64(b, l2 + 8, compressed(at, 300));
            }),
        )
        .at_read(),
        // References.
        case(
            "qcow: backing file",
            "external-reference",
            with_backing(&b, "base.qcow"),
        ),
        case(
            "qcow: backing file name too long",
            "malformed",
            edit(&with_backing(&b, "x"), |b| {
                BigEndian::write_u32(&mut b[16..], 5000);
            }),
        ),
        case(
            "qcow: backing file name past the end",
            "truncated",
            edit(&with_backing(&b, "x"), |b| {
                BigEndian::write_u32(&mut b[16..], 1000);
            }),
        ),
        case(
            "qcow: backing file is itself",
            "external-reference",
            with_backing(&b, "img"),
        )
        .allow(),
        case(
            "qcow: backing file is a device",
            "external-reference",
            with_backing(&b, "/dev/zero"),
        )
        .allow(),
        case(
            "qcow: backing loop a -> b -> a",
            "limit-exceeded",
            with_backing(&b, "b.qcow"),
        )
        .allow()
        .with("b.qcow", with_backing(&b, "img")),
    ]
}

fn all_cases(dir: &Path) -> Vec<Case> {
    let mut cases = vdi_cases(dir);
    cases.extend(qed_cases());
    cases.extend(qcow_cases());
    cases
}

/// Opens `img` and reads all of it (info, map, every byte).
fn open_and_read(img: &Path, allow: Option<&Path>) -> ims::Result<()> {
    let options = OpenOptions {
        format: None,
        references: allow.map_or(References::Deny, |d| References::Confined(d.to_path_buf())),
    };
    let image = ims::open(img, &options)?;
    let _ = image.info();
    let Some(r) = image.reader() else {
        return Ok(());
    };
    let size = r.virtual_size();
    r.map(0, size)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(MIB);
        r.read_at(&mut buf[..n as usize], pos)?;
        pos += n;
    }
    Ok(())
}

/// Places each case in its own directory; returns (case, image path, directory).
fn place(root: &Path, cases: Vec<Case>) -> Vec<(Case, PathBuf, PathBuf)> {
    cases
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let dir = root.join(format!("c{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let img = dir.join("img");
            std::fs::write(&img, &c.bytes).unwrap();
            for (name, bytes) in &c.extra {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
            (c, img, dir)
        })
        .collect()
}

#[test]
fn hostile_images_fail_with_their_exact_kind_through_the_library() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("outside.raw"), vec![b'S'; 4096]).unwrap();
    let mut failures = Vec::new();
    for (c, img, dir) in place(root.path(), all_cases(root.path())) {
        let allow = c.allow.then_some(dir.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let start = Instant::now();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| open_and_read(&img, allow.as_deref()));
            let _ = tx.send(r);
        });
        let got = match rx.recv_timeout(TIME * 5) {
            Err(_) => "hang".to_string(),
            Ok(Err(_)) => "panic".to_string(),
            Ok(Ok(Ok(()))) => "ok".to_string(),
            Ok(Ok(Err(e))) => {
                let text = e.to_string();
                // Every refusal names the structure and where it is (or the reference).
                if !(text.contains("offset 0x")
                    || text.contains("reference")
                    || e.kind() == "unsupported")
                {
                    failures.push(format!("{}: the error names no offset: {text}", c.name));
                }
                format!("{} ({text})", e.kind())
            }
        };
        if got.split(' ').next() != Some(c.expect) {
            failures.push(format!("{}: expected {}, got {got}", c.name, c.expect));
        }
        if start.elapsed() > TIME {
            failures.push(format!("{}: took {:?}", c.name, start.elapsed()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Starts each `ims` command from a small Python process and reports its exit code, stderr,
/// time and peak memory (`wait4`'s `ru_maxrss`). Linux carries a child's high-water mark over
/// from its parent at fork, so a child of this large test process would report the test's size;
/// a child of the small Python process reports its own. A command still running after five
/// times [`TIME`] is killed.
const SPAWNER: &str = r#"
import json, os, subprocess, sys, time
ims, limit = sys.argv[1], float(sys.argv[2])
for line in sys.stdin:
    start = time.monotonic()
    p = subprocess.Popen([ims] + json.loads(line), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = False
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > limit and not killed:
            p.kill()
            killed = True
        time.sleep(0.002)
    err = p.stderr.read()
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    print(json.dumps({"code": code, "stderr": err.decode("utf-8", "replace"),
                      "took": time.monotonic() - start, "rss": usage.ru_maxrss}), flush=True)
"#;

struct Spawner {
    child: std::process::Child,
    replies: std::io::BufReader<std::process::ChildStdout>,
}

/// What one command did.
struct Ran {
    code: Option<i32>,
    stderr: String,
    took: Duration,
    rss_kib: i64,
}

impl Spawner {
    fn start() -> Spawner {
        use std::process::Stdio;
        let mut child = Command::new("python3")
            .args(["-c", SPAWNER, env!("CARGO_BIN_EXE_ims")])
            .arg((TIME * 5).as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the spawner");
        let replies = std::io::BufReader::new(child.stdout.take().unwrap());
        Spawner { child, replies }
    }

    fn run(&mut self, args: &[&str]) -> Ran {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", serde_json::to_string(args).unwrap()).unwrap();
        let mut line = String::new();
        self.replies.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("a spawner reply");
        Ran {
            code: v["code"].as_i64().map(|c| c as i32),
            stderr: v["stderr"].as_str().unwrap_or_default().to_string(),
            took: Duration::from_secs_f64(v["took"].as_f64().unwrap()),
            rss_kib: v["rss"].as_i64().unwrap(),
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn hostile_images_fail_cleanly_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut peak = (0, String::new());
    let mut spawner = Spawner::start();
    for (c, img, dir) in place(root.path(), all_cases(root.path())) {
        for cmd in ["info", "map", "convert"] {
            let mut args = vec![cmd];
            if cmd == "convert" {
                args.extend(["-O", "raw"]);
            } else {
                args.extend(["--output", "json"]);
            }
            if c.allow {
                args.extend(["--allow-references", s(&dir)]);
            }
            args.push(s(&img));
            let out = dir.join("out.raw");
            if cmd == "convert" {
                args.push(s(&out));
            }
            let r = spawner.run(&args);
            let (took, stderr) = (r.took, r.stderr.as_str());
            let what = format!("{} ({cmd})", c.name);
            // `info` may open an image whose references it only names.
            let ok_expected = c.expect == "ok"
                || (c.at_read && cmd != "convert")
                || (cmd == "info" && c.expect == "external-reference" && !c.allow);
            let want = if ok_expected { 0 } else { 1 };
            if r.code != Some(want) && !(cmd == "info" && c.expect == "external-reference") {
                failures.push(format!(
                    "{what}: exit {:?}, wanted {want}: {stderr}",
                    r.code
                ));
            }
            if stderr.contains("panicked") {
                failures.push(format!("{what}: {stderr}"));
            }
            if took > TIME {
                failures.push(format!("{what}: took {took:?}"));
            }
            if r.rss_kib > peak.0 {
                peak = (r.rss_kib, what.clone());
            }
        }
    }
    eprintln!("largest ims process: {} KiB ({})", peak.0, peak.1);
    assert!(peak.0 < MAX_RSS_KIB, "{} peaked at {} KiB", peak.1, peak.0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
