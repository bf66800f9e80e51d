//! The version documents: `GET /versions` (200) and `GET /` (300, as Glance answers it), which
//! glanceclient reads to pick API v2 and openstacksdk to discover the endpoint.

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::server::state::AppState;

/// The newest minor version of API v2 the server speaks (Glance 33 speaks v2.17).
const CURRENT_MINOR: u32 = 17;

/// The base URL a client reached the server at (`http://HOST`, from the Host header).
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// The versions document: v2.17 current, every earlier v2 minor supported.
fn document(base: &str) -> Value {
    let versions: Vec<Value> = (0..=CURRENT_MINOR)
        .rev()
        .map(|minor| {
            json!({
                "id": format!("v2.{minor}"),
                "status": if minor == CURRENT_MINOR { "CURRENT" } else { "SUPPORTED" },
                "links": [{"rel": "self", "href": format!("{base}/v2/")}],
            })
        })
        .collect();
    json!({ "versions": versions })
}

/// The API versions (200).
#[utoipa::path(get, path = "/versions", tag = "glance",
    responses((status = 200, description = "The API versions the server speaks")))]
async fn versions(headers: HeaderMap) -> impl IntoResponse {
    axum::Json(document(&base_url(&headers)))
}

/// The API versions, as Glance answers its root: 300 Multiple Choices.
#[utoipa::path(get, path = "/", tag = "glance",
    responses((status = 300, description = "The API versions the server speaks")))]
async fn root(headers: HeaderMap) -> impl IntoResponse {
    (
        StatusCode::MULTIPLE_CHOICES,
        axum::Json(document(&base_url(&headers))),
    )
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/versions", get(versions))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(versions, root))]
struct Doc;

/// This module's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_is_current_and_links_to_the_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9292".parse().unwrap());
        let doc = document(&base_url(&h));
        assert_eq!(doc["versions"][0]["id"], "v2.17");
        assert_eq!(doc["versions"][0]["status"], "CURRENT");
        assert_eq!(
            doc["versions"][0]["links"][0]["href"],
            "http://127.0.0.1:9292/v2/"
        );
        assert_eq!(doc["versions"][17]["id"], "v2.0");
        h.insert(header::HOST, "evil\"host".parse().unwrap());
        assert_eq!(base_url(&h), "http://localhost");
    }
}
