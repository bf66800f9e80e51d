//! The hosted sparse extent (`KDMV`) opened for reading: its header (`header.rs`), the grain
//! directory (GD) and the grain tables (GTs) it points to, and reading grains, plain or
//! deflate-compressed. monolithicSparse, twoGbMaxExtentSparse and streamOptimized disks are all
//! made of these. See formats/vmdk.md, "Hosted sparse extents".

use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use super::consistency;
use crate::block::usize_len;
use crate::cache::Lru;
use crate::error::{Error, Result};
use crate::limits::{GT_CACHE, MAX_DESCRIPTOR_BYTES, MAX_GD_BYTES};

pub use super::header::{
    COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GT,
    FLAG_ZEROED_GRAIN, GD_AT_END, GRAIN_MARKER_HEAD, GTE_ZEROED, KNOWN_FLAGS, NEWLINE_CHARS,
    SparseHeader, max_compressed,
};
pub(crate) use super::header::{HEADER_SIZE, MAGIC, SECTOR};

const S: &str = "vmdk sparse header";
use crate::storage::{Storage, read_exact_at};

/// What a grain of the extent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Grain {
    /// No GT or a GTE of 0: not in this extent (the parent's, or zeros).
    Unallocated,
    /// A zeroed-grain GTE.
    Zero,
    /// Stored plainly at this byte offset.
    Stored(u64),
    /// Stored compressed at this byte offset (marker head first when the extent has markers).
    Compressed(u64),
}

/// A hosted sparse extent opened for random access: its header, GD, and a cache of GTs.
pub struct SparseExtent {
    file: Arc<dyn Storage>,
    file_len: u64,
    pub(crate) header: SparseHeader,
    /// The GD entries (sector offsets of GTs; 0 for none), each checked against the file.
    gd: Vec<u32>,
    /// Where the GD is, for errors.
    gd_pos: u64,
    gts: Lru<usize, Arc<Vec<u32>>>,
    /// Where compressed grains must end (compressed extents only).
    layout: Option<consistency::Layout>,
}

/// Reads the header at offset 0 of a file of `file_len` bytes.
pub(crate) fn read_header(file: &dyn Storage, file_len: u64) -> Result<SparseHeader> {
    if file_len < HEADER_SIZE as u64 {
        return Err(Error::truncated(S, 0, HEADER_SIZE as u64, file_len));
    }
    let mut buf = [0u8; HEADER_SIZE];
    read_exact_at(file, &mut buf, 0, S)?;
    SparseHeader::parse(&buf, 0)
}

/// Reads the embedded descriptor's bytes, if the header has one, after checking that it lies in
/// the file and under the descriptor cap.
pub(crate) fn read_embedded_descriptor(
    file: &dyn Storage,
    file_len: u64,
    header: &SparseHeader,
) -> Result<Option<(Vec<u8>, u64)>> {
    if header.descriptor_offset == 0 || header.descriptor_size == 0 {
        return Ok(None);
    }
    let at = header
        .descriptor_offset
        .checked_mul(SECTOR)
        .ok_or_else(|| Error::malformed(S, 28, "descriptor offset overflows"))?;
    let len = header
        .descriptor_size
        .checked_mul(SECTOR)
        .filter(|&l| l <= MAX_DESCRIPTOR_BYTES)
        .ok_or_else(|| {
            Error::limit(
                "vmdk descriptor",
                36,
                format!(
                    "embedded descriptor of {} sectors is over {MAX_DESCRIPTOR_BYTES} bytes",
                    header.descriptor_size
                ),
            )
        })?;
    // qemu-img and VMware reserve more sectors than the text needs; only those in the file count.
    if at >= file_len {
        return Err(Error::truncated("vmdk descriptor", at, len, file_len));
    }
    let len = len.min(file_len - at);
    let mut buf = vec![0u8; usize_len(len)?];
    read_exact_at(file, &mut buf, at, "vmdk descriptor")?;
    Ok(Some((buf, at)))
}

