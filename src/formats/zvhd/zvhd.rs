//! ZVHD: a header page, one record per non-zero 2 MiB block, and a copy of the header as the
//! footer. The records' payloads are consecutive pieces of a single zlib stream (each ends with a
//! sync flush, the stream is never finished), so a block can only be decoded after every block
//! before it: the reader is a [`ChunkStream`] over any [`Read`], a pipe included, and the writer
//! compresses sequentially.
//!
//! `info` reads only the header; [`scan_records`] walks the record heads (one page read per
//! record, nothing inflated) to say which blocks hold data without checking that they decode.
//! The format is described in `formats/zvhd.md`.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress};

use super::info::ZvhdInfo;
use crate::block::{
    BlockReader, BlockWriter, Chunk, ChunkStream, Extent, ExtentState, Piece, push_extent,
};
use crate::error::{Error, Result};
use crate::formats::info::FormatInfo;
use crate::io::AppendSink;
use crate::storage::{Storage, StorageReader, read_exact_at};

use super::header::{self, FIELDS_LEN, Kind, ZvhdHeader, verify_checksum};
use super::record::{self, RECORD_PREFIX, RecordHead};
use super::{BLOCK_SIZE, Blocks, PAGE, ZvhdCreateOptions};
use crate::limits::MAX_ZVHD_RECORD_LEN;

/// The shortest ZVHD file: header and footer.
pub const MIN_FILE_LEN: u64 = 2 * PAGE;
/// The deflate level of the stream (zlib's default).
const DEFLATE_LEVEL: u32 = 6;

/// Where the reader is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading records.
    Records,
    /// The footer was found; the zeros up to the end of the disk are still to be given.
    Footer,
    Done,
    /// An error stopped the stream; the deflate state is lost.
    Failed,
}

/// Reads a ZVHD image front to back from any byte source.
pub struct ZvhdStream<R: Read + Send> {
    input: R,
    /// The file's length, when the source is a file.
    length: Option<u64>,
    header: ZvhdHeader,
    /// The image's storage, to scan record heads with for `info` (random-access sources only).
    scan: Option<Arc<dyn Storage>>,
    /// File offset of the next page.
    pos: u64,
    /// Disk offset up to which chunks have been given.
    next: u64,
    /// The block of the last record read.
    last_blk: Option<u64>,
    state: State,
    inflater: Decompress,
    /// The record being read.
    record: Vec<u8>,
    /// A data chunk to give after the zero chunk that precedes it.
    held: Option<Chunk>,
}

impl ZvhdStream<StorageReader> {
    /// Opens a ZVHD image in random-access storage: checks its length and header.
    pub fn open(storage: Arc<dyn Storage>) -> Result<Self> {
        let length = storage.len();
        if length < MIN_FILE_LEN {
            return Err(Error::truncated("zvhd file", 0, MIN_FILE_LEN, length));
        }
        if !length.is_multiple_of(PAGE) {
            return Err(Error::malformed(
                "zvhd file",
                length,
                "length is not a whole number of 4096-byte pages",
            ));
        }
        let mut stream = ZvhdStream::start(StorageReader::new(storage.clone()), Some(length))?;
        stream.scan = Some(storage);
        Ok(stream)
    }
}

impl<R: Read + Send> ZvhdStream<R> {
    /// Starts reading a ZVHD image from `input` (a pipe, a socket, a file): reads and checks
    /// the header page.
    pub fn new(input: R) -> Result<Self> {
        ZvhdStream::start(input, None)
    }

    fn start(mut input: R, length: Option<u64>) -> Result<Self> {
        let mut page = vec![0u8; PAGE as usize];
        read_full(&mut input, &mut page, 0, "zvhd header")?;
        let mut fields = [0u8; FIELDS_LEN];
        fields.copy_from_slice(&page[..FIELDS_LEN]);
        let header = ZvhdHeader::decode(&fields);
        header.check_cookie(Kind::Zvhd, "zvhd header", 0)?;
        verify_checksum(&fields, "zvhd header", 0)?;
        header.check_sizes("zvhd header", 0)?;
        Ok(ZvhdStream {
            input,
            length,
            header,
            scan: None,
            pos: PAGE,
            next: 0,
            last_blk: None,
            state: State::Records,
            inflater: Decompress::new(true),
            record: Vec::new(),
            held: None,
        })
    }

