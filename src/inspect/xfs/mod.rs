//! A small read-only XFS reader: the superblock, inodes (local, extent-list and B+tree data
//! forks), directories (short form and data blocks) and symbolic links, enough to find and
//! read the files inspection looks at. See the XFS on-disk format documentation for the
//! structures; every number taken from the disk is checked before it is used.

pub mod dir;
pub mod inode;
pub mod superblock;

use std::collections::VecDeque;

use crate::error::{Error, Result};

use super::disk::Volume;
use super::fs::{GuestFs, components};
use crate::limits::{MAX_DIR_ENTRIES, MAX_SYMLINKS, MAX_XFS_COMPONENTS, MAX_XFS_LINK};
use inode::XfsInode;
use superblock::XfsSuperblock;

/// An opened XFS file system.
pub struct XfsFs {
    vol: Volume,
    sb: XfsSuperblock,
}

impl XfsFs {
    /// Opens the XFS file system on `vol`: reads and checks its superblock.
    pub fn open(vol: &Volume) -> Result<XfsFs> {
        let mut b = [0u8; 512];
        vol.read_at(&mut b, 0)?;
        let sb = XfsSuperblock::parse(&b)?;
        if sb.size() > vol.len {
            return Err(Error::malformed(
                "xfs superblock",
                8,
                format!(
                    "{} bytes do not fit in the volume of {}",
                    sb.size(),
                    vol.len
                ),
            ));
        }
        Ok(XfsFs {
            vol: vol.clone(),
            sb,
        })
    }

    /// The superblock, as read and checked.
    pub fn superblock(&self) -> &XfsSuperblock {
        &self.sb
    }

    fn inode(&self, ino: u64) -> Result<XfsInode> {
        XfsInode::read(&self.vol, &self.sb, ino)
    }

    fn lookup(&self, dir: &XfsInode, name: &str) -> Result<Option<u64>> {
        Ok(dir::read_entries(&self.vol, &self.sb, dir)?
            .into_iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, ino)| ino))
    }

    fn link_target(&self, inode: &XfsInode) -> Result<String> {
        let len = usize::try_from(inode.di_size)
            .ok()
            .filter(|&n| n > 0 && n <= MAX_XFS_LINK)
            .ok_or_else(|| {
                Error::malformed(
                    "xfs symlink",
                    0,
                    format!("target of {} bytes", inode.di_size),
                )
            })?;
        let mut buf = vec![0u8; len];
        inode::read_file(&self.vol, &self.sb, inode, 0, &mut buf)?;
        // v5 remote symlink blocks start with a header ("XSLM"); targets this long are rare and
        // not needed by inspection.
        if buf.starts_with(b"XSLM") {
            return Err(Error::unsupported("xfs symlink targets stored in blocks"));
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The inode at `path`, following symbolic links (the last one too when `follow_last`)
    /// inside this file system: absolute targets start at its root, `..` stops there.
    fn resolve(&self, path: &str, follow_last: bool) -> Result<Option<XfsInode>> {
        let root = self.sb.sb_rootino;
        let mut stack: Vec<u64> = vec![root];
        let mut current = self.inode(root)?;
        let mut todo: VecDeque<String> = components(path).map(str::to_string).collect();
        let mut links = 0;
        let mut walked = 0;
        while let Some(name) = todo.pop_front() {
            walked += 1;
            if walked > MAX_XFS_COMPONENTS {
                return Err(Error::limit("xfs path", 0, "too many path components"));
            }
            if !current.is_dir() {
                return Ok(None);
            }
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                current = self.inode(*stack.last().unwrap_or(&root))?;
                continue;
            }
            let Some(ino) = self.lookup(&current, &name)? else {
                return Ok(None);
            };
            let inode = self.inode(ino)?;
            if inode.is_symlink() && (follow_last || !todo.is_empty()) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::limit(
                        "xfs path",
                        0,
                        format!("more than {MAX_SYMLINKS} symbolic links (a loop?) in {path}"),
                    ));
                }
                let target = self.link_target(&inode)?;
                if target.starts_with('/') {
                    stack.truncate(1);
                    current = self.inode(root)?;
                }
                for c in components(&target).rev() {
                    todo.push_front(c.to_string());
                }
                continue;
            }
            if todo.is_empty() {
                return Ok(Some(inode));
            }
            stack.push(ino);
            current = inode;
        }
        Ok(Some(current))
    }
}

impl GuestFs for XfsFs {
    fn read_head(&mut self, path: &str, limit: usize) -> Result<Option<Vec<u8>>> {
        let Some(inode) = self.resolve(path, true)? else {
            return Ok(None);
        };
        if !inode.is_reg() {
            return Ok(None);
        }
        let n = usize::try_from(inode.di_size)
            .unwrap_or(usize::MAX)
            .min(limit);
        let mut buf = vec![0u8; n];
        inode::read_file(&self.vol, &self.sb, &inode, 0, &mut buf)?;
        Ok(Some(buf))
    }

    fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.resolve(path, true)?.is_some())
    }

    fn list_dir(&mut self, path: &str) -> Result<Option<Vec<String>>> {
        let Some(inode) = self.resolve(path, true)? else {
            return Ok(None);
        };
        if !inode.is_dir() {
            return Ok(None);
        }
        let mut names: Vec<String> = dir::read_entries(&self.vol, &self.sb, &inode)?
            .into_iter()
            .filter(|(n, _)| n != b"." && n != b"..")
            .map(|(n, _)| String::from_utf8_lossy(&n).into_owned())
            .collect();
        names.truncate(MAX_DIR_ENTRIES);
        Ok(Some(names))
    }
}
