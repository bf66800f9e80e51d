//! Hostile inputs: malformed images built in code, across every format, each opened and read in
//! full through the library. Every case must fail with one exact error kind (or, where noted,
//! succeed), within 2 seconds, without a panic, and without reading any file but the image:
//! sentinel files beside the image and outside its directory are checked by their access times.
//!
//! Symbolic-link loops inside guests are covered by tests/inspect.rs; ZVHD record-level damage
//! (and ZVHD2 payloads decoding past a block) by tests/zvhd.rs.

mod common;

use ims::References;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use byteorder::{BigEndian, ByteOrder, LittleEndian};
use common::{ims, mixed_raw, s};
use ims::{CreateOptions, Format, OpenOptions, Target};

const MIB: u64 = 1 << 20;
/// The virtual size of every base image.
const DISK: u64 = 2 * MIB;

// ---- Base images, made by ims's own writers from one raw disk. ----

struct Bases {
    qcow2: Vec<u8>,
    qcow2_compressed: Vec<u8>,
    vhd_dynamic: Vec<u8>,
    vhd_fixed: Vec<u8>,
    vmdk_sparse: Vec<u8>,
    vmdk_stream: Vec<u8>,
    zvhd2: Vec<u8>,
    zvhd: Vec<u8>,
}

fn make(dir: &Path, raw: &Path, format: Format, opts: &[(&str, &str)], compress: bool) -> Vec<u8> {
    let out = dir.join(format!(
        "base-{}-{}.img",
        format.name(),
        opts.len() + compress as usize
    ));
    let image = ims::open(raw, &OpenOptions::default()).unwrap();
    let pairs: Vec<(String, String)> = opts
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let options = CreateOptions::from_pairs(format, &pairs, compress).unwrap();
    let w = ims::create(format, Target::File(out.clone()), DISK, &options).unwrap();
    ims::convert(image, w, &Default::default(), &mut |_| {}).unwrap();
    std::fs::read(&out).unwrap()
}

fn bases(dir: &Path) -> Bases {
    let raw = dir.join("base.raw");
    mixed_raw(&raw, DISK, 5);
    Bases {
        qcow2: make(dir, &raw, Format::Qcow2, &[], false),
        qcow2_compressed: make(dir, &raw, Format::Qcow2, &[], true),
        vhd_dynamic: make(dir, &raw, Format::Vhd, &[("subformat", "dynamic")], false),
        vhd_fixed: make(dir, &raw, Format::Vhd, &[("subformat", "fixed")], false),
        vmdk_sparse: make(
            dir,
            &raw,
            Format::Vmdk,
            &[("subformat", "monolithicSparse")],
            false,
        ),
        vmdk_stream: make(
            dir,
            &raw,
            Format::Vmdk,
            &[("subformat", "streamOptimized")],
            false,
        ),
        zvhd2: make(dir, &raw, Format::Zvhd2, &[], false),
        zvhd: make(dir, &raw, Format::Zvhd, &[], false),
    }
}

// ---- Byte editing. ----

fn be32(b: &mut [u8], at: usize, v: u32) {
    BigEndian::write_u32(&mut b[at..at + 4], v);
}
fn be64(b: &mut [u8], at: usize, v: u64) {
    BigEndian::write_u64(&mut b[at..at + 8], v);
}
fn le32(b: &mut [u8], at: usize, v: u32) {
    LittleEndian::write_u32(&mut b[at..at + 4], v);
}
fn le64(b: &mut [u8], at: usize, v: u64) {
    LittleEndian::write_u64(&mut b[at..at + 8], v);
}
fn edit(base: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = base.to_vec();
    f(&mut b);
    b
}
fn cut(base: &[u8], at: usize) -> Vec<u8> {
    base[..at.min(base.len())].to_vec()
}

// qcow2 (big-endian header).
const Q_BACKING_OFFSET: usize = 8;
const Q_BACKING_SIZE: usize = 16;
const Q_CLUSTER_BITS: usize = 20;
const Q_SIZE: usize = 24;
const Q_CRYPT: usize = 32;
const Q_L1_SIZE: usize = 36;
const Q_L1_OFFSET: usize = 40;
const Q_RC_OFFSET: usize = 48;
const Q_RC_CLUSTERS: usize = 56;
const Q_NB_SNAPSHOTS: usize = 60;
const Q_SNAPSHOTS_OFFSET: usize = 64;
const Q_INCOMPATIBLE: usize = 72;
const Q_REFCOUNT_ORDER: usize = 96;
const Q_HEADER_LENGTH: usize = 100;
/// Where the tests put a backing file name: inside cluster 0, after the header extensions.
const Q_NAME_AT: usize = 0xf000;

fn q_l1(b: &[u8]) -> usize {
    BigEndian::read_u64(&b[Q_L1_OFFSET..]) as usize
}
fn q_rc(b: &[u8]) -> usize {
    BigEndian::read_u64(&b[Q_RC_OFFSET..]) as usize
}
/// The L2 table of the first L1 entry.
fn q_l2(b: &[u8]) -> usize {
    (BigEndian::read_u64(&b[q_l1(b)..]) & 0x00ff_ffff_ffff_fe00) as usize
}
/// The file offset of the first L2 entry that maps data, and its value.
fn q_first_entry(b: &[u8]) -> (usize, u64) {
    let l2 = q_l2(b);
    (0..8192)
        .map(|i| l2 + 8 * i)
        .map(|at| (at, BigEndian::read_u64(&b[at..])))
        .find(|(_, v)| *v & 0x3fff_ffff_ffff_fffe != 0)
        .unwrap()
}
/// The file offset of the first compressed L2 entry (64 KiB clusters), and its value.
fn q_first_compressed(b: &[u8]) -> (usize, u64) {
    let l2 = q_l2(b);
    (0..8192)
        .map(|i| l2 + 8 * i)
        .map(|at| (at, BigEndian::read_u64(&b[at..])))
        .find(|(_, v)| v & (1 << 62) != 0)
        .expect("a compressed cluster")
}

/// A qcow2 image whose backing file is `name`.
fn q_backing(base: &[u8], name: &str) -> Vec<u8> {
    edit(base, |b| {
        assert!(b[Q_NAME_AT..Q_NAME_AT + 1024].iter().all(|&x| x == 0));
        b[Q_NAME_AT..Q_NAME_AT + name.len()].copy_from_slice(name.as_bytes());
        be64(b, Q_BACKING_OFFSET, Q_NAME_AT as u64);
        be32(b, Q_BACKING_SIZE, name.len() as u32);
    })
}

/// A qcow2 image with an external data file `name` (the header extension, and the incompatible
/// feature bit that says the data lives there).
fn q_data_file(base: &[u8], name: &str) -> Vec<u8> {
    edit(base, |b| {
        let mut at = BigEndian::read_u32(&b[Q_HEADER_LENGTH..]) as usize;
        // Walk to the end-of-extensions marker.
        loop {
            let kind = BigEndian::read_u32(&b[at..]);
            if kind == 0 {
                break;
            }
            let len = BigEndian::read_u32(&b[at + 4..]) as usize;
            at += 8 + len.div_ceil(8) * 8;
        }
        be32(b, at, 0x4441_5441);
        be32(b, at + 4, name.len() as u32);
        b[at + 8..at + 8 + name.len()].copy_from_slice(name.as_bytes());
        let end = at + 8 + name.len().div_ceil(8) * 8;
        b[end..end + 8].fill(0);
        let features = BigEndian::read_u64(&b[Q_INCOMPATIBLE..]);
        be64(b, Q_INCOMPATIBLE, features | 1 << 2);
    })
}

// VHD (big-endian; footer and dynamic header checksums are one's complement sums).
fn vhd_sum(b: &[u8], skip: usize) -> u32 {
    !b.iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |a, (_, &x)| a.wrapping_add(u32::from(x)))
}
/// Edits the footer (both copies of a dynamic disk's) and reseals it.
fn vhd_footer(base: &[u8], f: impl Fn(&mut [u8])) -> Vec<u8> {
    edit(base, |b| {
        let end = b.len() - 512;
        let mut starts = vec![end];
        if &b[..8] == b"conectix" && end != 0 {
            starts.push(0);
        }
        for at in starts {
            let page = &mut b[at..at + 512];
            f(page);
            let sum = vhd_sum(page, 64);
            be32(page, 64, sum);
        }
    })
}
/// Edits the dynamic header (at 512 in ims's dynamic disks) and reseals it.
fn vhd_header(base: &[u8], f: impl Fn(&mut [u8])) -> Vec<u8> {
    edit(base, |b| {
        let h = &mut b[512..1536];
        f(h);
        let sum = vhd_sum(h, 36);
        be32(h, 36, sum);
    })
}
fn vhd_bat(b: &[u8]) -> usize {
    BigEndian::read_u64(&b[512 + 16..]) as usize
}
/// A differencing disk whose parent locator (and unicode name) is `name`: the dynamic base with
/// its disk type changed and the locator data put in a sector before the footer.
fn vhd_child(base: &[u8], name: &str, code: &[u8; 4]) -> Vec<u8> {
    let footer = base[base.len() - 512..].to_vec();
    let mut b = base[..base.len() - 512].to_vec();
    let data_at = b.len();
    let data: Vec<u8> = if code == b"MacX" {
        name.as_bytes().to_vec()
    } else {
        name.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
    };
    let mut sector = data.clone();
    sector.resize(512, 0);
    b.extend_from_slice(&sector);
    b.extend_from_slice(&footer);
    let b = vhd_header(&b, |h| {
        for (i, u) in name.encode_utf16().take(256).enumerate() {
            BigEndian::write_u16(&mut h[64 + 2 * i..], u);
        }
        h[576..580].copy_from_slice(code);
        be32(h, 580, 512);
        be32(h, 584, data.len() as u32);
        be64(h, 592, data_at as u64);
    });
    vhd_footer(&b, |f| be32(f, 60, 4))
}

// VMDK hosted sparse header (little-endian).
const K_CAPACITY: usize = 12;
const K_GRAIN: usize = 20;
const K_DESC_OFFSET: usize = 28;
const K_DESC_SIZE: usize = 36;
const K_GTES: usize = 44;
const K_RGD: usize = 48;
const K_GD: usize = 56;
const K_OVERHEAD: usize = 64;

fn k_gd(b: &[u8]) -> usize {
    LittleEndian::read_u64(&b[K_GD..]) as usize * 512
}
fn k_rgd(b: &[u8]) -> usize {
    LittleEndian::read_u64(&b[K_RGD..]) as usize * 512
}
fn k_gt(b: &[u8]) -> usize {
    LittleEndian::read_u32(&b[k_gd(b)..]) as usize * 512
}
fn k_first_grain(b: &[u8]) -> usize {
    LittleEndian::read_u32(&b[k_gt(b)..]) as usize * 512
}
/// Sets the same entry in both grain directories (a reader may use either).
fn k_both_gd(b: &mut [u8], v: u32) {
    let (gd, rgd) = (k_gd(b), k_rgd(b));
    le32(b, gd, v);
    if rgd != 0 {
        le32(b, rgd, v);
    }
}
fn k_both_gt(b: &mut [u8], v: u32) {
    let (gd, rgd) = (k_gd(b), k_rgd(b));
    for dir in [gd, rgd] {
        if dir != 0 {
            let gt = LittleEndian::read_u32(&b[dir..]) as usize * 512;
            le32(b, gt, v);
        }
    }
}
fn descriptor(extents: &str) -> Vec<u8> {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n{extents}ddb.adapterType = \"ide\"\n"
    )
    .into_bytes()
}
fn flat(target: &str) -> Vec<u8> {
    descriptor(&format!("RW 2048 FLAT \"{target}\" 0\n"))
}

// ZVHD2 / ZVHD: pages of 4096 bytes; header page first, footer page last.
const PAGE: usize = 4096;

fn zvhd2_vector() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/zvhd");
    if let Ok(bytes) = std::fs::read(dir.join("tiny.zstd.zvhd2")) {
        return bytes;
    }
    let gz = std::fs::read(dir.join("tiny.zstd.zvhd2.gz")).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
    out
}

/// A GPT disk: protective MBR, GPT header at LBA 1, one partition entry.
fn gpt_disk() -> Vec<u8> {
    let mut b = vec![0u8; DISK as usize];
    b[446 + 4] = 0xee;
    le32(&mut b, 446 + 8, 1);
    le32(&mut b, 446 + 12, (DISK / 512 - 1) as u32);
    b[510] = 0x55;
    b[511] = 0xaa;
    b[512..520].copy_from_slice(b"EFI PART");
    b
}

// ---- Compressed units that inflate past their size. ----

