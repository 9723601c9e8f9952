//! Why a request could not be proxied, and the short page the visitor sees instead.
//!
//! Errors are labelled by where they come from, as pingora does: downstream (the client
//! asked for something we cannot serve, a 4xx), upstream (the app failed us, a 502 or a
//! 504) and internal (our own fault, a 500). The label decides the status and how loudly
//! to log.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE,
};
use http::{Method, Response, StatusCode, Uri};
use http_body_util::Full;

use crate::static_files;

/// Who is to blame for a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The client: a 4xx, nothing for the operator to fix.
    Downstream,
    /// The app: a 502, the operator should look at the app.
    Upstream,
    /// The router itself: a 500, a bug.
    Internal,
}

/// A request that was answered by the router instead of an app.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// The request has no `Host` header and no absolute URI.
    MissingHost,
    /// The `Host` header is repeated, not text, or not a host name.
    InvalidHost,
    /// No app is routed at this (normalised) host.
    UnknownHost { host: String },
    /// `CONNECT` would turn the router into an open tunnel.
    ConnectNotAllowed,
    /// The request target is neither a path nor an absolute URI (`OPTIONS *`).
    UnsupportedTarget,
    /// A static path whose segments could climb out of its directory or confuse a file
    /// system (`..`, a backslash, NUL).
    PathNotAllowed,
    /// Neither the app's files nor its catch-all have anything at this path, and no
    /// instance runs to ask; or the path is one that is never served (`.git`).
    NotFound { app: String },
    /// A method other than GET or HEAD for a file the router serves itself.
    MethodNotAllowed,
    /// A `Range` header none of whose ranges overlaps the file, which has `len` bytes.
    RangeNotSatisfiable { len: u64 },
    /// The request body is (or grew) larger than the app's limit.
    BodyTooLarge { limit: u64 },
    /// The request body could not be read: bad chunked framing, or the client went away.
    BadRequestBody,
    /// The visitor's address may not reach the app (`BERTH_ALLOW_IPS`,
    /// `NGINX_CLOUDFLARE_ACL`); the reason is for the visitor.
    Forbidden { reason: String },
    /// The app asks for a user name and password, and the request has none that fit.
    Unauthorized { challenge: HeaderValue },
    /// The app is routed but has no running instance.
    AppNotRunning { app: String },
    /// No instance of the app gave a response; `cause` is the last error seen.
    AppDidNotAnswer { app: String, cause: String },
    /// The app did not start answering within its response timeout.
    AppTimedOut { app: String, after: Duration },
    /// A listener serves one app by port, and no app of that name is in the table.
    UnknownApp { app: String },
    /// Something that should not happen; the text is for the log only.
    Internal { cause: String },
}

