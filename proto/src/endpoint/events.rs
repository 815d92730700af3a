//! The event queue, bounded in bytes: each message, request or response waiting for the
//! application is charged to the endpoint and to its connection, and a connection over its
//! share has its data refused (unacknowledged, so its sender backs off and retransmits) while
//! every other connection goes on.

use alloc::boxed::Box;
use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};

use super::queue::DrainingQueue;
use crate::event::{ConnectionHandle, Event};
use crate::messaging::channel::Payload;

/// Tunnelled datagrams held between arriving on the hub connection and being handled (a
/// handful per arriving packet; more is a hub misbehaving).
const MAX_TUNNELLED: usize = 256;
/// Tunnelled datagrams held from members not introduced yet: a peer's first handshake
/// packet can arrive with (or before the application takes) the notice introducing it.
/// Past it the oldest is dropped and counted.
const MAX_HELD_UNINTRODUCED: usize = 64;

/// Bytes charged for an event besides its payload (the event itself and queue slot).
pub(crate) const EVENT_OVERHEAD: usize = 64;

/// Payloads up to this long are copied into the queue's own buffer (see
/// [`EventQueue::payloads`]); longer ones are reassembled messages in buffers of their own.
pub(crate) const COPIED_PAYLOAD: usize = 4 * 1024;
/// The payload buffer's first block; each next one doubles, up to [`PAYLOADS_MAX_SLAB`],
/// while the application keeps payloads (a block no payload is kept from is reused).
const PAYLOADS_FIRST_SLAB: usize = 128;
/// The payload buffer's largest block.
const PAYLOADS_MAX_SLAB: usize = 16 * 1024;

/// Events waiting for `poll_event`, with the bytes each is charged.
#[derive(Debug)]
pub(crate) struct EventQueue {
    queue: DrainingQueue<(Event, usize), MIN_ROOM>,
    bytes: usize,
    /// Where waiting messages' payloads live: copied out of the packet they came in (which
    /// is only borrowed while it is handled), in blocks that hold only waiting payloads. (A
    /// payload left as a slice of a shared receive buffer, as it once was, kept a whole
    /// block of datagrams that left nothing while its event waited, though charged for its
    /// own bytes alone.)
    payloads: BytesMut,
    /// Size of the next block of `payloads`.
    payloads_slab: usize,
    /// Where peer links' datagrams come in through the hub, once set (boxed: most endpoints
    /// have none, and the queue sits among the fields every datagram reads).
    tunnel: Option<Box<Tunnel>>,
}

/// The hub connection's tunnel: its messages on one channel are peer links' datagrams.
#[derive(Debug)]
struct Tunnel {
    /// The hub connection and the tunnel channel.
    hub: (ConnectionHandle, u8),
    /// Datagrams that came through it, by the user id that sent them, waiting to be handled.
    arrived: VecDeque<(u16, Bytes)>,
    /// Datagrams dropped because too many waited, or because they came from a member this
    /// one was not introduced to.
    overflow: u64,
    /// The members this one was introduced to (`Endpoint::allow_relay_peer`): the hub could
    /// otherwise have a member take key exchanges from any user id it names.
    peers: BTreeSet<u16>,
    /// Datagrams from members not introduced yet, oldest first (see
    /// `MAX_HELD_UNINTRODUCED`): handled if the introduction comes. Only datagrams of at
    /// most `mtu` bytes (nothing longer is a datagram: the tunnel channel reassembles
    /// messages of up to `max_message_size`).
    held: VecDeque<(u16, Bytes)>,
    mtu: usize,
}

/// Events the queue keeps room for however quiet it is.
const MIN_ROOM: usize = 64;

impl Default for EventQueue {
    fn default() -> Self {
        EventQueue {
            queue: DrainingQueue::default(),
            bytes: 0,
            payloads: BytesMut::new(),
            payloads_slab: PAYLOADS_FIRST_SLAB,
            tunnel: None,
        }
    }
}

impl EventQueue {
    /// Where the next event is taken from, and where the next message's payload is copied
    /// to (for `MemoryHint`). The payload block is small and reused once its payloads are
    /// dropped, so the copy lands at its tail or just before it; a store into a cold line
    /// there held up the reference count's locked increment that follows it (with 10,000
    /// clients, `BytesMut::split` was 5% of the simulator's samples).
    pub(crate) fn hints(&self, f: &mut impl crate::hints::Sink) {
        crate::hints::deque_ends(f, self.queue.as_deque());
        crate::hints::around(f, self.payloads.as_ptr().addr() + self.payloads.len());
    }

