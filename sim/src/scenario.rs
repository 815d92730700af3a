//! A game-like load: one server and many clients, run in the simulator, with every delivery
//! checked against its channel's guarantee.
//!
//! Each client connects at a random moment in the first second, then, until the end of the
//! run:
//!
//! - both sides send state 20 times a second on the sequenced channel (a 24-byte input up, a
//!   64-byte world state down, per client);
//! - both sides send events on the reliable and the ordered channel, a few per second;
//! - the server sends each client a large message (64 KiB) every 10 s on the ordered channel,
//!   which the protocol chunks;
//! - clients send a request now and then, which the server answers.
//!
//! Every payload carries its kind, a per-stream counter, its send time and a byte pattern, so
//! the receiver measures the delivery latency and checks the guarantees: sequenced messages
//! never arrive stale, reliable ones exactly once, ordered ones exactly once and in order,
//! responses match their requests, nothing is corrupted. After the run, traffic stops and the
//! simulation continues until everything reliable is delivered (or a drain limit passes);
//! anything reliable still missing on a live connection counts as a violation.
//!
//! ```
//! use core::time::Duration;
//! use shoal_sim::scenario::{run, ScenarioConfig};
//! let config = ScenarioConfig {
//!     clients: 3,
//!     duration: Duration::from_secs(2),
//!     ..ScenarioConfig::default()
//! };
//! let report = run(&config, &mut |_now| {}).unwrap();
//! assert_eq!(report.violations.total(), 0);
//! assert!(report.kinds.iter().all(|k| k.sent > 0 || k.kind.interval_based()));
//! println!("{report}");
//! ```

mod drops;
mod game;
mod plot;
mod report;

use core::fmt;
use core::time::Duration;

use shoal_proto::{Bytes, Config, Instant, Protection};

use crate::link::{LinkConfig, LinkConfigError};
use crate::simulator::{AddNodeError, SimConfig, Simulator};

pub use drops::DropClass;
use game::{Game, CONNECT, TICK};
pub use report::{KindReport, Report, Violations};

const SEQUENCED: u8 = 1;
const RELIABLE: u8 = 2;
const ORDERED: u8 = 3;

/// Bytes of the header every scenario payload starts with: kind, counter, send time, length.
pub const PAYLOAD_HEADER_LEN: usize = 17;
/// Time bins of the latency-over-time plot.
pub const PLOT_BINS: usize = 60;
/// Latency samples kept per kind for the scatter plot (a deterministic, even thinning).
const SCATTER_POINTS: usize = 1500;

/// What a message is, for the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Client input, 20 Hz, sequenced, up.
    Input,
    /// World state, 20 Hz, sequenced, down.
    State,
    /// A reliable event from a client.
    ReliableUp,
    /// A reliable event from the server.
    ReliableDown,
    /// An ordered event from a client.
    OrderedUp,
    /// An ordered event from the server.
    OrderedDown,
    /// A large message from the server on the ordered channel.
    Large,
    /// A request from a client and its response (latency = round trip).
    Request,
}

