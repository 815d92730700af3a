//! Counters: what went through, and what was dropped and why.

use alloc::boxed::Box;
use core::fmt;
use core::time::Duration;

use crate::time::Instant;

/// Why a datagram, or a message within one, was dropped. Every drop is counted under exactly
/// one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(usize)]
pub enum DropReason {
    /// The datagram could not be decoded (truncated, bad length, bad field, trailing bytes).
    Malformed,
    /// Its version nibble is not ours.
    UnknownVersion,
    /// Its packet type is unknown.
    UnknownPacketType,
    /// A handshake packet for another application protocol id.
    WrongProtocol,
    /// A packet this endpoint does not expect in its role or state (e.g. a `Hello` to a
    /// client that does not accept connections, an `Accept` nobody asked for).
    Unexpected,
    /// A `Data` or `Disconnect` packet for no known connection, or with a wrong connection id.
    UnknownConnection,
    /// A cookie that fails authentication or has expired.
    BadCookie,
    /// A `Data` packet already received (duplicated by the network), or too old to tell.
    DuplicatePacket,
    /// A message on a channel the configuration does not define.
    UnknownChannel,
    /// A message outside the receive window, with an owner id the peer may not claim, or
    /// otherwise violating the protocol.
    ProtocolViolation,
    /// A reliable message seen before (a retransmission, or a copy the network duplicated).
    DuplicateMessage,
    /// A sequenced message older than the newest delivered one.
    StaleMessage,
    /// A response to no pending request (timed out, answered already, or never asked).
    StaleResponse,
    /// Reassembly budget exhausted (per connection or per endpoint).
    ReassemblyBudget,
    /// A partial unreliable chunked message evicted after the reassembly timeout, or superseded.
    ReassemblyEvicted,
    /// The event queue was full (the application is not polling events).
    EventQueueFull,
    /// The connection table was full when a new connection would have been created.
    ConnectionTableFull,
    /// A message larger than `max_message_size` announced by its chunk count, or a datagram
    /// larger than `Config::mtu`.
    Oversized,
    /// A packet from an address the connection has not validated yet (it was sent a path
    /// challenge instead).
    UnvalidatedPath,
    /// A packet number too far beyond the newest received (forged, or from a broken sender).
    OutOfWindow,
    /// A protected packet whose authentication tag does not verify: forged, corrupted, or
    /// not for this connection's keys. Never acted on.
    Unauthenticated,
    /// A connect token already used by an earlier connection (or, with `max_used_tokens`
    /// remembered, one more than the server can track).
    TokenReplay,
    /// A packet for a connection still in its handshake: it names a connection id this
    /// side learns only from the `Accept`, which has not arrived (lost or late). The peer
    /// sends its content again.
    EarlyPacket,
    /// A `Connect` over the endpoint's rate of key exchanges (`Config::key_exchanges`):
    /// dropped unanswered, its client sends it again.
    KeyExchangeBudget,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 24;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::UnknownVersion,
        DropReason::UnknownPacketType,
        DropReason::WrongProtocol,
        DropReason::Unexpected,
        DropReason::UnknownConnection,
        DropReason::BadCookie,
        DropReason::DuplicatePacket,
        DropReason::UnknownChannel,
        DropReason::ProtocolViolation,
        DropReason::DuplicateMessage,
        DropReason::StaleMessage,
        DropReason::StaleResponse,
        DropReason::ReassemblyBudget,
        DropReason::ReassemblyEvicted,
        DropReason::EventQueueFull,
        DropReason::ConnectionTableFull,
        DropReason::Oversized,
        DropReason::UnvalidatedPath,
        DropReason::OutOfWindow,
        DropReason::Unauthenticated,
        DropReason::TokenReplay,
        DropReason::EarlyPacket,
        DropReason::KeyExchangeBudget,
    ];

    /// A short snake_case name, for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownVersion => "unknown_version",
            DropReason::UnknownPacketType => "unknown_packet_type",
            DropReason::WrongProtocol => "wrong_protocol",
            DropReason::Unexpected => "unexpected",
            DropReason::UnknownConnection => "unknown_connection",
            DropReason::BadCookie => "bad_cookie",
            DropReason::DuplicatePacket => "duplicate_packet",
            DropReason::UnknownChannel => "unknown_channel",
            DropReason::ProtocolViolation => "protocol_violation",
            DropReason::DuplicateMessage => "duplicate_message",
            DropReason::StaleMessage => "stale_message",
            DropReason::StaleResponse => "stale_response",
            DropReason::ReassemblyBudget => "reassembly_budget",
            DropReason::ReassemblyEvicted => "reassembly_evicted",
            DropReason::EventQueueFull => "event_queue_full",
            DropReason::ConnectionTableFull => "connection_table_full",
            DropReason::Oversized => "oversized",
            DropReason::UnvalidatedPath => "unvalidated_path",
            DropReason::OutOfWindow => "out_of_window",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::TokenReplay => "token_replay",
            DropReason::EarlyPacket => "early_packet",
            DropReason::KeyExchangeBudget => "key_exchange_budget",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Drop counters indexed by [`DropReason`]. `Debug` lists the non-zero ones by name:
