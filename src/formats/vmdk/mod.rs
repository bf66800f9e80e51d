//! VMDK: VMware's virtual disk. A text descriptor lists extents (hosted sparse, flat, zero) that
//! hold the disk's sectors end to end; monolithicSparse and streamOptimized disks embed the
//! descriptor in their one sparse extent. See formats/vmdk.md.
//!
//! Opening follows these rules: an embedded extent is always the image file itself (the name
//! the descriptor gives it is never opened); extents in other files and the parent of a delta
//! disk are opened only through the [`Resolver`], as the caller's policy allows.

mod consistency;
pub mod descriptor;
pub mod header;
pub mod info;
pub mod marker;
pub mod reader;
pub mod sparse;
pub mod stream;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use crate::limits::{MAX_DESCRIPTOR_BYTES, MAX_VMDK_DISK_BYTES};
use descriptor::{Descriptor, ExtentType};
use reader::{ExtentData, VmdkExtent};
use sparse::{MAGIC, SECTOR, SparseExtent};

use crate::block::{BlockReader, usize_len};
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::Format;
use crate::formats::info::FormatInfo;
use crate::resolve::{Reference, Resolver};
use crate::storage::{Storage, read_exact_at};

pub use reader::VmdkReader;
pub use stream::{StreamReader, StreamWriter};

/// Opens the VMDK in `file` (named `path`), with `resolver` deciding about other files.
pub fn open(file: Arc<dyn Storage>, path: &Path, resolver: &Resolver) -> Result<VmdkReader> {
    let file_len = file.len();
    let mut magic = [0u8; 4];
    let n = file.read_at(&mut magic, 0)?;
    if n == 4 && &magic == MAGIC {
        return open_sparse(file, file_len, path, resolver);
    }
    if n == 4 && &magic == b"COWD" {
        return Err(Error::unsupported("ESX sparse (COWD) VMDK extents"));
    }
    // A descriptor file.
    if file_len > MAX_DESCRIPTOR_BYTES {
        return Err(Error::limit(
            "vmdk descriptor",
            0,
            format!(
                "a descriptor file of {file_len} bytes (at most {MAX_DESCRIPTOR_BYTES}); is this a VMDK?"
            ),
        ));
    }
    let mut text = vec![0u8; usize_len(file_len)?];
    read_exact_at(&*file, &mut text, 0, "vmdk descriptor")?;
    let d = Descriptor::parse(&text, 0)?;
    descriptor::check_create_type(&d, &descriptor::DESCRIPTOR_TYPES)?;
    if d.extents.is_empty() {
        return Err(Error::malformed("vmdk descriptor", 0, "no extents"));
    }
    let size = disk_size(&d)?;
    let parent = open_parent(&d, path, resolver)?;
    let mut extents = Vec::with_capacity(d.extents.len());
    // What each opened extent reads of which file: no two extents may read the same bytes.
    let mut used = Vec::new();
    let mut start = 0u64;
    for line in &d.extents {
        let length = line.sectors * SECTOR;
        let name = line.file_name.clone().unwrap_or_default();
        let refused = || ExtentData::Refused {
            kind: line.kind.name(),
        };
        let data = match line.kind {
            ExtentType::Zero => ExtentData::Zero,
            ExtentType::Flat | ExtentType::Vmfs => {
                let Some((f, p)) = open_extent(&name, path, resolver)? else {
                    extents.push(VmdkExtent {
                        start,
                        length,
                        data: refused(),
                        file_name: name,
                        embedded: false,
                    });
                    start += length;
                    continue;
                };
                let len = f.len();
                let offset = line.offset.checked_mul(SECTOR).ok_or_else(|| {
                    Error::malformed("vmdk descriptor extent", line.at, "offset overflows")
                })?;
                if offset.checked_add(length).is_none_or(|e| e > len) {
                    return Err(
                        Error::truncated("vmdk flat extent", offset, length, len).in_file(&p)
                    );
                }
                used.push((p, offset, offset + length, line.at));
                ExtentData::Flat { file: f, offset }
            }
            ExtentType::Sparse | ExtentType::VmfsSparse => {
                let Some((f, p)) = open_extent(&name, path, resolver)? else {
                    extents.push(VmdkExtent {
                        start,
                        length,
                        data: refused(),
                        file_name: name,
                        embedded: false,
                    });
                    start += length;
                    continue;
                };
                let len = f.len();
                let mut m = [0u8; 4];
                f.read_at(&mut m, 0).map_err(|e| e.in_file(&p))?;
                if &m == b"COWD" {
                    return Err(Error::unsupported("ESX sparse (COWD) VMDK extents").in_file(&p));
                }
                let sparse = SparseExtent::open(f, len).map_err(|e| e.in_file(&p))?;
                if line.sectors > sparse.header.capacity {
                    return Err(Error::malformed(
                        "vmdk descriptor extent",
                        line.at,
                        format!(
                            "extent of {} sectors, its file {name:?} holds {}",
                            line.sectors, sparse.header.capacity
                        ),
                    ));
                }
                used.push((p, 0, u64::MAX, line.at));
                ExtentData::Sparse(Box::new(sparse))
            }
            ExtentType::VmfsRdm | ExtentType::VmfsRaw => {
                return Err(Error::unsupported(format!(
                    "{} extents (raw device mappings)",
                    line.kind.name()
                )));
            }
        };
        extents.push(VmdkExtent {
            start,
            length,
            data,
            file_name: name,
            embedded: false,
        });
        start += length;
    }
    check_extents_apart(used)?;
    Ok(reader::VmdkDisk::reader(size, extents, Some(d), parent))
}

