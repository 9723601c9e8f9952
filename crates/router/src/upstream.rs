//! Connections to the apps: the router's own HTTP/1.1 client, with keep-alive connections
//! pooled per instance address.
//!
//! The request's own task writes the request and reads the response head: there is no task
//! per connection and no channel per request, which a general-purpose client (hyper's)
//! needs to drive a connection on its own. The response body carries its connection and
//! puts it back into the pool once it has been read to its end, so a connection in the
//! pool is always idle. The framing rules themselves are in [`crate::h1`].
//!
//! One pool belongs to one [`crate::proxy::Proxy`], and so to one listener on one runtime:
//! with a runtime per core, each core keeps its own connections and the lock below is never
//! contended.
//!
//! New connections are opened a few at a time ([`MAX_OPENING`]); a request that finds no
//! idle connection waits for a slot to open one or for a busy one to come back, whichever
//! comes first.

use std::collections::{HashMap, VecDeque};
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::body::BoxError;
use crate::h1::{
    Decoded, Framing, Malformed, RawHeaders, RequestFraming, RequestHead, ResponseHead,
    encode_request_head, parse_response_head, push_chunk_size,
};

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
/// The most idle connections kept to one instance (per core, like nginx's usual `keepalive
/// 64` per worker): after a burst, the ones beyond are closed as they come back.
const MAX_IDLE: usize = 64;
/// How long an idle connection is kept at least (nginx's upstream `keepalive_timeout`): an
/// app that gives each connection a thread or a worker gets them back after a burst. The
/// first sweep after that closes it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the pool is swept for connections idle too long, closed by their app, or to an
/// instance that is gone (a deploy moves traffic to new addresses, and the old ones are
/// never asked for again: their connections would stay open on this side forever). A task
/// of the pool's runtime sweeps it, so this happens with no traffic too.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The sweeps an idle connection outlives. Idle time is counted in sweeps, not read from the
/// clock, so that putting a connection back costs no clock read on the request path.
const IDLE_SWEEPS: u64 = IDLE_TIMEOUT.as_secs() / SWEEP_EVERY.as_secs();
/// How much room a read from an app is given when its buffer runs low.
const READ_CHUNK: usize = 16 * 1024;
/// Below this much room, a connection's read buffer gets a fresh [`READ_CHUNK`]. Until
/// then reads go on into what is left of the current one: the heads and bodies read
/// before still share it, and a fresh buffer per response would be an allocation each.
const MIN_READ_ROOM: usize = 2048;

/// Open connections to the apps' instances, by address.
#[derive(Default)]
pub(crate) struct Upstreams {
    pools: Arc<Pools>,
}

#[derive(Default)]
struct Pools {
    instances: Mutex<Table>,
}

/// Looked up twice per request: foldhash (seeded per process) costs a fraction of SipHash.
type AddrMap = HashMap<SocketAddr, Instance, foldhash::fast::RandomState>;

/// The instances, and how many sweeps there have been.
#[derive(Default)]
struct Table {
    instances: AddrMap,
    sweeps: u64,
}

impl Table {
    /// Closes the idle connections that have been idle for more than [`IDLE_SWEEPS`] sweeps
    /// (over [`IDLE_TIMEOUT`]) or that their app closed, and forgets the instances left with
    /// nothing.
    fn sweep(&mut self) {
        self.sweeps += 1;
        let sweeps = self.sweeps;
        self.instances.retain(|_, instance| {
            instance.idle.retain(|connection| {
                sweeps - connection.idle_since <= IDLE_SWEEPS && is_open(&connection.stream)
            });
            !instance.idle.is_empty() || !instance.is_unused()
        });
    }
}

/// What the pool knows of one instance address.
struct Instance {
    /// Idle connections, the most recently used last: that one is handed out first, and the
    /// oldest, at the front, is the one checked for going stale.
    idle: VecDeque<Connection>,
    /// Connections being opened: each holds a permit until its first response head has come
    /// back, which shows the app accepted it.
    opening: Arc<Semaphore>,
    /// Wakes a request waiting for a connection when one comes back to the pool.
    returned: Arc<Notify>,
}

