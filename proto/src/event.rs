//! What the endpoint tells the application, and the handles it hands out.

use bytes::Bytes;
use core::fmt;
use core::net::SocketAddr;

use alloc::boxed::Box;

use crate::endpoint::PeerIdentity;
use crate::wire::{CloseCode, RejectCode};

/// Names one connection of an endpoint. Stays unique for the endpoint's lifetime: a handle
/// of a closed connection never names a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl ConnectionHandle {
    /// A small dense number for this connection, for indexing the application's own
    /// per-connection table (a `Vec`): below the most connections the endpoint has had at
    /// once. A closed connection's index is given to a later one, whose handle differs (a
    /// generation is part of it): keep the handle beside the entry to tell them apart.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Display for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}.{}", self.index, self.generation)
    }
}

/// Identifies a request this endpoint sent; its `Response` or `RequestTimedOut` carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A request received from a peer; pass it to [`Endpoint::respond`](crate::Endpoint::respond)
/// to answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IncomingRequest {
    /// The channel it came on; the response goes back on it.
    pub channel: u8,
    /// Its sequence number, which the response echoes.
    pub sequence: u16,
}

/// Where and how long: the result of [`Endpoint::poll_transmit`](crate::Endpoint::poll_transmit).
/// The datagram itself is in the caller's buffer, `buf[..len]`.
#[must_use = "the datagram in the buffer must be sent to `to`"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub to: SocketAddr,
    /// Bytes written at the start of the buffer.
    pub len: usize,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// This side called `disconnect`.
    ClosedLocally,
    /// The peer closed the connection, with its application's code.
    ClosedByPeer {
        /// The code the peer passed to `disconnect`.
        code: u16,
    },
    /// Nothing was heard from the peer for the idle timeout (or the handshake timeout).
    TimedOut,
    /// The server's accept hook refused the connection, with its code.
    Rejected {
        /// The code the hook gave.
        code: u16,
    },
    /// The server has as many connections as it allows.
    ServerFull,
    /// The two sides configure their channels or their MTU differently.
    Incompatible,
    /// The protocol was broken: the peer says this side did (its `Disconnect` carried that
    /// reason), or an authenticated packet of the peer's lied (an acknowledgement of packet
    /// numbers never sent). This side never closes a connection for what an unauthenticated
    /// packet contains: such packets are dropped and counted instead.
    ProtocolViolation,
    /// The same address connected again with a new handshake, replacing this connection (the
    /// peer restarted), or both peers connected to each other at once and the peer's attempt
    /// won: its connection arrives as a new `Connected`, and the messages and requests
    /// queued on the attempt that lost go on it, requests keeping their ids (not if the
    /// attempt pinned a server key that peer did not prove: they end with the attempt).
    Replaced,
    /// The server proved a static key other than the one `ConnectOptions::server_key`
    /// pinned (or none): it is not the server this client meant to reach.
    ServerKeyMismatch,
    /// The two sides configure packet protection differently (one requires encryption, the
    /// other has it off).
    ProtectionMismatch,
    /// The server requires a connect token and this one is missing, forged, or sealed under
    /// another backend's key.
    TokenInvalid,
    /// The connect token has expired: get a new one from the backend.
    TokenExpired,
    /// The connect token was used already: get a new one from the backend.
    TokenUsed,
    /// The connect token is for other servers than this one.
    TokenWrongServer,
    /// The server runs another application protocol id (`Config::protocol_id`): another game,
    /// or another version of this one.
    WrongProtocol,
    /// The address answered, but takes no connections (`Config::accept_incoming` is off).
    NotAccepting,
    /// The peer no longer knows this connection: it restarted (or dropped the connection)
    /// and said so when our packets reached it, and five rounds of probes drew nothing
    /// authentic from it after (the notice itself is unauthenticated; see `wire.md`).
    PeerReset,
    /// A large message queued before the connection was made is larger than the server's
    /// reassembly budget (learned from its `Accept`): it could never be delivered, and its
    /// channel would wait behind it for good. Split it, send it once `Connected` (`send`
    /// then refuses it with `MessageTooLarge`), or raise the server's `reassembly_budget`.
    PeerBudgetTooSmall,
    /// [`INTEGRITY_LIMIT`](crate::INTEGRITY_LIMIT) packets failed to authenticate under the
    /// connection's keys (someone on the path, or anyone who learned its connection id, kept
    /// sending forgeries): past that many tries a forgery's odds are no longer negligible, so
    /// the side that counted them closed the connection, and says so to the other. Connect
    /// again: a new handshake draws new keys.
    IntegrityLimit,
}

