//! Reads fixed, dynamic and differencing VHDs as a virtual disk.

use std::sync::Arc;

use byteorder::{BigEndian, ByteOrder};

use super::dynamic::{
    DynamicHeader, HEADER_SIZE, LOCATOR_COUNT, UNALLOCATED, locator_path, sector_present,
};
use super::footer::{DiskType, FOOTER_SIZE, Footer, Geometry, SizeSource, uuid_string};
use super::info::{VhdInfo, VhdLocatorInfo};
use crate::block::{BlockReader, usize_len};
use crate::cache::Lru;
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::info::FormatInfo;
use crate::limits::{MAX_LOCATOR_BYTES, MAX_VHD_DISK_SIZE, VHD_BITMAP_CACHE};
use crate::mapped::{MappedDisk, MappedReader, Mapping, Segment, StoredRanges, only_file};
use crate::storage::{Storage, read_exact_at};

/// A VHD's structures, read and checked, before any parent is attached.
pub struct VhdImage {
    storage: Arc<dyn Storage>,
    pub(crate) footer: Footer,
    /// The footer copy at offset 0 was used because the one at the end is missing or damaged.
    pub footer_from_copy: bool,
    /// The disk's size in bytes, from the field the creator sizes disks by.
    pub size: u64,
    pub(crate) size_source: SizeSource,
    /// The dynamic header and BAT of dynamic and differencing disks.
    pub(crate) sparse: Option<Sparse>,
}

/// The parts of a dynamic or differencing disk.
pub(crate) struct Sparse {
    pub header: DynamicHeader,
    /// BAT entries for the blocks of the disk (entries past the disk are not kept).
    pub bat: Vec<u32>,
    /// Parent locator paths, decoded, with their platform codes.
    pub locators: Vec<(String, String)>,
}

impl VhdImage {
    /// Reads and checks the footer, and for sparse disks the dynamic header and the BAT.
    pub fn open(storage: Arc<dyn Storage>) -> Result<VhdImage> {
        let len = storage.len();
        if len < FOOTER_SIZE as u64 {
            return Err(Error::truncated("vhd footer", 0, FOOTER_SIZE as u64, len));
        }
        let mut buf = [0u8; FOOTER_SIZE];
        read_exact_at(&*storage, &mut buf, len - FOOTER_SIZE as u64, "vhd footer")?;
        let (footer, footer_from_copy) = match Footer::parse(&buf, len - FOOTER_SIZE as u64) {
            Ok(f) => (f, false),
            Err(at_end) => {
                // Dynamic disks keep a copy at offset 0; a damaged or missing footer at the end
                // (a truncated upload) can still be read through it.
                read_exact_at(&*storage, &mut buf, 0, "vhd footer copy")?;
                match Footer::parse(&buf, 0) {
                    Ok(f) if f.disk_type != DiskType::Fixed => (f, true),
                    _ => return Err(at_end),
                }
            }
        };
        let footer_at = if footer_from_copy {
            0
        } else {
            len - FOOTER_SIZE as u64
        };
        if !footer_from_copy && len >= 2 * FOOTER_SIZE as u64 {
            // Both footers valid but telling different disks: which one a reader believes
            // decides what it reads, so the image is ambiguous.
            read_exact_at(&*storage, &mut buf, 0, "vhd footer copy")?;
            if let Ok(copy) = Footer::parse(&buf, 0) {
                check_copy_agrees(&footer, &copy)?;
            }
        }
        let (size, size_source) = footer.virtual_size();
        // Everything before the footer at the end (all of the file when the copy was used).
        let data_end = if footer_from_copy {
            len
        } else {
            len - FOOTER_SIZE as u64
        };
        let sparse = match footer.disk_type {
            DiskType::Fixed => {
                if size > data_end {
                    return Err(Error::truncated("vhd fixed disk data", 0, size, data_end));
                }
                // current_size must fit too, unless the creator sizes by geometry and the file
                // holds the disk rounded down to the geometry the specification's algorithm
                // gives for current_size (as Virtual PC writes it).
                let rounded = size_source == SizeSource::Geometry
                    && footer.disk_geometry == Geometry::for_sectors(footer.current_size / 512);
                if footer.current_size > data_end && !rounded {
                    return Err(Error::truncated(
                        "vhd fixed disk data",
                        0,
                        footer.current_size,
                        data_end,
                    ));
                }
                None
            }
            DiskType::Dynamic | DiskType::Differencing => {
                if size > MAX_VHD_DISK_SIZE {
                    return Err(Error::malformed(
                        "vhd footer",
                        footer_at + 48,
                        format!(
                            "a {} disk of {size} bytes is beyond the {MAX_VHD_DISK_SIZE} bytes \
                             (2040 GiB) a VHD's BAT can address",
                            footer.disk_type.name()
                        ),
                    ));
                }
                Some(read_sparse(&*storage, &footer, size, data_end)?)
            }
        };
        Ok(VhdImage {
            storage,
            footer,
            footer_from_copy,
            size,
            size_source,
            sparse,
        })
    }

