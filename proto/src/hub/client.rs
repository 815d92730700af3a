//! A member's side: the rooms it is in, its pair keys, and the relay seen from an endpoint
//! connected to a hub.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use bytes::Bytes;
use core::fmt;
use core::net::SocketAddr;

use super::control::{
    Command, MemberEntry, Notice, FLAG_APPROVAL, FLAG_CLOSE_WITH_OWNER, MAX_FIELD,
};
use super::{
    relay_address, relay_user, LeaveReason, Refusal, RoomId, RoomOptions, Target, MAX_ROOMS,
};
use crate::config::{Config, DeliveryKind};
use crate::crypto::{PairCipher, PublicKey};
use crate::endpoint::{ConnectOptions, Endpoint};
use crate::error::{ConnectError, SendError};
use crate::event::{ConnectionHandle, DisconnectReason, Event, IncomingRequest, Relay, RequestId};
use crate::time::Instant;

/// Relayed messages held while their sender's pair key is still on its way (the hub's
/// introduction travels on the control channel and may arrive after them).
const MAX_WAITING: usize = 64;

/// The least the bytes of those held messages may add up to; the cap is twice the largest
/// message if that is more, so a message sent right after its sender joined is held. (A room
/// mate that leaves right after sending, its key forgotten before its last messages arrive,
/// could otherwise park 64 messages of up to `max_message_size` each here for as long as the
/// member stays connected.)
const MIN_WAITING_BYTES: usize = 256 * 1024;

/// Most members one room's view holds (the hub's default room holds 256): a `Joined` or a
/// `PeerJoined` past it is a bad notice, as is one that names a member twice.
pub(crate) const MAX_ROOM_MEMBERS: usize = 4096;
/// Most member entries all rooms' views hold together, and the most bytes of metadata they
/// keep: a hub tells a member of room mates, it cannot make it hold without bound.
pub(crate) const MAX_MEMBER_ENTRIES: usize = 1 << 16;
pub(crate) const MAX_MEMBER_BYTES: usize = 16 << 20;

/// Direct-only link handshakes in flight at once. Their addresses are the hub's word, and
/// each attempt sends a Hello every resend interval until it answers or times out: a hub
/// naming thousands of made-up members at one victim's address had every member flood it.
/// The others wait their turn (a room of 256 links up in a few round trips more).
const MAX_DIRECT_CONNECTING: usize = 16;

/// Messages queued per peer link before its connection exists (the accepting side waits
/// for the other's handshake).
const MAX_LINK_QUEUE: usize = 256;

/// How often one peer's addresses are probed when its link comes up (`PathPolicy::Auto`):
/// two rounds at once, then one more each 10 s. A member that leaves and rejoins a shared room again
/// and again makes a new link each time, and each would otherwise spend up to 32 of the
/// endpoint's `Config::path_probes` (shared by every link), keeping the others' direct paths
/// from being probed at all.
const PROBE_ROUNDS: crate::RateLimit = crate::RateLimit {
    per_second: 0.1,
    burst: 2.0,
};

/// Peers whose probe rounds are remembered at once; one whose rounds have refilled is
/// forgotten first (it starts full again). With every place taken by a peer still
/// refilling, a link coming up is not probed (it stays on the relay).
const MAX_PROBE_ROUNDS: usize = 1024;

/// Associated data binding a sealed payload to what it travels as.
const AAD_MESSAGE: u8 = 0;
const AAD_REQUEST: u8 = 1;
const AAD_RESPONSE: u8 = 2;

/// What a sealed response binds: its kind and the counter of the sealed request it answers,
/// so that a relay cannot hand one request's answer back as another's.
fn response_aad(request_counter: u64) -> [u8; 9] {
    let mut aad = [AAD_RESPONSE; 9];
    aad[1..].copy_from_slice(&request_counter.to_be_bytes());
    aad
}

/// Whether a message for a link not up yet may wait in its queue: what the endpoint's own
/// send would refuse is refused now (once the link is up, nobody would hear of it), the
/// channel's queue counted as the endpoint counts it (`SendChannel::room_for_one`: each
/// message its payload and `QUEUE_ENTRY_BYTES`), and at most `MAX_LINK_QUEUE` messages in
/// all.
fn may_wait(
    config: &Config,
    queued: &VecDeque<(u8, Bytes)>,
    channel: u8,
    len: usize,
) -> Result<(), SendError> {
    use crate::messaging::channel::QUEUE_ENTRY_BYTES;
    let Some(room) = config.channels.get(usize::from(channel)) else {
        return Err(SendError::UnknownChannel(channel));
    };
    if len > config.max_message_size {
        return Err(SendError::MessageTooLarge {
            size: len,
            max: config.max_message_size,
        });
    }
    let on_channel: usize = queued
        .iter()
        .filter(|(c, _)| *c == channel)
        .map(|(_, p)| p.len() + QUEUE_ENTRY_BYTES)
        .sum();
    let needs = len + QUEUE_ENTRY_BYTES;
    if needs > room.max_queued_bytes {
        // (0: it never fits.)
        return Err(SendError::QueueFull {
            channel,
            queued_bytes: 0,
        });
    }
    if queued.len() >= MAX_LINK_QUEUE || on_channel + needs > room.max_queued_bytes {
        return Err(SendError::QueueFull {
            channel,
            queued_bytes: on_channel.max(1),
        });
    }
    Ok(())
}

/// The sealed requests taken from one member lately, so that one the hub delivers again is
/// not taken twice. Each taken counter is kept for a request timeout: a request later than
/// that behind a newer one is useless (its asker gave up), so everything below a counter
/// forgotten counts as taken. At most [`RequestWindow::LEN`] are kept: past that the oldest
/// is forgotten early (an honest request overtaken by that many within a timeout is lost,
/// and its asker gets a timeout).
#[derive(Debug, Default)]
struct RequestWindow {
    /// Taken counters, ascending, with when each was taken.
    taken: VecDeque<(u64, Instant)>,
    /// Counters below this count as taken.
    floor: u64,
    /// The largest counter was forgotten: every counter counts as taken (only a lying member
    /// gets there, and only its own requests pay for it).
    exhausted: bool,
}

/// What [`RequestWindow::take`] made of a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    New,
    /// Taken before: a replay.
    Again,
    /// Below what is still kept.
    Late,
}

impl RequestWindow {
    const LEN: usize = 256;

    fn take(&mut self, counter: u64, now: Instant, keep: core::time::Duration) -> Taken {
        // Forget what is older than a timeout (taken in counter order, mostly: the first
        // entries are the oldest or nearly), raising the floor past it.
        while let Some(&(c, at)) = self.taken.front() {
            if now.saturating_duration_since(at) <= keep && self.taken.len() < Self::LEN {
                break;
            }
            self.taken.pop_front();
            // (The counter is the sender's, and a lying one may send the last.)
            match c.checked_add(1) {
                Some(next) => self.floor = self.floor.max(next),
                None => self.exhausted = true,
            }
        }
        if counter < self.floor || self.exhausted {
            return Taken::Late;
        }
        match self.taken.binary_search_by_key(&counter, |&(c, _)| c) {
            Ok(_) => Taken::Again,
            Err(at) => {
                self.taken.insert(at, (counter, now));
                Taken::New
            }
        }
    }
}

/// The counter a sealed payload carries (its first 8 bytes; 0 if it is too short to open).
fn sealed_counter(sealed: &[u8]) -> u64 {
    sealed
        .get(..8)
        .and_then(|c| c.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// How a member reaches the members it shares a room with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PathPolicy {
    /// The hub relays each message on its own channel, sealed with the pair key. Nothing
    /// else is set up. The default.
    #[default]
    Messages,
    /// A peer link: a Shoal connection between the two members (keys agreed end to end by
    /// its own handshake, the peer's static key pinned when the hub vouches for one), its
    /// packets always tunnelled through the hub.
    RelayOnly,
    /// A peer link through the hub at first, moved to a direct path as soon as one
    /// validates (both sides probe each other's addresses from the introduction) and back
    /// to the hub when the direct path dies: `HubEvent::PathChanged` after each move (moves
    /// made before the application took the last one are told as one, naming where the
    /// link is then); channels,
    /// order and exactly-once hold across the moves, as it is one connection throughout.
    Auto,
    /// A peer link over a direct path only: both members connect to each other's observed
    /// address at once; where the NATs allow no direct path, there is no link. Nothing on
    /// such a path vouches for the peer but its static key, so each member needs one
    /// (`Config::static_keypair`, which the hub vouches for): a link to a member without
    /// one is not made ([`HubError::NoVouchedKey`]).
    DirectOnly,
}

/// A peer link: the connection to one member, or what waits for it.
#[derive(Debug, Default)]
struct Link {
    conn: Option<ConnectionHandle>,
    /// Where the hub said the peer may be reached directly.
    addrs: Vec<SocketAddr>,
    key: Option<PublicKey>,
    /// Messages sent before the connection was up, in order. (Not in the connecting
    /// attempt's own queue: of two crossing attempts one gives way, and what it held with it.)
    queued: VecDeque<(u8, Bytes)>,
    /// `conn` is connected (its `Connected` was taken, and `queued` sent on it).
    up: bool,
    /// Its handshake failed: sends fail until the hub introduces the pair again.
    failed: bool,
    /// Handshakes in a row that drew no answer (a peer that never answers would otherwise
    /// be tried again without end; see [`LINK_TIMEOUTS`]).
    timeouts: u8,
}

/// Handshakes in a row a peer link may go unanswered before it is marked failed (until the
/// pair is introduced again): about a minute at the default handshake timeout, so a peer
/// unreachable for a while (an application suspended) still gets its link back.
const LINK_TIMEOUTS: u8 = 12;

/// Names one request to the hub; its answer (`Joined`, `Done` or `Refused`) carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u32);

/// A member of a room, as the hub describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its user id on the hub: what [`Target::User`] names.
    pub user: u16,
    /// Its static public key, if its handshake with the hub proved one.
    pub key: Option<PublicKey>,
    /// The client id of its connect token, if the hub requires tokens.
    pub client_id: Option<u64>,
    /// What it said about itself when it joined.
    pub metadata: Bytes,
}

