//! Header rewriting at the proxy hop: what must not cross it, and what the app is told.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::h1::push_decimal;
use bytes::Bytes;

use http::header::{
    CONNECTION, Entry, FORWARDED, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, ValueIter,
};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_APP: HeaderName = HeaderName::from_static("x-app");

/// An incoming request id longer than this is replaced: it would only bloat every log line.
const MAX_REQUEST_ID_LEN: usize = 200;

/// Headers that describe one connection rather than the message (RFC 9110 section 7.6.1),
/// plus the non-standard `Keep-Alive` and `Proxy-Connection` that old clients still send.
/// hyper frames each side itself, so passing any of these on would describe the wrong hop.
///
/// `Upgrade` is here too: a WebSocket handshake puts `Connection: upgrade` and `Upgrade` back
/// with [`keep_upgrade`], since for it they describe the tunnel both hops will become.
///
/// A `static` rather than a `const`: each use of a `const` array makes and drops a copy.
pub(crate) static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
];

/// Removes the hop-by-hop headers, including any that `Connection` names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One look at each name finds the few to remove (most messages have none, or only a
    // `Connection: keep-alive`), rather than a hash and a probe for each of the nine. A bit
    // per entry of `HOP_BY_HOP` remembers them without an allocation.
    let mut found: u16 = 0;
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_position(name.as_str().as_bytes()) {
            found |= 1 << index;
        }
    }
    if found == 0 {
        return;
    }
    // `Connection` is `HOP_BY_HOP[0]`: taken out with its values in one probe of the map.
    let mut listed = Vec::new();
    if found & 1 != 0
        && let Entry::Occupied(connection) = headers.entry(CONNECTION)
    {
        for value in connection.remove_entry_mult().1 {
            push_listed_names(&mut listed, &value);
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if found & (1 << index) != 0 {
            headers.remove(name);
        }
    }
    for name in listed {
        headers.remove(name);
    }
}

/// The position in [`HOP_BY_HOP`] of the header named `name`, in any case (the app's
/// response is read as bytes, before its names are lower-cased). A length check first
/// turns most names away at once, where comparing with each of the nine costs several
/// times as much; this runs for every header of every request and response.
pub(crate) fn hop_by_hop_position(name: &[u8]) -> Option<usize> {
    let is = |hop_by_hop: &[u8]| name.eq_ignore_ascii_case(hop_by_hop);
    match name.len() {
        10 if is(b"connection") => Some(0),
        10 if is(b"keep-alive") => Some(1),
        16 if is(b"proxy-connection") => Some(2),
        2 if is(b"te") => Some(3),
        7 if is(b"trailer") => Some(4),
        17 if is(b"transfer-encoding") => Some(5),
        7 if is(b"upgrade") => Some(6),
        19 if is(b"proxy-authorization") => Some(7),
        18 if is(b"proxy-authenticate") => Some(8),
        _ => None,
    }
}

/// Adds to `listed` the headers that a `Connection` value names besides the ones everyone
/// knows: usually none (`keep-alive`, `close`), which takes no allocation.
fn push_listed_names(listed: &mut Vec<HeaderName>, connection: &HeaderValue) {
    for token in connection.as_bytes().split(|&b| b == b',') {
        let token = token.trim_ascii();
        // `keep-alive` is in the list already; `close` names no header.
        if token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token) {
            listed.push(name);
        }
    }
}

/// What the app is told about the visitor's side of the hop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    pub(crate) client: IpAddr,
    /// `"http"` or `"https"`.
    pub(crate) proto: &'static str,
    /// The host the visitor asked for, as sent.
    pub(crate) host: &'a HeaderValue,
    /// The port the visitor connected to.
    pub(crate) port: u16,
    /// The request's id ([`request_id`]).
    pub(crate) request_id: &'a HeaderValue,
}