    /// The header.
    pub fn header(&self) -> &ZvhdHeader {
        &self.header
    }

    /// Reads the next record, or the footer. Returns the block decoded, if any.
    fn next_record(&mut self) -> Result<Option<(u64, Bytes)>> {
        let at = self.pos;
        self.record.clear();
        self.record.resize(PAGE as usize, 0);
        if let Some(len) = self.length
            && at.checked_add(PAGE).is_none_or(|end| end > len)
        {
            return Err(Error::truncated(
                "zvhd record or footer",
                at,
                PAGE,
                len.saturating_sub(at),
            ));
        }
        read_full(
            &mut self.input,
            &mut self.record,
            at,
            "zvhd record or footer",
        )?;
        if !self.record.starts_with(&RECORD_PREFIX) {
            if self
                .record
                .starts_with(&header::ZVHD_COOKIE[..header::COOKIE_COMPARED])
            {
                return Ok(None);
            }
            return Err(Error::malformed(
                "zvhd record",
                at,
                "page is neither a record (\"hwstream bg\") nor the footer (\"stream\")",
            ));
        }
        let head = RecordHead::decode(&self.record, at)?;
        let record_len = head.record_len(at)?;
        if let Some(len) = self.length
            && at.checked_add(record_len).is_none_or(|end| end > len)
        {
            return Err(Error::truncated(
                "zvhd record",
                at,
                record_len,
                len.saturating_sub(at),
            ));
        }
        let blk = u64::from(head.blk);
        if blk >= self.header.blocks() {
            return Err(Error::malformed(
                "zvhd record",
                at,
                format!(
                    "holds block {blk}, the disk has {} blocks",
                    self.header.blocks()
                ),
            ));
        }
        if self.last_blk.is_some_and(|last| blk <= last) {
            return Err(Error::malformed(
                "zvhd record",
                at,
                format!(
                    "holds block {blk} after block {}: records must be in increasing block order",
                    self.last_blk.unwrap_or(0)
                ),
            ));
        }
        // record_len ≤ MAX_ZVHD_RECORD_LEN, so this fits.
        let total = usize::try_from(record_len.min(MAX_ZVHD_RECORD_LEN)).unwrap_or(PAGE as usize);
        self.record.resize(total, 0);
        read_full(
            &mut self.input,
            &mut self.record[PAGE as usize..],
            at + PAGE,
            "zvhd record",
        )?;
        let payload = record::payload(&self.record, &head, at)?;
        let mut block = record::block_buffer();
        record::inflate_block(&mut self.inflater, payload, &mut block, at)?;
        block.truncate(BLOCK_SIZE as usize);
        self.pos = at + record_len;
        self.last_blk = Some(blk);
        Ok(Some((blk, Bytes::from(block))))
    }

    fn step(&mut self) -> Result<Option<Chunk>> {
        if let Some(chunk) = self.held.take() {
            self.next = chunk.end();
            return Ok(Some(chunk));
        }
        let size = self.header.curr_size;
        match self.state {
            State::Done => Ok(None),
            State::Failed => Err(Error::malformed(
                "zvhd record",
                self.pos,
                "the stream stopped at an earlier error",
            )),
            State::Footer => {
                self.state = State::Done;
                if self.next < size {
                    let chunk = Chunk::zero(self.next, size - self.next);
                    self.next = size;
                    return Ok(Some(chunk));
                }
                Ok(None)
            }
            State::Records => match self.next_record()? {
                None => {
                    self.state = State::Footer;
                    self.step()
                }
                Some((blk, data)) => {
                    let start = blk * BLOCK_SIZE;
                    let chunk = Chunk::data(start, data);
                    if start > self.next {
                        let zeros = Chunk::zero(self.next, start - self.next);
                        self.next = start;
                        self.held = Some(chunk);
                        return Ok(Some(zeros));
                    }
                    self.next = chunk.end();
                    Ok(Some(chunk))
                }
            },
        }
    }
}

impl<R: Read + Send> ChunkStream for ZvhdStream<R> {
    /// `curr_size`: the size rounded up to a GiB, which the reference reports.
    fn virtual_size(&self) -> u64 {
        self.header.curr_size
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        let result = self.step();
        if result.is_err() {
            self.state = State::Failed;
            self.held = None;
        }
        result
    }

