//! The IMS native API of `ims serve` over plain HTTP: registration from an object in a real
//! S3 server (Garage, or moto) and from a directory of objects, jobs polled to SUCCESS or FAIL with their
//! IMG codes, batch sharing and its answers, copies in and across regions, export to an
//! object, quota, tags, updates, lists with IMS's filters and paging, and error bodies.

mod common;

use std::time::{Duration, Instant};

use common::catalog::random_raw;
use common::server::{ALICE, BOB, CAROL, Reply, Server};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// Polls a job through the progress call until it ends; the job as last read.
fn wait_job(server: &Server, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = server.get(&format!("/v1/cloudimages/job/{id}"), Some(token));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let job = r.json();
        match job["status"].as_str() {
            Some("SUCCESS" | "FAIL") => return job,
            Some("INIT" | "RUNNING") => {}
            other => panic!("job status {other:?}: {job}"),
        }
        assert!(Instant::now() < deadline, "job {id} never ended: {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Posts `body` to `path` and answers the job it made, ended.
fn job(server: &Server, token: &str, method: &str, path: &str, body: &Value) -> Value {
    let r = server.json(method, path, token, None, body);
    assert_eq!(
        r.status,
        200,
        "{method} {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let id = r.json()["job_id"].as_str().expect("a job id").to_string();
    assert_eq!(id.len(), 32);
    wait_job(server, token, &id)
}

/// The answer is IMS's error body with `code`, at `status`.
fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

fn succeeded(job: &Value) -> &str {
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert!(job["begin_time"].as_str().unwrap().ends_with('Z'));
    assert!(job["end_time"].is_string());
    assert!(job["error_code"].is_null());
    job["entities"]["image_id"].as_str().unwrap_or("")
}

fn failed<'a>(job: &'a Value, code: &str) -> &'a str {
    assert_eq!(job["status"], "FAIL", "{job}");
    assert_eq!(job["error_code"], code, "{job}");
    job["fail_reason"].as_str().expect("a reason")
}

fn images(server: &Server, token: &str, query: &str) -> Vec<Value> {
    let r = server.get(&format!("/v2/cloudimages{query}"), Some(token));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["images"].as_array().unwrap().clone()
}

fn names(list: &[Value]) -> Vec<&str> {
    list.iter().map(|i| i["name"].as_str().unwrap()).collect()
}

/// Everything against objects in the S3 server: register, share, copy, export, with their jobs.
#[test]
fn ims_native_api_against_s3_objects() {
    let Some(s3) = common::s3::Server::start("ims_native_api_against_s3_objects") else {
        return;
    };
    s3.create_bucket("src");
    s3.create_bucket("out");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    random_raw(&disk, 8 * MIB, 2, 11);
    let (status, body) = s3.request(
        "PUT",
        "/src/images/disk.raw",
        &std::fs::read(&disk).unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    let server = Server::start_env(
        None,
        &[
            "--region",
            "r1",
            "--source-store",
            "s3://",
            "--copy-region",
            "r2",
            "--workers",
            "2",
        ],
        &s3.env(),
    );

    // Register a data disk from the object; follow its job to the end.
    let reg = job(
        &server,
        ALICE,
        "POST",
        "/v1/cloudimages/dataimages/action",
        &json!({"name": "data-1", "image_url": "src:images/disk.raw", "min_disk": 1,
                "tags": ["team.qa"], "description": "from S3"}),
    );
    let id = succeeded(&reg).to_string();
    assert_eq!(reg["job_type"], "imsImportDataImageJob");
    assert_eq!(reg["entities"]["image_name"], "data-1");
    assert_eq!(reg["entities"]["process_percent"], 100.0);
    // The same job through the project's path, and not through another project's.
    let by_project = server.get(
        &format!("/v1/alice/jobs/{}", reg["job_id"].as_str().unwrap()),
        Some(ALICE),
    );
    assert_eq!(by_project.status, 200);
    assert_eq!(by_project.json()["status"], "SUCCESS");
    assert!(
        by_project.json()["entities"]
            .get("process_percent")
            .is_none()
    );
    let job_id = reg["job_id"].as_str().unwrap();
    refused(
        &server.get(&format!("/v1/bob/jobs/{job_id}"), Some(BOB)),
        404,
        "IMG.0027",
    );
    refused(
        &server.get(&format!("/v1/alice/jobs/{job_id}"), Some(BOB)),
        404,
        "IMG.0027",
    );
    refused(
        &server.get(&format!("/v1/cloudimages/job/{job_id}"), Some(BOB)),
        404,
        "IMG.0027",
    );

    let list = images(&server, ALICE, "?name=data-1");
    assert_eq!(list.len(), 1);
    let img = &list[0];
    assert_eq!(img["id"], id.as_str());
    assert_eq!(img["status"], "active");
    assert_eq!(img["virtual_env_type"], "DataImage");
    assert_eq!(img["__description"], "from S3");
    assert_eq!(img["tags"], json!(["team.qa"]));
    assert_eq!(img["virtual_size"], 8 * MIB);
    for (k, v) in img.as_object().unwrap() {
        if k.starts_with("__") {
            assert!(v.is_string(), "{k}: {v}");
        }
    }

    // A missing object fails its job with IMG.0057.
    let missing = job(
        &server,
        ALICE,
        "POST",
        "/v1/cloudimages/dataimages/action",
        &json!({"name": "none", "image_url": "src:images/none.raw", "min_disk": 1}),
    );
    assert!(failed(&missing, "IMG.0057").contains("none.raw"));

    // Share with bob and carol in one batch; bob accepts, carol rejects.
    let share = job(
        &server,
        ALICE,
        "POST",
        "/v1/cloudimages/members",
        &json!({"images": [id], "projects": ["bob", "carol"]}),
    );
    succeeded(&share);
    assert_eq!(share["job_type"], "imsAddImageMembersJob");
    let results = share["entities"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| r["status"] == "success"),
        "{results:?}"
    );
    assert!(
        images(&server, BOB, "").is_empty(),
        "pending shares are not listed by default"
    );
    let pending = images(&server, BOB, "?member_status=pending&visibility=shared");
    assert_eq!(names(&pending), ["data-1"]);
    assert_eq!(pending[0]["member_status"], "pending");
    // Bob cannot copy before accepting.
    let early = job(
        &server,
        BOB,
        "POST",
        &format!("/v1/cloudimages/{id}/copy"),
        &json!({"name": "early"}),
    );
    assert!(failed(&early, "IMG.0027").contains("accept it first"));
    succeeded(&job(
        &server,
        BOB,
        "PUT",
        "/v1/cloudimages/members",
        &json!({"images": [id], "project_id": "bob", "status": "accepted"}),
    ));
    succeeded(&job(
        &server,
        CAROL,
        "PUT",
        "/v1/cloudimages/members",
        &json!({"images": [id], "status": "rejected"}),
    ));
    let shared = images(
        &server,
        BOB,
        "?__imagetype=shared&member_status=accepted&visibility=shared",
    );
    assert_eq!(names(&shared), ["data-1"]);
    assert!(images(&server, CAROL, "").is_empty());
    refused(
        &server.json(
            "PUT",
            "/v1/cloudimages/members",
            BOB,
            None,
            &json!({"images": [id], "project_id": "carol", "status": "accepted"}),
        ),
        400,
        "IMG.0067",
    );

    // Copies: bob's own copy in the region, alice's into r2; an unknown region is refused.
    let copy = job(
        &server,
        BOB,
        "POST",
        &format!("/v1/cloudimages/{id}/copy"),
        &json!({"name": "bobs-copy", "description": "mine"}),
    );
    assert_eq!(copy["job_type"], "imsCopyImageInRegionJob");
    let copy_id = succeeded(&copy).to_string();
    let bobs = images(&server, BOB, "?name=bobs-copy");
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["owner"], "bob");
    assert_eq!(bobs[0]["id"], copy_id.as_str());
    assert_eq!(bobs[0]["__originalimagename"], id.as_str());
    let far = job(
        &server,
        ALICE,
        "POST",
        &format!("/v1/cloudimages/{id}/cross_region_copy"),
        &json!({"name": "far", "region": "r2", "project_name": "alice", "agency_name": "ims"}),
    );
    let far_id = succeeded(&far).to_string();
    assert_ne!(far_id, id);
    assert!(
        images(&server, ALICE, "?name=far").is_empty(),
        "the copy is in r2"
    );
    refused(
        &server.json(
            "POST",
            &format!("/v1/cloudimages/{id}/cross_region_copy"),
            ALICE,
            None,
            &json!({"name": "x", "region": "r9", "project_name": "alice", "agency_name": "ims"}),
        ),
        400,
        "IMG.0177",
    );
    refused(
        &server.json(
            "POST",
            "/v1/cloudimages/00000000-0000-0000-0000-000000000000/copy",
            ALICE,
            None,
            &json!({"name": "x"}),
        ),
        404,
        "IMG.0027",
    );

    // Export into another bucket; the same object again fails with IMG.0070.
    let export = |fmt: &str| {
        job(
            &server,
            ALICE,
            "POST",
            &format!("/v1/cloudimages/{id}/file"),
            &json!({"bucket_url": "out:exports/data-1.img", "file_format": fmt}),
        )
    };
    let done = export("qcow2");
    succeeded(&done);
    assert_eq!(done["job_type"], "imsNativeExportImageJob");
    assert_eq!(s3.keys("out"), ["exports/data-1.img"]);
    assert!(s3.uploads("out").is_empty());
    let (_, head) = s3.request("GET", "/out/exports/data-1.img", b"");
    assert!(head.starts_with("QFI"), "a qcow2 object");
    failed(&export("vmdk"), "IMG.0070");
    refused(
        &server.json(
            "POST",
            &format!("/v1/cloudimages/{id}/file"),
            ALICE,
            None,
            &json!({"bucket_url": "out:x", "file_format": "raw"}),
        ),
        400,
        "IMG.0072",
    );

    // Quota: alice owns data-1 (the failed registration left a killed record, not counted).
    let q = server.get("/v1/cloudimages/quota", Some(ALICE)).json();
    let image = q["quotas"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "image")
        .unwrap()
        .clone();
    assert_eq!(image["used"], 1, "{q}");
    assert!(image["quota"].as_u64().unwrap() >= 1);
    let members = q["quotas"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "image_member")
        .unwrap()
        .clone();
    assert_eq!(members["used"], 2, "{q}");
}