/// Writes the header lines that tell the app who asked and how, in HTTP/1.1 form (each
/// ending in CRLF), for the request head that goes to the app: `Host`, `X-Request-Id`, the
/// client's address appended to the visitor's `X-Forwarded-For` chain and a
/// `for=...;proto=...;host=...` element to its `Forwarded` list (RFC 7239), and
/// `X-Forwarded-Proto`, `-Host`, `-Port` and (for a path-routed app) `-Prefix` set
/// outright, so that a client cannot claim, say, `https` on a plain connection. Those of `visitor`'s headers that these replace
/// ([`is_set_by_router`]) must be left out of the head.
///
/// Written as bytes, not put into the request's header map: the map would hash each name,
/// grow, and take each value in an allocation of its own, all on every request.
pub(crate) fn write_forwarding(
    out: &mut Vec<u8>,
    visitor: &HeaderMap,
    forwarding: Forwarding<'_>,
    prefix: Option<&str>,
) {
    line(out, b"host", forwarding.host.as_bytes());
    line(out, b"x-request-id", forwarding.request_id.as_bytes());

    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; apps expect a.b.c.d.
    let client = forwarding.client.to_canonical();
    let ip = IpText::new(client);
    out.extend_from_slice(b"x-forwarded-for: ");
    push_list_so_far(out, visitor, &X_FORWARDED_FOR);
    out.extend_from_slice(ip.as_bytes());
    out.extend_from_slice(b"\r\n");

    // RFC 7239 section 6: an IPv6 node is bracketed, and so quoted.
    let (before_ip, after_ip): (&[u8], &[u8]) = match client {
        IpAddr::V4(_) => (b"for=", b";proto="),
        IpAddr::V6(_) => (b"for=\"[", b"]\";proto="),
    };
    out.extend_from_slice(b"forwarded: ");
    push_list_so_far(out, visitor, &FORWARDED);
    out.extend_from_slice(before_ip);
    out.extend_from_slice(ip.as_bytes());
    out.extend_from_slice(after_ip);
    out.extend_from_slice(forwarding.proto.as_bytes());
    // A host that is not text is left out of `Forwarded`, not mangled.
    if let Ok(host) = forwarding.host.to_str() {
        out.extend_from_slice(b";host=");
        push_token_or_quoted(out, host);
    }
    out.extend_from_slice(b"\r\n");

    line(out, b"x-forwarded-proto", forwarding.proto.as_bytes());
    line(out, b"x-forwarded-host", forwarding.host.as_bytes());
    out.extend_from_slice(b"x-forwarded-port: ");
    push_decimal(out, u64::from(forwarding.port));
    out.extend_from_slice(b"\r\n");
    // Apps build links from the prefix, so a visitor must never choose it: theirs is left
    // out whether or not the router sets one. An app name is always a valid value.
    if let Some(prefix) = prefix.filter(|prefix| HeaderValue::from_str(prefix).is_ok()) {
        line(out, b"x-forwarded-prefix", prefix.as_bytes());
    }
}

