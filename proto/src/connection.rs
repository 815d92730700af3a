//! One connection: handshake state (client side), the send path that assembles packets, the
//! receive path that turns frames into events, and the timers that drive both.
//!
//! The endpoint owns connections and routes to them; a connection never sees a socket or a
//! clock, only `now` and the bytes the endpoint hands it.

use alloc::collections::{BinaryHeap, VecDeque};
use alloc::vec::Vec;
use bytes::Bytes;
use core::cmp::Reverse;
use core::net::SocketAddr;

use crate::channel::{
    reservation, MessageMeta, Outgoing, Received, RecvChannel, RecvContext, SendChannel,
};
use crate::chunk::{chunk_count, chunk_slice, ChunkAdded, Progress, ReassemblyBuffer};
use crate::config::Config;
use crate::error::SendError;
use crate::event::{ConnectionHandle, DisconnectReason, Event, IncomingRequest, RequestId};
use crate::hash::{HashMap, SeededState};
use crate::reliability::{
    AckOutcome, FrameKey, FrameStore, ReceivedPackets, SentPackets, TokenBucket,
};
use crate::stats::{ConnectionStats, DropReason};
use crate::time::{Instant, Timer, TimerTable};
use crate::wire::{
    self, encode_data_header, ChunkInfo, CloseCode, Cookie, DataHeader, Frame, Frames,
    MessageHeader, Packet, SendType, Writer, DATA_HEADER_LEN, MAX_VARINT_LEN,
};

/// Eliciting packets received before an acknowledgement goes out without delay.
const ACK_EVERY: u32 = 2;
/// Packets one acknowledgement covers (the newest and the 32 before it, less one for slack).
const ACK_RANGE: u32 = 32;
/// Acknowledgement snapshots kept at most while a burst arrives: 64 × 32 packets, more than
/// the largest congestion window (`reliability::MAX_WINDOW_PACKETS`) lets a peer send at once.
const MAX_ACK_SNAPSHOTS: usize = 64;
/// Answered requests remembered to recognise copies of their responses.
const RECENTLY_ANSWERED: usize = 64;
/// Redundancy candidates remembered at most.
const MAX_REDUNDANT_CANDIDATES: usize = 512;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Client: sending `Hello` until a `Challenge` arrives.
    Hello,
    /// Client: sending `Connect` with the cookie until `Accept` or `Reject` arrives.
    Connecting { cookie: Cookie },
    /// Handshake done.
    Connected,
}

/// A reliable frame sent and not yet acknowledged.
#[derive(Debug)]
struct SentFrame {
    header: MessageHeader,
    payload: Bytes,
    /// Channel sequence for window accounting (messages only, not responses).
    message_seq: Option<u64>,
    /// Packets in flight that carry it.
    in_flight: u16,
    /// Proactive extra copies sent.
    copies: u8,
}

/// A request awaiting its response.
#[derive(Debug)]
struct PendingRequest {
    id: RequestId,
    partial: Option<ReassemblyBuffer>,
}

/// What the endpoint lends a connection while it works.
pub(crate) struct Shared<'a> {
    pub(crate) config: &'a Config,
    pub(crate) events: &'a mut VecDeque<Event>,
    /// Reassembly bytes held across the endpoint.
    pub(crate) reassembly_total: &'a mut usize,
}

