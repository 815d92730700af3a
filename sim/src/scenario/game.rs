//! The scenario as an [`Application`]: who sends what when, and the receivers that check
//! every delivery against its channel's guarantee.

use core::time::Duration;

use shoal_proto::{ConnectionHandle, Event, Instant, MemoryHint, RequestId};

use super::{
    make_payload, parse_payload, Kind, ScenarioConfig, Violations, PLOT_BINS, RELIABLE,
    SCATTER_POINTS, SEQUENCED,
};
use crate::simulator::{Application, NodeContext, NodeId};
use crate::LatencyHistogram;

/// Timer tokens.
pub(super) const TICK: u64 = 0;
pub(super) const CONNECT: u64 = 1;
/// The server's tick goes on with the next chunk of clients (at the same instant).
pub(super) const RESUME_TICK: u64 = 2;

/// Clients a server tick sends to before the engine drains the transmit queue: the tick
/// goes on in a timer at the same instant, so every client's state still leaves at the
/// tick. A send queues the message on the connection and the drain codes the packet: with
/// the whole tick queued first, 10,000 connections came between the two and each was read
/// cold twice. With 32 (some 100 KB of connection state) the drain finds them in the cache:
/// at 10,000 light clients, alternating windows read 0.929-0.930 against one chunk of all
/// (8: 0.96, 16: 0.94-0.95, 64: 0.94, 256: 0.97, 1,024: 1.00); 0.96 as shipped.
pub(super) const SERVER_TICK_CHUNK: usize = 32;

/// Delivery statistics of one kind.
#[derive(Clone, Debug)]
pub(super) struct KindStats {
    pub(super) sent: u64,
    pub(super) delivered: u64,
    pub(super) payload_bytes: u64,
    pub(super) latency: LatencyHistogram,
    pub(super) bins: Vec<LatencyHistogram>,
    pub(super) scatter: Vec<(u64, u64)>,
    pub(super) scatter_stride: u64,
    pub(super) scatter_seen: u64,
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
pub(super) struct Stream {
    /// Sender counters per channel (sequenced, reliable, ordered).
    pub(super) next: [u32; 3],
    /// Newest sequenced counter delivered.
    pub(super) newest_sequenced: Option<u32>,
    /// Reliable counters delivered (a bit set).
    pub(super) reliable_seen: Vec<u64>,
    pub(super) reliable_delivered: u32,
    /// Next ordered counter expected.
    pub(super) ordered_next: u32,
}

impl Stream {
    /// Reliable and ordered messages sent and not delivered yet.
    pub(super) fn outstanding(&self) -> u64 {
        u64::from(self.next[1].saturating_sub(self.reliable_delivered))
            + u64::from(self.next[2].saturating_sub(self.ordered_next))
    }
}

#[derive(Clone, Debug)]
pub(super) struct ClientState {
    /// The client's handle of its connection.
    pub(super) conn: Option<ConnectionHandle>,
    /// The server's handle of the same connection.
    pub(super) server_conn: Option<ConnectionHandle>,
    pub(super) up: Stream,
    pub(super) down: Stream,
    pub(super) next_large: Option<Instant>,
    pub(super) requests_sent: u32,
    pub(super) pending_requests: Vec<(RequestId, u32, Instant)>,
    pub(super) client_lost: bool,
    pub(super) server_lost: bool,
}

/// The client of each of the server's connections, by the connection's index: a lookup
/// per message the server gets, which in a hash map missed the cache twice (its control
/// bytes, then its entry) with thousands of clients. An entry is only the client's number
/// (4 bytes: 40 KB for 10,000 clients, which stays in the cache where handles beside them
/// did not); the handle it is checked against is the client's own `server_conn`, which the
/// message's bookkeeping reads next anyway.
#[derive(Debug, Default)]
pub(super) struct ByConnection {
    clients: Vec<u32>,
}

/// An entry without a client.
const NO_CLIENT: u32 = u32::MAX;

impl ByConnection {
    fn insert(&mut self, conn: ConnectionHandle, client: u32) {
        let i = conn.index();
        if self.clients.len() <= i {
            self.clients.resize(i + 1, NO_CLIENT);
        }
        self.clients[i] = client;
    }

