//! The discrete-event engine: nodes, the virtual clock, the agenda, and link conditions.

use core::cmp::{Ordering, Reverse};
use core::fmt;
use core::hash::{BuildHasherDefault, Hasher};
use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use shoal_proto::{Config, ConfigError, ConnectError, ConnectionHandle, Endpoint, Event, Instant};

use crate::link::{DropCause, LinkConfig, LinkConfigError, LinkDrops, LinkState, LinkVerdict};
use crate::rng::{splitmix64, SimRng};
use crate::trace::{Fate, Trace, TraceHasher, TraceRecord};

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
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            default_link: LinkConfig::default(),
            max_queued_events: 65_536,
            trace_capacity: 0,
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
}

impl fmt::Display for AddNodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddNodeError::Config(e) => write!(f, "invalid endpoint configuration: {e}"),
            AddNodeError::TooManyNodes => {
                write!(f, "the simulator holds at most {MAX_NODES} nodes")
            }
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

impl SimStats {
    /// Datagrams sent but neither delivered nor dropped yet.
    pub fn in_flight(&self) -> u64 {
        (self.datagrams_sent + self.duplicates)
            .saturating_sub(self.datagrams_delivered + self.drops.total())
    }
}

/// What the simulator calls when something happens on a node. Implement it to drive nodes the
/// way a game loop would: react to events and send from timers.
///
/// Inside a callback, use the [`NodeContext`] to reach the node's endpoint; what the endpoint
/// then has to send goes out at the same simulated instant.
pub trait Application {
    /// An event the node's endpoint emitted.
    fn on_event(&mut self, ctx: &mut NodeContext<'_>, event: Event);

    /// A timer set with [`NodeContext::set_timer`] or [`Simulator::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut NodeContext<'_>, token: u64) {
        let _ = (ctx, token);
    }
}

/// One node as an [`Application`] callback sees it.
pub struct NodeContext<'a> {
    id: NodeId,
    now: Instant,
    node: &'a mut Node,
    agenda: &'a mut Agenda,
    rng: &'a mut SimRng,
    addresses: &'a [SocketAddr],
    owners: &'a FastMap<SocketAddr, u32>,
    queue: QueueLimit<'a>,
}

struct QueueLimit<'a> {
    max: usize,
    dropped: &'a mut u64,
}

impl NodeContext<'_> {
    /// The node.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The node's endpoint.
    pub fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.node.endpoint
    }

    /// The node's current address.
    pub fn address(&self) -> SocketAddr {
        self.addresses[self.id.index()]
    }

    /// Another node's current address.
    ///
    /// # Panics
    /// If `node` is not a node of this simulator.
    pub fn address_of(&self, node: NodeId) -> SocketAddr {
        self.addresses[node.index()]
    }

    /// The node that owns `addr` now, if any.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.owners.get(&addr).map(|&i| NodeId(i))
    }

    /// Calls [`Application::on_timer`] for this node with `token` at `at` (or now, if `at` is
    /// in the past). Timers cannot be cancelled: ignore the ones you no longer want.
    pub fn set_timer(&mut self, at: Instant, token: u64) {
        self.agenda.push(
            at.max(self.now),
            What::Timer {
                node: self.id.0,
                token,
            },
        );
    }

    /// The simulation's random generator (using it keeps the run reproducible).
    pub fn rng(&mut self) -> &mut SimRng {
        self.rng
    }

    fn queue_event(&mut self, event: Event) {
        if self.node.events.len() >= self.queue.max {
            *self.queue.dropped += 1;
        } else {
            self.node.events.push_back((self.now, event));
        }
    }
}

/// The [`Application`] behind [`Simulator::run_until`]: events wait in per-node queues.
struct QueueEvents;

impl Application for QueueEvents {
    fn on_event(&mut self, ctx: &mut NodeContext<'_>, event: Event) {
        ctx.queue_event(event);
    }
}

