//! The virtual-block abstraction: what every format is to the rest of the crate.
//!
//! A disk is `virtual_size` bytes whose ranges are `Data`, `Zero` or `Unallocated`. Random-access
//! formats implement [`BlockReader`]; formats that can only be read front to back implement
//! [`ChunkStream`], and every [`BlockReader`] can be consumed as a [`ChunkStream`] through
//! [`ReaderChunks`]. Writers implement [`BlockWriter`] and take [`Piece`]s in ascending order.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::formats::info::FormatInfo;

/// What a range of the virtual disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ExtentState {
    /// Stored bytes (which may happen to be zeros).
    Data,
    /// Known to read as zeros without being stored.
    Zero,
    /// Stored by the format in a file where that file has a hole (never written): reads as
    /// zeros. `qemu-img map` reports it as both data and zero; readers and converters treat it
    /// as [`ExtentState::Zero`].
    Hole,
    /// Not stored in this image: falls through to a backing image, or reads as zeros when there is none.
    Unallocated,
}

/// A run of the virtual disk in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte of the run, in the virtual disk.
    pub start: u64,
    /// Bytes in the run.
    pub length: u64,
    /// What the run holds.
    pub state: ExtentState,
    /// Where the bytes lie in the image file when they are stored there uncompressed and
    /// contiguously (qemu-img map's `offset`).
    pub host_offset: Option<u64>,
    /// The bytes are stored compressed.
    pub compressed: bool,
}

impl Extent {
    /// An extent with no host location.
    pub fn new(start: u64, length: u64, state: ExtentState) -> Self {
        Extent {
            start,
            length,
            state,
            host_offset: None,
            compressed: false,
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.length
    }

    /// Whether `next` continues this extent with nothing to tell them apart.
    pub(crate) fn continues_with(&self, next: &Extent) -> bool {
        self.end() == next.start
            && self.state == next.state
            && self.compressed == next.compressed
            && match (self.host_offset, next.host_offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a.checked_add(self.length) == Some(b),
                _ => false,
            }
    }
}

/// Appends `next` to `extents`, merging it with the last one when it continues it.
pub fn push_extent(extents: &mut Vec<Extent>, next: Extent) {
    if next.length == 0 {
        return;
    }
    if let Some(last) = extents.last_mut()
        && last.continues_with(&next)
    {
        last.length += next.length;
        return;
    }
    extents.push(next);
}

/// Merges adjacent extents that cannot be told apart.
pub fn merge_extents(extents: impl IntoIterator<Item = Extent>) -> Vec<Extent> {
    let mut out = Vec::new();
    for e in extents {
        push_extent(&mut out, e);
    }
    out
}

/// A disk that can be read at any offset.
///
/// Implementations take `&self` and are `Sync`, so the conversion pipeline's workers read from
/// one reader in parallel.
pub trait BlockReader: Send + Sync {
    /// The disk's size in bytes.
    fn virtual_size(&self) -> u64;

    /// Fills `buf` with the disk's bytes from `offset`. Zero and unallocated ranges read as zeros
    /// (or the backing image's bytes, where a backing image is attached). Reading past
    /// `virtual_size` is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// The extents covering `[offset, offset + len)`, clamped to the disk, in order and without
    /// gaps. Adjacent extents may or may not be merged.
    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;

    /// The format-specific part of `info`.
    fn info(&self) -> Option<FormatInfo> {
        None
    }
}

/// Checks that `[offset, offset + len)` lies inside a disk of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::InvalidArgument(format!(
            "read of {len} bytes at offset {offset} is outside the disk of {size} bytes"
        ))),
    }
}

/// Reads `buf.len()` bytes of a backing disk (a parent) at `offset`; what lies past its end
/// reads as zeros, since a backing disk may be smaller than the image above it, and with no
/// backing disk everything reads as zeros.
pub fn read_backing(backing: Option<&dyn BlockReader>, buf: &mut [u8], offset: u64) -> Result<()> {
    let Some(backing) = backing else {
        buf.fill(0);
        return Ok(());
    };
    let available = backing.virtual_size().saturating_sub(offset);
    // Bounded by buf.len(), so it fits a usize.
    let n = usize::try_from(available)
        .unwrap_or(usize::MAX)
        .min(buf.len());
    let (inside, beyond) = buf.split_at_mut(n);
    if !inside.is_empty() {
        backing.read_at(inside, offset)?;
    }
    beyond.fill(0);
    Ok(())
}

