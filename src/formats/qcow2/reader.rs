//! Reads a QCOW2 image: [`Qcow2Disk`] answers what is at each offset, and [`Qcow2Reader`] (the
//! generic [`MappedReader`]) turns that into reads and maps.
//!
//! Opening parses the header (refusing encryption, unknown incompatible features and references
//! to other files that the caller has not resolved), checks where the tables are, loads the L1
//! table and lists the internal snapshots. Everything else is read on demand: L2 tables go
//! through a small bounded cache shared by all threads, and compressed clusters are inflated
//! into a buffer of exactly one cluster.
//!
//! One walk over the L1/L2 tables (`Walker`) turns a virtual range into segments (stored data,
//! compressed cluster, zeros, unallocated).

use std::cell::RefCell;
use std::sync::Arc;

use zstd::stream::raw::{DParameter, Decoder, Operation};

use crate::block::{BlockReader, usize_len};
use crate::cache::Lru;
use crate::error::{Error, ReferenceKind, Result};
use crate::limits::{
    L2_CACHE_BYTES, L2_CACHE_MAX_TABLES, L2_CACHE_MIN_TABLES, QCOW2_ZSTD_WINDOW_LOG_MAX,
};
use crate::mapped::{MappedDisk, MappedReader, Mapping, Segment, StoredRanges, Unit, only_file};
use crate::storage::{Storage, read_exact_at};

use super::bitmaps;
use super::consistency::{ClusterMap, CompressedRanges};
use super::header::{CompressionType, Qcow2Header, compatible, incompatible};
use super::info::{Qcow2Info, Qcow2SnapshotInfo};
use super::snapshot::{SnapshotTable, read_snapshot_entries};
use super::tables::{
    COMPRESSED_SECTOR_SIZE, ClusterType, CompressedDescriptor, Geometry, L1Entry,
    L2E_STD_RESERVED_MASK, L2Entry, OFLAG_ZERO, Snapshot, SubclusterState, TABLE_ENTRY_SIZE,
    classify_standard, decode_table, refcount_block_offset, subcluster_state,
};
use crate::formats::info::FormatInfo;
use crate::limits::MAX_L1_TABLE_SIZE;

/// What the caller resolved for the image before opening it.
#[derive(Clone, Default)]
pub struct Qcow2OpenOptions {
    /// The backing image's disk, opened by the caller (see [`crate::open()`]) for an image that
    /// names a backing file. Without it such an image is refused with
    /// [`Error::ExternalReference`]. Ignored for an image without a backing file.
    pub backing: Option<Arc<dyn BlockReader>>,
}

/// A QCOW2 image (version 2 or 3) opened for reading, with its backing disk.
pub type Qcow2Reader = MappedReader<Qcow2Disk>;

impl MappedReader<Qcow2Disk> {
    /// Opens the image in `storage`. An image that names a backing file is refused unless
    /// `options.backing` supplies it; an image with an external data file is always refused
    /// (with [`Error::ExternalReference`] naming it).
    pub fn open(storage: Arc<dyn Storage>, options: &Qcow2OpenOptions) -> Result<Self> {
        let header = Qcow2Header::read(&*storage)?;
        let backing = match (header.backing_file(), &options.backing) {
            (Some(name), None) => return Err(Error::reference(ReferenceKind::BackingFile, name)),
            (Some(_), Some(b)) => Some(b.clone()),
            (None, _) => None,
        };
        Ok(MappedReader::new(
            Qcow2Disk::open(storage, header)?,
            backing,
        ))
    }
}

/// What a QCOW2 image's tables say about each offset of its disk.
pub struct Qcow2Disk {
    storage: Arc<dyn Storage>,
    file_len: u64,
    header: Qcow2Header,
    geometry: Geometry,
    /// The active L1 table, the entries that map the disk (`l1_size` may hold more).
    l1: Vec<u64>,
    snapshots: Vec<Snapshot>,
    l2_cache: Lru<u64, Arc<L2Table>>,
}

