//! The wire format: packets, the 5-byte message header, varints.
//!
//! Everything here is pure: `decode` turns bytes into a borrowed view or a typed
//! [`DecodeError`], `encode` writes into a caller's buffer. Nothing panics on any input.
//! `docs/wire.md` draws every packet byte by byte; `tests/wire_vectors.rs` checks its vectors.
//!
//! Multi-byte integers are big-endian (network order).

use crate::crypto::{Protection, TAG_LEN};
use core::fmt;

/// Protocol version carried in the high nibble of every packet's first byte.
pub const VERSION: u8 = 3;

/// Length of a `Hello` packet. It is padded so that the server's `Challenge` reply is never
/// larger than the request that caused it (no amplification towards unvalidated addresses).
pub const HELLO_LEN: usize = 48;
/// Length of a stateless cookie: issue time (8 bytes) and a 128-bit MAC.
pub const COOKIE_LEN: usize = 24;
/// Length of the `Data` packet header before its acknowledgement block: first byte,
/// connection id (8), packet number (4), ack range count (1).
pub const DATA_HEADER_LEN: usize = 14;
/// Bytes a packet that carries messages gives its acknowledgement at most (the newest
/// ranges that fit; a packet with nothing else to carry may acknowledge more).
pub const ACK_ROOM: usize = 32;
/// Largest `Data` header in a packet that carries messages: the fixed part and [`ACK_ROOM`].
pub const MAX_DATA_HEADER_LEN: usize = DATA_HEADER_LEN + ACK_ROOM;
/// Most ranges one acknowledgement carries.
pub const MAX_ACK_RANGES: usize = 32;
/// Length of a `PathChallenge` or `PathResponse` packet.
pub const PATH_PACKET_LEN: usize = 1 + 8 + 4 + 8;
/// The high bit of a `Data` packet's range-count byte: an acknowledgement is requested.
pub(crate) const PING_BIT: u8 = 0x80;
/// Length of a `Connect`'s token proof.
pub const TOKEN_PROOF_LEN: usize = 16;
/// `Connect`/`Accept` flags: a static key follows the ephemeral one.
const HAS_STATIC_KEY: u8 = 0x01;
/// `Connect` flag: a connect token follows the keys.
const HAS_TOKEN: u8 = 0x02;
/// The next bit of the range-count byte: a repair block follows the acknowledgement.
pub(crate) const REPAIR_BIT: u8 = 0x40;
/// Packets one repair block covers at most (the bits of its mask).
pub const MAX_REPAIR_COVERAGE: usize = 16;
/// Largest value a varint carries (21 bits).
pub const MAX_VARINT: u32 = (1 << 21) - 1;
/// Ack delay on the wire is in units of 2^`ACK_DELAY_EXPONENT` microseconds.
pub const ACK_DELAY_EXPONENT: u32 = 3;
/// Length of the message header without options (the seeds' 5 bytes).
pub const MESSAGE_HEADER_LEN: usize = 5;
/// Largest message header: 5 bytes, redirect target (2) and chunk fields (4).
pub const MAX_MESSAGE_HEADER_LEN: usize = MESSAGE_HEADER_LEN + 2 + 4;
/// Largest length prefix (a varint of a value below 2^21).
pub const MAX_VARINT_LEN: usize = 3;

/// Why bytes could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// The datagram is empty.
    Empty,
    /// The packet's version is not [`VERSION`].
    UnknownVersion(u8),
    /// The packet type is not one this version defines.
    UnknownPacketType(u8),
    /// The bytes end before the structure they describe does.
    Truncated,
    /// Bytes remain after a fixed-size packet, or padding is not zero.
    TrailingBytes,
    /// A length prefix is malformed, not minimal, or larger than what follows.
    BadLength,
    /// A field holds a value the protocol forbids (e.g. chunk index ≥ chunk count).
    BadField,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty datagram"),
            DecodeError::UnknownVersion(v) => {
                write!(
                    f,
                    "protocol version {v} is not supported (this is version {VERSION})"
                )
            }
            DecodeError::UnknownPacketType(t) => write!(f, "unknown packet type {t}"),
            DecodeError::Truncated => f.write_str("packet is truncated"),
            DecodeError::TrailingBytes => f.write_str("unexpected bytes after the packet"),
            DecodeError::BadLength => f.write_str("malformed or oversized length prefix"),
            DecodeError::BadField => f.write_str("a field holds a forbidden value"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Packet type, the low nibble of the first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Client → server: open a handshake.
    Hello = 1,
    /// Server → client: the stateless cookie to echo.
    Challenge = 2,
    /// Client → server: the cookie, channel layout and application data.
    Connect = 3,
    /// Server → client: the connection is open.
    Accept = 4,
    /// Server → client: the connection is refused.
    Reject = 5,
    /// Either way: acknowledgements and messages.
    Data = 6,
    /// Either way: the connection is closed.
    Disconnect = 7,
    /// Either way: prove you receive at the address this came to.
    PathChallenge = 8,
    /// Either way: the answer to a `PathChallenge`, from the address being validated.
    PathResponse = 9,
}

impl PacketType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => PacketType::Hello,
            2 => PacketType::Challenge,
            3 => PacketType::Connect,
            4 => PacketType::Accept,
            5 => PacketType::Reject,
            6 => PacketType::Data,
            7 => PacketType::Disconnect,
            8 => PacketType::PathChallenge,
            9 => PacketType::PathResponse,
            _ => return None,
        })
    }
}

/// Why a server refused a connection, as carried in a `Reject` packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// The server has `max_connections` connections already.
    Full,
    /// The application's accept hook refused, with its own code.
    Refused(u16),
    /// The two sides configure their channels or their MTU differently.
    ChannelMismatch,
    /// The two sides configure packet protection differently.
    ProtectionMismatch,
    /// A connect token was needed and none came, or it failed to decrypt (forged, or
    /// issued under another backend key).
    TokenInvalid,
    /// The connect token has expired.
    TokenExpired,
    /// The connect token was used already.
    TokenUsed,
    /// The connect token does not name this server's address.
    TokenWrongServer,
    /// The `Hello` named another application protocol id (another game, or another version).
    WrongProtocol,
    /// The endpoint takes no connections (`Config::accept_incoming` is off).
    NotAccepting,
    /// Not an answer to a handshake: a short-header packet named a connection id this
    /// endpoint does not know (it restarted, or dropped the connection). The `Reject`'s
    /// nonce field carries that connection id. A hint only: it is unauthenticated, so the
    /// receiver believes it only if its peer then stays silent.
    UnknownConnection,
}

