//! The server side of the handshake, stateless until the client proves its address: cookies
//! (a SipHash MAC of address, nonce and time), the checks on `Connect`, the accept hook, user
//! ids; and the client side's routing of `Challenge`, `Accept` and `Reject`.

use alloc::vec;
use core::hash::BuildHasher;
use core::net::IpAddr;

use super::*;
use crate::connection::{PacketKeys, PendingAccept};
use crate::crypto::{token_proof_is_valid, Ephemeral, Keypair, Protection, SessionKeys, TAG_LEN};
use crate::rate::Bucket;
use crate::token::OpenedToken;
use crate::wire::TOKEN_PROOF_LEN;

impl Endpoint {
    /// Runs `f` on the client-side connection at `from` whose nonce matches; counts a drop if
    /// there is none or `f` says the packet was unexpected.
    pub(super) fn with_client_conn(
        &mut self,
        from: SocketAddr,
        nonce: u64,
        f: impl FnOnce(&mut Connection, Instant, &Config) -> Result<(), DropReason>,
    ) -> bool {
        let now = self.last_now;
        let Some(index) = self.by_addr.get(&from).copied() else {
            self.stats.drops.add(DropReason::Unexpected);
            return false;
        };
        let Some(mut c) = self.slots[index as usize].conn.take() else {
            return false;
        };
        let result = if c.is_client && c.client_nonce == nonce {
            f(&mut c, now, &self.config)
        } else {
            Err(DropReason::Unexpected)
        };
        if let Err(reason) = result {
            c.stats.rare.dropped(reason);
        }
        self.finish(index, c);
        result.is_ok()
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
        let issued_at = issued_at(cookie);
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
        protection: Protection,
    ) {
        // Refused at once, so the client learns why within a round trip instead of timing
        // out; stateless, and the reply (12 bytes) is smaller than the Hello (48).
        let refusal = if !self.config.accept_incoming {
            Some((RejectCode::NotAccepting, DropReason::Unexpected))
        } else if protocol_id != self.config.protocol_id {
            Some((RejectCode::WrongProtocol, DropReason::WrongProtocol))
        } else {
            None
        };
        if let Some((code, reason)) = refusal {
            self.stats.drops.add(reason);
            self.stats.connections_rejected += 1;
            self.push_unproven(
                from,
                Packet::Reject {
                    client_nonce: nonce,
                    code,
                },
            );
            return;
        }
        if protection != self.config.protection {
            // Said at once, before any cookie: the reply (12 bytes) is smaller than the Hello.
            self.stats.connections_rejected += 1;
            self.push_unproven(
                from,
                Packet::Reject {
                    client_nonce: nonce,
                    code: RejectCode::ProtectionMismatch,
                },
            );
            return;
        }
        // Stateless: nothing is stored; the reply (33 bytes) is smaller than the Hello (48).
        let cookie = self.make_cookie(now, from, nonce);
        self.push_unproven(
            from,
            Packet::Challenge {
                client_nonce: nonce,
                cookie,
            },
        );
    }

