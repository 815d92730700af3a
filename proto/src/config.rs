//! Endpoint configuration: every limit the protocol enforces is set here.

use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::crypto::{Keypair, Protection, TAG_LEN};
use crate::rate::RateLimit;
use crate::token::TokenConfig;
use crate::wire::{MAX_DATA_HEADER_LEN, MAX_MESSAGE_HEADER_LEN, MAX_VARINT_LEN};

/// Most channels a connection can have (the channel id is 4 bits).
pub const MAX_CHANNELS: usize = 16;
/// Longest duration any setting may have (a year): longer ones would overflow timer
/// arithmetic, and no protocol timer needs one.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a channel delivers messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryKind {
    /// Fire and forget: each message arrives at most once, in any order, or not at all.
    Unreliable,
    /// Newest only: a message older than one already delivered on the channel is dropped.
    Sequenced,
    /// Every message arrives exactly once, in any order.
    Reliable,
    /// Every message arrives exactly once, in send order.
    Ordered,
}

impl DeliveryKind {
    /// Whether messages are retransmitted until acknowledged.
    pub fn is_reliable(self) -> bool {
        matches!(self, DeliveryKind::Reliable | DeliveryKind::Ordered)
    }

    pub(crate) fn nibble(self) -> u64 {
        match self {
            DeliveryKind::Unreliable => 1,
            DeliveryKind::Sequenced => 2,
            DeliveryKind::Reliable => 3,
            DeliveryKind::Ordered => 4,
        }
    }
}

/// One channel's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Delivery guarantee.
    pub kind: DeliveryKind,
    /// Most bytes that may wait in this channel's send queue (per connection): each
    /// message's payload and 16 bytes for its entry; `send` beyond it fails with `QueueFull`.
    pub max_queued_bytes: usize,
}

impl ChannelConfig {
    /// A channel of `kind` with a 4 MiB send queue.
    pub const fn new(kind: DeliveryKind) -> Self {
        ChannelConfig {
            kind,
            max_queued_bytes: 4 << 20,
        }
    }
}

