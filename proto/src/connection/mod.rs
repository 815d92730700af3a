//! One connection: handshake state (client side), the send path that assembles packets, the
//! receive path that turns frames into events, and the timers that drive both.
//!
//! The endpoint owns connections and routes to them; a connection never sees a socket or a
//! clock, only `now` and the bytes the endpoint hands it.

use alloc::boxed::Box;
use alloc::collections::{BinaryHeap, VecDeque};
use alloc::vec::Vec;
use bytes::Bytes;
use core::any::Any;
use core::cmp::Reverse;
use core::net::SocketAddr;
use core::time::Duration;

use crate::config::{ChannelConfig, Config, DeliveryKind};
use crate::crypto::PublicKey;
use crate::endpoint::events::EventQueue;
use crate::error::SendError;
use crate::event::{ConnectionHandle, DisconnectReason, Event, IncomingRequest, RequestId};
use crate::hash::{HashMap, Prf, SeededState};
use crate::messaging::budget::ReceiveBudget;
use crate::messaging::channel::{
    MessageMeta, Outgoing, Received, RecvChannel, RecvContext, Route, SendChannel, WireOrder,
};
use crate::messaging::chunk::{
    chunk_count, chunk_slice, reservation, ChunkAdded, Progress, ReassemblyBuffer,
};
use crate::stats::{ConnectionStats, Counters, DropReason, LinkStats, LossMeter, RateMeter};
use crate::time::{Instant, MaybeInstant, Timer, TimerTable};
use crate::transport::congestion::Controller;
use crate::transport::frame_store::{FrameKey, FrameStore};
use crate::transport::path::Origin;
use crate::transport::recovery::{
    AckOutcome, AckWanted, PacketFrameKeys, SkipDraw, LAZY_ACK_DELAY,
};
use crate::transport::Transport;
use crate::wire::{
    self, encode_ack, encode_data_prefix, ChunkInfo, CloseCode, Cookie, DataHeader, Frame, Frames,
    MessageHeader, Packet, SendType, Writer, MAX_DATA_HEADER_LEN, MAX_VARINT_LEN,
};

mod receive;
mod secure;
mod transmit;

pub(crate) use secure::{
    AcceptFields, AcceptOutcome, ClientHandshake, ControlBytes, PacketKeys, PendingAccept,
    CONTROL_MAX,
};

pub(crate) use receive::DataResult;

/// Pinged packets (reliable frames, probes) received before an acknowledgement goes out
/// without delay.
const ACK_EVERY: u32 = 2;
/// Packets of unreliable messages only acknowledged at once when this many arrived since the
/// last acknowledgement (a fast one-way stream must not fill the sender's window).
const LAZY_ACK_EVERY: u32 = 8;
/// Requests finished lately (answered or timed out) remembered at most (see
/// `Requests::finished`): past it the oldest is forgotten early, so a connection finishing
/// more than some 400 requests a second, whose channel also carries 65,536 messages within
/// twice the request timeout, could still see a collision (16 bytes an entry, and about as
/// much again in the count by key, allocated as used).
const FINISHED_KEPT: usize = 4096;
/// Probe rounds a peer's "unknown connection" must go unrefuted through before it is
/// believed: anyone who saw the connection id can forge one, so it takes this many rounds of
/// lost probes (two each) for a forgery to close a healthy connection on a lossy link.
const RESET_CONFIRM_ROUNDS: u8 = 5;
/// Least wait per round: a peer driven once per 20 Hz game frame answers within 50 ms.
const RESET_ROUND_MIN: core::time::Duration = core::time::Duration::from_millis(100);
/// After a notice was refuted, the next ones are ignored this long, twice as long each time
/// (up to [`RESET_BACKOFF_MAX`]): a forger gets a few tries, not one per round trip.
const RESET_BACKOFF_FIRST: core::time::Duration = core::time::Duration::from_secs(1);
const RESET_BACKOFF_MAX: core::time::Duration = core::time::Duration::from_secs(3600);

/// The check of a peer's "unknown connection" notices (see `Connection::on_reset_hint`).
#[derive(Debug)]
struct ResetWatch {
    /// When the notice came, if nothing authentic has come from the peer since.
    hint: Option<Instant>,
    /// Probe rounds it has lasted.
    rounds: u8,
    /// Notices are ignored until then (a refuted one starts a back-off).
    ignored_until: Instant,
    backoff: core::time::Duration,
}

impl Default for ResetWatch {
    fn default() -> Self {
        ResetWatch {
            hint: None,
            rounds: 0,
            ignored_until: Instant::ZERO,
            backoff: RESET_BACKOFF_FIRST,
        }
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Client: sending `Hello` until a `Challenge` arrives.
    Hello,
    /// Client: sending `Connect` with the cookie until `Accept` or `Reject` arrives (the
    /// `Connect` as sent, cookie and all, is in the handshake's box: this variant holds
    /// nothing, so every connection's state is one byte).
    Connecting,
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
    pub(crate) events: &'a mut EventQueue,
    /// Receive memory held across the endpoint.
    pub(crate) budget: &'a mut ReceiveBudget,
    /// Bytes of waiting events this connection may have before its data is refused.
    pub(crate) event_share: usize,
    /// Buffers used while one packet is taken.
    pub(crate) scratch: &'a mut Scratch,
}

/// Buffers a connection uses only while it takes one packet, lent by the endpoint: one set
/// serves every connection (each busy connection kept its own before, a few hundred bytes).
/// Empty between packets: nothing in them outlives the call that filled them.
#[derive(Default)]
pub(crate) struct Scratch {
    /// The frames of the packet being taken (each payload where it lies in the packet).
    parsed_frames: Vec<(MessageHeader, core::ops::Range<usize>)>,
    /// Its whole ordered messages: (channel, sequence, length); while it is parsed, its
    /// chunks on ordered channels too, marked by their length (`receive::CHUNK_OPENS`,
    /// `receive::CHUNK_COMPLETES`).
    ordered: Vec<(u8, u64, usize)>,
    /// Packets rebuilt from repairs, waiting to be taken: one after another, each its
    /// number (8 bytes), its frames' length (4) and its frames. (One buffer, reused: a
    /// buffer of its own per rebuilt packet was an allocation per packet lost.)
    rebuilt: Vec<u8>,
    /// What an acknowledgement, a send or loss detection resolved, until the connection
    /// acts on it (here rather than in each connection: a server's one set stays in cache).
    pub(crate) outcome: AckOutcome,
}

impl Scratch {
    /// Whether the buffers hold nothing (true between packets).
    pub(crate) fn is_empty(&self) -> bool {
        self.parsed_frames.is_empty()
            && self.ordered.is_empty()
            && self.rebuilt.is_empty()
            && self.outcome.is_empty()
    }
}

/// One connection's messaging state: what rides in frames. The transport below tells it,
/// through `AckOutcome`, which of its reliable frames were delivered or lost.
struct Messaging {
    /// Send halves of the channels used so far, up to the highest: a channel is made on its
    /// first message, so an idle connection, or one that uses a few low channels, holds no
    /// state for the rest (a channel past the end is as new: nothing queued, sequence 0).
    send_channels: Vec<SendChannel>,
    /// Bit `i` set: send channel `i` may have messages queued. Set by every queueing,
    /// cleared only where its queue is seen empty, so a connection with nothing queued is
    /// polled without touching its channels.
    maybe_queued: u16,
    /// Receive halves, made the same way on the first frame naming them.
    recv_channels: Vec<RecvChannel>,
    /// Bit `i` set: receive channel `i` may hold unreliable messages being reassembled. Set
    /// when a frame leaves one there, cleared where the channel is seen without any, so the
    /// reassembly deadline (computed for every packet) reads only those channels.
    partial_channels: u16,
    /// Responses to send, made on the first one (most connections answer no request) and
    /// given back once idle.
    responses: Option<Box<Responses>>,
    /// Whether `responses` has any queued: read for every packet of every connection that
    /// answered a request once, where the box's own line is usually cold.
    responses_waiting: bool,
    /// Whether `in_flight` has frames to send again (set with each, cleared where its queue
    /// is seen empty): read for every packet likewise.
    resend_waiting: bool,
    /// Reliable frames in flight and those to send again: made by the first reliable frame,
    /// given back by the idle trim once nothing is in flight (unreliable traffic, most of a
    /// game's, never makes it).
    in_flight: Option<Box<InFlight>>,
    /// Where the next sent-frame store's generation counter starts: where the last one
    /// stopped, so a packet record's key from before a store was given back finds nothing.
    frame_epoch: u32,
    /// The lane `write_new_frames` starts at (at most `MAX_CHANNELS`, the responses' lane).
    rr_cursor: u8,
    /// Our requests, made on the first one (most connections never make any).
    requests: Option<Box<Requests>>,
    /// Receive memory held by this connection (channels and responses).
    reassembly_bytes: usize,
}

impl Messaging {
    /// The send half of `channel`, made (with every lower one) on first use; `None` if the
    /// configuration has no such channel.
    fn send_channel_mut(&mut self, config: &Config, channel: u8) -> Option<&mut SendChannel> {
        made_up_to(&mut self.send_channels, config, channel, |c| {
            SendChannel::new(c.kind, c.max_queued_bytes)
        })
    }

