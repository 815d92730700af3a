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

/// A message being reassembled from its chunks, straight into one buffer of the whole
/// message's size: chunks are copied in as they arrive (so nothing pins the datagrams they
/// came in), and the complete message is handed out without another copy.
#[derive(Debug)]
pub(crate) struct ReassemblyBuffer {
    data: BytesMut,
    /// Bit `i`: chunk `i` is in.
    have: Vec<u64>,
    count: u16,
    received: u16,
    /// Known once the last chunk (the only one that may be short) is in.
    len: Option<usize>,
    bytes: usize,
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
    /// A buffer for a message of `count` chunks; allocates its whole reservation
    /// ([`reservation`]) at once.
    pub(crate) fn new(count: u16, chunk_payload: usize, now: Instant) -> Self {
        ReassemblyBuffer {
            data: BytesMut::zeroed(reservation(count, chunk_payload)),
            have: vec![0; usize::from(count).div_ceil(64)],
            count,
            received: 0,
            len: None,
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
        payload: &[u8],
        chunk_payload: usize,
    ) -> ChunkAdded {
        if count != self.count || index >= count {
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
        if self.has(index) {
            return ChunkAdded::Duplicate;
        }
        let start = usize::from(index) * chunk_payload;
        let Some(dst) = self.data.get_mut(start..start + payload.len()) else {
            return ChunkAdded::Inconsistent;
        };
        dst.copy_from_slice(payload);
        self.have[usize::from(index / 64)] |= 1 << (index % 64);
        if last {
            self.len = Some(start + payload.len());
        }
        self.received += 1;
        self.bytes += payload.len();
        ChunkAdded::Stored(payload.len())
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.received == self.count
    }

    pub(crate) fn has(&self, index: u16) -> bool {
        self.have
            .get(usize::from(index / 64))
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Bytes allocated (and charged) for the whole message while it is reassembled.
    pub(crate) fn reserved(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn progress(&self, sequence: u16) -> Progress {
        Progress {
            sequence,
            chunks_received: self.received,
            chunks_total: self.count,
            bytes_received: self.bytes,
        }
    }

    /// The whole message. Call only when complete.
    pub(crate) fn assemble(mut self) -> Bytes {
        self.data.truncate(self.len.unwrap_or(0));
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
}
