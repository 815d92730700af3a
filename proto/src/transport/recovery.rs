//! The sender's side of reliability: packet numbers, what is in flight, acknowledgements,
//! loss detection, probe timeouts and the congestion controller they feed.
//!
//! Loss is detected the way QUIC does it (RFC 9002): a packet is lost when one sent at least
//! `packet_threshold` packets later is acknowledged, or when a later packet is acknowledged
//! and 9/8 of an RTT has passed since it was sent. When nothing comes back at all, a probe
//! timeout (with exponential backoff) sends one or two probe packets instead of declaring
//! anything lost: their acknowledgement tells what was lost, by the two rules above.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use super::congestion::{persistent_congestion_duration, Controller, NewReno};
use super::frame_store::FrameKey;
use super::rtt::{nanos, RttEstimator};
use crate::time::{Instant, MaybeInstant};
use crate::wire::Ack;

/// A packet is lost when a packet this many numbers later has been acknowledged (at first;
/// the threshold grows when a late acknowledgement shows a loss was reordering).
pub(crate) const PACKET_THRESHOLD: u8 = 3;
/// The largest the packet threshold grows to.
const MAX_PACKET_THRESHOLD: u8 = 16;
/// Packets declared lost are remembered this many packet numbers back, to notice late acks,
/// and for at most `LATE_ACK_DELAYS` loss delays (4.5 round trips, 6 while coding) after
/// they left: at a game's 20 packets a second the packet count alone kept three seconds of
/// records, and each connection's ring grew to 64 of them after its first loss.
const LATE_ACK_WINDOW: u64 = 64;
const LATE_ACK_DELAYS: u64 = 4;
/// Sent packets tracked at most; older ones are given up as lost.
const MAX_TRACKED_PACKETS: usize = 4096;
/// Longest backoff exponent for the probe timeout.
const MAX_BACKOFF: u8 = 6;
/// The longest a receiver waits to acknowledge packets of unreliable messages only (when
/// it sends nothing it could carry the acknowledgement on meanwhile). A game sending at
/// more than 10 Hz acknowledges them on its own next packet, never in a datagram of its own.
pub(crate) const LAZY_ACK_DELAY: Duration = Duration::from_millis(100);
/// Probe packets sent when the probe timeout fires.
pub(crate) const PROBES_PER_TIMEOUT: u8 = 2;

/// The span the first unused packet number is drawn from (log2): within 256 packets.
const FIRST_SKIP_SPAN_LOG2: u8 = 8;
/// The widest span (log2): past it a connection leaves about one number in 32,768 unused.
const MAX_SKIP_SPAN_LOG2: u8 = 16;

/// What `SentPackets::skip_if_due` asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SkipDraw {
    /// Nothing.
    None,
    /// Draw the next place (the span grows): the first, or the next after a skip.
    Next,
    /// Draw the place again (the span stays): the drawn one passed unused.
    Again,
}

/// State of a sent packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PacketState {
    /// Awaiting acknowledgement.
    InFlight,
    /// Acknowledged.
    Acked,
    /// Not tracked: it carried only an acknowledgement.
    Untracked,
    /// Declared lost; kept a while in case a late acknowledgement shows it was not.
    Lost,
}

/// How a sent packet asks to be acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckWanted {
    /// Not at all (an acknowledgement, a keepalive): not tracked.
    No,
    /// Whenever the peer next sends, or within its lazy acknowledgement delay: a packet of
    /// unreliable messages only. It counts against the window and for loss, but no probe
    /// timeout waits for it: nothing in it would be sent again.
    Lazy,
    /// Within the peer's `max_ack_delay` (the ping bit): reliable frames or a probe.
    Prompt,
}

/// A packet sent and not yet resolved.
#[derive(Debug)]
pub(crate) struct SentPacket {
    pub(crate) sent_at: Instant,
    pub(crate) size: u16,
    pub(crate) state: PacketState,
    /// The sender was using less than half its window when this left.
    app_limited: bool,
    /// Acknowledged promptly (see [`AckWanted`]).
    prompt: bool,
    /// Reliable frames it carried: `keys_len` keys of the ring of in-flight packets' keys,
    /// from the key numbered `keys_start` (see [`SentPackets::keys`]).
    keys_start: u32,
    keys_len: u16,
    /// It carried an acknowledgement, whose largest packet number's low 32 bits are
    /// `ack_largest`: once it is acknowledged, the peer knows what that one said.
    carried_ack: bool,
    ack_largest: u32,
}

/// The frame keys of the packet being written: appended to the back of the ring of
/// in-flight packets' keys, which is lent out while the packet is written (taken with
/// [`SentPackets::take_packet_keys`], given back by `on_sent` or `give_back_packet_keys`).
#[derive(Debug)]
pub(crate) struct PacketFrameKeys {
    ring: VecDeque<FrameKey>,
    /// Where this packet's keys begin in `ring`.
    from: usize,
}

impl PacketFrameKeys {
    pub(crate) fn push(&mut self, key: FrameKey) {
        self.ring.push_back(key);
    }

    /// Whether this packet already carries `key`.
    pub(crate) fn contains(&self, key: &FrameKey) -> bool {
        self.ring.range(self.from..).any(|k| k == key)
    }

    /// Whether this packet carries no reliable frame.
    pub(crate) fn is_empty(&self) -> bool {
        self.ring.len() == self.from
    }

    fn len(&self) -> usize {
        self.ring.len() - self.from
    }
}

/// What an acknowledgement or a timeout resolved, handed back to the connection.
#[derive(Debug, Default)]
pub(crate) struct AckOutcome {
    /// Frames in newly acknowledged packets.
    pub(crate) acked_frames: Vec<FrameKey>,
    /// Frames in packets declared lost.
    pub(crate) lost_frames: Vec<FrameKey>,
    pub(crate) packets_lost: u64,
    /// Packets newly acknowledged.
    pub(crate) packets_acked: u64,
}