    /// The receive half of `channel`, made like [`Messaging::send_channel_mut`].
    fn recv_channel_mut(&mut self, config: &Config, channel: u8) -> Option<&mut RecvChannel> {
        made_up_to(&mut self.recv_channels, config, channel, |c| {
            RecvChannel::new(c.kind)
        })
    }
}

/// Entry `channel` of `channels`, appending new ones up to it (at their exact size: a
/// connection keeps these as long as it lives).
fn made_up_to<'a, T>(
    channels: &'a mut Vec<T>,
    config: &Config,
    channel: u8,
    make: impl Fn(&ChannelConfig) -> T,
) -> Option<&'a mut T> {
    let i = usize::from(channel);
    if i >= channels.len() {
        let missing = config.channels.get(channels.len()..=i)?;
        channels.reserve_exact(missing.len());
        channels.extend(missing.iter().map(make));
    }
    channels.get_mut(i)
}

/// A connection's requests awaiting responses, and the last ones finished.
struct Requests {
    pending: HashMap<(u8, u16), PendingRequest>,
    deadlines: BinaryHeap<Reverse<(Instant, u64, u8, u16)>>,
    /// Requests answered or timed out within twice the request timeout (at most
    /// [`FINISHED_KEPT`]), oldest first, by (channel, wire sequence). A response names its
    /// request by those 16 bits alone, which come round again every 65,536 messages on the
    /// channel: a late answer to one that timed out, or a copy of an answer, would be taken
    /// as the answer to a newer request with the same bits. So a new request may not take
    /// them while they are here; and a copy of an answer is told from a stale one.
    finished: VecDeque<Finished>,
    /// How many of `finished` have each key, and how many of those were answered: a peer
    /// decides how many responses a packet carries, so looking one up must not walk
    /// `finished` (4,096 entries for each of 200 stale responses a datagram).
    finished_keys: HashMap<(u8, u16), FinishedCount>,
}

/// Entries of `Requests::finished` with one key.
#[derive(Clone, Copy, Debug, Default)]
struct FinishedCount {
    kept: u16,
    answered: u16,
}

/// How long a finished request's key is kept from new requests: an answer to it may come
/// after it timed out, and copies of an answer after it.
fn finished_requests_kept(config: &Config) -> Duration {
    config.request_timeout.saturating_mul(2)
}

/// A request's key when it was answered or given up on.
#[derive(Clone, Copy, Debug)]
struct Finished {
    key: (u8, u16),
    at: Instant,
    answered: bool,
}

impl Requests {
    /// Remembers that the request of `key` finished at `now`.
    fn finish(&mut self, key: (u8, u16), now: Instant, answered: bool, keep: Duration) {
        self.forget_finished(now, keep);
        if self.finished.len() >= FINISHED_KEPT {
            self.forget_oldest();
        }
        self.finished.push_back(Finished {
            key,
            at: now,
            answered,
        });
        let count = self.finished_keys.entry(key).or_default();
        count.kept += 1;
        count.answered += u16::from(answered);
    }

    /// Forgets requests finished longer than `keep` ago.
    fn forget_finished(&mut self, now: Instant, keep: Duration) {
        while self
            .finished
            .front()
            .is_some_and(|f| now.saturating_duration_since(f.at) > keep)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        let Some(oldest) = self.finished.pop_front() else {
            return;
        };
        if let Some(count) = self.finished_keys.get_mut(&oldest.key) {
            count.kept -= 1;
            count.answered -= u16::from(oldest.answered);
            if count.kept == 0 {
                self.finished_keys.remove(&oldest.key);
            }
        }
    }

    /// Whether a request of `key` finished lately (an answer to it may still come).
    fn finished_lately(&self, key: (u8, u16)) -> bool {
        self.finished_keys.contains_key(&key)
    }

    /// Whether a request of `key` was answered lately (a response to it is a copy).
    pub(crate) fn answered_lately(&self, key: (u8, u16)) -> bool {
        self.finished_keys.get(&key).is_some_and(|c| c.answered > 0)
    }

    /// Drops the deadlines of requests answered already: those at the front (so the timer
    /// names a request still open), and all of them once they outnumber the open ones (the
    /// heap would otherwise hold every request of the last `request_timeout`).
    fn prune(&mut self) {
        let pending = &self.pending;
        let open = |&Reverse((_, id, channel, seq)): &Reverse<(Instant, u64, u8, u16)>| {
            pending.get(&(channel, seq)).is_some_and(|p| p.id.0 == id)
        };
        while self.deadlines.peek().is_some_and(|d| !open(d)) {
            self.deadlines.pop();
        }
        if self.deadlines.len() > 2 * self.pending.len() + 64 {
            self.deadlines.retain(open);
        }
    }
}

/// A connection's reliable frames in flight (see `Messaging::in_flight`).
struct InFlight {
    frames: FrameStore<SentFrame>,
    /// Keys of frames declared lost, to send again (a key whose frame was acknowledged
    /// meanwhile finds nothing and is skipped): whole messages here, sent again first...
    resend: VecDeque<FrameKey>,
    /// ...then chunks of large messages, and whole messages of an ordered channel sent after
    /// a large one of that channel still incomplete. A resent chunk fills a packet: after a
    /// burst of losses, one queue in the order they were lost kept the small messages of
    /// other channels lost with a large transfer waiting behind its chunks, round trips
    /// while the window grew back. (New frames take turns between channels for the same
    /// reason.)
    resend_chunks: VecDeque<FrameKey>,
    /// Reassembly the peer may be holding for our large reliable messages: each started one
    /// counts until the channel window moves past it (the peer has delivered it by then).
    /// A new one starts only while this stays within the peer's budget, so a well-behaved
    /// sender never makes the receiver refuse a packet for lack of reassembly memory.
    large_in_window: usize,
}

/// Responses to the peer's requests, waiting to be sent or acknowledged.
#[derive(Default)]
struct Responses {
    /// (channel, response), in the order they were answered.
    queue: VecDeque<(u8, Outgoing)>,
    /// Unacknowledged chunks of the large response being sent (one at a time), and its
    /// reservation.
    open_chunks: u32,
    open_reserved: usize,
}

impl Messaging {
    /// The reliable frames in flight, made on first use.
    fn in_flight(&mut self) -> &mut InFlight {
        let epoch = self.frame_epoch;
        self.in_flight.get_or_insert_with(|| {
            Box::new(InFlight {
                frames: FrameStore::starting_at(epoch),
                resend: VecDeque::new(),
                resend_chunks: VecDeque::new(),
                large_in_window: 0,
            })
        })
    }