impl Qcow2Disk {
    /// Checks the layout `header` describes against the image and loads the L1 table and the
    /// snapshot list.
    fn open(storage: Arc<dyn Storage>, header: Qcow2Header) -> Result<Self> {
        let file_len = storage.len();
        if let Some(name) = header.data_file() {
            return Err(Error::reference(ReferenceKind::DataFile, name));
        }
        header.check_layout(file_len)?;
        let h = &header.header;
        let geometry = h.geometry()?;

        // Only the entries that map the disk are read; check_layout has checked that the table
        // holds them and lies inside the file (so this is at most the file's size).
        let needed = geometry.l1_entries_for(h.size);
        let mut l1_bytes = vec![0u8; usize_len(needed * TABLE_ENTRY_SIZE)?];
        read_exact_at(
            &*storage,
            &mut l1_bytes,
            h.l1_table_offset,
            "qcow2 L1 table",
        )?;
        let l1 = decode_table(&l1_bytes);

        let table = read_snapshot_entries(&*storage, h.snapshots_offset, h.nb_snapshots, file_len)?;
        let tables = usize::try_from(L2_CACHE_BYTES >> geometry.cluster_bits())
            .unwrap_or(L2_CACHE_MAX_TABLES)
            .clamp(L2_CACHE_MIN_TABLES, L2_CACHE_MAX_TABLES);
        let disk = Qcow2Disk {
            storage,
            file_len,
            header,
            geometry,
            l1,
            snapshots: Vec::new(),
            l2_cache: Lru::new(tables),
        };
        disk.check_consistency(&table)?;
        Ok(Qcow2Disk {
            snapshots: table.entries.into_iter().map(|(_, s)| s).collect(),
            ..disk
        })
    }

    /// The open-time consistency pass (issue 20; `formats/qcow2.md`, "Consistency"): marks the
    /// clusters of the header, the L1, refcount and snapshot tables, the refcount blocks and
    /// the snapshots' L1 tables, then every L2 table the active L1 table references and every
    /// host cluster and compressed range their entries use. Refuses a cluster used twice
    /// (shared data, or an entry pointing at metadata), reserved bits, impossible flags,
    /// snapshot L1 tables that are misaligned, too large or outside the file, and duplicate
    /// snapshot ids. Reads each table once; bounded by [`crate::limits::MAX_QCOW2_MAP_CLUSTERS`]
    /// and [`crate::limits::MAX_QCOW2_COMPRESSED_CLUSTERS`].
    fn check_consistency(&self, snapshots: &SnapshotTable) -> Result<()> {
        const HEADER: &str = "qcow2 header";
        const SNAPSHOTS: &str = "qcow2 snapshot table";
        let h = &self.header.header;
        let g = self.geometry;
        let cluster_size = g.cluster_size();
        let mut map = ClusterMap::new(self.file_len, g.cluster_bits())?;

        // The fixed metadata (check_layout has checked each lies in the file, aligned).
        let overlap = |at: u64| move |problem: String| Error::malformed(HEADER, at, problem);
        map.metadata(0, cluster_size, "header")
            .map_err(overlap(0))?;
        map.metadata(
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) << g.cluster_bits(),
            "refcount table",
        )
        .map_err(overlap(48))?;
        map.metadata(
            h.l1_table_offset,
            u64::from(h.l1_size) * TABLE_ENTRY_SIZE,
            "active L1 table",
        )
        .map_err(overlap(40))?;
        if !snapshots.entries.is_empty() {
            map.metadata(
                h.snapshots_offset,
                snapshots.end.saturating_sub(h.snapshots_offset),
                "snapshot table",
            )
            .map_err(overlap(64))?;
        }

        // Refcount blocks: reading does not use them, so only those that can be one are marked
        // (ims check reports the others).
        let reftable_len = u64::from(h.refcount_table_clusters) << g.cluster_bits();
        let mut reftable = vec![0u8; usize_len(reftable_len)?];
        read_exact_at(
            &*self.storage,
            &mut reftable,
            h.refcount_table_offset,
            "qcow2 refcount table",
        )?;
        for (i, entry) in decode_table(&reftable).into_iter().enumerate() {
            let block = refcount_block_offset(entry);
            if block == 0 || !block.is_multiple_of(cluster_size) || block >= self.file_len {
                continue;
            }
            let at = h.refcount_table_offset + i as u64 * TABLE_ENTRY_SIZE;
            map.metadata(block, cluster_size, "refcount block")
                .map_err(|p| Error::malformed("qcow2 refcount table", at, p))?;
        }

        // Snapshots: unique ids; each L1 table aligned, bounded, in the file, apart.
        let mut ids = std::collections::HashSet::new();
        for (at, s) in &snapshots.entries {
            let at = *at;
            if !ids.insert(s.id.as_str()) {
                return Err(Error::malformed(
                    SNAPSHOTS,
                    at,
                    format!("snapshot id {:?} is used by an earlier snapshot", s.id),
                ));
            }
            let len = u64::from(s.l1_size) * TABLE_ENTRY_SIZE;
            if len == 0 {
                continue;
            }
            if len > MAX_L1_TABLE_SIZE {
                return Err(Error::limit(
                    SNAPSHOTS,
                    at,
                    format!(
                        "snapshot {:?} has an L1 table of {len} bytes, more than {MAX_L1_TABLE_SIZE}",
                        s.id
                    ),
                ));
            }
            let offset = s.l1_table_offset;
            if offset == 0 || !offset.is_multiple_of(cluster_size) {
                return Err(Error::malformed(
                    SNAPSHOTS,
                    at,
                    format!(
                        "snapshot {:?} has its L1 table at {offset:#x}, not a cluster after the \
                         header",
                        s.id
                    ),
                ));
            }
            if offset
                .checked_add(len)
                .is_none_or(|end| end > self.file_len)
            {
                return Err(Error::truncated(
                    "qcow2 snapshot L1 table",
                    offset,
                    len,
                    self.file_len,
                ));
            }
            map.metadata(offset, len, format!("L1 table of snapshot {:?}", s.id))
                .map_err(|p| Error::malformed(SNAPSHOTS, at, p))?;
        }

