//! Where an image's bytes live: positional reads from a local file, from memory, or from any
//! backend a caller brings (an object store's ranged reads, a block device, a cache).
//!
//! Every reader reads its image only through [`Storage`], so a format never knows whether it
//! reads a file. Implementations take `&self` and are `Sync`: the conversion pipeline's workers
//! read one image from several threads at once.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use byteorder::{BigEndian, ByteOrder};
use bytes::Bytes;
use rustix::fs::{SeekFrom, seek};

use crate::block::ExtentState;
use crate::error::{Error, Result};

/// A run of an image's bytes that the backend knows to be stored data or a hole (reads as
/// zeros without being stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageRun {
    /// Offset of the run's first byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Whether the run is a hole.
    pub hole: bool,
}

/// Positional reads of an image's bytes.
pub trait Storage: Send + Sync {
    /// The length of the image in bytes, fixed for the life of the storage.
    fn len(&self) -> u64;

    /// Whether the image has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `buf.len()` bytes at `offset` and returns how many were read: fewer only
    /// where the image ends, none at or past its end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;

    /// The data and hole runs of `[offset, end)` in ascending order and without gaps, where
    /// the backend knows them (a sparse local file); `None` where it does not, and then every
    /// byte counts as data.
    fn runs(&self, offset: u64, end: u64) -> Result<Option<Vec<StorageRun>>> {
        let _ = (offset, end);
        Ok(None)
    }

    /// Bytes the image occupies on its medium (`actual-size` of `info`), where known.
    fn allocated(&self) -> Option<u64> {
        None
    }

    /// A hint: the byte ranges `[start, end)` that will be read next, in the order they will
    /// be read (an image's map in disk order, when a conversion is about to read it). Called
    /// again, it adds to the ranges given before. A storage that is far away (an object store)
    /// fetches them ahead of the reads, several at once; reads elsewhere still work. The
    /// default ignores it.
    fn will_read(&self, ranges: &[std::ops::Range<u64>]) {
        let _ = ranges;
    }
}

/// Reads exactly `buf.len()` bytes at `offset`; a read past the end is an
/// [`Error::Truncated`] naming `structure`.
pub fn read_exact_at(
    storage: &dyn Storage,
    buf: &mut [u8],
    offset: u64,
    structure: &'static str,
) -> Result<()> {
    let n = storage.read_at(buf, offset)?;
    if n < buf.len() {
        return Err(Error::truncated(
            structure,
            offset,
            buf.len() as u64,
            storage.len(),
        ));
    }
    Ok(())
}

/// Reads a table of `entries` big-endian 64-bit entries at `offset` (qcow2's and qcow version
/// 1's L1 and L2 tables); a size that cannot be held in memory is a limit error naming
/// `structure`.
pub fn read_be_u64_table(
    storage: &dyn Storage,
    offset: u64,
    entries: u64,
    structure: &'static str,
) -> Result<Vec<u64>> {
    let len = entries
        .checked_mul(8)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| Error::limit(structure, offset, "table too large"))?;
    let mut buf = vec![0u8; len];
    read_exact_at(storage, &mut buf, offset, structure)?;
    Ok(buf.chunks_exact(8).map(BigEndian::read_u64).collect())
}

/// `[offset, end)` as runs `(start, length, state)`: `Zero` for the holes the storage reports,
/// `Data` for the rest (all of it where the storage cannot tell).
pub fn data_runs(
    storage: &dyn Storage,
    offset: u64,
    end: u64,
) -> Result<Vec<(u64, u64, ExtentState)>> {
    if offset >= end {
        return Ok(Vec::new());
    }
    Ok(match storage.runs(offset, end)? {
        Some(runs) => runs
            .into_iter()
            .map(|r| {
                let state = if r.hole {
                    ExtentState::Zero
                } else {
                    ExtentState::Data
                };
                (r.start, r.length, state)
            })
            .collect(),
        None => vec![(offset, end - offset, ExtentState::Data)],
    })
}

/// Reads a [`Storage`] front to back as a [`std::io::Read`], for the formats read as a stream.
pub struct StorageReader {
    storage: Arc<dyn Storage>,
    pos: u64,
}

impl StorageReader {
    /// Reads `storage` from its first byte.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        StorageReader { storage, pos: 0 }
    }
}

impl io::Read for StorageReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .storage
            .read_at(buf, self.pos)
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A local file (or block device) read with `pread`; holes are found with SEEK_DATA/SEEK_HOLE.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    len: u64,
}

