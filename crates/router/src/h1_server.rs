//! Plain HTTP/1.1 from visitors, served by the router itself: the request head read and
//! checked, the request body handed to the proxy as it arrives, and the response written
//! with the framing the visitor's connection needs (RFC 9112).
//!
//! HTTPS stays with hyper (HTTP/2 and HTTP/1.1 by ALPN). Plain HTTP is most of a proxy's
//! traffic, and hyper's server cost about a third of the router's instructions per request:
//! a task-local read buffer, a dispatcher, a timer per head. Here a connection is one loop
//! in one task, a request without a body allocates nothing for it, and a response that is
//! ready at once (most are) leaves in one write together with its head.
//!
//! The rules that keep a request from being read two ways (request smuggling) are in
//! [`request_framing`], as pure functions with table tests; the loop is tested through real
//! sockets here and in the rest of the crate.

use std::error::Error as StdError;
use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, DATE, EXPECT, HeaderMap, HeaderName, HeaderValue,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::body::{BoxError, ResponseBody};
use crate::connection::Activity;
use crate::h1::{
    BadLength, Chunk, Decoded, Framing, RawHeaders, parse_content_length, push_chunk_size,
    push_decimal,
};

/// The most headers a request may have, as in hyper; more get a 431.
const MAX_HEADERS: usize = 100;
/// The read buffer's first size; it grows up to the head limit for a head that needs it.
const READ_BUFFER: usize = 8 * 1024;
/// A read is not started with less room than this.
const MIN_READ_ROOM: usize = 2 * 1024;
/// Body data up to this size is copied next to the head or the chunk framing, so that the
/// whole goes out in one write; larger pieces are written from where they are.
const COPY_LIMIT: usize = 16 * 1024;
/// What is held back before writing, when the body has more ready.
const WRITE_BUFFER: usize = 64 * 1024;
/// After a response, what is left of a request body the proxy did not read is read and
/// dropped, if it is already here or arrives without waiting and is at most this long, so
/// that the connection can stay open; otherwise it is closed.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Before closing a connection after an error, the router stops writing and reads (and
/// drops) what the client is still sending, for at most this long and [`DRAIN_LIMIT`]
/// bytes: a close with unread bytes makes the kernel reset the connection, which could take
/// the error response with it before the client has read it.
const LINGER: Duration = Duration::from_secs(1);