    /// The parent's unique id and the names to look for it by, for a differencing disk: the
    /// relative locators first, then the parent's file name. Absolute locators are listed for
    /// `info` but never used to open anything.
    pub fn parent(&self) -> Option<([u8; 16], Vec<String>)> {
        let sparse = self.sparse.as_ref()?;
        if self.footer.disk_type != DiskType::Differencing {
            return None;
        }
        let mut names = Vec::new();
        for (code, path) in &sparse.locators {
            if code == "W2ru" || code == "Wi2r" {
                let p = path.replace('\\', "/");
                let p = p.strip_prefix("./").unwrap_or(&p).to_string();
                if !p.is_empty() && !names.contains(&p) {
                    names.push(p);
                }
            }
        }
        let name = &sparse.header.parent_unicode_name;
        if !name.is_empty() && !names.contains(name) {
            names.push(name.clone());
        }
        Some((sparse.header.parent_unique_id, names))
    }

    /// A human name for the parent reference, for errors.
    pub fn parent_description(&self) -> String {
        match &self.sparse {
            Some(s) => {
                let mut parts = vec![s.header.parent_unicode_name.clone()];
                parts.extend(
                    s.locators
                        .iter()
                        .map(|(code, path)| format!("{code}:{path}")),
                );
                parts.join(", ")
            }
            None => String::new(),
        }
    }

    /// Makes the reader. A differencing disk needs its parent; a dynamic or fixed one takes none.
    pub fn into_reader(self, parent: Option<Arc<dyn BlockReader>>) -> Result<VhdReader> {
        if self.footer.disk_type == DiskType::Differencing && parent.is_none() {
            return Err(Error::reference(
                ReferenceKind::ParentLocator,
                self.parent_description(),
            ));
        }
        Ok(MappedReader::new(
            VhdDisk {
                image: self,
                bitmaps: Lru::new(VHD_BITMAP_CACHE),
            },
            parent,
        ))
    }
}

/// Refuses a valid footer copy at offset 0 that describes another disk than the footer at the
/// end: another type, dynamic header, size or identity. Fields that do not change what is read
/// (time stamp, saved state, creator version) may differ.
fn check_copy_agrees(footer: &Footer, copy: &Footer) -> Result<()> {
    let differs = if copy.disk_type != footer.disk_type {
        "disk type"
    } else if copy.data_offset != footer.data_offset {
        "data offset"
    } else if copy.virtual_size() != footer.virtual_size()
        || copy.current_size != footer.current_size
    {
        "disk size"
    } else if copy.unique_id != footer.unique_id {
        "unique id"
    } else {
        return Ok(());
    };
    Err(Error::malformed(
        "vhd footer copy",
        0,
        format!(
            "the copy at offset 0 and the footer at the end are both valid but differ in their \
             {differs}: the image is ambiguous"
        ),
    ))
}