impl AckOutcome {
    pub(crate) fn is_empty(&self) -> bool {
        self.acked_frames.is_empty()
            && self.lost_frames.is_empty()
            && self.packets_lost == 0
            && self.packets_acked == 0
    }

    pub(crate) fn clear(&mut self) {
        self.acked_frames.clear();
        self.lost_frames.clear();
        self.packets_lost = 0;
        self.packets_acked = 0;
    }
}

/// The sender's side: packet numbers, what is in flight, RTT, loss, congestion.
#[derive(Debug)]
pub(crate) struct SentPackets {
    /// Number of `packets[0]`.
    first_seq: u64,
    packets: VecDeque<SentPacket>,
    next_seq: u64,
    largest_acked: Option<u64>,
    bytes_in_flight: u64,
    pub(crate) rtt: RttEstimator,
    pub(crate) congestion: NewReno,
    /// Probe timeouts in a row without an acknowledgement.
    pto_count: u8,
    /// When the newest promptly acknowledged packet left.
    last_eliciting_sent: MaybeInstant,
    /// Promptly acknowledged packets in flight: the probe timeout runs while there are any.
    prompt_in_flight: u32,
    /// Number of the oldest packet still in flight (or `next_seq` if none is).
    oldest_in_flight: u64,
    packet_threshold: u8,
    /// The log2 of the span the next unused packet number is drawn from (see
    /// `schedule_skip`): 0 until the first is drawn, then from `FIRST_SKIP_SPAN_LOG2` up
    /// to `MAX_SKIP_SPAN_LOG2`.
    skip_span_log2: u8,
    /// The low 32 bits of the next packet number to leave unused (it is never 2^31 away).
    skip_at: u32,
    /// The last packet number left unused: an acknowledgement that names it is a lie (see
    /// `names_skipped`).
    skipped: u64,
    /// Packets declared lost and then acknowledged (saturating: a u32 keeps the struct
    /// within its size).
    pub(crate) spurious_losses: u32,
    /// The frame keys of the packets in `packets`, in packet order: one ring for all, so
    /// recording a packet never allocates once the ring has grown to what is in flight.
    keys: VecDeque<FrameKey>,
    /// The number of `keys[0]` (keys are numbered as pushed, wrapping).
    keys_first: u32,
    /// The packets being sent are coded (forward error correction).
    coded: bool,
    /// The largest packet number (low 32 bits) named by an acknowledgement of ours that the
    /// peer has acknowledged, if `peer_saw_any_ack`: it knows everything up to there (see
    /// `peer_saw_ack`). (Two fields, not an `Option`: a connection is kept small.)
    peer_saw_ack: u32,
    peer_saw_any_ack: bool,
    /// Every `Lost` packet is among the first `lost_span` of `packets`. With the
    /// oldest-in-flight cursor, this lets an acknowledgement skip the run of packets already
    /// acknowledged between a lost packet kept for a late acknowledgement (up to
    /// `LATE_ACK_WINDOW` of them) and the packets in flight: on a lossy link most
    /// acknowledgements would otherwise read that whole run.
    lost_span: u32,
}

impl SentPackets {
    /// The ends of the packet and key rings (for `MemoryHint`).
    pub(crate) fn hints(&self, f: &mut impl crate::hints::Sink) {
        crate::hints::deque_ends(f, &self.packets);
        crate::hints::deque_ends(f, &self.keys);
    }

    pub(crate) fn new(initial_rtt: Duration, mtu: usize) -> Self {
        SentPackets {
            first_seq: 0,
            packets: VecDeque::new(),
            next_seq: 0,
            largest_acked: None,
            bytes_in_flight: 0,
            rtt: RttEstimator::new(initial_rtt),
            congestion: NewReno::new(mtu),
            pto_count: 0,
            last_eliciting_sent: MaybeInstant::NONE,
            prompt_in_flight: 0,
            oldest_in_flight: 0,
            packet_threshold: PACKET_THRESHOLD,
            skip_span_log2: 0,
            skip_at: 0,
            skipped: u64::MAX,
            spurious_losses: 0,
            keys: VecDeque::new(),
            keys_first: 0,
            coded: false,
            peer_saw_ack: 0,
            peer_saw_any_ack: false,
            lost_span: 0,
        }
    }

    /// The number the next packet gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    /// Whether the congestion window has room for another packet of `size` bytes.
    pub(crate) fn can_send(&self, size: usize) -> bool {
        self.bytes_in_flight + size as u64 <= self.congestion.window()
    }

    /// Gives back the packet records' buffers when no packet is tracked, but for room for
    /// one record: an idle connection's keepalive then never reallocates (an empty ring
    /// took a four-record block for each keepalive and gave it back at the next).
    pub(crate) fn trim(&mut self) {
        if self.packets.is_empty() {
            self.packets.shrink_to(1);
            self.keys = VecDeque::new();
        }
    }

    /// Lends the key ring out to collect the frame keys of the packet being written.
    pub(crate) fn take_packet_keys(&mut self) -> PacketFrameKeys {
        let ring = core::mem::take(&mut self.keys);
        PacketFrameKeys {
            from: ring.len(),
            ring,
        }
    }

    /// Takes the key ring back from a packet that was not sent.
    pub(crate) fn give_back_packet_keys(&mut self, mut keys: PacketFrameKeys) {
        keys.ring.truncate(keys.from);
        self.keys = keys.ring;
    }

