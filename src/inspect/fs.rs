//! What inspection asks of a guest file system ([`GuestFs`]: the head of a file, whether a path
//! exists, the names in a directory), and its implementations over the ext4 and FAT crates.
//! XFS and NTFS have their own modules.
//!
//! Paths are absolute and `/`-separated. Symbolic links are followed inside the file system only
//! (an absolute target starts again at this file system's root, `..` stops at the root), with a
//! bound on how many are followed. Every read is capped by its caller's `limit`, and every
//! directory listing by [`MAX_DIR_ENTRIES`].

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{Error, Result};
use crate::limits::MAX_DIR_ENTRIES;

use super::disk::{Volume, VolumeCursor};

/// Read-only access to a guest file system.
pub trait GuestFs {
    /// Up to `limit` bytes from the start of the regular file at `path`, or `None` when there
    /// is no regular file there.
    fn read_head(&mut self, path: &str, limit: usize) -> Result<Option<Vec<u8>>>;

    /// Whether anything exists at `path` (symbolic links followed).
    fn exists(&mut self, path: &str) -> Result<bool>;

    /// The names in the directory at `path` (without `.` and `..`), at most
    /// [`MAX_DIR_ENTRIES`] of them, or `None` when it is not a directory.
    fn list_dir(&mut self, path: &str) -> Result<Option<Vec<String>>>;
}

/// A file's data as a positional source (the registry reader reads hives this way, cell by
/// cell, instead of loading them whole).
pub trait ReadAt {
    /// The data's length.
    fn len(&self) -> u64;
    /// Whether the data is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; the range must lie inside the data.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl ReadAt for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let data: &[u8] = self;
        let start = usize::try_from(offset).ok();
        match start.and_then(|s| Some((s, s.checked_add(buf.len())?))) {
            Some((s, e)) if e <= data.len() => {
                buf.copy_from_slice(&data[s..e]);
                Ok(())
            }
            _ => Err(Error::truncated(
                "file data",
                offset,
                buf.len() as u64,
                (data.len() as u64).saturating_sub(offset),
            )),
        }
    }
}

/// Runs a file-system crate's code, turning a panic on a hostile guest into an error.
pub fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::malformed(
                what,
                0,
                format!("the file-system reader gave up: {msg}"),
            ))
        }
    }
}

/// Path components, without empty ones and `.`.
pub fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// ext2/3/4 through the `ext4-view` crate.
pub struct Ext4Fs {
    fs: ext4_view::Ext4,
}

fn ext4_error(e: ext4_view::Ext4Error) -> Error {
    Error::malformed("ext4 file system", 0, e.to_string())
}

/// The ext4 errors that mean "not there" rather than "damaged".
fn ext4_absent(e: &ext4_view::Ext4Error) -> bool {
    use ext4_view::Ext4Error as E;
    matches!(
        e,
        E::NotFound | E::NotADirectory | E::IsADirectory | E::IsASpecialFile
    )
}

impl Ext4Fs {
    /// Opens the ext2/3/4 file system on `vol`. The superblock's size is checked against the
    /// volume first, so that the crate never sizes its tables from an impossible block count.
    pub fn open(vol: &Volume) -> Result<Ext4Fs> {
        const S: &str = "ext4 superblock";
        let sb = vol
            .read_vec(1024, 1024)?
            .ok_or_else(|| Error::truncated(S, 1024, 1024, vol.len.saturating_sub(1024)))?;
        let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
        let log_block_size = le32(24);
        if log_block_size > 6 {
            return Err(Error::malformed(S, 1024 + 24, "block size over 64 KiB"));
        }
        let block_size = 1024u64 << log_block_size;
        let incompat_64bit = le32(96) & 0x80 != 0;
        let blocks_count = u64::from(le32(4))
            | if incompat_64bit {
                u64::from(le32(0x150)) << 32
            } else {
                0
            };
        let blocks_per_group = u64::from(le32(32));
        match blocks_count.checked_mul(block_size) {
            Some(bytes) if bytes <= vol.len => {}
            _ => {
                return Err(Error::malformed(
                    S,
                    1024 + 4,
                    format!(
                        "{blocks_count} blocks of {block_size} bytes do not fit in the volume of {} bytes",
                        vol.len
                    ),
                ));
            }
        }
        if blocks_per_group < 8 || blocks_per_group > 8 * block_size {
            return Err(Error::malformed(
                S,
                1024 + 32,
                format!("{blocks_per_group} blocks per group"),
            ));
        }
        let fs = guarded("ext4 file system", || {
            ext4_view::Ext4::load(Box::new(vol.clone())).map_err(ext4_error)
        })?;
        Ok(Ext4Fs { fs })
    }
}