impl RejectCode {
    const ALL: [RejectCode; 11] = [
        RejectCode::Full,
        RejectCode::Refused(0),
        RejectCode::ChannelMismatch,
        RejectCode::ProtectionMismatch,
        RejectCode::TokenInvalid,
        RejectCode::TokenExpired,
        RejectCode::TokenUsed,
        RejectCode::TokenWrongServer,
        RejectCode::WrongProtocol,
        RejectCode::NotAccepting,
        RejectCode::UnknownConnection,
    ];

    fn to_wire(self) -> (u8, u16) {
        match self {
            RejectCode::Full => (1, 0),
            RejectCode::Refused(code) => (2, code),
            RejectCode::ChannelMismatch => (3, 0),
            RejectCode::ProtectionMismatch => (4, 0),
            RejectCode::TokenInvalid => (5, 0),
            RejectCode::TokenExpired => (6, 0),
            RejectCode::TokenUsed => (7, 0),
            RejectCode::TokenWrongServer => (8, 0),
            RejectCode::WrongProtocol => (9, 0),
            RejectCode::NotAccepting => (10, 0),
            RejectCode::UnknownConnection => (11, 0),
        }
    }
    fn from_wire(reason: u8, code: u16) -> Result<Self, DecodeError> {
        if reason == 2 {
            return Ok(RejectCode::Refused(code));
        }
        Self::ALL
            .into_iter()
            .find(|c| c.to_wire() == (reason, code))
            .ok_or(DecodeError::BadField)
    }
}

/// Why a connection was closed, as carried in a `Disconnect` packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// The application closed it, with its own code.
    Application(u16),
    /// The peer broke the protocol (malformed or hostile data).
    ProtocolViolation,
    /// The server closed a connection whose connect token another connection confirmed
    /// first.
    TokenUsed,
    /// As many packets failed to authenticate under the connection's keys as they may
    /// safely see (someone tried to forge them): connect again for fresh keys.
    IntegrityLimit,
}

impl CloseCode {
    fn to_wire(self) -> (u8, u16) {
        match self {
            CloseCode::Application(code) => (1, code),
            CloseCode::ProtocolViolation => (2, 0),
            CloseCode::TokenUsed => (3, 0),
            CloseCode::IntegrityLimit => (4, 0),
        }
    }
    fn from_wire(reason: u8, code: u16) -> Result<Self, DecodeError> {
        match (reason, code) {
            (1, code) => Ok(CloseCode::Application(code)),
            (2, 0) => Ok(CloseCode::ProtocolViolation),
            (3, 0) => Ok(CloseCode::TokenUsed),
            (4, 0) => Ok(CloseCode::IntegrityLimit),
            _ => Err(DecodeError::BadField),
        }
    }
}

/// The stateless cookie a server hands out in a `Challenge`.
pub type Cookie = [u8; COOKIE_LEN];

/// The header of a `Data` packet: who it is for, its number, and what it acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader<'a> {
    /// The connection id the server assigned.
    pub connection_id: u64,
    /// The low 32 bits of this packet's number (the receiver extends it to 64 bits).
    pub packet_number: u32,
    /// The sender asks for an acknowledgement although the packet may carry no message (a
    /// probe or keepalive): the high bit of the range-count byte.
    pub ping: bool,
    /// The acknowledgement it carries, if the sender has received anything.
    pub ack: Option<Ack<'a>>,
    /// Forward error correction for earlier packets, if the sender codes them.
    pub repair: Option<Repair<'a>>,
}

/// A repair block: a combination, over GF(2^8), of the frames of up to eight earlier packets,
/// from which a receiver that lost one of them (and has the others) rebuilds it.
///
/// On the wire, after the acknowledgement block: `distance` (varint: this packet's number
/// minus the newest covered one, at least 1), `mask` (2 bytes: bit `i` covers the packet
/// `i` below the newest covered; bit 0 is set), one varint per covered packet (oldest bit
/// last) giving the length of its frames, then the coded symbol, as long as the longest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Repair<'a> {
    /// This packet's number minus the newest covered packet's.
    pub distance: u32,
    /// Bit `i`: the packet `i` below the newest covered one is covered.
    pub mask: u16,
    lens: &'a [u8],
    /// The coded frames, padded with zeros to the longest.
    pub symbol: &'a [u8],
}

impl fmt::Debug for Repair<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repair")
            .field("distance", &self.distance)
            .field("covered", &self.covered().collect::<alloc::vec::Vec<_>>())
            .field("symbol_len", &self.symbol.len())
            .finish()
    }
}

impl<'a> Repair<'a> {
    /// The covered packets as `(distance below the newest covered, frames length)`.
    pub fn covered(&self) -> impl Iterator<Item = (u32, usize)> + 'a {
        let mut r = Reader { bytes: self.lens };
        let mask = self.mask;
        (0..MAX_REPAIR_COVERAGE as u32)
            .filter(move |i| mask & (1 << i) != 0)
            .map(move |i| (i, decode_varint(&mut r).map_or(0, |v| v as usize)))
    }

    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let distance = decode_varint(r)?;
        let mask = r.u16()?;
        if distance == 0 || mask & 1 == 0 {
            return Err(DecodeError::BadField);
        }
        let start = r.bytes;
        let mut longest = 0;
        for _ in 0..mask.count_ones() {
            longest = longest.max(decode_varint(r)?);
        }
        let lens = &start[..start.len() - r.bytes.len()];
        if longest == 0 {
            return Err(DecodeError::BadField);
        }
        let symbol = r.take(longest as usize)?;
        Ok(Repair {
            distance,
            mask,
            lens,
            symbol,
        })
    }

    fn encoded_len(&self) -> usize {
        varint_len(self.distance) + 2 + self.lens.len() + self.symbol.len()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Option<()> {
        put_varint(w, self.distance)?;
        w.u16(self.mask)?;
        w.put(self.lens)?;
        w.put(self.symbol)
    }
}