impl Instance {
    /// Whether no request is opening a connection to it or waiting for one to come back.
    fn is_unused(&self) -> bool {
        self.opening.available_permits() == MAX_OPENING
            && Arc::strong_count(&self.opening) == 1
            && Arc::strong_count(&self.returned) == 1
    }
}

impl Default for Instance {
    fn default() -> Instance {
        Instance {
            idle: VecDeque::new(),
            opening: Arc::new(Semaphore::new(MAX_OPENING)),
            returned: Arc::default(),
        }
    }
}

/// An open connection to an instance, and what has been read from it but not used yet.
struct Connection {
    stream: TcpStream,
    read: BytesMut,
    /// The request head being written, kept for the next one.
    head: Vec<u8>,
    /// How many sweeps there had been when it last came back to the pool.
    idle_since: u64,
}

/// Why an instance gave no response.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection could be made: nothing reached the instance.
    Connect(io::Error),
    /// The connection failed while the request was sent or the response awaited.
    Io(io::Error),
    /// The app closed the connection without answering.
    Closed,
    /// The app answered something that is not an HTTP/1.1 response.
    Malformed(Malformed),
    /// The visitor's request body failed (too large, or broken off) while it was sent.
    Body(BoxError),
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
            UpstreamError::Io(_) => f.write_str("the connection failed"),
            UpstreamError::Closed => {
                f.write_str("the app closed the connection without sending a response")
            }
            UpstreamError::Malformed(malformed) => malformed.fmt(f),
            UpstreamError::Body(_) => f.write_str("the request body could not be sent"),
        }
    }
}

impl StdError for UpstreamError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            UpstreamError::Connect(error) | UpstreamError::Io(error) => Some(error),
            UpstreamError::Closed | UpstreamError::Malformed(_) => None,
            UpstreamError::Body(error) => Some(error.as_ref()),
        }
    }
}

/// A failed exchange, with what is needed to decide whether it may be tried again.
struct Failure {
    error: UpstreamError,
    /// Whether the whole request head went out.
    head_written: bool,
    /// Whether any of the request body was taken from the visitor.
    body_started: bool,
    /// Whether anything came back.
    received: bool,
}

impl Failure {
    /// On a reused connection, a failure before anything came back usually means the app
    /// closed the connection as it was being reused. Trying again on another connection
    /// is safe when the request never fully left, or when it is idempotent (as nginx does):
    /// a POST that may have been acted on is not sent twice. A body already taken from the
    /// visitor cannot be sent again at all.
    fn may_retry(&self, idempotent: bool) -> bool {
        let connection_lost = matches!(self.error, UpstreamError::Io(_) | UpstreamError::Closed);
        connection_lost
            && !self.received
            && !self.body_started
            && (!self.head_written || idempotent)
    }
}

impl Upstreams {
    /// Starts the task, on the current runtime, that sweeps the pool every [`SWEEP_EVERY`]
    /// for as long as the pool lives.
    pub(crate) fn sweep_in_background(&self) {
        self.sweep_every(SWEEP_EVERY);
    }