/// A room this member is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomView {
    /// Its id on the hub.
    pub id: RoomId,
    /// Its name.
    pub name: Bytes,
    /// The owner's user id.
    pub owner: u16,
    /// Its members, this one included, oldest first.
    pub members: Vec<Member>,
}

/// A request another member sent this one through the hub; answer it with
/// [`HubClient::respond`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerRequest {
    /// The asker's user id.
    pub from: u16,
    /// The request as it arrived.
    pub request: IncomingRequest,
    /// The peer link it came on, if not relayed by the hub.
    link: Option<ConnectionHandle>,
    /// The counter of the sealed request (relayed ones): the response binds it.
    sealed: u64,
}

/// What happened, as a member sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    /// This member is in `room` now (created or joined); [`HubClient::room`] lists it.
    Joined {
        /// The request that asked for it.
        op: OpId,
        /// The room.
        room: RoomId,
    },
    /// The hub refused a request.
    Refused {
        /// The request.
        op: OpId,
        /// Why.
        reason: Refusal,
    },
    /// The hub carried out a request (leave, kick, close, approve).
    Done {
        /// The request.
        op: OpId,
    },
    /// Someone joined a room this member is in.
    PeerJoined {
        /// The room.
        room: RoomId,
        /// The newcomer's user id (its [`Member`] is in the room's list).
        user: u16,
    },
    /// Someone left a room this member is in.
    PeerLeft {
        /// The room.
        room: RoomId,
        /// Who.
        user: u16,
        /// Why.
        reason: LeaveReason,
    },
    /// This member is no longer in `room`.
    RoomLeft {
        /// The room.
        room: RoomId,
        /// Why.
        reason: LeaveReason,
    },
    /// The room has a new owner (the old one left).
    OwnerChanged {
        /// The room.
        room: RoomId,
        /// The new owner.
        owner: u16,
    },
    /// Someone asks to join a room this member owns; answer with [`HubClient::approve`].
    JoinRequested {
        /// The room.
        room: RoomId,
        /// Who asks.
        user: u16,
        /// What it says about itself.
        metadata: Bytes,
    },
    /// A message another member sent (opened, if it was sealed for this member).
    Message {
        /// The sender's user id (set by the hub: it cannot be forged).
        from: u16,
        /// Whom it was sent to: this member, or one of its rooms.
        to: Target,
        /// Its channel.
        channel: u8,
        /// The message.
        payload: Bytes,
    },
    /// A request another member sent; answer with [`HubClient::respond`], always (empty if
    /// nothing else): the hub holds a place among this member's pending requests until an
    /// answer comes or the request times out.
    Request {
        /// Who asks, and what to pass to `respond`.
        request: PeerRequest,
        /// The request.
        payload: Bytes,
    },
    /// The answer to [`HubClient::request`].
    Response {
        /// What `request` returned.
        id: RequestId,
        /// The member that answered.
        from: u16,
        /// The answer.
        payload: Bytes,
    },
    /// The peer link to `user` moved: to a direct path (`direct`), or back through the hub.
    PathChanged {
        /// The peer.
        user: u16,
        /// Whether packets now go straight to the peer.
        direct: bool,
    },
    /// Any other event of the endpoint, untouched (the hub connection's `Connected` and
    /// `Disconnected`, timeouts, events of other connections).
    Transport(Event),
}

/// Why a member's call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubError {
    /// The endpoint refused to queue it.
    Send(SendError),
    /// Relayed messages may not use the hub's control channel.
    ControlChannel(u8),
    /// No pair key with this user yet: it shares no room with this member (or the hub's
    /// introduction has not arrived).
    NotIntroduced(u16),
    /// A request can go to one member only.
    RequestToRoom,
    /// A name, password or metadata longer than the protocol carries (4,096 bytes).
    FieldTooLong,
    /// The peer link to this user is still being set up; requests wait for it.
    LinkPending(u16),
    /// The peer link to this user could not be set up (its handshake failed).
    LinkFailed(u16),
    /// A direct-only link to this user cannot be authenticated: the hub vouched for no
    /// static key of it.
    NoVouchedKey(u16),
    /// Peer links need an endpoint that accepts incoming connections and an unreliable
    /// tunnel channel.
    LinkSetup(&'static str),
}

impl From<SendError> for HubError {
    fn from(e: SendError) -> Self {
        HubError::Send(e)
    }
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::Send(e) => e.fmt(f),
            HubError::ControlChannel(c) => write!(
                f,
                "channel {c} is the hub's control channel; send on an application channel"
            ),
            HubError::NotIntroduced(u) => write!(
                f,
                "user {u} shares no room with this member yet; join a room with it first"
            ),
            HubError::RequestToRoom => f.write_str("a request goes to one member, not a room"),
            HubError::FieldTooLong => f.write_str("name, password or metadata exceeds 4096 bytes"),
            HubError::LinkPending(u) => write!(
                f,
                "the link to user {u} is being set up; retry once it has sent something"
            ),
            HubError::LinkSetup(what) => write!(f, "peer links need {what}"),
            HubError::LinkFailed(u) => write!(
                f,
                "the peer link to user {u} could not be set up; it is tried again when the \
                 two share a room anew"
            ),
            HubError::NoVouchedKey(u) => write!(
                f,
                "user {u} has no static key the hub vouched for, so a direct-only link to it \
                 could not be authenticated; give it a Config::static_keypair or use \
                 PathPolicy::Auto"
            ),
        }
    }
}

/// What a member counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HubClientStats {
    /// Sealed payloads that did not open (altered, or under a pair key since replaced), and
    /// answers that came empty (a member declining a request it did not take: normal when
    /// an asker left, or its request came late).
    pub unopened: u64,
    /// Control messages from the hub that did not decode.
    pub bad_notices: u64,
    /// Relayed messages dropped while waiting for their sender's pair key: it never came,
    /// or they did not fit (at most 64 messages wait, of at most twice `max_message_size`
    /// or 256 KiB, whichever is more).
    pub waiting_dropped: u64,
    /// Peer links that ended before their peer left every shared room.
    pub links_lost: u64,
    /// Peer links whose handshake failed (sends to the peer fail until it is introduced
    /// again).
    pub links_failed: u64,
    /// Sealed requests delivered again (a replay by the hub) and not taken.
    pub requests_replayed: u64,
    /// Sealed requests not taken because they came after their asker had given up (past
    /// `request_timeout` behind later ones), or after very many later ones: a replay, or
    /// an honest request too late to matter.
    pub requests_late: u64,
    /// Peer links (`PathPolicy::Auto`) whose direct paths were not probed when they came up:
    /// the same peer's links came up more often than its probe rounds allow (two at once,
    /// then one each 10 s: it keeps leaving and rejoining), or too many peers did. They stay
    /// on the relay.
    pub probes_skipped: u64,
}

/// A member of a hub: one endpoint's connection to the hub, its rooms and pair keys. Feed it
/// the endpoint's events ([`handle_event`](Self::handle_event)) and take [`HubEvent`]s out
/// ([`poll_event`](Self::poll_event)), or let it do both ([`next_event`](Self::next_event)).
pub struct HubClient {
    conn: ConnectionHandle,
    control_channel: u8,
    user_id: Option<u16>,
    next_op: u32,
    rooms: BTreeMap<u16, RoomView>,
    /// For each room mate, how many of this member's rooms it is in: one that shares none is
    /// forgotten (a lookup, where a scan of every room's members for each member of a room
    /// left made leaving a big room quadratic).
    shared_rooms: BTreeMap<u16, u16>,
    /// Member entries in all rooms' views, and the bytes of their metadata (see
    /// `MAX_MEMBER_ENTRIES`).
    member_entries: usize,
    member_bytes: usize,
    ciphers: BTreeMap<u16, PairCipher>,
    /// The sealed requests taken from each member lately, under its current pair key.
    requests_taken: BTreeMap<u16, Box<RequestWindow>>,
    /// This endpoint's `Config::request_timeout`: how long a request stays worth taking.
    request_timeout: core::time::Duration,
    /// Requests sent to members, by id: whose key opens the response.
    /// (A relayed one also keeps its sealed counter, which the response binds.)
    asked: BTreeMap<RequestId, (u16, ConnectionHandle, u64)>,
    waiting: VecDeque<Event>,
    /// The payload bytes `waiting` holds, kept under `max_waiting_bytes`.
    waiting_bytes: usize,
    max_waiting_bytes: usize,
    ready: VecDeque<HubEvent>,
    stats: HubClientStats,
    policy: PathPolicy,
    tunnel_channel: u8,
    links: BTreeMap<u16, Link>,
    link_users: BTreeMap<ConnectionHandle, u16>,
    /// Direct-only link handshakes in flight (at most `MAX_DIRECT_CONNECTING`), and the
    /// members whose link waits for one of them to end.
    direct_connecting: BTreeSet<ConnectionHandle>,
    direct_waiting: BTreeSet<u16>,
    /// Connections turned away for proving another key than the one the hub vouched for:
    /// everything they deliver (their first packet's messages come with `Connected`) is
    /// swallowed until their `Disconnected`.
    refused_links: BTreeSet<ConnectionHandle>,
    /// Each peer's probe rounds left (`PROBE_ROUNDS`), kept beyond its link.
    probe_rounds: BTreeMap<u16, crate::rate::Bucket>,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("conn", &self.conn)
            .field("user_id", &self.user_id)
            .field("rooms", &self.rooms.len())
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// A member whose connection to the hub is `conn` on an endpoint configured with
    /// `config`, using the default control channel (its last channel must be ordered, as in
    /// [`endpoint_config`](super::endpoint_config)).
    pub fn new(conn: ConnectionHandle, config: &Config) -> Result<Self, HubError> {
        Self::with_control_channel(conn, config, super::DEFAULT_CONTROL_CHANNEL)
    }

