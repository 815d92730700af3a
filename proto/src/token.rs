//! Connect tokens: how a dedicated server learns who a client is.
//!
//! A backend that shares a secret key with its game servers authenticates a player its own
//! way (a login over HTTPS), then [`issue`]s a token naming the player's client id, the
//! servers it may join, an expiry and up to 256 bytes of user data, sealed with
//! XChaCha20-Poly1305 under the shared key. The client cannot read or change the sealed
//! part; it hands the token to [`Endpoint::connect_with`](crate::Endpoint::connect_with).
//! A server configured with [`TokenConfig`] accepts only valid, unexpired, unused tokens
//! that name one of its addresses, and reports the client id and user data in the accept
//! hook and in `Event::Connected`.
//!
//! Each token also carries a fresh client key, given to the client beside the sealed bytes
//! and mixed into the handshake's key schedule: someone who copies a token off the wire
//! cannot complete a handshake with it.
//!
//! ```
//! use shoal_proto::token::{issue, ConnectToken, TokenParams};
//! let backend_key = [7u8; 32]; // shared by the backend and its servers; keep it secret
//! let server: std::net::SocketAddr = "203.0.113.5:4000".parse().unwrap();
//! let token = issue(
//!     &backend_key,
//!     &TokenParams {
//!         protocol_id: 0x5348_4f4c,
//!         client_id: 42,
//!         expires_at: 1_900_000_000, // Unix seconds
//!         server_addresses: &[server],
//!         user_data: b"team=blue",
//!     },
//!     &[9u8; 32], // fresh random bytes for every token
//! )
//! .unwrap();
//! // The backend sends `token.to_bytes()` to the client (over HTTPS); the client rebuilds it.
//! let received = ConnectToken::from_bytes(&token.to_bytes()).unwrap();
//! assert_eq!(received, token);
//! ```

use alloc::vec::Vec;
use bytes::Bytes;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::crypto::TAG_LEN;
use crate::wire::RejectCode;

/// Most bytes of user data a token carries.
pub const MAX_USER_DATA: usize = 256;
/// Most server addresses a token names.
pub const MAX_SERVER_ADDRESSES: usize = 8;
/// Most bytes a sealed token takes (every address IPv6, full user data).
pub const MAX_SEALED_LEN: usize =
    PUBLIC_LEN + 8 + 32 + 1 + MAX_SERVER_ADDRESSES * 19 + 2 + MAX_USER_DATA + TAG_LEN;

const TOKEN_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// Version, protocol id, expiry, nonce: the clear part, authenticated as associated data.
const PUBLIC_LEN: usize = 1 + 4 + 8 + NONCE_LEN;

/// What a backend puts in a token.
#[derive(Clone, Copy, Debug)]
pub struct TokenParams<'a> {
    /// The application protocol id (`Config::protocol_id`) of the servers it is for.
    pub protocol_id: u32,
    /// Who the client is, in the backend's numbering.
    pub client_id: u64,
    /// When it stops being accepted, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// The servers that accept it (1 to 8): each checks that its own address is here.
    pub server_addresses: &'a [SocketAddr],
    /// Up to 256 bytes for the server (a display name, a team, entitlements).
    pub user_data: &'a [u8],
}

/// Why a token could not be issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssueError {
    /// `server_addresses` must hold 1 to 8 addresses.
    ServerAddresses(usize),
    /// `user_data` is longer than 256 bytes.
    UserDataTooLong(usize),
}

impl fmt::Display for IssueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssueError::ServerAddresses(n) => {
                write!(f, "a token names 1 to 8 server addresses, not {n}")
            }
            IssueError::UserDataTooLong(n) => {
                write!(f, "token user data is {n} bytes; at most 256 fit")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for IssueError {}

/// A token as the client holds it: the sealed bytes for the server, and the client key that
/// proves the client is the one the backend gave them to.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectToken {
    pub(crate) sealed: Vec<u8>,
    pub(crate) client_key: [u8; 32],
}

impl Drop for ConnectToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.client_key);
    }
}

impl fmt::Debug for ConnectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectToken")
            .field("sealed_len", &self.sealed.len())
            .field("expires_at", &self.expires_at())
            .finish_non_exhaustive()
    }
}

impl ConnectToken {
    /// Serialized for the trip from backend to client: client key (32 bytes), then the sealed
    /// token. Keep it as secret as a session cookie.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.sealed.len());
        out.extend_from_slice(&self.client_key);
        out.extend_from_slice(&self.sealed);
        out
    }

    /// Parses what [`to_bytes`](Self::to_bytes) wrote; `None` if it is too short or long to
    /// be a token.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (key, sealed) = bytes.split_first_chunk::<32>()?;
        if sealed.len() < PUBLIC_LEN + 8 + 32 + 1 + 2 + TAG_LEN || sealed.len() > MAX_SEALED_LEN {
            return None;
        }
        Some(ConnectToken {
            sealed: sealed.to_vec(),
            client_key: *key,
        })
    }

    /// When the token expires, in Unix seconds (from its clear part).
    pub fn expires_at(&self) -> u64 {
        self.sealed
            .get(5..13)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    }
}

