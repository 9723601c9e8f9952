//! API tokens for the TCP API: random, shown once, kept only as a SHA-256 hash. A request
//! without a valid bearer token gets 401 and nothing else.

use std::io::Read;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::state::Daemon;

/// A new token: 32 random bytes from the kernel, as hex, with a prefix that says what it is.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("berth_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Lets a request through when it carries a known bearer token, naming the token as who
/// asks; anything else gets a bare 401.
pub async fn require_token(
    State(daemon): State<Arc<Daemon>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let name = token.and_then(|t| daemon.store().token_name(&hash(t)).ok().flatten());
    match name {
        Some(name) => {
            if let Ok(value) = HeaderValue::from_str(&format!("api:{name}")) {
                request.headers_mut().insert(berth_api::WHO_HEADER, value);
            }
            next.run(request).await
        }
        None => {
            let mut response = StatusCode::UNAUTHORIZED.into_response();
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("berth_") && a.len() == 6 + 64);
        assert_eq!(hash("x"), "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881");
    }
}
