//! ZVHD2: a header page, one independently compressed record per non-zero 2 MiB block, then a
//! middle footer, the index, the block bitmap and the final footer in the last page. The final
//! footer says where the index and the bitmap are; the bitmap says which blocks have a record
//! and the index where it is, so any block can be read on its own.
//!
//! [`Zvhd2Reader::open`] checks the final footer, loads the bitmap and walks the whole index
//! once (16 bytes per data block), so every rule that relates entries to each other is checked
//! before the first read; reads then fetch one entry and one record per block. The format is
//! described in `formats/zvhd.md`.

use std::sync::Arc;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress};

use super::info::Zvhd2Info;
use crate::block::{BlockWriter, Piece, UnitEncoder};
use crate::error::{Error, Result};
use crate::formats::info::FormatInfo;
use crate::io::AppendSink;
use crate::mapped::{MappedDisk, MappedReader, Mapping, Segment, Unit, only_file};
use crate::storage::{MemoryStorage, Storage, read_exact_at};

use super::header::{
    self, FIELDS_LEN, Kind, NON_ZERO_BLK_NUM_OFFSET, ZVHD2_VERSION, ZvhdHeader, verify_checksum,
};
use super::index::{
    BITMAP_SEG_SIZE, BLOCKS_PER_BITMAP_SEG, Bitmap, INDEX_ENTRIES_PER_SEG, INDEX_ENTRY_LEN,
    INDEX_SEG_SIZE, IndexEntry, bitmap_segment,
};
use super::record::{self, RecordHead};
use super::zvhd::deflate_sync;
use super::{BLOCK_SIZE, Blocks, PAGE, Zvhd2Compression, ZvhdCreateOptions};
use crate::limits::{MAX_ZVHD_RECORD_LEN, MAX_ZVHD2_BITMAP_LEN};

/// The shortest ZVHD2 file: header, middle footer, one bitmap segment, final footer.
pub const MIN_FILE_LEN: u64 = 4 * PAGE;
/// The zlib level of ZVHD2 blocks.
const ZLIB_LEVEL: u32 = 1;
/// The zstd level of ZVHD2 blocks (the library's default, which the reference asks for).
const ZSTD_LEVEL: i32 = 3;
/// Index bytes read at a time while checking the index at open.
const INDEX_READ_CHUNK: usize = 64 << 10;

/// Reads a ZVHD2 image at any offset.
pub type Zvhd2Reader = MappedReader<Zvhd2Disk>;

impl MappedReader<Zvhd2Disk> {
    /// Opens a ZVHD2 image.
    pub fn open(storage: Arc<dyn Storage>) -> Result<Self> {
        let length = storage.len();
        Ok(MappedReader::new(
            Zvhd2Disk::from_storage(storage, length)?,
            None,
        ))
    }

    /// Opens a ZVHD2 image held in memory (for tests and fuzzing).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Result<Self> {
        Zvhd2Reader::open(Arc::new(MemoryStorage::new(bytes.into())))
    }

    /// The final footer.
    pub fn footer(&self) -> &ZvhdHeader {
        &self.disk().footer
    }

    /// How the blocks are compressed.
    pub fn compression(&self) -> Zvhd2Compression {
        self.disk().compression
    }
}

/// What a ZVHD2 image's bitmap and index say about each block of its disk.
pub struct Zvhd2Disk {
    storage: Arc<dyn Storage>,
    footer: ZvhdHeader,
    compression: Zvhd2Compression,
    bitmap: Bitmap,
    /// Records lie in `[PAGE, data_end)`: before the middle footer.
    data_end: u64,
}

