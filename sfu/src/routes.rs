//! The remote addresses one session has taught the UDP driver, across ICE restarts (sans-IO).
//!
//! A route (remote address → session) is learnt only from an address the session's str0m has
//! *sent* to: it answers a STUN binding request only once the request's integrity checks out
//! (the client knows the ICE password), and sends media only on the pair the client nominated.
//! So a spoofed datagram can never make the driver route a flow to it.
//!
//! A session holds at most [`MAX_ROUTED_ADDRS`] routes of its current ICE generation. An ICE
//! restart (a client that changed networks) starts a new generation: the routes of before
//! become *stale*. They keep routing — a client that comes back on the same path is found at
//! once, and late packets of the old path are not lost — but no longer count against the limit,
//! so the new path is learnt however often the client moved. Once the transport is connected
//! again, the stale routes that were not used again are forgotten. At most
//! [`MAX_ROUTED_ADDRS`] stale routes are kept: a client that restarts again and again without
//! connecting loses its oldest ones first.

use std::net::SocketAddr;

use crate::session::MAX_ROUTED_ADDRS;

/// See the module docs.
#[derive(Debug, Default, Clone)]
pub struct Routes {
    current: Vec<SocketAddr>,
    stale: Vec<SocketAddr>,
    restarted: bool,
}

impl Routes {
    /// The session sent to `addr`: whether the UDP driver must be told to route it (to this
    /// session). False when it already routes it, or the session holds the most routes it may.
    pub fn sent_to(&mut self, addr: SocketAddr) -> bool {
        if self.current.contains(&addr) || self.current.len() >= MAX_ROUTED_ADDRS {
            return false;
        }
        self.stale.retain(|a| *a != addr);
        self.current.push(addr);
        // Told again even when it was a stale route: another session may have taken the
        // address over meanwhile, and telling the driver twice is harmless.
        true
    }

    /// ICE restarted: the current routes become stale. Returns the routes to forget now (the
    /// oldest stale ones beyond the limit).
    pub fn restarted(&mut self) -> Vec<SocketAddr> {
        for a in self.current.drain(..) {
            if !self.stale.contains(&a) {
                self.stale.push(a);
            }
        }
        self.restarted = true;
        let excess = self.stale.len().saturating_sub(MAX_ROUTED_ADDRS);
        self.stale.drain(..excess).collect()
    }

    /// The transport is connected: after a restart, returns the stale routes to forget (those
    /// the session did not send to again); otherwise nothing.
    pub fn connected(&mut self) -> Vec<SocketAddr> {
        if !std::mem::take(&mut self.restarted) {
            return Vec::new();
        }
        std::mem::take(&mut self.stale)
    }

    /// Whether ICE restarted and has not connected since.
    pub fn is_restarting(&self) -> bool {
        self.restarted
    }

    /// Routes of the current ICE generation.
    pub fn current(&self) -> &[SocketAddr] {
        &self.current
    }

    /// Routes of before the last restart still held.
    pub fn stale(&self) -> &[SocketAddr] {
        &self.stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    #[test]
    fn learns_each_address_once_up_to_the_limit() {
        let mut r = Routes::default();
        assert!(r.sent_to(addr(1)));
        assert!(!r.sent_to(addr(1)));
        for n in 2..=MAX_ROUTED_ADDRS as u16 {
            assert!(r.sent_to(addr(n)));
        }
        assert!(!r.sent_to(addr(100)), "beyond the limit");
        assert_eq!(r.current().len(), MAX_ROUTED_ADDRS);
        // Without a restart, connecting forgets nothing.
        assert!(r.connected().is_empty());
        assert_eq!(r.current().len(), MAX_ROUTED_ADDRS);
    }

    #[test]
    fn a_restart_makes_room_and_forgets_unused_routes_once_connected() {
        let mut r = Routes::default();
        for n in 1..=MAX_ROUTED_ADDRS as u16 {
            assert!(r.sent_to(addr(n)));
        }
        assert!(r.restarted().is_empty());
        assert!(r.is_restarting());
        assert_eq!(r.stale().len(), MAX_ROUTED_ADDRS);
        // The new path is learnt although the old generation was full.
        assert!(r.sent_to(addr(50)));
        // The client also came back on an old address: it becomes current again (and is
        // announced again, in case another session took it meanwhile).
        assert!(r.sent_to(addr(3)));
        assert!(!r.stale().contains(&addr(3)));
        let mut forgotten = r.connected();
        forgotten.sort();
        let expected: Vec<SocketAddr> = (1..=MAX_ROUTED_ADDRS as u16)
            .filter(|n| *n != 3)
            .map(addr)
            .collect();
        assert_eq!(forgotten, expected);
        assert!(!r.is_restarting());
        assert_eq!(r.current(), &[addr(50), addr(3)]);
        assert!(r.stale().is_empty());
        // Connecting again later forgets nothing more.
        assert!(r.connected().is_empty());
    }

    #[test]
    fn restarts_without_connecting_keep_a_bounded_number_of_stale_routes() {
        let mut r = Routes::default();
        let mut forgotten = Vec::new();
        for n in 1..=30u16 {
            assert!(r.sent_to(addr(n)));
            forgotten.extend(r.restarted());
            assert!(r.stale().len() <= MAX_ROUTED_ADDRS);
            assert!(r.current().is_empty());
        }
        // The oldest went first, each exactly once.
        let expected: Vec<SocketAddr> = (1..=30 - MAX_ROUTED_ADDRS as u16).map(addr).collect();
        assert_eq!(forgotten, expected);
        assert_eq!(r.connected().len(), MAX_ROUTED_ADDRS);
    }

    #[test]
    fn a_restart_does_not_duplicate_a_stale_route() {
        let mut r = Routes::default();
        assert!(r.sent_to(addr(1)));
        r.restarted();
        // The same address is current again, then the client restarts once more.
        assert!(r.sent_to(addr(1)));
        r.restarted();
        assert_eq!(r.stale(), &[addr(1)]);
    }
}