/// Reads the footer of a streamOptimized extent whose header says [`GD_AT_END`]: a footer
/// marker, the footer (a header copy with the real `gdOffset`) and the end-of-stream marker,
/// in the file's last three sectors.
pub(crate) fn read_footer(
    file: &dyn Storage,
    file_len: u64,
    header: &SparseHeader,
) -> Result<SparseHeader> {
    use super::marker::{Marker, MarkerType};
    const F: &str = "vmdk footer";
    if file_len < 4 * SECTOR || !file_len.is_multiple_of(SECTOR) {
        return Err(Error::malformed(
            F,
            file_len,
            "the stream does not end with footer and end-of-stream markers (unterminated stream)",
        ));
    }
    let mut tail = [0u8; 3 * HEADER_SIZE];
    let tail_at = file_len - 3 * SECTOR;
    read_exact_at(file, &mut tail, tail_at, F)?;
    let (marker, rest) = tail.split_at(HEADER_SIZE);
    let (footer, eos) = rest.split_at(HEADER_SIZE);
    let is = |b: &[u8], t: MarkerType| matches!(Marker::parse(b), Some(Marker::Metadata { kind, .. }) if kind == t);
    if !is(marker, MarkerType::Footer) || !is(eos, MarkerType::EndOfStream) {
        return Err(Error::malformed(
            F,
            tail_at,
            "no footer marker and end-of-stream marker at the end (unterminated stream)",
        ));
    }
    let mut buf = [0u8; HEADER_SIZE];
    buf.copy_from_slice(footer);
    let f = SparseHeader::parse(&buf, tail_at + SECTOR)?;
    if f.gd_offset == GD_AT_END
        || f.capacity != header.capacity
        || f.grain_size != header.grain_size
        || f.num_gtes_per_gt != header.num_gtes_per_gt
        || f.flags != header.flags
    {
        return Err(Error::malformed(
            F,
            tail_at + SECTOR,
            "footer does not match the header or gives no grain directory",
        ));
    }
    Ok(f)
}

impl SparseExtent {
    /// Opens the sparse extent in `file` (`file_len` bytes): header (and footer when the GD is
    /// at the end), then the GD, whose every GT must lie in the file.
    pub fn open(file: Arc<dyn Storage>, file_len: u64) -> Result<SparseExtent> {
        let mut header = read_header(&*file, file_len)?;
        let gd_at_end = header.gd_offset == GD_AT_END;
        if gd_at_end {
            // VMware's stream layout, compressed (streamOptimized) or not (a monolithicSparse
            // written front to back): the footer holds the real gdOffset.
            header = read_footer(&*file, file_len, &header)?;
        }
        if header
            .over_head
            .checked_mul(SECTOR)
            .is_none_or(|end| end > file_len)
        {
            return Err(Error::malformed(
                S,
                64,
                format!(
                    "overHead of {} sectors lies past the end of the file of {file_len} bytes",
                    header.over_head
                ),
            ));
        }
        let entries = header.gd_entries();
        let gd_bytes = entries * 4;
        if gd_bytes > MAX_GD_BYTES {
            return Err(Error::limit(
                "vmdk grain directory",
                56,
                format!("{entries} entries is over {MAX_GD_BYTES} bytes"),
            ));
        }
        let gd_pos = header
            .gd_offset
            .checked_mul(SECTOR)
            .filter(|&p| p != 0 && p.checked_add(gd_bytes).is_some_and(|e| e <= file_len))
            .ok_or_else(|| {
                Error::malformed(
                    "vmdk sparse header",
                    56,
                    format!(
                        "grain directory at sector {} of {entries} entries is not inside the file of {file_len} bytes",
                        header.gd_offset
                    ),
                )
            })?;
        let mut raw = vec![0u8; usize_len(gd_bytes)?];
        read_exact_at(&*file, &mut raw, gd_pos, "vmdk grain directory")?;
        let gd: Vec<u32> = raw.chunks_exact(4).map(LittleEndian::read_u32).collect();
        let gt_bytes = header.gt_bytes();
        for (i, &entry) in gd.iter().enumerate() {
            if entry == 0 {
                continue;
            }
            let at = u64::from(entry) * SECTOR;
            if at.checked_add(gt_bytes).is_none_or(|e| e > file_len) {
                return Err(Error::malformed(
                    "vmdk grain directory",
                    gd_pos + i as u64 * 4,
                    format!("grain table {i} at sector {entry} runs past the end of the file"),
                ));
            }
        }
        let layout = consistency::check(&consistency::Extent {
            file: &*file,
            file_len,
            header: &header,
            gd_at_end,
            gd: &gd,
            gd_pos,
        })?;
        Ok(SparseExtent {
            file,
            file_len,
            header,
            gd,
            gd_pos,
            gts: Lru::new(GT_CACHE),
            layout,
        })
    }

