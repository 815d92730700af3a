//! One small adapter per library behind [`Stack`]: a server and `n` clients, fed datagrams
//! and time by the harness, never opening a socket or reading a clock themselves.

use crate::link::{Datagram, Node};
use crate::msg::MESSAGE_SIZE;

pub mod enet;
pub mod kcp;
pub mod renet;
pub mod shoal;

/// Which delivery a message asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// At most once, any order.
    Unreliable,
    /// Exactly once, in send order.
    Ordered,
}

/// Why a send did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The library's queue is full for now: try again after pumping.
    WouldBlock,
    /// The library has no such channel (the reason).
    Unsupported(&'static str),
    /// The connection is not there (not connected yet, or gone).
    NotConnected,
}

/// Takes a message a node received (sender, channel, bytes) and may answer it: the adapter
/// sends the answer back on the same channel before it transmits, as a game server's loop
/// would (receive, handle, send, flush).
pub type Sink<'a> = dyn FnMut(Node, Channel, &[u8]) -> Option<[u8; MESSAGE_SIZE]> + 'a;

/// A library under test: one server (node 0) and clients (nodes 1..=n), driven in
/// microseconds of whatever clock the harness keeps (virtual or real).
pub trait Stack {
    /// Number of clients connected on both sides (the server knows them and the client
    /// may send).
    fn connected(&self) -> usize;
    /// Why the library has no `channel`, if it has none.
    fn unsupported(&self, _channel: Channel) -> Option<&'static str> {
        None
    }
    /// Queues a message from `from` to `to` (one of them is the server).
    fn send(
        &mut self,
        from: Node,
        to: Node,
        channel: Channel,
        payload: &[u8],
    ) -> Result<(), SendError>;
    /// A datagram from `from` arrived at `to`.
    fn handle_datagram(&mut self, now: u64, from: Node, to: Node, bytes: &[u8]);
    /// Runs `node`'s timers at `now`, hands its received messages (with their sender) to
    /// `sink` and sends its answers, then hands its datagrams to `out`.
    fn poll(&mut self, now: u64, node: Node, out: &mut Vec<Datagram>, sink: &mut Sink<'_>);
}

/// The libraries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lib {
    /// shoal-proto, protected (ChaCha20-Poly1305 on every packet, the default).
    Shoal,
    /// shoal-proto with `Protection::None` (the peers encrypt nothing either).
    ShoalPlain,
    /// renet's transport-agnostic core (RenetServer/RenetClient).
    Renet,
    /// rusty_enet, ENet in Rust, over an in-memory socket.
    Enet,
    /// kcp, KCP ARQ, one control object per client on each side.
    Kcp,
}

impl Lib {
    /// Every library, in table order.
    pub const ALL: [Lib; 5] = [Lib::Shoal, Lib::ShoalPlain, Lib::Renet, Lib::Enet, Lib::Kcp];

    /// The name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Lib::Shoal => "shoal",
            Lib::ShoalPlain => "shoal-plain",
            Lib::Renet => "renet",
            Lib::Enet => "enet",
            Lib::Kcp => "kcp",
        }
    }

    /// A server and `clients` clients, connecting from `now`. `unthrottled` turns off
    /// ENet's packet throttle (which drops unreliable packets; the many-clients scenario
    /// needs them all), and changes nothing for the others.
    pub fn build(self, clients: usize, seed: u64, now: u64, unthrottled: bool) -> Box<dyn Stack> {
        match self {
            Lib::Shoal => Box::new(shoal::ShoalStack::new(clients, seed, now, true)),
            Lib::ShoalPlain => Box::new(shoal::ShoalStack::new(clients, seed, now, false)),
            Lib::Renet => Box::new(renet::RenetStack::new(clients, now)),
            Lib::Enet => Box::new(enet::EnetStack::new(clients, seed, unthrottled)),
            Lib::Kcp => Box::new(kcp::KcpStack::new(clients)),
        }
    }
}
