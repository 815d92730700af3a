//! Shoal on `mio`: a driver that joins the event loop you already have.
//!
//! [`shoal_proto`] is a state machine that does no I/O. [`MioDriver`] owns a non-blocking UDP
//! socket and a clock and plugs into *your* `mio::Poll`: register it under a token of your
//! choosing, hand it the events for that token, call [`MioDriver::update`] once per turn and
//! pass [`MioDriver::next_timeout`] to `Poll::poll`. A program without an event loop of its
//! own uses [`EventLoop`], which owns a `Poll` and offers `run_once`/`run_until`.
//!
//! The commands (`connect`, `send`, `request`, `respond`, `broadcast`, `disconnect`), the
//! events (`poll_event`, `drain_events`) and the getters (`local_addr`, `endpoint`, `now`,
//! `stats`, `link_stats`) are [`DriverCore`]'s, from `shoal-std` and shared with its
//! `Driver`. A [`MioDriver`] dereferences to its core, so these read as its own methods
//! (`driver.send(conn, 2, payload)?`), with no trait to import; game code written against
//! [`Network`] takes `&mut *driver`. [`DriverStats`] is the same type as `shoal_std`'s.
//!
//! **Two kinds of event meet here.** mio's readiness events (`mio::event::Event`, from
//! `Poll::poll`) say the socket can be read or written: hand the ones for the driver's token
//! to [`MioDriver::on_event`]. Shoal's [`Event`] (`Connected`, `Message`, ...) is what
//! happened on the network: take them with `drain_events` or `poll_event`. This crate
//! re-exports only Shoal's, so `Event` here is always Shoal's.
//!
//! # Example
//!
//! Two drivers in one caller-owned `Poll`, on loopback: the client sends a reliable message
//! and the server answers it.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use mio::{Events, Poll, Token}; // mio's readiness events
//! use shoal_mio::{Config, Event, MioDriver};
//!
//! # fn main() -> std::io::Result<()> {
//! const SERVER: Token = Token(10);
//! const CLIENT: Token = Token(11);
//! let mut poll = Poll::new()?;
//! let mut events = Events::with_capacity(64);
//!
//! let mut server = MioDriver::bind("127.0.0.1:0", Config::default())?;
//! let mut client = MioDriver::bind("127.0.0.1:0", Config { accept_incoming: false, ..Config::default() })?;
//! server.register(poll.registry(), SERVER)?;
//! client.register(poll.registry(), CLIENT)?;
//!
//! let conn = client.connect(server.local_addr(), &[]).expect("connect starts");
//! client.send(conn, 2, "ping").expect("queued");
//!
//! let deadline = Instant::now() + Duration::from_secs(5);
//! let mut answer = None;
//! while answer.is_none() && Instant::now() < deadline {
//!     let timeout = [server.next_timeout(), client.next_timeout(), Some(Duration::from_millis(50))]
//!         .into_iter().flatten().min();
//!     poll.poll(&mut events, timeout)?;
//!     for ready in events.iter() {
//!         match ready.token() {
//!             SERVER => server.on_event(ready)?,
//!             CLIENT => client.on_event(ready)?,
//!             _ => {}
//!         }
//!     }
//!     while let Some(event) = server.poll_event() {
//!         if let Event::Message { conn, channel, .. } = event {
//!             server.send(conn, channel, "pong").expect("queued");
//!         }
//!     }
//!     while let Some(event) = client.poll_event() {
//!         if let Event::Message { payload, .. } = event {
//!             answer = Some(payload);
//!         }
//!     }
//!     server.update()?;
//!     client.update()?;
//! }
//! assert_eq!(answer.as_deref(), Some(&b"pong"[..]));
//! # Ok(())
//! # }
//! ```
//!
//! # Time and seed
//!
//! Each driver converts `std::time::Instant` into the protocol's [`Instant`]: microseconds
//! since the driver was created. If `Config::seed` is zero (the default), the driver derives
//! one from OS randomness: `std`'s `RandomState` (whose SipHash keys the OS random source
//! provides) hashing the wall clock, the local address, the process id and a counter. Set a
//! non-zero seed to make runs reproducible. A missing `Config::secret_seed` (the root of
//! handshake keys, ids and cookie keys) is filled with 32 bytes from the OS random source,
//! and the endpoint is told the wall-clock time (for connect token expiry), as in
//! `shoal-std`.
//!
//! # Errors
//!
//! Methods return `io::Error` only for failures of the socket itself. ICMP errors surfacing
//! on receive are skipped, a send to an unreachable address drops that datagram (counted in
//! [`DriverStats`]), and a send that would block keeps its datagram until the socket is
//! writable (one datagram at most; the endpoint holds the rest in its bounded queues).
//!
//! # The hub
//!
//! [`hub::HubServer`] runs a [`shoal_proto::hub::Hub`] (rooms, member lists, relay by user
//! id) on a [`MioDriver`] with a `Poll` of its own; the `shoal-hub` binary of this crate
//! (`cargo run --release -p shoal-mio --bin shoal-hub -- --help`) is that loop with flags,
//! logs, a status line and Ctrl-C handling. The binary's dependencies sit behind the `cli`
//! feature (on by default); `default-features = false` leaves them out of the library.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod driver;
mod event_loop;
pub mod hub;

// The clock is `shoal-std`'s, shared rather than copied (like the seed, the socket
// plumbing and the driver core).
use shoal_std::clock;

pub use driver::{MioDriver, INTEREST, MAX_DATAGRAMS_PER_CALL};
pub use event_loop::{EventLoop, RunOutcome, DRIVER_TOKEN};
// The driver parts shared with `shoal-std`: `MioDriver` dereferences to a `DriverCore`.
pub use shoal_std::{DriverCore, DriverStats, IoMode, SendFailure, RECV_BATCH, SEND_BATCH};

/// The `mio` crate this driver is built on (register in a `Poll` of this version).
pub use mio;
/// The protocol crate, for everything not re-exported below.
pub use shoal_proto;
// The protocol types an application needs alongside the driver.
pub use shoal_proto::{
    Bytes, Config, ConnectError, ConnectionHandle, DeliveryKind, DisconnectReason, Endpoint, Event,
    IncomingRequest, Instant, LinkStats, NetError, Network, RequestId, SendError,
};
