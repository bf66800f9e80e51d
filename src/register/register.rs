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
use super::hash::{Hashes, HashingSink};
use super::record::{Features, ImageRecord, ImageType, Status};
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

/// Crash-test hook: with `IMS_TEST_CRASH_AT=POINT` in the environment the process aborts at
/// that point (`after-insert`, `mid-write`, `after-write`, `after-commit`), as a kill would.
/// Only with the `fault-injection` feature; otherwise it is nothing and the variable is never
/// read.
#[cfg(feature = "fault-injection")]
fn crash_point(point: &str) {
    if std::env::var("IMS_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        std::process::abort();
    }
}

/// The `mid-write` crash point: after the first MiB is stored.
fn mid_write(position: u64) {
    if position >= 1 << 20 {
        crash_point("mid-write");
    }
}

/// Whether a crash point is set, so that the sink checks its position for `mid-write`.
#[cfg(feature = "fault-injection")]
fn crash_armed() -> bool {
    std::env::var_os("IMS_TEST_CRASH_AT").is_some()
}

#[cfg(not(feature = "fault-injection"))]
fn crash_point(_point: &str) {}

#[cfg(not(feature = "fault-injection"))]
fn crash_armed() -> bool {
    false
}

/// The record's OS fields from what inspection found.
fn describe(record: &mut ImageRecord, found: &Inspection, os_version: Option<&str>) {
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
}

/// A store's writer shared between the pipeline's sink and the registration, which commits
/// it and keeps it until the record is settled.
type SharedWriter = Arc<Mutex<Box<dyn StoreWriter>>>;

fn lock(w: &SharedWriter) -> MutexGuard<'_, Box<dyn StoreWriter>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pipeline's end of a [`SharedWriter`].
struct SharedSink(SharedWriter);

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

impl Ims {
    /// Registers the image `input` (a path, an [`Input::Storage`] or an [`Input::Stream`]) as
    /// a private image of `scope` (see the module doc). An image that cannot be opened is
    /// refused with a rule's code ([`rules::open_refusal`]): a stream of a format that needs
    /// random access is `format_unsupported`. Cancelled through `cancel`, it fails with
    /// [`Error::Cancelled`] (in [`ServiceError::Image`]) as a failed registration does: a
    /// record already made is `killed`, and nothing is left in the store.
    pub fn register(
        &self,
        scope: &Scope,
        input: impl Into<Input>,
        request: &RegisterRequest,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<Registered> {
        rules::check_name(&request.name)?;
        rules::check_description(&request.description)?;
        let tags: BTreeMap<String, String> = tag_map(&request.tags)?;
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

        // Bytes read from a stream upload (none for a file or a storage).
        let streamed = Arc::new(AtomicU64::new(0));
        let image = self
            .open_upload(
                input.into(),
                request.image_type == ImageType::Iso,
                &streamed,
            )
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
            warnings.extend(self.validate(request, found)?);
        }

        let mut record = ImageRecord::new(
            &request.name,
            &scope.project,
            &scope.region,
            request.image_type,
        );
        record.description = request.description.clone();
        record.tags = tags;
        record.min_disk = u32::try_from(min_disk).unwrap_or(u32::MAX);
        record.min_ram = u32::try_from(request.min_ram).unwrap_or(u32::MAX);
        record.source_format = source_format.name().into();
        record.source_size = source_size;
        record.virtual_size = virtual_size;
        record.store_format = request.store_format.name().into();
        record.store_key = super::store_key(&scope.region, &record.id, request.store_format);
        record.encrypted = request.kms_key_id.is_some();
        record.kms_key_id = request.kms_key_id.clone();
        if let Some(found) = &found {
            describe(&mut record, found, request.os_version.as_deref());
        }

        // Begun before the record exists, so that recovery never sees the record without a
        // live write; kept until the record is settled.
        let writer: SharedWriter = Arc::new(Mutex::new(self.store.begin(&record.store_key)?));
        let limits = self.limits.clone();
        self.catalog
            .insert(&record, &|count| rules::check_quota(count, &limits))?;
        crash_point("after-insert");

        let result = self
            .save(
                &mut record,
                (source, stored_size),
                &writer,
                request,
                progress,
                found.is_none(),
                cancel,
            )
            .map_err(|e| self.over_limit(&streamed, e))
            .and_then(|extra| {
                warnings.extend(extra);
                if record.source_size == 0 {
                    record.source_size = streamed.load(Ordering::Relaxed);
                }
                record.status = Status::Active;
                record.updated_at = super::record::now();
                self.catalog.update(&record)
            });
        match result {
            Ok(()) => {
                drop(writer);
                Ok(Registered { record, warnings })
            }
            Err(e) => {
                self.settle_failed(&record, &e.to_string());
                drop(writer);
                Err(e)
            }
        }
    }

