//! Hostile peers and attackers who sniffed a connection id: forged, replayed and garbage
//! datagrams, spoofed disconnects, NAT rebinding and path validation, memory attacks on
//! reassembly, budget fairness, a flooding peer against a stalled application, configuration
//! limits, and the unpredictability of identifiers.
//!
//! Every test is deterministic: seeded endpoints and virtual time, either through `Pair`
//! (tests/common) or through `Net` below (several endpoints, routing by address, a NAT that
//! can rebind, and a tap that sees and may drop every datagram).
//!
//! # Memory measurement
//!
//! A counting `#[global_allocator]` (below) tracks live heap bytes and their peak. Tests in one
//! binary run on several threads, so each memory test runs again in a fresh process of its
//! own (this binary, filtered to that one test, one thread) and measures there; the parent
//! only checks that the child passed.
#![allow(unsafe_code)] // the counting allocator, and nothing else

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{addr, data_packet, encode, messages, peer_user_id, plain, Pair, TestRng};
use shoal_proto::fuzzing::wire::{
    ChunkInfo, CloseCode, Frame, Frames, MessageHeader, Packet, SendType,
};
use shoal_proto::{
    Config, ConfigError, ConnectionHandle, DisconnectReason, DropReason, Endpoint, Event, Instant,
    MAX_DURATION,
};

// Hostile peers are played with hand-built clear packets: these endpoints run unprotected
// (the secure tests cover what protection adds).
fn client_config(seed: u64) -> Config {
    plain(common::client_config(seed))
}

fn server_config(seed: u64) -> Config {
    plain(common::server_config(seed))
}

// ------------------------------------------------------------------------ memory measurement

/// Set in the environment of a test re-run in its own process.
const CHILD_ENV: &str = "SHOAL_HOSTILE_ISOLATED";
const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;

/// Runs a memory-measuring test in a process of its own: in the parent, re-runs this binary
/// filtered to `test` and checks that it passed (returns `false`: the body already ran); in
/// that child, returns `true` and the body runs there.
fn run_isolated(test: &str) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([
            test,
            "--exact",
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout.lines() {
        if let Some(at) = line.find("[memory]") {
            println!("{}", &line[at..]);
        }
    }
    assert!(
        out.status.success(),
        "{test} failed in its own process:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run in its own process (wrong name?):\n{stdout}"
    );
    false
}

/// Wraps the system allocator, counting live bytes and their peak.
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain atomics.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Growth of the live heap from a baseline, with its peak.
struct Resident {
    base: usize,
}

impl Resident {
    /// Starts measuring from the live heap now.
    fn start() -> Option<Self> {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        Some(Resident { base })
    }

    /// Kept for the call sites: the allocator sees every peak by itself.
    fn sample(&mut self) {}

    /// Peak growth so far.
    fn growth(&mut self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}

/// Checks the peak heap growth against `limit` and reports it.
fn check_growth(resident: Option<Resident>, what: &str, budget: usize, limit: usize) {
    let Some(mut r) = resident else {
        return;
    };
    let growth = r.growth();
    println!(
        "[memory] {what}: peak live heap growth {} KiB (budget {} KiB, limit {} KiB)",
        growth / KIB,
        budget / KIB,
        limit / KIB
    );
    assert!(
        growth <= limit,
        "{what}: the heap grew by {growth} bytes, more than {limit} (budget {budget})"
    );
}

// ------------------------------------------------------------------------ packets by hand

/// A message header as a peer writes it.
fn header(channel: u8, owner: u16, sequence: u16, chunk: Option<(u16, u16)>) -> MessageHeader {
    MessageHeader {
        channel,
        send_type: SendType::Message,
        reliable: false,
        owner,
        sequence,
        redirect: None,
        chunk: chunk.map(|(index, count)| ChunkInfo { index, count }),
    }
}

/// Appends one encoded frame to `out`.
fn push_frame(out: &mut Vec<u8>, header: MessageHeader, payload: &[u8]) {
    let mut buf = vec![0u8; header.encoded_len() + 3 + payload.len()];
    let n = Frame { header, payload }
        .encode_to(&mut buf)
        .expect("frame encodes");
    out.extend_from_slice(&buf[..n]);
}

/// A `Data` packet without acknowledgement.
/// Bytes a `Data` packet takes besides its frames (no acknowledgement).
const DATA_OVERHEAD: usize = 14;

fn packet_type(bytes: &[u8]) -> u8 {
    bytes.first().map_or(0, |b| b & 0x0f)
}
const TYPE_DATA: u8 = 6;
const TYPE_PATH_CHALLENGE: u8 = 8;
const TYPE_PATH_RESPONSE: u8 = 9;

fn count_messages(events: &[Event], channel: u8, payload: &[u8]) -> usize {
    messages(events, channel)
        .iter()
        .filter(|m| m.as_slice() == payload)
        .count()
}

fn disconnects(events: &[Event]) -> Vec<DisconnectReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Disconnected { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------------ an attacker's view

/// A connected pair, seen by an attacker who sniffed one client datagram.
struct Sniffed {
    p: Pair,
    client: ConnectionHandle,
    server: ConnectionHandle,
    /// The connection id.
    id: u64,
    /// The client's user id (what its frames carry as owner).
    owner: u16,
    /// The packet number after the newest the server has received from the client.
    next_pn: u32,
}

fn sniffed(client: Config, server: Config) -> Sniffed {
    let mut p = Pair::new(client, server);
    let (c, s) = p.connect();
    p.run_for(Duration::from_millis(50));
    p.client.send(c, 2, &b"probe"[..]).expect("send");
    let mut buf = vec![0u8; 65_535];
    let t = p.client.poll_transmit(p.now, &mut buf).expect("a datagram");
    let Ok(Packet::Data { header, .. }) = Packet::decode(&buf[..t.len]) else {
        panic!("expected a Data packet");
    };
    p.server
        .handle_datagram(p.now, p.client_addr, &buf[..t.len]);
    while let Some(e) = p.server.poll_event() {
        p.server_events.push(e);
    }
    let owner = peer_user_id(&p.server_events);
    Sniffed {
        p,
        client: c,
        server: s,
        id: header.connection_id,
        owner,
        next_pn: header.packet_number + 1,
    }
}

/// Takes every datagram the server wants to send now: those for the client are handed to it
/// at once (a perfect link), the others are returned.
fn drain_server(p: &mut Pair) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0u8; 1500];
    let mut others = Vec::new();
    while let Some(t) = p.server.poll_transmit(p.now, &mut buf) {
        if t.to == p.client_addr {
            p.client
                .handle_datagram(p.now, p.server_addr, &buf[..t.len]);
        } else {
            others.push((t.to, buf[..t.len].to_vec()));
        }
    }
    others
}

/// The attacker at `at` answers every path challenge the server sent it. Returns how many.
fn answer_challenges(p: &mut Pair, at: SocketAddr) -> usize {
    let mut answered = 0;
    for (to, bytes) in drain_server(p) {
        if to != at {
            continue;
        }
        if let Ok(Packet::PathChallenge {
            connection_id,
            token,
            ..
        }) = Packet::decode(&bytes)
        {
            let response = encode(&Packet::PathResponse {
                connection_id,
                packet_number: 8_000 + answered as u32,
                token,
            });
            p.server.handle_datagram(p.now, at, &response);
            answered += 1;
        }
    }
    answered
}

/// The server sends what it has (into `buf`, dropped: nobody reads it), and a
/// millisecond passes for its timers.
fn server_turn(p: &mut Pair, buf: &mut [u8]) {
    while p.server.poll_transmit(p.now, buf).is_some() {}
    p.now += Duration::from_millis(1);
    p.server.handle_timeout(p.now);
}

fn conn_drops(ep: &Endpoint, conn: ConnectionHandle, reason: DropReason) -> u64 {
    ep.connection_stats(conn).expect("live").drops.get(reason)
}

// ------------------------------------------------------------------------ Net

/// One endpoint on the network.
struct Node {
    ep: Endpoint,
    /// Where its datagrams appear to come from (its NAT's current mapping), and the only
    /// address at which it receives.
    addr: SocketAddr,
    events: Vec<Event>,
    /// Whether its application polls events.
    polling: bool,
}

/// One datagram, as the network saw it.
#[derive(Clone, Debug)]
struct Traced {
    /// Sent (by `from`), or delivered (to `to`).
    sent: bool,
    from: SocketAddr,
    to: SocketAddr,
    len: usize,
    kind: u8,
}

/// Decides the fate of a datagram leaving node `src` for `to`: `None` drops it, `Some(extra)`
/// delivers it `extra` later than the link's latency.
type Tap = Box<dyn FnMut(usize, SocketAddr, &[u8]) -> Option<Duration>>;

type InFlight = Reverse<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>;

/// Endpoints joined by an in-memory network routing by address, with a virtual clock that
/// jumps to the next event.
struct Net {
    nodes: Vec<Node>,
    now: Instant,
    latency: Duration,
    tap: Tap,
    in_flight: BinaryHeap<InFlight>,
    counter: u64,
    /// Datagrams that reached an address no node has: (from, to, bytes).
    unclaimed: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    trace: Option<Vec<Traced>>,
    buf: Vec<u8>,
}

impl Net {
    fn new() -> Self {
        Net {
            nodes: Vec::new(),
            now: Instant::from_millis(1_000),
            latency: Duration::from_millis(10),
            tap: Box::new(|_, _, _| Some(Duration::ZERO)),
            in_flight: BinaryHeap::new(),
            counter: 0,
            unclaimed: Vec::new(),
            trace: None,
            buf: vec![0; 65_536],
        }
    }

    fn add(&mut self, config: Config, at: SocketAddr) -> usize {
        self.nodes.push(Node {
            ep: Endpoint::new(config).expect("valid config"),
            addr: at,
            events: Vec::new(),
            polling: true,
        });
        self.nodes.len() - 1
    }

    fn ep(&mut self, node: usize) -> &mut Endpoint {
        &mut self.nodes[node].ep
    }

    /// Starts a connection from `client` to `server`.
    fn connect(&mut self, client: usize, server: usize) -> ConnectionHandle {
        let to = self.nodes[server].addr;
        let now = self.now;
        self.nodes[client]
            .ep
            .connect(now, to, b"hi")
            .expect("connect")
    }

    /// The server's handle of the connection from `remote` (from its `Connected` event).
    fn accepted(&self, server: usize, remote: SocketAddr) -> Option<ConnectionHandle> {
        self.nodes[server].events.iter().find_map(|e| match e {
            Event::Connected {
                conn, remote: r, ..
            } if *r == remote => Some(*conn),
            _ => None,
        })
    }

    fn record(&mut self, sent: bool, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        if let Some(trace) = &mut self.trace {
            trace.push(Traced {
                sent,
                from,
                to,
                len: bytes.len(),
                kind: packet_type(bytes),
            });
        }
    }

    /// Moves every datagram the endpoints want to send into the network, and the events of
    /// polling applications into their nodes.
    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            loop {
                let now = self.now;
                let Some(t) = self.nodes[i].ep.poll_transmit(now, &mut self.buf) else {
                    break;
                };
                let from = self.nodes[i].addr;
                let bytes = self.buf[..t.len].to_vec();
                self.record(true, from, t.to, &bytes);
                if let Some(extra) = (self.tap)(i, t.to, &bytes) {
                    self.counter += 1;
                    let at = now + self.latency + extra;
                    self.in_flight
                        .push(Reverse((at, self.counter, from, t.to, bytes)));
                }
            }
            let node = &mut self.nodes[i];
            if node.polling {
                while let Some(e) = node.ep.poll_event() {
                    node.events.push(e);
                }
            }
        }
    }

    /// Hands a datagram to the node at `to` now (or keeps it as unclaimed).
    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        match self.nodes.iter().position(|n| n.addr == to) {
            Some(i) => {
                self.record(false, from, to, &bytes);
                let now = self.now;
                self.nodes[i].ep.handle_datagram(now, from, &bytes);
            }
            None => self.unclaimed.push((from, to, bytes)),
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
            self.deliver(from, to, bytes);
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
}

