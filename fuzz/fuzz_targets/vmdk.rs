//! Arbitrary bytes as a VMDK: the text descriptor parser, the hosted sparse header, GD and GTs
//! (random access, as a file), and the streamOptimized reader (front to back, as from a pipe)
//! must succeed or fail cleanly: never panic, hang or allocate beyond the caps. References are
//! not allowed, so no other file is ever opened. The disk is read up to `MAX_DISK` bytes.
#![no_main]

mod common;

use ims::formats::vmdk::descriptor::Descriptor;
use ims::formats::vmdk::{self, StreamReader};
use ims::ChunkStream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Descriptor::parse(data, 0) {
        let _ = d.sectors();
        // What ims writes from a parsed descriptor parses back to the same extents (unless it
        // grew over the size cap).
        let text = d.to_text();
        if text.len() as u64 <= ims::limits::MAX_DESCRIPTOR_BYTES {
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
            if seen >= common::MAX_DISK {
                break;
            }
        }
        let _ = seen;
    }
    // The path is only a name for errors: references are refused.
    if let Ok(reader) = vmdk::open(
        common::storage(data),
        std::path::Path::new("fuzz.vmdk"),
        &Default::default(),
    ) {
        common::exercise(&reader);
    }
});
