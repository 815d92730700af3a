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
    Arrival(u32),
    Timer { node: u32, token: u64 },
    Change(u32),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub(crate) at: Instant,
    pub(crate) seq: u64,
    pub(crate) what: What,
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

/// Everything scheduled. Ties in time are broken by an insertion counter, so the order of
/// simultaneous happenings is fixed by the order they were scheduled in.
#[derive(Default)]
pub(crate) struct Agenda {
    pub(crate) seq: u64,
    pub(crate) items: BinaryHeap<Reverse<Item>>,
    /// Node wake-ups `(at, seq, node)`; an entry is live only while it matches the node's
    /// `scheduled` (lazy invalidation: rescheduling pushes a new entry, never searches).
    pub(crate) wakeups: BinaryHeap<Reverse<(Instant, u64, u32)>>,
}

pub(crate) enum Next {
    Item(Item),
    Wake(Instant, u32),
}

impl Agenda {
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(crate) fn push(&mut self, at: Instant, what: What) {
        let seq = self.next_seq();
        self.items.push(Reverse(Item { at, seq, what }));
    }

    pub(crate) fn push_wake(&mut self, at: Instant, node: u32) {
        let seq = self.next_seq();
        self.wakeups.push(Reverse((at, seq, node)));
    }

    pub(crate) fn peek_time(&self) -> Option<Instant> {
        let a = self.items.peek().map(|Reverse(i)| (i.at, i.seq));
        let b = self.wakeups.peek().map(|Reverse((at, seq, _))| (*at, *seq));
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b).0),
            (a, b) => a.or(b).map(|(at, _)| at),
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Next> {
        let a = self.items.peek().map(|Reverse(i)| (i.at, i.seq));
        let b = self.wakeups.peek().map(|Reverse((at, seq, _))| (*at, *seq));
        let take_item = match (a, b) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if take_item {
            self.items.pop().map(|Reverse(i)| Next::Item(i))
        } else {
            self.wakeups
                .pop()
                .map(|Reverse((at, _, node))| Next::Wake(at, node))
        }
    }
}
