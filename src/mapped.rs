//! The mapping-first reader: a format answers only "what is at this offset" ([`MappedDisk`]),
//! and [`MappedReader`] turns those answers into [`BlockReader::read_at`] and
//! [`BlockReader::map`], so read and map cannot disagree. It joins stored runs that continue
//! each other into one positional read, decodes compressed units (straight into the caller's
//! buffer when a read covers a whole unit, through a small [`Lru`] otherwise), splits stored
//! ranges where the storage has holes, and falls through to the backing disk where the image
//! has nothing, reading zeros past the backing disk's end (as qemu does; its map, like qemu's,
//! says that range is not allocated in any image of the chain).

use std::sync::Arc;

use crate::block::{BlockReader, Extent, ExtentState, check_map, check_range, push_extent};
use crate::cache::Lru;
use crate::error::{Error, Result};
use crate::formats::info::FormatInfo;
use crate::limits::UNIT_CACHE_ENTRIES;
use crate::storage::{Storage, data_runs, read_exact_at};

/// An encoded (compressed) unit of the disk: a QCOW2 compressed cluster, a compressed VMDK
/// grain, a ZVHD2 block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Which of the format's files (or extents) holds it.
    pub source: usize,
    /// The format's name for the unit, unique within its source (the cache key).
    pub id: u64,
    /// Where the format stores it, for the format's decoder.
    pub at: u64,
    /// Its decoded length in bytes.
    pub len: u64,
}

/// What a range of the disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mapping {
    /// Stored as is at `offset` of the format's file `file`.
    Stored {
        /// Which of the format's files (0: the image's own).
        file: usize,
        /// Where the range's first byte is in that file.
        offset: u64,
    },
    /// Inside an encoded unit, which starts at disk offset `unit_start`.
    Encoded {
        /// The unit.
        unit: Unit,
        /// The disk offset of the unit's first byte.
        unit_start: u64,
    },
    /// Reads as zeros. `host` is a place the format preallocated for it, if any.
    Zero {
        /// The preallocated place of the range's first byte (reported by `map`).
        host: Option<u64>,
    },
    /// Not in this image: the backing disk's bytes, or zeros without one.
    Unallocated {
        /// The preallocated place of the range's first byte (reported by `map`).
        host: Option<u64>,
    },
}

/// A run of the disk with one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Disk offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// What the run is.
    pub mapping: Mapping,
}

/// How `map` reports ranges stored in one of the format's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoredRanges {
    /// With their offsets in the file, as they are.
    Located,
    /// With their offsets, split where the file has holes (which read as zeros).
    LocatedSplitByHoles,
    /// Split by holes, without offsets (the file is not the image's own).
    SplitByHoles,
}

/// A format's answer to "what is at this offset".
pub trait MappedDisk: Send + Sync {
    /// The disk's size in bytes.
    fn virtual_size(&self) -> u64;

    /// Calls `f` with the segments covering `[start, end)` in order, without gaps. Every
    /// table entry used is checked as it is read.
    fn walk(&self, start: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()>;

    /// The format's file `file` (0: the image's own).
    fn file(&self, file: usize) -> Result<&dyn Storage>;

    /// How `map` reports ranges stored in `file`: as they are, by default.
    fn stored_ranges(&self, file: usize) -> StoredRanges {
        let _ = file;
        StoredRanges::Located
    }

    /// Decodes `unit` into `out`, exactly `unit.len` bytes. Formats without encoded units
    /// keep the default, which says so.
    fn decode(&self, unit: &Unit, out: &mut [u8]) -> Result<()> {
        let _ = out;
        Err(Error::internal(format!(
            "{} has no encoded unit {}",
            self.data_structure(),
            unit.id
        )))
    }

    /// The structure a stored range is, for errors (`qcow2 data cluster`).
    fn data_structure(&self) -> &'static str;

    /// The format-specific part of `info`.
    fn info(&self) -> Option<FormatInfo>;
}

/// A [`BlockReader`] over a [`MappedDisk`], with the backing disk it falls through to.
pub struct MappedReader<D> {
    disk: D,
    backing: Option<Arc<dyn BlockReader>>,
    units: Lru<(usize, u64), Arc<Vec<u8>>>,
}

impl<D: MappedDisk> MappedReader<D> {
    /// Reads `disk`, falling through to `backing` where it has nothing.
    pub fn new(disk: D, backing: Option<Arc<dyn BlockReader>>) -> Self {
        MappedReader {
            disk,
            backing,
            units: Lru::new(UNIT_CACHE_ENTRIES),
        }
    }

    /// The format's disk.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// The backing disk, if one is attached.
    pub fn backing(&self) -> Option<&Arc<dyn BlockReader>> {
        self.backing.as_ref()
    }

