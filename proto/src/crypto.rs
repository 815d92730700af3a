//! Packet protection and the handshake's key schedule, built only from RustCrypto and dalek
//! primitives: ChaCha20-Poly1305 seals packets, X25519 agrees keys, HKDF-SHA256 derives them
//! from the shared secrets bound to a hash of the handshake transcript.
//!
//! The construction (docs/wire.md has it byte by byte):
//!
//! ```text
//! transcript = SHA-256("shoal v3 handshake" || Connect packet || Accept packet up to its tag)
//! ikm        = DH(client eph, server eph)
//!              || DH(client eph, server static)   if the server has a static key
//!              || DH(client static, server eph)   if the client has a static key
//!              || token client key                if the client presented a connect token
//! prk        = HKDF-Extract(salt = transcript, ikm)
//! c2s key/iv = HKDF-Expand(prk, "shoal c2s", 44)     client-to-server packets
//! s2c key/iv = HKDF-Expand(prk, "shoal s2c", 44)     server-to-client packets
//! accept key = HKDF-Expand(prk, "shoal accept", 32)  the Accept's tag (nonce 0, empty text)
//! nonce(pn)  = iv XOR (0u32 || pn as u64, big-endian)
//! ```
//!
//! A protected packet is its clear 13-byte header (type, connection id, low 32 bits of the
//! packet number) as associated data, the rest encrypted in place, and a 16-byte tag.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use core::fmt;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

/// Bytes the authentication tag adds to every protected packet.
pub const TAG_LEN: usize = 16;
/// Packets that may fail to authenticate under one connection's keys before it closes
/// ([`DisconnectReason::IntegrityLimit`](crate::DisconnectReason::IntegrityLimit)):
/// ChaCha20-Poly1305's integrity limit, 2^36, as RFC 9001 (6.6) sets it for QUIC. Each
/// forgery tried has a tiny chance of passing; past this many, their sum is no longer
/// negligible. At a million forged packets a second it takes most of a day to reach.
pub const INTEGRITY_LIMIT: u64 = 1 << 36;
/// Length of the clear header every packet after the handshake starts with, and that a
/// protected packet authenticates without encrypting: type, connection id, packet number.
pub(crate) const SHORT_HEADER_LEN: usize = 1 + 8 + 4;

const IV_LEN: usize = 12;
const TRANSCRIPT_LABEL: &[u8] = b"shoal v3 handshake";

/// How the packets of a connection are protected after the handshake. Both sides must agree:
/// a peer that requires protection refuses one that offers none, with a clear reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protection {
    /// Every packet after the handshake is encrypted and authenticated (ChaCha20-Poly1305
    /// under keys from an X25519 exchange). The default.
    #[default]
    Encrypted,
    /// Clear text, unauthenticated: anyone on the path can read, forge or close connections.
    /// For LAN tools, tests and speed studies only.
    None,
}

impl Protection {
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            Protection::None => 0,
            Protection::Encrypted => 1,
        }
    }

    pub(crate) fn from_wire(b: u8) -> Option<Self> {
        match b {
            0 => Some(Protection::None),
            1 => Some(Protection::Encrypted),
            _ => None,
        }
    }
}

/// An X25519 public key: a server's identity a client may pin, or a peer's static key as
/// `Event::Connected` reports it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    /// Lowercase hex, 64 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A static X25519 key pair: an endpoint's long-term identity. The secret never leaves it
/// (`Debug` does not print it, and it is wiped from memory when dropped).
#[derive(Clone)]
pub struct Keypair {
    secret: StaticSecret,
    public: PublicKey,
}

impl Keypair {
    /// The key pair whose secret is `secret` (32 bytes from a cryptographic random source,
    /// kept secret; any 32 bytes are a valid X25519 secret).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Keypair { secret, public }
    }

    /// The public half, to give to clients that should accept only this endpoint.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn agree(&self, peer: &PublicKey) -> Option<Zeroizing<[u8; 32]>> {
        agree(&self.secret, peer)
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Keypair {
    fn eq(&self, other: &Self) -> bool {
        self.public == other.public
    }
}

impl Eq for Keypair {}

/// X25519 with `peer`: the shared secret (wiped when dropped), or `None` for a peer key of
/// small order (whose shared secret everyone knows).
fn agree(secret: &StaticSecret, peer: &PublicKey) -> Option<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
    shared
        .was_contributory()
        .then(|| Zeroizing::new(shared.to_bytes()))
}

