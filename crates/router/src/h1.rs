//! HTTP/1.1 toward the apps, as bytes: the request head the router writes, the response
//! head it parses, and how the response body is framed (RFC 9112 sections 6 and 7).
//!
//! Pure functions over buffers, so that every framing rule is tested here without a
//! socket; [`crate::upstream`] does the reading and writing.

use std::error::Error as StdError;
use std::fmt;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use crate::headers::{X_REQUEST_ID, hop_by_hop_position};

/// The most headers a response may have; more is refused rather than half-read.
const MAX_HEADERS: usize = 100;
/// The largest response head accepted. Apps send a few hundred bytes; a head that never
/// ends must not grow the buffer without bound.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The longest chunk-size line of a chunked body (extensions included).
const MAX_CHUNK_LINE: usize = 4096;
/// The most bytes of trailers after a chunked body; they are read and dropped.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why an app's response could not be read: the message names what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the app's response is not valid HTTP/1.1: {}", self.0)
    }
}

impl StdError for Malformed {}

/// How a request body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body, and no header saying so.
    None,
    /// `Content-Length: n` and exactly n bytes (`0` for an empty POST or PUT).
    Length(u64),
    /// `Transfer-Encoding: chunked`, for a body whose length is not known up front.
    Chunked,
}

impl RequestFraming {
    /// The framing for a body that is empty (`is_end_stream`) or of `exact` length or of
    /// unknown length. An empty body gets `Content-Length: 0` when the visitor sent a length
    /// or the method is one that carries a body, as user agents do.
    pub(crate) fn choose(
        method: &Method,
        had_length: bool,
        is_end_stream: bool,
        exact: Option<u64>,
    ) -> RequestFraming {
        let carries_body = *method == Method::POST || *method == Method::PUT || *method == "PATCH";
        match exact {
            _ if is_end_stream => {
                if had_length || carries_body {
                    RequestFraming::Length(0)
                } else {
                    RequestFraming::None
                }
            }
            Some(length) => RequestFraming::Length(length),
            None => RequestFraming::Chunked,
        }
    }
}

/// A request for an app, as the router sends it.
#[derive(Clone, Copy)]
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    /// The request target in origin form (`/path?query`).
    pub(crate) target: &'a str,
    /// Passed on as they are, except the framing headers (which the body decides) and the
    /// ones `added` replaces.
    pub(crate) headers: &'a HeaderMap,
    /// Writes the header lines the router adds, each ending in CRLF. A writer rather than
    /// bytes, so that they go straight into the head with no buffer of their own.
    pub(crate) added: &'a (dyn Fn(&mut Vec<u8>) + Sync),
    /// Which names of `headers` the lines in `added` replace.
    pub(crate) replaced: fn(&HeaderName) -> bool,
}

#[cfg(test)]
impl<'a> RequestHead<'a> {
    /// `method` to `target` with `headers` as they are.
    pub(crate) fn plain(
        method: &'a Method,
        target: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestHead<'a> {
        RequestHead { method, target, headers, added: &|_| {}, replaced: |_| false }
    }
}

