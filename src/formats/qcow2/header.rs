//! The QCOW2 header: the fixed fields at the start of the file (72 bytes in version 2, at least
//! 104 in version 3), the feature bits, the header extensions that follow and the backing file
//! name, all of which live in the first cluster. [`Qcow2Header::check_layout`] checks where the
//! header says the tables are against the file's length and the format's limits.
//!
//! The layout is described in `formats/qcow2.md`.

use crate::error::{Error, Result};
use crate::storage::Storage;

use super::geometry::{Geometry, MIN_CLUSTER_BITS, TABLE_ENTRY_SIZE};
use super::snapshot::SNAPSHOT_HEADER_SIZE;
use crate::limits::{
    MAX_BACKING_FILE_NAME, MAX_BACKING_FORMAT_NAME, MAX_CLUSTER_BITS, MAX_L1_TABLE_SIZE,
    MAX_REFCOUNT_TABLE_SIZE, MAX_SNAPSHOTS,
};

/// The magic number at offset 0.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header.
pub const V2_HEADER_LENGTH: u32 = 72;
/// Shortest version 3 header (through `header_length`).
pub const V3_MIN_HEADER_LENGTH: u32 = 104;
/// Offset of the version 3 `compression_type` byte.
pub const COMPRESSION_TYPE_OFFSET: u32 = 104;

/// `crypt_method` values.
pub const CRYPT_NONE: u32 = 0;
pub(crate) const CRYPT_AES: u32 = 1;
pub(crate) const CRYPT_LUKS: u32 = 2;

/// Incompatible feature bits: an image with an unknown one must not be opened.
pub mod incompatible {
    /// Refcounts may be out of date (lazy refcounts); reading is unaffected.
    pub const DIRTY: u64 = 1 << 0;
    /// Some structure may be corrupt; the image may be read, not written.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external data file.
    pub const DATA_FILE: u64 = 1 << 2;
    /// `compression_type` is set to something other than zlib.
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// L2 entries are 128 bits with a subcluster bitmap.
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit ims knows.
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;
}

/// Compatible feature bits: unknown ones may be ignored.
pub mod compatible {
    pub(crate) const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Auto-clear feature bits: a writer clears the unknown ones.
pub mod autoclear {
    /// The bitmaps extension is consistent.
    pub const BITMAPS: u64 = 1 << 0;
    /// The external data file reads as a raw image on its own.
    pub const DATA_FILE_RAW: u64 = 1 << 1;
}

/// Header extension types.
pub mod extension {
    pub(crate) const END: u32 = 0;
    pub(crate) const BACKING_FORMAT: u32 = 0xe279_2aca;
    pub(crate) const FEATURE_NAME_TABLE: u32 = 0x6803_f857;
    pub(crate) const BITMAPS: u32 = 0x2385_2875;
    pub(crate) const FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
    pub(crate) const DATA_FILE: u32 = 0x4441_5441;
}

/// Size of one feature name table entry.
pub const FEATURE_NAME_ENTRY_SIZE: usize = 48;

const HEADER: &str = "qcow2 header";
const EXTENSION: &str = "qcow2 header extension";

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompressionType {
    /// Raw deflate (no zlib header), type 0.
    Zlib,
    /// Zstandard frames, type 1.
    Zstd,
}

impl CompressionType {
    /// The name qemu-img prints.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }

    /// The `compression_type` byte.
    pub fn code(self) -> u8 {
        match self {
            CompressionType::Zlib => 0,
            CompressionType::Zstd => 1,
        }
    }
}

/// The fixed header fields, named as the specification names them. Version 2 images get the
/// version 3 fields' defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: CompressionType,
}

