//! The VMDK disk as a [`BlockReader`]: a list of extents (sparse, flat, zero) laid end to end,
//! and the parent of a delta disk, where one is attached. Opening (which files, which checks)
//! is in `mod.rs`; this file only reads.

use std::sync::Arc;

use super::descriptor::Descriptor;
use super::info::{VmdkExtentInfo, VmdkInfo};
use super::sparse::{Grain, SparseExtent};
use crate::block::BlockReader;
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::info::FormatInfo;
use crate::mapped::{MappedDisk, MappedReader, Mapping, Segment, StoredRanges, Unit};
use crate::storage::Storage;

/// Where an extent's sectors are.
#[non_exhaustive]
pub enum ExtentData {
    /// Plain sectors in `file` from byte `offset`.
    Flat {
        /// The file holding the sectors.
        file: Arc<dyn Storage>,
        /// Where the extent's first sector is in `file`.
        offset: u64,
    },
    /// Sectors that read as zeros.
    Zero,
    /// A hosted sparse extent.
    Sparse(Box<SparseExtent>),
    /// An extent in a file the open options do not let ims open (`kind` is its type): every
    /// read or map of it fails with the reference error.
    Refused {
        /// The extent's type, as the descriptor gives it.
        kind: &'static str,
    },
}

/// One extent of the disk.
pub struct VmdkExtent {
    /// Where the extent starts on the disk, in bytes, and its length.
    pub start: u64,
    /// Bytes of the disk the extent holds.
    pub length: u64,
    /// Where the extent's sectors are.
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

/// The reader: a [`VmdkDisk`] with the parent of a delta disk, if one is attached.
pub type VmdkReader = MappedReader<VmdkDisk>;

/// What a VMDK's extents and grain tables say about each offset of its disk.
pub struct VmdkDisk {
    size: u64,
    extents: Vec<VmdkExtent>,
    descriptor: Option<Descriptor>,
    /// Whether a parent is attached: unallocated grains are then the parent's, else zeros.
    has_parent: bool,
}

impl VmdkDisk {
    /// A reader over `extents`, which must be in order, without gaps, and cover `size` bytes.
    pub(crate) fn reader(
        size: u64,
        extents: Vec<VmdkExtent>,
        descriptor: Option<Descriptor>,
        parent: Option<Arc<dyn BlockReader>>,
    ) -> VmdkReader {
        let disk = VmdkDisk {
            size,
            extents,
            descriptor,
            has_parent: parent.is_some(),
        };
        MappedReader::new(disk, parent)
    }

    /// The descriptor, where the image has one.
    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref()
    }

    /// The extents, end to end.
    pub fn extents(&self) -> &[VmdkExtent] {
        &self.extents
    }
}

impl MappedDisk for VmdkDisk {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn walk(&self, offset: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()> {
        let unallocated = if self.has_parent {
            Mapping::Unallocated { host: None }
        } else {
            Mapping::Zero { host: None }
        };
        let mut pos = offset;
        let first = self.extents.partition_point(|e| e.end() <= offset);
        for (index, extent) in self.extents.iter().enumerate().skip(first) {
            if pos >= end {
                break;
            }
            let stop = extent.end().min(end);
            let mut emit = |start: u64, length: u64, mapping: Mapping| {
                f(Segment {
                    start,
                    length,
                    mapping,
                })
            };
            match &extent.data {
                ExtentData::Zero => emit(pos, stop - pos, Mapping::Zero { host: None })?,
                ExtentData::Refused { .. } => {
                    return Err(Error::reference(
                        ReferenceKind::Extent,
                        extent.file_name.clone(),
                    ));
                }
                ExtentData::Flat { offset, .. } => emit(
                    pos,
                    stop - pos,
                    Mapping::Stored {
                        file: index,
                        offset: offset + (pos - extent.start),
                    },
                )?,
                ExtentData::Sparse(sparse) => {
                    let grain_bytes = sparse.header.grain_bytes();
                    while pos < stop {
                        let rel = pos - extent.start;
                        let grain = rel / grain_bytes;
                        let grain_start = grain * grain_bytes;
                        // A whole grain table's worth of grains with no table: one step.
                        let tableless = sparse.grains_without_table(grain);
                        if tableless > 0 {
                            let run_end = extent
                                .start
                                .saturating_add(
                                    grain_start
                                        .saturating_add(tableless.saturating_mul(grain_bytes)),
                                )
                                .min(stop);
                            emit(pos, run_end - pos, unallocated)?;
                            pos = run_end;
                            continue;
                        }
                        let run_end = (extent.start + grain_start + grain_bytes).min(stop);
                        let within = rel - grain_start;
                        let mapping = match sparse.grain(grain)? {
                            Grain::Unallocated => unallocated,
                            Grain::Zero => Mapping::Zero { host: None },
                            Grain::Stored(at) => Mapping::Stored {
                                file: index,
                                offset: at + within,
                            },
                            Grain::Compressed(at) => Mapping::Encoded {
                                unit: Unit {
                                    source: index,
                                    id: grain,
                                    at,
                                    len: grain_bytes,
                                },
                                unit_start: extent.start + grain_start,
                            },
                        };
                        emit(pos, run_end - pos, mapping)?;
                        pos = run_end;
                    }
                }
            }
            pos = stop;
        }
        Ok(())
    }

    fn file(&self, file: usize) -> Result<&dyn Storage> {
        match self.extents.get(file).map(|e| &e.data) {
            Some(ExtentData::Flat { file, .. }) => Ok(&**file),
            Some(ExtentData::Sparse(sparse)) => Ok(sparse.file()),
            _ => Err(Error::internal(format!("vmdk extent {file} has no file"))),
        }
    }

    fn stored_ranges(&self, file: usize) -> StoredRanges {
        if self.extents.get(file).is_some_and(|e| e.embedded) {
            StoredRanges::Located
        } else {
            // A flat extent (or a split sparse one) in its own file: its holes are zeros a
            // conversion need not read. Offsets in another file would mislead.
            StoredRanges::SplitByHoles
        }
    }

    fn decode(&self, unit: &Unit, out: &mut [u8]) -> Result<()> {
        match self.extents.get(unit.source).map(|e| &e.data) {
            Some(ExtentData::Sparse(sparse)) => sparse.inflate_into(unit.id, unit.at, out),
            _ => Err(Error::internal(format!(
                "vmdk extent {} has no compressed grains",
                unit.source
            ))),
        }
    }

    fn data_structure(&self) -> &'static str {
        "vmdk grain data"
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
        Some(FormatInfo::Vmdk(VmdkInfo::new(
            self.descriptor.as_ref(),
            extents,
        )))
    }
}
