//! Reading arbitrary bytes as a disk's partition table (GPT header and entry-array CRCs, the
//! backup header, MBR and its EBR chain) and identifying what each partition holds must
//! succeed or fail cleanly, in bounded time.
#![no_main]

mod common;

use std::sync::Arc;

use ims::block::MemoryDisk;
use ims::inspect::disk::{Disk, Volume};
use ims::inspect::{partitions, superblocks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::let_dependency_panics_reach_guards();
    let disk = Disk::new(Arc::new(MemoryDisk(data.to_vec())));
    let table = partitions::read_table(&disk);
    for p in table.partitions.iter().filter(|p| p.trusted()) {
        let end = p
            .start
            .checked_add(p.size)
            .expect("a trusted partition's end fits");
        assert!(
            end <= disk.size(),
            "a trusted partition lies inside the disk"
        );
        if let Ok(vol) = Volume::new(disk.clone(), p.start, p.size) {
            let _ = superblocks::identify(&vol);
        }
    }
});
