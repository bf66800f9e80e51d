//! The VMDK disk as a [`BlockReader`]: a list of extents (sparse, flat, zero) laid end to end,
//! and the parent of a delta disk, where one is attached. Opening (which files, which checks)
//! is in `mod.rs`; this file only reads.

use std::sync::Arc;

use super::descriptor::Descriptor;
use super::info::{VmdkExtentInfo, VmdkInfo};
use super::sparse::{Grain, SparseExtent};
use crate::block::{
    BlockReader, Extent, ExtentState, check_range, map_backing, push_extent, read_backing,
    usize_len,
};
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::info::FormatInfo;
use crate::storage::{Storage, data_runs, read_exact_at};

/// Where an extent's sectors are.
pub enum ExtentData {
    /// Plain sectors in `file` from byte `offset`.
    Flat { file: Arc<dyn Storage>, offset: u64 },
    /// Sectors that read as zeros.
    Zero,
    /// A hosted sparse extent.
    Sparse(Box<SparseExtent>),
    /// An extent in a file the open options do not let ims open (`kind` is its type): every
    /// read or map of it fails with the reference error.
    Refused { kind: &'static str },
}

/// One extent of the disk.
pub struct VmdkExtent {
    /// Where the extent starts on the disk, in bytes, and its length.
    pub start: u64,
    pub length: u64,
    pub data: ExtentData,
    /// The extent's file name as the descriptor gives it (the image's own for embedded ones).
    pub file_name: String,
    /// Whether the extent lies in the image file itself (so host offsets are the image's).
    pub embedded: bool,
}

impl VmdkExtent {
    fn end(&self) -> u64 {
        self.start + self.length
    }
}

/// The reader.
pub struct VmdkReader {
    size: u64,
    extents: Vec<VmdkExtent>,
    descriptor: Option<Descriptor>,
    parent: Option<Arc<dyn BlockReader>>,
}

/// What one run of a read or map finds.
enum Run<'a> {
    /// Plain bytes at `at` in `file`.
    Stored {
        file: &'a dyn Storage,
        at: u64,
        embedded: bool,
    },
    /// Bytes `within` the compressed grain `index` of `extent`, stored at `at`.
    Compressed {
        extent: &'a SparseExtent,
        index: u64,
        at: u64,
        within: u64,
    },
    Zero,
    /// Not in this disk: the parent's, or zeros.
    Unallocated,
}

impl VmdkReader {
    /// A reader over `extents`, which must be in order, without gaps, and cover `size` bytes.
    pub fn new(
        size: u64,
        extents: Vec<VmdkExtent>,
        descriptor: Option<Descriptor>,
        parent: Option<Arc<dyn BlockReader>>,
    ) -> VmdkReader {
        VmdkReader {
            size,
            extents,
            descriptor,
            parent,
        }
    }

    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref()
    }

    pub fn extents(&self) -> &[VmdkExtent] {
        &self.extents
    }

    /// Walks `[offset, offset + len)` in runs, calling `f(start, length, run)`. Neighbouring
    /// plain runs that continue each other in the same file are joined.
    fn walk<'a>(
        &'a self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, Run<'a>) -> Result<()>,
    ) -> Result<()> {
        let end = offset + len;
        let mut pos = offset;
        let first = self.extents.partition_point(|e| e.end() <= offset);
        let mut held: Option<Held<'a>> = None;
        for extent in self.extents.iter().skip(first) {
            if pos >= end {
                break;
            }
            let stop = extent.end().min(end);
            match &extent.data {
                ExtentData::Zero => emit(&mut held, pos, stop - pos, Run::Zero, &mut f)?,
                ExtentData::Refused { .. } => {
                    return Err(Error::reference(
                        ReferenceKind::Extent,
                        extent.file_name.clone(),
                    ));
                }
                ExtentData::Flat { file, offset } => emit(
                    &mut held,
                    pos,
                    stop - pos,
                    Run::Stored {
                        file: &**file,
                        at: offset + (pos - extent.start),
                        embedded: extent.embedded,
                    },
                    &mut f,
                )?,
                ExtentData::Sparse(sparse) => {
                    let grain_bytes = sparse.header.grain_bytes();
                    while pos < stop {
                        let rel = pos - extent.start;
                        let index = rel / grain_bytes;
                        let grain_start = index * grain_bytes;
                        let run_end = (extent.start + grain_start + grain_bytes).min(stop);
                        let within = rel - grain_start;
                        let run = match sparse.grain(index)? {
                            Grain::Unallocated => Run::Unallocated,
                            Grain::Zero => Run::Zero,
                            Grain::Stored(at) => Run::Stored {
                                file: sparse.file(),
                                at: at + within,
                                embedded: extent.embedded,
                            },
                            Grain::Compressed(at) => Run::Compressed {
                                extent: sparse,
                                index,
                                at,
                                within,
                            },
                        };
                        emit(&mut held, pos, run_end - pos, run, &mut f)?;
                        pos = run_end;
                    }
                }
            }
            pos = stop;
        }
        if let Some(h) = held.take() {
            f(h.start, h.length, h.run())?;
        }
        Ok(())
    }
}