/// `{unvalidated_path: 4, duplicate_packet: 1}`.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    counts: [u64; DropReason::COUNT],
}

impl fmt::Debug for DropCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(r, n)| (DisplayName(r), n)))
            .finish()
    }
}

/// A drop reason shown by its name, unquoted, as a map key.
struct DisplayName(DropReason);

impl fmt::Debug for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl DropCounts {
    /// How many were dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(reason, count)` for every reason with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, n)| n > 0)
    }

    pub(crate) fn add(&mut self, reason: DropReason) {
        self.counts[reason as usize] += 1;
    }

    /// Adds every counter of `other` into `self`.
    pub fn merge(&mut self, other: &DropCounts) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }
}

/// The counters a connection keeps itself; [`ConnectionStats`] adds what is read off its
/// state when asked (round trip, window, recent loss). The ones most connections never move
/// (drops, and what loss costs) are boxed on the first: see [`RareCounters`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) packets_sent: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) packets_received: u64,
    pub(crate) bytes_received: u64,
    pub(crate) ack_only_packets_sent: u64,
    pub(crate) messages_delivered: u64,
    pub(crate) payload_bytes_delivered: u64,
    pub(crate) messages_sent: u64,
    pub(crate) payload_bytes_sent: u64,
    pub(crate) payload_bytes_transmitted: u64,
    pub(crate) rare: RareCounters,
}

impl Counters {
    /// The public counters, the state-derived ones left at zero for the caller to fill.
    pub(crate) fn snapshot(&self) -> ConnectionStats {
        let rare = self.rare.read();
        ConnectionStats {
            packets_sent: self.packets_sent,
            bytes_sent: self.bytes_sent,
            packets_received: self.packets_received,
            bytes_received: self.bytes_received,
            ack_only_packets_sent: self.ack_only_packets_sent,
            messages_delivered: self.messages_delivered,
            payload_bytes_delivered: self.payload_bytes_delivered,
            messages_sent: self.messages_sent,
            payload_bytes_sent: self.payload_bytes_sent,
            retransmissions: rare.retransmissions,
            repairs_sent: rare.repairs_sent,
            packets_rebuilt: rare.packets_rebuilt,
            repair_solves_deferred: rare.repair_solves_deferred,
            payload_bytes_transmitted: self.payload_bytes_transmitted,
            packets_lost: rare.packets_lost,
            rto_fired: rare.rto_fired,
            path_challenges_sent: rare.path_challenges_sent,
            path_fallbacks: rare.path_fallbacks,
            drops: rare.drops,
            ..ConnectionStats::default()
        }
    }
}

/// The counters most connections never move, allocated on the first move: on a clean
/// path nothing is dropped, lost, resent or repaired (they are 240 bytes; the box costs an
/// idle connection 8).
#[derive(Debug, Default)]
pub(crate) struct RareCounters(Option<Box<Rare>>);

