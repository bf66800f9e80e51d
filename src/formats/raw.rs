//! Raw images: the disk's bytes, one for one. Holes in the file are the zero ranges.

use std::sync::Arc;

use bytes::BytesMut;

use crate::block::{BlockReader, BlockWriter, Chunk, ChunkStream, Extent, Piece, check_range};
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

/// Reads a raw image of a known size front to back from any byte source (a pipe, an upload);
/// the pipeline finds its zero runs. A source that ends early is an error.
pub struct RawStream<R: std::io::Read + Send> {
    input: R,
    size: u64,
    pos: u64,
}

impl<R: std::io::Read + Send> RawStream<R> {
    /// Reads `size` bytes of disk from `input`.
    pub fn new(input: R, size: u64) -> Self {
        RawStream {
            input,
            size,
            pos: 0,
        }
    }
}

/// How much of a raw stream one chunk holds.
const STREAM_CHUNK: u64 = 1 << 20;

impl<R: std::io::Read + Send> ChunkStream for RawStream<R> {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        if self.pos >= self.size {
            return Ok(None);
        }
        let len = STREAM_CHUNK.min(self.size - self.pos);
        let mut buf = BytesMut::zeroed(crate::block::usize_len(len)?);
        let mut done = 0;
        while done < buf.len() {
            match self.input.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(Error::truncated(
                        "raw stream",
                        self.pos + done as u64,
                        self.size - self.pos - done as u64,
                        0,
                    ));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", e)),
            }
        }
        let chunk = Chunk::data(self.pos, buf.freeze());
        self.pos = chunk.end();
        Ok(Some(chunk))
    }
}

/// Writes a raw image to any append-only sink; zero runs become holes in a file.
pub struct RawWriter<S: AppendSink> {
    sink: S,
    size: u64,
}

impl<S: AppendSink> RawWriter<S> {
    pub(crate) fn new(sink: S, size: u64) -> Self {
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
            return Err(Error::Internal(format!(
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
    fn stream_of_a_known_size() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut s = RawStream::new(&data[..], data.len() as u64);
        let mut back = Vec::new();
        while let Some(c) = s.next_chunk().unwrap() {
            assert_eq!(c.offset, back.len() as u64);
            back.extend_from_slice(c.data.as_deref().unwrap());
        }
        assert_eq!(back, data);
        let mut short = RawStream::new(&data[..10], 20);
        assert_eq!(short.next_chunk().unwrap_err().kind(), "truncated");
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
