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

mod plot;
mod report;

use core::fmt;
use core::time::Duration;

use shoal_proto::{Bytes, Config, ConnectionHandle, Event, Instant, RequestId};

use crate::link::{LinkConfig, LinkConfigError};
use crate::simulator::{
    AddNodeError, Application, FastMap, NodeContext, NodeId, SimConfig, Simulator,
};
use crate::LatencyHistogram;

pub use report::{KindReport, Report, Violations};

const SEQUENCED: u8 = 1;
const RELIABLE: u8 = 2;
const ORDERED: u8 = 3;

/// Timer tokens.
const TICK: u64 = 0;
const CONNECT: u64 = 1;

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
    /// Every link, in each direction.
    pub link: LinkConfig,
    /// The endpoints' MTU (`Config::mtu`).
    pub endpoint_mtu: usize,
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
            endpoint_mtu: 1200,
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
fn make_payload(kind: Kind, counter: u32, sent_at: Instant, size: usize) -> Bytes {
    let mut p = Vec::with_capacity(size);
    p.push(kind as u8);
    p.extend_from_slice(&counter.to_le_bytes());
    p.extend_from_slice(&sent_at.as_micros().to_le_bytes());
    p.extend_from_slice(&(size as u32).to_le_bytes());
    let seed = counter as u8;
    p.extend((0..size.saturating_sub(PAYLOAD_HEADER_LEN)).map(|i| seed.wrapping_add(i as u8)));
    Bytes::from(p)
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
    let seed = counter as u8;
    let intact = len == p.len()
        && p[PAYLOAD_HEADER_LEN..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == seed.wrapping_add(i as u8));
    intact.then_some(Header {
        kind,
        counter,
        sent_at,
    })
}

/// Delivery statistics of one kind.
#[derive(Clone, Debug)]
struct KindStats {
    sent: u64,
    delivered: u64,
    payload_bytes: u64,
    latency: LatencyHistogram,
    bins: Vec<LatencyHistogram>,
    scatter: Vec<(u64, u64)>,
    scatter_stride: u64,
    scatter_seen: u64,
}

impl KindStats {
    fn new() -> Self {
        KindStats {
            sent: 0,
            delivered: 0,
            payload_bytes: 0,
            latency: LatencyHistogram::new(),
            bins: Vec::new(),
            scatter: Vec::new(),
            scatter_stride: 1,
            scatter_seen: 0,
        }
    }

    fn delivered(&mut self, sent_at: Instant, now: Instant, bin: usize) {
        let latency = (now - sent_at).as_micros() as u64;
        self.delivered += 1;
        self.latency.record_micros(latency);
        if self.bins.len() <= bin {
            self.bins.resize_with(bin + 1, LatencyHistogram::new);
        }
        self.bins[bin].record_micros(latency);
        // Keep every `stride`-th sample; when full, drop every other one and double the stride.
        if self.scatter_seen % self.scatter_stride == 0 {
            if self.scatter.len() >= 2 * SCATTER_POINTS {
                let mut i = 0;
                self.scatter.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.scatter_stride *= 2;
            }
            if self.scatter_seen % self.scatter_stride == 0 {
                self.scatter.push((sent_at.as_micros(), latency));
            }
        }
        self.scatter_seen += 1;
    }
}

/// Receive-side bookkeeping of one direction of one client's connection.
#[derive(Clone, Debug, Default)]
struct Stream {
    /// Sender counters per channel (sequenced, reliable, ordered).
    next: [u32; 3],
    /// Newest sequenced counter delivered.
    newest_sequenced: Option<u32>,
    /// Reliable counters delivered (a bit set).
    reliable_seen: Vec<u64>,
    reliable_delivered: u32,
    /// Next ordered counter expected.
    ordered_next: u32,
}

impl Stream {
    /// Reliable and ordered messages sent and not delivered yet.
    fn outstanding(&self) -> u64 {
        u64::from(self.next[1].saturating_sub(self.reliable_delivered))
            + u64::from(self.next[2].saturating_sub(self.ordered_next))
    }
}

