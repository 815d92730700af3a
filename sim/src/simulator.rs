//! The discrete-event engine: nodes, the virtual clock, the agenda, and link conditions.

mod agenda;
mod app;
mod conditions;
mod network;
mod prefetch;

use core::fmt;
use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::collections::VecDeque;

use shoal_proto::{
    Config, ConfigError, ConnectError, ConnectionHandle, Endpoint, Event, Instant, MemoryHint,
};

use crate::link::{
    DropCause, LinkConfig, LinkConfigError, LinkDrops, LinkState, LinkStates, LinkVerdict,
};
use crate::nat::{Nats, Route};
use crate::rng::{splitmix64, SimRng};
use crate::trace::{Fate, Trace, TraceHasher, TraceRecord};

pub(crate) use agenda::FastMap;
use agenda::{Agenda, FastSet, Item, What};
pub use app::{Application, NodeContext};
use app::{QueueEvents, QueueLimit};
use conditions::{Change, Partition};
pub use network::NodeNetwork;
pub use prefetch::prefetch;

/// Port every node starts on.
const BASE_PORT: u16 = 7000;
/// Most nodes: their addresses are `10.x.y.z` with `x.y.z` the node number plus one.
pub const MAX_NODES: usize = (1 << 24) - 2;
/// Wake-ups of one node at one instant after which the simulator assumes the endpoint keeps
/// asking to be woken "now" without progress, and moves it on by a microsecond.
const MAX_WAKES_PER_INSTANT: u32 = 10_000;
/// Large enough for any datagram an endpoint writes (UDP's maximum payload).
const SCRATCH_LEN: usize = 65_535;

/// Names one node of a [`Simulator`]; nodes are numbered from 0 in the order they were added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The node's number as an index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node#{}", self.0)
    }
}

/// Names a partition scheduled with [`Simulator::schedule_partition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PartitionId(pub usize);

/// Settings of a whole simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The one seed everything random follows from: link decisions, and each endpoint's own
    /// [`Config::seed`], which [`Simulator::add_node`] derives from it.
    pub seed: u64,
    /// The link used between every pair of nodes without an override.
    pub default_link: LinkConfig,
    /// Events kept per node by [`Simulator::run_until`] for [`Simulator::next_event`]; further
    /// events are dropped and counted in [`SimStats::events_dropped`].
    pub max_queued_events: usize,
    /// Datagrams kept in the trace ([`Simulator::trace`]), the most recent ones; 0 keeps none.
    /// The [`trace hash`](Simulator::trace_hash) covers every datagram either way.
    pub trace_capacity: usize,
    /// Runs the simulation a window at a time, node by node: everything due within the
    /// shortest link latency (the *lookahead*) is taken node after node, each node's share
    /// in time order, instead of everything in one time order. Nothing one node does can
    /// reach another sooner than a link's latency, so every node sees exactly the inputs it
    /// would have, at the same times; what changes is only the order in which different
    /// nodes' callbacks interleave (and so the order random draws are made in, and the trace
    /// hash), and which of two happenings at one node in the same microsecond, caused by two
    /// different nodes, comes first. With thousands of nodes each one is then loaded into the
    /// cache once per window rather than once per happening, and the nodes are visited in
    /// memory order. Runs stay reproducible. Used only while no NAT exists and every link has a latency; otherwise
    /// (and by [`Simulator::step_with`]) happenings are taken one at a time. Default `false`:
    /// an application whose callbacks share state across nodes may rely on the global order.
    pub node_batching: bool,
    /// Prefetches what the next turns will read ([`Endpoint::memory_hints`]) a few turns
    /// ahead: the next nodes of a window (while batching), a node's next datagrams, a
    /// server's transmit queue, and the connections an application sweeps over
    /// ([`NodeContext::memory_hint`]). With thousands of nodes their cache misses then
    /// overlap. It changes nothing but speed (the trace hash is the same either way).
    /// Default: on x86-64, the one architecture with a prefetch here (elsewhere the hints
    /// would cost their bookkeeping for nothing).
    pub memory_hints: bool,
    /// Times each happening's turn by the wall clock, into [`Simulator::turn_times`]: where
    /// a run's time goes, by kind of happening and by the node's role. Two clock reads a
    /// step; changes nothing else. Default `false`.
    pub time_turns: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            default_link: LinkConfig::default(),
            max_queued_events: 65_536,
            trace_capacity: 0,
            node_batching: false,
            memory_hints: cfg!(target_arch = "x86_64"),
            time_turns: false,
        }
    }
}

/// Why a node could not be added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddNodeError {
    /// The endpoint configuration is invalid.
    Config(ConfigError),
    /// The simulator has [`MAX_NODES`] nodes already.
    TooManyNodes,
    /// The NAT's inside network has no address left.
    NoAddressLeft,
}

impl fmt::Display for AddNodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddNodeError::Config(e) => write!(f, "invalid endpoint configuration: {e}"),
            AddNodeError::TooManyNodes => {
                write!(f, "the simulator holds at most {MAX_NODES} nodes")
            }
            AddNodeError::NoAddressLeft => f.write_str("the NAT's inside network is full"),
        }
    }
}

impl std::error::Error for AddNodeError {}

/// Why a node could not move to a new address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebindError {
    /// Another node has that address.
    AddressInUse(SocketAddr),
}

impl fmt::Display for RebindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RebindError::AddressInUse(a) => write!(f, "address {a} belongs to another node"),
        }
    }
}

impl std::error::Error for RebindError {}

