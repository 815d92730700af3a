//! Packet protection as the application and an attacker on the path see it (the default
//! configuration, `Protection::Encrypted`):
//!
//! - a protected packet is accepted only whole: every single-bit change of a real one is
//!   dropped and counted (under `Unauthenticated`, or under the reason its clear header
//!   earns), and a replay is a duplicate;
//! - payloads never appear on the wire (they do in plain mode);
//! - a pinned server key admits the server that holds it and refuses any other within one
//!   round trip; a client's static key reaches the server's accept hook and `Connected`;
//! - connect tokens: a valid one reports its claims, and an expired, reused, foreign,
//!   misdirected or missing one is refused within one round trip with its own reason; the
//!   sealed part copied off the wire is useless without the client key;
//! - a plain peer and a protected one refuse each other with a clear reason;
//! - a forged `Accept` never ends a handshake, pinned or not;
//! - a server reports a connection only once the client's first packet proves it holds the
//!   keys, and a connection it never reported ends silently;
//! - a `Connect` that never completes ends no live connection (a proven restart does
//!   replace it); copies of one token hold at most one unconfirmed slot, and an unconfirmed
//!   connection lives no longer than a handshake; a replayed `Connect` with a small-order
//!   key costs one key exchange per cookie; an `Accept` naming an id another connection
//!   routes on is a protocol violation; a protected endpoint needs a secret seed, and
//!   tokens and static keys need protection; ephemeral keys are fresh per handshake, and
//!   runs repeat byte for byte.
//!
//! Every test is deterministic: seeded endpoints, seeded secrets, virtual time. Two links
//! are used: `Pair` (tests/common) for one client and one server, and `Net` below (several
//! endpoints routed by address, every event stamped with the virtual time it was seen at)
//! for the handshake tests that bound how long a refusal takes or need a second client.

mod common;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{addr, client_config, messages, plain, server_config, Dir, Pair};
use shoal_proto::fuzzing::wire::{Packet, HELLO_LEN};
use shoal_proto::token::{self, ConnectToken, TokenClaims, TokenConfig, TokenParams};
use shoal_proto::{
    Bytes, Config, ConfigError, ConnectError, ConnectOptions, ConnectionHandle, DisconnectReason,
    DropReason, Endpoint, Event, Instant, Keypair, PeerIdentity, Protection, RateLimit, SecretSeed,
    TAG_LEN,
};

// ------------------------------------------------------------------------ constants, helpers

/// One-way latency of both links (`Pair` and `Net` use the same).
const LATENCY: Duration = Duration::from_millis(10);
/// What a handshake outcome may take beyond its round trips (one event step, nothing more:
/// the links have no jitter).
const SLACK: Duration = Duration::from_millis(1);
/// The reliable channel of the default configuration.
const RELIABLE: u8 = 2;

const TYPE_HELLO: u8 = 0x31;
const TYPE_CONNECT: u8 = 0x33;
const TYPE_ACCEPT: u8 = 0x34;
const TYPE_REJECT: u8 = 0x35;
const TYPE_DATA: u8 = 0x36;

/// The wall-clock time the token servers are told it is at `Net`'s start.
const UNIX_NOW: u64 = 1_800_000_000;
/// The backend's token key, shared with the token servers.
const TOKEN_KEY: [u8; 32] = [0x7e; 32];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn disconnects<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<DisconnectReason> {
    events
        .into_iter()
        .filter_map(|e| match e {
            // A connection that ended, before connecting or after.
            Event::Disconnected { reason, .. } | Event::ConnectFailed { reason, .. } => {
                Some(*reason)
            }
            _ => None,
        })
        .collect()
}

fn connected<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<PeerIdentity> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Connected { identity, .. } => Some((**identity).clone()),
            _ => None,
        })
        .collect()
}

/// A connected `Pair`, quiet (everything acknowledged), with `payload` queued on the reliable
/// channel and its datagram taken straight out of the client: the server has not seen it.
struct Captured {
    p: Pair,
    client: ConnectionHandle,
    server: ConnectionHandle,
    datagram: Vec<u8>,
}

fn capture_data(client: Config, server: Config, payload: &[u8]) -> Captured {
    let mut p = Pair::new(client, server);
    let (c, s) = p.connect();
    p.run_for(Duration::from_millis(100));
    p.client
        .send(c, RELIABLE, Bytes::copy_from_slice(payload))
        .expect("send");
    let mut buf = vec![0u8; 1500];
    let t = p
        .client
        .poll_transmit(p.now, &mut buf)
        .expect("the message's datagram");
    let datagram = buf[..t.len].to_vec();
    assert_eq!(t.to, p.server_addr);
    assert_eq!(datagram[0], TYPE_DATA, "a Data packet");
    assert!(
        datagram.len() >= 13 + payload.len() + TAG_LEN,
        "the datagram carries the message ({} bytes)",
        datagram.len()
    );
    Captured {
        p,
        client: c,
        server: s,
        datagram,
    }
}

/// Takes the server's waiting events (without moving any datagram, unlike `Pair::flush`).
fn server_events_now(p: &mut Pair) -> Vec<Event> {
    std::iter::from_fn(|| p.server.poll_event()).collect()
}

// ------------------------------------------------------------------------ Net

const SERVER_ADDR: &str = "10.0.0.1:4000";
const CLIENT_ADDR: &str = "10.0.0.2:5000";
const SECOND_CLIENT_ADDR: &str = "10.0.0.3:5000";

/// One endpoint on the network, receiving at `addr` only.
struct Node {
    ep: Endpoint,
    addr: SocketAddr,
    /// Its events, with the virtual time each was polled at.
    events: Vec<(Instant, Event)>,
}

impl Node {
    fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().map(|(_, e)| e)
    }
}

/// Decides whether a datagram from `from` to `to` is delivered (it may also record it).
type Tap = Box<dyn FnMut(SocketAddr, SocketAddr, &[u8]) -> bool>;

type InFlight = Reverse<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>;

/// Endpoints joined by a network that routes by address, with a fixed one-way latency and a
/// virtual clock that jumps to the next arrival or timer.
struct Net {
    nodes: Vec<Node>,
    now: Instant,
    tap: Tap,
    in_flight: BinaryHeap<InFlight>,
    counter: u64,
    buf: Vec<u8>,
}

impl Net {
    fn new() -> Self {
        Net {
            nodes: Vec::new(),
            now: Instant::from_millis(1_000),
            tap: Box::new(|_, _, _| true),
            in_flight: BinaryHeap::new(),
            counter: 0,
            buf: vec![0; 65_536],
        }
    }

    fn add(&mut self, config: Config, at: &str) -> usize {
        self.nodes.push(Node {
            ep: Endpoint::new(config).expect("valid config"),
            addr: addr(at),
            events: Vec::new(),
        });
        self.nodes.len() - 1
    }

    fn ep(&mut self, node: usize) -> &mut Endpoint {
        &mut self.nodes[node].ep
    }

    /// Starts a connection from `client` to the node at `to` with `options`.
    fn connect(
        &mut self,
        client: usize,
        to: &str,
        options: &ConnectOptions<'_>,
    ) -> ConnectionHandle {
        let now = self.now;
        self.nodes[client]
            .ep
            .connect_with(now, addr(to), options)
            .expect("connect")
    }

    fn flush(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            while let Some(t) = self.nodes[i].ep.poll_transmit(now, &mut self.buf) {
                let from = self.nodes[i].addr;
                let bytes = self.buf[..t.len].to_vec();
                if (self.tap)(from, t.to, &bytes) {
                    self.counter += 1;
                    self.in_flight
                        .push(Reverse((now + LATENCY, self.counter, from, t.to, bytes)));
                }
            }
            let node = &mut self.nodes[i];
            while let Some(e) = node.ep.poll_event() {
                node.events.push((now, e));
            }
        }
    }

    fn next_event(&self) -> Option<Instant> {
        let arrival = self.in_flight.peek().map(|Reverse((t, ..))| *t);
        self.nodes
            .iter()
            .filter_map(|n| n.ep.poll_timeout())
            .chain(arrival)
            .min()
    }

    /// Advances to the next event (not beyond `limit`) and handles it. False when nothing
    /// happens before `limit`.
    fn step(&mut self, limit: Instant) -> bool {
        self.flush();
        let Some(next) = self.next_event().filter(|&t| t <= limit) else {
            self.now = limit;
            return false;
        };
        self.now = self.now.max(next);
        while let Some(Reverse((at, ..))) = self.in_flight.peek() {
            if *at > self.now {
                break;
            }
            let Some(Reverse((_, _, from, to, bytes))) = self.in_flight.pop() else {
                break;
            };
            let now = self.now;
            if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == to) {
                n.ep.handle_datagram(now, from, &bytes);
            }
        }
        let now = self.now;
        for n in &mut self.nodes {
            if n.ep.poll_timeout().is_some_and(|t| t <= now) {
                n.ep.handle_timeout(now);
            }
        }
        self.flush();
        true
    }

    fn run_for(&mut self, duration: Duration) {
        let limit = self.now + duration;
        while self.step(limit) {}
    }

    fn run_until(&mut self, max: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let limit = self.now + max;
        loop {
            if done(self) {
                return true;
            }
            if !self.step(limit) {
                return done(self);
            }
        }
    }

    /// Runs until `node` reports `Connected` or `ConnectFailed` (at most `max`), and returns
    /// that first outcome with the time it was seen.
    fn outcome(&mut self, node: usize, max: Duration) -> (Instant, Event) {
        let is_outcome =
            |e: &Event| matches!(e, Event::Connected { .. } | Event::ConnectFailed { .. });
        self.run_until(max, |net| net.nodes[node].events().any(is_outcome));
        self.nodes[node]
            .events
            .iter()
            .find(|(_, e)| is_outcome(e))
            .cloned()
            .expect("the handshake ended one way or the other")
    }
}

/// Asserts that a handshake outcome seen at `at` came `round_trips` round trips after `start`
/// (when the first handshake packet left), and not later than one event step after that.
fn assert_after_round_trips(at: Instant, start: Instant, round_trips: u32, what: &str) {
    let due = start + 2 * round_trips * LATENCY;
    assert!(
        at >= due && at <= due + SLACK,
        "{what}: seen {:?} after the first handshake packet, expected {:?} ({round_trips} \
         round trip(s) of {:?})",
        at - start,
        due - start,
        2 * LATENCY
    );
}

// ======================================================================== 1. integrity

/// What a single-bit flip of a protected `Data` datagram (at least 14 bytes, from a peer
/// whose packet numbers are far below 2^31) is dropped as: its clear header is routed on
/// before anything authenticates, the rest only ever fails the tag.
fn expected_drop(bit: usize) -> DropReason {
    let mask = 1u8 << (bit % 8);
    match bit / 8 {
        // The version nibble: 0x36 becomes version 2, 1, 7 or 11.
        0 if mask >= 0x10 => DropReason::UnknownVersion,
        // 0x3e: type 14 does not exist.
        0 if mask == 0x08 => DropReason::UnknownPacketType,
        // 0x32 (Challenge) and 0x34 (Accept): long-header types, decoded as such, and the
        // lengths do not fit (the caller checks that they cannot).
        0 if mask == 0x04 || mask == 0x02 => DropReason::Malformed,
        // 0x37 (Disconnect): still a short header for the connection; the type byte is
        // authenticated, so the tag fails.
        0 => DropReason::Unauthenticated,
        // The connection id: no such connection.
        1..=8 => DropReason::UnknownConnection,
        // The packet number's top bit: 2^31 behind the newest received, too old to tell
        // (nothing is opened).
        9 if mask == 0x80 => DropReason::DuplicatePacket,
        // Any other bit of the packet number (the nonce and associated data change), of the
        // ciphertext or of the tag.
        _ => DropReason::Unauthenticated,
    }
}