    /// A member that reaches others as `policy` says. Peer links (every policy but
    /// `Messages`) need `config.accept_incoming` and, but for `DirectOnly`, the unreliable
    /// tunnel channel of [`endpoint_config`](super::endpoint_config); `DirectOnly` needs
    /// `config.static_keypair`.
    pub fn with_paths(
        conn: ConnectionHandle,
        config: &Config,
        policy: PathPolicy,
    ) -> Result<Self, HubError> {
        let mut client = Self::new(conn, config)?;
        if policy != PathPolicy::Messages {
            if !config.accept_incoming {
                return Err(HubError::LinkSetup("Config::accept_incoming"));
            }
            if policy == PathPolicy::DirectOnly && config.static_keypair.is_none() {
                return Err(HubError::LinkSetup(
                    "Config::static_keypair for direct-only links (the key the hub vouches for \
                     is all that authenticates them)",
                ));
            }
            let tunnel = config.channels.get(usize::from(client.tunnel_channel));
            if policy != PathPolicy::DirectOnly
                && tunnel.is_none_or(|c| c.kind != DeliveryKind::Unreliable)
            {
                return Err(HubError::LinkSetup("an unreliable tunnel channel (5)"));
            }
        }
        client.policy = policy;
        Ok(client)
    }

    /// Like [`new`](Self::new) with another control channel (the hub's `control_channel`).
    pub fn with_control_channel(
        conn: ConnectionHandle,
        config: &Config,
        control_channel: u8,
    ) -> Result<Self, HubError> {
        let ok = config
            .channels
            .get(usize::from(control_channel))
            .is_some_and(|c| c.kind == DeliveryKind::Ordered);
        if !ok {
            return Err(HubError::ControlChannel(control_channel));
        }
        Ok(HubClient {
            conn,
            control_channel,
            user_id: None,
            next_op: 1,
            rooms: BTreeMap::new(),
            ciphers: BTreeMap::new(),
            requests_taken: BTreeMap::new(),
            request_timeout: config.request_timeout,
            asked: BTreeMap::new(),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            max_waiting_bytes: MIN_WAITING_BYTES.max(2 * config.max_message_size),
            ready: VecDeque::new(),
            stats: HubClientStats::default(),
            policy: PathPolicy::Messages,
            tunnel_channel: super::DEFAULT_TUNNEL_CHANNEL,
            links: BTreeMap::new(),
            link_users: BTreeMap::new(),
            refused_links: BTreeSet::new(),
            probe_rounds: BTreeMap::new(),
            direct_connecting: BTreeSet::new(),
            direct_waiting: BTreeSet::new(),
            shared_rooms: BTreeMap::new(),
            member_entries: 0,
            member_bytes: 0,
        })
    }

    /// The connection to the hub.
    pub fn connection(&self) -> ConnectionHandle {
        self.conn
    }

    /// This member's user id on the hub, once connected.
    pub fn user_id(&self) -> Option<u16> {
        self.user_id
    }

    /// A room this member is in.
    pub fn room(&self, room: RoomId) -> Option<&RoomView> {
        self.rooms.get(&room.0)
    }

    /// The rooms this member is in.
    pub fn rooms(&self) -> impl Iterator<Item = &RoomView> {
        self.rooms.values()
    }

    /// Whether this member holds a pair key with `user` (they share a room).
    pub fn is_introduced(&self, user: u16) -> bool {
        self.ciphers.contains_key(&user)
    }

    /// The counters.
    pub fn stats(&self) -> &HubClientStats {
        &self.stats
    }

    fn command(
        &mut self,
        ep: &mut Endpoint,
        make: impl FnOnce(u32) -> Command,
    ) -> Result<OpId, HubError> {
        let op = self.next_op;
        let bytes = make(op).encode();
        ep.send(self.conn, self.control_channel, bytes)?;
        self.next_op = self.next_op.wrapping_add(1);
        Ok(OpId(op))
    }

    /// Asks the hub to create room `name` with this member as owner and first member; the
    /// answer is `Joined` or `Refused` with the returned id.
    pub fn create_room(
        &mut self,
        ep: &mut Endpoint,
        name: &str,
        options: &RoomOptions,
    ) -> Result<OpId, HubError> {
        if name.len() > MAX_FIELD
            || options.password.len() > MAX_FIELD
            || options.metadata.len() > MAX_FIELD
        {
            return Err(HubError::FieldTooLong);
        }
        let flags = if options.approval { FLAG_APPROVAL } else { 0 }
            | if options.close_with_owner {
                FLAG_CLOSE_WITH_OWNER
            } else {
                0
            };
        self.command(ep, |op| Command::Create {
            op,
            name: Bytes::copy_from_slice(name.as_bytes()),
            password: Bytes::copy_from_slice(&options.password),
            metadata: Bytes::copy_from_slice(&options.metadata),
            max_members: options.max_members,
            flags,
        })
    }

    /// Asks to join room `name` (with its password, if it has one), telling the members
    /// `metadata` about this one; the answer is `Joined` or `Refused`.
    pub fn join_room(
        &mut self,
        ep: &mut Endpoint,
        name: &str,
        password: &[u8],
        metadata: &[u8],
    ) -> Result<OpId, HubError> {
        if name.len() > MAX_FIELD || password.len() > MAX_FIELD || metadata.len() > MAX_FIELD {
            return Err(HubError::FieldTooLong);
        }
        self.command(ep, |op| Command::Join {
            op,
            name: Bytes::copy_from_slice(name.as_bytes()),
            password: Bytes::copy_from_slice(password),
            metadata: Bytes::copy_from_slice(metadata),
        })
    }

    /// Leaves `room`.
    pub fn leave_room(&mut self, ep: &mut Endpoint, room: RoomId) -> Result<OpId, HubError> {
        self.command(ep, |op| Command::Leave { op, room: room.0 })
    }

    /// Removes `user` from `room` (owner only).
    pub fn kick(&mut self, ep: &mut Endpoint, room: RoomId, user: u16) -> Result<OpId, HubError> {
        self.command(ep, |op| Command::Kick {
            op,
            room: room.0,
            user,
        })
    }

    /// Closes `room` (owner only): every member leaves with `ClosedByOwner`.
    pub fn close_room(&mut self, ep: &mut Endpoint, room: RoomId) -> Result<OpId, HubError> {
        self.command(ep, |op| Command::Close { op, room: room.0 })
    }

    /// Answers a [`HubEvent::JoinRequested`] (owner only).
    pub fn approve(
        &mut self,
        ep: &mut Endpoint,
        room: RoomId,
        user: u16,
        accept: bool,
    ) -> Result<OpId, HubError> {
        self.command(ep, |op| Command::Approve {
            op,
            room: room.0,
            user,
            accept,
        })
    }

    /// Tells the hub this member's own addresses (at most 4; e.g. its socket's address on
    /// the local network), which it passes on at introductions, so members behind one NAT
    /// can reach each other directly.
    pub fn announce(&mut self, ep: &mut Endpoint, addrs: &[SocketAddr]) -> Result<OpId, HubError> {
        let addrs = addrs[..addrs.len().min(super::control::MAX_ADDRS)].to_vec();
        self.command(ep, |op| Command::Announce { op, addrs })
    }

    /// The link to `user`, unless it can carry nothing: no introduction, no key to
    /// authenticate a direct-only link, or a handshake that failed.
    fn usable_link(&mut self, user: u16) -> Result<&mut Link, HubError> {
        let direct_only = self.policy == PathPolicy::DirectOnly;
        let link = self
            .links
            .get_mut(&user)
            .ok_or(HubError::NotIntroduced(user))?;
        if direct_only && link.key.is_none() {
            return Err(HubError::NoVouchedKey(user));
        }
        if link.failed {
            return Err(HubError::LinkFailed(user));
        }
        Ok(link)
    }

    /// The peer link's connection to `user`, once it exists (also while it is being set
    /// up: for its stats and state; send through [`send`](Self::send), which holds messages
    /// until the link is up and keeps them in order).
    pub fn link(&self, user: u16) -> Option<ConnectionHandle> {
        self.links.get(&user).and_then(|l| l.conn)
    }

