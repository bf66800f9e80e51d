//! QED (QEMU Enhanced Disk): two levels of tables over clusters, with an optional backing
//! file. Read only. See formats/qed.md.

pub mod header;
pub mod info;
pub mod reader;
mod usage;

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ReferenceKind, Result};
use crate::formats::Format;
use crate::resolve::{Reference, Resolver};
use crate::storage::Storage;

pub use reader::{QedDisk, QedReader};

/// Opens a QED image with its backing file, as `resolver` allows.
pub fn open(storage: Arc<dyn Storage>, path: &Path, resolver: &Resolver) -> Result<QedReader> {
    let disk = QedDisk::open(storage)?;
    let Some(name) = disk.backing_filename.clone() else {
        return Ok(disk.into_reader(None));
    };
    let mut reference = Reference::new(ReferenceKind::BackingFile, name);
    if resolver.follows() {
        reference.format = disk
            .backing_format()
            .map(|f| {
                f.parse::<Format>()
                    .map_err(|_| Error::unsupported(format!("backing format {f}")))
            })
            .transpose()?;
    }
    let backing = resolver.open_disk(&reference, path, disk.header.image_size)?;
    Ok(disk.into_reader(Some(backing)))
}
