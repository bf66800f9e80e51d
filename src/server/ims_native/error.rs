//! The IMS API's error answers: `{"error": {"code": "IMG.xxxx", "message": "..."}}` with the
//! status IMS gives the code (formats/ims-errors.md), and the helpers every handler uses to
//! get there: JSON bodies parsed into IMG.0001 on failure, blocking library calls whose
//! refusals carry their rule's IMG code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::register::ims_errors::{self, ImgCode, img_error};
use crate::register::{Ims, ServiceError};
use crate::server::state::AppState;

/// An IMS error answer.
#[derive(Debug)]
pub struct ImsError {
    /// The HTTP status.
    pub status: StatusCode,
    /// `IMG.xxxx`.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

/// The result of an IMS handler.
pub type ImsResult<T> = std::result::Result<T, ImsError>;

impl ImsError {
    /// `code` with its own status, saying `message`.
    pub fn new(code: ImgCode, message: impl Into<String>) -> ImsError {
        ImsError {
            status: StatusCode::from_u16(code.http_status).unwrap_or(StatusCode::BAD_REQUEST),
            code: code.code,
            message: message.into(),
        }
    }

    /// IMG.0001: the body or a parameter is malformed.
    pub fn bad_request(message: impl Into<String>) -> ImsError {
        ImsError::new(ims_errors::BAD_BODY, message)
    }

    /// 404 IMG.0027: no such image (or job) the caller may see.
    pub fn not_found(message: impl Into<String>) -> ImsError {
        ImsError::new(ims_errors::IMAGE_UNKNOWN, message)
    }
}

impl From<ServiceError> for ImsError {
    fn from(e: ServiceError) -> ImsError {
        let (code, message) = img_error(&e, false);
        let mut out = ImsError::new(code, message);
        if let ServiceError::Image(inner) = &e {
            // A fault of the server is not the caller's to fix.
            out.status = match inner {
                crate::Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
                crate::Error::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
        }
        out
    }
}

impl From<crate::Error> for ImsError {
    fn from(e: crate::Error) -> ImsError {
        ImsError::from(ServiceError::from(e))
    }
}

impl IntoResponse for ImsError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), code = self.code, message = %self.message, "request refused");
        }
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

/// A JSON body as `T`: an empty body is IMG.0007 ("empty body"), anything that does not parse
/// IMG.0001 saying why.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> ImsResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ImsError::new(
            ims_errors::EMPTY_BODY,
            "the request body is empty",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ImsError::bad_request(format!("the request body: {e}")))
}

/// Runs a blocking library call on tokio's blocking pool; a refusal becomes its IMG answer.
pub async fn blocking<T, F>(state: &AppState, f: F) -> ImsResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Ims) -> crate::register::Result<T> + Send + 'static,
{
    let ims = state.ims.clone();
    tokio::task::spawn_blocking(move || f(&ims))
        .await
        .map_err(|e| {
            ImsError::new(ims_errors::UNKNOWN, format!("a library call failed: {e}"))
                .with_status(StatusCode::INTERNAL_SERVER_ERROR)
        })?
        .map_err(ImsError::from)
}

impl ImsError {
    /// The same answer with another status.
    pub fn with_status(mut self, status: StatusCode) -> ImsError {
        self.status = status;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::RuleCode;

    #[test]
    fn refusals_answer_their_img_code_and_status() {
        let e = ImsError::from(ServiceError::rule(RuleCode::QuotaExceeded, "full"));
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "IMG.0015"));
        let e = ImsError::from(ServiceError::rule(RuleCode::ImageNotFound, "x"));
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "IMG.0027"));
        let e = ImsError::from(ServiceError::rule(RuleCode::NotOperator, "x"));
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let e = ImsError::from(crate::Error::io("read", std::io::Error::other("disk")));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::INTERNAL_SERVER_ERROR, "IMG.0061")
        );
    }

    #[test]
    fn bodies_are_parsed_or_refused_with_their_code() {
        let v: serde_json::Value = parse_body(b"{\"a\": 1}").unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(
            parse_body::<serde_json::Value>(b"  ").unwrap_err().code,
            "IMG.0007"
        );
        assert_eq!(
            parse_body::<serde_json::Value>(b"{").unwrap_err().code,
            "IMG.0001"
        );
    }
}