    /// Walks `[start, end)`, checking that the format's segments cover it exactly.
    fn walk(&self, start: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()> {
        let mut pos = start;
        self.disk.walk(start, end, &mut |seg| {
            let seg_end = seg.start.checked_add(seg.length);
            if seg.start != pos || seg.length == 0 || seg_end.is_none_or(|e| e > end) {
                return Err(Error::malformed(
                    "map",
                    seg.start,
                    format!("segment of {} bytes does not continue at {pos}", seg.length),
                ));
            }
            pos = seg.start + seg.length;
            f(seg)
        })?;
        if pos != end {
            return Err(Error::malformed("map", pos, "the walk ends early"));
        }
        Ok(())
    }

    /// The decoded bytes of `unit`, kept for reads of its other parts.
    fn decoded(&self, unit: &Unit) -> Result<Arc<Vec<u8>>> {
        let key = (unit.source, unit.id);
        if let Some(bytes) = self.units.get(&key) {
            return Ok(bytes);
        }
        let mut out = vec![0u8; crate::block::usize_len(unit.len)?];
        self.disk.decode(unit, &mut out)?;
        let out = Arc::new(out);
        self.units.insert(key, out.clone());
        Ok(out)
    }

    fn read_stored(&self, buf: &mut [u8], run: &Run) -> Result<()> {
        let file = self.disk.file(run.file)?;
        read_exact_at(
            file,
            part(buf, run.at, run.len)?,
            run.src,
            self.disk.data_structure(),
        )
    }

    fn read_backing(&self, buf: &mut [u8], run: &Run) -> Result<()> {
        crate::block::read_backing(
            self.backing.as_deref(),
            part(buf, run.at, run.len)?,
            run.src,
        )
    }

    /// Adds a finished extent to `out`: stored data split where its file has holes (as the
    /// format asks), unallocated ranges replaced by the backing disk's map.
    fn finish(&self, out: &mut Vec<Extent>, pending: Pending) -> Result<()> {
        let Pending { extent: e, file } = pending;
        match (e.state, e.host_offset, file) {
            (ExtentState::Data, Some(host), Some(file)) if !e.compressed => {
                let ranges = self.disk.stored_ranges(file);
                if ranges == StoredRanges::Located {
                    push_extent(out, e);
                    return Ok(());
                }
                let storage = self.disk.file(file)?;
                for (from, length, state) in
                    data_runs(storage, host, host.saturating_add(e.length))?
                {
                    let located = ranges == StoredRanges::LocatedSplitByHoles;
                    // The format stored these bytes; the file's hole only says they are zeros.
                    let state = match state {
                        ExtentState::Zero => ExtentState::Hole,
                        other => other,
                    };
                    push_extent(
                        out,
                        Extent {
                            host_offset: located.then_some(from),
                            ..Extent::new(e.start + (from - host), length, state)
                        },
                    );
                }
                Ok(())
            }
            (ExtentState::Unallocated, _, _) if self.backing.is_some() => {
                self.push_backing(out, e.start, e.length)
            }
            _ => {
                push_extent(out, e);
                Ok(())
            }
        }
    }

    /// The backing disk's extents for `[start, start + length)`, without host offsets (they
    /// are in another file); past the backing disk's end, unallocated (it reads as zeros).
    fn push_backing(&self, out: &mut Vec<Extent>, start: u64, length: u64) -> Result<()> {
        let Some(backing) = &self.backing else {
            return Ok(());
        };
        let inside = length.min(backing.virtual_size().saturating_sub(start));
        if inside > 0 {
            let extents = backing.map(start, inside)?;
            check_map(&extents, start, inside)?;
            for x in extents {
                push_extent(
                    out,
                    Extent {
                        host_offset: None,
                        ..x
                    },
                );
            }
        }
        push_extent(
            out,
            Extent::new(start + inside, length - inside, ExtentState::Unallocated),
        );
        Ok(())
    }
}

/// File `file` of a format whose image is one file (`storage`): only file 0 exists.
pub fn only_file(storage: &dyn Storage, file: usize) -> Result<&dyn Storage> {
    match file {
        0 => Ok(storage),
        _ => Err(Error::internal(format!("the image has no file {file}"))),
    }
}

/// `buf[at..at + len]`, or an error rather than a panic should a walk disagree with the buffer.
fn part(buf: &mut [u8], at: usize, len: usize) -> Result<&mut [u8]> {
    at.checked_add(len)
        .and_then(|end| buf.get_mut(at..end))
        .ok_or_else(|| Error::internal(format!("walk outside the read buffer at {at}")))
}

/// Bytes to copy from `src` (an offset in file `file`, or a disk offset of the backing disk)
/// into the read buffer at `at`.
#[derive(Debug, Clone, Copy)]
struct Run {
    file: usize,
    at: usize,
    src: u64,
    len: usize,
}

/// Extends `pending` with `[at, at + len)` from `src` in `file` when it continues it;
/// otherwise returns the finished run and starts a new one.
fn extend(pending: &mut Option<Run>, file: usize, at: usize, src: u64, len: usize) -> Option<Run> {
    if let Some(p) = pending
        && p.file == file
        && p.at.checked_add(p.len) == Some(at)
        && p.src.checked_add(p.len as u64) == Some(src)
    {
        p.len += len;
        return None;
    }
    pending.replace(Run { file, at, src, len })
}

/// An extent being grown in `map`, with the file its data is stored in.
struct Pending {
    extent: Extent,
    file: Option<usize>,
}

impl<D: MappedDisk> BlockReader for MappedReader<D> {
    fn virtual_size(&self) -> u64 {
        self.disk.virtual_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        check_range(offset, len, self.virtual_size())?;
        let mut stored: Option<Run> = None;
        let mut backing: Option<Run> = None;
        let usize_len = crate::block::usize_len;
        self.walk(offset, offset + len, &mut |seg| {
            let at = usize_len(seg.start - offset)?;
            let n = usize_len(seg.length)?;
            match seg.mapping {
                Mapping::Stored { file, offset: src } => {
                    if let Some(done) = extend(&mut stored, file, at, src, n) {
                        self.read_stored(buf, &done)?;
                    }
                }
                Mapping::Unallocated { .. } if self.backing.is_some() => {
                    if let Some(done) = extend(&mut backing, 0, at, seg.start, n) {
                        self.read_backing(buf, &done)?;
                    }
                }
                Mapping::Zero { .. } | Mapping::Unallocated { .. } => part(buf, at, n)?.fill(0),
                Mapping::Encoded { unit, unit_start } => {
                    // A whole unit (what a conversion reads) goes straight into the buffer.
                    if seg.start == unit_start && seg.length == unit.len {
                        return self.disk.decode(&unit, part(buf, at, n)?);
                    }
                    let bytes = self.decoded(&unit)?;
                    let from = usize_len(seg.start - unit_start)?;
                    let src = from
                        .checked_add(n)
                        .and_then(|end| bytes.get(from..end))
                        .ok_or_else(|| {
                            Error::internal(format!(
                                "read of {n} bytes at {from} of a unit of {}",
                                unit.len
                            ))
                        })?;
                    part(buf, at, n)?.copy_from_slice(src);
                }
            }
            Ok(())
        })?;
        if let Some(run) = stored {
            self.read_stored(buf, &run)?;
        }
        if let Some(run) = backing {
            self.read_backing(buf, &run)?;
        }
        Ok(())
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.virtual_size());
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let mut pending: Option<Pending> = None;
        let has_backing = self.backing.is_some();
        self.walk(offset, end, &mut |seg| {
            let (state, host_offset, compressed, file) = match seg.mapping {
                Mapping::Stored { file, offset } => {
                    (ExtentState::Data, Some(offset), false, Some(file))
                }
                Mapping::Encoded { .. } => (ExtentState::Data, None, true, None),
                Mapping::Zero { host } => (ExtentState::Zero, host, false, None),
                // Replaced by the backing disk's map: where this image preallocated does not matter.
                Mapping::Unallocated { .. } if has_backing => {
                    (ExtentState::Unallocated, None, false, None)
                }
                Mapping::Unallocated { host } => (ExtentState::Unallocated, host, false, None),
            };
            let e = Extent {
                start: seg.start,
                length: seg.length,
                state,
                host_offset,
                compressed,
            };
            match &mut pending {
                Some(p) if p.file == file && p.extent.continues_with(&e) => {
                    p.extent.length += e.length
                }
                _ => {
                    if let Some(done) = pending.replace(Pending { extent: e, file }) {
                        self.finish(&mut out, done)?;
                    }
                }
            }
            Ok(())
        })?;
        if let Some(done) = pending {
            self.finish(&mut out, done)?;
        }
        Ok(out)
    }

