//! IMS's error codes (`IMG.xxxx`, API reference section "Error Codes") for ims's refusals:
//! each [`RuleCode`] has exactly one IMG code ([`img_code`]), and failures that are not a
//! rule's have theirs ([`img_error`]). formats/ims-errors.md lists the same table; a test keeps
//! the two in step.
//!
//! IMS's codes are coarser than the rules: where IMS has one code for several of ims's refusals
//! (a tag's key or value too long, and a malformed tag, are all IMS's "bad tag"), they share
//! it, and the rule's own code stays first in the message ([`img_error`]), so a client still
//! tells them apart.

use super::error::{RuleCode, ServiceError};

/// One IMS error code: the code, the HTTP status IMS answers with, and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImgCode {
    /// `IMG.0015`.
    pub code: &'static str,
    /// The HTTP status of a synchronous refusal with this code.
    pub http_status: u16,
    /// What it means, in a few words.
    pub meaning: &'static str,
}

macro_rules! img_codes {
    ($($name:ident = $code:literal, $status:literal, $meaning:literal;)+) => {
        $(
            #[doc = concat!("`", $code, "`: ", $meaning, ".")]
            pub const $name: ImgCode = ImgCode { code: $code, http_status: $status, meaning: $meaning };
        )+
        /// Every IMG code ims answers with, in the order of formats/ims-errors.md.
        pub const ALL: &[ImgCode] = &[$($name),+];
    };
}

img_codes! {
    BAD_BODY = "IMG.0001", 400, "the request body is malformed";
    NAME_TOO_LONG = "IMG.0002", 400, "the name is too long";
    BAD_NAME = "IMG.0003", 400, "the name is invalid";
    DESCRIPTION_TOO_LONG = "IMG.0004", 400, "the description is too long";
    EMPTY_BODY = "IMG.0007", 400, "the request body is empty";
    NO_NAME = "IMG.0013", 400, "the name is missing";
    QUOTA = "IMG.0015", 400, "the project's image quota is used up";
    BAD_URL = "IMG.0017", 400, "the object URL is invalid";
    BAD_IMAGE_TYPE = "IMG.0024", 400, "the image type is invalid for this request";
    NOT_AUTHORIZED = "IMG.0026", 403, "the project is not authorized to do this";
    IMAGE_UNKNOWN = "IMG.0027", 404, "the image does not exist";
    PROTECTED = "IMG.0028", 400, "the image is protected";
    UNUSABLE = "IMG.0046", 400, "the image is not in a usable status";
    BAD_DISK_OR_MEMORY = "IMG.0055", 400, "a memory or disk size is out of range";
    BAD_OS_VERSION = "IMG.0056", 400, "the OS version is invalid or unknown";
    FILE_UNREADABLE = "IMG.0057", 400, "the image file is empty, missing, unreadable or of an unknown format";
    FILE_TOO_LARGE = "IMG.0059", 400, "the image file is too large";
    UNKNOWN = "IMG.0061", 400, "an unknown error occurred";
    BAD_PROJECT = "IMG.0067", 400, "the project is invalid";
    EXPORT_EXISTS = "IMG.0070", 400, "the export target already exists";
    FORMAT_UNSUPPORTED = "IMG.0072", 400, "the file format is not supported";
    EXPORT_NAME_EMPTY = "IMG.0073", 400, "the export object name is empty";
    EXPORT_NAME_BAD = "IMG.0075", 400, "the export object name holds characters that are not allowed";
    SELF_SHARE = "IMG.0076", 400, "an image cannot be shared with its own project";
    SHARE_QUOTA = "IMG.0088", 400, "the image has its quota of members";
    PUBLIC_NOT_SHAREABLE = "IMG.0089", 400, "a public image cannot be shared";
    NOT_OWNER = "IMG.0092", 400, "only the image's owner may do this";
    ENCRYPTED_NOT_SHAREABLE = "IMG.0098", 400, "an encrypted image cannot be shared";
    UNSUPPORTED = "IMG.0105", 400, "the operation is not supported for this image";
    OTHER_TENANT = "IMG.0106", 400, "the image belongs to another tenant and is not shared with this one";
    BAD_TAG = "IMG.0115", 400, "a tag is invalid";
    TAG_QUOTA = "IMG.0116", 400, "the image has too many tags";
    BAD_OS_TYPE = "IMG.0122", 400, "the OS type is invalid";
    FULL_ECS_NOT_SHAREABLE = "IMG.0135", 400, "this full-ECS image cannot be shared";
    BAD_FIRMWARE = "IMG.0141", 400, "the boot firmware type is invalid";
    ISO_WITHOUT_OS = "IMG.0166", 400, "an ISO image needs its OS information";
    NOT_FOR_ISO = "IMG.0167", 400, "the operation does not fit an ISO image";
    OTHER_REGION = "IMG.0177", 400, "the project is in another region";
    TARGET_IS_SOURCE = "IMG.0178", 400, "the target is the source";
    TOO_MANY_IMPORTS = "IMG.0194", 400, "too many files are imported at once";
    BAD_ARCHITECTURE = "IMG.0212", 400, "the architecture is invalid";
    REGISTER_FAILED = "IMG.1075", 400, "registering the image file failed";
}

