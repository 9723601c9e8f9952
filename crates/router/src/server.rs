//! The accept loops: plain HTTP/1.1 and TLS (HTTP/2 or HTTP/1.1), one task per connection,
//! the ACME HTTP-01 answer, the listener-wide limits (head size, head and idle timeouts),
//! and a bounded drain when the daemon shuts down.
//!
//! [`Server`] is the builder; [`serve`], [`serve_tls`], [`serve_with_challenges`] and
//! [`serve_app_port`] are its common uses with the default [`ServerLimits`].

use std::convert::Infallible;
use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::body::ResponseBody;
use crate::connection::{Activity, Expiry, ServedBody, Watched};
use crate::h1_server::{Handler, HeadLimits, RequestBody, serve_connection};
use crate::limits::ServerLimits;
use crate::listener::Listener;
use crate::proxy::{Downstream, Proxy};
use crate::table::SharedRoutes;

/// A bound for the TLS handshake, which comes before any request head.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections may take to finish after shutdown before they are cut off;
/// the daemon's own shutdown must not hang on a slow download.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A pause after an accept error such as running out of file descriptors, which would
/// otherwise repeat at once and spin the loop; finishing connections are what frees them.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Where ACME HTTP-01 validation requests arrive (RFC 8555 section 8.3).
pub(crate) const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737): such a connection exists only for
/// its handshake, so it is closed without serving HTTP.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The answers to pending ACME HTTP-01 challenges: the key authorization for a token.
///
/// The router does not depend on the ACME client (nor it on the router): the daemon passes a
/// closure over the client's token map, e.g.
/// `Arc::new(move |token: &str| tokens.key_authorization(token))`.
pub trait Http01Challenges: Send + Sync + 'static {
    /// The body to answer `GET /.well-known/acme-challenge/{token}` with, if the token is
    /// being validated now.
    fn key_authorization(&self, token: &str) -> Option<String>;
}

impl<F> Http01Challenges for F
where
    F: Fn(&str) -> Option<String> + Send + Sync + 'static,
{
    fn key_authorization(&self, token: &str) -> Option<String> {
        self(token)
    }
}

/// Serves plain HTTP/1.1 until `shutdown` resolves; then stops accepting and lets open
/// connections finish (bounded to 10 s).
///
/// Requests are routed by host from whatever table `routes` holds when each request arrives,
/// so the daemon changes routing by storing a new table, without restarting this.
///
/// Accept errors are logged and retried rather than returned: one exhausted file table must
/// not take every app offline. The function therefore currently always returns `Ok`; the
/// `io::Result` leaves room for setup that can fail.
///
/// The same as `Server::new(routes).serve(listener, shutdown)`; see [`Server`] for limits.
pub async fn serve(
    listener: impl Into<Listener>,
    routes: SharedRoutes,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    Server::new(routes).serve(listener, shutdown).await
}

/// [`serve`], also answering ACME HTTP-01 validation: a `GET` or `HEAD` of
/// `/.well-known/acme-challenge/TOKEN`, for any host, gets the key authorization when
/// `challenges` knows the token, before any routing. Other tokens are routed as usual, so an
/// app can still answer challenges of its own.
pub async fn serve_with_challenges(
    listener: impl Into<Listener>,
    routes: SharedRoutes,
    challenges: Arc<dyn Http01Challenges>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    Server::new(routes).with_challenges(challenges).serve(listener, shutdown).await
}

/// Serves HTTPS until `shutdown` resolves, with the same routing, proxy and drain as
/// [`serve`].
///
/// Each connection's TLS handshake runs in its own task (bounded to 10 s), with certificates
/// chosen by `tls_config`'s resolver. The ALPN protocols are those of `tls_config` (Berth's
/// offers `h2` and `http/1.1`); hyper-util's auto builder then serves HTTP/2 to clients that
/// negotiated it and HTTP/1.1 (with upgrades) to the rest. A connection that negotiated
/// `acme-tls/1` was a CA validating a TLS-ALPN-01 challenge: it is closed after the
/// handshake.
pub async fn serve_tls(
    listener: impl Into<Listener>,
    routes: SharedRoutes,
    tls_config: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    Server::new(routes).serve_tls(listener, tls_config, shutdown).await
}

/// Serves every request on `listener` to the app named `app`, as if it carried `X-App: app`,
/// whatever its host, until `shutdown`, as [`serve`]. A request without a `Host` is given
/// the listener's address as its host (two `Host` headers still get a 400). While no app of
/// that name is in the table, requests get a 502 page naming it.
///
/// The same as `Server::new(routes).for_app(app).serve(listener, shutdown)`.
pub async fn serve_app_port(
    listener: impl Into<Listener>,
    routes: SharedRoutes,
    app: String,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    Server::new(routes).for_app(app).serve(listener, shutdown).await
}

