//! Berth's HTTP/1.1 reverse proxy: routes each request by its host (exact or wildcard), an
//! `X-App` header or an opted-in path prefix to an app's least busy instance.
//!
//! The daemon owns a [`SharedRoutes`] cell and stores a new [`RouteTable`] into it whenever
//! apps start, stop or change names; [`serve`] reads one snapshot per request and never
//! touches the store, so a slow database cannot slow a visitor down.
//!
//! A backend can also have static directories and a catch-all file (piku's `static:`
//! worker, `NGINX_STATIC_PATHS` and `NGINX_CATCH_ALL`), which the router serves from disk
//! itself; see [`Backend::with_static`] and [`parse_static_paths`].
//!
//! Apps are told who asked through `X-Forwarded-For/Proto/Host/Port`, `Forwarded` and an
//! `X-Request-Id` (kept if sane, else made up) that also comes back in the response and is
//! in the log lines. WebSocket handshakes are forwarded and the two upgraded connections
//! joined, on connections served with upgrades.
//!
//! Requests for unknown hosts, stopped apps or apps that do not answer get a short HTML
//! page from the router itself (404, 502, 504) that tells the operator what to do next.
//!
//! What users configure nginx for is here too: per-app [`Limits`] (body size, time to
//! answer) and per-listener [`ServerLimits`] (head size, head and idle timeouts), with clear
//! errors; an [`AccessLog`] per app; HTTPS-only apps ([`Backend::with_https_only`]); a
//! listener that serves one app whatever the host ([`serve_app_port`]); and a response
//! cache for URL prefixes ([`Backend::with_cache`], kept across route tables by
//! [`CacheRegistry`]); access control by address ([`Backend::with_access`]: an allow list
//! of [`IpNet`]s, or Cloudflare's ranges only) and HTTP basic auth ([`Backend::with_basic_auth`],
//! passwords hashed by [`hash_password`]). [`Server`] builds a listener with non-default
//! settings.

mod access;
mod access_log;
mod balance;
mod basic_auth;
mod body;
mod cache;
mod connection;
mod error;
mod h1;
mod h1_server;
mod headers;
mod limits;
mod listener;
mod proxy;
mod server;
mod static_files;
mod table;
#[cfg(test)]
mod test_support;
mod upstream;

pub use access::{
    AccessRules, CLOUDFLARE_IPV4, CLOUDFLARE_IPV6, CLOUDFLARE_RANGES_DATE, IpNet, IpNetError,
    is_cloudflare, parse_ip_list,
};
pub use access_log::AccessLog;
pub use basic_auth::{BasicAuth, HashError, hash_password};
pub use cache::{CacheConfig, CacheRegistry, CacheStats};
pub use limits::{Limits, ServerLimits};
pub use listener::{Listener, spawn_per_core};
pub use server::{
    Http01Challenges, Server, serve, serve_app_port, serve_tls, serve_with_challenges,
};
pub use static_files::{StaticMount, parse_static_paths};
pub use table::{
    Backend, InFlight, RouteTable, SharedRoutes, normalize_host, normalize_host_pattern,
    shared_routes,
};
