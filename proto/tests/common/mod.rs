//! `Pair`: two endpoints joined by an in-memory link with a virtual clock that jumps straight
//! to the next event (next datagram arrival or next timer), one-way latency, an MTU, and a
//! hook that decides each datagram's fate (drop, duplicate, delay/reorder).
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

pub use shoal_proto::fuzzing::wire::{DataHeader, Packet};
use shoal_proto::{Config, ConnectionHandle, Endpoint, Event, Instant, SecretSeed};

/// Which way a datagram travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    ClientToServer,
    ServerToClient,
}

/// Decides a datagram's fate: the extra delays of each copy to deliver (empty = drop,
/// `[ZERO]` = deliver normally, two entries = duplicate, a positive delay reorders).
pub type FateHook = Box<dyn FnMut(Dir, u64, &[u8]) -> Vec<Duration>>;

/// A datagram on its way: arrival time, a tie-breaking counter, direction, bytes.
type InFlight = Reverse<(Instant, u64, Dir, Vec<u8>)>;

pub struct Pair {
    pub client: Endpoint,
    pub server: Endpoint,
    pub client_addr: SocketAddr,
    pub server_addr: SocketAddr,
    pub now: Instant,
    pub latency: Duration,
    pub mtu: usize,
    pub hook: FateHook,
    pub client_events: Vec<Event>,
    pub server_events: Vec<Event>,
    /// Datagrams sent each way, and their bytes (before the hook).
    pub sent: [u64; 2],
    pub sent_bytes: [u64; 2],
    in_flight: BinaryHeap<InFlight>,
    counter: u64,
    buf: Vec<u8>,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid address")
}

pub fn client_config(seed: u64) -> Config {
    Config {
        seed,
        secret_seed: Some(SecretSeed::insecure_from_u64(seed)),
        accept_incoming: false,
        ..Config::default()
    }
}

pub fn server_config(seed: u64) -> Config {
    Config {
        seed,
        secret_seed: Some(SecretSeed::insecure_from_u64(seed)),
        ..Config::default()
    }
}

/// `config` without packet protection: for tests that forge a peer's packets byte by byte
/// (a hostile peer is a key holder anyway; clear packets let the test play it).
pub fn plain(config: Config) -> Config {
    Config {
        protection: shoal_proto::Protection::None,
        ..config
    }
}

/// `config` with key material from its seed when it has none (as a driver would fill it from
/// the OS; predictable here, so runs repeat).
pub fn keyed(config: Config) -> Config {
    Config {
        secret_seed: config
            .secret_seed
            .or(Some(SecretSeed::insecure_from_u64(config.seed))),
        ..config
    }
}

impl Pair {
    pub fn new(client: Config, server: Config) -> Self {
        Pair {
            client: Endpoint::new(keyed(client)).expect("valid client config"),
            server: Endpoint::new(keyed(server)).expect("valid server config"),
            client_addr: addr("10.0.0.2:5000"),
            server_addr: addr("10.0.0.1:4000"),
            now: Instant::from_millis(1_000),
            latency: Duration::from_millis(10),
            mtu: 1500,
            hook: Box::new(|_, _, _| vec![Duration::ZERO]),
            client_events: Vec::new(),
            server_events: Vec::new(),
            sent: [0; 2],
            sent_bytes: [0; 2],
            in_flight: BinaryHeap::new(),
            counter: 0,
            buf: vec![0; 65_536],
        }
    }

    pub fn default_pair() -> Self {
        Pair::new(client_config(1), server_config(2))
    }

    /// Connects and drives until both sides report `Connected`. Returns (client, server) handles.
    pub fn connect(&mut self) -> (ConnectionHandle, ConnectionHandle) {
        let conn = self
            .client
            .connect(self.now, self.server_addr, b"hi")
            .expect("connect");
        self.run_until(Duration::from_secs(10), |p| {
            p.server_events
                .iter()
                .any(|e| matches!(e, Event::Connected { .. }))
                && p.client_events
                    .iter()
                    .any(|e| matches!(e, Event::Connected { .. }))
        });
        let server_conn = self
            .server_events
            .iter()
            .find_map(|e| match e {
                Event::Connected { conn, .. } => Some(*conn),
                _ => None,
            })
            .unwrap_or_else(|| {
                panic!(
                    "server connected: server {:?} {:?} client {:?} {:?}",
                    self.server_events,
                    self.server.stats(),
                    self.client_events,
                    self.client.connection_stats(conn)
                )
            });
        (conn, server_conn)
    }

