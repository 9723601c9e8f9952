//! One request's trip: find the app by host, answer from its static files or forward to one
//! of its instances, relay the answer.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{BoxError, InFlightGuard, ResponseBody};
use crate::error::ProxyError;
use crate::headers::{remove_hop_by_hop, set_forwarded};
use crate::static_files;
use crate::table::{Backend, SharedRoutes, normalize_host};

/// How long to wait for an instance to accept a connection before trying the next one. An
/// instance on the same machine answers in microseconds or refuses at once; waiting longer
/// only means a wedged process is holding the visitor.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle keep-alive connection to an app is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What every connection shares: the route table and the pool of connections to the apps.
pub(crate) struct Proxy {
    routes: SharedRoutes,
    client: Client<HttpConnector, LentBody>,
}

impl Proxy {
    pub(crate) fn new(routes: SharedRoutes) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Proxy { routes, client }
    }

    /// Answers one request from the visitor at `peer`; failures become error pages.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        match self.forward(request, peer).await {
            Ok(response) => response,
            Err(error) => {
                error.log(&method, &uri, peer);
                error.to_response().map(ResponseBody::Page)
            }
        }
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if request.method() == Method::CONNECT {
            return Err(ProxyError::ConnectNotAllowed);
        }
        let original_host = original_host(&request)?;
        let host =
            original_host.to_str().ok().and_then(normalize_host).ok_or(ProxyError::InvalidHost)?;
        // Only the backend is kept: arc-swap guards are meant to be short-lived, and holding
        // one across the awaits below would pin an old table for the whole request.
        let backend = self.routes.load().lookup_normalized(&host).cloned();
        let backend = backend.ok_or(ProxyError::UnknownHost { host })?;

        let (method, uri, headers) = (request.method(), request.uri(), request.headers());
        if let Some(response) =
            static_files::serve_from_mounts(&backend, method, uri, headers).await?
        {
            return Ok(response);
        }
        if !backend.addrs.is_empty() {
            return self.forward_to_instances(request, peer, &backend, original_host).await;
        }
        if let Some(catch_all) = backend.catch_all() {
            return static_files::serve_catch_all(&backend, catch_all, method, headers).await;
        }
        // An app that serves files has answered every path it has; one that does not is
        // simply stopped, and the operator should hear about that.
        if backend.static_mounts().is_empty() {
            Err(ProxyError::AppNotRunning { app: backend.app.clone() })
        } else {
            Err(ProxyError::NotFound { app: backend.app.clone() })
        }
    }

    /// Forwards to the backend's instances, round-robin, moving on to the next one while
    /// connections are refused.
    async fn forward_to_instances(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        backend: &Backend,
        original_host: HeaderValue,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let path_and_query = match request.uri().path_and_query() {
            Some(path_and_query) if path_and_query.as_str().starts_with('/') => {
                path_and_query.clone()
            }
            Some(_) => return Err(ProxyError::UnsupportedTarget),
            None => PathAndQuery::from_static("/"),
        };

        // WebSocket upgrades are not proxied yet: `remove_hop_by_hop` drops `Upgrade`, so the
        // app answers a plain request. Supporting them means branching here on an upgrade
        // request, keeping its `Upgrade` header and joining `hyper::upgrade::on` on both sides.
        let (parts, body) = request.into_parts();
        let method = parts.method;
        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        set_forwarded(&mut headers, peer.ip(), &original_host);
        // The app must see the name it was asked for, not the instance address the pooled
        // client would otherwise put there; for an absolute-form request this is the URI's
        // authority, which RFC 9112 says wins over any Host header.
        headers.insert(HOST, original_host);

        let body = BodySlot::new(body);
        let n_addrs = backend.addrs.len();
        let start = backend.next_start();
        let mut last_error = String::new();
        for offset in 0..n_addrs {
            let index = (start + offset) % n_addrs;
            let addr = backend.addrs[index];
            let guard = InFlightGuard::new(backend.in_flight(index));
            let uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(addr.to_string())
                .path_and_query(path_and_query.clone())
                .build()
                .map_err(|error| ProxyError::Internal {
                    cause: format!("cannot build the uri for instance {addr}: {error}"),
                })?;
            let is_last = offset + 1 == n_addrs;
            let mut upstream = Request::new(body.lend());
            *upstream.method_mut() = method.clone();
            *upstream.uri_mut() = uri;
            *upstream.headers_mut() =
                if is_last { std::mem::take(&mut headers) } else { headers.clone() };

            match self.client.request(upstream).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    remove_hop_by_hop(&mut parts.headers);
                    let status = parts.status.as_u16();
                    tracing::debug!(app = %backend.app, %addr, status, "proxied");
                    return Ok(Response::from_parts(
                        parts,
                        ResponseBody::App { body, _in_flight: guard },
                    ));
                }
                // Nothing reached the instance, so trying another one cannot do anything twice.
                Err(error) if error.is_connect() && body.is_unsent() => {
                    last_error = error_chain(&error);
                    tracing::debug!(app = %backend.app, %addr, "cannot connect: {last_error}");
                }
                Err(error) => {
                    return Err(ProxyError::AppDidNotAnswer {
                        app: backend.app.clone(),
                        cause: format!("instance {addr}: {}", error_chain(&error)),
                    });
                }
            }
        }
        Err(ProxyError::AppDidNotAnswer {
            app: backend.app.clone(),
            cause: format!("no instance accepted a connection (last: {last_error})"),
        })
    }
}

