//! Reads fixed, dynamic and differencing VHDX as a virtual disk: opens and checks the header
//! section, the regions and the BAT, then answers "what is at this offset" from the BAT (and,
//! for partially present blocks of a differencing disk, from the sector bitmap).

use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use super::bat::{
    BatEntry, BatGeometry, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_NOT_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT, PAYLOAD_BLOCK_UNDEFINED, PAYLOAD_BLOCK_UNMAPPED,
    PAYLOAD_BLOCK_ZERO, SB_BLOCK_NOT_PRESENT, SB_BLOCK_PRESENT, SECTOR_BITMAP_BLOCK,
};
use super::header::{self, HEADER_OFFSETS, HEADER_SIZE, Header, MIB};
use super::identifier::{FileIdentifier, IDENTIFIER_SIZE};
use super::info::VhdxInfo;
use super::log::Replayed;
use super::metadata::Metadata;
use super::region::{RegionTable, TABLE_OFFSETS, TABLE_SIZE};
use crate::block::{BlockReader, usize_len};
use crate::cache::Lru;
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::info::FormatInfo;
use crate::limits::{MAX_VHDX_BAT_BYTES, VHDX_BITMAP_CACHE};
use crate::mapped::{MappedDisk, MappedReader, Mapping, Segment, StoredRanges, only_file};
use crate::storage::{Storage, read_exact_at};

/// The header section: identifier, headers, region tables; nothing else may be in it.
pub const HEADER_SECTION: u64 = MIB;

/// A VHDX's structures, read and checked, before any parent is attached.
pub struct VhdxImage {
    storage: Arc<dyn Storage>,
    /// The file type identifier.
    pub identifier: FileIdentifier,
    /// The current header.
    pub header: Header,
    /// Which copy is current (0: at 64 KiB, 1: at 128 KiB).
    pub header_copy: usize,
    /// The region table.
    pub regions: RegionTable,
    /// The metadata region's known items.
    pub metadata: Metadata,
    /// The BAT's shape.
    pub geometry: BatGeometry,
    /// The BAT's entries for the disk, each checked.
    bat: Vec<u64>,
    /// Log entries applied in memory when the file was opened.
    pub log_entries_replayed: u64,
}

impl VhdxImage {
    /// Reads and checks every structure of the file: the header section, the regions, the
    /// metadata items, and every BAT entry of the disk (states, reserved bits, blocks inside
    /// the file, no block on another block or on the file's own structures).
    pub fn open(storage: Arc<dyn Storage>) -> Result<VhdxImage> {
        let len = storage.len();
        if len < HEADER_SECTION {
            return Err(Error::truncated(
                "vhdx header section",
                0,
                HEADER_SECTION,
                len,
            ));
        }
        let mut id = vec![0u8; IDENTIFIER_SIZE];
        read_exact_at(&*storage, &mut id, 0, "vhdx file type identifier")?;
        let identifier = FileIdentifier::parse(&id)?;
        let read_header = |at: u64| -> Result<Header> {
            let mut b = vec![0u8; HEADER_SIZE];
            read_exact_at(&*storage, &mut b, at, "vhdx header")?;
            Header::parse(&b, at)
        };
        let (header, header_copy) = header::current(
            read_header(HEADER_OFFSETS[0]),
            read_header(HEADER_OFFSETS[1]),
        )?;
        let log_end = header.log_offset.checked_add(u64::from(header.log_length));
        if header.log_length > 0 && log_end.is_none_or(|end| end > len) {
            return Err(Error::truncated(
                "vhdx log",
                header.log_offset,
                u64::from(header.log_length),
                len.saturating_sub(header.log_offset),
            ));
        }
        if header.log_guid.is_nil() {
            return VhdxImage::open_replayed(storage, identifier, header, header_copy, 0);
        }
        // Not closed cleanly: the log's writes are applied in memory before anything else is
        // read (the file is never written).
        let (replayed, entries) = Replayed::open(
            storage,
            header.log_offset,
            u64::from(header.log_length),
            &header.log_guid,
        )?;
        VhdxImage::open_replayed(Arc::new(replayed), identifier, header, header_copy, entries)
    }

