//! Helpers of the catalog tests (tests/register.rs, tests/image_kinds.rs): guests and data
//! disks built here, `ims` run against a catalog home as a project of region r1, and what a
//! store holds.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::{Rng, elf64, put, run, s};

const MIB: u64 = 1 << 20;

pub const GUEST_TOOLS: &[&str] = &["sgdisk", "mkfs.vfat", "mmd", "mcopy", "mkfs.ext4"];

/// An 80 MiB Ubuntu-like guest: GPT, a FAT16 ESP holding `loader` (UEFI) when given, and an
/// ext4 root with os-release, a shell for `machine`, cloud-init and a virtio driver.
pub fn linux_guest(dir: &Path, name: &str, machine: u16, loader: Option<&str>) -> PathBuf {
    let root = dir.join(format!("{name}.root"));
    put(
        &root,
        "etc/os-release",
        b"NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nPRETTY_NAME=\"Ubuntu 22.04.3 LTS\"\n",
    );
    put(&root, "bin/sh", &elf64(machine));
    put(&root, "usr/bin/bash", &elf64(machine));
    put(&root, "etc/cloud/cloud.cfg", b"datasource_list: [ None ]\n");
    put(
        &root,
        "lib/modules/5.15.0-91-generic/kernel/drivers/block/virtio_blk.ko",
        &[0; 512],
    );
    put(&root, "boot/vmlinuz-5.15.0-91-generic", &[7; 4096]);
    let disk = dir.join(format!("{name}.raw"));
    fs::File::create(&disk).unwrap().set_len(80 * MIB).unwrap();
    run(
        "sgdisk",
        &[
            "-n1:2048:+32M",
            "-t1:ef00",
            "-n2:67584:+40M",
            "-t2:8300",
            s(&disk),
        ],
    );
    if let Some(loader) = loader {
        run(
            "mkfs.vfat",
            &["-F", "16", "--offset=2048", s(&disk), "32768"],
        );
        let stub = dir.join(format!("{name}.efi"));
        fs::write(&stub, [0x4d, 0x5a, 0, 0]).unwrap();
        let img = format!("{}@@{}", s(&disk), 2048 * 512);
        run("mmd", &["-i", &img, "::/EFI", "::/EFI/BOOT"]);
        run(
            "mcopy",
            &["-i", &img, s(&stub), &format!("::/EFI/BOOT/{loader}")],
        );
    }
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            &format!("offset={},root_owner=0:0", 67584 * 512),
            "-d",
            s(&root),
            s(&disk),
            "40960k",
        ],
    );
    disk
}

/// A 32 MiB whole-disk ext4 data disk holding a few files.
pub fn data_disk(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(format!("{name}.root"));
    for i in 0..5 {
        put(
            &root,
            &format!("srv/file{i}.txt"),
            format!("{i}\n").repeat(1000).as_bytes(),
        );
    }
    let disk = dir.join(format!("{name}.raw"));
    fs::File::create(&disk).unwrap().set_len(32 * MIB).unwrap();
    run(
        "mkfs.ext4",
        &["-q", "-F", "-E", "root_owner=0:0", "-d", s(&root), s(&disk)],
    );
    disk
}

/// A raw file of `size` bytes: `data` MiB of pseudo-random bytes, then zeros.
pub fn random_raw(path: &Path, size: u64, data: u64, seed: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..data {
        rng.fill(&mut buf);
        f.write_all_at(&buf, i * MIB).unwrap();
    }
}

/// `ims ARGS` with the catalog at `home`, as `project` in region r1.
pub fn cli(home: &Path, project: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ims"))
        .args(args)
        .env("IMS_HOME", home)
        .env("IMS_PROJECT", project)
        .env("IMS_REGION", "r1")
        .env_remove("IMS_TEST_CRASH_AT")
        .output()
        .expect("run ims")
}

pub fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "ims failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// The command was refused with `code`: exit 1, `ims: CODE: message`, no panic.
pub fn refused(out: &Output, code: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected {code}, got: {err}");
    assert!(
        err.starts_with(&format!("ims: {code}: ")),
        "expected {code}, got: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

pub fn list(home: &Path, project: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["images", "list", "--output", "json"];
    all.extend(args);
    ok_json(&cli(home, project, &all))["images"]
        .as_array()
        .unwrap()
        .clone()
}

/// Files under the store other than committed images: what a registration left behind.
pub fn stray_files(home: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![home.join("store")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