    /// Reliable frames sent and not yet acknowledged.
    fn frames_in_flight(&self) -> usize {
        self.in_flight.as_ref().map_or(0, |f| f.frames.len())
    }

    /// Lost frames waiting to be sent again (some perhaps acknowledged since); the box they
    /// wait in is read only when the flag says it holds some.
    fn resend_len(&self) -> usize {
        if !self.resend_waiting() {
            return 0;
        }
        self.in_flight
            .as_ref()
            .map_or(0, |f| f.resend.len() + f.resend_chunks.len())
    }

    /// Whether lost frames wait to be sent again, without reading the box they wait in.
    fn resend_waiting(&self) -> bool {
        debug_assert_eq!(
            self.resend_waiting,
            self.in_flight
                .as_ref()
                .is_some_and(|f| !f.resend.is_empty() || !f.resend_chunks.is_empty())
        );
        self.resend_waiting
    }

    /// Whether responses wait to be sent.
    fn responses_queued(&self) -> bool {
        debug_assert_eq!(
            self.responses_waiting,
            self.responses.as_ref().is_some_and(|r| !r.queue.is_empty())
        );
        self.responses_waiting
    }

    /// The request awaiting the response `key` names, if any.
    fn pending_request(&self, key: (u8, u16)) -> Option<&PendingRequest> {
        self.requests.as_ref()?.pending.get(&key)
    }
}

/// One connection's state.
pub(crate) struct Connection {
    pub(crate) handle: ConnectionHandle,
    /// The packet layer: numbers, acknowledgements, loss, congestion, pacing, paths, coding.
    pub(crate) transport: Transport,
    /// What rides in frames: channels, frames awaiting acknowledgement, requests.
    messaging: Messaging,
    pub(crate) state: State,
    /// This side opened the connection.
    pub(crate) is_client: bool,
    pub(crate) connection_id: u64,
    pub(crate) client_nonce: u64,
    pub(crate) local_user_id: u16,
    pub(crate) peer_user_id: u16,
    /// The peer's per-connection reassembly budget, from the handshake.
    pub(crate) peer_reassembly_budget: usize,
    /// Packet protection, once the handshake agreed keys (`None` without protection).
    pub(crate) keys: Option<PacketKeys>,
    /// Client: the handshake in progress.
    client_handshake: Option<Box<ClientHandshake>>,
    /// Server: accepted, waiting for the client's first packet.
    pub(crate) pending_accept: Option<Box<PendingAccept>>,
    timers: TimerTable,
    handshake_due: bool,
    keepalive_due: bool,
    /// Bytes of this connection's events waiting for the application.
    pub(crate) event_bytes: usize,
    last_sent: Instant,
    last_received: Instant,
    /// Sequenced messages queued and replaced by a newer one before they were sent.
    pub(crate) superseded: u64,
    pub(crate) stats: Counters,
    /// Set when the connection must end; the endpoint reaps it.
    pub(crate) close: Option<DisconnectReason>,
    /// A `Disconnect` to send when reaped.
    pub(crate) close_code: Option<CloseCode>,
    /// The endpoint's bookkeeping: dirty-list membership.
    pub(crate) in_dirty: bool,
    /// The last packet left something behind for want of room (or a longer ack, or a
    /// probe): the endpoint visits the connection again at once. Otherwise what is left
    /// waits for an acknowledgement or a timer, which mark it again.
    pub(crate) more_to_send: bool,
    /// The address the connection moved away from since the endpoint last looked (to a
    /// validated direct path, or back to the relay when a direct path died).
    /// Boxed: a move is rare, and an address inline would cost every connection 24 bytes.
    pub(crate) moved_from: Option<Box<SocketAddr>>,
    /// The repair encoder logged a packet since the last repair that covered every packet
    /// it had logged: only then can a packet going out plan a repair (`write_repair`). Here,
    /// not in the encoder: most packets of a coding connection then leave it unread.
    uncovered_logged: bool,
    /// The last packet of messages was led by small unreliable or sequenced messages, ahead
    /// of retransmissions waiting (`write_urgent_frames`): the next lets retransmissions
    /// lead, so a stream of unreliable messages cannot keep them waiting.
    urgent_led: bool,
    /// The application has taken this connection's `Connected` event.
    pub(crate) announced: bool,
    /// Its `Connected` event was queued: it ends in `Disconnected`, not `ConnectFailed`.
    pub(crate) reported: bool,
    /// A `PathChanged` of it waits in the event queue: a further move updates that one
    /// (it names the address when the application takes it) rather than queueing another.
    pub(crate) path_event_waiting: bool,
    /// The check of the peer's "unknown connection" notices, made on the first one (most
    /// connections never see one): 8 bytes here, not 48.
    reset: Option<Box<ResetWatch>>,
    /// Datagram bytes in and out, per second, for `LinkStats`.
    pub(crate) rate_in: RateMeter,
    pub(crate) rate_out: RateMeter,
    /// Gaps in the peer's packet numbers, for `LinkStats::loss_percent`.
    pub(crate) loss_in: LossMeter,
    /// The application's own state for this connection (`Endpoint::set_user_data`).
    pub(crate) user_data: Option<Box<dyn Any + Send>>,
}

impl Connection {
    /// A connection's `MemoryHint` stages: 0 the struct; 1 what hangs off it (packet and
    /// key rings, received ranges, channels, coding state). Leaving out any of these made the
    /// simulator's 10,000-client run 1-8% slower (the receive channels the least); leaving out
    /// the sent-frame slab changed nothing, so it is not named (the box of frames in flight
    /// that holds it is: a reliable frame sent or acknowledged reads it).
    pub(crate) fn memory_hints(&self, stage: u8, f: &mut impl crate::hints::Sink) {
        use crate::hints;
        let m = &self.messaging;
        match stage {
            0 => hints::val(f, self),
            1 => {
                self.transport.hints(f);
                hints::slice(f, &m.send_channels);
                hints::slice(f, &m.recv_channels);
                if let Some(x) = &m.in_flight {
                    hints::val(f, &**x);
                }
            }
            _ => {}
        }
    }

    pub(crate) fn new(
        config: &Config,
        handle: ConnectionHandle,
        remote: SocketAddr,
        now: Instant,
        is_client: bool,
        client_nonce: u64,
        path_key: Prf,
    ) -> Self {
        let mut timers = TimerTable::default();
        if is_client {
            timers.set(Timer::HandshakeTimeout, now + config.handshake_timeout);
        } else {
            timers.set(Timer::Idle, now + config.idle_timeout);
        }
        Connection {
            handle,
            transport: Transport::new(config, remote, path_key, now),
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
            keys: None,
            client_handshake: None,
            pending_accept: None,
            timers,
            handshake_due: is_client,
            keepalive_due: false,
            messaging: Messaging {
                send_channels: Vec::new(),
                maybe_queued: 0,
                recv_channels: Vec::new(),
                partial_channels: 0,
                responses: None,
                responses_waiting: false,
                resend_waiting: false,
                in_flight: None,
                frame_epoch: 0,
                rr_cursor: 0,
                requests: None,
                reassembly_bytes: 0,
            },
            event_bytes: 0,
            last_sent: now,
            last_received: now,
            superseded: 0,
            stats: Counters::default(),
            close: None,
            close_code: None,
            in_dirty: false,
            more_to_send: false,
            moved_from: None,
            uncovered_logged: false,
            urgent_led: false,
            announced: false,
            reported: false,
            path_event_waiting: false,
            reset: None,
            rate_in: RateMeter::default(),
            rate_out: RateMeter::default(),
            loss_in: LossMeter::default(),
            user_data: None,
        }
    }

