//! The route table: which app, at which addresses, serves each host name.
//!
//! A request finds its app in this order (see [`RouteTable::route`]):
//!
//! 1. an `X-App: APP` header naming an app in the table, on any host;
//! 2. a first path segment naming an app that opted into path routing
//!    ([`Backend::with_path_routing`]), on any host except that app's own names, where its
//!    paths are its own; the segment is then stripped before the app sees the path;
//! 3. the host: an exact name, else the wildcard (`*.example.com`) with the longest suffix.
//!
//! A segment that names an app without path routing, or no app, never takes a request
//! away from the host's app, so an app's own paths cannot be hijacked by another app's name
//! unless that app opted in.
//!
//! The daemon builds a fresh [`RouteTable`] whenever apps start, stop or change their
//! names, and stores it into the [`SharedRoutes`] cell in one atomic swap. Requests only
//! ever read a snapshot, so a request never waits for the daemon and never sees a table
//! that is half updated.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::access::AccessRules;
use crate::access_log::AccessLog;
use crate::basic_auth::BasicAuth;
use crate::cache::{BackendCache, CacheConfig};
use crate::limits::Limits;
use crate::static_files::{StaticMount, longest_prefix_first};

/// DNS limits a name to 253 characters; anything longer cannot be a host we serve.
const MAX_HOST_LEN: usize = 253;

