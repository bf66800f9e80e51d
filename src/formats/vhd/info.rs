//! What `info` reports of a VHD image.

use serde::Serialize;

/// The `format-specific` data of a VHD image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VhdInfo {
    /// `fixed`, `dynamic` or `differencing`.
    pub subformat: String,
    /// The footer's `creator_application`, trimmed (`vpc`, `qemu`, `win`, ...).
    pub creator: String,
    /// Which field the disk size was taken from.
    pub size_source: String,
    /// The footer's `current_size`, in bytes.
    pub current_size: u64,
    /// `cylinders/heads/sectors`.
    pub geometry: String,
    /// The disk's `unique_id`, as a UUID.
    pub unique_id: String,
    /// Set when the footer copy at offset 0 was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footer: Option<String>,
    /// Bytes per block (dynamic and differencing disks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// The parent's file name from the dynamic header (differencing disks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_name: Option<String>,
    /// The parent's `unique_id`, as a UUID (differencing disks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_unique_id: Option<String>,
    /// The parent locators in use (differencing disks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_locators: Option<Vec<VhdLocatorInfo>>,
}

/// One parent locator of a differencing disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VhdLocatorInfo {
    /// The platform code (`W2ru`, `W2ku`, `MacX`, ...).
    pub platform: String,
    /// The parent's path, decoded.
    pub path: String,
}
