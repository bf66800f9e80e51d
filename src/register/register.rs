//! Registration: an uploaded image becomes an active private image.
//!
//! probe → open with the strict policy (no reference to another file is followed) → inspect
//! → validate ([`rules`]) → record `queued` (quota checked in the same
//! transaction) → `saving`: convert into the store format through the pipeline into a write of
//! the [`ImageStore`](super::ImageStore), hashing (SHA-256 and SHA-512) the stored bytes →
//! commit (durable, visible under its key) → `active`. A failure makes the record `killed` with
//! the reason and removes the data; a process killed at any point leaves a write that no live
//! process owns, which [`Ims::recover`] settles the same way.
//!
//! The image comes as an [`Input`]: a local file, a [`Storage`] the caller brings, or a stream
//! read once front to back (the formats that allow it; its length counts against the file-size
//! limit as it is read). A stream-only source (ZVHD, a stream) is inspected from the stored copy
//! after its commit, before it is recorded `active`.
//!
//! Several disks at once: a full-ECS image (a server's system disk and its data disks, one
//! record) and a system image with its data-disk images (one record each) are registered in
//! one call, all or nothing ([`Ims::register_full_ecs`], [`Ims::register_with_data_images`]:
//! every disk is checked before anything is written, the records are inserted in one
//! transaction and become `active` in one).
//!
//! Hashing: ZVHD2 and raw are written front to back, straight into the store's writer, hashed
//! as they are appended. QCOW2 is written with seeks (tables are patched at the end): into a
//! local spool file first (unlinked as soon as it is made, so no path leaves it behind; at
//! most the QCOW2 image of a disk the size limits allow), then appended into the store's writer
//! and hashed on the way.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::block::ExtentState;
use crate::cancel::CancelToken;
use crate::convert::Source;
use crate::error::Error;
use crate::formats::Format;
use crate::inspect::{Inspection, OsType};
use crate::io::AppendSink;
use crate::open::{Image, Input};
use crate::storage::{FileStorage, Storage, data_runs, read_exact_at};
use crate::{CreateOptions, OpenOptions, PipelineOptions, Progress, Target};

use super::error::{Result, ServiceError};
pub(crate) use super::group::Unit;
use super::hash::{Hashes, HashingSink};
use super::record::{Disk, Features, ImageRecord, ImageType, IsoMedium};
use super::resized::Resized;
use super::rules;
use super::store::StoreWriter;
use super::tag::{Tag, tag_map};
use super::{Ims, Scope};

/// What to register.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    /// The image's name (1 to 128 characters).
    pub name: String,
    /// A description (at most 1024 characters).
    pub description: String,
    /// What the image is: checked against what inspection finds.
    pub image_type: ImageType,
    /// Overrides the OS version inspection finds (as IMS's `--os-version`).
    pub os_version: Option<String>,
    /// `x86_64` or `aarch64`: checked against the guest.
    pub architecture: Option<String>,
    /// `bios` or `uefi`: checked against the guest.
    pub firmware: Option<String>,
    /// GiB; default: the disk's size rounded up.
    pub min_disk: Option<u64>,
    /// MiB.
    pub min_ram: u64,
    /// Tags; a later tag of a key replaces an earlier one, and at most 10 keys remain
    /// (`too_many_tags`).
    pub tags: Vec<Tag>,
    /// ZVHD2 (default), QCOW2 or raw.
    pub store_format: Format,
    /// Record the image as encrypted with this key.
    pub kms_key_id: Option<String>,
    /// Pipeline threads (0: one per core).
    pub threads: usize,
    /// For a full-ECS image: the CBR backup it was made from (IMS: `__backup_id`); only a
    /// full-ECS image made from a backup can be shared.
    pub backup_id: Option<String>,
}

impl RegisterRequest {
    /// A request for the image `name` of `image_type`, everything else by default.
    pub fn new(name: &str, image_type: ImageType) -> RegisterRequest {
        RegisterRequest {
            name: name.to_string(),
            description: String::new(),
            image_type,
            os_version: None,
            architecture: None,
            firmware: None,
            min_disk: None,
            min_ram: 0,
            tags: Vec::new(),
            store_format: Format::Zvhd2,
            kms_key_id: None,
            threads: 0,
            backup_id: None,
        }
    }
}

