//! Which packets have arrived: duplicate detection, the far-ahead bound, and the ranges an
//! acknowledgement reports.

use alloc::collections::VecDeque;

use crate::time::Instant;

/// Ranges of received packet numbers remembered at most. Past this the oldest range is
/// forgotten and everything below it counts as seen (a duplicate), so a peer that leaves
/// many holes costs a fixed amount of memory.
const MAX_RANGES: usize = 64;
/// How far below the newest packet an acknowledgement range still tells the sender anything:
/// it tracks what is in flight, and lost packets for 64 more numbers.
const RELEVANT: u64 = 256;
/// Packets remembered below the newest: older ones count as duplicates.
const HISTORY: u64 = 1 << 16;
/// A packet number more than this far beyond the newest received is dropped: no honest
/// sender gets that far ahead (its window holds at most `MAX_WINDOW_PACKETS` in flight and
/// acknowledgement-only packets go out only in answer to ours), and accepting one would let a
/// forged packet drag the receive window away from the real sender.
pub(crate) const MAX_AHEAD: u64 = 1 << 14;
/// Ranges of refused packet numbers remembered at most (see [`ReceivedPackets::refuse`]).
/// Past this the oldest is forgotten and everything below it counts as seen, as with
/// `MAX_RANGES`: a peer whose packets are refused in many separate runs costs a fixed amount.
const MAX_REFUSED_RANGES: usize = 16;
/// How far below the newest packet a refused run is remembered; past it, everything up to
/// the run counts as seen (no honest packet arrives this late) and its memory goes back.
const REFUSED_HISTORY: u64 = 4096;

/// What to do with an arriving packet number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not seen before and within bounds.
    New,
    /// Seen before, or too old to tell.
    Duplicate,
    /// Too far beyond the newest received.
    TooFarAhead,
    /// Taken apart before and refused (for room, or malformed): never acknowledged, and
    /// never taken again (an honest peer resends its frames under new numbers, so only a
    /// replay brings the same number back).
    Refused,
}

impl Verdict {
    /// Whether the packet's content is still missing here: not received, or refused (a
    /// repair may rebuild it once there is room).
    pub(crate) fn is_missing(self) -> bool {
        matches!(self, Verdict::New | Verdict::Refused)
    }
}

/// Received packet numbers as ranges, oldest first.
#[derive(Debug, Default)]
pub(crate) struct ReceivedPackets {
    /// Disjoint, non-adjacent, ascending `(low, high)` inclusive ranges.
    ranges: VecDeque<(u64, u64)>,
    /// Everything below counts as received.
    floor: u64,
    /// When the newest packet arrived (for the acknowledgement delay).
    largest_at: Instant,
    /// Refused packet numbers, as ranges like `ranges` but never acknowledged (a run may
    /// span numbers taken in between): made on the first refusal, given back once the last
    /// is [`REFUSED_HISTORY`] behind.
    refused: Option<alloc::boxed::Box<heapless::Deque<(u64, u64), MAX_REFUSED_RANGES>>>,
}

impl ReceivedPackets {
    /// Gives back room beyond the ranges held (at least one: an idle connection's packets
    /// extend the newest range in place).
    pub(crate) fn release_room(&mut self) {
        self.ranges.shrink_to(self.ranges.len().max(1));
    }

    /// The ends of the ranges (for `MemoryHint`).
    pub(crate) fn hints(&self, f: &mut impl crate::hints::Sink) {
        crate::hints::deque_ends(f, &self.ranges);
    }

    /// The newest packet number received, if any.
    pub(crate) fn largest(&self) -> Option<u64> {
        self.ranges.back().map(|r| r.1)
    }

    /// Extends a packet number's low 32 bits to 64, nearest to the newest received.
    pub(crate) fn extend(&self, wire: u32) -> Option<u64> {
        match self.largest() {
            None => Some(u64::from(wire)),
            Some(largest) => super::extend32(wire, largest),
        }
    }

    /// Whether `pn` may be accepted.
    pub(crate) fn verdict(&self, pn: u64) -> Verdict {
        let largest = self.largest();
        if pn > largest.map_or(0, |l| l) + MAX_AHEAD {
            return Verdict::TooFarAhead;
        }
        if pn < self.floor || largest.is_some_and(|l| l >= HISTORY && pn <= l - HISTORY) {
            return Verdict::Duplicate;
        }
        // Usually a check of the last range or two.
        for &(low, high) in self.ranges.iter().rev() {
            if pn > high {
                break;
            }
            if pn >= low {
                return Verdict::Duplicate;
            }
        }
        let mut refused = self.refused.iter().flat_map(|r| r.iter());
        if refused.any(|&(low, high)| (low..=high).contains(&pn)) {
            return Verdict::Refused;
        }
        Verdict::New
    }