impl DisconnectReason {
    pub(crate) fn from_reject(code: RejectCode) -> Self {
        match code {
            RejectCode::Full => DisconnectReason::ServerFull,
            RejectCode::Refused(code) => DisconnectReason::Rejected { code },
            RejectCode::ChannelMismatch => DisconnectReason::Incompatible,
            RejectCode::ProtectionMismatch => DisconnectReason::ProtectionMismatch,
            RejectCode::TokenInvalid => DisconnectReason::TokenInvalid,
            RejectCode::TokenExpired => DisconnectReason::TokenExpired,
            RejectCode::TokenUsed => DisconnectReason::TokenUsed,
            RejectCode::TokenWrongServer => DisconnectReason::TokenWrongServer,
            RejectCode::WrongProtocol => DisconnectReason::WrongProtocol,
            RejectCode::NotAccepting => DisconnectReason::NotAccepting,
            RejectCode::UnknownConnection => DisconnectReason::PeerReset,
        }
    }

    pub(crate) fn from_close(code: CloseCode) -> Self {
        match code {
            CloseCode::Application(code) => DisconnectReason::ClosedByPeer { code },
            CloseCode::ProtocolViolation => DisconnectReason::ProtocolViolation,
            CloseCode::TokenUsed => DisconnectReason::TokenUsed,
            CloseCode::IntegrityLimit => DisconnectReason::IntegrityLimit,
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ClosedLocally => f.write_str("closed by this side"),
            DisconnectReason::ClosedByPeer { code } => write!(f, "closed by peer (code {code})"),
            DisconnectReason::TimedOut => f.write_str("timed out: nothing heard from the peer"),
            DisconnectReason::Rejected { code } => {
                write!(f, "rejected by the server (code {code})")
            }
            DisconnectReason::ServerFull => f.write_str("rejected: the server is full"),
            DisconnectReason::Incompatible => f.write_str(
                "rejected: the two sides configure their channels or their mtu differently",
            ),
            DisconnectReason::ProtocolViolation => f.write_str("closed: malformed or hostile data"),
            DisconnectReason::Replaced => {
                f.write_str("replaced by a new connection with the same peer")
            }
            DisconnectReason::ServerKeyMismatch => f.write_str(
                "refused: the server did not prove the pinned server key (wrong server, or \
                 someone in the middle)",
            ),
            DisconnectReason::ProtectionMismatch => {
                f.write_str("rejected: the two sides configure packet protection differently")
            }
            DisconnectReason::TokenInvalid => {
                f.write_str("rejected: the connect token is missing or not valid for this server")
            }
            DisconnectReason::TokenExpired => {
                f.write_str("rejected: the connect token has expired; get a new one")
            }
            DisconnectReason::TokenUsed => {
                f.write_str("rejected: the connect token was used already; get a new one")
            }
            DisconnectReason::TokenWrongServer => {
                f.write_str("rejected: the connect token is for other servers")
            }
            DisconnectReason::WrongProtocol => f.write_str(
                "rejected: the server runs another protocol id (another game or version)",
            ),
            DisconnectReason::NotAccepting => {
                f.write_str("rejected: that address takes no connections")
            }
            DisconnectReason::PeerReset => f.write_str(
                "the peer no longer knows this connection (it restarted); connect again",
            ),
            DisconnectReason::PeerBudgetTooSmall => f.write_str(
                "a message queued before connecting is larger than the server's reassembly \
                 budget; split it, send it once connected, or raise the server's \
                 reassembly_budget",
            ),
            DisconnectReason::IntegrityLimit => f.write_str(
                "closed: too many forged packets tried this connection's keys; connect again \
                 for fresh ones",
            ),
        }
    }
}

