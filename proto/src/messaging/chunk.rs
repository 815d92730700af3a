//! Chunking: splitting a message too large for one datagram, and bounded reassembly.
//!
//! Every chunk of a message carries the message's channel sequence, its index and the chunk
//! count; all chunks but the last carry exactly [`Config::chunk_payload`](crate::Config::chunk_payload)
//! bytes, so the receiver knows the size of what it is assembling from the first chunk on.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};

use crate::time::Instant;
use crate::wire::ChunkInfo;

/// How far a chunked message has arrived, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The message's sequence on its channel.
    pub sequence: u16,
    /// Chunks received so far.
    pub chunks_received: u16,
    /// Chunks in the message.
    pub chunks_total: u16,
    /// Payload bytes received so far.
    pub bytes_received: usize,
}

/// A message being reassembled from its chunks. The chunks from the first on are copied
/// into one buffer of the whole message's size as they come in order (so nothing pins the
/// datagrams they came in, and the complete message is handed out without another copy);
/// a chunk that comes ahead of a gap is copied aside until the gap fills. The buffer is
/// made by the first chunk, not before, and never zeroed: a peer that starts messages with
/// their last chunks (one byte each) makes no whole-message buffer at all.
#[derive(Debug)]
pub(crate) struct ReassemblyBuffer {
    /// Chunks `0..k`, in order.
    data: BytesMut,
    /// Chunks past the first gap, by index, each its own copy. (A map, not a sorted
    /// vector: a peer picks the order, and chunks sent from both ends towards the middle
    /// made each insertion move half of those set aside, quadratic in the chunk count.)
    ahead: BTreeMap<u16, Bytes>,
    /// Bit `i`: chunk `i` is in.
    have: Vec<u64>,
    count: u16,
    received: u16,
    bytes: usize,
    /// Bytes charged for the whole message while it is reassembled ([`reservation`]).
    reserved: usize,
    pub(crate) started_at: Instant,
}

/// What adding a chunk did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChunkAdded {
    /// Stored; this many payload bytes more are in.
    Stored(usize),
    /// Already had it.
    Duplicate,
    /// The chunk does not fit this message (different count, or a wrong size).
    Inconsistent,
}

impl ReassemblyBuffer {
    /// A buffer for a message of `count` chunks, charged its whole reservation
    /// ([`reservation`]) from the start.
    pub(crate) fn new(count: u16, chunk_payload: usize, now: Instant) -> Self {
        ReassemblyBuffer {
            data: BytesMut::new(),
            ahead: BTreeMap::new(),
            have: vec![0; usize::from(count).div_ceil(64)],
            count,
            received: 0,
            bytes: 0,
            reserved: reservation(count, chunk_payload),
            started_at: now,
        }
    }

    /// Adds chunk `index` of `count`. `chunk_payload` is the size every chunk but the last
    /// must have.
    pub(crate) fn add(
        &mut self,
        index: u16,
        count: u16,
        payload: &[u8],
        chunk_payload: usize,
    ) -> ChunkAdded {
        if !self.fits(index, count, payload.len(), chunk_payload) {
            return ChunkAdded::Inconsistent;
        }
        if self.has(index) {
            return ChunkAdded::Duplicate;
        }
        if usize::from(index) * chunk_payload == self.data.len() {
            if self.data.capacity() == 0 {
                self.data = BytesMut::with_capacity(self.reserved);
            }
            self.data.extend_from_slice(payload);
            // The gap this chunk filled may have been the last before chunks set aside.
            while let Some(next) = self.ahead.first_entry() {
                if usize::from(*next.key()) * chunk_payload != self.data.len() {
                    break;
                }
                self.data.extend_from_slice(&next.remove());
            }
        } else {
            self.ahead.insert(index, Bytes::copy_from_slice(payload));
        }
        self.have[usize::from(index / 64)] |= 1 << (index % 64);
        self.received += 1;
        self.bytes += payload.len();
        ChunkAdded::Stored(payload.len())
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.received == self.count
    }

    /// Whether chunk `index` of `count`, `len` bytes long, belongs to this message: every
    /// chunk but the last is `chunk_payload` bytes, the last 1 to `chunk_payload`.
    fn fits(&self, index: u16, count: u16, len: usize, chunk_payload: usize) -> bool {
        if count != self.count || index >= count {
            return false;
        }
        if index + 1 == count {
            len > 0 && len <= chunk_payload
        } else {
            len == chunk_payload
        }
    }

    /// Whether `chunk`, `len` bytes long, is the one chunk still missing, which
    /// [`Self::add`] will take: admission counts the message complete on its word, so it
    /// makes every check `add` makes.
    pub(crate) fn completed_by(&self, chunk: ChunkInfo, len: usize, chunk_payload: usize) -> bool {
        self.fits(chunk.index, chunk.count, len, chunk_payload)
            && !self.has(chunk.index)
            && self.received + 1 == self.count
    }

