//! What `info` reports of a QED image.

use serde::Serialize;

/// The `format-specific` data of a QED image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct QedInfo {
    /// Bytes per cluster (qemu-img's top-level `cluster-size`).
    pub cluster_size: u64,
    /// Clusters per table.
    pub table_size: u32,
    /// Clusters of header.
    pub header_size: u32,
    /// The need-check flag was set (the tables were checked at open and found clean).
    pub need_check: bool,
    /// The backing file's name, as the image records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    /// `raw` when the image says its backing file must not be probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename_format: Option<String>,
}
