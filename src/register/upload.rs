//! Images whose data comes after the record, as the OpenStack Image API makes them: a record is
//! created `queued` with no data ([`Ims::create_empty`]); then either the data is uploaded and
//! kept as it is, in its declared format, once ims's safety inspection passes
//! ([`Ims::upload_as_is`], Glance's `PUT .../file`), or an image is imported into it and
//! converted into a store format as registration does ([`Ims::register_into`], Glance's
//! `import`).
//!
//! Either way the record is claimed (`queued` → `saving`, so a second upload gets
//! `image_not_active`) only after the store's write is begun, so recovery never sees it
//! without a live write; a refusal or a failure makes it `killed` and removes the data,
//! before it is ever `active`. A `queued` record without data is left alone by recovery: it
//! waits for its upload, however long.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::cancel::CancelToken;
use crate::error::Error;
use crate::formats::Format;
use crate::inspect::ImageKind;
use crate::io::AppendSink;
use crate::open::Input;
use crate::{OpenOptions, Progress};

use super::error::{Result, RuleCode, ServiceError};
use super::hash::{Hashes, HashingSink};
use super::record::{ImageRecord, ImageType, Status, Visibility, now};
use super::register::{RegisterRequest, SharedWriter, describe, set_disk};
use super::tag::{Tag, tag_map};
use super::{Ims, Scope, rules};

/// A record without data, as [`Ims::create_empty`] makes it.
#[derive(Debug, Clone, Default)]
pub struct NewImage {
    /// The id to give it (a UUID), or a fresh one.
    pub id: Option<String>,
    /// The name; may be empty (the OpenStack Image API allows a nameless image).
    pub name: String,
    /// The format the data will be uploaded in (needed before an upload, not an import).
    pub disk_format: Option<Format>,
    /// `private` (default), `shared` or, for an operator only, `public`.
    pub visibility: Option<Visibility>,
    /// Only an operator or the owner may change or delete it; an operator's image only.
    pub protected: bool,
    /// GiB (0: decided from the data).
    pub min_disk: u64,
    /// MiB.
    pub min_ram: u64,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Properties ims gives no meaning to ([`ImageRecord::properties`]).
    pub properties: BTreeMap<String, String>,
}

/// What [`Ims::set_api_fields`] changes (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct ApiFields {
    /// The properties ims gives no meaning to, all of them.
    pub properties: Option<BTreeMap<String, String>>,
    /// The declared format (only while no data is stored, or unchanged).
    pub disk_format: Option<Format>,
    /// `private` or `shared`.
    pub visibility: Option<Visibility>,
    /// Protected (an operator only).
    pub protected: Option<bool>,
}

/// Appends all of `data` to `sink`, refusing it once it is past the file-size limit, and
/// returns its length; `what` is a read error's action ("read the upload").
pub(crate) fn append_within_limits(
    data: &mut dyn Read,
    sink: &mut dyn AppendSink,
    limits: &rules::Limits,
    cancel: &CancelToken,
    what: &'static str,
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        cancel.check()?;
        let n = match data.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(what, e).into()),
        };
        total = total.saturating_add(n as u64);
        rules::check_sizes(total, 0, limits)?;
        sink.append(buf.get(..n).unwrap_or_default())?;
    }
}

/// Whether `r` is a record waiting for its data: `queued`, nothing stored.
pub fn awaits_data(r: &ImageRecord) -> bool {
    r.status == Status::Queued && r.store_keys().is_empty()
}

/// The refusal of an upload to a record that is not waiting for data.
fn not_queued(r: &ImageRecord) -> ServiceError {
    ServiceError::rule(
        RuleCode::ImageNotActive,
        format!(
            "image {} is {}: data is uploaded once, to a queued image",
            r.id, r.status
        ),
    )
}

