//! The route table: which app, at which addresses, serves each host name.
//!
//! The daemon builds a fresh [`RouteTable`] whenever apps start, stop or change their
//! names, and stores it into the [`SharedRoutes`] cell in one atomic swap. Requests only
//! ever read a snapshot, so a request never waits for the daemon and never sees a table
//! that is half updated.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::static_files::{StaticMount, longest_prefix_first};

/// DNS limits a name to 253 characters; anything longer cannot be a host we serve.
const MAX_HOST_LEN: usize = 253;

/// One app as the router sees it: where its web instances listen, and which files the
/// router serves for it from disk.
///
/// A request is answered, in this order, by a file under a static mount, by an instance,
/// by the catch-all file, and otherwise by a 404 page (an app with static files) or the
/// "not running" 502 page (an app without).
#[derive(Debug)]
pub struct Backend {
    /// The app's name, used in logs and error pages.
    pub app: String,
    /// The addresses of the app's running instances; empty while the app is stopped.
    pub addrs: Vec<SocketAddr>,
    /// Counts requests so that successive ones start at successive addresses.
    next: AtomicUsize,
    /// Longest prefix first.
    static_mounts: Vec<StaticMount>,
    catch_all: Option<PathBuf>,
    /// Requests under way to each of `addrs` (same order), shared with [`InFlight`].
    in_flight: Vec<Arc<AtomicUsize>>,
}

/// Requests under way to each instance address, across route tables: the daemon asks it
/// before stopping an instance it took out of the routes, so the instance finishes what it
/// was asked first (drain).
#[derive(Debug, Default)]
pub struct InFlight {
    counters: std::sync::RwLock<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

impl InFlight {
    pub fn new() -> InFlight {
        InFlight::default()
    }

    fn counter(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        if let Some(counter) = self.counters.read().unwrap_or_else(|e| e.into_inner()).get(&addr) {
            return counter.clone();
        }
        let mut counters = self.counters.write().unwrap_or_else(|e| e.into_inner());
        counters.entry(addr).or_default().clone()
    }

    /// How many requests to `addr` are under way now.
    pub fn count(&self, addr: SocketAddr) -> usize {
        let counters = self.counters.read().unwrap_or_else(|e| e.into_inner());
        counters.get(&addr).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// Forgets an address no backend uses any more.
    pub fn forget(&self, addr: SocketAddr) {
        self.counters.write().unwrap_or_else(|e| e.into_inner()).remove(&addr);
    }
}

impl Backend {
    /// A backend for `app` with instances at `addrs` (none if the app is stopped).
    pub fn new(app: impl Into<String>, addrs: Vec<SocketAddr>) -> Backend {
        let in_flight = addrs.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect();
        Backend {
            app: app.into(),
            addrs,
            next: AtomicUsize::new(0),
            static_mounts: Vec::new(),
            catch_all: None,
            in_flight,
        }
    }

    /// The same backend counting its requests in `registry`, which outlives route tables.
    pub fn with_in_flight(self, registry: &InFlight) -> Backend {
        let in_flight = self.addrs.iter().map(|addr| registry.counter(*addr)).collect();
        Backend { in_flight, ..self }
    }

    /// The counter of requests under way to `addrs[index]`.
    pub(crate) fn in_flight(&self, index: usize) -> Arc<AtomicUsize> {
        self.in_flight[index].clone()
    }

    /// The same backend with static directories served by the router itself (piku's
    /// `static:` worker and `NGINX_STATIC_PATHS`), and a file served for every GET or HEAD
    /// that nothing else answered (`NGINX_CATCH_ALL`, for apps that route on the client).
    ///
    /// Relative paths are taken relative to the daemon's working directory, so resolve them
    /// against the release directory first. The mounts may come in any order; the longest
    /// prefix is tried first. Nothing is checked on disk here: a directory that does not
    /// exist simply matches no request.
    pub fn with_static(self, mounts: Vec<StaticMount>, catch_all: Option<PathBuf>) -> Backend {
        Backend { static_mounts: longest_prefix_first(mounts), catch_all, ..self }
    }

    /// The static mounts, longest prefix first.
    pub fn static_mounts(&self) -> &[StaticMount] {
        &self.static_mounts
    }

    /// The file served for paths nothing else answers, if any.
    pub fn catch_all(&self) -> Option<&Path> {
        self.catch_all.as_deref()
    }

