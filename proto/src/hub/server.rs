//! The hub's side: rooms, members, and the relay.

use alloc::boxed::Box;
use alloc::collections::{BTreeSet, BinaryHeap};
use alloc::vec::Vec;
use bytes::Bytes;
use core::cmp::Reverse;
use core::fmt;
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use super::control::{
    Command, MemberEntry, Notice, FLAG_APPROVAL, FLAG_CLOSE_WITH_OWNER, MAX_FIELD,
};
use super::{LeaveReason, Refusal, RoomId, Target, CLOSE_TOO_SLOW, MAX_ROOMS};
use crate::config::{Config, DeliveryKind, SecretSeed};
use crate::crypto::Secrets;
use crate::endpoint::{ip_key, Endpoint};
use crate::error::SendError;
use crate::event::{ConnectionHandle, Event, IncomingRequest, Relay, RequestId};
use crate::hash::{HashMap, Prf, SeededState};
use crate::rate::Bucket;
pub use crate::rate::RateLimit;
use crate::time::Instant;

/// Settings of a [`Hub`]. Every table the hub keeps is bounded by one of them.
///
/// The rate limits and budgets are per connection: a member that reconnects starts with
/// full buckets (and a new user id, and must join its rooms again). What bounds a person
/// rather than a connection is who may connect at all: connect tokens
/// ([`Config::tokens`](crate::Config::tokens)) issued by the game's backend, one per
/// connection.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The channel members send control messages on (default
    /// [`DEFAULT_CONTROL_CHANNEL`](super::DEFAULT_CONTROL_CHANNEL)); it must be ordered, and
    /// no relayed message may use it.
    pub control_channel: u8,
    /// Most rooms at once (default 4,096; at most [`MAX_ROOMS`]).
    pub max_rooms: usize,
    /// Most rooms one member may be in, its own included (default 128).
    pub max_rooms_per_member: usize,
    /// Most members of one room (default 256).
    pub max_members_per_room: usize,
    /// Longest room name and password, in bytes (default 64).
    pub max_name_len: usize,
    /// Most bytes of metadata a member gives when it joins (default 256).
    pub max_metadata_len: usize,
    /// Most joins waiting for one room owner's approval (default 16).
    pub max_pending_joins: usize,
    /// Most open rooms one member may have created (default 16). A room counts against its
    /// creator until it closes, whoever owns it meanwhile: ownership passed on (its creator
    /// left it) neither frees the creator's count nor charges the heir, so a member cannot
    /// push rooms onto others to lock them out. Over it a create is refused with
    /// [`Refusal::TooManyOwned`].
    pub max_owned_rooms: usize,
    /// Most open rooms the members at one address may have created between them (default
    /// 64): an IPv4 address, or an IPv6 address's /56, a home line's usual share. A room
    /// counts against the address its creator had, until it closes (after its creator left
    /// the hub too). Without it one host, with `Config::max_connections_per_ip` connections
    /// each creating rooms, fills `max_rooms` in minutes and keeps everyone else from opening
    /// one; with it, filling the hub takes `max_rooms / max_owned_rooms_per_ip` addresses.
    /// Members sharing an address (a carrier-grade NAT) share it too. Over it:
    /// [`Refusal::TooManyOwned`].
    pub max_owned_rooms_per_ip: usize,
    /// Most rooms one member may wait in for the owner's approval at once (default 16):
    /// each wait holds a place in a room's approval queue, and the member's metadata, until
    /// the owner answers or `approval_timeout` passes. Over it: [`Refusal::TooManyAsks`].
    pub max_pending_asks: usize,
    /// How long a join waits for the owner's approval before it is refused (default 10 s).
    pub approval_timeout: Duration,
    /// Rooms one member may create (default 1/s, bursts of 8): a create flood is refused
    /// with [`Refusal::RateLimited`].
    pub room_creates: RateLimit,
    /// Copies one member may have relayed (a room broadcast costs one per recipient;
    /// default 10,000/s, bursts of 20,000). A message over it is dropped and counted.
    pub relay_messages: RateLimit,
    /// Payload bytes one member may have relayed, counted per copy (default 4 MiB/s, bursts
    /// of 8 MiB).
    pub relay_bytes: RateLimit,
    /// Relayed requests one member may have waiting for their responses (default 64).
    pub max_relayed_requests: usize,
    /// Commands (join, leave, kick, close, approve, announce) one member may send (default
    /// 20/s, bursts of 40): each can cost a notice to every member of a room. Over it:
    /// [`Refusal::RateLimited`].
    pub commands: RateLimit,
    /// Joins one room takes, whoever asks (default 16/s, bursts of 256: a full room can
    /// form at once). Each join tells every member (a `PeerJoined` carrying the joiner's
    /// metadata, keys and addresses, then a `PeerLeft`), so without it members who join and leave in turn make the hub send
    /// each room mate a stream of notices, over every member's own command rate (a member
    /// that cannot take them is disconnected as too slow). In a room that approves its
    /// joins, the approval spends it (asking costs the room's members nothing). Over it:
    /// [`Refusal::RateLimited`].
    pub room_joins: RateLimit,
    /// Notices one member's joins may make the hub send its new room mates (a `PeerJoined`
    /// each; default 1,024/s, bursts of 2,048: eight joins to full rooms at once). A join
    /// costs one command however large the room, so a member joining and leaving full rooms
    /// in turn made the hub send some 700 times the bytes it sent, on every connection it
    /// held. A burst below `max_members_per_room` is raised to it (a join to a full room
    /// must be payable). Joins a room's owner approves spend it too. Over it:
    /// [`Refusal::RateLimited`].
    pub join_notices: RateLimit,
    /// How long a member's queue at the hub may stay full, with nothing draining from it,
    /// before the member counts as not reading and is disconnected (default 2 s). Until
    /// then, and for a member that drains slowly, relayed traffic that does not fit is
    /// dropped and counted (`dropped_queue_full`): room mates cannot get a slow member cut
    /// off by flooding it. A notice (a change to its rooms) that does not fit disconnects it
    /// at once (`notices_dropped`): it would be out of step for good.
    pub stall_timeout: Duration,
    /// Where the pair keys come from: 32 bytes from the operating system (required; the
    /// drivers' hub binary fills it). Consumed by [`Hub::new`].
    pub secret_seed: Option<SecretSeed>,
    /// Seed for the hub's hash tables.
    pub seed: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            control_channel: super::DEFAULT_CONTROL_CHANNEL,
            max_rooms: 4096,
            max_rooms_per_member: 128,
            max_members_per_room: 256,
            max_name_len: 64,
            max_metadata_len: 256,
            max_pending_joins: 16,
            max_owned_rooms: 16,
            max_owned_rooms_per_ip: 64,
            max_pending_asks: 16,
            approval_timeout: Duration::from_secs(10),
            room_creates: RateLimit {
                per_second: 1.0,
                burst: 8.0,
            },
            relay_messages: RateLimit {
                per_second: 10_000.0,
                burst: 20_000.0,
            },
            relay_bytes: RateLimit {
                per_second: 4.0 * 1024.0 * 1024.0,
                burst: 8.0 * 1024.0 * 1024.0,
            },
            max_relayed_requests: 64,
            commands: RateLimit {
                per_second: 20.0,
                burst: 40.0,
            },
            room_joins: RateLimit {
                per_second: 16.0,
                burst: 256.0,
            },
            join_notices: RateLimit {
                per_second: 1024.0,
                burst: 2048.0,
            },
            stall_timeout: Duration::from_secs(2),
            secret_seed: None,
            seed: 0,
        }
    }
}

