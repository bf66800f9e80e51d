//! `ims serve`: the server skeleton (identity, health, the OpenAPI document, request ids) and
//! the OpenStack Image API v2, driven over plain HTTP and by the real OpenStack clients
//! (`glance`, `openstack`, openstacksdk), each against its own server on a free loopback port.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::server::{ADMIN, ALICE, BOB, CAROL, Reply, Server, client, have_clients};
use common::{ims, s};
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha512(data: &[u8]) -> String {
    hex(&Sha512::digest(data))
}

fn md5(data: &[u8]) -> String {
    use md5::Digest as _;
    hex(&md5::Md5::digest(data))
}

/// A small QCOW2 image (4 MiB disk, a MiB of pattern in it), made by `ims convert` from raw.
fn small_qcow2(dir: &Path, name: &str, seed: u8) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    let mut data = vec![0u8; 4 << 20];
    for (i, b) in data[..1 << 20].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    std::fs::write(&raw, &data).unwrap();
    let out = dir.join(format!("{name}.qcow2"));
    let r = ims(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out
}

/// A QCOW2 image whose header names a backing file (`/etc/passwd`): the header's
/// backing_file_offset and backing_file_size patched to a name written in its first cluster.
fn qcow2_with_backing_file(dir: &Path) -> PathBuf {
    let good = small_qcow2(dir, "base", 1);
    let mut data = std::fs::read(&good).unwrap();
    let name = b"/etc/passwd";
    let at = 0x800usize;
    data[at..at + name.len()].copy_from_slice(name);
    data[8..16].copy_from_slice(&(at as u64).to_be_bytes());
    data[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
    let out = dir.join("backed.qcow2");
    std::fs::write(&out, data).unwrap();
    out
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn create(server: &Server, token: &str, body: Value) -> Reply {
    server.json("POST", "/v2/images", token, None, &body)
}

fn created_id(r: &Reply) -> String {
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

fn upload(server: &Server, token: &str, id: &str, data: &[u8]) -> Reply {
    server.request(
        "PUT",
        &format!("/v2/images/{id}/file"),
        Some(token),
        &[("content-type", "application/octet-stream")],
        Some(data),
    )
}

fn show(server: &Server, token: &str, id: &str) -> Reply {
    server.get(&format!("/v2/images/{id}"), Some(token))
}

#[test]
fn health_versions_and_openapi_need_no_token_and_the_api_needs_one() {
    let server = Server::start();
    let health = server.get("/healthz", None);
    assert_eq!(health.status, 200);
    assert!(
        health
            .header("x-openstack-request-id")
            .is_some_and(|id| id.starts_with("req-")),
        "every answer carries a request id: {:?}",
        health.headers
    );
    let versions = server.get("/versions", None);
    assert_eq!(versions.status, 200);
    assert_eq!(versions.json()["versions"][0]["id"], "v2.17");
    assert_eq!(server.get("/", None).status, 300);
    let doc = server.get("/openapi.json", None).json();
    for path in [
        "/healthz",
        "/versions",
        "/v2/images",
        "/v2/images/{image_id}",
        "/v2/images/{image_id}/file",
        "/v2/images/{image_id}/members",
        "/v2/images/{image_id}/tags/{tag}",
        "/v2/images/{image_id}/import",
        "/v2/schemas/image",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} in {doc}");
    }

    for token in [
        None,
        Some(""),
        Some("nope"),
        Some(&ADMIN[..ADMIN.len() - 1]),
    ] {
        let r = server.get("/v2/images", token);
        assert_eq!(r.status, 401, "token {token:?}");
        assert!(r.json()["error"]["message"].is_string());
    }
    assert_eq!(server.get("/v2/images", Some(ALICE)).status, 200);
    let missing = server.get("/v2/nothing", Some(ALICE));
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]["message"].is_string());
    let log = server.log();
    assert!(log.contains("request_id=req-"), "structured log: {log}");
}

