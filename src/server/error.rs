//! Errors as HTTP answers: a library error becomes a status and a JSON body.
//!
//! The body is Glance's shape as its clients parse it: one top-level object whose `message`
//! they print (`{"error": {"code": 404, "title": "Not Found", "message": "..."}}`), plus ims's
//! own rule code (`ims_code`) when a rule refused. A flat body of strings would crash
//! glanceclient's parser, which calls `.get` on every top-level value. The IMS native API's
//! `{"error": {"code": "IMG.xxxx"}}` form is built by its own module.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::register::{RuleCode, ServiceError};

/// An error answer: a status and a message.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The rule's code, when a rule of the service refused.
    pub rule: Option<RuleCode>,
    /// Extra headers (`Accept-Patch` on a 415 to a PATCH, `WWW-Authenticate` on a 401).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// The result of a handler.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    /// An answer of `status` saying `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            rule: None,
            headers: Vec::new(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no valid token.
    pub fn unauthorized() -> ApiError {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "This server could not verify that you are authorized to access the resource: send a valid X-Auth-Token",
        );
        e.headers.push((
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Keystone uri=\"\""),
        ));
        e
    }

    /// 403: the caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: no such thing, or not one the caller may see.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the resource is not in a state that allows this.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 500: a fault of the server.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The same answer with another status.
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// The same answer with one more header.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }
}

/// The status of a rule's refusal, as Glance answers the same condition: a limit or quota is
/// 413, a state that forbids the call 409, a right the caller lacks 403, an image it may not
/// see 404, anything the caller must change in its request 400.
pub fn rule_status(code: RuleCode) -> StatusCode {
    use RuleCode::*;
    match code {
        ImageNotFound | NotMember => StatusCode::NOT_FOUND,
        NotOwner
        | NotOperator
        | ImageProtected
        | FieldImmutable
        | EncryptedNotShareable
        | FullEcsNotShareable
        | MarketplaceNotShareable
        | PublicNotShareable
        | ShareToOwner
        | MemberRegionMismatch => StatusCode::FORBIDDEN,
        QuotaExceeded
        | FileTooLarge
        | VirtualSizeTooLarge
        | TooManyMembers
        | TooManyFullEcsMembers
        | TooManyTags
        | TooManyDataImages
        | TooManyDataDisks => StatusCode::PAYLOAD_TOO_LARGE,
        ImageNotActive | AlreadyPublished | NotPublished | SharedNotPublishable => {
            StatusCode::CONFLICT
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match &e {
            ServiceError::Rule { code, message } => ApiError {
                status: rule_status(*code),
                message: message.clone(),
                rule: Some(*code),
                headers: Vec::new(),
            },
            ServiceError::Image(inner) => {
                let status = match inner {
                    crate::Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
                    crate::Error::LimitExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    crate::Error::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
                    crate::Error::Malformed { .. }
                    | crate::Error::Truncated { .. }
                    | crate::Error::Unsupported { .. }
                    | crate::Error::ExternalReference { .. }
                    | crate::Error::Ambiguous { .. } => StatusCode::BAD_REQUEST,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                ApiError::new(status, inner.to_string())
            }
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        ApiError::from(ServiceError::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), message = %self.message, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), message = %self.message, "request refused");
        }
        let mut error = json!({
            "code": self.status.as_u16(),
            "title": self.status.canonical_reason().unwrap_or(""),
            "message": self.message,
        });
        if let Some(code) = self.rule {
            error["ims_code"] = json!(code.as_str());
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_map_to_glance_statuses() {
        assert_eq!(rule_status(RuleCode::ImageNotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            rule_status(RuleCode::TooManyMembers),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            rule_status(RuleCode::EncryptedNotShareable),
            StatusCode::FORBIDDEN
        );
        assert_eq!(rule_status(RuleCode::ImageNotActive), StatusCode::CONFLICT);
        assert_eq!(rule_status(RuleCode::NameTooLong), StatusCode::BAD_REQUEST);
        let e = ApiError::from(ServiceError::rule(RuleCode::QuotaExceeded, "full"));
        assert_eq!(
            (e.status, e.rule),
            (StatusCode::PAYLOAD_TOO_LARGE, Some(RuleCode::QuotaExceeded))
        );
    }
}