fn deflate_raw(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The compressed qcow2 image with its first compressed cluster replaced by a deflate stream of
/// `inflated` zero bytes.
fn q_bomb(base: &[u8], inflated: usize) -> Vec<u8> {
    edit(base, |b| {
        let cluster_bits = BigEndian::read_u32(&b[Q_CLUSTER_BITS..]);
        let l2 = q_l2(b);
        let (at, v) = (0..8192)
            .map(|i| l2 + 8 * i)
            .map(|at| (at, BigEndian::read_u64(&b[at..])))
            .find(|(_, v)| v & (1 << 62) != 0)
            .expect("a compressed cluster");
        let x = 62 - (cluster_bits - 8);
        let host = (v & ((1u64 << x) - 1)) as usize;
        let bomb = deflate_raw(&vec![0u8; inflated]);
        b[host..host + bomb.len()].copy_from_slice(&bomb);
        // The descriptor's sector count covers the bomb (it is far shorter than the data it replaced).
        let _ = at;
    })
}

/// The streamOptimized image with its first grain replaced by a zlib stream of `inflated` zeros.
fn k_stream_bomb(base: &[u8], inflated: usize) -> Vec<u8> {
    edit(base, |b| {
        let overhead = LittleEndian::read_u64(&b[K_OVERHEAD..]) as usize * 512;
        // The first marker after the overhead is grain 0 (the base disk starts with data).
        let size = LittleEndian::read_u32(&b[overhead + 8..]) as usize;
        assert!(size > 0, "grain marker at {overhead:#x}");
        let bomb = zlib(&vec![0u8; inflated]);
        assert!(bomb.len() <= size);
        b[overhead + 12..overhead + 12 + bomb.len()].copy_from_slice(&bomb);
        le32(b, overhead + 8, bomb.len() as u32);
    })
}

// ---- The cases. ----

/// A file beside the image (besides the image itself) that a case makes first.
enum Extra {
    File(&'static str, Vec<u8>),
    /// A symbolic link and its target.
    Link(&'static str, &'static str),
    Fifo(&'static str),
}

struct Case {
    name: String,
    format: Option<Format>,
    /// Whether references are allowed inside the case's directory.
    allow: bool,
    /// The error kind expected, or "ok".
    expect: &'static str,
    /// The image, until [`all_cases`] spools it to `spooled` (so a test does not hold every
    /// case's bytes in memory at once).
    bytes: Vec<u8>,
    spooled: Option<std::path::PathBuf>,
    extra: Vec<Extra>,
    /// A control case: it must read the sentinel beside the image (proving the check works).
    reads_sentinel: bool,
    /// Read the image as a stream (a pipe, stdin) of this format instead of opening the file.
    stream: Option<Format>,
}

fn case(name: impl Into<String>, expect: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        name: name.into(),
        format: None,
        allow: false,
        expect,
        bytes,
        spooled: None,
        extra: Vec::new(),
        reads_sentinel: false,
        stream: None,
    }
}

impl Case {
    /// Writes the image to `img`.
    fn place(&self, img: &Path) {
        match &self.spooled {
            Some(p) => {
                std::fs::copy(p, img).unwrap();
            }
            None => std::fs::write(img, &self.bytes).unwrap(),
        }
    }
    fn allow(mut self) -> Self {
        self.allow = true;
        self
    }
    fn format(mut self, f: Format) -> Self {
        self.format = Some(f);
        self
    }
    fn stream(mut self, f: Format) -> Self {
        self.stream = Some(f);
        self
    }
    fn reads_sentinel(mut self) -> Self {
        self.reads_sentinel = true;
        self
    }
    fn link(mut self, name: &'static str, target: &'static str) -> Self {
        self.extra.push(Extra::Link(name, target));
        self
    }
    fn fifo(mut self, name: &'static str) -> Self {
        self.extra.push(Extra::Fifo(name));
        self
    }
    fn with(mut self, name: &'static str, bytes: Vec<u8>) -> Self {
        self.extra.push(Extra::File(name, bytes));
        self
    }
}

/// The names a hostile reference may take; `outside` is the absolute path of the sentinel outside
/// the case's directory.
fn hostile_names(outside: &str) -> Vec<String> {
    vec![
        "../outside.raw".into(),
        "sub/../../outside.raw".into(),
        outside.into(),
        "/dev/zero".into(),
        "/proc/self/environ".into(),
        "json:{'file':{'filename':'../outside.raw'}}".into(),
        "nbd:localhost:10809".into(),
    ]
}

fn qcow2_cases(b: &Bases, outside: &str) -> Vec<Case> {
    let q = &b.qcow2;
    let len = q.len() as u64;
    let (entry_at, entry) = q_first_entry(q);
    let mut v = vec![
        // Header fields out of range.
        case(
            "qcow2 cluster_bits 8",
            "malformed",
            edit(q, |b| be32(b, Q_CLUSTER_BITS, 8)),
        ),
        case(
            "qcow2 cluster_bits 63",
            "malformed",
            edit(q, |b| be32(b, Q_CLUSTER_BITS, 63)),
        ),
        case(
            "qcow2 size u64::MAX",
            "malformed",
            edit(q, |b| be64(b, Q_SIZE, u64::MAX)),
        ),
        case(
            "qcow2 encrypted",
            "unsupported",
            edit(q, |b| be32(b, Q_CRYPT, 1)),
        ),
        case(
            "qcow2 unknown incompatible feature",
            "unsupported",
            edit(q, |b| be64(b, Q_INCOMPATIBLE, 1 << 40)),
        ),
        case(
            "qcow2 refcount_order 7",
            "malformed",
            edit(q, |b| be32(b, Q_REFCOUNT_ORDER, 7)),
        ),
        case(
            "qcow2 header_length past the cluster",
            "malformed",
            edit(q, |b| be32(b, Q_HEADER_LENGTH, 1 << 20)),
        ),
        case("qcow2 version 4", "unsupported", edit(q, |b| be32(b, 4, 4))),
        // A qcow2 header whose version says 1 is read as QCOW version 1, whose fields are not
        // where qcow2 keeps them: refused as a malformed qcow header.
        case("qcow version 1", "malformed", edit(q, |b| be32(b, 4, 1))),
        // Offsets past the end or misaligned.
        case(
            "qcow2 L1 table past EOF",
            "truncated",
            edit(q, |b| be64(b, Q_L1_OFFSET, len + (1 << 16))),
        ),
        case(
            "qcow2 L1 offset u64::MAX & cluster",
            "truncated",
            edit(q, |b| be64(b, Q_L1_OFFSET, 0xffff_ffff_ffff_0000)),
        ),
        case(
            "qcow2 L1 offset unaligned",
            "malformed",
            edit(q, |b| be64(b, Q_L1_OFFSET, 0x10008)),
        ),
        case(
            "qcow2 refcount table past EOF",
            "truncated",
            edit(q, |b| be64(b, Q_RC_OFFSET, len + (1 << 16))),
        ),
        case(
            "qcow2 snapshots past EOF",
            "truncated",
            edit(q, |b| {
                be32(b, Q_NB_SNAPSHOTS, 1);
                be64(b, Q_SNAPSHOTS_OFFSET, len + (1 << 16));
            }),
        ),
        case(
            "qcow2 backing name past EOF",
            "malformed",
            edit(q, |b| {
                be64(b, Q_BACKING_OFFSET, len + 512);
                be32(b, Q_BACKING_SIZE, 10);
            }),
        ),
        case(
            "qcow2 L2 table past EOF",
            "truncated",
            edit(q, |b| {
                let l1 = q_l1(b);
                be64(b, l1, (1 << 63) | ((len + (1 << 20)) & !0xffff));
            }),
        ),
        case(
            "qcow2 L2 table unaligned",
            "malformed",
            edit(q, |b| {
                let l1 = q_l1(b);
                be64(b, l1, (1 << 63) | 0x10200);
            }),
        ),
        case(
            "qcow2 data cluster past EOF",
            "truncated",
            edit(q, |b| {
                be64(
                    b,
                    entry_at,
                    (entry & (1 << 63)) | ((len + (4 << 20)) & !0xffff),
                );
            }),
        ),
        case(
            "qcow2 data cluster at 2^55",
            "truncated",
            edit(q, |b| be64(b, entry_at, (1 << 63) | (1 << 55))),
        ),
        // Tables sized to force huge allocations.
        case(
            "qcow2 L1 of 2^31 entries",
            "limit-exceeded",
            edit(q, |b| be32(b, Q_L1_SIZE, 0x7fff_ffff)),
        ),
        case(
            "qcow2 refcount table of 2^32 clusters",
            "limit-exceeded",
            edit(q, |b| be32(b, Q_RC_CLUSTERS, u32::MAX)),
        ),
        case(
            "qcow2 2^31 snapshots",
            "limit-exceeded",
            edit(q, |b| {
                be32(b, Q_NB_SNAPSHOTS, 0x7fff_ffff);
                be64(b, Q_SNAPSHOTS_OFFSET, 0x10000);
            }),
        ),
        case(
            "qcow2 backing name of 64 KiB",
            "malformed",
            edit(q, |b| {
                be64(b, Q_BACKING_OFFSET, 0x1000);
                be32(b, Q_BACKING_SIZE, 0xffff);
            }),
        ),
        // Decompression bomb: a compressed cluster inflating to twice the cluster size.
        case(
            "qcow2 compressed cluster inflating past its size",
            "malformed",
            q_bomb(&b.qcow2_compressed, 1 << 17),
        ),
        case(
            "qcow2 compressed cluster inflating short",
            "malformed",
            q_bomb(&b.qcow2_compressed, 100),
        ),
    ];
    let qc = &b.qcow2_compressed;
    let (c_at, c_entry) = q_first_compressed(qc);
    v.extend([
        case(
            "qcow2 size 2^62 with the same L1",
            "malformed",
            edit(q, |b| be64(b, Q_SIZE, 1 << 62)),
        ),
        case(
            "qcow2 header extension of 4 GiB",
            "malformed",
            edit(q, |b| {
                let at = BigEndian::read_u32(&b[Q_HEADER_LENGTH..]) as usize;
                be32(b, at, 0x1234_5678);
                be32(b, at + 4, u32::MAX);
            }),
        ),
        case(
            "qcow2 compressed cluster past EOF",
            "truncated",
            edit(qc, |b| {
                let x = 62 - (16 - 8);
                let host = (qc.len() as u64 + (1 << 20)) & ((1 << x) - 1);
                be64(b, c_at, (c_entry & !((1u64 << x) - 1)) | host);
            }),
        ),
        case(
            "qcow2 compressed cluster of garbage",
            "malformed",
            edit(qc, |b| {
                let x = 62 - (16 - 8);
                let host = (c_entry & ((1u64 << x) - 1)) as usize;
                b[host..host + 512].fill(0xff);
            }),
        ),
        case(
            "qcow2 zlib clusters read as zstd",
            "malformed",
            edit(qc, |b| {
                let f = BigEndian::read_u64(&b[Q_INCOMPATIBLE..]);
                be64(b, Q_INCOMPATIBLE, f | 1 << 3);
                b[104] = 1;
            }),
        ),
        case(
            "qcow2 snapshot table of 0xff bytes",
            "limit-exceeded",
            edit(q, |b| {
                be32(b, Q_NB_SNAPSHOTS, 1);
                be64(b, Q_SNAPSHOTS_OFFSET, 0x10000);
                b[0x10000..0x10000 + 512].fill(0xff);
            }),
        ),
    ]);
    // Issue 20: inconsistent structure. Amplification through shared clusters, entries pointing
    // at metadata, reserved bits and impossible flags, sizes, snapshot tables: all refused when
    // the image opens (so `ims info` fails too).
    {
        /// A qcow2 image with an internal snapshot table appended: `entries(copy0, copy1)` gives
        /// each snapshot's (L1 table offset, L1 size, id), where `copy0` and `copy1` are two
        /// appended clusters holding copies of the active L1 table.
        fn q_snapshots(
            base: &[u8],
            entries: impl Fn(u64, u64) -> Vec<(u64, u32, &'static str)>,
        ) -> Vec<u8> {
            let mut b = base.to_vec();
            let table = (b.len() as u64).next_multiple_of(1 << 16);
            let copies = [table + (1 << 16), table + (2 << 16)];
            b.resize(table as usize + (3 << 16), 0);
            let l1 = q_l1(base);
            let l1_len = 8 * BigEndian::read_u32(&base[Q_L1_SIZE..]) as usize;
            for c in copies {
                b.copy_within(l1..l1 + l1_len, c as usize);
            }
            let list = entries(copies[0], copies[1]);
            let mut at = table as usize;
            for (l1_offset, l1_size, id) in &list {
                be64(&mut b, at, *l1_offset);
                be32(&mut b, at + 8, *l1_size);
                b[at + 12..at + 14].copy_from_slice(&(id.len() as u16).to_be_bytes());
                b[at + 14..at + 16].copy_from_slice(&1u16.to_be_bytes());
                b[at + 40..at + 40 + id.len()].copy_from_slice(id.as_bytes());
                b[at + 40 + id.len()] = b's';
                at += (40 + id.len() + 1).next_multiple_of(8);
            }
            be32(&mut b, Q_NB_SNAPSHOTS, list.len() as u32);
            be64(&mut b, Q_SNAPSHOTS_OFFSET, table);
            b
        }

        const COPIED: u64 = 1 << 63;
        const COMPRESSED: u64 = 1 << 62;
        let x = 62 - (16 - 8); // compressed descriptor offset bits, 64 KiB clusters
        let l1 = q_l1(q) as u64;
        let rc = q_rc(q) as u64;
        let l2 = q_l2(q) as u64;
        let block = BigEndian::read_u64(&q[q_rc(q)..]) & !0x1ff;
        let data_entries: Vec<(usize, u64)> = (0..16)
            .map(|i| l2 as usize + 8 * i)
            .map(|at| (at, BigEndian::read_u64(&q[at..])))
            .filter(|(_, v)| *v & 0x00ff_ffff_ffff_fe00 != 0)
            .collect();
        let (second_at, _) = data_entries[1];
        let c_entries: Vec<(usize, u64)> = (0..DISK as usize >> 16)
            .map(|i| q_l2(qc) + 8 * i)
            .map(|at| (at, BigEndian::read_u64(&qc[at..])))
            .filter(|(_, v)| v & COMPRESSED != 0)
            .collect();
        let (c2_at, _) = c_entries[1];
        let c_host = c_entry & ((1u64 << x) - 1);
        // The compressed cluster spanning the most sectors, and another one.
        let (_, wide) = *c_entries.iter().max_by_key(|(_, v)| v >> x & 0xff).unwrap();
        assert!(
            wide >> x & 0xff >= 1,
            "a compressed cluster spans two sectors"
        );
        let (other_at, _) = *c_entries.iter().find(|(_, v)| *v != wide).unwrap();
        v.extend([
            // 1. Amplification: one host cluster behind several guest clusters.
            case(
                "qcow2 two L2 entries share a data cluster",
                "malformed",
                edit(q, |b| be64(b, second_at, entry)),
            ),
            case(
                "qcow2 every L2 entry maps the same data cluster",
                "malformed",
                edit(q, |b| {
                    for i in 0..DISK as usize >> 16 {
                        be64(b, l2 as usize + 8 * i, entry);
                    }
                }),
            ),
            case(
                "qcow2 preallocated zero cluster shares a data cluster",
                "malformed",
                edit(q, |b| be64(b, second_at, (entry & !COPIED) | 1)),
            ),
            case(
                "qcow2 two compressed entries repeat one range",
                "malformed",
                edit(qc, |b| be64(b, c2_at, c_entry)),
            ),
            case(
                "qcow2 compressed ranges overlap",
                "malformed",
                edit(qc, |b| be64(b, other_at, wide + 1)),
            ),
            // 2. Entries pointing at metadata.
            case(
                "qcow2 L1 entry points at the L1 table",
                "malformed",
                edit(q, |b| be64(b, l1 as usize, COPIED | l1)),
            ),
            case(
                "qcow2 L1 entry points at the refcount table",
                "malformed",
                edit(q, |b| be64(b, l1 as usize, COPIED | rc)),
            ),
            case(
                "qcow2 L2 entry points at its own L2 table",
                "malformed",
                edit(q, |b| be64(b, entry_at, COPIED | l2)),
            ),
            case(
                "qcow2 L2 entry points at the L1 table",
                "malformed",
                edit(q, |b| be64(b, entry_at, COPIED | l1)),
            ),
            case(
                "qcow2 L2 entry points at a refcount block",
                "malformed",
                edit(q, |b| be64(b, entry_at, COPIED | block)),
            ),
            case(
                "qcow2 preallocated zero cluster on the refcount table",
                "malformed",
                edit(q, |b| be64(b, entry_at, rc | 1)),
            ),
            case(
                "qcow2 compressed cluster inside the header",
                "malformed",
                edit(qc, |b| {
                    be64(b, c_at, (c_entry & !((1u64 << x) - 1)) | 0x200)
                }),
            ),
            case(
                "qcow2 compressed cluster inside the L2 table",
                "malformed",
                edit(qc, |b| {
                    let l2 = q_l2(b) as u64;
                    be64(b, c_at, (c_entry & !((1u64 << x) - 1)) | (l2 + 0x100));
                }),
            ),
            case(
                "qcow2 data cluster inside compressed data",
                "malformed",
                edit(qc, |b| be64(b, c2_at, COPIED | (c_host & !0xffff))),
            ),
            // 3. Reserved bits and impossible flags.
            case(
                "qcow2 L1 entry with reserved bit 0",
                "malformed",
                edit(q, |b| be64(b, l1 as usize, COPIED | l2 | 1)),
            ),
            case(
                "qcow2 L1 entry with reserved bit 56",
                "malformed",
                edit(q, |b| be64(b, l1 as usize, COPIED | l2 | 1 << 56)),
            ),
            case(
                "qcow2 L2 entry with reserved bit 1",
                "malformed",
                edit(q, |b| be64(b, entry_at, entry | 2)),
            ),
            case(
                "qcow2 L2 entry with reserved bit 61",
                "malformed",
                edit(q, |b| be64(b, entry_at, entry | 1 << 61)),
            ),
            case(
                "qcow2 L2 entry COPIED with offset 0",
                "malformed",
                edit(q, |b| be64(b, entry_at, COPIED)),
            ),
            case(
                "qcow2 compressed entry with COPIED",
                "malformed",
                edit(qc, |b| be64(b, c_at, c_entry | COPIED)),
            ),
            // 4. Sizes.
            case(
                "qcow2 virtual size not a multiple of 512",
                "malformed",
                edit(q, |b| be64(b, Q_SIZE, DISK - 100)),
            ),
            case(
                "qcow2 virtual size one past whole sectors",
                "malformed",
                edit(q, |b| be64(b, Q_SIZE, DISK + 1)),
            ),
            // 5. Snapshot tables (a valid one first, so the checks are seen to let it through).
            case(
                "qcow2 snapshot, valid",
                "ok",
                q_snapshots(q, |a, b| vec![(a, 1, "1"), (b, 1, "2")]),
            ),
            case(
                "qcow2 snapshot L1 table unaligned",
                "malformed",
                q_snapshots(q, |a, _| vec![(a + 8, 1, "1")]),
            ),
            case(
                "qcow2 snapshot L1 table past EOF",
                "truncated",
                q_snapshots(q, |a, _| vec![(a + (1 << 30), 1, "1")]),
            ),
            case(
                "qcow2 snapshot L1 table of 2^31 entries",
                "limit-exceeded",
                q_snapshots(q, |a, _| vec![(a, 0x7fff_ffff, "1")]),
            ),
            case(
                "qcow2 snapshot L1 table is the active L1 table",
                "malformed",
                q_snapshots(q, move |_, _| vec![(l1, 1, "1")]),
            ),
            case(
                "qcow2 snapshot L1 table on the refcount table",
                "malformed",
                q_snapshots(q, move |_, _| vec![(rc, 1, "1")]),
            ),
            case(
                "qcow2 two snapshots share an L1 table",
                "malformed",
                q_snapshots(q, |a, _| vec![(a, 1, "1"), (a, 1, "2")]),
            ),
            case(
                "qcow2 duplicate snapshot ids",
                "malformed",
                q_snapshots(q, |a, b| vec![(a, 1, "1"), (b, 1, "1")]),
            ),
        ]);
    }
    // Truncation at each structure boundary.
    let l2 = q_l2(q);
    let data = (entry & 0x00ff_ffff_ffff_fe00) as usize;
    for (what, at, kind) in [
        ("inside the header", 50, "truncated"),
        ("after the v2 header", 72, "truncated"),
        ("after the v3 header", 104, "truncated"),
        ("at the L1 table", q_l1(q), "truncated"),
        ("at the refcount table", q_rc(q), "truncated"),
        ("at the L2 table", l2, "truncated"),
        ("inside the L2 table", l2 + 4096, "truncated"),
        ("at the first data cluster", data, "truncated"),
        // The last cluster is a refcount block, which reading does not consult (qemu-img agrees).
        ("inside the last cluster", q.len() - 4096, "ok"),
    ] {
        v.push(case(format!("qcow2 cut {what}"), kind, cut(q, at)));
    }
    // References: refused without the option, and hostile names refused with it.
    v.push(case(
        "qcow2 backing beside, not allowed",
        "external-reference",
        q_backing(q, "sentinel.raw"),
    ));
    for name in hostile_names(outside) {
        v.push(
            case(
                format!("qcow2 backing {name}"),
                "external-reference",
                q_backing(q, &name),
            )
            .allow(),
        );
    }
    v.push(case(
        "qcow2 backing /dev/zero, not allowed",
        "external-reference",
        q_backing(q, "/dev/zero"),
    ));
    // A data file: refused as a reference, and unsupported where references are allowed.
    v.push(case(
        "qcow2 data file beside, not allowed",
        "external-reference",
        q_data_file(q, "sentinel.raw"),
    ));
    v.push(
        case(
            "qcow2 data file beside, allowed",
            "unsupported",
            q_data_file(q, "sentinel.raw"),
        )
        .allow(),
    );
    v.push(
        case(
            "qcow2 data file /dev/zero, allowed",
            "unsupported",
            q_data_file(q, "/dev/zero"),
        )
        .allow(),
    );
    // Names that resolve out of the directory, or to what is not a regular file.
    v.push(
        case(
            "qcow2 backing symlink to ../outside.raw",
            "external-reference",
            q_backing(q, "link.raw"),
        )
        .allow()
        .link("link.raw", "../outside.raw"),
    );
    v.push(
        case(
            "qcow2 backing symlink to /proc/self/mem",
            "external-reference",
            q_backing(q, "mem"),
        )
        .allow()
        .link("mem", "/proc/self/mem"),
    );
    v.push(
        case(
            "qcow2 backing FIFO",
            "external-reference",
            q_backing(q, "fifo"),
        )
        .allow()
        .fifo("fifo"),
    );
    v.push(
        case(
            "qcow2 backing a directory",
            "external-reference",
            q_backing(q, "sub"),
        )
        .allow(),
    );
    v.push(
        case(
            "qcow2 backing /proc/self/fd/0",
            "external-reference",
            q_backing(q, "/proc/self/fd/0"),
        )
        .allow(),
    );
    // The control: a backing file beside the image, allowed, is read (and so is the sentinel).
    v.push(
        case(
            "control: qcow2 backing beside, allowed",
            "ok",
            q_backing(q, "sentinel.raw"),
        )
        .allow()
        .reads_sentinel(),
    );
    // Cycles.
    v.push(
        case(
            "qcow2 backing itself",
            "external-reference",
            q_backing(q, "img"),
        )
        .allow(),
    );
    v.push(
        case(
            "qcow2 backing loop a -> b -> a",
            "limit-exceeded",
            q_backing(q, "b.qcow2"),
        )
        .allow()
        .with("b.qcow2", q_backing(q, "img")),
    );
    v
}

fn vhd_cases(b: &Bases, outside: &str) -> Vec<Case> {
    let d = &b.vhd_dynamic;
    let len = d.len() as u64;
    let bat = vhd_bat(d);
    let mut v = vec![
        case(
            "vhd footer checksum",
            "malformed",
            edit(d, |b| {
                let n = b.len();
                b[n - 512 + 64] ^= 1;
                b[64] ^= 1;
            }),
        ),
        case(
            "vhd data_offset past EOF",
            "malformed",
            vhd_footer(d, |f| be64(f, 16, len + 4096)),
        ),
        case(
            "vhd data_offset u64::MAX",
            "malformed",
            vhd_footer(d, |f| be64(f, 16, u64::MAX - 511)),
        ),
        case(
            "vhd current_size u64::MAX",
            "malformed",
            // A creator other than "vpc " or "qemu", so the size is current_size's.
            vhd_footer(d, |f| {
                f[28..32].copy_from_slice(b"win ");
                be64(f, 48, u64::MAX);
            }),
        ),
        case(
            "vhd disk type 9",
            "malformed",
            vhd_footer(d, |f| be32(f, 60, 9)),
        ),
        case(
            "vhd BAT past EOF",
            "malformed",
            vhd_header(d, |h| be64(h, 16, len + 4096)),
        ),
        case(
            "vhd BAT at 2^63",
            "malformed",
            vhd_header(d, |h| be64(h, 16, 1 << 63)),
        ),
        case(
            "vhd block_size 0",
            "malformed",
            vhd_header(d, |h| be32(h, 32, 0)),
        ),
        case(
            "vhd block_size not a power of two",
            "malformed",
            vhd_header(d, |h| be32(h, 32, 3 << 20)),
        ),
        case(
            "vhd block_size 2 GiB",
            "malformed",
            vhd_header(d, |h| be32(h, 32, 1 << 31)),
        ),
        case(
            "vhd max_table_entries 2^32-1",
            "malformed",
            vhd_header(d, |h| be32(h, 28, u32::MAX)),
        ),
        case(
            "vhd BAT entry past EOF",
            "malformed",
            edit(d, |b| be32(b, bat, (len / 512 + 100) as u32)),
        ),
        case(
            "vhd BAT entry 0xfffffffe",
            "malformed",
            edit(d, |b| be32(b, bat, 0xffff_fffe)),
        ),
        case(
            "vhd dynamic header cookie",
            "malformed",
            vhd_header(d, |h| h[0] = b'X'),
        ),
        case(
            "vhd fixed disk shorter than its size",
            "truncated",
            vhd_footer(&b.vhd_fixed, |f| {
                f[28..32].copy_from_slice(b"win ");
                be64(f, 40, 4 * MIB);
                be64(f, 48, 4 * MIB);
            }),
        ),
        case("vhd locator of 4 GiB", "malformed", {
            let c = vhd_child(d, "parent.vhd", b"W2ru");
            vhd_header(&c, |h| be32(h, 584, u32::MAX))
        })
        .allow(),
        case("vhd locator past EOF", "malformed", {
            let c = vhd_child(d, "parent.vhd", b"W2ru");
            let at = c.len() as u64 + 4096;
            vhd_header(&c, |h| be64(h, 592, at))
        })
        .allow(),
    ];
    v.push(case(
        "vhd 2040 GiB of 512-byte blocks",
        "malformed",
        vhd_header(
            &vhd_footer(d, |f| {
                f[28..32].copy_from_slice(b"win ");
                be64(f, 48, 0xff00_0000 * 512);
            }),
            |h| be32(h, 32, 512),
        ),
    ));
    v.push(
        case("vhd eight locators of 64 KiB each", "malformed", {
            let c = vhd_child(d, "parent.vhd", b"W2ru");
            vhd_header(&c, |h| {
                let first = h[576..600].to_vec();
                for i in 0..8 {
                    h[576 + 24 * i..600 + 24 * i].copy_from_slice(&first);
                    be32(h, 584 + 24 * i, 64 * 1024);
                }
            })
        })
        .allow(),
    );
    for (what, at, kind) in [
        ("inside the footer copy", 100, "truncated"),
        ("after the footer copy", 512, "malformed"),
        ("inside the dynamic header", 1000, "malformed"),
        ("after the dynamic header", 1536, "malformed"),
        ("inside the BAT", bat + 2, "malformed"),
        ("inside the first block", d.len() - 512 - 4096, "malformed"),
        ("before the footer", d.len() - 512, "ok"),
    ] {
        v.push(case(format!("vhd cut {what}"), kind, cut(d, at)));
    }
    v.push(case(
        "vhd fixed cut before the footer",
        "ok",
        cut(&b.vhd_fixed, b.vhd_fixed.len() - 512),
    ));
    v.push(case(
        "vhd parent beside, not allowed",
        "external-reference",
        vhd_child(d, "sentinel.raw", b"W2ru"),
    ));
    for name in hostile_names(outside) {
        let code = if name.starts_with('/') {
            b"MacX"
        } else {
            b"W2ru"
        };
        v.push(
            case(
                format!("vhd parent {name}"),
                "external-reference",
                vhd_child(d, &name, code),
            )
            .allow(),
        );
    }
    v.push(
        case(
            "vhd parent symlink to ../outside.raw",
            "external-reference",
            vhd_child(d, "link.vhd", b"W2ru"),
        )
        .allow()
        .link("link.vhd", "../outside.raw"),
    );
    v.push(
        case(
            "vhd parent FIFO",
            "external-reference",
            vhd_child(d, "fifo", b"W2ru"),
        )
        .allow()
        .fifo("fifo"),
    );
    v.push(
        case(
            "vhd parent is itself",
            "external-reference",
            vhd_child(d, "img", b"W2ru"),
        )
        .allow(),
    );
    v.push(
        case(
            "vhd parent loop a -> b -> a",
            "limit-exceeded",
            vhd_child(d, "b.vhd", b"W2ru"),
        )
        .allow()
        .with("b.vhd", vhd_child(d, "img", b"W2ru")),
    );
    v.extend(vhd_inconsistent_cases(b));
    v
}

// Issue 20: inconsistent structure (VHD: shared blocks, blocks on metadata, reserved bits,
// sizes, disagreeing footers). Each refusal has a control beside it that must still read.

/// The dynamic base re-cut into blocks of 512 KiB (1025 sectors each with the bitmap: five
/// cover the disk, a little over 2 MiB), with `entries` as its BAT; the stored block's sector
/// is `vhd_first_block`.
fn vhd_quarters(d: &[u8], entries: [u32; 5]) -> Vec<u8> {
    let b = vhd_header(d, |h| {
        be32(h, 28, 5);
        be32(h, 32, 512 * 1024);
    });
    edit(&b, |b| {
        let bat = vhd_bat(b);
        for (i, e) in entries.iter().enumerate() {
            be32(b, bat + 4 * i, *e);
        }
    })
}
fn vhd_first_block(d: &[u8]) -> u32 {
    BigEndian::read_u32(&d[vhd_bat(d)..])
}
/// Edits only the footer copy at offset 0 and reseals it.
fn vhd_copy(base: &[u8], f: impl Fn(&mut [u8])) -> Vec<u8> {
    edit(base, |b| {
        let page = &mut b[..512];
        f(page);
        let sum = vhd_sum(page, 64);
        be32(page, 64, sum);
    })
}

fn vhd_inconsistent_cases(b: &Bases) -> Vec<Case> {
    let d = &b.vhd_dynamic;
    let e0 = vhd_first_block(d);
    const NONE: u32 = u32::MAX;
    let v = vec![
        // 1. Amplification: one stored block read as several guest ranges.
        case(
            "vhd two BAT entries on one block",
            "malformed",
            vhd_quarters(d, [e0, e0, NONE, NONE, NONE]),
        ),
        case(
            "vhd BAT entries on overlapping blocks",
            "malformed",
            vhd_quarters(d, [e0, e0 + 1024, NONE, NONE, NONE]),
        ),
        case(
            "vhd BAT entries on blocks side by side",
            "ok",
            vhd_quarters(d, [e0, e0 + 1025, NONE, NONE, NONE]),
        ),
        // 2. Blocks on the image's own metadata.
        case(
            "vhd BAT entry on the footer copy",
            "malformed",
            edit(d, |b| be32(b, vhd_bat(d), 0)),
        ),
        case(
            "vhd BAT entry on the dynamic header",
            "malformed",
            edit(d, |b| be32(b, vhd_bat(d), 1)),
        ),
        case(
            "vhd BAT entry on the BAT",
            "malformed",
            edit(d, |b| be32(b, vhd_bat(d), vhd_bat(d) as u32 / 512)),
        ),
        case(
            "vhd BAT entry on the footer at the end",
            "malformed",
            edit(d, |b| be32(b, vhd_bat(d), e0 + 2)),
        ),
        case("vhd BAT entry on a parent locator's data", "malformed", {
            // The child's locator sector follows the block: move the block one sector on.
            let c = vhd_child(d, "parent.vhd", b"W2ru");
            edit(&c, |b| be32(b, vhd_bat(&c), e0 + 1))
        })
        .allow(),
        case(
            "vhd child with its block beside the locator",
            "external-reference",
            vhd_child(d, "parent.vhd", b"W2ru"),
        ),
        // 3. Reserved feature bits.
        case(
            "vhd footer features with a reserved bit set",
            "malformed",
            vhd_footer(d, |f| be32(f, 8, 0x0000_0102)),
        ),
        case(
            "vhd footer features temporary",
            "ok",
            vhd_footer(d, |f| be32(f, 8, 0x3)),
        ),
        case(
            "vhd footer features 0 (reserved bit clear, as old tools write)",
            "ok",
            vhd_footer(d, |f| be32(f, 8, 0)),
        ),
        // 4. Sizes.
        case(
            "vhd current_size not a whole sector",
            "malformed",
            vhd_footer(d, |f| {
                f[28..32].copy_from_slice(b"win ");
                be64(f, 48, DISK + 1);
            }),
        ),
        case(
            "vhd dynamic disk of 4 TiB",
            "malformed",
            vhd_footer(d, |f| {
                f[28..32].copy_from_slice(b"win ");
                be64(f, 48, 4 << 40);
            }),
        ),
        case(
            "vhd fixed current_size past the file (geometry creator)",
            "truncated",
            vhd_footer(&b.vhd_fixed, |f| be64(f, 48, 4 * MIB)),
        ),
        // 7. Two valid footers telling different disks.
        case(
            "vhd footer copy disagreeing on the size",
            "malformed",
            vhd_copy(d, |f| {
                f[28..32].copy_from_slice(b"win ");
                be64(f, 48, MIB);
            }),
        ),
        case(
            "vhd footer copy disagreeing on the disk type",
            "malformed",
            vhd_copy(d, |f| be32(f, 60, 4)),
        ),
        case(
            "vhd footer copy with another time stamp",
            "ok",
            vhd_copy(d, |f| be32(f, 24, 12345)),
        ),
        case(
            "vhd fixed disk whose data starts with a dynamic footer",
            "malformed",
            edit(&b.vhd_fixed, |b| b[..512].copy_from_slice(&d[..512])),
        ),
    ];
    v
}

fn vmdk_cases(b: &Bases, outside: &str) -> Vec<Case> {
    let k = &b.vmdk_sparse;
    let len = k.len() as u64;
    let mut v = vec![
        case(
            "vmdk capacity 2^60 sectors",
            "limit-exceeded",
            edit(k, |b| le64(b, K_CAPACITY, 1 << 60)),
        ),
        case(
            "vmdk grain size 0",
            "malformed",
            edit(k, |b| le64(b, K_GRAIN, 0)),
        ),
        case(
            "vmdk grain size 3",
            "malformed",
            edit(k, |b| le64(b, K_GRAIN, 3)),
        ),
        case(
            "vmdk grain size 2^40",
            "limit-exceeded",
            edit(k, |b| le64(b, K_GRAIN, 1 << 40)),
        ),
        case(
            "vmdk 0 entries per grain table",
            "malformed",
            edit(k, |b| le32(b, K_GTES, 0)),
        ),
        case(
            "vmdk 2^31 entries per grain table",
            "malformed",
            edit(k, |b| le32(b, K_GTES, 1 << 31)),
        ),
        case(
            "vmdk descriptor past EOF",
            "truncated",
            edit(k, |b| le64(b, K_DESC_OFFSET, len / 512 + 100)),
        ),
        case(
            "vmdk descriptor of 2^40 sectors",
            "limit-exceeded",
            edit(k, |b| le64(b, K_DESC_SIZE, 1 << 40)),
        ),
        case(
            "vmdk grain directory past EOF",
            "malformed",
            edit(k, |b| {
                le64(b, K_GD, len / 512 + 100);
                le64(b, K_RGD, len / 512 + 100);
            }),
        ),
        case(
            "vmdk grain directory at 2^60",
            "malformed",
            edit(k, |b| {
                le64(b, K_GD, 1 << 60);
                le64(b, K_RGD, 1 << 60);
            }),
        ),
        case(
            "vmdk grain table past EOF",
            "malformed",
            edit(k, |b| k_both_gd(b, (len / 512 + 100) as u32)),
        ),
        case(
            "vmdk grain past EOF",
            "malformed",
            edit(k, |b| k_both_gt(b, (len / 512 + 100) as u32)),
        ),
        case(
            "vmdk grain at sector 2^32-1",
            "malformed",
            edit(k, |b| k_both_gt(b, u32::MAX)),
        ),
        case(
            "vmdk streamOptimized grain inflating past its size",
            "malformed",
            k_stream_bomb(&b.vmdk_stream, 1 << 17),
        ),
        case(
            "vmdk streamOptimized grain inflating short",
            "malformed",
            k_stream_bomb(&b.vmdk_stream, 100),
        ),
        case("vmdk descriptor of 2 MiB", "limit-exceeded", {
            let mut d = descriptor("");
            d.resize(2 << 20, b'#');
            d
        }),
        case(
            "vmdk descriptor with 5000 extents",
            "limit-exceeded",
            descriptor(&"RW 1 ZERO\n".repeat(5000)),
        ),
        case(
            "vmdk extent of 2^64-1 sectors",
            "limit-exceeded",
            descriptor("RW 18446744073709551615 ZERO\n"),
        ),
        case(
            "vmdk extents summing past 2^64",
            "malformed",
            descriptor(&"RW 9223372036854775807 ZERO\n".repeat(3)),
        ),
    ];
    v.extend([
        case(
            "vmdk 64 TiB of 1-sector grains",
            "limit-exceeded",
            edit(k, |b| {
                le64(b, K_CAPACITY, 1 << 37);
                le64(b, K_GRAIN, 1);
            }),
        ),
        case(
            "vmdk descriptor with a NUL and invalid UTF-8",
            "malformed",
            {
                let mut d = flat("x");
                // Inside the extent's file name.
                let at = d.windows(3).position(|w| w == b"\"x\"").unwrap() + 2;
                d.splice(at..at, [0u8, 0xff, 0xfe]);
                d
            },
        ),
        case(
            "vmdk VMFS extent /dev/sda",
            "external-reference",
            descriptor("RW 2048 VMFS \"/dev/sda\"\n"),
        )
        .allow(),
        case(
            "vmdk VMFSRDM extent /dev/sda",
            "unsupported",
            descriptor("RW 2048 VMFSRDM \"/dev/sda\"\n"),
        )
        .allow(),
        case(
            "vmdk SPARSE extent ../outside.raw",
            "external-reference",
            descriptor("RW 2048 SPARSE \"../outside.raw\"\n"),
        )
        .allow(),
    ]);
    let gd = k_gd(k);
    let gt = k_gt(k);
    let grain = k_first_grain(k);
    let desc_end = (LittleEndian::read_u64(&k[K_DESC_OFFSET..])
        + LittleEndian::read_u64(&k[K_DESC_SIZE..])) as usize
        * 512;
    for (what, at, kind) in [
        ("inside the header", 40, "truncated"),
        ("after the header", 512, "truncated"),
        ("after the descriptor", desc_end, "malformed"),
        ("at the grain directory", gd, "malformed"),
        ("at the grain table", gt, "malformed"),
        ("at the first grain", grain, "malformed"),
        ("inside the first grain", grain + 4096, "malformed"),
    ] {
        v.push(case(format!("vmdk sparse cut {what}"), kind, cut(k, at)));
    }
    let st = &b.vmdk_stream;
    let overhead = LittleEndian::read_u64(&st[K_OVERHEAD..]) as usize * 512;
    for (what, at, kind) in [
        ("after the header", 512, "truncated"),
        ("after the descriptor", overhead, "malformed"),
        ("inside the first grain", overhead + 100, "malformed"),
        ("before the footer", st.len() - 1024, "malformed"),
        (
            "before the end-of-stream marker",
            st.len() - 512,
            "malformed",
        ),
    ] {
        v.push(case(format!("vmdk stream cut {what}"), kind, cut(st, at)));
    }
    v.push(case(
        "vmdk flat extent beside, not allowed",
        "external-reference",
        flat("sentinel.raw"),
    ));
    for name in hostile_names(outside) {
        v.push(
            case(
                format!("vmdk extent {name}"),
                "external-reference",
                flat(&name),
            )
            .allow(),
        );
    }
    v.push(
        case(
            "vmdk extent is the descriptor itself",
            "external-reference",
            flat("img"),
        )
        .allow(),
    );
    v.push(case(
        "vmdk delta disk parentFileNameHint ../outside.raw",
        "external-reference",
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=12345678\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"{outside}\"\nRW 2048 SPARSE \"sentinel.raw\"\n"
        )
        .into_bytes(),
    ).allow());
    v.extend(vmdk_inconsistent_cases(b));
    v
}

// Issue 20: inconsistent structure (VMDK: shared grains and tables, grains and tables on
// metadata, undefined flags, sizes past the file, createType and embedded extents, stream
// markers whose size is not their table's).

/// The grain table entries of the first grain table of a sparse extent (ims's monolithicSparse
/// has one primary directory and no redundant one).
fn k_gte(b: &[u8], i: usize) -> u32 {
    LittleEndian::read_u32(&b[k_gt(b) + 4 * i..])
}
/// Replaces `from` by `to` in an embedded descriptor (whose sectors are padded with zeros).
fn k_descriptor(base: &[u8], from: &str, to: &str) -> Vec<u8> {
    edit(base, |b| {
        let at = LittleEndian::read_u64(&b[K_DESC_OFFSET..]) as usize * 512;
        let len = LittleEndian::read_u64(&b[K_DESC_SIZE..]) as usize * 512;
        let text = String::from_utf8_lossy(&b[at..at + len])
            .trim_end_matches('\0')
            .to_string();
        assert!(text.contains(from), "{from:?} not in {text:?}");
        let new = text.replacen(from, to, 1);
        b[at..at + len].fill(0);
        b[at..at + new.len()].copy_from_slice(new.as_bytes());
    })
}
/// The stream layout's grain directory (from the footer) and its first grain table.
fn ks_gd(st: &[u8]) -> usize {
    LittleEndian::read_u64(&st[st.len() - 1024 + K_GD..]) as usize * 512
}
fn ks_gt(st: &[u8]) -> usize {
    LittleEndian::read_u32(&st[ks_gd(st)..]) as usize * 512
}
/// A monolithicSparse extent rewritten in the stream layout VMware uses for a sparse file written
/// front to back: `gdOffset` GD_AT_END in the header, the real one in a footer between a footer
/// marker and an end-of-stream marker at the end of the file.
fn k_gd_at_end(k: &[u8]) -> Vec<u8> {
    let mut b = k.to_vec();
    let footer = k[..512].to_vec();
    le64(&mut b, K_GD, u64::MAX);
    let mut marker = [0u8; 512];
    le64(&mut marker, 0, 1);
    le32(&mut marker, 12, 3);
    b.extend_from_slice(&marker);
    b.extend_from_slice(&footer);
    b.extend_from_slice(&[0u8; 512]);
    b
}

fn vmdk_inconsistent_cases(b: &Bases) -> Vec<Case> {
    let k = &b.vmdk_sparse;
    let gd = k_gd(k);
    let gt = k_gt(k);
    // mixed_raw: grain 1 is a hole, grains 0 and 2 are stored.
    let (g0, g1, g2) = (k_gte(k, 0), k_gte(k, 1), k_gte(k, 2));
    assert!(g0 != 0 && g1 == 0 && g2 != 0, "{g0} {g1} {g2}");
    let set_gte = |i: usize, v: u32| edit(k, move |b| le32(b, gt + 4 * i, v));
    let st = &b.vmdk_stream;
    let (sgd, sgt) = (ks_gd(st), ks_gt(st));
    let s_g0 = LittleEndian::read_u32(&st[sgt..]);
    let flags = LittleEndian::read_u32(&k[8..]);
    let sflags = LittleEndian::read_u32(&st[8..]);
    let mut v = vec![
        // 1. Amplification: one stored grain (or table) read as several guest ranges.
        case(
            "vmdk two grain table entries on one grain",
            "malformed",
            set_gte(1, g0),
        ),
        case(
            "vmdk grain table entries on overlapping grains",
            "malformed",
            set_gte(1, g0 + 64),
        ),
        case("vmdk grains swapped, side by side", "ok", {
            let b1 = set_gte(2, g0);
            edit(&b1, |b| le32(b, gt, g2))
        }),
        case(
            "vmdk two grain directory entries on one grain table",
            "malformed",
            edit(k, |b| {
                // 16 entries per table: the directory now has two, both on the one table.
                le32(b, K_GTES, 16);
                le32(b, gd + 4, (gt / 512) as u32);
            }),
        ),
        case(
            "vmdk grain tables of 16 entries side by side",
            "ok",
            edit(k, |b| {
                le32(b, K_GTES, 16);
                // The second table is the first one's next 64 bytes, a sector on.
                le32(b, gd + 4, (gt / 512) as u32 + 1);
            }),
        ),
        case(
            "vmdk stream two grain table entries on one compressed grain",
            "malformed",
            edit(st, |b| le32(b, sgt + 4, s_g0)),
        ),
        // 2. Grains and tables on the image's own metadata.
        case(
            "vmdk grain table entry on the descriptor",
            "malformed",
            set_gte(0, 1),
        ),
        case(
            "vmdk grain table entry on the grain directory",
            "malformed",
            set_gte(0, (gd / 512) as u32),
        ),
        case(
            "vmdk grain table entry on its grain table",
            "malformed",
            set_gte(0, (gt / 512) as u32),
        ),
        case(
            "vmdk grain directory entry on the grain directory",
            "malformed",
            edit(k, |b| le32(b, gd, (gd / 512) as u32)),
        ),
        case(
            "vmdk grain directory entry on the descriptor",
            "malformed",
            edit(k, |b| le32(b, gd, 1)),
        ),
        case(
            "vmdk stream grain table entry on the grain directory",
            "malformed",
            edit(st, |b| le32(b, sgt, (sgd / 512) as u32)),
        ),
        case(
            "vmdk stream grain table entry on the footer",
            "malformed",
            edit(st, |b| le32(b, sgt, (st.len() / 512 - 2) as u32)),
        ),
        case(
            "vmdk stream compressed grain running into the next grain",
            "malformed",
            edit(st, |b| {
                let at = s_g0 as usize * 512;
                let next = LittleEndian::read_u32(&b[sgt + 8..]) as usize * 512;
                le32(b, at + 8, (next - at) as u32);
            }),
        ),
        // 3. Flag bits the specification leaves undefined (they must be zero).
        case(
            "vmdk sparse header flag bit 8",
            "malformed",
            edit(k, |b| le32(b, 8, flags | 1 << 8)),
        ),
        case(
            "vmdk stream header flag bit 20",
            "malformed",
            edit(st, |b| le32(b, 8, sflags | 1 << 20)),
        ),
        case(
            "vmdk sparse header with the zeroed-grain flag",
            "ok",
            edit(k, |b| le32(b, 8, flags | 1 << 2)),
        ),
        // 4. Sizes past the file.
        case(
            "vmdk overHead past the end of the file",
            "malformed",
            edit(k, |b| le64(b, K_OVERHEAD, (k.len() / 512 + 1) as u64)),
        ),
        case(
            "vmdk overHead at the end of the file",
            "ok",
            edit(k, |b| le64(b, K_OVERHEAD, (k.len() / 512) as u64)),
        ),
        case(
            "vmdk last grain past the end of the file",
            "malformed",
            set_gte(1, (k.len() / 512 - 64) as u32),
        ),
        // 6. Descriptors.
        case(
            "vmdk unknown createType",
            "unsupported",
            k_descriptor(k, "monolithicSparse", "monolithicSparse2"),
        ),
        case(
            "vmdk embedded createType monolithicFlat",
            "malformed",
            k_descriptor(k, "monolithicSparse", "monolithicFlat"),
        ),
        case(
            "vmdk embedded createType fullDevice",
            "unsupported",
            k_descriptor(k, "monolithicSparse", "fullDevice"),
        ),
        case(
            "vmdk embedded extent renamed (a renamed file keeps its old name)",
            "ok",
            k_descriptor(k, "SPARSE \"", "SPARSE \"renamed-"),
        ),
        case(
            "vmdk embedded FLAT extent",
            "malformed",
            k_descriptor(k, "SPARSE", "FLAT"),
        ),
        case(
            "vmdk embedded descriptor with a second extent",
            "malformed",
            k_descriptor(
                k,
                "\n# The Disk Data Base",
                "\nRW 100 ZERO\n# The Disk Data Base",
            ),
        ),
        case(
            "vmdk stream unknown createType",
            "unsupported",
            k_descriptor(st, "streamOptimized", "streamOptimised"),
        ),
        case(
            "vmdk stream grain table marker of 8 sectors",
            "malformed",
            edit(st, |b| le64(b, sgt - 512, 8)),
        ),
        case(
            "vmdk stream grain directory marker of 0 sectors",
            "malformed",
            edit(st, |b| le64(b, sgd - 512, 0)),
        ),
        case(
            "vmdk stream grain table marker typed as a directory",
            "malformed",
            edit(st, |b| le32(b, sgt - 512 + 12, 2)),
        ),
        case(
            "vmdk monolithicSparse with the directory at the end",
            "ok",
            k_gd_at_end(k),
        ),
        case(
            "vmdk directory at the end with a footer that disagrees",
            "malformed",
            edit(&k_gd_at_end(k), |b| {
                let f = b.len() - 1024;
                le64(b, f + K_CAPACITY, 2048);
            }),
        ),
    ];
    // Extents of a descriptor file that read the same bytes (references allowed).
    let two_mib = vec![b'D'; 2 * MIB as usize];
    v.extend([
        case(
            "vmdk two FLAT extents on the same bytes",
            "malformed",
            descriptor("RW 2048 FLAT \"data.raw\" 0\nRW 2048 FLAT \"data.raw\" 1024\n"),
        )
        .with("data.raw", two_mib.clone())
        .allow(),
        case(
            "vmdk two FLAT extents side by side in one file",
            "ok",
            descriptor("RW 2048 FLAT \"data.raw\" 2048\nRW 2048 FLAT \"data.raw\" 0\n"),
        )
        .with("data.raw", two_mib)
        .allow(),
        case(
            "vmdk one SPARSE extent twice",
            "malformed",
            descriptor("RW 4096 SPARSE \"s.vmdk\"\nRW 4096 SPARSE \"s.vmdk\"\n"),
        )
        .with("s.vmdk", k.clone())
        .allow(),
    ]);
    for name in [
        "/etc/passwd",
        "../outside.raw",
        "sub/base.vmdk",
        "C:\\disk.vmdk",
    ] {
        v.push(case(
            format!("vmdk embedded extent names {name}"),
            "malformed",
            k_descriptor(k, "SPARSE \"", &format!("SPARSE \"{name}\" #")),
        ));
    }
    // The front-to-back reader refuses the same stream markers and descriptors.
    for (name, kind, bytes) in [
        (
            "grain table marker of 8 sectors",
            "malformed",
            edit(st, |b| le64(b, sgt - 512, 8)),
        ),
        (
            "grain directory marker of 0 sectors",
            "malformed",
            edit(st, |b| le64(b, sgd - 512, 0)),
        ),
        (
            "unknown createType",
            "unsupported",
            k_descriptor(st, "streamOptimized", "streamOptimised"),
        ),
        (
            "extent naming /etc/passwd",
            "malformed",
            k_descriptor(st, "SPARSE \"", "SPARSE \"/etc/passwd\" #"),
        ),
    ] {
        v.push(case(format!("stream vmdk {name}"), kind, bytes).stream(Format::Vmdk));
    }
    v
}

/// A one-block ZVHD2 image whose only record's payload is `payload`, encoded with `compression`.
fn zvhd2_with_payload(
    compression: ims::formats::zvhd::Zvhd2Compression,
    payload: Vec<u8>,
) -> Vec<u8> {
    use ims::formats::zvhd::{BLOCK_SIZE, Zvhd2Writer, ZvhdCreateOptions};
    use ims::{BlockWriter, Piece};
    let mut out = Vec::new();
    {
        let sink = ims::io::PipeSink::new(&mut out);
        let options = ZvhdCreateOptions {
            compression,
            ..Default::default()
        };
        let mut w = Zvhd2Writer::new(sink, BLOCK_SIZE, &options).unwrap();
        w.write_piece(Piece::Encoded {
            offset: 0,
            length: BLOCK_SIZE,
            payload,
        })
        .unwrap();
        Box::new(w).finish().unwrap();
    }
    out
}

/// A deflate stream (flushed, not finished, as ZVHD records are) of `n` zero bytes.
fn deflate_sync_zeros(n: usize) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(1), true);
    let mut out = Vec::with_capacity(n / 500 + 4096);
    c.compress_vec(&vec![0u8; n], &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    out
}

/// A ZVHD image (one record, for block 0) whose record's payload is `payload`: tiny.zvhd's header
/// page, the record, and the header page again as the footer.
fn zvhd_with_payload(payload: &[u8]) -> Vec<u8> {
    let tiny = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/zvhd/tiny.zvhd"))
        .unwrap();
    let record = ims::formats::zvhd::record::encode_record(0, payload).unwrap();
    [&tiny[..PAGE], &record[..], &tiny[..PAGE]].concat()
}

fn zvhd_cases(b: &Bases) -> Vec<Case> {
    let z2 = zvhd2_vector();
    // tiny.zstd.zvhd2's layout (tests/zvhd.rs): header 0; records 4096 and 8192; middle footer
    // 77824; index 81920; bitmap 606208; final footer 610304.
    let mut v = Vec::new();
    for (what, at, kind) in [
        ("inside the header", 2000, "truncated"),
        ("after the header", 4096, "truncated"),
        ("after the first record", 8192, "truncated"),
        ("at the middle footer", 77_824, "malformed"),
        ("at the index", 81_920, "malformed"),
        ("at the bitmap", 606_208, "malformed"),
        ("at the final footer", 610_304, "malformed"),
    ] {
        v.push(case(format!("zvhd2 cut {what}"), kind, cut(&z2, at)));
    }
    // Decompression bombs: a record of a few KiB inflating to 16 MiB, far past its block.
    {
        use ims::formats::zvhd::Zvhd2Compression::{Zlib, Zstd};
        let zeros = vec![0u8; 16 << 20];
        v.push(case(
            "zvhd2 zstd record inflating to 16 MiB",
            "malformed",
            zvhd2_with_payload(Zstd, zstd::bulk::compress(&zeros, 3).unwrap()),
        ));
        v.push(case(
            "zvhd2 zlib record inflating to 16 MiB",
            "malformed",
            zvhd2_with_payload(Zlib, deflate_sync_zeros(16 << 20)),
        ));
        v.push(case(
            "zvhd record inflating to 16 MiB",
            "malformed",
            zvhd_with_payload(&deflate_sync_zeros(16 << 20)),
        ));
    }
    let z = &b.zvhd2;
    v.push(case(
        "zvhd2 (ims-made) cut before its footer",
        "malformed",
        cut(z, z.len() - PAGE),
    ));
    v.push(case(
        "zvhd2 (ims-made) cut mid-file",
        "malformed",
        cut(z, z.len() / 2 / PAGE * PAGE),
    ));
    let zv = &b.zvhd;
    for (what, at, kind) in [
        ("inside the header", 100, "truncated"),
        ("after the header", PAGE, "truncated"),
        ("inside the first record", 2 * PAGE + 100, "malformed"),
        ("before the footer", zv.len() - PAGE, "truncated"),
    ] {
        v.push(case(format!("zvhd cut {what}"), kind, cut(zv, at)));
    }
    v
}

/// The stream readers (a streamOptimized VMDK or a ZVHD arriving on a pipe) on the same damage.
fn stream_cases(b: &Bases) -> Vec<Case> {
    let st = &b.vmdk_stream;
    let overhead = LittleEndian::read_u64(&st[K_OVERHEAD..]) as usize * 512;
    let zv = &b.zvhd;
    let mut v = vec![
        case(
            "stream vmdk grain inflating past its size",
            "malformed",
            k_stream_bomb(st, 1 << 17),
        ),
        case(
            "stream vmdk grain inflating short",
            "malformed",
            k_stream_bomb(st, 100),
        ),
        case(
            "stream vmdk capacity 2^60 sectors",
            "limit-exceeded",
            edit(st, |b| le64(b, K_CAPACITY, 1 << 60)),
        ),
        case(
            "stream vmdk descriptor of 2^40 sectors",
            "limit-exceeded",
            edit(st, |b| le64(b, K_DESC_SIZE, 1 << 40)),
        ),
        case(
            "stream vmdk grain marker of 4 GiB",
            "malformed",
            edit(st, |b| le32(b, overhead + 8, u32::MAX)),
        ),
        case(
            "stream vmdk grain marker past the disk",
            "malformed",
            edit(st, |b| le64(b, overhead, 1 << 40)),
        ),
    ]
    .into_iter()
    .map(|c| c.stream(Format::Vmdk))
    .collect::<Vec<_>>();
    for (what, at, kind) in [
        ("inside the header", 40, "truncated"),
        // Cut at a marker boundary, the stream is well formed up to there but unterminated.
        ("after the descriptor", overhead, "malformed"),
        ("inside the first grain", overhead + 100, "truncated"),
        ("before the footer", st.len() - 1024, "truncated"),
        (
            "before the end-of-stream marker",
            st.len() - 512,
            "malformed",
        ),
    ] {
        v.push(case(format!("stream vmdk cut {what}"), kind, cut(st, at)).stream(Format::Vmdk));
    }
    for (what, at, kind) in [
        ("inside the header", 100, "truncated"),
        ("after the header", PAGE, "truncated"),
        ("inside the first record", 2 * PAGE + 100, "truncated"),
        ("before the footer", zv.len() - PAGE, "truncated"),
    ] {
        v.push(case(format!("stream zvhd cut {what}"), kind, cut(zv, at)).stream(Format::Zvhd));
    }
    v
}

fn polyglot_cases(b: &Bases) -> Vec<Case> {
    let vhd_tail = b.vhd_fixed[b.vhd_fixed.len() - 512..].to_vec();
    let with_vhd_footer = |base: &[u8]| [base, &vhd_tail[..]].concat();
    let mut iso_qcow2 = b.qcow2.clone();
    iso_qcow2[0x8001..0x8006].copy_from_slice(b"CD001");
    let mut kdmv_gpt = gpt_disk();
    kdmv_gpt[..4].copy_from_slice(b"KDMV");
    let mut vdi = vec![0u8; 1 << 16];
    vdi[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
    let mut luks = vec![0u8; 1 << 16];
    luks[..6].copy_from_slice(b"LUKS\xba\xbe");
    let mut vhdx = vec![0u8; 1 << 16];
    vhdx[..8].copy_from_slice(b"vhdxfile");
    let mut qcow2_in_vhd = b.vhd_fixed.clone();
    qcow2_in_vhd[..104].copy_from_slice(&b.qcow2[..104]);
    let mut v = vec![
        case(
            "polyglot qcow2 with a VHD footer",
            "ambiguous",
            with_vhd_footer(&b.qcow2),
        ),
        // Issue 20: naming the format no longer lifts the ambiguity.
        case(
            "polyglot qcow2 with a VHD footer, named qcow2",
            "ambiguous",
            with_vhd_footer(&b.qcow2),
        )
        .format(Format::Qcow2),
        case(
            "polyglot VMDK sparse with a VHD footer",
            "ambiguous",
            with_vhd_footer(&b.vmdk_sparse),
        ),
        case(
            "polyglot VMDK descriptor with a VHD footer",
            "ambiguous",
            with_vhd_footer(&[flat("x"), vec![b'\n'; 1024]].concat()),
        ),
        case(
            "polyglot ZVHD2 with a VHD footer",
            "ambiguous",
            with_vhd_footer(&b.zvhd2),
        ),
        case(
            "polyglot fixed VHD whose data starts with a qcow2 header",
            "ambiguous",
            qcow2_in_vhd,
        ),
        case(
            "polyglot VDI with a VHD footer",
            "ambiguous",
            with_vhd_footer(&vdi),
        ),
        // Issue 20: at 32 KiB of a qcow2 with 64 KiB clusters the descriptor lies in the header
        // cluster, where no guest data is: the file is an ISO and a qcow2 at once. (A qcow2 whose
        // guest holds an ISO reads: see polyglot_named_cases.)
        case(
            "polyglot qcow2 with an ISO 9660 descriptor",
            "ambiguous",
            iso_qcow2,
        ),
        // KDMV at offset 0 of a GPT disk: the one strong signature is VMDK's, whose header is junk.
        case("polyglot GPT disk starting KDMV", "unsupported", kdmv_gpt),
        case("polyglot GPT disk starting KDMV, named raw", "ok", {
            let mut g = gpt_disk();
            g[..4].copy_from_slice(b"KDMV");
            g
        })
        .format(Format::Raw),
        case("recognised and refused: VDI", "unsupported", vdi),
        case("recognised and refused: LUKS", "unsupported", luks),
        case("VHDX shorter than its header section", "truncated", vhdx),
    ];
    v.extend(polyglot_named_cases(b));
    v
}

// Issue 20: inconsistent structure (polyglots refused even with -f; cloop and DMG named).

/// `raw` (DISK bytes) converted by ims into `format` with `opts`.
fn made_from(raw: &[u8], format: Format, opts: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    std::fs::write(&src, raw).unwrap();
    let out = dir.path().join("out.img");
    let options = OpenOptions {
        format: Some(Format::Raw),
        ..Default::default()
    };
    let image = ims::open(&src, &options).unwrap();
    let pairs: Vec<(String, String)> = opts
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let create = CreateOptions::from_pairs(format, &pairs, false).unwrap();
    let w = ims::create(format, Target::File(out.clone()), DISK, &create).unwrap();
    ims::convert(image, w, &Default::default(), &mut |_| {}).unwrap();
    std::fs::read(&out).unwrap()
}

fn polyglot_named_cases(b: &Bases) -> Vec<Case> {
    let vhd_tail = &b.vhd_fixed[b.vhd_fixed.len() - 512..];
    let zvhd2_tail = &b.zvhd2[b.zvhd2.len() - 4096..];
    let with = |base: &[u8], tail: &[u8]| [base, tail].concat();
    let starting = |base: &[u8], head: &[u8]| edit(base, |b| b[..head.len()].copy_from_slice(head));
    // An ISO 9660 image (the primary volume descriptor at 32 KiB).
    let mut iso = vec![0u8; DISK as usize];
    iso[0x8000] = 1;
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    let qcow2_iso = starting(&iso, &b.qcow2[..104]);
    let mbr_gpt_qcow2 = edit(&b.qcow2, |q| {
        q[446 + 4] = 0xee;
        q[510] = 0x55;
        q[511] = 0xaa;
    });
    let mut cloop = b"#!/bin/sh\n#V2.0 Format: cloop\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\nexit $?\n".to_vec();
    cloop.resize(1 << 16, 0);
    let mut dmg = vec![0u8; 1 << 16];
    dmg[(1 << 16) - 512..(1 << 16) - 508].copy_from_slice(b"koly");
    vec![
        // A second format's signature at its own place, the first format named.
        case(
            "polyglot fixed VHD whose data starts with a qcow2 header, named vhd",
            "ambiguous",
            starting(&b.vhd_fixed, &b.qcow2[..104]),
        )
        .format(Format::Vhd),
        case(
            "polyglot fixed VHD whose data starts with KDMV, named vhd",
            "ambiguous",
            starting(&b.vhd_fixed, &b.vmdk_sparse[..512]),
        )
        .format(Format::Vhd),
        case(
            "polyglot fixed VHD whose data starts with a VMDK descriptor, named vhd",
            "ambiguous",
            starting(&b.vhd_fixed, &flat("x")),
        )
        .format(Format::Vhd),
        case(
            "polyglot VMDK sparse with a VHD footer, named vmdk",
            "ambiguous",
            with(&b.vmdk_sparse, vhd_tail),
        )
        .format(Format::Vmdk),
        case(
            "polyglot qcow2 with a ZVHD2 footer",
            "ambiguous",
            with(&b.qcow2, zvhd2_tail),
        ),
        case(
            "polyglot qcow2 with a ZVHD2 footer, named qcow2",
            "ambiguous",
            with(&b.qcow2, zvhd2_tail),
        )
        .format(Format::Qcow2),
        case(
            "polyglot VMDK sparse with a ZVHD2 footer, named vmdk",
            "ambiguous",
            with(&b.vmdk_sparse, zvhd2_tail),
        )
        .format(Format::Vmdk),
        // Signatures inside the qcow2 header cluster.
        case(
            "polyglot ISO with a qcow2 header at 0",
            "ambiguous",
            qcow2_iso.clone(),
        ),
        case(
            "polyglot ISO with a qcow2 header at 0, named qcow2",
            "ambiguous",
            qcow2_iso.clone(),
        )
        .format(Format::Qcow2),
        case(
            "polyglot ISO with a qcow2 header at 0, named raw",
            "ok",
            qcow2_iso,
        )
        .format(Format::Raw),
        case(
            "polyglot qcow2 header sector with an MBR and a protective GPT entry",
            "ambiguous",
            mbr_gpt_qcow2.clone(),
        ),
        case(
            "polyglot qcow2 header sector with an MBR and a protective GPT entry, named qcow2",
            "ambiguous",
            mbr_gpt_qcow2,
        )
        .format(Format::Qcow2),
        // Legitimate: the other format's structure is the guest's data.
        case("raw GPT disk", "ok", gpt_disk()),
        case(
            "qcow2 whose first guest sector is a protective MBR",
            "ok",
            made_from(&gpt_disk(), Format::Qcow2, &[]),
        )
        .format(Format::Qcow2),
        case(
            "qcow2 whose guest is an ISO",
            "ok",
            made_from(&iso, Format::Qcow2, &[]),
        ),
        case(
            "fixed VHD of a GPT disk, named vhd",
            "ok",
            made_from(&gpt_disk(), Format::Vhd, &[("subformat", "fixed")]),
        )
        .format(Format::Vhd),
        case(
            "fixed VHD of an ISO, named vhd",
            "ok",
            made_from(&iso, Format::Vhd, &[("subformat", "fixed")]),
        )
        .format(Format::Vhd),
        // Recognised and refused by name.
        case("recognised and refused: cloop", "unsupported", cloop),
        case("recognised and refused: DMG", "unsupported", dmg),
    ]
}

// ---- ISO 9660: the volume descriptor set and the El Torito boot catalog. ----

const ISO_SECTOR: usize = 2048;
/// Sectors of the test ISO: 16 of system area, the primary descriptor (16), the boot record
/// (17), the terminator (18), the boot catalog (19), the root directory (20), two boot images
/// (21, 22), and room after the catalog for one that runs on to its 64 KiB cap.
const ISO_SECTORS: usize = 64;
const ISO_CATALOG: usize = 19 * ISO_SECTOR;

/// A hybrid (BIOS and UEFI) ISO built field by field (formats/iso.md).
fn iso_base() -> Vec<u8> {
    let mut b = vec![0u8; ISO_SECTORS * ISO_SECTOR];
    let both32 = |b: &mut [u8], at: usize, v: u32| {
        LittleEndian::write_u32(&mut b[at..], v);
        BigEndian::write_u32(&mut b[at + 4..], v);
    };
    let descriptor = |b: &mut [u8], sector: usize, kind: u8| {
        let at = sector * ISO_SECTOR;
        b[at] = kind;
        b[at + 1..at + 6].copy_from_slice(b"CD001");
        b[at + 6] = 1;
        at
    };
    let pvd = descriptor(&mut b, 16, 1);
    b[pvd + 40..pvd + 48].copy_from_slice(b"HOSTILE ");
    both32(&mut b, pvd + 80, ISO_SECTORS as u32);
    LittleEndian::write_u16(&mut b[pvd + 128..], 2048);
    BigEndian::write_u16(&mut b[pvd + 130..], 2048);
    b[pvd + 156] = 34;
    both32(&mut b, pvd + 158, 20);
    both32(&mut b, pvd + 166, 2048);
    b[pvd + 156 + 25] = 2;
    b[pvd + 156 + 32] = 1;
    let br = descriptor(&mut b, 17, 0);
    b[br + 7..br + 30].copy_from_slice(b"EL TORITO SPECIFICATION");
    LittleEndian::write_u32(&mut b[br + 0x47..], 19);
    descriptor(&mut b, 18, 255);
    // The catalog: validation entry (x86), default entry, one EFI section of one entry.
    let c = ISO_CATALOG;
    b[c] = 1;
    b[c + 30] = 0x55;
    b[c + 31] = 0xaa;
    iso_fix_checksum(&mut b);
    b[c + 32] = 0x88;
    LittleEndian::write_u16(&mut b[c + 38..], 4);
    LittleEndian::write_u32(&mut b[c + 40..], 21);
    b[c + 64] = 0x91;
    b[c + 65] = 0xef;
    LittleEndian::write_u16(&mut b[c + 66..], 1);
    b[c + 96] = 0x88;
    LittleEndian::write_u16(&mut b[c + 102..], 4);
    LittleEndian::write_u32(&mut b[c + 104..], 22);
    // The root directory: `.` and `..`.
    for (i, name) in [0u8, 1].into_iter().enumerate() {
        let r = 20 * ISO_SECTOR + 34 * i;
        b[r] = 34;
        both32(&mut b, r + 2, 20);
        both32(&mut b, r + 10, 2048);
        b[r + 25] = 2;
        b[r + 32] = 1;
        b[r + 33] = name;
    }
    b
}

/// The validation entry's words must sum to zero.
fn iso_fix_checksum(b: &mut [u8]) {
    let v = &mut b[ISO_CATALOG..ISO_CATALOG + 32];
    v[28] = 0;
    v[29] = 0;
    let sum = v
        .chunks_exact(2)
        .fold(0u16, |s, w| s.wrapping_add(LittleEndian::read_u16(w)));
    LittleEndian::write_u16(&mut v[28..], 0u16.wrapping_sub(sum));
}

fn iso_cases() -> Vec<Case> {
    let base = iso_base();
    let c = ISO_CATALOG;
    let br = 17 * ISO_SECTOR;
    let catalog_at = |sector: u32| {
        edit(&base, |b| {
            LittleEndian::write_u32(&mut b[br + 0x47..], sector)
        })
    };
    vec![
        case("iso: a valid hybrid ISO", "ok", base.clone()),
        case("iso: a valid hybrid ISO, named iso", "ok", base.clone()).format(Format::Iso),
        case(
            "iso: boot catalog outside the file",
            "malformed",
            catalog_at(0x00ff_ffff),
        ),
        case(
            "iso: boot catalog at u32::MAX",
            "malformed",
            catalog_at(u32::MAX),
        ),
        case(
            "iso: boot catalog over the volume descriptors",
            "malformed",
            catalog_at(16),
        ),
        case(
            "iso: boot catalog at the end of the file",
            "malformed",
            catalog_at(ISO_SECTORS as u32),
        ),
        case(
            "iso: validation entry checksum wrong",
            "malformed",
            edit(&base, |b| b[c + 4] ^= 0xff),
        ),
        case(
            "iso: validation entry without its key bytes",
            "malformed",
            edit(&base, |b| {
                b[c + 31] = 0;
                iso_fix_checksum(b);
            }),
        ),
        case(
            "iso: boot indicator neither 0x88 nor 0",
            "malformed",
            edit(&base, |b| b[c + 96] = 0x77),
        ),
        case(
            "iso: unknown boot media type",
            "malformed",
            edit(&base, |b| b[c + 97] = 9),
        ),
        case(
            "iso: boot image outside the file",
            "malformed",
            edit(&base, |b| {
                LittleEndian::write_u32(&mut b[c + 104..], u32::MAX)
            }),
        ),
        case(
            "iso: boot image running past the end",
            "malformed",
            edit(&base, |b| {
                LittleEndian::write_u16(&mut b[c + 102..], u16::MAX)
            }),
        ),
        case(
            "iso: section header claiming 65535 entries",
            "limit-exceeded",
            edit(&base, |b| {
                LittleEndian::write_u16(&mut b[c + 66..], u16::MAX);
                for e in b[c + 96..c + (64 << 10)].chunks_exact_mut(32) {
                    e.fill(0);
                }
            }),
        ),
        case(
            "iso: section headers that never end",
            "limit-exceeded",
            edit(&base, |b| {
                for e in b[c + 64..c + (64 << 10)].chunks_exact_mut(32) {
                    e.fill(0);
                    e[0] = 0x90;
                }
            }),
        ),
        case(
            "iso: section header promising more that never come",
            "malformed",
            edit(&base, |b| b[c + 64] = 0x90),
        ),
        case(
            "iso: extension entry announced and absent",
            "malformed",
            edit(&base, |b| b[c + 97] = 0x20),
        ),
        case(
            "iso: descriptor set without a terminator",
            "malformed",
            edit(&base, |b| b[18 * ISO_SECTOR + 1] = b'X'),
        ),
        case(
            "iso: descriptors without a terminator to the cap",
            "limit-exceeded",
            {
                let mut b = base.clone();
                b.resize((16 + 70) * ISO_SECTOR, 0);
                BigEndian::write_u32(&mut b[16 * ISO_SECTOR + 84..], 86);
                LittleEndian::write_u32(&mut b[16 * ISO_SECTOR + 80..], 86);
                for s in 18..86 {
                    let at = s * ISO_SECTOR;
                    b[at..at + ISO_SECTOR].fill(0);
                    b[at] = 3;
                    b[at + 1..at + 6].copy_from_slice(b"CD001");
                    b[at + 6] = 1;
                }
                b
            },
        ),
        case(
            "iso: no primary volume descriptor",
            "malformed",
            edit(&base, |b| b[16 * ISO_SECTOR] = 3),
        ),
        case(
            "iso: unknown descriptor type",
            "malformed",
            edit(&base, |b| b[17 * ISO_SECTOR] = 42),
        ),
        case(
            "iso: two El Torito boot records",
            "malformed",
            edit(&base, |b| {
                let (a, z) = (17 * ISO_SECTOR, 18 * ISO_SECTOR);
                b.copy_within(a..z, z);
                b[19 * ISO_SECTOR..20 * ISO_SECTOR].fill(0);
                b[19 * ISO_SECTOR] = 255;
                b[19 * ISO_SECTOR + 1..19 * ISO_SECTOR + 6].copy_from_slice(b"CD001");
                b[19 * ISO_SECTOR + 6] = 1;
            }),
        ),
        case(
            "iso: truncated (the volume is larger than the file)",
            "truncated",
            cut(&base, 40 * ISO_SECTOR),
        ),
        case(
            "iso: volume size copies disagree",
            "malformed",
            edit(&base, |b| b[16 * ISO_SECTOR + 87] ^= 1),
        ),
        case(
            "iso: root directory outside the volume",
            "malformed",
            edit(&base, |b| {
                LittleEndian::write_u32(&mut b[16 * ISO_SECTOR + 158..], 1000);
                BigEndian::write_u32(&mut b[16 * ISO_SECTOR + 162..], 1000);
            }),
        ),
        case(
            "iso: 512-byte logical blocks",
            "unsupported",
            edit(&base, |b| {
                LittleEndian::write_u16(&mut b[16 * ISO_SECTOR + 128..], 512);
                BigEndian::write_u16(&mut b[16 * ISO_SECTOR + 130..], 512);
            }),
        ),
        case(
            "iso: named iso without a volume descriptor",
            "malformed",
            vec![0u8; ISO_SECTORS * ISO_SECTOR],
        )
        .format(Format::Iso),
    ]
}

// ---- The runner. ----

/// Opens `img` and reads everything: the map and every byte of a random-access disk, every chunk
/// of a stream.
fn open_and_read(img: &Path, format: Option<Format>, allow: Option<&Path>) -> ims::Result<()> {
    let options = OpenOptions {
        format,
        references: allow.map_or(References::Deny, |d| References::Confined(d.to_path_buf())),
    };
    let image = ims::open(img, &options)?;
    // What `ims info` reports walks the format's own metadata (snapshots, locators, extents).
    let _ = image.info();
    if let Some(r) = image.reader() {
        let size = r.virtual_size();
        r.map(0, size)?;
        let mut buf = vec![0u8; MIB as usize];
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(MIB);
            r.read_at(&mut buf[..n as usize], pos)?;
            pos += n;
        }
    }
    let mut stream = image.into_source().into_stream(MIB as usize);
    while stream.next_chunk()?.is_some() {}
    Ok(())
}

/// Reads `img` front to back as a stream of `format`, as from a pipe.
fn read_stream(img: &Path, format: Format) -> ims::Result<()> {
    let file = std::fs::File::open(img).unwrap();
    let image = ims::open_stream(Box::new(file), format, "stdin")?;
    let mut stream = image.into_source().into_stream(MIB as usize);
    while stream.next_chunk()?.is_some() {}
    Ok(())
}

const OLD: Duration = Duration::from_secs(946_684_800); // 2000-01-01

fn age(path: &Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_times(std::fs::FileTimes::new().set_accessed(SystemTime::UNIX_EPOCH + OLD))
        .unwrap();
}

fn untouched(path: &Path) -> bool {
    std::fs::metadata(path).unwrap().accessed().unwrap() == SystemTime::UNIX_EPOCH + OLD
}

/// Whether reading a file updates its access time here (relatime does, for an old atime).
fn atime_works(root: &Path) -> bool {
    let p = root.join("probe-atime");
    std::fs::write(&p, b"x").unwrap();
    age(&p);
    let _ = std::fs::read(&p).unwrap();
    let ok = !untouched(&p);
    if !ok {
        eprintln!(
            "hostile: reads do not update access times here (noatime); sentinel checks skipped"
        );
    }
    ok
}

/// Makes a case's extra files in `dir`.
fn make_extras(dir: &Path, extras: &[Extra]) {
    for extra in extras {
        match extra {
            Extra::File(name, bytes) => std::fs::write(dir.join(name), bytes).unwrap(),
            Extra::Link(name, target) => {
                std::os::unix::fs::symlink(target, dir.join(name)).unwrap()
            }
            Extra::Fifo(name) => {
                let st = std::process::Command::new("mkfifo")
                    .arg(dir.join(name))
                    .status()
                    .unwrap();
                assert!(st.success());
            }
        }
    }
}

/// How long any one case may run before the watchdog stops it (the cases must take under 2 s;
/// this only keeps a hang from stalling the suite).
const WATCHDOG: Duration = Duration::from_secs(20);
/// The most memory any one case may use (peak resident set).
const MAX_RSS_KIB: i64 = 256 * 1024;

/// What one run of the `ims` binary did.
struct Run {
    code: Option<i32>,
    stderr: String,
    took: Duration,
    /// Peak resident set of that process alone.
    max_rss_kib: i64,
    /// Whether the watchdog killed it.
    hung: bool,
}

/// Runs each `ims` command for [`Spawner::run`] from a small Python process. A child's peak
/// resident set, as the kernel reports it to `wait4`, starts from its parent's at the time of
/// the fork (Linux keeps the old memory's high-water mark across `exec`), so children spawned
/// from this large multi-threaded test process would all report its size; spawned from a
/// ~10 MiB Python process, they report their own.
struct Spawner {
    child: std::process::Child,
    replies: std::io::BufReader<std::process::ChildStdout>,
}

const SPAWNER: &str = r#"
import json, os, subprocess, sys, threading, time
ims, limit = sys.argv[1], float(sys.argv[2])
for line in sys.stdin:
    args = json.loads(line)
    start = time.monotonic()
    p = subprocess.Popen([ims] + args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = []
    t = threading.Thread(target=lambda: err.append(p.stderr.read()))
    t.start()
    hung = False
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        if not hung and time.monotonic() - start > limit:
            p.kill()
            hung = True
        time.sleep(0.001)
    took = time.monotonic() - start
    p.returncode = 0
    t.join()
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    print(json.dumps({"code": code, "stderr": err[0].decode("utf-8", "replace"), "took": took,
                      "rss": usage.ru_maxrss, "hung": hung}), flush=True)
"#;

impl Spawner {
    fn start() -> Spawner {
        use std::process::{Command, Stdio};
        let mut child = Command::new("python3")
            .args(["-c", SPAWNER, env!("CARGO_BIN_EXE_ims")])
            .arg(WATCHDOG.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (every machine has it) runs the spawner");
        let replies = std::io::BufReader::new(child.stdout.take().unwrap());
        Spawner { child, replies }
    }

    /// Runs `ims` with `args`; the watchdog kills it after [`WATCHDOG`].
    fn run(&mut self, args: &[&str]) -> Run {
        use std::io::BufRead;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", serde_json::to_string(args).unwrap()).unwrap();
        let mut line = String::new();
        self.replies.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("a spawner reply");
        Run {
            code: v["code"].as_i64().map(|c| c as i32),
            stderr: v["stderr"].as_str().unwrap_or_default().to_string(),
            took: Duration::from_secs_f64(v["took"].as_f64().unwrap()),
            max_rss_kib: v["rss"].as_i64().unwrap(),
            hung: v["hung"].as_bool().unwrap(),
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Peak resident set of this test process so far.
fn own_max_rss_kib() -> i64 {
    // SAFETY: rusage is plain data that getrusage fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    usage.ru_maxrss
}

/// Runs `f` on its own thread and fails the test, naming `what`, if it does not end within
/// [`WATCHDOG`].
fn watched<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(v) => v,
        Err(_) => panic!("{what}: still running after {WATCHDOG:?} (a hang)"),
    }
}

fn run_cases(root: &Path, cases: Vec<Case>) {
    let outside = root.join("outside.raw");
    let check_atime = atime_works(root);
    let mut failures = Vec::new();
    for (i, c) in cases.into_iter().enumerate() {
        let dir = root.join(format!("c{i}"));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let img = dir.join("img");
        c.place(&img);
        make_extras(&dir, &c.extra);
        let sentinel = dir.join("sentinel.raw");
        std::fs::write(&sentinel, vec![b'S'; DISK as usize]).unwrap();
        age(&sentinel);
        age(&outside);
        let allow = c.allow.then(|| dir.clone());
        let (stream, format, image) = (c.stream, c.format, img.clone());
        let (result, took) = watched(&c.name, move || {
            let start = Instant::now();
            let result = std::panic::catch_unwind(|| match stream {
                Some(f) => read_stream(&image, f),
                None => open_and_read(&image, format, allow.as_deref()),
            });
            (result, start.elapsed())
        });
        let got = match &result {
            Err(_) => "panic".to_string(),
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(e)) => e.kind().to_string(),
        };
        let detail = match &result {
            Ok(Err(e)) => e.to_string(),
            _ => String::new(),
        };
        if got != c.expect {
            failures.push(format!(
                "{}: expected {}, got {got} ({detail})",
                c.name, c.expect
            ));
        }
        if took > Duration::from_secs(2) {
            failures.push(format!("{}: took {took:?}", c.name));
        }
        if check_atime {
            if c.reads_sentinel && untouched(&sentinel) {
                failures.push(format!("{}: the control did not read the sentinel", c.name));
            }
            let watched = if c.reads_sentinel {
                vec![&outside]
            } else {
                vec![&sentinel, &outside]
            };
            for p in watched {
                if !untouched(p) {
                    failures.push(format!("{}: read {}", c.name, p.display()));
                }
            }
        }
    }
    // Each case's own peak is asserted under MAX_RSS_KIB where it can be measured alone: in
    // `cli_commands_survive_every_hostile_image`, one process per case. Here the tests of this
    // file share one process and run at once, so only a runaway allocation is caught.
    let rss = own_max_rss_kib();
    eprintln!("this test process peaked at {rss} KiB (every test of this file so far)");
    assert!(
        rss < 4 * MAX_RSS_KIB,
        "this test process peaked at {rss} KiB reading the hostile cases"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every case, its image spooled under `root`/spool; the sentinel outside each case's
/// directory is `root`/outside.raw.
fn all_cases(root: &Path) -> Vec<Case> {
    let b = bases(root);
    let outside = root.join("outside.raw");
    std::fs::write(&outside, vec![b'O'; DISK as usize]).unwrap();
    let outside = s(&outside);
    let spool = root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let groups: [&dyn Fn() -> Vec<Case>; 7] = [
        &|| qcow2_cases(&b, outside),
        &|| vhd_cases(&b, outside),
        &|| vmdk_cases(&b, outside),
        &|| zvhd_cases(&b),
        &|| stream_cases(&b),
        &|| polyglot_cases(&b),
        &iso_cases,
    ];
    let mut all = Vec::new();
    for group in groups {
        for mut c in group() {
            let p = spool.join(all.len().to_string());
            std::fs::write(&p, std::mem::take(&mut c.bytes)).unwrap();
            c.spooled = Some(p);
            all.push(c);
        }
    }
    all
}

#[test]
fn hostile_images_fail_cleanly_and_open_no_other_file() {
    let root = tempfile::tempdir().unwrap();
    let cases = all_cases(root.path());
    eprintln!("{} hostile cases", cases.len());
    assert!(cases.len() >= 80);
    run_cases(root.path(), cases);
}

/// `ims check` walks the qcow2 tables with its own code (refcounts, every L2 table): on every
/// hostile image it must answer (an error or a report) quickly, without a panic or another file.
#[test]
fn check_answers_every_hostile_image() {
    let root = tempfile::tempdir().unwrap();
    let cases = all_cases(root.path());
    let outside = root.path().join("outside.raw");
    let check_atime = atime_works(root.path());
    let mut failures = Vec::new();
    for (i, c) in cases.into_iter().enumerate() {
        if c.stream.is_some() || c.reads_sentinel {
            continue;
        }
        let dir = root.path().join(format!("k{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("img");
        c.place(&img);
        let sentinel = dir.join("sentinel.raw");
        std::fs::write(&sentinel, vec![b'S'; 4096]).unwrap();
        age(&sentinel);
        age(&outside);
        let options = OpenOptions {
            format: c.format,
            ..Default::default()
        };
        let start = Instant::now();
        let result = std::panic::catch_unwind(|| ims::check(&img, &options));
        let took = start.elapsed();
        let got = match &result {
            Err(_) => "panic".to_string(),
            Ok(Ok(ims::CheckOutcome::Checked(r))) => {
                format!("ok {}", serde_json::to_string(r).unwrap())
            }
            Ok(Ok(_)) => "ok".to_string(),
            Ok(Err(e)) => e.kind().to_string(),
        };
        eprintln!("check {}: {got}", c.name);
        if got == "panic" {
            failures.push(format!("{}: check panicked", c.name));
        }
        if took > Duration::from_secs(2) {
            failures.push(format!("{}: check took {took:?}", c.name));
        }
        if check_atime && (!untouched(&sentinel) || !untouched(&outside)) {
            failures.push(format!("{}: check read another file", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every CLI command that reads an image (`info`, `map`, `check`, `inspect`, `convert`,
/// `register`) answers every hostile image with an exit status, not a crash, within 2 seconds,
/// under 256 MiB of memory, opening no other file. Each run is its own process, so its peak
/// memory is its own (see [`Spawner`]), and a watchdog kills a hung one.
#[test]
fn cli_commands_survive_every_hostile_image() {
    let root = tempfile::tempdir().unwrap();
    let cases = all_cases(root.path());
    let outside = root.path().join("outside.raw");
    let check_atime = atime_works(root.path());
    let mut failures = Vec::new();
    let mut peak = (0, String::new());
    let mut spawner = Spawner::start();
    for (i, c) in cases.into_iter().enumerate() {
        if c.stream.is_some() || c.reads_sentinel {
            continue;
        }
        let dir = root.path().join(format!("x{i}"));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let img = dir.join("img");
        c.place(&img);
        make_extras(&dir, &c.extra);
        let sentinel = dir.join("sentinel.raw");
        std::fs::write(&sentinel, vec![b'S'; 4096]).unwrap();
        let home = dir.join("home");
        let converted = dir.join("out.qcow2");
        for cmd in ["info", "map", "check", "inspect", "convert", "register"] {
            age(&sentinel);
            age(&outside);
            let mut args = vec![cmd];
            if cmd == "register" {
                // Registration opens with the strict policy: no -f, no references.
                args.extend(["--output", "json", "--name", "hostile", "--type", "data"]);
                args.extend(["--home", s(&home)]);
            } else {
                if cmd == "convert" {
                    args.extend(["-O", "qcow2"]);
                } else {
                    args.extend(["--output", "json"]);
                }
                if let Some(f) = c.format {
                    args.extend(["-f", f.name()]);
                }
                if c.allow {
                    args.extend(["--allow-references", s(&dir)]);
                }
            }
            args.push(s(&img));
            if cmd == "convert" {
                args.push(s(&converted));
            }
            let r = spawner.run(&args);
            let what = format!("{} {cmd}", c.name);
            let allowed: &[i32] = match cmd {
                "check" => &[0, 1, 2, 3, 63],
                "inspect" | "info" | "map" | "convert" | "register" => &[0, 1],
                _ => unreachable!(),
            };
            if r.hung {
                failures.push(format!("{what}: killed by the watchdog after {WATCHDOG:?}"));
            } else if !r.code.is_some_and(|c| allowed.contains(&c))
                || r.stderr.contains("panicked")
                || r.stderr.contains("Usage:")
            {
                failures.push(format!("{what}: exit {:?}: {}", r.code, r.stderr));
            }
            if r.took > Duration::from_secs(2) {
                failures.push(format!("{what}: took {:?}", r.took));
            }
            if r.max_rss_kib >= MAX_RSS_KIB {
                failures.push(format!("{what}: peak memory {} KiB", r.max_rss_kib));
            }
            if r.max_rss_kib > peak.0 {
                peak = (r.max_rss_kib, what.clone());
            }
            if check_atime && (!untouched(&sentinel) || !untouched(&outside)) {
                failures.push(format!("{what}: read another file"));
            }
        }
    }
    eprintln!("largest peak memory: {} KiB ({})", peak.0, peak.1);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Recomputes a ZVHD/ZVHD2 header or footer page's checksum.
fn zvhd_reseal(b: &mut [u8], at: usize) {
    use ims::formats::zvhd::header::{FIELDS_LEN, checksum};
    b[at + 64..at + 68].fill(0);
    let fields: [u8; FIELDS_LEN] = b[at..at + FIELDS_LEN].try_into().unwrap();
    b[at + 64..at + 68].copy_from_slice(&checksum(&fields).to_le_bytes());
}

/// Random damage to the metadata of every format (checksums resealed, so the damage reaches the
/// parsers behind them): never a panic, never more than 2 seconds, never another file. `SEED=n`
/// changes the damage (for a longer hunt, raise the count too).
#[test]
fn mutated_metadata_never_panics() {
    let root = tempfile::tempdir().unwrap();
    let b = bases(root.path());
    let outside = root.path().join("outside.raw");
    std::fs::write(&outside, b"O").unwrap();
    let check_atime = atime_works(root.path());
    let dir = root.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    let sentinel = dir.join("sentinel.raw");
    std::fs::write(&sentinel, b"S").unwrap();
    let img = dir.join("img");
    let q = &b.qcow2;
    let qc = &b.qcow2_compressed;
    let d = &b.vhd_dynamic;
    let k = &b.vmdk_sparse;
    let st = &b.vmdk_stream;
    let z2 = &b.zvhd2;
    let zv = &b.zvhd;
    type Reseal = fn(&mut [u8]);
    let vhd_reseal: Reseal = |b| {
        let n = b.len();
        for at in [0, n - 512] {
            let sum = vhd_sum(&b[at..at + 512], 64);
            be32(b, at + 64, sum);
        }
        let sum = vhd_sum(&b[512..1536], 36);
        be32(b, 512 + 36, sum);
    };
    let zvhd2_reseal: Reseal = |b| {
        let n = b.len();
        zvhd_reseal(b, 0);
        zvhd_reseal(b, n - PAGE);
    };
    let zvhd_reseal: Reseal = |b| zvhd_reseal(b, 0);
    let none: Reseal = |_| {};
    let q_meta = |b: &[u8]| {
        vec![
            0..512,
            q_l1(b)..q_l1(b) + 64,
            q_l2(b)..q_l2(b) + 512,
            q_rc(b)..q_rc(b) + 64,
        ]
    };
    // (name, base, metadata ranges to damage, reseal, stream format)
    type Mutated<'a> = (
        &'a str,
        &'a Vec<u8>,
        Vec<std::ops::Range<usize>>,
        Reseal,
        Option<Format>,
    );
    let targets: Vec<Mutated> = vec![
        ("qcow2", q, q_meta(q), none, None),
        ("qcow2 compressed", qc, q_meta(qc), none, None),
        (
            "vhd",
            d,
            vec![0..1536, vhd_bat(d)..vhd_bat(d) + 8, d.len() - 512..d.len()],
            vhd_reseal,
            None,
        ),
        (
            "vmdk sparse",
            k,
            vec![0..2048, k_gd(k)..k_gd(k) + 8, k_gt(k)..k_gt(k) + 512],
            none,
            None,
        ),
        (
            "vmdk stream",
            st,
            vec![0..1024, st.len() - 2048..st.len()],
            none,
            None,
        ),
        (
            "vmdk stream (pipe)",
            st,
            vec![0..1024, st.len() - 2048..st.len()],
            none,
            Some(Format::Vmdk),
        ),
        (
            "zvhd (pipe)",
            zv,
            vec![0..512, PAGE..PAGE + 64, 2 * PAGE..2 * PAGE + 64],
            zvhd_reseal,
            Some(Format::Zvhd),
        ),
        (
            "zvhd",
            zv,
            vec![0..512, PAGE..PAGE + 64, 2 * PAGE..2 * PAGE + 64],
            zvhd_reseal,
            None,
        ),
        (
            "zvhd2",
            z2,
            vec![0..512, z2.len() - PAGE..z2.len() - PAGE + 512],
            zvhd2_reseal,
            None,
        ),
    ];
    let mut rng = common::Rng::new(std::env::var("SEED").map_or(11, |s| s.parse().unwrap()));
    let mut failures = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for (name, base, ranges, reseal, stream) in &targets {
        for n in 0..60 {
            let mut bytes = (*base).clone();
            for _ in 0..1 + n % 4 {
                let r = &ranges[(rng.next() as usize) % ranges.len()];
                let at = r.start + (rng.next() as usize) % (r.end - r.start);
                bytes[at] = match rng.next() % 4 {
                    0 => 0xff,
                    1 => 0,
                    2 => bytes[at] ^ (1 << (rng.next() % 8)),
                    _ => rng.next() as u8,
                };
            }
            reseal(&mut bytes);
            std::fs::write(&img, &bytes).unwrap();
            age(&sentinel);
            age(&outside);
            let start = Instant::now();
            let result = std::panic::catch_unwind(|| match stream {
                Some(f) => read_stream(&img, *f),
                None => open_and_read(&img, None, Some(&dir)),
            });
            // `ims check` walks qcow2 metadata with code of its own.
            let checked = name.starts_with("qcow2").then(|| {
                std::panic::catch_unwind(|| ims::check(&img, &OpenOptions::default())).is_ok()
            });
            let took = start.elapsed();
            let got = match &result {
                _ if checked == Some(false) => "panic in check".to_string(),
                Err(_) => "panic".to_string(),
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(e)) => e.kind().to_string(),
            };
            *outcomes.entry(format!("{name}: {got}")).or_default() += 1;
            if got.starts_with("panic") {
                failures.push(format!("{name} #{n}: panic"));
            }
            if took > Duration::from_secs(2) {
                failures.push(format!("{name} #{n}: took {took:?}"));
            }
            if check_atime && (!untouched(&sentinel) || !untouched(&outside)) {
                failures.push(format!("{name} #{n}: read another file"));
            }
        }
    }
    eprintln!("{outcomes:#?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The CLI gives the same answers: exit status 1, the error kind's words, no panic.
#[test]
fn cli_refuses_hostile_images() {
    let dir = tempfile::tempdir().unwrap();
    let b = bases(dir.path());
    let vhd_tail = &b.vhd_fixed[b.vhd_fixed.len() - 512..];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "polyglot",
            [&b.qcow2[..], vhd_tail].concat(),
            "ambiguous format",
        ),
        (
            "backing",
            q_backing(&b.qcow2, "/etc/passwd"),
            "backing file reference",
        ),
        (
            "l1",
            edit(&b.qcow2, |x| be32(x, Q_L1_SIZE, 0x7fff_ffff)),
            "exceeds a limit",
        ),
        ("cut", cut(&b.vmdk_sparse, 512), "truncated"),
    ];
    for (name, bytes, needle) in cases {
        let img = dir.path().join(format!("{name}.img"));
        std::fs::write(&img, bytes).unwrap();
        let out = dir.path().join("out.raw");
        // `info` names references without opening them, so it succeeds on the backing case.
        let mut runs = vec![vec!["convert", "-O", "raw", s(&img), s(&out)]];
        if name != "backing" {
            runs.push(vec!["info", s(&img)]);
        }
        for args in runs {
            let r = ims(&args);
            let err = String::from_utf8_lossy(&r.stderr);
            assert_eq!(r.status.code(), Some(1), "{name} {args:?}: {err}");
            assert!(!err.contains("panicked"), "{name}: {err}");
            assert!(err.contains(needle), "{name}: expected {needle:?} in {err}");
        }
    }
}

/// `ims check -f FMT` meets the polyglot rule as every other verb does, and the message does not
/// send the user to `-f` when naming the format cannot help.
#[test]
fn check_with_a_named_format_refuses_polyglots() {
    let root = tempfile::tempdir().unwrap();
    let b = bases(root.path());
    let mut checked = 0;
    for c in polyglot_named_cases(&b) {
        let (Some(format), "ambiguous") = (c.format, c.expect) else {
            continue;
        };
        let img = root.path().join("polyglot.img");
        c.place(&img);
        let r = ims(&["check", "-f", format.name(), s(&img)]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains("ambiguous format") && err.contains("polyglot"),
            "{}: {err}",
            c.name
        );
        assert!(
            !err.contains("name the format with -f"),
            "{}: {err}",
            c.name
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} named polyglots");
}
