//! The rules of the image service, one function each, with one stable error code each.
//!
//! A refusal is [`ServiceError::Rule`] with a [`RuleCode`] (the list of codes, with what each
//! means) and a message that says what to change. The rules know nothing of where records and
//! files are kept.

use crate::error::Error;
use crate::inspect::{Firmware, ImageKind, Inspection};

use super::error::{Result, RuleCode, ServiceError};
use super::record::{ImageRecord, ImageType, Status, Visibility};

/// Limits of the service; every one configurable (`HOME/limits.json` for [`Ims::open`](super::Ims::open),
/// any field left out keeping its default).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest uploaded file, bytes (128 GiB).
    pub max_file_size: u64,
    /// Largest disk, bytes (1 TiB).
    pub max_virtual_size: u64,
    /// Private images per project and region (50).
    pub private_image_quota: u64,
    /// Members per image (128).
    pub max_members: u64,
    /// Members per full-ECS image (10).
    pub max_full_ecs_members: u64,
    /// Data-disk images registered together with one system image (3, IMS's `data_images`).
    pub max_data_images: u64,
    /// Data disks of one full-ECS image (23).
    pub max_full_ecs_data_disks: u64,
    /// The projects with operator rights: they publish and withdraw public images, and change
    /// or delete protected ones (an HTTP server maps its `admin` role to the same right through
    /// [`Scope::operator`](super::Scope::operator)). None by default.
    pub operators: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 128 << 30,
            max_virtual_size: 1 << 40,
            private_image_quota: 50,
            max_members: 128,
            max_full_ecs_members: 10,
            max_data_images: 3,
            max_full_ecs_data_disks: 23,
            operators: Vec::new(),
        }
    }
}

const GIB: u64 = 1 << 30;

fn refuse<T>(code: RuleCode, message: String) -> Result<T> {
    Err(ServiceError::rule(code, message))
}

/// Name: 1 to 128 characters, no control characters.
pub fn check_name(name: &str) -> Result<()> {
    let n = name.chars().count();
    if n == 0 || name.trim().is_empty() || name.chars().any(char::is_control) {
        return refuse(
            RuleCode::NameInvalid,
            "give a name of 1 to 128 characters without control characters".into(),
        );
    }
    if n > 128 {
        return refuse(
            RuleCode::NameTooLong,
            format!("the name has {n} characters; use at most 128"),
        );
    }
    Ok(())
}

/// Description: at most 1024 characters.
pub fn check_description(description: &str) -> Result<()> {
    let n = description.chars().count();
    if n > 1024 {
        return refuse(
            RuleCode::DescriptionTooLong,
            format!("the description has {n} characters; use at most 1024"),
        );
    }
    Ok(())
}

/// One tag: a key of 1 to 36 characters and a value of at most 43, neither holding control
/// characters ([`Tag::new`](super::Tag::new) checks it).
pub fn check_tag(key: &str, value: &str) -> Result<()> {
    if key.is_empty() || key.chars().any(char::is_control) {
        return refuse(
            RuleCode::TagInvalid,
            format!("tag key {key:?} is empty or holds control characters"),
        );
    }
    if key.chars().count() > 36 {
        return refuse(
            RuleCode::TagKeyTooLong,
            format!("tag key '{key}' is longer than 36 characters"),
        );
    }
    if value.chars().count() > 43 || value.chars().any(char::is_control) {
        return refuse(
            RuleCode::TagValueTooLong,
            format!(
                "the value of tag '{key}' is longer than 43 characters or holds control characters"
            ),
        );
    }
    Ok(())
}

/// An image's tags: at most 10 (`count` keys, once each).
pub fn check_tag_count(count: usize) -> Result<()> {
    if count > 10 {
        return refuse(
            RuleCode::TooManyTags,
            format!("{count} tags given; an image has at most 10"),
        );
    }
    Ok(())
}