/// X25519's public keys of small order, as libsodium lists them (bit 255, which X25519
/// ignores, cleared): 0, 1, the two points of order 8, p - 1, and p and p + 1 (0 and 1
/// again). No other encoding is of small order.
const SMALL_ORDER: [[u8; 32]; 7] = {
    const fn ff(first: u8) -> [u8; 32] {
        let mut k = [0xff; 32];
        k[0] = first;
        k[31] = 0x7f;
        k
    }
    let mut one = [0u8; 32];
    one[0] = 1;
    [
        [0; 32],
        one,
        [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ],
        [
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83,
            0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd,
            0xd0, 0x9f, 0x11, 0x57,
        ],
        ff(0xec),
        ff(0xed),
        ff(0xee),
    ]
};

/// Whether `key` is of small order: a key exchange with it would fail (`agree` gives
/// `None`), so a handshake naming one is refused before any is run.
pub(crate) fn is_small_order(key: &[u8; 32]) -> bool {
    let mut masked = *key;
    masked[31] &= 0x7f;
    SMALL_ORDER.contains(&masked)
}

/// The proof a `Connect` with a connect token carries: HMAC-SHA256 of the packet before it
/// under the token's client key, its first 16 bytes. Only the client the backend gave the
/// token to can write it, so a copy of the token taken off the wire is refused at once.
pub(crate) fn token_proof(client_key: &[u8; 32], connect: &[u8]) -> [u8; 16] {
    let mut proof = [0u8; 16];
    if let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(client_key) {
        mac.update(connect);
        proof.copy_from_slice(&mac.finalize().into_bytes()[..16]);
    }
    proof
}

/// Checks a token proof in constant time.
pub(crate) fn token_proof_is_valid(client_key: &[u8; 32], connect: &[u8], proof: &[u8]) -> bool {
    <Hmac<Sha256> as Mac>::new_from_slice(client_key).is_ok_and(|mut mac| {
        mac.update(connect);
        mac.verify_truncated_left(proof).is_ok()
    })
}

/// An ephemeral X25519 secret for one handshake.
pub(crate) struct Ephemeral {
    secret: StaticSecret,
    pub(crate) public: PublicKey,
}

impl Ephemeral {
    pub(crate) fn agree(&self, peer: &PublicKey) -> Option<Zeroizing<[u8; 32]>> {
        agree(&self.secret, peer)
    }
}

/// The root of an endpoint's secrets: HKDF-SHA256 over `Config::secret_seed` and
/// `Config::seed`. Fixed keys (the PRF's) are expansions of the root; ephemeral keys come from
/// a ratchet: each is expanded from the current state, which is then replaced by another
/// expansion of itself and the old one wiped, so the memory of an endpoint reveals none of
/// the ephemeral keys it used before (forward secrecy against a later compromise). The
/// generator is deterministic: the same config gives the same keys, which the simulator
/// relies on; the drivers fill `secret_seed` from the operating system.
pub(crate) struct Secrets {
    ratchet: [u8; 32],
}

impl Drop for Secrets {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.ratchet);
    }
}

impl Secrets {
    /// The ratchet, and the PRF's 128-bit key, from the seeds. Nothing else is kept: the root
    /// and the seeds are gone once this returns (the caller wipes its copy of the seed).
    pub(crate) fn new(seed: u64, secret_seed: Option<&[u8; 32]>) -> (Self, [u8; 16]) {
        let mut ikm = [0u8; 40];
        if let Some(s) = secret_seed {
            ikm[..32].copy_from_slice(s);
        }
        ikm[32..].copy_from_slice(&seed.to_be_bytes());
        let root = Hkdf::<Sha256>::new(Some(b"shoal v3 endpoint secrets"), &ikm);
        zeroize::Zeroize::zeroize(&mut ikm);
        let mut ratchet = [0u8; 32];
        let mut prf = [0u8; 16];
        // Constant lengths far under HKDF's limit.
        let ok =
            root.expand(b"ratchet", &mut ratchet).is_ok() && root.expand(b"prf", &mut prf).is_ok();
        debug_assert!(ok);
        (Secrets { ratchet }, prf)
    }