/// What serves the requests of a connection.
pub(crate) trait Handler: Send + Sync {
    /// The response to `request`; failures are error pages.
    fn handle(
        &self,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send;
}

/// A request's body, from whichever server read its head.
pub(crate) enum RequestBody {
    /// From hyper (HTTPS).
    Hyper(hyper::body::Incoming),
    /// From [`serve_connection`] (plain HTTP).
    Own(Incoming),
}

impl From<hyper::body::Incoming> for RequestBody {
    fn from(body: hyper::body::Incoming) -> RequestBody {
        RequestBody::Hyper(body)
    }
}

impl RequestBody {
    /// The visitor's side of a WebSocket handshake, which becomes a tunnel once the 101
    /// has been written; `None` if the server did not expect this request to upgrade.
    pub(crate) fn take_upgrade(request: &mut Request<RequestBody>) -> Option<PendingUpgrade> {
        match request.body_mut() {
            RequestBody::Own(body) => body.upgrade.take().map(PendingUpgrade::Own),
            RequestBody::Hyper(_) => Some(PendingUpgrade::Hyper(hyper::upgrade::on(request))),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            RequestBody::Own(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(body) => body.is_end_stream(),
            RequestBody::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(body) => body.size_hint(),
            RequestBody::Own(body) => body.size_hint(),
        }
    }
}

/// A visitor connection handed over after a 101: the stream, and whatever the visitor
/// sent after its request head (the start of the new protocol).
pub(crate) struct Upgraded {
    pub(crate) stream: TcpStream,
    pub(crate) early: Bytes,
}

/// The visitor's side of a tunnel, once the server has written the 101.
pub(crate) enum PendingUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Own(oneshot::Receiver<Upgraded>),
}

/// One visitor connection and what its server loop and its current request body share.
struct Conn {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// Where the current exchange is: [`EXCHANGE_WAITING`], [`EXCHANGE_CONTINUED`] or
    /// [`EXCHANGE_ANSWERING`]; a `100 Continue` is only ever sent before the response.
    exchange: AtomicU8,
}

const EXCHANGE_WAITING: u8 = 0;
const EXCHANGE_CONTINUED: u8 = 1;
const EXCHANGE_ANSWERING: u8 = 2;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Conn {
    /// Reads what the socket has into `buf`'s spare room (grown to [`MIN_READ_ROOM`] first);
    /// `Ok(0)` at the end of the stream.
    fn poll_fill(&self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < MIN_READ_ROOM {
            buf.reserve(READ_BUFFER);
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(n) => {
                    self.activity.touch();
                    return Poll::Ready(Ok(n));
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let written = match bufs {
                [one] => self.stream.try_write(one),
                _ => self.stream.try_write_vectored(bufs),
            };
            match written {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.activity.touch_ready();
                    return Poll::Ready(Ok(n));
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    /// Writes `first` and then `second` in full.
    async fn write_all(&self, mut first: &[u8], mut second: &[u8]) -> io::Result<()> {
        while !first.is_empty() || !second.is_empty() {
            let n = if first.is_empty() {
                poll_fn(|cx| self.poll_write(cx, &[IoSlice::new(second)])).await?
            } else if second.is_empty() {
                poll_fn(|cx| self.poll_write(cx, &[IoSlice::new(first)])).await?
            } else {
                let bufs = [IoSlice::new(first), IoSlice::new(second)];
                poll_fn(|cx| self.poll_write(cx, &bufs)).await?
            };
            let from_first = n.min(first.len());
            first = &first[from_first..];
            second = &second[n - from_first..];
        }
        Ok(())
    }

    /// Sends `100 Continue` unless the response has begun or it was sent already.
    fn send_continue(&self) {
        let claimed = self.exchange.compare_exchange(
            EXCHANGE_WAITING,
            EXCHANGE_CONTINUED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if claimed.is_ok() {
            // Nothing else is being written now (the response has not begun and the last
            // one was written in full), so the socket's buffer has room for 25 bytes. A
            // client that hears nothing sends its body after a second anyway.
            let _ = self.stream.try_write(CONTINUE);
            self.activity.touch_ready();
        }
    }
}

/// A request body as it arrives, for [`RequestBody::Own`].
pub(crate) struct Incoming {
    /// `None` for a request without a body, or one read to its end.
    reader: Option<Box<Reader>>,
    /// For a request that may upgrade: where the connection goes after the 101.
    upgrade: Option<oneshot::Receiver<Upgraded>>,
}

/// What reads one request body: the connection's read buffer (lent by the server loop)
/// and where the body stands. It gives the buffer back through `back` when the body ends
/// or is dropped.
struct Reader {
    conn: Arc<Conn>,
    buf: BytesMut,
    framing: Framing,
    expect_continue: bool,
    back: Option<oneshot::Sender<Returned>>,
}

/// The read buffer coming back from a request body, and how far the body was read.
struct Returned {
    buf: BytesMut,
    framing: Framing,
    /// The visitor still waits for `100 Continue` and has sent none of its body.
    awaits_continue: bool,
}

impl Reader {
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            let _ = back.send(Returned {
                buf: std::mem::take(&mut self.buf),
                framing: self.framing,
                awaits_continue: self.expect_continue,
            });
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The chunked framing was broken.
    Malformed(&'static str),
    /// The connection ended or failed before the body did.
    Cut(Option<io::Error>),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Malformed(what) => write!(f, "the request body is malformed: {what}"),
            BodyError::Cut(None) => {
                f.write_str("the visitor closed the connection before the end of its body")
            }
            BodyError::Cut(Some(error)) => write!(f, "reading the request body failed: {error}"),
        }
    }
}

impl StdError for BodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BodyError::Cut(Some(error)) => Some(error),
            _ => None,
        }
    }
}

impl Body for Incoming {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(reader) = self.reader.as_mut() else {
            return Poll::Ready(None);
        };
        if reader.expect_continue {
            reader.expect_continue = false;
            reader.conn.send_continue();
        }
        loop {
            match reader.framing.decode(&mut reader.buf) {
                Ok(Decoded::Data(data)) => {
                    if reader.framing.is_done() {
                        reader.give_back();
                        self.reader = None;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    reader.give_back();
                    self.reader = None;
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(malformed) => {
                    let error = BodyError::Malformed(malformed.0);
                    self.reader = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            let read = ready!(reader.conn.poll_fill(cx, &mut reader.buf));
            match read {
                Ok(0) | Err(_) => {
                    let error = BodyError::Cut(read.err());
                    self.reader = None;
                    return Poll::Ready(Some(Err(error)));
                }
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reader {
            None => SizeHint::with_exact(0),
            Some(reader) => match reader.framing.exact_length() {
                Some(left) => SizeHint::with_exact(left),
                None => SizeHint::default(),
            },
        }
    }
}

/// How a request's body is delimited, and whether the connection may carry another
/// request after it; see [`request_framing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestFraming {
    /// [`Framing::Done`], [`Framing::Length`] or [`Framing::Chunked`].
    pub(crate) body: Framing,
    /// `Content-Length` came with `Transfer-Encoding`: chunked wins, the length is dropped,
    /// and the connection is closed after the response (RFC 9112 section 6.3).
    pub(crate) drop_length: bool,
}

/// Why a request head was refused, with the status it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
}

impl Refusal {
    const fn bad(reason: &'static str) -> Refusal {
        Refusal { status: StatusCode::BAD_REQUEST, reason }
    }
}

/// The framing of a request body from its headers (RFC 9112 section 6): chunked if
/// `Transfer-Encoding` ends in `chunked` (and any `Content-Length` is then ignored and
/// dropped), otherwise `Content-Length`, otherwise no body. Everything a front end and the
/// router could read two ways is refused: a `Transfer-Encoding` on HTTP/1.0 or one that
/// does not end in `chunked`, `chunked` twice, and `Content-Length` values that are not
/// one number.
pub(crate) fn request_framing(
    version: Version,
    headers: &HeaderMap,
) -> Result<RequestFraming, Refusal> {
    let mut encodings = headers.get_all(TRANSFER_ENCODING).iter().peekable();
    let has_length = headers.contains_key(CONTENT_LENGTH);
    if encodings.peek().is_some() {
        if version == Version::HTTP_10 {
            return Err(Refusal::bad("Transfer-Encoding is not allowed in an HTTP/1.0 request"));
        }
        let mut last_is_chunked = false;
        for coding in encodings.flat_map(|value| value.as_bytes().split(|&b| b == b',')) {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            if last_is_chunked {
                return Err(Refusal::bad("chunked must be the last Transfer-Encoding, once"));
            }
            last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
        }
        if !last_is_chunked {
            return Err(Refusal::bad("the last Transfer-Encoding of a request must be chunked"));
        }
        return Ok(RequestFraming { body: Framing::Chunked(Chunk::Size), drop_length: has_length });
    }
    if !has_length {
        return Ok(RequestFraming { body: Framing::Done, drop_length: false });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        length = match parse_content_length(value.as_bytes(), length) {
            Ok(length) => Some(length),
            Err(BadLength::Invalid) => {
                return Err(Refusal::bad("the Content-Length is not a number"));
            }
            Err(BadLength::Conflicting) => {
                return Err(Refusal::bad("the request has conflicting Content-Length values"));
            }
        };
    }
    let body = match length {
        Some(0) | None => Framing::Done,
        Some(length) => Framing::Length(length),
    };
    Ok(RequestFraming { body, drop_length: false })
}

/// Whether a `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// Whether the connection may carry another request after this one, as its version and
/// `Connection` header say.
fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    if version == Version::HTTP_11 {
        !connection_has(headers, b"close")
    } else {
        connection_has(headers, b"keep-alive")
    }
}

/// How a response body is sent to the visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body is written (HEAD, 1xx, 204, 304), whatever the headers say.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked, for a body of unknown length to an HTTP/1.1 visitor.
    Chunked,
    /// Until the connection closes, for a body of unknown length to an HTTP/1.0 visitor.
    UntilClose,
}

/// What a response head needs besides the response: the request's method and version,
/// the body's known length, and whether the connection stays open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answering {
    pub(crate) head_request: bool,
    pub(crate) version: Version,
    /// The body's length if it is known, from its size hint.
    pub(crate) exact: Option<u64>,
    pub(crate) keep_alive: bool,
}

/// Writes the status line and headers of `response` into `out`, with the framing chosen
/// for it (`Content-Length` or `Transfer-Encoding: chunked` added when the headers have
/// neither), a `Date` if it has none, and the `Connection` header the visitor needs.
/// Returns the framing and whether the connection stays open after it.
pub(crate) fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<&RawHeaders>,
    answering: Answering,
    date: &[u8],
) -> (ResponseFraming, bool) {
    let mut keep_alive = answering.keep_alive && !connection_has(headers, b"close");
    let no_body_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let stated_length = headers.get(CONTENT_LENGTH).and_then(|value| {
        let value = value.to_str().ok()?;
        value.parse::<u64>().ok()
    });
    let stated_length = stated_length.or_else(|| raw?.content_length);
    // 1xx and 204 must not have a length; HEAD and 304 keep the one the GET would have.
    let write_stated_length =
        stated_length.is_some() && !status.is_informational() && status != StatusCode::NO_CONTENT;
    let mut added_length = None;
    let framing = if no_body_status {
        ResponseFraming::None
    } else if answering.head_request {
        if stated_length.is_none() {
            added_length = answering.exact.filter(|&length| length > 0);
        }
        ResponseFraming::None
    } else if let Some(length) = stated_length {
        ResponseFraming::Length(length)
    } else if let Some(length) = answering.exact {
        added_length = Some(length);
        ResponseFraming::Length(length)
    } else if answering.version == Version::HTTP_11 {
        ResponseFraming::Chunked
    } else {
        keep_alive = false;
        ResponseFraming::UntilClose
    };

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = raw.is_some_and(|raw| raw.has_date);
    let mut has_connection = false;
    for (name, value) in headers {
        if *name == CONTENT_LENGTH {
            if !write_stated_length {
                continue;
            }
        } else if *name == TRANSFER_ENCODING {
            continue;
        } else if *name == CONNECTION {
            has_connection = true;
        } else if *name == DATE {
            has_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(raw) = raw {
        out.extend_from_slice(&raw.lines);
        if let Some(id) = &raw.request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(length) = added_length {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, length);
        out.extend_from_slice(b"\r\n");
    }
    if framing == ResponseFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_connection && status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if answering.version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// The `Date` header's value for now, formatted once a second per thread.
fn with_date<T>(use_date: impl FnOnce(&[u8]) -> T) -> T {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> = const {
            std::cell::RefCell::new((u64::MAX, [0; 29]))
        };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                date.1.copy_from_slice(text.as_bytes());
            }
            date.0 = second;
        }
        use_date(&date.1)
    })
}