/// Why an image file could not be opened, as a rule's refusal: a reference to another file is
/// `reference_refused`, an unknown or ambiguous format `format_unsupported`, a damaged image
/// `image_unreadable`; any other error (I/O, cancelled) stays what it is.
pub fn open_refusal(e: Error) -> ServiceError {
    let message = e.to_string();
    match &e {
        Error::ExternalReference { .. } => ServiceError::rule(
            RuleCode::ReferenceRefused,
            format!("{message}; upload a standalone image (qemu-img convert flattens a chain)"),
        ),
        Error::Unsupported { .. } | Error::Ambiguous { .. } => ServiceError::rule(
            RuleCode::FormatUnsupported,
            format!("{message}; upload raw, qcow2, vmdk, vhd, zvhd, zvhd2 or an iso"),
        ),
        Error::Malformed { .. } | Error::Truncated { .. } | Error::LimitExceeded { .. } => {
            ServiceError::rule(
                RuleCode::ImageUnreadable,
                format!("{message}; upload the image again or check it with ims check"),
            )
        }
        _ => ServiceError::Image(e),
    }
}

/// Sizes: the file and the disk under the limits.
pub fn check_sizes(file_size: u64, virtual_size: u64, limits: &Limits) -> Result<()> {
    if file_size > limits.max_file_size {
        return refuse(
            RuleCode::FileTooLarge,
            format!(
                "the file is {file_size} bytes; the limit is {} bytes",
                limits.max_file_size
            ),
        );
    }
    if virtual_size > limits.max_virtual_size {
        return refuse(
            RuleCode::VirtualSizeTooLarge,
            format!(
                "the disk is {virtual_size} bytes; the limit is {} bytes",
                limits.max_virtual_size
            ),
        );
    }
    Ok(())
}

/// The image type against what inspection found. Returns warnings (a data disk that holds an
/// operating system is allowed, with a warning).
pub fn check_type(requested: ImageType, found: &Inspection) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    match (requested, found.image_kind) {
        (ImageType::FullEcs, _) => {
            return refuse(
                RuleCode::FullEcsNotRegistrable,
                "a full-ECS image is registered with all its disks at once (ims register SYSTEM_DISK --type full-ecs --data-disk FILE ...); a single disk is registered as --type system or data".into(),
            );
        }
        (ImageType::Iso, ImageKind::Iso) => {}
        (ImageType::Iso, _) => {
            return refuse(
                RuleCode::IsoTypeMismatch,
                "the file is not an ISO 9660 image; register it as --type system or data".into(),
            );
        }
        (_, ImageKind::Iso) => {
            return refuse(
                RuleCode::IsoTypeMismatch,
                "the file is an ISO 9660 image; register it with --type iso".into(),
            );
        }
        (ImageType::System, ImageKind::System) => {}
        (ImageType::System, _) => {
            let why = if found.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", found.notes.join("; "))
            };
            return refuse(
                RuleCode::SystemDiskWithoutOs,
                format!("no operating system was found on the disk{why}; if it is a data disk, register it with --type data"),
            );
        }
        (ImageType::Data, ImageKind::System) => warnings.push(format!(
            "the disk holds an operating system ({} {}); it is registered as a data disk as asked — use --type system to boot from it",
            found.distro.as_deref().unwrap_or("unknown"),
            found.os_version.as_deref().unwrap_or("")
        )),
        (ImageType::Data, _) => {}
    }
    Ok(warnings)
}

/// An ISO's OS version: IMS always asks for `--os-version`; ims asks only when the ISO does not
/// say which operating system and version it installs (`.disk/info`, `.treeinfo`, its label:
/// formats/iso.md).
pub fn check_iso_os(requested: Option<&str>, found: &Inspection) -> Result<()> {
    let named = found.os_type != crate::inspect::OsType::Unknown && found.os_version.is_some();
    if requested.is_none() && !named {
        let what = match (
            &found.distro,
            found.iso.as_ref().and_then(|i| i.volume_label.as_deref()),
        ) {
            (Some(d), _) => format!("the ISO installs {d} but does not say which version"),
            (None, Some(label)) => {
                format!(
                    "the ISO (volume label {label:?}) does not say which operating system it installs"
                )
            }
            (None, None) => "the ISO does not say which operating system it installs".into(),
        };
        return refuse(
            RuleCode::OsVersionRequired,
            format!("{what}; give it with --os-version (as \"Ubuntu 22.04 64bit\")"),
        );
    }
    Ok(())
}

/// The firmware as the record names it.
pub fn firmware_name(f: Firmware) -> &'static str {
    match f {
        Firmware::Uefi | Firmware::Both => "uefi",
        Firmware::Bios => "bios",
        Firmware::Unknown => "unknown",
    }
}

