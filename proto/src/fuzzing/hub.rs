//! The hub's control messages and pair sealing, for the hub test vectors of `docs/wire.md`,
//! and the `hub_control` fuzz target body. Not part of the public API: the control protocol
//! is crate-private and changes with it.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use bytes::Bytes;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;

use crate::crypto::PairCipher;
use crate::hub::control::{self, Command, Notice};
use crate::hub::{
    self as hubs, Hub, HubClient, HubConfig, HubEvent, RoomId, RoomOptions, Target,
    DEFAULT_CONTROL_CHANNEL,
};
use crate::{Config, ConnectionHandle, Endpoint, Instant, SecretSeed};

/// Room flag bits of `Create`, as on the wire.
pub const FLAG_APPROVAL: u8 = control::FLAG_APPROVAL;
/// See [`FLAG_APPROVAL`].
pub const FLAG_CLOSE_WITH_OWNER: u8 = control::FLAG_CLOSE_WITH_OWNER;

/// A member entry of `Joined` and `PeerJoined`, field for field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberEntry {
    /// Its user id.
    pub user: u16,
    /// Its static key, if its handshake proved one.
    pub key: Option<[u8; 32]>,
    /// The client id of its connect token.
    pub client_id: Option<u64>,
    /// What it gave when it joined.
    pub metadata: Vec<u8>,
    /// The pair key, when the notice introduces the two members.
    pub pair_key: Option<[u8; 32]>,
    /// Where it may be reached directly (given with the pair key).
    pub addrs: Vec<SocketAddr>,
}

impl MemberEntry {
    fn to_control(&self) -> control::MemberEntry {
        control::MemberEntry {
            user: self.user,
            key: self.key,
            client_id: self.client_id,
            metadata: Bytes::copy_from_slice(&self.metadata),
            pair_key: self.pair_key,
            addrs: self.addrs.clone(),
        }
    }
}

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

/// `Create`.
pub fn encode_command_create(
    op: u32,
    name: &[u8],
    password: &[u8],
    metadata: &[u8],
    max_members: u16,
    flags: u8,
) -> Vec<u8> {
    Command::Create {
        op,
        name: b(name),
        password: b(password),
        metadata: b(metadata),
        max_members,
        flags,
    }
    .encode()
}

/// `Join`.
pub fn encode_command_join(op: u32, name: &[u8], password: &[u8], metadata: &[u8]) -> Vec<u8> {
    Command::Join {
        op,
        name: b(name),
        password: b(password),
        metadata: b(metadata),
    }
    .encode()
}

/// `Leave`.
pub fn encode_command_leave(op: u32, room: u16) -> Vec<u8> {
    Command::Leave { op, room }.encode()
}

/// `Kick`.
pub fn encode_command_kick(op: u32, room: u16, user: u16) -> Vec<u8> {
    Command::Kick { op, room, user }.encode()
}

/// `Close`.
pub fn encode_command_close(op: u32, room: u16) -> Vec<u8> {
    Command::Close { op, room }.encode()
}

/// `Approve`.
pub fn encode_command_approve(op: u32, room: u16, user: u16, accept: bool) -> Vec<u8> {
    Command::Approve {
        op,
        room,
        user,
        accept,
    }
    .encode()
}

/// `Announce`.
pub fn encode_command_announce(op: u32, addrs: &[SocketAddr]) -> Vec<u8> {
    Command::Announce {
        op,
        addrs: addrs.to_vec(),
    }
    .encode()
}

/// A command as its `Debug` text, or `None` if the bytes are not one.
pub fn decode_command(bytes: &[u8]) -> Option<String> {
    Command::decode(&b(bytes)).map(|c| format!("{c:?}"))
}

/// `Joined`.
pub fn encode_notice_joined(
    op: u32,
    room: u16,
    owner: u16,
    name: &[u8],
    members: &[MemberEntry],
) -> Vec<u8> {
    Notice::Joined {
        op,
        room,
        owner,
        name: b(name),
        members: members.iter().map(MemberEntry::to_control).collect(),
    }
    .encode()
}

/// `Done`.
pub fn encode_notice_done(op: u32) -> Vec<u8> {
    Notice::Done { op }.encode()
}

/// `Refused`, with a refusal code.
pub fn encode_notice_refused(op: u32, reason: u8) -> Vec<u8> {
    Notice::Refused { op, reason }.encode()
}

/// `PeerJoined`.
pub fn encode_notice_peer_joined(room: u16, member: &MemberEntry) -> Vec<u8> {
    Notice::PeerJoined {
        room,
        member: member.to_control(),
    }
    .encode()
}

