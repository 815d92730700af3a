//! The receive path: a `Data` packet checked whole, its acknowledgement processed, and its
//! frames handed to their channels (or to the pending-request table) and turned into events.

use super::*;
use crate::event::Relay;
use crate::messaging::channel::Payload;
use crate::transport::fec::{self, RepairDecoder};
use crate::transport::path::PathStatus;
use crate::transport::received::Verdict;

#[cfg(all(test, feature = "std"))]
std::thread_local! {
    /// Walks of an ordered channel's receive window on this thread (see `admitted_room`).
    pub(super) static WALKS: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// What became of a `Data` packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataResult {
    /// Dropped, or refused for lack of room (its acknowledgement may still have counted).
    Dropped,
    /// Accepted and acknowledged.
    Accepted,
    /// Accepted, and it moved the connection from this (old) address to the one it came from.
    Migrated(SocketAddr),
}

/// The length `parse_frames` gives a chunk on an ordered channel in `Scratch::ordered`
/// while it parses: one that opens or continues its message's reassembly...
const CHUNK_OPENS: usize = usize::MAX;
/// ...and one that completes it.
const CHUNK_COMPLETES: usize = usize::MAX - 1;

/// Checks a packet's chunks on ordered channels (marked in `ordered`) against its whole
/// messages there, and leaves in `ordered` its whole messages and, as arriving with length
/// 0 (their reassembly is counted already), the messages its chunks complete. A message is
/// sent whole or in chunks, never both: a packet with a chunk and a whole frame of one
/// message is refused, since admission would take the whole one as arriving while the
/// chunk opens a reassembly in its slot, leaving the messages behind it held uncounted.
fn ordered_chunks_agree(ordered: &mut Vec<(u8, u64, usize)>) -> Result<(), DropReason> {
    ordered.sort_unstable();
    let chunk = |e: &(u8, u64, usize)| e.2 >= CHUNK_COMPLETES;
    for pair in ordered.windows(2) {
        let same_message = (pair[0].0, pair[0].1) == (pair[1].0, pair[1].1);
        if same_message && chunk(&pair[0]) != chunk(&pair[1]) {
            return Err(DropReason::ProtocolViolation);
        }
    }
    ordered.retain(|e| e.2 != CHUNK_OPENS);
    for e in ordered.iter_mut().filter(|e| e.2 == CHUNK_COMPLETES) {
        e.2 = 0;
    }
    Ok(())
}

/// The next packet in `Scratch::rebuilt` (see there): its number and frames.
fn next_rebuilt<'a>(rest: &mut &'a [u8]) -> Option<(u64, &'a [u8])> {
    let (pn, after) = rest.split_first_chunk::<8>()?;
    let (len, after) = after.split_first_chunk::<4>()?;
    let (frames, after) = after.split_at_checked(u32::from_le_bytes(*len) as usize)?;
    *rest = after;
    Some((u64::from_le_bytes(*pn), frames))
}

