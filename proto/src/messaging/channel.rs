//! Per-channel state: the send queue and window, and the receive side of each delivery kind.
//!
//! Reliable and ordered channels number messages with a 64-bit sequence (16 bits on the wire)
//! and keep at most [`MESSAGE_WINDOW`] messages between the oldest unacknowledged one and the
//! newest sent. The receiver's window is the same size, so it can always place what the
//! sender may send, and 16-bit serial-number arithmetic never becomes ambiguous.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use bytes::Bytes;

use super::chunk::{reservation, ChunkAdded, Progress, ReassemblyBuffer};
use crate::config::DeliveryKind;
use crate::time::Instant;
use crate::wire::ChunkInfo;

/// Extends a 16-bit message sequence to 64 bits: the value nearest to `reference` whose low
/// 16 bits are `wire`. `None` if that would be negative. Unambiguous within a reliable
/// channel's window, which is far smaller than 2^15.
pub(crate) fn extend_seq(wire: u16, reference: u64) -> Option<u64> {
    let delta = wire.wrapping_sub(reference as u16) as i16;
    reference.checked_add_signed(i64::from(delta))
}

/// Where a frame sat in the packet stream: (packet number, index of the frame in its packet).
/// Unreliable frames are sent once, and each channel sends its frames in queue order, so this
/// orders a channel's messages by send time without the 16-bit sequence ever wrapping.
pub(crate) type WireOrder = (u64, u16);

/// A received message's bytes: a slice of the packet being taken (copied out if it is kept
/// past the packet), or a buffer of its own (reassembled from chunks, or held for an earlier
/// message).
#[derive(Debug)]
pub(crate) enum Payload<'a> {
    Borrowed(&'a [u8]),
    Owned(Bytes),
}

impl Payload<'_> {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Borrowed(s) => s,
            Payload::Owned(b) => b,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// The bytes in a buffer that outlives the packet (a copy of a borrowed slice).
    pub(crate) fn into_owned(self) -> Bytes {
        match self {
            Payload::Borrowed(s) => Bytes::copy_from_slice(s),
            Payload::Owned(b) => b,
        }
    }
}

/// Every this many messages, a reliable channel's receiver notes the newest packet number
/// received as its base passes (see [`RecvChannel::checkpoints`]).
const CHECKPOINT_SPACING: u64 = 16_384;
/// Checkpoints kept: those of the last 65,536 messages, the span of the wire's 16 bits.
const CHECKPOINTS: usize = 4;
const _: () = assert!(CHECKPOINT_SPACING * CHECKPOINTS as u64 == 1 << 16);

/// Messages a reliable channel may have between its oldest unacknowledged and newest sent.
pub const MESSAGE_WINDOW: u64 = 4096;
/// Partial unreliable chunked messages kept per channel; a newer one evicts the oldest.
const MAX_UNRELIABLE_PARTIALS: usize = 4;
/// Bytes each queued message counts against its channel's `max_queued_bytes` besides its
/// payload: its queue entry is memory too, and empty messages would otherwise queue without
/// limit.
pub(crate) const QUEUE_ENTRY_BYTES: usize = 16;
/// Memory one receive-window slot takes, charged to the budget while it exists.
pub(crate) const SLOT_BYTES: usize = core::mem::size_of::<Slot>();

/// Who a message is from and, for a hub to relay, whom it is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Route {
    /// The original sender when a hub forwards; `None` names this side.
    pub(crate) owner: Option<u16>,
    /// The redirect target.
    pub(crate) target: Option<u16>,
}

/// A message (or response) waiting to be sent, whole or chunk by chunk.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// Extended channel sequence (for a response: the request's sequence).
    pub(crate) seq: u64,
    /// A response rather than a message.
    pub(crate) response: bool,
    /// A request: the sender awaits a response.
    pub(crate) request: bool,
    /// The sender named in the header (`None`: this side's user id) and the relay target.
    pub(crate) route: Route,
    pub(crate) payload: Bytes,
    pub(crate) next_chunk: u16,
    /// 1 when sent whole.
    pub(crate) chunk_count: u16,
}

