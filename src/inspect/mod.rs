//! Guest inspection: what a disk image holds, read straight through its [`BlockReader`] — no
//! mount, no loop device, no root, no VM — on any format ims opens.
//!
//! [`inspect`] reads the partition table ([`partitions`]: GPT with its CRCs and backup, MBR
//! with logical partitions, or none), identifies each volume by its superblock
//! ([`superblocks`]), maps linear LVM2 logical volumes ([`lvm`]), opens the file systems it
//! needs (ext2/3/4 through `ext4-view`, FAT through `fatfs`, NTFS through `ntfs`, XFS through
//! [`xfs`]) and reads the guest's facts:
//! Linux ones from its root file system ([`linux`]), Windows ones from its registry hives
//! ([`windows`], [`regf`]), the boot firmware from the EFI system partition and the boot code.
//!
//! The guest is not trusted: every offset and size it gives is checked, every read is capped
//! ([`MAX_FILE_READ`](crate::limits::MAX_FILE_READ)), symbolic links resolve inside the guest's
//! file system only, and the whole inspection has a read budget
//! ([`INSPECT_READ_BUDGET`](crate::limits::INSPECT_READ_BUDGET)). A damaged guest file system
//! gives unknown facts and a note; only an image that cannot be read is an error.

pub mod binary;
pub mod disk;
pub mod fs;
pub mod gpt;
pub mod iso9660;
pub mod linux;
pub mod lvm;
pub mod mbr;
pub mod ntfs;
pub mod partitions;
pub mod regf;
pub mod superblocks;
pub mod windows;
pub mod xfs;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::block::BlockReader;
use crate::error::{Error, Result};
use crate::limits::MAX_EFI_LOADERS;

use disk::{Disk, Volume};
use fs::{Ext4Fs, FatFs, GuestFs};
use partitions::{Partition, TableKind};
use superblocks::{FsId, FsKind};

/// What the image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ImageKind {
    /// A bootable system disk: an operating system was found.
    System,
    /// Anything else: file systems without an OS, an empty or unformatted disk.
    Data,
    /// An ISO 9660 image.
    Iso,
}

/// The operating system family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OsType {
    /// A Linux distribution (an os-release or release file was found).
    Linux,
    /// Windows (a SOFTWARE registry hive was found).
    Windows,
    /// No operating system was recognised.
    Unknown,
}

/// How the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Firmware {
    /// An EFI system partition holds an EFI loader (or the ISO has a UEFI boot entry).
    Uefi,
    /// Boot code in the MBR, or a BIOS boot partition (or an ISO BIOS boot entry).
    Bios,
    /// Both of the above.
    Both,
    /// Neither was found.
    Unknown,
}

/// What a volume holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VolumeFacts {
    /// The file system (`ext4`, `xfs`, `fat32`, `ntfs`, `swap`, `lvm2_member`, ...), or
    /// `null` when nothing was recognised.
    pub filesystem: Option<FsKind>,
    /// The file system's label.
    pub label: Option<String>,
    /// The file system's UUID, or its volume serial number.
    pub uuid: Option<String>,
}

/// A partition and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionFacts {
    /// The partition table's entry.
    #[serde(flatten)]
    pub partition: Partition,
    /// What the partition holds.
    #[serde(flatten)]
    pub volume: VolumeFacts,
}

/// An LVM2 logical volume and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogicalVolumeFacts {
    /// `VG/LV`, as `centos/root`.
    pub name: String,
    /// The volume's size in bytes.
    pub size: u64,
    /// What the volume holds.
    #[serde(flatten)]
    pub volume: VolumeFacts,
}

/// Where the operating system's root file system is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootFilesystem {
    /// The partition number, or `null` for a file system on the whole disk or a logical volume.
    pub partition: Option<u32>,
    /// The LVM2 logical volume (`VG/LV`) it is on.
    pub logical_volume: Option<String>,
    /// Its file system.
    pub filesystem: FsKind,
    /// The file system's UUID.
    pub uuid: Option<String>,
    /// The file system's label.
    pub label: Option<String>,
}

