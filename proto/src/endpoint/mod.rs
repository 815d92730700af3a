//! The endpoint: one per socket. It demultiplexes datagrams to connections, runs the
//! server side of the handshake without keeping state for unvalidated addresses, and exposes
//! the poll/handle API every driver runs.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use bytes::Bytes;
use core::any::Any;
use core::net::SocketAddr;

use crate::config::{Config, ConfigError};
use crate::connection::{
    AcceptFields, AcceptOutcome, ClientHandshake, Connection, ControlBytes, DataResult, Scratch,
    Shared, CONTROL_MAX, PROBE_ATTEMPTS,
};
use crate::crypto::{Protection, PublicKey, Secrets, SHORT_HEADER_LEN};
use crate::error::{ConnectError, SendError};
use crate::event::{
    ConnectionHandle, DisconnectReason, Event, IncomingRequest, RequestId, Transmit,
};
use crate::hash::{Domain, HashMap, Prf, SeededState, Sequence};
use crate::hints::{self, MemoryHint};
use crate::messaging::budget::ReceiveBudget;
use crate::messaging::channel::Route;
use crate::messaging::chunk::Progress;
use crate::stats::{ConnectionStats, DropReason, EndpointStats, LinkStats};
use crate::time::{micros, Instant};
use crate::token::{ConnectToken, TokenClaims};
use crate::transport::path::Origin;
use crate::wire::{self, CloseCode, Cookie, DecodeError, Packet, RejectCode, COOKIE_LEN};

pub(crate) mod events;
mod handshake;
pub(crate) use handshake::ip_key;
mod queue;
mod slot_index;
mod wheel;

use slot_index::SlotIndex;
use wheel::{Wakeup, Wakeups};

use events::EventQueue;
pub(crate) use handshake::wire_budget;
use handshake::{Admission, UserIds};
use queue::DrainingQueue;

/// Copies of a `Disconnect` sent when the application closes a connection (it is not
/// retransmitted, so a few copies make it likely to arrive).
const DISCONNECT_COPIES: usize = 3;
/// Handshake replies the control queue keeps room for however quiet it is.
const CONTROL_MIN_ROOM: usize = 4;

/// Low bits of a connection id this endpoint chose that hold its slot index (see
/// `next_connection_id`). 20 bits: room for every slot `max_connections` allows.
const ID_INDEX_BITS: u32 = 20;
const ID_INDEX_MASK: u64 = (1 << ID_INDEX_BITS) - 1;

/// A connection attempt, as shown to the accept hook.
#[derive(Clone, Copy, Debug)]
pub struct ConnectRequest<'a> {
    /// The client's address (validated: it echoed our cookie).
    pub remote: SocketAddr,
    /// The application data the client passed to `connect`.
    pub data: &'a [u8],
    /// What the client **claims**: its static key and its token's claims. The token is
    /// authentic (the backend sealed it) but may be a copy taken off the wire; both are
    /// proven only when the client's first packet authenticates, which `Event::Connected`
    /// reports. Act on identity there, not here.
    pub identity: &'a PeerIdentity,
}

/// Who a peer proved to be in the handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The peer's static public key, if it has one (a server's is checked against
    /// `ConnectOptions::server_key`).
    pub key: Option<PublicKey>,
    /// The claims of the client's connect token, on a server that requires tokens.
    pub token: Option<TokenClaims>,
    /// What the client sent with its connect request (`connect`'s `data`: a player name, a
    /// session ticket), as the accept hook saw it; empty on the client's side. Sent before
    /// keys are agreed: an observer on the path can read it.
    pub connect_data: Bytes,
    /// The peer's user id on this connection (a server numbers its clients from 1; the
    /// server itself is 0). Hubs address members by it.
    pub user_id: u16,
    /// This side's user id on this connection (a client learns its own here).
    pub local_user_id: u16,
}

/// How to connect: what [`Endpoint::connect_with`] takes beyond the address.
///
/// ```
/// use shoal_proto::{Config, ConnectOptions, Endpoint, Instant, Keypair, SecretSeed};
/// // The server's identity; clients get its public key out of band (shipped with the game).
/// let server_key = Keypair::from_secret([42; 32]).public_key();
/// let secret_seed = Some(SecretSeed([9; 32])); // from the OS random source in real code
/// let mut client =
///     Endpoint::new(Config { accept_incoming: false, secret_seed, ..Config::default() }).unwrap();
/// let conn = client.connect_with(
///     Instant::ZERO,
///     "203.0.113.7:4000".parse().unwrap(),
///     &ConnectOptions { data: b"hello", server_key: Some(server_key), ..Default::default() },
/// );
/// assert!(conn.is_ok()); // any server without that key ends in `ServerKeyMismatch`
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOptions<'a> {
    /// Application data for the server's accept hook (at most `Config::max_connect_data`
    /// bytes). Sent before keys are agreed: an observer on the path can read it.
    pub data: &'a [u8],
    /// The server's static public key: the connection fails with
    /// `DisconnectReason::ServerKeyMismatch` unless the server proves this key.
    pub server_key: Option<PublicKey>,
    /// A connect token from the server's backend (see [`token`](crate::token)).
    pub token: Option<&'a ConnectToken>,
}

/// Addresses a peer link probes back on the strength of a challenge from them, over its
/// life: the peer could otherwise aim probes at anyone.
const MAX_PROBED_BACK: u8 = 4;
/// Challenges a probe back sends: with the response, three packets the size of the
/// challenge that asked, as QUIC bounds what goes to an address not validated. (A probe
/// `probe_path` starts sends eight: the hub vouched for the address, and they come out of
/// `Config::path_probes`.)
const PROBE_BACK_ATTEMPTS: u8 = 2;

/// Tunnelled datagrams handled after one datagram from the socket (one packet from the hub
/// holds a few).
const MAX_TUNNELLED_PER_DATAGRAM: usize = 64;

