//! The send path: one packet at a time — handshake packets while connecting, then `Data`
//! packets with the acknowledgement, retransmissions, new frames round-robin across channels,
//! and repairs that code small packets under loss.

use super::*;

/// A side that sends asks for a prompt acknowledgement at least this often (see `refresh`
/// in `data_packet`).
const PROMPT_EVERY: core::time::Duration = core::time::Duration::from_secs(1);

/// Room a repair block's own header takes at most: distance, mask, a length per covered
/// packet.
const REPAIR_HEADER: usize = MAX_VARINT_LEN * (1 + crate::transport::fec::COVERAGE) + 2;

impl Connection {
    /// Writes the next datagram for this connection into `buf`, if it has one to send now,
    /// and says where it goes (a path challenge goes to the address being validated).
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        config: &Config,
        outcome: &mut AckOutcome,
    ) -> Option<(usize, SocketAddr)> {
        if self.close.is_some() {
            return None;
        }
        if self.state == State::Connected {
            let size = wire::PATH_PACKET_LEN + self.tag_len();
            if let Some((to, token)) = self.transport.paths.poll_challenge(now, size) {
                let connection_id = self.connection_id;
                let len = self.write_control(
                    now,
                    buf,
                    |packet_number| Packet::PathChallenge {
                        connection_id,
                        packet_number,
                        token,
                    },
                    outcome,
                )?;
                self.stats.rare.get().path_challenges_sent += 1;
                // Data may be waiting behind it.
                self.more_to_send = true;
                // Re-armed only here, once the due probe has left: a deadline in the past
                // would wake the endpoint again before it could send.
                self.timers
                    .set_opt(Timer::Probe, self.transport.paths.next_probe());
                return Some((len, to));
            }
        }
        self.more_to_send = false;
        let len = match self.state {
            State::Hello | State::Connecting => self.handshake_packet(now, buf, config),
            State::Connected => self.data_packet(now, buf, config, outcome),
        }?;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
        self.rate_out.add(now, len);
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
        let hs = self.client_handshake.as_deref_mut()?;
        if self.state == State::Connecting {
            match hs.connect_since.get() {
                None => hs.connect_since = now.into(),
                Some(since) if now >= since + config.cookie_lifetime => {
                    // Unanswered for a cookie's lifetime (the server unreachable, or its
                    // Accepts lost, that long): the cookie is stale, so ask for a fresh one.
                    // (Not sooner: an Accept on its way, the key exchange paid for, answers
                    // only this Connect; a server over its key-exchange budget would have to
                    // pay again for the next.)
                    self.state = State::Hello;
                    hs.connect = Vec::new();
                    hs.connect_since = MaybeInstant::NONE;
                }
                Some(_) => {}
            }
        }
        match self.state {
            State::Hello => Packet::Hello {
                protocol_id: config.protocol_id,
                client_nonce: self.client_nonce,
                protection: config.protection,
            }
            .encode(buf),
            State::Connecting => {
                hs.accepts_checked = 0;
                // The same bytes every time: they open the transcript the keys are bound to.
                let len = hs.connect.len();
                buf.get_mut(..len)?.copy_from_slice(&hs.connect);
                Some(len)
            }
            State::Connected => None,
        }
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) at `now` could send something: the
    /// endpoint visits a connection after handling its input only if so (a visit to a
    /// connection with nothing to send is a cache miss for nothing; a packet of unreliable
    /// messages leaves nothing to send at once). It must hold whenever `poll_transmit` would
    /// send: every case that lets `data_packet` or `handshake_packet` go on is here, as is
    /// any path candidate (rare; their challenges have conditions of their own). Whatever
    /// becomes due later (the ack delay, pacing, probes) is a timer, whose firing marks the
    /// connection again.
    pub(crate) fn may_transmit(&self, now: Instant) -> bool {
        match self.state {
            State::Hello | State::Connecting => self.handshake_due,
            State::Connected => {
                self.transport.ack_now
                    || self.timers.is_expired(Timer::Ack, now)
                    || self.keepalive_due
                    || self.transport.probes_due > 0
                    || self.transport.full_ack_due
                    || self.has_data_to_send()
                    || self.transport.paths.has_candidates()
            }
        }
    }

    fn data_packet(
        &mut self,
        now: Instant,
        out: &mut [u8],
        config: &Config,
        outcome: &mut AckOutcome,
    ) -> Option<usize> {
        let mtu = config.mtu.min(out.len());
        // Room for the tag protection appends.
        let buf = &mut out[..mtu.saturating_sub(self.tag_len())];
        let ack_due = self.transport.ack_now || self.timers.is_expired(Timer::Ack, now);
        let probe = self.transport.probes_due > 0;
        let window = self.transport.sent.congestion.window();
        let rtt = self.transport.sent.rtt.smoothed();
        let wants_data = self.has_data_to_send();
        let paced = if wants_data && !probe {
            // (Looked for only when the bucket runs short; and no more of it than the
            // congestion window has room for: waiting for tokens it could not spend at once
            // would only delay the packets it can.)
            let bulk = if self.transport.pacer.short_of(mtu) {
                let room = window.saturating_sub(self.transport.sent.bytes_in_flight());
                self.bulk_waiting()
                    .min(usize::try_from(room).unwrap_or(usize::MAX))
            } else {
                0
            };
            self.transport
                .pacer
                .delay(now, mtu, bulk, window, rtt, config)
        } else {
            None
        };
        let may_send_data = probe || (paced.is_none() && self.transport.sent.can_send(mtu));
        // Wake up when the pacer allows the next packet (acks may still go out meanwhile).
        self.timers.set_opt(Timer::Pacing, paced);
        if !(ack_due
            || self.keepalive_due
            || probe
            || self.transport.full_ack_due
            || (wants_data && may_send_data))
        {
            return None;
        }

        let mut w = Writer::new(buf);
        encode_data_prefix(
            &mut w,
            self.connection_id,
            self.transport.sent.next_seq() as u32,
        )?;
        let count_at = w.len();
        let ack_only = self.transport.full_ack_due && !ack_due && !probe;
        let carries_ack = self.transport.received.largest().is_some()
            && (ack_due
                || self.transport.eliciting_since_ack > 0
                || self.transport.lazy_since_ack > 0
                || self.transport.full_ack_due);
        let mut ack_complete = false;
        if carries_ack {
            // Only a packet that will carry messages keeps its ack to `ACK_ROOM`; one with
            // nothing else to carry (an immediate ack, a keepalive) gives it the whole packet.
            let shares = !ack_only && (probe || (wants_data && may_send_data));
            let room = if shares {
                wire::ACK_ROOM
            } else {
                w.remaining()
            };
            let delay = crate::time::micros(self.transport.received.ack_delay(now));
            // Ranges the peer has seen acknowledged are left out. (A forged packet far ahead
            // cannot stand for the real ones: each real packet below it brings them back,
            // see `Transport::record_received`.)
            let known = self.transport.acks_known_to_peer();
            let received = &self.transport.received;
            let written = encode_ack(&mut w, false, delay, received.ranges(known), room)?;
            // Only an acknowledgement that said all it would tells, once acknowledged, what
            // the peer knows: one cut short for room left older ranges out.
            ack_complete =
                written == wire::MAX_ACK_RANGES || received.ranges(known).nth(written).is_none();
            // Recent ranges that did not fit a packet carrying messages go in one of their
            // own next (without them the sender would think those packets lost); ranges of
            // long-resolved packets are left out. One with the whole packet says all it can
            // and asks for no further one.
            self.transport.full_ack_due = shares && received.omits_recent(written, known);
        } else {
            w.put(&[0])?;
        }
        let pn = self.transport.sent.next_seq();
        // Under loss, small packets are coded (forward error correction): each carries a
        // repair for the small packets before it and at most half its room in frames, so it
        // is small itself. A backlogged sender (a bulk transfer) fills its packets instead.
        let half = w.remaining().saturating_sub(REPAIR_HEADER) / 2;
        let coding_on = self.coding_wanted(config) && !ack_only && !probe;
        let largest = if coding_on {
            self.largest_waiting_frame(config)
        } else {
            0
        };
        let coding = coding_on && self.queued_bytes() < 2 * half && largest <= half;
        self.transport.sent.set_coded(coding);
        let repaired_before = (self.transport.repaired_through, self.uncovered_logged);
        let repair = if coding {
            self.write_repair(now, pn, half, &mut w)
        } else {
            None
        };
        let frames_start = w.len();
        if coding {
            // Split what is queued evenly over the packets it needs: the repairs that cover
            // them are as long as the longest.
            // Queued payload, plus about what frame headers add to small messages.
            let queued = self.queued_bytes() * 6 / 5 + 40 * self.messaging.resend_len();
            let packets = queued.div_ceil(half.max(1)).max(1);
            w.limit(
                queued
                    .div_ceil(packets)
                    .clamp(largest.max(half.min(256)), half),
            );
        }

        let mut keys = self.transport.sent.take_packet_keys();
        let mut frames_written = 0usize;
        let mut new = NewFrames::default();
        if ack_only {
            // The rest of an acknowledgement too long for the packet before: it goes alone.
        } else if probe {
            self.transport.probes_due -= 1;
            frames_written += self.write_probe_frames(&mut w, &mut keys);
            if frames_written == 0 {
                new = self.write_new_frames(&mut w, &mut keys, config);
            }
        } else if may_send_data {
            let urgent = if self.messaging.resend_waiting && !self.urgent_led {
                self.write_urgent_frames(&mut w, &mut keys, config)
            } else {
                NewFrames::default()
            };
            self.urgent_led = urgent.count > 0;
            frames_written += self.write_retransmissions(&mut w, &mut keys);
            new = self.write_new_frames(&mut w, &mut keys, config);
            new.count += urgent.count;
            new.worth_coding |= urgent.worth_coding;
        }
        frames_written += new.count;
        // The ping bit asks for a prompt acknowledgement. Unreliable messages alone are
        // acknowledged lazily, on whatever the peer sends next (a game's echo or input
        // carries it, where a prompt one would cost a datagram of its own); the bit is set for:
        // - reliable frames (resent if lost) and probes;
        // - the heartbeat of a peer link's direct path (a keepalive, or a packet of messages
        //   while none is in flight): its probe timeouts tell the link the path died, even
        //   under a stream of unreliable messages, which alone arm no probe timeout;
        // - a refresh, at least once a second while sending: the RTT floor comes from prompt
        //   samples, which a side sending only unreliable messages would otherwise never take
        //   (a lying peer could then pull its RTT down by the whole lazy delay);
        // - a packet after which the window stops the sender, so a one-way stream of large
        //   unreliable packets does not wait LAZY_ACK_DELAY for each window;
        // - an acknowledgement sent while probe timeouts go unanswered (`liveness`): after an
        //   outage of this direction the window is full of lost packets and acknowledgements
        //   may be all that goes out; answered, one tells the path is back at once, where
        //   the next probe is up to the backoff away (seconds, after a long outage).
        // Never another ack-only packet: two idle sides would acknowledge each other's
        // acknowledgements for ever. (The liveness ping stops at the first answer, which
        // resets the count, and the answer asks for nothing: the exchange ends.)
        let heartbeat = self.transport.paths.on_direct_path()
            && (self.keepalive_due
                || (frames_written > 0 && !self.transport.sent.prompt_in_flight()));
        let refresh = frames_written > 0
            && !self.transport.sent.prompt_in_flight()
            && self
                .transport
                .sent
                .last_prompt_sent()
                .is_none_or(|t| now >= t + PROMPT_EVERY);
        let window_limited = frames_written > 0 && !self.transport.sent.can_send(w.len() + mtu);
        // (Not a probe or heartbeat: those ask for their answer as before.)
        let liveness =
            frames_written == 0 && !probe && !heartbeat && self.transport.sent.pto_count() > 0;
        let ping = probe || heartbeat || refresh || window_limited || liveness || !keys.is_empty();
        if frames_written == 0 && !ack_due && !self.keepalive_due && !probe && !ack_only {
            // Given up: the repair written into it covers nothing sent.
            (self.transport.repaired_through, self.uncovered_logged) = repaired_before;
            self.transport.sent.give_back_packet_keys(keys);
            return None;
        }
        let len = w.len();
        if ping {
            buf[count_at] |= wire::PING_BIT;
        }
        if let Some(symbol_len) = repair {
            buf[count_at] |= wire::REPAIR_BIT;
            if let Some(tx) = self.transport.fec_tx.as_deref_mut() {
                tx.repairs_sent += 1;
            }
            self.stats.payload_bytes_transmitted += symbol_len as u64;
        }
        // A small packet whose loss costs something a repair saves (reliable frames, or
        // others `fec::worth_coding`): later repairs cover it.
        if coding && frames_written > 0 && (!keys.is_empty() || new.worth_coding) {
            let tx = self.transport.fec_tx.get_or_insert_with(Default::default);
            tx.on_sent(pn, now, &buf[frames_start..len]);
            self.uncovered_logged = true;
            self.transport.coding_tails[0] = tx.tail_address();
        }
        let sealed = match &self.keys {
            Some(packet_keys) => packet_keys.send.seal(pn, out, len),
            None => Some(len),
        };
        let Some(len) = sealed else {
            // Unreachable (the packet was written short of the tag's room), but the key ring
            // lent to this packet must come back whatever happens to the packet.
            self.transport.sent.give_back_packet_keys(keys);
            return None;
        };
        if frames_written == 0 {
            self.stats.ack_only_packets_sent += 1;
        }
        // A liveness ping is tracked so that its answer counts, but arms no probe timeout of
        // its own: sent for every acknowledgement, it would push the next probe out for ever,
        // and the count of unanswered ones is what tells a direct path died.
        let wanted = if ping && !liveness {
            AckWanted::Prompt
        } else if frames_written > 0 || liveness {
            AckWanted::Lazy
        } else {
            AckWanted::No
        };
        if wanted != AckWanted::No {
            self.transport.pacer.on_sent(len);
        }
        if carries_ack {
            self.transport.ack_now = false;
            self.transport.eliciting_since_ack = 0;
            self.transport.lazy_since_ack = 0;
            self.timers.stop(Timer::Ack);
        }
        self.keepalive_due = false;
        // (A probe or the rest of a long ack carries none of what is queued: visit again.)
        self.more_to_send |= self.transport.full_ack_due
            || self.transport.probes_due > 0
            || ((ack_only || probe) && self.has_data_to_send());
        outcome.clear();
        self.transport.sent.on_sent(now, len, wanted, keys, outcome);
        if let Some(largest) = self.transport.received.largest().filter(|_| ack_complete) {
            self.transport.sent.set_ack_carried(largest);
        }
        self.skip_packet_number(now);
        self.apply_outcome(outcome);
        Some(len)
    }

    /// Leaves the next packet number unused when it is the one drawn, and draws the next
    /// (see `SentPackets::skip_if_due`). Only under protection: without it anyone can forge
    /// an acknowledgement, and nothing is learnt from one.
    /// (Inlined, with the draw out of line: an unprotected packet paid a call for the check.)
    #[inline]
    pub(crate) fn skip_packet_number(&mut self, now: Instant) {
        if self.keys.is_some() {
            self.draw_skip(now);
        }
    }

    fn draw_skip(&mut self, now: Instant) {
        let draw = self.transport.sent.skip_if_due(now);
        if draw != SkipDraw::None {
            let next = self.transport.sent.next_seq();
            let random = self
                .transport
                .paths
                .random(crate::hash::Domain::SkippedPacket, next);
            self.transport.sent.schedule_skip(draw, random);
        }
    }

    /// Writes a repair block coding the small packets sent lately (before this instant,
    /// within a round trip), if there are new ones to cover and the symbol fits; returns
    /// its symbol's length.
    fn write_repair(
        &mut self,
        now: Instant,
        pn: u64,
        room: usize,
        w: &mut Writer<'_>,
    ) -> Option<usize> {
        // Most packets of a coding connection come after a repair that covered every packet
        // logged: they plan nothing, and need not read the encoder's cold lines to find out.
        if !self.uncovered_logged {
            return None;
        }
        let horizon = self.transport.sent.rtt.smoothed();
        // Each packet is the newest covered once: one repair per small packet sent, which
        // is what keeps the cost at about one copy.
        let covered_before = self.transport.repaired_through.checked_sub(1);
        let tx = self.transport.fec_tx.as_deref()?;
        let plan = tx.plan(now, horizon, room, covered_before)?;
        let (newest, symbol_len) = (plan.newest, plan.symbol_len);
        let distance = u32::try_from(pn - newest).ok()?;
        let code = |symbol: &mut [u8]| tx.code(pn, &plan, symbol);
        wire::encode_repair(w, distance, &plan.covered, symbol_len, code)?;
        self.transport.repaired_through = newest + 1;
        // A packet logged in this same instant is not covered yet (see `plan`).
        self.uncovered_logged = tx.newest_logged().is_some_and(|n| n > newest);
        Some(symbol_len)
    }

    /// A probe carries again the reliable frames of the oldest packets in flight, so that
    /// if they were lost the probe delivers them, and its acknowledgement shows what was.
    fn write_probe_frames(&mut self, w: &mut Writer<'_>, keys: &mut PacketFrameKeys) -> usize {
        let mut written = 0;
        let candidates: heapless::Vec<FrameKey, 64> = self
            .transport
            .sent
            .oldest_in_flight_frames(keys)
            .take(64)
            .collect();
        for &key in &candidates {
            if keys.contains(&key) {
                continue;
            }
            let Some(frame) = self
                .messaging
                .in_flight
                .as_deref_mut()
                .and_then(|f| f.frames.get_mut(key))
            else {
                continue;
            };
            if !put_sent_frame(frame, key, w, keys) {
                self.more_to_send = true;
                break;
            }
            self.stats.rare.get().retransmissions += 1;
            self.stats.payload_bytes_transmitted += frame.payload.len() as u64;
            written += 1;
        }
        written
    }

    /// The largest frame waiting at the head of a queue, or to be sent again (among the
    /// first few): a coded packet must have room for it.
    fn largest_waiting_frame(&self, config: &Config) -> usize {
        // At most: the largest message header and length prefix, and the payload.
        let frame_len = |payload: usize| payload + wire::MAX_MESSAGE_HEADER_LEN + MAX_VARINT_LEN;
        let frame = |out: &Outgoing| {
            frame_len(if out.chunk_count > 1 {
                config.chunk_payload()
            } else {
                out.payload.len()
            })
        };
        let queued = self
            .maybe_queued_channels()
            .filter_map(|ch| ch.queue.front())
            .chain(
                self.messaging
                    .responses
                    .as_ref()
                    .filter(|_| self.messaging.responses_waiting)
                    .and_then(|r| r.queue.front())
                    .map(|(_, out)| out),
            )
            .map(frame);
        let resent = self
            .messaging
            .in_flight
            .iter()
            .filter(|_| self.messaging.resend_waiting)
            .flat_map(|f| {
                (f.resend.iter().take(64))
                    .chain(f.resend_chunks.iter().take(64))
                    .filter_map(|&key| Some(frame_len(f.frames.get(key)?.payload.len())))
            });
        queued.chain(resent).max().unwrap_or(0)
    }

    /// Payload bytes waiting in the send queues, responses included (they count in their
    /// channel's `queued_bytes`, whose bit in `maybe_queued` need not be set: then every
    /// channel). Without responses waiting only the channels in `maybe_queued` hold any (a
    /// bit is cleared only with its queue empty): the others' lines are not read, which a
    /// coded packet otherwise paid for twice, a cold line per idle channel.
    fn queued_bytes(&self) -> usize {
        let every_channel = || {
            let channels = self.messaging.send_channels.iter();
            channels.map(|ch| ch.queued_bytes).sum::<usize>()
        };
        if self.messaging.responses_waiting {
            return every_channel();
        }
        let queued = self.maybe_queued_channels().map(|ch| ch.queued_bytes).sum();
        debug_assert_eq!(queued, every_channel());
        queued
    }

    /// Bytes of bulk data waiting to go, for the pacer: the least of what remains of the
    /// chunked messages at the heads of channels (large messages), or 0 if anything else
    /// could go now (a whole message, a response, a retransmission), which the pacer lets
    /// out a packet time later rather than a burst's. (The least, not the sum: a message of
    /// a few chunks beside a large one waits for its own tokens, not for a burst.)
    pub(super) fn bulk_waiting(&self) -> usize {
        if self.messaging.resend_waiting() || self.messaging.responses_queued() {
            return 0;
        }
        let mut least: Option<usize> = None;
        for ch in self.maybe_queued_channels() {
            match ch.queue.front() {
                Some(head) if ch.head_ready() => {
                    let chunks = usize::from(head.chunk_count);
                    if chunks <= 1 {
                        return 0;
                    }
                    let left = chunks - usize::from(head.next_chunk).min(chunks);
                    let remains = head.payload.len() / chunks * left;
                    least = Some(least.map_or(remains, |l| l.min(remains)));
                }
                _ => {}
            }
        }
        least.unwrap_or(0)
    }

    fn has_data_to_send(&self) -> bool {
        self.messaging.resend_waiting()
            || self.messaging.responses_queued()
            || self.maybe_queued_channels().any(SendChannel::head_ready)
    }

    /// The send channels that may have messages queued (see `Messaging::maybe_queued`).
    fn maybe_queued_channels(&self) -> impl Iterator<Item = &SendChannel> {
        let channels = &self.messaging.send_channels;
        let mut bits = self.messaging.maybe_queued;
        core::iter::from_fn(move || {
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(ch) = channels.get(i) {
                    return Some(ch);
                }
            }
            None
        })
    }

    /// Frames of lost packets, whole messages before chunks (see `InFlight::resend_chunks`),
    /// as many as fit.
    fn write_retransmissions(&mut self, w: &mut Writer<'_>, keys: &mut PacketFrameKeys) -> usize {
        let Some(f) = self.messaging.in_flight.as_deref_mut() else {
            return 0;
        };
        let mut sent = Resent::default();
        if resend_from(&mut f.resend, &mut f.frames, w, keys, &mut sent) {
            resend_from(&mut f.resend_chunks, &mut f.frames, w, keys, &mut sent);
        }
        self.messaging.resend_waiting = !f.resend.is_empty() || !f.resend_chunks.is_empty();
        if sent.frames > 0 {
            self.stats.rare.get().retransmissions += sent.frames as u64;
            self.stats.payload_bytes_transmitted += sent.bytes;
        }
        if sent.full {
            self.more_to_send = true;
        }
        sent.frames
    }

    /// The head of each unreliable or sequenced channel, if it is a message of one packet,
    /// ahead of the retransmissions waiting: a game's state and input. After an outage the
    /// window reopens slowly and a resent chunk fills a packet, so behind the retransmissions
    /// they would wait round trips, and be stale when they arrive; in front, they take a
    /// small packet's room. (At most every other packet: see `Connection::urgent_led`.)
    fn write_urgent_frames(
        &mut self,
        w: &mut Writer<'_>,
        keys: &mut PacketFrameKeys,
        config: &Config,
    ) -> NewFrames {
        let mut written = NewFrames::default();
        let mut bits = self.messaging.maybe_queued;
        while bits != 0 {
            let lane = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let urgent = self.messaging.send_channels.get(lane).is_some_and(|ch| {
                !ch.kind.is_reliable()
                    && ch
                        .queue
                        .front()
                        .is_some_and(|out| out.chunk_count <= 1 && !out.request)
            });
            if urgent {
                if let Some(worth_coding) = self.write_one_new_frame(lane, w, keys, config) {
                    written.count += 1;
                    written.worth_coding |= worth_coding;
                }
            }
        }
        written
    }

    /// New frames, one per channel per turn, so a large transfer on one channel cannot starve
    /// small messages on another.
    fn write_new_frames(
        &mut self,
        w: &mut Writer<'_>,
        keys: &mut PacketFrameKeys,
        config: &Config,
    ) -> NewFrames {
        // Lanes with something queued, as a bit mask: a lane leaves it when it empties or
        // cannot put a frame in this packet, so the loop never spins over idle channels.
        // One lane per configured channel (those not made yet have nothing queued), and the
        // last for responses.
        let lanes = config.channels.len() + 1;
        // Wider than the channels' mask: the responses' lane may be the 17th.
        let mut mask = u32::from(self.messaging.maybe_queued);
        let mut bits = mask;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if self
                .messaging
                .send_channels
                .get(i)
                .is_none_or(|ch| ch.queue.is_empty())
            {
                mask &= !(1 << i);
            }
        }
        // Only channels' bits so far (at most `MAX_CHANNELS`).
        self.messaging.maybe_queued = mask as u16;
        if self.messaging.responses_queued() {
            mask |= 1 << (lanes - 1);
        }
        let mut written = NewFrames::default();
        let mut lane = usize::from(self.messaging.rr_cursor).min(lanes - 1);
        while mask != 0 {
            let at_or_after = mask & (u32::MAX << lane);
            lane = if at_or_after != 0 {
                at_or_after.trailing_zeros()
            } else {
                mask.trailing_zeros()
            } as usize;
            if let Some(worth_coding) = self.write_one_new_frame(lane, w, keys, config) {
                written.count += 1;
                written.worth_coding |= worth_coding;
                if self.lane_is_empty(lane, lanes) {
                    mask &= !(1 << lane);
                }
            } else {
                mask &= !(1 << lane);
            }
            lane = if lane + 1 >= lanes { 0 } else { lane + 1 };
        }
        // (`lane` < `lanes`, at most 17.)
        self.messaging.rr_cursor = lane as u8;
        written
    }

    fn lane_is_empty(&self, lane: usize, lanes: usize) -> bool {
        if lane + 1 == lanes {
            !self.messaging.responses_queued()
        } else {
            self.messaging
                .send_channels
                .get(lane)
                .is_none_or(|ch| ch.queue.is_empty())
        }
    }

    /// Writes the next frame of `lane`, if it has one ready that fits; says whether it makes
    /// the packet worth coding (`fec::worth_coding`).
    fn write_one_new_frame(
        &mut self,
        lane: usize,
        w: &mut Writer<'_>,
        keys: &mut PacketFrameKeys,
        config: &Config,
    ) -> Option<bool> {
        let local_user_id = self.local_user_id;
        let is_channel = lane < config.channels.len();
        // (What the boxes of frames in flight and of responses say is read only for a large
        // message about to start: their lines are cold on most connections' packets.)
        let m = &mut self.messaging;
        let starts_large = |kind: DeliveryKind, out: &Outgoing| {
            kind.is_reliable() && out.chunk_count > 1 && out.next_chunk == 0
        };
        // With each lane's head: the large response being sent, if a large message starts.
        let (channel, kind, out, open) = if is_channel {
            let Some(ch) = m.send_channels.get_mut(lane) else {
                return None; // not made yet: nothing queued
            };
            if !ch.head_ready() {
                return None;
            }
            let kind = ch.kind;
            let out = ch.queue.front_mut()?;
            let open = match &m.responses {
                Some(r) if starts_large(kind, out) => (r.open_chunks, r.open_reserved),
                _ => (0, 0),
            };
            (lane as u8, kind, out, open)
        } else {
            let r = m.responses.as_mut()?;
            let open = (r.open_chunks, r.open_reserved);
            match r.queue.front_mut() {
                Some((channel, out)) => {
                    let kind = config.channels[usize::from(*channel)].kind;
                    (*channel, kind, out, open)
                }
                None => return None,
            }
        };
        let starts_large_reliable = starts_large(kind, out);
        let reserve = reservation(out.chunk_count, config.chunk_payload());
        if starts_large_reliable {
            // The peer's reassembly our large messages may hold, and the large response
            // being sent, if any.
            let large_in_window = m.in_flight.as_ref().map_or(0, |f| f.large_in_window);
            let (open_chunks, open_reserved) = open;
            let held = large_in_window + open_reserved;
            let busy_response = out.response && open_chunks > 0;
            if busy_response || held + reserve > self.peer_reassembly_budget {
                return None;
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
            owner: out.route.owner.unwrap_or(local_user_id),
            sequence: out.seq as u16,
            redirect: out.route.target,
            chunk: out.chunk_info(),
        };
        let chunk = (out.chunk_count > 1)
            .then(|| chunk_slice(&out.payload, out.next_chunk, config.chunk_payload()));
        let frame = Frame {
            header,
            payload: chunk.as_deref().unwrap_or(&out.payload),
        };
        if frame.encoded_len() > w.remaining() || frame.encode(w).is_none() {
            // The next packet takes it.
            self.more_to_send = true;
            return None;
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
        if is_channel {
            let ch = &mut self.messaging.send_channels[lane];
            if first {
                let reserved = if starts_large_reliable { reserve } else { 0 };
                ch.on_first_frame(seq, chunk_count, reserved);
            }
            ch.queued_bytes -= payload.len();
            if done {
                ch.queue.pop_front();
            }
        } else {
            self.messaging.send_channels[usize::from(channel)].queued_bytes -= payload.len();
            if done {
                if let Some(r) = &mut self.messaging.responses {
                    r.queue.pop_front();
                    self.messaging.responses_waiting = !r.queue.is_empty();
                }
            }
        }
        self.stats.payload_bytes_transmitted += payload.len() as u64;
        if starts_large_reliable {
            if is_response {
                if let Some(r) = &mut self.messaging.responses {
                    r.open_chunks = u32::from(chunk_count);
                    r.open_reserved = reserve;
                }
            } else {
                self.messaging.in_flight().large_in_window += reserve;
            }
        }
        if kind.is_reliable() {
            let key = self.messaging.in_flight().frames.insert(SentFrame {
                header,
                message_seq: (!is_response).then_some(seq),
                payload,
                in_flight: 1,
            });
            keys.push(key);
        }
        Some(crate::transport::fec::worth_coding(&header, kind))
    }

    /// Whether small packets should be coded now (forward error correction): from 0.1% loss
    /// seen, until the estimate falls below 0.005% (a few thousand clean packets later),
    /// unless `Config::redundancy` is 0.
    fn coding_wanted(&mut self, config: &Config) -> bool {
        const PER_MILLE: u64 = (1 << 32) / 1000;
        if self.transport.loss_rate >= PER_MILLE {
            self.transport.coding = true;
        } else if self.transport.loss_rate < PER_MILLE / 20 && self.transport.coding {
            self.transport.coding = false;
            self.drop_encoder();
        }
        self.transport.coding && config.redundancy > 0
    }
}

/// Writes an already-sent reliable frame into the packet again (a retransmission, or in a
/// probe) and records that this packet carries it. False if it does not fit.
fn put_sent_frame(
    frame: &mut SentFrame,
    key: FrameKey,
    w: &mut Writer<'_>,
    keys: &mut PacketFrameKeys,
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

/// Sends `queue`'s lost frames again into the packet, in order, until one does not fit;
/// true if the queue emptied.
fn resend_from(
    queue: &mut VecDeque<FrameKey>,
    frames: &mut FrameStore<SentFrame>,
    w: &mut Writer<'_>,
    keys: &mut PacketFrameKeys,
    sent: &mut Resent,
) -> bool {
    while let Some(&key) = queue.front() {
        let Some(frame) = frames.get_mut(key) else {
            queue.pop_front();
            continue;
        };
        if frame.in_flight > 0 {
            queue.pop_front();
            continue;
        }
        if !put_sent_frame(frame, key, w, keys) {
            sent.full = true;
            return false;
        }
        sent.frames += 1;
        sent.bytes += frame.payload.len() as u64;
        queue.pop_front();
    }
    true
}

/// What `write_retransmissions` put in a packet.
#[derive(Default)]
struct Resent {
    /// Frames sent again.
    frames: usize,
    /// Their payload bytes.
    bytes: u64,
    /// One did not fit: the next packet takes it.
    full: bool,
}

/// What `write_new_frames` put in a packet.
#[derive(Default)]
struct NewFrames {
    /// Frames written.
    count: usize,
    /// Whether one makes the packet worth coding (`fec::worth_coding`).
    worth_coding: bool,
}