    /// Opens the upload with the strict policy (any reference to another file is refused). An
    /// ISO 9660 image, which the probe refuses as a disk format, is what an ISO registration
    /// asks for: it is read as the raw disk it is. A stream is counted into `streamed` and
    /// stopped past the file-size limit.
    fn open_upload(
        &self,
        input: Input,
        iso: bool,
        streamed: &Arc<AtomicU64>,
    ) -> crate::Result<Image> {
        let options = |storage: &dyn Storage| OpenOptions {
            format: (iso && looks_like_iso(storage)).then_some(Format::Raw),
            ..OpenOptions::default()
        };
        match input {
            Input::Path(path) => {
                let storage: Arc<dyn Storage> = Arc::new(FileStorage::open(&path)?);
                let options = options(&*storage);
                crate::open_storage(storage, &path, &options)
            }
            Input::Storage { storage, name } => {
                let options = options(&*storage);
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
    fn over_limit(&self, streamed: &AtomicU64, e: ServiceError) -> ServiceError {
        let read = streamed.load(Ordering::Relaxed);
        match rules::check_sizes(read, 0, &self.limits) {
            Err(refusal) => refusal,
            Ok(()) => e,
        }
    }

    /// The rules that need inspection's facts; returns warnings.
    fn validate(&self, request: &RegisterRequest, found: &Inspection) -> Result<Vec<String>> {
        let warnings = rules::check_type(request.image_type, found)?;
        if request.image_type == ImageType::System {
            rules::check_boot(
                request.architecture.as_deref(),
                request.firmware.as_deref(),
                found,
            )?;
        }
        Ok(warnings)
    }

    /// Writes the data into the store's writer, hashing it, and commits it; fills the record's
    /// stored fields. `inspect_after`: the source could not be inspected before (stream-only),
    /// so the stored copy is inspected and validated after its commit (the record is not yet
    /// `active`: a refusal kills it and removes the copy).
    #[allow(clippy::too_many_arguments)]
    fn save(
        &self,
        record: &mut ImageRecord,
        (source, stored_size): (Source, u64),
        writer: &SharedWriter,
        request: &RegisterRequest,
        progress: &mut dyn FnMut(Progress),
        inspect_after: bool,
        cancel: &CancelToken,
    ) -> Result<Vec<String>> {
        self.catalog
            .transition(&record.id, &[Status::Queued], Status::Saving, None)?;
        record.status = Status::Saving;
        let format = request.store_format;
        let hashes = Hashes::default();
        let sink = HashingSink {
            inner: SharedSink(writer.clone()),
            hashes: hashes.clone(),
            on_append: if crash_armed() { mid_write } else { |_| {} },
        };
        let pipeline = PipelineOptions {
            threads: request.threads,
            cancel: cancel.clone(),
            ..Default::default()
        };
        if format == Format::Qcow2 {
            self.write_spooled(source, stored_size, sink, &pipeline, progress)?;
        } else {
            let target = Target::Stream(Box::new(sink));
            let out =
                crate::create_writer(format, target, stored_size, &Default::default(), false)?;
            crate::convert::run(source, out, &pipeline, progress)?;
        }
        crash_point("after-write");
        record.checksum = hashes.finish();
        cancel.check()?;
        record.store_size = lock(writer).commit()?;
        crash_point("after-commit");
        let mut warnings = Vec::new();
        if inspect_after {
            let stored = crate::open_storage(
                self.store.open(&record.store_key)?,
                Path::new(&record.store_key),
                &OpenOptions {
                    format: Some(format),
                    ..Default::default()
                },
            )?;
            let found = crate::inspect::inspect_image(&stored).map_err(rules::open_refusal)?;
            warnings = self.validate(request, &found)?;
            describe(record, &found, request.os_version.as_deref());
            cancel.check()?;
        }
        Ok(warnings)
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

/// Whether the image carries the ISO 9660 signature (`CD001` in the volume descriptor at 32
/// KiB).
fn looks_like_iso(storage: &dyn Storage) -> bool {
    let mut magic = [0u8; 5];
    read_exact_at(storage, &mut magic, 0x8001, "volume descriptor")
        .is_ok_and(|()| &magic == b"CD001")
}