    /// Remembers that `pn` (which `verdict` said is new) was refused: its replays are
    /// refused at once, before they can stand for the peer (refresh the idle timer, answer a
    /// reset notice, earn an address a challenge) or cost a parse. Not acknowledged: the
    /// peer resends the frames.
    pub(crate) fn refuse(&mut self, pn: u64) {
        // The newest run grows over numbers taken since (a stall that refuses every other
        // packet, the acknowledgement-only ones between taken, keeps one run).
        let taken_since = |high: u64| {
            high + 1 >= pn
                || self
                    .ranges
                    .iter()
                    .rev()
                    .any(|&(low, top)| low <= high + 1 && pn - 1 <= top)
        };
        let grows = self
            .refused
            .as_ref()
            .and_then(|r| r.back())
            .is_some_and(|&(low, high)| low <= pn && high < pn && taken_since(high));
        let refused = self.refused.get_or_insert_with(Default::default);
        if let Some(r) = refused.back_mut().filter(|_| grows) {
            r.1 = pn;
        } else if let Some(r) = refused
            .iter_mut()
            .find(|r| r.0 <= pn.saturating_add(1) && pn <= r.1.saturating_add(1))
        {
            *r = (r.0.min(pn), r.1.max(pn));
        } else {
            if refused.is_full() {
                // Forget the oldest run; everything up to it counts as seen.
                if let Some((_, high)) = refused.pop_front() {
                    self.floor = self.floor.max(high + 1);
                }
            }
            // Kept in arrival order: the oldest run is the one forgotten first.
            let _ = refused.push_back((pn, pn));
        }
    }

    /// Records `pn` (which `verdict` said is new). Returns whether it arrived out of order
    /// (it skipped over a missing packet, or fills a hole).
    pub(crate) fn record(&mut self, pn: u64, now: Instant) -> bool {
        // The common case: the next packet in order extends the newest range.
        if let Some(newest) = self.ranges.back_mut().filter(|r| r.1 + 1 == pn) {
            newest.1 = pn;
            self.largest_at = now;
            self.trim(pn);
            return false;
        }
        self.record_anywhere(pn, now)
    }

    /// `record` for any new number: into, between or after the ranges, merging neighbours.
    fn record_anywhere(&mut self, pn: u64, now: Instant) -> bool {
        let largest = self.largest();
        let out_of_order = largest.is_some_and(|l| pn != l + 1);
        if largest.is_none_or(|l| pn > l) {
            self.largest_at = now;
        }
        // Find the first range whose high is at or above pn - 1, scanning from the back.
        let mut i = self.ranges.len();
        while i > 0 && self.ranges[i - 1].1 + 1 >= pn {
            i -= 1;
        }
        // `i` is the first range that may touch pn; ranges before it end below pn - 1.
        match self.ranges.get(i).copied() {
            Some((low, high)) if low <= pn + 1 => {
                let (mut low, mut high) = (low.min(pn), high.max(pn));
                // Merge with the next range if they now touch.
                if let Some(&(next_low, next_high)) = self.ranges.get(i + 1) {
                    if next_low <= high + 1 {
                        high = high.max(next_high);
                        low = low.min(next_low);
                        self.ranges.remove(i + 1);
                    }
                }
                self.ranges[i] = (low, high);
            }
            _ => self.ranges.insert(i, (pn, pn)),
        }
        // Forget ranges too old to matter (or too many): everything below counts as seen.
        self.trim(self.largest().unwrap_or(0));
        out_of_order
    }

    /// Forgets the oldest ranges past `MAX_RANGES` or older than `HISTORY` below `largest`,
    /// and refused runs older than `REFUSED_HISTORY`.
    fn trim(&mut self, largest: u64) {
        let horizon = largest.saturating_sub(HISTORY);
        while self.ranges.len() > MAX_RANGES || self.ranges.front().is_some_and(|r| r.1 < horizon) {
            if let Some((_, high)) = self.ranges.pop_front() {
                self.floor = self.floor.max(high + 1);
            }
        }
        if let Some(refused) = &mut self.refused {
            let horizon = largest.saturating_sub(REFUSED_HISTORY);
            while let Some(&(_, high)) = refused.front().filter(|r| r.1 < horizon) {
                refused.pop_front();
                self.floor = self.floor.max(high + 1);
            }
            if refused.is_empty() {
                self.refused = None;
            }
        }
    }