impl Ims {
    /// Makes a `queued` record of `scope` without data (see the module doc), after the rules
    /// that need no data: the name (when given), tags, `min_ram`, `min_disk` (1 to 1024 when
    /// given), the quota, and operator rights for a public or protected image.
    pub fn create_empty(&self, scope: &Scope, new: &NewImage) -> Result<ImageRecord> {
        if !new.name.is_empty() {
            rules::check_name(&new.name)?;
        }
        let tags = tag_map(&new.tags)?;
        rules::check_min_ram(new.min_ram)?;
        if new.min_disk != 0 {
            rules::check_min_disk(new.min_disk, 0)?;
        }
        let visibility = new.visibility.unwrap_or(Visibility::Private);
        if visibility == Visibility::Public || new.protected {
            rules::check_operator(
                self.is_operator(scope),
                &scope.project,
                "make an image public or protected",
            )?;
        }
        let mut r = ImageRecord::new(&new.name, &scope.project, &scope.region, ImageType::Data);
        if let Some(id) = &new.id {
            let parsed = uuid::Uuid::parse_str(id)
                .map_err(|_| Error::InvalidArgument(format!("image id '{id}' is not a UUID")))?;
            r.id = parsed.hyphenated().to_string();
        }
        r.visibility = visibility;
        r.protected = new.protected;
        r.min_disk = u32::try_from(new.min_disk).unwrap_or(u32::MAX);
        r.min_ram = u32::try_from(new.min_ram).unwrap_or(u32::MAX);
        r.tags = tags;
        r.properties = new.properties.clone();
        if let Some(f) = new.disk_format {
            r.source_format = f.name().into();
            r.store_format = f.name().into();
        }
        if self.catalog.get(&r.id)?.is_some() {
            return Err(Error::InvalidArgument(format!("image id {} is taken", r.id)).into());
        }
        let limits = self.limits.clone();
        let counts = r.counts_for_quota();
        self.catalog.insert(&r, &|count| {
            if counts {
                rules::check_quota(count, &limits)
            } else {
                Ok(())
            }
        })?;
        Ok(r)
    }

    /// Changes what the OpenStack Image API may change beyond a
    /// [`RecordUpdate`](super::RecordUpdate): the properties ims gives no meaning to, the declared format of a
    /// record still waiting for its data, `private` ↔ `shared` (back to `private` only without
    /// members), and `protected` (an operator only). The owner's call, or an operator's for a
    /// protected image.
    pub fn set_api_fields(&self, scope: &Scope, id: &str, f: &ApiFields) -> Result<ImageRecord> {
        let mut r = self.show(scope, id)?;
        self.check_may_change(&r, scope)?;
        if let Some(format) = f.disk_format {
            if !awaits_data(&r) && r.store_format != format.name() {
                return Err(ServiceError::rule(
                    RuleCode::FieldImmutable,
                    format!("image {id} has its data; its format is {}", r.store_format),
                ));
            }
            r.source_format = format.name().into();
            r.store_format = format.name().into();
        }
        if let Some(v) = f.visibility.filter(|&v| v != r.visibility) {
            match (r.visibility, v) {
                (Visibility::Private, Visibility::Shared) => {}
                (Visibility::Shared, Visibility::Private) => {
                    if !self.catalog.members(id)?.is_empty() {
                        return Err(ServiceError::rule(
                            RuleCode::ImageNotActive,
                            format!("image {id} has members: remove them before making it private"),
                        ));
                    }
                }
                (from, to) => {
                    return Err(Error::InvalidArgument(format!(
                        "image {id} goes from {from} to {to} by publishing or withdrawing it"
                    ))
                    .into());
                }
            }
            r.visibility = v;
        }
        if let Some(p) = f.protected.filter(|&p| p != r.protected) {
            rules::check_operator(self.is_operator(scope), &scope.project, "protect an image")?;
            r.protected = p;
        }
        if let Some(properties) = &f.properties {
            r.properties = properties.clone();
        }
        r.updated_at = now();
        self.catalog.update(&r)?;
        Ok(r)
    }