    /// A `Connect` (all of `datagram`): the client proved its address; check it, run the
    /// key exchange and the accept hook, and answer with `Accept` or `Reject`.
    pub(super) fn on_connect(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &Packet<'_>,
        datagram: &[u8],
    ) {
        let Packet::Connect {
            protocol_id,
            client_nonce: nonce,
            cookie,
            channel_layout,
            mtu,
            reassembly_budget: peer_budget,
            protection,
            ephemeral,
            static_key,
            token,
            data,
            token_proof,
        } = *packet
        else {
            return;
        };
        if !self.accepts_handshake(protocol_id) {
            return;
        }
        if !self.cookie_is_valid(now, from, nonce, &cookie) {
            self.stats.drops.add(DropReason::BadCookie);
            return;
        }
        // A key of small order fails the exchange, whatever else: refused before the accept
        // hook and the key-exchange budget (a failed exchange makes no connection, so no
        // pacing per address would stop the next Connect, with another key).
        let small = |k: &Option<[u8; 32]>| k.as_ref().is_some_and(crate::crypto::is_small_order);
        if small(&ephemeral) || small(&static_key) {
            self.stats.drops.add(DropReason::Unauthenticated);
            return;
        }
        if data.len() > self.config.max_connect_data {
            self.stats.drops.add(DropReason::Malformed);
            return;
        }
        // The address is validated from here on.
        if let Some(index) = self.by_addr.get(&from).copied() {
            let Some(existing) = self.slot_conn(index) else {
                // A stale entry (never expected): it names nobody, so it is dropped.
                self.by_addr.remove(&from);
                return self.on_connect(now, from, packet, datagram);
            };
            if existing.is_client && !existing.is_connected() && existing.client_nonce < nonce {
                // Both peers are connecting to each other at once. The attempt with the lower
                // nonce wins on both sides: here ours does, and the peer accepts it and drops
                // this one.
                self.stats.drops.add(DropReason::Unexpected);
                return;
            }
            // (A later cookie only: a delayed or replayed copy of an earlier Connect must not
            // replace the attempt it was itself replaced by.)
            let began_again = existing
                .pending_accept
                .as_ref()
                .is_some_and(|p| issued_at(&cookie) > issued_at(&p.cookie));
            // (The same client with a fresh cookie began again: our Accepts were lost for a
            // cookie's lifetime. Its transcript is new, so the Accept we hold could never be
            // checked: it goes on as a new attempt, paced like one, which replaces that one
            // below.)
            if !existing.is_client && existing.client_nonce == nonce && !began_again {
                // Our Accept was lost: say it again (once the client's packets arrive, it has
                // it, and a late copy of its Connect is ignored).
                if let Some(accept) = existing.pending_accept.as_ref().map(|p| p.accept.clone()) {
                    // The client is still trying: its confirmation deadline starts again
                    // (put back through `finish_quiet`, which records the new deadline).
                    if let Some(mut c) = self.slots[index as usize].conn.take() {
                        c.await_confirmation(now, &self.config);
                        self.finish_quiet(index, c);
                    }
                    self.push_control_bytes(from, accept);
                } else {
                    self.stats.drops.add(DropReason::DuplicatePacket);
                }
                return;
            } else if existing.pending_accept.is_some()
                && now < existing.last_received() + self.config.handshake_resend_interval
            {
                // A new attempt from this address so soon after the last one, which is not
                // confirmed yet: a client retries with its own nonce, and one that gave up
                // and began again waits a resend interval at least. Fresh nonces this fast
                // are someone buying key exchanges (each replaces the last attempt, so a
                // full server would not stop them): one per resend interval per address.
                self.stats.drops.add(DropReason::Unexpected);
                return;
            }
        }
        let reject = |code| Packet::Reject {
            client_nonce: nonce,
            code,
        };
        let refusal = if protection != self.config.protection {
            Some(RejectCode::ProtectionMismatch)
        } else if channel_layout != self.config.channel_layout()
            || usize::from(mtu) != self.config.mtu
        {
            Some(RejectCode::ChannelMismatch)
        } else if self.live - usize::from(self.by_addr.contains_key(&from))
            >= self.config.max_connections
        {
            // (A connection this one replaces leaves room for it.)
            Some(RejectCode::Full)
        } else if counts_per_ip(from)
            && self
                .admission
                .as_deref()
                .map_or(0, |a| a.connections_from(from.ip()))
                // (The entry at this address may be our own connection to it.)
                .saturating_sub(usize::from(self.by_addr.contains_key(&from)))
                >= self.config.max_connections_per_ip
        {
            Some(RejectCode::Full)
        } else {
            None
        };
        if let Some(code) = refusal {
            self.stats.connections_rejected += 1;
            self.push_control(from, reject(code));
            return;
        }
        let proven = |o: &OpenedToken| {
            let covered = datagram.len().saturating_sub(TOKEN_PROOF_LEN);
            token_proof
                .is_some_and(|p| token_proof_is_valid(&o.client_key, &datagram[..covered], &p))
        };
        let opened = match self.check_token(token, proven) {
            Ok(opened) => opened,
            Err(code) => {
                self.stats.connections_rejected += 1;
                self.push_control(from, reject(code));
                return;
            }
        };
        // The accept hook before any key exchange: refusing costs the server no scalar
        // multiplication. (It sees what the client claims; `Connected` comes once proven.)
        let identity = PeerIdentity {
            key: static_key.map(PublicKey),
            token: opened.as_ref().map(|o| o.claims.clone()),
            connect_data: Bytes::copy_from_slice(data),
            ..PeerIdentity::default()
        };
        if let Some(hook) = self.accept_hook.as_mut() {
            let request = ConnectRequest {
                remote: from,
                data,
                identity: &identity,
            };
            if let Err(code) = hook(&request) {
                self.stats.connections_rejected += 1;
                self.push_control(from, reject(RejectCode::Refused(code)));
                return;
            }
        }
        // Key exchanges are the costliest thing a stranger can ask for: the endpoint takes
        // them at `Config::key_exchanges`' rate, and drops a Connect past it unanswered.
        // Each network takes at most its share, so no one network spends it all.
        if ephemeral.is_some() && !self.take_key_exchange(now, from) {
            self.stats.drops.add(DropReason::KeyExchangeBudget);
            return;
        }
        // The key exchange's secrets, before anything is allocated.
        let server_ephemeral = ephemeral.map(|_| self.secrets.ephemeral());
        let mut shared = heapless::Vec::new();
        if let (Some(client), Some(ours)) = (ephemeral.map(PublicKey), &server_ephemeral) {
            let static_pair = self.config.static_keypair.as_ref();
            match server_secrets(ours, &client, static_pair, static_key.map(PublicKey)) {
                Some(secrets) => shared = secrets,
                None => {
                    // (Not reached: keys of small order were refused above.)
                    self.stats.drops.add(DropReason::Unauthenticated);
                    return;
                }
            }
        }
        // Every check passed. A connection already at this address (the peer restarted, or
        // won a simultaneous open) gives way only when this one is proven by the client's
        // first packet: a Connect that never completes must not end a live connection. An
        // earlier unproven attempt from here is simply dropped.
        let mut replaces = None;
        if let Some(index) = self.by_addr.get(&from).copied() {
            if let Some(mut old) = self.slots[index as usize].conn.take() {
                match old.pending_accept.as_mut() {
                    Some(pending) => {
                        replaces = pending.replaces.take();
                        old.close(DisconnectReason::Replaced, None);
                    }
                    None => replaces = Some(old.handle),
                }
                self.finish(index, old);
            }
        }
        // One unproven connection per token: a copy taken off the wire (which can never
        // confirm) cannot hold more than the one slot, and the holder's own Connect takes it.
        if let Some(o) = &opened {
            let pending = self
                .admission
                .as_deref()
                .and_then(|a| a.pending_tokens.get(&o.tag));
            if let Some(index) = pending.copied() {
                if let Some(mut other) = self.slots[index as usize].conn.take() {
                    if other.pending_accept.is_some() {
                        other.close(DisconnectReason::Replaced, None);
                    }
                    self.finish(index, other);
                }
            }
        }
        let Some(user_id) = self.user_ids.allocate() else {
            self.stats.drops.add(DropReason::ConnectionTableFull);
            return;
        };
        let connection_id = self.next_connection_id(self.next_slot_index());
        let accept = Packet::Accept {
            client_nonce: nonce,
            connection_id,
            user_id,
            reassembly_budget: wire_budget(&self.config),
            protection,
            ephemeral: server_ephemeral.as_ref().map(|e| e.public.0),
            static_key: server_ephemeral
                .as_ref()
                .and(self.config.static_keypair.as_ref())
                .map(|k| k.public_key().0),
            tag: None,
        };
        let mut out = [0u8; CONTROL_MAX];
        let Some(mut len) = accept.encode(&mut out[..CONTROL_MAX - TAG_LEN]) else {
            self.user_ids.release(user_id);
            return;
        };
        let mut keys = None;
        if server_ephemeral.is_some() {
            let mut secrets: heapless::Vec<&[u8], 4> = shared.iter().map(|s| &s[..]).collect();
            if let Some(o) = &opened {
                let _ = secrets.push(&o.client_key);
            }
            let session = SessionKeys::derive(datagram, &out[..len], &secrets);
            let tag = session.accept_tag(&out[..len]);
            out[len..len + TAG_LEN].copy_from_slice(&tag);
            len += TAG_LEN;
            keys = Some(PacketKeys::new(session, false));
        }
        let accept = ControlBytes::from_slice(&out[..len]).unwrap_or_default();
        let (index, handle) = self.allocate_slot();
        debug_assert!(
            u64::from(index) > ID_INDEX_MASK || self.slot_of(connection_id) == index as usize
        );
        let path_key = self.next_path_key();
        let mut conn = Box::new(Connection::new(
            &self.config,
            handle,
            from,
            now,
            false,
            nonce,
            path_key,
        ));
        conn.connection_id = connection_id;
        conn.peer_user_id = user_id;
        conn.peer_reassembly_budget = peer_budget as usize;
        conn.local_user_id = 0;
        conn.keys = keys;
        if let Some(o) = &opened {
            self.admission().pending_tokens.insert(o.tag, index);
        }
        conn.pending_accept = Some(Box::new(PendingAccept {
            accept: accept.clone(),
            identity,
            token: opened.map(|o| (o.tag, o.claims.expires_at)),
            replaces,
            cookie,
        }));
        conn.on_established(now, &self.config);
        conn.await_confirmation(now, &self.config);
        self.by_addr.insert(from, index);
        self.by_id.insert(connection_id, index);
        self.ip_gains(from);
        self.push_control_bytes(from, accept);
        self.finish(index, conn);
    }

