//! LAN discovery's wire format: a seeker's request and a responder's answer.
//!
//! Discovery runs beside Shoal, not inside a connection: a seeker broadcasts (IPv4) or
//! multicasts (IPv6, [`MULTICAST_V6`]) a [`Request`] to a well-known port, and every responder
//! listening there answers the request's source by unicast with a [`Response`]: the port its
//! Shoal endpoint listens on and opaque application data (game name, player count, version).
//! This module only encodes and decodes; `shoal-std` owns the sockets.
//!
//! Both start with [`MAGIC`], whose first byte `0xF5` has the high nibble 15: a Shoal packet's
//! first byte carries the wire version (3) there, so no Shoal packet is mistaken for discovery
//! and the other way round. Decoding never panics and returns a [`DiscoveryError`].
//!
//! # Amplification
//!
//! A responder answers whatever address a request claims to come from, so requests are padded
//! to [`REQUEST_LEN`] bytes and a response holds at most [`MAX_APP_DATA`] bytes of data: a
//! response is never more than [`AMPLIFICATION_LIMIT`] times the request that caused it
//! (checked at compile time). The driver also rate-limits answers per source.
//!
//! ```
//! use shoal_proto::discovery::{Request, Response, REQUEST_LEN};
//!
//! let mut buf = [0u8; REQUEST_LEN];
//! let len = Request { protocol_id: 7, nonce: 42, query: b"" }.encode(&mut buf).unwrap();
//! let request = Request::decode(&buf[..len]).unwrap();
//!
//! let answer = Response { protocol_id: 7, nonce: request.nonce, port: 5000, data: b"chess v1" };
//! let mut out = [0u8; 64];
//! let len = answer.encode(&mut out).unwrap();
//! assert_eq!(Response::decode(&out[..len]), Ok(answer));
//! ```

use core::fmt;
use core::net::Ipv6Addr;

/// First four bytes of every discovery datagram: `0xF5` then `"SHD"`.
pub const MAGIC: [u8; 4] = [0xF5, b'S', b'H', b'D'];
/// Discovery format version, the high nibble of the byte after [`MAGIC`].
pub const VERSION: u8 = 1;
/// Kind nibble of a request.
const KIND_REQUEST: u8 = 1;
/// Kind nibble of a response.
const KIND_RESPONSE: u8 = 2;
/// Every request is exactly this long (zero-padded), so it costs a spoofer as much as the
/// answer it provokes, within [`AMPLIFICATION_LIMIT`].
pub const REQUEST_LEN: usize = 200;
/// Bytes before a request's query: magic, kind, protocol id, nonce, query length.
pub const REQUEST_HEADER_LEN: usize = 4 + 1 + 4 + 8 + 2;
/// Longest query a request carries.
pub const MAX_QUERY_LEN: usize = 128;
/// Bytes before a response's data: magic, kind, protocol id, nonce, port, data length.
pub const RESPONSE_HEADER_LEN: usize = 4 + 1 + 4 + 8 + 2 + 2;
/// Longest application data a response carries.
pub const MAX_APP_DATA: usize = 512;
/// Longest response.
pub const MAX_RESPONSE_LEN: usize = RESPONSE_HEADER_LEN + MAX_APP_DATA;
/// A response is at most this many times the size of the request it answers.
pub const AMPLIFICATION_LIMIT: usize = 3;
/// Default discovery port (unassigned by IANA; pick your own per application if you like).
pub const DEFAULT_PORT: u16 = 47_777;
/// IPv6 group requests go to: `ff12::5348:4f4c`, link-local scope (`2`) with the transient
/// flag (`1`) set, since it is not IANA-assigned; the low bits spell "SHOL".
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff12, 0, 0, 0, 0, 0, 0x5348, 0x4f4c);

const _: () = assert!(REQUEST_HEADER_LEN + MAX_QUERY_LEN <= REQUEST_LEN);
const _: () = assert!(MAX_RESPONSE_LEN <= AMPLIFICATION_LIMIT * REQUEST_LEN);

