//! What `info` reports of a VDI image.

use serde::Serialize;

/// The `format-specific` data of a VDI image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VdiInfo {
    /// `dynamic`, `static` or `differencing`.
    pub image_type: String,
    /// Bytes per block (qemu-img's top-level `cluster-size`).
    #[serde(skip)]
    pub cluster_size: u64,
    /// The image's `uuid_image`.
    pub uuid: String,
    /// The parent's `uuid_image` (`uuid_link`), in a differencing image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_uuid: Option<String>,
    /// Entries in the block map.
    pub blocks_in_image: u32,
    /// Blocks stored in the file.
    pub blocks_allocated: u32,
    /// The header's description, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}
