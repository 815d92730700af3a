//! The benchmark's message: who sent it, its sequence number, when, and a pattern of bytes
//! derived from the first two, so the receiver can check every byte.

/// Size of every benchmark message, in bytes.
pub const MESSAGE_SIZE: usize = 32;

/// Fills `buf` (32 bytes) with the message `seq` of `sender`, sent at `sent_us`.
pub fn encode(buf: &mut [u8; MESSAGE_SIZE], sender: u32, seq: u32, sent_us: u64) {
    buf[0..4].copy_from_slice(&sender.to_le_bytes());
    buf[4..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&sent_us.to_le_bytes());
    for (k, b) in buf[16..].iter_mut().enumerate() {
        *b = pattern(sender, seq, k);
    }
}

fn pattern(sender: u32, seq: u32, k: usize) -> u8 {
    (sender.wrapping_mul(31) ^ seq.wrapping_mul(7) ^ (k as u32).wrapping_mul(13)) as u8
}

/// A message that passed the byte check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Who sent it.
    pub sender: u32,
    /// Its sequence number.
    pub seq: u32,
    /// When it was sent (microseconds of the scenario's clock).
    pub sent_us: u64,
}

/// Checks length and pattern; the caller checks sender and order.
pub fn decode(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() != MESSAGE_SIZE {
        return Err(format!(
            "message of {} bytes, expected {MESSAGE_SIZE}",
            bytes.len()
        ));
    }
    let word = |r: std::ops::Range<usize>| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&bytes[r]);
        u32::from_le_bytes(a)
    };
    let sender = word(0..4);
    let seq = word(4..8);
    let mut t = [0u8; 8];
    t.copy_from_slice(&bytes[8..16]);
    for (k, &b) in bytes[16..].iter().enumerate() {
        if b != pattern(sender, seq, k) {
            return Err(format!(
                "message {seq} of {sender}: byte {} corrupted",
                16 + k
            ));
        }
    }
    Ok(Header {
        sender,
        seq,
        sent_us: u64::from_le_bytes(t),
    })
}
