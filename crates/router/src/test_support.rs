//! Helpers for the socket tests: a proxy on a free port, fake app instances, and a raw
//! HTTP/1.1 client, so that tests see exactly the bytes a browser would.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::body::ResponseBody;
use crate::connection::Activity;
use crate::h1::MAX_HEAD_BYTES;
use crate::h1_server::{Handler, HeadLimits, RequestBody, serve_connection};
use crate::proxy::{Downstream, Proxy};
use crate::server::{Server, serve};
use crate::table::{Backend, RouteTable, SharedRoutes, shared_routes};

/// Every wait in these tests is bounded by this, so a bug fails a test instead of
/// hanging it; nothing waits for a fixed time.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

pub(crate) struct TestProxy {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: oneshot::Sender<()>,
    pub(crate) server: JoinHandle<io::Result<()>>,
}

/// Starts `serve` on a fresh port. The listener is bound before the task starts, so
/// connections queue in its backlog and the proxy is ready as soon as this returns.
pub(crate) async fn start_proxy(routes: SharedRoutes) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, routes, async move {
        let _ = stopped.await;
    }));
    TestProxy { addr, stop, server }
}

/// Starts a configured [`Server`] on a fresh port, as [`start_proxy`] does.
pub(crate) async fn start_server(server: Server) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    TestProxy { addr, stop, server }
}

/// Serves `proxy` on a fresh port the way a full server does for the parts `serve` leaves
/// out: connections are served with upgrades, so WebSocket tunnels work, and the proxy is
/// told each connection's local address. No graceful drain: stopping just stops accepting.
pub(crate) async fn start_proxy_with(proxy: Proxy) -> TestProxy {
    start_proxy_seen_from(proxy, None).await
}

/// [`start_proxy_with`], with the proxy told that every connection comes from `peer` when
/// one is given: the sockets are real, only the address the proxy judges them by is not, so
/// that rules about addresses beyond loopback (Cloudflare's) can be tested.
pub(crate) async fn start_proxy_seen_from(proxy: Proxy, peer: Option<SocketAddr>) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let proxy = Arc::new(proxy);
    let server = tokio::spawn(async move {
        loop {
            let (stream, real_peer) = tokio::select! {
                _ = &mut stopped => return Ok(()),
                accepted = listener.accept() => accepted?,
            };
            let peer = peer.unwrap_or(real_peer);
            let local = stream.local_addr()?;
            let downstream = Downstream { peer, local: Some(local), tls: false };
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move {
                let handler = DownstreamHandler { proxy, downstream };
                let stopping = AtomicBool::new(false);
                let limits = HeadLimits { max_head_bytes: MAX_HEAD_BYTES };
                let _ =
                    serve_connection(stream, &handler, Activity::new(), &stopping, limits).await;
            });
        }
    });
    TestProxy { addr, stop, server }
}

/// Serves every request of a connection with a proxy, as coming from `downstream`.
struct DownstreamHandler {
    proxy: Arc<Proxy>,
    downstream: Downstream,
}

impl Handler for DownstreamHandler {
    async fn handle(&self, request: Request<RequestBody>) -> Response<ResponseBody> {
        self.proxy.handle_from(request, self.downstream).await
    }
}

pub(crate) fn routes_with(entries: &[(&str, &str, Vec<SocketAddr>)]) -> SharedRoutes {
    let routes = shared_routes();
    routes.store(Arc::new(table_with(entries)));
    routes
}

pub(crate) fn table_with(entries: &[(&str, &str, Vec<SocketAddr>)]) -> RouteTable {
    let mut table = RouteTable::new();
    for (host, app, addrs) in entries {
        table.insert(host, Arc::new(Backend::new(*app, addrs.clone())));
    }
    table
}

/// An address where nothing listens: a port the kernel just handed out and took back.
pub(crate) async fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

/// A listener at `addr` that counts the connections it accepts and answers each request
/// with `revived`; with `close`, it says `Connection: close` and closes after each answer.
pub(crate) async fn counting_upstream(addr: SocketAddr, close: bool) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let response: &'static str = if close {
        "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nrevived\n"
    } else {
        "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nrevived\n"
    };
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while read_message(&mut stream).await.is_some() {
                    stream.write_all(response.as_bytes()).await.unwrap();
                    if close {
                        break;
                    }
                }
            });
        }
    });
    accepted
}

/// Reads one HTTP/1.1 message framed by `Content-Length` (or without a body), returning
/// its head and body, or `None` at a clean end of stream.
pub(crate) async fn read_message(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            assert!(buffer.is_empty(), "stream ended inside a message head");
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
    let content_length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < content_length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "stream ended inside a message body");
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, String::from_utf8(body).unwrap()))
}

