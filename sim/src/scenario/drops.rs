//! Drops in plain words: which of the protocol's drops are the protocol working as designed,
//! and what every drop cause means to someone who writes a game rather than a transport.

use shoal_proto::{DropCounts, DropReason};

use crate::DropCause;

/// How the summary sorts the endpoints' drops ([`DropReason`]): redundant copies and outdated
/// updates are the protocol working as designed and cost nothing but the bytes; the rest are
/// real drops worth a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropClass {
    /// A packet or message that had already arrived, discarded as designed: the receiver
    /// rebuilt it from repair data or got it before its retransmission, or the network
    /// duplicated it ([`DropReason::DuplicatePacket`], [`DropReason::DuplicateMessage`]); or
    /// one that overtook its connection's handshake and is sent again
    /// ([`DropReason::EarlyPacket`]).
    RedundantCopy,
    /// A sequenced (newest-only) update that arrived after a newer one had been delivered,
    /// skipped as designed ([`DropReason::StaleMessage`]).
    OutdatedUpdate,
    /// Everything else: data refused or given up (malformed, unauthenticated, over a budget,
    /// a response after its request timed out, ...).
    RealDrop,
}

impl DropClass {
    /// Every class, in summary order.
    pub const ALL: [DropClass; 3] = [
        DropClass::RedundantCopy,
        DropClass::OutdatedUpdate,
        DropClass::RealDrop,
    ];

    /// The class of a drop reason. Reasons added to `shoal-proto` later count as real drops
    /// until they are sorted here.
    pub fn of(reason: DropReason) -> DropClass {
        match reason {
            DropReason::DuplicatePacket
            | DropReason::DuplicateMessage
            | DropReason::EarlyPacket => DropClass::RedundantCopy,
            DropReason::StaleMessage => DropClass::OutdatedUpdate,
            _ => DropClass::RealDrop,
        }
    }

    /// The class's line in the summary.
    pub fn title(self) -> &'static str {
        match self {
            DropClass::RedundantCopy => "redundant copies discarded (as designed)",
            DropClass::OutdatedUpdate => "outdated updates skipped (as designed)",
            DropClass::RealDrop => "real drops (data refused or given up)",
        }
    }

    /// The drops of `counts` in this class.
    pub fn count(self, counts: &DropCounts) -> u64 {
        counts
            .iter()
            .filter(|&(reason, _)| DropClass::of(reason) == self)
            .map(|(_, n)| n)
            .sum()
    }
}

/// What a drop reason means, in a few plain words.
pub(crate) fn reason_words(reason: DropReason) -> &'static str {
    match reason {
        DropReason::Malformed => "datagrams that could not be decoded",
        DropReason::UnknownVersion => "datagrams from another protocol version",
        DropReason::UnknownPacketType => "datagrams of an unknown packet type",
        DropReason::WrongProtocol => "handshakes for another application",
        DropReason::Unexpected => "packets not expected in the connection's state",
        DropReason::UnknownConnection => "packets for no known connection",
        DropReason::BadCookie => "handshakes with a bad or expired cookie",
        DropReason::DuplicatePacket => "packets that had arrived before",
        DropReason::UnknownChannel => "messages on a channel not configured",
        DropReason::ProtocolViolation => "messages breaking the protocol",
        DropReason::DuplicateMessage => "messages or chunks that had arrived before",
        DropReason::StaleMessage => "sequenced updates older than one delivered",
        DropReason::StaleResponse => "responses after their request timed out",
        DropReason::ReassemblyBudget => "messages over the reassembly memory budget",
        DropReason::ReassemblyEvicted => "unreliable chunked messages left incomplete",
        DropReason::EventQueueFull => "messages refused: the app's event queue was full",
        DropReason::ConnectionTableFull => "connection attempts refused: server full",
        DropReason::Oversized => "messages or datagrams over the size limit",
        DropReason::UnvalidatedPath => "packets from an address not yet validated",
        DropReason::OutOfWindow => "packets numbered too far ahead",
        DropReason::Unauthenticated => "packets failing authentication",
        DropReason::TokenReplay => "connect tokens used a second time",
        DropReason::EarlyPacket => "packets that overtook their handshake (sent again)",
        DropReason::KeyExchangeBudget => "connect requests over the key exchange rate",
        _ => "other",
    }
}

/// Why the simulated network dropped a datagram, in a few plain words.
pub(crate) fn cause_words(cause: DropCause) -> &'static str {
    match cause {
        DropCause::RandomLoss => "lost at random (the link's loss rate)",
        DropCause::BurstLoss => "lost in a burst (the link's burst loss)",
        DropCause::Outage => "sent during an outage (the link's outages)",
        DropCause::QueueFull => "no room in the bandwidth queue",
        DropCause::Mtu => "larger than the link's MTU",
        DropCause::Partition => "sent across a network partition",
        DropCause::LinkDown => "sent while the link was down",
        DropCause::Unroutable => "sent to an address nobody has",
        DropCause::NatNoMapping => "NAT had no mapping for it",
        DropCause::NatFiltered => "NAT filter refused the sender",
        DropCause::NatExpired => "NAT mapping had expired",
        DropCause::NatTableFull => "NAT table was full",
        DropCause::NatNoHairpin => "NAT does not hairpin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_copies_early_packets_and_outdated_updates_count_as_designed() {
        let designed: Vec<DropReason> = DropReason::ALL
            .into_iter()
            .filter(|&r| DropClass::of(r) != DropClass::RealDrop)
            .collect();
        assert_eq!(
            designed,
            [
                DropReason::DuplicatePacket,
                DropReason::DuplicateMessage,
                DropReason::StaleMessage,
                DropReason::EarlyPacket
            ]
        );
        for bad in [
            DropReason::Malformed,
            DropReason::Unauthenticated,
            DropReason::ReassemblyBudget,
            DropReason::EventQueueFull,
            DropReason::StaleResponse,
        ] {
            assert_eq!(DropClass::of(bad), DropClass::RealDrop, "{bad}");
        }
    }

    #[test]
    fn every_reason_and_cause_has_its_own_words() {
        let mut words: Vec<&str> = DropReason::ALL.into_iter().map(reason_words).collect();
        assert!(!words.contains(&"other"));
        words.extend(DropCause::ALL.into_iter().map(cause_words));
        let count = words.len();
        words.sort_unstable();
        words.dedup();
        assert_eq!(words.len(), count, "two causes share their words");
    }
}
