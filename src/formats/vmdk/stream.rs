//! streamOptimized VMDKs: the markers (grain, grain table, grain directory, footer,
//! end-of-stream), a [`ChunkStream`] that reads such a file front to back from any
//! [`std::io::Read`] (a pipe, stdin), and the writer that produces VMware's stream layout on any
//! [`AppendSink`]. See formats/vmdk.md, "streamOptimized".

use std::io::Read;
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};
use bytes::Bytes;

use super::descriptor::Descriptor;
use super::info::{VmdkExtentInfo, VmdkInfo};
pub use super::marker::{Marker, MarkerType};
use super::sparse::{
    COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, GD_AT_END,
    GRAIN_MARKER_HEAD, HEADER_SIZE, NEWLINE_CHARS, SECTOR, SparseHeader, inflate_grain,
    least_inflated, max_compressed,
};
use crate::block::{BlockWriter, Chunk, ChunkStream, Piece, UnitEncoder, advance, usize_len};
use crate::error::{Error, ReferenceKind, Result};
use crate::formats::info::FormatInfo;
use crate::io::AppendSink;
use crate::limits::{MAX_DESCRIPTOR_BYTES, MAX_GD_BYTES, MAX_VMDK_DISK_BYTES};

/// Reads a streamOptimized VMDK front to back: header, descriptor, then marker by marker.
///
/// VMware's layout (GD at the end, footer, end-of-stream marker) must end with the
/// end-of-stream marker. qemu-img's layout (GD offset in the header, no metadata markers, maybe
/// no end-of-stream marker) may also just end after its last grain: the rest reads as zeros.
pub struct StreamReader<R: Read + Send> {
    input: R,
    header: SparseHeader,
    descriptor: Option<Descriptor>,
    /// Bytes consumed from the input.
    pos: u64,
    size: u64,
    /// Everything before `next` has been given.
    next: u64,
    /// Chunks read but not yet given: the zeros before a grain, and the grain.
    queue: std::collections::VecDeque<Chunk>,
    done: bool,
    packed: Vec<u8>,
}

const SR: &str = "vmdk stream";

impl<R: Read + Send> StreamReader<R> {
    /// Reads the header and the descriptor, and skips to the first grain.
    pub fn new(input: R) -> Result<Self> {
        let mut r = StreamReader {
            input,
            header: SparseHeader {
                version: 0,
                flags: 0,
                capacity: 0,
                grain_size: 1,
                descriptor_offset: 0,
                descriptor_size: 0,
                num_gtes_per_gt: 1,
                rgd_offset: 0,
                gd_offset: 0,
                over_head: 0,
                unclean_shutdown: 0,
                newline_chars: [0; 4],
                compress_algorithm: 0,
            },
            descriptor: None,
            pos: 0,
            size: 0,
            next: 0,
            queue: Default::default(),
            done: false,
            packed: Vec::new(),
        };
        let mut buf = [0u8; HEADER_SIZE];
        r.read_exact(&mut buf, "vmdk sparse header")?;
        r.header = SparseHeader::parse(&buf, 0)?;
        if !r.header.compressed() || !r.header.has_markers() {
            return Err(Error::unsupported(
                "reading a VMDK from a stream needs a streamOptimized one (compressed grains with markers); give a file",
            ));
        }
        r.size = r.header.disk_bytes();
        let h = r.header.clone();
        if h.descriptor_offset != 0 && h.descriptor_size != 0 {
            let at = h.descriptor_offset.saturating_mul(SECTOR);
            let len = h
                .descriptor_size
                .checked_mul(SECTOR)
                .filter(|&l| l <= MAX_DESCRIPTOR_BYTES)
                .ok_or_else(|| {
                    Error::limit("vmdk descriptor", 36, "embedded descriptor over the cap")
                })?;
            r.skip_to(at, "vmdk descriptor")?;
            let mut text = vec![0u8; usize_len(len)?];
            r.read_exact(&mut text, "vmdk descriptor")?;
            let d = Descriptor::parse(&text, at)?;
            super::descriptor::check_embedded(&d, r.header.capacity)?;
            if d.is_delta() {
                return Err(Error::reference(
                    ReferenceKind::BackingFile,
                    d.parent_file_name_hint
                        .clone()
                        .unwrap_or_else(|| format!("parentCID={:08x}", d.parent_cid)),
                ));
            }
            r.descriptor = Some(d);
        }
        let first = h
            .over_head
            .checked_mul(SECTOR)
            .ok_or_else(|| Error::malformed("vmdk sparse header", 64, "overhead overflows"))?;
        r.skip_to(first, "vmdk stream overhead")?;
        Ok(r)
    }

