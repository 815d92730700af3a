//! A connection's protection: the client's side of the key exchange, the packet keys both
//! sides hold afterwards, and the sealing of the packets a connection sends outside the
//! `Data` path (path challenges and responses, close notices).

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::*;
use crate::crypto::{Ephemeral, PacketKey, PublicKey, SessionKeys, TAG_LEN};
use crate::endpoint::PeerIdentity;
use crate::token::ConnectToken;
use crate::transport::received::Verdict;
use crate::transport::recovery::AckOutcome;

/// Largest packet a connection sends outside the `Data` path, sealed (an `Accept` with both
/// keys and its tag is the largest).
pub(crate) const CONTROL_MAX: usize = 112;

/// A control packet ready to send.
pub(crate) type ControlBytes = heapless::Vec<u8, CONTROL_MAX>;

/// The keys of an established, protected connection.
pub(crate) struct PacketKeys {
    pub(crate) send: PacketKey,
    pub(crate) recv: PacketKey,
}

impl PacketKeys {
    pub(crate) fn new(keys: SessionKeys, is_client: bool) -> Self {
        let SessionKeys {
            client_to_server,
            server_to_client,
            ..
        } = keys;
        if is_client {
            PacketKeys {
                send: client_to_server,
                recv: server_to_client,
            }
        } else {
            PacketKeys {
                send: server_to_client,
                recv: client_to_server,
            }
        }
    }
}

/// The client's side of the handshake, from `connect` until `Accept`.
pub(crate) struct ClientHandshake {
    pub(crate) data: Bytes,
    /// `None` without protection.
    pub(crate) ephemeral: Option<Ephemeral>,
    pub(crate) server_key: Option<PublicKey>,
    pub(crate) token: Option<ConnectToken>,
    /// The `Connect` as sent (the same bytes every time): the transcript's first part.
    pub(crate) connect: Vec<u8>,
    /// When that `Connect` (its cookie) was first sent: past `cookie_lifetime` the server
    /// refuses the cookie, and the client starts again from `Hello` for a fresh one.
    pub(crate) connect_since: MaybeInstant,
    /// `Accept`s checked since the `Connect` was last sent (see `ACCEPTS_PER_CONNECT`).
    pub(crate) accepts_checked: u8,
}

/// `Accept`s a client checks for each `Connect` it sends: each costs it up to three X25519
/// agreements, and an on-path attacker (it sees the client's nonce) could send forged ones
/// as fast as it likes for the whole handshake. The server answers a `Connect` with one; past
/// these, the rest wait for the next `Connect` (an attacker on the path can stop the
/// handshake anyway, with a `Reject`).
const ACCEPTS_PER_CONNECT: u8 = 4;

/// The server's side between sending `Accept` and the client's first packet, which proves
/// the client holds the keys: the `Accept` to repeat if the client asks again, and who the
/// client is, for the `Connected` event.
pub(crate) struct PendingAccept {
    pub(crate) accept: ControlBytes,
    pub(crate) identity: PeerIdentity,
    /// The client's connect token (tag, expiry), marked used when the client confirms.
    pub(crate) token: Option<([u8; 16], u64)>,
    /// The connection at the same address this one replaces once confirmed.
    pub(crate) replaces: Option<ConnectionHandle>,
    /// The cookie of the `Connect` it answers: a repeat carries it; a client that began
    /// again for a fresh cookie (its Accepts lost for a cookie's lifetime) does not.
    pub(crate) cookie: Cookie,
}

/// How an `Accept` turned out.
pub(crate) enum AcceptOutcome {
    /// The connection is established; the server proved what `PeerIdentity` says.
    Accepted(PeerIdentity),
    /// The server proved another key than the pinned one.
    KeyMismatch,
    /// Not for this handshake, or not authentic: dropped, the handshake goes on.
    Dropped(DropReason),
}

/// The `Accept` fields the client checks.
pub(crate) struct AcceptFields {
    pub(crate) connection_id: u64,
    pub(crate) user_id: u16,
    pub(crate) reassembly_budget: u32,
    pub(crate) protection: crate::crypto::Protection,
    pub(crate) ephemeral: Option<[u8; 32]>,
    pub(crate) static_key: Option<[u8; 32]>,
}

impl Connection {
    pub(crate) fn set_client_handshake(&mut self, handshake: ClientHandshake) {
        self.client_handshake = Some(Box::new(handshake));
    }

    /// An `Accept` for our `Connect` arrived; `datagram` is all of it (the transcript and
    /// the tag are read from it).
    pub(crate) fn on_accept(
        &mut self,
        now: Instant,
        config: &Config,
        accept: &AcceptFields,
        datagram: &[u8],
    ) -> AcceptOutcome {
        let Some(hs) = self.client_handshake.as_deref_mut() else {
            return AcceptOutcome::Dropped(DropReason::Unexpected);
        };
        if !matches!(self.state, State::Connecting) || accept.protection != config.protection {
            return AcceptOutcome::Dropped(DropReason::Unexpected);
        }
        if hs.ephemeral.is_some() {
            if hs.accepts_checked >= ACCEPTS_PER_CONNECT {
                // (Not checked: counted as unexpected, not as failing authentication.)
                return AcceptOutcome::Dropped(DropReason::Unexpected);
            }
            hs.accepts_checked += 1;
        }
        let hs = &*hs;
        let server_static = accept.static_key.map(PublicKey);
        let mut keys = None;
        if let Some(ephemeral) = &hs.ephemeral {
            let Some(server_ephemeral) = accept.ephemeral.map(PublicKey) else {
                return AcceptOutcome::Dropped(DropReason::Unexpected);
            };
            // The tag first: a forged Accept (naming any key) is dropped and the handshake
            // goes on; one that authenticates under another key than the pinned one comes
            // from a peer that really holds that key, so is not the server we meant.
            let Some(session) = client_session(
                hs,
                ephemeral,
                &server_ephemeral,
                server_static,
                config,
                datagram,
            ) else {
                return AcceptOutcome::Dropped(DropReason::Unauthenticated);
            };
            if hs.server_key.is_some() && hs.server_key != server_static {
                return AcceptOutcome::KeyMismatch;
            }
            keys = Some(PacketKeys::new(session, true));
        }
        self.keys = keys;
        self.client_handshake = None;
        self.state = State::Connected;
        self.connection_id = accept.connection_id;
        self.local_user_id = accept.user_id;
        self.peer_user_id = 0;
        self.peer_reassembly_budget = accept.reassembly_budget as usize;
        self.timers.stop(Timer::Handshake);
        self.timers.stop(Timer::HandshakeTimeout);
        self.on_established(now, config);
        // The server reports the connection once a packet of ours proves we hold the keys:
        // send one at once, acknowledged and so repeated until it arrives.
        self.transport.probes_due = self.transport.probes_due.max(1);
        AcceptOutcome::Accepted(PeerIdentity {
            key: server_static,
            ..PeerIdentity::default()
        })
    }