    /// Starts probing a direct path to `addr` (a hub named it, or the peer's challenge came
    /// from it: `origin`) with `attempts` challenges; returns how many it added (see
    /// `Paths::probe`). They are spread over a few round trips of the current path, so two
    /// peers probing each other from the same introduction overlap even when one heard of it
    /// a little later.
    pub(crate) fn probe_path(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        attempts: u8,
        origin: Origin,
    ) -> u8 {
        let interval = (self.transport.sent.rtt.smoothed() / 2).max(PROBE_INTERVAL_MIN);
        let added = self
            .transport
            .paths
            .probe(now, addr, attempts, interval, origin);
        self.timers
            .set_opt(Timer::Probe, self.transport.paths.next_probe());
        added
    }

    /// A path challenge of ours was answered from `addr`: on the relay, move to it.
    pub(crate) fn on_path_validated(&mut self, now: Instant, addr: SocketAddr) {
        if self.transport.paths.fallback() == Some(self.remote())
            && Some(addr) != self.transport.paths.fallback()
        {
            let old = self.transport.paths.migrate(addr);
            self.moved_from.get_or_insert_with(|| Box::new(old));
            // The answer came over it: the direct path was just heard. (Without this, a
            // packet the peer sent through the hub before it moved too would find the
            // direct path "quiet" since before the move, and take the link back.)
            if let Some(relay) = self.transport.paths.relay_mut() {
                relay.direct_heard = now;
            }
            // What was in flight on the relay is judged on its own merits; new data goes
            // direct from here on.
        }
    }

    /// The peer challenged a new address of ours: our packets from it were dropped until now.
    pub(crate) fn on_path_challenged(&mut self, now: Instant) {
        // At most once a round trip: anyone with the connection id can send challenges
        // that look like they came from the peer, and probes bypass the congestion window.
        // (With a floor: the smoothed round trip of a LAN is tens of microseconds, and a
        // peer that claims its whole ack delay can drive it to zero.)
        let interval = self.transport.sent.rtt.smoothed().max(PROBE_INTERVAL_MIN);
        let quiet = self
            .transport
            .last_challenge_probe
            .get()
            .is_none_or(|t| now >= t + interval);
        if self.bytes_in_flight() > 0 && quiet {
            self.transport.last_challenge_probe = now.into();
            self.transport.probes_due = self.transport.probes_due.max(1);
        }
    }

    /// The validated address the connection talks to.
    pub(crate) fn remote(&self) -> SocketAddr {
        self.transport.paths.current
    }