// ======================================================================== 1. far-ahead numbers

/// The frames of a forged packet: one message "forged" on channel 2, from `owner`.
fn forged_message(owner: u16) -> Vec<u8> {
    let mut forged = Vec::new();
    push_frame(&mut forged, header(2, owner, 100, None), b"forged");
    forged
}

#[test]
fn a_far_ahead_packet_from_a_new_address_never_moves_the_connection() {
    let Sniffed {
        mut p,
        client: c,
        server: s,
        id,
        owner,
        next_pn,
    } = sniffed(client_config(1), server_config(2));
    let real = p.client_addr;
    let forged = forged_message(owner);
    let far = [
        next_pn.wrapping_add(16_385),
        next_pn.wrapping_add(100_000),
        next_pn.wrapping_add(0x7fff_fff0),
        next_pn.wrapping_add(0x8000_0000),
        next_pn.wrapping_sub(1_000_000),
    ];

    // An attacker who cannot receive at its address: numbers no honest packet has are
    // refused before its address is considered, so they earn it nothing, not even a
    // challenge.
    let blind = addr("192.0.2.66:6666");
    for pn in far {
        p.server
            .handle_datagram(p.now, blind, &data_packet(id, pn, &forged));
    }
    let sent = drain_server(&mut p);
    assert!(
        sent.iter().all(|(to, _)| *to != blind),
        "nothing to {blind}"
    );
    assert_eq!(conn_drops(&p.server, s, DropReason::UnvalidatedPath), 0);
    assert_eq!(conn_drops(&p.server, s, DropReason::OutOfWindow), 3);
    assert_eq!(conn_drops(&p.server, s, DropReason::DuplicatePacket), 2);

    // An attacker who receives at its address and answers the challenge a plausible number
    // earned (plain packets: anyone can write one): validated, yet a far-ahead number is
    // still refused, so the connection stays where it is.
    let onpath = addr("198.51.100.9:7777");
    p.server.handle_datagram(
        p.now,
        onpath,
        &data_packet(id, next_pn.wrapping_add(10), &forged),
    );
    assert_eq!(answer_challenges(&mut p, onpath), 1, "challenged once");
    let out_of_window_before = conn_drops(&p.server, s, DropReason::OutOfWindow);
    let duplicate_before = conn_drops(&p.server, s, DropReason::DuplicatePacket);
    for pn in far {
        p.server
            .handle_datagram(p.now, onpath, &data_packet(id, pn, &forged));
        drain_server(&mut p);
    }
    let out_of_window = conn_drops(&p.server, s, DropReason::OutOfWindow) - out_of_window_before;
    let duplicate = conn_drops(&p.server, s, DropReason::DuplicatePacket) - duplicate_before;
    // Three are beyond the window; two extend to before packet 0 (wrapped), so are "too old".
    assert_eq!(
        (out_of_window, duplicate),
        (3, 2),
        "each far-ahead number refused"
    );
    assert_eq!(p.server.remote_address(s), Some(real));
    assert_eq!(p.server.stats().migrations, 0);

    // The real client goes on as before.
    for i in 0..50u32 {
        p.client.send(c, 3, i.to_be_bytes().to_vec()).expect("send");
    }
    p.server.send(s, 2, &b"down"[..]).expect("send");
    p.run_for(Duration::from_secs(1));
    let got: Vec<Vec<u8>> = p.server_messages(3);
    assert_eq!(
        got,
        (0..50u32)
            .map(|i| i.to_be_bytes().to_vec())
            .collect::<Vec<_>>()
    );
    assert_eq!(count_messages(&p.server_events, 2, b"forged"), 0);
    assert_eq!(p.client_messages(2), vec![b"down".to_vec()]);
    assert_eq!(p.server.remote_address(s), Some(real));
    assert_eq!(p.server.stats().migrations, 0);
    assert!(p.server.is_connected(s) && p.client.is_connected(c));
}

#[test]
fn a_far_ahead_packet_from_the_peers_own_address_is_dropped_as_out_of_window() {
    let Sniffed {
        mut p,
        client: c,
        server: s,
        id,
        owner,
        next_pn,
    } = sniffed(client_config(1), server_config(2));
    let forged = forged_message(owner);
    // The newest the server has is next_pn - 1: one more than 16,384 beyond it is too far.
    let newest = next_pn - 1;
    let before = conn_drops(&p.server, s, DropReason::OutOfWindow);
    for ahead in [16_385u32, 16_386, 20_000, 1 << 20, 0x7fff_0000] {
        let d = data_packet(id, newest.wrapping_add(ahead), &forged);
        p.server.handle_datagram(p.now, p.client_addr, &d);
    }
    drain_server(&mut p);
    assert_eq!(
        conn_drops(&p.server, s, DropReason::OutOfWindow) - before,
        5,
        "every far-ahead number counted as out of window"
    );
    // The real traffic continues, and nothing forged got through.
    for i in 0..50u32 {
        p.client.send(c, 3, i.to_be_bytes().to_vec()).expect("send");
    }
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.server_messages(3).len(), 50);
    assert_eq!(count_messages(&p.server_events, 2, b"forged"), 0);
    assert!(p.server.is_connected(s));
    assert_eq!(p.server.stats().migrations, 0);
}

/// An acknowledgement leaves out the ranges an acknowledgement the peer acknowledged named.
/// On a plain connection a forged packet far ahead gets named too, and once the peer
/// acknowledged that, it would stand for every range below it: the real packets would
/// never be acknowledged again. Each real packet below it brings the ranges back.
#[test]
fn a_forged_packet_far_ahead_never_hides_the_real_packets_acknowledgements() {
    let Sniffed {
        mut p,
        client: c,
        server: s,
        id,
        owner,
        next_pn,
    } = sniffed(plain(client_config(1)), plain(server_config(2)));
    let forged = forged_message(owner);
    let far = data_packet(id, next_pn.wrapping_add(10_000), &forged);
    p.server.handle_datagram(p.now, p.client_addr, &far);
    let before = p.client.connection_stats(c).expect("stats");
    for i in 0..100u32 {
        p.client.send(c, 3, i.to_be_bytes().to_vec()).expect("send");
        p.server.send(s, 2, &b"down"[..]).expect("send");
        p.run_for(Duration::from_millis(50));
    }
    // Quiet: anything left unacknowledged would now be probed for and sent again.
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.server_messages(3).len(), 100);
    let after = p.client.connection_stats(c).expect("stats");
    assert_eq!(
        (
            after.packets_lost - before.packets_lost,
            after.retransmissions - before.retransmissions,
            after.rto_fired - before.rto_fired
        ),
        (0, 0, 0),
        "every real packet acknowledged"
    );
}

// ======================================================================== 2. replays

#[test]
fn a_replayed_first_packet_is_a_duplicate_after_65536_and_70000_more_packets() {
    let mut p = Pair::new(client_config(1), server_config(2));
    let (c, s) = p.connect();
    p.run_for(Duration::from_millis(50));
    p.server_events.clear();
    // Capture the client's first packet with messages: one unreliable, one sequenced.
    p.client.send(c, 0, &b"first unreliable"[..]).expect("send");
    p.client.send(c, 1, &b"first sequenced"[..]).expect("send");
    let mut buf = vec![0u8; 1500];
    let t = p.client.poll_transmit(p.now, &mut buf).expect("datagram");
    let captured = buf[..t.len].to_vec();
    let Ok(Packet::Data { frames, .. }) = Packet::decode(&captured) else {
        panic!("expected Data");
    };
    let channels: Vec<u8> = Frames::new(frames)
        .map(|f| f.expect("frame").header.channel)
        .collect();
    assert_eq!(channels, vec![0, 1], "captured both messages in one packet");
    p.server.handle_datagram(p.now, p.client_addr, &captured);

    let mut events = Vec::new();
    let first_count = |events: &[Event]| {
        (
            count_messages(events, 0, b"first unreliable"),
            count_messages(events, 1, b"first sequenced"),
        )
    };
    let attacker = addr("203.0.113.50:5555");
    let start = p.server.connection_stats(s).expect("live").packets_received;
    let mut sent_unreliable = 1u64;
    let mut checkpoints = [1_000u64, 65_537, 70_001].into_iter().peekable();
    let filler = vec![0x5a; 900];
    while let Some(&at) = checkpoints.peek() {
        // Lots of traffic: each turn, four unreliable messages (a packet each), over a
        // perfect link with no latency.
        for _ in 0..4 {
            if p.client.send(c, 0, filler.clone()).is_ok() {
                sent_unreliable += 1;
            }
        }
        while let Some(t) = p.client.poll_transmit(p.now, &mut buf) {
            p.server
                .handle_datagram(p.now, p.client_addr, &buf[..t.len]);
        }
        drain_server(&mut p);
        while let Some(e) = p.server.poll_event() {
            // Keep only what the check needs (the filler messages are dropped).
            if !matches!(&e, Event::Message { payload, .. } if payload.len() == 900) {
                events.push(e);
            }
        }
        while p.client.poll_event().is_some() {}
        p.now += Duration::from_micros(250);
        p.client.handle_timeout(p.now);
        p.server.handle_timeout(p.now);

        let received = p.server.connection_stats(s).expect("live").packets_received - start;
        if received < at {
            continue;
        }
        checkpoints.next();
        // Replayed from the client's own address: a duplicate.
        let dup = conn_drops(&p.server, s, DropReason::DuplicatePacket);
        p.server.handle_datagram(p.now, p.client_addr, &captured);
        assert_eq!(
            conn_drops(&p.server, s, DropReason::DuplicatePacket),
            dup + 1,
            "replay after {received} packets from the client's address"
        );
        // Replayed from another address: a duplicate too, refused before its address is
        // considered, so it earns that address no challenge.
        let unvalidated = conn_drops(&p.server, s, DropReason::UnvalidatedPath);
        p.server.handle_datagram(p.now, attacker, &captured);
        assert_eq!(
            conn_drops(&p.server, s, DropReason::DuplicatePacket),
            dup + 2,
            "replay after {received} packets from another address"
        );
        assert_eq!(
            conn_drops(&p.server, s, DropReason::UnvalidatedPath),
            unvalidated
        );
        assert_eq!(answer_challenges(&mut p, attacker), 0);
        drain_server(&mut p);
        while let Some(e) = p.server.poll_event() {
            events.push(e);
        }
        assert_eq!(
            first_count(&events),
            (1, 1),
            "re-delivered after {received} packets"
        );
        assert_eq!(p.server.remote_address(s), Some(p.client_addr));
        assert_eq!(p.server.stats().migrations, 0);
    }
    let received = p.server.connection_stats(s).expect("live").packets_received - start;
    assert!(received > 70_000, "{received}");
    assert_eq!(messages(&events, 1).len(), 1, "one sequenced message ever");
    let delivered_unreliable = p
        .server
        .connection_stats(s)
        .expect("live")
        .messages_delivered;
    assert!(
        delivered_unreliable <= sent_unreliable + 1,
        "{delivered_unreliable} delivered of {sent_unreliable} sent"
    );
    assert!(p.server.is_connected(s) && p.client.is_connected(c));
}