/// Why a discovery datagram could not be decoded or encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiscoveryError {
    /// The bytes end before the structure they describe does.
    Truncated,
    /// The datagram does not start with [`MAGIC`] (e.g. it is a Shoal packet).
    NotDiscovery,
    /// The format version is not [`VERSION`].
    UnknownVersion(u8),
    /// A request where a response was expected or the other way round, or an unknown kind.
    WrongKind(u8),
    /// Bytes after the structure, or non-zero padding.
    TrailingBytes,
    /// A query or data length over its limit ([`MAX_QUERY_LEN`], [`MAX_APP_DATA`]).
    TooLong,
    /// A field holds a forbidden value (a response advertising port 0).
    BadField,
    /// The encode buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::Truncated => f.write_str("discovery datagram is truncated"),
            DiscoveryError::NotDiscovery => f.write_str("not a discovery datagram"),
            DiscoveryError::UnknownVersion(v) => write!(
                f,
                "discovery version {v} is not supported (this is version {VERSION})"
            ),
            DiscoveryError::WrongKind(k) => write!(f, "unexpected discovery datagram kind {k}"),
            DiscoveryError::TrailingBytes => {
                f.write_str("unexpected bytes after the discovery datagram")
            }
            DiscoveryError::TooLong => f.write_str("query or app data over its limit"),
            DiscoveryError::BadField => f.write_str("a field holds a forbidden value"),
            DiscoveryError::BufferTooSmall => f.write_str("buffer too small to encode into"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DiscoveryError {}

/// Whether `datagram` starts with [`MAGIC`], i.e. is meant for discovery and not for Shoal.
pub fn is_discovery(datagram: &[u8]) -> bool {
    datagram.starts_with(&MAGIC)
}

/// A seeker's question: "who on this network speaks `protocol_id`?"
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The application's protocol id (`Config::protocol_id`); others do not answer.
    pub protocol_id: u32,
    /// Chosen by the seeker, unpredictable; answers must echo it.
    pub nonce: u64,
    /// Optional application bytes for the responder, at most [`MAX_QUERY_LEN`].
    pub query: &'a [u8],
}

/// A responder's answer, sent only to the request's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The responder's protocol id (equal to the request's).
    pub protocol_id: u32,
    /// The request's nonce, echoed.
    pub nonce: u64,
    /// The UDP port the responder's Shoal endpoint listens on (never 0).
    pub port: u16,
    /// Application data, at most [`MAX_APP_DATA`] bytes.
    pub data: &'a [u8],
}

impl<'a> Request<'a> {
    /// Writes the request, padded to [`REQUEST_LEN`], into `buf`; returns its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, DiscoveryError> {
        if self.query.len() > MAX_QUERY_LEN {
            return Err(DiscoveryError::TooLong);
        }
        let out = buf
            .get_mut(..REQUEST_LEN)
            .ok_or(DiscoveryError::BufferTooSmall)?;
        out.fill(0);
        let mut w = Writer { buf: out, pos: 0 };
        w.put(&MAGIC);
        w.put(&[(VERSION << 4) | KIND_REQUEST]);
        w.put(&self.protocol_id.to_be_bytes());
        w.put(&self.nonce.to_be_bytes());
        // Fits: checked against MAX_QUERY_LEN above.
        w.put(&(self.query.len() as u16).to_be_bytes());
        w.put(self.query);
        Ok(REQUEST_LEN)
    }

    /// Reads a request; anything but exactly one well-formed request is an error.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DiscoveryError> {
        let mut r = Reader::start(bytes, KIND_REQUEST)?;
        let protocol_id = r.u32()?;
        let nonce = r.u64()?;
        let len = usize::from(r.u16()?);
        if len > MAX_QUERY_LEN {
            return Err(DiscoveryError::TooLong);
        }
        let query = r.take(len)?;
        if bytes.len() < REQUEST_LEN {
            return Err(DiscoveryError::Truncated);
        }
        let padding = r.rest();
        if bytes.len() > REQUEST_LEN || padding.iter().any(|&b| b != 0) {
            return Err(DiscoveryError::TrailingBytes);
        }
        Ok(Request {
            protocol_id,
            nonce,
            query,
        })
    }
}

impl<'a> Response<'a> {
    /// Length of the encoded response.
    pub fn encoded_len(&self) -> usize {
        RESPONSE_HEADER_LEN + self.data.len()
    }

    /// Writes the response into `buf`; returns its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, DiscoveryError> {
        if self.data.len() > MAX_APP_DATA {
            return Err(DiscoveryError::TooLong);
        }
        if self.port == 0 {
            return Err(DiscoveryError::BadField);
        }
        let len = self.encoded_len();
        let out = buf.get_mut(..len).ok_or(DiscoveryError::BufferTooSmall)?;
        let mut w = Writer { buf: out, pos: 0 };
        w.put(&MAGIC);
        w.put(&[(VERSION << 4) | KIND_RESPONSE]);
        w.put(&self.protocol_id.to_be_bytes());
        w.put(&self.nonce.to_be_bytes());
        w.put(&self.port.to_be_bytes());
        // Fits: checked against MAX_APP_DATA above.
        w.put(&(self.data.len() as u16).to_be_bytes());
        w.put(self.data);
        Ok(len)
    }

    /// Reads a response; anything but exactly one well-formed response is an error.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DiscoveryError> {
        let mut r = Reader::start(bytes, KIND_RESPONSE)?;
        let protocol_id = r.u32()?;
        let nonce = r.u64()?;
        let port = r.u16()?;
        let len = usize::from(r.u16()?);
        if len > MAX_APP_DATA {
            return Err(DiscoveryError::TooLong);
        }
        let data = r.take(len)?;
        if !r.rest().is_empty() {
            return Err(DiscoveryError::TrailingBytes);
        }
        if port == 0 {
            return Err(DiscoveryError::BadField);
        }
        Ok(Response {
            protocol_id,
            nonce,
            port,
            data,
        })
    }
}

