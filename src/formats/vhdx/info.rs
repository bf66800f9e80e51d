//! What `info` reports of a VHDX image.

use serde::Serialize;

/// The `format-specific` data of a VHDX image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VhdxInfo {
    /// `fixed` (LeaveBlockAllocated), `dynamic` or `differencing` (HasParent).
    pub subformat: String,
    /// The file type identifier's creator (`QEMU v10.0.2`, `Microsoft Windows 10.0.19045.0`).
    pub creator: String,
    /// Bytes per payload block.
    pub block_size: u32,
    /// Bytes of the log region.
    pub log_size: u32,
    /// The sector size the disk shows its guest.
    pub logical_sector_size: u32,
    /// The physical sector size the disk reports.
    pub physical_sector_size: u32,
    /// `VirtualDiskId` (the SCSI page 83 identity), as a UUID.
    pub virtual_disk_id: String,
    /// The current header's `DataWriteGuid`, as a UUID (what a child's `parent_linkage` names).
    pub data_write_guid: String,
    /// Log entries applied in memory when the image was opened (0 for a cleanly closed file).
    pub log_entries_replayed: u64,
    /// The parent locator's entries (differencing disks), key and value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_locator: Option<Vec<(String, String)>>,
}