/// A big-endian u32 at `at`, if `buf` holds it.
fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// A big-endian u64 at `at`, if `buf` holds it.
fn be64(buf: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = buf.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// `len` bytes of `buf` at file offset `at`, or a truncation error naming `structure`.
fn bytes_at<'a>(buf: &'a [u8], at: u64, len: u64, structure: &'static str) -> Result<&'a [u8]> {
    let range = usize::try_from(at)
        .ok()
        .and_then(|s| Some(s..s.checked_add(usize::try_from(len).ok()?)?));
    range
        .and_then(|r| buf.get(r))
        .ok_or_else(|| Error::truncated(structure, at, len, buf.len() as u64))
}

impl Header {
    /// Parses and checks the fixed fields at the start of `buf` (the start of the file). The
    /// incompatible feature bits are not checked here: see [`Qcow2Header::parse`].
    pub fn parse(buf: &[u8]) -> Result<Header> {
        let available = buf.len() as u64;
        let truncated = |needed: u32| Error::truncated(HEADER, 0, u64::from(needed), available);
        if buf.len() < V2_HEADER_LENGTH as usize {
            return Err(truncated(V2_HEADER_LENGTH));
        }
        // Offsets below 72 are inside `buf`, checked just above.
        let u32_at = |at: usize| be32(buf, at).unwrap_or_default();
        let u64_at = |at: usize| be64(buf, at).unwrap_or_default();
        if buf.get(..4) != Some(&MAGIC[..]) {
            return Err(Error::malformed(HEADER, 0, "no QFI\\xfb magic"));
        }
        let version = u32_at(4);
        if version != 2 && version != 3 {
            return Err(Error::unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = u32_at(20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::malformed(
                HEADER,
                20,
                format!(
                    "cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
                ),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: u64_at(8),
            backing_file_size: u32_at(16),
            cluster_bits,
            size: u64_at(24),
            crypt_method: u32_at(32),
            l1_size: u32_at(36),
            l1_table_offset: u64_at(40),
            refcount_table_offset: u64_at(48),
            refcount_table_clusters: u32_at(56),
            nb_snapshots: u32_at(60),
            snapshots_offset: u64_at(64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LENGTH,
            compression_type: CompressionType::Zlib,
        };
        let mut compression_code = 0u8;
        if version >= 3 {
            if buf.len() < V3_MIN_HEADER_LENGTH as usize {
                return Err(truncated(V3_MIN_HEADER_LENGTH));
            }
            h.incompatible_features = u64_at(72);
            h.compatible_features = u64_at(80);
            h.autoclear_features = u64_at(88);
            h.refcount_order = u32_at(96);
            h.header_length = u32_at(100);
            if h.header_length < V3_MIN_HEADER_LENGTH {
                return Err(Error::malformed(
                    HEADER,
                    100,
                    format!(
                        "header_length {} is below {V3_MIN_HEADER_LENGTH}",
                        h.header_length
                    ),
                ));
            }
            if u64::from(h.header_length) > cluster_size {
                return Err(Error::malformed(
                    HEADER,
                    100,
                    format!(
                        "header_length {} exceeds the cluster size {cluster_size}",
                        h.header_length
                    ),
                ));
            }
            if buf.len() < h.header_length as usize {
                return Err(truncated(h.header_length));
            }
            if h.header_length > COMPRESSION_TYPE_OFFSET {
                compression_code = buf
                    .get(COMPRESSION_TYPE_OFFSET as usize)
                    .copied()
                    .unwrap_or(0);
            }
        }
        let has_type_bit = h.incompatible_features & incompatible::COMPRESSION_TYPE != 0;
        h.compression_type = match (compression_code, has_type_bit) {
            (0, false) => CompressionType::Zlib,
            (1, true) => CompressionType::Zstd,
            (0, true) => {
                return Err(Error::malformed(
                    HEADER,
                    72,
                    "the compression type feature bit is set but compression_type is zlib",
                ));
            }
            (1, false) => {
                return Err(Error::malformed(
                    HEADER,
                    104,
                    "compression_type is zstd but the compression type feature bit is clear",
                ));
            }
            (other, _) => {
                return Err(Error::unsupported(format!(
                    "qcow2 compression type {other}"
                )));
            }
        };
        if h.refcount_order > 6 {
            return Err(Error::malformed(
                HEADER,
                96,
                format!("refcount_order {} is above 6", h.refcount_order),
            ));
        }
        match h.crypt_method {
            CRYPT_NONE => {}
            CRYPT_AES => {
                return Err(Error::unsupported(
                    "AES-encrypted qcow2 images (crypt_method 1)",
                ));
            }
            CRYPT_LUKS => {
                return Err(Error::unsupported(
                    "LUKS-encrypted qcow2 images (crypt_method 2)",
                ));
            }
            other => return Err(Error::unsupported(format!("qcow2 crypt_method {other}"))),
        }
        if h.backing_file_offset > cluster_size {
            return Err(Error::malformed(
                HEADER,
                8,
                format!(
                    "backing_file_offset {:#x} is outside the first cluster",
                    h.backing_file_offset
                ),
            ));
        }
        if h.backing_file_offset != 0 {
            if h.backing_file_offset < u64::from(h.header_length) {
                return Err(Error::malformed(
                    HEADER,
                    8,
                    "the backing file name overlaps the header",
                ));
            }
            let room = (cluster_size - h.backing_file_offset).min(u64::from(MAX_BACKING_FILE_NAME));
            if u64::from(h.backing_file_size) > room {
                return Err(Error::malformed(
                    HEADER,
                    16,
                    format!(
                        "backing_file_size {} is longer than {room}",
                        h.backing_file_size
                    ),
                ));
            }
        }
        // Extended L2 entries need subclusters of at least 512 bytes.
        Geometry::new(h.cluster_bits, h.extended_l2(), h.refcount_order)?;
        Ok(h)
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & incompatible::EXTENDED_L2 != 0
    }

    pub fn geometry(&self) -> Result<Geometry> {
        Geometry::new(self.cluster_bits, self.extended_l2(), self.refcount_order)
    }

    /// Where the header extensions start.
    pub fn extensions_start(&self) -> u64 {
        u64::from(self.header_length)
    }

    /// Where the header extension area ends: at the backing file name, or at the end of the
    /// first cluster.
    pub fn extensions_end(&self) -> u64 {
        if self.backing_file_offset != 0 {
            self.backing_file_offset
        } else {
            self.cluster_size()
        }
    }
}

/// Which feature bitmap a feature name table entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum FeatureKind {
    Incompatible,
    Compatible,
    Autoclear,
    /// A type the specification does not define.
    Other(u8),
}

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeatureName {
    pub kind: FeatureKind,
    pub bit: u8,
    pub name: String,
}

impl FeatureName {
    /// Parses one 48-byte entry.
    pub fn parse(entry: &[u8; FEATURE_NAME_ENTRY_SIZE]) -> FeatureName {
        let kind = match entry[0] {
            0 => FeatureKind::Incompatible,
            1 => FeatureKind::Compatible,
            2 => FeatureKind::Autoclear,
            other => FeatureKind::Other(other),
        };
        let name = &entry[2..];
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        FeatureName {
            kind,
            bit: entry[1],
            name: String::from_utf8_lossy(&name[..len]).into_owned(),
        }
    }
}

/// The bitmaps extension (persistent dirty bitmaps; ims does not read the bitmaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BitmapsExtension {
    pub nb_bitmaps: u32,
    pub bitmap_directory_size: u64,
    pub bitmap_directory_offset: u64,
}

/// The full disk encryption header pointer (LUKS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EncryptionHeaderPointer {
    pub offset: u64,
    pub length: u64,
}

/// The header extensions ims understands, and the types of those it skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    pub backing_format: Option<String>,
    pub feature_names: Vec<FeatureName>,
    pub bitmaps: Option<BitmapsExtension>,
    pub encryption_header: Option<EncryptionHeaderPointer>,
    pub data_file: Option<String>,
    /// (type, length) of each unknown extension, skipped.
    pub unknown: Vec<(u32, u32)>,
}

impl Extensions {
    /// Parses the extension area of `buf` (the first cluster, or as much of it as the file
    /// holds) that `header` delimits.
    pub fn parse(buf: &[u8], header: &Header) -> Result<Extensions> {
        let end = header.extensions_end();
        let mut pos = header.extensions_start();
        let mut ext = Extensions::default();
        while pos < end {
            let data_start = pos + 8;
            if data_start > end {
                return Err(Error::malformed(
                    EXTENSION,
                    pos,
                    "extension header runs past the end of the extension area",
                ));
            }
            let head = bytes_at(buf, pos, 8, EXTENSION)?;
            let kind = be32(head, 0).unwrap_or_default();
            let len = be32(head, 4).unwrap_or_default();
            if kind == extension::END {
                break;
            }
            if data_start + u64::from(len) > end {
                return Err(Error::malformed(
                    EXTENSION,
                    pos,
                    format!(
                        "extension {kind:#010x} of {len} bytes runs past the end of the extension area"
                    ),
                ));
            }
            let data = bytes_at(buf, data_start, u64::from(len), EXTENSION)?;
            match kind {
                extension::BACKING_FORMAT => {
                    if len > MAX_BACKING_FORMAT_NAME {
                        return Err(Error::malformed(
                            EXTENSION,
                            pos,
                            format!(
                                "backing format name of {len} bytes is longer than {MAX_BACKING_FORMAT_NAME}"
                            ),
                        ));
                    }
                    ext.backing_format =
                        (!data.is_empty()).then(|| String::from_utf8_lossy(data).into_owned());
                }
                extension::FEATURE_NAME_TABLE => {
                    ext.feature_names = data
                        .chunks_exact(FEATURE_NAME_ENTRY_SIZE)
                        .filter_map(|c| c.try_into().ok())
                        .map(FeatureName::parse)
                        .collect();
                }
                extension::BITMAPS => {
                    let (Some(nb_bitmaps), Some(reserved), Some(size), Some(offset), 24) = (
                        be32(data, 0),
                        be32(data, 4),
                        be64(data, 8),
                        be64(data, 16),
                        len,
                    ) else {
                        return Err(Error::malformed(
                            EXTENSION,
                            pos,
                            format!("bitmaps extension of {len} bytes, not 24"),
                        ));
                    };
                    if reserved != 0 {
                        return Err(Error::malformed(
                            EXTENSION,
                            pos,
                            "bitmaps extension reserved field is not zero",
                        ));
                    }
                    ext.bitmaps = Some(BitmapsExtension {
                        nb_bitmaps,
                        bitmap_directory_size: size,
                        bitmap_directory_offset: offset,
                    });
                }
                extension::FULL_DISK_ENCRYPTION => {
                    let (Some(offset), Some(length), 16) = (be64(data, 0), be64(data, 8), len)
                    else {
                        return Err(Error::malformed(
                            EXTENSION,
                            pos,
                            format!("full disk encryption extension of {len} bytes, not 16"),
                        ));
                    };
                    if header.crypt_method != CRYPT_LUKS {
                        return Err(Error::malformed(
                            EXTENSION,
                            pos,
                            "full disk encryption extension in an image without LUKS encryption",
                        ));
                    }
                    ext.encryption_header = Some(EncryptionHeaderPointer { offset, length });
                }
                extension::DATA_FILE => {
                    ext.data_file = Some(String::from_utf8_lossy(data).into_owned());
                }
                other => ext.unknown.push((other, len)),
            }
            pos = data_start + u64::from(len).next_multiple_of(8);
        }
        Ok(ext)
    }
}

/// Everything in the first cluster: the header, its extensions and the backing file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    pub(crate) header: Header,
    pub(crate) extensions: Extensions,
    backing_file: Option<String>,
}

