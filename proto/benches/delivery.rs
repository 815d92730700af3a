//! Delivery benchmarks.
//!
//! - `bulk_ordered_32b` (divan, wall clock): 100,000 32-byte messages on an ordered channel
//!   through an in-memory pair with no loss, 1 ms ticks with up to 1,000 sends per tick,
//!   acknowledgements included; reported as messages per second.
//! - `handshake_encrypted` (divan, wall clock): one protected handshake, both endpoints made
//!   and connected; what a connect storm costs per connection.
//! - `ping_pong_32b` and `ping_pong_32b_plain` (divan, wall clock): a 32-byte ordered message
//!   and its echo between a connected pair, as a driver runs them: the CPU a round trip costs
//!   both ends, protocol and cipher, without the kernel's share of a loopback round trip.
//! - Printed before it (virtual time, deterministic, so exact figures rather than timings):
//!   wire bytes per message in that bulk run (both directions), and delivery latency p50/p99
//!   with wire and payload overhead under 10% loss each way (independent, and in bursts) and
//!   50 ms one-way delay, at 16 messages per 16 ms for 20 s and at 60 messages per second.
//!
//! Run: `cargo bench -p shoal-proto --bench delivery` (`SHOAL_BENCH_SEED=N` draws the lossy
//! runs' losses from another seed; `SHOAL_BENCH_DEBUG=1` prints both ends' counters;
//! `SHOAL_BENCH_PING=N` runs only N plain ping-pong round trips, for an instruction count).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use shoal_proto::{Config, ConnectionHandle, Endpoint, Event, Instant, Protection};

const ORDERED: u8 = 3;

/// A datagram on the wire: arrival time, tie-breaker, towards the server?, bytes.
type InFlight = Reverse<(Instant, u64, bool, Vec<u8>)>;

fn addrs() -> (SocketAddr, SocketAddr) {
    (
        "10.0.0.2:5000".parse().expect("addr"),
        "10.0.0.1:4000".parse().expect("addr"),
    )
}

/// A client (seed 1) and a server (seed 2) with default settings and `protection`.
fn endpoints(protection: Protection) -> (Endpoint, Endpoint) {
    let config = |seed, accept_incoming| Config {
        seed,
        secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(seed)),
        accept_incoming,
        protection,
        ..Config::default()
    };
    (
        Endpoint::new(config(1, false)).expect("config"),
        Endpoint::new(config(2, true)).expect("config"),
    )
}

/// A connected client/server pair over a perfect zero-latency link.
struct Bulk {
    client: Endpoint,
    server: Endpoint,
    conn: ConnectionHandle,
    now: Instant,
    buf: Vec<u8>,
    wire_bytes: u64,
}

impl Bulk {
    fn new(protection: Protection) -> Self {
        let (ca, sa) = addrs();
        let (mut client, server) = endpoints(protection);
        let now = Instant::from_millis(1);
        let conn = client.connect(now, sa, &[]).expect("connect");
        let mut bulk = Bulk {
            client,
            server,
            conn,
            now,
            buf: vec![0; 1500],
            wire_bytes: 0,
        };
        for _ in 0..4 {
            bulk.exchange(ca, sa);
        }
        while bulk.server.poll_event().is_some() {}
        bulk.wire_bytes = 0;
        bulk
    }

    fn exchange(&mut self, ca: SocketAddr, sa: SocketAddr) {
        while let Some(t) = self.client.poll_transmit(self.now, &mut self.buf) {
            self.wire_bytes += t.len as u64;
            self.server
                .handle_datagram(self.now, ca, &self.buf[..t.len]);
        }
        while let Some(t) = self.server.poll_transmit(self.now, &mut self.buf) {
            self.wire_bytes += t.len as u64;
            self.client
                .handle_datagram(self.now, sa, &self.buf[..t.len]);
        }
    }

