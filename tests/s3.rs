//! The object-store image store against a real S3 server (moto's, a separate process on a free
//! loopback port: tests/common/s3.rs): registrations stream into it and export back byte-equal,
//! images copy between regions in it, a registration killed mid-upload leaves no active record
//! and its multipart upload is aborted by the next process, and a stored image is read in
//! ranges (inspection straight from the object). The store trait itself is tested by the
//! suite of tests/store.rs, which runs against the local directory and this server alike.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::catalog::{data_disk, ok_json, random_raw};
use common::s3::Server;
use common::{have_qemu_img, qemu_img, s};
use ims::register::{ImageStore, S3Options, S3Store};

const MIB: u64 = 1 << 20;
const BUCKET: &str = "images";
/// Small parts, so that the test images go out in several.
const PART: &str = "5242880";

/// `ims ARGS` as project `owner` in region r1, with the catalog in `home` and the image data in
/// the server's bucket under `ims/`.
fn ims_s3(server: &Server, home: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
    command(server, home, args, extra)
        .output()
        .expect("run ims")
}

fn command(server: &Server, home: &Path, args: &[&str], extra: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ims"));
    c.args(args)
        .env("IMS_HOME", home)
        .env("IMS_PROJECT", "owner")
        .env("IMS_REGION", "r1")
        .env("IMS_S3_PART_SIZE", PART)
        .env_remove("IMS_TEST_CRASH_AT")
        .env_remove("IMS_CATALOG");
    // Only the test server's settings (the AWS_* variables below) reach the client.
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    for (k, v) in server.env() {
        c.env(k, v);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

fn store_url() -> String {
    format!("s3://{BUCKET}/ims")
}

/// The store as a library user opens it, on the test's server.
fn store(server: &Server) -> S3Store {
    S3Store::with_builder(builder(server), BUCKET, "ims", S3Options::default()).unwrap()
}

fn builder(server: &Server) -> ims::register::AmazonS3Builder {
    ims::register::AmazonS3Builder::new()
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
}

#[test]
fn register_export_and_copy_through_s3() {
    let t = "register_export_and_copy_through_s3";
    if !have_qemu_img(t) {
        return;
    }
    let Some(server) = Server::start(t) else {
        return;
    };
    server.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let raw = d.join("disk.raw");
    random_raw(&raw, 24 * MIB, 14, 17);
    let original = std::fs::read(&raw).unwrap();
    let url = store_url();
    for (fmt, extra) in [
        ("qcow2", vec![]),
        ("vmdk", vec!["-o", "subformat=streamOptimized"]),
    ] {
        let image = d.join(format!("disk.{fmt}"));
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        args.extend(extra);
        args.extend([s(&raw), s(&image)]);
        qemu_img(&args);
        // The store from --store for qcow2, from IMS_STORE for vmdk.
        let mut args = vec![
            "register",
            s(&image),
            "--name",
            fmt,
            "--type",
            "data",
            "--output",
            "json",
        ];
        let mut env = vec![];
        if fmt == "qcow2" {
            args.extend(["--store", &url]);
        } else {
            env.push(("IMS_STORE", url.as_str()));
        }
        let r = ok_json(&ims_s3(&server, &home, &args, &env));
        assert_eq!(r["status"], "active", "{r}");
        let id = r["id"].as_str().unwrap().to_string();
        let key = r["store_key"].as_str().unwrap().to_string();
        assert!(
            server.keys(BUCKET).contains(&format!("ims/{key}")),
            "{key} not in {:?}",
            server.keys(BUCKET)
        );

        // Exported back from the object, byte for byte the disk.
        let out = d.join(format!("{fmt}.out.raw"));
        let exported = ims_s3(
            &server,
            &home,
            &[
                "images",
                "export",
                &id,
                "-O",
                "raw",
                s(&out),
                "--store",
                &url,
            ],
            &[],
        );
        assert!(
            exported.status.success(),
            "{}",
            String::from_utf8_lossy(&exported.stderr)
        );
        assert!(
            std::fs::read(&out).unwrap() == original,
            "{fmt} export differs"
        );

        // Copied to another region inside the bucket, and that copy exports the same.
        let copy = ok_json(&ims_s3(
            &server,
            &home,
            &[
                "images",
                "copy",
                &id,
                "--to-region",
                "r2",
                "--output",
                "json",
                "--store",
                &url,
            ],
            &[],
        ));
        assert_eq!(copy["status"], "active", "{copy}");
        assert_eq!(copy["checksum"], r["checksum"]);
        let copy_key = copy["store_key"].as_str().unwrap();
        assert!(copy_key.starts_with("r2/"), "{copy_key}");
        assert!(server.keys(BUCKET).contains(&format!("ims/{copy_key}")));
    }
    // Nothing in the local store, no upload and no write marker left in the bucket.
    assert!(
        !home.join("store").join("r1").exists(),
        "data went to the local store"
    );
    assert!(
        server.uploads(BUCKET).is_empty(),
        "{:?}",
        server.uploads(BUCKET)
    );
    let keys = server.keys(BUCKET);
    assert!(keys.iter().all(|k| !k.contains(".ims-writes")), "{keys:?}");
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[test]
fn a_registration_killed_mid_upload_is_recovered_by_the_next_process() {
    let t = "a_registration_killed_mid_upload_is_recovered_by_the_next_process";
    let Some(server) = Server::start(t) else {
        return;
    };
    server.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let disk = d.join("slow.raw");
    random_raw(&disk, 160 * MIB, 160, 5);
    let url = store_url();
    let lease = [("IMS_S3_LEASE_SECS", "4"), ("IMS_STORE", url.as_str())];
    let mut child = command(
        &server,
        &home,
        &["register", s(&disk), "--name", "killed", "--type", "data"],
        &lease,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // Killed once its upload is under way.
    let start = Instant::now();
    let mut seen = false;
    while start.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none() {
        if !server.uploads(BUCKET).is_empty() {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen, "the registration ended before its upload was seen");
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(server.uploads(BUCKET).len(), 1, "the dead upload is left");

    // Within the lease, the next process takes the write for a live one and leaves it.
    let during = ok_json(&ims_s3(
        &server,
        &home,
        &["images", "list", "--output", "json"],
        &lease,
    ));
    assert_ne!(during["images"][0]["status"], "killed", "{during}");
    assert_eq!(server.uploads(BUCKET).len(), 1);

    // Past it, the next process kills the record and aborts the upload.
    std::thread::sleep(Duration::from_secs(5));
    let after = ok_json(&ims_s3(
        &server,
        &home,
        &["images", "list", "--output", "json"],
        &lease,
    ));
    let images = after["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{after}");
    assert_eq!(images[0]["status"], "killed", "{after}");
    assert!(
        server.uploads(BUCKET).is_empty(),
        "{:?}",
        server.uploads(BUCKET)
    );
    assert!(server.keys(BUCKET).is_empty(), "{:?}", server.keys(BUCKET));
}

#[test]
fn a_stored_image_is_inspected_through_ranged_reads() {
    let t = "a_stored_image_is_inspected_through_ranged_reads";
    if !common::have(t, &["mkfs.ext4"]) || !have_qemu_img(t) {
        return;
    }
    let Some(server) = Server::start(t) else {
        return;
    };
    server.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let disk = data_disk(d, "data");
    let qcow2 = d.join("data.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&disk), s(&qcow2)]);
    let url = store_url();
    let r = ok_json(&ims_s3(
        &server,
        &home,
        &[
            "register",
            s(&qcow2),
            "--name",
            "data",
            "--type",
            "data",
            "--output",
            "json",
            "--store",
            &url,
        ],
        &[],
    ));
    assert_eq!(r["status"], "active", "{r}");
    let key = r["store_key"].as_str().unwrap();
    let format: ims::Format = r["store_format"].as_str().unwrap().parse().unwrap();

    // The stored object, opened in this process and read by its format's reader in ranges.
    let stored = store(&server).open(key).unwrap();
    let options = ims::OpenOptions {
        format: Some(format),
        ..Default::default()
    };
    let image = ims::open_storage(stored, Path::new(key), &options).unwrap();
    let from_store = ims::inspect::inspect_image(&image).unwrap();
    let local = ims::open(&disk, &ims::OpenOptions::default()).unwrap();
    let mut from_file = ims::inspect::inspect_image(&local).unwrap();
    // The service stores a data disk grown to whole GiB; the rest is the same guest.
    assert_eq!(from_store.virtual_size, 1 << 30);
    from_file.virtual_size = from_store.virtual_size;
    assert_eq!(from_store, from_file);
    assert!(
        serde_json::to_string(&from_store).unwrap().contains("ext4"),
        "{from_store:?}"
    );
}

#[test]
fn register_straight_from_an_uploaded_object() {
    let t = "register_straight_from_an_uploaded_object";
    if !have_qemu_img(t) {
        return;
    }
    let Some(server) = Server::start(t) else {
        return;
    };
    server.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    let raw = d.join("disk.raw");
    random_raw(&raw, 20 * MIB, 9, 23);
    let qcow2 = d.join("disk.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)]);
    // The user's upload, put behind the store's back.
    let (status, body) = server.request(
        "PUT",
        &format!("/{BUCKET}/uploads/disk.qcow2"),
        &std::fs::read(&qcow2).unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    let url = store_url();
    let source = format!("s3://{BUCKET}/uploads/disk.qcow2");
    let r = ok_json(&ims_s3(
        &server,
        &home,
        &[
            "register", &source, "--name", "up", "--type", "data", "--output", "json", "--store",
            &url,
        ],
        &[],
    ));
    assert_eq!(r["status"], "active", "{r}");
    let out = d.join("out.raw");
    let id = r["id"].as_str().unwrap();
    let exported = ims_s3(
        &server,
        &home,
        &[
            "images",
            "export",
            id,
            "-O",
            "raw",
            s(&out),
            "--store",
            &url,
        ],
        &[],
    );
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap());

    // A missing object is refused, saying which.
    let missing = ims_s3(
        &server,
        &home,
        &[
            "register",
            &format!("s3://{BUCKET}/uploads/none.qcow2"),
            "--name",
            "none",
            "--type",
            "data",
            "--store",
            &url,
        ],
        &[],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("none.qcow2"));
}