/// An app instance that answers each request with its name, then the request head and
/// body exactly as it received them. Its `Keep-Alive` header must not reach the client.
pub(crate) async fn echo_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some((head, body)) = read_message(&mut stream).await {
                    let echo = format!("{name}\n{head}{body}");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\n\
                         X-Upstream: {name}\r\n\r\n{echo}",
                        echo.len()
                    );
                    stream.write_all(response.as_bytes()).await.unwrap();
                }
            });
        }
    });
    addr
}

/// An app instance that answers any request with `101 Switching Protocols`, sends the
/// request head it received on `heads`, then echoes every byte back until the client closes.
pub(crate) async fn upgrade_echo_upstream(heads: tokio::sync::mpsc::Sender<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let Some((head, _)) = read_message(&mut stream).await else { return };
                let _ = heads.send(head).await;
                let switch = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                              Upgrade: websocket\r\n\r\n";
                stream.write_all(switch.as_bytes()).await.unwrap();
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    addr
}

/// Reads from `stream` until `expected.len()` bytes have come, within the deadline.
pub(crate) async fn read_exactly(stream: &mut TcpStream, expected: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; expected];
    timeout(DEADLINE, stream.read_exact(&mut bytes)).await.expect("bytes in time").unwrap();
    bytes
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

/// Sends raw bytes on a fresh connection and reads the response to the end of stream;
/// requests carry `Connection: close`, so the proxy closes after answering.
pub(crate) async fn send(proxy: SocketAddr, request: String) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    };
    let raw = timeout(DEADLINE, exchange).await.expect("the proxy answered in time");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response head");
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap();
    Reply { status, head: head.to_string(), body: body.to_string() }
}

/// The value of the header `name` in a message head (or an echoed request), matching the
/// name in any case.
pub(crate) fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}

pub(crate) fn get(host: &str, target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// One request as an upstream saw it, parsed by hyper as an app's server would.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// `METHOD TARGET VERSION`, e.g. `GET /a?b HTTP/1.1`.
    pub(crate) line: String,
    pub(crate) headers: HeaderMap,
    /// The whole body, or why it could not be read (or that it is still being read).
    pub(crate) body: Result<Bytes, String>,
    /// Whether the body has been read to its end or its error.
    pub(crate) finished: bool,
}

/// How a [`RecordingUpstream`] answers: the request and how many came before it.
pub(crate) type Responder = Arc<dyn Fn(&Seen, usize) -> Response<Full<Bytes>> + Send + Sync>;

/// An app instance, on hyper like most apps' servers, that records every request it
/// parses (the head as soon as it is in, then the body once read).
pub(crate) struct RecordingUpstream {
    pub(crate) addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingUpstream {
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A [`RecordingUpstream`] answering `200 ok` to everything.
pub(crate) async fn recording_upstream() -> RecordingUpstream {
    recording_upstream_with(Arc::new(|_, _| Response::new(Full::new(Bytes::from_static(b"ok")))))
        .await
}

pub(crate) async fn recording_upstream_with(respond: Responder) -> RecordingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            let respond = Arc::clone(&respond);
            let service = service_fn(move |request: Request<Incoming>| {
                let record = Arc::clone(&record);
                let respond = Arc::clone(&respond);
                async move {
                    let (parts, body) = request.into_parts();
                    let line = format!("{} {} {:?}", parts.method, parts.uri, parts.version);
                    let index = {
                        let mut seen = record.lock().unwrap_or_else(PoisonError::into_inner);
                        let pending = Err("the body is being read".to_string());
                        let headers = parts.headers;
                        seen.push(Seen { line, headers, body: pending, finished: false });
                        seen.len() - 1
                    };
                    let body = body.collect().await.map(|body| body.to_bytes());
                    let seen = {
                        let mut seen = record.lock().unwrap_or_else(PoisonError::into_inner);
                        seen[index].body = body.map_err(|error| error.to_string());
                        seen[index].finished = true;
                        seen[index].clone()
                    };
                    Ok::<_, Infallible>(respond(&seen, index))
                }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    RecordingUpstream { addr, seen }
}

/// Sends raw bytes on a fresh connection and reads whatever comes back until the proxy
/// closes the connection (or resets it), within the deadline.
pub(crate) async fn exchange_raw(proxy: SocketAddr, request: &[u8]) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        // The proxy may close before taking everything (that is the point of some tests).
        let _ = stream.write_all(request).await;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&raw).into_owned()
    };
    timeout(DEADLINE, exchange).await.expect("the proxy answered or closed in time")
}

/// A header map of `(name, value)` pairs, in order, for tests of header logic.
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// An instance that takes one connection, reports when its request has arrived, and
/// answers `slow` only once released, so a test knows a request is in flight.
pub(crate) async fn held_upstream() -> (SocketAddr, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, request_arrived) = oneshot::channel();
    let (release, released) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_message(&mut stream).await.unwrap();
        arrived.send(()).unwrap();
        let _ = released.await;
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow";
        stream.write_all(response.as_bytes()).await.unwrap();
    });
    (addr, request_arrived, release)
}

/// Polls `done` until it holds, failing the test after the deadline.
pub(crate) async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
