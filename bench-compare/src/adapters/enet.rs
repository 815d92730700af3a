//! ENet (rusty_enet, a Rust transpilation of the C library) over an in-memory socket: the
//! harness puts arriving datagrams in the socket's inbox and takes what ENet sent from its
//! outbox. Time comes from the harness's clock through `HostSettings::time`. Channel 0 sends
//! unreliable unsequenced packets, channel 1 reliable (ordered) ones; the packet throttle is
//! off on request (see `poll`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use rusty_enet::{
    EventNoRef, Host, HostSettings, Packet, PacketReceived, PeerID, Socket, SocketOptions, MTU_MAX,
};

use super::{Channel, SendError, Sink, Stack};
use crate::link::{Datagram, Node, SERVER};

const UNRELIABLE: u8 = 0;
const ORDERED: u8 = 1;

fn address(node: Node) -> SocketAddr {
    let i = node as u32;
    let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    SocketAddr::new(IpAddr::V4(ip), 4000)
}

fn node_of(addr: SocketAddr) -> Node {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [_, a, b, c] = ip.octets();
            ((a as usize) << 16) | ((b as usize) << 8) | c as usize
        }
        IpAddr::V6(_) => usize::MAX,
    }
}

/// A socket that is two queues.
#[derive(Default)]
pub struct MemorySocket {
    inbox: VecDeque<(SocketAddr, Vec<u8>)>,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
}

impl Socket for MemorySocket {
    type Address = SocketAddr;
    type Error = std::io::Error;

    fn init(&mut self, _options: SocketOptions) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn send(&mut self, address: SocketAddr, buffer: &[u8]) -> Result<usize, std::io::Error> {
        self.outbox.push((address, buffer.to_vec()));
        Ok(buffer.len())
    }

    fn receive(
        &mut self,
        buffer: &mut [u8; MTU_MAX],
    ) -> Result<Option<(SocketAddr, PacketReceived)>, std::io::Error> {
        let Some((from, bytes)) = self.inbox.pop_front() else {
            return Ok(None);
        };
        if bytes.len() > MTU_MAX {
            return Ok(Some((from, PacketReceived::Partial)));
        }
        buffer[..bytes.len()].copy_from_slice(&bytes);
        Ok(Some((from, PacketReceived::Complete(bytes.len()))))
    }
}

/// A server host and one host per client.
pub struct EnetStack {
    clock: Rc<Cell<u64>>,
    server: Host<MemorySocket>,
    clients: Vec<Host<MemorySocket>>,
    /// The server's peer for each client, once connected.
    server_peer: Vec<Option<PeerID>>,
    node_of_peer: Vec<Node>,
    client_peer: Vec<PeerID>,
    client_up: Vec<bool>,
    unthrottled: bool,
}

fn host(clock: &Rc<Cell<u64>>, peers: usize, seed: u32) -> Host<MemorySocket> {
    let clock = Rc::clone(clock);
    Host::new(
        MemorySocket::default(),
        HostSettings {
            peer_limit: peers,
            channel_limit: 2,
            time: Box::new(move || Duration::from_micros(clock.get())),
            seed: Some(seed),
            ..HostSettings::default()
        },
    )
    .unwrap_or_else(|e| panic!("ENet host: {e:?}"))
}

impl EnetStack {
    /// A server and `n` clients that start connecting (on their first poll).
    pub fn new(n: usize, seed: u64, unthrottled: bool) -> Self {
        // ENet keeps milliseconds in 32 bits: start the clock away from zero.
        let clock = Rc::new(Cell::new(0));
        let server = host(&clock, n.max(1), seed as u32);
        let mut clients = Vec::with_capacity(n);
        let mut client_peer = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = host(&clock, 1, (seed as u32).wrapping_add(1 + i as u32));
            let peer = c
                .connect(address(SERVER), 2, i as u32 + 1)
                .expect("a free peer")
                .id();
            clients.push(c);
            client_peer.push(peer);
        }
        EnetStack {
            clock,
            server,
            clients,
            server_peer: vec![None; n],
            node_of_peer: vec![usize::MAX; n.max(1)],
            client_peer,
            client_up: vec![false; n],
            unthrottled,
        }
    }
}

