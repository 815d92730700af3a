//! The hub's control messages: what a member asks of the hub ([`Command`]) and what the hub
//! tells it ([`Notice`]), one per message on the reserved control channel (reliable, ordered,
//! so a member sees its rooms change in the order the hub changed them). Byte layout in
//! docs/wire.md; decoding never panics and refuses trailing bytes.

use alloc::vec::Vec;
use bytes::{BufMut, Bytes};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Most addresses a member announces, and a member entry carries (the observed one first).
pub(crate) const MAX_ADDRS: usize = 4;

/// Longest room name, password and member metadata the wire can carry; the hub's config sets
/// lower limits of its own.
pub(crate) const MAX_FIELD: usize = 4096;

/// Room flag: joiners wait for the owner's approval.
pub(crate) const FLAG_APPROVAL: u8 = 0x01;
/// Room flag: the room closes when its owner leaves (else the oldest member takes over).
pub(crate) const FLAG_CLOSE_WITH_OWNER: u8 = 0x02;

/// A member's request to the hub. Every one carries the member's operation id, which the
/// hub's answer (`Joined`, `Done` or `Refused`) echoes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Create {
        op: u32,
        name: Bytes,
        password: Bytes,
        metadata: Bytes,
        max_members: u16,
        flags: u8,
    },
    Join {
        op: u32,
        name: Bytes,
        password: Bytes,
        metadata: Bytes,
    },
    Leave {
        op: u32,
        room: u16,
    },
    Kick {
        op: u32,
        room: u16,
        user: u16,
    },
    Close {
        op: u32,
        room: u16,
    },
    Approve {
        op: u32,
        room: u16,
        user: u16,
        accept: bool,
    },
    /// The member's own (local) addresses, for peers on its network.
    Announce {
        op: u32,
        addrs: Vec<SocketAddr>,
    },
}

/// One member as the hub describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberEntry {
    pub(crate) user: u16,
    /// Its static key, if its handshake proved one.
    pub(crate) key: Option<[u8; 32]>,
    /// The client id of its connect token, if it presented one.
    pub(crate) client_id: Option<u64>,
    /// What it gave when it joined this room.
    pub(crate) metadata: Bytes,
    /// The key the hub made for this member and the receiver, when this notice introduces
    /// them (their first shared room).
    pub(crate) pair_key: Option<[u8; 32]>,
    /// Where it may be reached directly, with the pair key: the address the hub sees, then
    /// those it announced.
    pub(crate) addrs: Vec<SocketAddr>,
}

/// What the hub tells a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    Joined {
        op: u32,
        room: u16,
        owner: u16,
        name: Bytes,
        members: Vec<MemberEntry>,
    },
    Done {
        op: u32,
    },
    Refused {
        op: u32,
        reason: u8,
    },
    PeerJoined {
        room: u16,
        member: MemberEntry,
    },
    PeerLeft {
        room: u16,
        user: u16,
        reason: u8,
    },
    RoomLeft {
        room: u16,
        reason: u8,
    },
    OwnerChanged {
        room: u16,
        owner: u16,
    },
    JoinRequested {
        room: u16,
        user: u16,
        metadata: Bytes,
    },
}

const CREATE: u8 = 1;
const JOIN: u8 = 2;
const LEAVE: u8 = 3;
const KICK: u8 = 4;
const CLOSE: u8 = 5;
const APPROVE: u8 = 6;
const ANNOUNCE: u8 = 7;
const JOINED: u8 = 0x41;
const DONE: u8 = 0x42;
const REFUSED: u8 = 0x43;
const PEER_JOINED: u8 = 0x44;
const PEER_LEFT: u8 = 0x45;
const ROOM_LEFT: u8 = 0x46;
const OWNER_CHANGED: u8 = 0x47;
const JOIN_REQUESTED: u8 = 0x48;

/// Member entry flags.
const HAS_KEY: u8 = 0x01;
const HAS_CLIENT_ID: u8 = 0x02;
const HAS_PAIR_KEY: u8 = 0x04;