impl Outgoing {
    pub(crate) fn chunk_info(&self) -> Option<ChunkInfo> {
        (self.chunk_count > 1).then_some(ChunkInfo {
            index: self.next_chunk,
            count: self.chunk_count,
        })
    }
}

/// The send half of a channel.
#[derive(Debug)]
pub(crate) struct SendChannel {
    pub(crate) kind: DeliveryKind,
    pub(crate) queue: VecDeque<Outgoing>,
    pub(crate) queued_bytes: usize,
    pub(crate) max_queued_bytes: usize,
    pub(crate) next_seq: u64,
    /// Oldest message not yet fully acknowledged (reliable kinds).
    window_base: u64,
    /// Unacknowledged frames of each message from `window_base` on, once it started sending,
    /// and the reassembly reservation it counts for at the receiver.
    unacked_frames: VecDeque<(u16, usize)>,
}

impl SendChannel {
    /// The largest payload one more message may have, or `None` if not even an empty one
    /// fits: every queued message counts its payload and `QUEUE_ENTRY_BYTES`.
    pub(crate) fn room_for_one(&self) -> Option<usize> {
        let entries = QUEUE_ENTRY_BYTES * (self.queue.len() + 1);
        self.max_queued_bytes
            .checked_sub(self.queued_bytes + entries)
    }

    pub(crate) fn new(kind: DeliveryKind, max_queued_bytes: usize) -> Self {
        SendChannel {
            kind,
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_queued_bytes,
            next_seq: 0,
            window_base: 0,
            unacked_frames: VecDeque::new(),
        }
    }

    /// Gives back the queues' buffers when they are empty (an idle connection holds none).
    pub(crate) fn trim(&mut self) {
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
        if self.unacked_frames.is_empty() {
            self.unacked_frames = VecDeque::new();
        }
    }

    /// Whether the head of the queue may put a frame on the wire now (the window allows it).
    pub(crate) fn head_ready(&self) -> bool {
        match self.queue.front() {
            None => false,
            Some(head) if !self.kind.is_reliable() || head.next_chunk > 0 => true,
            Some(head) => head.seq < self.window_base + MESSAGE_WINDOW,
        }
    }

    /// Called when the head message's first frame goes out: opens its window slot.
    #[inline]
    pub(crate) fn on_first_frame(&mut self, seq: u64, frames: u16, reserved: usize) {
        if self.kind.is_reliable() {
            debug_assert_eq!(seq, self.window_base + self.unacked_frames.len() as u64);
            self.unacked_frames.push_back((frames, reserved));
        }
    }

    /// One frame of message `seq` was acknowledged. Returns the reservations released by the
    /// window moving past fully acknowledged messages.
    pub(crate) fn on_frame_acked(&mut self, seq: u64) -> usize {
        let Some(idx) = seq.checked_sub(self.window_base) else {
            return 0;
        };
        if let Some((n, _)) = self.unacked_frames.get_mut(idx as usize) {
            *n = n.saturating_sub(1);
        }
        let mut released = 0;
        while let Some(&(0, reserved)) = self.unacked_frames.front() {
            released += reserved;
            self.unacked_frames.pop_front();
            self.window_base += 1;
        }
        released
    }

    /// The oldest large message in the window with frames unacknowledged: an ordered
    /// receiver holds every later message until it completes.
    pub(crate) fn oldest_large_unacked(&self) -> Option<u64> {
        let i = self
            .unacked_frames
            .iter()
            .position(|&(left, reserved)| left > 0 && reserved > 0)?;
        Some(self.window_base + i as u64)
    }

    /// Whether every message queued has been sent and acknowledged.
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.unacked_frames.is_empty()
    }
}

/// What the receiver knows about a delivered message besides its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MessageMeta {
    pub(crate) sequence: u16,
    pub(crate) request: bool,
    pub(crate) owner: u16,
    pub(crate) redirect: Option<u16>,
}

/// A slot of a reliable channel's receive window.
#[derive(Debug)]
enum Slot {
    Empty,
    Partial(alloc::boxed::Box<ReassemblyBuffer>),
    /// Complete, waiting for earlier messages (ordered channels), with the reservation it
    /// keeps until delivered (zero if it came whole).
    Ready(MessageMeta, Bytes, usize),
    /// Delivered.
    Done,
}