/// A listener's configuration: routes, limits, ACME HTTP-01 answers, and whether it serves
/// one app whatever the host. Build it, then call [`Server::serve`] or
/// [`Server::serve_tls`]:
///
/// ```no_run
/// # async fn run(listener: tokio::net::TcpListener, routes: berth_router::SharedRoutes) {
/// use std::time::Duration;
/// use berth_router::{Server, ServerLimits};
///
/// let limits = ServerLimits { idle_timeout: Duration::from_secs(5), ..ServerLimits::default() };
/// let served = Server::new(routes).with_limits(limits).serve(listener, std::future::pending());
/// served.await.unwrap();
/// # }
/// ```
pub struct Server {
    routes: SharedRoutes,
    limits: ServerLimits,
    challenges: Option<Arc<dyn Http01Challenges>>,
    app: Option<String>,
}

impl Server {
    /// A server for `routes` with the default limits.
    pub fn new(routes: SharedRoutes) -> Server {
        Server { routes, limits: ServerLimits::default(), challenges: None, app: None }
    }

    /// The same server holding its connections to `limits`.
    pub fn with_limits(self, limits: ServerLimits) -> Server {
        Server { limits, ..self }
    }

    /// The same server answering ACME HTTP-01 validations first; see
    /// [`serve_with_challenges`].
    pub fn with_challenges(self, challenges: Arc<dyn Http01Challenges>) -> Server {
        Server { challenges: Some(challenges), ..self }
    }

    /// The same server sending every request to the app named `app`; see
    /// [`serve_app_port`].
    pub fn for_app(self, app: impl Into<String>) -> Server {
        Server { app: Some(app.into()), ..self }
    }

    fn into_shared(self, listener: &Listener, tls: bool) -> io::Result<Arc<Shared>> {
        let mut proxy = Proxy::new(self.routes);
        if let Some(app) = self.app {
            proxy = proxy.for_app(app, listener.local_addr()?);
        }
        proxy.sweep_in_background();
        Ok(Arc::new(Shared { proxy, challenges: self.challenges, tls, limits: self.limits }))
    }

    /// Serves plain HTTP/1.1 until `shutdown` resolves; see [`serve`].
    pub async fn serve(
        self,
        listener: impl Into<Listener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let listener = listener.into();
        let shared = self.into_shared(&listener, false)?;
        let limits = shared.limits;
        let head_limits = HeadLimits { max_head_bytes: limits.header_bytes() };
        accept_loop(listener, shutdown, move |stream, peer, stop| {
            let shared = Arc::clone(&shared);
            async move {
                let activity = Activity::new();
                let stopping = AtomicBool::new(false);
                let handler = PlainHandler { shared: &shared, peer };
                let connection = serve_connection(
                    stream,
                    &handler,
                    Arc::clone(&activity),
                    &stopping,
                    head_limits,
                );
                let watch = Watch {
                    stop,
                    activity,
                    idle_timeout: limits.idle_timeout,
                    head_timeout: Some(limits.header_read_timeout),
                };
                // The connection sees the flag when it is next polled, which `drive` does
                // at once, and ends if no request is under way.
                drive(connection, watch, peer, |_| stopping.store(true, Ordering::Release)).await;
            }
        })
        .await;
        Ok(())
    }

    /// Serves HTTPS until `shutdown` resolves; see [`serve_tls`].
    pub async fn serve_tls(
        self,
        listener: impl Into<Listener>,
        tls_config: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let listener = listener.into();
        let shared = self.into_shared(&listener, true)?;
        let limits = shared.limits;
        let acceptor = TlsAcceptor::from(tls_config);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.header_bytes());
        builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.header_list_bytes());
        let builder = Arc::new(builder);
        accept_loop(listener, shutdown, move |stream, peer, stop| {
            serve_tls_connection(
                stream,
                peer,
                acceptor.clone(),
                Arc::clone(&builder),
                Arc::clone(&shared),
                stop,
            )
        })
        .await;
        Ok(())
    }
}

/// What every connection of one listener shares.
struct Shared {
    proxy: Proxy,
    challenges: Option<Arc<dyn Http01Challenges>>,
    tls: bool,
    limits: ServerLimits,
}

impl Shared {
    /// The answer to `request` if the router gives it itself (an ACME HTTP-01 validation),
    /// before any routing.
    fn own_answer<B>(&self, request: &Request<B>) -> Option<Response<ResponseBody>> {
        answer_challenge(self.challenges.as_deref()?, request)
    }
}

/// The requests of one plain HTTP connection, from the visitor at `peer`.
struct PlainHandler<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
}

impl Handler for PlainHandler<'_> {
    async fn handle(&self, request: Request<RequestBody>) -> Response<ResponseBody> {
        match self.shared.own_answer(&request) {
            Some(response) => response,
            None => self.shared.proxy.handle(request, self.peer).await,
        }
    }
}

async fn serve_tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%peer, "TLS handshake failed: {error}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        // A half-open handshake has no request to finish, so shutdown just drops it.
        () = until_stopped(&mut stop) => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
        tracing::debug!(%peer, "answered a TLS-ALPN-01 validation");
        let mut stream = stream;
        let close = tokio::io::AsyncWriteExt::shutdown(&mut stream);
        let _ = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, close).await;
        return;
    }
    let activity = Activity::new();
    let idle_timeout = shared.limits.idle_timeout;
    let service = service(shared, peer, Arc::clone(&activity));
    let stream = Watched::new(stream, Arc::clone(&activity));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    // hyper's own header timeout holds HTTP/1.1 here: which protocol the auto builder picks
    // is not known out here, and the header timeout is HTTP/1.1's alone (an HTTP/2
    // connection waiting for a request is only idle).
    let watch = Watch { stop, activity, idle_timeout, head_timeout: None };
    drive(connection, watch, peer, |connection| connection.graceful_shutdown()).await;
}