/// What [`RareCounters`] holds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rare {
    pub(crate) drops: DropCounts,
    pub(crate) retransmissions: u64,
    pub(crate) repairs_sent: u64,
    pub(crate) packets_rebuilt: u64,
    pub(crate) repair_solves_deferred: u64,
    pub(crate) packets_lost: u64,
    pub(crate) rto_fired: u64,
    pub(crate) path_challenges_sent: u64,
    pub(crate) path_fallbacks: u64,
    /// Packets naming the connection that failed to authenticate (counted in the endpoint's
    /// drops, not the connection's), toward `INTEGRITY_LIMIT`.
    pub(crate) forgeries: u64,
}

impl RareCounters {
    /// Counts a dropped packet.
    pub(crate) fn dropped(&mut self, reason: DropReason) {
        self.get().drops.add(reason);
    }

    /// The counters, to move (made on the first call).
    pub(crate) fn get(&mut self) -> &mut Rare {
        self.0.get_or_insert_with(Default::default)
    }

    /// The counters, all zero until the first move.
    pub(crate) fn read(&self) -> Rare {
        self.0.as_deref().copied().unwrap_or_default()
    }
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Datagram bytes sent (UDP payload).
    pub bytes_sent: u64,
    /// Datagrams received and accepted.
    pub packets_received: u64,
    /// Datagram bytes received and accepted.
    pub bytes_received: u64,
    /// Packets sent that carried only acknowledgements (or a keepalive).
    pub ack_only_packets_sent: u64,
    /// Messages handed to the application (messages, requests and responses).
    pub messages_delivered: u64,
    /// Payload bytes handed to the application.
    pub payload_bytes_delivered: u64,
    /// Messages queued by the application.
    pub messages_sent: u64,
    /// Payload bytes queued by the application.
    pub payload_bytes_sent: u64,
    /// Frames sent again because their packet was declared lost.
    pub retransmissions: u64,
    /// Repair blocks sent (forward error correction for small packets under loss; see
    /// `Config::redundancy`).
    pub repairs_sent: u64,
    /// Lost packets rebuilt from the peer's repair blocks, without a retransmission.
    pub packets_rebuilt: u64,
    /// Times solving the peer's repair blocks was put off because it had cost more than
    /// the bytes the peer sent pay for (8 byte operations a byte, 1 MiB of operations
    /// ahead): a peer whose repairs never solve (a hostile one, or a path losing about half
    /// its packets for long, where retransmissions do the repairing).
    pub repair_solves_deferred: u64,
    /// Payload bytes put on the wire, counting every copy.
    pub payload_bytes_transmitted: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Packets declared lost that were acknowledged later (reordering, not loss).
    pub spurious_losses: u64,
    /// Probe timeouts that fired (nothing acknowledged for a while: probes were sent).
    pub rto_fired: u64,
    /// Path challenges sent to new addresses of the peer.
    pub path_challenges_sent: u64,
    /// Times a direct path died and the connection went back to its hub relay.
    pub path_fallbacks: u64,
    /// Sequenced messages replaced in the send queue by a newer one before they left.
    pub superseded: u64,
    /// Smoothed round-trip time (zero before the first sample).
    pub smoothed_rtt: Duration,
    /// Round-trip time variation.
    pub rtt_variance: Duration,
    /// Congestion window in bytes.
    pub congestion_window: u64,
    /// Recent packet loss, in parts per million (an average over the last several hundred
    /// packets; it decides whether small packets are coded).
    pub recent_loss_ppm: u32,
    /// Drops on this connection, by cause.
    pub drops: DropCounts,
}

/// What a game shows on screen about one connection: round trip, loss and throughput, from
/// [`Endpoint::link_stats`](crate::Endpoint::link_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkStats {
    /// Smoothed round-trip time (zero before the first sample).
    pub rtt: Duration,
    /// Packet loss in percent (0–100): the share of the peer's packets that did not arrive
    /// (gaps in their numbers), over the last second or so. What the network loses, before
    /// repairs and resends make up for it.
    pub loss_percent: f32,
    /// Datagram bytes received per second (UDP payload), over the last second or so.
    pub bytes_in_per_sec: u64,
    /// Datagram bytes sent per second (UDP payload), over the last second or so.
    pub bytes_out_per_sec: u64,
}