    /// Whether the record `id` exists and waits for its data, whoever owns it: for a server's
    /// housekeeping (its staged data of images that no longer wait is dropped at start).
    pub fn awaits_data(&self, id: &str) -> Result<bool> {
        Ok(self.catalog.get(id)?.is_some_and(|r| awaits_data(&r)))
    }

    /// Ends a record that waits for its data as `killed` with `reason` (an import whose
    /// source failed before any data was stored); the owner's call. Nothing happens to a
    /// record that is no longer waiting.
    pub fn kill_waiting(&self, scope: &Scope, id: &str, reason: &str) -> Result<()> {
        let r = self.show(scope, id)?;
        rules::check_owner(&r, &scope.project)?;
        if awaits_data(&r) {
            self.settle_failed(&r, reason);
        }
        Ok(())
    }

    /// Begins the store's write of `key` for the queued record `r` and claims the record
    /// (`queued` → `saving`, the key recorded); a record no longer queued is refused.
    fn claim(&self, r: &mut ImageRecord, key: String) -> Result<SharedWriter> {
        let writer = self.store.begin(&key)?;
        if !self
            .catalog
            .transition(&r.id, &[Status::Queued], Status::Saving, None)?
        {
            writer.abort();
            return Err(not_queued(r));
        }
        r.status = Status::Saving;
        r.store_key = key;
        r.updated_at = now();
        self.catalog.update(r)?;
        Ok(Arc::new(Mutex::new(writer)))
    }

    /// Stores `data` as it is, in the record's declared format, then inspects the stored
    /// bytes: the probe must find that format; the image must open with the strict policy (no
    /// reference to another file), pass its consistency checks and guest inspection, and fit
    /// the size limits. Then the record is `active`, its `checksum` (MD5, SHA-256, SHA-512),
    /// sizes and OS facts those of the stored bytes, its type what inspection found (`system`
    /// with an OS, `iso`, else `data`). A refusal or failure kills it and removes the data.
    /// At most the file-size limit is read; `size`, when the client declared it, must match.
    pub fn upload_as_is(
        &self,
        scope: &Scope,
        id: &str,
        data: &mut dyn Read,
        size: Option<u64>,
        cancel: &CancelToken,
    ) -> Result<ImageRecord> {
        let mut r = self.show(scope, id)?;
        self.check_may_change(&r, scope)?;
        if !awaits_data(&r) {
            return Err(not_queued(&r));
        }
        let Ok(format) = r.store_format.parse::<Format>() else {
            return Err(Error::InvalidArgument(format!(
                "image {id} has no disk_format: set it before uploading data"
            ))
            .into());
        };
        if let Some(n) = size {
            rules::check_sizes(n, 0, &self.limits)?;
        }
        let key = super::store_key(&r.region, &r.id, format);
        let writer = self.claim(&mut r, key)?;
        match self.store_as_is(&mut r, &writer, format, data, size, cancel) {
            Ok(()) => {
                drop(writer);
                Ok(r)
            }
            Err(e) => {
                self.settle_failed(&r, &e.to_string());
                drop(writer);
                Err(e)
            }
        }
    }

