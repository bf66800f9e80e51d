//! Opening arbitrary bytes as a VHDX (file identifier, both headers, both region tables, the
//! metadata items, the BAT, the log and its replay), then mapping and reading the disk, must
//! succeed or fail cleanly. Each input is opened twice: as it is, and with the CRC-32C of its
//! headers and region tables recomputed, so that mutations reach the regions, the metadata and
//! the BAT behind the checksums. Differencing disks fail at open: no references are allowed,
//! so no other file is ever opened.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

/// Recomputes the checksum (at +4) of the structure of `len` bytes at `at`, where it fits.
fn reseal(data: &mut [u8], at: usize, len: usize) {
    if let Some(s) = data.get_mut(at..at + len) {
        s[4..8].fill(0);
        let sum = crc32c::crc32c(s);
        s[4..8].copy_from_slice(&sum.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.vhdx");
    if let Ok(reader) = ims::formats::vhdx::open(common::storage(data), path, &Default::default())
    {
        common::exercise(&reader);
    }
    let mut sealed = data.to_vec();
    for at in [64 << 10, 128 << 10] {
        reseal(&mut sealed, at, 4096);
    }
    for at in [192 << 10, 256 << 10] {
        reseal(&mut sealed, at, 64 << 10);
    }
    if let Ok(reader) =
        ims::formats::vhdx::open(common::storage(&sealed), path, &Default::default())
    {
        common::exercise(&reader);
    }
});