/// Writes a request head to `out`: the request line, every header but the framing ones
/// (`Content-Length` and `Transfer-Encoding`, which `framing` decides) and the replaced
/// ones, the added lines, then the framing.
///
/// Nothing here can inject a line: `http` has already refused CR and LF in names, values,
/// methods and targets, and the added lines are the router's own.
pub(crate) fn encode_request_head(
    head: &RequestHead<'_>,
    framing: RequestFraming,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers {
        if name == CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || (head.replaced)(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    (head.added)(out);
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(length) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, length);
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes the chunk-size line for `len` bytes of a chunked request body.
pub(crate) fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The headers of a 101, which the tunnel reads; empty for any other response, whose
    /// headers are in `raw`.
    pub(crate) headers: HeaderMap,
    pub(crate) raw: RawHeaders,
    pub(crate) framing: Framing,
    /// Whether the connection can carry another request once this response is read.
    pub(crate) keep_alive: bool,
}

/// Parses the response head at the start of `buf`, removing it from `buf`; `Ok(None)` when
/// more bytes are needed. `request_was_head` says the request was a HEAD, whose response
/// has no body whatever its headers say.
///
/// The hop-by-hop headers (and those `Connection` names) are read for the framing but left
/// out of the head's map, except in a 101, whose `Upgrade` the tunnel passes on.
///
/// A 1xx other than 101 is returned like any head (its framing is `Done`): the caller
/// skips it and parses again.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    request_was_head: bool,
) -> Result<Option<ResponseHead>, Malformed> {
    // Left uninitialised for the parser to fill: initialising a hundred headers would cost
    // more than parsing the few a response has.
    let mut parsed_headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut parsed_headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(Malformed("the response head is larger than 64 KiB"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Malformed("the response has more than 100 headers"));
        }
        Err(httparse::Error::Status) => return Err(Malformed("the status line is invalid")),
        Err(httparse::Error::Version) => {
            return Err(Malformed("the response does not start with HTTP/1.x"));
        }
        Err(_) => return Err(Malformed("a header is invalid")),
    };
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| Malformed("the status code is invalid"))?;
    let version = if response.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    let parsed_headers = &*response.headers;

    // First the headers that decide the framing and what is passed on; they are read here
    // and (but for a 101's, which the tunnel needs) not passed on: they describe the
    // connection to the app, which ends at the router. An app's `X-Request-Id` is replaced
    // by the router's.
    let mut content_length: Option<u64> = None;
    let mut chunked = None;
    let (mut close, mut keep_alive_token) = (false, false);
    let upgrading = status == StatusCode::SWITCHING_PROTOCOLS;
    // Names that `Connection` lists, which are hop-by-hop too; seldom any.
    let mut listed: Vec<&[u8]> = Vec::new();
    let mut has_date = false;
    let mut classes = [Class::Other; MAX_HEADERS];
    for (class, header) in classes.iter_mut().zip(parsed_headers) {
        let value = header.value;
        *class = classify(header.name.as_bytes());
        match class {
            Class::ContentLength => {
                content_length = match parse_content_length(value, content_length) {
                    Ok(length) => Some(length),
                    Err(BadLength::Invalid) => {
                        return Err(Malformed("the Content-Length value is invalid"));
                    }
                    Err(BadLength::Conflicting) => {
                        return Err(Malformed(
                            "the response has conflicting Content-Length values",
                        ));
                    }
                };
            }
            Class::TransferEncoding => {
                // Only the last coding decides: chunked must be the final one.
                if let Some(last) = value.rsplit(|&b| b == b',').next() {
                    chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                }
            }
            Class::Connection => {
                for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else if !token.is_empty() && !is_hop_by_hop(token) {
                        listed.push(token);
                    }
                }
            }
            Class::Date => has_date = true,
            Class::RequestId | Class::HopByHop | Class::Other => {}
        }
    }
    // A length that chunking overrides is not passed on, nor one a 1xx or 204 must not have.
    let drop_length =
        chunked.is_some() || status.is_informational() || status == StatusCode::NO_CONTENT;

    // Then the headers that pass on, copied out of the read buffer.
    let mut headers = HeaderMap::new();
    let mut lines = BytesMut::new();
    for (&class, header) in classes.iter().zip(parsed_headers) {
        let raw_name = header.name.as_bytes();
        let passed_on = match class {
            Class::RequestId => false,
            Class::TransferEncoding | Class::Connection | Class::HopByHop => upgrading,
            Class::ContentLength => !drop_length,
            Class::Date => true,
            Class::Other => {
                upgrading
                    || listed.is_empty()
                    || !listed.iter().any(|n| n.eq_ignore_ascii_case(raw_name))
            }
        };
        if !passed_on {
            continue;
        }
        if upgrading {
            // A 101 is rare, and the tunnel reads its headers: a map.
            let name = HeaderName::from_bytes(raw_name)
                .map_err(|_| Malformed("a header name is invalid"))?;
            let value = HeaderValue::from_bytes(header.value)
                .map_err(|_| Malformed("a header value is invalid"))?;
            headers.append(name, value);
        } else {
            // httparse has checked the name's and the value's bytes, which are what a header
            // map would accept (and no CR or LF); the line is rewritten in canonical form.
            if lines.is_empty() {
                lines.reserve(len);
            }
            lines.extend_from_slice(raw_name);
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(header.value);
            lines.extend_from_slice(b"\r\n");
        }
    }
    buf.advance(len);
    let raw = RawHeaders {
        lines: lines.freeze(),
        content_length: content_length.filter(|_| !drop_length),
        has_date,
        request_id: None,
    };

    let mut keep_alive =
        if version == Version::HTTP_11 { !close } else { keep_alive_token && !close };
    let framing = if upgrading {
        keep_alive = false;
        Framing::Upgraded
    } else if status.is_informational()
        || request_was_head
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if let Some(chunked) = chunked {
        // RFC 9112 section 6.3: Transfer-Encoding wins over Content-Length, and such a
        // message may be an attempt at smuggling, so the connection is not used again.
        if content_length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Framing::UntilClose
        }
    } else if let Some(length) = content_length {
        Framing::Length(length).normalized()
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(ResponseHead { status, version, headers, raw, framing, keep_alive }))
}