// ======================================================================== 3. garbage

#[test]
fn hundreds_of_garbage_datagrams_with_a_sniffed_id_never_close_the_connection() {
    let Sniffed {
        mut p,
        client: c,
        server: s,
        id,
        owner,
        next_pn,
    } = sniffed(client_config(1), server_config(2));
    // Follow the client's packet numbers, so that garbage from its address can take the very
    // numbers its next real packets will carry.
    let newest = Rc::new(Cell::new(next_pn - 1));
    let seen = Rc::clone(&newest);
    p.hook = Box::new(move |_, _, bytes| {
        if let Ok(Packet::Data { header, .. }) = Packet::decode(bytes) {
            if header.packet_number.wrapping_sub(seen.get()) < 1 << 30 {
                seen.set(header.packet_number);
            }
        }
        vec![Duration::ZERO]
    });
    let max_chunks = plain(Config::default())
        .max_message_size
        .div_ceil(plain(Config::default()).chunk_payload()) as u16;
    let mut rng = TestRng(7);
    let strangers = [
        addr("192.0.2.7:9"),
        addr("192.0.2.8:10"),
        addr("198.51.100.1:4000"),
        addr("203.0.113.5:5000"),
        addr("203.0.113.6:5001"),
    ];
    let garbage = |rng: &mut TestRng, kind: u64| -> Vec<u8> {
        let mut f = Vec::new();
        let seq = rng.next() as u16;
        match kind {
            // Unknown channel (the default config has four).
            0 => push_frame(
                &mut f,
                header(4 + (rng.next() % 12) as u8, owner, seq, None),
                b"x",
            ),
            // Another user's id.
            1 => push_frame(
                &mut f,
                header(
                    3,
                    owner.wrapping_add(1 + (rng.next() % 100) as u16),
                    seq,
                    None,
                ),
                b"not yours",
            ),
            // A length running past the end.
            2 => f.extend_from_slice(&[0x30, (owner >> 8) as u8, owner as u8, 0, 1, 40, 1, 2]),
            // A non-minimal length varint.
            3 => f.extend_from_slice(&[0x20, (owner >> 8) as u8, owner as u8, 0, 1, 0x81, 0]),
            // Chunk index not below the count.
            4 => f.extend_from_slice(&[
                0x21,
                (owner >> 8) as u8,
                owner as u8,
                0,
                1,
                0,
                5,
                0,
                5,
                1,
                0,
            ]),
            // A response with the request bit.
            5 => f.extend_from_slice(&[0x2c, (owner >> 8) as u8, owner as u8, 0, 1, 1, 0]),
            // More chunks than the largest message has.
            6 => push_frame(
                &mut f,
                header(2, owner, seq, Some((0, max_chunks + 1))),
                &[0; 64],
            ),
            // A valid frame, then a broken one: the packet is dropped whole.
            7 => {
                push_frame(&mut f, header(2, owner, seq, None), b"smuggled");
                f.extend_from_slice(&[0x30, 0xff]);
            }
            // Random bytes.
            _ => {
                let len = 1 + rng.next() % 200;
                f.extend((0..len).map(|_| rng.next() as u8));
            }
        }
        f
    };

    let mut fed = 0;
    for round in 0..150u32 {
        p.client
            .send(c, 3, format!("up {round}").into_bytes())
            .expect("send");
        p.server
            .send(s, 2, format!("down {round}").into_bytes())
            .expect("send");
        for _ in 0..4 {
            let kind = rng.next() % 9;
            let frames = garbage(&mut rng, kind);
            let pn = match rng.next() % 4 {
                // The real client's next numbers.
                0 | 1 => newest.get().wrapping_add(1 + (rng.next() % 3) as u32),
                // Old ones.
                2 => newest.get().wrapping_sub((rng.next() % 50) as u32),
                _ => rng.next() as u32,
            };
            let from = if rng.chance(0.5) {
                p.client_addr
            } else {
                strangers[(rng.next() % strangers.len() as u64) as usize]
            };
            p.server
                .handle_datagram(p.now, from, &data_packet(id, pn, &frames));
            fed += 1;
        }
        p.run_for(Duration::from_millis(10));
    }
    p.run_for(Duration::from_secs(2));
    assert_eq!(fed, 600);

    assert!(p.server.is_connected(s) && p.client.is_connected(c));
    assert!(disconnects(&p.server_events).is_empty());
    assert!(disconnects(&p.client_events).is_empty());
    assert_eq!(p.server.remote_address(s), Some(p.client_addr));
    let drops = p.server.connection_stats(s).expect("live").drops;
    for reason in [
        DropReason::UnknownChannel,
        DropReason::ProtocolViolation,
        DropReason::Malformed,
        DropReason::Oversized,
        DropReason::UnvalidatedPath,
    ] {
        assert!(drops.get(reason) > 0, "{reason} never counted: {drops:?}");
    }
    // Every real message arrived exactly once, in order where ordered; nothing smuggled did.
    let up: Vec<Vec<u8>> = (0..150).map(|i| format!("up {i}").into_bytes()).collect();
    assert_eq!(p.server_messages(3), up);
    assert_eq!(count_messages(&p.server_events, 2, b"smuggled"), 0);
    let mut down = p.client_messages(2);
    down.sort();
    let mut want: Vec<Vec<u8>> = (0..150).map(|i| format!("down {i}").into_bytes()).collect();
    want.sort();
    assert_eq!(down, want);
}

// ======================================================================== 4. spoofed disconnect

/// A packet with nothing but its acknowledgement to carry gives it the whole packet: the
/// immediate ack of an out-of-order packet is one datagram however many ranges the peer's
/// numbering left (it went out as two once 13 ranges no longer fit a packet's share for
/// acks: the newest, then the rest in an ack-only packet of its own, five times the bytes
/// of the peer's ping).
#[test]
fn an_immediate_ack_with_nothing_else_to_send_is_one_datagram() {
    let Sniffed {
        mut p, id, next_pn, ..
    } = sniffed(client_config(91), server_config(92));
    let mut buf = vec![0u8; 1500];
    for k in 0..20u32 {
        let mut ping = data_packet(id, next_pn + 2 * k, &[]);
        // (The ping bit: the high bit of the range-count byte.)
        ping[13] |= 0x80;
        p.server.handle_datagram(p.now, p.client_addr, &ping);
        let mut sent = 0;
        while p.server.poll_transmit(p.now, &mut buf).is_some() {
            sent += 1;
        }
        assert_eq!(sent, 1, "ping {k}");
        p.now += Duration::from_millis(1);
    }
}

#[test]
fn a_disconnect_from_another_address_does_not_close_the_connection() {
    let Sniffed {
        mut p,
        client: c,
        server: s,
        id,
        ..
    } = sniffed(client_config(1), server_config(2));
    let spoofers = [
        addr("192.0.2.1:4000"),
        addr("10.0.0.2:5001"),
        addr("10.0.0.1:4001"),
    ];
    for code in [CloseCode::Application(7), CloseCode::ProtocolViolation] {
        let d = encode(&Packet::Disconnect {
            connection_id: id,
            packet_number: 5_000,
            code,
        });
        for from in spoofers {
            // To the server, pretending to be the client; and to the client, pretending to
            // be the server.
            p.server.handle_datagram(p.now, from, &d);
            p.client.handle_datagram(p.now, from, &d);
        }
    }
    p.run_for(Duration::from_millis(100));
    assert!(p.server.is_connected(s) && p.client.is_connected(c));
    assert!(disconnects(&p.server_events).is_empty());
    assert!(disconnects(&p.client_events).is_empty());
    assert_eq!(p.server.stats().drops.get(DropReason::UnknownConnection), 6);
    p.client.send(c, 2, &b"still here"[..]).expect("send");
    p.run_for(Duration::from_millis(200));
    assert_eq!(count_messages(&p.server_events, 2, b"still here"), 1);

    // The same packet from the client's own address is the real thing.
    let d = encode(&Packet::Disconnect {
        connection_id: id,
        packet_number: 5_001,
        code: CloseCode::Application(7),
    });
    p.server.handle_datagram(p.now, p.client_addr, &d);
    p.flush();
    assert_eq!(
        disconnects(&p.server_events),
        vec![DisconnectReason::ClosedByPeer { code: 7 }]
    );
}

// ======================================================================== 5. path validation