    /// A server's connection now comes from `addr` (taken, or moved there).
    pub(super) fn ip_gains(&mut self, addr: SocketAddr) {
        if counts_per_ip(addr) {
            *self
                .admission()
                .per_ip
                .entry(ip_key(addr.ip()))
                .or_default() += 1;
        }
    }

    /// A server's connection moved from `old` to `new`.
    pub(super) fn ip_moves(&mut self, old: SocketAddr, new: SocketAddr) {
        if old != new {
            self.ip_loses(old);
            self.ip_gains(new);
        }
    }

    /// A server's connection no longer comes from `addr` (gone, or moved away).
    pub(super) fn ip_loses(&mut self, addr: SocketAddr) {
        let Some(a) = self
            .admission
            .as_deref_mut()
            .filter(|_| counts_per_ip(addr))
        else {
            return;
        };
        let key = ip_key(addr.ip());
        if let Some(n) = a.per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                a.per_ip.remove(&key);
            }
        }
    }

    /// Checks a `Connect`'s token against `Config::tokens`: none needed and none given, or
    /// a valid, unexpired, unused one for this server.
    fn check_token(
        &mut self,
        token: Option<&[u8]>,
        proven: impl FnOnce(&OpenedToken) -> bool,
    ) -> Result<Option<OpenedToken>, RejectCode> {
        let (config, token) = match (&self.config.tokens, token) {
            (None, None) => return Ok(None),
            (Some(config), Some(token)) => (config, token),
            _ => return Err(RejectCode::TokenInvalid),
        };
        let unix_now = self.unix_now();
        let opened = config.open(self.config.protocol_id, token, unix_now)?;
        if !proven(&opened) {
            // A copy taken off the wire, without the client key it was issued with.
            return Err(RejectCode::TokenInvalid);
        }
        if self.token_is_used(&opened.tag) {
            self.stats.drops.add(DropReason::TokenReplay);
            return Err(RejectCode::TokenUsed);
        }
        let remembered = |e: &Self| {
            e.admission
                .as_deref()
                .map_or(0, |a| a.used_tokens.len() + a.pending_tokens.len())
        };
        if remembered(self) >= config.max_used_tokens {
            // Expired tokens need no remembering: they fail on expiry.
            let now = unix_now.unwrap_or(0);
            if let Some(a) = self
                .admission
                .as_deref_mut()
                .filter(|a| a.used_tokens_pruned != now)
            {
                a.used_tokens.retain(|_, expires| *expires > now);
                a.used_tokens_pruned = now;
            }
            if remembered(self) >= config.max_used_tokens {
                self.stats.drops.add(DropReason::TokenReplay);
                return Err(RejectCode::Full);
            }
        }
        Ok(Some(opened))
    }
}

