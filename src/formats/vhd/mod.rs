//! VHD (Virtual Hard Disk, qemu-img's `vpc`): Hyper-V's, Azure's and Virtual PC's format.
//! See formats/vhd.md.

pub mod dynamic;
pub mod footer;
pub mod reader;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use crate::block::BlockReader;
use crate::error::{Error, ReferenceKind, Result};
use crate::limits::MAX_CHAIN_DEPTH;
use crate::references::{RefusedReference, open_resolved, resolve};
use crate::storage::{FileStorage, Storage};

pub use reader::{VhdImage, VhdReader};

/// Opens a VHD. A differencing disk's parent is followed only when `allowed_dir` is given, and
/// then only to a VHD inside it, found by a relative locator or by the parent's name, whose
/// unique id matches the one the child records. With `defer` and no directory, the reader
/// opens and reading what the parent holds fails instead (for `info`).
pub fn open(
    storage: Arc<dyn Storage>,
    path: &Path,
    allowed_dir: Option<&Path>,
    defer: bool,
    depth: usize,
) -> Result<VhdReader> {
    let image = VhdImage::open(storage)?;
    let Some((parent_id, names)) = image.parent() else {
        return image.into_reader(None);
    };
    let Some(dir) = allowed_dir else {
        let description = image.parent_description();
        if defer {
            let refused =
                RefusedReference::new(ReferenceKind::ParentLocator, &description, image.size);
            return image.into_reader(Some(Arc::new(refused)));
        }
        return Err(Error::reference(ReferenceKind::ParentLocator, description));
    };
    if depth >= MAX_CHAIN_DEPTH {
        return Err(Error::limit(
            "vhd parent chain",
            0,
            format!("more than {MAX_CHAIN_DEPTH} parents"),
        ));
    }
    let mut last_error = Error::reference(ReferenceKind::ParentLocator, image.parent_description());
    for name in &names {
        let candidate = match resolve(ReferenceKind::ParentLocator, name, path, dir) {
            Ok(p) => p,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let parent_file = open_resolved(ReferenceKind::ParentLocator, name, &candidate)?;
        let parent = open(
            Arc::new(FileStorage::new(parent_file)?),
            &candidate,
            allowed_dir,
            false,
            depth + 1,
        )
        .map_err(|e| e.in_file(&candidate))?;
        if parent.image().footer.unique_id != parent_id {
            last_error = Error::malformed(
                "vhd dynamic header",
                40,
                format!("parent {name:?} has a different unique id than the child records"),
            );
            continue;
        }
        return image.into_reader(Some(Arc::new(parent) as Arc<dyn BlockReader>));
    }
    Err(last_error)
}