fn service(
    shared: Arc<Shared>,
    peer: SocketAddr,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ServedBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ServedBody>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |request: Request<Incoming>| {
        let request = request.map(RequestBody::from);
        let shared = Arc::clone(&shared);
        // Counted from the moment the head is in until the response body is done, so that
        // a slow app or a long download never looks like an idle connection.
        let busy = activity.busy();
        // The proxy's future is awaited right here rather than through a function of
        // `Shared`: every async layer copies the request in and the response out.
        async move {
            let response = match shared.own_answer(&request) {
                Some(response) => response,
                None if !shared.tls => shared.proxy.handle(request, peer).await,
                None => {
                    // The local address is left out on purpose, here as on plain HTTP:
                    // behind a port redirect (443 to 8443) the port the visitor used is the
                    // one in `Host`, or the scheme's default, not the one the router listens
                    // on.
                    let downstream = Downstream { peer, local: None, tls: true };
                    shared.proxy.handle_from(request, downstream).await
                }
            };
            Ok::<_, Infallible>(response.map(|body| ServedBody::new(body, busy)))
        }
    })
}

/// What ends a connection early: the server stopping, the connection going idle, or (when
/// `head_timeout` is set) a request head that takes too long.
struct Watch {
    stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    head_timeout: Option<Duration>,
}

/// Runs one connection to its end. When `stop` turns true or the connection has been idle
/// too long, asks it to finish what it is doing and close (idle HTTP/1.1 connections close
/// at once, busy ones after their response, HTTP/2 ones send GOAWAY), and keeps driving it until
/// it has. A connection whose request head is late is dropped, closing it without an
/// answer as hyper's own header timeout does; no request is under way on it by then.
///
/// The watchdog is polled only when one of its own timers or `stop` wakes it, not on every
/// wake-up of the connection's task (two or more a request): see [`race`].
async fn drive<C, E>(
    connection: C,
    watch: Watch,
    peer: SocketAddr,
    begin_shutdown: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    let Watch { mut stop, activity, idle_timeout, head_timeout } = watch;
    let mut connection = std::pin::pin!(connection);
    let watchdog = async {
        tokio::select! {
            () = until_stopped(&mut stop) => None,
            expiry = activity.expiry(Some(idle_timeout), head_timeout) => Some(expiry),
        }
    };
    let result = match race(connection.as_mut(), watchdog).await {
        Ok(result) => result,
        Err(ending) => {
            match ending {
                Some(Expiry::HeadTimeout) => return head_timed_out(peer, head_timeout),
                Some(Expiry::Idle) => {
                    tracing::debug!(%peer, "closing a connection idle for {idle_timeout:?}");
                }
                None => {}
            }
            begin_shutdown(connection.as_mut());
            // A graceful shutdown does not end a connection part way through its first
            // request head, so the header timeout holds until the connection ends.
            match race(connection.as_mut(), activity.expiry(None, head_timeout)).await {
                Ok(result) => result,
                Err(_) => return head_timed_out(peer, head_timeout),
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, "connection ended with an error: {error}");
    }
}

/// Notes a connection dropped by [`drive`] for a late request head.
fn head_timed_out(peer: SocketAddr, head_timeout: Option<Duration>) {
    let limit = head_timeout.unwrap_or_default();
    tracing::debug!(%peer, "closing a connection whose request head took over {limit:?}");
}

/// Drives `connection` until it ends (`Ok`) or `watchdog` resolves first (`Err`), polling
/// `watchdog` only after its own waker was woken (and once at the start). A `tokio::select!`
/// would poll both on every wake-up of the task, and the connection's task wakes for every
/// read, write and upstream response, while a watchdog's timers fire a few times a minute.
async fn race<C: Future, W: Future>(
    mut connection: Pin<&mut C>,
    watchdog: W,
) -> Result<C::Output, W::Output> {
    let watchdog = std::pin::pin!(watchdog);
    let mut watchdog = OnWake::new(watchdog);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = connection.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        watchdog.poll(cx).map(Err)
    })
    .await
}

/// A future that is polled only when its own waker has been woken since it was last polled;
/// see [`race`].
struct OnWake<'a, F> {
    future: Pin<&'a mut F>,
    woken: Arc<Woken>,
    /// `woken` as a waker, for the future's context.
    waker: Waker,
    /// The waker of the task last seen polling this, a copy of the one in `woken`, so that
    /// an unchanged task costs a comparison rather than a lock.
    task: Option<Waker>,
}

