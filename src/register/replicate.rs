//! Copies of an image: to another region (replication: a new record with its own id and
//! status flow, the data copied byte for byte into that region's store), and out of the
//! service (export: a disk for a server, in the format and size asked for).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cancel::CancelToken;
use crate::convert::Source;
use crate::error::Error;
use crate::formats::Format;
use crate::{CreateOptions, OpenOptions, PipelineOptions, Progress, Target};

use super::error::{Result, RuleCode, ServiceError};
use super::group::disk_key;
use super::hash::hash_storage;
use super::record::{Disk, ImageRecord, ImageType, Status, Visibility, now};
use super::resized::Resized;
use super::{Ims, Scope, rules};

impl Ims {
    /// Replicates image `id` (owned by `scope.project`, or shared with it and accepted) into
    /// `target_region`, owned by `scope.project` there. An encrypted image needs `kms_key_id`,
    /// a key of the target region. Cancelled through `cancel` (while copying or checking the
    /// copy), it fails as any failed replication does: the new record is `killed` and the copy
    /// removed. A full-ECS image is replicated with all its disks.
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
        self.copy_record(
            scope,
            &src,
            target_region,
            name,
            kms_key_id.map(str::to_string),
            cancel,
        )
    }

    /// Copies image `id` within the region into a private image of `scope.project` (IMS's
    /// in-region copy): any image the project may use (its own, public, on the marketplace, or
    /// shared with it and accepted), except a full-ECS image. The copy has its own id, data
    /// and life: it stays when the original is withdrawn or deleted. It counts against the
    /// project's quota; an encrypted image stays encrypted with its key.
    pub fn copy(
        &self,
        scope: &Scope,
        id: &str,
        name: Option<&str>,
        cancel: &CancelToken,
    ) -> Result<ImageRecord> {
        let src = self.usable(scope, id)?;
        rules::check_copy_in_region(&src)?;
        let key = src.kms_key_id.clone();
        self.copy_record(scope, &src, &scope.region, name, key, cancel)
    }

    /// A new record of `scope.project` in `region` with a byte-for-byte copy of each of
    /// `src`'s stored disks (checked against its SHA-256).
    fn copy_record(
        &self,
        scope: &Scope,
        src: &ImageRecord,
        region: &str,
        name: Option<&str>,
        kms_key_id: Option<String>,
        cancel: &CancelToken,
    ) -> Result<ImageRecord> {
        let name = name.unwrap_or(&src.name);
        rules::check_name(name)?;
        let keep = ImageRecord::new(name, &scope.project, region, src.image_type);
        let mut r = ImageRecord {
            id: keep.id.clone(),
            name: keep.name.clone(),
            owner: keep.owner.clone(),
            region: keep.region.clone(),
            visibility: Visibility::Private,
            status: Status::Queued,
            status_reason: None,
            store_key: disk_key(&keep, 0, &src.store_format),
            kms_key_id,
            data_images: Vec::new(),
            protected: false,
            marketplace: false,
            publisher: None,
            price_note: None,
            copied_from: Some(src.id.clone()),
            staged_size: None,
            created_at: keep.created_at.clone(),
            updated_at: keep.updated_at.clone(),
            ..src.clone()
        };
        r.disks = src
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| Disk {
                store_key: disk_key(&keep, i, &d.store_format),
                ..d.clone()
            })
            .collect();
        // (from, to, the SHA-256 the copy must have), one per stored disk.
        let copies: Vec<(String, String, String)> = if src.disks.is_empty() {
            vec![(
                src.store_key.clone(),
                r.store_key.clone(),
                src.checksum.sha256.clone(),
            )]
        } else {
            src.disks
                .iter()
                .zip(&r.disks)
                .map(|(from, to)| {
                    (
                        from.store_key.clone(),
                        to.store_key.clone(),
                        from.checksum.sha256.clone(),
                    )
                })
                .collect()
        };
        // Writes begun on the keys and never written to: they say "a live process owns these
        // keys" until the record is settled, so that recovery elsewhere leaves the copies alone.
        let owners = copies
            .iter()
            .map(|(_, to, _)| self.store.begin(to))
            .collect::<crate::Result<Vec<_>>>()?;
        let limits = self.limits.clone();
        if let Err(e) = self
            .catalog
            .insert(&r, &|count| rules::check_quota(count, &limits))
        {
            owners.into_iter().for_each(|o| o.abort());
            return Err(e);
        }
        let result = (|| {
            self.catalog
                .transition(&r.id, &[Status::Queued], Status::Saving, None)?;
            for (i, (from, to, sha256)) in copies.iter().enumerate() {
                let size = self.store.copy(from, to, cancel)?;
                let sum = hash_storage(&*self.store.open(to)?, cancel)?;
                if &sum.sha256 != sha256 {
                    return Err(Error::malformed(
                        "stored image",
                        0,
                        format!("the copy of {from} does not match its checksum"),
                    )
                    .into());
                }
                if i == 0 {
                    r.store_size = size;
                }
                if let Some(d) = r.disks.get_mut(i) {
                    d.store_size = size;
                }
            }
            cancel.check()?;
            r.status = Status::Active;
            r.updated_at = now();
            self.catalog.update(&r)
        })();
        match result {
            Ok(()) => {
                drop(owners);
                Ok(r)
            }
            Err(e) => {
                self.settle_failed(&r, &e.to_string());
                owners.into_iter().for_each(|o| o.abort());
                Err(e)
            }
        }
    }

    /// An active image `scope` may use: its own, public, or shared with it and accepted.
    pub(crate) fn usable(&self, scope: &Scope, id: &str) -> Result<ImageRecord> {
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
    /// the image's size; never below min_disk nor the image), bytes past the image reading as
    /// zeros. A full-ECS image is exported as one file per disk, named by [`export_paths`]
    /// (`size` applies to its system disk; each data disk keeps its own size). A failed or
    /// cancelled (`cancel`) export leaves none of its files.
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
        // (key, stored format, size of the exported disk), system disk first.
        let disks: Vec<(&str, &str, u64)> = if r.disks.is_empty() {
            vec![(&r.store_key, &r.store_format, size)]
        } else {
            r.disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let size = if i == 0 { size } else { d.virtual_size };
                    (d.store_key.as_str(), d.store_format.as_str(), size)
                })
                .collect()
        };
        let paths = export_paths(&r, out);
        for (i, ((key, stored, size), path)) in disks.iter().zip(&paths).enumerate() {
            let done =
                self.export_disk(key, stored, *size, format, path, options, progress, cancel);
            if let Err(e) = done {
                for p in paths.iter().take(i) {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        }
        Ok(r)
    }

    /// One stored disk (`key`, stored as `stored`) exported as `format` at `out`, `size`
    /// bytes; a failure leaves no file at `out`.
    #[allow(clippy::too_many_arguments)]
    fn export_disk(
        &self,
        key: &str,
        stored: &str,
        size: u64,
        format: Format,
        out: &Path,
        options: &CreateOptions,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<()> {
        let stored: Format = stored.parse()?;
        let image = crate::open_storage(
            self.store.open(key)?,
            Path::new(key),
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
        Ok(())
    }
}

/// The files [`Ims::export`] writes for `record` at `out`: `out` itself for the image (a
/// full-ECS image's system disk), then for data disk N of a full-ECS image `out`'s name with
/// `-dataN` before its extension (`server.qcow2`, `server-data1.qcow2`, `server-data2.qcow2`).
pub fn export_paths(record: &ImageRecord, out: &Path) -> Vec<PathBuf> {
    let data_disks = if record.image_type == ImageType::FullEcs {
        record.disks.len().saturating_sub(1)
    } else {
        0
    };
    let mut paths = vec![out.to_path_buf()];
    for n in 1..=data_disks {
        let mut name = out.file_stem().map(OsString::from).unwrap_or_default();
        name.push(format!("-data{n}"));
        if let Some(ext) = out.extension() {
            name.push(".");
            name.push(ext);
        }
        paths.push(out.with_file_name(name));
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ecs_export_names_a_file_per_disk() {
        let mut r = ImageRecord::new("s", "o", "r1", ImageType::FullEcs);
        let disk = Disk {
            role: ImageType::Data,
            source_format: "raw".into(),
            source_size: 1,
            virtual_size: 1,
            min_disk: 1,
            store_format: "raw".into(),
            store_size: 1,
            store_key: String::new(),
            checksum: Default::default(),
        };
        r.disks = vec![disk.clone(), disk.clone(), disk];
        let paths = export_paths(&r, Path::new("/out/server.qcow2"));
        assert_eq!(
            paths,
            [
                PathBuf::from("/out/server.qcow2"),
                PathBuf::from("/out/server-data1.qcow2"),
                PathBuf::from("/out/server-data2.qcow2")
            ]
        );
        assert_eq!(
            export_paths(&r, Path::new("disk"))[2],
            PathBuf::from("disk-data2")
        );
        r.image_type = ImageType::System;
        assert_eq!(export_paths(&r, Path::new("a.raw")).len(), 1);
    }
}