/// Whether [`write_forwarding`] writes the header `name` itself, so the visitor's must not
/// reach the app. One length check for most names.
pub(crate) fn is_set_by_router(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.len() {
        4 => name == "host",
        9 => name == "forwarded",
        12 => name == "x-request-id",
        15 => name == "x-forwarded-for",
        16 => name == "x-forwarded-host" || name == "x-forwarded-port",
        17 => name == "x-forwarded-proto",
        18 => name == "x-forwarded-prefix",
        _ => false,
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the visitor's `name` values as the start of a comma-separated list, each followed
/// by `, ` so that the router's item comes next; blank values are skipped.
fn push_list_so_far(out: &mut Vec<u8>, visitor: &HeaderMap, name: &HeaderName) {
    // A walk over the few headers a request has, rather than hashing the name: a visitor
    // seldom sends either list.
    let values = visitor.iter().filter(|(each, _)| *each == name).map(|(_, value)| value);
    for value in values {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
}

/// An IP address as text, on the stack.
struct IpText {
    bytes: [u8; IpText::MAX_LEN],
    len: usize,
}

impl IpText {
    /// The longest is an IPv6 address with an IPv4 tail, `ffff:...:ffff:255.255.255.255`.
    const MAX_LEN: usize = 45;

    fn new(ip: IpAddr) -> IpText {
        let mut bytes = [0u8; IpText::MAX_LEN];
        let mut rest = &mut bytes[..];
        write_ip(&mut rest, ip);
        let len = IpText::MAX_LEN - rest.len();
        IpText { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Writes `ip` as text: IPv4 digit by digit (`Display` goes through the formatting
/// machinery, which is slow for something done on every request), IPv6 by `Display`.
fn write_ip(out: &mut impl Write, ip: IpAddr) {
    // Writing to a Vec, or to a buffer as long as any address, cannot fail.
    let _ = match ip {
        IpAddr::V4(ip) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (n, octet) in ip.octets().into_iter().enumerate() {
                if n > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            out.write_all(&text[..len])
        }
        IpAddr::V6(ip) => write!(out, "{ip}"),
    };
}

/// Whether `value` is an RFC 7230 token, which may go into a list unquoted.
fn is_token(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(is_tchar)
}

/// Whether `b` may be part of an RFC 7230 token: a look-up, because it is asked of every
/// byte of every request's host.
fn is_tchar(b: u8) -> bool {
    static TCHAR: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < table.len() {
            table[b] = (b as u8).is_ascii_alphanumeric();
            b += 1;
        }
        let punctuation = b"!#$%&'*+-.^_`|~";
        let mut n = 0;
        while n < punctuation.len() {
            table[punctuation[n] as usize] = true;
            n += 1;
        }
        table
    };
    TCHAR[usize::from(b)]
}

/// Whether `b` needs a backslash before it in a quoted string.
fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\'
}

/// Appends `value` as an RFC 7230 token when it is one, else as a quoted string (a host with
/// a port has a `:`, which a token may not contain).
fn push_token_or_quoted(out: &mut Vec<u8>, value: &str) {
    if is_token(value) {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    out.push(b'"');
    // Copied a run at a time: there is seldom anything to escape.
    let mut rest = value.as_bytes();
    while let Some(at) = rest.iter().position(|&b| needs_escape(b)) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(&[b'\\', rest[at]]);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// The `Upgrade` value of a WebSocket handshake (`Connection: upgrade` and an `Upgrade`
/// that lists `websocket`), or `None` for any other request.
pub(crate) fn websocket_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    // Most requests have no `Upgrade` at all, which makes `Connection` not worth a look.
    let upgrade = headers.get_all(UPGRADE);
    // `Upgrade: websocket/13` would name a version; only the protocol name matters here.
    let lists_websocket = list_tokens(upgrade.iter()).any(|token| {
        let name = token.split('/').next().unwrap_or_default();
        name.eq_ignore_ascii_case("websocket")
    });
    if !lists_websocket {
        return None;
    }
    let connection_upgrades = list_tokens(headers.get_all(CONNECTION).iter())
        .any(|token| token.eq_ignore_ascii_case("upgrade"));
    connection_upgrades.then(|| upgrade.iter().next().cloned()).flatten()
}

/// The trimmed items of the comma-separated lists that `values` hold (those that are text).
fn list_tokens<'a>(values: ValueIter<'a, HeaderValue>) -> impl Iterator<Item = &'a str> {
    let values = values.filter_map(|value| value.to_str().ok());
    values.flat_map(|value| value.split(',')).map(str::trim)
}

/// Puts back the two headers that [`remove_hop_by_hop`] took from a message that switches
/// protocols, so that the next hop switches too.
pub(crate) fn keep_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, upgrade);
}

/// The request's id, which the app is then sent as its one `X-Request-Id` (by
/// [`write_forwarding`]): the incoming `X-Request-Id` when there is exactly one and it
/// looks like an id (1 to 200 visible ASCII characters), so a request can be followed
/// through several proxies, else a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    let incoming = kept_request_id(headers.get_all(&X_REQUEST_ID).iter());
    incoming.cloned().unwrap_or_else(generated_request_id)
}

/// The incoming id among the `X-Request-Id` `values`, if there is one worth keeping.
fn kept_request_id<'a>(
    mut values: impl Iterator<Item = &'a HeaderValue>,
) -> Option<&'a HeaderValue> {
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let bytes = value.as_bytes();
    let is_sane = !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(|b| b.is_ascii_graphic());
    is_sane.then_some(value)
}

/// A new id as a header value whose clones (for the request, the response and the access
/// log) share one allocation; a value copied from a slice would make a second one when it
/// is first cloned.
fn generated_request_id() -> HeaderValue {
    let id = HeaderValue::from_maybe_shared(Bytes::from_owner(new_request_id()));
    id.expect("hex digits are a valid header value")
}

