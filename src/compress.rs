//! Deflate for the hot write paths — QCOW2 clusters and VMDK grains — through zlib-rs, which
//! compresses several times faster than C zlib at the same level for output within a percent
//! of its size. (ZVHD, whose reference files ims reproduces byte for byte, compresses with C
//! zlib through flate2; every reader inflates through flate2.)

use std::borrow::Cow;

use zlib_rs::{DeflateConfig, ReturnCode, compress_bound, compress_slice};

use crate::error::{Error, Result};

/// zlib's default level, which qemu-img and VMware use.
pub const DEFAULT_LEVEL: i32 = 6;

/// Compresses `input` in one call: a zlib stream (with header and checksum) when `window_bits`
/// is 8..=15, raw deflate when it is -15..=-8. `mem_level` 8 is zlib's default; qemu uses 9
/// for qcow2 clusters.
pub fn deflate(input: &[u8], level: i32, window_bits: i32, mem_level: i32) -> Result<Vec<u8>> {
    let config = DeflateConfig {
        level,
        window_bits,
        mem_level,
        ..DeflateConfig::default()
    };
    let mut out = vec![0u8; compress_bound(input.len())];
    let (compressed, rc) = compress_slice(&mut out, input, config);
    if rc != ReturnCode::Ok {
        return Err(Error::InvalidArgument(format!("deflate failed: {rc:?}")));
    }
    let len = compressed.len();
    out.truncate(len);
    Ok(out)
}

/// `unit` padded with zeros to `len` bytes: the last cluster or grain of a disk may be partial,
/// and readers inflate whole ones.
pub fn padded(unit: &[u8], len: usize) -> Cow<'_, [u8]> {
    if unit.len() >= len {
        Cow::Borrowed(unit)
    } else {
        let mut p = unit.to_vec();
        p.resize(len, 0);
        Cow::Owned(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_zlib_streams_inflate_with_flate2() {
        let input: Vec<u8> = (0..100_000u32).map(|i| (i / 13 % 251) as u8).collect();
        let raw = deflate(&input, DEFAULT_LEVEL, -12, 9).unwrap();
        let mut d = flate2::Decompress::new_with_window_bits(false, 12);
        let mut out = Vec::with_capacity(input.len());
        d.decompress_vec(&raw, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out, input);
        let zlib = deflate(&input, DEFAULT_LEVEL, 15, 8).unwrap();
        assert_eq!(zlib[0], 0x78);
        let mut d = flate2::Decompress::new(true);
        let mut out = Vec::with_capacity(input.len());
        d.decompress_vec(&zlib, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out, input);
        assert!(deflate(&input, DEFAULT_LEVEL, 99, 8).is_err());
    }
}