/// Settings for an [`Endpoint`](crate::Endpoint). Both sides of a connection must use the same
/// `protocol_id` and channel kinds; the handshake checks both.
///
/// ```
/// use shoal_proto::{Config, DeliveryKind};
/// let config = Config {
///     seed: 42,
///     ..Config::with_channels(&[DeliveryKind::Sequenced, DeliveryKind::Ordered])
/// };
/// assert_eq!(config.channels.len(), 2);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
// `repr(C)`, working settings first: a connection reads about a dozen of them per packet,
// and an endpoint woken among thousands (a simulator's clients) finds none of its lines in
// cache, so they are packed into three lines instead of spread over seven.
#[repr(C)]
pub struct Config {
    // ---- read by every packet (first, together: see `repr(C)` above)
    /// Largest datagram sent, in bytes (UDP payload; default 1,200, at least 128). Both
    /// sides must use the same.
    pub mtu: usize,
    /// Channels, indexed by channel id (at most 16; default four: 0 unreliable,
    /// 1 sequenced, 2 reliable, 3 ordered). Both sides must use the same layout.
    pub channels: Vec<ChannelConfig>,
    /// Largest message `send` accepts (default 1 MiB); larger messages than a datagram are
    /// chunked.
    pub max_message_size: usize,
    /// Most bytes held on receive per connection (default 4 MiB): partly received chunked
    /// messages, whole messages waiting for an earlier one on an ordered channel, and the
    /// receive window's slots. The peer learns it in the handshake and never sends more.
    pub reassembly_budget: usize,
    /// Most bytes held on receive by the whole endpoint (default 64 MiB). Connections share
    /// it fairly while they hold memory at once, but what a connection holds is never taken
    /// back (its chunks were acknowledged), so peers that each fill `reassembly_budget` and
    /// never finish can exhaust it: keep it at least (the hostile connections you want to
    /// withstand + 1) x `reassembly_budget` (the defaults withstand 15).
    pub endpoint_reassembly_budget: usize,
    /// Most bytes of messages, requests and responses (payload plus 64 bytes each) waiting
    /// for `poll_event`, across the endpoint (default 64 MiB). Each connection gets an equal
    /// share; a connection over its share has its data refused unacknowledged (its sender
    /// backs off and retransmits) while every other connection goes on. Events are never
    /// dropped, and a connection never times out because the application is slow. The queue
    /// may exceed the limit by what one accepted packet releases (its messages and whatever
    /// its connection held for reassembly), and by up to a quarter of the limit for
    /// connections with no events waiting.
    pub max_pending_event_bytes: usize,
    /// A connection that receives nothing for this long once connected is closed with
    /// `TimedOut` (default 10 s).
    pub idle_timeout: Duration,
    /// A connection that sends nothing for this long sends a keepalive (default 1 s).
    pub keepalive_interval: Duration,
    /// Longest a receiver waits before acknowledging a packet (default 5 ms). Both ends
    /// should use the same value: a sender's probe timeout allows this much for the peer's
    /// acknowledgement. A game whose ends both send every tick may set the tick interval:
    /// acknowledgements of reliable messages then ride on the next tick's packet rather than
    /// a datagram of their own (in the simulator's 20 Hz game, 12% fewer datagrams, and a
    /// lost acknowledgement is mostly repeated by the next tick's packet before the sender's
    /// probe timeout: a third of the timeouts), at the cost of probe timeouts that much later
    /// when a reliable packet goes unanswered. It is also how much of the delay a peer claims
    /// to have held an acknowledgement is believed: a larger value lets a lying peer make the
    /// path look up to that much faster (never more: every timeout adds it back).
    pub max_ack_delay: Duration,
    /// Cap on the retransmission timeout after backoff (default 2 s); a cap below the
    /// timeout before backoff (about a round trip) caps nothing.
    pub max_rto: Duration,
    /// A partial unreliable chunked message older than this is evicted (default 5 s).
    pub reassembly_timeout: Duration,
    /// RTT assumed before the first measurement (default 100 ms).
    pub initial_rtt: Duration,
    /// Optional send-rate limit per connection in bytes per second (token bucket; default
    /// `None`, no limit beyond congestion control).
    pub max_send_rate: Option<u64>,
    /// How packets after the handshake are protected (default [`Protection::Encrypted`]).
    /// A peer configured differently is refused with a clear reason.
    pub protection: Protection,
    /// Forward error correction under loss (default 1; 0 disables): once the connection
    /// sees loss, each small packet (at most half the MTU of messages) carries a repair that
    /// codes the small packets of the last round trip, so a lost one is rebuilt by the
    /// receiver from later packets instead of waiting a round trip for a retransmission. It
    /// costs about one more copy of the small packets' bytes, and stops on a clean link.
    /// Packets of sequenced messages alone are not coded (the channel's next message
    /// supersedes them): a channel that sends rarely and needs its latest message to arrive
    /// is better reliable.
    pub redundancy: u8,
    /// Whether this endpoint answers connection attempts (a server or a peer; default
    /// `true`). When off, a connection attempt is refused at once
    /// (`DisconnectReason::NotAccepting`).
    pub accept_incoming: bool,
    // ---- identity, handshake and admission (read when connections come and go)
    /// Seed for connection ids, nonces and the cookie key (default 0, which the drivers
    /// replace with one from the OS). Give each endpoint its own (e.g. from the OS RNG in a
    /// driver, or a fixed value in a test).
    pub seed: u64,
    /// Secret randomness for handshake keys, cookie keys and connection ids, mixed with
    /// `seed` (HKDF-SHA256). The drivers fill it from the operating system when it is
    /// `None`; an endpoint driven by your own loop must set it from a cryptographic random
    /// source: `Endpoint::new` refuses a protected endpoint without it (tests and
    /// simulations may use [`SecretSeed::insecure_from_u64`]). `Debug` does not print it.
    /// The endpoint keeps no copy: `Endpoint::config()` shows `None` (so its memory cannot
    /// regenerate the ephemeral keys it used).
    pub secret_seed: Option<SecretSeed>,
    /// This endpoint's static key pair, if it has an identity to prove: clients can pin its
    /// public key (`ConnectOptions::server_key`), and peers see it in `Event::Connected`.
    pub static_keypair: Option<Keypair>,
    /// Accept only clients with a connect token from the backend sharing this key (see
    /// [`token`](crate::token)). `None` (the default) takes no tokens.
    pub tokens: Option<TokenConfig>,
    /// Application protocol id (default `0x53484f4c`, "SHOL"): give each game, and each
    /// incompatible version of it, its own. A server refuses a client with another one at
    /// once (`DisconnectReason::WrongProtocol`).
    pub protocol_id: u32,
    /// Most connections at once, handshakes included (default 4,096; at most 49,151). A
    /// peer connecting beyond it is refused (counted in
    /// [`EndpointStats::connections_rejected`](crate::EndpointStats::connections_rejected)):
    /// its attempt ends in [`DisconnectReason::ServerFull`](crate::DisconnectReason::ServerFull)
    /// on its side. [`Endpoint::connect`](crate::Endpoint::connect) beyond it fails with
    /// [`ConnectError::TooManyConnections`](crate::ConnectError::TooManyConnections).
    pub max_connections: usize,
    /// Most connections from one IP address at once (default 64; peer links through a hub
    /// are not counted). Without it one host with many ports fills `max_connections` and
    /// keeps everyone else out. Raise it for a server whose players share an address (a
    /// campus or carrier-grade NAT). Over it, a `Connect` is rejected as if the server were
    /// full.
    pub max_connections_per_ip: usize,
    /// Most bytes of application data in a connect request (default 256: with the keys and
    /// the fixed fields it fits a 576-byte MTU; a connect token needs room beside it).
    pub max_connect_data: usize,
    /// A connection attempt that does not complete within this time fails with `TimedOut`
    /// (default 5 s; independent of `idle_timeout`).
    pub handshake_timeout: Duration,
    /// Interval between handshake retransmissions (default 250 ms).
    pub handshake_resend_interval: Duration,
    /// How long a server's cookie stays valid (default 10 s).
    pub cookie_lifetime: Duration,
    // ---- requests (read per request, not per packet)
    /// Deadline for a request's response, after which `RequestTimedOut` is emitted
    /// (default 5 s).
    pub request_timeout: Duration,
    /// Most outstanding requests per connection (default 1,024).
    pub max_pending_requests: usize,
    /// The rate at which this endpoint takes key exchanges (default 2,048 a second, in
    /// bursts of up to 16,384: every player of a full server reconnecting at once). Each
    /// costs the server some 100-150 µs of X25519; past the rate a `Connect` is dropped
    /// unanswered (its client sends it again) and counted as
    /// [`DropReason::KeyExchangeBudget`](crate::DropReason::KeyExchangeBudget), so that
    /// strangers' handshakes take at most a bounded share of the time the server owes its
    /// players. (The limits per address do not bound it: a host with an IPv6 /48 holds
    /// 65,536 /64s.)
    pub key_exchanges: RateLimit,
    /// The rate at which one network (an IPv4 /24, an IPv6 /48) may take key exchanges
    /// while more than half of `key_exchanges`' burst is spent (default 256 a second, in
    /// bursts of 2,048: an eighth of `key_exchanges`), so that no single network can spend
    /// the whole endpoint's budget and keep every other client's `Connect` out. Past it a
    /// `Connect` is dropped unanswered like one past `key_exchanges`. Networks are told apart by a keyed hash into 1,024 buckets (two
    /// networks rarely share one, and a peer cannot choose to). Raise it for a server
    /// whose players come through few networks (a carrier-grade NAT's pool).
    pub key_exchanges_per_network: RateLimit,
    /// Path challenges this endpoint sends on its own initiative to addresses that have not
    /// answered yet (default 256 a second, in bursts of 8,192: meeting a room of 256
    /// members at once, the four addresses of each a link probes; at least 8, one probe's):
    /// the probes of
    /// [`Endpoint::probe_path`](crate::Endpoint::probe_path), which a hub's introductions
    /// start in `PathPolicy::Auto`, and a peer link's probes back to where its peer's
    /// challenges came from. A hostile hub naming someone else's address for member after
    /// member, or a peer spoofing its challenges' source, could otherwise aim this
    /// endpoint's challenges at anyone, as fast as they can name addresses. A probe takes its
    /// challenges when it starts (one that starts nothing, for an address being probed or
    /// with no place left, takes none); past the rate it is not started (counted in
    /// `EndpointStats::path_probes_refused`) and the link stays on its relay.
    pub path_probes: RateLimit,
    /// Most handshake replies and close notices waiting to be sent (default 16,384); past it
    /// they are dropped and counted in `EndpointStats::replies_dropped` (clients retry).
    /// Replies to addresses nothing proved (a Hello's, an unknown connection's) take at most
    /// half, so a flood of spoofed Hellos leaves room for the Accepts of real clients.
    pub max_control_queue: usize,
}