/// `PeerLeft`, with a leave reason code.
pub fn encode_notice_peer_left(room: u16, user: u16, reason: u8) -> Vec<u8> {
    Notice::PeerLeft { room, user, reason }.encode()
}

/// `RoomLeft`, with a leave reason code.
pub fn encode_notice_room_left(room: u16, reason: u8) -> Vec<u8> {
    Notice::RoomLeft { room, reason }.encode()
}

/// `OwnerChanged`.
pub fn encode_notice_owner_changed(room: u16, owner: u16) -> Vec<u8> {
    Notice::OwnerChanged { room, owner }.encode()
}

/// `JoinRequested`.
pub fn encode_notice_join_requested(room: u16, user: u16, metadata: &[u8]) -> Vec<u8> {
    Notice::JoinRequested {
        room,
        user,
        metadata: b(metadata),
    }
    .encode()
}

/// A notice as its `Debug` text, or `None` if the bytes are not one.
pub fn decode_notice(bytes: &[u8]) -> Option<String> {
    Notice::decode(&b(bytes)).map(|n| format!("{n:?}"))
}

/// What user `me` sends user `peer` under `pair_key`: each of `plains` sealed in turn with
/// `aad` (so with counters 0, 1, ...).
pub fn seal_pair(
    pair_key: &[u8; 32],
    me: u16,
    peer: u16,
    aad: &[u8],
    plains: &[&[u8]],
) -> Vec<Vec<u8>> {
    let mut cipher = PairCipher::new(pair_key, me, peer);
    plains.iter().map(|p| cipher.seal(aad, p)).collect()
}

/// What user `me` reads of `sealed`, sent by user `peer` under `pair_key` with `aad`.
pub fn open_pair(
    pair_key: &[u8; 32],
    me: u16,
    peer: u16,
    aad: &[u8],
    sealed: &[u8],
) -> Option<Vec<u8>> {
    PairCipher::new(pair_key, me, peer).open(aad, sealed)
}

/// The `hub_control` fuzz target body.
///
/// First, `data` as one control message: decoding it as a `Command` and as a `Notice` must
/// not panic, and whatever decodes must encode back to exactly `data`.
///
/// Then a hub with three members (two in room "a", one outside it) over a perfect in-memory
/// link, driven by `data` cut into steps at each `ff fe`. A step's first byte picks a member
/// and an action, the rest is its argument:
///
/// - raw bytes on the member's control channel (arbitrary commands to the hub);
/// - a redirected message or request to a 16-bit target, on a channel of its choosing;
/// - raw bytes on the hub's control channel to the member (arbitrary notices: a lying hub);
/// - a `HubClient` call (create, join, leave, kick, close, approve, send) with small names,
///   so that well-formed traffic reaches every state too;
/// - time passing (joins awaiting approval expire).
///
/// After every step nothing may have panicked and the hub's rooms must be consistent: each
/// has at least one member, its owner among them, no member twice; the hub's room count
/// agrees, and its member count covers everyone in a room.
pub fn hub_control(data: &[u8]) {
    round_trip(data);
    let Some(mut world) = World::new() else {
        return;
    };
    for step in super::split_datagrams(data).into_iter().take(64) {
        world.step(step);
        world.check();
    }
}

fn round_trip(data: &[u8]) {
    let bytes = b(data);
    if let Some(c) = Command::decode(&bytes) {
        assert_eq!(
            c.encode(),
            data,
            "Command decode → encode is not the identity"
        );
    }
    if let Some(n) = Notice::decode(&bytes) {
        assert_eq!(
            n.encode(),
            data,
            "Notice decode → encode is not the identity"
        );
    }
}

const MEMBERS: usize = 3;
const CONTROL: u8 = DEFAULT_CONTROL_CHANNEL;
const NAMES: [&str; 3] = ["a", "b", "c"];

struct World {
    hub_ep: Endpoint,
    hub: Hub,
    hub_addr: SocketAddr,
    members: Vec<Member>,
    now: Instant,
    buf: Vec<u8>,
}

struct Member {
    addr: SocketAddr,
    ep: Endpoint,
    client: HubClient,
    /// The hub's connection to it.
    at_hub: Option<ConnectionHandle>,
    /// Users it heard of, for targets and kicks.
    seen: Vec<u16>,
    /// Rooms it heard of.
    rooms: Vec<RoomId>,
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)), 7000)
}

