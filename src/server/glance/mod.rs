//! The OpenStack Image API v2, as Glance answers it (spec section 2), over the library's
//! service: one idea per module.
//!
//! - [`versions`]: `GET /` and `/versions`.
//! - [`schemas`]: `/v2/schemas/...`, which clients validate answers against.
//! - [`images`]: create, list, show, update (json-patch), delete.
//! - [`data`]: upload (kept as uploaded, once inspected) and download.
//! - [`import`]: stage and import (converted into the store format).
//! - [`actions`]: deactivate and reactivate.
//! - [`members`], [`tags`].
//! - [`view`]: the image object, statuses, tags and the JSON body extractor.

pub mod actions;
pub mod data;
pub mod images;
pub mod import;
pub mod members;
pub mod schemas;
pub mod tags;
pub mod versions;
pub mod view;

use axum::Router;

use super::state::AppState;

/// The Image API's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(versions::routes())
        .merge(schemas::routes())
        .merge(images::routes())
        .merge(data::routes())
        .merge(import::routes())
        .merge(members::routes())
        .merge(tags::routes())
        .merge(actions::routes())
}

/// The Image API's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = versions::openapi();
    for part in [
        schemas::openapi(),
        images::openapi(),
        data::openapi(),
        import::openapi(),
        members::openapi(),
        tags::openapi(),
        actions::openapi(),
    ] {
        doc.merge(part);
    }
    doc
}