/// Without an S3 server: objects in `HOME/objects`; registration refusals before and in jobs,
/// the quota in a job, list filters and paging, tags, updates, error bodies.
#[test]
fn ims_native_api_against_local_objects() {
    let server = Server::start_with(
        Some(&json!({"private_image_quota": 3})),
        &["--region", "r1", "--max-json-body", "4096"],
    );
    // A body over the cap: 413 with IMS's error body.
    let big = json!({"images": ["x"], "projects": vec!["p".repeat(100); 50]});
    refused(
        &server.json("POST", "/v1/cloudimages/members", ALICE, None, &big),
        413,
        "IMG.0001",
    );
    let objects = server.home.join("objects/bkt");
    std::fs::create_dir_all(&objects).unwrap();
    random_raw(&objects.join("d.raw"), 4 * MIB, 1, 5);
    // A QCOW2 header cut short: damaged.
    let mut junk = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    junk.resize(100, 0);
    std::fs::write(objects.join("junk.bin"), junk).unwrap();

    // Refusals before a job is made.
    let post = |token: &str, body: &[u8]| {
        server.request(
            "POST",
            "/v1/cloudimages/dataimages/action",
            Some(token),
            &[("content-type", "application/json")],
            Some(body),
        )
    };
    refused(&post(ALICE, b""), 400, "IMG.0007");
    refused(&post(ALICE, b"{not json"), 400, "IMG.0001");
    refused(
        &post(ALICE, br#"{"image_url": "bkt:d.raw", "min_disk": 1}"#),
        400,
        "IMG.0013",
    );
    refused(
        &post(
            ALICE,
            br#"{"name": "x", "image_url": "bkt", "min_disk": 1}"#,
        ),
        400,
        "IMG.0017",
    );
    refused(
        &post(ALICE, br#"{"name": "x", "image_url": "bkt:d.raw"}"#),
        400,
        "IMG.0055",
    );
    refused(
        &post(
            ALICE,
            format!(
                r#"{{"name": "{}", "image_url": "bkt:d.raw", "min_disk": 1}}"#,
                "n".repeat(129)
            )
            .as_bytes(),
        ),
        400,
        "IMG.0002",
    );
    refused(
        &server.json(
            "POST",
            "/v2/cloudimages/action",
            ALICE,
            None,
            &json!({"name": "x", "image_url": "bkt:d.raw", "min_disk": 40, "type": "Tape"}),
        ),
        400,
        "IMG.0024",
    );
    let unauth = server.json(
        "POST",
        "/v1/cloudimages/dataimages/action",
        "nope",
        None,
        &json!({}),
    );
    assert_eq!(unauth.status, 401);

    // Three registrations fill the quota; the fourth fails in its job with IMG.0015; a file
    // that is no image fails with its code.
    for i in 0..3 {
        let j = job(
            &server,
            ALICE,
            "POST",
            "/v1/cloudimages/dataimages/action",
            &json!({"name": format!("img-{i}"), "image_url": "bkt:d.raw", "min_disk": 1}),
        );
        succeeded(&j);
    }
    let over = job(
        &server,
        ALICE,
        "POST",
        "/v1/cloudimages/dataimages/action",
        &json!({"name": "img-3", "image_url": "bkt:d.raw", "min_disk": 1}),
    );
    assert!(failed(&over, "IMG.0015").starts_with("quota_exceeded: "));
    let junk = job(
        &server,
        BOB,
        "POST",
        "/v1/cloudimages/dataimages/action",
        &json!({"name": "junk", "image_url": "bkt:junk.bin", "min_disk": 1}),
    );
    assert!(failed(&junk, "IMG.0057").starts_with("image_unreadable: "));

    // Lists: sort, paging with a marker, filters; bad parameters are refused.
    let all = images(&server, ALICE, "?sort_key=name&sort_dir=asc");
    assert_eq!(names(&all), ["img-0", "img-1", "img-2"]);
    let page = images(&server, ALICE, "?sort_key=name&sort_dir=asc&limit=2");
    assert_eq!(names(&page), ["img-0", "img-1"]);
    let next = images(
        &server,
        ALICE,
        &format!(
            "?sort_key=name&sort_dir=asc&limit=2&marker={}",
            page[1]["id"].as_str().unwrap()
        ),
    );
    assert_eq!(names(&next), ["img-2"]);
    assert_eq!(
        images(
            &server,
            ALICE,
            "?__imagetype=private&status=active&virtual_env_type=DataImage"
        )
        .len(),
        3
    );
    assert!(images(&server, ALICE, "?__imagetype=gold").is_empty());
    assert_eq!(
        images(&server, ALICE, "?created_at=gte:2000-01-01T00:00:00Z").len(),
        3
    );
    assert!(images(&server, ALICE, "?created_at=lt:2000-01-01T00:00:00Z").is_empty());
    assert!(images(&server, BOB, "").iter().all(|i| i["owner"] == "bob"));
    refused(
        &server.get("/v2/cloudimages?colour=blue", Some(ALICE)),
        400,
        "IMG.0001",
    );
    refused(
        &server.get("/v2/cloudimages?limit=0", Some(ALICE)),
        400,
        "IMG.0001",
    );
    refused(
        &server.get("/v2/cloudimages?marker=nope", Some(ALICE)),
        400,
        "IMG.0001",
    );

    // Tags, v1 and v2.
    let id = all[0]["id"].as_str().unwrap().to_string();
    let tag_path = format!("/v2/alice/images/{id}/tags");
    let put = server.json(
        "PUT",
        "/v1/cloudimages/tags",
        ALICE,
        None,
        &json!({"image_id": id, "tag": "env.prod"}),
    );
    assert_eq!(put.status, 204, "{}", String::from_utf8_lossy(&put.body));
    let add = server.json(
        "POST",
        &tag_path,
        ALICE,
        None,
        &json!({"tag": {"key": "tier", "value": "gold"}}),
    );
    assert_eq!(add.status, 204);
    let tags = server.get(&tag_path, Some(ALICE)).json();
    assert_eq!(
        tags["tags"],
        json!([{"key": "env", "value": "prod"}, {"key": "tier", "value": "gold"}])
    );
    assert_eq!(images(&server, ALICE, "?tag=env=prod").len(), 1);
    refused(
        &server.json(
            "POST",
            &tag_path,
            ALICE,
            None,
            &json!({"tag": {"key": "k".repeat(37), "value": "v"}}),
        ),
        400,
        "IMG.0115",
    );
    refused(
        &server.json(
            "POST",
            &tag_path,
            BOB,
            None,
            &json!({"tag": {"key": "a", "value": "b"}}),
        ),
        400,
        "IMG.0067",
    );
    let bobs_path = format!("/v2/bob/images/{id}/tags");
    refused(
        &server.json(
            "POST",
            &bobs_path,
            BOB,
            None,
            &json!({"tag": {"key": "a", "value": "b"}}),
        ),
        404,
        "IMG.0027",
    );
    let del = server.request("DELETE", &format!("{tag_path}/env"), Some(ALICE), &[], None);
    assert_eq!(del.status, 204);
    refused(
        &server.request("DELETE", &format!("{tag_path}/env"), Some(ALICE), &[], None),
        404,
        "IMG.0027",
    );
    let batch = server.json("POST", &format!("{tag_path}/action"), ALICE, None,
        &json!({"action": "create", "tags": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]}));
    assert_eq!(batch.status, 204);
    let keys = server.get("/v2/alice/images/tags", Some(ALICE)).json();
    assert_eq!(keys["tags"].as_array().unwrap().len(), 3, "{keys}");
    let v1 = server.get("/v1/cloudimages/tags", Some(ALICE)).json();
    assert!(
        v1["tags"].as_array().unwrap().contains(&json!("tier.gold")),
        "{v1}"
    );

    // Updates by JSON patch.
    let patched = server.json(
        "PATCH",
        &format!("/v2/cloudimages/{id}"),
        ALICE,
        Some("application/json;charset=UTF-8"),
        &json!([{"op": "replace", "path": "/name", "value": "renamed"},
                {"op": "add", "path": "/__description", "value": "patched"}]),
    );
    assert_eq!(
        patched.status,
        200,
        "{}",
        String::from_utf8_lossy(&patched.body)
    );
    assert_eq!(patched.json()["name"], "renamed");
    assert_eq!(patched.json()["__description"], "patched");
    refused(
        &server.json(
            "PATCH",
            &format!("/v2/cloudimages/{id}"),
            ALICE,
            None,
            &json!([{"op": "replace", "path": "/owner", "value": "bob"}]),
        ),
        400,
        "IMG.0001",
    );
    refused(
        &server.json(
            "PATCH",
            &format!("/v2/cloudimages/{id}"),
            BOB,
            None,
            &json!([{"op": "replace", "path": "/name", "value": "mine"}]),
        ),
        404,
        "IMG.0027",
    );
    refused(
        &server.json(
            "PATCH",
            &format!("/v2/cloudimages/{id}"),
            ALICE,
            None,
            &json!([{"op": "replace", "path": "/name", "value": ""}]),
        ),
        400,
        "IMG.0003",
    );
    // Sharing refusals show per image and project in the job.
    let share = job(
        &server,
        ALICE,
        "POST",
        "/v1/cloudimages/members",
        &json!({"images": [id, "no-such-image"], "projects": ["alice", "bob"]}),
    );
    failed(&share, "IMG.0076");
    let statuses: Vec<&str> = share["entities"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["IMG.0076", "success", "IMG.0027", "IMG.0027"]);
    // The OpenAPI document names the IMS paths.
    let doc = server.get("/openapi.json", None).json();
    for p in [
        "/v2/cloudimages",
        "/v1/cloudimages/job/{job_id}",
        "/v1/cloudimages/members",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p}");
    }
}