impl Default for Config {
    /// Four channels, one of each kind: 0 unreliable, 1 sequenced, 2 reliable, 3 ordered.
    fn default() -> Self {
        Config::with_channels(&[
            DeliveryKind::Unreliable,
            DeliveryKind::Sequenced,
            DeliveryKind::Reliable,
            DeliveryKind::Ordered,
        ])
    }
}

impl Config {
    /// Default settings with the given channel kinds (channel id = index).
    pub fn with_channels(kinds: &[DeliveryKind]) -> Self {
        Config {
            seed: 0,
            secret_seed: None,
            protection: Protection::Encrypted,
            static_keypair: None,
            tokens: None,
            protocol_id: 0x5348_4f4c, // "SHOL"
            mtu: 1200,
            channels: kinds.iter().map(|&k| ChannelConfig::new(k)).collect(),
            accept_incoming: true,
            max_connections: 4096,
            max_connections_per_ip: 64,
            max_connect_data: 256,
            idle_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            handshake_resend_interval: Duration::from_millis(250),
            cookie_lifetime: Duration::from_secs(10),
            max_ack_delay: Duration::from_millis(5),
            initial_rtt: Duration::from_millis(100),
            max_rto: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_pending_requests: 1024,
            max_message_size: 1 << 20,
            reassembly_budget: 4 << 20,
            endpoint_reassembly_budget: 64 << 20,
            reassembly_timeout: Duration::from_secs(5),
            max_send_rate: None,
            key_exchanges: RateLimit {
                per_second: 2_048.0,
                burst: 16_384.0,
            },
            key_exchanges_per_network: RateLimit {
                per_second: 256.0,
                burst: 2_048.0,
            },
            path_probes: RateLimit {
                per_second: 256.0,
                burst: 8_192.0,
            },
            redundancy: 1,
            max_pending_event_bytes: 64 << 20,
            max_control_queue: 16 * 1024,
        }
    }

    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.channels.is_empty() || self.channels.len() > MAX_CHANNELS {
            return Err(ConfigError::ChannelCount(self.channels.len()));
        }
        if !(128..=65_507).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.max_connections == 0 || self.max_connections > usize::from(crate::hub::MAX_USER_ID)
        {
            return Err(ConfigError::MaxConnections(self.max_connections));
        }
        // The Connect's fixed fields and keys take 121 bytes; a token is checked at connect.
        if self.max_connect_data + 128 > self.mtu {
            return Err(ConfigError::ConnectDataTooLarge(self.max_connect_data));
        }
        let chunks = self.max_message_size.div_ceil(self.chunk_payload());
        if self.max_message_size == 0 || chunks > usize::from(u16::MAX) {
            return Err(ConfigError::MaxMessageSize(self.max_message_size));
        }
        // A message is reserved in whole chunks, so the largest one needs a little more than
        // its size.
        let largest_reservation = chunks * self.chunk_payload();
        if self.reassembly_budget < largest_reservation
            || self.endpoint_reassembly_budget < self.reassembly_budget
        {
            return Err(ConfigError::ReassemblyBudget);
        }
        if self.idle_timeout <= self.keepalive_interval {
            return Err(ConfigError::IdleTimeout);
        }
        let durations = [
            ("idle_timeout", self.idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("handshake_timeout", self.handshake_timeout),
            ("handshake_resend_interval", self.handshake_resend_interval),
            ("cookie_lifetime", self.cookie_lifetime),
            ("max_ack_delay", self.max_ack_delay),
            ("initial_rtt", self.initial_rtt),
            ("max_rto", self.max_rto),
            ("request_timeout", self.request_timeout),
            ("reassembly_timeout", self.reassembly_timeout),
        ];
        for (name, d) in durations {
            if d.is_zero() {
                return Err(ConfigError::ZeroLimit(name));
            }
            if d > MAX_DURATION {
                return Err(ConfigError::DurationTooLong(name));
            }
        }
        if self.mtu != usize::from(self.mtu as u16) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.max_pending_event_bytes == 0 {
            return Err(ConfigError::ZeroLimit("max_pending_event_bytes"));
        }
        if self.max_connections_per_ip == 0 {
            return Err(ConfigError::ZeroLimit("max_connections_per_ip"));
        }
        if self.max_control_queue == 0 {
            return Err(ConfigError::ZeroLimit("max_control_queue"));
        }
        if self.max_pending_requests == 0 {
            return Err(ConfigError::ZeroLimit("max_pending_requests"));
        }
        if self.max_send_rate == Some(0) {
            return Err(ConfigError::ZeroLimit("max_send_rate"));
        }
        if !self.key_exchanges.is_valid() {
            return Err(ConfigError::ZeroLimit("key_exchanges"));
        }
        if !self.key_exchanges_per_network.is_valid() {
            return Err(ConfigError::ZeroLimit("key_exchanges_per_network"));
        }
        if !self.path_probes.is_valid() {
            return Err(ConfigError::ZeroLimit("path_probes"));
        }
        if self.path_probes.burst < f64::from(crate::connection::PROBE_ATTEMPTS) {
            return Err(ConfigError::PathProbeBurst);
        }
        if self.protection == Protection::None {
            // Without protection a token copied off the wire is as good as the original, and
            // a static key proves nothing.
            if self.tokens.is_some() {
                return Err(ConfigError::ProtectionRequired("tokens"));
            }
            if self.static_keypair.is_some() {
                return Err(ConfigError::ProtectionRequired("static_keypair"));
            }
        }
        if let Some(tokens) = &self.tokens {
            if tokens.server_addresses.is_empty() {
                return Err(ConfigError::TokenServerAddresses);
            }
            if tokens.max_used_tokens == 0 {
                return Err(ConfigError::ZeroLimit("tokens.max_used_tokens"));
            }
        }
        Ok(())
    }