/// Writes a repair block: `covered` lists `(distance below the newest covered, length)`, in
/// increasing distance, the first at distance 0; `code` writes the symbol into its
/// `symbol_len` bytes, zeroed, in place. `None` (nothing written) if the block does not fit.
pub(crate) fn encode_repair(
    w: &mut Writer<'_>,
    distance: u32,
    covered: &[(u32, usize)],
    symbol_len: usize,
    code: impl FnOnce(&mut [u8]),
) -> Option<()> {
    let lens = covered
        .iter()
        .map(|&(_, len)| u32::try_from(len).ok().map(varint_len))
        .sum::<Option<usize>>()?;
    if varint_len(distance) + 2 + lens + symbol_len > w.remaining() {
        // Measured first, so a block that does not fit is never half written.
        return None;
    }
    let mask = covered
        .iter()
        .fold(0u16, |m, &(i, _)| m | 1u16.checked_shl(i).unwrap_or(0));
    put_varint(w, distance)?;
    w.u16(mask)?;
    for &(_, len) in covered {
        put_varint(w, u32::try_from(len).ok()?)?;
    }
    code(w.zeroed(symbol_len)?);
    Some(())
}

/// An acknowledgement: the newest packet received, how long ago, and the ranges of packets
/// received below it, newest first.
///
/// On the wire: range count `n` (1 byte, 0 = no acknowledgement), largest (low 32 bits),
/// ack delay (varint, units of 8 µs), first range length (varint: packets below the largest
/// in the first range), then `n - 1` pairs of varints `gap`, `length`: the next range's largest
/// is `gap + 2` below the previous range's smallest, and it covers `length` more packets below.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    /// Low 32 bits of the newest packet number received.
    pub largest: u32,
    /// Time between receiving `largest` and sending this acknowledgement, in microseconds
    /// (a multiple of 8 on the wire).
    pub delay_micros: u64,
    /// Packets below `largest` in the first range.
    pub first_range: u32,
    count: u8,
    /// The encoded gap/length pairs (validated by `decode`).
    rest: &'a [u8],
}

impl fmt::Debug for Ack<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack")
            .field("largest", &self.largest)
            .field("delay_micros", &self.delay_micros)
            .field("ranges", &self.ranges().collect::<alloc::vec::Vec<_>>())
            .finish()
    }
}

impl<'a> Ack<'a> {
    /// The ranges as `(low, high)` distances below `largest`, inclusive, newest first.
    pub fn ranges(&self) -> AckRanges<'a> {
        AckRanges {
            r: Reader { bytes: self.rest },
            next: Some((u64::from(self.first_range), 0)),
        }
    }

    /// Number of ranges.
    pub fn range_count(&self) -> usize {
        usize::from(self.count)
    }

    fn decode(r: &mut Reader<'a>, count: u8) -> Result<Self, DecodeError> {
        let largest = r.u32()?;
        let delay_micros = u64::from(decode_varint(r)?) << ACK_DELAY_EXPONENT;
        let first_range = decode_varint(r)?;
        let start = r.bytes;
        let mut low = u64::from(first_range);
        for _ in 1..count {
            let gap = u64::from(decode_varint(r)?);
            let len = u64::from(decode_varint(r)?);
            low += gap + 2 + len;
        }
        if low > u64::from(u32::MAX) {
            return Err(DecodeError::BadField);
        }
        let rest = &start[..start.len() - r.bytes.len()];
        Ok(Ack {
            largest,
            delay_micros,
            first_range,
            count,
            rest,
        })
    }
}

/// Iterates an acknowledgement's ranges; see [`Ack::ranges`].
#[derive(Clone, Debug)]
pub struct AckRanges<'a> {
    r: Reader<'a>,
    next: Option<(u64, u64)>,
}

impl Iterator for AckRanges<'_> {
    /// `(low, high)`: the range covers packets `largest - low ..= largest - high`.
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let current = self.next.take()?;
        if !self.r.bytes.is_empty() {
            // Validated by `Ack::decode`: these reads succeed.
            if let (Ok(gap), Ok(len)) = (decode_varint(&mut self.r), decode_varint(&mut self.r)) {
                let high = current.0 + u64::from(gap) + 2;
                self.next = Some((high + u64::from(len), high));
            }
        }
        Some(current)
    }
}

/// Writes an acknowledgement block: `largest` and up to [`MAX_ACK_RANGES`] ranges as
/// `(low, high)` packet numbers, newest first, each below the previous one with a gap.
/// `ranges` must start with the range that holds `largest`. Returns the ranges written.
pub(crate) fn encode_ack(
    w: &mut Writer<'_>,
    ping: bool,
    delay_micros: u64,
    ranges: impl Iterator<Item = (u64, u64)>,
    room: usize,
) -> Option<usize> {
    let count_at = w.pos;
    w.u8(0)?;
    // What the acknowledgement may use after the count byte.
    let end = w.pos + room.saturating_sub(1).min(w.remaining());
    let mut count = 0u8;
    let mut previous_low = 0u64;
    for (low, high) in ranges {
        if usize::from(count) == MAX_ACK_RANGES {
            break;
        }
        if count == 0 {
            let delay = u32::try_from(delay_micros >> ACK_DELAY_EXPONENT)
                .unwrap_or(MAX_VARINT)
                .min(MAX_VARINT);
            // A range longer than a varint holds (two million packets without a gap) is
            // acknowledged in part: the rest was acknowledged long ago.
            let first = u32::try_from(high - low).map_or(MAX_VARINT, |v| v.min(MAX_VARINT));
            w.u32(high as u32)?;
            put_varint(w, delay)?;
            put_varint(w, first)?;
            if u64::from(first) < high - low {
                count = 1;
                break;
            }
        } else {
            let gap = previous_low.checked_sub(high)?.checked_sub(2)?;
            let Ok(gap) = u32::try_from(gap) else {
                break;
            };
            // Too long a range is acknowledged in part, as the first is: its top (the
            // packets just before the gap, which the peer may not have heard of yet; a
            // clean run of two million packets becomes this range at its first loss).
            let len = u32::try_from(high - low).map_or(MAX_VARINT, |v| v.min(MAX_VARINT));
            let need = varint_len(gap) + varint_len(len);
            if gap > MAX_VARINT || w.pos + need > end {
                break;
            }
            put_varint(w, gap)?;
            put_varint(w, len)?;
            if u64::from(len) < high - low {
                count += 1;
                break;
            }
        }
        previous_low = low;
        count += 1;
    }
    w.buf[count_at] = count | if ping { PING_BIT } else { 0 };
    debug_assert!(count & REPAIR_BIT == 0);
    Some(usize::from(count))
}

fn put_varint(w: &mut Writer<'_>, v: u32) -> Option<()> {
    let mut prefix = [0u8; MAX_VARINT_LEN];
    let n = encode_varint(v, &mut prefix)?;
    if w.remaining() < n {
        return None;
    }
    // Byte by byte: a slice of a length known only at run time is copied by a call to
    // `memcpy`, some 1% of a simulated game's time for one to three bytes per ack range.
    for &byte in &prefix[..n] {
        w.u8(byte)?;
    }
    Some(())
}

