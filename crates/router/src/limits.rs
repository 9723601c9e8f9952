//! The limits a visitor is held to, in place of nginx's `client_max_body_size`,
//! `large_client_header_buffers`, `client_header_timeout`, `keepalive_timeout` and
//! `proxy_read_timeout`: per app ([`Limits`]) and per listener ([`ServerLimits`]).
//!
//! What a visitor sees when a limit is hit:
//!
//! | limit                         | answer                                                     |
//! |-------------------------------|------------------------------------------------------------|
//! | body, by `Content-Length`     | 413 before the app is contacted (see below)                |
//! | body, chunked, grows past it  | the app's request is aborted; 413 if no response was sent  |
//! | request head size, or headers | 431 naming the limit, then the connection is closed        |
//! | request head too slow         | the connection is closed without a response (see below)    |
//! | idle keep-alive connection    | closed (HTTP/1.1) or sent GOAWAY (HTTP/2)                   |
//! | app slow to answer            | 504 page                                                   |
//!
//! A slow request head gets a close rather than a 408: the connection's watchdog (on plain
//! HTTP) or hyper's own header timeout (over TLS, where hyper owns the connection until the
//! head is parsed) closes it without writing anything. nginx behaves the same in practice (it logs a 408
//! but does not send one), and browsers retry a request that met a closed keep-alive
//! connection.
//!
//! A body refused by its `Content-Length` is read and thrown away first, up to
//! [`DISCARD_BYTES`] and [`DISCARD_TIME`] (nginx's lingering close): a response sent while
//! the client is still sending would be followed by a close, and the client's next bytes
//! would make the kernel reset the connection, taking the 413 with it before the client
//! read it. A client that asked `Expect: 100-continue` is answered at once: it has sent no
//! body and will not.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::HeaderMap;
use http::header::EXPECT;
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::body::BoxError;

/// How much of a refused body is read and thrown away before the 413; see the module
/// documentation.
pub(crate) const DISCARD_BYTES: u64 = 1024 * 1024;
/// How long reading a refused body may take before the 413 is sent anyway.
pub(crate) const DISCARD_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what the client sends of a refused body, within [`DISCARD_BYTES`] and
/// [`DISCARD_TIME`], unless it waits for `100 Continue` (reading would ask for the body).
pub(crate) async fn discard_refused_body<B: Body<Data = bytes::Bytes> + Unpin>(
    headers: &HeaderMap,
    mut body: B,
) {
    if headers.contains_key(EXPECT) {
        return;
    }
    let discard = async {
        let mut read = 0u64;
        while read < DISCARD_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, |data| data.len() as u64);
                }
                Some(Err(_)) | None => return,
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, discard).await;
}

/// The smallest request head limit: hyper (HTTPS) refuses a smaller read buffer, so a
/// smaller header limit is raised to this, for plain HTTP too.
pub(crate) const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Per-app limits; see [`crate::Backend::with_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body the app is sent, in bytes. A larger `Content-Length` is
    /// answered with 413 before the app is contacted; a chunked body that grows past it
    /// aborts the request to the app, and the visitor gets 413 if the app has not answered
    /// yet. Default 100 MiB, a generous nginx `client_max_body_size`.
    pub max_body_bytes: u64,
    /// How long the app may take to start answering (its response head) once the request
    /// and any body it is still being sent last made progress; then the visitor gets a 504
    /// and the request to the app is dropped. A response that has started is not bounded,
    /// so downloads and event streams may run long. Default 60 s, nginx's
    /// `proxy_read_timeout`.
    pub response_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_body_bytes: 100 * 1024 * 1024, response_timeout: Duration::from_secs(60) }
    }
}

/// Limits for every connection of one listener; see [`crate::Server::with_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// The largest request head (request line and headers), in bytes; a larger one gets a
    /// 431 and the connection is closed; so does a head with more than 100 headers. Values
    /// below 8 KiB count as 8 KiB (hyper's smallest read buffer, for HTTPS). For HTTP/2 this is the header list size. Default 64 KiB,
    /// twice what nginx's default `large_client_header_buffers` allow.
    pub max_header_bytes: usize,
    /// How long a client has to send a complete request head, counted from when the
    /// connection is ready for one (accepted, or done with the previous response and done
    /// writing it); then the connection is closed. Because the clock also runs while an HTTP/1.1 connection
    /// waits idle for its next request, this also caps [`ServerLimits::idle_timeout`] there.
    /// Default 30 s.
    pub header_read_timeout: Duration,
    /// How long a connection may go without a request under way and without a byte in
    /// either direction before it is closed (HTTP/2 connections are sent a GOAWAY).
    /// Default 20 s.
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(20),
        }
    }
}

