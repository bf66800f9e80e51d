//! The QCOW version 1 header: 48 big-endian bytes at offset 0 that size clusters and L2
//! tables, say where the L1 table is, and name the backing file. See formats/qcow1.md.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};
use crate::limits::{MAX_BACKING_FILE_NAME, MAX_QCOW1_CLUSTER_BITS, MAX_QCOW1_L1_TABLE_SIZE};

/// `magic`: "QFI\xfb", shared with QCOW2.
pub const MAGIC: u32 = 0x5146_49fb;
/// `version` of this format.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 48;
/// Smallest `cluster_bits` (512-byte clusters).
pub const MIN_CLUSTER_BITS: u8 = 9;
/// `crypt_method` of an unencrypted image.
pub const CRYPT_NONE: u32 = 0;
/// `crypt_method` of an AES-encrypted image.
pub const CRYPT_AES: u32 = 1;

/// The header's fields, named as qemu names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QcowHeader {
    /// `backing_file_offset`: where the backing file name is (0: none).
    pub backing_file_offset: u64,
    /// `backing_file_size`: its length in bytes.
    pub backing_file_size: u32,
    /// `mtime`: the backing file's modification time (not used).
    pub mtime: u32,
    /// `size`: the disk's size in bytes.
    pub size: u64,
    /// `cluster_bits`: log2 of the cluster size, 9 to 16.
    pub cluster_bits: u8,
    /// `l2_bits`: log2 of the entries per L2 table, 6 to 13.
    pub l2_bits: u8,
    /// `crypt_method`: 0 none, 1 AES.
    pub crypt_method: u32,
    /// `l1_table_offset`: where the L1 table is.
    pub l1_table_offset: u64,
}

impl QcowHeader {
    /// Parses and checks the header's own fields.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<QcowHeader> {
        if BigEndian::read_u32(&b[0..]) != MAGIC {
            return Err(Error::malformed("qcow header", 0, "no QFI\\xfb magic"));
        }
        let version = BigEndian::read_u32(&b[4..]);
        if version != VERSION {
            return Err(Error::malformed(
                "qcow header",
                4,
                format!("version {version} is not 1"),
            ));
        }
        let h = QcowHeader {
            backing_file_offset: BigEndian::read_u64(&b[8..]),
            backing_file_size: BigEndian::read_u32(&b[16..]),
            mtime: BigEndian::read_u32(&b[20..]),
            size: BigEndian::read_u64(&b[24..]),
            cluster_bits: b[32],
            l2_bits: b[33],
            crypt_method: BigEndian::read_u32(&b[36..]),
            l1_table_offset: BigEndian::read_u64(&b[40..]),
        };
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<()> {
        let bad = |at: u64, problem: String| Err(Error::malformed("qcow header", at, problem));
        if !(MIN_CLUSTER_BITS..=MAX_QCOW1_CLUSTER_BITS).contains(&self.cluster_bits) {
            return bad(
                32,
                format!("cluster_bits {} is not from 9 to 16", self.cluster_bits),
            );
        }
        if !(MIN_CLUSTER_BITS - 3..=MAX_QCOW1_CLUSTER_BITS - 3).contains(&self.l2_bits) {
            return bad(33, format!("l2_bits {} is not from 6 to 13", self.l2_bits));
        }
        match self.crypt_method {
            CRYPT_NONE => {}
            CRYPT_AES => return Err(Error::unsupported("qcow AES encryption (crypt_method 1)")),
            m => return bad(36, format!("crypt_method {m} is unknown")),
        }
        if self.size == 0 {
            return bad(24, "size 0".into());
        }
        let l1_bytes = self.l1_size().map(|n| n.saturating_mul(8));
        match l1_bytes {
            Some(n) if n <= MAX_QCOW1_L1_TABLE_SIZE => {}
            _ => {
                return Err(Error::limit(
                    "qcow header",
                    24,
                    format!(
                        "a disk of {} bytes needs an L1 table over the {MAX_QCOW1_L1_TABLE_SIZE} \
                         bytes ims reads",
                        self.size
                    ),
                ));
            }
        }
        if self.backing_file_offset != 0
            && (self.backing_file_size == 0 || self.backing_file_size > MAX_BACKING_FILE_NAME)
        {
            return bad(
                16,
                format!(
                    "backing_file_size {} is not from 1 to {MAX_BACKING_FILE_NAME}",
                    self.backing_file_size
                ),
            );
        }
        Ok(())
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        1 << self.l2_bits
    }

