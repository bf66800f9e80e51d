//! Reads a QCOW version 1 image: the L1 table in memory, L2 tables through a small cache,
//! zlib (raw deflate) compressed clusters decoded one cluster at a time, every table entry
//! checked at open by the consistency pass.

use std::sync::Arc;

use super::consistency::Pass;
use super::header::{HEADER_LEN, QcowHeader};
use super::info::QcowInfo;
use crate::block::{BlockReader, usize_len};
use crate::cache::Lru;
use crate::compress::{InflateProblem, Inflated, inflate};
use crate::error::{Error, Result};
use crate::formats::info::FormatInfo;
use crate::limits::QCOW1_L2_CACHE_TABLES;
use crate::mapped::{MappedDisk, MappedReader, Mapping, Segment, Unit, only_file};
use crate::storage::{Storage, read_be_u64_table, read_exact_at};

/// Bit 63 of an L2 entry: the cluster is compressed.
pub const OFLAG_COMPRESSED: u64 = 1 << 63;

/// The reader: a [`QcowDisk`] with its backing disk, if one is attached.
pub type QcowReader = MappedReader<QcowDisk>;

/// A QCOW version 1 image's header and tables, read and checked.
pub struct QcowDisk {
    storage: Arc<dyn Storage>,
    /// The header.
    pub header: QcowHeader,
    /// The backing file's name, when the image has one.
    pub backing_file: Option<String>,
    l1: Vec<u64>,
    l2: Lru<u64, Arc<Vec<u64>>>,
}

/// What an L2 entry says about its guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 0: not in this image.
    Unallocated,
    /// Stored as is at this host offset.
    Data(u64),
    /// Compressed: `size` bytes at `offset`.
    Compressed {
        /// Where the deflate data starts.
        offset: u64,
        /// How many bytes it has.
        size: u64,
    },
}

impl Entry {
    /// Decodes an L2 entry of an image with `cluster_bits`.
    pub fn decode(e: u64, cluster_bits: u8) -> Entry {
        if e == 0 {
            Entry::Unallocated
        } else if e & OFLAG_COMPRESSED != 0 {
            let shift = 63 - u32::from(cluster_bits);
            Entry::Compressed {
                offset: e & ((1 << shift) - 1),
                size: (e >> shift) & ((1 << cluster_bits) - 1),
            }
        } else {
            Entry::Data(e)
        }
    }
}

impl QcowDisk {
    /// Reads the header, the backing file name and the L1 table, and checks every entry.
    pub fn open(storage: Arc<dyn Storage>) -> Result<QcowDisk> {
        let len = storage.len();
        if len < HEADER_LEN as u64 {
            return Err(Error::truncated("qcow header", 0, HEADER_LEN as u64, len));
        }
        let mut b = [0u8; HEADER_LEN];
        read_exact_at(&*storage, &mut b, 0, "qcow header")?;
        let header = QcowHeader::parse(&b)?;
        let backing_file = if header.backing_file_offset != 0 {
            let (at, n) = (
                header.backing_file_offset,
                u64::from(header.backing_file_size),
            );
            if at.saturating_add(n) > len {
                return Err(Error::truncated("qcow backing file name", at, n, len));
            }
            let mut name = vec![0u8; usize_len(n)?];
            read_exact_at(&*storage, &mut name, at, "qcow backing file name")?;
            Some(
                String::from_utf8(name)
                    .map_err(|_| Error::malformed("qcow backing file name", at, "not UTF-8"))?,
            )
        } else {
            None
        };
        let l1_size = header.l1_size().unwrap_or(0);
        let l1_at = header.l1_table_offset;
        if l1_at.saturating_add(l1_size * 8) > len {
            return Err(Error::truncated("qcow L1 table", l1_at, l1_size * 8, len));
        }
        let l1 = read_be_u64_table(&*storage, l1_at, l1_size, "qcow L1 table")?;
        let disk = QcowDisk {
            storage,
            header,
            backing_file,
            l1,
            l2: Lru::new(QCOW1_L2_CACHE_TABLES),
        };
        disk.check_consistency()?;
        Ok(disk)
    }