#[test]
fn every_single_bit_flip_of_a_protected_packet_is_rejected_and_counted() {
    let payload = b"integrity: every bit of this datagram is checked".to_vec();
    let Captured {
        mut p,
        client: c,
        server: s,
        datagram,
    } = capture_data(client_config(11), server_config(12), &payload);
    let len = datagram.len();
    // The flips to 0x32 and 0x34 must fail to decode as Challenge (33 bytes) or Accept (24,
    // 73 or 105 bytes): were the length one of those, the expectation would differ.
    assert!(
        ![24, 33, 73, 105].contains(&len),
        "the captured datagram's length {len} would decode as a long-header packet"
    );
    let conn_before = p.server.connection_stats(s).expect("live");
    let baseline = p.server.stats().drops;
    let mut expected = [0u64; DropReason::COUNT];
    for bit in 0..len * 8 {
        let before = p.server.stats().drops;
        let mut flipped = datagram.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        p.server.handle_datagram(p.now, p.client_addr, &flipped);
        let after = p.server.stats().drops;
        let want = expected_drop(bit);
        expected[want as usize] += 1;
        let changed: Vec<(DropReason, u64)> = DropReason::ALL
            .iter()
            .filter(|&&r| after.get(r) != before.get(r))
            .map(|&r| (r, after.get(r) - before.get(r)))
            .collect();
        assert_eq!(
            changed,
            vec![(want, 1)],
            "flipping bit {bit} (byte {}, mask {:#04x}) must be dropped once as {want:?}",
            bit / 8,
            1u8 << (bit % 8)
        );
        let events = server_events_now(&mut p);
        assert!(events.is_empty(), "bit {bit} produced events: {events:?}");
        assert!(p.server.is_connected(s), "bit {bit} changed the connection");
    }
    // Nothing reached the connection: its counters (drops included) did not move.
    let conn_after = p.server.connection_stats(s).expect("live");
    assert_eq!(conn_after.packets_received, conn_before.packets_received);
    assert_eq!(
        conn_after.messages_delivered,
        conn_before.messages_delivered
    );
    assert_eq!(conn_after.drops, conn_before.drops);
    // Endpoint-wide, by reason: 72 flips of the clear header are routed on and dropped for
    // what they say; the other bits (the flip to Disconnect, the packet number but its top
    // bit, the ciphertext and the tag) fail authentication.
    let totals = p.server.stats().drops;
    let delta = |r: DropReason| totals.get(r) - baseline.get(r);
    assert_eq!(delta(DropReason::UnknownVersion), 4);
    assert_eq!(delta(DropReason::UnknownPacketType), 1);
    assert_eq!(delta(DropReason::Malformed), 2);
    assert_eq!(delta(DropReason::UnknownConnection), 64);
    assert_eq!(delta(DropReason::DuplicatePacket), 1);
    assert_eq!(delta(DropReason::Unauthenticated), (len * 8 - 72) as u64);
    for r in DropReason::ALL {
        assert_eq!(delta(r), expected[r as usize], "{r:?}");
    }
    assert_eq!(
        totals.total() - baseline.total(),
        (len * 8) as u64,
        "one drop per flip"
    );

    // The original still opens, once: the message arrives exactly once, the client's
    // retransmissions notwithstanding.
    p.server.handle_datagram(p.now, p.client_addr, &datagram);
    p.run_for(Duration::from_secs(2));
    assert_eq!(
        messages(&p.server_events, RELIABLE),
        vec![payload],
        "delivered exactly once"
    );
    assert!(p.server.is_connected(s) && p.client.is_connected(c));
    assert!(disconnects(&p.server_events).is_empty());
    assert!(disconnects(&p.client_events).is_empty());
}

#[test]
fn a_replayed_protected_packet_is_a_duplicate() {
    let payload = b"replay me if you can".to_vec();
    let Captured {
        mut p,
        server: s,
        datagram,
        ..
    } = capture_data(client_config(21), server_config(22), &payload);
    let duplicates = |p: &Pair| {
        p.server
            .connection_stats(s)
            .expect("live")
            .drops
            .get(DropReason::DuplicatePacket)
    };
    let before = duplicates(&p);

    p.server.handle_datagram(p.now, p.client_addr, &datagram);
    assert_eq!(
        messages(&server_events_now(&mut p), RELIABLE),
        vec![payload]
    );
    assert_eq!(duplicates(&p), before);

    // The same bytes again, a little later: authentic, so opened, and then a duplicate.
    p.now += Duration::from_millis(3);
    p.server.handle_datagram(p.now, p.client_addr, &datagram);
    assert!(
        server_events_now(&mut p).is_empty(),
        "the replay delivers nothing"
    );
    assert_eq!(
        duplicates(&p),
        before + 1,
        "the replay is a duplicate packet"
    );
    assert_eq!(
        p.server.stats().drops.get(DropReason::Unauthenticated),
        0,
        "the replay is authentic, not forged"
    );
    assert!(p.server.is_connected(s));
}

/// An authentic packet replayed from another address is refused as a duplicate before its
/// address counts for anything: it earns that address no challenge (the server would
/// otherwise send packets wherever replays came from, and a stream of them from fresh
/// addresses would push a rebinding client's own address out of the candidates).
#[test]
fn a_replayed_protected_packet_from_a_new_address_earns_no_challenge() {
    let Captured {
        mut p,
        server: s,
        datagram,
        ..
    } = capture_data(client_config(23), server_config(24), b"once");
    p.server.handle_datagram(p.now, p.client_addr, &datagram);
    server_events_now(&mut p);
    let stats = |p: &Pair| p.server.connection_stats(s).expect("live");
    let before = stats(&p);
    for i in 0..8u16 {
        let from: SocketAddr = format!("203.0.113.9:{}", 1000 + i).parse().expect("addr");
        p.now += Duration::from_millis(30);
        p.server.handle_datagram(p.now, from, &datagram);
        let mut buf = vec![0u8; 1500];
        while let Some(t) = p.server.poll_transmit(p.now, &mut buf) {
            assert_ne!(t.to, from, "a datagram to the replay's address");
        }
    }
    let after = stats(&p);
    assert_eq!(after.path_challenges_sent, before.path_challenges_sent);
    assert_eq!(
        after.drops.get(DropReason::DuplicatePacket),
        before.drops.get(DropReason::DuplicatePacket) + 8
    );
    assert_eq!(after.drops.get(DropReason::UnvalidatedPath), 0);
    assert!(server_events_now(&mut p).is_empty());
    assert_eq!(p.server.remote_address(s), Some(p.client_addr));
}

/// A connected pair whose server takes one message and leaves its event unread (its event
/// budget is one byte), then is sent a second: returns the pair, the server's handle and the
/// second message's datagram, which the server has refused for room (not yet acknowledged).
fn refused_data(seed: u64) -> (Pair, ConnectionHandle, Vec<u8>) {
    let server = Config {
        max_pending_event_bytes: 1,
        ..server_config(seed)
    };
    let Captured {
        mut p,
        client: c,
        server: s,
        datagram: first,
    } = capture_data(client_config(seed + 1), server, b"first");
    p.server.handle_datagram(p.now, p.client_addr, &first);
    p.client.send(c, RELIABLE, &b"second"[..]).expect("send");
    let mut buf = vec![0u8; 1500];
    let t = p.client.poll_transmit(p.now, &mut buf).expect("a datagram");
    let refused = buf[..t.len].to_vec();
    let full = |p: &Pair| {
        p.server
            .connection_stats(s)
            .map_or(0, |st| st.drops.get(DropReason::EventQueueFull))
    };
    let before = full(&p);
    p.server.handle_datagram(p.now, p.client_addr, &refused);
    assert_eq!(full(&p), before + 1, "refused: the application is behind");
    (p, s, refused)
}

/// A packet the server refused for room (its application has not read the events before it)
/// is not acknowledged, so the peer resends its frames under a new number; a replay of it is a
/// duplicate. Before, each replay was taken apart again and refreshed the idle timer: anyone
/// on the path could keep a connection whose peer had gone open for good, one replay per idle
/// timeout.
#[test]
fn a_replayed_refused_packet_does_not_keep_a_dead_connection_alive() {
    let (mut p, s, refused) = refused_data(25);
    let mut buf = vec![0u8; 1500];
    let full = |p: &Pair| {
        p.server
            .connection_stats(s)
            .map_or(0, |st| st.drops.get(DropReason::EventQueueFull))
    };
    let before = full(&p);
    let duplicates = |p: &Pair| {
        p.server
            .connection_stats(s)
            .map_or(0, |st| st.drops.get(DropReason::DuplicatePacket))
    };
    let duplicates_before = duplicates(&p);
    // The client is gone; a replay of the refused packet arrives every second.
    let idle = p.server.config().idle_timeout;
    let start = p.now;
    let mut replays = 0;
    let mut counted = (0, 0);
    while p.server.is_connected(s) && p.now < start + idle * 3 {
        p.now += Duration::from_secs(1);
        p.server.handle_datagram(p.now, p.client_addr, &refused);
        if p.server.is_connected(s) {
            replays += 1;
            counted = (full(&p), duplicates(&p));
        }
        p.server.handle_timeout(p.now);
        while p.server.poll_transmit(p.now, &mut buf).is_some() {}
    }
    assert!(
        !p.server.is_connected(s),
        "replays kept the connection open {:?} past its idle timeout",
        p.now - start - idle
    );
    assert!(p.now <= start + idle + Duration::from_secs(1));
    // Each replay was dropped at once, not taken apart and refused again.
    assert_eq!(counted, (before, duplicates_before + replays));
    assert!(disconnects(&server_events_now(&mut p)).contains(&DisconnectReason::TimedOut));
}

/// The same replays from other addresses earn none of them a challenge: the refused packet
/// does not speak for an address any more than an accepted one.
#[test]
fn a_replayed_refused_packet_from_new_addresses_earns_no_challenge() {
    let (mut p, s, refused) = refused_data(27);
    let mut buf = vec![0u8; 1500];
    let stats = |p: &Pair| p.server.connection_stats(s).expect("live");
    let before = stats(&p);
    for i in 0..8u16 {
        let from: SocketAddr = format!("203.0.113.9:{}", 1000 + i).parse().expect("addr");
        p.now += Duration::from_millis(30);
        p.server.handle_datagram(p.now, from, &refused);
        while let Some(t) = p.server.poll_transmit(p.now, &mut buf) {
            assert_ne!(t.to, from, "a datagram to the replay's address");
        }
    }
    let after = stats(&p);
    assert_eq!(after.path_challenges_sent, before.path_challenges_sent);
    assert_eq!(after.drops.get(DropReason::UnvalidatedPath), 0);
    assert_eq!(
        after.drops.get(DropReason::DuplicatePacket),
        before.drops.get(DropReason::DuplicatePacket) + 8
    );
    assert_eq!(p.server.remote_address(s), Some(p.client_addr));
}

// ======================================================================== 2. confidentiality

/// A 32-byte pattern nothing else on the wire contains.
fn pattern() -> Vec<u8> {
    (0u8..32).map(|i| 0xa5 ^ i.wrapping_mul(37)).collect()
}

/// Connects, sends the pattern on the reliable channel, delivers it; returns every datagram
/// both ways.
fn wire_carrying_pattern(client: Config, server: Config) -> Vec<Vec<u8>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let mut p = Pair::new(client, server);
    let log = seen.clone();
    p.hook = Box::new(move |_, _, bytes| {
        log.borrow_mut().push(bytes.to_vec());
        vec![Duration::ZERO]
    });
    let (c, _) = p.connect();
    p.client.send(c, RELIABLE, pattern()).expect("send");
    assert!(p.run_until(Duration::from_secs(5), |p| !p
        .server_messages(RELIABLE)
        .is_empty()));
    assert_eq!(p.server_messages(RELIABLE), vec![pattern()]);
    p.run_for(Duration::from_millis(200));
    seen.take()
}

#[test]
fn protected_payloads_are_not_visible_on_the_wire() {
    let wire = wire_carrying_pattern(client_config(31), server_config(32));
    assert!(wire.len() >= 6, "a handshake and a message went by");
    for (i, d) in wire.iter().enumerate() {
        assert!(
            !contains(d, &pattern()),
            "datagram {i} ({} bytes, type {:#04x}) shows the payload",
            d.len(),
            d[0]
        );
    }
    // The control: without protection the same exchange shows it.
    let clear = wire_carrying_pattern(plain(client_config(31)), plain(server_config(32)));
    assert!(
        clear.iter().any(|d| contains(d, &pattern())),
        "in plain mode the payload is on the wire (else this test proves nothing)"
    );
}

// ======================================================================== 3. static keys