impl World {
    fn new() -> Option<World> {
        // Protected, as a hub must be (it hands out pair keys).
        let config = |n: u64| {
            let mut c = Config {
                seed: n,
                secret_seed: Some(SecretSeed::insecure_from_u64(n)),
                max_control_queue: 64,
                ..hubs::endpoint_config()
            };
            for channel in &mut c.channels {
                channel.max_queued_bytes = 64 * 1024;
            }
            c
        };
        let hub_ep = Endpoint::new(config(1)).ok()?;
        let hub = Hub::new(
            HubConfig {
                secret_seed: Some(SecretSeed::insecure_from_u64(9)),
                max_rooms: 8,
                max_rooms_per_member: 4,
                max_members_per_room: 3,
                max_pending_joins: 2,
                max_owned_rooms: 2,
                max_owned_rooms_per_ip: 3,
                max_pending_asks: 2,
                approval_timeout: Duration::from_millis(50),
                max_relayed_requests: 4,
                ..HubConfig::default()
            },
            hub_ep.config(),
        )
        .ok()?;
        let hub_addr = addr(1);
        let now = Instant::from_millis(1);
        let mut members = Vec::with_capacity(MEMBERS);
        for n in 0..MEMBERS as u8 {
            let mut ep = Endpoint::new(Config {
                accept_incoming: false,
                ..config(u64::from(n) + 2)
            })
            .ok()?;
            let conn = ep.connect(now, hub_addr, &[]).ok()?;
            let client = HubClient::new(conn, ep.config()).ok()?;
            members.push(Member {
                // The first two share an address (one host, two ports): what the hub counts
                // per address is reached.
                addr: SocketAddr::new(addr(n.min(1) + 2).ip(), 7000 + u16::from(n)),
                ep,
                client,
                at_hub: None,
                seen: Vec::new(),
                rooms: Vec::new(),
            });
        }
        let mut w = World {
            hub_ep,
            hub,
            hub_addr,
            members,
            now,
            buf: vec![0; 1500],
        };
        w.pump();
        let m = &mut w.members[0];
        m.client
            .create_room(&mut m.ep, "a", &RoomOptions::default())
            .ok()?;
        w.pump();
        let m = &mut w.members[1];
        m.client.join_room(&mut m.ep, "a", b"", b"one").ok()?;
        w.pump();
        // The harness itself: a setup that went wrong would fuzz nothing.
        let sizes: Vec<usize> = w.hub.rooms().map(|r| r.members.len()).collect();
        assert_eq!(sizes, [2], "setup: one room of two members");
        assert!(w.members.iter().all(|m| m.at_hub.is_some()), "setup");
        Some(w)
    }

