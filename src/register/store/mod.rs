//! Where image data is kept: the [`ImageStore`] trait, and [`LocalStore`], the default (a
//! local directory). A service brings its own store (an object store, a database of blobs) by
//! implementing [`ImageStore`] and [`StoreWriter`]; everything it needs is public.
//!
//! The service uses a store this way:
//!
//! - **write**: [`ImageStore::begin`] a key, append the bytes to the [`StoreWriter`] (front to
//!   back: an object store uploads them in parts), [`StoreWriter::commit`] it (durable and
//!   visible under the key), and keep the writer until the record is settled (`active` or
//!   `killed`); then drop it. Dropping an uncommitted writer aborts it: its data is dropped.
//! - **read**: [`ImageStore::open`] gives a [`Storage`] (positional reads) over a committed
//!   object, which the readers of every format take.
//! - **copy**: [`ImageStore::copy`] makes a committed copy under another key (replication);
//!   **remove** deletes an object.
//! - **recover**: [`ImageStore::unfinished`] lists the writes begun and not yet ended, each
//!   saying whether a live process still owns it; [`ImageStore::discard`] drops what a dead one
//!   left. How a store knows liveness (the local store's lock files, an object store's lease or
//!   its list of multipart uploads) is its own business.

mod local;
#[cfg(feature = "s3")]
mod objects;
#[cfg(feature = "s3")]
mod remote;
#[cfg(feature = "s3")]
mod s3;
#[cfg(feature = "s3")]
mod source;

pub use local::LocalStore;
/// The builder of the S3 client an [`S3Store`] takes (endpoint, region, credentials).
#[cfg(feature = "s3")]
pub use object_store::aws::AmazonS3Builder;
#[cfg(feature = "s3")]
pub use objects::S3Objects;
#[cfg(feature = "s3")]
pub use s3::{S3Options, S3Store, open_object};
#[cfg(feature = "s3")]
pub use source::{SourceOptions, is_remote, open_source};

use std::sync::Arc;

use crate::cancel::CancelToken;
use crate::error::Result;
use crate::io::AppendSink;
use crate::storage::Storage;

/// One object being written, front to back. What it appends (through [`AppendSink`]) becomes
/// visible under its key only at [`commit`](StoreWriter::commit).
///
/// The writer stands for "a live process owns this key" until it is dropped: while it lives,
/// [`ImageStore::unfinished`] reports the write with `live: true`. The service keeps it after
/// the commit until the image's record is `active` or `killed`, so that recovery in another
/// process never takes a committed but not yet recorded object for a dead one.
///
/// Dropping a writer that was not committed must abort it, as [`abort`](StoreWriter::abort)
/// does. Dropping or aborting a committed writer ends the write and leaves the object.
pub trait StoreWriter: AppendSink {
    /// Makes the bytes appended durable and visible under the key, and returns their length.
    /// Called once, after [`AppendSink::finish`]; nothing may be appended after it.
    fn commit(&mut self) -> Result<u64>;

    /// Ends the write, dropping the data appended and not committed (an object store aborts
    /// the multipart upload). An object already committed under the key, by this writer or by
    /// [`ImageStore::copy`], is left as it is: removing it is [`ImageStore::remove`]'s.
    fn abort(self: Box<Self>);
}

/// A write that was begun and has not ended, as [`ImageStore::unfinished`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnfinishedWrite {
    /// The key being written.
    pub key: String,
    /// Whether a live process still owns the write (its [`StoreWriter`] has not been dropped).
    /// `false`: its owner died, and the write will never end by itself.
    pub live: bool,
}

impl UnfinishedWrite {
    /// The write of `key`, owned by a live process or not.
    pub fn new(key: &str, live: bool) -> UnfinishedWrite {
        UnfinishedWrite {
            key: key.to_string(),
            live,
        }
    }
}

/// Image data by key. The service makes the keys (`REGION/ID.FORMAT`, a fresh id each time, so
/// a key is never written twice); a store may refuse keys it cannot hold.
///
/// Every method may be called from several threads and several processes at once.
pub trait ImageStore: Send + Sync {
    /// Starts writing the object `key`. From now until the writer is dropped,
    /// [`unfinished`](ImageStore::unfinished) reports the write as live.
    fn begin(&self, key: &str) -> Result<Box<dyn StoreWriter>>;

    /// The bytes of the committed object `key`, for positional reads.
    fn open(&self, key: &str) -> Result<Arc<dyn Storage>>;

    /// Removes the committed object `key` (no error when it is absent).
    fn remove(&self, key: &str) -> Result<()>;

    /// Copies the committed object `from` to `to` and commits the copy (durable and visible
    /// under `to`); returns its length. A failed or cancelled copy leaves nothing under `to`.
    /// Stops with [`Error::Cancelled`](crate::Error::Cancelled) soon after `cancel` is
    /// cancelled. The service holds a [`StoreWriter`] begun on `to` (and never written to)
    /// while it copies, so that recovery sees the key owned; it then drops that writer, which
    /// must leave the copy in place.
    fn copy(&self, from: &str, to: &str, cancel: &CancelToken) -> Result<u64>;

    /// The writes begun and not ended, live or not. A store may also clear here, by itself,
    /// leftovers that belong to no key (the local store's orphaned temporary files).
    fn unfinished(&self) -> Result<Vec<UnfinishedWrite>>;

    /// Drops what the dead write of `key` left (its uncommitted data, its lock or lease),
    /// after the service has settled the record. An object committed under `key` is left (it
    /// is [`remove`](ImageStore::remove)d when its record is killed). Nothing happens if a
    /// live process owns the write, or if there is no write of `key`.
    fn discard(&self, key: &str) -> Result<()>;
}

/// The store `address` names: `s3://BUCKET/PREFIX` for an [`S3Store`] (with the `s3` feature),
/// or a local directory's path for a [`LocalStore`].
pub fn open(address: &str) -> Result<Box<dyn ImageStore>> {
    if address.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return Ok(Box::new(S3Store::open(address)?));
        #[cfg(not(feature = "s3"))]
        return Err(crate::Error::unsupported(
            "an S3 store: this ims was built without the `s3` feature",
        ));
    }
    if let Some((scheme, _)) = address.split_once("://") {
        return Err(crate::Error::InvalidArgument(format!(
            "unknown store address scheme '{scheme}://' (known: s3://, or a directory's path)"
        )));
    }
    Ok(Box::new(LocalStore::new(std::path::Path::new(address))?))
}
