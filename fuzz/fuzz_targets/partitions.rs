//! Reading arbitrary bytes as a disk's partition table (GPT header and entry-array CRCs, the
//! backup header, MBR and its EBR chain) and identifying what each partition holds must
//! succeed or fail cleanly, in bounded time.
#![no_main]

use std::sync::Arc;

use ims::block::{Extent, ExtentState, check_range};
use ims::inspect::disk::{Disk, Volume};
use ims::inspect::{partitions, superblocks};
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
    let disk = Disk::new(Arc::new(Mem(data.to_vec())));
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