    /// A fresh ephemeral key pair; the ratchet moves on.
    pub(crate) fn ephemeral(&mut self) -> Ephemeral {
        let mut secret = [0u8; 32];
        let mut next = [0u8; 32];
        // A 32-byte state is a valid HKDF pseudorandom key.
        if let Ok(state) = Hkdf::<Sha256>::from_prk(&self.ratchet) {
            let ok = state.expand(b"ephemeral", &mut secret).is_ok()
                && state.expand(b"next", &mut next).is_ok();
            debug_assert!(ok);
        }
        self.ratchet = next;
        zeroize::Zeroize::zeroize(&mut next);
        let key = StaticSecret::from(secret);
        zeroize::Zeroize::zeroize(&mut secret);
        let secret = key;
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Ephemeral { secret, public }
    }
}

impl Secrets {
    /// 32 fresh secret bytes (a hub's pair keys); the ratchet moves on, so the endpoint's
    /// memory keeps none of the keys it handed out.
    pub(crate) fn fresh_key(&mut self) -> [u8; 32] {
        let mut key = [0u8; 32];
        let mut next = [0u8; 32];
        if let Ok(state) = Hkdf::<Sha256>::from_prk(&self.ratchet) {
            let ok = state.expand(b"fresh key", &mut key).is_ok()
                && state.expand(b"next", &mut next).is_ok();
            debug_assert!(ok);
        }
        self.ratchet = next;
        zeroize::Zeroize::zeroize(&mut next);
        key
    }
}

/// End-to-end protection of payloads two hub members relay through the hub: one
/// ChaCha20-Poly1305 key per direction, expanded from the pair key the hub handed both.
///
/// ```text
/// key(a -> b) = HKDF-SHA256(salt "shoal pair v1", pair key).expand("send" || a || b, 32)
/// sealed      = counter (u64, big-endian) || ciphertext || tag (16)
/// nonce       = 0u32 || counter;  associated data: what the caller binds (kind, channel)
/// ```
///
/// The counter starts at 0 for each fresh pair key and never repeats under it.
pub(crate) struct PairCipher {
    send: ChaCha20Poly1305,
    recv: ChaCha20Poly1305,
    next: u64,
}

/// Bytes sealing adds to a relayed payload: the counter and the tag.
pub const PAIR_OVERHEAD: usize = 8 + TAG_LEN;

impl fmt::Debug for PairCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairCipher(..)")
    }
}

impl PairCipher {
    /// The keys of user `me` talking to user `peer` under `pair_key`.
    pub(crate) fn new(pair_key: &[u8; 32], me: u16, peer: u16) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(b"shoal pair v1"), pair_key);
        let direction = |from: u16, to: u16| {
            let mut info = [0u8; 8];
            info[..4].copy_from_slice(b"send");
            info[4..6].copy_from_slice(&from.to_be_bytes());
            info[6..].copy_from_slice(&to.to_be_bytes());
            let mut key = [0u8; 32];
            let ok = hkdf.expand(&info, &mut key).is_ok();
            debug_assert!(ok);
            let aead = ChaCha20Poly1305::new((&key).into());
            zeroize::Zeroize::zeroize(&mut key);
            aead
        };
        PairCipher {
            send: direction(me, peer),
            recv: direction(peer, me),
            next: 0,
        }
    }

    fn nonce(counter: u64) -> Nonce {
        let mut nonce = [0u8; IV_LEN];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        nonce.into()
    }

    /// Seals `plain` for the peer, binding `aad`.
    pub(crate) fn seal(&mut self, aad: &[u8], plain: &[u8]) -> alloc::vec::Vec<u8> {
        let counter = self.next;
        self.next += 1;
        let mut out = alloc::vec::Vec::with_capacity(plain.len() + PAIR_OVERHEAD);
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(plain);
        let tag = self
            .send
            .encrypt_in_place_detached(&Self::nonce(counter), aad, &mut out[8..]);
        // Encryption fails only past ChaCha20's 256 GiB per message; payloads are bounded
        // far below it, and an empty tag would then simply fail to open.
        out.extend_from_slice(&tag.unwrap_or_default());
        out
    }

    /// Opens what the peer sealed, or `None` if it was not sealed under this pair's key
    /// (or was altered on the way).
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<alloc::vec::Vec<u8>> {
        if sealed.len() < PAIR_OVERHEAD {
            return None;
        }
        let (counter, rest) = sealed.split_at(8);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let counter = u64::from_be_bytes(counter.try_into().ok()?);
        let mut plain = body.to_vec();
        self.recv
            .decrypt_in_place_detached(&Self::nonce(counter), aad, &mut plain, Tag::from_slice(tag))
            .ok()?;
        Some(plain)
    }
}

