//! Reads a QED image: the L1 table in memory, L2 tables through a small cache, every table
//! entry checked at open by the consistency pass (which is also the check the "need check"
//! flag asks for).

use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use super::header::{F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK, HEADER_LEN, QedHeader};
use super::info::QedInfo;
use super::usage::ClusterUse;
use crate::block::{BlockReader, usize_len};
use crate::cache::Lru;
use crate::error::{Error, Result};
use crate::formats::info::FormatInfo;
use crate::limits::QED_L2_CACHE_BYTES;
use crate::mapped::{MappedDisk, MappedReader, Mapping, Segment, only_file};
use crate::storage::{Storage, read_exact_at};

/// An L1 or L2 entry for "nothing here": the backing file's data, or zeros without one.
pub const UNALLOCATED: u64 = 0;
/// An L2 entry for a cluster that reads as zeros.
pub const ZERO_CLUSTER: u64 = 1;

/// The reader: a [`QedDisk`] with its backing disk, if one is attached.
pub type QedReader = MappedReader<QedDisk>;

/// A QED image's header and tables, read and checked.
pub struct QedDisk {
    storage: Arc<dyn Storage>,
    /// The header.
    pub header: QedHeader,
    /// The backing file's name, when the image has one.
    pub backing_filename: Option<String>,
    l1: Vec<u64>,
    l2: Lru<u64, Arc<Vec<u64>>>,
}

/// Reads the table of `header.table_bytes()` at `offset` (already checked inside the file).
fn read_table(
    storage: &dyn Storage,
    header: &QedHeader,
    offset: u64,
    what: &'static str,
) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; usize_len(header.table_bytes())?];
    read_exact_at(storage, &mut raw, offset, what)?;
    Ok(raw.chunks_exact(8).map(LittleEndian::read_u64).collect())
}

impl QedDisk {
    /// Reads the header, the backing file name and the L1 table, and checks every table entry.
    pub fn open(storage: Arc<dyn Storage>) -> Result<QedDisk> {
        let len = storage.len();
        if len < HEADER_LEN as u64 {
            return Err(Error::truncated("qed header", 0, HEADER_LEN as u64, len));
        }
        let mut b = [0u8; HEADER_LEN];
        read_exact_at(&*storage, &mut b, 0, "qed header")?;
        let header = QedHeader::parse(&b)?;
        let backing_filename = if header.has_backing_file() {
            let at = u64::from(header.backing_filename_offset);
            let n = u64::from(header.backing_filename_size);
            if at + n > len {
                return Err(Error::truncated("qed backing file name", at, n, len));
            }
            let mut name = vec![0u8; usize_len(n)?];
            read_exact_at(&*storage, &mut name, at, "qed backing file name")?;
            Some(
                String::from_utf8(name)
                    .map_err(|_| Error::malformed("qed backing file name", at, "not UTF-8"))?,
            )
        } else {
            None
        };
        let l1_at = header.l1_table_offset;
        if l1_at.saturating_add(header.table_bytes()) > len {
            return Err(Error::truncated(
                "qed L1 table",
                l1_at,
                header.table_bytes(),
                len,
            ));
        }
        let l1 = read_table(&*storage, &header, l1_at, "qed L1 table")?;
        let tables = usize::try_from(QED_L2_CACHE_BYTES / header.table_bytes())
            .unwrap_or(2)
            .max(2);
        let disk = QedDisk {
            storage,
            header,
            backing_filename,
            l1,
            l2: Lru::new(tables),
        };
        disk.check_consistency().map_err(|e| {
            if disk.header.features & F_NEED_CHECK != 0 {
                // The flag says a write may not have finished: say why the check mattered.
                match e {
                    Error::Malformed { file, structure, offset, problem } => Error::Malformed {
                        file,
                        structure,
                        offset,
                        problem: format!("{problem} (the image's need-check flag is set: it was not closed cleanly)"),
                    },
                    other => other,
                }
            } else {
                e
            }
        })?;
        Ok(disk)
    }

