//! Keyed hashing and the endpoint's only source of unpredictable values.
//!
//! Every nonce, connection id, token and secret is the output of a keyed PRF (SipHash-2-4)
//! over a domain and a counter, under a key derived from `Config::seed`: outputs of one use
//! reveal nothing about another's, and nothing about the key. The same seed gives the same
//! values, which the simulator relies on.

use core::hash::{BuildHasher, Hasher};
use siphasher::sip::{SipHasher13, SipHasher24};
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher24x128};

/// A `HashMap` keyed with [`SeededState`]: SipHasher-1-3 under a key from the seed, so a peer
/// cannot pick addresses or ids that collide (hash flooding) without knowing the key.
pub(crate) type HashMap<K, V> = hashbrown::HashMap<K, V, SeededState>;

/// Builds SipHasher-1-3 hashers under a fixed 128-bit key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeededState {
    k0: u64,
    k1: u64,
}

impl SeededState {
    pub(crate) fn new(prf: &Prf) -> Self {
        SeededState {
            k0: prf.u64(Domain::HashKey, 0),
            k1: prf.u64(Domain::HashKey, 1),
        }
    }
}

impl BuildHasher for SeededState {
    type Hasher = SipHasher13;
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// What a PRF output is for. Each use has its own domain, so no two uses ever share an
/// output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Domain {
    /// Keys of the flood-resistant hash maps.
    HashKey = 1,
    /// The cookie MAC key of one rotation epoch.
    CookieKey = 2,
    /// Client nonces.
    Nonce = 3,
    /// Connection ids.
    ConnectionId = 4,
    /// A connection's own key for its path challenge tokens.
    PathKey = 5,
    /// Path challenge tokens.
    PathToken = 6,
    // 7 named refused Connects (retired: keys of small order are refused before any
    // exchange); not to be reused, so no key derived under it comes back.
    /// The key that hides a connection's slot index in the ids it is given.
    SlotKey = 8,
    /// Where a connection leaves a packet number unused (see `SentPackets::skip_if_due`).
    SkippedPacket = 9,
}

/// A keyed pseudo-random function: `SipHash-2-4(key, domain ‖ counter)`.
#[derive(Clone, Copy)]
pub(crate) struct Prf {
    k0: u64,
    k1: u64,
}

impl core::fmt::Debug for Prf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Prf(..)")
    }
}

impl Prf {
    /// The root key from 128 secret bits.
    pub(crate) fn from_key(key: [u8; 16]) -> Self {
        let (k0, k1) = key.split_at(8);
        Prf {
            k0: u64::from_be_bytes(k0.try_into().unwrap_or_default()),
            k1: u64::from_be_bytes(k1.try_into().unwrap_or_default()),
        }
    }

    /// 64 bits for `domain` and `counter`.
    pub(crate) fn u64(&self, domain: Domain, counter: u64) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        h.write_u8(domain as u8);
        h.write(&counter.to_be_bytes());
        h.finish()
    }

    /// A sub-key for `domain` and `counter` (128 bits).
    pub(crate) fn derive(&self, domain: Domain, counter: u64) -> Prf {
        let mut h = SipHasher24x128::new_with_keys(self.k0, self.k1);
        h.write_u8(domain as u8);
        h.write(&counter.to_be_bytes());
        let out = h.finish128();
        Prf {
            k0: out.h1,
            k1: out.h2,
        }
    }

    /// A 128-bit MAC of `parts` under this key (SipHash-1-3-128 is enough for a MAC checked
    /// on every handshake packet; the key itself comes from `derive`).
    /// `SipHash-1-3(key, x)`: a keyed function of one number, fast enough for every packet.
    pub(crate) fn mix(&self, x: u64) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u64(x);
        h.finish()
    }

    pub(crate) fn mac128(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut h = siphasher::sip128::SipHasher13::new_with_keys(self.k0, self.k1);
        for part in parts {
            h.write(part);
        }
        h.finish128().as_bytes()
    }
}

/// Draws successive values of one domain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sequence {
    domain: Domain,
    next: u64,
}

impl Sequence {
    pub(crate) const fn new(domain: Domain) -> Self {
        Sequence { domain, next: 0 }
    }

    pub(crate) fn next(&mut self, prf: &Prf) -> u64 {
        self.next += 1;
        prf.u64(self.domain, self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_seeds_give_unrelated_outputs() {
        let a = Prf::from_key([1; 16]);
        let b = Prf::from_key([2; 16]);
        assert_ne!(a.u64(Domain::Nonce, 1), b.u64(Domain::Nonce, 1));
        assert_ne!(a.u64(Domain::Nonce, 1), a.u64(Domain::ConnectionId, 1));
        assert_ne!(a.u64(Domain::Nonce, 1), a.u64(Domain::Nonce, 2));
        assert_eq!(
            a.u64(Domain::Nonce, 1),
            Prf::from_key([1; 16]).u64(Domain::Nonce, 1)
        );
        // Consecutive outputs are not a fixed stride apart (SplitMix64's were).
        let d1 = a
            .u64(Domain::Nonce, 2)
            .wrapping_sub(a.u64(Domain::Nonce, 1));
        let d2 = a
            .u64(Domain::Nonce, 3)
            .wrapping_sub(a.u64(Domain::Nonce, 2));
        assert_ne!(d1, d2);
    }
}