#[derive(Clone, Debug)]
struct ClientState {
    /// The client's handle of its connection.
    conn: Option<ConnectionHandle>,
    /// The server's handle of the same connection.
    server_conn: Option<ConnectionHandle>,
    up: Stream,
    down: Stream,
    next_large: Option<Instant>,
    requests_sent: u32,
    pending_requests: Vec<(RequestId, u32, Instant)>,
    client_lost: bool,
    server_lost: bool,
}

/// The scenario as an [`Application`].
struct Game {
    config: ScenarioConfig,
    server: NodeId,
    tick: Duration,
    traffic_end: Instant,
    clients: Vec<ClientState>,
    by_server_conn: FastMap<ConnectionHandle, u32>,
    kinds: Vec<KindStats>,
    violations: Violations,
    request_timeouts: u64,
    send_errors: u64,
    disconnects: Vec<(String, u64)>,
}

impl Game {
    fn new(config: &ScenarioConfig, server: NodeId) -> Self {
        Game {
            config: config.clone(),
            server,
            tick: config.tick(),
            traffic_end: Instant::ZERO + config.duration,
            clients: vec![
                ClientState {
                    conn: None,
                    server_conn: None,
                    up: Stream::default(),
                    down: Stream::default(),
                    next_large: None,
                    requests_sent: 0,
                    pending_requests: Vec::new(),
                    client_lost: false,
                    server_lost: false,
                };
                config.clients
            ],
            by_server_conn: FastMap::default(),
            kinds: (0..Kind::COUNT).map(|_| KindStats::new()).collect(),
            violations: Violations::default(),
            request_timeouts: 0,
            send_errors: 0,
            disconnects: Vec::new(),
        }
    }

    fn bin(&self, sent_at: Instant) -> usize {
        let span = self.config.duration.as_micros().max(1);
        let bin = sent_at.as_micros() as u128 * PLOT_BINS as u128 / span;
        (bin as usize).min(PLOT_BINS - 1)
    }

    fn client_of(&self, node: Option<NodeId>) -> Option<usize> {
        let index = node?.index().checked_sub(1)?;
        (index < self.clients.len()).then_some(index)
    }

    /// Sends one message of `kind` to `conn`, counting it.
    fn send(
        &mut self,
        ctx: &mut NodeContext<'_>,
        conn: ConnectionHandle,
        client: usize,
        kind: Kind,
        size: usize,
    ) {
        let now = ctx.now();
        let channel = kind.channel();
        let state = &mut self.clients[client];
        let stream = if kind.direction() == "up" {
            &mut state.up
        } else {
            &mut state.down
        };
        let slot = &mut stream.next[usize::from(channel - 1)];
        let payload = make_payload(kind, *slot, now, size);
        match ctx.endpoint().send(conn, channel, payload) {
            Ok(()) => {
                *slot += 1;
                let k = &mut self.kinds[kind as usize];
                k.sent += 1;
                k.payload_bytes += size as u64;
            }
            Err(_) => self.send_errors += 1,
        }
    }

    fn maybe(&mut self, ctx: &mut NodeContext<'_>, per_second: f64) -> bool {
        let p = per_second / f64::from(self.config.tick_rate);
        ctx.rng().chance(p)
    }

    fn server_tick(&mut self, ctx: &mut NodeContext<'_>) {
        let now = ctx.now();
        for client in 0..self.clients.len() {
            let Some(conn) = self.clients[client].server_conn else {
                continue;
            };
            self.send(ctx, conn, client, Kind::State, self.config.state_size);
            if self.maybe(ctx, self.config.reliable_rate) {
                self.send(
                    ctx,
                    conn,
                    client,
                    Kind::ReliableDown,
                    self.config.reliable_size,
                );
            }
            if self.maybe(ctx, self.config.ordered_rate) {
                self.send(
                    ctx,
                    conn,
                    client,
                    Kind::OrderedDown,
                    self.config.ordered_size,
                );
            }
            if let Some(at) = self.clients[client].next_large {
                if at <= now {
                    self.send(ctx, conn, client, Kind::Large, self.config.large_size);
                    self.clients[client].next_large = Some(at + self.config.large_interval);
                }
            }
        }
    }