    /// The consistency pass (formats/qed.md, "Consistency"): every L1 entry points at a distinct
    /// L2 table inside the file, after the header and clear of the L1 table; every L2 entry is
    /// unallocated, the zero marker, or a cluster-aligned data cluster inside the file that no
    /// other guest cluster and no metadata uses. Reads each L2 table once (all of them lie in
    /// distinct clusters of the file, so at most the file's size).
    fn check_consistency(&self) -> Result<()> {
        let h = &self.header;
        let cs = u64::from(h.cluster_size);
        let len = self.storage.len();
        let mut uses = ClusterUse::new(len, cs)?;
        let clash = |structure: &'static str, at: u64, what: String, problem: String| {
            Error::malformed(structure, at, format!("{what} overlaps {problem}"))
        };
        uses.metadata(0, h.header_bytes(), Some("header"))
            .map_err(|p| clash("qed header", 12, "the header".into(), p))?;
        uses.metadata(h.l1_table_offset, h.table_bytes(), Some("L1 table"))
            .map_err(|p| clash("qed header", 40, "the L1 table".into(), p))?;
        let tb = h.table_bytes();
        for (i, &e) in self.l1.iter().enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            let at = h.l1_table_offset + 8 * i as u64;
            check_cluster(e, cs, h, "qed L1 table", at, "L2 table")?;
            if e.saturating_add(tb) > len {
                return Err(Error::truncated("qed L2 table", e, tb, len));
            }
            uses.metadata(e, tb, None)
                .map_err(|p| clash("qed L1 table", at, format!("L2 table at {e:#x}"), p))?;
        }
        let entries = h.table_entries();
        for (i, &t) in self.l1.iter().enumerate() {
            if t == UNALLOCATED {
                continue;
            }
            let table = read_table(&*self.storage, h, t, "qed L2 table")?;
            for (j, &e) in table.iter().enumerate() {
                if e == UNALLOCATED || e == ZERO_CLUSTER {
                    continue;
                }
                let at = t + 8 * j as u64;
                check_cluster(e, cs, h, "qed L2 table", at, "data cluster")?;
                let guest = (i as u64 * entries + j as u64).saturating_mul(cs);
                let held = h.image_size.saturating_sub(guest).min(cs);
                if e.saturating_add(held) > len {
                    return Err(Error::truncated("qed data cluster", e, held, len));
                }
                uses.data(e)
                    .map_err(|p| clash("qed L2 table", at, format!("data cluster at {e:#x}"), p))?;
            }
        }
        Ok(())
    }

    /// The L2 table at `offset`, from the cache or the file (checked at open).
    fn l2(&self, offset: u64) -> Result<Arc<Vec<u64>>> {
        if let Some(t) = self.l2.get(&offset) {
            return Ok(t);
        }
        let t = Arc::new(read_table(
            &*self.storage,
            &self.header,
            offset,
            "qed L2 table",
        )?);
        self.l2.insert(offset, t.clone());
        Ok(t)
    }

    /// The backing file's format when the image records it (raw, with the no-probe flag).
    pub fn backing_format(&self) -> Option<&'static str> {
        (self.header.features & F_BACKING_FORMAT_NO_PROBE != 0).then_some("raw")
    }

    /// Makes the reader over `backing`, where the image has a backing file.
    pub fn into_reader(self, backing: Option<Arc<dyn BlockReader>>) -> QedReader {
        MappedReader::new(self, backing)
    }
}

/// A table entry that must be a cluster: aligned, and after the header clusters.
fn check_cluster(
    e: u64,
    cs: u64,
    h: &QedHeader,
    structure: &'static str,
    at: u64,
    what: &str,
) -> Result<()> {
    if !e.is_multiple_of(cs) || e < h.header_bytes() {
        return Err(Error::malformed(
            structure,
            at,
            format!("{what} offset {e:#x} is not a cluster after the header"),
        ));
    }
    Ok(())
}

impl MappedDisk for QedDisk {
    fn virtual_size(&self) -> u64 {
        self.header.image_size
    }