/// One connection's state.
pub(crate) struct Connection {
    pub(crate) handle: ConnectionHandle,
    pub(crate) remote: SocketAddr,
    pub(crate) state: State,
    /// This side opened the connection.
    pub(crate) is_client: bool,
    pub(crate) connection_id: u32,
    pub(crate) client_nonce: u64,
    pub(crate) local_user_id: u16,
    pub(crate) peer_user_id: u16,
    /// The peer's per-connection reassembly budget, from the handshake.
    pub(crate) peer_reassembly_budget: usize,
    connect_data: Bytes,
    timers: TimerTable,
    handshake_due: bool,
    keepalive_due: bool,
    ack_now: bool,
    eliciting_since_ack: u32,
    /// Packets received since the last acknowledgement left (sent or snapshotted).
    received_since_ack: u32,
    /// Acknowledgements taken while a burst arrived faster than we got to send: an ack covers
    /// only the newest packet and the 32 before it, so a longer burst would otherwise leave
    /// packets unacknowledged and make the peer think them lost.
    ack_snapshots: VecDeque<(u16, u32)>,
    sent: SentPackets,
    received: ReceivedPackets,
    send_channels: Vec<SendChannel>,
    recv_channels: Vec<RecvChannel>,
    /// Responses to send: (channel, response).
    responses: VecDeque<(u8, Outgoing)>,
    frames: FrameStore<SentFrame>,
    resend: VecDeque<FrameKey>,
    /// Small reliable frames that may ride again in a following packet, with the time they
    /// were first sent.
    redundant: VecDeque<(FrameKey, Instant)>,
    rr_cursor: usize,
    /// Reassembly the peer may be holding for our large reliable messages: each started one
    /// counts until the channel window moves past it (the peer has delivered it by then).
    /// A new one starts only while this stays within the peer's budget, so a well-behaved
    /// sender never makes the receiver refuse a packet for lack of reassembly memory.
    large_in_window: usize,
    /// Unacknowledged chunks of the large response being sent (one at a time), and its
    /// reservation.
    open_response_chunks: u32,
    open_response_reserved: usize,
    pending_requests: HashMap<(u8, u16), PendingRequest>,
    request_deadlines: BinaryHeap<Reverse<(Instant, u64, u8, u16)>>,
    /// The last requests answered, to tell a copy of their response from a stale one.
    answered: VecDeque<(u8, u16)>,
    /// Reassembly bytes held by this connection (channels and responses).
    reassembly_bytes: usize,
    pacer: Option<TokenBucket>,
    last_sent: Instant,
    last_received: Instant,
    violations: u32,
    /// Whether the last accepted packet had the highest number yet: only such a packet may
    /// move the connection to a new address (a late one from before a NAT rebinding must not
    /// move it back).
    pub(crate) last_packet_was_newest: bool,
    /// Scratch space for the frames of the packet being received (reused: no allocation per
    /// datagram once warm).
    parsed_frames: Vec<(MessageHeader, Bytes)>,
    pub(crate) stats: ConnectionStats,
    outcome: AckOutcome,
    /// Set when the connection must end; the endpoint reaps it.
    pub(crate) close: Option<DisconnectReason>,
    /// A `Disconnect` to send when reaped.
    pub(crate) close_code: Option<CloseCode>,
    /// The endpoint's bookkeeping: next scheduled wake-up and dirty-list membership.
    pub(crate) scheduled: Option<Instant>,
    pub(crate) in_dirty: bool,
}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &Config,
        handle: ConnectionHandle,
        remote: SocketAddr,
        now: Instant,
        is_client: bool,
        client_nonce: u64,
        hasher: SeededState,
    ) -> Self {
        let mut timers = TimerTable::default();
        timers.set(Timer::Idle, now + config.idle_timeout);
        if is_client {
            timers.set(Timer::HandshakeTimeout, now + config.handshake_timeout);
        }
        Connection {
            handle,
            remote,
            state: if is_client {
                State::Hello
            } else {
                State::Connected
            },
            is_client,
            connection_id: 0,
            client_nonce,
            local_user_id: 0,
            peer_user_id: 0,
            peer_reassembly_budget: config.reassembly_budget,
            connect_data: Bytes::new(),
            timers,
            handshake_due: is_client,
            keepalive_due: false,
            ack_now: false,
            eliciting_since_ack: 0,
            received_since_ack: 0,
            ack_snapshots: VecDeque::new(),
            sent: SentPackets::new(config.initial_rtt, config.mtu),
            received: ReceivedPackets::default(),
            send_channels: config
                .channels
                .iter()
                .map(|c| SendChannel::new(c.kind, c.max_queued_bytes))
                .collect(),
            recv_channels: config
                .channels
                .iter()
                .map(|c| RecvChannel::new(c.kind))
                .collect(),
            responses: VecDeque::new(),
            frames: FrameStore::default(),
            resend: VecDeque::new(),
            redundant: VecDeque::new(),
            rr_cursor: 0,
            large_in_window: 0,
            open_response_chunks: 0,
            open_response_reserved: 0,
            pending_requests: HashMap::with_hasher(hasher),
            request_deadlines: BinaryHeap::new(),
            answered: VecDeque::new(),
            reassembly_bytes: 0,
            pacer: config
                .max_send_rate
                .map(|rate| TokenBucket::new(rate, config.mtu)),
            last_sent: now,
            last_received: now,
            violations: 0,
            last_packet_was_newest: false,
            parsed_frames: Vec::new(),
            stats: ConnectionStats::default(),
            outcome: AckOutcome::default(),
            close: None,
            close_code: None,
            scheduled: None,
            in_dirty: false,
        }
    }

    pub(crate) fn set_connect_data(&mut self, data: Bytes) {
        self.connect_data = data;
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Marks the connection for closing (the first reason wins).
    pub(crate) fn close(&mut self, reason: DisconnectReason, code: Option<CloseCode>) {
        if self.close.is_none() {
            self.close = Some(reason);
            self.close_code = code;
        }
    }

    fn violation(&mut self, config: &Config, reason: DropReason) {
        self.stats.drops.add(reason);
        self.violations += 1;
        if self.violations > config.max_violations {
            self.close(
                DisconnectReason::ProtocolViolation,
                Some(CloseCode::ProtocolViolation),
            );
        }
    }

    // ---------------------------------------------------------------- handshake (client)

    /// A `Challenge` for our `Hello` arrived.
    pub(crate) fn on_challenge(&mut self, cookie: Cookie) -> bool {
        if self.state != State::Hello {
            return false;
        }
        self.state = State::Connecting { cookie };
        self.handshake_due = true;
        true
    }

    /// An `Accept` for our `Connect` arrived.
    pub(crate) fn on_accept(
        &mut self,
        now: Instant,
        config: &Config,
        connection_id: u32,
        user_id: u16,
        peer_budget: u32,
    ) -> bool {
        if !matches!(self.state, State::Connecting { .. }) {
            return false;
        }
        self.state = State::Connected;
        self.connection_id = connection_id;
        self.local_user_id = user_id;
        self.peer_user_id = 0;
        self.peer_reassembly_budget = peer_budget as usize;
        self.timers.stop(Timer::Handshake);
        self.timers.stop(Timer::HandshakeTimeout);
        self.connect_data = Bytes::new();
        self.on_established(now, config);
        true
    }

    /// Common to both sides once the handshake completes.
    pub(crate) fn on_established(&mut self, now: Instant, config: &Config) {
        self.last_received = now;
        self.timers.set(Timer::Idle, now + config.idle_timeout);
        self.timers
            .set(Timer::Keepalive, now + config.keepalive_interval);
    }

    // ---------------------------------------------------------------- application input

    /// The send half of `channel`, if a message of `len` bytes may be queued on it.
    fn channel_with_room(
        &mut self,
        config: &Config,
        channel: u8,
        len: usize,
    ) -> Result<&mut SendChannel, SendError> {
        let ch = self
            .send_channels
            .get_mut(usize::from(channel))
            .ok_or(SendError::UnknownChannel(channel))?;
        if len > config.max_message_size {
            return Err(SendError::MessageTooLarge {
                size: len,
                max: config.max_message_size,
            });
        }
        if ch.queued_bytes + len > ch.max_queued_bytes {
            return Err(SendError::QueueFull {
                channel,
                queued_bytes: ch.queued_bytes,
            });
        }
        Ok(ch)
    }

    /// Queues a message (or request) on `channel`. Returns its sequence.
    pub(crate) fn send(
        &mut self,
        config: &Config,
        channel: u8,
        payload: Bytes,
        request: bool,
        redirect: Option<u16>,
    ) -> Result<u64, SendError> {
        let len = payload.len();
        let peer_budget = self.peer_reassembly_budget;
        let ch = self.channel_with_room(config, channel, len)?;
        let chunk_count = chunks_for(config, len);
        if ch.kind.is_reliable() && chunk_count > 1 {
            let reserve = reservation(chunk_count, config.chunk_payload());
            if reserve > peer_budget {
                return Err(SendError::MessageTooLarge {
                    size: len,
                    max: peer_budget,
                });
            }
        }
        let seq = ch.next_seq;
        ch.next_seq += 1;
        ch.queued_bytes += len;
        ch.queue.push_back(Outgoing {
            seq,
            response: false,
            request,
            redirect,
            chunk_count,
            next_chunk: 0,
            payload,
        });
        self.stats.messages_sent += 1;
        self.stats.payload_bytes_sent += len as u64;
        Ok(seq)
    }

    /// Queues a request and remembers it until its response or deadline.
    pub(crate) fn request(
        &mut self,
        now: Instant,
        config: &Config,
        channel: u8,
        payload: Bytes,
        id: RequestId,
    ) -> Result<(), SendError> {
        if self.pending_requests.len() >= config.max_pending_requests {
            return Err(SendError::TooManyRequests {
                max: config.max_pending_requests,
            });
        }
        let next = self
            .send_channels
            .get(usize::from(channel))
            .ok_or(SendError::UnknownChannel(channel))?
            .next_seq as u16;
        if self.pending_requests.contains_key(&(channel, next)) {
            // 65,536 messages later an old request still waits: refuse rather than confuse.
            return Err(SendError::TooManyRequests {
                max: config.max_pending_requests,
            });
        }
        let seq = self.send(config, channel, payload, true, None)? as u16;
        self.pending_requests
            .insert((channel, seq), PendingRequest { id, partial: None });
        let deadline = now + config.request_timeout;
        self.request_deadlines
            .push(Reverse((deadline, id.0, channel, seq)));
        self.refresh_request_timer();
        Ok(())
    }

    /// Queues the response to a peer's request.
    pub(crate) fn respond(
        &mut self,
        config: &Config,
        request: IncomingRequest,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let channel = request.channel;
        let len = payload.len();
        self.channel_with_room(config, channel, len)?.queued_bytes += len;
        self.responses.push_back((
            channel,
            Outgoing {
                seq: u64::from(request.sequence),
                response: true,
                request: false,
                redirect: None,
                chunk_count: chunks_for(config, len),
                next_chunk: 0,
                payload,
            },
        ));
        self.stats.messages_sent += 1;
        self.stats.payload_bytes_sent += len as u64;
        Ok(())
    }

    fn refresh_request_timer(&mut self) {
        let next = self.request_deadlines.peek().map(|Reverse((t, ..))| *t);
        self.timers.set_opt(Timer::Request, next);
    }

    pub(crate) fn progress(&self, channel: u8) -> Option<Progress> {
        self.recv_channels.get(usize::from(channel))?.progress()
    }

    /// Whether all queued messages were sent and acknowledged.
    pub(crate) fn is_idle(&self) -> bool {
        self.send_channels.iter().all(SendChannel::is_idle)
            && self.responses.is_empty()
            && self.frames.len() == 0
    }

    // ---------------------------------------------------------------- timers

    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, shared: &mut Shared<'_>) {
        let config = shared.config;
        for timer in Timer::ALL {
            if !self.timers.is_expired(timer, now) {
                continue;
            }
            self.timers.stop(timer);
            match timer {
                Timer::HandshakeTimeout | Timer::Idle => {
                    self.close(DisconnectReason::TimedOut, None);
                    return;
                }
                Timer::Handshake => self.handshake_due = true,
                Timer::Loss => {
                    self.outcome.clear();
                    if self.sent.on_loss_timeout(
                        now,
                        config.max_ack_delay,
                        config.max_rto,
                        &mut self.outcome,
                    ) {
                        self.stats.rto_fired += 1;
                    }
                    self.apply_outcome();
                }
                Timer::Ack => self.ack_now = true,
                Timer::Keepalive => self.keepalive_due = true,
                Timer::Request => self.expire_requests(now, shared),
                Timer::Reassembly => {
                    let deadline = now - config.reassembly_timeout;
                    for ch in &mut self.recv_channels {
                        let (freed, evicted) = ch.evict_stale(deadline);
                        self.reassembly_bytes -= freed;
                        *shared.reassembly_total -= freed;
                        for _ in 0..evicted {
                            self.stats.drops.add(DropReason::ReassemblyEvicted);
                        }
                    }
                }
                Timer::Pacing => {}
            }
        }
        self.update_timers(config);
    }

    fn expire_requests(&mut self, now: Instant, shared: &mut Shared<'_>) {
        while let Some(Reverse((deadline, id, channel, seq))) =
            self.request_deadlines.peek().copied()
        {
            if deadline > now {
                break;
            }
            self.request_deadlines.pop();
            if self
                .pending_requests
                .get(&(channel, seq))
                .is_some_and(|p| p.id.0 == id)
            {
                if let Some(p) = self.pending_requests.remove(&(channel, seq)) {
                    let reserved = p
                        .partial
                        .map_or(0, |r| r.reserved(shared.config.chunk_payload()));
                    self.release_reassembly(reserved, shared);
                }
                shared.events.push_back(Event::RequestTimedOut {
                    conn: self.handle,
                    id: RequestId(id),
                });
            }
        }
        self.refresh_request_timer();
    }

    fn release_reassembly(&mut self, bytes: usize, shared: &mut Shared<'_>) {
        self.reassembly_bytes -= bytes;
        *shared.reassembly_total -= bytes;
    }

    /// Recomputes the timers derived from state.
    fn update_timers(&mut self, config: &Config) {
        self.timers.set_opt(
            Timer::Loss,
            self.sent
                .loss_deadline(config.max_ack_delay, config.max_rto),
        );
        let oldest_partial = self
            .recv_channels
            .iter()
            .filter_map(RecvChannel::oldest_partial)
            .min();
        self.timers.set_opt(
            Timer::Reassembly,
            oldest_partial.map(|t| t + config.reassembly_timeout),
        );
    }

    // ---------------------------------------------------------------- receive path

    /// Handles a `Data` packet addressed to this connection. `datagram` holds the packet's
    /// frames; payloads are handed out as slices of it. Returns false if the packet was dropped
    /// before being accepted (so the endpoint does not treat its source as proven).
    pub(crate) fn handle_data(
        &mut self,
        now: Instant,
        header: DataHeader,
        frames: Bytes,
        shared: &mut Shared<'_>,
    ) -> bool {
        let config = shared.config;
        if self.state != State::Connected {
            self.stats.drops.add(DropReason::Unexpected);
            return false;
        }
        let Some(seq) = self.received.extend(header.packet_seq) else {
            self.stats.drops.add(DropReason::DuplicatePacket);
            return false;
        };
        if self.received.is_duplicate(seq) {
            self.stats.drops.add(DropReason::DuplicatePacket);
            return false;
        }
        // First pass: validate every frame before acting on any, so a packet is either
        // accepted whole (and acknowledged) or dropped whole (and retransmitted).
        let mut parsed = core::mem::take(&mut self.parsed_frames);
        parsed.clear();
        let mut reassembly_needed = 0usize;
        let max_chunks = chunks_for(config, config.max_message_size);
        for frame in Frames::new(&frames) {
            let frame = match frame {
                Ok(f) => f,
                Err(_) => return self.refuse(parsed, config, DropReason::Malformed, true),
            };
            let h = frame.header;
            let Some(ch) = config.channels.get(usize::from(h.channel)) else {
                return self.refuse(parsed, config, DropReason::UnknownChannel, true);
            };
            if !self.is_client && h.owner != self.peer_user_id {
                return self.refuse(parsed, config, DropReason::ProtocolViolation, true);
            }
            if let Some(chunk) = h.chunk {
                if chunk.count > max_chunks {
                    return self.refuse(parsed, config, DropReason::Oversized, true);
                }
                if self.starts_reliable_reassembly(ch.kind.is_reliable(), &h) {
                    reassembly_needed += reservation(chunk.count, config.chunk_payload());
                }
            }
            parsed.push((h, frames.slice_ref(frame.payload)));
        }
        if reassembly_needed > 0
            && (self.reassembly_bytes + reassembly_needed > config.reassembly_budget
                || *shared.reassembly_total + reassembly_needed > config.endpoint_reassembly_budget)
        {
            return self.refuse(parsed, config, DropReason::ReassemblyBudget, false);
        }
        let frame_count = parsed.len();

        self.outcome.clear();
        if !self.sent.on_ack(
            now,
            header.ack,
            header.ack_bits,
            config.mtu,
            &mut self.outcome,
        ) {
            return self.refuse(parsed, config, DropReason::ProtocolViolation, true);
        }
        self.apply_outcome();

        self.last_packet_was_newest = self.received.largest().is_none_or(|l| seq > l);
        let out_of_order = matches!(
            self.received.record(seq),
            crate::reliability::Arrival::New { out_of_order: true }
        );
        self.received_since_ack += 1;
        if self.received_since_ack >= ACK_RANGE {
            if self.ack_snapshots.len() >= MAX_ACK_SNAPSHOTS {
                self.ack_snapshots.pop_front();
            }
            self.ack_snapshots.push_back(self.received.ack_fields());
            self.received_since_ack = 0;
        }
        self.last_received = now;
        self.timers.set(Timer::Idle, now + config.idle_timeout);
        self.stats.packets_received += 1;
        self.stats.bytes_received += (DATA_HEADER_LEN + frames.len()) as u64;

        for (header, payload) in parsed.drain(..) {
            self.receive_frame(now, header, payload, shared);
        }
        self.parsed_frames = parsed;

        if frame_count > 0 {
            self.eliciting_since_ack += 1;
            if out_of_order || self.eliciting_since_ack >= ACK_EVERY {
                self.ack_now = true;
            } else if self.timers.get(Timer::Ack).is_none() {
                self.timers.set(Timer::Ack, now + config.max_ack_delay);
            }
        }
        self.update_timers(config);
        true
    }

    /// Drops a packet before it is accepted (counted; a violation if the peer broke the
    /// protocol), keeping the scratch vector for the next packet.
    fn refuse(
        &mut self,
        mut parsed: Vec<(MessageHeader, Bytes)>,
        config: &Config,
        reason: DropReason,
        violation: bool,
    ) -> bool {
        parsed.clear();
        self.parsed_frames = parsed;
        if violation {
            self.violation(config, reason);
        } else {
            self.stats.drops.add(reason);
        }
        false
    }

    /// Whether a reliable chunk (of a message, or of a response) would start a reassembly that
    /// needs a reservation from the budget.
    fn starts_reliable_reassembly(&self, reliable_channel: bool, h: &MessageHeader) -> bool {
        match h.send_type {
            SendType::Response => self
                .pending_requests
                .get(&(h.channel, h.sequence))
                .is_some_and(|p| p.partial.is_none()),
            SendType::Message => {
                reliable_channel
                    && self
                        .recv_channels
                        .get(usize::from(h.channel))
                        .is_some_and(|ch| ch.starts_reassembly(h.sequence))
            }
        }
    }

    fn receive_frame(
        &mut self,
        now: Instant,
        h: MessageHeader,
        payload: Bytes,
        shared: &mut Shared<'_>,
    ) {
        let config = shared.config;
        if h.send_type == SendType::Response {
            self.receive_response(now, h, payload, shared);
            return;
        }
        let meta = MessageMeta {
            sequence: h.sequence,
            request: h.reliable,
            owner: h.owner,
            redirect: h.redirect,
        };
        // Only chunks of unreliable messages consult the budget here (reliable ones reserved
        // theirs when the packet was checked).
        let budget_left = if h.chunk.is_some() {
            config
                .reassembly_budget
                .saturating_sub(self.reassembly_bytes)
                .min(
                    config
                        .endpoint_reassembly_budget
                        .saturating_sub(*shared.reassembly_total),
                )
        } else {
            usize::MAX
        };
        let channel = h.channel;
        let handle = self.handle;
        let stats = &mut self.stats;
        let events = &mut *shared.events;
        let mut deliver = |meta: MessageMeta, payload: Bytes| {
            stats.messages_delivered += 1;
            stats.payload_bytes_delivered += payload.len() as u64;
            events.push_back(if meta.request {
                Event::Request {
                    conn: handle,
                    request: IncomingRequest {
                        channel,
                        sequence: meta.sequence,
                    },
                    owner: meta.owner,
                    payload,
                }
            } else {
                Event::Message {
                    conn: handle,
                    channel,
                    owner: meta.owner,
                    sequence: meta.sequence,
                    target: meta.redirect,
                    payload,
                }
            });
        };
        let mut cx = RecvContext {
            now,
            chunk_payload: config.chunk_payload(),
            budget_left,
            deliver: &mut deliver,
        };
        let Some(ch) = self.recv_channels.get_mut(usize::from(channel)) else {
            return; // checked in the first pass
        };
        let held_before = ch.held_bytes;
        let result = ch.receive(meta, h.chunk, payload, &mut cx);
        let held_after = ch.held_bytes;
        // Keep connection and endpoint totals in step with what the channel holds.
        if held_after >= held_before {
            self.reassembly_bytes += held_after - held_before;
            *shared.reassembly_total += held_after - held_before;
        } else {
            self.reassembly_bytes -= held_before - held_after;
            *shared.reassembly_total -= held_before - held_after;
        }
        match result {
            Received::Accepted => {}
            Received::Duplicate => self.stats.drops.add(DropReason::DuplicateMessage),
            Received::Stale => self.stats.drops.add(DropReason::StaleMessage),
            Received::NoBudget => self.stats.drops.add(DropReason::ReassemblyBudget),
            Received::Violation => self.violation(config, DropReason::ProtocolViolation),
        }
    }

    fn receive_response(
        &mut self,
        now: Instant,
        h: MessageHeader,
        payload: Bytes,
        shared: &mut Shared<'_>,
    ) {
        let key = (h.channel, h.sequence);
        let Some(pending) = self.pending_requests.get_mut(&key) else {
            // A copy of a response just delivered (retransmitted, or a proactive copy) is a
            // duplicate; anything else answers nothing we are waiting for.
            let reason = if self.answered.contains(&key) {
                DropReason::DuplicateMessage
            } else {
                DropReason::StaleResponse
            };
            self.stats.drops.add(reason);
            return;
        };
        let complete = match h.chunk {
            None => Some(payload),
            Some(ChunkInfo { index, count }) => {
                let reserved = reservation(count, shared.config.chunk_payload());
                if pending.partial.is_none() {
                    self.reassembly_bytes += reserved;
                    *shared.reassembly_total += reserved;
                }
                let r = pending
                    .partial
                    .get_or_insert_with(|| ReassemblyBuffer::new(count, now));
                match r.add(index, count, payload, shared.config.chunk_payload()) {
                    ChunkAdded::Stored(_) => {}
                    ChunkAdded::Duplicate => {
                        self.stats.drops.add(DropReason::DuplicateMessage);
                        return;
                    }
                    ChunkAdded::Inconsistent => {
                        self.violation(shared.config, DropReason::ProtocolViolation);
                        return;
                    }
                }
                if !r.is_complete() {
                    return;
                }
                let Some(r) = pending.partial.take() else {
                    return;
                };
                self.release_reassembly(reserved, shared);
                Some(r.assemble())
            }
        };
        if let (Some(payload), Some(pending)) = (complete, self.pending_requests.remove(&key)) {
            if self.answered.len() >= RECENTLY_ANSWERED {
                self.answered.pop_front();
            }
            self.answered.push_back(key);
            self.stats.messages_delivered += 1;
            self.stats.payload_bytes_delivered += payload.len() as u64;
            shared.events.push_back(Event::Response {
                conn: self.handle,
                id: pending.id,
                payload,
            });
        }
    }

    /// Applies what an acknowledgement or loss detection resolved.
    fn apply_outcome(&mut self) {
        self.stats.packets_lost += self.outcome.packets_lost;
        for i in 0..self.outcome.acked_frames.len() {
            let key = self.outcome.acked_frames[i];
            if let Some(frame) = self.frames.remove(key) {
                if let Some(seq) = frame.message_seq {
                    if let Some(ch) = self
                        .send_channels
                        .get_mut(usize::from(frame.header.channel))
                    {
                        self.large_in_window -= ch.on_frame_acked(seq);
                    }
                } else if frame.header.chunk.is_some() {
                    self.open_response_chunks = self.open_response_chunks.saturating_sub(1);
                    if self.open_response_chunks == 0 {
                        self.open_response_reserved = 0;
                    }
                }
            }
        }
        for i in 0..self.outcome.lost_frames.len() {
            let key = self.outcome.lost_frames[i];
            if let Some(frame) = self.frames.get_mut(key) {
                frame.in_flight = frame.in_flight.saturating_sub(1);
                if frame.in_flight == 0 {
                    self.resend.push_back(key);
                }
            }
        }
        self.outcome.clear();
    }

    // ---------------------------------------------------------------- send path

    /// Writes the next datagram for this connection into `buf`, if it has one to send now.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        config: &Config,
    ) -> Option<usize> {
        if self.close.is_some() {
            return None;
        }
        let len = match self.state {
            State::Hello | State::Connecting { .. } => self.handshake_packet(now, buf, config),
            State::Connected => self.data_packet(now, buf, config),
        }?;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
        self.last_sent = now;
        if self.state == State::Connected {
            self.timers
                .set(Timer::Keepalive, now + config.keepalive_interval);
        }
        self.update_timers(config);
        Some(len)
    }

    fn handshake_packet(&mut self, now: Instant, buf: &mut [u8], config: &Config) -> Option<usize> {
        if !self.handshake_due {
            return None;
        }
        self.handshake_due = false;
        self.timers
            .set(Timer::Handshake, now + config.handshake_resend_interval);
        let packet = match self.state {
            State::Hello => Packet::Hello {
                protocol_id: config.protocol_id,
                client_nonce: self.client_nonce,
            },
            State::Connecting { cookie } => Packet::Connect {
                protocol_id: config.protocol_id,
                client_nonce: self.client_nonce,
                cookie,
                channel_layout: config.channel_layout(),
                reassembly_budget: crate::endpoint::wire_budget(config),
                data: &self.connect_data,
            },
            State::Connected => return None,
        };
        packet.encode(buf)
    }

    fn data_packet(&mut self, now: Instant, buf: &mut [u8], config: &Config) -> Option<usize> {
        let mtu = config.mtu.min(buf.len());
        let buf = &mut buf[..mtu];
        let snapshot = self.ack_snapshots.pop_front();
        let (ack, ack_bits) = snapshot.unwrap_or_else(|| self.received.ack_fields());
        let header = DataHeader {
            connection_id: self.connection_id,
            packet_seq: self.sent.next_seq() as u16,
            ack,
            ack_bits,
        };
        let mut w = Writer::new(buf);
        encode_data_header(&mut w, &header)?;

        let paced_ok = match &mut self.pacer {
            Some(p) => p.allows(now, mtu),
            None => true,
        };
        let may_send_data = paced_ok && self.sent.can_send(mtu);
        let mut keys = self.sent.take_key_vec();
        let mut frames_written = 0usize;
        let first_new = self.redundant.len();
        if snapshot.is_some() {
            // An acknowledgement of an earlier part of a burst: it goes out alone.
        } else if may_send_data {
            frames_written += self.write_retransmissions(&mut w, &mut keys);
            frames_written += self.write_new_frames(now, &mut w, &mut keys, config);
        } else if self.pacer.is_some() && !paced_ok && self.has_data_to_send() {
            let at = self.pacer.as_ref().map(|p| p.ready_at(now, mtu));
            self.timers.set_opt(Timer::Pacing, at);
        }
        let ack_due = snapshot.is_some() || self.ack_now || self.timers.is_expired(Timer::Ack, now);
        if frames_written == 0 && !ack_due && !self.keepalive_due {
            self.sent.recycle_key_vec(keys);
            return None;
        }
        // Copies ride in packets that go out anyway (with new data, or an acknowledgement),
        // never in a datagram of their own: that would raise the packet rate and, sent at the
        // same instant as the original, share its fate in a loss burst.
        if may_send_data && snapshot.is_none() {
            frames_written += self.write_redundant(now, &mut w, &mut keys, config, first_new);
        }
        let len = w.len();
        if frames_written == 0 {
            self.stats.ack_only_packets_sent += 1;
        }
        if let Some(p) = &mut self.pacer {
            p.consume(len);
        }
        if snapshot.is_none() {
            self.ack_now = false;
            self.keepalive_due = false;
            self.eliciting_since_ack = 0;
            self.received_since_ack = 0;
            self.timers.stop(Timer::Ack);
        }
        self.outcome.clear();
        self.sent
            .on_sent(now, len, frames_written > 0, keys, &mut self.outcome);
        self.apply_outcome();
        Some(len)
    }

    fn has_data_to_send(&self) -> bool {
        !self.resend.is_empty()
            || !self.responses.is_empty()
            || self.send_channels.iter().any(SendChannel::head_ready)
    }

    fn write_retransmissions(&mut self, w: &mut Writer<'_>, keys: &mut Vec<FrameKey>) -> usize {
        let mut written = 0;
        while let Some(&key) = self.resend.front() {
            let Some(frame) = self.frames.get_mut(key) else {
                self.resend.pop_front();
                continue;
            };
            if frame.in_flight > 0 {
                self.resend.pop_front();
                continue;
            }
            let f = Frame {
                header: frame.header,
                payload: &frame.payload,
            };
            if f.encoded_len() > w.remaining() {
                break;
            }
            if f.encode(w).is_none() {
                break;
            }
            frame.in_flight += 1;
            self.stats.retransmissions += 1;
            self.stats.payload_bytes_transmitted += frame.payload.len() as u64;
            keys.push(key);
            self.resend.pop_front();
            written += 1;
        }
        written
    }

    /// New frames, one per channel per turn, so a large transfer on one channel cannot starve
    /// small messages on another.
    fn write_new_frames(
        &mut self,
        now: Instant,
        w: &mut Writer<'_>,
        keys: &mut Vec<FrameKey>,
        config: &Config,
    ) -> usize {
        // Lanes with something queued, as a bit mask: a lane leaves it when it empties or
        // cannot put a frame in this packet, so the loop never spins over idle channels.
        let lanes = self.send_channels.len() + 1; // the last lane is responses
        let mut mask = self
            .send_channels
            .iter()
            .enumerate()
            .filter(|(_, ch)| !ch.queue.is_empty())
            .fold(0u32, |m, (i, _)| m | 1 << i);
        if !self.responses.is_empty() {
            mask |= 1 << (lanes - 1);
        }
        let mut written = 0;
        let mut lane = self.rr_cursor.min(lanes - 1);
        while mask != 0 {
            let at_or_after = mask & (u32::MAX << lane);
            lane = if at_or_after != 0 {
                at_or_after.trailing_zeros()
            } else {
                mask.trailing_zeros()
            } as usize;
            if self.write_one_new_frame(now, lane, w, keys, config) {
                written += 1;
                if self.lane_is_empty(lane) {
                    mask &= !(1 << lane);
                }
            } else {
                mask &= !(1 << lane);
            }
            lane = if lane + 1 >= lanes { 0 } else { lane + 1 };
        }
        self.rr_cursor = lane;
        written
    }

    fn lane_is_empty(&self, lane: usize) -> bool {
        match self.send_channels.get(lane) {
            Some(ch) => ch.queue.is_empty(),
            None => self.responses.is_empty(),
        }
    }

    fn write_one_new_frame(
        &mut self,
        now: Instant,
        lane: usize,
        w: &mut Writer<'_>,
        keys: &mut Vec<FrameKey>,
        config: &Config,
    ) -> bool {
        let local_user_id = self.local_user_id;
        let (channel, kind, out) = if lane < self.send_channels.len() {
            let ch = &mut self.send_channels[lane];
            if !ch.head_ready() {
                return false;
            }
            let kind = ch.kind;
            match ch.queue.front_mut() {
                Some(out) => (lane as u8, kind, out),
                None => return false,
            }
        } else {
            match self.responses.front_mut() {
                Some((channel, out)) => {
                    let kind = config.channels[usize::from(*channel)].kind;
                    (*channel, kind, out)
                }
                None => return false,
            }
        };
        let starts_large_reliable =
            kind.is_reliable() && out.chunk_count > 1 && out.next_chunk == 0;
        let reserve = reservation(out.chunk_count, config.chunk_payload());
        if starts_large_reliable {
            let held = self.large_in_window + self.open_response_reserved;
            let busy_response = out.response && self.open_response_chunks > 0;
            if busy_response || held + reserve > self.peer_reassembly_budget {
                return false;
            }
        }
        let header = MessageHeader {
            channel,
            send_type: if out.response {
                SendType::Response
            } else {
                SendType::Message
            },
            reliable: out.request,
            owner: local_user_id,
            sequence: out.seq as u16,
            redirect: out.redirect,
            chunk: out.chunk_info(),
        };
        let chunk = (out.chunk_count > 1)
            .then(|| chunk_slice(&out.payload, out.next_chunk, config.chunk_payload()));
        let frame = Frame {
            header,
            payload: chunk.as_deref().unwrap_or(&out.payload),
        };
        if frame.encoded_len() > w.remaining() || frame.encode(w).is_none() {
            return false;
        }
        // A whole message leaves the queue now: move its payload rather than count another
        // reference to it.
        let payload = chunk.unwrap_or_else(|| core::mem::take(&mut out.payload));
        let first = out.next_chunk == 0;
        let seq = out.seq;
        let chunk_count = out.chunk_count;
        let is_response = out.response;
        out.next_chunk += 1;
        let done = out.next_chunk >= out.chunk_count;
        if lane < self.send_channels.len() {
            let ch = &mut self.send_channels[lane];
            if first {
                let reserved = if starts_large_reliable { reserve } else { 0 };
                ch.on_first_frame(seq, chunk_count, reserved);
            }
            ch.queued_bytes -= payload.len();
            if done {
                ch.queue.pop_front();
            }
        } else {
            self.send_channels[usize::from(channel)].queued_bytes -= payload.len();
            if done {
                self.responses.pop_front();
            }
        }
        self.stats.payload_bytes_transmitted += payload.len() as u64;
        if starts_large_reliable {
            if is_response {
                self.open_response_chunks = u32::from(chunk_count);
                self.open_response_reserved = reserve;
            } else {
                self.large_in_window += reserve;
            }
        }
        if kind.is_reliable() {
            let small = payload.len() <= config.redundancy_max_size;
            let key = self.frames.insert(SentFrame {
                header,
                message_seq: (!is_response).then_some(seq),
                payload,
                in_flight: 1,
                copies: 0,
            });
            keys.push(key);
            if config.redundancy > 0 && small {
                if self.redundant.len() >= MAX_REDUNDANT_CANDIDATES {
                    self.redundant.pop_front();
                }
                self.redundant.push_back((key, now));
            }
        }
        true
    }

    /// Proactive copies of small reliable frames sent earlier, while room remains. A copy is
    /// only worth sending within a round trip of the original: after that, either the
    /// original's acknowledgement has arrived or loss detection resends it anyway.
    /// `first_new` is where this packet's own new frames start in the queue.
    fn write_redundant(
        &mut self,
        now: Instant,
        w: &mut Writer<'_>,
        keys: &mut Vec<FrameKey>,
        config: &Config,
        first_new: usize,
    ) -> usize {
        let horizon = self.sent.rtt.smoothed();
        let mut written = 0;
        for _ in 0..first_new {
            let Some(&(key, sent_at)) = self.redundant.front() else {
                break;
            };
            let fresh = now < sent_at + horizon;
            let Some(frame) = self.frames.get_mut(key).filter(|_| fresh) else {
                // Acknowledged already, or too old to be worth a copy.
                self.redundant.pop_front();
                continue;
            };
            let f = Frame {
                header: frame.header,
                payload: &frame.payload,
            };
            if f.encoded_len() > w.remaining() || f.encode(w).is_none() {
                break;
            }
            frame.in_flight += 1;
            frame.copies += 1;
            self.stats.redundant_frames += 1;
            self.stats.payload_bytes_transmitted += frame.payload.len() as u64;
            keys.push(key);
            written += 1;
            self.redundant.pop_front();
            if frame.copies < config.redundancy {
                self.redundant.push_back((key, sent_at));
            }
        }
        written
    }

    /// Snapshot of the counters, with the live RTT and window.
    pub(crate) fn stats(&self) -> ConnectionStats {
        let mut s = self.stats;
        s.smoothed_rtt = self.sent.rtt.measured().unwrap_or_default();
        s.rtt_variance = self.sent.rtt.variance();
        s.congestion_window = self.sent.congestion.window();
        s.spurious_losses = self.sent.spurious_losses;
        s
    }

    /// Payload bytes the application may still queue on `channel`.
    pub(crate) fn queue_room(&self, channel: u8) -> Option<usize> {
        let ch = self.send_channels.get(usize::from(channel))?;
        Some(ch.max_queued_bytes.saturating_sub(ch.queued_bytes))
    }

    /// Bytes in flight (for tests and stats).
    pub(crate) fn bytes_in_flight(&self) -> u64 {
        self.sent.bytes_in_flight()
    }

    /// Releases everything the connection holds from the endpoint's reassembly total.
    pub(crate) fn release_all(&mut self, shared_total: &mut usize) {
        *shared_total -= self.reassembly_bytes;
        self.reassembly_bytes = 0;
    }
}

/// How many chunks a payload of `len` bytes is sent in (1: whole).
fn chunks_for(config: &Config, len: usize) -> u16 {
    // Sent whole if it fits a datagram with the largest header it can have.
    let whole = wire::MAX_MESSAGE_HEADER_LEN + MAX_VARINT_LEN + len;
    if whole + DATA_HEADER_LEN <= config.mtu {
        1
    } else {
        chunk_count(len, config.chunk_payload()).min(usize::from(u16::MAX)) as u16
    }
}