    /// The client whose server connection `conn` is. An entry is live only while its
    /// client's `server_conn` is `conn`: a closed connection's entry, or one whose index a
    /// later connection took, names nobody (nothing to remove).
    fn get(&self, conn: ConnectionHandle, clients: &[ClientState]) -> Option<u32> {
        let client = *self.clients.get(conn.index())?;
        let state = clients.get(client as usize)?;
        (state.server_conn == Some(conn)).then_some(client)
    }
}

/// The scenario as an [`Application`].
pub(super) struct Game {
    pub(super) config: ScenarioConfig,
    pub(super) server: NodeId,
    pub(super) tick: Duration,
    pub(super) traffic_end: Instant,
    pub(super) clients: Vec<ClientState>,
    pub(super) by_server_conn: ByConnection,
    /// The first client of the server tick's next chunk.
    pub(super) tick_resume: usize,
    pub(super) kinds: Vec<KindStats>,
    pub(super) violations: Violations,
    pub(super) request_timeouts: u64,
    pub(super) send_errors: u64,
    pub(super) disconnects: Vec<(String, u64)>,
    /// When each client called `connect` (read again only when it connects).
    connect_started: Vec<Instant>,
    /// From each client's `connect` to its `Connected`.
    pub(super) connect_times: LatencyHistogram,
}

impl Game {
    pub(super) fn new(config: &ScenarioConfig, server: NodeId) -> Self {
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
            by_server_conn: ByConnection::default(),
            tick_resume: 0,
            kinds: (0..Kind::COUNT).map(|_| KindStats::new()).collect(),
            violations: Violations::default(),
            request_timeouts: 0,
            send_errors: 0,
            disconnects: Vec::new(),
            connect_started: vec![Instant::ZERO; config.clients],
            connect_times: LatencyHistogram::new(),
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

    /// Sends the tick's messages to clients `from..`, a chunk of them; returns where the next
    /// chunk starts, if any is left.
    fn server_tick(&mut self, ctx: &mut NodeContext<'_>, from: usize) -> Option<usize> {
        let end = from
            .saturating_add(SERVER_TICK_CHUNK)
            .min(self.clients.len());
        let now = ctx.now();
        // (Every connection hint has a connection's stages.)
        let stages = MemoryHint::Transmit(0).stages();
        for client in from..end {
            // Thousands of connections in a row: prefetch the next few, stage by stage.
            for stage in 0..stages {
                let ahead = client + usize::from(stages - stage);
                if let Some(conn) = self.clients.get(ahead).and_then(|c| c.server_conn) {
                    ctx.memory_hint(MemoryHint::Connection(conn), stage);
                }
            }
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
        (end < self.clients.len()).then_some(end)
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
            let size = self.config.request_size;
            let payload = make_payload(Kind::Request, counter, now, size);
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
                if let Some(client) = self.by_server_conn.get(conn, &self.clients) {
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
                if let Some(client) = self.by_server_conn.get(conn, &self.clients) {
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
                if let Some(&started) = self.connect_started.get(client) {
                    self.connect_times
                        .record(now.saturating_duration_since(started));
                }
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
            Event::Disconnected { reason, .. } | Event::ConnectFailed { reason, .. } => {
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
    pub(super) fn outstanding(&self) -> u64 {
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

    /// A client's bookkeeping is read in the turns of its node and, at the server, in those
    /// handling its datagrams: with thousands of clients it is out of the cache by then.
    fn upcoming(&self, node: NodeId, from: Option<NodeId>) {
        let client = if node == self.server {
            from
        } else {
            Some(node)
        };
        if let Some(state) = self.client_of(client).and_then(|c| self.clients.get(c)) {
            crate::prefetch(state);
        }
    }

    fn on_timer(&mut self, ctx: &mut NodeContext<'_>, token: u64) {
        let now = ctx.now();
        if now >= self.traffic_end {
            return;
        }
        let next = now + self.tick;
        if ctx.id() == self.server {
            let from = match token {
                TICK => {
                    ctx.set_timer(next, TICK);
                    0
                }
                RESUME_TICK => self.tick_resume,
                _ => return,
            };
            if let Some(rest) = self.server_tick(ctx, from) {
                self.tick_resume = rest;
                ctx.set_timer(now, RESUME_TICK);
            }
            return;
        }
        let Some(client) = self.client_of(Some(ctx.id())) else {
            return;
        };
        match token {
            CONNECT => {
                if let Some(started) = self.connect_started.get_mut(client) {
                    *started = now;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{make_payload, ORDERED};

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
}