/// A map keyed by names that visitors choose (hosts, `X-App`, a path's first segment), looked
/// up on every request. foldhash costs a fraction of the standard SipHash on such short keys,
/// and its `RandomState` is seeded per process, so a visitor cannot precompute names that
/// collide.
type NameMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

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
    /// Counts requests so that equally loaded instances take turns.
    next: AtomicUsize,
    /// Longest prefix first.
    static_mounts: Vec<StaticMount>,
    catch_all: Option<PathBuf>,
    /// Whether paths through `.git` are served from the static mounts (piku's
    /// `NGINX_ALLOW_GIT_FOLDERS`); refused with a 404 by default.
    git_folders: bool,
    /// Requests under way to each of `addrs` (same order), shared with [`InFlight`].
    in_flight: Vec<Arc<AtomicUsize>>,
    /// Whether `/APP/...` on any host reaches this app; see [`Backend::with_path_routing`].
    path_routing: bool,
    limits: Limits,
    access_log: Option<AccessLog>,
    https_only: bool,
    cache: Option<BackendCache>,
    access: AccessRules,
    basic_auth: Option<Arc<BasicAuth>>,
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
            git_folders: false,
            in_flight,
            path_routing: false,
            limits: Limits::default(),
            access_log: None,
            https_only: false,
            cache: None,
            access: AccessRules::default(),
            basic_auth: None,
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

    /// How many requests to `addrs[index]` are under way now.
    pub(crate) fn load(&self, index: usize) -> usize {
        self.in_flight[index].load(Ordering::SeqCst)
    }

    /// The same backend, also reached on any host at `/APP/...` when `enabled`: the app sees
    /// the path without its first segment (`/APP/rest?q` as `/rest?q`, `/APP` as `/`) and an
    /// `X-Forwarded-Prefix: /APP` header, from which it can build its own links.
    ///
    /// It takes precedence over the host's app for that first segment, so it is opt-in: a
    /// path-routed app named `api` takes `/api/...` away from every other app.
    pub fn with_path_routing(self, enabled: bool) -> Backend {
        Backend { path_routing: enabled, ..self }
    }

    /// Whether the app is also reached at `/APP/...` on any host.
    pub fn path_routing(&self) -> bool {
        self.path_routing
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

    /// The same backend serving paths through `.git` (any segment starting with `.git`,
    /// as piku's `location ~ /\.git` matches) from its static mounts when `enabled`
    /// (piku's `NGINX_ALLOW_GIT_FOLDERS`). Off by default: such paths get a 404, because a
    /// repository's internals can hold history and credentials. `..` and symlinks out of a
    /// mount are refused either way.
    pub fn with_git_folders(self, enabled: bool) -> Backend {
        Backend { git_folders: enabled, ..self }
    }

    /// Whether paths through `.git` are served from the static mounts.
    pub fn git_folders(&self) -> bool {
        self.git_folders
    }

    /// The same backend held to `limits` (request body size, time to answer) instead of
    /// the defaults.
    pub fn with_limits(self, limits: Limits) -> Backend {
        Backend { limits, ..self }
    }

    /// The limits the app's requests are held to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The same backend writing a line per request to `log` (see [`AccessLog`]), made when
    /// the response head is ready; the router's own pages for the app are logged too.
    pub fn with_access_log(self, log: AccessLog) -> Backend {
        Backend { access_log: Some(log), ..self }
    }

    /// The app's access log, if it has one.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// The same backend, reached over plain HTTP only by a redirect to
    /// `https://HOST/path?query` (301 for GET and HEAD, 308 for other methods, which must
    /// keep their body), except for `/.well-known/acme-challenge/...`, which certificates
    /// are validated through. Its responses over TLS carry
    /// `Strict-Transport-Security: max-age=31536000` unless the app sets its own.
    ///
    /// The redirect names no port: HTTPS is taken to be on 443.
    pub fn with_https_only(self, enabled: bool) -> Backend {
        Backend { https_only: enabled, ..self }
    }

    /// Whether plain-HTTP visitors are redirected to HTTPS.
    pub fn https_only(&self) -> bool {
        self.https_only
    }

    /// The same backend with a response cache for the URL prefixes in `config` (see
    /// [`CacheConfig`]). The cache belongs to the app's name, not to this backend: every
    /// backend made for the app shares it, so a new route table keeps what was cached,
    /// until [`crate::CacheRegistry::clear`]. An empty prefix list caches nothing.
    pub fn with_cache(self, config: CacheConfig) -> Backend {
        let cache = BackendCache::new(&self.app, config);
        Backend { cache: Some(cache), ..self }
    }

    pub(crate) fn cache(&self) -> Option<&BackendCache> {
        self.cache.as_ref()
    }

    /// The same backend reached only by the visitors `rules` admit; the others get a 403
    /// saying why. With [`AccessRules::cloudflare_only`], the visitor's address (for the
    /// allow list, the forwarding headers and the access log) is Cloudflare's
    /// `CF-Connecting-IP`. The rules apply to every request routed to the app, its static
    /// files included; the router's own ACME challenges are answered before routing.
    pub fn with_access(self, rules: AccessRules) -> Backend {
        Backend { access: rules, ..self }
    }

    /// Who may reach the app by address.
    pub fn access(&self) -> &AccessRules {
        &self.access
    }

    /// The same backend asking for the name and password of one of `auth`'s users: a
    /// request without them gets a 401 with `WWW-Authenticate: Basic realm="APP"`. A request
    /// with them goes on with its `Authorization` header, as nginx passes it, so the app can
    /// tell who signed in. Without users, nothing is asked.
    ///
    /// `auth` remembers the credentials it verified; share one across route tables for as
    /// long as the app's users stay the same, and make a new one when they change.
    pub fn with_basic_auth(self, auth: Arc<BasicAuth>) -> Backend {
        let basic_auth = (!auth.is_empty()).then_some(auth);
        Backend { basic_auth, ..self }
    }

    pub(crate) fn basic_auth(&self) -> Option<&BasicAuth> {
        self.basic_auth.as_deref()
    }

    /// A number that grows by one with each request, for turn-taking among instances that
    /// are equally good choices (round-robin).
    ///
    /// The counter is shared by all connections, so a `Relaxed` increment is enough: the
    /// spread only has to be even, not ordered with anything else.
    pub(crate) fn next_turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// Host names (normalised) mapped to the backend that serves them, plus an index of the
/// backends by app name for the `X-App` header and path routing.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: NameMap<Arc<Backend>>,
    /// `*.example.com` is kept as `example.com`.
    wildcards: NameMap<Arc<Backend>>,
    apps: NameMap<Arc<Backend>>,
    /// Whether any app is path-routed: when none is, a request's path needs no lookup.
    any_path_routing: bool,
}

/// How [`RouteTable::route`] found a request's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteKind {
    /// The `X-App` header named the app.
    Header,
    /// The first path segment named a path-routed app, whose name is to be stripped.
    Path,
    /// The host, exactly or by a wildcard.
    Host,
}

/// The first segment of `path` (`"/docs/a"` gives `"docs"`), if it is not empty.
fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let segment = rest.split('/').next().unwrap_or(rest);
    (!segment.is_empty()).then_some(segment)
}

