//! Header rewriting at the proxy hop: what must not cross it, and what the app is told.

use std::net::IpAddr;

use http::header::{
    CONNECTION, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection rather than the message (RFC 9110 section 7.6.1),
/// plus the non-standard `Keep-Alive` and `Proxy-Connection` that old clients still send.
/// hyper frames each side itself, so passing any of these on would describe the wrong hop.
///
/// `Upgrade` is here because WebSocket proxying is not supported yet; when it is, upgrade
/// requests will keep `Connection: upgrade` and `Upgrade` and go through a separate path.
const HOP_BY_HOP: [HeaderName; 9] = [
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
    // Collected first because the names borrow from the map that is then changed.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Tells the app who asked and how: the client's address is appended to any
/// `X-Forwarded-For` chain, and the scheme and original host are set outright so that a
/// client cannot claim, say, `https` on a plain connection.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, original_host: &HeaderValue) {
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; apps expect a.b.c.d.
    let client = client.to_canonical().to_string();
    let mut chain = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(value) = value.to_str() {
            let value = value.trim();
            if !value.is_empty() {
                chain.push_str(value);
                chain.push_str(", ");
            }
        }
    }
    chain.push_str(&client);
    // Every part is either visible ASCII from a header or an IP address, so this cannot
    // fail; falling back to the client alone keeps the header truthful if it somehow does.
    let chain = HeaderValue::from_str(&chain).unwrap_or_else(|_| {
        HeaderValue::from_str(&client).expect("an IP address is a valid header value")
    });
    headers.insert(X_FORWARDED_FOR, chain);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    headers.insert(X_FORWARDED_HOST, original_host.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

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

    #[test]
    fn forwarded_for_is_appended_and_proto_and_host_are_overwritten() {
        let mut map = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example.com"),
        ]);
        let client: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        set_forwarded(&mut map, client, &HeaderValue::from_static("MyApp.example.com:8080"));
        assert_eq!(map["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7");
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "MyApp.example.com:8080");
    }

    #[test]
    fn forwarded_for_starts_a_chain() {
        let mut map = HeaderMap::new();
        set_forwarded(&mut map, "2001:db8::1".parse().unwrap(), &HeaderValue::from_static("a"));
        assert_eq!(map["x-forwarded-for"], "2001:db8::1");
    }
}
