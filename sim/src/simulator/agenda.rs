//! The agenda: everything scheduled, in time order, and the fast maps the engine keys by node.

use core::cmp::{Ordering, Reverse};
use core::hash::{BuildHasherDefault, Hasher};
use std::collections::{BinaryHeap, HashMap, HashSet};

use shoal_proto::Instant;

/// A hasher for maps whose keys come from the simulation itself (no untrusted input), fast
/// and deterministic (FxHash's multiply-rotate).
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// Something due at a time.
#[derive(Clone, Copy, Debug)]
pub(crate) enum What {
    /// The datagram in an in-flight slot reaches its node.
    Arrival {
        slot: u32,
        node: u32,
    },
    Timer {
        node: u32,
        token: u64,
    },
    Change(u32),
    /// A wake-up of the node (only among a window's entries: the agenda keeps wake-ups in
    /// their own calendar).
    Wake(u32),
}

impl What {
    /// The node it happens at; `None` for a change of conditions (it may touch any node).
    pub(crate) fn node(&self) -> Option<u32> {
        match *self {
            What::Arrival { node, .. } | What::Timer { node, .. } | What::Wake(node) => Some(node),
            What::Change(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub(crate) at: Instant,
    pub(crate) seq: u64,
    pub(crate) what: What,
}

impl Item {
    /// The node it happens at (0 for a change of conditions, which a window never holds).
    pub(crate) fn node(&self) -> u32 {
        self.what.node().unwrap_or(0)
    }
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A wake-up of a node: `(at, seq, node)`.
pub(crate) type Wake = (Instant, u64, u32);

/// What the [`Calendar`] needs of an entry besides its order: the time that picks its bucket.
pub(crate) trait Timed: Ord {
    fn micros(&self) -> u64;
    /// The entry's place in the order: (time, insertion counter).
    fn key(&self) -> (Instant, u64);
}

impl Timed for Item {
    fn micros(&self) -> u64 {
        self.at.as_micros()
    }
    fn key(&self) -> (Instant, u64) {
        (self.at, self.seq)
    }
}

impl Timed for Wake {
    fn micros(&self) -> u64 {
        self.0.as_micros()
    }
    fn key(&self) -> (Instant, u64) {
        (self.0, self.1)
    }
}

/// Width of a calendar bucket: 2^8 us = 256 us.
const BUCKET_SHIFT: u32 = 8;
/// Buckets in the ring: 1024 x 256 us = 262 ms ahead (a link's latency plus a game tick fit).
const BUCKETS: usize = 1024;

/// A min-queue of entries by their order, built as a calendar: entries due within the
/// current bucket sit in a small binary heap, later ones within the ring's horizon in
/// unsorted per-bucket vectors (a push is an append), and the rest in a heap of far entries.
/// A bucket is heapified only when time reaches it, so each pop sifts through a heap of one
/// bucket's entries (hundreds, in cache) instead of everything scheduled (tens of thousands).
/// Pops come out in exactly the order of one binary heap over all entries.
pub(crate) struct Calendar<T> {
    /// Entries whose bucket is at or before `current`.
    front: BinaryHeap<Reverse<T>>,
    /// The latest bucket moved into `front`; every entry in `ring` and `far` is after it.
    current: u64,
    /// Buckets `current + 1 ..= current + BUCKETS - 1`, at index `bucket % BUCKETS`.
    ring: Vec<Vec<Reverse<T>>>,
    /// Bit `i` is set when `ring[i]` is not empty.
    occupied: Vec<u64>,
    in_ring: usize,
    /// Entries at `current + BUCKETS` buckets and later.
    far: BinaryHeap<Reverse<T>>,
    /// Prefetch the line a bucket's pushes reach next ([`SimConfig::memory_hints`]).
    ///
    /// [`SimConfig::memory_hints`]: super::SimConfig::memory_hints
    pub(crate) write_ahead: bool,
}

/// How many entries past a bucket's end [`Calendar::push`] names (with `write_ahead`): far
/// enough that the line arrives before the pushes reach it (at 10,000 clients, alternating
/// windows measured 0.982-0.993 against 0.995 for identical policies).
const WRITE_AHEAD: usize = 3;

impl<T> Default for Calendar<T> {
    fn default() -> Self {
        Calendar {
            front: BinaryHeap::new(),
            current: 0,
            ring: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: vec![0; BUCKETS / 64],
            in_ring: 0,
            far: BinaryHeap::new(),
            write_ahead: false,
        }
    }
}

impl<T: Timed> Calendar<T> {
    pub(crate) fn len(&self) -> usize {
        self.front.len() + self.in_ring + self.far.len()
    }

    pub(crate) fn clear(&mut self) {
        self.front.clear();
        if self.in_ring > 0 {
            for (w, word) in self.occupied.iter_mut().enumerate() {
                while *word != 0 {
                    let bit = word.trailing_zeros() as usize;
                    *word &= *word - 1;
                    self.ring[w * 64 + bit].clear();
                }
            }
            self.in_ring = 0;
        }
        self.far.clear();
    }

    pub(crate) fn push(&mut self, entry: T) {
        let bucket = entry.micros() >> BUCKET_SHIFT;
        if bucket <= self.current {
            self.front.push(Reverse(entry));
        } else if bucket - self.current < BUCKETS as u64 {
            let i = (bucket % BUCKETS as u64) as usize;
            let bucket = &mut self.ring[i];
            bucket.push(Reverse(entry));
            if self.write_ahead {
                // A bucket fills in order, a line every few entries, and its buffer was last
                // used a ring ago: its next lines are cold. Name the one a few entries on.
                let ahead = bucket.len() + WRITE_AHEAD;
                if ahead < bucket.capacity() {
                    super::prefetch::prefetch_bytes(bucket.as_ptr().wrapping_add(ahead).cast(), 1);
                }
            }
            self.occupied[i / 64] |= 1 << (i % 64);
            self.in_ring += 1;
        } else {
            self.far.push(Reverse(entry));
        }
    }

    /// The first entry, moving the next bucket into the heap when the heap is empty.
    pub(crate) fn peek(&mut self) -> Option<&T> {
        if self.front.is_empty() {
            self.advance();
        }
        self.front.peek().map(|Reverse(e)| e)
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.front.is_empty() {
            self.advance();
        }
        self.front.pop().map(|Reverse(e)| e)
    }

    /// The first entry without moving anything (scans one bucket when the heap is empty).
    pub(crate) fn first(&self) -> Option<&T> {
        if let Some(Reverse(e)) = self.front.peek() {
            return Some(e);
        }
        if self.in_ring > 0 {
            let i = self.next_occupied();
            return self.ring[i].iter().map(|Reverse(e)| e).min();
        }
        self.far.peek().map(|Reverse(e)| e)
    }

    /// Moves every entry ordered before `limit` into `out`, in no particular order: whole
    /// buckets at a time, where popping them one by one would sift a heap per entry. A
    /// window longer than the ring spans (a link latency over a quarter second) takes the
    /// rest from `far`.
    pub(crate) fn drain_below(&mut self, limit: (Instant, u64), out: &mut Vec<T>)
    where
        T: Copy,
    {
        // Bring `current` to the earliest entry, and the far entries near it into the ring.
        if self.peek().is_none() {
            return;
        }
        let mut front = core::mem::take(&mut self.front).into_vec();
        take_below(&mut front, limit, out);
        self.front = BinaryHeap::from(front);
        let last = limit.0.as_micros() >> BUCKET_SHIFT;
        let mut bucket = self.current + 1;
        while self.in_ring > 0 && bucket <= last {
            let i = (bucket % BUCKETS as u64) as usize;
            if self.occupied[i / 64] & (1 << (i % 64)) != 0 {
                let entries = &mut self.ring[i];
                let before = entries.len();
                if bucket < last {
                    out.extend(entries.drain(..).map(|Reverse(e)| e));
                } else {
                    take_below(entries, limit, out);
                }
                self.in_ring -= before - entries.len();
                if entries.is_empty() {
                    self.occupied[i / 64] &= !(1 << (i % 64));
                }
            }
            bucket += 1;
        }
        while self.far.peek().is_some_and(|Reverse(e)| e.key() < limit) {
            if let Some(Reverse(e)) = self.far.pop() {
                out.push(e);
            }
        }
    }

    /// Index of the first non-empty ring bucket after `current` (the ring must hold entries).
    fn next_occupied(&self) -> usize {
        let start = ((self.current + 1) % BUCKETS as u64) as usize;
        let words = self.occupied.len();
        let first = self.occupied[start / 64] & (!0u64 << (start % 64));
        if first != 0 {
            return (start / 64) * 64 + first.trailing_zeros() as usize;
        }
        for k in 1..=words {
            let w = (start / 64 + k) % words;
            if self.occupied[w] != 0 {
                return w * 64 + self.occupied[w].trailing_zeros() as usize;
            }
        }
        unreachable!("the ring holds entries")
    }

    /// With `front` empty: makes the next non-empty bucket current and heapifies it, and
    /// brings far entries that came within the horizon into the ring.
    fn advance(&mut self) {
        let next = if self.in_ring > 0 {
            let i = self.next_occupied();
            let start = ((self.current + 1) % BUCKETS as u64) as usize;
            let distance = (i + BUCKETS - start) % BUCKETS;
            self.current + 1 + distance as u64
        } else {
            match self.far.peek() {
                Some(Reverse(e)) => e.micros() >> BUCKET_SHIFT,
                None => return,
            }
        };
        self.current = next;
        let i = (next % BUCKETS as u64) as usize;
        if self.occupied[i / 64] & (1 << (i % 64)) != 0 {
            self.occupied[i / 64] &= !(1 << (i % 64));
            // The empty heap's buffer becomes the bucket's, to be refilled without allocating.
            let spare = core::mem::take(&mut self.front).into_vec();
            let entries = core::mem::replace(&mut self.ring[i], spare);
            self.in_ring -= entries.len();
            self.front = BinaryHeap::from(entries);
        }
        while let Some(Reverse(e)) = self.far.peek() {
            let bucket = e.micros() >> BUCKET_SHIFT;
            if bucket - self.current >= BUCKETS as u64 {
                break;
            }
            if let Some(Reverse(e)) = self.far.pop() {
                self.push(e);
            }
        }
    }
}

/// Moves the entries of `entries` ordered before `limit` to `out`, keeping the others.
fn take_below<T: Timed + Copy>(
    entries: &mut Vec<Reverse<T>>,
    limit: (Instant, u64),
    out: &mut Vec<T>,
) {
    entries.retain(|Reverse(e)| {
        let below = e.key() < limit;
        if below {
            out.push(*e);
        }
        !below
    });
}

/// Puts `items` in time order, ties in insertion order: `(at, seq)`, as the agenda pops them.
///
/// A server's share of a window is thousands of items; a comparison sort of it was 1.6%
/// of a 10,000-client run's instructions. Their times lie within the window, so a least-significant-
/// digit radix sort of the offset from the earliest, a byte per pass (two for a window
/// under 65 ms), does it in a few linear passes; it is stable, and the rare items of equal
/// time are then put in `seq` order. Small shares (a client's two or three items) sort
/// directly. `scratch` is a buffer kept between calls.
pub(crate) fn sort_by_time(items: &mut [Item], scratch: &mut Vec<Item>) {
    if items.len() <= 64 {
        items.sort_unstable_by_key(|e| (e.at, e.seq));
        return;
    }
    let (mut base, mut last) = (u64::MAX, 0);
    for e in items.iter() {
        base = base.min(e.at.as_micros());
        last = last.max(e.at.as_micros());
    }
    let span = last - base;
    if scratch.len() < items.len() {
        scratch.resize(items.len(), items[0]);
    }
    let scratch = &mut scratch[..items.len()];
    // Ping-pong between the two buffers; `in_scratch` says where the items are now.
    let mut in_scratch = false;
    let mut shift = 0;
    while shift < u64::BITS && span >> shift != 0 {
        let (src, dst): (&[Item], &mut [Item]) = if in_scratch {
            (scratch, items)
        } else {
            (items, scratch)
        };
        let digit = |e: &Item| ((e.at.as_micros() - base) >> shift) as usize & 0xff;
        let mut starts = [0usize; 257];
        for e in src {
            starts[digit(e) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        for e in src {
            let d = digit(e);
            dst[starts[d]] = *e;
            starts[d] += 1;
        }
        in_scratch = !in_scratch;
        shift += 8;
    }
    if in_scratch {
        items.copy_from_slice(scratch);
    }
    for run in items.chunk_by_mut(|a, b| a.at == b.at) {
        if run.len() > 1 {
            run.sort_unstable_by_key(|e| e.seq);
        }
    }
}

/// A wake-up, as the item a window runs.
fn wake_item((at, seq, node): Wake) -> Item {
    Item {
        at,
        seq,
        what: What::Wake(node),
    }
}

/// Everything scheduled. Ties in time are broken by an insertion counter, so the order of
/// simultaneous happenings is fixed by the order they were scheduled in.
pub(crate) struct Agenda {
    pub(crate) seq: u64,
    pub(crate) items: Calendar<Item>,
    /// Node wake-ups `(at, seq, node)`; an entry is live only while it matches the node's
    /// `scheduled` (lazy invalidation: rescheduling pushes a new entry, never searches).
    pub(crate) wakeups: Calendar<Wake>,
    /// While one node's share of a window is run (see `Simulator::run_window`): that node,
    /// and the window's end. What it schedules for itself before the end goes to `local`.
    local_node: Option<u32>,
    local_end: Instant,
    local: BinaryHeap<Reverse<Item>>,
    /// The keys of the changes of conditions among `items` (a window stops at the first).
    changes: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Wake-ups drained for a window (kept for its buffer).
    drained_wakes: Vec<Wake>,
}

impl Default for Agenda {
    fn default() -> Self {
        Agenda {
            seq: 0,
            items: Calendar::default(),
            wakeups: Calendar::default(),
            local_node: None,
            local_end: Instant::ZERO,
            local: BinaryHeap::new(),
            changes: BinaryHeap::new(),
            drained_wakes: Vec::new(),
        }
    }
}

impl Agenda {
    /// An empty agenda whose calendars name the next lines of their buckets as they fill
    /// (see `Calendar::write_ahead`).
    pub(crate) fn with_write_ahead(on: bool) -> Self {
        let mut agenda = Agenda::default();
        agenda.items.write_ahead = on;
        agenda.wakeups.write_ahead = on;
        agenda
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(crate) fn push(&mut self, at: Instant, what: What) {
        let seq = self.next_seq();
        match what.node() {
            Some(node) if self.is_local(node, at) => {
                self.local.push(Reverse(Item { at, seq, what }))
            }
            Some(_) => self.items.push(Item { at, seq, what }),
            None => {
                self.changes.push(Reverse((at, seq)));
                self.items.push(Item { at, seq, what });
            }
        }
    }

    pub(crate) fn push_wake(&mut self, at: Instant, node: u32) {
        let seq = self.next_seq();
        if self.is_local(node, at) {
            self.local.push(Reverse(wake_item((at, seq, node))));
        } else {
            self.wakeups.push((at, seq, node));
        }
    }

    fn is_local(&self, node: u32, at: Instant) -> bool {
        self.local_node == Some(node) && at < self.local_end
    }

    /// Moves every entry due before `end` into `out`, in no particular order (the window
    /// sorts each node's share), stopping early at a change of conditions, which is
    /// returned (and was not moved): it must see everything before it done, and nothing
    /// after it.
    pub(crate) fn drain_before(&mut self, end: Instant, out: &mut Vec<Item>) -> Option<Item> {
        let change = self
            .changes
            .peek()
            .map(|&Reverse(key)| key)
            .filter(|&(at, _)| at < end);
        let limit = change.unwrap_or((end, 0));
        self.items.drain_below(limit, out);
        let mut wakes = core::mem::take(&mut self.drained_wakes);
        wakes.clear();
        self.wakeups.drain_below(limit, &mut wakes);
        out.extend(wakes.iter().copied().map(wake_item));
        self.drained_wakes = wakes;
        // Everything before it is out: the change is next.
        change.and_then(|_| self.pop())
    }

    pub(crate) fn open_local(&mut self, node: u32, end: Instant) {
        debug_assert!(self.local.is_empty());
        self.local_node = Some(node);
        self.local_end = end;
    }

    pub(crate) fn close_local(&mut self) {
        debug_assert!(self.local.is_empty());
        self.local_node = None;
    }

    /// The earliest entry the open node scheduled for itself within the window.
    pub(crate) fn peek_local(&self) -> Option<&Item> {
        self.local.peek().map(|Reverse(e)| e)
    }

    pub(crate) fn pop_local(&mut self) -> Option<Item> {
        self.local.pop().map(|Reverse(e)| e)
    }

    /// When the first entry is due, without reorganising anything.
    pub(crate) fn first_time(&self) -> Option<Instant> {
        let a = self.items.first().map(|i| (i.at, i.seq));
        let b = self.wakeups.first().map(|&(at, seq, _)| (at, seq));
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b).0),
            (a, b) => a.or(b).map(|(at, _)| at),
        }
    }

    pub(crate) fn peek_time(&mut self) -> Option<Instant> {
        let a = self.items.peek().map(|i| (i.at, i.seq));
        let b = self.wakeups.peek().map(|&(at, seq, _)| (at, seq));
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b).0),
            (a, b) => a.or(b).map(|(at, _)| at),
        }
    }

    /// The earliest entry (a wake-up as `What::Wake`).
    pub(crate) fn pop(&mut self) -> Option<Item> {
        self.pop_before(None)
    }

    /// The earliest entry if it is due before `end` (if given).
    fn pop_before(&mut self, end: Option<Instant>) -> Option<Item> {
        let due = |at: Instant| end.is_none_or(|end| at < end);
        if self.next_is_item()? {
            self.items.peek().filter(|i| due(i.at))?;
            let item = self.items.pop();
            if let Some(Item {
                at,
                seq,
                what: What::Change(_),
            }) = item
            {
                let first = self.changes.pop();
                debug_assert_eq!(first, Some(Reverse((at, seq))));
            }
            item
        } else {
            self.wakeups.peek().filter(|w| due(w.0))?;
            self.wakeups.pop().map(wake_item)
        }
    }

    /// Whether the earliest entry is an item (rather than a wake-up); `None` when nothing is
    /// scheduled.
    fn next_is_item(&mut self) -> Option<bool> {
        let a = self.items.peek().map(|i| (i.at, i.seq));
        let b = self.wakeups.peek().map(|&(at, seq, _)| (at, seq));
        match (a, b) {
            (Some(a), Some(b)) => Some(a < b),
            (a, b) => a.map(|_| true).or(b.map(|_| false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SimRng;

    /// The calendar pops exactly what one binary heap pops, whatever the spread of times.
    #[test]
    fn calendar_pops_in_heap_order() {
        for (seed, spread) in [(1, 100), (2, 50_000), (3, 2_000_000), (4, 60_000_000)] {
            let mut rng = SimRng::new(seed);
            let mut calendar: Calendar<Wake> = Calendar::default();
            let mut heap = BinaryHeap::new();
            let mut now = 0u64;
            let mut seq = 0u64;
            for round in 0..20_000u32 {
                // Mostly pushes ahead of now, some at now, and pops in between.
                for _ in 0..rng.below(4) {
                    seq += 1;
                    let at = now
                        + if rng.chance(0.1) {
                            0
                        } else {
                            rng.below(spread)
                        };
                    let entry = (Instant::from_micros(at), seq, round);
                    calendar.push(entry);
                    heap.push(Reverse(entry));
                }
                for _ in 0..rng.below(4) {
                    let expected = heap.pop().map(|Reverse(e)| e);
                    assert_eq!(calendar.first().copied(), expected);
                    assert_eq!(calendar.pop(), expected);
                    if let Some((at, _, _)) = expected {
                        now = at.as_micros();
                    }
                }
                assert_eq!(calendar.len(), heap.len());
                if round % 5_000 == 4_999 {
                    calendar.clear();
                    heap.clear();
                }
            }
            while let Some(Reverse(e)) = heap.pop() {
                assert_eq!(calendar.pop(), Some(e));
            }
            assert_eq!(calendar.pop(), None);
        }
    }

    /// The radix sort puts items in `(at, seq)` order like a comparison sort: small and
    /// large sets, narrow and wide spans of time (one to eight byte passes), many ties.
    #[test]
    fn sort_by_time_orders_like_a_comparison_sort() {
        let mut rng = SimRng::new(11);
        let mut scratch = Vec::new();
        for (len, spread) in [
            (10, 1_000),
            (65, 3),
            (500, 40_000),
            (5_000, 40_000),
            (5_000, 200),
            (3_000, 5_000_000_000),
            (200, u64::MAX / 4),
        ] {
            let base = rng.below(1 << 40);
            let mut items: Vec<Item> = (0..len)
                .map(|i| Item {
                    at: Instant::from_micros(base + rng.below(spread)),
                    // Insertion counters in no particular order, as a window drains them.
                    seq: rng.below(1 << 50) << 10 | i,
                    what: What::Wake(rng.below(100) as u32),
                })
                .collect();
            let mut expected = items.clone();
            expected.sort_by_key(|e| (e.at, e.seq));
            sort_by_time(&mut items, &mut scratch);
            let key = |v: &[Item]| v.iter().map(|e| (e.at, e.seq)).collect::<Vec<_>>();
            assert_eq!(key(&items), key(&expected), "{len} items over {spread} us");
        }
    }

    /// Draining below a limit takes exactly the entries a heap pops before it, and leaves
    /// the rest popping in heap order.
    #[test]
    fn calendar_drains_what_a_heap_pops_before_the_limit() {
        // Windows up to 40 ms (a game's link) and up to 2 s (longer than the ring spans).
        for (seed, spread, window) in [
            (5, 100, 40_000),
            (6, 50_000, 40_000),
            (7, 400_000, 40_000),
            (8, 60_000_000, 40_000),
            (9, 400_000, 2_000_000),
            (10, 60_000_000, 2_000_000),
        ] {
            let mut rng = SimRng::new(seed);
            let mut calendar: Calendar<Wake> = Calendar::default();
            let mut heap = BinaryHeap::new();
            let mut now = 0u64;
            let mut seq = 0u64;
            let mut drained = Vec::new();
            for round in 0..5_000u32 {
                for _ in 0..rng.below(8) {
                    seq += 1;
                    let at = now + rng.below(spread);
                    let entry = (Instant::from_micros(at), seq, round);
                    calendar.push(entry);
                    heap.push(Reverse(entry));
                }
                // A window from the earliest entry, ending between two entries' counters
                // or at a round time.
                let Some(&Reverse((first, _, _))) = heap.peek() else {
                    continue;
                };
                let end = first + core::time::Duration::from_micros(rng.below(window));
                let limit = (
                    end,
                    if rng.chance(0.5) {
                        0
                    } else {
                        rng.below(seq + 1)
                    },
                );
                let mut expected = Vec::new();
                while heap.peek().is_some_and(|Reverse(e)| (e.0, e.1) < limit) {
                    let Some(Reverse(e)) = heap.pop() else { break };
                    expected.push(e);
                }
                drained.clear();
                calendar.drain_below(limit, &mut drained);
                drained.sort_unstable();
                assert_eq!(drained, expected, "seed {seed}, round {round}");
                assert_eq!(calendar.len(), heap.len());
                if let Some(&(at, _, _)) = expected.last() {
                    now = at.as_micros();
                }
                if rng.chance(0.3) {
                    let expected = heap.pop().map(|Reverse(e)| e);
                    assert_eq!(calendar.pop(), expected);
                }
            }
            while let Some(Reverse(e)) = heap.pop() {
                assert_eq!(calendar.pop(), Some(e));
            }
            assert_eq!(calendar.pop(), None);
        }
    }
}
