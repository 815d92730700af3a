//! The record of a run: a bounded log of datagrams and a hash over everything that happened.

use core::fmt;
use core::hash::{Hash, Hasher};
use core::net::SocketAddr;
use std::collections::VecDeque;

use shoal_proto::{Event, Instant, Relay};

use crate::link::DropCause;
use crate::NodeId;

/// What the network did with one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fate {
    /// It will arrive at `at` (`reordered`: it was held back so later ones overtake it).
    Delivered {
        /// Arrival time.
        at: Instant,
        /// Whether the link's reordering held it back.
        reordered: bool,
    },
    /// A duplicate the network made of the datagram before it; arrives at `at`.
    Duplicate {
        /// Arrival time of the copy.
        at: Instant,
    },
    /// Dropped.
    Dropped(DropCause),
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Delivered {
                at,
                reordered: false,
            } => write!(f, "delivered at {}us", at.as_micros()),
            Fate::Delivered {
                at,
                reordered: true,
            } => {
                write!(f, "delivered at {}us (reordered)", at.as_micros())
            }
            Fate::Duplicate { at } => write!(f, "duplicate delivered at {}us", at.as_micros()),
            Fate::Dropped(cause) => write!(f, "dropped ({cause})"),
        }
    }
}

/// One datagram as the simulated network saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceRecord {
    /// When it was sent.
    pub time: Instant,
    /// The sending node.
    pub from_node: NodeId,
    /// The source address the receiver sees.
    pub from: SocketAddr,
    /// The destination address.
    pub to: SocketAddr,
    /// The node it was routed to when sent (through any NATs), if any.
    pub to_node: Option<NodeId>,
    /// Datagram length in bytes.
    pub len: usize,
    /// What happened to it.
    pub fate: Fate,
}

impl fmt::Display for TraceRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>12}us {} -> {} {} bytes: {}",
            self.time.as_micros(),
            self.from,
            self.to,
            self.len,
            self.fate
        )
    }
}

/// The most recent datagrams, up to a capacity.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    pub(crate) records: VecDeque<TraceRecord>,
    pub(crate) capacity: usize,
    pub(crate) evicted: u64,
}

impl Trace {
    pub(crate) fn push(&mut self, record: TraceRecord) {
        if self.capacity == 0 {
            self.evicted += 1;
            return;
        }
        if self.records.len() == self.capacity {
            self.records.pop_front();
            self.evicted += 1;
        }
        self.records.push_back(record);
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over 64-bit words (bytes are packed little-endian into words, the tail padded and
/// followed by its length). Fast, deterministic on every platform, not cryptographic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TraceHasher {
    state: u64,
}

impl Default for TraceHasher {
    fn default() -> Self {
        TraceHasher { state: FNV_OFFSET }
    }
}

impl TraceHasher {
    pub(crate) fn word(&mut self, w: u64) {
        self.state ^= w;
        self.state = self.state.wrapping_mul(FNV_PRIME);
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(w));
        self.word(bytes.len() as u64);
    }

    pub(crate) fn addr(&mut self, a: SocketAddr) {
        match a {
            SocketAddr::V4(v4) => {
                self.word(u64::from(u32::from(*v4.ip())) << 16 | u64::from(v4.port()))
            }
            SocketAddr::V6(v6) => {
                self.bytes(&v6.ip().octets());
                self.word(u64::from(v6.port()));
            }
        }
    }

    pub(crate) fn datagram(&mut self, record: &TraceRecord, payload: &[u8]) {
        self.word(0xD6);
        self.word(record.time.as_micros());
        self.word(u64::from(record.from_node.0));
        self.addr(record.from);
        self.addr(record.to);
        match record.fate {
            Fate::Delivered { at, reordered } => {
                self.word(1);
                self.word(at.as_micros());
                self.word(u64::from(reordered));
            }
            Fate::Duplicate { at } => {
                self.word(2);
                self.word(at.as_micros());
            }
            Fate::Dropped(cause) => {
                self.word(3);
                self.word(cause as u64);
            }
        }
        self.bytes(payload);
    }

    pub(crate) fn event(&mut self, now: Instant, node: NodeId, event: &Event) {
        self.word(0xE7);
        self.word(now.as_micros());
        self.word(u64::from(node.0));
        match event {
            // The common case, hashed field by field.
            Event::Message {
                conn,
                channel,
                sequence,
                payload,
                relay,
            } => {
                self.word(1);
                conn.hash(&mut WordSink(self));
                self.word(u64::from(*channel) << 32 | u64::from(*sequence));
                self.relay(relay);
                self.bytes(payload);
            }
            // Requests and responses too: their `Debug` form spells the payload out byte by
            // byte.
            Event::Request {
                conn,
                request,
                payload,
                relay,
            } => {
                self.word(2);
                conn.hash(&mut WordSink(self));
                request.hash(&mut WordSink(self));
                self.relay(relay);
                self.bytes(payload);
            }
            Event::Response { conn, id, payload } => {
                self.word(3);
                conn.hash(&mut WordSink(self));
                self.word(id.0);
                self.bytes(payload);
            }
            // Everything else through its `Debug` form, which names every field (and keeps
            // working when the protocol grows new events).
            other => self.debug(other),
        }
    }

    fn relay(&mut self, relay: &Option<Relay>) {
        match relay {
            Some(r) => self
                .word(u64::from(r.owner) << 32 | r.target.map_or(u64::from(u32::MAX), u64::from)),
            None => self.word(u64::MAX),
        }
    }

    fn debug(&mut self, value: &dyn fmt::Debug) {
        use fmt::Write;
        let mut w = DebugHasher {
            hasher: self,
            pending: [0; 8],
            len: 0,
            total: 0,
        };
        // Writing into a hasher cannot fail.
        let _ = write!(w, "{value:?}");
        w.flush();
    }

    pub(crate) fn finish(&self) -> u64 {
        self.state
    }
}

/// Feeds a value's [`Hash`] into a [`TraceHasher`], a word per integer: far cheaper than its
/// `Debug` text, for the fields hashed on every event.
struct WordSink<'a>(&'a mut TraceHasher);

