//! ISO 9660 images made by xorriso (and genisoimage): probed as `iso` without `-f`, inspected
//! (label, El Torito entries, BIOS/UEFI, the OS the medium names in `.disk/info` or
//! `.treeinfo`), registered with `--type iso` (recording what inspection found, `--os-version`
//! required only when the ISO does not say), refused by `convert`; and hostile ISOs (a boot
//! catalog outside the file, catalogs that run on, bad descriptor sets) refused at open with
//! their exact error kinds, quickly.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::catalog::{cli, ok_json, refused};
use common::{have, ims, put, run, s};
use ims::{Format, OpenOptions};
use serde_json::Value;

/// Boot images: a BIOS no-emulation loader of 2 KiB and an EFI image of 64 KiB (the catalog
/// does not care what they hold).
fn boot_files(root: &Path) {
    put(root, "boot/bios.img", &[0x90; 2048]);
    put(root, "boot/efi.img", &[0xef; 64 << 10]);
}

/// `xorriso -as mkisofs ARGS -o OUT ROOT` into `dir/name`.
fn xorriso(dir: &Path, name: &str, root: &Path, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut all = vec!["-as", "mkisofs", "-quiet"];
    all.extend(args);
    all.extend(["-o", s(&out), s(root)]);
    run("xorriso", &all);
    out
}

const BIOS: &[&str] = &[
    "-b",
    "boot/bios.img",
    "-c",
    "boot/boot.cat",
    "-no-emul-boot",
    "-boot-load-size",
    "4",
];
const UEFI: &[&str] = &["-e", "boot/efi.img", "-no-emul-boot"];

