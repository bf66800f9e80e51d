//! What `info` reports of a VMDK image, with qemu-img's keys.

use serde::Serialize;

use super::descriptor::Descriptor;

/// The `format-specific` data of a VMDK image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmdkInfo {
    /// The descriptor's content id (none for an extent opened without a descriptor).
    pub cid: Option<u32>,
    /// The parent's content id (`parentCID`).
    pub parent_cid: Option<u32>,
    /// The descriptor's `createType`.
    pub create_type: Option<String>,
    /// The parent's file name, for a child disk.
    pub parent_file_name_hint: Option<String>,
    /// The extents, in disk order.
    pub extents: Vec<VmdkExtentInfo>,
}

impl VmdkInfo {
    /// What the descriptor says (none for an extent opened without one), with the extents.
    pub fn new(descriptor: Option<&Descriptor>, extents: Vec<VmdkExtentInfo>) -> VmdkInfo {
        VmdkInfo {
            cid: descriptor.map(|d| d.cid),
            parent_cid: descriptor.map(|d| d.parent_cid),
            create_type: descriptor.and_then(|d| d.create_type.clone()),
            parent_file_name_hint: descriptor.and_then(|d| d.parent_file_name_hint.clone()),
            extents,
        }
    }
}

/// One extent of a VMDK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmdkExtentInfo {
    /// The extent's file, as the descriptor names it.
    pub filename: String,
    /// Bytes of the disk the extent holds.
    pub virtual_size: u64,
    /// `SPARSE`, `FLAT`, `ZERO`, or the descriptor's type of an extent that was not opened.
    pub format: String,
    /// The grain size of a sparse extent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// Whether a sparse extent's grains are compressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed: Option<bool>,
}