/// A disk held in memory, every byte of it data: for small images built in code (tests,
/// fuzzing, a library user's own bytes).
pub struct MemoryDisk(pub Vec<u8>);

impl BlockReader for MemoryDisk {
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.virtual_size())?;
        // In range after the check, and the disk is in memory, so the offset fits a usize.
        let start = usize_len(offset)?;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let len = len.min(self.virtual_size().saturating_sub(offset));
        Ok(if len == 0 {
            Vec::new()
        } else {
            vec![Extent::new(offset, len, ExtentState::Data)]
        })
    }
}

/// A piece of the disk in an ordered stream: data, or a run of zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where the chunk starts in the virtual disk.
    pub offset: u64,
    /// Bytes the chunk covers.
    pub length: u64,
    /// The bytes (`length` of them), or `None` for zeros.
    pub data: Option<Bytes>,
}

impl Chunk {
    /// A run of `length` zero bytes at `offset`.
    pub fn zero(offset: u64, length: u64) -> Self {
        Chunk {
            offset,
            length,
            data: None,
        }
    }

    /// The bytes `data` at `offset`.
    pub fn data(offset: u64, data: Bytes) -> Self {
        Chunk {
            offset,
            length: data.len() as u64,
            data: Some(data),
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// A disk read front to back as chunks that cover `[0, virtual_size)` in ascending order.
pub trait ChunkStream: Send {
    /// The disk's size in bytes: the chunks end there.
    fn virtual_size(&self) -> u64;

    /// The next chunk, or `None` once the whole disk has been given.
    fn next_chunk(&mut self) -> Result<Option<Chunk>>;

    /// The format-specific part of `info`.
    fn info(&self) -> Option<FormatInfo> {
        None
    }
}

impl<S: ChunkStream + ?Sized> ChunkStream for Box<S> {
    fn virtual_size(&self) -> u64 {
        (**self).virtual_size()
    }
    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        (**self).next_chunk()
    }
    fn info(&self) -> Option<FormatInfo> {
        (**self).info()
    }
}

/// A disk as the conversion pipeline reads it: at any offset, or front to back.
#[non_exhaustive]
pub enum Source {
    /// A disk read at any offset: workers read in parallel.
    Random(Arc<dyn BlockReader>),
    /// A disk that can only be read front to back.
    Stream(Box<dyn ChunkStream>),
}

impl Source {
    /// The disk's size in bytes.
    pub fn virtual_size(&self) -> u64 {
        match self {
            Source::Random(r) => r.virtual_size(),
            Source::Stream(s) => s.virtual_size(),
        }
    }

    /// The source as an ordered stream of chunks of at most `piece_size` bytes of data.
    pub fn into_stream(self, piece_size: usize) -> Box<dyn ChunkStream> {
        match self {
            Source::Random(r) => Box::new(ReaderChunks::new(r, piece_size)),
            Source::Stream(s) => s,
        }
    }
}

/// How far [`ReaderChunks`] asks `map` ahead at a time: bounds the extent list in memory.
const MAP_WINDOW: u64 = 1 << 30;

/// Reads a [`BlockReader`] as an ordered stream: zero and unallocated ranges become zero chunks
/// without being read, data is read in pieces of `piece_size` bytes aligned to multiples of
/// `piece_size`.
pub struct ReaderChunks {
    reader: Arc<dyn BlockReader>,
    piece_size: u64,
    pos: u64,
    extents: std::collections::VecDeque<Extent>,
}

impl ReaderChunks {
    /// Streams `reader` in data chunks of at most `piece_size` bytes (at least 512).
    pub fn new(reader: Arc<dyn BlockReader>, piece_size: usize) -> Self {
        ReaderChunks {
            reader,
            piece_size: piece_size.max(512) as u64,
            pos: 0,
            extents: Default::default(),
        }
    }
}

impl ChunkStream for ReaderChunks {
    fn virtual_size(&self) -> u64 {
        self.reader.virtual_size()
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        let size = self.reader.virtual_size();
        if self.pos >= size {
            return Ok(None);
        }
        if self.extents.is_empty() {
            let len = MAP_WINDOW.min(size - self.pos);
            self.extents = self.reader.map(self.pos, len)?.into();
            check_map(&self.extents, self.pos, len)?;
        }
        let Some(extent) = self.extents.front_mut() else {
            return Err(Error::malformed("map", self.pos, "empty map"));
        };
        let chunk = if extent.state == ExtentState::Data {
            let piece_end = (self.pos / self.piece_size + 1) * self.piece_size;
            let len = piece_end.min(extent.end()) - self.pos;
            let mut buf = BytesMut::zeroed(usize_len(len)?);
            self.reader.read_at(&mut buf, self.pos)?;
            Chunk::data(self.pos, buf.freeze())
        } else {
            Chunk::zero(self.pos, extent.end() - self.pos)
        };
        self.pos = chunk.end();
        if self.pos >= extent.end() {
            self.extents.pop_front();
        }
        Ok(Some(chunk))
    }

    fn info(&self) -> Option<FormatInfo> {
        self.reader.info()
    }
}

/// Checks that a reader's map covers `[start, start + len)` without gaps or overlaps, so a buggy
/// format cannot make the pipeline skip or repeat data.
pub fn check_map<'a>(
    extents: impl IntoIterator<Item = &'a Extent>,
    start: u64,
    len: u64,
) -> Result<()> {
    let mut pos = start;
    for e in extents {
        if e.start != pos || e.length == 0 {
            return Err(Error::malformed(
                "map",
                e.start,
                format!("extent does not start at {pos}"),
            ));
        }
        pos = e
            .start
            .checked_add(e.length)
            .ok_or_else(|| Error::malformed("map", e.start, "extent overflows"))?;
    }
    if pos != start + len {
        return Err(Error::malformed("map", pos, "map ends early or late"));
    }
    Ok(())
}

/// Converts a length to `usize`, failing on 32-bit hosts rather than truncating.
pub fn usize_len(len: u64) -> Result<usize> {
    usize::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("length {len} does not fit in memory")))
}