/// Bytes per second over windows of at least one second: the rate of the last complete
/// window, or of the current one once it is a second old.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RateMeter {
    window_start: Instant,
    window_bytes: u64,
    rate: u64,
}

impl RateMeter {
    const WINDOW_MICROS: u64 = 1_000_000;

    pub(crate) fn add(&mut self, now: Instant, bytes: usize) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if micros_of(elapsed) >= Self::WINDOW_MICROS {
            self.rate = self.rate_of_window(elapsed);
            self.window_start = now;
            self.window_bytes = 0;
        }
        self.window_bytes += bytes as u64;
    }

    pub(crate) fn per_second(&self, now: Instant) -> u64 {
        let elapsed = micros_of(now.saturating_duration_since(self.window_start));
        if elapsed >= 2 * Self::WINDOW_MICROS {
            // Nothing came after the open window's first second (the next would have closed
            // it): the last whole second was silent.
            0
        } else if elapsed >= Self::WINDOW_MICROS {
            self.rate_of_window(Duration::from_micros(elapsed))
        } else {
            self.rate
        }
    }

    fn rate_of_window(&self, elapsed: Duration) -> u64 {
        let micros = micros_of(elapsed).max(1);
        u64::try_from(u128::from(self.window_bytes) * 1_000_000 / u128::from(micros))
            .unwrap_or(u64::MAX)
    }
}

/// The share of a peer's packets that did not arrive, from gaps in their packet numbers,
/// over windows of at least one second.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LossMeter {
    window_start: Instant,
    /// The largest packet number before the window.
    base: Option<u64>,
    largest: u64,
    /// Packets numbered after `base` received in the window.
    received: u64,
    percent: f32,
}

impl LossMeter {
    pub(crate) fn on_packet(&mut self, now: Instant, pn: u64) {
        let Some(base) = self.base else {
            self.base = Some(pn);
            self.largest = pn;
            self.window_start = now;
            return;
        };
        let elapsed = now.saturating_duration_since(self.window_start);
        if micros_of(elapsed) >= RateMeter::WINDOW_MICROS && self.largest > base {
            let expected = (self.largest - base) as f32;
            let arrived = (self.received as f32).min(expected);
            self.percent = 100.0 * (1.0 - arrived / expected);
            self.base = Some(self.largest);
            self.received = 0;
            self.window_start = now;
        }
        // (A late packet from before the window is not counted in it.)
        if pn > self.base.unwrap_or(base) {
            self.received += 1;
        }
        self.largest = self.largest.max(pn);
    }

    pub(crate) fn percent(&self) -> f32 {
        self.percent
    }
}

