//! The receive path: a `Data` packet checked whole, its acknowledgement processed, and its
//! frames handed to their channels (or to the pending-request table) and turned into events.

use super::*;

impl Connection {
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
            // Refused for memory, not for anything the peer did wrong: the packet still shows
            // the peer is alive, so a connection waiting for memory does not time out.
            self.last_received = now;
            self.timers.set(Timer::Idle, now + config.idle_timeout);
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
}