/// Hub routing of a message or request: who first sent it and whom it is addressed to, when
/// that is not simply "the peer, to this side". Only hubs and their members see it (see
/// [`hub`](crate::hub)); on a plain client-server connection it is always `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Relay {
    /// The user id of its original sender (a hub writes it when it forwards a member's
    /// message; a server takes from a client only what the client owns).
    pub owner: u16,
    /// The user id (or room, see [`hub::Target`](crate::hub::Target)) it is addressed to,
    /// if the sender asked the hub to forward it.
    pub target: Option<u16>,
}

/// Something that happened, returned by [`Endpoint::poll_event`](crate::Endpoint::poll_event).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection finished its handshake and can carry messages.
    Connected {
        /// The connection.
        conn: ConnectionHandle,
        /// The peer's address.
        remote: SocketAddr,
        /// Who the peer proved to be: the connect data it sent, its static key, its connect
        /// token's claims, the user ids on the connection.
        identity: Box<PeerIdentity>,
    },
    /// A connection attempt this side started (`connect`) ended without connecting: the
    /// server refused it, answered with another protocol, or never answered. The handle is
    /// dead afterwards. A connection that did connect ends in `Disconnected` instead.
    ConnectFailed {
        /// The connection attempt.
        conn: ConnectionHandle,
        /// Why: `TimedOut` (no answer within `Config::handshake_timeout`), a reject reason
        /// (`WrongProtocol`, `NotAccepting`, `ServerFull`, `Rejected { code }`, ...), or
        /// `ClosedLocally` (this side gave up with `disconnect`).
        reason: DisconnectReason,
    },
    /// A connection that was `Connected` ended. The handle is dead afterwards.
    Disconnected {
        /// The connection.
        conn: ConnectionHandle,
        /// Why.
        reason: DisconnectReason,
    },
    /// A message arrived.
    Message {
        /// The connection it came on.
        conn: ConnectionHandle,
        /// Its channel.
        channel: u8,
        /// Its sequence number on the channel.
        sequence: u16,
        /// The message. (Up to 4 KiB, a slice of a block of up to 16 KiB that the endpoint
        /// shares among messages: one kept long keeps its block; copy what you keep.)
        payload: Bytes,
        /// Hub routing, if it was relayed or addressed for relaying; `None` otherwise.
        relay: Option<Relay>,
    },
    /// A request arrived; answer it with `respond`.
    Request {
        /// The connection it came on.
        conn: ConnectionHandle,
        /// What to pass to `respond`.
        request: IncomingRequest,
        /// The request.
        payload: Bytes,
        /// Hub routing, if it was relayed or addressed for relaying; `None` otherwise.
        relay: Option<Relay>,
    },
    /// The answer to a request this side sent.
    Response {
        /// The connection.
        conn: ConnectionHandle,
        /// The id `request` returned.
        id: RequestId,
        /// The answer.
        payload: Bytes,
    },
    /// A connection moved to another path: the peer's NAT rebound, or a peer link moved
    /// from its hub relay to a direct path ([`hub::relay_user`](crate::hub::relay_user) of
    /// `remote` is `None`) or back.
    PathChanged {
        /// The connection.
        conn: ConnectionHandle,
        /// Where its packets go now.
        remote: SocketAddr,
    },
    /// A request got no answer before its deadline. A late answer is dropped.
    RequestTimedOut {
        /// The connection.
        conn: ConnectionHandle,
        /// The id `request` returned.
        id: RequestId,
    },
}

impl Event {
    /// The user id of a message's or request's original sender: its relay owner, or else
    /// `peer_user_id` (the connection's peer, which sent it itself). `None` for other events.
    pub fn owner(&self, peer_user_id: u16) -> Option<u16> {
        match self {
            Event::Message { relay, .. } | Event::Request { relay, .. } => {
                Some(relay.map_or(peer_user_id, |r| r.owner))
            }
            _ => None,
        }
    }

    /// The connection the event is about.
    pub fn connection(&self) -> ConnectionHandle {
        match self {
            Event::Connected { conn, .. }
            | Event::ConnectFailed { conn, .. }
            | Event::Disconnected { conn, .. }
            | Event::Message { conn, .. }
            | Event::Request { conn, .. }
            | Event::Response { conn, .. }
            | Event::PathChanged { conn, .. }
            | Event::RequestTimedOut { conn, .. } => *conn,
        }
    }
}
