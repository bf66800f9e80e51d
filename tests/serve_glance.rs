//! `ims serve`: the server skeleton (identity, health, the OpenAPI document, request ids) and
//! the OpenStack Image API v2, driven over plain HTTP and by the real OpenStack clients.

mod common;

use common::server::{ADMIN, ALICE, Server};

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
    assert!(doc["paths"]["/healthz"]["get"].is_object(), "{doc}");
    assert!(doc["paths"]["/versions"]["get"].is_object(), "{doc}");

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
    assert_ne!(server.get("/v2/images", Some(ALICE)).status, 401);
    let log = server.log();
    assert!(log.contains("request_id=req-"), "structured log: {log}");
}
