//! Hostile VHDX images: an image written by ims, then damaged in one structure at a time. Each
//! must fail with one exact error kind and a message naming what is wrong, within 2 seconds,
//! without a panic; the controls must read.

mod common;

use std::path::Path;
use std::time::Duration;

use byteorder::{ByteOrder, LittleEndian};
use common::mixed_raw;
use ims::{CreateOptions, Format, OpenOptions, Target};

const MIB: usize = 1 << 20;
/// The base disk: 4 MiB in 1 MiB blocks, every block written.
const DISK: u64 = 4 << 20;
/// Where ims's writer puts things with `block_size=1M`: the default 1 MiB log at 1 MiB, then:
const BAT: usize = 2 * MIB;
const METADATA: usize = 3 * MIB;
const BLOCKS: usize = 4 * MIB;
const HEADERS: [usize; 2] = [64 << 10, 128 << 10];
const REGIONS: [usize; 2] = [192 << 10, 256 << 10];

fn base(dir: &Path) -> Vec<u8> {
    let raw = dir.join("base.raw");
    mixed_raw(&raw, DISK, 9);
    // mixed_raw leaves some blocks zero: fill each block so that every one is stored.
    let mut bytes = std::fs::read(&raw).unwrap();
    for b in 0..4 {
        bytes[b * MIB + 100] = 1 + b as u8;
    }
    std::fs::write(&raw, &bytes).unwrap();
    let out = dir.join("base.vhdx");
    let image = ims::open(&raw, &OpenOptions::default()).unwrap();
    let pairs = [("block_size".to_string(), "1M".to_string())];
    let options = CreateOptions::from_pairs(Format::Vhdx, &pairs, false).unwrap();
    let w = ims::create(Format::Vhdx, Target::File(out.clone()), DISK, &options).unwrap();
    ims::convert(image, w, &Default::default(), &mut |_| {}).unwrap();
    std::fs::read(&out).unwrap()
}

/// Recomputes the CRC-32C of the structure of `len` bytes at `at` (checksum at `at + 4`).
fn reseal(b: &mut [u8], at: usize, len: usize) {
    b[at + 4..at + 8].fill(0);
    let sum = crc32c::crc32c(&b[at..at + len]);
    LittleEndian::write_u32(&mut b[at + 4..], sum);
}

fn reseal_headers(b: &mut [u8]) {
    for at in HEADERS {
        reseal(b, at, 4096);
    }
}

fn reseal_regions(b: &mut [u8]) {
    for at in REGIONS {
        reseal(b, at, 64 << 10);
    }
}

fn bat(b: &mut [u8], index: usize, raw: u64) {
    LittleEndian::write_u64(&mut b[BAT + index * 8..], raw);
}

fn present(mb: usize) -> u64 {
    ((mb as u64) << 20) | 6
}

/// Opens `bytes` as a file and reads all of it: info, map, every byte.
fn open_and_read(dir: &Path, bytes: &[u8]) -> ims::Result<()> {
    let img = dir.join("img.vhdx");
    std::fs::write(&img, bytes).unwrap();
    let image = ims::open(&img, &OpenOptions::default())?;
    let _ = image.info();
    let r = image.reader().expect("vhdx reads at random");
    let size = r.virtual_size();
    r.map(0, size)?;
    let mut buf = vec![0u8; MIB];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(MIB as u64);
        r.read_at(&mut buf[..n as usize], pos)?;
        pos += n;
    }
    Ok(())
}

type Edit = Box<dyn Fn(&mut Vec<u8>)>;

/// Makes the base a differencing disk: HasParent, a parent locator item naming parent.vhdx
/// with `linkage`, and room in the BAT for the chunk's sector bitmap entry.
fn differencing(b: &mut [u8], linkage: &str) {
    let item = ims::formats::vhdx::locator::ParentLocator::to_bytes(&[
        ("parent_linkage", linkage),
        ("relative_path", "parent.vhdx"),
    ]);
    b[METADATA + 0x10004] = 2;
    let at = METADATA + 0x20000;
    b[at..at + item.len()].copy_from_slice(&item);
    // The table's sixth entry: the Parent Locator item, required.
    let e = METADATA + 32 + 5 * 32;
    b[e..e + 16].copy_from_slice(&[
        0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab,
        0x0c,
    ]);
    LittleEndian::write_u32(&mut b[e + 16..], 0x20000);
    LittleEndian::write_u32(&mut b[e + 20..], item.len() as u32);
    LittleEndian::write_u32(&mut b[e + 24..], 4);
    LittleEndian::write_u16(&mut b[METADATA + 10..], 6);
}

