//! Opening arbitrary bytes as a QED image (header, backing file name, L1/L2 tables and the
//! open-time consistency pass), then mapping and reading the disk, must succeed or fail
//! cleanly. An image with a backing file fails at open: no references are allowed, so no other
//! file is ever opened.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = common::storage(data);
    if let Ok(reader) =
        ims::formats::qed::open(storage, std::path::Path::new("fuzz.qed"), &Default::default())
    {
        common::exercise(&reader);
    }
});