    /// Whether `addr` is this connection's address or the relay it falls back to.
    pub(crate) fn is_reached_through(&self, addr: SocketAddr) -> bool {
        self.remote() == addr || self.transport.paths.fallback() == Some(addr)
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// When something authentic last arrived (for a server's unconfirmed connection, when
    /// its `Connect` was accepted).
    pub(crate) fn last_received(&self) -> Instant {
        self.last_received
    }

    /// Marks the connection for closing (the first reason wins).
    pub(crate) fn close(&mut self, reason: DisconnectReason, code: Option<CloseCode>) {
        if self.close.is_none() {
            self.close = Some(reason);
            self.close_code = code;
        }
    }

    // ---------------------------------------------------------------- handshake (client)

    /// A `Challenge` for our `Hello` arrived.
    pub(crate) fn on_challenge(&mut self, cookie: Cookie, config: &Config) -> bool {
        if self.state != State::Hello {
            return false;
        }
        let Some(hs) = self.client_handshake.as_deref_mut() else {
            return false;
        };
        let Some(connect) = connect_packet(config, self.client_nonce, cookie, hs) else {
            return false;
        };
        hs.connect = connect;
        self.state = State::Connecting;
        self.handshake_due = true;
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
            .messaging
            .send_channel_mut(config, channel)
            .ok_or(SendError::UnknownChannel(channel))?;
        if len > config.max_message_size {
            return Err(SendError::MessageTooLarge {
                size: len,
                max: config.max_message_size,
            });
        }
        if ch.room_for_one().is_none_or(|room| len > room) {
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
        route: Route,
    ) -> Result<u64, SendError> {
        let len = payload.len();
        let peer_budget = self.peer_reassembly_budget;
        let ch = self.channel_with_room(config, channel, len)?;
        let chunk_count = chunks_for(config, len);
        if ch.kind.is_reliable() {
            fits_peer_budget(config, len, chunk_count, peer_budget)?;
        }
        if ch.kind == DeliveryKind::Sequenced {
            // Newest only: a queued update that has not started to leave is worthless now.
            let before = ch.queue.len();
            let mut freed = 0;
            ch.queue.retain(|o| {
                let keep = o.next_chunk > 0 || o.request;
                if !keep {
                    freed += o.payload.len();
                }
                keep
            });
            ch.queued_bytes -= freed;
            self.superseded += (before - ch.queue.len()) as u64;
        }
        let ch = &mut self.messaging.send_channels[usize::from(channel)];
        let seq = ch.next_seq;
        ch.next_seq += 1;
        ch.queued_bytes += len;
        ch.queue.push_back(Outgoing {
            seq,
            response: false,
            request,
            route,
            chunk_count,
            next_chunk: 0,
            payload,
        });
        self.messaging.maybe_queued |= 1 << channel;
        self.stats.messages_sent += 1;
        self.stats.payload_bytes_sent += len as u64;
        Ok(seq)
    }

    /// Queues a request and remembers it until its response or deadline. `hasher` keys the
    /// table of pending requests, made on the first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn request(
        &mut self,
        now: Instant,
        config: &Config,
        channel: u8,
        payload: Bytes,
        id: RequestId,
        route: Route,
        hasher: SeededState,
    ) -> Result<(), SendError> {
        let pending = self
            .messaging
            .requests
            .as_ref()
            .map_or(0, |r| r.pending.len());
        if pending >= config.max_pending_requests {
            return Err(SendError::TooManyRequests {
                max: config.max_pending_requests,
            });
        }
        if config.channels.get(usize::from(channel)).is_none() {
            return Err(SendError::UnknownChannel(channel));
        }
        let next = self
            .messaging
            .send_channels
            .get(usize::from(channel))
            .map_or(0, |ch| ch.next_seq) as u16;
        let keep = finished_requests_kept(config);
        if let Some(r) = self.messaging.requests.as_deref_mut() {
            r.forget_finished(now, keep);
        }
        let taken = self.messaging.pending_request((channel, next)).is_some()
            || self
                .messaging
                .requests
                .as_deref()
                .is_some_and(|r| r.finished_lately((channel, next)));
        if taken {
            // 65,536 messages later an old request still waits, or an answer to one may
            // still come: refuse rather than confuse.
            return Err(SendError::TooManyRequests {
                max: config.max_pending_requests,
            });
        }
        let seq = self.send(config, channel, payload, true, route)? as u16;
        let requests = self.messaging.requests.get_or_insert_with(|| {
            Box::new(Requests {
                pending: HashMap::with_hasher(hasher),
                deadlines: BinaryHeap::new(),
                finished: VecDeque::new(),
                finished_keys: HashMap::with_hasher(hasher),
            })
        });
        requests
            .pending
            .insert((channel, seq), PendingRequest { id, partial: None });
        let deadline = now + config.request_timeout;
        requests
            .deadlines
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
        let peer_budget = self.peer_reassembly_budget;
        let chunk_count = chunks_for(config, len);
        // The peer reassembles a chunked response whatever the channel: one it could never
        // hold would block every response behind it.
        fits_peer_budget(config, len, chunk_count, peer_budget)?;
        self.channel_with_room(config, channel, len)?.queued_bytes += len;
        self.messaging.responses_waiting = true;
        self.messaging
            .responses
            .get_or_insert_with(Default::default)
            .queue
            .push_back((
                channel,
                Outgoing {
                    seq: u64::from(request.sequence),
                    response: true,
                    request: false,
                    route: Route::default(),
                    chunk_count,
                    next_chunk: 0,
                    payload,
                },
            ));
        self.stats.messages_sent += 1;
        self.stats.payload_bytes_sent += len as u64;
        Ok(())
    }

    /// Deadlines kept for requests (for the tests).
    #[cfg(test)]
    pub(crate) fn request_deadlines(&self) -> usize {
        self.messaging
            .requests
            .as_ref()
            .map_or(0, |r| r.deadlines.len())
    }

    /// Takes the messages and requests queued on `lost`, an attempt of ours that never
    /// connected (so nothing of them left), which this connection replaces before it sent
    /// or took any message of its own; not if `lost` pinned a server key that this peer
    /// (whose static key is `proven`) did not prove: anyone on the path can make a crossing
    /// connect win, and what was queued for the pinned peer must not go to it.
    pub(crate) fn take_queued_from(&mut self, lost: &mut Connection, proven: Option<PublicKey>) {
        debug_assert!(lost.is_client && !lost.is_connected());
        let pinned = lost.client_handshake.as_ref().and_then(|h| h.server_key);
        if pinned.is_some_and(|pin| Some(pin) != proven) {
            return;
        }
        let untouched = |m: &Messaging| {
            m.in_flight.is_none() && m.reassembly_bytes == 0 && m.responses.is_none()
        };
        if !untouched(&self.messaging) || !untouched(&lost.messaging) {
            return;
        }
        let mine = &self.messaging;
        if mine.requests.is_some() || mine.maybe_queued != 0 || !mine.recv_channels.is_empty() {
            return;
        }
        core::mem::swap(&mut self.messaging, &mut lost.messaging);
        self.superseded += core::mem::take(&mut lost.superseded);
        self.refresh_request_timer();
        lost.refresh_request_timer();
    }

    /// Stops coding's encoder, keeping the count of repairs it sent.
    fn drop_encoder(&mut self) {
        self.uncovered_logged = false;
        if let Some(tx) = self.transport.fec_tx.take() {
            if tx.repairs_sent > 0 {
                self.stats.rare.get().repairs_sent += tx.repairs_sent;
            }
        }
    }

    fn refresh_request_timer(&mut self) {
        let next = self
            .messaging
            .requests
            .as_ref()
            .and_then(|r| r.deadlines.peek())
            .map(|Reverse((t, ..))| *t);
        self.timers.set_opt(Timer::Request, next);
    }

    pub(crate) fn progress(&self, channel: u8) -> Option<Progress> {
        self.messaging
            .recv_channels
            .get(usize::from(channel))?
            .progress()
    }

    /// Gives back what an idle connection does not need: empty queues' and windows'
    /// buffers, the sent-frame slab, packet records, coding state. Traffic grows them again.
    fn trim(&mut self) {
        for ch in &mut self.messaging.send_channels {
            ch.trim();
        }
        for ch in &mut self.messaging.recv_channels {
            ch.trim();
        }
        // (Idle, nothing is in flight: no chunk of a large response awaits its ack.)
        if self
            .messaging
            .responses
            .as_ref()
            .is_some_and(|r| r.queue.is_empty() && r.open_chunks == 0)
        {
            self.messaging.responses = None;
        }
        debug_assert!(
            self.messaging
                .responses
                .as_ref()
                .is_none_or(|r| r.open_chunks == 0)
                || self.messaging.frames_in_flight() > 0,
            "a large response's chunks counted open with no frame in flight"
        );
        if let Some(f) = &mut self.messaging.in_flight {
            if f.frames.len() == 0 {
                // Every key still to resend names an acknowledged frame (lost, then
                // acknowledged after all): nothing is left to send again.
                f.resend.clear();
                f.resend_chunks.clear();
                self.messaging.resend_waiting = false;
                // Every channel is idle: each large message's reservation went back with
                // its last frame's acknowledgement.
                debug_assert_eq!(
                    f.large_in_window, 0,
                    "reassembly held with nothing in flight"
                );
            }
            if f.frames.len() == 0 && f.large_in_window == 0 {
                self.messaging.frame_epoch = f.frames.next_epoch();
                self.messaging.in_flight = None;
            } else {
                // Not reached while `trim` runs only when idle (nothing in flight, so no
                // reservation either, as checked above); if it were, the box stays and
                // gives back what it can.
                if f.resend.is_empty() {
                    f.resend = VecDeque::new();
                }
                if f.resend_chunks.is_empty() {
                    f.resend_chunks = VecDeque::new();
                }
                f.frames.trim();
            }
        }
        self.transport.sent.trim();
        self.transport.received.release_room();
        self.transport.paths.trim();
        if !self.transport.coding {
            self.drop_encoder();
        }
        // Repairs of packets a keepalive interval old would come too late to help. (What
        // its solving still owes stays: a peer could otherwise have the decoder given back,
        // and its debt with it, every keepalive interval.)
        if let Some(rx) = self.transport.fec_rx.take() {
            self.transport.solve_work_owed = rx.work_owed();
        }
    }

    /// Whether all queued messages were sent and acknowledged.
    pub(crate) fn is_idle(&self) -> bool {
        self.messaging
            .send_channels
            .iter()
            .all(SendChannel::is_idle)
            && !self.messaging.responses_queued()
            && self.messaging.frames_in_flight() == 0
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
                    let outcome = &mut shared.scratch.outcome;
                    outcome.clear();
                    if self.transport.sent.on_loss_timeout(
                        now,
                        config.max_ack_delay,
                        config.max_rto,
                        outcome,
                    ) {
                        self.stats.rare.get().rto_fired += 1;
                        self.transport.probes_due = crate::transport::recovery::PROBES_PER_TIMEOUT;
                        self.fall_back_if_direct_path_died();
                    }
                    self.apply_outcome(&mut shared.scratch.outcome);
                }
                Timer::Ack => self.transport.ack_now = true,
                Timer::Keepalive => {
                    self.keepalive_due = true;
                    // Nothing sent for a keepalive interval: if nothing is queued either,
                    // the buffers traffic grew go back.
                    if self.is_idle() {
                        self.trim();
                    }
                }
                Timer::Request => self.expire_requests(now, shared),
                Timer::Reassembly => {
                    let deadline = now - config.reassembly_timeout;
                    for ch in &mut self.messaging.recv_channels {
                        let (freed, evicted) = ch.evict_stale(deadline);
                        shared
                            .budget
                            .release(&mut self.messaging.reassembly_bytes, freed);
                        for _ in 0..evicted {
                            self.stats.rare.dropped(DropReason::ReassemblyEvicted);
                        }
                    }
                }
                Timer::ResetConfirm => {
                    if let Some(watch) = self.reset.as_mut().filter(|w| w.hint.is_some()) {
                        watch.rounds += 1;
                        if watch.rounds >= RESET_CONFIRM_ROUNDS {
                            self.close(DisconnectReason::PeerReset, None);
                            return;
                        }
                        self.reset_probe(now, config);
                    }
                }
                Timer::Pacing | Timer::Probe => {}
            }
        }
        self.update_timers(config);
    }

    fn expire_requests(&mut self, now: Instant, shared: &mut Shared<'_>) {
        let Some(requests) = self.messaging.requests.as_mut() else {
            return;
        };
        while let Some(Reverse((deadline, id, channel, seq))) = requests.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            requests.deadlines.pop();
            if requests
                .pending
                .get(&(channel, seq))
                .is_some_and(|p| p.id.0 == id)
            {
                if let Some(p) = requests.pending.remove(&(channel, seq)) {
                    let reserved = p.partial.map_or(0, |r| r.reserved());
                    shared
                        .budget
                        .release(&mut self.messaging.reassembly_bytes, reserved);
                }
                let keep = finished_requests_kept(shared.config);
                requests.finish((channel, seq), now, false, keep);
                shared.events.push(Event::RequestTimedOut {
                    conn: self.handle,
                    id: RequestId(id),
                });
            }
        }
        self.refresh_request_timer();
    }

    /// Recomputes the timers derived from state.
    fn update_timers(&mut self, config: &Config) {
        self.timers.set_opt(
            Timer::Loss,
            self.transport
                .sent
                .loss_deadline(config.max_ack_delay, config.max_rto),
        );
        let mut oldest_partial = None;
        let mut maybe = self.messaging.partial_channels;
        while maybe != 0 {
            let i = maybe.trailing_zeros();
            maybe &= maybe - 1;
            let oldest = self
                .messaging
                .recv_channels
                .get(i as usize)
                .and_then(RecvChannel::oldest_partial);
            match oldest {
                Some(t) => oldest_partial = Some(oldest_partial.map_or(t, |o: Instant| o.min(t))),
                None => self.messaging.partial_channels &= !(1 << i),
            }
        }
        self.timers.set_opt(
            Timer::Reassembly,
            oldest_partial.map(|t| t + config.reassembly_timeout),
        );
    }

    /// Probe timeouts in a row on a direct path: it is gone (a NAT mapping expired, a
    /// route changed). The relay still works, so the connection returns to it at once
    /// rather than waiting for the idle timeout; what was in flight is retransmitted there.
    fn fall_back_if_direct_path_died(&mut self) {
        if self.transport.paths.on_direct_path()
            && self.transport.sent.pto_count() >= DIRECT_PATH_PTOS
        {
            if let Some(relay) = self.transport.paths.fallback() {
                let old = self.transport.paths.migrate(relay);
                self.moved_from.get_or_insert_with(|| Box::new(old));
                self.stats.rare.get().path_fallbacks += 1;
            }
        }
    }

    /// Applies what an acknowledgement or loss detection resolved.
    fn apply_outcome(&mut self, outcome: &mut AckOutcome) {
        if outcome.packets_lost > 0 {
            self.stats.rare.get().packets_lost += outcome.packets_lost;
        }
        self.update_loss_rate(outcome);
        // (Without frames in flight, every key resolved is an old store's: stale.)
        if let Some(f) = self.messaging.in_flight.as_deref_mut() {
            for &key in &outcome.acked_frames {
                let Some(frame) = f.frames.remove(key) else {
                    continue;
                };
                if let Some(seq) = frame.message_seq {
                    if let Some(ch) = self
                        .messaging
                        .send_channels
                        .get_mut(usize::from(frame.header.channel))
                    {
                        f.large_in_window -= ch.on_frame_acked(seq);
                    }
                } else if frame.header.chunk.is_some() {
                    if let Some(r) = &mut self.messaging.responses {
                        r.open_chunks = r.open_chunks.saturating_sub(1);
                        if r.open_chunks == 0 {
                            r.open_reserved = 0;
                        }
                    }
                }
            }
            // Each ordered channel's oldest large message with frames unacknowledged, looked
            // up once per channel (a window is up to 4,096 messages, and a loss can declare
            // as many frames lost at once).
            let mut oldest_large: [Option<Option<u64>>; crate::config::MAX_CHANNELS] =
                [None; crate::config::MAX_CHANNELS];
            for &key in &outcome.lost_frames {
                if let Some(frame) = f.frames.get_mut(key) {
                    frame.in_flight = frame.in_flight.saturating_sub(1);
                    if frame.in_flight == 0 {
                        // A whole message goes again ahead of chunks, but not ahead of a
                        // large message of its own ordered channel: the receiver would hold
                        // it until that one completes, and refuse it if short of room.
                        let channel = usize::from(frame.header.channel);
                        let behind_large = frame.message_seq.is_some_and(|seq| {
                            let oldest = oldest_large.get_mut(channel).map(|cached| {
                                *cached.get_or_insert_with(|| {
                                    self.messaging
                                        .send_channels
                                        .get(channel)
                                        .filter(|ch| ch.kind == DeliveryKind::Ordered)
                                        .and_then(SendChannel::oldest_large_unacked)
                                })
                            });
                            oldest.flatten().is_some_and(|large| large < seq)
                        });
                        if frame.header.chunk.is_some() || behind_large {
                            f.resend_chunks.push_back(key);
                        } else {
                            f.resend.push_back(key);
                        }
                        self.messaging.resend_waiting = true;
                    }
                }
            }
        }
        outcome.clear();
    }

    /// Snapshot of the counters, with the live RTT and window.
    pub(crate) fn stats(&self) -> ConnectionStats {
        let mut s = self.stats.snapshot();
        s.repairs_sent += self
            .transport
            .fec_tx
            .as_ref()
            .map_or(0, |tx| tx.repairs_sent);
        s.smoothed_rtt = self.transport.sent.rtt.measured().unwrap_or_default();
        s.rtt_variance = self.transport.sent.rtt.variance();
        s.congestion_window = self.transport.sent.congestion.window();
        s.spurious_losses = u64::from(self.transport.sent.spurious_losses);
        s.superseded = self.superseded;
        s.recent_loss_ppm = ((u128::from(self.transport.loss_rate) * 1_000_000) >> 32)
            .min(u128::from(u32::MAX)) as u32;
        s
    }

    /// The figures a game shows on screen, at `now`.
    pub(crate) fn link_stats(&self, now: Instant) -> LinkStats {
        LinkStats {
            rtt: self.transport.sent.rtt.measured().unwrap_or_default(),
            loss_percent: self.loss_in.percent(),
            bytes_in_per_sec: self.rate_in.per_second(now),
            bytes_out_per_sec: self.rate_out.per_second(now),
        }
    }

    /// The peer said it does not know this connection (a `Reject` naming its id: it
    /// restarted). That is unauthenticated, so only a hint: probe, and close with `PeerReset`
    /// only if [`RESET_CONFIRM_ROUNDS`] rounds of probes draw nothing authentic. A live peer
    /// answers them; a refuted notice makes the next ones wait a growing back-off.
    pub(crate) fn on_reset_hint(&mut self, now: Instant, config: &Config) {
        if !self.is_connected() {
            return;
        }
        let watch = self.reset.get_or_insert_with(Default::default);
        if watch.hint.is_some() || now < watch.ignored_until {
            return;
        }
        watch.hint = Some(now);
        watch.rounds = 0;
        self.reset_probe(now, config);
    }

    /// One round of the reset check: two ack-eliciting probes, and the round's deadline.
    fn reset_probe(&mut self, now: Instant, config: &Config) {
        self.transport.probes_due = self.transport.probes_due.max(2);
        let rtt = &self.transport.sent.rtt;
        let wait = rtt.smoothed() * 2 + rtt.variance() * 4 + config.max_ack_delay;
        self.timers
            .set(Timer::ResetConfirm, now + wait.max(RESET_ROUND_MIN));
    }

    /// An authentic packet (`wire_pn`) arrived: if it is new, the peer knows this connection
    /// after all, and whoever said otherwise waits longer next time.
    pub(crate) fn heard_authentic(&mut self, now: Instant, wire_pn: u32) {
        let Some(watch) = self.reset.as_mut() else {
            return;
        };
        if watch.hint.is_none() {
            return;
        }
        // A packet taken before proves nothing: a replay of it is authentic too, whether or
        // not the peer still has the connection.
        let received = &self.transport.received;
        let fresh = received
            .extend(wire_pn)
            .is_some_and(|pn| received.verdict(pn) == crate::transport::received::Verdict::New);
        if fresh && watch.hint.take().is_some() {
            self.timers.stop(Timer::ResetConfirm);
            watch.ignored_until = now + watch.backoff;
            watch.backoff = (watch.backoff * 2).min(RESET_BACKOFF_MAX);
        }
    }

    /// Whether a large reliable message queued before the handshake ended reserves more
    /// than the peer's reassembly budget (from its `Accept`): it could never be sent.
    pub(crate) fn queues_beyond_peer_budget(&self, config: &Config) -> bool {
        let budget = self.peer_reassembly_budget;
        self.messaging.send_channels.iter().any(|ch| {
            ch.kind.is_reliable()
                && ch.queue.iter().any(|o| {
                    o.chunk_count > 1 && reservation(o.chunk_count, config.chunk_payload()) > budget
                })
        })
    }

    /// Payload bytes the application may still queue on `channel`.
    pub(crate) fn queue_room(&self, config: &Config, channel: u8) -> Option<usize> {
        let i = usize::from(channel);
        Some(match self.messaging.send_channels.get(i) {
            Some(ch) => ch.room_for_one().unwrap_or(0),
            None => config
                .channels
                .get(i)?
                .max_queued_bytes
                .saturating_sub(crate::messaging::channel::QUEUE_ENTRY_BYTES),
        })
    }

    /// Bytes in flight (for tests and stats).
    pub(crate) fn bytes_in_flight(&self) -> u64 {
        self.transport.sent.bytes_in_flight()
    }

    /// Releases everything the connection holds from the endpoint's receive budget.
    pub(crate) fn release_all(&mut self, budget: &mut ReceiveBudget) {
        let held = self.messaging.reassembly_bytes;
        budget.release(&mut self.messaging.reassembly_bytes, held);
    }

    /// Folds the packets an acknowledgement or loss detection resolved into the loss rate:
    /// each moves an exponentially weighted average 1/512 of the way to 0 (acknowledged) or
    /// 1 (lost), so it remembers the last several hundred packets.
    fn update_loss_rate(&mut self, outcome: &AckOutcome) {
        for _ in 0..outcome.packets_acked.min(512) {
            self.transport.loss_rate -= self.transport.loss_rate >> 9;
        }
        for _ in 0..outcome.packets_lost.min(512) {
            self.transport.loss_rate += ((1 << 32) - self.transport.loss_rate) >> 9;
        }
    }
}

