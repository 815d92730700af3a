//! Paths: the address a connection talks to, and the new addresses its packets have come
//! from, which it challenges before trusting.
//!
//! A datagram from a new address is never acted on by itself: it only earns the address
//! credit (we send it no more bytes than it sent us) and a `PathChallenge`. The address is
//! validated when a `PathResponse` with the challenge's unpredictable token comes back from
//! it; after that its packets are processed, and the first one that is also the newest the
//! connection has seen moves the connection there.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::net::SocketAddr;
use core::time::Duration;

use crate::hash::{Domain, Prf, Sequence};
use crate::time::Instant;

/// New addresses tracked at once per connection; a further one replaces the least useful,
/// if its origin allows (see `Paths::candidate`).
const MAX_CANDIDATES: usize = 4;
/// Most credit an address accumulates (bytes we may send it before it answers).
const MAX_CREDIT: usize = 16 * 1024;
/// Shortest time between two challenges to one address.
const MIN_CHALLENGE_INTERVAL: Duration = Duration::from_millis(20);
/// A candidate nothing has come from for this long (and that is not being probed) is
/// forgotten: a stray or spoofed datagram would otherwise keep one for the connection's
/// life, and with it a visit to the connection on every datagram and timer.
const CANDIDATE_LIFETIME: Duration = Duration::from_secs(5);
/// A candidate made within this long is not pushed out by a new address.
const CANDIDATE_KEPT: Duration = Duration::from_secs(2);

/// A new address a connection's packets came from.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    addr: SocketAddr,
    token: u64,
    /// Bytes we may still send it: what it sent us, less what we sent it.
    credit: usize,
    validated: bool,
    challenge_due: bool,
    /// No new challenge before this.
    next_challenge: Instant,
    seen_at: Instant,
    /// When it was made: a new address may push it out only once it is `CANDIDATE_KEPT`
    /// old (a peer's real address answers its challenge within a round trip and is then
    /// validated, which protects it for good; made-up ones never answer).
    created_at: Instant,
    /// Challenges still to send unasked (a path this side probes: a hub named the address,
    /// or the peer's challenge came from it), one per `probe_interval`, credit or not.
    probes_left: u8,
    probe_interval: Duration,
}

impl Candidate {
    /// Probes are still to go out to it, unanswered.
    fn is_probing(&self) -> bool {
        self.probes_left > 0 && !self.validated
    }

    /// Neither validated nor being probed: an address a probe may push out.
    fn is_spent(&self) -> bool {
        self.probes_left == 0 && !self.validated
    }
}

/// Why an address becomes a candidate, which decides what it may push out when all places
/// are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A datagram came from it.
    Datagram,
    /// A hub named it (`Endpoint::probe_path`).
    Hub,
    /// The peer's path challenge came from it (a probe back).
    Challenge,
}

/// How a datagram's source address stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PathStatus {
    /// The connection's current address.
    Current,
    /// A new address that answered our challenge: its packets may be processed, and the
    /// newest of them moves the connection.
    Validated,
    /// A new address that has not answered yet: its packets are dropped.
    Unvalidated,
}

/// The addresses of one connection.
#[derive(Debug)]
pub(crate) struct Paths {
    pub(crate) current: SocketAddr,
    /// At most [`MAX_CANDIDATES`]; on the heap, so a connection that never sees another
    /// address (nearly all) holds none.
    candidates: Vec<Candidate>,
    key: Prf,
    tokens: Sequence,
    /// A connection tunnelled through a hub: its relay path and what it knows of the direct
    /// one. Boxed: only hub connections have one, and inline it would cost every connection
    /// 40 bytes more.
    relay: Option<Box<RelayPath>>,
}

/// What a connection tunnelled through a hub keeps of its paths.
#[derive(Debug)]
pub(crate) struct RelayPath {
    /// The relay path: always trusted, and where the connection returns when a direct path
    /// dies.
    addr: SocketAddr,
    /// When a packet last arrived over the direct path (a peer link off its relay).
    pub(crate) direct_heard: Instant,
    /// Addresses probed back because the peer's challenge came from them.
    pub(crate) probed_back: u8,
}