fn put_addrs(out: &mut Vec<u8>, addrs: &[SocketAddr]) {
    let addrs = &addrs[..addrs.len().min(MAX_ADDRS + 1)];
    out.put_u8(addrs.len() as u8);
    for a in addrs {
        match a.ip() {
            IpAddr::V4(ip) => {
                out.put_u8(4);
                out.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.put_u8(6);
                out.put_slice(&ip.octets());
            }
        }
        out.put_u16(a.port());
    }
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    // Callers bound every field far below 64 KiB (MAX_FIELD).
    out.put_u16(field.len().min(MAX_FIELD) as u16);
    out.put_slice(&field[..field.len().min(MAX_FIELD)]);
}

impl Command {
    /// The member's operation id, which the answer echoes.
    pub(crate) fn op(&self) -> u32 {
        match self {
            Command::Create { op, .. }
            | Command::Join { op, .. }
            | Command::Leave { op, .. }
            | Command::Kick { op, .. }
            | Command::Close { op, .. }
            | Command::Approve { op, .. }
            | Command::Announce { op, .. } => *op,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        match self {
            Command::Create {
                op,
                name,
                password,
                metadata,
                max_members,
                flags,
            } => {
                out.put_u8(CREATE);
                out.put_u32(*op);
                put_field(&mut out, name);
                put_field(&mut out, password);
                put_field(&mut out, metadata);
                out.put_u16(*max_members);
                out.put_u8(*flags);
            }
            Command::Join {
                op,
                name,
                password,
                metadata,
            } => {
                out.put_u8(JOIN);
                out.put_u32(*op);
                put_field(&mut out, name);
                put_field(&mut out, password);
                put_field(&mut out, metadata);
            }
            Command::Leave { op, room } => {
                out.put_u8(LEAVE);
                out.put_u32(*op);
                out.put_u16(*room);
            }
            Command::Kick { op, room, user } => {
                out.put_u8(KICK);
                out.put_u32(*op);
                out.put_u16(*room);
                out.put_u16(*user);
            }
            Command::Close { op, room } => {
                out.put_u8(CLOSE);
                out.put_u32(*op);
                out.put_u16(*room);
            }
            Command::Approve {
                op,
                room,
                user,
                accept,
            } => {
                out.put_u8(APPROVE);
                out.put_u32(*op);
                out.put_u16(*room);
                out.put_u16(*user);
                out.put_u8(u8::from(*accept));
            }
            Command::Announce { op, addrs } => {
                out.put_u8(ANNOUNCE);
                out.put_u32(*op);
                put_addrs(&mut out, &addrs[..addrs.len().min(MAX_ADDRS)]);
            }
        }
        out
    }

    pub(crate) fn decode(msg: &Bytes) -> Option<Command> {
        let mut r = Reader { buf: msg, at: 0 };
        let command = match r.u8()? {
            CREATE => Command::Create {
                op: r.u32()?,
                name: r.field()?,
                password: r.field()?,
                metadata: r.field()?,
                max_members: r.u16()?,
                flags: r.u8()?,
            },
            JOIN => Command::Join {
                op: r.u32()?,
                name: r.field()?,
                password: r.field()?,
                metadata: r.field()?,
            },
            LEAVE => Command::Leave {
                op: r.u32()?,
                room: r.u16()?,
            },
            KICK => Command::Kick {
                op: r.u32()?,
                room: r.u16()?,
                user: r.user()?,
            },
            CLOSE => Command::Close {
                op: r.u32()?,
                room: r.u16()?,
            },
            APPROVE => Command::Approve {
                op: r.u32()?,
                room: r.u16()?,
                user: r.user()?,
                accept: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
            },
            ANNOUNCE => Command::Announce {
                op: r.u32()?,
                addrs: r.addrs(MAX_ADDRS)?,
            },
            _ => return None,
        };
        r.end().then_some(command)
    }
}

/// The most bytes a `Joined` notice takes for a room of `members` members whose names and
/// metadata are at most `max_name_len` and `max_metadata_len` bytes: every entry with every
/// optional field and the most addresses, IPv6.
pub(crate) fn joined_len_at_most(
    members: usize,
    max_name_len: usize,
    max_metadata_len: usize,
) -> usize {
    let widest = MemberEntry {
        user: u16::MAX,
        key: Some([0; 32]),
        client_id: Some(u64::MAX),
        metadata: Bytes::from(alloc::vec![0; max_metadata_len]),
        pair_key: Some([0; 32]),
        addrs: alloc::vec![SocketAddr::new(IpAddr::V6(core::net::Ipv6Addr::UNSPECIFIED), 0); MAX_ADDRS + 1],
    };
    let mut entry = Vec::new();
    widest.encode(&mut entry);
    let header = Notice::Joined {
        op: u32::MAX,
        room: u16::MAX,
        owner: u16::MAX,
        name: Bytes::from(alloc::vec![0; max_name_len]),
        members: Vec::new(),
    }
    .encode()
    .len();
    header + members * entry.len()
}

impl MemberEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        let flags = if self.key.is_some() { HAS_KEY } else { 0 }
            | if self.client_id.is_some() {
                HAS_CLIENT_ID
            } else {
                0
            }
            | if self.pair_key.is_some() {
                HAS_PAIR_KEY
            } else {
                0
            };
        out.put_u16(self.user);
        out.put_u8(flags);
        if let Some(key) = &self.key {
            out.put_slice(key);
        }
        if let Some(id) = self.client_id {
            out.put_u64(id);
        }
        if let Some(key) = &self.pair_key {
            out.put_slice(key);
        }
        put_field(out, &self.metadata);
        put_addrs(out, &self.addrs);
    }

    fn decode(r: &mut Reader<'_>) -> Option<MemberEntry> {
        let user = r.user()?;
        let flags = r.u8()?;
        if flags & !(HAS_KEY | HAS_CLIENT_ID | HAS_PAIR_KEY) != 0 {
            return None;
        }
        let key = if flags & HAS_KEY != 0 {
            Some(r.key()?)
        } else {
            None
        };
        let client_id = if flags & HAS_CLIENT_ID != 0 {
            Some(r.u64()?)
        } else {
            None
        };
        let pair_key = if flags & HAS_PAIR_KEY != 0 {
            Some(r.key()?)
        } else {
            None
        };
        Some(MemberEntry {
            user,
            key,
            client_id,
            metadata: r.field()?,
            pair_key,
            addrs: r.addrs(MAX_ADDRS + 1)?,
        })
    }
}

