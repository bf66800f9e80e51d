//! The image record: what the catalog keeps about one image, in the shape of an IMS image.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Who may see an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Visibility {
    /// Only the owner project (and members it shared the image with, once they accept).
    Private,
    /// A private image with at least one member.
    Shared,
    /// Seeded by an operator; visible to every project of the region.
    Public,
}

/// The class of an image as IMS's `__imagetype` names it: what a list filter by "kind of
/// offering" asks for. Derived from the record ([`ImageRecord::class`]), never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ImageClass {
    /// A public image (IMS: `gold`).
    Gold,
    /// A private image, neither shared nor published.
    Private,
    /// A private image shared with member projects.
    Shared,
    /// An image published to the marketplace (IMS: `market`).
    Market,
}

/// What the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ImageType {
    /// A bootable system disk.
    System,
    /// A data disk.
    Data,
    /// A whole server: a system disk and data disks (made from a server or a CBR backup).
    FullEcs,
    /// An ISO 9660 installation image.
    Iso,
}

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// Created; no data written yet.
    Queued,
    /// Its data is being written to the store.
    Saving,
    /// Its data is durable in the store; usable.
    Active,
    /// Registration failed or was interrupted (`status_reason` says why); no data is kept.
    Killed,
    /// Deleted by its owner; kept for the record, invisible in lists.
    Deleted,
    /// Active, with its data withheld by its owner or an operator (the OpenStack Image API's
    /// `deactivate`): it stays listed, but nothing reads its data until it is reactivated.
    Deactivated,
}

/// A member project's answer to a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum MemberStatus {
    /// Shared, not yet answered: the member may see the image but not use it.
    Pending,
    /// Accepted: the image is in the member's list and the member may use it.
    Accepted,
    /// Rejected: the image leaves the member's list.
    Rejected,
}

