//! The endpoint's wake-ups: a hierarchical timer wheel, so scheduling and firing a
//! connection's wake-up costs the same with ten connections as with ten thousand.
//!
//! Level `k` has 64 slots of 64^k µs each: level 0 slots are single microseconds, level 6
//! spans 2^42 µs (about 50 days). An entry sits at the lowest level whose slot cannot also
//! hold the wheel's current time, so everything at level `k` comes before everything at
//! level `k + 1`, and within a level the slots run in time order from the current one. When
//! time reaches a slot of level `k > 0`, its entries move down to finer levels, each by its
//! own deadline; an entry moves at most once per level.
//!
//! Each slot keeps its earliest deadline, so [`TimerWheel::next_deadline`] is exact: a
//! driver is never woken early for a coarse slot (but once, for a slot of more than
//! [`RESCAN_MAX`] entries whose earliest left: see `Level::at_earliest`). A wheel holds one
//! entry per connection ([`TimerWheel::set`]), and knows where each is, so an entry whose
//! deadline moved (an ack stopped the ack timer, pushed the loss timer back) is moved with
//! it: a driver is never woken for a deadline that went away. (A server's wheel once kept
//! such entries until they came due: at 10,000 clients three of every four of its wake-ups
//! found nothing to do.) In a heap, a stale entry is dealt with as soon as it is the front
//! ([`Wakeups::front`]), and the endpoint rebuilds its wake-ups when stale entries pile up.
//!
//! A wheel's slots take about 14 KiB; an endpoint with a few connections (every client)
//! keeps its wake-ups in a binary heap instead. Once the heap holds [`WHEEL_FROM`] entries
//! the endpoint rebuilds them from its connections' deadlines, as a wheel if 48 or more
//! connections have one ([`Wakeups::rebuild`]), and a wheel goes back to a heap below that.

use alloc::boxed::Box;
use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Reverse;

/// Entries from which a heap of wake-ups is rebuilt, as a wheel if the connections warrant it.
const WHEEL_FROM: usize = 256;
/// A heap of wake-ups is rebuilt when it holds more than `STALE_PER_LIVE × live +
/// STALE_SLACK`; a wheel, when that falls below `WHEEL_FROM`.
const STALE_PER_LIVE: usize = 4;
const STALE_SLACK: usize = 64;

/// Bits of a deadline each level covers.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 7;
/// Entries a slot is scanned through for its new earliest deadline (see `Level::at_earliest`).
const RESCAN_MAX: usize = 32;
/// Entries' room a slot keeps once emptied.
const KEEP_SLOT_ROOM: usize = 16;
/// The span of the top level's slots (2^42 µs): entries in a later span wait aside.
#[cfg(test)]
const SPAN: u64 = 1 << (SLOT_BITS as usize * LEVELS);

/// A scheduled wake-up: when, and the connection slot and generation it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Wakeup {
    pub(crate) at: u64,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

#[derive(Debug)]
struct Level {
    /// Bit `s` set: slot `s` holds entries.
    occupied: u64,
    slots: [Vec<Wakeup>; SLOTS],
    /// Each slot's earliest deadline (`u64::MAX` when empty).
    earliest: [u64; SLOTS],
    /// How many of each slot's entries are at its earliest deadline: a slot is scanned for
    /// its new earliest only when the last of them leaves, and only if it holds at most
    /// [`RESCAN_MAX`] entries. (Thousands of clients polled on one tick share deadlines: a
    /// scan each time one of them moved cost a fifth of a server's time per message.) A
    /// fuller slot whose earliest left keeps it as a bound below its entries, with a count
    /// of 0, until an entry at or before it comes, the slot shrinks to `RESCAN_MAX`, or its
    /// time comes and its entries are sorted into finer slots: entries leaving in deadline
    /// order (clients heard from in turn push their keepalives back in turn) would otherwise
    /// rescan the slot at every move.
    at_earliest: [u32; SLOTS],
}

impl Default for Level {
    fn default() -> Self {
        Level {
            occupied: 0,
            slots: core::array::from_fn(|_| Vec::new()),
            earliest: [u64::MAX; SLOTS],
            at_earliest: [0; SLOTS],
        }
    }
}

/// Wake-ups by deadline (µs); see the module's docs.
#[derive(Debug)]
pub(crate) struct TimerWheel {
    /// The wheel's current time: every entry in a slot is later than it.
    elapsed: u64,
    levels: Vec<Level>,
    /// Entries found due, waiting to be popped.
    due: Vec<Wakeup>,
    /// Entries beyond the top level's current span (50 days and more ahead).
    far: Vec<Wakeup>,
    len: usize,
    /// Where each connection slot's entry is, by `Wakeup::index`, so that [`set`](Self::set)
    /// can take it out when its deadline moves: with one entry per connection, none is ever
    /// stale and [`next_deadline`](Self::next_deadline) is a deadline that is due.
    places: Vec<Place>,
}

