//! Shoal over a `std::net::UdpSocket`: the plain, dependency-free driver.
//!
//! [`shoal_proto`] is a state machine that does no I/O; this crate owns the socket and the
//! clock and runs its loop for you, three ways:
//!
//! - [`Driver::update`] never blocks: call it once per frame of a game loop.
//! - [`Driver::poll`] blocks until there is something to do: for a server or a tool.
//! - [`spawn`] runs a driver on a background thread and talks to it through channels
//!   ([`Handle`]).
//!
//! What does not depend on how the socket is driven lives in [`DriverCore`], shared with
//! `shoal-mio`: the commands (`connect`, `send`, `request`, `respond`, `disconnect`), the
//! events (`poll_event`, `events`) and the getters (`local_addr`, `endpoint`, `now`,
//! `stats`). A [`Driver`] dereferences to its core, so these read as its own methods
//! (`driver.send(conn, 2, payload)?`), with no trait to import.
//!
//! Peers on one network find each other without a server through [`discovery`]: a
//! [`LanResponder`] answers, [`discover`] asks by broadcast and multicast.
//!
//! # Example
//!
//! Two drivers on loopback; the client sends a reliable message to the server.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use shoal_std::{Config, Driver, Event};
//!
//! # fn main() -> std::io::Result<()> {
//! let mut server = Driver::bind("127.0.0.1:0", Config::default())?;
//! let client_config = Config { accept_incoming: false, ..Config::default() };
//! let mut client = Driver::bind("127.0.0.1:0", client_config)?;
//!
//! let conn = client.connect(server.local_addr(), b"hello").expect("connect starts");
//! client.send(conn, 2, "over channel 2 (reliable)").expect("queued");
//!
//! let deadline = Instant::now() + Duration::from_secs(5);
//! let mut received = None;
//! while received.is_none() && Instant::now() < deadline {
//!     client.poll(Some(Duration::from_millis(5)))?;
//!     server.poll(Some(Duration::from_millis(5)))?;
//!     for event in server.events() {
//!         if let Event::Message { payload, .. } = event {
//!             received = Some(payload);
//!         }
//!     }
//! }
//! assert_eq!(received.as_deref(), Some(&b"over channel 2 (reliable)"[..]));
//! # Ok(())
//! # }
//! ```
//!
//! The background thread:
//!
//! ```
//! use std::time::Duration;
//! use shoal_std::{Config, Event, Output};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut server = shoal_std::spawn("127.0.0.1:0", Config::default())?;
//! let mut client = shoal_std::spawn("127.0.0.1:0", Config::default())?;
//! let conn = client.connect(server.local_addr(), &[])?;
//! client.send(conn, 3, "ordered hello")?;
//! loop {
//!     match server.next_output(Duration::from_secs(5))? {
//!         Some(Output::Event(Event::Message { payload, .. })) => {
//!             assert_eq!(payload, "ordered hello");
//!             break;
//!         }
//!         Some(_) => continue,
//!         None => panic!("no message within 5 s"),
//!     }
//! }
//! client.shutdown()?; // closes its connections; the server sees `ClosedByPeer`
//! server.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Time and seed
//!
//! Each driver converts `std::time::Instant` into the protocol's [`Instant`]: microseconds
//! since the driver was created. The endpoint's randomness comes from `Config::seed`; if it is
//! zero (the default), the driver derives one from OS randomness: `std`'s `RandomState`
//! (whose SipHash keys the OS random source provides) hashing the wall clock, the local
//! address, the process id and a counter. Set a non-zero seed to make runs reproducible. The
//! secret that handshake keys, connection ids and cookie keys derive from is
//! `Config::secret_seed`: when it is `None` the driver fills it with 32 bytes from the OS
//! random source (`getrandom`). The driver also tells the endpoint the wall-clock time, which
//! a server that requires connect tokens needs to check their expiry.
//!
//! # Errors
//!
//! The driver returns `io::Error` only for failures of the socket itself. Trouble with one
//! peer is not one: ICMP errors surfacing on receive (`ConnectionReset` or a time-to-live
//! exceeded on Windows, an unreachable host on a connected socket) and datagrams too long
//! for the buffer (which Windows reports as an error) are skipped, and a send to an
//! unreachable address drops that datagram, counted in [`DriverStats`]; the protocol treats
//! them like loss. A signal interrupting a blocking wait ends it early, as a wake-up.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod discovery;
mod driver;
mod driver_core;
pub mod io_util;
mod recv_batch;
#[cfg(target_os = "linux")]
mod send_batch;
mod thread;

pub use discovery::{discover, LanConfig, LanPeer, LanResponder, LanSeeker, ResponderConfig};
pub use driver::{Driver, BLOCKED_SEND_RETRY, MAX_DATAGRAMS_PER_UPDATE};
pub use driver_core::{DriverCore, DriverStats, Events, DROP_LINGER};
pub use io_util::{SendFailure, SEND_BATCH};
pub use recv_batch::{BatchSocket, IoMode, RECV_BATCH};
pub use thread::{
    spawn, spawn_driver, Handle, Output, ThreadError, COMMAND_CAPACITY, OUTPUT_CAPACITY,
    SHUTDOWN_CODE,
};

/// The protocol crate, for everything not re-exported below.
pub use shoal_proto;
// The protocol types an application needs alongside the driver.
pub use shoal_proto::{
    Bytes, Config, ConnectError, ConnectOptions, ConnectionHandle, DeliveryKind, DisconnectReason,
    Endpoint, Event, IncomingRequest, Instant, Keypair, LinkStats, NetError, Network, PeerIdentity,
    Protection, PublicKey, Relay, RequestId, SendError,
};