/// A plain run being extended by the runs that continue it.
struct Held<'a> {
    start: u64,
    length: u64,
    file: &'a dyn Storage,
    at: u64,
    embedded: bool,
}

impl<'a> Held<'a> {
    fn run(&self) -> Run<'a> {
        Run::Stored {
            file: self.file,
            at: self.at,
            embedded: self.embedded,
        }
    }
}

/// Passes `run` on to `f`, joining plain runs that continue each other in the same file.
fn emit<'a>(
    held: &mut Option<Held<'a>>,
    start: u64,
    length: u64,
    run: Run<'a>,
    f: &mut impl FnMut(u64, u64, Run<'a>) -> Result<()>,
) -> Result<()> {
    if let Run::Stored { file, at, embedded } = run {
        if let Some(h) = held.as_mut()
            && std::ptr::addr_eq(h.file, file)
            && h.at + h.length == at
            && h.start + h.length == start
        {
            h.length += length;
            return Ok(());
        }
        if let Some(h) = held.take() {
            f(h.start, h.length, h.run())?;
        }
        *held = Some(Held {
            start,
            length,
            file,
            at,
            embedded,
        });
        return Ok(());
    }
    if let Some(h) = held.take() {
        f(h.start, h.length, h.run())?;
    }
    f(start, length, run)
}

impl BlockReader for VmdkReader {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.walk(offset, buf.len() as u64, |start, length, run| {
            let from = usize_len(start - offset)?;
            let to = from + usize_len(length)?;
            let Some(part) = buf.get_mut(from..to) else {
                return Ok(());
            };
            match run {
                Run::Stored { file, at, .. } => read_exact_at(file, part, at, "vmdk grain data"),
                Run::Compressed {
                    extent,
                    index,
                    at,
                    within,
                } => {
                    if within == 0 && part.len() as u64 == extent.grain_bytes() {
                        return extent.inflate_into(index, at, part);
                    }
                    let grain = extent.inflate(index, at)?;
                    let w = usize_len(within)?;
                    match grain.get(w..w + part.len()) {
                        Some(src) => part.copy_from_slice(src),
                        None => part.fill(0),
                    }
                    Ok(())
                }
                Run::Zero => {
                    part.fill(0);
                    Ok(())
                }
                Run::Unallocated => read_backing(self.parent.as_deref(), part, start),
            }
        })
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let len = len.min(self.size.saturating_sub(offset));
        let mut out = Vec::new();
        self.walk(offset, len, |start, length, run| {
            match run {
                Run::Stored { at, embedded, .. } if embedded => push_extent(
                    &mut out,
                    Extent {
                        host_offset: Some(at),
                        ..Extent::new(start, length, ExtentState::Data)
                    },
                ),
                // A flat extent (or a split sparse one) in its own file: its holes are zeros
                // a conversion need not read. Offsets in another file would mislead.
                Run::Stored { file, at, .. } => {
                    for (host, n, state) in data_runs(file, at, at + length)? {
                        push_extent(&mut out, Extent::new(start + (host - at), n, state));
                    }
                }
                Run::Compressed { .. } => push_extent(
                    &mut out,
                    Extent {
                        compressed: true,
                        ..Extent::new(start, length, ExtentState::Data)
                    },
                ),
                Run::Zero => push_extent(&mut out, Extent::new(start, length, ExtentState::Zero)),
                Run::Unallocated => match &self.parent {
                    Some(p) => map_backing(&**p, start, length, &mut out)?,
                    None => push_extent(&mut out, Extent::new(start, length, ExtentState::Zero)),
                },
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn info(&self) -> Option<FormatInfo> {
        let extents = self
            .extents
            .iter()
            .map(|e| {
                let (format, cluster_size, compressed) = match &e.data {
                    ExtentData::Flat { .. } => ("FLAT".to_string(), None, None),
                    ExtentData::Zero => ("ZERO".to_string(), None, None),
                    ExtentData::Refused { kind } => (kind.to_string(), None, None),
                    ExtentData::Sparse(s) => (
                        "SPARSE".to_string(),
                        Some(s.header.grain_bytes()),
                        Some(s.header.compressed()),
                    ),
                };
                VmdkExtentInfo {
                    filename: e.file_name.clone(),
                    virtual_size: e.length,
                    format,
                    cluster_size,
                    compressed,
                }
            })
            .collect();
        let d = self.descriptor.as_ref();
        Some(FormatInfo::Vmdk(VmdkInfo {
            cid: d.map(|d| d.cid),
            parent_cid: d.map(|d| d.parent_cid),
            create_type: d.and_then(|d| d.create_type.clone()),
            parent_file_name_hint: d.and_then(|d| d.parent_file_name_hint.clone()),
            extents,
        }))
    }
}
