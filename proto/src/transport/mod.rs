//! One connection's packets: numbers, acknowledgements, RTT, loss detection, congestion
//! control, pacing, and the paths a connection may use.
//!
//! Messaging above it hands frames down and learns, through [`recovery::AckOutcome`], which
//! of its reliable frames were delivered or lost; the transport never looks inside a frame.

pub(crate) mod congestion;
pub(crate) mod fec;
pub(crate) mod frame_store;
pub(crate) mod pacing;
pub(crate) mod path;
pub(crate) mod received;
pub(crate) mod recovery;
pub(crate) mod rtt;

use alloc::boxed::Box;
use core::net::SocketAddr;

use crate::config::Config;
use crate::hash::Prf;
use crate::time::{Instant, MaybeInstant};
use fec::{RepairDecoder, RepairEncoder};
use pacing::Pacer;
use path::Paths;
use received::ReceivedPackets;
use recovery::SentPackets;

/// One connection's packet layer. The connection drives it (`connection/receive.rs` and
/// `connection/transmit.rs`); messaging sits above and meets it only through the frame keys
/// a packet carries and the [`AckOutcome`] that says which were delivered or lost.
#[derive(Debug)]
pub(crate) struct Transport {
    /// The validated address and the new ones being challenged.
    pub(crate) paths: Paths,
    /// What we sent: packet numbers, in flight, RTT, loss, congestion.
    pub(crate) sent: SentPackets,
    /// What we received: duplicates, the far-ahead bound, the ranges we acknowledge.
    pub(crate) received: ReceivedPackets,
    pub(crate) pacer: Pacer,
    /// An acknowledgement is due now.
    pub(crate) ack_now: bool,
    /// Packets with the ping bit (acknowledged promptly) received since the last
    /// acknowledgement left.
    pub(crate) eliciting_since_ack: u32,
    /// Packets of unreliable messages only received since the last acknowledgement left
    /// (acknowledged lazily: see `LAZY_ACK_DELAY`).
    pub(crate) lazy_since_ack: u32,
    /// Probe packets to send (the probe timeout fired): they go out even when the
    /// congestion window is full.
    pub(crate) probes_due: u8,
    /// The last acknowledgement left out recent ranges: send them in a packet of their own.
    pub(crate) full_ack_due: bool,
    /// When a path challenge from the peer last triggered a probe.
    pub(crate) last_challenge_probe: MaybeInstant,
    /// Loss rate seen recently, in units of 2^-32 (packets lost per packet resolved), which
    /// decides whether small packets are coded (forward error correction).
    pub(crate) loss_rate: u64,
    /// Small packets are being coded: on from 0.1% loss, off only below 0.005% (repairs
    /// hide most losses from the estimate, so it must not switch them off at once).
    pub(crate) coding: bool,
    /// Forward error correction: what we sent lately, to code repairs from. Boxed while
    /// coding (most connections never code; an idle one gives it back).
    pub(crate) fec_tx: Option<Box<RepairEncoder>>,
    /// Forward error correction: what we received lately, and repairs not solved yet.
    /// Boxed from the peer's first repair until it stops sending them.
    pub(crate) fec_rx: Option<Box<RepairDecoder>>,
    /// Solving work a decoder given back still owed (see `RepairDecoder::solve`): a peer that
    /// pauses its repairs until the decoder goes must not start the next one with a clean
    /// slate.
    pub(crate) solve_work_owed: u32,
    /// One past the newest packet the last repair we sent covered, 0 before the first
    /// (each packet is the newest covered once).
    pub(crate) repaired_through: u64,
    /// Where the coding logs append next, what we sent and what we received: addresses, for
    /// `hints` alone, which cannot read the logs (they hang off boxes not yet in cache). A
    /// stale one costs a useless prefetch, nothing else.
    pub(crate) coding_tails: [usize; 2],
}

impl Transport {
    /// The largest packet number an acknowledgement of ours that the peer has got named
    /// (see [`ReceivedPackets::ranges`]), if known. A value that no longer extends to one
    /// at or below the newest received (it went stale over 2^31 packets) is forgotten.
    #[inline]
    pub(crate) fn acks_known_to_peer(&mut self) -> Option<u64> {
        let low32 = self.sent.peer_saw_ack()?;
        let known = self
            .received
            .largest()
            .and_then(|largest| extend32(low32, largest).filter(|&k| k <= largest));
        if known.is_none() {
            self.sent.forget_peer_saw_ack();
        }
        known
    }

