//! Every kind of image the service offers, through the `ims` binary: public images (an
//! operator publishes and withdraws them; every project sees and copies them, none but an
//! operator changes them), marketplace images (listed for every project, never shared), full-ECS
//! images of several disks (registered, exported and killed all or nothing) and a system image
//! registered with its data-disk images.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::catalog::{
    GUEST_TOOLS, cli, data_disk, linux_guest, list, ok_json, random_raw, refused, stray_files,
};
use common::{have, have_qemu_img, qemu_compare, qemu_img, s};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A catalog home whose limits name `platform` as its operator, with `extra` limits.
fn home_with_operator(dir: &Path, extra: &str) -> std::path::PathBuf {
    let home = dir.join("home");
    fs::create_dir_all(&home).unwrap();
    fs::write(
        home.join("limits.json"),
        format!("{{\"operators\": [\"platform\"]{extra}}}"),
    )
    .unwrap();
    home
}

/// `ims register FILE --name NAME ARGS...` as `project`, its JSON record.
fn register_as(home: &Path, project: &str, file: &Path, name: &str, extra: &[&str]) -> Value {
    let mut args = vec!["register", s(file), "--name", name, "--output", "json"];
    args.extend(extra);
    ok_json(&cli(home, project, &args))
}

/// `ims images ARGS... --output json` as `project`, its JSON output.
fn images(home: &Path, project: &str, args: &[&str]) -> Value {
    let mut all = vec!["images"];
    all.extend(args);
    all.extend(["--output", "json"]);
    ok_json(&cli(home, project, &all))
}

fn ids(images: &[Value]) -> Vec<&str> {
    images.iter().map(|r| r["id"].as_str().unwrap()).collect()
}

