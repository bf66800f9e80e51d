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
    /// Width of a refcount in bits.
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
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// The backing file the header names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    /// The backing file's format, from the backing format extension.
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
    /// The snapshot's unique id.
    pub id: String,
    /// The snapshot's name.
    pub name: String,
    /// Bytes of saved VM state.
    pub vm_state_size: u64,
    /// When the snapshot was taken: seconds since the Unix epoch.
    pub date_sec: u32,
    /// When the snapshot was taken: the nanoseconds part.
    pub date_nsec: u32,
    /// The guest's clock at the snapshot: whole seconds.
    pub vm_clock_sec: u64,
    /// The guest's clock at the snapshot: the nanoseconds part.
    pub vm_clock_nsec: u64,
    /// Guest instructions executed, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icount: Option<u64>,
}