fn packet(channel: Channel, payload: &[u8]) -> (u8, Packet) {
    match channel {
        Channel::Unreliable => (UNRELIABLE, Packet::unreliable_unsequenced(payload)),
        Channel::Ordered => (ORDERED, Packet::reliable(payload)),
    }
}

impl Stack for EnetStack {
    fn connected(&self) -> usize {
        (0..self.clients.len())
            .filter(|&i| self.client_up[i] && self.server_peer[i].is_some())
            .count()
    }

    fn send(
        &mut self,
        from: Node,
        to: Node,
        channel: Channel,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let (ch, p) = packet(channel, payload);
        let peer = if from == SERVER {
            let id = self.server_peer[to - 1].ok_or(SendError::NotConnected)?;
            self.server.peer_mut(id)
        } else {
            let id = self.client_peer[from - 1];
            self.clients[from - 1].peer_mut(id)
        };
        peer.send(ch, &p).map_err(|_| SendError::NotConnected)
    }

    fn handle_datagram(&mut self, _now: u64, from: Node, to: Node, bytes: &[u8]) {
        let h = if to == SERVER {
            &mut self.server
        } else {
            &mut self.clients[to - 1]
        };
        h.socket_mut()
            .inbox
            .push_back((address(from), bytes.to_vec()));
    }

    fn poll(&mut self, now: u64, node: Node, out: &mut Vec<Datagram>, sink: &mut Sink<'_>) {
        // Offset so that ENet's millisecond clock never reads 0 (its "unset" value).
        self.clock.set(now + 1_000_000);
        let h = if node == SERVER {
            &mut self.server
        } else {
            &mut self.clients[node - 1]
        };
        loop {
            let event = match h.service() {
                Ok(Some(e)) => e.no_ref(),
                Ok(None) => break,
                Err(e) => panic!("ENet service: {e}"),
            };
            match event {
                EventNoRef::Connect { peer, data } => {
                    // ENet's packet throttle drops unreliable packets whenever the round trip
                    // rises above its recent variance (here: the 10 ms poll interval of the
                    // many-clients scenario), 7-18% of them on a lossless link in our runs.
                    // Deceleration 0 keeps the throttle at its maximum: nothing is dropped.
                    // Only there: the throttle also sizes the reliable window, and ENet's
                    // lossy figures are better with its default.
                    if self.unthrottled {
                        h.peer_mut(peer).set_throttle(5000, 2, 0);
                    }
                    if node == SERVER {
                        let client = data as usize;
                        if (1..=self.server_peer.len()).contains(&client) {
                            self.server_peer[client - 1] = Some(peer);
                            self.node_of_peer[peer.0] = client;
                        }
                    } else {
                        self.client_up[node - 1] = true;
                    }
                }
                EventNoRef::Receive {
                    peer,
                    channel_id,
                    packet,
                } => {
                    let from = if node == SERVER {
                        self.node_of_peer[peer.0]
                    } else {
                        SERVER
                    };
                    let kind = if channel_id == ORDERED {
                        Channel::Ordered
                    } else {
                        Channel::Unreliable
                    };
                    if let Some(reply) = sink(from, kind, packet.data()) {
                        let (ch, p) = self::packet(kind, &reply);
                        let _ = h.peer_mut(peer).send(ch, &p);
                    }
                }
                EventNoRef::Disconnect { .. } => {}
            }
        }
        for (to, bytes) in h.socket_mut().outbox.drain(..) {
            out.push(Datagram {
                from: node,
                to: node_of(to),
                bytes,
            });
        }
    }
}