    fn sweep_every(&self, every: Duration) {
        let pools = Arc::downgrade(&self.pools);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(pools) = pools.upgrade() else { return };
                pools.lock().sweep();
            }
        });
    }

    /// Sends `request` (in origin form, with its `Host`) and `body` to the instance at `addr`
    /// on an idle connection, or on a new one when none is idle and a slot to open one is
    /// free (else on whichever comes first), and returns the response once its head is in.
    pub(crate) async fn send<B>(
        &self,
        addr: SocketAddr,
        request: &RequestHead<'_>,
        mut body: B,
    ) -> Result<Response<UpstreamBody>, UpstreamError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let method = request.method;
        let framing = RequestFraming::choose(
            method,
            request.headers.contains_key(CONTENT_LENGTH),
            body.is_end_stream(),
            body.size_hint().exact(),
        );
        let was_head = *method == Method::HEAD;
        loop {
            let (mut connection, slot) = self.checkout(addr).await?;
            let reused = slot.is_none();
            connection.head.clear();
            encode_request_head(request, framing, &mut connection.head);
            let exchanged = if body.is_end_stream() {
                exchange(&mut connection, was_head).await
            } else {
                // Boxed: requests with a body are the few, and this future is large.
                Box::pin(exchange_with_body(&mut connection, &mut body, framing, was_head)).await
            };
            match exchanged {
                Ok(response_head) => {
                    drop(slot);
                    return Ok(self.response(addr, connection, response_head));
                }
                Err(failure) if reused && failure.may_retry(method.is_idempotent()) => {
                    tracing::trace!(%addr, "a reused connection failed ({}); trying another", failure.error);
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// An idle connection to `addr`, or a new one with the slot it was opened under.
    async fn checkout(
        &self,
        addr: SocketAddr,
    ) -> Result<(Connection, Option<OwnedSemaphorePermit>), UpstreamError> {
        loop {
            if let Some(connection) = self.pools.take_idle(addr) {
                return Ok((connection, None));
            }
            let (opening, returned) = self.pools.waits(addr);
            let slot = match Arc::clone(&opening).try_acquire_owned() {
                Ok(slot) => slot,
                // A connection put back after the look above has left a permit in
                // `returned`, so it is not missed.
                Err(_) => tokio::select! {
                    slot = opening.acquire_owned() => {
                        slot.expect("the pool never closes its semaphores")
                    }
                    () = returned.notified() => continue,
                },
            };
            // Boxed: connecting is rare next to reusing, and its future is large; inline, it
            // would make every request's future larger, and so slower to move.
            let connection = Box::pin(connect(addr)).await?;
            return Ok((connection, Some(slot)));
        }
    }

    fn response(
        &self,
        addr: SocketAddr,
        connection: Connection,
        head: ResponseHead,
    ) -> Response<UpstreamBody> {
        let body = UpstreamBody {
            raw: head.raw,
            framing: head.framing,
            connection: Some(connection),
            reusable: head.keep_alive,
            pools: Arc::clone(&self.pools),
            addr,
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        response
    }

    /// How many idle connections to `addr` are pooled.
    #[cfg(test)]
    pub(crate) fn pooled(&self, addr: SocketAddr) -> usize {
        self.pools.lock().instances.get(&addr).map_or(0, |instance| instance.idle.len())
    }
}

impl Pools {
    /// An idle connection to `addr` that is still open; closed ones found on the way are
    /// dropped.
    fn take_idle(&self, addr: SocketAddr) -> Option<Connection> {
        let mut table = self.lock();
        let instance = table.instances.get_mut(&addr)?;
        // The oldest is looked at on every take too, so that connections left over from a
        // burst are let go once the app closes them, not kept for as long as the pool lives.
        if instance.idle.front().is_some_and(|oldest| !is_open(&oldest.stream)) {
            instance.idle.pop_front();
        }
        let mut taken = None;
        while let Some(connection) = instance.idle.pop_back() {
            if is_open(&connection.stream) {
                taken = Some(connection);
                break;
            }
        }
        // An instance with nothing pooled, nothing just taken (which comes back) and no
        // request opening or awaiting a connection is forgotten: its address may never be
        // used again.
        if taken.is_none() && instance.is_unused() {
            table.instances.remove(&addr);
        }
        taken
    }

    /// What a request for `addr` waits on: a slot to open a connection, or one coming back.
    fn waits(&self, addr: SocketAddr) -> (Arc<Semaphore>, Arc<Notify>) {
        let mut table = self.lock();
        let instance = table.instances.entry(addr).or_default();
        (Arc::clone(&instance.opening), Arc::clone(&instance.returned))
    }

    fn put_back(&self, addr: SocketAddr, mut connection: Connection) {
        let mut table = self.lock();
        connection.idle_since = table.sweeps;
        let instance = table.instances.entry(addr).or_default();
        if instance.idle.len() < MAX_IDLE {
            instance.idle.push_back(connection);
            instance.returned.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic elsewhere cannot leave the map half-changed: every change is one call.
        self.instances.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether an idle connection is still open: nothing may arrive on one, so anything
/// readable is the app closing it (or a stray byte, which makes it unusable too). tokio
/// knows from its last readiness event, so this costs no system call while nothing came.
fn is_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
}

/// Makes room in `buf` for the next read; see [`MIN_READ_ROOM`].
fn reserve_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_READ_ROOM {
        buf.reserve(READ_CHUNK);
    }
}

/// A new connection to `addr`.
async fn connect(addr: SocketAddr) -> Result<Connection, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            UpstreamError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            ))
        })?
        .map_err(UpstreamError::Connect)?;
    // The request head goes out in one write; Nagle's algorithm would only delay a body's
    // last small piece.
    stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
    Ok(Connection { stream, read: BytesMut::new(), head: Vec::new(), idle_since: 0 })
}

