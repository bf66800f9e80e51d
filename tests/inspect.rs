//! Guest inspection on small real disks built here with the standard tools (sgdisk, sfdisk,
//! mkfs.ext4 -d, mkfs.vfat + mtools, mkfs.xfs -p, mkntfs + ntfs-3g, genisoimage), each
//! inspected as raw, QCOW2 and compressed QCOW2 (made by `ims convert`), and hostile guests
//! that must give unknown facts or an error quickly. A test whose tool is missing says so and
//! skips.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{elf64, have, ims, put, run, run_env, s};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(target, p).unwrap();
}

/// A minimal PE image header for `machine` (0x8664 x64).
fn pe(machine: u16) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[0..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    b[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
    b
}

/// An empty (sparse) file of `size` bytes.
fn blank(path: &Path, size: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// Copies the file-system image `fs_img` into `disk` at byte `offset`, leaving zeros as holes.
fn place(disk: &Path, fs_img: &Path, offset: u64) {
    let src = fs::File::open(fs_img).unwrap();
    let dst = fs::OpenOptions::new().write(true).open(disk).unwrap();
    let len = src.metadata().unwrap().len();
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(MIB) as usize;
        src.read_exact_at(&mut buf[..n], pos).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], offset + pos).unwrap();
        }
        pos += n as u64;
    }
}

/// An ext4 image of `size` bytes holding the tree at `root`.
fn mkext4(img: &Path, size: u64, root: &Path, uuid: &str) {
    blank(img, size);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-U",
            uuid,
            "-E",
            "root_owner=0:0",
            "-d",
            s(root),
            s(img),
        ],
    );
}

/// A FAT16 EFI system partition image holding `loaders` (paths under the root).
fn mkesp(img: &Path, size: u64, loaders: &[&str]) {
    blank(img, size);
    run(
        "mkfs.vfat",
        &["-F", "16", "-n", "ESP", "-i", "0A1B2C3D", s(img)],
    );
    let env = [("MTOOLS_SKIP_CHECK", "1")];
    let stub = img.with_extension("efi");
    fs::write(&stub, pe(0x8664)).unwrap();
    let mut made = std::collections::HashSet::new();
    for l in loaders {
        let mut dir = String::new();
        let parts: Vec<&str> = l.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            dir.push('/');
            dir.push_str(p);
            if made.insert(dir.clone()) {
                run_env("mmd", &["-i", s(img), &format!("::{dir}")], &env);
            }
        }
        run_env("mcopy", &["-i", s(img), s(&stub), &format!("::/{l}")], &env);
    }
}