/// A decoded packet, borrowing variable-length parts from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Client → server: open a handshake.
    Hello {
        /// Application protocol id; both sides must agree.
        protocol_id: u32,
        /// The client's random nonce for this attempt.
        client_nonce: u64,
        /// The protection the client requires (a server that differs rejects at once).
        protection: Protection,
    },
    /// Server → client: the cookie the client must echo.
    Challenge {
        /// Echo of the client's nonce.
        client_nonce: u64,
        /// Opaque to the client.
        cookie: Cookie,
    },
    /// Client → server: complete the handshake.
    Connect {
        /// Application protocol id.
        protocol_id: u32,
        /// The client's nonce (the same as in its `Hello`).
        client_nonce: u64,
        /// The cookie from the `Challenge`.
        cookie: Cookie,
        /// The client's channel kinds, a nibble per channel.
        channel_layout: u64,
        /// The client's `Config::mtu`: chunk sizes derive from it, so both sides must agree.
        mtu: u16,
        /// Bytes the client can hold in partly received large messages (its per-connection
        /// reassembly budget); the server never has more outstanding towards it.
        reassembly_budget: u32,
        /// The protection the client requires.
        protection: Protection,
        /// The client's ephemeral X25519 key: present exactly when `protection` is
        /// `Encrypted`.
        ephemeral: Option<[u8; 32]>,
        /// The client's static X25519 key, if it has one (only with protection).
        static_key: Option<[u8; 32]>,
        /// A connect token from the server's backend, if the client has one.
        token: Option<&'a [u8]>,
        /// Application data for the accept hook.
        data: &'a [u8],
        /// With a token: HMAC-SHA256 (first 16 bytes) of everything before it under the
        /// token's client key, proving the sender holds that key (`None` encodes the part it
        /// covers).
        token_proof: Option<[u8; TOKEN_PROOF_LEN]>,
    },
    /// Server → client: accepted.
    Accept {
        /// Echo of the client's nonce.
        client_nonce: u64,
        /// The id both sides put in every later packet.
        connection_id: u64,
        /// The user id the server gives the client.
        user_id: u16,
        /// The server's per-connection reassembly budget (see `Connect`).
        reassembly_budget: u32,
        /// The protection the server uses (the same as the client's, or it would have
        /// rejected).
        protection: Protection,
        /// The server's ephemeral X25519 key: present exactly when protected.
        ephemeral: Option<[u8; 32]>,
        /// The server's static X25519 key, if it has one (only with protection).
        static_key: Option<[u8; 32]>,
        /// The tag proving the server derived the session keys from this transcript:
        /// present exactly when protected (`None` encodes the part the tag covers).
        tag: Option<[u8; TAG_LEN]>,
    },
    /// Server → client: refused.
    Reject {
        /// Echo of the client's nonce.
        client_nonce: u64,
        /// Why.
        code: RejectCode,
    },
    /// Either way: acknowledgements and framed messages.
    Data {
        /// Packet header.
        header: DataHeader<'a>,
        /// The framed messages; iterate them with [`Frames`].
        frames: &'a [u8],
    },
    /// Either way: the connection is closed.
    Disconnect {
        /// The connection being closed.
        connection_id: u64,
        /// The low 32 bits of its packet number (the sender's `Data` numbering).
        packet_number: u32,
        /// Why.
        code: CloseCode,
    },
    /// Either way: sent to a new address a connection's packets came from; only a peer that
    /// receives there can answer it.
    PathChallenge {
        /// The connection.
        connection_id: u64,
        /// The low 32 bits of its packet number (the sender's `Data` numbering).
        packet_number: u32,
        /// Unpredictable; the answer echoes it.
        token: u64,
    },
    /// Either way: the answer to a `PathChallenge`, sent from the address being validated.
    PathResponse {
        /// The connection.
        connection_id: u64,
        /// The low 32 bits of its packet number (the sender's `Data` numbering).
        packet_number: u32,
        /// The challenge's token.
        token: u64,
    },
}

/// A bounds-checked reader over a byte slice. Every read returns `Truncated` rather than
/// panicking when the bytes run out.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn protection(&mut self) -> Result<Protection, DecodeError> {
        Protection::from_wire(self.u8()?).ok_or(DecodeError::BadField)
    }
    fn key_if(&mut self, present: bool) -> Result<Option<[u8; 32]>, DecodeError> {
        if present {
            self.array().map(Some)
        } else {
            Ok(None)
        }
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// A writer into a caller's buffer. Callers size the buffer first (see `encoded_len`), so a
/// short buffer is a bug on our side and reported as `None` rather than a panic.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    /// Writes stop here (at most `buf.len()`).
    end: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        let end = buf.len();
        Writer { buf, pos: 0, end }
    }
    pub(crate) fn len(&self) -> usize {
        self.pos
    }
    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }
    /// Lets at most `n` more bytes be written.
    pub(crate) fn limit(&mut self, n: usize) {
        self.end = self.pos.saturating_add(n).min(self.buf.len());
    }
    pub(crate) fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(bytes.len())?;
        if end > self.end {
            return None;
        }
        self.buf.get_mut(self.pos..end)?.copy_from_slice(bytes);
        self.pos = end;
        Some(())
    }
    fn u8(&mut self, v: u8) -> Option<()> {
        self.put(&[v])
    }
    fn u16(&mut self, v: u16) -> Option<()> {
        self.put(&v.to_be_bytes())
    }
    fn u32(&mut self, v: u32) -> Option<()> {
        self.put(&v.to_be_bytes())
    }
    fn u64(&mut self, v: u64) -> Option<()> {
        self.put(&v.to_be_bytes())
    }
    fn zeros(&mut self, n: usize) -> Option<()> {
        self.zeroed(n).map(|_| ())
    }
    /// The next `n` bytes, zeroed, for the caller to fill in place.
    fn zeroed(&mut self, n: usize) -> Option<&mut [u8]> {
        let end = self.pos.checked_add(n)?;
        if end > self.end {
            return None;
        }
        let out = self.buf.get_mut(self.pos..end)?;
        out.fill(0);
        self.pos = end;
        Some(out)
    }
}

fn first_byte(ty: PacketType) -> u8 {
    (VERSION << 4) | ty as u8
}

