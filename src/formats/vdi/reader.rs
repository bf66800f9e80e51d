//! Reads a VDI: the block map, checked whole at open, says where each block of the disk is
//! stored, or that it reads as zeros (or as the parent's, in a differencing image).

use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use super::header::{HEADER_SIZE, ImageType, UNALLOCATED, VdiHeader, ZERO};
use super::info::VdiInfo;
use crate::block::{BlockReader, usize_len};
use crate::error::{Error, Result};
use crate::formats::info::FormatInfo;
use crate::limits::MAX_VDI_BLOCKS;
use crate::mapped::{MappedDisk, MappedReader, Mapping, Segment, StoredRanges, only_file};
use crate::storage::{Storage, read_exact_at};

/// The reader: a [`VdiDisk`] with its parent, if one is attached.
pub type VdiReader = MappedReader<VdiDisk>;

/// A VDI's header and block map, read and checked.
pub struct VdiDisk {
    storage: Arc<dyn Storage>,
    /// The header.
    pub header: VdiHeader,
    /// One entry per block of the disk: a data block index, [`UNALLOCATED`] or [`ZERO`].
    bmap: Vec<u32>,
}

/// Formats a UUID stored as VirtualBox stores it (the first three fields little-endian).
pub fn uuid_string(u: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes_le(*u).to_string()
}

impl VdiDisk {
    /// Reads the header and the block map and checks them against each other and the file.
    pub fn open(storage: Arc<dyn Storage>) -> Result<VdiDisk> {
        let len = storage.len();
        if len < HEADER_SIZE as u64 {
            return Err(Error::truncated("vdi header", 0, HEADER_SIZE as u64, len));
        }
        let mut b = [0u8; HEADER_SIZE];
        read_exact_at(&*storage, &mut b, 0, "vdi header")?;
        let header = VdiHeader::parse(&b)?;
        if header.image_type == ImageType::Undo {
            return Err(Error::unsupported("vdi undo images"));
        }
        let blocks = header.blocks_in_image;
        if blocks > MAX_VDI_BLOCKS {
            return Err(Error::limit(
                "vdi block map",
                u64::from(header.offset_bmap),
                format!("{blocks} blocks, more than the {MAX_VDI_BLOCKS} ims reads"),
            ));
        }
        let map_len = 4 * u64::from(blocks);
        let map_at = u64::from(header.offset_bmap);
        if map_at + map_len > len {
            return Err(Error::truncated("vdi block map", map_at, map_len, len));
        }
        let mut raw = vec![0u8; usize_len(map_len)?];
        read_exact_at(&*storage, &mut raw, map_at, "vdi block map")?;
        let bmap: Vec<u32> = raw.chunks_exact(4).map(LittleEndian::read_u32).collect();
        check_block_map(&header, &bmap, len)?;
        Ok(VdiDisk {
            storage,
            header,
            bmap,
        })
    }

    /// Makes the reader; a differencing image needs its parent.
    pub fn into_reader(self, parent: Option<Arc<dyn BlockReader>>) -> VdiReader {
        MappedReader::new(self, parent)
    }

    fn block_size(&self) -> u64 {
        u64::from(self.header.block_size)
    }
}

/// The block map's consistency: every stored entry names a distinct block of the data area
/// (no two disk blocks read from one stored block), lies inside the file for the part of the
/// disk it holds, and the count of stored entries is `blocks_allocated`.
fn check_block_map(h: &VdiHeader, bmap: &[u32], file_len: u64) -> Result<()> {
    let bs = u64::from(h.block_size);
    let size = h.virtual_size();
    let map_at = u64::from(h.offset_bmap);
    let mut seen = vec![0u64; bmap.len().div_ceil(64)];
    let mut allocated = 0u32;
    for (i, &e) in bmap.iter().enumerate() {
        if e == UNALLOCATED || e == ZERO {
            continue;
        }
        let entry_at = map_at + 4 * i as u64;
        if e >= h.blocks_in_image {
            return Err(Error::malformed(
                "vdi block map",
                entry_at,
                format!(
                    "block {i} is stored as data block {e}, past the {} blocks of the image",
                    h.blocks_in_image
                ),
            ));
        }
        let (word, bit) = (e as usize / 64, 1u64 << (e % 64));
        let Some(w) = seen.get_mut(word) else {
            return Err(Error::internal("vdi block map bitmap"));
        };
        if *w & bit != 0 {
            let first = bmap.iter().position(|&x| x == e).unwrap_or(0);
            return Err(Error::malformed(
                "vdi block map",
                entry_at,
                format!(
                    "block {i} and block {first} are both stored in data block {e} (data shared \
                     between guest blocks)"
                ),
            ));
        }
        *w |= bit;
        allocated += 1;
        // Only the part of the block inside the disk is read; it must be in the file.
        let held = size.saturating_sub(i as u64 * bs).min(bs);
        let at = u64::from(h.offset_data) + u64::from(e) * bs;
        if held > 0 && at + held > file_len {
            return Err(Error::truncated(
                "vdi data block",
                at,
                held,
                file_len.saturating_sub(at),
            ));
        }
    }
    if allocated != h.blocks_allocated {
        return Err(Error::malformed(
            "vdi header",
            0x184,
            format!(
                "blocks_allocated says {}, the block map stores {allocated} blocks",
                h.blocks_allocated
            ),
        ));
    }
    Ok(())
}