/// One direction's packet key: the AEAD under its key, and the IV its nonces derive from.
#[derive(Clone)]
pub(crate) struct PacketKey {
    aead: ChaCha20Poly1305,
    iv: [u8; IV_LEN],
}

impl fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketKey(..)")
    }
}

impl PacketKey {
    fn from_okm(okm: &[u8; 32 + IV_LEN]) -> Self {
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&okm[32..]);
        PacketKey {
            aead: ChaCha20Poly1305::new(okm[..32].into()),
            iv,
        }
    }

    /// The nonce of packet `pn`: unique per key, as packet numbers never repeat.
    fn nonce(&self, pn: u64) -> Nonce {
        let mut nonce = self.iv;
        for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        nonce.into()
    }

    /// Seals `packet[..len]` in place: its first `SHORT_HEADER_LEN` bytes stay clear and are
    /// authenticated, the rest is encrypted, and the tag is written at `packet[len..]`.
    /// Returns the protected length, or `None` without room for the tag.
    pub(crate) fn seal(&self, pn: u64, packet: &mut [u8], len: usize) -> Option<usize> {
        let end = len.checked_add(TAG_LEN)?;
        if end > packet.len() || len < SHORT_HEADER_LEN {
            return None;
        }
        let (header, body) = packet[..len].split_at_mut(SHORT_HEADER_LEN);
        let tag = self
            .aead
            .encrypt_in_place_detached(&self.nonce(pn), header, body)
            .ok()?;
        packet[len..end].copy_from_slice(&tag);
        Some(end)
    }

    /// Opens a protected packet of packet number `pn` in place: `packet` is everything but
    /// the tag (header then ciphertext), `tag` the last `TAG_LEN` bytes of the datagram. On
    /// success the body is plain text; on failure `packet` is garbage and must be dropped.
    pub(crate) fn open(&self, pn: u64, packet: &mut [u8], tag: &[u8]) -> bool {
        if packet.len() < SHORT_HEADER_LEN || tag.len() != TAG_LEN {
            return false;
        }
        let (header, body) = packet.split_at_mut(SHORT_HEADER_LEN);
        self.aead
            .decrypt_in_place_detached(&self.nonce(pn), header, body, Tag::from_slice(tag))
            .is_ok()
    }
}

/// The keys a handshake yields, for both directions.
pub(crate) struct SessionKeys {
    pub(crate) client_to_server: PacketKey,
    pub(crate) server_to_client: PacketKey,
    accept: ChaCha20Poly1305,
}

impl SessionKeys {
    /// Runs the key schedule over the handshake's transcript and shared secrets (in the
    /// documented order; the flags that say which are present are in the transcript).
    pub(crate) fn derive(connect: &[u8], accept: &[u8], shared: &[&[u8]]) -> Self {
        let transcript = Sha256::new()
            .chain_update(TRANSCRIPT_LABEL)
            .chain_update(connect)
            .chain_update(accept)
            .finalize();
        let mut ikm = [0u8; 4 * 32];
        let mut len = 0;
        for s in shared {
            // At most four 32-byte secrets exist; more would be a bug, never input.
            let end = (len + s.len()).min(ikm.len());
            ikm[len..end].copy_from_slice(&s[..end - len]);
            len = end;
        }
        let hkdf = Hkdf::<Sha256>::new(Some(&transcript), &ikm[..len]);
        let mut c2s = [0u8; 32 + IV_LEN];
        let mut s2c = [0u8; 32 + IV_LEN];
        let mut accept_key = [0u8; 32];
        // Lengths are constants far under HKDF's limit.
        let ok = hkdf.expand(b"shoal c2s", &mut c2s).is_ok()
            && hkdf.expand(b"shoal s2c", &mut s2c).is_ok()
            && hkdf.expand(b"shoal accept", &mut accept_key).is_ok();
        debug_assert!(ok);
        let keys = SessionKeys {
            client_to_server: PacketKey::from_okm(&c2s),
            server_to_client: PacketKey::from_okm(&s2c),
            accept: ChaCha20Poly1305::new((&accept_key).into()),
        };
        for secret in [
            &mut ikm[..],
            &mut c2s[..],
            &mut s2c[..],
            &mut accept_key[..],
        ] {
            zeroize::Zeroize::zeroize(secret);
        }
        keys
    }

