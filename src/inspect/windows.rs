//! Facts about a Windows guest, read from its system volume: product name, version and build
//! from the SOFTWARE registry hive, hostname and processor architecture from the SYSTEM hive,
//! architecture from the PE header of a system DLL, virtio drivers (viostor, vioscsi, netkvm)
//! and Cloudbase-Init.

use super::binary::pe_arch;
use super::fs::{GuestFs, ReadAt};
use super::ntfs::NtfsFs;
use super::regf::Hive;
use crate::error::Result;

pub(crate) const SOFTWARE_HIVE: &str = "/Windows/System32/config/SOFTWARE";
pub(crate) const SYSTEM_HIVE: &str = "/Windows/System32/config/SYSTEM";

/// Files whose PE header gives the architecture.
const SYSTEM_BINARIES: &[&str] = &[
    "/Windows/System32/ntdll.dll",
    "/Windows/System32/kernel32.dll",
    "/Windows/System32/ntoskrnl.exe",
];

/// virtio drivers (the virtio-win package's names) in System32\drivers.
const VIRTIO: &[&str] = &["viostor", "vioscsi", "netkvm"];

const CLOUDBASE_INIT: &[&str] = &[
    "/Program Files/Cloudbase Solutions/Cloudbase-Init",
    "/Program Files (x86)/Cloudbase Solutions/Cloudbase-Init",
];

/// What a Windows system volume says about the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowsFacts {
    /// `ProductName` from the SOFTWARE hive (`Windows Server 2019 Datacenter`).
    pub product_name: Option<String>,
    /// `10.0`, `6.3`: the NT version.
    pub os_version: Option<String>,
    /// The build number (`CurrentBuildNumber`, else `CurrentBuild`).
    pub build: Option<String>,
    /// `Server` or `Client`.
    pub installation_type: Option<String>,
    /// `EditionID` (`ServerDatacenter`, `Professional`, ...).
    pub edition_id: Option<String>,
    /// The architecture of the system's DLLs (`x86_64`, `i686`, ...).
    pub arch: Option<&'static str>,
    /// The computer name from the SYSTEM hive.
    pub hostname: Option<String>,
    /// Cloudbase-Init is installed.
    pub cloud_init: bool,
    /// The virtio drivers installed (`viostor`, `vioscsi`, `netkvm`).
    pub virtio_drivers: Vec<String>,
    /// Facts that could not be read, and why.
    pub notes: Vec<String>,
}

/// Whether `fs` is a Windows system volume.
pub fn is_root(fs: &mut NtfsFs) -> bool {
    fs.exists(SOFTWARE_HIVE).unwrap_or(false)
}

/// Reads every fact it can; a fact that cannot be read is left unknown and noted.
pub fn inspect(fs: &mut NtfsFs) -> WindowsFacts {
    let mut f = WindowsFacts::default();
    if let Err(e) = fs
        .with_file(SOFTWARE_HIVE, |data| software(data, &mut f))
        .map(|_| ())
    {
        f.notes.push(format!("SOFTWARE hive: {e}"));
    }
    let mut system_arch = None;
    if let Err(e) = fs
        .with_file(SYSTEM_HIVE, |data| system(data, &mut f, &mut system_arch))
        .map(|_| ())
    {
        f.notes.push(format!("SYSTEM hive: {e}"));
    }
    for p in SYSTEM_BINARIES {
        match fs.read_head(p, 4096) {
            Ok(Some(head)) => {
                if let Some(a) = pe_arch(&head) {
                    f.arch = Some(a);
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => f.notes.push(format!("{p}: {e}")),
        }
    }
    if f.arch.is_none() {
        f.arch = system_arch;
    }
    for d in VIRTIO {
        match fs.exists(&format!("/Windows/System32/drivers/{d}.sys")) {
            Ok(true) => f.virtio_drivers.push(d.to_string()),
            Ok(false) => {}
            Err(e) => f.notes.push(format!("{d}: {e}")),
        }
    }
    f.cloud_init = CLOUDBASE_INIT.iter().any(|p| fs.exists(p).unwrap_or(false));
    f
}

fn software(data: &mut dyn ReadAt, f: &mut WindowsFacts) -> Result<()> {
    let mut hive = Hive::open(data)?;
    let Some(cv) = hive.key(r"Microsoft\Windows NT\CurrentVersion")? else {
        return Ok(());
    };
    let text = |hive: &mut Hive, name: &str| -> Result<Option<String>> {
        Ok(hive
            .value(&cv, name)?
            .and_then(|v| v.to_text())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()))
    };
    f.product_name = text(&mut hive, "ProductName")?;
    f.edition_id = text(&mut hive, "EditionID")?;
    f.installation_type = text(&mut hive, "InstallationType")?;
    f.build = match text(&mut hive, "CurrentBuildNumber")? {
        Some(b) => Some(b),
        None => text(&mut hive, "CurrentBuild")?,
    };
    let major = hive
        .value(&cv, "CurrentMajorVersionNumber")?
        .and_then(|v| v.as_u32());
    let minor = hive
        .value(&cv, "CurrentMinorVersionNumber")?
        .and_then(|v| v.as_u32());
    f.os_version = match (major, minor) {
        (Some(major), minor) => Some(format!("{major}.{}", minor.unwrap_or(0))),
        _ => text(&mut hive, "CurrentVersion")?,
    };
    Ok(())
}

fn system(
    data: &mut dyn ReadAt,
    f: &mut WindowsFacts,
    arch: &mut Option<&'static str>,
) -> Result<()> {
    let mut hive = Hive::open(data)?;
    let current = match hive.key("Select")? {
        Some(select) => hive
            .value(&select, "Current")?
            .and_then(|v| v.as_u32())
            .unwrap_or(1),
        None => 1,
    };
    let set = format!("ControlSet{:03}", current.min(999));
    if let Some(k) = hive.key(&format!(r"{set}\Control\ComputerName\ComputerName"))? {
        f.hostname = hive
            .value(&k, "ComputerName")?
            .and_then(|v| v.to_text())
            .filter(|s| !s.is_empty());
    }
    if let Some(k) = hive.key(&format!(r"{set}\Control\Session Manager\Environment"))? {
        *arch = match hive
            .value(&k, "PROCESSOR_ARCHITECTURE")?
            .and_then(|v| v.to_text())
            .as_deref()
        {
            Some("AMD64") => Some("x86_64"),
            Some("ARM64") => Some("aarch64"),
            Some("x86") => Some("i686"),
            _ => None,
        };
    }
    Ok(())
}