impl Notice {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        match self {
            Notice::Joined {
                op,
                room,
                owner,
                name,
                members,
            } => {
                out.put_u8(JOINED);
                out.put_u32(*op);
                out.put_u16(*room);
                out.put_u16(*owner);
                put_field(&mut out, name);
                // The hub caps members per room far below 65,536.
                out.put_u16(members.len() as u16);
                for m in members {
                    m.encode(&mut out);
                }
            }
            Notice::Done { op } => {
                out.put_u8(DONE);
                out.put_u32(*op);
            }
            Notice::Refused { op, reason } => {
                out.put_u8(REFUSED);
                out.put_u32(*op);
                out.put_u8(*reason);
            }
            Notice::PeerJoined { room, member } => {
                out.put_u8(PEER_JOINED);
                out.put_u16(*room);
                member.encode(&mut out);
            }
            Notice::PeerLeft { room, user, reason } => {
                out.put_u8(PEER_LEFT);
                out.put_u16(*room);
                out.put_u16(*user);
                out.put_u8(*reason);
            }
            Notice::RoomLeft { room, reason } => {
                out.put_u8(ROOM_LEFT);
                out.put_u16(*room);
                out.put_u8(*reason);
            }
            Notice::OwnerChanged { room, owner } => {
                out.put_u8(OWNER_CHANGED);
                out.put_u16(*room);
                out.put_u16(*owner);
            }
            Notice::JoinRequested {
                room,
                user,
                metadata,
            } => {
                out.put_u8(JOIN_REQUESTED);
                out.put_u16(*room);
                out.put_u16(*user);
                put_field(&mut out, metadata);
            }
        }
        out
    }

    pub(crate) fn decode(msg: &Bytes) -> Option<Notice> {
        let mut r = Reader { buf: msg, at: 0 };
        let notice = match r.u8()? {
            JOINED => {
                let op = r.u32()?;
                let room = r.u16()?;
                let owner = r.user()?;
                let name = r.field()?;
                let count = usize::from(r.u16()?);
                // Each entry takes at least 6 bytes: a count beyond what is left is a lie,
                // and must not size an allocation.
                if count > r.left() / 6 {
                    return None;
                }
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(MemberEntry::decode(&mut r)?);
                }
                Notice::Joined {
                    op,
                    room,
                    owner,
                    name,
                    members,
                }
            }
            DONE => Notice::Done { op: r.u32()? },
            REFUSED => Notice::Refused {
                op: r.u32()?,
                reason: r.u8()?,
            },
            PEER_JOINED => Notice::PeerJoined {
                room: r.u16()?,
                member: MemberEntry::decode(&mut r)?,
            },
            PEER_LEFT => Notice::PeerLeft {
                room: r.u16()?,
                user: r.user()?,
                reason: r.u8()?,
            },
            ROOM_LEFT => Notice::RoomLeft {
                room: r.u16()?,
                reason: r.u8()?,
            },
            OWNER_CHANGED => Notice::OwnerChanged {
                room: r.u16()?,
                owner: r.user()?,
            },
            JOIN_REQUESTED => Notice::JoinRequested {
                room: r.u16()?,
                user: r.user()?,
                metadata: r.field()?,
            },
            _ => return None,
        };
        r.end().then_some(notice)
    }
}

