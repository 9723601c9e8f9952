//! One request's trip: find the app (by `X-App` header, path-routed app, host, or the
//! listener's one app), answer from its static files or its cache, or forward to its least
//! busy instance, relay the answer, and for a WebSocket handshake join the two upgraded
//! connections. The app's limits, HTTPS-only redirect, access log and cache apply here.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, LOCATION, REFERER, STRICT_TRANSPORT_SECURITY,
    UPGRADE, USER_AGENT,
};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::access_log::AccessEntry;
use crate::balance::{PassiveHealth, UNHEALTHY_FOR, attempt_order};
use crate::body::{BoxError, InFlightGuard, ResponseBody};
use crate::cache::{CacheMiss, Lookup, X_CACHE};
use crate::error::ProxyError;
use crate::h1::RequestHead;
use crate::h1_server::{PendingUpgrade, RequestBody};
use crate::headers::{
    Forwarding, X_APP, X_REQUEST_ID, is_set_by_router, keep_upgrade, remove_hop_by_hop, request_id,
    websocket_upgrade, write_forwarding,
};
use crate::limits::{BodyTooLarge, ClientBodyError, discard_refused_body, find_cause};
use crate::server::ACME_CHALLENGE_PREFIX;
use crate::static_files;
use crate::table::{Backend, RouteKind, SharedRoutes, normalize_host_cow};
use crate::upstream::{UpstreamBody, Upstreams};

/// What HTTPS-only apps tell browsers: use HTTPS for a year (the usual value, and the
/// minimum for preload lists).
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// The visitor's side of one connection, as the accept loop knows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downstream {
    /// The visitor's address.
    pub(crate) peer: SocketAddr,
    /// The address the visitor connected to, if the accept loop passes it on: its port is
    /// the `X-Forwarded-Port`. Without it the port in the `Host` header is used, or the
    /// scheme's default.
    pub(crate) local: Option<SocketAddr>,
    /// Whether the visitor came over TLS, which makes the forwarded proto `https`.
    pub(crate) tls: bool,
}

impl Downstream {
    /// A plain-HTTP connection from `peer` to an address the caller did not say.
    pub(crate) fn plain(peer: SocketAddr) -> Downstream {
        Downstream { peer, local: None, tls: false }
    }

    fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The port the visitor connected to, for `X-Forwarded-Port`.
    fn port(&self, original_host: &HeaderValue) -> u16 {
        match self.local {
            Some(local) => local.port(),
            None => host_port(original_host).unwrap_or(if self.tls { 443 } else { 80 }),
        }
    }
}

/// The port in a `Host` value (`example.com:8080`, `[::1]:8080`), if it names one.
fn host_port(host: &HeaderValue) -> Option<u16> {
    // Byte by byte: this runs for every plain-HTTP request.
    let host = host.as_bytes();
    let colon = host.iter().rposition(|&b| b == b':' || b == b']')?;
    let digits = (host[colon] == b':').then(|| &host[colon + 1..])?;
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    u16::try_from(digits.iter().fold(0u32, |n, &digit| n * 10 + u32::from(digit - b'0'))).ok()
}

/// What every connection shares: the route table, the pool of connections to the apps,
/// and which instances recently refused connections.
pub(crate) struct Proxy {
    routes: SharedRoutes,
    upstreams: Upstreams,
    health: PassiveHealth,
    /// Set when the listener serves one app whatever the host; see [`Proxy::for_app`].
    fixed_app: Option<FixedApp>,
}

/// The app a by-port listener serves.
struct FixedApp {
    name: String,
    /// Stands in for a missing `Host` header: the listener's own address.
    fallback_host: HeaderValue,
}

/// Where a routed request goes and what it is told on the way.
struct Target<'a> {
    backend: &'a Backend,
    /// The visitor's address, for the forwarding headers.
    client: IpAddr,
    original_host: HeaderValue,
    /// Already without the prefix, when the app was found by its path.
    path_and_query: PathAndQuery,
    /// `/APP` when the app was found by the first segment of the path.
    prefix: Option<String>,
    request_id: &'a HeaderValue,
    cache: CacheUse,
    /// When the request came in: the response timeout counts from here.
    started: Instant,
}

/// What the cache makes of a request that goes to the app.
enum CacheUse {
    /// Not under a cached prefix (or no cache): nothing to say.
    Off,
    /// Cacheable but for the visitor's credentials.
    Bypass,
    /// Not in the cache; the response may be stored.
    Miss(CacheMiss),
}

