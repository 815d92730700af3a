//! Shoal's protocol core: connections, channels, reliability, ordering, chunking and
//! request/response for games and peer-to-peer applications over UDP.
//!
//! This crate does no I/O and reads no clock. It is a state machine fed with datagrams and
//! timestamps: a driver (`shoal-std`, `shoal-mio`, `shoal-sim`, or your engine's own loop) owns
//! the socket and the clock, hands arriving datagrams to [`Endpoint::handle_datagram`], and
//! sends what [`Endpoint::poll_transmit`] writes. Randomness comes from [`Config::seed`], so
//! the same inputs always give the same outputs.
//!
//! It builds with `#![no_std]` and `alloc` (disable the default `std` feature).
//!
//! # Example: one loop turn
//!
//! ```
//! use shoal_proto::{Config, Endpoint, Event, Instant};
//! # use std::net::SocketAddr;
//! # let (a_addr, b_addr): (SocketAddr, SocketAddr) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
//! let mut a = Endpoint::new(Config { seed: 7, ..Config::default() }).unwrap();
//! let mut b = Endpoint::new(Config { seed: 8, ..Config::default() }).unwrap();
//! let conn = a.connect(Instant::ZERO, b_addr, &[]).unwrap();
//! a.send(conn, 2, &b"reliable hello"[..]).unwrap();
//!
//! let mut buf = vec![0u8; a.config().mtu];
//! let mut now = Instant::ZERO;
//! for _ in 0..20 {
//!     // Input: time passed.
//!     a.handle_timeout(now);
//!     b.handle_timeout(now);
//!     // Output: datagrams (here straight into the other endpoint: a perfect network).
//!     while let Some(t) = a.poll_transmit(now, &mut buf) {
//!         b.handle_datagram(now, a_addr, &buf[..t.len]);
//!     }
//!     while let Some(t) = b.poll_transmit(now, &mut buf) {
//!         a.handle_datagram(now, b_addr, &buf[..t.len]);
//!     }
//!     now = now + core::time::Duration::from_millis(1);
//! }
//! let events: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
//! assert!(events.iter().any(|e| matches!(e, Event::Message { payload, .. } if payload == "reliable hello")));
//! ```
//!
//! # Layers
//!
//! | module | holds |
//! |---|---|
//! | [`time`] | [`Instant`] and the per-connection timer table |
//! | [`wire`] | packets, the 5-byte message header, varints; decode never panics |
//! | `channel` | per-channel send queues and windows, and the four delivery kinds |
//! | `reliability` | packet numbers, acks, RTT, loss detection, congestion, pacing |
//! | `chunk` | splitting large messages and bounded reassembly |
//! | `connection` | one connection: state and timers; `receive` (packets to events) and `transmit` (queues to packets) |
//! | [`Endpoint`] | demultiplexing and the public API; `handshake` (stateless cookies, accept hook, user ids) |

#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

extern crate alloc;

mod channel;
mod chunk;
mod config;
mod connection;
mod endpoint;
mod error;
mod event;
mod hash;
mod reliability;
mod stats;
pub mod time;
pub mod wire;

#[cfg(any(fuzzing, feature = "fuzzing"))]
pub mod fuzzing;

pub use bytes::Bytes;
pub use channel::MESSAGE_WINDOW;
pub use chunk::Progress;
pub use config::{ChannelConfig, Config, ConfigError, DeliveryKind, MAX_CHANNELS};
pub use endpoint::{AcceptHook, ConnectRequest, Endpoint};
pub use error::{ConnectError, SendError};
pub use event::{ConnectionHandle, DisconnectReason, Event, IncomingRequest, RequestId, Transmit};
pub use stats::{ConnectionStats, DropCounts, DropReason, EndpointStats};
pub use time::Instant;