    /// Records packet `pn` as received (see [`ReceivedPackets::record`]). One at or below
    /// what the peer has seen acknowledged came late (reordered by more than a round trip,
    /// rebuilt from a late repair): the next acknowledgement names every range again, so
    /// that it is not left out.
    pub(crate) fn record_received(&mut self, pn: u64, now: Instant) -> bool {
        // (The newest packet is never at or below what an acknowledgement named.)
        let newest = self.received.largest().is_none_or(|largest| pn > largest);
        if !newest && self.acks_known_to_peer().is_some_and(|known| pn <= known) {
            self.sent.forget_peer_saw_ack();
        }
        self.received.record(pn, now)
    }

    /// What hangs off the transport: packet and key rings, received ranges, coding state
    /// (for `MemoryHint`).
    #[inline(always)]
    pub(crate) fn hints(&self, f: &mut impl crate::hints::Sink) {
        self.sent.hints(f);
        self.received.hints(f);
        self.paths.hints(f);
        if let Some(x) = &self.fec_tx {
            crate::hints::val(f, &**x);
            crate::hints::around(f, self.coding_tails[0]);
        }
        if let Some(x) = &self.fec_rx {
            crate::hints::val(f, &**x);
            crate::hints::around(f, self.coding_tails[1]);
        }
    }

    pub(crate) fn new(config: &Config, remote: SocketAddr, path_key: Prf, now: Instant) -> Self {
        Transport {
            paths: Paths::new(remote, path_key, now),
            sent: SentPackets::new(config.initial_rtt, config.mtu),
            received: ReceivedPackets::default(),
            pacer: Pacer::new(config),
            ack_now: false,
            eliciting_since_ack: 0,
            lazy_since_ack: 0,
            probes_due: 0,
            full_ack_due: false,
            last_challenge_probe: MaybeInstant::NONE,
            // A new connection codes nothing until its path loses a packet: one loss moves
            // the estimate past the 0.1% that turns coding on. (Coding from the start cost
            // every clean connection a repair per packet for its first couple of thousand.)
            loss_rate: 0,
            coding: false,
            fec_tx: None,
            fec_rx: None,
            solve_work_owed: 0,
            repaired_through: 0,
            coding_tails: [0; 2],
        }
    }
}

/// Extends a serial number's low 32 bits to 64: the value nearest to `reference` whose low
/// 32 bits are `wire`. `None` if that would be negative.
pub(crate) fn extend32(wire: u32, reference: u64) -> Option<u64> {
    let delta = wire.wrapping_sub(reference as u32) as i32;
    reference.checked_add_signed(i64::from(delta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend32_survives_wraparound() {
        assert_eq!(extend32(2, 0xffff_fffe), Some(0x1_0000_0002));
        assert_eq!(extend32(0xffff_fffe, 0x1_0000_0002), Some(0xffff_fffe));
        assert_eq!(extend32(u32::MAX, 0), None);
        assert_eq!(extend32(5, 3 << 32 | 10), Some(3 << 32 | 5));
    }

    fn transport() -> Transport {
        let remote = "10.0.0.1:1".parse().expect("address");
        let prf = Prf::from_key([1; 16]);
        Transport::new(&Config::default(), remote, prf, Instant::ZERO)
    }

    fn ranges(t: &mut Transport) -> alloc::vec::Vec<(u64, u64)> {
        let known = t.acks_known_to_peer();
        t.received.ranges(known).collect()
    }

    #[test]
    fn a_late_packet_below_what_the_peer_knows_brings_every_range_back() {
        let mut t = transport();
        for pn in [0, 1, 2, 4, 5, 7, 8, 9] {
            t.record_received(pn, Instant::ZERO);
        }
        t.sent.set_peer_saw_ack_for_test(8);
        assert_eq!(ranges(&mut t), [(7, 9)]);
        // Packet 10 is news, not late: the peer still knows up to 8.
        t.record_received(10, Instant::ZERO);
        assert_eq!(ranges(&mut t), [(7, 10)]);
        // Packet 3 came a round trip late: the next ack names it, and all the rest.
        t.record_received(3, Instant::ZERO);
        assert_eq!(ranges(&mut t), [(7, 10), (0, 5)]);
    }

    #[test]
    fn what_the_peer_knew_is_forgotten_once_it_would_be_ahead_of_the_newest() {
        let mut t = transport();
        t.record_received(100, Instant::ZERO);
        // (Low 32 bits that extend to a number past the newest received: stale, wrapped.)
        t.sent.set_peer_saw_ack_for_test(150);
        assert_eq!(t.acks_known_to_peer(), None);
        assert_eq!(
            t.sent.peer_saw_ack(),
            None,
            "forgotten, not kept to block newer ones"
        );
        t.sent.set_peer_saw_ack_for_test(100);
        assert_eq!(t.acks_known_to_peer(), Some(100));
    }
}