    /// Most payload bytes one chunk carries: what is left of a datagram after the packet
    /// header and the largest message header and length prefix.
    pub fn chunk_payload(&self) -> usize {
        self.packet_room() - MAX_DATA_HEADER_LEN - MAX_MESSAGE_HEADER_LEN - MAX_VARINT_LEN
    }

    /// Bytes of a datagram a packet may fill before protection adds its tag.
    pub(crate) fn packet_room(&self) -> usize {
        match self.protection {
            Protection::Encrypted => self.mtu - TAG_LEN,
            Protection::None => self.mtu,
        }
    }

    /// The channel kinds as a nibble each, sent in the handshake so both sides can check
    /// that they agree.
    pub(crate) fn channel_layout(&self) -> u64 {
        self.channels
            .iter()
            .enumerate()
            .fold(0, |acc, (i, c)| acc | c.kind.nibble() << (4 * i))
    }
}

/// 32 secret bytes from a cryptographic random source (see [`Config::secret_seed`]).
/// `Debug` does not print them, and they are wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretSeed(pub [u8; 32]);

impl Drop for SecretSeed {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl SecretSeed {
    /// A predictable seed from a number: for tests and simulations only, where runs must
    /// repeat. Anyone who knows `n` can decrypt the endpoint's traffic.
    pub fn insecure_from_u64(n: u64) -> Self {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_be_bytes());
        seed[8..16].copy_from_slice(b"insecure");
        SecretSeed(seed)
    }
}

