//! Shoal: `shoal_proto::Endpoint` driven directly (sans-IO), one per node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use shoal_proto::{Config, ConnectionHandle, Endpoint, Event, Instant, Protection, SecretSeed};

use super::{Channel, SendError, Sink, Stack};
use crate::link::{Datagram, Node, SERVER};

const UNRELIABLE: u8 = 0;
const ORDERED: u8 = 3;

/// The address a node has on the simulated network (the harness maps it back).
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

/// A server endpoint and one client endpoint per client.
pub struct ShoalStack {
    server: Endpoint,
    clients: Vec<Endpoint>,
    /// Each client's connection to the server, on the client side.
    client_conn: Vec<ConnectionHandle>,
    client_up: Vec<bool>,
    /// The server's connection to each client, once `Connected`.
    server_conn: Vec<Option<ConnectionHandle>>,
    /// Each server connection's client, by `ConnectionHandle::index` (the handle kept to tell
    /// a later connection in the same index apart), as an application would keep it.
    server_node: Vec<Option<(ConnectionHandle, Node)>>,
    buf: Vec<u8>,
}

impl ShoalStack {
    /// A server and `n` clients that start connecting at `now`.
    pub fn new(n: usize, seed: u64, now: u64, protected: bool) -> Self {
        let protection = if protected {
            Protection::Encrypted
        } else {
            Protection::None
        };
        let config = |s: u64, server: bool| Config {
            seed: s,
            secret_seed: Some(SecretSeed::insecure_from_u64(s)),
            protection,
            accept_incoming: server,
            max_connections: if server { n + 16 } else { 4 },
            ..Config::default()
        };
        let server = Endpoint::new(config(seed.wrapping_mul(1_000_003), true)).expect("config");
        let mut clients = Vec::with_capacity(n);
        let mut client_conn = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = Endpoint::new(config(seed.wrapping_mul(1_000_003) + 1 + i as u64, false))
                .expect("config");
            let conn = c
                .connect(Instant::from_micros(now), address(SERVER), &b""[..])
                .expect("connect");
            clients.push(c);
            client_conn.push(conn);
        }
        ShoalStack {
            server,
            clients,
            client_conn,
            client_up: vec![false; n],
            server_conn: vec![None; n],
            server_node: Vec::new(),
            buf: vec![0; 1500],
        }
    }
}

fn channel_id(channel: Channel) -> u8 {
    match channel {
        Channel::Unreliable => UNRELIABLE,
        Channel::Ordered => ORDERED,
    }
}

fn send_error(e: shoal_proto::SendError) -> SendError {
    match e {
        shoal_proto::SendError::QueueFull { .. } => SendError::WouldBlock,
        _ => SendError::NotConnected,
    }
}

impl Stack for ShoalStack {
    fn connected(&self) -> usize {
        (0..self.clients.len())
            .filter(|&i| self.client_up[i] && self.server_conn[i].is_some())
            .count()
    }

    fn send(
        &mut self,
        from: Node,
        to: Node,
        channel: Channel,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let ch = channel_id(channel);
        if from == SERVER {
            let conn = self.server_conn[to - 1].ok_or(SendError::NotConnected)?;
            self.server
                .send(conn, ch, payload.to_vec())
                .map_err(send_error)
        } else {
            let i = from - 1;
            self.clients[i]
                .send(self.client_conn[i], ch, payload.to_vec())
                .map_err(send_error)
        }
    }

    fn handle_datagram(&mut self, now: u64, from: Node, to: Node, bytes: &[u8]) {
        let now = Instant::from_micros(now);
        if to == SERVER {
            self.server.handle_datagram(now, address(from), bytes);
        } else {
            self.clients[to - 1].handle_datagram(now, address(SERVER), bytes);
        }
    }

    fn poll(&mut self, now: u64, node: Node, out: &mut Vec<Datagram>, sink: &mut Sink<'_>) {
        let now = Instant::from_micros(now);
        let ep = if node == SERVER {
            &mut self.server
        } else {
            &mut self.clients[node - 1]
        };
        ep.handle_timeout(now);
        while let Some(event) = ep.poll_event() {
            match event {
                Event::Connected { conn, remote, .. } => {
                    if node == SERVER {
                        let peer = node_of(remote);
                        if (1..=self.server_conn.len()).contains(&peer) {
                            self.server_conn[peer - 1] = Some(conn);
                            let i = conn.index();
                            if self.server_node.len() <= i {
                                self.server_node.resize(i + 1, None);
                            }
                            self.server_node[i] = Some((conn, peer));
                        }
                    } else {
                        self.client_up[node - 1] = true;
                    }
                }
                Event::Message {
                    conn,
                    channel,
                    payload,
                    ..
                } => {
                    let from = if node == SERVER {
                        match self.server_node.get(conn.index()) {
                            Some(&Some((c, peer))) if c == conn => peer,
                            _ => usize::MAX,
                        }
                    } else {
                        SERVER
                    };
                    let ch = if channel == ORDERED {
                        Channel::Ordered
                    } else {
                        Channel::Unreliable
                    };
                    if let Some(reply) = sink(from, ch, &payload) {
                        // Refused (queue full) counts as lost: the scenario sees it missing.
                        let _ = ep.send(conn, channel, reply.to_vec());
                    }
                }
                _ => {}
            }
        }
        let ep = if node == SERVER {
            &mut self.server
        } else {
            &mut self.clients[node - 1]
        };
        while let Some(t) = ep.poll_transmit(now, &mut self.buf) {
            out.push(Datagram {
                from: node,
                to: node_of(t.to),
                bytes: self.buf[..t.len].to_vec(),
            });
        }
    }
}
