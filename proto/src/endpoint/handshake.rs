//! The server side of the handshake, stateless until the client proves its address: cookies
//! (a SipHash MAC of address, nonce and time), the checks on `Connect`, the accept hook, user
//! ids; and the client side's routing of `Challenge`, `Accept` and `Reject`.

use alloc::vec;
use core::net::IpAddr;

use super::*;

impl Endpoint {
    /// Runs `f` on the client-side connection at `from` whose nonce matches; counts a drop if
    /// there is none or `f` says the packet was unexpected.
    pub(super) fn with_client_conn(
        &mut self,
        from: SocketAddr,
        nonce: u64,
        f: impl FnOnce(&mut Connection, Instant, &Config) -> bool,
    ) -> bool {
        let now = self.last_now;
        let Some(index) = self.by_addr.get(&from).copied() else {
            self.stats.drops.add(DropReason::Unexpected);
            return false;
        };
        let Some(mut c) = self.slots[index as usize].conn.take() else {
            return false;
        };
        let ok = c.is_client && c.client_nonce == nonce && f(&mut c, now, &self.config);
        if !ok {
            c.stats.drops.add(DropReason::Unexpected);
        }
        self.finish(index, c);
        ok
    }

    /// The cookie key rotates every `cookie_lifetime`: each epoch's key is its own PRF
    /// output, so a cookie is checked under the key of the epoch it was issued in, and no
    /// key outlives two lifetimes of use.
    fn cookie_mac(&self, from: SocketAddr, nonce: u64, issued_at: u64) -> [u8; 16] {
        let epoch = issued_at / micros(self.config.cookie_lifetime).max(1);
        let key = self.prf.derive(Domain::CookieKey, epoch);
        let ip: &[u8] = match &from.ip() {
            IpAddr::V4(ip) => &ip.octets(),
            IpAddr::V6(ip) => &ip.octets(),
        };
        key.mac128(&[
            ip,
            &from.port().to_be_bytes(),
            &nonce.to_be_bytes(),
            &issued_at.to_be_bytes(),
        ])
    }

    fn make_cookie(&self, now: Instant, from: SocketAddr, nonce: u64) -> Cookie {
        let issued_at = now.as_micros();
        let mut cookie = [0u8; COOKIE_LEN];
        cookie[..8].copy_from_slice(&issued_at.to_be_bytes());
        cookie[8..].copy_from_slice(&self.cookie_mac(from, nonce, issued_at));
        cookie
    }