/// Everything inspection found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// The disk's size in bytes.
    pub virtual_size: u64,
    /// GPT, MBR, or none.
    pub partition_table: TableKind,
    /// The GPT disk GUID, or the MBR disk signature.
    pub disk_id: Option<String>,
    /// The partitions, in table order.
    pub partitions: Vec<PartitionFacts>,
    /// The file system on the whole disk, when there is no partition table; or the ISO 9660
    /// volume of a hybrid ISO, whose system area also holds a partition table (so that the file
    /// boots from a USB stick too).
    pub whole_disk: Option<VolumeFacts>,
    /// Linear LVM2 logical volumes found on the physical volumes.
    pub logical_volumes: Vec<LogicalVolumeFacts>,
    /// System disk, data disk or ISO.
    pub image_kind: ImageKind,
    /// The operating system family.
    pub os_type: OsType,
    /// `ubuntu`, `debian`, `centos`, `rhel`, `rocky`, `almalinux`, `opensuse`, `sles`,
    /// `openeuler`, `euleros`, `fedora`, `alpine`, `windows`, ... (os-release's `ID`).
    pub distro: Option<String>,
    /// os-release's `VERSION_ID`; for Windows the NT version (`10.0`).
    pub os_version: Option<String>,
    /// Windows' build number.
    pub os_build: Option<String>,
    /// The name the system gives itself (os-release's `PRETTY_NAME`, Windows' `ProductName`).
    pub product_name: Option<String>,
    /// `x86_64`, `aarch64`, `i686`, ..., or `unknown`.
    pub arch: String,
    /// How the guest boots.
    pub firmware: Firmware,
    /// Where the operating system's root is, when one was found.
    pub root_filesystem: Option<RootFilesystem>,
    /// The guest's configured host name.
    pub hostname: Option<String>,
    /// Kernel versions found in /boot.
    pub kernels: Vec<String>,
    /// Whether cloud-init (Linux) or Cloudbase-Init (Windows) is installed.
    pub cloud_init: bool,
    /// `cloud-init` or `cloudbase-init`.
    pub cloud_init_agent: Option<String>,
    /// Whether a virtio block driver is there (virtio_blk or virtio_scsi; viostor or vioscsi).
    pub virtio: bool,
    /// The virtio drivers found (`virtio_blk`, `virtio_net`, ...; `viostor`, `netkvm`, ...).
    pub virtio_drivers: Vec<String>,
    /// EFI loaders found on EFI system partitions (`EFI/BOOT/BOOTX64.EFI`).
    pub efi_loaders: Vec<String>,
    /// For an ISO 9660 image: its label and El Torito boot entries (`null` for a disk).
    pub iso: Option<iso9660::IsoFacts>,
    /// What was odd, damaged or unreadable; facts it concerns are left unknown.
    pub notes: Vec<String>,
}

impl Inspection {
    fn empty(virtual_size: u64) -> Inspection {
        Inspection {
            virtual_size,
            partition_table: TableKind::None,
            disk_id: None,
            partitions: Vec::new(),
            whole_disk: None,
            logical_volumes: Vec::new(),
            image_kind: ImageKind::Data,
            os_type: OsType::Unknown,
            distro: None,
            os_version: None,
            os_build: None,
            product_name: None,
            arch: "unknown".into(),
            firmware: Firmware::Unknown,
            root_filesystem: None,
            hostname: None,
            kernels: Vec::new(),
            cloud_init: false,
            cloud_init_agent: None,
            virtio: false,
            virtio_drivers: Vec::new(),
            efi_loaders: Vec::new(),
            iso: None,
            notes: Vec::new(),
        }
    }
}

