//! Registration and the image catalog: every rule in both directions (allowed, and refused
//! with its code), end to end through the binary on a small Linux guest built here, and crash
//! safety (a registration killed at each point leaves a consistent catalog and no stray file).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::catalog::{
    GUEST_TOOLS, cli, data_disk, linux_guest, list, ok_json, random_raw, refused, stray_files,
};
use common::{have, have_qemu_img, put, qemu_compare, qemu_img, run, s};
use ims::CancelToken;
use ims::register::{
    ImageType, Ims, Limits, ListQuery, MemberStatus, Publication, RecordUpdate, RegisterRequest,
    RuleCode, Scope, Status, Tag,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn register(home: &Path, file: &Path, name: &str, extra: &[&str]) -> Value {
    let mut args = vec!["register", s(file), "--name", name, "--output", "json"];
    args.extend(extra);
    ok_json(&cli(home, "owner", &args))
}

fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The formats of the second round register through the same command as the first: each is
/// read, inspected (the guest's OS is found), stored as ZVHD2, and exports as the same disk.
#[test]
fn vhdx_vdi_qed_and_qcow_register_as_system_disks() {
    let t = "vhdx_vdi_qed_and_qcow_register_as_system_disks";
    if !have(t, GUEST_TOOLS) || !have_qemu_img(t) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let guest = linux_guest(d, "guest", 0x3e, Some("BOOTX64.EFI"));
    for (format, qemu_format, options) in [
        ("vhdx", "vhdx", "subformat=dynamic"),
        ("vdi", "vdi", "static=off"),
        ("qed", "qed", "cluster_size=65536"),
        ("qcow", "qcow", "encryption=off"),
    ] {
        let file = d.join(format!("guest.{format}"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            qemu_format,
            "-o",
            options,
            s(&guest),
            s(&file),
        ]);
        let r = register(&home, &file, &format!("guest-{format}"), &[]);
        assert_eq!(r["status"], "active", "{format}");
        assert_eq!(r["source_format"], format);
        assert_eq!(r["store_format"], "zvhd2");
        assert_eq!(r["os_version"], "Ubuntu 22.04 64bit", "{format}");
        assert_eq!(r["firmware"], "uefi", "{format}");
        let exported = d.join(format!("exported-{format}.raw"));
        let out = cli(
            &home,
            "owner",
            &[
                "images",
                "export",
                r["id"].as_str().unwrap(),
                "-O",
                "raw",
                s(&exported),
            ],
        );
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(qemu_compare(&guest, "raw", &exported, "raw"), "{format}");
    }
}

#[test]
fn end_to_end_formats_list_share_replicate_export_delete() {
    let t = "end_to_end_formats_list_share_replicate_export_delete";
    if !have(t, GUEST_TOOLS) || !have_qemu_img(t) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let guest = linux_guest(d, "guest", 0x3e, Some("BOOTX64.EFI"));
    let qcow2 = d.join("guest.qcow2");
    let vmdk = d.join("guest.vmdk");
    let vhd = d.join("guest.vhd");
    let zvhd2 = d.join("guest.zvhd2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-c",
        s(&guest),
        s(&qcow2),
    ]);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s(&guest),
        s(&vmdk),
    ]);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        "subformat=dynamic",
        s(&guest),
        s(&vhd),
    ]);
    let out = common::ims(&["convert", "-f", "raw", "-O", "zvhd2", s(&guest), s(&zvhd2)]);
    assert!(out.status.success());

    let mut ids = Vec::new();
    for (file, format) in [
        (&qcow2, "qcow2"),
        (&vmdk, "vmdk"),
        (&vhd, "vhd"),
        (&zvhd2, "zvhd2"),
    ] {
        let r = register(
            &home,
            file,
            &format!("ubuntu-{format}"),
            &["--tag", "env=test"],
        );
        assert_eq!(r["status"], "active", "{format}");
        assert_eq!(r["os_type"], "Linux");
        assert_eq!(r["platform"], "Ubuntu");
        assert_eq!(r["os_version"], "Ubuntu 22.04 64bit");
        assert_eq!(r["architecture"], "x86_64");
        assert_eq!(r["firmware"], "uefi");
        assert_eq!(r["source_format"], format);
        assert_eq!(r["store_format"], "zvhd2");
        // qemu-img's VHD rounds the size to its CHS geometry.
        let size = r["virtual_size"].as_u64().unwrap();
        assert!((80 * MIB..81 * MIB).contains(&size), "{format}: {size}");
        assert_eq!(r["min_disk"], 1);
        assert_eq!(r["features"]["support_user_data"], true);
        assert_eq!(r["features"]["support_disk_hotswap"], true);
        assert_eq!(r["tags"]["env"], "test");
        // The checksum is the stored file's.
        let stored = home.join("store").join(r["store_key"].as_str().unwrap());
        assert_eq!(r["checksum"]["sha256"], sha256_file(&stored));
        assert_eq!(r["store_size"], fs::metadata(&stored).unwrap().len());
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let id = &ids[0];

    // Search and view.
    assert_eq!(list(&home, "owner", &[]).len(), 4);
    assert_eq!(list(&home, "owner", &["--name", "ubuntu-vmdk"]).len(), 1);
    assert_eq!(
        list(&home, "owner", &["--name-contains", "ubuntu-v"]).len(),
        2
    );
    assert_eq!(list(&home, "owner", &["--os-type", "linux"]).len(), 4);
    assert_eq!(list(&home, "owner", &["--os-type", "windows"]).len(), 0);
    assert_eq!(
        list(
            &home,
            "owner",
            &["--platform", "ubuntu", "--tag", "env=test"]
        )
        .len(),
        4
    );
    let show = ok_json(&cli(
        &home,
        "owner",
        &["images", "show", id, "--output", "json"],
    ));
    assert_eq!(show["id"], id.as_str());
    assert_eq!(show["status"], "active");
    let human = cli(&home, "owner", &["images", "show", id]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("x86_64"));

    // Share, accept, see it as the member.
    assert!(
        cli(&home, "owner", &["images", "share", id, "--with", "member"])
            .status
            .success()
    );
    assert_eq!(list(&home, "member", &[]).len(), 0, "pending: not listed");
    assert_eq!(
        list(&home, "member", &["--member-status", "pending"]).len(),
        1
    );
    assert!(
        cli(&home, "member", &["images", "accept", id])
            .status
            .success()
    );
    let seen = list(&home, "member", &[]);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["member_status"], "accepted");
    assert_eq!(list(&home, "stranger", &[]).len(), 0);
    let members = ok_json(&cli(
        &home,
        "owner",
        &["images", "members", id, "--output", "json"],
    ));
    assert_eq!(members["members"][0]["project"], "member");

    // The member exports it; the export is the original disk.
    let exported = d.join("exported.qcow2");
    let out = cli(
        &home,
        "member",
        &["images", "export", id, "-O", "qcow2", s(&exported)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    qemu_img(&["check", s(&exported)]);
    assert!(qemu_compare(&guest, "raw", &exported, "qcow2"));
    for (fmt, qfmt) in [("vmdk", "vmdk"), ("vhd", "vpc"), ("raw", "raw")] {
        let out_path = d.join(format!("exported.{fmt}"));
        let out = cli(
            &home,
            "owner",
            &["images", "export", &ids[1], "-O", fmt, s(&out_path)],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(qemu_compare(&guest, "raw", &out_path, qfmt), "{fmt}");
    }

    // Replicate to another region: a new id there, active, the same data.
    let copy = ok_json(&cli(
        &home,
        "owner",
        &[
            "images",
            "copy",
            id,
            "--to-region",
            "r2",
            "--output",
            "json",
        ],
    ));
    assert_ne!(copy["id"], id.as_str());
    assert_eq!(copy["region"], "r2");
    assert_eq!(copy["status"], "active");
    assert_eq!(copy["copied_from"], id.as_str());
    assert_eq!(copy["checksum"], show["checksum"]);
    let r2 = ok_json(&cli(
        &home,
        "owner",
        &["images", "list", "--region", "r2", "--output", "json"],
    ));
    assert_eq!(r2["images"].as_array().unwrap().len(), 1);

    // Delete: gone for the owner and the member, its file removed.
    let stored = home.join("store").join(show["store_key"].as_str().unwrap());
    assert!(stored.exists());
    assert!(
        cli(&home, "owner", &["images", "delete", id])
            .status
            .success()
    );
    assert!(!stored.exists());
    assert_eq!(list(&home, "member", &[]).len(), 0);
    assert_eq!(list(&home, "owner", &[]).len(), 3);
    refused(
        &cli(&home, "owner", &["images", "show", id]),
        "image_not_found",
    );
}

#[test]
fn registration_rules_allowed_and_refused() {
    let t = "registration_rules_allowed_and_refused";
    if !have(t, GUEST_TOOLS) || !have_qemu_img(t) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let guest = linux_guest(d, "guest", 0x3e, Some("BOOTX64.EFI"));
    let data = data_disk(d, "data");
    let g = s(&guest);
    let reg = |args: &[&str]| {
        let mut all = vec!["register"];
        all.extend(args);
        cli(&home, "owner", &all)
    };

    // Names and descriptions.
    assert!(reg(&[g, "--name", &"n".repeat(128)]).status.success());
    refused(&reg(&[g, "--name", &"n".repeat(129)]), "name_too_long");
    refused(&reg(&[g, "--name", ""]), "name_invalid");
    refused(
        &reg(&[g, "--name", "d", "--description", &"x".repeat(1025)]),
        "description_too_long",
    );
    // Tags.
    let mut ten = vec![g, "--name", "tags"];
    let tags: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
    for t in &tags[..10] {
        ten.extend(["--tag", t.as_str()]);
    }
    assert!(reg(&ten).status.success());
    let mut eleven = ten.clone();
    eleven.extend(["--tag", tags[10].as_str()]);
    refused(&reg(&eleven), "too_many_tags");
    refused(
        &reg(&[g, "--name", "t", "--tag", &format!("{}=v", "k".repeat(37))]),
        "tag_key_too_long",
    );
    refused(
        &reg(&[g, "--name", "t", "--tag", &format!("k={}", "v".repeat(44))]),
        "tag_value_too_long",
    );
    refused(&reg(&[g, "--name", "t", "--tag", "novalue"]), "tag_invalid");

    // A data disk: fine as data; as a system disk refused.
    assert!(
        reg(&[s(&data), "--name", "data", "--type", "data"])
            .status
            .success()
    );
    refused(
        &reg(&[s(&data), "--name", "data", "--type", "system"]),
        "system_disk_without_os",
    );
    // A system disk registered as data: allowed, with a warning.
    let out = reg(&[g, "--name", "as-data", "--type", "data"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: the disk holds an operating system")
    );
    refused(
        &reg(&[g, "--name", "iso", "--type", "iso"]),
        "iso_type_mismatch",
    );
    refused(
        &reg(&[g, "--name", "ecs", "--type", "full_ecs"]),
        "full_ecs_not_registrable",
    );

    // Architecture and firmware against the request; aarch64 needs UEFI.
    assert!(
        reg(&[
            g,
            "--name",
            "a",
            "--architecture",
            "x86_64",
            "--firmware",
            "uefi"
        ])
        .status
        .success()
    );
    refused(
        &reg(&[g, "--name", "a", "--architecture", "aarch64"]),
        "architecture_mismatch",
    );
    refused(
        &reg(&[g, "--name", "a", "--firmware", "bios"]),
        "firmware_mismatch",
    );
    let arm_uefi = linux_guest(d, "arm-uefi", 0xb7, Some("BOOTAA64.EFI"));
    let r = register(&home, &arm_uefi, "arm", &[]);
    assert_eq!(r["architecture"], "aarch64");
    assert_eq!(r["firmware"], "uefi");
    let arm_bios = linux_guest(d, "arm-bios", 0xb7, None);
    refused(&reg(&[s(&arm_bios), "--name", "arm"]), "aarch64_needs_uefi");
    // min_disk: 1..=1024 and not below the disk.
    let big = d.join("big.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&big), "3G"]);
    assert!(
        reg(&[
            s(&big),
            "--name",
            "big",
            "--type",
            "data",
            "--min-disk",
            "3"
        ])
        .status
        .success()
    );
    refused(
        &reg(&[
            s(&big),
            "--name",
            "big",
            "--type",
            "data",
            "--min-disk",
            "2",
        ]),
        "min_disk_below_virtual_size",
    );
    refused(
        &reg(&[g, "--name", "m", "--min-disk", "0"]),
        "min_disk_out_of_range",
    );
    refused(
        &reg(&[g, "--name", "m", "--min-disk", "1025"]),
        "min_disk_out_of_range",
    );
    assert_eq!(
        register(
            &home,
            &guest,
            "m",
            &["--min-disk", "1024", "--min-ram", "2048"]
        )["min_disk"],
        1024
    );
    refused(
        &reg(&[g, "--name", "m", "--min-ram", "2000000"]),
        "min_ram_out_of_range",
    );

    // Only the one file: a backing file is refused, as are unknown formats and damage.
    let child = d.join("child.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        g,
        "-F",
        "raw",
        s(&child),
    ]);
    refused(&reg(&[s(&child), "--name", "child"]), "reference_refused");
    let vhdx = d.join("disk.vhdx");
    fs::write(&vhdx, [b"vhdxfile".as_slice(), &[0; 4096]].concat()).unwrap();
    refused(&reg(&[s(&vhdx), "--name", "vhdx"]), "image_unreadable");
    let broken = d.join("broken.qcow2");
    let mut bytes = fs::read(&child).unwrap();
    bytes.truncate(104); // cut inside the header
    fs::write(&broken, bytes).unwrap();
    refused(&reg(&[s(&broken), "--name", "broken"]), "image_unreadable");

    // A ZVHD (stream-only) upload is inspected from its stored copy.
    let zvhd = d.join("guest.zvhd");
    assert!(
        common::ims(&["convert", "-f", "raw", "-O", "zvhd", g, s(&zvhd)])
            .status
            .success()
    );
    let z = register(&home, &zvhd, "from-zvhd", &[]);
    assert_eq!(
        (z["status"].as_str(), z["os_type"].as_str()),
        (Some("active"), Some("Linux"))
    );
    refused(
        &reg(&[s(&zvhd), "--name", "z", "--architecture", "aarch64"]),
        "architecture_mismatch",
    );

    // Store formats on request; the refusals left nothing behind.
    let q = register(&home, &guest, "as-qcow2", &["--store-format", "qcow2"]);
    let stored = home.join("store").join(q["store_key"].as_str().unwrap());
    assert_eq!(q["checksum"]["sha256"], sha256_file(&stored));
    assert!(qemu_compare(&guest, "raw", &stored, "qcow2"));
    let raw = register(&home, &guest, "as-raw", &["--store-format", "raw"]);
    let stored = home.join("store").join(raw["store_key"].as_str().unwrap());
    assert_eq!(raw["checksum"]["sha256"], sha256_file(&stored));
    // Refusals before any data is written make no record; the stream-only upload refused
    // after it was stored is killed with the reason.
    let all = list(&home, "owner", &["--status", "killed"]);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["name"], "z");
    assert!(
        all[0]["status_reason"]
            .as_str()
            .unwrap()
            .starts_with("architecture_mismatch: ")
    );
    assert!(
        stray_files(&home)
            .iter()
            .all(|p| !p.to_string_lossy().contains(".tmp/")),
        "{:?}",
        stray_files(&home)
    );
}

/// A small raw data disk (zeros with some bytes) for the catalog tests that need no guest.
fn small_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(format!("{name}.raw"));
    random_raw(&p, size, 1, size);
    p
}

/// The code string of a rule's refusal (the strings are the contract, so the tests match them).
fn code<T: std::fmt::Debug>(r: ims::register::Result<T>) -> &'static str {
    r.unwrap_err().code().expect("a rule's refusal").as_str()
}

