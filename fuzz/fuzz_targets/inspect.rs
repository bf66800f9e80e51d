//! Inspecting arbitrary bytes as a guest disk (partition tables, superblocks, the ext4, FAT,
//! NTFS and XFS readers, os-release, registry hives) must give facts or an error, without a
//! panic or a hang.
#![no_main]

mod common;

use std::sync::Arc;

use ims::block::MemoryDisk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::let_dependency_panics_reach_guards();
    let _ = ims::inspect::inspect(Arc::new(MemoryDisk(data.to_vec())));
});