impl Zvhd2Disk {
    fn from_storage(storage: Arc<dyn Storage>, length: u64) -> Result<Self> {
        if length < MIN_FILE_LEN {
            return Err(Error::truncated("zvhd2 file", 0, MIN_FILE_LEN, length));
        }
        if !length.is_multiple_of(PAGE) {
            return Err(Error::malformed(
                "zvhd2 file",
                length,
                "length is not a whole number of 4096-byte pages",
            ));
        }
        // The header: only its cookie and version count (the reference never checks its
        // checksum; a version of 0 would make it read the index fields from the header).
        let mut fields = [0u8; FIELDS_LEN];
        read_exact_at(&*storage, &mut fields, 0, "zvhd2 header")?;
        let head = ZvhdHeader::decode(&fields);
        head.check_cookie(Kind::Zvhd2, "zvhd2 header", 0)?;
        if head.zvhd2_version == 0 {
            return Err(Error::malformed(
                "zvhd2 header",
                0,
                "zvhd2_version is 0 (an image whose index is described by its header cannot be read)",
            ));
        }
        let at = length - PAGE;
        read_exact_at(&*storage, &mut fields, at, "zvhd2 footer")?;
        let footer = ZvhdHeader::decode(&fields);
        footer.check_cookie(Kind::Zvhd2, "zvhd2 footer", at)?;
        verify_checksum(&fields, "zvhd2 footer", at)?;
        let compression = check_footer(&footer, at)?;

        let bitmap_len = u64::from(footer.bitmap_size);
        if bitmap_len > MAX_ZVHD2_BITMAP_LEN {
            return Err(Error::limit(
                "zvhd2 bitmap",
                footer.bitmap_lba,
                format!("{bitmap_len} bytes is over {MAX_ZVHD2_BITMAP_LEN}"),
            ));
        }
        let mut bytes = vec![0u8; usize::try_from(bitmap_len).unwrap_or(0)];
        read_exact_at(&*storage, &mut bytes, footer.bitmap_lba, "zvhd2 bitmap")?;
        let bitmap = Bitmap::new(
            bytes,
            u64::from(footer.max_blk_num),
            u64::from(footer.non_zero_blk_num),
            footer.bitmap_lba,
        )?;
        let data_end = footer.index_lba.saturating_sub(PAGE);
        let reader = Zvhd2Disk {
            storage,
            footer,
            compression,
            bitmap,
            data_end,
        };
        reader.check_index()?;
        Ok(reader)
    }

    /// Walks the index once: entry k holds the k-th block with a bit set, and records follow
    /// each other without overlapping, inside the data area.
    fn check_index(&self) -> Result<()> {
        let count = u64::from(self.footer.non_zero_blk_num);
        let mut blocks = self.bitmap.set_blocks();
        let mut buf = vec![0u8; INDEX_READ_CHUNK];
        let mut previous_end = PAGE;
        let mut k = 0u64;
        while k < count {
            let n = (count - k).min(INDEX_READ_CHUNK as u64 / INDEX_ENTRY_LEN);
            let bytes = usize::try_from(n * INDEX_ENTRY_LEN).unwrap_or(0);
            let chunk = buf.get_mut(..bytes).unwrap_or_default();
            let at = self.entry_offset(k)?;
            read_exact_at(&*self.storage, chunk, at, "zvhd2 index")?;
            for (i, raw) in chunk.chunks_exact(INDEX_ENTRY_LEN as usize).enumerate() {
                let entry_at = at + i as u64 * INDEX_ENTRY_LEN;
                let mut fixed = [0u8; INDEX_ENTRY_LEN as usize];
                fixed.copy_from_slice(raw);
                let entry = IndexEntry::decode(&fixed);
                let Some(blk) = blocks.next() else {
                    return Err(Error::malformed(
                        "zvhd2 index",
                        entry_at,
                        "more entries than bits set in the bitmap",
                    ));
                };
                entry.check(blk, self.data_end, entry_at)?;
                if entry.blk_offset < previous_end {
                    return Err(Error::malformed(
                        "zvhd2 index entry",
                        entry_at,
                        format!(
                            "record at {} overlaps or precedes the record before it (which ends at {previous_end})",
                            entry.blk_offset
                        ),
                    ));
                }
                previous_end = entry.end().unwrap_or(u64::MAX);
            }
            k += n;
        }
        Ok(())
    }

    /// The file offset of index entry `k`.
    fn entry_offset(&self, k: u64) -> Result<u64> {
        k.checked_mul(INDEX_ENTRY_LEN)
            .and_then(|o| o.checked_add(self.footer.index_lba))
            .ok_or_else(|| {
                Error::malformed(
                    "zvhd2 index",
                    self.footer.index_lba,
                    "entry offset overflows",
                )
            })
    }

