//! The XFS superblock: the first sector of allocation group 0. All fields are big-endian and
//! named as the XFS on-disk format documentation names them (`sb_*`).

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};

pub(crate) const XFS_SB_MAGIC: &[u8; 4] = b"XFSB";
/// `sb_features_incompat`: directory entries carry a file type byte (v5).
pub const XFS_SB_FEAT_INCOMPAT_FTYPE: u32 = 0x1;
/// `sb_features2`: directory entries carry a file type byte (v4).
pub const XFS_SB_VERSION2_FTYPE: u32 = 0x200;

/// The fields inspection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XfsSuperblock {
    /// sb_blocksize: bytes per file system block.
    pub sb_blocksize: u32,
    /// sb_dblocks: blocks in the data device.
    pub sb_dblocks: u64,
    /// sb_uuid: the file system's UUID.
    pub sb_uuid: [u8; 16],
    /// sb_rootino: the root directory's inode number.
    pub sb_rootino: u64,
    /// sb_agblocks: blocks per allocation group.
    pub sb_agblocks: u32,
    /// sb_agcount: allocation groups.
    pub sb_agcount: u32,
    /// sb_versionnum: version (low 4 bits) and feature bits.
    pub sb_versionnum: u16,
    /// sb_inodesize: bytes per inode.
    pub sb_inodesize: u16,
    /// sb_inopblock: inodes per block.
    pub sb_inopblock: u16,
    /// sb_fname: the file system's label.
    pub sb_fname: [u8; 12],
    /// sb_blocklog: log2 of `sb_blocksize`.
    pub sb_blocklog: u8,
    /// sb_inodelog: log2 of `sb_inodesize`.
    pub sb_inodelog: u8,
    /// sb_inopblog: log2 of `sb_inopblock`.
    pub sb_inopblog: u8,
    /// sb_agblklog: log2 of `sb_agblocks`, rounded up.
    pub sb_agblklog: u8,
    /// sb_dirblklog: log2 of file system blocks per directory block.
    pub sb_dirblklog: u8,
    /// sb_features2: more feature bits (v4).
    pub sb_features2: u32,
    /// sb_features_incompat: incompatible feature bits (v5).
    pub sb_features_incompat: u32,
}

impl XfsSuperblock {
    /// Parses and checks the superblock: every size and shift the inode and block arithmetic
    /// depends on must agree with the others.
    pub fn parse(b: &[u8; 512]) -> Result<XfsSuperblock> {
        const S: &str = "xfs superblock";
        if &b[0..4] != XFS_SB_MAGIC {
            return Err(Error::malformed(S, 0, "no 'XFSB' magic"));
        }
        let mut sb_uuid = [0u8; 16];
        sb_uuid.copy_from_slice(&b[32..48]);
        let mut sb_fname = [0u8; 12];
        sb_fname.copy_from_slice(&b[108..120]);
        let sb = XfsSuperblock {
            sb_blocksize: BigEndian::read_u32(&b[4..8]),
            sb_dblocks: BigEndian::read_u64(&b[8..16]),
            sb_uuid,
            sb_rootino: BigEndian::read_u64(&b[56..64]),
            sb_agblocks: BigEndian::read_u32(&b[84..88]),
            sb_agcount: BigEndian::read_u32(&b[88..92]),
            sb_versionnum: BigEndian::read_u16(&b[100..102]),
            sb_inodesize: BigEndian::read_u16(&b[104..106]),
            sb_inopblock: BigEndian::read_u16(&b[106..108]),
            sb_fname,
            sb_blocklog: b[120],
            sb_inodelog: b[122],
            sb_inopblog: b[123],
            sb_agblklog: b[124],
            sb_dirblklog: b[192],
            sb_features2: BigEndian::read_u32(&b[200..204]),
            sb_features_incompat: BigEndian::read_u32(&b[216..220]),
        };
        let bad = |at: u64, what: String| Err(Error::malformed(S, at, what));
        if !matches!(sb.version(), 4 | 5) {
            return bad(100, format!("version {}", sb.version()));
        }
        if !(9..=16).contains(&sb.sb_blocklog) || sb.sb_blocksize != 1 << sb.sb_blocklog {
            return bad(4, format!("block size {}", sb.sb_blocksize));
        }
        if !(8..=11).contains(&sb.sb_inodelog)
            || u32::from(sb.sb_inodesize) != 1 << sb.sb_inodelog
            || sb.sb_inodelog > sb.sb_blocklog
        {
            return bad(104, format!("inode size {}", sb.sb_inodesize));
        }
        if sb.sb_inopblog != sb.sb_blocklog - sb.sb_inodelog
            || u32::from(sb.sb_inopblock) != 1 << sb.sb_inopblog
        {
            return bad(106, format!("{} inodes per block", sb.sb_inopblock));
        }
        if sb.sb_agblocks == 0
            || sb.sb_agblklog > 31
            || u64::from(sb.sb_agblocks) > 1u64 << sb.sb_agblklog
        {
            return bad(
                84,
                format!("{} blocks per allocation group", sb.sb_agblocks),
            );
        }
        if sb.sb_agcount == 0
            || sb.sb_dblocks > u64::from(sb.sb_agcount) * u64::from(sb.sb_agblocks)
        {
            return bad(88, format!("{} allocation groups", sb.sb_agcount));
        }
        if u32::from(sb.sb_blocklog) + u32::from(sb.sb_dirblklog) > 16 {
            return bad(192, format!("directory block log {}", sb.sb_dirblklog));
        }
        Ok(sb)
    }