    /// The index in `addrs` at which the next request should start (round-robin).
    ///
    /// The counter is shared by all connections, so a `Relaxed` increment is enough: the
    /// spread only has to be even, not ordered with anything else.
    pub(crate) fn next_start(&self) -> usize {
        match self.addrs.len() {
            0 => 0,
            n => self.next.fetch_add(1, Ordering::Relaxed) % n,
        }
    }
}

/// Host names (normalised) mapped to the backend that serves them.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<String, Arc<Backend>>,
}

impl RouteTable {
    /// An empty table: every request gets the "no app" page.
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Routes `host` to `backend`; the host is normalised (lower-case, port and trailing
    /// dot removed).
    ///
    /// A host that was already routed is re-routed. A host that is not a valid name is
    /// skipped with a warning, because the table is rebuilt from many apps at once and one
    /// bad name must not stop the others; call [`normalize_host`] first to report it.
    pub fn insert(&mut self, host: &str, backend: Arc<Backend>) {
        match normalize_host(host) {
            Some(host) => {
                self.routes.insert(host, backend);
            }
            None => {
                tracing::warn!(host, app = %backend.app, "skipping route: not a valid host name");
            }
        }
    }

    /// The backend for `host`, which is normalised first.
    pub fn lookup(&self, host: &str) -> Option<&Arc<Backend>> {
        self.routes.get(&normalize_host(host)?)
    }

    /// The backend for a host that is already normalised; the proxy normalises once and
    /// uses the result for both the lookup and the error page.
    pub(crate) fn lookup_normalized(&self, host: &str) -> Option<&Arc<Backend>> {
        self.routes.get(host)
    }

    /// The number of routed host names.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no host is routed at all.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The table the proxy serves from; the daemon replaces it with `store`.
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

/// A shared cell holding an empty route table.
pub fn shared_routes() -> SharedRoutes {
    Arc::new(ArcSwap::from_pointee(RouteTable::new()))
}

/// The canonical form of a `Host` header value or URI authority, used as the table key:
/// lower-case, without the port and without a trailing dot.
///
/// `"MyApp.Example.com:8080"` becomes `"myapp.example.com"` and `"[::1]:80"` becomes
/// `"[::1]"` (IPv6 literals are also put in their shortest form). Empty or malformed values,
/// and names with characters outside letters, digits, `-` and `_`, give `None`.
pub fn normalize_host(raw: &str) -> Option<String> {
    if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        let port = if after.is_empty() { "" } else { after.strip_prefix(':')? };
        if !is_valid_port(port) {
            return None;
        }
        let ip: Ipv6Addr = literal.parse().ok()?;
        return Some(format!("[{ip}]"));
    }

    let (name, port) = raw.rsplit_once(':').unwrap_or((raw, ""));
    if !is_valid_port(port) {
        return None;
    }
    // "example.com." is the fully qualified spelling of "example.com"; both must match.
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    let labels_are_valid = name.split('.').all(|label| {
        !label.is_empty()
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    labels_are_valid.then(|| name.to_ascii_lowercase())
}

/// An empty port is allowed by RFC 3986 (`example.com:` means the default port).
fn is_valid_port(port: &str) -> bool {
    port.is_empty() || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_host_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("example.com", Some("example.com")),
            ("MyApp.Example.com:8080", Some("myapp.example.com")),
            ("myapp.example.com.", Some("myapp.example.com")),
            ("myapp.example.com.:443", Some("myapp.example.com")),
            ("example.com:", Some("example.com")),
            ("localhost", Some("localhost")),
            ("my_app-1.local", Some("my_app-1.local")),
            ("127.0.0.1:8000", Some("127.0.0.1")),
            ("[::1]:80", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("[0:0::1]", Some("[::1]")),
            ("[2001:DB8::A]:8080", Some("[2001:db8::a]")),
            ("", None),
            (".", None),
            (":80", None),
            ("example.com:http", None),
            ("example.com:99999", None),
            ("example..com", None),
            (".example.com", None),
            ("example.com..", None),
            ("exa mple.com", None),
            ("exämple.com", None),
            ("user@example.com", None),
            ("::1", None),
            ("[::1", None),
            ("[::1]x", None),
            ("[not-an-ip]", None),
            ("[::1]:", Some("[::1]")),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_host(raw).as_deref(), *expected, "normalize_host({raw:?})");
        }
        assert_eq!(normalize_host(&"a".repeat(254)), None);
        assert!(normalize_host(&"a".repeat(253)).is_some());
    }

    #[test]
    fn insert_normalises_and_lookup_finds_any_spelling() {
        let mut table = RouteTable::new();
        assert!(table.is_empty());
        table.insert("MyApp.Example.com.", Arc::new(Backend::new("myapp", vec![])));
        table.insert("not a host", Arc::new(Backend::new("bad", vec![])));
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup("myapp.example.com:80").map(|b| b.app.as_str()), Some("myapp"));
        assert_eq!(
            table.lookup_normalized("myapp.example.com").map(|b| b.app.as_str()),
            Some("myapp")
        );
        assert!(table.lookup("other.example.com").is_none());
        assert!(table.lookup("").is_none());
    }

    #[test]
    fn round_robin_visits_every_address() {
        let addrs: Vec<SocketAddr> =
            (1..=3).map(|port| SocketAddr::from(([127, 0, 0, 1], port))).collect();
        let backend = Backend::new("myapp", addrs);
        let starts: Vec<usize> = (0..6).map(|_| backend.next_start()).collect();
        assert_eq!(starts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(Backend::new("stopped", vec![]).next_start(), 0);
    }

    #[test]
    fn with_static_orders_mounts_longest_prefix_first() {
        let mounts = vec![
            StaticMount::new("/", "/srv/root"),
            StaticMount::new("/static/img", "/srv/img"),
            StaticMount::new("/static", "/srv/static"),
            StaticMount::new("/", "/srv/second-root"),
        ];
        let backend =
            Backend::new("myapp", vec![]).with_static(mounts, Some("/srv/index.html".into()));
        let prefixes: Vec<(&str, &Path)> = backend
            .static_mounts()
            .iter()
            .map(|mount| (mount.prefix.as_str(), mount.dir.as_path()))
            .collect();
        assert_eq!(
            prefixes,
            [
                ("/static/img", Path::new("/srv/img")),
                ("/static", Path::new("/srv/static")),
                ("/", Path::new("/srv/root")),
                ("/", Path::new("/srv/second-root")),
            ]
        );
        assert_eq!(backend.catch_all(), Some(Path::new("/srv/index.html")));
        assert_eq!(backend.app, "myapp");
        assert!(Backend::new("plain", vec![]).static_mounts().is_empty());
    }

    #[test]
    fn shared_routes_starts_empty_and_swaps() {
        let routes = shared_routes();
        assert!(routes.load().is_empty());
        let mut table = RouteTable::new();
        table.insert("a.example.com", Arc::new(Backend::new("a", vec![])));
        routes.store(Arc::new(table));
        assert_eq!(routes.load().len(), 1);
    }
}
