//! Opening arbitrary bytes as a VDI (header, block map and its consistency check), then mapping
//! and reading the disk, must succeed or fail cleanly. A differencing image fails at open: no
//! references are allowed, so no other file is ever opened.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = common::storage(data);
    if let Ok(reader) =
        ims::formats::vdi::open(storage, std::path::Path::new("fuzz.vdi"), &Default::default())
    {
        common::exercise(&reader);
    }
});