/// The host the visitor asked for, as sent: the URI's authority for an absolute-form
/// request, otherwise the one `Host` header.
fn original_host(request: &Request<Incoming>) -> Result<HeaderValue, ProxyError> {
    if let Some(authority) = request.uri().authority() {
        return HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::InvalidHost);
    }
    let mut values = request.headers().get_all(HOST).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(ProxyError::MissingHost),
        (Some(host), None) => Ok(host.clone()),
        // Two hosts mean two parties may each believe a different app was asked for
        // (RFC 9112 section 3.2 requires a 400).
        (Some(_), Some(_)) => Err(ProxyError::InvalidHost),
    }
}

/// The error and its causes on one line: hyper-util's own message is only "client error
/// (Connect)", and the useful part ("connection refused") is in the source chain.
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Holds the visitor's request body until an attempt to reach the app actually sends it.
///
/// The pooled client consumes the request it is given even when it never gets a
/// connection, and an `Incoming` body cannot be recreated, so with a plain
/// `Client<_, Incoming>` a refused connection would leave nothing to send to the next
/// instance. Each attempt gets a [`LentBody`] that takes the body out of this slot only
/// when hyper first polls it, which happens after the connection is up; after a connect
/// error the body is still here for the next attempt.
struct BodySlot {
    slot: Arc<Mutex<Option<Incoming>>>,
    is_end_stream: bool,
    size_hint: SizeHint,
}

impl BodySlot {
    fn new(body: Incoming) -> BodySlot {
        let is_end_stream = body.is_end_stream();
        let size_hint = body.size_hint();
        BodySlot { slot: Arc::new(Mutex::new(Some(body))), is_end_stream, size_hint }
    }

    fn lend(&self) -> LentBody {
        LentBody {
            slot: Arc::clone(&self.slot),
            taken: None,
            is_end_stream: self.is_end_stream,
            size_hint: self.size_hint,
        }
    }

    /// Whether no attempt has started sending the body, so another attempt may.
    fn is_unsent(&self) -> bool {
        lock(&self.slot).is_some()
    }
}

/// The request body as one attempt sees it; see [`BodySlot`].
pub(crate) struct LentBody {
    slot: Arc<Mutex<Option<Incoming>>>,
    taken: Option<Incoming>,
    /// Answered before the body is taken, because hyper asks while writing the request
    /// head to choose between `Content-Length` and chunked framing.
    is_end_stream: bool,
    size_hint: SizeHint,
}

impl Body for LentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            this.taken = lock(&this.slot).take();
        }
        match this.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            // Only one attempt can ever get past connecting, so this means a bug; an error
            // makes hyper abort the request rather than send it with an empty body.
            None => Poll::Ready(Some(Err("the request body was already sent elsewhere".into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(body) => body.is_end_stream(),
            None => self.is_end_stream,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(body) => body.size_hint(),
            None => self.size_hint,
        }
    }
}

/// A panic while holding the slot cannot leave the `Option` half-changed, so a poisoned
/// lock is still safe to use.
fn lock(slot: &Mutex<Option<Incoming>>) -> MutexGuard<'_, Option<Incoming>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|layer| layer as &(dyn StdError + 'static))
        }
    }

    #[test]
    fn error_chain_joins_every_cause() {
        let error = Layer(
            "client error (Connect)",
            Some(Box::new(Layer("tcp connect error", Some(Box::new(Layer("refused", None)))))),
        );
        assert_eq!(error_chain(&error), "client error (Connect): tcp connect error: refused");
    }

    // Proxying itself, including failover with a request body, is tested through real
    // sockets in `server.rs`, because an `Incoming` body only comes from a connection.
}