    /// The frame keys packet `p` carried, in `keys`, the ring whose first key is numbered
    /// `first`.
    fn keys_of<'a>(
        keys: &'a VecDeque<FrameKey>,
        first: u32,
        p: &SentPacket,
    ) -> impl Iterator<Item = FrameKey> + 'a {
        let from = (p.keys_start.wrapping_sub(first) as usize).min(keys.len());
        let to = (from + usize::from(p.keys_len)).min(keys.len());
        keys.range(from..to).copied()
    }

    /// Reliable frames of the oldest packets still in flight, oldest first (what a probe
    /// carries again), read from the key ring lent to the packet being written.
    pub(crate) fn oldest_in_flight_frames<'a>(
        &'a self,
        lent: &'a PacketFrameKeys,
    ) -> impl Iterator<Item = FrameKey> + 'a {
        let from = self
            .index_of(self.oldest_in_flight)
            .unwrap_or(self.packets.len());
        self.packets
            .range(from..)
            .filter(|p| p.state == PacketState::InFlight)
            .flat_map(move |p| Self::keys_of(&lent.ring, self.keys_first, p))
    }

    /// Records packet `next_seq()` as sent. Packets that want an acknowledgement are tracked
    /// for loss and count against the congestion window; prompt ones arm the probe timeout.
    pub(crate) fn on_sent(
        &mut self,
        now: Instant,
        size: usize,
        wanted: AckWanted,
        frames: PacketFrameKeys,
        outcome: &mut AckOutcome,
    ) {
        let keys_len = frames.len();
        // Each reliable frame takes bytes of a datagram of at most 65,507: far below this.
        debug_assert!(keys_len <= usize::from(u16::MAX));
        let keys_start = self.keys_first.wrapping_add(frames.from as u32);
        self.keys = frames.ring;
        if self.packets.is_empty() {
            self.first_seq = self.next_seq;
        }
        self.next_seq += 1;
        let app_limited = (self.bytes_in_flight + size as u64) * 2 < self.congestion.window();
        let prompt = wanted == AckWanted::Prompt;
        let state = if wanted == AckWanted::No {
            PacketState::Untracked
        } else {
            self.bytes_in_flight += size as u64;
            if prompt {
                self.last_eliciting_sent = now.into();
                self.prompt_in_flight += 1;
            }
            PacketState::InFlight
        };
        self.packets.push_back(SentPacket {
            sent_at: now,
            size: size as u16,
            state,
            app_limited,
            prompt,
            keys_start,
            keys_len: keys_len as u16,
            carried_ack: false,
            ack_largest: 0,
        });
        if self.packets.len() > MAX_TRACKED_PACKETS {
            // Nothing has been acknowledged for thousands of packets: give the oldest up.
            if let Some(p) = self.packets.front_mut() {
                if p.state == PacketState::InFlight {
                    p.state = PacketState::Lost;
                    self.lost_span = self.lost_span.max(1);
                    self.bytes_in_flight -= u64::from(p.size);
                    self.prompt_in_flight -= u32::from(p.prompt);
                    outcome
                        .lost_frames
                        .extend(Self::keys_of(&self.keys, self.keys_first, p));
                    outcome.packets_lost += 1;
                }
            }
        }
        self.retire(now);
    }

    /// Pops resolved packets off the front and moves the oldest-in-flight cursor past
    /// resolved ones (so loss detection never rescans them).
    fn retire(&mut self, now: Instant) {
        self.oldest_in_flight = self.oldest_in_flight.max(self.first_seq);
        let late_ack_span = self.loss_delay_nanos().saturating_mul(LATE_ACK_DELAYS);
        while let Some(i) = self.index_of(self.oldest_in_flight) {
            if self.packets[i].state == PacketState::InFlight {
                break;
            }
            self.oldest_in_flight += 1;
        }
        while let Some(front) = self.packets.front() {
            let late_ack_possible = front.state == PacketState::Lost
                && self.next_seq - self.first_seq <= LATE_ACK_WINDOW
                && now < front.sent_at.plus_nanos(late_ack_span);
            let keep = (front.state == PacketState::InFlight || late_ack_possible)
                && self.packets.len() <= MAX_TRACKED_PACKETS;
            if keep {
                break;
            }
            if let Some(p) = self.packets.pop_front() {
                // Packets leave in order, so their keys are the oldest in the ring.
                let n = usize::from(p.keys_len).min(self.keys.len());
                self.keys.drain(..n);
                self.keys_first = self.keys_first.wrapping_add(n as u32);
                self.first_seq += 1;
                self.lost_span = self.lost_span.saturating_sub(1);
            }
        }
        #[cfg(debug_assertions)]
        self.check_cursors();
    }

    /// The invariants the acknowledgement walk relies on: nothing below the oldest-in-flight
    /// cursor is in flight, and nothing past `lost_span` is lost.
    #[cfg(debug_assertions)]
    fn check_cursors(&self) {
        for (i, p) in self.packets.iter().enumerate() {
            let seq = self.first_seq + i as u64;
            debug_assert!(seq >= self.oldest_in_flight || p.state != PacketState::InFlight);
            debug_assert!(i < self.lost_span as usize || p.state != PacketState::Lost);
        }
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        let idx = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        (idx < self.packets.len()).then_some(idx)
    }

    /// Whether `ack` names a packet above the newest one sent. An honest peer's never does;
    /// without protection a forged packet to the peer can make it report one, so
    /// [`Self::on_ack`] only cuts such ranges off, but a protected peer's ack that does is
    /// a lie (an optimistic ack claiming everything arrived) and is not taken at all.
    pub(crate) fn names_unsent(&self, ack: &Ack<'_>) -> bool {
        let Some(largest_sent) = self.next_seq.checked_sub(1) else {
            return true;
        };
        super::extend32(ack.largest, largest_sent).is_none_or(|largest| largest > largest_sent)
    }

    /// Leaves the next packet number unused if the one drawn is reached and the sender is
    /// held back by its window: a peer that acknowledges packets it never got (an
    /// optimistic ack, hiding loss to be sent more, faster) names it sooner or later, as it
    /// cannot tell it from a lost one. Only then does lying pay (a sender using less than
    /// half its window sends no faster for it), and only then is a hole shown to the peer.
    /// Says whether a place must be drawn (`schedule_skip`): the first; the next, after a
    /// skip; another, when the drawn one passed while the window was not binding (else the
    /// skip would fall, predictably, on the first packet that binds it).
    pub(crate) fn skip_if_due(&mut self, now: Instant) -> SkipDraw {
        if self.skip_span_log2 == 0 {
            return SkipDraw::Next;
        }
        // (The low 32 bits: `skip_at` is never 2^31 behind, as a passed one is redrawn.)
        if (self.next_seq as u32).wrapping_sub(self.skip_at) >= 1 << 31 {
            return SkipDraw::None;
        }
        if self.bytes_in_flight * 2 < self.congestion.window() {
            return SkipDraw::Again;
        }
        if self.packets.len() >= MAX_TRACKED_PACKETS {
            // (A record more would push out a packet in flight: skip once there is room.)
            return SkipDraw::None;
        }
        if self.packets.is_empty() {
            self.first_seq = self.next_seq;
        }
        // Untracked: never in flight, never lost, and an ack naming it is refused.
        self.packets.push_back(SentPacket {
            sent_at: now,
            size: 0,
            state: PacketState::Untracked,
            app_limited: false,
            prompt: false,
            keys_start: self.keys_first.wrapping_add(self.keys.len() as u32),
            keys_len: 0,
            carried_ack: false,
            ack_largest: 0,
        });
        self.skipped = self.next_seq;
        self.next_seq += 1;
        self.retire(now);
        SkipDraw::Next
    }

    /// Draws the place of the next packet number to leave unused from `random` (a keyed
    /// PRF's output, which the peer cannot predict), uniformly within a span that starts at
    /// `FIRST_SKIP_SPAN_LOG2` and doubles with each `SkipDraw::Next` up to
    /// `MAX_SKIP_SPAN_LOG2`: a new connection is tested soon, and a long one rarely shows
    /// the peer a hole that is no loss.
    pub(crate) fn schedule_skip(&mut self, draw: SkipDraw, random: u64) {
        self.skip_span_log2 = match (self.skip_span_log2, draw) {
            (0, _) => FIRST_SKIP_SPAN_LOG2,
            (s, SkipDraw::Next) => (s + 1).min(MAX_SKIP_SPAN_LOG2),
            (s, _) => s,
        };
        let at = self.next_seq + 1 + (random & ((1 << self.skip_span_log2) - 1));
        self.skip_at = at as u32;
    }

    /// The last packet number left unused, if any.
    #[cfg(test)]
    pub(crate) fn last_skipped(&self) -> Option<u64> {
        (self.skipped != u64::MAX).then_some(self.skipped)
    }

    /// Whether `ack` names the last packet number left unused: an honest peer's never does
    /// (it was never sent), so the peer lies.
    pub(crate) fn names_skipped(&self, ack: &Ack<'_>) -> bool {
        let Some(largest_sent) = self.next_seq.checked_sub(1) else {
            return false;
        };
        let Some(largest) = super::extend32(ack.largest, largest_sent) else {
            return false;
        };
        if self.skipped > largest {
            // (None left unused yet is `u64::MAX`.)
            return false;
        }
        for (low_off, high_off) in ack.ranges() {
            let Some(high) = largest.checked_sub(high_off) else {
                break;
            };
            if high < self.skipped {
                break;
            }
            if largest.saturating_sub(low_off) <= self.skipped {
                return true;
            }
        }
        false
    }

    /// Processes an acknowledgement. Ranges above the newest packet sent (which an honest
    /// peer never sends, but a forged packet to the peer could make it report) are ignored.
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        ack: &Ack<'_>,
        max_ack_delay: Duration,
        outcome: &mut AckOutcome,
    ) {
        let Some(largest_sent) = self.next_seq.checked_sub(1) else {
            return;
        };
        let Some(largest) = super::extend32(ack.largest, largest_sent) else {
            return;
        };
        let mut newest_acked: Option<(u64, Instant, bool)> = None;
        for (low_off, high_off) in ack.ranges() {
            let Some(high) = largest.checked_sub(high_off) else {
                break;
            };
            let low = largest.saturating_sub(low_off);
            if high < self.first_seq {
                break;
            }
            let high = high.min(largest_sent);
            let last = self.first_seq + self.packets.len() as u64;
            let (low, high) = (low.max(self.first_seq), high.min(last.saturating_sub(1)));
            // Between the last packet that may be lost and the oldest in flight, every
            // packet is acknowledged or untracked: nothing to do there.
            let lost_end = self.first_seq + u64::from(self.lost_span);
            let may_be_lost = low..=high.min(lost_end.saturating_sub(1));
            let may_be_in_flight = low.max(lost_end).max(self.oldest_in_flight)..=high;
            for seq in may_be_lost.chain(may_be_in_flight) {
                let Some(idx) = self.index_of(seq) else {
                    break;
                };
                let p = &mut self.packets[idx];
                if p.carried_ack && p.state != PacketState::Acked {
                    // (Acknowledgements only grow: a later packet's names a larger number.)
                    let newer = (p.ack_largest.wrapping_sub(self.peer_saw_ack) as i32) > 0;
                    if newer || !self.peer_saw_any_ack {
                        self.peer_saw_ack = p.ack_largest;
                        self.peer_saw_any_ack = true;
                    }
                }
                match p.state {
                    PacketState::Acked | PacketState::Untracked => continue,
                    PacketState::Lost => {
                        // It arrived after all: reordering fooled the packet threshold. Its
                        // frames are acknowledged and the threshold grows to this depth.
                        p.state = PacketState::Acked;
                        outcome
                            .acked_frames
                            .extend(Self::keys_of(&self.keys, self.keys_first, p));
                        self.spurious_losses = self.spurious_losses.saturating_add(1);
                        let depth = (largest - seq + 1).min(u64::from(MAX_PACKET_THRESHOLD));
                        // At most MAX_PACKET_THRESHOLD, so it fits.
                        self.packet_threshold = self.packet_threshold.max(depth as u8);
                        continue;
                    }
                    PacketState::InFlight => {}
                }
                p.state = PacketState::Acked;
                self.bytes_in_flight -= u64::from(p.size);
                self.prompt_in_flight -= u32::from(p.prompt);
                self.congestion
                    .on_ack(p.sent_at, u64::from(p.size), p.app_limited);
                outcome
                    .acked_frames
                    .extend(Self::keys_of(&self.keys, self.keys_first, p));
                outcome.packets_acked += 1;
                if newest_acked.is_none_or(|(s, ..)| seq > s) {
                    newest_acked = Some((seq, p.sent_at, p.prompt));
                }
            }
        }
        if let Some((seq, sent_at, prompt)) = newest_acked {
            self.pto_count = 0;
            if seq == largest && self.largest_acked.is_none_or(|l| largest > l) {
                let delay = Duration::from_micros(ack.delay_micros);
                self.rtt
                    .update(now - sent_at, delay, max_ack_delay, !prompt);
            }
        }
        if largest <= largest_sent && self.largest_acked.is_none_or(|l| largest > l) {
            self.largest_acked = Some(largest);
        }
        self.detect_lost(now, max_ack_delay, outcome);
        self.retire(now);
    }

    /// Declares lost the in-flight packets older than the newest acknowledged one that pass
    /// the packet or time threshold, and tells the congestion controller.
    fn detect_lost(&mut self, now: Instant, max_ack_delay: Duration, outcome: &mut AckOutcome) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        let loss_delay = self.loss_delay();
        let persistent_span = persistent_congestion_duration(self.rtt.pto(max_ack_delay));
        // The current run of lost packets with nothing acknowledged between them.
        let mut run: Option<(Instant, Instant)> = None;
        let mut persistent = false;
        // The newest lost packet sent while the sender used its window: losses of packets
        // sent while it was far below its window (a game's steady trickle on a lossy link)
        // say the link drops packets, not that the sender is too fast, so they do not shrink
        // the window (in the spirit of RFC 7661's rate-limited traffic rules).
        let mut newest_lost: Option<Instant> = None;
        for seq in self.oldest_in_flight..largest {
            let Some(i) = self.index_of(seq) else { break };
            let p = &mut self.packets[i];
            match p.state {
                PacketState::Acked => {
                    run = None;
                    continue;
                }
                PacketState::InFlight => {}
                PacketState::Untracked | PacketState::Lost => continue,
            }
            if largest - seq >= u64::from(self.packet_threshold) || p.sent_at + loss_delay <= now {
                p.state = PacketState::Lost;
                // (At most MAX_TRACKED_PACKETS + 1 packets are kept.)
                self.lost_span = self.lost_span.max(i as u32 + 1);
                self.bytes_in_flight -= u64::from(p.size);
                self.prompt_in_flight -= u32::from(p.prompt);
                outcome
                    .lost_frames
                    .extend(Self::keys_of(&self.keys, self.keys_first, p));
                outcome.packets_lost += 1;
                if !p.app_limited {
                    newest_lost = Some(p.sent_at);
                }
                let (start, _) = *run.get_or_insert((p.sent_at, p.sent_at));
                run = Some((start, p.sent_at));
                if p.sent_at - start >= persistent_span {
                    persistent = true;
                }
            } else {
                run = None;
            }
        }
        if let Some(sent_at) = newest_lost {
            let persistent = persistent && self.rtt.measured().is_some();
            self.congestion
                .on_congestion_event(now, sent_at, persistent);
        }
    }

    /// When loss detection next needs to run: the time threshold of an unacknowledged packet
    /// older than the newest acknowledged one, or else the probe timeout (while a promptly
    /// acknowledged packet is in flight).
    pub(crate) fn loss_deadline(
        &self,
        max_ack_delay: Duration,
        max_rto: Duration,
    ) -> Option<Instant> {
        // (In nanoseconds: this runs for every packet sent and received.)
        let seq = self.oldest_in_flight;
        let p = &self.packets[self.index_of(seq)?];
        if self.largest_acked.is_some_and(|l| seq < l) {
            return Some(p.sent_at.plus_nanos(self.loss_delay_nanos()));
        }
        if self.prompt_in_flight == 0 {
            // Only lazily acknowledged packets: no probe, but if no acknowledgement comes
            // they are given up (neither acknowledged nor lost), so that they cannot hold
            // the window forever.
            let expiry = self.rtt.pto_nanos(nanos(LAZY_ACK_DELAY.max(max_ack_delay)));
            return Some(p.sent_at.plus_nanos(expiry));
        }
        let pto = self.pto_nanos(nanos(max_ack_delay), nanos(max_rto));
        Some(self.last_eliciting_sent.get()?.plus_nanos(pto))
    }

    /// How long after it was sent a packet older than an acknowledged one counts as lost:
    /// 9/8 of an RTT, or 3/2 while the packets are coded (a lost one is usually rebuilt by
    /// the receiver from the repair in a later packet, and acknowledged a little after its
    /// successors: declaring it lost first would resend it and shrink the window for
    /// nothing).
    fn loss_delay(&self) -> Duration {
        Duration::from_nanos(self.loss_delay_nanos())
    }

    fn loss_delay_nanos(&self) -> u64 {
        let delay = self.rtt.loss_delay_nanos();
        if self.coded {
            delay.saturating_mul(4) / 3
        } else {
            delay
        }
    }

    /// Whether the packets being sent carry repairs for each other (see `loss_delay`).
    pub(crate) fn set_coded(&mut self, coded: bool) {
        self.coded = coded;
    }

    /// The packet just recorded (`on_sent`) carried an acknowledgement whose largest packet
    /// number is `largest` (for [`Self::peer_saw_ack`], once it is acknowledged).
    pub(crate) fn set_ack_carried(&mut self, largest: u64) {
        let newest = self
            .next_seq
            .checked_sub(1)
            .and_then(|seq| self.index_of(seq));
        if let Some(p) = newest.and_then(|i| self.packets.get_mut(i)) {
            p.carried_ack = true;
            p.ack_largest = largest as u32;
        }
    }

    /// The largest packet number (low 32 bits) an acknowledgement the peer got named: one
    /// of our packets that carried it was acknowledged. Ranges wholly at or below it need
    /// not be acknowledged again (as QUIC's ACK frames leave them out, RFC 9000 §13.2.4).
    pub(crate) fn peer_saw_ack(&self) -> Option<u32> {
        self.peer_saw_any_ack.then_some(self.peer_saw_ack)
    }

    /// Forgets what the peer was known to have seen acknowledged: the next acknowledgement
    /// names every range it can.
    pub(crate) fn forget_peer_saw_ack(&mut self) {
        self.peer_saw_any_ack = false;
    }

    #[cfg(test)]
    pub(crate) fn set_peer_saw_ack_for_test(&mut self, low32: u32) {
        self.peer_saw_ack = low32;
        self.peer_saw_any_ack = true;
    }

    /// How long a lazily acknowledged packet waits for its acknowledgement.
    fn lazy_expiry(&self, max_ack_delay: Duration) -> Duration {
        self.rtt.pto(LAZY_ACK_DELAY.max(max_ack_delay))
    }

    /// Gives up the lazily acknowledged packets that waited too long (only they are in
    /// flight): untracked, out of the window, counted neither acknowledged nor lost. But
    /// silence after packets sent while the sender used its window is a congestion signal
    /// like a loss (a return path that drops every acknowledgement must not let a full
    /// window go out every expiry).
    fn expire_lazy(&mut self, now: Instant, max_ack_delay: Duration) {
        let expiry = self.lazy_expiry(max_ack_delay);
        let mut newest_busy: Option<Instant> = None;
        for seq in self.oldest_in_flight..self.next_seq {
            let Some(i) = self.index_of(seq) else { break };
            let p = &mut self.packets[i];
            if p.sent_at + expiry > now {
                break;
            }
            if p.state == PacketState::InFlight {
                p.state = PacketState::Untracked;
                self.bytes_in_flight -= u64::from(p.size);
                if !p.app_limited {
                    newest_busy = Some(p.sent_at);
                }
            }
        }
        if let Some(sent_at) = newest_busy {
            self.congestion.on_congestion_event(now, sent_at, false);
        }
    }

    /// The probe timeout after backoff, in nanoseconds (all three): capped at `max_rto`,
    /// but never below the timeout before backoff (a cap under the round trip would fire
    /// probes, which bypass the congestion window, on every call).
    fn pto_nanos(&self, max_ack_delay: u64, max_rto: u64) -> u64 {
        let base = self.rtt.pto_nanos(max_ack_delay);
        base.saturating_mul(1 << self.pto_count)
            .min(max_rto.max(base))
    }

    /// When the newest promptly acknowledged packet left (or a probe timeout fired).
    pub(crate) fn last_prompt_sent(&self) -> Option<Instant> {
        self.last_eliciting_sent.get()
    }

    /// Whether a promptly acknowledged packet is in flight (the probe timeout is armed).
    pub(crate) fn prompt_in_flight(&self) -> bool {
        self.prompt_in_flight > 0
    }

    /// Probe timeouts fired in a row without an acknowledgement.
    pub(crate) fn pto_count(&self) -> u32 {
        u32::from(self.pto_count)
    }

    /// Runs loss detection at its deadline. Returns true if the probe timeout fired: the
    /// caller sends probes (nothing is declared lost for it).
    pub(crate) fn on_loss_timeout(
        &mut self,
        now: Instant,
        max_ack_delay: Duration,
        max_rto: Duration,
        outcome: &mut AckOutcome,
    ) -> bool {
        let before = outcome.packets_lost;
        let deadline = self.loss_deadline(max_ack_delay, max_rto);
        self.detect_lost(now, max_ack_delay, outcome);
        let mut fired = false;
        if outcome.packets_lost == before && deadline.is_some_and(|d| d <= now) {
            let tail = self.largest_acked.is_none_or(|l| self.oldest_in_flight > l);
            if tail && self.prompt_in_flight > 0 {
                self.pto_count = (self.pto_count + 1).min(MAX_BACKOFF);
                // Pushes the next probe timeout out by the backoff from now.
                self.last_eliciting_sent = now.into();
                fired = true;
            } else if tail {
                self.expire_lazy(now, max_ack_delay);
            }
        }
        self.retire(now);
        fired
    }
}

