//! Opening arbitrary bytes as a QCOW2 image, then mapping and reading the disk, must succeed or
//! fail cleanly: never panic, hang or allocate beyond the file's size. No backing file is
//! attached, so no other file is ever opened. The refcount checker runs on the same bytes.
#![no_main]

mod common;

use ims::formats::qcow2::{Qcow2OpenOptions, Qcow2Reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = common::storage(data);
    let _ = ims::formats::qcow2::check::check(&*storage);
    if let Ok(reader) = Qcow2Reader::open(storage, &Qcow2OpenOptions::default()) {
        common::exercise(&reader);
    }
});
