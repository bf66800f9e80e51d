//! Opening arbitrary bytes as a QCOW2 image, then mapping and reading the disk, must succeed or
//! fail cleanly: never panic, hang or allocate beyond the file's size. The disk is read up to
//! `MAX_DISK` bytes, so an image claiming an exabyte disk costs no more than a small one.
#![no_main]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use ims::BlockReader;
use ims::formats::qcow2::{Qcow2OpenOptions, Qcow2Reader};
use libfuzzer_sys::fuzz_target;

/// How much of the disk is mapped and read.
const MAX_DISK: u64 = 16 << 20;
/// Size of each read.
const PIECE: u64 = 1 << 20;

/// A file holding `data`, already unlinked.
fn temp_file(data: &[u8]) -> Option<std::fs::File> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "ims-fuzz-qcow2-{}-{}",
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
    Some(file)
}

fuzz_target!(|data: &[u8]| {
    let Some(file) = temp_file(data) else {
        return;
    };
    let Ok(reader) = Qcow2Reader::open(file, &Qcow2OpenOptions::default()) else {
        return;
    };
    let _ = reader.format_specific();
    let size = reader.virtual_size().min(MAX_DISK);
    if let Ok(extents) = reader.map(0, size) {
        // A map that succeeds covers the range exactly.
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
