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
/// or retransmission queue after its frame was acknowledged finds nothing.
#[derive(Debug)]
pub(crate) struct FrameStore<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
    /// Generation of newly made slots: above every generation before the last `trim`, so
    /// keys from before it stay stale.
    epoch: u32,
}

impl<T> Default for FrameStore<T> {
    fn default() -> Self {
        FrameStore {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            epoch: 0,
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
            self.slots.push((self.epoch, Some(value)));
            FrameKey {
                index: (self.slots.len() - 1) as u32,
                generation: self.epoch,
            }
        }
    }

    pub(crate) fn get(&self, key: FrameKey) -> Option<&T> {
        match self.slots.get(key.index as usize) {
            Some((generation, value)) if *generation == key.generation => value.as_ref(),
            _ => None,
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

    /// Gives the slab's memory back when it holds nothing (a bulk transfer may have grown
    /// it to thousands of slots).
    pub(crate) fn trim(&mut self) {
        if self.len > 0 || self.slots.is_empty() {
            return;
        }
        let newest = self
            .slots
            .iter()
            .map(|(g, _)| *g)
            .max()
            .unwrap_or(self.epoch);
        self.epoch = newest.wrapping_add(1);
        self.slots = Vec::new();
        self.free = Vec::new();
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
}