impl Hasher for WordSink<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.bytes(bytes);
    }
    fn write_u8(&mut self, i: u8) {
        self.0.word(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.0.word(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.0.word(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0.word(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.0.word(i as u64);
    }
    /// Never read: the state is the [`TraceHasher`]'s.
    fn finish(&self) -> u64 {
        self.0.state
    }
}

/// Feeds formatted text into a [`TraceHasher`] word by word without allocating.
struct DebugHasher<'a> {
    hasher: &'a mut TraceHasher,
    pending: [u8; 8],
    len: usize,
    total: u64,
}

impl DebugHasher<'_> {
    fn flush(&mut self) {
        self.pending[self.len..].fill(0);
        self.hasher.word(u64::from_le_bytes(self.pending));
        self.hasher.word(self.total);
        self.len = 0;
    }
}

impl fmt::Write for DebugHasher<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.pending[self.len] = b;
            self.len += 1;
            if self.len == 8 {
                self.hasher.word(u64::from_le_bytes(self.pending));
                self.len = 0;
            }
        }
        self.total += s.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_byte_and_length() {
        let h = |b: &[u8]| {
            let mut t = TraceHasher::default();
            t.bytes(b);
            t.finish()
        };
        assert_ne!(h(b"abcdefgh1"), h(b"abcdefgh2"));
        assert_ne!(h(b"abc"), h(b"abc\0"));
        assert_eq!(h(b"same"), h(b"same"));
    }

    #[test]
    fn trace_keeps_the_most_recent_records() {
        let mut t = Trace {
            capacity: 2,
            ..Trace::default()
        };
        for i in 0..5u64 {
            t.push(TraceRecord {
                time: Instant::from_micros(i),
                from_node: NodeId(0),
                from: "10.0.0.1:1".parse().expect("valid address"),
                to: "10.0.0.2:1".parse().expect("valid address"),
                to_node: Some(NodeId(1)),
                len: 10,
                fate: Fate::Dropped(DropCause::RandomLoss),
            });
        }
        assert_eq!(t.evicted, 3);
        let times: Vec<u64> = t.records.iter().map(|r| r.time.as_micros()).collect();
        assert_eq!(times, vec![3, 4]);
    }
}
