//! The sent-frame store: reliable frames awaiting acknowledgement, addressed by keys that go
//! stale when the frame is acknowledged, so a packet record holding an old key finds nothing.

use alloc::vec::Vec;

/// A key into the sent-frame store (a generational slab index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FrameKey {
    index: u32,
    generation: u32,
}

/// A slab whose keys go stale when their slot is reused, so a key held in a packet record
/// or retransmission queue after its frame was acknowledged finds nothing. Its free slots
/// form a list through the slots themselves (last freed, first reused), so the store is
/// one buffer, and 40 bytes in every connection.
///
/// Every frame put in takes the next number of one counter as its generation, so a key
/// matches only the frame it was made for until 2^32 more frames went in (a key lives in a
/// packet record or the resend queue, a few thousand packets at most). The counter goes on
/// across [`trim`](Self::trim) and into the next store ([`next_epoch`](Self::next_epoch)):
/// a number per slot, each bumped on reuse, gave a store made after wrapping past `u32::MAX`
/// a start below generations just used.
#[derive(Debug)]
pub(crate) struct FrameStore<T> {
    slots: Vec<(u32, Slot<T>)>,
    /// The last slot freed (`NO_SLOT`: none is free).
    free: u32,
    len: u32,
    /// The generation of the next frame put in (wrapping).
    next_generation: u32,
}

/// A slot of the store: a frame, or free, naming the slot freed before it.
#[derive(Debug)]
enum Slot<T> {
    Full(T),
    Free { next: u32 },
}

/// The end of the free list.
const NO_SLOT: u32 = u32::MAX;

impl<T> Default for FrameStore<T> {
    fn default() -> Self {
        FrameStore {
            slots: Vec::new(),
            free: NO_SLOT,
            len: 0,
            next_generation: 0,
        }
    }
}

impl<T> FrameStore<T> {
    /// An empty store whose slots start at generation `epoch` (from [`next_epoch`] of the
    /// store before it), so that no key of that store names a frame of this one.
    ///
    /// [`next_epoch`]: Self::next_epoch
    pub(crate) fn starting_at(epoch: u32) -> Self {
        FrameStore {
            next_generation: epoch,
            ..Self::default()
        }
    }

    /// The generation this store would give next: where a store made after it starts, so
    /// the two give the same key only 2^32 frames apart.
    pub(crate) fn next_epoch(&self) -> u32 {
        self.next_generation
    }

    pub(crate) fn insert(&mut self, value: T) -> FrameKey {
        self.len += 1;
        let new_generation = self.next_generation;
        self.next_generation = new_generation.wrapping_add(1);
        if let Some((generation, slot)) = self.slots.get_mut(self.free as usize) {
            debug_assert!(
                matches!(slot, Slot::Free { .. }),
                "the free list names a full slot"
            );
            let index = self.free;
            if let Slot::Free { next } = *slot {
                self.free = next;
            }
            *slot = Slot::Full(value);
            *generation = new_generation;
            FrameKey {
                index,
                generation: new_generation,
            }
        } else {
            self.slots.push((new_generation, Slot::Full(value)));
            FrameKey {
                index: (self.slots.len() - 1) as u32,
                generation: new_generation,
            }
        }
    }

