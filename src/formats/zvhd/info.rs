//! What `info` reports of ZVHD and ZVHD2 images.

use serde::Serialize;

/// The `format-specific` data of a ZVHD image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ZvhdInfo {
    /// The size of the disk that was compressed (the reported size is rounded up to a GiB).
    pub orig_size: u64,
    pub creation_time: u64,
    pub uuid: String,
    pub creator: String,
    pub block_size: u64,
    /// Blocks with a record, from a scan of the record heads (random-access sources only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_blocks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The `format-specific` data of a ZVHD2 image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Zvhd2Info {
    /// `zstd` or `zlib`.
    pub compression_type: String,
    /// The size of the disk that was compressed (the reported size is rounded up to a GiB).
    pub orig_size: u64,
    pub block_size: u64,
    pub data_blocks: u64,
    pub creation_time: u64,
    pub uuid: String,
    pub creator: String,
}