/// `ims inspect --output json [ARGS] PATH`.
fn inspect_json_with(args: &[&str], path: &Path) -> Value {
    let mut all = vec!["inspect", "--output", "json"];
    all.extend(args);
    all.push(s(path));
    let out = ims(&all);
    assert!(
        out.status.success(),
        "ims inspect {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn inspect_json(path: &Path) -> Value {
    inspect_json_with(&[], path)
}

/// Inspects `raw` as raw, as QCOW2 and as compressed QCOW2, and checks each answer.
fn each_format(raw: &Path, check: impl Fn(&Value)) {
    let dir = raw.parent().unwrap();
    let stem = raw.file_stem().unwrap().to_str().unwrap();
    // Named raw: the bytes as they are (without -f an ISO is probed as `iso`: tests/iso.rs).
    check(&inspect_json_with(&["-f", "raw"], raw));
    for (name, extra) in [("qcow2", None), ("c.qcow2", Some("-c"))] {
        let out = dir.join(format!("{stem}.{name}"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend(extra);
        args.extend([s(raw), s(&out)]);
        let r = ims(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let v = inspect_json(&out);
        check(&v);
    }
}

fn part(v: &Value, n: usize) -> &Value {
    &v["partitions"][n]
}

/// The Ubuntu-like root tree: os-release, shell, cloud-init, virtio modules, a kernel.
fn ubuntu_root(r: &Path, shell: &[u8]) {
    put(
        r,
        "etc/os-release",
        b"PRETTY_NAME=\"Ubuntu 22.04.3 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nID_LIKE=debian\n",
    );
    put(r, "etc/hostname", b"ubuntu-guest\n");
    put(
        r,
        "etc/cloud/cloud.cfg",
        b"datasource_list: [ OpenStack, None ]\n",
    );
    put(r, "usr/bin/dash", shell);
    link(r, "bin", "usr/bin");
    link(r, "usr/bin/sh", "dash");
    link(r, "lib", "usr/lib");
    let m = "usr/lib/modules/5.15.0-91-generic/kernel/drivers";
    put(r, &format!("{m}/block/virtio_blk.ko.zst"), &[1; 100]);
    put(r, &format!("{m}/net/virtio_net.ko.zst"), &[1; 100]);
    put(r, "boot/vmlinuz-5.15.0-91-generic", &[7; 65536]);
}

#[test]
fn ubuntu_gpt_esp_ext4_uefi_with_cloud_init() {
    if !have(
        "ubuntu_gpt_esp_ext4_uefi_with_cloud_init",
        &["sgdisk", "mkfs.vfat", "mmd", "mcopy", "mkfs.ext4"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    ubuntu_root(&root, &elf64(0x3e));
    let disk = d.join("ubuntu.raw");
    blank(&disk, 128 * MIB);
    run(
        "sgdisk",
        &[
            "-n1:2048:+32M",
            "-t1:ef00",
            "-n2:67584:+64M",
            "-t2:8300",
            s(&disk),
        ],
    );
    mkesp(
        &d.join("esp.img"),
        32 * MIB,
        &["EFI/BOOT/BOOTX64.EFI", "EFI/ubuntu/shimx64.efi"],
    );
    place(&disk, &d.join("esp.img"), 2048 * 512);
    mkext4(
        &d.join("root.img"),
        64 * MIB,
        &root,
        "6f1d7c3e-2b4a-4e8f-9c0d-1a2b3c4d5e6f",
    );
    place(&disk, &d.join("root.img"), 67584 * 512);
    each_format(&disk, |v| {
        assert_eq!(v["partition_table"], "gpt");
        assert_eq!(v["partitions"].as_array().unwrap().len(), 2);
        assert_eq!(part(v, 0)["type"]["name"], "EFI System");
        assert_eq!(part(v, 0)["filesystem"], "fat16");
        assert_eq!(part(v, 0)["uuid"], "0A1B-2C3D");
        assert_eq!(part(v, 0)["label"], "ESP");
        assert_eq!(part(v, 1)["filesystem"], "ext4");
        assert_eq!(part(v, 1)["uuid"], "6f1d7c3e-2b4a-4e8f-9c0d-1a2b3c4d5e6f");
        assert_eq!(v["image_kind"], "system");
        assert_eq!(v["os_type"], "linux");
        assert_eq!(v["distro"], "ubuntu");
        assert_eq!(v["os_version"], "22.04");
        assert_eq!(v["product_name"], "Ubuntu 22.04.3 LTS");
        assert_eq!(v["arch"], "x86_64");
        assert_eq!(v["firmware"], "uefi");
        assert_eq!(v["root_filesystem"]["partition"], 2);
        assert_eq!(v["root_filesystem"]["filesystem"], "ext4");
        assert_eq!(v["hostname"], "ubuntu-guest");
        assert_eq!(v["kernels"], serde_json::json!(["5.15.0-91-generic"]));
        assert_eq!(v["cloud_init"], true);
        assert_eq!(v["cloud_init_agent"], "cloud-init");
        assert_eq!(v["virtio"], true);
        assert_eq!(
            v["virtio_drivers"],
            serde_json::json!(["virtio_blk", "virtio_net"])
        );
        assert_eq!(
            v["efi_loaders"],
            serde_json::json!(["EFI/BOOT/BOOTX64.EFI", "EFI/ubuntu/shimx64.efi"])
        );
        assert_eq!(v["notes"], serde_json::json!([]));
    });
    // The library answers the same as a struct.
    let image = ims::open(&disk, &Default::default()).unwrap();
    let facts = ims::inspect::inspect_image(&image).unwrap();
    assert_eq!(facts.os_type, ims::inspect::OsType::Linux);
    assert_eq!(facts.firmware, ims::inspect::Firmware::Uefi);
    assert_eq!(facts.arch, "x86_64");
}

/// Partitions `disk` with sfdisk from `script` (sfdisk's input format).
fn sfdisk(disk: &Path, script: &str) {
    use std::io::Write as _;
    let mut child = Command::new("sfdisk")
        .args(["-q", s(disk)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Boot code in the MBR, as GRUB's boot.img starts.
fn write_boot_code(disk: &Path) {
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    let mut code = vec![0xeb, 0x63, 0x90];
    code.resize(0x180, 0x90);
    code.extend_from_slice(b"GRUB \0Geom\0Hard Disk\0Read\0 Error\r\n\0");
    f.write_all_at(&code, 0).unwrap();
}

#[test]
fn centos_mbr_ext4_bios_without_cloud_init() {
    if !have(
        "centos_mbr_ext4_bios_without_cloud_init",
        &["sfdisk", "mkfs.ext4"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = d.join("root");
    put(
        &r,
        "etc/os-release",
        b"NAME=\"CentOS Linux\"\nVERSION=\"7 (Core)\"\nID=\"centos\"\nID_LIKE=\"rhel fedora\"\nVERSION_ID=\"7\"\nPRETTY_NAME=\"CentOS Linux 7 (Core)\"\n",
    );
    put(
        &r,
        "etc/centos-release",
        b"CentOS Linux release 7.9.2009 (Core)\n",
    );
    put(&r, "etc/hostname", b"centos7\n");
    put(&r, "usr/bin/bash", &elf64(0x3e));
    link(&r, "bin", "usr/bin");
    let m = "lib/modules/3.10.0-1160.el7.x86_64";
    // virtio_blk built in, no modules.
    put(
        &r,
        &format!("{m}/modules.builtin"),
        b"kernel/drivers/block/virtio_blk.ko\nkernel/fs/ext4/ext4.ko\n",
    );
    put(&r, "boot/vmlinuz-3.10.0-1160.el7.x86_64", &[7; 4096]);
    let disk = d.join("centos.raw");
    blank(&disk, 80 * MIB);
    // A bootable Linux partition and an extended partition holding a swap logical partition.
    sfdisk(
        &disk,
        "label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=98304, type=83, bootable\nstart=100352, size=30720, type=5\nstart=102400, size=8192, type=82\n",
    );
    write_boot_code(&disk);
    mkext4(
        &d.join("root.img"),
        48 * MIB,
        &r,
        "11111111-2222-3333-4444-555555555555",
    );
    place(&disk, &d.join("root.img"), 2048 * 512);
    // A swap signature in the logical partition.
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(b"SWAPSPACE2", 102400 * 512 + 4086).unwrap();
    drop(f);
    each_format(&disk, |v| {
        assert_eq!(v["partition_table"], "mbr");
        assert_eq!(v["disk_id"], "1234abcd");
        let numbers: Vec<u64> = v["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, vec![1, 2, 5]);
        assert_eq!(part(v, 0)["bootable"], true);
        assert_eq!(part(v, 0)["type"]["id"], "0x83");
        assert_eq!(part(v, 1)["type"]["name"], "Extended");
        assert_eq!(part(v, 2)["filesystem"], "swap");
        assert_eq!(v["os_type"], "linux");
        assert_eq!(v["distro"], "centos");
        assert_eq!(v["os_version"], "7");
        assert_eq!(v["product_name"], "CentOS Linux 7 (Core)");
        assert_eq!(v["arch"], "x86_64");
        assert_eq!(v["firmware"], "bios");
        assert_eq!(v["hostname"], "centos7");
        assert_eq!(v["kernels"], serde_json::json!(["3.10.0-1160.el7.x86_64"]));
        assert_eq!(v["cloud_init"], false);
        assert_eq!(v["cloud_init_agent"], Value::Null);
        assert_eq!(v["virtio"], true);
        assert_eq!(v["virtio_drivers"], serde_json::json!(["virtio_blk"]));
        assert_eq!(v["image_kind"], "system");
    });
}

/// Writes an mkfs.xfs prototype file for the tree at `root`.
fn xfs_proto(root: &Path, out: &Path) {
    fn walk(dir: &Path, text: &mut String) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().into_string().unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            if meta.file_type().is_symlink() {
                let t = fs::read_link(e.path()).unwrap();
                text.push_str(&format!("{name} l--777 0 0 {}\n", t.display()));
            } else if meta.is_dir() {
                text.push_str(&format!("{name} d--755 0 0\n"));
                walk(&e.path(), text);
                text.push_str("$\n");
            } else {
                text.push_str(&format!("{name} ---644 0 0 {}\n", e.path().display()));
            }
        }
    }
    let mut text = String::from("/dev/null\n0 0\nd--755 0 0\n");
    walk(root, &mut text);
    text.push_str("$\n");
    fs::write(out, text).unwrap();
}

#[test]
fn xfs_root_on_gpt_with_bios_boot_partition() {
    if !have(
        "xfs_root_on_gpt_with_bios_boot_partition",
        &["sgdisk", "mkfs.xfs"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = d.join("root");
    put(
        &r,
        "etc/os-release",
        b"NAME=\"Rocky Linux\"\nVERSION=\"9.2 (Blue Onyx)\"\nID=\"rocky\"\nVERSION_ID=\"9.2\"\nPRETTY_NAME=\"Rocky Linux 9.2 (Blue Onyx)\"\n",
    );
    // Enough entries in /etc for a multi-block (leaf form) directory.
    for i in 0..400 {
        put(&r, &format!("etc/conf{i:04}.d"), b"x\n");
    }
    put(&r, "etc/hostname", b"rocky9\n");
    put(&r, "usr/bin/bash", &elf64(0x3e));
    link(&r, "bin", "usr/bin");
    link(&r, "usr/bin/sh", "bash");
    link(&r, "lib", "usr/lib");
    put(&r, "usr/bin/cloud-init", b"#!/usr/bin/python3\n");
    let m = "usr/lib/modules/5.14.0-284.el9.x86_64/kernel/drivers";
    put(&r, &format!("{m}/block/virtio_blk.ko.xz"), &[1; 10]);
    put(&r, &format!("{m}/scsi/virtio_scsi.ko.xz"), &[1; 10]);
    // A kernel big enough to need several extents' worth of blocks.
    put(
        &r,
        "boot/vmlinuz-5.14.0-284.el9.x86_64",
        &vec![9u8; 3 << 20],
    );
    let disk = d.join("rocky.raw");
    blank(&disk, 400 * MIB);
    run(
        "sgdisk",
        &[
            "-n1:2048:+1M",
            "-t1:ef02",
            "-n2:4096:+350M",
            "-t2:8300",
            s(&disk),
        ],
    );
    let proto = d.join("proto");
    xfs_proto(&r, &proto);
    let img = d.join("root.xfs");
    blank(&img, 350 * MIB);
    run_env(
        "mkfs.xfs",
        &["-q", "-f", "-L", "rocky-root", "-p", s(&proto), s(&img)],
        &[("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")],
    );
    place(&disk, &img, 4096 * 512);
    each_format(&disk, |v| {
        assert_eq!(v["partition_table"], "gpt");
        assert_eq!(part(v, 0)["type"]["name"], "BIOS boot");
        assert_eq!(part(v, 1)["filesystem"], "xfs");
        assert_eq!(part(v, 1)["label"], "rocky-root");
        assert_eq!(v["os_type"], "linux");
        assert_eq!(v["distro"], "rocky");
        assert_eq!(v["os_version"], "9.2");
        assert_eq!(v["arch"], "x86_64");
        assert_eq!(v["firmware"], "bios");
        assert_eq!(v["hostname"], "rocky9");
        assert_eq!(v["root_filesystem"]["filesystem"], "xfs");
        assert_eq!(v["kernels"], serde_json::json!(["5.14.0-284.el9.x86_64"]));
        assert_eq!(v["cloud_init"], true);
        assert_eq!(
            v["virtio_drivers"],
            serde_json::json!(["virtio_blk", "virtio_scsi"])
        );
        assert_eq!(v["notes"], serde_json::json!([]));
    });
}

#[test]
fn aarch64_guest_with_uefi() {
    if !have(
        "aarch64_guest_with_uefi",
        &["sgdisk", "mkfs.vfat", "mmd", "mcopy", "mkfs.ext4"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = d.join("root");
    put(
        &r,
        "usr/lib/os-release",
        b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n",
    );
    link(&r, "etc/os-release", "../usr/lib/os-release");
    put(&r, "usr/bin/dash", &elf64(0xb7));
    link(&r, "bin", "usr/bin");
    link(&r, "usr/bin/sh", "/bin/dash");
    let disk = d.join("arm.raw");
    blank(&disk, 100 * MIB);
    run(
        "sgdisk",
        &[
            "-n1:2048:+32M",
            "-t1:ef00",
            "-n2:67584:+48M",
            "-t2:8305",
            s(&disk),
        ],
    );
    mkesp(&d.join("esp.img"), 32 * MIB, &["EFI/BOOT/BOOTAA64.EFI"]);
    place(&disk, &d.join("esp.img"), 2048 * 512);
    mkext4(
        &d.join("root.img"),
        48 * MIB,
        &r,
        "22222222-2222-3333-4444-555555555555",
    );
    place(&disk, &d.join("root.img"), 67584 * 512);
    each_format(&disk, |v| {
        assert_eq!(part(v, 1)["type"]["name"], "Linux root (ARM-64)");
        assert_eq!(v["distro"], "debian");
        assert_eq!(v["os_version"], "12");
        assert_eq!(v["arch"], "aarch64");
        assert_eq!(v["firmware"], "uefi");
        assert_eq!(
            v["efi_loaders"],
            serde_json::json!(["EFI/BOOT/BOOTAA64.EFI"])
        );
        assert_eq!(v["cloud_init"], false);
        assert_eq!(v["virtio"], false);
        assert_eq!(v["hostname"], Value::Null);
    });
}

/// A registry hive with keys at paths and values, laid out as Windows does (compressed
/// names, `lh` lists); `keys` are written children first.
struct Hive {
    bins: Vec<u8>,
}

impl Hive {
    fn new() -> Self {
        let mut bins = vec![0u8; 32];
        bins[0..4].copy_from_slice(b"hbin");
        Hive { bins }
    }

    fn cell(&mut self, data: &[u8]) -> u32 {
        let off = self.bins.len() as u32;
        let size = (data.len() + 4).div_ceil(8) * 8;
        self.bins.extend_from_slice(&(-(size as i32)).to_le_bytes());
        self.bins.extend_from_slice(data);
        self.bins.resize(off as usize + size, 0);
        off
    }

    fn key(&mut self, name: &str, subkeys: &[u32], values: &[(&str, u32, Vec<u8>)]) -> u32 {
        let list = if subkeys.is_empty() {
            u32::MAX
        } else {
            let mut l = b"lh".to_vec();
            l.extend_from_slice(&(subkeys.len() as u16).to_le_bytes());
            for k in subkeys {
                l.extend_from_slice(&k.to_le_bytes());
                l.extend_from_slice(&0u32.to_le_bytes());
            }
            self.cell(&l)
        };
        let mut vks = Vec::new();
        for (vname, ty, data) in values {
            let mut vk = b"vk".to_vec();
            vk.extend_from_slice(&(vname.len() as u16).to_le_bytes());
            if data.len() <= 4 {
                vk.extend_from_slice(&(data.len() as u32 | 0x8000_0000).to_le_bytes());
                let mut inline = data.clone();
                inline.resize(4, 0);
                vk.extend_from_slice(&inline);
            } else {
                let c = self.cell(data);
                vk.extend_from_slice(&(data.len() as u32).to_le_bytes());
                vk.extend_from_slice(&c.to_le_bytes());
            }
            vk.extend_from_slice(&ty.to_le_bytes());
            vk.extend_from_slice(&1u16.to_le_bytes());
            vk.extend_from_slice(&[0, 0]);
            vk.extend_from_slice(vname.as_bytes());
            vks.push(self.cell(&vk));
        }
        let values_list = if vks.is_empty() {
            u32::MAX
        } else {
            let l: Vec<u8> = vks.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.cell(&l)
        };
        let mut nk = vec![0u8; 76];
        nk[0..2].copy_from_slice(b"nk");
        nk[2..4].copy_from_slice(&0x20u16.to_le_bytes());
        nk[20..24].copy_from_slice(&(subkeys.len() as u32).to_le_bytes());
        nk[28..32].copy_from_slice(&list.to_le_bytes());
        nk[36..40].copy_from_slice(&(values.len() as u32).to_le_bytes());
        nk[40..44].copy_from_slice(&values_list.to_le_bytes());
        nk[72..74].copy_from_slice(&(name.len() as u16).to_le_bytes());
        nk.extend_from_slice(name.as_bytes());
        self.cell(&nk)
    }

    fn finish(mut self, root: u32) -> Vec<u8> {
        let len = self.bins.len().div_ceil(4096) * 4096;
        self.bins.resize(len, 0);
        self.bins[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        let mut out = vec![0u8; 4096];
        out[0..4].copy_from_slice(b"regf");
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..28].copy_from_slice(&5u32.to_le_bytes());
        out[36..40].copy_from_slice(&root.to_le_bytes());
        out[40..44].copy_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.bins);
        out
    }
}

fn sz(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain([0])
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

fn software_hive() -> Vec<u8> {
    let mut h = Hive::new();
    let cv = h.key(
        "CurrentVersion",
        &[],
        &[
            ("ProductName", 1, sz("Windows Server 2022 Datacenter")),
            ("EditionID", 1, sz("ServerDatacenter")),
            ("InstallationType", 1, sz("Server")),
            ("CurrentVersion", 1, sz("6.3")),
            ("CurrentBuildNumber", 1, sz("20348")),
            ("CurrentMajorVersionNumber", 4, 10u32.to_le_bytes().to_vec()),
            ("CurrentMinorVersionNumber", 4, 0u32.to_le_bytes().to_vec()),
        ],
    );
    let nt = h.key("Windows NT", &[cv], &[]);
    let other = h.key("Windows", &[], &[]);
    let ms = h.key("Microsoft", &[other, nt], &[]);
    let classes = h.key("Classes", &[], &[]);
    let root = h.key("ROOT", &[classes, ms], &[]);
    h.finish(root)
}

fn system_hive() -> Vec<u8> {
    let mut h = Hive::new();
    let cn = h.key("ComputerName", &[], &[("ComputerName", 1, sz("WIN-IMS01"))]);
    let cn_parent = h.key("ComputerName", &[cn], &[]);
    let env = h.key(
        "Environment",
        &[],
        &[("PROCESSOR_ARCHITECTURE", 1, sz("AMD64"))],
    );
    let sm = h.key("Session Manager", &[env], &[]);
    let control = h.key("Control", &[cn_parent, sm], &[]);
    let set = h.key("ControlSet001", &[control], &[]);
    let select = h.key(
        "Select",
        &[],
        &[("Current", 4, 1u32.to_le_bytes().to_vec())],
    );
    let root = h.key("ROOT", &[set, select], &[]);
    h.finish(root)
}

/// Unmounts a FUSE mount when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn windows_ntfs_with_registry_hives() {
    if !have(
        "windows_ntfs_with_registry_hives",
        &["sgdisk", "mkfs.vfat", "mmd", "mcopy", "mkntfs", "ntfs-3g"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ntfs = d.join("c.ntfs");
    blank(&ntfs, 64 * MIB);
    run("mkntfs", &["-F", "-Q", "-q", "-L", "Windows", s(&ntfs)]);
    // mkntfs and its tools cannot make directories; ntfs-3g (FUSE) can.
    let mnt = d.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let ok = Command::new("ntfs-3g")
        .args([s(&ntfs), s(&mnt)])
        .status()
        .is_ok_and(|st| st.success());
    if !ok {
        eprintln!("skipping windows_ntfs_with_registry_hives: ntfs-3g cannot mount (no FUSE here)");
        return;
    }
    {
        let _m = Mounted(mnt.clone());
        put(&mnt, "Windows/System32/config/SOFTWARE", &software_hive());
        put(&mnt, "Windows/System32/config/SYSTEM", &system_hive());
        put(&mnt, "Windows/System32/ntdll.dll", &pe(0x8664));
        put(&mnt, "Windows/System32/drivers/viostor.sys", &pe(0x8664));
        put(&mnt, "Windows/System32/drivers/netkvm.sys", &pe(0x8664));
        put(
            &mnt,
            "Program Files/Cloudbase Solutions/Cloudbase-Init/bin/cloudbase-init.exe",
            &pe(0x8664),
        );
    }
    let disk = d.join("windows.raw");
    blank(&disk, 120 * MIB);
    run(
        "sgdisk",
        &[
            "-n1:2048:+32M",
            "-t1:ef00",
            "-n2:67584:+16M",
            "-t2:0c01",
            "-n3:100352:+64M",
            "-t3:0700",
            s(&disk),
        ],
    );
    mkesp(
        &d.join("esp.img"),
        32 * MIB,
        &["EFI/Microsoft/Boot/bootmgfw.efi", "EFI/BOOT/BOOTX64.EFI"],
    );
    place(&disk, &d.join("esp.img"), 2048 * 512);
    place(&disk, &ntfs, 100352 * 512);
    each_format(&disk, |v| {
        assert_eq!(part(v, 1)["type"]["name"], "Microsoft reserved");
        assert_eq!(part(v, 2)["type"]["name"], "Microsoft basic data");
        assert_eq!(part(v, 2)["filesystem"], "ntfs");
        assert_eq!(part(v, 2)["label"], "Windows");
        assert_eq!(v["os_type"], "windows");
        assert_eq!(v["distro"], "windows");
        assert_eq!(v["product_name"], "Windows Server 2022 Datacenter");
        assert_eq!(v["os_version"], "10.0");
        assert_eq!(v["os_build"], "20348");
        assert_eq!(v["arch"], "x86_64");
        assert_eq!(v["firmware"], "uefi");
        assert_eq!(v["hostname"], "WIN-IMS01");
        assert_eq!(v["root_filesystem"]["partition"], 3);
        assert_eq!(v["cloud_init"], true);
        assert_eq!(v["cloud_init_agent"], "cloudbase-init");
        assert_eq!(v["virtio"], true);
        assert_eq!(
            v["virtio_drivers"],
            serde_json::json!(["viostor", "netkvm"])
        );
        assert_eq!(v["image_kind"], "system");
        assert_eq!(v["notes"], serde_json::json!([]));
    });
}

#[test]
fn whole_disk_ext4_data_disk() {
    if !have("whole_disk_ext4_data_disk", &["mkfs.ext4"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("root");
    for i in 0..20 {
        put(
            &r,
            &format!("srv/data/file{i}.txt"),
            format!("{i}\n").as_bytes(),
        );
    }
    let disk = dir.path().join("data.raw");
    blank(&disk, 64 * MIB);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "data",
            "-U",
            "11111111-2222-3333-4444-555555555555",
            "-d",
            s(&r),
            s(&disk),
        ],
    );
    each_format(&disk, |v| {
        assert_eq!(v["partition_table"], "none");
        assert_eq!(v["partitions"], serde_json::json!([]));
        assert_eq!(v["whole_disk"]["filesystem"], "ext4");
        assert_eq!(v["whole_disk"]["label"], "data");
        assert_eq!(
            v["whole_disk"]["uuid"],
            "11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(v["image_kind"], "data");
        assert_eq!(v["os_type"], "unknown");
        assert_eq!(v["arch"], "unknown");
        assert_eq!(v["firmware"], "unknown");
        assert_eq!(v["root_filesystem"], Value::Null);
    });
}

#[test]
fn empty_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("empty.raw");
    blank(&disk, 16 * MIB);
    each_format(&disk, |v| {
        assert_eq!(v["partition_table"], "none");
        assert_eq!(v["whole_disk"]["filesystem"], Value::Null);
        assert_eq!(v["image_kind"], "data");
        assert_eq!(v["os_type"], "unknown");
        assert_eq!(v["firmware"], "unknown");
    });
}

#[test]
fn table_with_unformatted_partitions() {
    if !have("table_with_unformatted_partitions", &["sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("blank-parts.raw");
    blank(&disk, 32 * MIB);
    run(
        "sgdisk",
        &[
            "-n1:2048:+8M",
            "-t1:8300",
            "-n2:0:+8M",
            "-t2:8200",
            "-c1:data",
            s(&disk),
        ],
    );
    each_format(&disk, |v| {
        assert_eq!(v["partition_table"], "gpt");
        assert_eq!(v["partitions"].as_array().unwrap().len(), 2);
        assert_eq!(part(v, 0)["name"], "data");
        assert_eq!(part(v, 0)["filesystem"], Value::Null);
        assert_eq!(part(v, 1)["type"]["name"], "Linux swap");
        assert_eq!(part(v, 1)["filesystem"], Value::Null);
        assert_eq!(v["image_kind"], "data");
        assert_eq!(v["os_type"], "unknown");
        assert_eq!(v["firmware"], "unknown");
    });
}

#[test]
fn iso_image_with_el_torito() {
    if !have("iso_image_with_el_torito", &["genisoimage"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = d.join("cd");
    put(&r, "boot/boot.img", &[0x90; 2048]);
    put(&r, "README.TXT", b"an ims test disc\n");
    let iso = d.join("disc.raw");
    run(
        "genisoimage",
        &[
            "-quiet",
            "-V",
            "IMS_TEST",
            "-b",
            "boot/boot.img",
            "-c",
            "boot/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-o",
            s(&iso),
            s(&r),
        ],
    );
    each_format(&iso, |v| {
        assert_eq!(v["partition_table"], "none");
        assert_eq!(v["whole_disk"]["filesystem"], "iso9660");
        assert_eq!(v["whole_disk"]["label"], "IMS_TEST");
        assert_eq!(v["image_kind"], "iso");
        assert_eq!(v["firmware"], "bios");
        assert_eq!(v["os_type"], "unknown");
    });
}

/// Inspects `disk` through the library, within `limit`, without a panic.
fn inspect_quickly(disk: &Path) -> ims::Result<ims::inspect::Inspection> {
    let image = ims::open(disk, &Default::default()).unwrap();
    let reader: Arc<dyn ims::BlockReader> = image.reader().unwrap();
    let start = Instant::now();
    let r = ims::inspect::inspect(reader);
    let took = start.elapsed();
    eprintln!("inspected {} in {took:?}", disk.display());
    // Well under a second in practice; the bound leaves room for a loaded machine.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    r
}

/// A Linux root whose release files are hostile, as a whole-disk ext4.
fn hostile_ext4(dir: &Path, name: &str, setup: impl FnOnce(&Path)) -> PathBuf {
    let r = dir.join(format!("{name}-root"));
    put(&r, "usr/bin/bash", &elf64(0x3e));
    link(&r, "bin", "usr/bin");
    fs::create_dir_all(r.join("etc")).unwrap();
    setup(&r);
    let disk = dir.join(format!("{name}.raw"));
    mkext4(&disk, 64 * MIB, &r, "33333333-2222-3333-4444-555555555555");
    disk
}

#[test]
fn hostile_symlinks_and_huge_release_file_give_unknown_facts() {
    if !have(
        "hostile_symlinks_and_huge_release_file_give_unknown_facts",
        &["mkfs.ext4"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // os-release pointing outside the guest's file system (to the host's, were it followed).
    let outside = hostile_ext4(d, "outside", |r| {
        link(
            r,
            "etc/os-release",
            "../../../../../../../../etc/os-release",
        );
        link(r, "usr/lib/os-release", "/proc/self/root/etc/os-release");
    });
    let f = inspect_quickly(&outside).unwrap();
    assert_eq!(f.os_type, ims::inspect::OsType::Linux);
    assert_eq!(f.distro, None);
    assert_eq!(f.arch, "x86_64");
    // A symbolic link loop, for os-release and for the shell.
    let looping = hostile_ext4(d, "loop", |r| {
        link(r, "etc/os-release", "os-release2");
        link(r, "etc/os-release2", "/etc/os-release");
        fs::remove_file(r.join("bin")).unwrap();
        link(r, "bin", "bin");
    });
    let f = inspect_quickly(&looping).unwrap();
    assert_eq!(f.distro, None);
    assert!(!f.notes.is_empty(), "the loop is noted");
    // A 4 GiB (sparse) os-release: only its first MiB is read, and it holds no ID.
    let huge = hostile_ext4(d, "huge", |r| {
        let f = fs::File::create(r.join("etc/os-release")).unwrap();
        f.set_len(4 << 30).unwrap();
        f.write_all_at(b"ID=evil\n", (4 << 30) - 8).unwrap();
    });
    let f = inspect_quickly(&huge).unwrap();
    assert_eq!(f.distro, None);
    assert_eq!(f.os_type, ims::inspect::OsType::Linux);
}

#[test]
fn partition_past_the_end_is_reported_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("past-end.raw");
    blank(&disk, 8 * MIB);
    let mut mbr = vec![0u8; 512];
    for (i, (start, size)) in [(2048u32, 4096u32), (8192, 1 << 30)].iter().enumerate() {
        let e = &mut mbr[446 + 16 * i..462 + 16 * i];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&size.to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(&mbr, 0)
        .unwrap();
    let f = inspect_quickly(&disk).unwrap();
    assert_eq!(f.partitions.len(), 2);
    assert!(f.partitions[0].partition.problem.is_none());
    let problem = f.partitions[1].partition.problem.clone().unwrap();
    assert!(problem.contains("past the end"), "{problem}");
    assert!(
        f.notes
            .iter()
            .any(|n| n.contains("partition 2 is not looked into"))
    );
    // The CLI shows it too.
    let v = inspect_json(&disk);
    assert!(
        part(&v, 1)["problem"]
            .as_str()
            .unwrap()
            .contains("past the end")
    );
}

#[test]
fn ext4_with_a_corrupt_inode_table() {
    if !have("ext4_with_a_corrupt_inode_table", &["mkfs.ext4", "debugfs"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = hostile_ext4(d, "corrupt", |r| {
        put(r, "etc/os-release", b"ID=debian\nVERSION_ID=12\n");
    });
    // Where the root inode lives: "located at block N, offset 0x...".
    let out = Command::new("debugfs")
        .args(["-R", "imap <2>", s(&disk)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let block: u64 = text
        .split("located at block ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("debugfs said {text}"));
    let out = Command::new("debugfs")
        .args(["-R", "stats", s(&disk)])
        .output()
        .unwrap();
    let block_size: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("debugfs stats gives the block size");
    // Garbage over the inode table's first blocks (the root inode and its neighbours).
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&vec![0xa5u8; 16 * 4096], block * block_size)
        .unwrap();
    drop(f);
    match inspect_quickly(&disk) {
        Ok(f) => {
            assert_eq!(f.os_type, ims::inspect::OsType::Unknown);
            assert_eq!(
                f.whole_disk.unwrap().filesystem,
                Some(ims::inspect::superblocks::FsKind::Ext4)
            );
            assert!(!f.notes.is_empty());
        }
        Err(e) => eprintln!("inspection refused the disk: {e}"),
    }
    let out = ims(&["inspect", s(&disk)]);
    assert!(matches!(out.status.code(), Some(0 | 1)));
}

#[test]
fn stream_only_images_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    blank(&raw, 4 * MIB);
    let zvhd = dir.path().join("d.zvhd");
    let r = ims(&["convert", "-O", "zvhd", s(&raw), s(&zvhd)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = ims(&["inspect", s(&zvhd)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("random access"));
}

#[test]
fn fixtures_read_as_their_readme_says() {
    let t = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inspect");
    let v = inspect_json_with(&["-f", "raw"], &t.join("gpt.img"));
    assert_eq!(v["partition_table"], "gpt");
    assert_eq!(v["disk_id"], "5b0e2c1a-7d3f-4c6e-9a51-0c4d2e6f8a10");
    assert_eq!(part(&v, 0)["name"], "esp");
    assert_eq!(
        part(&v, 0)["partition_uuid"],
        "11111111-1111-1111-1111-111111111111"
    );
    let v = inspect_json_with(&["-f", "raw"], &t.join("mbr.img"));
    let numbers: Vec<u64> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2, 5, 6]);
    assert_eq!(v["notes"], serde_json::json!([]));
    let hive = fs::read(t.join("software.hive")).unwrap();
    let mut src: &[u8] = &hive;
    let mut h = ims::inspect::regf::Hive::open(&mut src).unwrap();
    let cv = h
        .key(r"Microsoft\Windows NT\CurrentVersion")
        .unwrap()
        .unwrap();
    assert_eq!(
        h.value(&cv, "ProductName").unwrap(),
        Some(ims::inspect::regf::Value::String(
            "Windows Server 2022 Datacenter".into()
        ))
    );
}

/// Detaches a loop device when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Copies `len` bytes of `src` from `src_off` into `dst` at `dst_off`.
fn copy_range(dst: &Path, dst_off: u64, src: &Path, src_off: u64, len: u64) {
    let s = fs::File::open(src).unwrap();
    let d = fs::OpenOptions::new().write(true).open(dst).unwrap();
    let mut buf = vec![0u8; len as usize];
    s.read_exact_at(&mut buf, src_off).unwrap();
    d.write_all_at(&buf, dst_off).unwrap();
}

/// The volume group metadata written with vgcfgrestore: a 32 MiB root LV in two segments, the
/// second before the first on the PV.
const VG_TEXT: &str = r#"centos {
id = "hhhhhh-bbbb-cccc-dddd-eeee-ffff-gggggg"
seqno = 1
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0
physical_volumes {
pv0 {
id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg"
device = "/dev/loop0"
status = ["ALLOCATABLE"]
flags = []
dev_size = 131072
pe_start = 2048
pe_count = 15
}
}
logical_volumes {
root {
id = "iiiiii-bbbb-cccc-dddd-eeee-ffff-gggggg"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 2
segment1 {
start_extent = 0
extent_count = 4
type = "striped"
stripe_count = 1
stripes = [
"pv0", 6
]
}
segment2 {
start_extent = 4
extent_count = 4
type = "striped"
stripe_count = 1
stripes = [
"pv0", 1
]
}
}
}
}
contents = "Text Format Volume Group"
version = 1
description = ""
creation_host = "ims-test"
creation_time = 1700000000
"#;

#[test]
fn centos_root_on_lvm_with_separate_boot() {
    let test = "centos_root_on_lvm_with_separate_boot";
    if !have(
        test,
        &["sfdisk", "mkfs.ext4", "losetup", "pvcreate", "vgcfgrestore"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The PV, made by LVM's own tools on a loop device (no device-mapper needed).
    let pv = d.join("pv.img");
    blank(&pv, 64 * MIB);
    let out = Command::new("losetup")
        .args(["-f", "--show", s(&pv)])
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            eprintln!("skipping {test}: no loop device (losetup needs root and /dev/loop*)");
            return;
        }
    };
    {
        let _l = Loop(dev.clone());
        let env = [("LVM_SUPPRESS_FD_WARNINGS", "1")];
        run_env(
            "pvcreate",
            &[
                "-q",
                "--uuid",
                "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg",
                "--norestorefile",
                &dev,
            ],
            &env,
        );
        let text = d.join("vg.txt");
        fs::write(&text, VG_TEXT).unwrap();
        let out = Command::new("vgcfgrestore")
            .args(["-q", "-f", s(&text), "centos"])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "skipping {test}: vgcfgrestore failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
    }
    let r = d.join("root");
    put(
        &r,
        "etc/os-release",
        b"NAME=\"CentOS Stream\"\nID=\"centos\"\nVERSION_ID=\"9\"\nPRETTY_NAME=\"CentOS Stream 9\"\n",
    );
    put(&r, "usr/bin/bash", &elf64(0x3e));
    link(&r, "bin", "usr/bin");
    let root = d.join("root.img");
    mkext4(&root, 32 * MIB, &r, "44444444-2222-3333-4444-555555555555");
    // LV bytes 0-16 MiB are PV extent 6 (1 MiB + 24 MiB), 16-32 MiB are extent 1 (1 + 4 MiB).
    copy_range(&pv, 25 * MIB, &root, 0, 16 * MIB);
    copy_range(&pv, 5 * MIB, &root, 16 * MIB, 16 * MIB);
    let b = d.join("boot");
    put(&b, "vmlinuz-5.14.0-391.el9.x86_64", &[7; 4096]);
    put(&b, "grub2/grub.cfg", b"set timeout=1\n");
    let boot = d.join("boot.img");
    mkext4(&boot, 16 * MIB, &b, "55555555-2222-3333-4444-555555555555");
    let disk = d.join("lvm.raw");
    blank(&disk, 90 * MIB);
    sfdisk(
        &disk,
        "label: dos\nstart=2048, size=32768, type=83, bootable\nstart=34816, size=131072, type=8e\n",
    );
    write_boot_code(&disk);
    place(&disk, &boot, 2048 * 512);
    place(&disk, &pv, 34816 * 512);
    each_format(&disk, |v| {
        assert_eq!(part(v, 1)["filesystem"], "lvm2_member");
        assert_eq!(v["logical_volumes"][0]["name"], "centos/root");
        assert_eq!(v["logical_volumes"][0]["size"], 32 * MIB);
        assert_eq!(v["logical_volumes"][0]["filesystem"], "ext4");
        assert_eq!(v["os_type"], "linux");
        assert_eq!(v["distro"], "centos");
        assert_eq!(v["os_version"], "9");
        assert_eq!(v["arch"], "x86_64");
        assert_eq!(v["firmware"], "bios");
        assert_eq!(v["root_filesystem"]["logical_volume"], "centos/root");
        assert_eq!(v["root_filesystem"]["partition"], Value::Null);
        assert_eq!(v["kernels"], serde_json::json!(["5.14.0-391.el9.x86_64"]));
        assert_eq!(v["image_kind"], "system");
    });
}
