//! VDI (VirtualBox Disk Image): VirtualBox's own format, static or dynamic, read through its
//! block map; written dynamic or static. See formats/vdi.md.

pub mod header;
pub mod info;
pub mod reader;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ReferenceKind, Result};
use crate::resolve::{Reference, Resolver};
use crate::storage::Storage;

pub use reader::{VdiDisk, VdiReader};
pub use writer::{VdiCreateOptions, VdiWriter};

/// Opens a VDI. A differencing image names its parent only by UUID, which ims cannot look up
/// in a directory: it is refused as a reference (and under `Defer`, for `info`, opened with a
/// parent whose reads fail).
pub fn open(storage: Arc<dyn Storage>, path: &Path, resolver: &Resolver) -> Result<VdiReader> {
    let disk = VdiDisk::open(storage)?;
    if !disk.header.has_parent() {
        return Ok(disk.into_reader(None));
    }
    let reference = Reference::new(
        ReferenceKind::ParentLocator,
        format!(
            "parent VDI with uuid {} (found by UUID only)",
            reader::uuid_string(&disk.header.uuid_link)
        ),
    );
    if resolver.follows() {
        return Err(Error::reference(reference.kind, reference.name));
    }
    let parent = resolver.open_disk(&reference, path, disk.header.virtual_size())?;
    Ok(disk.into_reader(Some(parent)))
}