    /// The file holding the extent.
    pub fn file(&self) -> &dyn Storage {
        &*self.file
    }

    fn gt(&self, index: usize) -> Result<Option<Arc<Vec<u32>>>> {
        let entry = self.gd.get(index).copied().unwrap_or(0);
        if entry == 0 {
            return Ok(None);
        }
        if let Some(gt) = self.gts.get(&index) {
            return Ok(Some(gt));
        }
        let mut raw = vec![0u8; usize_len(self.header.gt_bytes())?];
        read_exact_at(
            &*self.file,
            &mut raw,
            u64::from(entry) * SECTOR,
            "vmdk grain table",
        )?;
        let gt = Arc::new(raw.chunks_exact(4).map(LittleEndian::read_u32).collect());
        self.gts.insert(index, Arc::clone(&gt));
        Ok(Some(gt))
    }

    /// How many grains from `index` on lie under a GD entry of 0 (no grain table: none of them
    /// is stored), so a walk over a huge, mostly empty extent steps a table at a time.
    pub fn grains_without_table(&self, index: u64) -> u64 {
        let per_gt = u64::from(self.header.num_gtes_per_gt);
        let entry = usize::try_from(index / per_gt)
            .ok()
            .and_then(|i| self.gd.get(i))
            .copied()
            .unwrap_or(0);
        if entry == 0 {
            per_gt - index % per_gt
        } else {
            0
        }
    }

    /// What grain `index` is, with its location checked against the file.
    pub fn grain(&self, index: u64) -> Result<Grain> {
        let per_gt = u64::from(self.header.num_gtes_per_gt);
        let gd_index = usize_len(index / per_gt)?;
        let Some(gt) = self.gt(gd_index)? else {
            return Ok(Grain::Unallocated);
        };
        let slot = usize_len(index % per_gt)?;
        let entry = gt.get(slot).copied().unwrap_or(0);
        match entry {
            0 => return Ok(Grain::Unallocated),
            GTE_ZEROED if self.header.zeroed_grain() => return Ok(Grain::Zero),
            _ => {}
        }
        let at = u64::from(entry) * SECTOR;
        let gte_at = || {
            self.gd
                .get(gd_index)
                .map_or(self.gd_pos, |&e| u64::from(e) * SECTOR + slot as u64 * 4)
        };
        let grain_start = index * self.header.grain_bytes();
        let needed = if self.header.compressed() {
            GRAIN_MARKER_HEAD
        } else {
            // Only the part of the last grain inside the disk must be stored.
            (self.header.disk_bytes() - grain_start).min(self.header.grain_bytes())
        };
        if at.checked_add(needed).is_none_or(|e| e > self.file_len) {
            return Err(Error::malformed(
                "vmdk grain table",
                gte_at(),
                format!("grain {index} at sector {entry} runs past the end of the file"),
            ));
        }
        Ok(if self.header.compressed() {
            Grain::Compressed(at)
        } else {
            Grain::Stored(at)
        })
    }