/// Refuses a block that shares stored bytes with another block (one stored block read as many
/// guest ranges: amplification) or with the image's metadata (metadata read as guest data).
/// A block is its bitmap and `block_bytes`, except the disk's last block, which is `last_bytes`
/// (only the part inside the disk is stored). `metadata` are (start, end, name). Memory: one u32
/// per allocated block (the sorted entries); indices are looked up only to name an error.
fn check_overlaps(
    bat: &[u32],
    block_bytes: u64,
    last_bytes: u64,
    metadata: &[(u64, u64, &'static str)],
    table_offset: u64,
) -> Result<()> {
    let last_entry = bat.last().copied().unwrap_or(UNALLOCATED);
    let extent = |e: u32| {
        let start = u64::from(e) * 512;
        let len = if e == last_entry {
            last_bytes
        } else {
            block_bytes
        };
        (start, start + len)
    };
    // The BAT index of `entry`: its `nth` occurrence (for naming only).
    let index = |entry: u32, nth: usize| {
        bat.iter()
            .enumerate()
            .filter(|(_, e)| **e == entry)
            .nth(nth)
            .map_or(0, |(i, _)| i)
    };
    let refuse = |entry: u32, nth: usize, other: String, shared: &str| {
        let i = index(entry, nth);
        Error::malformed(
            "vhd BAT",
            table_offset + i as u64 * 4,
            format!(
                "block {i} at {:#x} overlaps {other}: stored bytes would be read as {shared}",
                extent(entry).0
            ),
        )
    };
    let mut sorted: Vec<u32> = bat.iter().copied().filter(|&e| e != UNALLOCATED).collect();
    sorted.sort_unstable();
    // Sorted by start, a block that overlaps any earlier one overlaps the one just before it
    // (blocks before it do not overlap each other, or the check stopped there).
    for pair in sorted.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if extent(b).0 < extent(a).1 {
            let nth = usize::from(a == b);
            let other = format!("block {} at {:#x}", index(a, 0), extent(a).0);
            return Err(refuse(b, nth, other, "two guest ranges"));
        }
    }
    for &(start, end, what) in metadata {
        if start >= end {
            continue;
        }
        // The first block starting at or after `start`, and the one before it.
        let next = sorted.partition_point(|&e| extent(e).0 < start);
        let before = next.checked_sub(1).map(|k| sorted[k]);
        let hit = before
            .filter(|&e| extent(e).1 > start)
            .or_else(|| sorted.get(next).copied().filter(|&e| extent(e).0 < end));
        if let Some(e) = hit {
            return Err(refuse(e, 0, format!("{what} at {start:#x}"), "guest data"));
        }
    }
    Ok(())
}

/// Reads the dynamic header, parent locators and BAT, checking each against the file.
fn read_sparse(storage: &dyn Storage, footer: &Footer, size: u64, data_end: u64) -> Result<Sparse> {
    let at = footer.data_offset;
    if at
        .checked_add(HEADER_SIZE as u64)
        .is_none_or(|end| end > data_end)
    {
        return Err(Error::malformed(
            "vhd footer",
            16,
            format!("data offset {at:#x} leaves no room for the dynamic header"),
        ));
    }
    let mut buf = [0u8; HEADER_SIZE];
    read_exact_at(storage, &mut buf, at, "vhd dynamic header")?;
    let header = DynamicHeader::parse(&buf, at)?;
    let block_size = u64::from(header.block_size);
    let blocks = size.div_ceil(block_size);
    if u64::from(header.max_table_entries) < blocks {
        return Err(Error::malformed(
            "vhd dynamic header",
            at + 28,
            format!(
                "{} BAT entries of {block_size} bytes cannot hold a disk of {size} bytes",
                header.max_table_entries
            ),
        ));
    }
    // The whole table the header declares must lie in the file; only the entries for the
    // disk's blocks are read.
    let declared = u64::from(header.max_table_entries) * 4;
    if header
        .table_offset
        .checked_add(declared)
        .is_none_or(|end| end > data_end)
    {
        return Err(Error::malformed(
            "vhd dynamic header",
            at + 16,
            format!(
                "BAT at {:#x} of {} entries runs past the end of the file",
                header.table_offset, header.max_table_entries
            ),
        ));
    }
    let bat_bytes = blocks * 4;
    let mut raw = vec![0u8; usize_len(bat_bytes)?];
    read_exact_at(storage, &mut raw, header.table_offset, "vhd BAT")?;
    let bat: Vec<u32> = raw.chunks_exact(4).map(BigEndian::read_u32).collect();
    let bitmap_size = header.bitmap_size();
    let mut metadata = vec![
        (0, FOOTER_SIZE as u64, "the footer copy"),
        (at, at + HEADER_SIZE as u64, "the dynamic header"),
        (
            header.table_offset,
            header.table_offset + declared,
            "the BAT",
        ),
    ];
    for (i, &entry) in bat.iter().enumerate() {
        if entry == UNALLOCATED {
            continue;
        }
        let block_start = i as u64 * block_size;
        // Only the part of the last block inside the disk must be in the file.
        let needed = bitmap_size + (size - block_start).min(block_size).next_multiple_of(512);
        let start = u64::from(entry) * 512;
        if start.checked_add(needed).is_none_or(|end| end > data_end) {
            return Err(Error::malformed(
                "vhd BAT",
                header.table_offset + i as u64 * 4,
                format!("block {i} at {start:#x} runs past the end of the file"),
            ));
        }
    }
    let mut locators = Vec::new();
    if footer.disk_type == DiskType::Differencing {
        for (slot, loc) in header
            .parent_locators
            .iter()
            .take(LOCATOR_COUNT)
            .enumerate()
        {
            if loc.platform_code == [0; 4] || loc.platform_data_length == 0 {
                continue;
            }
            let where_ = at + 576 + slot as u64 * 24;
            if loc.platform_data_length > MAX_LOCATOR_BYTES
                || loc
                    .platform_data_offset
                    .checked_add(u64::from(loc.platform_data_length))
                    .is_none_or(|end| end > data_end)
            {
                return Err(Error::malformed(
                    "vhd parent locator",
                    where_,
                    "locator data lies outside the file or is too long",
                ));
            }
            let mut data = vec![0u8; loc.platform_data_length as usize];
            read_exact_at(
                storage,
                &mut data,
                loc.platform_data_offset,
                "vhd parent locator",
            )?;
            metadata.push((
                loc.platform_data_offset,
                loc.platform_data_offset + u64::from(loc.platform_data_length),
                "a parent locator's data",
            ));
            if let Some(path) = locator_path(loc, &data) {
                locators.push((
                    String::from_utf8_lossy(&loc.platform_code).to_string(),
                    path,
                ));
            }
        }
    }
    // (The footer at the end lies past every block: each ends by `data_end`, checked above.)
    let last_start = blocks.saturating_sub(1) * block_size;
    let last_bytes = bitmap_size
        + (size - last_start.min(size))
            .min(block_size)
            .next_multiple_of(512);
    check_overlaps(
        &bat,
        bitmap_size + block_size,
        last_bytes,
        &metadata,
        header.table_offset,
    )?;
    Ok(Sparse {
        header,
        bat,
        locators,
    })
}

/// The reader: a [`VhdDisk`] with its parent, if it has one.
pub type VhdReader = MappedReader<VhdDisk>;

/// What a VHD's BAT and sector bitmaps say about each offset of its disk.
pub struct VhdDisk {
    image: VhdImage,
    /// Sector bitmaps of recently read blocks, by BAT entry.
    bitmaps: Lru<u32, Arc<Vec<u8>>>,
}

impl VhdDisk {
    /// The image's structures.
    pub fn image(&self) -> &VhdImage {
        &self.image
    }

    fn bitmap(&self, entry: u32) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.bitmaps.get(&entry) {
            return Ok(b);
        }
        let Some(sparse) = &self.image.sparse else {
            return Err(Error::internal("vhd: the bitmap of a fixed disk"));
        };
        let mut b = vec![0u8; usize_len(sparse.header.bitmap_size())?];
        read_exact_at(
            &*self.image.storage,
            &mut b,
            u64::from(entry) * 512,
            "vhd block bitmap",
        )?;
        let b = Arc::new(b);
        self.bitmaps.insert(entry, b.clone());
        Ok(b)
    }
}

