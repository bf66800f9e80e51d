//! The local-directory store: `ROOT/REGION/ID.FORMAT`, writes in progress in `ROOT/REGION/.tmp/`.
//!
//! A write is `.tmp/KEY.lock` (locked with `flock` for as long as the writer lives; made under
//! another name, locked, then renamed, so a visible lock file is always held by its writer
//! while that lives) and `.tmp/KEY.part` (the data). Commit syncs the data, renames it into
//! place and syncs the directory; dropping the writer removes what is left of the data and the
//! lock file, then releases the lock. A write whose lock file nobody holds belongs to a dead
//! process. A copy is written to `.tmp/.new-PID-UUID`, locked while it is written, and renamed
//! into place.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FlockOperation, flock};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::io::{AppendSink, FileSink};
use crate::storage::{FileStorage, Storage};

use super::{ImageStore, StoreWriter, UnfinishedWrite};

/// Image files in a local directory: `ROOT/REGION/ID.FORMAT` for the key `REGION/ID.FORMAT`.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// The store under `root`, created when absent.
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

    /// The data and lock files of a write of `key`.
    fn temp_paths(&self, key: &str) -> Result<(PathBuf, PathBuf)> {
        let (region, name) = self.split(key)?;
        let dir = self.tmp_dir(region);
        Ok((
            dir.join(format!("{name}.part")),
            dir.join(format!("{name}.lock")),
        ))
    }

    /// A fresh file `.tmp/.new-PID-UUID` in `region`'s directory, created and locked.
    fn new_locked(&self, region: &str) -> Result<(PathBuf, File)> {
        let (fresh, file) = crate::io::create_unique(&self.tmp_dir(region), ".new-", "")?;
        let fresh = Removed(Some(fresh));
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| Error::io("lock", e.into()).in_file(fresh.path()))?;
        Ok((fresh.keep(), file))
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(action, e).in_file(path)
}

/// A file removed when this is dropped, unless it was kept.
struct Removed(Option<PathBuf>);

impl Removed {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes `path`; an absent file is no error.
fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", e).in_file(path)),
    }
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

/// Syncs `file` (at `path`), renames it to `dest` and syncs `dest`'s directory.
fn publish(file: &File, path: &Path, dest: &Path) -> Result<()> {
    file.sync_all().map_err(io("sync", path))?;
    std::fs::rename(path, dest).map_err(io("rename", path))?;
    match dest.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Whether the process that made the fresh file `.new-PID-...` named `name` still runs: it
/// creates the file before it can lock it, so an unheld fresh file of a live process may be
/// one about to be locked.
fn maker_alive(name: &str) -> bool {
    let pid = name
        .strip_prefix(".new-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    match pid {
        // EPERM: it exists but is not ours to signal; either way it is alive.
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// Whether the lock file at `path` is held by a live process (false when it is absent).
fn held(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => flock(&f, FlockOperation::NonBlockingLockExclusive).is_err(),
        Err(_) => false,
    }
}

/// Whether the file at `path` was last changed a minute ago or more. A `.new-` file is made,
/// then locked: recovery in another process must not take one in between (or while its own
/// check holds the lock for a moment) for a dead process's and remove it under its maker.
fn settled(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= std::time::Duration::from_secs(60))
}

/// A write of the local store: `.tmp/KEY.part` under the lock `.tmp/KEY.lock`.
struct LocalWriter {
    sink: FileSink,
    part: PathBuf,
    dest: PathBuf,
    lock_path: PathBuf,
    /// The held lock (released when dropped, or when the process dies).
    _lock: File,
    committed: bool,
}

impl LocalWriter {
    fn open(&self) -> Result<()> {
        if self.committed {
            return Err(Error::Internal(format!(
                "{}: appended to after its commit",
                self.dest.display()
            )));
        }
        Ok(())
    }
}

impl AppendSink for LocalWriter {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.open()?;
        self.sink.append(data)
    }

    fn append_zeros(&mut self, len: u64) -> Result<()> {
        self.open()?;
        self.sink.append_zeros(len)
    }

    fn position(&self) -> u64 {
        self.sink.position()
    }

    fn finish(&mut self) -> Result<()> {
        self.open()?;
        self.sink.finish()
    }
}

impl StoreWriter for LocalWriter {
    fn commit(&mut self) -> Result<u64> {
        self.open()?;
        // Sets the length to what was appended (a zero run at the end is a hole).
        self.sink.finish()?;
        publish(self.sink.file(), &self.part, &self.dest)?;
        self.committed = true;
        Ok(self.sink.position())
    }

    fn abort(self: Box<Self>) {
        drop(self);
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.part);
        }
        // The lock file goes while it is still held, so nobody takes it for a dead write's.
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