    /// The header read at the start.
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// Reads up to `buf.len()` bytes, returning how many there were before the end.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..) {
            if rest.is_empty() {
                break;
            }
            match self.input.read(rest) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read stream", e)),
            }
        }
        self.pos += done as u64;
        Ok(done)
    }

    fn read_exact(&mut self, buf: &mut [u8], structure: &'static str) -> Result<()> {
        let at = self.pos;
        let n = self.read_some(buf)?;
        if n < buf.len() {
            return Err(Error::truncated(
                structure,
                at,
                buf.len() as u64,
                at + n as u64,
            ));
        }
        Ok(())
    }

    /// Discards input up to absolute offset `to`.
    fn skip_to(&mut self, to: u64, structure: &'static str) -> Result<()> {
        if to < self.pos {
            return Err(Error::malformed(
                structure,
                to,
                format!("lies before offset {} already read", self.pos),
            ));
        }
        let mut scratch = vec![0u8; 64 << 10];
        while self.pos < to {
            let n = usize_len((to - self.pos).min(scratch.len() as u64))?;
            let at = self.pos;
            let got = self.read_some(scratch.get_mut(..n).unwrap_or_default())?;
            if got < n {
                return Err(Error::truncated(structure, at, to - at, self.pos));
            }
        }
        Ok(())
    }

    /// Reads one grain whose marker is in `sector` (read at `at`) and returns its chunk.
    fn grain(&mut self, sector: &[u8; HEADER_SIZE], at: u64, lba: u64, size: u32) -> Result<()> {
        let h = &self.header;
        let grain_bytes = h.grain_bytes();
        let size = u64::from(size);
        let bad = |p: String| Error::malformed("vmdk grain marker", at, p);
        if !lba.is_multiple_of(h.grain_size) || lba >= h.capacity {
            return Err(bad(format!(
                "LBA {lba} is not the start of a grain inside the disk of {} sectors",
                h.capacity
            )));
        }
        let start = lba * SECTOR;
        if start < self.next {
            return Err(bad(format!(
                "LBA {lba} does not come after the grains before it (at byte {})",
                self.next
            )));
        }
        if size > max_compressed(grain_bytes) {
            return Err(bad(format!("compressed size {size} is too large")));
        }
        let total = (GRAIN_MARKER_HEAD + size).next_multiple_of(SECTOR);
        let mut packed = std::mem::take(&mut self.packed);
        packed.resize(usize_len(total)?, 0);
        if let (Some(head), Some(rest)) = (packed.get_mut(..HEADER_SIZE), sector.get(..HEADER_SIZE))
        {
            head.copy_from_slice(rest);
        }
        if let Some(rest) = packed.get_mut(HEADER_SIZE..) {
            let n = rest.len() as u64;
            let got = self.read_some(rest)?;
            if (got as u64) < n {
                return Err(Error::truncated(
                    "vmdk compressed grain",
                    at,
                    total,
                    self.pos - at,
                ));
            }
        }
        let needed = (self.size - start).min(grain_bytes);
        let mut out = vec![0u8; usize_len(grain_bytes)?];
        let data = packed
            .get(usize_len(GRAIN_MARKER_HEAD)?..usize_len(GRAIN_MARKER_HEAD + size)?)
            .unwrap_or_default();
        let least = least_inflated(&self.header, lba / self.header.grain_size);
        inflate_grain(data, &mut out, usize_len(least)?, at)?;
        self.packed = packed;
        out.truncate(usize_len(needed)?);
        if start > self.next {
            self.queue
                .push_back(Chunk::zero(self.next, start - self.next));
        }
        self.queue.push_back(Chunk::data(start, Bytes::from(out)));
        self.next = start + needed;
        Ok(())
    }
}