    /// Inflates the compressed grain `index` stored at byte `at` into `out`, which holds a
    /// whole grain: what a read of whole grains (a conversion) does, without a copy.
    pub fn inflate_into(&self, index: u64, at: u64, out: &mut [u8]) -> Result<()> {
        let grain_bytes = self.header.grain_bytes();
        let needed = least_inflated(&self.header, index);
        let (data_at, size) = if self.header.has_markers() {
            let mut head = [0u8; 12];
            read_exact_at(&*self.file, &mut head, at, "vmdk grain marker")?;
            let lba = LittleEndian::read_u64(&head[0..8]);
            let size = u64::from(LittleEndian::read_u32(&head[8..12]));
            let expected = index * self.header.grain_size;
            if lba != expected {
                return Err(Error::malformed(
                    "vmdk grain marker",
                    at,
                    format!("marker says LBA {lba}, the grain table says {expected}"),
                ));
            }
            (at + GRAIN_MARKER_HEAD, size)
        } else {
            (at, (self.file_len - at).min(max_compressed(grain_bytes)))
        };
        if size == 0
            || size > max_compressed(grain_bytes)
            || data_at.checked_add(size).is_none_or(|e| e > self.file_len)
        {
            return Err(Error::malformed(
                "vmdk grain marker",
                at,
                format!("compressed size {size} is zero, too large or past the end of the file"),
            ));
        }
        if let Some(next) = self.layout.as_ref().map(|l| l.next_start(at))
            && data_at + size > next
        {
            return Err(Error::malformed(
                "vmdk grain marker",
                at,
                format!(
                    "compressed grain of {size} bytes runs into the grain or metadata at byte {next:#x}"
                ),
            ));
        }
        if out.len() as u64 != grain_bytes {
            return Err(Error::Internal(format!(
                "a buffer of {} bytes for a grain of {grain_bytes}",
                out.len()
            )));
        }
        let needed = usize_len(needed)?;
        crate::io::with_scratch(usize_len(size)?, |packed| {
            read_exact_at(&*self.file, packed, data_at, "vmdk compressed grain")?;
            inflate_grain(packed, out, needed, at)
        })
    }

    /// Bytes per grain.
    pub fn grain_bytes(&self) -> u64 {
        self.header.grain_bytes()
    }
}

/// The fewest bytes compressed grain `index` may inflate to: the part of the grain inside the
/// disk, except that the last grain may stop short of the disk's last sector. A disk converted
/// from a file whose size is not a whole number of sectors (vmdk-stream-converter does this) has
/// a last grain holding just the file's remaining bytes; the rest of the sector reads as zeros.
pub(crate) fn least_inflated(header: &SparseHeader, index: u64) -> u64 {
    let start = index.saturating_mul(header.grain_bytes());
    let inside = header
        .disk_bytes()
        .saturating_sub(start)
        .min(header.grain_bytes());
    if start.saturating_add(header.grain_bytes()) >= header.disk_bytes() {
        inside.saturating_sub(SECTOR - 1)
    } else {
        inside
    }
}

/// Inflates the zlib stream `packed` (a grain stored at `at`) into `out`, which is the grain's
/// size: more output than that is an error, and so is less than `needed` bytes (the part of the
/// grain inside the disk). The rest of `out` is zeroed.
pub fn inflate_grain(packed: &[u8], out: &mut [u8], needed: usize, at: u64) -> Result<()> {
    use crate::compress::{InflateProblem, Inflated, inflate};
    const G: &str = "vmdk compressed grain";
    let bad = |problem: String| Error::malformed(G, at, problem);
    let produced = match inflate(packed, out, true) {
        Ok(Inflated::Ended(n)) => n,
        Ok(Inflated::FullWithoutEnd) => return Err(bad("deflate stream ends early".into())),
        Err(InflateProblem::TooLong) => {
            return Err(bad(format!(
                "inflates to more than the grain's {} bytes",
                out.len()
            )));
        }
        Err(InflateProblem::Corrupt(e)) => return Err(bad(format!("inflate: {e}"))),
    };
    if produced < needed {
        return Err(bad(format!(
            "inflates to {produced} bytes, the grain needs {needed}"
        )));
    }
    if let Some(tail) = out.get_mut(produced..) {
        tail.fill(0);
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflates_into_the_grain_and_no_further() {
        let data = vec![7u8; 4096];
        let mut out = vec![1u8; 4096];
        inflate_grain(&zlib(&data), &mut out, 4096, 0).unwrap();
        assert_eq!(out, data);
        // A short grain is accepted when it covers the disk's part, and zero-filled.
        let mut out = vec![1u8; 8192];
        inflate_grain(&zlib(&data), &mut out, 4096, 0).unwrap();
        assert!(out[4096..].iter().all(|&b| b == 0));
        assert!(inflate_grain(&zlib(&data), &mut out, 8192, 0).is_err());
        // Too much data for the grain.
        let mut small = vec![0u8; 1024];
        let e = inflate_grain(&zlib(&data), &mut small, 1024, 0).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        // A cut stream and garbage.
        let z = zlib(&data);
        assert!(inflate_grain(&z[..z.len() / 2], &mut out, 0, 0).is_err());
        assert!(inflate_grain(b"not zlib at all", &mut out, 0, 0).is_err());
    }
}
