//! Image data: `PUT /v2/images/{id}/file` (chunked or sized, streamed to the store, never whole
//! in memory, kept as uploaded once ims's safety inspection passes) and `GET .../file` (exactly
//! the stored bytes, `Content-MD5` as Glance sends it, one byte range on request).

use std::io::Read;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::images::image_id;
use crate::cancel::CancelToken;
use crate::register::{RuleCode, Status};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

/// How many chunks of a body may wait between the connection and the library's reader.
const QUEUE: usize = 8;

/// A request body as a blocking reader: chunks arrive through a bounded channel from the task
/// that reads the connection, so at most a few chunks are held at once. The body ends only
/// when the task says so: a connection dropped midway (the task gone without saying it) is an
/// error, never a short but complete-looking upload.
pub struct BodyReader {
    rx: mpsc::Receiver<Result<Option<Bytes>, std::io::Error>>,
    chunk: Bytes,
    done: bool,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(Some(chunk))) => self.chunk = chunk,
                Some(Ok(None)) => self.done = true,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the upload was cut short",
                    ));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// Splits `body` into a blocking reader and the future that feeds it (run it alongside the
/// blocking call; it stops when the reader is dropped).
pub fn body_reader(body: Body) -> (BodyReader, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let pump = async move {
        let mut stream = body.into_data_stream();
        loop {
            let item = match stream.next().await {
                Some(Ok(chunk)) => Ok(Some(chunk)),
                Some(Err(e)) => Err(std::io::Error::other(e)),
                None => Ok(None),
            };
            let last = !matches!(item, Ok(Some(_)));
            if tx.send(item).await.is_err() || last {
                break;
            }
        }
    };
    (
        BodyReader {
            rx,
            chunk: Bytes::new(),
            done: false,
        },
        pump,
    )
}

/// Image data comes as `application/octet-stream` (the default when no type is given);
/// anything else is 415, as Glance answers.
pub fn require_octet_stream(headers: &HeaderMap) -> ApiResult<()> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    if ctype.starts_with("application/octet-stream") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {ctype} is not application/octet-stream"),
        ))
    }
}

/// The size a client declared: `X-OpenStack-Image-Size`, else `Content-Length`.
fn declared_size(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    for name in ["x-openstack-image-size", "content-length"] {
        if let Some(v) = headers.get(name) {
            let n = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request(format!("{name} is not a size")))?;
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Uploads an image's data, kept as uploaded in its declared disk_format once inspected.
#[utoipa::path(put, path = "/v2/images/{image_id}/file", tag = "glance",
    params(("image_id" = String, Path, description = "The image id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Stored; the image is active"),
        (status = 400), (status = 404), (status = 409, description = "Not queued"),
        (status = 413, description = "Over the upload size cap or the quota"),
        (status = 415, description = "Not application/octet-stream, or the data is not its disk_format or fails the safety inspection")))]
async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    require_octet_stream(&headers)?;
    let size = declared_size(&headers)?;
    let (mut reader, pump) = body_reader(body);
    let scope = caller.scope.clone();
    let call =
        state.run(move |ims| ims.upload_as_is(&scope, &id, &mut reader, size, &CancelToken::new()));
    let (result, ()) = tokio::join!(call, pump);
    result.map_err(refusal_status)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An upload's refusal by the safety inspection is 415, as Glance answers data that is not
/// its disk_format or fails its checks.
pub fn refusal_status(e: ApiError) -> ApiError {
    match e.rule {
        Some(
            RuleCode::FormatUnsupported | RuleCode::ReferenceRefused | RuleCode::ImageUnreadable,
        ) => e.with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        _ => e,
    }
}

