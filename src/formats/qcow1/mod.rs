//! QCOW version 1: QEMU's first copy-on-write format (two levels of tables, zlib-compressed
//! clusters, a backing file). Read only; AES-encrypted images are refused. See
//! formats/qcow1.md.

mod consistency;
pub mod header;
pub mod info;
pub mod reader;

use std::path::Path;
use std::sync::Arc;

use crate::error::{ReferenceKind, Result};
use crate::resolve::{Reference, Resolver};
use crate::storage::Storage;

pub use reader::{QcowDisk, QcowReader};

/// Opens a QCOW version 1 image with its backing file (probed: version 1 records no format), as
/// `resolver` allows.
pub fn open(storage: Arc<dyn Storage>, path: &Path, resolver: &Resolver) -> Result<QcowReader> {
    let disk = QcowDisk::open(storage)?;
    let Some(name) = disk.backing_file.clone() else {
        return Ok(disk.into_reader(None));
    };
    let reference = Reference::new(ReferenceKind::BackingFile, name);
    let backing = resolver.open_disk(&reference, path, disk.header.virtual_size())?;
    Ok(disk.into_reader(Some(backing)))
}