impl Qcow2Header {
    /// Reads and parses the first cluster of the image.
    pub fn read(storage: &dyn Storage) -> Result<Qcow2Header> {
        let file_len = storage.len();
        // Enough for the fixed fields; then the whole first cluster once its size is known.
        let mut buf = vec![0u8; 4096.min(usize::try_from(file_len).unwrap_or(4096))];
        let n = storage.read_at(&mut buf, 0)?;
        buf.truncate(n);
        if let Some(bits) =
            be32(&buf, 20).filter(|b| (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(b))
        {
            let want = (1u64 << bits).min(file_len);
            if want > buf.len() as u64 {
                // At most 2 MiB: the largest cluster.
                buf = vec![0u8; usize::try_from(want).unwrap_or(0)];
                let n = storage.read_at(&mut buf, 0)?;
                buf.truncate(n);
            }
        }
        Qcow2Header::parse(&buf)
    }

    /// Parses the first cluster (or as much of it as the file holds).
    pub fn parse(buf: &[u8]) -> Result<Qcow2Header> {
        let header = Header::parse(buf)?;
        let unknown = header.incompatible_features & !incompatible::KNOWN;
        if unknown != 0 {
            // The feature name table, when it can be read, names what is missing.
            let names = Extensions::parse(buf, &header)
                .map(|e| e.feature_names)
                .unwrap_or_default();
            return Err(Error::unsupported(describe_unknown_incompatible(
                unknown, &names,
            )));
        }
        let extensions = Extensions::parse(buf, &header)?;
        let backing_file = if header.backing_file_offset != 0 && header.backing_file_size != 0 {
            let name = bytes_at(
                buf,
                header.backing_file_offset,
                u64::from(header.backing_file_size),
                "qcow2 backing file name",
            )?;
            Some(String::from_utf8_lossy(name).into_owned())
        } else {
            None
        };
        if header.autoclear_features & autoclear::DATA_FILE_RAW != 0
            && header.incompatible_features & incompatible::DATA_FILE == 0
        {
            return Err(Error::malformed(
                HEADER,
                88,
                "the raw external data bit is set in an image without an external data file",
            ));
        }
        Ok(Qcow2Header {
            header,
            extensions,
            backing_file,
        })
    }

    /// The backing file name the image refers to (never opened here).
    pub fn backing_file(&self) -> Option<&str> {
        self.backing_file.as_deref()
    }

    /// The backing file's format, from the backing format extension.
    pub fn backing_format(&self) -> Option<&str> {
        self.extensions.backing_format.as_deref()
    }

    /// The external data file, when the image uses one: its name from the extension, or an
    /// empty string when the extension is missing (the user must then name it).
    pub fn data_file(&self) -> Option<&str> {
        if self.header.incompatible_features & incompatible::DATA_FILE == 0 {
            return None;
        }
        Some(self.extensions.data_file.as_deref().unwrap_or(""))
    }

    pub(crate) fn has(&self, incompatible_bit: u64) -> bool {
        self.header.incompatible_features & incompatible_bit != 0
    }

    /// Checks where the header puts the refcount table, the L1 table and the snapshot table
    /// against the file's length and the format's limits, before anything is read from them.
    pub fn check_layout(&self, file_len: u64) -> Result<()> {
        let h = &self.header;
        let geometry = h.geometry()?;
        let cluster_size = geometry.cluster_size();

        // The disk is whole sectors (qemu refuses any other size).
        if !h.size.is_multiple_of(512) {
            return Err(Error::malformed(
                HEADER,
                24,
                format!("virtual size {} is not a multiple of 512", h.size),
            ));
        }

        // The refcount table: present, small enough, aligned, after the header, in the file.
        if h.refcount_table_clusters == 0 {
            return Err(Error::malformed(
                HEADER,
                56,
                "the image has no refcount table",
            ));
        }
        let reftable_len = u64::from(h.refcount_table_clusters) << h.cluster_bits;
        check_table(
            "qcow2 refcount table",
            h.refcount_table_offset,
            reftable_len,
            MAX_REFCOUNT_TABLE_SIZE,
            48,
            cluster_size,
            file_len,
        )?;

        // The L1 table: small enough, big enough for the disk, aligned, in the file.
        let l1_len = u64::from(h.l1_size) * TABLE_ENTRY_SIZE;
        let needed = geometry.l1_entries_for(h.size);
        if l1_len <= MAX_L1_TABLE_SIZE && u64::from(h.l1_size) < needed {
            return Err(Error::malformed(
                HEADER,
                36,
                format!(
                    "l1_size {} is too small for a disk of {} bytes, which needs {needed} entries",
                    h.l1_size, h.size
                ),
            ));
        }
        check_table(
            "qcow2 L1 table",
            h.l1_table_offset,
            l1_len,
            MAX_L1_TABLE_SIZE,
            40,
            cluster_size,
            file_len,
        )?;

        // The snapshot table: not too many, aligned, and at least 40 bytes per snapshot in the file.
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::limit(
                "qcow2 snapshot table",
                h.snapshots_offset,
                format!("{} snapshots, more than {MAX_SNAPSHOTS}", h.nb_snapshots),
            ));
        }
        check_table(
            "qcow2 snapshot table",
            h.snapshots_offset,
            u64::from(h.nb_snapshots) * SNAPSHOT_HEADER_SIZE,
            u64::from(MAX_SNAPSHOTS) * SNAPSHOT_HEADER_SIZE,
            64,
            cluster_size,
            file_len,
        )?;
        Ok(())
    }
}