/// Whether a header of this name describes one connection rather than the message (RFC
/// 9110 section 7.6.1), with the non-standard `Keep-Alive` and `Proxy-Connection`.
fn is_hop_by_hop(name: &[u8]) -> bool {
    hop_by_hop_position(name).is_some()
}

/// What a response header is to the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    ContentLength,
    TransferEncoding,
    Connection,
    Date,
    /// `X-Request-Id`, which the router sets.
    RequestId,
    /// Another hop-by-hop header ([`is_hop_by_hop`]).
    HopByHop,
    Other,
}

/// Sorts a header name with one length check and a comparison or two.
fn classify(name: &[u8]) -> Class {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    match name.len() {
        4 if is(b"date") => Class::Date,
        10 if is(b"connection") => Class::Connection,
        12 if is(b"x-request-id") => Class::RequestId,
        14 if is(b"content-length") => Class::ContentLength,
        17 if is(b"transfer-encoding") => Class::TransferEncoding,
        // The other hop-by-hop names are 2, 7, 10, 16, 18 and 19 bytes long.
        2 | 7 | 10 | 16 | 18 | 19 if is_hop_by_hop(name) => Class::HopByHop,
        _ => Class::Other,
    }
}

/// The headers of an app's response that pass to the visitor as they are, already as
/// `name: value` lines with CRLFs, so that the usual response is relayed without building
/// a header map and writing it out again. The router's own headers for the response go in
/// the response's map, and are written before these, but for its `X-Request-Id`, which
/// comes with them: the usual response then needs no map at all.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawHeaders {
    pub(crate) lines: Bytes,
    /// The `Content-Length` among the lines, if there is one.
    pub(crate) content_length: Option<u64>,
    /// Whether the lines have a `Date`.
    pub(crate) has_date: bool,
    /// The router's `X-Request-Id` for the response (the app's own was left out).
    pub(crate) request_id: Option<HeaderValue>,
}

impl RawHeaders {
    /// Appends the lines to `headers`, for the rarer responses that need a map (HTTPS,
    /// the cache), leaving this empty.
    pub(crate) fn move_into(&mut self, headers: &mut HeaderMap) {
        let lines = std::mem::take(&mut self.lines);
        self.content_length = None;
        self.has_date = false;
        if let Some(id) = self.request_id.take() {
            headers.insert(X_REQUEST_ID, id);
        }
        let mut rest = &lines[..];
        while let Some(end) = rest.windows(2).position(|pair| pair == b"\r\n") {
            let line = &rest[..end];
            rest = &rest[end + 2..];
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let value = &line[colon + 2..];
            // Both were valid when they were parsed.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_maybe_shared(lines.slice_ref(value)),
            ) {
                headers.append(name, value);
            }
        }
    }
}

