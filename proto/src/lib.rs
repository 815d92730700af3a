//! Shoal's protocol core: connections, channels, reliability, ordering, chunking and
//! request/response for games and peer-to-peer applications over UDP.
//!
//! This crate does no I/O and reads no clock. It is a state machine fed with datagrams and
//! timestamps: a driver (`shoal-std`, `shoal-mio`, `shoal-sim`, or your engine's own loop) owns
//! the socket and the clock, hands arriving datagrams to [`Endpoint::handle_datagram`], and
//! sends what [`Endpoint::poll_transmit`] writes. Randomness comes from [`Config::seed`] and
//! [`Config::secret_seed`], so the same inputs always give the same outputs.
//!
//! Every packet after the handshake is encrypted and authenticated by default
//! ([`Protection::Encrypted`]: X25519 key exchange, ChaCha20-Poly1305, 16 bytes a packet).
//! Clients may pin a server's static key ([`ConnectOptions::server_key`]); dedicated servers
//! may require connect tokens from their backend ([`token`]).
//!
//! It builds with `#![no_std]` and `alloc` (disable the default `std` feature). `std` adds
//! only `std::error::Error` impls for the error types (and `bytes`' own `std` feature); there
//! are no `std::time` conversions: a driver turns its clock into an [`Instant`] itself
//! (`shoal_std::clock::Clock` does it for `std::time::Instant`).
//!
//! # Example: one loop turn
//!
//! ```
//! use shoal_proto::{Config, Endpoint, Event, Instant, SecretSeed};
//! # use std::net::SocketAddr;
//! # let (a_addr, b_addr): (SocketAddr, SocketAddr) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
//! // Key material: 32 bytes from the OS (e.g. `getrandom`) in real code; the drivers do it.
//! let secret = |n| Some(SecretSeed::insecure_from_u64(n));
//! let mut a = Endpoint::new(Config { seed: 7, secret_seed: secret(7), ..Config::default() }).unwrap();
//! let mut b = Endpoint::new(Config { seed: 8, secret_seed: secret(8), ..Config::default() }).unwrap();
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
//! | `wire` | packets, the 5-byte message header, ack ranges, varints; decode never panics (reached from outside through `fuzzing`) |
//! | `transport` | packet numbers, received ranges, RTT, loss detection and probes, congestion (`Controller`, NewReno), pacing, paths and their validation |
//! | `messaging` | per-channel send queues and windows, the four delivery kinds, chunking and bounded reassembly, the receive budget |
//! | `connection` | one connection joining the two: state and timers; `receive` (packets to events), `transmit` (queues to packets), `secure` (the client's key exchange, packet keys) |
//! | `crypto` | packet protection (ChaCha20-Poly1305 in place), the X25519 key exchange and its HKDF-SHA256 key schedule, [`Keypair`], [`PublicKey`] |
//! | [`token`] | connect tokens: issued by a backend, checked by servers |
//! | [`discovery`] | LAN discovery's request and response (beside Shoal, not inside a connection) |
//! | [`Endpoint`] | routing by connection id and the public API; `handshake` (stateless cookies, key exchange, tokens, accept hook, user ids); the byte-bounded event queue |

#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

mod config;
mod connection;
mod crypto;
pub mod discovery;
mod endpoint;
mod error;
mod event;
mod hash;
mod hints;
pub mod hub;
mod messaging;
mod network;
mod rate;
mod stats;
pub mod time;
pub mod token;
mod transport;
#[cfg_attr(not(any(fuzzing, feature = "fuzzing")), allow(dead_code))]
pub(crate) mod wire;

#[cfg(any(fuzzing, feature = "fuzzing"))]
pub mod fuzzing;

pub use bytes::Bytes;
pub use config::{
    ChannelConfig, Config, ConfigError, DeliveryKind, SecretSeed, MAX_CHANNELS, MAX_DURATION,
};
pub use crypto::{Keypair, Protection, PublicKey, INTEGRITY_LIMIT, TAG_LEN};
pub use endpoint::{
    canonical_address, AcceptHook, ConnectOptions, ConnectRequest, Endpoint, PeerIdentity,
};
pub use error::{ConnectError, SendError};
pub use event::{
    ConnectionHandle, DisconnectReason, Event, IncomingRequest, Relay, RequestId, Transmit,
};
pub use hints::MemoryHint;
pub use messaging::channel::MESSAGE_WINDOW;
pub use messaging::chunk::Progress;
pub use network::{NetError, Network};
pub use rate::RateLimit;
pub use stats::{ConnectionStats, DropCounts, DropReason, EndpointStats, LinkStats};
pub use time::Instant;