    /// Sends `payload` on `channel` through the hub to `to`. To one member it is sealed end
    /// to end with the pair key (24 bytes more); to a room it is protected hop by hop.
    pub fn send(
        &mut self,
        ep: &mut Endpoint,
        to: Target,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<(), HubError> {
        if channel == self.control_channel {
            return Err(HubError::ControlChannel(channel));
        }
        let payload = payload.into();
        if let (Target::User(u), true) = (to, self.policy != PathPolicy::Messages) {
            let link = self.usable_link(u)?;
            return match link.conn.filter(|_| link.up) {
                Some(conn) => Ok(ep.send(conn, channel, payload)?),
                None => {
                    may_wait(ep.config(), &link.queued, channel, payload.len())?;
                    link.queued.push_back((channel, payload));
                    Ok(())
                }
            };
        }
        let payload = match to {
            Target::User(u) => {
                let cipher = self.ciphers.get_mut(&u).ok_or(HubError::NotIntroduced(u))?;
                Bytes::from(cipher.seal(&[AAD_MESSAGE, channel], &payload))
            }
            Target::Room(_) | Target::RoomExceptSender(_) => payload,
        };
        ep.send_redirected(self.conn, channel, payload, Some(to.to_wire()))?;
        Ok(())
    }

    /// Sends a request to member `to` through the hub, sealed end to end; the answer comes as
    /// [`HubEvent::Response`] with the returned id, or as a `RequestTimedOut`: the
    /// endpoint's, or made at once when the answer does not open (the member declined the
    /// request empty, or the hub altered it).
    pub fn request(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        to: u16,
        channel: u8,
        payload: &[u8],
    ) -> Result<RequestId, HubError> {
        if channel == self.control_channel {
            return Err(HubError::ControlChannel(channel));
        }
        if self.policy != PathPolicy::Messages {
            let link = self.usable_link(to)?;
            let conn = link
                .conn
                .filter(|_| link.up)
                .ok_or(HubError::LinkPending(to))?;
            let id = ep.request(now, conn, channel, Bytes::copy_from_slice(payload))?;
            self.asked.insert(id, (to, conn, 0));
            return Ok(id);
        }
        let cipher = self
            .ciphers
            .get_mut(&to)
            .ok_or(HubError::NotIntroduced(to))?;
        let sealed = cipher.seal(&[AAD_REQUEST, channel], payload);
        let counter = sealed_counter(&sealed);
        let id = ep.request_redirected(now, self.conn, channel, sealed, Some(to))?;
        self.asked.insert(id, (to, self.conn, counter));
        Ok(id)
    }

    /// Answers a [`HubEvent::Request`], sealed for the asker. If the asker has left every
    /// room this member shares (its key is gone), an empty answer still goes, to free the
    /// hub's place for the request, and the result is `Err(NotIntroduced)`.
    pub fn respond(
        &mut self,
        ep: &mut Endpoint,
        request: PeerRequest,
        payload: &[u8],
    ) -> Result<(), HubError> {
        if let Some(conn) = request.link {
            ep.respond(conn, request.request, Bytes::copy_from_slice(payload))?;
            return Ok(());
        }
        let Some(cipher) = self.ciphers.get_mut(&request.from) else {
            // The asker left every shared room (its key is gone): the hub still holds a
            // place for the request until an answer comes, so it gets an empty one.
            let _ = ep.respond(self.conn, request.request, Bytes::new());
            return Err(HubError::NotIntroduced(request.from));
        };
        let sealed = cipher.seal(&response_aad(request.sealed), payload);
        ep.respond(self.conn, request.request, sealed)?;
        Ok(())
    }

    /// The next event: one already decoded, else the endpoint's next event made into one.
    pub fn next_event(&mut self, ep: &mut Endpoint, now: Instant) -> Option<HubEvent> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let event = ep.poll_event()?;
            self.handle_event(ep, now, event);
        }
    }

    /// The next decoded event, if any.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.ready.pop_front()
    }

    /// Takes one of the endpoint's events; what it means comes out of
    /// [`poll_event`](Self::poll_event) (none, one, or, when a pair key arrives, the
    /// messages that waited for it).
    pub fn handle_event(&mut self, ep: &mut Endpoint, now: Instant, event: Event) {
        if event.connection() != self.conn {
            if let Some(event) = self.on_link_event(ep, now, event) {
                self.ready.push_back(HubEvent::Transport(event));
            }
            return;
        }
        match event {
            Event::Connected { ref identity, .. } => {
                self.user_id = Some(identity.local_user_id);
                if !matches!(self.policy, PathPolicy::Messages | PathPolicy::DirectOnly) {
                    ep.set_relay(self.conn, self.tunnel_channel);
                }
                self.ready.push_back(HubEvent::Transport(event));
            }
            Event::Disconnected { .. } | Event::ConnectFailed { .. } => {
                // Peer links rest on the hub (the rooms they share, the keys it vouched for,
                // this session's user ids): they close with it, direct ones too. Each link's
                // own `Disconnected` still finds its user, and is swallowed.
                for (_, link) in core::mem::take(&mut self.links) {
                    if let Some(conn) = link.conn {
                        ep.disconnect(conn, 0);
                    }
                }
                self.ciphers.clear();
                ep.forget_relay_peers(self.conn);
                self.direct_connecting.clear();
                self.direct_waiting.clear();
                self.requests_taken.clear();
                let hub = self.conn;
                self.abandon_requests(hub);
                self.waiting.clear();
                self.waiting_bytes = 0;
                // The rooms first: an application that stops at the connection's end has
                // heard of them.
                self.shared_rooms.clear();
                (self.member_entries, self.member_bytes) = (0, 0);
                for room in core::mem::take(&mut self.rooms).into_keys() {
                    self.ready.push_back(HubEvent::RoomLeft {
                        room: RoomId(room),
                        reason: LeaveReason::Disconnected,
                    });
                }
                self.ready.push_back(HubEvent::Transport(event));
            }
            Event::Message {
                channel, payload, ..
            } if channel == self.control_channel => match Notice::decode(&payload) {
                Some(notice) => self.on_notice(ep, now, notice),
                None => self.stats.bad_notices += 1,
            },
            Event::Message {
                relay: Some(Relay {
                    target: Some(_), ..
                }),
                ..
            }
            | Event::Request {
                relay: Some(Relay {
                    target: Some(_), ..
                }),
                ..
            } => self.on_relayed(ep, now, event),
            Event::Response { conn, id, payload } if self.asked.contains_key(&id) => {
                let (from, counter) = self.asked.remove(&id).map_or((0, 0), |(u, _, n)| (u, n));
                match self
                    .ciphers
                    .get(&from)
                    .and_then(|c| c.open(&response_aad(counter), &payload))
                {
                    Some(plain) => self.ready.push_back(HubEvent::Response {
                        id,
                        from,
                        payload: Bytes::from(plain),
                    }),
                    // Not the peer's answer (a member that could not take the request
                    // declines it empty, or the hub forged one): the request still ends, as
                    // unanswered.
                    None => {
                        self.stats.unopened += 1;
                        let ended = Event::RequestTimedOut { conn, id };
                        self.ready.push_back(HubEvent::Transport(ended));
                    }
                }
            }
            Event::RequestTimedOut { id, .. } => {
                self.asked.remove(&id);
                self.ready.push_back(HubEvent::Transport(event));
            }
            other => self.ready.push_back(HubEvent::Transport(other)),
        }
    }

    /// An event of another connection: a peer link's, or (returned) the application's own.
    fn on_link_event(&mut self, ep: &mut Endpoint, now: Instant, event: Event) -> Option<Event> {
        let conn = event.connection();
        if matches!(
            event,
            Event::Connected { .. } | Event::ConnectFailed { .. } | Event::Disconnected { .. }
        ) {
            self.direct_attempt_ended(ep, now, conn);
        }
        if self.refused_links.contains(&conn) {
            if matches!(event, Event::Disconnected { .. }) {
                self.refused_links.remove(&conn);
            }
            return None;
        }
        let user = match &event {
            Event::Connected { remote, .. } => self.link_user_for(conn, *remote),
            _ => self.link_users.get(&conn).copied(),
        };
        let Some(user) = user else {
            return Some(event);
        };
        if let Event::Connected { identity, .. } = &event {
            // The hub vouched for this member's key: a link that proved another (someone
            // else at an address the member announced) is not the member's.
            let vouched = self.links.get(&user).and_then(|l| l.key);
            if vouched.is_some_and(|k| identity.key != Some(k)) {
                self.refused_links.insert(conn);
                ep.disconnect(conn, 0);
                return None;
            }
        }
        match event {
            Event::Connected { .. } => {
                let has_addrs = self.links.get(&user).is_some_and(|l| !l.addrs.is_empty());
                let probe = self.policy == PathPolicy::Auto
                    && has_addrs
                    && self.take_probe_round(user, now);
                self.link_users.insert(conn, user);
                let link = self.links.entry(user).or_default();
                link.conn = Some(conn);
                link.up = true;
                link.timeouts = 0;
                link.failed = false;
                for (channel, payload) in core::mem::take(&mut link.queued) {
                    // Queued in order before the link existed; the same limits apply now.
                    let _ = ep.send(conn, channel, payload);
                }
                if probe {
                    for &addr in &link.addrs {
                        ep.probe_path(now, conn, addr);
                    }
                }
            }
            Event::ConnectFailed { reason, .. } | Event::Disconnected { reason, .. } => {
                // A link this member closed (the peer left every shared room), one that lost
                // a crossing handshake, one that ended, or one that never connected: the
                // application never saw it. Its requests will get neither an answer nor a
                // timeout from the endpoint.
                self.link_users.remove(&conn);
                self.abandon_requests(conn);
                // (Not the link's connection: an attempt already given up on.)
                let link = self.links.get_mut(&user).filter(|l| l.conn == Some(conn))?;
                link.conn = None;
                link.up = false;
                let attempt = matches!(event, Event::ConnectFailed { .. });
                let refused = attempt
                    && !matches!(
                        reason,
                        DisconnectReason::Replaced | DisconnectReason::TimedOut
                    );
                if attempt && reason == DisconnectReason::TimedOut {
                    link.timeouts = link.timeouts.saturating_add(1);
                }
                if reason == DisconnectReason::Replaced {
                    // The other attempt of a crossing pair takes over: its `Connected`
                    // follows and sends what is queued.
                } else if refused
                    || self.policy == PathPolicy::DirectOnly
                    || link.timeouts >= LINK_TIMEOUTS
                {
                    // The peer refused it (it would again, within a round trip), a direct
                    // path failed (retrying would fail the same way), or the peer left
                    // handshake after handshake unanswered: sends fail until the pair is
                    // introduced again.
                    self.stats.links_failed += 1;
                    link.failed = true;
                    link.queued.clear();
                } else {
                    // Lost, or no answer within the handshake timeout: still sharing a
                    // room, the lower id sets the link up again through the hub.
                    self.stats.links_lost += 1;
                    self.open_link(ep, now, user);
                }
            }
            Event::PathChanged { remote, .. } => self.ready.push_back(HubEvent::PathChanged {
                user,
                direct: relay_user(remote).is_none(),
            }),
            Event::Message {
                channel, payload, ..
            } => {
                let to = Target::User(self.user_id.unwrap_or_default());
                self.ready.push_back(HubEvent::Message {
                    from: user,
                    to,
                    channel,
                    payload,
                });
            }
            Event::Request {
                request, payload, ..
            } => self.ready.push_back(HubEvent::Request {
                request: PeerRequest {
                    from: user,
                    request,
                    link: Some(conn),
                    sealed: 0,
                },
                payload,
            }),
            Event::Response { id, payload, .. } => {
                self.asked.remove(&id);
                self.ready.push_back(HubEvent::Response {
                    id,
                    from: user,
                    payload,
                });
            }
            other => {
                if let Event::RequestTimedOut { id, .. } = &other {
                    self.asked.remove(id);
                }
                return Some(other);
            }
        }
        None
    }

    /// Requests sent on `conn`, which has closed, will get neither an answer nor a timeout
    /// from the endpoint: each is reported timed out now.
    fn abandon_requests(&mut self, conn: ConnectionHandle) {
        let ready = &mut self.ready;
        self.asked.retain(|&id, (_, c, _)| {
            let keep = *c != conn;
            if !keep {
                ready.push_back(HubEvent::Transport(Event::RequestTimedOut { conn, id }));
            }
            keep
        });
    }

    /// Which peer a new connection links to: one this member opened, one tunnelled from a
    /// member (the hub wrote its id), or one from an address the hub gave for a member. That
    /// last only for direct-only links, or for a member whose key the hub vouched for (the
    /// connection must then prove it): under the other policies links arrive through the
    /// hub, and a private address a member announced can be another host's.
    fn link_user_for(&self, conn: ConnectionHandle, remote: SocketAddr) -> Option<u16> {
        if self.policy == PathPolicy::Messages {
            return None;
        }
        if let Some(&u) = self.link_users.get(&conn) {
            return Some(u);
        }
        if let Some(u) = relay_user(remote) {
            return Some(u);
        }
        // From an address the hub gave for a peer: only a peer whose key the hub vouched for
        // (another host can hold an address it announced; the key is checked on Connected).
        self.links
            .iter()
            .find(|(_, l)| l.addrs.contains(&remote) && l.key.is_some())
            .map(|(&u, _)| u)
    }

    /// Opens the peer link to `user` if this side opens it and it is not open: the lower
    /// user id connects through the hub; for direct-only links both connect at once.
    fn open_link(&mut self, ep: &mut Endpoint, now: Instant, user: u16) {
        let Some(me) = self.user_id else {
            return;
        };
        let Some(link) = self.links.get_mut(&user) else {
            return;
        };
        if link.conn.is_some() || !self.ciphers.contains_key(&user) {
            return;
        }
        let to = match self.policy {
            PathPolicy::Messages => return,
            PathPolicy::RelayOnly | PathPolicy::Auto if me < user => relay_address(user),
            PathPolicy::RelayOnly | PathPolicy::Auto => return,
            // Pinned to the vouched key: nothing else tells the peer from whoever holds
            // its address, or sits on the path.
            PathPolicy::DirectOnly => match (link.addrs.first(), link.key) {
                (Some(_), Some(_)) if self.direct_connecting.len() >= MAX_DIRECT_CONNECTING => {
                    // (A set of the links there are: one removed leaves it.)
                    self.direct_waiting.insert(user);
                    return;
                }
                (Some(&addr), Some(_)) => addr,
                _ => return,
            },
        };
        let options = ConnectOptions {
            server_key: link.key,
            ..ConnectOptions::default()
        };
        match ep.connect_with(now, to, &options) {
            Ok(conn) => {
                link.conn = Some(conn);
                self.link_users.insert(conn, user);
                if self.policy == PathPolicy::DirectOnly {
                    self.direct_connecting.insert(conn);
                }
            }
            // The peer's own attempt is there already (it takes the link when it connects).
            Err(ConnectError::AlreadyConnected) => {}
            // No room for it (the endpoint's connections are full): nothing would try
            // again, so sends fail until the pair is introduced again.
            Err(_) => {
                self.stats.links_failed += 1;
                link.failed = true;
                link.queued.clear();
            }
        }
    }

    /// A direct-only handshake of `conn` ended (if it was one): the next waiting link takes
    /// its place.
    fn direct_attempt_ended(&mut self, ep: &mut Endpoint, now: Instant, conn: ConnectionHandle) {
        if !self.direct_connecting.remove(&conn) {
            return;
        }
        while self.direct_connecting.len() < MAX_DIRECT_CONNECTING {
            let Some(user) = self.direct_waiting.pop_first() else {
                break;
            };
            // (A link connected or failed meanwhile is passed over.)
            let waits = self
                .links
                .get(&user)
                .is_some_and(|l| l.conn.is_none() && !l.failed);
            if waits {
                self.open_link(ep, now, user);
            }
        }
    }

    /// A message or request the hub forwarded: opened if sealed for this member. A request
    /// not taken is answered at once, empty: the hub holds a place among this member's
    /// pending requests for it until it is answered (or times out, seconds later), and room
    /// mates sending junk requests could otherwise hold them all.
    fn on_relayed(&mut self, ep: &mut Endpoint, now: Instant, event: Event) {
        let decline = |ep: &mut Endpoint, event: &Event| {
            if let Event::Request { conn, request, .. } = event {
                let _ = ep.respond(*conn, *request, Bytes::new());
            }
        };
        let (from, target, channel, kind, payload) = match &event {
            Event::Message {
                relay:
                    Some(Relay {
                        owner,
                        target: Some(t),
                    }),
                channel,
                payload,
                ..
            } => (*owner, *t, *channel, AAD_MESSAGE, payload),
            Event::Request {
                relay:
                    Some(Relay {
                        owner,
                        target: Some(t),
                    }),
                request,
                payload,
                ..
            } => (*owner, *t, request.channel, AAD_REQUEST, payload),
            _ => return,
        };
        let Some(to) = Target::from_wire(target) else {
            self.stats.unopened += 1;
            decline(ep, &event);
            return;
        };
        let plain = match to {
            Target::User(_) => {
                let Some(cipher) = self.ciphers.get(&from) else {
                    // Its introduction may still be on its way: hold it, boundedly (the
                    // oldest go first; one larger than the whole cap is not held).
                    let len = payload.len();
                    if len > self.max_waiting_bytes {
                        self.stats.waiting_dropped += 1;
                        decline(ep, &event);
                        return;
                    }
                    while self.waiting.len() >= MAX_WAITING
                        || self.waiting_bytes + len > self.max_waiting_bytes
                    {
                        let Some(old) = self.waiting.pop_front() else {
                            break;
                        };
                        self.waiting_bytes -= waiting_len(&old);
                        self.stats.waiting_dropped += 1;
                        decline(ep, &old);
                    }
                    self.waiting_bytes += len;
                    self.waiting.push_back(event);
                    return;
                };
                match cipher.open(&[kind, channel], payload) {
                    Some(p) => Bytes::from(p),
                    None => {
                        self.stats.unopened += 1;
                        decline(ep, &event);
                        return;
                    }
                }
            }
            Target::Room(_) | Target::RoomExceptSender(_) => payload.clone(),
        };
        if kind == AAD_REQUEST && matches!(to, Target::User(_)) {
            // A request acts (it may buy something): one the hub delivers again is not
            // taken twice.
            let taken = self.requests_taken.entry(from).or_default();
            match taken.take(sealed_counter(payload), now, self.request_timeout) {
                Taken::New => {}
                Taken::Again => {
                    self.stats.requests_replayed += 1;
                    decline(ep, &event);
                    return;
                }
                Taken::Late => {
                    self.stats.requests_late += 1;
                    decline(ep, &event);
                    return;
                }
            }
        }
        self.ready.push_back(match event {
            Event::Request { request, .. } => HubEvent::Request {
                request: PeerRequest {
                    from,
                    request,
                    link: None,
                    sealed: sealed_counter(payload),
                },
                payload: plain,
            },
            _ => HubEvent::Message {
                from,
                to,
                channel,
                payload: plain,
            },
        });
    }

    fn introduce(&mut self, ep: &mut Endpoint, now: Instant, entry: &MemberEntry) {
        if let (Some(me), Some(key)) = (self.user_id, entry.pair_key) {
            self.ciphers
                .insert(entry.user, PairCipher::new(&key, me, entry.user));
            ep.allow_relay_peer(now, self.conn, entry.user);
            // A fresh key: its counters start again.
            self.requests_taken.remove(&entry.user);
            if self.policy != PathPolicy::Messages {
                let link = self.links.entry(entry.user).or_default();
                // (Only addresses one host can hold: a hub must not have members probe or
                // connect to every host of a network at once.)
                // (Mapped IPv4 addresses as the IPv4 ones they are: the endpoint knows its
                // peers by those.)
                link.addrs = entry
                    .addrs
                    .iter()
                    .map(|&a| crate::canonical_address(a))
                    .filter(one_host)
                    .collect();
                link.key = entry.key.map(PublicKey);
                link.failed = false;
                link.timeouts = 0;
                self.open_link(ep, now, entry.user);
            }
            // Whatever waited for this key can be opened now.
            let (theirs, others): (VecDeque<Event>, VecDeque<Event>) = self
                .waiting
                .drain(..)
                .partition(|e| e.owner(0) == Some(entry.user));
            self.waiting = others;
            self.waiting_bytes = self.waiting.iter().map(waiting_len).sum();
            for e in theirs {
                self.on_relayed(ep, now, e);
            }
        }
    }

    /// Takes one of `user`'s probe rounds (`PROBE_ROUNDS`); `false` (counted) if none is
    /// left.
    fn take_probe_round(&mut self, user: u16, now: Instant) -> bool {
        let rounds = &mut self.probe_rounds;
        if !rounds.contains_key(&user) && rounds.len() >= MAX_PROBE_ROUNDS {
            // (A peer whose rounds refilled starts full again: forgetting it changes nothing.)
            rounds.retain(|_, b| b.refill(&PROBE_ROUNDS, now) < PROBE_ROUNDS.burst);
            if rounds.len() >= MAX_PROBE_ROUNDS {
                self.stats.probes_skipped += 1;
                return false;
            }
        }
        let taken = rounds
            .entry(user)
            .or_insert_with(|| crate::rate::Bucket::new(&PROBE_ROUNDS, now))
            .take(&PROBE_ROUNDS, now, 1.0);
        self.stats.probes_skipped += u64::from(!taken);
        taken
    }

    /// Forgets the pair key (and closes the link) of `user` once it shares no room with
    /// this member.
    fn forget_if_alone(&mut self, ep: &mut Endpoint, user: u16) {
        if !self.shared_rooms.contains_key(&user) {
            self.ciphers.remove(&user);
            ep.forbid_relay_peer(self.conn, user);
            self.direct_waiting.remove(&user);
            self.requests_taken.remove(&user);
            // What it sent that waited for its key never opens: requests among it are
            // declined (the hub holds their places until answered).
            let (theirs, others): (VecDeque<Event>, VecDeque<Event>) = self
                .waiting
                .drain(..)
                .partition(|e| e.owner(0) == Some(user));
            self.waiting = others;
            self.waiting_bytes = self.waiting.iter().map(waiting_len).sum();
            for e in theirs {
                self.stats.waiting_dropped += 1;
                if let Event::Request { conn, request, .. } = e {
                    let _ = ep.respond(conn, request, Bytes::new());
                }
            }
            if let Some(conn) = self.links.remove(&user).and_then(|l| l.conn) {
                // Its `Disconnected` still finds the user, and is swallowed.
                ep.disconnect(conn, 0);
            }
        }
    }

    /// Counts `m` into a room's view.
    fn entered(&mut self, m: &Member) {
        *self.shared_rooms.entry(m.user).or_insert(0) += 1;
        self.member_entries += 1;
        self.member_bytes += m.metadata.len();
    }

    /// Counts `m` out of a room's view.
    fn left(&mut self, m: &Member) {
        if let Some(n) = self.shared_rooms.get_mut(&m.user) {
            *n -= 1;
            if *n == 0 {
                self.shared_rooms.remove(&m.user);
            }
        }
        self.member_entries -= 1;
        self.member_bytes -= m.metadata.len();
    }

    /// Whether `entries` more member entries with `bytes` of metadata fit the views' bounds.
    fn members_fit(&self, entries: usize, bytes: usize) -> bool {
        self.member_entries + entries <= MAX_MEMBER_ENTRIES
            && self.member_bytes + bytes <= MAX_MEMBER_BYTES
    }

    fn on_notice(&mut self, ep: &mut Endpoint, now: Instant, notice: Notice) {
        let event = match notice {
            Notice::Joined {
                op,
                room,
                owner,
                name,
                members,
            } => {
                let mut users: Vec<u16> = members.iter().map(|m| m.user).collect();
                users.sort_unstable();
                users.dedup();
                let (had, had_bytes) = self.rooms.get(&room).map_or((0, 0), |v| {
                    (
                        v.members.len(),
                        v.members.iter().map(|m| m.metadata.len()).sum(),
                    )
                });
                let bytes: usize = members.iter().map(|m| m.metadata.len()).sum();
                let fits = members.len() <= MAX_ROOM_MEMBERS
                    && users.len() == members.len()
                    && self.member_entries - had + members.len() <= MAX_MEMBER_ENTRIES
                    && self.member_bytes - had_bytes + bytes <= MAX_MEMBER_BYTES;
                if !fits || (self.rooms.len() >= MAX_ROOMS && !self.rooms.contains_key(&room)) {
                    self.stats.bad_notices += 1;
                    return;
                }
                let old = self.rooms.remove(&room);
                for m in old.iter().flat_map(|v| &v.members) {
                    self.left(m);
                }
                for m in &members {
                    self.introduce(ep, now, m);
                }
                let view = RoomView {
                    id: RoomId(room),
                    name,
                    owner,
                    members: members.into_iter().map(member).collect(),
                };
                for m in &view.members {
                    self.entered(m);
                }
                self.rooms.insert(room, view);
                // (A member the hub's new view of the room leaves out.)
                for m in old.into_iter().flat_map(|v| v.members) {
                    self.forget_if_alone(ep, m.user);
                }
                HubEvent::Joined {
                    op: OpId(op),
                    room: RoomId(room),
                }
            }
            Notice::Done { op } => HubEvent::Done { op: OpId(op) },
            Notice::Refused { op, reason } => match Refusal::from_wire(reason) {
                Some(reason) => HubEvent::Refused {
                    op: OpId(op),
                    reason,
                },
                None => {
                    self.stats.bad_notices += 1;
                    return;
                }
            },
            Notice::PeerJoined { room, member: m } => {
                let user = m.user;
                // Only into a room this member is in, and within the views' bounds: a hub
                // names room mates, it does not make a member meet (and link to) whoever it
                // likes, or hold what it likes.
                let Some(view) = self.rooms.get(&room) else {
                    self.stats.bad_notices += 1;
                    return;
                };
                let old = view.members.iter().find(|x| x.user == user);
                let known = old.is_some();
                let old_bytes = old.map_or(0, |x| x.metadata.len());
                let full = !known && view.members.len() >= MAX_ROOM_MEMBERS;
                let bytes = m.metadata.len().saturating_sub(old_bytes);
                if full || !self.members_fit(usize::from(!known), bytes) {
                    self.stats.bad_notices += 1;
                    return;
                }
                self.introduce(ep, now, &m);
                let m = member(m);
                let replaced = self.rooms.get_mut(&room).and_then(|view| {
                    let at = view.members.iter().position(|x| x.user == user);
                    let replaced = at.map(|i| view.members.remove(i));
                    view.members.push(m.clone());
                    replaced
                });
                if let Some(r) = &replaced {
                    self.left(r);
                }
                self.entered(&m);
                HubEvent::PeerJoined {
                    room: RoomId(room),
                    user,
                }
            }
            Notice::PeerLeft { room, user, reason } => {
                let reason = LeaveReason::from_wire(reason);
                let gone = self.rooms.get_mut(&room).and_then(|view| {
                    let at = view.members.iter().position(|x| x.user == user)?;
                    Some(view.members.remove(at))
                });
                if let Some(m) = &gone {
                    self.left(m);
                }
                self.forget_if_alone(ep, user);
                HubEvent::PeerLeft {
                    room: RoomId(room),
                    user,
                    reason,
                }
            }
            Notice::RoomLeft { room, reason } => {
                let reason = LeaveReason::from_wire(reason);
                if let Some(view) = self.rooms.remove(&room) {
                    for m in &view.members {
                        self.left(m);
                    }
                    for m in view.members {
                        self.forget_if_alone(ep, m.user);
                    }
                }
                HubEvent::RoomLeft {
                    room: RoomId(room),
                    reason,
                }
            }
            Notice::OwnerChanged { room, owner } => {
                if let Some(view) = self.rooms.get_mut(&room) {
                    view.owner = owner;
                }
                HubEvent::OwnerChanged {
                    room: RoomId(room),
                    owner,
                }
            }
            Notice::JoinRequested {
                room,
                user,
                metadata,
            } => HubEvent::JoinRequested {
                room: RoomId(room),
                user,
                metadata,
            },
        };
        self.ready.push_back(event);
    }
}