/// Whether the peer can hold a message of `len` bytes sent in `chunk_count` chunks while it
/// reassembles it (its per-connection budget, from the handshake).
/// The client's `Connect` for `cookie`, encoded.
pub(crate) fn connect_packet(
    config: &Config,
    client_nonce: u64,
    cookie: Cookie,
    hs: &ClientHandshake,
) -> Option<Vec<u8>> {
    let ephemeral = hs.ephemeral.as_ref().map(|e| e.public.0);
    let packet = Packet::Connect {
        protocol_id: config.protocol_id,
        client_nonce,
        cookie,
        channel_layout: config.channel_layout(),
        mtu: config.mtu as u16,
        reassembly_budget: crate::endpoint::wire_budget(config),
        protection: config.protection,
        ephemeral,
        static_key: ephemeral
            .and(config.static_keypair.as_ref())
            .map(|k| k.public_key().0),
        token: hs.token.as_ref().map(|t| &t.sealed[..]),
        data: &hs.data,
        token_proof: None,
    };
    let mut connect = alloc::vec![0; packet.encoded_len()];
    packet.encode(&mut connect)?;
    if let Some(token) = &hs.token {
        let proof = crate::crypto::token_proof(&token.client_key, &connect);
        connect.extend_from_slice(&proof);
    }
    Some(connect)
}