/// Inspects the disk `reader` reads.
pub fn inspect(reader: Arc<dyn BlockReader>) -> Result<Inspection> {
    let disk = Disk::new(reader);
    let mut out = Inspection::empty(disk.size());
    let table = partitions::read_table(&disk);
    out.partition_table = table.kind;
    out.disk_id = table.disk_id.clone();
    out.notes.extend(table.notes.iter().cloned());

    // The volumes to look into: trusted partitions, or the whole disk.
    let mut volumes: Vec<(Option<usize>, Volume)> = Vec::new();
    for (i, p) in table.partitions.iter().enumerate() {
        out.partitions.push(PartitionFacts {
            partition: p.clone(),
            volume: VolumeFacts::default(),
        });
        if p.trusted() {
            volumes.push((Some(i), Volume::new(disk.clone(), p.start, p.size)?));
        } else if let Some(problem) = &p.problem {
            out.notes.push(format!(
                "partition {} is not looked into: {problem}",
                p.number
            ));
        }
    }
    if table.kind == TableKind::None && disk.size() > 0 {
        volumes.push((None, Volume::whole(disk.clone())));
    }

    let mut bios = table.mbr_boot_code || table.partitions.iter().any(|p| p.is_bios_boot());
    let mut uefi = false;
    let mut pvs: Vec<(Volume, String)> = Vec::new();
    // A hybrid ISO (Ubuntu's, Fedora's, Debian's: an MBR or GPT in the system area, one
    // partition over the ISO and one for the EFI image) is an ISO first: the whole disk is the
    // ISO 9660 volume, and its partitions are looked into as well.
    if table.kind != TableKind::None && disk.size() > 0 {
        let whole = Volume::whole(disk.clone());
        match superblocks::iso9660(&whole) {
            Ok(Some(id)) => {
                out.whole_disk = Some(VolumeFacts {
                    filesystem: Some(id.kind),
                    label: id.label.clone(),
                    uuid: id.uuid.clone(),
                });
                let place = Place::WholeDisk;
                if let Err(e) = look_into(&whole, &id, &place, &mut out, &mut bios, &mut uefi) {
                    out.notes
                        .push(format!("{} ({}): {e}", place.describe(), id.kind.name()));
                }
            }
            Ok(None) => {}
            Err(e) => out.notes.push(format!("the whole disk: {e}")),
        }
    }
    for (index, vol) in &volumes {
        let place = match index {
            Some(i) => Place::Partition(&table.partitions[*i]),
            None => Place::WholeDisk,
        };
        let (facts, id) = identify(vol, &place, &mut out);
        match index {
            Some(i) => out.partitions[*i].volume = facts,
            None => out.whole_disk = Some(facts),
        }
        let Some(id) = id else { continue };
        if id.kind == FsKind::Lvm2Member {
            pvs.push((vol.clone(), place.describe()));
            continue;
        }
        if let Err(e) = look_into(vol, &id, &place, &mut out, &mut bios, &mut uefi) {
            out.notes
                .push(format!("{} ({}): {e}", place.describe(), id.kind.name()));
        }
    }
    for (vol, lv_name) in logical_volumes(&pvs, &mut out) {
        let place = Place::LogicalVolume(lv_name.clone());
        let (facts, id) = identify(&vol, &place, &mut out);
        out.logical_volumes.push(LogicalVolumeFacts {
            name: lv_name,
            size: vol.len,
            volume: facts,
        });
        let Some(id) = id else { continue };
        if let Err(e) = look_into(&vol, &id, &place, &mut out, &mut bios, &mut uefi) {
            out.notes
                .push(format!("{} ({}): {e}", place.describe(), id.kind.name()));
        }
    }

    if let Some(e) = disk.take_image_error() {
        return Err(e);
    }
    out.firmware = match (bios, uefi) {
        (true, true) => Firmware::Both,
        (true, false) => Firmware::Bios,
        (false, true) => Firmware::Uefi,
        (false, false) => Firmware::Unknown,
    };
    if out.image_kind != ImageKind::Iso && out.os_type != OsType::Unknown {
        out.image_kind = ImageKind::System;
    }
    out.virtio = out.virtio_drivers.iter().any(|d| {
        matches!(
            d.as_str(),
            "virtio_blk" | "virtio_scsi" | "viostor" | "vioscsi"
        )
    });
    Ok(out)
}

/// Where a volume is.
enum Place<'a> {
    Partition(&'a Partition),
    WholeDisk,
    /// `VG/LV`.
    LogicalVolume(String),
}