impl Endpoint {
    /// Whether a connection already confirmed with the token of this tag.
    pub(super) fn token_is_used(&self, tag: &[u8; 16]) -> bool {
        self.admission
            .as_deref()
            .is_some_and(|a| a.used_tokens.contains_key(tag))
    }

    /// The server's admission memory, made on first use.
    pub(super) fn admission(&mut self) -> &mut Admission {
        let hasher = self.hasher;
        self.admission
            .get_or_insert_with(|| Box::new(Admission::new(hasher)))
    }

    /// Takes a key exchange for a `Connect` from `from` out of the endpoint's bucket
    /// (`Config::key_exchanges`) and, while more than half of that bucket's burst is spent,
    /// out of its network's too (`Config::key_exchanges_per_network`); `false` if either is
    /// empty. The networks' buckets exist only while it is: without contention nobody's
    /// share needs guarding.
    fn take_key_exchange(&mut self, now: Instant, from: SocketAddr) -> bool {
        let (limit, per_network) = (
            self.config.key_exchanges,
            self.config.key_exchanges_per_network,
        );
        let hasher = self.hasher;
        let a = self.admission();
        let global = a
            .key_exchanges
            .get_or_insert_with(|| Bucket::new(&limit, now));
        let level = global.refill(&limit, now);
        if level >= limit.burst {
            a.network_key_exchanges = None;
        }
        // (Peer links through a hub all come from relay addresses, in one /48: one
        // network, so a hub introducing many members takes one network's share.)
        let network = (level < limit.burst / 2.0).then(|| {
            let buckets = a.network_key_exchanges.get_or_insert_with(|| {
                alloc::vec![Bucket::new(&per_network, now); NETWORK_BUCKETS].into_boxed_slice()
            });
            // (The hasher is keyed: a peer cannot aim its networks at another's bucket.)
            let slot = hasher.hash_one(network_key(from.ip())) as usize % NETWORK_BUCKETS;
            &mut buckets[slot]
        });
        if let Some(bucket) = network {
            if !bucket.take(&per_network, now, 1.0) {
                return false;
            }
            if !global.take(&limit, now, 1.0) {
                bucket.give_back(&per_network, 1.0);
                return false;
            }
            return true;
        }
        global.take(&limit, now, 1.0)
    }