/// A [`HubConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubConfigError {
    /// The control channel is not configured, or not ordered.
    ControlChannel(u8),
    /// `max_rooms` is 0 or above [`MAX_ROOMS`].
    MaxRooms(usize),
    /// A limit that must be at least 1 is 0, or a field limit exceeds 4,096 bytes.
    Limit(&'static str),
    /// `secret_seed` is missing.
    SecretSeedMissing,
    /// A full room's member list (`size` bytes, sent to each joiner) would not fit `max`:
    /// the endpoint's `max_message_size` or the control channel's `max_queued_bytes`.
    MemberListTooLarge {
        /// Bytes of the largest member list.
        size: usize,
        /// What it must fit.
        max: usize,
    },
    /// The endpoint runs without packet protection: the pair keys a hub hands out would
    /// cross the network in the clear.
    Unprotected,
    /// A member could be in more than its client keeps: more than 4,096 members a room,
    /// or `max_rooms_per_member` times `max_members_per_room` over 65,536, or times
    /// `max_metadata_len` over 16 MiB. (The client refuses such notices as a hostile hub's,
    /// and the two would be out of step.)
    MemberViewsTooLarge {
        /// `max_rooms_per_member`.
        rooms: usize,
        /// `max_members_per_room`.
        members: usize,
        /// `max_metadata_len`.
        metadata: usize,
    },
}

impl fmt::Display for HubConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubConfigError::ControlChannel(c) => write!(
                f,
                "control channel {c} must be an ordered channel of the endpoint's Config \
                 (hub::endpoint_config() has one at 4)"
            ),
            HubConfigError::MaxRooms(n) => {
                write!(f, "max_rooms {n} is out of range; use 1 to {MAX_ROOMS}")
            }
            HubConfigError::Limit(name) => {
                write!(
                    f,
                    "{name} must be at least 1 (and field lengths at most 4096)"
                )
            }
            HubConfigError::MemberViewsTooLarge {
                rooms,
                members,
                metadata,
            } => write!(
                f,
                "a member could be in {rooms} rooms of {members} members, {} entries with up \
                 to {} bytes of metadata; its client keeps at most {} members a room, {} \
                 entries and {} bytes: lower max_rooms_per_member, max_members_per_room or \
                 max_metadata_len",
                rooms.saturating_mul(*members),
                rooms.saturating_mul(*members).saturating_mul(*metadata),
                super::client::MAX_ROOM_MEMBERS,
                super::client::MAX_MEMBER_ENTRIES,
                super::client::MAX_MEMBER_BYTES,
            ),
            HubConfigError::SecretSeedMissing => {
                f.write_str("HubConfig::secret_seed is required: fill it with 32 bytes from the OS")
            }
            HubConfigError::MemberListTooLarge { size, max } => write!(
                f,
                "a full room's member list ({size} bytes) would not fit {max} bytes (the \
                 endpoint's max_message_size or the control channel's max_queued_bytes): \
                 lower max_members_per_room or max_metadata_len, or raise those"
            ),
            HubConfigError::Unprotected => f.write_str(
                "a hub needs a protected endpoint (Config::protection): the pair keys it hands \
                 members would otherwise cross the network in the clear",
            ),
        }
    }
}

/// What a hub did, counted. Drops are counted by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Rooms now.
    pub rooms: usize,
    /// Members connected now.
    pub members: usize,
    /// Rooms created since the start.
    pub rooms_created: u64,
    /// Copies of messages forwarded.
    pub relayed_messages: u64,
    /// Payload bytes forwarded, per copy.
    pub relayed_bytes: u64,
    /// Requests forwarded.
    pub relayed_requests: u64,
    /// Responses forwarded back.
    pub relayed_responses: u64,
    /// Relayed messages to a user not connected, or to a room that does not exist.
    pub dropped_unknown_target: u64,
    /// Relayed messages to a user the sender shares no room with, or to a room it is not in.
    pub dropped_no_shared_room: u64,
    /// Relayed messages over the sender's rate limits.
    pub dropped_rate_limited: u64,
    /// Relayed messages the hub could not queue (a recipient's queue is full; that recipient
    /// is disconnected as too slow).
    pub dropped_queue_full: u64,
    /// Relayed requests to a room, or over `max_relayed_requests`.
    pub dropped_requests: u64,
    /// Control messages that did not decode.
    pub bad_commands: u64,
    /// Requests refused, of every reason.
    pub refusals: u64,
    /// Members kicked by room owners.
    pub kicks: u64,
    /// Members disconnected for not reading.
    pub too_slow: u64,
    /// Notices a member's queue could not take (that member is disconnected as too slow).
    pub notices_dropped: u64,
    /// Approval deadlines held now (joins waiting, and answered ones not yet trimmed).
    pub approval_deadlines: usize,
}

/// One room, as [`Hub::rooms`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomInfo {
    /// Its id.
    pub id: RoomId,
    /// Its name.
    pub name: Bytes,
    /// Its owner's user id.
    pub owner: u16,
    /// Its members' user ids, oldest first.
    pub members: Vec<u16>,
}

/// A room opened or closed, as [`Hub::take_room_changes`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomChange {
    /// A member created the room.
    Opened {
        /// Its id.
        room: RoomId,
        /// Its name.
        name: Bytes,
        /// Its owner's user id.
        owner: u16,
    },
    /// The room closed (its last member left, or its owner closed it).
    Closed {
        /// Its id (which a later room may take).
        room: RoomId,
        /// Its name.
        name: Bytes,
    },
}

/// Room changes a [`Hub`] keeps for [`Hub::take_room_changes`]: past it, the log is given up
/// and the taker told to look at [`Hub::rooms`] instead (the log is bounded whether or not
/// anyone takes it).
const MAX_ROOM_CHANGES: usize = 4096;

#[derive(Debug)]
struct MemberState {
    conn: ConnectionHandle,
    /// Its address as the hub sees it (its NAT's mapping toward the hub).
    observed: SocketAddr,
    /// The addresses it announced (on its own network).
    local: Vec<SocketAddr>,
    key: Option<[u8; 32]>,
    client_id: Option<u64>,
    rooms: Vec<u16>,
    creates: Bucket,
    messages: Bucket,
    bytes: Bucket,
    commands: Bucket,
    /// Notices its joins may cost (`HubConfig::join_notices`).
    join_notices: Bucket,
    /// Since when everything queued for it has found its queue full (`None`: it drains).
    full_since: Option<Instant>,
    relayed_requests: usize,
    /// The open rooms it created (`HubConfig::max_owned_rooms`), whoever owns them now.
    created: Vec<u16>,
    /// Rooms it waits in for the owner's approval (`HubConfig::max_pending_asks`): its
    /// waits are found without a walk over every room.
    asking: Vec<u16>,
}

/// Members by user id. The server hands the ids out (a peer never picks one), densely from
/// 1, so a table indexed by id serves every relay without hashing; at most 49,151 slots of
/// 8 bytes.
#[derive(Debug, Default)]
struct Members {
    slots: Vec<Option<Box<MemberState>>>,
    len: usize,
}

impl Members {
    fn get(&self, user: &u16) -> Option<&MemberState> {
        self.slots.get(usize::from(*user))?.as_deref()
    }

    fn get_mut(&mut self, user: &u16) -> Option<&mut MemberState> {
        self.slots.get_mut(usize::from(*user))?.as_deref_mut()
    }

    fn contains_key(&self, user: &u16) -> bool {
        self.get(user).is_some()
    }

