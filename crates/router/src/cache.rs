//! A response cache for URL prefixes, in place of piku's nginx cache
//! (`NGINX_CACHE_PREFIXES`, `NGINX_CACHE_TIME`, `NGINX_CACHE_SIZE`): in memory, per app, an
//! LRU bounded by the total size of the bodies it holds.
//!
//! Only what is safe to share between visitors is kept: `GET` requests without
//! `Authorization` or `Cookie` (those bypass the cache both ways), under one of the app's
//! prefixes, answered with a 200 whose length is known and at most [`MAX_ENTRY_BYTES`],
//! without `Set-Cookie`, and whose `Cache-Control` allows it (`no-store`, `no-cache` and
//! `private` forbid it; `s-maxage`, then `max-age`, replace the default time to live). A
//! `Vary` header is honoured by remembering the request's values of the headers it names:
//! another value is a miss (`Vary: *` is never stored).
//!
//! Entries are keyed by normalised host, path and query. Hits are answered without
//! contacting the app and carry `X-Cache: HIT` and an `Age`; responses from the app to
//! requests that could have been cached carry `X-Cache: MISS` (or `BYPASS` when the request
//! had credentials).
//!
//! Each app's cache lives in a process-wide registry keyed by the app's name, so it
//! survives the route-table swaps of a redeploy; the daemon empties it with
//! [`CacheRegistry::clear`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, COOKIE, HeaderMap, HeaderName, HeaderValue,
    SET_COOKIE, VARY,
};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use crate::body::ResponseBody;

/// The largest body kept, whatever the cache's size: large files are better served from
/// disk (static paths) than held in memory.
pub(crate) const MAX_ENTRY_BYTES: usize = 1024 * 1024;

pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Which responses of an app are cached; see [`crate::Backend::with_cache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// URL path prefixes whose responses may be cached, matched as string prefixes of the
    /// path the app sees (as nginx's `location ^~ /prefix` does); `/static` also covers
    /// `/static/app.css` and `/staticfoo`. A prefix without a leading `/` gets one.
    pub prefixes: Vec<String>,
    /// How long a response is fresh when its `Cache-Control` does not say.
    pub default_ttl: Duration,
    /// The most body bytes the app's cache holds; the least recently used entries are
    /// evicted to stay under it.
    pub max_bytes: usize,
}

impl Default for CacheConfig {
    /// No prefixes (nothing cached), piku's hour for `NGINX_CACHE_TIME`, and 64 MiB.
    fn default() -> CacheConfig {
        CacheConfig {
            prefixes: Vec::new(),
            default_ttl: Duration::from_secs(3600),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The process-wide registry of the apps' caches, keyed by app name.
///
/// [`crate::Backend::with_cache`] takes the app's cache from here (making it on first use),
/// so every route table built for the app shares it.
#[derive(Debug)]
pub struct CacheRegistry {
    _private: (),
}

/// How an app's cache is doing, for `berth` to report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    /// The total size of the bodies held.
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
}

fn registry() -> MutexGuard<'static, HashMap<String, Arc<AppCache>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<AppCache>>>> = OnceLock::new();
    let registry = REGISTRY.get_or_init(Mutex::default);
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CacheRegistry {
    /// Empties `app`'s cache, e.g. after a deploy whose responses differ. Call it after
    /// storing the new route table: until then the old release may still fill it.
    pub fn clear(app: &str) {
        let cache = registry().get(app).cloned();
        if let Some(cache) = cache {
            cache.clear();
        }
    }

    /// The state of `app`'s cache, if it has one.
    pub fn stats(app: &str) -> Option<CacheStats> {
        let cache = registry().get(app).cloned()?;
        Some(cache.stats())
    }

    /// `app`'s cache, made on first use, now bounded by `max_bytes`.
    pub(crate) fn for_app(app: &str, max_bytes: usize) -> Arc<AppCache> {
        let cache = Arc::clone(registry().entry(app.to_string()).or_default());
        cache.set_max_bytes(max_bytes);
        cache
    }
}

/// A backend's cache: its configuration and the app's shared store.
#[derive(Debug, Clone)]
pub(crate) struct BackendCache {
    prefixes: Vec<String>,
    default_ttl: Duration,
    store: Arc<AppCache>,
}

impl BackendCache {
    pub(crate) fn new(app: &str, config: CacheConfig) -> BackendCache {
        let prefixes = config
            .prefixes
            .iter()
            .map(|prefix| prefix.trim())
            .filter(|prefix| !prefix.is_empty())
            .map(|prefix| format!("/{}", prefix.trim_start_matches('/')))
            .collect();
        let store = CacheRegistry::for_app(app, config.max_bytes);
        BackendCache { prefixes, default_ttl: config.default_ttl, store }
    }

    /// What to do with a request for `app_path` (the path the app would see), keyed by
    /// `key` (normalised host, then the request target's path and query).
    pub(crate) fn lookup(
        &self,
        method: &Method,
        headers: &HeaderMap,
        app_path: &str,
        key: String,
    ) -> Lookup {
        if method != Method::GET || !self.prefixes.iter().any(|p| app_path.starts_with(p)) {
            return Lookup::NotCached;
        }
        if headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE) {
            return Lookup::Bypass;
        }
        let now = Instant::now();
        if let Some(entry) = self.store.get(&key, headers, now) {
            self.store.hits.fetch_add(1, Ordering::Relaxed);
            return Lookup::Hit(Box::new(entry.to_response(now)));
        }
        self.store.misses.fetch_add(1, Ordering::Relaxed);
        let miss = CacheMiss {
            store: Arc::clone(&self.store),
            key,
            request_headers: headers.clone(),
            default_ttl: self.default_ttl,
        };
        Lookup::Miss(miss)
    }
}

/// The cache's verdict on a request.
pub(crate) enum Lookup {
    /// Answer with this, without contacting the app (boxed: a response is several times
    /// the size of the other verdicts, and every lookup would carry that size).
    Hit(Box<Response<ResponseBody>>),
    /// Ask the app; its response may be stored.
    Miss(CacheMiss),
    /// Cacheable but for the visitor's credentials: ask the app and store nothing.
    Bypass,
    /// Not a request the cache is for.
    NotCached,
}

/// A request the cache could not answer, kept to store the app's response.
pub(crate) struct CacheMiss {
    store: Arc<AppCache>,
    key: String,
    request_headers: HeaderMap,
    default_ttl: Duration,
}

impl CacheMiss {
    /// A recorder that stores the response as its body passes through, if the response may
    /// be stored; `headers` are those the visitor gets (hop-by-hop headers removed).
    pub(crate) fn recorder(self, status: StatusCode, headers: &HeaderMap) -> Option<Recorder> {
        let max_len = MAX_ENTRY_BYTES.min(self.store.max_bytes.load(Ordering::Relaxed));
        let ttl = storable_for(status, headers, self.default_ttl, max_len)?;
        let length = content_length(headers)?;
        let vary = vary_values(headers, &self.request_headers)?;
        let mut headers = headers.clone();
        headers.remove(X_CACHE);
        headers.remove(AGE);
        let pending = Pending { status, headers, ttl, vary };
        let mut recorder = Recorder {
            store: self.store,
            key: self.key,
            pending: Some(pending),
            expected: length,
            body: BytesMut::with_capacity(length),
        };
        // An empty body may never be polled, so it is complete already.
        recorder.observe(&[]);
        Some(recorder)
    }
}

/// The response's time to live, if a shared cache may store it at all.
fn storable_for(
    status: StatusCode,
    headers: &HeaderMap,
    default_ttl: Duration,
    max_len: usize,
) -> Option<Duration> {
    if status != StatusCode::OK || headers.contains_key(SET_COOKIE) {
        return None;
    }
    if content_length(headers)? > max_len {
        return None;
    }
    freshness(headers, default_ttl)
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// How long a response stays fresh according to its `Cache-Control`, or `None` if a
/// shared cache must not store it.
pub(crate) fn freshness(headers: &HeaderMap, default_ttl: Duration) -> Option<Duration> {
    let (mut max_age, mut s_maxage) = (None, None);
    let directives = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for directive in directives {
        let (name, argument) = match directive.split_once('=') {
            Some((name, argument)) => (name.trim(), Some(argument.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        let seconds = || argument.and_then(|argument| argument.parse::<u64>().ok());
        if name.eq_ignore_ascii_case("no-store")
            || name.eq_ignore_ascii_case("no-cache")
            || name.eq_ignore_ascii_case("private")
        {
            return None;
        } else if name.eq_ignore_ascii_case("max-age") {
            max_age = Some(seconds()?);
        } else if name.eq_ignore_ascii_case("s-maxage") {
            s_maxage = Some(seconds()?);
        }
    }
    let ttl = s_maxage.or(max_age).map_or(default_ttl, Duration::from_secs);
    (!ttl.is_zero()).then_some(ttl)
}

/// The request's values of the headers the response's `Vary` names, or `None` for
/// `Vary: *`.
fn vary_values(
    response_headers: &HeaderMap,
    request_headers: &HeaderMap,
) -> Option<Vec<(HeaderName, Vec<HeaderValue>)>> {
    let mut vary = Vec::new();
    let names = response_headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty());
    for name in names {
        if name == "*" {
            return None;
        }
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else { return None };
        let values = request_headers.get_all(&name).iter().cloned().collect();
        vary.push((name, values));
    }
    Some(vary)
}

/// A stored response.
#[derive(Debug)]
pub(crate) struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored_at: Instant,
    expires_at: Instant,
    vary: Vec<(HeaderName, Vec<HeaderValue>)>,
}

impl Entry {
    fn matches(&self, request_headers: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, values)| request_headers.get_all(name).iter().eq(values))
    }

    fn to_response(&self, now: Instant) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::Page(Full::new(self.body.clone())));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        let age = now.saturating_duration_since(self.stored_at).as_secs();
        let headers = response.headers_mut();
        headers.insert(AGE, HeaderValue::from(age));
        headers.insert(X_CACHE, HeaderValue::from_static("HIT"));
        response
    }
}

/// What is known of a response before its body has passed.
struct Pending {
    status: StatusCode,
    headers: HeaderMap,
    ttl: Duration,
    vary: Vec<(HeaderName, Vec<HeaderValue>)>,
}

/// Copies a response body as it is relayed, and stores the response once the body is
/// complete; a body that ends early, or runs longer than announced, is not stored.
pub(crate) struct Recorder {
    store: Arc<AppCache>,
    key: String,
    /// `None` once stored or given up.
    pending: Option<Pending>,
    expected: usize,
    body: BytesMut,
}

impl Recorder {
    pub(crate) fn observe(&mut self, chunk: &[u8]) {
        if self.pending.is_none() {
            return;
        }
        if self.body.len() + chunk.len() > self.expected {
            self.pending = None;
            return;
        }
        self.body.extend_from_slice(chunk);
        if self.body.len() == self.expected
            && let Some(pending) = self.pending.take()
        {
            let now = Instant::now();
            let entry = Entry {
                status: pending.status,
                headers: pending.headers,
                body: std::mem::take(&mut self.body).freeze(),
                stored_at: now,
                expires_at: now + pending.ttl,
                vary: pending.vary,
            };
            self.store.insert(std::mem::take(&mut self.key), entry);
        }
    }
}

/// One app's entries, least recently used first out.
#[derive(Debug, Default)]
pub(crate) struct AppCache {
    lru: Mutex<Lru>,
    max_bytes: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct Lru {
    slots: HashMap<String, Slot>,
    /// Keys by the tick of their last use; the first is the least recently used.
    order: BTreeMap<u64, String>,
    next_tick: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    tick: u64,
    entry: Arc<Entry>,
}

impl Lru {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn remove(&mut self, key: &str) {
        if let Some(slot) = self.slots.remove(key) {
            self.order.remove(&slot.tick);
            self.bytes -= slot.entry.body.len();
        }
    }

    fn evict_to(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((_, key)) = self.order.pop_first() else { break };
            if let Some(slot) = self.slots.remove(&key) {
                self.bytes -= slot.entry.body.len();
            }
        }
    }
}

impl AppCache {
    fn lru(&self) -> MutexGuard<'_, Lru> {
        // Every change to the LRU leaves it consistent before anything can panic.
        self.lru.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_max_bytes(&self, max_bytes: usize) {
        if self.max_bytes.swap(max_bytes, Ordering::Relaxed) != max_bytes {
            self.lru().evict_to(max_bytes);
        }
    }

    /// The fresh entry for `key` that suits these request headers, marked as just used.
    fn get(&self, key: &str, request_headers: &HeaderMap, now: Instant) -> Option<Arc<Entry>> {
        let mut lru = self.lru();
        let slot = lru.slots.get(key)?;
        if slot.entry.expires_at <= now {
            lru.remove(key);
            return None;
        }
        if !slot.entry.matches(request_headers) {
            return None;
        }
        let (old_tick, entry) = (slot.tick, Arc::clone(&slot.entry));
        let tick = lru.tick();
        if let Some(key) = lru.order.remove(&old_tick) {
            lru.order.insert(tick, key);
        }
        if let Some(slot) = lru.slots.get_mut(key) {
            slot.tick = tick;
        }
        Some(entry)
    }

    fn insert(&self, key: String, entry: Entry) {
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        let mut lru = self.lru();
        lru.remove(&key);
        if entry.body.len() > max_bytes.min(MAX_ENTRY_BYTES) {
            return;
        }
        let tick = lru.tick();
        lru.bytes += entry.body.len();
        lru.order.insert(tick, key.clone());
        lru.slots.insert(key, Slot { tick, entry: Arc::new(entry) });
        lru.evict_to(max_bytes);
    }

    fn clear(&self) {
        let mut lru = self.lru();
        lru.slots.clear();
        lru.order.clear();
        lru.bytes = 0;
    }

    fn stats(&self) -> CacheStats {
        let lru = self.lru();
        CacheStats {
            entries: lru.slots.len(),
            bytes: lru.bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as headers;

    fn entry(body: &str, ttl: Duration, now: Instant) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
            stored_at: now,
            expires_at: now + ttl,
            vary: Vec::new(),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn freshness_follows_cache_control() {
        type Case = (&'static [(&'static str, &'static str)], Option<u64>);
        let cases: &[Case] = &[
            (&[], Some(3600)),
            (&[("cache-control", "public")], Some(3600)),
            (&[("cache-control", "max-age=60")], Some(60)),
            (&[("cache-control", "public, max-age=60, s-maxage=10")], Some(10)),
            (&[("cache-control", "s-maxage=\"5\"")], Some(5)),
            (&[("cache-control", "max-age=0")], None),
            (&[("cache-control", "max-age=soon")], None),
            (&[("cache-control", "no-store")], None),
            (&[("cache-control", "No-Cache")], None),
            (&[("cache-control", "private=\"set-cookie\", max-age=60")], None),
            (&[("cache-control", "max-age=60"), ("cache-control", "private")], None),
        ];
        for (pairs, expected) in cases {
            let found = freshness(&headers(pairs), HOUR).map(|ttl| ttl.as_secs());
            assert_eq!(found, *expected, "{pairs:?}");
        }
    }

    #[test]
    fn only_complete_known_length_200s_without_cookies_are_storable() {
        let ok = headers(&[("content-length", "5")]);
        assert_eq!(storable_for(StatusCode::OK, &ok, HOUR, 10), Some(HOUR));
        assert_eq!(storable_for(StatusCode::NOT_FOUND, &ok, HOUR, 10), None);
        assert_eq!(storable_for(StatusCode::OK, &HeaderMap::new(), HOUR, 10), None);
        assert_eq!(storable_for(StatusCode::OK, &ok, HOUR, 4), None);
        let cookie = headers(&[("content-length", "5"), ("set-cookie", "a=b")]);
        assert_eq!(storable_for(StatusCode::OK, &cookie, HOUR, 10), None);
        let vary_all = headers(&[("vary", "accept, *")]);
        assert!(vary_values(&vary_all, &HeaderMap::new()).is_none());
    }

    #[test]
    fn entries_expire_and_vary_is_honoured() {
        let cache = AppCache::default();
        cache.set_max_bytes(1000);
        let now = Instant::now();
        cache.insert("a".into(), entry("short", Duration::from_secs(10), now));
        assert!(cache.get("a", &HeaderMap::new(), now + Duration::from_secs(9)).is_some());
        assert!(cache.get("a", &HeaderMap::new(), now + Duration::from_secs(10)).is_none());
        assert_eq!(cache.stats().entries, 0, "an expired entry is removed when met");

        let response = headers(&[("vary", "Accept-Encoding"), ("content-length", "3")]);
        let gzip = headers(&[("accept-encoding", "gzip")]);
        let vary = vary_values(&response, &gzip).unwrap();
        cache.insert("b".into(), Entry { vary, ..entry("zip", HOUR, now) });
        assert!(cache.get("b", &gzip, now).is_some());
        assert!(cache.get("b", &HeaderMap::new(), now).is_none());
        assert!(cache.get("b", &headers(&[("accept-encoding", "br")]), now).is_none());
    }

    #[test]
    fn the_least_recently_used_entries_go_first_to_stay_under_the_size() {
        let cache = AppCache::default();
        cache.set_max_bytes(10);
        let now = Instant::now();
        let none = HeaderMap::new();
        cache.insert("a".into(), entry("aaaa", HOUR, now));
        cache.insert("b".into(), entry("bbbb", HOUR, now));
        assert!(cache.get("a", &none, now).is_some(), "a is now the most recently used");
        cache.insert("c".into(), entry("cccc", HOUR, now));
        assert!(cache.get("b", &none, now).is_none(), "b was the least recently used");
        assert!(cache.get("a", &none, now).is_some());
        assert!(cache.get("c", &none, now).is_some());
        assert_eq!(cache.stats().bytes, 8);

        // Too big for the whole cache: not stored, and the old entry under the key is gone.
        cache.insert("a".into(), entry("01234567890", HOUR, now));
        assert!(cache.get("a", &none, now).is_none());
        assert_eq!(cache.stats(), CacheStats { entries: 1, bytes: 4, hits: 0, misses: 0 });

        // Shrinking the bound evicts at once.
        cache.insert("d".into(), entry("dddd", HOUR, now));
        cache.set_max_bytes(4);
        assert_eq!(cache.stats().entries, 1);
        cache.clear();
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn a_recorder_stores_only_a_body_of_the_announced_length() {
        let store = Arc::new(AppCache::default());
        store.set_max_bytes(100);
        let miss = |key: &str| CacheMiss {
            store: Arc::clone(&store),
            key: key.into(),
            request_headers: HeaderMap::new(),
            default_ttl: HOUR,
        };
        let announced = headers(&[("content-length", "5"), ("x-cache", "MISS")]);
        let mut recorder = miss("whole").recorder(StatusCode::OK, &announced).unwrap();
        recorder.observe(b"hel");
        recorder.observe(b"lo");
        let stored = store.get("whole", &HeaderMap::new(), Instant::now()).unwrap();
        assert_eq!(stored.body, "hello");
        assert!(!stored.headers.contains_key(X_CACHE));

        let mut recorder = miss("long").recorder(StatusCode::OK, &announced).unwrap();
        recorder.observe(b"hello!");
        recorder.observe(b"");
        assert!(store.get("long", &HeaderMap::new(), Instant::now()).is_none());
        let recorder = miss("short").recorder(StatusCode::OK, &announced).unwrap();
        drop(recorder);
        assert!(store.get("short", &HeaderMap::new(), Instant::now()).is_none());

        let empty = headers(&[("content-length", "0")]);
        miss("empty").recorder(StatusCode::OK, &empty).unwrap();
        assert!(store.get("empty", &HeaderMap::new(), Instant::now()).is_some());
        let no_store = headers(&[("content-length", "5"), ("cache-control", "no-store")]);
        assert!(miss("x").recorder(StatusCode::OK, &no_store).is_none());
    }

    mod through_the_proxy {
        use super::*;
        use crate::table::{Backend, RouteTable, shared_routes};
        use crate::test_support::{Reply, Seen, get, recording_upstream_with, send, start_proxy};

        /// An app whose answers tell requests apart (`PATH #N`) and whose `Cache-Control`
        /// comes from the path.
        fn respond(seen: &Seen, n: usize) -> Response<Full<Bytes>> {
            let path = seen.line.split(' ').nth(1).unwrap_or_default().to_string();
            let mut response = Response::new(Full::new(Bytes::from(format!("{path} #{n}"))));
            let cache_control = if path.starts_with("/static/nostore") {
                Some("no-store")
            } else if path.starts_with("/static/private") {
                Some("private, max-age=60")
            } else if path.starts_with("/static/") {
                Some("public, max-age=60")
            } else {
                None
            };
            if let Some(value) = cache_control {
                response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static(value));
            }
            if path.starts_with("/static/cookie") {
                response.headers_mut().insert(SET_COOKIE, HeaderValue::from_static("a=b"));
            }
            response
        }

        fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
            reply.head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name).then(|| value.trim())
            })
        }

        fn table(app: &str, addrs: Vec<std::net::SocketAddr>) -> RouteTable {
            let config = CacheConfig {
                prefixes: vec!["/static".into(), "assets/".into()],
                ..CacheConfig::default()
            };
            let mut table = RouteTable::new();
            let backend = Backend::new(app, addrs).with_cache(config);
            table.insert("myapp.example.com", Arc::new(backend));
            table
        }

        fn with_header(target: &str, header: &str) -> String {
            format!(
                "GET {target} HTTP/1.1\r\nHost: myapp.example.com\r\n{header}\r\n\
                 Connection: close\r\n\r\n"
            )
        }

        #[tokio::test]
        async fn cached_prefixes_are_answered_without_the_app_until_cleared() {
            const APP: &str = "cache-through-the-proxy";
            let upstream = recording_upstream_with(Arc::new(respond)).await;
            let routes = shared_routes();
            routes.store(Arc::new(table(APP, vec![upstream.addr])));
            let proxy = start_proxy(Arc::clone(&routes)).await;
            let fetch = |target: &'static str| send(proxy.addr, get("myapp.example.com", target));

            let first = fetch("/static/app.css").await;
            assert_eq!((first.status, first.body.as_str()), (200, "/static/app.css #0"));
            assert_eq!(header(&first, "x-cache"), Some("MISS"));
            let again = fetch("/static/app.css").await;
            assert_eq!(again.body, "/static/app.css #0", "not answered from the cache");
            assert_eq!(header(&again, "x-cache"), Some("HIT"));
            assert_eq!(header(&again, "cache-control"), Some("public, max-age=60"));
            assert!(header(&again, "age").is_some());
            assert_ne!(header(&again, "x-request-id"), header(&first, "x-request-id"));
            assert_eq!(upstream.seen().len(), 1);

            // Another query is another entry; credentials bypass the cache both ways.
            assert_eq!(header(&fetch("/static/app.css?v=2").await, "x-cache"), Some("MISS"));
            for credentials in ["Cookie: session=1", "Authorization: Bearer x"] {
                let reply = send(proxy.addr, with_header("/static/app.css", credentials)).await;
                assert_eq!(header(&reply, "x-cache"), Some("BYPASS"), "{credentials}");
                assert!(reply.body.ends_with(&format!("#{}", upstream.seen().len() - 1)));
            }
            // The app's own word, and responses that are not for everyone, are kept to.
            for target in ["/static/nostore", "/static/private", "/static/cookie"] {
                fetch(target).await;
                let reply = fetch(target).await;
                assert_eq!(header(&reply, "x-cache"), Some("MISS"), "{target}");
            }
            // Outside the prefixes nothing is cached or marked; other prefixes work too.
            let reply = fetch("/other").await;
            assert_eq!(header(&reply, "x-cache"), None);
            fetch("/assets/logo.svg").await;
            assert_eq!(header(&fetch("/assets/logo.svg").await, "x-cache"), Some("HIT"));
            let head = "HEAD /static/app.css HTTP/1.1\r\nHost: myapp.example.com\r\n\
                        Connection: close\r\n\r\n";
            assert_eq!(header(&send(proxy.addr, head.into()).await, "x-cache"), None);

            // A new route table (a redeploy, even with the app stopped) keeps the cache...
            let n_asked = upstream.seen().len();
            routes.store(Arc::new(table(APP, vec![])));
            let reply = fetch("/static/app.css").await;
            assert_eq!(
                (reply.body.as_str(), header(&reply, "x-cache")),
                ("/static/app.css #0", Some("HIT"))
            );
            let stats = CacheRegistry::stats(APP).unwrap();
            assert!(stats.entries >= 3 && stats.hits >= 3 && stats.misses >= 3, "{stats:?}");

            // ...until the daemon clears it.
            routes.store(Arc::new(table(APP, vec![upstream.addr])));
            CacheRegistry::clear(APP);
            assert_eq!(CacheRegistry::stats(APP).unwrap().entries, 0);
            let reply = fetch("/static/app.css").await;
            assert_eq!(header(&reply, "x-cache"), Some("MISS"));
            assert_eq!(reply.body, format!("/static/app.css #{n_asked}"));
            assert_eq!(CacheRegistry::stats("no-such-app"), None);
        }
    }
}
