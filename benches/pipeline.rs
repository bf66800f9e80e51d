//! The conversion pipeline on a generated 64 MiB disk of data and zero runs: planning, zero
//! detection, ordering and writing, without file I/O (an in-memory reader, a counting writer).

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ims::block::{BlockReader, BlockWriter, Extent, ExtentState, Piece, check_range, push_extent};
use ims::convert::{PipelineOptions, Source, run};

const SIZE: usize = 64 << 20;

/// A disk in memory: 1 MiB runs of data and zeros; the map reports the zero runs.
struct MemDisk(Vec<u8>);

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
            let next = ((pos >> 20) + 1) << 20;
            let next = next.min(end);
            let state = if (pos >> 20) % 3 == 2 {
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

/// Counts what it is given.
struct Counter {
    size: u64,
    bytes: u64,
}

impl BlockWriter for Counter {
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn unit_size(&self) -> u64 {
        64 << 10
    }
    fn write_piece(&mut self, piece: Piece) -> ims::Result<()> {
        if let Piece::Data { data, .. } = piece {
            self.bytes += data.len() as u64;
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> ims::Result<()> {
        assert!(self.bytes > 0);
        Ok(())
    }
}

fn disk() -> Arc<MemDisk> {
    let mut data = vec![0u8; SIZE];
    let mut x = 0x9e3779b97f4a7c15u64;
    for (i, mb) in data.chunks_mut(1 << 20).enumerate() {
        // Run 1 is data in the map but zeros inside (exercises zero detection); run 2 is a
        // zero extent, never read.
        if i % 3 == 0 {
            mb.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            });
        }
    }
    Arc::new(MemDisk(data))
}

fn pipeline(c: &mut Criterion) {
    let disk = disk();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);
    for threads in [1, 2] {
        group.bench_function(format!("mem-to-counter-j{threads}"), |b| {
            b.iter(|| {
                let writer = Box::new(Counter {
                    size: SIZE as u64,
                    bytes: 0,
                });
                let options = PipelineOptions {
                    threads,
                    ..Default::default()
                };
                run(Source::Random(disk.clone()), writer, &options, &mut |_| {}).unwrap();
            })
        });
    }
    group.finish();
}

fn zero_detection(c: &mut Criterion) {
    let buf = vec![0u8; 1 << 20];
    let mut group = c.benchmark_group("zero-detection");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function("is_zero-1MiB", |b| {
        b.iter(|| ims::block::is_zero(std::hint::black_box(&buf)))
    });
    group.finish();
}

criterion_group!(benches, pipeline, zero_detection);
criterion_main!(benches);