impl<R: Read + Send> ChunkStream for StreamReader<R> {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        loop {
            if let Some(c) = self.queue.pop_front() {
                return Ok(Some(c));
            }
            if self.done {
                if self.next < self.size {
                    let c = Chunk::zero(self.next, self.size - self.next);
                    self.next = self.size;
                    return Ok(Some(c));
                }
                return Ok(None);
            }
            let at = self.pos;
            let mut sector = [0u8; HEADER_SIZE];
            let got = self.read_some(&mut sector)?;
            if got == 0 {
                if self.header.gd_offset == GD_AT_END {
                    return Err(Error::malformed(
                        SR,
                        at,
                        "the stream ends without an end-of-stream marker (unterminated stream)",
                    ));
                }
                // qemu-img's layout: the file may just end after its last grain.
                self.done = true;
                continue;
            }
            if got < HEADER_SIZE {
                return Err(Error::truncated(SR, at, SECTOR, got as u64));
            }
            let Some(marker) = Marker::parse(&sector) else {
                return Err(Error::malformed(SR, at, "no marker"));
            };
            match marker {
                Marker::Grain { lba, size } => self.grain(&sector, at, lba, size)?,
                Marker::Metadata { num_sectors, kind } => match kind {
                    MarkerType::EndOfStream => self.done = true,
                    MarkerType::GrainTable | MarkerType::GrainDirectory => {
                        // The size a marker gives must be its table's: a reader that skipped a
                        // different amount would take table bytes for markers and grains.
                        let expected = if kind == MarkerType::GrainTable {
                            self.header.gt_sectors()
                        } else {
                            self.header.gd_sectors()
                        };
                        if num_sectors != expected {
                            return Err(Error::malformed(
                                "vmdk metadata marker",
                                at,
                                format!(
                                    "a {kind:?} marker of {num_sectors} sectors (the table takes {expected})"
                                ),
                            ));
                        }
                        let len = num_sectors
                            .checked_mul(SECTOR)
                            .filter(|&l| l <= MAX_GD_BYTES + SECTOR)
                            .ok_or_else(|| {
                                Error::limit(
                                    "vmdk metadata marker",
                                    at,
                                    format!("{num_sectors} sectors of grain table or directory"),
                                )
                            })?;
                        self.skip_to(self.pos + len, "vmdk grain table")?;
                    }
                    MarkerType::Footer => {
                        if num_sectors != 1 {
                            return Err(Error::malformed(
                                "vmdk footer marker",
                                at,
                                format!("footer of {num_sectors} sectors"),
                            ));
                        }
                        let mut buf = [0u8; HEADER_SIZE];
                        let f_at = self.pos;
                        self.read_exact(&mut buf, "vmdk footer")?;
                        let f = SparseHeader::parse(&buf, f_at)?;
                        if f.capacity != self.header.capacity
                            || f.grain_size != self.header.grain_size
                        {
                            return Err(Error::malformed(
                                "vmdk footer",
                                f_at,
                                "footer does not match the header",
                            ));
                        }
                    }
                    MarkerType::Other(code) => {
                        return Err(Error::malformed(
                            "vmdk metadata marker",
                            at,
                            format!("unknown marker type {code}"),
                        ));
                    }
                },
            }
        }
    }

    fn info(&self) -> Option<FormatInfo> {
        let d = self.descriptor.as_ref();
        let extent = VmdkExtentInfo {
            filename: d
                .and_then(|d| d.extents.first())
                .and_then(|e| e.file_name.clone())
                .unwrap_or_default(),
            virtual_size: self.size,
            format: "SPARSE".into(),
            cluster_size: Some(self.header.grain_bytes()),
            compressed: Some(true),
        };
        Some(FormatInfo::Vmdk(VmdkInfo::new(d, vec![extent])))
    }
}