    pub(crate) fn get(&self, key: FrameKey) -> Option<&T> {
        match self.slots.get(key.index as usize) {
            Some((generation, Slot::Full(value))) if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: FrameKey) -> Option<&mut T> {
        match self.slots.get_mut(key.index as usize) {
            Some((generation, Slot::Full(value))) if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: FrameKey) -> Option<T> {
        match self.slots.get_mut(key.index as usize) {
            Some((generation, slot @ Slot::Full(_))) if *generation == key.generation => {
                let next = self.free;
                self.free = key.index;
                self.len -= 1;
                match core::mem::replace(slot, Slot::Free { next }) {
                    Slot::Full(value) => Some(value),
                    Slot::Free { .. } => None,
                }
            }
            _ => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// Gives the slab's memory back when it holds nothing (a bulk transfer may have grown
    /// it to thousands of slots).
    pub(crate) fn trim(&mut self) {
        if self.len > 0 || self.slots.is_empty() {
            return;
        }
        self.slots = Vec::new();
        self.free = NO_SLOT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn keys_from_before_a_trim_stay_stale() {
        let mut s = FrameStore::default();
        let keys: Vec<FrameKey> = (0..100).map(|i| s.insert(i)).collect();
        for &k in &keys {
            s.remove(k);
        }
        s.trim();
        assert_eq!(s.slots.capacity(), 0, "memory given back");
        let fresh: Vec<FrameKey> = (0..100).map(|i| s.insert(1000 + i)).collect();
        for &k in &keys {
            assert_eq!(s.get(k), None);
            assert_eq!(s.remove(k), None);
        }
        assert_eq!(s.len(), 100);
        assert_eq!(s.get(fresh[0]), Some(&1000));
    }

    /// A store made after another, from its `next_epoch`, gives no key the one before gave:
    /// a key of the old store finds nothing in the new one.
    #[test]
    fn keys_of_a_store_given_back_find_nothing_in_the_next() {
        let mut old = FrameStore::default();
        let keys: Vec<FrameKey> = (0..10).map(|i| old.insert(i)).collect();
        for &k in &keys[..5] {
            old.remove(k);
        }
        let mut new = FrameStore::starting_at(old.next_epoch());
        let fresh: Vec<FrameKey> = (0..10).map(|i| new.insert(100 + i)).collect();
        for k in &keys {
            assert_eq!(new.get(*k), None, "{k:?}");
            assert!(!fresh.contains(k));
        }
        assert_eq!(FrameStore::<u8>::starting_at(7).next_epoch(), 7);
    }

    /// Past `u32::MAX` the generations wrap, and a store made after the wrap still gives no
    /// key the one before gave (the scenario a number per slot got wrong: slots at
    /// `u32::MAX` and at 1 made the next store start at 0, and reissue a key just used).
    #[test]
    fn keys_stay_distinct_across_the_wrap_of_generations_and_stores() {
        let mut old = FrameStore::starting_at(u32::MAX - 1);
        let a = old.insert(1);
        let b = old.insert(2);
        old.remove(a);
        old.remove(b);
        let c = old.insert(3);
        old.remove(c);
        let d = old.insert(4);
        old.remove(d);
        let given: Vec<FrameKey> = vec![a, b, c, d];
        let mut new = FrameStore::starting_at(old.next_epoch());
        for i in 0..8 {
            let k = new.insert(10 + i);
            assert!(!given.contains(&k), "{k:?} was given by the store before");
        }
        for k in &given {
            assert_eq!(new.get(*k), None, "{k:?}");
        }
        // Within one store too: a trim keeps counting.
        old.trim();
        for i in 0..8 {
            let k = old.insert(20 + i);
            assert!(!given.contains(&k), "{k:?} given again after a trim");
        }
    }

    /// Freed slots are reused last freed first, each once, before the slab grows.
    #[test]
    fn freed_slots_are_reused_before_the_slab_grows() {
        let mut s = FrameStore::default();
        let keys: Vec<FrameKey> = (0..5).map(|i| s.insert(i)).collect();
        for &k in &[keys[1], keys[3], keys[0]] {
            assert!(s.remove(k).is_some());
            assert_eq!(s.remove(k), None, "removed once");
        }
        assert_eq!(s.len(), 2);
        let reused: Vec<u32> = (0..4).map(|i| s.insert(10 + i).index).collect();
        assert_eq!(reused, [0, 3, 1, 5], "last freed first, then a new slot");
        assert_eq!(s.slots.len(), 6);
        assert_eq!(s.len(), 6);
        for (i, k) in keys.iter().enumerate() {
            let expect = [None, None, Some(2), None, Some(4)][i];
            assert_eq!(s.get(*k).copied(), expect, "key {i}");
        }
    }
}