/// A hasher for maps whose keys come from the simulation itself (no untrusted input), fast
/// and deterministic (FxHash's multiply-rotate).
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// A node: an endpoint plus the simulator's bookkeeping for it.
struct Node {
    endpoint: Endpoint,
    /// The wake-up the agenda holds a live entry for.
    scheduled: Option<Instant>,
    last_wake: Instant,
    wakes_at_last: u32,
    rebinds: u16,
    touched: bool,
    events: VecDeque<(Instant, Event)>,
}

/// Something due at a time.
#[derive(Clone, Copy, Debug)]
enum What {
    Arrival(u32),
    Timer { node: u32, token: u64 },
    Change(u32),
}

#[derive(Clone, Copy, Debug)]
struct Item {
    at: Instant,
    seq: u64,
    what: What,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Everything scheduled. Ties in time are broken by an insertion counter, so the order of
/// simultaneous happenings is fixed by the order they were scheduled in.
#[derive(Default)]
struct Agenda {
    seq: u64,
    items: BinaryHeap<Reverse<Item>>,
    /// Node wake-ups `(at, seq, node)`; an entry is live only while it matches the node's
    /// `scheduled` (lazy invalidation: rescheduling pushes a new entry, never searches).
    wakeups: BinaryHeap<Reverse<(Instant, u64, u32)>>,
}

enum Next {
    Item(Item),
    Wake(Instant, u32),
}

impl Agenda {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn push(&mut self, at: Instant, what: What) {
        let seq = self.next_seq();
        self.items.push(Reverse(Item { at, seq, what }));
    }

    fn push_wake(&mut self, at: Instant, node: u32) {
        let seq = self.next_seq();
        self.wakeups.push(Reverse((at, seq, node)));
    }

    fn peek_time(&self) -> Option<Instant> {
        let a = self.items.peek().map(|Reverse(i)| (i.at, i.seq));
        let b = self.wakeups.peek().map(|Reverse((at, seq, _))| (*at, *seq));
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b).0),
            (a, b) => a.or(b).map(|(at, _)| at),
        }
    }

    fn pop(&mut self) -> Option<Next> {
        let a = self.items.peek().map(|Reverse(i)| (i.at, i.seq));
        let b = self.wakeups.peek().map(|Reverse((at, seq, _))| (*at, *seq));
        let take_item = match (a, b) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if take_item {
            self.items.pop().map(|Reverse(i)| Next::Item(i))
        } else {
            self.wakeups
                .pop()
                .map(|Reverse((at, _, node))| Next::Wake(at, node))
        }
    }
}

/// A datagram on the wire.
#[derive(Debug)]
struct InFlight {
    from: SocketAddr,
    to_node: u32,
    data: Vec<u8>,
}

/// A scheduled change of network conditions.
#[derive(Clone, Debug)]
enum Change {
    Partition {
        id: usize,
        active: bool,
    },
    LinkUp {
        from: u32,
        to: u32,
        up: bool,
    },
    Link {
        from: u32,
        to: u32,
        config: Option<LinkConfig>,
    },
    DefaultLink(LinkConfig),
    Rebind {
        node: u32,
        addr: Option<SocketAddr>,
    },
}

struct Partition {
    a: Vec<u64>,
    b: Vec<u64>,
}

