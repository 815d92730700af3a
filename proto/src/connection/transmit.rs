//! The send path: one packet at a time — handshake packets while connecting, then `Data`
//! packets with the acknowledgement, retransmissions, new frames round-robin across channels,
//! and proactive copies.

use super::*;

impl Connection {
    /// Writes the next datagram for this connection into `buf`, if it has one to send now,
    /// and says where it goes (a path challenge goes to the address being validated).
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        config: &Config,
    ) -> Option<(usize, SocketAddr)> {
        if self.close.is_some() {
            return None;
        }
        if self.state == State::Connected {
            if let Some((to, token)) = self.paths.poll_challenge() {
                let challenge = Packet::PathChallenge {
                    connection_id: self.connection_id,
                    token,
                };
                let len = challenge.encode(buf)?;
                self.stats.path_challenges_sent += 1;
                return Some((len, to));
            }
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
        Some((len, self.remote()))
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
                mtu: config.mtu as u16,
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
        let ack_due = self.ack_now || self.timers.is_expired(Timer::Ack, now);
        let probe = self.probes_due > 0;
        let window = self.sent.congestion.window();
        let rtt = self.sent.rtt.smoothed();
        let wants_data = self.has_data_to_send();
        let paced = if wants_data && !probe {
            self.pacer.delay(now, mtu, window, rtt)
        } else {
            None
        };
        let may_send_data = probe || (paced.is_none() && self.sent.can_send(mtu));
        // Wake up when the pacer allows the next packet (acks may still go out meanwhile).
        self.timers.set_opt(Timer::Pacing, paced);
        if !(ack_due
            || self.keepalive_due
            || probe
            || self.full_ack_due
            || (wants_data && may_send_data))
        {
            return None;
        }

        let mut w = Writer::new(buf);
        encode_data_prefix(&mut w, self.connection_id, self.sent.next_seq() as u32)?;
        let count_at = w.len();
        let ack_only = self.full_ack_due && !ack_due && !probe;
        let carries_ack = self.received.largest().is_some()
            && (ack_due || self.eliciting_since_ack > 0 || self.full_ack_due);
        if carries_ack {
            let room = if ack_only {
                w.remaining()
            } else {
                wire::ACK_ROOM
            };
            let delay = crate::time::micros(self.received.ack_delay(now));
            let written = encode_ack(&mut w, false, delay, self.received.ranges(), room)?;
            // Ranges that did not fit a packet carrying messages go in one of their own next
            // — when an old one changed (a hole filled): the peer has the rest already. That
            // one says all it can and asks for no further one.
            self.full_ack_due = !ack_only
                && written < self.received.range_count()
                && self.received.take_old_change();
        } else {
            w.put(&[0])?;
        }

        let mut keys = self.sent.take_key_vec();
        let mut frames_written = 0usize;
        if ack_only {
            // The rest of an acknowledgement too long for the packet before: it goes alone.
        } else if probe {
            self.probes_due -= 1;
            frames_written += self.write_probe_frames(&mut w, &mut keys);
            if frames_written == 0 {
                frames_written += self.write_new_frames(now, &mut w, &mut keys, config);
            }
        } else if may_send_data {
            frames_written += self.write_retransmissions(&mut w, &mut keys);
            // Copies of earlier frames ride in packets that go out anyway, never in a datagram
            // of their own (that would raise the packet rate), and never at the instant of
            // their original (which would share its fate in a loss burst). While the queued
            // new data fits in this packet, copies go first so they never fall behind a
            // steady stream; a backlogged sender puts new data first.
            let copies_first = self.queued_bytes() < w.remaining();
            if copies_first {
                frames_written += self.write_redundant(now, &mut w, &mut keys, config);
            }
            frames_written += self.write_new_frames(now, &mut w, &mut keys, config);
            if !copies_first {
                frames_written += self.write_redundant(now, &mut w, &mut keys, config);
            }
        }
        let ping = probe && frames_written == 0;
        if frames_written == 0 && !ack_due && !self.keepalive_due && !probe && !ack_only {
            self.sent.recycle_key_vec(keys);
            return None;
        }
        let len = w.len();
        if ping {
            buf[count_at] |= wire::PING_BIT;
        }
        if frames_written == 0 {
            self.stats.ack_only_packets_sent += 1;
        }
        let eliciting = frames_written > 0 || ping;
        if eliciting {
            self.pacer.on_sent(len);
        }
        if carries_ack {
            self.ack_now = false;
            self.eliciting_since_ack = 0;
            self.timers.stop(Timer::Ack);
        }
        self.keepalive_due = false;
        self.outcome.clear();
        self.sent
            .on_sent(now, len, eliciting, keys, &mut self.outcome);
        self.apply_outcome();
        Some(len)
    }

    /// A probe carries again the reliable frames of the oldest packets in flight, so that
    /// if they were lost the probe delivers them, and its acknowledgement shows what was.
    fn write_probe_frames(&mut self, w: &mut Writer<'_>, keys: &mut Vec<FrameKey>) -> usize {
        let mut written = 0;
        let mut candidates = core::mem::take(&mut self.probe_scratch);
        candidates.clear();
        candidates.extend(self.sent.oldest_in_flight_frames().take(64));
        for &key in &candidates {
            if keys.contains(&key) {
                continue;
            }
            let Some(frame) = self.frames.get_mut(key) else {
                continue;
            };
            if !put_sent_frame(frame, key, w, keys) {
                break;
            }
            self.stats.retransmissions += 1;
            self.stats.payload_bytes_transmitted += frame.payload.len() as u64;
            written += 1;
        }
        self.probe_scratch = candidates;
        written
    }

    /// Payload bytes waiting in the send queues.
    fn queued_bytes(&self) -> usize {
        self.send_channels.iter().map(|ch| ch.queued_bytes).sum()
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
            if !put_sent_frame(frame, key, w, keys) {
                break;
            }
            self.stats.retransmissions += 1;
            self.stats.payload_bytes_transmitted += frame.payload.len() as u64;
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
            if small && self.copies_wanted(config) > 0 {
                if self.redundant.len() >= MAX_REDUNDANT_CANDIDATES {
                    self.redundant.pop_front();
                }
                self.redundant.push_back((key, now));
            }
        }
        true
    }

    /// Proactive copies each small reliable frame gets at the loss rate seen: none on a
    /// clean link, one from 0.1% (a single loss turns them on, and they stay on for a few
    /// hundred packets), two (at most `Config::redundancy`) from 20%.
    pub(crate) fn copies_wanted(&self, config: &Config) -> u8 {
        const PER_MILLE: u64 = (1 << 32) / 1000;
        let wanted = match self.loss_rate {
            r if r < PER_MILLE => 0,
            r if r < 200 * PER_MILLE => 1,
            _ => 2,
        };
        wanted.min(config.redundancy)
    }

    /// Proactive copies of small reliable frames sent earlier, while room remains. A copy is
    /// only worth sending within a round trip of the original: after that, either the
    /// original's acknowledgement has arrived or loss detection resends it anyway. A frame
    /// sent at this very instant gets no copy yet: a copy in the same burst shares its fate.
    fn write_redundant(
        &mut self,
        now: Instant,
        w: &mut Writer<'_>,
        keys: &mut Vec<FrameKey>,
        config: &Config,
    ) -> usize {
        let wanted = self.copies_wanted(config);
        let horizon = self.sent.rtt.smoothed();
        let mut written = 0;
        for _ in 0..self.redundant.len() {
            let Some(&(key, sent_at)) = self.redundant.front() else {
                break;
            };
            if sent_at >= now {
                break; // this one and all after it left at this instant
            }
            let fresh = now < sent_at + horizon;
            let Some(frame) = self
                .frames
                .get_mut(key)
                .filter(|f| fresh && f.copies < wanted)
            else {
                // Acknowledged already, too old to be worth a copy, or copied enough.
                self.redundant.pop_front();
                continue;
            };
            if !put_sent_frame(frame, key, w, keys) {
                break;
            }
            frame.copies += 1;
            self.stats.redundant_frames += 1;
            self.stats.payload_bytes_transmitted += frame.payload.len() as u64;
            written += 1;
            self.redundant.pop_front();
            if frame.copies < wanted {
                self.redundant.push_back((key, sent_at));
            }
        }
        written
    }
}

/// Writes an already-sent reliable frame into the packet again (a retransmission or a copy)
/// and records that this packet carries it. False if it does not fit.
fn put_sent_frame(
    frame: &mut SentFrame,
    key: FrameKey,
    w: &mut Writer<'_>,
    keys: &mut Vec<FrameKey>,
) -> bool {
    let f = Frame {
        header: frame.header,
        payload: &frame.payload,
    };
    if f.encoded_len() > w.remaining() || f.encode(w).is_none() {
        return false;
    }
    frame.in_flight += 1;
    keys.push(key);
    true
}