/// Where an entry is held (see `TimerWheel::places`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Absent,
    Due(u32),
    Far(u32),
    Slot { level: u8, slot: u8, position: u32 },
}

impl TimerWheel {
    /// An empty wheel whose time is `now`.
    pub(crate) fn starting_at(now: u64) -> Self {
        TimerWheel {
            elapsed: now,
            levels: (0..LEVELS).map(|_| Level::default()).collect(),
            due: Vec::new(),
            far: Vec::new(),
            len: 0,
            places: Vec::new(),
        }
    }

    /// Makes `w` the one entry of its connection slot (`w.index`), taking out the one it
    /// held, if any.
    pub(crate) fn set(&mut self, w: Wakeup) {
        self.remove(w.index);
        self.insert(w);
    }

    /// Takes out the entry of connection slot `index`, if it holds one.
    pub(crate) fn remove(&mut self, index: u32) {
        let place = self.place_of(index);
        let removed = match place {
            Place::Absent => return,
            Place::Due(i) => Self::take_at(&mut self.due, i, &mut self.places, Place::Due),
            Place::Far(i) => Self::take_at(&mut self.far, i, &mut self.places, Place::Far),
            Place::Slot {
                level,
                slot,
                position,
            } => {
                let Some(l) = self.levels.get_mut(usize::from(level)) else {
                    return;
                };
                let s = usize::from(slot);
                let removed = Self::take_at(&mut l.slots[s], position, &mut self.places, |p| {
                    Place::Slot {
                        level,
                        slot,
                        position: p,
                    }
                });
                if l.slots[s].is_empty() {
                    l.occupied &= !(1 << s);
                    l.earliest[s] = u64::MAX;
                    l.at_earliest[s] = 0;
                    // As when a slot is drained: a slot that once held many keeps no room
                    // for them.
                    if l.slots[s].capacity() > KEEP_SLOT_ROOM {
                        l.slots[s] = Vec::new();
                    }
                } else {
                    if removed.is_some_and(|w| w.at == l.earliest[s]) {
                        l.at_earliest[s] = l.at_earliest[s].saturating_sub(1);
                    }
                    // The last entry at the slot's earliest left (or had left while the slot
                    // was too full to scan): scan for the next, if the slot is small enough.
                    if l.at_earliest[s] == 0 && l.slots[s].len() <= RESCAN_MAX {
                        let earliest = l.slots[s].iter().map(|w| w.at).min().unwrap_or(u64::MAX);
                        l.earliest[s] = earliest;
                        l.at_earliest[s] =
                            l.slots[s].iter().filter(|w| w.at == earliest).count() as u32;
                    }
                }
                removed
            }
        };
        if removed.is_some() {
            self.len -= 1;
        }
        self.note(index, Place::Absent);
    }

    /// Removes entry `i` of `list` (the last takes its place, and its place is noted).
    fn take_at(
        list: &mut Vec<Wakeup>,
        i: u32,
        places: &mut [Place],
        place: impl Fn(u32) -> Place,
    ) -> Option<Wakeup> {
        let i = i as usize;
        if i >= list.len() {
            return None;
        }
        let removed = list.swap_remove(i);
        if let Some(moved) = list.get(i) {
            if let Some(p) = places.get_mut(moved.index as usize) {
                *p = place(i as u32);
            }
        }
        Some(removed)
    }

    /// See [`Wakeups::entry_hints`].
    fn entry_hints(&self, index: u32, stage: u8, f: &mut impl crate::hints::Sink) {
        let (list, i) = match stage {
            0 => {
                if let Some(p) = self.places.get(index as usize) {
                    crate::hints::val(f, p);
                }
                return;
            }
            _ => match self.place_of(index) {
                Place::Absent => return,
                Place::Due(i) => (&self.due, i),
                Place::Far(i) => (&self.far, i),
                Place::Slot {
                    level,
                    slot,
                    position,
                } => match self
                    .levels
                    .get(usize::from(level))
                    .and_then(|l| l.slots.get(usize::from(slot)))
                {
                    Some(list) => (list, position),
                    None => return,
                },
            },
        };
        if let Some(w) = list.get(i as usize) {
            crate::hints::val(f, w);
        }
        if let Some(w) = list.last() {
            crate::hints::val(f, w);
        }
    }

    fn place_of(&self, index: u32) -> Place {
        self.places
            .get(index as usize)
            .copied()
            .unwrap_or(Place::Absent)
    }