fn fits_peer_budget(
    config: &Config,
    len: usize,
    chunk_count: u16,
    peer_budget: usize,
) -> Result<(), SendError> {
    if chunk_count > 1 && reservation(chunk_count, config.chunk_payload()) > peer_budget {
        return Err(SendError::MessageTooLarge {
            size: len,
            max: peer_budget,
        });
    }
    Ok(())
}

/// Challenges sent to a direct path a hub introduced before giving up on it.
pub(crate) const PROBE_ATTEMPTS: u8 = 8;
/// Shortest time between two of them.
const PROBE_INTERVAL_MIN: core::time::Duration = core::time::Duration::from_millis(25);

/// Silence on a direct path after which a packet through the relay moves a link back.
pub(crate) const DIRECT_QUIET_MIN: core::time::Duration = core::time::Duration::from_millis(100);
/// Probe timeouts in a row after which a direct path counts as dead.
const DIRECT_PATH_PTOS: u32 = 2;

/// How many chunks a payload of `len` bytes is sent in (1: whole).
fn chunks_for(config: &Config, len: usize) -> u16 {
    // Sent whole if it fits a datagram with the largest header it can have.
    let whole = wire::MAX_MESSAGE_HEADER_LEN + MAX_VARINT_LEN + len;
    if whole + MAX_DATA_HEADER_LEN <= config.mtu {
        1
    } else {
        chunk_count(len, config.chunk_payload()).min(usize::from(u16::MAX)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's connection to 10.0.0.2:5000, made at `now` under `config`.
    fn server_connection(config: &Config, now: Instant) -> Connection {
        let handle = ConnectionHandle {
            index: 0,
            generation: 0,
        };
        let remote = SocketAddr::from(([10, 0, 0, 2], 5000));
        let prf = crate::hash::Prf::from_key([7; 16]);
        Connection::new(config, handle, remote, now, false, 1, prf)
    }

    /// Queues a frame of channel 2 holding `payload` to be sent again, as a loss does;
    /// `gone`: its frame was let go since (acknowledged late), leaving only the entry.
    fn queue_resend(c: &mut Connection, reliable: bool, payload: Bytes, gone: bool) {
        let f = c.messaging.in_flight();
        let header = MessageHeader {
            channel: 2,
            send_type: SendType::Message,
            reliable,
            owner: 0,
            sequence: 0,
            redirect: None,
            chunk: None,
        };
        let key = f.frames.insert(SentFrame {
            header,
            payload,
            message_seq: None,
            in_flight: 0,
        });
        if gone {
            f.frames.remove(key);
        }
        f.resend.push_back(key);
        c.messaging.resend_waiting = true;
    }

    /// A packet's whole ordered messages are held only past the run they complete, which
    /// is a walk over the receive window (a peer can fill it behind a missing message): it is
    /// not walked for a packet refused without them, nor for one let in with all of them
    /// counted as held; only in the band between.
    #[cfg(feature = "std")]
    #[test]
    fn the_ordered_run_is_walked_only_when_its_answer_matters() {
        let now = Instant::from_millis(1);
        let mut c = server_connection(&Config::default(), now);
        let (mut events, mut budget) = (EventQueue::default(), ReceiveBudget::default());
        let mut scratch = Scratch::default();
        let header = MessageHeader {
            channel: 3,
            send_type: SendType::Message,
            reliable: true,
            owner: 0,
            sequence: 0,
            redirect: None,
            chunk: None,
        };
        let mut admit = |c: &mut Connection, config: &Config, event_share: usize| {
            scratch.parsed_frames.push((header, 0..1));
            if event_share == 1 << 21 {
                // With a chunk of an unreliable message, which must leave room to the rest.
                let chunk = Some(ChunkInfo { index: 0, count: 2 });
                let unreliable = MessageHeader {
                    channel: 0,
                    chunk,
                    ..header
                };
                scratch.parsed_frames.push((unreliable, 0..1));
            }
            scratch.ordered.extend([(3, 0, 80), (3, 4_000, 80)]);
            let mut shared = Shared {
                config,
                events: &mut events,
                budget: &mut budget,
                event_share,
                scratch: &mut scratch,
            };
            let verdict = c.admitted_room(50, &mut shared);
            scratch.parsed_frames.clear();
            (verdict, receive::WALKS.with(|w| w.replace(0)))
        };
        let roomy = Config::default();
        assert_eq!(
            admit(&mut c, &roomy, 0),
            (Err(DropReason::EventQueueFull), 0),
            "refused without its ordered messages"
        );
        assert_eq!(
            admit(&mut c, &roomy, 1 << 20),
            (Ok(210), 0),
            "room for all of them"
        );
        assert_eq!(
            admit(&mut c, &roomy, 1 << 21),
            (Ok(50), 1),
            "exact when unreliable chunks must leave room"
        );
        let tight = Config {
            reassembly_budget: 100,
            ..Config::default()
        };
        assert_eq!(
            admit(&mut c, &tight, 1 << 20),
            (Ok(50), 1),
            "walked (no message of the channel held yet): the run takes both"
        );
        // With the channel's base at 0, message 4,000 stays held past the run: refused.
        c.messaging.recv_channel_mut(&tight, 3);
        assert_eq!(
            admit(&mut c, &tight, 1 << 20),
            (Err(DropReason::ReassemblyBudget), 1)
        );
    }

    /// Finished requests are looked up by key (a peer picks how many stale responses a
    /// datagram carries): the count by key follows the list through expiry, eviction at
    /// `FINISHED_KEPT` and keys that finish more than once, answered or not.
    #[test]
    fn finished_requests_are_found_by_key_until_forgotten() {
        let prf = crate::hash::Prf::from_key([3; 16]);
        let mut r = Requests {
            pending: HashMap::with_hasher(SeededState::new(&prf)),
            deadlines: BinaryHeap::new(),
            finished: VecDeque::new(),
            finished_keys: HashMap::with_hasher(SeededState::new(&prf)),
        };
        let keep = Duration::from_secs(10);
        let t0 = Instant::from_millis(1);
        r.finish((1, 7), t0, false, keep);
        assert!(r.finished_lately((1, 7)) && !r.answered_lately((1, 7)));
        r.finish((1, 7), t0 + Duration::from_secs(6), true, keep);
        assert!(r.answered_lately((1, 7)), "answered the second time");
        assert!(!r.finished_lately((2, 7)) && !r.finished_lately((1, 8)));
        // The first (timed out) entry expires; the answered one stays.
        r.forget_finished(t0 + Duration::from_secs(11), keep);
        assert!(r.answered_lately((1, 7)));
        r.forget_finished(t0 + Duration::from_secs(17), keep);
        assert!(!r.finished_lately((1, 7)), "both forgotten");
        assert!(r.finished_keys.is_empty());
        // Past FINISHED_KEPT the oldest go first, and their keys with them.
        let t1 = t0 + Duration::from_secs(20);
        for seq in 0..FINISHED_KEPT as u16 + 10 {
            r.finish((0, seq), t1, seq % 2 == 0, keep);
        }
        assert_eq!(r.finished.len(), FINISHED_KEPT);
        assert_eq!(r.finished_keys.len(), FINISHED_KEPT);
        assert!(!r.finished_lately((0, 9)) && r.finished_lately((0, 10)));
        assert!(r.answered_lately((0, 10)) && !r.answered_lately((0, 11)));
        assert!(r.answered_lately((0, FINISHED_KEPT as u16 + 8)));
    }

    /// A packet given up before it leaves (nothing in it after all: the only frame waiting
    /// to go again was acknowledged meanwhile) takes back the repair written into it: the
    /// packets that repair covered are covered by the next one instead of by none.
    #[test]
    fn a_packet_given_up_takes_its_repair_back_and_the_next_carries_it() {
        let config = Config::default();
        let mut now = Instant::from_millis(1);
        let mut c = server_connection(&config, now);
        // Loss seen: small packets are coded.
        c.transport.loss_rate = u64::MAX / 4;
        let (mut buf, mut outcome) = ([0u8; 1500], AckOutcome::default());
        // A millisecond on, a 20-byte message (if any) and a packet: whether one left.
        let mut next_packet = |c: &mut Connection, message: Option<u8>| {
            if let Some(m) = message {
                let payload = Bytes::from(alloc::vec![m; 20]);
                c.send(&config, 0, payload, false, Route::default())
                    .unwrap();
            }
            now += core::time::Duration::from_millis(1);
            c.poll_transmit(now, &mut buf, &config, &mut outcome)
                .is_some()
        };
        for i in 0..3u8 {
            assert!(next_packet(&mut c, Some(i)));
        }
        let repairs = |c: &Connection| (c.transport.repaired_through, c.stats().repairs_sent);
        let before = repairs(&c);
        assert!(before.1 > 0, "the packets carry repairs");
        queue_resend(&mut c, false, Bytes::new(), true);
        assert!(!next_packet(&mut c, None));
        assert_eq!(repairs(&c), before);
        // The next packet carries the repair the given-up one took back.
        assert!(next_packet(&mut c, Some(9)));
        let after = repairs(&c);
        assert!(
            after.0 > before.0,
            "it covers the newest packet: {after:?} {before:?}"
        );
        assert_eq!(after.1, before.1 + 1);
    }

    /// What the pacer may hold for a burst (`Pacer::delay`): the least of what remains of
    /// the chunked messages at the channels' heads, and nothing while anything else could
    /// go: a whole message, or a retransmission.
    #[test]
    fn bulk_is_the_least_chunked_remainder_and_nothing_beside_anything_else() {
        let config = Config::default();
        let now = Instant::from_millis(1);
        let send = |c: &mut Connection, channel: u8, len: usize| {
            let payload = Bytes::from(alloc::vec![channel; len]);
            c.send(&config, channel, payload, false, Route::default())
                .unwrap();
        };
        let mut c = server_connection(&config, now);
        assert_eq!(c.bulk_waiting(), 0, "nothing queued");
        send(&mut c, 2, 100_000);
        let large = c.bulk_waiting();
        assert!(
            (95_000..=100_000).contains(&large),
            "a large message alone: {large}"
        );
        send(&mut c, 3, 3_000);
        let least = c.bulk_waiting();
        assert!(
            (2_500..=3_000).contains(&least),
            "beside one of 3 chunks: {least}"
        );
        send(&mut c, 0, 8);
        assert_eq!(c.bulk_waiting(), 0, "beside a whole message");

        let mut c = server_connection(&config, now);
        send(&mut c, 2, 100_000);
        queue_resend(&mut c, true, Bytes::from_static(b"lost"), false);
        assert_eq!(c.bulk_waiting(), 0, "beside a retransmission");
    }

    /// The idle trim gives the repair decoder back, but not what its solving still owes:
    /// a peer that goes quiet for a keepalive interval between bursts of repairs that never
    /// solve would otherwise get a fresh allowance each time (see `RepairDecoder::solve`).
    /// The next decoder takes the debt over.
    #[test]
    fn the_idle_trim_keeps_what_solving_owes() {
        let config = Config::default();
        let now = Instant::from_millis(1);
        let mut c = server_connection(&config, now);
        c.transport.fec_rx = Some(Box::new(crate::transport::fec::RepairDecoder::owing(
            123_456,
        )));
        c.trim();
        assert!(c.transport.fec_rx.is_none(), "given back");
        assert_eq!(c.transport.solve_work_owed, 123_456, "what it owed stays");
    }

    /// Every connection holds this much however idle (docs/benchmarks.md gives the figure
    /// and what is in it): state only some connections need belongs behind a box made on
    /// first use, not inline. (1,376 once the coding logs' write positions were kept here
    /// for memory hints, 2-3% faster with 10,000 coding clients; 1,104 since optional
    /// instants take eight bytes, the pacer keeps no copy of the config's limits, the
    /// handshake's cookie lives in the handshake's box, a hub connection's path state in one
    /// of its own, the address a connection moved from in another, responses to requests in
    /// another, reliable frames in flight in another, and the sent-frame store's free slots
    /// form a list through the slots; 1,056 since the counters of loss and its repair joined
    /// the drop counters' box, less the received packets' box of refused numbers; 1,072 with
    /// the packet numbers left unused against optimistic acknowledgements, checked on every
    /// packet sent and every acknowledgement, so inline.)
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_connection_struct_stays_within_1072_bytes() {
        let size = core::mem::size_of::<Connection>();
        assert!(size <= 1072, "Connection is {size} bytes");
    }
}