    fn info(&self) -> Option<FormatInfo> {
        let h = &self.header;
        let mut info = ZvhdInfo {
            orig_size: h.orig_size,
            creation_time: h.unix_time(),
            uuid: uuid::Uuid::from_bytes(h.uuid).hyphenated().to_string(),
            creator: h.creator(),
            block_size: BLOCK_SIZE,
            data_blocks: None,
            scan_error: None,
            note: None,
        };
        match &self.scan {
            Some(storage) => match scan_records(&**storage) {
                Ok(scan) => {
                    info.data_blocks = Some(scan.data_blocks);
                    info.note = Some(
                        "ZVHD is one deflate stream: data-blocks comes from the record heads; \
                         the data itself is checked only when it is read"
                            .into(),
                    );
                }
                Err(e) => info.scan_error = Some(e.to_string()),
            },
            None => {
                info.note = Some(
                    "ZVHD is one deflate stream: only the header is read until the data is".into(),
                )
            }
        }
        Some(FormatInfo::Zvhd(info))
    }
}

/// Reads exactly `buf.len()` bytes; the end of input is a [`Error::Truncated`] naming
/// `structure` at file offset `at`.
fn read_full(
    input: &mut impl Read,
    buf: &mut [u8],
    at: u64,
    structure: &'static str,
) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(Error::truncated(
                    structure,
                    at,
                    buf.len() as u64,
                    done as u64,
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", e)),
        }
    }
    Ok(())
}

/// What [`scan_records`] finds without inflating anything.
#[derive(Debug, Clone)]
pub struct RecordScan {
    /// The header at the start of the file.
    pub header: ZvhdHeader,
    /// How many records (non-zero blocks) there are.
    pub data_blocks: u64,
    /// The disk's extents up to `curr_size`: blocks with a record are `Data` (compressed, with
    /// no host offset: they cannot be read in place), the rest `Zero`.
    pub extents: Vec<Extent>,
}

/// Walks a ZVHD file's record heads (one page read each, nothing inflated) and says which
/// blocks hold data. The records' framing is checked as the reader checks it; their payloads
/// are not.
pub fn scan_records(file: &dyn Storage) -> Result<RecordScan> {
    let length = file.len();
    if length < MIN_FILE_LEN {
        return Err(Error::truncated("zvhd file", 0, MIN_FILE_LEN, length));
    }
    let mut page = vec![0u8; PAGE as usize];
    read_exact_at(file, &mut page, 0, "zvhd header")?;
    let mut fields = [0u8; FIELDS_LEN];
    fields.copy_from_slice(&page[..FIELDS_LEN]);
    let header = ZvhdHeader::decode(&fields);
    header.check_cookie(Kind::Zvhd, "zvhd header", 0)?;
    verify_checksum(&fields, "zvhd header", 0)?;
    header.check_sizes("zvhd header", 0)?;
    let mut extents = Vec::new();
    let mut data_blocks = 0u64;
    let mut next = 0u64;
    let mut pos = PAGE;
    let mut last: Option<u64> = None;
    let mut postfix = [0u8; 4];
    loop {
        read_exact_at(file, &mut page, pos, "zvhd record or footer")?;
        if !page.starts_with(&RECORD_PREFIX) {
            if page.starts_with(&header::ZVHD_COOKIE[..header::COOKIE_COMPARED]) {
                break;
            }
            return Err(Error::malformed(
                "zvhd record",
                pos,
                "page is neither a record (\"hwstream bg\") nor the footer (\"stream\")",
            ));
        }
        let head = RecordHead::decode(&page, pos)?;
        let len = head.record_len(pos)?;
        let blk = u64::from(head.blk);
        if blk >= header.blocks() || last.is_some_and(|l| blk <= l) {
            return Err(Error::malformed(
                "zvhd record",
                pos,
                format!("block {blk} is out of order or past the disk"),
            ));
        }
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= length)
            .ok_or_else(|| Error::truncated("zvhd record", pos, len, length.saturating_sub(pos)))?;
        read_exact_at(file, &mut postfix, end - 4, "zvhd record")?;
        if postfix != record::RECORD_POSTFIX {
            return Err(Error::malformed(
                "zvhd record",
                pos,
                "does not end with \"end\"",
            ));
        }
        let start = blk * BLOCK_SIZE;
        push_extent(
            &mut extents,
            Extent::new(next, start - next, ExtentState::Zero),
        );
        push_extent(
            &mut extents,
            Extent {
                compressed: true,
                ..Extent::new(start, BLOCK_SIZE, ExtentState::Data)
            },
        );
        next = start + BLOCK_SIZE;
        data_blocks += 1;
        last = Some(blk);
        pos = end;
    }
    push_extent(
        &mut extents,
        Extent::new(next, header.curr_size - next, ExtentState::Zero),
    );
    Ok(RecordScan {
        header,
        data_blocks,
        extents,
    })
}