#[test]
fn a_pinned_server_key_accepts_the_right_server_and_refuses_another_within_one_round_trip() {
    let server_pair = Keypair::from_secret([0x5e; 32]);
    let public = server_pair.public_key();
    let server_cfg = || Config {
        static_keypair: Some(server_pair.clone()),
        ..server_config(42)
    };

    // The right key.
    let mut net = Net::new();
    let server = net.add(server_cfg(), SERVER_ADDR);
    let client = net.add(client_config(41), CLIENT_ADDR);
    let start = net.now;
    let options = ConnectOptions {
        server_key: Some(public),
        ..ConnectOptions::default()
    };
    net.connect(client, SERVER_ADDR, &options);
    let (at, outcome) = net.outcome(client, Duration::from_secs(10));
    let Event::Connected { identity, .. } = outcome else {
        panic!("the pinned server is accepted: {outcome:?}");
    };
    assert_eq!(
        identity.key,
        Some(public),
        "the client learns the proven key"
    );
    assert_eq!(identity.token, None);
    assert_after_round_trips(at, start, 2, "Connected");
    assert!(net.run_until(Duration::from_secs(1), |n| !connected(
        n.nodes[server].events()
    )
    .is_empty()));
    assert_eq!(
        connected(net.nodes[server].events())[0].key,
        None,
        "the client has no static key"
    );

    // Another key pinned: refused when the Accept arrives, long before any timeout.
    let mut net = Net::new();
    let server = net.add(server_cfg(), SERVER_ADDR);
    let client = net.add(client_config(43), CLIENT_ADDR);
    let start = net.now;
    let options = ConnectOptions {
        server_key: Some(Keypair::from_secret([0x5f; 32]).public_key()),
        ..ConnectOptions::default()
    };
    let conn = net.connect(client, SERVER_ADDR, &options);
    let (at, outcome) = net.outcome(client, Duration::from_secs(10));
    assert!(
        matches!(
            outcome,
            Event::ConnectFailed { conn: c, reason: DisconnectReason::ServerKeyMismatch } if c == conn
        ),
        "{outcome:?}"
    );
    assert_after_round_trips(at, start, 2, "ServerKeyMismatch");
    assert!(at - start < net.nodes[client].ep.config().handshake_timeout / 10);
    assert!(connected(net.nodes[client].events()).is_empty());
    // The server never reports it, not even its end.
    net.run_for(Duration::from_secs(12));
    assert!(
        net.nodes[server].events.is_empty(),
        "the server reports nothing: {:?}",
        net.nodes[server].events
    );
    assert_eq!(net.ep(server).connection_count(), 0);
    assert_eq!(net.ep(server).stats().connections_opened, 0);
}

#[test]
fn a_pinned_server_key_refuses_a_server_without_a_static_key() {
    let mut net = Net::new();
    let server = net.add(server_config(52), SERVER_ADDR);
    let client = net.add(client_config(51), CLIENT_ADDR);
    let start = net.now;
    let options = ConnectOptions {
        server_key: Some(Keypair::from_secret([0x5e; 32]).public_key()),
        ..ConnectOptions::default()
    };
    net.connect(client, SERVER_ADDR, &options);
    let (at, outcome) = net.outcome(client, Duration::from_secs(10));
    assert!(
        matches!(
            outcome,
            Event::ConnectFailed {
                reason: DisconnectReason::ServerKeyMismatch,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_after_round_trips(at, start, 2, "ServerKeyMismatch");
    net.run_for(Duration::from_secs(12));
    assert!(connected(net.nodes[server].events()).is_empty());
}

#[test]
fn a_client_static_key_is_reported_to_the_server() {
    let client_pair = Keypair::from_secret([0xc1; 32]);
    let public = client_pair.public_key();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut net = Net::new();
    let server = net.add(server_config(62), SERVER_ADDR);
    let client = net.add(
        Config {
            static_keypair: Some(client_pair),
            ..client_config(61)
        },
        CLIENT_ADDR,
    );
    let log = seen.clone();
    net.ep(server).set_accept_hook(Box::new(move |request| {
        log.lock()
            .expect("hook log")
            .push((request.identity.clone(), request.data.to_vec()));
        Ok(())
    }));
    net.connect(
        client,
        SERVER_ADDR,
        &ConnectOptions {
            data: b"who am I",
            ..ConnectOptions::default()
        },
    );
    assert!(net.run_until(Duration::from_secs(5), |n| {
        !connected(n.nodes[server].events()).is_empty()
            && !connected(n.nodes[client].events()).is_empty()
    }));
    let on_server = connected(net.nodes[server].events());
    assert_eq!(on_server.len(), 1);
    assert_eq!(on_server[0].key, Some(public));
    assert_eq!(on_server[0].token, None);
    assert_eq!(
        connected(net.nodes[client].events())[0].key,
        None,
        "the server has no static key"
    );
    let hooked = seen.lock().expect("hook log").clone();
    assert_eq!(hooked.len(), 1, "the hook ran once");
    assert_eq!(hooked[0].0.key, Some(public));
    assert_eq!(hooked[0].1, b"who am I");
}

// ======================================================================== 4. forged Accepts

/// A `Pair` whose client has just sent its `Hello` (nothing has arrived anywhere), the client
/// nonce read off that `Hello`, and a flag the link sets once a `Connect` leaves the client.
fn hello_sniffed(
    options: &ConnectOptions<'_>,
    server: Config,
) -> (Pair, ConnectionHandle, u64, Rc<RefCell<bool>>) {
    let hellos = Rc::new(RefCell::new(Vec::new()));
    let connect_sent = Rc::new(RefCell::new(false));
    let mut p = Pair::new(client_config(71), server);
    let (log, sent) = (hellos.clone(), connect_sent.clone());
    p.hook = Box::new(move |dir, _, bytes| {
        if dir == Dir::ClientToServer && bytes[0] == TYPE_HELLO {
            log.borrow_mut().push(bytes.to_vec());
        }
        if dir == Dir::ClientToServer && bytes[0] == TYPE_CONNECT {
            *sent.borrow_mut() = true;
        }
        vec![Duration::ZERO]
    });
    let conn = p
        .client
        .connect_with(p.now, p.server_addr, options)
        .expect("connect");
    p.flush();
    let hellos = hellos.borrow();
    assert_eq!(hellos.len(), 1, "one Hello sent");
    assert_eq!(hellos[0].len(), HELLO_LEN);
    let nonce = u64::from_be_bytes(hellos[0][5..13].try_into().expect("8 bytes"));
    (p, conn, nonce, connect_sent)
}

/// An `Accept` for `nonce` with a real-looking ephemeral key but a tag nobody computed.
fn forged_accept(nonce: u64, static_key: Option<[u8; 32]>) -> Vec<u8> {
    common::encode(&Packet::Accept {
        client_nonce: nonce,
        connection_id: 0x0bad_c0de_0bad_c0de,
        user_id: 7,
        reassembly_budget: 1 << 20,
        protection: Protection::Encrypted,
        ephemeral: Some(Keypair::from_secret([0xf0; 32]).public_key().0),
        static_key,
        tag: Some([0x5a; TAG_LEN]),
    })
}

/// Feeds the client `forged` from the server's address twice: at once (the client is still
/// sending `Hello`: an `Accept` is unexpected) and once its `Connect` left, before the real
/// `Accept` arrives (the tag is checked, and fails). Neither does anything but count a
/// drop on the connecting connection; the real handshake then completes.
fn forged_accept_is_dropped(
    (mut p, conn, _, connect_sent): (Pair, ConnectionHandle, u64, Rc<RefCell<bool>>),
    forged: &[u8],
) {
    assert_eq!(forged[0], TYPE_ACCEPT);
    let conn_drops = |p: &Pair, r: DropReason| {
        p.client
            .connection_stats(conn)
            .expect("connecting")
            .drops
            .get(r)
    };
    for (state, reason) in [
        ("Hello", DropReason::Unexpected),
        ("Connecting", DropReason::Unauthenticated),
    ] {
        if state == "Connecting" {
            let start = p.now;
            assert!(p.run_until(Duration::from_secs(1), |_| *connect_sent.borrow()));
            assert!(
                p.now - start < 4 * LATENCY,
                "the real Accept is still on its way"
            );
        }
        let before = conn_drops(&p, reason);
        p.client.handle_datagram(p.now, p.server_addr, forged);
        let events: Vec<Event> = std::iter::from_fn(|| p.client.poll_event()).collect();
        assert!(
            events.is_empty(),
            "{state}: the forged Accept did something: {events:?}"
        );
        assert!(!p.client.is_connected(conn), "{state}");
        assert_eq!(
            conn_drops(&p, reason),
            before + 1,
            "{state}: counted as {reason:?} on the connecting connection"
        );
    }
    assert!(p.run_until(Duration::from_secs(5), |p| {
        !connected(&p.client_events).is_empty() && !connected(&p.server_events).is_empty()
    }));
    assert!(disconnects(&p.client_events).is_empty());
    // The connection runs on the real server's keys and id.
    p.client
        .send(conn, RELIABLE, &b"after the forgery"[..])
        .expect("send");
    assert!(p.run_until(Duration::from_secs(2), |p| !p
        .server_messages(RELIABLE)
        .is_empty()));
}

/// Each `Accept` costs the client up to three X25519 agreements to check, and an attacker
/// on the path sees the nonce that lets it forge them: it could have the client check
/// forgeries as fast as it sends them for the whole handshake. A client checks four per
/// `Connect` it sends (the server answers one with one); the rest are dropped unchecked, and
/// the handshake still completes.
#[test]
fn a_client_checks_a_few_accepts_per_connect() {
    let (mut p, conn, nonce, connect_sent) =
        hello_sniffed(&ConnectOptions::default(), server_config(74));
    let forged = forged_accept(nonce, None);
    assert!(p.run_until(Duration::from_secs(1), |_| *connect_sent.borrow()));
    let drops = |p: &Pair, r: DropReason| {
        p.client
            .connection_stats(conn)
            .expect("connecting")
            .drops
            .get(r)
    };
    let (checked, unchecked) = (
        drops(&p, DropReason::Unauthenticated),
        drops(&p, DropReason::Unexpected),
    );
    for _ in 0..100 {
        p.client.handle_datagram(p.now, p.server_addr, &forged);
    }
    assert_eq!(drops(&p, DropReason::Unauthenticated), checked + 4);
    assert_eq!(drops(&p, DropReason::Unexpected), unchecked + 96);
    assert!(p.run_until(Duration::from_secs(5), |p| {
        !connected(&p.client_events).is_empty() && !connected(&p.server_events).is_empty()
    }));
}

#[test]
fn a_forged_accept_does_not_end_the_handshake() {
    let sniffed = hello_sniffed(&ConnectOptions::default(), server_config(72));
    let forged = forged_accept(sniffed.2, None);
    forged_accept_is_dropped(sniffed, &forged);
}

#[test]
fn a_forged_accept_does_not_end_a_handshake_that_pins_the_server_key() {
    // The forger names no key, or a key of its own: either way its tag is garbage, so it
    // proves nothing, and must not count as the server refusing the pinned key.
    let server_pair = Keypair::from_secret([0x5e; 32]);
    let options = ConnectOptions {
        server_key: Some(server_pair.public_key()),
        ..ConnectOptions::default()
    };
    let server = || Config {
        static_keypair: Some(server_pair.clone()),
        ..server_config(73)
    };
    for static_key in [None, Some(Keypair::from_secret([0x66; 32]).public_key().0)] {
        let sniffed = hello_sniffed(&options, server());
        let forged = forged_accept(sniffed.2, static_key);
        forged_accept_is_dropped(sniffed, &forged);
    }
}

// ======================================================================== 5. first packet

#[test]
fn the_server_reports_a_connection_only_after_the_clients_first_packet() {
    // Everything the client sends after its Connect is lost: the server answered with an
    // Accept, but nothing proves the client holds the keys.
    let mut p = Pair::new(client_config(81), server_config(82));
    let mut connect_sent = false;
    p.hook = Box::new(move |dir, _, bytes| {
        if dir == Dir::ServerToClient {
            return vec![Duration::ZERO];
        }
        if connect_sent {
            return vec![];
        }
        connect_sent = bytes[0] == TYPE_CONNECT;
        vec![Duration::ZERO]
    });
    p.client
        .connect(p.now, p.server_addr, b"")
        .expect("connect");
    assert!(
        p.run_until(Duration::from_secs(1), |p| !connected(&p.client_events)
            .is_empty())
    );
    assert_eq!(
        p.server.connection_count(),
        1,
        "the server holds the connection"
    );
    let idle = p.server.config().idle_timeout;
    p.run_for(idle + Duration::from_secs(2));
    assert!(
        p.server_events.is_empty(),
        "a connection the client never confirmed is never reported, nor its end: {:?}",
        p.server_events
    );
    assert_eq!(p.server.connection_count(), 0, "it timed out");
    assert_eq!(p.server.stats().connections_opened, 0);
    assert_eq!(p.server.stats().connections_closed, 1);

    // The control: with the client's packets arriving, the server reports it.
    let mut p = Pair::new(client_config(81), server_config(82));
    let (_, s) = p.connect();
    assert!(p.server.is_connected(s));
    assert_eq!(connected(&p.server_events).len(), 1);
}

// ======================================================================== 6. tokens

fn token_server_config(seed: u64) -> Config {
    Config {
        tokens: Some(TokenConfig::new(TOKEN_KEY, vec![addr(SERVER_ADDR)])),
        ..server_config(seed)
    }
}

struct TokenSpec<'a> {
    key: [u8; 32],
    protocol_id: u32,
    expires_at: u64,
    servers: &'a [SocketAddr],
    entropy: u8,
}

impl Default for TokenSpec<'_> {
    fn default() -> Self {
        TokenSpec {
            key: TOKEN_KEY,
            protocol_id: server_config(0).protocol_id,
            expires_at: UNIX_NOW + 3_600,
            servers: &[],
            entropy: 1,
        }
    }
}

const CLIENT_ID: u64 = 0x00c0_ffee;
const USER_DATA: &[u8] = b"name=ada;team=blue";

fn issue(spec: &TokenSpec<'_>) -> ConnectToken {
    let ours = [addr(SERVER_ADDR)];
    token::issue(
        &spec.key,
        &TokenParams {
            protocol_id: spec.protocol_id,
            client_id: CLIENT_ID,
            expires_at: spec.expires_at,
            server_addresses: if spec.servers.is_empty() {
                &ours
            } else {
                spec.servers
            },
            user_data: USER_DATA,
        },
        &[spec.entropy; 32],
    )
    .expect("issues")
}

/// A token server and one client, the server told the wall-clock time; the hook's view of
/// each request is logged.
/// Connects `client` to the server with `token`: how the attempt ended.
fn token_outcome(net: &mut Net, client: usize, token: &ConnectToken) -> Event {
    let options = ConnectOptions {
        token: Some(token),
        ..ConnectOptions::default()
    };
    net.connect(client, SERVER_ADDR, &options);
    net.outcome(client, Duration::from_secs(5)).1
}

fn token_net() -> (Net, usize, usize, Arc<Mutex<Vec<PeerIdentity>>>) {
    let mut net = Net::new();
    let server = net.add(token_server_config(92), SERVER_ADDR);
    let client = net.add(client_config(91), CLIENT_ADDR);
    let now = net.now;
    net.ep(server)
        .set_unix_time(now, Duration::from_secs(UNIX_NOW));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    net.ep(server).set_accept_hook(Box::new(move |request| {
        log.lock().expect("hook log").push(request.identity.clone());
        Ok(())
    }));
    (net, server, client, seen)
}

#[test]
fn a_valid_token_reports_its_claims_to_the_hook_and_in_connected() {
    let (mut net, server, client, seen) = token_net();
    let token = issue(&TokenSpec::default());
    // The client got the token as bytes from the backend.
    let token = ConnectToken::from_bytes(&token.to_bytes()).expect("parses");
    let outcome = token_outcome(&mut net, client, &token);
    assert!(matches!(outcome, Event::Connected { .. }), "{outcome:?}");
    assert!(net.run_until(Duration::from_secs(1), |n| !connected(
        n.nodes[server].events()
    )
    .is_empty()));
    let claims = TokenClaims {
        client_id: CLIENT_ID,
        user_data: Bytes::from_static(USER_DATA),
        expires_at: UNIX_NOW + 3_600,
    };
    let on_server = connected(net.nodes[server].events());
    assert_eq!(on_server.len(), 1);
    assert_eq!(on_server[0].token.as_ref(), Some(&claims));
    assert_eq!(on_server[0].key, None);
    let hooked = seen.lock().expect("hook log").clone();
    assert_eq!(hooked.len(), 1);
    assert_eq!(hooked[0].token.as_ref(), Some(&claims));
    assert_eq!(
        connected(net.nodes[client].events())[0].token,
        None,
        "the client learns no claims"
    );
}

/// Connects the net's client with `token` (or none) and checks it is refused for `reason`
/// when the server's `Reject` arrives: one round trip after the `Connect`, two after the
/// `Hello`. The hook never runs and the server reports nothing.
fn assert_token_refused(token: Option<&ConnectToken>, reason: DisconnectReason) {
    let (mut net, server, client, seen) = token_net();
    let start = net.now;
    let conn = net.connect(
        client,
        SERVER_ADDR,
        &ConnectOptions {
            token,
            ..ConnectOptions::default()
        },
    );
    let (at, outcome) = net.outcome(client, Duration::from_secs(10));
    assert!(
        matches!(outcome, Event::ConnectFailed { conn: c, reason: r } if c == conn && r == reason),
        "expected {reason:?}, got {outcome:?}"
    );
    assert_after_round_trips(at, start, 2, &format!("{reason:?}"));
    assert!(
        seen.lock().expect("hook log").is_empty(),
        "the hook never ran"
    );
    assert!(net.nodes[server].events.is_empty());
    assert_eq!(net.ep(server).connection_count(), 0);
    assert_eq!(net.ep(server).stats().connections_rejected, 1);
}

#[test]
fn an_expired_token_is_refused_within_one_round_trip() {
    let token = issue(&TokenSpec {
        expires_at: UNIX_NOW - 1,
        ..TokenSpec::default()
    });
    assert_token_refused(Some(&token), DisconnectReason::TokenExpired);
}

#[test]
fn a_token_expiring_this_second_is_expired() {
    // The server's clock reads UNIX_NOW (and a few milliseconds) when the Connect arrives.
    let token = issue(&TokenSpec {
        expires_at: UNIX_NOW,
        ..TokenSpec::default()
    });
    assert_token_refused(Some(&token), DisconnectReason::TokenExpired);
}

#[test]
fn a_token_for_another_server_is_refused_within_one_round_trip() {
    let elsewhere = [addr("10.0.0.1:4001"), addr("[2001:db8::1]:4000")];
    let token = issue(&TokenSpec {
        servers: &elsewhere,
        ..TokenSpec::default()
    });
    assert_token_refused(Some(&token), DisconnectReason::TokenWrongServer);
}

/// A backend that writes the server's IPv4 address mapped into IPv6 (as a dual-stack
/// socket shows it) names the same server: the token is taken.
#[test]
fn a_token_naming_the_server_by_its_mapped_ipv4_address_is_taken() {
    let SocketAddr::V4(v4) = addr(SERVER_ADDR) else {
        panic!("an IPv4 server address");
    };
    let mapped = [SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())];
    let token = issue(&TokenSpec {
        servers: &mapped,
        ..TokenSpec::default()
    });
    let (mut net, _, client, _) = token_net();
    let outcome = token_outcome(&mut net, client, &token);
    assert!(matches!(outcome, Event::Connected { .. }), "{outcome:?}");
}