    /// Sends `n` 32-byte ordered messages, up to 1,000 per 1 ms tick, and runs until all are
    /// delivered.
    fn run(&mut self, n: usize, payload: &shoal_proto::Bytes) -> usize {
        let (ca, sa) = addrs();
        let mut sent = 0;
        let mut delivered = 0;
        let mut next_tick = self.now;
        while delivered < n {
            if self.now >= next_tick {
                let mut this_tick = 0;
                while sent < n
                    && this_tick < 1_000
                    && self
                        .client
                        .send(self.conn, ORDERED, payload.clone())
                        .is_ok()
                {
                    sent += 1;
                    this_tick += 1;
                }
                next_tick += Duration::from_millis(1);
            }
            self.exchange(ca, sa);
            while let Some(e) = self.server.poll_event() {
                if matches!(e, Event::Message { .. }) {
                    delivered += 1;
                }
            }
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .map_or(next_tick, |t| t.min(next_tick));
            self.now = self.now.max(next);
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
        }
        delivered
    }
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn bulk_ordered_32b(bencher: divan::Bencher<'_, '_>) {
    bulk_bench(bencher, Protection::Encrypted);
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn bulk_ordered_32b_plain(bencher: divan::Bencher<'_, '_>) {
    bulk_bench(bencher, Protection::None);
}

fn bulk_bench(bencher: divan::Bencher<'_, '_>, protection: Protection) {
    const N: usize = 100_000;
    let payload = shoal_proto::Bytes::from(vec![7u8; 32]);
    bencher
        .counter(divan::counter::ItemsCount::new(N))
        .with_inputs(|| Bulk::new(protection))
        .bench_local_values(|mut bulk| bulk.run(N, &payload));
}

/// One 32-byte ordered message and its echo between a connected pair, as a driver runs
/// them (a timeout check before each side's turn), 10 µs of virtual time a leg: the CPU a
/// round trip costs both ends together, with no socket. The loopback round trip
/// (`shoal-std`'s `loopback_rtt`, `bench-compare`'s rtt) is this plus the kernel's share.
struct PingPong {
    bulk: Bulk,
    payload: shoal_proto::Bytes,
    /// The client's and the server's addresses, parsed once: parsing them for every round
    /// trip counted some 530 instructions of the harness's (4%) in the library's figure.
    addrs: (SocketAddr, SocketAddr),
}

impl PingPong {
    fn new(protection: Protection) -> Self {
        let mut bulk = Bulk::new(protection);
        bulk.run(10, &shoal_proto::Bytes::from(vec![7u8; 32]));
        PingPong {
            bulk,
            payload: shoal_proto::Bytes::from(vec![9u8; 32]),
            addrs: addrs(),
        }
    }

    /// One round trip; returns the datagrams it took (2 once warm: the ping carries the
    /// acknowledgement of the echo before it).
    fn round_trip(&mut self) -> usize {
        let (ca, sa) = self.addrs;
        let b = &mut self.bulk;
        let mut datagrams = 0;
        b.client.handle_timeout(b.now);
        b.client
            .send(b.conn, ORDERED, self.payload.clone())
            .expect("room for one ping");
        while let Some(t) = b.client.poll_transmit(b.now, &mut b.buf) {
            b.server.handle_datagram(b.now, ca, &b.buf[..t.len]);
            datagrams += 1;
        }
        b.now += Duration::from_micros(10);
        b.server.handle_timeout(b.now);
        while let Some(e) = b.server.poll_event() {
            if let Event::Message {
                conn,
                channel,
                payload,
                ..
            } = e
            {
                b.server
                    .send(conn, channel, payload)
                    .expect("room for the echo");
            }
        }
        while let Some(t) = b.server.poll_transmit(b.now, &mut b.buf) {
            b.client.handle_datagram(b.now, sa, &b.buf[..t.len]);
            datagrams += 1;
        }
        b.now += Duration::from_micros(10);
        b.client.handle_timeout(b.now);
        let mut echoes = 0;
        while let Some(e) = b.client.poll_event() {
            echoes += usize::from(matches!(e, Event::Message { .. }));
        }
        assert_eq!(echoes, 1, "one echo a round trip");
        datagrams
    }
}

#[divan::bench(sample_count = 20, sample_size = 1000)]
fn ping_pong_32b(bencher: divan::Bencher<'_, '_>) {
    let mut pair = PingPong::new(Protection::Encrypted);
    bencher.bench_local(|| pair.round_trip());
}

#[divan::bench(sample_count = 20, sample_size = 1000)]
fn ping_pong_32b_plain(bencher: divan::Bencher<'_, '_>) {
    let mut pair = PingPong::new(Protection::None);
    bencher.bench_local(|| pair.round_trip());
}

/// Best of `runs` wall-clock timings of the bulk run, in messages per second.
fn bulk_rate(protection: Protection, runs: usize) -> f64 {
    const N: usize = 100_000;
    let payload = shoal_proto::Bytes::from(vec![7u8; 32]);
    (0..runs)
        .map(|_| {
            let mut bulk = Bulk::new(protection);
            let start = std::time::Instant::now();
            bulk.run(N, &payload);
            N as f64 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// One protected handshake, both ends made and connected over a perfect link (wall clock):
/// the CPU a connect storm costs per connection, key agreement on both sides included.
#[divan::bench(sample_count = 50, sample_size = 4)]
fn handshake_encrypted() -> usize {
    handshake_cost(Protection::Encrypted).2
}

/// The handshake on a perfect link: (datagrams, bytes) client to server and back, until both
/// sides report the connection, and the round trips that took (flights / 2).
fn handshake_cost(protection: Protection) -> ([usize; 2], [usize; 2], usize) {
    let (ca, sa) = addrs();
    let (mut client, mut server) = endpoints(protection);
    let now = Instant::from_millis(1);
    client.connect(now, sa, &[]).expect("connect");
    let (mut datagrams, mut bytes, mut flights) = ([0; 2], [0; 2], 0);
    let mut buf = vec![0u8; 1500];
    let mut connected = [false; 2];
    while !(connected[0] && connected[1]) && flights < 20 {
        let towards_server = flights % 2 == 0;
        let (from, to, from_addr) = if towards_server {
            (&mut client, &mut server, ca)
        } else {
            (&mut server, &mut client, sa)
        };
        while let Some(t) = from.poll_transmit(now, &mut buf) {
            datagrams[usize::from(!towards_server)] += 1;
            bytes[usize::from(!towards_server)] += t.len;
            to.handle_datagram(now, from_addr, &buf[..t.len]);
        }
        flights += 1;
        for (side, ep) in [&mut client, &mut server].into_iter().enumerate() {
            while let Some(e) = ep.poll_event() {
                connected[side] |= matches!(e, Event::Connected { .. });
            }
        }
    }
    (datagrams, bytes, flights)
}

/// Latency of 32-byte ordered messages over a lossy, slow link, in virtual time. `burst`:
/// loss comes in bursts (a two-state Gilbert-Elliott model with the same average loss and a
/// mean burst of 3 datagrams) instead of independently.
fn lossy_latency(
    messages_per_tick: usize,
    tick: Duration,
    seconds: u64,
    loss: f64,
    burst: bool,
) -> String {
    let (ca, sa) = addrs();
    let one_way = Duration::from_millis(50);
    let mut client = Endpoint::new(Config {
        seed: 1,
        secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(1)),
        accept_incoming: false,
        ..Config::default()
    })
    .expect("config");
    let mut server = Endpoint::new(Config {
        seed: 2,
        secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(2)),
        ..Config::default()
    })
    .expect("config");
    let mut now = Instant::from_millis(1);
    let conn = client.connect(now, sa, &[]).expect("connect");
    let mut rng = std::env::var("SHOAL_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0x1234_5678_9abc_def0u64, |s| {
            s.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
        });
    let mut chance = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    // Gilbert-Elliott: in the bad state every datagram is lost; bad lasts 3 on average.
    let (to_bad, to_good) = (loss / (1.0 - loss) / 3.0, 1.0 / 3.0);
    let mut bad = false;
    let mut lost = move |roll: f64| {
        if !burst {
            return roll < loss;
        }
        bad = if bad { roll >= to_good } else { roll < to_bad };
        bad
    };
    let mut in_flight: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 1500];
    let mut latencies = Vec::new();
    let mut sent_messages = 0u64;
    let (mut wire, mut payload_bytes) = (0u64, 0u64);
    let start = now + Duration::from_secs(1);
    let end = start + Duration::from_secs(seconds);
    let mut next_tick = start;
    while now < end + Duration::from_secs(5) {
        if now >= next_tick && now < end && client.is_connected(conn) {
            for _ in 0..messages_per_tick {
                let mut m = now.as_micros().to_be_bytes().to_vec();
                m.resize(32, 0);
                client.send(conn, ORDERED, m).expect("send");
                sent_messages += 1;
                payload_bytes += 32;
            }
            next_tick += tick;
        }
        for (ep, to_server) in [(&mut client, true), (&mut server, false)] {
            while let Some(t) = ep.poll_transmit(now, &mut buf) {
                if now >= start {
                    wire += t.len as u64;
                }
                seq += 1;
                if !lost(chance()) {
                    in_flight.push(Reverse((
                        now + one_way,
                        seq,
                        to_server,
                        buf[..t.len].to_vec(),
                    )));
                }
            }
        }
        while let Some(e) = server.poll_event() {
            if let Event::Message { payload, .. } = e {
                let sent_at = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                latencies.push(now.as_micros() - sent_at);
            }
        }
        while client.poll_event().is_some() {}
        let next = [
            in_flight.peek().map(|Reverse((t, ..))| *t),
            client.poll_timeout(),
            server.poll_timeout(),
            (now < end).then_some(next_tick),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(end);
        now = now.max(next);
        while let Some(Reverse((at, ..))) = in_flight.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, to_server, bytes))) = in_flight.pop() else {
                break;
            };
            if to_server {
                server.handle_datagram(now, ca, &bytes);
            } else {
                client.handle_datagram(now, sa, &bytes);
            }
        }
        client.handle_timeout(now);
        server.handle_timeout(now);
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0
    };
    let stats = client.connection_stats(conn).expect("live");
    if std::env::var("SHOAL_BENCH_DEBUG").is_ok() {
        eprintln!("client {stats:?}");
        if let Some(s) = server.connections().next() {
            eprintln!("server {:?}", server.connection_stats(s));
        }
    }
    let in_order = latencies.len() as u64 == sent_messages;
    let over_150 = latencies.iter().filter(|&&l| l > 150_000).count() as f64 * 100.0
        / latencies.len().max(1) as f64;
    format!(
        "delivered {:>6}/{:<6}{} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  >150 ms {:.2}%  wire (both ways)/payload {:.2}x  payload sent/payload {:.2}x",
        latencies.len(),
        sent_messages,
        if in_order { "" } else { " (MISSING)" },
        pct(0.50),
        pct(0.99),
        pct(1.0),
        over_150,
        wire as f64 / payload_bytes as f64,
        stats.payload_bytes_transmitted as f64 / stats.payload_bytes_sent as f64,
    )
}

