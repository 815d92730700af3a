//! The endpoint's lookups of a connection's slot by peer address and by connection id.
//!
//! A client endpoint usually holds one connection, so its entry is kept inline: a hash
//! table would cost a heap block (and its allocator header) per table per client, which is
//! most of what a process running thousands of clients (a load test, the simulator) spends
//! on lookups. A second entry moves everything into a hash table with the endpoint's seeded
//! hasher, where it stays.

use core::hash::Hash;

use crate::hash::{HashMap, SeededState};

/// A map from `K` to a slot index: one entry inline, a seeded hash table from the second.
#[derive(Debug)]
pub(crate) enum SlotIndex<K> {
    /// At most one entry, and the hasher a table would be made with.
    One(Option<(K, u32)>, SeededState),
    Many(HashMap<K, u32>),
}

impl<K: Eq + Hash> SlotIndex<K> {
    pub(crate) fn new(hasher: SeededState) -> Self {
        SlotIndex::One(None, hasher)
    }

    pub(crate) fn get(&self, key: &K) -> Option<&u32> {
        match self {
            SlotIndex::One(entry, _) => entry.as_ref().filter(|(k, _)| k == key).map(|(_, v)| v),
            SlotIndex::Many(map) => map.get(key),
        }
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`'s slot, returning the one it replaced.
    pub(crate) fn insert(&mut self, key: K, slot: u32) -> Option<u32> {
        match self {
            SlotIndex::One(entry, hasher) => match entry {
                None => {
                    *entry = Some((key, slot));
                    None
                }
                Some((k, v)) if *k == key => Some(core::mem::replace(v, slot)),
                Some(_) => {
                    let mut map = HashMap::with_capacity_and_hasher(2, *hasher);
                    if let Some((k, v)) = entry.take() {
                        map.insert(k, v);
                    }
                    map.insert(key, slot);
                    *self = SlotIndex::Many(map);
                    None
                }
            },
            SlotIndex::Many(map) => map.insert(key, slot),
        }
    }

    /// Sets `key`'s slot unless it has one.
    pub(crate) fn insert_if_absent(&mut self, key: K, slot: u32) {
        if !self.contains_key(&key) {
            self.insert(key, slot);
        }
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<u32> {
        match self {
            SlotIndex::One(entry, _) => {
                if entry.as_ref().is_some_and(|(k, _)| k == key) {
                    entry.take().map(|(_, v)| v)
                } else {
                    None
                }
            }
            SlotIndex::Many(map) => map.remove(key),
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            SlotIndex::One(entry, _) => usize::from(entry.is_some()),
            SlotIndex::Many(map) => map.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        InsertIfAbsent(u8, u32),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u8..6, any::<u32>()).prop_map(|(k, v)| Op::InsertIfAbsent(k, v)),
            (0u8..6).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Whatever the sequence of changes, the index answers as an ordinary map would,
        /// before and after it moves its entries into a table.
        #[test]
        fn answers_as_a_map_does(ops in proptest::collection::vec(op(), 0..40)) {
            let mut index = SlotIndex::new(SeededState::new(&crate::hash::Prf::from_key([3; 16])));
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(index.insert(k, v), model.insert(k, v)),
                    Op::InsertIfAbsent(k, v) => {
                        index.insert_if_absent(k, v);
                        model.entry(k).or_insert(v);
                    }
                    Op::Remove(k) => prop_assert_eq!(index.remove(&k), model.remove(&k)),
                }
                prop_assert_eq!(index.len(), model.len());
                for k in 0u8..6 {
                    prop_assert_eq!(index.get(&k), model.get(&k));
                    prop_assert_eq!(index.contains_key(&k), model.contains_key(&k));
                }
            }
        }
    }

    #[test]
    fn one_entry_needs_no_table() {
        let mut index = SlotIndex::new(SeededState::new(&crate::hash::Prf::from_key([3; 16])));
        index.insert(7u64, 0);
        assert!(matches!(index, SlotIndex::One(Some(_), _)));
        index.insert(7, 1);
        assert!(matches!(index, SlotIndex::One(Some((7, 1)), _)));
        index.insert(8, 2);
        assert!(matches!(index, SlotIndex::Many(_)));
    }
}
