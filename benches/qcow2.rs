//! QCOW2 writing through the whole pipeline (zero detection, compression on the workers, the
//! ordered writer, refcounts) into a temporary file: plain, zlib and zstd.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ims::{CreateOptions, Format};

const SIZE: usize = 32 << 20;

fn qcow2_write(c: &mut Criterion) {
    let disk = common::disk(SIZE);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.qcow2");
    let mut group = c.benchmark_group("qcow2-write");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    for (name, compress, options) in [
        ("plain", false, vec![]),
        ("zlib", true, vec![]),
        (
            "zstd",
            true,
            vec![("compression_type".to_string(), "zstd".to_string())],
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let create = CreateOptions::from_pairs(Format::Qcow2, &options, compress).unwrap();
                common::write_image(&disk, Format::Qcow2, &out, &create);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, qcow2_write);
criterion_main!(benches);