#[test]
fn a_project_sees_its_own_public_and_shared_images_and_nothing_else_exists() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::read(small_qcow2(dir.path(), "a", 7)).unwrap();
    let id = created_id(&create(
        &server,
        ALICE,
        json!({"name": "alice-img", "disk_format": "qcow2", "container_format": "bare"}),
    ));
    assert_eq!(upload(&server, ALICE, &id, &data).status, 204);

    // Bob: 404 for every call on it, never 403.
    assert_eq!(show(&server, BOB, &id).status, 404);
    assert_eq!(
        server
            .get(&format!("/v2/images/{id}/file"), Some(BOB))
            .status,
        404
    );
    let patch = json!([{"op": "replace", "path": "/name", "value": "x"}]);
    let r = server.json(
        "PATCH",
        &format!("/v2/images/{id}"),
        BOB,
        Some("application/openstack-images-v2.1-json-patch"),
        &patch,
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        server
            .request("DELETE", &format!("/v2/images/{id}"), Some(BOB), &[], None)
            .status,
        404
    );
    let listed = server.get("/v2/images", Some(BOB)).json();
    assert!(listed["images"].as_array().unwrap().is_empty(), "{listed}");

    // Shared with bob: pending (seen, not listed), then accepted (listed).
    let r = server.json(
        "POST",
        &format!("/v2/images/{id}/members"),
        ALICE,
        None,
        &json!({"member": "bob"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "pending");
    let again = server.json(
        "POST",
        &format!("/v2/images/{id}/members"),
        ALICE,
        None,
        &json!({"member": "bob"}),
    );
    assert_eq!(again.status, 409);
    assert_eq!(show(&server, BOB, &id).status, 200);
    assert_eq!(show(&server, CAROL, &id).status, 404);
    let pending = server
        .get("/v2/images?member_status=pending", Some(BOB))
        .json();
    assert_eq!(pending["images"][0]["id"], id.as_str());
    // Alice cannot answer for bob; bob accepts.
    let answer = json!({"status": "accepted"});
    let path = format!("/v2/images/{id}/members/bob");
    assert_eq!(server.json("PUT", &path, ALICE, None, &answer).status, 403);
    assert_eq!(server.json("PUT", &path, BOB, None, &answer).status, 200);
    let listed = server.get("/v2/images", Some(BOB)).json();
    assert_eq!(listed["images"][0]["id"], id.as_str());
    // Back to pending (out of the list), and accepted again.
    let pending = json!({"status": "pending"});
    assert_eq!(
        server.json("PUT", &path, BOB, None, &pending).json()["status"],
        "pending"
    );
    let listed = server.get("/v2/images", Some(BOB)).json();
    assert!(listed["images"].as_array().unwrap().is_empty(), "{listed}");
    assert_eq!(server.json("PUT", &path, BOB, None, &answer).status, 200);
    // A member may read, not change.
    assert!(server.get(&format!("/v2/images/{id}/file"), Some(BOB)).body == data);
    assert_eq!(
        server
            .request("DELETE", &format!("/v2/images/{id}"), Some(BOB), &[], None)
            .status,
        403
    );

    // Only an admin makes public images; everyone sees them.
    let r = create(&server, ALICE, json!({"name": "p", "visibility": "public"}));
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let public = created_id(&create(
        &server,
        ADMIN,
        json!({"name": "gold", "visibility": "public", "disk_format": "qcow2"}),
    ));
    assert_eq!(upload(&server, ADMIN, &public, &data).status, 204);
    let seen = show(&server, CAROL, &public).json();
    assert_eq!(
        (seen["visibility"].as_str(), seen["__imagetype"].as_str()),
        (Some("public"), Some("gold"))
    );
}

#[test]
fn listing_pages_with_root_relative_links_filters_and_sorts() {
    let server = Server::start();
    for n in ["e", "c", "a", "d", "b"] {
        created_id(&create(
            &server,
            ALICE,
            json!({"name": n, "disk_format": "raw", "tags": [format!("t-{n}")], "hw_disk_bus": "virtio"}),
        ));
    }
    let mut names = Vec::new();
    let mut next = Some("/v2/images?limit=2&sort_key=name&sort_dir=asc".to_string());
    let mut pages = 0;
    while let Some(path) = next {
        let page = server.get(&path, Some(ALICE)).json();
        assert_eq!(page["schema"], "/v2/schemas/images");
        assert!(page["first"].as_str().unwrap().starts_with("/v2/images"));
        for i in page["images"].as_array().unwrap() {
            names.push(i["name"].as_str().unwrap().to_string());
        }
        next = page["next"].as_str().map(str::to_string);
        if let Some(n) = &next {
            assert!(n.starts_with("/v2/images?") && n.contains("marker="), "{n}");
        }
        pages += 1;
    }
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    assert_eq!(pages, 3);

    let one = server.get("/v2/images?tag=t-c", Some(ALICE)).json();
    assert_eq!(one["images"].as_array().unwrap().len(), 1);
    assert_eq!(one["images"][0]["name"], "c");
    assert_eq!(one["images"][0]["tags"], json!(["t-c"]));
    let by_property = server
        .get("/v2/images?hw_disk_bus=virtio", Some(ALICE))
        .json();
    assert_eq!(by_property["images"].as_array().unwrap().len(), 5);
    let queued = server
        .get(
            "/v2/images?status=queued&sort_key=name&sort_dir=desc",
            Some(ALICE),
        )
        .json();
    assert_eq!(queued["images"][0]["name"], "e");
    assert_eq!(
        server
            .get(
                "/v2/images?marker=00000000-0000-0000-0000-000000000000",
                Some(ALICE)
            )
            .status,
        400
    );
    assert_eq!(
        server.get("/v2/images?sort_key=bogus", Some(ALICE)).status,
        400
    );
    assert_eq!(server.get("/v2/images?limit=x", Some(ALICE)).status, 400);
}

#[test]
fn an_upload_is_kept_as_uploaded_and_a_hostile_or_mislabelled_one_is_killed() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::read(small_qcow2(dir.path(), "a", 3)).unwrap();

    let id = created_id(&create(
        &server,
        ALICE,
        json!({"name": "ok", "disk_format": "qcow2", "container_format": "bare"}),
    ));
    let queued = show(&server, ALICE, &id).json();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["checksum"], Value::Null);
    assert_eq!(queued["visibility"], "shared", "Glance's default");
    assert_eq!(queued["size"], Value::Null);
    assert_eq!(upload(&server, ALICE, &id, &data).status, 204);
    let r = show(&server, ALICE, &id).json();
    assert_eq!(r["status"], "active");
    assert_eq!(r["disk_format"], "qcow2");
    assert_eq!(r["size"], data.len() as u64);
    assert_eq!(r["virtual_size"], 4u64 << 20);
    assert_eq!(r["checksum"], md5(&data).as_str());
    assert_eq!(r["os_hash_algo"], "sha512");
    assert_eq!(r["os_hash_value"], sha512(&data).as_str());
    let got = server.get(&format!("/v2/images/{id}/file"), Some(ALICE));
    assert_eq!(got.status, 200);
    assert!(got.body == data, "the stored bytes are the uploaded ones");
    assert_eq!(got.header("content-md5"), Some(md5(&data).as_str()));
    let part = server.request(
        "GET",
        &format!("/v2/images/{id}/file"),
        Some(ALICE),
        &[("range", "bytes=0-3")],
        None,
    );
    assert_eq!((part.status, &part.body[..]), (206, &data[..4]));
    // Data goes once.
    assert_eq!(upload(&server, ALICE, &id, b"again").status, 409);

    // Mislabelled: QCOW2 bytes declared raw.
    let raw = created_id(&create(
        &server,
        ALICE,
        json!({"name": "lie", "disk_format": "raw"}),
    ));
    let r = upload(&server, ALICE, &raw, &data);
    assert_eq!(r.status, 415, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["ims_code"], "format_unsupported");
    assert_eq!(show(&server, ALICE, &raw).json()["status"], "killed");
    assert_eq!(
        server
            .get(&format!("/v2/images/{raw}/file"), Some(ALICE))
            .status,
        204
    );

    // Hostile: a QCOW2 naming a backing file.
    let backed = std::fs::read(qcow2_with_backing_file(dir.path())).unwrap();
    let bad = created_id(&create(
        &server,
        ALICE,
        json!({"name": "bad", "disk_format": "qcow2"}),
    ));
    let r = upload(&server, ALICE, &bad, &backed);
    assert_eq!(r.status, 415, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["ims_code"], "reference_refused");
    let killed = show(&server, ALICE, &bad).json();
    assert_eq!(killed["status"], "killed");
    assert!(
        killed["status_reason"]
            .as_str()
            .unwrap()
            .contains("reference")
    );

    // Not octet-stream: 415 before anything is read; no disk_format: 400.
    let plain = created_id(&create(&server, ALICE, json!({"name": "plain"})));
    let r = server.request(
        "PUT",
        &format!("/v2/images/{plain}/file"),
        Some(ALICE),
        &[("content-type", "text/plain")],
        Some(b"hello"),
    );
    assert_eq!(r.status, 415);
    assert_eq!(upload(&server, ALICE, &plain, b"hello").status, 400);
    assert_eq!(show(&server, ALICE, &plain).json()["status"], "queued");
}

