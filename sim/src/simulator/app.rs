//! The callbacks through which an application drives nodes.

use core::net::SocketAddr;

use shoal_proto::{Endpoint, Event, Instant, MemoryHint};

use super::agenda::{Agenda, FastMap, What};
use super::{Node, NodeId};
use crate::rng::SimRng;

/// What the simulator calls when something happens on a node. Implement it to drive nodes the
/// way a game loop would: react to events and send from timers.
///
/// Inside a callback, use the [`NodeContext`] to reach the node's endpoint; what the endpoint
/// then has to send goes out at the same simulated instant.
pub trait Application {
    /// An event the node's endpoint emitted.
    fn on_event(&mut self, ctx: &mut NodeContext<'_>, event: Event);

    /// A timer set with [`NodeContext::set_timer`] or
    /// [`Simulator::set_timer`](crate::Simulator::set_timer) fired.
    fn on_timer(&mut self, ctx: &mut NodeContext<'_>, token: u64) {
        let _ = (ctx, token);
    }

    /// A turn of `node` comes soon, in which it handles a datagram from `from` if that is
    /// given: an application with state per node or per peer can have it on its way to the
    /// cache ([`prefetch`](crate::prefetch)) so that the callbacks of that turn find it
    /// there. Called only while [`SimConfig::memory_hints`](super::SimConfig) is on; it
    /// must change nothing but speed.
    fn upcoming(&self, node: NodeId, from: Option<NodeId>) {
        let _ = (node, from);
    }
}

/// One node as an [`Application`] callback sees it.
pub struct NodeContext<'a> {
    pub(super) id: NodeId,
    pub(super) now: Instant,
    pub(super) node: &'a mut Node,
    pub(super) agenda: &'a mut Agenda,
    pub(super) rng: &'a mut SimRng,
    pub(super) addresses: &'a [SocketAddr],
    pub(super) owners: &'a FastMap<SocketAddr, u32>,
    pub(super) queue: QueueLimit<'a>,
    /// [`SimConfig::memory_hints`](super::SimConfig::memory_hints).
    pub(super) memory_hints: bool,
}

pub(super) struct QueueLimit<'a> {
    pub(super) max: usize,
    pub(super) dropped: &'a mut u64,
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

    /// Prefetches stage `stage` of what `hint` names at the node's endpoint (see
    /// [`Endpoint::memory_hints`]), if [`SimConfig::memory_hints`](super::SimConfig) is on:
    /// an application about to send to thousands of connections in a row names stage `s`
    /// for the one `hint.stages() - s` places ahead. The node's next drain of its transmit
    /// queue then goes without the engine's own hints of that queue (which would name the
    /// same connections again), so name every connection you send to. Changes nothing but
    /// speed.
    pub fn memory_hint(&self, hint: MemoryHint<'_>, stage: u8) {
        if self.memory_hints {
            super::prefetch::hint(&self.node.endpoint, hint, stage);
            self.node.app_named.set(true);
        }
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

    /// The node on the public network that owns `addr` now, if any.
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
            if matches!(event, Event::Connected { .. }) {
                self.node.connects_waiting += 1;
            }
            self.node.events.push_back((self.now, event));
        }
    }
}

/// The [`Application`] behind [`Simulator::run_until`](crate::Simulator::run_until): events
/// wait in per-node queues.
pub(super) struct QueueEvents;

impl Application for QueueEvents {
    fn on_event(&mut self, ctx: &mut NodeContext<'_>, event: Event) {
        ctx.queue_event(event);
    }
}
