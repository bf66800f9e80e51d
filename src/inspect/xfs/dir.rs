//! XFS directories: short form in the inode (`xfs_dir2_sf`), and data blocks (`XD2B`/`XDB3`
//! single-block directories, `XD2D`/`XDD3` blocks of larger ones) found through the data fork
//! below the leaf offset. Only names and inode numbers are taken; hashes and free-space
//! indexes are not needed to list or search a directory.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};
use crate::limits::MAX_XFS_DIR_BLOCKS;

use super::super::disk::Volume;
use super::inode::{DataFork, XfsInode, read_file};
use super::superblock::XfsSuperblock;

/// Directory data lives below this byte offset of the directory's fork (32 GiB); leaf and
/// free-index blocks above it.
pub const XFS_DIR2_LEAF_OFFSET: u64 = 32 << 30;

const S: &str = "xfs directory";

/// A directory entry: name bytes and inode number.
pub type Entry = (Vec<u8>, u64);

/// Parses a short-form directory held in the inode.
pub fn parse_shortform(b: &[u8], has_ftype: bool) -> Result<Vec<Entry>> {
    let bad = |what: &str| Error::malformed(S, 0, format!("short-form directory: {what}"));
    if b.len() < 2 {
        return Err(bad("too short"));
    }
    let count = usize::from(b[0]);
    let i8count = b[1];
    let ino_size = if i8count > 0 { 8 } else { 4 };
    let mut pos = 2 + ino_size;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let namelen = usize::from(*b.get(pos).ok_or_else(|| bad("entry past the end"))?);
        let name_at = pos + 3;
        let ino_at = name_at + namelen + usize::from(has_ftype);
        let end = ino_at + ino_size;
        if namelen == 0 || end > b.len() {
            return Err(bad("entry past the end"));
        }
        let ino = if ino_size == 8 {
            BigEndian::read_u64(&b[ino_at..end])
        } else {
            u64::from(BigEndian::read_u32(&b[ino_at..end]))
        };
        out.push((b[name_at..name_at + namelen].to_vec(), ino));
        pos = end;
    }
    Ok(out)
}

/// Parses one directory data block (or the single block of a block-form directory).
pub fn parse_data_block(
    b: &[u8],
    at: u64,
    v5: bool,
    has_ftype: bool,
    out: &mut Vec<Entry>,
) -> Result<()> {
    let bad = |off: usize, what: String| Error::malformed(S, at + off as u64, what);
    if b.len() < 64 {
        return Err(bad(0, "block too small".into()));
    }
    let (hdr, single) = match (&b[0..4], v5) {
        (b"XD2B", false) => (16, true),
        (b"XD2D", false) => (16, false),
        (b"XDB3", true) => (64, true),
        (b"XDD3", true) => (64, false),
        _ => return Err(bad(0, "bad directory block magic".into())),
    };
    let end = if single {
        // The block tail: leaf entry count and stale count, after the leaf entries.
        let count = usize::try_from(BigEndian::read_u32(&b[b.len() - 8..b.len() - 4]))
            .unwrap_or(usize::MAX);
        count
            .checked_mul(8)
            .and_then(|n| b.len().checked_sub(8 + n))
            .filter(|&e| e >= hdr)
            .ok_or_else(|| bad(b.len() - 8, format!("{count} leaf entries")))?
    } else {
        b.len()
    };
    let mut pos = hdr;
    while pos + 16 <= end {
        if BigEndian::read_u16(&b[pos..pos + 2]) == 0xffff {
            // An unused region: freetag, length.
            let len = usize::from(BigEndian::read_u16(&b[pos + 2..pos + 4]));
            if len < 8 || len % 8 != 0 {
                return Err(bad(pos, format!("unused entry of {len} bytes")));
            }
            pos += len;
            continue;
        }
        let ino = BigEndian::read_u64(&b[pos..pos + 8]);
        let namelen = usize::from(b[pos + 8]);
        let size = (8 + 1 + namelen + usize::from(has_ftype) + 2).div_ceil(8) * 8;
        if namelen == 0 || pos + size > end {
            return Err(bad(pos, "entry past the end of the block".into()));
        }
        out.push((b[pos + 9..pos + 9 + namelen].to_vec(), ino));
        pos += size;
    }
    Ok(())
}

