//! Data staged for a later import, as the OpenStack Image API's `stage` + `import` make it:
//! the bytes of a queued image wait in the image store, under the key `REGION/ID.staged`,
//! until an import converts them into the image ([`Ims::import_staged`]) and drops them.
//!
//! They live in the store, not on one server's disk, so that any process sharing the catalog
//! and the store may run the import (a persisted job). Staged data is written like image data
//! (a multipart upload on an object store, no local copy); once committed, the record says so
//! ([`ImageRecord::staged_size`], so that a list needs no look into the store). It is cleared
//! when its image is imported, fails, or is deleted. A stage cut short leaves a dead write,
//! which recovery removes ([`Ims::recover`]); its image stays queued and may be staged again,
//! as it may after a crash between the commit and the record's change (the orphaned object is
//! replaced).

use std::io::Read;

use crate::Progress;
use crate::cancel::CancelToken;
use crate::error::Error;
use crate::formats::Format;
use crate::open::Input;

use super::error::Result;
use super::record::ImageRecord;
use super::upload::{append_within_limits, awaits_data};
use super::{Ims, Scope, rules};

/// The store key of the data staged for image `id` of `region`.
pub(crate) fn staging_key(region: &str, id: &str) -> String {
    super::store_key(region, id, "staged")
}

impl Ims {
    /// Stages `data` for the queued image `id` of `scope` (its owner's call), at most the
    /// file-size limit, and returns its length. Refused when the image does not wait for data
    /// or already has staged data.
    pub fn stage(&self, scope: &Scope, id: &str, data: &mut dyn Read) -> Result<u64> {
        let r = self.waiting(scope, id)?;
        if r.staged_size.is_some() {
            return Err(
                Error::InvalidArgument(format!("image {id} has staged data already")).into(),
            );
        }
        let key = staging_key(&r.region, &r.id);
        // What a stage that stopped between its commit and the record's change left.
        self.store.remove(&key)?;
        let mut writer = self.store.begin(&key)?;
        let written = (|| -> Result<u64> {
            let cancel = CancelToken::new();
            append_within_limits(
                data,
                &mut *writer,
                &self.limits,
                &cancel,
                "read the data to stage",
            )?;
            writer.finish()?;
            Ok(writer.commit()?)
        })();
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                writer.abort();
                return Err(e);
            }
        };
        drop(writer);
        // The record again, as it is now: it may have changed (or gone) while the data came.
        let recorded = self.waiting(scope, id).and_then(|mut r| {
            r.staged_size = Some(size);
            r.updated_at = super::record::now();
            self.catalog.update(&r)
        });
        if let Err(e) = recorded {
            let _ = self.store.remove(&key);
            return Err(e);
        }
        Ok(size)
    }

    /// Imports the data staged for the queued image `id` into it, converted into
    /// `store_format` ([`Ims::register_into`]), and drops the staged data whatever the outcome
    /// (an import ends `active` or `killed`): before the image is `active`, so that an active
    /// image has none left.
    pub fn import_staged(
        &self,
        scope: &Scope,
        id: &str,
        store_format: Format,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<ImageRecord> {
        let r = self.waiting(scope, id)?;
        let key = staging_key(&r.region, &r.id);
        let storage = match self.store.open(&key) {
            Ok(s) => s,
            Err(e) => {
                let e = Error::InvalidArgument(format!("image {id} has no staged data: {e}"));
                self.settle_failed(&r, &e.to_string());
                return Err(e.into());
            }
        };
        let input = Input::Storage {
            storage,
            name: format!("the data staged for image {id}"),
        };
        let mut drop_staged = || {
            let _ = self.store.remove(&key);
        };
        let done = self.register_into_then(
            scope,
            id,
            input,
            store_format,
            progress,
            cancel,
            &mut drop_staged,
        );
        // A failed import drops it too (dropping it twice, when it failed after the data was
        // stored, is harmless).
        if done.is_err() {
            drop_staged();
        }
        done
    }

    /// Ends an import of image `id` that will not happen (its source failed, or the process
    /// running it stopped): the image is `killed` with `reason` if it still waits for data, and
    /// its staged data is dropped. No scope: the job system's call.
    pub fn abandon_import(&self, id: &str, reason: &str) -> Result<()> {
        if let Some(r) = self.catalog.get(id)? {
            if awaits_data(&r) {
                self.settle_failed(&r, reason);
            }
            self.store.remove(&staging_key(&r.region, &r.id))?;
        }
        Ok(())
    }

    /// The queued image `id`, if `scope` owns it and it waits for its data.
    fn waiting(&self, scope: &Scope, id: &str) -> Result<ImageRecord> {
        let r = self.show(scope, id)?;
        rules::check_owner(&r, &scope.project)?;
        if !awaits_data(&r) {
            return Err(Error::InvalidArgument(format!(
                "image {id} is {}: data is staged and imported only into a queued image",
                r.status
            ))
            .into());
        }
        Ok(r)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::register::record::Status;
    use crate::register::upload::NewImage;

    fn raw_disk() -> Vec<u8> {
        (0..1u32 << 20).map(|i| (i % 251) as u8).collect()
    }

    fn stored_files(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![dir.join("store")];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    todo.push(e.path());
                } else {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    #[test]
    fn staged_data_waits_in_the_store_until_imported_and_is_dropped_after() {
        let dir = tempfile::tempdir().unwrap();
        let ims = Ims::open(dir.path()).unwrap();
        let scope = Scope::new("p1", "r1");
        let r = ims.create_empty(&scope, &NewImage::default()).unwrap();
        let disk = raw_disk();
        assert_eq!(ims.stage(&scope, &r.id, &mut &disk[..]).unwrap(), 1 << 20);
        let staged = ims.show(&scope, &r.id).unwrap();
        assert_eq!(
            (staged.status, staged.staged_size),
            (Status::Queued, Some(1 << 20))
        );
        assert_eq!(stored_files(dir.path()), [format!("{}.staged", r.id)]);
        // Once staged, not again; another project does not see the image.
        assert!(ims.stage(&scope, &r.id, &mut &disk[..]).is_err());
        let other = Scope::new("p2", "r1");
        assert!(ims.stage(&other, &r.id, &mut &disk[..]).is_err());
        // Another process (a fresh service over the same home) imports it.
        let again = Ims::open(dir.path()).unwrap();
        let done = again
            .import_staged(
                &scope,
                &r.id,
                Format::Zvhd2,
                &mut |_| {},
                &CancelToken::new(),
            )
            .unwrap();
        assert_eq!((done.status, done.staged_size), (Status::Active, None));
        assert_eq!(stored_files(dir.path()), [format!("{}.zvhd2", r.id)]);
        assert!(ims.stage(&scope, &r.id, &mut &disk[..]).is_err(), "active");
    }

    #[test]
    fn an_abandoned_or_deleted_import_leaves_no_staged_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut ims = Ims::open(dir.path()).unwrap();
        let scope = Scope::new("p1", "r1");
        let disk = raw_disk();
        let a = ims.create_empty(&scope, &NewImage::default()).unwrap();
        ims.stage(&scope, &a.id, &mut &disk[..]).unwrap();
        ims.abandon_import(&a.id, "interrupted").unwrap();
        let killed = ims.show(&scope, &a.id).unwrap();
        assert_eq!(killed.status, Status::Killed);
        assert_eq!(killed.status_reason.as_deref(), Some("interrupted"));
        let b = ims.create_empty(&scope, &NewImage::default()).unwrap();
        ims.stage(&scope, &b.id, &mut &disk[..]).unwrap();
        ims.delete(&scope, &b.id).unwrap();
        assert!(stored_files(dir.path()).is_empty());
        // Data past the file-size limit is refused, and nothing of it stays.
        let mut small = ims.limits().clone();
        small.max_file_size = 1000;
        ims.set_limits(small);
        let c = ims.create_empty(&scope, &NewImage::default()).unwrap();
        assert!(ims.stage(&scope, &c.id, &mut &disk[..]).is_err());
        assert_eq!(ims.show(&scope, &c.id).unwrap().staged_size, None);
        assert!(stored_files(dir.path()).is_empty());
    }
}
