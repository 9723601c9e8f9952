//! The accept loop: one task per connection, and a bounded drain when the daemon shuts down.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::proxy::Proxy;
use crate::table::SharedRoutes;

/// A client that has not finished sending its request head by then is dropped, so that slow
/// or idle clients cannot hold connections (and file descriptors) forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long open connections may take to finish after shutdown before they are cut off;
/// the daemon's own shutdown must not hang on a slow download.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A pause after an accept error such as running out of file descriptors, which would
/// otherwise repeat at once and spin the loop; finishing connections are what frees them.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves until `shutdown` resolves; then stops accepting and lets open connections finish
/// (hyper's graceful shutdown via hyper_util::server::graceful::GracefulShutdown, bounded to 10 s).
///
/// Requests are routed by host from whatever table `routes` holds when each request arrives,
/// so the daemon changes routing by storing a new table, without restarting this.
///
/// Accept errors are logged and retried rather than returned: one exhausted file table must
/// not take every app offline. The function therefore currently always returns `Ok`; the
/// `io::Result` leaves room for setup that can fail, such as loading TLS certificates.
pub async fn serve(
    listener: TcpListener,
    routes: SharedRoutes,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let proxy = Arc::new(Proxy::new(routes));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    // Connection tasks are kept in a set, not detached, so that the ones still running when
    // the drain times out can be aborted instead of outliving `serve`.
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
                    let proxy = Arc::clone(&proxy);
                    let service = service_fn(move |request| {
                        let proxy = Arc::clone(&proxy);
                        async move { Ok::<_, Infallible>(proxy.handle(request, peer).await) }
                    });
                    // `.with_upgrades()` is left off because hyper-util implements its
                    // graceful-shutdown trait only for the plain http1 connection. WebSocket
                    // support will need it, and then this watch becomes a `select!` on a
                    // shutdown signal that calls `graceful_shutdown` on the connection.
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, "connection ended with an error: {error}");
                        }
                    });
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
                if let Err(error) = finished {
                    tracing::warn!("a connection task failed: {error}");
                }
            }
        }
    }

    drop(listener);
    tracing::debug!(open = connections.len(), "stopped accepting; draining open connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after {DRAIN_TIMEOUT:?}; closing them"
        );
    }
    connections.shutdown().await;
    Ok(())
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
        DEADLINE, dead_addr, echo_upstream, get, read_message, routes_with, send, start_proxy,
        table_with,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::time::timeout;

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
        // An instance that reports when a request has reached it and answers only when told,
        // so the shutdown is known to start while the request is in flight.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let (arrived, request_arrived) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_message(&mut stream).await.unwrap();
            arrived.send(()).unwrap();
            released.await.unwrap();
            let response = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow";
            stream.write_all(response.as_bytes()).await.unwrap();
        });
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
}