/// Every entry of a directory (including `.` and `..` for block directories), at most
/// [`MAX_XFS_DIR_BLOCKS`] blocks of them.
pub(crate) fn read_entries(vol: &Volume, sb: &XfsSuperblock, dir: &XfsInode) -> Result<Vec<Entry>> {
    match &dir.fork {
        DataFork::Local(b) => parse_shortform(b, sb.has_ftype()),
        DataFork::None => Err(Error::malformed(S, 0, "directory without data")),
        DataFork::Extents(extents) => {
            let dbs = sb.dir_block_size();
            let fsb_per_dir_block = 1u64 << sb.sb_dirblklog;
            let leaf_fsb = XFS_DIR2_LEAF_OFFSET >> sb.sb_blocklog;
            let mut out = Vec::new();
            let mut blocks = 0;
            let mut buf = vec![0u8; crate::block::usize_len(dbs)?];
            for e in extents {
                if e.startoff >= leaf_fsb {
                    break;
                }
                // Directory blocks that start in this extent.
                let first = e.startoff.div_ceil(fsb_per_dir_block) * fsb_per_dir_block;
                let mut fsb = first;
                while fsb < (e.startoff + e.blockcount).min(leaf_fsb) {
                    blocks += 1;
                    if blocks > MAX_XFS_DIR_BLOCKS {
                        return Err(Error::limit(
                            S,
                            0,
                            format!("more than {MAX_XFS_DIR_BLOCKS} directory blocks"),
                        ));
                    }
                    let offset = fsb << sb.sb_blocklog;
                    read_file(vol, sb, dir, offset, &mut buf)?;
                    parse_data_block(&buf, offset, sb.is_v5(), sb.has_ftype(), &mut out)?;
                    fsb += fsb_per_dir_block;
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_form_with_file_types() {
        // Two entries, 4-byte inode numbers, parent 128.
        let mut b = vec![2, 0, 0, 0, 0, 128];
        for (name, ino) in [(&b"etc"[..], 131u32), (&b"bin"[..], 140)] {
            b.push(name.len() as u8);
            b.extend_from_slice(&[0, 0x60]);
            b.extend_from_slice(name);
            b.push(2);
            b.extend_from_slice(&ino.to_be_bytes());
        }
        let e = parse_shortform(&b, true).unwrap();
        assert_eq!(e, vec![(b"etc".to_vec(), 131), (b"bin".to_vec(), 140)]);
        assert!(parse_shortform(&b[..b.len() - 1], true).is_err());
    }

    #[test]
    fn data_block_entries_and_free_space() {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(b"XDD3");
        let mut pos = 64;
        for (name, ino) in [(&b"."[..], 128u64), (&b"os-release"[..], 200)] {
            b[pos..pos + 8].copy_from_slice(&ino.to_be_bytes());
            b[pos + 8] = name.len() as u8;
            b[pos + 9..pos + 9 + name.len()].copy_from_slice(name);
            pos += (8 + 1 + name.len() + 1 + 2).div_ceil(8) * 8;
        }
        b[pos..pos + 2].copy_from_slice(&0xffffu16.to_be_bytes());
        b[pos + 2..pos + 4].copy_from_slice(&((4096 - pos) as u16).to_be_bytes());
        let mut out = Vec::new();
        parse_data_block(&b, 0, true, true, &mut out).unwrap();
        assert_eq!(
            out,
            vec![(b".".to_vec(), 128), (b"os-release".to_vec(), 200)]
        );
        // A free region whose length is not a multiple of 8.
        b[pos + 3] = 3;
        assert!(parse_data_block(&b, 0, true, true, &mut Vec::new()).is_err());
        // A v4 magic in a v5 file system.
        b[0..4].copy_from_slice(b"XD2D");
        assert!(parse_data_block(&b, 0, true, true, &mut Vec::new()).is_err());
    }
}
