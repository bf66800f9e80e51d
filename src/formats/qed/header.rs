//! The QED header: the first 64 bytes of cluster 0, little-endian. It sizes clusters and tables,
//! says where the L1 table is, and names the backing file (stored inside the header clusters).
//! See formats/qed.md.

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{Error, Result};
use crate::limits::{MAX_BACKING_FILE_NAME, MAX_QED_TABLE_BYTES};

/// `magic`: "QED\0".
pub const MAGIC: u32 = u32::from_le_bytes(*b"QED\0");
/// Bytes of the header's fields.
pub const HEADER_LEN: usize = 64;
/// `features` bit 0: the image has a backing file.
pub const F_BACKING_FILE: u64 = 1;
/// `features` bit 1: the image may not be consistent (a write was in progress); check it.
pub const F_NEED_CHECK: u64 = 2;
/// `features` bit 2: the backing file is raw; do not probe it.
pub const F_BACKING_FORMAT_NO_PROBE: u64 = 4;
/// Every `features` bit the specification defines; an image with another is refused.
pub const F_KNOWN: u64 = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE;
/// Smallest and largest cluster size.
pub const MIN_CLUSTER_SIZE: u32 = 4 << 10;
/// Largest cluster size the specification allows.
pub const MAX_CLUSTER_SIZE: u32 = 64 << 20;
/// Largest `table_size`, in clusters.
pub const MAX_TABLE_SIZE: u32 = 16;

/// The header's fields, named as the specification names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QedHeader {
    /// `cluster_size`: bytes per cluster, a power of two from 4 KiB to 64 MiB.
    pub cluster_size: u32,
    /// `table_size`: clusters per L1 or L2 table, a power of two from 1 to 16.
    pub table_size: u32,
    /// `header_size`: clusters the header takes (the backing file name lies inside them).
    pub header_size: u32,
    /// `features`: what a reader must understand.
    pub features: u64,
    /// `compat_features`: what a reader may ignore.
    pub compat_features: u64,
    /// `autoclear_features`: cleared by writers that do not know them.
    pub autoclear_features: u64,
    /// `l1_table_offset`: where the L1 table is (cluster-aligned).
    pub l1_table_offset: u64,
    /// `image_size`: the disk's size in bytes.
    pub image_size: u64,
    /// `backing_filename_offset`: where the backing file name is.
    pub backing_filename_offset: u32,
    /// `backing_filename_size`: its length in bytes.
    pub backing_filename_size: u32,
}

