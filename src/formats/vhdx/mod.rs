//! VHDX (Virtual Hard Disk v2): Hyper-V's format since Windows 8, also written by Disk2VHD and
//! Azure Stack. See formats/vhdx.md.
//!
//! A VHDX is a 1 MiB header section (file type identifier, two headers, two region tables),
//! then, anywhere on 1 MiB boundaries, the log, the BAT and the metadata region the headers and
//! the region table point to, and the blocks the BAT points to. Every structure is
//! little-endian; GUIDs are stored in Microsoft's binary form (the first three fields
//! little-endian).

pub mod bat;
pub mod header;
pub mod identifier;
pub mod info;
pub mod locator;
pub mod log;
pub mod metadata;
pub mod reader;
pub mod region;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use uuid::Uuid;

use crate::error::{Error, ReferenceKind, Result};
use crate::formats::Format;
use crate::formats::info::FormatInfo;
use crate::resolve::{Reference, Resolver};
use crate::storage::Storage;

pub use reader::{VhdxDisk, VhdxImage, VhdxReader};

/// The BAT region's GUID.
pub const BAT_REGION: Uuid = uuid::uuid!("2DC27766-F623-4200-9D64-115E9BFD4A08");
/// The metadata region's GUID.
pub const METADATA_REGION: Uuid = uuid::uuid!("8B7CA206-4790-4B9A-B8FE-575F050F886E");

/// Opens a VHDX. A differencing disk's parent is opened through `resolver`: a VHDX found by
/// the locator's relative path, or by the file name of its other paths beside the child, whose
/// current `DataWriteGuid` is one the child's `parent_linkage` names and whose logical sector
/// size is the child's. Absolute paths are never followed.
pub fn open(storage: Arc<dyn Storage>, path: &Path, resolver: &Resolver) -> Result<VhdxReader> {
    let image = VhdxImage::open(storage)?;
    let Some(locator) = image.metadata.parent_locator.clone() else {
        return image.into_reader(None);
    };
    let size = image.metadata.virtual_disk_size;
    let description = locator.description();
    if !resolver.follows() {
        let reference = Reference::new(ReferenceKind::ParentLocator, description);
        let parent = resolver.open_disk(&reference, path, size)?;
        return image.into_reader(Some(parent));
    }
    let linkages = locator.linkages();
    let mut last_error = Error::reference(ReferenceKind::ParentLocator, description);
    for name in locator.names() {
        let reference = Reference {
            format: Some(Format::Vhdx),
            ..Reference::new(ReferenceKind::ParentLocator, name.clone())
        };
        let parent = match resolver.open_disk(&reference, path, size) {
            Ok(p) => p,
            // Not there, or not allowed: the next name may be.
            Err(e @ (Error::ExternalReference { .. } | Error::Io { .. })) => {
                last_error = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(FormatInfo::Vhdx(info)) = parent.info() else {
            return Err(Error::internal("a vhdx parent opened as another format"));
        };
        let guid = Uuid::parse_str(&info.data_write_guid).ok();
        if !guid.is_some_and(|g| linkages.contains(&g)) {
            last_error = Error::malformed(
                "vhdx parent locator",
                image.regions.metadata.file_offset,
                format!(
                    "parent {name:?} has DataWriteGuid {}, not the parent_linkage the child \
                     records: it changed since the child was made",
                    info.data_write_guid
                ),
            );
            continue;
        }
        if info.logical_sector_size != image.metadata.logical_sector_size {
            return Err(Error::malformed(
                "vhdx parent locator",
                image.regions.metadata.file_offset,
                format!(
                    "parent {name:?} has {}-byte sectors, the child {}-byte ones",
                    info.logical_sector_size, image.metadata.logical_sector_size
                ),
            ));
        }
        return image.into_reader(Some(parent));
    }
    Err(last_error)
}

/// A GUID from its 16 bytes in Microsoft's binary form.
pub(crate) fn guid(b: &[u8]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&b[..16]);
    Uuid::from_bytes_le(bytes)
}

/// Writes `id` in Microsoft's binary form into `b[..16]`.
pub(crate) fn put_guid(b: &mut [u8], id: &Uuid) {
    b[..16].copy_from_slice(&id.to_bytes_le());
}

/// CRC-32C of `buf` with its 4-byte checksum field at `at` taken as zero, as every checksummed
/// VHDX structure (headers, region tables, log entries) is summed.
pub(crate) fn checksum(buf: &[u8], at: usize) -> u32 {
    let sum = crc32c::crc32c(&buf[..at]);
    let sum = crc32c::crc32c_append(sum, &[0; 4]);
    crc32c::crc32c_append(sum, &buf[at + 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_the_castagnoli_polynomial() {
        // The check value of CRC-32C.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let mut b = b"ab\xff\xff\xff\xffcd".to_vec();
        let sum = checksum(&b, 2);
        b[2..6].fill(0);
        assert_eq!(sum, crc32c::crc32c(&b));
    }

    #[test]
    fn guids_are_in_microsofts_binary_form() {
        let b = [
            0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
            0x4a, 0x08,
        ];
        assert_eq!(guid(&b), BAT_REGION);
        let mut out = [0u8; 16];
        put_guid(&mut out, &BAT_REGION);
        assert_eq!(out, b);
    }
}