#[test]
fn a_token_sealed_under_another_key_is_refused_within_one_round_trip() {
    let token = issue(&TokenSpec {
        key: [0x7f; 32],
        ..TokenSpec::default()
    });
    assert_token_refused(Some(&token), DisconnectReason::TokenInvalid);
}

#[test]
fn a_token_for_another_protocol_is_refused_within_one_round_trip() {
    let token = issue(&TokenSpec {
        protocol_id: server_config(0).protocol_id ^ 1,
        ..TokenSpec::default()
    });
    assert_token_refused(Some(&token), DisconnectReason::TokenInvalid);
}

#[test]
fn no_token_is_refused_within_one_round_trip() {
    assert_token_refused(None, DisconnectReason::TokenInvalid);
}

#[test]
fn a_reused_token_is_refused_within_one_round_trip_and_counted_as_a_replay() {
    let (mut net, server, client, seen) = token_net();
    let token = issue(&TokenSpec::default());
    let outcome = token_outcome(&mut net, client, &token);
    assert!(matches!(outcome, Event::Connected { .. }), "{outcome:?}");
    assert!(net.run_until(Duration::from_secs(1), |n| !connected(
        n.nodes[server].events()
    )
    .is_empty()));
    assert_eq!(net.ep(server).stats().drops.get(DropReason::TokenReplay), 0);

    // Someone else, elsewhere, with the very same token (client key included).
    let second = net.add(client_config(93), SECOND_CLIENT_ADDR);
    let start = net.now;
    let options = ConnectOptions {
        token: Some(&token),
        ..ConnectOptions::default()
    };
    let conn = net.connect(second, SERVER_ADDR, &options);
    let (at, outcome) = net.outcome(second, Duration::from_secs(10));
    assert!(
        matches!(
            outcome,
            Event::ConnectFailed { conn: c, reason: DisconnectReason::TokenUsed } if c == conn
        ),
        "{outcome:?}"
    );
    assert_after_round_trips(at, start, 2, "TokenUsed");
    assert_eq!(net.ep(server).stats().drops.get(DropReason::TokenReplay), 1);
    assert_eq!(
        seen.lock().expect("hook log").len(),
        1,
        "the hook saw only the first"
    );
    // The first connection is untouched.
    net.run_for(Duration::from_secs(2));
    assert_eq!(connected(net.nodes[server].events()).len(), 1);
    assert!(disconnects(net.nodes[server].events()).is_empty());
    assert!(disconnects(net.nodes[client].events()).is_empty());
}

#[test]
fn a_token_copied_off_the_wire_is_useless_without_its_client_key() {
    let (mut net, server, client, _) = token_net();
    let token = issue(&TokenSpec::default());
    // The honest client's Connects are sniffed, and lost (so the token is not spent before
    // the thief tries it).
    let sniffed = Rc::new(RefCell::new(Vec::new()));
    let log = sniffed.clone();
    let honest = addr(CLIENT_ADDR);
    net.tap = Box::new(move |from, _, bytes| {
        if from == honest && bytes[0] == TYPE_CONNECT {
            log.borrow_mut().push(bytes.to_vec());
            return false;
        }
        true
    });
    net.connect(
        client,
        SERVER_ADDR,
        &ConnectOptions {
            token: Some(&token),
            ..ConnectOptions::default()
        },
    );
    assert!(net.run_until(Duration::from_secs(1), |_| !sniffed.borrow().is_empty()));
    let connect = sniffed.borrow()[0].clone();
    let Ok(Packet::Connect {
        token: Some(sealed),
        ..
    }) = Packet::decode(&connect)
    else {
        panic!("a Connect with a token");
    };
    let token_bytes = token.to_bytes();
    assert_eq!(
        sealed,
        &token_bytes[32..],
        "the wire carries the sealed part"
    );
    assert!(
        !contains(&connect, &token_bytes[..32]),
        "the wire never carries the client key"
    );

    // The thief rebuilds a token from the sealed part and a client key of its own.
    let mut stolen = vec![0x99; 32];
    stolen.extend_from_slice(sealed);
    let stolen = ConnectToken::from_bytes(&stolen).expect("parses");
    let thief = net.add(client_config(94), SECOND_CLIENT_ADDR);
    let conn = net.connect(
        thief,
        SERVER_ADDR,
        &ConnectOptions {
            token: Some(&stolen),
            ..ConnectOptions::default()
        },
    );
    // The thief cannot write the Connect's token proof (an HMAC under the client key the
    // token was issued with): refused at once, nothing allocated, the token not used.
    let (_, outcome) = net.outcome(thief, Duration::from_secs(1));
    assert_eq!(
        outcome,
        Event::ConnectFailed {
            conn,
            reason: DisconnectReason::TokenInvalid
        }
    );
    assert!(
        connected(net.nodes[server].events()).is_empty(),
        "the server never reports the thief"
    );
    assert!(net.nodes[server].events.is_empty());
    assert_eq!(net.ep(server).stats().connections_opened, 0);
    assert_eq!(net.ep(server).connection_count(), 0);
}

// ======================================================================== 7. mismatch

#[test]
fn a_plain_peer_and_a_protected_peer_refuse_each_other_with_a_clear_reason() {
    for (client_cfg, server_cfg, what) in [
        (
            plain(client_config(101)),
            server_config(102),
            "plain client",
        ),
        (
            client_config(103),
            plain(server_config(104)),
            "plain server",
        ),
    ] {
        let mut net = Net::new();
        let server = net.add(server_cfg, SERVER_ADDR);
        let client = net.add(client_cfg, CLIENT_ADDR);
        let start = net.now;
        let conn = net.connect(client, SERVER_ADDR, &ConnectOptions::default());
        let (at, outcome) = net.outcome(client, Duration::from_secs(10));
        assert!(
            matches!(
                outcome,
                Event::ConnectFailed { conn: c, reason: DisconnectReason::ProtectionMismatch }
                    if c == conn
            ),
            "{what}: {outcome:?}"
        );
        // Refused in answer to the Hello, before any cookie.
        assert_after_round_trips(at, start, 1, what);
        net.run_for(Duration::from_secs(1));
        assert!(net.nodes[server].events.is_empty(), "{what}");
        assert_eq!(net.ep(server).connection_count(), 0, "{what}");
        assert_eq!(net.ep(server).stats().connections_rejected, 1, "{what}");
    }

    // A plain endpoint cannot promise what only protection keeps.
    let mut client = Endpoint::new(plain(client_config(105))).expect("valid config");
    let now = Instant::from_millis(1);
    let to = addr(SERVER_ADDR);
    let key = Keypair::from_secret([1; 32]).public_key();
    assert_eq!(
        client.connect_with(
            now,
            to,
            &ConnectOptions {
                server_key: Some(key),
                ..ConnectOptions::default()
            }
        ),
        Err(ConnectError::ProtectionRequired)
    );
    let token = issue(&TokenSpec::default());
    assert_eq!(
        client.connect_with(
            now,
            to,
            &ConnectOptions {
                token: Some(&token),
                ..ConnectOptions::default()
            }
        ),
        Err(ConnectError::ProtectionRequired)
    );
    assert_eq!(client.connection_count(), 0);
}