/// A parsed request head, with the byte ranges of its parts in the buffer it came from.
struct HeadIndices {
    length: usize,
    method: (usize, usize),
    target: (usize, usize),
    version: Version,
    headers: usize,
}

/// What reading a request head gave.
enum Head {
    Request(Request<()>),
    /// The visitor closed the connection (or the server is stopping) between requests.
    Closed,
    Refused(Refusal),
}

/// Parses the request head at the start of `buf`, if it is all there: `Ok(None)` while it
/// is incomplete. The ranges of the header names and values go into `ranges`.
fn parse_head(
    buf: &[u8],
    ranges: &mut [(usize, usize, usize, usize); MAX_HEADERS],
) -> Result<Option<HeadIndices>, Refusal> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = request.parse_with_uninit_headers(buf, &mut headers);
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason: "the request has more than 100 headers",
            });
        }
        Err(error) => return Err(Refusal::bad(parse_error(error))),
    };
    let start = buf.as_ptr() as usize;
    let range = |part: &[u8]| {
        let from = part.as_ptr() as usize - start;
        (from, from + part.len())
    };
    let method = range(request.method.unwrap_or_default().as_bytes());
    let target = range(request.path.unwrap_or_default().as_bytes());
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    for (slot, header) in ranges.iter_mut().zip(request.headers.iter()) {
        let name = range(header.name.as_bytes());
        let value = range(header.value);
        *slot = (name.0, name.1, value.0, value.1);
    }
    Ok(Some(HeadIndices { length, method, target, version, headers: request.headers.len() }))
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "a header name is invalid",
        httparse::Error::HeaderValue => "a header value is invalid",
        httparse::Error::NewLine | httparse::Error::Token => {
            "the request line or a header line is malformed"
        }
        httparse::Error::Status => "the request line is malformed",
        httparse::Error::Version => "the HTTP version is not HTTP/1.0 or HTTP/1.1",
        httparse::Error::TooManyHeaders => "the request has too many headers",
    }
}