impl<'a> Packet<'a> {
    /// Decodes one datagram. Never panics; any malformed input is a [`DecodeError`].
    ///
    /// A `Data` packet's frames are not checked here: iterate them with [`Frames`].
    pub fn decode(datagram: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        let mut r = Reader { bytes: datagram };
        let first = r.u8().map_err(|_| DecodeError::Empty)?;
        if first >> 4 != VERSION {
            return Err(DecodeError::UnknownVersion(first >> 4));
        }
        let ty = PacketType::from_u8(first & 0x0f)
            .ok_or(DecodeError::UnknownPacketType(first & 0x0f))?;
        let packet = match ty {
            PacketType::Hello => {
                let protocol_id = r.u32()?;
                let client_nonce = r.u64()?;
                let protection = r.protection()?;
                let padding = r.take(HELLO_LEN - 14)?;
                if padding.iter().any(|&b| b != 0) {
                    return Err(DecodeError::TrailingBytes);
                }
                Packet::Hello {
                    protocol_id,
                    client_nonce,
                    protection,
                }
            }
            PacketType::Challenge => Packet::Challenge {
                client_nonce: r.u64()?,
                cookie: r.array()?,
            },
            PacketType::Connect => {
                let protocol_id = r.u32()?;
                let client_nonce = r.u64()?;
                let cookie = r.array()?;
                let channel_layout = r.u64()?;
                let mtu = r.u16()?;
                let reassembly_budget = r.u32()?;
                let protection = r.protection()?;
                let flags = r.u8()?;
                let ephemeral = r.key_if(protection == Protection::Encrypted)?;
                let static_key = r.key_if(flags & HAS_STATIC_KEY != 0)?;
                let token = if flags & HAS_TOKEN != 0 {
                    let len = usize::from(r.u16()?);
                    Some(r.take(len).map_err(|_| DecodeError::BadLength)?)
                } else {
                    None
                };
                if flags & !(HAS_STATIC_KEY | HAS_TOKEN) != 0
                    || (static_key.is_some() && ephemeral.is_none())
                {
                    return Err(DecodeError::BadField);
                }
                let len = usize::from(r.u16()?);
                let data = r.take(len).map_err(|_| DecodeError::BadLength)?;
                let token_proof = if token.is_some() {
                    Some(r.array()?)
                } else {
                    None
                };
                Packet::Connect {
                    protocol_id,
                    client_nonce,
                    cookie,
                    channel_layout,
                    mtu,
                    reassembly_budget,
                    protection,
                    ephemeral,
                    static_key,
                    token,
                    data,
                    token_proof,
                }
            }
            PacketType::Accept => {
                let client_nonce = r.u64()?;
                let connection_id = r.u64()?;
                let user_id = r.u16()?;
                let reassembly_budget = r.u32()?;
                let protection = r.protection()?;
                let protected = protection == Protection::Encrypted;
                let ephemeral = r.key_if(protected)?;
                let flags = if protected { r.u8()? } else { 0 };
                if flags & !HAS_STATIC_KEY != 0 {
                    return Err(DecodeError::BadField);
                }
                let static_key = r.key_if(flags & HAS_STATIC_KEY != 0)?;
                let tag = if protected { Some(r.array()?) } else { None };
                Packet::Accept {
                    client_nonce,
                    connection_id,
                    user_id,
                    reassembly_budget,
                    protection,
                    ephemeral,
                    static_key,
                    tag,
                }
            }
            PacketType::Reject => {
                let client_nonce = r.u64()?;
                let reason = r.u8()?;
                let code = RejectCode::from_wire(reason, r.u16()?)?;
                Packet::Reject { client_nonce, code }
            }
            PacketType::Data => {
                let (header, frames) = DataHeader::decode(&mut r)?;
                Packet::Data { header, frames }
            }
            PacketType::PathChallenge => Packet::PathChallenge {
                connection_id: r.u64()?,
                packet_number: r.u32()?,
                token: r.u64()?,
            },
            PacketType::PathResponse => Packet::PathResponse {
                connection_id: r.u64()?,
                packet_number: r.u32()?,
                token: r.u64()?,
            },
            PacketType::Disconnect => {
                let connection_id = r.u64()?;
                let packet_number = r.u32()?;
                let reason = r.u8()?;
                let code = CloseCode::from_wire(reason, r.u16()?)?;
                Packet::Disconnect {
                    connection_id,
                    packet_number,
                    code,
                }
            }
        };
        r.finish()?;
        Ok(packet)
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Packet::Hello { .. } => HELLO_LEN,
            Packet::Challenge { .. } => 1 + 8 + COOKIE_LEN,
            Packet::Connect {
                ephemeral,
                static_key,
                token,
                data,
                token_proof,
                ..
            } => {
                1 + 4
                    + 8
                    + COOKIE_LEN
                    + 8
                    + 2
                    + 4
                    + 2
                    + ephemeral.map_or(0, |k| k.len())
                    + static_key.map_or(0, |k| k.len())
                    + token.map_or(0, |t| 2 + t.len())
                    + 2
                    + data.len()
                    + token_proof.map_or(0, |p| p.len())
            }
            Packet::Accept {
                ephemeral,
                static_key,
                tag,
                ..
            } => {
                1 + 8
                    + 8
                    + 2
                    + 4
                    + 1
                    + ephemeral.map_or(0, |k| k.len() + 1)
                    + static_key.map_or(0, |k| k.len())
                    + tag.map_or(0, |t| t.len())
            }
            Packet::Reject { .. } => 1 + 8 + 1 + 2,
            Packet::Data { header, frames } => header.encoded_len() + frames.len(),
            Packet::Disconnect { .. } => 1 + 8 + 4 + 1 + 2,
            Packet::PathChallenge { .. } | Packet::PathResponse { .. } => PATH_PACKET_LEN,
        }
    }

    /// Encodes into `buf`, returning the length written, or `None` if `buf` is too small
    /// (or `Connect` data exceeds 65,535 bytes).
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(buf);
        match *self {
            Packet::Hello {
                protocol_id,
                client_nonce,
                protection,
            } => {
                w.u8(first_byte(PacketType::Hello))?;
                w.u32(protocol_id)?;
                w.u64(client_nonce)?;
                w.u8(protection.to_wire())?;
                w.zeros(HELLO_LEN - 14)?;
            }
            Packet::Challenge {
                client_nonce,
                cookie,
            } => {
                w.u8(first_byte(PacketType::Challenge))?;
                w.u64(client_nonce)?;
                w.put(&cookie)?;
            }
            Packet::Connect {
                protocol_id,
                client_nonce,
                cookie,
                channel_layout,
                mtu,
                reassembly_budget,
                protection,
                ephemeral,
                static_key,
                token,
                data,
                token_proof,
            } => {
                w.u8(first_byte(PacketType::Connect))?;
                w.u32(protocol_id)?;
                w.u64(client_nonce)?;
                w.put(&cookie)?;
                w.u64(channel_layout)?;
                w.u16(mtu)?;
                w.u32(reassembly_budget)?;
                w.u8(protection.to_wire())?;
                let flags = if static_key.is_some() {
                    HAS_STATIC_KEY
                } else {
                    0
                } | if token.is_some() { HAS_TOKEN } else { 0 };
                w.u8(flags)?;
                w.put(ephemeral.as_ref().map_or(&[][..], |k| k))?;
                w.put(static_key.as_ref().map_or(&[][..], |k| k))?;
                if let Some(token) = token {
                    w.u16(u16::try_from(token.len()).ok()?)?;
                    w.put(token)?;
                }
                w.u16(u16::try_from(data.len()).ok()?)?;
                w.put(data)?;
                w.put(token_proof.as_ref().map_or(&[][..], |p| p))?;
            }
            Packet::Accept {
                client_nonce,
                connection_id,
                user_id,
                reassembly_budget,
                protection,
                ephemeral,
                static_key,
                tag,
            } => {
                w.u8(first_byte(PacketType::Accept))?;
                w.u64(client_nonce)?;
                w.u64(connection_id)?;
                w.u16(user_id)?;
                w.u32(reassembly_budget)?;
                w.u8(protection.to_wire())?;
                if let Some(ephemeral) = ephemeral {
                    w.put(&ephemeral)?;
                    w.u8(if static_key.is_some() {
                        HAS_STATIC_KEY
                    } else {
                        0
                    })?;
                    w.put(static_key.as_ref().map_or(&[][..], |k| k))?;
                }
                w.put(tag.as_ref().map_or(&[][..], |t| t))?;
            }
            Packet::Reject { client_nonce, code } => {
                let (reason, code) = code.to_wire();
                w.u8(first_byte(PacketType::Reject))?;
                w.u64(client_nonce)?;
                w.u8(reason)?;
                w.u16(code)?;
            }
            Packet::Data { header, frames } => {
                header.encode(&mut w)?;
                w.put(frames)?;
            }
            Packet::Disconnect {
                connection_id,
                packet_number,
                code,
            } => {
                let (reason, code) = code.to_wire();
                w.u8(first_byte(PacketType::Disconnect))?;
                w.u64(connection_id)?;
                w.u32(packet_number)?;
                w.u8(reason)?;
                w.u16(code)?;
            }
            Packet::PathChallenge {
                connection_id,
                packet_number,
                token,
            } => {
                w.u8(first_byte(PacketType::PathChallenge))?;
                w.u64(connection_id)?;
                w.u32(packet_number)?;
                w.u64(token)?;
            }
            Packet::PathResponse {
                connection_id,
                packet_number,
                token,
            } => {
                w.u8(first_byte(PacketType::PathResponse))?;
                w.u64(connection_id)?;
                w.u32(packet_number)?;
                w.u64(token)?;
            }
        }
        Some(w.len())
    }
}