        // Persistent dirty bitmaps: the directory, each bitmap table and its data clusters.
        if let Some(ext) = &self.header.extensions.bitmaps {
            const BITMAPS: &str = "qcow2 bitmap directory";
            map.metadata(
                ext.bitmap_directory_offset,
                ext.bitmap_directory_size,
                "bitmap directory",
            )
            .map_err(|p| Error::malformed(BITMAPS, ext.bitmap_directory_offset, p))?;
            for table in bitmaps::read(&*self.storage, self.file_len, ext)? {
                map.metadata(table.offset, table.entries.len() as u64 * 8, "bitmap table")
                    .map_err(|p| Error::malformed(BITMAPS, table.entry_at, p))?;
                for (cluster, entry_at) in table.data_clusters() {
                    if !cluster.is_multiple_of(cluster_size) || cluster >= self.file_len {
                        return Err(Error::malformed(
                            "qcow2 bitmap table",
                            entry_at,
                            format!(
                                "bitmap data at {cluster:#x} is not a cluster of the file of {} bytes",
                                self.file_len
                            ),
                        ));
                    }
                    map.bitmap_data(cluster)
                        .map_err(|p| Error::malformed("qcow2 bitmap table", entry_at, p))?;
                }
            }
        }

        // The active L2 tables, all marked before any entry is looked at.
        for l1_index in 0..self.l1.len() as u64 {
            if let Some((offset, entry_pos)) = self.l2_offset(l1_index)? {
                map.table(offset, "L2 table")
                    .map_err(|p| Error::malformed("qcow2 L1 table", entry_pos, p))?;
            }
        }