    /// Queues an event; returns the bytes charged for it (data events only: a connection's
    /// own notices are bounded by the number of connections and requests).
    pub(crate) fn push(&mut self, mut event: Event) -> usize {
        let payload = match &mut event {
            Event::Message { payload, .. }
            | Event::Request { payload, .. }
            | Event::Response { payload, .. } => core::mem::take(payload),
            _ => Bytes::new(),
        };
        self.push_with(event, Payload::Owned(payload))
    }

    /// Queues a data event whose payload (its own left empty) is `payload`, copied out of
    /// the packet it lies in if it is borrowed; see [`push`](Self::push).
    pub(crate) fn push_with(&mut self, event: Event, payload: Payload<'_>) -> usize {
        if let Event::Message {
            conn,
            channel,
            relay,
            ..
        } = &event
        {
            // (The hub always names the member a tunnelled datagram is from.)
            let owner = relay.map_or(0, |r| r.owner);
            let room = self
                .tunnel
                .as_ref()
                .filter(|t| t.hub == (*conn, *channel))
                .map(|t| (t.arrived.len() < MAX_TUNNELLED, t.peers.contains(&owner)));
            if let Some((room, introduced)) = room {
                // Copied only when it is kept: one taken now into the queue's block (it is
                // handled before this call returns), one held into a buffer of its own (it
                // may wait long, and would keep a block).
                let payload = match (room, introduced) {
                    (true, true) => Some(self.copied(payload)),
                    (true, false)
                        if self.tunnel.as_ref().is_some_and(|t| payload.len() <= t.mtu) =>
                    {
                        Some(payload.into_owned())
                    }
                    _ => None,
                };
                if let Some(t) = self.tunnel.as_mut() {
                    match payload {
                        Some(p) if introduced => t.arrived.push_back((owner, p)),
                        Some(p) => {
                            if t.held.len() >= MAX_HELD_UNINTRODUCED {
                                t.held.pop_front();
                                t.overflow += 1;
                            }
                            t.held.push_back((owner, p));
                        }
                        None => t.overflow += 1,
                    }
                }
                return 0;
            }
        }
        let mut event = event;
        let charge = match &mut event {
            Event::Message { payload: p, .. }
            | Event::Request { payload: p, .. }
            | Event::Response { payload: p, .. } => {
                *p = self.copied(payload);
                p.len() + EVENT_OVERHEAD
            }
            _ => 0,
        };
        self.bytes += charge;
        self.queue.push_back((event, charge));
        charge
    }

    /// Takes the hub connection's messages on `channel` as peer links' datagrams.
    pub(crate) fn set_tunnel(&mut self, hub: ConnectionHandle, channel: u8, mtu: usize) {
        match &mut self.tunnel {
            Some(t) => {
                if t.hub.0 != hub {
                    // Introductions are a hub session's: another hub starts with none.
                    t.peers.clear();
                    t.held.clear();
                }
                t.hub = (hub, channel);
            }
            None => {
                self.tunnel = Some(Box::new(Tunnel {
                    hub: (hub, channel),
                    arrived: VecDeque::new(),
                    overflow: 0,
                    peers: BTreeSet::new(),
                    held: VecDeque::new(),
                    mtu,
                }))
            }
        }
    }

    /// Takes tunnelled datagrams through `hub` from `user` (introduced); returns those held
    /// from it while it was not introduced yet, to be handled now. (A call for another hub
    /// connection than the tunnel's changes nothing.)
    pub(crate) fn allow_tunnel_peer(&mut self, hub: ConnectionHandle, user: u16) -> Vec<Bytes> {
        let Some(t) = self.tunnel.as_mut().filter(|t| t.hub.0 == hub) else {
            return Vec::new();
        };
        t.peers.insert(user);
        if !t.held.iter().any(|(u, _)| *u == user) {
            return Vec::new();
        }
        let (theirs, others): (VecDeque<_>, VecDeque<_>) =
            t.held.drain(..).partition(|(u, _)| *u == user);
        t.held = others;
        theirs.into_iter().map(|(_, p)| p).collect()
    }