fn member(m: MemberEntry) -> Member {
    Member {
        user: m.user,
        key: m.key.map(PublicKey),
        client_id: m.client_id,
        metadata: m.metadata,
    }
}

/// Whether `addr` can be one host's: not unspecified, multicast or broadcast, nor port 0.
fn one_host(addr: &SocketAddr) -> bool {
    let v4_ok =
        |ip: core::net::Ipv4Addr| !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast());
    let ip_ok = match addr.ip() {
        core::net::IpAddr::V4(ip) => v4_ok(ip),
        // (An IPv4 address mapped into IPv6 is sent to as IPv4 by a dual-stack socket.)
        core::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => v4_ok(v4),
            None => !(ip.is_unspecified() || ip.is_multicast()),
        },
    };
    // (Nor a relay address: a hub naming one would turn a direct path into its tunnel.)
    ip_ok && addr.port() != 0 && relay_user(*addr).is_none()
}

/// The payload bytes a held relayed event counts against `max_waiting_bytes`.
fn waiting_len(event: &Event) -> usize {
    match event {
        Event::Message { payload, .. } | Event::Request { payload, .. } => payload.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSeed;

    /// A member's endpoint, its hub connection (connecting) and its client.
    fn member(seed: u64) -> (Endpoint, ConnectionHandle, HubClient, Instant) {
        member_with(Config {
            secret_seed: Some(SecretSeed::insecure_from_u64(seed)),
            ..super::super::endpoint_config()
        })
    }

    /// [`member`], its endpoint configured with `config`.
    fn member_with(config: Config) -> (Endpoint, ConnectionHandle, HubClient, Instant) {
        let mut ep = Endpoint::new(config).unwrap();
        let now = Instant::from_millis(1);
        let hub = ep
            .connect(now, "10.0.0.1:7000".parse().unwrap(), &[])
            .unwrap();
        let client = HubClient::new(hub, ep.config()).unwrap();
        (ep, hub, client, now)
    }

    #[test]
    fn messages_held_for_a_missing_pair_key_stay_under_the_byte_cap() {
        let (mut ep, hub, mut client, now) = member(2);
        // A room mate whose key this member never had (or already forgot) sends to it.
        let relayed = |len: usize| Event::Message {
            conn: hub,
            channel: 2,
            sequence: 0,
            payload: Bytes::from(alloc::vec![7u8; len]),
            relay: Some(Relay {
                owner: 9,
                target: Some(3),
            }),
        };
        // Twice the largest message (1 MiB by default): a message sent right after its
        // sender joined still waits for the introduction.
        let cap = client.max_waiting_bytes;
        assert_eq!(cap, 2 << 20);
        for _ in 0..10 {
            client.handle_event(&mut ep, now, relayed(600 * 1024));
        }
        assert!(client.waiting_bytes <= cap);
        assert_eq!(
            client.waiting_bytes,
            client.waiting.iter().map(waiting_len).sum()
        );
        assert_eq!(client.waiting.len(), 3, "three of 600 KiB fit under 2 MiB");
        assert_eq!(client.stats().waiting_dropped, 7);
        // One larger than the whole cap is not held, and evicts nothing.
        client.handle_event(&mut ep, now, relayed(cap + 1));
        assert_eq!(client.waiting.len(), 3);
        assert_eq!(client.stats().waiting_dropped, 8);
        // Small ones still queue up to the count cap.
        for _ in 0..100 {
            client.handle_event(&mut ep, now, relayed(10));
        }
        assert_eq!(client.waiting.len(), MAX_WAITING);
        assert_eq!(client.waiting_bytes, MAX_WAITING * 10);
        assert!(client.poll_event().is_none());
    }

    fn entry(user: u16) -> MemberEntry {
        MemberEntry {
            user,
            key: None,
            client_id: None,
            metadata: Bytes::new(),
            pair_key: Some([user as u8; 32]),
            addrs: Vec::new(),
        }
    }

    fn joined(room: u16, users: impl IntoIterator<Item = u16>) -> Notice {
        Notice::Joined {
            op: 1,
            room,
            owner: 3,
            name: Bytes::new(),
            members: users.into_iter().map(entry).collect(),
        }
    }

    /// A hub tells a member of its room mates; it cannot make the member hold what it likes,
    /// or meet (and link to) whoever it likes: a room's view names each member once and at
    /// most `MAX_ROOM_MEMBERS` of them, and a member joins only a room this member is in.
    /// (A list of 65,535 entries was stored as sent, duplicates included.)
    #[test]
    fn a_hub_cannot_make_a_member_hold_or_meet_what_it_likes() {
        let (mut ep, _, mut client, now) = member(5);
        client.user_id = Some(3);
        client.on_notice(&mut ep, now, joined(1, [3, 7, 7]));
        assert!(client.room(RoomId(1)).is_none(), "a member named twice");
        let too_many = (10..10 + MAX_ROOM_MEMBERS as u16 + 1).chain([3]);
        client.on_notice(&mut ep, now, joined(1, too_many));
        assert!(client.room(RoomId(1)).is_none(), "more than a room holds");
        client.on_notice(
            &mut ep,
            now,
            Notice::PeerJoined {
                room: 2,
                member: entry(8),
            },
        );
        assert!(!client.ciphers.contains_key(&8), "into a room it is not in");
        assert_eq!(client.stats().bad_notices, 3);
        client.on_notice(&mut ep, now, joined(1, [3, 7]));
        assert!(client.room(RoomId(1)).is_some());
        assert_eq!(client.member_entries, 2);
    }

    /// Leaving a room forgets the keys of the members this member shares no other room with,
    /// and keeps the others' (found by a count per member: a scan of every room for each
    /// member of the room left made leaving a large room quadratic).
    #[test]
    fn leaving_a_room_forgets_only_members_no_other_room_shares() {
        let (mut ep, _, mut client, now) = member(6);
        client.user_id = Some(3);
        client.on_notice(&mut ep, now, joined(1, [3, 5, 6]));
        client.on_notice(&mut ep, now, joined(2, [3, 6]));
        client.on_notice(
            &mut ep,
            now,
            Notice::PeerJoined {
                room: 2,
                member: entry(9),
            },
        );
        assert!(client.ciphers.contains_key(&9));
        client.on_notice(&mut ep, now, Notice::RoomLeft { room: 1, reason: 0 });
        assert!(!client.ciphers.contains_key(&5), "only room 1 had it");
        assert!(client.ciphers.contains_key(&6), "room 2 has it still");
        client.on_notice(
            &mut ep,
            now,
            Notice::PeerLeft {
                room: 2,
                user: 6,
                reason: 0,
            },
        );
        assert!(!client.ciphers.contains_key(&6));
        assert!(client.ciphers.contains_key(&9));
        assert_eq!(client.member_entries, 2, "this member and 9, in room 2");
        assert_eq!(client.shared_rooms.get(&9), Some(&1));
    }

    /// A leave reason or a refusal this version does not know (a newer hub's) is still a
    /// leave or a refusal: the room views follow, and the operation gets its answer. (They
    /// were dropped as bad notices, leaving the views out of step and the operation waiting
    /// for ever.)
    #[test]
    fn reasons_and_refusals_a_newer_hub_adds_are_still_taken() {
        let (mut ep, _, mut client, now) = member(7);
        client.user_id = Some(3);
        client.on_notice(&mut ep, now, joined(1, [3, 5, 6]));
        client.on_notice(
            &mut ep,
            now,
            Notice::PeerLeft {
                room: 1,
                user: 5,
                reason: 200,
            },
        );
        let members: Vec<u16> = client.rooms[&1].members.iter().map(|m| m.user).collect();
        assert_eq!(members, [3, 6]);
        client.on_notice(
            &mut ep,
            now,
            Notice::RoomLeft {
                room: 1,
                reason: 201,
            },
        );
        assert!(client.rooms.is_empty());
        client.on_notice(&mut ep, now, Notice::Refused { op: 7, reason: 99 });
        assert_eq!(client.stats.bad_notices, 0);
        let events: Vec<HubEvent> = core::iter::from_fn(|| client.poll_event()).collect();
        assert!(events.iter().any(|e| matches!(
            e,
            HubEvent::PeerLeft {
                user: 5,
                reason: LeaveReason::Unrecognized(200),
                ..
            }
        )));
        assert!(events.iter().any(|e| matches!(
            e,
            HubEvent::RoomLeft {
                reason: LeaveReason::Unrecognized(201),
                ..
            }
        )));
        assert!(events.iter().any(|e| matches!(
            e,
            HubEvent::Refused {
                reason: Refusal::Unrecognized(99),
                ..
            }
        )));
    }

    /// Addresses a hub gives for a member are used only if one host can hold them: a hub
    /// naming a multicast or broadcast address had every member probe (or connect to) every
    /// host of a network at once.
    #[test]
    fn only_addresses_one_host_can_hold_are_taken_from_the_hub() {
        let ok: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let all = [
            "224.0.0.1:4000",
            "255.255.255.255:4000",
            "0.0.0.0:4000",
            "[ff02::1]:4000",
            "[::]:4000",
            "192.0.2.7:0",
            "[::ffff:224.0.0.1]:4000",
            "[::ffff:255.255.255.255]:4000",
        ];
        let (mut ep, hub, _, now) = member(8);
        let mut client = HubClient::with_paths(hub, ep.config(), PathPolicy::Auto).unwrap();
        client.user_id = Some(3);
        let mut addrs: Vec<SocketAddr> = all.iter().map(|a| a.parse().unwrap()).collect();
        addrs.push(ok);
        let peer = MemberEntry { addrs, ..entry(9) };
        let notice = Notice::Joined {
            op: 1,
            room: 1,
            owner: 3,
            name: Bytes::new(),
            members: alloc::vec![entry(3), peer],
        };
        client.on_notice(&mut ep, now, notice);
        assert_eq!(
            client.links.get(&9).map(|l| l.addrs.clone()),
            Some(alloc::vec![ok])
        );
    }

    /// Direct-only links connect to addresses the hub names, a Hello every resend interval
    /// until the peer answers: a hostile hub naming a hundred made-up members at one
    /// victim's address had a member send to it from a hundred handshakes at once. At most
    /// `MAX_DIRECT_CONNECTING` are in flight; the others wait their turn.
    #[test]
    fn direct_only_handshakes_in_flight_are_bounded() {
        let (mut ep, hub, _, now) = member_with(Config {
            secret_seed: Some(SecretSeed::insecure_from_u64(7)),
            static_keypair: Some(crate::crypto::Keypair::from_secret([7; 32])),
            ..super::super::endpoint_config()
        });
        let mut client = HubClient::with_paths(hub, ep.config(), PathPolicy::DirectOnly).unwrap();
        client.user_id = Some(3);
        let victim = |i: u16| SocketAddr::from(([192, 0, 2, 1], 1_000 + i));
        let members = (10..110u16).map(|user| MemberEntry {
            key: Some([user as u8; 32]),
            addrs: alloc::vec![victim(user)],
            ..entry(user)
        });
        let notice = Notice::Joined {
            op: 1,
            room: 1,
            owner: 3,
            name: Bytes::new(),
            members: core::iter::once(entry(3)).chain(members).collect(),
        };
        client.on_notice(&mut ep, now, notice);
        assert_eq!(client.direct_connecting.len(), MAX_DIRECT_CONNECTING);
        assert_eq!(client.direct_waiting.len(), 100 - MAX_DIRECT_CONNECTING);
        // One times out: the next waiting one takes its place.
        let first = *client.direct_connecting.iter().next().unwrap();
        client.handle_event(
            &mut ep,
            now,
            Event::ConnectFailed {
                conn: first,
                reason: DisconnectReason::TimedOut,
            },
        );
        assert_eq!(client.direct_connecting.len(), MAX_DIRECT_CONNECTING);
        assert_eq!(client.direct_waiting.len(), 100 - MAX_DIRECT_CONNECTING - 1);
    }

    /// A response this member cannot open (a peer declining the request empty, or one the
    /// hub forged) still ends its request, as unanswered: it used to end it silently, with
    /// neither a response nor a timeout for the application.
    #[test]
    fn a_response_that_does_not_open_ends_its_request_unanswered() {
        let (mut ep, hub, mut client, now) = member(6);
        client.user_id = Some(3);
        client.on_notice(&mut ep, now, joined(1, [3, 9]));
        while client.poll_event().is_some() {}
        let id = client.request(&mut ep, now, 9, 2, b"question").unwrap();
        let declined = Event::Response {
            conn: hub,
            id,
            payload: Bytes::new(),
        };
        client.handle_event(&mut ep, now, declined);
        let ended = Event::RequestTimedOut { conn: hub, id };
        assert_eq!(client.poll_event(), Some(HubEvent::Transport(ended)));
        assert_eq!(client.poll_event(), None);
        assert_eq!(client.stats().unopened, 1);
    }

    /// A peer that never answers its link's handshake is tried `LINK_TIMEOUTS` times, then
    /// the link is marked failed: the member with the lower id opened it again on every
    /// timeout, a Hello every resend interval for good, while the peer sent nothing.
    #[test]
    fn a_link_whose_handshakes_go_unanswered_fails_after_a_few() {
        let (mut ep, hub, _, now) = member_with(Config {
            accept_incoming: true,
            secret_seed: Some(SecretSeed::insecure_from_u64(5)),
            ..super::super::endpoint_config()
        });
        let mut client = HubClient::with_paths(hub, ep.config(), PathPolicy::RelayOnly).unwrap();
        client.user_id = Some(3);
        client.on_notice(&mut ep, now, joined(1, [3, 9]));
        let mut now = now;
        for attempt in 1..=LINK_TIMEOUTS {
            let conn = client
                .links
                .get(&9)
                .and_then(|l| l.conn)
                .expect("an attempt");
            // The endpoint gives the attempt up, and says so.
            now += ep.config().handshake_timeout + core::time::Duration::from_secs(1);
            ep.handle_timeout(now);
            while let Some(event) = ep.poll_event() {
                if event.connection() == conn {
                    let timed_out = DisconnectReason::TimedOut;
                    assert!(
                        matches!(event, Event::ConnectFailed { reason, .. } if reason == timed_out)
                    );
                    client.handle_event(&mut ep, now, event);
                }
            }
            let link = client.links.get(&9).expect("the link");
            assert_eq!(
                link.conn.is_some(),
                attempt < LINK_TIMEOUTS,
                "attempt {attempt}"
            );
            assert_eq!(link.failed, attempt == LINK_TIMEOUTS);
        }
        assert_eq!(client.stats().links_failed, 1);
    }

    /// What waits for a peer link that is not up yet is checked as the endpoint would check
    /// it: once the link is up, a refusal would reach no one (the message would be lost
    /// after `send` said Ok).
    #[test]
    fn a_message_for_a_link_not_up_yet_is_refused_at_once_if_it_never_could_be_sent() {
        let (mut ep, hub, _, _) = member(4);
        let config = Config {
            accept_incoming: true,
            ..ep.config().clone()
        };
        let mut client = HubClient::with_paths(hub, &config, PathPolicy::RelayOnly).unwrap();
        client.links.insert(12, Link::default());
        let mut send = |channel: u8, len: usize| {
            client.send(&mut ep, Target::User(12), channel, alloc::vec![0u8; len])
        };
        assert_eq!(send(2, 100), Ok(()), "waits for the link");
        assert_eq!(
            send(9, 100),
            Err(HubError::Send(SendError::UnknownChannel(9)))
        );
        let max = config.max_message_size;
        assert!(matches!(
            send(2, max + 1),
            Err(HubError::Send(SendError::MessageTooLarge { .. }))
        ));
        // A reliable channel's queue holds `max_queued_bytes`, counted as the endpoint does
        // (each message its payload and its entry).
        let room = config.channels[2].max_queued_bytes;
        let entry = crate::messaging::channel::QUEUE_ENTRY_BYTES;
        let mut taken = 100 + entry;
        while taken + max + entry <= room {
            assert_eq!(send(2, max), Ok(()));
            taken += max + entry;
        }
        assert!(matches!(
            send(2, max),
            Err(HubError::Send(SendError::QueueFull { channel: 2, .. }))
        ));
        assert_eq!(send(3, 100), Ok(()), "another channel has its own room");
    }

    /// A sealed request the hub delivers again is taken once: a replayed "buy" does not buy
    /// twice. Requests taken out of order, or after many others, still are.
    #[test]
    fn a_relayed_request_delivered_again_is_taken_once() {
        let (mut ep, hub, mut client, now) = member(5);
        let pair_key = [6u8; 32];
        client.ciphers.insert(12, PairCipher::new(&pair_key, 9, 12));
        let mut peer = PairCipher::new(&pair_key, 12, 9);
        let request = |sealed: &[u8], sequence: u16| Event::Request {
            conn: hub,
            request: IncomingRequest {
                channel: 2,
                sequence,
            },
            payload: Bytes::copy_from_slice(sealed),
            relay: Some(Relay {
                owner: 12,
                target: Some(Target::User(9).to_wire()),
            }),
        };
        let buy = peer.seal(&[AAD_REQUEST, 2], b"buy");
        let taken = |client: &mut HubClient, ep: &mut Endpoint, sealed: &[u8], seq: u16| {
            client.handle_event(ep, now, request(sealed, seq));
            core::iter::from_fn(|| client.poll_event())
                .filter(|e| matches!(e, HubEvent::Request { .. }))
                .count()
        };
        assert_eq!(taken(&mut client, &mut ep, &buy, 0), 1);
        // The hub delivers it again, as a new request of the hop.
        assert_eq!(taken(&mut client, &mut ep, &buy, 1), 0);
        assert_eq!(client.stats().requests_replayed, 1);
        // Later requests, one overtaking another, are taken; the window moves on.
        let sealed: Vec<_> = (0..100)
            .map(|_| peer.seal(&[AAD_REQUEST, 2], b"sell"))
            .collect();
        assert_eq!(taken(&mut client, &mut ep, &sealed[1], 2), 1);
        assert_eq!(taken(&mut client, &mut ep, &sealed[0], 3), 1);
        for (i, s) in sealed[2..].iter().enumerate() {
            assert_eq!(taken(&mut client, &mut ep, s, 4 + i as u16), 1);
        }
        for s in [&buy, &sealed[0], &sealed[99]] {
            assert_eq!(taken(&mut client, &mut ep, s, 200), 0, "a replay");
        }
    }

    #[test]
    fn a_request_window_takes_each_counter_once_and_forgets_after_a_timeout() {
        let keep = core::time::Duration::from_secs(10);
        let t0 = Instant::from_millis(1);
        let mut w = RequestWindow::default();
        assert_eq!(w.take(5, t0, keep), Taken::New);
        assert_eq!(w.take(5, t0, keep), Taken::Again);
        assert_eq!(w.take(3, t0, keep), Taken::New, "overtaken, still in time");
        // A timeout later everything kept is forgotten, and what is older counts as taken.
        let later = t0 + keep + core::time::Duration::from_millis(1);
        assert_eq!(w.take(4, later, keep), Taken::Late);
        assert_eq!(w.take(5, later, keep), Taken::Late);
        assert_eq!(w.take(6, later, keep), Taken::New);
        assert!(w.taken.len() <= 1);
        // At most LEN are kept within a timeout.
        for c in 100..100 + 2 * RequestWindow::LEN as u64 {
            assert_eq!(w.take(c, later, keep), Taken::New);
        }
        assert!(w.taken.len() <= RequestWindow::LEN);
        assert_eq!(w.take(100, later, keep), Taken::Late);
    }

    /// A lying peer's last possible counter is forgotten like any other (it once overflowed
    /// when it aged out: a panic in a debug build), and only its own requests pay for it.
    #[test]
    fn a_request_window_forgets_the_largest_counter_without_overflow() {
        let keep = core::time::Duration::from_secs(10);
        let t0 = Instant::from_millis(1);
        let mut w = RequestWindow::default();
        assert_eq!(w.take(u64::MAX, t0, keep), Taken::New);
        let later = t0 + keep + core::time::Duration::from_millis(1);
        assert_eq!(w.take(5, later, keep), Taken::Late);
        assert_eq!(
            w.take(u64::MAX, later, keep),
            Taken::Late,
            "not taken again"
        );
    }

    /// A relayed response opens only as the answer to the request it was sealed for: a hub
    /// that hands member 12's "yes" to one request back as the answer to another (or to a
    /// later one) gets it dropped as unopened.
    #[test]
    fn a_relayed_response_opens_only_as_the_answer_to_its_own_request() {
        let (mut ep, hub, mut client, now) = member(3);
        let pair_key = [5u8; 32];
        client.ciphers.insert(12, PairCipher::new(&pair_key, 9, 12));
        let mut peer = PairCipher::new(&pair_key, 12, 9);
        // Member 9 asked member 12 twice ("buy for 100?", then "buy for 1?").
        let mut ask = |id: u64, what: &[u8]| {
            let cipher = client.ciphers.get_mut(&12).unwrap();
            let sealed = cipher.seal(&[AAD_REQUEST, 2], what);
            client
                .asked
                .insert(RequestId(id), (12, hub, sealed_counter(&sealed)));
            sealed
        };
        let first = ask(1, b"buy for 100?");
        let _second = ask(2, b"buy for 1?");
        let yes_to_first = peer.seal(&response_aad(sealed_counter(&first)), b"yes");
        let response = |id: u64, payload: &[u8]| Event::Response {
            conn: hub,
            id: RequestId(id),
            payload: Bytes::copy_from_slice(payload),
        };
        client.handle_event(&mut ep, now, response(2, &yes_to_first));
        assert_eq!(
            client.stats().unopened,
            1,
            "not the second request's answer"
        );
        // (The second request ends there, unanswered.)
        let ended = Event::RequestTimedOut {
            conn: hub,
            id: RequestId(2),
        };
        assert_eq!(client.poll_event(), Some(HubEvent::Transport(ended)));
        assert!(client.poll_event().is_none());
        client.handle_event(&mut ep, now, response(1, &yes_to_first));
        assert!(matches!(
            client.poll_event(),
            Some(HubEvent::Response { id: RequestId(1), from: 12, payload }) if &payload[..] == b"yes"
        ));
    }
}
