//! Each file-system reader that inspection uses, driven directly on arbitrary bytes as a volume
//! (the first byte picks the reader): ext4 (ext4-view), FAT (fatfs), NTFS (ntfs), XFS (ours),
//! ISO 9660 boot records and LVM physical-volume metadata (ours). Opening, walking and reading
//! a hostile volume must give data or an error, without a panic, a hang or a large allocation.
#![no_main]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use ims::block::MemoryDisk;
use ims::inspect::disk::{Disk, Volume};
use ims::inspect::fs::{Ext4Fs, FatFs, GuestFs};
use ims::inspect::{iso9660, linux, lvm, ntfs, superblocks, windows, xfs};
use libfuzzer_sys::fuzz_target;

/// What inspection asks of a guest: the probes of the Linux and boot-partition walks.
fn walk(fs: &mut dyn GuestFs) {
    let _ = fs.exists("/etc/os-release");
    let _ = fs.read_head("/etc/os-release", 4096);
    let _ = fs.read_head("/etc/hostname", 256);
    if let Ok(Some(names)) = fs.list_dir("/") {
        for name in names.iter().take(16) {
            let _ = fs.list_dir(&format!("/{name}"));
            let _ = fs.read_head(&format!("/{name}"), 4096);
        }
    }
    let _ = fs.list_dir("/boot");
    if linux::is_root(fs) {
        let _ = linux::inspect(fs);
    }
}

fuzz_target!(|data: &[u8]| {
    common::let_dependency_panics_reach_guards();
    let Some((&which, image)) = data.split_first() else {
        return;
    };
    let vol = Volume::whole(Disk::new(Arc::new(MemoryDisk(image.to_vec()))));
    match which % 6 {
        0 => {
            if let Ok(mut fs) = Ext4Fs::open(&vol) {
                walk(&mut fs);
            }
        }
        1 => {
            if let Ok(mut fs) = FatFs::open(&vol) {
                walk(&mut fs);
            }
        }
        2 => {
            if let Ok(mut fs) = ntfs::NtfsFs::open(&vol) {
                walk(&mut fs);
                if windows::is_root(&mut fs) {
                    let _ = windows::inspect(&mut fs);
                }
            }
        }
        3 => {
            if let Ok(mut fs) = xfs::XfsFs::open(&vol) {
                walk(&mut fs);
            }
        }
        4 => {
            let _ = iso9660::inspect(&vol);
        }
        _ => {
            // The PV label and metadata, then each logical volume it maps onto this PV.
            let Ok(pv) = lvm::read_pv(&vol) else {
                return;
            };
            let Some(metadata) = pv.metadata.as_deref() else {
                return;
            };
            if let Ok((lvs, _)) = lvm::logical_volumes(metadata) {
                let pvs = HashMap::from([(pv.uuid.clone(), vol.clone())]);
                for lv in &lvs {
                    if let Ok(Some(lv_vol)) = lvm::lv_volume(lv, &pvs) {
                        let _ = superblocks::identify(&lv_vol);
                    }
                }
            }
        }
    }
});