/// Builds the request from a parsed head; `head` is the head's bytes, which the target and
/// the header values keep pointing into.
fn build_request(
    head: &Bytes,
    indices: &HeadIndices,
    ranges: &[(usize, usize, usize, usize)],
) -> Result<Request<()>, Refusal> {
    let (from, to) = indices.method;
    let method =
        Method::from_bytes(&head[from..to]).map_err(|_| Refusal::bad("the method is invalid"))?;
    let (from, to) = indices.target;
    let uri = Uri::from_maybe_shared(head.slice(from..to))
        .map_err(|_| Refusal::bad("the request target is not a valid URI"))?;
    let mut headers = HeaderMap::with_capacity(ranges.len());
    for &(name_from, name_to, value_from, value_to) in ranges {
        let name = HeaderName::from_bytes(&head[name_from..name_to])
            .map_err(|_| Refusal::bad("a header name is invalid"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_from..value_to))
            .map_err(|_| Refusal::bad("a header value is invalid"))?;
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = indices.version;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The limits a connection's heads are held to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub(crate) max_head_bytes: usize,
}

/// Serves HTTP/1.1 on `stream` until the visitor closes it, an error ends it, or
/// `stopping` is set while no request is under way.
///
/// The connection's watchdog (see [`crate::connection`]) reads `activity` to close it when
/// it is idle or slow to send a head; it sets `stopping` for a graceful end, and polls this
/// future afterwards, which is when the flag is seen.
pub(crate) async fn serve_connection<H: Handler>(
    stream: TcpStream,
    handler: &H,
    activity: Arc<Activity>,
    stopping: &AtomicBool,
    limits: HeadLimits,
) -> io::Result<()> {
    let conn = Arc::new(Conn { stream, activity, exchange: AtomicU8::new(EXCHANGE_WAITING) });
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut out = Vec::with_capacity(1024);
    let mut ranges = [(0, 0, 0, 0); MAX_HEADERS];
    loop {
        let head = read_head(&conn, &mut buf, &mut ranges, stopping, limits).await?;
        let request = match head {
            Head::Request(request) => request,
            Head::Closed => return Ok(()),
            Head::Refused(refusal) => return refuse(&conn, &mut out, refusal).await,
        };
        let framing = match request_framing(request.version(), request.headers()) {
            Ok(framing) => framing,
            Err(refusal) => return refuse(&conn, &mut out, refusal).await,
        };
        let (mut parts, ()) = request.into_parts();
        let mut keep_alive = wants_keep_alive(parts.version, &parts.headers);
        if framing.drop_length {
            parts.headers.remove(CONTENT_LENGTH);
            keep_alive = false;
        }
        let _busy = conn.activity.busy();
        conn.exchange.store(EXCHANGE_WAITING, Ordering::Release);

        let mut returned = None;
        let reader = (!framing.body.is_done()).then(|| {
            let (back, comes_back) = oneshot::channel();
            returned = Some(comes_back);
            let expect_continue = parts.version == Version::HTTP_11
                && parts
                    .headers
                    .get(EXPECT)
                    .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            Box::new(Reader {
                conn: Arc::clone(&conn),
                buf: std::mem::take(&mut buf),
                framing: framing.body,
                expect_continue,
                back: Some(back),
            })
        });
        let mut upgraded = None;
        let upgrade = (parts.headers.contains_key(UPGRADE)
            && connection_has(&parts.headers, b"upgrade"))
        .then(|| {
            let (sender, receiver) = oneshot::channel();
            upgraded = Some(sender);
            receiver
        });
        let head_request = parts.method == Method::HEAD;
        let version = parts.version;
        let request = Request::from_parts(parts, RequestBody::Own(Incoming { reader, upgrade }));

        let response = handler.handle(request).await;
        conn.exchange.store(EXCHANGE_ANSWERING, Ordering::Release);
        let (parts, body) = response.into_parts();
        let answering =
            Answering { head_request, version, exact: body.size_hint().exact(), keep_alive };
        out.clear();
        let raw = body.raw_headers();
        let (response_framing, mut keep_alive) = with_date(|date| {
            encode_response_head(&mut out, parts.status, &parts.headers, raw, answering, date)
        });

        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            drop(body);
            conn.write_all(&out, &[]).await?;
            if let Some(upgraded) = upgraded
                && returned.is_none()
                && let Ok(conn) = Arc::try_unwrap(conn)
            {
                let _ = upgraded.send(Upgraded { stream: conn.stream, early: buf.freeze() });
            }
            return Ok(());
        }
        let written = write_body(&conn, &mut out, body, response_framing).await?;
        keep_alive &= written;

        if let Some(mut returned) = returned {
            // The body gave its buffer back if it was read to its end or dropped; one still
            // held somewhere cannot be waited for.
            match returned.try_recv() {
                Ok(Returned { buf: back, framing, awaits_continue }) => {
                    buf = back;
                    keep_alive &= !awaits_continue && drain(&conn, &mut buf, framing);
                }
                Err(_) => keep_alive = false,
            }
        }
        if !keep_alive {
            return Ok(());
        }
        drop(_busy);
        if stopping.load(Ordering::Acquire) {
            return Ok(());
        }
    }
}