/// The connection id of a packet sent after the handshake (`Data`, `Disconnect`,
/// `PathChallenge`, `PathResponse`), read from its clear header; `None` for any other packet.
pub(crate) fn short_header_connection(datagram: &[u8]) -> Option<u64> {
    let (&first, rest) = datagram.split_first()?;
    if first >> 4 != VERSION {
        return None;
    }
    match PacketType::from_u8(first & 0x0f)? {
        PacketType::Data
        | PacketType::Disconnect
        | PacketType::PathChallenge
        | PacketType::PathResponse => {}
        _ => return None,
    }
    Some(u64::from_be_bytes(*rest.first_chunk::<8>()?))
}

/// A `Data` packet's header and frames, as [`Packet::decode`] gives them, or `None` if
/// `datagram` is not a `Data` packet. The path every packet after the handshake takes: it
/// skips the other types' decoding and the move of a whole [`Packet`].
pub(crate) fn decode_data(datagram: &[u8]) -> Option<Result<(DataHeader<'_>, &[u8]), DecodeError>> {
    let (&first, rest) = datagram.split_first()?;
    if first != first_byte(PacketType::Data) {
        return None;
    }
    Some(DataHeader::decode(&mut Reader { bytes: rest }))
}

impl<'a> DataHeader<'a> {
    /// The header after the type byte, and the frames after it (the rest of the packet).
    fn decode(r: &mut Reader<'a>) -> Result<(DataHeader<'a>, &'a [u8]), DecodeError> {
        let connection_id = r.u64()?;
        let packet_number = r.u32()?;
        let count = r.u8()?;
        let ping = count & PING_BIT != 0;
        let ack = match count & !(PING_BIT | REPAIR_BIT) {
            0 => None,
            n if usize::from(n) > MAX_ACK_RANGES => return Err(DecodeError::BadField),
            n => Some(Ack::decode(r, n)?),
        };
        let repair = if count & REPAIR_BIT != 0 {
            Some(Repair::decode(r)?)
        } else {
            None
        };
        let header = DataHeader {
            connection_id,
            packet_number,
            ping,
            ack,
            repair,
        };
        Ok((header, core::mem::take(&mut r.bytes)))
    }
}

/// The low 32 bits of the packet number in a clear header `short_header_connection` read.
pub(crate) fn short_header_pn(datagram: &[u8]) -> u32 {
    datagram
        .get(9..13)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// Writes the fixed part of a `Data` header (everything before the acknowledgement block).
pub(crate) fn encode_data_prefix(
    w: &mut Writer<'_>,
    connection_id: u64,
    packet_number: u32,
) -> Option<()> {
    w.u8(first_byte(PacketType::Data))?;
    w.u64(connection_id)?;
    w.u32(packet_number)
}

impl DataHeader<'_> {
    /// Encoded length of the header, acknowledgement included.
    pub fn encoded_len(&self) -> usize {
        DATA_HEADER_LEN
            + self.ack.map_or(0, |a| {
                4 + varint_len((a.delay_micros >> ACK_DELAY_EXPONENT) as u32)
                    + varint_len(a.first_range)
                    + a.rest.len()
            })
            + self.repair.map_or(0, |r| r.encoded_len())
    }

    fn encode(&self, w: &mut Writer<'_>) -> Option<()> {
        encode_data_prefix(w, self.connection_id, self.packet_number)?;
        let flags = if self.ping { PING_BIT } else { 0 }
            | if self.repair.is_some() { REPAIR_BIT } else { 0 };
        match self.ack {
            None => w.u8(flags)?,
            Some(ack) => {
                w.u8(ack.count | flags)?;
                w.u32(ack.largest)?;
                let delay = u32::try_from(ack.delay_micros >> ACK_DELAY_EXPONENT).ok()?;
                put_varint(w, delay)?;
                put_varint(w, ack.first_range)?;
                w.put(ack.rest)?;
            }
        }
        match self.repair {
            Some(repair) => repair.encode(w),
            None => Some(()),
        }
    }
}

