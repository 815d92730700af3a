//! Packet-level reliability: sequence numbers, acknowledgements, RTT, loss detection,
//! congestion control and the send-rate limiter.
//!
//! Every `Data` packet carries a 16-bit packet sequence number and acknowledges the newest
//! packet received plus the 32 before it as a bitfield. Sequence numbers are extended to 64
//! bits on arrival (serial-number arithmetic relative to the newest one seen), so they
//! survive any number of wraparounds.
//!
//! Loss is detected the way QUIC does it: a packet is lost when one sent at least
//! [`PACKET_THRESHOLD`] packets later is acknowledged, or when a later packet is acknowledged
//! and 9/8 of an RTT has passed since it was sent; a retransmission timeout with exponential
//! backoff (capped) covers the tail when nothing at all comes back.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use crate::time::{micros, Instant};

/// A packet is lost when a packet this many numbers later has been acknowledged (at first;
/// the threshold grows when a late acknowledgement shows a loss was reordering).
pub(crate) const PACKET_THRESHOLD: u64 = 3;
/// The largest the packet threshold grows to.
const MAX_PACKET_THRESHOLD: u64 = 16;
/// Packets declared lost are remembered this many packet numbers back, to notice late acks.
const LATE_ACK_WINDOW: u64 = 64;
/// Packets remembered for duplicate detection on receipt.
const RECEIVE_HISTORY: u64 = 256;
/// Sent packets tracked at most; older ones are given up as lost.
const MAX_TRACKED_PACKETS: usize = 4096;
/// The congestion window never exceeds this many full packets.
pub(crate) const MAX_WINDOW_PACKETS: u64 = 1024;
/// Frame-key vectors kept for reuse per connection (enough for a window's worth of packets
/// in flight without holding much memory on an idle connection).
const KEY_VEC_POOL: usize = 16;
/// Longest backoff exponent for the retransmission timeout.
const MAX_BACKOFF: u32 = 6;

/// Extends a 16-bit serial number to 64 bits: the value nearest to `reference` whose low 16
/// bits are `wire`. Returns `None` if that would be negative.
pub(crate) fn extend_seq(wire: u16, reference: u64) -> Option<u64> {
    let delta = wire.wrapping_sub(reference as u16) as i16;
    reference.checked_add_signed(i64::from(delta))
}

/// Which packets have arrived: duplicate detection and the acknowledgement we send back.
#[derive(Debug, Default)]
pub(crate) struct ReceivedPackets {
    /// Newest packet received (extended), if any.
    largest: Option<u64>,
    /// Bit `i`: packet `largest - i` was received (bit 0 is `largest` itself).
    history: [u64; (RECEIVE_HISTORY / 64) as usize],
}

/// Outcome of recording a received packet number.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// First time seen; `out_of_order` when it skipped past a missing packet or is late.
    New { out_of_order: bool },
    /// Seen before, or too old to tell.
    Duplicate,
}

impl ReceivedPackets {
    fn bit(&self, distance: u64) -> bool {
        distance < RECEIVE_HISTORY
            && self.history[(distance / 64) as usize] & (1 << (distance % 64)) != 0
    }

    fn set_bit(&mut self, distance: u64) {
        self.history[(distance / 64) as usize] |= 1 << (distance % 64);
    }

    /// Extends a received 16-bit number; `None` if it cannot be placed.
    pub(crate) fn extend(&self, wire: u16) -> Option<u64> {
        match self.largest {
            None => Some(u64::from(wire)),
            Some(largest) => extend_seq(wire, largest),
        }
    }

    /// The newest packet number received, if any.
    pub(crate) fn largest(&self) -> Option<u64> {
        self.largest
    }

    /// Whether `seq` would be a duplicate, without recording it.
    pub(crate) fn is_duplicate(&self, seq: u64) -> bool {
        match self.largest {
            None => false,
            Some(largest) if seq > largest => false,
            Some(largest) => {
                let distance = largest - seq;
                distance >= RECEIVE_HISTORY || self.bit(distance)
            }
        }
    }

