//! One node as a [`Network`]: game code written for the socket drivers runs on it unchanged.

use core::net::SocketAddr;

use shoal_proto::{
    Bytes, ConnectionHandle, Event, IncomingRequest, LinkStats, NetError, Network, RequestId,
};

use super::{NodeId, Simulator};

/// A node of a [`Simulator`] as a [`Network`], from [`Simulator::network`]: commands act on
/// the node's endpoint at the simulated time, and events are the ones the node emitted
/// under [`run_until`](Simulator::run_until) / [`run_for`](Simulator::run_for). Run the
/// simulator for a frame, then hand the game its node:
///
/// ```
/// use core::time::Duration;
/// use shoal_proto::{Config, Event, Network};
/// use shoal_sim::{SimConfig, Simulator};
///
/// /// Game code that knows only `Network`.
/// fn greet(net: &mut impl Network, events: &mut Vec<Event>) {
///     net.drain_events(events);
///     for event in events.drain(..) {
///         if let Event::Connected { conn, .. } = event {
///             net.send(conn, 3, "welcome").expect("queued");
///         }
///     }
/// }
///
/// let mut sim = Simulator::new(SimConfig::default())?;
/// let server = sim.add_node(Config::default())?;
/// let client = sim.add_node(Config { accept_incoming: false, ..Config::default() })?;
/// let to = sim.address(server);
/// sim.network(client).connect(to, b"").expect("connect starts");
/// let mut events = Vec::new();
/// for _frame in 0..20 {
///     sim.run_for(Duration::from_millis(50));
///     greet(&mut sim.network(server), &mut events);
/// }
/// let got: Vec<Event> = std::iter::from_fn(|| sim.network(client).poll_event()).collect();
/// assert!(got.iter().any(|e| matches!(e, Event::Message { payload, .. } if payload == "welcome")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct NodeNetwork<'a> {
    sim: &'a mut Simulator,
    node: NodeId,
}

impl Simulator {
    /// `node` as a [`Network`], for game code written against that trait.
    ///
    /// # Panics
    /// If `node` is not a node of this simulator.
    pub fn network(&mut self, node: NodeId) -> NodeNetwork<'_> {
        assert!(node.index() < self.node_count(), "{node} does not exist");
        NodeNetwork { sim: self, node }
    }
}

impl Network for NodeNetwork<'_> {
    fn local_addr(&self) -> SocketAddr {
        self.sim.address(self.node)
    }

    fn connect(&mut self, remote: SocketAddr, data: &[u8]) -> Result<ConnectionHandle, NetError> {
        Ok(self.sim.connect_to(self.node, remote, data)?)
    }

    fn send(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<(), NetError> {
        Ok(self
            .sim
            .endpoint_mut(self.node)
            .send(conn, channel, payload)?)
    }

    fn request(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<RequestId, NetError> {
        let now = self.sim.now();
        let endpoint = self.sim.endpoint_mut(self.node);
        Ok(endpoint.request(now, conn, channel, payload)?)
    }

    fn respond(
        &mut self,
        conn: ConnectionHandle,
        request: IncomingRequest,
        payload: impl Into<Bytes>,
    ) -> Result<(), NetError> {
        Ok(self
            .sim
            .endpoint_mut(self.node)
            .respond(conn, request, payload)?)
    }

    fn broadcast(
        &mut self,
        channel: u8,
        payload: impl Into<Bytes>,
        except: Option<ConnectionHandle>,
    ) -> usize {
        let payload = payload.into();
        let targets = self.peers();
        let endpoint = self.sim.endpoint_mut(self.node);
        let mut queued = 0;
        for conn in targets.into_iter().filter(|&c| Some(c) != except) {
            queued += usize::from(endpoint.send(conn, channel, payload.clone()).is_ok());
        }
        queued
    }

    fn disconnect(&mut self, conn: ConnectionHandle, code: u16) {
        self.sim.endpoint_mut(self.node).disconnect(conn, code);
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.sim.next_event(self.node).map(|(_, event)| event)
    }

    /// The endpoint's peers less those whose `Connected` the game has not taken yet: the
    /// simulator takes events from the endpoint as they happen and holds them for the game.
    fn peers(&self) -> Vec<ConnectionHandle> {
        let mut waiting = self.sim.connects_waiting(self.node);
        waiting.sort_unstable();
        let endpoint = self.sim.endpoint(self.node);
        let taken = |c: &ConnectionHandle| waiting.binary_search(c).is_err();
        endpoint.peers().filter(taken).collect()
    }

    fn link_stats(&self, conn: ConnectionHandle) -> Option<LinkStats> {
        self.sim.endpoint(self.node).link_stats(conn)
    }
}

#[cfg(test)]
mod tests {
    use core::time::Duration;

    use shoal_proto::{Config, Event, Network};

    use crate::{SimConfig, Simulator};

    /// `peers` and `broadcast` name only connections whose `Connected` the game has taken
    /// (as `Network` promises): the simulator takes events from the endpoint as they happen
    /// and holds them for the game, and code keeping per-player state from `Connected`
    /// would meet handles it has no entry for.
    #[test]
    fn peers_are_those_whose_connected_the_game_took() {
        let mut sim = Simulator::new(SimConfig::default()).expect("simulator");
        let server = sim.add_node(Config::default()).expect("server");
        let client = sim
            .add_node(Config {
                accept_incoming: false,
                ..Config::default()
            })
            .expect("client");
        let to = sim.address(server);
        sim.network(client)
            .connect(to, b"")
            .expect("connect starts");
        sim.run_for(Duration::from_millis(500));
        let mut net = sim.network(server);
        assert!(net.peers().is_empty(), "its Connected is not taken yet");
        assert_eq!(net.broadcast(3, "early", None), 0);
        let taken = net.poll_event();
        let Some(Event::Connected { conn, .. }) = taken else {
            panic!("expected Connected, got {taken:?}");
        };
        assert_eq!(net.peers(), [conn]);
        assert_eq!(net.broadcast(3, "hello", None), 1);
        assert_eq!(net.broadcast(3, "hello", Some(conn)), 0);
    }
}