    /// Reads, checks and decodes block `blk`, which has its bit set.
    fn decode_block(&self, blk: u64, out: &mut [u8]) -> Result<()> {
        let k = self.bitmap.rank(blk);
        let at = self.entry_offset(k)?;
        let mut raw = [0u8; INDEX_ENTRY_LEN as usize];
        read_exact_at(&*self.storage, &mut raw, at, "zvhd2 index entry")?;
        let entry = IndexEntry::decode(&raw);
        entry.check(blk, self.data_end, at)?;
        let len = u64::from(entry.blk_disk_size).min(MAX_ZVHD_RECORD_LEN);
        let offset = entry.blk_offset;
        // The record is read into this thread's scratch buffer: it is used at once.
        crate::io::with_scratch(usize::try_from(len).unwrap_or(0), |rec| {
            read_exact_at(&*self.storage, rec, offset, "zvhd2 record")?;
            let head = RecordHead::decode(rec, offset)?;
            if u64::from(head.blk) != blk {
                return Err(Error::malformed(
                    "zvhd2 record",
                    offset,
                    format!("holds block {} where the index says block {blk}", head.blk),
                ));
            }
            let payload = record::payload(rec, &head, offset)?;
            match self.compression {
                // zstd stops at the end of `out`: a payload that decodes to more is refused.
                Zvhd2Compression::Zstd => record::unzstd_block(payload, out, offset),
                // inflate needs a spare byte to notice a payload that inflates past a block.
                Zvhd2Compression::Zlib => {
                    let mut block = record::block_buffer();
                    record::inflate_block(&mut Decompress::new(true), payload, &mut block, offset)?;
                    let block = block.get(..out.len()).ok_or_else(|| {
                        Error::internal(format!("a zvhd2 block read into {} bytes", out.len()))
                    })?;
                    out.copy_from_slice(block);
                    Ok(())
                }
            }
        })
    }
}

/// Checks the final footer's ZVHD2 fields and where its tables lie; the footer is at `at`, the
/// last page of the file.
fn check_footer(f: &ZvhdHeader, at: u64) -> Result<Zvhd2Compression> {
    const S: &str = "zvhd2 footer";
    let bad = |problem: String| Err(Error::malformed(S, at, problem));
    f.check_sizes(S, at)?;
    if f.zvhd2_version != ZVHD2_VERSION {
        return Err(Error::unsupported(format!(
            "zvhd2 version {} (ims reads version {ZVHD2_VERSION})",
            f.zvhd2_version
        )));
    }
    if u64::from(f.block_size) != BLOCK_SIZE {
        return bad(format!("block_size {} is not 2 MiB", f.block_size));
    }
    let Some(compression) = Zvhd2Compression::from_method(f.compress_method) else {
        return Err(Error::unsupported(format!(
            "zvhd2 compress_method {} (known: 0 zlib, 1 zstd)",
            f.compress_method
        )));
    };
    if f.index_contains_zero_blk != 0 {
        return Err(Error::unsupported(
            "zvhd2 with index_contains_zero_blk set (an index entry for every block)",
        ));
    }
    if u64::from(f.max_blk_num) != f.blocks() {
        return bad(format!(
            "max_blk_num {} is not orig_size / 2 MiB rounded up ({})",
            f.max_blk_num,
            f.blocks()
        ));
    }
    if f.index_seg_size != INDEX_SEG_SIZE || f.bitmap_seg_size != BITMAP_SEG_SIZE {
        return bad(format!(
            "segment sizes {} and {} are not {INDEX_SEG_SIZE} and {BITMAP_SEG_SIZE}",
            f.index_seg_size, f.bitmap_seg_size
        ));
    }
    let index_segs = u64::from(f.non_zero_blk_num).div_ceil(INDEX_ENTRIES_PER_SEG);
    if u64::from(f.index_seg_num) != index_segs
        || u64::from(f.index_size) != u64::from(f.index_seg_num) * u64::from(INDEX_SEG_SIZE)
    {
        return bad(format!(
            "index of {} segments, {} bytes, does not fit {} data blocks",
            f.index_seg_num, f.index_size, f.non_zero_blk_num
        ));
    }
    let bitmap_segs = u64::from(f.max_blk_num).div_ceil(BLOCKS_PER_BITMAP_SEG);
    if u64::from(f.bitmap_seg_num) != bitmap_segs
        || u64::from(f.bitmap_size) != u64::from(f.bitmap_seg_num) * u64::from(BITMAP_SEG_SIZE)
    {
        return bad(format!(
            "bitmap of {} segments, {} bytes, does not fit {} blocks",
            f.bitmap_seg_num, f.bitmap_size, f.max_blk_num
        ));
    }
    // Header, records, middle footer, index, bitmap, then the final footer at `at`.
    let index_end = f.index_lba.checked_add(u64::from(f.index_size));
    let bitmap_end = f.bitmap_lba.checked_add(u64::from(f.bitmap_size));
    match (index_end, bitmap_end) {
        (Some(ie), Some(be))
            if f.index_lba >= PAGE && ie <= f.bitmap_lba && f.bitmap_lba >= PAGE && be <= at => {}
        _ => {
            return bad(format!(
                "index at {} ({} bytes) and bitmap at {} ({} bytes) do not lie in order between the header and the footer at {at}",
                f.index_lba, f.index_size, f.bitmap_lba, f.bitmap_size
            ));
        }
    }
    Ok(compression)
}

