//! Positional reads and the sinks writers write to.
//!
//! Readers use positional reads (`pread`) so many threads can read one file at once. Writers
//! write either to a [`FileSink`] (random access; zero runs become holes and the final length is
//! set at the end) or, when their format allows it, to any [`AppendSink`] such as a pipe.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::block::{Extent, Piece, push_extent};
use crate::error::{Error, Result};
use crate::storage::{Storage, data_runs};

/// Runs `f` on `len` bytes of this thread's scratch buffer, for data read and used at once (a
/// compressed cluster or grain before it is inflated): one allocation per thread instead of
/// one per unit. The bytes are stale: `f` fills them first. `len` is bounded by the caller's
/// limits, and the buffer keeps the largest length asked for.
pub fn with_scratch<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread: a buffer of its own.
        Err(_) => f(&mut vec![0u8; len]),
    })
}

/// Creates `dir` if needed and in it a new file `PREFIXPID-UUIDSUFFIX`, open for reading and
/// writing: a name no other process or call can have taken.
#[cfg(feature = "inspect")]
pub(crate) fn create_unique(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> Result<(std::path::PathBuf, File)> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", e).in_file(dir))?;
    let path = dir.join(format!(
        "{prefix}{}-{}{suffix}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io("create", e).in_file(&path))?;
    Ok((path, file))
}

/// An output that is written front to back.
pub trait AppendSink: Send {
    /// Appends bytes.
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// Appends `len` zero bytes (a hole where the sink can make one).
    fn append_zeros(&mut self, len: u64) -> Result<()>;
    /// Bytes appended so far.
    fn position(&self) -> u64;
    /// Flushes; a file sink also sets its length to the position.
    fn finish(&mut self) -> Result<()>;
}

/// Appends a piece to a sink that holds the disk's bytes one for one (raw images, fixed VHD
/// data, flat extents): data as it is, zero runs as holes (or zeros on a stream). `what` names
/// the writer in errors.
pub fn append_piece<S: AppendSink + ?Sized>(sink: &mut S, piece: Piece, what: &str) -> Result<()> {
    if piece.offset() != sink.position() {
        return Err(Error::Internal(format!(
            "{what} got a piece at {} while at {}",
            piece.offset(),
            sink.position()
        )));
    }
    match piece {
        Piece::Data { data, .. } => sink.append(&data),
        Piece::Zero { length, .. } => sink.append_zeros(length),
        Piece::Encoded { .. } => Err(Error::Internal(format!("{what} holds no encoded units"))),
    }
}

/// The most bytes one `pwrite` hands the kernel. Buffered writes of 1 MiB and more into a
/// fresh file cost the kernel (Linux 6.18, ext4) up to ten times more CPU per byte than writes
/// of 256-512 KiB, measured on the benchmark disk: qcow2 (zstd) -> raw spent 3.5 s of system
/// time in 2 MiB writes, 0.3 s in 256 KiB ones. qemu-img's writes are a few hundred KiB.
const WRITE_CHUNK: usize = 256 << 10;

/// The extents of `[offset, end)` of an image whose disk bytes lie at the same offsets (a raw
/// image, a fixed VHD): holes the storage reports are zero extents, the rest data.
pub(crate) fn map_storage_region(
    storage: &dyn Storage,
    offset: u64,
    end: u64,
) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    for (start, length, state) in data_runs(storage, offset, end)? {
        push_extent(
            &mut out,
            Extent {
                host_offset: Some(start),
                ..Extent::new(start, length, state)
            },
        );
    }
    Ok(out)
}

/// A regular output file: positional writes, holes for zero runs, length set at the end.
pub struct FileSink {
    file: File,
    /// The file's name, for errors.
    path: Option<std::path::PathBuf>,
    pos: u64,
    /// Whether `finish` syncs the data to stable storage.
    durable: bool,
}

impl FileSink {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create", e).in_file(path))?;
        Ok(FileSink {
            file,
            path: Some(path.to_path_buf()),
            pos: 0,
            durable: false,
        })
    }

    /// Wraps a file that is already open for writing.
    pub fn from_file(file: File) -> Self {
        FileSink {
            file,
            path: None,
            pos: 0,
            durable: false,
        }
    }

    /// Names the file in errors as `path` (a file opened under another name, to be renamed).
    pub fn named(mut self, path: &Path) -> Self {
        self.path = Some(path.to_path_buf());
        self
    }

    /// Makes `finish` sync the file to stable storage.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Writes `data` at `offset` without moving the append position.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let mut at = offset;
        for part in data.chunks(WRITE_CHUNK) {
            self.file
                .write_all_at(part, at)
                .map_err(|e| self.name(Error::io("write", e)))?;
            at += part.len() as u64;
        }
        Ok(())
    }

    /// Names the output file in an error.
    fn name(&self, e: Error) -> Error {
        match &self.path {
            Some(p) => e.in_file(p),
            None => e,
        }
    }

    /// Writes `data` at `offset` leaving holes where it has runs of zeros of 4 KiB or more
    /// (aligned to the file): the file must be fresh there, so holes read as zeros. Saves disk
    /// space and write bandwidth inside allocated blocks and clusters.
    pub fn write_at_sparse(&self, data: &[u8], offset: u64) -> Result<()> {
        const GRAIN: u64 = 4096;
        let end = offset + data.len() as u64;
        let mut run_start: Option<u64> = None;
        let mut pos = offset;
        while pos < end {
            let next = ((pos / GRAIN + 1) * GRAIN).min(end);
            let chunk = &data[(pos - offset) as usize..(next - offset) as usize];
            let zero = next - pos == GRAIN && crate::block::is_zero(chunk);
            match (zero, run_start) {
                (false, None) => run_start = Some(pos),
                (true, Some(start)) => {
                    self.write_at(
                        &data[(start - offset) as usize..(pos - offset) as usize],
                        start,
                    )?;
                    run_start = None;
                }
                _ => {}
            }
            pos = next;
        }
        if let Some(start) = run_start {
            self.write_at(&data[(start - offset) as usize..], start)?;
        }
        Ok(())
    }

    /// Moves the append position (the file's length at `finish`).
    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl AppendSink for FileSink {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.write_at(data, self.pos)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn append_zeros(&mut self, len: u64) -> Result<()> {
        // The file was created empty, so skipping leaves a hole that reads as zeros.
        self.pos = self
            .pos
            .checked_add(len)
            .ok_or_else(|| Error::InvalidArgument("output too large".into()))?;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn finish(&mut self) -> Result<()> {
        self.file
            .set_len(self.pos)
            .map_err(|e| self.name(Error::io("set length of", e)))?;
        if self.durable {
            self.file
                .sync_all()
                .map_err(|e| self.name(Error::io("sync", e)))?;
        }
        Ok(())
    }
}

/// A buffered stream that can only be appended to: a pipe, stdout, a socket.
pub struct PipeSink<W: Write + Send> {
    out: io::BufWriter<W>,
    pos: u64,
}

impl<W: Write + Send> PipeSink<W> {
    /// Appends to `out` through a 1 MiB buffer.
    pub fn new(out: W) -> Self {
        PipeSink {
            out: io::BufWriter::with_capacity(1 << 20, out),
            pos: 0,
        }
    }
}

impl PipeSink<io::Stdout> {
    /// A sink on the process's standard output.
    pub fn stdout() -> Self {
        PipeSink::new(io::stdout())
    }
}

/// A page of zeros to write zero runs from.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl<W: Write + Send> AppendSink for PipeSink<W> {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .write_all(data)
            .map_err(|e| Error::io("write to output stream", e))?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn append_zeros(&mut self, mut len: u64) -> Result<()> {
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.append(&ZEROS[..n])?;
            len -= n as u64;
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn finish(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io("flush output stream", e))
    }
}