    fn client_tick(&mut self, ctx: &mut NodeContext<'_>, client: usize) {
        let now = ctx.now();
        let Some(conn) = self.clients[client].conn else {
            return;
        };
        self.send(ctx, conn, client, Kind::Input, self.config.input_size);
        if self.maybe(ctx, self.config.reliable_rate) {
            self.send(
                ctx,
                conn,
                client,
                Kind::ReliableUp,
                self.config.reliable_size,
            );
        }
        if self.maybe(ctx, self.config.ordered_rate) {
            self.send(ctx, conn, client, Kind::OrderedUp, self.config.ordered_size);
        }
        let request_rate = if self.config.request_interval.is_zero() {
            0.0
        } else {
            1.0 / self.config.request_interval.as_secs_f64()
        };
        if self.maybe(ctx, request_rate) {
            let state = &mut self.clients[client];
            let counter = state.requests_sent;
            let payload = make_payload(Kind::Request, counter, now, self.config.request_size);
            match ctx.endpoint().request(now, conn, RELIABLE, payload) {
                Ok(id) => {
                    state.requests_sent += 1;
                    state.pending_requests.push((id, counter, now));
                    let k = &mut self.kinds[Kind::Request as usize];
                    k.sent += 1;
                    // The request and its response.
                    k.payload_bytes += 2 * self.config.request_size as u64;
                }
                Err(_) => self.send_errors += 1,
            }
        }
    }

    /// Checks and counts a message that arrived on `channel` of `client`'s connection.
    fn receive(&mut self, now: Instant, client: usize, up: bool, channel: u8, payload: &[u8]) {
        let Some(h) = parse_payload(payload) else {
            self.violations.corrupted += 1;
            return;
        };
        if h.kind.channel() != channel
            || (h.kind.direction() == "up") != up
            || h.kind == Kind::Request
        {
            self.violations.corrupted += 1;
            return;
        }
        let state = &mut self.clients[client];
        let stream = if up { &mut state.up } else { &mut state.down };
        match channel {
            SEQUENCED => {
                if stream.newest_sequenced.is_some_and(|n| h.counter <= n) {
                    self.violations.sequenced_stale += 1;
                    return;
                }
                stream.newest_sequenced = Some(h.counter);
            }
            RELIABLE => {
                let (word, bit) = (h.counter as usize / 64, h.counter % 64);
                if stream.reliable_seen.len() <= word {
                    stream.reliable_seen.resize(word + 1, 0);
                }
                if stream.reliable_seen[word] & (1 << bit) != 0 {
                    self.violations.reliable_duplicated += 1;
                    return;
                }
                stream.reliable_seen[word] |= 1 << bit;
                stream.reliable_delivered += 1;
            }
            _ => {
                if h.counter != stream.ordered_next {
                    self.violations.ordered_out_of_order += 1;
                    if h.counter < stream.ordered_next {
                        return;
                    }
                }
                stream.ordered_next = h.counter + 1;
            }
        }
        let bin = self.bin(h.sent_at);
        self.kinds[h.kind as usize].delivered(h.sent_at, now, bin);
    }