/// What happened to a received frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Accepted (delivered, buffered, or stored as a chunk).
    Accepted,
    /// A copy of something already received.
    Duplicate,
    /// Older than the newest delivered (sequenced).
    Stale,
    /// Outside the window or inconsistent with earlier chunks: a protocol violation.
    Violation,
    /// Evicted or not stored for lack of budget (unreliable chunks only).
    NoBudget,
}

/// The receive half of a channel.
#[derive(Debug)]
pub(crate) struct RecvChannel {
    kind: DeliveryKind,
    /// Sequenced: where the newest delivered message was on the wire.
    newest: Option<WireOrder>,
    /// Reliable kinds: the oldest message not yet delivered. Unreliable kinds: the newest
    /// sequence seen, extended to 64 bits, which partial messages are keyed by (their 16
    /// wire bits repeat every 65,536 messages).
    base: u64,
    slots: VecDeque<Slot>,
    /// Unreliable kinds: messages being reassembled, by extended sequence, with where their
    /// first chunk to arrive was on the wire.
    partials: Vec<(u64, MessageMeta, WireOrder, ReassemblyBuffer)>,
    /// Bytes held: reassembly buffers, and whole messages waiting for an earlier one.
    pub(crate) held_bytes: usize,
    /// Reliable kinds: the newest packet number received when the base passed each of the
    /// last multiples of [`CHECKPOINT_SPACING`] (slot `k % CHECKPOINTS` for `k` times it).
    /// The 16 wire bits of a sequence name a message 65,536 later just as well, so a copy
    /// the network held back that long (a reordering spike, or the hub's queue when a link
    /// moves to a direct path) would be taken as that later message, lost or corrupting it.
    /// Such a copy gives itself away by its packet number: the sender sends message `x`
    /// only once `x - 4,096` was acknowledged, so a packet carrying `x` is newer than every
    /// packet received when the base passed `x - 8,192` (see `is_stale_copy`).
    checkpoints: [u64; CHECKPOINTS],
}

/// Everything a receive call needs from its connection.
pub(crate) struct RecvContext<'a> {
    pub(crate) now: Instant,
    /// Where the frame was on the wire.
    pub(crate) order: WireOrder,
    pub(crate) chunk_payload: usize,
    /// Bytes of reassembly this frame may still add (unreliable chunks check it).
    pub(crate) budget_left: usize,
    pub(crate) deliver: &'a mut dyn FnMut(MessageMeta, Payload<'_>),
    /// Partial messages the frame made the channel give up (superseded, or over the cap of
    /// partials), for the caller to count.
    pub(crate) evicted: u64,
    /// The newest packet number the connection has received (this frame's included).
    pub(crate) largest_received: u64,
}

impl RecvChannel {
    /// Gives back the window's and reassembly's buffers when they are empty.
    pub(crate) fn trim(&mut self) {
        if self.slots.is_empty() {
            self.slots = VecDeque::new();
        }
        if self.partials.is_empty() {
            self.partials = Vec::new();
        }
    }

    pub(crate) fn new(kind: DeliveryKind) -> Self {
        RecvChannel {
            kind,
            newest: None,
            base: 0,
            slots: VecDeque::new(),
            partials: Vec::new(),
            held_bytes: 0,
            checkpoints: [0; CHECKPOINTS],
        }
    }

    /// Whether a frame that reads as reliable message `seq`, in packet `pn`, is instead an
    /// old copy of the message 65,536 before it: `pn` is not newer than the packets received
    /// when the base passed the last checkpoint at least 8,192 below `seq`. (A genuine
    /// `seq` is newer: its sender waited for `seq - 4,096` to be acknowledged, which the
    /// window took after the base passed `seq - 8,192`. An old copy of `seq - 65,536` is
    /// older than every packet of message `seq - 61,440` and on, one of which the base
    /// passed to reach that checkpoint.)
    fn is_stale_copy(&self, seq: u64, pn: u64) -> bool {
        let Some(mark) = seq
            .checked_sub(2 * MESSAGE_WINDOW)
            .map(|s| s / CHECKPOINT_SPACING)
        else {
            return false;
        };
        let passed = self.base / CHECKPOINT_SPACING;
        mark > 0
            && mark <= passed
            && passed - mark < CHECKPOINTS as u64
            && pn <= self.checkpoints[(mark % CHECKPOINTS as u64) as usize]
    }