impl Kind {
    /// Number of kinds.
    pub const COUNT: usize = 8;
    /// Every kind, in table order.
    pub const ALL: [Kind; Kind::COUNT] = [
        Kind::Input,
        Kind::State,
        Kind::ReliableUp,
        Kind::ReliableDown,
        Kind::OrderedUp,
        Kind::OrderedDown,
        Kind::Large,
        Kind::Request,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Input => "input",
            Kind::State => "state",
            Kind::ReliableUp | Kind::ReliableDown => "reliable event",
            Kind::OrderedUp | Kind::OrderedDown => "ordered event",
            Kind::Large => "large message",
            Kind::Request => "request/response",
        }
    }

    /// `"up"` (client to server), `"down"` or `"rtt"` (a round trip).
    pub fn direction(self) -> &'static str {
        match self {
            Kind::Input | Kind::ReliableUp | Kind::OrderedUp => "up",
            Kind::State | Kind::ReliableDown | Kind::OrderedDown | Kind::Large => "down",
            Kind::Request => "rtt",
        }
    }

    /// The channel it travels on.
    pub fn channel(self) -> u8 {
        match self {
            Kind::Input | Kind::State => SEQUENCED,
            Kind::ReliableUp | Kind::ReliableDown | Kind::Request => RELIABLE,
            Kind::OrderedUp | Kind::OrderedDown | Kind::Large => ORDERED,
        }
    }

    /// The channel's delivery kind, for tables.
    pub fn channel_name(self) -> &'static str {
        match self.channel() {
            SEQUENCED => "sequenced",
            RELIABLE => "reliable",
            _ => "ordered",
        }
    }

    /// Whether a short run may legitimately send none of it (large messages and requests are
    /// sent every few seconds).
    pub fn interval_based(self) -> bool {
        matches!(self, Kind::Large | Kind::Request)
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(b)).copied()
    }
}

/// The load and the network of a scenario run.
#[derive(Clone, Debug)]
pub struct ScenarioConfig {
    /// Clients (the server is one more node). At most 65,534.
    pub clients: usize,
    /// How long the clients play; traffic stops after it.
    pub duration: Duration,
    /// The seed of the whole run.
    pub seed: u64,
    /// Every link, in each direction (client → server always; server → client unless
    /// `downlink` is set).
    pub link: LinkConfig,
    /// The server → client links, when they differ (asymmetric networks).
    pub downlink: Option<LinkConfig>,
    /// The endpoints' MTU (`Config::mtu`).
    pub endpoint_mtu: usize,
    /// Packet protection on every connection (`Config::protection`; default
    /// `Protection::Encrypted`, as in production). `Protection::None` for speed studies.
    pub protection: Protection,
    /// Forward error correction on every endpoint (`Config::redundancy`, whose default it
    /// takes). 0 turns coding off, to tell what it costs and what it saves.
    pub redundancy: u8,
    /// Longest an endpoint waits to acknowledge reliable frames (`Config::max_ack_delay`,
    /// whose default, 5 ms, it takes). A game that sends every tick may set its tick interval:
    /// an acknowledgement then rides on the next tick's packet instead of a datagram of its
    /// own (both sides must agree: the sender's probe timeout allows for it).
    pub max_ack_delay: Duration,
    /// State updates per second, each way.
    pub tick_rate: u32,
    /// Bytes of a client input.
    pub input_size: usize,
    /// Bytes of a world state update.
    pub state_size: usize,
    /// Bytes of a reliable event.
    pub reliable_size: usize,
    /// Bytes of an ordered event.
    pub ordered_size: usize,
    /// Reliable events per second, each way, per client.
    pub reliable_rate: f64,
    /// Ordered events per second, each way, per client.
    pub ordered_rate: f64,
    /// Bytes of a large message (0: none).
    pub large_size: usize,
    /// Time between large messages to one client.
    pub large_interval: Duration,
    /// Bytes of a request and of its response.
    pub request_size: usize,
    /// Mean time between requests of one client (0: none).
    pub request_interval: Duration,
    /// Clients connect at uniformly random moments within this window.
    pub connect_window: Duration,
    /// Longest the run continues after `duration` for reliable traffic to arrive.
    pub drain_limit: Duration,
    /// Runs the simulator a lookahead window at a time, node by node
    /// ([`SimConfig::node_batching`]; default `true`): the scenario's checks are per client
    /// and per direction, so they hold in any interleaving of different nodes' callbacks,
    /// and with thousands of clients the run is several times lighter on the caches.
    /// `false` takes every happening in one global time order (another trace hash).
    pub node_batching: bool,
    /// Prefetches what the next nodes and datagrams will read
    /// ([`SimConfig::memory_hints`], whose default it takes). Changes nothing but speed.
    pub memory_hints: bool,
    /// Times each turn of the run ([`SimConfig::time_turns`]; the figures are in
    /// [`Report::turn_times`]). Changes nothing but speed. Default `false`.
    pub time_turns: bool,
}