#[cfg(test)]
impl SentPackets {
    /// Records a packet that carried no reliable frame.
    fn on_sent_without_frames(
        &mut self,
        now: Instant,
        size: usize,
        wanted: AckWanted,
        outcome: &mut AckOutcome,
    ) {
        let keys = self.take_packet_keys();
        self.on_sent(now, size, wanted, keys, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers are left unused only once the drawn one is reached with the window more than
    /// half full, within a span that doubles from 256 to 65,536; an ack covering the last
    /// one, in any of its ranges, names it.
    #[test]
    fn a_number_is_left_unused_where_drawn_and_only_when_the_window_binds() {
        let t0 = Instant::from_millis(1);
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        assert_eq!(
            sent.skip_if_due(t0),
            SkipDraw::Next,
            "the first, before any packet"
        );
        sent.schedule_skip(SkipDraw::Next, 41);
        assert_eq!(sent.skip_at, 42);
        // Small packets: the window never binds; the place passes unused and is drawn again
        // (the span stays), so the skip does not fall on the first packet that binds it.
        let mut again = 0;
        for _ in 0..50 {
            sent.on_sent_without_frames(t0, 100, AckWanted::Lazy, &mut out);
            match sent.skip_if_due(t0) {
                SkipDraw::Again => {
                    again += 1;
                    sent.schedule_skip(SkipDraw::Again, 100);
                    assert_eq!(u64::from(sent.skip_at), sent.next_seq() + 101);
                }
                other => assert_eq!(other, SkipDraw::None),
            }
        }
        assert_eq!(again, 1);
        assert_eq!(sent.skip_span_log2, FIRST_SKIP_SPAN_LOG2);
        assert_eq!(sent.last_skipped(), None);
        // Full packets fill the window: a number is left unused once the place is reached.
        let skipped = loop {
            sent.on_sent_without_frames(t0, 1200, AckWanted::Prompt, &mut out);
            match sent.skip_if_due(t0) {
                SkipDraw::Next => break sent.next_seq() - 1,
                SkipDraw::Again => sent.schedule_skip(SkipDraw::Again, 0),
                SkipDraw::None => {}
            }
        };
        assert_eq!(sent.last_skipped(), Some(skipped));
        sent.schedule_skip(SkipDraw::Next, u64::MAX);
        assert_eq!(
            u64::from(sent.skip_at),
            sent.next_seq() + 512,
            "the span doubled"
        );
        for _ in 0..5 {
            sent.on_sent_without_frames(t0, 1200, AckWanted::Prompt, &mut out);
        }
        let largest = sent.next_seq() - 1;
        let mut buf = [0u8; 32];
        let covering = Ack::build(largest as u32, 0, &[(largest - skipped, 0)], &mut buf);
        assert!(sent.names_skipped(&covering.expect("ack")));
        let mut buf = [0u8; 32];
        let around = Ack::build(largest as u32, 0, &[(0, 0), (3, 2)], &mut buf);
        assert!(!sent.names_skipped(&around.expect("ack")));
        let mut buf = [0u8; 32];
        let older = [(0, 0), (largest - skipped + 1, largest - skipped)];
        let in_second = Ack::build(largest as u32, 0, &older, &mut buf);
        assert!(sent.names_skipped(&in_second.expect("ack")));
        for _ in 0..20 {
            sent.schedule_skip(SkipDraw::Next, 0);
        }
        assert_eq!(sent.skip_span_log2, MAX_SKIP_SPAN_LOG2);
    }

    /// At the cap of packets tracked, no number is left unused: its record would push out
    /// a packet still in flight, whose bytes and frames would then never be resolved.
    #[test]
    fn no_number_is_left_unused_at_the_cap_of_packets_tracked() {
        let t0 = Instant::from_millis(1);
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        while sent.packets.len() < MAX_TRACKED_PACKETS {
            sent.on_sent_without_frames(t0, 100, AckWanted::Prompt, &mut out);
            let draw = sent.skip_if_due(t0);
            if draw != SkipDraw::None {
                sent.schedule_skip(draw, 7);
            }
        }
        // The place is reached with the window bound, at the cap.
        sent.skip_at = sent.next_seq() as u32;
        assert_eq!(sent.skip_if_due(t0), SkipDraw::None);
        let in_flight = sent
            .packets
            .iter()
            .filter(|p| p.state == PacketState::InFlight)
            .count() as u64;
        assert_eq!(sent.bytes_in_flight(), in_flight * 100);
    }

    fn ack<'a>(largest: u32, ranges: &[(u64, u64)], buf: &'a mut [u8]) -> Ack<'a> {
        Ack::build(largest, 0, ranges, buf).expect("valid ranges")
    }