    /// Takes one received frame of a message.
    pub(crate) fn receive(
        &mut self,
        meta: MessageMeta,
        chunk: Option<ChunkInfo>,
        payload: &[u8],
        cx: &mut RecvContext<'_>,
    ) -> Received {
        match self.kind {
            DeliveryKind::Unreliable | DeliveryKind::Sequenced => {
                self.receive_unreliable(meta, chunk, payload, cx)
            }
            DeliveryKind::Reliable | DeliveryKind::Ordered => {
                self.receive_reliable(meta, chunk, payload, cx)
            }
        }
    }

    fn is_stale(&self, order: WireOrder) -> bool {
        self.kind == DeliveryKind::Sequenced && self.newest.is_some_and(|n| order <= n)
    }

    fn deliver_unreliable(
        &mut self,
        meta: MessageMeta,
        payload: Payload<'_>,
        cx: &mut RecvContext<'_>,
    ) -> Received {
        if self.kind == DeliveryKind::Sequenced {
            if self.is_stale(cx.order) {
                return Received::Stale;
            }
            let newest = cx.order;
            self.newest = Some(newest);
            // Partial messages sent before the one just delivered can never be delivered.
            let mut freed = 0;
            let mut evicted = 0;
            self.partials.retain(|(_, _, order, r)| {
                let keep = *order > newest;
                if !keep {
                    freed += r.reserved();
                    evicted += 1;
                }
                keep
            });
            self.held_bytes -= freed;
            cx.evicted += evicted;
        }
        (cx.deliver)(meta, payload);
        Received::Accepted
    }

    /// An unreliable message's sequence, extended around the newest seen (which it advances):
    /// a partial message then does not take the chunks of one sent 65,536 messages later,
    /// which has the same sequence on the wire, unless a chunk comes 32,768 messages late.
    /// A sequence that reads as before the first (a stream whose first messages were lost or
    /// replaced before they left) is taken as it came.
    fn extend_unreliable(&mut self, wire: u16) -> u64 {
        let seq = extend_seq(wire, self.base).unwrap_or(u64::from(wire));
        self.base = self.base.max(seq);
        seq
    }

    fn receive_unreliable(
        &mut self,
        meta: MessageMeta,
        chunk: Option<ChunkInfo>,
        payload: &[u8],
        cx: &mut RecvContext<'_>,
    ) -> Received {
        let sequence = self.extend_unreliable(meta.sequence);
        let Some(chunk) = chunk else {
            return self.deliver_unreliable(meta, Payload::Borrowed(payload), cx);
        };
        if self.is_stale(cx.order) {
            return Received::Stale;
        }
        let pos = self
            .partials
            .iter()
            .position(|(seq, m, _, _)| *seq == sequence && *m == meta);
        let idx = match pos {
            Some(idx) => idx,
            None => {
                let needed = reservation(chunk.count, cx.chunk_payload);
                if needed > cx.budget_left {
                    return Received::NoBudget;
                }
                if self.partials.len() >= MAX_UNRELIABLE_PARTIALS {
                    let (_, _, _, old) = self.partials.remove(0);
                    self.held_bytes -= old.reserved();
                    cx.evicted += 1;
                }
                let r = ReassemblyBuffer::new(chunk.count, cx.chunk_payload, cx.now);
                self.held_bytes += r.reserved();
                self.partials.push((sequence, meta, cx.order, r));
                self.partials.len() - 1
            }
        };
        match self.partials[idx]
            .3
            .add(chunk.index, chunk.count, payload, cx.chunk_payload)
        {
            ChunkAdded::Stored(_) => {}
            ChunkAdded::Duplicate => return Received::Duplicate,
            ChunkAdded::Inconsistent => return Received::Violation,
        }
        if self.partials[idx].3.is_complete() {
            let (_, meta, _, r) = self.partials.remove(idx);
            self.held_bytes -= r.reserved();
            return self.deliver_unreliable(meta, Payload::Owned(r.assemble()), cx);
        }
        Received::Accepted
    }