impl RelayPath {
    /// The relay path's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Paths {
    pub(crate) fn new(current: SocketAddr, key: Prf, now: Instant) -> Self {
        Paths {
            current,
            candidates: Vec::new(),
            key,
            tokens: Sequence::new(Domain::PathToken),
            relay: crate::hub::relay_user(current).map(|_| {
                Box::new(RelayPath {
                    addr: current,
                    direct_heard: now,
                    probed_back: 0,
                })
            }),
        }
    }

    /// An output of the connection's own keyed PRF, unpredictable to the peer.
    pub(crate) fn random(&self, domain: Domain, counter: u64) -> u64 {
        self.key.u64(domain, counter)
    }

    /// The relay path, if this connection is tunnelled through a hub.
    pub(crate) fn fallback(&self) -> Option<SocketAddr> {
        self.relay.as_ref().map(|r| r.addr)
    }

    /// A hub connection's path state, read for every datagram (for `MemoryHint`).
    pub(crate) fn hints(&self, f: &mut impl crate::hints::Sink) {
        if let Some(relay) = &self.relay {
            crate::hints::val(f, &**relay);
        }
    }

    /// The hub connection's path state (`None` off a hub).
    pub(crate) fn relay_mut(&mut self) -> Option<&mut RelayPath> {
        self.relay.as_deref_mut()
    }

    /// Whether the connection talks over a direct path it may fall back from.
    #[inline(always)]
    pub(crate) fn on_direct_path(&self) -> bool {
        self.relay.as_ref().is_some_and(|r| r.addr != self.current)
    }

    /// Gives back the candidates' buffer when there are none.
    pub(crate) fn trim(&mut self) {
        if self.candidates.is_empty() {
            self.candidates = Vec::new();
        }
    }

    /// The candidate for `addr`, made (evicting the least useful one) if new; `None` if no
    /// candidate may be pushed out for one from `origin`.
    fn candidate(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        origin: Origin,
    ) -> Option<&mut Candidate> {
        let i = match self.candidates.iter().position(|c| c.addr == addr) {
            Some(i) => i,
            None => {
                if self.candidates.len() >= MAX_CANDIDATES {
                    // Replace the least recently heard-from address, an unvalidated one if
                    // any: a flood of packets from made-up addresses must not push out one
                    // that has proven itself. Nor one made within `CANDIDATE_KEPT`: packets
                    // a rebinding peer sent from its new address before it was validated
                    // (never recorded, so not duplicates) could otherwise be replayed from
                    // fresh addresses to push that address out before it answers its
                    // challenge, again and again; and counting from when it was made, not
                    // last heard, a stream of replays cannot keep all four places for good.
                    // An address a hub named never pushes out one still being probed: of
                    // five named at once, the fifth would push out the first, the one the
                    // hub saw the peer at. One a challenge came from (the path the peer's
                    // NAT really opened) may push out the last named of those, never the
                    // first.
                    let victim = match origin {
                        Origin::Datagram => {
                            let oldest = self.least_useful(|_| true)?;
                            if now < self.candidates[oldest].created_at + CANDIDATE_KEPT {
                                return None;
                            }
                            oldest
                        }
                        Origin::Hub => self.least_useful(Candidate::is_spent)?,
                        Origin::Challenge => self
                            .least_useful(Candidate::is_spent)
                            .or_else(|| self.last_named_probe())?,
                    };
                    self.candidates.swap_remove(victim);
                }
                let token = self.tokens.next(&self.key);
                let fresh = Candidate {
                    addr,
                    token,
                    credit: 0,
                    validated: false,
                    challenge_due: false,
                    next_challenge: now,
                    seen_at: now,
                    created_at: now,
                    probes_left: 0,
                    probe_interval: MIN_CHALLENGE_INTERVAL,
                };
                self.candidates.push(fresh);
                self.candidates.len() - 1
            }
        };
        self.candidates.get_mut(i)
    }

