//! Who may reach an app by address: an allow list of addresses and networks
//! (`BERTH_ALLOW_IPS`), and piku's `NGINX_CLOUDFLARE_ACL`, which admits only Cloudflare's
//! published ranges and then takes the visitor's address from `CF-Connecting-IP`, as
//! nginx's `real_ip` module does.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::OnceLock;

use http::HeaderMap;
use http::header::HeaderName;

/// The header in which Cloudflare tells the origin who its visitor is.
pub(crate) const CF_CONNECTING_IP: HeaderName = HeaderName::from_static("cf-connecting-ip");

/// When [`CLOUDFLARE_IPV4`] and [`CLOUDFLARE_IPV6`] were taken from Cloudflare's list.
pub const CLOUDFLARE_RANGES_DATE: &str = "2026-11-22";

/// Cloudflare's IPv4 ranges, as published at <https://www.cloudflare.com/ips-v4>.
///
/// The list changes rarely; it is kept in the binary so that the router never depends on
/// reaching Cloudflare to decide who may reach an app.
pub const CLOUDFLARE_IPV4: [&str; 15] = [
    "173.245.48.0/20",
    "103.21.244.0/22",
    "103.22.200.0/22",
    "103.31.4.0/22",
    "141.101.64.0/18",
    "108.162.192.0/18",
    "190.93.240.0/20",
    "188.114.96.0/20",
    "197.234.240.0/22",
    "198.41.128.0/17",
    "162.158.0.0/15",
    "104.16.0.0/13",
    "104.24.0.0/14",
    "172.64.0.0/13",
    "131.0.72.0/22",
];

/// Cloudflare's IPv6 ranges, as published at <https://www.cloudflare.com/ips-v6>.
pub const CLOUDFLARE_IPV6: [&str; 7] = [
    "2400:cb00::/32",
    "2606:4700::/32",
    "2803:f800::/32",
    "2405:b500::/32",
    "2405:8100::/32",
    "2a06:98c0::/29",
    "2c0f:f248::/32",
];

/// An IP network in CIDR notation: an address and how many of its leading bits are the
/// network's (`10.0.0.0/8`, `2001:db8::/32`). A single address is a network of its full
/// length (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// How many leading bits name the network.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the network. An IPv4 address written as IPv6 (`::ffff:a.b.c.d`,
    /// as a dual-stack socket reports IPv4 peers) is the IPv4 address it stands for, so it
    /// matches IPv4 networks, and IPv4 addresses match IPv4-mapped IPv6 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = prefix_mask_32(self.prefix_len);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => same_prefix_128(net, ip, self.prefix_len),
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                same_prefix_128(net, ip.to_ipv6_mapped(), self.prefix_len)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

/// The `len` leading bits of a 32-bit address set (`len` at most 32).
fn prefix_mask_32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn same_prefix_128(net: Ipv6Addr, ip: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(net) & mask == u128::from(ip) & mask
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why an entry of an address list is not an address or a network; the message names the
/// entry and shows the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpNetError {
    /// The entry as written.
    pub entry: String,
    kind: IpNetErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum IpNetErrorKind {
    NotAnAddress,
    BadPrefix,
    PrefixTooLong {
        max: u8,
    },
    /// Bits are set after the prefix: the entry is neither the network nor one address.
    HostBits {
        network: IpNet,
    },
    /// The list had no entry at all.
    EmptyList,
}

impl fmt::Display for IpNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entry = &self.entry;
        match &self.kind {
            IpNetErrorKind::NotAnAddress => write!(
                f,
                "{entry:?} is not an IP address or network (write one like 10.0.0.0/8, \
                 192.168.1.7 or 2001:db8::/32)"
            ),
            IpNetErrorKind::BadPrefix => write!(
                f,
                "{entry:?} has no valid prefix length after the / (write one like 10.0.0.0/8)"
            ),
            IpNetErrorKind::PrefixTooLong { max } => write!(
                f,
                "{entry:?} has a prefix length over {max}, the length of the address (write \
                 one like 10.0.0.0/8 or 2001:db8::/32)"
            ),
            IpNetErrorKind::HostBits { network } => write!(
                f,
                "{entry:?} has bits set after its prefix: write the network as {network}, or \
                 one address without a /"
            ),
            IpNetErrorKind::EmptyList => {
                write!(f, "the list names no address (write one like 10.0.0.0/8,192.168.1.7,::1)")
            }
        }
    }
}

