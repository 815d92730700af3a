//! The hub: rooms, member lists and relay by user id, as a sans-IO layer above an
//! [`Endpoint`](crate::Endpoint).
//!
//! A hub is a server endpoint driven through a [`Hub`]: every event the endpoint emits goes
//! to [`Hub::handle_event`], which answers members' requests (create, join, leave, kick,
//! close, approve) and forwards redirected messages. A member is a client endpoint driven
//! through a [`HubClient`], which speaks the control protocol and seals what it sends to one
//! member end to end. Both run wherever an endpoint runs: under the drivers, in the
//! simulator, in a test loop.
//!
//! # Relay
//!
//! A member addresses a message to a [`Target`]: one user, a room, or a room except itself.
//! The message travels to the hub with the redirect bit and the target in its header; the hub
//! forwards it on the same channel (so with the same delivery kind; chunked messages and
//! requests too) with the owner field set to the sender's user id. The owner cannot be
//! forged: a server drops any message from a client whose owner is not that client's own id.
//! A hub forwards only between members that share a room.
//!
//! # Trust model
//!
//! Every hop is protected by the transport (each member's connection to the hub is encrypted
//! and authenticated). On top of that, when two members first share a room the hub makes a
//! fresh 32-byte **pair key** from its secret ratchet, tells it to both over their protected
//! connections, and forgets it (the ratchet moves on; the hub's memory holds no pair key once
//! the notices have left). Messages, requests and responses addressed to one member are
//! sealed with keys expanded from it (ChaCha20-Poly1305, one key per direction, 24 bytes a
//! message), so a compromise of the hub after the two members' connections to it ended, or
//! a log of what it forwards, reveals nothing of them (while those connections last, their
//! transport keys in the hub's memory would open a recorded introduction, and the pair key
//! in it). The hub still sees who talks to whom, when and how much; it can drop, delay or
//! replay what it forwards (a replayed request is not taken twice; a replayed message is
//! delivered again); and a hub that is malicious *at introduction time* can keep the
//! pair key (or hand out its own) and read along: the pair key protects against a hub that
//! is honest when it introduces and compromised later, not against a lying hub. Room
//! broadcasts are protected hop by hop only (a message sealed once cannot be opened by a
//! changing set of members without a group key).
//!
//! # Example
//!
//! ```
//! use shoal_proto::hub::{self, Hub, HubClient, HubConfig, HubEvent, RoomOptions, Target};
//! use shoal_proto::{Endpoint, Instant, SecretSeed};
//! # use std::net::SocketAddr;
//! let config = |n| shoal_proto::Config {
//!     seed: n,
//!     secret_seed: Some(SecretSeed::insecure_from_u64(n)),
//!     ..hub::endpoint_config()
//! };
//! let hub_addr: SocketAddr = "10.0.0.1:7000".parse().unwrap();
//! let mut hub_ep = Endpoint::new(config(1)).unwrap();
//! let mut hub = Hub::new(
//!     HubConfig { secret_seed: Some(SecretSeed::insecure_from_u64(9)), ..HubConfig::default() },
//!     hub_ep.config(),
//! )
//! .unwrap();
//! let mut members: Vec<(SocketAddr, Endpoint, HubClient)> = (2..4)
//!     .map(|n| {
//!         let mut ep = Endpoint::new(config(n)).unwrap();
//!         let conn = ep.connect(Instant::ZERO, hub_addr, &[]).unwrap();
//!         let client = HubClient::new(conn, ep.config()).unwrap();
//!         (format!("10.0.0.{n}:7000").parse().unwrap(), ep, client)
//!     })
//!     .collect();
//! let (_, ep, alice) = &mut members[0];
//! alice.create_room(ep, "lobby", &RoomOptions::default()).unwrap();
//!
//! // A perfect network, 1 ms a turn. Bob joins once the room exists; Alice greets him.
//! let mut buf = vec![0u8; 1500];
//! let (mut lobby_exists, mut bob_asked, mut got) = (false, false, None);
//! let mut now = Instant::ZERO;
//! for _ in 0..200 {
//!     now = now + core::time::Duration::from_millis(1);
//!     hub_ep.handle_timeout(now);
//!     while let Some(t) = hub_ep.poll_transmit(now, &mut buf) {
//!         if let Some((_, ep, _)) = members.iter_mut().find(|m| m.0 == t.to) {
//!             ep.handle_datagram(now, hub_addr, &buf[..t.len]);
//!         }
//!     }
//!     for (i, (addr, ep, client)) in members.iter_mut().enumerate() {
//!         ep.handle_timeout(now);
//!         while let Some(event) = client.next_event(ep, now) {
//!             match event {
//!                 HubEvent::Joined { .. } => lobby_exists = true,
//!                 HubEvent::PeerJoined { user, .. } => {
//!                     client.send(ep, Target::User(user), 3, &b"hi"[..]).unwrap();
//!                 }
//!                 HubEvent::Message { from, payload, .. } => got = Some((i, from, payload)),
//!                 _ => {}
//!             }
//!         }
//!         while let Some(t) = ep.poll_transmit(now, &mut buf) {
//!             hub_ep.handle_datagram(now, *addr, &buf[..t.len]);
//!         }
//!     }
//!     if lobby_exists && !bob_asked {
//!         let (_, ep, bob) = &mut members[1];
//!         bob.join_room(ep, "lobby", b"", b"bob").unwrap();
//!         bob_asked = true;
//!     }
//!     while let Some(event) = hub_ep.poll_event() {
//!         hub.handle_event(&mut hub_ep, now, event);
//!     }
//! }
//! // Bob got it, sealed by Alice for him, with Alice's user id as the hub wrote it.
//! let (who, from, payload) = got.expect("relayed");
//! assert_eq!((who, payload.as_ref()), (1, &b"hi"[..]));
//! assert_eq!(Some(from), members[0].2.user_id());
//! ```