    /// A lost packet is remembered for a late acknowledgement a few round trips, not only
    /// until 64 more packets have left: at a game's 20 packets a second that would keep
    /// three seconds of records after every loss.
    #[test]
    fn a_lost_packet_is_remembered_for_late_acks_a_few_round_trips_only() {
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        let mad = Duration::from_millis(5);
        let at = |ms: u64| Instant::from_millis(1 + ms);
        let mut buf = [0u8; 32];
        // One packet every 20 ms, each acknowledged 40 ms later, but for packet 0.
        for pn in 0..24u64 {
            if pn >= 3 {
                let ack = ack((pn - 3) as u32 + 1, &[(0, 0)], &mut buf);
                sent.on_ack(at(20 * pn), &ack, mad, &mut out);
            }
            sent.on_sent_without_frames(at(20 * pn), 100, AckWanted::Lazy, &mut out);
            // Lost at 61 ms; kept until 4 x 9/8 of the 40 ms round trip after it left (181
            // ms), long before 64 packets.
            if (5..=8).contains(&pn) {
                assert_eq!(sent.first_seq, 0, "declared lost, kept for a late ack");
                assert_eq!(sent.packets[0].state, PacketState::Lost);
            }
            if pn == 9 {
                assert!(sent.first_seq > 0, "packet 0 still remembered at 181 ms");
            }
        }
        assert!(sent.packets.len() <= 2, "{} records", sent.packets.len());
        // Its acknowledgement comes after all, with the last two packets': only theirs
        // count, and no loss turns out spurious.
        let in_flight = sent.bytes_in_flight();
        out.clear();
        sent.on_ack(at(480), &ack(23, &[(23, 0)], &mut buf), mad, &mut out);
        assert_eq!((out.packets_acked, sent.spurious_losses), (2, 0));
        assert_eq!(sent.bytes_in_flight(), in_flight - 200);
    }