/// Why a `Content-Length` could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadLength {
    /// A value is not a number.
    Invalid,
    /// The values name different lengths.
    Conflicting,
}

/// A Content-Length value: digits, or a list of identical ones (RFC 9110 section 8.6),
/// which must agree with `seen`, the length of an earlier `Content-Length` of the message.
pub(crate) fn parse_content_length(value: &[u8], seen: Option<u64>) -> Result<u64, BadLength> {
    let mut length = seen;
    for item in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(BadLength::Invalid);
        }
        let item = item.iter().fold(0u64, |n, &digit| n * 10 + u64::from(digit - b'0'));
        if length.is_some_and(|seen| seen != item) {
            return Err(BadLength::Conflicting);
        }
        length = Some(item);
    }
    length.ok_or(BadLength::Invalid)
}

/// How much of a response body is left, and how it is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Nothing (more) to read: the connection is at the next response's start.
    Done,
    /// This many bytes are left.
    Length(u64),
    /// A chunked body, at this point of its framing.
    Chunked(Chunk),
    /// Everything until the app closes the connection.
    UntilClose,
    /// The connection became a tunnel (101 Switching Protocols).
    Upgraded,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk, in the trailers, having read this many bytes of them.
    Trailers(usize),
}

/// What one step of decoding gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    /// The body is over.
    End,
    /// More bytes are needed from the connection.
    NeedMore,
}

impl Framing {
    fn normalized(self) -> Framing {
        if self == Framing::Length(0) { Framing::Done } else { self }
    }

    /// Whether the body is over.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Upgraded)
    }

    /// Takes the next piece of body from `buf`; trailers and chunk framing are consumed
    /// and dropped.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match *self {
                Framing::Done | Framing::Upgraded => return Ok(Decoded::End),
                Framing::UntilClose if buf.is_empty() => return Ok(Decoded::NeedMore),
                Framing::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                Framing::Length(_) | Framing::Chunked(Chunk::Data(_)) if buf.is_empty() => {
                    return Ok(Decoded::NeedMore);
                }
                Framing::Length(left) => {
                    let (data, left) = take(buf, left);
                    *self = Framing::Length(left).normalized();
                    return Ok(Decoded::Data(data));
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    let (data, left) = take(buf, left);
                    *self = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Decoded::Data(data));
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&line)?;
                    *self = Framing::Chunked(if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    });
                }
                Framing::Chunked(Chunk::DataEnd) => match &buf[..] {
                    [] | [b'\r'] => return Ok(Decoded::NeedMore),
                    [b'\r', b'\n', ..] => {
                        buf.advance(2);
                        *self = Framing::Chunked(Chunk::Size);
                    }
                    [b'\n', ..] => {
                        buf.advance(1);
                        *self = Framing::Chunked(Chunk::Size);
                    }
                    _ => return Err(Malformed("a chunk's data is longer than its size")),
                },
                Framing::Chunked(Chunk::Trailers(seen)) => {
                    let Some(line) = take_line(buf, MAX_TRAILER_BYTES.saturating_sub(seen))? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        *self = Framing::Done;
                        return Ok(Decoded::End);
                    }
                    *self = Framing::Chunked(Chunk::Trailers(seen + line.len() + 2));
                }
            }
        }
    }

    /// What is known of the body's length, for the visitor's side.
    pub(crate) fn exact_length(&self) -> Option<u64> {
        match self {
            Framing::Done | Framing::Upgraded => Some(0),
            Framing::Length(left) => Some(*left),
            Framing::Chunked(_) | Framing::UntilClose => None,
        }
    }
}