/// Seals a token for `params` under the backend's `key`. `entropy` must be fresh random
/// bytes for every token (the nonce and the client key derive from it).
pub fn issue(
    key: &[u8; 32],
    params: &TokenParams<'_>,
    entropy: &[u8; 32],
) -> Result<ConnectToken, IssueError> {
    let n = params.server_addresses.len();
    if n == 0 || n > MAX_SERVER_ADDRESSES {
        return Err(IssueError::ServerAddresses(n));
    }
    if params.user_data.len() > MAX_USER_DATA {
        return Err(IssueError::UserDataTooLong(params.user_data.len()));
    }
    let hkdf = Hkdf::<Sha256>::new(Some(b"shoal token"), entropy);
    let mut nonce = [0u8; NONCE_LEN];
    let mut client_key = [0u8; 32];
    // Constant lengths far under HKDF's limit.
    let ok = hkdf.expand(b"nonce", &mut nonce).is_ok()
        && hkdf.expand(b"client key", &mut client_key).is_ok();
    debug_assert!(ok);

    let mut sealed = Vec::with_capacity(MAX_SEALED_LEN);
    sealed.push(TOKEN_VERSION);
    sealed.extend_from_slice(&params.protocol_id.to_be_bytes());
    sealed.extend_from_slice(&params.expires_at.to_be_bytes());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&params.client_id.to_be_bytes());
    sealed.extend_from_slice(&client_key);
    sealed.push(n as u8);
    for addr in params.server_addresses {
        put_address(&mut sealed, addr);
    }
    sealed.extend_from_slice(&(params.user_data.len() as u16).to_be_bytes());
    sealed.extend_from_slice(params.user_data);
    let (public, private) = sealed.split_at_mut(PUBLIC_LEN);
    let tag = XChaCha20Poly1305::new(key.into())
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), public, private)
        .map_err(|_| IssueError::UserDataTooLong(params.user_data.len()))?;
    sealed.extend_from_slice(&tag);
    Ok(ConnectToken { sealed, client_key })
}

fn put_address(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// A server's side of connect tokens. With it set in `Config::tokens`, every client must
/// present a valid token. The endpoint needs the wall-clock time to check expiry: call
/// [`Endpoint::set_unix_time`](crate::Endpoint::set_unix_time) (the drivers do); until then
/// every token counts as expired.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// The key the backend seals tokens with.
    pub key: [u8; 32],
    /// This server's public addresses: a token must name one of them.
    pub server_addresses: Vec<SocketAddr>,
    /// Most tokens remembered as used until they expire (default in [`TokenConfig::new`]:
    /// 65,536, about 2 MiB). While that many unexpired tokens are remembered, new clients
    /// are refused as if the server were full.
    pub max_used_tokens: usize,
}

impl TokenConfig {
    /// Tokens sealed under `key`, for a server reachable at `server_addresses`.
    pub fn new(key: [u8; 32], server_addresses: Vec<SocketAddr>) -> Self {
        TokenConfig {
            key,
            server_addresses,
            max_used_tokens: 65_536,
        }
    }
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("server_addresses", &self.server_addresses)
            .field("max_used_tokens", &self.max_used_tokens)
            .finish_non_exhaustive()
    }
}

/// What a valid token says about the client, as the accept hook and `Event::Connected`
/// report it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenClaims {
    /// The client id the backend gave.
    pub client_id: u64,
    /// The backend's user data.
    pub user_data: Bytes,
    /// When the token expires (Unix seconds).
    pub expires_at: u64,
}

/// A token the server opened.
pub(crate) struct OpenedToken {
    pub(crate) claims: TokenClaims,
    pub(crate) client_key: [u8; 32],
    /// Its tag: the key it is remembered as used by.
    pub(crate) tag: [u8; TAG_LEN],
}

impl Drop for OpenedToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.client_key);
    }
}