/// 16 hex digits that are unique within this process and unlikely to repeat across
/// processes: a counter, mixed with the start time and the process id.
///
/// Ids only have to tell requests apart in logs, not resist guessing, so this needs no
/// random-number crate.
fn new_request_id() -> [u8; 16] {
    /// The counts handed out to threads so far; each thread takes a block of them at a time,
    /// so that the runtimes on different CPUs do not pass one counter back and forth.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const BLOCK: u64 = 1024;
    thread_local! {
        /// This thread's next count and the end of its block.
        static NEXT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (nanos as u64) ^ (u64::from(std::process::id()) << 32)
    });
    let count = NEXT.with(|next| {
        let (mut count, mut end) = next.get();
        if count == end {
            count = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
            end = count + BLOCK;
        }
        next.set((count + 1, end));
        count
    });
    // splitmix64's finaliser: a bijection, so distinct counts under one seed never collide.
    let mut x = seed.wrapping_add(count.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let mut hex = [0u8; 16];
    for (n, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(x >> (60 - 4 * n) & 0xf) as usize];
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as headers;

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(|name| name.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut map = headers(&[
            ("connection", "close, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-authenticate", "Basic"),
            ("accept", "*/*"),
            ("content-length", "3"),
        ]);
        remove_hop_by_hop(&mut map);
        assert_eq!(names(&map), ["accept", "content-length"]);
    }

    /// The headers the app gets: `visitor`'s but those the router sets, and the lines
    /// [`write_forwarding`] writes, read back as an app would.
    fn set_forwarded(visitor: &mut HeaderMap, forwarding: Forwarding<'_>) {
        set_forwarded_with_prefix(visitor, forwarding, None);
    }

    fn set_forwarded_with_prefix(
        visitor: &mut HeaderMap,
        forwarding: Forwarding<'_>,
        prefix: Option<&str>,
    ) {
        let mut lines = Vec::new();
        write_forwarding(&mut lines, visitor, forwarding, prefix);
        assert!(lines.ends_with(b"\r\n"), "{}", String::from_utf8_lossy(&lines));
        let mut map = HeaderMap::new();
        for (name, value) in visitor.iter().filter(|(name, _)| !is_set_by_router(name)) {
            map.append(name, value.clone());
        }
        for line in lines.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let line = line.strip_suffix(b"\r").expect("lines end in CRLF");
            let at = line.iter().position(|&b| b == b':').expect("a name and a value");
            let name = HeaderName::from_bytes(&line[..at]).unwrap();
            let value = line[at + 1..].strip_prefix(b" ").expect("a space after the colon");
            map.append(name, HeaderValue::from_bytes(value).unwrap());
        }
        *visitor = map;
    }

    #[test]
    fn the_router_sets_host_and_the_prefix_and_leaves_out_the_visitors() {
        let mut map = headers(&[
            ("host", "spoofed.example.com"),
            ("x-forwarded-prefix", "/evil"),
            ("accept", "*/*"),
        ]);
        let host = HeaderValue::from_static("myapp.example.com");
        set_forwarded_with_prefix(&mut map, forwarding("10.0.0.9", &host), Some("/myapp"));
        assert_eq!(map.get_all("host").iter().collect::<Vec<_>>(), [&host]);
        assert_eq!(map["x-forwarded-prefix"], "/myapp");
        assert_eq!(map["accept"], "*/*");
        let mut map = headers(&[("x-forwarded-prefix", "/evil")]);
        set_forwarded(&mut map, forwarding("10.0.0.9", &host));
        assert!(map.get("x-forwarded-prefix").is_none(), "a visitor's prefix never passes");
    }

    #[test]
    fn is_set_by_router_table() {
        for name in [
            "host",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-proto",
            "x-forwarded-prefix",
            "X-Forwarded-Proto",
        ] {
            assert!(is_set_by_router(&HeaderName::from_bytes(name.as_bytes()).unwrap()), "{name}");
        }
        for name in [
            "hosts",
            "x-forwarded",
            "x-forwarded-fort",
            "x-request-ids",
            "accept",
            "x-forwarded-by",
        ] {
            assert!(!is_set_by_router(&HeaderName::from_bytes(name.as_bytes()).unwrap()), "{name}");
        }
    }

    fn forwarding<'a>(client: &str, host: &'a HeaderValue) -> Forwarding<'a> {
        static ID: HeaderValue = HeaderValue::from_static("test-id");
        Forwarding {
            client: client.parse().unwrap(),
            proto: "http",
            host,
            port: 8080,
            request_id: &ID,
        }
    }

    #[test]
    fn forwarded_for_is_appended_and_proto_host_and_port_are_overwritten() {
        let mut map = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example.com"),
            ("x-forwarded-port", "443"),
            ("forwarded", "for=10.0.0.1"),
            ("forwarded", "for=10.0.0.2;proto=https"),
        ]);
        let host = HeaderValue::from_static("MyApp.example.com:8080");
        set_forwarded(&mut map, forwarding("::ffff:192.0.2.7", &host));
        assert_eq!(map["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7");
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "MyApp.example.com:8080");
        assert_eq!(map["x-forwarded-port"], "8080");
        assert_eq!(
            map["forwarded"],
            "for=10.0.0.1, for=10.0.0.2;proto=https, \
             for=192.0.2.7;proto=http;host=\"MyApp.example.com:8080\""
        );
        assert_eq!(map.get_all("forwarded").iter().count(), 1);
    }

    #[test]
    fn forwarded_for_starts_a_chain() {
        let mut map = HeaderMap::new();
        let host = HeaderValue::from_static("a.example.com");
        set_forwarded(&mut map, forwarding("2001:db8::1", &host));
        assert_eq!(map["x-forwarded-for"], "2001:db8::1");
        assert_eq!(map["forwarded"], "for=\"[2001:db8::1]\";proto=http;host=a.example.com");
    }

    #[test]
    fn push_token_or_quoted_table() {
        let cases = [
            ("example.com", "example.com"),
            ("example.com:80", "\"example.com:80\""),
            ("[::1]:80", "\"[::1]:80\""),
            ("a\"b\\c", "\"a\\\"b\\\\c\""),
            ("", "\"\""),
        ];
        for (value, expected) in cases {
            let mut out = b"host=".to_vec();
            push_token_or_quoted(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), format!("host={expected}"), "{value:?}");
        }
    }

    #[test]
    fn write_ip_matches_display() {
        let mut ips: Vec<IpAddr> = [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 250, 255]
            .into_iter()
            .map(|n| IpAddr::from([n, 255 - n, n / 2, 7]))
            .collect();
        ips.extend(
            ["::1", "2001:db8::8a2e:370:7334", "::ffff:1.2.3.4", "fe80::"]
                .map(|ip| ip.parse::<IpAddr>().unwrap()),
        );
        for ip in ips {
            let mut out = b"x".to_vec();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), format!("x{ip}"));
        }
    }

    #[test]
    fn hop_by_hop_position_finds_each_listed_name_and_no_other() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_position(name.as_str().as_bytes()), Some(index), "{name}");
            let upper = name.as_str().to_ascii_uppercase();
            assert_eq!(hop_by_hop_position(upper.as_bytes()), Some(index), "{upper}");
        }
        for other in ["host", "connections", "x-te", "upgrade-insecure-requests", "keep-alive2"] {
            assert_eq!(hop_by_hop_position(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn hop_by_hop_removal_table() {
        // (headers, the names left)
        type Case = (&'static [(&'static str, &'static str)], &'static [&'static str]);
        let cases: &[Case] = &[
            (&[("host", "a"), ("accept", "*/*")], &["accept", "host"]),
            (&[("connection", "keep-alive"), ("date", "x")], &["date"]),
            (&[("Connection", "Close"), ("te", "trailers")], &[]),
            (&[("connection", " x-a ,, keep-alive"), ("x-a", "1"), ("x-b", "2")], &["x-b"]),
            (&[("connection", "not a name, x-a"), ("x-a", "1"), ("upgrade", "h2c")], &[]),
            (&[("x-a", "1"), ("upgrade", "websocket"), ("keep-alive", "5")], &["x-a"]),
        ];
        for (pairs, left) in cases {
            let mut map = headers(pairs);
            remove_hop_by_hop(&mut map);
            assert_eq!(names(&map), *left, "{pairs:?}");
        }
    }

    #[test]
    fn forwarded_lists_skip_blank_values_and_quote_odd_hosts() {
        let mut map =
            headers(&[("x-forwarded-for", " "), ("forwarded", "for=a"), ("forwarded", "")]);
        let host = HeaderValue::from_static("a\"b\\c");
        set_forwarded(&mut map, forwarding("10.1.2.3", &host));
        assert_eq!(map["x-forwarded-for"], "10.1.2.3");
        assert_eq!(map["forwarded"], "for=a, for=10.1.2.3;proto=http;host=\"a\\\"b\\\\c\"");
        assert_eq!(map.get_all("forwarded").iter().count(), 1);

        // A host that is not text is left out of `Forwarded`, not mangled.
        let mut map = HeaderMap::new();
        let host = HeaderValue::from_bytes(b"caf\xe9.example").unwrap();
        set_forwarded(&mut map, forwarding("1.2.3.4", &host));
        assert_eq!(map["forwarded"], "for=1.2.3.4;proto=http");
        assert_eq!(map["x-forwarded-host"], host);
    }

    #[test]
    fn tchar_is_rfc_9110s() {
        for b in 0..=u8::MAX {
            let expected = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_tchar(b), expected, "{b:#04x}");
        }
    }

    #[test]
    fn ports_are_written_in_decimal() {
        for port in [0u16, 7, 80, 99, 443, 1000, 8080, 10000, 65535] {
            let mut out = Vec::new();
            push_decimal(&mut out, u64::from(port));
            assert_eq!(out, port.to_string().as_bytes(), "{port}");
        }
    }

    #[test]
    fn ip_text_matches_display() {
        let ips = [
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "1111:2222:3333:4444:5555:6666:7777:8888",
            "::ffff:255.255.255.255",
            "fe80::1",
        ];
        for ip in ips.map(|ip| ip.parse::<IpAddr>().unwrap()) {
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn the_request_id_reaches_the_app_as_the_one_value() {
        let mut map = headers(&[("x-request-id", "abc-123")]);
        let id = request_id(&map);
        assert_eq!(id, "abc-123");
        let host = HeaderValue::from_static("a.example.com");
        set_forwarded(&mut map, Forwarding { request_id: &id, ..forwarding("10.0.0.1", &host) });
        assert_eq!(map.get_all("x-request-id").iter().collect::<Vec<_>>(), [&id]);

        for pairs in [
            &[][..],
            &[("x-request-id", "two words")][..],
            &[("x-request-id", "a"), ("x-request-id", "b")][..],
        ] {
            let mut map = headers(pairs);
            let id = request_id(&map);
            assert_eq!(id.len(), 16, "{pairs:?}");
            set_forwarded(
                &mut map,
                Forwarding { request_id: &id, ..forwarding("10.0.0.1", &host) },
            );
            assert_eq!(map.get_all("x-request-id").iter().collect::<Vec<_>>(), [&id], "{pairs:?}");
        }
    }

    #[test]
    fn websocket_upgrade_needs_both_headers() {
        type Case = (&'static [(&'static str, &'static str)], Option<&'static str>);
        let cases: &[Case] = &[
            (&[("connection", "Upgrade"), ("upgrade", "websocket")], Some("websocket")),
            (&[("connection", "keep-alive, upgrade"), ("upgrade", "WebSocket")], Some("WebSocket")),
            (
                &[("connection", "upgrade"), ("upgrade", "h2c, websocket/13")],
                Some("h2c, websocket/13"),
            ),
            (&[("connection", "keep-alive"), ("upgrade", "websocket")], None),
            (&[("connection", "upgrade"), ("upgrade", "h2c")], None),
            (&[("connection", "upgrade")], None),
            (&[("upgrade", "websocket")], None),
            (&[], None),
        ];
        for (pairs, expected) in cases {
            let found = websocket_upgrade(&headers(pairs));
            assert_eq!(found.as_ref().map(|v| v.to_str().unwrap()), *expected, "{pairs:?}");
        }
    }

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        let is_generated = |id: &HeaderValue| {
            id.len() == 16 && id.as_bytes().iter().all(|b| b.is_ascii_hexdigit())
        };
        let long = "a".repeat(200);
        assert_eq!(request_id(&headers(&[("x-request-id", "abc-123")])), "abc-123");
        assert_eq!(request_id(&headers(&[("x-request-id", &long)])), long.as_str());
        for insane in [&"a".repeat(201)[..], "", "two words", "caf\u{e9}"] {
            let mut map = HeaderMap::new();
            map.insert(X_REQUEST_ID, HeaderValue::from_bytes(insane.as_bytes()).unwrap());
            assert!(is_generated(&request_id(&map)), "{insane:?} was kept");
        }
        let twice = headers(&[("x-request-id", "a"), ("x-request-id", "b")]);
        assert!(is_generated(&request_id(&twice)));
        assert!(is_generated(&request_id(&HeaderMap::new())));

        let ids: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000, "generated ids repeat");
    }

    #[test]
    fn ids_generated_on_several_threads_never_repeat() {
        // Each thread crosses into further blocks of counts (3000 > 2 blocks of 1024).
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..3000).map(|_| new_request_id()).collect::<Vec<_>>()))
            .collect();
        let mut ids = std::collections::HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(ids.insert(id), "{} was generated twice", String::from_utf8_lossy(&id));
            }
        }
        assert_eq!(ids.len(), 4 * 3000);
    }
}
