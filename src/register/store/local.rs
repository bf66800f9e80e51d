//! The local-directory store: `ROOT/REGION/ID.FORMAT`, uploads in `ROOT/REGION/.tmp/`.
//!
//! An upload is `.tmp/KEY.lock` (locked with `flock` for as long as the writer lives; made
//! under another name, locked, then renamed, so a visible lock file is always held by its
//! writer while that lives) and `.tmp/KEY.part` (the data). Commit syncs the data, renames it
//! into place and syncs the directory.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};

use super::{ImageStore, Upload};

/// Image files in a local directory.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: &Path) -> Result<LocalStore> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io("create directory", e).in_file(root))?;
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    /// `REGION/NAME` split, with both parts checked to be plain names.
    fn split<'a>(&self, key: &'a str) -> Result<(&'a str, &'a str)> {
        let plain = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && !s.starts_with('.')
                && !s.contains(['/', '\\', '\0'])
        };
        match key.split_once('/') {
            Some((region, name)) if plain(region) && plain(name) => Ok((region, name)),
            _ => Err(Error::InvalidArgument(format!(
                "store key '{key}' is not REGION/NAME"
            ))),
        }
    }

    fn final_path(&self, key: &str) -> Result<PathBuf> {
        let (region, name) = self.split(key)?;
        Ok(self.root.join(region).join(name))
    }

    fn tmp_dir(&self, region: &str) -> PathBuf {
        self.root.join(region).join(".tmp")
    }

    fn temp_paths(&self, key: &str) -> Result<(PathBuf, PathBuf)> {
        let (region, name) = self.split(key)?;
        let dir = self.tmp_dir(region);
        Ok((
            dir.join(format!("{name}.part")),
            dir.join(format!("{name}.lock")),
        ))
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(action, e).in_file(path)
}

/// Copies `input` (named `src`) into `output` a slice at a time, in the kernel where it can
/// (`copy_file_range`), checking `cancel` between slices: a slice takes a few milliseconds.
fn copy_file(input: &File, src: &Path, output: &File, cancel: &CancelToken) -> Result<()> {
    use rustix::io::Errno;
    use std::io::{Read, Write};
    const SLICE: usize = 16 << 20;
    let mut buf = Vec::new();
    loop {
        cancel.check()?;
        let n = if buf.is_empty() {
            match rustix::fs::copy_file_range(input, None, output, None, SLICE) {
                Ok(n) => n,
                // No copy in the kernel between these files: through a buffer.
                Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                    buf = vec![0u8; 1 << 20];
                    continue;
                }
                Err(e) => return Err(Error::io("copy", e.into()).in_file(src)),
            }
        } else {
            let n = (&*input).read(&mut buf).map_err(io("read", src))?;
            (&*output)
                .write_all(&buf[..n])
                .map_err(|e| Error::io("copy", e).in_file(src))?;
            n
        };
        if n == 0 {
            return Ok(());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

/// Whether the lock file at `path` is held by a live process (false when it is absent).
fn held(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => flock(&f, FlockOperation::NonBlockingLockExclusive).is_err(),
        Err(_) => false,
    }
}

impl ImageStore for LocalStore {
    fn begin(&self, key: &str) -> Result<Upload> {
        let (region, _) = self.split(key)?;
        let dir = self.tmp_dir(region);
        std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let (part, lock_path) = self.temp_paths(key)?;
        let fresh = dir.join(format!(
            ".new-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let lock = File::options()
            .write(true)
            .create_new(true)
            .open(&fresh)
            .map_err(io("create", &fresh))?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| Error::io("lock", e.into()).in_file(&fresh))?;
        std::fs::rename(&fresh, &lock_path).map_err(io("rename", &fresh))?;
        File::create(&part).map_err(io("create", &part))?;
        Ok(Upload {
            key: key.to_string(),
            path: part,
            _lock: lock,
            lock_path,
        })
    }

    fn commit(&self, upload: &Upload) -> Result<u64> {
        let dest = self.final_path(&upload.key)?;
        let file = File::open(&upload.path).map_err(io("open", &upload.path))?;
        file.sync_all().map_err(io("sync", &upload.path))?;
        let len = file.metadata().map_err(io("stat", &upload.path))?.len();
        std::fs::rename(&upload.path, &dest).map_err(io("rename", &upload.path))?;
        if let Some(dir) = dest.parent() {
            sync_dir(dir)?;
        }
        Ok(len)
    }

    fn end(&self, upload: Upload) {
        let _ = std::fs::remove_file(&upload.path);
        let _ = std::fs::remove_file(&upload.lock_path);
        drop(upload);
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        self.final_path(key)
    }

    fn exists(&self, key: &str) -> bool {
        self.final_path(key).is_ok_and(|p| p.exists())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let path = self.final_path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", e).in_file(&path)),
        }
    }

    fn copy(&self, from: &str, to: &Upload, cancel: &CancelToken) -> Result<()> {
        let src = self.final_path(from)?;
        let input = File::open(&src).map_err(io("open", &src))?;
        let output = File::create(&to.path).map_err(io("create", &to.path))?;
        copy_file(&input, &src, &output, cancel)
    }

    fn is_live(&self, key: &str) -> bool {
        self.temp_paths(key).is_ok_and(|(_, lock)| held(&lock))
    }

    fn sweep(&self) -> Result<Vec<String>> {
        let mut dead = Vec::new();
        let Ok(regions) = std::fs::read_dir(&self.root) else {
            return Ok(dead);
        };
        for region in regions.flatten() {
            let region_name = region.file_name().to_string_lossy().into_owned();
            let dir = self.tmp_dir(&region_name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if let Some(obj) = name.strip_suffix(".lock") {
                    if !held(&path) {
                        let _ = std::fs::remove_file(dir.join(format!("{obj}.part")));
                        dead.push(format!("{region_name}/{obj}"));
                    }
                } else if let Some(obj) = name.strip_suffix(".part") {
                    // Data without a lock: its writer died before locking or after unlocking.
                    if !dir.join(format!("{obj}.lock")).exists() {
                        let _ = std::fs::remove_file(&path);
                    }
                } else if name.starts_with(".new-") && !held(&path) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(dead)
    }

    fn forget(&self, key: &str) {
        if let Ok((part, lock)) = self.temp_paths(key) {
            let _ = std::fs::remove_file(part);
            if !held(&lock) {
                let _ = std::fs::remove_file(lock);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_commit_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let up = store.begin("r1/a.raw").unwrap();
        std::fs::write(&up.path, b"data").unwrap();
        assert!(store.is_live("r1/a.raw"));
        assert!(store.sweep().unwrap().is_empty(), "a live upload is kept");
        assert_eq!(store.commit(&up).unwrap(), 4);
        store.end(up);
        assert!(!store.is_live("r1/a.raw"));
        assert_eq!(
            std::fs::read(store.path("r1/a.raw").unwrap()).unwrap(),
            b"data"
        );

        // A writer that died: its lock is no longer held.
        let up = store.begin("r1/b.raw").unwrap();
        std::fs::write(&up.path, b"partial").unwrap();
        let (part, lock) = (up.path.clone(), up.lock_path.clone());
        drop(up);
        assert_eq!(store.sweep().unwrap(), vec!["r1/b.raw".to_string()]);
        assert!(!part.exists());
        store.forget("r1/b.raw");
        assert!(!lock.exists());
        assert!(store.begin("../x").is_err());
        assert!(store.begin("r1/.hidden").is_err());
    }
}