    fn store_as_is(
        &self,
        r: &mut ImageRecord,
        writer: &SharedWriter,
        format: Format,
        data: &mut dyn Read,
        size: Option<u64>,
        cancel: &CancelToken,
    ) -> Result<()> {
        let hashes = Hashes::default();
        let mut sink = HashingSink {
            inner: super::register::SharedSink(writer.clone()),
            hashes: hashes.clone(),
            on_append: Box::new(|_| {}),
        };
        let total = append_within_limits(data, &mut sink, &self.limits, cancel, "read the upload")?;
        if let Some(want) = size.filter(|&want| want != total) {
            return Err(Error::InvalidArgument(format!(
                "the upload is {total} bytes; {want} were declared"
            ))
            .into());
        }
        sink.finish()?;
        let checksum = hashes.finish();
        let stored_size = super::register::lock(writer).commit()?;

        // The safety inspection, on the stored bytes: what the probe finds, opened strictly.
        let stored = self.store.open(&r.store_key)?;
        let image = crate::open_storage(stored, Path::new(&r.store_key), &OpenOptions::default())
            .map_err(rules::open_refusal)?;
        if image.format() != format {
            return Err(ServiceError::rule(
                RuleCode::FormatUnsupported,
                format!(
                    "the data is {}, not the image's disk_format {format}",
                    image.format()
                ),
            ));
        }
        let virtual_size = image.virtual_size();
        rules::check_sizes(stored_size, virtual_size, &self.limits)?;
        let found = crate::inspect::inspect_image(&image).map_err(rules::open_refusal)?;
        cancel.check()?;

        r.image_type = match found.image_kind {
            ImageKind::System => ImageType::System,
            ImageKind::Iso => ImageType::Iso,
            _ => ImageType::Data,
        };
        let given = r.properties.get("__os_version").cloned();
        describe(r, &found, given.as_deref());
        r.source_size = total;
        r.store_size = stored_size;
        r.virtual_size = virtual_size;
        r.checksum = checksum;
        let need = rules::default_min_disk(virtual_size);
        r.min_disk = r.min_disk.max(u32::try_from(need).unwrap_or(u32::MAX));
        r.status = Status::Active;
        r.updated_at = now();
        self.catalog.update(r)
    }