    /// Runs the perfect link until nothing moves (bounded), 1 ms a turn.
    fn pump(&mut self) {
        for _ in 0..16 {
            let mut moved = false;
            self.now += Duration::from_millis(1);
            let now = self.now;
            self.hub_ep.handle_timeout(now);
            self.hub.handle_timeout(&mut self.hub_ep, now);
            for m in &mut self.members {
                m.ep.handle_timeout(now);
                while let Some(t) = m.ep.poll_transmit(now, &mut self.buf) {
                    moved = true;
                    self.hub_ep.handle_datagram(now, m.addr, &self.buf[..t.len]);
                }
            }
            while let Some(event) = self.hub_ep.poll_event() {
                moved = true;
                if let crate::Event::Connected { conn, .. } = &event {
                    // Learn which member each of the hub's connections is, by its address.
                    let from = self.hub_ep.remote_address(*conn);
                    if let Some(m) = self.members.iter_mut().find(|m| Some(m.addr) == from) {
                        m.at_hub = Some(*conn);
                    }
                }
                self.hub.handle_event(&mut self.hub_ep, now, event);
            }
            while let Some(t) = self.hub_ep.poll_transmit(now, &mut self.buf) {
                moved = true;
                if let Some(m) = self.members.iter_mut().find(|m| m.addr == t.to) {
                    m.ep.handle_datagram(now, self.hub_addr, &self.buf[..t.len]);
                }
            }
            for m in &mut self.members {
                while let Some(event) = m.ep.poll_event() {
                    moved = true;
                    m.client.handle_event(&mut m.ep, now, event);
                }
                while let Some(event) = m.client.poll_event() {
                    m.on_event(event);
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn step(&mut self, step: &[u8]) {
        let Some((&op, arg)) = step.split_first() else {
            return;
        };
        let m = usize::from(op) % MEMBERS;
        let byte = |i: usize| arg.get(i).copied().unwrap_or(0);
        let word = |i: usize| u16::from_be_bytes([byte(i), byte(i + 1)]);
        let member = &mut self.members[m];
        let conn = member.client.connection();
        match (op / MEMBERS as u8) % 6 {
            0 => {
                let _ = member.ep.send(conn, CONTROL, b(arg));
            }
            1 => {
                let target = word(0);
                let channel = byte(2) % 6;
                let payload = b(arg.get(3..).unwrap_or_default());
                if byte(2) & 0x80 == 0 {
                    let _ = member
                        .ep
                        .send_redirected(conn, channel, payload, Some(target));
                } else {
                    let now = self.now;
                    let _ = member
                        .ep
                        .request_redirected(now, conn, channel, payload, Some(target));
                }
            }
            2 => {
                if let Some(at_hub) = member.at_hub {
                    let _ = self.hub_ep.send(at_hub, CONTROL, b(arg));
                }
            }
            3 | 4 => member.call(arg),
            _ => {
                self.now += Duration::from_millis(u64::from(byte(0)));
            }
        }
        self.pump();
    }

    fn check(&self) {
        let mut rooms = 0;
        for room in self.hub.rooms() {
            rooms += 1;
            assert!(!room.members.is_empty(), "{} is empty", room.id);
            assert!(
                room.members.contains(&room.owner),
                "{}: owner {} is not a member",
                room.id,
                room.owner
            );
            for (i, u) in room.members.iter().enumerate() {
                assert!(!room.members[i + 1..].contains(u), "{}: {u} twice", room.id);
            }
        }
        assert_eq!(rooms, self.hub.stats().rooms, "room count");
        if let Err(e) = self.hub.check_counts() {
            panic!("hub counts: {e}");
        }
        // Room members are connected members.
        let mut in_rooms: Vec<u16> = self.hub.rooms().flat_map(|r| r.members).collect();
        in_rooms.sort_unstable();
        in_rooms.dedup();
        let members = self.hub.stats().members;
        assert!(
            in_rooms.len() <= members && members <= MEMBERS,
            "{members} members counted, {} in rooms",
            in_rooms.len()
        );
    }
}

impl Member {
    fn on_event(&mut self, event: HubEvent) {
        match event {
            HubEvent::Joined { room, .. } => {
                if !self.rooms.contains(&room) {
                    self.rooms.push(room);
                }
                if let Some(view) = self.client.room(room) {
                    for member in &view.members {
                        if !self.seen.contains(&member.user) {
                            self.seen.push(member.user);
                        }
                    }
                }
            }
            HubEvent::PeerJoined { user, .. } | HubEvent::JoinRequested { user, .. }
                if !self.seen.contains(&user) =>
            {
                self.seen.push(user);
            }
            HubEvent::Request { request, .. } => {
                let _ = self.client.respond(&mut self.ep, request, b"re");
            }
            _ => {}
        }
    }

    /// A `HubClient` call chosen and filled from `arg`.
    fn call(&mut self, arg: &[u8]) {
        let byte = |i: usize| arg.get(i).copied().unwrap_or(0);
        let pick = |list: &[u16], i: usize| {
            (!list.is_empty()).then(|| list[usize::from(byte(i)) % list.len()])
        };
        let room = if self.rooms.is_empty() {
            RoomId(u16::from(byte(1) % 4))
        } else {
            self.rooms[usize::from(byte(1)) % self.rooms.len()]
        };
        let user = pick(&self.seen, 2).unwrap_or(u16::from(byte(2)));
        let name = NAMES[usize::from(byte(3)) % NAMES.len()];
        let (ep, client) = (&mut self.ep, &mut self.client);
        let _ = match byte(0) % 8 {
            0 => client
                .create_room(
                    ep,
                    name,
                    &RoomOptions {
                        password: if byte(4) & 1 != 0 {
                            b"pw".to_vec()
                        } else {
                            Vec::new()
                        },
                        metadata: arg.get(5..).unwrap_or_default().to_vec(),
                        max_members: u16::from(byte(4) >> 4),
                        approval: byte(4) & 2 != 0,
                        close_with_owner: byte(4) & 4 != 0,
                    },
                )
                .map(drop),
            1 => {
                let password: &[u8] = if byte(4) & 1 != 0 { b"pw" } else { b"" };
                client.join_room(ep, name, password, b"m").map(drop)
            }
            2 => client.leave_room(ep, room).map(drop),
            3 => client.kick(ep, room, user).map(drop),
            4 => client.close_room(ep, room).map(drop),
            5 => client.approve(ep, room, user, byte(4) & 1 != 0).map(drop),
            6 => {
                let to = match byte(4) % 3 {
                    0 => Target::User(user),
                    1 => Target::Room(room),
                    _ => Target::RoomExceptSender(room),
                };
                let channel = byte(5) % 4;
                client
                    .send(ep, to, channel, b(arg.get(6..).unwrap_or_default()))
                    .map(drop)
            }
            _ => Ok(()),
        };
    }
}