impl<'a> Ack<'a> {
    /// Builds an acknowledgement from `(low, high)` distances below `largest`, newest first
    /// (for tests and docs; the connection encodes straight from its receive state).
    /// `buf` holds the encoded ranges; returns `None` if they do not fit or are out of order.
    pub fn build(
        largest: u32,
        delay_micros: u64,
        ranges: &[(u64, u64)],
        buf: &'a mut [u8],
    ) -> Option<Ack<'a>> {
        let (&(first_low, first_high), rest) = ranges.split_first()?;
        if first_high != 0 || ranges.len() > MAX_ACK_RANGES {
            return None;
        }
        let mut w = Writer::new(buf);
        let mut previous_low = first_low;
        for &(low, high) in rest {
            let gap = high.checked_sub(previous_low)?.checked_sub(2)?;
            put_varint(&mut w, u32::try_from(gap).ok()?)?;
            put_varint(&mut w, u32::try_from(low.checked_sub(high)?).ok()?)?;
            previous_low = low;
        }
        let len = w.len();
        Some(Ack {
            largest,
            delay_micros: delay_micros >> ACK_DELAY_EXPONENT << ACK_DELAY_EXPONENT,
            first_range: u32::try_from(first_low).ok()?,
            count: u8::try_from(ranges.len()).ok()?,
            rest: &buf[..len],
        })
    }
}

/// Message or Response: the seeds' send-type bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SendType {
    /// A message (or, with the `reliable` bit, a request awaiting a response).
    Message,
    /// A response to a request; its sequence is the request's.
    Response,
}

/// Position of a chunk within a message split across datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkInfo {
    /// Index of this chunk, `0..count`.
    pub index: u16,
    /// Number of chunks in the message, at least 2.
    pub count: u16,
}

/// The per-message header: the seeds' 5 bytes plus the optional redirect target and chunk info.
///
/// ```text
/// byte 0   : channel:4 | send_type:1 | reliable:1 | redirect:1 | chunk:1
/// bytes 1-2: owner (u16)        bytes 3-4: sequence (u16)
/// [2 bytes: target user id, when redirect]   [2+2 bytes: chunk index, count, when chunk]
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageHeader {
    /// Channel, 0..16.
    pub channel: u8,
    /// Message or Response.
    pub send_type: SendType,
    /// On a Message: the sender awaits a Response (the seeds' ReliableMessage). Always false
    /// on a Response.
    pub reliable: bool,
    /// The user id of the original sender.
    pub owner: u16,
    /// Per-channel message sequence (a Response carries its request's).
    pub sequence: u16,
    /// For relaying through a hub: the user id this message is for.
    pub redirect: Option<u16>,
    /// Set when the message is one chunk of a larger one.
    pub chunk: Option<ChunkInfo>,
}

impl MessageHeader {
    /// Encoded length of this header (without the length prefix).
    pub fn encoded_len(&self) -> usize {
        MESSAGE_HEADER_LEN
            + if self.redirect.is_some() { 2 } else { 0 }
            + if self.chunk.is_some() { 4 } else { 0 }
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Option<()> {
        let flags = (self.channel << 4)
            | (u8::from(self.send_type == SendType::Response) << 3)
            | (u8::from(self.reliable) << 2)
            | (u8::from(self.redirect.is_some()) << 1)
            | u8::from(self.chunk.is_some());
        w.u8(flags)?;
        w.u16(self.owner)?;
        w.u16(self.sequence)?;
        if let Some(target) = self.redirect {
            w.u16(target)?;
        }
        if let Some(chunk) = self.chunk {
            w.u16(chunk.index)?;
            w.u16(chunk.count)?;
        }
        Some(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        let send_type = if flags & 0x08 != 0 {
            SendType::Response
        } else {
            SendType::Message
        };
        let reliable = flags & 0x04 != 0;
        if reliable && send_type == SendType::Response {
            return Err(DecodeError::BadField);
        }
        let owner = r.u16()?;
        let sequence = r.u16()?;
        let redirect = if flags & 0x02 != 0 {
            Some(r.u16()?)
        } else {
            None
        };
        let chunk = if flags & 0x01 != 0 {
            let index = r.u16()?;
            let count = r.u16()?;
            if count < 2 || index >= count {
                return Err(DecodeError::BadField);
            }
            Some(ChunkInfo { index, count })
        } else {
            None
        };
        Ok(MessageHeader {
            channel: flags >> 4,
            send_type,
            reliable,
            owner,
            sequence,
            redirect,
            chunk,
        })
    }
}

/// One message inside a `Data` packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Its header.
    pub header: MessageHeader,
    /// Its payload.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes this frame takes in a packet: header, length prefix, payload.
    pub fn encoded_len(&self) -> usize {
        frame_len(&self.header, self.payload.len())
    }

    /// Appends this frame to a packet being written.
    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Option<()> {
        self.header.encode(w)?;
        put_varint(w, u32::try_from(self.payload.len()).ok()?)?;
        w.put(self.payload)
    }

    /// Encodes this frame alone into `buf` (for tests and docs), returning its length.
    pub fn encode_to(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(buf);
        self.encode(&mut w)?;
        Some(w.len())
    }
}

/// Bytes a frame with this header and payload length takes in a packet.
pub fn frame_len(header: &MessageHeader, payload_len: usize) -> usize {
    header.encoded_len() + varint_len(payload_len as u32) + payload_len
}

/// Iterates the frames of a `Data` packet. After the first error it yields nothing more.
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    r: Reader<'a>,
}

impl Clone for Reader<'_> {
    fn clone(&self) -> Self {
        Reader { bytes: self.bytes }
    }
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reader({} bytes left)", self.bytes.len())
    }
}