/// Writes a request without a body (its head is in `connection.head`) and reads the
/// response head.
async fn exchange(connection: &mut Connection, was_head: bool) -> Result<ResponseHead, Failure> {
    let Connection { stream, read, head, .. } = connection;
    if let Err(error) = stream.write_all(head).await {
        let error = UpstreamError::Io(error);
        return Err(Failure { error, head_written: false, body_started: false, received: false });
    }
    read_head(stream, read, was_head).await.map_err(|(error, received)| Failure {
        error,
        head_written: true,
        body_started: false,
        received,
    })
}

/// Writes a request with a body and reads the response head. The body is sent while the
/// response is awaited, so that an app answering early (a 413, say) is heard even if it
/// stops reading; the connection is then not reused.
async fn exchange_with_body<B>(
    connection: &mut Connection,
    body: &mut B,
    framing: RequestFraming,
    was_head: bool,
) -> Result<ResponseHead, Failure>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let Connection { stream, read, head, .. } = connection;
    // Atomics only because the future must be `Send`; nothing else touches them.
    let (head_written, body_started) = (AtomicBool::new(false), AtomicBool::new(false));
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(head).await.map_err(UpstreamError::Io)?;
        head_written.store(true, Ordering::Relaxed);
        write_body(&mut writer, body, framing, &body_started).await
    };
    let mut write = pin!(write);
    let mut read = pin!(read_head(&mut reader, read, was_head));
    let mut written: Option<Result<(), UpstreamError>> = None;
    loop {
        tokio::select! {
            biased;
            done = &mut write, if written.is_none() => match done {
                Err(error @ UpstreamError::Body(_)) => {
                    let (head_written, body_started, received) = (true, true, false);
                    return Err(Failure { error, head_written, body_started, received });
                }
                done => written = Some(done),
            },
            response = &mut read => {
                let failure = |error, received| Failure {
                    error,
                    head_written: head_written.load(Ordering::Relaxed),
                    body_started: body_started.load(Ordering::Relaxed),
                    received,
                };
                return match (response, written) {
                    (Ok(mut response), written) => {
                        // The app answered before taking the whole body: what is left of it
                        // would be read as the next request.
                        if !matches!(written, Some(Ok(()))) {
                            response.keep_alive = false;
                        }
                        Ok(response)
                    }
                    // A write that failed first says more than the read that followed it.
                    (Err((_, received)), Some(Err(error))) => Err(failure(error, received)),
                    (Err((error, received)), _) => Err(failure(error, received)),
                };
            }
        }
    }
}

/// Sends the request body as `framing` says; a body error is an [`UpstreamError::Body`].
async fn write_body<W, B>(
    writer: &mut W,
    body: &mut B,
    framing: RequestFraming,
    started: &AtomicBool,
) -> Result<(), UpstreamError>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut chunk = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let frame = frame.map_err(|error| UpstreamError::Body(error.into()))?;
        // Trailers are dropped, as nginx does: few apps read them.
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        started.store(true, Ordering::Relaxed);
        if framing == RequestFraming::Chunked {
            // One write per chunk: its size line, data and CRLF.
            chunk.clear();
            push_chunk_size(&mut chunk, data.len());
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            writer.write_all(&chunk).await.map_err(UpstreamError::Io)?;
        } else {
            writer.write_all(&data).await.map_err(UpstreamError::Io)?;
        }
    }
    if framing == RequestFraming::Chunked {
        writer.write_all(b"0\r\n\r\n").await.map_err(UpstreamError::Io)?;
    }
    Ok(())
}

