//! Copies of an image: to another region (replication: a new record with its own id and
//! status flow, the data copied byte for byte into that region's store), and out of the
//! service (export: a disk for a server, in the format and size asked for).

use std::path::Path;
use std::sync::Arc;

use crate::cancel::CancelToken;
use crate::convert::Source;
use crate::error::Error;
use crate::formats::Format;
use crate::{CreateOptions, OpenOptions, PipelineOptions, Progress, Target};

use super::error::{Result, RuleCode, ServiceError};
use super::hash::hash_storage;
use super::record::{ImageRecord, Status, Visibility, now};
use super::resized::Resized;
use super::{Ims, Scope, rules};

impl Ims {
    /// Replicates image `id` (owned by `scope.project`, or shared with it and accepted) into
    /// `target_region`, owned by `scope.project` there. An encrypted image needs `kms_key_id`,
    /// a key of the target region. Cancelled through `cancel` (while copying or checking the
    /// copy), it fails as any failed replication does: the new record is `killed` and the copy
    /// removed.
    pub fn replicate(
        &self,
        scope: &Scope,
        id: &str,
        target_region: &str,
        name: Option<&str>,
        kms_key_id: Option<&str>,
        cancel: &CancelToken,
    ) -> Result<ImageRecord> {
        let src = self.usable(scope, id)?;
        rules::check_replication(&src, target_region, kms_key_id)?;
        let name = name.unwrap_or(&src.name);
        rules::check_name(name)?;
        let mut r = ImageRecord::new(name, &scope.project, target_region, src.image_type);
        let keep = r.clone();
        r = ImageRecord {
            id: keep.id.clone(),
            name: keep.name,
            owner: keep.owner,
            region: keep.region,
            visibility: Visibility::Private,
            status: Status::Queued,
            status_reason: None,
            store_key: super::store_key(target_region, &keep.id, &src.store_format),
            kms_key_id: kms_key_id.map(str::to_string),
            marketplace: false,
            copied_from: Some(src.id.clone()),
            created_at: keep.created_at,
            updated_at: keep.updated_at,
            ..src.clone()
        };
        // A write begun on the key and never written to: it says "a live process owns this
        // key" until the record is settled, so that recovery elsewhere leaves the copy alone.
        let owner = self.store.begin(&r.store_key)?;
        let limits = self.limits.clone();
        if let Err(e) = self
            .catalog
            .insert(&r, &|count| rules::check_quota(count, &limits))
        {
            owner.abort();
            return Err(e);
        }
        let result = (|| {
            self.catalog
                .transition(&r.id, &[Status::Queued], Status::Saving, None)?;
            r.store_size = self.store.copy(&src.store_key, &r.store_key, cancel)?;
            let sum = hash_storage(&*self.store.open(&r.store_key)?, cancel)?;
            if sum.sha256 != src.checksum.sha256 {
                return Err(Error::malformed(
                    "stored image",
                    0,
                    format!("the copy of {} does not match its checksum", src.id),
                )
                .into());
            }
            cancel.check()?;
            r.status = Status::Active;
            r.updated_at = now();
            self.catalog.update(&r)
        })();
        match result {
            Ok(()) => {
                drop(owner);
                Ok(r)
            }
            Err(e) => {
                self.settle_failed(&r, &e.to_string());
                owner.abort();
                Err(e)
            }
        }
    }

    /// An active image `scope` may use: its own, public, or shared with it and accepted.
    fn usable(&self, scope: &Scope, id: &str) -> Result<ImageRecord> {
        let r = self.show(scope, id)?;
        if !self.may_see(&r, &scope.project, true)? {
            return Err(ServiceError::rule(
                RuleCode::ImageNotFound,
                format!(
                    "image {id} is shared with project {} but not accepted; accept it first",
                    scope.project
                ),
            ));
        }
        rules::check_active(&r)?;
        Ok(r)
    }

    /// Exports image `id` as a disk for a server: `format` at `out`, of `size` bytes (default:
    /// min_disk or the image's size, whichever is larger — never below them), bytes past the
    /// image reading as zeros. A failed or cancelled (`cancel`) export leaves no file at `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn export(
        &self,
        scope: &Scope,
        id: &str,
        format: Format,
        out: &Path,
        size: Option<u64>,
        options: &CreateOptions,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<ImageRecord> {
        let r = self.usable(scope, id)?;
        let size = size.unwrap_or(r.virtual_size);
        if size != r.virtual_size {
            rules::check_export_size(&r, size)?;
        }
        let stored: Format = r.store_format.parse()?;
        let image = crate::open_storage(
            self.store.open(&r.store_key)?,
            Path::new(&r.store_key),
            &OpenOptions {
                format: Some(stored),
                ..Default::default()
            },
        )?;
        // The stored disk may be larger than the image (ZVHD2 reports its size rounded up to a
        // GiB); the export is cut or grown to the size asked for.
        let source = if size != image.virtual_size() {
            let inner = image.reader().ok_or_else(|| {
                Error::unsupported(format!("{stored} images cannot be resized on export"))
            })?;
            Source::Random(Arc::new(Resized { inner, size }))
        } else {
            image.into_source()
        };
        // The writer removes its output when the conversion fails.
        let writer = crate::create(format, Target::File(out.to_path_buf()), size, options)?;
        let pipeline = PipelineOptions {
            cancel: cancel.clone(),
            ..Default::default()
        };
        crate::convert::run(source, writer, &pipeline, progress)?;
        Ok(r)
    }
}
