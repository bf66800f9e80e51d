//! ISO 9660 images (CD and DVD images, installation media). An ISO is not a virtual disk: its
//! bytes are the medium, read one for one, so its reader is the raw reader. What this module
//! adds is the check that the file is the ISO it claims to be before anything reads it: the
//! volume descriptor set ([`descriptor`]) and the El Torito boot catalog ([`boot_catalog`]) are
//! parsed and checked at open, and a hostile set or catalog is refused with the structure and
//! offset at fault. Inspection reads the same structures through the same parsers.
//!
//! ims reads ISO images and registers them (`--type iso`); it does not convert them to disk
//! formats (a converter would treat them as raw) and does not write them.

pub mod boot_catalog;
pub mod descriptor;

use crate::error::Result;
use crate::storage::{Storage, read_exact_at};

pub use boot_catalog::{BootCatalog, BootEntry, Emulation, Platform};
pub use descriptor::{PrimaryVolumeDescriptor, VolumeDescriptorSet};

/// What an ISO image's own structures say: its descriptor set and its boot catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoLayout {
    /// The volume descriptor set.
    pub descriptors: VolumeDescriptorSet,
    /// The El Torito boot catalog, when the set has a boot record.
    pub boot_catalog: Option<BootCatalog>,
}

impl IsoLayout {
    /// Reads and checks the layout through `read` (which fills a buffer from an offset of an
    /// image of `len` bytes).
    pub fn read(read: &mut dyn FnMut(&mut [u8], u64) -> Result<()>, len: u64) -> Result<Self> {
        let descriptors = VolumeDescriptorSet::read(read, len)?;
        let boot_catalog = match descriptors.boot_catalog {
            Some(sector) => {
                let (offset, n) = BootCatalog::span(sector, len)?;
                let mut bytes = vec![0u8; n];
                read(&mut bytes, offset)?;
                Some(BootCatalog::parse(&bytes, offset, len)?)
            }
            None => None,
        };
        Ok(IsoLayout {
            descriptors,
            boot_catalog,
        })
    }

    /// Reads and checks the layout of the ISO image `storage` holds.
    pub fn open(storage: &dyn Storage) -> Result<Self> {
        Self::read(
            &mut |buf, at| read_exact_at(storage, buf, at, "iso image"),
            storage.len(),
        )
    }

    /// Reads the layout of an image held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::open(&crate::storage::MemoryStorage::new(bytes.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::boot_catalog::build as cat;
    use super::descriptor::build::*;
    use super::*;

    #[test]
    fn reads_descriptors_and_catalog_and_refuses_a_catalog_outside() {
        let mut img = image(40, &[primary("BOOT", 40, 20), boot_record(19)]);
        let c = [cat::validation(0), cat::entry(30, 4)].concat();
        img[19 * 2048..19 * 2048 + 64].copy_from_slice(&c);
        let layout = IsoLayout::from_bytes(&img).unwrap();
        assert!(layout.boot_catalog.unwrap().boots_bios());
        let img = image(40, &[primary("BOOT", 40, 20), boot_record(4000)]);
        assert_eq!(IsoLayout::from_bytes(&img).unwrap_err().kind(), "malformed");
    }
}