/// Architecture and firmware of a system disk against the request: what was asked must match
/// what was found (where found), and aarch64 boots only with UEFI.
pub fn check_boot(
    requested_arch: Option<&str>,
    requested_firmware: Option<&str>,
    found: &Inspection,
) -> Result<()> {
    let arch = found.arch.as_str();
    if let Some(want) = requested_arch
        && arch != "unknown"
        && want != arch
    {
        return refuse(
            RuleCode::ArchitectureMismatch,
            format!("--architecture {want} was asked but the guest is {arch}"),
        );
    }
    let arch = if arch == "unknown" {
        requested_arch.unwrap_or("unknown")
    } else {
        arch
    };
    let firmware = firmware_name(found.firmware);
    if let Some(want) = requested_firmware {
        let fits = match found.firmware {
            Firmware::Both | Firmware::Unknown => true,
            _ => want == firmware,
        };
        if !fits {
            return refuse(
                RuleCode::FirmwareMismatch,
                format!("--firmware {want} was asked but the guest boots with {firmware}"),
            );
        }
    }
    let firmware = if found.firmware == Firmware::Unknown {
        requested_firmware.unwrap_or("unknown")
    } else {
        firmware
    };
    if arch == "aarch64" && firmware != "uefi" {
        return refuse(
            RuleCode::Aarch64NeedsUefi,
            format!(
                "aarch64 images boot only with UEFI, and this one boots with {firmware}; add an EFI system partition with a loader"
            ),
        );
    }
    Ok(())
}

/// The smallest min_disk for a disk of `virtual_size` bytes: its size in GiB, rounded up, at
/// least 1.
pub fn default_min_disk(virtual_size: u64) -> u64 {
    virtual_size.div_ceil(GIB).max(1)
}

/// min_disk: 1 to 1024 GB, and never below the disk's virtual size.
pub fn check_min_disk(min_disk: u64, virtual_size: u64) -> Result<()> {
    if !(1..=1024).contains(&min_disk) {
        return refuse(
            RuleCode::MinDiskOutOfRange,
            format!("min_disk {min_disk} GB is outside 1 to 1024"),
        );
    }
    let need = default_min_disk(virtual_size);
    if min_disk < need {
        return refuse(
            RuleCode::MinDiskBelowVirtualSize,
            format!(
                "min_disk {min_disk} GB is below the disk's {virtual_size} bytes; use at least {need}"
            ),
        );
    }
    Ok(())
}

/// min_ram: at most 1 TiB, in MiB.
pub fn check_min_ram(min_ram: u64) -> Result<()> {
    if min_ram > 1 << 20 {
        return refuse(
            RuleCode::MinRamOutOfRange,
            format!("min_ram {min_ram} MiB is over 1048576"),
        );
    }
    Ok(())
}

/// The quota of private images: `count` are there already.
pub fn check_quota(count: u64, limits: &Limits) -> Result<()> {
    check_quota_for(count, 1, limits)
}

/// The quota of private images when `adding` images are made at once (a system image with its
/// data-disk images): `count` are there already.
pub fn check_quota_for(count: u64, adding: u64, limits: &Limits) -> Result<()> {
    if count.saturating_add(adding) > limits.private_image_quota {
        return refuse(
            RuleCode::QuotaExceeded,
            format!(
                "the project has {count} private images, its quota is {}; {adding} more do not fit, delete some first",
                limits.private_image_quota
            ),
        );
    }
    Ok(())
}

/// The record exists and `project` may see it (`visible` says whether it may).
pub fn check_found(record: Option<ImageRecord>, id: &str, visible: bool) -> Result<ImageRecord> {
    match record {
        Some(r) if visible && r.status != Status::Deleted => Ok(r),
        _ => refuse(
            RuleCode::ImageNotFound,
            format!("no image {id} visible to this project in this region"),
        ),
    }
}

/// Only the owner may change, share or delete an image.
pub fn check_owner(record: &ImageRecord, project: &str) -> Result<()> {
    if record.owner != project {
        return refuse(
            RuleCode::NotOwner,
            format!(
                "image {} belongs to project {}; only its owner may do this",
                record.id, record.owner
            ),
        );
    }
    Ok(())
}

/// The image must be active (to share, copy, export).
pub fn check_active(record: &ImageRecord) -> Result<()> {
    if record.status != Status::Active {
        return refuse(
            RuleCode::ImageNotActive,
            format!("image {} is {}, not active", record.id, record.status),
        );
    }
    Ok(())
}