    fn disconnected(&mut self, reason: String) {
        match self.disconnects.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.disconnects.push((reason, 1)),
        }
    }

    fn on_server_event(&mut self, ctx: &mut NodeContext<'_>, event: Event) {
        let now = ctx.now();
        match event {
            Event::Connected { conn, remote, .. } => {
                let Some(client) = self.client_of(ctx.node_at(remote)) else {
                    return;
                };
                let state = &mut self.clients[client];
                state.server_conn = Some(conn);
                if self.config.large_size > 0 {
                    let phase = ctx
                        .rng()
                        .below(self.config.large_interval.as_micros() as u64);
                    state.next_large = Some(now + Duration::from_micros(phase));
                }
                self.by_server_conn.insert(conn, client as u32);
            }
            Event::Message {
                conn,
                channel,
                payload,
                ..
            } => {
                if let Some(&client) = self.by_server_conn.get(&conn) {
                    self.receive(now, client as usize, true, channel, &payload);
                }
            }
            Event::Request {
                conn,
                request,
                payload,
                ..
            } => {
                let intact = parse_payload(&payload).is_some_and(|h| h.kind == Kind::Request);
                if !intact {
                    self.violations.corrupted += 1;
                }
                // Echo: the client checks that the answer carries its request's counter.
                if ctx.endpoint().respond(conn, request, payload).is_err() {
                    self.send_errors += 1;
                }
            }
            Event::Disconnected { conn, reason } => {
                if let Some(client) = self.by_server_conn.remove(&conn) {
                    let state = &mut self.clients[client as usize];
                    state.server_conn = None;
                    state.server_lost = true;
                }
                self.disconnected(format!("server side: {reason}"));
            }
            _ => {}
        }
    }

    fn on_client_event(&mut self, ctx: &mut NodeContext<'_>, client: usize, event: Event) {
        let now = ctx.now();
        match event {
            Event::Connected { .. } => {
                let phase = ctx.rng().below(self.tick.as_micros() as u64);
                ctx.set_timer(now + Duration::from_micros(phase), TICK);
            }
            Event::Message {
                channel, payload, ..
            } => self.receive(now, client, false, channel, &payload),
            Event::Response { id, payload, .. } => {
                let state = &mut self.clients[client];
                let Some(i) = state.pending_requests.iter().position(|p| p.0 == id) else {
                    self.violations.unexpected_responses += 1;
                    return;
                };
                let (_, counter, sent_at) = state.pending_requests.swap_remove(i);
                match parse_payload(&payload) {
                    Some(h) if h.kind == Kind::Request && h.counter == counter => {
                        let bin = self.bin(sent_at);
                        self.kinds[Kind::Request as usize].delivered(sent_at, now, bin);
                    }
                    _ => self.violations.unexpected_responses += 1,
                }
            }
            Event::RequestTimedOut { id, .. } => {
                let state = &mut self.clients[client];
                if let Some(i) = state.pending_requests.iter().position(|p| p.0 == id) {
                    state.pending_requests.swap_remove(i);
                }
                self.request_timeouts += 1;
            }
            Event::Disconnected { reason, .. } => {
                let state = &mut self.clients[client];
                state.conn = None;
                state.client_lost = true;
                state.pending_requests.clear();
                self.disconnected(format!("client side: {reason}"));
            }
            _ => {}
        }
    }

    /// Reliable and ordered messages, and requests, still on their way on live connections.
    fn outstanding(&self) -> u64 {
        self.clients
            .iter()
            .filter(|c| !c.client_lost && !c.server_lost)
            .map(|c| c.up.outstanding() + c.down.outstanding() + c.pending_requests.len() as u64)
            .sum()
    }
}

impl Application for Game {
    fn on_event(&mut self, ctx: &mut NodeContext<'_>, event: Event) {
        if ctx.id() == self.server {
            self.on_server_event(ctx, event);
        } else if let Some(client) = self.client_of(Some(ctx.id())) {
            self.on_client_event(ctx, client, event);
        }
    }

    fn on_timer(&mut self, ctx: &mut NodeContext<'_>, token: u64) {
        let now = ctx.now();
        if now >= self.traffic_end {
            return;
        }
        let next = now + self.tick;
        if ctx.id() == self.server {
            self.server_tick(ctx);
            ctx.set_timer(next, TICK);
            return;
        }
        let Some(client) = self.client_of(Some(ctx.id())) else {
            return;
        };
        match token {
            CONNECT => {
                let server = ctx.address_of(self.server);
                match ctx
                    .endpoint()
                    .connect(now, server, &(client as u32).to_le_bytes())
                {
                    Ok(conn) => self.clients[client].conn = Some(conn),
                    Err(_) => self.send_errors += 1,
                }
            }
            _ => {
                if self.clients[client].conn.is_some() {
                    self.client_tick(ctx, client);
                    ctx.set_timer(next, TICK);
                }
            }
        }
    }
}

