//! Inspecting arbitrary bytes as a guest disk (partition tables, superblocks, the ext4, FAT,
//! NTFS and XFS readers, os-release, registry hives) must give facts or an error, without a
//! panic or a hang.
#![no_main]

use std::sync::Arc;

use ims::block::{Extent, ExtentState, check_range};
use ims::{BlockReader, Result};
use libfuzzer_sys::fuzz_target;

struct Mem(Vec<u8>);

impl BlockReader for Mem {
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.0.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        Ok(vec![Extent::new(offset, len, ExtentState::Data)])
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = ims::inspect::inspect(Arc::new(Mem(data.to_vec())));
});
