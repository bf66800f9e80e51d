//! VHD (Virtual Hard Disk, qemu-img's `vpc`): Hyper-V's, Azure's and Virtual PC's format.
//! See formats/vhd.md.

pub mod dynamic;
pub mod footer;
pub mod info;
pub mod reader;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ReferenceKind, Result};
use crate::formats::Format;
use crate::formats::info::FormatInfo;
use crate::resolve::{Reference, Resolver};
use crate::storage::Storage;
use footer::uuid_string;

pub use reader::{VhdImage, VhdReader};

/// Opens a VHD. A differencing disk's parent is opened through `resolver`: only a VHD found by
/// a relative locator or by the parent's name, whose unique id matches the one the child
/// records. Absolute locators are never used.
pub fn open(storage: Arc<dyn Storage>, path: &Path, resolver: &Resolver) -> Result<VhdReader> {
    let image = VhdImage::open(storage)?;
    let Some((parent_id, names)) = image.parent() else {
        return image.into_reader(None);
    };
    let description = image.parent_description();
    if !resolver.follows() {
        let reference = Reference::new(ReferenceKind::ParentLocator, description);
        let parent = resolver.open_disk(&reference, path, image.size)?;
        return image.into_reader(Some(parent));
    }
    let want = uuid_string(&parent_id);
    let mut last_error = Error::reference(ReferenceKind::ParentLocator, description);
    for name in &names {
        let reference = Reference {
            format: Some(Format::Vhd),
            ..Reference::new(ReferenceKind::ParentLocator, name.clone())
        };
        let parent = match resolver.open_disk(&reference, path, image.size) {
            Ok(p) => p,
            // Not there, or not allowed: the next name may be.
            Err(e @ (Error::ExternalReference { .. } | Error::Io { .. })) => {
                last_error = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        let unique_id = match parent.info() {
            Some(FormatInfo::Vhd(v)) => Some(v.unique_id),
            _ => None,
        };
        if unique_id.as_deref() != Some(want.as_str()) {
            last_error = Error::malformed(
                "vhd dynamic header",
                40,
                format!("parent {name:?} has a different unique id than the child records"),
            );
            continue;
        }
        return image.into_reader(Some(parent));
    }
    Err(last_error)
}