    /// Takes no more tunnelled datagrams through `hub` from `user`.
    pub(crate) fn forbid_tunnel_peer(&mut self, hub: ConnectionHandle, user: u16) {
        if let Some(t) = self.tunnel.as_mut().filter(|t| t.hub.0 == hub) {
            t.peers.remove(&user);
            // (What came after it was forgotten is not taken if it is introduced again.)
            t.held.retain(|(u, _)| *u != user);
        }
    }

    /// Forgets every member tunnelled datagrams through `hub` were taken from.
    pub(crate) fn clear_tunnel_peers(&mut self, hub: ConnectionHandle) {
        if let Some(t) = self.tunnel.as_mut().filter(|t| t.hub.0 == hub) {
            t.peers.clear();
            t.held.clear();
        }
    }

    /// The oldest tunnelled datagram waiting, with the user id that sent it.
    pub(crate) fn take_tunnelled(&mut self) -> Option<(u16, Bytes)> {
        self.tunnel.as_mut()?.arrived.pop_front()
    }

    /// Drops the tunnelled datagrams still waiting; returns them and those dropped for lack
    /// of room since the last call.
    pub(crate) fn drop_tunnelled(&mut self) -> u64 {
        let Some(t) = self.tunnel.as_mut() else {
            return 0;
        };
        let dropped = t.arrived.len() as u64 + core::mem::take(&mut t.overflow);
        t.arrived.clear();
        dropped
    }

    /// `payload` as a slice of the queue's own buffer, if it is borrowed and short enough to
    /// copy (see `payloads`); a longer borrowed one in a buffer of its own; one in a buffer
    /// of its own already (a reassembled or held message) as it is.
    fn copied(&mut self, payload: Payload<'_>) -> Bytes {
        let payload = match payload {
            Payload::Owned(b) => {
                // (A reassembled or held message: a slice of a larger buffer would keep it.)
                debug_assert!(b.is_empty() || b.is_unique(), "an owned payload is shared");
                return b;
            }
            Payload::Borrowed(s) => s,
        };
        let len = payload.len();
        if len == 0 {
            return Bytes::new();
        }
        if len > COPIED_PAYLOAD {
            return Bytes::copy_from_slice(payload);
        }
        let buf = &mut self.payloads;
        if buf.capacity() - buf.len() < len {
            if buf.try_reclaim(len) {
                // Every payload of the block was dropped: the application keeps up.
                self.payloads_slab = PAYLOADS_FIRST_SLAB;
            } else {
                *buf = BytesMut::with_capacity(self.payloads_slab.max(len));
                self.payloads_slab = (self.payloads_slab * 2).min(PAYLOADS_MAX_SLAB);
            }
        }
        buf.extend_from_slice(payload);
        buf.split().freeze()
    }

    /// The oldest event and the bytes it was charged. (Found empty, the queue gives back
    /// the room of a burst long past.)
    pub(crate) fn pop(&mut self) -> Option<(Event, usize)> {
        let (event, charge) = self.queue.pop_front()?;
        self.bytes -= charge;
        Some((event, charge))
    }

    /// Bytes charged for the events waiting.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines a hint names: from the line its first byte is in through its last byte's.
    fn named_lines(queue: &EventQueue) -> Vec<usize> {
        let mut lines = Vec::new();
        queue.hints(&mut |at: *const u8, len: usize| {
            let first = at.addr() / 64;
            let last = (at.addr() + len.max(1) - 1) / 64;
            lines.extend(first..=last);
        });
        lines
    }

    /// While the application drops each payload before the next arrives (a game reading
    /// its inputs), the copy lands at the payload block's tail or back at its start, and
    /// the queue's hints name that line before the copy is made.
    #[test]
    fn hints_name_the_line_the_next_payload_is_copied_to() {
        let mut queue = EventQueue::default();
        // The first copy makes the block: nothing to name before it.
        drop(queue.copied(Payload::Borrowed(&[0; 64])));
        let mut reclaimed = 0;
        for i in 1..200usize {
            let len = 1 + i * 37 % 100;
            let named = named_lines(&queue);
            let before = queue.payloads.as_ptr().addr() + queue.payloads.len();
            let payload = queue.copied(Payload::Borrowed(&vec![i as u8; len]));
            let at = payload.as_ptr().addr();
            reclaimed += usize::from(at < before);
            assert!(
                named.contains(&(at / 64)),
                "copy {i} ({len} bytes) landed at {at:#x}, in none of the lines named"
            );
            drop(payload);
        }
        assert!(
            reclaimed > 10,
            "the block was reused from its start {reclaimed} times"
        );
    }
}
