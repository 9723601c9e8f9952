//! Connections to the apps: HTTP/1.1 keep-alive connections, pooled per instance address.
//!
//! One pool belongs to one [`crate::proxy::Proxy`], and so to one listener on one runtime:
//! with a runtime per core, each core keeps its own connections and the lock below is never
//! contended. A connection goes back into the pool as soon as the app's response head has
//! arrived, while its body may still be on the way; it is only handed out again once hyper
//! says it is ready for the next request (the response read to its end). That spares the
//! task per request that a pool returning connections on completion would need.
//!
//! New connections are opened a few at a time ([`MAX_OPENING`]); a request that finds no
//! connection ready waits for a slot to open one or for a busy one to finish, whichever
//! comes first.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::body::BoxError;

/// How long to wait for an instance to accept a connection before trying the next one. An
/// instance on the same machine answers in microseconds or refuses at once; waiting longer
/// only means a wedged process is holding the visitor.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many connections to one instance a pool opens at a time. An app's listen backlog can be
/// small (Python's http.server has 5) and an app busy with requests may accept slowly: a
/// burst of connections, as a new instance gets when it is switched to under load, would
/// overflow it, and the kernel drops the extra handshakes, which are retried only a second
/// later. Requests that find no connection ready and no slot to open one wait for whichever
/// comes first. With a pool per core, the whole router opens at most this many per core.
const MAX_OPENING: usize = 2;
/// An idle connection older than this is closed rather than used: the app has most likely
/// given up on it already, and sending on it would only fail.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Open connections to the apps' instances, by address, for requests with bodies of type
/// `B` (the proxy's [`crate::proxy::LentBody`]).
pub(crate) struct Upstreams<B> {
    pools: Mutex<HashMap<SocketAddr, Instance<B>>>,
}

/// What the pool knows of one instance address.
struct Instance<B> {
    pooled: Vec<Pooled<B>>,
    /// Connections being opened: each holds a permit until its first response head has come
    /// back, which shows the app accepted it.
    opening: Arc<Semaphore>,
    /// Wakes a request waiting for a connection when one comes back to the pool.
    returned: Arc<Notify>,
}

impl<B> Default for Instance<B> {
    fn default() -> Instance<B> {
        Instance {
            pooled: Vec::new(),
            opening: Arc::new(Semaphore::new(MAX_OPENING)),
            returned: Arc::default(),
        }
    }
}

/// A connection in the pool: idle, or still reading the body of its last response.
struct Pooled<B> {
    sender: SendRequest<B>,
    since: Instant,
}

impl<B> Default for Upstreams<B> {
    fn default() -> Upstreams<B> {
        Upstreams { pools: Mutex::default() }
    }
}

/// Why an instance gave no response.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection could be made: nothing reached the instance.
    Connect(io::Error),
    /// The connection failed while the request was sent or the response awaited.
    Http(hyper::Error),
}

impl UpstreamError {
    /// True when nothing reached the instance, so another one may be tried.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(_) => f.write_str("cannot connect"),
            UpstreamError::Http(_) => f.write_str("the connection failed"),
        }
    }
}

impl StdError for UpstreamError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            UpstreamError::Connect(error) => Some(error),
            UpstreamError::Http(error) => Some(error),
        }
    }
}