impl Default for ScenarioConfig {
    /// 100 clients for 10 s over 40 ms (±5 ms) links losing 1%.
    fn default() -> Self {
        ScenarioConfig {
            clients: 100,
            duration: Duration::from_secs(10),
            seed: 1,
            link: LinkConfig {
                latency: Duration::from_millis(40),
                jitter: Duration::from_millis(5),
                loss: 0.01,
                ..LinkConfig::default()
            },
            downlink: None,
            endpoint_mtu: 1200,
            protection: Protection::Encrypted,
            redundancy: Config::default().redundancy,
            max_ack_delay: Config::default().max_ack_delay,
            tick_rate: 20,
            input_size: 24,
            state_size: 64,
            reliable_size: 32,
            ordered_size: 48,
            reliable_rate: 2.0,
            ordered_rate: 2.0,
            large_size: 64 * 1024,
            large_interval: Duration::from_secs(10),
            request_size: 40,
            request_interval: Duration::from_secs(5),
            connect_window: Duration::from_secs(1),
            drain_limit: Duration::from_secs(15),
            node_batching: true,
            memory_hints: SimConfig::default().memory_hints,
            time_turns: false,
        }
    }
}

/// Why a scenario could not run.
#[derive(Debug)]
pub enum ScenarioError {
    /// The link settings are invalid.
    Link(LinkConfigError),
    /// The endpoint settings are invalid (e.g. the MTU).
    Node(AddNodeError),
    /// A setting out of range, with an explanation.
    Invalid(String),
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScenarioError::Link(e) => write!(f, "{e}"),
            ScenarioError::Node(e) => write!(f, "{e}"),
            ScenarioError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ScenarioError {}

impl ScenarioConfig {
    /// Checks the settings that the simulator and endpoints do not check themselves.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |msg: &str| Err(ScenarioError::Invalid(msg.to_string()));
        if self.clients == 0 || self.clients > 65_534 {
            return invalid("clients must be between 1 and 65,534 (one server's user ids)");
        }
        if self.tick_rate == 0 || self.tick_rate > 1000 {
            return invalid("tick rate must be between 1 and 1000 per second");
        }
        if self.duration.is_zero() {
            return invalid("duration must be above zero");
        }
        let sizes = [
            self.input_size,
            self.state_size,
            self.reliable_size,
            self.ordered_size,
            self.request_size,
        ];
        if sizes.iter().any(|&s| s < PAYLOAD_HEADER_LEN)
            || (self.large_size > 0 && self.large_size < PAYLOAD_HEADER_LEN)
        {
            return Err(ScenarioError::Invalid(format!(
                "message sizes must be at least {PAYLOAD_HEADER_LEN} bytes (the payload header)"
            )));
        }
        if !(self.reliable_rate >= 0.0 && self.ordered_rate >= 0.0) {
            return invalid("event rates must not be negative");
        }
        if self.large_size > 0 && self.large_interval.is_zero() {
            return invalid("large message interval must be above zero");
        }
        self.link.validate().map_err(ScenarioError::Link)
    }

    fn tick(&self) -> Duration {
        Duration::from_micros(1_000_000 / u64::from(self.tick_rate.max(1)))
    }
}

