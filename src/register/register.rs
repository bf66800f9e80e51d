//! Registration: an uploaded image file becomes an active private image.
//!
//! probe → open with the strict policy (no reference to another file is followed) → inspect
//! → validate ([`rules`](super::rules)) → record `queued` (quota checked in the same
//! transaction) → `saving`: convert into the store format through the pipeline into an upload
//! of the store, hashing (SHA-256 and SHA-512) the stored bytes → sync, rename into place →
//! `active`. A failure makes the record `killed` with the reason and removes the data; a
//! process killed at any point leaves an upload whose lock nobody holds, which
//! [`Ims::recover`] settles the same way.
//!
//! Hashing: ZVHD2 and raw are written front to back, so the stored bytes are hashed as they are
//! appended. QCOW2 is written with seeks (tables are patched at the end), so it is hashed by
//! reading the finished file back before it is renamed into place.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::cancel::CancelToken;
use crate::convert::Source;
use crate::error::{Error, Result};
use crate::formats::Format;
use crate::inspect::{Inspection, OsType};
use crate::io::FileSink;
use crate::storage::FileStorage;
use crate::{CreateOptions, OpenOptions, PipelineOptions, Progress, Target};

use super::hash::{Hashes, HashingSink, hash_storage};
use super::record::{Features, ImageRecord, ImageType, Status};
use super::resized::Resized;
use super::rules;
use super::{Ims, Scope};

/// What to register.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    pub name: String,
    pub description: String,
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
    /// `KEY=VALUE`.
    pub tags: Vec<String>,
    /// ZVHD2 (default), QCOW2 or raw.
    pub store_format: Format,
    /// Record the image as encrypted with this key.
    pub kms_key_id: Option<String>,
    /// Pipeline threads (0: one per core).
    pub threads: usize,
}

impl RegisterRequest {
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

impl Ims {
    /// Registers the image file `file` as a private image of `scope` (see the module doc).
    /// Cancelled through `cancel`, it fails with [`Error::Cancelled`] as a failed registration
    /// does: a record already made is `killed`, and nothing is left in the store.
    pub fn register(
        &self,
        scope: &Scope,
        file: &Path,
        request: &RegisterRequest,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<Registered> {
        rules::check_name(&request.name)?;
        rules::check_description(&request.description)?;
        let tags: BTreeMap<String, String> = rules::parse_tags(&request.tags)?;
        rules::check_min_ram(request.min_ram)?;
        if !matches!(
            request.store_format,
            Format::Zvhd2 | Format::Qcow2 | Format::Raw
        ) {
            return Err(Error::InvalidArgument(format!(
                "images are stored as zvhd2, qcow2 or raw, not {}",
                request.store_format
            )));
        }

        // Probe and open with the strict policy: any reference to another file is refused. An
        // ISO 9660 image, which the probe refuses as a disk format, is what an ISO registration
        // asks for: it is read as the raw disk it is.
        let options = OpenOptions {
            format: (request.image_type == ImageType::Iso && looks_like_iso(file))
                .then_some(Format::Raw),
            ..OpenOptions::default()
        };
        let image = crate::open(file, &options).map_err(rules::open_refusal)?;
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
        // A stream-only source (ZVHD) is stored at the size it reports.
        let (source, stored_size) = match reader.clone() {
            Some(r) => (Source::Random(r), virtual_size),
            None => {
                let size = image.virtual_size();
                (image.into_source(), size)
            }
        };

        // Inspect now where the format allows random access; a stream-only source (ZVHD) is
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
        record.store_key = format!(
            "{}/{}.{}",
            scope.region,
            record.id,
            request.store_format.name()
        );
        record.encrypted = request.kms_key_id.is_some();
        record.kms_key_id = request.kms_key_id.clone();
        if let Some(found) = &found {
            describe(&mut record, found, request.os_version.as_deref());
        }

        let upload = self.store.begin(&record.store_key)?;
        let limits = self.limits.clone();
        if let Err(e) = self
            .catalog
            .insert(&record, &|count| rules::check_quota(count, &limits))
        {
            self.store.end(upload);
            return Err(e);
        }
        crash_point("after-insert");

        let result = self.save(
            &mut record,
            (source, stored_size),
            &upload,
            request,
            progress,
            found.is_none(),
            cancel,
        );
        let result = result.and_then(|extra| {
            warnings.extend(extra);
            crash_point("after-commit");
            record.status = Status::Active;
            record.updated_at = super::record::now();
            self.catalog.update(&record)
        });
        match result {
            Ok(()) => {
                self.store.end(upload);
                Ok(Registered { record, warnings })
            }
            Err(e) => {
                let reason = e.to_string();
                let _ = self.catalog.transition(
                    &record.id,
                    &[Status::Queued, Status::Saving],
                    Status::Killed,
                    Some(&reason),
                );
                let _ = self.store.remove(&record.store_key);
                self.store.end(upload);
                Err(e)
            }
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

    /// Writes the data into the upload, hashing it, and commits it; fills the record's stored
    /// fields. `inspect_after`: the source could not be inspected before (stream-only), so the
    /// stored copy is inspected and validated before it is committed.
    #[allow(clippy::too_many_arguments)]
    fn save(
        &self,
        record: &mut ImageRecord,
        (source, stored_size): (Source, u64),
        upload: &super::store::Upload,
        request: &RegisterRequest,
        progress: &mut dyn FnMut(Progress),
        inspect_after: bool,
        cancel: &CancelToken,
    ) -> Result<Vec<String>> {
        self.catalog
            .transition(&record.id, &[Status::Queued], Status::Saving, None)?;
        record.status = Status::Saving;
        let format = request.store_format;
        let create = CreateOptions {
            durable: true,
            ..Default::default()
        };
        let hashes = Hashes::default();
        let streamed = matches!(format, Format::Zvhd2 | Format::Raw);
        let target = if streamed {
            let file = std::fs::File::options()
                .read(true)
                .write(true)
                .truncate(true)
                .open(&upload.path)
                .map_err(|e| Error::io("open", e).in_file(&upload.path))?;
            Target::Stream(Box::new(HashingSink {
                inner: FileSink::from_file(file).durable(true),
                hashes: hashes.clone(),
                on_append: if crash_armed() { mid_write } else { |_| {} },
            }))
        } else {
            Target::File(upload.path.clone())
        };
        // The upload is the store's temporary, which the store removes on failure.
        let writer = crate::create_writer(format, target, stored_size, &create, false)?;
        let pipeline = PipelineOptions {
            threads: request.threads,
            cancel: cancel.clone(),
            ..Default::default()
        };
        crate::convert::run(source, writer, &pipeline, progress)?;
        crash_point("after-write");
        record.checksum = if streamed {
            hashes.finish()
        } else {
            hash_storage(&FileStorage::open(&upload.path)?, cancel)?
        };
        let mut warnings = Vec::new();
        if inspect_after {
            let stored = crate::open(
                &upload.path,
                &OpenOptions {
                    format: Some(format),
                    ..Default::default()
                },
            )?;
            let found = crate::inspect::inspect_image(&stored).map_err(rules::open_refusal)?;
            warnings = self.validate(request, &found)?;
            describe(record, &found, request.os_version.as_deref());
        }
        cancel.check()?;
        record.store_size = self.store.commit(upload)?;
        Ok(warnings)
    }
}

/// Whether `file` carries the ISO 9660 signature (`CD001` in the volume descriptor at 32 KiB).
fn looks_like_iso(file: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 5];
    std::fs::File::open(file)
        .and_then(|f| f.read_exact_at(&mut magic, 0x8001))
        .is_ok_and(|()| &magic == b"CD001")
}