/// A piece handed to a writer. Pieces come in ascending, gap-free order; no piece straddles a
/// boundary of the writer's [`BlockWriter::unit_size`] except `Data` runs that cover whole units.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Piece {
    /// Bytes to store.
    Data {
        /// Where the bytes go in the virtual disk.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// A run that reads as zeros.
    Zero {
        /// Where the run starts in the virtual disk.
        offset: u64,
        /// Bytes in the run.
        length: u64,
    },
    /// One unit, already encoded by the writer's [`UnitEncoder`] on a worker thread.
    Encoded {
        /// Where the unit starts in the virtual disk.
        offset: u64,
        /// Bytes of disk the unit covers (before encoding).
        length: u64,
        /// What [`UnitEncoder::encode`] made of it.
        payload: Vec<u8>,
    },
}

impl Piece {
    /// Where the piece starts in the virtual disk.
    pub fn offset(&self) -> u64 {
        match self {
            Piece::Data { offset, .. }
            | Piece::Zero { offset, .. }
            | Piece::Encoded { offset, .. } => *offset,
        }
    }

    /// Bytes of disk the piece covers.
    pub fn length(&self) -> u64 {
        match self {
            Piece::Data { data, .. } => data.len() as u64,
            Piece::Zero { length, .. } | Piece::Encoded { length, .. } => *length,
        }
    }
}

/// Checks that `piece` starts where a writer's previous piece ended (`next`), on a multiple of
/// `unit`, and ends inside a disk of `size` bytes; then moves `next` past it. Writers that lay
/// out units rely on that order: a broken one becomes an error, not a corrupt image.
pub fn advance(next: &mut u64, piece: &Piece, unit: u64, size: u64, writer: &str) -> Result<()> {
    let (offset, length) = (piece.offset(), piece.length());
    let end = offset.checked_add(length).filter(|&end| end <= size);
    match end {
        Some(end) if offset == *next && offset.is_multiple_of(unit.max(1)) => {
            *next = end;
            Ok(())
        }
        _ => Err(Error::Internal(format!(
            "{writer} got a piece of {length} bytes at {offset}, expected one at {next} inside {size} bytes"
        ))),
    }
}