impl MappedDisk for Zvhd2Disk {
    /// `curr_size`: the size rounded up to a GiB, which the reference reports.
    fn virtual_size(&self) -> u64 {
        self.footer.curr_size
    }

    fn walk(&self, offset: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()> {
        let blocks = u64::from(self.footer.max_blk_num);
        let mut pos = offset;
        while pos < end {
            let blk = pos / BLOCK_SIZE;
            let unit_start = blk * BLOCK_SIZE;
            let next = (unit_start + BLOCK_SIZE).min(end);
            let mapping = if blk < blocks && self.bitmap.is_set(blk) {
                Mapping::Encoded {
                    unit: Unit {
                        source: 0,
                        id: blk,
                        at: 0,
                        len: BLOCK_SIZE,
                    },
                    unit_start,
                }
            } else {
                Mapping::Zero { host: None }
            };
            f(Segment {
                start: pos,
                length: next - pos,
                mapping,
            })?;
            pos = next;
        }
        Ok(())
    }

    fn file(&self, file: usize) -> Result<&dyn Storage> {
        only_file(&*self.storage, file)
    }

    fn decode(&self, unit: &Unit, out: &mut [u8]) -> Result<()> {
        self.decode_block(unit.id, out)
    }

    fn data_structure(&self) -> &'static str {
        "zvhd2 record"
    }

    fn info(&self) -> Option<FormatInfo> {
        let f = &self.footer;
        Some(FormatInfo::Zvhd2(Zvhd2Info {
            compression_type: self.compression.name().into(),
            orig_size: f.orig_size,
            block_size: BLOCK_SIZE,
            data_blocks: u64::from(f.non_zero_blk_num),
            creation_time: f.unix_time(),
            uuid: uuid::Uuid::from_bytes(f.uuid).hyphenated().to_string(),
            creator: f.creator(),
        }))
    }
}

/// Compresses one block on a worker: a fresh compressor per block, so the result depends only
/// on the block.
struct BlockCompressor {
    compression: Zvhd2Compression,
}

impl UnitEncoder for BlockCompressor {
    fn encode(&self, _offset: u64, unit: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(Some(compress_block(self.compression, unit)?))
    }
}

/// Compresses one block (a short last block padded with zeros) as ZVHD2 stores it. The payload
/// may be larger than the block: ZVHD2 has no uncompressed records.
pub fn compress_block(compression: Zvhd2Compression, unit: &[u8]) -> Result<Vec<u8>> {
    let block = &*crate::compress::padded(unit, BLOCK_SIZE as usize);
    match compression {
        Zvhd2Compression::Zstd => crate::compress::zstd_compress(block, ZSTD_LEVEL),
        Zvhd2Compression::Zlib => {
            let mut deflater =
                Compress::new_with_window_bits(Compression::new(ZLIB_LEVEL), true, 15);
            let mut out = Vec::new();
            deflate_sync(&mut deflater, block, &mut out)?;
            Ok(out)
        }
    }
}