    fn walk(&self, start: u64, end: u64, f: &mut dyn FnMut(Segment) -> Result<()>) -> Result<()> {
        let cs = u64::from(self.header.cluster_size);
        let entries = self.header.table_entries();
        let span = entries * cs;
        let mut pos = start;
        while pos < end {
            let l1i = pos / span;
            let l1e = usize::try_from(l1i)
                .ok()
                .and_then(|i| self.l1.get(i))
                .copied()
                .unwrap_or(UNALLOCATED);
            if l1e == UNALLOCATED {
                let next = ((l1i + 1) * span).min(end);
                f(Segment {
                    start: pos,
                    length: next - pos,
                    mapping: Mapping::Unallocated { host: None },
                })?;
                pos = next;
                continue;
            }
            let table = self.l2(l1e)?;
            let next = ((pos / cs + 1) * cs).min(end);
            let j = (pos / cs) % entries;
            let e = usize::try_from(j)
                .ok()
                .and_then(|j| table.get(j))
                .copied()
                .unwrap_or(UNALLOCATED);
            let mapping = match e {
                UNALLOCATED => Mapping::Unallocated { host: None },
                ZERO_CLUSTER => Mapping::Zero { host: None },
                e => Mapping::Stored {
                    file: 0,
                    offset: e + pos % cs,
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

    fn data_structure(&self) -> &'static str {
        "qed data cluster"
    }

    fn info(&self) -> Option<FormatInfo> {
        let h = &self.header;
        Some(FormatInfo::Qed(QedInfo {
            cluster_size: u64::from(h.cluster_size),
            table_size: h.table_size,
            header_size: h.header_size,
            need_check: h.features & F_NEED_CHECK != 0,
            backing_filename: self.backing_filename.clone(),
            backing_filename_format: self.backing_format().map(str::to_string),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::qed::header::F_BACKING_FILE;
    use crate::storage::MemoryStorage;

    const CS: u64 = 4096;

    /// A 4 KiB-cluster image of one-cluster tables (512 entries): header at 0, L1 at 4 KiB, an
    /// L2 table at 8 KiB, data clusters from 12 KiB filled with their index + 1. `l2` lists
    /// (entry, value).
    fn image(l2: &[(usize, u64)], data_clusters: u64, flags: u64) -> Vec<u8> {
        let h = QedHeader {
            cluster_size: CS as u32,
            table_size: 1,
            header_size: 1,
            features: flags,
            compat_features: 0,
            autoclear_features: 0,
            l1_table_offset: CS,
            image_size: 16 * CS,
            backing_filename_offset: 0,
            backing_filename_size: 0,
        };
        let mut b = vec![0u8; 3 * CS as usize];
        b[..64].copy_from_slice(&h.to_bytes());
        LittleEndian::write_u64(&mut b[CS as usize..], 2 * CS);
        for &(i, v) in l2 {
            LittleEndian::write_u64(&mut b[2 * CS as usize + 8 * i..], v);
        }
        for n in 0..data_clusters {
            b.extend(std::iter::repeat_n(n as u8 + 1, CS as usize));
        }
        b
    }

    fn open(b: Vec<u8>) -> Result<QedReader> {
        QedDisk::open(Arc::new(MemoryStorage::new(b))).map(|d| d.into_reader(None))
    }

    #[test]
    fn reads_data_zero_and_unallocated_clusters() {
        let r = open(image(&[(0, 4 * CS), (1, ZERO_CLUSTER), (3, 3 * CS)], 2, 0)).unwrap();
        let mut buf = vec![0xaau8; 4 * CS as usize];
        r.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&x| x == 2));
        assert!(buf[4096..12288].iter().all(|&x| x == 0));
        assert!(buf[12288..].iter().all(|&x| x == 1));
        let m = r.map(0, 16 * CS).unwrap();
        assert_eq!(m[0].host_offset, Some(4 * CS));
        assert_eq!(
            m.last().unwrap().state,
            crate::block::ExtentState::Unallocated
        );
    }

    #[test]
    fn inconsistent_tables_are_refused_with_the_entry() {
        for (l2, kind, needle) in [
            (
                &[(0, 3 * CS), (1, 3 * CS)][..],
                "malformed",
                "shared between guest clusters",
            ),
            (&[(0, 2 * CS)][..], "malformed", "an L2 table at 0x2000"),
            (&[(0, CS)][..], "malformed", "the L1 table at 0x1000"),
            (&[(0, 0)][..], "ok", ""),
            (&[(0, 3 * CS + 8)][..], "malformed", "not a cluster"),
            (&[(0, 9 * CS)][..], "truncated", "qed data cluster"),
        ] {
            match open(image(l2, 1, 0)) {
                Ok(_) => assert_eq!(kind, "ok", "{l2:?}"),
                Err(e) => {
                    assert_eq!(e.kind(), kind, "{l2:?}: {e}");
                    assert!(e.to_string().contains(needle), "{e}");
                    if kind == "malformed" {
                        assert!(e.to_string().contains("offset 0x2"), "{e}");
                    }
                }
            }
        }
        // An L1 entry at the header.
        let mut b = image(&[], 0, 0);
        LittleEndian::write_u64(&mut b[CS as usize..], 0);
        LittleEndian::write_u64(&mut b[CS as usize + 8..], CS);
        let e = open(b).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("the L1 table at 0x1000"), "{e}");
    }

    #[test]
    fn need_check_opens_only_when_the_tables_check_clean() {
        assert!(open(image(&[(0, 3 * CS)], 1, F_NEED_CHECK)).is_ok());
        let e = open(image(&[(0, 3 * CS), (5, 3 * CS)], 1, F_NEED_CHECK))
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("need-check"), "{e}");
        let _ = F_BACKING_FILE;
    }
}
