//! What `info` reports of a QCOW2 image, with qemu-img's keys.

use serde::Serialize;

/// The `format-specific` data of a QCOW2 image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Qcow2Info {
    /// `1.1` (version 3) or `0.10` (version 2).
    pub compat: String,
    /// `zlib` or `zstd`.
    pub compression_type: String,
    /// Version 3 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy_refcounts: Option<bool>,
    pub refcount_bits: u64,
    /// Version 3 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<bool>,
    /// Version 3 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_l2: Option<bool>,
    /// Version 3 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<bool>,
    pub cluster_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename_format: Option<String>,
    /// The internal snapshots (listed only; ims reads the active state).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Qcow2SnapshotInfo>,
}

/// One internal snapshot, as qemu-img lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Qcow2SnapshotInfo {
    pub id: String,
    pub name: String,
    pub vm_state_size: u64,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_sec: u64,
    pub vm_clock_nsec: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icount: Option<u64>,
}