impl Place<'_> {
    fn describe(&self) -> String {
        match self {
            Place::Partition(p) => format!("partition {}", p.number),
            Place::WholeDisk => "the whole disk".into(),
            Place::LogicalVolume(n) => format!("logical volume {n}"),
        }
    }
}

/// What `vol` holds, noting a failure to tell.
fn identify(vol: &Volume, place: &Place, out: &mut Inspection) -> (VolumeFacts, Option<FsId>) {
    let id = match superblocks::identify(vol) {
        Ok(id) => id,
        Err(e) => {
            out.notes.push(format!("{}: {e}", place.describe()));
            None
        }
    };
    let facts = VolumeFacts {
        filesystem: id.as_ref().map(|i| i.kind),
        label: id.as_ref().and_then(|i| i.label.clone()),
        uuid: id.as_ref().and_then(|i| i.uuid.clone()),
    };
    (facts, id)
}

/// The volumes of the linear logical volumes on `pvs` (with their `VG/LV` names).
fn logical_volumes(pvs: &[(Volume, String)], out: &mut Inspection) -> Vec<(Volume, String)> {
    let mut by_uuid = HashMap::new();
    let mut texts: Vec<String> = Vec::new();
    for (vol, place) in pvs {
        match lvm::read_pv(vol) {
            Ok(pv) => {
                by_uuid.insert(pv.uuid, vol.clone());
                if let Some(t) = pv.metadata
                    && !texts.contains(&t)
                {
                    texts.push(t);
                }
            }
            Err(e) => out.notes.push(format!("{place} (lvm2_member): {e}")),
        }
    }
    let mut volumes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in &texts {
        let lvs = match lvm::logical_volumes(t) {
            Ok((lvs, notes)) => {
                out.notes.extend(notes);
                lvs
            }
            Err(e) => {
                out.notes.push(format!("lvm2 metadata: {e}"));
                continue;
            }
        };
        for lv in lvs {
            let name = format!("{}/{}", lv.vg, lv.name);
            if !seen.insert(name.clone()) {
                continue;
            }
            match lvm::lv_volume(&lv, &by_uuid) {
                Ok(Some(vol)) => volumes.push((vol, name)),
                Ok(None) => out.notes.push(format!(
                    "logical volume {name}: a physical volume is missing"
                )),
                Err(e) => out.notes.push(format!("logical volume {name}: {e}")),
            }
        }
    }
    volumes
}