/// Decides whether to accept a connection: `Ok(())` accepts, `Err(code)` rejects and the
/// client gets `ConnectFailed { reason: Rejected { code } }`.
pub type AcceptHook = Box<dyn FnMut(&ConnectRequest<'_>) -> Result<(), u16> + Send>;

/// A connection's place in the table, with what a wake-up needs to know without touching
/// the connection (µs; `NEVER` for none).
struct Slot {
    generation: u32,
    conn: Option<Box<Connection>>,
    /// The earliest wake-up queued for it.
    scheduled: u64,
    /// Its next deadline when it was last put back (`Connection::next_timeout`); a wake-up
    /// before it is stale and only rescheduled.
    due: u64,
}

/// No deadline.
const NEVER: u64 = u64::MAX;

impl Default for Slot {
    fn default() -> Self {
        Slot {
            generation: 0,
            conn: None,
            scheduled: NEVER,
            due: NEVER,
        }
    }
}

/// A Shoal endpoint: every connection over one socket, as a state machine fed with datagrams
/// and timestamps. It performs no I/O and reads no clock.
///
/// # The drive loop
///
/// Methods fall into four groups, called in this order by whoever owns the socket:
///
/// 1. **Input** — `handle_datagram(now, from, bytes)` for each datagram that arrived, and
///    `handle_timeout(now)` when the time returned by `poll_timeout` has come (calling it early
///    or twice is harmless).
/// 2. **Application commands** — [`connect`](Self::connect), [`send`](Self::send),
///    [`request`](Self::request), [`respond`](Self::respond), [`disconnect`](Self::disconnect).
/// 3. **Output** — drain [`poll_transmit`](Self::poll_transmit) into the socket and
///    [`poll_event`](Self::poll_event) into the application until each returns `None`.
/// 4. **Sleep** — until the next datagram or [`poll_timeout`](Self::poll_timeout), whichever
///    comes first.
///
/// `now` must never go backwards (checked in debug builds). Any origin works.
///
/// ```
/// use shoal_proto::{Config, Endpoint, Event, Instant, SecretSeed};
/// let server_addr = "127.0.0.1:4000".parse().unwrap();
/// let client_addr = "127.0.0.1:5000".parse().unwrap();
/// // Key material: 32 bytes from the OS random source in real code (the drivers do it).
/// let secret = |n| Some(SecretSeed::insecure_from_u64(n));
/// let mut server = Endpoint::new(Config { seed: 1, secret_seed: secret(1), ..Config::default() }).unwrap();
/// let mut client = Endpoint::new(Config {
///     seed: 2,
///     secret_seed: secret(2),
///     accept_incoming: false,
///     ..Config::default()
/// })
/// .unwrap();
///
/// let now = Instant::from_millis(0);
/// let conn = client.connect(now, server_addr, b"hello").unwrap();
/// client.send(conn, 3, "first message").unwrap(); // queued until connected
///
/// // A perfect in-memory network: move datagrams until both sides are quiet.
/// let mut buf = [0u8; 1500];
/// for _ in 0..10 {
///     while let Some(t) = client.poll_transmit(now, &mut buf) {
///         server.handle_datagram(now, client_addr, &buf[..t.len]);
///     }
///     while let Some(t) = server.poll_transmit(now, &mut buf) {
///         client.handle_datagram(now, server_addr, &buf[..t.len]);
///     }
/// }
/// let mut got = Vec::new();
/// while let Some(event) = server.poll_event() {
///     got.push(event);
/// }
/// assert!(matches!(got[0], Event::Connected { .. }));
/// assert!(matches!(&got[1], Event::Message { payload, .. } if payload == "first message"));
/// ```
// `repr(C)`: the fields a datagram, a send or a poll touches come first, in declaration
// order, so that they share a few cache lines (the first eight, and the first three of the
// config's; `align(64)` starts them on a line boundary wherever the endpoint is stored). A
// client endpoint is cold whenever its one connection is woken (one of thousands in a
// simulator, or an endpoint idle between ticks): each line it touches is a miss.
#[repr(C, align(64))]
pub struct Endpoint {
    // ---- touched on every datagram, send and poll
    last_now: Instant,
    live: usize,
    slots: Vec<Slot>,
    wakeups: Wakeups,
    dirty: VecDeque<u32>,
    /// Handshake replies and close notices (packets with no connection state behind them).
    /// A connect storm's room goes back once it is sent.
    /// Datagrams ready to send: (to, bytes, whether it answers an address nothing proved).
    control: DrainingQueue<(SocketAddr, ControlBytes, bool), CONTROL_MIN_ROOM>,
    /// Where a protected packet is opened (decrypted in place): one buffer, reused. What is
    /// kept of a packet is copied out of it (`EventQueue::payloads`), so nothing holds it.
    opened: Vec<u8>,
    budget: ReceiveBudget,
    /// Hides the slot index in the connection ids this endpoint chooses.
    slot_key: Prf,
    /// The slot `by_id` last gave (checked by whole id before the next lookup).
    last_looked_up: u32,
    /// `poll_event` has returned events since it last returned `None`.
    taking_events: bool,
    /// `last_departed` holds something (so that a round of `poll_event` reads it only then).
    departed_held: bool,
    /// Buffers a connection uses while it takes one packet (shared by all of them).
    scratch: Scratch,
    events: EventQueue,
    /// (Its first counters are the per-datagram ones.)
    stats: EndpointStats,
    /// Unix time (microseconds) at `Instant::ZERO`, once the driver tells it. (Rarely read:
    /// here, it fills the line before the config's.)
    unix_at_zero: Option<u64>,
    config: Config,
    // ---- handshakes, hub relaying, closing and rarer paths
    /// User data of the connections whose ending events the application took since it last
    /// emptied the queue: readable until it starts taking events again.
    last_departed: Vec<(ConnectionHandle, UserData)>,
    /// Routing of every packet after the handshake whose id does not name its slot (see
    /// `slot_of`).
    by_id: SlotIndex<u64>,
    /// Handshake routing (and one connection per peer address).
    by_addr: SlotIndex<SocketAddr>,
    free_slots: Vec<u32>,
    next_request_id: u64,
    /// User data of connections whose `Disconnected`/`ConnectFailed` waits in the queue.
    departed: VecDeque<(ConnectionHandle, UserData)>,
    user_ids: UserIds,
    /// The hub connection and tunnel channel peer links travel through, if any.
    relay: Option<(ConnectionHandle, u8)>,
    /// The root of handshake keys (and of `prf`'s key).
    secrets: Secrets,
    /// A server's memory of tokens, key-exchange budgets and connections per address, from
    /// the first Connect it takes.
    admission: Option<Box<Admission>>,
    /// Path challenges it may still send to addresses that have not answered
    /// (`Config::path_probes`), from its first probe (boxed: most endpoints never probe).
    path_probes: Option<Box<crate::rate::Bucket>>,
    /// The root of every nonce, id, path token and cookie key (see `hash`).
    prf: Prf,
    nonces: Sequence,
    connection_ids: Sequence,
    /// Connections created, for each one's own path-token key.
    connections_created: u64,
    hasher: SeededState,
    accept_hook: Option<AcceptHook>,
    /// Entries of `control` that answer addresses nothing proved (a Hello's reply, the
    /// "unknown connection" notice): at most half the queue, so spoofed Hellos cannot crowd
    /// out the Accepts of clients that proved their address. (Here, not beside `control`:
    /// only handshakes and strangers touch it.)
    unproven_replies: usize,
}

/// Bytes at the start of an [`Endpoint`] that hold every field a datagram, a send or a
/// poll touches (its layout test holds them to it).
const HOT_BYTES: usize = 8 * 64;
/// Bytes at the start of its [`Config`] that hold the settings a packet reads.
const CONFIG_HOT_BYTES: usize = 3 * 64;

/// The application's state for one connection (see [`Endpoint::set_user_data`]).
type UserData = Box<dyn Any + Send>;

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("connections", &self.live)
            .field("pending_events", &self.events.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    // ------------------------------------------------------------------ construction, getters

    /// An endpoint with `config`, after checking it.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        if config.protection == Protection::Encrypted && config.secret_seed.is_none() {
            // Keys would follow from the 64-bit seed alone: anyone who knows or guesses it
            // could decrypt every session.
            return Err(ConfigError::SecretSeedMissing);
        }
        let mut config = config;
        let (secrets, prf_key) =
            Secrets::new(config.seed, config.secret_seed.as_ref().map(|s| &s.0));
        // The endpoint keeps no copy of its seed (wiped on drop): its memory cannot regenerate
        // the ephemeral keys it used (`config().secret_seed` reads `None` from here on).
        config.secret_seed = None;
        let prf = Prf::from_key(prf_key);
        let hasher = SeededState::new(&prf);
        Ok(Endpoint {
            secrets,
            admission: None,
            path_probes: None,
            unix_at_zero: None,
            prf,
            nonces: Sequence::new(Domain::Nonce),
            connection_ids: Sequence::new(Domain::ConnectionId),
            slot_key: prf.derive(Domain::SlotKey, 0),
            connections_created: 0,
            hasher,
            slots: Vec::new(),
            free_slots: Vec::new(),
            live: 0,
            by_addr: SlotIndex::new(hasher),
            by_id: SlotIndex::new(hasher),
            last_looked_up: 0,
            user_ids: UserIds::new(),
            relay: None,
            events: EventQueue::default(),
            control: DrainingQueue::default(),
            unproven_replies: 0,
            wakeups: Wakeups::default(),
            dirty: VecDeque::new(),
            opened: Vec::new(),
            budget: ReceiveBudget::default(),
            scratch: Scratch::default(),
            next_request_id: 0,
            stats: EndpointStats::default(),
            last_now: Instant::ZERO,
            accept_hook: None,
            departed: VecDeque::new(),
            last_departed: Vec::new(),
            taking_events: false,
            departed_held: false,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Names the memory the call `hint` describes will read, a stage at a time, so that a
    /// driver serving many endpoints or many datagrams can have it on its way to the cache
    /// (a prefetch) while it serves the ones before. Each address is handed to `sink` with
    /// a length; nothing is read through them here, and nothing changes.
    ///
    /// Stage `s` reads only memory stage `s - 1` named (a connection's rings hang off the
    /// connection, which hangs off the endpoint), so a driver names stage `s` for the item
    /// `hint.stages() - s` places ahead of the one it is about to serve, and by the time it
    /// gets there the whole chain has arrived. The simulator does this for the nodes of a
    /// window and for a server's queued datagrams (docs/architecture.md, "The simulator").
    ///
    /// ```
    /// use shoal_proto::{Config, Endpoint, Instant, MemoryHint, Protection};
    /// let endpoint = Endpoint::new(Config {
    ///     protection: Protection::None,
    ///     ..Config::default()
    /// })
    /// .unwrap();
    /// let mut lines = 0;
    /// for stage in 0..MemoryHint::Endpoint.stages() {
    ///     endpoint.memory_hints(MemoryHint::Endpoint, stage, |_address, bytes: usize| {
    ///         lines += bytes.div_ceil(64);
    ///     });
    /// }
    /// assert!(lines > 0);
    /// ```
    pub fn memory_hints(
        &self,
        hint: MemoryHint<'_>,
        stage: u8,
        mut sink: impl FnMut(*const u8, usize),
    ) {
        let slot = match hint {
            MemoryHint::Endpoint => return self.endpoint_hints(stage, &mut sink),
            MemoryHint::Datagram(datagram) => match wire::short_header_connection(datagram) {
                Some(id) => self.slot_of(id),
                None => return,
            },
            MemoryHint::Connection(conn) => conn.index as usize,
            MemoryHint::Transmit(ahead) => match self.dirty.get(ahead) {
                Some(&index) => index as usize,
                None => return,
            },
        };
        // (The slot table itself is read, not named. A stage of its own for the slot entry
        // was within the noise with 10,000 clients (readings from 3% faster to 1.5% slower),
        // so it does not pay for the instructions it costs every hint.)
        if let Some(c) = self.slots.get(slot).and_then(|s| s.conn.as_ref()) {
            c.memory_hints(stage, &mut sink);
            // Its timer wheel entry: a packet moves its deadline, and a move reads where the
            // entry is noted, the entry and the one that fills its gap (cold lines of a
            // 10,000-connection wheel: 4% of the simulator's samples, 2-3% faster named).
            self.wakeups.entry_hints(slot as u32, stage, &mut sink);
        }
    }

    /// `MemoryHint::Endpoint`: the hot lines and their buffers, then (for a client's one
    /// connection or two) the connections.
    fn endpoint_hints(&self, stage: u8, sink: &mut impl hints::Sink) {
        match stage {
            0 => {
                sink((self as *const Self).cast(), HOT_BYTES);
                sink((&self.config as *const Config).cast(), CONFIG_HOT_BYTES);
            }
            1 => {
                hints::slice(sink, &self.slots);
                // The channels' settings (a packet's frames read their kinds): the config's
                // own heap block, apart from its first lines.
                hints::slice(sink, &self.config.channels);
                self.events.hints(sink);
                self.wakeups.hints(sink);
                hints::deque_ends(sink, &self.dirty);
                // Where the next protected datagram will be opened.
                let room = self.opened.capacity().min(128);
                if room > 0 {
                    sink(self.opened.as_ptr(), room);
                }
            }
            _ if self.live <= 2 => {
                for s in &self.slots {
                    if let Some(c) = &s.conn {
                        c.memory_hints(stage - 2, sink);
                    }
                }
            }
            _ => {}
        }
    }

    /// Endpoint-wide counters (closed connections' counters folded in).
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// A live connection's counters, with its current RTT estimate and congestion window.
    pub fn connection_stats(&self, conn: ConnectionHandle) -> Option<ConnectionStats> {
        Some(self.get(conn)?.stats())
    }

    /// A live connection's peer address (its validated path).
    pub fn remote_address(&self, conn: ConnectionHandle) -> Option<SocketAddr> {
        Some(self.get(conn)?.remote())
    }

    /// What a game shows on screen about a live connection: round-trip time, recent loss
    /// and bytes per second each way.
    pub fn link_stats(&self, conn: ConnectionHandle) -> Option<LinkStats> {
        Some(self.get(conn)?.link_stats(self.last_now))
    }

    /// Whether the connection is up as the application sees it: its `Connected` event was
    /// taken from [`poll_event`](Self::poll_event) and it has not closed.
    pub fn is_connected(&self, conn: ConnectionHandle) -> bool {
        self.get(conn)
            .is_some_and(|c| c.announced && c.close.is_none())
    }

    /// Whether the connection finished its handshake, whether or not the application has
    /// seen it (for the fuzz harness's model of what an endpoint must accept).
    #[cfg(any(fuzzing, feature = "fuzzing"))]
    pub(crate) fn is_established(&self, conn: ConnectionHandle) -> bool {
        self.get(conn).is_some_and(Connection::is_connected)
    }

    /// Attaches the application's own state to a connection (a player record, say),
    /// replacing any before; `false` if the handle is dead. It lives as long as the
    /// connection, and stays readable through [`user_data`](Self::user_data) while the
    /// application handles the connection's `Disconnected` (or `ConnectFailed`) event: until
    /// it takes events again after `poll_event` returned `None` (so draining every event
    /// first and handling them after works too).
    ///
    /// ```
    /// # use shoal_proto::{Config, Endpoint, Event, Instant, SecretSeed};
    /// struct Player { name: String }
    /// # let mut ep = Endpoint::new(Config {
    /// #     secret_seed: Some(SecretSeed::insecure_from_u64(1)), ..Config::default() }).unwrap();
    /// # let conn = ep.connect(Instant::ZERO, "127.0.0.1:4000".parse().unwrap(), b"").unwrap();
    /// ep.set_user_data(conn, Player { name: "alice".into() });
    /// assert_eq!(ep.user_data::<Player>(conn).unwrap().name, "alice");
    /// ep.user_data_mut::<Player>(conn).unwrap().name.push('!');
    /// ep.disconnect(conn, 0);
    /// while let Some(event) = ep.poll_event() {
    ///     if let Event::ConnectFailed { conn, .. } | Event::Disconnected { conn, .. } = event {
    ///         assert_eq!(ep.user_data::<Player>(conn).unwrap().name, "alice!"); // still here
    ///     }
    /// }
    /// assert!(ep.poll_event().is_none());
    /// assert!(ep.user_data::<Player>(conn).is_none()); // gone once events are taken again
    /// ```
    pub fn set_user_data<T: Any + Send>(&mut self, conn: ConnectionHandle, data: T) -> bool {
        match self.get_mut(conn) {
            Some(c) => {
                c.user_data = Some(Box::new(data));
                true
            }
            None => false,
        }
    }

    /// The state [`set_user_data`](Self::set_user_data) attached to `conn`, if it is a `T`:
    /// readable until the application has taken the connection's ending event and the next
    /// (so also for the events queued ahead of it).
    pub fn user_data<T: Any>(&self, conn: ConnectionHandle) -> Option<&T> {
        let data = match self.get(conn) {
            Some(c) => c.user_data.as_ref(),
            // Newest first: the event just taken is last (a round of a thousand departures
            // would otherwise scan the round's whole list for each).
            None => self
                .last_departed
                .iter()
                .rev()
                .chain(&self.departed)
                .find(|(h, _)| *h == conn)
                .map(|(_, d)| d),
        };
        data?.downcast_ref()
    }

    /// The state [`set_user_data`](Self::set_user_data) attached to `conn`, mutably.
    pub fn user_data_mut<T: Any>(&mut self, conn: ConnectionHandle) -> Option<&mut T> {
        let live = self.get(conn).is_some();
        let data = if live {
            self.get_mut(conn)?.user_data.as_mut()
        } else {
            self.last_departed
                .iter_mut()
                .rev()
                .chain(&mut self.departed)
                .find(|(h, _)| *h == conn)
                .map(|(_, d)| d)
        };
        data?.downcast_mut()
    }

    /// Whether everything queued on the connection was sent and acknowledged.
    pub fn is_idle(&self, conn: ConnectionHandle) -> bool {
        self.get(conn).is_some_and(Connection::is_idle)
    }

    /// Payload bytes that may still be queued on `channel` before `send` fails with `QueueFull`.
    pub fn queue_room(&self, conn: ConnectionHandle, channel: u8) -> Option<usize> {
        self.get(conn)?.queue_room(&self.config, channel)
    }

    /// Bytes sent on the connection and not yet acknowledged or declared lost.
    pub fn bytes_in_flight(&self, conn: ConnectionHandle) -> Option<u64> {
        Some(self.get(conn)?.bytes_in_flight())
    }

    /// How far the oldest large message arriving on `channel` has come, if one is arriving.
    pub fn receive_progress(&self, conn: ConnectionHandle, channel: u8) -> Option<Progress> {
        self.get(conn)?.progress(channel)
    }

    /// Number of connections, including ones still in their handshake.
    pub fn connection_count(&self) -> usize {
        self.live
    }

    /// Handles of all connections.
    pub fn connections(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.conn.as_ref().map(|c| c.handle))
    }

    /// The connections the application has seen connect (it took their `Connected` event)
    /// and that are still open: the peers to talk to. Unlike [`connections`](Self::connections)
    /// it leaves out handshakes in progress and connections whose `Connected` still waits in
    /// the event queue.
    pub fn peers(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.slots.iter().filter_map(|s| {
            let c = s.conn.as_ref()?;
            (c.announced && c.close.is_none()).then_some(c.handle)
        })
    }

    /// Queues `payload` on `channel` to every peer (see [`peers`](Self::peers)) but
    /// `except`, sharing one buffer. Returns how many it was queued for; a peer whose queue
    /// refuses it (full, say) is skipped: [`send`](Self::send) to it says why.
    pub fn broadcast(
        &mut self,
        channel: u8,
        payload: impl Into<Bytes>,
        except: Option<ConnectionHandle>,
    ) -> usize {
        let payload = payload.into();
        let targets: Vec<ConnectionHandle> = self.peers().filter(|&c| Some(c) != except).collect();
        targets
            .into_iter()
            .filter(|&c| self.send(c, channel, payload.clone()).is_ok())
            .count()
    }

    /// Bytes held on receive across the endpoint: partly received chunked messages and
    /// whole messages waiting for an earlier one on an ordered channel.
    pub fn reassembly_bytes(&self) -> usize {
        self.budget.total()
    }

    /// Bytes of messages, requests and responses waiting in the event queue (payload plus
    /// 64 bytes each).
    pub fn pending_event_bytes(&self) -> usize {
        self.events.bytes()
    }

    /// Whether `poll_event` has an event to give: a driver that has just emptied the
    /// transmit queue asks this (and `poll_timeout`) to know whether anything it did since
    /// it last took events left more for it, without another round of polls.
    pub fn has_pending_events(&self) -> bool {
        self.events.len() > 0
    }

    /// Installs the hook that accepts or rejects incoming connections (default: accept all).
    pub fn set_accept_hook(&mut self, hook: AcceptHook) {
        self.accept_hook = Some(hook);
    }

    // ------------------------------------------------------------------ application commands

    /// Starts connecting to `remote`, passing `data` to its accept hook. The handle is usable
    /// at once: messages sent before `Connected` wait in the queue. `Connected` follows, or
    /// `ConnectFailed` with the reason (a reject within a round trip, or `TimedOut` after
    /// `Config::handshake_timeout`).
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        data: &[u8],
    ) -> Result<ConnectionHandle, ConnectError> {
        self.connect_with(
            now,
            remote,
            &ConnectOptions {
                data,
                ..ConnectOptions::default()
            },
        )
    }

    /// Starts connecting to `remote` with `options`: connect data, a pinned server key, a
    /// connect token.
    pub fn connect_with(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        options: &ConnectOptions<'_>,
    ) -> Result<ConnectionHandle, ConnectError> {
        self.advance_time(now);
        let remote = canonical_address(remote);
        let data = options.data;
        if data.len() > self.config.max_connect_data {
            return Err(ConnectError::DataTooLarge {
                size: data.len(),
                max: self.config.max_connect_data,
            });
        }
        let protected = self.config.protection == Protection::Encrypted;
        if !protected && (options.server_key.is_some() || options.token.is_some()) {
            return Err(ConnectError::ProtectionRequired);
        }
        if self.by_addr.contains_key(&remote) {
            return Err(ConnectError::AlreadyConnected);
        }
        if self.live >= self.config.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let nonce = self.nonces.next(&self.prf);
        let handshake = ClientHandshake {
            data: Bytes::copy_from_slice(data),
            ephemeral: protected.then(|| self.secrets.ephemeral()),
            server_key: options.server_key,
            token: options.token.cloned(),
            connect: Vec::new(),
            connect_since: crate::time::MaybeInstant::NONE,
            accepts_checked: 0,
        };
        let size =
            crate::connection::connect_packet(&self.config, nonce, [0; COOKIE_LEN], &handshake)
                .map_or(usize::MAX, |c| c.len());
        if size > self.config.mtu {
            return Err(ConnectError::HandshakeTooLarge {
                size,
                mtu: self.config.mtu,
            });
        }
        let (index, handle) = self.allocate_slot();
        let path_key = self.next_path_key();
        let mut conn = Box::new(Connection::new(
            &self.config,
            handle,
            remote,
            now,
            true,
            nonce,
            path_key,
        ));
        conn.set_client_handshake(handshake);
        self.by_addr.insert(remote, index);
        self.finish(index, conn);
        Ok(handle)
    }

    /// Tells the endpoint the wall-clock time: `unix` (since the Unix epoch) is the time at
    /// `now`. A server that requires connect tokens needs it to check their expiry (the
    /// drivers call it at start; call it again if the clock is adjusted).
    pub fn set_unix_time(&mut self, now: Instant, unix: core::time::Duration) {
        let unix = u64::try_from(unix.as_micros()).unwrap_or(u64::MAX);
        self.unix_at_zero = Some(unix.saturating_sub(now.as_micros()));
    }

    /// Unix seconds now, if the driver told the wall-clock time.
    fn unix_now(&self) -> Option<u64> {
        let at_zero = self.unix_at_zero?;
        Some(at_zero.saturating_add(self.last_now.as_micros()) / 1_000_000)
    }

    /// Queues `payload` on `channel` of `conn`. Large messages are chunked; the channel's
    /// delivery kind decides what the peer is guaranteed.
    pub fn send(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.send_redirected(conn, channel, payload, None)
    }

    /// Like [`send`](Self::send), with the redirect bit and a target set, for a hub to relay
    /// (see [`hub::Target`](crate::hub::Target) for what a target names).
    pub fn send_redirected(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
        target: Option<u16>,
    ) -> Result<(), SendError> {
        let route = Route {
            owner: None,
            target,
        };
        self.send_routed(conn, channel, payload.into(), route)
    }

    /// Forwards a message on behalf of user `owner`, keeping the redirect `target`: what a hub
    /// does with a redirected message (the owner field names the original sender). A server
    /// takes from a client only messages owned by that client, so only the server side of a
    /// connection can speak for others.
    pub fn relay(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
        owner: u16,
        target: Option<u16>,
    ) -> Result<(), SendError> {
        let route = Route {
            owner: Some(owner),
            target,
        };
        self.send_routed(conn, channel, payload.into(), route)
    }

    fn send_routed(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: Bytes,
        route: Route,
    ) -> Result<(), SendError> {
        let (index, mut c) = self.take(conn).ok_or(SendError::UnknownConnection)?;
        let result = c.send(&self.config, channel, payload, false, route);
        self.finish(index, c);
        result.map(|_| ())
    }

    /// Sends a request on `channel`; the answer arrives as `Event::Response` with the returned
    /// id, or `Event::RequestTimedOut` after `Config::request_timeout`. On a reliable channel
    /// the request and its response are retransmitted until acknowledged; on an unreliable one
    /// either may be lost, and the timeout reports it. If the connection ends first, neither
    /// comes: its `Disconnected` ends every request still open on it.
    pub fn request(
        &mut self,
        now: Instant,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<RequestId, SendError> {
        self.request_routed(now, conn, channel, payload.into(), Route::default())
    }

    /// Like [`request`](Self::request), with the redirect bit and a target set, for a hub to
    /// relay; the hub answers with the target's response.
    pub fn request_redirected(
        &mut self,
        now: Instant,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
        target: Option<u16>,
    ) -> Result<RequestId, SendError> {
        let route = Route {
            owner: None,
            target,
        };
        self.request_routed(now, conn, channel, payload.into(), route)
    }

    /// Forwards a request on behalf of user `owner` (see [`relay`](Self::relay)); the
    /// response comes back to this side as `Event::Response` with the returned id.
    pub fn relay_request(
        &mut self,
        now: Instant,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
        owner: u16,
        target: Option<u16>,
    ) -> Result<RequestId, SendError> {
        let route = Route {
            owner: Some(owner),
            target,
        };
        self.request_routed(now, conn, channel, payload.into(), route)
    }

    fn request_routed(
        &mut self,
        now: Instant,
        conn: ConnectionHandle,
        channel: u8,
        payload: Bytes,
        route: Route,
    ) -> Result<RequestId, SendError> {
        self.advance_time(now);
        let id = RequestId(self.next_request_id);
        let (index, mut c) = self.take(conn).ok_or(SendError::UnknownConnection)?;
        let result = c.request(now, &self.config, channel, payload, id, route, self.hasher);
        self.finish(index, c);
        result?;
        self.next_request_id += 1;
        Ok(id)
    }

    /// Answers a request received as `Event::Request`.
    pub fn respond(
        &mut self,
        conn: ConnectionHandle,
        request: IncomingRequest,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let (index, mut c) = self.take(conn).ok_or(SendError::UnknownConnection)?;
        let result = c.respond(&self.config, request, payload.into());
        self.finish(index, c);
        result
    }

    /// Closes `conn` at once, telling the peer with `code`. Queued messages are dropped; wait
    /// for [`is_idle`](Self::is_idle) first to close after delivery. Emits
    /// `Disconnected { reason: ClosedLocally }` (`ConnectFailed` for an attempt that had not
    /// connected yet; nothing for a server's connection not yet reported in a `Connected`).
    /// Closing a dead handle does nothing.
    pub fn disconnect(&mut self, conn: ConnectionHandle, code: u16) {
        if let Some((index, mut c)) = self.take(conn) {
            c.close(
                DisconnectReason::ClosedLocally,
                Some(CloseCode::Application(code)),
            );
            self.finish(index, c);
        }
    }

    // ------------------------------------------------------------------ input

    /// Handles one datagram from `from`. Never panics; anything malformed is counted in the
    /// stats by cause and dropped. An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, as a
    /// dual-stack socket reports an IPv4 peer) is taken as the IPv4 address it stands for.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let from = canonical_address(from);
        if crate::hub::relay_user(from).is_some() {
            // Only the hub's tunnel speaks for a relay address: a socket datagram from one
            // is spoofed, and answering it would send through the hub at our expense.
            self.stats.datagrams_received += 1;
            self.stats.drops.add(DropReason::Unexpected);
            return;
        }
        self.handle_one(now, from, datagram);
        // Peer links' datagrams the hub relayed in it: in through the front door, from the
        // link's relay address. Bounded: a hub could nest tunnels within tunnels.
        for _ in 0..MAX_TUNNELLED_PER_DATAGRAM {
            let Some((user, payload)) = self.events.take_tunnelled() else {
                break;
            };
            self.stats.tunnelled_in += 1;
            self.handle_one(now, crate::hub::relay_address(user), &payload);
        }
        self.stats.tunnel_drops += self.events.drop_tunnelled();
    }

    fn handle_one(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.advance_time(now);
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        if datagram.len() > self.config.mtu {
            // No honest peer sends one (both sides agree on the MTU in the handshake), and
            // storing it would let small payloads pin a large buffer.
            self.stats.drops.add(DropReason::Oversized);
            return;
        }
        // Packets after the handshake are routed by connection id before anything else is
        // read: a protected one can only be decoded once its connection has opened it.
        if let Some(connection_id) = wire::short_header_connection(datagram) {
            self.on_short_header(now, from, connection_id, datagram);
            return;
        }
        let packet = match Packet::decode(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.stats.drops.add(match e {
                    DecodeError::UnknownVersion(_) => DropReason::UnknownVersion,
                    DecodeError::UnknownPacketType(_) => DropReason::UnknownPacketType,
                    _ => DropReason::Malformed,
                });
                return;
            }
        };
        match packet {
            Packet::Hello {
                protocol_id,
                client_nonce,
                protection,
            } => self.on_hello(now, from, protocol_id, client_nonce, protection),
            Packet::Connect { .. } => self.on_connect(now, from, &packet, datagram),
            Packet::Challenge {
                client_nonce,
                cookie,
            } => {
                self.with_client_conn(from, client_nonce, |c, _, config| {
                    if c.on_challenge(cookie, config) {
                        Ok(())
                    } else {
                        Err(DropReason::Unexpected)
                    }
                });
            }
            Packet::Accept {
                client_nonce,
                connection_id,
                user_id,
                reassembly_budget,
                protection,
                ephemeral,
                static_key,
                tag: _,
            } => {
                let fields = AcceptFields {
                    connection_id,
                    user_id,
                    reassembly_budget,
                    protection,
                    ephemeral,
                    static_key,
                };
                let mut accepted = None;
                // The server chose the id, and ids route everything after the handshake: one
                // that another connection of ours has would take its packets. Only a hostile
                // server names one (by chance: 2^-64).
                let taken = self
                    .by_id
                    .get(&connection_id)
                    .is_some_and(|i| Some(i) != self.by_addr.get(&from));
                self.with_client_conn(from, client_nonce, |c, now, config| {
                    match c.on_accept(now, config, &fields, datagram) {
                        // (Checked only once the Accept authenticated: a forged one naming
                        // a taken id is dropped by its tag like any other.)
                        AcceptOutcome::Accepted(_) if taken => {
                            c.close(DisconnectReason::ProtocolViolation, None);
                            Err(DropReason::ProtocolViolation)
                        }
                        AcceptOutcome::Accepted(_) if c.queues_beyond_peer_budget(config) => {
                            c.close(DisconnectReason::PeerBudgetTooSmall, None);
                            Ok(())
                        }
                        AcceptOutcome::Accepted(identity) => {
                            accepted = Some(identity);
                            Ok(())
                        }
                        AcceptOutcome::KeyMismatch => {
                            c.close(DisconnectReason::ServerKeyMismatch, None);
                            Ok(())
                        }
                        AcceptOutcome::Dropped(reason) => Err(reason),
                    }
                });
                if let Some(identity) = accepted {
                    self.stats.connections_opened += 1;
                    if let Some(&index) = self.by_addr.get(&from) {
                        self.by_id.insert(connection_id, index);
                        if let Some(c) = self.slot_conn_mut(index) {
                            c.reported = true;
                            let event = Event::Connected {
                                conn: c.handle,
                                remote: c.remote(),
                                identity: Box::new(PeerIdentity {
                                    user_id: c.peer_user_id,
                                    local_user_id: c.local_user_id,
                                    ..identity
                                }),
                            };
                            self.events.push(event);
                        }
                    }
                }
            }
            Packet::Reject {
                client_nonce: connection_id,
                code: RejectCode::UnknownConnection,
            } => self.on_reset_hint(now, from, connection_id),
            Packet::Reject { client_nonce, code } => {
                self.with_client_conn(from, client_nonce, |c, _, _| {
                    // A refusal answers a handshake: once connected, the nonce it names
                    // has been seen on the path in the clear, and only an authentic
                    // Disconnect (or the reset check) ends the connection.
                    if c.is_connected() {
                        return Err(DropReason::Unexpected);
                    }
                    c.close(DisconnectReason::from_reject(code), None);
                    Ok(())
                });
            }
            Packet::Data { .. }
            | Packet::Disconnect { .. }
            | Packet::PathChallenge { .. }
            | Packet::PathResponse { .. } => self.stats.drops.add(DropReason::Malformed),
        }
    }

    /// A packet of an established connection: opened (when protected), then decoded and
    /// acted on. Nothing in it is read before it authenticates.
    fn on_short_header(
        &mut self,
        now: Instant,
        from: SocketAddr,
        connection_id: u64,
        datagram: &[u8],
    ) {
        let Some((index, mut c)) = self.take_by_id(from, connection_id, datagram.len()) else {
            return;
        };
        if crate::hub::relay_user(from).is_some() && !c.is_reached_through(from) {
            // Tunnelled in by the hub for a connection that does not travel through it (the
            // hub connection itself): the hub holds its keys, and must not move it there.
            self.stats.drops.add(DropReason::Unexpected);
            self.finish_quiet(index, c);
            return;
        }
        let mut opened = core::mem::take(&mut self.opened);
        match self.open_packet(&mut c, datagram, &mut opened) {
            Some(packet) => self.on_packet(now, from, (index, c), datagram, packet),
            None => self.finish_quiet(index, c),
        }
        self.opened = opened;
    }

    /// An authentic packet of connection `c`: `bytes`, opened from `datagram`.
    fn on_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        (index, mut c): (u32, Box<Connection>),
        datagram: &[u8],
        bytes: &[u8],
    ) {
        c.heard_authentic(now, wire::short_header_pn(datagram));
        // Data, nearly every packet, has a decoder of its own; the rarer types the general one.
        if let Some(data) = wire::decode_data(bytes) {
            let Ok((header, frames)) = data else {
                return self.drop_malformed(index, c);
            };
            if let Some(c) = self.ready_to_act(index, c) {
                self.on_data(now, from, datagram.len(), (index, c), &header, frames);
            }
            return;
        }
        let Ok(packet) = Packet::decode(bytes) else {
            return self.drop_malformed(index, c);
        };
        let Some(mut c) = self.ready_to_act(index, c) else {
            return;
        };
        match packet {
            Packet::Disconnect {
                packet_number,
                code,
                ..
            } => {
                // Unprotected, only from the connection's validated address: anyone else
                // could be anyone.
                if c.keys.is_none() && c.remote() != from {
                    self.stats.drops.add(DropReason::UnknownConnection);
                } else if c.on_control_packet(now, packet_number) {
                    c.close(DisconnectReason::from_close(code), None);
                }
                self.finish(index, c);
            }
            Packet::PathChallenge {
                packet_number,
                token,
                ..
            } => {
                if c.on_control_packet(now, packet_number) {
                    self.on_path_challenge(from, &mut c, token);
                }
                self.finish(index, c);
            }
            Packet::PathResponse {
                packet_number,
                token,
                ..
            } => {
                if c.on_control_packet(now, packet_number) {
                    if c.transport.paths.on_response(from, token) {
                        c.on_path_validated(now, from);
                    } else {
                        c.stats.rare.dropped(DropReason::Unexpected);
                    }
                }
                self.finish(index, c);
            }
            _ => self.drop_malformed(index, c),
        }
    }

    /// An authentic but malformed packet: a broken peer, never acted on.
    fn drop_malformed(&mut self, index: u32, mut c: Box<Connection>) {
        c.stats.rare.dropped(DropReason::Malformed);
        self.finish_quiet(index, c);
    }

    /// `c` back if an authentic packet may act on it now: it is connected, and (a server's
    /// new connection) its client is confirmed. Otherwise the packet is dropped.
    #[inline]
    fn ready_to_act(&mut self, index: u32, c: Box<Connection>) -> Option<Box<Connection>> {
        // Nearly every packet: inlined, with the rest out of line.
        if c.is_connected() && c.pending_accept.is_none() {
            return Some(c);
        }
        self.ready_to_act_slow(index, c)
    }

    #[cold]
    #[inline(never)]
    fn ready_to_act_slow(&mut self, index: u32, mut c: Box<Connection>) -> Option<Box<Connection>> {
        if !c.is_connected() {
            self.stats.drops.add(DropReason::EarlyPacket);
            self.finish_quiet(index, c);
            return None;
        }
        if c.pending_accept.is_some() && !self.confirm(&mut c) {
            self.finish(index, c);
            return None;
        }
        Some(c)
    }

    /// The client's first authenticated packet: it holds the keys, so the connection is up,
    /// and its token (if any) is used now — not at `Connect`, where a copy taken off the wire
    /// could burn it without ever connecting. False if the token was used meanwhile: a
    /// guard (a token has at most one unconfirmed connection, and a used one is refused at
    /// `Connect`); that connection would close unreported.
    fn confirm(&mut self, c: &mut Connection) -> bool {
        let Some(pending) = c.pending_accept.take() else {
            return true;
        };
        if let Some((tag, expires_at)) = pending.token {
            self.forget_pending_token(&tag, c.handle.index);
            if self.token_is_used(&tag) {
                c.pending_accept = Some(pending);
                c.close(DisconnectReason::TokenUsed, Some(CloseCode::TokenUsed));
                return false;
            }
            // (One that expired since its Connect needs no remembering: it fails on expiry.
            // Kept, it would sit in a full table until the next second's clearing.)
            if self.unix_now().is_none_or(|t| expires_at > t) {
                self.admission().used_tokens.insert(tag, expires_at);
            }
        }
        if let Some(old) = pending.replaces {
            // Proven: the connection it replaces gives way now (if it is still at that
            // address: one that moved since is another path's business).
            if let Some((index, mut old)) = self.take(old) {
                if old.remote() == c.remote() {
                    old.close(DisconnectReason::Replaced, None);
                    if old.is_client && !old.is_connected() {
                        // Our attempt lost a crossing connect: what the application queued on
                        // it (never sent: it never connected) goes on this one, if this peer
                        // proved the key the attempt pinned.
                        c.take_queued_from(&mut old, pending.identity.key);
                    }
                }
                self.finish(index, old);
            }
        }
        self.stats.connections_opened += 1;
        c.reported = true;
        self.events.push(Event::Connected {
            conn: c.handle,
            remote: c.remote(),
            identity: Box::new(PeerIdentity {
                user_id: c.peer_user_id,
                local_user_id: c.local_user_id,
                ..pending.identity
            }),
        });
        true
    }

    /// The packet in a datagram of `c`: the datagram itself (less its tag, if any), opened
    /// into `opened` when the connection is protected. `None` (counted) if it does not
    /// authenticate: forged or corrupted packets are never acted on; they only count,
    /// towards the connection's `INTEGRITY_LIMIT`.
    fn open_packet<'a>(
        &mut self,
        c: &mut Connection,
        datagram: &'a [u8],
        opened: &'a mut Vec<u8>,
    ) -> Option<&'a [u8]> {
        let Some(len) = datagram
            .len()
            .checked_sub(c.tag_len())
            .filter(|&n| n >= SHORT_HEADER_LEN)
        else {
            self.stats.drops.add(DropReason::Malformed);
            return None;
        };
        let Some(keys) = &c.keys else {
            return datagram.get(..len);
        };
        let reason = match c.transport.received.extend(wire::short_header_pn(datagram)) {
            None => DropReason::DuplicatePacket,
            Some(pn) => {
                opened.clear();
                opened.extend_from_slice(&datagram[..len]);
                if keys.recv.open(pn, opened, &datagram[len..]) {
                    return Some(opened);
                }
                DropReason::Unauthenticated
            }
        };
        self.stats.drops.add(reason);
        if reason == DropReason::Unauthenticated {
            c.on_forgery();
        }
        None
    }

    /// Handles timers that are due at `now`: retransmissions, acknowledgements, keepalives,
    /// timeouts. Safe to call at any time; it only acts on what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance_time(now);
        // A driver's clock that went backwards is held at the latest time seen (a wake-up
        // rescheduled before `now` would otherwise come due again at once, for ever).
        let now = self.last_now;
        let mut popped = false;
        // A connection may be woken again at once (its losses declared, its probe timeout
        // is due next), but a few times at most: a timer that stayed due however often it
        // was handled would otherwise be popped again, for ever, within this call.
        let mut wakes_left = self.live.saturating_mul(4).saturating_add(64);
        while let Some(Wakeup {
            at,
            index,
            generation,
        }) = self.wakeups.pop_due(now.as_micros())
        {
            popped = true;
            let slot = &mut self.slots[index as usize];
            if slot.generation != generation || slot.conn.is_none() || slot.scheduled != at {
                // A later entry for a connection rescheduled earlier, or one gone.
                continue;
            }
            slot.scheduled = NEVER;
            if slot.due > now.as_micros() {
                // A stale entry: the timer it was queued for was stopped or pushed back (an
                // ack cleared the ack timer, say). Nothing is due, so the connection is only
                // rescheduled, from its slot: not touched, not woken, not marked as having
                // something to send.
                self.stats.stale_wakeups += 1;
                self.schedule(index);
                continue;
            }
            let Some(mut c) = slot.conn.take() else {
                continue;
            };
            let mut shared = Shared {
                config: &self.config,
                events: &mut self.events,
                budget: &mut self.budget,
                event_share: 0,
                scratch: &mut self.scratch,
            };
            c.handle_timeout(now, &mut shared);
            self.finish(index, c);
            wakes_left = wakes_left.saturating_sub(1);
            debug_assert!(
                wakes_left > 0,
                "a timer stays due at {now:?} however often it is handled"
            );
            if wakes_left == 0 {
                break;
            }
        }
        // Popping made a new front; without a pop it is the one settled when the last call
        // ended.
        if popped {
            self.settle_wakeups();
        }
    }

    // ------------------------------------------------------------------ output

    /// Writes the next datagram to send into `buf` and says where to send it. Call until it
    /// returns `None`. Datagrams are never larger than `Config::mtu`.
    ///
    /// # Panics
    ///
    /// If `buf` holds fewer than `Config::mtu` bytes: a smaller one could never carry a
    /// full-size chunk of a large message, whose channel would stall for good.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        assert!(
            buf.len() >= self.config.mtu,
            "poll_transmit needs a buffer of at least Config::mtu ({}) bytes, got {}",
            self.config.mtu,
            buf.len()
        );
        self.advance_time(now);
        while let Some((to, control, unproven)) = self.control.pop_front() {
            if unproven {
                self.unproven_replies -= 1;
            }
            if let Some(user) = crate::hub::relay_user(to) {
                self.tunnel_out(user, &control);
                continue;
            }
            if let Some(out) = buf.get_mut(..control.len()) {
                out.copy_from_slice(&control);
                return Some(self.count_sent(Transmit {
                    to,
                    len: control.len(),
                }));
            }
        }
        while let Some(index) = self.dirty.pop_front() {
            let Some(mut c) = self
                .slots
                .get_mut(index as usize)
                .and_then(|s| s.conn.take())
            else {
                continue;
            };
            c.in_dirty = false;
            let sent = c.poll_transmit(now, buf, &self.config, &mut self.scratch.outcome);
            if sent.is_some() && c.more_to_send {
                // Round-robin: it has more, but others go first.
                c.in_dirty = true;
                self.dirty.push_back(index);
            }
            self.finish_quiet(index, c);
            if let Some((len, to)) = sent {
                if let Some(user) = crate::hub::relay_user(to) {
                    self.tunnel_out(user, &buf[..len]);
                    continue;
                }
                return Some(self.count_sent(Transmit { to, len }));
            }
        }
        None
    }

    /// Sends a datagram of a peer link through the hub connection, as an unreliable
    /// message on the tunnel channel addressed to `user` (the hub relays it like any other).
    fn tunnel_out(&mut self, user: u16, datagram: &[u8]) {
        let Some((hub, channel)) = self.relay else {
            self.stats.tunnel_drops += 1;
            return;
        };
        let route = Route {
            owner: None,
            target: Some(user),
        };
        let payload = Bytes::copy_from_slice(datagram);
        match self.send_routed(hub, channel, payload, route) {
            Ok(()) => self.stats.tunnelled_out += 1,
            Err(_) => self.stats.tunnel_drops += 1,
        }
    }

    /// Sends the datagrams of peer links (connections to a
    /// [`hub::relay_address`](crate::hub::relay_address)) through connection `hub` on
    /// `channel`, an unreliable channel the hub relays; and takes what arrives on it from
    /// the hub as those links' datagrams. [`HubClient`](crate::hub::HubClient) sets it.
    pub fn set_relay(&mut self, hub: ConnectionHandle, channel: u8) {
        self.relay = Some((hub, channel));
        self.events.set_tunnel(hub, channel, self.config.mtu);
    }

    /// Takes datagrams hub connection `hub` tunnels from member `user` (`allowed`), or no
    /// longer: only from members this one was introduced to, so that a hub cannot have it
    /// take a key exchange (or anything else) from any user id it names. The hub client
    /// keeps it. Datagrams held from `user` before its introduction are handled now.
    pub(crate) fn allow_relay_peer(&mut self, now: Instant, hub: ConnectionHandle, user: u16) {
        for payload in self.events.allow_tunnel_peer(hub, user) {
            self.stats.tunnelled_in += 1;
            self.handle_one(now, crate::hub::relay_address(user), &payload);
        }
    }

    /// Takes no more tunnelled datagrams through `hub` from `user` (no room shared now).
    pub(crate) fn forbid_relay_peer(&mut self, hub: ConnectionHandle, user: u16) {
        self.events.forbid_tunnel_peer(hub, user);
    }

    /// Takes tunnelled datagrams from no member through `hub` (its connection ended).
    pub(crate) fn forget_relay_peers(&mut self, hub: ConnectionHandle) {
        self.events.clear_tunnel_peers(hub);
    }

    /// Starts validating a direct path to `addr` for connection `conn` (a peer link a hub
    /// introduced): a few path challenges spread over round trips, sent whatever `addr` has
    /// sent. When one is answered, a link on its relay moves there
    /// (`Event::PathChanged`); when the direct path later stops answering, it moves back.
    ///
    /// The probe's challenges come out of `Config::path_probes`; past it the path is not
    /// probed (counted in `EndpointStats::path_probes_refused`).
    pub fn probe_path(&mut self, now: Instant, conn: ConnectionHandle, addr: SocketAddr) {
        self.advance_time(now);
        let addr = canonical_address(addr);
        if let Some((index, mut c)) = self.take(conn) {
            let _ = self.probe_within_budget(&mut c, addr, PROBE_ATTEMPTS, Origin::Hub);
            self.finish(index, c);
        }
    }

    /// Has `c` probe `addr` with `attempts` challenges if `Config::path_probes` holds that
    /// many (else counted, not started); what it did not add (the address is probed
    /// already, or no place is free) goes back. Returns the challenges added.
    fn probe_within_budget(
        &mut self,
        c: &mut Connection,
        addr: SocketAddr,
        attempts: u8,
        origin: Origin,
    ) -> u8 {
        let (limit, now) = (self.config.path_probes, self.last_now);
        let bucket = self
            .path_probes
            .get_or_insert_with(|| Box::new(crate::rate::Bucket::new(&limit, now)));
        if !bucket.take(&limit, now, f64::from(attempts)) {
            self.stats.path_probes_refused += 1;
            return 0;
        }
        let added = c.probe_path(now, addr, attempts, origin);
        bucket.give_back(&limit, f64::from(attempts.saturating_sub(added)));
        added
    }

    /// The next event for the application, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if !self.taking_events && self.departed_held {
            self.last_departed.clear();
            self.departed_held = false;
        }
        let Some((event, charge)) = self.events.pop() else {
            self.taking_events = false;
            return None;
        };
        self.taking_events = true;
        if let Event::Disconnected { conn, .. } | Event::ConnectFailed { conn, .. } = &event {
            if let Some(departed) = self
                .departed
                .iter()
                .position(|(h, _)| h == conn)
                .and_then(|i| self.departed.remove(i))
            {
                if self.last_departed.len() >= self.config.max_connections {
                    // (Only an application that never empties the queue gets here.)
                    self.last_departed.remove(0);
                }
                self.last_departed.push(departed);
                self.departed_held = true;
            }
        }
        if let Event::Connected { conn, .. } = &event {
            if let Some(c) = self.get_mut(*conn) {
                c.announced = true;
            }
        }
        let mut event = event;
        if let Event::PathChanged { conn, remote } = &mut event {
            // The one waiting stood for every move since it was queued: it names the
            // address the connection is at now.
            if let Some(c) = self.get_mut(*conn) {
                c.path_event_waiting = false;
                *remote = c.remote();
            }
        }
        if charge > 0 {
            let handle = event.connection();
            if let Some(slot) = self.slots.get_mut(handle.index as usize) {
                if let Some(c) = slot
                    .conn
                    .as_mut()
                    .filter(|_| slot.generation == handle.generation)
                {
                    c.event_bytes = c.event_bytes.saturating_sub(charge);
                }
            }
        }
        Some(event)
    }

    /// When `handle_timeout` should next be called, if anything is scheduled: the earliest
    /// deadline of a connection timer still set. A timer stopped or pushed back since it
    /// was scheduled (an ack that left with an answer stops the delayed-ack timer) is not
    /// reported, so a driver that sleeps until then is not woken for nothing. (A server
    /// whose wake-ups crowd more than 32 connections into one slot of its timer wheel may
    /// be woken early once for that slot when the earliest of them moves; that is
    /// harmless.)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wakeups.next_deadline().map(Instant::from_micros)
    }

    // ------------------------------------------------------------------ internals

    /// Called first by every public method given `now`. Every connection is in its slot
    /// then, so this is where stale wake-ups are dropped: a rebuild while one is out (in
    /// `finish_quiet`, say, with another connection held by its caller) would lose its entry.
    ///
    /// Inlined, with the rebuild out of line: it runs several times per datagram, and as a
    /// call it cost more than its checks (a hot path the compiler's own inlining left
    /// alone; a profile-guided build inlines it).
    #[inline]
    fn advance_time(&mut self, now: Instant) {
        debug_assert!(
            now >= self.last_now,
            "time went backwards: {now:?} < {:?}",
            self.last_now
        );
        self.last_now = self.last_now.max(now);
        if self.wakeups.needs_rebuild(self.live) || self.wakeups.outgrew_heap() {
            self.rebuild_and_settle_wakeups();
        }
    }

    #[cold]
    #[inline(never)]
    fn rebuild_and_settle_wakeups(&mut self) {
        self.rebuild_wakeups();
        // (Rebuilt entries are at their connections' deadlines, so a heap's front needs no
        // settling; the check is cheap and keeps `poll_timeout` exact regardless.)
        self.settle_wakeups();
    }

    fn count_sent(&mut self, t: Transmit) -> Transmit {
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += t.len as u64;
        t
    }

    fn get(&self, handle: ConnectionHandle) -> Option<&Connection> {
        let slot = self.slots.get(handle.index as usize)?;
        if slot.generation != handle.generation {
            return None;
        }
        slot.conn.as_deref()
    }

    fn get_mut(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        let slot = self.slots.get_mut(handle.index as usize)?;
        if slot.generation != handle.generation {
            return None;
        }
        slot.conn.as_deref_mut()
    }

    fn slot_conn(&self, index: u32) -> Option<&Connection> {
        self.slots.get(index as usize)?.conn.as_deref()
    }

    fn slot_conn_mut(&mut self, index: u32) -> Option<&mut Connection> {
        self.slots.get_mut(index as usize)?.conn.as_deref_mut()
    }

    fn take(&mut self, handle: ConnectionHandle) -> Option<(u32, Box<Connection>)> {
        let slot = self.slots.get_mut(handle.index as usize)?;
        if slot.generation != handle.generation {
            return None;
        }
        Some((handle.index, slot.conn.take()?))
    }

    /// A new connection's own key for its path-challenge tokens.
    fn next_path_key(&mut self) -> Prf {
        self.connections_created += 1;
        self.prf.derive(Domain::PathKey, self.connections_created)
    }

    /// A fresh connection id for the connection that will take slot `index`: 44 unpredictable
    /// bits, and 20 that are the index masked by a keyed function of those 44 (see
    /// [`slot_of`](Self::slot_of)), so its packets find their slot without a hash lookup
    /// while the id shows nothing of the slot to anyone without the key. Never 0, never one
    /// in use.
    fn next_connection_id(&mut self, index: u32) -> u64 {
        loop {
            let random = self.connection_ids.next(&self.prf);
            let id = if u64::from(index) <= ID_INDEX_MASK {
                let high = random & !ID_INDEX_MASK;
                high | (u64::from(index) ^ self.slot_mask(high))
            } else {
                random
            };
            if id != 0 && !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// The slot an id this endpoint chose names (any other id names some slot too: routing
    /// compares the whole id).
    fn slot_of(&self, connection_id: u64) -> usize {
        let high = connection_id & !ID_INDEX_MASK;
        ((connection_id ^ self.slot_mask(high)) & ID_INDEX_MASK) as usize
    }

    /// The keyed mask over an id's low bits: 20 bits of a keyed PRF of its high bits.
    /// Why hide the slot: an off-path guesser who could aim at occupied slots would need
    /// 2^44 guesses per hit, against 2^64 / connections when it cannot. The PRF matters: a
    /// cheap keyed product let a client recover the key from five of its own ids (test
    /// `a_client_cannot_learn_from_its_own_ids_how_ids_name_slots`).
    fn slot_mask(&self, high: u64) -> u64 {
        self.slot_key.mix(high) >> (64 - ID_INDEX_BITS)
    }

    /// The index `allocate_slot` hands out next.
    fn next_slot_index(&self) -> u32 {
        self.free_slots
            .last()
            .copied()
            .unwrap_or(self.slots.len() as u32)
    }

    /// Takes a free slot (the one `next_slot_index` named).
    fn allocate_slot(&mut self) -> (u32, ConnectionHandle) {
        let index = self.free_slots.pop().unwrap_or_else(|| {
            if self.slots.capacity() == 0 {
                // Room for one: a client endpoint has one connection (a Vec's first
                // growth would make four); a server's table doubles from there.
                self.slots.reserve_exact(1);
            }
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        });
        self.live += 1;
        let slot = &mut self.slots[index as usize];
        slot.scheduled = NEVER;
        slot.due = NEVER;
        let generation = slot.generation;
        (index, ConnectionHandle { index, generation })
    }

    /// Puts a connection back after work on it: reaps it if it closed, otherwise marks it
    /// for a visit by `poll_transmit` if it may have something to send now
    /// (`Connection::may_transmit`) and reschedules its wake-up.
    fn finish(&mut self, index: u32, mut conn: Box<Connection>) {
        if conn.close.is_none() && !conn.in_dirty && conn.may_transmit(self.last_now) {
            conn.in_dirty = true;
            self.dirty.push_back(index);
        }
        self.finish_quiet(index, conn);
    }

    /// Like `finish`, without marking the connection dirty.
    fn finish_quiet(&mut self, index: u32, mut conn: Box<Connection>) {
        if let Some(reason) = conn.close {
            // It may have moved in the same call that closed it (a peer link back to its
            // relay, then timed out): the address it left must not keep naming this slot.
            if let Some(old) = conn.moved_from.take() {
                if *old != conn.remote() && self.by_addr.get(&*old) == Some(&index) {
                    self.by_addr.remove(&*old);
                }
                if !conn.is_client {
                    self.ip_moves(*old, conn.remote());
                }
            }
            self.reap(index, conn, reason);
            return;
        }
        if let Some(old) = conn.moved_from.take().map(|old| *old) {
            let now = conn.remote();
            if now != old {
                if self.by_addr.get(&old) == Some(&index) {
                    self.by_addr.remove(&old);
                }
                // Another connection's handshake entry for this address stays its own.
                self.by_addr.insert_if_absent(now, index);
                if !conn.is_client {
                    self.ip_moves(old, now);
                }
                self.stats.migrations += 1;
                if !conn.path_event_waiting {
                    conn.path_event_waiting = true;
                    conn.event_bytes += self.events.push(Event::PathChanged {
                        conn: conn.handle,
                        remote: now,
                    });
                }
            }
        }
        let slot = &mut self.slots[index as usize];
        slot.due = conn.next_timeout().map_or(NEVER, Instant::as_micros);
        slot.conn = Some(conn);
        let pushed_back = slot.due > slot.scheduled;
        self.schedule(index);
        if pushed_back && self.wakeups.front().is_some_and(|w| w.index == index) {
            self.settle_wakeups();
        }
    }

    /// Queues a wake-up for the connection in slot `index` at its `due` time. A wheel (a
    /// server's) moves the connection's one entry whenever the deadline moves. A heap (a
    /// client's few) queues one only if it is earlier than the one queued; a later one (an
    /// ack pushes the loss timer back) keeps the entry already queued, which is re-queued
    /// at the real deadline only if it reaches the front (`settle_wakeups`).
    fn schedule(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        let moved = if self.wakeups.is_wheel() {
            slot.due != slot.scheduled
        } else {
            slot.due < slot.scheduled
        };
        if !moved {
            return;
        }
        slot.scheduled = slot.due;
        if slot.due == NEVER {
            self.wakeups.remove(index);
        } else {
            let entry = Wakeup {
                at: slot.due,
                index,
                generation: slot.generation,
            };
            self.wakeups.insert(entry);
        }
    }

    /// Makes the earliest queued wake-up one at which something is due, so that
    /// [`poll_timeout`](Self::poll_timeout) does not wake a driver for nothing. Entries of
    /// connections gone or queued again earlier are dropped; one whose connection's timers
    /// moved later (an ack stopped the ack timer, a packet pushed the loss timer back) is
    /// queued again at the connection's real deadline, from its slot, without touching the
    /// connection. Only the front is settled: an entry behind it is when it gets there.
    /// A wheel holds no stale entry, so has no front to settle.
    fn settle_wakeups(&mut self) {
        while let Some(w) = self.wakeups.front() {
            let Some(slot) = self.slots.get_mut(w.index as usize) else {
                self.wakeups.pop_front();
                continue;
            };
            if slot.generation != w.generation || slot.scheduled != w.at {
                // Its connection is gone, or queued again for an earlier time.
                self.wakeups.pop_front();
                continue;
            }
            if slot.conn.is_none() || slot.due <= w.at {
                // Due then; or its connection is out being worked on, and is settled when
                // it is put back.
                break;
            }
            self.stats.stale_wakeups += 1;
            slot.scheduled = slot.due;
            if slot.due == NEVER {
                self.wakeups.pop_front();
            } else {
                self.wakeups.delay_front(slot.due);
            }
        }
    }

    /// Checks the wake-ups' invariants (for the fuzz targets, between calls): every live
    /// connection with a deadline has an entry queued at or before it; a wheel holds
    /// exactly one entry per such connection, at its deadline; and `poll_timeout` is the
    /// earliest connection deadline (a heap's front is settled), or for a wheel never after
    /// it.
    #[cfg(any(test, fuzzing, feature = "fuzzing"))]
    pub(crate) fn check_wakeups(&self) {
        let entries = self.wakeups.entries();
        let mut earliest = NEVER;
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.conn.is_none() || slot.due == NEVER {
                continue;
            }
            earliest = earliest.min(slot.due);
            assert!(
                slot.scheduled <= slot.due,
                "slot {i}: wake-up at {} after its deadline {}",
                slot.scheduled,
                slot.due
            );
            assert!(
                entries.iter().any(|w| w.index == i as u32
                    && w.generation == slot.generation
                    && w.at == slot.scheduled),
                "slot {i}: no wake-up queued for {}",
                slot.scheduled
            );
        }
        if self.wakeups.is_wheel() {
            let mut with_deadline = 0;
            for (i, slot) in self.slots.iter().enumerate() {
                if slot.conn.is_some() && slot.due != NEVER {
                    with_deadline += 1;
                    assert_eq!(
                        slot.scheduled, slot.due,
                        "slot {i}: a wheel entry not at its deadline"
                    );
                }
            }
            assert_eq!(
                entries.len(),
                with_deadline,
                "a wheel holds an entry besides one per connection"
            );
        }
        let next = self.poll_timeout().map_or(NEVER, Instant::as_micros);
        if self.wakeups.is_wheel() {
            // (A wheel slot of more than 32 entries may keep a bound below its earliest.)
            assert!(
                next <= earliest,
                "poll_timeout is after the earliest deadline"
            );
        } else if self.wakeups.front().is_some() || entries.is_empty() {
            assert_eq!(next, earliest, "poll_timeout is not the earliest deadline");
        }
    }

    /// Drops stale wake-up entries (their connection rescheduled or closed).
    fn rebuild_wakeups(&mut self) {
        let mut entries = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.conn.is_none() {
                continue;
            }
            // At the real deadline (an entry queued before it may have been stale).
            s.scheduled = s.due;
            if s.due != NEVER {
                entries.push(Wakeup {
                    at: s.due,
                    index: i as u32,
                    generation: s.generation,
                });
            }
        }
        self.wakeups.rebuild(entries, self.last_now.as_micros());
    }

    fn reap(&mut self, index: u32, mut conn: Box<Connection>, reason: DisconnectReason) {
        if let Some(code) = conn.close_code {
            let copies = if reason == DisconnectReason::ClosedLocally {
                DISCONNECT_COPIES
            } else {
                1
            };
            if conn.is_connected() {
                let connection_id = conn.connection_id;
                for _ in 0..copies {
                    let disconnect = |packet_number| Packet::Disconnect {
                        connection_id,
                        packet_number,
                        code,
                    };
                    if let Some(bytes) =
                        conn.control_packet(self.last_now, disconnect, &mut self.scratch.outcome)
                    {
                        self.push_control_bytes(conn.remote(), bytes);
                    }
                }
            }
        }
        if self.by_addr.get(&conn.remote()) == Some(&index) {
            self.by_addr.remove(&conn.remote());
            // An unconfirmed replacement that gives up hands the address back to the
            // connection it would have replaced.
            let replaced = conn.pending_accept.as_ref().and_then(|p| p.replaces);
            let still_there = |h| self.get(h).is_some_and(|o| o.remote() == conn.remote());
            if let Some(old) = replaced.filter(|&h| still_there(h)) {
                self.by_addr.insert(conn.remote(), old.index);
            }
        }
        if self.by_id.get(&conn.connection_id) == Some(&index) {
            self.by_id.remove(&conn.connection_id);
        }
        if !conn.is_client {
            self.user_ids.release(conn.peer_user_id);
            self.ip_loses(conn.remote());
        }
        conn.release_all(&mut self.budget);
        let stats = conn.stats();
        self.stats.drops.merge(&stats.drops);
        self.stats.connections_closed += 1;
        if let Some((tag, _)) = conn.pending_accept.as_ref().and_then(|p| p.token) {
            self.forget_pending_token(&tag, index);
        }
        let conn_handle = conn.handle;
        let event = if conn.reported {
            Some(Event::Disconnected {
                conn: conn_handle,
                reason,
            })
        } else if conn.is_client {
            Some(Event::ConnectFailed {
                conn: conn_handle,
                reason,
            })
        } else {
            // A server's connection the client never confirmed was never reported.
            None
        };
        if let Some(event) = event {
            if let Some(data) = conn.user_data.take() {
                self.departed.push_back((conn_handle, data));
            }
            self.events.push(event);
        }
        let slot = &mut self.slots[index as usize];
        slot.conn = None;
        // A slot whose generation would wrap is retired, not reused: the next handle would
        // equal one given out before (a peer that keeps replacing its own unconfirmed
        // handshake closes a connection in the same slot each time). One slot per 2^32
        // closes is left behind.
        if let Some(next) = slot.generation.checked_add(1) {
            slot.generation = next;
            self.free_slots.push(index);
        } else {
            // Its queued wake-up is stale: settled away like a reused slot's.
            slot.scheduled = NEVER;
            slot.due = NEVER;
        }
        self.live -= 1;
        self.wakeups.remove(index);
        if self.wakeups.front().is_some_and(|w| w.index == index) {
            self.settle_wakeups();
        }
    }

    /// Queues a handshake reply (encoded now: nothing about it changes later).
    fn push_control(&mut self, to: SocketAddr, control: Packet<'_>) {
        if let Some(bytes) = encode_control(&control) {
            self.push_control_bytes(to, bytes);
        }
    }

    /// Queues a datagram that is ready to send.
    fn push_control_bytes(&mut self, to: SocketAddr, control: ControlBytes) {
        self.push_reply(to, control, false);
    }

    /// Queues the reply to a datagram from an address nothing proved (anyone can send one
    /// from anywhere): within half the queue.
    pub(super) fn push_unproven(&mut self, to: SocketAddr, control: Packet<'_>) {
        if let Some(bytes) = encode_control(&control) {
            self.push_reply(to, bytes, true);
        }
    }

    /// Queues a reply; one to an address nothing proved (`unproven`) within half the queue.
    fn push_reply(&mut self, to: SocketAddr, control: ControlBytes, unproven: bool) {
        let max = self.config.max_control_queue;
        if self.control.len() >= max || (unproven && self.unproven_replies >= max.div_ceil(2)) {
            self.stats.replies_dropped += 1;
            return;
        }
        self.unproven_replies += usize::from(unproven);
        self.control.push_back((to, control, unproven));
    }

    /// The connection a packet's id names, taken out of its slot (put it back with
    /// `finish`). If there is none, the drop is counted and, when nothing of ours talks to
    /// `from`, the sender is told we do not know that id (it was ours before a restart).
    fn take_by_id(
        &mut self,
        from: SocketAddr,
        connection_id: u64,
        datagram_len: usize,
    ) -> Option<(u32, Box<Connection>)> {
        // An id we chose names its slot. One the peer chose (we are its client) is looked
        // up, unless it is the one last looked up: a client's only connection, mostly.
        let index = [self.slot_of(connection_id) as u32, self.last_looked_up]
            .into_iter()
            .find(|&slot| self.routes(slot, connection_id))
            .or_else(|| {
                let index = self.by_id.get(&connection_id).copied()?;
                self.last_looked_up = index;
                Some(index)
            });
        let Some(index) = index else {
            match self.by_addr.get(&from).and_then(|&i| self.slot_conn(i)) {
                // Our handshake with `from` is under way: the packet overtook its Accept.
                Some(c) if !c.is_connected() => self.stats.drops.add(DropReason::EarlyPacket),
                Some(_) => self.stats.drops.add(DropReason::UnknownConnection),
                None => {
                    self.stats.drops.add(DropReason::UnknownConnection);
                    // Never more bytes than came: a whole header (13) or nothing. Not through
                    // a hub's tunnel: the hub tells its members when a link ends, and the
                    // relay's budget is for real traffic.
                    if datagram_len >= SHORT_HEADER_LEN && crate::hub::relay_user(from).is_none() {
                        self.send_reset(from, connection_id);
                    }
                }
            }
            return None;
        };
        Some((index, self.slots[index as usize].conn.take()?))
    }

    /// Whether the connection in `slot` has the id `connection_id`. Id 0 is no
    /// connection's: a client's connection has it until its Accept names one.
    fn routes(&self, slot: u32, connection_id: u64) -> bool {
        connection_id != 0
            && self
                .slots
                .get(slot as usize)
                .and_then(|s| s.conn.as_deref())
                .is_some_and(|c| c.connection_id == connection_id)
    }

    /// Tells `from` that `connection_id` names no connection here: a `Reject` carrying the
    /// id (12 bytes, never more than the 13-byte header of the packet it answers, and no
    /// state kept). A restarted server's clients learn within a round trip or two, not at
    /// their idle timeout. A `Reject` is never answered, so two endpoints cannot loop.
    fn send_reset(&mut self, from: SocketAddr, connection_id: u64) {
        self.stats.resets_sent += 1;
        self.push_unproven(
            from,
            Packet::Reject {
                client_nonce: connection_id,
                code: RejectCode::UnknownConnection,
            },
        );
    }

    /// A peer says it does not know `connection_id`: believed only from the connection's
    /// own path, and only if the peer then stays silent (see `Connection::on_reset_hint`).
    fn on_reset_hint(&mut self, now: Instant, from: SocketAddr, connection_id: u64) {
        let Some(&index) = self.by_id.get(&connection_id) else {
            self.stats.drops.add(DropReason::Unexpected);
            return;
        };
        let Some(mut c) = self.slots[index as usize].conn.take() else {
            return;
        };
        if c.remote() == from {
            c.on_reset_hint(now, &self.config);
            self.finish(index, c);
        } else {
            c.stats.rare.dropped(DropReason::Unexpected);
            self.finish_quiet(index, c);
        }
    }

    /// Answers a path challenge wherever it came from: the answer is no larger than the
    /// question (and counts as a reply to an address nothing proved unless it goes to the
    /// connection's own). A peer link probes the address back: with the answer, at most
    /// three times what came from it.
    fn on_path_challenge(&mut self, from: SocketAddr, c: &mut Connection, token: u64) {
        let connection_id = c.connection_id;
        let now = self.last_now;
        let response = |packet_number| Packet::PathResponse {
            connection_id,
            packet_number,
            token,
        };
        if let Some(response) = c.control_packet(now, response, &mut self.scratch.outcome) {
            self.push_reply(from, response, from != c.remote());
        }
        if from == c.remote() {
            // Our peer is validating a new address of ours (our NAT rebound): what we sent
            // from it was dropped, so send a probe right behind the response, which arrives
            // once the address is proven.
            c.on_path_challenged(now);
        }
        let remote = c.remote();
        let protected = c.keys.is_some();
        // (Not an address probed already: a probe back would only use up the allowance.)
        let known = c.transport.paths.is_candidate(from);
        let probe_back = c.transport.paths.relay_mut().is_some_and(|relay| {
            protected
                && !known
                && from != relay.addr()
                && from != remote
                && relay.probed_back < MAX_PROBED_BACK
        });
        if probe_back {
            // A peer link's peer probes us from an address of its own (behind a NAT that
            // maps each destination anew, it is not the one the hub saw): probe it back, so
            // both sides validate the path the peer's NAT actually opened. (Counted against
            // the link's allowance only if it started.)
            if self.probe_within_budget(c, from, PROBE_BACK_ATTEMPTS, Origin::Challenge) > 0 {
                if let Some(relay) = c.transport.paths.relay_mut() {
                    relay.probed_back += 1;
                }
            }
        }
    }

    fn on_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram_len: usize,
        (index, mut c): (u32, Box<Connection>),
        header: &crate::wire::DataHeader<'_>,
        frames: &[u8],
    ) {
        // Routed by connection id alone: the address is the connection's to judge (a new one
        // is challenged, never trusted). What a message keeps of the packet is copied out.
        let mut shared = Shared {
            config: &self.config,
            events: &mut self.events,
            budget: &mut self.budget,
            // (At least 1: with more connections than bytes a share of 0 refused every packet
            // of every connection; the queue's own bound still holds the total.)
            event_share: (self.config.max_pending_event_bytes / self.live.max(1)).max(1),
            scratch: &mut self.scratch,
        };
        if let DataResult::Migrated(old) =
            c.handle_data(now, from, datagram_len, header, frames, &mut shared)
        {
            c.moved_from.get_or_insert_with(|| Box::new(old));
        }
        // Nothing of this packet stays in the shared buffers for the next connection (every
        // test run checks it: they run with debug assertions).
        debug_assert!(self.scratch.is_empty(), "scratch left full by a packet");
        self.finish(index, c);
    }
}

