//! One bit per host cluster of a file, for the consistency passes that mark what each cluster
//! holds (QCOW version 1, QED). Cluster numbers are the file's 64-bit ones; a number past the
//! set is never in it and is not marked (the passes check bounds and name the fault).

use fixedbitset::FixedBitSet;

use crate::error::{Error, Result};

/// A set of host clusters.
pub(crate) struct ClusterSet(FixedBitSet);

impl ClusterSet {
    /// An empty set of `clusters` clusters of the image `structure` names (for the error when
    /// they cannot be addressed in memory).
    pub fn new(clusters: u64, structure: &'static str) -> Result<ClusterSet> {
        let bits = usize::try_from(clusters)
            .map_err(|_| Error::limit(structure, 0, "too many host clusters"))?;
        Ok(ClusterSet(FixedBitSet::with_capacity(bits)))
    }

    /// Whether cluster `c` is in the set.
    pub fn contains(&self, c: u64) -> bool {
        usize::try_from(c).is_ok_and(|i| self.0.contains(i))
    }

    /// Adds cluster `c` (nothing past the set's end).
    pub fn insert(&mut self, c: u64) {
        if let Ok(i) = usize::try_from(c)
            && i < self.0.len()
        {
            self.0.insert(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_inside_and_ignores_past_the_end() {
        let mut s = ClusterSet::new(130, "test").unwrap();
        s.insert(0);
        s.insert(129);
        s.insert(130);
        s.insert(u64::MAX);
        assert!(s.contains(0) && s.contains(129));
        assert!(!s.contains(1) && !s.contains(130) && !s.contains(u64::MAX));
    }
}