fn owner() -> Scope {
    Scope::new("owner", "r1")
}

fn data_request(name: &str) -> RegisterRequest {
    RegisterRequest::new(name, ImageType::Data)
}

#[test]
fn limits_and_quota() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut ims = Ims::open(&d.join("home")).unwrap();
    let disk = small_disk(d, "disk", 4 * MIB);
    ims.set_limits(Limits {
        max_file_size: 4 * MIB,
        max_virtual_size: 4 * MIB,
        private_image_quota: 2,
        ..Limits::default()
    });
    let a = ims
        .register(
            &owner(),
            disk.as_path(),
            &data_request("a"),
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap();
    ims.register(
        &owner(),
        disk.as_path(),
        &data_request("b"),
        &mut |_| {},
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(
        code(ims.register(
            &owner(),
            disk.as_path(),
            &data_request("c"),
            &mut |_| {},
            &CancelToken::new()
        )),
        "quota_exceeded"
    );
    // Another project has its own quota; a deleted image frees its place.
    ims.register(
        &Scope::new("other", "r1"),
        disk.as_path(),
        &data_request("c"),
        &mut |_| {},
        &CancelToken::new(),
    )
    .unwrap();
    ims.delete(&owner(), &a.record.id).unwrap();
    ims.register(
        &owner(),
        disk.as_path(),
        &data_request("c"),
        &mut |_| {},
        &CancelToken::new(),
    )
    .unwrap();

    let bigger = small_disk(d, "bigger", 4 * MIB + 512);
    ims.set_limits(Limits {
        max_file_size: 4 * MIB,
        ..Limits::default()
    });
    assert_eq!(
        code(ims.register(
            &owner(),
            bigger.as_path(),
            &data_request("f"),
            &mut |_| {},
            &CancelToken::new()
        )),
        "file_too_large"
    );
    let sparse = d.join("sparse.raw");
    fs::File::create(&sparse)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    ims.set_limits(Limits {
        max_virtual_size: 32 * MIB,
        ..Limits::default()
    });
    assert_eq!(
        code(ims.register(
            &owner(),
            sparse.as_path(),
            &data_request("v"),
            &mut |_| {},
            &CancelToken::new()
        )),
        "virtual_size_too_large"
    );
    ims.set_limits(Limits::default());
    ims.register(
        &owner(),
        sparse.as_path(),
        &data_request("v"),
        &mut |_| {},
        &CancelToken::new(),
    )
    .unwrap();
}

#[test]
fn sharing_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ims = Ims::open(&d.join("home")).unwrap();
    let disk = small_disk(d, "disk", 2 * MIB);
    let img = ims
        .register(
            &owner(),
            disk.as_path(),
            &data_request("shared"),
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .record;
    let id = img.id.as_str();
    let member = Scope::new("member", "r1");
    let stranger = Scope::new("stranger", "r1");
    let visible = |scope: &Scope, q: &ListQuery| ims.list(scope, q).unwrap().len();

    ims.share(&owner(), id, "member", "r1").unwrap();
    assert_eq!(ims.show(&owner(), id).unwrap().visibility.name(), "shared");
    assert_eq!(visible(&member, &ListQuery::default()), 0, "pending");
    let pending = ListQuery {
        member_status: Some(MemberStatus::Pending),
        ..Default::default()
    };
    assert_eq!(visible(&member, &pending), 1);
    // A pending member may look but not use.
    let out = d.join("out.raw");
    let export = |scope: &Scope| {
        ims.export(
            scope,
            id,
            ims::Format::Raw,
            &out,
            None,
            &Default::default(),
            &mut |_| {},
            &CancelToken::new(),
        )
    };
    assert_eq!(code(export(&member)), "image_not_found");
    ims.accept(&member, id).unwrap();
    assert_eq!(visible(&member, &ListQuery::default()), 1);
    export(&member).unwrap();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&disk).unwrap());
    // Strangers see nothing and cannot answer; members cannot manage.
    assert_eq!(visible(&stranger, &ListQuery::default()), 0);
    assert_eq!(code(ims.show(&stranger, id)), "image_not_found");
    assert_eq!(code(ims.accept(&stranger, id)), "image_not_found");
    assert_eq!(code(export(&stranger)), "image_not_found");
    assert_eq!(code(ims.delete(&member, id)), "not_owner");
    assert_eq!(code(ims.share(&member, id, "x", "r1")), "not_owner");
    assert_eq!(
        code(ims.update(
            &member,
            id,
            &RecordUpdate {
                name: Some("x".into()),
                ..Default::default()
            }
        )),
        "not_owner"
    );
    assert_eq!(ims.members(&member, id).unwrap().len(), 1);
    // Members: same region, not the owner, at most 128.
    assert_eq!(
        code(ims.share(&owner(), id, "far", "r2")),
        "member_region_mismatch"
    );
    assert_eq!(
        code(ims.share(&owner(), id, "owner", "r1")),
        "share_to_owner"
    );
    for i in 2..=128 {
        ims.share(&owner(), id, &format!("m{i}"), "r1").unwrap();
    }
    assert_eq!(ims.members(&owner(), id).unwrap().len(), 128);
    assert_eq!(
        code(ims.share(&owner(), id, "m129", "r1")),
        "too_many_members"
    );
    ims.share(&owner(), id, "m2", "r1").unwrap(); // again: no-op
    // The owner stops sharing without asking; a member may reject.
    ims.unshare(&owner(), id, "m2").unwrap();
    assert_eq!(code(ims.unshare(&owner(), id, "m2")), "not_member");
    ims.share(&owner(), id, "m129", "r1").unwrap();
    let m3 = Scope::new("m3", "r1");
    ims.accept(&m3, id).unwrap();
    assert_eq!(visible(&m3, &ListQuery::default()), 1);
    ims.reject(&m3, id).unwrap();
    assert_eq!(visible(&m3, &ListQuery::default()), 0);

    // What cannot be shared.
    let mut enc_req = data_request("enc");
    enc_req.kms_key_id = Some("key-1".into());
    let enc = ims
        .register(
            &owner(),
            disk.as_path(),
            &enc_req,
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .record;
    assert!(enc.encrypted);
    assert_eq!(
        code(ims.share(&owner(), &enc.id, "member", "r1")),
        "encrypted_not_shareable"
    );
    let market = ims
        .register(
            &owner(),
            disk.as_path(),
            &data_request("m"),
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .record;
    ims.publish(
        &owner(),
        &market.id,
        &Publication::Marketplace {
            publisher: "ACME".into(),
            price_note: None,
        },
    )
    .unwrap();
    assert_eq!(
        code(ims.share(&owner(), &market.id, "member", "r1")),
        "marketplace_not_shareable"
    );
    let mut ecs = ims
        .register(
            &owner(),
            disk.as_path(),
            &data_request("ecs"),
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .record;
    ecs.image_type = ImageType::FullEcs;
    ims.operator_put(&ecs).unwrap();
    assert_eq!(
        code(ims.share(&owner(), &ecs.id, "member", "r1")),
        "full_ecs_not_shareable"
    );
    ecs.backup_id = Some("backup-1".into());
    ims.operator_put(&ecs).unwrap();
    ims.share(&owner(), &ecs.id, "member", "r1").unwrap();

    // A public image (seeded by an operator) is seen by every project, and not counted.
    let public = ims
        .register(
            &owner(),
            disk.as_path(),
            &data_request("pub"),
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .record;
    ims.publish(&owner().operator(), &public.id, &Publication::Public)
        .unwrap();
    // With the marketplace image, which every project lists too.
    assert_eq!(visible(&stranger, &ListQuery::default()), 2);
    ims.export(
        &stranger,
        &public.id,
        ims::Format::Raw,
        &out,
        None,
        &Default::default(),
        &mut |_| {},
        &CancelToken::new(),
    )
    .unwrap();

    // Deleting needs no member's consent: the image is gone for them.
    ims.delete(&owner(), id).unwrap();
    assert_eq!(
        visible(
            &member,
            &ListQuery {
                name: Some("shared".into()),
                ..Default::default()
            }
        ),
        0
    );
    assert_eq!(code(ims.show(&member, id)), "image_not_found");
}

#[test]
fn update_changes_only_what_may_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ims = Ims::open(&d.join("home")).unwrap();
    let disk = small_disk(d, "disk", 2 * MIB);
    let r = ims
        .register(
            &owner(),
            disk.as_path(),
            &data_request("a"),
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .record;
    let tag = |k: &str, v: &str| Tag::new(k, v).unwrap();
    let u = ims
        .update(
            &owner(),
            &r.id,
            &RecordUpdate {
                name: Some("b".into()),
                description: Some("about b".into()),
                min_disk: Some(20),
                min_ram: Some(1024),
                tags: Some(vec![tag("env", "prod"), tag("team", "x")]),
                support_user_data: Some(true),
                support_disk_hotswap: Some(true),
            },
        )
        .unwrap();
    assert_eq!((u.name.as_str(), u.min_disk, u.min_ram), ("b", 20, 1024));
    assert_eq!(u.tags.len(), 2);
    assert!(u.features.support_user_data && u.features.support_disk_hotswap);
    assert_eq!(ims.show(&owner(), &r.id).unwrap(), u);
    // Nothing given changes nothing but `updated_at`.
    let same = ims
        .update(&owner(), &r.id, &RecordUpdate::default())
        .unwrap();
    assert_eq!((same.name.as_str(), &same.tags), ("b", &u.tags));
    // The fields that describe the stored data cannot be named by the CLI's --set.
    let home = d.join("home");
    for field in [
        "checksum",
        "virtual_size",
        "store_format",
        "os_type",
        "status",
        "owner",
        "id",
    ] {
        let set = format!("{field}=x");
        refused(
            &cli(&home, "owner", &["images", "update", &r.id, "--set", &set]),
            "field_immutable",
        );
    }
    let refuse = |update: RecordUpdate| code(ims.update(&owner(), &r.id, &update));
    assert_eq!(
        refuse(RecordUpdate {
            name: Some("n".repeat(129)),
            ..Default::default()
        }),
        "name_too_long"
    );
    assert_eq!(
        refuse(RecordUpdate {
            min_disk: Some(0),
            ..Default::default()
        }),
        "min_disk_out_of_range"
    );
    let eleven = (0..11).map(|i| tag(&format!("k{i}"), "v")).collect();
    assert_eq!(
        refuse(RecordUpdate {
            tags: Some(eleven),
            ..Default::default()
        }),
        "too_many_tags"
    );
    // A later rule's refusal keeps an earlier change from being written.
    assert_eq!(
        refuse(RecordUpdate {
            name: Some("c".into()),
            min_ram: Some((1 << 20) + 1),
            ..Default::default()
        }),
        "min_ram_out_of_range"
    );
    // A refused update changes nothing.
    assert_eq!(ims.show(&owner(), &r.id).unwrap(), same);
}

#[test]
fn list_filters_sorting_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ims = Ims::open(&d.join("home")).unwrap();
    let disk = small_disk(d, "disk", MIB);
    let mut ids = Vec::new();
    for (i, name) in ["delta", "alpha", "charlie", "bravo", "echo"]
        .iter()
        .enumerate()
    {
        let mut req = data_request(name);
        req.tags = vec![
            Tag::new("n", i.to_string()).unwrap(),
            format!("parity={}", i % 2).parse().unwrap(),
        ];
        ids.push(
            ims.register(
                &owner(),
                disk.as_path(),
                &req,
                &mut |_| {},
                &CancelToken::new(),
            )
            .unwrap()
            .record
            .id,
        );
    }
    let names = |q: ListQuery| -> Vec<String> {
        ims.list(&owner(), &q)
            .unwrap()
            .into_iter()
            .map(|l| l.record.name)
            .collect()
    };
    let by_name = ListQuery {
        sort_key: Some("name".into()),
        ascending: true,
        ..Default::default()
    };
    assert_eq!(
        names(by_name.clone()),
        ["alpha", "bravo", "charlie", "delta", "echo"]
    );
    let page1 = ims
        .list(
            &owner(),
            &ListQuery {
                limit: Some(2),
                ..by_name.clone()
            },
        )
        .unwrap();
    assert_eq!(page1.len(), 2);
    let marker = page1[1].record.id.clone();
    assert_eq!(
        names(ListQuery {
            limit: Some(2),
            marker: Some(marker),
            ..by_name.clone()
        }),
        ["charlie", "delta"]
    );
    assert_eq!(
        names(ListQuery {
            tag: Some("parity=0".into()),
            ..by_name.clone()
        }),
        ["charlie", "delta", "echo"]
    );
    assert_eq!(
        names(ListQuery {
            tag: Some("n".into()),
            ..Default::default()
        })
        .len(),
        5
    );
    assert_eq!(
        names(ListQuery {
            name_contains: Some("ha".into()),
            ..by_name.clone()
        }),
        ["alpha", "charlie"]
    );
    assert_eq!(
        names(ListQuery {
            id: Some(ids[0].clone()),
            ..Default::default()
        }),
        ["delta"]
    );
    assert_eq!(
        names(ListQuery {
            image_type: Some(ImageType::System),
            ..Default::default()
        })
        .len(),
        0
    );
    assert_eq!(
        names(ListQuery {
            status: Some(Status::Active),
            ..Default::default()
        })
        .len(),
        5
    );
    assert_eq!(
        names(ListQuery {
            os_type: Some("other".into()),
            ..Default::default()
        })
        .len(),
        5
    );
    let desc = names(ListQuery {
        sort_key: Some("name".into()),
        ..Default::default()
    });
    assert_eq!(desc[0], "echo");
    assert!(
        ims.list(
            &owner(),
            &ListQuery {
                marker: Some("nope".into()),
                ..Default::default()
            }
        )
        .is_err()
    );
    assert!(
        ims.list(
            &owner(),
            &ListQuery {
                sort_key: Some("colour".into()),
                ..Default::default()
            }
        )
        .is_err()
    );
    // Another region is another namespace.
    assert!(
        ims.list(&Scope::new("owner", "r2"), &ListQuery::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn replication_and_export_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let ims = Ims::open(&home).unwrap();
    let disk = small_disk(d, "disk", 3 * MIB);
    let r = ims
        .register(
            &owner(),
            disk.as_path(),
            &data_request("a"),
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .record;
    assert_eq!(
        code(ims.replicate(&owner(), &r.id, "r1", None, None, &CancelToken::new())),
        "same_region"
    );
    let copy = ims
        .replicate(
            &owner(),
            &r.id,
            "r2",
            Some("a-copy"),
            None,
            &CancelToken::new(),
        )
        .unwrap();
    assert_ne!(copy.id, r.id);
    assert_eq!((copy.region.as_str(), copy.status), ("r2", Status::Active));
    assert_eq!(copy.checksum, r.checksum);
    let r2 = Scope::new("owner", "r2");
    assert_eq!(ims.show(&r2, &copy.id).unwrap().name, "a-copy");
    assert_eq!(code(ims.show(&owner(), &copy.id)), "image_not_found");
    // The copy is the source's bytes, stored under the target region.
    assert!(copy.store_key.starts_with("r2/"), "{}", copy.store_key);
    assert!(home.join("store").join(&copy.store_key).is_file());
    let (a, b) = (ims.stored(&r).unwrap(), ims.stored(&copy).unwrap());
    assert_eq!((a.len(), b.len()), (r.store_size, copy.store_size));
    let (mut abuf, mut bbuf) = (vec![0u8; a.len() as usize], vec![0u8; b.len() as usize]);
    a.read_at(&mut abuf, 0).unwrap();
    b.read_at(&mut bbuf, 0).unwrap();
    assert!(abuf == bbuf, "the copy's bytes differ");

    let mut req = data_request("enc");
    req.kms_key_id = Some("key-r1".into());
    let enc = ims
        .register(
            &owner(),
            disk.as_path(),
            &req,
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .record;
    assert_eq!(
        code(ims.replicate(&owner(), &enc.id, "r2", None, None, &CancelToken::new())),
        "kms_key_required"
    );
    let enc2 = ims
        .replicate(
            &owner(),
            &enc.id,
            "r2",
            None,
            Some("key-r2"),
            &CancelToken::new(),
        )
        .unwrap();
    assert_eq!(enc2.kms_key_id.as_deref(), Some("key-r2"));

    // Export: the disk's size or more, never below min_disk.
    let out = d.join("out.raw");
    let export = |size: Option<u64>| {
        ims.export(
            &owner(),
            &r.id,
            ims::Format::Raw,
            &out,
            size,
            &Default::default(),
            &mut |_| {},
            &CancelToken::new(),
        )
    };
    export(None).unwrap();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&disk).unwrap());
    assert_eq!(code(export(Some(MIB))), "export_size_too_small");
    assert_eq!(code(export(Some((1 << 30) - 512))), "export_size_too_small");
    export(Some(1 << 30)).unwrap();
    let grown = fs::read(&out).unwrap();
    assert_eq!(grown.len() as u64, 1 << 30);
    assert_eq!(
        &grown[..3 * MIB as usize],
        fs::read(&disk).unwrap().as_slice()
    );
    assert!(grown[3 * MIB as usize..].iter().all(|&b| b == 0));
}

#[test]
fn two_registrations_at_once_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let home = d.join("home");
    Ims::open(&home).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let (d, home) = (d.clone(), home.clone());
            std::thread::spawn(move || {
                let disk = small_disk(&d, &format!("disk{i}"), 16 * MIB);
                let ims = Ims::open(&home).unwrap();
                ims.register(
                    &owner(),
                    disk.as_path(),
                    &data_request(&format!("img{i}")),
                    &mut |_| {},
                    &CancelToken::new(),
                )
                .unwrap()
                .record
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().status, Status::Active);
    }
    let ims = Ims::open(&home).unwrap();
    assert_eq!(ims.list(&owner(), &ListQuery::default()).unwrap().len(), 2);
}

/// After a crash and the next start: no record left queued or saving, the interrupted one
/// killed (or never made), and no file but the active images' in the store.
fn assert_consistent(home: &Path, name: &str) {
    let all = list(home, "owner", &[]);
    for r in &all {
        assert!(
            !matches!(r["status"].as_str(), Some("queued" | "saving")),
            "left unfinished: {r}"
        );
    }
    let active: Vec<String> = all
        .iter()
        .filter(|r| r["status"] == "active")
        .map(|r| r["store_key"].as_str().unwrap().to_string())
        .collect();
    for f in stray_files(home) {
        let rel = f
            .strip_prefix(home.join("store"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(active.contains(&rel), "stray file {rel} after {name}");
    }
    if let Some(r) = all.iter().find(|r| r["name"] == name) {
        assert_eq!(r["status"], "killed", "{r}");
        assert!(r["status_reason"].as_str().unwrap().contains("interrupted"));
    }
}

// Needs the hook: `cargo test --features fault-injection --test register` (.ci/run runs it).
#[cfg(feature = "fault-injection")]
#[test]
fn registration_killed_at_each_point_leaves_a_consistent_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let disk = d.join("disk.raw");
    random_raw(&disk, 8 * MIB, 4, 1);
    // One active image that must survive every recovery.
    register(&home, &disk, "keep", &["--type", "data"]);
    for point in ["after-insert", "mid-write", "after-write", "after-commit"] {
        let name = format!("crash-{point}");
        let out = Command::new(env!("CARGO_BIN_EXE_ims"))
            .args(["register", s(&disk), "--name", &name, "--type", "data"])
            .env("IMS_HOME", &home)
            .env("IMS_PROJECT", "owner")
            .env("IMS_REGION", "r1")
            .env("IMS_TEST_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the hook did not fire");
        assert_consistent(&home, &name);
        let killed = list(&home, "owner", &["--name", &name]);
        assert_eq!(killed.len(), 1, "{point}");
        assert_eq!(killed[0]["status"], "killed");
    }
    let keep = list(&home, "owner", &["--name", "keep"]);
    assert_eq!(keep[0]["status"], "active");
    // The catalog still works: a registration after the crashes succeeds.
    register(&home, &disk, "after", &["--type", "data"]);
}

/// Without `fault-injection` the hook is not there: the variable is ignored.
#[cfg(not(feature = "fault-injection"))]
#[test]
fn the_crash_variable_is_ignored_without_fault_injection() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let disk = d.join("disk.raw");
    random_raw(&disk, 8 * MIB, 4, 1);
    for point in ["after-insert", "mid-write", "after-write", "after-commit"] {
        let name = format!("crash-{point}");
        let out = Command::new(env!("CARGO_BIN_EXE_ims"))
            .args(["register", s(&disk), "--name", &name, "--type", "data"])
            .env("IMS_HOME", &home)
            .env("IMS_PROJECT", "owner")
            .env("IMS_REGION", "r1")
            .env("IMS_TEST_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            list(&home, "owner", &["--name", &name])[0]["status"],
            "active"
        );
    }
}

/// Starts `ims register` of `disk` and waits until its data file exists.
fn start_registration(home: &Path, disk: &Path, name: &str) -> (std::process::Child, bool) {
    let child = Command::new(env!("CARGO_BIN_EXE_ims"))
        .args(["register", s(disk), "--name", name, "--type", "data"])
        .env("IMS_HOME", home)
        .env("IMS_PROJECT", "owner")
        .env("IMS_REGION", "r1")
        .env_remove("IMS_TEST_CRASH_AT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let tmp = home.join("store").join("r1").join(".tmp");
    while start.elapsed() < Duration::from_secs(30) {
        let writing = fs::read_dir(&tmp).is_ok_and(|es| {
            es.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with(".part")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        });
        if writing {
            return (child, true);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, false)
}

#[test]
fn sigkill_during_registration_then_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let disk = d.join("slow.raw");
    random_raw(&disk, 96 * MIB, 96, 7);
    let (mut child, writing) = start_registration(&home, &disk, "killed");
    if !writing {
        child.wait().unwrap();
        eprintln!("the registration ended before it could be killed; nothing to test");
        return;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_consistent(&home, "killed");
    assert!(stray_files(&home).is_empty(), "{:?}", stray_files(&home));
}

#[test]
fn recovery_leaves_a_live_registration_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let disk = d.join("slow.raw");
    random_raw(&disk, 96 * MIB, 96, 8);
    let (mut child, writing) = start_registration(&home, &disk, "live");
    // Another process starts (and recovers) while the registration writes.
    let during = list(&home, "owner", &[]);
    let status = child.wait().unwrap();
    assert!(status.success());
    if writing && let Some(r) = during.iter().find(|r| r["name"] == "live") {
        assert_ne!(r["status"], "killed", "a live registration was recovered");
    }
    assert_eq!(
        list(&home, "owner", &["--name", "live"])[0]["status"],
        "active"
    );
}

#[test]
fn the_crate_level_register_opens_the_catalog_and_registers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = small_disk(dir.path(), "disk", 2 * MIB);
    let home = dir.path().join("home");
    let r = ims::register(&home, &owner(), &disk, &data_request("top")).unwrap();
    assert_eq!(r.record.status, Status::Active);
    assert!(home.join("catalog.db").exists());
    let again = Ims::open(&home)
        .unwrap()
        .show(&owner(), &r.record.id)
        .unwrap();
    assert_eq!(again, r.record);
}

#[test]
fn limits_come_from_the_home_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    fs::create_dir_all(&home).unwrap();
    fs::write(
        home.join("limits.json"),
        r#"{"private_image_quota": 1, "max_members": 1}"#,
    )
    .unwrap();
    let disk = small_disk(d, "disk", MIB);
    let first = register(&home, &disk, "one", &["--type", "data"]);
    let id = first["id"].as_str().unwrap();
    refused(
        &cli(
            &home,
            "owner",
            &["register", s(&disk), "--name", "two", "--type", "data"],
        ),
        "quota_exceeded",
    );
    assert!(
        cli(&home, "owner", &["images", "share", id, "--with", "a"])
            .status
            .success()
    );
    refused(
        &cli(&home, "owner", &["images", "share", id, "--with", "b"]),
        "too_many_members",
    );
    fs::write(
        home.join("limits.json"),
        r#"{"private_image_quota": "many"}"#,
    )
    .unwrap();
    let out = cli(&home, "owner", &["images", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.json"));
}

/// An ISO 9660 image registers as an ISO (probed as `iso`), and only as one; one that names no
/// OS needs `--os-version` (tests/iso.rs has the ISOs that name theirs).
#[test]
fn iso_images_register_as_iso_only() {
    if !have("iso_images_register_as_iso_only", &["genisoimage"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    put(&content, "README.TXT", b"an installation medium\n");
    let iso = dir.path().join("install.iso");
    run(
        "genisoimage",
        &["-quiet", "-V", "INSTALL", "-o", s(&iso), s(&content)],
    );
    let home = dir.path().join("home");
    refused(
        &cli(
            &home,
            "owner",
            &["register", s(&iso), "--name", "installer", "--type", "iso"],
        ),
        "os_version_required",
    );
    let record = register(
        &home,
        &iso,
        "installer",
        &["--type", "iso", "--os-version", "Other Linux 64bit"],
    );
    assert_eq!(record["image_type"], "iso");
    assert_eq!(record["status"], "active");
    assert_eq!(record["source_format"], "iso");
    assert_eq!(record["os_version"], "Other Linux 64bit");
    assert_eq!(record["iso"]["volume_label"], "INSTALL");
    refused(
        &cli(
            &home,
            "owner",
            &["register", s(&iso), "--name", "as-data", "--type", "data"],
        ),
        "iso_type_mismatch",
    );
    // Given as a storage, the ISO is recognised through it.
    let ims = Ims::open(&home).unwrap();
    let mut request = RegisterRequest::new("in-memory", ImageType::Iso);
    request.os_version = Some("Other Linux 64bit".into());
    let from_memory = ims
        .register(
            &owner(),
            ims::Input::Storage {
                storage: Arc::new(ims::MemoryStorage::new(fs::read(&iso).unwrap())),
                name: "install.iso".into(),
            },
            &request,
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .record;
    assert_eq!(
        (from_memory.status, from_memory.source_format.as_str()),
        (Status::Active, "iso")
    );
}

/// The disk an active image holds, read back from its stored bytes.
fn stored_disk(ims: &Ims, r: &ims::register::ImageRecord) -> Vec<u8> {
    let image = ims::open_storage(
        ims.stored(r).unwrap(),
        Path::new(&r.store_key),
        &ims::OpenOptions {
            format: Some(r.store_format.parse().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    let reader = image.reader().unwrap();
    let mut disk = vec![0u8; r.virtual_size as usize];
    reader.read_at(&mut disk, 0).unwrap();
    disk
}

/// `register` takes the image from a storage or a stream as well as from a file; a stream of a
/// format that needs random access is refused with a rule's code, a stream longer than the
/// file-size limit too; QCOW2 is spooled and leaves no spool file.
#[test]
fn registration_from_a_storage_or_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let mut ims = Ims::open(&home).unwrap();
    let disk = small_disk(d, "disk", 3 * MIB);
    let bytes = fs::read(&disk).unwrap();
    let never = CancelToken::new();
    let memory = |name: &str| ims::Input::Storage {
        storage: Arc::new(ims::MemoryStorage::new(bytes.clone())),
        name: name.into(),
    };
    let stream = |data: Vec<u8>, format: ims::Format, size: Option<u64>| ims::Input::Stream {
        reader: Box::new(std::io::Cursor::new(data)),
        format,
        name: "upload".into(),
        size,
    };

    let r = ims
        .register(
            &owner(),
            memory("mem.raw"),
            &data_request("mem"),
            &mut |_| {},
            &never,
        )
        .unwrap()
        .record;
    assert_eq!((r.status, r.source_size), (Status::Active, 3 * MIB));
    assert!(stored_disk(&ims, &r) == bytes, "the stored disk differs");

    let r = ims
        .register(
            &owner(),
            stream(bytes.clone(), ims::Format::Raw, Some(3 * MIB)),
            &data_request("streamed"),
            &mut |_| {},
            &never,
        )
        .unwrap()
        .record;
    assert_eq!((r.status, r.source_size), (Status::Active, 3 * MIB));
    assert_eq!(r.source_format, "raw");
    assert!(stored_disk(&ims, &r) == bytes, "the stored disk differs");

    // QCOW2 from a storage: spooled, hashed on its way into the store, no spool file left.
    let mut req = data_request("as-qcow2");
    req.store_format = ims::Format::Qcow2;
    let q = ims
        .register(&owner(), memory("mem.raw"), &req, &mut |_| {}, &never)
        .unwrap()
        .record;
    let stored = home.join("store").join(&q.store_key);
    assert_eq!(q.checksum.sha256, sha256_file(&stored));
    assert_eq!(q.store_size, fs::metadata(&stored).unwrap().len());
    assert!(stored_disk(&ims, &q) == bytes, "the stored disk differs");
    assert_eq!(fs::read_dir(home.join("spool")).unwrap().count(), 0);

    let before = statuses(&ims);
    let qcow2 =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sample.qcow2")).unwrap();
    let e = ims
        .register(
            &owner(),
            stream(qcow2, ims::Format::Qcow2, None),
            &data_request("qcow2-stream"),
            &mut |_| {},
            &never,
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(RuleCode::FormatUnsupported), "{e}");
    assert!(e.to_string().contains("spool"), "{e}");
    assert_eq!(statuses(&ims), before, "a refused stream made a record");

    ims.set_limits(Limits {
        max_file_size: 2 * MIB,
        ..Limits::default()
    });
    let e = ims
        .register(
            &owner(),
            stream(bytes.clone(), ims::Format::Raw, Some(3 * MIB)),
            &data_request("too-long"),
            &mut |_| {},
            &never,
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(RuleCode::FileTooLarge), "{e}");
    let killed = statuses(&ims)
        .into_iter()
        .find(|r| r.0 == "too-long")
        .unwrap();
    assert_eq!(killed.1, Status::Killed);
    assert!(killed.2.unwrap().starts_with("file_too_large"));
    let active: Vec<String> = statuses(&ims)
        .into_iter()
        .filter(|r| r.1 == Status::Active)
        .map(|r| r.0)
        .collect();
    assert_eq!(active, ["as-qcow2", "mem", "streamed"]);
    assert_eq!(stray_files(&home).len(), 3, "{:?}", stray_files(&home));
}

/// Everything `scope` sees, as (name, status, reason).
fn statuses(ims: &Ims) -> Vec<(String, Status, Option<String>)> {
    let mut v: Vec<_> = [Scope::new("owner", "r1"), Scope::new("owner", "r2")]
        .iter()
        .flat_map(|scope| ims.list(scope, &ListQuery::default()).unwrap())
        .map(|l| (l.record.name, l.record.status, l.record.status_reason))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_cancelled_registration_is_killed_and_leaves_no_stored_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let ims = Ims::open(&home).unwrap();
    let disk = d.join("disk.raw");
    random_raw(&disk, 32 * MIB, 32, 5);
    for store_format in [ims::Format::Zvhd2, ims::Format::Qcow2] {
        let name = format!("cancelled-{store_format}");
        let mut req = data_request(&name);
        req.store_format = store_format;
        let cancel = CancelToken::new();
        let mut at = None;
        // What the store held when the cancel came: the upload being written.
        let mut during = Vec::new();
        let result = ims.register(
            &owner(),
            disk.as_path(),
            &req,
            &mut |p| {
                if at.is_none() && p.done * 2 >= p.total && p.done > 0 {
                    during = stray_files(&home);
                    cancel.cancel();
                    at = Some(Instant::now());
                }
            },
            &cancel,
        );
        let latency = at.expect("progress passed half").elapsed();
        let e = result.unwrap_err();
        assert_eq!(e.kind(), "cancelled", "{e}");
        eprintln!("{store_format}: register returned {latency:?} after cancel()");
        assert!(latency < Duration::from_secs(1), "{latency:?}");
        assert!(!during.is_empty(), "nothing was being stored");
        assert!(stray_files(&home).is_empty(), "{:?}", stray_files(&home));
        let record = statuses(&ims).into_iter().find(|r| r.0 == name);
        assert_eq!(
            record,
            Some((name, Status::Killed, Some("cancelled".into())))
        );
    }
    // Nothing is active; the next registration goes through.
    assert!(statuses(&ims).iter().all(|(_, s, _)| *s == Status::Killed));
    let cancel = CancelToken::new();
    let ok = ims
        .register(
            &owner(),
            disk.as_path(),
            &data_request("after"),
            &mut |_| {},
            &cancel,
        )
        .unwrap();
    assert_eq!(ok.record.status, Status::Active);
}

#[test]
fn a_cancelled_replication_or_export_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let ims = Ims::open(&home).unwrap();
    let disk = small_disk(d, "disk", 3 * MIB);
    let never = CancelToken::new();
    let r = ims
        .register(
            &owner(),
            disk.as_path(),
            &data_request("a"),
            &mut |_| {},
            &never,
        )
        .unwrap()
        .record;
    let stored = stray_files(&home);
    assert_eq!(stored.len(), 1);
    let cancelled = CancelToken::new();
    cancelled.cancel();

    let e = ims
        .replicate(&owner(), &r.id, "r2", Some("copy"), None, &cancelled)
        .unwrap_err();
    assert_eq!(e.kind(), "cancelled");
    assert_eq!(stray_files(&home), stored, "the copy was left in the store");
    assert_eq!(
        statuses(&ims),
        [
            ("a".to_string(), Status::Active, None),
            ("copy".to_string(), Status::Killed, Some("cancelled".into())),
        ]
    );

    let out_dir = d.join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("a.qcow2");
    let export = |cancel: &CancelToken| {
        ims.export(
            &owner(),
            &r.id,
            ims::Format::Qcow2,
            &out,
            None,
            &Default::default(),
            &mut |_| {},
            cancel,
        )
    };
    assert_eq!(export(&cancelled).unwrap_err().kind(), "cancelled");
    assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 0);
    export(&never).unwrap();
    assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 1);
    assert!(out.exists());
}