/// Writes into a slice already checked to be long enough.
struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks magic, version and kind; the reader is left after them.
    fn start(bytes: &'a [u8], kind: u8) -> Result<Self, DiscoveryError> {
        let mut r = Reader { bytes };
        let magic = r.take(MAGIC.len()).map_err(|_| {
            if MAGIC.starts_with(bytes) {
                DiscoveryError::Truncated
            } else {
                DiscoveryError::NotDiscovery
            }
        })?;
        if magic != MAGIC {
            return Err(DiscoveryError::NotDiscovery);
        }
        let [b] = r.array::<1>()?;
        if b >> 4 != VERSION {
            return Err(DiscoveryError::UnknownVersion(b >> 4));
        }
        if b & 0x0f != kind {
            return Err(DiscoveryError::WrongKind(b & 0x0f));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DiscoveryError> {
        if self.bytes.len() < n {
            return Err(DiscoveryError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DiscoveryError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DiscoveryError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DiscoveryError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DiscoveryError> {
        self.array().map(u64::from_be_bytes)
    }

    fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn malformed_requests_are_typed_errors() {
        let mut good = [0u8; REQUEST_LEN];
        let request = Request {
            protocol_id: 1,
            nonce: 2,
            query: b"q",
        };
        request.encode(&mut good).expect("encodes");

        assert_eq!(Request::decode(&[]), Err(DiscoveryError::Truncated));
        assert_eq!(Request::decode(&good[..3]), Err(DiscoveryError::Truncated));
        assert_eq!(Request::decode(&good[..50]), Err(DiscoveryError::Truncated));
        // A Shoal Hello starts 0x31: not discovery.
        assert_eq!(
            Request::decode(&[0x31; 48]),
            Err(DiscoveryError::NotDiscovery)
        );
        let mut long = vec![0u8; REQUEST_LEN + 1];
        long[..REQUEST_LEN].copy_from_slice(&good);
        assert_eq!(Request::decode(&long), Err(DiscoveryError::TrailingBytes));
        let mut bad = good;
        bad[REQUEST_LEN - 1] = 1;
        assert_eq!(Request::decode(&bad), Err(DiscoveryError::TrailingBytes));
        let mut bad = good;
        bad[4] = 0x21;
        assert_eq!(
            Request::decode(&bad),
            Err(DiscoveryError::UnknownVersion(2))
        );
        let mut bad = good;
        bad[4] = 0x12;
        assert_eq!(Request::decode(&bad), Err(DiscoveryError::WrongKind(2)));
        let mut bad = good;
        bad[17..19].copy_from_slice(&(MAX_QUERY_LEN as u16 + 1).to_be_bytes());
        assert_eq!(Request::decode(&bad), Err(DiscoveryError::TooLong));

        let mut small = [0u8; REQUEST_LEN - 1];
        assert_eq!(
            request.encode(&mut small),
            Err(DiscoveryError::BufferTooSmall)
        );
        let query = [0u8; MAX_QUERY_LEN + 1];
        let too_long = Request {
            query: &query,
            ..request
        };
        assert_eq!(too_long.encode(&mut good), Err(DiscoveryError::TooLong));
    }

    #[test]
    fn malformed_responses_are_typed_errors() {
        let response = Response {
            protocol_id: 1,
            nonce: 2,
            port: 3,
            data: b"abc",
        };
        let mut good = [0u8; 32];
        let len = response.encode(&mut good).expect("encodes");
        let good = &good[..len];

        assert_eq!(
            Response::decode(&good[..len - 1]),
            Err(DiscoveryError::Truncated)
        );
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(Response::decode(&long), Err(DiscoveryError::TrailingBytes));
        let mut zero_port = good.to_vec();
        zero_port[17..19].copy_from_slice(&[0, 0]);
        assert_eq!(Response::decode(&zero_port), Err(DiscoveryError::BadField));
        let mut request_kind = good.to_vec();
        request_kind[4] = 0x11;
        assert_eq!(
            Response::decode(&request_kind),
            Err(DiscoveryError::WrongKind(1))
        );

        let data = [0u8; MAX_APP_DATA + 1];
        let mut buf = [0u8; MAX_RESPONSE_LEN + 1];
        let big = Response {
            data: &data,
            ..response
        };
        assert_eq!(big.encode(&mut buf), Err(DiscoveryError::TooLong));
        let biggest = Response {
            data: &data[..MAX_APP_DATA],
            ..response
        };
        assert_eq!(biggest.encode(&mut buf), Ok(MAX_RESPONSE_LEN));
        let zero = Response {
            port: 0,
            ..response
        };
        assert_eq!(zero.encode(&mut buf), Err(DiscoveryError::BadField));
    }

    #[test]
    fn discovery_is_told_apart_from_shoal() {
        assert!(is_discovery(&MAGIC));
        // Every Shoal packet starts with version 3 in the high nibble.
        for first in 0x30..=0x3fu8 {
            assert!(!is_discovery(&[first, b'S', b'H', b'D', 0x11]));
        }
    }
}
