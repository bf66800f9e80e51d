//! Which host clusters a QED image's metadata and its guest clusters use, for the open-time
//! consistency pass: no table entry may point at the header or a table (metadata read as guest
//! data), and no host cluster may hold two guest clusters (amplification). One bit per host
//! cluster for each of the two uses.

use crate::cluster_set::ClusterSet;
use crate::error::{Error, Result};
use crate::limits::MAX_QED_MAP_CLUSTERS;

/// What the pass found at a host cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Nothing yet.
    Free,
    /// The header, the L1 table or an L2 table.
    Metadata,
    /// One guest cluster's data.
    Data,
}

/// Two bitmaps over the file's clusters, and the named metadata regions for errors.
pub(crate) struct ClusterUse {
    metadata: ClusterSet,
    data: ClusterSet,
    clusters: u64,
    cluster_size: u64,
    regions: Vec<(u64, u64, &'static str)>,
}

impl ClusterUse {
    /// The map of a file of `file_len` bytes in clusters of `cluster_size`; refused past
    /// [`MAX_QED_MAP_CLUSTERS`].
    pub fn new(file_len: u64, cluster_size: u64) -> Result<Self> {
        let clusters = file_len.div_ceil(cluster_size.max(1));
        if clusters > MAX_QED_MAP_CLUSTERS {
            return Err(Error::limit(
                "qed image",
                0,
                format!(
                    "{clusters} host clusters, more than the {MAX_QED_MAP_CLUSTERS} the consistency \
                     check follows"
                ),
            ));
        }
        Ok(ClusterUse {
            metadata: ClusterSet::new(clusters, "qed image")?,
            data: ClusterSet::new(clusters, "qed image")?,
            clusters,
            cluster_size,
            regions: Vec::new(),
        })
    }

    /// What host cluster `c` is used for.
    pub fn get(&self, c: u64) -> Use {
        if self.metadata.contains(c) {
            Use::Metadata
        } else if self.data.contains(c) {
            Use::Data
        } else {
            Use::Free
        }
    }

    /// Names what is at host offset `at` (a used cluster), for errors.
    pub fn describe(&self, at: u64) -> String {
        let c = at / self.cluster_size;
        match self.get(c) {
            Use::Free => format!("nothing at {at:#x}"),
            Use::Data => format!(
                "host cluster {:#x}, the data of another guest cluster (data shared between \
                 guest clusters)",
                c * self.cluster_size
            ),
            Use::Metadata => match self.regions.iter().find(|r| r.0 <= at && at < r.1) {
                Some((start, _, name)) => format!("the {name} at {start:#x}"),
                None => format!("an L2 table at {:#x}", c * self.cluster_size),
            },
        }
    }

    /// Marks `[offset, offset + len)` (cluster-aligned) as metadata; `name` names it in later
    /// errors (`None` for L2 tables). Fails with what it overlaps.
    pub fn metadata(
        &mut self,
        offset: u64,
        len: u64,
        name: Option<&'static str>,
    ) -> std::result::Result<(), String> {
        let first = offset / self.cluster_size;
        let end = offset
            .saturating_add(len)
            .div_ceil(self.cluster_size)
            .min(self.clusters);
        for c in first..end {
            if self.get(c) != Use::Free {
                return Err(self.describe(c * self.cluster_size));
            }
            self.metadata.insert(c);
        }
        if let Some(name) = name {
            self.regions
                .push((offset, offset.saturating_add(len), name));
        }
        Ok(())
    }

    /// Marks host cluster `offset` as one guest cluster's data. Fails with what it already is.
    pub fn data(&mut self, offset: u64) -> std::result::Result<(), String> {
        let c = offset / self.cluster_size;
        if c >= self.clusters {
            return Err(format!("{offset:#x}, past the end of the file"));
        }
        if self.get(c) != Use::Free {
            return Err(self.describe(offset));
        }
        self.data.insert(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_data_do_not_mix() {
        let mut m = ClusterUse::new(10 << 16, 1 << 16).unwrap();
        m.metadata(0, 1 << 16, Some("header")).unwrap();
        m.metadata(1 << 16, 4 << 16, Some("L1 table")).unwrap();
        assert!(
            m.metadata(4 << 16, 1 << 16, None)
                .unwrap_err()
                .contains("the L1 table at 0x10000")
        );
        m.metadata(5 << 16, 1 << 16, None).unwrap();
        assert!(m.data(0).unwrap_err().contains("the header at 0x0"));
        assert!(
            m.data(5 << 16)
                .unwrap_err()
                .contains("an L2 table at 0x50000")
        );
        m.data(6 << 16).unwrap();
        assert!(m.data(6 << 16).unwrap_err().contains("shared"));
        assert!(m.data(10 << 16).unwrap_err().contains("past the end"));
        assert_eq!(m.get(6), Use::Data);
        assert_eq!(m.get(7), Use::Free);
    }

    #[test]
    fn the_map_is_capped() {
        let e = ClusterUse::new((MAX_QED_MAP_CLUSTERS + 1) * 4096, 4096)
            .err()
            .unwrap();
        assert_eq!(e.kind(), "limit-exceeded");
    }
}
