//! The object-store image store against a real S3 server (Garage, or moto's, a separate process
//! on free loopback ports: tests/common/s3.rs): registrations stream into it and export back byte-equal,
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
    server.builder()
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
        exports_equal(&server, &home, &url, &id, &out, &original, fmt);

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

/// A presigned GET link to `key` of the test's bucket, valid for an hour.
fn presigned(server: &Server, key: &str) -> String {
    presigned_by(builder(server), key)
}

/// A presigned GET link of `key` in the test's bucket, for the endpoint `builder` names.
fn presigned_by(builder: ims::register::AmazonS3Builder, key: &str) -> String {
    use object_store::signer::{Method, Signer};
    let s3 = builder.with_bucket_name(BUCKET).build().unwrap();
    let path = object_store::path::Path::from(key);
    let mut sign = std::pin::pin!(s3.signed_url(Method::GET, &path, Duration::from_secs(3600)));
    // Signing with fixed credentials does not wait on anything: one poll ends it.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match sign.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(url) => url.unwrap().to_string(),
        std::task::Poll::Pending => panic!("signing waited"),
    }
}

/// Exports image `id` of the store `url` to `out` as raw: it must be `original`, byte for byte
/// (`what` names the image in the failure).
fn exports_equal(
    server: &Server,
    home: &Path,
    url: &str,
    id: &str,
    out: &Path,
    original: &[u8],
    what: &str,
) {
    let exported = ims_s3(
        server,
        home,
        &["images", "export", id, "-O", "raw", s(out), "--store", url],
        &[],
    );
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert!(
        std::fs::read(out).unwrap() == original,
        "{what}: export differs"
    );
}

/// Puts `data` under `key` of the test's bucket, as a user's upload (behind the store's back).
fn upload(server: &Server, key: &str, data: &[u8]) {
    let (status, body) = server.request("PUT", &format!("/{BUCKET}/{key}"), data);
    assert_eq!(status, 200, "PUT {key} ({} bytes): {body}", data.len());
}

/// Puts `data` under `key` (`DIR/NAME`) of the test's bucket through the store's writer at
/// the bucket's root (a multipart upload, as large user uploads are).
fn put_signed(server: &Server, key: &str, data: &[u8]) {
    let root = S3Store::with_builder(builder(server), BUCKET, "", S3Options::default()).unwrap();
    let mut w = root.begin(key).unwrap();
    w.append(data).unwrap();
    w.commit().unwrap();
}

/// The IMS form `BUCKET:KEY` (raw, read as one GET stream) and presigned links (a
/// streamOptimized VMDK, read as one GET stream, and a QCOW2, read by ranges): each registers
/// and exports back byte-equal. A plain http:// link is refused unless allowed.
#[test]
fn register_from_bucket_key_and_presigned_links() {
    let t = "register_from_bucket_key_and_presigned_links";
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
    random_raw(&raw, 24 * MIB, 11, 29);
    let original = std::fs::read(&raw).unwrap();
    let vmdk = d.join("disk.vmdk");
    let qcow2 = d.join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s(&raw),
        s(&vmdk),
    ]);
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)]);
    for (key, file) in [
        ("uploads/disk.raw", &raw),
        ("uploads/disk.vmdk", &vmdk),
        ("uploads/disk.qcow2", &qcow2),
    ] {
        upload(&server, key, &std::fs::read(file).unwrap());
    }
    let url = store_url();
    let vmdk_link = presigned(&server, "uploads/disk.vmdk");
    let qcow2_link = presigned(&server, "uploads/disk.qcow2");
    assert!(vmdk_link.starts_with("http://") && vmdk_link.contains("X-Amz-Signature="));

    // Plain http is refused, saying how to allow it, and the link's signature stays out.
    let refused = ims_s3(
        &server,
        &home,
        &[
            "register", &vmdk_link, "--name", "no", "--type", "data", "--store", &url,
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("--allow-http"), "{err}");
    assert!(!err.contains("X-Amz-Signature"), "{err}");

    let bucket_key = format!("{BUCKET}:uploads/disk.raw");
    for (name, source, format, extra, env) in [
        ("raw", bucket_key.as_str(), "raw", None, None),
        (
            "vmdk",
            vmdk_link.as_str(),
            "vmdk",
            Some("--allow-http"),
            None,
        ),
        (
            "qcow2",
            qcow2_link.as_str(),
            "qcow2",
            None,
            Some(("IMS_ALLOW_HTTP", "1")),
        ),
    ] {
        let mut args = vec![
            "register", source, "--name", name, "--type", "data", "--output", "json", "--store",
            &url,
        ];
        args.extend(extra);
        let r = ok_json(&ims_s3(&server, &home, &args, &Vec::from_iter(env)));
        assert_eq!(r["status"], "active", "{r}");
        assert_eq!(r["source_format"], format, "{r}");
        let out = d.join(format!("{name}.out.raw"));
        let id = r["id"].as_str().unwrap();
        exports_equal(&server, &home, &url, id, &out, &original, name);
    }
}