macro_rules! names {
    ($t:ty, $what:literal, $($v:ident = $s:literal),+) => {
        impl $t {
            /// The name as the record, the API and the CLI write it.
            pub fn name(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
        impl FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok(Self::$v),)+
                    _ => Err(Error::InvalidArgument(format!(
                        concat!("unknown ", $what, " '{}' (known: {})"),
                        s,
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}

names!(
    Visibility,
    "visibility",
    Private = "private",
    Shared = "shared",
    Public = "public"
);
names!(
    ImageClass,
    "image class",
    Gold = "gold",
    Private = "private",
    Shared = "shared",
    Market = "market"
);
names!(
    ImageType,
    "image type",
    System = "system",
    Data = "data",
    FullEcs = "full_ecs",
    Iso = "iso"
);
names!(
    Status,
    "status",
    Queued = "queued",
    Saving = "saving",
    Active = "active",
    Killed = "killed",
    Deleted = "deleted",
    Deactivated = "deactivated"
);
names!(
    MemberStatus,
    "member status",
    Pending = "pending",
    Accepted = "accepted",
    Rejected = "rejected"
);

/// What an ISO image says of itself, as inspection found it (formats/iso.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsoMedium {
    /// The primary volume descriptor's volume identifier.
    pub volume_label: Option<String>,
    /// It has a bootable El Torito entry for x86 BIOS machines.
    pub bios: bool,
    /// It has a bootable El Torito entry for UEFI machines.
    pub uefi: bool,
    /// The product the medium installs, as it names it (`.disk/info`, `.treeinfo`).
    pub product_name: Option<String>,
}

/// What the image supports, decided from what inspection found (see [`Features::from_inspection`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// User data (a script, cloud-config) can be injected at first boot: cloud-init (Linux) or
    /// Cloudbase-Init (Windows) is installed.
    pub support_user_data: bool,
    /// Disks can be attached and detached while the server runs: the guest has a virtio block
    /// or SCSI driver (virtio_blk, virtio_scsi; viostor, vioscsi), which KVM hot-plug needs.
    pub support_disk_hotswap: bool,
}

impl Features {
    /// The rule: user data needs cloud-init or Cloudbase-Init; disk hot swap needs a virtio
    /// block or SCSI driver in the guest. Data disks and ISOs support neither.
    pub fn from_inspection(found: &crate::inspect::Inspection) -> Features {
        let system = found.image_kind == crate::inspect::ImageKind::System;
        Features {
            support_user_data: system && found.cloud_init,
            support_disk_hotswap: system && found.virtio,
        }
    }
}

/// The image's data as stored: digests of the stored file's bytes, in lowercase hex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    /// SHA-256 of the stored file's bytes, hex.
    pub sha256: String,
    /// SHA-512 of the stored file's bytes, hex.
    pub sha512: String,
    /// MD5 of the stored file's bytes, hex: Glance's `checksum`, which its clients verify
    /// downloads with (empty in records stored before it was kept).
    #[serde(default)]
    pub md5: String,
}

/// One disk of a full-ECS image, as stored: each disk of a server is registered through the
/// same probe, rules and conversion as a single image, and keeps its own facts here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// `system` for the server's system disk (the first), `data` for a data disk.
    pub role: ImageType,
    /// The uploaded file's format (`qcow2`, `vmdk`, ...).
    pub source_format: String,
    /// The uploaded file's length, bytes.
    pub source_size: u64,
    /// The disk's size, bytes.
    pub virtual_size: u64,
    /// The smallest disk, in GiB, this disk may be restored to.
    pub min_disk: u32,
    /// The stored file's format: `zvhd2`, `qcow2` or `raw`.
    pub store_format: String,
    /// The stored file's length, bytes.
    pub store_size: u64,
    /// The store's key of the disk's data (`REGION/ID.FORMAT` for the system disk,
    /// `REGION/ID.dataN.FORMAT` for data disk N, counted from 1).
    pub store_key: String,
    /// Digests of the stored file.
    pub checksum: Checksum,
}

/// One image. The fields IMS also has carry its names (`id`, `name`, `owner`, `visibility`,
/// `status`, `min_disk`, `min_ram`, `virtual_size`, `tags`, `checksum`, `created_at`,
/// `updated_at`) or say which IMS attribute they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id (a UUID).
    pub id: String,
    /// The image name, 1 to 128 characters.
    pub name: String,
    /// The description, at most 1024 characters (IMS: `__description`).
    pub description: String,
    /// The owner project.
    pub owner: String,
    /// The region the image lives in.
    pub region: String,
    /// Who may see it.
    pub visibility: Visibility,
    /// What the image is: system disk, data disk, full-ECS or ISO.
    pub image_type: ImageType,
    /// Where the record is in its life.
    pub status: Status,
    /// Why the record was killed.
    pub status_reason: Option<String>,
    /// `Linux`, `Windows` or `Other` (IMS: `__os_type`).
    pub os_type: String,
    /// As IMS writes it: `Ubuntu 22.04 64bit` (IMS: `__os_version`).
    pub os_version: String,
    /// The distribution family: `Ubuntu`, `CentOS`, `Windows`, `Other` (IMS: `__platform`).
    pub platform: String,
    /// 32 or 64, where known (IMS: `__os_bit`).
    pub os_bit: Option<u32>,
    /// `x86_64`, `aarch64`, or `unknown`.
    pub architecture: String,
    /// `bios`, `uefi` (UEFI and BIOS both found counts as `uefi`), or `unknown` (IMS:
    /// `hw_firmware_type`).
    pub firmware: String,
    /// The smallest disk, in GiB, a server may boot it from.
    pub min_disk: u32,
    /// The smallest memory, in MiB (0: no minimum).
    pub min_ram: u32,
    /// The uploaded file's format (`qcow2`, `vmdk`, ...).
    pub source_format: String,
    /// The uploaded file's length, bytes.
    pub source_size: u64,
    /// The stored file's format: `zvhd2`, `qcow2` or `raw` (IMS: `disk_format`).
    pub store_format: String,
    /// The stored file's length, bytes.
    pub store_size: u64,
    /// The store's key of the data (`REGION/ID.FORMAT`).
    pub store_key: String,
    /// The disk's size, bytes.
    pub virtual_size: u64,
    /// Digests of the stored file.
    pub checksum: Checksum,
    /// What the image supports.
    pub features: Features,
    /// For an ISO image: what the medium says of itself (`null` for disks).
    #[serde(default)]
    pub iso: Option<IsoMedium>,
    /// Whether the image is encrypted (then it cannot be shared, and a replica needs a key).
    pub encrypted: bool,
    /// The key that encrypts the image, when `encrypted` (IMS: `__system__cmkid`).
    pub kms_key_id: Option<String>,
    /// The tags, key to value.
    pub tags: BTreeMap<String, String>,
    /// For a full-ECS image: the CBR backup it was made from (IMS: `__backup_id`).
    pub backup_id: Option<String>,
    /// For a system image registered together with data-disk images (IMS's `data_images`):
    /// their image ids.
    pub data_images: Vec<String>,
    /// For a full-ECS image: every disk, the system disk first (its fields are also the
    /// record's own: `store_key`, `checksum`, ...). Empty for other images.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Public and protected: only an operator may change or delete it (IMS: `protected`).
    #[serde(default)]
    pub protected: bool,
    /// Published to the marketplace (then it cannot be shared).
    pub marketplace: bool,
    /// For a marketplace image: who publishes it.
    #[serde(default)]
    pub publisher: Option<String>,
    /// For a marketplace image: the publisher's note on its price (free text).
    #[serde(default)]
    pub price_note: Option<String>,
    /// The image this one was replicated from.
    pub copied_from: Option<String>,
    /// Properties a client of the OpenStack Image API set that ims gives no meaning to
    /// (Glance's custom properties and `container_format`), name to value.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// While the record waits for its data: the bytes staged for an import (the OpenStack
    /// Image API's `stage`, kept in the store until the import), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_size: Option<u64>,
    /// When the record was made, RFC 3339, UTC.
    pub created_at: String,
    /// When the record last changed, RFC 3339, UTC.
    pub updated_at: String,
}

