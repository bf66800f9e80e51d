//! Where image files are kept: the [`ImageStore`] trait, and [`LocalStore`], the default (a
//! local directory). An object store can implement the same trait.
//!
//! An object is written through an [`Upload`]: a temporary file under a liveness lock. Only
//! [`ImageStore::commit`] makes the data visible under its key, after it is durable; a process
//! killed mid-upload leaves an upload whose lock nobody holds, which [`ImageStore::sweep`]
//! finds and removes.

mod local;

pub use local::LocalStore;

use std::fs::File;
use std::path::PathBuf;

use crate::cancel::CancelToken;
use crate::error::Result;

/// An object being written. Its lock is held while this value lives.
pub struct Upload {
    /// The key the data will have.
    pub key: String,
    /// Where to write the data.
    pub path: PathBuf,
    /// The held lock (released when dropped or when the process dies).
    pub(crate) _lock: File,
    pub(crate) lock_path: PathBuf,
}

/// Image files by key (`REGION/ID.FORMAT`).
pub trait ImageStore: Send + Sync {
    /// Starts writing the object `key`.
    fn begin(&self, key: &str) -> Result<Upload>;

    /// Makes the upload's data durable and visible under its key; returns its length.
    fn commit(&self, upload: &Upload) -> Result<u64>;

    /// Ends an upload, committed or not: removes what is left of its temporary data, then its
    /// lock.
    fn end(&self, upload: Upload);

    /// A local file holding the object's bytes, to read.
    fn path(&self, key: &str) -> Result<PathBuf>;

    /// Whether the object exists.
    fn exists(&self, key: &str) -> bool;

    /// Removes an object (no error when it is absent).
    fn remove(&self, key: &str) -> Result<()>;

    /// Copies the object `from` into an upload; stops with
    /// [`Error::Cancelled`](crate::Error::Cancelled) soon after `cancel` is cancelled.
    fn copy(&self, from: &str, to: &Upload, cancel: &CancelToken) -> Result<()>;

    /// Whether a live process is writing `key`.
    fn is_live(&self, key: &str) -> bool;

    /// The keys of uploads whose writer died; their temporary data is removed, their locks are
    /// left for [`ImageStore::forget`] once the caller has settled the records.
    fn sweep(&self) -> Result<Vec<String>>;

    /// Removes the leftover lock of a dead upload.
    fn forget(&self, key: &str);
}