    /// The candidate among those `eligible` least recently heard from, an unvalidated one
    /// if any.
    fn least_useful(&self, eligible: impl Fn(&Candidate) -> bool) -> Option<usize> {
        (0..self.candidates.len())
            .filter(|&i| eligible(&self.candidates[i]))
            .min_by_key(|&i| (self.candidates[i].validated, self.candidates[i].seen_at))
    }

    /// Of the candidates being probed, the one named last, if another was named before it.
    fn last_named_probe(&self) -> Option<usize> {
        let probing = || (0..self.candidates.len()).filter(|&i| self.candidates[i].is_probing());
        let order = |&i: &usize| (self.candidates[i].created_at, i);
        let first = probing().min_by_key(order)?;
        probing().filter(|&i| i != first).max_by_key(order)
    }

    /// Starts probing `addr` on this side's own initiative: `attempts` challenges, one per
    /// `interval`, whatever the address has sent (a hub named it, or a challenge came from
    /// it: `origin`; the attempts are few and small). Returns how many challenges it added:
    /// none for the current or a validated address, one with as many still to go, or when
    /// no place is free.
    pub(crate) fn probe(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        attempts: u8,
        interval: Duration,
        origin: Origin,
    ) -> u8 {
        if addr == self.current || Some(addr) == self.fallback() {
            return 0;
        }
        let Some(c) = self.candidate(now, addr, origin) else {
            return 0;
        };
        if c.validated || c.probes_left >= attempts {
            return 0;
        }
        let added = attempts - c.probes_left;
        if !c.is_probing() {
            // (One under way keeps its pace: more attempts, not a challenge at once.)
            c.next_challenge = now;
        }
        c.probes_left = attempts;
        c.probe_interval = interval.max(MIN_CHALLENGE_INTERVAL);
        added
    }

    /// Whether `addr` is tracked: being validated or probed, or kept a while after.
    pub(crate) fn is_candidate(&self, addr: SocketAddr) -> bool {
        self.candidates.iter().any(|c| c.addr == addr)
    }

    /// Whether any address is being validated or probed.
    pub(crate) fn has_candidates(&self) -> bool {
        !self.candidates.is_empty()
    }

    /// When the next probe is due, if any.
    pub(crate) fn next_probe(&self) -> Option<Instant> {
        self.candidates
            .iter()
            .filter(|c| c.probes_left > 0 && !c.validated)
            .map(|c| c.next_challenge)
            .min()
    }