impl ImageRecord {
    /// A queued record with everything else unknown, owned by `owner` in `region`.
    pub fn new(name: &str, owner: &str, region: &str, image_type: ImageType) -> ImageRecord {
        let now = now();
        ImageRecord {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            description: String::new(),
            owner: owner.to_string(),
            region: region.to_string(),
            visibility: Visibility::Private,
            image_type,
            status: Status::Queued,
            status_reason: None,
            os_type: "Other".into(),
            os_version: String::new(),
            platform: "Other".into(),
            os_bit: None,
            architecture: "unknown".into(),
            firmware: "unknown".into(),
            min_disk: 1,
            min_ram: 0,
            source_format: String::new(),
            source_size: 0,
            store_format: String::new(),
            store_size: 0,
            store_key: String::new(),
            virtual_size: 0,
            checksum: Checksum::default(),
            features: Features::default(),
            iso: None,
            encrypted: false,
            kms_key_id: None,
            tags: BTreeMap::new(),
            backup_id: None,
            data_images: Vec::new(),
            disks: Vec::new(),
            protected: false,
            marketplace: false,
            publisher: None,
            price_note: None,
            copied_from: None,
            properties: BTreeMap::new(),
            staged_size: None,
            created_at: now.clone(),
            updated_at: now,
        }
    }