    /// Registers `input` into the queued record `id` (see the module doc): opened strictly,
    /// inspected and checked as [`Ims::register`] does (as an `iso` when the record declares
    /// that format, otherwise as a data disk that becomes a `system` image when inspection
    /// finds an OS), converted into `store_format` while hashing; the record then describes
    /// the stored bytes (`disk_format` is the store format).
    pub fn register_into(
        &self,
        scope: &Scope,
        id: &str,
        input: Input,
        store_format: Format,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<ImageRecord> {
        self.register_into_then(scope, id, input, store_format, progress, cancel, &mut || {})
    }

    /// [`Ims::register_into`], calling `on_saved` once the data is stored and before the record
    /// becomes `active` (an import drops its staged data there: an active image has none).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register_into_then(
        &self,
        scope: &Scope,
        id: &str,
        input: Input,
        store_format: Format,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
        on_saved: &mut dyn FnMut(),
    ) -> Result<ImageRecord> {
        let mut r = self.show(scope, id)?;
        self.check_may_change(&r, scope)?;
        if !awaits_data(&r) {
            return Err(not_queued(&r));
        }
        let role = if r.store_format == Format::Iso.name() {
            ImageType::Iso
        } else {
            ImageType::Data
        };
        let mut request =
            RegisterRequest::new(if r.name.is_empty() { "image" } else { &r.name }, role);
        request.store_format = store_format;
        request.min_disk = Some(u64::from(r.min_disk)).filter(|&n| n != 0);
        // IMS's name of the OS version a client may give (an ISO's).
        request.os_version = r.properties.get("__os_version").cloned();
        // A refusal kills the record too: an import always ends `active` or `killed`.
        let mut prepared = match self.prepare(input, role, &request, cancel) {
            Ok(p) => p,
            Err(e) => {
                self.settle_failed(&r, &e.to_string());
                return Err(e);
            }
        };
        let key = super::store_key(&r.region, &r.id, store_format);
        prepared.disk.store_key = key.clone();
        let writer = self.claim(&mut r, key)?;
        let saved = self.save_disk(&mut prepared, &writer, &request, 1, progress, cancel);
        let found = match saved {
            Ok(found) => found.or(prepared.found.take()),
            Err(e) => {
                let e = self.over_limit(&prepared.streamed, e);
                self.settle_failed(&r, &e.to_string());
                drop(writer);
                return Err(e);
            }
        };
        set_disk(&mut r, &prepared.disk);
        if let Some(found) = &found {
            describe(&mut r, found, request.os_version.as_deref());
            if role == ImageType::Data && found.image_kind == ImageKind::System {
                r.image_type = ImageType::System;
            }
        }
        r.image_type = if role == ImageType::Iso {
            ImageType::Iso
        } else {
            r.image_type
        };
        on_saved();
        r.status = Status::Active;
        r.staged_size = None;
        r.updated_at = now();
        if let Err(e) = self.catalog.update(&r) {
            self.settle_failed(&r, &e.to_string());
            drop(writer);
            return Err(e);
        }
        drop(writer);
        Ok(r)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::register::hash::hex;
    use md5::Digest as _;

    fn service() -> (tempfile::TempDir, Ims) {
        let dir = tempfile::tempdir().unwrap();
        let ims = Ims::open(dir.path()).unwrap();
        (dir, ims)
    }

    fn code<T: std::fmt::Debug>(r: Result<T>) -> RuleCode {
        r.unwrap_err().code().expect("a rule's refusal")
    }

    fn raw_disk() -> Vec<u8> {
        (0..1u32 << 20).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn an_upload_is_stored_as_it_is_and_described_by_its_own_bytes() {
        let (_dir, ims) = service();
        let scope = Scope::new("p1", "r1");
        let new = NewImage {
            name: "disk".into(),
            disk_format: Some(Format::Raw),
            ..Default::default()
        };
        let r = ims.create_empty(&scope, &new).unwrap();
        assert!(awaits_data(&r) && r.store_format == "raw");
        let data = raw_disk();
        let done = ims
            .upload_as_is(
                &scope,
                &r.id,
                &mut &data[..],
                Some(data.len() as u64),
                &CancelToken::new(),
            )
            .unwrap();
        assert_eq!(done.status, Status::Active);
        assert_eq!((done.store_size, done.virtual_size), (1 << 20, 1 << 20));
        assert_eq!(done.checksum.md5, hex(&md5::Md5::digest(&data)));
        assert_eq!(done.image_type, ImageType::Data);
        let stored = ims.stored(&done).unwrap();
        let mut back = vec![0u8; data.len()];
        crate::storage::read_exact_at(stored.as_ref(), &mut back, 0, "stored").unwrap();
        assert!(back == data);
        // Data goes once.
        let again = ims.upload_as_is(&scope, &r.id, &mut &data[..], None, &CancelToken::new());
        assert_eq!(code(again), RuleCode::ImageNotActive);
    }

    #[test]
    fn an_upload_that_is_not_its_format_or_is_too_large_is_killed_with_nothing_stored() {
        let (dir, mut ims) = service();
        let scope = Scope::new("p1", "r1");
        let qcow2 = NewImage {
            disk_format: Some(Format::Qcow2),
            ..Default::default()
        };
        let r = ims.create_empty(&scope, &qcow2).unwrap();
        let data = raw_disk();
        let e = ims.upload_as_is(&scope, &r.id, &mut &data[..], None, &CancelToken::new());
        assert!(e.is_err());
        let killed = ims.show(&scope, &r.id).unwrap();
        assert_eq!(killed.status, Status::Killed);
        assert!(killed.status_reason.is_some());

        let mut limits = ims.limits().clone();
        limits.max_file_size = 1000;
        ims.set_limits(limits);
        let raw = NewImage {
            disk_format: Some(Format::Raw),
            ..Default::default()
        };
        let r = ims.create_empty(&scope, &raw).unwrap();
        let e = ims.upload_as_is(&scope, &r.id, &mut &data[..], None, &CancelToken::new());
        assert_eq!(code(e), RuleCode::FileTooLarge);
        assert_eq!(ims.show(&scope, &r.id).unwrap().status, Status::Killed);
        fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    files(&e.path(), out);
                } else {
                    out.push(e.path());
                }
            }
        }
        let mut left = Vec::new();
        files(&dir.path().join("store"), &mut left);
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn records_waiting_for_data_survive_recovery_and_follow_the_rules() {
        let (dir, ims) = service();
        let scope = Scope::new("p1", "r1");
        let r = ims.create_empty(&scope, &NewImage::default()).unwrap();
        drop(ims);
        let ims = Ims::open(dir.path()).unwrap();
        assert!(awaits_data(&ims.show(&scope, &r.id).unwrap()));
        // No data format: nothing to upload against.
        let e = ims.upload_as_is(&scope, &r.id, &mut &b"x"[..], None, &CancelToken::new());
        assert!(e.is_err());
        assert!(awaits_data(&ims.show(&scope, &r.id).unwrap()));
        // Public or protected: operators only; ids are UUIDs and unique.
        let public = NewImage {
            visibility: Some(Visibility::Public),
            ..Default::default()
        };
        assert_eq!(
            code(ims.create_empty(&scope, &public)),
            RuleCode::NotOperator
        );
        assert!(ims.create_empty(&scope.clone().operator(), &public).is_ok());
        let bad_id = NewImage {
            id: Some("not-a-uuid".into()),
            ..Default::default()
        };
        assert!(ims.create_empty(&scope, &bad_id).is_err());
        let same_id = NewImage {
            id: Some(r.id.clone()),
            ..Default::default()
        };
        assert!(ims.create_empty(&scope, &same_id).is_err());
        // Another project neither sees nor fills it.
        let other = Scope::new("p2", "r1");
        let e = ims.upload_as_is(&other, &r.id, &mut &b"x"[..], None, &CancelToken::new());
        assert_eq!(code(e), RuleCode::ImageNotFound);
        // Back to private only without members; the declared format changes while it waits.
        let f = ApiFields {
            disk_format: Some(Format::Vmdk),
            visibility: Some(Visibility::Shared),
            ..Default::default()
        };
        let changed = ims.set_api_fields(&scope, &r.id, &f).unwrap();
        assert_eq!(
            (changed.store_format.as_str(), changed.visibility),
            ("vmdk", Visibility::Shared)
        );
        ims.kill_waiting(&scope, &r.id, "source gone").unwrap();
        assert_eq!(ims.show(&scope, &r.id).unwrap().status, Status::Killed);
    }