fn bit(set: &[u64], i: u32) -> bool {
    set.get(i as usize / 64)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

impl Partition {
    fn separates(&self, x: u32, y: u32) -> bool {
        (bit(&self.a, x) && bit(&self.b, y)) || (bit(&self.b, x) && bit(&self.a, y))
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
    config: SimConfig,
    now: Instant,
    rng: SimRng,
    nodes: Vec<Node>,
    addresses: Vec<SocketAddr>,
    owners: FastMap<SocketAddr, u32>,
    agenda: Agenda,
    in_flight: Vec<InFlight>,
    free_in_flight: Vec<u32>,
    changes: Vec<Option<Change>>,
    default_link: LinkConfig,
    links: FastMap<(u32, u32), LinkConfig>,
    link_states: FastMap<(u32, u32), LinkState>,
    links_down: FastSet<(u32, u32)>,
    partitions: Vec<Partition>,
    active_partitions: Vec<usize>,
    touched: Vec<u32>,
    scratch: Vec<u8>,
    stats: SimStats,
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
            owners: FastMap::default(),
            agenda: Agenda::default(),
            in_flight: Vec::new(),
            free_in_flight: Vec::new(),
            changes: Vec::new(),
            default_link: config.default_link,
            links: FastMap::default(),
            link_states: FastMap::default(),
            links_down: FastSet::default(),
            partitions: Vec::new(),
            active_partitions: Vec::new(),
            touched: Vec::new(),
            scratch: vec![0; SCRATCH_LEN],
            stats: SimStats::default(),
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
    pub fn add_node(&mut self, mut config: Config) -> Result<NodeId, AddNodeError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(AddNodeError::TooManyNodes);
        }
        let index = self.nodes.len() as u32;
        let mut seed_state = self.config.seed ^ (u64::from(index) << 32 | 0x5EED);
        config.seed = splitmix64(&mut seed_state);
        let endpoint = Endpoint::new(config).map_err(AddNodeError::Config)?;
        let n = index + 1;
        let ip = Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8);
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, BASE_PORT));
        self.nodes.push(Node {
            endpoint,
            scheduled: None,
            last_wake: Instant::ZERO,
            wakes_at_last: 0,
            rebinds: 0,
            touched: false,
            events: VecDeque::new(),
        });
        self.addresses.push(addr);
        self.owners.insert(addr, index);
        Ok(NodeId(index))
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Every node, in order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// A node's current address (it changes when the node is [rebound](Self::rebind)).
    ///
    /// # Panics
    /// If `node` is not a node of this simulator (as do the other methods taking a `NodeId`).
    pub fn address(&self, node: NodeId) -> SocketAddr {
        self.addresses[node.index()]
    }

    /// The node that owns `addr` now, if any.
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
    /// accept hook.
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

    /// The oldest event `node` emitted under [`run_until`](Self::run_until), with the time it
    /// was emitted.
    pub fn next_event(&mut self, node: NodeId) -> Option<(Instant, Event)> {
        self.nodes[node.index()].events.pop_front()
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
            self.agenda.peek_time()
        } else {
            Some(self.now)
        }
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

    // ------------------------------------------------------------------ links and conditions

    /// The link used by pairs without an override.
    pub fn default_link(&self) -> &LinkConfig {
        &self.default_link
    }

    /// Replaces the default link.
    pub fn set_default_link(&mut self, link: LinkConfig) -> Result<(), LinkConfigError> {
        link.validate()?;
        self.default_link = link;
        Ok(())
    }

    /// The link from `from` to `to` (one direction).
    pub fn link(&self, from: NodeId, to: NodeId) -> &LinkConfig {
        self.links
            .get(&(from.0, to.0))
            .unwrap_or(&self.default_link)
    }

    /// Overrides the link from `from` to `to` (one direction: asymmetric links are two calls).
    pub fn set_link(
        &mut self,
        from: NodeId,
        to: NodeId,
        link: LinkConfig,
    ) -> Result<(), LinkConfigError> {
        link.validate()?;
        self.links.insert((from.0, to.0), link);
        Ok(())
    }

    /// Overrides both directions between `a` and `b` with the same link.
    pub fn set_link_symmetric(
        &mut self,
        a: NodeId,
        b: NodeId,
        link: LinkConfig,
    ) -> Result<(), LinkConfigError> {
        self.set_link(a, b, link)?;
        self.set_link(b, a, link)
    }

    /// Removes the override from `from` to `to`; the default link applies again.
    pub fn clear_link(&mut self, from: NodeId, to: NodeId) {
        self.links.remove(&(from.0, to.0));
    }

    /// Takes the link from `from` to `to` down (everything sent on it is dropped) or up.
    pub fn set_link_up(&mut self, from: NodeId, to: NodeId, up: bool) {
        if up {
            self.links_down.remove(&(from.0, to.0));
        } else {
            self.links_down.insert((from.0, to.0));
        }
    }

    /// Whether the link from `from` to `to` is up.
    pub fn is_link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.links_down.contains(&(from.0, to.0))
    }

    /// Schedules the link from `from` to `to` to go down at `at`.
    pub fn schedule_link_down(&mut self, at: Instant, from: NodeId, to: NodeId) {
        self.schedule(
            at,
            Change::LinkUp {
                from: from.0,
                to: to.0,
                up: false,
            },
        );
    }

    /// Schedules the link from `from` to `to` to come back up at `at`.
    pub fn schedule_link_up(&mut self, at: Instant, from: NodeId, to: NodeId) {
        self.schedule(
            at,
            Change::LinkUp {
                from: from.0,
                to: to.0,
                up: true,
            },
        );
    }

    /// Schedules an override of the link from `from` to `to` (`None` removes it) at `at`.
    pub fn schedule_link(
        &mut self,
        at: Instant,
        from: NodeId,
        to: NodeId,
        link: Option<LinkConfig>,
    ) -> Result<(), LinkConfigError> {
        if let Some(l) = &link {
            l.validate()?;
        }
        self.schedule(
            at,
            Change::Link {
                from: from.0,
                to: to.0,
                config: link,
            },
        );
        Ok(())
    }

    /// Schedules a new default link at `at`.
    pub fn schedule_default_link(
        &mut self,
        at: Instant,
        link: LinkConfig,
    ) -> Result<(), LinkConfigError> {
        link.validate()?;
        self.schedule(at, Change::DefaultLink(link));
        Ok(())
    }

    /// Cuts every datagram between a node of `a` and a node of `b` (both directions) from
    /// `start` until `end`. Datagrams already in flight when it starts still arrive. Nodes in
    /// both sets are cut from the other set's nodes only.
    pub fn schedule_partition(
        &mut self,
        start: Instant,
        end: Instant,
        a: &[NodeId],
        b: &[NodeId],
    ) -> PartitionId {
        let set = |nodes: &[NodeId]| {
            let mut bits = vec![0u64; self.nodes.len().div_ceil(64)];
            for n in nodes {
                if let Some(w) = bits.get_mut(n.index() / 64) {
                    *w |= 1 << (n.0 % 64);
                }
            }
            bits
        };
        let id = self.partitions.len();
        self.partitions.push(Partition {
            a: set(a),
            b: set(b),
        });
        self.schedule(start, Change::Partition { id, active: true });
        if end > start {
            self.schedule(end, Change::Partition { id, active: false });
        }
        PartitionId(id)
    }

    /// Whether a partition is cutting `from` off from `to` now.
    pub fn is_partitioned(&self, from: NodeId, to: NodeId) -> bool {
        self.active_partitions
            .iter()
            .any(|&p| self.partitions[p].separates(from.0, to.0))
    }

    /// Moves `node` to a new address now, as a NAT rebinding does: others see its datagrams
    /// come from the new address, and datagrams sent to the old one are dropped
    /// ([`DropCause::Unroutable`]). `None` picks the next port on the same IP address.
    /// Returns the new address.
    pub fn rebind(
        &mut self,
        node: NodeId,
        addr: Option<SocketAddr>,
    ) -> Result<SocketAddr, RebindError> {
        let index = node.0;
        let old = self.addresses[node.index()];
        let new = match addr {
            Some(a) => a,
            None => {
                let n = &mut self.nodes[node.index()];
                n.rebinds = n.rebinds.wrapping_add(1);
                let port = BASE_PORT.wrapping_add(n.rebinds).max(1024);
                SocketAddr::new(old.ip(), port)
            }
        };
        if new == old {
            return Ok(new);
        }
        if self.owners.contains_key(&new) {
            return Err(RebindError::AddressInUse(new));
        }
        self.owners.remove(&old);
        self.owners.insert(new, index);
        self.addresses[node.index()] = new;
        Ok(new)
    }

    /// Schedules a [`rebind`](Self::rebind) at `at`. If the address is taken by then, the
    /// node keeps its address.
    pub fn schedule_rebind(&mut self, at: Instant, node: NodeId, addr: Option<SocketAddr>) {
        self.schedule(at, Change::Rebind { node: node.0, addr });
    }

    fn schedule(&mut self, at: Instant, change: Change) {
        let index = self.changes.len() as u32;
        self.changes.push(Some(change));
        self.agenda.push(at.max(self.now), What::Change(index));
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
        while self.agenda.peek_time().is_some_and(|t| t <= deadline) {
            self.step_with(app);
        }
        self.now = self.now.max(deadline);
    }

    /// Processes the next scheduled happening (and any node touched from outside since the
    /// last step). Returns false if nothing is scheduled.
    pub fn step_with<A: Application>(&mut self, app: &mut A) -> bool {
        self.flush_touched(app);
        let Some(next) = self.agenda.pop() else {
            return false;
        };
        self.stats.steps += 1;
        match next {
            Next::Wake(at, node) => {
                self.now = self.now.max(at);
                self.wake(at, node, app);
            }
            Next::Item(item) => {
                self.now = self.now.max(item.at);
                match item.what {
                    What::Arrival(slot) => self.arrive(slot, app),
                    What::Timer { node, token } => {
                        self.stats.timers_fired += 1;
                        let mut ctx = self.context(node);
                        app.on_timer(&mut ctx, token);
                        self.service(node, app);
                    }
                    What::Change(index) => {
                        if let Some(change) =
                            self.changes.get_mut(index as usize).and_then(Option::take)
                        {
                            self.apply(change);
                        }
                    }
                }
            }
        }
        true
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
        }
    }

    fn wake<A: Application>(&mut self, at: Instant, node: u32, app: &mut A) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        if n.scheduled != Some(at) {
            self.stats.stale_wakeups += 1;
            return;
        }
        n.scheduled = None;
        self.stats.wakeups += 1;
        if n.last_wake == now {
            n.wakes_at_last += 1;
        } else {
            n.last_wake = now;
            n.wakes_at_last = 0;
        }
        if n.wakes_at_last > MAX_WAKES_PER_INSTANT {
            // The endpoint keeps asking for "now" without getting anywhere: move it on so
            // the simulation does not hang, and count it (a protocol bug).
            self.stats.timer_spins += 1;
            n.wakes_at_last = 0;
            let later = now + core::time::Duration::from_micros(1);
            n.scheduled = Some(later);
            self.agenda.push_wake(later, node);
            return;
        }
        n.endpoint.handle_timeout(now);
        self.service(node, app);
    }

    fn arrive<A: Application>(&mut self, slot: u32, app: &mut A) {
        let now = self.now;
        let Some(d) = self.in_flight.get_mut(slot as usize) else {
            return;
        };
        let (from, to_node) = (d.from, d.to_node);
        let data = core::mem::take(&mut d.data);
        self.stats.datagrams_delivered += 1;
        self.stats.bytes_delivered += data.len() as u64;
        self.nodes[to_node as usize]
            .endpoint
            .handle_datagram(now, from, &data);
        // Give the buffer back for reuse.
        if let Some(d) = self.in_flight.get_mut(slot as usize) {
            d.data = data;
        }
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
        loop {
            let n = &mut self.nodes[node as usize];
            if n.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                n.endpoint.handle_timeout(now);
            }
            let mut progressed = false;
            while let Some(event) = self.nodes[node as usize].endpoint.poll_event() {
                progressed = true;
                self.stats.events += 1;
                self.hasher.event(now, NodeId(node), &event);
                let mut ctx = self.context(node);
                app.on_event(&mut ctx, event);
            }
            while let Some(t) = self.nodes[node as usize]
                .endpoint
                .poll_transmit(now, &mut buf)
            {
                progressed = true;
                let len = t.len.min(buf.len());
                self.send_datagram(node, t.to, &buf[..len]);
            }
            if !progressed {
                break;
            }
        }
        self.scratch = buf;
        let n = &mut self.nodes[node as usize];
        let next = n.endpoint.poll_timeout().map(|t| t.max(now));
        if next != n.scheduled {
            n.scheduled = next;
            if let Some(at) = next {
                self.agenda.push_wake(at, node);
            }
        }
        if self.agenda.wakeups.len() > 2 * self.nodes.len() + 1024 {
            self.rebuild_wakeups();
        }
    }

    /// Drops stale wake-up entries. Deterministic: live entries are re-pushed in node order.
    fn rebuild_wakeups(&mut self) {
        self.agenda.wakeups.clear();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(at) = n.scheduled {
                self.agenda.seq += 1;
                let seq = self.agenda.seq;
                self.agenda.wakeups.push(Reverse((at, seq, i as u32)));
            }
        }
    }

    /// Puts one datagram from `from` on the wire towards `to`.
    fn send_datagram(&mut self, from: u32, to: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        let to_node = self.owners.get(&to).copied();
        let verdict = match to_node {
            None => LinkVerdict::Drop(DropCause::Unroutable),
            Some(to_node) => self.judge(from, to_node, bytes.len()),
        };
        let mut record = TraceRecord {
            time: now,
            from_node: NodeId(from),
            from: self.addresses[from as usize],
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
                self.enqueue(at, record.from, to_node, bytes);
                if reordered {
                    self.stats.reordered += 1;
                }
                if let Some(at) = duplicate_at {
                    self.stats.duplicates += 1;
                    record.fate = Fate::Duplicate { at };
                    self.record(&record, bytes);
                    self.enqueue(at, record.from, to_node, bytes);
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

    fn judge(&mut self, from: u32, to: u32, len: usize) -> LinkVerdict {
        let link = *self.links.get(&(from, to)).unwrap_or(&self.default_link);
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
        if LinkState::is_needed(&link) {
            let state = self.link_states.entry((from, to)).or_default();
            state.transmit(&link, self.now, len, &mut self.rng)
        } else {
            LinkState::default().transmit(&link, self.now, len, &mut self.rng)
        }
    }

    fn record(&mut self, record: &TraceRecord, bytes: &[u8]) {
        self.hasher.datagram(record, bytes);
        self.trace.push(*record);
    }

    fn enqueue(&mut self, at: Instant, from: SocketAddr, to_node: u32, bytes: &[u8]) {
        let slot = match self.free_in_flight.pop() {
            Some(slot) => slot,
            None => {
                self.in_flight.push(InFlight {
                    from,
                    to_node,
                    data: Vec::new(),
                });
                (self.in_flight.len() - 1) as u32
            }
        };
        if let Some(d) = self.in_flight.get_mut(slot as usize) {
            d.from = from;
            d.to_node = to_node;
            d.data.clear();
            d.data.extend_from_slice(bytes);
        }
        self.agenda.push(at, What::Arrival(slot));
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Partition { id, active } => {
                self.active_partitions.retain(|&p| p != id);
                if active {
                    self.active_partitions.push(id);
                }
            }
            Change::LinkUp { from, to, up } => self.set_link_up(NodeId(from), NodeId(to), up),
            Change::Link { from, to, config } => match config {
                Some(c) => {
                    self.links.insert((from, to), c);
                }
                None => {
                    self.links.remove(&(from, to));
                }
            },
            Change::DefaultLink(link) => self.default_link = link,
            Change::Rebind { node, addr } => {
                // A taken address leaves the node where it is (documented).
                let _ = self.rebind(NodeId(node), addr);
            }
        }
    }
}
