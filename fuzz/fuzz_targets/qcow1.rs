//! Opening arbitrary bytes as a QCOW version 1 image (header, backing file name, L1/L2 tables,
//! the consistency pass, compressed clusters), then mapping and reading the disk, must succeed
//! or fail cleanly. An image with a backing file fails at open: no references are allowed, so
//! no other file is ever opened.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = common::storage(data);
    if let Ok(reader) =
        ims::formats::qcow1::open(storage, std::path::Path::new("fuzz.qcow1"), &Default::default())
    {
        common::exercise(&reader);
    }
});