/// A control packet encoded for the reply queue (`None` for one that does not fit, which
/// no control packet does).
fn encode_control(control: &Packet<'_>) -> Option<ControlBytes> {
    let mut out = [0u8; CONTROL_MAX];
    let len = control.encode(&mut out)?;
    ControlBytes::from_slice(&out[..len]).ok()
}

/// `addr` as the endpoint keeps it: an IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, as
/// a dual-stack socket reports an IPv4 peer) is the IPv4 address it stands for, so a peer
/// has one address whichever socket it came through, is judged as IPv4, and is handed to
/// others (a hub's members on IPv4 sockets) in a form they can reach. A driver on an IPv6
/// socket maps IPv4 destinations back when it sends.
pub fn canonical_address(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protected endpoint's settings (a server's when `server`).
    fn keyed_config(seed: u64, server: bool) -> Config {
        Config {
            seed,
            secret_seed: Some(crate::SecretSeed::insecure_from_u64(seed)),
            accept_incoming: server,
            ..Config::default()
        }
    }

    /// A hub tunnels peer links' datagrams, each naming the member it came from: a hostile
    /// one could name any user id and have a member take a key exchange from each (X25519,
    /// at the member's full rate). Only members the hub client introduced are taken from;
    /// a few datagrams from others are held, in case their introduction is on its way (a
    /// peer's first packet can come with the notice introducing it).
    #[test]
    fn tunnelled_datagrams_are_taken_only_from_introduced_members() {
        let now = Instant::from_millis(1);
        let mut member = Endpoint::new(Config {
            secret_seed: Some(crate::SecretSeed::insecure_from_u64(1)),
            ..crate::hub::endpoint_config()
        })
        .expect("valid");
        let hub = member
            .connect(now, SocketAddr::from(([10, 0, 0, 1], 7000)), b"")
            .expect("connect");
        let tunnel = crate::hub::DEFAULT_TUNNEL_CHANNEL;
        member.set_relay(hub, tunnel);
        // What a peer's endpoint sends first to a link's relay address: a Hello.
        let mut peer = Endpoint::new(Config {
            secret_seed: Some(crate::SecretSeed::insecure_from_u64(2)),
            ..crate::hub::endpoint_config()
        })
        .expect("valid");
        peer.connect(now, SocketAddr::from(([10, 0, 0, 3], 7000)), b"")
            .expect("connect");
        let mut buf = [0u8; 1500];
        let hello = peer.poll_transmit(now, &mut buf).expect("a Hello");
        let hello = Bytes::copy_from_slice(&buf[..hello.len]);
        let tunnelled = |ep: &mut Endpoint, owner: u16| {
            let event = Event::Message {
                conn: hub,
                channel: tunnel,
                sequence: 0,
                payload: Bytes::new(),
                relay: Some(crate::event::Relay {
                    owner,
                    target: None,
                }),
            };
            // As the receive path hands it over: borrowed from the packet it came in.
            let payload = crate::messaging::channel::Payload::Borrowed(&hello);
            ep.events.push_with(event, payload);
            // (Tunnelled datagrams are handled after the socket's: an empty one here.)
            ep.handle_datagram(now, SocketAddr::from(([10, 0, 0, 9], 9)), &[]);
        };
        tunnelled(&mut member, 77);
        assert_eq!(member.stats().tunnelled_in, 0, "from a stranger: held");
        // Another hub connection's introductions are not this tunnel's.
        let other = ConnectionHandle {
            index: hub.index + 1,
            generation: 0,
        };
        member.allow_relay_peer(now, other, 77);
        assert_eq!(member.stats().tunnelled_in, 0);
        // Its introduction comes (after its first packet): what was held is handled.
        member.allow_relay_peer(now, hub, 77);
        assert_eq!(member.stats().tunnelled_in, 1, "held until introduced");
        tunnelled(&mut member, 77);
        assert_eq!(member.stats().tunnelled_in, 2, "once introduced");
        member.forbid_relay_peer(hub, 77);
        tunnelled(&mut member, 77);
        assert_eq!(member.stats().tunnelled_in, 2, "forgotten again");
        // Strangers' datagrams are held within a bound, the rest dropped and counted.
        for user in 100..200 {
            tunnelled(&mut member, user);
        }
        assert_eq!(member.stats().tunnelled_in, 2);
        assert_eq!(member.stats().tunnel_drops, 101 - 64);
        // Nothing longer than a datagram is held (the tunnel channel reassembles messages).
        member.events.push(Event::Message {
            conn: hub,
            channel: tunnel,
            sequence: 0,
            payload: Bytes::from(alloc::vec![0u8; member.config.mtu + 1]),
            relay: Some(crate::event::Relay {
                owner: 300,
                target: None,
            }),
        });
        member.handle_datagram(now, SocketAddr::from(([10, 0, 0, 9], 9)), &[]);
        assert_eq!(member.stats().tunnel_drops, 101 - 64 + 1);
    }

    /// A protected client and server on a perfect link, moved by hand a millisecond a turn.
    struct TwoEndpoints {
        client: Endpoint,
        server: Endpoint,
        c: ConnectionHandle,
        s: ConnectionHandle,
        now: Instant,
        buf: alloc::vec::Vec<u8>,
    }

    impl TwoEndpoints {
        const CLIENT: SocketAddr = SocketAddr::new(
            core::net::IpAddr::V4(core::net::Ipv4Addr::new(10, 0, 0, 2)),
            5000,
        );
        const SERVER: SocketAddr = SocketAddr::new(
            core::net::IpAddr::V4(core::net::Ipv4Addr::new(10, 0, 0, 1)),
            4000,
        );

        fn connected() -> Self {
            let mut client = Endpoint::new(keyed_config(1, false)).unwrap();
            let now = Instant::from_millis(1);
            let c = client.connect(now, Self::SERVER, &[]).unwrap();
            let mut p = TwoEndpoints {
                client,
                server: Endpoint::new(keyed_config(2, true)).unwrap(),
                c,
                s: c,
                now,
                buf: alloc::vec![0u8; 1500],
            };
            let mut s = None;
            for _ in 0..50 {
                for e in p.turn() {
                    if let Event::Connected { conn, .. } = e {
                        s = Some(conn);
                    }
                }
            }
            p.s = s.expect("connected");
            p
        }

        /// One millisecond: timers, then every datagram both ways; the server's events.
        fn turn(&mut self) -> alloc::vec::Vec<Event> {
            self.now += core::time::Duration::from_millis(1);
            let now = self.now;
            self.client.handle_timeout(now);
            self.server.handle_timeout(now);
            while let Some(t) = self.client.poll_transmit(now, &mut self.buf) {
                self.server
                    .handle_datagram(now, Self::CLIENT, &self.buf[..t.len]);
            }
            while let Some(t) = self.server.poll_transmit(now, &mut self.buf) {
                self.client
                    .handle_datagram(now, Self::SERVER, &self.buf[..t.len]);
            }
            while self.client.poll_event().is_some() {}
            core::iter::from_fn(|| self.server.poll_event()).collect()
        }
    }

    /// Challenges to addresses that never answered come out of `Config::path_probes`: a
    /// hub (or an application) naming address after address gets no more sent to them than
    /// the budget, and the probes past it are counted, not started.
    #[test]
    fn path_probes_past_the_endpoints_budget_are_not_sent() {
        let mut p = TwoEndpoints::connected();
        p.client.config.path_probes = crate::RateLimit {
            per_second: 8.0,
            burst: 16.0,
        };
        let named = |i: u8| SocketAddr::from(([198, 51, 100, i], 4000));
        let mut challenges = 0;
        let mut run = |p: &mut TwoEndpoints, ms: u64| {
            for _ in 0..ms {
                p.now += core::time::Duration::from_millis(1);
                let now = p.now;
                p.client.handle_timeout(now);
                p.server.handle_timeout(now);
                while let Some(t) = p.client.poll_transmit(now, &mut p.buf) {
                    if t.to == TwoEndpoints::SERVER {
                        p.server
                            .handle_datagram(now, TwoEndpoints::CLIENT, &p.buf[..t.len]);
                    } else {
                        challenges += 1;
                    }
                }
                while let Some(t) = p.server.poll_transmit(now, &mut p.buf) {
                    p.client
                        .handle_datagram(now, TwoEndpoints::SERVER, &p.buf[..t.len]);
                }
            }
            challenges
        };
        // Two probes of eight challenges fit the burst; the third is refused.
        for i in 1..=3 {
            let now = p.now;
            p.client.probe_path(now, p.c, named(i));
        }
        assert_eq!(p.client.stats().path_probes_refused, 1);
        assert_eq!(run(&mut p, 2_000), 16, "two probes' challenges");
        // Two seconds later the bucket holds sixteen again: two more probes, not three.
        for i in 4..=6 {
            let now = p.now;
            p.client.probe_path(now, p.c, named(i));
        }
        assert_eq!(p.client.stats().path_probes_refused, 2);
        assert_eq!(run(&mut p, 2_000), 32);
    }

    /// A probe that starts nothing takes nothing from `Config::path_probes`: the fifth of
    /// five addresses (no place left), or one probed already.
    #[test]
    fn a_probe_that_starts_nothing_costs_no_budget() {
        let mut p = TwoEndpoints::connected();
        p.client.config.path_probes = crate::RateLimit {
            per_second: 0.001,
            burst: 40.0,
        };
        let now = p.now;
        for i in 1..=5 {
            p.client
                .probe_path(now, p.c, SocketAddr::from(([198, 51, 100, i], 4000)));
        }
        let again = SocketAddr::from(([198, 51, 100, 1], 4000));
        p.client.probe_path(now, p.c, again);
        assert_eq!(p.client.stats().path_probes_refused, 0);
        let left = p.client.path_probes.as_ref().map(|b| b.tokens);
        assert_eq!(left, Some(8.0), "four probes' challenges taken");
    }

    /// A path-probe budget smaller than one probe would keep every link on its relay.
    #[test]
    fn a_path_probe_burst_below_one_probe_is_refused() {
        let config = |burst| Config {
            path_probes: crate::RateLimit {
                per_second: 256.0,
                burst,
            },
            ..Config::default()
        };
        assert_eq!(config(4.0).validate(), Err(ConfigError::PathProbeBurst));
        assert_eq!(config(8.0).validate(), Ok(()));
    }

    /// A path challenge is answered wherever it came from, and anyone who can make one
    /// (the peer, or anyone on the path rewriting a genuine one's source) chooses where:
    /// answers to addresses nothing proved take at most half the reply queue, like the
    /// answers to handshakes.
    #[test]
    fn answers_to_challenges_from_unproven_addresses_take_at_most_half_the_reply_queue() {
        let mut p = TwoEndpoints::connected();
        p.server.config.max_control_queue = 8;
        let conn = p.client.get(p.c).unwrap();
        let next = conn.transport.sent.next_seq();
        let challenges: Vec<_> = (0..20u64)
            .map(|i| {
                let packet = Packet::PathChallenge {
                    connection_id: conn.connection_id,
                    packet_number: (next + i) as u32,
                    token: i,
                };
                let mut buf = alloc::vec![0u8; 100];
                let len = packet.encode(&mut buf).unwrap();
                let keys = conn.keys.as_ref().unwrap();
                let sealed = keys.send.seal(next + i, &mut buf, len).unwrap();
                buf.truncate(sealed);
                buf
            })
            .collect();
        let now = p.now;
        for (i, challenge) in challenges.iter().enumerate() {
            let from = SocketAddr::from(([198, 51, 100, i as u8 + 1], 4000));
            p.server.handle_datagram(now, from, challenge);
        }
        assert_eq!(p.server.unproven_replies, 4);
        assert_eq!(p.server.stats().replies_dropped, 16);
    }

    /// Answered requests leave no deadline behind: the table of deadlines stays within a
    /// small multiple of the requests open, however many were answered within the timeout.
    #[test]
    fn answered_requests_leave_no_deadlines_behind() {
        let mut p = TwoEndpoints::connected();
        for _ in 0..2_000 {
            p.client.request(p.now, p.c, 2, &b"ping"[..]).unwrap();
            for e in p.turn() {
                if let Event::Request { conn, request, .. } = e {
                    p.server.respond(conn, request, &b"pong"[..]).unwrap();
                }
            }
        }
        for _ in 0..10 {
            p.turn();
        }
        let deadlines = p.client.get(p.c).unwrap().request_deadlines();
        assert!(deadlines <= 64, "{deadlines} deadlines for no open request");
    }

    /// More connections than bytes in the event queue: each connection's share rounds down
    /// to nothing, yet a quiet connection's message still gets in.
    #[test]
    fn a_tiny_event_budget_still_admits_a_quiet_connection() {
        let server_addr: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let mut server = Endpoint::new(Config {
            max_pending_event_bytes: 1,
            ..keyed_config(1, true)
        })
        .unwrap();
        let mut clients: Vec<(SocketAddr, Endpoint, ConnectionHandle)> = (2..5u8)
            .map(|n| {
                let mut ep = Endpoint::new(keyed_config(u64::from(n), false)).unwrap();
                let conn = ep
                    .connect(Instant::from_millis(1), server_addr, &[])
                    .unwrap();
                (SocketAddr::new([10, 0, 0, n].into(), 5000), ep, conn)
            })
            .collect();
        let mut buf = alloc::vec![0u8; 1500];
        let mut now = Instant::from_millis(1);
        let mut delivered = 0;
        for turn in 0..100 {
            now += core::time::Duration::from_millis(1);
            if turn == 50 {
                let (_, ep, conn) = &mut clients[0];
                ep.send(*conn, 2, &b"hello"[..]).unwrap();
            }
            for (addr, ep, _) in &mut clients {
                ep.handle_timeout(now);
                while let Some(t) = ep.poll_transmit(now, &mut buf) {
                    server.handle_datagram(now, *addr, &buf[..t.len]);
                }
                while ep.poll_event().is_some() {}
            }
            server.handle_timeout(now);
            while let Some(t) = server.poll_transmit(now, &mut buf) {
                if let Some((_, ep, _)) = clients.iter_mut().find(|c| c.0 == t.to) {
                    ep.handle_datagram(now, server_addr, &buf[..t.len]);
                }
            }
            while let Some(e) = server.poll_event() {
                delivered += usize::from(matches!(e, Event::Message { .. }));
            }
        }
        assert_eq!(server.connection_count(), 3);
        assert_eq!(delivered, 1);
    }

    /// Spoofed Hellos, more than the reply queue holds, arrive between two polls: their
    /// Challenges take at most half of it, and a client that proved its address (its
    /// Connect carries the cookie) still gets its Accept in the next poll.
    #[test]
    fn spoofed_hellos_leave_room_in_the_reply_queue_for_accepts() {
        let config = |seed, server| Config {
            max_control_queue: 8,
            ..keyed_config(seed, server)
        };
        let client_addr: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let server_addr: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let mut client = Endpoint::new(config(1, false)).unwrap();
        let mut server = Endpoint::new(config(2, true)).unwrap();
        let now = Instant::from_millis(1);
        client.connect(now, server_addr, &[]).unwrap();
        let mut buf = alloc::vec![0u8; 1500];
        let t = client.poll_transmit(now, &mut buf).unwrap();
        let hello = buf[..t.len].to_vec();
        server.handle_datagram(now, client_addr, &hello);
        let t = server.poll_transmit(now, &mut buf).unwrap();
        client.handle_datagram(now, server_addr, &buf[..t.len]);
        let t = client.poll_transmit(now, &mut buf).unwrap();
        let connect = buf[..t.len].to_vec();
        // The flood: the client's own Hello, from 100 made-up addresses.
        for i in 0..100u16 {
            let from = SocketAddr::new([192, 0, 2, 1].into(), 1000 + i);
            server.handle_datagram(now, from, &hello);
        }
        assert_eq!(server.stats().replies_dropped, 96);
        server.handle_datagram(now, client_addr, &connect);
        let mut to_client = 0;
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            to_client += usize::from(t.to == client_addr);
        }
        assert_eq!(to_client, 1, "the Accept");
        assert_eq!(server.unproven_replies, 0);
    }

    /// An authentic packet whose acknowledgement names packets never sent (an optimistic
    /// ack: everything arrived, as fast as it was sent): its ack is not taken, and the peer
    /// that lied is not kept.
    #[test]
    fn a_protected_ack_naming_packets_never_sent_is_not_taken() {
        let mut p = TwoEndpoints::connected();
        let (client, server, c, s, now) = (&mut p.client, &mut p.server, p.c, p.s, p.now);
        let client_addr = TwoEndpoints::CLIENT;
        let mut buf = alloc::vec![0u8; 1500];
        // The server's messages are lost on the way: their packets stay in flight.
        for i in 0..5u8 {
            server.send(s, 2, alloc::vec![i; 100]).unwrap();
        }
        while server.poll_transmit(now, &mut buf).is_some() {}
        let in_flight = server.get(s).unwrap().transport.sent.bytes_in_flight();
        assert!(in_flight > 0);
        // The client claims all of them arrived, and a million more.
        let pn = client.get(c).unwrap().transport.sent.next_seq() + 1;
        let lie = sealed_ack(client, c, pn, 1_000_000, 1_000_000);
        server.handle_datagram(now, client_addr, &lie);
        // The ack is not taken, and a peer that lies is not kept.
        assert_lied(server, s);
    }

    /// A packet numbered `pn` from the client `c` of `client` carrying only an ack of
    /// `largest` and the `below` numbers under it, sealed under its keys.
    fn sealed_ack(
        client: &Endpoint,
        c: ConnectionHandle,
        pn: u64,
        largest: u64,
        below: u64,
    ) -> alloc::vec::Vec<u8> {
        use crate::wire::{Ack, DataHeader};
        let conn = client.get(c).unwrap();
        let mut ack_buf = [0u8; 64];
        let ack = Ack::build(largest as u32, 0, &[(below, 0)], &mut ack_buf).unwrap();
        let packet = Packet::Data {
            header: DataHeader {
                connection_id: conn.connection_id,
                packet_number: pn as u32,
                ping: true,
                ack: Some(ack),
                repair: None,
            },
            frames: &[],
        };
        let mut buf = alloc::vec![0u8; 200];
        let len = packet.encode(&mut buf).unwrap();
        let sealed = conn
            .keys
            .as_ref()
            .unwrap()
            .send
            .seal(pn, &mut buf, len)
            .unwrap();
        buf.truncate(sealed);
        buf
    }

    /// The connection `s` ended for a lie: `Disconnected` with `ProtocolViolation`.
    fn assert_lied(server: &mut Endpoint, s: ConnectionHandle) {
        let reason = core::iter::from_fn(|| server.poll_event()).find_map(|e| match e {
            Event::Disconnected { conn, reason } if conn == s => Some(reason),
            _ => None,
        });
        assert_eq!(reason, Some(DisconnectReason::ProtocolViolation));
    }

    /// A connection not reached through the hub (the hub connection itself, above all)
    /// takes nothing from a relay address: a hostile hub, which holds the hub connection's
    /// keys, could otherwise tunnel its packets in from a made-up member, have the path
    /// validated and move the hub connection onto the relay, where every packet of it would
    /// be tunnelled through itself and never leave (each `poll_transmit` wrapping and
    /// unwrapping them until the window filled).
    #[test]
    fn a_connection_not_reached_through_the_hub_takes_nothing_from_a_relay_address() {
        let mut p = TwoEndpoints::connected();
        let (c, s) = (p.c, p.s);
        p.client.set_relay(c, 5);
        let now = p.now;
        let pn = p.server.get(s).unwrap().transport.sent.next_seq() + 1;
        let packet = sealed_ack(&p.server, s, pn, 0, 0);
        let relay = crate::hub::relay_address(77);
        let before = p.client.stats().drops.get(DropReason::Unexpected);
        p.client.handle_one(now, relay, &packet);
        let conn = p.client.get(c).unwrap();
        assert!(
            !conn.transport.paths.has_candidates(),
            "no path to validate"
        );
        assert_eq!(conn.remote(), TwoEndpoints::SERVER);
        let drops = p.client.stats().drops.get(DropReason::Unexpected);
        assert_eq!(drops, before + 1);
    }

    /// Packets naming a connection that fail to authenticate are counted on it, and it
    /// closes at `INTEGRITY_LIMIT` of them (each forgery tried has a tiny chance, and they
    /// add up), telling the peer why; below it, it lives on.
    #[test]
    fn a_connection_closes_when_forgeries_reach_the_integrity_limit() {
        let mut p = TwoEndpoints::connected();
        let (c, s, now) = (p.c, p.s, p.now);
        let forged = |p: &TwoEndpoints, nth: u64| {
            let pn = p.client.get(c).unwrap().transport.sent.next_seq() + nth;
            let mut packet = sealed_ack(&p.client, c, pn, 0, 0);
            *packet.last_mut().unwrap() ^= 1;
            packet
        };
        let forgeries = |p: &TwoEndpoints| p.server.get(s).unwrap().stats.rare.read().forgeries;
        let forgery = forged(&p, 0);
        p.server
            .handle_datagram(now, TwoEndpoints::CLIENT, &forgery);
        assert_eq!(forgeries(&p), 1, "counted on the connection");
        assert!(p.server.is_connected(s));
        // Far along: the last one below the limit leaves it open, the one reaching it not.
        let limit = crate::INTEGRITY_LIMIT;
        p.server.get_mut(s).unwrap().stats.rare.get().forgeries = limit - 2;
        let forgery = forged(&p, 1);
        p.server
            .handle_datagram(now, TwoEndpoints::CLIENT, &forgery);
        assert_eq!(forgeries(&p), limit - 1);
        assert!(p.server.is_connected(s), "open below the limit");
        let forgery = forged(&p, 2);
        p.server
            .handle_datagram(now, TwoEndpoints::CLIENT, &forgery);
        let reason = core::iter::from_fn(|| p.server.poll_event()).find_map(|e| match e {
            Event::Disconnected { conn, reason } if conn == s => Some(reason),
            _ => None,
        });
        assert_eq!(reason, Some(DisconnectReason::IntegrityLimit));
        // Each forgery is one drop, the connection's counters folded in or not.
        let drops = p.server.stats().drops;
        assert_eq!(drops.get(DropReason::Unauthenticated), 3);
        // The peer is told why.
        let mut told = None;
        while let Some(t) = p.server.poll_transmit(now, &mut p.buf) {
            p.client
                .handle_datagram(now, TwoEndpoints::SERVER, &p.buf[..t.len]);
        }
        while let Some(e) = p.client.poll_event() {
            if let Event::Disconnected { conn, reason } = e {
                assert_eq!(conn, c);
                told = Some(reason);
            }
        }
        assert_eq!(told, Some(DisconnectReason::IntegrityLimit));
    }

    /// A sender held back by its window leaves a packet number unused now and then, at
    /// random: a peer that acknowledges what it never got (an optimistic ack, to be sent
    /// more, faster) names it sooner or later, its acknowledgement is not taken and its
    /// connection is closed. One that leaves it out is taken.
    #[test]
    fn an_ack_naming_a_packet_number_left_unused_is_not_taken() {
        let mut p = TwoEndpoints::connected();
        let (c, s) = (p.c, p.s);
        let client_addr = TwoEndpoints::CLIENT;
        // A bulk transfer: the window fills, and within a few hundred packets one number is
        // left unused.
        for i in 0..2000u16 {
            p.server.send(s, 2, alloc::vec![i as u8; 1000]).unwrap();
        }
        /// The server's sent-packet records.
        fn sent(p: &TwoEndpoints) -> &crate::transport::recovery::SentPackets {
            &p.server.get(p.s).unwrap().transport.sent
        }
        let mut turns = 0;
        while sent(&p).last_skipped().is_none() {
            p.turn();
            turns += 1;
            assert!(turns < 10_000, "no number was left unused");
        }
        // Honest acknowledgements go on being taken.
        for _ in 0..20 {
            p.turn();
        }
        assert_eq!(
            p.server
                .get(s)
                .unwrap()
                .stats()
                .drops
                .get(DropReason::ProtocolViolation),
            0
        );
        // Then the server's packets are lost on the way: they stay in flight.
        let now = p.now;
        for i in 0..5u8 {
            p.server.send(s, 2, alloc::vec![i; 100]).unwrap();
        }
        while p.server.poll_transmit(now, &mut p.buf).is_some() {}
        let in_flight = sent(&p).bytes_in_flight();
        assert!(in_flight > 0);
        let largest = sent(&p).next_seq() - 1;
        // (The newest unused number: the transfer went on meanwhile.)
        let skipped = sent(&p).last_skipped().unwrap();
        let lie = |from: u64, nth: u64, p: &mut TwoEndpoints| {
            let pn = p.client.get(c).unwrap().transport.sent.next_seq() + nth;
            let lie = sealed_ack(&p.client, c, pn, largest, largest - from);
            p.server.handle_datagram(now, client_addr, &lie);
        };
        // "Everything from just past the unused number arrived" cannot be told from the
        // truth: taken.
        lie(skipped + 1, 0, &mut p);
        let after = p.server.get(s).unwrap();
        assert_eq!(after.transport.sent.bytes_in_flight(), 0);
        assert_eq!(after.stats().drops.get(DropReason::ProtocolViolation), 0);
        assert!(in_flight > 0);
        // "Everything since the unused number arrived" is a lie: not taken, and the peer
        // is not kept.
        while p.server.poll_event().is_some() {}
        lie(skipped, 1, &mut p);
        assert_lied(&mut p.server, s);
    }

    /// An endpoint that may hold 400 connections, and the address of server `i` (a client
    /// with hundreds of connections: its wake-ups become a wheel).
    fn endpoint_of_many() -> (Endpoint, impl Fn(u32) -> SocketAddr) {
        let ep = Endpoint::new(Config {
            seed: 1,
            secret_seed: Some(crate::SecretSeed::insecure_from_u64(1)),
            accept_incoming: false,
            max_connections: 400,
            ..Config::default()
        })
        .expect("valid");
        let server =
            |i: u32| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 4000));
        (ep, server)
    }

    /// A rebuild that takes the wake-ups from a wheel back to a heap (its connections fell
    /// below 48) settles the heap's front: `poll_timeout` is exact again.
    #[test]
    fn a_rebuild_from_a_wheel_to_a_heap_settles_its_front() {
        let (mut ep, server) = endpoint_of_many();
        // The first connection's deadlines are the earliest: it connects a millisecond first.
        let first = ep
            .connect(Instant::from_millis(1), server(0), b"")
            .expect("connect");
        let later = Instant::from_millis(2);
        let others: Vec<_> = (1..300)
            .map(|i| ep.connect(later, server(i), b"").expect("connect"))
            .collect();
        assert!(ep.wakeups.front().is_none(), "300 wake-ups are a wheel");
        // Its deadline moves back without the entry being moved (as while the connection
        // is out being worked on): the entry is stale until the rebuild.
        let slot = &mut ep.slots[first.index()];
        let queued = slot.scheduled;
        slot.due = queued + 10_000_000;
        for &c in &others[40..] {
            ep.disconnect(c, 0);
        }
        assert_eq!(ep.live, 41);
        // The next call given a time rebuilds (4 x 41 + 64 < 256: a heap), nothing due yet.
        ep.handle_timeout(later);
        assert!(ep.wakeups.front().is_some(), "a heap again");
        ep.check_wakeups();
        assert!(ep.poll_timeout().is_some_and(|t| t.as_micros() > queued));
    }

    /// A server's wheel moves a connection's wake-up with its deadline: one pushed back (as
    /// when an acknowledgement stops the ack timer) no longer wakes the driver at the old
    /// time, and a closed connection's wake-up goes with it. (The wheel used to keep both
    /// until they came due: three of every four of a 10,000-client server's wake-ups.)
    #[test]
    fn a_wheel_never_wakes_the_driver_for_a_deadline_that_moved_or_a_connection_gone() {
        let (mut ep, server) = endpoint_of_many();
        let first = ep
            .connect(Instant::from_millis(1), server(0), b"")
            .expect("connect");
        let second = ep
            .connect(Instant::from_millis(2), server(1), b"")
            .expect("connect");
        // The others a second later: their deadlines lie in other slots of the wheel (a
        // slot of more than 32 whose earliest moves may keep a bound below it).
        let later = Instant::from_millis(1_000);
        for i in 2..300 {
            ep.connect(later, server(i), b"").expect("connect");
        }
        ep.handle_timeout(later);
        assert!(
            ep.wakeups.is_wheel(),
            "300 connections' wake-ups are a wheel"
        );
        ep.check_wakeups();
        let at = |ep: &Endpoint, c: ConnectionHandle| ep.slots[c.index()].due;
        assert_eq!(
            ep.poll_timeout().map(Instant::as_micros),
            Some(at(&ep, first))
        );
        // The first connection's deadline moves back, as `finish` finds it.
        let pushed = at(&ep, first) + 10_000_000;
        ep.slots[first.index()].due = pushed;
        ep.schedule(first.index() as u32);
        ep.check_wakeups();
        assert_eq!(
            ep.poll_timeout().map(Instant::as_micros),
            Some(at(&ep, second))
        );
        // The second one closes: its wake-up goes too.
        ep.disconnect(second, 0);
        ep.check_wakeups();
        assert!(ep
            .poll_timeout()
            .is_some_and(|t| t.as_micros() > at(&ep, second) && t.as_micros() < pushed));
    }

    /// A closed connection's handle never names a later one, even after its slot's
    /// generation ran out: that slot is retired, where a wrap would have given the first
    /// handle it ever held again.
    #[test]
    fn a_slot_whose_generation_would_wrap_is_retired_not_reused() {
        let mut ep = Endpoint::new(Config {
            seed: 1,
            secret_seed: Some(crate::SecretSeed::insecure_from_u64(1)),
            accept_incoming: false,
            ..Config::default()
        })
        .expect("valid");
        let server = SocketAddr::from(([10, 0, 0, 1], 4000));
        let now = Instant::from_millis(1);
        let first = ep.connect(now, server, b"").expect("connect");
        ep.disconnect(first, 0);
        assert_eq!(ep.next_slot_index(), 0, "a freed slot is reused");
        ep.slots[0].generation = u32::MAX;
        let last = ep.connect(now, server, b"").expect("connect");
        assert_eq!((last.index(), last.generation), (0, u32::MAX));
        ep.disconnect(last, 0);
        assert!(!ep.free_slots.contains(&0), "retired");
        let next = ep.connect(now, server, b"").expect("connect");
        assert_ne!(next, first);
        assert_ne!(next, last);
        assert_eq!(next.index(), 1);
    }

    /// The fields a datagram, a send or a poll reads sit in the endpoint's first eight cache
    /// lines (the per-datagram counters included), and the config's working settings in
    /// its first three, starting on a line: a field added in the wrong place, or grown,
    /// fails here rather than silently costing a cold endpoint a miss per datagram. (27
    /// lines in all since the budget of path probes: its setting, its bucket and its
    /// counter, 32 bytes past the 26th.)
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_fields_every_datagram_touches_share_the_first_cache_lines() {
        use core::mem::{align_of, offset_of, size_of};
        assert_eq!(align_of::<Endpoint>(), 64);
        let hot_counters_end =
            offset_of!(Endpoint, stats) + offset_of!(EndpointStats, stale_wakeups) + 8;
        assert!(
            hot_counters_end <= HOT_BYTES,
            "hot fields end at byte {hot_counters_end}"
        );
        assert_eq!(offset_of!(Endpoint, config) % 64, 0);
        let settings_end = offset_of!(Config, accept_incoming) + 1;
        assert!(
            settings_end <= CONFIG_HOT_BYTES,
            "working settings end at byte {settings_end}"
        );
        assert!(
            size_of::<Endpoint>() <= 1728,
            "Endpoint is {} bytes",
            size_of::<Endpoint>()
        );
    }
}
