//! Arbitrary bytes as a ZVHD2 image: the final footer and its checksum, the bitmap, the index
//! walk at open, then the map and reads of every block (index entry, record framing, zstd or
//! zlib payload decoded into exactly one block) must succeed or fail cleanly.
#![no_main]

mod common;

use ims::formats::zvhd::Zvhd2Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = Zvhd2Reader::from_bytes(data.to_vec()) {
        common::exercise(&reader);
    }
});