    fn info(&self) -> Option<FormatInfo> {
        self.disk.info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    /// A toy format over 4 KiB units: unit 0 stored at file offset 8192, unit 1 zero, unit 2
    /// unallocated, unit 3 "encoded" (its bytes are its id repeated), unit 4 stored at 12288
    /// (so units 4 and 0 are not contiguous in the file).
    struct Toy {
        file: MemoryStorage,
    }

    const U: u64 = 4096;

    impl MappedDisk for Toy {
        fn virtual_size(&self) -> u64 {
            5 * U
        }
        fn walk(
            &self,
            start: u64,
            end: u64,
            f: &mut dyn FnMut(Segment) -> Result<()>,
        ) -> Result<()> {
            let mut pos = start;
            while pos < end {
                let unit = pos / U;
                let unit_start = unit * U;
                let seg_end = (unit_start + U).min(end);
                let within = pos - unit_start;
                let mapping = match unit {
                    0 => Mapping::Stored {
                        file: 0,
                        offset: 8192 + within,
                    },
                    1 => Mapping::Zero { host: None },
                    2 => Mapping::Unallocated { host: None },
                    3 => Mapping::Encoded {
                        unit: Unit {
                            source: 0,
                            id: 3,
                            at: 0,
                            len: U,
                        },
                        unit_start,
                    },
                    _ => Mapping::Stored {
                        file: 0,
                        offset: 12288 + within,
                    },
                };
                f(Segment {
                    start: pos,
                    length: seg_end - pos,
                    mapping,
                })?;
                pos = seg_end;
            }
            Ok(())
        }
        fn file(&self, file: usize) -> Result<&dyn Storage> {
            only_file(&self.file, file)
        }
        fn decode(&self, unit: &Unit, out: &mut [u8]) -> Result<()> {
            out.fill(unit.id as u8);
            Ok(())
        }
        fn data_structure(&self) -> &'static str {
            "toy data"
        }
        fn info(&self) -> Option<FormatInfo> {
            None
        }
    }

