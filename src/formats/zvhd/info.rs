//! What `info` reports of ZVHD and ZVHD2 images.

use serde::Serialize;

/// The `format-specific` data of a ZVHD image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ZvhdInfo {
    /// The size of the disk that was compressed (the reported size is rounded up to a GiB).
    pub orig_size: u64,
    /// When the image was made, in seconds since the Unix epoch.
    pub creation_time: u64,
    /// The header's `uuid`.
    pub uuid: String,
    /// The creator application and version from the header.
    pub creator: String,
    /// Bytes of disk per record.
    pub block_size: u64,
    /// Blocks with a record, from a scan of the record heads (random-access sources only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_blocks: Option<u64>,
    /// Why the scan of the record heads failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_error: Option<String>,
    /// How much of the image `info` looked at.
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
    /// Bytes of disk per block.
    pub block_size: u64,
    /// Blocks stored (`non_zero_blk_num`); the others read as zeros.
    pub data_blocks: u64,
    /// When the image was made, in seconds since the Unix epoch.
    pub creation_time: u64,
    /// The footer's `uuid`.
    pub uuid: String,
    /// The creator application and version from the footer.
    pub creator: String,
}