/// Builds a payload: `[kind][counter u32][sent_at u64][len u32]` then a pattern derived from
/// the counter, so corruption and truncation are detectable.
///
/// Each in a buffer of its own: `Bytes` made from a `Vec` is freed without an atomic
/// operation once sent. (Game messages cut from one shared arena block each took a locked
/// increment of the block's count when cut and a locked decrement when dropped; a locked
/// instruction waits for every store before it, and with 10,000 clients those are stores
/// into cold lines. The allocator's thread-local free lists cost less than that: with
/// 10,000 clients, 0.69-0.70 against 0.67-0.69 in alternating pairs, about the noise.)
fn make_payload(kind: Kind, counter: u32, sent_at: Instant, size: usize) -> Bytes {
    let len = size.max(PAYLOAD_HEADER_LEN);
    let mut payload = Vec::with_capacity(len);
    payload.push(kind as u8);
    payload.extend_from_slice(&counter.to_le_bytes());
    payload.extend_from_slice(&sent_at.as_micros().to_le_bytes());
    payload.extend_from_slice(&(size as u32).to_le_bytes());
    for chunk in pattern(counter as u8, size.saturating_sub(PAYLOAD_HEADER_LEN)) {
        payload.extend_from_slice(chunk);
    }
    Bytes::from(payload)
}

/// Every byte value twice: `PATTERN[s..s + n]` is `s, s+1, .. s+n-1` (wrapping) for n <= 256.
static PATTERN: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// The body of a payload, `seed, seed+1, ..` (wrapping) for `len` bytes, in slices of at most
/// 256 bytes (copied and compared a slice at a time rather than a byte at a time).
fn pattern(seed: u8, len: usize) -> impl Iterator<Item = &'static [u8]> {
    let start = usize::from(seed);
    (0..len)
        .step_by(256)
        .map(move |done| &PATTERN[start..start + (len - done).min(256)])
}

/// The header of a payload, if it is intact.
struct Header {
    kind: Kind,
    counter: u32,
    sent_at: Instant,
}

fn parse_payload(p: &[u8]) -> Option<Header> {
    if p.len() < PAYLOAD_HEADER_LEN {
        return None;
    }
    let kind = Kind::from_byte(p[0])?;
    let counter = u32::from_le_bytes(p[1..5].try_into().ok()?);
    let sent_at = Instant::from_micros(u64::from_le_bytes(p[5..13].try_into().ok()?));
    let len = u32::from_le_bytes(p[13..17].try_into().ok()?) as usize;
    let body = &p[PAYLOAD_HEADER_LEN..];
    let intact = len == p.len()
        && body
            .chunks(256)
            .zip(pattern(counter as u8, body.len()))
            .all(|(got, expected)| got == expected);
    intact.then_some(Header {
        kind,
        counter,
        sent_at,
    })
}

/// The scenario's simulator, its nodes and their first timers, and the game that plays it
/// (`trace_capacity`: datagrams the simulator's trace keeps).
fn build(
    config: &ScenarioConfig,
    trace_capacity: usize,
) -> Result<(Simulator, Game), ScenarioError> {
    config.validate()?;
    let mut sim = Simulator::new(SimConfig {
        seed: config.seed,
        default_link: config.link,
        node_batching: config.node_batching,
        memory_hints: config.memory_hints,
        time_turns: config.time_turns,
        trace_capacity,
        ..SimConfig::default()
    })
    .map_err(ScenarioError::Link)?;
    let server = sim
        .add_node(Config {
            mtu: config.endpoint_mtu,
            max_connections: config.clients,
            protection: config.protection,
            redundancy: config.redundancy,
            max_ack_delay: config.max_ack_delay,
            ..Config::default()
        })
        .map_err(ScenarioError::Node)?;
    for _ in 0..config.clients {
        let client = sim
            .add_node(Config {
                mtu: config.endpoint_mtu,
                accept_incoming: false,
                protection: config.protection,
                redundancy: config.redundancy,
                max_ack_delay: config.max_ack_delay,
                ..Config::default()
            })
            .map_err(ScenarioError::Node)?;
        if let Some(downlink) = config.downlink {
            sim.set_link(server, client, downlink)
                .map_err(ScenarioError::Link)?;
        }
        let at = sim.rng().below(config.connect_window.as_micros() as u64);
        sim.set_timer(client, Instant::from_micros(at), CONNECT);
    }
    sim.set_timer(server, Instant::ZERO, TICK);
    let game = Game::new(config, server);
    Ok((sim, game))
}

