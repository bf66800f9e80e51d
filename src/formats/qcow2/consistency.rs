//! The bookkeeping of the reader's open-time consistency pass (issue 20): which host clusters the
//! image's metadata and its active guest clusters use, so that no host cluster serves two guest
//! clusters (amplification) and no table entry points at metadata (metadata exposure), and the
//! compressed byte ranges, which may share host clusters but not bytes.
//!
//! The pass itself (which entries it visits and what it refuses) is `Qcow2Disk::check_consistency`
//! in `reader.rs`; the rules are in `formats/qcow2.md`, "Consistency".

use crate::error::{Error, Result};
use crate::limits::{MAX_QCOW2_COMPRESSED_CLUSTERS, MAX_QCOW2_MAP_CLUSTERS};

use super::tables::{COMPRESSED_SECTOR_SIZE, CompressedDescriptor, Geometry};

/// What a host cluster is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Nothing the pass has seen.
    Free,
    /// Header, L1, L2, refcount or snapshot structures.
    Metadata,
    /// The host cluster of one guest cluster (data, preallocated zeros, or an extended entry's
    /// subclusters).
    Data,
    /// Holds (part of) one or more compressed clusters.
    Compressed,
}

impl Use {
    fn bits(self) -> u64 {
        match self {
            Use::Free => 0,
            Use::Metadata => 1,
            Use::Data => 2,
            Use::Compressed => 3,
        }
    }

    fn from_bits(b: u64) -> Self {
        match b & 3 {
            0 => Use::Free,
            1 => Use::Metadata,
            2 => Use::Data,
            _ => Use::Compressed,
        }
    }
}

/// A named metadata region, for error messages.
struct Region {
    start: u64,
    end: u64,
    name: String,
}

/// Two bits per host cluster of the file, and the names of the fixed metadata regions.
pub(crate) struct ClusterMap {
    words: Vec<u64>,
    clusters: u64,
    cluster_bits: u32,
    regions: Vec<Region>,
    /// Clusters of persistent-bitmap data (one cluster each, too many to name as regions).
    bitmap_data: Vec<u64>,
}

impl ClusterMap {
    /// A map of every cluster of a file of `file_len` bytes; refused over
    /// [`MAX_QCOW2_MAP_CLUSTERS`].
    pub fn new(file_len: u64, cluster_bits: u32) -> Result<Self> {
        let clusters = file_len.div_ceil(1u64 << cluster_bits);
        if clusters > MAX_QCOW2_MAP_CLUSTERS {
            return Err(Error::limit(
                "qcow2 image",
                0,
                format!(
                    "{clusters} host clusters, more than the {MAX_QCOW2_MAP_CLUSTERS} the \
                     consistency check follows"
                ),
            ));
        }
        let words = usize::try_from(clusters.div_ceil(32))
            .map_err(|_| Error::limit("qcow2 image", 0, "too many host clusters"))?;
        Ok(ClusterMap {
            words: vec![0; words],
            clusters,
            cluster_bits,
            regions: Vec::new(),
            bitmap_data: Vec::new(),
        })
    }

    /// What cluster `c` is used for; `None` past the end of the file.
    pub fn get(&self, c: u64) -> Option<Use> {
        if c >= self.clusters {
            return None;
        }
        let word = self.words.get(usize::try_from(c / 32).ok()?)?;
        Some(Use::from_bits(word >> ((c % 32) * 2)))
    }

    fn set(&mut self, c: u64, u: Use) {
        if c >= self.clusters {
            return;
        }
        let shift = (c % 32) * 2;
        if let Some(word) = usize::try_from(c / 32)
            .ok()
            .and_then(|i| self.words.get_mut(i))
        {
            *word = (*word & !(3 << shift)) | (u.bits() << shift);
        }
    }