impl MappedDisk for VdiDisk {
    fn virtual_size(&self) -> u64 {
        self.header.virtual_size()
    }

    fn walk(&self, start: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()> {
        let bs = self.block_size();
        let parent = self.header.has_parent();
        let mut pos = start;
        while pos < end {
            let block = pos / bs;
            let block_end = ((block + 1) * bs).min(end);
            let entry = usize::try_from(block)
                .ok()
                .and_then(|i| self.bmap.get(i))
                .copied()
                .unwrap_or(UNALLOCATED);
            let mapping = match entry {
                UNALLOCATED if parent => Mapping::Unallocated { host: None },
                UNALLOCATED | ZERO => Mapping::Zero { host: None },
                e => Mapping::Stored {
                    file: 0,
                    offset: u64::from(self.header.offset_data) + u64::from(e) * bs + pos % bs,
                },
            };
            f(Segment {
                start: pos,
                length: block_end - pos,
                mapping,
            })?;
            pos = block_end;
        }
        Ok(())
    }

    fn file(&self, file: usize) -> Result<&dyn Storage> {
        only_file(&*self.storage, file)
    }

    fn stored_ranges(&self, _file: usize) -> StoredRanges {
        // qemu asks the file system about a static image's blocks (holes read as zeros), not
        // about a dynamic one's.
        if self.header.image_type == ImageType::Static {
            StoredRanges::LocatedSplitByHoles
        } else {
            StoredRanges::Located
        }
    }

    fn data_structure(&self) -> &'static str {
        "vdi data block"
    }

    fn info(&self) -> Option<FormatInfo> {
        let h = &self.header;
        Some(FormatInfo::Vdi(VdiInfo {
            image_type: h.image_type.name().into(),
            cluster_size: u64::from(h.block_size),
            uuid: uuid_string(&h.uuid_image),
            parent_uuid: h.has_parent().then(|| uuid_string(&h.uuid_link)),
            blocks_in_image: h.blocks_in_image,
            blocks_allocated: h.blocks_allocated,
            description: (!h.description.is_empty()).then(|| h.description.clone()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::vdi::header::{DEFAULT_BLOCK_SIZE, HEADER_SIZE_V1_1, VERSION_1_1};
    use crate::storage::MemoryStorage;

    const BS: u32 = 4096;

    /// An image of `bmap.len()` blocks of 4 KiB: header, map at 0x200, data at 0x400 holding
    /// `stored` blocks, block `n` filled with `n + 1`.
    pub(super) fn image(bmap: &[u32], stored: u32) -> Vec<u8> {
        let allocated = bmap.iter().filter(|&&e| e < ZERO).count() as u32;
        let h = VdiHeader {
            text: "<<< test >>>".into(),
            version: VERSION_1_1,
            header_size: HEADER_SIZE_V1_1,
            image_type: ImageType::Dynamic,
            image_flags: 0,
            description: String::new(),
            offset_bmap: 0x200,
            offset_data: 0x400,
            cylinders: 0,
            heads: 0,
            sectors: 0,
            sector_size: 512,
            disk_size: bmap.len() as u64 * u64::from(BS),
            block_size: BS,
            block_extra: 0,
            blocks_in_image: bmap.len() as u32,
            blocks_allocated: allocated,
            uuid_image: [1; 16],
            uuid_last_snap: [2; 16],
            uuid_link: [0; 16],
            uuid_parent: [0; 16],
        };
        let mut b = h.to_bytes().to_vec();
        for e in bmap {
            b.extend_from_slice(&e.to_le_bytes());
        }
        b.resize(0x400, 0);
        for n in 0..stored {
            b.extend(std::iter::repeat_n(n as u8 + 1, BS as usize));
        }
        b
    }

    fn open(b: Vec<u8>) -> Result<VdiReader> {
        VdiDisk::open(Arc::new(MemoryStorage::new(b))).map(|d| d.into_reader(None))
    }

    #[test]
    fn blocks_read_from_the_map_and_zero_blocks_read_as_zeros() {
        let r = open(image(&[1, UNALLOCATED, 0, ZERO], 2)).unwrap();
        let mut buf = vec![0u8; 4 * BS as usize];
        r.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&x| x == 2));
        assert!(buf[4096..8192].iter().all(|&x| x == 0));
        assert!(buf[8192..12288].iter().all(|&x| x == 1));
        assert!(buf[12288..].iter().all(|&x| x == 0));
        let m = r.map(0, 4 * u64::from(BS)).unwrap();
        assert_eq!(m[0].host_offset, Some(0x400 + 4096));
        assert_eq!(m[2].host_offset, Some(0x400));
        assert_eq!(r.virtual_size(), 4 * u64::from(BS));
        let _ = DEFAULT_BLOCK_SIZE;
    }

    #[test]
    fn inconsistent_maps_are_refused() {
        for (bmap, stored, kind, needle) in [
            (&[0, 0][..], 1, "malformed", "both stored in data block 0"),
            (&[0, 5][..], 2, "malformed", "past the 2 blocks"),
            (&[0, 1][..], 1, "truncated", "vdi data block"),
        ] {
            let e = open(image(bmap, stored)).map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), kind, "{bmap:?}: {e}");
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.to_string().contains("offset 0x"), "{e}");
        }
        let mut b = image(&[0, UNALLOCATED], 1);
        b[0x184] = 2;
        let e = open(b).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("blocks_allocated says 2"), "{e}");
    }
}
