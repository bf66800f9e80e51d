//! Reads fixed, dynamic and differencing VHDs as a virtual disk.

use std::sync::Arc;

use byteorder::{BigEndian, ByteOrder};

use super::dynamic::{
    DynamicHeader, HEADER_SIZE, LOCATOR_COUNT, UNALLOCATED, locator_path, sector_present,
};
use super::footer::{DiskType, FOOTER_SIZE, Footer, SizeSource, uuid_string};
use super::info::{VhdInfo, VhdLocatorInfo};
use crate::block::{BlockReader, usize_len};
use crate::cache::Lru;
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::info::FormatInfo;
use crate::limits::{MAX_LOCATOR_BYTES, VHD_BITMAP_CACHE};
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
                None
            }
            DiskType::Dynamic | DiskType::Differencing => {
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
            if let Some(path) = locator_path(loc, &data) {
                locators.push((
                    String::from_utf8_lossy(&loc.platform_code).to_string(),
                    path,
                ));
            }
        }
    }
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