impl FileStorage {
    /// Opens `path` for reading, with errors that name it. A directory is refused.
    pub fn open(path: &Path) -> Result<FileStorage> {
        let file = File::open(path).map_err(|e| Error::io("open", e).in_file(path))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat", e).in_file(path))?;
        if meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: is a directory, not an image file",
                path.display()
            )));
        }
        FileStorage::new(file).map_err(|e| e.in_file(path))
    }

    /// Reads an open file; its length is taken now.
    pub fn new(file: File) -> Result<FileStorage> {
        let len = file_length(&file)?;
        Ok(FileStorage { file, len })
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// The length of an open file or block device.
fn file_length(file: &File) -> Result<u64> {
    let meta = file.metadata().map_err(|e| Error::io("stat", e))?;
    if meta.is_dir() {
        return Err(Error::InvalidArgument(
            "is a directory, not an image file".into(),
        ));
    }
    if meta.is_file() {
        return Ok(meta.len());
    }
    // Block devices report length 0 in metadata; ask where their end is.
    use std::io::Seek;
    let mut handle = file;
    let end = handle
        .seek(io::SeekFrom::End(0))
        .map_err(|e| Error::io("seek to end", e))?;
    handle
        .seek(io::SeekFrom::Start(0))
        .map_err(|e| Error::io("seek", e))?;
    Ok(end)
}

impl Storage for FileStorage {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        // Bytes past the length taken at open are not the image's, even if the file grew.
        let available = usize::try_from(self.len.saturating_sub(offset)).unwrap_or(usize::MAX);
        let want = buf.len().min(available);
        let mut done = 0;
        while done < want {
            match self
                .file
                .read_at(&mut buf[done..want], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", e)),
            }
        }
        Ok(done)
    }

    fn runs(&self, offset: u64, end: u64) -> Result<Option<Vec<StorageRun>>> {
        file_runs(&self.file, offset, end.min(self.len))
    }

    fn allocated(&self) -> Option<u64> {
        let meta = self.file.metadata().ok()?;
        Some(meta.blocks().saturating_mul(512))
    }
}

/// The next offset at or after `pos` where the file has data (`hole = false`) or a hole
/// (`hole = true`), or `None` when the file system cannot tell.
fn seek_extent(
    file: &File,
    pos: u64,
    hole: bool,
) -> Option<std::result::Result<u64, rustix::io::Errno>> {
    let whence = if hole {
        SeekFrom::Hole(pos)
    } else {
        SeekFrom::Data(pos)
    };
    match seek(file, whence) {
        Ok(p) => Some(Ok(p)),
        // EINVAL: the file system does not support SEEK_DATA/SEEK_HOLE.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => None,
        Err(e) => Some(Err(e)),
    }
}

/// The file system's data and hole runs of `[offset, end)`, or `None` when it cannot tell.
fn file_runs(file: &File, offset: u64, end: u64) -> Result<Option<Vec<StorageRun>>> {
    let mut out = Vec::new();
    let mut push = |start: u64, length: u64, hole: bool| {
        if length > 0 {
            out.push(StorageRun {
                start,
                length,
                hole,
            });
        }
    };
    let mut pos = offset;
    while pos < end {
        let data_start = match seek_extent(file, pos, false) {
            None if pos == offset => return Ok(None),
            None => {
                push(pos, end - pos, false);
                break;
            }
            Some(Ok(p)) => p.clamp(pos, end),
            // ENXIO: no data after pos.
            Some(Err(rustix::io::Errno::NXIO)) => end,
            Some(Err(e)) => return Err(Error::io("seek data", io::Error::from(e))),
        };
        push(pos, data_start - pos, true);
        if data_start >= end {
            break;
        }
        let hole_start = match seek_extent(file, data_start, true) {
            None | Some(Err(rustix::io::Errno::NXIO)) => end,
            Some(Ok(p)) => p.clamp(data_start + 1, end),
            Some(Err(e)) => return Err(Error::io("seek hole", io::Error::from(e))),
        };
        push(data_start, hole_start - data_start, false);
        pos = hole_start;
    }
    Ok(Some(out))
}

/// An image held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage(Bytes);

impl MemoryStorage {
    /// Serves `bytes`.
    pub fn new(bytes: impl Into<Bytes>) -> MemoryStorage {
        MemoryStorage(bytes.into())
    }
}

impl Storage for MemoryStorage {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }

    fn allocated(&self) -> Option<u64> {
        Some(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_read_is_truncated_error() {
        for storage in [
            Arc::new(MemoryStorage::new(&b"12345"[..])) as Arc<dyn Storage>,
            {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("f");
                std::fs::write(&path, b"12345").unwrap();
                Arc::new(FileStorage::open(&path).unwrap())
            },
        ] {
            let mut buf = [0u8; 8];
            let e = read_exact_at(&*storage, &mut buf, 0, "header").unwrap_err();
            assert_eq!(e.kind(), "truncated");
            assert_eq!(storage.read_at(&mut buf, 2).unwrap(), 3);
            assert_eq!(&buf[..3], b"345");
            assert_eq!(storage.read_at(&mut buf, 5).unwrap(), 0);
            assert_eq!(storage.read_at(&mut buf, u64::MAX).unwrap(), 0);
        }
    }

    #[test]
    fn file_runs_find_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 4 << 20).unwrap();
        drop(f);
        let s = FileStorage::open(&path).unwrap();
        let runs = data_runs(&s, 0, 8 << 20).unwrap();
        let total: u64 = runs.iter().map(|r| r.1).sum();
        assert_eq!(total, 8 << 20);
        assert!(
            runs.iter()
                .any(|&(start, len, state)| state == ExtentState::Data
                    && start <= 4 << 20
                    && start + len > 4 << 20)
        );
    }

    #[test]
    fn a_directory_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            FileStorage::open(dir.path()).unwrap_err().kind(),
            "invalid-argument"
        );
    }

    #[test]
    fn storage_reader_reads_front_to_back() {
        use std::io::Read;
        let mut r = StorageReader::new(Arc::new(MemoryStorage::new(vec![3u8; 10000])));
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, vec![3u8; 10000]);
    }
}