/// What the access log needs of a request, taken before the request is consumed.
struct RequestSummary {
    started: Instant,
    method: Method,
    uri: Uri,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl Proxy {
    pub(crate) fn new(routes: SharedRoutes) -> Proxy {
        Proxy::with_unhealthy_for(routes, UNHEALTHY_FOR)
    }

    /// A proxy that tries an instance which refused a connection only after the others for
    /// `unhealthy_for`; tests shorten or lengthen the window so that they need not wait on it.
    pub(crate) fn with_unhealthy_for(routes: SharedRoutes, unhealthy_for: Duration) -> Proxy {
        Proxy {
            routes,
            upstreams: Upstreams::default(),
            health: PassiveHealth::new(unhealthy_for),
            fixed_app: None,
        }
    }

    /// Starts letting go of pooled connections nobody needs, even with no traffic (see
    /// `Upstreams::sweep_in_background`).
    pub(crate) fn sweep_in_background(&self) {
        self.upstreams.sweep_in_background();
    }

    /// The same proxy sending every request to the app named `app`, as if it carried
    /// `X-App: app`, whatever its host; a request without a `Host` is taken to have asked
    /// for `local` (the listener's address).
    pub(crate) fn for_app(self, app: String, local: SocketAddr) -> Proxy {
        let fallback_host = HeaderValue::try_from(local.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Proxy { fixed_app: Some(FixedApp { name: app, fallback_host }), ..self }
    }

    /// Answers one request from the visitor at `peer` on a plain connection; failures
    /// become error pages. [`Proxy::handle_from`] also takes the connection's local address.
    pub(crate) async fn handle(
        &self,
        request: Request<RequestBody>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        self.handle_from(request, Downstream::plain(peer)).await
    }

    /// Answers one request that came in on `downstream`; failures become error pages.
    ///
    /// Every response, the router's own pages included, carries the request's
    /// `X-Request-Id`, which the app was sent too. Once a request has found its app, the
    /// app's access log gets its line when the response head is ready.
    pub(crate) async fn handle_from(
        &self,
        request: Request<RequestBody>,
        downstream: Downstream,
    ) -> Response<ResponseBody> {
        // `forward` adds the referer and user agent if the app turns out to log them.
        let mut summary = RequestSummary {
            started: Instant::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            referer: None,
            user_agent: None,
        };
        let request_id = request_id(request.headers());
        let mut routed = None;
        let mut client = downstream.peer.ip();
        let forwarded =
            self.forward(request, downstream, &request_id, &mut summary, &mut routed, &mut client);
        let mut response = match forwarded.await {
            Ok(response) => response,
            Err(error) => {
                error.log(&summary.method, &summary.uri, downstream.peer, &request_id);
                let mut response = error.to_response().map(ResponseBody::Page);
                // HTTP/2 has no connection-level headers; closing is hyper's business there.
                if summary.version >= Version::HTTP_2 {
                    response.headers_mut().remove(CONNECTION);
                }
                response
            }
        };
        if downstream.tls {
            // hyper writes HTTPS responses, from their map alone.
            let (mut parts, mut body) = response.into_parts();
            body.move_headers_into(&mut parts.headers);
            parts.headers.insert(X_REQUEST_ID, request_id.clone());
            response = Response::from_parts(parts, body);
        } else if let Some(id) = response.body_mut().attach_request_id(request_id.clone()) {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        if let Some(backend) = routed {
            if downstream.tls && backend.https_only() {
                response.headers_mut().entry(STRICT_TRANSPORT_SECURITY).or_insert(HSTS);
            }
            if let Some(log) = backend.access_log() {
                log.record(access_entry(summary, client, &response, request_id));
            }
        }
        response
    }

    /// Finds the request's app (recording it in `routed`, and in `summary` what its access
    /// log needs) and answers for it; `client` is the visitor's address, which the app's
    /// access rules may take from Cloudflare.
    async fn forward(
        &self,
        request: Request<RequestBody>,
        downstream: Downstream,
        request_id: &HeaderValue,
        summary: &mut RequestSummary,
        routed: &mut Option<Arc<Backend>>,
        client: &mut IpAddr,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if request.method() == Method::CONNECT {
            return Err(ProxyError::ConnectNotAllowed);
        }
        let path_and_query = match request.uri().path_and_query() {
            Some(path_and_query) if path_and_query.as_str().starts_with('/') => {
                path_and_query.clone()
            }
            Some(_) => return Err(ProxyError::UnsupportedTarget),
            None => PathAndQuery::from_static("/"),
        };
        let Routed { backend, kind, original_host } = self.route(&request, &path_and_query)?;
        *routed = Some(Arc::clone(&backend));
        // Only an access log reads these: for an app without one, two lookups saved.
        if backend.access_log().is_some() {
            summary.referer = request.headers().get(REFERER).cloned();
            summary.user_agent = request.headers().get(USER_AGENT).cloned();
        }

        if !backend.access().is_open() {
            *client = backend
                .access()
                .admit(downstream.peer.ip(), request.headers())
                .map_err(|refusal| ProxyError::Forbidden { reason: refusal.to_string() })?;
        }
        if backend.https_only()
            && !downstream.tls
            && !path_and_query.path().starts_with(ACME_CHALLENGE_PREFIX)
        {
            let host = self.host_name(&original_host);
            return Ok(redirect_to_https(request.method(), &host, &path_and_query));
        }
        // After the redirect, so that a password is only ever asked for over HTTPS there.
        if let Some(auth) = backend.basic_auth()
            && !auth.allows(request.headers()).await
        {
            return Err(ProxyError::Unauthorized { challenge: auth.challenge() });
        }
        // A body that announces its length is refused before anyone reads it; a chunked one
        // is counted as it is sent (see `LentBody`).
        let limit = backend.limits().max_body_bytes;
        if request.body().size_hint().lower() > limit {
            let (parts, body) = request.into_parts();
            discard_refused_body(&parts.headers, body).await;
            return Err(ProxyError::BodyTooLarge { limit });
        }

        // Built only for an app with a cache: most requests need no key.
        let cache_key = backend.cache().map(|_| {
            let host = self.host_name(&original_host);
            format!("{host}{path_and_query}")
        });
        let stripped_uri;
        let (prefix, app_path_and_query, uri) = if kind == RouteKind::Path {
            let prefix = format!("/{}", backend.app);
            let stripped = strip_path_prefix(&path_and_query, &prefix)?;
            stripped_uri = Uri::from(stripped.clone());
            (Some(prefix), stripped, &stripped_uri)
        } else {
            (None, path_and_query, request.uri())
        };

        let (method, headers) = (request.method(), request.headers());
        if let Some(mut response) =
            static_files::serve_from_mounts(&backend, method, uri, headers).await?
        {
            if let Some(prefix) = &prefix {
                prefix_location(&mut response, prefix);
            }
            return Ok(response);
        }
        let cache = match backend.cache() {
            None => CacheUse::Off,
            Some(cache) => {
                match cache.lookup(method, headers, uri.path(), cache_key.unwrap_or_default()) {
                    Lookup::Hit(response) => return Ok(*response),
                    Lookup::Miss(miss) => CacheUse::Miss(miss),
                    Lookup::Bypass => CacheUse::Bypass,
                    Lookup::NotCached => CacheUse::Off,
                }
            }
        };
        if !backend.addrs.is_empty() {
            let target = Target {
                backend: &backend,
                client: *client,
                original_host,
                path_and_query: app_path_and_query,
                prefix,
                request_id,
                cache,
                started: summary.started,
            };
            // Boxed: this future is most of a request's state, and every future it would sit
            // inside (down to hyper's) is copied whole at least once as it starts.
            return Box::pin(self.forward_to_instances(request, downstream, target)).await;
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

    /// The request's app: the listener's one app, else by header, path or host (see
    /// [`crate::RouteTable`]).
    fn route(
        &self,
        request: &Request<RequestBody>,
        path_and_query: &PathAndQuery,
    ) -> Result<Routed, ProxyError> {
        if let Some(fixed) = &self.fixed_app {
            let original_host = match original_host(request) {
                Err(ProxyError::MissingHost) => fixed.fallback_host.clone(),
                other => other?,
            };
            let backend = self.routes.load().lookup_app(&fixed.name).cloned();
            let backend =
                backend.ok_or_else(|| ProxyError::UnknownApp { app: fixed.name.clone() })?;
            return Ok(Routed { backend, kind: RouteKind::Header, original_host });
        }
        let original_host = original_host(request)?;
        let Some(host) = original_host.to_str().ok().and_then(normalize_host_cow) else {
            return Err(ProxyError::InvalidHost);
        };
        let x_app = request.headers().get(X_APP).and_then(|value| value.to_str().ok());
        // Only the backend is kept: arc-swap guards are meant to be short-lived, and holding
        // one across the awaits that follow would pin an old table for the whole request.
        let routed = self
            .routes
            .load()
            .route(&host, x_app, path_and_query.path())
            .map(|(backend, kind)| (Arc::clone(backend), kind));
        let (backend, kind) =
            routed.ok_or_else(|| ProxyError::UnknownHost { host: host.into_owned() })?;
        Ok(Routed { backend, kind, original_host })
    }

    /// The normalised name a routed request asked for, for redirects and cache keys.
    /// [`Proxy::route`] refused names that cannot be normalised, except on a by-port
    /// listener, which any name reaches: there the listener's own address stands in.
    ///
    /// Worked out again rather than kept from routing, because most requests need it not
    /// at all and the name routing used borrows from the request.
    fn host_name<'a>(&'a self, original_host: &'a HeaderValue) -> Cow<'a, str> {
        let fallback = || {
            let fixed = self.fixed_app.as_ref()?;
            fixed.fallback_host.to_str().ok().and_then(normalize_host_cow)
        };
        let host = original_host.to_str().ok().and_then(normalize_host_cow);
        host.or_else(fallback).unwrap_or_default()
    }

    /// Forwards to the backend's instances, least busy first, moving on to the next one
    /// while connections are refused.
    async fn forward_to_instances(
        &self,
        mut request: Request<RequestBody>,
        downstream: Downstream,
        target: Target<'_>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let Target {
            backend,
            client,
            original_host,
            path_and_query,
            prefix,
            request_id,
            cache,
            started,
        } = target;
        let request_id_text = request_id.to_str().unwrap_or_default();
        let websocket = websocket_upgrade(request.headers());
        // The visitor's side of a tunnel, which hyper completes once the 101 is written; it
        // has to be taken before the request is split up.
        let mut downstream_upgrade =
            websocket.is_some().then(|| RequestBody::take_upgrade(&mut request)).flatten();

        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        if let Some(upgrade) = websocket {
            keep_upgrade(&mut headers, upgrade);
        }
        let forwarding = Forwarding {
            client,
            proto: downstream.proto(),
            host: &original_host,
            port: downstream.port(&original_host),
            request_id,
        };
        // The request goes to the instance in origin form, so `Host` is the only place the
        // app can see the name it was asked for; for an absolute-form request that is the
        // URI's authority, which RFC 9112 says wins over any Host header. It is written with
        // the forwarding headers, which replace the visitor's.
        let prefix = prefix.as_deref();
        let upstream = RequestHead {
            method: &parts.method,
            target: path_and_query.as_str(),
            headers: &headers,
            added: &|out| write_forwarding(out, &headers, forwarding, prefix),
            replaced: is_set_by_router,
        };

        let limits = *backend.limits();
        let body = BodySlot::new(body, limits.max_body_bytes, started);
        // The usual app has one instance: nothing to rank, and nothing to allocate.
        let ranked;
        let order: &[usize] = if backend.addrs.len() == 1 {
            &[0]
        } else {
            ranked = attempt_order(backend, &self.health);
            &ranked
        };
        let mut last_error = String::new();
        let mut cache = Some(cache);
        for (attempt, &index) in order.iter().enumerate() {
            let addr = backend.addrs[index];
            // The first attempt starts the clock as the request came in.
            if attempt > 0 {
                body.restart_clock();
            }
            let guard = InFlightGuard::new(backend.in_flight(index));
            // Pinned here rather than moved into the timeout's future, which would then hold
            // it twice: every byte of a request's future is copied as it is moved around.
            let send = std::pin::pin!(self.upstreams.send(addr, &upstream, body.lend()));
            let answered = within_response_timeout(send, &body, limits.response_timeout).await;
            let Some(result) = answered else {
                tracing::debug!(app = %backend.app, %addr, request_id = request_id_text, body_sent = body.is_finished(), "no answer in time");
                return Err(ProxyError::AppTimedOut {
                    app: backend.app.clone(),
                    after: limits.response_timeout,
                });
            };
            match result {
                Ok(response) => {
                    self.health.mark_answered(addr);
                    let status = response.status().as_u16();
                    tracing::debug!(app = %backend.app, %addr, status, request_id = request_id_text, "proxied");
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(downstream_upgrade) = downstream_upgrade.take()
                    {
                        // A tunnel is not a request under way: the drain before an instance
                        // stops must not wait for a WebSocket that may stay open for hours.
                        drop(guard);
                        return Ok(tunnel(response, downstream_upgrade, backend, addr, request_id));
                    }
                    // Its hop-by-hop headers were left out as it was read.
                    let (mut parts, body) = response.into_parts();
                    // The app's protocol version is between it and the router: the visitor
                    // gets the version of its own connection (an HTTP/1.0 app behind an
                    // HTTP/1.1 or HTTP/2 visitor).
                    parts.version = Version::default();
                    let cache = cache.take().unwrap_or(CacheUse::Off);
                    let body = relay(body, guard, cache, parts.status, &mut parts.headers);
                    return Ok(Response::from_parts(parts, body));
                }
                // Nothing reached the instance, so trying another one cannot do anything twice.
                Err(error) if error.is_connect() && body.is_unsent() => {
                    self.health.mark_failed(addr);
                    last_error = error_chain(&error);
                    tracing::debug!(app = %backend.app, %addr, request_id = request_id_text, "cannot connect: {last_error}");
                }
                Err(error) => {
                    if let Some(too_large) = find_cause::<BodyTooLarge>(&error) {
                        return Err(ProxyError::BodyTooLarge { limit: too_large.limit });
                    }
                    if let Some(unreadable) = find_cause::<ClientBodyError>(&error) {
                        tracing::debug!(app = %backend.app, request_id = request_id_text, "{}", error_chain(unreadable));
                        return Err(ProxyError::BadRequestBody);
                    }
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

/// A request's app and how it was found.
struct Routed {
    backend: Arc<Backend>,
    kind: RouteKind,
    /// The host as the visitor sent it, for the app; [`Proxy::host_name`] normalises it.
    original_host: HeaderValue,
}

/// The body the visitor gets for an app's response, marked and recorded as the cache
/// decided.
fn relay(
    mut body: UpstreamBody,
    guard: InFlightGuard,
    cache: CacheUse,
    status: StatusCode,
    headers: &mut http::HeaderMap,
) -> ResponseBody {
    if !matches!(cache, CacheUse::Off) {
        // The cache reads the app's headers and adds one of its own.
        body.move_headers_into(headers);
    }
    let recorder = match cache {
        CacheUse::Off => None,
        CacheUse::Bypass => {
            headers.insert(X_CACHE, HeaderValue::from_static("BYPASS"));
            None
        }
        CacheUse::Miss(miss) => {
            let recorder = miss.recorder(status, headers);
            headers.insert(X_CACHE, HeaderValue::from_static("MISS"));
            recorder
        }
    };
    match recorder {
        Some(recorder) => {
            ResponseBody::Recording { body, recorder: Box::new(recorder), _in_flight: guard }
        }
        None => ResponseBody::App { body, _in_flight: guard },
    }
}

/// Waits for the app's response head, for at most `timeout` after the request (and its
/// body, while it is still being sent) last made progress; `None` when time ran out.
async fn within_response_timeout<F: Future>(
    mut response: Pin<&mut F>,
    body: &BodySlot,
    timeout: Duration,
) -> Option<F::Output> {
    loop {
        let deadline = body.last_progress() + timeout;
        tokio::select! {
            output = response.as_mut() => return Some(output),
            () = tokio::time::sleep_until(deadline.into()) => {
                if body.last_progress() + timeout <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

/// A 301 (GET, HEAD) or 308 (the rest, which must keep their method and body) to the same
/// path and query over HTTPS, on the default port.
fn redirect_to_https(
    method: &Method,
    host: &str,
    path_and_query: &PathAndQuery,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = if method == Method::GET || method == Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    // A normalised host and a request target are both visible ASCII.
    if let Ok(location) = HeaderValue::try_from(format!("https://{host}{path_and_query}")) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

/// The access-log line's facts for a response that is about to be sent.
fn access_entry(
    summary: RequestSummary,
    client: IpAddr,
    response: &Response<ResponseBody>,
    request_id: HeaderValue,
) -> AccessEntry {
    let status = response.status();
    let no_body = summary.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let bytes = if no_body {
        Some(0)
    } else {
        response.body().size_hint().exact().or_else(|| {
            let length = response.headers().get(CONTENT_LENGTH)?;
            length.to_str().ok()?.parse().ok()
        })
    };
    AccessEntry {
        client,
        time: SystemTime::now(),
        method: summary.method,
        uri: summary.uri,
        version: summary.version,
        status: status.as_u16(),
        bytes,
        referer: summary.referer,
        user_agent: summary.user_agent,
        elapsed: summary.started.elapsed(),
        request_id,
    }
}

/// Relays an instance's 101 to the visitor, and joins the two connections in a task of
/// their own once both sides have switched; it ends when both directions are closed.
///
/// The tunnel is not bound to the server's shutdown: like a download in progress it is
/// cut when the process exits, and until then it lives as long as its two ends.
fn tunnel(
    mut response: Response<UpstreamBody>,
    downstream: PendingUpgrade,
    backend: &Backend,
    addr: SocketAddr,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let upstream = response.body_mut().take_upgraded();
    let (mut parts, _empty) = response.into_parts();
    let upgrade = parts.headers.get(UPGRADE).cloned();
    remove_hop_by_hop(&mut parts.headers);
    if let Some(upgrade) = upgrade {
        keep_upgrade(&mut parts.headers, upgrade);
    }
    let app = backend.app.clone();
    let request_id = request_id.to_str().unwrap_or_default().to_string();
    tokio::spawn(async move {
        let Some((upstream, early)) = upstream else {
            tracing::debug!(app, %addr, request_id, "a 101 response without its connection");
            return;
        };
        let joined = match downstream {
            PendingUpgrade::Hyper(downstream) => match downstream.await {
                Ok(downstream) => join(TokioIo::new(downstream), &[], upstream, &early).await,
                Err(error) => Err(io::Error::other(error)),
            },
            PendingUpgrade::Own(downstream) => match downstream.await {
                Ok(visitor) => join(visitor.stream, &visitor.early, upstream, &early).await,
                Err(_) => Err(io::Error::other("the visitor's connection was not handed over")),
            },
        };
        match joined {
            Ok((to_app, to_visitor)) => {
                tracing::debug!(app, %addr, request_id, to_app, to_visitor, "tunnel closed");
            }
            Err(error) => tracing::debug!(app, %addr, request_id, "tunnel failed: {error}"),
        }
    });
    Response::from_parts(parts, ResponseBody::empty())
}

/// Joins a tunnel's two ends once each side's early bytes (sent right after the
/// handshake, such as a first WebSocket frame) have gone to the other; returns the bytes
/// copied each way.
async fn join<D>(
    mut downstream: D,
    visitor_early: &[u8],
    mut upstream: TcpStream,
    app_early: &[u8],
) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    upstream.write_all(visitor_early).await?;
    downstream.write_all(app_early).await?;
    tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
}

/// The path the app sees when it was found by its name as the first segment: `/APP/rest?q`
/// becomes `/rest?q`, and `/APP` or `/APP?q` become `/` or `/?q`.
fn strip_path_prefix(
    path_and_query: &PathAndQuery,
    prefix: &str,
) -> Result<PathAndQuery, ProxyError> {
    let internal = || ProxyError::Internal {
        cause: format!("{path_and_query} was routed by the prefix {prefix} it does not have"),
    };
    let rest = path_and_query.as_str().strip_prefix(prefix).ok_or_else(internal)?;
    let rewritten = if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") };
    PathAndQuery::try_from(rewritten).map_err(|_| internal())
}

/// Puts the prefix back into a redirect the router made from the stripped path (a
/// directory without its slash), so that the visitor stays under `/APP`.
fn prefix_location(response: &mut Response<ResponseBody>, prefix: &str) {
    let location = response.headers().get(LOCATION).and_then(|value| value.to_str().ok());
    let prefixed = location
        .filter(|location| location.starts_with('/'))
        .and_then(|location| HeaderValue::from_str(&format!("{prefix}{location}")).ok());
    if let Some(prefixed) = prefixed {
        response.headers_mut().insert(LOCATION, prefixed);
    }
}

/// The host the visitor asked for, as sent: the URI's authority for an absolute-form
/// request, otherwise the one `Host` header.
fn original_host(request: &Request<RequestBody>) -> Result<HeaderValue, ProxyError> {
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

/// The error and its causes on one line: the top message is only "cannot connect" or
/// "the connection failed", and the useful part ("connection refused") is in the source
/// chain.
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
/// Sending consumes the request even when no connection is made, and an `Incoming` body
/// cannot be recreated, so with a plain `Request<RequestBody>` a refused connection would
/// leave nothing to send to the next instance. Each attempt gets a [`LentBody`] that takes
/// the body out of this slot only when hyper first polls it, which happens after the
/// connection is up; after a connect error the body is still here for the next attempt.
///
/// The slot also keeps the body to the app's size limit and notes when it last made
/// progress, which the response timeout counts from.
struct BodySlot {
    /// `None` for a request without a body: nothing to hold back, and no attempt can use
    /// it up.
    shared: Option<Arc<SlotShared>>,
    /// The progress of a request without a body, which no lent body needs to share.
    progress: Progress,
    is_end_stream: bool,
    size_hint: SizeHint,
}

/// What the slot and its lent bodies share: one allocation per request with a body.
struct SlotShared {
    body: Mutex<Option<RequestBody>>,
    progress: Progress,
}

/// How far the body has come, shared by the slot and the attempt that sends it.
struct Progress {
    started: Instant,
    /// Milliseconds after `started` of the last step: the attempt's start or a frame sent.
    last_ms: AtomicU64,
    sent_bytes: AtomicU64,
    max_bytes: u64,
    finished: std::sync::atomic::AtomicBool,
}

impl Progress {
    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }
}

impl BodySlot {
    /// A slot for the body of a request that began at `started`.
    fn new(body: RequestBody, max_bytes: u64, started: Instant) -> BodySlot {
        let is_end_stream = body.is_end_stream();
        let size_hint = body.size_hint();
        let progress = || Progress {
            started,
            last_ms: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            max_bytes,
            finished: is_end_stream.into(),
        };
        let shared = (!is_end_stream)
            .then(|| Arc::new(SlotShared { body: Mutex::new(Some(body)), progress: progress() }));
        BodySlot { shared, progress: progress(), is_end_stream, size_hint }
    }

    fn progress(&self) -> &Progress {
        self.shared.as_ref().map_or(&self.progress, |shared| &shared.progress)
    }

    fn lend(&self) -> LentBody {
        LentBody {
            shared: self.shared.clone(),
            taken: None,
            is_end_stream: self.is_end_stream,
            size_hint: self.size_hint,
        }
    }

    /// Whether no attempt has started sending the body, so another attempt may. An empty
    /// body can be sent any number of times.
    fn is_unsent(&self) -> bool {
        self.shared.as_ref().is_none_or(|shared| lock(&shared.body).is_some())
    }

    /// Whether the whole body has been sent.
    fn is_finished(&self) -> bool {
        self.progress().finished.load(Ordering::Relaxed)
    }

    /// Counts a new attempt as progress.
    fn restart_clock(&self) {
        self.progress().touch();
    }

    fn last_progress(&self) -> Instant {
        let progress = self.progress();
        progress.started + Duration::from_millis(progress.last_ms.load(Ordering::Relaxed))
    }
}

/// The request body as one attempt sees it; see [`BodySlot`].
pub(crate) struct LentBody {
    /// `None` for a request without a body.
    shared: Option<Arc<SlotShared>>,
    taken: Option<RequestBody>,
    /// Answered before the body is taken, because the client asks while writing the
    /// request head to choose between `Content-Length` and chunked framing.
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
        let Some(shared) = &this.shared else {
            return Poll::Ready(None);
        };
        if this.taken.is_none() {
            this.taken = lock(&shared.body).take();
        }
        let Some(body) = this.taken.as_mut() else {
            // Only one attempt can ever get past connecting, so this means a bug; an error
            // aborts the request rather than send it with an empty body.
            return Poll::Ready(Some(Err("the request body was already sent elsewhere".into())));
        };
        let progress = &shared.progress;
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n_bytes = frame.data_ref().map_or(0, |data| data.len() as u64);
                let sent = progress.sent_bytes.fetch_add(n_bytes, Ordering::Relaxed) + n_bytes;
                if sent > progress.max_bytes {
                    // The request to the app is aborted; the proxy finds this error in the
                    // chain and answers 413.
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                        limit: progress.max_bytes,
                    }))));
                }
                progress.touch();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(error)))))
            }
            Poll::Ready(None) => {
                progress.finished.store(true, Ordering::Relaxed);
                progress.touch();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
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
fn lock(slot: &Mutex<Option<RequestBody>>) -> MutexGuard<'_, Option<RequestBody>> {
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

    #[test]
    fn host_port_table() {
        let cases = [
            ("example.com:8080", Some(8080)),
            ("example.com", None),
            ("example.com:", None),
            ("[::1]:8443", Some(8443)),
            ("[::1]", None),
            ("127.0.0.1:81", Some(81)),
            ("example.com:65535", Some(65535)),
            ("example.com:65536", None),
            ("example.com:+80", None),
            ("example.com:080800", None),
        ];
        for (host, expected) in cases {
            assert_eq!(host_port(&HeaderValue::from_static(host)), expected, "{host:?}");
        }
    }

    #[test]
    fn strip_path_prefix_table() {
        let cases = [
            ("/docs/guide?x=1", "/guide?x=1"),
            ("/docs", "/"),
            ("/docs/", "/"),
            ("/docs?x=1", "/?x=1"),
            ("/docs//a", "//a"),
        ];
        for (path, expected) in cases {
            let stripped = strip_path_prefix(&PathAndQuery::from_static(path), "/docs").unwrap();
            assert_eq!(stripped.as_str(), expected, "{path:?}");
        }
        assert!(strip_path_prefix(&PathAndQuery::from_static("/other"), "/docs").is_err());
    }

    // Proxying itself is tested through real sockets below and in `server.rs`, because an
    // `Incoming` body only comes from a connection.

    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::timeout;

    use crate::table::{RouteTable, shared_routes};
    use crate::test_support::{
        DEADLINE, Reply, counting_upstream, dead_addr, echo_upstream, get, header, held_upstream,
        read_exactly, read_message, routes_with, send, start_proxy, start_proxy_with, table_with,
        upgrade_echo_upstream, wait_for,
    };
    use crate::{InFlight, SharedRoutes};

    /// The name of the echo upstream that answered.
    fn answered_by(reply: &Reply) -> &str {
        reply.body.lines().next().unwrap_or_default()
    }

    fn routes_of(table: RouteTable) -> SharedRoutes {
        let routes = shared_routes();
        routes.store(Arc::new(table));
        routes
    }

    #[tokio::test]
    async fn exact_names_win_over_wildcards_and_longer_suffixes_over_shorter() {
        let exact = echo_upstream("exact").await;
        let wild = echo_upstream("wild").await;
        let deeper = echo_upstream("deeper").await;
        let routes = routes_with(&[
            ("api.example.com", "exact", vec![exact]),
            ("*.example.com", "wild", vec![wild]),
            ("*.a.example.com", "deeper", vec![deeper]),
        ]);
        let proxy = start_proxy(routes).await;
        for (host, expected) in [
            ("api.example.com", "exact"),
            ("www.example.com", "wild"),
            ("a.example.com", "wild"),
            ("b.a.example.com:8080", "deeper"),
        ] {
            let reply = send(proxy.addr, get(host, "/")).await;
            assert_eq!(reply.status, 200, "{host}: {}", reply.body);
            assert_eq!(answered_by(&reply), expected, "{host}");
            assert!(reply.body.contains(&format!("host: {host}\r\n")), "{}", reply.body);
        }
        assert_eq!(send(proxy.addr, get("example.com", "/")).await.status, 404);
    }

    #[tokio::test]
    async fn x_app_header_picks_an_existing_app_on_any_host_and_is_kept() {
        let site = echo_upstream("site").await;
        let blog = echo_upstream("blog").await;
        let routes = routes_with(&[
            ("site.example.com", "site", vec![site]),
            ("blog.example.com", "blog", vec![blog]),
        ]);
        let proxy = start_proxy(routes).await;
        let with_app = |host: &str, app: &str| {
            format!("GET /x HTTP/1.1\r\nHost: {host}\r\nX-App: {app}\r\nConnection: close\r\n\r\n")
        };
        for (host, app, expected) in [
            ("site.example.com", "blog", "blog"),
            ("nobody.example.org", "blog", "blog"),
            ("site.example.com", "missing", "site"),
            ("site.example.com", "site", "site"),
        ] {
            let reply = send(proxy.addr, with_app(host, app)).await;
            assert_eq!(reply.status, 200, "{host} {app}: {}", reply.body);
            assert_eq!(answered_by(&reply), expected, "{host} {app}");
            assert_eq!(header(&reply.body, "x-app").as_deref(), Some(app), "{}", reply.body);
            assert_eq!(header(&reply.body, "host"), Some(host.to_string()));
        }
        let reply = send(proxy.addr, with_app("nobody.example.org", "missing")).await;
        assert_eq!(reply.status, 404);
    }

    #[tokio::test]
    async fn path_routing_strips_the_app_segment_and_sets_the_prefix() {
        let site = echo_upstream("site").await;
        let docs = echo_upstream("docs").await;
        let blog = echo_upstream("blog").await;
        let mut table = RouteTable::new();
        table.insert("site.example.com", Arc::new(Backend::new("site", vec![site])));
        table.insert("blog.example.com", Arc::new(Backend::new("blog", vec![blog])));
        let docs_backend = Backend::new("docs", vec![docs]).with_path_routing(true);
        table.insert("docs.example.com", Arc::new(docs_backend));
        let proxy = start_proxy(routes_of(table)).await;

        let cases = [
            ("site.example.com", "/docs/guide/intro?x=1", "docs", "/guide/intro?x=1", true),
            ("site.example.com", "/docs", "docs", "/", true),
            ("site.example.com", "/docs?x=1", "docs", "/?x=1", true),
            ("nobody.example.org", "/docs/", "docs", "/", true),
            // The app's own host keeps its paths; other apps' paths are never taken.
            ("docs.example.com", "/docs/a", "docs", "/docs/a", false),
            ("site.example.com", "/blog/a", "site", "/blog/a", false),
            ("site.example.com", "/docsx/a", "site", "/docsx/a", false),
            ("site.example.com", "/a/docs", "site", "/a/docs", false),
        ];
        for (host, target, app, path, prefixed) in cases {
            // A visitor's own prefix must never reach the app.
            let request = format!(
                "GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Prefix: /spoofed\r\n\
                 Connection: close\r\n\r\n"
            );
            let reply = send(proxy.addr, request).await;
            assert_eq!(reply.status, 200, "{host}{target}: {}", reply.body);
            assert_eq!(answered_by(&reply), app, "{host}{target}");
            let request_line = reply.body.lines().nth(1).unwrap_or_default();
            assert_eq!(request_line, format!("GET {path} HTTP/1.1"), "{host}{target}");
            let prefix = header(&reply.body, "x-forwarded-prefix");
            assert_eq!(prefix.as_deref(), prefixed.then_some("/docs"), "{host}{target}");
            assert_eq!(header(&reply.body, "host"), Some(host.to_string()));
        }
        let reply = send(proxy.addr, get("nobody.example.org", "/blog/a")).await;
        assert_eq!(reply.status, 404, "a non-path-routed app was reached by its path");
    }

    #[tokio::test]
    async fn a_router_redirect_under_a_path_prefix_keeps_the_prefix() {
        let dir = berth_testkit::TempDir::new("router-path-prefix");
        std::fs::create_dir(dir.path().join("guide")).unwrap();
        std::fs::write(dir.path().join("guide/index.html"), "guide").unwrap();
        let mounts = vec![crate::StaticMount::new("/", dir.path())];
        let docs = Backend::new("docs", vec![]).with_static(mounts, None).with_path_routing(true);
        let mut table = RouteTable::new();
        table.insert("docs.example.com", Arc::new(docs));
        let proxy = start_proxy(routes_of(table)).await;

        let reply = send(proxy.addr, get("other.example.com", "/docs/guide?x=1")).await;
        assert_eq!(reply.status, 301, "{}", reply.head);
        assert_eq!(header(&reply.head, "location").as_deref(), Some("/docs/guide/?x=1"));
        let reply = send(proxy.addr, get("other.example.com", "/docs/guide/")).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "guide"));
    }

    #[tokio::test]
    async fn least_outstanding_sends_requests_to_the_idle_instance() {
        let (slow, request_arrived, release) = held_upstream().await;
        let fast = echo_upstream("fast").await;
        let in_flight = Arc::new(InFlight::new());
        let mut table = RouteTable::new();
        let backend = Backend::new("myapp", vec![slow, fast]).with_in_flight(&in_flight);
        table.insert("myapp.example.com", Arc::new(backend));
        let proxy = start_proxy(routes_of(table)).await;

        // Both idle: the round-robin starts at the first instance, the slow one.
        let held = tokio::spawn(send(proxy.addr, get("myapp.example.com", "/held")));
        timeout(DEADLINE, request_arrived).await.unwrap().unwrap();
        assert_eq!(in_flight.count(slow), 1);
        // Plain round-robin would send every other one of these to the busy instance, which
        // takes no second connection, so they would hang.
        for _ in 0..6 {
            wait_for("the fast instance is idle", || in_flight.count(fast) == 0).await;
            let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(answered_by(&reply), "fast");
        }
        release.send(()).unwrap();
        let reply = timeout(DEADLINE, held).await.unwrap().unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "slow"));
    }

