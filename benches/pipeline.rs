//! The conversion pipeline on a generated 64 MiB disk of data and zero runs: planning, zero
//! detection, ordering and writing, without file I/O (an in-memory reader, a counting writer).

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ims::block::{BlockWriter, Piece};
use ims::convert::{PipelineOptions, Source, run};

const SIZE: usize = 64 << 20;

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

fn pipeline(c: &mut Criterion) {
    let disk = common::disk(SIZE);
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