    /// Once a packet that carried an acknowledgement is acknowledged, the peer is known to
    /// have what that acknowledgement named; a later, reordered acknowledgement of an older
    /// such packet never takes that back.
    #[test]
    fn an_acknowledged_packet_tells_what_acknowledgement_the_peer_saw() {
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        let t0 = Instant::from_millis(1);
        let mad = Duration::from_millis(5);
        // Packets 0 to 5 acknowledge up to 100 + their number; packet 3 carries none.
        for pn in 0..6u64 {
            sent.on_sent_without_frames(t0, 100, AckWanted::Lazy, &mut out);
            if pn != 3 {
                sent.set_ack_carried(100 + pn);
            }
        }
        assert_eq!(sent.peer_saw_ack(), None);
        let mut buf = [0u8; 32];
        sent.on_ack(t0, &ack(3, &[(0, 0)], &mut buf), mad, &mut out);
        assert_eq!(
            sent.peer_saw_ack(),
            None,
            "packet 3 carried no acknowledgement"
        );
        sent.on_ack(t0, &ack(4, &[(1, 0)], &mut buf), mad, &mut out);
        assert_eq!(sent.peer_saw_ack(), Some(104));
        // A late acknowledgement of packet 1 (reordered): still 104.
        sent.on_ack(t0, &ack(4, &[(1, 0), (3, 3)], &mut buf), mad, &mut out);
        assert_eq!(sent.peer_saw_ack(), Some(104));
        sent.on_ack(t0, &ack(5, &[(0, 0)], &mut buf), mad, &mut out);
        assert_eq!(sent.peer_saw_ack(), Some(105));
    }