impl<B> Upstreams<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Sends `request` (in origin form, with its `Host`) to the instance at `addr` on an idle
    /// connection, or on a new one when none is idle and a slot to open one is free (else on
    /// whichever comes first).
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        mut request: Request<B>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        loop {
            let sender = match self.take_idle(addr) {
                Some(sender) => Some(sender),
                None => match self.opening(addr).try_acquire_owned() {
                    Ok(slot) => return self.send_on_new(addr, request, slot).await,
                    Err(_) => self.wait_for_connection(addr).await,
                },
            };
            let Some(mut sender) = sender else {
                // Nothing to wait on yet: a slot to open a connection, or one coming back.
                let returned = self.returned(addr);
                tokio::select! {
                    slot = self.opening(addr).acquire_owned() => {
                        let slot = slot.expect("the pool never closes its semaphores");
                        return self.send_on_new(addr, request, slot).await;
                    }
                    () = returned.notified() => continue,
                }
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.put_back(addr, sender);
                    return Ok(response);
                }
                // Closed by the app before the request was written: it is handed back
                // untouched, for the next connection.
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Http(error.into_error())),
                },
            }
        }
    }

    /// A connection to `addr` once one is ready: a busy one that finished its response, or
    /// `None` when a slot to open one freed up first (or there was nothing to wait for).
    async fn wait_for_connection(&self, addr: SocketAddr) -> Option<SendRequest<B>> {
        let opening = self.opening(addr);
        let mut busy = self.take_busy(addr)?;
        tokio::select! {
            biased;
            ready = busy.ready() => ready.ok().map(|()| busy),
            _ = opening.acquire() => {
                self.put_back(addr, busy);
                None
            }
        }
    }

    /// Opens a connection to `addr` and sends `request` on it; the slot is given back once
    /// the response head is in (or the attempt failed).
    async fn send_on_new(
        &self,
        addr: SocketAddr,
        request: Request<B>,
        slot: OwnedSemaphorePermit,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // Boxed: connecting is rare next to reusing, and its future is large; inline, it
        // would make every request's future larger, and so slower to move.
        let mut sender = Box::pin(connect(addr)).await?;
        let response = sender.send_request(request).await.map_err(UpstreamError::Http)?;
        drop(slot);
        self.put_back(addr, sender);
        Ok(response)
    }

    /// The semaphore that limits how many connections to `addr` are opened at once.
    fn opening(&self, addr: SocketAddr) -> Arc<Semaphore> {
        Arc::clone(&self.lock().entry(addr).or_default().opening)
    }

    fn returned(&self, addr: SocketAddr) -> Arc<Notify> {
        Arc::clone(&self.lock().entry(addr).or_default().returned)
    }

    /// A connection to `addr` that is ready for a request; closed and stale ones found on
    /// the way are dropped.
    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<B>> {
        let mut pools = self.lock();
        let instance = pools.get_mut(&addr)?;
        let now = Instant::now();
        let is_stale = |pooled: &Pooled<B>| {
            pooled.sender.is_ready() && now.duration_since(pooled.since) > IDLE_TIMEOUT
        };
        instance.pooled.retain(|pooled| !pooled.sender.is_closed() && !is_stale(pooled));
        let ready = instance.pooled.iter().position(|pooled| pooled.sender.is_ready());
        let taken = ready.map(|index| instance.pooled.swap_remove(index).sender);
        // An instance with nothing pooled, nothing being opened and nothing just taken (which
        // comes back) is forgotten: its address may never be used again.
        if taken.is_none()
            && instance.pooled.is_empty()
            && instance.opening.available_permits() == MAX_OPENING
        {
            pools.remove(&addr);
        }
        taken
    }

    /// The connection to `addr` that has been reading its last response the longest.
    fn take_busy(&self, addr: SocketAddr) -> Option<SendRequest<B>> {
        let mut pools = self.lock();
        let pool = &mut pools.get_mut(&addr)?.pooled;
        let oldest = (pool.iter().enumerate())
            .filter(|(_, pooled)| !pooled.sender.is_closed())
            .min_by_key(|(_, pooled)| pooled.since)
            .map(|(index, _)| index)?;
        Some(pool.swap_remove(oldest).sender)
    }

    fn put_back(&self, addr: SocketAddr, sender: SendRequest<B>) {
        let pooled = Pooled { sender, since: Instant::now() };
        let mut pools = self.lock();
        let instance = pools.entry(addr).or_default();
        instance.pooled.push(pooled);
        instance.returned.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Instance<B>>> {
        // A panic elsewhere cannot leave the map half-changed: every change is one call.
        self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many connections to `addr` are pooled, busy or idle.
    #[cfg(test)]
    pub(crate) fn pooled(&self, addr: SocketAddr) -> usize {
        self.lock().get(&addr).map_or(0, |instance| instance.pooled.len())
    }
}

/// A new connection to `addr`, driven by a task of its own on the current runtime.
async fn connect<B>(addr: SocketAddr) -> Result<SendRequest<B>, UpstreamError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            UpstreamError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            ))
        })?
        .map_err(UpstreamError::Connect)?;
    stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
    let (sender, connection) =
        http1::handshake(TokioIo::new(stream)).await.map_err(UpstreamError::Http)?;
    tokio::spawn(async move {
        // The app closing a connection is routine; a failed request has its own error.
        if let Err(error) = connection.with_upgrades().await {
            tracing::trace!("connection to an instance ended: {error}");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::time::timeout;

    use super::*;
    use crate::test_support::{DEADLINE, counting_upstream, dead_addr, held_upstream, wait_for};

    type Pool = Upstreams<Empty<Bytes>>;

    fn get(path: &'static str) -> Request<Empty<Bytes>> {
        Request::builder().uri(path).header("host", "myapp.example.com").body(Empty::new()).unwrap()
    }

    /// Sends a GET and reads the whole answer, as the proxy does for a visitor.
    async fn fetch(pool: &Pool, addr: SocketAddr) -> String {
        let exchange = async {
            let response = pool.send(addr, get("/")).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        };
        timeout(DEADLINE, exchange).await.expect("no answer in time")
    }

    fn accepted(counter: &Arc<AtomicUsize>) -> usize {
        counter.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let addr = dead_addr().await;
        let connections = counting_upstream(addr, false).await;
        let pool = Pool::default();
        for _ in 0..5 {
            assert_eq!(fetch(&pool, addr).await, "revived\n");
        }
        assert_eq!(accepted(&connections), 1);
        assert_eq!(pool.pooled(addr), 1);
    }

    #[tokio::test]
    async fn a_busy_connection_is_not_handed_out_and_comes_back_when_done() {
        let (slow, started, release) = held_upstream().await;
        let pool = Arc::new(Pool::default());
        // The first request is held by the app: its connection is busy.
        let first = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.send(slow, get("/held")).await.map(|r| r.status()) }
        });
        timeout(DEADLINE, started).await.unwrap().unwrap();
        assert_eq!(pool.pooled(slow), 0, "a connection awaiting its answer is not in the pool");
        release.send(()).unwrap();
        let status = timeout(DEADLINE, first).await.unwrap().unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(pool.pooled(slow), 1, "the connection went back once the head arrived");
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced_without_a_failure() {
        let addr = dead_addr().await;
        let connections = counting_upstream(addr, true).await;
        let pool = Pool::default();
        for n in 1..=4 {
            assert_eq!(fetch(&pool, addr).await, "revived\n");
            // The closed one is dropped once seen, so the pool never grows.
            assert!(pool.pooled(addr) <= 1, "{} pooled", pool.pooled(addr));
            assert_eq!(accepted(&connections), n);
        }
    }

    /// An instance that counts the connections it accepts and answers nothing until `release`
    /// turns true, then every request at once.
    async fn gated_upstream(
        release: tokio::sync::watch::Receiver<bool>,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut release = release.clone();
                tokio::spawn(async move {
                    while crate::test_support::read_message(&mut stream).await.is_some() {
                        let _ = release.wait_for(|open| *open).await;
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if tokio::io::AsyncWriteExt::write_all(&mut stream, answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_burst_opens_only_a_few_connections_at_a_time_and_every_request_is_answered() {
        let (release, gate) = tokio::sync::watch::channel(false);
        let (addr, connections) = gated_upstream(gate).await;
        let pool = Arc::new(Pool::default());
        let burst: Vec<_> = (0..6)
            .map(|_| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    let response = pool.send(addr, get("/")).await.unwrap();
                    response.into_body().collect().await.unwrap().to_bytes()
                })
            })
            .collect();
        wait_for("the first connections", || accepted(&connections) >= MAX_OPENING).await;
        // Every request has had its turn (this runtime runs one task at a time) and the app
        // answered none, so no slot was given back: no third connection may have been made.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted(&connections), MAX_OPENING);
        release.send(true).unwrap();
        for request in burst {
            let body = timeout(DEADLINE, request).await.expect("answered in time").unwrap();
            assert_eq!(&body[..], b"ok");
        }
        assert!(accepted(&connections) <= 6, "{} connections", accepted(&connections));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let pool = Pool::default();
        let error = pool.send(dead_addr().await, get("/")).await.unwrap_err();
        assert!(error.is_connect(), "{error:?}");
        assert_eq!(error.to_string(), "cannot connect");
    }
}
