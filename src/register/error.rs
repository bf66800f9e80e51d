//! The service's error: a refusal by one of its rules ([`RuleCode`]), or an error of the image
//! layers below it ([`crate::Error`]).

use std::fmt;

/// The result of the image service's calls.
pub type Result<T> = std::result::Result<T, ServiceError>;

/// Defines [`RuleCode`] from one list of variant, code string and meaning, so that none of
/// the three can drift from the others.
macro_rules! rule_codes {
    ($($variant:ident = $code:literal: $meaning:literal,)+) => {
        /// Why a rule of the service refused a request. Each code has one stable string
        /// ([`as_str`](RuleCode::as_str), also its serialized form), which the CLI prints as
        /// `ims: CODE: message` and an HTTP API maps one to one; [`meaning`](RuleCode::meaning)
        /// says what it means.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum RuleCode {
            $(
                #[doc = concat!("`", $code, "`: ", $meaning, ".")]
                $variant,
            )+
        }

        impl RuleCode {
            /// Every code, in the order of the list.
            pub const ALL: &'static [RuleCode] = &[$(RuleCode::$variant),+];

            /// The code's stable string (`quota_exceeded`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(RuleCode::$variant => $code,)+
                }
            }

            /// What the code means, in a few words.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(RuleCode::$variant => $meaning,)+
                }
            }
        }
    };
}

rule_codes! {
    NameInvalid = "name_invalid": "the name is empty or holds control characters",
    NameTooLong = "name_too_long": "the name is longer than 128 characters",
    DescriptionTooLong = "description_too_long": "the description is longer than 1024 characters",
    TagInvalid = "tag_invalid": "a tag is not KEY=VALUE, or its key is empty",
    TooManyTags = "too_many_tags": "more than 10 tags",
    TagKeyTooLong = "tag_key_too_long": "a tag key is longer than 36 characters",
    TagValueTooLong = "tag_value_too_long": "a tag value is longer than 43 characters",
    FormatUnsupported = "format_unsupported": "the file is not an image format ims reads",
    ReferenceRefused = "reference_refused":
        "the image refers to another file (backing file, extent, parent)",
    ImageUnreadable = "image_unreadable": "the image file is damaged or truncated",
    FileTooLarge = "file_too_large": "the file is over the file size limit",
    VirtualSizeTooLarge = "virtual_size_too_large": "the disk is over the virtual size limit",
    SystemDiskWithoutOs = "system_disk_without_os":
        "a system disk holds no operating system inspection recognises",
    IsoTypeMismatch = "iso_type_mismatch":
        "an ISO file not registered as iso, or iso given for a disk",
    OsVersionRequired = "os_version_required":
        "an ISO that does not say which OS (and version) it installs needs --os-version",
    FullEcsNotRegistrable = "full_ecs_not_registrable":
        "a full-ECS image is a system disk with its data disks, registered at once, not one file",
    ArchitectureMismatch = "architecture_mismatch":
        "the requested architecture differs from the guest's",
    FirmwareMismatch = "firmware_mismatch": "the requested boot firmware differs from the guest's",
    Aarch64NeedsUefi = "aarch64_needs_uefi": "an aarch64 image must boot with UEFI",
    MinDiskOutOfRange = "min_disk_out_of_range": "min_disk is not 1 to 1024 GB",
    MinDiskBelowVirtualSize = "min_disk_below_virtual_size": "min_disk is smaller than the disk",
    MinRamOutOfRange = "min_ram_out_of_range": "min_ram is over 1048576 MiB",
    QuotaExceeded = "quota_exceeded": "the project has its quota of private images",
    ImageNotFound = "image_not_found": "no such image, or not visible to the project",
    NotOwner = "not_owner": "only the owner project may do this",
    ImageNotActive = "image_not_active": "the image is not active",
    FieldImmutable = "field_immutable": "the field describes the stored data and cannot change",
    ShareToOwner = "share_to_owner": "an image cannot be shared with its owner",
    MemberRegionMismatch = "member_region_mismatch": "members must be in the image's region",
    TooManyMembers = "too_many_members": "an image has at most 128 members",
    EncryptedNotShareable = "encrypted_not_shareable": "encrypted images cannot be shared",
    FullEcsNotShareable = "full_ecs_not_shareable":
        "a full-ECS image can be shared only when made from a CBR backup",
    MarketplaceNotShareable = "marketplace_not_shareable":
        "an image published to the marketplace cannot be shared",
    NotMember = "not_member": "the project is not a member of the image",
    SameRegion = "same_region": "replication needs another region",
    KmsKeyRequired = "kms_key_required": "an encrypted image needs a key in the target region",
    ExportSizeTooSmall = "export_size_too_small": "the disk size is below min_disk or the image",
    NotOperator = "not_operator":
        "only an operator project (the limits' `operators`) may do this",
    ImageProtected = "image_protected":
        "the image is public and protected: only an operator may change or delete it",
    PublicNotShareable = "public_not_shareable":
        "a public image is every project's already and cannot be shared",
    AlreadyPublished = "already_published":
        "the image is published the other way (public or marketplace); withdraw it first",
    NotPublished = "not_published": "the image is neither public nor on the marketplace",
    SharedNotPublishable = "shared_not_publishable":
        "an image shared with projects cannot be published; stop sharing it first",
    FullEcsNotPublishable = "full_ecs_not_publishable":
        "a full-ECS image cannot be made public or published to the marketplace",
    PublisherInvalid = "publisher_invalid":
        "the publisher's name is empty, longer than 128 characters or holds control characters",
    PriceNoteTooLong = "price_note_too_long":
        "the price note is longer than 256 characters or holds control characters",
    FullEcsNotCopyable = "full_ecs_not_copyable":
        "a full-ECS image cannot be copied within its region",
    TooManyFullEcsMembers = "too_many_full_ecs_members": "a full-ECS image has at most 10 members",
    TooManyDataImages = "too_many_data_images":
        "at most 3 data-disk images are registered with a system disk",
    TooManyDataDisks = "too_many_data_disks": "a full-ECS image has at most 23 data disks",
}

