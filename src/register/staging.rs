//! Data staged for a later import, as the OpenStack Image API's `stage` + `import` make it:
//! the bytes of a queued image wait in the image store, under the key `REGION/ID.staged`,
//! until an import converts them into the image ([`Ims::import_staged`]) and drops them.
//!
//! They live in the store, not on one server's disk, so that any process sharing the catalog
//! and the store may run the import (a persisted job). Staged data is written like image data
//! (a multipart upload on an object store, no local copy), and cleared when its image is
//! imported, fails, or is deleted. A stage cut short leaves a dead write, which recovery
//! removes ([`Ims::recover`]); its image stays queued and may be staged again.

use std::io::Read;

use crate::Progress;
use crate::cancel::CancelToken;
use crate::error::Error;
use crate::formats::Format;
use crate::open::Input;

use super::error::Result;
use super::record::ImageRecord;
use super::upload::awaits_data;
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
        let key = staging_key(&r.region, &r.id);
        if self.store.open(&key).is_ok() {
            return Err(
                Error::InvalidArgument(format!("image {id} has staged data already")).into(),
            );
        }
        let mut writer = self.store.begin(&key)?;
        let written = (|| -> Result<u64> {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = match data.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io("read the data to stage", e).into()),
                };
                total = total.saturating_add(n as u64);
                rules::check_sizes(total, 0, &self.limits)?;
                writer.append(&buf[..n])?;
            }
            writer.finish()?;
            Ok(writer.commit()?)
        })();
        if written.is_err() {
            writer.abort();
        }
        written
    }

    /// Whether image `id` (queued, of `region`) has staged data.
    pub fn is_staged(&self, region: &str, id: &str) -> bool {
        self.store.open(&staging_key(region, id)).is_ok()
    }

    /// Imports the data staged for the queued image `id` into it, converted into
    /// `store_format` ([`Ims::register_into`]), then drops the staged data, whatever the
    /// outcome: an import ends `active` or `killed`.
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
        let done = self.register_into(scope, id, input, store_format, progress, cancel);
        let _ = self.store.remove(&key);
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