/// Compresses one grain on the pipeline's workers into its whole on-disk form: grain marker
/// (LBA, size), zlib stream, zeros to the end of the sector.
pub(crate) struct GrainCompressor {
    pub grain_bytes: usize,
}

impl UnitEncoder for GrainCompressor {
    fn encode(&self, offset: u64, unit: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(Some(compress_grain(offset, unit, self.grain_bytes)?))
    }
}

/// The on-disk form of the grain at virtual `offset`: a last grain shorter than a whole one is
/// padded with zeros before compression (qemu inflates every grain to its full size).
pub fn compress_grain(offset: u64, unit: &[u8], grain_bytes: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 12];
    LittleEndian::write_u64(&mut out[0..8], offset / SECTOR);
    let input = crate::compress::padded(unit, grain_bytes);
    out.extend_from_slice(&crate::compress::deflate(
        &input,
        crate::compress::VMDK_GRAIN,
    )?);
    let size = u32::try_from(out.len() - 12)
        .map_err(|_| Error::InvalidArgument("compressed grain too large".into()))?;
    LittleEndian::write_u32(&mut out[8..12], size);
    out.resize(out.len().next_multiple_of(HEADER_SIZE), 0);
    Ok(out)
}

/// Grain size the writers use: 64 KiB, as VMware and qemu-img.
pub const WRITE_GRAIN_SECTORS: u64 = 128;
/// Grain table entries the writers use.
pub const WRITE_GTES_PER_GT: u32 = 512;
/// Sectors reserved for the embedded descriptor, as qemu-img reserves.
pub const DESCRIPTOR_SECTORS: u64 = 20;

/// Writes VMware's stream layout to any append-only sink: header (`gdOffset` = GD_AT_END),
/// descriptor, compressed grains with markers in ascending order, each grain table after its
/// grains, the GD, the footer and the end-of-stream marker.
pub struct StreamWriter<S: AppendSink> {
    sink: S,
    size: u64,
    header: SparseHeader,
    /// The grain table being filled and its index.
    gt: Vec<u32>,
    gt_index: u64,
    gd: Vec<u32>,
    next: u64,
}