    /// Builds a packet the connection sends outside the `Data` path: it takes the next
    /// packet number (as an unacknowledged packet, so numbers stay one sequence) and is
    /// sealed under the connection's keys.
    pub(crate) fn control_packet(
        &mut self,
        now: Instant,
        make: impl FnOnce(u32) -> Packet<'static>,
        outcome: &mut AckOutcome,
    ) -> Option<ControlBytes> {
        let mut out = [0u8; CONTROL_MAX];
        let len = self.write_control(now, &mut out, make, outcome)?;
        heapless::Vec::from_slice(&out[..len]).ok()
    }

    /// Like `control_packet`, into `buf`; returns the length.
    pub(crate) fn write_control(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        make: impl FnOnce(u32) -> Packet<'static>,
        outcome: &mut AckOutcome,
    ) -> Option<usize> {
        let pn = self.transport.sent.next_seq();
        let len = make(pn as u32).encode(buf)?;
        let len = match &self.keys {
            Some(keys) => keys.send.seal(pn, buf, len)?,
            None => len,
        };
        let keys = self.transport.sent.take_packet_keys();
        outcome.clear();
        self.transport
            .sent
            .on_sent(now, len, AckWanted::No, keys, outcome);
        self.skip_packet_number(now);
        self.apply_outcome(outcome);
        Some(len)
    }

    /// Server: an unconfirmed connection lives only as long as a handshake may take (not the
    /// idle timeout): an Accept nobody answers gives its slot back soon.
    pub(crate) fn await_confirmation(&mut self, now: Instant, config: &Config) {
        self.timers.set(
            Timer::Idle,
            now + config.handshake_timeout.min(config.idle_timeout),
        );
    }

    /// A close notice or path packet of number `wire_pn` arrived (authenticated, when
    /// protected): whether it is new. It is recorded so that a replay is a duplicate. (In
    /// plain mode anyone can write any number, so there is nothing to check.)
    pub(crate) fn on_control_packet(&mut self, now: Instant, wire_pn: u32) -> bool {
        if self.keys.is_none() {
            return true;
        }
        let fresh = self
            .transport
            .received
            .extend(wire_pn)
            .filter(|&pn| self.transport.received.verdict(pn) == Verdict::New);
        match fresh {
            Some(pn) => {
                self.transport.record_received(pn, now);
                true
            }
            None => {
                self.stats.rare.dropped(DropReason::DuplicatePacket);
                false
            }
        }
    }

    /// Bytes protection adds to each packet of this connection.
    pub(crate) fn tag_len(&self) -> usize {
        if self.keys.is_some() {
            TAG_LEN
        } else {
            0
        }
    }

    /// A packet naming this connection failed to authenticate (the endpoint counted the
    /// drop): counted here too (in the box of rare counters, made on the first), and the
    /// connection closes on the `INTEGRITY_LIMIT`th, telling the peer why.
    pub(crate) fn on_forgery(&mut self) {
        let rare = self.stats.rare.get();
        rare.forgeries += 1;
        if rare.forgeries >= crate::crypto::INTEGRITY_LIMIT {
            self.close(
                DisconnectReason::IntegrityLimit,
                Some(CloseCode::IntegrityLimit),
            );
        }
    }
}

/// The client's key schedule for an `Accept`: every shared secret the handshake promised,
/// and the tag checked. `None` if a peer key is of small order or the tag fails.
fn client_session(
    hs: &ClientHandshake,
    ephemeral: &Ephemeral,
    server_ephemeral: &PublicKey,
    server_static: Option<PublicKey>,
    config: &Config,
    datagram: &[u8],
) -> Option<SessionKeys> {
    let (clear, tag) = datagram.split_at(datagram.len().checked_sub(TAG_LEN)?);
    let ee = ephemeral.agree(server_ephemeral)?;
    let es = match &server_static {
        Some(key) => Some(ephemeral.agree(key)?),
        None => None,
    };
    let se = match &config.static_keypair {
        Some(pair) => Some(pair.agree(server_ephemeral)?),
        None => None,
    };
    let mut shared: heapless::Vec<&[u8], 4> = heapless::Vec::new();
    let _ = shared.push(&ee[..]);
    if let Some(es) = &es {
        let _ = shared.push(&es[..]);
    }
    if let Some(se) = &se {
        let _ = shared.push(&se[..]);
    }
    if let Some(token) = &hs.token {
        let _ = shared.push(&token.client_key);
    }
    let keys = SessionKeys::derive(&hs.connect, clear, &shared);
    keys.accept_tag_is_valid(clear, tag).then_some(keys)
}