    /// Records `seq` as received.
    pub(crate) fn record(&mut self, seq: u64) -> Arrival {
        if self.is_duplicate(seq) {
            return Arrival::Duplicate;
        }
        match self.largest {
            Some(largest) if seq <= largest => {
                self.set_bit(largest - seq);
                Arrival::New { out_of_order: true }
            }
            previous => {
                let shift = previous.map_or(RECEIVE_HISTORY, |l| seq - l);
                self.shift_history(shift);
                self.largest = Some(seq);
                self.set_bit(0);
                let skipped = previous.is_some_and(|l| seq > l + 1);
                Arrival::New {
                    out_of_order: skipped,
                }
            }
        }
    }

    /// Shifts the history towards older packets by `n` positions.
    fn shift_history(&mut self, n: u64) {
        if n >= RECEIVE_HISTORY {
            self.history = Default::default();
            return;
        }
        let words = (n / 64) as usize;
        let bits = (n % 64) as u32;
        let len = self.history.len();
        for i in (0..len).rev() {
            let src = i.checked_sub(words);
            let mut v = src.map_or(0, |s| self.history[s] << bits);
            if bits > 0 {
                if let Some(lower) = src.and_then(|s| s.checked_sub(1)) {
                    v |= self.history[lower] >> (64 - bits);
                }
            }
            self.history[i] = v;
        }
    }

    /// The acknowledgement to send: newest received and a bitfield of the 32 before it.
    /// Before anything arrived it is `(0xffff, 0)`, which acknowledges nothing the peer sent.
    pub(crate) fn ack_fields(&self) -> (u16, u32) {
        match self.largest {
            None => (u16::MAX, 0),
            Some(largest) => (
                (largest as u16),
                ((self.history[0] >> 1) & 0xffff_ffff) as u32,
            ),
        }
    }
}

/// Smoothed RTT and its variation (RFC 6298).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RttEstimator {
    smoothed: Option<Duration>,
    variance: Duration,
    latest: Duration,
    initial: Duration,
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration) -> Self {
        RttEstimator {
            smoothed: None,
            variance: initial / 2,
            latest: initial,
            initial,
        }
    }

    pub(crate) fn update(&mut self, sample: Duration) {
        self.latest = sample;
        match self.smoothed {
            None => {
                self.smoothed = Some(sample);
                self.variance = sample / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(sample);
                self.variance = (self.variance * 3 + diff) / 4;
                self.smoothed = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    pub(crate) fn smoothed(&self) -> Duration {
        self.smoothed.unwrap_or(self.initial)
    }

    pub(crate) fn measured(&self) -> Option<Duration> {
        self.smoothed
    }

    pub(crate) fn variance(&self) -> Duration {
        self.variance
    }

    /// Retransmission timeout before backoff.
    pub(crate) fn rto(&self, max_ack_delay: Duration) -> Duration {
        self.smoothed() + (self.variance * 4).max(Duration::from_millis(1)) + max_ack_delay
    }

    /// Time after which a packet older than an acknowledged one counts as lost.
    pub(crate) fn loss_delay(&self) -> Duration {
        let base = self.smoothed().max(self.latest);
        (base * 9 / 8).max(Duration::from_millis(1))
    }
}

/// Congestion control: slow start, then additive increase; halve on loss, once per round
/// trip (NewReno-style AIMD on a byte window), never below the initial window of 32 MTU.
///
/// The floor is deliberately high: game traffic loses packets at random far more often than
/// it congests a path, and a 60 Hz sender needs its few kilobytes per round trip whatever the
/// loss. What the window stops is a bulk sender growing without bound into a lossy link.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Congestion {
    window: u64,
    ssthresh: u64,
    min_window: u64,
    max_window: u64,
    /// Losses of packets sent before this instant belong to a congestion event already
    /// responded to.
    recovery_start: Option<Instant>,
}

impl Congestion {
    pub(crate) fn new(mtu: usize) -> Self {
        let mtu = mtu as u64;
        Congestion {
            window: 32 * mtu,
            ssthresh: u64::MAX,
            min_window: 32 * mtu,
            max_window: MAX_WINDOW_PACKETS * mtu,
            recovery_start: None,
        }
    }

    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    pub(crate) fn on_ack(&mut self, bytes: u64, sent_at: Instant, mtu: usize) {
        if self.recovery_start.is_some_and(|start| sent_at <= start) {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
        } else {
            self.window += (mtu as u64 * bytes / self.window).max(1);
        }
        self.window = self.window.min(self.max_window);
    }

    pub(crate) fn on_loss(&mut self, sent_at: Instant, now: Instant) {
        if self.recovery_start.is_some_and(|start| sent_at <= start) {
            return;
        }
        self.recovery_start = Some(now);
        self.window = (self.window / 2).max(self.min_window);
        self.ssthresh = self.window;
    }
}

/// Token bucket limiting the send rate (bytes per second), with a burst of 1/20 s of tokens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    rate: u64,
    capacity: u64,
    tokens: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub(crate) fn new(rate: u64, mtu: usize) -> Self {
        let capacity = (rate / 20).max(2 * mtu as u64);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let elapsed = micros(now - last);
            let add = u64::try_from(u128::from(elapsed) * u128::from(self.rate) / 1_000_000)
                .unwrap_or(u64::MAX);
            if add > 0 {
                self.tokens = self.tokens.saturating_add(add).min(self.capacity);
                self.last = Some(now);
            }
        } else {
            self.last = Some(now);
        }
    }

    /// Whether `bytes` may be sent now.
    pub(crate) fn allows(&mut self, now: Instant, bytes: usize) -> bool {
        self.refill(now);
        self.tokens >= bytes as u64
    }

    pub(crate) fn consume(&mut self, bytes: usize) {
        self.tokens = self.tokens.saturating_sub(bytes as u64);
    }

    /// When `bytes` tokens will be there.
    pub(crate) fn ready_at(&self, now: Instant, bytes: usize) -> Instant {
        let missing = (bytes as u64).saturating_sub(self.tokens);
        let wait = missing.saturating_mul(1_000_000).div_ceil(self.rate);
        now + Duration::from_micros(wait.max(1))
    }
}