impl ImageStore for LocalStore {
    fn begin(&self, key: &str) -> Result<Box<dyn StoreWriter>> {
        let (region, _) = self.split(key)?;
        let dest = self.final_path(key)?;
        let (part, lock_path) = self.temp_paths(key)?;
        let (fresh, lock) = self.new_locked(region)?;
        let fresh = Removed(Some(fresh));
        std::fs::rename(fresh.path(), &lock_path).map_err(io("rename", fresh.path()))?;
        fresh.keep();
        // Until the writer owns it, the lock file goes with any error.
        let lock_file = Removed(Some(lock_path));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .map_err(io("create", &part))?;
        Ok(Box::new(LocalWriter {
            sink: FileSink::from_file(file).named(&part),
            part,
            dest,
            lock_path: lock_file.keep(),
            _lock: lock,
            committed: false,
        }))
    }

    fn open(&self, key: &str) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(FileStorage::open(&self.final_path(key)?)?))
    }

    fn remove(&self, key: &str) -> Result<()> {
        remove_file(&self.final_path(key)?)
    }

    fn copy(&self, from: &str, to: &str, cancel: &CancelToken) -> Result<u64> {
        let src = self.final_path(from)?;
        let dest = self.final_path(to)?;
        let (region, _) = self.split(to)?;
        let input = File::open(&src).map_err(io("open", &src))?;
        let (temp, output) = self.new_locked(region)?;
        let temp = Removed(Some(temp));
        copy_file(&input, &src, &output, cancel)?;
        cancel.check()?;
        let len = output.metadata().map_err(io("stat", temp.path()))?.len();
        publish(&output, temp.path(), &dest)?;
        temp.keep();
        Ok(len)
    }

    fn unfinished(&self) -> Result<Vec<UnfinishedWrite>> {
        let mut out = Vec::new();
        let Ok(regions) = std::fs::read_dir(&self.root) else {
            return Ok(out);
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
                    out.push(UnfinishedWrite::new(
                        &format!("{region_name}/{obj}"),
                        held(&path),
                    ));
                } else if let Some(obj) = name.strip_suffix(".part") {
                    // Data without a lock: its writer died after its lock file went.
                    if !dir.join(format!("{obj}.lock")).exists() {
                        let _ = std::fs::remove_file(&path);
                    }
                } else if name.starts_with(".new-")
                    && !held(&path)
                    && (settled(&path) || !maker_alive(&name))
                {
                    // A lock never renamed into place, or a copy whose process died. A live
                    // process may not have locked its fresh file yet: such a file is left alone
                    // until it is a minute old.
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn discard(&self, key: &str) -> Result<()> {
        let (part, lock) = self.temp_paths(key)?;
        if held(&lock) {
            return Ok(());
        }
        remove_file(&part)?;
        remove_file(&lock)
    }
}

#[cfg(test)]
mod tests {
    //! What the store trait promises is tested by tests/store.rs, against this store and the S3
    //! one alike; here, what only this store's layout has.
    use super::*;

    #[test]
    fn leftovers_of_dead_processes_and_fresh_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let tmp = dir.path().join("r1/.tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        // What a dead writer leaves: a lock file nobody holds and its data; data whose lock
        // file went; and lock files never renamed into place.
        std::fs::write(tmp.join("b.raw.lock"), b"").unwrap();
        std::fs::write(tmp.join("b.raw.part"), b"partial").unwrap();
        std::fs::write(tmp.join("c.raw.part"), b"orphan").unwrap();
        std::fs::write(tmp.join(".new-1-x"), b"").unwrap();
        std::fs::write(tmp.join(".new-2-y"), b"").unwrap();
        // A dead process's is a minute old or more; a fresh one may be about to be locked.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        File::options()
            .write(true)
            .open(tmp.join(".new-1-x"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            store.unfinished().unwrap(),
            [UnfinishedWrite::new("r1/b.raw", false)]
        );
        assert!(!tmp.join(".new-1-x").exists());
        assert!(!tmp.join("c.raw.part").exists());
        assert!(
            tmp.join(".new-2-y").exists(),
            "a fresh .new- file was removed"
        );
        std::fs::remove_file(tmp.join(".new-2-y")).unwrap();
        store.discard("r1/b.raw").unwrap();
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
        assert!(store.unfinished().unwrap().is_empty());

        // A write in progress is its lock file and its data, under the key's region.
        let mut w = store.begin("r1/d.raw").unwrap();
        w.append(b"data").unwrap();
        assert!(tmp.join("d.raw.lock").exists() && tmp.join("d.raw.part").exists());
        w.commit().unwrap();
        drop(w);
        assert_eq!(std::fs::read(dir.path().join("r1/d.raw")).unwrap(), b"data");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
        assert!(store.begin("r1/..").is_err());
    }
}