/// A system disk with a data-disk image in one call (and `is_config` kept), the two-step
/// registration into an image made by `POST /v2/images`, extension attributes set by a patch
/// and filtered on.
#[test]
fn ims_native_system_disks_two_step_and_extension_attributes() {
    if !common::have(
        "ims_native_system_disks_two_step_and_extension_attributes",
        common::catalog::GUEST_TOOLS,
    ) {
        return;
    }
    let server = Server::start_with(None, &["--region", "r1"]);
    let objects = server.home.join("objects/bkt");
    std::fs::create_dir_all(&objects).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let guest = common::catalog::linux_guest(dir.path(), "guest", 0x3e, Some("BOOTX64.EFI"));
    std::fs::copy(&guest, objects.join("guest.raw")).unwrap();
    random_raw(&objects.join("d.raw"), 4 * MIB, 1, 5);

    let reg = job(
        &server,
        ALICE,
        "POST",
        "/v2/cloudimages/action",
        &json!({"name": "sys", "image_url": "bkt:guest.raw", "min_disk": 1, "is_config": true,
                "os_type": "Linux", "hw_firmware_type": "uefi",
                "data_images": [{"name": "sys-data", "image_url": "bkt:d.raw", "min_disk": 1}]}),
    );
    let sys = succeeded(&reg).to_string();
    assert_eq!(reg["job_type"], "imsImportImageJob");
    let data_ids = reg["entities"]["data_image_ids"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(data_ids.len(), 1);
    let list = images(&server, ALICE, "?sort_key=name&sort_dir=asc");
    assert_eq!(names(&list), ["sys", "sys-data"]);
    assert_eq!(list[0]["id"], sys.as_str());
    assert_eq!(list[0]["virtual_env_type"], "FusionCompute");
    assert_eq!(list[0]["__os_type"], "Linux");
    assert_eq!(list[0]["__platform"], "Ubuntu");
    assert_eq!(list[0]["hw_firmware_type"], "uefi");
    assert_eq!(list[0]["__is_config_init"], "true");
    assert_eq!(list[0]["__data_images"], data_ids[0]);
    assert_eq!(list[1]["id"], data_ids[0]);
    assert_eq!(list[1]["virtual_env_type"], "DataImage");
    assert_eq!(
        images(&server, ALICE, "?__platform=Ubuntu&__os_type=Linux").len(),
        1
    );

    // The two-step registration: a queued image, then its file from an object.
    let made = server.json(
        "POST",
        "/v2/images",
        ALICE,
        None,
        &json!({"name": "two-step", "disk_format": "raw", "container_format": "bare"}),
    );
    assert_eq!(made.status, 201, "{}", String::from_utf8_lossy(&made.body));
    let id = made.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        images(&server, ALICE, &format!("?id={id}"))[0]["status"],
        "queued"
    );
    refused(
        &server.json(
            "PUT",
            &format!("/v1/cloudimages/{id}/upload"),
            ALICE,
            None,
            &json!({"image_url": "bkt"}),
        ),
        400,
        "IMG.0017",
    );
    refused(
        &server.json(
            "PUT",
            &format!("/v1/cloudimages/{id}/upload"),
            BOB,
            None,
            &json!({"image_url": "bkt:d.raw"}),
        ),
        404,
        "IMG.0027",
    );
    let two = job(
        &server,
        ALICE,
        "PUT",
        &format!("/v1/cloudimages/{id}/upload"),
        &json!({"image_url": "bkt:d.raw"}),
    );
    assert_eq!(succeeded(&two), id);
    assert_eq!(two["job_type"], "imsNativeImportImageJob");
    let img = images(&server, ALICE, &format!("?id={id}"))[0].clone();
    assert_eq!(img["status"], "active");
    assert_eq!(img["disk_format"], "zvhd2");
    assert_eq!(img["virtual_size"], 4 * MIB);
    refused(
        &server.json(
            "PUT",
            &format!("/v1/cloudimages/{id}/upload"),
            ALICE,
            None,
            &json!({"image_url": "bkt:d.raw"}),
        ),
        400,
        "IMG.0046",
    );
    // An import whose object is missing fails, and the image with it.
    let made = server.json(
        "POST",
        "/v2/images",
        ALICE,
        None,
        &json!({"name": "lost", "disk_format": "raw"}),
    );
    let lost = made.json()["id"].as_str().unwrap().to_string();
    let j = job(
        &server,
        ALICE,
        "PUT",
        &format!("/v1/cloudimages/{lost}/upload"),
        &json!({"image_url": "bkt:gone.raw"}),
    );
    failed(&j, "IMG.0057");
    assert_eq!(
        images(&server, ALICE, &format!("?id={lost}"))[0]["status"],
        "killed"
    );

    // Extension attributes through a patch, then a filter on one.
    let patched = server.json(
        "PATCH",
        &format!("/v2/cloudimages/{sys}"),
        ALICE,
        None,
        &json!([{"op": "add", "path": "/__support_xen", "value": "true"},
                {"op": "replace", "path": "/__is_config_init", "value": "false"}]),
    );
    assert_eq!(
        patched.status,
        200,
        "{}",
        String::from_utf8_lossy(&patched.body)
    );
    assert_eq!(patched.json()["__support_xen"], "true");
    assert_eq!(
        names(&images(&server, ALICE, "?__support_xen=true")),
        ["sys"]
    );
    assert_eq!(
        images(&server, ALICE, &format!("?id={sys}"))[0]["__is_config_init"],
        "false"
    );
    let removed = server.json(
        "PATCH",
        &format!("/v2/cloudimages/{sys}"),
        ALICE,
        None,
        &json!([{"op": "remove", "path": "/__support_xen"}]),
    );
    assert_eq!(removed.status, 200);
    assert!(images(&server, ALICE, "?__support_xen=true").is_empty());
}