#[test]
fn an_operator_publishes_a_public_image_every_project_sees_and_copies_it_none_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A quota of one image: a public image does not count against it.
    let home = home_with_operator(d, ", \"private_image_quota\": 1");
    let disk = d.join("base.raw");
    random_raw(&disk, 8 * MIB, 3, 21);
    let base = register_as(&home, "platform", &disk, "base", &["--type", "data"]);
    let id = base["id"].as_str().unwrap();

    // Only an operator publishes a public image; the tenant cannot see it before.
    let tenant_own = register_as(&home, "tenant", &disk, "own", &["--type", "data"]);
    refused(
        &cli(
            &home,
            "tenant",
            &[
                "images",
                "publish",
                tenant_own["id"].as_str().unwrap(),
                "--public",
            ],
        ),
        "not_operator",
    );
    refused(
        &cli(&home, "tenant", &["images", "show", id]),
        "image_not_found",
    );
    let public = images(&home, "platform", &["publish", id, "--public"]);
    assert_eq!(public["visibility"], "public");
    assert_eq!(public["protected"], true);

    // Out of the operator's quota: it registers another image within a quota of one.
    register_as(&home, "platform", &disk, "next", &["--type", "data"]);

    // Every project of the region sees it, by --visibility public and by IMS's gold.
    for project in ["tenant", "stranger"] {
        assert_eq!(
            ids(&list(&home, project, &["--visibility", "public"])),
            [id]
        );
        assert_eq!(ids(&list(&home, project, &["--imagetype", "gold"])), [id]);
        assert!(ids(&list(&home, project, &[])).contains(&id));
    }
    assert!(list(&home, "tenant", &["--visibility", "public"])[0]["owner"] == "platform");
    let other_region = Command::new(env!("CARGO_BIN_EXE_ims"))
        .args(["images", "list", "--output", "json"])
        .env("IMS_HOME", &home)
        .env("IMS_PROJECT", "tenant")
        .env("IMS_REGION", "r2")
        .output()
        .unwrap();
    assert!(
        ok_json(&other_region)["images"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Protected: no project but an operator changes or deletes it; nobody shares it.
    refused(
        &cli(&home, "tenant", &["images", "delete", id]),
        "image_protected",
    );
    refused(
        &cli(&home, "tenant", &["images", "update", id, "--name", "mine"]),
        "image_protected",
    );
    refused(
        &cli(
            &home,
            "tenant",
            &["images", "share", id, "--with", "friend"],
        ),
        "public_not_shareable",
    );
    refused(
        &cli(
            &home,
            "platform",
            &["images", "share", id, "--with", "friend"],
        ),
        "public_not_shareable",
    );
    refused(
        &cli(&home, "tenant", &["images", "unpublish", id]),
        "not_operator",
    );
    let renamed = images(&home, "platform", &["update", id, "--name", "base-2026"]);
    assert_eq!(renamed["name"], "base-2026");

    // Any project copies it into a private image of its own (within its quota: the tenant
    // has one image already, so a second is refused, and after deleting it the copy fits).
    refused(
        &cli(&home, "tenant", &["images", "copy", id]),
        "quota_exceeded",
    );
    cli(
        &home,
        "tenant",
        &["images", "delete", tenant_own["id"].as_str().unwrap()],
    );
    let copy = images(&home, "tenant", &["copy", id, "--name", "my-base"]);
    assert_eq!(copy["owner"], "tenant");
    assert_eq!(copy["visibility"], "private");
    assert_eq!(copy["protected"], false);
    assert_eq!(copy["status"], "active");
    assert_eq!(copy["copied_from"], id);
    assert_eq!(copy["checksum"], base["checksum"]);
    let copy_id = copy["id"].as_str().unwrap();
    let out = d.join("copy.raw");
    cli(
        &home,
        "tenant",
        &["images", "export", copy_id, "-O", "raw", s(&out)],
    );
    assert_eq!(fs::read(&out).unwrap(), fs::read(&disk).unwrap());
    // The copy is the tenant's: it changes and shares it.
    images(&home, "tenant", &["update", copy_id, "--name", "my-base-2"]);
    images(&home, "tenant", &["share", copy_id, "--with", "friend"]);

    // Withdrawn: private again, out of the other projects' sight; the copy stays.
    let withdrawn = images(&home, "platform", &["unpublish", id]);
    assert_eq!(withdrawn["visibility"], "private");
    assert_eq!(withdrawn["protected"], false);
    refused(
        &cli(&home, "tenant", &["images", "show", id]),
        "image_not_found",
    );
    assert!(list(&home, "stranger", &["--visibility", "public"]).is_empty());
    refused(
        &cli(&home, "platform", &["images", "unpublish", id]),
        "not_published",
    );
    assert_eq!(
        images(&home, "tenant", &["show", copy_id])["status"],
        "active"
    );

    // Published again and deleted by the operator: gone for everyone, the copy still there.
    images(&home, "platform", &["publish", id, "--public"]);
    cli(&home, "platform", &["images", "delete", id]);
    refused(
        &cli(&home, "tenant", &["images", "show", id]),
        "image_not_found",
    );
    assert_eq!(
        images(&home, "tenant", &["show", copy_id])["status"],
        "active"
    );
}

#[test]
fn a_marketplace_image_is_listed_for_every_project_refused_for_sharing_and_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = home_with_operator(d, "");
    let disk = d.join("app.raw");
    random_raw(&disk, 8 * MIB, 2, 22);
    let app = register_as(&home, "seller", &disk, "app", &["--type", "data"]);
    let id = app["id"].as_str().unwrap();

    // A shared image is not published; a publication names its publisher.
    images(&home, "seller", &["share", id, "--with", "friend"]);
    refused(
        &cli(
            &home,
            "seller",
            &[
                "images",
                "publish",
                id,
                "--marketplace",
                "--publisher",
                "ACME",
            ],
        ),
        "shared_not_publishable",
    );
    cli(
        &home,
        "seller",
        &["images", "unshare", id, "--with", "friend"],
    );
    refused(
        &cli(
            &home,
            "seller",
            &["images", "publish", id, "--marketplace", "--publisher", " "],
        ),
        "publisher_invalid",
    );
    refused(
        &cli(
            &home,
            "buyer1",
            &[
                "images",
                "publish",
                id,
                "--marketplace",
                "--publisher",
                "ACME",
            ],
        ),
        "image_not_found",
    );
    let published = images(
        &home,
        "seller",
        &[
            "publish",
            id,
            "--marketplace",
            "--publisher",
            "ACME",
            "--price-note",
            "0.05 USD per hour",
        ],
    );
    assert_eq!(published["marketplace"], true);
    assert_eq!(published["publisher"], "ACME");
    assert_eq!(published["price_note"], "0.05 USD per hour");
    assert_eq!(published["visibility"], "private");

    // Every project lists it, by --visibility marketplace and by IMS's market.
    for project in ["buyer1", "buyer2", "seller"] {
        let market = list(&home, project, &["--visibility", "marketplace"]);
        assert_eq!(ids(&market), [id], "{project}");
        assert_eq!(market[0]["publisher"], "ACME");
        assert_eq!(ids(&list(&home, project, &["--imagetype", "market"])), [id]);
    }
    assert!(list(&home, "buyer1", &["--visibility", "public"]).is_empty());
    assert!(list(&home, "buyer1", &["--visibility", "private"]).is_empty());

    // Nobody shares it; only its owner changes it; an operator does not make it public.
    refused(
        &cli(
            &home,
            "seller",
            &["images", "share", id, "--with", "friend"],
        ),
        "marketplace_not_shareable",
    );
    refused(
        &cli(
            &home,
            "buyer1",
            &["images", "share", id, "--with", "friend"],
        ),
        "marketplace_not_shareable",
    );
    refused(
        &cli(&home, "buyer1", &["images", "delete", id]),
        "not_owner",
    );
    refused(
        &cli(&home, "buyer1", &["images", "unpublish", id]),
        "not_owner",
    );
    refused(
        &cli(&home, "platform", &["images", "publish", id, "--public"]),
        "not_owner",
    );

    // Every project uses it: exports it, copies it.
    let out = d.join("bought.raw");
    cli(
        &home,
        "buyer2",
        &["images", "export", id, "-O", "raw", s(&out)],
    );
    assert_eq!(fs::read(&out).unwrap(), fs::read(&disk).unwrap());
    let copy = images(&home, "buyer1", &["copy", id]);
    assert_eq!(copy["owner"], "buyer1");
    assert_eq!(copy["marketplace"], false);
    assert_eq!(copy["publisher"], Value::Null);
    let copy_id = copy["id"].as_str().unwrap();

    // Withdrawn: no project lists it any more; the copy made stays intact.
    let withdrawn = images(&home, "seller", &["unpublish", id]);
    assert_eq!(withdrawn["marketplace"], false);
    for project in ["buyer1", "buyer2"] {
        assert!(list(&home, project, &["--visibility", "marketplace"]).is_empty());
        refused(
            &cli(&home, project, &["images", "show", id]),
            "image_not_found",
        );
    }
    let kept = images(&home, "buyer1", &["show", copy_id]);
    assert_eq!(kept["status"], "active");
    assert_eq!(kept["checksum"], app["checksum"]);
    let out = d.join("kept.raw");
    cli(
        &home,
        "buyer1",
        &["images", "export", copy_id, "-O", "raw", s(&out)],
    );
    assert_eq!(fs::read(&out).unwrap(), fs::read(&disk).unwrap());
    // Private again, it can be shared.
    images(&home, "seller", &["share", id, "--with", "friend"]);
}