    /// The consistency pass (formats/qcow1.md, "Consistency"); reads every L2 table once.
    fn check_consistency(&self) -> Result<()> {
        let h = &self.header;
        let len = self.storage.len();
        let cs = h.cluster_size();
        let mut pass = Pass::new(len, h.cluster_bits)?;
        pass.metadata(0, HEADER_LEN as u64, "header", 0);
        if h.backing_file_offset != 0 {
            pass.metadata(
                h.backing_file_offset,
                u64::from(h.backing_file_size),
                "backing file name",
                8,
            );
        }
        pass.metadata(h.l1_table_offset, self.l1.len() as u64 * 8, "L1 table", 40);
        let l2_bytes = h.l2_entries() * 8;
        for (i, &t) in self.l1.iter().enumerate() {
            if t == 0 {
                continue;
            }
            let at = h.l1_table_offset + 8 * i as u64;
            if t.saturating_add(l2_bytes) > len {
                return Err(Error::truncated("qcow L2 table", t, l2_bytes, len));
            }
            pass.metadata(t, l2_bytes, "L2 table", at);
        }
        // The tables first: no L2 table is read that overlaps other metadata. Then the
        // compressed clusters (byte ranges, checked with the metadata), then the data clusters
        // against both.
        pass.check_ranges()?;
        let mut data = Vec::new();
        for (i, &t) in self.l1.iter().enumerate() {
            if t == 0 {
                continue;
            }
            let table = read_be_u64_table(&*self.storage, t, h.l2_entries(), "qcow L2 table")?;
            for (j, &e) in table.iter().enumerate() {
                let at = t + 8 * j as u64;
                let guest = (i as u64 * h.l2_entries() + j as u64).saturating_mul(cs);
                match Entry::decode(e, h.cluster_bits) {
                    Entry::Unallocated => {}
                    Entry::Compressed { offset, size } => {
                        if size == 0 || offset.saturating_add(size) > len {
                            return Err(Error::malformed(
                                "qcow L2 table",
                                at,
                                format!(
                                    "compressed cluster of {size} bytes at {offset:#x} is not inside the file"
                                ),
                            ));
                        }
                        pass.compressed(offset, size, at)?;
                    }
                    Entry::Data(offset) => {
                        if !offset.is_multiple_of(cs) {
                            return Err(Error::malformed(
                                "qcow L2 table",
                                at,
                                format!("data cluster offset {offset:#x} is not cluster-aligned"),
                            ));
                        }
                        let held = h.virtual_size().saturating_sub(guest).min(cs);
                        if offset.saturating_add(held) > len || offset >= len {
                            return Err(Error::truncated("qcow data cluster", offset, held, len));
                        }
                        data.push((offset, at));
                    }
                }
            }
        }
        pass.check_ranges()?;
        for (offset, at) in data {
            pass.data(offset, at)?;
        }
        Ok(())
    }

    fn l2(&self, offset: u64) -> Result<Arc<Vec<u64>>> {
        if let Some(t) = self.l2.get(&offset) {
            return Ok(t);
        }
        let t = Arc::new(read_be_u64_table(
            &*self.storage,
            offset,
            self.header.l2_entries(),
            "qcow L2 table",
        )?);
        self.l2.insert(offset, t.clone());
        Ok(t)
    }

    /// Makes the reader over `backing`, where the image has a backing file.
    pub fn into_reader(self, backing: Option<Arc<dyn BlockReader>>) -> QcowReader {
        MappedReader::new(self, backing)
    }
}

impl MappedDisk for QcowDisk {
    fn virtual_size(&self) -> u64 {
        self.header.virtual_size()
    }