    /// Forgets the pending token `tag` if it is slot `index`'s.
    pub(super) fn forget_pending_token(&mut self, tag: &[u8; 16], index: u32) {
        if let Some(a) = self.admission.as_deref_mut() {
            if a.pending_tokens.get(tag) == Some(&index) {
                a.pending_tokens.remove(tag);
            }
        }
    }
}

/// The server's shared secrets, in the key schedule's order: ephemeral-ephemeral, then
/// client ephemeral with our static key, then our ephemeral with the client's static key.
/// `None` if any peer key is of small order.
fn server_secrets(
    ours: &Ephemeral,
    client: &PublicKey,
    static_pair: Option<&Keypair>,
    client_static: Option<PublicKey>,
) -> Option<heapless::Vec<zeroize::Zeroizing<[u8; 32]>, 3>> {
    let mut shared = heapless::Vec::new();
    shared.push(ours.agree(client)?).ok()?;
    if let Some(pair) = static_pair {
        shared.push(pair.agree(client)?).ok()?;
    }
    if let Some(key) = client_static {
        shared.push(ours.agree(&key)?).ok()?;
    }
    Some(shared)
}

/// What a server remembers to admit each client once: connect tokens used and pending, the
/// key-exchange budgets, connections per address. Boxed and made on the first
/// Connect an endpoint takes, so that a client endpoint (thousands in one process, in a load
/// test or the simulator) holds none of it.
pub(super) struct Admission {
    /// Connect tokens used, by tag, with their expiry (Unix seconds).
    pub(super) used_tokens: HashMap<[u8; 16], u64>,
    /// The Unix second `used_tokens` was last cleared of expired tokens: nothing more can
    /// expire within that second, so a full table is scanned at most once a second (a
    /// client replaying a valid token's Connect had it scanned whole for each copy).
    pub(super) used_tokens_pruned: u64,
    /// Key exchanges the endpoint may still take (`Config::key_exchanges`), made on the
    /// first.
    pub(super) key_exchanges: Option<Bucket>,
    /// Key exchanges each network may still take (`Config::key_exchanges_per_network`),
    /// `NETWORK_BUCKETS` of them by keyed hash, kept only while `key_exchanges` is short.
    pub(super) network_key_exchanges: Option<Box<[Bucket]>>,
    /// Connect tokens of connections awaiting their client's first packet, by tag.
    pub(super) pending_tokens: HashMap<[u8; 16], u32>,
    /// Connections taken from each IP address (`Config::max_connections_per_ip`; an IPv6
    /// address by its /64, which one host often holds whole); an address with none has no
    /// entry, so it holds at most `max_connections`.
    pub(super) per_ip: HashMap<IpAddr, u32>,
}