    /// The ranges for an acknowledgement, newest first: the newest (it names the largest)
    /// and those that reach above `peer_knows`, the largest number an acknowledgement the
    /// peer got named. Older ones the peer has seen already, and resolved: repeating them
    /// in every packet would make a long lossy connection's packets carry dozens of ranges.
    pub(crate) fn ranges(&self, peer_knows: Option<u64>) -> impl Iterator<Item = (u64, u64)> + '_ {
        let newer = move |high: u64| peer_knows.is_none_or(|known| high > known);
        let mut newest = true;
        self.ranges
            .iter()
            .rev()
            .copied()
            .take_while(move |&(_, high)| core::mem::take(&mut newest) || newer(high))
    }

    /// Whether an acknowledgement of its newest `written` ranges leaves out one that still
    /// matters to the sender: one reaching within [`RELEVANT`] packets of the newest. Older
    /// ones the sender has resolved already (acknowledged, or declared lost and forgotten).
    pub(crate) fn omits_recent(&self, written: usize, peer_knows: Option<u64>) -> bool {
        let Some(largest) = self.largest() else {
            return false;
        };
        self.ranges(peer_knows)
            .skip(written)
            .any(|(_, high)| high + RELEVANT >= largest)
    }

    /// How long ago the newest packet arrived.
    pub(crate) fn ack_delay(&self, now: Instant) -> core::time::Duration {
        now - self.largest_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_refused_number_is_never_acknowledged_and_never_taken_again() {
        let mut r = ReceivedPackets::default();
        for pn in 0..5 {
            r.record(pn, Instant::from_micros(pn));
        }
        assert_eq!(r.verdict(5), Verdict::New);
        r.refuse(5);
        assert_eq!(r.verdict(5), Verdict::Refused);
        assert!(r.verdict(5).is_missing(), "a repair may still rebuild it");
        // The packets after it are taken as usual; 5 stays out of every acknowledgement.
        r.record(6, Instant::from_micros(6));
        assert_eq!(r.ranges(None).collect::<Vec<_>>(), [(6, 6), (0, 4)]);
        assert_eq!(r.verdict(5), Verdict::Refused);
        assert_eq!(r.verdict(6), Verdict::Duplicate);
    }

    #[test]
    fn refused_runs_stay_within_their_cap() {
        let mut r = ReceivedPackets::default();
        r.record(0, Instant::ZERO);
        // Separate runs (accepted packets between them are not adjacent to the last one).
        for run in 0..(3 * MAX_REFUSED_RANGES as u64) {
            r.refuse(10 * run + 1);
            r.refuse(10 * run + 2);
            r.record(10 * run + 5, Instant::from_micros(run));
        }
        let refused = r.refused.as_ref().expect("made");
        assert!(refused.len() <= MAX_REFUSED_RANGES);
        // The oldest runs count as seen now; the newest are still told apart.
        assert_eq!(r.verdict(1), Verdict::Duplicate);
        let last = 10 * (3 * MAX_REFUSED_RANGES as u64 - 1);
        assert_eq!(r.verdict(last + 2), Verdict::Refused);
        assert_eq!(r.verdict(last + 3), Verdict::New);
    }

    #[test]
    fn a_stall_that_refuses_every_other_packet_keeps_one_run() {
        let mut r = ReceivedPackets::default();
        r.record(0, Instant::ZERO);
        for pn in (1..100).step_by(2) {
            r.refuse(pn);
            r.record(pn + 1, Instant::from_micros(pn));
        }
        assert_eq!(r.refused.as_ref().map(|x| x.len()), Some(1));
        assert_eq!(r.refused.as_ref().and_then(|x| x.front()), Some(&(1, 99)));
        assert!((1..100)
            .step_by(2)
            .all(|pn| r.verdict(pn) == Verdict::Refused));
    }

    #[test]
    fn a_refused_run_does_not_grow_over_numbers_not_received() {
        let mut r = ReceivedPackets::default();
        r.record(0, Instant::ZERO);
        r.refuse(1);
        // 2 never arrives; 3 is taken, 4 refused: a new run, 2 still new.
        r.record(3, Instant::ZERO);
        r.refuse(4);
        assert_eq!(r.verdict(2), Verdict::New);
        assert_eq!(r.refused.as_ref().map(|x| x.len()), Some(2));
    }

    #[test]
    fn refused_numbers_are_given_back_once_far_behind() {
        let mut r = ReceivedPackets::default();
        r.record(0, Instant::ZERO);
        r.refuse(1);
        // A clean path from here on.
        for pn in 2..REFUSED_HISTORY + 10 {
            r.record(pn, Instant::from_micros(pn));
        }
        assert!(r.refused.is_none(), "the box goes back");
        assert_eq!(
            r.verdict(1),
            Verdict::Duplicate,
            "and its replay is still refused"
        );
    }

    proptest! {
        /// The in-order shortcut leaves exactly what the general path would.
        #[test]
        fn recording_in_order_takes_a_shortcut_to_the_same_ranges(
            steps in proptest::collection::vec((0u64..4, 0u64..80, any::<bool>()), 1..400)
        ) {
            let (mut fast, mut slow) = (ReceivedPackets::default(), ReceivedPackets::default());
            let mut next = 0u64;
            for (i, (kind, jump, far)) in steps.into_iter().enumerate() {
                // Mostly the next number; some gaps (far ones past the history), some late.
                let pn = match kind {
                    0 | 1 => next,
                    2 => next + jump + if far { HISTORY } else { 0 },
                    _ => next.saturating_sub(jump),
                };
                if fast.verdict(pn) != Verdict::New {
                    continue;
                }
                next = next.max(pn + 1);
                let now = Instant::from_micros(i as u64);
                prop_assert_eq!(fast.record(pn, now), slow.record_anywhere(pn, now));
                prop_assert_eq!(&fast.ranges, &slow.ranges);
                prop_assert_eq!((fast.floor, fast.largest_at), (slow.floor, slow.largest_at));
            }
        }
    }

    fn record_all(r: &mut ReceivedPackets, pns: &[u64]) {
        for &pn in pns {
            assert_eq!(r.verdict(pn), Verdict::New, "{pn}");
            r.record(pn, Instant::ZERO);
        }
    }

    #[test]
    fn ranges_merge_and_holes_are_reported_newest_first() {
        let mut r = ReceivedPackets::default();
        record_all(&mut r, &[0, 1, 2, 5, 6, 9, 4, 3]);
        assert_eq!(r.ranges(None).collect::<Vec<_>>(), vec![(9, 9), (0, 6)]);
        for pn in [0, 3, 6, 9] {
            assert_eq!(r.verdict(pn), Verdict::Duplicate);
        }
        assert_eq!(r.verdict(7), Verdict::New);
        assert_eq!(r.verdict(8), Verdict::New);
        r.record(8, Instant::ZERO);
        r.record(7, Instant::ZERO);
        assert_eq!(r.ranges(None).collect::<Vec<_>>(), vec![(0, 9)]);
    }

    #[test]
    fn ranges_the_peer_knows_are_left_out_but_the_newest_is_always_named() {
        let mut r = ReceivedPackets::default();
        record_all(&mut r, &[0, 1, 3, 4, 6, 8, 9]);
        let all = [(8, 9), (6, 6), (3, 4), (0, 1)];
        assert_eq!(r.ranges(None).collect::<Vec<_>>(), all);
        // The peer got an acknowledgement naming up to 4: (3, 4) and (0, 1) are old news.
        assert_eq!(r.ranges(Some(4)).collect::<Vec<_>>(), all[..2]);
        // A range reaching above what the peer knows is named whole.
        assert_eq!(r.ranges(Some(3)).collect::<Vec<_>>(), all[..3]);
        // Nothing new since: the newest range still names the largest.
        assert_eq!(r.ranges(Some(9)).collect::<Vec<_>>(), all[..1]);
        // Left-out ranges are not recent ones a packet failed to fit.
        assert!(r.omits_recent(1, None));
        assert!(!r.omits_recent(1, Some(9)));
    }

    #[test]
    fn far_ahead_numbers_are_refused_and_old_ones_are_duplicates() {
        let mut r = ReceivedPackets::default();
        assert_eq!(r.verdict(MAX_AHEAD + 1), Verdict::TooFarAhead);
        record_all(&mut r, &[0]);
        assert_eq!(r.verdict(MAX_AHEAD), Verdict::New);
        assert_eq!(r.verdict(MAX_AHEAD + 1), Verdict::TooFarAhead);
        // A replay of packet 0 after the 16- and 32-bit numbers wrapped: still a duplicate.
        let mut pn = 1;
        while pn < 3 * HISTORY {
            r.record(pn, Instant::ZERO);
            pn += 1;
        }
        let replay = r.extend(0).expect("extends");
        assert_eq!(r.verdict(replay), Verdict::Duplicate);
    }

    #[test]
    fn many_holes_cost_bounded_memory() {
        let mut r = ReceivedPackets::default();
        for pn in (0..10_000).step_by(2) {
            r.record(pn, Instant::ZERO);
        }
        assert!(r.ranges.len() <= MAX_RANGES);
        assert_eq!(r.verdict(1), Verdict::Duplicate, "below the floor");
        assert_eq!(r.verdict(9_999), Verdict::New);
    }
}
