//! Chunking: splitting a message too large for one datagram, and bounded reassembly.
//!
//! Every chunk of a message carries the message's channel sequence, its index and the chunk
//! count; all chunks but the last carry exactly [`Config::chunk_payload`](crate::Config::chunk_payload)
//! bytes, so the receiver knows the size of what it is assembling from the first chunk on.

use alloc::vec;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};

use crate::time::Instant;

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

/// A message being reassembled from its chunks.
#[derive(Debug)]
pub(crate) struct ReassemblyBuffer {
    parts: Vec<Option<Bytes>>,
    received: u16,
    bytes: usize,
    pub(crate) started_at: Instant,
}

/// What adding a chunk did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChunkAdded {
    /// Stored; this many bytes more are held.
    Stored(usize),
    /// Already had it.
    Duplicate,
    /// The chunk does not fit this message (different count, or a wrong size).
    Inconsistent,
}

impl ReassemblyBuffer {
    pub(crate) fn new(count: u16, now: Instant) -> Self {
        ReassemblyBuffer {
            parts: vec![None; usize::from(count)],
            received: 0,
            bytes: 0,
            started_at: now,
        }
    }

    /// Adds chunk `index` of `count`. `chunk_payload` is the size every chunk but the last
    /// must have.
    pub(crate) fn add(
        &mut self,
        index: u16,
        count: u16,
        payload: Bytes,
        chunk_payload: usize,
    ) -> ChunkAdded {
        if usize::from(count) != self.parts.len() {
            return ChunkAdded::Inconsistent;
        }
        let last = index + 1 == count;
        let size_ok = if last {
            !payload.is_empty() && payload.len() <= chunk_payload
        } else {
            payload.len() == chunk_payload
        };
        if !size_ok {
            return ChunkAdded::Inconsistent;
        }
        let Some(slot) = self.parts.get_mut(usize::from(index)) else {
            return ChunkAdded::Inconsistent;
        };
        if slot.is_some() {
            return ChunkAdded::Duplicate;
        }
        let len = payload.len();
        *slot = Some(payload);
        self.received += 1;
        self.bytes += len;
        ChunkAdded::Stored(len)
    }

    pub(crate) fn is_complete(&self) -> bool {
        usize::from(self.received) == self.parts.len()
    }

    pub(crate) fn has(&self, index: u16) -> bool {
        matches!(self.parts.get(usize::from(index)), Some(Some(_)))
    }

    /// Bytes reserved for the whole message while it is reassembled.
    pub(crate) fn reserved(&self, chunk_payload: usize) -> usize {
        self.parts.len() * chunk_payload
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn progress(&self, sequence: u16) -> Progress {
        Progress {
            sequence,
            chunks_received: self.received,
            chunks_total: self.parts.len() as u16,
            bytes_received: self.bytes,
        }
    }

    /// Joins the chunks into one message (one copy). Call only when complete.
    pub(crate) fn assemble(self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.bytes);
        for part in self.parts.into_iter().flatten() {
            out.extend_from_slice(&part);
        }
        out.freeze()
    }
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

    #[test]
    fn reassembles_out_of_order_and_rejects_inconsistent_chunks() {
        let payload = Bytes::from((0..25u8).collect::<Vec<_>>());
        let n = chunk_count(payload.len(), 10) as u16;
        assert_eq!(n, 3);
        let mut r = ReassemblyBuffer::new(n, Instant::ZERO);
        assert_eq!(
            r.add(2, n, chunk_slice(&payload, 2, 10), 10),
            ChunkAdded::Stored(5)
        );
        assert_eq!(
            r.add(0, n, chunk_slice(&payload, 0, 10), 10),
            ChunkAdded::Stored(10)
        );
        assert_eq!(
            r.add(0, n, chunk_slice(&payload, 0, 10), 10),
            ChunkAdded::Duplicate
        );
        assert_eq!(
            r.add(1, 4, chunk_slice(&payload, 1, 10), 10),
            ChunkAdded::Inconsistent
        );
        assert_eq!(
            r.add(1, n, Bytes::from_static(b"short"), 10),
            ChunkAdded::Inconsistent
        );
        assert!(!r.is_complete());
        assert_eq!(
            r.add(1, n, chunk_slice(&payload, 1, 10), 10),
            ChunkAdded::Stored(10)
        );
        assert!(r.is_complete());
        assert_eq!(r.assemble(), payload);
    }
}