mod client;
pub(crate) mod control;
mod server;

use core::fmt;
use core::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::config::{Config, DeliveryKind};

pub use crate::crypto::PAIR_OVERHEAD;
pub use client::{
    HubClient, HubClientStats, HubError, HubEvent, Member, OpId, PathPolicy, PeerRequest, RoomView,
};
pub use server::{Hub, HubConfig, HubConfigError, HubStats, RateLimit, RoomChange, RoomInfo};

/// Highest user id a server hands out; the target values above it name rooms.
pub const MAX_USER_ID: u16 = 0xBFFF;
/// Most rooms one hub holds: room ids are 13 bits in a [`Target`].
pub const MAX_ROOMS: usize = 1 << 13;
/// Application close code a hub disconnects a member with when the member stops reading
/// and its queue fills.
pub const CLOSE_TOO_SLOW: u16 = 0x4801;

const ROOM_TARGET: u16 = 0xC000;
const ROOM_EXCEPT_SENDER: u16 = 0x2000;
const ROOM_MASK: u16 = 0x1FFF;

/// The endpoint configuration a hub and its members share: the default four channels (0
/// unreliable, 1 sequenced, 2 reliable, 3 ordered), the hub's control channel (4, ordered)
/// and its tunnel channel (5, unreliable). Change other fields as needed; the channel layout
/// must be the same on both sides.
pub fn endpoint_config() -> Config {
    Config::with_channels(&[
        DeliveryKind::Unreliable,
        DeliveryKind::Sequenced,
        DeliveryKind::Reliable,
        DeliveryKind::Ordered,
        DeliveryKind::Ordered,
        DeliveryKind::Unreliable,
    ])
}

/// The control channel of [`endpoint_config`].
pub const DEFAULT_CONTROL_CHANNEL: u8 = 4;
/// The tunnel channel of [`endpoint_config`]: unreliable, it carries the datagrams of peer
/// links that travel through the hub.
pub const DEFAULT_TUNNEL_CHANNEL: u8 = 5;

