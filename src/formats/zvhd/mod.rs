//! ZVHD and ZVHD2, Huawei Cloud's compressed image formats.
//!
//! Both cut the disk into 2 MiB blocks, store each non-zero block as a compressed record, and
//! frame the file with a VHD-like header/footer page. ZVHD runs one deflate stream through all
//! records, so it is read front to back only ([`ZvhdStream`], a
//! [`ChunkStream`](crate::block::ChunkStream)); ZVHD2 compresses each block on its own and ends
//! with an index and a bitmap, so it is read at any offset ([`Zvhd2Reader`], a
//! [`BlockReader`](crate::block::BlockReader)). Both writers only append.
//!
//! - [`header`]: the header/footer page and its checksum.
//! - [`record`]: the data record and the payload decoders.
//! - [`index`]: ZVHD2's index entries and block bitmap.
//! - [`zvhd`]: the ZVHD stream reader and writer.
//! - [`zvhd2`]: the ZVHD2 reader and writer.
//!
//! The formats, in this project's words, are in `formats/zvhd.md`.

pub mod header;
pub mod index;
pub mod info;
pub mod record;
// The v1 module is named after its format, as the crate layout asks.
#[allow(clippy::module_inception)]
pub mod zvhd;
pub mod zvhd2;

pub use header::ZvhdHeader;
pub use zvhd::{RecordMap, RecordScan, ZvhdStream, ZvhdWriter, scan_records};
pub use zvhd2::{Zvhd2Reader, Zvhd2Writer};

use crate::block::is_zero;
use crate::error::{Error, Result};

/// Every structure starts on, and is a whole number of, 4096-byte pages.
pub const PAGE: u64 = 4096;
/// The unit of compression and zero detection: 2 MiB.
pub const BLOCK_SIZE: u64 = 2 << 20;

/// How ZVHD2 compresses its blocks (`compress_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Zvhd2Compression {
    /// `compress_method` 0: zlib, level 1, sync-flushed and never finished.
    Zlib,
    /// `compress_method` 1 (the reference's default): one zstd frame, level 3.
    #[default]
    Zstd,
}

impl Zvhd2Compression {
    /// The `compress_method` field.
    pub fn method(self) -> u8 {
        match self {
            Zvhd2Compression::Zlib => 0,
            Zvhd2Compression::Zstd => 1,
        }
    }

    /// The compression a `compress_method` field names.
    pub fn from_method(method: u8) -> Option<Self> {
        match method {
            0 => Some(Zvhd2Compression::Zlib),
            1 => Some(Zvhd2Compression::Zstd),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Zvhd2Compression::Zlib => "zlib",
            Zvhd2Compression::Zstd => "zstd",
        }
    }
}

/// What a new ZVHD or ZVHD2 image is made with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZvhdCreateOptions {
    /// ZVHD2 only.
    pub compression: Zvhd2Compression,
    /// The creation time in seconds since the Unix epoch; `None` takes the current time.
    /// Pinning it (with `uuid`) makes the output reproducible.
    pub timestamp: Option<u64>,
    /// The image's UUID; `None` takes a random (version 4) one.
    pub uuid: Option<[u8; 16]>,
}