/// Up to `left` bytes from the front of `buf`, and how many are left after them.
fn take(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    (buf.split_to(n).freeze(), left - n as u64)
}

/// The next line of `buf` without its CRLF (or bare LF), removed from `buf`; `None` while
/// it is incomplete, an error once it is longer than `max`.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Malformed> {
    let too_long = Malformed("a chunk-size line or trailer is too long");
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) if end > max => Err(too_long),
        Some(end) => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > max => Err(too_long),
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits, then optional `;extensions`, which are ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Malformed("a chunk size is not a hexadecimal number"));
    }
    if digits > 15 {
        return Err(Malformed("a chunk size is too large"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(Malformed("a chunk size is not a hexadecimal number"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &digit| {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => digit - b'A' + 10,
        };
        n << 4 | u64::from(value)
    });
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<ResponseHead>, Malformed> {
        parse_response_head(&mut BytesMut::from(raw), false)
    }

    fn parsed(raw: &str) -> ResponseHead {
        head(raw).unwrap().expect("a complete head")
    }

    /// The head's map and its raw lines together, as a map.
    fn all_headers(head: &mut ResponseHead) -> HeaderMap {
        let mut headers = head.headers.clone();
        head.raw.move_into(&mut headers);
        headers
    }

    #[test]
    fn request_framing_table() {
        let get = Method::GET;
        let post = Method::POST;
        let cases = [
            (&get, false, true, Some(0), RequestFraming::None),
            (&get, true, true, Some(0), RequestFraming::Length(0)),
            (&post, false, true, Some(0), RequestFraming::Length(0)),
            (&post, true, false, Some(12), RequestFraming::Length(12)),
            (&post, false, false, None, RequestFraming::Chunked),
            (&get, false, false, None, RequestFraming::Chunked),
        ];
        for (method, had_length, end, exact, want) in cases {
            assert_eq!(
                RequestFraming::choose(method, had_length, end, exact),
                want,
                "{method} {exact:?}"
            );
        }
        assert_eq!(
            RequestFraming::choose(&Method::from_bytes(b"PATCH").unwrap(), false, true, Some(0)),
            RequestFraming::Length(0)
        );
    }

    #[test]
    fn request_head_has_every_header_but_the_framing_and_replaced_ones() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("myapp.example.com"));
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("transfer-encoding", HeaderValue::from_static("gzip, chunked"));
        let mut out = Vec::new();
        let head = RequestHead::plain(&Method::PUT, "/a?b=c", &headers);
        encode_request_head(&head, RequestFraming::Length(5), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PUT /a?b=c HTTP/1.1\r\nhost: myapp.example.com\r\nx-tag: a\r\nx-tag: b\r\n\
             content-length: 5\r\n\r\n"
        );
        let replaced = RequestHead {
            added: &|out| out.extend_from_slice(b"host: other.example.com\r\n"),
            replaced: |name| name == "host",
            ..RequestHead::plain(&Method::GET, "/", &headers)
        };
        let mut out = Vec::new();
        encode_request_head(&replaced, RequestFraming::None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nx-tag: a\r\nx-tag: b\r\nhost: other.example.com\r\n\r\n"
        );
        let empty = HeaderMap::new();
        let mut out = Vec::new();
        encode_request_head(
            &RequestHead::plain(&Method::GET, "/", &empty),
            RequestFraming::Chunked,
            &mut out,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
    }

    #[test]
    fn numbers_are_written_in_decimal_and_chunk_sizes_in_hex() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for n in [1usize, 15, 16, 255, 4096, 0xabcdef] {
            let mut out = Vec::new();
            push_chunk_size(&mut out, n);
            assert_eq!(out, format!("{n:x}\r\n").as_bytes());
        }
    }

    #[test]
    fn a_head_is_parsed_and_removed_from_the_buffer() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\n\
             Set-Cookie: b=2\r\nContent-Length: 5\r\n\r\nhello",
        );
        let mut head = parse_response_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.version, Version::HTTP_11);
        assert!(head.headers.is_empty(), "{:?}", head.headers);
        assert_eq!(
            &head.raw.lines[..],
            b"Content-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
              Content-Length: 5\r\n"
        );
        assert_eq!((head.raw.content_length, head.raw.has_date), (Some(5), false));
        let headers = all_headers(&mut head);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(headers["content-length"], "5");
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_leaves_the_buffer_alone() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Len");
        assert!(parse_response_head(&mut buf, false).unwrap().is_none());
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\nContent-Len");
    }

    #[test]
    fn framing_and_keep_alive_table() {
        let cases: &[(&str, bool, Framing, bool)] = &[
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, Framing::Done, true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", false, Framing::Length(3), true),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Framing::Chunked(Chunk::Size),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                false,
                Framing::Chunked(Chunk::Size),
                true,
            ),
            // Chunked not last: the body runs to the close.
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false,
                Framing::UntilClose,
                false,
            ),
            // Both: Transfer-Encoding wins, and the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Framing::Chunked(Chunk::Size),
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::UntilClose, false),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                false,
                Framing::Length(5),
                false,
            ),
            ("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", false, Framing::Length(5), false),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, Framing::Done, true),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", false, Framing::Done, true),
            // The answer to a HEAD has no body, whatever its length says.
            ("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", true, Framing::Done, true),
            ("HTTP/1.1 100 Continue\r\n\r\n", false, Framing::Done, true),
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                false,
                Framing::Upgraded,
                false,
            ),
        ];
        for &(raw, was_head, framing, keep_alive) in cases {
            let head = parse_response_head(&mut BytesMut::from(raw), was_head).unwrap().unwrap();
            assert_eq!((head.framing, head.keep_alive), (framing, keep_alive), "{raw:?}");
        }
        let mut both =
            parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(both.raw.content_length, None);
        assert!(
            all_headers(&mut both).get(CONTENT_LENGTH).is_none(),
            "a length that chunking overrides is not passed on"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_read_but_not_passed_on_except_in_a_101() {
        let head = parsed(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
             X-Secret: 1\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: x-sum\r\n\
             Upgrade: h2c\r\nProxy-Authenticate: Basic\r\nProxy-Connection: close\r\n\
             Content-Type: text/plain\r\n\r\n",
        );
        let mut head = head;
        let headers = all_headers(&mut head);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);
        assert_eq!(
            head.framing,
            Framing::Chunked(Chunk::Size),
            "read for the framing all the same"
        );
        let upgrade = parsed(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        assert_eq!(upgrade.headers["upgrade"], "websocket");
        assert_eq!(upgrade.headers["connection"], "Upgrade");
        for name in [
            "te",
            "Trailer",
            "UPGRADE",
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-authorization",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in ["tee", "trailers", "content-length", "x-connection", "keep-alive2", "host"] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn classify_knows_its_names_in_any_case() {
        let cases = [
            ("Date", Class::Date),
            ("X-Request-ID", Class::RequestId),
            ("Content-Length", Class::ContentLength),
            ("transfer-encoding", Class::TransferEncoding),
            ("CONNECTION", Class::Connection),
            ("keep-alive", Class::HopByHop),
            ("te", Class::HopByHop),
            ("Trailer", Class::HopByHop),
            ("upgrade", Class::HopByHop),
            ("proxy-connection", Class::HopByHop),
            ("Proxy-Authenticate", Class::HopByHop),
            ("proxy-authorization", Class::HopByHop),
            ("x-dates", Class::Other),
            ("dat", Class::Other),
            ("content-type", Class::Other),
        ];
        for (name, class) in cases {
            assert_eq!(classify(name.as_bytes()), class, "{name}");
        }
        // Every hop-by-hop name is found by its length.
        for name in &crate::headers::HOP_BY_HOP {
            assert_ne!(classify(name.as_str().as_bytes()), Class::Other, "{name}");
        }
    }

    #[test]
    fn malformed_heads_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("SSH-2.0-OpenSSH\r\n\r\n", "does not start with HTTP/1.x"),
            ("HTTP/1.1 2000 OK\r\n\r\n", "status line"),
            ("HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "header"),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                "conflicting Content-Length",
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", "conflicting Content-Length"),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length value is invalid"),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                "Content-Length value is invalid",
            ),
        ];
        for &(raw, want) in cases {
            let error = head(raw).unwrap_err();
            assert!(error.to_string().contains(want), "{raw:?}: {error}");
        }
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X-A: 1\r\n".repeat(MAX_HEADERS + 1));
        assert!(head(&many).unwrap_err().to_string().contains("more than 100 headers"));
        let endless = format!("HTTP/1.1 200 OK\r\nX-A: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(head(&endless).unwrap_err().to_string().contains("larger than 64 KiB"));
    }

    /// Decodes `wire` fed to the decoder in pieces of `step` bytes, as reads would bring it.
    fn decode_in_steps(
        mut framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, BytesMut), Malformed> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = wire.chunks(step);
        loop {
            match framing.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok((body, buf)),
                Decoded::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Err(Malformed("test: the wire ended before the body")),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n7;name=value\r\n, world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for step in 1..=wire.len() {
            let (body, rest) = decode_in_steps(Framing::Chunked(Chunk::Size), wire, step).unwrap();
            assert_eq!(body, b"hello, world0123456789", "step {step}");
            // What follows the body stays for the next response (here the whole rest of
            // the last piece, whose size depends on the step).
            assert!(
                b"NEXT".starts_with(&rest[..rest.len().min(4)]) || rest.is_empty(),
                "step {step}"
            );
        }
        // Bare LF line ends, which some servers send, are accepted too.
        let (body, _) =
            decode_in_steps(Framing::Chunked(Chunk::Size), b"3\nabc\n0\n\n", 1).unwrap();
        assert_eq!(body, b"abc");
    }

    #[test]
    fn length_and_close_delimited_bodies_decode_and_stop_at_their_end() {
        let (body, rest) = decode_in_steps(Framing::Length(5), b"helloHTTP", 2).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(&rest[..], b"H", "the step-2 piece past the body is left in the buffer");
        let mut framing = Framing::UntilClose;
        let mut buf = BytesMut::from("all of it");
        assert_eq!(
            framing.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"all of it"))
        );
        assert_eq!(framing.decode(&mut buf).unwrap(), Decoded::NeedMore);
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        let cases: &[(&[u8], &str)] = &[
            (b"zz\r\n", "not a hexadecimal number"),
            (b"5 x\r\nhello\r\n", "not a hexadecimal number"),
            (b"1000000000000000\r\n", "too large"),
            (b"3\r\nabcdef\r\n0\r\n\r\n", "longer than its size"),
        ];
        for &(wire, want) in cases {
            let error =
                decode_in_steps(Framing::Chunked(Chunk::Size), wire, wire.len()).unwrap_err();
            assert!(
                error.to_string().contains(want),
                "{:?}: {error}",
                String::from_utf8_lossy(wire)
            );
        }
        let long_line = format!("5;{}\r\n", "x".repeat(MAX_CHUNK_LINE));
        let error =
            decode_in_steps(Framing::Chunked(Chunk::Size), long_line.as_bytes(), 64).unwrap_err();
        assert!(error.to_string().contains("too long"));
        let endless_trailers = format!("0\r\n{}", "X-T: 1\r\n".repeat(MAX_TRAILER_BYTES / 8 + 1));
        let error =
            decode_in_steps(Framing::Chunked(Chunk::Size), endless_trailers.as_bytes(), 512)
                .unwrap_err();
        assert!(error.to_string().contains("too long"));
    }
}
