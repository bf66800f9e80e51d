//! Arbitrary bytes as a VMDK: the text descriptor parser, the hosted sparse header, GD and GTs
//! (random access, as a file), and the streamOptimized reader (front to back, as from a pipe)
//! must succeed or fail cleanly: never panic, hang or allocate beyond the caps. References are
//! not allowed, so no other file is ever opened. The disk is read up to `MAX_DISK` bytes.
#![no_main]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use ims::formats::vmdk::descriptor::Descriptor;
use ims::formats::vmdk::{self, StreamReader};
use ims::{BlockReader, ChunkStream, OpenOptions};
use libfuzzer_sys::fuzz_target;

/// How much of the disk is mapped and read.
const MAX_DISK: u64 = 16 << 20;
/// Size of each read.
const PIECE: u64 = 1 << 20;

/// A file holding `data`, already unlinked, and the name it had.
fn temp_file(data: &[u8]) -> Option<(std::fs::File, std::path::PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "ims-fuzz-vmdk-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let path = std::env::temp_dir().join(name);
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ok()?;
    let _ = std::fs::remove_file(&path);
    file.write_all(data).ok()?;
    Some((file, path))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Descriptor::parse(data, 0) {
        let _ = d.sectors();
        // What ims writes from a parsed descriptor parses back to the same extents (unless it
        // grew over the size cap).
        let text = d.to_text();
        if text.len() as u64 <= ims::formats::vmdk::descriptor::MAX_DESCRIPTOR_BYTES {
            let back = Descriptor::parse(text.as_bytes(), 0).expect("written text parses");
            assert_eq!(back.extents.len(), d.extents.len());
            assert_eq!(back.sectors().ok(), d.sectors().ok());
        }
    }
    // Front to back, as from stdin: at most MAX_DISK bytes of chunks.
    if let Ok(mut stream) = StreamReader::new(data) {
        let mut seen = 0u64;
        while let Ok(Some(c)) = stream.next_chunk() {
            seen = c.end();
            if seen >= MAX_DISK {
                break;
            }
        }
        let _ = seen;
    }
    let Some((file, path)) = temp_file(data) else {
        return;
    };
    let Ok(reader) = vmdk::open(file, &path, &OpenOptions::default(), 0) else {
        return;
    };
    let _ = reader.format_specific();
    let size = reader.virtual_size().min(MAX_DISK);
    if let Ok(extents) = reader.map(0, size) {
        ims::block::check_map(&extents, 0, size).expect("map covers the range");
    }
    let mut buf = vec![0u8; PIECE as usize];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(PIECE);
        let _ = reader.read_at(&mut buf[..n as usize], pos);
        pos += n;
    }
});