/// Runs the scenario. `progress` is called with the simulated time every 100 simulated
/// milliseconds (e.g. to move a progress bar).
pub fn run(
    config: &ScenarioConfig,
    progress: &mut dyn FnMut(Instant),
) -> Result<Report, ScenarioError> {
    let (mut sim, mut game) = build(config, 0)?;
    let traffic_end = Instant::ZERO + config.duration;

    let slice = Duration::from_millis(100);
    let mut now = Instant::ZERO;
    while now < traffic_end {
        now = (now + slice).min(traffic_end);
        sim.run_until_with(now, &mut game);
        progress(now);
    }
    let drain_end = traffic_end + config.drain_limit;
    while now < drain_end && game.outstanding() > 0 {
        now = (now + slice).min(drain_end);
        sim.run_until_with(now, &mut game);
        progress(now);
    }
    // Whatever reliable is still missing on a live connection was lost by the protocol.
    for c in &game.clients {
        if !c.client_lost && !c.server_lost {
            game.violations.reliable_undelivered += c.up.outstanding() + c.down.outstanding();
        }
    }
    Ok(report::build(&sim, &game, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `time_turns`, every happening the engine took is counted once, in its row, and
    /// the server's (the node with more than two connections) apart from the clients'; the
    /// run itself is the same. Without it nothing is counted.
    #[test]
    fn timed_turns_count_every_happening_once_and_change_nothing() {
        let config = ScenarioConfig {
            clients: 4,
            duration: Duration::from_secs(3),
            large_size: 0,
            ..ScenarioConfig::default()
        };
        let plain = run(&config, &mut |_| {}).expect("valid scenario");
        assert_eq!(plain.turn_times, crate::TurnTimes::default());
        let timed = run(
            &ScenarioConfig {
                time_turns: true,
                ..config
            },
            &mut |_| {},
        )
        .expect("valid scenario");
        assert_eq!(timed.trace_hash, plain.trace_hash);
        let (t, s) = (timed.turn_times, timed.sim);
        let sum = |rows: [crate::TurnTime; 2]| rows[0].count + rows[1].count;
        assert_eq!(sum(t.wakeups), s.wakeups + s.stale_wakeups);
        assert_eq!(sum(t.arrivals), s.datagrams_delivered);
        assert_eq!(sum(t.timers), s.timers_fired);
        assert_eq!(t.total().count, s.steps);
        // The server's datagrams come from four clients; the clients' from the server.
        assert!(t.arrivals[0].count > 0 && t.arrivals[1].count > 0);
        assert!(t.timers[1].count > 0, "the server ticks");
        assert!(t.total().nanos > 0);
    }

    /// The server's tick goes out in chunks (`SERVER_TICK_CHUNK`), each drained before the
    /// next is queued, yet every connected client's state leaves at the tick's instant.
    #[test]
    fn a_server_tick_in_chunks_reaches_every_client_at_the_tick_instant() {
        let clients = 3 * game::SERVER_TICK_CHUNK + 5;
        let config = ScenarioConfig {
            clients,
            duration: Duration::from_millis(1_600),
            large_size: 0,
            protection: Protection::None,
            // (No loss: a lost handshake would leave a client to connect a second later.)
            link: LinkConfig {
                loss: 0.0,
                ..ScenarioConfig::default().link
            },
            ..ScenarioConfig::default()
        };
        let (mut sim, mut game) = build(&config, 1 << 20).expect("valid scenario");
        sim.run_until_with(Instant::from_millis(1_600), &mut game);
        assert_eq!(sim.trace_evicted(), 0);
        let server = game.server;
        let tick = config.tick();
        let mut ticks_checked = 0;
        // Every client connected within the 1 s connect window and a round trip.
        for k in 25..32 {
            let at = Instant::ZERO + tick * k;
            let mut reached: Vec<_> = sim
                .trace()
                .filter(|r| r.from_node == server && r.time == at)
                .filter_map(|r| r.to_node)
                .collect();
            reached.sort_by_key(|n| n.0);
            reached.dedup();
            assert_eq!(reached.len(), clients, "tick at {at:?}");
            ticks_checked += 1;
        }
        assert_eq!(ticks_checked, 7);
    }

    /// With the tick as the endpoints' longest acknowledgement delay, acknowledgements of
    /// reliable frames wait for the next tick's packet: the same game traffic, every
    /// guarantee kept, in fewer datagrams (at the 5 ms default, most reliable messages'
    /// acknowledgements go in datagrams of their own).
    #[test]
    fn acknowledgements_ride_on_the_next_tick_when_they_may_wait_for_it() {
        let config = ScenarioConfig {
            clients: 20,
            duration: Duration::from_secs(4),
            large_size: 0,
            protection: Protection::None,
            ..ScenarioConfig::default()
        };
        let prompt = run(&config, &mut |_| {}).expect("valid scenario");
        let riding = run(
            &ScenarioConfig {
                max_ack_delay: config.tick(),
                ..config
            },
            &mut |_| {},
        )
        .expect("valid scenario");
        for report in [&prompt, &riding] {
            assert_eq!(report.violations.total(), 0);
            assert_eq!(report.clients_connected, 20);
        }
        let delivered = |r: &Report| r.kinds.iter().map(|k| k.delivered).sum::<u64>();
        let (a, b) = (delivered(&prompt) as f64, delivered(&riding) as f64);
        assert!(
            (a - b).abs() < 0.02 * a,
            "the same traffic: {a} and {b} delivered"
        );
        assert!(
            riding.datagrams_sent * 10 < prompt.datagrams_sent * 9,
            "{} datagrams with acknowledgements on the tick, {} without",
            riding.datagrams_sent,
            prompt.datagrams_sent
        );
    }

    #[test]
    fn payloads_round_trip_and_corruption_is_detected() {
        let p = make_payload(Kind::Large, 7, Instant::from_micros(123), 1000);
        let h = parse_payload(&p).expect("intact");
        assert_eq!(
            (h.kind, h.counter, h.sent_at),
            (Kind::Large, 7, Instant::from_micros(123))
        );
        let mut bad = p.to_vec();
        bad[500] ^= 1;
        assert!(parse_payload(&bad).is_none());
        assert!(parse_payload(&p[..999]).is_none());
        assert!(parse_payload(&p[..10]).is_none());
    }

    #[test]
    fn payload_bodies_count_up_from_the_counter_byte() {
        for counter in [0u32, 1, 7, 255, 256, 0x1234_56ff] {
            for size in [17, 18, 100, 272, 273, 274, 1000, 65_553] {
                let p = make_payload(Kind::Large, counter, Instant::ZERO, size);
                assert_eq!(p.len(), size);
                let seed = counter as u8;
                let expected: Vec<u8> = (0..size - PAYLOAD_HEADER_LEN)
                    .map(|i| seed.wrapping_add(i as u8))
                    .collect();
                assert_eq!(&p[PAYLOAD_HEADER_LEN..], &expected[..]);
                assert!(parse_payload(&p).is_some());
                if size > PAYLOAD_HEADER_LEN {
                    let mut bad = p.to_vec();
                    *bad.last_mut().expect("a body") ^= 0x80;
                    assert!(parse_payload(&bad).is_none());
                }
            }
        }
    }

    #[test]
    fn validate_rejects_impossible_settings() {
        let zero = ScenarioConfig {
            clients: 0,
            ..ScenarioConfig::default()
        };
        assert!(zero.validate().is_err());
        let tiny = ScenarioConfig {
            input_size: 4,
            ..ScenarioConfig::default()
        };
        assert!(tiny.validate().is_err());
        assert!(ScenarioConfig::default().validate().is_ok());
    }
}
