//! What `info` says about each format, typed: each format's reader fills its own variant, and
//! the JSON of `ims info` (qemu-img's `format-specific`, `{"type": .., "data": {..}}`) is derived
//! from it, so no layer parses format details back out of JSON.

use serde::Serialize;

pub use super::qcow1::info::QcowInfo;
pub use super::qcow2::info::{Qcow2Info, Qcow2SnapshotInfo};
pub use super::qed::info::QedInfo;
pub use super::vdi::info::VdiInfo;
pub use super::vhd::info::{VhdInfo, VhdLocatorInfo};
pub use super::vhdx::info::VhdxInfo;
pub use super::vmdk::info::{VmdkExtentInfo, VmdkInfo};
pub use super::zvhd::info::{Zvhd2Info, ZvhdInfo};

/// The format-specific facts of an opened image.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
#[non_exhaustive]
pub enum FormatInfo {
    /// A QCOW2 image.
    Qcow2(Qcow2Info),
    /// A VMDK image.
    Vmdk(VmdkInfo),
    /// A VHD image.
    Vhd(VhdInfo),
    /// A VHDX image.
    Vhdx(VhdxInfo),
    /// A ZVHD image.
    Zvhd(ZvhdInfo),
    /// A ZVHD2 image.
    Zvhd2(Zvhd2Info),
    /// A VDI image.
    Vdi(VdiInfo),
    /// A QED image.
    Qed(QedInfo),
    /// A QCOW version 1 image.
    Qcow(QcowInfo),
}

impl FormatInfo {
    /// The cluster size, for the formats that have one (qemu-img's top-level `cluster-size`).
    pub fn cluster_size(&self) -> Option<u64> {
        match self {
            FormatInfo::Qcow2(q) => Some(q.cluster_size),
            // qemu-img reports a VHDX's block size as its cluster size.
            FormatInfo::Vhdx(v) => Some(u64::from(v.block_size)),
            FormatInfo::Vdi(v) => Some(v.cluster_size),
            FormatInfo::Qed(q) => Some(q.cluster_size),
            FormatInfo::Qcow(q) => Some(q.cluster_size),
            _ => None,
        }
    }

    /// The backing file the image names, and its format where recorded.
    pub fn backing_file(&self) -> Option<(&str, Option<&str>)> {
        match self {
            FormatInfo::Qcow2(q) => q
                .backing_filename
                .as_deref()
                .map(|name| (name, q.backing_filename_format.as_deref())),
            FormatInfo::Qed(q) => q
                .backing_filename
                .as_deref()
                .map(|name| (name, q.backing_filename_format.as_deref())),
            FormatInfo::Qcow(q) => q.backing_filename.as_deref().map(|name| (name, None)),
            _ => None,
        }
    }

    /// Whether the image says it was not closed cleanly (qcow2's dirty bit).
    pub fn dirty(&self) -> bool {
        match self {
            FormatInfo::Qcow2(q) => q.dirty == Some(true),
            _ => false,
        }
    }

    /// The size of the disk that was compressed, where the format rounds its disk size up
    /// (ZVHD and ZVHD2 report whole GiB).
    pub fn original_size(&self) -> Option<u64> {
        match self {
            FormatInfo::Zvhd(z) => Some(z.orig_size),
            FormatInfo::Zvhd2(z) => Some(z.orig_size),
            _ => None,
        }
    }
}