/// Fields that describe the stored data cannot be changed by an update: a field named by a
/// request (the CLI's `--set FIELD=VALUE`) must be one of [`RecordUpdate`](super::RecordUpdate)'s.
pub fn check_mutable(field: &str) -> Result<()> {
    const MUTABLE: &[&str] = &[
        "name",
        "description",
        "min_disk",
        "min_ram",
        "tags",
        "support_user_data",
        "support_disk_hotswap",
    ];
    if !MUTABLE.contains(&field) {
        return refuse(
            RuleCode::FieldImmutable,
            format!(
                "'{field}' cannot be changed (changeable: {})",
                MUTABLE.join(", ")
            ),
        );
    }
    Ok(())
}

/// What may be shared: not public (it is everyone's), not encrypted, not on the marketplace,
/// full-ECS only from a CBR backup.
pub fn check_shareable(record: &ImageRecord) -> Result<()> {
    if record.visibility == Visibility::Public {
        return refuse(
            RuleCode::PublicNotShareable,
            format!(
                "image {} is public: every project of its region sees it already",
                record.id
            ),
        );
    }
    if record.encrypted {
        return refuse(
            RuleCode::EncryptedNotShareable,
            format!(
                "image {} is encrypted; encrypted images cannot be shared",
                record.id
            ),
        );
    }
    if record.marketplace {
        return refuse(
            RuleCode::MarketplaceNotShareable,
            format!(
                "image {} is published to the marketplace and cannot be shared",
                record.id
            ),
        );
    }
    if record.image_type == ImageType::FullEcs && record.backup_id.is_none() {
        return refuse(
            RuleCode::FullEcsNotShareable,
            format!(
                "full-ECS image {} was not made from a CBR backup and cannot be shared",
                record.id
            ),
        );
    }
    Ok(())
}

/// A new member: not the owner, in the image's region, under the member limit (`count` now).
pub fn check_new_member(
    record: &ImageRecord,
    project: &str,
    project_region: &str,
    count: u64,
    limits: &Limits,
) -> Result<()> {
    if project == record.owner {
        return refuse(
            RuleCode::ShareToOwner,
            format!("project {project} owns image {}", record.id),
        );
    }
    if project_region != record.region {
        return refuse(
            RuleCode::MemberRegionMismatch,
            format!(
                "image {} is in region {}; members must be projects of that region, not {project_region} (replicate it first)",
                record.id, record.region
            ),
        );
    }
    if record.image_type == ImageType::FullEcs && count >= limits.max_full_ecs_members {
        return refuse(
            RuleCode::TooManyFullEcsMembers,
            format!(
                "full-ECS image {} has {count} members; the limit for full-ECS images is {}",
                record.id, limits.max_full_ecs_members
            ),
        );
    }
    if count >= limits.max_members {
        return refuse(
            RuleCode::TooManyMembers,
            format!(
                "image {} has {count} members; the limit is {}",
                record.id, limits.max_members
            ),
        );
    }
    Ok(())
}

/// A member's answer needs a membership.
pub fn not_member(id: &str, project: &str) -> ServiceError {
    ServiceError::rule(
        RuleCode::NotMember,
        format!("project {project} is not a member of image {id}"),
    )
}

/// Replication: another region; an encrypted image needs a key there.
pub fn check_replication(
    record: &ImageRecord,
    target_region: &str,
    target_key: Option<&str>,
) -> Result<()> {
    if target_region == record.region {
        return refuse(
            RuleCode::SameRegion,
            format!("image {} is already in region {target_region}", record.id),
        );
    }
    if record.encrypted && target_key.is_none() {
        return refuse(
            RuleCode::KmsKeyRequired,
            format!(
                "image {} is encrypted; give a key of region {target_region} with --kms-key",
                record.id
            ),
        );
    }
    Ok(())
}

/// Operator rights: `operator` says whether the project has them.
pub fn check_operator(operator: bool, project: &str, what: &str) -> Result<()> {
    if !operator {
        return refuse(
            RuleCode::NotOperator,
            format!(
                "project {project} is not an operator; only an operator may {what} (the limits' operators list names them)"
            ),
        );
    }
    Ok(())
}

/// A protected (public) image is changed or deleted only by an operator.
pub fn check_unprotected(record: &ImageRecord, operator: bool) -> Result<()> {
    if record.protected && !operator {
        return refuse(
            RuleCode::ImageProtected,
            format!(
                "image {} is public and protected; only an operator may change or delete it (copy it to have one of your own)",
                record.id
            ),
        );
    }
    Ok(())
}

