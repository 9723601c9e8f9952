//! The daemon's API as its clients see it: the wire types and a client over the unix socket.
//!
//! The server side (axum handlers) lives in `berth-daemon`, next to the state it serves; both
//! sides share the types here, so a field renamed on one side fails to compile on the other.

mod client;
mod wire;

pub use client::{Client, ClientError};
pub use wire::*;

/// The header the ssh entry sends with the key's fingerprint, for release history.
pub const WHO_HEADER: &str = "x-berth-who";