impl fmt::Debug for SecretSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretSeed(..)")
    }
}

/// A [`Config`] that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `channels` must hold 1 to 16 entries.
    ChannelCount(usize),
    /// `mtu` must be between 128 and 65,507.
    Mtu(usize),
    /// `max_connections` must be between 1 and 49,151 (user ids are 16 bits, and the
    /// values above `hub::MAX_USER_ID` name rooms).
    MaxConnections(usize),
    /// `max_connect_data` must leave room for the handshake in one datagram of `mtu` bytes.
    ConnectDataTooLarge(usize),
    /// `max_message_size` must be positive and split into at most 65,535 chunks.
    MaxMessageSize(usize),
    /// `reassembly_budget` must hold one whole `max_message_size` message (rounded up to
    /// whole chunks) and `endpoint_reassembly_budget` one connection's budget.
    ReassemblyBudget,
    /// `idle_timeout` must be longer than `keepalive_interval`, or idle peers time out.
    IdleTimeout,
    /// The named limit must be positive.
    ZeroLimit(&'static str),
    /// The named duration is longer than [`MAX_DURATION`].
    DurationTooLong(&'static str),
    /// `tokens.server_addresses` is empty: no token could name this server.
    TokenServerAddresses,
    /// The named setting needs `Protection::Encrypted`.
    ProtectionRequired(&'static str),
    /// `secret_seed` is `None` on an endpoint with protection (`Endpoint::new` checks it).
    SecretSeedMissing,
    /// `path_probes.burst` must hold the 8 challenges of one probe.
    PathProbeBurst,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ChannelCount(n) => {
                write!(f, "{n} channels configured; use between 1 and 16")
            }
            ConfigError::Mtu(n) => write!(f, "mtu {n} is out of range; use 128 to 65507"),
            ConfigError::MaxConnections(n) => {
                write!(f, "max_connections {n} is out of range; use 1 to 49151")
            }
            ConfigError::ConnectDataTooLarge(n) => write!(
                f,
                "max_connect_data {n} does not fit a handshake datagram; lower it or raise mtu"
            ),
            ConfigError::MaxMessageSize(n) => write!(
                f,
                "max_message_size {n} must be positive and at most 65535 chunks of the mtu"
            ),
            ConfigError::ReassemblyBudget => f.write_str(
                "reassembly_budget must be at least max_message_size rounded up to whole \
                 chunks (chunk_payload() bytes each), and endpoint_reassembly_budget at least \
                 reassembly_budget",
            ),
            ConfigError::IdleTimeout => {
                f.write_str("idle_timeout must be longer than keepalive_interval")
            }
            ConfigError::ZeroLimit(name) => write!(f, "{name} must be positive"),
            ConfigError::DurationTooLong(name) => {
                write!(f, "{name} is longer than a year; use a shorter duration")
            }
            ConfigError::PathProbeBurst => f.write_str(
                "path_probes.burst is below 8, the challenges of one probe: no direct path could \
                 ever be probed; use at least 8",
            ),
            ConfigError::SecretSeedMissing => f.write_str(
                "secret_seed is not set: fill it with 32 bytes from a cryptographic random \
                 source (e.g. getrandom; the shoal-std and shoal-mio drivers do this), or use \
                 SecretSeed::insecure_from_u64 in tests and simulations",
            ),
            ConfigError::ProtectionRequired(name) => write!(
                f,
                "{name} needs protection = Protection::Encrypted (in plain mode it protects nothing)"
            ),
            ConfigError::TokenServerAddresses => f.write_str(
                "tokens.server_addresses is empty; list the addresses clients reach this \
                 server at (the ones the backend puts in tokens)",
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}