/// Per-unit work a writer wants done on the pipeline's workers (compression). It must be a pure
/// function of its input, so that the output is the same for every thread count.
pub trait UnitEncoder: Send + Sync {
    /// Encodes one unit of non-zero data starting at virtual `offset`. `None` stores the unit
    /// as plain data instead (when compression would not make it smaller).
    fn encode(&self, offset: u64, unit: &[u8]) -> Result<Option<Vec<u8>>>;
}

/// A format's writer: takes the whole disk as ascending pieces, then finishes the file.
pub trait BlockWriter {
    /// The disk size the writer was created for.
    fn virtual_size(&self) -> u64;

    /// The unit of allocation and zero detection (cluster, grain, block; 4 KiB for raw).
    fn unit_size(&self) -> u64;

    /// Work to run per non-zero unit on the workers, if the writer wants any.
    fn encoder(&self) -> Option<Arc<dyn UnitEncoder>> {
        None
    }

    /// Stores one piece.
    fn write_piece(&mut self, piece: Piece) -> Result<()>;

    /// Writes whatever metadata is left and flushes the output.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Whether `buf` holds only zero bytes; written so the compiler vectorises it.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Re-cuts an ordered stream of chunks so that every data chunk starts and ends on a multiple
/// of `unit` (or at the end of the disk) and no zero chunk leaves a unit partly covered: a unit
/// that is partly data and partly zero becomes one data chunk with the zeros filled in.
pub(crate) struct UnitAligner<S> {
    inner: S,
    unit: u64,
    size: u64,
    /// Bytes of a unit being assembled, starting at `pending_offset`.
    pending: BytesMut,
    pending_offset: u64,
    /// A chunk taken from `inner` but not yet fully passed on.
    held: Option<Chunk>,
    /// Largest data chunk passed on at once.
    max_piece: u64,
}

impl<S: ChunkStream> UnitAligner<S> {
    pub fn new(inner: S, unit: u64, max_piece: u64) -> Self {
        let size = inner.virtual_size();
        let unit = unit.max(1);
        let max_piece = max_piece.max(unit) / unit * unit;
        UnitAligner {
            inner,
            unit,
            size,
            pending: BytesMut::new(),
            pending_offset: 0,
            held: None,
            max_piece,
        }
    }

    fn unit_end(&self, offset: u64) -> u64 {
        ((offset / self.unit).saturating_add(1))
            .saturating_mul(self.unit)
            .min(self.size)
    }