    #[test]
    fn a_late_ack_undoes_a_loss_and_raises_the_packet_threshold() {
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        let t0 = Instant::from_millis(1);
        let mad = Duration::from_millis(5);
        for _ in 0..10 {
            sent.on_sent_without_frames(t0, 100, AckWanted::Prompt, &mut out);
        }
        // Packets 3..=9 acknowledged, 0..=2 not: with threshold 3 the first three are lost.
        let mut buf = [0u8; 64];
        sent.on_ack(
            t0 + Duration::from_millis(1),
            &ack(9, &[(6, 0)], &mut buf),
            mad,
            &mut out,
        );
        assert_eq!(out.packets_lost, 3);
        out.clear();
        let mut buf = [0u8; 64];
        sent.on_ack(
            t0 + Duration::from_millis(2),
            &ack(9, &[(9, 0)], &mut buf),
            mad,
            &mut out,
        );
        assert_eq!(sent.spurious_losses, 3);
        assert_eq!(
            sent.packet_threshold, 10,
            "tolerates reordering 9 packets deep"
        );
    }

    #[test]
    fn the_probe_timeout_declares_nothing_lost() {
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        let t0 = Instant::from_millis(1);
        let mad = Duration::from_millis(5);
        for _ in 0..5 {
            sent.on_sent_without_frames(t0, 1000, AckWanted::Prompt, &mut out);
        }
        let deadline = sent
            .loss_deadline(mad, Duration::from_secs(2))
            .expect("armed");
        assert!(sent.on_loss_timeout(deadline, mad, Duration::from_secs(2), &mut out));
        assert_eq!(out.packets_lost, 0);
        assert_eq!(sent.bytes_in_flight(), 5000);
        let next = sent
            .loss_deadline(mad, Duration::from_secs(2))
            .expect("armed");
        assert!(next - deadline > deadline - t0, "backed off");
    }