/// `ims serve` on `home`, started by hand so that it can be killed and started again on the
/// same home; its URL.
fn serve_on(
    home: &std::path::Path,
    tokens: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, String) {
    serve_on_env(home, tokens, extra, &[])
}

/// [`serve_on`] with more environment variables (an S3 server's).
fn serve_on_env(
    home: &std::path::Path,
    tokens: &std::path::Path,
    extra: &[&str],
    env: &[(&'static str, String)],
) -> (std::process::Child, String) {
    use std::io::BufRead;
    std::fs::create_dir_all(home).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("server.log"))
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ims"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--region",
            "r1",
            "--tokens",
        ])
        .arg(tokens)
        .arg("--home")
        .arg(home)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("ims serve: listening on ")
        .expect("the listening line")
        .to_string();
    (child, url)
}

/// Kill -9 of the server while a registration job writes its image: after a restart on the
/// same home the job is FAIL with the reason, the image `killed`, nothing left in the store.
#[test]
fn a_job_killed_with_its_server_fails_on_restart() {
    use common::server::request;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let objects = home.join("objects/bkt");
    std::fs::create_dir_all(&objects).unwrap();
    random_raw(&objects.join("big.raw"), 256 * MIB, 128, 21);
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, common::server::tokens_json()).unwrap();
    let (mut child, url) = serve_on(&home, &tokens, &[]);
    let body = json!({"name": "doomed", "image_url": "bkt:big.raw", "min_disk": 1}).to_string();
    let r = request(
        "POST",
        &format!("{url}/v1/cloudimages/dataimages/action"),
        Some(ALICE),
        &[("content-type", "application/json")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["job_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = request(
            "GET",
            &format!("{url}/v1/cloudimages/job/{id}"),
            Some(ALICE),
            &[],
            None,
        )
        .json();
        let listed = request(
            "GET",
            &format!("{url}/v2/cloudimages"),
            Some(ALICE),
            &[],
            None,
        )
        .json();
        let saving = listed["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["status"] == "saving");
        if job["status"] == "RUNNING" && saving {
            assert_eq!(job["entities"]["current_task"], "importing the image file");
            break;
        }
        assert_ne!(
            job["status"], "SUCCESS",
            "the registration ended before the kill"
        );
        assert!(Instant::now() < deadline, "never saving: {job}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, url) = serve_on(&home, &tokens, &[]);
    let job = request(
        "GET",
        &format!("{url}/v1/alice/jobs/{id}"),
        Some(ALICE),
        &[],
        None,
    )
    .json();
    assert_eq!(job["status"], "FAIL", "{job}");
    assert_eq!(job["error_code"], "IMG.0061");
    assert!(
        job["fail_reason"]
            .as_str()
            .unwrap()
            .starts_with("interrupted: "),
        "{job}"
    );
    let listed = request(
        "GET",
        &format!("{url}/v2/cloudimages"),
        Some(ALICE),
        &[],
        None,
    )
    .json();
    let statuses: Vec<&str> = listed["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["killed"]);
    assert!(common::catalog::stray_files(&home).is_empty());
    let mut stored = Vec::new();
    let mut stack = vec![home.join("store")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                stored.push(e.path());
            }
        }
    }
    assert!(stored.is_empty(), "{stored:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Two `ims serve` processes over one PostgreSQL catalog (and one store) share the job queue:
/// copies submitted to either are each run once, by one or the other.
#[test]
fn two_servers_share_the_job_queue_of_a_postgres_catalog() {
    use common::server::request;
    let Some(db) =
        common::postgres::Database::new("two_servers_share_the_job_queue_of_a_postgres_catalog")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let objects = home.join("objects/bkt");
    std::fs::create_dir_all(&objects).unwrap();
    random_raw(&objects.join("d.raw"), 32 * MIB, 16, 8);
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, common::server::tokens_json()).unwrap();
    let url = db.url();
    let args = ["--catalog", url.as_str(), "--workers", "1"];
    let (mut a, url_a) = serve_on(&home, &tokens, &args);
    let (mut b, url_b) = serve_on(&home, &tokens, &args);
    let post = |base: &str, path: &str, body: &Value| {
        let r = request(
            "POST",
            &format!("{base}{path}"),
            Some(ALICE),
            &[("content-type", "application/json")],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["job_id"].as_str().unwrap().to_string()
    };
    let wait = |base: &str, id: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let j = request(
                "GET",
                &format!("{base}/v1/alice/jobs/{id}"),
                Some(ALICE),
                &[],
                None,
            )
            .json();
            if j["status"] == "SUCCESS" || j["status"] == "FAIL" {
                return j;
            }
            assert!(Instant::now() < deadline, "{j}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let reg = post(
        &url_a,
        "/v1/cloudimages/dataimages/action",
        &json!({"name": "source", "image_url": "bkt:d.raw", "min_disk": 1}),
    );
    let src = succeeded(&wait(&url_b, &reg)).to_string();
    let ids: Vec<String> = (0..10)
        .map(|i| {
            let base = if i % 2 == 0 { &url_a } else { &url_b };
            post(
                base,
                &format!("/v1/cloudimages/{src}/copy"),
                &json!({"name": format!("copy-{i}")}),
            )
        })
        .collect();
    for id in &ids {
        succeeded(&wait(&url_a, id));
    }
    let list = request(
        "GET",
        &format!("{url_b}/v2/cloudimages?limit=1000"),
        Some(ALICE),
        &[],
        None,
    )
    .json();
    let list = list["images"].as_array().unwrap();
    for i in 0..10 {
        let name = format!("copy-{i}");
        assert_eq!(
            list.iter().filter(|x| x["name"] == name.as_str()).count(),
            1,
            "{name}"
        );
    }
    // Each job names its owner: the processes of both servers ran some.
    let owners = db.psql("SELECT DISTINCT split_part(owner, ':', 2) FROM jobs ORDER BY 1");
    let pids: Vec<&str> = owners.lines().collect();
    let mut want = vec![a.id().to_string(), b.id().to_string()];
    want.sort();
    assert_eq!(pids, want, "jobs ran in both servers");
    for c in [&mut a, &mut b] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

/// An ISO registered with `type=IsoImage` and its OS version; a disk given as an ISO fails its
/// job with IMG.0167.
#[test]
fn ims_native_iso_images() {
    if !common::have("ims_native_iso_images", &["xorriso"]) {
        return;
    }
    let server = Server::start_with(None, &["--region", "r1"]);
    let objects = server.home.join("objects/media");
    std::fs::create_dir_all(&objects).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("tools")).unwrap();
    std::fs::write(root.join("tools/readme.txt"), b"tools\n").unwrap();
    let out = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "TOOLS", "-o"])
        .arg(objects.join("tools.iso"))
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    random_raw(&objects.join("disk.raw"), 4 * MIB, 1, 3);

    let reg = job(
        &server,
        ALICE,
        "POST",
        "/v2/cloudimages/action",
        &json!({"name": "tools", "image_url": "media:tools.iso", "min_disk": 1,
                "type": "IsoImage", "os_version": "Other Linux 64bit"}),
    );
    let id = succeeded(&reg).to_string();
    assert_eq!(reg["job_type"], "imsImportImageJob");
    let img = images(&server, ALICE, "?virtual_env_type=IsoImage");
    assert_eq!(names(&img), ["tools"]);
    assert_eq!(img[0]["id"], id.as_str());
    assert_eq!(img[0]["__os_version"], "Other Linux 64bit");
    let disk = job(
        &server,
        ALICE,
        "POST",
        "/v2/cloudimages/action",
        &json!({"name": "not-iso", "image_url": "media:disk.raw", "min_disk": 1,
                "type": "IsoImage", "os_version": "Other Linux 64bit"}),
    );
    assert!(failed(&disk, "IMG.0167").starts_with("iso_type_mismatch: "));
    refused(
        &server.json("POST", "/v2/cloudimages/action", ALICE, None,
            &json!({"name": "x", "image_url": "media:tools.iso", "min_disk": 1, "type": "IsoImage"})),
        400,
        "IMG.0166",
    );
}

/// The Image API's import across servers: two servers, each with a home of its own, over one
/// PostgreSQL catalog and one S3 store. Data staged through the first waits in the bucket; the
/// first is killed; the import asked of the second is a job it runs, and the bucket then holds
/// the imported image and nothing staged. Then the Image API's upload, download and delete on
/// the S3 store (its handlers call the store from the server's blocking threads).
#[test]
fn data_staged_through_one_server_is_imported_by_another() {
    use common::server::request;
    let t = "data_staged_through_one_server_is_imported_by_another";
    let Some(db) = common::postgres::Database::new(t) else {
        return;
    };
    let Some(s3) = common::s3::Server::start(t) else {
        return;
    };
    s3.create_bucket("store");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    random_raw(&disk, 8 * MIB, 4, 9);
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, common::server::tokens_json()).unwrap();
    let url = db.url();
    let args = [
        "--catalog",
        url.as_str(),
        "--store",
        "s3://store/ims",
        "--workers",
        "1",
    ];
    let (mut a, url_a) = serve_on_env(&dir.path().join("a"), &tokens, &args, &s3.env());
    let (mut b, url_b) = serve_on_env(&dir.path().join("b"), &tokens, &args, &s3.env());
    let created = request(
        "POST",
        &format!("{url_a}/v2/images"),
        Some(ALICE),
        &[("content-type", "application/json")],
        Some(br#"{"name": "moved", "disk_format": "raw", "container_format": "bare"}"#),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let id = created.json()["id"].as_str().unwrap().to_string();
    let staged = request(
        "PUT",
        &format!("{url_a}/v2/images/{id}/stage"),
        Some(ALICE),
        &[("content-type", "application/octet-stream")],
        Some(&std::fs::read(&disk).unwrap()),
    );
    assert_eq!(
        staged.status,
        204,
        "{}",
        String::from_utf8_lossy(&staged.body)
    );
    let show = |base: &str| {
        request(
            "GET",
            &format!("{base}/v2/images/{id}"),
            Some(ALICE),
            &[],
            None,
        )
        .json()
    };
    assert_eq!(show(&url_b)["status"], "uploading");
    let keys = s3.keys("store");
    assert!(
        keys.len() == 1 && keys[0].ends_with(&format!("{id}.staged")),
        "{keys:?}"
    );
    a.kill().unwrap();
    a.wait().unwrap();
    let import = request(
        "POST",
        &format!("{url_b}/v2/images/{id}/import"),
        Some(ALICE),
        &[("content-type", "application/json")],
        Some(br#"{"method": {"name": "glance-direct"}}"#),
    );
    assert_eq!(
        import.status,
        202,
        "{}",
        String::from_utf8_lossy(&import.body)
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let v = show(&url_b);
        if v["status"] == "active" || v["status"] == "killed" {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (done["status"].as_str(), done["disk_format"].as_str()),
        (Some("active"), Some("zvhd2")),
        "{done}"
    );
    assert_eq!(done["virtual_size"], 8 * MIB);
    let keys = s3.keys("store");
    assert!(
        keys.len() == 1 && keys[0].ends_with(&format!("{id}.zvhd2")),
        "only the imported image: {keys:?}"
    );
    assert!(s3.uploads("store").is_empty());
    // The Image API's own data path on the S3 store: an upload kept as uploaded, downloaded
    // byte-equal (whole and by a range), then deleted with its object.
    let data = std::fs::read(&disk).unwrap();
    let created = request(
        "POST",
        &format!("{url_b}/v2/images"),
        Some(ALICE),
        &[("content-type", "application/json")],
        Some(br#"{"name": "kept", "disk_format": "raw", "container_format": "bare"}"#),
    );
    let kept = created.json()["id"].as_str().unwrap().to_string();
    let put = request(
        "PUT",
        &format!("{url_b}/v2/images/{kept}/file"),
        Some(ALICE),
        &[("content-type", "application/octet-stream")],
        Some(&data),
    );
    assert_eq!(put.status, 204, "{}", String::from_utf8_lossy(&put.body));
    let file = format!("{url_b}/v2/images/{kept}/file");
    let got = request("GET", &file, Some(ALICE), &[], None);
    assert_eq!(got.status, 200);
    assert!(got.body == data, "the download differs from the upload");
    let part = request(
        "GET",
        &file,
        Some(ALICE),
        &[("range", "bytes=4096-8191")],
        None,
    );
    assert_eq!(part.status, 206);
    assert!(part.body[..] == data[4096..8192]);
    assert_eq!(s3.keys("store").len(), 2);
    let deleted = request(
        "DELETE",
        &format!("{url_b}/v2/images/{kept}"),
        Some(ALICE),
        &[],
        None,
    );
    assert_eq!(deleted.status, 204);
    let keys = s3.keys("store");
    assert!(
        keys.len() == 1 && keys[0].ends_with(&format!("{id}.zvhd2")),
        "the deleted image's object is gone: {keys:?}"
    );
    b.kill().unwrap();
    b.wait().unwrap();
}