/// Counters of the simulated network and engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams the endpoints sent.
    pub datagrams_sent: u64,
    /// Bytes the endpoints sent.
    pub bytes_sent: u64,
    /// Datagrams handed to a receiving endpoint (duplicates included).
    pub datagrams_delivered: u64,
    /// Bytes handed to a receiving endpoint.
    pub bytes_delivered: u64,
    /// Extra copies the network made.
    pub duplicates: u64,
    /// Datagrams held back by the link's reordering.
    pub reordered: u64,
    /// Datagrams the network dropped, by cause.
    pub drops: LinkDrops,
    /// Agenda entries processed (arrivals, wake-ups, timers, condition changes).
    pub steps: u64,
    /// Lookahead windows run node by node ([`SimConfig::node_batching`]); 0 when every
    /// happening was taken in one time order.
    pub windows: u64,
    /// Endpoint wake-ups for `handle_timeout`.
    pub wakeups: u64,
    /// Wake-ups skipped because the node had rescheduled (lazy invalidation).
    pub stale_wakeups: u64,
    /// Application timers fired.
    pub timers_fired: u64,
    /// Events the endpoints emitted.
    pub events: u64,
    /// Events dropped because a node's queue was full (only with [`Simulator::run_until`]).
    pub events_dropped: u64,
    /// Times an endpoint asked to be woken at the current instant over and over without
    /// progress (each time it was moved on by a microsecond). Non-zero means a protocol bug.
    pub timer_spins: u64,
}

/// Turns of one kind ([`TurnTimes`]): how many, and the wall time they took in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnTime {
    /// Turns taken.
    pub count: u64,
    /// Wall-clock nanoseconds they took, the node's callbacks and sends included.
    pub nanos: u64,
}

impl TurnTime {
    /// Mean nanoseconds a turn (0 without turns).
    pub fn mean_nanos(&self) -> u64 {
        self.nanos.checked_div(self.count).unwrap_or(0)
    }
}

/// Where a run's wall time went, by kind of happening ([`SimConfig::time_turns`]). Each pair
/// is `[clients, servers]`: a server is a node holding more than two connections when its
/// turn begins. What is not in any row is the engine's own work between turns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnTimes {
    /// Wake-ups for `handle_timeout`, stale ones (skipped) included.
    pub wakeups: [TurnTime; 2],
    /// Datagrams handed to their node.
    pub arrivals: [TurnTime; 2],
    /// Application timers.
    pub timers: [TurnTime; 2],
    /// Changes of network conditions.
    pub changes: TurnTime,
}

impl TurnTimes {
    /// The sum of every row.
    pub fn total(&self) -> TurnTime {
        let rows = [self.wakeups, self.arrivals, self.timers]
            .into_iter()
            .flatten()
            .chain([self.changes]);
        rows.fold(TurnTime::default(), |a, r| TurnTime {
            count: a.count + r.count,
            nanos: a.nanos + r.nanos,
        })
    }
}

impl fmt::Display for TurnTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("client wake-ups", self.wakeups[0]),
            ("client arrivals", self.arrivals[0]),
            ("client timers", self.timers[0]),
            ("server wake-ups", self.wakeups[1]),
            ("server arrivals", self.arrivals[1]),
            ("server timers", self.timers[1]),
            ("condition changes", self.changes),
        ];
        for (name, r) in rows.iter().filter(|(_, r)| r.count > 0) {
            writeln!(
                f,
                "{name:<18} {:>12} x {:>7} ns = {:>8.2} s",
                r.count,
                r.mean_nanos(),
                r.nanos as f64 / 1e9
            )?;
        }
        Ok(())
    }
}

impl SimStats {
    /// Datagrams sent but neither delivered nor dropped yet.
    pub fn in_flight(&self) -> u64 {
        (self.datagrams_sent + self.duplicates)
            .saturating_sub(self.datagrams_delivered + self.drops.total())
    }
}

/// A node: an endpoint plus the simulator's bookkeeping for it.
pub(crate) struct Node {
    endpoint: Endpoint,
    rebinds: u16,
    touched: bool,
    /// Whether the application named connections of this node since its last drain
    /// ([`NodeContext::memory_hint`]): that drain then goes without the engine's own
    /// transmit-queue hints (see `service`).
    app_named: core::cell::Cell<bool>,
    events: VecDeque<(Instant, Event)>,
    /// How many of `events` are `Connected` (so `Network::peers` scans them only then).
    connects_waiting: usize,
    /// The NAT whose inside network the node is on (`None`: the public network).
    pub(crate) nat: Option<u32>,
}

/// A node's wake-ups, as the engine tracks them.
#[derive(Clone, Copy, Debug, Default)]
struct Wakes {
    /// The wake-up the agenda holds a live entry for.
    at: Option<Instant>,
    /// When the node was last woken, and how many times since at that instant (a node that
    /// keeps asking for "now" is moved on: see `MAX_WAKES_PER_INSTANT`).
    last: Instant,
    at_last: u32,
}

/// A datagram on the wire. One that fits (nearly every game datagram) is stored right
/// behind its record, so that the record and the datagram's header are one cache line when
/// it arrives, some 40 ms after it was written.
#[derive(Debug)]
#[repr(C)]
struct InFlight {
    from: SocketAddr,
    /// The sending node (for `Application::upcoming`).
    from_node: u32,
    /// Bytes of the datagram in `inline`; `u16::MAX`: it is in `spill`.
    len: u16,
    inline: [u8; INLINE_DATAGRAM],
    /// A datagram longer than `INLINE_DATAGRAM` (its buffer is kept for the next one).
    spill: Vec<u8>,
}

/// Bytes of a datagram an in-flight record holds itself (the record is then 304 bytes). A
/// game's datagrams fit, coded ones too: a state packet carrying a repair of the one before
/// is some 170-190 bytes, and with 144 here each spilled into a buffer of its own, a second
/// cache miss when it arrived.
const INLINE_DATAGRAM: usize = 240;