/// One byte range of `Range: bytes=A-B` (or `A-`, or `-N`) within `len` bytes.
fn range(headers: &HeaderMap, len: u64) -> ApiResult<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "the range is not within the image",
        )
    };
    let spec = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().strip_prefix("bytes="))
        .filter(|s| !s.contains(','))
        .ok_or_else(unsatisfiable)?;
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| unsatisfiable())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| unsatisfiable())?, len),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| unsatisfiable())?;
            let b: u64 = b.parse().map_err(|_| unsatisfiable())?;
            (a, b.saturating_add(1).min(len))
        }
    };
    if start >= end || start >= len {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

/// Downloads an image's stored bytes.
#[utoipa::path(get, path = "/v2/images/{image_id}/file", tag = "glance",
    params(("image_id" = String, Path, description = "The image id")),
    responses((status = 200, description = "The stored bytes", content_type = "application/octet-stream"),
        (status = 204, description = "The image has no data"), (status = 206, description = "A byte range"),
        (status = 404), (status = 416)))]
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = image_id(&id)?;
    let scope = caller.scope.clone();
    let admin = caller.admin;
    let (r, storage) = state
        .run(move |ims| {
            let r = ims.show(&scope, &id)?;
            // A deactivated image's data is withheld from all but an admin.
            if r.status == Status::Deactivated && !admin {
                return Err(crate::register::ServiceError::rule(
                    crate::register::RuleCode::NotOperator,
                    format!(
                        "image {id} is deactivated: its data is not downloaded until it is \
                         reactivated"
                    ),
                ));
            }
            if !r.has_data() {
                return Ok((r, None));
            }
            let storage = ims.stored(&r)?;
            Ok((r, Some(storage)))
        })
        .await?;
    let Some(storage) = storage else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let len = storage.len();
    let (start, end, status) = match range(&headers, len)? {
        Some((a, b)) => (a, b, StatusCode::PARTIAL_CONTENT),
        None => (0, len, StatusCode::OK),
    };
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut at = start;
        while at < end {
            let n = usize::try_from((end - at).min(1 << 20)).unwrap_or(1 << 20);
            let mut buf = vec![0u8; n];
            let item =
                crate::storage::read_exact_at(storage.as_ref(), &mut buf, at, "stored image")
                    .map(|()| Bytes::from(buf))
                    .map_err(std::io::Error::other);
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                break;
            }
            at += n as u64;
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    } else if let Ok(v) = HeaderValue::from_str(&r.checksum.md5)
        && !r.checksum.md5.is_empty()
    {
        h.insert("content-md5", v);
    }
    Ok(response)
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v2/images/{image_id}/file", put(upload).get(download))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(upload, download))]
struct Doc;

/// This module's part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        h
    }

    fn reader(items: Vec<Result<Option<Bytes>, std::io::Error>>) -> BodyReader {
        let (tx, rx) = mpsc::channel(items.len().max(1));
        for i in items {
            tx.try_send(i).unwrap();
        }
        BodyReader {
            rx,
            chunk: Bytes::new(),
            done: false,
        }
    }

    #[test]
    fn a_body_ends_only_when_the_connection_says_so() {
        let mut whole = reader(vec![
            Ok(Some(Bytes::from_static(b"ab"))),
            Ok(Some(Bytes::from_static(b"c"))),
            Ok(None),
        ]);
        let mut out = Vec::new();
        whole.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
        let mut cut = reader(vec![Ok(Some(Bytes::from_static(b"ab")))]);
        let mut out = Vec::new();
        let e = cut.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        let mut failed = reader(vec![Err(std::io::Error::other("reset"))]);
        assert!(failed.read(&mut [0u8; 4]).is_err());
    }

    #[test]
    fn ranges_are_clamped_or_refused() {
        assert_eq!(range(&HeaderMap::new(), 10).unwrap(), None);
        assert_eq!(range(&with_range("bytes=2-4"), 10).unwrap(), Some((2, 5)));
        assert_eq!(range(&with_range("bytes=7-"), 10).unwrap(), Some((7, 10)));
        assert_eq!(range(&with_range("bytes=-3"), 10).unwrap(), Some((7, 10)));
        assert_eq!(
            range(&with_range("bytes=5-100"), 10).unwrap(),
            Some((5, 10))
        );
        for bad in [
            "bytes=10-",
            "bytes=4-2",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,3-4",
        ] {
            assert_eq!(
                range(&with_range(bad), 10).unwrap_err().status,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{bad}"
            );
        }
    }
}