    /// The rest of [`open`](Self::open), once the log (if any) is applied to `storage`.
    fn open_replayed(
        storage: Arc<dyn Storage>,
        identifier: FileIdentifier,
        header: Header,
        header_copy: usize,
        log_entries_replayed: u64,
    ) -> Result<VhdxImage> {
        let len = storage.len();
        let regions = read_regions(&*storage)?;
        for r in &regions.entries {
            if r.end() > len {
                return Err(Error::truncated(
                    "vhdx region",
                    r.file_offset,
                    u64::from(r.length),
                    len.saturating_sub(r.file_offset),
                ));
            }
        }
        let log = (
            header.log_offset,
            header.log_offset + u64::from(header.log_length),
        );
        for r in &regions.entries {
            if r.file_offset < log.1 && log.0 < r.end() {
                return Err(Error::malformed(
                    "vhdx header",
                    HEADER_OFFSETS[header_copy] + 72,
                    format!(
                        "the log at {:#x} overlaps region {} at {:#x}",
                        log.0, r.guid, r.file_offset
                    ),
                ));
            }
        }
        let md = regions.metadata;
        let metadata = Metadata::read(&*storage, md.file_offset, u64::from(md.length))?;
        let geometry = BatGeometry::new(
            metadata.virtual_disk_size,
            metadata.block_size,
            metadata.logical_sector_size,
            metadata.has_parent,
        );
        let bat_at = regions.bat.file_offset;
        let bat_bytes = geometry.entries.saturating_mul(8);
        if bat_bytes > MAX_VHDX_BAT_BYTES {
            return Err(Error::limit(
                "vhdx BAT",
                bat_at,
                format!(
                    "{} entries ({bat_bytes} bytes) are more than the {MAX_VHDX_BAT_BYTES} bytes \
                     ims reads",
                    geometry.entries
                ),
            ));
        }
        if bat_bytes > u64::from(regions.bat.length) {
            return Err(Error::malformed(
                "vhdx region table",
                TABLE_OFFSETS[0],
                format!(
                    "the BAT region of {} bytes cannot hold the {} entries of a {}-byte disk",
                    regions.bat.length, geometry.entries, metadata.virtual_disk_size
                ),
            ));
        }
        let mut raw = vec![0u8; usize_len(bat_bytes)?];
        read_exact_at(&*storage, &mut raw, bat_at, "vhdx BAT")?;
        let bat: Vec<u64> = raw.chunks_exact(8).map(LittleEndian::read_u64).collect();
        drop(raw);
        let image = VhdxImage {
            storage,
            identifier,
            header,
            header_copy,
            regions,
            metadata,
            geometry,
            bat,
            log_entries_replayed,
        };
        image.check_bat()?;
        Ok(image)
    }