/// A ZVHD file's map, from [`scan_records`]: what `ims map` can say about a ZVHD image without
/// inflating it. It is a [`BlockReader`] for `map` only: its `read_at` fails, because ZVHD
/// blocks can only be decoded front to back ([`ZvhdStream`]).
pub struct RecordMap {
    scan: RecordScan,
}

impl RecordMap {
    /// Scans `file`'s record heads.
    pub fn open(file: &dyn Storage) -> Result<Self> {
        Ok(RecordMap {
            scan: scan_records(file)?,
        })
    }

    /// What the scan found.
    pub fn scan(&self) -> &RecordScan {
        &self.scan
    }
}

impl BlockReader for RecordMap {
    fn virtual_size(&self) -> u64 {
        self.scan.header.curr_size
    }

    fn read_at(&self, _buf: &mut [u8], offset: u64) -> Result<()> {
        Err(Error::unsupported(format!(
            "reading a ZVHD image at offset {offset}: its blocks decode only front to back"
        )))
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.virtual_size());
        let extents = &self.scan.extents;
        let first = extents.partition_point(|e| e.end() <= offset);
        let mut out = Vec::new();
        for e in extents.get(first..).unwrap_or_default() {
            if e.start >= end {
                break;
            }
            let start = e.start.max(offset);
            let stop = e.end().min(end);
            push_extent(
                &mut out,
                Extent {
                    start,
                    length: stop - start,
                    ..*e
                },
            );
        }
        Ok(out)
    }
}

/// Writes a ZVHD image to any append-only sink.
///
/// The whole image is one deflate stream, so blocks are compressed here, in order, on the
/// pipeline's writer thread: ZVHD has no [`UnitEncoder`](crate::block::UnitEncoder) and its
/// compression does not run in parallel.
pub struct ZvhdWriter<S: AppendSink> {
    sink: S,
    size: u64,
    /// The header page, written again as the footer.
    header_page: Vec<u8>,
    blocks: Blocks,
    deflater: Compress,
    /// The compressed payload of the current block.
    payload: Vec<u8>,
}

impl<S: AppendSink> ZvhdWriter<S> {
    /// Starts an image of `size` bytes (rounded up to 512 in `orig_size`) and writes its
    /// header.
    pub fn new(mut sink: S, size: u64, options: &ZvhdCreateOptions) -> Result<Self> {
        let orig_size = header::orig_size_for(size)
            .filter(|&s| s > 0)
            .ok_or_else(|| Error::InvalidArgument(format!("a ZVHD disk cannot be {size} bytes")))?;
        let mut h = ZvhdHeader::new(
            Kind::Zvhd,
            orig_size,
            options.timestamp_field()?,
            options.uuid_field(),
            0,
        )?;
        h.seal();
        let header_page = h.page();
        sink.append(&header_page)?;
        Ok(ZvhdWriter {
            sink,
            size,
            header_page,
            blocks: Blocks::new(size),
            deflater: Compress::new_with_window_bits(Compression::new(DEFLATE_LEVEL), true, 15),
            payload: Vec::new(),
        })
    }

    /// Compresses one block onto the stream and appends its record.
    fn write_block(
        sink: &mut S,
        deflater: &mut Compress,
        payload: &mut Vec<u8>,
        blk: u64,
        data: &[u8],
    ) -> Result<()> {
        deflate_sync(deflater, data, payload)?;
        let blk = u32::try_from(blk)
            .map_err(|_| Error::InvalidArgument(format!("block {blk} is past 2^32 blocks")))?;
        sink.append(&record::encode_record(blk, payload)?)
    }
}