impl RouteTable {
    /// An empty table: every request gets the "no app" page.
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Routes `host` to `backend`, and records the backend under its app name for the
    /// `X-App` header and path routing (the last backend inserted for a name wins).
    ///
    /// The host is normalised (lower-case, port and trailing dot removed). `*.example.com`
    /// routes every name with one or more labels before `example.com` (`a.example.com`,
    /// `b.a.example.com`, not `example.com` itself); an exact name wins over a wildcard, and
    /// a longer wildcard suffix over a shorter one.
    ///
    /// A host that was already routed is re-routed. A host that is not a valid name is
    /// skipped with a warning, because the table is rebuilt from many apps at once and one
    /// bad name must not stop the others; call [`normalize_host_pattern`] first to report it.
    pub fn insert(&mut self, host: &str, backend: Arc<Backend>) {
        let Some(pattern) = normalize_host_pattern(host) else {
            tracing::warn!(host, app = %backend.app, "skipping route: not a valid host name");
            return;
        };
        self.apps.insert(backend.app.clone(), Arc::clone(&backend));
        // A backend replaced by one without path routing may leave this true: that only costs
        // a lookup that finds nothing path-routed.
        self.any_path_routing |= backend.path_routing;
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcards.insert(suffix.to_string(), backend),
            None => self.routes.insert(pattern, backend),
        };
    }

    /// The backend for `host`, which is normalised first: its exact name, else the
    /// wildcard with the longest matching suffix.
    pub fn lookup(&self, host: &str) -> Option<&Arc<Backend>> {
        self.lookup_normalized(&normalize_host_cow(host)?)
    }

    /// The backend for a host that is already normalised; the proxy normalises once and
    /// uses the result for both the lookup and the error page.
    pub(crate) fn lookup_normalized(&self, host: &str) -> Option<&Arc<Backend>> {
        if let Some(backend) = self.routes.get(host) {
            return Some(backend);
        }
        if self.wildcards.is_empty() {
            return None;
        }
        // Suffixes from the longest down; each leaves at least one label for the `*`.
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(backend) = self.wildcards.get(suffix) {
                return Some(backend);
            }
            rest = suffix;
        }
        None
    }

    /// The backend of the app named `app`, whatever its host names.
    pub fn lookup_app(&self, app: &str) -> Option<&Arc<Backend>> {
        self.apps.get(app)
    }

    /// The backend for a request to the normalised `host` with `path` (no query), and the
    /// `X-App` header if it had one; see the module documentation for the order.
    pub(crate) fn route(
        &self,
        host: &str,
        x_app: Option<&str>,
        path: &str,
    ) -> Option<(&Arc<Backend>, RouteKind)> {
        if let Some(backend) = x_app.and_then(|app| self.apps.get(app.trim())) {
            return Some((backend, RouteKind::Header));
        }
        let by_host = self.lookup_normalized(host);
        let by_path = (self.any_path_routing.then(|| first_segment(path)))
            .flatten()
            .and_then(|segment| self.apps.get(segment))
            .filter(|backend| backend.path_routing);
        match (by_path, by_host) {
            // On its own host names, the app's paths are its own: `/docs/x` at the docs
            // app's host is the docs app's `/docs/x`, not its `/x`.
            (Some(path_app), Some(host_app)) if path_app.app == host_app.app => {
                Some((host_app, RouteKind::Host))
            }
            (Some(path_app), _) => Some((path_app, RouteKind::Path)),
            (None, by_host) => by_host.map(|backend| (backend, RouteKind::Host)),
        }
    }

    /// The number of routed host names, wildcards included.
    pub fn len(&self) -> usize {
        self.routes.len() + self.wildcards.len()
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
    normalize_host_cow(raw).map(Cow::into_owned)
}