/// A registered image.
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    /// The image's record, `active`.
    #[serde(flatten)]
    pub record: ImageRecord,
    /// What was allowed but looks like a mistake.
    pub warnings: Vec<String>,
}

/// A system image registered together with its data-disk images
/// ([`Ims::register_with_data_images`]).
#[derive(Debug, Clone, Serialize)]
pub struct RegisteredGroup {
    /// The system image, `active`; its `data_images` lists the data-disk images' ids.
    pub system: Registered,
    /// The data-disk images, `active`, in the order given.
    pub data: Vec<Registered>,
}

/// Crash-test hook: with `IMS_TEST_CRASH_AT=POINT` in the environment the process aborts at
/// that point (`after-insert`, `mid-write`, `after-write`, `after-commit`; for disk N > 1 of
/// a registration of several disks, `mid-write-N`, `after-write-N`, `after-commit-N`), as a
/// kill would. Only with the `fault-injection` feature; otherwise it is nothing and the
/// variable is never read.
#[cfg(feature = "fault-injection")]
pub(crate) fn crash_point(point: &str) {
    if std::env::var("IMS_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        std::process::abort();
    }
}

/// The name of crash point `point` of disk `number` (counted from 1).
fn point_of(point: &str, number: usize) -> String {
    if number <= 1 {
        point.to_string()
    } else {
        format!("{point}-{number}")
    }
}

/// The `mid-write` crash point of disk `number`: after its first MiB is stored.
fn mid_write(position: u64, number: usize) {
    if position >= 1 << 20 {
        crash_point(&point_of("mid-write", number));
    }
}