/// Reads until a final response head is in `buf` (skipping 1xx interim ones, but not a
/// 101); an error comes with whether anything at all was received.
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    was_head: bool,
) -> Result<ResponseHead, (UpstreamError, bool)> {
    let mut received = false;
    loop {
        if !buf.is_empty() {
            match parse_response_head(buf, was_head) {
                // An interim head (100 Continue, 103 Early Hints) is skipped: the final one
                // may be buffered already.
                Ok(Some(head))
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue;
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(malformed) => return Err((UpstreamError::Malformed(malformed), true)),
            }
        }
        reserve_room(buf);
        match reader.read_buf(buf).await {
            Ok(0) => return Err((UpstreamError::Closed, received)),
            Ok(_) => received = true,
            Err(error) => return Err((UpstreamError::Io(error), received)),
        }
    }
}

/// An app's response body, read from its connection as the visitor takes it. Once it has
/// been read to its end (or if it had none), the connection goes back to the pool; a body
/// dropped before its end closes the connection, since the rest of it would still come.
pub(crate) struct UpstreamBody {
    /// The response's headers, as the app sent them (less the hop-by-hop ones).
    raw: RawHeaders,
    framing: Framing,
    /// `None` once the body is over (the connection went back or was closed).
    connection: Option<Connection>,
    /// Whether the app allows another request on the connection.
    reusable: bool,
    pools: Arc<Pools>,
    addr: SocketAddr,
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("framing", &self.framing)
            .field("addr", &self.addr)
            .field("open", &self.connection.is_some())
            .finish()
    }
}

impl UpstreamBody {
    /// The response's headers, which are not in its map: see [`RawHeaders`].
    pub(crate) fn raw_headers(&self) -> &RawHeaders {
        &self.raw
    }

    pub(crate) fn raw_headers_mut(&mut self) -> &mut RawHeaders {
        &mut self.raw
    }

    /// Moves the response's headers into `headers`, for a response that needs a map.
    pub(crate) fn move_headers_into(&mut self, headers: &mut http::HeaderMap) {
        self.raw.move_into(headers);
    }

    /// The connection of a 101 response, which has become a tunnel, with any bytes the app
    /// sent after the head; `None` for any other response.
    pub(crate) fn take_upgraded(&mut self) -> Option<(TcpStream, BytesMut)> {
        if self.framing != Framing::Upgraded {
            return None;
        }
        self.connection.take().map(|connection| (connection.stream, connection.read))
    }