impl<'a> Frames<'a> {
    /// Frames in `bytes` (the `frames` of a [`Packet::Data`]).
    pub fn new(bytes: &'a [u8]) -> Self {
        Frames {
            r: Reader { bytes },
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.r.bytes.is_empty() {
            return None;
        }
        let result = MessageHeader::decode(&mut self.r).and_then(|header| {
            let len = decode_varint(&mut self.r)? as usize;
            let payload = self.r.take(len).map_err(|_| DecodeError::BadLength)?;
            Ok(Frame { header, payload })
        });
        if result.is_err() {
            self.r.bytes = &[];
        }
        Some(result)
    }
}

/// Bytes the varint encoding of `v` takes (1 to 3; values must be below 2^21).
pub fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        _ => 3,
    }
}

/// Encodes `v` as a little-endian base-128 varint (7 bits a byte, high bit = more follows).
/// Returns `None` if `v ≥ 2^21`, which no length in a datagram reaches.
pub fn encode_varint(v: u32, out: &mut [u8; MAX_VARINT_LEN]) -> Option<usize> {
    if v >= 1 << 21 {
        return None;
    }
    let n = varint_len(v);
    for (i, byte) in out.iter_mut().enumerate().take(n) {
        let more = if i + 1 < n { 0x80 } else { 0 };
        *byte = ((v >> (7 * i)) & 0x7f) as u8 | more;
    }
    Some(n)
}

fn decode_varint(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let mut value = 0u32;
    for i in 0..MAX_VARINT_LEN {
        let byte = r.u8()?;
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // Reject non-minimal encodings so that decode → encode is the identity.
            if i > 0 && byte == 0 {
                return Err(DecodeError::BadLength);
            }
            return Ok(value);
        }
    }
    Err(DecodeError::BadLength)
}

/// A helper for tests and fuzzing: checks that decoding `datagram` and encoding the result
/// gives the same bytes back, frames included.
pub fn roundtrip_is_identity(datagram: &[u8]) -> bool {
    let Ok(packet) = Packet::decode(datagram) else {
        return true;
    };
    let mut buf = [0u8; 65_536 + 64];
    let Some(len) = packet.encode(&mut buf) else {
        return false;
    };
    if buf[..len] != *datagram {
        return false;
    }
    if let Packet::Data { frames, .. } = packet {
        let mut out = [0u8; 65_536];
        let mut w = Writer::new(&mut out);
        for frame in Frames::new(frames) {
            let Ok(frame) = frame else { return true };
            if frame.encode(&mut w).is_none() {
                return false;
            }
        }
        let len = w.len();
        return out[..len] == *frames;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_roundtrips_at_every_width_boundary() {
        for v in [0, 1, 0x7f, 0x80, 0x3fff, 0x4000, (1 << 21) - 1] {
            let mut buf = [0u8; MAX_VARINT_LEN];
            let n = encode_varint(v, &mut buf).expect("in range");
            assert_eq!(n, varint_len(v));
            let mut r = Reader { bytes: &buf[..n] };
            assert_eq!(decode_varint(&mut r), Ok(v));
        }
        assert_eq!(encode_varint(1 << 21, &mut [0; 3]), None);
    }

    #[test]
    fn varint_rejects_non_minimal_and_overlong() {
        let mut r = Reader {
            bytes: &[0x80, 0x00],
        };
        assert_eq!(decode_varint(&mut r), Err(DecodeError::BadLength));
        let mut r = Reader {
            bytes: &[0xff, 0xff, 0xff, 0x01],
        };
        assert_eq!(decode_varint(&mut r), Err(DecodeError::BadLength));
    }

    #[test]
    fn an_ack_range_longer_than_a_varint_is_acknowledged_in_part() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let ranges = [(5u64, 3_000_000u64), (0, 2)];
        let n = encode_ack(&mut w, false, 0, ranges.into_iter(), 64).expect("encodes");
        assert_eq!(n, 1);
        let len = w.len();
        let mut r = Reader {
            bytes: &buf[1..len],
        };
        let ack = Ack::decode(&mut r, 1).expect("decodes");
        assert_eq!(ack.first_range, MAX_VARINT);
    }

    /// A long clean run that becomes a later range at the first loss is acknowledged in part
    /// too: it once ended the acknowledgement, so the packets just before the gap were never
    /// reported and the sender declared them lost (after two million packets without loss:
    /// 35 minutes at 1,000 a second, a day at 20).
    #[test]
    fn a_later_ack_range_longer_than_a_varint_is_acknowledged_in_part() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let ranges = [(2_400_002u64, 2_400_010u64), (0, 2_400_000)];
        let n = encode_ack(&mut w, false, 0, ranges.into_iter(), 64).expect("encodes");
        assert_eq!(n, 2);
        let len = w.len();
        let mut r = Reader {
            bytes: &buf[1..len],
        };
        let ack = Ack::decode(&mut r, 2).expect("decodes");
        let largest = u64::from(ack.largest);
        let acked: alloc::vec::Vec<(u64, u64)> = ack
            .ranges()
            .map(|(low, high)| (largest - low, largest - high))
            .collect();
        assert_eq!(
            acked,
            [
                (2_400_002, 2_400_010),
                (2_400_000 - u64::from(MAX_VARINT), 2_400_000)
            ]
        );
    }

    proptest::proptest! {
        /// The `Data` decoder of the path after the handshake reads exactly what the general
        /// decoder does (the same header and frames, the same error) and nothing else.
        #[test]
        fn the_data_decoder_agrees_with_the_general_one(
            first in proptest::prop_oneof![
                proptest::strategy::Just(first_byte(PacketType::Data)),
                proptest::num::u8::ANY,
            ],
            count in proptest::prop_oneof![0u8..4, proptest::num::u8::ANY],
            head in proptest::collection::vec(proptest::num::u8::ANY, 0..13),
            tail in proptest::collection::vec(
                proptest::prop_oneof![0u8..4, proptest::num::u8::ANY],
                0..64,
            ),
        ) {
            let mut datagram = alloc::vec![first];
            datagram.extend_from_slice(&head);
            if head.len() == 12 {
                datagram.push(count);
            }
            datagram.extend_from_slice(&tail);
            let general = match Packet::decode(&datagram) {
                Ok(Packet::Data { header, frames }) => Some(Ok((header, frames))),
                Err(e) if first == first_byte(PacketType::Data) => Some(Err(e)),
                _ => None,
            };
            proptest::prop_assert_eq!(decode_data(&datagram), general);
        }
    }

    #[test]
    fn response_with_reliable_bit_is_rejected() {
        let bytes = [0x0c, 0, 0, 0, 0, 0];
        assert_eq!(Frames::new(&bytes).next(), Some(Err(DecodeError::BadField)));
    }
}