fn micros_of(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Counters of the whole endpoint. Per-connection counters are folded in when a connection
/// closes, so these cover closed connections too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
// The counters every datagram bumps first, in one cache line (see `Endpoint`'s layout).
#[repr(C)]
pub struct EndpointStats {
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_received: u64,
    /// Bytes handed to `handle_datagram`.
    pub bytes_received: u64,
    /// Datagrams returned by `poll_transmit`.
    pub datagrams_sent: u64,
    /// Bytes returned by `poll_transmit`.
    pub bytes_sent: u64,
    /// Queued wake-ups whose deadline had been stopped or pushed back (an ack stopped the
    /// ack timer, say), moved to their connection's real deadline when they reached the
    /// front, so that `poll_timeout` never names a time at which nothing is due.
    pub stale_wakeups: u64,
    /// Connections opened (handshake completed).
    pub connections_opened: u64,
    /// Connections closed, for any reason.
    pub connections_closed: u64,
    /// Connection attempts rejected (full, refused by the hook, incompatible).
    pub connections_rejected: u64,
    /// Connections that moved to a new, validated address (NAT rebinding).
    pub migrations: u64,
    /// Datagrams of tunnelled connections sent through the hub connection.
    pub tunnelled_out: u64,
    /// Datagrams of tunnelled connections that arrived through the hub connection.
    pub tunnelled_in: u64,
    /// Datagrams for a relay address with no hub connection to carry them, or that it
    /// could not queue.
    pub tunnel_drops: u64,
    /// Handshake replies or close notices not sent because the reply queue was full (replies
    /// to addresses nothing proved, a Hello's or an unknown connection's, may take only half
    /// of it).
    pub replies_dropped: u64,
    /// "Unknown connection" notices sent: packets arrived naming a connection id this
    /// endpoint does not know (typically from the clients of a previous run on this port).
    pub resets_sent: u64,
    /// Direct paths not probed because `Config::path_probes` was spent: addresses a hub
    /// named (`Endpoint::probe_path`) or a peer link's peer probed from, faster than the
    /// endpoint sends challenges to addresses that have not answered. Their links stay on
    /// the relay.
    pub path_probes_refused: u64,
    /// Drops not attributable to a connection (bad handshakes, unknown senders), by cause.
    pub drops: DropCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_holds_no_rare_counters_until_one_moves() {
        let mut counters = Counters::default();
        assert!(counters.rare.0.is_none());
        assert_eq!(counters.snapshot().drops.total(), 0);
        counters.packets_sent = 7;
        assert!(counters.rare.0.is_none());
        counters.rare.dropped(DropReason::Malformed);
        counters.rare.dropped(DropReason::Malformed);
        counters.rare.get().retransmissions += 3;
        let s = counters.snapshot();
        assert_eq!(s.drops.get(DropReason::Malformed), 2);
        assert_eq!(s.drops.total(), 2);
        assert_eq!((s.packets_sent, s.retransmissions), (7, 3));
    }

    #[test]
    fn loss_meter_counts_gaps_in_packet_numbers_per_window() {
        let mut m = LossMeter::default();
        let ms = Instant::from_millis;
        // Packets 0..100 over a second, every fifth missing.
        for pn in (0..100u64).filter(|pn| pn % 5 != 4) {
            m.on_packet(ms(pn * 10), pn);
        }
        assert_eq!(m.percent(), 0.0, "no complete window yet");
        m.on_packet(ms(1_000), 100);
        assert!((m.percent() - 20.0).abs() < 1.5, "{}", m.percent());
        // A clean second after it.
        for pn in 101..201u64 {
            m.on_packet(ms(1_000 + (pn - 100) * 10), pn);
        }
        m.on_packet(ms(2_100), 201);
        assert!(m.percent() < 1.5, "{}", m.percent());
    }

    #[test]
    fn rate_meter_reports_the_last_full_second_and_decays_to_zero_when_quiet() {
        let mut m = RateMeter::default();
        let ms = Instant::from_millis;
        assert_eq!(m.per_second(ms(0)), 0);
        for t in 0..10 {
            m.add(ms(t * 100), 1_000); // 10,000 bytes over the first second
        }
        assert_eq!(m.per_second(ms(999)), 0, "no complete window yet");
        m.add(ms(1_000), 500);
        assert_eq!(m.per_second(ms(1_500)), 10_000);
        // Quiet since: the open window (500 bytes) over its 1.25 s, then nothing.
        assert_eq!(m.per_second(ms(2_250)), 400);
        assert_eq!(m.per_second(ms(3_000)), 0);
    }

    #[test]
    fn drop_counts_debug_names_the_non_zero_counters() {
        let mut d = DropCounts::default();
        assert_eq!(alloc::format!("{d:?}"), "{}");
        d.add(DropReason::UnvalidatedPath);
        d.add(DropReason::UnvalidatedPath);
        d.add(DropReason::Malformed);
        assert_eq!(
            alloc::format!("{d:?}"),
            "{malformed: 1, unvalidated_path: 2}"
        );
    }
}