impl InFlight {
    fn bytes(&self) -> &[u8] {
        match self.inline.get(..usize::from(self.len)) {
            Some(inline) => inline,
            None => &self.spill,
        }
    }

    fn store(&mut self, bytes: &[u8]) {
        match self.inline.get_mut(..bytes.len()) {
            Some(inline) => {
                inline.copy_from_slice(bytes);
                self.len = bytes.len() as u16;
            }
            None => {
                self.spill.clear();
                self.spill.extend_from_slice(bytes);
                self.len = u16::MAX;
            }
        }
    }
}

/// A deterministic discrete-event network simulator running many Shoal endpoints.
///
/// Each node owns a [`shoal_proto::Endpoint`] — the same type the socket drivers use — and an
/// address `10.x.y.z:7000` derived from its number. The virtual clock jumps straight from one
/// happening to the next: a datagram arriving, a node's endpoint timer
/// ([`Endpoint::poll_timeout`]), an application timer, or a scheduled change of conditions.
/// Nothing scans all nodes per step, so runs with 10,000 nodes stay fast.
///
/// After every input to a node the simulator drains the node's events (to an
/// [`Application`], or to a per-node queue with [`run_until`](Self::run_until)) and its
/// datagrams (into the links), then asks it when to wake next.
///
/// One seeded [`SimRng`] decides everything random, and simultaneous happenings run in the
/// order they were scheduled, so the same seed and the same calls give the same run bit for
/// bit; [`trace_hash`](Self::trace_hash) summarises it.
pub struct Simulator {
    pub(crate) config: SimConfig,
    pub(crate) now: Instant,
    rng: SimRng,
    pub(crate) nodes: Vec<Node>,
    pub(crate) addresses: Vec<SocketAddr>,
    /// Whether each node is public and still at the address it was created with, where
    /// `public_node_at` finds it from the address alone (a byte per node, hot in the cache,
    /// where its address would be a miss per datagram with thousands of nodes).
    pub(crate) at_first_address: Vec<bool>,
    /// Nodes on the public network, by address (those behind a NAT are in its table).
    pub(crate) owners: FastMap<SocketAddr, u32>,
    pub(crate) nats: Nats,
    agenda: Agenda,
    /// Per node, its wake-ups: apart from the nodes (an endpoint is over a kilobyte) so that
    /// a stale wake-up is recognised, and a live one counted, without touching the node.
    wakes: Vec<Wakes>,
    /// Nodes behind a NAT (while there are none, every node is public).
    private_nodes: usize,
    in_flight: Vec<InFlight>,
    free_in_flight: Vec<u32>,
    changes: Vec<Option<Change>>,
    default_link: LinkConfig,
    links: FastMap<(u32, u32), LinkConfig>,
    link_states: LinkStates,
    links_down: FastSet<(u32, u32)>,
    partitions: Vec<Partition>,
    active_partitions: Vec<usize>,
    touched: Vec<u32>,
    /// The entries of the window being run, as drained (time order) and by node (kept for
    /// their buffers).
    drained: Vec<Item>,
    window: Vec<Item>,
    /// Where each node's entries start in `window` (counting sort).
    node_starts: Vec<u32>,
    /// `by_node`'s sorting buffer.
    sort_scratch: Vec<Item>,
    /// The nodes of the window being run, in turn, each with where its share of the window
    /// starts (kept for its buffer).
    turns: Vec<(u32, u32)>,
    /// A window is being run: the wake-up agenda is not rebuilt until it ends.
    in_window: bool,
    scratch: Vec<u8>,
    stats: SimStats,
    turn_times: TurnTimes,
    trace: Trace,
    hasher: TraceHasher,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    // ------------------------------------------------------------------ construction, nodes

    /// A simulator with no nodes, at time zero.
    pub fn new(config: SimConfig) -> Result<Self, LinkConfigError> {
        config.default_link.validate()?;
        Ok(Simulator {
            now: Instant::ZERO,
            rng: SimRng::new(config.seed),
            nodes: Vec::new(),
            addresses: Vec::new(),
            at_first_address: Vec::new(),
            owners: FastMap::default(),
            nats: Nats::default(),
            agenda: Agenda::with_write_ahead(config.memory_hints),
            wakes: Vec::new(),
            private_nodes: 0,
            in_flight: Vec::new(),
            free_in_flight: Vec::new(),
            changes: Vec::new(),
            default_link: config.default_link,
            links: FastMap::default(),
            link_states: LinkStates::default(),
            links_down: FastSet::default(),
            partitions: Vec::new(),
            active_partitions: Vec::new(),
            touched: Vec::new(),
            drained: Vec::new(),
            window: Vec::new(),
            node_starts: Vec::new(),
            sort_scratch: Vec::new(),
            turns: Vec::new(),
            in_window: false,
            scratch: vec![0; SCRATCH_LEN],
            stats: SimStats::default(),
            turn_times: TurnTimes::default(),
            trace: Trace {
                capacity: config.trace_capacity,
                ..Trace::default()
            },
            hasher: TraceHasher::default(),
            config,
        })
    }

    /// Adds a node running an endpoint with `config`, whose [`Config::seed`] is replaced by one
    /// derived from the simulation seed and the node number (so every endpoint has its own,
    /// and the whole run follows from [`SimConfig::seed`]). Set
    /// [`Config::accept_incoming`] to `false` for pure clients.
    pub fn add_node(&mut self, config: Config) -> Result<NodeId, AddNodeError> {
        self.push_node(config, None)
    }

