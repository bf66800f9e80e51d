//! What `info` reports of a QCOW version 1 image.

use serde::Serialize;

/// The `format-specific` data of a QCOW version 1 image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct QcowInfo {
    /// Bytes per cluster (qemu-img's top-level `cluster-size`).
    pub cluster_size: u64,
    /// log2 of the entries per L2 table.
    pub l2_bits: u8,
    /// The backing file's name, as the image records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
}