fn cases() -> Vec<(&'static str, &'static str, &'static str, Edit)> {
    vec![
        ("control: the base image", "ok", "", Box::new(|_| {})),
        (
            "control: the first header damaged, the second current",
            "ok",
            "",
            Box::new(|b| b[HEADERS[0] + 200] ^= 1),
        ),
        (
            "control: the first region table damaged",
            "ok",
            "",
            Box::new(|b| b[REGIONS[0] + 2000] ^= 1),
        ),
        (
            "control: 4096-byte logical sectors (a chunk ratio of 32768)",
            "ok",
            "",
            Box::new(|b| LittleEndian::write_u32(&mut b[METADATA + 0x10020..], 4096)),
        ),
        (
            "both headers damaged",
            "malformed",
            "checksum",
            Box::new(|b| {
                b[HEADERS[0] + 200] ^= 1;
                b[HEADERS[1] + 200] ^= 1;
            }),
        ),
        (
            "both headers valid with one sequence number, telling different logs",
            "malformed",
            "ambiguous",
            Box::new(|b| {
                LittleEndian::write_u64(&mut b[HEADERS[0] + 8..], 2);
                LittleEndian::write_u32(&mut b[HEADERS[0] + 68..], 2 << 20);
                reseal_headers(b);
            }),
        ),
        (
            "region tables both valid but different",
            "malformed",
            "ambiguous",
            Box::new(|b| {
                // The second copy says the BAT region is not required.
                b[REGIONS[1] + 16 + 28] = 0;
                reseal_regions(b);
            }),
        ),
        (
            "both region tables damaged",
            "malformed",
            "vhdx region table",
            Box::new(|b| {
                b[REGIONS[0] + 2000] ^= 1;
                b[REGIONS[1] + 2000] ^= 1;
            }),
        ),
        (
            "BAT and metadata regions overlap",
            "malformed",
            "overlaps region",
            Box::new(|b| {
                for at in REGIONS {
                    // The metadata region's offset: the BAT's.
                    LittleEndian::write_u64(&mut b[at + 16 + 32 + 16..], BAT as u64);
                }
                reseal_regions(b);
            }),
        ),
        (
            "the log overlaps the BAT region",
            "malformed",
            "the log at 0x100000 overlaps region",
            Box::new(|b| {
                for at in HEADERS {
                    LittleEndian::write_u32(&mut b[at + 68..], 2 << 20);
                }
                reseal_headers(b);
            }),
        ),
        (
            "a region past the end of the file",
            "truncated",
            "vhdx region",
            Box::new(|b| {
                for at in REGIONS {
                    LittleEndian::write_u64(&mut b[at + 16 + 32 + 16..], 64 << 20);
                }
                reseal_regions(b);
            }),
        ),
        (
            "a required region ims does not know",
            "unsupported",
            "required",
            Box::new(|b| {
                for at in REGIONS {
                    LittleEndian::write_u32(&mut b[at + 8..], 3);
                    let e = at + 16 + 64;
                    b[e..e + 16].copy_from_slice(&[0xab; 16]);
                    LittleEndian::write_u64(&mut b[e + 16..], 8 << 20);
                    LittleEndian::write_u32(&mut b[e + 24..], 1 << 20);
                    LittleEndian::write_u32(&mut b[e + 28..], 1);
                }
                reseal_regions(b);
            }),
        ),
        (
            "a block on the header section",
            "malformed",
            "overlaps the header section",
            Box::new(|b| bat(b, 1, present(0))),
        ),
        (
            "a block on the log",
            "malformed",
            "overlaps the log",
            Box::new(|b| bat(b, 1, present(1))),
        ),
        (
            "a block on the BAT",
            "malformed",
            "overlaps the BAT",
            Box::new(|b| bat(b, 1, present(2))),
        ),
        (
            "a block on the metadata region",
            "malformed",
            "overlaps the metadata region",
            Box::new(|b| bat(b, 1, present(3))),
        ),
        (
            "two blocks sharing their data",
            "malformed",
            "two guest ranges",
            Box::new(|b| bat(b, 2, present(4))),
        ),
        (
            "a block past the end of the file",
            "malformed",
            "past the end of the file",
            Box::new(|b| bat(b, 3, present(100))),
        ),
        (
            "a block whose offset wraps",
            "malformed",
            "past the end of the file",
            Box::new(|b| bat(b, 3, !0xf_fff8 & !1)),
        ),
        (
            "the file cut inside its last block",
            "malformed",
            "past the end of the file",
            Box::new(|b| b.truncate(BLOCKS + 3 * MIB + 4096)),
        ),
        (
            "reserved bits in a BAT entry",
            "malformed",
            "reserved bits",
            Box::new(|b| bat(b, 0, present(4) | 0x100)),
        ),
        (
            "a reserved payload state",
            "malformed",
            "state 4",
            Box::new(|b| bat(b, 0, (4 << 20) | 4)),
        ),
        (
            "a partially present block in a dynamic disk",
            "malformed",
            "state 7, invalid in a dynamic disk",
            Box::new(|b| bat(b, 0, (4 << 20) | 7)),
        ),
        (
            "a sector bitmap block in a dynamic disk",
            "malformed",
            "sector bitmap entry",
            Box::new(|b| {
                // 4 MiB of 1 MiB blocks: one chunk of 4096 blocks, so 4 entries; make the
                // disk one block past a chunk to get a sector bitmap entry at index 4096.
                LittleEndian::write_u64(&mut b[METADATA + 0x10008..], 4097 << 20);
                bat(b, 4096, present(8) & !7 | 6);
            }),
        ),
        (
            "a disk whose BAT needs more than its region",
            "malformed",
            "cannot hold",
            Box::new(|b| LittleEndian::write_u64(&mut b[METADATA + 0x10008..], 1 << 40)),
        ),
        (
            "a BAT over the cap (64 TiB in 1 MiB blocks)",
            "limit-exceeded",
            "vhdx BAT",
            Box::new(|b| LittleEndian::write_u64(&mut b[METADATA + 0x10008..], 64 << 40)),
        ),
        (
            "a disk over 64 TiB",
            "malformed",
            "64 TiB",
            Box::new(|b| LittleEndian::write_u64(&mut b[METADATA + 0x10008..], (64 << 40) + 512)),
        ),
        (
            "a block size that is no power of two",
            "malformed",
            "block size",
            Box::new(|b| LittleEndian::write_u32(&mut b[METADATA + 0x10000..], 3 << 20)),
        ),
        (
            "a metadata item outside its region",
            "malformed",
            "not inside the region",
            Box::new(|b| LittleEndian::write_u32(&mut b[METADATA + 48..], 0x000f_fffc)),
        ),
        (
            "a log offset that is not on 1 MiB",
            "malformed",
            "log offset",
            Box::new(|b| {
                for at in HEADERS {
                    LittleEndian::write_u64(&mut b[at + 72..], 3 << 19);
                }
                reseal_headers(b);
            }),
        ),
        (
            "a log GUID set over a log without entries",
            "malformed",
            "no valid sequence",
            Box::new(|b| {
                for at in HEADERS {
                    b[at + 48] = 1;
                }
                reseal_headers(b);
            }),
        ),
        (
            "a log GUID set over a log that runs past the file",
            "truncated",
            "vhdx log",
            Box::new(|b| {
                for at in HEADERS {
                    b[at + 48] = 1;
                    LittleEndian::write_u32(&mut b[at + 68..], 64 << 20);
                }
                reseal_headers(b);
            }),
        ),
        (
            "a log of 32 MiB to replay, over the cap",
            "limit-exceeded",
            "replays up to",
            Box::new(|b| {
                b.resize(40 * MIB, 0);
                for at in HEADERS {
                    b[at + 48] = 1;
                    LittleEndian::write_u32(&mut b[at + 68..], 32 << 20);
                    LittleEndian::write_u64(&mut b[at + 72..], 8 << 20);
                }
                reseal_headers(b);
            }),
        ),
        (
            "a differencing disk, its parent refused",
            "external-reference",
            "parent.vhdx",
            Box::new(|b| differencing(b, "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}")),
        ),
        (
            "a differencing disk whose locator has no parent_linkage",
            "malformed",
            "no parent_linkage",
            Box::new(|b| {
                differencing(b, "x");
                // Rename the key "parent_linkage" (after the header and two entries) to
                // "parent_linkagf".
                let at = METADATA + 0x20000 + 20 + 2 * 12 + 13 * 2;
                b[at] = b'f';
            }),
        ),
    ]
}

#[test]
fn hostile_vhdx_images_fail_with_their_exact_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = base(dir.path());
    let mut failures = Vec::new();
    for (name, expect, needle, edit) in cases() {
        let mut b = base.clone();
        edit(&mut b);
        let case_dir = dir.path().join(format!("c{}", failures.len()));
        std::fs::create_dir_all(&case_dir).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| open_and_read(&case_dir, &b));
            let _ = tx.send(r.map(|r| r.map_err(|e| (e.kind(), e.to_string()))));
        });
        let got = match rx.recv_timeout(Duration::from_secs(2)) {
            Err(_) => ("hang".to_string(), String::new()),
            Ok(Err(_)) => ("panic".to_string(), String::new()),
            Ok(Ok(Ok(()))) => ("ok".to_string(), String::new()),
            Ok(Ok(Err((kind, text)))) => (kind.to_string(), text),
        };
        if got.0 != expect || !got.1.contains(needle) {
            failures.push(format!(
                "{name}: expected {expect} ({needle}), got {} ({})",
                got.0, got.1
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