    fn walk(&self, start: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let span = h.l2_span();
        let mut pos = start;
        while pos < end {
            let l1e = usize::try_from(pos / span)
                .ok()
                .and_then(|i| self.l1.get(i))
                .copied()
                .unwrap_or(0);
            if l1e == 0 {
                let next = ((pos / span + 1) * span).min(end);
                f(Segment {
                    start: pos,
                    length: next - pos,
                    mapping: Mapping::Unallocated { host: None },
                })?;
                pos = next;
                continue;
            }
            let table = self.l2(l1e)?;
            let cluster_start = pos / cs * cs;
            let next = (cluster_start + cs).min(end);
            let e = usize::try_from((pos / cs) % h.l2_entries())
                .ok()
                .and_then(|j| table.get(j))
                .copied()
                .unwrap_or(0);
            let mapping = match Entry::decode(e, h.cluster_bits) {
                Entry::Unallocated => Mapping::Unallocated { host: None },
                Entry::Data(offset) => Mapping::Stored {
                    file: 0,
                    offset: offset + pos % cs,
                },
                Entry::Compressed { offset, .. } => Mapping::Encoded {
                    unit: Unit {
                        source: 0,
                        id: e,
                        at: offset,
                        len: cs,
                    },
                    unit_start: cluster_start,
                },
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

    /// Inflates a compressed cluster: raw deflate data that must fill exactly one cluster.
    fn decode(&self, unit: &Unit, out: &mut [u8]) -> Result<()> {
        let Entry::Compressed { offset, size } = Entry::decode(unit.id, self.header.cluster_bits)
        else {
            return Err(Error::internal(
                "qcow: decoding a cluster that is not compressed",
            ));
        };
        crate::io::with_scratch(usize_len(size)?, |input| {
            read_exact_at(&*self.storage, input, offset, "qcow compressed cluster")?;
            let problem = match inflate(input, out, false) {
                Ok(Inflated::Ended(n)) if n < out.len() => {
                    format!(
                        "deflate data inflates to {n} bytes, less than the cluster of {}",
                        out.len()
                    )
                }
                Ok(_) => return Ok(()),
                Err(InflateProblem::TooLong) => {
                    format!(
                        "deflate data inflates to more than the cluster of {}",
                        out.len()
                    )
                }
                Err(InflateProblem::Corrupt(e)) => format!("deflate data is corrupt: {e}"),
            };
            Err(Error::malformed("qcow compressed cluster", offset, problem))
        })
    }

    fn data_structure(&self) -> &'static str {
        "qcow data cluster"
    }

    fn info(&self) -> Option<FormatInfo> {
        let h = &self.header;
        Some(FormatInfo::Qcow(QcowInfo {
            cluster_size: h.cluster_size(),
            l2_bits: h.l2_bits,
            backing_filename: self.backing_file.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::qcow1::header::CRYPT_NONE;
    use crate::storage::MemoryStorage;
    use byteorder::{BigEndian, ByteOrder};

    /// A 512-byte-cluster image (64 entries per L2 table): header, L1 (one entry) at 48, the
    /// L2 table at 512, then `tail` bytes; `l2` lists (entry, value).
    fn image(l2: &[(usize, u64)], tail: &[u8]) -> Vec<u8> {
        let h = QcowHeader {
            backing_file_offset: 0,
            backing_file_size: 0,
            mtime: 0,
            size: 64 * 512,
            cluster_bits: 9,
            l2_bits: 6,
            crypt_method: CRYPT_NONE,
            l1_table_offset: 48,
        };
        let mut b = vec![0u8; 1024];
        b[..48].copy_from_slice(&h.to_bytes());
        BigEndian::write_u64(&mut b[48..], 512);
        for &(i, v) in l2 {
            BigEndian::write_u64(&mut b[512 + 8 * i..], v);
        }
        b.extend_from_slice(tail);
        b
    }

    fn open(b: Vec<u8>) -> Result<QcowReader> {
        QcowDisk::open(Arc::new(MemoryStorage::new(b))).map(|d| d.into_reader(None))
    }

    fn compressed(offset: u64, size: u64) -> u64 {
        OFLAG_COMPRESSED | (size << (63 - 9)) | offset
    }

    #[test]
    fn reads_data_and_compressed_clusters() {
        let packed = crate::compress::deflate(&[7u8; 512], crate::compress::QCOW2_CLUSTER).unwrap();
        let mut tail = vec![3u8; 512];
        tail.extend_from_slice(&packed);
        let r = open(image(
            &[(0, 1024), (2, compressed(1536, packed.len() as u64))],
            &tail,
        ))
        .unwrap();
        let mut buf = vec![0xaau8; 1536];
        r.read_at(&mut buf, 0).unwrap();
        assert!(buf[..512].iter().all(|&x| x == 3));
        assert!(buf[512..1024].iter().all(|&x| x == 0));
        assert!(buf[1024..].iter().all(|&x| x == 7));
        let m = r.map(0, 1536).unwrap();
        assert!(m[2].compressed);
    }

    #[test]
    fn inconsistent_entries_are_refused() {
        let tail = vec![1u8; 1024];
        for (l2, kind, needle) in [
            (&[(0, 1024), (1, 1024)][..], "malformed", "shared"),
            (&[(0, 512)][..], "malformed", "overlaps the L2 table"),
            (&[(0, 0)][..], "ok", ""),
            (&[(0, 1000)][..], "malformed", "not cluster-aligned"),
            (&[(0, 4096)][..], "truncated", "qcow data cluster"),
            (
                &[(0, compressed(40, 20))][..],
                "malformed",
                "overlaps the header",
            ),
            (
                &[(0, compressed(1024, 20)), (1, compressed(1024, 20))][..],
                "malformed",
                "shared",
            ),
            (
                &[(0, compressed(1024, 20)), (1, 1024)][..],
                "malformed",
                "overlaps the compressed cluster",
            ),
            (
                &[(0, compressed(1900, 500))][..],
                "malformed",
                "not inside the file",
            ),
        ] {
            match open(image(l2, &tail)) {
                Ok(_) => assert_eq!(kind, "ok", "{l2:?}"),
                Err(e) => {
                    assert_eq!(e.kind(), kind, "{l2:?}: {e}");
                    assert!(e.to_string().contains(needle), "{l2:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn corrupt_compressed_data_is_an_error_when_read() {
        let r = open(image(&[(0, compressed(1024, 100))], &[0xffu8; 512])).unwrap();
        let mut buf = vec![0u8; 512];
        assert_eq!(r.read_at(&mut buf, 0).unwrap_err().kind(), "malformed");
    }
}