    /// `fixed`, `dynamic` or `differencing`.
    pub fn subformat(&self) -> &'static str {
        if self.metadata.has_parent {
            "differencing"
        } else if self.metadata.leave_block_allocated {
            "fixed"
        } else {
            "dynamic"
        }
    }

    /// Where BAT entry `index` is in the file, for errors.
    fn entry_at(&self, index: u64) -> u64 {
        self.regions.bat.file_offset + index * 8
    }

    /// The bytes of the file block `index` owns: a sector bitmap's 1 MiB, or a payload block's
    /// part inside the disk (a disk's last block may be partial).
    fn extent_len(&self, index: u64) -> u64 {
        let g = &self.geometry;
        if g.is_bitmap_index(index) {
            return SECTOR_BITMAP_BLOCK;
        }
        let block = index - index / (g.chunk_ratio + 1);
        let start = block * g.block_size;
        g.block_size
            .min(self.metadata.virtual_disk_size.saturating_sub(start))
    }

    /// Whether entry `index` (already parsed) points at bytes ims reads.
    fn allocated(&self, index: u64, entry: BatEntry) -> bool {
        if self.geometry.is_bitmap_index(index) {
            entry.state == SB_BLOCK_PRESENT
        } else {
            matches!(
                entry.state,
                PAYLOAD_BLOCK_FULLY_PRESENT | PAYLOAD_BLOCK_PARTIALLY_PRESENT
            )
        }
    }

    /// Checks every entry: reserved bits, a state valid for its kind and the disk's type,
    /// blocks inside the file, partially present blocks with a sector bitmap; then that no two
    /// blocks share bytes and none lies on the header section, the log, the BAT or the
    /// metadata region.
    fn check_bat(&self) -> Result<()> {
        let len = self.storage.len();
        let differencing = self.metadata.has_parent;
        let mut allocated: Vec<u32> = Vec::new();
        for (i, &raw) in self.bat.iter().enumerate() {
            let index = i as u64;
            let at = self.entry_at(index);
            let entry = BatEntry::parse(raw, at)?;
            let bitmap = self.geometry.is_bitmap_index(index);
            let valid = if bitmap {
                entry.state == SB_BLOCK_NOT_PRESENT
                    || (differencing && entry.state == SB_BLOCK_PRESENT)
            } else {
                matches!(
                    entry.state,
                    PAYLOAD_BLOCK_NOT_PRESENT
                        | PAYLOAD_BLOCK_UNDEFINED
                        | PAYLOAD_BLOCK_ZERO
                        | PAYLOAD_BLOCK_UNMAPPED
                        | PAYLOAD_BLOCK_FULLY_PRESENT
                ) || (differencing && entry.state == PAYLOAD_BLOCK_PARTIALLY_PRESENT)
            };
            if !valid {
                return Err(Error::malformed(
                    "vhdx BAT",
                    at,
                    format!(
                        "{} entry {index} has state {}, invalid in a {} disk",
                        if bitmap { "sector bitmap" } else { "payload" },
                        entry.state,
                        self.subformat()
                    ),
                ));
            }
            if !bitmap && entry.state == PAYLOAD_BLOCK_PARTIALLY_PRESENT {
                let block = index - index / (self.geometry.chunk_ratio + 1);
                let sb = self.geometry.bitmap_index(block);
                let sb_state = self.bat.get(sb as usize).map(|&r| (r & 7) as u8);
                if sb_state != Some(SB_BLOCK_PRESENT) {
                    return Err(Error::malformed(
                        "vhdx BAT",
                        at,
                        format!(
                            "payload entry {index} is partially present but its chunk's sector \
                             bitmap (entry {sb}) is not present"
                        ),
                    ));
                }
            }
            // Entries of blocks past the disk (the tail of a differencing disk's last chunk)
            // are never read.
            if !self.allocated(index, entry) || self.extent_len(index) == 0 {
                continue;
            }
            let start = entry.file_offset();
            let extent = self.extent_len(index);
            if start.checked_add(extent).is_none_or(|end| end > len) {
                return Err(Error::malformed(
                    "vhdx BAT",
                    at,
                    format!(
                        "entry {index} points at {start:#x}, {extent} bytes past which is past \
                         the end of the file ({len:#x})"
                    ),
                ));
            }
            let i = u32::try_from(i).map_err(|_| Error::internal("vhdx BAT index"))?;
            allocated.push(i);
        }
        self.check_overlaps(allocated)
    }

    /// Refuses a block that shares bytes with another block (one stored block read as two
    /// guest ranges) or with the file's own structures (metadata read as guest data). Memory:
    /// four bytes per allocated block.
    fn check_overlaps(&self, mut allocated: Vec<u32>) -> Result<()> {
        let extent = |i: u32| {
            let start = (self.bat[i as usize] >> 20) << 20;
            (start, start + self.extent_len(u64::from(i)))
        };
        allocated.sort_unstable_by_key(|&i| extent(i).0);
        let refuse = |i: u32, what: String, shared: &str| {
            Error::malformed(
                "vhdx BAT",
                self.entry_at(u64::from(i)),
                format!(
                    "entry {i} at {:#x} overlaps {what}: stored bytes would be read as {shared}",
                    extent(i).0
                ),
            )
        };
        // Sorted by start, a block that overlaps any earlier one overlaps the one before it.
        for pair in allocated.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if extent(b).0 < extent(a).1 {
                let other = format!("entry {a} at {:#x}", extent(a).0);
                return Err(refuse(b, other, "two guest ranges"));
            }
        }
        let log = &self.header;
        let structures = [
            (0, HEADER_SECTION, "the header section"),
            (
                log.log_offset,
                log.log_offset + u64::from(log.log_length),
                "the log",
            ),
            (
                self.regions.bat.file_offset,
                self.regions.bat.end(),
                "the BAT",
            ),
            (
                self.regions.metadata.file_offset,
                self.regions.metadata.end(),
                "the metadata region",
            ),
        ];
        let others = self
            .regions
            .entries
            .iter()
            .map(|r| (r.file_offset, r.end(), "a region"));
        for (start, end, what) in structures.into_iter().chain(others) {
            if start >= end {
                continue;
            }
            let next = allocated.partition_point(|&i| extent(i).0 < start);
            let before = next.checked_sub(1).map(|k| allocated[k]);
            let hit = before
                .filter(|&i| extent(i).1 > start)
                .or_else(|| allocated.get(next).copied().filter(|&i| extent(i).0 < end));
            if let Some(i) = hit {
                return Err(refuse(i, format!("{what} at {start:#x}"), "guest data"));
            }
        }
        Ok(())
    }

    /// Makes the reader. A differencing disk needs its parent; the others take none.
    pub fn into_reader(self, parent: Option<Arc<dyn BlockReader>>) -> Result<VhdxReader> {
        if self.metadata.has_parent && parent.is_none() {
            return Err(Error::reference(
                ReferenceKind::ParentLocator,
                "the parent of a differencing vhdx",
            ));
        }
        Ok(MappedReader::new(
            VhdxDisk {
                image: self,
                bitmaps: Lru::new(VHDX_BITMAP_CACHE),
            },
            parent,
        ))
    }

    /// The payload entry of block `block`.
    fn payload(&self, block: u64) -> BatEntry {
        let raw = usize::try_from(self.geometry.payload_index(block))
            .ok()
            .and_then(|i| self.bat.get(i))
            .copied()
            .unwrap_or(0);
        // Checked when the image was opened.
        BatEntry {
            state: (raw & 7) as u8,
            file_offset_mb: raw >> 20,
        }
    }
}