    /// Notes where connection slot `index`'s entry is.
    fn note(&mut self, index: u32, place: Place) {
        let i = index as usize;
        if i >= self.places.len() {
            if place == Place::Absent {
                return;
            }
            self.places.resize(i + 1, Place::Absent);
        }
        self.places[i] = place;
    }

    fn push_due(&mut self, w: Wakeup) {
        self.due.push(w);
        self.note(w.index, Place::Due((self.due.len() - 1) as u32));
    }

    /// Entries held (one per connection slot, for the endpoint's use).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Schedules `w`. One due already (at or before the wheel's time) is popped next.
    pub(crate) fn insert(&mut self, w: Wakeup) {
        // One entry per slot (`set` takes the old one out): a second one's place would
        // overwrite the first's, which could then not be found.
        debug_assert_eq!(
            self.place_of(w.index),
            Place::Absent,
            "slot {} has an entry",
            w.index
        );
        self.len += 1;
        self.place(w);
    }

    fn place(&mut self, w: Wakeup) {
        if w.at <= self.elapsed {
            self.push_due(w);
            return;
        }
        let level = level_for(self.elapsed, w.at);
        if level >= LEVELS {
            self.far.push(w);
            self.note(w.index, Place::Far((self.far.len() - 1) as u32));
            return;
        }
        let slot = slot_for(w.at, level);
        let l = &mut self.levels[level];
        l.occupied |= 1 << slot;
        l.slots[slot].push(w);
        if w.at < l.earliest[slot] {
            l.earliest[slot] = w.at;
            l.at_earliest[slot] = 1;
        } else if w.at == l.earliest[slot] {
            l.at_earliest[slot] += 1;
        }
        let position = (l.slots[slot].len() - 1) as u32;
        self.note(
            w.index,
            Place::Slot {
                level: level as u8,
                slot: slot as u8,
                position,
            },
        );
    }

    /// The earliest deadline held, if any: exact, but for a slot of more than
    /// [`RESCAN_MAX`] entries whose earliest left, for which it is a bound below (a driver
    /// woken then finds the slot's entries sorted into finer slots, exact again).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        if let Some(min) = self.due.iter().map(|w| w.at).min() {
            return Some(min);
        }
        match self.next_slot() {
            Some((level, slot)) => Some(self.levels[level].earliest[slot]),
            None => self.far.iter().map(|w| w.at).min(),
        }
    }

    /// The next entry due at `now` (deadline at or before it), or `None` when nothing is;
    /// moves the wheel's time to `now`. Entries due together come in no particular order.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<Wakeup> {
        loop {
            // (All of `due` is at or before the time it was found due at; only if time went
            // backwards can some be later than `now`, and those stay.)
            if let Some(i) = self.due.iter().rposition(|w| w.at <= now) {
                self.len -= 1;
                let popped = Self::take_at(&mut self.due, i as u32, &mut self.places, Place::Due);
                if let Some(w) = popped {
                    self.note(w.index, Place::Absent);
                }
                return popped;
            }
            if !self.due.is_empty() {
                return None;
            }
            let Some((level, slot)) = self.next_slot() else {
                // The levels are empty: time may jump, and far entries come into reach.
                self.elapsed = self.elapsed.max(now);
                let far = core::mem::take(&mut self.far);
                let waiting = far.len();
                for w in far {
                    self.place(w);
                }
                if self.far.len() == waiting {
                    return None;
                }
                continue;
            };
            let start = self.slot_start(level, slot);
            if start > now {
                // Everything held is later than `now`; the slots stay valid for a time
                // between `elapsed` and the next slot's start.
                self.elapsed = self.elapsed.max(now);
                return None;
            }
            self.elapsed = self.elapsed.max(start);
            let l = &mut self.levels[level];
            l.occupied &= !(1 << slot);
            l.earliest[slot] = u64::MAX;
            l.at_earliest[slot] = 0;
            let mut entries = core::mem::take(&mut l.slots[slot]);
            for w in entries.drain(..) {
                if w.at <= now {
                    self.push_due(w);
                } else {
                    self.place(w);
                }
            }
            // Keep a small slot's room (unless entries were placed back into it): a slot
            // that once held thousands would otherwise keep their room for good, in each of
            // 448 slots.
            let l = &mut self.levels[level];
            if l.slots[slot].is_empty() && entries.capacity() <= KEEP_SLOT_ROOM {
                l.slots[slot] = entries;
            }
        }
    }

    /// The first occupied slot of the lowest occupied level: it holds the earliest entries.
    fn next_slot(&self) -> Option<(usize, usize)> {
        self.levels.iter().enumerate().find_map(|(level, l)| {
            // Occupied slots are never before the current one (see `place`).
            let from = slot_for(self.elapsed, level);
            let ahead = l.occupied & (u64::MAX << from);
            (ahead != 0).then(|| (level, ahead.trailing_zeros() as usize))
        })
    }

    /// When slot `slot` of `level` begins, in the current block of that level.
    fn slot_start(&self, level: usize, slot: usize) -> u64 {
        let width_bits = SLOT_BITS as usize * level;
        let block_bits = width_bits + SLOT_BITS as usize;
        let block_start = self.elapsed & !((1u64 << block_bits) - 1);
        block_start + ((slot as u64) << width_bits)
    }
}