/// Either kind of sink behind one type, for writers that only append.
#[non_exhaustive]
pub enum Output {
    /// A local file.
    File(FileSink),
    /// Any other append-only sink.
    Stream(Box<dyn AppendSink>),
}

impl AppendSink for Output {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Output::File(f) => f.append(data),
            Output::Stream(s) => s.append(data),
        }
    }
    fn append_zeros(&mut self, len: u64) -> Result<()> {
        match self {
            Output::File(f) => f.append_zeros(len),
            Output::Stream(s) => s.append_zeros(len),
        }
    }
    fn position(&self) -> u64 {
        match self {
            Output::File(f) => f.position(),
            Output::Stream(s) => s.position(),
        }
    }
    fn finish(&mut self) -> Result<()> {
        match self {
            Output::File(f) => f.finish(),
            Output::Stream(s) => s.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_the_asked_length_even_when_reentered() {
        let outer = with_scratch(10, |a| {
            a.fill(1);
            let inner = with_scratch(4, |b| {
                b.fill(2);
                b.len()
            });
            assert!(
                a.iter().all(|&x| x == 1),
                "the inner call has its own buffer"
            );
            a.len() + inner
        });
        assert_eq!(outer, 14);
        assert_eq!(with_scratch(3, |c| c.len()), 3);
    }

    #[test]
    fn writes_larger_than_a_chunk_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let sink = FileSink::create(&path).unwrap();
        let data: Vec<u8> = (0..WRITE_CHUNK * 2 + 1234)
            .map(|i| (i % 251) as u8)
            .collect();
        sink.write_at(&data, 777).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 777 + data.len());
        assert!(back[..777].iter().all(|&b| b == 0));
        assert_eq!(&back[777..], &data[..]);
    }

    #[test]
    fn file_sink_leaves_holes_and_sets_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut sink = FileSink::create(&path).unwrap();
        sink.append(b"head").unwrap();
        sink.append_zeros(64 << 20).unwrap();
        sink.append(b"tail").unwrap();
        sink.append_zeros(100).unwrap();
        sink.finish().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 4 + (64 << 20) + 4 + 100);
        assert_eq!(&data[..4], b"head");
        assert_eq!(&data[4 + (64 << 20)..][..4], b"tail");
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&path).unwrap().blocks();
        assert!(
            blocks * 512 < 1 << 20,
            "output is not sparse: {blocks} blocks"
        );
    }

    #[test]
    fn sparse_writes_leave_zero_runs_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let sink = FileSink::create(&path).unwrap();
        let mut data = vec![0u8; 1 << 20];
        data[100] = 1;
        data[(1 << 20) - 1] = 2;
        sink.write_at_sparse(&data, 4096 + 10).unwrap();
        sink.file().set_len(8 << 20).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[4106..4106 + (1 << 20)], &data[..]);
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 64 << 10);
    }

    #[test]
    fn pipe_sink_writes_zeros() {
        let mut buf = Vec::new();
        {
            let mut sink = PipeSink::new(&mut buf);
            sink.append(b"a").unwrap();
            sink.append_zeros(70000).unwrap();
            sink.append(b"b").unwrap();
            assert_eq!(sink.position(), 70002);
            sink.finish().unwrap();
        }
        assert_eq!(buf.len(), 70002);
        assert!(buf[1..70001].iter().all(|&b| b == 0));
        assert_eq!(buf[70001], b'b');
    }
}