    fn toy(backing: Option<Arc<dyn BlockReader>>) -> MappedReader<Toy> {
        let mut bytes = vec![0u8; 16384];
        bytes[8192..12288].fill(1);
        bytes[12288..].fill(4);
        MappedReader::new(
            Toy {
                file: MemoryStorage::new(bytes),
            },
            backing,
        )
    }

    #[test]
    fn read_and_map_agree() {
        let r = toy(None);
        let mut all = vec![9u8; 5 * U as usize];
        r.read_at(&mut all, 0).unwrap();
        let expect: Vec<u8> = [1u8, 0, 0, 3, 4]
            .iter()
            .flat_map(|&b| std::iter::repeat_n(b, U as usize))
            .collect();
        assert_eq!(all, expect);
        // Every partial read gives the same bytes.
        for start in [0, 100, 4095, 4096, 12000, 12300, 16383] {
            let mut part = vec![9u8; 700.min(5 * U as usize - start)];
            r.read_at(&mut part, start as u64).unwrap();
            assert_eq!(part, expect[start..start + part.len()]);
        }
        let map = r.map(0, 5 * U).unwrap();
        check_map(&map, 0, 5 * U).unwrap();
        let states: Vec<_> = map.iter().map(|e| (e.state, e.compressed)).collect();
        assert_eq!(
            states,
            vec![
                (ExtentState::Data, false),
                (ExtentState::Zero, false),
                (ExtentState::Unallocated, false),
                (ExtentState::Data, true),
                (ExtentState::Data, false),
            ]
        );
        assert_eq!(map[0].host_offset, Some(8192));
        assert_eq!(map[4].host_offset, Some(12288));
    }

    #[test]
    fn unallocated_falls_through_to_a_shorter_backing_disk_then_zeros() {
        let backing: Arc<dyn BlockReader> =
            Arc::new(crate::block::MemoryDisk(vec![7u8; (2 * U + 100) as usize]));
        let r = toy(Some(backing));
        let mut buf = vec![9u8; U as usize];
        r.read_at(&mut buf, 2 * U).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 7));
        assert!(buf[100..].iter().all(|&b| b == 0));
        let map = r.map(2 * U, U).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!((map[0].state, map[0].length), (ExtentState::Data, 100));
        assert_eq!(
            map[1].state,
            ExtentState::Unallocated,
            "past the backing disk: in no image of the chain, as qemu maps it"
        );
    }

    #[test]
    fn runs_join_only_when_contiguous_in_both_places_and_the_same_file() {
        let mut p = None;
        assert!(extend(&mut p, 0, 0, 100, 10).is_none());
        assert!(extend(&mut p, 0, 10, 110, 5).is_none());
        let done = extend(&mut p, 0, 15, 200, 5).unwrap();
        assert_eq!((done.at, done.src, done.len), (0, 100, 15));
        let done = extend(&mut p, 1, 20, 205, 5).unwrap();
        assert_eq!((done.file, done.at, done.src), (0, 15, 200));
    }

    #[test]
    fn reads_outside_the_disk_fail() {
        let r = toy(None);
        let mut buf = [0u8; 2];
        assert!(r.read_at(&mut buf, 5 * U - 1).is_err());
        assert!(r.map(5 * U, 10).unwrap().is_empty());
    }
}
