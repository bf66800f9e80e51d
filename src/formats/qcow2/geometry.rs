//! The geometry of a QCOW2 image: the sizes and shifts that follow from the header's
//! `cluster_bits`, the L2 entry width and `refcount_order` (see `formats/qcow2.md`).

use crate::error::{Error, Result};
use crate::limits::MAX_CLUSTER_BITS;

/// Subclusters in a cluster with extended L2 entries.
pub const SUBCLUSTERS_PER_CLUSTER: u32 = 32;

/// Smallest cluster: 512 bytes.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Extended L2 entries split a cluster into 32 subclusters of at least 512 bytes.
pub const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;
/// Size of an L1 entry and of a refcount table entry.
pub const TABLE_ENTRY_SIZE: u64 = 8;

/// Sizes and shifts that follow from `cluster_bits`, the L2 entry width and `refcount_order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    cluster_bits: u32,
    extended_l2: bool,
    refcount_order: u32,
}

impl Geometry {
    /// Checks the three values against the format's limits.
    pub fn new(cluster_bits: u32, extended_l2: bool, refcount_order: u32) -> Result<Self> {
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::malformed(
                "qcow2 header",
                20,
                format!(
                    "cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
                ),
            ));
        }
        if extended_l2 && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
            return Err(Error::malformed(
                "qcow2 header",
                20,
                format!(
                    "extended L2 entries need clusters of at least {} bytes, not {}",
                    1u64 << MIN_EXTENDED_L2_CLUSTER_BITS,
                    1u64 << cluster_bits
                ),
            ));
        }
        if refcount_order > 6 {
            return Err(Error::malformed(
                "qcow2 header",
                96,
                format!("refcount_order {refcount_order} is above 6"),
            ));
        }
        Ok(Geometry {
            cluster_bits,
            extended_l2,
            refcount_order,
        })
    }

    /// log2 of the cluster size.
    pub fn cluster_bits(&self) -> u32 {
        self.cluster_bits
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Offset of `offset` inside its cluster.
    pub fn offset_in_cluster(&self, offset: u64) -> u64 {
        offset & (self.cluster_size() - 1)
    }

    /// Start of the cluster holding `offset`.
    pub fn cluster_start(&self, offset: u64) -> u64 {
        offset & !(self.cluster_size() - 1)
    }

    /// L2 entries are 128 bits wide, with a subcluster bitmap.
    pub fn extended_l2(&self) -> bool {
        self.extended_l2
    }

    /// Bytes per L2 entry: 8, or 16 with extended L2 entries.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2 { 16 } else { 8 }
    }

    /// log2 of the entries in one L2 table.
    pub fn l2_bits(&self) -> u32 {
        self.cluster_bits - if self.extended_l2 { 4 } else { 3 }
    }

    /// Entries in one L2 table (a table is one cluster).
    pub fn l2_entries(&self) -> u64 {
        1 << self.l2_bits()
    }

    /// log2 of the bytes of disk one L2 table maps.
    pub fn l2_coverage_bits(&self) -> u32 {
        self.cluster_bits + self.l2_bits()
    }

    /// Index into the L1 table of the L2 table that maps virtual `offset`.
    pub fn l1_index(&self, offset: u64) -> u64 {
        offset >> self.l2_coverage_bits()
    }

    /// Index into its L2 table of the entry that maps virtual `offset`.
    pub fn l2_index(&self, offset: u64) -> u64 {
        (offset >> self.cluster_bits) & (self.l2_entries() - 1)
    }

    /// L1 entries needed to map a disk of `size` bytes.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        size.div_ceil(1u64 << self.l2_coverage_bits())
    }

    /// Subclusters per cluster: 32 with extended L2 entries, else 1.
    pub fn subclusters(&self) -> u32 {
        if self.extended_l2 {
            SUBCLUSTERS_PER_CLUSTER
        } else {
            1
        }
    }

    /// log2 of the subcluster size.
    pub fn subcluster_bits(&self) -> u32 {
        if self.extended_l2 {
            self.cluster_bits - 5
        } else {
            self.cluster_bits
        }
    }

    /// log2 of the refcount width in bits.
    pub fn refcount_order(&self) -> u32 {
        self.refcount_order
    }

    /// Width of a refcount in bits (1 to 64).
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Refcounts in one refcount block (a block is one cluster).
    pub fn refcount_block_entries(&self) -> u64 {
        (self.cluster_size() * 8) >> self.refcount_order
    }

    /// Where the refcount of the host cluster holding `host_offset` lives: (index into the
    /// refcount table, index into that refcount block).
    pub fn refcount_location(&self, host_offset: u64) -> (u64, u64) {
        let cluster = host_offset >> self.cluster_bits;
        let per_block = self.refcount_block_entries();
        (cluster / per_block, cluster % per_block)
    }

    /// Bit position in a compressed descriptor where the sector count starts
    /// (`x = 62 - (cluster_bits - 8)`).
    pub fn csize_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }

    /// Mask of the sector-count field of a compressed descriptor (after shifting).
    pub fn csize_mask(&self) -> u64 {
        (1u64 << (self.cluster_bits - 8)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(bits: u32) -> Geometry {
        Geometry::new(bits, false, 4).unwrap()
    }

    #[test]
    fn geometry_of_64k_clusters() {
        let g = geo(16);
        assert_eq!(g.cluster_size(), 65536);
        assert_eq!(g.l2_entries(), 8192);
        assert_eq!(g.l2_coverage_bits(), 29);
        assert_eq!(g.l1_entries_for(0), 0);
        assert_eq!(g.l1_entries_for(1), 1);
        assert_eq!(g.l1_entries_for(512 << 20), 1);
        assert_eq!(g.l1_entries_for((512 << 20) + 1), 2);
        assert_eq!(g.l1_index(3 << 29 | 5), 3);
        assert_eq!(g.l2_index((7 << 16) + 100), 7);
        assert_eq!(g.refcount_block_entries(), 32768);
        assert_eq!(g.refcount_location(65536 * 32769), (1, 1));
        assert_eq!(g.csize_shift(), 54);
        assert_eq!(g.csize_mask(), 0xff);
        let e = Geometry::new(16, true, 4).unwrap();
        assert_eq!(e.l2_entries(), 4096);
        assert_eq!(e.subclusters(), 32);
        assert_eq!(e.subcluster_bits(), 11);
        assert_eq!(geo(9).l1_entries_for(u64::MAX), 1 << 49);
    }

    #[test]
    fn geometry_refuses_bad_values() {
        assert_eq!(Geometry::new(8, false, 4).unwrap_err().kind(), "malformed");
        assert_eq!(Geometry::new(22, false, 4).unwrap_err().kind(), "malformed");
        assert_eq!(Geometry::new(13, true, 4).unwrap_err().kind(), "malformed");
        assert_eq!(Geometry::new(16, false, 7).unwrap_err().kind(), "malformed");
        assert!(Geometry::new(21, true, 6).is_ok());
    }
}