/// Reads until `buf` starts with a complete request head, and takes that head out of it.
async fn read_head(
    conn: &Conn,
    buf: &mut BytesMut,
    ranges: &mut [(usize, usize, usize, usize); MAX_HEADERS],
    stopping: &AtomicBool,
    limits: HeadLimits,
) -> io::Result<Head> {
    loop {
        // A few clients send a CRLF after a body; RFC 9112 section 2.2 says to ignore empty
        // lines before a request line.
        while buf.first().is_some_and(|&b| b == b'\r' || b == b'\n') {
            let _ = buf.split_to(1);
        }
        if !buf.is_empty() {
            match parse_head(buf, ranges) {
                Ok(Some(indices)) => {
                    let head = buf.split_to(indices.length).freeze();
                    return Ok(match build_request(&head, &indices, &ranges[..indices.headers]) {
                        Ok(request) => Head::Request(request),
                        Err(refusal) => Head::Refused(refusal),
                    });
                }
                Ok(None) if buf.len() >= limits.max_head_bytes => {
                    return Ok(Head::Refused(Refusal {
                        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        reason: "the request head is larger than the router accepts",
                    }));
                }
                Ok(None) => {}
                Err(refusal) => return Ok(Head::Refused(refusal)),
            }
        }
        let idle = buf.is_empty();
        // A request that is already here when the server stops is still answered.
        let read = poll_fn(|cx| match conn.poll_fill(cx, buf) {
            Poll::Pending if idle && stopping.load(Ordering::Acquire) => Poll::Ready(Ok(0)),
            polled => polled,
        });
        match read.await {
            Ok(0) => return Ok(Head::Closed),
            Ok(_) => {}
            // A visitor that resets between requests has simply gone.
            Err(error) if idle && is_gone(&error) => return Ok(Head::Closed),
            Err(error) => return Err(error),
        }
    }
}

fn is_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Writes the response body after the head in `out`, as `framing` says. Returns whether
/// the body came out as announced, so that the connection can carry another request;
/// a body that fails part way through, or ends short of its length, ends the connection.
async fn write_body(
    conn: &Conn,
    out: &mut Vec<u8>,
    mut body: ResponseBody,
    framing: ResponseFraming,
) -> io::Result<bool> {
    if framing == ResponseFraming::None {
        drop(body);
        conn.write_all(out, &[]).await?;
        return Ok(true);
    }
    let mut left = match framing {
        ResponseFraming::Length(length) => length,
        _ => u64::MAX,
    };
    let complete = loop {
        // What is ready now joins the head in one write; the wait for more starts with a
        // write of what is held.
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    conn.write_all(out, &[]).await?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break true,
            Some(Err(error)) => {
                tracing::debug!("a response body failed part way: {error}");
                break false;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers are not passed on.
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        let mut data = data;
        if framing == ResponseFraming::Length(0) || left < data.len() as u64 {
            // More than the length announced: what fits is sent, and the connection ends.
            data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
            left = 0;
            write_data(conn, out, &data, false).await?;
            break false;
        }
        if matches!(framing, ResponseFraming::Length(_)) {
            left -= data.len() as u64;
        }
        write_data(conn, out, &data, framing == ResponseFraming::Chunked).await?;
    };
    if complete && framing == ResponseFraming::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        conn.write_all(out, &[]).await?;
        out.clear();
    }
    let as_announced = match framing {
        ResponseFraming::Length(_) => left == 0,
        ResponseFraming::Chunked => true,
        _ => false,
    };
    Ok(complete && as_announced)
}

/// Adds one piece of body to `out` (as a chunk if `chunked`), writing `out` out first or
/// with it when the piece is large or `out` is full.
async fn write_data(conn: &Conn, out: &mut Vec<u8>, data: &[u8], chunked: bool) -> io::Result<()> {
    if chunked {
        push_chunk_size(out, data.len());
    }
    if data.len() <= COPY_LIMIT {
        out.extend_from_slice(data);
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_BUFFER {
            conn.write_all(out, &[]).await?;
            out.clear();
        }
    } else {
        conn.write_all(out, data).await?;
        out.clear();
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    Ok(())
}

/// Reads and drops what is left of a request body the proxy did not read, as far as it is
/// already here or arrives at once, up to [`DRAIN_LIMIT`] bytes; `true` if that was all of
/// it, so the connection is at the next request.
fn drain(conn: &Conn, buf: &mut BytesMut, mut framing: Framing) -> bool {
    let mut dropped = 0;
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    loop {
        match framing.decode(buf) {
            Ok(Decoded::End) => return true,
            Ok(Decoded::Data(data)) => {
                dropped += data.len();
                if dropped > DRAIN_LIMIT {
                    return false;
                }
                if framing.is_done() {
                    return true;
                }
            }
            Ok(Decoded::NeedMore) => match conn.poll_fill(&mut cx, buf) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                _ => return false,
            },
            Err(_) => return false,
        }
    }
}