/// Opens the file system on `vol` where facts can come from it.
fn look_into(
    vol: &Volume,
    id: &FsId,
    place: &Place,
    out: &mut Inspection,
    bios: &mut bool,
    uefi: &mut bool,
) -> Result<()> {
    let partition = match place {
        Place::Partition(p) => Some(*p),
        _ => None,
    };
    let root = || RootFilesystem {
        logical_volume: match place {
            Place::LogicalVolume(n) => Some(n.clone()),
            _ => None,
        },
        partition: partition.map(|p| p.number),
        filesystem: id.kind,
        uuid: id.uuid.clone(),
        label: id.label.clone(),
    };
    match id.kind {
        k if k.is_ext() || k == FsKind::Xfs => {
            let mut fs: Box<dyn GuestFs> = if k == FsKind::Xfs {
                Box::new(xfs::XfsFs::open(vol)?)
            } else {
                Box::new(Ext4Fs::open(vol)?)
            };
            if linux::is_root(fs.as_mut()) {
                if out.os_type != OsType::Unknown {
                    out.notes
                        .push("another operating system was found; the first is reported".into());
                    return Ok(());
                }
                let f = linux::inspect(fs.as_mut());
                out.os_type = OsType::Linux;
                out.distro = f.distro;
                out.os_version = f.os_version;
                out.product_name = f.product_name;
                out.arch = f.arch.unwrap_or("unknown").to_string();
                out.hostname = f.hostname;
                // A separate /boot may have been seen first.
                out.kernels.extend(f.kernels);
                out.kernels.sort();
                out.kernels.dedup();
                out.cloud_init = f.cloud_init;
                out.cloud_init_agent = f.cloud_init.then(|| "cloud-init".to_string());
                out.virtio_drivers = f.virtio_drivers;
                out.notes.extend(f.notes);
                out.root_filesystem = Some(root());
            } else if let Some(names) = fs.list_dir("/")? {
                // A separate /boot file system.
                out.kernels.extend(linux::kernel_versions(&names));
                out.kernels.sort();
                out.kernels.dedup();
            }
        }
        FsKind::Ntfs => {
            let mut fs = ntfs::NtfsFs::open(vol)?;
            if windows::is_root(&mut fs) {
                if out.os_type != OsType::Unknown {
                    out.notes
                        .push("another operating system was found; the first is reported".into());
                    return Ok(());
                }
                let f = windows::inspect(&mut fs);
                out.os_type = OsType::Windows;
                out.distro = Some("windows".into());
                out.os_version = f.os_version;
                out.os_build = f.build;
                out.product_name = f.product_name;
                out.arch = f.arch.unwrap_or("unknown").to_string();
                out.hostname = f.hostname;
                out.cloud_init = f.cloud_init;
                out.cloud_init_agent = f.cloud_init.then(|| "cloudbase-init".to_string());
                out.virtio_drivers = f.virtio_drivers;
                out.notes.extend(f.notes);
                out.root_filesystem = Some(root());
            }
        }
        k if k.is_fat() => {
            // An EFI system partition (or any FAT partition of an MBR disk, which UEFI
            // firmware also boots from).
            let esp = partition.is_some_and(|p| {
                p.is_esp()
                    || (p.partition_type.id.starts_with("0x")
                        && out.partition_table == TableKind::Mbr)
            });
            if esp {
                let mut fs = FatFs::open(vol)?;
                let loaders = efi_loaders(&mut fs)?;
                *uefi |= !loaders.is_empty();
                out.efi_loaders.extend(loaders);
            }
        }
        FsKind::Iso9660 if matches!(place, Place::WholeDisk) => {
            out.image_kind = ImageKind::Iso;
            let (facts, os) = iso9660::inspect(vol)?;
            out.notes.extend(os.note);
            *bios |= facts.bios;
            *uefi |= facts.uefi;
            out.iso = Some(facts);
            if let Some(os_type) = os.os_type {
                out.os_type = os_type;
                out.distro = os.distro;
                out.os_version = os.os_version;
                out.product_name = os.product_name;
            }
            if let Some(arch) = os.arch {
                out.arch = arch;
            }
        }
        FsKind::Btrfs | FsKind::CryptoLuks => {
            // Identified, not read: an operating system inside is not seen.
            let what = match id.kind {
                FsKind::Btrfs => "btrfs file systems are identified but not read",
                _ => "encrypted volumes cannot be read",
            };
            return Err(Error::unsupported(what));
        }
        _ => {}
    }
    Ok(())
}

/// The `.efi` files in `EFI/` and its subdirectories (`EFI/BOOT/BOOTX64.EFI`,
/// `EFI/ubuntu/shimx64.efi`).
fn efi_loaders(fs: &mut dyn GuestFs) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Some(vendors) = fs.list_dir("/EFI")? else {
        return Ok(out);
    };
    for v in vendors {
        let Some(files) = fs.list_dir(&format!("/EFI/{v}"))? else {
            continue;
        };
        for f in files {
            if f.to_ascii_lowercase().ends_with(".efi") && out.len() < MAX_EFI_LOADERS {
                out.push(format!("EFI/{v}/{f}"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Inspects an opened image (it must allow random access).
pub fn inspect_image(image: &crate::Image) -> Result<Inspection> {
    let reader = image.reader().ok_or_else(|| {
        Error::unsupported(format!(
            "{} images can only be read front to back; inspection needs random access (convert it first)",
            image.format()
        ))
    })?;
    inspect(reader)
}

/// Inspects an image from any [`crate::Input`] (a path, a storage, a stream). Inspection needs
/// random access: a format that can only be read front to back, or a stream, is refused with an
/// error that says to convert or spool it first.
pub fn inspect_input(input: crate::Input, options: &crate::OpenOptions) -> Result<Inspection> {
    inspect_image(&crate::open_input(input, options)?)
}