/// Whether a crash point is set, so that the sink checks its position for `mid-write`.
#[cfg(feature = "fault-injection")]
fn crash_armed() -> bool {
    std::env::var_os("IMS_TEST_CRASH_AT").is_some()
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn crash_point(_point: &str) {}

#[cfg(not(feature = "fault-injection"))]
fn crash_armed() -> bool {
    false
}

/// The record's OS fields from what inspection found.
pub(crate) fn describe(record: &mut ImageRecord, found: &Inspection, os_version: Option<&str>) {
    record.os_type = match found.os_type {
        OsType::Linux => "Linux",
        OsType::Windows => "Windows",
        OsType::Unknown => "Other",
    }
    .into();
    record.platform = match found.distro.as_deref() {
        Some("ubuntu") => "Ubuntu",
        Some("debian") => "Debian",
        Some("centos") => "CentOS",
        Some("rhel") => "RedHat",
        Some("rocky") => "Rocky",
        Some("almalinux") => "AlmaLinux",
        Some("fedora") => "Fedora",
        Some("opensuse") | Some("opensuse-leap") => "OpenSUSE",
        Some("sles") => "SUSE",
        Some("openeuler") => "openEuler",
        Some("euleros") => "EulerOS",
        Some("alpine") => "Alpine",
        Some("windows") => "Windows",
        _ => "Other",
    }
    .into();
    record.architecture = found.arch.clone();
    record.os_bit = match found.arch.as_str() {
        "x86_64" | "aarch64" | "ppc64le" | "s390x" | "riscv64" => Some(64),
        "i386" | "i486" | "i586" | "i686" | "arm" | "armv7" => Some(32),
        _ => None,
    };
    record.firmware = rules::firmware_name(found.firmware).into();
    record.os_version = match os_version {
        Some(v) => v.to_string(),
        None if found.os_type == OsType::Unknown => String::new(),
        None => {
            let mut v = record.platform.clone();
            if let Some(ver) = &found.os_version {
                v.push(' ');
                v.push_str(ver);
            }
            if let Some(bit) = record.os_bit {
                v.push_str(&format!(" {bit}bit"));
            }
            v
        }
    };
    record.features = Features::from_inspection(found);
    record.iso = found.iso.as_ref().map(|i| IsoMedium {
        volume_label: i.volume_label.clone(),
        bios: i.bios,
        uefi: i.uefi,
        product_name: found.product_name.clone(),
    });
}

/// A store's writer shared between the pipeline's sink and the registration, which commits
/// it and keeps it until the record is settled.
pub(crate) type SharedWriter = Arc<Mutex<Box<dyn StoreWriter>>>;

pub(crate) fn lock(w: &SharedWriter) -> MutexGuard<'_, Box<dyn StoreWriter>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pipeline's end of a [`SharedWriter`].
pub(crate) struct SharedSink(pub(crate) SharedWriter);

impl AppendSink for SharedSink {
    fn append(&mut self, data: &[u8]) -> crate::Result<()> {
        lock(&self.0).append(data)
    }

    fn append_zeros(&mut self, len: u64) -> crate::Result<()> {
        lock(&self.0).append_zeros(len)
    }

    fn position(&self) -> u64 {
        lock(&self.0).position()
    }

    fn finish(&mut self) -> crate::Result<()> {
        lock(&self.0).finish()
    }
}

/// One disk ready to be stored: opened, checked, inspected where it could be
/// ([`Ims::prepare`]), its stored fields filled by [`Ims::save_disk`].
pub(crate) struct Prepared {
    /// What the disk is checked as: `system`, `data` or `iso`.
    pub(crate) role: ImageType,
    /// The data to store (taken when it is stored).
    source: Option<Source>,
    /// The size of the stored disk.
    pub(crate) stored_size: u64,
    /// What inspection found, where the source allowed it before storing.
    pub(crate) found: Option<Inspection>,
    /// What was allowed but looks like a mistake.
    pub(crate) warnings: Vec<String>,
    /// Bytes read from a stream upload.
    pub(crate) streamed: Arc<AtomicU64>,
    /// The disk's facts; `store_key` is set before it is stored.
    pub(crate) disk: Disk,
}

/// The checks of a request that need no image: name, description, tags, min_ram, the store
/// format, a backup id only for a full-ECS image. Returns the tags as the record keeps them.
pub(crate) fn check_request(request: &RegisterRequest) -> Result<BTreeMap<String, String>> {
    rules::check_name(&request.name)?;
    rules::check_description(&request.description)?;
    let tags = tag_map(&request.tags)?;
    rules::check_min_ram(request.min_ram)?;
    if !matches!(
        request.store_format,
        Format::Zvhd2 | Format::Qcow2 | Format::Raw
    ) {
        return Err(Error::InvalidArgument(format!(
            "images are stored as zvhd2, qcow2 or raw, not {}",
            request.store_format
        ))
        .into());
    }
    if request.backup_id.is_some() && request.image_type != ImageType::FullEcs {
        return Err(Error::InvalidArgument(
            "a backup id is recorded for a full-ECS image only".into(),
        )
        .into());
    }
    Ok(tags)
}

/// The queued record of a registration whose (first) disk is `prepared`.
pub(crate) fn new_record(
    scope: &Scope,
    request: &RegisterRequest,
    tags: BTreeMap<String, String>,
    prepared: &Prepared,
) -> ImageRecord {
    let mut record = ImageRecord::new(
        &request.name,
        &scope.project,
        &scope.region,
        request.image_type,
    );
    record.description = request.description.clone();
    record.tags = tags;
    record.min_ram = u32::try_from(request.min_ram).unwrap_or(u32::MAX);
    record.encrypted = request.kms_key_id.is_some();
    record.kms_key_id = request.kms_key_id.clone();
    record.backup_id = request.backup_id.clone();
    set_disk(&mut record, &prepared.disk);
    if let Some(found) = &prepared.found {
        describe(&mut record, found, request.os_version.as_deref());
    }
    record
}

/// The record's own disk fields from its (first) disk.
pub(crate) fn set_disk(record: &mut ImageRecord, disk: &Disk) {
    record.min_disk = disk.min_disk;
    record.source_format = disk.source_format.clone();
    record.source_size = disk.source_size;
    record.virtual_size = disk.virtual_size;
    record.store_format = disk.store_format.clone();
    record.store_size = disk.store_size;
    record.store_key = disk.store_key.clone();
    record.checksum = disk.checksum.clone();
}

/// A stream upload that counts what is read from it and fails once it is over the file-size
/// limit.
struct Counted {
    inner: Box<dyn std::io::Read + Send>,
    read: Arc<AtomicU64>,
    limit: u64,
}

impl std::io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > self.limit {
            return Err(std::io::Error::other(format!(
                "the upload is over the limit of {} bytes",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// A local file QCOW2 is written to before it goes to the store: made under a fresh name in
/// the spool directory and unlinked as soon as the writer has opened it, so that neither a
/// failure nor a crash leaves it behind (removed when dropped, before that).
struct Spool {
    path: Option<PathBuf>,
    file: File,
}

impl Spool {
    fn create(dir: &Path) -> crate::Result<Spool> {
        let (path, file) = crate::io::create_unique(dir, ".ims-spool-", ".qcow2")?;
        Ok(Spool {
            path: Some(path),
            file,
        })
    }

    /// Removes the name; the open files keep the data until they are closed.
    fn unlink(&mut self) -> crate::Result<()> {
        match self.path.take() {
            Some(p) => std::fs::remove_file(&p).map_err(|e| Error::io("remove", e).in_file(&p)),
            None => Ok(()),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.unlink();
    }
}

/// Tells `storage` which of its ranges a conversion of `reader` reads, in the order it reads
/// them: the image's map in disk order, a GiB of disk at a time (bounded memory), the stored
/// data only ([`Storage::will_read`]). Compressed units have no place in the map and are left
/// to the storage's own read-ahead.
fn announce_reads(
    reader: &dyn crate::BlockReader,
    storage: &dyn Storage,
    cancel: &CancelToken,
) -> crate::Result<()> {
    const STEP: u64 = 1 << 30;
    let size = reader.virtual_size();
    let mut at = 0u64;
    while at < size {
        cancel.check()?;
        let len = STEP.min(size - at);
        let ranges: Vec<std::ops::Range<u64>> = reader
            .map(at, len)?
            .iter()
            .filter(|e| e.state == ExtentState::Data)
            .filter_map(|e| {
                e.host_offset
                    .and_then(|h| Some(h..h.checked_add(e.length)?))
            })
            .collect();
        storage.will_read(&ranges);
        at += len;
    }
    Ok(())
}

impl Ims {
    /// Registers the image `input` (a path, an [`Input::Storage`] or an [`Input::Stream`]) as
    /// a private image of `scope` (see the module doc). An image that cannot be opened is
    /// refused with a rule's code ([`rules::open_refusal`]): a stream of a format that needs
    /// random access is `format_unsupported`. Cancelled through `cancel`, it fails with
    /// [`Error::Cancelled`] (in [`ServiceError::Image`]) as a failed registration does: a
    /// record already made is `killed`, and nothing is left in the store. A full-ECS image is
    /// registered with all its disks by [`Ims::register_full_ecs`].
    pub fn register(
        &self,
        scope: &Scope,
        input: impl Into<Input>,
        request: &RegisterRequest,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<Registered> {
        let tags = check_request(request)?;
        let prepared = self.prepare(input.into(), request.image_type, request, cancel)?;
        let records = vec![new_record(scope, request, tags, &prepared)];
        let units = vec![Unit {
            record: 0,
            prepared,
            request: request.clone(),
        }];
        let mut done = self.store_group(records, units, progress, cancel)?;
        done.pop()
            .ok_or_else(|| Error::internal("a registration made no record").into())
    }

    /// Registers a server's system disk `system` and its data disks `data_disks` as one
    /// full-ECS image (`request.image_type` is [`ImageType::FullEcs`]; `request.backup_id`
    /// names the CBR backup it came from, which makes it shareable). Each disk goes through
    /// the probe, the rules (the system disk as a system disk, each data disk as a data disk)
    /// and the conversion of [`Ims::register`]; the record lists every disk
    /// ([`ImageRecord::disks`](super::ImageRecord::disks)), each stored under its own key.
    /// All become `active` together or none does: a refusal of any disk writes nothing, and a
    /// failure, cancellation or kill on any disk leaves a `killed` record and no stored disk.
    pub fn register_full_ecs(
        &self,
        scope: &Scope,
        system: impl Into<Input>,
        data_disks: Vec<Input>,
        request: &RegisterRequest,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<Registered> {
        if request.image_type != ImageType::FullEcs {
            return Err(Error::InvalidArgument(format!(
                "register_full_ecs registers a full_ecs image, not {}",
                request.image_type
            ))
            .into());
        }
        let tags = check_request(request)?;
        rules::check_data_disks(data_disks.len(), &self.limits)?;
        let mut units = vec![Unit {
            record: 0,
            prepared: self.prepare(system.into(), ImageType::System, request, cancel)?,
            request: request.clone(),
        }];
        // Data disks take the size they need, whatever the system disk's min_disk.
        let data_request = RegisterRequest {
            min_disk: None,
            ..request.clone()
        };
        for input in data_disks {
            units.push(Unit {
                record: 0,
                prepared: self.prepare(input, ImageType::Data, &data_request, cancel)?,
                request: data_request.clone(),
            });
        }
        let records = vec![new_record(scope, request, tags, &units[0].prepared)];
        let mut done = self.store_group(records, units, progress, cancel)?;
        done.pop()
            .ok_or_else(|| Error::internal("a registration made no record").into())
    }

    /// Registers a system disk and, in the same call, a data-disk image for each of `data`
    /// (at most [`Limits::max_data_images`](super::Limits), 3, as IMS's `data_images`), each
    /// with its own request (`image_type` [`ImageType::Data`]). The system image's record
    /// lists their ids (`data_images`). All become `active` together or none does, and the
    /// quota must hold them all.
    pub fn register_with_data_images(
        &self,
        scope: &Scope,
        system: impl Into<Input>,
        request: &RegisterRequest,
        data: Vec<(Input, RegisterRequest)>,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<RegisteredGroup> {
        if request.image_type != ImageType::System
            || data.iter().any(|(_, r)| r.image_type != ImageType::Data)
        {
            return Err(Error::InvalidArgument(
                "data-disk images are registered with a system image: one system request and data requests"
                    .into(),
            )
            .into());
        }
        rules::check_data_images(data.len(), &self.limits)?;
        let tags = check_request(request)?;
        let mut units = vec![Unit {
            record: 0,
            prepared: self.prepare(system.into(), ImageType::System, request, cancel)?,
            request: request.clone(),
        }];
        let mut records = vec![new_record(scope, request, tags, &units[0].prepared)];
        for (input, data_request) in data {
            let tags = check_request(&data_request)?;
            let prepared = self.prepare(input, ImageType::Data, &data_request, cancel)?;
            records.push(new_record(scope, &data_request, tags, &prepared));
            units.push(Unit {
                record: records.len() - 1,
                prepared,
                request: data_request,
            });
        }
        let ids: Vec<String> = records[1..].iter().map(|r| r.id.clone()).collect();
        records[0].data_images = ids;
        let mut done = self
            .store_group(records, units, progress, cancel)?
            .into_iter();
        let system = done
            .next()
            .ok_or_else(|| Error::internal("a registration made no record"))?;
        Ok(RegisteredGroup {
            system,
            data: done.collect(),
        })
    }

    /// Opens the upload with the strict policy (any reference to another file is refused); the
    /// probe names the format, an ISO 9660 image included (whether the role fits is a rule
    /// checked after inspection). A stream is counted into `streamed` and stopped past the
    /// file-size limit.
    fn open_upload(&self, input: Input, streamed: &Arc<AtomicU64>) -> crate::Result<Image> {
        let options = OpenOptions::default();
        match input {
            Input::Path(path) => {
                let storage: Arc<dyn Storage> = Arc::new(FileStorage::open(&path)?);
                crate::open_storage(storage, &path, &options)
            }
            Input::Storage { storage, name } => {
                crate::open_storage(storage, Path::new(&name), &options)
            }
            Input::Stream {
                reader,
                format,
                name,
                size,
            } => crate::open_input(
                Input::Stream {
                    reader: Box::new(Counted {
                        inner: reader,
                        read: streamed.clone(),
                        limit: self.limits.max_file_size,
                    }),
                    format,
                    name,
                    size,
                },
                &OpenOptions::default(),
            ),
        }
    }

    /// `e`, or the file-size rule's refusal when a stream upload went over the limit.
    pub(crate) fn over_limit(&self, streamed: &AtomicU64, e: ServiceError) -> ServiceError {
        let read = streamed.load(Ordering::Relaxed);
        match rules::check_sizes(read, 0, &self.limits) {
            Err(refusal) => refusal,
            Ok(()) => e,
        }
    }

    /// Opens `input` strictly, checks its sizes, inspects it (where it allows random access)
    /// and applies the rules of a disk of `role` (`system`, `data` or `iso`; `full_ecs` is
    /// refused): a disk ready to be stored, nothing written yet.
    pub(crate) fn prepare(
        &self,
        input: Input,
        role: ImageType,
        request: &RegisterRequest,
        cancel: &CancelToken,
    ) -> Result<Prepared> {
        // Bytes read from a stream upload (none for a file or a storage).
        let streamed = Arc::new(AtomicU64::new(0));
        // A storage given (an object store's object, perhaps) hears which ranges the
        // conversion will read, once inspection's reads are done.
        let given = match &input {
            Input::Storage { storage, .. } => Some(Arc::clone(storage)),
            _ => None,
        };
        let image = self
            .open_upload(input, &streamed)
            .map_err(|e| self.over_limit(&streamed, rules::open_refusal(e)))?;
        // ZVHD and ZVHD2 report their size rounded up to a GiB; the disk uploaded is
        // `orig-size`, and a random-access source is cut to it.
        let virtual_size = image
            .info()
            .format_specific
            .and_then(|f| f.original_size())
            .filter(|&orig| orig <= image.virtual_size())
            .unwrap_or(image.virtual_size());
        rules::check_sizes(image.file_length(), virtual_size, &self.limits)?;
        let source_format = image.format();
        let source_size = image.file_length();
        let reader = image.reader().map(|inner| {
            if inner.virtual_size() == virtual_size {
                inner
            } else {
                Arc::new(Resized {
                    inner,
                    size: virtual_size,
                }) as Arc<dyn crate::BlockReader>
            }
        });
        // A stream-only source (ZVHD, a stream) is stored at the size it reports.
        let (source, stored_size) = match reader.clone() {
            Some(r) => (Source::Random(r), virtual_size),
            None => {
                let size = image.virtual_size();
                (image.into_source(), size)
            }
        };

        // Inspect now where the source allows random access; a stream-only source is
        // inspected from the stored copy.
        let found = match reader {
            Some(reader) => Some(crate::inspect::inspect(reader).map_err(rules::open_refusal)?),
            None => None,
        };
        cancel.check()?;
        let min_disk = request
            .min_disk
            .unwrap_or_else(|| rules::default_min_disk(virtual_size));
        rules::check_min_disk(min_disk, virtual_size)?;
        let mut warnings = Vec::new();
        if let Some(found) = &found {
            warnings.extend(self.validate(role, request, found)?);
        }
        if let (Some(storage), Source::Random(reader)) = (&given, &source) {
            announce_reads(&**reader, &**storage, cancel)?;
        }
        Ok(Prepared {
            role,
            source: Some(source),
            stored_size,
            found,
            warnings,
            streamed,
            disk: Disk {
                role,
                source_format: source_format.name().into(),
                source_size,
                virtual_size,
                min_disk: u32::try_from(min_disk).unwrap_or(u32::MAX),
                store_format: request.store_format.name().into(),
                store_size: 0,
                store_key: String::new(),
                checksum: Default::default(),
            },
        })
    }

    /// The rules that need inspection's facts, for a disk of `role`; returns warnings.
    fn validate(
        &self,
        role: ImageType,
        request: &RegisterRequest,
        found: &Inspection,
    ) -> Result<Vec<String>> {
        let warnings = rules::check_type(role, found)?;
        if role == ImageType::Iso {
            rules::check_iso_os(request.os_version.as_deref(), found)?;
        }
        if role == ImageType::System {
            rules::check_boot(
                request.architecture.as_deref(),
                request.firmware.as_deref(),
                found,
            )?;
        }
        Ok(warnings)
    }

    /// Writes one prepared disk into the store's writer, hashing it, and commits it; fills the
    /// disk's stored fields (`checksum`, `store_size`; `source_size` of a stream). A disk that
    /// could not be inspected before (stream-only) is inspected and validated from the stored
    /// copy after its commit; what was found is returned (its record is not yet `active`: a
    /// refusal kills it and removes the copy). `number` counts the disks of a registration
    /// from 1 (the crash-test hook's points of disk N > 1 are `POINT-N`).
    pub(crate) fn save_disk(
        &self,
        prepared: &mut Prepared,
        writer: &SharedWriter,
        request: &RegisterRequest,
        number: usize,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<Option<Inspection>> {
        let source = prepared
            .source
            .take()
            .ok_or_else(|| Error::internal("a prepared disk is stored once"))?;
        let format = request.store_format;
        let hashes = Hashes::default();
        let sink = HashingSink {
            inner: SharedSink(writer.clone()),
            hashes: hashes.clone(),
            on_append: if crash_armed() {
                Box::new(move |at| mid_write(at, number))
            } else {
                Box::new(|_| {})
            },
        };
        let pipeline = PipelineOptions {
            threads: request.threads,
            cancel: cancel.clone(),
            ..Default::default()
        };
        if format == Format::Qcow2 {
            self.write_spooled(source, prepared.stored_size, sink, &pipeline, progress)?;
        } else {
            let target = Target::Stream(Box::new(sink));
            let out = crate::create_writer(
                format,
                target,
                prepared.stored_size,
                &Default::default(),
                false,
            )?;
            crate::convert::run(source, out, &pipeline, progress)?;
        }
        crash_point(&point_of("after-write", number));
        let disk = &mut prepared.disk;
        disk.checksum = hashes.finish();
        cancel.check()?;
        disk.store_size = lock(writer).commit()?;
        if disk.source_size == 0 {
            disk.source_size = prepared.streamed.load(Ordering::Relaxed);
        }
        crash_point(&point_of("after-commit", number));
        if prepared.found.is_some() {
            return Ok(None);
        }
        let stored = crate::open_storage(
            self.store.open(&disk.store_key)?,
            Path::new(&disk.store_key),
            &OpenOptions {
                format: Some(format),
                ..Default::default()
            },
        )?;
        let found = crate::inspect::inspect_image(&stored).map_err(rules::open_refusal)?;
        prepared
            .warnings
            .extend(self.validate(prepared.role, request, &found)?);
        cancel.check()?;
        Ok(Some(found))
    }

    /// Converts `source` to QCOW2 in a local spool file (its writer seeks), then appends the
    /// file to `sink`: holes as zero runs, data a MiB at a time, checking the pipeline's
    /// cancel token between reads.
    fn write_spooled(
        &self,
        source: Source,
        stored_size: u64,
        mut sink: impl AppendSink,
        pipeline: &PipelineOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> crate::Result<()> {
        let mut spool = Spool::create(&self.spool_dir)?;
        let target = Target::File(spool.path.clone().unwrap_or_default());
        let out = crate::create_writer(
            Format::Qcow2,
            target,
            stored_size,
            &CreateOptions::default(),
            false,
        )?;
        spool.unlink()?;
        crate::convert::run(source, out, pipeline, progress)?;
        let file = spool
            .file
            .try_clone()
            .map_err(|e| Error::io("reopen the spool file", e))?;
        let spooled = FileStorage::new(file)?;
        let mut buf = vec![0u8; 1 << 20];
        for (start, length, state) in data_runs(&spooled, 0, spooled.len())? {
            if state == ExtentState::Zero {
                sink.append_zeros(length)?;
                continue;
            }
            let mut at = start;
            while at < start + length {
                pipeline.cancel.check()?;
                let n = buf
                    .len()
                    .min(usize::try_from(start + length - at).unwrap_or(usize::MAX));
                read_exact_at(&spooled, &mut buf[..n], at, "spooled image")?;
                sink.append(&buf[..n])?;
                at += n as u64;
            }
        }
        sink.finish()
    }
}
