//! What an ISO 9660 image says about itself: its label, its El Torito boot entries (through the
//! parsers of [`crate::formats::iso`]) and so whether it boots on BIOS and UEFI machines, and the
//! operating system it installs where the medium names it (formats/iso.md):
//!
//! - `.disk/info` (Ubuntu, Debian and their derivatives): one line, `Ubuntu 22.04.3 LTS "Jammy
//!   Jellyfish" - Release amd64 (20230807.2)`;
//! - `.treeinfo` (Red Hat Enterprise Linux, CentOS, Fedora, Rocky, AlmaLinux, openEuler): an INI
//!   file with the product's name, version and architecture;
//! - `.alpine-release` (Alpine);
//! - `sources/install.wim`, `install.esd` or `boot.wim` (Windows setup media), whose version
//!   is in the WIM and is not read: the label may give the architecture;
//! - failing those, the volume label (`Rocky-9-2-x86_64-dvd`, `CentOS 7 x86_64`).
//!
//! Names come from the Rock Ridge `NM` entries of the primary tree where present, else from the
//! Joliet tree, else from the plain ISO 9660 names (`;1` dropped, case ignored). Only the root
//! and one level below it are read, each directory up to
//! [`MAX_ISO_DIRECTORY`], each file up to
//! [`MAX_FILE_READ`].

use serde::Serialize;

use crate::error::{Error, Result};
use crate::formats::iso::IsoLayout;
use crate::formats::iso::boot_catalog::BootEntry;
use crate::formats::iso::descriptor::{Extent, SECTOR};
use crate::limits::{MAX_DIR_ENTRIES, MAX_FILE_READ, MAX_ISO_DIRECTORY};

use super::OsType;
use super::disk::Volume;
use super::fs::GuestFs;

/// What the ISO image itself says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IsoFacts {
    /// The primary volume descriptor's volume identifier.
    pub volume_label: Option<String>,
    /// The El Torito boot entries: the initial/default entry, then each section's entries.
    pub boot_entries: Vec<BootEntry>,
    /// A bootable entry for x86 BIOS machines (platform 0x00).
    pub bios: bool,
    /// A bootable entry for UEFI machines (platform 0xEF).
    pub uefi: bool,
    /// Where the operating system it installs was read from (`.disk/info`, `.treeinfo`,
    /// `.alpine-release`, `sources/ (Windows setup)`, `the volume label`), if anywhere.
    pub os_source: Option<&'static str>,
}

/// The operating system an ISO installs, as far as the medium says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IsoOs {
    /// The family.
    pub os_type: Option<OsType>,
    /// os-release's `ID` spelling: `ubuntu`, `debian`, `rhel`, `windows`, ...
    pub distro: Option<String>,
    /// The version as os-release's `VERSION_ID` spells it (`22.04`, `12`, `9.2`).
    pub os_version: Option<String>,
    /// The product's own name for itself.
    pub product_name: Option<String>,
    /// `x86_64`, `aarch64`, ...
    pub arch: Option<String>,
    /// Where the facts came from (`.disk/info`, the volume label, ...).
    pub source: Option<&'static str>,
    /// Why the medium's files could not be read (the label was read instead).
    pub note: Option<String>,
}

/// Reads the ISO image on `vol`: its layout (checked as the ISO driver checks it) and the OS.
pub fn inspect(vol: &Volume) -> Result<(IsoFacts, IsoOs)> {
    let layout = IsoLayout::read(&mut |buf, at| vol.read_at(buf, at), vol.len)?;
    let catalog = layout.boot_catalog.as_ref();
    let label =
        Some(layout.descriptors.primary.volume_identifier.clone()).filter(|l| !l.is_empty());
    let facts = IsoFacts {
        volume_label: label.clone(),
        boot_entries: catalog.map(|c| c.entries.clone()).unwrap_or_default(),
        bios: catalog.is_some_and(|c| c.boots_bios()),
        uefi: catalog.is_some_and(|c| c.boots_uefi()),
        os_source: None,
    };
    let mut fs = IsoFs::new(vol.clone(), &layout);
    let label_text = label.as_deref().unwrap_or("");
    // A damaged directory leaves the label to go by; the boot facts stand.
    let os = os_of(&mut fs, label_text).unwrap_or_else(|e| IsoOs {
        note: Some(format!("the ISO's directories cannot be read: {e}")),
        ..from_label(label_text)
    });
    let facts = IsoFacts {
        os_source: os.os_type.and(os.source),
        ..facts
    };
    Ok((facts, os))
}