    fn insert(&mut self, user: u16, member: MemberState) {
        let i = usize::from(user);
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(Box::new(member)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, user: &u16) -> Option<MemberState> {
        let member = self.slots.get_mut(usize::from(*user))?.take()?;
        self.len -= 1;
        Some(*member)
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[derive(Debug)]
struct PendingJoin {
    user: u16,
    op: u32,
    metadata: Bytes,
    deadline: Instant,
}

#[derive(Debug)]
struct Room {
    name: Bytes,
    owner: u16,
    password: Bytes,
    flags: u8,
    max_members: usize,
    /// Members oldest first, with the metadata each gave.
    members: Vec<(u16, Bytes)>,
    pending: Vec<PendingJoin>,
    /// Joins it takes (`HubConfig::room_joins`).
    joins: Bucket,
    /// The member that created it, while it is connected (its `created` lists the room).
    creator: Option<u16>,
    /// The address its creator had, as `charge_key` has it: the room counts against it
    /// (`HubConfig::max_owned_rooms_per_ip`) until it closes.
    charged_to: IpAddr,
}

impl Room {
    fn has(&self, user: u16) -> bool {
        self.members.iter().any(|(u, _)| *u == user)
    }
}

/// A request forwarded to its target, waiting for the target's response.
#[derive(Debug)]
struct Relayed {
    conn: ConnectionHandle,
    request: IncomingRequest,
    from: u16,
    /// The target's connection: if it ends, no response or timeout will come.
    to: ConnectionHandle,
}

/// The hub: rooms, member lists and the relay, driven by its endpoint's events. See the
/// [module docs](super).
pub struct Hub {
    config: HubConfig,
    rooms: Vec<Option<Room>>,
    /// Rooms opened and closed since `take_room_changes` (see `MAX_ROOM_CHANGES`).
    room_changes: Vec<RoomChange>,
    /// Changes were given up since `take_room_changes`.
    room_changes_lost: bool,
    free_rooms: Vec<u16>,
    by_name: HashMap<Bytes, u16>,
    members: Members,
    by_conn: HashMap<ConnectionHandle, u16>,
    /// Rooms each pair of members shares (lower id first); a pair is introduced when this
    /// goes from 0 to 1.
    pairs: HashMap<(u16, u16), u16>,
    relayed: HashMap<RequestId, Relayed>,
    /// The same requests by their target's connection: when it ends, its own are found
    /// without a walk over every request the hub relays.
    relayed_by_target: BTreeSet<(ConnectionHandle, RequestId)>,
    approvals: BinaryHeap<Reverse<(Instant, u16, u16)>>,
    /// Joins waiting for approval, in all rooms (what `approvals` is trimmed to).
    pending_joins: usize,
    /// Open rooms created from each address (`Room::charged_to`); an address with none has
    /// no entry.
    owned_by_ip: HashMap<IpAddr, u32>,
    secrets: Secrets,
    /// Members found too slow while a notice or relay was being queued; disconnected once
    /// the current event is handled.
    slow: Vec<u16>,
    /// The time of the event or timeout being handled.
    now: Instant,
    stats: HubStats,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Whether a member may announce `addr` as its own: a private, shared-address (carrier
/// NAT), link-local or unique-local address, or loopback when the hub sees the member on
/// loopback too; never a relay address, a multicast or an unspecified one, nor port 0.
fn is_local_address(addr: &SocketAddr, observed: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match addr.ip() {
        core::net::IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            ip.is_private()
                || ip.is_link_local()
                || (a == 100 && (64..128).contains(&b))
                || (ip.is_loopback() && observed.ip().is_loopback())
        }
        core::net::IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            (first & 0xffc0) == 0xfe80
                || (first & 0xfe00) == 0xfc00
                || (ip.is_loopback() && observed.ip().is_loopback())
        }
    }
}

/// What a created room counts against (`HubConfig::max_owned_rooms_per_ip`): an IPv4
/// address (also one mapped into IPv6), or an IPv6 address's /56, what one home line is
/// commonly given (a /64 each, 256 of them, would let one line fill the hub).
fn charge_key(ip: IpAddr) -> IpAddr {
    match ip_key(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 72) - 1)).into()),
        v4 => v4,
    }
}