/// Runs the scenario. `progress` is called with the simulated time every 100 simulated
/// milliseconds (e.g. to move a progress bar).
pub fn run(
    config: &ScenarioConfig,
    progress: &mut dyn FnMut(Instant),
) -> Result<Report, ScenarioError> {
    config.validate()?;
    let mut sim = Simulator::new(SimConfig {
        seed: config.seed,
        default_link: config.link,
        ..SimConfig::default()
    })
    .map_err(ScenarioError::Link)?;
    let server = sim
        .add_node(Config {
            mtu: config.endpoint_mtu,
            max_connections: config.clients,
            ..Config::default()
        })
        .map_err(ScenarioError::Node)?;
    for _ in 0..config.clients {
        let client = sim
            .add_node(Config {
                mtu: config.endpoint_mtu,
                accept_incoming: false,
                ..Config::default()
            })
            .map_err(ScenarioError::Node)?;
        let at = sim.rng().below(config.connect_window.as_micros() as u64);
        sim.set_timer(client, Instant::from_micros(at), CONNECT);
    }
    sim.set_timer(server, Instant::ZERO, TICK);

    let traffic_end = Instant::ZERO + config.duration;
    let mut game = Game::new(config, server);

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
    fn receivers_catch_every_kind_of_violation() {
        let config = ScenarioConfig {
            clients: 1,
            ..ScenarioConfig::default()
        };
        let mut game = Game::new(&config, NodeId(0));
        let t = |ms| Instant::from_millis(ms);
        let msg = |kind, counter| make_payload(kind, counter, t(0), 32);

        // Sequenced: newer is fine, older or equal is stale.
        game.receive(
            t(10),
            0,
            true,
            SEQUENCED,
            &make_payload(Kind::Input, 5, t(0), 24),
        );
        game.receive(
            t(10),
            0,
            true,
            SEQUENCED,
            &make_payload(Kind::Input, 5, t(0), 24),
        );
        game.receive(
            t(10),
            0,
            true,
            SEQUENCED,
            &make_payload(Kind::Input, 3, t(0), 24),
        );
        game.receive(
            t(10),
            0,
            true,
            SEQUENCED,
            &make_payload(Kind::Input, 6, t(0), 24),
        );
        assert_eq!(game.violations.sequenced_stale, 2);

        // Reliable: any order, but once.
        game.receive(t(10), 0, false, RELIABLE, &msg(Kind::ReliableDown, 1));
        game.receive(t(10), 0, false, RELIABLE, &msg(Kind::ReliableDown, 0));
        game.receive(t(10), 0, false, RELIABLE, &msg(Kind::ReliableDown, 1));
        assert_eq!(game.violations.reliable_duplicated, 1);

        // Ordered: 0, 1, then 3 skips 2.
        game.receive(
            t(10),
            0,
            true,
            ORDERED,
            &make_payload(Kind::OrderedUp, 0, t(0), 48),
        );
        game.receive(
            t(10),
            0,
            true,
            ORDERED,
            &make_payload(Kind::OrderedUp, 1, t(0), 48),
        );
        game.receive(
            t(10),
            0,
            true,
            ORDERED,
            &make_payload(Kind::OrderedUp, 3, t(0), 48),
        );
        assert_eq!(game.violations.ordered_out_of_order, 1);

        // Corruption, wrong channel, wrong direction.
        let mut bad = msg(Kind::ReliableDown, 9).to_vec();
        bad[20] ^= 0xff;
        game.receive(t(10), 0, false, RELIABLE, &bad);
        game.receive(t(10), 0, false, ORDERED, &msg(Kind::ReliableDown, 10));
        game.receive(t(10), 0, true, RELIABLE, &msg(Kind::ReliableDown, 11));
        assert_eq!(game.violations.corrupted, 3);

        assert_eq!(game.kinds[Kind::Input as usize].delivered, 2);
        assert_eq!(game.kinds[Kind::ReliableDown as usize].delivered, 2);
        assert_eq!(
            game.kinds[Kind::ReliableDown as usize].latency.max(),
            Duration::from_millis(10)
        );
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
