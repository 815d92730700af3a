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
}