impl ServerLimits {
    /// The request head limit as the servers take it.
    pub(crate) fn header_bytes(&self) -> usize {
        self.max_header_bytes.max(MIN_HEADER_BYTES)
    }

    /// The request head limit for HTTP/2, whose setting is a `u32`.
    pub(crate) fn header_list_bytes(&self) -> u32 {
        u32::try_from(self.header_bytes()).unwrap_or(u32::MAX)
    }
}

/// The error a request body gives once it has grown past the app's limit; the proxy finds
/// it in the chain of the error the upstream request failed with.
#[derive(Debug)]
pub(crate) struct BodyTooLarge {
    pub(crate) limit: u64,
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body is larger than {} bytes", self.limit)
    }
}

impl StdError for BodyTooLarge {}

/// The visitor's request body could not be read (bad chunked framing, or the client went
/// away): the visitor's fault, not the app's.
#[derive(Debug)]
pub(crate) struct ClientBodyError(pub(crate) BoxError);

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body could not be read")
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// The first error of type `T` in `error`'s chain, `error` included.
pub(crate) fn find_cause<'a, T: StdError + 'static>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    use super::*;
    use crate::server::Server;
    use crate::table::{Backend, InFlight, RouteTable, shared_routes};
    use crate::test_support::{
        DEADLINE, dead_addr, echo_upstream, exchange_raw, get, read_message, recording_upstream,
        routes_with, send, start_proxy, start_server, wait_for,
    };

    fn routes_for(backend: Backend) -> crate::SharedRoutes {
        let mut table = RouteTable::new();
        table.insert("myapp.example.com", Arc::new(backend));
        let routes = shared_routes();
        routes.store(Arc::new(table));
        routes
    }

    fn small_body_limit(addrs: Vec<std::net::SocketAddr>) -> Backend {
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        Backend::new("myapp", addrs).with_limits(limits)
    }

    fn status_of(raw: &str) -> Option<u16> {
        raw.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    #[test]
    fn defaults_are_generous_and_header_limits_respect_hypers_minimum() {
        assert_eq!(Limits::default().max_body_bytes, 100 * 1024 * 1024);
        assert_eq!(Limits::default().response_timeout, Duration::from_secs(60));
        let limits = ServerLimits { max_header_bytes: 100, ..ServerLimits::default() };
        assert_eq!(limits.header_bytes(), MIN_HEADER_BYTES);
        assert_eq!(ServerLimits::default().header_list_bytes(), 64 * 1024);
    }

    #[tokio::test]
    async fn a_body_announced_over_the_limit_gets_413_before_the_app_is_contacted() {
        let upstream = recording_upstream().await;
        let proxy = start_proxy(routes_for(small_body_limit(vec![upstream.addr]))).await;

        // Only the head is sent, as a client waiting for `100 Continue` would: the answer
        // must not wait for a body.
        let head = "POST /upload HTTP/1.1\r\nHost: myapp.example.com\r\nContent-Length: 11\r\n\
                    Expect: 100-continue\r\n\r\n";
        let raw = exchange_raw(proxy.addr, head.as_bytes()).await;
        assert_eq!(status_of(&raw), Some(413), "{raw}");
        assert!(raw.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{raw}");
        assert!(raw.contains("larger than the 10 bytes allowed"), "{raw}");
        assert!(!raw.contains("100 Continue"), "{raw}");

        // At the limit, the body goes through.
        let request = "POST /upload HTTP/1.1\r\nHost: myapp.example.com\r\nContent-Length: 10\r\n\
                       Connection: close\r\n\r\n0123456789";
        assert_eq!(send(proxy.addr, request.into()).await.status, 200);
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].body.as_deref().unwrap(), b"0123456789");
    }

    #[tokio::test]
    async fn a_chunked_body_that_grows_past_the_limit_is_cut_off_with_413() {
        let upstream = recording_upstream().await;
        let in_flight = InFlight::new();
        let backend = small_body_limit(vec![upstream.addr]).with_in_flight(&in_flight);
        let proxy = start_proxy(routes_for(backend)).await;

        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let head = "POST /upload HTTP/1.1\r\nHost: myapp.example.com\r\n\
                    Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        // The app has the head and the first chunk before the body is too large.
        wait_for("the request reaches the app", || !upstream.seen().is_empty()).await;
        stream.write_all(b"6\r\nworld!\r\n0\r\n\r\n").await.unwrap();
        let mut raw = Vec::new();
        timeout(DEADLINE, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
        let raw = String::from_utf8(raw).unwrap();
        assert_eq!(status_of(&raw), Some(413), "{raw}");

        // The app's request was aborted, so it never got a complete body.
        wait_for("the app sees the request end", || upstream.seen()[0].finished).await;
        assert!(upstream.seen()[0].body.is_err(), "{:?}", upstream.seen());
        wait_for("the request is no longer counted", || in_flight.count(upstream.addr) == 0).await;
    }

    #[tokio::test]
    async fn an_oversized_request_head_gets_431_and_a_normal_one_passes() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let limits = ServerLimits { max_header_bytes: 8 * 1024, ..ServerLimits::default() };
        let proxy = start_server(Server::new(Arc::clone(&routes)).with_limits(limits)).await;

        // Exactly the limit, without the end of the head: the router reads all of it (so
        // closing does not reset the connection under the answer) and finds no end.
        let mut head = b"GET / HTTP/1.1\r\nHost: myapp.example.com\r\nX-Big: ".to_vec();
        head.resize(8 * 1024, b'a');
        let raw = exchange_raw(proxy.addr, &head).await;
        assert_eq!(status_of(&raw), Some(431), "{raw}");

        // 20 KiB of headers is within the default limit.
        let proxy = start_proxy(routes).await;
        let big = "b".repeat(20 * 1024);
        let request = format!(
            "GET / HTTP/1.1\r\nHost: myapp.example.com\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(send(proxy.addr, request).await.status, 200);
    }

    #[tokio::test]
    async fn a_client_dripping_its_head_is_cut_off_at_the_header_timeout() {
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![dead_addr().await])]);
        let header_read_timeout = Duration::from_millis(500);
        let limits = ServerLimits { header_read_timeout, ..ServerLimits::default() };
        let proxy = start_server(Server::new(routes).with_limits(limits)).await;

        let started = Instant::now();
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        // One byte every 100 ms (the brief's "one a second", sped up), at most 200 of them:
        // far past the timeout, and bounded even if the router never closes.
        let dripper = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            for byte in
                b"GET / HTTP/1.1\r\nHost: myapp.example.com\r\nX-Slow: ".iter().cycle().take(200)
            {
                ticks.tick().await;
                if writer.write_all(&[*byte]).await.is_err() {
                    break;
                }
            }
        });
        let mut raw = Vec::new();
        let closed = timeout(DEADLINE, async {
            let mut chunk = [0u8; 1024];
            loop {
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the slow client was never cut off");
        let elapsed = started.elapsed();
        assert!(elapsed >= header_read_timeout, "closed after {elapsed:?}");
        let raw = String::from_utf8_lossy(&raw);
        // hyper closes without an answer; a 408 would be as good.
        assert!(raw.is_empty() || status_of(&raw) == Some(408), "{raw}");
        dripper.abort();
    }

    #[tokio::test]
    async fn the_next_head_on_a_keep_alive_connection_has_the_header_timeout_too() {
        let upstream = echo_upstream("web.1").await;
        let routes = routes_with(&[("myapp.example.com", "myapp", vec![upstream])]);
        let header_read_timeout = Duration::from_millis(500);
        let limits = ServerLimits { header_read_timeout, ..ServerLimits::default() };
        let proxy = start_server(Server::new(routes).with_limits(limits)).await;

        // The first head comes half the timeout after the connection opened: the clock for
        // the next one runs from the end of the response, not from the connection's start.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        tokio::time::sleep(header_read_timeout / 2).await;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: myapp.example.com\r\n\r\n").await.unwrap();
        let (head, _) = timeout(DEADLINE, read_message(&mut stream)).await.unwrap().unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let answered = Instant::now();
        let (mut reader, mut writer) = stream.into_split();
        let dripper = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(50));
            for byte in b"GET / HTTP/1.1\r\nX-Slow: ".iter().cycle().take(400) {
                ticks.tick().await;
                if writer.write_all(&[*byte]).await.is_err() {
                    break;
                }
            }
        });
        let mut rest = Vec::new();
        timeout(DEADLINE, reader.read_to_end(&mut rest)).await.unwrap().unwrap();
        let elapsed = answered.elapsed();
        // The clock started at the response's last byte, a moment before it was read.
        assert!(elapsed >= header_read_timeout * 9 / 10, "closed after {elapsed:?}");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        dripper.abort();
    }

    #[tokio::test]
    async fn an_app_that_does_not_answer_in_time_gets_504() {
        // An instance that takes the request and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = listener.local_addr().unwrap();
        let (arrived, request_arrived) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_message(&mut stream).await.unwrap();
            arrived.send(stream).unwrap();
        });
        let in_flight = InFlight::new();
        let limits = Limits { response_timeout: Duration::from_millis(200), ..Limits::default() };
        let backend =
            Backend::new("myapp", vec![silent]).with_limits(limits).with_in_flight(&in_flight);
        let proxy = start_proxy(routes_for(backend)).await;

        let started = Instant::now();
        let reply = send(proxy.addr, get("myapp.example.com", "/slow")).await;
        assert_eq!(reply.status, 504, "{}", reply.body);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(reply.body.contains("the app myapp did not answer within 0.2 seconds"));
        let _held = timeout(DEADLINE, request_arrived).await.unwrap().unwrap();
        assert_eq!(in_flight.count(silent), 0);
    }

    #[tokio::test]
    async fn a_slow_upload_is_not_mistaken_for_a_slow_app() {
        let upstream = recording_upstream().await;
        let limits = Limits { response_timeout: Duration::from_secs(1), ..Limits::default() };
        let backend = Backend::new("myapp", vec![upstream.addr]).with_limits(limits);
        let proxy = start_proxy(routes_for(backend)).await;

        // Six chunks 250 ms apart: the upload takes longer than the timeout, but it keeps
        // moving (with room for a loaded machine), and the app answers once it has it all.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let head = "POST /upload HTTP/1.1\r\nHost: myapp.example.com\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        for _ in 0..6 {
            ticks.tick().await;
            stream.write_all(b"2\r\nab\r\n").await.unwrap();
        }
        assert!(started.elapsed() > limits.response_timeout);
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        let mut raw = Vec::new();
        timeout(DEADLINE, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
        let raw = String::from_utf8(raw).unwrap();
        assert_eq!(status_of(&raw), Some(200), "{raw}");
        assert_eq!(upstream.seen()[0].body.as_deref().unwrap(), b"abababababab");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_but_a_busy_one_is_not() {
        let upstream = echo_upstream("web.1").await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let held = listener.local_addr().unwrap();
        let (arrived, request_arrived) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_message(&mut stream).await.unwrap();
            arrived.send(()).unwrap();
            let _ = released.await;
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow").await.unwrap();
        });
        let routes = routes_with(&[
            ("myapp.example.com", "myapp", vec![upstream]),
            ("held.example.com", "held", vec![held]),
        ]);
        let idle_timeout = Duration::from_millis(200);
        let limits = ServerLimits { idle_timeout, ..ServerLimits::default() };
        let proxy = start_server(Server::new(routes).with_limits(limits)).await;

        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: myapp.example.com\r\n\r\n").await.unwrap();
        let (head, _) = timeout(DEADLINE, read_message(&mut stream)).await.unwrap().unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let answered = Instant::now();
        let mut rest = Vec::new();
        timeout(DEADLINE, stream.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
        // The idle clock started at the last byte written, a moment before it was read.
        assert!(answered.elapsed() >= idle_timeout / 2, "closed after {:?}", answered.elapsed());

        // A request under way for longer than the idle timeout keeps its connection.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: held.example.com\r\n\r\n").await.unwrap();
        timeout(DEADLINE, request_arrived).await.unwrap().unwrap();
        let mut byte = [0u8; 1];
        let early = timeout(idle_timeout * 3, stream.read(&mut byte)).await;
        assert!(early.is_err(), "the connection ended while its request was under way");
        release.send(()).unwrap();
        let (head, body) = timeout(DEADLINE, read_message(&mut stream)).await.unwrap().unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "slow");
    }

    /// Regression tests for issue 5: a malformed request gets an error (here always a 400)
    /// or a closed connection, never a hang, and never reaches the app as something else.
    #[tokio::test]
    async fn malformed_requests_get_an_error_or_a_close() {
        let upstream = recording_upstream().await;
        let proxy = start_proxy(routes_for(Backend::new("myapp", vec![upstream.addr]))).await;
        let host = "Host: myapp.example.com\r\n";
        let cases: Vec<(&str, String)> = vec![
            (
                "bad chunk size",
                format!(
                    "POST /bad-chunk HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n\
                     zz\r\nhello\r\n0\r\n\r\n"
                ),
            ),
            (
                "two content lengths",
                format!(
                    "POST /two-lengths HTTP/1.1\r\n{host}Content-Length: 5\r\n\
                     Content-Length: 6\r\n\r\nhello!"
                ),
            ),
            (
                "transfer encoding not ending in chunked",
                format!(
                    "POST /te HTTP/1.1\r\n{host}Transfer-Encoding: chunked, identity\r\n\r\n\
                     5\r\nhello\r\n0\r\n\r\n"
                ),
            ),
            (
                "chunked on HTTP/1.0",
                format!(
                    "POST /te10 HTTP/1.0\r\n{host}Transfer-Encoding: chunked\r\n\r\n\
                     5\r\nhello\r\n0\r\n\r\n"
                ),
            ),
            (
                "space before the colon",
                format!(
                    "POST /colon HTTP/1.1\r\n{host}Transfer-Encoding : chunked\r\n\r\n\
                     5\r\nhello\r\n0\r\n\r\n"
                ),
            ),
            ("spaces in the target", format!("GET /a b c HTTP/1.1\r\n{host}\r\n")),
            ("garbage request line", format!("\x01\x02 garbage\r\n{host}\r\n")),
            ("no version", format!("GET /\r\n{host}\r\n")),
            ("folded header", format!("GET /fold HTTP/1.1\r\n{host}X-A: b\r\n c\r\n\r\n")),
            ("negative length", format!("POST /neg HTTP/1.1\r\n{host}Content-Length: -1\r\n\r\n")),
        ];
        for (what, request) in cases {
            let raw = exchange_raw(proxy.addr, request.as_bytes()).await;
            // The server answers parse errors with a 400 before closing, and a body that fails
            // to parse while it is forwarded gets the router's own 400.
            assert_eq!(status_of(&raw), Some(400), "{what}: {raw}");
        }
        // The bad chunk reached the app as a request whose body failed, nothing else did.
        let seen = upstream.seen();
        let complete: Vec<&str> = seen
            .iter()
            .filter(|seen| !seen.finished || seen.body.is_ok())
            .map(|seen| seen.line.as_str())
            .collect();
        assert!(complete.is_empty(), "{complete:?}");
        assert!(seen.iter().all(|seen| seen.line.starts_with("POST /bad-chunk ")), "{seen:?}");
    }

    /// Regression test for issue 5: `Content-Length` and `Transfer-Encoding: chunked`
    /// together must not let a request hide in another's body (CL.TE and TE.CL smuggling).
    #[tokio::test]
    async fn a_request_smuggled_in_a_body_never_reaches_the_app() {
        let upstream = recording_upstream().await;
        let proxy = start_proxy(routes_for(Backend::new("myapp", vec![upstream.addr]))).await;
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: myapp.example.com\r\n\r\n";

        // CL.TE: a front end that believed Content-Length would pass the smuggled request
        // on as body; the router reads the body as chunked, so what follows the last chunk
        // is a second request on a connection that is to close after the first answer.
        let cl_te = format!(
            "POST /first HTTP/1.1\r\nHost: myapp.example.com\r\nContent-Length: {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        );
        let raw = exchange_raw(proxy.addr, cl_te.as_bytes()).await;
        assert_eq!(status_of(&raw), Some(200), "{raw}");
        assert_eq!(raw.matches("HTTP/1.1 ").count(), 1, "a second answer came: {raw}");

        // TE.CL: the smuggled request is chunk data, and stays body.
        let chunk = format!("G{smuggled}");
        let te_cl = format!(
            "POST /second HTTP/1.1\r\nHost: myapp.example.com\r\nContent-Length: 4\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        );
        let raw = exchange_raw(proxy.addr, te_cl.as_bytes()).await;
        assert_eq!(status_of(&raw), Some(200), "{raw}");
        assert_eq!(raw.matches("HTTP/1.1 ").count(), 1, "a second answer came: {raw}");

        // Both connections were answered and closed, so anything the router had sent on
        // would have been recorded by now.
        let seen = upstream.seen();
        let lines: Vec<&str> = seen.iter().map(|seen| seen.line.as_str()).collect();
        assert_eq!(lines, ["POST /first HTTP/1.1", "POST /second HTTP/1.1"]);
        assert_eq!(seen[0].body.as_deref().unwrap(), b"");
        assert_eq!(seen[1].body.as_deref().unwrap(), chunk.as_bytes());
        for seen in &seen {
            // The app is sent one framing of its own, never the visitor's conflicting pair.
            let n_framings = ["content-length", "transfer-encoding"]
                .iter()
                .filter(|name| seen.headers.contains_key(**name))
                .count();
            assert!(n_framings <= 1, "{:?}", seen.headers);
            assert_ne!(seen.headers.get("content-length").map(|v| v.as_bytes()), Some(&b"4"[..]));
        }
    }
}
