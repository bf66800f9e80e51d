//! Writes QCOW2 images (version 3, or version 2 for `compat=0.10`), plain or compressed.
//!
//! The file is written front to back: the header cluster, then data clusters, compressed
//! payloads, L2 tables and refcount blocks as they fill, then the L1 table and the refcount
//! table at the end; the header is written last, at offset 0. Zero ranges stay unallocated.
//! Memory holds the L1 table, one L2 table and one refcount block, whatever the disk size.
//!
//! Refcounts are counted as clusters are allocated: every allocation lies after all earlier
//! ones, so a refcount block is final once allocation has moved past the clusters it covers,
//! and is written then.

use std::sync::Arc;

use crate::block::{BlockWriter, Piece, UnitEncoder, advance};
use crate::error::{Error, Result};
use crate::io::{AppendSink, FileSink};

use super::header::{compatible, incompatible};
use super::tables::{OFLAG_COMPRESSED, OFLAG_COPIED};
use crate::limits::MAX_L1_TABLE_SIZE;

/// The compression of a compressed image's clusters (zlib: raw deflate with a 4 KiB window, as
/// qemu inflates qcow2 clusters with window bits -12).
pub use super::header::CompressionType as Compression;

/// What `-o` and `-c` chose for a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2CreateOptions {
    /// log2 of the cluster size (`cluster_size=64k` is 16).
    pub cluster_bits: u32,
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`).
    pub version: u32,
    /// Clusters are compressed (`-c`) with this algorithm (`compression_type`); `None`
    /// stores them plain.
    pub compression: Option<Compression>,
    /// `lazy_refcounts=on`: the compatible feature bit qemu sets. ims always writes exact
    /// refcounts, so the bit only tells later writers they may defer their updates.
    pub lazy_refcounts: bool,
}

impl Default for Qcow2CreateOptions {
    fn default() -> Self {
        Qcow2CreateOptions {
            cluster_bits: 16,
            version: 3,
            compression: None,
            lazy_refcounts: false,
        }
    }
}

impl Qcow2CreateOptions {
    /// Reads qemu-img's option names: `cluster_size`, `compat`, `compression_type`, `lazy_refcounts`; `compress`
    /// is `-c`. Options qemu-img knows but ims does not write are refused by name.
    pub fn parse(options: &[(String, String)], compress: bool) -> Result<Self> {
        let mut out = Qcow2CreateOptions::default();
        let mut compression_type = None;
        for (key, value) in options {
            match key.as_str() {
                "cluster_size" => {
                    let size = parse_size(value)?;
                    if !size.is_power_of_two() || !(512..=2 << 20).contains(&size) {
                        return Err(Error::InvalidArgument(format!(
                            "cluster_size {value} must be a power of two from 512 to 2M"
                        )));
                    }
                    out.cluster_bits = size.trailing_zeros();
                }
                "compat" => {
                    out.version = match value.as_str() {
                        "0.10" | "v2" => 2,
                        "1.1" | "v3" => 3,
                        _ => {
                            return Err(Error::InvalidArgument(format!(
                                "compat '{value}' is not 0.10 or 1.1"
                            )));
                        }
                    }
                }
                "compression_type" => {
                    compression_type = Some(match value.as_str() {
                        "zlib" => Compression::Zlib,
                        "zstd" => Compression::Zstd,
                        _ => {
                            return Err(Error::InvalidArgument(format!(
                                "compression_type '{value}' is not zlib or zstd"
                            )));
                        }
                    })
                }
                "refcount_bits" if value == "16" => {}
                "lazy_refcounts" if value == "on" => out.lazy_refcounts = true,
                "lazy_refcounts" | "preallocation" | "extended_l2" if value == "off" => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "qcow2 option '{key}={value}' is not supported (ims writes: cluster_size, compat, compression_type, -c)"
                    )));
                }
            }
        }
        if out.lazy_refcounts && out.version < 3 {
            return Err(Error::InvalidArgument(
                "lazy_refcounts=on needs compat=1.1".into(),
            ));
        }
        if compression_type == Some(Compression::Zstd) && out.version < 3 {
            return Err(Error::InvalidArgument(
                "compression_type=zstd needs compat=1.1".into(),
            ));
        }
        if compress {
            out.compression = Some(compression_type.unwrap_or(Compression::Zlib));
        }
        Ok(out)
    }
}

/// Parses a size with qemu-img's suffixes (`64k`, `2M`).
fn parse_size(s: &str) -> Result<u64> {
    let bad = || Error::InvalidArgument(format!("'{s}' is not a size"));
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                _ => return Err(bad()),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Compresses one cluster the way qemu can read it back.
struct ClusterCompressor {
    compression: Compression,
    cluster_size: usize,
}

impl UnitEncoder for ClusterCompressor {
    fn encode(&self, _offset: u64, unit: &[u8]) -> Result<Option<Vec<u8>>> {
        // qemu inflates into a whole cluster and fails when it is not filled, so the last,
        // partial cluster of a disk is compressed padded with zeros.
        let input = crate::compress::padded(unit, self.cluster_size);
        let input = &input[..];
        let out = match self.compression {
            Compression::Zlib => deflate_window_4k(input)?,
            // zstd's default level, as qemu.
            Compression::Zstd => crate::compress::zstd_compress(input, 3)?,
        };
        // Stored plainly unless smaller than a cluster, as qemu does.
        Ok((out.len() < self.cluster_size).then_some(out))
    }
}

/// Raw deflate (no zlib header) with a 4 KiB window and memory level 9, as qemu writes and
/// reads clusters, at the effort of qemu-img's zlib level 6.
fn deflate_window_4k(input: &[u8]) -> Result<Vec<u8>> {
    crate::compress::deflate(input, crate::compress::QCOW2_CLUSTER)
}

/// The writer. See the module documentation for the layout.
pub struct Qcow2Writer {
    sink: FileSink,
    size: u64,
    options: Qcow2CreateOptions,
    cluster_size: u64,
    /// L2 entries per table.
    l2_entries: u64,
    l1: Vec<u64>,
    /// The L2 table being filled and the L1 index it belongs to.
    l2: Vec<u64>,
    l2_index: Option<usize>,
    /// The first cluster-aligned byte after everything allocated.
    pos: u64,
    /// Where the next compressed payload may go inside the last cluster that holds compressed
    /// data, while that cluster is not full (payloads are packed byte by byte, as qemu does).
    compressed_tail: Option<u64>,
    /// Refcounts of clusters `[rc_first, rc_first + rc.len())`.
    rc: Vec<u16>,
    rc_first: u64,
    /// Offsets of the refcount blocks written so far, in order.
    refblocks: Vec<u64>,
    /// Clusters of refcount blocks written but not yet counted, in ascending order.
    unsettled: std::collections::VecDeque<u64>,
    /// The next virtual offset expected.
    next: u64,
}

impl Qcow2Writer {
    /// Starts an image of `size` bytes in `sink` (a fresh, empty file).
    pub fn new(sink: FileSink, size: u64, options: Qcow2CreateOptions) -> Result<Self> {
        let cluster_size = 1u64 << options.cluster_bits;
        let l2_entries = cluster_size / 8;
        let l1_entries = size
            .next_multiple_of(512)
            .div_ceil(cluster_size * l2_entries);
        if l1_entries.saturating_mul(8) > MAX_L1_TABLE_SIZE {
            return Err(Error::InvalidArgument(format!(
                "a {size}-byte disk needs an L1 table over {MAX_L1_TABLE_SIZE} bytes with {cluster_size}-byte clusters; use a larger cluster_size"
            )));
        }
        let rc_entries = cluster_size / 2;
        let mut w = Qcow2Writer {
            sink,
            size,
            options,
            cluster_size,
            l2_entries,
            l1: vec![0; l1_entries as usize],
            l2: Vec::new(),
            l2_index: None,
            pos: 0,
            compressed_tail: None,
            rc: vec![0; rc_entries as usize],
            rc_first: 0,
            refblocks: Vec::new(),
            unsettled: Default::default(),
            next: 0,
        };
        // Cluster 0 holds the header, written at the end.
        w.alloc_clusters(1)?;
        Ok(w)
    }

    fn cluster_of(&self, offset: u64) -> u64 {
        offset >> self.options.cluster_bits
    }

    /// Reserves `n` whole clusters at the end of the file and counts them.
    fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        let at = self.pos;
        self.pos = at + n * self.cluster_size;
        let first = self.cluster_of(at);
        for c in first..first + n {
            self.reference(c)?;
        }
        self.settle()?;
        Ok(at)
    }

    /// Adds one reference to `cluster`, writing out refcount blocks allocation has moved past.
    /// Callers reference clusters in ascending order, then call [`Self::settle`].
    fn reference(&mut self, cluster: u64) -> Result<()> {
        let per_block = self.rc.len() as u64;
        while cluster >= self.rc_first + per_block {
            // The block's counts are final: nothing later is allocated before `pos`. The block
            // itself lies after everything allocated so far; it is counted by `settle`.
            let at = self.pos;
            self.pos = at + self.cluster_size;
            self.write_refblock(at)?;
            // The partly filled compressed cluster is counted in the block just written.
            self.compressed_tail = None;
            self.rc_first += per_block;
            self.rc.fill(0);
            self.unsettled.push_back(self.cluster_of(at));
        }
        let slot = &mut self.rc[(cluster - self.rc_first) as usize];
        *slot = slot.checked_add(1).ok_or_else(|| {
            Error::Internal(format!("refcount of cluster {cluster} overflows 16 bits"))
        })?;
        Ok(())
    }

    /// Counts the refcount blocks written while counting other clusters.
    fn settle(&mut self) -> Result<()> {
        while let Some(c) = self.unsettled.pop_front() {
            self.reference(c)?;
        }
        Ok(())
    }

    fn write_refblock(&mut self, at: u64) -> Result<()> {
        let bytes: Vec<u8> = self.rc.iter().flat_map(|r| r.to_be_bytes()).collect();
        self.sink.write_at(&bytes, at)?;
        self.refblocks.push(at);
        Ok(())
    }

    /// Makes `l1_index`'s L2 table the one being filled, writing out the previous one.
    fn switch_l2(&mut self, l1_index: usize) -> Result<()> {
        if self.l2_index == Some(l1_index) {
            return Ok(());
        }
        self.flush_l2()?;
        self.l2 = vec![0; self.l2_entries as usize];
        self.l2_index = Some(l1_index);
        Ok(())
    }

    fn flush_l2(&mut self) -> Result<()> {
        if let Some(index) = self.l2_index.take()
            && self.l2.iter().any(|&e| e != 0)
        {
            let at = self.alloc_clusters(1)?;
            let bytes: Vec<u8> = self.l2.iter().flat_map(|e| e.to_be_bytes()).collect();
            self.sink.write_at(&bytes, at)?;
            self.l1[index] = at | OFLAG_COPIED;
        }
        Ok(())
    }

    /// Points the L2 entry of the cluster at virtual `offset` to `entry`.
    fn set_entry(&mut self, offset: u64, entry: u64) -> Result<()> {
        let cluster = offset >> self.options.cluster_bits;
        let l1_index = (cluster / self.l2_entries) as usize;
        self.switch_l2(l1_index)?;
        self.l2[(cluster % self.l2_entries) as usize] = entry;
        Ok(())
    }

    /// Stores a compressed payload, packed after the previous one when there is room.
    fn write_compressed(&mut self, offset: u64, payload: &[u8]) -> Result<()> {
        let len = payload.len() as u64;
        let start = match self.compressed_tail {
            // Fits in the rest of the current compressed cluster, or runs on into clusters
            // allocated right after it.
            Some(tail)
                if (tail + len).div_ceil(self.cluster_size) <= self.cluster_of(tail) + 1
                    || self.cluster_of(tail) + 1 == self.cluster_of(self.pos) =>
            {
                tail
            }
            _ => self.pos,
        };
        let end = start + len;
        // Every cluster the payload's sectors touch holds one more reference (as qemu-img check
        // counts them); clusters past `pos` are newly allocated.
        let first_sector = start & !511;
        let sectors = (end - first_sector).div_ceil(512);
        let sectors_end = first_sector + sectors * 512;
        let new_end = sectors_end
            .next_multiple_of(self.cluster_size)
            .max(self.pos);
        let first = self.cluster_of(start);
        let last = self.cluster_of(sectors_end - 1);
        self.pos = new_end;
        for c in first..=last {
            self.reference(c)?;
        }
        self.sink.write_at(payload, start)?;
        // The payload's last cluster keeps taking payloads until it is full.
        self.compressed_tail = (!end.is_multiple_of(self.cluster_size)).then_some(end);
        self.settle()?;
        let x = 62 - (self.options.cluster_bits - 8);
        let entry = OFLAG_COMPRESSED | ((sectors - 1) << x) | start;
        self.set_entry(offset, entry)
    }

    /// Writes the header cluster.
    fn write_header(
        &mut self,
        l1_offset: u64,
        refcount_table_offset: u64,
        refcount_table_clusters: u64,
    ) -> Result<()> {
        let mut h = vec![0u8; 112];
        h[0..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&self.options.version.to_be_bytes());
        h[20..24].copy_from_slice(&self.options.cluster_bits.to_be_bytes());
        // qemu counts qcow2 disks in whole sectors and drops a partial one, so the size is
        // rounded up (as qemu-img convert does); the padding reads as zeros.
        h[24..32].copy_from_slice(&self.size.next_multiple_of(512).to_be_bytes());
        h[36..40].copy_from_slice(&(self.l1.len() as u32).to_be_bytes());
        h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
        h[48..56].copy_from_slice(&refcount_table_offset.to_be_bytes());
        h[56..60].copy_from_slice(&(refcount_table_clusters as u32).to_be_bytes());
        if self.options.version == 3 {
            let compression = self.options.compression.unwrap_or(Compression::Zlib);
            // zlib is the default; another type needs the incompatible bit that names the field.
            let incompatible = if compression == Compression::Zlib {
                0
            } else {
                incompatible::COMPRESSION_TYPE
            };
            h[72..80].copy_from_slice(&incompatible.to_be_bytes());
            let compatible = if self.options.lazy_refcounts {
                compatible::LAZY_REFCOUNTS
            } else {
                0
            };
            h[80..88].copy_from_slice(&compatible.to_be_bytes());
            h[96..100].copy_from_slice(&4u32.to_be_bytes());
            h[100..104].copy_from_slice(&112u32.to_be_bytes());
            h[104] = compression.code();
            // End of header extensions.
            h.extend_from_slice(&[0u8; 8]);
        } else {
            h.truncate(72);
        }
        self.sink.write_at(&h, 0)
    }
}

impl BlockWriter for Qcow2Writer {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn unit_size(&self) -> u64 {
        self.cluster_size
    }

    fn encoder(&self) -> Option<Arc<dyn UnitEncoder>> {
        self.options.compression.map(|compression| {
            Arc::new(ClusterCompressor {
                compression,
                cluster_size: self.cluster_size as usize,
            }) as Arc<dyn UnitEncoder>
        })
    }

    fn write_piece(&mut self, piece: Piece) -> Result<()> {
        advance(
            &mut self.next,
            &piece,
            self.cluster_size,
            self.size,
            "qcow2 writer",
        )?;
        match piece {
            // Zero ranges stay unallocated: a top-level image reads them as zeros.
            Piece::Zero { .. } => Ok(()),
            Piece::Data { offset, data } => {
                let clusters = (data.len() as u64).div_ceil(self.cluster_size);
                let at = self.alloc_clusters(clusters)?;
                self.sink.write_at_sparse(&data, at)?;
                for i in 0..clusters {
                    self.set_entry(
                        offset + i * self.cluster_size,
                        (at + i * self.cluster_size) | OFLAG_COPIED,
                    )?;
                }
                Ok(())
            }
            Piece::Encoded {
                offset, payload, ..
            } => self.write_compressed(offset, &payload),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.next != self.size {
            return Err(Error::Internal(format!(
                "qcow2 writer finished at {} of {} bytes",
                self.next, self.size
            )));
        }
        self.flush_l2()?;
        // An empty disk has an empty L1 table, which takes no cluster.
        let l1_clusters = (self.l1.len() as u64 * 8).div_ceil(self.cluster_size);
        let l1_offset = if l1_clusters == 0 {
            0
        } else {
            self.alloc_clusters(l1_clusters)?
        };
        let l1: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.sink.write_at(&l1, l1_offset)?;

        // The refcount table and the remaining refcount blocks go at the end; their sizes depend
        // on each other, so grow both until they cover the whole file.
        let per_block = self.rc.len() as u64;
        let start = self.cluster_of(self.pos);
        let (mut table_clusters, mut new_blocks) = (1u64, 1u64);
        loop {
            let total = start + table_clusters + new_blocks;
            let blocks_needed = total.div_ceil(per_block) - self.rc_first / per_block;
            let table_needed =
                ((self.refblocks.len() as u64 + blocks_needed) * 8).div_ceil(self.cluster_size);
            if blocks_needed == new_blocks && table_needed == table_clusters {
                break;
            }
            new_blocks = blocks_needed.max(new_blocks);
            table_clusters = table_needed.max(table_clusters);
        }
        let end = start + table_clusters + new_blocks;
        let table_offset = start * self.cluster_size;
        // Counts for the new clusters, block by block from the current one.
        let mut table: Vec<u64> = self.refblocks.clone();
        for b in 0..new_blocks {
            let block_first = self.rc_first + b * per_block;
            if b > 0 {
                self.rc.fill(0);
            }
            for c in start.max(block_first)..end.min(block_first + per_block) {
                self.rc[(c - block_first) as usize] += 1;
            }
            let at = (start + table_clusters + b) * self.cluster_size;
            let bytes: Vec<u8> = self.rc.iter().flat_map(|r| r.to_be_bytes()).collect();
            self.sink.write_at(&bytes, at)?;
            table.push(at);
        }
        let mut table_bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        table_bytes.resize((table_clusters * self.cluster_size) as usize, 0);
        self.sink.write_at(&table_bytes, table_offset)?;
        self.write_header(l1_offset, table_offset, table_clusters)?;
        self.sink.set_position(end * self.cluster_size);
        self.sink.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, &str)], compress: bool) -> Result<Qcow2CreateOptions> {
        let list: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Qcow2CreateOptions::parse(&list, compress)
    }

    #[test]
    fn options_follow_qemu_img_names() {
        let o = opts(&[("cluster_size", "2M"), ("compat", "0.10")], false).unwrap();
        assert_eq!((o.cluster_bits, o.version, o.compression), (21, 2, None));
        let o = opts(&[("compression_type", "zstd")], true).unwrap();
        assert_eq!(o.compression, Some(Compression::Zstd));
        assert_eq!(
            opts(&[], true).unwrap().compression,
            Some(Compression::Zlib)
        );
        assert!(opts(&[("cluster_size", "3000")], false).is_err());
        assert!(opts(&[("cluster_size", "4M")], false).is_err());
        assert!(opts(&[("compat", "0.10"), ("compression_type", "zstd")], true).is_err());
        assert!(opts(&[("backing_file", "x")], false).is_err());
        assert!(
            opts(&[("lazy_refcounts", "on")], false)
                .unwrap()
                .lazy_refcounts
        );
        assert!(opts(&[("lazy_refcounts", "on"), ("compat", "0.10")], false).is_err());
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert!(parse_size("k").is_err());
    }

    #[test]
    fn zlib_clusters_inflate_with_a_4k_window() {
        let c = ClusterCompressor {
            compression: Compression::Zlib,
            cluster_size: 65536,
        };
        let unit: Vec<u8> = (0..65536u32).map(|i| (i / 7 % 251) as u8).collect();
        let payload = c.encode(0, &unit).unwrap().unwrap();
        let mut d = flate2::Decompress::new_with_window_bits(false, 12);
        let mut out = Vec::with_capacity(65536);
        d.decompress_vec(&payload, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out, unit);
        // Incompressible data is stored plainly.
        let mut x = 1u64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect();
        assert!(c.encode(0, &noise).unwrap().is_none());
    }
}