    fn take_next(&mut self) -> Result<Option<Chunk>> {
        if let Some(c) = self.held.take() {
            return Ok(Some(c));
        }
        let expected = self.pending_offset + self.pending.len() as u64;
        match self.inner.next_chunk()? {
            None => Ok(None),
            Some(c) if c.offset != expected || c.length == 0 => Err(Error::malformed(
                "chunk stream",
                c.offset,
                format!("chunk of {} bytes does not follow at {expected}", c.length),
            )),
            Some(c)
                if c.end() > self.size
                    || c.data.as_ref().is_some_and(|d| d.len() as u64 != c.length) =>
            {
                Err(Error::malformed(
                    "chunk stream",
                    c.offset,
                    "chunk runs past the disk",
                ))
            }
            Some(c) => Ok(Some(c)),
        }
    }
}

impl<S: ChunkStream> ChunkStream for UnitAligner<S> {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        loop {
            let Some(chunk) = self.take_next()? else {
                if !self.pending.is_empty() {
                    let data = std::mem::take(&mut self.pending).freeze();
                    let out = Chunk::data(self.pending_offset, data);
                    self.pending_offset = out.end();
                    return Ok(Some(out));
                }
                if self.pending_offset < self.size {
                    return Err(Error::malformed(
                        "chunk stream",
                        self.pending_offset,
                        "stream ends before the end of the disk",
                    ));
                }
                return Ok(None);
            };
            let start = chunk.offset;
            if !self.pending.is_empty() {
                // Completing a unit that already holds data.
                let fill_to = self.unit_end(self.pending_offset).min(chunk.end());
                let take = fill_to - start;
                match &chunk.data {
                    Some(d) => self.pending.extend_from_slice(&d[..take as usize]),
                    None => self.pending.resize(self.pending.len() + take as usize, 0),
                }
                self.hold_rest(chunk, take);
                if fill_to == self.unit_end(self.pending_offset) {
                    let data = std::mem::take(&mut self.pending).freeze();
                    let out = Chunk::data(self.pending_offset, data);
                    self.pending_offset = out.end();
                    return Ok(Some(out));
                }
                continue;
            }
            self.pending_offset = start;
            let aligned = start % self.unit == 0;
            match &chunk.data {
                None => {
                    // Whole zero units pass on; a zero run that ends inside a unit leaves the rest of
                    // that unit to be decided by what follows.
                    let whole_end = if chunk.end() == self.size {
                        chunk.end()
                    } else {
                        chunk.end() / self.unit * self.unit
                    };
                    if aligned && whole_end > start {
                        self.hold_rest(chunk, whole_end - start);
                        self.pending_offset = whole_end;
                        return Ok(Some(Chunk::zero(start, whole_end - start)));
                    }
                    let take = self.unit_end(start).min(chunk.end()) - start;
                    self.pending.resize(take as usize, 0);
                    self.hold_rest(chunk, take);
                }
                Some(d) => {
                    let whole_end = if chunk.end() == self.size {
                        chunk.end()
                    } else {
                        chunk.end() / self.unit * self.unit
                    };
                    if aligned && whole_end > start {
                        let len = (whole_end - start).min(self.max_piece);
                        let out = Chunk::data(start, d.slice(..len as usize));
                        self.hold_rest(chunk, len);
                        self.pending_offset = out.end();
                        return Ok(Some(out));
                    }
                    let take = self.unit_end(start).min(chunk.end()) - start;
                    self.pending.extend_from_slice(&d[..take as usize]);
                    self.hold_rest(chunk, take);
                }
            }
            // A unit was started in `pending`; if it is already complete, give it.
            if self.pending_offset + self.pending.len() as u64 == self.unit_end(self.pending_offset)
            {
                let data = std::mem::take(&mut self.pending).freeze();
                let out = Chunk::data(self.pending_offset, data);
                self.pending_offset = out.end();
                return Ok(Some(out));
            }
        }
    }

    fn info(&self) -> Option<FormatInfo> {
        self.inner.info()
    }
}