/// [`normalize_host`] without a copy when `raw` needs none: a lower-case name, with or
/// without a port or a trailing dot, is borrowed from `raw`. The proxy normalises the host
/// of every request, and most arrive in this form.
pub(crate) fn normalize_host_cow(raw: &str) -> Option<Cow<'_, str>> {
    if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        let port = if after.is_empty() { "" } else { after.strip_prefix(':')? };
        if !is_valid_port(port) {
            return None;
        }
        let ip: Ipv6Addr = literal.parse().ok()?;
        return Some(Cow::Owned(format!("[{ip}]")));
    }

    // The port is short and at the end: a loop finds its `:` sooner than `memrchr`.
    let colon = raw.bytes().rposition(|b| b == b':');
    let (name, port) = colon.map_or((raw, ""), |colon| (&raw[..colon], &raw[colon + 1..]));
    if !is_valid_port(port) {
        return None;
    }
    // "example.com." is the fully qualified spelling of "example.com"; both must match.
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > MAX_HOST_LEN {
        return None;
    }
    // One pass over the bytes: every label is non-empty and made of letters, digits, `-`
    // and `_`. Starting as if after a dot refuses an empty name and a leading dot.
    let mut after_dot = true;
    let mut has_upper_case = false;
    for &b in name.as_bytes() {
        let kind = HostByte::of(b);
        match kind {
            HostByte::Invalid => return None,
            HostByte::Dot if after_dot => return None,
            HostByte::UpperCase => has_upper_case = true,
            HostByte::Dot | HostByte::Other => {}
        }
        after_dot = kind == HostByte::Dot;
    }
    if after_dot {
        return None;
    }
    Some(if has_upper_case { Cow::Owned(name.to_ascii_lowercase()) } else { Cow::Borrowed(name) })
}

/// What a byte is to a host name: every byte of every request's host is asked, so the
/// answer is looked up rather than worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostByte {
    /// Not allowed in a name.
    Invalid,
    /// Between two labels.
    Dot,
    UpperCase,
    /// A lower-case letter, a digit, `-` or `_`.
    Other,
}

impl HostByte {
    fn of(b: u8) -> HostByte {
        static KINDS: [HostByte; 256] = {
            let mut kinds = [HostByte::Invalid; 256];
            let mut b = 0;
            while b < kinds.len() {
                kinds[b] = match b as u8 {
                    b'.' => HostByte::Dot,
                    b'A'..=b'Z' => HostByte::UpperCase,
                    b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => HostByte::Other,
                    _ => HostByte::Invalid,
                };
                b += 1;
            }
            kinds
        };
        KINDS[usize::from(b)]
    }
}

/// [`normalize_host`] for a name in the route table, which may also be a wildcard:
/// `"*.Example.com."` becomes `"*.example.com"`. A `*` anywhere but as the whole first
/// label, or before an IP literal, gives `None`.
pub fn normalize_host_pattern(raw: &str) -> Option<String> {
    match raw.strip_prefix("*.") {
        Some(suffix) if !suffix.starts_with('[') => {
            normalize_host(suffix).map(|suffix| format!("*.{suffix}"))
        }
        Some(_) => None,
        None => normalize_host(raw),
    }
}