impl MappedDisk for VhdDisk {
    fn virtual_size(&self) -> u64 {
        self.image.size
    }

    fn walk(&self, offset: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()> {
        let stored = |start: u64, length: u64, at: u64| Segment {
            start,
            length,
            mapping: Mapping::Stored {
                file: 0,
                offset: at,
            },
        };
        let Some(sparse) = &self.image.sparse else {
            return f(stored(offset, end - offset, offset));
        };
        // A differencing disk's absent sectors are its parent's; a dynamic disk's are zeros.
        let absent = if self.image.footer.disk_type == DiskType::Differencing {
            Mapping::Unallocated { host: None }
        } else {
            Mapping::Zero { host: None }
        };
        let block_size = u64::from(sparse.header.block_size);
        let bitmap_size = sparse.header.bitmap_size();
        let mut pos = offset;
        while pos < end {
            let block = pos / block_size;
            let block_end = ((block + 1) * block_size).min(end);
            let entry = usize::try_from(block)
                .ok()
                .and_then(|i| sparse.bat.get(i))
                .copied()
                .unwrap_or(UNALLOCATED);
            if entry == UNALLOCATED {
                f(Segment {
                    start: pos,
                    length: block_end - pos,
                    mapping: absent,
                })?;
                pos = block_end;
                continue;
            }
            let data_start = u64::from(entry) * 512 + bitmap_size;
            let bitmap = self.bitmap(entry)?;
            // Runs of sectors with the same bitmap bit.
            while pos < block_end {
                let sector = (pos % block_size) / 512;
                let present = sector_present(&bitmap, sector);
                let mut run_end = ((pos / 512) + 1) * 512;
                while run_end < block_end
                    && sector_present(&bitmap, (run_end % block_size) / 512) == present
                {
                    run_end += 512;
                }
                let run_end = run_end.min(block_end);
                f(if present {
                    stored(pos, run_end - pos, data_start + pos % block_size)
                } else {
                    Segment {
                        start: pos,
                        length: run_end - pos,
                        mapping: absent,
                    }
                })?;
                pos = run_end;
            }
        }
        Ok(())
    }

    fn file(&self, file: usize) -> Result<&dyn Storage> {
        only_file(&*self.image.storage, file)
    }

    fn stored_ranges(&self, _file: usize) -> StoredRanges {
        if self.image.sparse.is_none() {
            // A fixed disk is a raw image with a footer: its file's holes are zero ranges, so a
            // conversion need not read them (qemu-img asks the file system too).
            StoredRanges::LocatedSplitByHoles
        } else {
            StoredRanges::Located
        }
    }

    fn data_structure(&self) -> &'static str {
        "vhd block data"
    }