/// The address a peer link to `user` has while it travels through the hub: in `100::/64`,
/// the discard-only prefix (RFC 6666), with the user id as port, so it can never be a real
/// peer's. An endpoint with a relay set ([`Endpoint::set_relay`](crate::Endpoint::set_relay))
/// sends datagrams for it through the hub connection instead of the socket.
pub fn relay_address(user: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0)), user)
}

/// The user a [`relay_address`] stands for.
pub fn relay_user(addr: SocketAddr) -> Option<u16> {
    match addr.ip() {
        IpAddr::V6(ip) if ip == Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0) && addr.port() != 0 => {
            Some(addr.port())
        }
        _ => None,
    }
}

/// A room on a hub, as the hub numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub u16);

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "room#{}", self.0)
    }
}

/// Whom a relayed message is for. On the wire it is the message header's 16-bit redirect
/// target: a user id (1 to [`MAX_USER_ID`]), or `0xC000 | room` for a room, or
/// `0xE000 | room` for a room except its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// One member.
    User(u16),
    /// Every member of the room, the sender included.
    Room(RoomId),
    /// Every member of the room but the sender.
    RoomExceptSender(RoomId),
}

impl Target {
    /// The 16-bit redirect target.
    pub fn to_wire(self) -> u16 {
        match self {
            Target::User(u) => u,
            Target::Room(r) => ROOM_TARGET | (r.0 & ROOM_MASK),
            Target::RoomExceptSender(r) => ROOM_TARGET | ROOM_EXCEPT_SENDER | (r.0 & ROOM_MASK),
        }
    }

    /// Reads a redirect target; 0 (the server itself) names no one.
    pub fn from_wire(t: u16) -> Option<Target> {
        match t {
            0 => None,
            1..=MAX_USER_ID => Some(Target::User(t)),
            _ if t & ROOM_EXCEPT_SENDER != 0 => {
                Some(Target::RoomExceptSender(RoomId(t & ROOM_MASK)))
            }
            _ => Some(Target::Room(RoomId(t & ROOM_MASK))),
        }
    }
}

/// Why the hub refused a member's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// No room has that name (or id).
    UnknownRoom,
    /// The room has as many members as it may.
    RoomFull,
    /// The member is in as many rooms as `HubConfig::max_rooms_per_member` allows.
    TooManyRooms,
    /// The room's password differs.
    WrongPassword,
    /// A room of that name exists already.
    RoomExists,
    /// The owner refused the join, or did not answer in time.
    NotApproved,
    /// The name is empty or too long, or a field exceeds the hub's limits.
    Invalid,
    /// Too many rooms created too fast (`HubConfig::room_creates`).
    RateLimited,
    /// The hub holds as many rooms as it may.
    HubFull,
    /// The member is in the room already.
    AlreadyMember,
    /// Only the room's owner may do that.
    NotOwner,
    /// The member (or the user named) is not in the room.
    NotMember,
    /// Too many joins wait for the owner's approval.
    ApprovalQueueFull,
    /// The member owns as many rooms as `HubConfig::max_owned_rooms` allows, or the members
    /// at its address as many as `HubConfig::max_owned_rooms_per_ip` does.
    TooManyOwned,
    /// The member waits for approval in as many rooms as `HubConfig::max_pending_asks`
    /// allows.
    TooManyAsks,
    /// A refusal this version does not know, by its code (a newer hub's): the request was
    /// refused all the same, so its answer still comes.
    Unrecognized(u8),
}