impl std::error::Error for IpNetError {}

impl FromStr for IpNet {
    type Err = IpNetError;

    /// `ADDRESS` or `ADDRESS/LENGTH`, IPv4 or IPv6, with no bit set after the prefix.
    fn from_str(text: &str) -> Result<IpNet, IpNetError> {
        let error = |kind| IpNetError { entry: text.to_owned(), kind };
        let (addr_text, len_text) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| error(IpNetErrorKind::NotAnAddress))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len_text {
            None => max,
            Some(len) => {
                // Digits only: `u8::from_str` would also take a sign.
                let is_number =
                    !len.is_empty() && len.len() <= 3 && len.bytes().all(|b| b.is_ascii_digit());
                let len: u16 = match len.parse() {
                    Ok(len) if is_number => len,
                    _ => return Err(error(IpNetErrorKind::BadPrefix)),
                };
                if len > u16::from(max) {
                    return Err(error(IpNetErrorKind::PrefixTooLong { max }));
                }
                len as u8
            }
        };
        let net = IpNet { addr, prefix_len };
        let network = IpNet { addr: first_address(addr, prefix_len), prefix_len };
        if network != net {
            return Err(error(IpNetErrorKind::HostBits { network }));
        }
        Ok(net)
    }
}

/// `addr` with every bit after the prefix cleared.
fn first_address(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(ip) => IpAddr::V4((u32::from(ip) & prefix_mask_32(prefix_len)).into()),
        IpAddr::V6(ip) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V6((u128::from(ip) & mask).into())
        }
    }
}

/// Parses a list of addresses and networks separated by commas or spaces
/// (`10.0.0.0/8,192.168.1.7 ::1`), as `BERTH_ALLOW_IPS` holds it. The first bad entry is the
/// error; a list without any entry is one too, since it would shut everyone out.
pub fn parse_ip_list(text: &str) -> Result<Vec<IpNet>, IpNetError> {
    let nets = text
        .split([',', ' ', '\t', '\n'])
        .filter(|entry| !entry.is_empty())
        .map(IpNet::from_str)
        .collect::<Result<Vec<_>, _>>()?;
    if nets.is_empty() {
        return Err(IpNetError { entry: text.to_owned(), kind: IpNetErrorKind::EmptyList });
    }
    Ok(nets)
}

/// Cloudflare's ranges, parsed once.
fn cloudflare_nets() -> &'static [IpNet] {
    static NETS: OnceLock<Vec<IpNet>> = OnceLock::new();
    NETS.get_or_init(|| {
        CLOUDFLARE_IPV4
            .iter()
            .chain(CLOUDFLARE_IPV6.iter())
            .map(|net| net.parse().expect("Cloudflare's ranges are valid networks"))
            .collect()
    })
}

/// Whether `ip` is one of Cloudflare's addresses (IPv4-mapped IPv6 included).
pub fn is_cloudflare(ip: IpAddr) -> bool {
    cloudflare_nets().iter().any(|net| net.contains(ip))
}

/// Which peers may reach an app: see [`crate::Backend::with_access`]. The default lets
/// everyone in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Only Cloudflare's addresses may connect (`NGINX_CLOUDFLARE_ACL`), and the visitor's
    /// address is then the one Cloudflare sends in `CF-Connecting-IP`.
    pub cloudflare_only: bool,
    /// Only visitors in these networks get in (`BERTH_ALLOW_IPS`); `None` admits anyone.
    pub allow: Option<Vec<IpNet>>,
}

/// Why a visitor was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The app is reached through Cloudflare only, and the peer is not Cloudflare.
    NotCloudflare { peer: IpAddr },
    /// The visitor's address is not on the app's allow list.
    NotAllowed { client: IpAddr },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotCloudflare { peer } => write!(
                f,
                "this app is reached through Cloudflare only, and {peer} is not one of \
                 Cloudflare's addresses"
            ),
            Refusal::NotAllowed { client } => {
                write!(f, "the address {client} may not reach this app")
            }
        }
    }
}

