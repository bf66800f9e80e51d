//! Registrations of several disks, all or nothing: a full-ECS image (one record listing each
//! disk) and a system image with its data-disk images (one record each).
//!
//! Every disk has been opened, inspected and checked before this runs (a refusal writes
//! nothing). Then: a store write is begun for every disk (before any record exists, so that
//! recovery never sees a record without its live writes) → the records are inserted together,
//! the quota checked for all of them in the same transaction → `saving` → each disk in turn
//! is converted, hashed and committed, its writer kept → the records become `active` in one
//! transaction → the writers are dropped. A failure or a cancellation on any disk kills every
//! record of the call and removes every disk stored so far; a process killed at any point
//! leaves writes that no live process owns, and [`Ims::recover`] kills the records and removes
//! the disks (it takes a record of several disks as live while any of its writes is).

use std::sync::{Arc, Mutex};

use crate::Progress;
use crate::cancel::CancelToken;

use super::error::Result;
use super::record::{ImageRecord, ImageType, Status, now};
use super::register::{
    Prepared, RegisterRequest, Registered, SharedWriter, crash_point, describe, set_disk,
};
use super::{Ims, rules};

/// One disk of a registration: which record it belongs to (an index into the records of the
/// call; a record's first disk gives it its own fields), the disk, and its request.
pub(crate) struct Unit {
    /// The index of its record.
    pub(crate) record: usize,
    /// The disk, checked and ready.
    pub(crate) prepared: Prepared,
    /// Its request (store format, threads, the OS version to record, the boot checks).
    pub(crate) request: RegisterRequest,
}

/// The key of disk `n` of `record` (its first disk has the record's own key, `REGION/ID.FMT`;
/// data disk N is `REGION/ID.dataN.FMT`, so the key still names the image).
pub(crate) fn disk_key(record: &ImageRecord, n: usize, format: &str) -> String {
    if n == 0 {
        super::store_key(&record.region, &record.id, format)
    } else {
        super::store_key(&record.region, &record.id, format!("data{n}.{format}"))
    }
}

impl Ims {
    /// Stores `units` for `records` (see the module doc) and returns the records, `active`,
    /// with their warnings, in the order given.
    pub(crate) fn store_group(
        &self,
        mut records: Vec<ImageRecord>,
        mut units: Vec<Unit>,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<Vec<Registered>> {
        // Keys: a record's disks in order; a full-ECS record lists them all.
        let mut next = vec![0usize; records.len()];
        for u in &mut units {
            let (r, n) = match (records.get(u.record), next.get_mut(u.record)) {
                (Some(r), Some(n)) => (r, n),
                _ => return Err(crate::Error::internal("a disk of no record").into()),
            };
            u.prepared.disk.store_key = disk_key(r, *n, &u.prepared.disk.store_format);
            *n += 1;
        }
        for (i, r) in records.iter_mut().enumerate() {
            let disks: Vec<_> = units
                .iter()
                .filter(|u| u.record == i)
                .map(|u| u.prepared.disk.clone())
                .collect();
            if let Some(first) = disks.first() {
                r.store_key = first.store_key.clone();
            }
            if r.image_type == ImageType::FullEcs {
                r.disks = disks;
            }
        }

        // Begun before the records exist, kept until they are settled.
        let writers: Vec<SharedWriter> = units
            .iter()
            .map(|u| {
                let w = self.store.begin(&u.prepared.disk.store_key)?;
                Ok(Arc::new(Mutex::new(w)))
            })
            .collect::<crate::Result<_>>()?;
        let limits = self.limits.clone();
        let adding = records.len() as u64;
        self.catalog.insert_all(&records, &|count| {
            rules::check_quota_for(count, adding, &limits)
        })?;
        crash_point("after-insert");

        let result = self.save_group(&mut records, &mut units, &writers, progress, cancel);
        match result {
            Ok(()) => {
                drop(writers);
                Ok(records
                    .into_iter()
                    .enumerate()
                    .map(|(i, record)| Registered {
                        record,
                        warnings: units
                            .iter_mut()
                            .filter(|u| u.record == i)
                            .flat_map(|u| std::mem::take(&mut u.prepared.warnings))
                            .collect(),
                    })
                    .collect())
            }
            Err(e) => {
                for r in &records {
                    self.settle_failed(r, &e.to_string());
                }
                drop(writers);
                Err(e)
            }
        }
    }

    /// `saving` → each disk stored and committed → `active`, all records in one transaction.
    fn save_group(
        &self,
        records: &mut [ImageRecord],
        units: &mut [Unit],
        writers: &[SharedWriter],
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<()> {
        for r in records.iter_mut() {
            self.catalog
                .transition(&r.id, &[Status::Queued], Status::Saving, None)?;
            r.status = Status::Saving;
        }
        let total: u64 = units.iter().map(|u| u.prepared.stored_size).sum();
        let mut base = 0u64;
        let mut first_of = vec![true; records.len()];
        for (n, (u, w)) in units.iter_mut().zip(writers).enumerate() {
            let mut report = |p: Progress| {
                progress(Progress {
                    done: base.saturating_add(p.done),
                    total,
                })
            };
            let found = self
                .save_disk(&mut u.prepared, w, &u.request, n + 1, &mut report, cancel)
                .map_err(|e| self.over_limit(&u.prepared.streamed, e))?;
            base = base.saturating_add(u.prepared.stored_size);
            let (Some(r), Some(first)) = (records.get_mut(u.record), first_of.get_mut(u.record))
            else {
                return Err(crate::Error::internal("a disk of no record").into());
            };
            // A record's first disk gives it its own fields and, when it could only be
            // inspected once stored, its OS facts.
            if *first {
                *first = false;
                set_disk(r, &u.prepared.disk);
                if let Some(found) = &found {
                    describe(r, found, u.request.os_version.as_deref());
                }
            }
            if let Some(d) = r
                .disks
                .iter_mut()
                .find(|d| d.store_key == u.prepared.disk.store_key)
            {
                *d = u.prepared.disk.clone();
            }
        }
        let t = now();
        for r in records.iter_mut() {
            r.status = Status::Active;
            r.updated_at = t.clone();
        }
        self.catalog.update_all(records)
    }
}
