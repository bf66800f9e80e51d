//! What the fuzz targets share: the input as in-memory storage, and a bounded walk
//! over a reader's map and data.
#![allow(dead_code)]

use std::sync::Arc;

use ims::BlockReader;

/// How much of a disk is mapped and read: an image claiming an exabyte disk costs no more than
/// a small one.
pub const MAX_DISK: u64 = 16 << 20;
const PIECE: u64 = 1 << 20;

/// The input as an image's storage.
pub fn storage(data: &[u8]) -> Arc<dyn ims::Storage> {
    Arc::new(ims::MemoryStorage::new(data.to_vec()))
}

/// Maps and reads up to [`MAX_DISK`] bytes; a map that succeeds must cover the range exactly.
pub fn exercise(reader: &dyn BlockReader) {
    let _ = reader.info();
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
}

/// The file-system crates inspection uses (ext4-view, fatfs, ntfs) may panic on a hostile
/// volume; ims calls them through `inspect::fs::guarded`, which turns such a panic into an
/// error. libFuzzer's hook aborts on every panic, caught or not, so this lets a panic raised
/// inside a dependency's code unwind to that guard (an unguarded one still reaches
/// libfuzzer-sys's own catch and aborts), while a panic in ims's own code aborts at once.
pub fn let_dependency_panics_reach_guards() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_dependency = info
                .location()
                .is_some_and(|l| l.file().contains("/registry/src/"));
            if !in_dependency {
                fuzzer_hook(info);
                return;
            }
            // Say once per place, so a run's log lists what the guards caught.
            static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
            let place = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            if let Ok(mut seen) = SEEN.lock()
                && !seen.contains(&place)
            {
                eprintln!("dependency panic caught by inspection's guard at {place}: {info}");
                seen.push(place);
            }
        }));
    });
}