    #[test]
    fn lazy_packets_arm_no_probe_and_give_up_their_window_share_when_never_acknowledged() {
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        let t0 = Instant::from_millis(1);
        let mad = Duration::from_millis(5);
        let max_rto = Duration::from_secs(2);
        for _ in 0..4 {
            sent.on_sent_without_frames(t0, 1000, AckWanted::Lazy, &mut out);
        }
        assert_eq!(
            sent.bytes_in_flight(),
            4000,
            "they count against the window"
        );
        let deadline = sent.loss_deadline(mad, max_rto).expect("armed");
        assert!(
            deadline - t0 >= LAZY_ACK_DELAY,
            "waits for a lazy acknowledgement"
        );
        assert!(
            !sent.on_loss_timeout(deadline, mad, max_rto, &mut out),
            "no probe for packets nothing would be resent of"
        );
        assert_eq!(out.packets_lost, 0, "not counted as lost");
        assert_eq!(sent.bytes_in_flight(), 0, "the window is free again");
        assert_eq!(sent.loss_deadline(mad, max_rto), None);
        // A window's worth sent at full use and never acknowledged shrinks the window.
        let full = sent.congestion.window();
        let t1 = deadline + Duration::from_millis(1);
        while sent.can_send(1200) {
            sent.on_sent_without_frames(t1, 1200, AckWanted::Lazy, &mut out);
        }
        let expiry = sent.loss_deadline(mad, max_rto).expect("armed");
        assert!(!sent.on_loss_timeout(expiry, mad, max_rto, &mut out));
        assert_eq!(sent.bytes_in_flight(), 0);
        assert!(
            sent.congestion.window() < full,
            "{} of {full}",
            sent.congestion.window()
        );
        // A prompt packet among them arms the probe timeout as before.
        sent.on_sent_without_frames(deadline, 1000, AckWanted::Lazy, &mut out);
        sent.on_sent_without_frames(deadline, 1000, AckWanted::Prompt, &mut out);
        let pto = sent.loss_deadline(mad, max_rto).expect("armed");
        assert!(sent.on_loss_timeout(pto, mad, max_rto, &mut out));
    }

    #[test]
    fn a_max_rto_below_the_round_trip_caps_only_the_backoff() {
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        let t0 = Instant::from_millis(1);
        sent.on_sent_without_frames(t0, 100, AckWanted::Prompt, &mut out);
        let mad = Duration::from_millis(5);
        let tiny = Duration::from_micros(1);
        let deadline = sent.loss_deadline(mad, tiny).expect("armed");
        assert!(
            deadline >= t0 + Duration::from_millis(100),
            "{deadline:?}: not before the round trip"
        );
    }

    #[test]
    fn acks_beyond_what_was_sent_are_ignored_not_fatal() {
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        let t0 = Instant::from_millis(1);
        for _ in 0..3 {
            sent.on_sent_without_frames(t0, 100, AckWanted::Prompt, &mut out);
        }
        let mut buf = [0u8; 64];
        sent.on_ack(
            t0,
            &ack(500, &[(500, 0)], &mut buf),
            Duration::ZERO,
            &mut out,
        );
        assert_eq!(out.packets_acked, 3);
        assert_eq!(sent.bytes_in_flight(), 0);
    }
}