impl fmt::Display for RuleCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for RuleCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Everything that can go wrong in a call of the image service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A rule of the service refuses the request: `code` is stable, `message` says what to
    /// change. Shown as `CODE: message`.
    #[error("{code}: {message}")]
    Rule {
        /// Which rule refused.
        code: RuleCode,
        /// What to change, for a person.
        message: String,
    },

    /// An error of the image layers (reading, writing or converting an image, the store, the
    /// catalog's I/O, a cancellation), shown as that error is.
    #[error(transparent)]
    Image(#[from] crate::Error),
}

impl ServiceError {
    /// A refusal by the rule `code`.
    pub fn rule(code: RuleCode, message: impl Into<String>) -> ServiceError {
        ServiceError::Rule {
            code,
            message: message.into(),
        }
    }

    /// The rule's code, when this is a refusal by a rule.
    pub fn code(&self) -> Option<RuleCode> {
        match self {
            ServiceError::Rule { code, .. } => Some(*code),
            ServiceError::Image(_) => None,
        }
    }

    /// A short, stable name: the rule's code string, or the image error's
    /// [`kind`](crate::Error::kind) (`io`, `cancelled`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceError::Rule { code, .. } => code.as_str(),
            ServiceError::Image(e) => e.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code strings are a contract (CLI output, tests, an HTTP API's mapping): these are
    /// the strings of `rules::CODES` before the codes became an enum, in its order, then the
    /// codes added since, each at the end.
    const STRINGS: &[&str] = &[
        "name_invalid",
        "name_too_long",
        "description_too_long",
        "tag_invalid",
        "too_many_tags",
        "tag_key_too_long",
        "tag_value_too_long",
        "format_unsupported",
        "reference_refused",
        "image_unreadable",
        "file_too_large",
        "virtual_size_too_large",
        "system_disk_without_os",
        "iso_type_mismatch",
        "os_version_required",
        "full_ecs_not_registrable",
        "architecture_mismatch",
        "firmware_mismatch",
        "aarch64_needs_uefi",
        "min_disk_out_of_range",
        "min_disk_below_virtual_size",
        "min_ram_out_of_range",
        "quota_exceeded",
        "image_not_found",
        "not_owner",
        "image_not_active",
        "field_immutable",
        "share_to_owner",
        "member_region_mismatch",
        "too_many_members",
        "encrypted_not_shareable",
        "full_ecs_not_shareable",
        "marketplace_not_shareable",
        "not_member",
        "same_region",
        "kms_key_required",
        "export_size_too_small",
        "not_operator",
        "image_protected",
        "public_not_shareable",
        "already_published",
        "not_published",
        "shared_not_publishable",
        "full_ecs_not_publishable",
        "publisher_invalid",
        "price_note_too_long",
        "full_ecs_not_copyable",
        "too_many_full_ecs_members",
        "too_many_data_images",
        "too_many_data_disks",
    ];

    #[test]
    fn every_code_keeps_its_string_and_serializes_as_it() {
        let strings: Vec<&str> = RuleCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(strings, STRINGS);
        for c in RuleCode::ALL {
            assert_eq!(
                serde_json::to_string(c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
            assert_eq!(c.to_string(), c.as_str());
            assert!(!c.meaning().is_empty());
        }
    }

    #[test]
    fn the_catalog_spec_lists_every_code_with_its_meaning() {
        let spec = include_str!("../../formats/catalog.md");
        for c in RuleCode::ALL {
            let row = format!("| `{}` | {} |", c.as_str(), c.meaning().replace('|', "\\|"));
            assert!(spec.contains(&row), "formats/catalog.md lacks {row}");
        }
    }

    #[test]
    fn a_refusal_shows_its_code_and_an_image_error_shows_itself() {
        let e = ServiceError::rule(RuleCode::QuotaExceeded, "delete some first");
        assert_eq!(e.to_string(), "quota_exceeded: delete some first");
        assert_eq!(
            (e.code(), e.kind()),
            (Some(RuleCode::QuotaExceeded), "quota_exceeded")
        );
        let e = ServiceError::from(crate::Error::Cancelled);
        assert_eq!((e.code(), e.kind()), (None, "cancelled"));
        assert_eq!(e.to_string(), "cancelled");
    }
}