    fn receive_reliable(
        &mut self,
        meta: MessageMeta,
        chunk: Option<ChunkInfo>,
        payload: &[u8],
        cx: &mut RecvContext<'_>,
    ) -> Received {
        let Some(seq) = extend_seq(meta.sequence, self.base) else {
            return Received::Duplicate;
        };
        if seq < self.base {
            return Received::Duplicate;
        }
        if seq >= self.base + MESSAGE_WINDOW {
            return Received::Violation;
        }
        if self.is_stale_copy(seq, cx.order.0) {
            return Received::Duplicate;
        }
        let idx = (seq - self.base) as usize;
        if idx == 0 && chunk.is_none() && self.slots.is_empty() {
            // The common case: the next message, whole, with nothing buffered behind it.
            (cx.deliver)(meta, Payload::Borrowed(payload));
            self.base += 1;
            self.note_checkpoint(cx);
            return Received::Accepted;
        }
        while self.slots.len() <= idx {
            // The window's slots are memory the peer makes us hold: charged like the rest.
            self.slots.push_back(Slot::Empty);
            self.held_bytes += SLOT_BYTES;
        }
        // `complete`: the message, and the bytes it holds until delivered.
        let complete = match (&mut self.slots[idx], chunk) {
            (Slot::Done | Slot::Ready(..), _) => return Received::Duplicate,
            (Slot::Empty, None) => Some((Payload::Borrowed(payload), 0)),
            (slot @ Slot::Empty, Some(chunk)) => {
                let mut r = ReassemblyBuffer::new(chunk.count, cx.chunk_payload, cx.now);
                let added = r.add(chunk.index, chunk.count, payload, cx.chunk_payload);
                if !matches!(added, ChunkAdded::Stored(_)) {
                    return Received::Violation;
                }
                // The whole message's size is reserved up front (the connection checked it
                // fits), so later chunks of an admitted message are never refused.
                self.held_bytes += r.reserved();
                *slot = Slot::Partial(alloc::boxed::Box::new(r));
                None
            }
            (Slot::Partial(_), None) => return Received::Violation,
            (Slot::Partial(r), Some(chunk)) => {
                match r.add(chunk.index, chunk.count, payload, cx.chunk_payload) {
                    ChunkAdded::Stored(_) => {}
                    ChunkAdded::Duplicate => return Received::Duplicate,
                    ChunkAdded::Inconsistent => return Received::Violation,
                }
                if r.is_complete() {
                    let Slot::Partial(r) = core::mem::replace(&mut self.slots[idx], Slot::Empty)
                    else {
                        return Received::Violation;
                    };
                    let reserved = r.reserved();
                    Some((Payload::Owned((*r).assemble()), reserved))
                } else {
                    None
                }
            }
        };
        if let Some((message, reserved)) = complete {
            if self.kind == DeliveryKind::Reliable || idx == 0 {
                self.held_bytes -= reserved;
                (cx.deliver)(meta, message);
                self.slots[idx] = Slot::Done;
            } else if reserved > 0 {
                // Assembled into its own buffer already.
                self.slots[idx] = Slot::Ready(meta, message.into_owned(), reserved);
            } else {
                // A whole message waiting for an earlier one: copied out of the packet it
                // came in, and charged.
                let len = message.len();
                self.held_bytes += len;
                self.slots[idx] = Slot::Ready(meta, message.into_owned(), len);
            }
            self.advance(cx);
        }
        Received::Accepted
    }

    /// Notes a checkpoint if the base just reached one (see `checkpoints`).
    fn note_checkpoint(&mut self, cx: &RecvContext<'_>) {
        if self.base % CHECKPOINT_SPACING == 0 {
            let k = self.base / CHECKPOINT_SPACING;
            self.checkpoints[(k % CHECKPOINTS as u64) as usize] = cx.largest_received;
        }
    }