/// The OS the medium names: its files first, then its label.
fn os_of(fs: &mut dyn GuestFs, label: &str) -> Result<IsoOs> {
    if let Some(text) = fs.read_head("/.disk/info", MAX_FILE_READ)? {
        return Ok(disk_info(&String::from_utf8_lossy(&text)));
    }
    if let Some(text) = fs.read_head("/.treeinfo", MAX_FILE_READ)? {
        return Ok(treeinfo(&String::from_utf8_lossy(&text)));
    }
    if let Some(text) = fs.read_head("/.alpine-release", MAX_FILE_READ)? {
        let version = String::from_utf8_lossy(&text)
            .split_whitespace()
            .next()
            .map(|v| major_minor(v, 2));
        return Ok(IsoOs {
            os_type: Some(OsType::Linux),
            distro: Some("alpine".into()),
            product_name: version.as_ref().map(|v| format!("Alpine Linux {v}")),
            os_version: version,
            arch: label_arch(label),
            source: Some(".alpine-release"),
            note: None,
        });
    }
    if let Some(names) = fs.list_dir("/sources")? {
        let setup = names.iter().any(|n| {
            matches!(
                n.to_ascii_lowercase().as_str(),
                "install.wim" | "install.esd" | "install.swm" | "boot.wim"
            )
        });
        if setup {
            return Ok(IsoOs {
                os_type: Some(OsType::Windows),
                distro: Some("windows".into()),
                arch: label_arch(label),
                source: Some("sources/ (Windows setup)"),
                ..IsoOs::default()
            });
        }
    }
    Ok(from_label(label))
}

/// Keeps the first `parts` dot-separated components of a version (`22.04.3` → `22.04`).
fn major_minor(v: &str, parts: usize) -> String {
    v.split('.').take(parts).collect::<Vec<_>>().join(".")
}

/// Debian's architecture names, and the usual ones, as `uname -m` spells them.
fn arch_name(word: &str) -> Option<&'static str> {
    Some(match word.to_ascii_lowercase().as_str() {
        "amd64" | "x86_64" | "x64" | "x86-64" => "x86_64",
        "arm64" | "aarch64" | "a64" => "aarch64",
        "i386" | "i686" | "x86" => "i686",
        "ppc64el" | "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" | "loong64" => "loongarch64",
        _ => return None,
    })
}

/// The architecture a label names (`..._X64FRE_...`, `...-x86_64-dvd`).
fn label_arch(label: &str) -> Option<String> {
    let lower = label.to_ascii_lowercase();
    if lower.contains("x86_64") || lower.contains("x86-64") {
        return Some("x86_64".into());
    }
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find_map(|w| {
            arch_name(w).or_else(|| {
                // Windows labels: X64FRE, X86FREE, A64FREV.
                ["x64", "x86", "a64"]
                    .into_iter()
                    .find(|a| w.starts_with(a) && w[3..].starts_with("fre"))
                    .and_then(arch_name)
            })
        })
        .map(String::from)
}

/// The distribution a product or label names, as os-release's `ID` spells it.
fn distro_of(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let known = [
        ("ubuntu", "ubuntu"),
        ("debian", "debian"),
        ("red hat", "rhel"),
        ("rhel", "rhel"),
        ("centos", "centos"),
        ("fedora", "fedora"),
        ("rocky", "rocky"),
        ("almalinux", "almalinux"),
        ("oracle linux", "ol"),
        ("openeuler", "openeuler"),
        ("euleros", "euleros"),
        ("opensuse", "opensuse"),
        ("sles", "sles"),
        ("suse linux enterprise", "sles"),
        ("alpine", "alpine"),
        ("kylin", "kylin"),
    ];
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    known
        .into_iter()
        .find(|(k, _)| {
            if k.contains(' ') {
                lower.contains(k)
            } else {
                // Kubuntu, Xubuntu, Lubuntu are Ubuntu.
                words
                    .iter()
                    .any(|w| w.starts_with(k) || (*k == "ubuntu" && w.ends_with(k)))
            }
        })
        .map(|(_, id)| id)
}

/// The version os-release would give for `distro`, from the medium's version.
fn version_id(distro: &str, version: &str) -> String {
    match distro {
        "ubuntu" | "alpine" => major_minor(version, 2),
        "debian" => major_minor(version, 1),
        _ => version.to_string(),
    }
}

