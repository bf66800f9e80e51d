//! The IMS native API (`/v1|v2/cloudimages...`, jobs, quota): spec section 1.
//!
//! Empty in the server skeleton; the jobs work fills [`routes`] and [`openapi`]. Its error
//! bodies (`{"error": {"code": "IMG.xxxx", "message": ...}}`) are its own.

use axum::Router;

use super::state::AppState;

/// The IMS native API's routes (none yet).
pub fn routes() -> Router<AppState> {
    Router::new()
}

/// The IMS native API's part of the OpenAPI document (none yet).
pub fn openapi() -> utoipa::openapi::OpenApi {
    utoipa::openapi::OpenApiBuilder::new().build()
}