impl<S: AppendSink> StreamWriter<S> {
    /// Starts a stream of a disk of `size` bytes (rounded up to whole sectors) whose descriptor
    /// is `descriptor`.
    pub fn new(mut sink: S, size: u64, descriptor: &str) -> Result<Self> {
        let capacity = size.div_ceil(SECTOR);
        if capacity.saturating_mul(SECTOR) > MAX_VMDK_DISK_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a VMDK holds at most {MAX_VMDK_DISK_BYTES} bytes"
            )));
        }
        let desc_sectors = (descriptor.len() as u64)
            .div_ceil(SECTOR)
            .max(DESCRIPTOR_SECTORS);
        let over_head = (1 + desc_sectors).next_multiple_of(WRITE_GRAIN_SECTORS);
        let header = SparseHeader {
            version: 3,
            flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity,
            grain_size: WRITE_GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_size: desc_sectors,
            num_gtes_per_gt: WRITE_GTES_PER_GT,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            over_head,
            unclean_shutdown: 0,
            newline_chars: NEWLINE_CHARS,
            compress_algorithm: COMPRESSION_DEFLATE,
        };
        let gd_entries = usize_len(header.gd_entries())?;
        sink.append(&header.to_bytes())?;
        sink.append(descriptor.as_bytes())?;
        sink.append_zeros(over_head * SECTOR - SECTOR - descriptor.len() as u64)?;
        Ok(StreamWriter {
            sink,
            size,
            gt: vec![0; WRITE_GTES_PER_GT as usize],
            gt_index: 0,
            gd: vec![0; gd_entries],
            header,
            next: 0,
        })
    }

    fn sector_now(&self) -> Result<u32> {
        u32::try_from(self.sink.position() / SECTOR).map_err(|_| {
            Error::InvalidArgument(
                "streamOptimized VMDK grows past 2 TiB of compressed data (32-bit sector offsets)"
                    .into(),
            )
        })
    }

    /// Writes grain tables until `index` is the one being filled.
    fn move_to_gt(&mut self, index: u64) -> Result<()> {
        while self.gt_index < index {
            let gt_sectors = self.header.gt_bytes().div_ceil(SECTOR);
            self.sink
                .append(&Marker::metadata_sector(gt_sectors, MarkerType::GrainTable))?;
            let at = self.sector_now()?;
            let mut bytes: Vec<u8> = self.gt.iter().flat_map(|e| e.to_le_bytes()).collect();
            bytes.resize(usize_len(gt_sectors * SECTOR)?, 0);
            self.sink.append(&bytes)?;
            if let Some(slot) = usize::try_from(self.gt_index)
                .ok()
                .and_then(|i| self.gd.get_mut(i))
            {
                *slot = at;
            }
            self.gt.fill(0);
            self.gt_index += 1;
        }
        Ok(())
    }

    /// Appends a grain's on-disk form for the grain at virtual `offset`.
    fn put_grain(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let grain = offset / self.header.grain_bytes();
        let per_gt = u64::from(self.header.num_gtes_per_gt);
        self.move_to_gt(grain / per_gt)?;
        let at = self.sector_now()?;
        if let Some(slot) = usize::try_from(grain % per_gt)
            .ok()
            .and_then(|i| self.gt.get_mut(i))
        {
            *slot = at;
        }
        self.sink.append(bytes)
    }
}

impl<S: AppendSink> BlockWriter for StreamWriter<S> {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn unit_size(&self) -> u64 {
        self.header.grain_bytes()
    }

    fn encoder(&self) -> Option<Arc<dyn UnitEncoder>> {
        Some(Arc::new(GrainCompressor {
            grain_bytes: self.header.grain_bytes() as usize,
        }))
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        let offset = piece.offset();
        let grain_bytes = self.header.grain_bytes();
        advance(
            &mut self.next,
            &piece,
            grain_bytes,
            self.size,
            "vmdk stream writer",
        )?;
        match piece {
            Piece::Zero { .. } => Ok(()),
            Piece::Encoded { payload, .. } => self.put_grain(offset, &payload),
            Piece::Data { data, .. } => {
                // Only when the pipeline ran without the encoder: compress here.
                for (i, unit) in data.chunks(grain_bytes as usize).enumerate() {
                    let at = offset + i as u64 * grain_bytes;
                    let bytes = compress_grain(at, unit, grain_bytes as usize)?;
                    self.put_grain(at, &bytes)?;
                }
                Ok(())
            }
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.size {
            return Err(Error::Internal(format!(
                "vmdk writer finished at {} of {} bytes",
                self.next, self.size
            )));
        }
        // Every grain table is written, empty ones too, as VMware's tools do.
        self.move_to_gt(self.gd.len() as u64)?;
        let mut gd: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        gd.resize(gd.len().next_multiple_of(HEADER_SIZE).max(HEADER_SIZE), 0);
        let gd_sectors = gd.len() as u64 / SECTOR;
        self.sink.append(&Marker::metadata_sector(
            gd_sectors,
            MarkerType::GrainDirectory,
        ))?;
        let gd_at = self.sink.position() / SECTOR;
        self.sink.append(&gd)?;
        let mut footer = self.header.clone();
        footer.gd_offset = gd_at;
        self.sink
            .append(&Marker::metadata_sector(1, MarkerType::Footer))?;
        self.sink.append(&footer.to_bytes())?;
        self.sink
            .append(&Marker::metadata_sector(0, MarkerType::EndOfStream))?;
        self.sink.finish()
    }
}
