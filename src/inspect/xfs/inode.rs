//! XFS inodes (`xfs_dinode`): the core, and the data fork as local bytes, an extent list, or a
//! B+tree of extents (`bmbt`) whose blocks are walked here into one sorted extent list. All
//! fields are big-endian.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};
use crate::limits::{MAX_XFS_BTREE_LEVEL, MAX_XFS_EXTENTS};

use super::super::disk::Volume;
use super::superblock::XfsSuperblock;

pub(crate) const XFS_DINODE_MAGIC: &[u8; 2] = b"IN";
pub(crate) const S_IFMT: u16 = 0o170000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFLNK: u16 = 0o120000;
/// `di_flags2`: the extent counters are 64 bits wide (`di_big_nextents`).
pub const XFS_DIFLAG2_NREXT64: u64 = 1 << 4;

const S: &str = "xfs inode";

/// One mapping of the data fork: `blockcount` file blocks from `startoff` lie at file-system
/// block `startblock`. Unwritten extents read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BmbtRec {
    pub startoff: u64,
    pub startblock: u64,
    pub blockcount: u64,
    pub unwritten: bool,
}

impl BmbtRec {
    /// Unpacks the 128-bit record: flag (1 bit), startoff (54), startblock (52), blockcount (21).
    pub fn parse(b: &[u8]) -> BmbtRec {
        let l0 = BigEndian::read_u64(&b[0..8]);
        let l1 = BigEndian::read_u64(&b[8..16]);
        BmbtRec {
            unwritten: l0 >> 63 != 0,
            startoff: (l0 & ((1 << 63) - 1)) >> 9,
            startblock: ((l0 & 0x1ff) << 43) | (l1 >> 21),
            blockcount: l1 & ((1 << 21) - 1),
        }
    }
}

/// The data fork.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum DataFork {
    /// Device files: no data.
    None,
    /// Data stored in the inode (short directories, short symlink targets).
    Local(Vec<u8>),
    /// Extents sorted by file offset.
    Extents(Vec<BmbtRec>),
}

/// The parts of an inode inspection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct XfsInode {
    pub di_mode: u16,
    pub di_size: u64,
    pub fork: DataFork,
}

impl XfsInode {
    pub fn is_dir(&self) -> bool {
        self.di_mode & S_IFMT == S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.di_mode & S_IFMT == S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.di_mode & S_IFMT == S_IFLNK
    }

    /// Reads inode `ino`.
    pub fn read(vol: &Volume, sb: &XfsSuperblock, ino: u64) -> Result<XfsInode> {
        let at = sb
            .ino_to_byte(ino)
            .ok_or_else(|| Error::malformed(S, 0, format!("inode number {ino} is out of range")))?;
        let size = usize::from(sb.sb_inodesize);
        let buf = vol
            .read_vec(at, size)?
            .ok_or_else(|| Error::truncated(S, at, size as u64, vol.len.saturating_sub(at)))?;
        Self::parse(&buf, at, ino, vol, sb)
    }