/// Answers a request the router refuses before it is routed (a head it cannot read, too
/// large, or framed two ways) and ends the connection.
async fn refuse(conn: &Conn, out: &mut Vec<u8>, refusal: Refusal) -> io::Result<()> {
    tracing::debug!(status = refusal.status.as_u16(), "refused a request: {}", refusal.reason);
    let page = format!(
        "{} {}: {}.\n",
        refusal.status.as_str(),
        refusal.status.canonical_reason().unwrap_or_default(),
        refusal.reason
    );
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    let answering = Answering {
        head_request: false,
        version: Version::HTTP_11,
        exact: Some(page.len() as u64),
        keep_alive: false,
    };
    out.clear();
    with_date(|date| encode_response_head(out, refusal.status, &headers, None, answering, date));
    out.extend_from_slice(page.as_bytes());
    conn.write_all(out, &[]).await?;
    linger(conn).await;
    Ok(())
}

/// Stops writing and reads what the visitor still sends, within [`LINGER`] and
/// [`DRAIN_LIMIT`], so that closing does not reset the connection under a response the
/// visitor has not read yet.
async fn linger(conn: &Conn) {
    use std::os::fd::AsRawFd;
    // `TcpStream::shutdown` needs the stream itself; the call on its descriptor does not.
    let fd = conn.stream.as_raw_fd();
    if nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write).is_err() {
        return;
    }
    let mut scratch = BytesMut::with_capacity(READ_BUFFER);
    let drained = async {
        let mut read = 0;
        while read < DRAIN_LIMIT {
            scratch.clear();
            match poll_fn(|cx| conn.poll_fill(cx, &mut scratch)).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drained).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::DEADLINE;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    type Pairs = &'static [(&'static str, &'static str)];

    #[test]
    fn request_framing_table() {
        use Version as V;
        let chunked = Framing::Chunked(Chunk::Size);
        let ok = |body, drop_length| Ok(RequestFraming { body, drop_length });
        let cases: &[(V, Pairs, Result<RequestFraming, &str>)] = &[
            (V::HTTP_11, &[], ok(Framing::Done, false)),
            (V::HTTP_11, &[("content-length", "0")], ok(Framing::Done, false)),
            (V::HTTP_11, &[("content-length", "12")], ok(Framing::Length(12), false)),
            (V::HTTP_10, &[("content-length", "12")], ok(Framing::Length(12), false)),
            (V::HTTP_11, &[("content-length", "5, 5")], ok(Framing::Length(5), false)),
            (
                V::HTTP_11,
                &[("content-length", "5"), ("content-length", "5")],
                ok(Framing::Length(5), false),
            ),
            (V::HTTP_11, &[("transfer-encoding", "chunked")], ok(chunked, false)),
            (V::HTTP_11, &[("transfer-encoding", "gzip, Chunked")], ok(chunked, false)),
            (
                V::HTTP_11,
                &[("transfer-encoding", "gzip"), ("transfer-encoding", "chunked")],
                ok(chunked, false),
            ),
            (
                V::HTTP_11,
                &[("content-length", "4"), ("transfer-encoding", "chunked")],
                ok(chunked, true),
            ),
            (V::HTTP_11, &[("content-length", "5, 6")], Err("conflicting")),
            (V::HTTP_11, &[("content-length", "5"), ("content-length", "6")], Err("conflicting")),
            (V::HTTP_11, &[("content-length", "-1")], Err("not a number")),
            (V::HTTP_11, &[("content-length", "+5")], Err("not a number")),
            (V::HTTP_11, &[("content-length", "")], Err("not a number")),
            (V::HTTP_11, &[("content-length", "99999999999999999999")], Err("not a number")),
            (V::HTTP_11, &[("transfer-encoding", "chunked, identity")], Err("must be the last")),
            (V::HTTP_11, &[("transfer-encoding", "gzip")], Err("must be chunked")),
            (V::HTTP_11, &[("transfer-encoding", "chunked, chunked")], Err("once")),
            (V::HTTP_10, &[("transfer-encoding", "chunked")], Err("HTTP/1.0")),
        ];
        for (version, pairs, expected) in cases {
            let framing = request_framing(*version, &headers(pairs));
            match (framing, expected) {
                (Ok(framing), Ok(expected)) => assert_eq!(framing, *expected, "{pairs:?}"),
                (Err(refusal), Err(reason)) => {
                    assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{pairs:?}");
                    assert!(refusal.reason.contains(reason), "{pairs:?}: {}", refusal.reason);
                }
                (framing, expected) => panic!("{pairs:?}: {framing:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let cases: &[(Version, Pairs, bool)] = &[
            (Version::HTTP_11, &[], true),
            (Version::HTTP_11, &[("connection", "close")], false),
            (Version::HTTP_11, &[("connection", "Upgrade, Close")], false),
            (Version::HTTP_11, &[("connection", "keep-alive")], true),
            (Version::HTTP_10, &[], false),
            (Version::HTTP_10, &[("connection", "Keep-Alive")], true),
            (Version::HTTP_10, &[("connection", "keep-alive, close")], false),
        ];
        for (version, pairs, expected) in cases {
            let headers = headers(pairs);
            let keep_alive =
                wants_keep_alive(*version, &headers) && !connection_has(&headers, b"close");
            assert_eq!(keep_alive, *expected, "{version:?} {pairs:?}");
        }
    }

    /// The head written for a response, and the framing and keep-alive chosen.
    fn encoded(
        status: u16,
        pairs: &[(&str, &str)],
        raw: Option<&RawHeaders>,
        answering: Answering,
    ) -> (String, ResponseFraming, bool) {
        let mut out = Vec::new();
        let status = StatusCode::from_u16(status).unwrap();
        let (framing, keep_alive) = encode_response_head(
            &mut out,
            status,
            &headers(pairs),
            raw,
            answering,
            b"Sun, 22 Nov 2026 10:00:00 GMT",
        );
        (String::from_utf8(out).unwrap(), framing, keep_alive)
    }

    #[test]
    fn response_heads_get_the_framing_their_visitor_needs() {
        let http11 = Answering {
            head_request: false,
            version: Version::HTTP_11,
            exact: None,
            keep_alive: true,
        };
        let date = "date: Sun, 22 Nov 2026 10:00:00 GMT\r\n";

        let (head, framing, keep_alive) = encoded(
            200,
            &[("content-type", "text/plain")],
            None,
            Answering { exact: Some(5), ..http11 },
        );
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n{date}\r\n"
            )
        );
        assert_eq!((framing, keep_alive), (ResponseFraming::Length(5), true));

        let (head, framing, _) = encoded(200, &[], None, http11);
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert_eq!(framing, ResponseFraming::Chunked);

        // An HTTP/1.0 visitor cannot read chunks: the body ends with the connection.
        let http10 = Answering { version: Version::HTTP_10, ..http11 };
        let (head, framing, keep_alive) = encoded(200, &[], None, http10);
        assert!(head.contains("connection: close\r\n") && !head.contains("chunked"), "{head}");
        assert_eq!((framing, keep_alive), (ResponseFraming::UntilClose, false));
        let (head, _, keep_alive) = encoded(200, &[], None, Answering { exact: Some(0), ..http10 });
        assert!(head.contains("connection: keep-alive\r\n"), "{head}");
        assert!(keep_alive);

        // HEAD and 304 keep the length a GET would have; 204 and 1xx have none.
        let length = [("content-length", "42")];
        let head_request = Answering { head_request: true, exact: Some(0), ..http11 };
        let (head, framing, _) = encoded(200, &length, None, head_request);
        assert!(head.contains("content-length: 42\r\n"), "{head}");
        assert_eq!(framing, ResponseFraming::None);
        let (head, framing, _) =
            encoded(200, &[], None, Answering { exact: Some(9), ..head_request });
        assert!(head.contains("content-length: 9\r\n"), "{head}");
        assert_eq!(framing, ResponseFraming::None);
        let (head, framing, _) = encoded(304, &length, None, http11);
        assert!(
            head.starts_with("HTTP/1.1 304 Not Modified\r\n")
                && head.contains("content-length: 42"),
            "{head}"
        );
        assert_eq!(framing, ResponseFraming::None);
        let (head, framing, _) = encoded(204, &length, None, http11);
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(framing, ResponseFraming::None);

        // The response may end the connection, and a framing header of its own is replaced.
        let (head, _, keep_alive) = encoded(
            502,
            &[("connection", "close"), ("transfer-encoding", "chunked")],
            None,
            Answering { exact: Some(3), ..http11 },
        );
        assert!(!keep_alive);
        assert_eq!(head.matches("connection").count(), 1, "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        let (_, _, keep_alive) = encoded(200, &[], None, Answering { keep_alive: false, ..http11 });
        assert!(!keep_alive);

        // An app's own lines come after the router's, with their length and date, and then
        // the request id they were given.
        let mut raw = RawHeaders {
            lines: Bytes::from_static(
                b"Content-Length: 7\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n",
            ),
            content_length: Some(7),
            has_date: true,
            request_id: None,
        };
        let (head, framing, _) = encoded(
            200,
            &[("cache-control", "no-store")],
            Some(&raw),
            Answering { exact: Some(7), ..http11 },
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncache-control: no-store\r\nContent-Length: 7\r\n\
             Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n"
        );
        assert_eq!(framing, ResponseFraming::Length(7));
        raw.request_id = Some(HeaderValue::from_static("abc"));
        let (head, _, _) = encoded(200, &[], Some(&raw), Answering { exact: Some(7), ..http11 });
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\
             Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nx-request-id: abc\r\n\r\n"
        );
    }

    /// Answers every request with `METHOD TARGET body=N`, having read the body, except for
    /// targets under `/ignore`, whose body it leaves unread.
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request<RequestBody>) -> Response<ResponseBody> {
            let line = format!("{} {}", request.method(), request.uri());
            let text = if request.uri().path().starts_with("/ignore") {
                format!("{line} ignored")
            } else {
                match request.into_body().collect().await {
                    Ok(body) => format!("{line} body={}", body.to_bytes().len()),
                    Err(error) => format!("{line} failed: {error}"),
                }
            };
            Response::new(ResponseBody::Page(Full::new(Bytes::from(text))))
        }
    }

    /// A listener serving [`Echo`] on each connection, with `stopping` for all of them.
    async fn echo_server(stopping: Arc<AtomicBool>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let stopping = Arc::clone(&stopping);
                tokio::spawn(async move {
                    let limits = HeadLimits { max_head_bytes: 8 * 1024 };
                    let _ =
                        serve_connection(stream, &Echo, Activity::new(), &stopping, limits).await;
                });
            }
        });
        addr
    }

    /// Reads from `stream` until `count` responses have come (each with a length), or the
    /// stream ends; returns their heads and bodies.
    async fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<(String, String)> {
        let mut raw = Vec::new();
        let mut responses = Vec::new();
        let mut chunk = [0u8; 4096];
        while responses.len() < count {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(raw[..end].to_vec()).unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |n| n.parse().unwrap());
                if head.starts_with("HTTP/1.1 100") {
                    raw.drain(..end + 4);
                    responses.push((head, String::new()));
                    continue;
                }
                if raw.len() >= end + 4 + length {
                    let body = String::from_utf8(raw[end + 4..end + 4 + length].to_vec()).unwrap();
                    raw.drain(..end + 4 + length);
                    responses.push((head, body));
                    continue;
                }
            }
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
        responses
    }

    /// Whether the server has closed `stream` (after what was read already).
    async fn is_closed(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        matches!(timeout(DEADLINE, stream.read_to_end(&mut rest)).await, Ok(Ok(0)))
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let addr = echo_server(Arc::default()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let requests = "GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
                        POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
                        \r\nPOST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                        2\r\nhi\r\n0\r\n\r\n\
                        GET /four HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        stream.write_all(requests.as_bytes()).await.unwrap();
        let responses = timeout(DEADLINE, read_responses(&mut stream, 4)).await.unwrap();
        let bodies: Vec<&str> = responses.iter().map(|(_, body)| body.as_str()).collect();
        assert_eq!(
            bodies,
            ["GET /one body=0", "POST /two body=3", "POST /three body=2", "GET /four body=0"]
        );
        assert!(responses[0].0.contains("\r\ndate: "), "{}", responses[0].0);
        assert!(responses[3].0.contains("connection: close"), "{}", responses[3].0);
        assert!(is_closed(&mut stream).await);
    }

    #[tokio::test]
    async fn expect_continue_is_answered_when_the_body_is_read() {
        let addr = echo_server(Arc::default()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head =
            "PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        // The body is only sent once the 100 has come, as a client does.
        let interim = timeout(DEADLINE, read_responses(&mut stream, 1)).await.unwrap();
        assert_eq!(interim[0].0, "HTTP/1.1 100 Continue");
        stream.write_all(b"data").await.unwrap();
        let answer = timeout(DEADLINE, read_responses(&mut stream, 1)).await.unwrap();
        assert_eq!(answer[0].1, "PUT /up body=4");
    }

    #[tokio::test]
    async fn an_unread_body_is_skipped_if_small_and_ends_the_connection_if_not() {
        let addr = echo_server(Arc::default()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let small = "POST /ignore HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                     GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
        stream.write_all(small.as_bytes()).await.unwrap();
        let responses = timeout(DEADLINE, read_responses(&mut stream, 2)).await.unwrap();
        let bodies: Vec<&str> = responses.iter().map(|(_, body)| body.as_str()).collect();
        assert_eq!(bodies, ["POST /ignore ignored", "GET /next body=0"]);

        // A body far larger than what is skipped, most of which has not even been sent.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let large = "POST /ignore HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\nxx";
        stream.write_all(large.as_bytes()).await.unwrap();
        let responses = timeout(DEADLINE, read_responses(&mut stream, 1)).await.unwrap();
        assert_eq!(responses[0].1, "POST /ignore ignored");
        assert!(is_closed(&mut stream).await);
    }

    #[tokio::test]
    async fn http_10_connections_close_unless_kept_alive() {
        let addr = echo_server(Arc::default()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
        let responses = timeout(DEADLINE, read_responses(&mut stream, 1)).await.unwrap();
        assert!(responses[0].0.starts_with("HTTP/1.1 200 OK\r\n"), "{}", responses[0].0);
        assert!(is_closed(&mut stream).await);

        let mut stream = TcpStream::connect(addr).await.unwrap();
        let requests = "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
                        GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        stream.write_all(requests.as_bytes()).await.unwrap();
        let responses = timeout(DEADLINE, read_responses(&mut stream, 2)).await.unwrap();
        assert_eq!(responses.len(), 2);
        assert!(responses[0].0.contains("connection: keep-alive"), "{}", responses[0].0);
    }

    #[tokio::test]
    async fn refusals_name_the_problem_and_close() {
        let addr = echo_server(Arc::default()).await;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n".to_vec(),
                "400 Bad Request: a header name is invalid",
            ),
            (b"GET / HTTP/2.0\r\n\r\n".to_vec(), "400 Bad Request: the HTTP version"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n".to_vec(),
                "400 Bad Request: the request has conflicting Content-Length values",
            ),
            (
                format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000)).into_bytes(),
                "431 Request Header Fields Too Large: the request head is larger",
            ),
            (
                format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(101)).into_bytes(),
                "431 Request Header Fields Too Large: the request has more than 100 headers",
            ),
        ];
        for (request, expected) in cases {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut raw = Vec::new();
            timeout(DEADLINE, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
            let raw = String::from_utf8(raw).unwrap();
            let status = &expected[..3];
            assert!(raw.starts_with(&format!("HTTP/1.1 {status} ")), "{raw}");
            assert!(raw.contains("connection: close\r\n"), "{raw}");
            assert!(raw.contains(expected), "{expected:?} in {raw}");
        }
    }

    #[tokio::test]
    async fn a_stopping_server_answers_a_request_that_came_and_then_closes() {
        let stopping = Arc::new(AtomicBool::new(false));
        let addr = echo_server(Arc::clone(&stopping)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let responses = timeout(DEADLINE, read_responses(&mut stream, 1)).await.unwrap();
        assert_eq!(responses[0].1, "GET /before body=0");
        stopping.store(true, Ordering::Release);
        // The flag is seen on the next look at the connection (the watchdog's, in the
        // server), here caused by this request, which was sent before the close.
        stream.write_all(b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let responses = timeout(DEADLINE, read_responses(&mut stream, 1)).await.unwrap();
        assert_eq!(responses[0].1, "GET /last body=0");
        assert!(is_closed(&mut stream).await);
    }
}