impl TokenConfig {
    /// Opens `sealed` and checks it is for `protocol_id`, unexpired at `unix_now` and names
    /// one of our addresses; whether it was used is the endpoint's to check.
    pub(crate) fn open(
        &self,
        protocol_id: u32,
        sealed: &[u8],
        unix_now: Option<u64>,
    ) -> Result<OpenedToken, RejectCode> {
        if sealed.len() > MAX_SEALED_LEN || sealed.len() < PUBLIC_LEN + TAG_LEN {
            return Err(RejectCode::TokenInvalid);
        }
        let mut buf = [0u8; MAX_SEALED_LEN];
        let buf = &mut buf[..sealed.len()];
        buf.copy_from_slice(sealed);
        let (body, tag) = buf.split_at_mut(sealed.len() - TAG_LEN);
        let (public, private) = body.split_at_mut(PUBLIC_LEN);
        let nonce = XNonce::clone_from_slice(&public[13..PUBLIC_LEN]);
        XChaCha20Poly1305::new((&self.key).into())
            .decrypt_in_place_detached(&nonce, public, private, Tag::from_slice(tag))
            .map_err(|_| RejectCode::TokenInvalid)?;
        let mut r = TokenReader { bytes: public };
        let version = r.u8()?;
        let token_protocol = u32::from_be_bytes(r.array()?);
        let expires_at = u64::from_be_bytes(r.array()?);
        if version != TOKEN_VERSION || token_protocol != protocol_id {
            return Err(RejectCode::TokenInvalid);
        }
        let mut r = TokenReader { bytes: private };
        let client_id = u64::from_be_bytes(r.array()?);
        let client_key = r.array()?;
        let count = r.u8()?;
        let mut ours = false;
        for _ in 0..count {
            // (Mapped IPv4 addresses as the IPv4 ones they are, on either side.)
            let addr = crate::canonical_address(r.address()?);
            ours |= self
                .server_addresses
                .iter()
                .any(|&a| crate::canonical_address(a) == addr);
        }
        let len = usize::from(u16::from_be_bytes(r.array()?));
        let user_data = r.take(len)?;
        if !r.bytes.is_empty() {
            return Err(RejectCode::TokenInvalid);
        }
        if unix_now.is_none_or(|now| now >= expires_at) {
            return Err(RejectCode::TokenExpired);
        }
        if !ours {
            return Err(RejectCode::TokenWrongServer);
        }
        let mut tag_bytes = [0u8; TAG_LEN];
        tag_bytes.copy_from_slice(tag);
        Ok(OpenedToken {
            claims: TokenClaims {
                client_id,
                user_data: Bytes::copy_from_slice(user_data),
                expires_at,
            },
            client_key,
            tag: tag_bytes,
        })
    }
}

/// Reads a token's authenticated fields (a malformed one can only come from a broken
/// backend, but is still refused rather than trusted).
struct TokenReader<'a> {
    bytes: &'a [u8],
}

impl<'a> TokenReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RejectCode> {
        if self.bytes.len() < n {
            return Err(RejectCode::TokenInvalid);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RejectCode> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, RejectCode> {
        Ok(self.array::<1>()?[0])
    }
    fn address(&mut self) -> Result<SocketAddr, RejectCode> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(RejectCode::TokenInvalid),
        };
        Ok(SocketAddr::new(ip, u16::from_be_bytes(self.array()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn token(expires_at: u64, servers: &[SocketAddr]) -> ConnectToken {
        issue(
            &[1; 32],
            &TokenParams {
                protocol_id: 5,
                client_id: 77,
                expires_at,
                server_addresses: servers,
                user_data: b"blue",
            },
            &[2; 32],
        )
        .expect("issues")
    }

    #[test]
    fn a_token_opens_only_where_and_while_it_is_valid() {
        let us = addr("10.0.0.1:9");
        let config = TokenConfig::new([1; 32], alloc::vec![us]);
        let t = token(100, &[addr("[::1]:3"), us]);
        let Ok(opened) = config.open(5, &t.sealed, Some(99)) else {
            panic!("a valid token is refused");
        };
        assert_eq!(opened.claims.client_id, 77);
        assert_eq!(&opened.claims.user_data[..], b"blue");
        assert_eq!(opened.client_key, t.client_key);
        let err = |r: Result<OpenedToken, RejectCode>| r.err();
        assert_eq!(
            err(config.open(5, &t.sealed, Some(100))),
            Some(RejectCode::TokenExpired)
        );
        assert_eq!(
            err(config.open(5, &t.sealed, None)),
            Some(RejectCode::TokenExpired)
        );
        assert_eq!(
            err(config.open(6, &t.sealed, Some(1))),
            Some(RejectCode::TokenInvalid)
        );
        let other = token(100, &[addr("10.0.0.2:9")]);
        assert_eq!(
            err(config.open(5, &other.sealed, Some(1))),
            Some(RejectCode::TokenWrongServer)
        );
        let foreign = TokenConfig::new([3; 32], alloc::vec![us]);
        assert_eq!(
            err(foreign.open(5, &t.sealed, Some(1))),
            Some(RejectCode::TokenInvalid)
        );
        for bit in 0..t.sealed.len() * 8 {
            let mut bad = t.sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                err(config.open(5, &bad, Some(1))),
                Some(RejectCode::TokenInvalid)
            );
        }
    }

    #[test]
    fn issue_refuses_what_does_not_fit() {
        let params = |servers: &'static [SocketAddr], user_data: &'static [u8]| TokenParams {
            protocol_id: 0,
            client_id: 0,
            expires_at: 0,
            server_addresses: servers,
            user_data,
        };
        assert_eq!(
            issue(&[0; 32], &params(&[], b""), &[0; 32]),
            Err(IssueError::ServerAddresses(0))
        );
        static ONE: [SocketAddr; 1] = [SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1)];
        assert_eq!(
            issue(&[0; 32], &params(&ONE, &[0; 257]), &[0; 32]),
            Err(IssueError::UserDataTooLong(257))
        );
        let full = issue(&[0; 32], &params(&ONE, &[0; 256]), &[0; 32]).expect("fits");
        assert_eq!(ConnectToken::from_bytes(&full.to_bytes()), Some(full));
    }
}