fn pair(a: u16, b: u16) -> (u16, u16) {
    (a.min(b), a.max(b))
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Hub {
    /// A hub for an endpoint with configuration `endpoint` (protected, with its control
    /// channel ordered; the error says what does not fit).
    pub fn new(mut config: HubConfig, endpoint: &Config) -> Result<Self, HubConfigError> {
        if endpoint.protection == crate::Protection::None {
            return Err(HubConfigError::Unprotected);
        }
        let control = endpoint.channels.get(usize::from(config.control_channel));
        if control.is_none_or(|c| c.kind != DeliveryKind::Ordered) {
            return Err(HubConfigError::ControlChannel(config.control_channel));
        }
        if config.max_rooms == 0 || config.max_rooms > MAX_ROOMS {
            return Err(HubConfigError::MaxRooms(config.max_rooms));
        }
        for (name, v) in [
            ("max_rooms_per_member", config.max_rooms_per_member),
            ("max_members_per_room", config.max_members_per_room),
            ("max_name_len", config.max_name_len),
            ("max_relayed_requests", config.max_relayed_requests),
            ("max_owned_rooms", config.max_owned_rooms),
            ("max_owned_rooms_per_ip", config.max_owned_rooms_per_ip),
            ("max_pending_asks", config.max_pending_asks),
        ] {
            if v == 0 {
                return Err(HubConfigError::Limit(name));
            }
        }
        if config.max_name_len > MAX_FIELD || config.max_metadata_len > MAX_FIELD {
            return Err(HubConfigError::Limit("max_name_len/max_metadata_len"));
        }
        // A joiner learns the room from one notice: a room the hub can fill must be one it
        // can describe (else the joiner, in the room already, would never hear it joined).
        let size = super::control::joined_len_at_most(
            config.max_members_per_room,
            config.max_name_len,
            config.max_metadata_len,
        );
        let queue = control.map_or(0, |c| c.max_queued_bytes);
        let max = endpoint
            .max_message_size
            .min(queue.saturating_sub(crate::messaging::channel::QUEUE_ENTRY_BYTES));
        if size > max {
            return Err(HubConfigError::MemberListTooLarge { size, max });
        }
        // What a member holds of the rooms it is in: more than its client keeps would leave
        // the two out of step (the member refuses the notice as a hostile hub's).
        let entries = config
            .max_rooms_per_member
            .saturating_mul(config.max_members_per_room);
        if config.max_members_per_room > super::client::MAX_ROOM_MEMBERS
            || entries > super::client::MAX_MEMBER_ENTRIES
            || entries.saturating_mul(config.max_metadata_len) > super::client::MAX_MEMBER_BYTES
        {
            return Err(HubConfigError::MemberViewsTooLarge {
                rooms: config.max_rooms_per_member,
                members: config.max_members_per_room,
                metadata: config.max_metadata_len,
            });
        }
        // (Below it a join to a full room could never be paid for.)
        config.join_notices.burst = config
            .join_notices
            .burst
            .max(config.max_members_per_room as f64);
        let seed = config
            .secret_seed
            .take()
            .ok_or(HubConfigError::SecretSeedMissing)?;
        let (secrets, prf) = Secrets::new(config.seed, Some(&seed.0));
        let hasher = SeededState::new(&Prf::from_key(prf));
        Ok(Hub {
            config,
            rooms: Vec::new(),
            free_rooms: Vec::new(),
            room_changes: Vec::new(),
            room_changes_lost: false,
            by_name: HashMap::with_hasher(hasher),
            members: Members::default(),
            by_conn: HashMap::with_hasher(hasher),
            pairs: HashMap::with_hasher(hasher),
            relayed: HashMap::with_hasher(hasher),
            relayed_by_target: BTreeSet::new(),
            approvals: BinaryHeap::new(),
            pending_joins: 0,
            owned_by_ip: HashMap::with_hasher(hasher),
            secrets,
            slow: Vec::new(),
            now: Instant::ZERO,
            stats: HubStats::default(),
        })
    }

    /// The configuration (its `secret_seed` reads `None`: the hub keeps no copy).
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// Every room now.
    pub fn rooms(&self) -> impl Iterator<Item = RoomInfo> + '_ {
        self.rooms.iter().enumerate().filter_map(|(id, r)| {
            let r = r.as_ref()?;
            Some(RoomInfo {
                id: RoomId(id as u16),
                name: r.name.clone(),
                owner: r.owner,
                members: r.members.iter().map(|(u, _)| *u).collect(),
            })
        })
    }

    /// Moves the rooms opened and closed since the last call into `into`, oldest first, so
    /// a server reporting them spends nothing per room it did not change. False if some
    /// were given up (more than 4,096 between two calls): read [`rooms`](Self::rooms)
    /// instead.
    pub fn take_room_changes(&mut self, into: &mut Vec<RoomChange>) -> bool {
        into.append(&mut self.room_changes);
        !core::mem::take(&mut self.room_changes_lost)
    }

    fn log_room_change(&mut self, change: RoomChange) {
        if self.room_changes_lost {
            return;
        }
        if self.room_changes.len() >= MAX_ROOM_CHANGES {
            self.room_changes = Vec::new();
            self.room_changes_lost = true;
            return;
        }
        self.room_changes.push(change);
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work (a join awaiting approval
    /// expires).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.approvals.peek().map(|Reverse((t, ..))| *t)
    }

    /// Refuses joins whose owner did not answer in time.
    pub fn handle_timeout(&mut self, ep: &mut Endpoint, now: Instant) {
        self.now = self.now.max(now);
        while let Some(Reverse((at, room, user))) = self.approvals.peek().copied() {
            if at > now {
                break;
            }
            self.approvals.pop();
            let Some(Some(r)) = self.rooms.get_mut(usize::from(room)) else {
                continue;
            };
            let Some(i) = r
                .pending
                .iter()
                .position(|p| p.user == user && p.deadline <= now)
            else {
                continue;
            };
            let p = r.pending.remove(i);
            self.ask_ended(p.user, room);
            self.refuse(ep, p.user, p.op, Refusal::NotApproved);
        }
        self.disconnect_slow(ep, now);
        self.stats.approval_deadlines = self.approvals.len();
    }

    /// Recounts what the hub keeps counts of (joins waiting for approval, each member's
    /// waits and created rooms, rooms created per address) and says which count drifted.
    #[cfg(any(fuzzing, feature = "fuzzing"))]
    pub(crate) fn check_counts(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let open = || {
            self.rooms
                .iter()
                .enumerate()
                .filter_map(|(id, r)| Some((id as u16, r.as_ref()?)))
        };
        let pending: usize = open().map(|(_, r)| r.pending.len()).sum();
        if pending != self.pending_joins {
            return Err(format!(
                "{pending} joins wait, {} counted",
                self.pending_joins
            ));
        }
        // The open rooms `of` says, against a member's list of them.
        let compare = |what: &str, of: &dyn Fn(&Room) -> bool, listed: &[u16]| {
            let mut found: Vec<u16> = open().filter(|(_, r)| of(r)).map(|(id, _)| id).collect();
            let mut listed = listed.to_vec();
            found.sort_unstable();
            listed.sort_unstable();
            (found != listed).then(|| format!("{what} {found:?}, listed {listed:?}"))
        };
        for (user, m) in self.members.slots.iter().enumerate() {
            let Some(m) = m else { continue };
            let user = user as u16;
            let waits = |r: &Room| r.pending.iter().any(|p| p.user == user);
            if let Some(e) = compare("waits in", &waits, &m.asking) {
                return Err(format!("{user} {e}"));
            }
            if let Some(e) = compare("created", &|r: &Room| r.creator == Some(user), &m.created) {
                return Err(format!("{user} {e}"));
            }
        }
        if let Some((id, r)) =
            open().find(|(_, r)| r.creator.is_some_and(|c| !self.members.contains_key(&c)))
        {
            return Err(format!(
                "room {id} names {:?}, gone, as its creator",
                r.creator
            ));
        }
        let mut by_ip: Vec<(IpAddr, u32)> = Vec::new();
        for (_, r) in open() {
            match by_ip.iter_mut().find(|(ip, _)| *ip == r.charged_to) {
                Some((_, n)) => *n += 1,
                None => by_ip.push((r.charged_to, 1)),
            }
        }
        if by_ip.len() != self.owned_by_ip.len()
            || by_ip
                .iter()
                .any(|(ip, n)| self.owned_by_ip.get(ip) != Some(n))
        {
            return Err(format!(
                "rooms by address {by_ip:?}, counted {:?}",
                self.owned_by_ip
            ));
        }
        Ok(())
    }

    /// Handles one event of the hub's endpoint. Returns what is not only the hub's business,
    /// for the application running beside the hub: connects and disconnects (after the hub
    /// has seen them), messages and requests without a redirect target on application
    /// channels, and responses to the application's own requests.
    pub fn handle_event(&mut self, ep: &mut Endpoint, now: Instant, event: Event) -> Option<Event> {
        self.now = self.now.max(now);
        let control = self.config.control_channel;
        let passed = match event {
            Event::Connected {
                conn,
                remote,
                ref identity,
                ..
            } => {
                let peer_user_id = identity.user_id;
                let limits = &self.config;
                self.by_conn.insert(conn, peer_user_id);
                self.members.insert(
                    peer_user_id,
                    MemberState {
                        conn,
                        observed: remote,
                        local: Vec::new(),
                        key: identity.key.map(|k| k.0),
                        client_id: identity.token.as_ref().map(|t| t.client_id),
                        rooms: Vec::new(),
                        creates: Bucket::new(&limits.room_creates, now),
                        messages: Bucket::new(&limits.relay_messages, now),
                        bytes: Bucket::new(&limits.relay_bytes, now),
                        commands: Bucket::new(&limits.commands, now),
                        join_notices: Bucket::new(&limits.join_notices, now),
                        full_since: None,
                        relayed_requests: 0,
                        created: Vec::new(),
                        asking: Vec::new(),
                    },
                );
                self.stats.members = self.members.len();
                Some(event)
            }
            Event::Disconnected { conn, .. } => {
                if let Some(user) = self.user_of(conn) {
                    self.remove_member(ep, now, user, LeaveReason::Disconnected);
                }
                // Requests forwarded on it die with it: their askers may ask again.
                let ended: Vec<RequestId> = self
                    .relayed_by_target
                    .range((conn, RequestId(0))..=(conn, RequestId(u64::MAX)))
                    .map(|&(_, id)| id)
                    .collect();
                for id in ended {
                    if let Some(r) = self.take_relayed(id) {
                        if let Some(m) = self.members.get_mut(&r.from) {
                            m.relayed_requests = m.relayed_requests.saturating_sub(1);
                        }
                    }
                }
                debug_assert_eq!(self.relayed.len(), self.relayed_by_target.len());
                Some(event)
            }
            Event::Message {
                conn,
                channel,
                payload,
                ..
            } if channel == control => {
                // (A member owns what it sends: the endpoint drops any other owner.)
                if let Some(owner) = self.user_of(conn) {
                    self.on_command(ep, now, conn, owner, &payload);
                }
                None
            }
            Event::Message {
                channel,
                relay:
                    Some(Relay {
                        owner,
                        target: Some(target),
                    }),
                payload,
                ..
            } => {
                self.relay_message(ep, now, owner, channel, target, payload);
                None
            }
            Event::Request {
                conn,
                request,
                relay:
                    Some(Relay {
                        owner,
                        target: Some(target),
                    }),
                payload,
            } => {
                self.relay_request(ep, now, conn, request, owner, target, payload);
                None
            }
            Event::Response { conn, id, payload } => match self.take_relayed(id) {
                Some(r) => {
                    // A response is relayed data like any other: the responder pays for it
                    // (else two members could move a 1 MiB answer per tiny request, past
                    // every relay limit). Refused, the asker times out on its own clock. An
                    // empty one (a member declining a request it does not take) is free:
                    // the asker paid for its request, which gets one response at most, and
                    // room mates sending junk requests must not drain the decliner's budget.
                    let responder = self.user_of(conn);
                    let paid = |hub: &mut Self, u| hub.allow_relay(u, now, 1, payload.len());
                    if responder.is_some_and(|u| payload.is_empty() || paid(self, u)) {
                        let payload = unshared(payload);
                        self.relay_response(ep, r, payload);
                    } else if let Some(m) = self.members.get_mut(&r.from) {
                        m.relayed_requests = m.relayed_requests.saturating_sub(1);
                    }
                    None
                }
                None => Some(Event::Response { conn, id, payload }),
            },
            Event::RequestTimedOut { conn, id } => match self.take_relayed(id) {
                Some(r) => {
                    // The asker times out on its own clock.
                    if let Some(m) = self.members.get_mut(&r.from) {
                        m.relayed_requests = m.relayed_requests.saturating_sub(1);
                    }
                    None
                }
                None => Some(Event::RequestTimedOut { conn, id }),
            },
            Event::PathChanged { conn, remote } => {
                if let Some(m) = self.user_of(conn).and_then(|u| self.members.get_mut(&u)) {
                    m.observed = remote;
                }
                Some(event)
            }
            other => Some(other),
        };
        self.disconnect_slow(ep, now);
        self.stats.approval_deadlines = self.approvals.len();
        passed
    }

    /// Rebuilds the approval deadlines from the joins still waiting when answered ones
    /// (whose entries stay until their deadline) make up most of them: join-and-refuse in a
    /// loop must not grow the heap.
    fn trim_approvals(&mut self) {
        if self.approvals.len() <= 64 {
            return;
        }
        if self.approvals.len() <= 2 * self.pending_joins + 64 {
            return;
        }
        self.approvals = self
            .rooms
            .iter()
            .enumerate()
            .filter_map(|(id, r)| Some((id as u16, r.as_ref()?)))
            .flat_map(|(id, r)| {
                r.pending
                    .iter()
                    .map(move |p| Reverse((p.deadline, id, p.user)))
            })
            .collect();
    }

    fn user_of(&self, conn: ConnectionHandle) -> Option<u16> {
        self.by_conn.get(&conn).copied()
    }

    /// Queues a notice to `user`. One that does not fit marks the member too slow at once:
    /// notices are changes to its view of its rooms (and a lost `PeerJoined` takes with it a
    /// pair key the hub does not keep), so a member that misses one is out of step for good.
    /// Disconnected, it can connect and join again with whole member lists. (Only changes
    /// fill the control queue: commands, which the hub rate-limits, not the relayed traffic.)
    fn notify(&mut self, ep: &mut Endpoint, user: u16, notice: &Notice) {
        let Some(m) = self.members.get(&user) else {
            return;
        };
        match ep.send(m.conn, self.config.control_channel, notice.encode()) {
            Ok(()) => {
                self.queued(user, Ok(()));
            }
            // Gone: its Disconnected event removes it.
            Err(SendError::UnknownConnection) => {}
            Err(_) => {
                self.stats.notices_dropped += 1;
                self.mark_slow(user);
            }
        }
    }

    /// Notes how queueing something for `user` went: a full queue that has not drained for
    /// `stall_timeout` marks the member too slow. A refusal on an empty queue says only that
    /// the message is larger than the whole queue: it starts no clock, so a room mate
    /// sending such messages cannot get a member cut off.
    fn queued(&mut self, user: u16, sent: Result<(), SendError>) -> bool {
        let Some(m) = self.members.get_mut(&user) else {
            return false;
        };
        match sent {
            Ok(()) => {
                m.full_since = None;
                true
            }
            Err(SendError::QueueFull {
                queued_bytes: 0, ..
            }) => {
                self.stats.dropped_queue_full += 1;
                false
            }
            Err(SendError::QueueFull { .. }) => {
                self.stats.dropped_queue_full += 1;
                let since = *m.full_since.get_or_insert(self.now);
                if self.now.saturating_duration_since(since) >= self.config.stall_timeout {
                    self.mark_slow(user);
                }
                false
            }
            Err(_) => false,
        }
    }

    /// Marks `user` to be disconnected as too slow after the event in hand.
    fn mark_slow(&mut self, user: u16) {
        if !self.slow.contains(&user) {
            self.slow.push(user);
        }
    }

    fn disconnect_slow(&mut self, ep: &mut Endpoint, now: Instant) {
        while let Some(user) = self.slow.pop() {
            if let Some(conn) = self.members.get(&user).map(|m| m.conn) {
                self.stats.too_slow += 1;
                self.remove_member(ep, now, user, LeaveReason::TooSlow);
                ep.disconnect(conn, CLOSE_TOO_SLOW);
            }
        }
    }

    fn refuse(&mut self, ep: &mut Endpoint, user: u16, op: u32, reason: Refusal) {
        self.stats.refusals += 1;
        let reason = reason.to_wire();
        self.notify(ep, user, &Notice::Refused { op, reason });
    }

    /// How `user` is described to another member; an introduction (with a pair key) also
    /// says where it may be reached directly.
    fn entry(&self, user: u16, metadata: &Bytes, pair_key: Option<[u8; 32]>) -> MemberEntry {
        let m = self.members.get(&user);
        let addrs = match (m, pair_key) {
            (Some(m), Some(_)) => core::iter::once(m.observed)
                .chain(m.local.iter().copied())
                .collect(),
            _ => Vec::new(),
        };
        MemberEntry {
            user,
            key: m.and_then(|m| m.key),
            client_id: m.and_then(|m| m.client_id),
            metadata: metadata.clone(),
            pair_key,
            addrs,
        }
    }

    /// Counts one more room shared by `a` and `b`; true if it is their first.
    fn pair_up(&mut self, a: u16, b: u16) -> bool {
        let count = self.pairs.entry(pair(a, b)).or_insert(0);
        *count += 1;
        *count == 1
    }

    fn unpair(&mut self, a: u16, b: u16) {
        let key = pair(a, b);
        if let Some(count) = self.pairs.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.pairs.remove(&key);
            }
        }
    }

    fn room_mut(&mut self, room: u16) -> Option<&mut Room> {
        self.rooms.get_mut(usize::from(room))?.as_mut()
    }

    fn on_command(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        conn: ConnectionHandle,
        user: u16,
        payload: &Bytes,
    ) {
        if self.user_of(conn) != Some(user) {
            return; // not a member (the endpoint checked the owner field)
        }
        let Some(command) = Command::decode(payload) else {
            self.stats.bad_commands += 1;
            return;
        };
        let limit = &self.config.commands;
        if !self
            .members
            .get_mut(&user)
            .is_some_and(|m| m.commands.take(limit, now, 1.0))
        {
            return self.refuse(ep, user, command.op(), Refusal::RateLimited);
        }
        match command {
            Command::Create {
                op,
                name,
                password,
                metadata,
                max_members,
                flags,
            } => self.create(
                ep,
                now,
                user,
                op,
                name,
                password,
                metadata,
                max_members,
                flags,
            ),
            Command::Join {
                op,
                name,
                password,
                metadata,
            } => self.join(ep, now, user, op, name, password, metadata),
            Command::Leave { op, room } => {
                if self.room_mut(room).is_some_and(|r| r.has(user)) {
                    self.leave(ep, now, room, user, LeaveReason::Left, true);
                    self.notify(ep, user, &Notice::Done { op });
                } else {
                    self.refuse(ep, user, op, Refusal::NotMember);
                }
            }
            Command::Kick {
                op,
                room,
                user: kicked,
            } => match self.owner_check(room, user) {
                Err(reason) => self.refuse(ep, user, op, reason),
                Ok(()) if kicked == user || !self.room_mut(room).is_some_and(|r| r.has(kicked)) => {
                    self.refuse(ep, user, op, Refusal::NotMember)
                }
                Ok(()) => {
                    self.stats.kicks += 1;
                    self.leave(ep, now, room, kicked, LeaveReason::Kicked, true);
                    self.notify(ep, user, &Notice::Done { op });
                }
            },
            Command::Close { op, room } => match self.owner_check(room, user) {
                Err(reason) => self.refuse(ep, user, op, reason),
                Ok(()) => {
                    self.close(ep, room, LeaveReason::ClosedByOwner);
                    self.notify(ep, user, &Notice::Done { op });
                }
            },
            Command::Approve {
                op,
                room,
                user: joiner,
                accept,
            } => match self.owner_check(room, user) {
                Err(reason) => self.refuse(ep, user, op, reason),
                Ok(()) => self.approve(ep, user, op, room, joiner, accept),
            },
            Command::Announce { op, addrs } => {
                let Some(m) = self.members.get_mut(&user) else {
                    return;
                };
                // Only addresses on a local network: the hub passes them to every member
                // this one meets, whose links probe them unasked, so a public address could
                // aim those probes at anyone.
                // (Mapped IPv4 addresses as the IPv4 ones they are, as everywhere else.)
                let addrs: Vec<SocketAddr> =
                    addrs.into_iter().map(crate::canonical_address).collect();
                if !addrs.iter().all(|a| is_local_address(a, m.observed)) {
                    return self.refuse(ep, user, op, Refusal::Invalid);
                }
                m.local = addrs;
                self.notify(ep, user, &Notice::Done { op });
            }
        }
    }

    fn owner_check(&mut self, room: u16, user: u16) -> Result<(), Refusal> {
        match self.room_mut(room) {
            None => Err(Refusal::UnknownRoom),
            Some(r) if r.owner != user => Err(Refusal::NotOwner),
            Some(_) => Ok(()),
        }
    }

    fn fields_fit(&self, name: &Bytes, password: &Bytes, metadata: &Bytes) -> bool {
        !name.is_empty()
            && name.len() <= self.config.max_name_len
            && password.len() <= self.config.max_name_len
            && metadata.len() <= self.config.max_metadata_len
    }

    #[allow(clippy::too_many_arguments)] // one per field of the command
    fn create(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        user: u16,
        op: u32,
        name: Bytes,
        password: Bytes,
        metadata: Bytes,
        max_members: u16,
        flags: u8,
    ) {
        let refusal = if !self.fields_fit(&name, &password, &metadata)
            || flags & !(FLAG_APPROVAL | FLAG_CLOSE_WITH_OWNER) != 0
        {
            Some(Refusal::Invalid)
        } else if self.members.get(&user).is_none_or(|m| {
            m.created.len() >= self.config.max_owned_rooms
                || self
                    .owned_by_ip
                    .get(&charge_key(m.observed.ip()))
                    .is_some_and(|&n| n as usize >= self.config.max_owned_rooms_per_ip)
        }) {
            // (Before the create is charged: a member at its limit asks in vain.)
            Some(Refusal::TooManyOwned)
        } else if !self
            .members
            .get_mut(&user)
            .is_some_and(|m| m.creates.take(&self.config.room_creates, now, 1.0))
        {
            Some(Refusal::RateLimited)
        } else if self
            .members
            .get(&user)
            .is_none_or(|m| m.rooms.len() >= self.config.max_rooms_per_member)
        {
            Some(Refusal::TooManyRooms)
        } else if self.by_name.contains_key(&name) {
            Some(Refusal::RoomExists)
        } else if self.stats.rooms >= self.config.max_rooms {
            Some(Refusal::HubFull)
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.refuse(ep, user, op, reason);
        }
        let id = match self.free_rooms.pop() {
            Some(id) => id,
            None => {
                self.rooms.push(None);
                (self.rooms.len() - 1) as u16
            }
        };
        let Some(charged_to) = self.members.get_mut(&user).map(|m| {
            m.created.push(id);
            charge_key(m.observed.ip())
        }) else {
            return;
        };
        *self.owned_by_ip.entry(charged_to).or_insert(0) += 1;
        let limit = self.config.max_members_per_room;
        let max_members = match usize::from(max_members) {
            0 => limit,
            n => n.min(limit),
        };
        self.rooms[usize::from(id)] = Some(Room {
            name: name.clone(),
            owner: user,
            password,
            flags,
            max_members,
            members: Vec::new(),
            pending: Vec::new(),
            joins: Bucket::new(&self.config.room_joins, now),
            creator: Some(user),
            charged_to,
        });
        self.by_name.insert(name.clone(), id);
        self.stats.rooms += 1;
        self.stats.rooms_created += 1;
        self.log_room_change(RoomChange::Opened {
            room: RoomId(id),
            name,
            owner: user,
        });
        self.add_member(ep, id, user, op, metadata);
    }

    #[allow(clippy::too_many_arguments)] // one per field of the command
    fn join(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        user: u16,
        op: u32,
        name: Bytes,
        password: Bytes,
        metadata: Bytes,
    ) {
        if !self.fields_fit(&name, &password, &metadata) {
            return self.refuse(ep, user, op, Refusal::Invalid);
        }
        let Some(&id) = self.by_name.get(&name) else {
            return self.refuse(ep, user, op, Refusal::UnknownRoom);
        };
        let (in_rooms, asks) = self
            .members
            .get(&user)
            .map_or((usize::MAX, usize::MAX), |m| {
                (m.rooms.len(), m.asking.len())
            });
        let max_asks = self.config.max_pending_asks;
        let (max_rooms, max_pending, timeout) = (
            self.config.max_rooms_per_member,
            self.config.max_pending_joins,
            self.config.approval_timeout,
        );
        let (joins, notices) = (self.config.room_joins, self.config.join_notices);
        let notices_left = self
            .members
            .get_mut(&user)
            .map_or(0.0, |m| m.join_notices.refill(&notices, now));
        let Some(room) = self.room_mut(id) else {
            return self.refuse(ep, user, op, Refusal::UnknownRoom);
        };
        let copies = room.members.len() as f64;
        let refusal = if room.has(user) || room.pending.iter().any(|p| p.user == user) {
            Some(Refusal::AlreadyMember)
        } else if !equal_in_constant_time(&room.password, &password) {
            Some(Refusal::WrongPassword)
        } else if in_rooms >= max_rooms {
            Some(Refusal::TooManyRooms)
        } else if room.members.len() >= room.max_members {
            Some(Refusal::RoomFull)
        } else if room.flags & FLAG_APPROVAL != 0 && asks >= max_asks {
            Some(Refusal::TooManyAsks)
        } else if room.flags & FLAG_APPROVAL != 0 && room.pending.len() >= max_pending {
            Some(Refusal::ApprovalQueueFull)
        } else if room.flags & FLAG_APPROVAL == 0
            && (notices_left < copies || !room.joins.take(&joins, now, 1.0))
        {
            // (Last: only a join that would otherwise be taken spends the room's budget and
            // the joiner's notices; in a room that approves its joins, the approval does.)
            Some(Refusal::RateLimited)
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.refuse(ep, user, op, reason);
        }

        if room.flags & FLAG_APPROVAL != 0 {
            let deadline = now + timeout;
            room.pending.push(PendingJoin {
                user,
                op,
                metadata: metadata.clone(),
                deadline,
            });
            let owner = room.owner;
            self.pending_joins += 1;
            if let Some(m) = self.members.get_mut(&user) {
                m.asking.push(id);
            }
            self.approvals.push(Reverse((deadline, id, user)));
            self.trim_approvals();
            let notice = Notice::JoinRequested {
                room: id,
                user,
                metadata,
            };
            self.notify(ep, owner, &notice);
            return;
        }
        if let Some(m) = self.members.get_mut(&user) {
            m.join_notices.tokens -= copies;
        }
        self.add_member(ep, id, user, op, metadata);
    }

    fn approve(
        &mut self,
        ep: &mut Endpoint,
        owner: u16,
        op: u32,
        room: u16,
        joiner: u16,
        accept: bool,
    ) {
        let connected = self.members.contains_key(&joiner);
        let in_rooms = self
            .members
            .get(&joiner)
            .map_or(usize::MAX, |m| m.rooms.len());
        let max_rooms = self.config.max_rooms_per_member;
        let (joins, now) = (self.config.room_joins, self.now);
        let Some(r) = self.room_mut(room) else {
            return self.refuse(ep, owner, op, Refusal::UnknownRoom);
        };
        let Some(i) = r.pending.iter().position(|p| p.user == joiner) else {
            return self.refuse(ep, owner, op, Refusal::NotMember);
        };
        let p = r.pending.remove(i);
        let full = r.members.len() >= r.max_members;
        let copies = r.members.len() as f64;
        self.ask_ended(joiner, room);
        let notices = self.config.join_notices;
        let notices_left = self
            .members
            .get_mut(&joiner)
            .map_or(0.0, |m| m.join_notices.refill(&notices, now));
        self.notify(ep, owner, &Notice::Done { op });
        if !connected {
            return;
        }
        if !accept {
            self.refuse(ep, joiner, p.op, Refusal::NotApproved);
        } else if full {
            self.refuse(ep, joiner, p.op, Refusal::RoomFull);
        } else if in_rooms >= max_rooms {
            self.refuse(ep, joiner, p.op, Refusal::TooManyRooms);
        } else if notices_left < copies
            || !self
                .room_mut(room)
                .is_some_and(|r| r.joins.take(&joins, now, 1.0))
        {
            self.refuse(ep, joiner, p.op, Refusal::RateLimited);
        } else {
            if let Some(m) = self.members.get_mut(&joiner) {
                m.join_notices.tokens -= copies;
            }
            self.add_member(ep, room, joiner, p.op, p.metadata);
        }
    }

    /// Puts `user` in `room`: introduces it to every member it shares no other room with,
    /// tells them, and sends it the member list.
    fn add_member(&mut self, ep: &mut Endpoint, room: u16, user: u16, op: u32, metadata: Bytes) {
        let Some(r) = self.room_mut(room) else {
            return;
        };
        let others = r.members.clone();
        r.members.push((user, metadata.clone()));
        let (owner, name) = (r.owner, r.name.clone());
        if let Some(m) = self.members.get_mut(&user) {
            m.rooms.push(room);
        }
        let mut members = Vec::with_capacity(others.len() + 1);
        for (other, other_metadata) in &others {
            let pair_key = self.pair_up(user, *other).then(|| self.secrets.fresh_key());
            members.push(self.entry(*other, other_metadata, pair_key));
            let notice = Notice::PeerJoined {
                room,
                member: self.entry(user, &metadata, pair_key),
            };
            self.notify(ep, *other, &notice);
        }
        members.push(self.entry(user, &metadata, None));
        let joined = Notice::Joined {
            op,
            room,
            owner,
            name,
            members,
        };
        self.notify(ep, user, &joined);
    }

    /// Takes `user` out of `room`, telling the others (and the user, if `tell_self`); closes
    /// the room when it empties or when its owner leaves a room that closes with its owner.
    fn leave(
        &mut self,
        ep: &mut Endpoint,
        _now: Instant,
        room: u16,
        user: u16,
        reason: LeaveReason,
        tell_self: bool,
    ) {
        let Some(r) = self.room_mut(room) else {
            return;
        };
        let Some(i) = r.members.iter().position(|(u, _)| *u == user) else {
            return;
        };
        r.members.remove(i);
        let was_owner = r.owner == user;
        let closes = was_owner && (r.flags & FLAG_CLOSE_WITH_OWNER != 0 || r.members.is_empty());
        let others: Vec<u16> = r.members.iter().map(|(u, _)| *u).collect();
        // The joins the old owner left unanswered are put to the new one.
        let mut asks = Vec::new();
        if was_owner && !closes {
            r.owner = others[0];
            asks = r
                .pending
                .iter()
                .map(|p| Notice::JoinRequested {
                    room,
                    user: p.user,
                    metadata: p.metadata.clone(),
                })
                .collect();
        }
        if let Some(m) = self.members.get_mut(&user) {
            m.rooms.retain(|x| *x != room);
        }
        for &o in &others {
            self.unpair(user, o);
        }
        if tell_self {
            let reason = reason.to_wire();
            self.notify(ep, user, &Notice::RoomLeft { room, reason });
        }
        if closes {
            return self.close(ep, room, LeaveReason::OwnerLeft);
        }
        for &o in &others {
            let reason = reason.to_wire();
            self.notify(ep, o, &Notice::PeerLeft { room, user, reason });
            if was_owner {
                self.notify(
                    ep,
                    o,
                    &Notice::OwnerChanged {
                        room,
                        owner: others[0],
                    },
                );
            }
        }
        for ask in &asks {
            self.notify(ep, others[0], ask);
        }
    }

    /// Closes `room`: every member is told it left with `reason`; pending joins are refused.
    fn close(&mut self, ep: &mut Endpoint, room: u16, reason: LeaveReason) {
        let Some(r) = self.rooms.get_mut(usize::from(room)).and_then(Option::take) else {
            return;
        };
        self.by_name.remove(&r.name);
        self.free_rooms.push(room);
        self.stats.rooms -= 1;
        if let Some(m) = r.creator.and_then(|c| self.members.get_mut(&c)) {
            m.created.retain(|&x| x != room);
        }
        self.uncharge(r.charged_to);
        self.log_room_change(RoomChange::Closed {
            room: RoomId(room),
            name: r.name.clone(),
        });
        for (i, (a, _)) in r.members.iter().enumerate() {
            for (b, _) in &r.members[i + 1..] {
                self.unpair(*a, *b);
            }
        }
        for (u, _) in &r.members {
            if let Some(m) = self.members.get_mut(u) {
                m.rooms.retain(|x| *x != room);
            }
            let reason = reason.to_wire();
            self.notify(ep, *u, &Notice::RoomLeft { room, reason });
        }
        for p in r.pending {
            self.ask_ended(p.user, room);
            self.refuse(ep, p.user, p.op, Refusal::UnknownRoom);
        }
    }

    /// A room charged to `ip` closed.
    fn uncharge(&mut self, ip: IpAddr) {
        if let Some(n) = self.owned_by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.owned_by_ip.remove(&ip);
            }
        }
    }

    /// `user`'s wait for approval in `room` ended (answered, timed out, or the room closed).
    fn ask_ended(&mut self, user: u16, room: u16) {
        self.pending_joins = self.pending_joins.saturating_sub(1);
        if let Some(m) = self.members.get_mut(&user) {
            if let Some(i) = m.asking.iter().position(|&r| r == room) {
                m.asking.swap_remove(i);
            }
        }
    }

    /// Removes a member that is gone from the hub from all its rooms.
    fn remove_member(&mut self, ep: &mut Endpoint, now: Instant, user: u16, reason: LeaveReason) {
        let Some(m) = self.members.get(&user) else {
            return;
        };
        let rooms = m.rooms.clone();
        for room in rooms {
            self.leave(ep, now, room, user, reason, false);
        }
        // Its joins awaiting approval go too: they would hold places in the approval
        // queues until they expire.
        let asking = self
            .members
            .get_mut(&user)
            .map(|m| core::mem::take(&mut m.asking))
            .unwrap_or_default();
        for room in asking {
            if let Some(r) = self.room_mut(room) {
                let before = r.pending.len();
                r.pending.retain(|p| p.user != user);
                let gone = before - r.pending.len();
                self.pending_joins = self.pending_joins.saturating_sub(gone);
            }
        }
        if let Some(m) = self.members.remove(&user) {
            self.by_conn.remove(&m.conn);
            // The rooms it created and others kept stay charged to its address; the id it
            // leaves is handed out again, so they no longer name it.
            for room in m.created {
                if let Some(r) = self.room_mut(room) {
                    r.creator = None;
                }
            }
        }
        self.stats.members = self.members.len();
    }

    /// Spends the sender's relay budget for `copies` copies of `len` bytes.
    fn allow_relay(&mut self, from: u16, now: Instant, copies: usize, len: usize) -> bool {
        let Some(m) = self.members.get_mut(&from) else {
            return false;
        };
        let (msgs, bytes) = (&self.config.relay_messages, &self.config.relay_bytes);
        let (n, b) = (copies as f64, (copies * len) as f64);
        // Refill both, then spend from both or neither.
        let ok = m.messages.take(msgs, now, 0.0)
            && m.bytes.take(bytes, now, 0.0)
            && m.messages.tokens >= n
            && m.bytes.tokens >= b;
        if ok {
            m.messages.tokens -= n;
            m.bytes.tokens -= b;
        } else {
            self.stats.dropped_rate_limited += 1;
        }
        ok
    }

    /// Takes one message from `from`'s relay budget for a relay dropped unsent (if it has
    /// one left), so drops cannot be sent without end.
    fn charge_dropped(&mut self, from: u16, now: Instant) {
        if let Some(m) = self.members.get_mut(&from) {
            let _ = m.messages.take(&self.config.relay_messages, now, 1.0);
        }
    }

    /// Who a relayed message from `from` to `target` reaches, or the drop counter it falls
    /// under.
    fn check_target(&mut self, from: u16, target: u16) -> Option<(Target, usize)> {
        let checked = match Target::from_wire(target) {
            None => None,
            Some(Target::User(u)) => match self.members.contains_key(&u) {
                false => None,
                true if u != from && self.pairs.contains_key(&pair(from, u)) => {
                    Some(Ok((Target::User(u), 1)))
                }
                true => Some(Err(())),
            },
            Some(t @ (Target::Room(r) | Target::RoomExceptSender(r))) => {
                // (Membership from the sender's own list, at most `max_rooms_per_member`
                // long, not the room's, which may hold thousands.)
                let member = |m: &MemberState| m.rooms.contains(&r.0);
                match self.rooms.get(usize::from(r.0)).and_then(Option::as_ref) {
                    None => None,
                    Some(_) if !self.members.get(&from).is_some_and(member) => Some(Err(())),
                    Some(room) => {
                        let except = matches!(t, Target::RoomExceptSender(_));
                        Some(Ok((t, room.members.len() - usize::from(except))))
                    }
                }
            }
        };
        match checked {
            None => {
                self.stats.dropped_unknown_target += 1;
                None
            }
            Some(Err(())) => {
                self.stats.dropped_no_shared_room += 1;
                None
            }
            Some(Ok(ok)) => Some(ok),
        }
    }

    fn relay_message(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        from: u16,
        channel: u8,
        wire_target: u16,
        payload: Bytes,
    ) {
        let Some((target, copies)) = self.check_target(from, wire_target) else {
            // Dropped, and still charged as one message: it cost a look-up.
            self.charge_dropped(from, now);
            return;
        };
        if copies == 0 || !self.allow_relay(from, now, copies, payload.len()) {
            return;
        }
        // (Once it is sure to be relayed, once for every copy.)
        let payload = unshared(payload);
        let (room, except) = match target {
            Target::User(u) => {
                self.relay_one(ep, u, channel, payload, from, wire_target);
                return;
            }
            Target::Room(r) => (r.0, None),
            Target::RoomExceptSender(r) => (r.0, Some(from)),
        };
        // Nothing in `relay_one` changes the room (the too slow leave after the event), so
        // its members can be read one at a time without holding the room borrowed.
        for k in 0.. {
            let member = self
                .rooms
                .get(usize::from(room))
                .and_then(Option::as_ref)
                .and_then(|r| r.members.get(k));
            let Some(&(u, _)) = member else {
                break;
            };
            if Some(u) != except {
                self.relay_one(ep, u, channel, payload.clone(), from, wire_target);
            }
        }
    }

    fn relay_one(
        &mut self,
        ep: &mut Endpoint,
        to: u16,
        channel: u8,
        payload: Bytes,
        from: u16,
        wire_target: u16,
    ) {
        let Some(m) = self.members.get(&to) else {
            return;
        };
        let len = payload.len() as u64;
        let sent = ep.relay(m.conn, channel, payload, from, Some(wire_target));
        if self.queued(to, sent) {
            self.stats.relayed_messages += 1;
            self.stats.relayed_bytes += len;
        }
    }

    #[allow(clippy::too_many_arguments)] // the request's fields
    fn relay_request(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        conn: ConnectionHandle,
        request: IncomingRequest,
        from: u16,
        wire_target: u16,
        payload: Bytes,
    ) {
        if request.channel == self.config.control_channel {
            // The hub's own channel carries its notices: relayed requests there would queue
            // in front of them (and crowd them out of the queue's room).
            self.stats.dropped_requests += 1;
            self.charge_dropped(from, now);
            return;
        }
        let Some((target, _)) = self.check_target(from, wire_target) else {
            self.charge_dropped(from, now);
            return;
        };
        let Target::User(to) = target else {
            // A request has one answer: a room cannot give it.
            self.stats.dropped_requests += 1;
            self.charge_dropped(from, now);
            return;
        };
        let max = self.config.max_relayed_requests;
        if self
            .members
            .get(&from)
            .is_none_or(|m| m.relayed_requests >= max)
        {
            self.stats.dropped_requests += 1;
            self.charge_dropped(from, now);
            return;
        }
        if !self.allow_relay(from, now, 1, payload.len()) {
            return;
        }
        let Some(to_conn) = self.members.get(&to).map(|m| m.conn) else {
            return;
        };
        let payload = unshared(payload);
        match ep.relay_request(
            now,
            to_conn,
            request.channel,
            payload,
            from,
            Some(wire_target),
        ) {
            Ok(id) => {
                self.queued(to, Ok(()));
                self.stats.relayed_requests += 1;
                self.relayed_by_target.insert((to_conn, id));
                self.relayed.insert(
                    id,
                    Relayed {
                        conn,
                        request,
                        from,
                        to: to_conn,
                    },
                );
                if let Some(m) = self.members.get_mut(&from) {
                    m.relayed_requests += 1;
                }
            }
            Err(e @ SendError::QueueFull { .. }) => {
                self.queued(to, Err(e));
            }
            Err(_) => self.stats.dropped_requests += 1,
        }
    }

    /// Takes a relayed request out of both tables.
    fn take_relayed(&mut self, id: RequestId) -> Option<Relayed> {
        let r = self.relayed.remove(&id)?;
        self.relayed_by_target.remove(&(r.to, id));
        Some(r)
    }

    fn relay_response(&mut self, ep: &mut Endpoint, r: Relayed, payload: Bytes) {
        if let Some(m) = self.members.get_mut(&r.from) {
            m.relayed_requests = m.relayed_requests.saturating_sub(1);
        }
        let sent = ep.respond(r.conn, r.request, payload);
        if self.queued(r.from, sent) {
            self.stats.relayed_responses += 1;
        }
    }
}