    /// 4 or 5 (5: metadata CRCs, self-describing blocks, v3 inodes).
    pub fn version(&self) -> u16 {
        self.sb_versionnum & 0xf
    }

    /// A version 5 superblock.
    pub fn is_v5(&self) -> bool {
        self.version() == 5
    }

    /// Whether directory entries carry a file type byte.
    pub fn has_ftype(&self) -> bool {
        if self.is_v5() {
            self.sb_features_incompat & XFS_SB_FEAT_INCOMPAT_FTYPE != 0
        } else {
            self.sb_features2 & XFS_SB_VERSION2_FTYPE != 0
        }
    }

    /// The file system's size in bytes.
    pub fn size(&self) -> u64 {
        self.sb_dblocks << self.sb_blocklog
    }

    /// Directory block size in bytes.
    pub fn dir_block_size(&self) -> u64 {
        1u64 << (self.sb_blocklog + self.sb_dirblklog)
    }

    /// The byte offset of file-system block `fsbno` (allocation group in the high bits), or
    /// `None` when it names no block of the file system.
    pub fn fsb_to_byte(&self, fsbno: u64) -> Option<u64> {
        let agno = fsbno >> self.sb_agblklog;
        let agbno = fsbno & ((1u64 << self.sb_agblklog) - 1);
        if agno >= u64::from(self.sb_agcount) || agbno >= u64::from(self.sb_agblocks) {
            return None;
        }
        let block = agno * u64::from(self.sb_agblocks) + agbno;
        (block < self.sb_dblocks).then(|| block << self.sb_blocklog)
    }

    /// The byte offset of inode `ino`, or `None` when the number names no inode.
    pub fn ino_to_byte(&self, ino: u64) -> Option<u64> {
        let shift = u32::from(self.sb_agblklog) + u32::from(self.sb_inopblog);
        if shift >= 64 {
            return None;
        }
        let agno = ino >> shift;
        let agbno = (ino >> self.sb_inopblog) & ((1u64 << self.sb_agblklog) - 1);
        let index = ino & ((1u64 << self.sb_inopblog) - 1);
        let block = self.fsb_to_byte((agno << self.sb_agblklog) | agbno)?;
        Some(block + (index << self.sb_inodelog))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A v5 superblock: 4 KiB blocks, 512-byte inodes, 4 AGs of 16384 blocks.
    pub fn superblock() -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(XFS_SB_MAGIC);
        BigEndian::write_u32(&mut b[4..8], 4096);
        BigEndian::write_u64(&mut b[8..16], 65536);
        BigEndian::write_u64(&mut b[56..64], 128);
        BigEndian::write_u32(&mut b[84..88], 16384);
        BigEndian::write_u32(&mut b[88..92], 4);
        BigEndian::write_u16(&mut b[100..102], 0xb4a5);
        BigEndian::write_u16(&mut b[104..106], 512);
        BigEndian::write_u16(&mut b[106..108], 8);
        b[108..112].copy_from_slice(b"root");
        b[120] = 12;
        b[122] = 9;
        b[123] = 3;
        b[124] = 14;
        BigEndian::write_u32(&mut b[216..220], XFS_SB_FEAT_INCOMPAT_FTYPE);
        b
    }

    #[test]
    fn parses_and_locates_inodes_and_blocks() {
        let sb = XfsSuperblock::parse(&superblock()).unwrap();
        assert!(sb.is_v5() && sb.has_ftype());
        assert_eq!(sb.size(), 256 << 20);
        // Inode 128: block 16 of AG 0, first slot.
        assert_eq!(sb.ino_to_byte(128), Some(16 * 4096));
        assert_eq!(sb.ino_to_byte(131), Some(16 * 4096 + 3 * 512));
        // AG 1, block 5.
        assert_eq!(sb.fsb_to_byte((1 << 14) | 5), Some((16384 + 5) * 4096));
        // Past the AG count, or past an AG's blocks when they are fewer than 2^agblklog.
        assert_eq!(sb.fsb_to_byte(4 << 14), None);
        let mut b = superblock();
        BigEndian::write_u32(&mut b[84..88], 16000);
        BigEndian::write_u64(&mut b[8..16], 64000);
        let sb = XfsSuperblock::parse(&b).unwrap();
        assert_eq!(sb.fsb_to_byte(16100), None);
        assert_eq!(sb.fsb_to_byte((1 << 14) | 5), Some((16000 + 5) * 4096));
    }

    #[test]
    fn refuses_inconsistent_sizes() {
        let mut b = superblock();
        BigEndian::write_u16(&mut b[104..106], 1024);
        assert!(XfsSuperblock::parse(&b).is_err());
        let mut b = superblock();
        BigEndian::write_u64(&mut b[8..16], u64::MAX);
        assert!(XfsSuperblock::parse(&b).is_err());
        let mut b = superblock();
        b[192] = 10;
        assert!(XfsSuperblock::parse(&b).is_err());
    }
}