// ======================================================================== 8. forged closes

#[test]
fn a_forged_disconnect_with_a_sniffed_connection_id_does_not_close_a_protected_connection() {
    let Captured {
        mut p,
        client: c,
        server: s,
        datagram,
    } = capture_data(client_config(111), server_config(112), b"sniffed");
    // The attacker read the connection id and packet number off the clear header.
    let connection_id = u64::from_be_bytes(datagram[1..9].try_into().expect("8 bytes"));
    let packet_number = u32::from_be_bytes(datagram[9..13].try_into().expect("4 bytes"));
    let disconnect = common::encode(&Packet::Disconnect {
        connection_id,
        packet_number: packet_number + 1,
        code: shoal_proto::fuzzing::wire::CloseCode::Application(0),
    });
    // Bare (as a plain peer sends it), and with a made-up tag.
    let mut tagged = disconnect.clone();
    tagged.extend_from_slice(&[0x42; TAG_LEN]);
    let before = p.server.stats().drops;
    p.server.handle_datagram(p.now, p.client_addr, &disconnect);
    p.server.handle_datagram(p.now, p.client_addr, &tagged);
    assert!(server_events_now(&mut p).is_empty());
    assert!(p.server.is_connected(s));
    let after = p.server.stats().drops;
    let delta = |r: DropReason| after.get(r) - before.get(r);
    assert_eq!(
        delta(DropReason::Malformed),
        1,
        "the bare one is shorter than header and tag"
    );
    assert_eq!(
        delta(DropReason::Unauthenticated),
        1,
        "the tagged one fails it"
    );
    assert_eq!(after.total() - before.total(), 2);
    // The connection goes on; the real packet still arrives.
    p.server.handle_datagram(p.now, p.client_addr, &datagram);
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.server_messages(RELIABLE), vec![b"sniffed".to_vec()]);
    assert!(p.server.is_connected(s) && p.client.is_connected(c));
    assert!(disconnects(&p.server_events).is_empty());
}

// ======================================================================== 9. review fixes

/// A second server address (a server the first one connects out to).
const OTHER_SERVER_ADDR: &str = "10.0.0.9:4000";

/// Every datagram the net carries, recorded (from, to, bytes); the tap still delivers all.
type Wire = Rc<RefCell<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>>;

fn record_wire(net: &mut Net) -> Wire {
    let wire: Wire = Rc::new(RefCell::new(Vec::new()));
    let log = wire.clone();
    net.tap = Box::new(move |from, to, bytes| {
        log.borrow_mut().push((from, to, bytes.to_vec()));
        true
    });
    wire
}

/// The events `node` has seen, without their times.
fn events_of(net: &Net, node: usize) -> Vec<Event> {
    net.nodes[node].events().cloned().collect()
}

/// The first connection `node` reported as connected to `remote`.
fn connected_to(net: &Net, node: usize, remote: &str) -> ConnectionHandle {
    let remote = addr(remote);
    net.nodes[node]
        .events()
        .find_map(|e| match e {
            Event::Connected {
                conn, remote: r, ..
            } if *r == remote => Some(*conn),
            _ => None,
        })
        .expect("a connection to that address")
}

/// The sealed part of `token` under a client key that is not its own: what someone who
/// copied the token off the wire can build (see
/// `a_token_copied_off_the_wire_is_useless_without_its_client_key`).
fn copied(token: &ConnectToken) -> ConnectToken {
    let mut bytes = vec![0x99; 32];
    bytes.extend_from_slice(&token.to_bytes()[32..]);
    ConnectToken::from_bytes(&bytes).expect("parses")
}

/// A server (requiring tokens when `tokens`) and a client at `CLIENT_ADDR` connected to it
/// (with a valid token of its own), both sides reported, quiet. Returns the net, the two
/// nodes and the client's and the server's handles.
fn live_connection(
    tokens: bool,
    seed: u64,
) -> (Net, usize, usize, ConnectionHandle, ConnectionHandle) {
    let mut net = Net::new();
    let server = if tokens {
        net.add(token_server_config(seed), SERVER_ADDR)
    } else {
        net.add(server_config(seed), SERVER_ADDR)
    };
    let client = net.add(client_config(seed + 1), CLIENT_ADDR);
    let now = net.now;
    net.ep(server)
        .set_unix_time(now, Duration::from_secs(UNIX_NOW));
    let token = issue(&TokenSpec::default());
    let c = net.connect(
        client,
        SERVER_ADDR,
        &ConnectOptions {
            token: tokens.then_some(&token),
            ..ConnectOptions::default()
        },
    );
    assert!(net.run_until(Duration::from_secs(5), |n| {
        !connected(n.nodes[server].events()).is_empty()
            && !connected(n.nodes[client].events()).is_empty()
    }));
    net.run_for(Duration::from_millis(200));
    let s = connected_to(&net, server, CLIENT_ADDR);
    (net, server, client, c, s)
}

/// Sends `payload` on the reliable channel from `from`'s connection `conn` and runs until
/// `to` has it.
fn deliver(net: &mut Net, (from, conn): (usize, ConnectionHandle), to: usize, payload: &[u8]) {
    net.ep(from)
        .send(conn, RELIABLE, Bytes::copy_from_slice(payload))
        .expect("send");
    let delivered = net.run_until(Duration::from_secs(2), |n| {
        messages(&events_of(n, to), RELIABLE).contains(&payload.to_vec())
    });
    assert!(
        delivered,
        "{:?} was not delivered",
        String::from_utf8_lossy(payload)
    );
}

/// One datagram `ep` sends now (to `to`), of type `ty`.
fn transmit(ep: &mut Endpoint, now: Instant, to: SocketAddr, ty: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    let t = ep.poll_transmit(now, &mut buf).expect("a datagram");
    assert_eq!(t.to, to);
    assert_eq!(buf[0], ty, "datagram type");
    buf[..t.len].to_vec()
}

/// What an attacker on the path to `victim` (it reads what the server sends there and sends
/// datagrams with that source address) gets from a handshake of its own from there, with an
/// endpoint of its own (a fresh nonce and ephemeral key) and `token`: everything up to the
/// server's `Accept`, which is returned. It sends nothing after its `Connect`.
fn connect_from(
    net: &mut Net,
    server: usize,
    victim: &str,
    attacker: &mut Endpoint,
    token: Option<&ConnectToken>,
) -> Vec<u8> {
    let victim = addr(victim);
    let server_addr = net.nodes[server].addr;
    let wire = record_wire(net);
    let now = net.now;
    attacker
        .connect_with(
            now,
            server_addr,
            &ConnectOptions {
                token,
                ..ConnectOptions::default()
            },
        )
        .expect("connect");
    let hello = transmit(attacker, now, server_addr, TYPE_HELLO);
    let nonce = &hello[5..13];
    // The server's answers to `victim` for this nonce, as the attacker reads them.
    let answer = |ty: u8| {
        wire.borrow()
            .iter()
            .find(|(from, to, d)| {
                *from == server_addr && *to == victim && d[0] == ty && &d[1..9] == nonce
            })
            .map(|(.., d)| d.clone())
            .expect("the server answered")
    };
    net.ep(server).handle_datagram(now, victim, &hello);
    net.flush();
    attacker.handle_datagram(now, server_addr, &answer(0x32));
    let connect = transmit(attacker, now, server_addr, TYPE_CONNECT);
    net.ep(server).handle_datagram(now, victim, &connect);
    net.flush();
    // An Accept, or a Reject when the server refuses the Connect outright (a copied token
    // without its client key).
    let accept = if wire
        .borrow()
        .iter()
        .any(|(from, to, d)| *from == server_addr && *to == victim && d[0] == TYPE_REJECT)
    {
        answer(TYPE_REJECT)
    } else {
        answer(TYPE_ACCEPT)
    };
    net.tap = Box::new(|_, _, _| true);
    accept
}

/// Replaces the client at `client` with a new endpoint (a restart: new keys, new nonce),
/// connects it (with a fresh token when `tokens`), and checks that the server's old
/// connection `old` gives way, as `Replaced`, only when the new one is proven: at the same
/// moment the server reports the new one, and not when its `Connect` arrives.
fn restart_replaces(
    net: &mut Net,
    server: usize,
    client: usize,
    old: ConnectionHandle,
    tokens: bool,
) {
    let what = if tokens {
        "with tokens"
    } else {
        "without tokens"
    };
    net.nodes[client].ep = Endpoint::new(client_config(199)).expect("valid config");
    net.nodes[client].events.clear();
    let reported_before = connected(net.nodes[server].events()).len();
    let token = issue(&TokenSpec {
        entropy: 3,
        ..TokenSpec::default()
    });
    let conn = net.connect(
        client,
        SERVER_ADDR,
        &ConnectOptions {
            token: tokens.then_some(&token),
            ..ConnectOptions::default()
        },
    );
    // The new Connect arrives and is accepted (the Accept leaves at once): the old
    // connection is untouched, the new one unproven.
    let wire = record_wire(net);
    let count = net.ep(server).connection_count();
    assert!(net.run_until(Duration::from_secs(2), |_| wire
        .borrow()
        .iter()
        .any(|(_, to, d)| *to == addr(CLIENT_ADDR) && d[0] == TYPE_ACCEPT)));
    net.tap = Box::new(|_, _, _| true);
    let connect_at = net.now;
    assert!(
        net.ep(server).is_connected(old),
        "{what}: the old connection survives the Connect"
    );
    assert!(
        disconnects(net.nodes[server].events()).is_empty(),
        "{what}: nothing ends when the Connect arrives"
    );
    assert_eq!(net.ep(server).connection_count(), count + 1, "{what}");
    // The client's first packet proves it: the old connection gives way then.
    assert!(
        net.run_until(Duration::from_secs(5), |n| {
            disconnects(n.nodes[server].events()).contains(&DisconnectReason::Replaced)
        }),
        "{what}: the old connection is replaced once the new one is proven: {:?}",
        net.nodes[server].events
    );
    let (replaced_at, position) = net.nodes[server]
        .events
        .iter()
        .enumerate()
        .find_map(|(i, (at, e))| match e {
            Event::Disconnected {
                conn,
                reason: DisconnectReason::Replaced,
            } => {
                assert_eq!(*conn, old, "{what}: the old connection is the one replaced");
                Some((*at, i))
            }
            _ => None,
        })
        .expect("replaced");
    assert!(
        replaced_at >= connect_at + 2 * LATENCY,
        "{what}: replaced {:?} after the Connect arrived, before the client could answer \
         the Accept",
        replaced_at - connect_at
    );
    // Right before the server reports the new connection, at the same moment.
    let (reported_at, reported) = net.nodes[server].events[position + 1].clone();
    assert_eq!(reported_at, replaced_at, "{what}");
    let Event::Connected {
        conn: s, remote, ..
    } = reported
    else {
        panic!("{what}: the new connection is reported next: {reported:?}");
    };
    assert_eq!(remote, addr(CLIENT_ADDR), "{what}");
    assert_eq!(
        connected(net.nodes[server].events()).len(),
        reported_before + 1,
        "{what}"
    );
    assert!(!net.ep(server).is_connected(old), "{what}");
    assert_eq!(disconnects(net.nodes[server].events()).len(), 1, "{what}");
    // The new one works.
    assert_eq!(connected(net.nodes[client].events()).len(), 1, "{what}");
    assert!(net.ep(client).is_connected(conn), "{what}");
    deliver(net, (client, conn), server, b"restarted");
    deliver(net, (server, s), client, b"welcome back");
}