    fn parse(b: &[u8], at: u64, ino: u64, vol: &Volume, sb: &XfsSuperblock) -> Result<XfsInode> {
        if &b[0..2] != XFS_DINODE_MAGIC {
            return Err(Error::malformed(
                S,
                at,
                format!("inode {ino} has no 'IN' magic"),
            ));
        }
        let di_mode = BigEndian::read_u16(&b[2..4]);
        let di_version = b[4];
        let di_format = b[5];
        let core = match di_version {
            1 | 2 => 100,
            3 if sb.is_v5() => {
                if BigEndian::read_u64(&b[152..160]) != ino {
                    return Err(Error::malformed(
                        S,
                        at + 152,
                        format!("inode {ino} says it is another"),
                    ));
                }
                176
            }
            v => return Err(Error::malformed(S, at + 4, format!("inode version {v}"))),
        };
        let di_size = BigEndian::read_u64(&b[56..64]);
        let di_forkoff = usize::from(b[82]);
        let di_flags2 = if di_version == 3 {
            BigEndian::read_u64(&b[120..128])
        } else {
            0
        };
        let nextents = if di_flags2 & XFS_DIFLAG2_NREXT64 != 0 {
            BigEndian::read_u64(&b[24..32])
        } else {
            u64::from(BigEndian::read_u32(&b[76..80]))
        };
        let fork_size = if di_forkoff == 0 {
            b.len() - core
        } else {
            di_forkoff * 8
        };
        if fork_size > b.len() - core {
            return Err(Error::malformed(
                S,
                at + 82,
                format!("fork offset {di_forkoff}"),
            ));
        }
        let fork_bytes = &b[core..core + fork_size];
        let fork = match di_format {
            0 => DataFork::None,
            1 => {
                let n = usize::try_from(di_size)
                    .ok()
                    .filter(|&n| n <= fork_size)
                    .ok_or_else(|| {
                        Error::malformed(
                            S,
                            at + 56,
                            format!("local inode {ino} of {di_size} bytes"),
                        )
                    })?;
                DataFork::Local(fork_bytes[..n].to_vec())
            }
            2 => {
                let n = usize::try_from(nextents)
                    .ok()
                    .filter(|&n| n.saturating_mul(16) <= fork_size)
                    .ok_or_else(|| {
                        Error::malformed(S, at + 76, format!("{nextents} extents in inode {ino}"))
                    })?;
                DataFork::Extents(sorted(
                    fork_bytes
                        .chunks_exact(16)
                        .take(n)
                        .map(BmbtRec::parse)
                        .collect(),
                    at,
                )?)
            }
            3 => DataFork::Extents(sorted(btree_root(fork_bytes, at, vol, sb)?, at)?),
            f => return Err(Error::malformed(S, at + 5, format!("data fork format {f}"))),
        };
        Ok(XfsInode {
            di_mode,
            di_size,
            fork,
        })
    }
}

/// Extents must be in file order without overlaps; zero-length ones are dropped.
fn sorted(mut recs: Vec<BmbtRec>, at: u64) -> Result<Vec<BmbtRec>> {
    recs.retain(|r| r.blockcount > 0);
    for pair in recs.windows(2) {
        if pair[0].startoff + pair[0].blockcount > pair[1].startoff {
            return Err(Error::malformed(
                S,
                at,
                "extents out of order or overlapping",
            ));
        }
    }
    Ok(recs)
}

/// The B+tree root in the inode (`xfs_bmdr_block`): level, record count, keys, then pointers
/// at the position the fork's capacity gives.
fn btree_root(fork: &[u8], at: u64, vol: &Volume, sb: &XfsSuperblock) -> Result<Vec<BmbtRec>> {
    if fork.len() < 4 {
        return Err(Error::malformed(S, at, "btree root too small"));
    }
    let level = BigEndian::read_u16(&fork[0..2]);
    let numrecs = usize::from(BigEndian::read_u16(&fork[2..4]));
    let maxrecs = (fork.len() - 4) / 16;
    if level == 0 || level > MAX_XFS_BTREE_LEVEL || numrecs > maxrecs {
        return Err(Error::malformed(
            S,
            at,
            format!("btree root level {level} with {numrecs} records"),
        ));
    }
    let mut out = Vec::new();
    let ptrs = 4 + maxrecs * 8;
    for i in 0..numrecs {
        let ptr = BigEndian::read_u64(&fork[ptrs + i * 8..ptrs + i * 8 + 8]);
        btree_block(ptr, level - 1, vol, sb, &mut out)?;
    }
    Ok(out)
}