fn main() {
    // `SHOAL_BENCH_PING=N`: only N plain round trips, nothing printed, for counting a round
    // trip's instructions (`valgrind --tool=callgrind`).
    if let Some(n) = std::env::var("SHOAL_BENCH_PING")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let mut pair = PingPong::new(Protection::None);
        for _ in 0..n {
            pair.round_trip();
        }
        return;
    }
    let runs = 3;
    let (protected, plain) = (
        bulk_rate(Protection::Encrypted, runs),
        bulk_rate(Protection::None, runs),
    );
    println!(
        "bulk, 32-byte ordered messages, no loss, best of {runs} (wall clock): protected {:.2} M/s, \
         plain {:.2} M/s; protection costs {:.1}%",
        protected / 1e6,
        plain / 1e6,
        (1.0 - protected / plain) * 100.0
    );
    if std::env::var_os("SHOAL_BENCH_DEBUG").is_some() {
        for protection in [Protection::Encrypted, Protection::None] {
            let mut bulk = Bulk::new(protection);
            let t = std::time::Instant::now();
            bulk.run(100_000, &shoal_proto::Bytes::from(vec![7u8; 32]));
            eprintln!(
                "{protection:?} {:?}: client {:?}",
                t.elapsed(),
                bulk.client.stats()
            );
            eprintln!("server {:?}", bulk.server.stats());
        }
    }
    for protection in [Protection::Encrypted, Protection::None] {
        let (datagrams, bytes, flights) = handshake_cost(protection);
        println!(
            "handshake, {protection:?}: {} datagrams / {} bytes client to server, {} / {} back, \
             {flights} flights until both sides report it",
            datagrams[0], bytes[0], datagrams[1], bytes[1]
        );
    }
    let mut bulk = Bulk::new(Protection::Encrypted);
    let n = 100_000;
    let payload = shoal_proto::Bytes::from(vec![7u8; 32]);
    let start = bulk.now;
    bulk.run(n, &payload);
    println!(
        "bulk, 100,000 x 32-byte ordered messages, up to 1,000 per 1 ms tick, no loss: \
         {:.1} wire bytes per message (both directions, acks included), {:.0} ms of virtual time",
        bulk.wire_bytes as f64 / n as f64,
        (bulk.now - start).as_secs_f64() * 1000.0,
    );
    println!("10% loss each way, 50 ms one way, 20 s, 32-byte ordered messages (virtual time; floor = 50 ms):");
    for (name, burst) in [("independent", false), ("bursts of 3", true)] {
        println!(
            "  16 per 16 ms, {name:<12} {}",
            lossy_latency(16, Duration::from_millis(16), 20, 0.10, burst)
        );
        println!(
            "  1 per 16.7 ms, {name:<11} {}",
            lossy_latency(1, Duration::from_micros(16_667), 20, 0.10, burst)
        );
    }
    divan::main();
}