/// A peer that moves between addresses again and again while the application reads nothing
/// leaves one `PathChanged` waiting, naming where it is when it is read (each move queued
/// one of its own, uncharged and without bound).
#[test]
fn moves_while_the_application_reads_nothing_leave_one_path_event_waiting() {
    let mut net = Net::new();
    let server = net.add(server_config(2), addr("10.0.0.1:4000"));
    let client = net.add(client_config(1), addr("10.0.0.2:5000"));
    let old = net.nodes[client].addr;
    let c = net.connect(client, server);
    assert!(net.run_until(Duration::from_secs(5), |n| n.nodes[client]
        .ep
        .is_connected(c)
        && n.accepted(server, old).is_some()));
    let s = net.accepted(server, old).expect("accepted");
    net.run_for(Duration::from_millis(100));
    net.nodes[server].polling = false;
    let hops = 20;
    for i in 0..hops {
        let to = SocketAddr::from(([10, 0, 0, 2], 6_000 + (i % 2) as u16));
        net.nodes[client].addr = to;
        net.ep(client).send(c, 2, &b"hop"[..]).expect("send");
        net.run_for(Duration::from_millis(300));
        assert_eq!(net.nodes[server].ep.remote_address(s), Some(to), "hop {i}");
    }
    assert_eq!(net.nodes[server].ep.stats().migrations, hops);
    let mut moves = Vec::new();
    while let Some(e) = net.ep(server).poll_event() {
        if let Event::PathChanged { remote, .. } = e {
            moves.push(remote);
        }
    }
    assert_eq!(moves, [addr("10.0.0.2:6001")]);
}

#[test]
fn nat_rebinding_moves_the_connection_only_after_path_validation_within_credit() {
    let mut net = Net::new();
    net.trace = Some(Vec::new());
    let server = net.add(server_config(2), addr("10.0.0.1:4000"));
    let client = net.add(client_config(1), addr("10.0.0.2:5000"));
    let server_addr = net.nodes[server].addr;
    let old = net.nodes[client].addr;
    let c = net.connect(client, server);
    assert!(net.run_until(Duration::from_secs(5), |n| n.nodes[client]
        .ep
        .is_connected(c)
        && n.accepted(server, old).is_some()));
    let s = net.accepted(server, old).expect("accepted");
    net.ep(client).send(c, 2, &b"before"[..]).expect("send");
    net.run_for(Duration::from_millis(200));

    // The NAT rebinds: the client's datagrams now come from a new port, and nothing reaches
    // it at the old one any more.
    let new = addr("10.0.0.2:6123");
    net.nodes[client].addr = new;
    let mark = net.trace.as_ref().map_or(0, Vec::len);
    net.ep(client).send(c, 2, &b"after"[..]).expect("send");
    net.ep(client)
        .send(c, 2, vec![0x42; 20_000])
        .expect("send large");
    net.ep(server).send(s, 2, &b"reply"[..]).expect("send");
    let limit = net.now + Duration::from_secs(3);
    let mut moved_at_trace = None;
    while net.step(limit) {
        let trace = net.trace.as_ref().expect("tracing");
        let responded = trace[mark..].iter().any(|t| {
            !t.sent && t.from == new && t.to == server_addr && t.kind == TYPE_PATH_RESPONSE
        });
        let moved = net.nodes[server].ep.remote_address(s) == Some(new);
        if !responded {
            assert!(!moved, "moved before the path was validated");
            assert_eq!(net.nodes[server].ep.stats().migrations, 0);
        }
        if moved && moved_at_trace.is_none() {
            moved_at_trace = Some(trace.len());
        }
    }
    assert!(moved_at_trace.is_some(), "the connection moved");
    assert_eq!(net.nodes[server].ep.stats().migrations, 1);
    assert_eq!(net.nodes[server].ep.remote_address(s), Some(new));

    // Until the server sends its first Data packet to the new address (after the move), all
    // it sent there were challenges, never more bytes than it had received from there.
    let trace = net.trace.as_ref().expect("tracing");
    let (mut received, mut sent) = (0usize, 0usize);
    let mut challenges = 0;
    let mut reached_data = false;
    for t in &trace[mark..] {
        if !t.sent && t.from == new && t.to == server_addr {
            received += t.len;
        }
        if t.sent && t.from == server_addr && t.to == new {
            if t.kind == TYPE_DATA {
                reached_data = true;
                break;
            }
            assert_eq!(t.kind, TYPE_PATH_CHALLENGE, "{t:?}");
            challenges += 1;
            sent += t.len;
            assert!(
                sent <= received,
                "sent {sent} bytes to the unvalidated address, received {received}"
            );
        }
    }
    assert!(reached_data, "data flows to the new address after the move");
    assert!(challenges >= 1);
    let stats = net.nodes[server].ep.connection_stats(s).expect("live");
    assert!(stats.path_challenges_sent >= 1);
    assert!(stats.drops.get(DropReason::UnvalidatedPath) > 0);
    // Nothing was lost across the move.
    let got = messages(&net.nodes[server].events, 2);
    assert!(got.contains(&b"before".to_vec()));
    assert!(got.contains(&b"after".to_vec()));
    assert!(got.contains(&vec![0x42; 20_000]));
    assert_eq!(
        messages(&net.nodes[client].events, 2),
        vec![b"reply".to_vec()]
    );

    // An attacker with the sniffed id at yet another address, which never answers, gets
    // back no more bytes than it sends, and never moves the connection.
    let (id, pn) = {
        net.ep(client).send(c, 2, &b"x"[..]).expect("send");
        let now = net.now;
        let mut buf = vec![0u8; 1500];
        let t = net.nodes[client]
            .ep
            .poll_transmit(now, &mut buf)
            .expect("a datagram");
        let Ok(Packet::Data { header, .. }) = Packet::decode(&buf[..t.len]) else {
            panic!("expected Data");
        };
        net.deliver(new, server_addr, buf[..t.len].to_vec());
        (header.connection_id, header.packet_number)
    };
    let attacker = addr("192.0.2.99:9999");
    let mark = net.trace.as_ref().map_or(0, Vec::len);
    for i in 0..200u32 {
        // (Numbers the client will not reach meanwhile, within the window: plausible.)
        let forged = data_packet(id, pn + 5_000 + i, &[]);
        net.deliver(attacker, server_addr, forged);
        net.run_for(Duration::from_millis(5));
    }
    let trace = net.trace.as_ref().expect("tracing");
    let (mut into, mut out) = (0usize, 0usize);
    for t in &trace[mark..] {
        if !t.sent && t.from == attacker {
            into += t.len;
        }
        if t.sent && t.to == attacker {
            assert_eq!(t.kind, TYPE_PATH_CHALLENGE);
            out += t.len;
            assert!(out <= into, "{out} bytes to the attacker for {into}");
        }
    }
    assert!(out > 0, "the attacker was challenged");
    assert_eq!(net.nodes[server].ep.remote_address(s), Some(new));
    assert_eq!(net.nodes[server].ep.stats().migrations, 1);
}

// ======================================================================== 6. ordered-gap attack

/// A server with small reassembly budgets, for the memory attacks.
fn small_budget_config(seed: u64, server: bool) -> Config {
    Config {
        seed,
        accept_incoming: server,
        reassembly_budget: MIB,
        max_message_size: 256 * KIB,
        endpoint_reassembly_budget: 4 * MIB,
        ..plain(Config::default())
    }
}

/// A connected pair with small receive budgets (see `small_budget_config`).
fn sniffed_small_budget() -> Sniffed {
    sniffed(small_budget_config(1, false), small_budget_config(2, true))
}

/// The hostile client drives the server alone from here on: what the server sends is
/// dropped, and its application reads every event at once.
fn feed_server(p: &mut Pair, datagram: &[u8]) -> usize {
    p.server.handle_datagram(p.now, p.client_addr, datagram);
    let mut buf = [0u8; 1500];
    while p.server.poll_transmit(p.now, &mut buf).is_some() {}
    let mut delivered = 0;
    while let Some(e) = p.server.poll_event() {
        if matches!(e, Event::Message { .. }) {
            delivered += 1;
        }
    }
    p.now += Duration::from_millis(1);
    p.server.handle_timeout(p.now);
    delivered
}

