//! Raw images: the disk's bytes, one for one. Holes in the file are the zero ranges.

use std::sync::Arc;

use crate::block::{BlockReader, BlockWriter, Extent, Piece, check_range};
use crate::error::{Error, Result};
use crate::io::{AppendSink, append_piece};
use crate::storage::Storage;

/// Reads a raw image; `map` asks the storage where the holes are.
pub struct RawReader {
    storage: Arc<dyn Storage>,
    size: u64,
}

impl RawReader {
    /// The disk is the storage's bytes.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        let size = storage.len();
        RawReader { storage, size }
    }
}

impl BlockReader for RawReader {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        // The file may have shrunk since it was opened; what is gone reads as zeros.
        let n = self.storage.read_at(buf, offset)?;
        buf[n..].fill(0);
        Ok(())
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        crate::io::map_storage_region(
            &*self.storage,
            offset,
            offset.saturating_add(len).min(self.size),
        )
    }
}

/// Writes a raw image to any append-only sink; zero runs become holes in a file.
pub struct RawWriter<S: AppendSink> {
    sink: S,
    size: u64,
}

impl<S: AppendSink> RawWriter<S> {
    pub fn new(sink: S, size: u64) -> Self {
        RawWriter { sink, size }
    }
}

/// Zero runs shorter than this are written as data: qemu-img's default `-S` (sparse size).
const SPARSE_UNIT: u64 = 4096;

impl<S: AppendSink> BlockWriter for RawWriter<S> {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn unit_size(&self) -> u64 {
        SPARSE_UNIT
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        append_piece(&mut self.sink, piece, "raw writer")
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.sink.position() != self.size {
            return Err(Error::InvalidArgument(format!(
                "raw writer finished at {} of {} bytes",
                self.sink.position(),
                self.size
            )));
        }
        self.sink.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::ExtentState;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    #[test]
    fn map_finds_data_between_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.raw");
        let f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 1 << 20], 8 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        drop(f);
        let r = RawReader::new(Arc::new(crate::storage::FileStorage::open(&path).unwrap()));
        let map = r.map(0, r.virtual_size()).unwrap();
        crate::block::check_map(&map, 0, 64 << 20).unwrap();
        let data: Vec<_> = map
            .iter()
            .filter(|e| e.state == ExtentState::Data)
            .collect();
        // The file system may round data to its block size, but must find both pieces.
        assert_eq!(data.len(), 2, "{map:?}");
        assert!(data[0].start <= 8 << 20 && data[0].end() >= 9 << 20);
        assert_eq!(data[1].end(), 64 << 20);
        let mut buf = [0u8; 3];
        r.read_at(&mut buf, (64 << 20) - 3).unwrap();
        assert_eq!(&buf, b"end");
        assert!(r.read_at(&mut buf, (64 << 20) - 2).is_err());
    }

    #[test]
    fn writer_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.raw");
        let sink = crate::io::FileSink::create(&path).unwrap();
        let mut w: Box<dyn BlockWriter> = Box::new(RawWriter::new(sink, 3 << 20));
        w.write_piece(Piece::Zero {
            offset: 0,
            length: 1 << 20,
        })
        .unwrap();
        w.write_piece(Piece::Data {
            offset: 1 << 20,
            data: bytes::Bytes::from(vec![7u8; 1 << 20]),
        })
        .unwrap();
        w.write_piece(Piece::Zero {
            offset: 2 << 20,
            length: 1 << 20,
        })
        .unwrap();
        w.finish().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 3 << 20);
        assert!(back[..1 << 20].iter().all(|&b| b == 0));
        assert!(back[1 << 20..2 << 20].iter().all(|&b| b == 7));
        let r = RawReader::new(Arc::new(crate::storage::FileStorage::open(&path).unwrap()));
        let map = r.map(0, 3 << 20).unwrap();
        assert_eq!(
            map.iter().filter(|e| e.state == ExtentState::Data).count(),
            1
        );
    }

    #[test]
    fn writer_refuses_out_of_order_pieces() {
        let mut out = Vec::new();
        let sink = crate::io::PipeSink::new(&mut out);
        let mut w = RawWriter::new(sink, 1024);
        assert!(
            w.write_piece(Piece::Zero {
                offset: 512,
                length: 512
            })
            .is_err()
        );
    }
}