    fn cookie_is_valid(&self, now: Instant, from: SocketAddr, nonce: u64, cookie: &Cookie) -> bool {
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&cookie[..8]);
        let issued_at = u64::from_be_bytes(issued);
        let fresh = issued_at <= now.as_micros()
            && now.as_micros() - issued_at <= micros(self.config.cookie_lifetime);
        // Constant-time comparison: the MAC is a secret the attacker probes byte by byte.
        let mac = self.cookie_mac(from, nonce, issued_at);
        let diff = mac
            .iter()
            .zip(&cookie[8..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        fresh && diff == 0
    }

    /// Whether a handshake packet for `protocol_id` may be answered; counts the drop if not.
    fn accepts_handshake(&mut self, protocol_id: u32) -> bool {
        let refusal = if !self.config.accept_incoming {
            DropReason::Unexpected
        } else if protocol_id != self.config.protocol_id {
            DropReason::WrongProtocol
        } else {
            return true;
        };
        self.stats.drops.add(refusal);
        false
    }

    pub(super) fn on_hello(
        &mut self,
        now: Instant,
        from: SocketAddr,
        protocol_id: u32,
        nonce: u64,
    ) {
        if !self.accepts_handshake(protocol_id) {
            return;
        }
        // Stateless: nothing is stored; the reply (33 bytes) is smaller than the Hello (48).
        let cookie = self.make_cookie(now, from, nonce);
        self.push_control(
            from,
            Packet::Challenge {
                client_nonce: nonce,
                cookie,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_connect(
        &mut self,
        now: Instant,
        from: SocketAddr,
        protocol_id: u32,
        nonce: u64,
        cookie: Cookie,
        (channel_layout, mtu, peer_budget): (u64, u16, u32),
        data: &[u8],
    ) {
        if !self.accepts_handshake(protocol_id) {
            return;
        }
        if !self.cookie_is_valid(now, from, nonce, &cookie) {
            self.stats.drops.add(DropReason::BadCookie);
            return;
        }
        if data.len() > self.config.max_connect_data {
            self.stats.drops.add(DropReason::Malformed);
            return;
        }
        // The address is validated from here on.
        if let Some(index) = self.by_addr.get(&from).copied() {
            let Some(existing) = self.slot_conn(index) else {
                return;
            };
            if existing.is_client && !existing.is_connected() && existing.client_nonce < nonce {
                // Both peers are connecting to each other at once. The attempt with the lower
                // nonce wins on both sides: here ours does, and the peer accepts it and drops
                // this one.
                self.stats.drops.add(DropReason::Unexpected);
                return;
            }
            if !existing.is_client && existing.client_nonce == nonce {
                // Our Accept was lost: say it again.
                let accept = Packet::Accept {
                    client_nonce: nonce,
                    connection_id: existing.connection_id,
                    user_id: existing.peer_user_id,
                    reassembly_budget: wire_budget(&self.config),
                };
                self.push_control(from, accept);
                return;
            }
            // The peer restarted (the old connection is gone from its side), or it won a
            // simultaneous open: the old connection or our own attempt gives way.
            if let Some(mut old) = self.slots[index as usize].conn.take() {
                old.close(DisconnectReason::Replaced, None);
                self.finish(index, old);
            }
        }
        let reject = |code| Packet::Reject {
            client_nonce: nonce,
            code,
        };
        if channel_layout != self.config.channel_layout() || usize::from(mtu) != self.config.mtu {
            self.stats.connections_rejected += 1;
            self.push_control(from, reject(RejectCode::ChannelMismatch));
            return;
        }
        if self.live >= self.config.max_connections {
            self.stats.connections_rejected += 1;
            self.push_control(from, reject(RejectCode::Full));
            return;
        }
        if let Some(hook) = self.accept_hook.as_mut() {
            if let Err(code) = hook(&ConnectRequest { remote: from, data }) {
                self.stats.connections_rejected += 1;
                self.push_control(from, reject(RejectCode::Refused(code)));
                return;
            }
        }
        let Some(user_id) = self.user_ids.allocate() else {
            self.stats.drops.add(DropReason::ConnectionTableFull);
            return;
        };
        let connection_id = self.next_connection_id();
        let (index, handle) = self.allocate_slot();
        let path_key = self.next_path_key();
        let mut conn = Box::new(Connection::new(
            &self.config,
            handle,
            from,
            now,
            false,
            nonce,
            self.hasher,
            path_key,
        ));
        conn.connection_id = connection_id;
        conn.peer_user_id = user_id;
        conn.peer_reassembly_budget = peer_budget as usize;
        conn.local_user_id = 0;
        conn.on_established(now, &self.config);
        self.by_addr.insert(from, index);
        self.by_id.insert(connection_id, index);
        self.stats.connections_opened += 1;
        self.push_control(
            from,
            Packet::Accept {
                client_nonce: nonce,
                connection_id,
                user_id,
                reassembly_budget: wire_budget(&self.config),
            },
        );
        self.events.push(Event::Connected {
            conn: handle,
            remote: from,
            peer_user_id: user_id,
            local_user_id: 0,
        });
        self.finish(index, conn);
    }
}

/// This endpoint's per-connection reassembly budget as the handshake carries it.
pub(crate) fn wire_budget(config: &Config) -> u32 {
    u32::try_from(config.reassembly_budget).unwrap_or(u32::MAX)
}

/// User ids 1..=65534 handed to accepted connections; 0 is the server's own.
pub(super) struct UserIds {
    used: Vec<u64>,
    next: u16,
}

impl UserIds {
    /// Empty until the first id is handed out, so clients do not pay for the 8 KiB bitmap.
    pub(super) fn new() -> Self {
        UserIds {
            used: Vec::new(),
            next: 1,
        }
    }

    fn is_used(&self, id: u16) -> bool {
        self.used
            .get(usize::from(id / 64))
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// The next free id after the last one given (ids are not reused at once, so a late
    /// packet for a departed user is not mistaken for a newcomer's).
    pub(super) fn allocate(&mut self) -> Option<u16> {
        if self.used.is_empty() {
            self.used = vec![0; 1024];
        }
        for _ in 0..u16::MAX {
            let id = self.next;
            self.next = if self.next >= u16::MAX - 1 {
                1
            } else {
                self.next + 1
            };
            if !self.is_used(id) {
                self.used[usize::from(id / 64)] |= 1 << (id % 64);
                return Some(id);
            }
        }
        None
    }

    pub(super) fn release(&mut self, id: u16) {
        if let Some(w) = self.used.get_mut(usize::from(id / 64)) {
            *w &= !(1 << (id % 64));
        }
    }
}