/// The level for a deadline `at` later than `elapsed`: the highest 6-bit group in which they
/// differ.
fn level_for(elapsed: u64, at: u64) -> usize {
    let differing = (elapsed ^ at) | (SLOTS as u64 - 1);
    let significant = 63 - differing.leading_zeros() as usize;
    significant / SLOT_BITS as usize
}

fn slot_for(at: u64, level: usize) -> usize {
    ((at >> (SLOT_BITS as usize * level)) & (SLOTS as u64 - 1)) as usize
}

/// The endpoint's wake-ups: a binary heap while few, a [`TimerWheel`] from [`WHEEL_FROM`].
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    heap: BinaryHeap<Reverse<Wakeup>>,
    wheel: Option<Box<TimerWheel>>,
}

impl Wakeups {
    /// The earliest wake-up (for `MemoryHint`).
    pub(crate) fn hints(&self, f: &mut impl crate::hints::Sink) {
        if let Some(w) = self.heap.peek() {
            crate::hints::val(f, w);
        }
    }

    /// Where connection slot `index`'s entry is noted (stage 0) and lies (stage 1), for
    /// `MemoryHint`: moving it when its deadline moves reads both, and the entry that
    /// takes its place.
    pub(crate) fn entry_hints(&self, index: u32, stage: u8, f: &mut impl crate::hints::Sink) {
        if let Some(wheel) = &self.wheel {
            wheel.entry_hints(index, stage, f);
        }
    }

    /// Entries held, stale ones included.
    pub(crate) fn len(&self) -> usize {
        match &self.wheel {
            Some(wheel) => wheel.len(),
            None => self.heap.len(),
        }
    }

    /// Schedules `w`.
    ///
    /// A wheel holds one entry per connection slot: `w` replaces the one `w.index` had, so
    /// a deadline moved later leaves nothing stale behind. A heap keeps every entry (a
    /// stale one is settled when it reaches the front) until it holds [`WHEEL_FROM`]; then
    /// [`outgrew_heap`](Self::outgrew_heap) asks for a [`rebuild`](Self::rebuild) from the
    /// connections' own deadlines, which only the endpoint knows.
    pub(crate) fn insert(&mut self, w: Wakeup) {
        match &mut self.wheel {
            Some(wheel) => wheel.set(w),
            None => self.heap.push(Reverse(w)),
        }
    }

    /// Takes out connection slot `index`'s entry (a wheel; a heap leaves it to go stale).
    pub(crate) fn remove(&mut self, index: u32) {
        if let Some(wheel) = &mut self.wheel {
            wheel.remove(index);
        }
    }

    /// Whether the wake-ups are a wheel (one entry per connection, none stale).
    pub(crate) fn is_wheel(&self) -> bool {
        self.wheel.is_some()
    }

    /// Whether the heap holds enough entries to be made a wheel ([`rebuild`](Self::rebuild)).
    pub(crate) fn outgrew_heap(&self) -> bool {
        self.wheel.is_none() && self.heap.len() >= WHEEL_FROM
    }

