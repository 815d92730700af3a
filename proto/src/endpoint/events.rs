//! The event queue, bounded in bytes: each message, request or response waiting for the
//! application is charged to the endpoint and to its connection, and a connection over its
//! share has its data refused (unacknowledged, so its sender backs off and retransmits) while
//! every other connection goes on.

use alloc::collections::VecDeque;
use bytes::Bytes;

use super::queue::DrainingQueue;
use crate::event::{ConnectionHandle, Event};

/// Tunnelled datagrams held between arriving on the hub connection and being handled (a
/// handful per arriving packet; more is a hub misbehaving).
const MAX_TUNNELLED: usize = 256;

/// Bytes charged for an event besides its payload (the event itself and queue slot).
pub(crate) const EVENT_OVERHEAD: usize = 64;

/// Events waiting for `poll_event`, with the bytes each is charged.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    queue: DrainingQueue<(Event, usize), MIN_ROOM>,
    bytes: usize,
    /// The hub connection and tunnel channel whose messages are peer links' datagrams.
    pub(crate) tunnel: Option<(ConnectionHandle, u8)>,
    /// Such datagrams, by the user id that sent them, waiting to be handled.
    pub(crate) tunnelled: VecDeque<(u16, Bytes)>,
    /// Tunnelled datagrams dropped because too many waited.
    pub(crate) tunnel_overflow: u64,
}

/// Events the queue keeps room for however quiet it is.
const MIN_ROOM: usize = 64;

impl EventQueue {
    /// Where the next event is taken from (for `MemoryHint`).
    pub(crate) fn hints(&self, f: &mut impl crate::hints::Sink) {
        crate::hints::deque_ends(f, self.queue.as_deque());
    }

    /// Queues an event; returns the bytes charged for it (data events only: a connection's
    /// own notices are bounded by the number of connections and requests).
    pub(crate) fn push(&mut self, event: Event) -> usize {
        if let Event::Message {
            conn,
            channel,
            relay,
            payload,
            ..
        } = &event
        {
            if self.tunnel == Some((*conn, *channel)) {
                if self.tunnelled.len() < MAX_TUNNELLED {
                    // (The hub always names the member a tunnelled datagram is from.)
                    let owner = relay.map_or(0, |r| r.owner);
                    self.tunnelled.push_back((owner, payload.clone()));
                } else {
                    self.tunnel_overflow += 1;
                }
                return 0;
            }
        }
        let charge = match &event {
            Event::Message { payload, .. }
            | Event::Request { payload, .. }
            | Event::Response { payload, .. } => payload.len() + EVENT_OVERHEAD,
            _ => 0,
        };
        self.bytes += charge;
        self.queue.push_back((event, charge));
        charge
    }

    /// Charges `extra` more bytes to the newest event (if it is charged at all: a data
    /// event). Returns what was charged.
    pub(crate) fn charge_last(&mut self, extra: usize) -> usize {
        match self.queue.back_mut() {
            Some((_, charge)) if *charge > 0 => {
                *charge += extra;
                self.bytes += extra;
                extra
            }
            _ => 0,
        }
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