    pub(crate) fn has(&self, index: u16) -> bool {
        self.have
            .get(usize::from(index / 64))
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Bytes charged for the whole message while it is reassembled (what is allocated
    /// stays under twice this: the message's buffer, and chunks set aside before it).
    pub(crate) fn reserved(&self) -> usize {
        self.reserved
    }

    pub(crate) fn progress(&self, sequence: u16) -> Progress {
        Progress {
            sequence,
            chunks_received: self.received,
            chunks_total: self.count,
            bytes_received: self.bytes,
        }
    }

    /// The whole message. Call only when complete (every chunk is then in `data`).
    pub(crate) fn assemble(self) -> Bytes {
        debug_assert!(self.ahead.is_empty());
        self.data.freeze()
    }
}

/// Bytes reserved for a message of `count` chunks while it is reassembled.
pub(crate) fn reservation(count: u16, chunk_payload: usize) -> usize {
    usize::from(count) * chunk_payload
}

/// Splits `payload` into chunks of `chunk_payload` bytes (the last one shorter), without
/// copying: each chunk is a slice of the same buffer.
pub(crate) fn chunk_slice(payload: &Bytes, index: u16, chunk_payload: usize) -> Bytes {
    let start = usize::from(index) * chunk_payload;
    let end = (start + chunk_payload).min(payload.len());
    payload.slice(start..end)
}

/// Number of chunks for a payload of `len` bytes; 1 means it is sent whole.
pub(crate) fn chunk_count(len: usize, chunk_payload: usize) -> usize {
    len.div_ceil(chunk_payload).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks sent from both ends towards the middle (each one set aside lands in the
    /// middle of those before it) reassemble into the message.
    #[test]
    fn chunks_from_both_ends_towards_the_middle_reassemble() {
        const N: u16 = 20_000;
        let payload = Bytes::from((0..usize::from(N) * 4).map(|i| i as u8).collect::<Vec<_>>());
        let mut r = ReassemblyBuffer::new(N, 4, Instant::ZERO);
        let (mut low, mut high) = (1, N - 1);
        while low <= high {
            for i in [low, high] {
                if !r.has(i) {
                    assert_eq!(
                        r.add(i, N, &chunk_slice(&payload, i, 4), 4),
                        ChunkAdded::Stored(4)
                    );
                }
            }
            (low, high) = (low + 1, high - 1);
        }
        assert!(!r.is_complete(), "the first chunk is missing");
        assert_eq!(
            r.add(0, N, &chunk_slice(&payload, 0, 4), 4),
            ChunkAdded::Stored(4)
        );
        assert!(r.is_complete());
        assert_eq!(r.assemble(), payload);
    }

    #[test]
    fn reassembles_out_of_order_and_rejects_inconsistent_chunks() {
        let payload = Bytes::from((0..25u8).collect::<Vec<_>>());
        let n = chunk_count(payload.len(), 10) as u16;
        assert_eq!(n, 3);
        let mut r = ReassemblyBuffer::new(n, 10, Instant::ZERO);
        assert_eq!(
            r.add(2, n, &chunk_slice(&payload, 2, 10), 10),
            ChunkAdded::Stored(5)
        );
        assert_eq!(
            r.add(0, n, &chunk_slice(&payload, 0, 10), 10),
            ChunkAdded::Stored(10)
        );
        assert_eq!(
            r.add(0, n, &chunk_slice(&payload, 0, 10), 10),
            ChunkAdded::Duplicate
        );
        assert_eq!(
            r.add(1, 4, &chunk_slice(&payload, 1, 10), 10),
            ChunkAdded::Inconsistent
        );
        assert_eq!(r.add(1, n, b"short", 10), ChunkAdded::Inconsistent);
        assert!(!r.is_complete());
        assert_eq!(
            r.add(1, n, &chunk_slice(&payload, 1, 10), 10),
            ChunkAdded::Stored(10)
        );
        assert!(r.is_complete());
        assert_eq!(r.assemble(), payload);
    }

    #[test]
    fn a_message_started_by_its_last_chunk_makes_no_whole_message_buffer() {
        // A peer can start many large messages with one byte each (their last chunks): none
        // of them may cost an allocation (or zeroing) of the whole message's size.
        let count = 900;
        let mut r = ReassemblyBuffer::new(count, 1_000, Instant::ZERO);
        assert_eq!(r.reserved(), 900_000);
        assert_eq!(r.add(count - 1, count, &[7], 1_000), ChunkAdded::Stored(1));
        assert_eq!(
            r.add(5, count, &[5; 1_000], 1_000),
            ChunkAdded::Stored(1_000)
        );
        assert_eq!(r.data.capacity(), 0);
        assert_eq!(r.ahead.len(), 2);
        // The first chunk makes the buffer; chunks in order go straight into it.
        for i in 0..5 {
            r.add(i, count, &[i as u8; 1_000], 1_000);
        }
        assert!(r.data.capacity() >= 900_000);
        assert_eq!(
            r.data.len(),
            6_000,
            "chunk 5 joined once the gap before it filled"
        );
        assert_eq!(r.ahead.len(), 1);
        for i in 6..count - 1 {
            r.add(i, count, &[i as u8; 1_000], 1_000);
        }
        assert!(r.is_complete());
        let message = r.assemble();
        assert_eq!(message.len(), 899_001);
        assert_eq!(message[4_999], 4);
        assert_eq!(message[5_000], 5);
        assert_eq!(message[898_999], (898 % 256) as u8);
        assert_eq!(message[899_000], 7);
    }
}