    /// Moves the window past delivered messages, delivering ordered ones now in turn.
    fn advance(&mut self, cx: &mut RecvContext<'_>) {
        loop {
            match self.slots.front_mut() {
                Some(Slot::Done) => {}
                Some(slot @ Slot::Ready(..)) => {
                    if let Slot::Ready(meta, message, reserved) =
                        core::mem::replace(slot, Slot::Done)
                    {
                        self.held_bytes -= reserved;
                        (cx.deliver)(meta, Payload::Owned(message));
                    }
                }
                _ => break,
            }
            self.slots.pop_front();
            self.held_bytes -= SLOT_BYTES;
            self.base += 1;
            self.note_checkpoint(cx);
        }
        // Give back a window that a burst of far messages once stretched.
        if self.slots.capacity() > 4 * self.slots.len().max(16) {
            self.slots.shrink_to(self.slots.len() * 2);
        }
    }

    /// Where a message `sequence` falls in this reliable channel's window: its extended
    /// sequence and whether its slot is free, or `None` if it is outside the window.
    pub(crate) fn window_position(&self, sequence: u16) -> Option<(u64, bool)> {
        let seq = extend_seq(sequence, self.base)?;
        if seq < self.base || seq >= self.base + MESSAGE_WINDOW {
            return None;
        }
        let free = matches!(
            self.slots.get((seq - self.base) as usize),
            None | Some(Slot::Empty)
        );
        Some((seq, free))
    }

