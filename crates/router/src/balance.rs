//! Which instance gets a request: the least busy one, skipping instances that just refused
//! a connection.
//!
//! Load is the number of requests under way to each instance (the same counters the
//! daemon drains by), read at the moment the request is routed. Health is passive: the
//! proxy never probes, it only remembers for a short while that an address failed to
//! connect, so that a crashed instance costs one refused connection instead of one per
//! request until the daemon takes it out of the routes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::table::Backend;

/// How long an address that refused a connection is tried only after every other one.
/// Long enough to spare visitors a crashed instance's refusals, short enough that a
/// restarted instance gets traffic again almost at once.
pub(crate) const UNHEALTHY_FOR: Duration = Duration::from_secs(2);

/// Addresses that recently failed to connect, with the time they failed; shared by every
/// connection and kept across route tables, since an address means the same instance in
/// each.
#[derive(Debug)]
pub(crate) struct PassiveHealth {
    failed_at: Mutex<HashMap<SocketAddr, Instant>>,
    unhealthy_for: Duration,
}

impl PassiveHealth {
    pub(crate) fn new(unhealthy_for: Duration) -> PassiveHealth {
        PassiveHealth { failed_at: Mutex::new(HashMap::new()), unhealthy_for }
    }

    /// Remembers that `addr` refused (or timed out) a connection just now.
    pub(crate) fn mark_failed(&self, addr: SocketAddr) {
        let now = Instant::now();
        let mut failed_at = self.failed_at.lock().unwrap_or_else(PoisonError::into_inner);
        // Expired marks are dropped here, so the map never holds more than the addresses
        // that failed within the window.
        failed_at.retain(|_, at| now.duration_since(*at) < self.unhealthy_for);
        failed_at.insert(addr, now);
    }

    /// Forgets a failure once `addr` answered, so that it is not ranked last any longer.
    pub(crate) fn mark_answered(&self, addr: SocketAddr) {
        let mut failed_at = self.failed_at.lock().unwrap_or_else(PoisonError::into_inner);
        if !failed_at.is_empty() {
            failed_at.remove(&addr);
        }
    }

    /// For each of `addrs`, whether it failed to connect within the window.
    fn recently_failed(&self, addrs: &[SocketAddr]) -> Vec<bool> {
        let failed_at = self.failed_at.lock().unwrap_or_else(PoisonError::into_inner);
        if failed_at.is_empty() {
            return vec![false; addrs.len()];
        }
        let now = Instant::now();
        addrs
            .iter()
            .map(|addr| {
                failed_at.get(addr).is_some_and(|at| now.duration_since(*at) < self.unhealthy_for)
            })
            .collect()
    }
}

/// The indexes of `backend.addrs` in the order to try them: healthy instances before ones
/// that failed recently, fewer requests under way first, and ties in round-robin order.
///
/// Instances that failed recently are still in the list, last: when every instance failed
/// recently they are all tried anyway, since one may be back and a 502 is certain otherwise.
pub(crate) fn attempt_order(backend: &Backend, health: &PassiveHealth) -> Vec<usize> {
    // The usual app has one web instance: nothing to rank.
    if backend.addrs.len() == 1 {
        return vec![0];
    }
    let turn = backend.next_turn();
    let recently_failed = health.recently_failed(&backend.addrs);
    let mut ranked: Vec<((bool, usize), usize)> = recently_failed
        .into_iter()
        .enumerate()
        .map(|(index, failed)| ((failed, backend.load(index)), index))
        .collect();
    // Stable, so equals stay in index order for the rotation below.
    ranked.sort_by_key(|&(rank, _)| rank);
    // Each group of equals is rotated by the turn, so that ties are shared evenly among
    // the tied instances (rotating all instances would give the one after a busy instance
    // a double share).
    let mut order = Vec::with_capacity(ranked.len());
    for equals in ranked.chunk_by(|a, b| a.0 == b.0) {
        let shift = turn % equals.len();
        let rotated = equals[shift..].iter().chain(&equals[..shift]);
        order.extend(rotated.map(|&(_, index)| index));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::InFlightGuard;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n).map(|port| SocketAddr::from(([127, 0, 0, 1], port))).collect()
    }

    #[test]
    fn idle_instances_are_taken_in_turn() {
        let backend = Backend::new("myapp", addrs(3));
        let health = PassiveHealth::new(UNHEALTHY_FOR);
        let firsts: Vec<usize> = (0..6).map(|_| attempt_order(&backend, &health)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(attempt_order(&backend, &health), [0, 1, 2]);
    }

    #[test]
    fn the_least_busy_instance_comes_first_and_ties_rotate() {
        let backend = Backend::new("myapp", addrs(3));
        let health = PassiveHealth::new(UNHEALTHY_FOR);
        let _busy =
            [InFlightGuard::new(backend.in_flight(0)), InFlightGuard::new(backend.in_flight(0))];
        let _one = InFlightGuard::new(backend.in_flight(1));
        // Instance 2 is idle, so it always comes first; 1 before 0 by load.
        for _ in 0..4 {
            assert_eq!(attempt_order(&backend, &health), [2, 1, 0]);
        }
        let _two = InFlightGuard::new(backend.in_flight(2));
        // 1 and 2 now tie at one request each: they take turns, 0 stays last.
        let orders: Vec<Vec<usize>> = (0..4).map(|_| attempt_order(&backend, &health)).collect();
        let firsts: Vec<usize> = orders.iter().map(|order| order[0]).collect();
        assert!(firsts == [1, 2, 1, 2] || firsts == [2, 1, 2, 1], "{orders:?}");
        assert!(orders.iter().all(|order| order[2] == 0), "{orders:?}");
    }

    #[test]
    fn failed_instances_go_last_until_the_window_ends_or_they_answer() {
        let backend = Backend::new("myapp", addrs(2));
        let health = PassiveHealth::new(Duration::from_secs(3600));
        health.mark_failed(backend.addrs[0]);
        for _ in 0..4 {
            assert_eq!(attempt_order(&backend, &health), [1, 0]);
        }
        // Both failed: both are still tried, so one that came back can answer.
        health.mark_failed(backend.addrs[1]);
        assert_eq!(attempt_order(&backend, &health).len(), 2);
        health.mark_answered(backend.addrs[0]);
        assert_eq!(attempt_order(&backend, &health), [0, 1]);

        let expired = PassiveHealth::new(Duration::ZERO);
        expired.mark_failed(backend.addrs[0]);
        let firsts: Vec<usize> = (0..2).map(|_| attempt_order(&backend, &expired)[0]).collect();
        assert!(firsts.contains(&0), "an expired mark still ranks the instance last");
    }

    #[test]
    fn no_instances_give_an_empty_order() {
        let backend = Backend::new("stopped", vec![]);
        assert!(attempt_order(&backend, &PassiveHealth::new(UNHEALTHY_FOR)).is_empty());
    }
}