    /// The earliest deadline held, if any.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        match &self.wheel {
            Some(wheel) => wheel.next_deadline(),
            None => self.heap.peek().map(|Reverse(w)| w.at),
        }
    }

    /// The earliest entry while the wake-ups are a heap, left in place, so that the endpoint
    /// can deal with a stale one before a driver is woken for it. `None` with a wheel, which
    /// holds no stale entry.
    pub(crate) fn front(&self) -> Option<Wakeup> {
        match &self.wheel {
            Some(_) => None,
            None => self.heap.peek().map(|Reverse(w)| *w),
        }
    }

    /// Moves the entry [`front`](Self::front) gives to the later time `at` (the same as
    /// taking it out and queueing it again at `at`, in one sift).
    pub(crate) fn delay_front(&mut self, at: u64) {
        debug_assert!(self.wheel.is_none(), "a wheel has no front");
        if let Some(mut front) = self.heap.peek_mut() {
            debug_assert!(at >= front.0.at);
            front.0.at = at;
        }
    }

    /// Removes the entry [`front`](Self::front) gives.
    pub(crate) fn pop_front(&mut self) -> Option<Wakeup> {
        match &mut self.wheel {
            Some(_) => None,
            None => self.heap.pop().map(|Reverse(w)| w),
        }
    }

    /// Every entry held, in no order (for the fuzz targets' invariant checks).
    #[cfg(any(test, fuzzing, feature = "fuzzing"))]
    pub(crate) fn entries(&self) -> Vec<Wakeup> {
        match &self.wheel {
            Some(wheel) => {
                let mut all = wheel.due.clone();
                all.extend(wheel.far.iter().copied());
                for level in &wheel.levels {
                    for slot in &level.slots {
                        all.extend(slot.iter().copied());
                    }
                }
                all
            }
            None => self.heap.iter().map(|Reverse(w)| *w).collect(),
        }
    }

    /// The next entry due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<Wakeup> {
        match &mut self.wheel {
            Some(wheel) => wheel.pop_due(now),
            None => {
                if self.heap.peek().is_some_and(|Reverse(w)| w.at <= now) {
                    self.heap.pop().map(|Reverse(w)| w)
                } else {
                    None
                }
            }
        }
    }

    /// Whether to [`rebuild`](Self::rebuild) with the `live` connections' entries: a heap's
    /// stale entries (a connection rescheduled or gone) pile up, more than 4 × live + 64
    /// held; or a wheel's connections are now so few that a heap would serve them (one that
    /// could not grow back to [`WHEEL_FROM`] before its next rebuild).
    pub(crate) fn needs_rebuild(&self, live: usize) -> bool {
        let room = STALE_PER_LIVE * live + STALE_SLACK;
        match self.wheel {
            Some(_) => room < WHEEL_FROM,
            None => self.len() > room,
        }
    }

    /// Replaces every entry with `live` (the rebuild that drops stale entries). A heap again
    /// only if it could not grow back to [`WHEEL_FROM`] before the next rebuild: otherwise a
    /// server with some fifty connections would take and drop a wheel many times a second.
    pub(crate) fn rebuild(&mut self, live: Vec<Wakeup>, now: u64) {
        if STALE_PER_LIVE * live.len() + STALE_SLACK < WHEEL_FROM {
            self.wheel = None;
            self.heap = live.into_iter().map(Reverse).collect();
        } else {
            let mut wheel = Box::new(TimerWheel::starting_at(now));
            for w in live {
                wheel.set(w);
            }
            self.wheel = Some(wheel);
            self.heap = BinaryHeap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BinaryHeap;
    use core::cmp::Reverse;
    use proptest::prelude::*;

    fn w(at: u64, index: u32) -> Wakeup {
        Wakeup {
            at,
            index,
            generation: 0,
        }
    }

    fn drain(wheel: &mut TimerWheel, now: u64) -> Vec<u64> {
        let mut out: Vec<u64> = core::iter::from_fn(|| wheel.pop_due(now))
            .map(|w| w.at)
            .collect();
        out.sort_unstable();
        out
    }

    /// A slot's entry hints name where its place is noted, then the entry itself and the
    /// last of its list (which a removal moves into its place), wherever the entry is.
    #[test]
    fn entry_hints_name_the_place_then_the_entry_and_the_one_that_would_fill_its_gap() {
        let mut wheel = TimerWheel::starting_at(0);
        for (i, at) in [0, 70, 75, 80, 4_000, u64::MAX / 2].into_iter().enumerate() {
            wheel.insert(w(at, i as u32));
        }
        let named = |wheel: &TimerWheel, index: u32, stage: u8| {
            let mut out = Vec::new();
            wheel.entry_hints(index, stage, &mut |p: *const u8, len| {
                out.push((p as usize, len));
            });
            out
        };
        let addr = |w: &Wakeup| (w as *const Wakeup as usize, size_of::<Wakeup>());
        for index in 0..6u32 {
            let place = &wheel.places[index as usize];
            assert_eq!(
                named(&wheel, index, 0),
                [(place as *const Place as usize, size_of::<Place>())],
                "entry {index}"
            );
            let list = match *place {
                Place::Due(_) => &wheel.due,
                Place::Far(_) => &wheel.far,
                Place::Slot { level, slot, .. } => {
                    &wheel.levels[usize::from(level)].slots[usize::from(slot)]
                }
                Place::Absent => panic!("entry {index} has no place"),
            };
            let entry = list.iter().find(|e| e.index == index).expect("listed");
            let last = list.last().expect("listed");
            assert_eq!(
                named(&wheel, index, 1),
                [addr(entry), addr(last)],
                "entry {index}"
            );
        }
        // No entry, nothing named; nor for a slot beyond the table.
        wheel.remove(3);
        assert!(named(&wheel, 3, 1).is_empty());
        assert!(named(&wheel, 1_000, 0).is_empty());
        assert!(named(&wheel, 1_000, 1).is_empty());
    }

    #[test]
    fn entries_fire_at_their_deadline_and_not_before() {
        let mut wheel = TimerWheel::starting_at(0);
        for (i, at) in [5, 70, 4_000, 300_000, 20_000_000, 3_000_000_000]
            .into_iter()
            .enumerate()
        {
            wheel.insert(w(at, i as u32));
        }
        assert_eq!(wheel.next_deadline(), Some(5));
        assert_eq!(drain(&mut wheel, 4), Vec::<u64>::new());
        assert_eq!(drain(&mut wheel, 5), vec![5]);
        // Each next deadline is exact, whatever level holds it.
        for at in [70, 4_000, 300_000, 20_000_000, 3_000_000_000] {
            assert_eq!(wheel.next_deadline(), Some(at));
            assert_eq!(drain(&mut wheel, at - 1), Vec::<u64>::new());
            assert_eq!(drain(&mut wheel, at), vec![at]);
        }
        assert_eq!(wheel.next_deadline(), None);
        assert_eq!(wheel.len(), 0);
    }

    /// A driver's clock that goes backwards: entries later than the time asked for stay,
    /// even those at or before the wheel's own time (they are in its due list).
    #[test]
    fn a_wheel_never_pops_an_entry_later_than_now() {
        let mut wheel = TimerWheel::starting_at(1_000);
        wheel.insert(w(900, 1));
        wheel.insert(w(700, 2));
        assert_eq!(drain(&mut wheel, 800), vec![700]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(drain(&mut wheel, 900), vec![900]);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn a_deadline_beyond_the_span_waits_and_still_fires_on_time() {
        let mut wheel = TimerWheel::starting_at(0);
        let far = 3 * SPAN + 17;
        wheel.insert(w(far, 1));
        assert!(wheel.next_deadline().is_some_and(|t| t <= far));
        let mut now = 0;
        // Wake at every deadline the wheel names: a handful, never a busy loop.
        let mut wakes = 0;
        while let Some(t) = wheel.next_deadline() {
            assert!(t > now || t == far, "no progress at {t}");
            now = t;
            wakes += 1;
            if drain(&mut wheel, now) == vec![far] {
                break;
            }
        }
        assert_eq!(now, far);
        assert!(wakes <= 8, "{wakes} wake-ups");
    }

    #[test]
    fn an_entry_already_due_when_inserted_is_popped_next() {
        let mut wheel = TimerWheel::starting_at(0);
        assert_eq!(drain(&mut wheel, 1_000), Vec::<u64>::new());
        wheel.insert(w(400, 2));
        assert_eq!(wheel.next_deadline(), Some(400));
        assert_eq!(drain(&mut wheel, 1_000), vec![400]);
    }

    #[test]
    fn a_rebuild_keeps_the_wheel_unless_the_heap_could_not_grow_back_to_it() {
        let live = |n: u32| {
            (0..n)
                .map(|i| w(1_000 + u64::from(i), i))
                .collect::<Vec<_>>()
        };
        let mut wakeups = Wakeups::default();
        for i in 0..WHEEL_FROM as u32 {
            wakeups.insert_at(w(500 + u64::from(i), i), 0);
        }
        assert!(wakeups.wheel.is_some());
        // 48 live connections may hold 4 x 48 + 64 = 256 entries before the next rebuild:
        // a heap would become a wheel again, so the wheel stays.
        wakeups.rebuild(live(48), 0);
        assert!(wakeups.wheel.is_some());
        assert!(!wakeups.needs_rebuild(48));
        // With 47, a heap is rebuilt before it reaches WHEEL_FROM: it stays a heap.
        wakeups.rebuild(live(47), 0);
        assert!(wakeups.wheel.is_none());
        for i in 47..=(4 * 47 + 64) {
            wakeups.insert(w(2_000 + u64::from(i), i));
        }
        assert!(wakeups.needs_rebuild(47));
        assert!(wakeups.wheel.is_none());
        assert_eq!(wakeups.pop_due(1_000), Some(w(1_000, 0)));
    }

    #[test]
    fn the_front_of_a_heap_is_its_earliest_entry_and_a_wheel_has_none() {
        let mut wakeups = Wakeups::default();
        assert_eq!(wakeups.front(), None);
        for (i, at) in [(0, 30), (1, 10), (2, 20), (3, 10)] {
            wakeups.insert(w(at, i));
        }
        assert_eq!(wakeups.front(), Some(w(10, 1)));
        assert_eq!(wakeups.pop_front(), Some(w(10, 1)));
        assert_eq!(wakeups.front(), Some(w(10, 3)));
        assert_eq!(wakeups.next_deadline(), Some(10));
        assert_eq!(wakeups.len(), 3);
        // Delayed past the others, it comes last.
        wakeups.delay_front(40);
        assert_eq!(wakeups.front(), Some(w(20, 2)));
        assert_eq!(wakeups.len(), 3);
        assert_eq!(wakeups.pop_due(35), Some(w(20, 2)));
        assert_eq!(wakeups.pop_due(35), Some(w(30, 0)));
        assert_eq!(wakeups.pop_due(35), None);
        assert_eq!(wakeups.pop_due(40), Some(w(40, 3)));
        for (i, at) in [(0, 30), (1, 10), (3, 10)] {
            wakeups.insert(w(at, i));
        }
        for i in 4..=WHEEL_FROM as u32 {
            wakeups.insert_at(w(1_000 + u64::from(i), i), 0);
        }
        assert!(wakeups.wheel.is_some());
        assert_eq!(wakeups.front(), None);
        assert_eq!(wakeups.pop_front(), None);
        assert_eq!(wakeups.len(), WHEEL_FROM);
    }

    /// What the property below needs of both structures.
    trait Timers {
        fn insert_at(&mut self, w: Wakeup, now: u64);
        fn pop(&mut self, now: u64) -> Option<Wakeup>;
        fn next(&self) -> Option<u64>;
        fn held(&self) -> usize;
    }

    impl Timers for TimerWheel {
        fn insert_at(&mut self, w: Wakeup, _now: u64) {
            self.insert(w);
        }
        fn pop(&mut self, now: u64) -> Option<Wakeup> {
            self.pop_due(now)
        }
        fn next(&self) -> Option<u64> {
            self.next_deadline()
        }
        fn held(&self) -> usize {
            self.len()
        }
    }

    /// As the endpoint does: a heap that holds `WHEEL_FROM` entries is rebuilt from the
    /// live ones (here every entry is: each has an index of its own).
    impl Timers for Wakeups {
        fn insert_at(&mut self, w: Wakeup, now: u64) {
            self.insert(w);
            if self.outgrew_heap() {
                let live = self.entries();
                self.rebuild(live, now);
            }
        }
        fn pop(&mut self, now: u64) -> Option<Wakeup> {
            self.pop_due(now)
        }
        fn next(&self) -> Option<u64> {
            self.next_deadline()
        }
        fn held(&self) -> usize {
            self.len()
        }
    }

    /// Against a binary heap: the same entries come out at the same times, and the next
    /// deadline is always the earliest held.
    fn fires_what_a_heap_would(
        timers: &mut dyn Timers,
        steps: Vec<(u64, u64, u8)>,
    ) -> Result<(), TestCaseError> {
        let mut heap = BinaryHeap::new();
        let mut now = 0u64;
        for (i, (scale, offset, action)) in steps.into_iter().enumerate() {
            if action == 0 {
                now += offset >> (scale * 4);
                let mut expected = Vec::new();
                while heap.peek().is_some_and(|Reverse(at)| *at <= now) {
                    let Reverse(at) = heap.pop().expect("peeked");
                    expected.push(at);
                }
                expected.sort_unstable();
                let mut got: Vec<u64> = core::iter::from_fn(|| timers.pop(now))
                    .map(|w| w.at)
                    .collect();
                got.sort_unstable();
                prop_assert_eq!(got, expected);
            } else {
                // Mostly near deadlines, some far ones, some already due.
                let at = now.saturating_sub(50) + (offset << (scale * 3));
                let at = if action == 1 && scale == 4 {
                    at << 20
                } else {
                    at
                };
                timers.insert_at(w(at, i as u32), now);
                heap.push(Reverse(at));
            }
            prop_assert_eq!(timers.held(), heap.len());
            let earliest = heap.peek().map(|Reverse(at)| *at);
            prop_assert_eq!(timers.next(), earliest);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn a_wheel_fires_exactly_what_a_heap_would(
            steps in proptest::collection::vec((0u64..5, 0u64..2_000_000, 0u8..3), 1..300)
        ) {
            fires_what_a_heap_would(&mut TimerWheel::starting_at(0), steps)?;
        }

        #[test]
        fn wakeups_fire_exactly_what_a_heap_would_before_and_after_taking_a_wheel(
            steps in proptest::collection::vec((0u64..5, 0u64..2_000_000, 0u8..6), 200..700)
        ) {
            fires_what_a_heap_would(&mut Wakeups::default(), steps)?;
        }

        /// Entries set, moved and taken out by connection slot, against a map of each
        /// slot's one deadline: the wheel pops exactly the deadlines due and holds exactly
        /// one entry per slot, however often the entries moved between slots and levels.
        /// Its next deadline is never after the earliest of them, and is exactly that while
        /// it holds at most `RESCAN_MAX` entries (a fuller slot may keep a bound below).
        #[test]
        fn a_wheel_holds_one_entry_per_slot_wherever_it_moves(
            slots in 1u32..120,
            steps in proptest::collection::vec(
                (0u32..120, 0u64..5, 0u64..2_000_000, 0u8..8),
                1..800,
            )
        ) {
            let mut wheel = TimerWheel::starting_at(0);
            let mut model = alloc::collections::BTreeMap::new();
            let mut now = 0u64;
            for (index, scale, offset, action) in steps {
                let index = index % slots;
                match action {
                    0 => {
                        now += offset >> (scale * 4);
                        let mut got: Vec<(u32, u64)> = core::iter::from_fn(|| wheel.pop_due(now))
                            .map(|w| (w.index, w.at))
                            .collect();
                        got.sort_unstable();
                        let expected: Vec<(u32, u64)> = model
                            .iter()
                            .filter(|(_, &at)| at <= now)
                            .map(|(&i, &at)| (i, at))
                            .collect();
                        model.retain(|_, at| *at > now);
                        prop_assert_eq!(got, expected);
                    }
                    1 => {
                        wheel.remove(index);
                        model.remove(&index);
                    }
                    _ => {
                        // Near and far deadlines, some already due; some shared by many
                        // slots (clients polled on one tick).
                        let at = if action == 7 {
                            (now / 4096 + scale + 1) * 4096
                        } else {
                            now.saturating_sub(50) + (offset << (scale * 3))
                        };
                        wheel.set(Wakeup { at, index, generation: 0 });
                        model.insert(index, at);
                    }
                }
                prop_assert_eq!(wheel.len(), model.len());
                let earliest = model.values().min().copied();
                let next = wheel.next_deadline();
                prop_assert!(next <= earliest && next.is_some() == earliest.is_some());
                if model.len() <= RESCAN_MAX {
                    prop_assert_eq!(next, earliest);
                }
            }
        }
    }
}

/// The property test above starts at 0 and moves at most a few thousand seconds, so it never
/// crosses a 2^42 µs boundary (where every new entry goes to `far`), nor runs near
/// `u64::MAX`. This one does, against a heap, and checks that after draining at
/// `now` the next deadline is later than `now` (no busy loop).
#[cfg(test)]
mod across_spans {
    use super::*;
    use alloc::collections::BinaryHeap;
    use core::cmp::Reverse;

    fn run(start: u64, steps: &[(u64, u64, bool)]) {
        let mut wheel = TimerWheel::starting_at(start);
        let mut heap = BinaryHeap::new();
        let mut now = start;
        for (i, &(a, b, insert)) in steps.iter().enumerate() {
            if insert {
                // Already due, at the end of time, or ahead by anything up to 2^45 µs.
                let at = match a % 7 {
                    0 => now.saturating_sub(a % 100),
                    1 => u64::MAX - (a % 3),
                    _ => now.saturating_add(a),
                };
                wheel.insert(Wakeup {
                    at,
                    index: i as u32,
                    generation: 0,
                });
                heap.push(Reverse(at));
            } else {
                now = now.saturating_add(b);
                let mut expected = Vec::new();
                while heap.peek().is_some_and(|Reverse(t)| *t <= now) {
                    expected.extend(heap.pop().map(|Reverse(t)| t));
                }
                expected.sort_unstable();
                let mut got: Vec<u64> = core::iter::from_fn(|| wheel.pop_due(now))
                    .map(|w| w.at)
                    .collect();
                got.sort_unstable();
                assert_eq!(got, expected, "step {i}, now {now}");
                assert!(
                    wheel.next_deadline().is_none_or(|t| t > now),
                    "due again at {now}"
                );
            }
            assert_eq!(wheel.next_deadline(), heap.peek().map(|r| r.0), "step {i}");
            assert_eq!(wheel.len(), heap.len());
        }
    }

    #[test]
    fn a_wheel_fires_what_a_heap_would_across_top_level_spans_and_near_the_end_of_time() {
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let starts = [
            0,
            (1u64 << 42) - 5_000,
            (1u64 << 48) - 3,
            u64::MAX - 10_000_000,
            u64::MAX - 100,
        ];
        for start in starts {
            for _ in 0..200 {
                let steps: Vec<(u64, u64, bool)> = (0..200)
                    .map(|_| {
                        let r = next();
                        let a = (next() % 3_000) << ((r >> 60) as u32 * 3 % 45);
                        let b = (next() % 2_000) << ((r >> 56) as u32 % 4 * 4);
                        (a, b, r & 1 == 0)
                    })
                    .collect();
                run(start, &steps);
            }
        }
    }
}