    /// Moves every datagram both endpoints want to send into the link.
    pub fn flush(&mut self) {
        for dir in [Dir::ClientToServer, Dir::ServerToClient] {
            loop {
                let ep = match dir {
                    Dir::ClientToServer => &mut self.client,
                    Dir::ServerToClient => &mut self.server,
                };
                let Some(t) = ep.poll_transmit(self.now, &mut self.buf) else {
                    break;
                };
                let bytes = self.buf[..t.len].to_vec();
                self.sent[dir as usize] += 1;
                self.sent_bytes[dir as usize] += t.len as u64;
                if t.len > self.mtu {
                    continue;
                }
                let index = self.counter;
                for extra in (self.hook)(dir, index, &bytes) {
                    self.counter += 1;
                    let at = self.now + self.latency + extra;
                    self.in_flight
                        .push(Reverse((at, self.counter, dir, bytes.clone())));
                }
                self.counter += 1;
            }
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
    }

    /// The next moment something happens: an arrival or a timer.
    fn next_event(&self) -> Option<Instant> {
        let arrival = self.in_flight.peek().map(|Reverse((t, ..))| *t);
        [
            arrival,
            self.client.poll_timeout(),
            self.server.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances to the next event (not beyond `limit`) and handles it. Returns false when
    /// nothing happens before `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.flush();
        let Some(next) = self.next_event() else {
            self.now = limit;
            return false;
        };
        if next > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(next);
        while let Some(Reverse((at, ..))) = self.in_flight.peek() {
            if *at > self.now {
                break;
            }
            let Some(Reverse((_, _, dir, bytes))) = self.in_flight.pop() else {
                break;
            };
            match dir {
                Dir::ClientToServer => {
                    self.server
                        .handle_datagram(self.now, self.client_addr, &bytes)
                }
                Dir::ServerToClient => {
                    self.client
                        .handle_datagram(self.now, self.server_addr, &bytes)
                }
            }
        }
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.flush();
        true
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let limit = self.now + duration;
        while self.step(limit) {}
    }

    /// Runs until `done` holds (checked after every event) or `max` passes. Returns whether
    /// `done` held.
    pub fn run_until(&mut self, max: Duration, mut done: impl FnMut(&Pair) -> bool) -> bool {
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

    /// Datagrams still travelling.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Messages (payloads) delivered to the server on `channel`, in delivery order.
    pub fn server_messages(&self, channel: u8) -> Vec<Vec<u8>> {
        messages(&self.server_events, channel)
    }

    pub fn client_messages(&self, channel: u8) -> Vec<Vec<u8>> {
        messages(&self.client_events, channel)
    }
}

pub fn messages(events: &[Event], ch: u8) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message {
                channel, payload, ..
            } if *channel == ch => Some(payload.to_vec()),
            _ => None,
        })
        .collect()
}

/// A small deterministic generator for fault schedules.
pub struct TestRng(pub u64);

impl TestRng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A hook losing each datagram with probability `loss` (both ways), seeded.
pub fn lossy(seed: u64, loss: f64) -> FateHook {
    let mut rng = TestRng(seed);
    Box::new(move |_, _, _| {
        if rng.chance(loss) {
            vec![]
        } else {
            vec![Duration::ZERO]
        }
    })
}

/// Encodes a packet into a datagram of its own.
pub fn encode(packet: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = packet.encode(&mut buf).expect("encodes");
    buf.truncate(n);
    buf
}

/// A `Data` packet as a peer (or someone who sniffed its connection id) writes it by hand:
/// no acknowledgement, no repair, just `frames`.
pub fn data_packet(connection_id: u64, packet_number: u32, frames: &[u8]) -> Vec<u8> {
    encode(&Packet::Data {
        header: DataHeader {
            connection_id,
            packet_number,
            ping: false,
            ack: None,
            repair: None,
        },
        frames,
    })
}

/// The user id the first `Connected` among `events` gave the peer.
pub fn peer_user_id(events: &[Event]) -> u16 {
    events
        .iter()
        .find_map(|e| match e {
            Event::Connected { identity, .. } => Some(identity.user_id),
            _ => None,
        })
        .expect("connected")
}