        // Their entries.
        let mut compressed = CompressedRanges::default();
        for l1_index in 0..self.l1.len() as u64 {
            let Some(table) = self.l2_table(l1_index)? else {
                continue;
            };
            for index in 0..g.l2_entries() {
                let (entry, at) = table.entry(index)?;
                self.check_l2_entry(entry, at, &mut map, &mut compressed)?;
            }
        }
        compressed.check(&g)
    }

    /// One L2 entry of the pass: its bits, then the host cluster or compressed bytes it uses.
    fn check_l2_entry(
        &self,
        entry: L2Entry,
        at: u64,
        map: &mut ClusterMap,
        compressed: &mut CompressedRanges,
    ) -> Result<()> {
        let g = self.geometry;
        let bad = |problem: String| Error::malformed("qcow2 L2 entry", at, problem);
        let d = entry.descriptor;
        if entry.is_compressed() {
            if entry.copied() {
                return Err(bad(format!(
                    "compressed entry {d:#x} has the COPIED flag set"
                )));
            }
            if entry.bitmap != 0 {
                return Err(bad(format!(
                    "compressed entry has a subcluster bitmap {:#x}",
                    entry.bitmap
                )));
            }
            let (host, len) = self.compressed_range(d)?;
            map.compressed(host, len).map_err(bad)?;
            return compressed.push(d & !(OFLAG_COMPRESSED_AND_COPIED), at);
        }
        let reserved = if g.extended_l2() {
            L2E_STD_RESERVED_MASK | OFLAG_ZERO
        } else {
            L2E_STD_RESERVED_MASK
        };
        if d & reserved != 0 {
            return Err(bad(format!(
                "entry {d:#x} has reserved bits {:#x} set",
                d & reserved
            )));
        }
        let host = entry.host_offset();
        if host == 0 && entry.copied() {
            return Err(bad(format!(
                "entry {d:#x} has the COPIED flag set without a host cluster"
            )));
        }
        if g.extended_l2() {
            let alloc = entry.bitmap & 0xffff_ffff;
            let zero = entry.bitmap >> 32;
            if alloc & zero != 0 {
                return Err(bad(format!(
                    "subclusters {:#x} are both allocated and zero",
                    alloc & zero
                )));
            }
            if alloc != 0 && host == 0 {
                return Err(bad(
                    "subclusters are allocated without a host cluster".into()
                ));
            }
            if !host.is_multiple_of(g.cluster_size()) {
                return Err(bad(format!(
                    "host cluster offset {host:#x} is not aligned to a cluster"
                )));
            }
        } else {
            classify_standard(entry, self.header.header.version, g.cluster_size()).map_err(bad)?;
        }
        if host != 0 {
            map.data(host).map_err(bad)?;
        }
        Ok(())
    }

    /// The parsed header, extensions and backing file name.
    pub fn header(&self) -> &Qcow2Header {
        &self.header
    }

    /// The backing file the image names (opened only by the caller).
    pub fn backing_file(&self) -> Option<&str> {
        self.header.backing_file()
    }

    /// The backing file's format, when the image records it.
    pub fn backing_format(&self) -> Option<&str> {
        self.header.backing_format()
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        self.geometry.cluster_size()
    }

    /// The sizes and shifts that follow from the header.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The internal snapshots (listed only; ims reads the active state).
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The L2 table of L1 entry `l1_index`, or `None` when that entry is unallocated.
    fn l2_table(&self, l1_index: u64) -> Result<Option<Arc<L2Table>>> {
        let Some((offset, _)) = self.l2_offset(l1_index)? else {
            return Ok(None);
        };
        if let Some(t) = self.l2_cache.get(&offset) {
            return Ok(Some(t));
        }
        let cluster_size = self.geometry.cluster_size();
        let mut bytes = vec![0u8; usize_len(cluster_size)?];
        read_exact_at(&*self.storage, &mut bytes, offset, "qcow2 L2 table")?;
        let table = Arc::new(L2Table {
            offset,
            words: decode_table(&bytes),
            extended: self.geometry.extended_l2(),
        });
        self.l2_cache.insert(offset, table.clone());
        Ok(Some(table))
    }

    /// Where the L2 table of L1 entry `l1_index` is, checked (no reserved bits, aligned, inside
    /// the file), with the entry's own offset; `None` when the entry is unallocated.
    fn l2_offset(&self, l1_index: u64) -> Result<Option<(u64, u64)>> {
        let h = &self.header.header;
        let entry_pos = h
            .l1_table_offset
            .saturating_add(l1_index.saturating_mul(TABLE_ENTRY_SIZE));
        let raw = usize::try_from(l1_index)
            .ok()
            .and_then(|i| self.l1.get(i))
            .ok_or_else(|| {
                Error::malformed(
                    "qcow2 L1 table",
                    entry_pos,
                    "lookup past the end of the table",
                )
            })?;
        let entry = L1Entry(*raw);
        if entry.reserved_bits() != 0 {
            return Err(Error::malformed(
                "qcow2 L1 table",
                entry_pos,
                format!(
                    "entry {raw:#x} has reserved bits {:#x} set",
                    entry.reserved_bits()
                ),
            ));
        }
        let offset = entry.l2_offset();
        if offset == 0 {
            return Ok(None);
        }
        let cluster_size = self.geometry.cluster_size();
        if !offset.is_multiple_of(cluster_size) {
            return Err(Error::malformed(
                "qcow2 L1 table",
                entry_pos,
                format!("L2 table offset {offset:#x} is not aligned to a cluster"),
            ));
        }
        if offset
            .checked_add(cluster_size)
            .is_none_or(|end| end > self.file_len)
        {
            return Err(Error::truncated(
                "qcow2 L2 table",
                offset,
                cluster_size,
                self.file_len,
            ));
        }
        Ok(Some((offset, entry_pos)))
    }

    /// Where a compressed cluster's bytes are: (host offset, bytes to read). The descriptor's
    /// last sector may run past the end of the file by less than a sector (the file ends inside
    /// it); anything more is an error.
    fn compressed_range(&self, descriptor: u64) -> Result<(u64, u64)> {
        let d = CompressedDescriptor::decode(descriptor, &self.geometry);
        let past_eof = || {
            Error::truncated(
                "qcow2 compressed cluster",
                d.host_offset,
                d.length(),
                self.file_len,
            )
        };
        let end = d.end().ok_or_else(past_eof)?;
        let limit = self
            .file_len
            .checked_next_multiple_of(COMPRESSED_SECTOR_SIZE)
            .unwrap_or(u64::MAX);
        if d.host_offset >= self.file_len || end > limit {
            return Err(past_eof());
        }
        Ok((d.host_offset, end.min(self.file_len) - d.host_offset))
    }

    /// Decompresses the cluster `descriptor` describes into `out`, a whole cluster.
    fn decompress_into(&self, descriptor: u64, out: &mut [u8]) -> Result<()> {
        let (host, len) = self.compressed_range(descriptor)?;
        // At most two clusters (the sector count field's range): 4 MiB.
        crate::io::with_scratch(usize_len(len)?, |input| {
            read_exact_at(&*self.storage, input, host, "qcow2 compressed cluster")?;
            match self.header.header.compression_type {
                CompressionType::Zlib => inflate_cluster(input, out),
                CompressionType::Zstd => unzstd_cluster(input, out),
            }
            .map_err(|problem| Error::malformed("qcow2 compressed cluster", host, problem))
        })
    }
}

