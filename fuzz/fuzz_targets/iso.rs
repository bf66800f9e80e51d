//! ISO 9660 images: the volume descriptor set and the El Torito boot catalog as the ISO driver
//! checks them at open, then inspection's reading of the image (label, boot entries, the
//! directory walk for `.disk/info`, `.treeinfo`, `sources/`). The input is the image from
//! sector 16 on (the 32 KiB system area before it is zeros), so every mutation lands in the
//! descriptors, the catalog or the directories. A hostile image must give facts or an error,
//! without a panic, a hang or a large allocation.
#![no_main]

use std::sync::Arc;

use ims::block::MemoryDisk;
use ims::formats::iso::IsoLayout;
use ims::inspect::disk::{Disk, Volume};
use ims::inspect::fs::GuestFs;
use ims::inspect::iso9660::{self, IsoFs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut image = vec![0u8; 0x8000];
    image.extend_from_slice(data);
    let layout = IsoLayout::from_bytes(&image);
    let vol = Volume::whole(Disk::new(Arc::new(MemoryDisk(image))));
    let _ = iso9660::inspect(&vol);
    if let Ok(layout) = layout {
        let mut fs = IsoFs::new(vol, &layout);
        if let Ok(Some(names)) = fs.list_dir("/") {
            for name in names.iter().take(16) {
                let _ = fs.list_dir(&format!("/{name}"));
                let _ = fs.read_head(&format!("/{name}"), 4096);
            }
        }
    }
});
