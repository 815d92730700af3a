//! A first-in first-out queue that gives back a burst's room once it drains.
//!
//! The endpoint's queues fill in bursts: a thousand clients connecting at once leave a
//! thousand handshake replies to send, a busy tick a thousand events to take. A `VecDeque`
//! keeps the room of its largest burst for good, so one connect storm (or a flood of
//! Connects from an attacker, up to the queue's limit) would hold its peak memory long after
//! it ended. This one shrinks when it empties, to what its last round needed.

use alloc::collections::VecDeque;

/// A `VecDeque` that, each time it is found empty, gives back room beyond four times what
/// it held at most since it was last empty (never below `MIN_ROOM` entries): a steady load
/// keeps its room and never reallocates; a burst long past returns its memory.
#[derive(Debug)]
pub(crate) struct DrainingQueue<T, const MIN_ROOM: usize> {
    queue: VecDeque<T>,
    /// The most entries waiting at once since the queue was last found empty.
    peak: usize,
}

impl<T, const MIN_ROOM: usize> Default for DrainingQueue<T, MIN_ROOM> {
    fn default() -> Self {
        DrainingQueue {
            queue: VecDeque::new(),
            peak: 0,
        }
    }
}

impl<T, const MIN_ROOM: usize> DrainingQueue<T, MIN_ROOM> {
    pub(crate) fn push_back(&mut self, item: T) {
        self.queue.push_back(item);
        self.peak = self.peak.max(self.queue.len());
    }

    /// The oldest entry; `None` when empty, which is when room goes back.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let item = self.queue.pop_front();
        if item.is_none() {
            let need = self.peak.max(MIN_ROOM);
            if self.queue.capacity() > 4 * need {
                self.queue.shrink_to(need);
            }
            self.peak = 0;
        }
        item
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// The queue itself, to read (memory hints name its ends).
    pub(crate) fn as_deque(&self) -> &VecDeque<T> {
        &self.queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn a_drained_burst_gives_its_room_back_once_a_quieter_round_ends() {
        let mut q = DrainingQueue::<u64, 16>::default();
        for i in 0..1000 {
            q.push_back(i);
        }
        while q.pop_front().is_some() {}
        // The burst's own round needed its room: kept.
        assert!(q.as_deque().capacity() >= 1000);
        q.push_back(1);
        q.push_back(2);
        while q.pop_front().is_some() {}
        let room = q.as_deque().capacity();
        assert!((16..64).contains(&room), "room kept: {room}");
    }

    #[test]
    fn a_steady_load_keeps_its_room() {
        let mut q = DrainingQueue::<u64, 4>::default();
        for _ in 0..3 {
            for i in 0..100 {
                q.push_back(i);
            }
            while q.pop_front().is_some() {}
        }
        let room = q.as_deque().capacity();
        for _ in 0..10 {
            for i in 0..100 {
                q.push_back(i);
            }
            while q.pop_front().is_some() {}
            assert_eq!(
                q.as_deque().capacity(),
                room,
                "no reallocation under a steady load"
            );
        }
    }

    #[test]
    fn entries_leave_in_the_order_they_came() {
        let mut q = DrainingQueue::<u32, 4>::default();
        for i in 0..10 {
            q.push_back(i);
        }
        if let Some(last) = q.queue.back_mut() {
            *last = 99;
        }
        let out: Vec<u32> = core::iter::from_fn(|| q.pop_front()).collect();
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 7, 8, 99]);
        assert_eq!(q.len(), 0);
    }
}
