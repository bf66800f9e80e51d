//! The OpenStack Image API v2, as Glance answers it (spec section 2), over the library's
//! service: one idea per module.
//!
//! - [`versions`]: `GET /` and `/versions`.

pub mod versions;

use axum::Router;

use super::state::AppState;

/// The Image API's routes.
pub fn routes() -> Router<AppState> {
    Router::new().merge(versions::routes())
}

/// The Image API's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = versions::openapi();
    for part in [] as [utoipa::openapi::OpenApi; 0] {
        doc.merge(part);
    }
    doc
}
