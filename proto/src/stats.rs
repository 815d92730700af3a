//! Counters: what went through, and what was dropped and why.

use core::fmt;
use core::time::Duration;

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
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 22;
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

/// Counters of the whole endpoint. Per-connection counters are folded in when a connection
/// closes, so these cover closed connections too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_received: u64,
    /// Bytes handed to `handle_datagram`.
    pub bytes_received: u64,
    /// Datagrams returned by `poll_transmit`.
    pub datagrams_sent: u64,
    /// Bytes returned by `poll_transmit`.
    pub bytes_sent: u64,
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
    /// Handshake replies or close notices not sent because the reply queue was full.
    pub replies_dropped: u64,
    /// Drops not attributable to a connection (bad handshakes, unknown senders), by cause.
    pub drops: DropCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

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