    #[test]
    fn a_deactivated_image_is_listed_but_not_copied_until_reactivated() {
        let (_dir, ims) = service();
        let scope = Scope::new("p1", "r1");
        let new = NewImage {
            name: "withheld".into(),
            disk_format: Some(Format::Raw),
            ..Default::default()
        };
        let r = ims.create_empty(&scope, &new).unwrap();
        let disk = raw_disk();
        let cancel = CancelToken::new();
        ims.upload_as_is(&scope, &r.id, &mut &disk[..], None, &cancel)
            .unwrap();
        let other = Scope::new("p2", "r1");
        assert_eq!(
            code(ims.set_deactivated(&other, &r.id, true)),
            RuleCode::ImageNotFound
        );
        let off = ims.set_deactivated(&scope, &r.id, true).unwrap();
        assert_eq!(off.status, Status::Deactivated);
        assert_eq!(
            ims.set_deactivated(&scope, &r.id, true).unwrap().status,
            Status::Deactivated
        );
        let listed = ims
            .list(&scope, &super::super::ListQuery::default())
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            code(ims.copy(&scope, &r.id, None, &cancel)),
            RuleCode::ImageNotActive
        );
        let on = ims.set_deactivated(&scope, &r.id, false).unwrap();
        assert_eq!(on.status, Status::Active);
        let copied = ims.copy(&scope, &r.id, None, &cancel);
        assert!(copied.is_ok(), "{copied:?}");
        // A queued image is neither; a deactivated one is deleted like any other.
        let queued = ims.create_empty(&scope, &NewImage::default()).unwrap();
        assert_eq!(
            code(ims.set_deactivated(&scope, &queued.id, true)),
            RuleCode::ImageNotActive
        );
        ims.set_deactivated(&scope, &r.id, true).unwrap();
        ims.delete(&scope, &r.id).unwrap();
    }
}