#[test]
fn an_ordered_gap_attack_stays_within_the_reassembly_budget() {
    if !run_isolated("an_ordered_gap_attack_stays_within_the_reassembly_budget") {
        return;
    }
    let Sniffed {
        mut p,
        server: s,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_small_budget();
    let budget = p.server.config().reassembly_budget;
    let mut resident = Resident::start();
    let mut pn = next_pn;
    let payload = vec![0x77u8; 1_000];
    let received_before = p.server.connection_stats(s).expect("live").packets_received;
    // Whole messages 1, 2, 3, ... on the ordered channel; 0 never comes.
    let mut delivered = 0;
    for seq in 1..=3_000u16 {
        let mut frames = Vec::with_capacity(1_100);
        push_frame(&mut frames, header(3, owner, seq, None), &payload);
        delivered += feed_server(&mut p, &data_packet(id, pn, &frames));
        pn += 1;
        assert!(
            p.server.reassembly_bytes() <= budget,
            "{} held after sequence {seq}",
            p.server.reassembly_bytes()
        );
        if seq % 64 == 0 {
            if let Some(r) = &mut resident {
                r.sample();
            }
        }
    }
    assert_eq!(delivered, 0, "nothing deliverable without sequence 0");
    let held = p.server.reassembly_bytes();
    assert!(held > budget - 2_000, "filled to the budget: {held}");
    // Each admitted message is charged its size and its window slot.
    let accepted = p.server.connection_stats(s).expect("live").packets_received - received_before;
    let refused = conn_drops(&p.server, s, DropReason::ReassemblyBudget);
    assert_eq!(
        refused,
        3_000 - accepted,
        "every packet over the budget refused and counted"
    );
    assert!(
        held >= accepted as usize * payload.len(),
        "{held} held for {accepted}"
    );
    check_growth(
        resident,
        "ordered gap (1000-byte messages)",
        budget,
        budget + 2 * MIB,
    );
    assert!(p.server.is_connected(s));

    // Sequence 0 releases everything held, in order.
    let mut frames = Vec::new();
    push_frame(&mut frames, header(3, owner, 0, None), &payload);
    let released = feed_server(&mut p, &data_packet(id, pn, &frames));
    assert_eq!(released as u64, accepted + 1);
    assert_eq!(p.server.reassembly_bytes(), 0);
}

/// A chunk that completes a large message lets the whole messages behind it in its packet
/// in as holding nothing: they are delivered as it completes. A peer that sends that chunk
/// malformed (the last chunk empty) beside a message behind it, packet after packet, must
/// not have the messages held uncounted: the chunk is refused, so they wait, and count.
#[test]
fn a_malformed_last_chunk_does_not_let_the_messages_behind_it_in_uncounted() {
    let Sniffed {
        mut p,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_small_budget();
    let budget = p.server.config().reassembly_budget;
    let cp = p.server.config().chunk_payload();
    let mut pn = next_pn;
    // Message 0 on the ordered channel, all of its four chunks but the last.
    for index in 0..3u16 {
        let mut frames = Vec::new();
        push_frame(
            &mut frames,
            header(3, owner, 0, Some((index, 4))),
            &vec![1u8; cp],
        );
        feed_server(&mut p, &data_packet(id, pn, &frames));
        pn += 1;
    }
    let payload = vec![0x77u8; 500];
    for seq in 1..=3_000u16 {
        let mut frames = Vec::new();
        push_frame(&mut frames, header(3, owner, 0, Some((3, 4))), &[]);
        push_frame(&mut frames, header(3, owner, seq, None), &payload);
        let delivered = feed_server(&mut p, &data_packet(id, pn, &frames));
        pn += 1;
        assert_eq!(delivered, 0, "nothing deliverable without message 0");
        assert!(
            p.server.reassembly_bytes() <= budget,
            "{} held after sequence {seq}",
            p.server.reassembly_bytes()
        );
    }
}

/// A message goes whole or in chunks, never both. A packet with a chunk that opens a
/// message's reassembly and a whole frame of that same message, then messages behind it,
/// would have admission take the whole one as arriving, so the ones behind as holding
/// nothing, while the chunk takes the slot and they wait, uncounted. It is refused whole.
#[test]
fn a_packet_with_a_message_both_whole_and_in_chunks_is_refused() {
    let Sniffed {
        mut p,
        server: s,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_small_budget();
    let cp = p.server.config().chunk_payload();
    let held_before = p.server.reassembly_bytes();
    let violations = conn_drops(&p.server, s, DropReason::ProtocolViolation);
    let mut frames = Vec::new();
    // (The last of two chunks: a valid chunk, short enough to share the packet.)
    push_frame(
        &mut frames,
        header(3, owner, 0, Some((1, 2))),
        &vec![1u8; cp / 4],
    );
    push_frame(&mut frames, header(3, owner, 0, None), b"whole");
    for seq in 1..=4u16 {
        push_frame(&mut frames, header(3, owner, seq, None), &[7u8; 64]);
    }
    let delivered = feed_server(&mut p, &data_packet(id, next_pn, &frames));
    assert_eq!(delivered, 0);
    assert_eq!(p.server.reassembly_bytes(), held_before, "nothing taken");
    assert_eq!(
        conn_drops(&p.server, s, DropReason::ProtocolViolation),
        violations + 1
    );
}

#[test]
fn small_held_ordered_messages_do_not_pin_their_datagrams() {
    if !run_isolated("small_held_ordered_messages_do_not_pin_their_datagrams") {
        return;
    }
    let Sniffed {
        mut p,
        server: s,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_small_budget();
    let budget = p.server.config().reassembly_budget;
    let mtu = p.server.config().mtu;
    let mut resident = Resident::start();
    let mut pn = next_pn;
    // Each datagram, padded to the MTU with an unreliable message the application reads at
    // once, carries one 16-byte ordered message that must wait for sequence 0. Held by
    // reference, each would keep its whole datagram (and arena slab) alive.
    let held_payload = [0x11u8; 16];
    let mut padding_seq = 0u16;
    let window = shoal_proto::MESSAGE_WINDOW as u16;
    for seq in 1..window {
        let mut frames = Vec::with_capacity(mtu);
        push_frame(&mut frames, header(3, owner, seq, None), &held_payload);
        let pad = mtu - DATA_OVERHEAD - frames.len() - 5 - 2;
        push_frame(
            &mut frames,
            header(0, owner, padding_seq, None),
            &vec![0; pad],
        );
        padding_seq = padding_seq.wrapping_add(1);
        let d = data_packet(id, pn, &frames);
        assert_eq!(d.len(), mtu);
        let delivered = feed_server(&mut p, &d);
        assert_eq!(delivered, 1, "only the padding is delivered");
        pn += 1;
        if seq % 64 == 0 {
            if let Some(r) = &mut resident {
                r.sample();
            }
        }
    }
    // Each held message is charged its size and its window slot (a few dozen bytes).
    let payload_held = usize::from(window - 1) * held_payload.len();
    let held = p.server.reassembly_bytes();
    assert!(
        held >= payload_held && held <= payload_held + usize::from(window) * 128,
        "each held message charged its size and slot: {held} for {payload_held}"
    );
    check_growth(
        resident,
        &format!(
            "ordered gap ({} 16-byte messages in MTU datagrams, {} KiB of datagrams)",
            window - 1,
            usize::from(window - 1) * mtu / KIB
        ),
        budget,
        budget + 2 * MIB,
    );
    let mut frames = Vec::new();
    push_frame(&mut frames, header(3, owner, 0, None), &held_payload);
    let released = feed_server(&mut p, &data_packet(id, pn, &frames));
    assert_eq!(released, usize::from(window));
    assert_eq!(p.server.reassembly_bytes(), 0);
    assert_eq!(conn_drops(&p.server, s, DropReason::ReassemblyBudget), 0);
}

// ======================================================================== 7. tiny chunks

#[test]
fn tiny_last_chunks_hold_only_their_reservation_and_oversized_datagrams_are_dropped() {
    if !run_isolated(
        "tiny_last_chunks_hold_only_their_reservation_and_oversized_datagrams_are_dropped",
    ) {
        return;
    }
    let Sniffed {
        mut p,
        server: s,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_small_budget();
    let config = p.server.config().clone();
    let budget = config.reassembly_budget;
    let mtu = config.mtu;
    let max_chunks = config.max_message_size.div_ceil(config.chunk_payload()) as u16;
    let pn = next_pn;

    // A datagram larger than the MTU is dropped before anything is stored.
    let mut frames = Vec::new();
    push_frame(&mut frames, header(2, owner, 0, None), &[0x33; 1_400]);
    let oversized = data_packet(id, pn, &frames);
    assert!(oversized.len() > mtu);
    let received = p.server.connection_stats(s).expect("live").packets_received;
    assert_eq!(feed_server(&mut p, &oversized), 0);
    assert_eq!(p.server.stats().drops.get(DropReason::Oversized), 1);
    assert_eq!(
        p.server.connection_stats(s).expect("live").packets_received,
        received
    );
    assert_eq!(p.server.reassembly_bytes(), 0);

    let mut resident = Resident::start();
    // First a few last chunks of the largest messages, then thousands of last chunks of
    // two-chunk messages: one byte each, on every channel, in datagrams padded to the MTU.
    for round in 0..2_000u16 {
        let seq = round;
        let pn = next_pn + u32::from(round);
        let mut frames = Vec::with_capacity(mtu);
        let count = if round < 3 { max_chunks } else { 2 };
        push_frame(
            &mut frames,
            header(2, owner, seq, Some((count - 1, count))),
            &[1],
        );
        push_frame(
            &mut frames,
            header(3, owner, seq, Some((count - 1, count))),
            &[1],
        );
        push_frame(
            &mut frames,
            header(0, owner, seq, Some((count - 1, count))),
            &[1],
        );
        push_frame(
            &mut frames,
            header(1, owner, seq, Some((count - 1, count))),
            &[1],
        );
        let pad = mtu - DATA_OVERHEAD - frames.len() - 5 - 2;
        push_frame(
            &mut frames,
            header(0, owner, seq ^ 0x8000, None),
            &vec![0; pad],
        );
        let d = data_packet(id, pn, &frames);
        assert_eq!(d.len(), mtu);
        feed_server(&mut p, &d);
        assert!(
            p.server.reassembly_bytes() <= budget,
            "{} held after {round} datagrams",
            p.server.reassembly_bytes()
        );
        if round % 64 == 0 {
            if let Some(r) = &mut resident {
                r.sample();
            }
        }
    }
    let held = p.server.reassembly_bytes();
    assert!(
        held > budget - 4 * 2 * config.chunk_payload(),
        "filled: {held}"
    );
    assert!(conn_drops(&p.server, s, DropReason::ReassemblyBudget) > 1_000);
    check_growth(
        resident,
        &format!("tiny last chunks ({} KiB held)", held / KIB),
        budget,
        budget + 2 * MIB,
    );
    assert!(p.server.is_connected(s));
}

/// One packet: whole ordered messages at the window's base, each followed by the last
/// chunk of a message one window further on. Taking the whole ones moves the window up to
/// the chunks, which were counted as holding nothing when the packet was let in.
#[test]
fn a_packet_that_moves_the_window_cannot_store_chunks_it_was_not_charged_for() {
    let Sniffed {
        mut p,
        server: s,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_small_budget();
    let (budget, max_chunks, _) = largest_reservation(p.server.config());
    let window = shoal_proto::MESSAGE_WINDOW as u16;
    let mut base = 0u16;
    for round in 0..8u32 {
        let mut frames = Vec::new();
        for j in 0..40u16 {
            push_frame(&mut frames, header(3, owner, base + j, None), &[1]);
            let far = base + window + j;
            push_frame(
                &mut frames,
                header(3, owner, far, Some((max_chunks - 1, max_chunks))),
                &[1],
            );
        }
        feed_server(&mut p, &data_packet(id, next_pn + round, &frames));
        assert!(
            p.server.reassembly_bytes() <= budget,
            "{} held after packet {round}",
            p.server.reassembly_bytes()
        );
        base += 40;
    }
    assert_eq!(p.server.reassembly_bytes(), 0);
    assert_eq!(conn_drops(&p.server, s, DropReason::ProtocolViolation), 8);
    // The connection lives on, and its ordered channel still takes what is in its window.
    let mut frames = Vec::new();
    for seq in 0..40u16 {
        push_frame(&mut frames, header(3, owner, seq, None), &[2]);
    }
    assert_eq!(
        feed_server(&mut p, &data_packet(id, next_pn + 8, &frames)),
        40
    );
    assert!(p.server.is_connected(s));
}

/// A connection's reassembly budget, the chunk count of the largest message, and the bytes
/// one such message reserves.
fn largest_reservation(config: &Config) -> (usize, u16, usize) {
    let max_chunks = config.max_message_size.div_ceil(config.chunk_payload()) as u16;
    let one = usize::from(max_chunks) * config.chunk_payload();
    (config.reassembly_budget, max_chunks, one)
}

/// Chunks of unreliable messages ahead of reliable chunks in one packet: the packet was let
/// in for what its reliable chunks reserve, and the unreliable ones may not take that room.
#[test]
fn unreliable_chunks_ahead_of_reliable_ones_cannot_push_a_connection_past_its_budget() {
    let Sniffed {
        mut p,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_small_budget();
    let (budget, max_chunks, one) = largest_reservation(p.server.config());
    let reliable = (budget / one) as u16; // as many as the budget takes
    assert!(reliable >= 2);
    let mut frames = Vec::new();
    let last = Some((max_chunks - 1, max_chunks));
    push_frame(&mut frames, header(0, owner, 7, last), &[1]);
    push_frame(&mut frames, header(1, owner, 7, last), &[1]);
    for seq in 1..=reliable {
        // (The reliable channel's base is 1: the sniffed probe was its message 0.)
        push_frame(&mut frames, header(2, owner, seq, last), &[1]);
    }
    feed_server(&mut p, &data_packet(id, next_pn, &frames));
    let held = p.server.reassembly_bytes();
    assert!(held <= budget, "{held} held, budget {budget}");
    assert!(
        held >= usize::from(reliable) * one,
        "the reliable chunks kept their room: {held}"
    );
}

/// The same with room to spare: many unreliable chunks ahead of one reliable chunk. What
/// the unreliable ones take comes out of the room left after the reliable one's, never out
/// of the reliable one's.
#[test]
fn unreliable_chunks_ahead_cannot_spend_the_room_promised_to_a_reliable_one() {
    let Sniffed {
        mut p,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_small_budget();
    let (budget, max_chunks, one) = largest_reservation(p.server.config());
    let fit = budget / one;
    assert!(fit >= 2, "{fit} reservations fit");
    let last = Some((max_chunks - 1, max_chunks));
    let mut frames = Vec::new();
    for seq in 7..11u16 {
        push_frame(&mut frames, header(0, owner, seq, last), &[1]);
        push_frame(&mut frames, header(1, owner, seq, last), &[1]);
    }
    push_frame(&mut frames, header(2, owner, 1, last), &[1]);
    feed_server(&mut p, &data_packet(id, next_pn, &frames));
    let held = p.server.reassembly_bytes();
    assert!(held <= budget, "{held} held, budget {budget}");
    // (Besides the reservations, the reliable message's window slot: some tens of bytes.)
    assert!(
        (fit * one..fit * one + 1_024).contains(&held),
        "{held} held: unreliable reservations in what is left, and the reliable one"
    );
}

// ======================================================================== 8. fair budget

/// Peers that start large reliable messages and withhold the rest, then an honest newcomer
/// with one large message.
struct Withholding {
    reassembly_budget: usize,
    endpoint_budget: usize,
    hostiles: usize,
    /// Messages each hostile peer starts (of 500,000 bytes, one per reliable channel).
    messages_each: usize,
    /// Each hostile's messages all arrive before the next one's; otherwise they take turns,
    /// one message each per round.
    one_after_another: bool,
    honest_len: usize,
}

/// What happened in a `Withholding` scenario.
struct Withheld {
    reservation: usize,
    /// Messages of each hostile peer held at the server when the newcomer came.
    held_messages: Vec<usize>,
    held_bytes: usize,
    /// How long the newcomer's message took, if it arrived within 5 s.
    honest_took: Option<Duration>,
}

/// Channels 2 to 5 reliable, so a peer can have four large messages arriving at once.
const FOUR_RELIABLE: [shoal_proto::DeliveryKind; 6] = {
    use shoal_proto::DeliveryKind::*;
    [Unreliable, Sequenced, Reliable, Ordered, Reliable, Reliable]
};

fn withholding(w: &Withholding) -> Withheld {
    let server_cfg = Config {
        seed: 100,
        reassembly_budget: w.reassembly_budget,
        endpoint_reassembly_budget: w.endpoint_budget,
        max_message_size: 512 * KIB,
        ..plain(Config::with_channels(&FOUR_RELIABLE))
    };
    let client_cfg = |seed| Config {
        seed,
        accept_incoming: false,
        ..server_cfg.clone()
    };
    let mut net = Net::new();
    let server = net.add(server_cfg.clone(), addr("10.0.0.1:4000"));
    let hostile: Vec<usize> = (0..w.hostiles)
        .map(|i| {
            net.add(
                client_cfg(200 + i as u64),
                addr(&format!("10.0.1.{}:5000", i + 1)),
            )
        })
        .collect();
    // Hostile peers' networks lose every packet carrying a chunk past the first: each
    // message they start is reserved at the server and never completes. They all start
    // their messages at once; the first chunks are delayed so that they arrive either peer
    // by peer, or in rounds (every peer's first message, then every peer's second, ...).
    let first_hostile = hostile[0];
    let hostile_nodes = first_hostile..first_hostile + w.hostiles;
    let gap = Duration::from_millis(300);
    let one_after_another = w.one_after_another;
    net.tap = Box::new(move |src, _, bytes| {
        if !hostile_nodes.contains(&src) {
            return Some(Duration::ZERO);
        }
        let Ok(Packet::Data { frames, .. }) = Packet::decode(bytes) else {
            return Some(Duration::ZERO);
        };
        let mut delay = Duration::ZERO;
        for f in Frames::new(frames).flatten() {
            match f.header.chunk {
                Some(c) if c.index > 0 => return None,
                Some(_) => {
                    let turn = if one_after_another {
                        src - first_hostile
                    } else {
                        usize::from(f.header.channel - 2)
                    };
                    delay = delay.max(gap * turn as u32);
                }
                None => {}
            }
        }
        Some(delay)
    });
    let conns: Vec<ConnectionHandle> = hostile.iter().map(|&h| net.connect(h, server)).collect();
    assert!(net.run_until(Duration::from_secs(5), |n| hostile
        .iter()
        .zip(&conns)
        .all(|(&h, &c)| n.nodes[h].ep.is_connected(c))));
    let channels = 2..2 + w.messages_each as u8;
    let large = vec![0xee; 500_000];
    for (&h, &c) in hostile.iter().zip(&conns) {
        for channel in channels.clone() {
            net.ep(h).send(c, channel, large.clone()).expect("send");
        }
    }
    net.run_for(gap * (w.hostiles + w.messages_each) as u32 + Duration::from_secs(1));
    let held_messages = hostile
        .iter()
        .map(|&h| {
            let at = net.nodes[h].addr;
            let sc = net.accepted(server, at).expect("accepted");
            channels
                .clone()
                .filter_map(|ch| net.nodes[server].ep.receive_progress(sc, ch))
                .inspect(|p| assert_eq!(p.chunks_received, 1))
                .count()
        })
        .collect();
    let held_bytes = net.nodes[server].ep.reassembly_bytes();

    // The honest newcomer.
    let honest = net.add(client_cfg(300), addr("10.0.2.1:5000"));
    let hc = net.connect(honest, server);
    assert!(net.run_until(Duration::from_secs(5), |n| n.nodes[honest]
        .ep
        .is_connected(hc)));
    let message: Vec<u8> = (0..w.honest_len).map(|i| (i % 251) as u8).collect();
    net.ep(honest).send(hc, 2, message.clone()).expect("send");
    let honest_addr = net.nodes[honest].addr;
    let sent_at = net.now;
    let arrived = net.run_until(Duration::from_secs(5), |n| {
        n.nodes[server].events.iter().any(|e| {
            matches!(e, Event::Message { conn, payload, .. }
                if payload.len() == message.len()
                    && n.accepted(server, honest_addr) == Some(*conn))
        })
    });
    if arrived {
        assert!(messages(&net.nodes[server].events, 2).contains(&message));
    }
    assert!(hostile
        .iter()
        .zip(&conns)
        .all(|(&h, &c)| net.nodes[h].ep.is_connected(c)));
    assert!(net.nodes[server].ep.reassembly_bytes() <= w.endpoint_budget);
    Withheld {
        reservation: 500_000usize.div_ceil(server_cfg.chunk_payload()) * server_cfg.chunk_payload(),
        held_messages,
        held_bytes,
        honest_took: arrived.then(|| net.now - sent_at),
    }
}

#[test]
fn withholding_peers_leave_an_honest_newcomer_room_for_a_large_message() {
    // Five peers each hold about their whole 1 MiB budget.
    let w = withholding(&Withholding {
        reassembly_budget: MIB,
        endpoint_budget: 8 * MIB,
        hostiles: 5,
        messages_each: 2,
        one_after_another: false,
        honest_len: 200 * KIB,
    });
    assert_eq!(
        w.held_messages,
        vec![2; 5],
        "every hostile message reserved"
    );
    assert_ten_reservations_and_a_quick_newcomer(&w);
}

/// What both withholding cases end with: ten reservations held (and the window slots they
/// sit in), and the honest newcomer's message through within 3 s.
fn assert_ten_reservations_and_a_quick_newcomer(w: &Withheld) {
    assert!(
        w.held_bytes >= 10 * w.reservation && w.held_bytes <= 10 * w.reservation + 10 * 256,
        "{} held for 10 reservations of {}",
        w.held_bytes,
        w.reservation
    );
    let took = w.honest_took.expect("the newcomer's message arrived");
    assert!(took <= Duration::from_secs(3), "took {took:?}");
}

#[test]
fn withholding_peers_are_held_to_a_fair_share_that_leaves_a_newcomer_room() {
    // Per-peer budgets that together exceed the endpoint's (5 x 2 MiB > 8 MiB): only the
    // fair share (8 MiB / (n + 2) while n others hold) keeps the newcomer's room. The peers
    // take turns, one message each per round.
    let w = withholding(&Withholding {
        reassembly_budget: 2 * MIB,
        endpoint_budget: 8 * MIB,
        hostiles: 5,
        messages_each: 4,
        one_after_another: false,
        honest_len: 400 * KIB,
    });
    assert_eq!(
        w.held_messages,
        vec![2; 5],
        "each held to 8 MiB / 6, two of its four messages"
    );
    assert_ten_reservations_and_a_quick_newcomer(&w);
}

#[test]
fn a_flooding_peer_and_a_stalled_application_time_out_nobody_and_lose_nothing() {
    let limit = 16 * KIB;
    let mut net = Net::new();
    let server = net.add(
        Config {
            max_pending_event_bytes: limit,
            ..server_config(2)
        },
        addr("10.0.0.1:4000"),
    );
    let flooder = net.add(client_config(11), addr("10.0.0.11:5000"));
    let quiet = net.add(client_config(12), addr("10.0.0.12:5000"));
    let late = net.add(client_config(13), addr("10.0.0.13:5000"));
    let fc = net.connect(flooder, server);
    let qc = net.connect(quiet, server);
    assert!(net.run_until(Duration::from_secs(5), |n| n.nodes[flooder]
        .ep
        .is_connected(fc)
        && n.nodes[quiet].ep.is_connected(qc)));
    net.run_for(Duration::from_millis(100));

    // The server's application stops reading events for 15 s (longer than the 10 s idle
    // timeout) while one client floods it.
    net.nodes[server].polling = false;
    for i in 0..2_000u32 {
        let mut m = i.to_be_bytes().to_vec();
        m.resize(100, 0);
        net.ep(flooder).send(fc, 3, m).expect("queued");
    }
    let stall_end = net.now + Duration::from_secs(15);
    let late_at = net.now + Duration::from_secs(5);
    let mut lc = None;
    let slack = 3 * 2 * KIB;
    let mut peak = 0;
    while net.now < stall_end {
        if lc.is_none() && net.now >= late_at {
            let c = net.connect(late, server);
            for i in 0..20u32 {
                net.ep(late)
                    .send(c, 3, i.to_be_bytes().to_vec())
                    .expect("queued");
            }
            lc = Some(c);
        }
        net.step(stall_end);
        let pending = net.nodes[server].ep.pending_event_bytes();
        peak = peak.max(pending);
        assert!(pending <= limit + slack, "event queue at {pending}");
    }
    let lc = lc.expect("the late client started");
    assert!(net.nodes[flooder].ep.is_connected(fc));
    assert!(net.nodes[quiet].ep.is_connected(qc));
    assert!(
        net.nodes[late].ep.is_connected(lc),
        "connected during the stall"
    );
    assert_eq!(net.nodes[server].ep.connection_count(), 3);
    for n in [flooder, quiet, late] {
        assert!(disconnects(&net.nodes[n].events).is_empty(), "node {n}");
    }
    assert!(peak > limit / 2, "the queue did fill: {peak}");
    println!("[events] peak pending event bytes {peak} (limit {limit})");

    // The application catches up: everything arrives, once, in order.
    net.nodes[server].polling = true;
    net.run_for(Duration::from_secs(20));
    let events = &net.nodes[server].events;
    assert!(disconnects(events).is_empty());
    let from = |node: usize| {
        let at = net.nodes[node].addr;
        let conn = net.accepted(server, at).expect("accepted");
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message {
                    conn: c, payload, ..
                } if *c == conn => Some(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ])),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(from(flooder), (0..2_000).collect::<Vec<_>>());
    assert_eq!(from(late), (0..20).collect::<Vec<_>>());
    assert!(from(quiet).is_empty());
}

// ======================================================================== 9b. one address, many ports

/// One host with many ports cannot fill the server: past `max_connections_per_ip` its
/// Connects are rejected as if the server were full, while another address still gets in;
/// a connection that ends (or moves to another address) gives its place back.
#[test]
fn one_address_cannot_take_more_than_its_share_of_connections() {
    let mut net = Net::new();
    let server = net.add(
        Config {
            max_connections_per_ip: 4,
            ..server_config(3)
        },
        addr("10.0.0.1:4000"),
    );
    let from_one_host: Vec<usize> = (0..6u16)
        .map(|i| {
            net.add(
                client_config(10 + u64::from(i)),
                addr(&format!("10.0.0.2:{}", 5000 + i)),
            )
        })
        .collect();
    let elsewhere = net.add(client_config(30), addr("10.0.0.3:5000"));
    let mut conns = Vec::new();
    for &c in &from_one_host {
        conns.push((c, net.connect(c, server)));
        net.run_for(Duration::from_millis(50));
    }
    let other = net.connect(elsewhere, server);
    net.run_for(Duration::from_secs(2));
    let connected: Vec<usize> = conns
        .iter()
        .filter(|&&(c, h)| net.nodes[c].ep.is_connected(h))
        .map(|&(c, _)| c)
        .collect();
    assert_eq!(connected.len(), 4, "four from one address");
    for &(c, _) in &conns {
        if !connected.contains(&c) {
            assert!(
                net.nodes[c].events.iter().any(|e| matches!(
                    e,
                    Event::ConnectFailed {
                        reason: DisconnectReason::ServerFull,
                        ..
                    }
                )),
                "the others are told the server is full"
            );
        }
    }
    assert!(
        net.ep(elsewhere).is_connected(other),
        "another address gets in"
    );
    // One of the four leaves: its place is free again.
    let (first, h) = conns[0];
    net.ep(first).disconnect(h, 0);
    net.run_for(Duration::from_secs(1));
    let late = net.add(client_config(40), addr("10.0.0.2:6000"));
    let l = net.connect(late, server);
    net.run_for(Duration::from_secs(1));
    assert!(net.ep(late).is_connected(l), "a place freed by a departure");
    // One moves to another address (its NAT rebinds): its place goes with it.
    let (mover, m) = conns[1];
    net.nodes[mover].addr = addr("10.0.0.4:7000");
    net.ep(mover).send(m, 2, &b"moved"[..]).expect("send");
    net.run_for(Duration::from_secs(2));
    let later = net.add(client_config(41), addr("10.0.0.2:6001"));
    let l2 = net.connect(later, server);
    net.run_for(Duration::from_secs(1));
    assert!(
        net.ep(mover).is_connected(m),
        "the mover kept its connection"
    );
    assert!(net.ep(later).is_connected(l2), "a place freed by a move");
    // And the address is full again.
    let one_more = net.add(client_config(42), addr("10.0.0.2:6002"));
    let l3 = net.connect(one_more, server);
    net.run_for(Duration::from_secs(1));
    assert!(!net.ep(one_more).is_connected(l3));
}

// ======================================================================== 10. config

#[test]
fn durations_over_a_year_are_rejected() {
    let idle_max = Config {
        idle_timeout: Duration::MAX,
        ..plain(Config::default())
    };
    assert_eq!(
        idle_max.validate(),
        Err(ConfigError::DurationTooLong("idle_timeout"))
    );
    assert!(Endpoint::new(idle_max).is_err());

    let too_long = MAX_DURATION + Duration::from_secs(1);
    type Setter = fn(&mut Config, Duration);
    let fields: [(&str, Setter); 10] = [
        ("idle_timeout", |c, d| c.idle_timeout = d),
        ("keepalive_interval", |c, d| {
            // Must stay below the idle timeout, which must then be too long as well.
            c.keepalive_interval = d;
            c.idle_timeout = Duration::MAX;
        }),
        ("handshake_timeout", |c, d| c.handshake_timeout = d),
        ("handshake_resend_interval", |c, d| {
            c.handshake_resend_interval = d
        }),
        ("cookie_lifetime", |c, d| c.cookie_lifetime = d),
        ("max_ack_delay", |c, d| c.max_ack_delay = d),
        ("initial_rtt", |c, d| c.initial_rtt = d),
        ("max_rto", |c, d| c.max_rto = d),
        ("request_timeout", |c, d| c.request_timeout = d),
        ("reassembly_timeout", |c, d| c.reassembly_timeout = d),
    ];
    for (name, set) in fields {
        for d in [too_long, Duration::MAX] {
            let mut config = Config::default();
            set(&mut config, d);
            let err = config.validate().expect_err(name);
            if name == "keepalive_interval" {
                // The idle timeout must exceed it, so it is the one reported (or, at
                // Duration::MAX for both, their order).
                assert!(
                    matches!(
                        err,
                        ConfigError::DurationTooLong("idle_timeout") | ConfigError::IdleTimeout
                    ),
                    "{name} = {d:?}: {err:?}"
                );
            } else {
                assert_eq!(err, ConfigError::DurationTooLong(name), "{name} = {d:?}");
            }
        }
        // A year exactly is allowed.
        let mut config = Config::default();
        set(&mut config, MAX_DURATION);
        if name == "keepalive_interval" {
            config.idle_timeout = MAX_DURATION;
            config.keepalive_interval = MAX_DURATION - Duration::from_secs(1);
        }
        assert_eq!(config.validate(), Ok(()), "{name} = a year");
    }

    // Endpoints with year-long limits work (no timer arithmetic overflows).
    let year = |seed, server| Config {
        seed,
        accept_incoming: server,
        idle_timeout: MAX_DURATION,
        handshake_timeout: MAX_DURATION,
        request_timeout: MAX_DURATION,
        reassembly_timeout: MAX_DURATION,
        cookie_lifetime: MAX_DURATION,
        max_rto: MAX_DURATION,
        ..plain(Config::default())
    };
    let mut p = Pair::new(year(1, false), year(2, true));
    let (c, _) = p.connect();
    p.client.send(c, 2, &b"a year"[..]).expect("send");
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.server_messages(2), vec![b"a year".to_vec()]);
}

#[test]
fn a_handshake_timeout_longer_than_the_idle_timeout_is_honoured() {
    let config = Config {
        handshake_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(10),
        ..client_config(1)
    };
    let mut client = Endpoint::new(config).expect("valid");
    let start = Instant::from_millis(1_000);
    let conn = client
        .connect(start, addr("10.0.0.1:4000"), b"anyone?")
        .expect("connect");
    let mut buf = vec![0u8; 1500];
    let mut now = start;
    let mut hellos = Vec::new();
    let mut gave_up = None;
    while gave_up.is_none() && now < start + Duration::from_secs(60) {
        client.handle_timeout(now);
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            if matches!(Packet::decode(&buf[..t.len]), Ok(Packet::Hello { .. })) {
                hellos.push(now);
            }
        }
        while let Some(e) = client.poll_event() {
            if let Event::ConnectFailed { reason, .. } = e {
                gave_up = Some((now, reason));
            }
        }
        let Some(next) = client.poll_timeout() else {
            break;
        };
        now = next.max(now);
    }
    let (at, reason) = gave_up.expect("gave up");
    assert_eq!(reason, DisconnectReason::TimedOut);
    assert_eq!(
        at - start,
        Duration::from_secs(30),
        "at the handshake timeout"
    );
    assert!(!client.is_connected(conn));
    let last = *hellos.last().expect("hellos sent");
    assert!(
        last - start >= Duration::from_secs(29),
        "kept trying past the idle timeout: last Hello at {:?}",
        last - start
    );
}

// ======================================================================== 11. identifiers

#[test]
fn connection_ids_and_client_nonces_are_64_bit_distinct_and_not_a_fixed_stride() {
    fn check(name: &str, values: &[u64]) {
        assert_eq!(values.len(), 100, "{name}");
        let distinct: HashSet<u64> = values.iter().copied().collect();
        assert_eq!(distinct.len(), values.len(), "{name} repeat");
        assert!(
            values.iter().any(|v| v >> 32 != 0) && values.iter().any(|v| v >> 63 != 0),
            "{name} do not use 64 bits: {values:x?}"
        );
        let strides: Vec<u64> = values.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(
            strides.iter().any(|&d| d != strides[0]),
            "{name} are a fixed stride apart"
        );
        let distinct_strides: HashSet<u64> = strides.iter().copied().collect();
        assert!(
            distinct_strides.len() > 90,
            "{name}: only {} distinct strides",
            distinct_strides.len()
        );
    }

    // Connection ids: 100 clients of one server.
    let ids = Rc::new(RefCell::new(Vec::new()));
    let mut net = Net::new();
    let server = net.add(server_config(2), addr("10.0.0.1:4000"));
    let seen = Rc::clone(&ids);
    net.tap = Box::new(move |src, _, bytes| {
        if src == server {
            if let Ok(Packet::Accept { connection_id, .. }) = Packet::decode(bytes) {
                seen.borrow_mut().push(connection_id);
            }
        }
        Some(Duration::ZERO)
    });
    let clients: Vec<(usize, ConnectionHandle)> = (0..100u64)
        .map(|i| {
            let at = addr(&format!("10.1.{}.{}:5000", i / 200, i % 200 + 1));
            let n = net.add(client_config(1_000 + i), at);
            let c = net.connect(n, server);
            (n, c)
        })
        .collect();
    assert!(net.run_until(Duration::from_secs(10), |n| clients
        .iter()
        .all(|&(i, c)| n.nodes[i].ep.is_connected(c))));
    assert_eq!(net.nodes[server].ep.connection_count(), 100);
    check("connection ids", &ids.borrow());

    // Client nonces: one client endpoint connecting to 100 servers.
    let mut client = Endpoint::new(client_config(5)).expect("valid");
    let now = Instant::from_millis(1);
    let mut buf = vec![0u8; 1500];
    let mut nonces = Vec::new();
    for i in 0..100u16 {
        client
            .connect(now, addr(&format!("10.2.0.1:{}", 4000 + i)), b"")
            .expect("connect");
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            if let Ok(Packet::Hello { client_nonce, .. }) = Packet::decode(&buf[..t.len]) {
                nonces.push(client_nonce);
            }
        }
    }
    check("client nonces", &nonces);
}

/// A peer that reconnects over and over while the application reads nothing: every new
/// connection starts with no events waiting (and so gets a packet in past the limit), but
/// what all of them add together stays within a quarter over the limit, plus one packet.
#[test]
fn a_peer_that_keeps_reconnecting_cannot_grow_the_event_queue_past_its_bound() {
    let limit = 64 * KIB;
    let mut server = Endpoint::new(Config {
        max_pending_event_bytes: limit,
        ..server_config(2)
    })
    .expect("config");
    let mut client = Endpoint::new(client_config(1)).expect("config");
    let (server_addr, client_addr) = (addr("10.0.0.1:4000"), addr("10.0.0.2:5000"));
    let mut now = Instant::from_millis(1);
    let mut buf = vec![0u8; 1500];
    let mut exchange = |client: &mut Endpoint, server: &mut Endpoint, now: Instant| {
        for _ in 0..4 {
            while let Some(t) = client.poll_transmit(now, &mut buf) {
                server.handle_datagram(now, client_addr, &buf[..t.len]);
            }
            while let Some(t) = server.poll_transmit(now, &mut buf) {
                client.handle_datagram(now, server_addr, &buf[..t.len]);
            }
        }
        while client.poll_event().is_some() {}
    };
    let mut peak = 0;
    for _ in 0..200 {
        let c = client.connect(now, server_addr, &[]).expect("connect");
        exchange(&mut client, &mut server, now);
        for _ in 0..190 {
            let _ = client.send(c, 2, Vec::new());
        }
        exchange(&mut client, &mut server, now);
        client.disconnect(c, 0);
        exchange(&mut client, &mut server, now);
        peak = peak.max(server.pending_event_bytes());
        now += Duration::from_millis(5);
        client.handle_timeout(now);
        server.handle_timeout(now);
    }
    // One packet's worth: at most an MTU of messages, 64 bytes of overhead each.
    let one_packet = 1200 / 6 * 64 + 1200;
    assert!(
        peak <= limit + limit / 4 + one_packet,
        "the event queue reached {peak} bytes against a limit of {limit}"
    );
    assert!(peak >= limit, "the test reached the limit: {peak}");
}

/// A message at the far end of an ordered channel's window makes the receiver open 4,096
/// window slots: that memory is charged to the budget like the message itself (before, two
/// one-byte packets held ~786 KB uncounted).
#[test]
fn a_message_at_the_far_end_of_the_window_is_charged_for_the_slots_it_opens() {
    let Sniffed {
        mut p,
        server: s,
        id,
        owner,
        next_pn,
        ..
    } = sniffed(client_config(1), server_config(2));
    let mut frames = Vec::new();
    push_frame(&mut frames, header(3, owner, 4_095, None), b"x");
    feed_server(&mut p, &data_packet(id, next_pn, &frames));
    let held = p.server.reassembly_bytes();
    assert!(held >= 4_096 * 32, "slots charged: {held}");
    assert!(p.server.is_connected(s));
}

/// Path challenges that claim to come from the peer's address (anyone with the connection
/// id can send them) get their 17-byte answers, and at most one probe a round trip: never a
/// burst of data past the congestion window.
#[test]
fn spoofed_path_challenges_do_not_trigger_a_burst_of_probes() {
    let Sniffed {
        mut p,
        server: s,
        id,
        ..
    } = sniffed(client_config(1), server_config(2));
    // Something in flight, so that a probe would have something to carry.
    for i in 0..20u8 {
        p.server.send(s, 2, vec![i; 1_000]).expect("send");
    }
    let mut buf = vec![0u8; 1500];
    while p.server.poll_transmit(p.now, &mut buf).is_some() {}
    let mut sent = 0;
    for token in 0..1_000u64 {
        let challenge = Packet::PathChallenge {
            connection_id: id,
            packet_number: 5_000 + token as u32,
            token,
        };
        let n = challenge.encode(&mut buf).expect("encodes");
        let d = buf[..n].to_vec();
        p.server.handle_datagram(p.now, p.client_addr, &d);
        while let Some(t) = p.server.poll_transmit(p.now, &mut buf) {
            sent += t.len;
        }
    }
    assert!(
        sent <= 1_000 * 21 + 2 * 1_200,
        "{sent} bytes sent for 21,000 bytes of challenges"
    );
}

/// A frame answering no request: parsed, then dropped as a stale response (it leaves no
/// event, and keeps nothing).
fn push_stale_response(frames: &mut Vec<u8>, owner: u16, len: usize) {
    let stale = MessageHeader {
        send_type: SendType::Response,
        ..header(2, owner, 9, None)
    };
    push_frame(frames, stale, &vec![0u8; len]);
}

/// A sniffed connection whose server queues at most `limit` bytes of events, both sides at
/// `mtu`.
fn sniffed_with_event_limit(limit: usize, mtu: usize) -> Sniffed {
    sniffed(
        Config {
            mtu,
            ..client_config(1)
        },
        Config {
            mtu,
            max_pending_event_bytes: limit,
            ..server_config(2)
        },
    )
}

/// A waiting event's payload must not keep more memory than it was charged for: payloads
/// were slices of the receive buffer, which is shared by many datagrams, so one waiting
/// one-byte message kept the whole 16 KiB block it sat in, filled by datagrams that left
/// nothing (here stale responses; any other client's traffic does as well). A peer that
/// sent one such message per block made the queue's bound hold some 230 times its size
/// while the application read nothing.
#[test]
fn a_waiting_tiny_message_does_not_keep_the_datagrams_around_it() {
    if !run_isolated("a_waiting_tiny_message_does_not_keep_the_datagrams_around_it") {
        return;
    }
    let limit = 256 * KIB;
    let Sniffed {
        mut p,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_with_event_limit(limit, Config::default().mtu);
    let mut resident = Resident::start();
    let mut buf = [0u8; 1500];
    let mut pn = next_pn;
    for i in 0..3_000u32 {
        let mut message = Vec::new();
        push_frame(&mut message, header(0, owner, i as u16, None), b"x");
        p.server
            .handle_datagram(p.now, p.client_addr, &data_packet(id, pn, &message));
        pn += 1;
        for _ in 0..13 {
            let mut stale = Vec::new();
            push_stale_response(&mut stale, owner, 1_100);
            p.server
                .handle_datagram(p.now, p.client_addr, &data_packet(id, pn, &stale));
            pn += 1;
        }
        server_turn(&mut p, &mut buf);
    }
    check_growth(
        resident.take(),
        "one-byte messages among datagrams that leave nothing",
        limit,
        2 * limit + MIB,
    );
}

/// With an MTU past 4 KiB a whole message can be longer than what the event queue copies
/// into its blocks: left a slice of its datagram, each waiting one kept all of it (here
/// 60 KB of stale responses beside a 4,097-byte message), charged for its payload alone.
#[test]
fn a_waiting_message_of_a_large_mtu_does_not_keep_its_datagram() {
    if !run_isolated("a_waiting_message_of_a_large_mtu_does_not_keep_its_datagram") {
        return;
    }
    let limit = 256 * KIB;
    let mtu = 65_507;
    let Sniffed {
        mut p,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_with_event_limit(limit, mtu);
    let mut resident = Resident::start();
    let mut buf = vec![0u8; mtu];
    for i in 0..200u32 {
        let mut frames = Vec::new();
        push_frame(&mut frames, header(0, owner, i as u16, None), &[7u8; 4_097]);
        push_stale_response(&mut frames, owner, 60_000);
        p.server
            .handle_datagram(p.now, p.client_addr, &data_packet(id, next_pn + i, &frames));
        server_turn(&mut p, &mut buf);
    }
    check_growth(
        resident.take(),
        "4,097-byte messages in 64 KB datagrams",
        limit,
        2 * limit + MIB,
    );
}

/// A peer that sends one-byte messages padded with frames that are dropped after the packet
/// is taken must not make its waiting events keep more than they were charged for (each
/// payload once kept its whole datagram; it is copied out now). The live heap stays within
/// the event-queue bound while the application reads nothing.
#[test]
fn tiny_messages_in_padded_datagrams_are_charged_for_the_memory_they_pin() {
    if !run_isolated("tiny_messages_in_padded_datagrams_are_charged_for_the_memory_they_pin") {
        return;
    }
    let limit = 256 * KIB;
    let Sniffed {
        mut p,
        id,
        owner,
        next_pn,
        ..
    } = sniffed_with_event_limit(limit, Config::default().mtu);
    let mut resident = Resident::start();
    let mut buf = [0u8; 1500];
    for i in 0..3_000u32 {
        let mut frames = Vec::new();
        push_frame(&mut frames, header(0, owner, i as u16, None), b"x");
        push_stale_response(&mut frames, owner, 1_100);
        p.server
            .handle_datagram(p.now, p.client_addr, &data_packet(id, next_pn + i, &frames));
        server_turn(&mut p, &mut buf);
    }
    assert!(
        p.server.pending_event_bytes() <= limit + limit / 4 + 1_500,
        "{} bytes of events waiting",
        p.server.pending_event_bytes()
    );
    check_growth(
        resident.take(),
        "one-byte messages in padded datagrams",
        limit,
        2 * limit + MIB,
    );
}