    /// Classifies a datagram of `len` bytes from `from`, crediting a new address with it and
    /// scheduling a challenge to it if one is due.
    pub(crate) fn on_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        rtt: Duration,
    ) -> PathStatus {
        if from == self.current {
            return PathStatus::Current;
        }
        if Some(from) == self.fallback() {
            return PathStatus::Validated;
        }
        let Some(c) = self.candidate(now, from, Origin::Datagram) else {
            // Every candidate is busy: this address earns nothing now (its sender, if it
            // really moved, keeps sending and gets in once one is quiet).
            return PathStatus::Unvalidated;
        };
        c.seen_at = now;
        c.credit = (c.credit + len).min(MAX_CREDIT);
        if c.validated {
            return PathStatus::Validated;
        }
        if now >= c.next_challenge {
            c.challenge_due = true;
            c.next_challenge = now + (rtt * 2).max(MIN_CHALLENGE_INTERVAL);
        }
        PathStatus::Unvalidated
    }

    /// A challenge to send now, as (address, token), if one is due and the address has the
    /// credit for one of `size` bytes (protection adds its tag to `PATH_PACKET_LEN`).
    /// Candidates past their lifetime are forgotten first.
    pub(crate) fn poll_challenge(
        &mut self,
        now: Instant,
        size: usize,
    ) -> Option<(SocketAddr, u64)> {
        if !self.candidates.is_empty() {
            // (A probed one lives from its last probe: `next_challenge` is set past it.)
            self.candidates.retain(|c| {
                c.probes_left > 0 || now < c.seen_at.max(c.next_challenge) + CANDIDATE_LIFETIME
            });
        }
        let c = self.candidates.iter_mut().find(|c| {
            (c.challenge_due && c.credit >= size)
                || (c.probes_left > 0 && !c.validated && now >= c.next_challenge)
        })?;
        if c.challenge_due && c.credit >= size {
            c.credit -= size;
        } else {
            c.probes_left -= 1;
            c.next_challenge = now + c.probe_interval;
        }
        c.challenge_due = false;
        Some((c.addr, c.token))
    }

    /// A `PathResponse` arrived from `from`. True if it validates that address.
    pub(crate) fn on_response(&mut self, from: SocketAddr, token: u64) -> bool {
        match self
            .candidates
            .iter_mut()
            .find(|c| c.addr == from && !c.validated)
        {
            // Constant-time enough: the token is single-use per address and 64 bits.
            Some(c) if c.token == token => {
                c.validated = true;
                c.challenge_due = false;
                c.probes_left = 0;
                true
            }
            _ => false,
        }
    }

    /// Moves the connection to `to` (a validated candidate). Returns the old address.
    pub(crate) fn migrate(&mut self, to: SocketAddr) -> SocketAddr {
        self.candidates.retain(|c| c.addr != to);
        core::mem::replace(&mut self.current, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PATH_PACKET_LEN;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    /// Paths at 10.0.0.1:1, a 50 ms round trip, and the time the tests start at.
    fn fresh_paths() -> (Paths, Duration, Instant) {
        let p = Paths::new(addr("10.0.0.1:1"), Prf::from_key([1; 16]), Instant::ZERO);
        (p, Duration::from_millis(50), Instant::from_millis(1))
    }

    #[test]
    fn fresh_addresses_cannot_push_out_a_candidate_made_recently() {
        let (mut p, rtt, t) = fresh_paths();
        let moved = addr("10.0.0.2:7");
        p.on_datagram(t, moved, 100, rtt);
        let (_, token) = p.poll_challenge(t, PATH_PACKET_LEN).expect("challenged");
        // Replays from a stream of fresh addresses, while the peer keeps sending from its
        // new one.
        for i in 0..100u16 {
            let now = t + Duration::from_millis(u64::from(i));
            for j in 0..4 {
                let fresh = SocketAddr::new([192, 0, 2, 7].into(), 1000 + 4 * i + j);
                p.on_datagram(now, fresh, 100, rtt);
            }
            p.on_datagram(now, moved, 100, rtt);
        }
        assert!(p.on_response(moved, token), "its token still validates it");
        // A quiet one gives way.
        let later = t + Duration::from_secs(3);
        let fresh = addr("10.0.0.3:7");
        p.on_datagram(later, fresh, 100, rtt);
        assert!(p.candidates.iter().any(|c| c.addr == fresh));
    }

    #[test]
    fn replays_from_the_same_addresses_cannot_hold_every_place_for_good() {
        let (mut p, rtt, t) = fresh_paths();
        let moved = addr("10.0.0.2:7");
        let mut got_in = None;
        for ms in (0..5_000u64).step_by(100) {
            let now = t + Duration::from_millis(ms);
            for j in 0..4u16 {
                let held = SocketAddr::new([192, 0, 2, 7].into(), 1000 + j);
                p.on_datagram(now, held, 100, rtt);
            }
            if ms >= 1_000 && got_in.is_none() {
                p.on_datagram(now, moved, 100, rtt);
                if p.candidates.iter().any(|c| c.addr == moved) {
                    got_in = Some(ms);
                }
            }
        }
        // Two seconds after the four were made, one gives way to the peer's new address.
        assert_eq!(got_in, Some(2_000));
    }

    #[test]
    fn a_candidate_nothing_comes_from_is_forgotten() {
        let (mut p, rtt, t) = fresh_paths();
        let stray = addr("10.0.0.9:1");
        assert_eq!(p.on_datagram(t, stray, 100, rtt), PathStatus::Unvalidated);
        assert!(p.poll_challenge(t, PATH_PACKET_LEN).is_some());
        assert!(p.has_candidates());
        // (Its lifetime runs from the later of when it was heard and its next challenge.)
        let later = t + CANDIDATE_LIFETIME;
        p.poll_challenge(later, PATH_PACKET_LEN);
        assert!(p.has_candidates(), "kept within its lifetime");
        p.poll_challenge(later + Duration::from_secs(1), PATH_PACKET_LEN);
        assert!(!p.has_candidates(), "forgotten after it");
        // One being probed (a hub named it) stays while probes are left, and for a lifetime
        // after the last, whose answer may still come.
        let start = t + CANDIDATE_LIFETIME * 2;
        let interval = Duration::from_secs(2);
        p.probe(start, stray, 3, interval, Origin::Hub);
        for i in 0..3 {
            assert!(p
                .poll_challenge(start + interval * i, PATH_PACKET_LEN)
                .is_some());
        }
        let last = start + interval * 2;
        p.poll_challenge(last + CANDIDATE_LIFETIME, PATH_PACKET_LEN);
        assert!(p.has_candidates(), "its answer may still come");
        p.poll_challenge(last + interval + CANDIDATE_LIFETIME, PATH_PACKET_LEN);
        assert!(!p.has_candidates());
    }

    #[test]
    fn a_new_address_is_challenged_within_its_credit_and_validated_by_the_token() {
        let (mut p, rtt, t) = fresh_paths();
        let new = addr("10.0.0.9:1");
        assert_eq!(p.on_datagram(t, new, 10, rtt), PathStatus::Unvalidated);
        assert_eq!(
            p.poll_challenge(t, PATH_PACKET_LEN),
            None,
            "10 bytes in do not pay for 21 out"
        );
        assert_eq!(p.on_datagram(t, new, 15, rtt), PathStatus::Unvalidated);
        let (to, token) = p.poll_challenge(t, PATH_PACKET_LEN).expect("now it may");
        assert_eq!(to, new);
        assert_eq!(p.poll_challenge(t, PATH_PACKET_LEN), None, "one at a time");
        assert!(!p.on_response(new, token ^ 1), "wrong token");
        assert!(!p.on_response(addr("10.0.0.8:1"), token), "wrong address");
        assert!(p.on_response(new, token));
        assert_eq!(p.on_datagram(t, new, 10, rtt), PathStatus::Validated);
        assert_eq!(p.migrate(new), addr("10.0.0.1:1"));
        assert_eq!(p.on_datagram(t, new, 10, rtt), PathStatus::Current);
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;
    use crate::wire::PATH_PACKET_LEN;

    #[test]
    fn a_probed_address_is_challenged_a_few_times_without_credit_until_it_answers() {
        let relay = crate::hub::relay_address(7);
        let direct: SocketAddr = "198.51.100.7:4000".parse().expect("address");
        let mut p = Paths::new(relay, Prf::from_key([2; 16]), Instant::ZERO);
        assert_eq!(p.fallback(), Some(relay));
        assert!(!p.on_direct_path());
        let t0 = Instant::from_millis(10);
        let every = Duration::from_millis(30);
        p.probe(t0, direct, 3, every, Origin::Hub);
        let (to, token) = p.poll_challenge(t0, PATH_PACKET_LEN).expect("first probe");
        assert_eq!(to, direct);
        assert_eq!(p.poll_challenge(t0, PATH_PACKET_LEN), None, "paced");
        assert_eq!(p.next_probe(), Some(t0 + every));
        assert!(p.poll_challenge(t0 + every, PATH_PACKET_LEN).is_some());
        assert!(p.poll_challenge(t0 + every * 2, PATH_PACKET_LEN).is_some());
        assert_eq!(
            p.poll_challenge(t0 + every * 3, PATH_PACKET_LEN),
            None,
            "three only"
        );
        assert_eq!(p.next_probe(), None);
        assert!(p.on_response(direct, token));
        p.migrate(direct);
        assert!(p.on_direct_path());
        // The relay stays trusted: its packets move the connection back.
        assert_eq!(p.on_datagram(t0, relay, 50, every), PathStatus::Validated);
    }

    /// A hub names a peer's address as it saw it first, then up to four it announced: with
    /// four places, the fifth is not probed rather than pushing out the first.
    #[test]
    fn a_fifth_address_probed_at_once_pushes_out_none_of_the_first_four() {
        let relay = crate::hub::relay_address(7);
        let mut p = Paths::new(relay, Prf::from_key([2; 16]), Instant::ZERO);
        let t0 = Instant::from_millis(10);
        let named: Vec<SocketAddr> = (1..=5)
            .map(|i| SocketAddr::from(([192, 168, 1, i], 4000)))
            .collect();
        for &a in &named {
            p.probe(t0, a, 8, Duration::from_millis(30), Origin::Hub);
        }
        let first_round: Vec<SocketAddr> =
            core::iter::from_fn(|| p.poll_challenge(t0, PATH_PACKET_LEN).map(|(to, _)| to))
                .collect();
        assert_eq!(first_round, named[..4]);
    }

    /// The peer's challenge from an address of its own (the port its NAT really opened)
    /// gets a place among four addresses a hub named and still probed: the last named
    /// gives way, never the first, the one the hub saw the peer at. A hub-named fifth gets
    /// none, and an address probed already is not probed again.
    #[test]
    fn a_probe_back_pushes_out_the_last_named_probe_not_the_first() {
        let relay = crate::hub::relay_address(7);
        let mut p = Paths::new(relay, Prf::from_key([2; 16]), Instant::ZERO);
        let t0 = Instant::from_millis(10);
        let every = Duration::from_millis(30);
        let named: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([192, 168, 1, i], 4000)))
            .collect();
        for &a in &named {
            assert_eq!(p.probe(t0, a, 8, every, Origin::Hub), 8);
        }
        assert_eq!(
            p.probe(t0, named[0], 8, every, Origin::Hub),
            0,
            "probed already"
        );
        assert_eq!(p.probe(t0, named[0], 2, every, Origin::Challenge), 0);
        let fifth = SocketAddr::from(([198, 51, 100, 5], 4000));
        assert_eq!(p.probe(t0, fifth, 8, every, Origin::Hub), 0, "no place");
        let opened = SocketAddr::from(([198, 51, 100, 9], 61000));
        assert_eq!(p.probe(t0, opened, 2, every, Origin::Challenge), 2);
        let first_round: Vec<SocketAddr> =
            core::iter::from_fn(|| p.poll_challenge(t0, PATH_PACKET_LEN).map(|(to, _)| to))
                .collect();
        assert!(first_round.contains(&named[0]) && first_round.contains(&opened));
        assert!(!first_round.contains(&named[3]), "{first_round:?}");
    }

    /// A probe under way that gets more attempts (a hub names the address a probe back
    /// started on) keeps its pace: no challenge at once on top of the last.
    #[test]
    fn more_attempts_for_a_probe_under_way_keep_its_pace() {
        let relay = crate::hub::relay_address(7);
        let mut p = Paths::new(relay, Prf::from_key([2; 16]), Instant::ZERO);
        let t0 = Instant::from_millis(10);
        let every = Duration::from_millis(30);
        let a = SocketAddr::from(([198, 51, 100, 9], 61000));
        assert_eq!(p.probe(t0, a, 2, every, Origin::Challenge), 2);
        assert!(p.poll_challenge(t0, PATH_PACKET_LEN).is_some());
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(p.probe(t1, a, 8, every, Origin::Hub), 7);
        assert_eq!(p.poll_challenge(t1, PATH_PACKET_LEN), None, "paced");
        assert!(p.poll_challenge(t0 + every, PATH_PACKET_LEN).is_some());
    }
}