#[test]
fn bodies_and_uploads_over_the_caps_are_413() {
    let limits = json!({"max_file_size": 1 << 20, "max_members": 1});
    let server = Server::start_with(Some(&limits), &["--max-json-body", "4096"]);
    let big = json!({"name": "x", "pad": "y".repeat(8192)});
    let r = create(&server, ALICE, big);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"]["message"].is_string());

    // A declared size over the cap: refused before anything is stored; the image waits.
    let id = created_id(&create(
        &server,
        ALICE,
        json!({"name": "big", "disk_format": "raw"}),
    ));
    let r = server.request(
        "PUT",
        &format!("/v2/images/{id}/file"),
        Some(ALICE),
        &[
            ("content-type", "application/octet-stream"),
            ("x-openstack-image-size", "2097152"),
        ],
        Some(b"x"),
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(show(&server, ALICE, &id).json()["status"], "queued");
    // A chunked body that goes over it: stopped at the cap (the server may close the
    // connection before the client has sent all), the image killed, nothing stored.
    if let Some(r) = server.put_chunked(&format!("/v2/images/{id}/file"), ALICE, vec![0u8; 3 << 20])
    {
        assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(show(&server, ALICE, &id).json()["status"], "killed");
    let stored: Vec<_> = walk(&server.home.join("store"));
    assert!(stored.is_empty(), "nothing stored: {stored:?}");

    // At most max_members members: 413 as Glance's member quota.
    let id = created_id(&create(
        &server,
        ALICE,
        json!({"name": "s", "disk_format": "raw"}),
    ));
    assert_eq!(upload(&server, ALICE, &id, &[7u8; 4096]).status, 204);
    let members = format!("/v2/images/{id}/members");
    assert_eq!(
        server
            .json("POST", &members, ALICE, None, &json!({"member": "bob"}))
            .status,
        200
    );
    let r = server.json("POST", &members, ALICE, None, &json!({"member": "carol"}));
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn json_patch_updates_properties_and_refuses_read_only_fields() {
    let server = Server::start();
    let id = created_id(&create(
        &server,
        ALICE,
        json!({"name": "n", "disk_format": "raw", "k": "v"}),
    ));
    let path = format!("/v2/images/{id}");
    let patch = |ops: Value, ctype: &str| server.json("PATCH", &path, ALICE, Some(ctype), &ops);
    let v21 = "application/openstack-images-v2.1-json-patch";
    let r = patch(
        json!([
            {"op": "replace", "path": "/name", "value": "renamed"},
            {"op": "add", "path": "/k", "value": "w"},
            {"op": "add", "path": "/extra", "value": "1"},
            {"op": "replace", "path": "/tags", "value": ["a", "b=c"]},
            {"op": "replace", "path": "/min_ram", "value": 512}
        ]),
        v21,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        (&v["name"], &v["k"], &v["extra"], &v["min_ram"]),
        (&json!("renamed"), &json!("w"), &json!("1"), &json!(512))
    );
    assert_eq!(v["tags"], json!(["a", "b=c"]));
    assert_eq!(
        patch(json!([{"op": "remove", "path": "/nope"}]), v21).status,
        409
    );
    assert_eq!(
        patch(
            json!([{"op": "replace", "path": "/status", "value": "active"}]),
            v21
        )
        .status,
        403
    );
    let r = patch(json!([{"op": "remove", "path": "/k"}]), "application/json");
    assert_eq!(r.status, 415);
    assert!(r.header("accept-patch").is_some());
    assert_eq!(show(&server, ALICE, &id).json()["k"], "w");

    // Glance's protected: the project's own flag; undeletable until unset.
    let r = patch(
        json!([{"op": "replace", "path": "/protected", "value": true}]),
        v21,
    );
    assert_eq!(r.json()["protected"], true);
    let delete = || {
        server
            .request("DELETE", &path, Some(ALICE), &[], None)
            .status
    };
    assert_eq!(delete(), 403);
    assert_eq!(
        server.get("/v2/images?protected=true", Some(ALICE)).json()["images"][0]["id"],
        id.as_str()
    );
    patch(
        json!([{"op": "replace", "path": "/protected", "value": false}]),
        v21,
    );
    assert_eq!(delete(), 204);
    let born = create(&server, ALICE, json!({"name": "p", "protected": true}));
    assert_eq!(
        (born.status, &born.json()["protected"]),
        (201, &json!(true))
    );
}

#[test]
fn stage_and_import_convert_into_the_store_format() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::read(small_qcow2(dir.path(), "imp", 9)).unwrap();
    let id = created_id(&create(
        &server,
        ALICE,
        json!({"name": "imp", "disk_format": "qcow2"}),
    ));
    let info = server.get("/v2/info/import", Some(ALICE)).json();
    assert_eq!(
        info["import-methods"]["description"],
        "Import methods available."
    );
    let r = server.request(
        "POST",
        &format!("/v2/images/{id}/import"),
        Some(ALICE),
        &[("content-type", "application/json")],
        Some(br#"{"method": {"name": "glance-direct"}}"#),
    );
    assert_eq!(r.status, 409, "nothing staged yet");
    let r = server.request(
        "PUT",
        &format!("/v2/images/{id}/stage"),
        Some(ALICE),
        &[("content-type", "application/octet-stream")],
        Some(&data),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(show(&server, ALICE, &id).json()["status"], "uploading");
    let r = import(&server, &id, json!({"method": {"name": "glance-direct"}}));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let v = show(&server, ALICE, &id).json();
        if v["status"] == "active" || v["status"] == "killed" {
            break v;
        }
        assert!(Instant::now() < deadline, "import never ended: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["status"], "active", "{done}");
    assert_eq!(done["disk_format"], "zvhd2");
    assert_eq!(done["virtual_size"], 4u64 << 20);
    let left = walk(&server.home.join("store"));
    assert!(
        left.len() == 1 && left[0].to_string_lossy().ends_with(".zvhd2"),
        "the staged data is dropped once imported: {left:?}"
    );
    let stored = server
        .get(&format!("/v2/images/{id}/file"), Some(ALICE))
        .body;
    assert_eq!(done["os_hash_value"], sha512(&stored).as_str());
    assert_eq!(done["size"], stored.len() as u64);
    // The stored image is the same disk.
    let back = dir.path().join("back.zvhd2");
    std::fs::write(&back, &stored).unwrap();
    let src = dir.path().join("imp.raw");
    let same = ims(&[
        "compare",
        "-q",
        "-f",
        "raw",
        "-F",
        "zvhd2",
        s(&src),
        s(&back),
    ]);
    assert!(
        same.status.success(),
        "the imported disk differs from the source"
    );
}

/// A reader that gives `first` bytes, then waits (giving nothing) until `stop` is set, then
/// ends: an upload caught in flight.
struct Stalled {
    first: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::io::Read for Stalled {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.first > 0 {
            let n = buf.len().min(self.first);
            buf[..n].fill(0x5a);
            self.first -= n;
            return Ok(n);
        }
        while !self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(0)
    }
}

#[test]
fn a_server_killed_during_an_upload_leaves_a_killed_image_and_no_data_after_restart() {
    let server = Server::start();
    let id = created_id(&create(
        &server,
        ALICE,
        json!({"name": "mid", "disk_format": "raw"}),
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = Stalled {
        first: 3 << 20,
        stop: stop.clone(),
    };
    let url = server.url.clone();
    let path = format!("/v2/images/{id}/file");
    let client = std::thread::spawn(move || {
        common::server::put_reader_at(&url, &path, ALICE, reader).map(|r| r.status)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while show(&server, ALICE, &id).json()["status"] != "saving" {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let server = server.crash_and_restart(&[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = client.join();
    let v = show(&server, ALICE, &id).json();
    assert_eq!(v["status"], "killed", "{v}");
    assert!(
        v["status_reason"].as_str().unwrap().contains("interrupted"),
        "{v}"
    );
    let stored = walk(&server.home.join("store"));
    assert!(stored.is_empty(), "no orphaned data: {stored:?}");
    // A record created without data is not interrupted: it still waits, with its staged data
    // (kept in the store); a stage cut short leaves nothing, and its image waits still.
    let waiting = created_id(&create(
        &server,
        ALICE,
        json!({"name": "w", "disk_format": "raw"}),
    ));
    let r = server.request(
        "PUT",
        &format!("/v2/images/{waiting}/stage"),
        Some(ALICE),
        &[("content-type", "application/octet-stream")],
        Some(&[1u8; 4096]),
    );
    assert_eq!(r.status, 204);
    let staged = walk(&server.home.join("store"));
    assert_eq!(staged.len(), 1, "{staged:?}");
    let cut = created_id(&create(
        &server,
        ALICE,
        json!({"name": "cut", "disk_format": "raw"}),
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = Stalled {
        first: 3 << 20,
        stop: stop.clone(),
    };
    let (url, path) = (server.url.clone(), format!("/v2/images/{cut}/stage"));
    let client = std::thread::spawn(move || {
        common::server::put_reader_at(&url, &path, ALICE, reader).map(|r| r.status)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while walk(&server.home.join("store")).len() < 2 {
        assert!(Instant::now() < deadline, "the stage never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let server = server.crash_and_restart(&[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = client.join();
    assert_eq!(show(&server, ALICE, &waiting).json()["status"], "uploading");
    assert_eq!(show(&server, ALICE, &cut).json()["status"], "queued");
    assert_eq!(
        walk(&server.home.join("store")),
        staged,
        "the cut stage left nothing"
    );
    // The restarted server imports what the first one staged, and drops the staged data.
    let r = import(
        &server,
        &waiting,
        json!({"method": {"name": "glance-direct"}}),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let v = wait_until_settled(&server, &waiting);
    assert_eq!(v["status"], "active", "{v}");
    let left = walk(&server.home.join("store"));
    assert!(
        left.len() == 1 && left[0].to_string_lossy().ends_with(".zvhd2"),
        "only the imported image is stored: {left:?}"
    );
}

/// `POST /v2/images/ID/import` of Alice's image `id` with `body` (its method).
fn import(server: &Server, id: &str, body: Value) -> Reply {
    server.json(
        "POST",
        &format!("/v2/images/{id}/import"),
        ALICE,
        None,
        &body,
    )
}

/// The image `id` once it is `active` or `killed` (within 60 s).
fn wait_until_settled(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = show(server, ALICE, id).json();
        if v["status"] == "active" || v["status"] == "killed" {
            return v;
        }
        assert!(Instant::now() < deadline, "the import never ended: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_server_killed_during_an_import_fails_it_with_a_reason_after_restart() {
    // A source that sends the start of a 64 MiB file, then nothing until the test ends.
    let source = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = source.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        for conn in source.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut request);
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n",
            );
            let _ = std::io::Write::write_all(&mut conn, &vec![0u8; 2 << 20]);
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let allowed = format!("http://127.0.0.1:{port}/");
    let server = Server::start_with(None, &["--allow-download", &allowed]);
    let id = created_id(&create(
        &server,
        ALICE,
        json!({"name": "slow", "disk_format": "raw"}),
    ));
    let r = import(
        &server,
        &id,
        json!({"method": {"name": "web-download", "uri": format!("{allowed}disk.raw")}}),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let deadline = Instant::now() + Duration::from_secs(30);
    while walk(&server.home.join("store")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the download never began to stage"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let server = server.crash_and_restart(&["--allow-download", &allowed]);
    let v = wait_until_settled(&server, &id);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(v["status"], "killed", "{v}");
    assert!(
        v["status_reason"].as_str().unwrap().contains("interrupted"),
        "{v}"
    );
    let left = walk(&server.home.join("store"));
    assert!(left.is_empty(), "no orphaned data: {left:?}");
}

#[test]
fn web_download_imports_from_an_allowed_source_only() {
    if !common::have(
        "web_download_imports_from_an_allowed_source_only",
        &["python3"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    small_qcow2(dir.path(), "web", 21);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _source = Kill(
        std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let source = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the source server never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server = Server::start_with(
        None,
        &["--allow-download", &source, "--import-format", "qcow2"],
    );
    let info = server.get("/v2/info/import", Some(ALICE)).json();
    assert_eq!(
        info["import-methods"]["value"],
        json!(["glance-direct", "web-download"])
    );
    let id = created_id(&create(
        &server,
        ALICE,
        json!({"name": "web", "disk_format": "qcow2"}),
    ));
    let import_from = |uri: &str| {
        import(
            &server,
            &id,
            json!({"method": {"name": "web-download", "uri": uri}}),
        )
    };
    assert_eq!(import_from("http://127.0.0.2:1/web.qcow2").status, 400);
    let r = import_from(&format!("{source}web.qcow2"));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let v = show(&server, ALICE, &id).json();
        if v["status"] == "active" || v["status"] == "killed" {
            break v;
        }
        assert!(Instant::now() < deadline, "import never ended: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (done["status"].as_str(), done["disk_format"].as_str()),
        (Some("active"), Some("qcow2")),
        "{done}"
    );
    assert_eq!(
        import_from(&format!("{source}web.qcow2")).status,
        409,
        "imported once"
    );
    // A source that fails ends the image killed, with the reason.
    let id2 = created_id(&create(
        &server,
        ALICE,
        json!({"name": "gone", "disk_format": "qcow2"}),
    ));
    let r = import(
        &server,
        &id2,
        json!({"method": {"name": "web-download", "uri": format!("{source}missing.qcow2")}}),
    );
    assert_eq!(r.status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = show(&server, ALICE, &id2).json();
        if v["status"] == "killed" {
            assert!(v["status_reason"].as_str().unwrap().contains("404"), "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a failed download never ended: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tls_serves_https_with_the_given_certificate() {
    if !common::have(
        "tls_serves_https_with_the_given_certificate",
        &["openssl", "python3"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::self_signed_cert(dir.path());
    let server = Server::start_with(None, &["--tls-cert", s(&cert), "--tls-key", s(&key)]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let script = [
        "import ssl, sys, time, urllib.request".to_string(),
        format!("ctx = ssl.create_default_context(cafile={:?})", s(&cert)),
        "ctx.check_hostname = False".to_string(),
        "for _ in range(100):".to_string(),
        "    try:".to_string(),
        format!(
            "        r = urllib.request.urlopen({:?}, context=ctx); break",
            format!("{}/healthz", server.url)
        ),
        "    except OSError: time.sleep(0.1)".to_string(),
        "print(r.status, r.read().decode())".to_string(),
    ]
    .join("\n");
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("200"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `glance` command line, as users run it with a token and an endpoint.
#[test]
fn the_glance_client_creates_lists_updates_tags_downloads_and_shares() {
    if !have_clients("the_glance_client_creates_lists_updates_tags_downloads_and_shares") {
        return;
    }
    glance_client_flow(&Server::start());
}

/// The same `glance` commands against a server whose catalog is in PostgreSQL and whose images
/// are in an S3 bucket (the scale-out backends).
#[test]
fn the_glance_client_works_over_postgres_and_s3() {
    let t = "the_glance_client_works_over_postgres_and_s3";
    if !have_clients(t) {
        return;
    }
    let Some(db) = common::postgres::Database::new(t) else {
        return;
    };
    let Some(s3) = common::s3::Server::start(t) else {
        return;
    };
    s3.create_bucket("images");
    let url = db.url();
    let server = Server::start_env(
        None,
        &["--catalog", url.as_str(), "--store", "s3://images/ims"],
        &s3.env(),
    );
    glance_client_flow(&server);
    // What is left in the bucket: the two images not deleted, the imported one, nothing else.
    let keys = s3.keys("images");
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(s3.uploads("images").is_empty());
}

/// `glance` creates (with a file, and through stage and import), lists with paging, shows,
/// updates, tags, downloads with the hash checked, shares and deletes.
fn glance_client_flow(server: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let glance_with = |token: &str, args: &[&str], input: Option<&Path>| {
        let mut all = vec![
            "--os-image-url",
            server.url.as_str(),
            "--os-auth-token",
            token,
        ];
        all.extend_from_slice(args);
        let out = common::server::client_with_input("glance", &all, &home, input);
        assert!(
            out.status.success(),
            "glance {args:?}: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let glance = |token: &str, args: &[&str]| glance_with(token, args, None);
    let file = small_qcow2(dir.path(), "g", 5);
    let data = std::fs::read(&file).unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let out = glance(
            ALICE,
            &[
                "image-create",
                "--name",
                &format!("g{n}"),
                "--disk-format",
                "qcow2",
                "--container-format",
                "bare",
                "--file",
                s(&file),
            ],
        );
        let id = out
            .lines()
            .find(|l| l.starts_with("| id "))
            .and_then(|l| l.split('|').nth(2))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("no id in {out}"));
        assert!(out.contains("| active"), "{out}");
        ids.push(id);
    }
    let list = glance(ALICE, &["image-list", "--page-size", "1"]);
    for id in &ids {
        assert!(list.contains(id.as_str()), "{list}");
    }
    assert!(
        server.log().contains("marker="),
        "the client followed next links"
    );

    let id = &ids[0];
    let shown = glance(ALICE, &["image-show", id]);
    assert!(shown.contains(&sha512(&data)[..64]), "{shown}");
    glance(
        ALICE,
        &[
            "image-update",
            "--name",
            "renamed",
            "--property",
            "os_distro=test",
            id,
        ],
    );
    glance(ALICE, &["image-tag-update", id, "blue"]);
    glance(ALICE, &["image-tag-update", id, "env=prod"]);
    glance(ALICE, &["image-tag-delete", id, "blue"]);
    let v = show(server, ALICE, id).json();
    assert_eq!(
        (&v["name"], &v["os_distro"], &v["tags"]),
        (&json!("renamed"), &json!("test"), &json!(["env=prod"]))
    );
    // image-update sends a whole-list replace of the tags along; they stay.
    glance(ALICE, &["image-update", "--min-ram", "256", id]);
    assert_eq!(show(server, ALICE, id).json()["tags"], json!(["env=prod"]));

    let out = dir.path().join("download");
    glance(ALICE, &["image-download", "--file", s(&out), id]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "downloaded bytes differ"
    );

    glance(ALICE, &["member-create", id, "bob"]);
    glance(BOB, &["member-update", id, "bob", "accepted"]);
    let members = glance(ALICE, &["member-list", "--image-id", id]);
    assert!(members.contains("accepted"), "{members}");
    assert!(glance(BOB, &["image-list"]).contains(id.as_str()));
    glance(ALICE, &["image-delete", &ids[2]]);
    assert_eq!(show(server, ALICE, &ids[2]).status, 404);

    // Interoperable import: stage, then import (glance-direct), converted into the store
    // format; the data comes on standard input (`... < FILE`: with no terminal, the client
    // takes its standard input for the data and refuses --file beside it).
    let out = glance_with(
        ALICE,
        &[
            "image-create-via-import",
            "--name",
            "imported",
            "--disk-format",
            "qcow2",
            "--container-format",
            "bare",
            "--import-method",
            "glance-direct",
        ],
        Some(&file),
    );
    let id = out
        .lines()
        .find(|l| l.starts_with("| id "))
        .and_then(|l| l.split('|').nth(2))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no id in {out}"));
    let v = wait_until_settled(server, &id);
    assert_eq!(
        (v["status"].as_str(), v["disk_format"].as_str()),
        (Some("active"), Some("zvhd2")),
        "{v}"
    );
}

/// The `openstack` command line without Keystone: the admin_token plugin with the image
/// endpoint (spec 2.1).
#[test]
fn the_openstack_client_creates_lists_shows_sets_and_deletes() {
    if !have_clients("the_openstack_client_creates_lists_shows_sets_and_deletes") {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let endpoint = format!("{}/v2", server.url);
    let os = |args: &[&str]| {
        let mut all = vec![
            "--os-auth-type",
            "admin_token",
            "--os-endpoint",
            endpoint.as_str(),
            "--os-token",
            ALICE,
        ];
        all.extend_from_slice(args);
        let out = client("openstack", &all, &home);
        assert!(
            out.status.success(),
            "openstack {args:?}: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let file = small_qcow2(dir.path(), "o", 11);
    let data = std::fs::read(&file).unwrap();
    let created: Value = serde_json::from_str(&os(&[
        "image",
        "create",
        "--disk-format",
        "qcow2",
        "--file",
        s(&file),
        "-f",
        "json",
        "osc-image",
    ]))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(os(&["image", "list", "-f", "value", "-c", "ID"]).contains(&id));
    os(&[
        "image",
        "set",
        "--property",
        "hw_qemu_guest_agent=yes",
        "--tag",
        "t1",
        "--min-disk",
        "2",
        "osc-image",
    ]);
    let shown: Value =
        serde_json::from_str(&os(&["image", "show", "-f", "json", "osc-image"])).unwrap();
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["checksum"], md5(&data).as_str());
    assert_eq!(shown["min_disk"], 2);
    assert_eq!(shown["tags"], json!(["t1"]));
    let v = show(&server, ALICE, &id).json();
    assert_eq!(v["hw_qemu_guest_agent"], "yes");
    os(&["image", "delete", "osc-image"]);
    assert_eq!(show(&server, ALICE, &id).status, 404);
}

/// openstacksdk's image proxy, through tests/serve/sdk_images.py.
#[test]
fn openstacksdk_creates_gets_updates_downloads_and_deletes() {
    if !have_clients("openstacksdk_creates_gets_updates_downloads_and_deletes") {
        return;
    }
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let file = small_qcow2(dir.path(), "sdk", 13);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/sdk_images.py");
    let out = client(
        "python3",
        &[s(&script), &server.url, ALICE, s(&file)],
        &home,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{text}\nserver log:\n{}",
        server.log()
    );
    for step in ["created", "got", "updated", "downloaded", "deleted"] {
        assert!(text.contains(step), "{text}");
    }
}

/// Deactivate and reactivate (Image API v2.3): an admin only; a deactivated image stays listed
/// with its size and hashes, its data withheld from all but an admin; both calls may be
/// repeated; an image without data cannot be deactivated. The admin uses the `glance` client.
#[test]
fn an_admin_deactivates_and_reactivates_an_image() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::read(small_qcow2(dir.path(), "d", 3)).unwrap();
    let id = created_id(&create(
        &server,
        ADMIN,
        json!({"name": "base", "disk_format": "qcow2", "container_format": "bare",
               "visibility": "public"}),
    ));
    assert_eq!(upload(&server, ADMIN, &id, &data).status, 204);
    let action = |token: &str, what: &str| {
        server
            .request(
                "POST",
                &format!("/v2/images/{id}/actions/{what}"),
                Some(token),
                &[],
                None,
            )
            .status
    };
    let download = |token: &str| {
        server
            .get(&format!("/v2/images/{id}/file"), Some(token))
            .status
    };
    assert_eq!(action(ALICE, "deactivate"), 403, "a member may not");
    assert_eq!(action(ADMIN, "deactivate"), 204);
    assert_eq!(action(ADMIN, "deactivate"), 204, "again: no change");
    let v = show(&server, ALICE, &id).json();
    assert_eq!(v["status"], "deactivated");
    assert_eq!(v["size"], data.len() as u64);
    assert_eq!(v["os_hash_value"], sha512(&data).as_str());
    let listed = server
        .get("/v2/images?status=deactivated", Some(ALICE))
        .json();
    assert_eq!(listed["images"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(download(ALICE), 403);
    assert_eq!(download(ADMIN), 200);
    assert_eq!(action(ADMIN, "reactivate"), 204);
    assert_eq!(action(ADMIN, "reactivate"), 204, "again: no change");
    assert_eq!(show(&server, ALICE, &id).json()["status"], "active");
    assert_eq!(download(ALICE), 200);
    // An image without data is neither active nor deactivated.
    let queued = created_id(&create(
        &server,
        ADMIN,
        json!({"name": "empty", "disk_format": "raw"}),
    ));
    let r = server.request(
        "POST",
        &format!("/v2/images/{queued}/actions/deactivate"),
        Some(ADMIN),
        &[],
        None,
    );
    assert_eq!(r.status, 400);
    let other = format!("/v2/images/{}/actions/deactivate", uuid_like());
    assert_eq!(
        server
            .request("POST", &other, Some(ADMIN), &[], None)
            .status,
        404
    );
    // The glance client's image-deactivate and image-reactivate.
    if !have_clients("an_admin_deactivates_and_reactivates_an_image") {
        return;
    }
    let home = dir.path().join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    for (cmd, status) in [
        ("image-deactivate", "deactivated"),
        ("image-reactivate", "active"),
    ] {
        let out = client(
            "glance",
            &[
                "--os-image-url",
                server.url.as_str(),
                "--os-auth-token",
                ADMIN,
                cmd,
                &id,
            ],
            &home,
        );
        assert!(
            out.status.success(),
            "glance {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(show(&server, ALICE, &id).json()["status"], status);
    }
}

/// A UUID no image has.
fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".to_string()
}