impl Admission {
    fn new(hasher: SeededState) -> Self {
        Admission {
            used_tokens: HashMap::with_hasher(hasher),
            used_tokens_pruned: 0,
            key_exchanges: None,
            network_key_exchanges: None,
            pending_tokens: HashMap::with_hasher(hasher),
            per_ip: HashMap::with_hasher(hasher),
        }
    }

    /// Connections taken from `ip`.
    fn connections_from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip_key(ip)).map_or(0, |&n| n as usize)
    }
}

/// What a connection counts against: an IPv4 address (also one mapped into IPv6, as a
/// dual-stack socket reports it), or an IPv6 address's /64.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

/// Buckets the networks' key exchanges are hashed into (16 KiB, while the endpoint's
/// bucket is short).
const NETWORK_BUCKETS: usize = 1024;

/// The network an address belongs to, for its share of key exchanges: an IPv4 /24 (also
/// mapped into IPv6), an IPv6 /48 (what one site is commonly given).
fn network_key(ip: IpAddr) -> IpAddr {
    match ip_key(ip) {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & !0xff).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 48)).into()),
    }
}

/// Whether a server's connection from `addr` counts against its IP's limit: a peer link
/// through a hub comes from a relay address, which all such links share.
pub(super) fn counts_per_ip(addr: SocketAddr) -> bool {
    crate::hub::relay_user(addr).is_none()
}

/// This endpoint's per-connection reassembly budget as the handshake carries it.
pub(crate) fn wire_budget(config: &Config) -> u32 {
    u32::try_from(config.reassembly_budget).unwrap_or(u32::MAX)
}

/// User ids 1..=hub::MAX_USER_ID (49,151) handed to accepted connections; 0 is the server's own.
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
        for _ in 0..crate::hub::MAX_USER_ID {
            let id = self.next;
            self.next = if self.next >= crate::hub::MAX_USER_ID {
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

/// When a cookie was issued (its first 8 bytes: the server's clock in microseconds).
fn issued_at(cookie: &Cookie) -> u64 {
    let mut issued = [0u8; 8];
    issued.copy_from_slice(&cookie[..8]);
    u64::from_be_bytes(issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_is_an_ipv4_slash_24_or_an_ipv6_slash_48() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        assert_eq!(network_key(ip("10.3.0.1")), network_key(ip("10.3.0.254")));
        assert_ne!(network_key(ip("10.3.0.1")), network_key(ip("10.3.1.1")));
        assert_eq!(
            network_key(ip("::ffff:10.3.0.9")),
            network_key(ip("10.3.0.1"))
        );
        assert_eq!(
            network_key(ip("2001:db8:1:ffff::1")),
            network_key(ip("2001:db8:1:2::7"))
        );
        assert_ne!(
            network_key(ip("2001:db8:1::1")),
            network_key(ip("2001:db8:2::1"))
        );
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64_and_a_mapped_ipv4_one_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            ip_key(ip("2001:db8:1:2:aaaa::1")),
            ip_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(ip_key(ip("2001:db8:1:2::1")), ip_key(ip("2001:db8:1:3::1")));
        assert_eq!(ip_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(
            ip_key(ip("::ffff:192.0.2.7")),
            ip_key(ip("::ffff:192.0.2.8"))
        );
        assert_eq!(ip_key(ip("192.0.2.7")), ip("192.0.2.7"));
    }
}