/// `.disk/info`: `Ubuntu 22.04.3 LTS "Jammy Jellyfish" - Release amd64 (20230807.2)`.
fn disk_info(text: &str) -> IsoOs {
    let line = text.lines().next().unwrap_or("").trim();
    let distro = distro_of(line);
    let version = line.split_whitespace().find(|w| {
        w.starts_with(|c: char| c.is_ascii_digit())
            && w.chars().all(|c| c.is_ascii_digit() || c == '.')
    });
    let arch = line
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .find_map(arch_name);
    let product = line.split(" - ").next().unwrap_or(line).trim();
    IsoOs {
        os_type: distro.map(|_| OsType::Linux),
        distro: distro.map(String::from),
        os_version: distro.zip(version).map(|(d, v)| version_id(d, v)),
        product_name: (!product.is_empty()).then(|| product.to_string()),
        arch: arch.map(String::from),
        source: Some(".disk/info"),
        note: None,
    }
}

/// `.treeinfo`: `[release]` (or `[product]`) `name`, `version`; `[general]` `family`,
/// `version`, `arch` (the older layout); `[tree]` `arch`.
fn treeinfo(text: &str) -> IsoOs {
    let mut section = String::new();
    let (mut name, mut version, mut arch) = (None, None, None);
    for line in text.lines().take(4096) {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_ascii_lowercase();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        match (section.as_str(), k.as_str()) {
            ("release" | "product", "name") => name = Some(v),
            ("general", "family") if name.is_none() => name = Some(v),
            ("release" | "product", "version") => version = Some(v),
            ("general", "version") if version.is_none() => version = Some(v),
            ("tree", "arch") => arch = Some(v),
            ("general", "arch") if arch.is_none() => arch = Some(v),
            _ => {}
        }
    }
    let distro = name.as_deref().and_then(distro_of);
    IsoOs {
        os_type: distro.map(|_| OsType::Linux),
        distro: distro.map(String::from),
        os_version: distro.and(version.clone()),
        product_name: name.map(|n| match &version {
            Some(v) => format!("{n} {v}"),
            None => n,
        }),
        arch: arch.and_then(|a| arch_name(&a).map(String::from).or(Some(a))),
        source: Some(".treeinfo"),
        note: None,
    }
}