impl GuestFs for Ext4Fs {
    fn read_head(&mut self, path: &str, limit: usize) -> Result<Option<Vec<u8>>> {
        let fs = &self.fs;
        guarded("ext4 file system", || {
            let mut file = match fs.open(path) {
                Ok(f) => f,
                Err(e) if ext4_absent(&e) => return Ok(None),
                Err(e) => return Err(ext4_error(e)),
            };
            let want = usize::try_from(file.metadata().len())
                .unwrap_or(usize::MAX)
                .min(limit);
            let mut buf = vec![0u8; want];
            let mut done = 0;
            while done < want {
                let n = file.read_bytes(&mut buf[done..]).map_err(ext4_error)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            buf.truncate(done);
            Ok(Some(buf))
        })
    }

    fn exists(&mut self, path: &str) -> Result<bool> {
        let fs = &self.fs;
        guarded("ext4 file system", || match fs.exists(path) {
            Ok(b) => Ok(b),
            Err(e) if ext4_absent(&e) => Ok(false),
            Err(e) => Err(ext4_error(e)),
        })
    }

    fn list_dir(&mut self, path: &str) -> Result<Option<Vec<String>>> {
        let fs = &self.fs;
        guarded("ext4 file system", || {
            let iter = match fs.read_dir(path) {
                Ok(i) => i,
                Err(e) if ext4_absent(&e) => return Ok(None),
                Err(e) => return Err(ext4_error(e)),
            };
            let mut names = Vec::new();
            for entry in iter.take(MAX_DIR_ENTRIES + 2) {
                let entry = entry.map_err(ext4_error)?;
                let name = entry.file_name();
                if let Ok(n) = name.as_str()
                    && n != "."
                    && n != ".."
                {
                    names.push(n.to_string());
                }
            }
            names.truncate(MAX_DIR_ENTRIES);
            Ok(Some(names))
        })
    }
}

/// FAT12/16/32 through the `fatfs` crate. Paths are looked up one component at a time, with
/// at most [`MAX_DIR_ENTRIES`] entries read per directory, so that a directory whose cluster
/// chain loops cannot keep the lookup going.
pub struct FatFs {
    fs: fatfs::FileSystem<VolumeCursor>,
}

fn fat_error(e: std::io::Error) -> Error {
    Error::malformed("fat file system", 0, e.to_string())
}

type FatDir<'a> = fatfs::Dir<'a, VolumeCursor>;
type FatEntry<'a> = fatfs::DirEntry<'a, VolumeCursor>;

impl FatFs {
    /// Opens the FAT file system on `vol`.
    pub fn open(vol: &Volume) -> Result<FatFs> {
        let fs = guarded("fat file system", || {
            fatfs::FileSystem::new(vol.cursor(), fatfs::FsOptions::new()).map_err(fat_error)
        })?;
        Ok(FatFs { fs })
    }

    fn find<'a>(dir: &FatDir<'a>, name: &str) -> Result<Option<FatEntry<'a>>> {
        for entry in dir.iter().take(MAX_DIR_ENTRIES) {
            let entry = entry.map_err(fat_error)?;
            if entry.file_name().eq_ignore_ascii_case(name) {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    fn walk<'a>(root: FatDir<'a>, path: &str) -> Result<Option<Walked<'a>>> {
        let mut dir = root;
        let parts: Vec<&str> = components(path).collect();
        let Some((last, parents)) = parts.split_last() else {
            return Ok(Some(Walked::Dir(dir)));
        };
        for p in parents {
            match Self::find(&dir, p)? {
                Some(e) if e.is_dir() => dir = e.to_dir(),
                _ => return Ok(None),
            }
        }
        Ok(Self::find(&dir, last)?.map(|e| {
            if e.is_dir() {
                Walked::Dir(e.to_dir())
            } else {
                Walked::File(e)
            }
        }))
    }
}

enum Walked<'a> {
    Dir(FatDir<'a>),
    File(FatEntry<'a>),
}

impl GuestFs for FatFs {
    fn read_head(&mut self, path: &str, limit: usize) -> Result<Option<Vec<u8>>> {
        let fs = &self.fs;
        guarded("fat file system", || {
            let Some(Walked::File(entry)) = Self::walk(fs.root_dir(), path)? else {
                return Ok(None);
            };
            let want = usize::try_from(entry.len())
                .unwrap_or(usize::MAX)
                .min(limit);
            let mut buf = Vec::with_capacity(want);
            entry
                .to_file()
                .take(want as u64)
                .read_to_end(&mut buf)
                .map_err(fat_error)?;
            Ok(Some(buf))
        })
    }

    fn exists(&mut self, path: &str) -> Result<bool> {
        let fs = &self.fs;
        guarded("fat file system", || {
            Ok(Self::walk(fs.root_dir(), path)?.is_some())
        })
    }

    fn list_dir(&mut self, path: &str) -> Result<Option<Vec<String>>> {
        let fs = &self.fs;
        guarded("fat file system", || {
            let Some(Walked::Dir(dir)) = Self::walk(fs.root_dir(), path)? else {
                return Ok(None);
            };
            let mut names = Vec::new();
            for entry in dir.iter().take(MAX_DIR_ENTRIES) {
                let name = entry.map_err(fat_error)?.file_name();
                if name != "." && name != ".." {
                    names.push(name);
                }
            }
            Ok(Some(names))
        })
    }
}