/// A long-format B+tree block (`BMAP`, or `BMA3` with the v5 self-describing header).
fn btree_block(
    fsbno: u64,
    level: u16,
    vol: &Volume,
    sb: &XfsSuperblock,
    out: &mut Vec<BmbtRec>,
) -> Result<()> {
    const B: &str = "xfs bmap btree block";
    let at = sb
        .fsb_to_byte(fsbno)
        .ok_or_else(|| Error::malformed(B, 0, format!("block {fsbno} is out of range")))?;
    let bs = crate::block::usize_len(u64::from(sb.sb_blocksize))?;
    let b = vol
        .read_vec(at, bs)?
        .ok_or_else(|| Error::truncated(B, at, bs as u64, vol.len.saturating_sub(at)))?;
    let hdr = match &b[0..4] {
        b"BMAP" if !sb.is_v5() => 24,
        b"BMA3" if sb.is_v5() => 72,
        _ => return Err(Error::malformed(B, at, "bad magic")),
    };
    let bb_level = BigEndian::read_u16(&b[4..6]);
    let numrecs = usize::from(BigEndian::read_u16(&b[6..8]));
    let maxrecs = (bs - hdr) / 16;
    if bb_level != level || numrecs > maxrecs {
        return Err(Error::malformed(
            B,
            at,
            format!("level {bb_level} (expected {level}) with {numrecs} records"),
        ));
    }
    if level == 0 {
        for r in b[hdr..hdr + numrecs * 16].chunks_exact(16) {
            if out.len() >= MAX_XFS_EXTENTS {
                return Err(Error::limit(
                    B,
                    at,
                    format!("more than {MAX_XFS_EXTENTS} extents"),
                ));
            }
            out.push(BmbtRec::parse(r));
        }
        return Ok(());
    }
    let ptrs = hdr + maxrecs * 8;
    for i in 0..numrecs {
        let ptr = BigEndian::read_u64(&b[ptrs + i * 8..ptrs + i * 8 + 8]);
        btree_block(ptr, level - 1, vol, sb, out)?;
    }
    Ok(())
}

/// Reads `buf.len()` bytes of the file at byte `offset` through its extents; holes and
/// unwritten extents read as zeros.
pub(crate) fn read_file(
    vol: &Volume,
    sb: &XfsSuperblock,
    inode: &XfsInode,
    offset: u64,
    buf: &mut [u8],
) -> Result<()> {
    match &inode.fork {
        DataFork::None => buf.fill(0),
        DataFork::Local(data) => {
            buf.fill(0);
            if let Ok(start) = usize::try_from(offset)
                && start < data.len()
            {
                let n = (data.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&data[start..start + n]);
            }
        }
        DataFork::Extents(extents) => {
            let log = sb.sb_blocklog;
            let bs = 1u64 << log;
            let mut done = 0usize;
            while done < buf.len() {
                let pos = offset + done as u64;
                let fblock = pos >> log;
                let in_block = pos & (bs - 1);
                let i = extents.partition_point(|e| e.startoff + e.blockcount <= fblock);
                match extents.get(i).filter(|e| e.startoff <= fblock) {
                    Some(e) => {
                        // The rest of this extent, in one read.
                        let left = ((e.startoff + e.blockcount - fblock) << log) - in_block;
                        let n = (left.min((buf.len() - done) as u64)) as usize;
                        if e.unwritten {
                            buf[done..done + n].fill(0);
                        } else {
                            let start = sb
                                .fsb_to_byte(e.startblock + (fblock - e.startoff))
                                .filter(|_| {
                                    sb.fsb_to_byte(e.startblock + e.blockcount - 1).is_some()
                                })
                                .ok_or_else(|| {
                                    Error::malformed(
                                        S,
                                        0,
                                        format!("extent at block {} is out of range", e.startblock),
                                    )
                                })?;
                            vol.read_at(&mut buf[done..done + n], start + in_block)?;
                        }
                        done += n;
                    }
                    None => {
                        // A hole up to the next extent.
                        let next = extents
                            .get(i)
                            .map_or(u64::MAX, |e| e.startoff.saturating_mul(bs));
                        let n = (next - pos).min((buf.len() - done) as u64) as usize;
                        buf[done..done + n].fill(0);
                        done += n;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_bmbt_records() {
        // startoff 5, startblock 0x1234_5678_9a, blockcount 7, written.
        let startoff: u64 = 5;
        let startblock: u64 = 0x12_3456_789a;
        let count: u64 = 7;
        let l0 = (startoff << 9) | (startblock >> 43);
        let l1 = (startblock << 21) | count;
        let mut b = [0u8; 16];
        BigEndian::write_u64(&mut b[0..8], l0);
        BigEndian::write_u64(&mut b[8..16], l1);
        let r = BmbtRec::parse(&b);
        assert_eq!(
            (r.startoff, r.startblock, r.blockcount, r.unwritten),
            (5, startblock, 7, false)
        );
        b[0] |= 0x80;
        assert!(BmbtRec::parse(&b).unwritten);
    }
}