impl ProxyError {
    pub(crate) fn source(&self) -> Source {
        match self {
            ProxyError::MissingHost
            | ProxyError::InvalidHost
            | ProxyError::UnknownHost { .. }
            | ProxyError::ConnectNotAllowed
            | ProxyError::UnsupportedTarget
            | ProxyError::PathNotAllowed
            | ProxyError::NotFound { .. }
            | ProxyError::MethodNotAllowed
            | ProxyError::RangeNotSatisfiable { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequestBody
            | ProxyError::Forbidden { .. }
            | ProxyError::Unauthorized { .. } => Source::Downstream,
            ProxyError::AppNotRunning { .. }
            | ProxyError::AppDidNotAnswer { .. }
            | ProxyError::AppTimedOut { .. }
            | ProxyError::UnknownApp { .. } => Source::Upstream,
            ProxyError::Internal { .. } => Source::Internal,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost
            | ProxyError::InvalidHost
            | ProxyError::UnsupportedTarget
            | ProxyError::PathNotAllowed
            | ProxyError::BadRequestBody => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost { .. } | ProxyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::ConnectNotAllowed | ProxyError::MethodNotAllowed => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            ProxyError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::AppNotRunning { .. }
            | ProxyError::AppDidNotAnswer { .. }
            | ProxyError::UnknownApp { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::AppTimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the visitor is told, as (message, hint). Internal causes stay in the log.
    fn explanation(&self) -> (String, Option<String>) {
        match self {
            ProxyError::MissingHost => ("the request has no Host header".into(), None),
            ProxyError::InvalidHost => ("the request's Host header is not valid".into(), None),
            ProxyError::UnknownHost { host } => (
                format!("no app is served at {host}"),
                Some("check the name, or add it with NGINX_SERVER_NAME in the app's ENV".into()),
            ),
            ProxyError::ConnectNotAllowed => ("CONNECT is not supported".into(), None),
            ProxyError::UnsupportedTarget => ("the request target is not supported".into(), None),
            ProxyError::PathNotAllowed => ("the request path is not allowed".into(), None),
            ProxyError::NotFound { app } => {
                (format!("the app {app} has nothing at this address"), None)
            }
            ProxyError::MethodNotAllowed => ("this address only answers GET and HEAD".into(), None),
            ProxyError::RangeNotSatisfiable { len } => (
                format!("the requested range lies outside the file, which has {len} bytes"),
                Some("ask for bytes that start before the end of the file, or for the whole file without a Range header".into()),
            ),
            ProxyError::BodyTooLarge { limit } => {
                (format!("the request body is larger than the {limit} bytes allowed"), None)
            }
            ProxyError::BadRequestBody => ("the request body could not be read".into(), None),
            ProxyError::Forbidden { reason } => (reason.clone(), None),
            ProxyError::Unauthorized { .. } => {
                ("this app asks for a user name and password".into(), None)
            }
            ProxyError::AppNotRunning { app } => (
                format!("the app {app} is not running"),
                Some(format!(
                    "start it with `berth start {app}`, or see why with `berth logs {app}`"
                )),
            ),
            ProxyError::AppDidNotAnswer { app, .. } => {
                (format!("the app {app} did not answer"), Some(format!("see `berth logs {app}`")))
            }
            ProxyError::AppTimedOut { app, after } => (
                format!("the app {app} did not answer within {} seconds", after.as_secs_f64()),
                Some(format!("see `berth logs {app}`")),
            ),
            ProxyError::UnknownApp { app } => (
                format!("no app named {app} is served here"),
                Some(format!("deploy {app}, or check which app this port is for")),
            ),
            ProxyError::Internal { .. } => {
                ("the router failed to handle this request".into(), None)
            }
        }
    }

    /// Whether the connection has to close after this answer: the request body was left
    /// unread (or unreadable), so the next request on it could not be found.
    pub(crate) fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::BodyTooLarge { .. } | ProxyError::BadRequestBody)
    }

    /// Logs the failure at a level that matches its source: a visitor mistyping a name is
    /// routine, an app that does not answer is worth an operator's attention.
    pub(crate) fn log(
        &self,
        method: &Method,
        uri: &Uri,
        peer: SocketAddr,
        request_id: &HeaderValue,
    ) {
        let status = self.status().as_u16();
        let request_id = request_id.to_str().unwrap_or_default();
        match self.source() {
            Source::Downstream => {
                tracing::debug!(%method, %uri, %peer, status, request_id, "downstream error: {self}");
            }
            Source::Upstream => {
                tracing::warn!(%method, %uri, %peer, status, request_id, "upstream error: {self}");
            }
            Source::Internal => {
                tracing::warn!(%method, %uri, %peer, status, request_id, "internal error: {self}");
            }
        }
    }

    /// The page served in place of the app's response: a short HTML page, or for a refusal
    /// (401, 403) one line of text, which is what scripts and `curl` users read.
    pub(crate) fn to_response(&self) -> Response<Full<Bytes>> {
        let status = self.status();
        let (message, hint) = self.explanation();
        if let ProxyError::Forbidden { .. } | ProxyError::Unauthorized { .. } = self {
            let text = format!(
                "{} {}: {message}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("Error").to_lowercase()
            );
            let mut response = Response::new(Full::new(Bytes::from(text)));
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let ProxyError::Unauthorized { challenge } = self {
                headers.insert(WWW_AUTHENTICATE, challenge.clone());
            }
            return response;
        }
        let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
        let mut page = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
             <body>\n<h1>{title}</h1>\n<p>{}</p>\n",
            escape_html(&message)
        );
        if let Some(hint) = hint {
            page.push_str(&format!("<p>{}</p>\n", escape_html(&hint)));
        }
        page.push_str("</body></html>\n");

        let mut response = Response::new(Full::new(Bytes::from(page)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        // The page describes this moment (the app may be up a second later), so it must not
        // be cached by the browser or anything in between.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // RFC 9110 section 15.5.6: a 405 lists the methods that would have worked.
        if let ProxyError::MethodNotAllowed = self {
            headers.insert(ALLOW, static_files::allow_header());
        }
        // RFC 9110 section 15.5.17: a 416 says how long the file is.
        if let ProxyError::RangeNotSatisfiable { len } = self
            && let Ok(value) = HeaderValue::try_from(format!("bytes */{len}"))
        {
            headers.insert(CONTENT_RANGE, value);
        }
        if self.closes_connection() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::AppDidNotAnswer { app, cause } => {
                write!(f, "the app {app} did not answer: {cause}")
            }
            ProxyError::Internal { cause } => write!(f, "{cause}"),
            other => f.write_str(&other.explanation().0),
        }
    }
}

/// Host names are validated before they reach a page, but app names are not ours to trust.
/// The text only ever lands between tags, never in an attribute, so quotes can stay.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn page(error: ProxyError) -> (StatusCode, String) {
        let response = error.to_response();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn pages_carry_status_message_and_hint() {
        let (status, body) = page(ProxyError::UnknownHost { host: "x.example.com".into() }).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("<title>404 Not Found</title>"), "{body}");
        assert!(body.contains("no app is served at x.example.com"), "{body}");
        assert!(body.contains("NGINX_SERVER_NAME in the app's ENV"), "{body}");

        let (status, body) = page(ProxyError::AppNotRunning { app: "blog".into() }).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.contains("the app blog is not running"), "{body}");
        assert!(body.contains("berth start blog") && body.contains("berth logs blog"), "{body}");

