//! A deterministic discrete-event network simulator for Shoal endpoints.
//!
//! Many nodes, each running a real [`shoal_proto::Endpoint`] (the same state machine the
//! socket drivers run), talk over simulated links with latency, jitter, random and burst
//! loss, duplication, reordering, bandwidth limits with bounded queues, and MTUs. Partitions,
//! links going down and NAT rebinding can be scheduled, and nodes can sit behind NAT boxes of
//! each RFC 4787 kind, nested ([`Simulator::add_nat`]). There are no sockets, threads or
//! clocks: a virtual clock jumps from one happening to the next, and one seeded random
//! generator decides everything, so the same seed replays the same run bit for bit. With
//! thousands of nodes, [`SimConfig::node_batching`] runs everything due within the shortest
//! link latency node by node (every node sees the same inputs at the same times), which
//! keeps each node's state in cache across its happenings; meanwhile
//! [`SimConfig::memory_hints`] prefetches what the next few nodes and datagrams will read
//! ([`shoal_proto::Endpoint::memory_hints`]), so that their cache misses overlap.
//!
//! # Example
//!
//! ```
//! use core::time::Duration;
//! use shoal_sim::shoal_proto::{Config, Event}; // re-exported: no separate dependency needed
//! use shoal_sim::{LinkConfig, SimConfig, Simulator};
//!
//! // 20 ms away, with 10% of datagrams lost in each direction.
//! let mut sim = Simulator::new(SimConfig {
//!     seed: 1,
//!     default_link: LinkConfig {
//!         latency: Duration::from_millis(20),
//!         loss: 0.1,
//!         ..LinkConfig::default()
//!     },
//!     ..SimConfig::default()
//! })?;
//! let server = sim.add_node(Config::default())?;
//! let client = sim.add_node(Config { accept_incoming: false, ..Config::default() })?;
//!
//! let conn = sim.connect(client, server, b"hello")?;
//! for i in 0..10u8 {
//!     sim.endpoint_mut(client).send(conn, 3, vec![i])?; // channel 3 is ordered
//! }
//! sim.run_for(Duration::from_secs(2));
//!
//! let mut received = Vec::new();
//! while let Some((_at, event)) = sim.next_event(server) {
//!     if let Event::Message { payload, .. } = event {
//!         received.push(payload[0]);
//!     }
//! }
//! assert_eq!(received, (0..10).collect::<Vec<u8>>()); // all of them, in order
//! assert!(sim.stats().drops.total() > 0); // despite the losses
//! println!("trace hash {:#018x}", sim.trace_hash()); // equal for equal runs
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! To react to events as they happen and send from timers (as a game loop does), implement
//! [`Application`] and run with [`Simulator::run_until_with`]; the [`scenario`] module does
//! that for a game-like load of one server and many clients.
//!
//! # Pieces
//!
//! | item | what it is |
//! |---|---|
//! | [`Simulator`] | nodes, the virtual clock, links, scheduled conditions, the trace |
//! | [`LinkConfig`], [`BurstLoss`], [`Outages`] | one direction of a link |
//! | [`NatConfig`], [`NatKind`], [`NatId`], [`NatStats`], [`NatMapping`] | NAT boxes between nodes |
//! | [`Application`], [`NodeContext`] | callbacks for events and timers |
//! | [`NodeNetwork`] | a node as a [`shoal_proto::Network`], for game code shared with the socket drivers |
//! | [`SimStats`], [`LinkDrops`], [`DropCause`] | counters |
//! | [`TraceRecord`], [`Fate`] | the bounded datagram trace |
//! | [`SimRng`] | the seeded generator |
//! | [`LatencyHistogram`] | bounded latency percentiles |
//! | [`scenario`] | the game-like load behind the `shoal-demo` command (crate `shoal-demo`) |
//! | [`shoal_proto`] | the protocol crate, re-exported: `shoal_sim::shoal_proto::Config` |
//! | [`units`] | parsing `5%`, `40ms`, `1MB/s` on the command line |

// Denied everywhere but in the one prefetch hint (`simulator/prefetch.rs`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod histogram;
mod link;
mod nat;
mod rng;
pub mod scenario;
mod simulator;
mod trace;
pub mod units;

/// The protocol crate the simulated nodes run, re-exported so that a user of the simulator
/// needs no separate dependency on it (and always gets the same version).
pub use shoal_proto;

pub use histogram::LatencyHistogram;
pub use link::{BurstLoss, DropCause, LinkConfig, LinkConfigError, LinkDrops, Outages};
pub use nat::{AddNatError, NatConfig, NatId, NatKind, NatMapping, NatStats, MAX_NAT_DEPTH};
pub use rng::SimRng;
pub use simulator::{
    prefetch, AddNodeError, Application, NodeContext, NodeId, NodeNetwork, PartitionId,
    RebindError, SimConfig, SimStats, Simulator, TurnTime, TurnTimes, MAX_NODES,
};
pub use trace::{Fate, TraceRecord};