/// The IMG code of a rule's refusal: one per rule code.
pub fn img_code(code: RuleCode) -> ImgCode {
    use RuleCode as R;
    match code {
        R::NameInvalid => BAD_NAME,
        R::NameTooLong => NAME_TOO_LONG,
        R::DescriptionTooLong => DESCRIPTION_TOO_LONG,
        R::TagInvalid | R::TagKeyTooLong | R::TagValueTooLong => BAD_TAG,
        R::TooManyTags => TAG_QUOTA,
        R::FormatUnsupported => FORMAT_UNSUPPORTED,
        R::ReferenceRefused => UNSUPPORTED,
        R::ImageUnreadable => FILE_UNREADABLE,
        R::FileTooLarge | R::VirtualSizeTooLarge => FILE_TOO_LARGE,
        R::SystemDiskWithoutOs => BAD_OS_VERSION,
        R::IsoTypeMismatch => NOT_FOR_ISO,
        R::OsVersionRequired => ISO_WITHOUT_OS,
        R::FullEcsNotRegistrable | R::FullEcsNotCopyable => BAD_IMAGE_TYPE,
        R::ArchitectureMismatch => BAD_ARCHITECTURE,
        R::FirmwareMismatch | R::Aarch64NeedsUefi => BAD_FIRMWARE,
        R::MinDiskOutOfRange
        | R::MinDiskBelowVirtualSize
        | R::MinRamOutOfRange
        | R::ExportSizeTooSmall => BAD_DISK_OR_MEMORY,
        R::QuotaExceeded => QUOTA,
        R::ImageNotFound => IMAGE_UNKNOWN,
        R::NotOwner => NOT_OWNER,
        R::ImageNotActive => UNUSABLE,
        R::FieldImmutable => BAD_BODY,
        R::ShareToOwner => SELF_SHARE,
        R::MemberRegionMismatch => OTHER_REGION,
        R::TooManyMembers | R::TooManyFullEcsMembers => SHARE_QUOTA,
        R::EncryptedNotShareable => ENCRYPTED_NOT_SHAREABLE,
        R::FullEcsNotShareable => FULL_ECS_NOT_SHAREABLE,
        R::PublicNotShareable | R::MarketplaceNotShareable => PUBLIC_NOT_SHAREABLE,
        R::NotMember => OTHER_TENANT,
        R::SameRegion => TARGET_IS_SOURCE,
        R::KmsKeyRequired
        | R::AlreadyPublished
        | R::NotPublished
        | R::SharedNotPublishable
        | R::FullEcsNotPublishable
        | R::PublisherInvalid
        | R::PriceNoteTooLong => UNSUPPORTED,
        R::NotOperator => NOT_AUTHORIZED,
        R::ImageProtected => PROTECTED,
        R::TooManyDataImages | R::TooManyDataDisks => TOO_MANY_IMPORTS,
    }
}

/// The IMG code and message of any failure of the service: a rule's refusal by
/// [`img_code`], its message led by the rule's own code (`tag_key_too_long: ...`); an error of
/// the image layers by its kind (a bad argument is a bad body, a cancellation or an internal
/// error unknown, anything else in `registering` a failed registration).
pub fn img_error(e: &ServiceError, registering: bool) -> (ImgCode, String) {
    match e {
        ServiceError::Rule { code, .. } => (img_code(*code), e.to_string()),
        ServiceError::Image(inner) => {
            let code = match inner.kind() {
                "invalid-argument" => BAD_BODY,
                "cancelled" | "internal" => UNKNOWN,
                _ if registering => REGISTER_FAILED,
                _ => UNKNOWN,
            };
            (code, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of formats/ims-errors.md's two tables.
    fn spec_rows() -> Vec<Vec<String>> {
        include_str!("../../formats/ims-errors.md")
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                l.trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().trim_matches('`').to_string())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_rule_code_has_its_row_in_the_spec() {
        let rows = spec_rows();
        for c in RuleCode::ALL {
            let img = img_code(*c);
            let want = vec![c.as_str().to_string(), img.code.to_string()];
            assert!(
                rows.iter().any(|r| r.len() == 2 && *r == want),
                "formats/ims-errors.md lacks | `{}` | `{}` |",
                c.as_str(),
                img.code
            );
        }
        let rule_rows = rows.iter().filter(|r| r.len() == 2).count();
        assert_eq!(rule_rows, RuleCode::ALL.len(), "a rule row too many");
    }

    #[test]
    fn every_img_code_has_its_row_in_the_spec_and_is_used_once_in_the_list() {
        let rows = spec_rows();
        for c in ALL {
            let want = vec![
                c.code.to_string(),
                c.http_status.to_string(),
                c.meaning.to_string(),
            ];
            assert!(
                rows.contains(&want),
                "formats/ims-errors.md lacks | `{}` | {} | {} |",
                c.code,
                c.http_status,
                c.meaning
            );
            assert_eq!(ALL.iter().filter(|o| o.code == c.code).count(), 1);
        }
        assert_eq!(rows.iter().filter(|r| r.len() == 3).count(), ALL.len());
        // Every code a rule maps to is in the list.
        for r in RuleCode::ALL {
            assert!(ALL.contains(&img_code(*r)));
        }
    }

    #[test]
    fn failures_carry_their_code_and_the_rule_stays_in_the_message() {
        let e = ServiceError::rule(RuleCode::TagKeyTooLong, "key of 40 characters");
        let (code, message) = img_error(&e, false);
        assert_eq!(code.code, "IMG.0115");
        assert!(message.starts_with("tag_key_too_long: "));
        let e = ServiceError::from(crate::Error::Cancelled);
        assert_eq!(img_error(&e, true).0, UNKNOWN);
        let e = ServiceError::from(crate::Error::io("read", std::io::Error::other("x")));
        assert_eq!(img_error(&e, true).0, REGISTER_FAILED);
        assert_eq!(img_error(&e, false).0, UNKNOWN);
        assert_eq!(img_code(RuleCode::NotOperator).http_status, 403);
        assert_eq!(img_code(RuleCode::ImageNotFound).http_status, 404);
    }
}