#[test]
fn a_connect_that_never_completes_does_not_end_a_live_connection() {
    for tokens in [false, true] {
        let what = if tokens {
            "with tokens"
        } else {
            "without tokens"
        };
        let (mut net, server, client, c, s) = live_connection(tokens, 181);
        let config = net.ep(server).config().clone();
        // Another player's token, copied off the wire (the live connection's own is used:
        // a copy of it is refused before anything else happens).
        let other = copied(&issue(&TokenSpec {
            entropy: 2,
            ..TokenSpec::default()
        }));
        let mut attacker = Endpoint::new(client_config(183)).expect("valid config");
        let accept = connect_from(
            &mut net,
            server,
            CLIENT_ADDR,
            &mut attacker,
            tokens.then_some(&other),
        );
        let attacked_at = net.now;
        assert!(
            net.ep(server).is_connected(s),
            "{what}: the live connection survives the Connect"
        );
        assert!(
            net.nodes[server]
                .events
                .iter()
                .all(|(at, _)| *at < attacked_at),
            "{what}: the server reported nothing: {:?}",
            net.nodes[server].events
        );
        if tokens {
            // A copied token without its client key cannot write the Connect's token proof:
            // refused at once, nothing allocated.
            assert_eq!(accept[0], TYPE_REJECT, "{what}");
            assert_eq!(net.ep(server).connection_count(), 1, "{what}");
            deliver(&mut net, (client, c), server, b"during");
            deliver(&mut net, (server, s), client, b"during");
        } else {
            assert_eq!(
                net.ep(server).connection_count(),
                2,
                "{what}: the attacker's Connect passed every check and waits for its first packet"
            );
            // The live connection carries messages both ways while the attacker's waits...
            deliver(&mut net, (client, c), server, b"during");
            deliver(&mut net, (server, s), client, b"during");
            // ...which gives its slot back after the handshake timeout, unreported.
            assert!(net.run_until(config.idle_timeout, |n| n.nodes[server]
                .ep
                .connection_count()
                == 1));
            let freed = net.now - attacked_at;
            let due = config.handshake_timeout.min(config.idle_timeout);
            assert!(
                freed >= due && freed <= due + SLACK,
                "{what}: freed after {freed:?}, expected {due:?}"
            );
        }
        // ...and after, for longer than an idle timeout.
        deliver(&mut net, (client, c), server, b"after");
        deliver(&mut net, (server, s), client, b"after");
        net.run_for(config.idle_timeout + Duration::from_secs(2));
        deliver(&mut net, (client, c), server, b"much later");
        assert!(net.ep(server).is_connected(s), "{what}");
        assert!(net.ep(client).is_connected(c), "{what}");
        assert!(
            disconnects(net.nodes[server].events()).is_empty(),
            "{what}: {:?}",
            net.nodes[server].events
        );
        assert!(disconnects(net.nodes[client].events()).is_empty(), "{what}");
        assert_eq!(
            connected(net.nodes[server].events()).len(),
            1,
            "{what}: the attacker's connection is never reported"
        );
        assert_eq!(net.ep(server).stats().connections_opened, 1, "{what}");
        assert_eq!(net.ep(server).connection_count(), 1, "{what}");
    }

    // The control: a real restart at the same address (a new endpoint completing a full
    // handshake) does replace the old connection, once proven.
    for tokens in [false, true] {
        let (mut net, server, client, _, s) = live_connection(tokens, 185);
        restart_replaces(&mut net, server, client, s, tokens);
    }
}

#[test]
fn a_restart_after_a_connect_that_never_completed_still_replaces_the_old_connection() {
    let (mut net, server, client, _, s) = live_connection(false, 187);
    let mut attacker = Endpoint::new(client_config(189)).expect("valid config");
    connect_from(&mut net, server, CLIENT_ADDR, &mut attacker, None);
    // The attacker's connection gives its slot back.
    assert!(net.run_until(Duration::from_secs(10), |n| n.nodes[server]
        .ep
        .connection_count()
        == 1));
    assert!(net.ep(server).is_connected(s));
    restart_replaces(&mut net, server, client, s, false);
}

#[test]
fn one_copied_token_holds_at_most_one_unconfirmed_slot() {
    // A copy of one token (off the wire, no client key) in the hands of six attackers, each
    // at its own address, against a server with room for four: each copy's Connect passes
    // (the server cannot tell it from the holder's), but a copy's connection can never
    // confirm, and a newer one with the same token takes the older one's place.
    let mut net = Net::new();
    let server = net.add(
        Config {
            max_connections: 4,
            ..token_server_config(191)
        },
        SERVER_ADDR,
    );
    let now = net.now;
    net.ep(server)
        .set_unix_time(now, Duration::from_secs(UNIX_NOW));
    let stolen = copied(&issue(&TokenSpec {
        entropy: 4,
        ..TokenSpec::default()
    }));
    let attackers: Vec<usize> = (1..=6)
        .map(|i| net.add(client_config(191 + i), &format!("10.0.1.{i}:5000")))
        .collect();
    for &a in &attackers {
        net.connect(
            a,
            SERVER_ADDR,
            &ConnectOptions {
                token: Some(&stolen),
                ..ConnectOptions::default()
            },
        );
    }
    let mut most = 0;
    net.run_until(Duration::from_secs(2), |n| {
        most = most.max(n.nodes[server].ep.connection_count());
        false
    });
    assert_eq!(
        most, 0,
        "a copy cannot write the Connect's token proof: refused, it holds no slot"
    );
    assert_eq!(net.ep(server).stats().connections_rejected, 6);
    for &a in &attackers {
        assert_eq!(
            disconnects(net.nodes[a].events()),
            vec![DisconnectReason::TokenInvalid]
        );
    }

    // An honest client with a token of its own connects meanwhile (the copies keep trying).
    let honest = net.add(client_config(199), CLIENT_ADDR);
    let token = issue(&TokenSpec {
        entropy: 5,
        ..TokenSpec::default()
    });
    net.connect(
        honest,
        SERVER_ADDR,
        &ConnectOptions {
            token: Some(&token),
            ..ConnectOptions::default()
        },
    );
    let (_, outcome) = net.outcome(honest, Duration::from_secs(5));
    assert!(matches!(outcome, Event::Connected { .. }), "{outcome:?}");
    assert!(net.run_until(Duration::from_secs(1), |n| !connected(
        n.nodes[server].events()
    )
    .is_empty()));
    let mut most = 0;
    net.run_until(Duration::from_secs(10), |n| {
        most = most.max(n.nodes[server].ep.connection_count());
        false
    });
    assert!(most <= 2, "the honest client and one copy at most: {most}");
    let reported = connected(net.nodes[server].events());
    assert_eq!(reported.len(), 1, "only the honest client is ever reported");
    assert_eq!(
        reported[0].token.as_ref().map(|c| c.expires_at),
        Some(UNIX_NOW + 3_600)
    );
    assert_eq!(net.ep(server).connection_count(), 1, "the copies gave up");
    for &a in &attackers {
        assert!(connected(net.nodes[a].events()).is_empty());
    }

    // An unconfirmed connection gives its slot back after the handshake timeout, or the idle
    // timeout if that is shorter: not after the idle timeout alone.
    for (handshake_timeout, idle_timeout) in [
        (Duration::from_secs(3), Duration::from_secs(8)),
        (Duration::from_secs(6), Duration::from_secs(4)),
    ] {
        let mut net = Net::new();
        let server = net.add(
            Config {
                handshake_timeout,
                idle_timeout,
                ..token_server_config(201)
            },
            SERVER_ADDR,
        );
        let now = net.now;
        net.ep(server)
            .set_unix_time(now, Duration::from_secs(UNIX_NOW));
        let attacker = net.add(client_config(202), SECOND_CLIENT_ADDR);
        // The attacker sends its Connect once, and nothing after.
        let mut connect_sent = false;
        let from_attacker = addr(SECOND_CLIENT_ADDR);
        net.tap = Box::new(move |from, _, bytes| {
            if from != from_attacker {
                return true;
            }
            if connect_sent {
                return false;
            }
            connect_sent = bytes[0] == TYPE_CONNECT;
            true
        });
        // (A genuine token: a copy would be refused before anything is allocated.)
        let own = issue(&TokenSpec {
            entropy: 6,
            ..TokenSpec::default()
        });
        net.connect(
            attacker,
            SERVER_ADDR,
            &ConnectOptions {
                token: Some(&own),
                ..ConnectOptions::default()
            },
        );
        assert!(net.run_until(Duration::from_secs(1), |n| n.nodes[server]
            .ep
            .connection_count()
            == 1));
        let allocated_at = net.now;
        assert!(net.run_until(Duration::from_secs(20), |n| n.nodes[server]
            .ep
            .connection_count()
            == 0));
        let held = net.now - allocated_at;
        let due = handshake_timeout.min(idle_timeout);
        assert!(
            held >= due && held <= due + SLACK,
            "handshake_timeout {handshake_timeout:?}, idle_timeout {idle_timeout:?}: the \
             slot was held {held:?}, expected {due:?}"
        );
        assert!(net.nodes[server].events.is_empty(), "never reported");
        assert_eq!(net.ep(server).stats().connections_closed, 1);
    }
}

#[test]
fn the_holder_of_a_copied_token_still_connects_while_copies_keep_arriving() {
    // Someone copied the holder's token off the wire (its first attempt's Connect, lost on
    // the way) and, from an address of its own, sends its Connect with that copy every few
    // milliseconds: replaying the one datagram is enough, its cookie stays valid.
    let mut net = Net::new();
    let server = net.add(token_server_config(211), SERVER_ADDR);
    let now = net.now;
    net.ep(server)
        .set_unix_time(now, Duration::from_secs(UNIX_NOW));
    let token = issue(&TokenSpec {
        entropy: 6,
        ..TokenSpec::default()
    });
    let copier = net.add(client_config(212), SECOND_CLIENT_ADDR);
    let from_copier = addr(SECOND_CLIENT_ADDR);
    let sniffed = Rc::new(RefCell::new(Vec::new()));
    let log = sniffed.clone();
    net.tap = Box::new(move |from, _, bytes| {
        if from != from_copier {
            return true;
        }
        if bytes[0] == TYPE_CONNECT {
            log.borrow_mut().push(bytes.to_vec());
        }
        log.borrow().is_empty()
    });
    net.connect(
        copier,
        SERVER_ADDR,
        &ConnectOptions {
            token: Some(&copied(&token)),
            ..ConnectOptions::default()
        },
    );
    assert!(net.run_until(Duration::from_secs(1), |_| !sniffed.borrow().is_empty()));
    let connect = sniffed.borrow()[0].clone();

    let holder = net.add(client_config(213), CLIENT_ADDR);
    let conn = net.connect(
        holder,
        SERVER_ADDR,
        &ConnectOptions {
            token: Some(&token),
            ..ConnectOptions::default()
        },
    );
    for _ in 0..400 {
        net.run_for(Duration::from_millis(5));
        let now = net.now;
        net.ep(server).handle_datagram(now, from_copier, &connect);
    }
    net.run_for(Duration::from_secs(1));
    let reported = connected(net.nodes[server].events());
    assert_eq!(
        reported.len(),
        1,
        "the server reports the holder (server {:?}, holder {:?})",
        net.nodes[server].events,
        net.nodes[holder].events
    );
    assert!(net.ep(holder).is_connected(conn));
    assert!(disconnects(net.nodes[holder].events()).is_empty());
}

/// A Connect naming a client key of small order (its key exchange would fail, and a failed
/// exchange makes no connection for the pacing per address to hold) is dropped before the
/// accept hook and the key-exchange budget: varying the keys under one cookie, a client
/// once spent the server's whole budget from one address.
#[test]
fn connects_with_small_order_keys_spend_no_key_exchange() {
    let (server_addr, client_addr) = (addr(SERVER_ADDR), addr(CLIENT_ADDR));
    let mut server = Endpoint::new(Config {
        key_exchanges: shoal_proto::RateLimit {
            per_second: 1.0,
            burst: 4.0,
        },
        ..server_config(221)
    })
    .expect("valid config");
    let hooked = Arc::new(AtomicUsize::new(0));
    let count = hooked.clone();
    server.set_accept_hook(Box::new(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }));
    let now = Instant::from_millis(1_000);
    // A real handshake's Connect, with a valid cookie for its address and nonce.
    let mut client = Endpoint::new(client_config(222)).expect("valid config");
    client.connect(now, server_addr, b"").expect("connect");
    let hello = transmit(&mut client, now, server_addr, TYPE_HELLO);
    server.handle_datagram(now, client_addr, &hello);
    let challenge = transmit(&mut server, now, client_addr, 0x32);
    client.handle_datagram(now, server_addr, &challenge);
    let connect = transmit(&mut client, now, server_addr, TYPE_CONNECT);
    // Ten copies under that cookie, each with its own small-order key: the ephemeral key
    // (the all-zero point, or p + 1 with bit 255 set) or a static key of order 8.
    let order_8 = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];
    let mut p_plus_1 = [0xff; 32];
    p_plus_1[0] = 0xee;
    let before = server.stats().drops;
    for i in 0..10u8 {
        let mut packet = Packet::decode(&connect).expect("decodes");
        let Packet::Connect {
            ephemeral,
            static_key,
            ..
        } = &mut packet
        else {
            panic!("a Connect");
        };
        match i % 3 {
            0 => *ephemeral = Some([0; 32]),
            1 => *ephemeral = Some(p_plus_1),
            _ => *static_key = Some(order_8),
        }
        if i % 3 != 2 {
            *static_key = Some([i + 1; 32]);
        }
        server.handle_datagram(now, client_addr, &common::encode(&packet));
    }
    let drops = server.stats().drops;
    let delta = |r: DropReason| drops.get(r) - before.get(r);
    assert_eq!(delta(DropReason::Unauthenticated), 10);
    assert_eq!(delta(DropReason::KeyExchangeBudget), 0);
    assert_eq!(hooked.load(Ordering::SeqCst), 0, "not even the hook ran");
    assert_eq!(server.connection_count(), 0);
    // The genuine Connect still finds the whole budget: accepted.
    server.handle_datagram(now, client_addr, &connect);
    assert_eq!(hooked.load(Ordering::SeqCst), 1);
    assert_eq!(
        server.connection_count(),
        1,
        "accepted, awaiting its first packet"
    );
    transmit(&mut server, now, client_addr, TYPE_ACCEPT);
}

