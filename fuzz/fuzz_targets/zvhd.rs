//! Arbitrary bytes as a ZVHD image, read front to back as from a pipe: the header and its
//! checksum, the record framing, the one deflate stream across records. Every chunk must follow
//! the last, and an error ends the stream for good; never a panic, a hang or an allocation past
//! the caps. The record-head scan `info` uses runs on the same bytes as a file.
#![no_main]

mod common;

use ims::ChunkStream;
use ims::formats::zvhd::{ZvhdStream, scan_records};
use libfuzzer_sys::fuzz_target;

/// How many chunks are taken: a disk of many records costs no more than a few.
const MAX_CHUNKS: usize = 64;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut stream) = ZvhdStream::new(data) {
        let _ = stream.info();
        let size = stream.virtual_size();
        let mut pos = 0;
        for _ in 0..MAX_CHUNKS {
            match stream.next_chunk() {
                Ok(Some(chunk)) => {
                    assert_eq!(chunk.offset, pos, "chunks follow each other");
                    if let Some(d) = &chunk.data {
                        assert_eq!(d.len() as u64, chunk.length);
                    }
                    pos = chunk.end();
                    assert!(pos <= size, "chunk past the disk");
                }
                Ok(None) => {
                    assert_eq!(pos, size, "the stream covers the disk");
                    break;
                }
                Err(_) => {
                    assert!(stream.next_chunk().is_err(), "an error ends the stream");
                    break;
                }
            }
        }
    }
    if let Ok(scan) = scan_records(&*common::storage(data)) {
        ims::block::check_map(&scan.extents, 0, scan.header.curr_size)
            .expect("scan covers the disk");
    }
});