/// How an image is offered to every project.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Publication {
    /// A public image of the platform (an operator's).
    Public,
    /// On the marketplace, by a publisher, with an optional note on its price.
    Marketplace {
        /// Who publishes it: 1 to 128 characters, no control characters.
        publisher: String,
        /// Free text on its price: at most 256 characters, no control characters.
        price_note: Option<String>,
    },
}

/// What may be published (made public, or put on the marketplace): an active image that is
/// not full-ECS, not shared with members (`members` now) and not published the other way;
/// a marketplace publication names its publisher and may carry a short price note.
pub fn check_publishable(record: &ImageRecord, members: u64, how: &Publication) -> Result<()> {
    check_active(record)?;
    if record.image_type == ImageType::FullEcs {
        return refuse(
            RuleCode::FullEcsNotPublishable,
            format!(
                "image {} is a full-ECS image; publish its system disk as an image of its own",
                record.id
            ),
        );
    }
    let other_way = match how {
        Publication::Public => record.marketplace.then_some("on the marketplace"),
        Publication::Marketplace { .. } => {
            (record.visibility == Visibility::Public).then_some("public")
        }
    };
    if let Some(now) = other_way {
        return refuse(
            RuleCode::AlreadyPublished,
            format!(
                "image {} is {now} already; withdraw it (ims images unpublish) first",
                record.id
            ),
        );
    }
    if members > 0 {
        return refuse(
            RuleCode::SharedNotPublishable,
            format!(
                "image {} is shared with {members} projects; stop sharing it before publishing it",
                record.id
            ),
        );
    }
    if let Publication::Marketplace {
        publisher,
        price_note,
    } = how
    {
        let n = publisher.chars().count();
        if n == 0
            || n > 128
            || publisher.trim().is_empty()
            || publisher.chars().any(char::is_control)
        {
            return refuse(
                RuleCode::PublisherInvalid,
                "give the publisher's name: 1 to 128 characters without control characters".into(),
            );
        }
        if let Some(note) = price_note
            && (note.chars().count() > 256 || note.chars().any(char::is_control))
        {
            return refuse(
                RuleCode::PriceNoteTooLong,
                format!(
                    "the price note has {} characters; use at most 256, without control characters",
                    note.chars().count()
                ),
            );
        }
    }
    Ok(())
}

/// Withdrawing needs a publication.
pub fn check_published(record: &ImageRecord) -> Result<()> {
    if record.visibility != Visibility::Public && !record.marketplace {
        return refuse(
            RuleCode::NotPublished,
            format!(
                "image {} is neither public nor on the marketplace",
                record.id
            ),
        );
    }
    Ok(())
}

/// A copy within the region: not of a full-ECS image.
pub fn check_copy_in_region(record: &ImageRecord) -> Result<()> {
    if record.image_type == ImageType::FullEcs {
        return refuse(
            RuleCode::FullEcsNotCopyable,
            format!(
                "image {} is a full-ECS image; it cannot be copied within its region",
                record.id
            ),
        );
    }
    Ok(())
}

/// Data-disk images registered with a system image: at most `max_data_images` (3).
pub fn check_data_images(count: usize, limits: &Limits) -> Result<()> {
    if count as u64 > limits.max_data_images {
        return refuse(
            RuleCode::TooManyDataImages,
            format!(
                "{count} data disks given; at most {} are registered with a system disk",
                limits.max_data_images
            ),
        );
    }
    Ok(())
}

/// The data disks of a full-ECS image: at least one (a server with a system disk only is a
/// system image), at most `max_full_ecs_data_disks` (23).
pub fn check_data_disks(count: usize, limits: &Limits) -> Result<()> {
    if count == 0 {
        return refuse(
            RuleCode::FullEcsNotRegistrable,
            "a full-ECS image is a system disk with its data disks (--data-disk FILE); a single disk is registered as --type system".into(),
        );
    }
    if count as u64 > limits.max_full_ecs_data_disks {
        return refuse(
            RuleCode::TooManyDataDisks,
            format!(
                "{count} data disks given; a full-ECS image has at most {}",
                limits.max_full_ecs_data_disks
            ),
        );
    }
    Ok(())
}