    /// Bytes of guest disk one L2 table covers.
    pub fn l2_span(&self) -> u64 {
        1 << (self.cluster_bits + self.l2_bits)
    }

    /// Entries of the L1 table: enough to cover `size`.
    pub fn l1_size(&self) -> Option<u64> {
        Some(self.size.checked_add(self.l2_span() - 1)? / self.l2_span())
    }

    /// The disk's size: `size` rounded down to whole sectors, as qemu reads it.
    pub fn virtual_size(&self) -> u64 {
        self.size - self.size % 512
    }

    /// The header as stored.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        BigEndian::write_u32(&mut b[0..], MAGIC);
        BigEndian::write_u32(&mut b[4..], VERSION);
        BigEndian::write_u64(&mut b[8..], self.backing_file_offset);
        BigEndian::write_u32(&mut b[16..], self.backing_file_size);
        BigEndian::write_u32(&mut b[20..], self.mtime);
        BigEndian::write_u64(&mut b[24..], self.size);
        b[32] = self.cluster_bits;
        b[33] = self.l2_bits;
        BigEndian::write_u32(&mut b[36..], self.crypt_method);
        BigEndian::write_u64(&mut b[40..], self.l1_table_offset);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What qemu-img 10 writes for an 8 MiB image without a backing file.
    const QEMU_8M: [u8; 48] = [
        0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, //
        0x0c, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x30,
    ];

    #[test]
    fn reads_qemu_img_s_header() {
        let h = QcowHeader::parse(&QEMU_8M).unwrap();
        assert_eq!((h.cluster_bits, h.l2_bits), (12, 9));
        assert_eq!(h.size, 8 << 20);
        assert_eq!(h.l1_table_offset, 0x30);
        assert_eq!(h.l1_size(), Some(4));
        assert_eq!(h.to_bytes(), QEMU_8M);
    }

    #[test]
    fn bad_fields_are_refused() {
        let base = QcowHeader::parse(&QEMU_8M).unwrap();
        for (h, kind, needle) in [
            (
                QcowHeader {
                    cluster_bits: 17,
                    ..base.clone()
                },
                "malformed",
                "cluster_bits",
            ),
            (
                QcowHeader {
                    l2_bits: 14,
                    ..base.clone()
                },
                "malformed",
                "l2_bits",
            ),
            (
                QcowHeader {
                    crypt_method: 1,
                    ..base.clone()
                },
                "unsupported",
                "AES",
            ),
            (
                QcowHeader {
                    crypt_method: 2,
                    ..base.clone()
                },
                "malformed",
                "crypt_method",
            ),
            (
                QcowHeader {
                    size: 0,
                    ..base.clone()
                },
                "malformed",
                "size",
            ),
            (
                QcowHeader {
                    size: u64::MAX,
                    ..base.clone()
                },
                "limit-exceeded",
                "L1",
            ),
            (
                QcowHeader {
                    cluster_bits: 9,
                    l2_bits: 6,
                    size: 1 << 40,
                    ..base.clone()
                },
                "limit-exceeded",
                "L1",
            ),
            (
                QcowHeader {
                    backing_file_offset: 48,
                    backing_file_size: 5000,
                    ..base.clone()
                },
                "malformed",
                "backing_file_size",
            ),
        ] {
            let e = QcowHeader::parse(&h.to_bytes()).unwrap_err();
            assert_eq!(e.kind(), kind, "{h:?}: {e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        let mut b = QEMU_8M;
        b[7] = 2;
        assert!(
            QcowHeader::parse(&b)
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
    }
}