    /// The tag that ends an `Accept`: it proves the server derived these keys (so holds its
    /// static secret, if it named one) and that nothing in the handshake was changed.
    pub(crate) fn accept_tag(&self, accept: &[u8]) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        if let Ok(t) = self
            .accept
            .encrypt_in_place_detached(&Nonce::default(), accept, &mut [])
        {
            tag.copy_from_slice(&t);
        }
        tag
    }

    /// Checks an `Accept`'s tag in constant time.
    pub(crate) fn accept_tag_is_valid(&self, accept: &[u8], tag: &[u8]) -> bool {
        tag.len() == TAG_LEN
            && self
                .accept
                .decrypt_in_place_detached(&Nonce::default(), accept, &mut [], Tag::from_slice(tag))
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys::derive(b"connect", b"accept", &[&[7u8; 32]])
    }

    #[test]
    fn sealed_packet_opens_and_any_flipped_bit_fails() {
        let k = keys();
        let mut packet = [0u8; 64];
        packet[..13].copy_from_slice(&[0x36, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 9]);
        packet[13..40].copy_from_slice(&[0xab; 27]);
        let len = k.client_to_server.seal(9, &mut packet, 40).unwrap();
        assert_eq!(len, 40 + TAG_LEN);
        assert_ne!(&packet[13..40], &[0xab; 27][..], "the body is encrypted");
        for bit in 0..len * 8 {
            let mut copy = packet;
            copy[bit / 8] ^= 1 << (bit % 8);
            let (body, tag) = copy[..len].split_at_mut(40);
            assert!(!k.client_to_server.open(9, body, tag), "bit {bit}");
        }
        let (body, tag) = packet[..len].split_at_mut(40);
        assert!(!k.client_to_server.clone().open(10, &mut body.to_vec(), tag));
        assert!(!k.server_to_client.open(9, &mut body.to_vec(), tag));
        assert!(k.client_to_server.open(9, body, tag));
        assert_eq!(&body[13..40], &[0xab; 27][..]);
    }

    #[test]
    fn every_input_of_the_schedule_changes_the_keys() {
        let base = keys().accept_tag(b"x");
        assert_ne!(
            SessionKeys::derive(b"connecT", b"accept", &[&[7u8; 32]]).accept_tag(b"x"),
            base
        );
        assert_ne!(
            SessionKeys::derive(b"connect", b"accepT", &[&[7u8; 32]]).accept_tag(b"x"),
            base
        );
        assert_ne!(
            SessionKeys::derive(b"connect", b"accept", &[&[7u8; 32], &[1u8; 32]]).accept_tag(b"x"),
            base
        );
        assert!(keys().accept_tag_is_valid(b"x", &base));
        assert!(!keys().accept_tag_is_valid(b"y", &base));
    }

    #[test]
    fn both_sides_agree_and_small_order_keys_are_refused() {
        let (mut secrets, prf) = Secrets::new(1, None);
        let a = secrets.ephemeral();
        let b = Keypair::from_secret([5; 32]);
        assert_eq!(a.agree(&b.public_key()), b.agree(&a.public));
        assert_ne!(secrets.ephemeral().public, a.public, "the ratchet moved on");
        assert_ne!(Secrets::new(2, None).0.ephemeral().public, a.public);
        assert_ne!(
            Secrets::new(1, Some(&[1; 32])).0.ephemeral().public,
            a.public
        );
        let (mut again, prf_again) = Secrets::new(1, None);
        assert_eq!(again.ephemeral().public, a.public, "deterministic");
        assert_eq!(prf, prf_again);
        assert_eq!(a.agree(&PublicKey([0; 32])), None);
    }

    /// Every key the list of small-order keys names fails a key exchange (with bit 255 set
    /// too), so refusing them before one changes no outcome; real keys are not on it.
    #[test]
    fn the_listed_small_order_keys_fail_an_exchange_and_real_keys_are_not_listed() {
        let (mut secrets, _) = Secrets::new(3, None);
        let ours = secrets.ephemeral();
        for listed in SMALL_ORDER {
            for top in [0u8, 0x80] {
                let mut key = listed;
                key[31] |= top;
                assert!(is_small_order(&key));
                assert_eq!(ours.agree(&PublicKey(key)), None, "{key:02x?}");
            }
        }
        for i in 0..64u8 {
            let real = Keypair::from_secret([i; 32]).public_key();
            assert!(!is_small_order(&real.0));
            assert!(ours.agree(&real).is_some());
        }
        // Near misses are not on the list.
        let mut two = [0u8; 32];
        two[0] = 2;
        assert!(!is_small_order(&two));
    }
}