/// An exported disk of `size` bytes: not below min_disk nor below the image.
pub fn check_export_size(record: &ImageRecord, size: u64) -> Result<()> {
    let min = (u64::from(record.min_disk) * GIB).max(record.virtual_size);
    if size < min {
        return refuse(
            RuleCode::ExportSizeTooSmall,
            format!(
                "a disk of {size} bytes is below image {}'s minimum of {min} bytes (min_disk {} GB)",
                record.id, record.min_disk
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: std::fmt::Debug>(r: Result<T>) -> &'static str {
        r.unwrap_err().code().expect("a rule's refusal").as_str()
    }

    #[test]
    fn names() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"é".repeat(128)).is_ok());
        assert_eq!(code(check_name(&"n".repeat(129))), "name_too_long");
        assert_eq!(code(check_name("")), "name_invalid");
        assert_eq!(code(check_name("a\nb")), "name_invalid");
        assert!(check_description(&"d".repeat(1024)).is_ok());
        assert_eq!(
            code(check_description(&"d".repeat(1025))),
            "description_too_long"
        );
    }

    #[test]
    fn tags() {
        assert!(check_tag(&"k".repeat(36), &"v".repeat(43)).is_ok());
        assert!(check_tag("k", "").is_ok());
        assert_eq!(code(check_tag("", "v")), "tag_invalid");
        assert_eq!(code(check_tag("a\tb", "v")), "tag_invalid");
        assert_eq!(code(check_tag(&"k".repeat(37), "v")), "tag_key_too_long");
        assert_eq!(code(check_tag("k", &"v".repeat(44))), "tag_value_too_long");
        assert_eq!(code(check_tag("k", "a\nb")), "tag_value_too_long");
        assert!(check_tag_count(10).is_ok());
        assert_eq!(code(check_tag_count(11)), "too_many_tags");
    }

    #[test]
    fn sizes() {
        let l = Limits::default();
        assert!(check_sizes(128 << 30, 1 << 40, &l).is_ok());
        assert_eq!(code(check_sizes((128 << 30) + 1, 1, &l)), "file_too_large");
        assert_eq!(
            code(check_sizes(1, (1 << 40) + 1, &l)),
            "virtual_size_too_large"
        );
        let small = Limits {
            max_file_size: 10,
            ..Limits::default()
        };
        assert_eq!(code(check_sizes(11, 1, &small)), "file_too_large");
    }

    fn found(kind: ImageKind, arch: &str, firmware: Firmware) -> Inspection {
        let reader: std::sync::Arc<dyn crate::BlockReader> = std::sync::Arc::new(Zeros);
        let mut i = crate::inspect::inspect(reader).unwrap();
        i.image_kind = kind;
        i.arch = arch.into();
        i.firmware = firmware;
        if kind == ImageKind::System {
            i.os_type = crate::inspect::OsType::Linux;
        }
        i
    }

    struct Zeros;
    impl crate::BlockReader for Zeros {
        fn virtual_size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, buf: &mut [u8], _: u64) -> crate::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn map(&self, offset: u64, len: u64) -> crate::Result<Vec<crate::Extent>> {
            Ok(vec![crate::Extent::new(
                offset,
                len,
                crate::ExtentState::Zero,
            )])
        }
    }

    #[test]
    fn types() {
        let sys = found(ImageKind::System, "x86_64", Firmware::Uefi);
        let data = found(ImageKind::Data, "unknown", Firmware::Unknown);
        let iso = found(ImageKind::Iso, "unknown", Firmware::Bios);
        assert!(check_type(ImageType::System, &sys).unwrap().is_empty());
        assert_eq!(
            code(check_type(ImageType::System, &data)),
            "system_disk_without_os"
        );
        assert!(check_type(ImageType::Data, &data).unwrap().is_empty());
        assert_eq!(check_type(ImageType::Data, &sys).unwrap().len(), 1);
        assert!(check_type(ImageType::Iso, &iso).is_ok());
        assert_eq!(code(check_type(ImageType::Iso, &sys)), "iso_type_mismatch");
        assert_eq!(
            code(check_type(ImageType::System, &iso)),
            "iso_type_mismatch"
        );
        assert_eq!(
            code(check_type(ImageType::FullEcs, &sys)),
            "full_ecs_not_registrable"
        );
    }

    #[test]
    fn boot() {
        let x86 = found(ImageKind::System, "x86_64", Firmware::Bios);
        assert!(check_boot(None, None, &x86).is_ok());
        assert!(check_boot(Some("x86_64"), Some("bios"), &x86).is_ok());
        assert_eq!(
            code(check_boot(Some("aarch64"), None, &x86)),
            "architecture_mismatch"
        );
        assert_eq!(
            code(check_boot(None, Some("uefi"), &x86)),
            "firmware_mismatch"
        );
        let arm_bios = found(ImageKind::System, "aarch64", Firmware::Bios);
        assert_eq!(
            code(check_boot(None, None, &arm_bios)),
            "aarch64_needs_uefi"
        );
        let arm_uefi = found(ImageKind::System, "aarch64", Firmware::Uefi);
        assert!(check_boot(Some("aarch64"), Some("uefi"), &arm_uefi).is_ok());
        let arm_unknown = found(ImageKind::System, "aarch64", Firmware::Unknown);
        assert!(check_boot(None, Some("uefi"), &arm_unknown).is_ok());
        assert_eq!(
            code(check_boot(None, None, &arm_unknown)),
            "aarch64_needs_uefi"
        );
    }

    #[test]
    fn min_disk_and_ram() {
        assert_eq!(default_min_disk(1), 1);
        assert_eq!(default_min_disk((1 << 30) + 1), 2);
        assert!(check_min_disk(1, 1 << 30).is_ok());
        assert!(check_min_disk(1024, 1 << 40).is_ok());
        assert_eq!(code(check_min_disk(0, 1)), "min_disk_out_of_range");
        assert_eq!(code(check_min_disk(1025, 1)), "min_disk_out_of_range");
        assert_eq!(
            code(check_min_disk(1, (1 << 30) + 1)),
            "min_disk_below_virtual_size"
        );
        assert!(check_min_ram(1 << 20).is_ok());
        assert_eq!(code(check_min_ram((1 << 20) + 1)), "min_ram_out_of_range");
    }

    #[test]
    fn quota() {
        let l = Limits::default();
        assert!(check_quota(49, &l).is_ok());
        assert_eq!(code(check_quota(50, &l)), "quota_exceeded");
    }

    fn record() -> ImageRecord {
        let mut r = ImageRecord::new("a", "owner", "r1", ImageType::System);
        r.status = Status::Active;
        r
    }

    #[test]
    fn ownership_and_state() {
        let r = record();
        assert!(check_owner(&r, "owner").is_ok());
        assert_eq!(code(check_owner(&r, "other")), "not_owner");
        assert!(check_found(Some(r.clone()), "x", true).is_ok());
        assert_eq!(
            code(check_found(Some(r.clone()), "x", false)),
            "image_not_found"
        );
        assert_eq!(code(check_found(None, "x", true)), "image_not_found");
        assert!(check_active(&r).is_ok());
        let mut saving = r.clone();
        saving.status = Status::Saving;
        assert_eq!(code(check_active(&saving)), "image_not_active");
        for f in [
            "name",
            "description",
            "min_disk",
            "min_ram",
            "tags",
            "support_user_data",
        ] {
            assert!(check_mutable(f).is_ok());
        }
        for f in [
            "checksum",
            "virtual_size",
            "store_format",
            "os_type",
            "owner",
        ] {
            assert_eq!(code(check_mutable(f)), "field_immutable");
        }
    }

    #[test]
    fn sharing() {
        let l = Limits::default();
        let r = record();
        assert!(check_shareable(&r).is_ok());
        let mut enc = r.clone();
        enc.encrypted = true;
        assert_eq!(code(check_shareable(&enc)), "encrypted_not_shareable");
        let mut market = r.clone();
        market.marketplace = true;
        assert_eq!(code(check_shareable(&market)), "marketplace_not_shareable");
        let mut ecs = r.clone();
        ecs.image_type = ImageType::FullEcs;
        assert_eq!(code(check_shareable(&ecs)), "full_ecs_not_shareable");
        ecs.backup_id = Some("backup-1".into());
        assert!(check_shareable(&ecs).is_ok());
        assert!(check_new_member(&r, "m", "r1", 127, &l).is_ok());
        assert_eq!(
            code(check_new_member(&r, "m", "r1", 128, &l)),
            "too_many_members"
        );
        assert_eq!(
            code(check_new_member(&r, "m", "r2", 0, &l)),
            "member_region_mismatch"
        );
        assert_eq!(
            code(check_new_member(&r, "owner", "r1", 0, &l)),
            "share_to_owner"
        );
    }

    #[test]
    fn publishing() {
        let l = Limits::default();
        let market = Publication::Marketplace {
            publisher: "ACME".into(),
            price_note: Some("free for 30 days".into()),
        };
        let r = record();
        assert!(check_publishable(&r, 0, &Publication::Public).is_ok());
        assert!(check_publishable(&r, 0, &market).is_ok());
        assert_eq!(
            code(check_publishable(&r, 1, &market)),
            "shared_not_publishable"
        );
        let mut queued = r.clone();
        queued.status = Status::Queued;
        assert_eq!(
            code(check_publishable(&queued, 0, &market)),
            "image_not_active"
        );
        let mut ecs = r.clone();
        ecs.image_type = ImageType::FullEcs;
        assert_eq!(
            code(check_publishable(&ecs, 0, &Publication::Public)),
            "full_ecs_not_publishable"
        );
        let mut public = r.clone();
        public.visibility = Visibility::Public;
        public.protected = true;
        assert_eq!(
            code(check_publishable(&public, 0, &market)),
            "already_published"
        );
        assert!(check_publishable(&public, 0, &Publication::Public).is_ok());
        let mut on_market = r.clone();
        on_market.marketplace = true;
        assert_eq!(
            code(check_publishable(&on_market, 0, &Publication::Public)),
            "already_published"
        );
        for bad in ["", " ", "a\nb"] {
            let how = Publication::Marketplace {
                publisher: bad.into(),
                price_note: None,
            };
            assert_eq!(code(check_publishable(&r, 0, &how)), "publisher_invalid");
        }
        let how = Publication::Marketplace {
            publisher: "p".repeat(129),
            price_note: None,
        };
        assert_eq!(code(check_publishable(&r, 0, &how)), "publisher_invalid");
        let how = Publication::Marketplace {
            publisher: "p".into(),
            price_note: Some("n".repeat(257)),
        };
        assert_eq!(code(check_publishable(&r, 0, &how)), "price_note_too_long");
        assert_eq!(code(check_published(&r)), "not_published");
        assert!(check_published(&public).is_ok());
        assert!(check_published(&on_market).is_ok());
        assert_eq!(code(check_shareable(&public)), "public_not_shareable");
        assert!(check_unprotected(&r, false).is_ok());
        assert!(check_unprotected(&public, true).is_ok());
        assert_eq!(code(check_unprotected(&public, false)), "image_protected");
        assert!(check_operator(true, "op", "publish").is_ok());
        assert_eq!(code(check_operator(false, "p", "publish")), "not_operator");
        assert!(check_quota_for(47, 3, &l).is_ok());
        assert_eq!(code(check_quota_for(48, 3, &l)), "quota_exceeded");
    }

    #[test]
    fn full_ecs_and_data_images() {
        let l = Limits::default();
        let mut ecs = record();
        ecs.image_type = ImageType::FullEcs;
        ecs.backup_id = Some("b".into());
        assert!(check_new_member(&ecs, "m", "r1", 9, &l).is_ok());
        assert_eq!(
            code(check_new_member(&ecs, "m", "r1", 10, &l)),
            "too_many_full_ecs_members"
        );
        assert_eq!(code(check_copy_in_region(&ecs)), "full_ecs_not_copyable");
        assert!(check_copy_in_region(&record()).is_ok());
        assert!(check_data_images(3, &l).is_ok());
        assert_eq!(code(check_data_images(4, &l)), "too_many_data_images");
        assert!(check_data_disks(23, &l).is_ok());
        assert_eq!(code(check_data_disks(0, &l)), "full_ecs_not_registrable");
        assert_eq!(code(check_data_disks(24, &l)), "too_many_data_disks");
    }

    #[test]
    fn replication_and_export() {
        let mut r = record();
        assert!(check_replication(&r, "r2", None).is_ok());
        assert_eq!(code(check_replication(&r, "r1", None)), "same_region");
        r.encrypted = true;
        assert_eq!(code(check_replication(&r, "r2", None)), "kms_key_required");
        assert!(check_replication(&r, "r2", Some("key")).is_ok());
        r.min_disk = 2;
        r.virtual_size = 1 << 30;
        assert!(check_export_size(&r, 2 << 30).is_ok());
        assert_eq!(
            code(check_export_size(&r, 1 << 30)),
            "export_size_too_small"
        );
    }
}
