//! Identity: the `X-Auth-Token` header checked against the tokens file.
//!
//! The file (`--tokens FILE`) is JSON, `{"TOKEN": {"project": "P", "roles": ["admin"|"member"]}}`.
//! A token is looked up by comparing its SHA-256 digest with every known token's digest in
//! constant time, all of them every time, so neither the answer's timing nor an early exit
//! tells how much of a guess was right. A request without a valid token is answered 401
//! before any handler runs; a valid one carries its [`Caller`] to the handlers.

use std::collections::HashMap;
use std::path::Path;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::register::Scope;

/// One entry of the tokens file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The project the token acts for.
    pub project: String,
    /// Its roles: `admin` (operator rights: public images, any project's protected images) or
    /// `member`.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The known tokens, by SHA-256 digest.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], TokenEntry)>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// The tokens of a tokens file's text.
    pub fn parse(text: &str) -> crate::Result<Tokens> {
        let map: HashMap<String, TokenEntry> = serde_json::from_str(text).map_err(|e| {
            crate::Error::InvalidArgument(format!(
                "tokens file: {e} (expected {{\"TOKEN\": {{\"project\": \"P\", \"roles\": [\"admin\"|\"member\"]}}}})"
            ))
        })?;
        let mut entries = Vec::with_capacity(map.len());
        for (token, entry) in map {
            if token.is_empty() || entry.project.is_empty() {
                return Err(crate::Error::InvalidArgument(
                    "tokens file: a token and its project must not be empty".into(),
                ));
            }
            if let Some(role) = entry.roles.iter().find(|r| *r != "admin" && *r != "member") {
                return Err(crate::Error::InvalidArgument(format!(
                    "tokens file: unknown role '{role}' (admin, member)"
                )));
            }
            entries.push((digest(token.as_bytes()), entry));
        }
        Ok(Tokens { entries })
    }

    /// The tokens of the file at `path`.
    pub fn load(path: &Path) -> crate::Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::io("read the tokens file", e).in_file(path))?;
        Tokens::parse(&text)
    }

    /// The entry of `token`, compared with every known token in constant time.
    pub fn find(&self, token: &[u8]) -> Option<&TokenEntry> {
        let wanted = digest(token);
        let mut found = None;
        for (known, entry) in &self.entries {
            if bool::from(known.ct_eq(&wanted)) {
                found = Some(entry);
            }
        }
        found
    }
}

/// Who asks: the token's project and rights. Handlers take it as an argument; it exists only
/// for requests that passed [`require_token`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The project.
    pub project: String,
    /// Has the `admin` role.
    pub admin: bool,
    /// The project asking in the server's region, with operator rights for `admin`.
    pub scope: Scope,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }
}

/// The paths any client may ask without a token: liveness, the API description and the
/// version documents clients read before they authenticate.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/versions" | "/healthz" | "/openapi.json")
}

/// The middleware: 401 unless the request carries a known `X-Auth-Token` (or asks a public
/// path); otherwise the request goes on with its [`Caller`], asking in `region`.
pub async fn require_token(
    tokens: Arc<Tokens>,
    region: Arc<str>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get("x-auth-token")
        .map(|v| v.as_bytes().to_vec());
    let entry = token.as_deref().and_then(|t| tokens.find(t));
    match entry {
        Some(entry) => {
            let admin = entry.roles.iter().any(|r| r == "admin");
            let mut scope = Scope::new(&entry.project, &region);
            if admin {
                scope = scope.operator();
            }
            tracing::Span::current().record("project", entry.project.as_str());
            req.extensions_mut().insert(Caller {
                project: entry.project.clone(),
                admin,
                scope,
            });
            next.run(req).await
        }
        None if is_public(req.uri().path()) => next.run(req).await,
        None => ApiError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_only_whole() {
        let t = Tokens::parse(
            r#"{"s3cret": {"project": "p1", "roles": ["admin"]}, "other": {"project": "p2", "roles": ["member"]}}"#,
        )
        .unwrap();
        assert_eq!(t.find(b"s3cret").unwrap().project, "p1");
        assert_eq!(t.find(b"other").unwrap().project, "p2");
        assert!(t.find(b"s3cre").is_none());
        assert!(t.find(b"s3cret ").is_none());
        assert!(t.find(b"").is_none());
    }

    #[test]
    fn bad_tokens_files_are_refused() {
        assert!(Tokens::parse("[]").is_err());
        assert!(Tokens::parse(r#"{"t": {"project": "p", "roles": ["root"]}}"#).is_err());
        assert!(Tokens::parse(r#"{"": {"project": "p"}}"#).is_err());
        assert!(Tokens::parse(r#"{"t": {"project": "p", "extra": 1}}"#).is_err());
    }
}