/// Writes a ZVHD2 image to any append-only sink. Blocks are compressed on the pipeline's
/// workers (unit = 2 MiB); this writer only frames and appends them, and keeps one 16-byte
/// index entry per data block until the end.
pub struct Zvhd2Writer<S: AppendSink> {
    sink: S,
    size: u64,
    header: ZvhdHeader,
    compression: Zvhd2Compression,
    blocks: Blocks,
    index: Vec<IndexEntry>,
}

impl<S: AppendSink> Zvhd2Writer<S> {
    /// Starts an image of `size` bytes (rounded up to 512 in `orig_size`) and writes its
    /// header.
    pub fn new(mut sink: S, size: u64, options: &ZvhdCreateOptions) -> Result<Self> {
        let orig_size = header::orig_size_for(size)
            .filter(|&s| s > 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("a ZVHD2 disk cannot be {size} bytes"))
            })?;
        let mut h = ZvhdHeader::new(
            Kind::Zvhd2,
            orig_size,
            options.timestamp_field()?,
            options.uuid_field(),
            options.compression.method(),
        )?;
        h.seal();
        sink.append(&h.page())?;
        Ok(Zvhd2Writer {
            sink,
            size,
            header: h,
            compression: options.compression,
            blocks: Blocks::new(size),
            index: Vec::new(),
        })
    }

    fn append_record(
        sink: &mut S,
        index: &mut Vec<IndexEntry>,
        blk: u64,
        payload: &[u8],
    ) -> Result<()> {
        let blk_num = u32::try_from(blk)
            .map_err(|_| Error::InvalidArgument(format!("block {blk} is past 2^32 blocks")))?;
        let rec = record::encode_record(blk_num, payload)?;
        let blk_disk_size = u32::try_from(rec.len())
            .map_err(|_| Error::InvalidArgument("record over 4 GiB".into()))?;
        index.push(IndexEntry {
            blk_offset: sink.position(),
            blk_num,
            blk_disk_size,
        });
        sink.append(&rec)
    }
}

impl<S: AppendSink> BlockWriter for Zvhd2Writer<S> {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn unit_size(&self) -> u64 {
        BLOCK_SIZE
    }