        let response = ProxyError::MethodNotAllowed.to_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET, HEAD");

        let response = ProxyError::RangeNotSatisfiable { len: 20 }.to_response();
        assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(response.headers()[CONTENT_RANGE], "bytes */20");
        let (_, body) = page(ProxyError::RangeNotSatisfiable { len: 20 }).await;
        assert!(body.contains("outside the file, which has 20 bytes"), "{body}");

        let (status, body) = page(ProxyError::NotFound { app: "site".into() }).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("the app site has nothing at this address"), "{body}");

        let response = ProxyError::BodyTooLarge { limit: 10 }.to_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[CONNECTION], "close");

        let after = Duration::from_millis(1500);
        let (status, body) = page(ProxyError::AppTimedOut { app: "slow".into(), after }).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(body.contains("the app slow did not answer within 1.5 seconds"), "{body}");

        let (status, body) = page(ProxyError::UnknownApp { app: "gone".into() }).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.contains("no app named gone is served here"), "{body}");

        let error = ProxyError::Forbidden { reason: "your address 192.0.2.1 may not".into() };
        let response = error.to_response();
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        let (status, body) = page(error).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::FORBIDDEN, "403 forbidden: your address 192.0.2.1 may not\n")
        );

        let challenge = HeaderValue::from_static("Basic realm=\"blog\"");
        let response = ProxyError::Unauthorized { challenge: challenge.clone() }.to_response();
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Basic realm=\"blog\"");
        let (status, body) = page(ProxyError::Unauthorized { challenge }).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, "401 unauthorized: this app asks for a user name and password\n");

        let error = ProxyError::Internal { cause: "secret detail".into() };
        let (status, body) = page(error).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.contains("secret detail"), "{body}");
    }

    #[test]
    fn sources_map_to_status_classes() {
        let cases = [
            ProxyError::MissingHost,
            ProxyError::InvalidHost,
            ProxyError::UnknownHost { host: "h".into() },
            ProxyError::ConnectNotAllowed,
            ProxyError::UnsupportedTarget,
            ProxyError::PathNotAllowed,
            ProxyError::NotFound { app: "a".into() },
            ProxyError::MethodNotAllowed,
            ProxyError::RangeNotSatisfiable { len: 10 },
            ProxyError::BodyTooLarge { limit: 1 },
            ProxyError::BadRequestBody,
            ProxyError::Forbidden { reason: "r".into() },
            ProxyError::Unauthorized { challenge: HeaderValue::from_static("Basic") },
            ProxyError::AppNotRunning { app: "a".into() },
            ProxyError::AppDidNotAnswer { app: "a".into(), cause: "refused".into() },
            ProxyError::AppTimedOut { app: "a".into(), after: Duration::from_secs(1) },
            ProxyError::UnknownApp { app: "a".into() },
            ProxyError::Internal { cause: "bug".into() },
        ];
        for error in cases {
            let status = error.status();
            match error.source() {
                Source::Downstream => assert!(status.is_client_error(), "{error:?}"),
                Source::Upstream => assert!(
                    [StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT].contains(&status),
                    "{error:?}"
                ),
                Source::Internal => assert!(status.is_server_error(), "{error:?}"),
            }
        }
    }

    #[test]
    fn display_is_lower_case_and_keeps_the_cause_for_logs() {
        let error =
            ProxyError::AppDidNotAnswer { app: "a".into(), cause: "connection refused".into() };
        assert_eq!(error.to_string(), "the app a did not answer: connection refused");
        assert_eq!(ProxyError::MissingHost.to_string(), "the request has no Host header");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape_html("<b>&'\""), "&lt;b&gt;&amp;'\"");
    }
}