/// Reads big-endian fields; every method returns `None` past the end.
struct Reader<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    /// A user id: 1 to `MAX_USER_ID` (0 is no one, and the values above name rooms: a hub
    /// naming one would have a member link to `[100::]:0`, which is no relay address, or
    /// confuse a user with a room).
    fn user(&mut self) -> Option<u16> {
        self.u16().filter(|u| (1..=super::MAX_USER_ID).contains(u))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn key(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
    /// A length-prefixed field, copied out of the message: names, passwords and metadata
    /// are kept (in rooms, member lists, pending joins), and a slice would keep the whole
    /// receive buffer it points into alive with them, up to 64 times the field's own size.
    fn field(&mut self) -> Option<Bytes> {
        let len = usize::from(self.u16()?);
        if len > MAX_FIELD {
            return None;
        }
        self.take(len).map(Bytes::copy_from_slice)
    }
    fn addrs(&mut self, max: usize) -> Option<Vec<SocketAddr>> {
        let count = usize::from(self.u8()?);
        if count > max {
            return None;
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let ip = match self.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(self.take(4)?).ok()?)),
                6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(self.take(16)?).ok()?)),
                _ => return None,
            };
            addrs.push(SocketAddr::new(ip, self.u16()?));
        }
        Some(addrs)
    }
    fn left(&self) -> usize {
        self.buf.len() - self.at
    }
    fn end(&self) -> bool {
        self.at == self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded name, password or metadata owns its bytes: kept in a room or a member list,
    /// a slice would keep the whole (much larger) receive buffer alive.
    #[test]
    fn decoded_fields_do_not_point_into_the_message() {
        let command = Command::Join {
            op: 1,
            name: Bytes::from_static(b"lobby"),
            password: Bytes::from_static(b"pw"),
            metadata: Bytes::from_static(b"meta"),
        };
        let mut buffer = command.encode();
        buffer.resize(16 * 1024, 0);
        let message = Bytes::from(buffer).slice(..command.encode().len());
        let Some(Command::Join {
            name,
            password,
            metadata,
            ..
        }) = Command::decode(&message)
        else {
            panic!("a Join");
        };
        let inside = message.as_ptr_range();
        for field in [&name, &password, &metadata] {
            assert!(
                !inside.contains(&field.as_ptr()),
                "{field:?} is a slice of the message"
            );
        }
        assert_eq!(&name[..], b"lobby");
    }

    #[test]
    fn every_command_and_notice_decodes_to_itself() {
        let b = |s: &'static [u8]| Bytes::from_static(s);
        let commands = [
            Command::Create {
                op: 7,
                name: b(b"lobby"),
                password: b(b"pw"),
                metadata: b(b"meta"),
                max_members: 8,
                flags: FLAG_APPROVAL,
            },
            Command::Join {
                op: 8,
                name: b(b"lobby"),
                password: b(b""),
                metadata: b(b"m"),
            },
            Command::Leave { op: 9, room: 3 },
            Command::Kick {
                op: 10,
                room: 3,
                user: 4,
            },
            Command::Close { op: 11, room: 3 },
            Command::Approve {
                op: 12,
                room: 3,
                user: 5,
                accept: true,
            },
            Command::Announce {
                op: 13,
                addrs: alloc::vec![
                    "192.168.1.2:7000".parse().unwrap(),
                    "[fe80::1]:9".parse().unwrap()
                ],
            },
        ];
        for c in commands {
            let bytes = Bytes::from(c.encode());
            assert_eq!(Command::decode(&bytes), Some(c));
        }
        let member = MemberEntry {
            user: 9,
            key: Some([1; 32]),
            client_id: Some(77),
            metadata: b(b"alice"),
            pair_key: Some([2; 32]),
            addrs: alloc::vec!["203.0.113.5:4000".parse().unwrap()],
        };
        let notices = [
            Notice::Joined {
                op: 1,
                room: 2,
                owner: 9,
                name: b(b"lobby"),
                members: alloc::vec![member.clone()],
            },
            Notice::Done { op: 2 },
            Notice::Refused { op: 3, reason: 4 },
            Notice::PeerJoined { room: 2, member },
            Notice::PeerLeft {
                room: 2,
                user: 9,
                reason: 1,
            },
            Notice::RoomLeft { room: 2, reason: 3 },
            Notice::OwnerChanged { room: 2, owner: 5 },
            Notice::JoinRequested {
                room: 2,
                user: 6,
                metadata: b(b"bob"),
            },
        ];
        for n in notices {
            let bytes = Bytes::from(n.encode());
            assert_eq!(Notice::decode(&bytes), Some(n));
        }
    }

    /// User ids are 1 to `MAX_USER_ID` wherever a message names one: 0 and the room range
    /// make the message malformed (a hostile hub introducing user 0 had its members link
    /// to `[100::]:0`, which is no relay address).
    #[test]
    fn user_ids_outside_their_range_make_a_message_malformed() {
        let member = |user| MemberEntry {
            user,
            key: None,
            client_id: None,
            metadata: Bytes::new(),
            pair_key: Some([2; 32]),
            addrs: alloc::vec![],
        };
        for (user, valid) in [
            (0, false),
            (1, true),
            (super::super::MAX_USER_ID, true),
            (super::super::MAX_USER_ID + 1, false),
        ] {
            let notices = [
                Notice::PeerJoined {
                    room: 2,
                    member: member(user),
                },
                Notice::PeerLeft {
                    room: 2,
                    user,
                    reason: 1,
                },
                Notice::OwnerChanged {
                    room: 2,
                    owner: user,
                },
                Notice::JoinRequested {
                    room: 2,
                    user,
                    metadata: Bytes::new(),
                },
            ];
            for n in notices {
                let decoded = Notice::decode(&Bytes::from(n.encode()));
                assert_eq!(decoded.is_some(), valid, "{n:?}");
            }
            let kick = Command::Kick {
                op: 1,
                room: 2,
                user,
            };
            assert_eq!(
                Command::decode(&Bytes::from(kick.encode())).is_some(),
                valid
            );
        }
    }

    #[test]
    fn truncated_or_padded_messages_are_refused() {
        let bytes = Command::Kick {
            op: 1,
            room: 2,
            user: 3,
        }
        .encode();
        for len in 0..bytes.len() {
            assert_eq!(
                Command::decode(&Bytes::copy_from_slice(&bytes[..len])),
                None
            );
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(Command::decode(&Bytes::from(padded)), None);
        // A member count no message could hold.
        let lie = Bytes::from_static(&[JOINED, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0xff, 0xff]);
        assert_eq!(Notice::decode(&lie), None);
    }
}