impl Connection {
    /// Handles a `Data` packet from `from` addressed to this connection. `frames` holds the
    /// packet's frames, borrowed for the call: what is kept of them is copied out.
    pub(crate) fn handle_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram_len: usize,
        header: &DataHeader<'_>,
        frames: &[u8],
        shared: &mut Shared<'_>,
    ) -> DataResult {
        let config = shared.config;
        if self.state != State::Connected {
            self.stats.rare.dropped(DropReason::Unexpected);
            return DataResult::Dropped;
        }
        let Some(pn) = self.transport.received.extend(header.packet_number) else {
            self.stats.rare.dropped(DropReason::DuplicatePacket);
            return DataResult::Dropped;
        };
        match self.transport.received.verdict(pn) {
            Verdict::New => {}
            // A refused packet's replay: the peer never sends the same number twice.
            Verdict::Duplicate | Verdict::Refused => {
                self.stats.rare.dropped(DropReason::DuplicatePacket);
                return DataResult::Dropped;
            }
            Verdict::TooFarAhead => {
                self.stats.rare.dropped(DropReason::OutOfWindow);
                return DataResult::Dropped;
            }
        }
        // Only a packet not taken before speaks for its address: a replay of one (from any
        // address) earns no credit, no challenge and no place among the candidates.
        let status = self.transport.paths.on_datagram(
            now,
            from,
            datagram_len,
            self.transport.sent.rtt.smoothed(),
        );
        if status == PathStatus::Unvalidated {
            // Not acted on in any way: it only earned its address a challenge.
            self.stats.rare.dropped(DropReason::UnvalidatedPath);
            return DataResult::Dropped;
        }
        // First pass: validate every frame before acting on any, so a packet is either
        // accepted whole (and acknowledged) or dropped whole (and retransmitted). Nothing in
        // an unauthenticated packet closes the connection: a forged one looks the same.
        let to_hold = match self.parse_frames(pn, frames, config, shared.scratch) {
            Ok(to_hold) => to_hold,
            Err(reason) => return self.refuse(pn, reason, shared.scratch),
        };
        // The packet is well-formed: its acknowledgement counts and it shows the peer is
        // alive, even if its messages must be refused for room below.
        if let Some(ack) = header.ack.as_ref().filter(|ack| {
            self.keys.is_none()
                || !(self.transport.sent.names_unsent(ack)
                    || self.transport.sent.names_skipped(ack))
        }) {
            let outcome = &mut shared.scratch.outcome;
            outcome.clear();
            self.transport
                .sent
                .on_ack(now, ack, config.max_ack_delay, outcome);
            self.apply_outcome(outcome);
        } else if header.ack.is_some() {
            // A protected peer acknowledging what was never sent (past the newest, or a number
            // left unused): a peer that lies is not kept (else it could try again around
            // the hole, for free), and nothing of its packet is taken.
            self.close(
                DisconnectReason::ProtocolViolation,
                Some(CloseCode::ProtocolViolation),
            );
            return self.refuse(pn, DropReason::ProtocolViolation, shared.scratch);
        }
        self.last_received = now;
        self.timers.set(Timer::Idle, now + config.idle_timeout);
        let to_hold = match self.admitted_room(to_hold, shared) {
            Ok(to_hold) => to_hold,
            Err(reason) => {
                self.update_timers(config);
                return self.refuse(pn, reason, shared.scratch);
            }
        };
        let has_frames = !shared.scratch.parsed_frames.is_empty();
        let newest = self.transport.received.largest().is_none_or(|l| pn > l);
        let out_of_order = self.deliver_packet(now, pn, frames, to_hold, shared);
        self.stats.packets_received += 1;
        self.stats.bytes_received += datagram_len as u64;
        self.rate_in.add(now, datagram_len);
        self.loss_in.on_packet(now, pn);
        if header.ping || (has_frames && out_of_order) {
            // (Out of order: the gap may be a lost reliable packet, which an early
            // acknowledgement lets the sender resend sooner.)
            self.transport.eliciting_since_ack += 1;
            if out_of_order || self.transport.eliciting_since_ack >= ACK_EVERY {
                self.transport.ack_now = true;
            } else {
                self.ack_within(now, config.max_ack_delay);
            }
        } else if has_frames {
            self.transport.lazy_since_ack += 1;
            if self.transport.lazy_since_ack >= LAZY_ACK_EVERY {
                self.transport.ack_now = true;
            } else {
                self.ack_within(now, LAZY_ACK_DELAY);
            }
        }
        if let Some(repair) = &header.repair {
            self.take_repair(now, pn, repair, shared);
        }
        self.update_timers(config);
        let fallback = self.transport.paths.fallback();
        let on_direct_path = self.transport.paths.on_direct_path();
        let quiet_after = (self.transport.sent.rtt.smoothed() * 3).max(DIRECT_QUIET_MIN);
        let relay = self.transport.paths.relay_mut();
        if status == PathStatus::Current && on_direct_path {
            if let Some(relay) = relay {
                relay.direct_heard = now;
            }
        } else if status == PathStatus::Validated && newest {
            // A peer link goes back to its relay only when the direct path has gone quiet:
            // right after a move the peer may still send through the hub for a round trip.
            // (Off a hub there is no relay, and any validated path is moved to.)
            let quiet = relay
                .as_ref()
                .is_none_or(|r| now.saturating_duration_since(r.direct_heard) > quiet_after);
            if Some(from) != fallback || quiet {
                if Some(from) != fallback {
                    if let Some(relay) = relay {
                        relay.direct_heard = now;
                    }
                }
                let old = self.transport.paths.migrate(from);
                return DataResult::Migrated(old);
            }
        }
        DataResult::Accepted
    }

    /// Arms the acknowledgement timer to fire within `delay` (keeping an earlier deadline).
    fn ack_within(&mut self, now: Instant, delay: core::time::Duration) {
        let at = now + delay;
        if self.timers.get(Timer::Ack).is_none_or(|t| at < t) {
            self.timers.set(Timer::Ack, at);
        }
    }

    /// Drops packet `pn` before it is accepted (counted). On a protected connection its
    /// number is remembered, so that a replay of it is dropped as a duplicate; an unprotected
    /// packet may be anyone's, and remembering its number would let a forger refuse the
    /// peer's next packets in advance.
    fn refuse(&mut self, pn: u64, reason: DropReason, scratch: &mut Scratch) -> DataResult {
        scratch.parsed_frames.clear();
        scratch.ordered.clear();
        if self.keys.is_some() {
            self.transport.received.refuse(pn);
        }
        self.stats.rare.dropped(reason);
        DataResult::Dropped
    }

    /// Decodes and checks every frame of a packet into `scratch.parsed_frames` (payloads as
    /// ranges of `frames`), before any acts. Returns the receive memory they would newly
    /// hold, or why the packet must be dropped.
    fn parse_frames(
        &mut self,
        pn: u64,
        frames: &[u8],
        config: &Config,
        scratch: &mut Scratch,
    ) -> Result<usize, DropReason> {
        let parsed = &mut scratch.parsed_frames;
        parsed.clear();
        let mut to_hold = 0usize;
        // Whole messages on ordered channels: (channel, sequence, length); and messages the
        // packet completes with their last missing chunk, as holding nothing more (their
        // reassembly is counted already).
        let ordered = &mut scratch.ordered;
        ordered.clear();
        // Chunks among them (marked: see `ordered_chunks_agree`).
        let mut chunks = 0usize;
        let max_chunks = chunks_for(config, config.max_message_size);
        let mut verdict = Ok(());
        for frame in Frames::new(frames) {
            let frame = match frame {
                Ok(f) => f,
                Err(_) => {
                    verdict = Err(DropReason::Malformed);
                    break;
                }
            };
            let h = frame.header;
            let Some(ch) = config.channels.get(usize::from(h.channel)) else {
                verdict = Err(DropReason::UnknownChannel);
                break;
            };
            // Made on the first frame naming it, so the checks below see its state.
            self.messaging.recv_channel_mut(config, h.channel);
            if !self.is_client && h.owner != self.peer_user_id {
                verdict = Err(DropReason::ProtocolViolation);
                break;
            }
            if h.chunk.is_some_and(|c| c.count > max_chunks) {
                verdict = Err(DropReason::Oversized);
                break;
            }
            let past_window = h.send_type == SendType::Message
                && self
                    .messaging
                    .recv_channels
                    .get(usize::from(h.channel))
                    .is_some_and(|c| c.is_past_window(h.sequence));
            if past_window {
                // Counted as holding nothing below, it could be stored once earlier frames of
                // this packet moved the window: refuse the packet instead.
                verdict = Err(DropReason::ProtocolViolation);
                break;
            }
            to_hold += self.bytes_to_hold(ch.kind, &h, config);
            if ch.kind == DeliveryKind::Ordered
                && h.send_type == SendType::Message
                && h.chunk.is_none()
            {
                let position = self
                    .messaging
                    .recv_channels
                    .get(usize::from(h.channel))
                    .and_then(|c| c.window_position(h.sequence));
                if let Some((seq, true)) = position {
                    ordered.push((h.channel, seq, frame.payload.len()));
                }
            }
            // A large message's last chunk often shares its packet with the next message:
            // counted as waiting for the large one, that message made a receiver with little
            // room refuse the packet, which the sender sent again as it was, for ever.
            if let (DeliveryKind::Ordered, SendType::Message, Some(chunk)) =
                (ch.kind, h.send_type, h.chunk)
            {
                if let Some(c) = self.messaging.recv_channels.get(usize::from(h.channel)) {
                    if let Some((seq, _)) = c.window_position(h.sequence) {
                        let len = frame.payload.len();
                        let completes = c.completed_by(seq, chunk, len, config.chunk_payload(), pn);
                        let mark = if completes {
                            CHUNK_COMPLETES
                        } else {
                            CHUNK_OPENS
                        };
                        ordered.push((h.channel, seq, mark));
                        chunks += 1;
                    }
                }
            }
            // (Where it lies in `frames`: the frames are only borrowed.)
            let start = frame.payload.as_ptr().addr() - frames.as_ptr().addr();
            parsed.push((h, start..start + frame.payload.len()));
        }
        if verdict.is_ok() && chunks > 0 {
            verdict = ordered_chunks_agree(ordered);
        }
        if verdict.is_err() {
            ordered.clear();
        }
        verdict.map(|()| to_hold)
    }

    /// What a well-formed packet is let in to hold, with its whole messages on ordered
    /// channels (`scratch.ordered`) counted as held only past the run they complete; or why
    /// it is refused. That run is a walk over the receive window, which a peer can fill
    /// behind a missing message, so it is walked only when its answer matters: not for a
    /// packet refused without those messages, nor for one let in with all of them held
    /// and no unreliable chunk to leave room to them. (A packet refused after the walk
    /// needs the room left to fall within its ordered bytes, a band under an MTU wide.)
    pub(super) fn admitted_room(
        &mut self,
        to_hold: usize,
        shared: &mut Shared<'_>,
    ) -> Result<usize, DropReason> {
        let mut ordered = core::mem::take(&mut shared.scratch.ordered);
        let most = ordered.iter().map(|e| e.2).sum::<usize>();
        // What the packet is let in with is also the room its unreliable chunks must leave
        // to the rest (`deliver_packet`): with any, only the exact figure will do.
        let channels = &shared.config.channels;
        let unreliable_chunks = shared.scratch.parsed_frames.iter().any(|(h, _)| {
            h.chunk.is_some()
                && h.send_type == SendType::Message
                && !channels
                    .get(usize::from(h.channel))
                    .is_some_and(|c| c.kind.is_reliable())
        });
        let verdict = if let Some(reason) = self.refusal(to_hold, shared) {
            Err(reason)
        } else if most == 0
            || (!unreliable_chunks && self.refusal(to_hold + most, shared).is_none())
        {
            Ok(to_hold + most)
        } else {
            #[cfg(all(test, feature = "std"))]
            WALKS.with(|w| w.set(w.get() + 1));
            let to_hold = to_hold + self.ordered_bytes_to_hold(&mut ordered);
            self.refusal(to_hold, shared).map_or(Ok(to_hold), Err)
        };
        ordered.clear();
        shared.scratch.ordered = ordered;
        verdict
    }

    /// Why the parsed messages must be refused for lack of room, if they must: the
    /// application is behind (this connection's share of the event queue is used), or there
    /// is no memory to hold them. Refused packets are not acknowledged, so the sender keeps
    /// their frames and backs off.
    fn refusal(&self, to_hold: usize, shared: &Shared<'_>) -> Option<DropReason> {
        if shared.scratch.parsed_frames.is_empty() {
            return None;
        }
        let config = shared.config;
        // A connection with none of its events waiting gets its packet in even when the
        // queue is at its limit, so a flood on one connection does not starve a quiet one
        // whose events were read — up to a quarter over the limit, which bounds what many
        // connections (or one that keeps reconnecting) can add that way.
        let limit = config.max_pending_event_bytes;
        let queued = shared.events.bytes();
        let over_share = self.event_bytes >= shared.event_share
            || (queued >= limit && (self.event_bytes > 0 || queued >= limit + limit / 4));
        if over_share {
            Some(DropReason::EventQueueFull)
        } else if !shared
            .budget
            .admits(self.messaging.reassembly_bytes, to_hold, config)
        {
            Some(DropReason::ReassemblyBudget)
        } else {
            None
        }
    }

    /// Takes an admitted packet: records its number (it will be acknowledged) and hands its
    /// parsed frames to their channels. `admitted` is what the packet was let in to hold.
    /// Returns whether it arrived out of order.
    fn deliver_packet(
        &mut self,
        now: Instant,
        pn: u64,
        frames: &[u8],
        admitted: usize,
        shared: &mut Shared<'_>,
    ) -> bool {
        let out_of_order = self.transport.record_received(pn, now);
        let mut parsed = core::mem::take(&mut shared.scratch.parsed_frames);
        // Room the packet's reliable frames and responses were admitted with but have not
        // taken yet: unreliable chunks ahead of them in the packet must leave it to them.
        let mut promised = admitted;
        // Whether the peer codes this packet (its repairs may cover it): keep it for them.
        let mut coded = false;
        for (i, (header, at)) in parsed.drain(..).enumerate() {
            debug_assert!(
                frames.get(at.clone()).is_some(),
                "a range of another packet"
            );
            let payload = frames.get(at).unwrap_or_default();
            let kind = shared
                .config
                .channels
                .get(usize::from(header.channel))
                .map(|c| c.kind);
            coded |= kind.is_some_and(|kind| fec::worth_coding(&header, kind));
            // (What an unreliable frame takes comes out of the room, not out of the promise.)
            let admitted_with_packet = header.send_type == SendType::Response
                || kind.is_some_and(DeliveryKind::is_reliable);
            let held_before = self.messaging.reassembly_bytes;
            self.receive_frame(now, (pn, i as u16), header, payload, promised, shared);
            if admitted_with_packet {
                let taken = self.messaging.reassembly_bytes.saturating_sub(held_before);
                promised = promised.saturating_sub(taken);
            }
        }
        shared.scratch.parsed_frames = parsed;
        if let Some(rx) = &mut self.transport.fec_rx {
            rx.on_received(pn, frames, shared.config.mtu / 2, coded);
            self.transport.coding_tails[1] = rx.tail_address();
            if !rx.is_active() {
                // The peer stopped coding.
                self.transport.solve_work_owed = rx.work_owed();
                self.transport.fec_rx = None;
            }
        }
        out_of_order
    }

    /// A repair block arrived in packet `pn`: rebuild what it and the earlier ones allow,
    /// and take each rebuilt packet as if it had arrived (it is acknowledged, so the sender
    /// does not send it again).
    fn take_repair(
        &mut self,
        now: Instant,
        pn: u64,
        repair: &crate::wire::Repair<'_>,
        shared: &mut Shared<'_>,
    ) {
        // An honest sender codes only packets of at most half its MTU (the MTUs agree):
        // anything longer would only make solving cost more.
        let Some(newest) = pn
            .checked_sub(u64::from(repair.distance))
            .filter(|_| repair.symbol.len() <= shared.config.mtu / 2)
        else {
            self.stats.rare.dropped(DropReason::ProtocolViolation);
            return;
        };
        let owed = &mut self.transport.solve_work_owed;
        let rx = self
            .transport
            .fec_rx
            .get_or_insert_with(|| Box::new(RepairDecoder::owing(core::mem::take(owed))));
        let received = &self.transport.received;
        let largest = received.largest().unwrap_or(0);
        let missing = |p| p < largest && received.verdict(p).is_missing();
        // The common case on a lossy path: every packet it covers arrived and no earlier
        // repair waits. It can rebuild nothing and there is nothing to solve: it only says
        // that the peer codes.
        let covers_missing = (0..u64::from(u16::BITS))
            .filter(|i| repair.mask & (1 << i) != 0)
            .any(|i| newest.checked_sub(i).is_some_and(missing));
        if !covers_missing && !rx.has_pending() {
            rx.on_repair_seen();
            return;
        }
        let mut covered: heapless::Vec<(u64, usize), { crate::wire::MAX_REPAIR_COVERAGE }> =
            heapless::Vec::new();
        for (distance, len) in repair.covered() {
            if let Some(covered_pn) = newest.checked_sub(u64::from(distance)) {
                let _ = covered.push((covered_pn, len));
            }
        }
        rx.on_repair(pn, &covered, repair.symbol, missing);
        let mut rebuilt = core::mem::take(&mut shared.scratch.rebuilt);
        rx.solve(missing, |p, frames| {
            rebuilt.extend_from_slice(&p.to_le_bytes());
            rebuilt.extend_from_slice(&(frames.len() as u32).to_le_bytes());
            rebuilt.extend_from_slice(frames);
        });
        let deferred = rx.take_deferred();
        if deferred > 0 {
            self.stats.rare.get().repair_solves_deferred += deferred;
        }
        let mut rest = &rebuilt[..];
        while let Some((p, frames)) = next_rebuilt(&mut rest) {
            if !self.transport.received.verdict(p).is_missing() {
                continue;
            }
            let Ok(to_hold) = self.parse_frames(p, frames, shared.config, shared.scratch) else {
                // Only a lying peer's repairs rebuild garbage: forget them all, so they cost
                // no more solving.
                shared.scratch.parsed_frames.clear();
                if let Some(rx) = &mut self.transport.fec_rx {
                    rx.forget_repairs();
                }
                self.stats.rare.dropped(DropReason::Malformed);
                continue;
            };
            let Ok(to_hold) = self.admitted_room(to_hold, shared) else {
                shared.scratch.parsed_frames.clear();
                // Still missing: the next repair solves for it again (once there is room).
                if let Some(rx) = &mut self.transport.fec_rx {
                    rx.mark_dirty();
                }
                continue;
            };
            self.stats.rare.get().packets_rebuilt += 1;
            self.deliver_packet(now, p, frames, to_hold, shared);
            // Acknowledge it soon: the sender would otherwise resend it.
            self.transport.ack_now = true;
        }
        rebuilt.clear();
        shared.scratch.rebuilt = rebuilt;
    }

    /// Receive memory a frame would newly take (besides whole ordered messages, see
    /// `ordered_bytes_to_hold`): window slots, and a chunk that starts a reliable reassembly
    /// (a message's or a response's) reserves the whole message.
    fn bytes_to_hold(&self, kind: DeliveryKind, h: &MessageHeader, config: &Config) -> usize {
        match h.send_type {
            SendType::Response => match h.chunk {
                Some(chunk)
                    if self
                        .messaging
                        .pending_request((h.channel, h.sequence))
                        .is_some_and(|p| p.partial.is_none()) =>
                {
                    reservation(chunk.count, config.chunk_payload())
                }
                _ => 0,
            },
            SendType::Message if kind.is_reliable() => self
                .messaging
                .recv_channels
                .get(usize::from(h.channel))
                .map_or(0, |ch| {
                    ch.bytes_to_hold(h.sequence, h.chunk, config.chunk_payload())
                }),
            SendType::Message => 0,
        }
    }

    /// Memory the packet's whole messages on ordered channels would hold: only those that
    /// must wait for a message neither received already nor in this same packet (a packet
    /// that brings the missing message releases what it completes, so it is never refused
    /// for the messages behind it). `ordered` is (channel, sequence, length); it is sorted.
    fn ordered_bytes_to_hold(&self, ordered: &mut [(u8, u64, usize)]) -> usize {
        ordered.sort_unstable();
        let mut held = 0;
        let mut start = 0;
        while start < ordered.len() {
            let channel = ordered[start].0;
            let end = start
                + ordered[start..]
                    .iter()
                    .take_while(|e| e.0 == channel)
                    .count();
            if let Some(ch) = self.messaging.recv_channels.get(usize::from(channel)) {
                let run_end = ch.in_order_run(ordered[start..end].iter().map(|e| e.1));
                held += ordered[start..end]
                    .iter()
                    .filter(|e| e.1 > run_end)
                    .map(|e| e.2)
                    .sum::<usize>();
            }
            start = end;
        }
        held
    }

    fn receive_frame(
        &mut self,
        now: Instant,
        order: WireOrder,
        h: MessageHeader,
        payload: &[u8],
        promised: usize,
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
        // Only chunks of unreliable messages consult the budget here (reliable ones were
        // admitted with the packet, and keep what they were promised).
        let budget_left = if h.chunk.is_some() {
            shared
                .budget
                .room(self.messaging.reassembly_bytes, config)
                .saturating_sub(promised)
        } else {
            usize::MAX
        };
        let channel = h.channel;
        let handle = self.handle;
        let peer_user_id = self.peer_user_id;
        let largest_received = self.transport.received.largest().unwrap_or(0);
        let stats = &mut self.stats;
        let events = &mut *shared.events;
        let event_bytes = &mut self.event_bytes;
        let mut deliver = |meta: MessageMeta, payload: Payload<'_>| {
            stats.messages_delivered += 1;
            stats.payload_bytes_delivered += payload.len() as u64;
            // Hub routing is shown only where there is some: another sender, or a target.
            let relay = (meta.owner != peer_user_id || meta.redirect.is_some()).then_some(Relay {
                owner: meta.owner,
                target: meta.redirect,
            });
            let event = if meta.request {
                Event::Request {
                    conn: handle,
                    request: IncomingRequest {
                        channel,
                        sequence: meta.sequence,
                    },
                    payload: Bytes::new(),
                    relay,
                }
            } else {
                Event::Message {
                    conn: handle,
                    channel,
                    sequence: meta.sequence,
                    payload: Bytes::new(),
                    relay,
                }
            };
            *event_bytes += events.push_with(event, payload);
        };
        let mut cx = RecvContext {
            now,
            order,
            chunk_payload: config.chunk_payload(),
            budget_left,
            deliver: &mut deliver,
            evicted: 0,
            largest_received,
        };
        let Some(ch) = self.messaging.recv_channels.get_mut(usize::from(channel)) else {
            return; // checked in the first pass
        };
        let held_before = ch.held_bytes;
        let result = ch.receive(meta, h.chunk, payload, &mut cx);
        for _ in 0..cx.evicted {
            self.stats.rare.dropped(DropReason::ReassemblyEvicted);
        }
        let held_after = ch.held_bytes;
        if ch.has_partials() {
            self.messaging.partial_channels |= 1 << channel;
        }
        shared.budget.settle(
            &mut self.messaging.reassembly_bytes,
            held_before,
            held_after,
        );
        match result {
            Received::Accepted => {}
            Received::Duplicate => self.stats.rare.dropped(DropReason::DuplicateMessage),
            Received::Stale => self.stats.rare.dropped(DropReason::StaleMessage),
            Received::NoBudget => self.stats.rare.dropped(DropReason::ReassemblyBudget),
            Received::Violation => self.stats.rare.dropped(DropReason::ProtocolViolation),
        }
    }

    fn receive_response(
        &mut self,
        now: Instant,
        h: MessageHeader,
        payload: &[u8],
        shared: &mut Shared<'_>,
    ) {
        let key = (h.channel, h.sequence);
        let chunk_payload = shared.config.chunk_payload();
        let requests = self.messaging.requests.as_deref_mut();
        let Some(pending) = requests.and_then(|r| r.pending.get_mut(&key)) else {
            // A copy of a response just delivered (retransmitted, or rebuilt and resent) is a
            // duplicate; anything else answers nothing we are waiting for.
            let answered = self.messaging.requests.as_ref();
            let reason = if answered.is_some_and(|r| r.answered_lately(key)) {
                DropReason::DuplicateMessage
            } else {
                DropReason::StaleResponse
            };
            self.stats.rare.dropped(reason);
            return;
        };
        let payload = match h.chunk {
            // A whole response to a request whose answer had started in chunks: the partial
            // is dropped with the request below, and so must its reservation be.
            None => {
                if let Some(r) = pending.partial.take() {
                    shared
                        .budget
                        .release(&mut self.messaging.reassembly_bytes, r.reserved());
                }
                Payload::Borrowed(payload)
            }
            Some(ChunkInfo { index, count }) => {
                let r = match &mut pending.partial {
                    Some(r) => r,
                    None => {
                        let r = ReassemblyBuffer::new(count, chunk_payload, now);
                        shared
                            .budget
                            .charge(&mut self.messaging.reassembly_bytes, r.reserved());
                        pending.partial.insert(r)
                    }
                };
                match r.add(index, count, payload, chunk_payload) {
                    ChunkAdded::Stored(_) => {}
                    ChunkAdded::Duplicate => {
                        self.stats.rare.dropped(DropReason::DuplicateMessage);
                        return;
                    }
                    ChunkAdded::Inconsistent => {
                        self.stats.rare.dropped(DropReason::ProtocolViolation);
                        return;
                    }
                }
                if !r.is_complete() {
                    return;
                }
                let Some(r) = pending.partial.take() else {
                    return;
                };
                shared
                    .budget
                    .release(&mut self.messaging.reassembly_bytes, r.reserved());
                Payload::Owned(r.assemble())
            }
        };
        // (The table exists: `pending` was found in it above.)
        let Some(requests) = self.messaging.requests.as_deref_mut() else {
            return;
        };
        if let Some(pending) = requests.pending.remove(&key) {
            requests.finish(key, now, true, finished_requests_kept(shared.config));
            requests.prune();
            self.stats.messages_delivered += 1;
            self.stats.payload_bytes_delivered += payload.len() as u64;
            let event = Event::Response {
                conn: self.handle,
                id: pending.id,
                payload: Bytes::new(),
            };
            self.event_bytes += shared.events.push_with(event, payload);
            self.refresh_request_timer();
        }
    }
}