impl MappedDisk for Qcow2Disk {
    fn virtual_size(&self) -> u64 {
        self.header.header.size
    }

    fn walk(&self, start: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()> {
        let mut walker = Walker {
            reader: self,
            pos: start,
            end,
            current: None,
        };
        let cluster_size = self.geometry.cluster_size();
        while let Some(run) = walker.next()? {
            f(run.segment(cluster_size))?;
        }
        Ok(())
    }

    fn file(&self, file: usize) -> Result<&dyn Storage> {
        only_file(&*self.storage, file)
    }

    fn stored_ranges(&self, _file: usize) -> StoredRanges {
        // Preallocated clusters that were never written are holes: zeros, as qemu maps them.
        StoredRanges::LocatedSplitByHoles
    }

    fn decode(&self, unit: &Unit, out: &mut [u8]) -> Result<()> {
        self.decompress_into(unit.id, out)
    }

    fn data_structure(&self) -> &'static str {
        "qcow2 data cluster"
    }

    fn info(&self) -> Option<FormatInfo> {
        let h = &self.header.header;
        let v3 = h.version >= 3;
        let v3_flag = |flag| v3.then(|| self.header.has(flag));
        Some(FormatInfo::Qcow2(Qcow2Info {
            compat: if v3 { "1.1" } else { "0.10" }.into(),
            compression_type: h.compression_type.name().into(),
            lazy_refcounts: v3.then_some(h.compatible_features & compatible::LAZY_REFCOUNTS != 0),
            refcount_bits: u64::from(self.geometry.refcount_bits()),
            corrupt: v3_flag(incompatible::CORRUPT),
            extended_l2: v3_flag(incompatible::EXTENDED_L2),
            dirty: v3_flag(incompatible::DIRTY),
            cluster_size: self.geometry.cluster_size(),
            backing_filename: self.header.backing_file().map(str::to_string),
            backing_filename_format: self.header.backing_format().map(str::to_string),
            snapshots: self
                .snapshots
                .iter()
                .map(|s| Qcow2SnapshotInfo {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    vm_state_size: s.vm_state_size,
                    date_sec: s.date_sec,
                    date_nsec: s.date_nsec,
                    vm_clock_sec: s.vm_clock_nsec / 1_000_000_000,
                    vm_clock_nsec: s.vm_clock_nsec % 1_000_000_000,
                    icount: s.icount,
                })
                .collect(),
        }))
    }
}

/// The flag bits of a compressed L2 entry, outside its descriptor.
const OFLAG_COMPRESSED_AND_COPIED: u64 = 3 << 62;

/// One L2 table, decoded.
struct L2Table {
    /// Where it lies in the file (for errors).
    offset: u64,
    words: Vec<u64>,
    extended: bool,
}

impl L2Table {
    /// Entry `index`, and the file offset it was read from.
    fn entry(&self, index: u64) -> Result<(L2Entry, u64)> {
        let size = if self.extended { 16 } else { 8 };
        let at = self.offset.saturating_add(index.saturating_mul(size));
        let i = usize::try_from(index).ok();
        let entry = if self.extended {
            i.and_then(|i| i.checked_mul(2)).and_then(|i| {
                Some(L2Entry {
                    descriptor: *self.words.get(i)?,
                    bitmap: *self.words.get(i + 1)?,
                })
            })
        } else {
            i.and_then(|i| self.words.get(i))
                .map(|&descriptor| L2Entry {
                    descriptor,
                    bitmap: 0,
                })
        };
        entry.map(|e| (e, at)).ok_or_else(|| {
            Error::malformed("qcow2 L2 table", at, "entry past the end of the table")
        })
    }
}

/// What a segment of the disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Stored uncompressed; `host` is where the segment's first byte is.
    Data { host: u64 },
    /// Inside the compressed cluster `descriptor` describes, which starts at virtual
    /// `cluster_start`.
    Compressed { descriptor: u64, cluster_start: u64 },
    /// Reads as zeros; `host` is a preallocated place for the first byte, if any.
    Zero { host: Option<u64> },
    /// Not in this image; `host` is a preallocated place for the first byte, if any.
    Unallocated { host: Option<u64> },
}

/// A run of the disk in one state, within one cluster (or one unallocated L2 range).
#[derive(Debug, Clone, Copy)]
struct ClusterRun {
    start: u64,
    length: u64,
    kind: Kind,
}

