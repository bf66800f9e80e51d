//! Facts about a Linux guest, read from its root file system: distribution and version
//! (os-release, or the older release files), architecture (the ELF header of the shell),
//! hostname, kernels, cloud-init, and virtio drivers (modules or built in).

use super::binary::elf_arch;
use super::fs::GuestFs;
use crate::error::Result;
use crate::limits::{MAX_FILE_READ, MAX_MODULE_DIRS};

/// What a Linux root file system says about the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxFacts {
    /// The distribution's id, normalised (`ubuntu`, `centos`, `rhel`, ...).
    pub distro: Option<String>,
    /// The distribution's version (os-release's `VERSION_ID`).
    pub os_version: Option<String>,
    /// The distribution's full name (os-release's `PRETTY_NAME`).
    pub product_name: Option<String>,
    /// The architecture of the system's executables (`x86_64`, `aarch64`, ...).
    pub arch: Option<&'static str>,
    /// The configured host name (/etc/hostname).
    pub hostname: Option<String>,
    /// Kernel versions found in /boot.
    pub kernels: Vec<String>,
    /// cloud-init is installed.
    pub cloud_init: bool,
    /// The virtio drivers found, as modules or built in.
    pub virtio_drivers: Vec<String>,
    /// Facts that could not be read, and why.
    pub notes: Vec<String>,
}

/// Executables whose ELF header gives the guest's architecture, in order of preference.
const SHELLS: &[&str] = &[
    "/bin/sh",
    "/bin/bash",
    "/usr/bin/bash",
    "/usr/bin/sh",
    "/bin/busybox",
    "/sbin/init",
    "/usr/lib/systemd/systemd",
];

/// Where cloud-init leaves a trace when installed.
const CLOUD_INIT: &[&str] = &[
    "/etc/cloud/cloud.cfg",
    "/usr/bin/cloud-init",
    "/usr/lib/systemd/system/cloud-init.service",
    "/lib/systemd/system/cloud-init.service",
    "/etc/init.d/cloud-init",
];

/// virtio drivers looked for: module name and its directory under `kernel/`.
const VIRTIO: &[(&str, &str)] = &[
    ("virtio_blk", "drivers/block"),
    ("virtio_scsi", "drivers/scsi"),
    ("virtio_net", "drivers/net"),
    ("virtio_pci", "drivers/virtio"),
    ("virtio_console", "drivers/char"),
];

/// Whether `fs` looks like a Linux root: an `/etc` directory beside `/usr` or `/bin`.
pub fn is_root(fs: &mut dyn GuestFs) -> bool {
    let Ok(Some(names)) = fs.list_dir("/") else {
        return false;
    };
    names.iter().any(|n| n == "etc") && names.iter().any(|n| n == "usr" || n == "bin")
}

/// `KEY=value` pairs of an os-release or lsb-release file, unquoted.
pub fn parse_key_values(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.replace("\\\"", "\"")))
        })
        .collect()
}

/// The distribution's short name from an os-release `ID` (or a release file's first word).
pub fn normalise_distro(id: &str) -> String {
    let id = id.trim().to_ascii_lowercase();
    match id.as_str() {
        "opensuse-leap" | "opensuse-tumbleweed" | "opensuse-microos" | "opensuse" => "opensuse",
        "sles" | "sled" | "sles_sap" => "sles",
        "redhat" | "red" | "rhel" => "rhel",
        "ol" | "oracle" => "oraclelinux",
        "almalinux" | "alma" => "almalinux",
        "rocky" => "rocky",
        "openeuler" => "openeuler",
        "euleros" => "euleros",
        other => return other.to_string(),
    }
    .to_string()
}