    #[tokio::test]
    async fn a_refusing_instance_gets_no_connection_attempts_while_marked() {
        let dead = dead_addr().await;
        let live = echo_upstream("live").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![dead, live])]);
        // A window far longer than the test, so that the test does not race it.
        let proxy = Proxy::with_unhealthy_for(routes, Duration::from_secs(3600));
        let proxy = start_proxy_with(proxy).await;
        // The first request starts at the dead instance, is refused, and fails over.
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!((reply.status, answered_by(&reply)), (200, "live"), "{}", reply.body);

        // The instance comes back, but is still marked: it gets nothing, even on the turns
        // the round-robin would give it.
        let accepted = counting_upstream(dead, false).await;
        for _ in 0..8 {
            let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
            assert_eq!((reply.status, answered_by(&reply)), (200, "live"), "{}", reply.body);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "the marked instance was connected to");
    }

    #[tokio::test]
    async fn a_marked_instance_is_tried_again_after_the_window_and_when_all_are_marked() {
        let first = dead_addr().await;
        let second = dead_addr().await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![first, second])]);
        let proxy =
            start_proxy_with(Proxy::with_unhealthy_for(routes, Duration::from_secs(3600))).await;
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!(reply.status, 502);
        // Both are marked now; they are tried anyway, and the one that came back answers.
        let accepted = counting_upstream(second, false).await;
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!((reply.status, answered_by(&reply)), (200, "revived"), "{}", reply.body);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let dead = dead_addr().await;
        let live = echo_upstream("live").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![dead, live])]);
        let proxy =
            start_proxy_with(Proxy::with_unhealthy_for(routes, Duration::from_millis(50))).await;
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!((reply.status, answered_by(&reply)), (200, "live"), "{}", reply.body);
        let accepted = counting_upstream(dead, false).await;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            if answered_by(&reply) == "revived" {
                break;
            }
            assert!(Instant::now() < deadline, "the instance never got traffic back");
        }
        assert!(accepted.load(Ordering::SeqCst) >= 1);
    }

    #[tokio::test]
    async fn forwarded_port_and_request_id_reach_the_app_and_come_back() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        // `serve` does not pass the local address yet: the Host header's port stands in.
        let proxy = start_proxy(Arc::clone(&routes)).await;
        let request = "GET / HTTP/1.1\r\nHost: myapp.example.com:8080\r\n\
                       Forwarded: for=10.0.0.1;proto=https\r\nX-Request-Id: trace-42\r\n\
                       X-Forwarded-Port: 1\r\nConnection: close\r\n\r\n";
        let reply = send(proxy.addr, request.into()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header(&reply.body, "x-forwarded-port").as_deref(), Some("8080"));
        assert_eq!(
            header(&reply.body, "forwarded").as_deref(),
            Some(
                "for=10.0.0.1;proto=https, for=127.0.0.1;proto=http;host=\"myapp.example.com:8080\""
            )
        );
        assert_eq!(header(&reply.body, "x-request-id").as_deref(), Some("trace-42"));
        assert_eq!(header(&reply.head, "x-request-id").as_deref(), Some("trace-42"));

        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!(header(&reply.body, "x-forwarded-port").as_deref(), Some("80"));
        let sent = header(&reply.body, "x-request-id").expect("an id was made up");
        assert_eq!(sent.len(), 16, "{sent}");
        assert!(sent.bytes().all(|b| b.is_ascii_hexdigit()), "{sent}");
        assert_eq!(header(&reply.head, "x-request-id"), Some(sent.clone()));
        let again = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_ne!(header(&again.head, "x-request-id"), Some(sent));

        let too_long = "x".repeat(201);
        let request = format!(
            "GET / HTTP/1.1\r\nHost: myapp.example.com\r\nX-Request-Id: {too_long}\r\n\
             Connection: close\r\n\r\n"
        );
        let reply = send(proxy.addr, request).await;
        assert_eq!(header(&reply.body, "x-request-id").map(|id| id.len()), Some(16));

        // The router's own pages carry the id too.
        let reply = send(proxy.addr, get("nobody.example.com", "/")).await;
        assert_eq!(reply.status, 404);
        assert_eq!(header(&reply.head, "x-request-id").map(|id| id.len()), Some(16));

        // Told the connection's local address, the proxy forwards the port it accepted on.
        let proxy = start_proxy_with(Proxy::new(routes)).await;
        let reply = send(proxy.addr, get("myapp.example.com:8080", "/")).await;
        let port = proxy.addr.port().to_string();
        assert_eq!(header(&reply.body, "x-forwarded-port"), Some(port));
    }

    #[tokio::test]
    async fn websocket_handshake_is_relayed_and_bytes_flow_both_ways() {
        let (heads, mut upstream_heads) = tokio::sync::mpsc::channel(4);
        let upstream = upgrade_echo_upstream(heads).await;
        let in_flight = Arc::new(InFlight::new());
        let mut table = RouteTable::new();
        let backend = Backend::new("chat", vec![upstream]).with_in_flight(&in_flight);
        table.insert("chat.example.com", Arc::new(backend));
        let proxy = start_proxy_with(Proxy::new(routes_of(table))).await;

        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let handshake = "GET /socket?room=1 HTTP/1.1\r\nHost: chat.example.com\r\n\
                         Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                         Sec-WebSocket-Version: 13\r\n\r\n";
        stream.write_all(handshake.as_bytes()).await.unwrap();
        let (head, _) = timeout(DEADLINE, read_message(&mut stream)).await.unwrap().unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert_eq!(header(&head, "upgrade").as_deref(), Some("websocket"), "{head}");
        assert!(header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
        assert!(header(&head, "x-request-id").is_some(), "{head}");

        let sent = timeout(DEADLINE, upstream_heads.recv()).await.unwrap().unwrap();
        assert!(sent.starts_with("GET /socket?room=1 HTTP/1.1\r\n"), "{sent}");
        assert_eq!(header(&sent, "upgrade").as_deref(), Some("websocket"), "{sent}");
        assert_eq!(header(&sent, "connection").as_deref(), Some("upgrade"), "{sent}");
        assert_eq!(header(&sent, "sec-websocket-key").as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(header(&sent, "x-forwarded-for").is_some(), "{sent}");

        // The handshake is over, so the open tunnel does not hold a drain up.
        wait_for("the handshake is no longer counted", || in_flight.count(upstream) == 0).await;
        let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for message in [&b"hello"[..], b"\x81\x05world", &large] {
            stream.write_all(message).await.unwrap();
            assert_eq!(read_exactly(&mut stream, message.len()).await, message);
        }
        // Closing one side closes the tunnel: the app's echo ends, and so does our stream.
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        timeout(DEADLINE, stream.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_plain_request_to_a_websocket_app_still_drops_upgrade_headers() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let proxy = start_proxy_with(Proxy::new(routes)).await;
        // `Upgrade: h2c` is not a WebSocket: both headers are hop-by-hop as usual.
        let request = "GET / HTTP/1.1\r\nHost: myapp.example.com\r\nConnection: upgrade, close\r\n\
                       Upgrade: h2c\r\n\r\n";
        let reply = send(proxy.addr, request.into()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header(&reply.body, "upgrade"), None, "{}", reply.body);
        assert_eq!(header(&reply.body, "connection"), None, "{}", reply.body);
    }

    fn swap_table(app: SocketAddr, slow: SocketAddr) -> RouteTable {
        table_with(&[
            ("myapp.example.com", "myapp", vec![app]),
            ("slow.example.com", "slow", vec![slow]),
        ])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn swapping_routes_under_load_drops_no_connection_and_no_request() {
        const CONNECTIONS: usize = 4;
        const REQUESTS_PER_CONNECTION: usize = 50;
        const MAX_SWAPS: u64 = 10_000_000;
        let first = echo_upstream("a.1").await;
        let second = echo_upstream("b.1").await;
        let (slow, request_arrived, release) = held_upstream().await;
        let routes = routes_of(swap_table(first, slow));
        let proxy = start_proxy(Arc::clone(&routes)).await;

        // A request in flight for the whole run, across every swap.
        let held = tokio::spawn(send(proxy.addr, get("slow.example.com", "/")));
        timeout(DEADLINE, request_arrived).await.unwrap().unwrap();

        let done = Arc::new(AtomicBool::new(false));
        let swapper = tokio::spawn({
            let done = Arc::clone(&done);
            async move {
                let mut swaps = 0u64;
                while !done.load(Ordering::SeqCst) && swaps < MAX_SWAPS {
                    let app = if swaps.is_multiple_of(2) { second } else { first };
                    routes.store(Arc::new(swap_table(app, slow)));
                    swaps += 1;
                    tokio::task::yield_now().await;
                }
                swaps
            }
        });

        // Keep-alive connections that stay open across swaps, plus a fresh connection per
        // request, all sending while the table changes under them.
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CONNECTIONS {
            clients.spawn(async move {
                let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
                let mut answered_by = Vec::new();
                for n in 0..REQUESTS_PER_CONNECTION {
                    let request = format!("GET /{n} HTTP/1.1\r\nHost: myapp.example.com\r\n\r\n");
                    stream.write_all(request.as_bytes()).await.unwrap();
                    let message = timeout(DEADLINE, read_message(&mut stream)).await;
                    let (head, body) = message.expect("an answer in time").expect("an answer");
                    assert!(head.starts_with("HTTP/1.1 200 "), "{head}{body}");
                    answered_by.push(body.lines().next().unwrap_or_default().to_string());
                }
                answered_by
            });
        }
        clients.spawn(async move {
            let mut answered_by = Vec::new();
            for _ in 0..REQUESTS_PER_CONNECTION {
                let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
                assert_eq!(reply.status, 200, "{}", reply.body);
                answered_by.push(answered_by_name(&reply));
            }
            answered_by
        });
        let mut seen = Vec::new();
        while let Some(answers) = clients.join_next().await {
            seen.extend(answers.expect("a client saw a failure"));
        }
        done.store(true, Ordering::SeqCst);
        let swaps = timeout(DEADLINE, swapper).await.unwrap().unwrap();

        assert_eq!(seen.len(), (CONNECTIONS + 1) * REQUESTS_PER_CONNECTION);
        assert!(seen.iter().all(|name| name == "a.1" || name == "b.1"), "{seen:?}");
        assert!(swaps > 1, "the table was swapped {swaps} times");
        assert!(seen.iter().any(|name| name == "a.1") && seen.iter().any(|name| name == "b.1"));

        release.send(()).unwrap();
        let reply = timeout(DEADLINE, held).await.unwrap().unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "slow"));
    }

    fn answered_by_name(reply: &Reply) -> String {
        answered_by(reply).to_string()
    }
}