impl Refusal {
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            Refusal::UnknownRoom => 1,
            Refusal::RoomFull => 2,
            Refusal::TooManyRooms => 3,
            Refusal::WrongPassword => 4,
            Refusal::RoomExists => 5,
            Refusal::NotApproved => 6,
            Refusal::Invalid => 7,
            Refusal::RateLimited => 8,
            Refusal::HubFull => 9,
            Refusal::AlreadyMember => 10,
            Refusal::NotOwner => 11,
            Refusal::NotMember => 12,
            Refusal::ApprovalQueueFull => 13,
            Refusal::TooManyOwned => 14,
            Refusal::TooManyAsks => 15,
            Refusal::Unrecognized(code) => code,
        }
    }

    pub(crate) fn from_wire(b: u8) -> Option<Self> {
        Some(match b {
            1 => Refusal::UnknownRoom,
            2 => Refusal::RoomFull,
            3 => Refusal::TooManyRooms,
            4 => Refusal::WrongPassword,
            5 => Refusal::RoomExists,
            6 => Refusal::NotApproved,
            7 => Refusal::Invalid,
            8 => Refusal::RateLimited,
            9 => Refusal::HubFull,
            10 => Refusal::AlreadyMember,
            11 => Refusal::NotOwner,
            12 => Refusal::NotMember,
            13 => Refusal::ApprovalQueueFull,
            14 => Refusal::TooManyOwned,
            15 => Refusal::TooManyAsks,
            0 => return None,
            code => Refusal::Unrecognized(code),
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Refusal::Unrecognized(code) = self {
            return write!(
                f,
                "refused by the hub (code {code}, which this version does not know)"
            );
        }
        f.write_str(match self {
            Refusal::UnknownRoom => "no such room",
            Refusal::RoomFull => "the room is full",
            Refusal::TooManyRooms => "this member is in too many rooms; leave one first",
            Refusal::WrongPassword => "wrong room password",
            Refusal::RoomExists => "a room of that name exists; join it or pick another name",
            Refusal::NotApproved => "the room's owner did not approve the join",
            Refusal::Invalid => "empty or too long name, password or metadata",
            Refusal::RateLimited => {
                "too fast (rooms created, commands, or joins to this room); wait and retry"
            }
            Refusal::HubFull => "the hub holds as many rooms as it may",
            Refusal::AlreadyMember => "already a member of that room",
            Refusal::NotOwner => "only the room's owner may do that",
            Refusal::NotMember => "not a member of that room",
            Refusal::ApprovalQueueFull => "too many joins await the owner's approval",
            Refusal::TooManyOwned => {
                "this member, or its address, owns as many rooms as it may; close one first"
            }
            Refusal::TooManyAsks => {
                "this member waits for approval in as many rooms as it may; wait for an answer"
            }
            Refusal::Unrecognized(_) => "",
        })
    }
}

/// Why a member left a room (told to the others as `PeerLeft`, to the member itself as
/// `RoomLeft`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaveReason {
    /// It asked to leave.
    Left,
    /// Its connection to the hub ended.
    Disconnected,
    /// The owner kicked it.
    Kicked,
    /// The owner closed the room.
    ClosedByOwner,
    /// The owner left a room configured to close with its owner.
    OwnerLeft,
    /// It stopped reading: its queue at the hub filled, and the hub disconnected it.
    TooSlow,
    /// A reason this version does not know, by its code (a newer hub's): the member left
    /// all the same, and the room views follow.
    Unrecognized(u8),
}

impl LeaveReason {
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            LeaveReason::Left => 0,
            LeaveReason::Disconnected => 1,
            LeaveReason::Kicked => 2,
            LeaveReason::ClosedByOwner => 3,
            LeaveReason::OwnerLeft => 4,
            LeaveReason::TooSlow => 5,
            LeaveReason::Unrecognized(code) => code,
        }
    }

    pub(crate) fn from_wire(b: u8) -> Self {
        match b {
            0 => LeaveReason::Left,
            1 => LeaveReason::Disconnected,
            2 => LeaveReason::Kicked,
            3 => LeaveReason::ClosedByOwner,
            4 => LeaveReason::OwnerLeft,
            5 => LeaveReason::TooSlow,
            code => LeaveReason::Unrecognized(code),
        }
    }
}

