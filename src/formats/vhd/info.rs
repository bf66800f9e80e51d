//! What `info` reports of a VHD image.

use serde::Serialize;

/// The `format-specific` data of a VHD image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VhdInfo {
    /// `fixed`, `dynamic` or `differencing`.
    pub subformat: String,
    pub creator: String,
    /// Which field the disk size was taken from.
    pub size_source: String,
    pub current_size: u64,
    /// `cylinders/heads/sectors`.
    pub geometry: String,
    pub unique_id: String,
    /// Set when the footer copy at offset 0 was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_unique_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_locators: Option<Vec<VhdLocatorInfo>>,
}

/// One parent locator of a differencing disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VhdLocatorInfo {
    pub platform: String,
    pub path: String,
}
