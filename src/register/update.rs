//! Updates: what an owner may change in an image's record, as a typed [`RecordUpdate`].

use super::error::Result;
use super::record::{self, ImageRecord};
use super::tag::{Tag, tag_map};
use super::{Ims, Scope, rules};

/// The changes of [`Ims::update`]: each field given (`Some`) is checked by its rule and replaces
/// the record's; `None` leaves it. These are the only fields an owner may change (IMS's names);
/// the fields that describe the stored data cannot change (`field_immutable`, from a parser of
/// field names such as the CLI's `--set FIELD=VALUE`).
///
/// ```
/// use ims::register::{RecordUpdate, Tag};
/// # fn main() -> ims::register::Result<()> {
/// let update = RecordUpdate {
///     name: Some("web-2".into()),
///     tags: Some(vec![Tag::new("env", "prod")?]),
///     ..RecordUpdate::default()
/// };
/// # assert!(update.description.is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordUpdate {
    /// `name`: 1 to 128 characters.
    pub name: Option<String>,
    /// `description`: at most 1024 characters.
    pub description: Option<String>,
    /// `min_disk`, GiB: 1 to 1024, never below the disk's size.
    pub min_disk: Option<u64>,
    /// `min_ram`, MiB: at most 1048576.
    pub min_ram: Option<u64>,
    /// `tags`: replace them all (an empty list removes every tag); at most 10 keys.
    pub tags: Option<Vec<Tag>>,
    /// `support_user_data`.
    pub support_user_data: Option<bool>,
    /// `support_disk_hotswap`.
    pub support_disk_hotswap: Option<bool>,
}

impl Ims {
    /// Changes the fields of image `id` that `update` gives; only its owner may (a protected,
    /// public image: only an operator). Every rule is
    /// checked before anything is written: a refused update changes nothing. `updated_at` is
    /// set; returns the record as stored.
    pub fn update(&self, scope: &Scope, id: &str, update: &RecordUpdate) -> Result<ImageRecord> {
        let mut r = self.show(scope, id)?;
        self.check_may_change(&r, scope)?;
        if let Some(name) = &update.name {
            rules::check_name(name)?;
            r.name = name.clone();
        }
        if let Some(description) = &update.description {
            rules::check_description(description)?;
            r.description = description.clone();
        }
        if let Some(n) = update.min_disk {
            rules::check_min_disk(n, r.virtual_size)?;
            r.min_disk = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = update.min_ram {
            rules::check_min_ram(n)?;
            r.min_ram = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(tags) = &update.tags {
            r.tags = tag_map(tags)?;
        }
        if let Some(v) = update.support_user_data {
            r.features.support_user_data = v;
        }
        if let Some(v) = update.support_disk_hotswap {
            r.features.support_disk_hotswap = v;
        }
        r.updated_at = record::now();
        self.catalog.update(&r)?;
        Ok(r)
    }
}