impl fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let LeaveReason::Unrecognized(code) = self {
            return write!(f, "left (reason {code}, which this version does not know)");
        }
        f.write_str(match self {
            LeaveReason::Left => "left",
            LeaveReason::Disconnected => "disconnected from the hub",
            LeaveReason::Kicked => "kicked by the owner",
            LeaveReason::ClosedByOwner => "the owner closed the room",
            LeaveReason::OwnerLeft => "the owner left and the room closed",
            LeaveReason::TooSlow => "stopped reading and was disconnected",
            LeaveReason::Unrecognized(_) => "",
        })
    }
}

/// How a new room behaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomOptions {
    /// Joiners must give this password (empty: none).
    pub password: alloc::vec::Vec<u8>,
    /// What the creator tells the other members about itself (bounded by
    /// `HubConfig::max_metadata_len`).
    pub metadata: alloc::vec::Vec<u8>,
    /// Most members (0: the hub's `max_members_per_room`; never above it).
    pub max_members: u16,
    /// Joiners wait for the owner's approval ([`HubEvent::JoinRequested`]).
    pub approval: bool,
    /// The room closes when its owner leaves; otherwise the oldest member becomes the owner.
    pub close_with_owner: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_and_rooms_never_collide_with_users() {
        for t in [
            Target::User(1),
            Target::User(MAX_USER_ID),
            Target::Room(RoomId(0)),
            Target::Room(RoomId(8191)),
            Target::RoomExceptSender(RoomId(0)),
            Target::RoomExceptSender(RoomId(8191)),
        ] {
            assert_eq!(Target::from_wire(t.to_wire()), Some(t));
        }
        assert_eq!(Target::from_wire(0), None);
        assert_eq!(Target::Room(RoomId(5)).to_wire(), 0xC005);
        assert_eq!(Target::RoomExceptSender(RoomId(5)).to_wire(), 0xE005);
    }

    /// The codes are wire.md's tables, read from the doc's side: each listed code decodes
    /// to its variant and back, and no other byte decodes.
    #[test]
    fn refusal_codes_and_leave_reasons_are_the_documented_tables() {
        use LeaveReason as L;
        use Refusal as R;
        let refusals = [
            (1, R::UnknownRoom),
            (2, R::RoomFull),
            (3, R::TooManyRooms),
            (4, R::WrongPassword),
            (5, R::RoomExists),
            (6, R::NotApproved),
            (7, R::Invalid),
            (8, R::RateLimited),
            (9, R::HubFull),
            (10, R::AlreadyMember),
            (11, R::NotOwner),
            (12, R::NotMember),
            (13, R::ApprovalQueueFull),
            (14, R::TooManyOwned),
            (15, R::TooManyAsks),
        ];
        let reasons = [
            (0, L::Left),
            (1, L::Disconnected),
            (2, L::Kicked),
            (3, L::ClosedByOwner),
            (4, L::OwnerLeft),
            (5, L::TooSlow),
        ];
        for b in 0..=255u8 {
            // A code not listed is a newer hub's: still a refusal (0 is none).
            let listed = refusals
                .iter()
                .find(|(code, _)| *code == b)
                .map(|(_, r)| *r)
                .or((b != 0).then_some(R::Unrecognized(b)));
            assert_eq!(Refusal::from_wire(b), listed, "refusal {b}");
            if let Some(r) = listed {
                assert_eq!(r.to_wire(), b);
            }
            let listed = reasons
                .iter()
                .find(|(code, _)| *code == b)
                .map_or(L::Unrecognized(b), |(_, r)| *r);
            assert_eq!(LeaveReason::from_wire(b), listed, "leave reason {b}");
            assert_eq!(listed.to_wire(), b);
        }
        for (code, r) in refusals {
            assert_eq!(r.to_wire(), code);
        }
        for (code, r) in reasons {
            assert_eq!(r.to_wire(), code);
        }
    }
}