    fn info(&self) -> Option<FormatInfo> {
        let img = &self.image;
        let g = &img.footer.disk_geometry;
        let differencing = img.footer.disk_type == DiskType::Differencing;
        let parent = img.sparse.as_ref().filter(|_| differencing);
        Some(FormatInfo::Vhd(VhdInfo {
            subformat: img.footer.disk_type.name().into(),
            creator: img.footer.creator(),
            size_source: img.size_source.name().into(),
            current_size: img.footer.current_size,
            geometry: format!("{}/{}/{}", g.cylinders, g.heads, g.sectors_per_track),
            unique_id: uuid_string(&img.footer.unique_id),
            footer: img
                .footer_from_copy
                .then(|| "copy at offset 0 (the footer at the end is missing or damaged)".into()),
            block_size: img.sparse.as_ref().map(|s| s.header.block_size),
            parent_name: parent.map(|s| s.header.parent_unicode_name.clone()),
            parent_unique_id: parent.map(|s| uuid_string(&s.header.parent_unique_id)),
            parent_locators: parent.map(|s| {
                s.locators
                    .iter()
                    .map(|(code, path)| VhdLocatorInfo {
                        platform: code.clone(),
                        path: path.clone(),
                    })
                    .collect()
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::vhd::dynamic::{HEADER_VERSION, ParentLocator};
    use crate::formats::vhd::footer::{FEATURES_RESERVED, FILE_FORMAT_VERSION, NO_DATA_OFFSET};
    use crate::storage::MemoryStorage;

    const BLOCK: u32 = 4096;
    const BAT_AT: u64 = 1536;

    fn footer(disk_type: DiskType, size: u64) -> Footer {
        Footer {
            features: FEATURES_RESERVED,
            file_format_version: FILE_FORMAT_VERSION,
            data_offset: if disk_type == DiskType::Fixed {
                NO_DATA_OFFSET
            } else {
                512
            },
            time_stamp: 0,
            creator_application: *b"win ",
            creator_version: 0x000a_0000,
            creator_host_os: *b"Wi2k",
            original_size: size,
            current_size: size,
            disk_geometry: Geometry::for_sectors(size / 512),
            disk_type,
            checksum: 0,
            unique_id: [7; 16],
            saved_state: 0,
        }
    }

    /// A dynamic disk of `blocks` blocks of 4 KiB: footer copy, header at 512, BAT at 1536
    /// (one sector), then `stored` blocks of bitmap and data from sector 4, then the footer;
    /// the BAT holds `bat`.
    fn dynamic(bat: &[u32], stored: u64) -> Vec<u8> {
        let size = bat.len() as u64 * u64::from(BLOCK);
        let f = footer(DiskType::Dynamic, size).to_bytes();
        let h = DynamicHeader {
            data_offset: u64::MAX,
            table_offset: BAT_AT,
            header_version: HEADER_VERSION,
            max_table_entries: bat.len() as u32,
            block_size: BLOCK,
            checksum: 0,
            parent_unique_id: [0; 16],
            parent_time_stamp: 0,
            parent_unicode_name: String::new(),
            parent_locators: vec![
                ParentLocator {
                    platform_code: [0; 4],
                    platform_data_space: 0,
                    platform_data_length: 0,
                    platform_data_offset: 0,
                };
                LOCATOR_COUNT
            ],
        };
        let mut b = f.to_vec();
        b.extend_from_slice(&h.to_bytes());
        let mut table = vec![0xffu8; 512];
        for (i, e) in bat.iter().enumerate() {
            BigEndian::write_u32(&mut table[4 * i..], *e);
        }
        b.extend_from_slice(&table);
        b.resize(2048 + stored as usize * (512 + BLOCK as usize), 0x11);
        b.extend_from_slice(&f);
        b
    }

    fn open(bytes: Vec<u8>) -> Result<VhdImage> {
        VhdImage::open(Arc::new(MemoryStorage::new(bytes)))
    }

    fn reseal(f: &mut [u8]) {
        let sum = super::super::footer::checksum(f, 64);
        BigEndian::write_u32(&mut f[64..68], sum);
    }

    /// Blocks are 9 sectors (bitmap and 4 KiB): sector 4 and 13 are the first two.
    #[test]
    fn blocks_side_by_side_read_and_shared_or_overlapping_blocks_are_refused() {
        assert!(open(dynamic(&[4, 13, UNALLOCATED], 2)).is_ok());
        for (bat, needle) in [
            (
                &[4, 4, UNALLOCATED][..],
                "block 1 at 0x800 overlaps block 0 at 0x800",
            ),
            (
                &[4, 12, UNALLOCATED][..],
                "block 1 at 0x1800 overlaps block 0",
            ),
            (
                &[13, 5, UNALLOCATED][..],
                "block 0 at 0x1a00 overlaps block 1 at 0xa00",
            ),
            (
                &[UNALLOCATED, 4, 4][..],
                "block 2 at 0x800 overlaps block 1 at 0x800",
            ),
        ] {
            let e = open(dynamic(bat, 2)).map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), "malformed");
            let text = e.to_string();
            assert!(text.contains("vhd BAT"), "{text}");
            assert!(text.contains(needle), "{bat:?}: {text}");
            assert!(text.contains("two guest ranges"), "{text}");
        }
    }

    /// The disk's last block, when partial, is only its bitmap and the sectors inside the disk:
    /// a block may follow those.
    #[test]
    fn a_partial_last_block_is_only_what_the_disk_holds() {
        let mut b = dynamic(&[6, 4], 2);
        let n = b.len();
        for at in [0, n - 512] {
            BigEndian::write_u64(&mut b[at + 48..at + 56], u64::from(BLOCK) + 512);
            reseal(&mut b[at..at + 512]);
        }
        assert!(open(b.clone()).is_ok());
        // One sector more of the last block would be block 0's bitmap.
        for at in [0, n - 512] {
            BigEndian::write_u64(&mut b[at + 48..at + 56], u64::from(BLOCK) + 1024);
            reseal(&mut b[at..at + 512]);
        }
        let e = open(b).map(|_| ()).unwrap_err();
        assert!(
            e.to_string()
                .contains("block 0 at 0xc00 overlaps block 1 at 0x800"),
            "{e}"
        );
    }

    #[test]
    fn blocks_on_metadata_are_refused() {
        for (entry, what) in [
            (0, "the footer copy"),
            (1, "the dynamic header"),
            (2, "the dynamic header"),
            (3, "the BAT"),
        ] {
            let e = open(dynamic(&[entry, UNALLOCATED], 2))
                .map(|_| ())
                .unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(&format!("overlaps {what}")),
                "{entry}: {text}"
            );
            assert!(text.contains("read as guest data"), "{text}");
        }
    }

    #[test]
    fn disagreeing_footer_copies_are_refused() {
        let base = dynamic(&[4], 1);
        let n = base.len();
        // Same disk, another time stamp: fine.
        let mut b = base.clone();
        BigEndian::write_u32(&mut b[24..28], 99);
        reseal(&mut b[..512]);
        assert!(open(b).is_ok());
        for (at, value, what) in [
            (48usize, 8192u64, "disk size"),
            (16, 1024, "data offset"),
            (68, 0x0102_0304_0506_0708, "unique id"),
        ] {
            let mut b = base.clone();
            BigEndian::write_u64(&mut b[at..at + 8], value);
            reseal(&mut b[..512]);
            let e = open(b).map(|_| ()).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
            assert!(e.to_string().contains("ambiguous"), "{e}");
        }
        // A damaged copy is not a second opinion.
        let mut b = base.clone();
        b[100] ^= 1;
        assert!(open(b).is_ok());
        // Nor is the copy when the footer at the end is the one damaged.
        let mut b = base;
        b[n - 400] ^= 1;
        assert!(open(b).unwrap().footer_from_copy);
    }

    #[test]
    fn sizes_beyond_the_format_or_the_file_are_refused() {
        // A dynamic disk past 2040 GiB: the size check, not the BAT's.
        let mut b = dynamic(&[4], 1);
        let n = b.len();
        for at in [0, n - 512] {
            BigEndian::write_u64(&mut b[at + 48..at + 56], MAX_VHD_DISK_SIZE + 512);
            reseal(&mut b[at..at + 512]);
        }
        let e = open(b).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("2040 GiB"), "{e}");
        // A fixed disk whose geometry fits but whose current_size does not.
        let size = 64 * 512;
        let mut f = footer(DiskType::Fixed, size);
        f.creator_application = *b"qemu";
        f.disk_geometry = Geometry {
            cylinders: 1,
            heads: 4,
            sectors_per_track: 16,
        };
        let fixed = |f: &Footer| [vec![0u8; size as usize], f.to_bytes().to_vec()].concat();
        assert!(open(fixed(&f)).is_ok());
        f.current_size = size * 2;
        assert_eq!(open(fixed(&f)).map(|_| ()).unwrap_err().kind(), "truncated");
        // Virtual PC's rounding: current_size larger, the file holding the geometry's disk.
        f.creator_application = *b"vpc ";
        f.current_size = 20480 * 512;
        f.disk_geometry = Geometry::for_sectors(20480);
        let g = f.disk_geometry.sectors() * 512;
        assert!(g < f.current_size);
        let file = [vec![0u8; g as usize], f.to_bytes().to_vec()].concat();
        assert_eq!(open(file).unwrap().size, g);
    }
}