#[test]
fn an_accept_naming_another_connections_id_is_a_protocol_violation() {
    // Plain mode for all three endpoints: the test plays the hostile server M and writes its
    // Accept by hand, which it could not tag (a hostile M holds its own keys and could; the
    // test has no way to compute the tag). The id is checked before anything else in the
    // Accept, so a plain one takes the same path.
    let mut net = Net::new();
    let a = net.add(plain(server_config(231)), SERVER_ADDR);
    let c = net.add(plain(client_config(232)), CLIENT_ADDR);
    let m = net.add(plain(server_config(233)), OTHER_SERVER_ADDR);
    let c_conn = net.connect(c, SERVER_ADDR, &ConnectOptions::default());
    assert!(net.run_until(Duration::from_secs(5), |n| {
        !connected(n.nodes[a].events()).is_empty() && !connected(n.nodes[c].events()).is_empty()
    }));
    let a_c = connected_to(&net, a, CLIENT_ADDR);
    // C's connection id, read off the clear header of its Data packets: the id A routes C's
    // packets by.
    let wire = record_wire(&mut net);
    deliver(&mut net, (c, c_conn), a, b"sniff me");
    let c_id = wire
        .borrow()
        .iter()
        .find(|(from, _, d)| *from == addr(CLIENT_ADDR) && d[0] == TYPE_DATA)
        .map(|(.., d)| u64::from_be_bytes(d[1..9].try_into().expect("8 bytes")))
        .expect("a Data packet from C");

    // A connects out to M; M's real Accept is lost, and M sends one naming C's id instead.
    let from_m = addr(OTHER_SERVER_ADDR);
    let log = wire.clone();
    net.tap = Box::new(move |from, to, bytes| {
        log.borrow_mut().push((from, to, bytes.to_vec()));
        !(from == from_m && bytes[0] == TYPE_ACCEPT)
    });
    let a_m = net.connect(a, OTHER_SERVER_ADDR, &ConnectOptions::default());
    let sent = |ty: u8| {
        wire.borrow()
            .iter()
            .find(|(from, to, d)| *from == addr(SERVER_ADDR) && *to == from_m && d[0] == ty)
            .map(|(.., d)| d.clone())
    };
    assert!(net.run_until(Duration::from_secs(1), |_| sent(TYPE_CONNECT).is_some()));
    let hello = sent(TYPE_HELLO).expect("A's Hello");
    let nonce = u64::from_be_bytes(hello[5..13].try_into().expect("8 bytes"));
    let forged = common::encode(&Packet::Accept {
        client_nonce: nonce,
        connection_id: c_id,
        user_id: 1,
        reassembly_budget: 1 << 20,
        protection: Protection::None,
        ephemeral: None,
        static_key: None,
        tag: None,
    });
    let now = net.now;
    net.ep(a).handle_datagram(now, from_m, &forged);
    net.flush();
    assert_eq!(
        net.nodes[a]
            .events()
            .filter(|e| matches!(e, Event::ConnectFailed { conn, .. } if *conn == a_m))
            .cloned()
            .collect::<Vec<_>>(),
        vec![Event::ConnectFailed {
            conn: a_m,
            reason: DisconnectReason::ProtocolViolation
        }],
        "A's connection to M ends as a protocol violation"
    );
    assert_eq!(
        net.ep(a).stats().drops.get(DropReason::ProtocolViolation),
        1
    );
    assert!(!net.ep(a).is_connected(a_m));
    assert_eq!(connected(net.nodes[a].events()).len(), 1, "only C's");
    assert!(net.nodes[m].events.is_empty(), "M never reported A");

    // C's connection keeps its id: its packets still reach it, both ways.
    deliver(&mut net, (c, c_conn), a, b"still routed to C's connection");
    deliver(&mut net, (a, a_c), c, b"and back");
    let on_a: Vec<ConnectionHandle> = net.nodes[a]
        .events()
        .filter_map(|e| match e {
            Event::Message { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect();
    assert_eq!(on_a, vec![a_c, a_c], "every message came on C's connection");
    net.run_for(Duration::from_secs(2));
    assert!(net.ep(a).is_connected(a_c) && net.ep(c).is_connected(c_conn));
    assert!(disconnects(net.nodes[c].events()).is_empty());
    assert_eq!(disconnects(net.nodes[a].events()).len(), 1);
}

#[test]
fn an_endpoint_with_protection_needs_a_secret_seed() {
    let missing = Endpoint::new(Config::default()).err();
    assert_eq!(missing, Some(ConfigError::SecretSeedMissing));
    let message = ConfigError::SecretSeedMissing.to_string();
    assert!(message.contains("secret_seed"), "{message}");
    assert!(
        Config::default().validate().is_ok(),
        "the config itself is fine: Endpoint::new checks the seed"
    );
    assert!(Endpoint::new(Config {
        secret_seed: Some(SecretSeed::insecure_from_u64(1)),
        ..Config::default()
    })
    .is_ok());
    assert!(
        Endpoint::new(Config {
            protection: Protection::None,
            ..Config::default()
        })
        .is_ok(),
        "plain mode has no keys to derive"
    );

    // Settings that only protection keeps.
    let tokens = || Some(TokenConfig::new(TOKEN_KEY, vec![addr(SERVER_ADDR)]));
    let keypair = || Some(Keypair::from_secret([0x5e; 32]));
    for (config, name) in [
        (
            Config {
                tokens: tokens(),
                ..plain(server_config(241))
            },
            "tokens",
        ),
        (
            Config {
                static_keypair: keypair(),
                ..plain(server_config(241))
            },
            "static_keypair",
        ),
    ] {
        assert_eq!(
            config.validate(),
            Err(ConfigError::ProtectionRequired(name))
        );
        assert_eq!(
            Endpoint::new(config).err(),
            Some(ConfigError::ProtectionRequired(name))
        );
        let message = ConfigError::ProtectionRequired(name).to_string();
        assert!(message.contains(name), "{message}");
    }
    // The control: with protection both are fine.
    assert!(Endpoint::new(Config {
        tokens: tokens(),
        static_keypair: keypair(),
        ..server_config(241)
    })
    .is_ok());
}

/// A client connecting to two servers, and a second client to the first of them; returns
/// every datagram on the wire, in order.
fn two_handshakes_each(
    client_seed: u64,
    secret: Option<SecretSeed>,
) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    let mut net = Net::new();
    let first = net.add(server_config(251), SERVER_ADDR);
    let second = net.add(server_config(252), OTHER_SERVER_ADDR);
    let client = net.add(
        Config {
            secret_seed: secret.or(client_config(client_seed).secret_seed),
            ..client_config(client_seed)
        },
        CLIENT_ADDR,
    );
    let other = net.add(client_config(254), SECOND_CLIENT_ADDR);
    let wire = record_wire(&mut net);
    net.connect(client, SERVER_ADDR, &ConnectOptions::default());
    net.connect(client, OTHER_SERVER_ADDR, &ConnectOptions::default());
    net.connect(other, SERVER_ADDR, &ConnectOptions::default());
    assert!(net.run_until(Duration::from_secs(5), |n| {
        connected(n.nodes[client].events()).len() == 2
            && connected(n.nodes[other].events()).len() == 1
            && connected(n.nodes[first].events()).len() == 2
            && connected(n.nodes[second].events()).len() == 1
    }));
    let datagrams = wire.borrow().clone();
    datagrams
}

/// The ephemeral keys of the handshake packets of type `ty` (`Connect` or `Accept`) on
/// `wire`, by sender and receiver (retransmissions carry the same key).
fn ephemeral_keys(
    wire: &[(SocketAddr, SocketAddr, Vec<u8>)],
    ty: u8,
) -> Vec<((SocketAddr, SocketAddr), [u8; 32])> {
    let mut keys: Vec<((SocketAddr, SocketAddr), [u8; 32])> = Vec::new();
    for (from, to, d) in wire.iter().filter(|(.., d)| d[0] == ty) {
        let key = match Packet::decode(d).expect("decodes") {
            Packet::Connect {
                ephemeral: Some(k), ..
            }
            | Packet::Accept {
                ephemeral: Some(k), ..
            } => k,
            other => panic!("no ephemeral key: {other:?}"),
        };
        if !keys.contains(&((*from, *to), key)) {
            keys.push(((*from, *to), key));
        }
    }
    keys
}

#[test]
fn ephemeral_keys_differ_per_handshake_and_runs_repeat() {
    let wire = two_handshakes_each(253, None);
    let (client, other) = (addr(CLIENT_ADDR), addr(SECOND_CLIENT_ADDR));
    let (first, second) = (addr(SERVER_ADDR), addr(OTHER_SERVER_ADDR));
    let connects = ephemeral_keys(&wire, TYPE_CONNECT);
    let accepts = ephemeral_keys(&wire, TYPE_ACCEPT);
    let pairs = |keys: &[((SocketAddr, SocketAddr), [u8; 32])]| {
        let mut p: Vec<_> = keys.iter().map(|(p, _)| *p).collect();
        p.sort();
        p
    };
    // One key per handshake, the same in every copy of its Connect (or Accept)...
    let mut want = vec![(client, first), (client, second), (other, first)];
    want.sort();
    assert_eq!(pairs(&connects), want, "one key per Connect: {connects:?}");
    let mut want = vec![(first, client), (second, client), (first, other)];
    want.sort();
    assert_eq!(pairs(&accepts), want, "one key per Accept: {accepts:?}");
    // ...and no two handshakes share one: not the client's two Connects, not the first
    // server's two Accepts, nor any other pair.
    let all: std::collections::HashSet<[u8; 32]> =
        connects.iter().chain(&accepts).map(|(_, k)| *k).collect();
    assert_eq!(all.len(), 6, "six distinct ephemeral keys");

    // Determinism: the same configs give the same bytes, Hellos and Connects included.
    let again = two_handshakes_each(253, None);
    assert!(wire.iter().any(|(.., d)| d[0] == TYPE_HELLO));
    assert_eq!(wire, again, "the run repeats byte for byte");
    // The keys follow from the secret seed, not from the 64-bit seed alone.
    let reseeded = two_handshakes_each(253, Some(SecretSeed([0x42; 32])));
    let theirs = ephemeral_keys(&reseeded, TYPE_CONNECT);
    for ((from, to), key) in &connects {
        if *from == client {
            assert!(
                theirs.iter().all(|(_, k)| k != key),
                "another secret seed, other keys (to {to})"
            );
        }
    }
}

#[test]
fn a_forged_accept_naming_another_connections_id_does_not_end_a_protected_handshake() {
    // As above, protected, and the Accept is not M's: an attacker on the path, who read C's
    // id off a Data header and A's nonce off its Hello, wrote it with a tag it made up.
    let mut net = Net::new();
    let a = net.add(server_config(261), SERVER_ADDR);
    let c = net.add(client_config(262), CLIENT_ADDR);
    let m = net.add(server_config(263), OTHER_SERVER_ADDR);
    let c_conn = net.connect(c, SERVER_ADDR, &ConnectOptions::default());
    assert!(net.run_until(Duration::from_secs(5), |n| {
        !connected(n.nodes[a].events()).is_empty() && !connected(n.nodes[c].events()).is_empty()
    }));
    let a_c = connected_to(&net, a, CLIENT_ADDR);
    let wire = record_wire(&mut net);
    deliver(&mut net, (c, c_conn), a, b"sniff me");
    let c_id = wire
        .borrow()
        .iter()
        .find(|(from, _, d)| *from == addr(CLIENT_ADDR) && d[0] == TYPE_DATA)
        .map(|(.., d)| u64::from_be_bytes(d[1..9].try_into().expect("8 bytes")))
        .expect("a Data packet from C");
    let from_m = addr(OTHER_SERVER_ADDR);
    let sent = |ty: u8| {
        wire.borrow()
            .iter()
            .find(|(from, to, d)| *from == addr(SERVER_ADDR) && *to == from_m && d[0] == ty)
            .map(|(.., d)| d.clone())
    };
    let a_m = net.connect(a, OTHER_SERVER_ADDR, &ConnectOptions::default());
    assert!(net.run_until(Duration::from_secs(1), |_| sent(TYPE_CONNECT).is_some()));
    let hello = sent(TYPE_HELLO).expect("A's Hello");
    let nonce = u64::from_be_bytes(hello[5..13].try_into().expect("8 bytes"));
    let forged = common::encode(&Packet::Accept {
        client_nonce: nonce,
        connection_id: c_id,
        user_id: 1,
        reassembly_budget: 1 << 20,
        protection: Protection::Encrypted,
        ephemeral: Some(Keypair::from_secret([0xf0; 32]).public_key().0),
        static_key: None,
        tag: Some([0x5a; TAG_LEN]),
    });
    let now = net.now;
    net.ep(a).handle_datagram(now, from_m, &forged);
    net.flush();
    assert!(
        disconnects(net.nodes[a].events()).is_empty(),
        "the forged Accept ended something: {:?}",
        net.nodes[a].events
    );
    // M's real Accept completes the handshake; C's connection is untouched.
    assert!(net.run_until(Duration::from_secs(5), |n| n.nodes[a].ep.is_connected(a_m)));
    assert!(
        net.run_until(Duration::from_secs(1), |n| !connected(n.nodes[m].events())
            .is_empty())
    );
    deliver(&mut net, (c, c_conn), a, b"still C's");
    deliver(&mut net, (a, a_c), c, b"and back");
    assert!(disconnects(net.nodes[a].events()).is_empty());
}

// ======================================================================== second review

const MOVED_ADDR: &str = "10.0.0.4:5000";

#[test]
fn a_connection_that_moved_never_lends_its_old_address_to_a_later_handshake() {
    // A live connection, and a Connect from its address that never completes (a pending
    // replacement of it).
    let (mut net, server, client, c, s) = live_connection(false, 301);
    let mut other = Endpoint::new(client_config(303)).expect("valid config");
    connect_from(&mut net, server, CLIENT_ADDR, &mut other, None);
    assert_eq!(net.ep(server).connection_count(), 2);
    // The client's NAT rebinds: the connection moves.
    net.nodes[client].addr = addr(MOVED_ADDR);
    deliver(&mut net, (client, c), server, b"from the new address");
    deliver(&mut net, (client, c), server, b"again");
    deliver(&mut net, (server, s), client, b"back");
    // The pending one gives up: the old address is not handed back to a connection that no
    // longer lives there.
    assert!(net.run_until(Duration::from_secs(8), |n| n.nodes[server]
        .ep
        .connection_count()
        == 1));
    assert!(net.ep(server).is_connected(s));
    net.ep(client).disconnect(c, 0);
    assert!(net.run_until(Duration::from_secs(2), |n| n.nodes[server]
        .ep
        .connection_count()
        == 0));
    // The old address connects as anyone would.
    let fresh = net.add(client_config(305), CLIENT_ADDR);
    let fc = net.connect(fresh, SERVER_ADDR, &ConnectOptions::default());
    let (_, outcome) = net.outcome(fresh, Duration::from_secs(5));
    assert!(matches!(outcome, Event::Connected { .. }), "{outcome:?}");
    net.ep(fresh).disconnect(fc, 0);
    net.run_for(Duration::from_secs(1));
    net.nodes[fresh].addr = addr("10.0.0.200:1");
    // A client at an unrelated address, then a handshake from the old address: nobody but
    // a connection at that address is ever replaced.
    let victim = net.add(client_config(307), SECOND_CLIENT_ADDR);
    let vc = net.connect(victim, SERVER_ADDR, &ConnectOptions::default());
    let (_, outcome) = net.outcome(victim, Duration::from_secs(5));
    assert!(matches!(outcome, Event::Connected { .. }), "{outcome:?}");
    net.run_for(Duration::from_millis(200));
    let vs = connected_to(&net, server, SECOND_CLIENT_ADDR);
    let later = net.add(client_config(309), CLIENT_ADDR);
    net.connect(later, SERVER_ADDR, &ConnectOptions::default());
    let (_, outcome) = net.outcome(later, Duration::from_secs(5));
    assert!(matches!(outcome, Event::Connected { .. }), "{outcome:?}");
    net.run_for(Duration::from_millis(200));
    assert!(
        net.ep(server).is_connected(vs),
        "the unrelated client is untouched"
    );
    assert!(net.ep(victim).is_connected(vc));
}

#[test]
fn an_endpoint_keeps_no_seed_that_could_regenerate_its_ephemeral_keys() {
    let mut net = Net::new();
    net.add(server_config(801), SERVER_ADDR);
    let client = net.add(client_config(802), CLIENT_ADDR);
    for _ in 0..3 {
        let c = net.connect(client, SERVER_ADDR, &ConnectOptions::default());
        assert!(net.run_until(Duration::from_secs(5), |n| n.nodes[client]
            .ep
            .is_connected(c)));
        net.ep(client).disconnect(c, 0);
        net.run_for(Duration::from_secs(1));
    }
    // What its memory shows of its configuration cannot rebuild the key ratchet.
    let leaked = net.ep(client).config().clone();
    assert!(leaked.secret_seed.is_none(), "the seed was wiped after use");
    assert!(matches!(
        Endpoint::new(leaked).map(|_| ()),
        Err(ConfigError::SecretSeedMissing)
    ));
}

#[test]
fn the_memory_of_used_tokens_is_bounded_and_forgets_only_expired_ones() {
    // Room for two remembered tokens; each client holds its own valid token.
    let mut net = Net::new();
    let mut config = token_server_config(401);
    if let Some(tokens) = config.tokens.as_mut() {
        tokens.max_used_tokens = 2;
    }
    let server = net.add(config, SERVER_ADDR);
    let now = net.now;
    net.ep(server)
        .set_unix_time(now, Duration::from_secs(UNIX_NOW));
    let connect = |net: &mut Net, i: u8, expires_at: u64| {
        let client = net.add(
            client_config(400 + u64::from(i)),
            &format!("10.0.2.{i}:5000"),
        );
        let token = issue(&TokenSpec {
            entropy: 10 + i,
            expires_at,
            ..TokenSpec::default()
        });
        net.connect(
            client,
            SERVER_ADDR,
            &ConnectOptions {
                token: Some(&token),
                ..ConnectOptions::default()
            },
        );
        net.outcome(client, Duration::from_secs(5)).1
    };
    // Two tokens that expire in a minute fill the memory...
    for i in 1..=2 {
        let outcome = connect(&mut net, i, UNIX_NOW + 60);
        assert!(matches!(outcome, Event::Connected { .. }), "{outcome:?}");
    }
    // ...so a third valid token is refused as if the server were full, and counted.
    let outcome = connect(&mut net, 3, UNIX_NOW + 3_600);
    assert!(
        matches!(
            outcome,
            Event::ConnectFailed {
                reason: DisconnectReason::ServerFull,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(net.ep(server).stats().drops.get(DropReason::TokenReplay), 1);
    // Once the remembered ones have expired they are forgotten, and room returns.
    net.run_for(Duration::from_secs(61));
    let outcome = connect(&mut net, 4, UNIX_NOW + 3_600);
    assert!(matches!(outcome, Event::Connected { .. }), "{outcome:?}");
}

/// Clients at `addrs` (seeds from `seed`), each connecting to `server_addr` at `now`, with
/// a handshake timeout long enough to wait out any key-exchange budget.
fn clients_connecting(
    addrs: impl Iterator<Item = SocketAddr>,
    seed: u64,
    server_addr: SocketAddr,
    now: Instant,
) -> Vec<(Endpoint, SocketAddr)> {
    addrs
        .enumerate()
        .map(|(i, a)| {
            let config = Config {
                handshake_timeout: Duration::from_secs(30),
                ..client_config(seed + i as u64)
            };
            let mut c = Endpoint::new(config).expect("valid");
            c.connect(now, server_addr, b"").expect("connect");
            (c, a)
        })
        .collect()
}

/// One turn of a server and clients at their own addresses: timers, every datagram both
/// ways, every event read.
fn turn_many(
    server: &mut Endpoint,
    clients: &mut [(Endpoint, SocketAddr)],
    server_addr: SocketAddr,
    now: Instant,
    buf: &mut [u8],
) {
    for (c, a) in clients.iter_mut() {
        c.handle_timeout(now);
        while let Some(t) = c.poll_transmit(now, buf) {
            server.handle_datagram(now, *a, &buf[..t.len]);
        }
    }
    server.handle_timeout(now);
    while let Some(t) = server.poll_transmit(now, buf) {
        if let Some((c, _)) = clients.iter_mut().find(|(_, a)| *a == t.to) {
            c.handle_datagram(now, server_addr, &buf[..t.len]);
        }
    }
    while server.poll_event().is_some() {}
    for (c, _) in clients.iter_mut() {
        while c.poll_event().is_some() {}
    }
}

/// One network flooding Connects takes at most its share of the key exchanges once they
/// run short: the clients of other networks arriving at the same instant all get theirs at
/// once, where before the flood (first in line) took the whole budget.
#[test]
fn one_network_cannot_spend_every_key_exchange() {
    const FLOOD: usize = 60;
    const OTHERS: usize = 10;
    let mut server = Endpoint::new(Config {
        key_exchanges: RateLimit {
            per_second: 20.0,
            burst: 40.0,
        },
        key_exchanges_per_network: RateLimit {
            per_second: 5.0,
            burst: 5.0,
        },
        ..server_config(1)
    })
    .expect("valid");
    let server_addr = addr(SERVER_ADDR);
    // The flood from one /24 first, then one client from each of ten other /24s.
    let flood = (0..FLOOD).map(|i| SocketAddr::from(([10, 3, 0, i as u8 + 1], 5000)));
    let others = (0..OTHERS).map(|i| SocketAddr::from(([10, 4, i as u8, 1], 5000)));
    let mut now = Instant::from_millis(1);
    let mut clients = clients_connecting(flood.chain(others), 200, server_addr, now);
    let mut buf = vec![0u8; 1500];
    for _ in 0..20 {
        turn_many(&mut server, &mut clients, server_addr, now, &mut buf);
        now += Duration::from_millis(10);
    }
    let connected = |range: core::ops::Range<usize>| {
        let taken: Vec<SocketAddr> = server
            .peers()
            .filter_map(|h| server.remote_address(h))
            .collect();
        clients[range]
            .iter()
            .filter(|(_, a)| taken.contains(a))
            .count()
    };
    // 200 ms: the flood's network had half the endpoint's burst uncontended, then its own
    // 5 and 1 more.
    assert!(connected(0..FLOOD) <= 20 + 5 + 1, "{}", connected(0..FLOOD));
    assert_eq!(connected(FLOOD..FLOOD + OTHERS), OTHERS);
    assert!(server.stats().drops.get(DropReason::KeyExchangeBudget) > 0);
}

/// Key exchanges are the costliest thing a stranger can ask of a server (X25519, some
/// 100-150 µs each), and the limits per address do not bound them (a host with an IPv6 /48
/// holds 65,536 /64s): the endpoint takes them at `Config::key_exchanges`' rate. Forty
/// clients from forty addresses connecting at once to a server that takes ten at once and
/// five a second: ten at first, five more a second, each Connect past the rate dropped
/// unanswered and counted, and every client connected in the end (their Connects are sent
/// again).
#[test]
fn key_exchanges_are_taken_at_the_configured_rate() {
    const CLIENTS: usize = 40;
    let mut server = Endpoint::new(Config {
        key_exchanges: RateLimit {
            per_second: 5.0,
            burst: 10.0,
        },
        ..server_config(1)
    })
    .expect("valid");
    let server_addr = addr(SERVER_ADDR);
    let addrs = (0..CLIENTS).map(|i| SocketAddr::from(([10, 2, 0, i as u8 + 1], 5000)));
    let mut now = Instant::from_millis(1);
    let mut clients = clients_connecting(addrs, 100, server_addr, now);
    let mut buf = vec![0u8; 1500];
    let connected_at = |server: &Endpoint| server.peers().count();
    let mut step = |server: &mut Endpoint, clients: &mut Vec<(Endpoint, SocketAddr)>, now| {
        turn_many(server, clients, server_addr, now, &mut buf);
    };
    let mut counts = Vec::new();
    for second in 0..12 {
        for _ in 0..100 {
            step(&mut server, &mut clients, now);
            now += Duration::from_millis(10);
        }
        counts.push((second, connected_at(&server)));
    }
    let after = |s: usize| counts[s].1;
    assert!(after(0) <= 10 + 5, "{counts:?}");
    assert!(after(2) <= 10 + 3 * 5, "{counts:?}");
    assert_eq!(after(11), CLIENTS, "{counts:?}: every client got in");
    assert!(server.stats().drops.get(DropReason::KeyExchangeBudget) > 0);
}