/// The volume label, when no file names the OS: a distribution's name, then the first version
/// (`Rocky-9-2-x86_64-dvd` → rocky 9.2; `Ubuntu 22.04.3 LTS amd64` → ubuntu 22.04), or a
/// Windows setup label (`CCCOMA_X64FRE_EN-US_DV9`), which names no version.
fn from_label(label: &str) -> IsoOs {
    let arch = label_arch(label);
    // Architecture names hold digits that are not the version (`x86_64-38`).
    let mut plain = label.to_ascii_lowercase();
    for a in [
        "x86_64",
        "x86-64",
        "aarch64",
        "amd64",
        "arm64",
        "i386",
        "i686",
        "ppc64le",
        "ppc64el",
        "s390x",
        "riscv64",
        "loongarch64",
    ] {
        plain = plain.replace(a, " ");
    }
    let words: Vec<&str> = plain
        .split([' ', '-', '_'])
        .filter(|w| !w.is_empty())
        .collect();
    let windows = words.iter().any(|w| {
        let w = w.to_ascii_lowercase();
        ["x64", "x86", "a64"].iter().any(|a| w.starts_with(a)) && w[3..].starts_with("fre")
    });
    if windows {
        return IsoOs {
            os_type: Some(OsType::Windows),
            distro: Some("windows".into()),
            arch,
            source: Some("the volume label"),
            ..IsoOs::default()
        };
    }
    let Some(distro) = distro_of(label) else {
        return IsoOs::default();
    };
    // The first run of numeric words: `9`, `2` → 9.2; `22.04.3` → 22.04.3. Architecture words
    // (x86, 64) come after the version and are not numeric runs at its start.
    let mut parts: Vec<&str> = Vec::new();
    for w in &words {
        if w.chars().all(|c| c.is_ascii_digit() || c == '.')
            && w.starts_with(|c: char| c.is_ascii_digit())
        {
            parts.push(w);
        } else if !parts.is_empty() {
            break;
        }
    }
    let version = (!parts.is_empty()).then(|| version_id(distro, &parts.join(".")));
    IsoOs {
        os_type: Some(OsType::Linux),
        distro: Some(distro.into()),
        os_version: version,
        product_name: None,
        arch,
        source: Some("the volume label"),
        note: None,
    }
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dirent {
    /// The Rock Ridge name, the Joliet name, or the ISO 9660 name without its `;1`.
    name: String,
    extent: Extent,
    directory: bool,
}

/// The file tree of an ISO 9660 image, read through [`GuestFs`].
pub struct IsoFs {
    vol: Volume,
    roots: Vec<(Extent, bool)>,
}

impl IsoFs {
    /// The primary tree, then the Joliet tree (UCS-2 names) where there is one.
    pub fn new(vol: Volume, layout: &IsoLayout) -> IsoFs {
        let mut roots = vec![(layout.descriptors.primary.root, false)];
        if let Some(j) = layout.descriptors.joliet_root {
            roots.push((j, true));
        }
        IsoFs { vol, roots }
    }

    /// The entries of the directory at `extent`.
    fn read_dir(&self, extent: Extent, joliet: bool) -> Result<Vec<Dirent>> {
        let start = u64::from(extent.location) * SECTOR;
        let len = u64::from(extent.data_length);
        if len > MAX_ISO_DIRECTORY {
            return Err(Error::limit(
                "iso directory",
                start,
                format!("{len} bytes, more than {MAX_ISO_DIRECTORY}"),
            ));
        }
        let Some(bytes) = self.vol.read_vec(start, len as usize)? else {
            return Err(Error::malformed(
                "iso directory",
                start,
                format!("{len} bytes do not fit in the volume"),
            ));
        };
        let mut out = Vec::new();
        for (i, sector) in bytes.chunks(SECTOR as usize).enumerate() {
            let mut pos = 0usize;
            while let Some(&rec_len) = sector.get(pos) {
                let at = start + (i as u64) * SECTOR + pos as u64;
                // A zero length: the rest of the sector is padding.
                if rec_len == 0 {
                    break;
                }
                let rec = sector
                    .get(pos..pos + usize::from(rec_len))
                    .filter(|_| rec_len >= 34);
                // The record's fixed part (34 bytes, the name's first byte included), read at
                // constant offsets.
                let fixed = rec
                    .and_then(|r| r.get(..34))
                    .and_then(|f| <&[u8; 34]>::try_from(f).ok());
                let (Some(rec), Some(fixed)) = (rec, fixed) else {
                    return Err(Error::malformed(
                        "iso directory record",
                        at,
                        format!("a record of {rec_len} bytes (at least 34, inside its sector)"),
                    ));
                };
                pos += usize::from(rec_len);
                let name_len = usize::from(fixed[32]);
                let Some(raw) = rec.get(33..33 + name_len) else {
                    return Err(Error::malformed(
                        "iso directory record",
                        at,
                        format!("a name of {name_len} bytes in a record of {rec_len}"),
                    ));
                };
                // `.` and `..`.
                if raw == [0] || raw == [1] {
                    continue;
                }
                let pad = usize::from(name_len % 2 == 0);
                let system_use = rec.get(33 + name_len + pad..).unwrap_or(&[]);
                let name = if joliet {
                    let units: Vec<u16> = raw
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    strip_version(&String::from_utf16_lossy(&units))
                } else {
                    rock_ridge_name(system_use)
                        .unwrap_or_else(|| strip_version(&String::from_utf8_lossy(raw)))
                };
                let le = |o: usize| {
                    u32::from_le_bytes([fixed[o], fixed[o + 1], fixed[o + 2], fixed[o + 3]])
                };
                out.push(Dirent {
                    name,
                    extent: Extent {
                        location: le(2),
                        data_length: le(10),
                    },
                    directory: fixed[25] & 0x02 != 0,
                });
                if out.len() >= MAX_DIR_ENTRIES {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// The entry at `path` (`/a/b`) in the tree at `root`.
    fn find(&self, root: Extent, joliet: bool, path: &str) -> Result<Option<Dirent>> {
        let mut dir = Dirent {
            name: String::new(),
            extent: root,
            directory: true,
        };
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !dir.directory {
                return Ok(None);
            }
            let entries = self.read_dir(dir.extent, joliet)?;
            match entries
                .into_iter()
                .find(|e| e.name.eq_ignore_ascii_case(part))
            {
                Some(e) => dir = e,
                None => return Ok(None),
            }
        }
        Ok(Some(dir))
    }

    /// The entry at `path` in the first tree that has it.
    fn lookup(&self, path: &str) -> Result<Option<(Dirent, bool)>> {
        for &(root, joliet) in &self.roots {
            if let Some(e) = self.find(root, joliet, path)? {
                return Ok(Some((e, joliet)));
            }
        }
        Ok(None)
    }
}

/// `NAME.EXT;1` → `NAME.EXT`; a name with no extension loses its trailing dot too.
fn strip_version(name: &str) -> String {
    let base = name.split(';').next().unwrap_or(name);
    base.strip_suffix('.').unwrap_or(base).to_string()
}

/// The Rock Ridge name in a record's system use area: the `NM` entries' text, joined.
fn rock_ridge_name(mut su: &[u8]) -> Option<String> {
    let mut name = Vec::new();
    let mut found = false;
    while su.len() >= 4 {
        let len = usize::from(su[2]);
        let Some(entry) = su.get(..len).filter(|_| len >= 4) else {
            break;
        };
        if &entry[..2] == b"NM" && len >= 5 {
            // Flags: 2 is `.`, 4 is `..`; 1 says the name continues in the next NM entry.
            if entry[4] & 0x06 == 0 {
                name.extend_from_slice(&entry[5..]);
                found = true;
            }
        }
        su = &su[len..];
    }
    found.then(|| String::from_utf8_lossy(&name).into_owned())
}

impl GuestFs for IsoFs {
    fn read_head(&mut self, path: &str, limit: usize) -> Result<Option<Vec<u8>>> {
        let Some((e, _)) = self.lookup(path)? else {
            return Ok(None);
        };
        if e.directory {
            return Ok(None);
        }
        let len = usize::try_from(e.extent.data_length)
            .unwrap_or(usize::MAX)
            .min(limit)
            .min(MAX_FILE_READ);
        let start = u64::from(e.extent.location) * SECTOR;
        match self.vol.read_vec(start, len)? {
            Some(bytes) => Ok(Some(bytes)),
            None => Err(Error::malformed(
                "iso directory record",
                start,
                format!("{path}: its data lies outside the volume"),
            )),
        }
    }

    fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.lookup(path)?.is_some())
    }

    fn list_dir(&mut self, path: &str) -> Result<Option<Vec<String>>> {
        match self.lookup(path)? {
            Some((e, joliet)) if e.directory => Ok(Some(
                self.read_dir(e.extent, joliet)?
                    .into_iter()
                    .map(|d| d.name)
                    .collect(),
            )),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_disk_info() {
        let os = disk_info("Ubuntu 22.04.3 LTS \"Jammy Jellyfish\" - Release amd64 (20230807.2)\n");
        assert_eq!(os.distro.as_deref(), Some("ubuntu"));
        assert_eq!(os.os_version.as_deref(), Some("22.04"));
        assert_eq!(os.arch.as_deref(), Some("x86_64"));
        assert_eq!(
            os.product_name.as_deref(),
            Some("Ubuntu 22.04.3 LTS \"Jammy Jellyfish\"")
        );
        let os = disk_info(
            "Debian GNU/Linux 12.2.0 \"Bookworm\" - Official arm64 NETINST with firmware 20231007-10:28",
        );
        assert_eq!(os.distro.as_deref(), Some("debian"));
        assert_eq!(os.os_version.as_deref(), Some("12"));
        assert_eq!(os.arch.as_deref(), Some("aarch64"));
        let os = disk_info("Ubuntu-Server 24.04 LTS \"Noble Numbat\" - Release amd64");
        assert_eq!(
            (os.distro.as_deref(), os.os_version.as_deref()),
            (Some("ubuntu"), Some("24.04"))
        );
        // Something unknown names no OS.
        assert_eq!(disk_info("My disc 1.0").os_type, None);
    }

    #[test]
    fn reads_treeinfo() {
        let os = treeinfo(
            "[header]\ntype = productmd.treeinfo\n[release]\nname = Red Hat Enterprise Linux\nshort = RHEL\nversion = 9.2\n[tree]\narch = x86_64\n",
        );
        assert_eq!(os.distro.as_deref(), Some("rhel"));
        assert_eq!(os.os_version.as_deref(), Some("9.2"));
        assert_eq!(os.arch.as_deref(), Some("x86_64"));
        assert_eq!(
            os.product_name.as_deref(),
            Some("Red Hat Enterprise Linux 9.2")
        );
        let os = treeinfo("[general]\nfamily = CentOS\nversion = 7\narch = x86_64\n");
        assert_eq!(
            (os.distro.as_deref(), os.os_version.as_deref()),
            (Some("centos"), Some("7"))
        );
        let os = treeinfo("[release]\nname = Rocky Linux\nversion = 9.3\n[tree]\narch = aarch64\n");
        assert_eq!(
            (os.distro.as_deref(), os.arch.as_deref()),
            (Some("rocky"), Some("aarch64"))
        );
    }

    #[test]
    fn reads_labels() {
        let os = from_label("Rocky-9-2-x86_64-dvd");
        assert_eq!(
            (
                os.distro.as_deref(),
                os.os_version.as_deref(),
                os.arch.as_deref()
            ),
            (Some("rocky"), Some("9.2"), Some("x86_64"))
        );
        let os = from_label("Ubuntu 22.04.3 LTS amd64");
        assert_eq!(
            (
                os.distro.as_deref(),
                os.os_version.as_deref(),
                os.arch.as_deref()
            ),
            (Some("ubuntu"), Some("22.04"), Some("x86_64"))
        );
        let os = from_label("openEuler-22.03-LTS-SP1-aarch64");
        assert_eq!(
            (
                os.distro.as_deref(),
                os.os_version.as_deref(),
                os.arch.as_deref()
            ),
            (Some("openeuler"), Some("22.03"), Some("aarch64"))
        );
        let os = from_label("Fedora-S-dvd-x86_64-38");
        assert_eq!(
            (os.distro.as_deref(), os.os_version.as_deref()),
            (Some("fedora"), Some("38"))
        );
        let os = from_label("CCCOMA_X64FRE_EN-US_DV9");
        assert_eq!(os.os_type, Some(OsType::Windows));
        assert_eq!(os.arch.as_deref(), Some("x86_64"));
        assert_eq!(os.os_version, None);
        assert_eq!(from_label("IMS_TEST"), IsoOs::default());
        assert_eq!(from_label(""), IsoOs::default());
    }

    /// A directory record shorter than 34 bytes: the boot facts stand, the OS comes from the
    /// label, and a note says why.
    #[test]
    fn a_damaged_directory_leaves_the_label() {
        use crate::formats::iso::boot_catalog::build as cat;
        use crate::formats::iso::descriptor::build::*;
        let mut img = image(
            40,
            &[primary("Rocky-9-2-x86_64-dvd", 40, 20), boot_record(19)],
        );
        let c = [cat::validation(0), cat::entry(30, 4)].concat();
        img[19 * 2048..19 * 2048 + 64].copy_from_slice(&c);
        img[20 * 2048] = 5;
        let vol = Volume::whole(super::super::disk::tests::mem_disk(img.clone()));
        let (facts, os) = inspect(&vol).unwrap();
        assert!(facts.bios && !facts.uefi);
        assert_eq!(facts.volume_label.as_deref(), Some("Rocky-9-2-x86_64-dvd"));
        assert_eq!(os.distro.as_deref(), Some("rocky"));
        assert!(os.note.unwrap().contains("iso directory record"));
        // A directory whose record runs past its sector.
        img[20 * 2048] = 34;
        for k in 0..8 {
            img[20 * 2048 + 34 + 255 * k] = 255;
        }
        let vol = Volume::whole(super::super::disk::tests::mem_disk(img));
        let (_, os) = inspect(&vol).unwrap();
        assert!(os.note.is_some());
    }

    #[test]
    fn reads_rock_ridge_names() {
        let mut su = b"PX\x04\x01".to_vec();
        su.extend_from_slice(b"NM\x0a\x01\x00.disk");
        assert_eq!(rock_ridge_name(&su).as_deref(), Some(".disk"));
        assert_eq!(rock_ridge_name(b"NM\x05\x01\x02"), None);
        // A zero-length entry ends the area instead of looping.
        assert_eq!(rock_ridge_name(b"XX\x00\x01NM\x06\x01\x00a"), None);
        assert_eq!(strip_version("TREEINFO.;1"), "TREEINFO");
        assert_eq!(strip_version("README.TXT;1"), "README.TXT");
    }
}
