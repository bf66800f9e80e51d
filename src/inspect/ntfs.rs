//! NTFS through the `ntfs` crate: file names are looked up in each directory's index
//! (case-insensitively, with the volume's $UpCase table), files are read from their unnamed
//! $DATA attribute. Reparse points (junctions, symbolic links) are not followed.

use std::io::{Read, Seek, SeekFrom};

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::NtfsFileNamespace;
use ntfs::{Ntfs, NtfsFile};

use crate::error::{Error, Result};

use super::disk::{Volume, VolumeCursor};
use super::fs::{GuestFs, ReadAt, components, guarded};
use crate::limits::MAX_DIR_ENTRIES;

const S: &str = "ntfs file system";

/// The boot sector's size. The `ntfs` crate panics (an `unreachable!` on the error binrw
/// gives) when the volume is shorter than its boot sector, so that is refused before the crate
/// sees it; its other reads go through checked positions.
const BOOT_SECTOR: u64 = 512;

fn ntfs_error(e: ntfs::NtfsError) -> Error {
    Error::malformed(S, 0, e.to_string())
}

/// Refuses a volume too short to hold an NTFS boot sector.
fn check_length(vol: &Volume) -> Result<()> {
    if vol.len < BOOT_SECTOR {
        return Err(Error::truncated(S, 0, BOOT_SECTOR, vol.len));
    }
    Ok(())
}

/// The volume's label, from the $Volume file.
pub fn volume_label(vol: &Volume) -> Option<String> {
    check_length(vol).ok()?;
    guarded(S, || {
        let mut cursor = vol.cursor();
        let ntfs = Ntfs::new(&mut cursor).map_err(ntfs_error)?;
        Ok(match ntfs.volume_name(&mut cursor) {
            Some(Ok(name)) => Some(name.name().to_string_lossy()),
            _ => None,
        })
    })
    .ok()
    .flatten()
    .filter(|l| !l.is_empty())
}

/// An opened NTFS volume.
pub struct NtfsFs {
    ntfs: Ntfs,
    cursor: VolumeCursor,
}

struct Attached<R> {
    inner: R,
    len: u64,
}

impl<R: Read + Seek> ReadAt for Attached<R> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(Error::truncated(
                "file data",
                offset,
                buf.len() as u64,
                self.len,
            ));
        }
        self.inner
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.inner.read_exact(buf))
            .map_err(|e| Error::malformed(S, offset, e.to_string()))
    }
}

impl NtfsFs {
    /// Opens the NTFS file system on `vol`.
    pub fn open(vol: &Volume) -> Result<NtfsFs> {
        check_length(vol)?;
        guarded(S, || {
            let mut cursor = vol.cursor();
            let mut ntfs = Ntfs::new(&mut cursor).map_err(ntfs_error)?;
            ntfs.read_upcase_table(&mut cursor).map_err(ntfs_error)?;
            Ok(NtfsFs { ntfs, cursor })
        })
    }

    /// The file at `path`, or `None`.
    fn lookup<'n>(
        ntfs: &'n Ntfs,
        cursor: &mut VolumeCursor,
        path: &str,
    ) -> Result<Option<NtfsFile<'n>>> {
        let mut file = ntfs.root_directory(cursor).map_err(ntfs_error)?;
        for name in components(path) {
            if !file.is_directory() {
                return Ok(None);
            }
            let index = file.directory_index(cursor).map_err(ntfs_error)?;
            let mut finder = index.finder();
            let entry = match NtfsFileNameIndex::find(&mut finder, ntfs, cursor, name) {
                None => return Ok(None),
                Some(e) => e.map_err(ntfs_error)?,
            };
            file = entry.to_file(ntfs, cursor).map_err(ntfs_error)?;
        }
        Ok(Some(file))
    }

    /// Runs `f` over the unnamed data stream of the regular file at `path`; `None` when there
    /// is no such file.
    pub fn with_file<T>(
        &mut self,
        path: &str,
        f: impl FnOnce(&mut dyn ReadAt) -> Result<T>,
    ) -> Result<Option<T>> {
        let NtfsFs { ntfs, cursor } = self;
        guarded(S, || {
            let Some(file) = Self::lookup(ntfs, cursor, path)? else {
                return Ok(None);
            };
            if file.is_directory() {
                return Ok(None);
            }
            let Some(item) = file.data(cursor, "") else {
                return Ok(None);
            };
            let item = item.map_err(ntfs_error)?;
            let attribute = item.to_attribute().map_err(ntfs_error)?;
            let value = attribute.value(cursor).map_err(ntfs_error)?;
            let len = value.len();
            let mut source = Attached {
                inner: value.attach(cursor),
                len,
            };
            f(&mut source).map(Some)
        })
    }
}

impl GuestFs for NtfsFs {
    fn read_head(&mut self, path: &str, limit: usize) -> Result<Option<Vec<u8>>> {
        self.with_file(path, |data| {
            let want = usize::try_from(data.len()).unwrap_or(usize::MAX).min(limit);
            let mut buf = vec![0u8; want];
            data.read_at(0, &mut buf)?;
            Ok(buf)
        })
    }

    fn exists(&mut self, path: &str) -> Result<bool> {
        let NtfsFs { ntfs, cursor } = self;
        guarded(S, || Ok(Self::lookup(ntfs, cursor, path)?.is_some()))
    }

    fn list_dir(&mut self, path: &str) -> Result<Option<Vec<String>>> {
        let NtfsFs { ntfs, cursor } = self;
        guarded(S, || {
            let Some(dir) = Self::lookup(ntfs, cursor, path)? else {
                return Ok(None);
            };
            if !dir.is_directory() {
                return Ok(None);
            }
            let index = dir.directory_index(cursor).map_err(ntfs_error)?;
            let mut entries = index.entries();
            let mut names = Vec::new();
            let mut seen = 0;
            while let Some(entry) = entries.next(cursor) {
                seen += 1;
                if seen > MAX_DIR_ENTRIES * 2 || names.len() >= MAX_DIR_ENTRIES {
                    break;
                }
                let entry = entry.map_err(ntfs_error)?;
                let Some(key) = entry.key() else { continue };
                let key = key.map_err(ntfs_error)?;
                if key.namespace() == NtfsFileNamespace::Dos {
                    continue;
                }
                let name = key.name().to_string_lossy();
                if name != "." {
                    names.push(name);
                }
            }
            Ok(Some(names))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::block::MemoryDisk;
    use crate::inspect::disk::Disk;

    /// Found by the `filesystems` fuzz target: an NTFS boot sector cut one byte short made the
    /// `ntfs` crate panic. It is refused as truncated before the crate runs (the guard's
    /// "gave up" error would mean the crate panicked).
    #[test]
    fn a_volume_shorter_than_the_boot_sector_is_truncated() {
        let mut boot = vec![0u8; 511];
        boot[..11].copy_from_slice(b"\xeb\x52\x90NTFS    ");
        let vol = Volume::whole(Disk::new(Arc::new(MemoryDisk(boot))));
        let err = NtfsFs::open(&vol).err().expect("a short volume is refused");
        assert_eq!(err.kind(), "truncated", "{err}");
        assert!(volume_label(&vol).is_none());
    }
}
