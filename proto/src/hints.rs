//! Memory hints: where the state a call is about to read lies (see
//! [`Endpoint::memory_hints`](crate::Endpoint::memory_hints)).
//!
//! With thousands of connections, a connection's state is out of the cache whenever its
//! datagram arrives, and its fields and buffers are read one miss after another. A driver
//! that knows what comes next (the datagrams of a receive batch, the simulator's next nodes)
//! can ask where that state is and prefetch it while it serves what comes before, so the
//! misses overlap instead of adding up. Only addresses leave here: nothing is read through
//! them and nothing changes, so a hint is never wrong in any way that matters.

use alloc::collections::VecDeque;
use core::mem::size_of_val;

use crate::event::ConnectionHandle;

/// What [`Endpoint::memory_hints`](crate::Endpoint::memory_hints) names the memory of.
#[derive(Clone, Copy, Debug)]
pub enum MemoryHint<'a> {
    /// The endpoint's own hot fields and buffers, and its connections if it has at most two
    /// (a client): what any input to it reads.
    Endpoint,
    /// The connection this datagram is routed to (by the connection id in its header), as
    /// `handle_datagram` will read it.
    Datagram(&'a [u8]),
    /// This connection, as a send to it reads it. (A closed connection's handle names
    /// whichever connection has its slot now: a hint is only a hint.)
    Connection(ConnectionHandle),
    /// The connection this many places down the queue `poll_transmit` serves: 0 is the next.
    Transmit(usize),
}

impl MemoryHint<'_> {
    /// The stages this hint comes in: stage `s` names memory found through what stage
    /// `s - 1` named, so a driver names stage `s` for the item `stages() - s` places ahead.
    pub fn stages(&self) -> u8 {
        match self {
            // Its lines; its buffers and slot table; then a connection's two stages.
            MemoryHint::Endpoint => 4,
            // A connection's two stages: the struct, then what hangs off it. (In the
            // simulator a third, for the channels' queues or the coding logs, was within the
            // 2% the measurement resolves; the struct alone ran 15-20% slower.)
            _ => 2,
        }
    }
}

/// Where hints go: an address and a length in bytes (generic, so that a driver's prefetch
/// is inlined into the walk rather than called through a pointer per region).
pub(crate) trait Sink: FnMut(*const u8, usize) {}
impl<F: FnMut(*const u8, usize)> Sink for F {}

/// The memory of `x` itself.
pub(crate) fn val<T>(sink: &mut impl Sink, x: &T) {
    sink((x as *const T).cast(), size_of_val(x));
}

/// The elements of `s`.
pub(crate) fn slice<T>(sink: &mut impl Sink, s: &[T]) {
    if !s.is_empty() {
        sink(s.as_ptr().cast(), size_of_val(s));
    }
}

/// The bytes just before address `at` and the line at it: where a log's newest entries end
/// (read when coding) and the next begins (written). `at` is only an address: nothing is
/// read through it.
pub(crate) fn around(sink: &mut impl Sink, at: usize) {
    const BEFORE: usize = 128;
    sink(
        core::ptr::without_provenance(at.saturating_sub(BEFORE)),
        BEFORE + 64,
    );
}

/// The first and the last element of `d` (where a queue is read and written).
pub(crate) fn deque_ends<T>(sink: &mut impl Sink, d: &VecDeque<T>) {
    if let Some(x) = d.front() {
        val(sink, x);
    }
    if let Some(x) = d.back() {
        val(sink, x);
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use crate::{Config, Endpoint, Event, Instant, MemoryHint, Protection};

    fn config() -> Config {
        Config {
            protection: Protection::None,
            ..Config::default()
        }
    }

    /// Every stage of every hint names memory, and a datagram's connection is found
    /// through its header: each stage of a datagram hint names what the same stage of a
    /// hint for its connection's handle names.
    #[test]
    fn a_datagram_hint_names_the_connection_it_is_routed_to() {
        let now = Instant::ZERO;
        let mut server = Endpoint::new(config()).unwrap();
        let mut client = Endpoint::new(config()).unwrap();
        let server_addr = "10.0.0.1:7000".parse().unwrap();
        let client_addr = "10.0.0.2:7000".parse().unwrap();
        client.connect(now, server_addr, b"").unwrap();
        let mut buf = [0u8; 1500];
        let mut conn = None;
        let mut last_to_server = Vec::new();
        for _ in 0..8 {
            while let Some(t) = client.poll_transmit(now, &mut buf) {
                last_to_server = buf[..t.len].to_vec();
                server.handle_datagram(now, client_addr, &buf[..t.len]);
            }
            while let Some(t) = server.poll_transmit(now, &mut buf) {
                client.handle_datagram(now, server_addr, &buf[..t.len]);
            }
            while let Some(e) = server.poll_event() {
                if let Event::Connected { conn: c, .. } = e {
                    conn = Some(c);
                }
            }
            while client.poll_event().is_some() {}
        }
        let conn = conn.expect("connected");
        let named = |e: &Endpoint, hint: MemoryHint<'_>, stage| {
            let mut out = Vec::new();
            e.memory_hints(hint, stage, &mut |p, len| out.push((p as usize, len)));
            out
        };
        for stage in 0..MemoryHint::Connection(conn).stages() {
            let by_handle = named(&server, MemoryHint::Connection(conn), stage);
            assert!(!by_handle.is_empty(), "stage {stage}");
            let by_datagram = named(&server, MemoryHint::Datagram(&last_to_server), stage);
            assert_eq!(by_datagram, by_handle, "stage {stage}");
        }
        for stage in 0..MemoryHint::Endpoint.stages() {
            assert!(
                !named(&client, MemoryHint::Endpoint, stage).is_empty(),
                "stage {stage}"
            );
        }
        // Garbage names nothing (and does not panic).
        for junk in [&[][..], &[0xff; 3][..], &[0x40; 64][..]] {
            for stage in 0..4 {
                let _ = named(&server, MemoryHint::Datagram(junk), stage);
            }
        }
        assert!(named(&server, MemoryHint::Transmit(1_000), 1).is_empty());
    }
}