/// An empty port is allowed by RFC 3986 (`example.com:` means the default port). Only
/// digits count, unlike for `str::parse`, which also takes a `+`.
fn is_valid_port(port: &str) -> bool {
    let mut value: u32 = 0;
    for b in port.bytes() {
        if !b.is_ascii_digit() {
            return false;
        }
        value = value * 10 + u32::from(b - b'0');
        if value > u32::from(u16::MAX) {
            return false;
        }
    }
    true
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
    fn normalize_host_cow_borrows_names_that_need_no_change() {
        // (raw, normalised, whether it is borrowed from `raw`)
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("example.com", Some("example.com"), true),
            ("myapp.example.com:8080", Some("myapp.example.com"), true),
            ("myapp.example.com.", Some("myapp.example.com"), true),
            ("myapp.example.com.:443", Some("myapp.example.com"), true),
            ("127.0.0.1:8000", Some("127.0.0.1"), true),
            ("my_app-1.local", Some("my_app-1.local"), true),
            ("MyApp.example.com", Some("myapp.example.com"), false),
            ("myapp.example.COM:80", Some("myapp.example.com"), false),
            ("[::1]:80", Some("[::1]"), false),
            ("", None, false),
            ("example..com", None, false),
            ("example.com..", None, false),
            ("exa mple.com", None, false),
        ];
        for (raw, expected, borrowed) in cases {
            let found = normalize_host_cow(raw);
            assert_eq!(found.as_deref(), *expected, "normalize_host_cow({raw:?})");
            assert_eq!(matches!(found, Some(Cow::Borrowed(_))), *borrowed, "{raw:?} borrowed");
        }
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
    fn turns_count_up_from_zero() {
        let backend = Backend::new("myapp", vec![]);
        let turns: Vec<usize> = (0..3).map(|_| backend.next_turn()).collect();
        assert_eq!(turns, [0, 1, 2]);
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

    fn backend(app: &str) -> Arc<Backend> {
        Arc::new(Backend::new(app, vec![]))
    }

    #[test]
    fn normalize_host_pattern_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("*.Example.com.", Some("*.example.com")),
            ("*.example.com:8080", Some("*.example.com")),
            ("*.com", Some("*.com")),
            ("Example.com", Some("example.com")),
            ("*", None),
            ("*.", None),
            ("**.example.com", None),
            ("a.*.example.com", None),
            ("*example.com", None),
            ("*.*.example.com", None),
            ("*.[::1]", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_host_pattern(raw).as_deref(), *expected, "{raw:?}");
        }
    }

    #[test]
    fn wildcard_precedence_table() {
        let mut table = RouteTable::new();
        table.insert("api.example.com", backend("exact"));
        table.insert("*.Example.com", backend("wild"));
        table.insert("*.a.example.com", backend("deeper"));
        table.insert("*.org", backend("tld"));
        table.insert("a.*.example.com", backend("bad"));
        assert_eq!(table.len(), 4);
        let cases: &[(&str, Option<&str>)] = &[
            ("api.example.com", Some("exact")),
            ("API.Example.com:8080", Some("exact")),
            ("x.example.com", Some("wild")),
            ("x.api.example.com", Some("wild")),
            ("a.example.com", Some("wild")),
            ("b.a.example.com", Some("deeper")),
            ("c.b.a.example.com", Some("deeper")),
            ("example.com", None),
            ("example.org", Some("tld")),
            ("b.a.example.org", Some("tld")),
            ("org", None),
            ("example.net", None),
            ("[::1]", None),
        ];
        for (host, expected) in cases {
            let found = table.lookup(host).map(|b| b.app.as_str());
            assert_eq!(found, *expected, "lookup({host:?})");
        }
        assert!(table.lookup_app("bad").is_none(), "a skipped route records no app");
    }

    #[test]
    fn route_order_is_header_then_path_routed_app_then_host() {
        let mut table = RouteTable::new();
        table.insert("site.example.com", backend("site"));
        table.insert("*.example.com", backend("wild"));
        table.insert("blog.example.com", backend("blog"));
        let docs = Arc::new(Backend::new("docs", vec![]).with_path_routing(true));
        table.insert("docs.example.com", docs);
        assert!(table.lookup_app("docs").unwrap().path_routing());
        assert!(!table.lookup_app("site").unwrap().path_routing());

        // (host, X-App, path, expected backend and how it was found)
        type Case =
            (&'static str, Option<&'static str>, &'static str, Option<(&'static str, RouteKind)>);
        let cases: &[Case] = &[
            ("site.example.com", None, "/", Some(("site", RouteKind::Host))),
            ("x.example.com", None, "/a", Some(("wild", RouteKind::Host))),
            // The header wins over host and path, when the app exists.
            ("site.example.com", Some("blog"), "/docs/a", Some(("blog", RouteKind::Header))),
            ("nobody.org", Some(" blog "), "/", Some(("blog", RouteKind::Header))),
            ("site.example.com", Some("nope"), "/", Some(("site", RouteKind::Host))),
            ("nobody.org", Some("nope"), "/", None),
            // A path-routed app's segment wins on any other host, known or not.
            ("site.example.com", None, "/docs/a", Some(("docs", RouteKind::Path))),
            ("site.example.com", None, "/docs", Some(("docs", RouteKind::Path))),
            ("nobody.org", None, "/docs/", Some(("docs", RouteKind::Path))),
            // ...but not on its own host, and only as the whole first segment.
            ("docs.example.com", None, "/docs/a", Some(("docs", RouteKind::Host))),
            ("site.example.com", None, "/docsx/a", Some(("site", RouteKind::Host))),
            ("site.example.com", None, "/a/docs", Some(("site", RouteKind::Host))),
            // An app without path routing never takes another host's paths.
            ("site.example.com", None, "/blog/a", Some(("site", RouteKind::Host))),
            ("nobody.org", None, "/blog/a", None),
            ("nobody.org", None, "/", None),
            ("nobody.org", None, "//docs", None),
        ];
        for (host, x_app, path, expected) in cases {
            let found = table.route(host, *x_app, path).map(|(b, kind)| (b.app.as_str(), kind));
            assert_eq!(found, *expected, "route({host:?}, {x_app:?}, {path:?})");
        }
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