fn text(fs: &mut dyn GuestFs, path: &str) -> Result<Option<String>> {
    Ok(fs
        .read_head(path, MAX_FILE_READ)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The first version-like word (`7.9.2009` in "CentOS Linux release 7.9.2009 (Core)").
fn version_in(line: &str) -> Option<String> {
    line.split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
}

/// Reads every fact it can; a fact that cannot be read is left unknown and noted.
pub fn inspect(fs: &mut dyn GuestFs) -> LinuxFacts {
    let mut f = LinuxFacts::default();
    let note = |f: &mut LinuxFacts, what: &str, r: Result<()>| {
        if let Err(e) = r {
            f.notes.push(format!("{what}: {e}"));
        }
    };
    let r = release(fs, &mut f);
    note(&mut f, "release", r);
    let r = arch(fs, &mut f);
    note(&mut f, "architecture", r);
    let r = hostname(fs, &mut f);
    note(&mut f, "hostname", r);
    let r = kernels(fs, &mut f);
    note(&mut f, "kernels", r);
    for p in CLOUD_INIT {
        match fs.exists(p) {
            Ok(true) => {
                f.cloud_init = true;
                break;
            }
            Ok(false) => {}
            Err(e) => note(&mut f, "cloud-init", Err(e)),
        }
    }
    let r = virtio(fs, &mut f);
    note(&mut f, "virtio", r);
    f
}

fn release(fs: &mut dyn GuestFs, f: &mut LinuxFacts) -> Result<()> {
    let mut first_err = None;
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        match text(fs, path) {
            Ok(Some(t)) => {
                let kv = parse_key_values(&t);
                let get = |k: &str| {
                    kv.iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .filter(|v| !v.is_empty())
                };
                if let Some(id) = get("ID") {
                    f.distro = Some(normalise_distro(&id));
                    f.os_version = get("VERSION_ID");
                    f.product_name = get("PRETTY_NAME").or_else(|| {
                        get("NAME").map(|n| match get("VERSION") {
                            Some(v) => format!("{n} {v}"),
                            None => n,
                        })
                    });
                    return Ok(());
                }
            }
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    // Older systems: one-line release files.
    let files: &[(&str, &str)] = &[
        ("/etc/centos-release", "centos"),
        ("/etc/rocky-release", "rocky"),
        ("/etc/almalinux-release", "almalinux"),
        ("/etc/openEuler-release", "openeuler"),
        ("/etc/euleros-release", "euleros"),
        ("/etc/fedora-release", "fedora"),
        ("/etc/redhat-release", "rhel"),
        ("/etc/SuSE-release", "sles"),
        ("/etc/alpine-release", "alpine"),
        ("/etc/debian_version", "debian"),
    ];
    for (path, distro) in files {
        match text(fs, path) {
            Ok(Some(t)) => {
                let line = t.lines().next().unwrap_or("").trim().to_string();
                let distro = if *distro == "sles" && line.to_ascii_lowercase().contains("opensuse")
                {
                    "opensuse"
                } else {
                    distro
                };
                f.distro = Some(distro.to_string());
                f.os_version = if line.contains(' ') {
                    version_in(&line)
                } else {
                    Some(line.clone()).filter(|l| !l.is_empty())
                };
                f.product_name = Some(line).filter(|l| l.contains(' '));
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(t) = text(fs, "/etc/lsb-release")? {
        let kv = parse_key_values(&t);
        for (k, v) in kv {
            match k.as_str() {
                "DISTRIB_ID" => f.distro = Some(normalise_distro(&v)),
                "DISTRIB_RELEASE" => f.os_version = Some(v),
                "DISTRIB_DESCRIPTION" => f.product_name = Some(v),
                _ => {}
            }
        }
        return Ok(());
    }
    first_err.map_or(Ok(()), Err)
}

fn arch(fs: &mut dyn GuestFs, f: &mut LinuxFacts) -> Result<()> {
    let mut first_err = None;
    for p in SHELLS {
        match fs.read_head(p, 64) {
            Ok(Some(head)) => {
                if let Some(a) = elf_arch(&head) {
                    f.arch = Some(a);
                    return Ok(());
                }
            }
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn hostname(fs: &mut dyn GuestFs, f: &mut LinuxFacts) -> Result<()> {
    let clean = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 255 && !s.starts_with('#')).then(|| s.to_string())
    };
    for p in ["/etc/hostname", "/etc/HOSTNAME"] {
        if let Some(t) = text(fs, p)?
            && let Some(h) = t.lines().find_map(clean)
        {
            f.hostname = Some(h);
            return Ok(());
        }
    }
    if let Some(t) = text(fs, "/etc/sysconfig/network")? {
        f.hostname = parse_key_values(&t)
            .into_iter()
            .find(|(k, _)| k == "HOSTNAME")
            .and_then(|(_, v)| clean(&v));
    }
    Ok(())
}

/// Kernel versions from the names of kernels in a directory (`vmlinuz-5.15.0-91-generic`).
pub fn kernel_versions(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .filter_map(|n| {
            ["vmlinuz-", "vmlinux-", "Image-", "kernel-"]
                .iter()
                .find_map(|p| n.strip_prefix(p))
        })
        .filter(|v| !v.is_empty() && !v.ends_with(".old"))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn kernels(fs: &mut dyn GuestFs, f: &mut LinuxFacts) -> Result<()> {
    if let Some(names) = fs.list_dir("/boot")? {
        f.kernels = kernel_versions(&names);
    }
    Ok(())
}

fn virtio(fs: &mut dyn GuestFs, f: &mut LinuxFacts) -> Result<()> {
    let Some(mut versions) = fs.list_dir("/lib/modules")? else {
        return Ok(());
    };
    versions.sort();
    versions.truncate(MAX_MODULE_DIRS);
    let mut found: Vec<String> = Vec::new();
    for v in &versions {
        let builtin = text(fs, &format!("/lib/modules/{v}/modules.builtin"))?.unwrap_or_default();
        for (name, dir) in VIRTIO {
            if found.iter().any(|n| n == name) {
                continue;
            }
            let rel = format!("kernel/{dir}/{name}.ko");
            let as_module = fs
                .list_dir(&format!("/lib/modules/{v}/kernel/{dir}"))?
                .is_some_and(|names| {
                    names.iter().any(|n| {
                        n.strip_prefix(name).is_some_and(|rest| {
                            matches!(rest, ".ko" | ".ko.xz" | ".ko.zst" | ".ko.gz")
                        })
                    })
                });
            if as_module || builtin.lines().any(|l| l.trim() == rel) {
                found.push(name.to_string());
            }
        }
    }
    f.virtio_drivers = VIRTIO
        .iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| found.contains(n))
        .collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_unquoted() {
        let kv = parse_key_values("NAME=\"Ubuntu\"\nVERSION_ID='22.04'\n# c\nID=ubuntu\n");
        assert_eq!(kv[0], ("NAME".into(), "Ubuntu".into()));
        assert_eq!(kv[1], ("VERSION_ID".into(), "22.04".into()));
        assert_eq!(kv[2], ("ID".into(), "ubuntu".into()));
    }

    #[test]
    fn distro_names() {
        assert_eq!(normalise_distro("openSUSE-leap"), "opensuse");
        assert_eq!(normalise_distro("openEuler"), "openeuler");
        assert_eq!(normalise_distro("rhel"), "rhel");
        assert_eq!(normalise_distro("debian"), "debian");
    }

    #[test]
    fn kernels_from_boot_names() {
        let names: Vec<String> = [
            "vmlinuz-5.15.0-91-generic",
            "initrd.img",
            "vmlinuz-6.1.0",
            "config-6.1.0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(kernel_versions(&names), vec!["5.15.0-91-generic", "6.1.0"]);
        assert_eq!(
            version_in("CentOS Linux release 7.9.2009 (Core)").as_deref(),
            Some("7.9.2009")
        );
    }
}
