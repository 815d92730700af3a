//! [`Network`]: what a game needs from Shoal, whoever drives the endpoint — a socket driver,
//! a background thread, or the simulator — so the same game code runs on each.

use alloc::vec::Vec;
use bytes::Bytes;
use core::fmt;
use core::net::SocketAddr;

use crate::error::{ConnectError, SendError};
use crate::event::{ConnectionHandle, Event, IncomingRequest, RequestId};
use crate::stats::LinkStats;

/// A network a game talks to: connect, send, request, respond, broadcast, take events, read
/// each connection's figures. `shoal-std`'s `Driver` and background-thread `Handle`,
/// `shoal-mio`'s `MioDriver` and a `shoal-sim` node implement it, so game logic written
/// against `impl Network` runs on real sockets and in the simulator alike.
///
/// ```
/// use shoal_proto::{Event, NetError, Network};
///
/// /// A chat server's whole logic: every line goes to everyone else.
/// fn relay_chat(net: &mut impl Network, events: &mut Vec<Event>) -> Result<(), NetError> {
///     net.drain_events(events); // taken out first: `net` is free to send while we look
///     for event in events.drain(..) {
///         if let Event::Message { conn, channel, payload, .. } = event {
///             net.broadcast(channel, payload, Some(conn));
///         }
///     }
///     Ok(())
/// }
/// ```
pub trait Network {
    /// The local address (a simulator node's simulated one).
    fn local_addr(&self) -> SocketAddr;

    /// Starts connecting to `remote`, passing `data` to its accept hook (a player name, a
    /// ticket). `Connected` or `ConnectFailed` follows.
    fn connect(&mut self, remote: SocketAddr, data: &[u8]) -> Result<ConnectionHandle, NetError>;

    /// Queues `payload` on `channel` of `conn`. An error says the endpoint refused it (full
    /// queue, unknown channel or connection, too large). On a background thread the endpoint
    /// is on the other side of a queue: `send` returns once the command is handed over, and a
    /// refusal comes later as the thread's `Output::SendFailed` (through this trait's
    /// `poll_event`, only counted: see `shoal_std::Handle`).
    fn send(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<(), NetError>;

    /// Sends a request; `Response` or `RequestTimedOut` follows with the returned id.
    fn request(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<RequestId, NetError>;

    /// Answers a request received as `Event::Request`. A refusal is reported as for
    /// [`send`](Self::send).
    fn respond(
        &mut self,
        conn: ConnectionHandle,
        request: IncomingRequest,
        payload: impl Into<Bytes>,
    ) -> Result<(), NetError>;

    /// Queues `payload` on `channel` to every connected peer but `except`. Returns how many
    /// it was queued for (with a background thread: how many the thread queued it for).
    fn broadcast(
        &mut self,
        channel: u8,
        payload: impl Into<Bytes>,
        except: Option<ConnectionHandle>,
    ) -> usize;

    /// Closes `conn`, telling the peer with `code`. The notice leaves with the network's next
    /// send (a driver's `update`, `poll` or `flush`, or when it is dropped).
    fn disconnect(&mut self, conn: ConnectionHandle, code: u16);

    /// The next event, if any.
    fn poll_event(&mut self) -> Option<Event>;

    /// Moves every waiting event into `events` (a buffer kept between frames: no allocation
    /// once it has grown), so the network is free to send while the game goes through them.
    fn drain_events(&mut self, events: &mut Vec<Event>) {
        while let Some(event) = self.poll_event() {
            events.push(event);
        }
    }

    /// The connected peers: connections whose `Connected` the game has taken, still open.
    fn peers(&self) -> Vec<ConnectionHandle>;

    /// Round-trip time, loss and bytes per second of a live connection.
    fn link_stats(&self, conn: ConnectionHandle) -> Option<LinkStats>;
}

/// Why a [`Network`] command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetError {
    /// The endpoint refused the connection attempt.
    Connect(ConnectError),
    /// The endpoint refused the message, request or response.
    Send(SendError),
    /// The network has stopped (a background thread that shut down or failed).
    Stopped,
    /// A background thread's command queue is full; try again after it catches up.
    Busy,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Connect(e) => write!(f, "connect failed: {e}"),
            NetError::Send(e) => write!(f, "send failed: {e}"),
            NetError::Stopped => {
                f.write_str("the network has stopped (a thread's shutdown gives its error)")
            }
            NetError::Busy => f.write_str("the network's command queue is full; try again shortly"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for NetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetError::Connect(e) => Some(e),
            NetError::Send(e) => Some(e),
            NetError::Stopped | NetError::Busy => None,
        }
    }
}

impl From<ConnectError> for NetError {
    fn from(e: ConnectError) -> Self {
        NetError::Connect(e)
    }
}

impl From<SendError> for NetError {
    fn from(e: SendError) -> Self {
        NetError::Send(e)
    }
}