/// Checks a table of `len` bytes at `offset` (the header field at `field`): at most `max`
/// bytes, cluster-aligned, and when not empty after the first cluster and inside the file.
fn check_table(
    structure: &'static str,
    offset: u64,
    len: u64,
    max: u64,
    field: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<()> {
    if len > max {
        return Err(Error::limit(
            structure,
            offset,
            format!("{len} bytes, more than {max}"),
        ));
    }
    if !offset.is_multiple_of(cluster_size) {
        return Err(Error::malformed(
            HEADER,
            field,
            format!("{structure} offset {offset:#x} is not aligned to a cluster"),
        ));
    }
    if len == 0 {
        return Ok(());
    }
    if offset < cluster_size {
        return Err(Error::malformed(
            HEADER,
            field,
            format!("{structure} at {offset:#x} overlaps the header cluster"),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Error::truncated(structure, offset, len, file_len)),
    }
}

/// Names the unknown incompatible feature bits, with the image's own names for them.
fn describe_unknown_incompatible(bits: u64, names: &[FeatureName]) -> String {
    let list: Vec<String> = (0..64u8)
        .filter(|&b| bits >> b & 1 != 0)
        .map(|b| {
            match names
                .iter()
                .find(|n| n.kind == FeatureKind::Incompatible && n.bit == b && !n.name.is_empty())
            {
                Some(n) => format!("bit {b} ({})", n.name),
                None => format!("bit {b}"),
            }
        })
        .collect();
    let plural = if list.len() > 1 { "s" } else { "" };
    format!("qcow2 incompatible feature{plural} {}", list.join(", "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A version 3 header of 112 bytes for a 64 KiB-cluster image of `size` bytes, followed by
    /// zeros to the end of the first cluster: refcount table at 0x10000, L1 at 0x30000.
    pub(crate) fn v3_header(size: u64) -> Vec<u8> {
        let mut b = vec![0u8; 65536];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&size.to_be_bytes());
        let l1 = size.div_ceil(512 << 20) as u32;
        b[36..40].copy_from_slice(&l1.to_be_bytes());
        b[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        b[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    fn put_ext(b: &mut [u8], at: usize, kind: u32, data: &[u8]) -> usize {
        b[at..at + 4].copy_from_slice(&kind.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&(data.len() as u32).to_be_bytes());
        b[at + 8..at + 8 + data.len()].copy_from_slice(data);
        at + 8 + data.len().next_multiple_of(8)
    }

    #[test]
    fn parses_a_version_3_header() {
        let b = v3_header(16 << 20);
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.size, 16 << 20);
        assert_eq!(h.l1_size, 1);
        assert_eq!(h.l1_table_offset, 0x30000);
        assert_eq!(h.refcount_table_offset, 0x10000);
        assert_eq!(h.header_length, 112);
        assert_eq!(h.compression_type, CompressionType::Zlib);
        assert_eq!(h.extensions_start(), 112);
        assert_eq!(h.extensions_end(), 65536);
        let q = Qcow2Header::parse(&b).unwrap();
        assert_eq!(q.backing_file(), None);
        assert_eq!(q.data_file(), None);
        q.check_layout(0x40000).unwrap();
    }

    #[test]
    fn version_2_gets_defaults() {
        let mut b = v3_header(1 << 20);
        b[4..8].copy_from_slice(&2u32.to_be_bytes());
        // Version 2 stops at 72 bytes: what follows is not read as header fields.
        b[72..80].copy_from_slice(&u64::MAX.to_be_bytes());
        let h = Header::parse(&b[..72]).unwrap();
        assert_eq!(h.header_length, 72);
        assert_eq!(h.refcount_order, 4);
        assert_eq!(h.incompatible_features, 0);
    }

    #[test]
    fn refuses_bad_fixed_fields() {
        let kind = |b: &[u8]| Header::parse(b).unwrap_err().kind();
        let good = v3_header(1 << 20);
        assert_eq!(kind(&good[..50]), "truncated");
        assert_eq!(kind(&good[..100]), "truncated");
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(kind(&b), "malformed");
        let mut b = good.clone();
        b[4..8].copy_from_slice(&4u32.to_be_bytes());
        assert_eq!(kind(&b), "unsupported");
        for bits in [0u32, 8, 22, 63, u32::MAX] {
            let mut b = good.clone();
            b[20..24].copy_from_slice(&bits.to_be_bytes());
            assert_eq!(kind(&b), "malformed", "cluster_bits {bits}");
        }
        let mut b = good.clone();
        b[100..104].copy_from_slice(&96u32.to_be_bytes());
        assert_eq!(kind(&b), "malformed");
        let mut b = good.clone();
        b[100..104].copy_from_slice(&(1u32 << 20).to_be_bytes());
        assert_eq!(kind(&b), "malformed");
        let mut b = good.clone();
        b[96..100].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(kind(&b), "malformed");
        // Extended L2 with 4 KiB clusters: subclusters would be 128 bytes.
        let mut b = good.clone();
        b[20..24].copy_from_slice(&12u32.to_be_bytes());
        b[72..80].copy_from_slice(&incompatible::EXTENDED_L2.to_be_bytes());
        assert_eq!(kind(&b), "malformed");
    }

    #[test]
    fn encryption_is_refused_by_name() {
        for (method, name) in [(1u32, "AES"), (2, "LUKS")] {
            let mut b = v3_header(1 << 20);
            b[32..36].copy_from_slice(&method.to_be_bytes());
            let e = Header::parse(&b).unwrap_err();
            assert_eq!(e.kind(), "unsupported");
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn compression_type_and_its_feature_bit() {
        let mut b = v3_header(1 << 20);
        b[104] = 1;
        assert_eq!(Header::parse(&b).unwrap_err().kind(), "malformed");
        b[72..80].copy_from_slice(&incompatible::COMPRESSION_TYPE.to_be_bytes());
        assert_eq!(
            Header::parse(&b).unwrap().compression_type,
            CompressionType::Zstd
        );
        b[104] = 0;
        assert_eq!(Header::parse(&b).unwrap_err().kind(), "malformed");
        b[104] = 2;
        assert_eq!(Header::parse(&b).unwrap_err().kind(), "unsupported");
        // A 104-byte header has no compression_type field: byte 104 is not read.
        let mut b = v3_header(1 << 20);
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        b[104] = 1;
        assert_eq!(
            Header::parse(&b).unwrap().compression_type,
            CompressionType::Zlib
        );
    }

    #[test]
    fn unknown_incompatible_bit_is_named_from_the_feature_table() {
        let mut b = v3_header(1 << 20);
        b[72..80].copy_from_slice(&(1u64 << 9 | 1 << 40).to_be_bytes());
        let mut entry = [0u8; 48];
        entry[1] = 9;
        entry[2..14].copy_from_slice(b"future thing");
        put_ext(&mut b, 112, extension::FEATURE_NAME_TABLE, &entry);
        let e = Qcow2Header::parse(&b).unwrap_err();
        assert_eq!(e.kind(), "unsupported");
        let msg = e.to_string();
        assert!(msg.contains("bit 9 (future thing)"), "{msg}");
        assert!(msg.contains("bit 40"), "{msg}");
    }

    #[test]
    fn parses_extensions_and_backing_name() {
        let mut b = v3_header(1 << 20);
        let mut at = put_ext(&mut b, 112, extension::BACKING_FORMAT, b"qcow2");
        let mut entry = [0u8; 48];
        entry[0] = 1;
        entry[2..16].copy_from_slice(b"lazy refcounts");
        at = put_ext(&mut b, at, extension::FEATURE_NAME_TABLE, &entry);
        at = put_ext(&mut b, at, 0x1234_5678, b"skip me");
        let mut bitmaps = [0u8; 24];
        bitmaps[..4].copy_from_slice(&2u32.to_be_bytes());
        bitmaps[16..24].copy_from_slice(&0x50000u64.to_be_bytes());
        at = put_ext(&mut b, at, extension::BITMAPS, &bitmaps);
        put_ext(&mut b, at, extension::END, &[]);
        let name = b"base.qcow2";
        b[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        b[0x200..0x200 + name.len()].copy_from_slice(name);
        let q = Qcow2Header::parse(&b).unwrap();
        assert_eq!(q.backing_file(), Some("base.qcow2"));
        assert_eq!(q.backing_format(), Some("qcow2"));
        assert_eq!(q.extensions.feature_names.len(), 1);
        assert_eq!(q.extensions.feature_names[0].kind, FeatureKind::Compatible);
        assert_eq!(q.extensions.feature_names[0].name, "lazy refcounts");
        assert_eq!(q.extensions.unknown, vec![(0x1234_5678, 7)]);
        assert_eq!(q.extensions.bitmaps.unwrap().nb_bitmaps, 2);
        assert_eq!(
            q.extensions.bitmaps.unwrap().bitmap_directory_offset,
            0x50000
        );
    }

    #[test]
    fn data_file_bit_and_extension() {
        let mut b = v3_header(1 << 20);
        put_ext(&mut b, 112, extension::DATA_FILE, b"disk.data");
        // Without the feature bit the extension is not used.
        assert_eq!(Qcow2Header::parse(&b).unwrap().data_file(), None);
        b[72..80].copy_from_slice(&incompatible::DATA_FILE.to_be_bytes());
        assert_eq!(
            Qcow2Header::parse(&b).unwrap().data_file(),
            Some("disk.data")
        );
        let mut b = v3_header(1 << 20);
        b[88..96].copy_from_slice(&autoclear::DATA_FILE_RAW.to_be_bytes());
        assert_eq!(Qcow2Header::parse(&b).unwrap_err().kind(), "malformed");
    }

    #[test]
    fn refuses_bad_extensions() {
        // Longer than the extension area.
        let mut b = v3_header(1 << 20);
        b[112..116].copy_from_slice(&0x1111u32.to_be_bytes());
        b[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Qcow2Header::parse(&b).unwrap_err().kind(), "malformed");
        // Bitmaps extension of the wrong size.
        let mut b = v3_header(1 << 20);
        put_ext(&mut b, 112, extension::BITMAPS, &[0u8; 16]);
        assert_eq!(Qcow2Header::parse(&b).unwrap_err().kind(), "malformed");
        // Encryption pointer without encryption.
        let mut b = v3_header(1 << 20);
        put_ext(&mut b, 112, extension::FULL_DISK_ENCRYPTION, &[0u8; 16]);
        assert_eq!(Qcow2Header::parse(&b).unwrap_err().kind(), "malformed");
        // Backing format name too long.
        let mut b = v3_header(1 << 20);
        put_ext(&mut b, 112, extension::BACKING_FORMAT, &[b'a'; 16]);
        assert_eq!(Qcow2Header::parse(&b).unwrap_err().kind(), "malformed");
        // An extension area cut short by the end of the file.
        let mut b = v3_header(1 << 20);
        put_ext(&mut b, 112, 0x1111, &[1u8; 64]);
        assert_eq!(
            Qcow2Header::parse(&b[..150]).unwrap_err().kind(),
            "truncated"
        );
    }

    #[test]
    fn refuses_bad_backing_name_fields() {
        let mut b = v3_header(1 << 20);
        b[8..16].copy_from_slice(&0x20000u64.to_be_bytes());
        b[16..20].copy_from_slice(&4u32.to_be_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().kind(), "malformed");
        let mut b = v3_header(1 << 20);
        b[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        b[16..20].copy_from_slice(&1024u32.to_be_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().kind(), "malformed");
        let mut b = v3_header(1 << 20);
        b[8..16].copy_from_slice(&0x10u64.to_be_bytes());
        b[16..20].copy_from_slice(&4u32.to_be_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().kind(), "malformed");
    }

    #[test]
    fn layout_checks() {
        let layout = |patch: &dyn Fn(&mut Vec<u8>), file_len: u64| {
            let mut b = v3_header(1 << 30);
            patch(&mut b);
            Qcow2Header::parse(&b)
                .unwrap()
                .check_layout(file_len)
                .map_err(|e| e.kind())
        };
        assert_eq!(layout(&|_| {}, 0x40000), Ok(()));
        // A virtual size that is not whole sectors.
        assert_eq!(
            layout(
                &|b| b[24..32].copy_from_slice(&((1u64 << 30) - 100).to_be_bytes()),
                0x40000
            ),
            Err("malformed")
        );
        // L1 past the end of the file.
        assert_eq!(layout(&|_| {}, 0x30008), Err("truncated"));
        assert_eq!(
            layout(
                &|b| b[40..48].copy_from_slice(&0x0000_1000_0000_0000u64.to_be_bytes()),
                0x40000
            ),
            Err("truncated")
        );
        // Huge L1.
        assert_eq!(
            layout(
                &|b| b[36..40].copy_from_slice(&0x7fff_ffffu32.to_be_bytes()),
                0x40000
            ),
            Err("limit-exceeded")
        );
        // L1 too small for the disk (1 GiB needs 2 entries).
        assert_eq!(
            layout(&|b| b[36..40].copy_from_slice(&1u32.to_be_bytes()), 0x40000),
            Err("malformed")
        );
        // Unaligned L1, L1 over the header.
        assert_eq!(
            layout(
                &|b| b[40..48].copy_from_slice(&0x30200u64.to_be_bytes()),
                0x40000
            ),
            Err("malformed")
        );
        assert_eq!(
            layout(&|b| b[40..48].copy_from_slice(&0u64.to_be_bytes()), 0x40000),
            Err("malformed")
        );
        // Refcount table: over the header, missing, too big, past the end.
        assert_eq!(
            layout(&|b| b[48..56].copy_from_slice(&0u64.to_be_bytes()), 0x40000),
            Err("malformed")
        );
        assert_eq!(
            layout(&|b| b[56..60].copy_from_slice(&0u32.to_be_bytes()), 0x40000),
            Err("malformed")
        );
        assert_eq!(
            layout(
                &|b| b[56..60].copy_from_slice(&1000u32.to_be_bytes()),
                0x40000
            ),
            Err("limit-exceeded")
        );
        assert_eq!(
            layout(&|b| b[56..60].copy_from_slice(&4u32.to_be_bytes()), 0x40000),
            Err("truncated")
        );
        // Snapshots: too many, past the end, unaligned.
        assert_eq!(
            layout(
                &|b| b[60..64].copy_from_slice(&100_000u32.to_be_bytes()),
                0x40000
            ),
            Err("limit-exceeded")
        );
        assert_eq!(
            layout(
                &|b| {
                    b[60..64].copy_from_slice(&10_000u32.to_be_bytes());
                    b[64..72].copy_from_slice(&0x20000u64.to_be_bytes());
                },
                0x40000
            ),
            Err("truncated")
        );
        assert_eq!(
            layout(
                &|b| b[64..72].copy_from_slice(&0x20001u64.to_be_bytes()),
                0x40000
            ),
            Err("malformed")
        );
    }
}