impl ClusterRun {
    /// The run as the generic reader sees it; a compressed cluster is a unit of `cluster_size`.
    fn segment(&self, cluster_size: u64) -> Segment {
        let mapping = match self.kind {
            Kind::Data { host } => Mapping::Stored {
                file: 0,
                offset: host,
            },
            Kind::Compressed {
                descriptor,
                cluster_start,
            } => Mapping::Encoded {
                unit: Unit {
                    source: 0,
                    id: descriptor,
                    at: 0,
                    len: cluster_size,
                },
                unit_start: cluster_start,
            },
            Kind::Zero { host } => Mapping::Zero { host },
            Kind::Unallocated { host } => Mapping::Unallocated { host },
        };
        Segment {
            start: self.start,
            length: self.length,
            mapping,
        }
    }
}

/// Walks `[pos, end)` of the disk through the L1 and L2 tables, one segment at a time,
/// checking every entry it uses.
struct Walker<'a> {
    reader: &'a Qcow2Disk,
    pos: u64,
    end: u64,
    /// The L2 table in use: (L1 index, table).
    current: Option<(u64, Option<Arc<L2Table>>)>,
}

impl Walker<'_> {
    fn next(&mut self) -> Result<Option<ClusterRun>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let r = self.reader;
        let g = r.geometry;
        let l1_index = g.l1_index(self.pos);
        let table = match &self.current {
            Some((i, t)) if *i == l1_index => t.clone(),
            _ => {
                let t = r.l2_table(l1_index)?;
                self.current = Some((l1_index, t.clone()));
                t
            }
        };
        let Some(table) = table else {
            // No L2 table: everything it would map is unallocated.
            let boundary = (l1_index + 1).saturating_mul(1u64 << g.l2_coverage_bits());
            return Ok(Some(self.emit(boundary, Kind::Unallocated { host: None })));
        };
        let cluster_size = g.cluster_size();
        let cluster_start = g.cluster_start(self.pos);
        let cluster_end = cluster_start.saturating_add(cluster_size);
        let within = self.pos - cluster_start;
        let (entry, entry_at) = table.entry(g.l2_index(self.pos))?;
        let bad = |problem: String| Error::malformed("qcow2 L2 entry", entry_at, problem);

        if entry.is_compressed() {
            // Checked here so that map and read refuse the same images.
            r.compressed_range(entry.descriptor)?;
            return Ok(Some(self.emit(
                cluster_end,
                Kind::Compressed {
                    descriptor: entry.descriptor,
                    cluster_start,
                },
            )));
        }

        let (kind, seg_end) = if !g.extended_l2() {
            let kind = match classify_standard(entry, r.header.header.version, cluster_size)
                .map_err(bad)?
            {
                ClusterType::Unallocated => Kind::Unallocated { host: None },
                ClusterType::Zero { host } => Kind::Zero {
                    host: host.map(|h| h + within),
                },
                ClusterType::Normal { host } => Kind::Data {
                    host: host + within,
                },
            };
            (kind, cluster_end)
        } else {
            let host = entry.host_offset();
            if !host.is_multiple_of(cluster_size) {
                return Err(bad(format!(
                    "host cluster offset {host:#x} is not aligned to a cluster"
                )));
            }
            let host = (host != 0).then_some(host + within);
            let sc_bits = g.subcluster_bits();
            // Below 32: `within` is less than a cluster.
            let first = u32::try_from(within >> sc_bits).unwrap_or(0);
            let state = subcluster_state(entry.bitmap, first);
            let mut last = first;
            while last + 1 < g.subclusters() && subcluster_state(entry.bitmap, last + 1) == state {
                last += 1;
            }
            let run_end = cluster_start.saturating_add(u64::from(last + 1) << sc_bits);
            let kind = match state {
                SubclusterState::Invalid => {
                    return Err(bad(format!(
                        "subcluster {first} is both allocated and zero"
                    )));
                }
                SubclusterState::Allocated => match host {
                    Some(host) => Kind::Data { host },
                    None => {
                        return Err(bad(format!(
                            "subcluster {first} is allocated without a host cluster"
                        )));
                    }
                },
                SubclusterState::Zero => Kind::Zero { host },
                SubclusterState::Unallocated => Kind::Unallocated { host },
            };
            (kind, run_end)
        };
        let seg = self.emit(seg_end, kind);
        if let Kind::Data { host } = seg.kind
            && host
                .checked_add(seg.length)
                .is_none_or(|end| end > r.file_len)
        {
            return Err(Error::truncated(
                "qcow2 data cluster",
                host,
                seg.length,
                r.file_len,
            ));
        }
        Ok(Some(seg))
    }

    /// The segment from the current position to `end` (clamped to the walk), moving past it.
    fn emit(&mut self, end: u64, kind: Kind) -> ClusterRun {
        let end = end.min(self.end);
        let seg = ClusterRun {
            start: self.pos,
            length: end - self.pos,
            kind,
        };
        self.pos = end;
        seg
    }
}

thread_local! {
    /// One zstd decompression context per thread, reset for each cluster.
    static ZSTD: RefCell<Option<Decoder<'static>>> = const { RefCell::new(None) };
}

