//! Opening arbitrary bytes as a VHD (footer, footer copy, dynamic header, BAT, parent locators),
//! then mapping and reading the disk, must succeed or fail cleanly. Differencing disks fail at
//! open: no references are allowed, so no other file is ever opened.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = common::storage(data);
    if let Ok(reader) =
        ims::formats::vhd::open(storage, std::path::Path::new("fuzz.vhd"), &Default::default())
    {
        common::exercise(&reader);
    }
});