/// Refuses two extents that read the same bytes of one file (a sparse extent reads all of its
/// file): the same stored data would be several parts of the disk, so a small file could read
/// as a huge disk. Each entry is (file, first byte, end, where the extent line is).
fn check_extents_apart(mut used: Vec<(std::path::PathBuf, u64, u64, u64)>) -> Result<()> {
    used.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for pair in used.windows(2) {
        if let [a, b] = pair
            && a.0 == b.0
            && b.1 < a.2
        {
            return Err(Error::malformed(
                "vmdk descriptor extent",
                b.3,
                format!(
                    "reads bytes of {} that the extent at offset {:#x} reads too",
                    b.0.display(),
                    a.3
                ),
            ));
        }
    }
    Ok(())
}

/// Opens a file that starts with a hosted sparse header: monolithicSparse, streamOptimized, or
/// one extent of a split disk opened on its own.
fn open_sparse(
    file: Arc<dyn Storage>,
    file_len: u64,
    path: &Path,
    resolver: &Resolver,
) -> Result<VmdkReader> {
    let header = sparse::read_header(&*file, file_len)?;
    let descriptor = match sparse::read_embedded_descriptor(&*file, file_len, &header)? {
        Some((text, at)) => Some(Descriptor::parse(&text, at)?),
        None => None,
    };
    let mut parent = None;
    if let Some(d) = &descriptor {
        descriptor::check_embedded(d, header.capacity)?;
        parent = open_parent(d, path, resolver)?;
    }
    let extent = SparseExtent::open(file, file_len)?;
    let sectors = match descriptor.as_ref().and_then(|d| d.extents.first()) {
        Some(e) => e.sectors,
        None => extent.header.capacity,
    };
    let size = sectors * SECTOR;
    let name = descriptor
        .as_ref()
        .and_then(|d| d.extents.first())
        .and_then(|e| e.file_name.clone())
        .unwrap_or_else(|| path.display().to_string());
    let extents = vec![VmdkExtent {
        start: 0,
        length: size,
        data: ExtentData::Sparse(Box::new(extent)),
        file_name: name,
        embedded: true,
    }];
    Ok(reader::VmdkDisk::reader(size, extents, descriptor, parent))
}

/// The disk's size: the sum of the extents, at most [`MAX_VMDK_DISK_BYTES`].
fn disk_size(d: &Descriptor) -> Result<u64> {
    let sectors = d.sectors()?;
    sectors
        .checked_mul(SECTOR)
        .filter(|&b| b <= MAX_VMDK_DISK_BYTES)
        .ok_or_else(|| {
            Error::limit(
                "vmdk descriptor",
                0,
                format!("{sectors} sectors is over {MAX_VMDK_DISK_BYTES} bytes"),
            )
        })
}

/// Opens the extent file `name` that the descriptor at `path` names, as `resolver` allows:
/// `None` when it defers references (for `info`), and the extent then fails every read.
fn open_extent(
    name: &str,
    path: &Path,
    resolver: &Resolver,
) -> Result<Option<(Arc<dyn Storage>, std::path::PathBuf)>> {
    let reference = Reference::new(ReferenceKind::Extent, name);
    Ok(resolver
        .open_bytes(&reference, path)?
        .map(|opened| (opened.storage, opened.path)))
}

/// The parent of a delta disk, opened through `resolver` by its `parentFileNameHint`; its CID
/// must be the `parentCID`.
fn open_parent(
    d: &Descriptor,
    path: &Path,
    resolver: &Resolver,
) -> Result<Option<Arc<dyn BlockReader>>> {
    if !d.is_delta() {
        return Ok(None);
    }
    let size = disk_size(d).unwrap_or(0);
    if !resolver.follows() {
        let description = d
            .parent_file_name_hint
            .clone()
            .unwrap_or_else(|| format!("parentCID={:08x}", d.parent_cid));
        let reference = Reference::new(ReferenceKind::BackingFile, description);
        return resolver.open_disk(&reference, path, size).map(Some);
    }
    let Some(hint) = &d.parent_file_name_hint else {
        return Err(Error::malformed(
            "vmdk descriptor",
            0,
            "a delta disk without parentFileNameHint",
        ));
    };
    let reference = Reference {
        format: Some(Format::Vmdk),
        ..Reference::new(ReferenceKind::BackingFile, hint.clone())
    };
    let parent = resolver.open_disk(&reference, path, size)?;
    let cid = match parent.info() {
        Some(FormatInfo::Vmdk(v)) => v.cid,
        _ => None,
    };
    if cid != Some(d.parent_cid) {
        return Err(Error::malformed(
            "vmdk descriptor",
            0,
            format!(
                "parentCID {:08x} is not the CID of {hint:?} ({})",
                d.parent_cid,
                cid.map_or("none".to_string(), |c| format!("{c:08x}"))
            ),
        ));
    }
    Ok(Some(parent))
}
