//! Berth's HTTP/1.1 reverse proxy: routes each request by its host to an app's instances.
//!
//! The daemon owns a [`SharedRoutes`] cell and stores a new [`RouteTable`] into it whenever
//! apps start, stop or change names; [`serve`] reads one snapshot per request and never
//! touches the store, so a slow database cannot slow a visitor down.
//!
//! Requests for unknown hosts, stopped apps or apps that do not answer get a short HTML
//! page from the router itself (404, 502) that tells the operator what to do next.

mod error;
mod headers;
mod proxy;
mod server;
mod table;

pub use server::serve;
pub use table::{Backend, RouteTable, SharedRoutes, normalize_host, shared_routes};
