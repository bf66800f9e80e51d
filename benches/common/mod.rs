//! What the benchmarks share: a generated disk held in memory.
#![allow(dead_code)]

use std::sync::Arc;

use ims::block::{BlockReader, Extent, ExtentState, check_range, push_extent};

/// A disk in memory: 1 MiB runs cycling through pseudo-random bytes, text, zeros the map calls
/// data (zero detection must find them) and a zero extent (never read).
pub struct MemDisk(pub Vec<u8>);

impl BlockReader for MemDisk {
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> ims::Result<()> {
        check_range(offset, buf.len() as u64, self.virtual_size())?;
        buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn map(&self, offset: u64, len: u64) -> ims::Result<Vec<Extent>> {
        let mut out = Vec::new();
        let end = (offset + len).min(self.virtual_size());
        let mut pos = offset;
        while pos < end {
            let next = (((pos >> 20) + 1) << 20).min(end);
            let state = if (pos >> 20) % 4 == 3 {
                ExtentState::Zero
            } else {
                ExtentState::Data
            };
            push_extent(&mut out, Extent::new(pos, next - pos, state));
            pos = next;
        }
        Ok(out)
    }
}

/// A deterministic disk of `size` bytes (see [`MemDisk`]).
pub fn disk(size: usize) -> Arc<MemDisk> {
    let mut data = vec![0u8; size];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, mb) in data.chunks_mut(1 << 20).enumerate() {
        match i % 4 {
            0 => mb.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }),
            1 => {
                for (j, b) in mb.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog; "[(j + i) % 45];
                }
            }
            _ => {}
        }
    }
    Arc::new(MemDisk(data))
}

/// Writes `disk` as `format` at `path` through the pipeline (default threads).
pub fn write_image(
    disk: &Arc<MemDisk>,
    format: ims::Format,
    path: &std::path::Path,
    create: &ims::CreateOptions,
) {
    let size = disk.virtual_size();
    let writer = ims::create(format, ims::Target::File(path.to_path_buf()), size, create).unwrap();
    ims::convert::run(
        ims::convert::Source::Random(disk.clone()),
        writer,
        &ims::convert::PipelineOptions::default(),
        &mut |_| {},
    )
    .unwrap();
}