/// `payload` in a buffer of its own: what the hub relays waits in the targets' queues until
/// they acknowledge it, and as a slice of a buffer shared with other payloads (the event
/// queue's blocks) it would keep the whole buffer for a member slow to acknowledge.
fn unshared(payload: Bytes) -> Bytes {
    // (A short one is copied even when unique: it can be the last slice of a block the
    // event queue has moved on from, and would keep the whole block.)
    if payload.len() > crate::endpoint::events::COPIED_PAYLOAD && payload.is_unique() {
        payload
    } else {
        Bytes::copy_from_slice(&payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Created rooms are charged to an IPv4 address (also one mapped into IPv6) or to an
    /// IPv6 address's /56: the 256 /64s of one home line are one key.
    #[test]
    fn rooms_are_charged_to_an_ipv4_address_or_an_ipv6_slash_56() {
        let v6 = |s: &str| -> IpAddr { s.parse().expect("address") };
        let line = charge_key(v6("2001:db8:aa:bb00::1"));
        assert_eq!(charge_key(v6("2001:db8:aa:bbff:1:2:3:4")), line);
        assert_eq!(line, v6("2001:db8:aa:bb00::"));
        assert_ne!(charge_key(v6("2001:db8:aa:bc00::1")), line);
        assert_eq!(
            charge_key(v6("::ffff:192.0.2.7")),
            v6("192.0.2.7"),
            "a mapped IPv4 address is that address"
        );
        assert_ne!(charge_key(v6("192.0.2.7")), charge_key(v6("192.0.2.8")));
    }

    /// The log of room changes is bounded whether or not anyone takes it: past
    /// `MAX_ROOM_CHANGES` it is given up, and the next take says so (once).
    #[test]
    fn the_room_change_log_is_given_up_past_its_bound() {
        let config = HubConfig {
            secret_seed: Some(crate::config::SecretSeed::insecure_from_u64(1)),
            ..HubConfig::default()
        };
        let mut hub = Hub::new(config, &super::super::endpoint_config()).unwrap();
        let change = |i: usize| RoomChange::Closed {
            room: RoomId(i as u16),
            name: Bytes::new(),
        };
        let mut taken = Vec::new();
        hub.log_room_change(change(1));
        assert!(hub.take_room_changes(&mut taken));
        assert_eq!(taken, [change(1)]);
        for i in 0..=MAX_ROOM_CHANGES {
            hub.log_room_change(change(i));
        }
        assert!(
            hub.room_changes.capacity() <= MAX_ROOM_CHANGES,
            "its memory given back"
        );
        taken.clear();
        assert!(!hub.take_room_changes(&mut taken), "given up");
        assert!(taken.is_empty());
        hub.log_room_change(change(7));
        assert!(
            hub.take_room_changes(&mut taken),
            "logged again after the take"
        );
        assert_eq!(taken, [change(7)]);
    }
}