impl ZvhdCreateOptions {
    /// Reads `-o` options: `compression_type=zstd|zlib` (ZVHD2), and for reproducible output
    /// `timestamp=SECONDS` (since the Unix epoch) and `uuid=UUID`.
    pub fn parse(zvhd2: bool, options: &[(String, String)]) -> Result<Self> {
        let mut out = ZvhdCreateOptions::default();
        for (key, value) in options {
            match key.as_str() {
                "compression_type" if zvhd2 => {
                    out.compression = match value.as_str() {
                        "zstd" => Zvhd2Compression::Zstd,
                        "zlib" => Zvhd2Compression::Zlib,
                        _ => {
                            return Err(Error::InvalidArgument(format!(
                                "compression_type '{value}' is not zstd or zlib"
                            )));
                        }
                    }
                }
                "timestamp" => {
                    out.timestamp = Some(value.parse().map_err(|_| {
                        Error::InvalidArgument(format!(
                            "timestamp '{value}' is not a number of seconds"
                        ))
                    })?)
                }
                "uuid" => {
                    let id = uuid::Uuid::parse_str(value).map_err(|_| {
                        Error::InvalidArgument(format!("uuid '{value}' is not a UUID"))
                    })?;
                    out.uuid = Some(*id.as_bytes());
                }
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{} has no option '{key}'{}",
                        if zvhd2 { "zvhd2" } else { "zvhd" },
                        if zvhd2 {
                            " (known: compression_type)"
                        } else {
                            " (it takes none)"
                        }
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The `timestamp` field: seconds since 2000-01-01 00:00:00 UTC.
    fn timestamp_field(&self) -> Result<u32> {
        let unix = match self.timestamp {
            Some(t) => t,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        unix.checked_sub(header::TIMESTAMP_EPOCH)
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "timestamp {unix} is outside what ZVHD records (2000 to 2136)"
                ))
            })
    }

    /// The `uuid` field.
    fn uuid_field(&self) -> [u8; 16] {
        self.uuid
            .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes())
    }
}

/// Cuts the pieces a writer is given into whole 2 MiB blocks: the blocks with data are passed
/// on (the last, partial one padded with zeros, as the reference compresses it), all-zero
/// blocks are dropped. Pieces may start and end anywhere, as long as they come in order.
struct Blocks {
    size: u64,
    /// Everything before `next` has been taken.
    next: u64,
    /// The start of the block being assembled, up to `next`.
    partial: Vec<u8>,
}

impl Blocks {
    fn new(size: u64) -> Self {
        Blocks {
            size,
            next: 0,
            partial: Vec::new(),
        }
    }

    fn expect(&mut self, offset: u64, length: u64) -> Result<()> {
        let end = offset.checked_add(length);
        if offset != self.next || end.is_none_or(|e| e > self.size) {
            return Err(Error::Internal(format!(
                "zvhd writer got {length} bytes at {offset}, expected a piece at {} inside {} bytes",
                self.next, self.size
            )));
        }
        Ok(())
    }

    /// Takes data at `offset`; `block` is called for every non-zero block completed.
    fn data(
        &mut self,
        offset: u64,
        data: &[u8],
        block: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.expect(offset, data.len() as u64)?;
        let bs = BLOCK_SIZE as usize;
        let mut rest = data;
        while !rest.is_empty() {
            let blk = self.next / BLOCK_SIZE;
            if self.partial.is_empty() && self.next.is_multiple_of(BLOCK_SIZE) && rest.len() >= bs {
                let (whole, tail) = rest.split_at(bs);
                if !is_zero(whole) {
                    block(blk, whole)?;
                }
                rest = tail;
                self.next += BLOCK_SIZE;
                continue;
            }
            let room = bs - self.partial.len();
            let take = room.min(rest.len());
            let (now, tail) = rest.split_at(take);
            self.partial.extend_from_slice(now);
            rest = tail;
            self.next += take as u64;
            if self.partial.len() == bs {
                self.flush(block)?;
            }
        }
        Ok(())
    }

    /// Takes a run of zeros at `offset`.
    fn zero(
        &mut self,
        offset: u64,
        length: u64,
        block: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.expect(offset, length)?;
        let end = offset + length;
        if !self.partial.is_empty() {
            let fill = (BLOCK_SIZE - self.partial.len() as u64).min(length);
            self.partial.resize(self.partial.len() + fill as usize, 0);
            self.next += fill;
            if self.partial.len() as u64 == BLOCK_SIZE {
                self.flush(block)?;
            }
        }
        // Whole blocks of zeros are skipped; a run ending inside a block starts that block.
        let block_start = end / BLOCK_SIZE * BLOCK_SIZE;
        if self.next < block_start {
            self.next = block_start;
        }
        if self.next < end {
            self.partial.resize((end - self.next) as usize, 0);
            self.next = end;
        }
        Ok(())
    }

