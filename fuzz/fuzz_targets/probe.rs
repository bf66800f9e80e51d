//! Probing arbitrary bytes must name a format or fail cleanly, never panic. The input is split
//! into a head and a tail as the probe reads a file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len().min(ims::probe::HEAD_LEN)];
    let tail = &data[data.len().saturating_sub(ims::probe::TAIL_LEN)..];
    let _ = ims::probe::probe(head, tail);
});
