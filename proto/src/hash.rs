//! Seeded hashing and randomness: the only "random" inputs the core has, all derived from
//! `Config::seed`, so that the same seed gives the same behaviour.

use core::hash::BuildHasher;
use siphasher::sip::SipHasher13;

/// A `HashMap` keyed with [`SeededState`]: SipHasher-1-3 under a key drawn from the seed, so a
/// peer cannot pick addresses or ids that collide (hash flooding) without knowing the seed.
pub(crate) type HashMap<K, V> = hashbrown::HashMap<K, V, SeededState>;

/// Builds SipHasher-1-3 hashers under a fixed 128-bit key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeededState {
    k0: u64,
    k1: u64,
}

impl SeededState {
    pub(crate) fn new(rng: &mut Rng) -> Self {
        SeededState {
            k0: rng.next_u64(),
            k1: rng.next_u64(),
        }
    }
}

impl BuildHasher for SeededState {
    type Hasher = SipHasher13;
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// SplitMix64: a small, fast generator, deterministic from its seed. Used for nonces,
/// connection ids and keys; it is not the secret itself — the cookie key derived from it is
/// only as unpredictable as the seed the driver supplies.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