    /// Passes on the last, partial block, padded with zeros.
    fn finish(&mut self, block: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        if self.next != self.size {
            return Err(Error::Internal(format!(
                "zvhd writer finished at {} of {} bytes",
                self.next, self.size
            )));
        }
        if !self.partial.is_empty() {
            self.partial.resize(BLOCK_SIZE as usize, 0);
            self.flush(block)?;
        }
        Ok(())
    }

    fn flush(&mut self, block: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        let blk = (self.next - 1) / BLOCK_SIZE;
        if !is_zero(&self.partial) {
            block(blk, &self.partial)?;
        }
        self.partial.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_the_limit_decoding_is_bounded_by() {
        assert_eq!(BLOCK_SIZE, crate::limits::ZVHD_RECORD_BLOCK);
    }

    fn run(pieces: &[(u64, u64, u8)], size: u64) -> Vec<(u64, u8, u8)> {
        let mut out = Vec::new();
        let mut b = Blocks::new(size);
        let mut f = |blk: u64, data: &[u8]| {
            assert_eq!(data.len() as u64, BLOCK_SIZE);
            out.push((blk, data[0], data[data.len() - 1]));
            Ok(())
        };
        for &(offset, len, fill) in pieces {
            if fill == 0 {
                b.zero(offset, len, &mut f).unwrap();
            } else {
                b.data(offset, &vec![fill; len as usize], &mut f).unwrap();
            }
        }
        b.finish(&mut f).unwrap();
        out
    }

    #[test]
    fn blocks_are_assembled_whatever_the_cuts() {
        const B: u64 = BLOCK_SIZE;
        // Whole blocks, a zero block, a partial last block.
        assert_eq!(
            run(&[(0, B, 1), (B, B, 0), (2 * B, 1000, 2)], 2 * B + 1000),
            vec![(0, 1, 1), (2, 2, 0)]
        );
        // Data split inside a block, zeros in the middle of one.
        assert_eq!(
            run(&[(0, 10, 3), (10, B, 0), (B + 10, B - 10, 4)], 2 * B),
            vec![(0, 3, 0), (1, 0, 4)]
        );
        // Zeros ending inside a block, then data.
        assert_eq!(
            run(&[(0, B + 5, 0), (B + 5, B - 5, 6)], 2 * B),
            vec![(1, 0, 6)]
        );
        // Out of order is refused.
        let mut b = Blocks::new(B);
        assert!(b.data(512, &[1], &mut |_, _| Ok(())).is_err());
        assert!(b.finish(&mut |_, _| Ok(())).is_err());
    }

    #[test]
    fn options() {
        let o = |list: &[(&str, &str)], zvhd2: bool| {
            let list: Vec<(String, String)> = list
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ZvhdCreateOptions::parse(zvhd2, &list)
        };
        assert_eq!(o(&[], true).unwrap().compression, Zvhd2Compression::Zstd);
        assert_eq!(
            o(&[("compression_type", "zlib")], true)
                .unwrap()
                .compression,
            Zvhd2Compression::Zlib
        );
        assert!(o(&[("compression_type", "zlib")], false).is_err());
        assert!(o(&[("compression_type", "lz4")], true).is_err());
        let pinned = o(
            &[
                ("timestamp", "1700000000"),
                ("uuid", "5a7e6b1c-2d3e-4f50-a1b2-c3d4e5f60718"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(pinned.timestamp_field().unwrap(), 753_315_200);
        assert_eq!(pinned.uuid_field()[0], 0x5a);
        assert!(o(&[("uuid", "nope")], false).is_err());
        let old = ZvhdCreateOptions {
            timestamp: Some(1),
            ..Default::default()
        };
        assert!(old.timestamp_field().is_err());
        let a = ZvhdCreateOptions::default().uuid_field();
        let b = ZvhdCreateOptions::default().uuid_field();
        assert_ne!(a, b);
        assert_eq!(a[6] >> 4, 4);
    }
}