/// Reads the two region table copies and picks one: the first valid copy; two valid copies
/// that differ make the image ambiguous.
fn read_regions(storage: &dyn Storage) -> Result<RegionTable> {
    let read = |at: u64| -> Result<RegionTable> {
        let mut b = vec![0u8; TABLE_SIZE];
        read_exact_at(storage, &mut b, at, "vhdx region table")?;
        RegionTable::parse(&b, at)
    };
    match (read(TABLE_OFFSETS[0]), read(TABLE_OFFSETS[1])) {
        (Ok(a), Ok(b)) if a != b => Err(Error::malformed(
            "vhdx region table",
            TABLE_OFFSETS[1],
            "both region tables are valid but differ: the image is ambiguous",
        )),
        (Ok(a), _) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(e), Err(_)) => Err(e),
    }
}

/// The reader: a [`VhdxDisk`] with its parent, if it has one.
pub type VhdxReader = MappedReader<VhdxDisk>;

/// What a VHDX's BAT and sector bitmaps say about each offset of its disk.
pub struct VhdxDisk {
    image: VhdxImage,
    /// The sector bitmap bits of recently read partially present blocks, by block.
    bitmaps: Lru<u64, Arc<Vec<u8>>>,
}

impl VhdxDisk {
    /// The image's structures.
    pub fn image(&self) -> &VhdxImage {
        &self.image
    }