impl QedHeader {
    /// Parses and checks the header's own fields (the tables are checked against the file by
    /// the reader).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<QedHeader> {
        let magic = LittleEndian::read_u32(&b[0..]);
        if magic != MAGIC {
            return Err(Error::malformed("qed header", 0, "no QED magic"));
        }
        let h = QedHeader {
            cluster_size: LittleEndian::read_u32(&b[4..]),
            table_size: LittleEndian::read_u32(&b[8..]),
            header_size: LittleEndian::read_u32(&b[12..]),
            features: LittleEndian::read_u64(&b[16..]),
            compat_features: LittleEndian::read_u64(&b[24..]),
            autoclear_features: LittleEndian::read_u64(&b[32..]),
            l1_table_offset: LittleEndian::read_u64(&b[40..]),
            image_size: LittleEndian::read_u64(&b[48..]),
            backing_filename_offset: LittleEndian::read_u32(&b[56..]),
            backing_filename_size: LittleEndian::read_u32(&b[60..]),
        };
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<()> {
        let bad = |at: u64, problem: String| Err(Error::malformed("qed header", at, problem));
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cs) {
            return bad(
                4,
                format!("cluster_size {cs} is not a power of two from 4 KiB to 64 MiB"),
            );
        }
        let ts = self.table_size;
        if !ts.is_power_of_two() || ts > MAX_TABLE_SIZE {
            return bad(
                8,
                format!("table_size {ts} is not a power of two from 1 to 16"),
            );
        }
        if self.table_bytes() > MAX_QED_TABLE_BYTES {
            return Err(Error::limit(
                "qed header",
                8,
                format!(
                    "tables of {} bytes, more than the {MAX_QED_TABLE_BYTES} ims reads",
                    self.table_bytes()
                ),
            ));
        }
        if self.header_size == 0
            || u64::from(self.header_size) * u64::from(cs) > MAX_QED_TABLE_BYTES
        {
            return bad(12, format!("header_size {} clusters", self.header_size));
        }
        let unknown = self.features & !F_KNOWN;
        if unknown != 0 {
            return Err(Error::unsupported(format!("qed features {unknown:#x}")));
        }
        if !self.image_size.is_multiple_of(512) || self.image_size > self.max_image_size() {
            return bad(
                48,
                format!(
                    "image_size {} is not a multiple of 512 at most {} (what two levels of tables address)",
                    self.image_size,
                    self.max_image_size()
                ),
            );
        }
        let l1 = self.l1_table_offset;
        if !l1.is_multiple_of(u64::from(cs)) || l1 < self.header_bytes() {
            return bad(
                40,
                format!("l1_table_offset {l1:#x} is not a cluster after the header"),
            );
        }
        if self.features & F_BACKING_FILE != 0 {
            let end =
                u64::from(self.backing_filename_offset) + u64::from(self.backing_filename_size);
            if self.backing_filename_size == 0
                || self.backing_filename_size > MAX_BACKING_FILE_NAME
                || u64::from(self.backing_filename_offset) < HEADER_LEN as u64
                || end > self.header_bytes()
            {
                return bad(
                    56,
                    format!(
                        "backing file name of {} bytes at {:#x} is not inside the header clusters \
                         after the fields (or longer than {MAX_BACKING_FILE_NAME} bytes)",
                        self.backing_filename_size, self.backing_filename_offset
                    ),
                );
            }
        }
        Ok(())
    }

    /// Bytes of one table (L1 or L2).
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.table_size) * u64::from(self.cluster_size)
    }

    /// Entries of one table.
    pub fn table_entries(&self) -> u64 {
        self.table_bytes() / 8
    }

    /// Bytes of the header clusters.
    pub fn header_bytes(&self) -> u64 {
        u64::from(self.header_size) * u64::from(self.cluster_size)
    }

    /// The largest disk the tables address: entries² clusters.
    pub fn max_image_size(&self) -> u64 {
        let n = self.table_entries();
        n.saturating_mul(n)
            .saturating_mul(u64::from(self.cluster_size))
    }

    /// Whether the image has a backing file.
    pub fn has_backing_file(&self) -> bool {
        self.features & F_BACKING_FILE != 0
    }

    /// The header as stored (its first 64 bytes).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        LittleEndian::write_u32(&mut b[0..], MAGIC);
        LittleEndian::write_u32(&mut b[4..], self.cluster_size);
        LittleEndian::write_u32(&mut b[8..], self.table_size);
        LittleEndian::write_u32(&mut b[12..], self.header_size);
        LittleEndian::write_u64(&mut b[16..], self.features);
        LittleEndian::write_u64(&mut b[24..], self.compat_features);
        LittleEndian::write_u64(&mut b[32..], self.autoclear_features);
        LittleEndian::write_u64(&mut b[40..], self.l1_table_offset);
        LittleEndian::write_u64(&mut b[48..], self.image_size);
        LittleEndian::write_u32(&mut b[56..], self.backing_filename_offset);
        LittleEndian::write_u32(&mut b[60..], self.backing_filename_size);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What qemu-img 10 writes for an 8 MiB image: 64 KiB clusters, tables of 4 clusters, the
    /// L1 table at 64 KiB.
    const QEMU_8M: [u8; 64] = [
        0x51, 0x45, 0x44, 0x00, 0x00, 0x00, 0x01, 0x00, 0x04, 0, 0, 0, 0x01, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, //
        0x00, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn reads_qemu_img_s_header() {
        let h = QedHeader::parse(&QEMU_8M).unwrap();
        assert_eq!(h.cluster_size, 64 << 10);
        assert_eq!(h.table_size, 4);
        assert_eq!(h.l1_table_offset, 64 << 10);
        assert_eq!(h.image_size, 8 << 20);
        assert_eq!(h.table_entries(), 32768);
        assert_eq!(h.to_bytes(), QEMU_8M);
    }

    #[test]
    fn bad_fields_are_refused() {
        let base = QedHeader::parse(&QEMU_8M).unwrap();
        let cases: Vec<(QedHeader, &str, &str)> = vec![
            (
                QedHeader {
                    cluster_size: 4096 + 512,
                    ..base.clone()
                },
                "malformed",
                "0x4",
            ),
            (
                QedHeader {
                    cluster_size: 1024,
                    ..base.clone()
                },
                "malformed",
                "cluster_size",
            ),
            (
                QedHeader {
                    table_size: 3,
                    ..base.clone()
                },
                "malformed",
                "table_size",
            ),
            (
                QedHeader {
                    table_size: 16,
                    cluster_size: 64 << 20,
                    ..base.clone()
                },
                "limit-exceeded",
                "tables",
            ),
            (
                QedHeader {
                    header_size: 0,
                    ..base.clone()
                },
                "malformed",
                "header_size",
            ),
            (
                QedHeader {
                    features: 8,
                    ..base.clone()
                },
                "unsupported",
                "features 0x8",
            ),
            (
                QedHeader {
                    image_size: 1000,
                    ..base.clone()
                },
                "malformed",
                "image_size",
            ),
            (
                QedHeader {
                    image_size: u64::MAX - 511,
                    ..base.clone()
                },
                "malformed",
                "image_size",
            ),
            (
                QedHeader {
                    l1_table_offset: 0,
                    ..base.clone()
                },
                "malformed",
                "l1_table_offset",
            ),
            (
                QedHeader {
                    l1_table_offset: 0x10200,
                    ..base.clone()
                },
                "malformed",
                "0x28",
            ),
            (
                QedHeader {
                    features: F_BACKING_FILE,
                    backing_filename_offset: 0xfff0,
                    backing_filename_size: 32,
                    ..base.clone()
                },
                "malformed",
                "backing file name",
            ),
        ];
        for (h, kind, needle) in cases {
            let e = QedHeader::parse(&h.to_bytes()).unwrap_err();
            assert_eq!(e.kind(), kind, "{h:?}: {e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        let mut b = QEMU_8M;
        b[3] = 1;
        assert!(
            QedHeader::parse(&b)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
    }
}