/// An upload replaced after it was opened (its ETag changed) fails the registration, whether
/// it is read as one GET stream (raw) or by ranges (QCOW2): nothing of two versions is stored.
#[test]
fn a_source_that_changes_while_read_fails_the_registration() {
    let t = "a_source_that_changes_while_read_fails_the_registration";
    if !have_qemu_img(t) {
        return;
    }
    let Some(server) = Server::start(t) else {
        return;
    };
    server.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    // More data than inspection's reads fetch ahead, so the conversion's GETs meet the change.
    random_raw(&raw, 80 * MIB, 64, 43);
    let qcow2 = d.join("disk.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)]);
    let other = d.join("other.raw");
    random_raw(&other, 80 * MIB, 64, 44);
    let ims = ims::register::Ims::open(&d.join("home")).unwrap();
    let scope = ims::register::Scope::new("owner", "r1");
    for (key, file, streamed) in [
        ("uploads/disk.raw", &raw, true),
        ("uploads/disk.qcow2", &qcow2, false),
    ] {
        put_signed(&server, key, &std::fs::read(file).unwrap());
        let options = ims::register::SourceOptions::default().s3(builder(&server));
        let source = format!("s3://{BUCKET}/{key}");
        let input = ims::register::open_source(&source, &options).unwrap();
        assert_eq!(
            matches!(input, ims::Input::Stream { .. }),
            streamed,
            "{key}"
        );
        // The user uploads again, over the object being registered.
        let replaced = if streamed {
            std::fs::read(&other).unwrap()
        } else {
            let q = d.join("other.qcow2");
            qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&other), s(&q)]);
            std::fs::read(&q).unwrap()
        };
        put_signed(&server, key, &replaced);
        let request = ims::register::RegisterRequest::new(key, ims::register::ImageType::Data);
        let e = ims
            .register(
                &scope,
                input,
                &request,
                &mut |_| {},
                &ims::CancelToken::new(),
            )
            .expect_err("a registration of a changed source");
        assert!(e.to_string().contains("changed"), "{key}: {e}");
        // The same upload opened again registers.
        let input = ims::register::open_source(&source, &options).unwrap();
        let r = ims
            .register(
                &scope,
                input,
                &request,
                &mut |_| {},
                &ims::CancelToken::new(),
            )
            .unwrap();
        assert_eq!(r.record.status, ims::register::Status::Active);
    }
}

/// A TLS front for the S3 server: a Python process that takes TLS connections on a free port
/// with `cert`/`key` and passes the bytes to and from the server unchanged (the signed `Host`
/// is the front's, as the link was signed for it). Killed when dropped.
struct TlsFront {
    child: std::process::Child,
    port: u16,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TLS_FRONT: &str = r#"
import socket, ssl, sys, threading
cert, key, upstream = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
def pipe(src, dst):
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass
def serve(conn):
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
    except (OSError, ssl.SSLError):
        conn.close()
        return
    up = socket.create_connection(("127.0.0.1", upstream))
    threading.Thread(target=pipe, args=(up, tls), daemon=True).start()
    pipe(tls, up)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

impl TlsFront {
    fn start(upstream: u16, cert: &Path, key: &Path) -> TlsFront {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args(["-c", TLS_FRONT])
            .arg(cert)
            .arg(key)
            .arg(upstream.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the TLS front");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the TLS front's port");
        TlsFront { child, port }
    }
}

/// Presigned `https://` links, through a TLS front of the S3 server whose certificate the
/// client trusts by `SSL_CERT_FILE`: a streamOptimized VMDK (one GET stream) and a QCOW2 (ranged
/// GETs) register and export back byte-equal; a certificate the client does not trust is
/// refused.
#[test]
fn register_from_https_links() {
    let t = "register_from_https_links";
    if !have_qemu_img(t) || !common::have(t, &["openssl", "python3"]) {
        return;
    }
    let Some(server) = Server::start(t) else {
        return;
    };
    server.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = common::self_signed_cert(d);
    let front = TlsFront::start(server.port, &cert, &key);
    let home = d.join("home");
    let raw = d.join("disk.raw");
    random_raw(&raw, 24 * MIB, 5, 17);
    let original = std::fs::read(&raw).unwrap();
    let (vmdk, qcow2) = (d.join("disk.vmdk"), d.join("disk.qcow2"));
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ]
        .into_iter()
        .chain([s(&raw), s(&vmdk)])
        .collect::<Vec<_>>(),
    );
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)]);
    upload(&server, "uploads/disk.vmdk", &std::fs::read(&vmdk).unwrap());
    upload(
        &server,
        "uploads/disk.qcow2",
        &std::fs::read(&qcow2).unwrap(),
    );
    // Links signed for the front's address.
    let https = |key: &str| {
        let front_end = server
            .builder()
            .with_endpoint(format!("https://localhost:{}", front.port))
            .with_allow_http(false);
        presigned_by(front_end, key)
    };
    let url = store_url();
    let cert_file = s(&cert).to_string();
    for (name, source, format) in [
        ("vmdk", https("uploads/disk.vmdk"), "vmdk"),
        ("qcow2", https("uploads/disk.qcow2"), "qcow2"),
    ] {
        assert!(source.starts_with("https://localhost:"), "{source}");
        // Not trusted: the certificate is refused, and nothing is registered.
        let refused = ims_s3(
            &server,
            &home,
            &[
                "register", &source, "--name", name, "--type", "data", "--store", &url,
            ],
            &[],
        );
        let err = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{err}");
        assert!(err.contains("certificate"), "{err}");
        assert!(!err.contains("X-Amz-Signature"), "{err}");
        let r = ok_json(&ims_s3(
            &server,
            &home,
            &[
                "register", &source, "--name", name, "--type", "data", "--output", "json",
                "--store", &url,
            ],
            &[("SSL_CERT_FILE", &cert_file)],
        ));
        assert_eq!(r["status"], "active", "{r}");
        assert_eq!(r["source_format"], format, "{r}");
        let out = d.join(format!("{name}.out.raw"));
        exports_equal(
            &server,
            &home,
            &url,
            r["id"].as_str().unwrap(),
            &out,
            &original,
            name,
        );
    }
}