/// Inflates raw deflate data (no zlib header) into exactly `out.len()` bytes. Input after the
/// end of the deflate stream (the rest of the last sector) is ignored, and so is a stream that
/// fills the cluster without its end, as qemu reads them; a stream that stops short of the
/// cluster or goes on past it is an error.
pub fn inflate_cluster(input: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    use crate::compress::{InflateProblem, Inflated, inflate};
    match inflate(input, out, false) {
        Ok(Inflated::Ended(n)) if n < out.len() => Err(format!(
            "deflate data inflates to {n} bytes, less than the cluster of {}",
            out.len()
        )),
        Ok(_) => Ok(()),
        Err(InflateProblem::TooLong) => Err(format!(
            "deflate data inflates to more than the cluster of {}",
            out.len()
        )),
        Err(InflateProblem::Corrupt(e)) => Err(format!("deflate data is corrupt: {e}")),
    }
}

/// Decompresses zstd data into exactly `out.len()` bytes, as [`inflate_cluster`] does for
/// deflate: bytes after the frame are ignored, a frame shorter or longer than the cluster is an
/// error.
pub fn unzstd_cluster(input: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    ZSTD.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            let decoder = match slot.as_mut() {
                Some(d) => {
                    d.reinit().map_err(|e| format!("zstd: {e}"))?;
                    d
                }
                None => slot.insert(new_zstd_decoder()?),
            };
            unzstd_with(decoder, input, out)
        }
        Err(_) => unzstd_with(&mut new_zstd_decoder()?, input, out),
    })
}

fn new_zstd_decoder() -> std::result::Result<Decoder<'static>, String> {
    let mut d = Decoder::new().map_err(|e| format!("zstd: {e}"))?;
    d.set_parameter(DParameter::WindowLogMax(QCOW2_ZSTD_WINDOW_LOG_MAX))
        .map_err(|e| format!("zstd: {e}"))?;
    Ok(d)
}