    /// Gives the connection back to the pool if the body is over and the connection can
    /// carry another request; closes it otherwise.
    fn release(&mut self) {
        if let Some(connection) = self.connection.take()
            && self.framing.is_done()
            && self.reusable
            && connection.read.is_empty()
        {
            self.pools.put_back(self.addr, connection);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper never polls a body that says it is over (a HEAD's, a 204's, a 304's): such a
        // connection goes back here.
        self.release();
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.decode(&mut connection.read) {
                Ok(Decoded::Data(data)) => {
                    if this.framing.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(malformed) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(Box::new(malformed))));
                }
            }
            reserve_room(&mut connection.read);
            let stream = Pin::new(&mut connection.stream);
            let read = ready!(tokio_util::io::poll_read_buf(stream, cx, &mut connection.read));
            match read {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.framing = Framing::Done;
                    this.reusable = false;
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.connection = None;
                    let cut = "the app closed the connection before the end of its response";
                    return Poll::Ready(Some(Err(cut.into())));
                }
                Ok(_) => {}
                Err(error) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.exact_length() {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http::Request;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    use super::*;
    use crate::test_support::{DEADLINE, counting_upstream, dead_addr, held_upstream, wait_for};

    impl Upstreams {
        /// [`Upstreams::send`] for a whole `http::Request`, sent as it is.
        async fn send_request<B>(
            &self,
            addr: SocketAddr,
            request: Request<B>,
        ) -> Result<Response<UpstreamBody>, UpstreamError>
        where
            B: Body<Data = Bytes> + Unpin,
            B::Error: Into<BoxError>,
        {
            let (parts, body) = request.into_parts();
            let target = parts.uri.path_and_query().map_or("/", |target| target.as_str());
            self.send(addr, &RequestHead::plain(&parts.method, target, &parts.headers), body).await
        }
    }

    fn get(path: &'static str) -> Request<Empty<Bytes>> {
        Request::builder().uri(path).header("host", "myapp.example.com").body(Empty::new()).unwrap()
    }

    /// Sends `request` and reads the whole answer, as the proxy does for a visitor.
    async fn fetch_with<B>(
        pool: &Upstreams,
        addr: SocketAddr,
        request: Request<B>,
    ) -> (StatusCode, String)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let exchange = async {
            let response = pool.send_request(addr, request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        timeout(DEADLINE, exchange).await.expect("no answer in time")
    }

    async fn fetch(pool: &Upstreams, addr: SocketAddr) -> String {
        let (status, body) = fetch_with(pool, addr, get("/")).await;
        assert_eq!(status, 200);
        body
    }

    fn accepted(counter: &Arc<AtomicUsize>) -> usize {
        counter.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// An app that, on each connection, reads request heads (and a body of the length
    /// they announce, if any) and answers them with `answers` in turn, sending every
    /// request it read on `requests`; after its last answer it closes the connection.
    async fn scripted_upstream(
        answers: Vec<&'static [u8]>,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent, requests) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (answers, sent) = (answers.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    for answer in answers {
                        let Some(request) = read_request(&mut stream, &mut buffer).await else {
                            return;
                        };
                        let _ = sent.send(request);
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, requests, connections)
    }

    /// One request's bytes: its head, and its body if `Content-Length` gives one, or up to
    /// the end of the last chunk if it is chunked.
    async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..at]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |length| length.parse::<usize>().unwrap());
                let end = if head.contains("transfer-encoding: chunked") {
                    let body = &buffer[at + 4..];
                    body.windows(5).position(|w| w == b"0\r\n\r\n").map(|end| at + 4 + end + 5)
                } else {
                    (buffer.len() >= at + 4 + length).then_some(at + 4 + length)
                };
                if let Some(end) = end {
                    return Some(buffer.drain(..end).collect());
                }
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let addr = dead_addr().await;
        let connections = counting_upstream(addr, false).await;
        let pool = Upstreams::default();
        for _ in 0..5 {
            assert_eq!(fetch(&pool, addr).await, "revived\n");
        }
        assert_eq!(accepted(&connections), 1);
        assert_eq!(pool.pooled(addr), 1);
    }