/// A key into the sent-frame store (a generational slab index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FrameKey {
    index: u32,
    generation: u32,
}

/// A slab whose keys go stale when their slot is reused, so a key held in a packet record
/// or retransmission queue after its frame was acknowledged finds nothing.
#[derive(Debug)]
pub(crate) struct FrameStore<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for FrameStore<T> {
    fn default() -> Self {
        FrameStore {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> FrameStore<T> {
    pub(crate) fn insert(&mut self, value: T) -> FrameKey {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.1 = Some(value);
            FrameKey {
                index,
                generation: slot.0,
            }
        } else {
            self.slots.push((0, Some(value)));
            FrameKey {
                index: (self.slots.len() - 1) as u32,
                generation: 0,
            }
        }
    }

    pub(crate) fn get_mut(&mut self, key: FrameKey) -> Option<&mut T> {
        match self.slots.get_mut(key.index as usize) {
            Some((generation, value)) if *generation == key.generation => value.as_mut(),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: FrameKey) -> Option<T> {
        match self.slots.get_mut(key.index as usize) {
            Some((generation, value)) if *generation == key.generation && value.is_some() => {
                *generation = generation.wrapping_add(1);
                self.free.push(key.index);
                self.len -= 1;
                value.take()
            }
            _ => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// State of a sent packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PacketState {
    /// Awaiting acknowledgement.
    InFlight,
    /// Acknowledged, or never tracked (acknowledgement-only).
    Done,
    /// Declared lost; kept a while in case a late acknowledgement shows it was not.
    Lost,
}

/// A packet sent and not yet resolved.
#[derive(Debug)]
pub(crate) struct SentPacket {
    pub(crate) sent_at: Instant,
    pub(crate) size: u16,
    pub(crate) state: PacketState,
    /// Reliable frames it carried.
    pub(crate) frames: Vec<FrameKey>,
}

/// What an acknowledgement resolved, handed back to the connection.
#[derive(Debug, Default)]
pub(crate) struct AckOutcome {
    /// Frames in newly acknowledged packets.
    pub(crate) acked_frames: Vec<FrameKey>,
    /// Frames in packets declared lost.
    pub(crate) lost_frames: Vec<FrameKey>,
    pub(crate) packets_lost: u64,
}

impl AckOutcome {
    pub(crate) fn clear(&mut self) {
        self.acked_frames.clear();
        self.lost_frames.clear();
        self.packets_lost = 0;
    }
}

/// The sender's side: packet numbers, what is in flight, RTT, loss, congestion.
#[derive(Debug)]
pub(crate) struct SentPackets {
    /// Extended number of `packets[0]`.
    first_seq: u64,
    packets: VecDeque<SentPacket>,
    next_seq: u64,
    largest_acked: Option<u64>,
    bytes_in_flight: u64,
    pub(crate) rtt: RttEstimator,
    pub(crate) congestion: Congestion,
    backoff: u32,
    /// Number of the oldest packet still in flight (or `next_seq` if none is).
    oldest_in_flight: u64,
    /// Current packet reordering threshold (see [`PACKET_THRESHOLD`]).
    packet_threshold: u64,
    /// Packets declared lost and then acknowledged.
    pub(crate) spurious_losses: u64,
    /// Recycled frame-key vectors, so recording a packet does not allocate once warm.
    pool: Vec<Vec<FrameKey>>,
}

impl SentPackets {
    pub(crate) fn new(initial_rtt: Duration, mtu: usize) -> Self {
        SentPackets {
            first_seq: 0,
            packets: VecDeque::new(),
            next_seq: 0,
            largest_acked: None,
            bytes_in_flight: 0,
            rtt: RttEstimator::new(initial_rtt),
            congestion: Congestion::new(mtu),
            backoff: 0,
            oldest_in_flight: 0,
            packet_threshold: PACKET_THRESHOLD,
            spurious_losses: 0,
            pool: Vec::new(),
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

    /// A cleared vector to collect a packet's frame keys in.
    pub(crate) fn take_key_vec(&mut self) -> Vec<FrameKey> {
        self.pool.pop().unwrap_or_default()
    }

    /// Returns an unused key vector to the pool.
    pub(crate) fn recycle_key_vec(&mut self, mut keys: Vec<FrameKey>) {
        keys.clear();
        if self.pool.len() < KEY_VEC_POOL {
            self.pool.push(keys);
        }
    }

    /// Records packet `next_seq()` as sent. `ack_eliciting` packets are tracked for loss and
    /// count against the congestion window.
    pub(crate) fn on_sent(
        &mut self,
        now: Instant,
        size: usize,
        ack_eliciting: bool,
        frames: Vec<FrameKey>,
        outcome: &mut AckOutcome,
    ) {
        if self.packets.is_empty() {
            self.first_seq = self.next_seq;
        }
        self.next_seq += 1;
        let state = if ack_eliciting {
            self.bytes_in_flight += size as u64;
            PacketState::InFlight
        } else {
            PacketState::Done
        };
        self.packets.push_back(SentPacket {
            sent_at: now,
            size: size as u16,
            state,
            frames,
        });
        if self.packets.len() > MAX_TRACKED_PACKETS {
            // Nothing has been acknowledged for thousands of packets: give the oldest up.
            if let Some(p) = self.packets.front_mut() {
                if p.state == PacketState::InFlight {
                    p.state = PacketState::Lost;
                    self.bytes_in_flight -= u64::from(p.size);
                    outcome.lost_frames.extend_from_slice(&p.frames);
                    outcome.packets_lost += 1;
                }
            }
        }
        self.retire();
    }

    /// Pops resolved packets off the front, recycling their key vectors, and moves the
    /// oldest-in-flight cursor past resolved ones (so loss detection never rescans them).
    fn retire(&mut self) {
        self.oldest_in_flight = self.oldest_in_flight.max(self.first_seq);
        while let Some(i) = self.index_of(self.oldest_in_flight) {
            if self.packets[i].state == PacketState::InFlight {
                break;
            }
            self.oldest_in_flight += 1;
        }
        while let Some(front) = self.packets.front() {
            let late_ack_possible = front.state == PacketState::Lost
                && self.next_seq - self.first_seq <= LATE_ACK_WINDOW;
            let keep = (front.state == PacketState::InFlight || late_ack_possible)
                && self.packets.len() <= MAX_TRACKED_PACKETS;
            if keep {
                break;
            }
            if let Some(mut p) = self.packets.pop_front() {
                p.frames.clear();
                if self.pool.len() < KEY_VEC_POOL {
                    self.pool.push(p.frames);
                }
                self.first_seq += 1;
            }
        }
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        let idx = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        (idx < self.packets.len()).then_some(idx)
    }

    /// Processes an acknowledgement. Returns false if it acknowledges packets never sent
    /// (a protocol violation).
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        ack: u16,
        ack_bits: u32,
        mtu: usize,
        outcome: &mut AckOutcome,
    ) -> bool {
        if self.next_seq == 0 {
            return ack == u16::MAX && ack_bits == 0;
        }
        let largest_sent = self.next_seq - 1;
        let Some(largest) = extend_seq(ack, largest_sent) else {
            return true; // acknowledges nothing we know of (the "nothing received" value)
        };
        if largest > largest_sent {
            return false;
        }
        let mut newest_acked_sent_at = None;
        // Bit i: packet `largest - i` acknowledged. Packets older than the oldest one still
        // tracked are resolved already, so their bits are masked off before the walk.
        let mut acked = (u64::from(ack_bits) << 1) | 1;
        let tracked = largest.saturating_sub(self.first_seq).saturating_add(1);
        if tracked < 64 {
            acked &= (1 << tracked) - 1;
        }
        while acked != 0 {
            let i = u64::from(acked.trailing_zeros());
            acked &= acked - 1;
            let seq = largest - i;
            let Some(idx) = self.index_of(seq) else {
                continue;
            };
            let p = &mut self.packets[idx];
            match p.state {
                PacketState::Done => continue,
                PacketState::Lost => {
                    // It arrived after all: reordering fooled the packet threshold. Its frames
                    // are acknowledged (a retransmission not yet sent is skipped), and the
                    // threshold grows to tolerate reordering this deep.
                    p.state = PacketState::Done;
                    outcome.acked_frames.extend_from_slice(&p.frames);
                    self.spurious_losses += 1;
                    let depth = (largest - seq + 1).min(MAX_PACKET_THRESHOLD);
                    self.packet_threshold = self.packet_threshold.max(depth);
                    continue;
                }
                PacketState::InFlight => {}
            }
            p.state = PacketState::Done;
            self.bytes_in_flight -= u64::from(p.size);
            self.congestion.on_ack(u64::from(p.size), p.sent_at, mtu);
            outcome.acked_frames.extend_from_slice(&p.frames);
            if i == 0 {
                newest_acked_sent_at = Some(p.sent_at);
            }
        }
        if self.largest_acked.is_none_or(|l| largest > l) {
            self.largest_acked = Some(largest);
            if let Some(sent_at) = newest_acked_sent_at {
                self.rtt.update(now - sent_at);
            }
        }
        if newest_acked_sent_at.is_some() || !outcome.acked_frames.is_empty() {
            self.backoff = 0;
        }
        self.detect_lost(now, outcome);
        self.retire();
        true
    }

    /// Declares lost the in-flight packets older than the newest acknowledged one that pass
    /// the packet or time threshold.
    fn detect_lost(&mut self, now: Instant, outcome: &mut AckOutcome) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        let loss_delay = self.rtt.loss_delay();
        for seq in self.oldest_in_flight..largest {
            let Some(i) = self.index_of(seq) else { break };
            let p = &mut self.packets[i];
            if p.state != PacketState::InFlight {
                continue;
            }
            if largest - seq >= self.packet_threshold || p.sent_at + loss_delay <= now {
                p.state = PacketState::Lost;
                self.bytes_in_flight -= u64::from(p.size);
                outcome.lost_frames.extend_from_slice(&p.frames);
                outcome.packets_lost += 1;
                self.congestion.on_loss(p.sent_at, now);
            }
        }
    }

    /// When loss detection next needs to run: the time threshold of an unacknowledged packet
    /// older than the newest acknowledged one, or the retransmission timeout.
    pub(crate) fn loss_deadline(
        &self,
        max_ack_delay: Duration,
        max_rto: Duration,
    ) -> Option<Instant> {
        let seq = self.oldest_in_flight;
        let p = &self.packets[self.index_of(seq)?];
        if self.largest_acked.is_some_and(|l| seq < l) {
            return Some(p.sent_at + self.rtt.loss_delay());
        }
        Some(p.sent_at + self.rto(max_ack_delay, max_rto))
    }

    fn rto(&self, max_ack_delay: Duration, max_rto: Duration) -> Duration {
        (self.rtt.rto(max_ack_delay) * (1 << self.backoff)).min(max_rto)
    }

    /// Runs loss detection at a deadline. Returns true if a retransmission timeout fired.
    pub(crate) fn on_loss_timeout(
        &mut self,
        now: Instant,
        max_ack_delay: Duration,
        max_rto: Duration,
        outcome: &mut AckOutcome,
    ) -> bool {
        let before = outcome.packets_lost;
        self.detect_lost(now, outcome);
        let mut fired = false;
        if outcome.packets_lost == before {
            // Nothing acknowledged past them: packets older than the RTO are lost.
            let rto = self.rto(max_ack_delay, max_rto);
            let from = self
                .index_of(self.oldest_in_flight)
                .unwrap_or(self.packets.len());
            for p in self.packets.range_mut(from..) {
                if p.sent_at + rto > now {
                    break; // sent in order: the rest are younger
                }
                if p.state == PacketState::InFlight {
                    p.state = PacketState::Lost;
                    self.bytes_in_flight -= u64::from(p.size);
                    outcome.lost_frames.extend_from_slice(&p.frames);
                    outcome.packets_lost += 1;
                    fired = true;
                }
            }
            if fired {
                self.congestion.on_loss(now, now);
                self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
            }
        }
        self.retire();
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_seq_survives_wraparound() {
        assert_eq!(extend_seq(2, 65_534), Some(65_538));
        assert_eq!(extend_seq(65_534, 65_538), Some(65_534));
        assert_eq!(extend_seq(0xffff, 0), None);
        assert_eq!(extend_seq(5, 3 * 65_536 + 10), Some(3 * 65_536 + 5));
    }

    #[test]
    fn received_packets_detect_duplicates_and_build_ack_bits() {
        let mut r = ReceivedPackets::default();
        assert_eq!(r.ack_fields(), (u16::MAX, 0));
        assert_eq!(
            r.record(0),
            Arrival::New {
                out_of_order: false
            }
        );
        assert_eq!(r.record(2), Arrival::New { out_of_order: true });
        assert_eq!(r.record(2), Arrival::Duplicate);
        assert_eq!(r.ack_fields(), (2, 0b10));
        assert_eq!(r.record(1), Arrival::New { out_of_order: true });
        assert_eq!(r.ack_fields(), (2, 0b11));
        assert_eq!(r.record(300), Arrival::New { out_of_order: true });
        assert_eq!(
            r.record(2),
            Arrival::Duplicate,
            "too old to tell counts as duplicate"
        );
        assert_eq!(r.record(299), Arrival::New { out_of_order: true });
        assert_eq!(r.ack_fields(), (300, 0b1));
    }

    #[test]
    fn history_shift_crosses_word_boundaries() {
        let mut r = ReceivedPackets::default();
        for seq in [0, 63, 64, 65, 130] {
            r.record(seq);
        }
        for seq in [0, 63, 64, 65, 130] {
            assert!(r.is_duplicate(seq), "{seq}");
        }
        for seq in [1, 62, 66, 129] {
            assert!(!r.is_duplicate(seq), "{seq}");
        }
    }

    #[test]
    fn a_late_ack_undoes_a_loss_and_raises_the_packet_threshold() {
        let mut sent = SentPackets::new(Duration::from_millis(100), 1200);
        let mut out = AckOutcome::default();
        let t0 = Instant::from_millis(1);
        for _ in 0..10 {
            sent.on_sent(t0, 100, true, Vec::new(), &mut out);
        }
        // Packets 3..=9 acknowledged, 0..=2 not: with threshold 3 the first three are lost.
        let bits = 0b11_1111; // 8, 7, 6, 5, 4, 3
        assert!(sent.on_ack(t0 + Duration::from_millis(1), 9, bits, 1200, &mut out));
        assert_eq!(out.packets_lost, 3);
        // Then they turn out to have arrived: reordered, not lost.
        out.clear();
        let all = (1 << 9) - 1; // 8 down to 0
        assert!(sent.on_ack(t0 + Duration::from_millis(2), 9, all, 1200, &mut out));
        assert_eq!(sent.spurious_losses, 3);
        assert_eq!(
            sent.packet_threshold, 10,
            "tolerates reordering 9 packets deep"
        );
    }

    #[test]
    fn frame_store_keys_go_stale_after_removal() {
        let mut s = FrameStore::default();
        let a = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let b = s.insert(2);
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get_mut(b), Some(&mut 2));
        assert_eq!(s.len(), 1);
    }
}