impl<S> UnitAligner<S> {
    /// Keeps what is left of `chunk` after its first `used` bytes for the next call.
    fn hold_rest(&mut self, chunk: Chunk, used: u64) {
        if used < chunk.length {
            let offset = chunk.offset + used;
            let length = chunk.length - used;
            self.held = Some(Chunk {
                offset,
                length,
                data: chunk.data.map(|d| d.slice(used as usize..)),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A disk held in memory, with a map given by a list of states per 512-byte sector.
    pub(crate) struct MemDisk {
        pub bytes: Vec<u8>,
        pub sectors: Vec<ExtentState>,
    }

    impl BlockReader for MemDisk {
        fn virtual_size(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            check_range(offset, buf.len() as u64, self.virtual_size())?;
            buf.copy_from_slice(&self.bytes[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
            let end = (offset + len).min(self.virtual_size());
            let mut out = Vec::new();
            let mut pos = offset;
            while pos < end {
                let s = (pos / 512) as usize;
                let next = ((pos / 512 + 1) * 512).min(end);
                push_extent(&mut out, Extent::new(pos, next - pos, self.sectors[s]));
                pos = next;
            }
            Ok(out)
        }
    }

    /// Builds a disk from sector states; data sectors get a non-zero pattern.
    fn mem_disk(states: &[ExtentState]) -> MemDisk {
        let mut bytes = vec![0u8; states.len() * 512];
        for (i, s) in states.iter().enumerate() {
            if *s == ExtentState::Data {
                for (j, b) in bytes[i * 512..(i + 1) * 512].iter_mut().enumerate() {
                    *b = (i * 7 + j) as u8 | 1;
                }
            }
        }
        MemDisk {
            bytes,
            sectors: states.to_vec(),
        }
    }

    fn collect(mut s: impl ChunkStream) -> Vec<Chunk> {
        let mut out = Vec::new();
        while let Some(c) = s.next_chunk().unwrap() {
            out.push(c);
        }
        out
    }

    fn flatten(chunks: &[Chunk], size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size];
        for c in chunks {
            if let Some(d) = &c.data {
                out[c.offset as usize..c.end() as usize].copy_from_slice(d);
            }
        }
        out
    }

    fn state() -> impl Strategy<Value = ExtentState> {
        prop_oneof![
            Just(ExtentState::Data),
            Just(ExtentState::Zero),
            Just(ExtentState::Unallocated)
        ]
    }

    #[test]
    fn merge_joins_only_continuous_extents() {
        let a = Extent {
            host_offset: Some(100),
            ..Extent::new(0, 10, ExtentState::Data)
        };
        let b = Extent {
            host_offset: Some(110),
            ..Extent::new(10, 5, ExtentState::Data)
        };
        let c = Extent {
            host_offset: Some(200),
            ..Extent::new(15, 5, ExtentState::Data)
        };
        let merged = merge_extents([a, b, c]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].length, 15);
        assert_eq!(merged[1].start, 15);
    }

    #[test]
    fn is_zero_finds_a_single_byte_anywhere() {
        for len in [0usize, 1, 63, 64, 65, 4096, 4099] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf));
            for i in 0..len {
                buf[i] = 1;
                assert!(!is_zero(&buf), "len {len} byte {i}");
                buf[i] = 0;
            }
        }
    }

    proptest! {
        #[test]
        fn merged_map_covers_the_same_bytes(states in prop::collection::vec(state(), 1..64)) {
            let disk = mem_disk(&states);
            let map = disk.map(0, disk.virtual_size()).unwrap();
            check_map(&map, 0, disk.virtual_size()).unwrap();
            let merged = merge_extents(map.clone());
            check_map(&merged, 0, disk.virtual_size()).unwrap();
            for w in merged.windows(2) {
                prop_assert!(w[0].state != w[1].state);
            }
            for e in &merged {
                for s in (e.start / 512)..(e.end() / 512) {
                    prop_assert_eq!(states[s as usize], e.state);
                }
            }
        }

        #[test]
        fn reader_chunks_rebuild_the_disk(states in prop::collection::vec(state(), 1..64), piece in 1usize..6) {
            let disk = Arc::new(mem_disk(&states));
            let chunks = collect(ReaderChunks::new(disk.clone(), piece * 512));
            let mut pos = 0;
            for c in &chunks {
                prop_assert_eq!(c.offset, pos);
                pos = c.end();
                if let Some(d) = &c.data {
                    prop_assert!(d.len() <= piece * 512);
                } else {
                    prop_assert!(is_zero(&disk.bytes[c.offset as usize..c.end() as usize]));
                }
            }
            prop_assert_eq!(pos, disk.virtual_size());
            prop_assert_eq!(flatten(&chunks, disk.bytes.len()), disk.bytes.clone());
        }

        #[test]
        fn aligned_chunks_respect_units(states in prop::collection::vec(state(), 1..64),
                                        piece in 1usize..5, unit_sectors in 1u64..9, max_units in 1u64..4) {
            let disk = Arc::new(mem_disk(&states));
            let unit = unit_sectors * 512;
            let size = disk.virtual_size();
            let aligned = UnitAligner::new(ReaderChunks::new(disk.clone(), piece * 512), unit, unit * max_units);
            let chunks = collect(aligned);
            let mut pos = 0;
            for c in &chunks {
                prop_assert_eq!(c.offset, pos);
                prop_assert!(c.offset % unit == 0);
                prop_assert!(c.end() % unit == 0 || c.end() == size);
                if c.data.is_some() {
                    prop_assert!(c.length <= unit * max_units);
                }
                pos = c.end();
            }
            prop_assert_eq!(pos, size);
            prop_assert_eq!(flatten(&chunks, disk.bytes.len()), disk.bytes.clone());
        }
    }
}