    /// The clusters `[offset, offset + len)` touches, clamped to the file.
    fn clusters_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        let first = offset >> self.cluster_bits;
        let last = offset.saturating_add(len - 1) >> self.cluster_bits;
        first.min(self.clusters)..last.saturating_add(1).min(self.clusters)
    }

    /// Marks `[offset, offset + len)` as the metadata `name`. Fails with what it overlaps when a
    /// cluster of it is already used.
    pub fn metadata(
        &mut self,
        offset: u64,
        len: u64,
        name: impl Into<String>,
    ) -> std::result::Result<(), String> {
        let name = name.into();
        for c in self.clusters_of(offset, len) {
            if let Some(u) = self.get(c).filter(|&u| u != Use::Free) {
                return Err(format!(
                    "{name} at {offset:#x} overlaps {}",
                    self.describe(c, u)
                ));
            }
            self.set(c, Use::Metadata);
        }
        self.regions.push(Region {
            start: offset,
            end: offset.saturating_add(len),
            name,
        });
        Ok(())
    }

    /// Marks host cluster `offset` as a cluster of persistent-bitmap data.
    pub fn bitmap_data(&mut self, offset: u64) -> std::result::Result<(), String> {
        self.table(offset, "bitmap data")?;
        self.bitmap_data.push(offset);
        Ok(())
    }

    /// Marks an L2 table (one cluster), which is not named (there may be many); a clash names it
    /// by `what`.
    pub fn table(&mut self, offset: u64, what: &str) -> std::result::Result<(), String> {
        let c = offset >> self.cluster_bits;
        if let Some(u) = self.get(c).filter(|&u| u != Use::Free) {
            return Err(format!(
                "{what} at {offset:#x} overlaps {}",
                self.describe(c, u)
            ));
        }
        self.set(c, Use::Metadata);
        Ok(())
    }

    /// Marks host cluster `offset` as the one guest cluster's data.
    pub fn data(&mut self, offset: u64) -> std::result::Result<(), String> {
        let c = offset >> self.cluster_bits;
        match self.get(c) {
            Some(Use::Free) => {
                self.set(c, Use::Data);
                Ok(())
            }
            Some(Use::Data) => Err(format!(
                "host cluster {offset:#x} is also the data of another guest cluster (data \
                 shared between guest clusters)"
            )),
            Some(u) => Err(format!(
                "host cluster {offset:#x} overlaps {}",
                self.describe(c, u)
            )),
            // Past the end of the file: the read refuses it (truncated).
            None => Ok(()),
        }
    }

    /// Marks the clusters the compressed bytes `[offset, offset + len)` lie in.
    pub fn compressed(&mut self, offset: u64, len: u64) -> std::result::Result<(), String> {
        for c in self.clusters_of(offset, len) {
            match self.get(c) {
                Some(Use::Free | Use::Compressed) => self.set(c, Use::Compressed),
                Some(u) => {
                    return Err(format!(
                        "compressed data at {offset:#x} overlaps {}",
                        self.describe(c, u)
                    ));
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Names what cluster `c` is used for (error path only).
    fn describe(&self, c: u64, u: Use) -> String {
        let at = c << self.cluster_bits;
        match u {
            Use::Free => format!("nothing at {at:#x}"),
            Use::Data => format!(
                "the host cluster {at:#x} of another guest cluster (data shared between guest \
                 clusters)"
            ),
            Use::Compressed => format!("compressed data in host cluster {at:#x}"),
            Use::Metadata => {
                let end = at.saturating_add(1 << self.cluster_bits);
                match self.regions.iter().find(|r| r.start < end && at < r.end) {
                    Some(r) => format!("the {} at {:#x}", r.name, r.start),
                    // Only an error's message looks this up.
                    None if self.bitmap_data.contains(&at) => {
                        format!("a cluster of bitmap data at {at:#x}")
                    }
                    None => format!("an L2 table at {at:#x}"),
                }
            }
        }
    }
}

/// The compressed clusters of the active image, checked once all are known: they may share host
/// clusters (qemu packs them byte by byte) but not bytes, and no two may be the same.
#[derive(Default)]
pub(crate) struct CompressedRanges {
    descriptors: Vec<u64>,
}

impl CompressedRanges {
    /// Adds one compressed cluster's descriptor (bits 0-61 of its L2 entry). Refused over
    /// [`MAX_QCOW2_COMPRESSED_CLUSTERS`].
    pub fn push(&mut self, descriptor: u64, entry_at: u64) -> Result<()> {
        if self.descriptors.len() as u64 >= MAX_QCOW2_COMPRESSED_CLUSTERS {
            return Err(Error::limit(
                "qcow2 L2 entry",
                entry_at,
                format!(
                    "more than {MAX_QCOW2_COMPRESSED_CLUSTERS} compressed clusters in the image"
                ),
            ));
        }
        self.descriptors.push(descriptor);
        Ok(())
    }

    /// Refuses two compressed clusters that start at the same byte, or one that starts before
    /// the last sector of the one before it (their bytes would overlap: the data of a compressed
    /// cluster covers every sector its descriptor counts but the last, which the next may share).
    pub fn check(mut self, geometry: &Geometry) -> Result<()> {
        let decode = |d: u64| CompressedDescriptor::decode(d, geometry);
        self.descriptors
            .sort_unstable_by_key(|&d| decode(d).host_offset);
        for pair in self.descriptors.windows(2) {
            let (a, b) = match pair {
                [a, b] => (decode(*a), decode(*b)),
                _ => continue,
            };
            let last_sector = a
                .end()
                .map_or(u64::MAX, |e| e.saturating_sub(COMPRESSED_SECTOR_SIZE));
            if b.host_offset == a.host_offset {
                return Err(Error::malformed(
                    "qcow2 compressed cluster",
                    b.host_offset,
                    "two guest clusters use the same compressed data",
                ));
            }
            if b.host_offset < last_sector {
                return Err(Error::malformed(
                    "qcow2 compressed cluster",
                    b.host_offset,
                    format!(
                        "compressed data overlaps the compressed cluster at {:#x}, which runs \
                         to {last_sector:#x} and beyond",
                        a.host_offset
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_data_and_compressed_clusters_do_not_mix() {
        let mut m = ClusterMap::new(10 << 16, 16).unwrap();
        m.metadata(0, 1 << 16, "header").unwrap();
        m.metadata(0x30000, 8, "L1 table").unwrap();
        assert_eq!(m.get(0), Some(Use::Metadata));
        assert_eq!(m.get(3), Some(Use::Metadata));
        assert_eq!(m.get(10), None);
        // The header and the L1 table are named.
        let e = m.table(0x30000, "L2 table").unwrap_err();
        assert!(e.contains("the L1 table at 0x30000"), "{e}");
        let e = m.data(0x0).unwrap_err();
        assert!(e.contains("the header at 0x0"), "{e}");
        m.table(0x40000, "L2 table").unwrap();
        let e = m.data(0x40000).unwrap_err();
        assert!(e.contains("an L2 table at 0x40000"), "{e}");
        // One data cluster per guest cluster.
        m.data(0x50000).unwrap();
        let e = m.data(0x50000).unwrap_err();
        assert!(e.contains("shared"), "{e}");
        // Compressed clusters may share host clusters with each other, not with data.
        m.compressed(0x60000, 1000).unwrap();
        m.compressed(0x60000 + 1000, 70000).unwrap();
        assert_eq!(m.get(7), Some(Use::Compressed));
        assert!(m.compressed(0x50100, 10).is_err());
        assert!(m.data(0x70000).unwrap_err().contains("compressed"));
        // Past the end of the file: left to the read.
        m.data(0x100000).unwrap();
        m.compressed(0x9ff00, 0x200).unwrap();
    }

    #[test]
    fn the_map_is_capped() {
        let e = ClusterMap::new((MAX_QCOW2_MAP_CLUSTERS + 1) << 9, 9)
            .err()
            .unwrap();
        assert_eq!(e.kind(), "limit-exceeded");
        ClusterMap::new(MAX_QCOW2_MAP_CLUSTERS << 9, 9).unwrap();
    }

    #[test]
    fn compressed_ranges_may_share_a_sector_but_not_bytes() {
        let g = Geometry::new(16, false, 4).unwrap();
        let enc = |host: u64, len: u64| CompressedDescriptor::encode(host, len, &g).unwrap();
        let check = |ds: &[u64]| {
            let mut r = CompressedRanges::default();
            for &d in ds {
                r.push(d & !(3 << 62), 0).unwrap();
            }
            r.check(&g).map_err(|e| e.kind())
        };
        // Packed back to back, the second starting inside the first's last sector.
        assert_eq!(
            check(&[enc(0x10000, 1000), enc(0x10000 + 1000, 3000)]),
            Ok(())
        );
        assert_eq!(
            check(&[enc(0x10000 + 1000, 3000), enc(0x10000, 1000)]),
            Ok(())
        );
        // The same data twice.
        assert_eq!(
            check(&[enc(0x10000, 1000), enc(0x10000, 1000)]),
            Err("malformed")
        );
        // Starting before the last sector of another.
        assert_eq!(
            check(&[enc(0x10000, 3000), enc(0x10000 + 1000, 3000)]),
            Err("malformed")
        );
    }
}