impl AccessRules {
    /// Whether the rules admit everyone, so a request need not be looked at.
    pub(crate) fn is_open(&self) -> bool {
        !self.cloudflare_only && self.allow.is_none()
    }

    /// The visitor's address, for the app's forwarding headers and its access log, when the
    /// rules let a connection from `peer` in: `CF-Connecting-IP` when the app is reached
    /// through Cloudflare (and the peer is Cloudflare), else the peer. The allow list is
    /// checked against that address, so both knobs together mean "through Cloudflare, for
    /// these visitors".
    pub(crate) fn admit(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, Refusal> {
        let peer = peer.to_canonical();
        let client = if self.cloudflare_only {
            if !is_cloudflare(peer) {
                return Err(Refusal::NotCloudflare { peer });
            }
            cloudflare_client(headers).unwrap_or(peer)
        } else {
            peer
        };
        match &self.allow {
            Some(nets) if !nets.iter().any(|net| net.contains(client)) => {
                Err(Refusal::NotAllowed { client })
            }
            _ => Ok(client),
        }
    }
}

/// The address in the one `CF-Connecting-IP` header, if there is exactly one and it is an
/// address.
fn cloudflare_client(headers: &HeaderMap) -> Option<IpAddr> {
    let mut values = headers.get_all(CF_CONNECTING_IP).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return None };
    let ip: IpAddr = value.to_str().ok()?.trim().parse().ok()?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parse_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("192.168.1.7", Some("192.168.1.7/32")),
            ("192.168.1.7/32", Some("192.168.1.7/32")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("::1", Some("::1/128")),
            ("::/0", Some("::/0")),
            ("2001:db8::/32", Some("2001:db8::/32")),
            ("2001:DB8:0::/48", Some("2001:db8::/48")),
            ("::ffff:10.0.0.0/104", Some("::ffff:10.0.0.0/104")),
            ("10.0.0.0/008", Some("10.0.0.0/8")),
            ("", None),
            ("10.0.0.0/", None),
            ("/8", None),
            ("10.0.0.0/33", None),
            ("::/129", None),
            ("10.0.0.0/+8", None),
            ("10.0.0.0/-1", None),
            ("10.0.0.0/8/8", None),
            ("10.0.0.0/0008", None),
            ("10.0.0.1/8", None),
            ("2001:db8::1/32", None),
            ("10.0.0", None),
            ("256.0.0.1", None),
            ("example.com", None),
            ("[::1]", None),
            ("fe80::1%eth0", None),
            (" 10.0.0.1", None),
        ];
        for (text, expected) in cases {
            let parsed = text.parse::<IpNet>().map(|net| net.to_string());
            assert_eq!(parsed.as_deref().ok(), *expected, "{text:?}: {parsed:?}");
        }
    }

    #[test]
    fn errors_name_the_entry_and_the_fix() {
        let message = |text: &str| text.parse::<IpNet>().unwrap_err().to_string();
        assert_eq!(
            message("10.0.0.300"),
            "\"10.0.0.300\" is not an IP address or network (write one like 10.0.0.0/8, \
             192.168.1.7 or 2001:db8::/32)"
        );
        assert_eq!(
            message("10.0.0.0/x"),
            "\"10.0.0.0/x\" has no valid prefix length after the / (write one like 10.0.0.0/8)"
        );
        assert!(message("10.0.0.0/33").contains("prefix length over 32"));
        assert!(message("::/200").contains("prefix length over 128"));
        assert_eq!(
            message("10.1.2.3/8"),
            "\"10.1.2.3/8\" has bits set after its prefix: write the network as 10.0.0.0/8, \
             or one address without a /"
        );
        let error = parse_ip_list("10.0.0.0/8, 1.2.3.4/40").unwrap_err();
        assert_eq!(error.entry, "1.2.3.4/40");
        assert!(parse_ip_list(" , ").unwrap_err().to_string().contains("names no address"));
    }

    #[test]
    fn contains_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("10.0.0.0/8", "::ffff:11.1.2.3", false),
            ("10.0.0.0/8", "::a01:203", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::ffff:203.0.113.9", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("192.168.1.7", "192.168.1.7", true),
            ("192.168.1.7", "192.168.1.8", false),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
            ("::/0", "2001:db8::1", true),
            ("::/0", "127.0.0.1", true),
            ("::1", "::1", true),
            ("::1", "127.0.0.1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("2001:db8::1/128", "2001:db8::1", true),
            ("2001:db8::1/128", "2001:db8::2", false),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
            ("::ffff:10.0.0.0/104", "11.9.9.9", false),
            ("::ffff:10.0.0.0/104", "::ffff:10.9.9.9", true),
            ("172.16.0.0/12", "172.31.255.255", true),
            ("172.16.0.0/12", "172.32.0.0", false),
        ];
        for (net, address, expected) in cases {
            let net: IpNet = net.parse().unwrap();
            assert_eq!(net.contains(ip(address)), *expected, "{net} contains {address}");
        }
    }

    #[test]
    fn lists_split_on_commas_and_spaces() {
        let nets = parse_ip_list("10.0.0.0/8,192.168.1.7 ::1,,").unwrap();
        let shown: Vec<String> = nets.iter().map(IpNet::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]);
        assert_eq!(nets[1].addr(), ip("192.168.1.7"));
        assert_eq!(nets[1].prefix_len(), 32);
    }

    #[test]
    fn cloudflare_ranges_parse_and_match() {
        assert_eq!(cloudflare_nets().len(), CLOUDFLARE_IPV4.len() + CLOUDFLARE_IPV6.len());
        let cases: &[(&str, bool)] = &[
            ("173.245.48.1", true),
            ("173.245.63.255", true),
            ("173.245.64.0", false),
            ("104.16.0.1", true),
            ("104.23.255.255", true),
            ("104.24.0.1", true),
            ("104.28.0.1", false),
            ("162.159.1.1", true),
            ("131.0.72.9", true),
            ("::ffff:104.16.0.1", true),
            ("::ffff:127.0.0.1", false),
            ("127.0.0.1", false),
            ("10.0.0.1", false),
            ("1.1.1.1", false),
            ("2606:4700::6810:84e5", true),
            ("2a06:98c7:ffff::1", true),
            ("2a06:98c8::1", false),
            ("2c0f:f248::1", true),
            ("::1", false),
        ];
        for (address, expected) in cases {
            assert_eq!(is_cloudflare(ip(address)), *expected, "{address}");
        }
    }

    #[test]
    fn admit_takes_the_visitor_from_cloudflare_only_when_the_peer_is_cloudflare() {
        let open = AccessRules::default();
        assert!(open.is_open());
        let with_header = header_map(&[("cf-connecting-ip", "198.51.100.4")]);
        // Without the knob the header is anyone's to send, so it is ignored.
        assert_eq!(open.admit(ip("127.0.0.1"), &with_header), Ok(ip("127.0.0.1")));
        assert_eq!(open.admit(ip("104.16.0.1"), &with_header), Ok(ip("104.16.0.1")));

        let cloudflare = AccessRules { cloudflare_only: true, allow: None };
        assert!(!cloudflare.is_open());
        assert_eq!(cloudflare.admit(ip("104.16.0.1"), &with_header), Ok(ip("198.51.100.4")));
        assert_eq!(cloudflare.admit(ip("::ffff:104.16.0.1"), &with_header), Ok(ip("198.51.100.4")));
        assert_eq!(
            cloudflare.admit(ip("127.0.0.1"), &with_header),
            Err(Refusal::NotCloudflare { peer: ip("127.0.0.1") })
        );
        assert_eq!(
            cloudflare.admit(ip("::ffff:127.0.0.1"), &with_header),
            Err(Refusal::NotCloudflare { peer: ip("127.0.0.1") })
        );
        // No header, two headers or a header that is not an address: the peer it is.
        let peer = ip("2606:4700::1");
        let twice = header_map(&[("cf-connecting-ip", "1.2.3.4"), ("cf-connecting-ip", "5.6.7.8")]);
        for headers in [HeaderMap::new(), twice, header_map(&[("cf-connecting-ip", "x")])] {
            assert_eq!(cloudflare.admit(peer, &headers), Ok(peer), "{headers:?}");
        }
        let mapped = header_map(&[("cf-connecting-ip", " ::ffff:203.0.113.5 ")]);
        assert_eq!(cloudflare.admit(peer, &mapped), Ok(ip("203.0.113.5")));
    }

    #[test]
    fn the_allow_list_applies_to_the_visitor() {
        let allow = Some(parse_ip_list("10.0.0.0/8,::1").unwrap());
        let rules = AccessRules { cloudflare_only: false, allow: allow.clone() };
        let none = HeaderMap::new();
        assert_eq!(rules.admit(ip("10.1.1.1"), &none), Ok(ip("10.1.1.1")));
        assert_eq!(rules.admit(ip("::ffff:10.1.1.1"), &none), Ok(ip("10.1.1.1")));
        assert_eq!(rules.admit(ip("::1"), &none), Ok(ip("::1")));
        assert_eq!(
            rules.admit(ip("127.0.0.1"), &none),
            Err(Refusal::NotAllowed { client: ip("127.0.0.1") })
        );
        // Through Cloudflare, the visitor behind it is the one checked.
        let both = AccessRules { cloudflare_only: true, allow };
        let inside = header_map(&[("cf-connecting-ip", "10.2.3.4")]);
        let outside = header_map(&[("cf-connecting-ip", "192.0.2.1")]);
        assert_eq!(both.admit(ip("104.16.0.1"), &inside), Ok(ip("10.2.3.4")));
        assert_eq!(
            both.admit(ip("104.16.0.1"), &outside),
            Err(Refusal::NotAllowed { client: ip("192.0.2.1") })
        );
        assert_eq!(
            both.admit(ip("10.2.3.4"), &inside),
            Err(Refusal::NotCloudflare { peer: ip("10.2.3.4") })
        );
    }

    // Through the proxy, on real sockets.

    use std::net::SocketAddr;
    use std::sync::Arc;

    use crate::proxy::Proxy;
    use crate::table::{Backend, RouteTable, SharedRoutes, shared_routes};
    use crate::test_support::{
        echo_upstream, get, header, recording_upstream, send, start_proxy, start_proxy_seen_from,
        wait_for,
    };
    use crate::{AccessLog, CacheConfig};

    fn routes_for(backend: Backend) -> SharedRoutes {
        let mut table = RouteTable::new();
        table.insert("myapp.example.com", Arc::new(backend));
        let routes = shared_routes();
        routes.store(Arc::new(table));
        routes
    }

    fn allow(list: &str) -> AccessRules {
        AccessRules { cloudflare_only: false, allow: Some(parse_ip_list(list).unwrap()) }
    }

    #[tokio::test]
    async fn a_peer_off_the_allow_list_gets_403_and_the_app_never_hears_of_it() {
        let upstream = recording_upstream().await;
        let backend = Backend::new("myapp", vec![upstream.addr])
            .with_access(allow("10.0.0.0/8, ::1"))
            .with_cache(CacheConfig { prefixes: vec!["/".into()], ..CacheConfig::default() });
        let proxy = start_proxy(routes_for(backend)).await;
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!(reply.status, 403, "{}", reply.body);
        assert_eq!(reply.body, "403 forbidden: the address 127.0.0.1 may not reach this app\n");
        assert_eq!(
            header(&reply.head, "content-type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert!(upstream.seen().is_empty(), "the app was asked: {:?}", upstream.seen());
    }

    #[tokio::test]
    async fn a_listed_peer_gets_through() {
        let upstream = recording_upstream().await;
        let backend =
            Backend::new("myapp", vec![upstream.addr]).with_access(allow("192.0.2.1,127.0.0.0/8"));
        let proxy = start_proxy(routes_for(backend)).await;
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
        assert_eq!(upstream.seen().len(), 1);
    }

    #[tokio::test]
    async fn the_cloudflare_acl_refuses_loopback() {
        let upstream = recording_upstream().await;
        let rules = AccessRules { cloudflare_only: true, allow: None };
        let backend = Backend::new("myapp", vec![upstream.addr]).with_access(rules);
        let proxy = start_proxy(routes_for(backend)).await;
        let request = "GET / HTTP/1.1\r\nHost: myapp.example.com\r\n\
                       CF-Connecting-IP: 104.16.0.1\r\nConnection: close\r\n\r\n";
        let reply = send(proxy.addr, request.into()).await;
        assert_eq!(reply.status, 403, "{}", reply.body);
        assert_eq!(
            reply.body,
            "403 forbidden: this app is reached through Cloudflare only, and 127.0.0.1 is not \
             one of Cloudflare's addresses\n"
        );
        assert!(upstream.seen().is_empty());
    }

    /// A request claiming to come from 198.51.100.7 through Cloudflare.
    const VIA_CLOUDFLARE: &str = "GET / HTTP/1.1\r\nHost: myapp.example.com\r\n\
                                  CF-Connecting-IP: 198.51.100.7\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn cf_connecting_ip_is_ignored_from_a_peer_that_is_not_cloudflare() {
        let dir = berth_testkit::TempDir::new("router-cf-ignored");
        let path = dir.path().join("access.log");
        let upstream = echo_upstream("web.1").await;
        let backend =
            Backend::new("myapp", vec![upstream]).with_access_log(AccessLog::open(&path).unwrap());
        let proxy = start_proxy(routes_for(backend)).await;
        let reply = send(proxy.addr, VIA_CLOUDFLARE.into()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header(&reply.body, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert!(header(&reply.body, "forwarded").unwrap().starts_with("for=127.0.0.1;"));
        // The header itself is the app's to read or not.
        assert_eq!(header(&reply.body, "cf-connecting-ip").as_deref(), Some("198.51.100.7"));
        wait_for("a line in the log", || {
            std::fs::read_to_string(&path).is_ok_and(|t| !t.is_empty())
        })
        .await;
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(log.starts_with("127.0.0.1 - - ["), "{log}");
    }

    #[tokio::test]
    async fn through_cloudflare_the_visitor_is_cf_connecting_ip() {
        let dir = berth_testkit::TempDir::new("router-cf-real-ip");
        let path = dir.path().join("access.log");
        let upstream = echo_upstream("web.1").await;
        let rules = AccessRules { cloudflare_only: true, allow: None };
        let backend = Backend::new("myapp", vec![upstream])
            .with_access(rules)
            .with_access_log(AccessLog::open(&path).unwrap());
        let routes = routes_for(backend);
        // Real sockets, judged as if they came from one of Cloudflare's addresses.
        let cloudflare: SocketAddr = "[2606:4700::1]:40000".parse().unwrap();
        let proxy = start_proxy_seen_from(Proxy::new(Arc::clone(&routes)), Some(cloudflare)).await;
        let reply = send(proxy.addr, VIA_CLOUDFLARE.into()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header(&reply.body, "x-forwarded-for").as_deref(), Some("198.51.100.7"));
        assert!(header(&reply.body, "forwarded").unwrap().starts_with("for=198.51.100.7;"));
        let reply = send(proxy.addr, get("myapp.example.com", "/")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header(&reply.body, "x-forwarded-for").as_deref(), Some("2606:4700::1"));
        wait_for("two lines in the log", || {
            std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() >= 2)
        })
        .await;
        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert!(lines[0].starts_with("198.51.100.7 - - ["), "{log}");
        assert!(lines[1].starts_with("2606:4700::1 - - ["), "{log}");

        // Without the knob, the same peer's header is ignored.
        let open = Backend::new("myapp", vec![upstream]);
        routes.store(Arc::new({
            let mut table = RouteTable::new();
            table.insert("myapp.example.com", Arc::new(open));
            table
        }));
        let reply = send(proxy.addr, VIA_CLOUDFLARE.into()).await;
        assert_eq!(header(&reply.body, "x-forwarded-for").as_deref(), Some("2606:4700::1"));
    }
}