    /// Every store key holding the image's data: the record's own, and each full-ECS disk's.
    pub fn store_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::with_capacity(1 + self.disks.len());
        if !self.store_key.is_empty() {
            keys.push(&self.store_key);
        }
        for d in &self.disks {
            if !d.store_key.is_empty() && !keys.contains(&d.store_key.as_str()) {
                keys.push(&d.store_key);
            }
        }
        keys
    }

    /// The image's class as IMS's `__imagetype` names it.
    pub fn class(&self) -> ImageClass {
        match self.visibility {
            Visibility::Public => ImageClass::Gold,
            _ if self.marketplace => ImageClass::Market,
            Visibility::Shared => ImageClass::Shared,
            Visibility::Private => ImageClass::Private,
        }
    }

    /// Offered to every project of its region: public, or on the marketplace, and active
    /// (deactivated too: it stays listed).
    pub fn offered_to_all(&self) -> bool {
        (self.visibility == Visibility::Public || self.marketplace) && self.has_data()
    }

    /// Whether its data is stored and whole: active, or deactivated (withheld, still there).
    /// Only then do its sizes and hashes describe stored bytes.
    pub fn has_data(&self) -> bool {
        matches!(self.status, Status::Active | Status::Deactivated)
    }

    /// Counts against the owner's private-image quota: neither killed nor deleted, not public.
    pub fn counts_for_quota(&self) -> bool {
        self.visibility != Visibility::Public
            && !matches!(self.status, Status::Killed | Status::Deleted)
    }
}

/// A member project of a shared image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The shared image.
    pub image_id: String,
    /// The member project (IMS: `member_id`).
    pub project: String,
    /// Its answer.
    pub status: MemberStatus,
    /// When the image was shared with it, RFC 3339, UTC.
    pub created_at: String,
    /// When its status last changed, RFC 3339, UTC.
    pub updated_at: String,
}

/// Now, as RFC 3339 UTC with seconds (`2026-11-25T18:40:00Z`).
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since 1970 as RFC 3339 UTC (civil-from-days, Howard Hinnant's algorithm).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn keys_and_classes() {
        let mut r = ImageRecord::new("a", "o", "r1", ImageType::FullEcs);
        assert!(r.store_keys().is_empty());
        r.store_key = "r1/x.zvhd2".into();
        let disk = |key: &str| Disk {
            role: ImageType::Data,
            source_format: "raw".into(),
            source_size: 0,
            virtual_size: 0,
            min_disk: 1,
            store_format: "zvhd2".into(),
            store_size: 0,
            store_key: key.into(),
            checksum: Checksum::default(),
        };
        r.disks = vec![disk("r1/x.zvhd2"), disk("r1/x.data1.zvhd2")];
        assert_eq!(r.store_keys(), ["r1/x.zvhd2", "r1/x.data1.zvhd2"]);
        assert_eq!(r.class(), ImageClass::Private);
        r.marketplace = true;
        assert_eq!(r.class(), ImageClass::Market);
        assert!(!r.offered_to_all(), "queued");
        r.status = Status::Active;
        assert!(r.offered_to_all());
        r.marketplace = false;
        r.visibility = Visibility::Public;
        assert_eq!(r.class(), ImageClass::Gold);
    }

    #[test]
    fn a_record_of_an_older_catalog_decodes() {
        let mut v =
            serde_json::to_value(ImageRecord::new("a", "o", "r1", ImageType::System)).unwrap();
        let m = v.as_object_mut().unwrap();
        for field in ["disks", "protected", "publisher", "price_note"] {
            m.remove(field);
        }
        let r: ImageRecord = serde_json::from_value(v).unwrap();
        assert!(r.disks.is_empty() && !r.protected && r.publisher.is_none());
    }

    #[test]
    fn names_round_trip() {
        for s in ["system", "data", "full_ecs", "iso"] {
            assert_eq!(s.parse::<ImageType>().unwrap().name(), s);
        }
        assert!("floppy".parse::<ImageType>().is_err());
        assert_eq!(
            serde_json::to_string(&ImageType::FullEcs).unwrap(),
            "\"full_ecs\""
        );
    }
}