    fn encoder(&self) -> Option<Arc<dyn UnitEncoder>> {
        Some(Arc::new(BlockCompressor {
            compression: self.compression,
        }))
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        let Zvhd2Writer {
            sink,
            blocks,
            index,
            compression,
            ..
        } = self;
        let compression = *compression;
        let mut emit = |blk: u64, data: &[u8]| {
            let payload = compress_block(compression, data)?;
            Self::append_record(sink, index, blk, &payload)
        };
        match piece {
            Piece::Data { offset, data } => blocks.data(offset, &data, &mut emit),
            Piece::Zero { offset, length } => blocks.zero(offset, length, &mut emit),
            Piece::Encoded {
                offset,
                length,
                payload,
            } => {
                // A whole block, or the short last one, encoded by `BlockCompressor`.
                let end = offset.saturating_add(length);
                if !offset.is_multiple_of(BLOCK_SIZE)
                    || !(length == BLOCK_SIZE || (end == self.size && length < BLOCK_SIZE))
                {
                    return Err(Error::Internal(format!(
                        "zvhd2 writer got an encoded unit of {length} bytes at {offset}"
                    )));
                }
                blocks.expect(offset, length)?;
                blocks.next = end;
                Self::append_record(sink, index, offset / BLOCK_SIZE, &payload)
            }
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let Zvhd2Writer {
            sink,
            blocks,
            index,
            compression,
            header,
            ..
        } = &mut *self;
        let compression = *compression;
        let mut emit = |blk: u64, data: &[u8]| {
            let payload = compress_block(compression, data)?;
            Self::append_record(sink, index, blk, &payload)
        };
        blocks.finish(&mut emit)?;

        let non_zero = u32::try_from(index.len())
            .map_err(|_| Error::InvalidArgument("more than 2^32 data blocks".into()))?;
        let index_seg_num = u64::from(non_zero).div_ceil(INDEX_ENTRIES_PER_SEG);
        let bitmap_seg_num = u64::from(header.max_blk_num).div_ceil(BLOCKS_PER_BITMAP_SEG);
        let index_size = index_seg_num * u64::from(INDEX_SEG_SIZE);
        let bitmap_size = bitmap_seg_num * u64::from(BITMAP_SEG_SIZE);
        let too_big = |what: &str| Error::InvalidArgument(format!("zvhd2 {what} over 4 GiB"));

        // The middle footer: the header with the block count, its checksum left as it was.
        let mut middle = header.page();
        middle[NON_ZERO_BLK_NUM_OFFSET..NON_ZERO_BLK_NUM_OFFSET + 4]
            .copy_from_slice(&non_zero.to_le_bytes());
        sink.append(&middle)?;

        let index_lba = sink.position();
        let mut bytes = Vec::with_capacity(INDEX_READ_CHUNK);
        for entry in index.iter() {
            bytes.extend_from_slice(&entry.encode());
            if bytes.len() >= INDEX_READ_CHUNK {
                sink.append(&bytes)?;
                bytes.clear();
            }
        }
        sink.append(&bytes)?;
        let written = u64::from(non_zero) * INDEX_ENTRY_LEN;
        sink.append_zeros(index_size - written)?;

        let bitmap_lba = sink.position();
        let mut set = index.iter().map(|e| u64::from(e.blk_num)).peekable();
        for seg in 0..bitmap_seg_num {
            sink.append(&bitmap_segment(seg, &mut set))?;
        }

        let mut f = header.clone();
        f.index_lba = index_lba;
        f.bitmap_lba = bitmap_lba;
        f.index_size = u32::try_from(index_size).map_err(|_| too_big("index"))?;
        f.bitmap_size = u32::try_from(bitmap_size).map_err(|_| too_big("bitmap"))?;
        f.index_seg_size = INDEX_SEG_SIZE;
        f.bitmap_seg_size = BITMAP_SEG_SIZE;
        f.index_seg_num = u32::try_from(index_seg_num).map_err(|_| too_big("index"))?;
        f.bitmap_seg_num = u32::try_from(bitmap_seg_num).map_err(|_| too_big("bitmap"))?;
        f.non_zero_blk_num = non_zero;
        f.seal();
        sink.append(&f.page())?;
        sink.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockReader, ExtentState};

    const EMPTY_ZSTD: &[u8] = include_bytes!("../../../testdata/zvhd/empty.zstd.zvhd2");
    const EMPTY_ZLIB: &[u8] = include_bytes!("../../../testdata/zvhd/empty.zlib.zvhd2");

    #[test]
    fn empty_vectors_read_as_zeros() {
        for (bytes, compression) in [
            (EMPTY_ZSTD, Zvhd2Compression::Zstd),
            (EMPTY_ZLIB, Zvhd2Compression::Zlib),
        ] {
            let r = Zvhd2Reader::from_bytes(bytes.to_vec()).unwrap();
            assert_eq!(r.compression(), compression);
            assert_eq!(r.virtual_size(), 1 << 30);
            assert_eq!(r.footer().orig_size, 3 << 20);
            let map = r.map(0, 1 << 30).unwrap();
            assert_eq!(map.len(), 1);
            assert_eq!(map[0].state, ExtentState::Zero);
            let mut buf = vec![1u8; 4096];
            r.read_at(&mut buf, 0).unwrap();
            assert!(buf.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn empty_vectors_are_written_byte_for_byte() {
        for (bytes, compression) in [
            (EMPTY_ZSTD, Zvhd2Compression::Zstd),
            (EMPTY_ZLIB, Zvhd2Compression::Zlib),
        ] {
            let options = ZvhdCreateOptions {
                compression,
                timestamp: Some(1_700_000_000),
                uuid: Some(
                    *uuid::Uuid::parse_str("5a7e6b1c-2d3e-4f50-a1b2-c3d4e5f60718")
                        .unwrap()
                        .as_bytes(),
                ),
            };
            let mut out = Vec::new();
            {
                let sink = crate::io::PipeSink::new(&mut out);
                let mut w: Box<dyn BlockWriter> =
                    Box::new(Zvhd2Writer::new(sink, 3 << 20, &options).unwrap());
                w.write_piece(Piece::Zero {
                    offset: 0,
                    length: 3 << 20,
                })
                .unwrap();
                w.finish().unwrap();
            }
            assert_eq!(out, bytes);
        }
    }
}