fn inspect_json(path: &Path) -> Value {
    let out = ims(&["inspect", "--output", "json", s(path)]);
    assert!(
        out.status.success(),
        "ims inspect {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn platforms(v: &Value) -> Vec<String> {
    v["iso"]["boot_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["platform"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn el_torito_bios_uefi_and_hybrid() {
    if !have("el_torito_bios_uefi_and_hybrid", &["xorriso"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    boot_files(&root);
    put(&root, "README.TXT", b"an ims test disc\n");

    let plain = xorriso(d, "plain.iso", &root, &["-V", "IMS_PLAIN"]);
    let v = inspect_json(&plain);
    assert_eq!(v["image_kind"], "iso");
    assert_eq!(v["iso"]["volume_label"], "IMS_PLAIN");
    assert_eq!(v["iso"]["boot_entries"], serde_json::json!([]));
    assert_eq!(v["firmware"], "unknown");
    assert_eq!(v["os_type"], "unknown");

    let bios = xorriso(d, "bios.iso", &root, &[&["-V", "IMS_BIOS"], BIOS].concat());
    let v = inspect_json(&bios);
    assert_eq!(v["image_kind"], "iso");
    assert_eq!(v["iso"]["volume_label"], "IMS_BIOS");
    assert_eq!(platforms(&v), ["x86"]);
    let entry = &v["iso"]["boot_entries"][0];
    assert_eq!(entry["bootable"], true);
    assert_eq!(entry["emulation"], "no-emulation");
    assert_eq!(entry["sector_count"], 4);
    assert_eq!(entry["section"], Value::Null);
    assert_eq!(
        (v["iso"]["bios"].clone(), v["iso"]["uefi"].clone()),
        (true.into(), false.into())
    );
    assert_eq!(v["firmware"], "bios");

    let uefi = xorriso(d, "uefi.iso", &root, &[&["-V", "IMS_UEFI"], UEFI].concat());
    let v = inspect_json(&uefi);
    assert!(platforms(&v).iter().all(|p| p == "efi"), "{v}");
    assert_eq!(
        (v["iso"]["bios"].clone(), v["iso"]["uefi"].clone()),
        (false.into(), true.into())
    );
    assert_eq!(v["firmware"], "uefi");

    let hybrid = xorriso(
        d,
        "hybrid.iso",
        &root,
        &[&["-V", "IMS_HYBRID"], BIOS, &["-eltorito-alt-boot"], UEFI].concat(),
    );
    let v = inspect_json(&hybrid);
    assert_eq!(platforms(&v), ["x86", "efi"]);
    assert_eq!(v["iso"]["boot_entries"][1]["section"], 1);
    assert_eq!(v["firmware"], "both");

    // `info` names the format; qemu-img would say raw.
    let out = ims(&["info", "--output", "json", s(&hybrid)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["format"], "iso");
    assert_eq!(info["virtual-size"], fs::metadata(&hybrid).unwrap().len());
}

/// A hybrid ISO as the distributions make them (an MBR or a GPT in the system area, the EFI
/// image in a partition appended after the volume): still an ISO, its partitions listed too.
#[test]
fn hybrid_iso_with_a_partition_table() {
    if !have("hybrid_iso_with_a_partition_table", &["xorriso"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    ubuntu_root(&root);
    let efi = d.join("efi.part");
    fs::write(&efi, vec![0u8; 1 << 20]).unwrap();
    for (name, table, gpt) in [("mbr.iso", "mbr", false), ("gpt.iso", "gpt", true)] {
        let mut args = vec!["-r", "-V", "HYBRID", "-partition_offset", "16"];
        args.extend(BIOS);
        args.extend([
            "-eltorito-alt-boot",
            "-e",
            "--interval:appended_partition_2:all::",
            "-no-emul-boot",
            "-append_partition",
            "2",
            "0xef",
            s(&efi),
        ]);
        if gpt {
            args.push("-appended_part_as_gpt");
        }
        let iso = xorriso(d, name, &root, &args);
        let v = inspect_json(&iso);
        assert_eq!(v["partition_table"], table, "{name}: {v}");
        assert!(
            v["partitions"].as_array().unwrap().len() >= 2,
            "{name}: {v}"
        );
        assert_eq!(v["image_kind"], "iso", "{name}");
        assert_eq!(v["whole_disk"]["filesystem"], "iso9660", "{name}");
        assert_eq!(v["iso"]["volume_label"], "HYBRID", "{name}");
        assert_eq!(platforms(&v), ["x86", "efi"], "{name}");
        assert_eq!(v["firmware"], "both", "{name}");
        assert_eq!(v["distro"], "ubuntu", "{name}");
        // The EFI image is the appended partition, after the ISO 9660 volume.
        let efi_entry = &v["iso"]["boot_entries"][1];
        let efi_part = v["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["number"] == 2)
            .unwrap();
        assert_eq!(
            efi_entry["load_rba"].as_u64().unwrap() * 2048,
            efi_part["start"].as_u64().unwrap(),
            "{name}: {v}"
        );
        let out = ims(&["info", "--output", "json", s(&iso)]);
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["format"], "iso", "{name}");
    }
}

/// genisoimage's El Torito catalog reads the same.
#[test]
fn genisoimage_bios() {
    if !have("genisoimage_bios", &["genisoimage"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    boot_files(&root);
    let iso = dir.path().join("g.iso");
    let mut args = vec!["-quiet", "-V", "GENISO"];
    args.extend(BIOS);
    args.extend(["-o", s(&iso), s(&root)]);
    run("genisoimage", &args);
    let v = inspect_json(&iso);
    assert_eq!(v["iso"]["volume_label"], "GENISO");
    assert_eq!(platforms(&v), ["x86"]);
    assert_eq!(v["firmware"], "bios");
}

fn ubuntu_root(root: &Path) {
    boot_files(root);
    put(
        root,
        ".disk/info",
        b"Ubuntu 22.04.3 LTS \"Jammy Jellyfish\" - Release amd64 (20230807.2)",
    );
}

/// The OS from `.disk/info` (Rock Ridge names) and `.treeinfo` (Joliet names only).
#[test]
fn the_os_the_medium_names() {
    if !have("the_os_the_medium_names", &["xorriso"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("ubuntu");
    ubuntu_root(&root);
    let iso = xorriso(
        d,
        "ubuntu.iso",
        &root,
        &[
            &["-r", "-V", "Ubuntu 22.04.3 LTS amd64"],
            BIOS,
            &["-eltorito-alt-boot"],
            UEFI,
        ]
        .concat(),
    );
    let v = inspect_json(&iso);
    assert_eq!(v["image_kind"], "iso");
    assert_eq!(v["os_type"], "linux");
    assert_eq!(v["distro"], "ubuntu");
    assert_eq!(v["os_version"], "22.04");
    assert_eq!(v["arch"], "x86_64");
    assert_eq!(v["product_name"], "Ubuntu 22.04.3 LTS \"Jammy Jellyfish\"");
    assert_eq!(v["iso"]["os_source"], ".disk/info");

    let root = d.join("rhel");
    boot_files(&root);
    put(
        &root,
        ".treeinfo",
        b"[header]\ntype = productmd.treeinfo\nversion = 1.2\n\n[release]\nname = Red Hat Enterprise Linux\nshort = RHEL\nversion = 9.2\n\n[tree]\narch = x86_64\nplatforms = x86_64\n",
    );
    // Joliet only: no Rock Ridge names in the primary tree.
    let iso = xorriso(
        d,
        "rhel.iso",
        &root,
        &[&["-J", "-V", "RHEL-9-2-0-BaseOS-x86_64"], BIOS].concat(),
    );
    let v = inspect_json(&iso);
    assert_eq!(v["distro"], "rhel");
    assert_eq!(v["os_version"], "9.2");
    assert_eq!(v["arch"], "x86_64");
    assert_eq!(v["iso"]["os_source"], ".treeinfo");

    // Windows setup media: the sources folder (no version), the architecture from the label.
    let root = d.join("win");
    boot_files(&root);
    put(&root, "sources/install.wim", b"MSWIM\0\0\0");
    let iso = xorriso(
        d,
        "win.iso",
        &root,
        &[&["-J", "-V", "CCCOMA_X64FRE_EN-US_DV9"], BIOS].concat(),
    );
    let v = inspect_json(&iso);
    assert_eq!(v["os_type"], "windows");
    assert_eq!(v["arch"], "x86_64");
    assert_eq!(v["os_version"], Value::Null);
}

/// `ims register FILE.iso --type iso` records what inspection found; `--os-version` is needed
/// only when the ISO does not say which OS it installs; an ISO is no disk and a disk no ISO.
#[test]
fn register_records_what_the_iso_says() {
    if !have("register_records_what_the_iso_says", &["xorriso"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let root = d.join("ubuntu");
    ubuntu_root(&root);
    let iso = xorriso(
        d,
        "ubuntu.iso",
        &root,
        &[&["-r", "-V", "UBUNTU"], BIOS, &["-eltorito-alt-boot"], UEFI].concat(),
    );
    let register = |file: &Path, name: &str, extra: &[&str]| {
        let mut args = vec!["register", s(file), "--name", name, "--output", "json"];
        args.extend(extra);
        cli(&home, "owner", &args)
    };
    let r = ok_json(&register(&iso, "ubuntu", &["--type", "iso"]));
    assert_eq!(r["image_type"], "iso");
    assert_eq!(r["status"], "active");
    assert_eq!(r["source_format"], "iso");
    assert_eq!(r["os_type"], "Linux");
    assert_eq!(r["platform"], "Ubuntu");
    assert_eq!(r["os_version"], "Ubuntu 22.04 64bit");
    assert_eq!(r["architecture"], "x86_64");
    assert_eq!(r["iso"]["volume_label"], "UBUNTU");
    assert_eq!(
        (r["iso"]["bios"].clone(), r["iso"]["uefi"].clone()),
        (true.into(), true.into())
    );
    assert_eq!(
        r["iso"]["product_name"],
        "Ubuntu 22.04.3 LTS \"Jammy Jellyfish\""
    );

    // An ISO that names no OS: --os-version is required, and then recorded.
    let root = d.join("plain");
    boot_files(&root);
    let plain = xorriso(d, "plain.iso", &root, &[&["-V", "TOOLS"], BIOS].concat());
    refused(
        &register(&plain, "tools", &["--type", "iso"]),
        "os_version_required",
    );
    let r = ok_json(&register(
        &plain,
        "tools",
        &["--type", "iso", "--os-version", "Other Linux 64bit"],
    ));
    assert_eq!(r["os_version"], "Other Linux 64bit");
    assert_eq!(r["iso"]["volume_label"], "TOOLS");
    assert_eq!(r["firmware"], "bios");

    // An ISO is not a disk.
    refused(
        &register(&iso, "as-data", &["--type", "data"]),
        "iso_type_mismatch",
    );
}

/// `convert` refuses an ISO by name; `-f raw` converts its bytes as a raw disk.
#[test]
fn convert_refuses_an_iso() {
    if !have("convert_refuses_an_iso", &["xorriso"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    boot_files(&root);
    let iso = xorriso(d, "x.iso", &root, &["-V", "X"]);
    let out_path = d.join("x.qcow2");
    let out = ims(&["convert", "-O", "qcow2", s(&iso), s(&out_path)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("iso") && err.contains("-f raw"), "{err}");
    assert!(!out_path.exists());
    let out = ims(&["convert", "-f", "raw", "-O", "qcow2", s(&iso), s(&out_path)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The qcow2 of the ISO is a qcow2 whose guest is an ISO: inspected as one.
    let v = inspect_json(&out_path);
    assert_eq!(v["image_kind"], "iso");
    // Writing an ISO is not something ims does.
    let out = ims(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "iso",
        s(&iso),
        s(&d.join("y.iso")),
    ]);
    assert!(!out.status.success());
}

// ---- Hostile ISOs: each refused at open with its exact kind, quickly. ----

fn open_kind(bytes: &[u8], dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    let start = Instant::now();
    let r = ims::open(&path, &OpenOptions::default());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{name} took too long"
    );
    match r {
        Ok(image) => {
            assert_eq!(image.format(), Format::Iso, "{name}");
            "ok".into()
        }
        Err(e) => e.kind().to_string(),
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Sets the validation entry's checksum so that its 16 words sum to zero.
fn fix_checksum(entry: &mut [u8]) {
    entry[28] = 0;
    entry[29] = 0;
    let sum = entry.chunks_exact(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    entry[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
}

#[test]
fn hostile_isos() {
    if !have("hostile_isos", &["xorriso"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    boot_files(&root);
    // Room after the catalog for a catalog that runs on.
    put(&root, "pad.bin", &vec![0x5a; 256 << 10]);
    let iso = fs::read(xorriso(
        d,
        "good.iso",
        &root,
        &[&["-V", "GOOD"], BIOS, &["-eltorito-alt-boot"], UEFI].concat(),
    ))
    .unwrap();
    assert_eq!(open_kind(&iso, d, "good.iso"), "ok");
    // The boot record is at sector 17 (xorriso's order: primary, boot record, terminator).
    let br = 17 * 2048;
    assert_eq!(&iso[br + 7..br + 30], b"EL TORITO SPECIFICATION");
    let cat = le32(&iso, br + 0x47) as usize * 2048;
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = iso.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "boot catalog outside the file",
            "malformed",
            edit(&|b| b[br + 0x47..br + 0x4b].copy_from_slice(&0x00ff_ffffu32.to_le_bytes())),
        ),
        (
            "boot catalog over the descriptors",
            "malformed",
            edit(&|b| b[br + 0x47..br + 0x4b].copy_from_slice(&16u32.to_le_bytes())),
        ),
        (
            "validation entry with a bad checksum",
            "malformed",
            edit(&|b| b[cat + 4] ^= 0xff),
        ),
        (
            "boot image outside the file",
            "malformed",
            edit(&|b| b[cat + 40..cat + 44].copy_from_slice(&0x0fff_ffffu32.to_le_bytes())),
        ),
        (
            "section header claiming 65535 entries",
            "limit-exceeded",
            edit(&|b| {
                b[cat + 66..cat + 68].copy_from_slice(&u16::MAX.to_le_bytes());
                // Bootable-looking entries all the way to the cap.
                for i in 3..(64 << 10) / 32 {
                    let e = cat + 32 * i;
                    b[e..e + 32].fill(0);
                    b[e] = 0x88;
                }
            }),
        ),
        (
            "section headers that never end",
            "limit-exceeded",
            edit(&|b| {
                for i in 2..(64 << 10) / 32 {
                    let e = cat + 32 * i;
                    b[e..e + 32].fill(0);
                    b[e] = 0x90;
                }
            }),
        ),
        (
            "descriptor set without a terminator",
            "malformed",
            edit(&|b| {
                // Every descriptor after the boot record becomes junk.
                b[18 * 2048 + 1..18 * 2048 + 6].copy_from_slice(b"XXXXX");
            }),
        ),
        (
            "volume larger than the file (truncated)",
            "truncated",
            iso[..iso.len() / 2].to_vec(),
        ),
        (
            "volume size copies that disagree",
            "malformed",
            edit(&|b| b[16 * 2048 + 84] ^= 1),
        ),
        (
            "unknown descriptor type",
            "malformed",
            edit(&|b| b[18 * 2048] = 7),
        ),
    ];
    for (name, kind, bytes) in cases {
        assert_eq!(open_kind(&bytes, d, "hostile.iso"), kind, "{name}");
    }
    // The checksum fixed after an edit: the catalog's own checks, not the checksum, refuse it.
    let bad_indicator = edit(&|b| {
        b[cat + 32] = 0x77;
        fix_checksum(&mut b[cat..cat + 32]);
    });
    assert_eq!(open_kind(&bad_indicator, d, "indicator.iso"), "malformed");
}
