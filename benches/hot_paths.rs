//! The hot paths one by one: compressing and decompressing a unit (QCOW2 cluster, VMDK grain,
//! ZVHD2 block), table lookups (QCOW2 L1/L2, VHD BAT, VMDK grain tables: a whole-disk map and
//! random 4 KiB reads), and the ordered writer into a raw file. Zero detection and the whole
//! pipeline are in benches/pipeline.rs, QCOW2 writing in benches/qcow2.rs.
//!
//! Compression input is real machine code and data: the first bytes of this benchmark's own
//! executable.

mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ims::compress::{QCOW2_CLUSTER, VMDK_GRAIN, deflate, inflate, zstd_compress};
use ims::convert::{PipelineOptions, Source, run};
use ims::formats::qcow2::reader::{inflate_cluster, unzstd_cluster};
use ims::formats::vmdk::sparse::inflate_grain;
use ims::formats::zvhd::Zvhd2Compression;
use ims::formats::zvhd::zvhd2::compress_block;
use ims::{BlockReader, CreateOptions, Format, OpenOptions, Target};

const UNIT: usize = 64 << 10;
const SAMPLE: usize = 2 << 20;

/// 2 MiB of real content: this executable's bytes.
fn sample() -> Vec<u8> {
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let mut out: Vec<u8> = exe.iter().copied().cycle().take(SAMPLE).collect();
    out.truncate(SAMPLE);
    out
}

fn units(c: &mut Criterion) {
    let data = sample();
    let clusters: Vec<&[u8]> = data.chunks(UNIT).collect();
    let mut group = c.benchmark_group("units");
    group.throughput(Throughput::Bytes(SAMPLE as u64));
    group.sample_size(10);

    group.bench_function("deflate-qcow2-clusters", |b| {
        b.iter(|| {
            for u in &clusters {
                black_box(deflate(u, QCOW2_CLUSTER).unwrap());
            }
        })
    });
    group.bench_function("deflate-vmdk-grains", |b| {
        b.iter(|| {
            for u in &clusters {
                black_box(deflate(u, VMDK_GRAIN).unwrap());
            }
        })
    });
    group.bench_function("zstd-qcow2-clusters", |b| {
        b.iter(|| {
            for u in &clusters {
                black_box(zstd_compress(u, 3).unwrap());
            }
        })
    });
    group.bench_function("zstd-zvhd2-block", |b| {
        b.iter(|| black_box(compress_block(Zvhd2Compression::Zstd, &data).unwrap()))
    });
    group.bench_function("zlib-zvhd2-block", |b| {
        b.iter(|| black_box(compress_block(Zvhd2Compression::Zlib, &data).unwrap()))
    });

    let raw: Vec<Vec<u8>> = clusters
        .iter()
        .map(|u| deflate(u, QCOW2_CLUSTER).unwrap())
        .collect();
    let zlib: Vec<Vec<u8>> = clusters
        .iter()
        .map(|u| deflate(u, VMDK_GRAIN).unwrap())
        .collect();
    let zstd: Vec<Vec<u8>> = clusters
        .iter()
        .map(|u| zstd_compress(u, 3).unwrap())
        .collect();
    let mut out = vec![0u8; UNIT];
    group.bench_function("inflate-qcow2-clusters", |b| {
        b.iter(|| {
            for p in &raw {
                inflate_cluster(p, &mut out).unwrap();
            }
        })
    });
    group.bench_function("inflate-vmdk-grains", |b| {
        b.iter(|| {
            for p in &zlib {
                inflate_grain(p, &mut out, UNIT, 0).unwrap();
            }
        })
    });
    group.bench_function("unzstd-qcow2-clusters", |b| {
        b.iter(|| {
            for p in &zstd {
                unzstd_cluster(p, &mut out).unwrap();
            }
        })
    });
    group.bench_function("inflate-raw-deflate-generic", |b| {
        b.iter(|| {
            for p in &raw {
                black_box(inflate(p, &mut out, false).unwrap());
            }
        })
    });
    group.finish();
}

/// Table lookups: each format's image of a generated 64 MiB disk, opened from a file, mapped
/// whole, and read 4 KiB at a time at scattered offsets.
fn tables(c: &mut Criterion) {
    const SIZE: usize = 64 << 20;
    let disk = common::disk(SIZE);
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("tables");
    group.sample_size(20);
    for (name, format) in [
        ("qcow2", Format::Qcow2),
        ("vhd", Format::Vhd),
        ("vmdk", Format::Vmdk),
    ] {
        let path = dir.path().join(name);
        common::write_image(&disk, format, &path, &CreateOptions::default());
        let image = ims::open(&path, &OpenOptions::default()).unwrap();
        let reader: Arc<dyn BlockReader> = image.reader().unwrap();
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}-map-whole-disk"), |b| {
            b.iter(|| black_box(reader.map(0, SIZE as u64).unwrap()))
        });
        let mut buf = vec![0u8; 4096];
        // 256 reads spread over the disk by a fixed stride (each lands in another table entry).
        group.throughput(Throughput::Elements(256));
        group.bench_function(format!("{name}-scattered-4k-reads"), |b| {
            b.iter(|| {
                for i in 0..256u64 {
                    let at = (i * 7_919 * 4096) % (SIZE as u64 - 4096);
                    reader.read_at(&mut buf, at).unwrap();
                }
            })
        });
    }
    group.finish();
}

/// The ordered writer: the pipeline into a raw file (holes for the zero runs).
fn ordered_writer(c: &mut Criterion) {
    const SIZE: usize = 64 << 20;
    let disk = common::disk(SIZE);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let mut group = c.benchmark_group("ordered-writer");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("mem-to-raw-file", |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_file(&out);
                ims::create(
                    Format::Raw,
                    Target::File(out.clone()),
                    SIZE as u64,
                    &CreateOptions::default(),
                )
                .unwrap()
            },
            |writer| {
                run(
                    Source::Random(disk.clone()),
                    writer,
                    &PipelineOptions::default(),
                    &mut |_| {},
                )
                .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, units, tables, ordered_writer);
criterion_main!(benches);