fn unzstd_with(
    d: &mut Decoder<'static>,
    input: &[u8],
    out: &mut [u8],
) -> std::result::Result<(), String> {
    let corrupt = |e: std::io::Error| format!("zstd data is corrupt: {e}");
    let (mut read, mut written) = (0usize, 0usize);
    let mut frame_left = 1usize;
    while written < out.len() {
        let rest = input.get(read..).unwrap_or_default();
        let dst = out.get_mut(written..).unwrap_or_default();
        let st = d.run_on_buffers(rest, dst).map_err(corrupt)?;
        read += st.bytes_read;
        written += st.bytes_written;
        frame_left = st.remaining;
        if st.bytes_read == 0 && st.bytes_written == 0 {
            break;
        }
    }
    if written < out.len() {
        return Err(format!(
            "zstd data decompresses to {written} bytes, less than the cluster of {}",
            out.len()
        ));
    }
    if frame_left != 0 {
        // The cluster is full: the frame must end without giving more.
        let mut probe = [0u8; 1];
        let st = d
            .run_on_buffers(input.get(read..).unwrap_or_default(), &mut probe)
            .map_err(corrupt)?;
        if st.bytes_written > 0 {
            return Err(format!(
                "zstd data decompresses to more than the cluster of {}",
                out.len()
            ));
        }
        if st.remaining != 0 {
            return Err("zstd frame does not end after the cluster".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Opens a 16 MiB disk of 64 KiB clusters (version 3, `extended` L2 entries or not):
    /// refcount table at 0x10000, refcount block at 0x20000, L1 at 0x30000, its one L2 table at
    /// 0x40000, then four free clusters; `entries` are (index, descriptor, bitmap) of the L2
    /// table. Returns the error kind and message of the open, if any.
    fn open_with(extended: bool, entries: &[(usize, u64, u64)]) -> std::result::Result<(), String> {
        let mut b = super::super::header::tests::v3_header(16 << 20);
        if extended {
            b[72..80].copy_from_slice(&incompatible::EXTENDED_L2.to_be_bytes());
        }
        b.resize(9 << 16, 0);
        b[0x10000..0x10008].copy_from_slice(&0x20000u64.to_be_bytes());
        b[0x30000..0x30008].copy_from_slice(&(OFLAG_COPIED_BIT | 0x40000u64).to_be_bytes());
        let size = if extended { 16 } else { 8 };
        for &(i, d, bitmap) in entries {
            let at = 0x40000 + i * size;
            b[at..at + 8].copy_from_slice(&d.to_be_bytes());
            if extended {
                b[at + 8..at + 16].copy_from_slice(&bitmap.to_be_bytes());
            }
        }
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::MemoryStorage::new(b));
        Qcow2Reader::open(storage, &Qcow2OpenOptions::default())
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", e.kind()))
    }

    const OFLAG_COPIED_BIT: u64 = 1 << 63;
    use crate::formats::qcow2::tables::OFLAG_COMPRESSED;

    #[test]
    fn consistency_of_standard_entries() {
        let c = OFLAG_COPIED_BIT;
        open_with(
            false,
            &[
                (0, c | 0x50000, 0),
                (1, c | 0x60000, 0),
                (2, 0x70000 | 1, 0),
            ],
        )
        .unwrap();
        let err = |entries: &[(usize, u64, u64)]| open_with(false, entries).unwrap_err();
        let e = err(&[(0, c | 0x50000, 0), (3, c | 0x50000, 0)]);
        assert!(e.starts_with("malformed") && e.contains("shared"), "{e}");
        let e = err(&[(0, c | 0x40000, 0)]);
        assert!(e.contains("an L2 table at 0x40000"), "{e}");
        let e = err(&[(0, c | 0x20000, 0)]);
        assert!(e.contains("refcount block"), "{e}");
        let e = err(&[(0, c, 0)]);
        assert!(e.contains("COPIED"), "{e}");
        let e = err(&[(0, c | 0x50000 | 1 << 57, 0)]);
        assert!(e.contains("reserved bits 0x200000000000000"), "{e}");
        // A compressed cluster may not be COPIED.
        let e = err(&[(0, c | OFLAG_COMPRESSED | 0x50000, 0)]);
        assert!(e.contains("COPIED"), "{e}");
    }

    #[test]
    fn consistency_of_extended_entries() {
        let c = OFLAG_COPIED_BIT;
        // Allocated subclusters, zero subclusters, a compressed cluster.
        open_with(
            true,
            &[
                (0, c | 0x50000, 0x0000_0003),
                (1, 0, 0xffff_ffff_0000_0000),
                (2, OFLAG_COMPRESSED | 0x60000, 0),
            ],
        )
        .unwrap();
        let err = |entries: &[(usize, u64, u64)]| open_with(true, entries).unwrap_err();
        // The zero flag is reserved with extended entries.
        let e = err(&[(0, c | 0x50000 | 1, 1)]);
        assert!(e.contains("reserved bits 0x1"), "{e}");
        let e = err(&[(0, c | 0x50000, 1 | 1 << 32)]);
        assert!(e.contains("both allocated and zero"), "{e}");
        let e = err(&[(0, 0, 1)]);
        assert!(e.contains("without a host cluster"), "{e}");
        let e = err(&[(2, OFLAG_COMPRESSED | 0x60000, 1)]);
        assert!(e.contains("subcluster bitmap"), "{e}");
        // A host cluster with no allocated subcluster is still the guest cluster's own.
        let e = err(&[(0, c | 0x50000, 0), (1, c | 0x50000, 1)]);
        assert!(e.contains("shared"), "{e}");
    }

    fn deflate_raw(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn inflates_exactly_one_cluster() {
        let data = pattern(65536);
        let mut z = deflate_raw(&data);
        // Trailing bytes from the last sector are ignored.
        z.extend_from_slice(&[0xaa; 300]);
        let mut out = vec![0u8; 65536];
        inflate_cluster(&z, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn deflate_shorter_or_longer_than_the_cluster_is_an_error() {
        let mut out = vec![0u8; 65536];
        let short = deflate_raw(&pattern(60000));
        assert!(
            inflate_cluster(&short, &mut out)
                .unwrap_err()
                .contains("less than")
        );
        let long = deflate_raw(&pattern(70000));
        assert!(
            inflate_cluster(&long, &mut out)
                .unwrap_err()
                .contains("more than")
        );
        assert!(inflate_cluster(&[0xff; 100], &mut out).is_err());
        assert!(inflate_cluster(&[], &mut out).is_err());
    }

    #[test]
    fn zstd_exactly_one_cluster() {
        let data = pattern(65536);
        let mut z = zstd::bulk::compress(&data, 3).unwrap();
        z.extend_from_slice(&[0x55; 100]);
        let mut out = vec![0u8; 65536];
        unzstd_cluster(&z, &mut out).unwrap();
        assert_eq!(out, data);
        let short = zstd::bulk::compress(&pattern(1000), 3).unwrap();
        assert!(
            unzstd_cluster(&short, &mut out)
                .unwrap_err()
                .contains("less than")
        );
        let long = zstd::bulk::compress(&pattern(70000), 3).unwrap();
        assert!(
            unzstd_cluster(&long, &mut out)
                .unwrap_err()
                .contains("more than")
        );
        assert!(unzstd_cluster(&[1, 2, 3, 4, 5, 6, 7, 8], &mut out).is_err());
        // The decoder is reset between clusters.
        unzstd_cluster(&z, &mut out).unwrap();
        assert_eq!(out, data);
    }
}