    /// The sector bitmap bits of payload block `block` (a bit per logical sector, bit 0 of
    /// byte 0 first).
    fn bitmap(&self, block: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.bitmaps.get(&block) {
            return Ok(b);
        }
        let img = &self.image;
        let g = &img.geometry;
        let sb = img
            .bat
            .get(usize_len(g.bitmap_index(block))?)
            .copied()
            .unwrap_or(0);
        let sector = u64::from(img.metadata.logical_sector_size);
        let bytes = g.block_size / sector / 8;
        let at = ((sb >> 20) << 20) + (block % g.chunk_ratio) * bytes;
        let mut b = vec![0u8; usize_len(bytes)?];
        read_exact_at(&*img.storage, &mut b, at, "vhdx sector bitmap")?;
        let b = Arc::new(b);
        self.bitmaps.insert(block, b.clone());
        Ok(b)
    }
}

/// Whether sector `sector` of a block is present in its bitmap bits.
fn present(bits: &[u8], sector: u64) -> bool {
    usize::try_from(sector / 8)
        .ok()
        .and_then(|i| bits.get(i))
        .is_some_and(|b| b & (1 << (sector % 8)) != 0)
}

impl MappedDisk for VhdxDisk {
    fn virtual_size(&self) -> u64 {
        self.image.metadata.virtual_disk_size
    }

    fn walk(&self, offset: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()> {
        let img = &self.image;
        let block_size = img.geometry.block_size;
        let differencing = img.metadata.has_parent;
        let parent = Mapping::Unallocated { host: None };
        let zero = Mapping::Zero { host: None };
        let mut pos = offset;
        while pos < end {
            let block = pos / block_size;
            let block_start = block * block_size;
            let block_end = (block_start + block_size).min(end);
            let entry = img.payload(block);
            let stored = |from: u64| Mapping::Stored {
                file: 0,
                offset: entry.file_offset() + (from - block_start),
            };
            match entry.state {
                PAYLOAD_BLOCK_FULLY_PRESENT => f(Segment {
                    start: pos,
                    length: block_end - pos,
                    mapping: stored(pos),
                })?,
                PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                    let bits = self.bitmap(block)?;
                    let sector = u64::from(img.metadata.logical_sector_size);
                    while pos < block_end {
                        let here = present(&bits, (pos - block_start) / sector);
                        let mut run_end = (pos / sector + 1) * sector;
                        while run_end < block_end
                            && present(&bits, (run_end - block_start) / sector) == here
                        {
                            run_end += sector;
                        }
                        let run_end = run_end.min(block_end);
                        f(Segment {
                            start: pos,
                            length: run_end - pos,
                            mapping: if here { stored(pos) } else { parent },
                        })?;
                        pos = run_end;
                    }
                }
                // Not in this file: the parent's, in a differencing disk; zeros otherwise (as
                // qemu and Hyper-V read them).
                PAYLOAD_BLOCK_NOT_PRESENT | PAYLOAD_BLOCK_UNDEFINED if differencing => {
                    f(Segment {
                        start: pos,
                        length: block_end - pos,
                        mapping: parent,
                    })?
                }
                _ => f(Segment {
                    start: pos,
                    length: block_end - pos,
                    mapping: zero,
                })?,
            }
            pos = block_end;
        }
        Ok(())
    }

    fn file(&self, file: usize) -> Result<&dyn Storage> {
        only_file(&*self.image.storage, file)
    }

    fn stored_ranges(&self, _file: usize) -> StoredRanges {
        // Blocks are allocated whole; the parts never written are holes of the file, which
        // read as zeros, so a conversion need not read them.
        StoredRanges::LocatedSplitByHoles
    }

    fn data_structure(&self) -> &'static str {
        "vhdx payload block"
    }

    fn info(&self) -> Option<FormatInfo> {
        let img = &self.image;
        let m = &img.metadata;
        Some(FormatInfo::Vhdx(VhdxInfo {
            subformat: img.subformat().into(),
            creator: img.identifier.creator.clone(),
            block_size: m.block_size,
            log_size: img.header.log_length,
            logical_sector_size: m.logical_sector_size,
            physical_sector_size: m.physical_sector_size,
            virtual_disk_id: m.virtual_disk_id.to_string(),
            data_write_guid: img.header.data_write_guid.to_string(),
            log_entries_replayed: img.log_entries_replayed,
            parent_locator: m.parent_locator.as_ref().map(|l| l.entries.clone()),
        }))
    }
}
