//! renet's transport-agnostic core: `RenetServer` and `RenetClient` fed packets directly.
//! The core has no handshake (netcode does that, and the encryption): the harness adds each
//! client to the server and marks it connected, as renet's own local-client helper does.

use std::time::Duration;

use renet::{ConnectionConfig, DefaultChannel, RenetClient, RenetServer};

use super::{Channel, SendError, Sink, Stack};
use crate::link::{Datagram, Node, SERVER};

/// A server and one `RenetClient` per client; client `i` is renet `ClientId` `i + 1`.
pub struct RenetStack {
    server: RenetServer,
    clients: Vec<RenetClient>,
    /// Last time each node was updated (renet takes elapsed durations).
    last: Vec<u64>,
}

impl RenetStack {
    /// A server and `n` connected clients at `now`.
    pub fn new(n: usize, now: u64) -> Self {
        let mut server = RenetServer::new(ConnectionConfig::default());
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            server.add_connection(i as u64 + 1);
            let mut c = RenetClient::new(ConnectionConfig::default());
            c.set_connected();
            clients.push(c);
        }
        while server.get_event().is_some() {}
        RenetStack {
            server,
            clients,
            last: vec![now; n + 1],
        }
    }
}

fn channel_id(channel: Channel) -> u8 {
    match channel {
        Channel::Unreliable => DefaultChannel::Unreliable.into(),
        Channel::Ordered => DefaultChannel::ReliableOrdered.into(),
    }
}

impl Stack for RenetStack {
    fn connected(&self) -> usize {
        self.clients.iter().filter(|c| c.is_connected()).count()
    }

    fn send(
        &mut self,
        from: Node,
        to: Node,
        channel: Channel,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let ch = channel_id(channel);
        let bytes = renet::Bytes::copy_from_slice(payload);
        if from == SERVER {
            let id = to as u64;
            if !self.server.is_connected(id) {
                return Err(SendError::NotConnected);
            }
            // A full reliable channel disconnects the client in renet: refuse instead.
            if !self.server.can_send_message(id, ch, payload.len()) {
                return Err(SendError::WouldBlock);
            }
            self.server.send_message(id, ch, bytes);
        } else {
            let c = &mut self.clients[from - 1];
            if !c.is_connected() {
                return Err(SendError::NotConnected);
            }
            if !c.can_send_message(ch, payload.len()) {
                return Err(SendError::WouldBlock);
            }
            c.send_message(ch, bytes);
        }
        Ok(())
    }

    fn handle_datagram(&mut self, _now: u64, from: Node, to: Node, bytes: &[u8]) {
        if to == SERVER {
            let _ = self.server.process_packet_from(bytes, from as u64);
        } else {
            self.clients[to - 1].process_packet(bytes);
        }
    }

    fn poll(&mut self, now: u64, node: Node, out: &mut Vec<Datagram>, sink: &mut Sink<'_>) {
        let elapsed = Duration::from_micros(now.saturating_sub(self.last[node]));
        self.last[node] = now.max(self.last[node]);
        let unreliable = channel_id(Channel::Unreliable);
        let ordered = channel_id(Channel::Ordered);
        if node == SERVER {
            self.server.update(elapsed);
            while self.server.get_event().is_some() {}
            for id in 1..=self.clients.len() as u64 {
                for (ch, kind) in [
                    (unreliable, Channel::Unreliable),
                    (ordered, Channel::Ordered),
                ] {
                    while let Some(m) = self.server.receive_message(id, ch) {
                        if let Some(reply) = sink(id as Node, kind, &m) {
                            if self.server.can_send_message(id, ch, reply.len()) {
                                self.server.send_message(id, ch, reply.to_vec());
                            }
                        }
                    }
                }
                if let Ok(packets) = self.server.get_packets_to_send(id) {
                    for p in packets {
                        out.push(Datagram {
                            from: SERVER,
                            to: id as Node,
                            bytes: p,
                        });
                    }
                }
            }
        } else {
            let c = &mut self.clients[node - 1];
            c.update(elapsed);
            for (ch, kind) in [
                (unreliable, Channel::Unreliable),
                (ordered, Channel::Ordered),
            ] {
                while let Some(m) = c.receive_message(ch) {
                    if let Some(reply) = sink(SERVER, kind, &m) {
                        if c.can_send_message(ch, reply.len()) {
                            c.send_message(ch, reply.to_vec());
                        }
                    }
                }
            }
            for p in c.get_packets_to_send() {
                out.push(Datagram {
                    from: node,
                    to: SERVER,
                    bytes: p,
                });
            }
        }
    }
}