    #[tokio::test]
    async fn a_busy_connection_is_not_handed_out_and_comes_back_once_its_body_is_read() {
        let (slow, started, release) = held_upstream().await;
        let pool = Arc::new(Upstreams::default());
        let first = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move {
                pool.send_request(slow, get("/held")).await.map(|r| (r.status(), r.into_body()))
            }
        });
        timeout(DEADLINE, started).await.unwrap().unwrap();
        assert_eq!(pool.pooled(slow), 0, "a connection awaiting its answer is not in the pool");
        release.send(()).unwrap();
        let (status, body) = timeout(DEADLINE, first).await.unwrap().unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(pool.pooled(slow), 0, "the body is still to be read");
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"slow");
        assert_eq!(pool.pooled(slow), 1, "the connection went back once its body was read");
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced_without_a_failure() {
        let addr = dead_addr().await;
        let connections = counting_upstream(addr, true).await;
        let pool = Upstreams::default();
        for n in 1..=4 {
            assert_eq!(fetch(&pool, addr).await, "revived\n");
            assert_eq!(pool.pooled(addr), 0, "`Connection: close` is not pooled");
            assert_eq!(accepted(&connections), n);
        }
    }

    #[tokio::test]
    async fn an_idle_connection_the_app_closed_silently_is_not_reused() {
        // The app answers one request per connection and then closes, without saying so.
        let (addr, _requests, connections) =
            scripted_upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
        let pool = Upstreams::default();
        for n in 1..=3 {
            assert_eq!(fetch(&pool, addr).await, "ok");
            wait_for("the app to close", || {
                let table = pool.pools.lock();
                table
                    .instances
                    .get(&addr)
                    .is_none_or(|i| i.idle.iter().all(|c| !is_open(&c.stream)))
            })
            .await;
            assert_eq!(accepted(&connections), n);
        }
    }

    #[tokio::test]
    async fn the_sweep_lets_go_of_idle_and_closed_connections_and_of_gone_instances() {
        // An app that keeps its connections open, and tells when the router closed its one.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kept = listener.local_addr().unwrap();
        let (closed, router_closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            while crate::test_support::read_message(&mut stream).await.is_some() {
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nkept";
                stream.write_all(answer).await.unwrap();
            }
            let _ = closed.send(());
        });
        // An app that answers once and goes away, as an instance does when a deploy
        // replaces it; nothing asks for its address again.
        let (gone, _requests, _) =
            scripted_upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
        let pool = Upstreams::default();
        assert_eq!(fetch(&pool, kept).await, "kept");
        assert_eq!(fetch(&pool, gone).await, "ok");
        wait_for("the gone app to close", || {
            let table = pool.pools.lock();
            table.instances.get(&gone).is_some_and(|i| i.idle.iter().all(|c| !is_open(&c.stream)))
        })
        .await;
        assert_eq!(pool.pooled(gone), 1, "held until a sweep");

        // A sweep forgets the gone instance and keeps the other.
        pool.pools.lock().sweep();
        assert!(!pool.pools.lock().instances.contains_key(&gone), "the gone instance is forgotten");
        assert_eq!(pool.pooled(kept), 1, "a connection used just now stays");

        // Idle for longer than the idle timeout (counted in sweeps): closed, and the app sees
        // it.
        for _ in 1..IDLE_SWEEPS {
            pool.pools.lock().sweep();
        }
        assert_eq!(pool.pooled(kept), 1, "not idle for long enough yet");
        pool.pools.lock().sweep();
        assert_eq!(pool.pooled(kept), 0);
        assert!(!pool.pools.lock().instances.contains_key(&kept));
        timeout(DEADLINE, router_closed).await.expect("the app saw no close").unwrap();

        // The background sweep comes with no request at all.
        let (gone, _requests, _) =
            scripted_upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
        assert_eq!(fetch(&pool, gone).await, "ok");
        pool.sweep_every(Duration::from_millis(20));
        wait_for("the gone instance to be forgotten", || {
            !pool.pools.lock().instances.contains_key(&gone)
        })
        .await;

        // The sweeping task ends with its pool.
        let pools = Arc::downgrade(&pool.pools);
        drop(pool);
        assert!(pools.upgrade().is_none(), "the task holds the pool");
    }

    #[tokio::test]
    async fn chunked_and_head_responses_leave_the_connection_reusable() {
        let (addr, mut requests, connections) = scripted_upstream(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
        ])
        .await;
        let pool = Upstreams::default();
        assert_eq!(
            fetch_with(&pool, addr, get("/chunked")).await,
            (StatusCode::OK, "hello world".into())
        );
        let head = Request::head("/").header("host", "a").body(Empty::<Bytes>::new()).unwrap();
        assert_eq!(fetch_with(&pool, addr, head).await, (StatusCode::OK, String::new()));
        // The 100 is skipped; the 204 has no body even without a length.
        assert_eq!(
            fetch_with(&pool, addr, get("/interim")).await,
            (StatusCode::NO_CONTENT, String::new())
        );
        assert_eq!(fetch(&pool, addr).await, "last");
        assert_eq!(accepted(&connections), 1, "all four on one connection");
        let first = requests.recv().await.unwrap();
        assert!(
            first.starts_with(b"GET /chunked HTTP/1.1\r\n"),
            "{}",
            String::from_utf8_lossy(&first)
        );
    }

    #[tokio::test]
    async fn request_bodies_go_with_their_length_or_chunked() {
        let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (addr, mut requests, _) = scripted_upstream(vec![ok, ok, ok]).await;
        let pool = Upstreams::default();
        let known = Request::post("/k").body(Full::new(Bytes::from_static(b"abc"))).unwrap();
        fetch_with(&pool, addr, known).await;
        let request = String::from_utf8(requests.recv().await.unwrap()).unwrap();
        assert!(request.ends_with("content-length: 3\r\n\r\nabc"), "{request}");

        let frames = futures_frames(&["hello", ", ", "world"]);
        let unknown = Request::put("/u").body(StreamBody::new(frames)).unwrap();
        fetch_with(&pool, addr, unknown).await;
        let request = String::from_utf8(requests.recv().await.unwrap()).unwrap();
        assert!(
            request.ends_with(
                "transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n2\r\n, \r\n5\r\nworld\r\n0\r\n\r\n"
            ),
            "{request}"
        );

        let empty_post = Request::post("/e").body(Empty::<Bytes>::new()).unwrap();
        fetch_with(&pool, addr, empty_post).await;
        let request = String::from_utf8(requests.recv().await.unwrap()).unwrap();
        assert!(request.ends_with("content-length: 0\r\n\r\n"), "{request}");
    }

    fn futures_frames(
        pieces: &[&'static str],
    ) -> tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>> {
        let frames: Vec<_> = pieces
            .iter()
            .map(|piece| Ok(Frame::data(Bytes::from_static(piece.as_bytes()))))
            .collect();
        tokio_stream::iter(frames)
    }

    use std::convert::Infallible;

    #[tokio::test]
    async fn an_app_answering_before_reading_the_body_is_heard_and_its_connection_dropped() {
        // The app reads only the head and answers 413 at once, never reading the body.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
            stream
                .write_all(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
                .await
                .unwrap();
            // Held open, unread, until the test ends.
            std::future::pending::<()>().await;
        });
        let pool = Upstreams::default();
        // A body that never ends: without reading the response while sending, this would hang.
        let (_feed, frames) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(frames));
        let request = Request::post("/upload").body(body).unwrap();
        assert_eq!(
            fetch_with(&pool, addr, request).await,
            (StatusCode::PAYLOAD_TOO_LARGE, "big".into())
        );
        assert_eq!(pool.pooled(addr), 0, "a connection with half a request on it is not reused");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_the_connection() {
        let (addr, _requests, _) =
            scripted_upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"]).await;
        let pool = Upstreams::default();
        let response = timeout(DEADLINE, pool.send_request(addr, get("/"))).await.unwrap().unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"half");
        drop(body);
        assert_eq!(pool.pooled(addr), 0);
    }

    #[tokio::test]
    async fn a_malformed_or_missing_response_is_an_error_that_says_so() {
        let (garbage, _r1, _) = scripted_upstream(vec![b"SSH-2.0-OpenSSH_9.2\r\n\r\n"]).await;
        let pool = Upstreams::default();
        let error = pool.send_request(garbage, get("/")).await.unwrap_err();
        assert!(error.to_string().contains("does not start with HTTP/1.x"), "{error}");

        let (cut, _r2, _) =
            scripted_upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal"]).await;
        let response = pool.send_request(cut, get("/")).await.unwrap();
        let error = response.into_body().collect().await.unwrap_err();
        assert!(error.to_string().contains("closed the connection before the end"), "{error}");

        // An app that reads the request and closes without a word, on a fresh connection:
        // nothing to retry.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_request(&mut stream, &mut Vec::new()).await;
        });
        let error = pool.send_request(silent, get("/")).await.unwrap_err();
        assert!(error.to_string().contains("without sending a response"), "{error}");
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
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
        let pool = Arc::new(Upstreams::default());
        let burst: Vec<_> = (0..6)
            .map(|_| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    let response = pool.send_request(addr, get("/")).await.unwrap();
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
    async fn no_more_than_max_idle_connections_are_kept_after_a_burst() {
        let addr = dead_addr().await;
        let connections = counting_upstream(addr, false).await;
        let pool = Upstreams::default();
        // Answers whose bodies are not read yet keep their connections busy, so the burst
        // needs a connection each.
        let mut held = Vec::new();
        for _ in 0..MAX_IDLE + 6 {
            let response = timeout(DEADLINE, pool.send_request(addr, get("/"))).await.unwrap();
            held.push(response.unwrap().into_body());
        }
        assert_eq!(accepted(&connections), MAX_IDLE + 6);
        for body in held {
            assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"revived\n");
        }
        assert_eq!(pool.pooled(addr), MAX_IDLE, "the ones beyond the cap were closed");
        assert_eq!(fetch(&pool, addr).await, "revived\n");
        assert_eq!(accepted(&connections), MAX_IDLE + 6, "a kept one was reused");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let pool = Upstreams::default();
        let error = pool.send_request(dead_addr().await, get("/")).await.unwrap_err();
        assert!(error.is_connect(), "{error:?}");
        assert_eq!(error.to_string(), "cannot connect");
    }
}