    /// Adds a node on the public network (`nat` `None`) or inside a NAT's network.
    pub(crate) fn push_node(
        &mut self,
        mut config: Config,
        nat: Option<u32>,
    ) -> Result<NodeId, AddNodeError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(AddNodeError::TooManyNodes);
        }
        let index = self.nodes.len() as u32;
        let mut seed_state = self.config.seed ^ (u64::from(index) << 32 | 0x5EED);
        config.seed = splitmix64(&mut seed_state);
        // A simulation must repeat: the node's key material follows from the run's seed.
        if config.secret_seed.is_none() {
            config.secret_seed = Some(shoal_proto::SecretSeed::insecure_from_u64(splitmix64(
                &mut seed_state,
            )));
        }
        let endpoint = Endpoint::new(config).map_err(AddNodeError::Config)?;
        let ip = match nat {
            None => {
                let n = index + 1;
                Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8)
            }
            // Skips an address a rebound node or a nested NAT took already.
            Some(r) => loop {
                let ip = self.nats.nats[r as usize]
                    .allocate_host()
                    .ok_or(AddNodeError::NoAddressLeft)?;
                let taken = self.nats.has_nat_at(nat, ip.into())
                    || self.nats.nats[r as usize]
                        .inside_nodes
                        .contains_key(&SocketAddr::new(ip.into(), BASE_PORT));
                if !taken {
                    break ip;
                }
            },
        };
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, BASE_PORT));
        self.nodes.push(Node {
            endpoint,
            rebinds: 0,
            touched: false,
            app_named: core::cell::Cell::new(false),
            events: VecDeque::new(),
            connects_waiting: 0,
            nat,
        });
        self.wakes.push(Wakes::default());
        if nat.is_some() {
            self.private_nodes += 1;
        }
        self.addresses.push(addr);
        self.at_first_address.push(nat.is_none());
        self.owners_mut(nat).insert(addr, index);
        Ok(NodeId(index))
    }

    /// The nodes of the public network (`None`) or of a NAT's inside network, by address.
    pub(crate) fn owners_mut(&mut self, nat: Option<u32>) -> &mut FastMap<SocketAddr, u32> {
        match nat {
            None => &mut self.owners,
            Some(r) => &mut self.nats.nats[r as usize].inside_nodes,
        }
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Every node, in order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// A node's current address (it changes when the node is [rebound](Self::rebind)). For a
    /// node behind a NAT, its private address; see [`public_address`](Self::public_address).
    ///
    /// # Panics
    /// If `node` is not a node of this simulator (as do the other methods taking a `NodeId`).
    pub fn address(&self, node: NodeId) -> SocketAddr {
        self.addresses[node.index()]
    }

    /// The node on the public network that owns `addr` now, if any.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.owners.get(&addr).map(|&i| NodeId(i))
    }

    /// A node's endpoint, to read its state and stats.
    pub fn endpoint(&self, node: NodeId) -> &Endpoint {
        &self.nodes[node.index()].endpoint
    }

    /// A node's endpoint, to send or connect from outside a callback. Whatever it has to send
    /// goes out at the current simulated time, when the simulation next runs.
    pub fn endpoint_mut(&mut self, node: NodeId) -> &mut Endpoint {
        self.touch(node.0);
        &mut self.nodes[node.index()].endpoint
    }

    /// Starts a connection from `from` to `to`'s current address, passing `data` to its
    /// accept hook. `to`'s own address: reachable when `to` is public or on the same NAT's
    /// inside network as `from`; otherwise use [`connect_to`](Self::connect_to) with a
    /// public mapping.
    pub fn connect(
        &mut self,
        from: NodeId,
        to: NodeId,
        data: &[u8],
    ) -> Result<ConnectionHandle, ConnectError> {
        let now = self.now;
        let remote = self.address(to);
        self.endpoint_mut(from).connect(now, remote, data)
    }

    /// Starts a connection from `from` to the address `remote` (such as a NAT's public
    /// mapping of a peer), passing `data` to its accept hook.
    pub fn connect_to(
        &mut self,
        from: NodeId,
        remote: SocketAddr,
        data: &[u8],
    ) -> Result<ConnectionHandle, ConnectError> {
        let now = self.now;
        self.endpoint_mut(from).connect(now, remote, data)
    }

    /// The oldest event `node` emitted under [`run_until`](Self::run_until), with the time it
    /// was emitted.
    pub fn next_event(&mut self, node: NodeId) -> Option<(Instant, Event)> {
        let node = &mut self.nodes[node.index()];
        let taken = node.events.pop_front();
        if let Some((_, Event::Connected { .. })) = taken {
            node.connects_waiting -= 1;
        }
        taken
    }

    /// Connections whose `Connected` event `node` emitted under
    /// [`run_until`](Self::run_until) and nobody has taken yet.
    pub(crate) fn connects_waiting(&self, node: NodeId) -> Vec<ConnectionHandle> {
        let node = &self.nodes[node.index()];
        if node.connects_waiting == 0 {
            return Vec::new();
        }
        node.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Connected { conn, .. } => Some(*conn),
                _ => None,
            })
            .collect()
    }

    /// Calls [`Application::on_timer`] for `node` with `token` at `at` (or now, if earlier).
    /// Under [`run_until`](Self::run_until) timers fire and do nothing.
    pub fn set_timer(&mut self, node: NodeId, at: Instant, token: u64) {
        assert!(node.index() < self.nodes.len(), "{node} does not exist");
        self.agenda.push(
            at.max(self.now),
            What::Timer {
                node: node.0,
                token,
            },
        );
    }

    // ------------------------------------------------------------------ getters

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// When the next thing is scheduled to happen, if anything is.
    pub fn next_event_time(&self) -> Option<Instant> {
        if self.touched.is_empty() {
            self.agenda.first_time()
        } else {
            Some(self.now)
        }
    }

    /// Where the run's wall time went, by happening ([`SimConfig::time_turns`]; all zero
    /// without it).
    pub fn turn_times(&self) -> &TurnTimes {
        &self.turn_times
    }

    /// Network and engine counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// A hash of everything that happened so far: every datagram (time, addresses, fate,
    /// bytes) and every event of every node, in order. Two runs with equal hashes did the
    /// same thing (FNV-1a over 64-bit words; not cryptographic).
    pub fn trace_hash(&self) -> u64 {
        self.hasher.finish()
    }

    /// The most recent datagrams, oldest first, up to [`SimConfig::trace_capacity`].
    pub fn trace(&self) -> impl Iterator<Item = &TraceRecord> {
        self.trace.records.iter()
    }

    /// Datagrams that fell out of (or never entered) the bounded trace.
    pub fn trace_evicted(&self) -> u64 {
        self.trace.evicted
    }

    /// The simulation's random generator, for drawing reproducible values outside callbacks.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    // ------------------------------------------------------------------ running

    /// Runs until `deadline`, keeping each node's events for [`next_event`](Self::next_event).
    /// The clock ends at `deadline`.
    pub fn run_until(&mut self, deadline: Instant) {
        self.run_until_with(deadline, &mut QueueEvents);
    }

    /// Runs for `duration` of simulated time; see [`run_until`](Self::run_until).
    pub fn run_for(&mut self, duration: core::time::Duration) {
        let deadline = self.now + duration;
        self.run_until(deadline);
    }

    /// Runs until `deadline`, handing events and timers to `app`. The clock ends at
    /// `deadline`.
    pub fn run_until_with<A: Application>(&mut self, deadline: Instant, app: &mut A) {
        self.flush_touched(app);
        while let Some(start) = self.agenda.peek_time().filter(|&t| t <= deadline) {
            match self.lookahead() {
                Some(lookahead) => {
                    // End exclusive: a window never reaches past `deadline`.
                    let end =
                        (start + lookahead).min(deadline + core::time::Duration::from_micros(1));
                    self.run_window(end, app);
                }
                None => {
                    self.step_with(app);
                }
            }
        }
        self.now = self.now.max(deadline);
    }

    /// How far ahead of the earliest happening a window may reach (see
    /// [`SimConfig::node_batching`]): the shortest latency of any link, while batching is on,
    /// no NAT exists (a NAT's mappings are shared by its nodes and age with time) and that
    /// latency is not zero.
    fn lookahead(&self) -> Option<core::time::Duration> {
        if !self.config.node_batching || !self.nats.is_empty() {
            return None;
        }
        let shortest = self
            .links
            .values()
            .map(|l| l.latency)
            .fold(self.default_link.latency, core::time::Duration::min);
        (shortest > core::time::Duration::ZERO).then_some(shortest)
    }

    /// Runs everything due before `end`, node by node in node order, each node's happenings
    /// (and what it schedules for itself before `end`) in time order. A node's inputs in the
    /// window were all scheduled before it began: a datagram sent within it arrives at
    /// `end` or later. A change of conditions due within the window ends it early.
    fn run_window<A: Application>(&mut self, end: Instant, app: &mut A) {
        self.stats.windows += 1;
        let mut drained = core::mem::take(&mut self.drained);
        drained.clear();
        let change = self.agenda.drain_before(end, &mut drained);
        let end = change.map_or(end, |c| c.at);
        let mut window = core::mem::take(&mut self.window);
        self.by_node(&drained, &mut window);
        self.drained = drained;
        self.in_window = true;
        let hinting = self.config.memory_hints;
        let mut turns = core::mem::take(&mut self.turns);
        turns.clear();
        if hinting {
            let mut start = 0;
            turns.extend(window.chunk_by(|a, b| a.node() == b.node()).map(|s| {
                let turn = (s[0].node(), start as u32);
                start += s.len();
                turn
            }));
        }
        let mut latest = self.now;
        let mut i = 0;
        let mut turn = 0;
        while i < window.len() {
            let node = window[i].node();
            if hinting {
                self.hint_nodes_ahead(&turns, &window, turn, app);
                turn += 1;
            }
            self.agenda.open_local(node, end);
            loop {
                let from_window = window.get(i).filter(|e| e.node() == node);
                let entry = match (from_window, self.agenda.peek_local()) {
                    (Some(w), Some(l)) if l < w => self.agenda.pop_local(),
                    (Some(&w), _) => {
                        if hinting {
                            self.hint_arrivals_ahead(&window[i + 1..], node, app);
                        }
                        i += 1;
                        Some(w)
                    }
                    (None, _) => self.agenda.pop_local(),
                };
                let Some(entry) = entry else {
                    break;
                };
                self.stats.steps += 1;
                self.now = entry.at;
                latest = latest.max(entry.at);
                self.dispatch(entry, app);
            }
            self.agenda.close_local();
        }
        self.in_window = false;
        self.now = latest;
        self.window = window;
        self.turns = turns;
        if let Some(change) = change {
            self.stats.steps += 1;
            self.now = self.now.max(change.at);
            self.dispatch(change, app);
        }
        self.rebuild_wakeups_if_bloated();
    }

    /// Prefetches, stage by stage, what the nodes of the next turns of a window will read:
    /// stage `s` for the node `stages - s` turns after `turns[turn]` (`window`: the window's
    /// entries, by node).
    fn hint_nodes_ahead<A: Application>(
        &self,
        turns: &[(u32, u32)],
        window: &[Item],
        turn: usize,
        app: &A,
    ) {
        let stages = MemoryHint::Endpoint.stages();
        for stage in 0..stages {
            let ahead = usize::from(stages - stage);
            if let Some(&(node, start)) = turns.get(turn + ahead) {
                prefetch::hint(
                    &self.nodes[node as usize].endpoint,
                    MemoryHint::Endpoint,
                    stage,
                );
                if stage == 1 {
                    app.upcoming(NodeId(node), None);
                    self.hint_engine_records(node);
                    self.hint_first_arrival(window, start as usize, node);
                }
            }
        }
    }

    /// Prefetches the in-flight record of the first datagram in `node`'s share of the window
    /// (from `start`), which its turn reads first. The rest are named as the turn runs
    /// (`hint_arrivals_ahead`), which leaves a client's one datagram out: its record was
    /// written when the server sent it, a link's latency ago.
    fn hint_first_arrival(&self, window: &[Item], start: usize, node: u32) {
        if let Some(What::Arrival { slot, node: to }) = window.get(start).map(|e| e.what) {
            if to == node {
                if let Some(d) = self.in_flight.get(slot as usize) {
                    prefetch::prefetch(d);
                }
            }
        }
    }

    /// Prefetches the engine's own records of `node` that its turn reads: its wake-up, its
    /// address (the source of what it sends) and its links' state.
    fn hint_engine_records(&self, node: u32) {
        let i = node as usize;
        if let Some(w) = self.wakes.get(i) {
            prefetch::prefetch(w);
        }
        if let Some(a) = self.addresses.get(i) {
            prefetch::prefetch(a);
        }
        if let Some(l) = self.link_states.slot(node) {
            prefetch::prefetch(l);
        }
    }

    /// Prefetches, stage by stage, what the datagrams due next at `node` (`next`, the rest
    /// of its share of the window) will read: their in-flight records, then the connections
    /// they are routed to. A server's share is thousands of datagrams from as many clients.
    fn hint_arrivals_ahead<A: Application>(&self, next: &[Item], node: u32, app: &A) {
        let stages = usize::from(MemoryHint::Datagram(&[]).stages());
        let endpoint = &self.nodes[node as usize].endpoint;
        for (k, e) in next.iter().take(stages + 1).enumerate() {
            let What::Arrival { slot, node: to } = e.what else {
                continue;
            };
            if to != node {
                break;
            }
            let Some(d) = self.in_flight.get(slot as usize) else {
                continue;
            };
            match stages.checked_sub(k + 1) {
                // Farthest ahead: the record (its datagram's header names the connection).
                None => prefetch::prefetch(d),
                Some(stage) => {
                    prefetch::hint(endpoint, MemoryHint::Datagram(d.bytes()), stage as u8);
                    if stage == 0 {
                        app.upcoming(NodeId(node), Some(NodeId(d.from_node)));
                    }
                }
            }
        }
    }

    /// `entries` (in any order) grouped by node, in node order, each node's in time order: a
    /// counting sort by node, linear in the entries (a window holds tens of thousands), then
    /// a sort of each node's share (a few entries, but for a server).
    fn by_node(&mut self, entries: &[Item], out: &mut Vec<Item>) {
        let starts = &mut self.node_starts;
        starts.clear();
        starts.resize(self.nodes.len() + 1, 0);
        for e in entries {
            starts[e.node() as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        out.clear();
        out.extend_from_slice(entries);
        for e in entries {
            let slot = &mut starts[e.node() as usize];
            out[*slot as usize] = *e;
            *slot += 1;
        }
        // The agenda drains whole buckets unordered: put each node's share in time order.
        for share in out.chunk_by_mut(|a, b| a.node() == b.node()) {
            if share.len() > 1 {
                agenda::sort_by_time(share, &mut self.sort_scratch);
            }
        }
    }

    /// Processes the next scheduled happening (and any node touched from outside since the
    /// last step). Returns false if nothing is scheduled.
    pub fn step_with<A: Application>(&mut self, app: &mut A) -> bool {
        self.flush_touched(app);
        let Some(item) = self.agenda.pop() else {
            return false;
        };
        self.stats.steps += 1;
        self.now = self.now.max(item.at);
        self.dispatch(item, app);
        true
    }

    /// Acts on one happening, at `self.now` (timing its turn if asked to).
    fn dispatch<A: Application>(&mut self, item: Item, app: &mut A) {
        if !self.config.time_turns {
            return self.act(item, app);
        }
        let role = |sim: &Self, node: u32| {
            let server = sim
                .nodes
                .get(node as usize)
                .is_some_and(|n| n.endpoint.connection_count() > 2);
            usize::from(server)
        };
        let (kind, role) = match item.what {
            What::Wake(node) => (0, role(self, node)),
            What::Arrival { node, .. } => (1, role(self, node)),
            What::Timer { node, .. } => (2, role(self, node)),
            What::Change(_) => (3, 0),
        };
        let started = std::time::Instant::now();
        self.act(item, app);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let t = &mut self.turn_times;
        let row = match kind {
            0 => &mut t.wakeups[role],
            1 => &mut t.arrivals[role],
            2 => &mut t.timers[role],
            _ => &mut t.changes,
        };
        row.count += 1;
        row.nanos = row.nanos.saturating_add(nanos);
    }

    /// Acts on one happening, at `self.now`.
    fn act<A: Application>(&mut self, item: Item, app: &mut A) {
        match item.what {
            What::Wake(node) => self.wake(item.at, node, app),
            What::Arrival { slot, node } => self.arrive(slot, node, app),
            What::Timer { node, token } => {
                self.stats.timers_fired += 1;
                let mut ctx = self.context(node);
                app.on_timer(&mut ctx, token);
                self.service(node, app);
            }
            What::Change(index) => {
                if let Some(change) = self.changes.get_mut(index as usize).and_then(Option::take) {
                    self.apply(change);
                }
            }
        }
    }

    fn touch(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        if !n.touched {
            n.touched = true;
            self.touched.push(node);
        }
    }

    fn flush_touched<A: Application>(&mut self, app: &mut A) {
        while !self.touched.is_empty() {
            let touched = core::mem::take(&mut self.touched);
            for &node in &touched {
                self.nodes[node as usize].touched = false;
                self.service(node, app);
            }
        }
    }

    fn context(&mut self, node: u32) -> NodeContext<'_> {
        NodeContext {
            id: NodeId(node),
            now: self.now,
            node: &mut self.nodes[node as usize],
            agenda: &mut self.agenda,
            rng: &mut self.rng,
            addresses: &self.addresses,
            owners: &self.owners,
            queue: QueueLimit {
                max: self.config.max_queued_events,
                dropped: &mut self.stats.events_dropped,
            },
            memory_hints: self.config.memory_hints,
        }
    }

    fn wake<A: Application>(&mut self, at: Instant, node: u32, app: &mut A) {
        let now = self.now;
        let wakes = &mut self.wakes[node as usize];
        if wakes.at != Some(at) {
            self.stats.stale_wakeups += 1;
            return;
        }
        wakes.at = None;
        self.stats.wakeups += 1;
        if wakes.last == now {
            wakes.at_last += 1;
        } else {
            wakes.last = now;
            wakes.at_last = 0;
        }
        if wakes.at_last > MAX_WAKES_PER_INSTANT {
            // The endpoint keeps asking for "now" without getting anywhere: move it on so
            // the simulation does not hang, and count it (a protocol bug).
            self.stats.timer_spins += 1;
            wakes.at_last = 0;
            let later = now + core::time::Duration::from_micros(1);
            wakes.at = Some(later);
            self.agenda.push_wake(later, node);
            return;
        }
        self.nodes[node as usize].endpoint.handle_timeout(now);
        self.service(node, app);
    }

    fn arrive<A: Application>(&mut self, slot: u32, to_node: u32, app: &mut A) {
        let now = self.now;
        let Some(d) = self.in_flight.get(slot as usize) else {
            return;
        };
        let data = d.bytes();
        self.stats.datagrams_delivered += 1;
        self.stats.bytes_delivered += data.len() as u64;
        self.nodes[to_node as usize]
            .endpoint
            .handle_datagram(now, d.from, data);
        self.free_in_flight.push(slot);
        self.service(to_node, app);
    }

    /// After an input: run due timers, drain events into `app` and datagrams into the links
    /// until both are empty, then reschedule the node's wake-up.
    fn service<A: Application>(&mut self, node: u32, app: &mut A) {
        let now = self.now;
        let mut buf = core::mem::take(&mut self.scratch);
        if buf.len() < SCRATCH_LEN {
            buf.resize(SCRATCH_LEN, 0);
        }
        let mut next = self.nodes[node as usize].endpoint.poll_timeout();
        loop {
            if next.is_some_and(|t| t <= now) {
                self.nodes[node as usize].endpoint.handle_timeout(now);
            }
            while let Some(event) = self.nodes[node as usize].endpoint.poll_event() {
                self.stats.events += 1;
                self.hasher.event(now, NodeId(node), &event);
                let mut ctx = self.context(node);
                app.on_event(&mut ctx, event);
            }
            loop {
                let n = &self.nodes[node as usize];
                let endpoint = &n.endpoint;
                if self.config.memory_hints && endpoint.connection_count() > 2 && !n.app_named.get()
                {
                    // A server's tick leaves thousands of connections queued: prefetch
                    // those a few places down the queue. Not when the application named
                    // the connections it sent to (the game's tick, 32 at a time): the drain
                    // reads what it named, and naming it again cost about 2% with 10,000 clients.
                    let stages = MemoryHint::Transmit(0).stages();
                    for stage in 0..stages {
                        let hint = MemoryHint::Transmit(usize::from(stages - stage));
                        prefetch::hint(endpoint, hint, stage);
                    }
                }
                let Some(t) = self.nodes[node as usize]
                    .endpoint
                    .poll_transmit(now, &mut buf)
                else {
                    break;
                };
                let len = t.len.min(buf.len());
                self.send_datagram(node, t.to, &buf[..len]);
            }
            // Both queues are drained (the application acted while taking events, before
            // the packets were drained): another round only if the packets left events
            // behind (one can end a connection) or made a timer due.
            let endpoint = &self.nodes[node as usize].endpoint;
            next = endpoint.poll_timeout();
            if !endpoint.has_pending_events() && next.is_none_or(|t| t > now) {
                break;
            }
        }
        self.scratch = buf;
        self.nodes[node as usize].app_named.set(false);
        let next = next.map(|t| t.max(now));
        let wakes = &mut self.wakes[node as usize];
        if next != wakes.at {
            wakes.at = next;
            if let Some(at) = next {
                self.agenda.push_wake(at, node);
            }
        }
        if !self.in_window {
            self.rebuild_wakeups_if_bloated();
        }
    }

    /// Drops stale wake-up entries once they outnumber the nodes (not within a window: its
    /// entries were taken out of the agenda, and rebuilding would put them back).
    fn rebuild_wakeups_if_bloated(&mut self) {
        if self.agenda.wakeups.len() > 2 * self.nodes.len() + 1024 {
            self.rebuild_wakeups();
        }
    }

    /// Drops stale wake-up entries. Deterministic: live entries are re-pushed in node order.
    fn rebuild_wakeups(&mut self) {
        self.agenda.wakeups.clear();
        for (i, wakes) in self.wakes.iter().enumerate() {
            if let Some(at) = wakes.at {
                self.agenda.push_wake(at, i as u32);
            }
        }
    }

    /// Puts one datagram from `from` on the wire towards `to`.
    fn send_datagram(&mut self, from: u32, to: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        let sender = self.addresses[from as usize];
        // (Without NATs every node is public: its record's last line stays untouched.)
        let realm = match self.private_nodes {
            0 => None,
            _ => self.nodes[from as usize].nat,
        };
        // Without NATs in the way, a public destination is a lookup.
        let direct = match realm {
            None => self.public_node_at(to),
            Some(_) => None,
        };
        let route = match direct {
            Some(node) => Route::Deliver { node, from: sender },
            None if self.nats.is_empty() => Route::Drop {
                cause: DropCause::Unroutable,
                from: sender,
            },
            None => self.nats.route(now, &self.owners, realm, sender, to),
        };
        let (to_node, seen_from, verdict) = match route {
            Route::Deliver { node, from: seen } => {
                (Some(node), seen, self.judge(from, node, bytes.len()))
            }
            Route::Drop { cause, from: seen } => (None, seen, LinkVerdict::Drop(cause)),
        };
        let mut record = TraceRecord {
            time: now,
            from_node: NodeId(from),
            from: seen_from,
            to,
            to_node: to_node.map(NodeId),
            len: bytes.len(),
            fate: Fate::Dropped(DropCause::Unroutable),
        };
        match (verdict, to_node) {
            (
                LinkVerdict::Deliver {
                    at,
                    reordered,
                    duplicate_at,
                },
                Some(to_node),
            ) => {
                record.fate = Fate::Delivered { at, reordered };
                self.record(&record, bytes);
                self.enqueue(at, (from, record.from), to_node, bytes);
                if reordered {
                    self.stats.reordered += 1;
                }
                if let Some(at) = duplicate_at {
                    self.stats.duplicates += 1;
                    record.fate = Fate::Duplicate { at };
                    self.record(&record, bytes);
                    self.enqueue(at, (from, record.from), to_node, bytes);
                }
            }
            (LinkVerdict::Drop(cause), _) => {
                self.stats.drops.add(cause);
                record.fate = Fate::Dropped(cause);
                self.record(&record, bytes);
            }
            (LinkVerdict::Deliver { .. }, None) => {
                // `judge` is only asked about routable datagrams.
                self.stats.drops.add(DropCause::Unroutable);
                self.record(&record, bytes);
            }
        }
    }

    /// The public node at `to` (as `owners` says), found without hashing or reading its
    /// address when `to` is still the address it was created with (`10.x.y.z:7000`, `x.y.z`
    /// its number plus one).
    fn public_node_at(&self, to: SocketAddr) -> Option<u32> {
        if let SocketAddr::V4(v4) = to {
            let [a, b, c, d] = v4.ip().octets();
            if let Some(i) = u32::from_be_bytes([0, b, c, d]).checked_sub(1) {
                // `owners` maps `to` to that node too: no other node can take an address
                // in use, and the node leaves it only by a rebind, which clears its flag.
                if a == 10
                    && v4.port() == BASE_PORT
                    && self.at_first_address.get(i as usize) == Some(&true)
                {
                    return Some(i);
                }
            }
        }
        self.owners.get(&to).copied()
    }

    fn judge(&mut self, from: u32, to: u32, len: usize) -> LinkVerdict {
        // (Most runs set no link of their own: no hashing for them. A reference: the
        // settings are some 150 bytes, copied for every datagram before.)
        let link = if self.links.is_empty() {
            &self.default_link
        } else {
            self.links.get(&(from, to)).unwrap_or(&self.default_link)
        };
        if len > link.mtu {
            return LinkVerdict::Drop(DropCause::Mtu);
        }
        if !self.links_down.is_empty() && self.links_down.contains(&(from, to)) {
            return LinkVerdict::Drop(DropCause::LinkDown);
        }
        if self
            .active_partitions
            .iter()
            .any(|&p| self.partitions[p].separates(from, to))
        {
            return LinkVerdict::Drop(DropCause::Partition);
        }
        if LinkState::is_needed(link) {
            let state = self.link_states.get(from, to);
            state.transmit(link, self.now, len, &mut self.rng)
        } else {
            LinkState::default().transmit(link, self.now, len, &mut self.rng)
        }
    }

    fn record(&mut self, record: &TraceRecord, bytes: &[u8]) {
        self.hasher.datagram(record, bytes);
        self.trace.push(*record);
    }

    /// Queues `bytes` from node `from.0` (seen from address `from.1`) for arrival at `at`.
    fn enqueue(&mut self, at: Instant, from: (u32, SocketAddr), to_node: u32, bytes: &[u8]) {
        let (from_node, from) = from;
        let slot = match self.free_in_flight.pop() {
            Some(slot) => slot,
            None => {
                self.in_flight.push(InFlight {
                    from,
                    from_node,
                    len: 0,
                    inline: [0; INLINE_DATAGRAM],
                    spill: Vec::new(),
                });
                (self.in_flight.len() - 1) as u32
            }
        };
        if self.config.memory_hints {
            // The record the enqueue after next takes: its lines were last used a link's
            // latency ago, and stores into cold lines fill the store buffer until each line
            // arrives (a server's tick writes thousands of datagrams in a row).
            let free = &self.free_in_flight;
            let next = free.len().checked_sub(2).and_then(|i| free.get(i));
            if let Some(d) = next.and_then(|&slot| self.in_flight.get(slot as usize)) {
                prefetch::prefetch(d);
            }
        }
        if let Some(d) = self.in_flight.get_mut(slot as usize) {
            d.from = from;
            d.from_node = from_node;
            d.store(bytes);
        }
        self.agenda.push(
            at,
            What::Arrival {
                slot,
                node: to_node,
            },
        );
    }
}