/// A guest system disk as QCOW2, an ext4 data disk as VMDK and a random data disk as VHD,
/// each made by qemu-img from a raw disk: `(qcow2, vmdk, vhd)`.
fn server_disks(d: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let guest = linux_guest(d, "guest", 0x3e, Some("BOOTX64.EFI"));
    let system = d.join("system.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&guest), s(&system)]);
    let ext4 = data_disk(d, "data1");
    let data1 = d.join("data1.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", s(&ext4), s(&data1)]);
    let random = d.join("data2.raw");
    random_raw(&random, 16 * MIB, 5, 23);
    let data2 = d.join("data2.vhd");
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", s(&random), s(&data2)]);
    (system, data1, data2)
}

#[test]
fn a_full_ecs_image_of_three_disks_registers_exports_and_follows_the_sharing_rules() {
    let t = "a_full_ecs_image_of_three_disks_registers_exports_and_follows_the_sharing_rules";
    if !have(t, GUEST_TOOLS) || !have_qemu_img(t) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let (system, data1, data2) = server_disks(d);
    let ecs = register_as(
        &home,
        "owner",
        &system,
        "server",
        &[
            "--type",
            "full-ecs",
            "--data-disk",
            s(&data1),
            "--data-disk",
            s(&data2),
        ],
    );
    let id = ecs["id"].as_str().unwrap();
    assert_eq!(ecs["image_type"], "full_ecs");
    assert_eq!(ecs["status"], "active");
    assert_eq!(ecs["os_type"], "Linux");
    assert_eq!(ecs["backup_id"], Value::Null);
    // One record listing each disk: its own format, sizes, checksums, min_disk and key.
    let disks = ecs["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 3);
    let formats: Vec<&str> = disks
        .iter()
        .map(|x| x["source_format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["qcow2", "vmdk", "vhd"]);
    let roles: Vec<&str> = disks.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "data", "data"]);
    for (x, source) in disks.iter().zip([&system, &data1, &data2]) {
        assert_eq!(x["source_size"], fs::metadata(source).unwrap().len());
        assert_eq!(x["store_format"], "zvhd2");
        assert_eq!(x["checksum"]["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(x["checksum"]["sha512"].as_str().unwrap().len(), 128);
        assert!(x["min_disk"].as_u64().unwrap() >= 1);
        let key = x["store_key"].as_str().unwrap();
        assert!(key.starts_with(&format!("r1/{id}")), "{key}");
        assert!(home.join("store").join(key).is_file(), "{key}");
    }
    assert_eq!(disks[0]["store_key"], ecs["store_key"]);
    assert_eq!(disks[0]["checksum"], ecs["checksum"]);
    assert_eq!(disks[1]["virtual_size"], 32 * MIB);
    assert_eq!(stray_files(&home).len(), 3);
    // A listing by type finds it once.
    assert_eq!(ids(&list(&home, "owner", &["--type", "full-ecs"])), [id]);

    // Exported: one file per disk, each content-equal to the disk registered.
    let out = d.join("out");
    fs::create_dir_all(&out).unwrap();
    let exported = cli(
        &home,
        "owner",
        &[
            "images",
            "export",
            id,
            "-O",
            "qcow2",
            s(&out.join("server.qcow2")),
        ],
    );
    assert!(exported.status.success(), "{exported:?}");
    let names = ["server.qcow2", "server-data1.qcow2", "server-data2.qcow2"];
    for (name, (source, format)) in
        names
            .iter()
            .zip([(&system, "qcow2"), (&data1, "vmdk"), (&data2, "vpc")])
    {
        let file = out.join(name);
        assert!(
            String::from_utf8_lossy(&exported.stderr).contains(s(&file)),
            "{name}"
        );
        assert!(
            qemu_compare(&file, "qcow2", source, format),
            "{name} differs from {}",
            source.display()
        );
        assert!(
            qemu_img(&["check", "-q", s(&file)]).status.success(),
            "{name}"
        );
    }

    // Not made from a backup: not shareable. Never copied in region, never published.
    refused(
        &cli(&home, "owner", &["images", "share", id, "--with", "m1"]),
        "full_ecs_not_shareable",
    );
    refused(
        &cli(&home, "owner", &["images", "copy", id]),
        "full_ecs_not_copyable",
    );
    refused(
        &cli(
            &home,
            "owner",
            &[
                "images",
                "publish",
                id,
                "--marketplace",
                "--publisher",
                "me",
            ],
        ),
        "full_ecs_not_publishable",
    );

    // From a backup: shareable, with 10 projects at most.
    let backed = register_as(
        &home,
        "owner",
        &system,
        "from-backup",
        &[
            "--type",
            "full-ecs",
            "--data-disk",
            s(&data2),
            "--backup-id",
            "cbr-0042",
        ],
    );
    let bid = backed["id"].as_str().unwrap();
    assert_eq!(backed["backup_id"], "cbr-0042");
    for i in 1..=10 {
        images(&home, "owner", &["share", bid, "--with", &format!("m{i}")]);
    }
    refused(
        &cli(&home, "owner", &["images", "share", bid, "--with", "m11"]),
        "too_many_full_ecs_members",
    );
    cli(&home, "m3", &["images", "accept", bid]);
    assert_eq!(ids(&list(&home, "m3", &[])), [bid]);

    // A full-ECS image needs its data disks; a backup id is for a full-ECS image only.
    refused(
        &cli(
            &home,
            "owner",
            &[
                "register",
                s(&system),
                "--name",
                "alone",
                "--type",
                "full-ecs",
            ],
        ),
        "full_ecs_not_registrable",
    );
    let out_of_place = cli(
        &home,
        "owner",
        &[
            "register",
            s(&system),
            "--name",
            "x",
            "--backup-id",
            "cbr-1",
        ],
    );
    assert_eq!(out_of_place.status.code(), Some(1));

    // Deleted: every disk's file goes.
    cli(&home, "owner", &["images", "delete", id]);
    for x in disks {
        let key = x["store_key"].as_str().unwrap();
        assert!(!home.join("store").join(key).exists(), "{key}");
    }
    assert_eq!(stray_files(&home).len(), 2);
}

#[test]
fn a_refused_disk_registers_no_disk_of_the_server() {
    let t = "a_refused_disk_registers_no_disk_of_the_server";
    if !have(t, GUEST_TOOLS) || !have_qemu_img(t) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let (system, data1, _) = server_disks(d);
    // A data disk with a backing file, a data disk too large, too many data disks.
    let child = d.join("child.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        s(&data1),
        "-F",
        "vmdk",
        s(&child),
    ]);
    let ecs = |extra: &[&str]| {
        let mut args = vec![
            "register",
            s(&system),
            "--name",
            "server",
            "--type",
            "full-ecs",
        ];
        args.extend(extra);
        cli(&home, "owner", &args)
    };
    refused(
        &ecs(&["--data-disk", s(&data1), "--data-disk", s(&child)]),
        "reference_refused",
    );
    let with = |extra: &[&str]| {
        let mut args = vec!["register", s(&system), "--name", "sys"];
        args.extend(extra);
        cli(&home, "owner", &args)
    };
    refused(
        &with(&["--with-data-disk", s(&data1), "--with-data-disk", s(&child)]),
        "reference_refused",
    );
    let four: Vec<&str> = (0..4)
        .flat_map(|_| ["--with-data-disk", s(&data1)])
        .collect();
    refused(&with(&four), "too_many_data_images");
    // The data disk of a full-ECS image is checked as a data disk, the system disk as one.
    refused(
        &cli(
            &home,
            "owner",
            &[
                "register",
                s(&data1),
                "--name",
                "server",
                "--type",
                "full-ecs",
                "--data-disk",
                s(&system),
            ],
        ),
        "system_disk_without_os",
    );
    // Flags of the other kind are usage errors.
    let wrong = with(&["--data-disk", s(&data1)]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("--data-disk"));
    assert!(list(&home, "owner", &[]).is_empty());
    assert!(stray_files(&home).is_empty(), "{:?}", stray_files(&home));
}

#[test]
fn a_system_disk_registers_with_its_data_disks_all_or_nothing() {
    let t = "a_system_disk_registers_with_its_data_disks_all_or_nothing";
    if !have(t, GUEST_TOOLS) || !have_qemu_img(t) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (system, data1, data2) = server_disks(d);
    let home = d.join("home");
    let group = ok_json(&cli(
        &home,
        "owner",
        &[
            "register",
            s(&system),
            "--name",
            "web",
            "--type",
            "system",
            "--with-data-disk",
            s(&data1),
            "--with-data-disk",
            s(&data2),
            "--tag",
            "env=prod",
            "--output",
            "json",
        ],
    ));
    let sys = &group["system"];
    assert_eq!(sys["image_type"], "system");
    assert_eq!(sys["status"], "active");
    let data = group["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let data_ids: Vec<&str> = ids(data);
    assert_eq!(sys["data_images"].as_array().unwrap().len(), 2);
    assert_eq!(
        sys["data_images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect::<Vec<_>>(),
        data_ids
    );
    for (i, (r, source)) in data
        .iter()
        .zip([(&data1, "vmdk"), (&data2, "vpc")])
        .enumerate()
    {
        assert_eq!(r["name"], format!("web-data{}", i + 1));
        assert_eq!(r["image_type"], "data");
        assert_eq!(r["status"], "active");
        assert_eq!(r["tags"]["env"], "prod");
        let out = d.join(format!("web-data{i}.raw"));
        cli(
            &home,
            "owner",
            &[
                "images",
                "export",
                r["id"].as_str().unwrap(),
                "-O",
                "raw",
                s(&out),
            ],
        );
        assert!(qemu_compare(&out, "raw", source.0, source.1));
    }
    assert_eq!(list(&home, "owner", &[]).len(), 3);

    // The quota must hold all of them: with room for two, none is made.
    let small = d.join("small");
    fs::create_dir_all(&small).unwrap();
    fs::write(small.join("limits.json"), "{\"private_image_quota\": 2}").unwrap();
    refused(
        &cli(
            &small,
            "owner",
            &[
                "register",
                s(&system),
                "--name",
                "web",
                "--with-data-disk",
                s(&data1),
                "--with-data-disk",
                s(&data2),
            ],
        ),
        "quota_exceeded",
    );
    assert!(list(&small, "owner", &["--status", "killed"]).is_empty());
    assert!(list(&small, "owner", &[]).is_empty());
    assert!(stray_files(&small).is_empty());
}

/// Starts a full-ECS registration of `system` and `data` and waits until the data disk (the
/// second disk) is being written: its `.data1.zvhd2.part` holds bytes.
fn start_full_ecs(home: &Path, system: &Path, data: &Path) -> (std::process::Child, bool) {
    let child = Command::new(env!("CARGO_BIN_EXE_ims"))
        .args([
            "register",
            s(system),
            "--name",
            "killed",
            "--type",
            "full-ecs",
            "--data-disk",
            s(data),
        ])
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
    while start.elapsed() < Duration::from_secs(60) {
        let writing = fs::read_dir(&tmp).is_ok_and(|es| {
            es.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with(".data1.zvhd2.part")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        });
        if writing {
            return (child, true);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (child, false)
}

#[test]
fn sigkill_during_the_second_disk_leaves_no_active_record_and_no_stored_disk() {
    let t = "sigkill_during_the_second_disk_leaves_no_active_record_and_no_stored_disk";
    if !have(t, GUEST_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let system = linux_guest(d, "guest", 0x3e, Some("BOOTX64.EFI"));
    // Random data compresses slowly: the kill lands while it is written.
    let data = d.join("slow.raw");
    random_raw(&data, 128 * MIB, 128, 24);
    let (mut child, writing) = start_full_ecs(&home, &system, &data);
    assert!(writing, "the second disk was never seen being written");
    // The system disk is committed by now: its final file is in the store.
    assert_eq!(
        stray_files(&home)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "zvhd2"))
            .count(),
        1
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the registration ended before the kill");
    // The next command recovers: the record is killed, neither disk is left.
    let all = list(&home, "owner", &[]);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["status"], "killed");
    assert!(
        all[0]["status_reason"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    assert!(stray_files(&home).is_empty(), "{:?}", stray_files(&home));
    // The catalog still works.
    let small = d.join("small.raw");
    random_raw(&small, 4 * MIB, 1, 25);
    let ecs = ok_json(&cli(
        &home,
        "owner",
        &[
            "register",
            s(&system),
            "--name",
            "after",
            "--type",
            "full-ecs",
            "--data-disk",
            s(&small),
            "--output",
            "json",
        ],
    ));
    assert_eq!(ecs["status"], "active");
}

// Needs the hook: `cargo test --features fault-injection --test image_kinds`.
#[cfg(feature = "fault-injection")]
#[test]
fn a_full_ecs_registration_killed_at_each_point_of_each_disk_leaves_nothing() {
    let t = "a_full_ecs_registration_killed_at_each_point_of_each_disk_leaves_nothing";
    if !have(t, GUEST_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let system = linux_guest(d, "guest", 0x3e, Some("BOOTX64.EFI"));
    let data = d.join("data.raw");
    random_raw(&data, 8 * MIB, 4, 26);
    let keep = ok_json(&cli(
        &home,
        "owner",
        &[
            "register",
            s(&data),
            "--name",
            "keep",
            "--type",
            "data",
            "--output",
            "json",
        ],
    ));
    for point in [
        "after-insert",
        "after-commit",
        "mid-write-2",
        "after-write-2",
        "after-commit-2",
        "after-commit-3",
    ] {
        let name = format!("crash-{point}");
        let out = Command::new(env!("CARGO_BIN_EXE_ims"))
            .args([
                "register",
                s(&system),
                "--name",
                &name,
                "--type",
                "full-ecs",
                "--data-disk",
                s(&data),
                "--data-disk",
                s(&data),
            ])
            .env("IMS_HOME", &home)
            .env("IMS_PROJECT", "owner")
            .env("IMS_REGION", "r1")
            .env("IMS_TEST_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the hook did not fire");
        let killed = list(&home, "owner", &["--name", &name]);
        assert_eq!(killed.len(), 1, "{point}");
        assert_eq!(killed[0]["status"], "killed", "{point}");
        assert_eq!(
            stray_files(&home),
            [home.join("store").join(keep["store_key"].as_str().unwrap())],
            "{point}"
        );
    }
    // With two data-disk images: killed after the second disk is stored, none is active.
    let out = Command::new(env!("CARGO_BIN_EXE_ims"))
        .args([
            "register",
            s(&system),
            "--name",
            "group",
            "--with-data-disk",
            s(&data),
            "--with-data-disk",
            s(&data),
        ])
        .env("IMS_HOME", &home)
        .env("IMS_PROJECT", "owner")
        .env("IMS_REGION", "r1")
        .env("IMS_TEST_CRASH_AT", "after-commit-2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = list(&home, "owner", &[]);
    let active: Vec<&Value> = all.iter().filter(|r| r["status"] == "active").collect();
    assert_eq!(active.len(), 1, "only `keep`: {all:?}");
    assert_eq!(
        all.iter().filter(|r| r["status"] == "killed").count(),
        6 + 3
    );
}