/// Whether an [`OnWake`]'s future was woken, and the task to wake when it is.
struct Woken {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<'a, F: Future> OnWake<'a, F> {
    fn new(future: Pin<&'a mut F>) -> OnWake<'a, F> {
        // Woken to begin with, so that the first poll starts the future's timers.
        let woken = Arc::new(Woken { woken: AtomicBool::new(true), task: Mutex::new(None) });
        let waker = Waker::from(Arc::clone(&woken));
        OnWake { future, woken, waker, task: None }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
            let task = cx.waker().clone();
            *self.woken.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
            self.task = Some(task);
        }
        if !self.woken.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        self.future.as_mut().poll(&mut Context::from_waker(&self.waker))
    }
}

/// Resolves once the server is shutting down (or is gone).
async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`, so it is dropped here, not held by the
    // connection's future.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Accepts until `shutdown` resolves, running `connection` for each in a task; then stops
/// accepting, tells the connections to finish (through the watch channel), and waits for
/// them, at most `DRAIN_TIMEOUT`.
async fn accept_loop<F, Fut>(
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
    connection: F,
) where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stop, stopped) = watch::channel(false);
    // Connection tasks are kept in a set, not detached, so that the ones still running when
    // the drain times out can be aborted instead of outliving the server.
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Responses are written in a few large writes already; Nagle's algorithm
                    // would only delay the last small one.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, "cannot set TCP_NODELAY: {error}");
                    }
                    connections.spawn(connection(stream, peer, stopped.clone()));
                }
                Err(error) if is_connection_error(&error) => {
                    tracing::debug!("a connection failed before it was accepted: {error}");
                }
                Err(error) => {
                    tracing::warn!("cannot accept connections: {error}");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reaps finished connections so that the set holds only live ones.
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                listener.closed();
                if let Err(error) = finished {
                    tracing::warn!("a connection task failed: {error}");
                }
            }
        }
    }

    drop(listener);
    tracing::debug!(open = connections.len(), "stopped accepting; draining open connections");
    stop.send_replace(true);
    let drained = async {
        while let Some(finished) = connections.join_next().await {
            if let Err(error) = finished {
                tracing::warn!("a connection task failed: {error}");
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after {DRAIN_TIMEOUT:?}; closing them"
        );
    }
    connections.shutdown().await;
}

/// The answer to an ACME HTTP-01 validation request, if this is one for a pending token.
fn answer_challenge<B>(
    challenges: &dyn Http01Challenges,
    request: &Request<B>,
) -> Option<Response<ResponseBody>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return None;
    }
    let token = request.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX)?;
    if token.is_empty() || token.contains('/') {
        return None;
    }
    let key_authorization = challenges.key_authorization(token)?;
    tracing::debug!(token, "answered an HTTP-01 validation");
    let mut response = Response::new(ResponseBody::Page(Full::new(Bytes::from(key_authorization))));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(response)
}

/// Errors that concern one connection that went away while it was queued, not the
/// listener; the next accept will work.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::shared_routes;
    use crate::test_support::{
        DEADLINE, TestProxy, dead_addr, echo_upstream, get, held_upstream, read_message,
        routes_with, send, start_proxy, table_with, upgrade_echo_upstream,
    };
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::time::timeout;
    use tokio_rustls::client::TlsStream;

    #[tokio::test]
    async fn unknown_host_gets_404_page() {
        let proxy = start_proxy(shared_routes()).await;
        let reply = send(proxy.addr, get("Nobody.Example.com:8080", "/")).await;
        assert_eq!(reply.status, 404);
        assert!(
            reply.head.to_ascii_lowercase().contains("content-type: text/html"),
            "{}",
            reply.head
        );
        assert!(reply.body.contains("no app is served at nobody.example.com"), "{}", reply.body);
        assert!(reply.body.contains("NGINX_SERVER_NAME"), "{}", reply.body);
    }

    #[tokio::test]
    async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
        let app = echo_upstream("halfclosed").await;
        let proxy = start_proxy(routes_with(&[("myapp.example.com", "myapp", vec![app])])).await;
        let exchange = async {
            let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
            let request = "GET /half HTTP/1.1\r\nHost: myapp.example.com\r\n\r\n";
            stream.write_all(request.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let answer = timeout(DEADLINE, exchange).await.expect("answered and closed in time");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("GET /half HTTP/1.1"), "{answer}");
    }

    #[tokio::test]
    async fn missing_or_invalid_host_gets_400() {
        let proxy = start_proxy(shared_routes()).await;
        let reply = send(proxy.addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".into()).await;
        assert_eq!(reply.status, 400);
        assert!(reply.body.contains("no Host header"), "{}", reply.body);
        let reply = send(proxy.addr, "GET / HTTP/1.0\r\n\r\n".into()).await;
        assert_eq!(reply.status, 400);
        let reply = send(proxy.addr, get("bad host!", "/")).await;
        assert_eq!(reply.status, 400);
        let two_hosts = "GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\
                         Connection: close\r\n\r\n";
        assert_eq!(send(proxy.addr, two_hosts.into()).await.status, 400);
    }

    #[tokio::test]
    async fn proxies_path_query_and_forwarding_headers() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let proxy = start_proxy(routes).await;
        let request = "GET /some/path?q=1&r=two%20words HTTP/1.1\r\n\
                       Host: MyApp.Example.com:8080\r\n\
                       X-Forwarded-For: 10.0.0.1\r\n\
                       X-Forwarded-Proto: https\r\n\
                       Connection: close, X-Secret\r\n\
                       X-Secret: hop\r\n\
                       Keep-Alive: timeout=300\r\n\
                       Proxy-Authorization: Basic eA==\r\n\
                       Accept: text/plain\r\n\r\n";
        let reply = send(proxy.addr, request.into()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);

        let echo = reply.body.to_ascii_lowercase();
        let mut lines = echo.lines();
        assert_eq!(lines.next(), Some("web.1"));
        assert_eq!(lines.next(), Some("get /some/path?q=1&r=two%20words http/1.1"));
        let upstream_headers: Vec<&str> = lines.collect();
        for expected in [
            "host: myapp.example.com:8080",
            "x-forwarded-for: 10.0.0.1, 127.0.0.1",
            "x-forwarded-proto: http",
            "x-forwarded-host: myapp.example.com:8080",
            "accept: text/plain",
        ] {
            assert!(upstream_headers.contains(&expected), "{expected:?} missing in {echo}");
        }
        for removed in ["connection:", "x-secret:", "keep-alive:", "proxy-authorization:"] {
            assert!(!echo.contains(removed), "{removed:?} forwarded in {echo}");
        }

        let head = reply.head.to_ascii_lowercase();
        assert!(head.contains("x-upstream: web.1"), "{head}");
        assert!(!head.contains("keep-alive"), "{head}");
    }

    #[tokio::test]
    async fn absolute_form_request_is_routed_by_its_authority() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let proxy = start_proxy(routes).await;
        let request = "GET http://myapp.example.com/x?y=1 HTTP/1.1\r\nHost: other.example.com\r\n\
                       Connection: close\r\n\r\n";
        let reply = send(proxy.addr, request.into()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.body.contains("GET /x?y=1 HTTP/1.1\r\n"), "{}", reply.body);
        assert!(reply.body.contains("host: myapp.example.com\r\n"), "{}", reply.body);
    }

    #[tokio::test]
    async fn round_robin_reaches_every_instance() {
        let first = echo_upstream("web.1").await;
        let second = echo_upstream("web.2").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![first, second])]);
        let proxy = start_proxy(routes).await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            seen.push(reply.body.lines().next().unwrap().to_string());
        }
        assert_eq!(seen, ["web.1", "web.2", "web.1", "web.2"]);
    }

    #[tokio::test]
    async fn requests_under_way_are_counted_until_their_body_is_done() {
        // An upstream that sends its headers, then waits for a go before finishing the body.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = read_message(&mut stream).await;
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab").await.unwrap();
            let _ = go_rx.await;
            stream.write_all(b"cd").await.unwrap();
        });
        let in_flight = std::sync::Arc::new(crate::InFlight::new());
        let mut table = crate::RouteTable::new();
        let backend = crate::Backend::new("slow", vec![upstream]).with_in_flight(&in_flight);
        table.insert("slow.example.com", std::sync::Arc::new(backend));
        let routes = crate::shared_routes();
        routes.store(std::sync::Arc::new(table));
        let proxy = start_proxy(routes).await;
        let request = tokio::spawn(send(proxy.addr, get("slow.example.com", "/")));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while in_flight.count(upstream) != 1 {
            assert!(tokio::time::Instant::now() < deadline, "the request was not counted");
            tokio::task::yield_now().await;
        }
        go_tx.send(()).unwrap();
        let reply = request.await.unwrap();
        assert_eq!(reply.body, "abcd");
        while in_flight.count(upstream) != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the finished request is still counted"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn fails_over_from_a_dead_instance_with_the_body_intact() {
        let live = echo_upstream("web.2").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![dead_addr().await, live])]);
        let proxy = start_proxy(routes).await;
        // Four requests, so that the round-robin starts at the dead instance twice.
        for _ in 0..4 {
            let request = "POST /submit HTTP/1.1\r\nHost: myapp.example.com\r\n\
                           Content-Length: 11\r\nConnection: close\r\n\r\nhello world";
            let reply = send(proxy.addr, request.into()).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert!(reply.body.starts_with("web.2\nPOST /submit HTTP/1.1\r\n"), "{}", reply.body);
            assert!(reply.body.ends_with("\r\n\r\nhello world"), "{}", reply.body);
        }
    }

    #[tokio::test]
    async fn all_instances_dead_gets_502_naming_the_app() {
        let addrs = vec![dead_addr().await, dead_addr().await];
        let proxy = start_proxy(routes_with(&[("myapp.example.com", "myapp", addrs)])).await;
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!(reply.status, 502);
        assert!(reply.body.contains("the app myapp did not answer"), "{}", reply.body);
    }

    #[tokio::test]
    async fn stopped_app_gets_502_not_running() {
        let proxy = start_proxy(routes_with(&[("myapp.example.com", "myapp", vec![])])).await;
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!(reply.status, 502);
        assert!(reply.body.contains("the app myapp is not running"), "{}", reply.body);
        assert!(reply.body.contains("berth start myapp"), "{}", reply.body);
    }

    #[tokio::test]
    async fn storing_a_new_table_reroutes_the_next_request() {
        let old = echo_upstream("old.1").await;
        let new = echo_upstream("new.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![old])]);
        let proxy = start_proxy(Arc::clone(&routes)).await;
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert!(reply.body.starts_with("old.1\n"), "{}", reply.body);

        routes.store(Arc::new(table_with(&[("other.example.com", "other", vec![new])])));
        let reply = send(proxy.addr, get("other.example.com", "/")).await;
        assert!(reply.body.starts_with("new.1\n"), "{}", reply.body);
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!(reply.status, 404);
    }

    #[tokio::test]
    async fn shutdown_lets_a_request_in_flight_finish_then_returns() {
        // The instance answers only when told, so the shutdown is known to start while the
        // request is in flight.
        let (upstream, request_arrived, release) = held_upstream().await;
        let fast = echo_upstream("fast.1").await;
        let routes = routes_with(&[
            ("slow.example.com", "slow", vec![upstream]),
            ("fast.example.com", "fast", vec![fast]),
        ]);
        let proxy = start_proxy(routes).await;

        // An idle keep-alive connection must not hold the shutdown up: it is closed.
        let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: fast.example.com\r\n\r\n").await.unwrap();
        let (head, _) = timeout(DEADLINE, read_message(&mut idle)).await.unwrap().unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");

        let in_flight = tokio::spawn(send(proxy.addr, get("slow.example.com", "/")));
        timeout(DEADLINE, request_arrived).await.unwrap().unwrap();
        proxy.stop.send(()).unwrap();

        let mut rest = Vec::new();
        timeout(DEADLINE, idle.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

        release.send(()).unwrap();
        let reply = timeout(DEADLINE, in_flight).await.unwrap().unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "slow");

        let served = timeout(DEADLINE, proxy.server).await.expect("serve returned in time");
        served.unwrap().unwrap();
        assert!(TcpStream::connect(proxy.addr).await.is_err(), "still accepting after shutdown");
    }

    /// A TLS configuration with one self-signed certificate for `name`, offering `alpn`;
    /// returns it with the certificate a client must trust.
    fn self_signed_tls(
        name: &str,
        alpn: &[&[u8]],
    ) -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        (Arc::new(config), cert)
    }

    async fn start_tls_proxy(
        routes: crate::SharedRoutes,
        tls_config: Arc<rustls::ServerConfig>,
    ) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_tls(listener, routes, tls_config, async move {
            let _ = stopped.await;
        }));
        TestProxy { addr, stop, server }
    }

    /// A TLS connection that trusts only `root`, for `name`, offering `alpn`.
    async fn tls_connect(
        addr: SocketAddr,
        name: &str,
        root: &CertificateDer<'static>,
        alpn: &[&[u8]],
    ) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        timeout(DEADLINE, connector.connect(name, stream)).await.unwrap().unwrap()
    }

    /// Reads until the server closes; a close without TLS close_notify counts as the end.
    async fn read_until_closed(stream: &mut TlsStream<TcpStream>) -> String {
        let mut raw = Vec::new();
        match timeout(DEADLINE, stream.read_to_end(&mut raw)).await.unwrap() {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(error) => panic!("reading the response: {error}"),
        }
        String::from_utf8(raw).unwrap()
    }

    #[tokio::test]
    async fn https_over_http_1_1_reaches_the_app_as_https() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let (tls_config, root) = self_signed_tls("myapp.example.com", &[b"h2", b"http/1.1"]);
        let proxy = start_tls_proxy(routes, tls_config).await;

        let mut stream = tls_connect(proxy.addr, "myapp.example.com", &root, &[b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        stream.write_all(get("myapp.example.com", "/secure?x=1").as_bytes()).await.unwrap();
        let reply = read_until_closed(&mut stream).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        let echo = reply.to_ascii_lowercase();
        assert!(echo.contains("\r\n\r\nweb.1\nget /secure?x=1 http/1.1\r\n"), "{reply}");
        assert!(echo.contains("\r\nx-forwarded-proto: https\r\n"), "{reply}");
        assert!(echo.contains("\r\nx-forwarded-port: 443\r\n"), "{reply}");

        // A client that does not trust the certificate never gets to send a request.
        let (_, stranger) = self_signed_tls("myapp.example.com", &[]);
        let connector = {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(stranger).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        };
        let name = ServerName::try_from("myapp.example.com").unwrap();
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(timeout(DEADLINE, connector.connect(name, tcp)).await.unwrap().is_err());

        proxy.stop.send(()).unwrap();
        let served = timeout(DEADLINE, proxy.server).await.expect("serve_tls returned in time");
        served.unwrap().unwrap();
    }

    #[tokio::test]
    async fn http2_is_served_to_clients_that_negotiate_it_and_drained_on_shutdown() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let (tls_config, root) = self_signed_tls("myapp.example.com", &[b"h2", b"http/1.1"]);
        let proxy = start_tls_proxy(routes, tls_config).await;

        let stream =
            tls_connect(proxy.addr, "myapp.example.com", &root, &[b"h2", b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        let connection = tokio::spawn(connection);

        // Two requests at once on the one connection: HTTP/2 multiplexes them.
        let request = |path: &str| {
            let mut sender = sender.clone();
            let request = Request::get(format!("https://myapp.example.com{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            async move {
                let response = sender.send_request(request).await.unwrap();
                let version = response.version();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (version, status, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        let (first, second) = tokio::join!(request("/one?x=1"), request("/two"));
        for ((version, status, body), path) in [(first, "/one?x=1"), (second, "/two")] {
            assert_eq!(version, http::Version::HTTP_2);
            assert_eq!(status, 200, "{body}");
            let echo = body.to_ascii_lowercase();
            assert!(echo.starts_with(&format!("web.1\nget {path} http/1.1\r\n")), "{body}");
            assert!(echo.contains("\r\nhost: myapp.example.com\r\n"), "{body}");
            assert!(echo.contains("\r\nx-forwarded-proto: https\r\n"), "{body}");
        }

        // Shutdown sends GOAWAY: the idle connection ends and serve_tls returns.
        proxy.stop.send(()).unwrap();
        let served = timeout(DEADLINE, proxy.server).await.expect("serve_tls returned in time");
        served.unwrap().unwrap();
        let ended = timeout(DEADLINE, connection).await.expect("the h2 connection ended");
        ended.unwrap().unwrap();
    }

    #[tokio::test]
    async fn websockets_pass_through_plain_and_tls_connections() {
        let (heads, mut upstream_heads) = tokio::sync::mpsc::channel(4);
        let upstream = upgrade_echo_upstream(heads).await;
        let routes = routes_with(&[("chat.example.com", "chat", vec![upstream])]);
        let (tls_config, root) = self_signed_tls("chat.example.com", &[b"h2", b"http/1.1"]);
        let plain = start_proxy(Arc::clone(&routes)).await;
        let tls = start_tls_proxy(routes, tls_config).await;
        let handshake = "GET /socket HTTP/1.1\r\nHost: chat.example.com\r\n\
                         Connection: Upgrade\r\nUpgrade: websocket\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                         Sec-WebSocket-Version: 13\r\n\r\n";

        let mut stream = TcpStream::connect(plain.addr).await.unwrap();
        stream.write_all(handshake.as_bytes()).await.unwrap();
        let (head, _) = timeout(DEADLINE, read_message(&mut stream)).await.unwrap().unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        timeout(DEADLINE, upstream_heads.recv()).await.unwrap().unwrap();
        stream.write_all(b"plain bytes").await.unwrap();
        let mut echoed = [0u8; 11];
        timeout(DEADLINE, stream.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(&echoed, b"plain bytes");

        let mut stream = tls_connect(tls.addr, "chat.example.com", &root, &[b"http/1.1"]).await;
        stream.write_all(handshake.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            timeout(DEADLINE, stream.read_exact(&mut byte)).await.unwrap().unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let sent = timeout(DEADLINE, upstream_heads.recv()).await.unwrap().unwrap();
        assert!(sent.to_ascii_lowercase().contains("x-forwarded-proto: https"), "{sent}");
        stream.write_all(b"tls bytes").await.unwrap();
        let mut echoed = [0u8; 9];
        timeout(DEADLINE, stream.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(&echoed, b"tls bytes");
    }

    #[tokio::test]
    async fn a_tls_alpn_validation_is_closed_after_its_handshake() {
        let routes = routes_with(&[]);
        let (tls_config, root) =
            self_signed_tls("myapp.example.com", &[b"h2", b"http/1.1", ACME_TLS_ALPN]);
        let proxy = start_tls_proxy(routes, tls_config).await;
        let mut stream =
            tls_connect(proxy.addr, "myapp.example.com", &root, &[ACME_TLS_ALPN]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(ACME_TLS_ALPN));
        assert_eq!(read_until_closed(&mut stream).await, "");
    }

    #[tokio::test]
    async fn acme_http_01_tokens_are_answered_before_routing() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let challenges: Arc<dyn Http01Challenges> =
            Arc::new(|token: &str| (token == "tok-1").then(|| "tok-1.thumbprint".to_string()));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_challenges(listener, routes, challenges, async {
            let _ = stopped.await;
        }));

        // Any host: the CA asks with the name being validated, routed or not.
        for host in ["myapp.example.com", "not-yet-routed.example.com"] {
            let reply = send(addr, get(host, "/.well-known/acme-challenge/tok-1")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.body, "tok-1.thumbprint");
            assert!(reply.head.to_ascii_lowercase().contains("cache-control: no-store"));
        }
        // Tokens Berth does not know are the app's business.
        let reply = send(addr, get("myapp.example.com", "/.well-known/acme-challenge/other")).await;
        assert!(reply.body.starts_with("web.1\nGET /.well-known/acme-challenge/other "));
        let reply = send(addr, get("nobody.example.com", "/.well-known/acme-challenge/")).await;
        assert_eq!(reply.status, 404);
        let post = "POST /.well-known/acme-challenge/tok-1 HTTP/1.1\r\nHost: myapp.example.com\r\n\
                    Content-Length: 0\r\nConnection: close\r\n\r\n";
        let reply = send(addr, post.into()).await;
        assert!(reply.body.starts_with("web.1\nPOST "), "{}", reply.body);

        stop.send(()).unwrap();
        timeout(DEADLINE, server).await.unwrap().unwrap().unwrap();
    }

    fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    #[tokio::test]
    async fn https_only_apps_redirect_plain_http_except_acme_and_get_hsts_over_tls() {
        let upstream = echo_upstream("web.1").await;
        let mut table = crate::RouteTable::new();
        let secure = crate::Backend::new("secure", vec![upstream]).with_https_only(true);
        table.insert("secure.example.com", Arc::new(secure));
        table.insert("plain.example.com", Arc::new(crate::Backend::new("plain", vec![upstream])));
        let routes = shared_routes();
        routes.store(Arc::new(table));
        let plain = start_proxy(Arc::clone(&routes)).await;

        let reply = send(plain.addr, get("Secure.Example.com:8080", "/a/b?x=1&y=%20")).await;
        assert_eq!(reply.status, 301, "{}", reply.head);
        let location = header_of(&reply.head, "location");
        assert_eq!(location, Some("https://secure.example.com/a/b?x=1&y=%20"));
        assert!(reply.body.is_empty());
        // Other methods keep their method and body through the redirect.
        let post = "POST /form HTTP/1.1\r\nHost: secure.example.com\r\nContent-Length: 2\r\n\
                    Connection: close\r\n\r\nok";
        let reply = send(plain.addr, post.into()).await;
        assert_eq!(reply.status, 308, "{}", reply.head);
        assert_eq!(header_of(&reply.head, "location"), Some("https://secure.example.com/form"));
        // Certificates are validated over plain HTTP, so that path still reaches the app.
        let reply =
            send(plain.addr, get("secure.example.com", "/.well-known/acme-challenge/t")).await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert!(reply.body.starts_with("web.1\nGET /.well-known/acme-challenge/t "));
        assert_eq!(header_of(&reply.head, "strict-transport-security"), None);
        // Other apps are untouched.
        assert_eq!(send(plain.addr, get("plain.example.com", "/")).await.status, 200);

        let (tls_config, root) = self_signed_tls("secure.example.com", &[b"h2", b"http/1.1"]);
        let tls = start_tls_proxy(routes, tls_config).await;
        for (host, hsts) in
            [("secure.example.com", Some("max-age=31536000")), ("plain.example.com", None)]
        {
            let mut stream =
                tls_connect(tls.addr, "secure.example.com", &root, &[b"http/1.1"]).await;
            stream.write_all(get(host, "/a").as_bytes()).await.unwrap();
            let reply = read_until_closed(&mut stream).await;
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
            let head = reply.split("\r\n\r\n").next().unwrap();
            assert_eq!(header_of(head, "strict-transport-security"), hsts, "{host}");
        }
    }

    #[tokio::test]
    async fn an_app_port_sends_every_host_to_its_app() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server =
            tokio::spawn(serve_app_port(listener, Arc::clone(&routes), "myapp".into(), async {
                let _ = stopped.await;
            }));

        for host in ["myapp.example.com", "nobody.example.org", "10.1.2.3:8080"] {
            let request = format!(
                "GET /x HTTP/1.1\r\nHost: {host}\r\nX-App: other\r\nConnection: close\r\n\r\n"
            );
            let reply = send(addr, request).await;
            assert_eq!(reply.status, 200, "{host}: {}", reply.body);
            assert!(reply.body.starts_with("web.1\nGET /x HTTP/1.1\r\n"), "{}", reply.body);
            assert_eq!(header_of(&reply.body, "host"), Some(host));
        }
        // Even without a Host header (HTTP/1.0), the request is the app's.
        let reply = send(addr, "GET /old HTTP/1.0\r\n\r\n".into()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header_of(&reply.body, "host"), Some(addr.to_string().as_str()));

        // While the app is not in the table, the page names it.
        routes.store(Arc::new(table_with(&[("other.example.com", "other", vec![upstream])])));
        let reply = send(addr, get("myapp.example.com", "/")).await;
        assert_eq!(reply.status, 502);
        assert!(reply.body.contains("no app named myapp is served here"), "{}", reply.body);

        stop.send(()).unwrap();
        timeout(DEADLINE, server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_idle_http2_connection_is_sent_away() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let (tls_config, root) = self_signed_tls("myapp.example.com", &[b"h2"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits =
            ServerLimits { idle_timeout: Duration::from_millis(200), ..ServerLimits::default() };
        let server = Server::new(routes).with_limits(limits);
        tokio::spawn(server.serve_tls(listener, tls_config, std::future::pending()));

        let stream = tls_connect(addr, "myapp.example.com", &root, &[b"h2"]).await;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request =
            Request::get("https://myapp.example.com/").body(Empty::<Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        // Nothing more is asked: the server ends the connection (GOAWAY, then close).
        timeout(DEADLINE, connection).await.expect("the idle connection ended").unwrap().unwrap();
    }
}