    /// Whether `chunk` (`len` bytes, in packet `pn`) of message `seq` (extended, as
    /// [`Self::window_position`] gives it) is the one chunk its reassembly still misses and
    /// [`Self::receive`] will take it: the packet bringing it completes the message, as a
    /// whole message would (see [`Self::in_order_run`]). Admission takes the message as
    /// complete on this answer, so a chunk `receive` would refuse (inconsistent, or an old
    /// copy) must not pass: the messages behind it would be held uncounted.
    pub(crate) fn completed_by(
        &self,
        seq: u64,
        chunk: ChunkInfo,
        len: usize,
        chunk_payload: usize,
        pn: u64,
    ) -> bool {
        let slot = seq
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.slots.get(i));
        !self.is_stale_copy(seq, pn)
            && matches!(slot, Some(Slot::Partial(r)) if r.completed_by(chunk, len, chunk_payload))
    }

    /// Whether reliable message `sequence` lies past this channel's window. An honest sender
    /// never sends there (its window starts at its oldest unacknowledged message, never
    /// later than our base), and a frame there must not wait for the messages before it in
    /// the same packet to move the window up to it: it was admitted as holding nothing.
    pub(crate) fn is_past_window(&self, sequence: u16) -> bool {
        self.kind.is_reliable()
            && extend_seq(sequence, self.base).is_some_and(|s| s >= self.base + MESSAGE_WINDOW)
    }

    /// Bytes this reliable channel would newly hold if it took a frame of message `sequence`
    /// (whole with `len` bytes, or a chunk of `chunk`): window slots it would add, and a
    /// chunk that starts a reassembly reserves the whole message. Whole messages on an
    /// ordered channel are counted by the caller, which knows what else the packet brings
    /// (see [`Self::in_order_run`]).
    pub(crate) fn bytes_to_hold(
        &self,
        sequence: u16,
        chunk: Option<ChunkInfo>,
        chunk_payload: usize,
    ) -> usize {
        if !self.kind.is_reliable() {
            return 0;
        }
        let Some((seq, true)) = self.window_position(sequence) else {
            return 0;
        };
        let idx = (seq - self.base) as usize;
        let slots = if chunk.is_none() && idx == 0 && self.slots.is_empty() {
            0 // delivered at once, without a slot
        } else {
            (idx + 1).saturating_sub(self.slots.len()) * SLOT_BYTES
        };
        slots + chunk.map_or(0, |c| reservation(c.count, chunk_payload))
    }

    /// Where the run from the base of messages received already or among `arriving`
    /// (sorted whole messages of one packet) ends: arriving messages below it are delivered
    /// as the packet is taken, so they hold nothing. The scan stops past the last arriving
    /// message (what lies beyond it does not matter), so a packet costs the stretch it
    /// spans, not the whole window a peer may have filled behind a missing base.
    pub(crate) fn in_order_run(&self, arriving: impl IntoIterator<Item = u64>) -> u64 {
        let mut arriving = arriving.into_iter().peekable();
        let mut cursor = self.base;
        loop {
            while arriving.next_if(|&s| s < cursor).is_some() {}
            if arriving.peek().is_none() {
                return cursor;
            }
            let received = matches!(
                self.slots.get((cursor - self.base) as usize),
                Some(Slot::Ready(..) | Slot::Done)
            );
            if received || arriving.peek() == Some(&cursor) {
                cursor += 1;
            } else {
                return cursor;
            }
        }
    }

    /// Drops unreliable partial messages older than `deadline`; returns bytes freed and
    /// messages evicted.
    pub(crate) fn evict_stale(&mut self, deadline: Instant) -> (usize, u64) {
        let mut freed = 0;
        let mut evicted = 0;
        self.partials.retain(|(_, _, _, r)| {
            let keep = r.started_at > deadline;
            if !keep {
                freed += r.reserved();
                evicted += 1;
            }
            keep
        });
        self.held_bytes -= freed;
        (freed, evicted)
    }

    /// Whether unreliable messages are being reassembled.
    pub(crate) fn has_partials(&self) -> bool {
        !self.partials.is_empty()
    }

    /// Start time of the oldest unreliable partial message.
    pub(crate) fn oldest_partial(&self) -> Option<Instant> {
        self.partials.iter().map(|(_, _, _, r)| r.started_at).min()
    }

    /// Progress of the oldest incomplete chunked message.
    pub(crate) fn progress(&self) -> Option<Progress> {
        let reliable = self.slots.iter().enumerate().find_map(|(i, s)| match s {
            Slot::Partial(r) => Some(r.progress((self.base + i as u64) as u16)),
            _ => None,
        });
        reliable.or_else(|| {
            self.partials
                .first()
                .map(|(_, meta, _, r)| r.progress(meta.sequence))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one frame of `payload` at packet `packet`; returns its verdict and what was
    /// delivered.
    fn feed(
        ch: &mut RecvChannel,
        packet: u64,
        sequence: u16,
        chunk: Option<ChunkInfo>,
        payload: &'static [u8],
    ) -> (Received, Vec<Bytes>) {
        let (verdict, delivered, _) = feed_counting(ch, packet, sequence, chunk, payload);
        (verdict, delivered)
    }

    /// [`feed`], also returning the partial messages the frame made the channel give up.
    fn feed_counting(
        ch: &mut RecvChannel,
        packet: u64,
        sequence: u16,
        chunk: Option<ChunkInfo>,
        payload: &'static [u8],
    ) -> (Received, Vec<Bytes>, u64) {
        let mut delivered = Vec::new();
        let mut deliver = |_: MessageMeta, b: Payload<'_>| delivered.push(b.into_owned());
        let mut cx = RecvContext {
            now: Instant::from_millis(1),
            order: (packet, 0),
            chunk_payload: 4,
            budget_left: 1 << 20,
            deliver: &mut deliver,
            evicted: 0,
            largest_received: packet,
        };
        let meta = MessageMeta {
            sequence,
            request: false,
            owner: 0,
            redirect: None,
        };
        let verdict = ch.receive(meta, chunk, payload, &mut cx);
        let evicted = cx.evicted;
        (verdict, delivered, evicted)
    }

    /// The 16 bits of an unreliable message's sequence repeat every 65,536 messages: a
    /// message still missing a chunk must not be completed by the chunks of the one sent
    /// 65,536 later (it was, and the application got half of each).
    #[test]
    fn a_partial_message_never_takes_the_chunks_of_one_65536_later() {
        let mut ch = RecvChannel::new(DeliveryKind::Unreliable);
        let chunk = |index| Some(ChunkInfo { index, count: 2 });
        let (_, out) = feed(&mut ch, 1, 7, chunk(0), b"AAAA");
        assert!(out.is_empty(), "its second chunk is lost");
        // 65,536 messages later (every 8,192nd arrives), the same 16 bits again.
        for (i, extended) in (8..=65_536 + 7).step_by(8_192).enumerate() {
            let (_, out) = feed(&mut ch, 2 + i as u64, extended as u16, None, b"x");
            assert_eq!(out.len(), 1, "whole messages are delivered");
        }
        let (_, out) = feed(&mut ch, 100, 7, chunk(1), b"bbbb");
        assert!(
            out.is_empty(),
            "{out:?}: the old message was completed with it"
        );
        let (_, out) = feed(&mut ch, 101, 7, chunk(0), b"BBBB");
        assert_eq!(out, [Bytes::from_static(b"BBBBbbbb")]);
    }

    /// Partial messages a channel gives up on are counted (the cap of four partials on an
    /// unreliable channel, a sequenced one superseded by a newer message), not dropped
    /// without a trace.
    #[test]
    fn partial_messages_given_up_are_counted() {
        let chunk = |index| Some(ChunkInfo { index, count: 2 });
        let mut ch = RecvChannel::new(DeliveryKind::Unreliable);
        for seq in 0..MAX_UNRELIABLE_PARTIALS as u16 {
            let (_, _, evicted) = feed_counting(&mut ch, u64::from(seq), seq, chunk(0), b"AAAA");
            assert_eq!(evicted, 0);
        }
        let (_, _, evicted) = feed_counting(&mut ch, 10, 10, chunk(0), b"AAAA");
        assert_eq!(evicted, 1, "the oldest partial made room for a fifth");
        let mut ch = RecvChannel::new(DeliveryKind::Sequenced);
        let (_, _, evicted) = feed_counting(&mut ch, 1, 1, chunk(0), b"AAAA");
        assert_eq!(evicted, 0);
        let (_, out, evicted) = feed_counting(&mut ch, 2, 2, None, b"x");
        assert_eq!(
            (out.len(), evicted),
            (1, 1),
            "superseded by a newer message"
        );
    }

    /// The 16 wire bits of a sequence repeat every 65,536 messages: a copy of message 0 the
    /// network held back until the channel reached 61,441 read as message 65,536, inside the
    /// window. It was delivered in that message's place, and the real one dropped as a copy
    /// (on an ordered channel, its payload took the real one's turn; chunked, the channel
    /// could stop for good). Its packet number gives it away now.
    #[test]
    fn a_copy_held_back_65536_messages_is_not_taken_for_a_later_message() {
        for kind in [DeliveryKind::Reliable, DeliveryKind::Ordered] {
            let mut ch = RecvChannel::new(kind);
            for seq in 0..=61_440u64 {
                let (_, out) = feed(&mut ch, 1_000 + seq, seq as u16, None, b"real");
                assert_eq!(out.len(), 1);
            }
            // Message 0's first copy, in a packet sent before all of those.
            let (verdict, out) = feed(&mut ch, 999, 0, None, b"stale");
            assert!(out.is_empty(), "{kind:?}: {out:?}");
            assert!(matches!(verdict, Received::Duplicate), "{kind:?}");
            for seq in 61_441..=65_536u64 {
                let (_, out) = feed(&mut ch, 1_000 + seq, seq as u16, None, b"real");
                assert_eq!(
                    out,
                    [Bytes::from_static(b"real")],
                    "{kind:?}: message {seq}"
                );
            }
        }
    }

    /// Checking a packet that carries the missing base of an ordered channel reads the
    /// window only as far as the packet's own messages: a peer that filled the window behind
    /// the base and then sent the base in packets refused for another reason made each of
    /// them walk all 4,096 slots (10-15 times a small packet's cost).
    #[test]
    fn the_in_order_run_stops_past_the_last_arriving_message() {
        let mut ch = RecvChannel::new(DeliveryKind::Ordered);
        for seq in 1..4_000u16 {
            let (_, out) = feed(&mut ch, u64::from(seq), seq, None, b"x");
            assert!(out.is_empty(), "held behind the missing base");
        }
        assert_eq!(ch.in_order_run([0]), 1, "stops past the base");
        assert_eq!(
            ch.in_order_run([0, 4_000]),
            4_001,
            "the whole stretch when it spans it"
        );
        assert_eq!(ch.in_order_run([4_001]), 0, "the base is still missing");
        let (_, out) = feed(&mut ch, 5_000, 0, None, b"x");
        assert_eq!(out.len(), 4_000, "the base releases what it held");
    }
}