/// Feeds `input` to `deflater` and sync-flushes it; `out` receives what comes out.
pub(crate) fn deflate_sync(deflater: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    // Room for incompressible data in one call: deflate adds a few bytes per 16 KiB.
    out.reserve(input.len() + input.len() / 256 + 1024);
    let mut consumed = 0usize;
    loop {
        let before = deflater.total_in();
        deflater
            .compress_vec(&input[consumed..], out, FlushCompress::Sync)
            .map_err(|e| Error::Internal(format!("deflate: {e}")))?;
        consumed += usize::try_from(deflater.total_in() - before).unwrap_or(0);
        // The flush is complete once deflate stops with room to spare.
        if consumed == input.len() && out.len() < out.capacity() {
            return Ok(());
        }
        out.reserve(64 << 10);
    }
}

impl<S: AppendSink> BlockWriter for ZvhdWriter<S> {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn unit_size(&self) -> u64 {
        BLOCK_SIZE
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        let ZvhdWriter {
            sink,
            blocks,
            deflater,
            payload,
            ..
        } = self;
        let mut emit =
            |blk: u64, data: &[u8]| Self::write_block(sink, deflater, payload, blk, data);
        match piece {
            Piece::Data { offset, data } => blocks.data(offset, &data, &mut emit),
            Piece::Zero { offset, length } => blocks.zero(offset, length, &mut emit),
            Piece::Encoded { .. } => Err(Error::Internal(
                "zvhd compresses its own blocks; it takes no encoded units".into(),
            )),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let ZvhdWriter {
            sink,
            blocks,
            deflater,
            payload,
            header_page,
            ..
        } = &mut *self;
        let mut emit =
            |blk: u64, data: &[u8]| Self::write_block(sink, deflater, payload, blk, data);
        blocks.finish(&mut emit)?;
        sink.append(header_page)?;
        sink.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &[u8] = include_bytes!("../../../testdata/zvhd/tiny.zvhd");

    fn collect(mut s: impl ChunkStream) -> Result<Vec<Chunk>> {
        let mut out = Vec::new();
        while let Some(c) = s.next_chunk()? {
            out.push(c);
        }
        Ok(out)
    }

    #[test]
    fn tiny_reads_from_a_byte_stream() {
        let s = ZvhdStream::new(TINY).unwrap();
        assert_eq!(s.virtual_size(), 1 << 30);
        assert_eq!(s.header().orig_size, 5 * (1 << 20) + 512);
        let chunks = collect(s).unwrap();
        let kinds: Vec<(u64, u64, bool)> = chunks
            .iter()
            .map(|c| (c.offset, c.length, c.data.is_some()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (0, BLOCK_SIZE, true),
                (BLOCK_SIZE, BLOCK_SIZE, false),
                (2 * BLOCK_SIZE, BLOCK_SIZE, true),
                (3 * BLOCK_SIZE, (1 << 30) - 3 * BLOCK_SIZE, false),
            ]
        );
        let b0 = chunks[0].data.as_ref().unwrap();
        assert!(b0.starts_with(b"ZVHD test vector: the quick brown fox"));
        // Past orig_size the last block is zero.
        let b2 = chunks[2].data.as_ref().unwrap();
        assert!(b2[(1 << 20) + 512..].iter().all(|&x| x == 0));
    }

    #[test]
    fn a_failure_poisons_the_rest() {
        let mut bad = TINY.to_vec();
        // Corrupt record 2's payload (at 12288 + 48).
        bad[12288 + 60] ^= 0xff;
        let mut s = ZvhdStream::new(&bad[..]).unwrap();
        assert!(s.next_chunk().unwrap().is_some());
        let mut saw_error = false;
        for _ in 0..4 {
            if s.next_chunk().is_err() {
                saw_error = true;
                break;
            }
        }
        assert!(saw_error);
        assert!(s.next_chunk().is_err());
    }

    /// The pinned creation options of the reference vectors.
    fn pinned() -> ZvhdCreateOptions {
        ZvhdCreateOptions {
            timestamp: Some(1_700_000_000),
            uuid: Some(
                *uuid::Uuid::parse_str("5a7e6b1c-2d3e-4f50-a1b2-c3d4e5f60718")
                    .unwrap()
                    .as_bytes(),
            ),
            ..Default::default()
        }
    }

    /// (blk, payload) of every record of a ZVHD file.
    fn records(file: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = PAGE as usize;
        while file[pos..].starts_with(&RECORD_PREFIX) {
            let head = RecordHead::decode(&file[pos..], pos as u64).unwrap();
            let len = head.record_len(0).unwrap() as usize;
            let p = record::payload(&file[pos..pos + len], &head, 0).unwrap();
            out.push((head.blk, p.to_vec()));
            pos += len;
        }
        out
    }

    /// The writer's framing (header, records with the reference's padding, footer) given the
    /// reference's own payloads is the vector, byte for byte, whatever deflate library is linked.
    #[test]
    fn framing_is_byte_exact() {
        for (file, size) in [
            (TINY, 5 * (1u64 << 20) + 512),
            (
                &include_bytes!("../../../testdata/zvhd/sparse.zvhd")[..],
                64 << 20,
            ),
            (
                &include_bytes!("../../../testdata/zvhd/empty.zvhd")[..],
                3 << 20,
            ),
        ] {
            let mut out = Vec::new();
            {
                let sink = crate::io::PipeSink::new(&mut out);
                let mut w = Box::new(ZvhdWriter::new(sink, size, &pinned()).unwrap());
                for (blk, payload) in records(file) {
                    w.sink
                        .append(&record::encode_record(blk, &payload).unwrap())
                        .unwrap();
                }
                w.blocks.next = size;
                w.finish().unwrap();
            }
            assert!(out == file, "{size}-byte vector differs");
        }
    }

    /// With a deflate library that writes what zlib 1.2.13 writes, the whole file is the
    /// vector; with another one (zlib-rs), the payloads differ and only the framing is checked.
    #[test]
    fn output_is_the_vector_when_deflate_matches_zlib() {
        let disk: Vec<u8> = collect(ZvhdStream::new(TINY).unwrap())
            .unwrap()
            .into_iter()
            .take(3)
            .flat_map(|c| match c.data {
                Some(d) => d.to_vec(),
                None => vec![0; c.length as usize],
            })
            .collect();
        let size = 5 * (1u64 << 20) + 512;
        let mut deflater =
            Compress::new_with_window_bits(Compression::new(DEFLATE_LEVEL), true, 15);
        let mut first = Vec::new();
        deflate_sync(&mut deflater, &disk[..BLOCK_SIZE as usize], &mut first).unwrap();
        if first != records(TINY)[0].1 {
            eprintln!(
                "skipping the whole-file comparison: this deflate library compresses differently from zlib 1.2.13 (framing_is_byte_exact checks the rest)"
            );
            return;
        }
        let mut out = Vec::new();
        {
            let sink = crate::io::PipeSink::new(&mut out);
            let mut w: Box<dyn BlockWriter> =
                Box::new(ZvhdWriter::new(sink, size, &pinned()).unwrap());
            w.write_piece(Piece::Data {
                offset: 0,
                data: Bytes::copy_from_slice(&disk[..size as usize]),
            })
            .unwrap();
            w.finish().unwrap();
        }
        assert!(out == TINY);
    }

    #[test]
    fn scan_sees_records_without_inflating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.zvhd");
        std::fs::write(&path, TINY).unwrap();
        let scan = scan_records(&crate::storage::FileStorage::open(&path).unwrap()).unwrap();
        assert_eq!(scan.data_blocks, 2);
        let data: Vec<(u64, u64)> = scan
            .extents
            .iter()
            .filter(|e| e.state == ExtentState::Data)
            .map(|e| (e.start, e.length))
            .collect();
        assert_eq!(data, vec![(0, BLOCK_SIZE), (2 * BLOCK_SIZE, BLOCK_SIZE)]);
        crate::block::check_map(&scan.extents, 0, 1 << 30).unwrap();
        let map = RecordMap::open(&crate::storage::FileStorage::open(&path).unwrap()).unwrap();
        let window = map.map(BLOCK_SIZE + 5, 2 * BLOCK_SIZE).unwrap();
        crate::block::check_map(&window, BLOCK_SIZE + 5, 2 * BLOCK_SIZE).unwrap();
        assert_eq!(window.len(), 3);
        assert_eq!(window[1].state, ExtentState::Data);
        let mut buf = [0u8; 512];
        assert_eq!(map.read_at(&mut buf, 0).unwrap_err().kind(), "unsupported");
        let s =
            ZvhdStream::open(Arc::new(crate::storage::FileStorage::open(&path).unwrap())).unwrap();
        let info = s.info().map(|i| serde_json::to_value(i).unwrap()).unwrap();
        assert_eq!(info["data"]["data-blocks"], 2);
        assert_eq!(info["data"]["creation-time"], 1_700_000_000u64);
    }
}
