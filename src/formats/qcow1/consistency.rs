//! The open-time consistency pass of a QCOW version 1 image (formats/qcow1.md, "Consistency").
//! Metadata (header, backing file name, L1 and L2 tables) and compressed clusters are byte
//! ranges, which may share host clusters (qemu places L2 tables on 512-byte boundaries and
//! packs compressed clusters) but not bytes; uncompressed data clusters are whole aligned host
//! clusters that nothing else may touch, each used by one guest cluster only.

use crate::cluster_set::ClusterSet;
use crate::error::{Error, Result};
use crate::limits::{MAX_QCOW1_COMPRESSED_CLUSTERS, MAX_QCOW1_MAP_CLUSTERS};

/// A byte range of the file and what it is, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub start: u64,
    pub end: u64,
    /// What the range is.
    pub what: &'static str,
    /// Where the entry that points at it is (0 for the header's own ranges).
    pub entry_at: u64,
}

/// What the pass has seen so far.
pub(crate) struct Pass {
    ranges: Vec<Range>,
    compressed: usize,
    touched: ClusterSet,
    data: ClusterSet,
    clusters: u64,
    cluster_bits: u8,
}

impl Pass {
    /// A pass over a file of `file_len` bytes; refused past [`MAX_QCOW1_MAP_CLUSTERS`] clusters.
    pub fn new(file_len: u64, cluster_bits: u8) -> Result<Pass> {
        let clusters = file_len.div_ceil(1 << cluster_bits);
        if clusters > MAX_QCOW1_MAP_CLUSTERS {
            return Err(Error::limit(
                "qcow image",
                0,
                format!(
                    "{clusters} host clusters, more than the {MAX_QCOW1_MAP_CLUSTERS} the \
                     consistency check follows"
                ),
            ));
        }
        Ok(Pass {
            ranges: Vec::new(),
            compressed: 0,
            touched: ClusterSet::new(clusters, "qcow image")?,
            data: ClusterSet::new(clusters, "qcow image")?,
            clusters,
            cluster_bits,
        })
    }

    /// Adds a metadata range.
    pub fn metadata(&mut self, start: u64, len: u64, what: &'static str, entry_at: u64) {
        self.ranges.push(Range {
            start,
            end: start.saturating_add(len),
            what,
            entry_at,
        });
    }

    /// Adds a compressed cluster's bytes; refused past [`MAX_QCOW1_COMPRESSED_CLUSTERS`].
    pub fn compressed(&mut self, start: u64, len: u64, entry_at: u64) -> Result<()> {
        if self.compressed as u64 >= MAX_QCOW1_COMPRESSED_CLUSTERS {
            return Err(Error::limit(
                "qcow L2 table",
                entry_at,
                format!("more than {MAX_QCOW1_COMPRESSED_CLUSTERS} compressed clusters"),
            ));
        }
        self.compressed += 1;
        self.metadata(start, len, "compressed cluster", entry_at);
        Ok(())
    }

    /// Checks that no two ranges share a byte, and marks the clusters they touch. Called once
    /// the tables are known (before they are read) and again once the compressed clusters are
    /// (before data clusters are added).
    pub fn check_ranges(&mut self) -> Result<()> {
        self.ranges.sort_unstable_by_key(|r| (r.start, r.end));
        // Sorted by start, a range that overlaps any earlier one overlaps the one that reaches
        // furthest so far.
        let mut furthest: Option<Range> = None;
        for r in &self.ranges {
            if r.start == r.end {
                continue;
            }
            if let Some(f) = furthest
                && r.start < f.end
            {
                // The structure holding the entry that points at the range.
                let structure = match r.what {
                    "L2 table" => "qcow L1 table",
                    "compressed cluster" => "qcow L2 table",
                    _ => "qcow header",
                };
                let shared = if r.start == f.start && r.what == f.what {
                    format!(
                        " (two entries use the same {}: data shared between guest ranges)",
                        r.what
                    )
                } else {
                    String::new()
                };
                return Err(Error::malformed(
                    structure,
                    r.entry_at,
                    format!(
                        "{} at {:#x} overlaps the {} at {:#x}{shared}",
                        r.what, r.start, f.what, f.start
                    ),
                ));
            }
            if furthest.is_none_or(|f| r.end > f.end) {
                furthest = Some(*r);
            }
            let first = r.start >> self.cluster_bits;
            let last = (r.end - 1) >> self.cluster_bits;
            for c in first..=last.min(self.clusters.saturating_sub(1)) {
                self.touched.insert(c);
            }
        }
        Ok(())
    }

    /// Adds host cluster `offset` (aligned, inside the file) as one guest cluster's data; the
    /// entry pointing at it is at `entry_at`.
    pub fn data(&mut self, offset: u64, entry_at: u64) -> Result<()> {
        let c = offset >> self.cluster_bits;
        if self.data.contains(c) {
            return Err(Error::malformed(
                "qcow L2 table",
                entry_at,
                format!(
                    "data cluster at {offset:#x} is also another guest cluster's (data shared \
                     between guest clusters)"
                ),
            ));
        }
        if self.touched.contains(c) {
            let end = offset + (1 << self.cluster_bits);
            let what = self
                .ranges
                .iter()
                .find(|r| r.start < end && offset < r.end)
                .map_or_else(
                    || "metadata".to_string(),
                    |r| format!("the {} at {:#x}", r.what, r.start),
                );
            return Err(Error::malformed(
                "qcow L2 table",
                entry_at,
                format!("data cluster at {offset:#x} overlaps {what}"),
            ));
        }
        self.data.insert(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_may_share_clusters_but_not_bytes() {
        let mut p = Pass::new(1 << 20, 12).unwrap();
        p.metadata(0, 48, "header", 0);
        p.metadata(48, 32, "L1 table", 0);
        p.metadata(512, 4096, "L2 table", 48);
        p.compressed(4608, 100, 0x200).unwrap();
        p.compressed(4708, 100, 0x208).unwrap();
        p.check_ranges().unwrap();
        p.data(0x3000, 0x210).unwrap();
        assert!(
            p.data(0x3000, 0x218)
                .unwrap_err()
                .to_string()
                .contains("shared")
        );
        let e = p.data(0x1000, 0x218).unwrap_err().to_string();
        assert!(e.contains("overlaps the L2 table at 0x200"), "{e}");

        let mut p = Pass::new(1 << 20, 12).unwrap();
        p.metadata(48, 32, "L1 table", 0);
        p.compressed(60, 10, 0x208).unwrap();
        let e = p.check_ranges().unwrap_err().to_string();
        assert!(
            e.contains("compressed cluster at 0x3c overlaps the L1 table"),
            "{e}"
        );

        let mut p = Pass::new(1 << 20, 12).unwrap();
        p.compressed(8192, 10, 0x200).unwrap();
        p.compressed(8192, 10, 0x208).unwrap();
        let e = p.check_ranges().unwrap_err().to_string();
        assert!(e.contains("shared"), "{e}");
    }

    #[test]
    fn the_pass_is_capped() {
        let e = Pass::new((MAX_QCOW1_MAP_CLUSTERS + 1) << 9, 9)
            .err()
            .unwrap();
        assert_eq!(e.kind(), "limit-exceeded");
    }
}
