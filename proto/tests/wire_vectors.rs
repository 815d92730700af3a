//! The test vectors of `docs/wire.md`, checked both ways byte for byte: each hex string
//! decodes to the packet shown, and the packet encodes to exactly those bytes.

use shoal_proto::fuzzing::wire::{
    Ack, ChunkInfo, CloseCode, DataHeader, DecodeError, Frame, Frames, MessageHeader, Packet,
    RejectCode, SendType, HELLO_LEN,
};
use shoal_proto::Protection;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect()
}

fn cookie() -> [u8; 24] {
    let mut c = [0u8; 24];
    for (i, b) in c.iter_mut().enumerate() {
        *b = 0xa0 + i as u8;
    }
    c
}

const COOKIE_HEX: &str = "a0a1a2a3a4a5a6a7 a8a9aaabacadaeaf b0b1b2b3b4b5b6b7";
const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TAG: &str = "cccccccccccccccccccccccccccccccc";

fn check(bytes_hex: &str, packet: Packet<'_>) {
    let bytes = hex(bytes_hex);
    assert_eq!(Packet::decode(&bytes), Ok(packet), "decode {bytes_hex}");
    let mut buf = vec![0u8; 2048];
    let len = packet.encode(&mut buf).expect("encodes");
    assert_eq!(&buf[..len], &bytes[..], "encode {packet:?}");
    assert_eq!(packet.encoded_len(), bytes.len());
}

#[test]
fn hello_vector() {
    let v = format!("31 5348 4f4c 0102 0304 0506 0708 01 {}", "00".repeat(34));
    check(
        &v,
        Packet::Hello {
            protocol_id: 0x5348_4f4c,
            client_nonce: 0x0102_0304_0506_0708,
            protection: Protection::Encrypted,
        },
    );
    assert_eq!(hex(&v).len(), HELLO_LEN);
}

#[test]
fn challenge_vector() {
    check(
        &format!("32 0102030405060708 {COOKIE_HEX}"),
        Packet::Challenge {
            client_nonce: 0x0102_0304_0506_0708,
            cookie: cookie(),
        },
    );
}

#[test]
fn connect_vector() {
    check(
        &format!(
            "33 53484f4c 0102030405060708 {COOKIE_HEX} 0000000000004321 04b0 00400000 \
             01 03 {KEY_A} {KEY_B} 0003 746f6b 0002 6869 {TAG}"
        ),
        Packet::Connect {
            protocol_id: 0x5348_4f4c,
            client_nonce: 0x0102_0304_0506_0708,
            cookie: cookie(),
            channel_layout: 0x4321,
            mtu: 1200,
            reassembly_budget: 4 << 20,
            protection: Protection::Encrypted,
            ephemeral: Some([0xaa; 32]),
            static_key: Some([0xbb; 32]),
            token: Some(b"tok"),
            data: b"hi",
            token_proof: Some([0xcc; 16]),
        },
    );
    // Without protection: no keys, no token.
    check(
        &format!(
            "33 53484f4c 0102030405060708 {COOKIE_HEX} 0000000000004321 04b0 00400000 00 00 0000"
        ),
        Packet::Connect {
            protocol_id: 0x5348_4f4c,
            client_nonce: 0x0102_0304_0506_0708,
            cookie: cookie(),
            channel_layout: 0x4321,
            mtu: 1200,
            reassembly_budget: 4 << 20,
            protection: Protection::None,
            ephemeral: None,
            static_key: None,
            token: None,
            data: b"",
            token_proof: None,
        },
    );
}

#[test]
fn accept_vector() {
    check(
        &format!("34 0102030405060708 1122334455667788 0007 00400000 01 {KEY_A} 01 {KEY_B} {TAG}"),
        Packet::Accept {
            client_nonce: 0x0102_0304_0506_0708,
            connection_id: CID,
            user_id: 7,
            reassembly_budget: 4 << 20,
            protection: Protection::Encrypted,
            ephemeral: Some([0xaa; 32]),
            static_key: Some([0xbb; 32]),
            tag: Some([0xcc; 16]),
        },
    );
    check(
        "34 0102030405060708 1122334455667788 0007 00400000 00",
        Packet::Accept {
            client_nonce: 0x0102_0304_0506_0708,
            connection_id: CID,
            user_id: 7,
            reassembly_budget: 4 << 20,
            protection: Protection::None,
            ephemeral: None,
            static_key: None,
            tag: None,
        },
    );
}

#[test]
fn reject_vectors() {
    let nonce = 0x0102_0304_0506_0708;
    check(
        "35 0102030405060708 01 0000",
        Packet::Reject {
            client_nonce: nonce,
            code: RejectCode::Full,
        },
    );
    check(
        "35 0102030405060708 02 0193",
        Packet::Reject {
            client_nonce: nonce,
            code: RejectCode::Refused(403),
        },
    );
    check(
        "35 0102030405060708 03 0000",
        Packet::Reject {
            client_nonce: nonce,
            code: RejectCode::ChannelMismatch,
        },
    );
    check(
        "35 0102030405060708 09 0000",
        Packet::Reject {
            client_nonce: nonce,
            code: RejectCode::WrongProtocol,
        },
    );
    check(
        "35 0102030405060708 0a 0000",
        Packet::Reject {
            client_nonce: nonce,
            code: RejectCode::NotAccepting,
        },
    );
    for (hex, code) in [
        ("04", RejectCode::ProtectionMismatch),
        ("05", RejectCode::TokenInvalid),
        ("06", RejectCode::TokenExpired),
        ("07", RejectCode::TokenUsed),
        ("08", RejectCode::TokenWrongServer),
    ] {
        check(
            &format!("35 0102030405060708 {hex} 0000"),
            Packet::Reject {
                client_nonce: nonce,
                code,
            },
        );
    }
    // "Unknown connection": the nonce field carries the connection id a packet named.
    check(
        "35 1122334455667788 0b 0000",
        Packet::Reject {
            client_nonce: 0x1122_3344_5566_7788,
            code: RejectCode::UnknownConnection,
        },
    );
}

const CID: u64 = 0x1122_3344_5566_7788;

#[test]
fn disconnect_vectors() {
    check(
        "37 1122334455667788 00000005 01 002a",
        Packet::Disconnect {
            connection_id: CID,
            packet_number: 5,
            code: CloseCode::Application(42),
        },
    );
    check(
        "37 1122334455667788 00000006 02 0000",
        Packet::Disconnect {
            connection_id: CID,
            packet_number: 6,
            code: CloseCode::ProtocolViolation,
        },
    );
    check(
        "37 1122334455667788 00000007 03 0000",
        Packet::Disconnect {
            connection_id: CID,
            packet_number: 7,
            code: CloseCode::TokenUsed,
        },
    );
    check(
        "37 1122334455667788 00000008 04 0000",
        Packet::Disconnect {
            connection_id: CID,
            packet_number: 8,
            code: CloseCode::IntegrityLimit,
        },
    );
}

#[test]
fn path_challenge_and_response_vectors() {
    check(
        "38 1122334455667788 00000005 0a0b0c0d0e0f1011",
        Packet::PathChallenge {
            connection_id: CID,
            packet_number: 5,
            token: 0x0a0b_0c0d_0e0f_1011,
        },
    );
    check(
        "39 1122334455667788 00000006 0a0b0c0d0e0f1011",
        Packet::PathResponse {
            connection_id: CID,
            packet_number: 6,
            token: 0x0a0b_0c0d_0e0f_1011,
        },
    );
}

#[test]
fn ack_only_data_vector() {
    // Packets 7..=9 and 0..=4 received; 9 arrived 40 µs before this was sent.
    let mut ranges = [0u8; 16];
    let ack = Ack::build(9, 40, &[(2, 0), (9, 5)], &mut ranges).expect("valid");
    check(
        "36 1122334455667788 00000003 02 00000009 05 02 01 04",
        Packet::Data {
            header: DataHeader {
                connection_id: CID,
                packet_number: 3,
                ping: false,
                ack: Some(ack),
                repair: None,
            },
            frames: &[],
        },
    );
    let ranges: Vec<(u64, u64)> = ack.ranges().collect();
    assert_eq!(ranges, vec![(2, 0), (9, 5)]);
    assert_eq!(ack.delay_micros, 40);
}

#[test]
fn ping_without_ack_vector() {
    check(
        "36 1122334455667788 00000004 80",
        Packet::Data {
            header: DataHeader {
                connection_id: CID,
                packet_number: 4,
                ping: true,
                ack: None,
                repair: None,
            },
            frames: &[],
        },
    );
}

fn message(channel: u8, owner: u16, sequence: u16) -> MessageHeader {
    MessageHeader {
        channel,
        send_type: SendType::Message,
        reliable: false,
        owner,
        sequence,
        redirect: None,
        chunk: None,
    }
}

#[test]
fn data_with_every_kind_of_frame_vector() {
    let frames_hex = "30 0007 0010 03 616263 \
                      24 0007 0011 00 \
                      28 0000 0011 02 6f6b \
                      12 0007 0005 0009 01 78 \
                      31 0007 0020 0001 0003 02 7a7a";
    let packet_hex = format!("36 1122334455667788 01020304 00 {frames_hex}");
    let frames_bytes = hex(frames_hex);
    check(
        &packet_hex,
        Packet::Data {
            header: DataHeader {
                connection_id: CID,
                packet_number: 0x0102_0304,
                ping: false,
                ack: None,
                repair: None,
            },
            frames: &frames_bytes,
        },
    );
    let expected = [
        Frame {
            header: message(3, 7, 0x10),
            payload: b"abc",
        },
        Frame {
            header: MessageHeader {
                reliable: true,
                ..message(2, 7, 0x11)
            },
            payload: b"",
        },
        Frame {
            header: MessageHeader {
                send_type: SendType::Response,
                ..message(2, 0, 0x11)
            },
            payload: b"ok",
        },
        Frame {
            header: MessageHeader {
                redirect: Some(9),
                ..message(1, 7, 5)
            },
            payload: b"x",
        },
        Frame {
            header: MessageHeader {
                chunk: Some(ChunkInfo { index: 1, count: 3 }),
                ..message(3, 7, 0x20)
            },
            payload: b"zz",
        },
    ];
    let decoded: Vec<Frame<'_>> = Frames::new(&frames_bytes)
        .map(|f| f.expect("valid"))
        .collect();
    assert_eq!(decoded, expected);
    let mut out = Vec::new();
    for f in &expected {
        let mut buf = [0u8; 64];
        let n = f.encode_to(&mut buf).expect("fits");
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, frames_bytes);
}

#[test]
fn two_byte_length_prefix_vector() {
    // 200 = 0xc8 = 0b1_1001000: low 7 bits 0x48 with the continuation bit, then 0x01.
    let mut bytes = hex("30 0007 0010 c801");
    bytes.extend(std::iter::repeat_n(0xee, 200));
    let frame = Frames::new(&bytes).next().expect("one").expect("valid");
    assert_eq!(frame.payload.len(), 200);
    assert_eq!(frame.encoded_len(), bytes.len());
}

#[test]
fn malformed_vectors_are_typed_errors() {
    let cases: &[(&str, DecodeError)] = &[
        ("", DecodeError::Empty),
        ("11", DecodeError::UnknownVersion(1)),
        ("3f", DecodeError::UnknownPacketType(15)),
        ("30", DecodeError::UnknownPacketType(0)),
        ("34 0102", DecodeError::Truncated),
        (
            "37 1122334455667788 00000001 01 002a ff",
            DecodeError::TrailingBytes,
        ),
        (
            "37 1122334455667788 00000001 09 0000",
            DecodeError::BadField,
        ),
        ("35 0102030405060708 01 0001", DecodeError::BadField),
        ("35 0102030405060708 04 0001", DecodeError::BadField),
        ("35 0102030405060708 00 0000", DecodeError::BadField),
        ("35 0102030405060708 0c 0000", DecodeError::BadField),
        ("36 1122334455667788 00000001 21", DecodeError::BadField),
        (
            "36 1122334455667788 00000001 01 0000",
            DecodeError::Truncated,
        ),
        (
            "36 1122334455667788 00000001 01 00000001 00 8000",
            DecodeError::BadLength,
        ),
    ];
    for (bytes, error) in cases {
        assert_eq!(Packet::decode(&hex(bytes)), Err(*error), "{bytes}");
    }
    let frame_cases: &[(&str, DecodeError)] = &[
        ("30 0007", DecodeError::Truncated),
        ("30 0007 0010 05 6162", DecodeError::BadLength),
        ("30 0007 0010 8000", DecodeError::BadLength),
        ("31 0007 0010 0003 0003 01 61", DecodeError::BadField),
        ("31 0007 0010 0000 0001 01 61", DecodeError::BadField),
        ("2c 0007 0010 00", DecodeError::BadField),
    ];
    for (bytes, error) in frame_cases {
        let b = hex(bytes);
        assert_eq!(Frames::new(&b).next(), Some(Err(*error)), "{bytes}");
    }
}

#[test]
fn data_with_a_repair_block_vector() {
    // Packet 10 carries a repair for packets 9 (3 bytes of frames) and 8 (2 bytes), coded
    // into a 3-byte symbol, then one frame of its own.
    let bytes = hex("36 1122334455667788 0000000a 40 01 0003 03 02 aabbcc 30 0007 0010 01 78");
    let Ok(Packet::Data { header, frames }) = Packet::decode(&bytes) else {
        panic!("decodes");
    };
    assert_eq!(header.packet_number, 10);
    assert!(header.ack.is_none() && !header.ping);
    let repair = header.repair.expect("repair block");
    assert_eq!(repair.distance, 1);
    assert_eq!(repair.covered().collect::<Vec<_>>(), vec![(0, 3), (1, 2)]);
    assert_eq!(repair.symbol, &[0xaa, 0xbb, 0xcc]);
    assert_eq!(frames, &hex("30 0007 0010 01 78")[..]);
    let packet = Packet::Data { header, frames };
    let mut buf = vec![0u8; 128];
    let n = packet.encode(&mut buf).expect("encodes");
    assert_eq!(&buf[..n], &bytes[..]);
    assert_eq!(packet.encoded_len(), bytes.len());
    // A repair must cover its newest packet (mask bit 0) and be at least one packet back.
    for bad in [
        "36 1122334455667788 0000000a 40 01 0002 03 aabbcc",
        "36 1122334455667788 0000000a 40 00 0001 03 aabbcc",
        "36 1122334455667788 0000000a 40 01 0001 00",
    ] {
        assert_eq!(
            Packet::decode(&hex(bad)),
            Err(DecodeError::BadField),
            "{bad}"
        );
    }
    assert_eq!(
        Packet::decode(&hex("36 1122334455667788 0000000a 40 01 0001 05 aabb")),
        Err(DecodeError::Truncated)
    );
}

/// The handshake behind the protected vectors: fixed Connect and Accept bytes (they need not
/// be a real exchange: the schedule only hashes them) and one fixed shared secret.
fn fixed_handshake() -> (Vec<u8>, Vec<u8>, [u8; 32]) {
    (hex("33 0102"), hex("34 0304"), [0x42; 32])
}

#[test]
fn protected_accept_tag_vector() {
    let (connect, accept, secret) = fixed_handshake();
    let tag = shoal_proto::fuzzing::protection::accept_tag(&connect, &accept, &[&secret]);
    assert_eq!(tag.to_vec(), hex(PROTECTED_ACCEPT_TAG));
}

const PROTECTED_ACCEPT_TAG: &str = "a868f3f425ae48507547b86c3817add8";
/// Clear header (type, connection id, packet number), the encrypted count byte, the tag.
const PROTECTED_DATA: &str = "36 1122334455667788 00000004 5e 33a38ef67a91e4d5de7305c03c2856aa";

#[test]
fn protected_data_vector_both_ways() {
    use shoal_proto::fuzzing::protection::{open, seal};
    let (connect, accept, secret) = fixed_handshake();
    let shared: &[&[u8]] = &[&secret];
    // A ping from the client, packet number 4.
    let plain = hex("36 1122334455667788 00000004 80");
    let mut buf = vec![0u8; 64];
    buf[..plain.len()].copy_from_slice(&plain);
    let len = seal((&connect, &accept, shared), true, 4, &mut buf, plain.len()).expect("room");
    assert_eq!(len, plain.len() + 16, "the tag is the whole overhead");
    assert_eq!(&buf[..13], &plain[..13], "the 13-byte header stays clear");
    assert_eq!(buf[..len].to_vec(), hex(PROTECTED_DATA));
    let mut datagram = hex(PROTECTED_DATA);
    let n = open((&connect, &accept, shared), true, 4, &mut datagram).expect("opens");
    assert_eq!(&datagram[..n], &plain[..]);
    // The other direction's keys, another packet number, or any flipped bit: refused.
    let mut copy = hex(PROTECTED_DATA);
    assert!(open((&connect, &accept, shared), false, 4, &mut copy).is_none());
    let mut copy = hex(PROTECTED_DATA);
    assert!(open((&connect, &accept, shared), true, 5, &mut copy).is_none());
}

#[test]
fn discovery_vectors() {
    use shoal_proto::discovery::{Request, Response, REQUEST_HEADER_LEN, REQUEST_LEN};

    let padding = "00".repeat(REQUEST_LEN - REQUEST_HEADER_LEN - 2);
    let v = hex(&format!(
        "f5534844 11 53484f4c 0102030405060708 0002 6869 {padding}"
    ));
    let request = Request {
        protocol_id: 0x5348_4f4c,
        nonce: 0x0102_0304_0506_0708,
        query: b"hi",
    };
    assert_eq!(Request::decode(&v), Ok(request));
    let mut buf = [0xaau8; 300];
    assert_eq!(request.encode(&mut buf), Ok(REQUEST_LEN));
    assert_eq!(&buf[..REQUEST_LEN], &v[..]);
    assert_eq!(v.len(), REQUEST_LEN);

    let v = hex("f5534844 12 53484f4c 0102030405060708 1388 0005 6368657373");
    let response = Response {
        protocol_id: 0x5348_4f4c,
        nonce: 0x0102_0304_0506_0708,
        port: 5000,
        data: b"chess",
    };
    assert_eq!(Response::decode(&v), Ok(response));
    let mut buf = [0u8; 64];
    assert_eq!(response.encode(&mut buf), Ok(v.len()));
    assert_eq!(&buf[..v.len()], &v[..]);
    assert_eq!(response.encoded_len(), v.len());
    // Neither is taken for a Shoal packet: version 15 is not Shoal's.
    assert_eq!(Packet::decode(&v), Err(DecodeError::UnknownVersion(15)));
}

/// The hub's 16-bit redirect targets, its control messages (one per message on the control
/// channel) and a payload sealed under a pair key: the vectors of "Hub" in `docs/wire.md`.
#[test]
fn hub_vectors() {
    use shoal_proto::fuzzing::hub::*;
    use shoal_proto::hub::{RoomId, Target};

    // Targets.
    for (target, wire) in [
        (Target::User(1), 0x0001),
        (Target::User(0xbfff), 0xbfff),
        (Target::Room(RoomId(5)), 0xc005),
        (Target::Room(RoomId(0x1fff)), 0xdfff),
        (Target::RoomExceptSender(RoomId(5)), 0xe005),
        (Target::RoomExceptSender(RoomId(0x1fff)), 0xffff),
    ] {
        assert_eq!(target.to_wire(), wire, "{target:?}");
        assert_eq!(Target::from_wire(wire), Some(target), "{wire:#06x}");
    }
    assert_eq!(
        Target::from_wire(0),
        None,
        "0 is the server, never a target"
    );

    // Commands, both ways.
    let v4: std::net::SocketAddr = "192.168.1.2:7000".parse().expect("address");
    let v6: std::net::SocketAddr = "[fe80::1]:9".parse().expect("address");
    let announce = encode_command_announce(13, &[v4, v6]);
    let commands: [(&str, Vec<u8>, &str); 7] = [
        (
            "01 00000007 0005 6c6f626279 0002 7077 0004 6d657461 0008 03",
            encode_command_create(
                7,
                b"lobby",
                b"pw",
                b"meta",
                8,
                FLAG_APPROVAL | FLAG_CLOSE_WITH_OWNER,
            ),
            r#"Create { op: 7, name: b"lobby", password: b"pw", metadata: b"meta", max_members: 8, flags: 3 }"#,
        ),
        (
            "02 00000008 0005 6c6f626279 0000 0003 626f62",
            encode_command_join(8, b"lobby", b"", b"bob"),
            r#"Join { op: 8, name: b"lobby", password: b"", metadata: b"bob" }"#,
        ),
        (
            "03 00000009 0003",
            encode_command_leave(9, 3),
            "Leave { op: 9, room: 3 }",
        ),
        (
            "04 0000000a 0003 000c",
            encode_command_kick(10, 3, 12),
            "Kick { op: 10, room: 3, user: 12 }",
        ),
        (
            "05 0000000b 0003",
            encode_command_close(11, 3),
            "Close { op: 11, room: 3 }",
        ),
        (
            "06 0000000c 0003 000c 01",
            encode_command_approve(12, 3, 12, true),
            "Approve { op: 12, room: 3, user: 12, accept: true }",
        ),
        (
            "07 0000000d 02 04 c0a80102 1b58 06 fe800000000000000000000000000001 0009",
            announce,
            "Announce { op: 13, addrs: [192.168.1.2:7000, [fe80::1]:9] }",
        ),
    ];
    for (bytes, encoded, decoded) in &commands {
        assert_eq!(encoded, &hex(bytes), "encode {decoded}");
        assert_eq!(
            decode_command(&hex(bytes)).as_deref(),
            Some(*decoded),
            "{bytes}"
        );
        assert_eq!(decode_notice(&hex(bytes)), None, "a command is no notice");
    }

    // Notices, both ways. Alice (user 9, a static key, introduced with a pair key) is in
    // room 3 "lobby"; Bob (user 12, a connect token's client id) joins.
    let pair_key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let pair_hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let alice = MemberEntry {
        user: 9,
        key: Some([0xaa; 32]),
        client_id: None,
        metadata: b"alice".to_vec(),
        pair_key: Some(pair_key),
        addrs: vec!["203.0.113.5:4000".parse().expect("address")],
    };
    let bob = MemberEntry {
        user: 12,
        key: None,
        client_id: Some(0x0102_0304_0506_0708),
        metadata: b"bob".to_vec(),
        pair_key: None,
        addrs: vec![],
    };
    let bob_introduced = MemberEntry {
        pair_key: Some(pair_key),
        addrs: vec!["198.51.100.7:7000".parse().expect("address")],
        ..bob.clone()
    };
    let entry = |m: &MemberEntry| {
        format!(
            "MemberEntry {{ user: {}, key: {:?}, client_id: {:?}, metadata: b{:?}, pair_key: {:?}, addrs: {:?} }}",
            m.user,
            m.key,
            m.client_id,
            std::str::from_utf8(&m.metadata).expect("ascii"),
            m.pair_key,
            m.addrs
        )
    };
    let notices: [(String, Vec<u8>, String); 8] = [
        (
            format!(
                "41 00000008 0003 0009 0005 6c6f626279 0002 \
                 0009 05 {KEY_A} {pair_hex} 0005 616c696365 01 04 cb007105 0fa0 \
                 000c 02 0102030405060708 0003 626f62 00"
            ),
            encode_notice_joined(8, 3, 9, b"lobby", &[alice.clone(), bob.clone()]),
            format!(
                r#"Joined {{ op: 8, room: 3, owner: 9, name: b"lobby", members: [{}, {}] }}"#,
                entry(&alice),
                entry(&bob)
            ),
        ),
        (
            "42 0000000a".into(),
            encode_notice_done(10),
            "Done { op: 10 }".into(),
        ),
        (
            "43 00000008 04".into(),
            encode_notice_refused(8, 4),
            "Refused { op: 8, reason: 4 }".into(),
        ),
        (
            format!("44 0003 000c 06 0102030405060708 {pair_hex} 0003 626f62 01 04 c6336407 1b58"),
            encode_notice_peer_joined(3, &bob_introduced),
            format!(
                "PeerJoined {{ room: 3, member: {} }}",
                entry(&bob_introduced)
            ),
        ),
        (
            "45 0003 000c 02".into(),
            encode_notice_peer_left(3, 12, 2),
            "PeerLeft { room: 3, user: 12, reason: 2 }".into(),
        ),
        (
            "46 0003 03".into(),
            encode_notice_room_left(3, 3),
            "RoomLeft { room: 3, reason: 3 }".into(),
        ),
        (
            "47 0003 000c".into(),
            encode_notice_owner_changed(3, 12),
            "OwnerChanged { room: 3, owner: 12 }".into(),
        ),
        (
            "48 0003 000c 0003 626f62".into(),
            encode_notice_join_requested(3, 12, b"bob"),
            r#"JoinRequested { room: 3, user: 12, metadata: b"bob" }"#.into(),
        ),
    ];
    for (bytes, encoded, decoded) in &notices {
        assert_eq!(encoded, &hex(bytes), "encode {decoded}");
        assert_eq!(
            decode_notice(&hex(bytes)).as_ref(),
            Some(decoded),
            "{bytes}"
        );
        assert_eq!(decode_command(&hex(bytes)), None, "a notice is no command");
    }

    // Refused: cut short, a byte too many, an unknown type, a bad boolean, an unknown entry
    // flag, a field over 4,096 bytes, a member count the message cannot hold.
    for bad in [
        "03 00000009 00",
        "03 00000009 0003 00",
        "08 00000009 0003",
        "06 0000000c 0003 000c 02",
        "07 00000009 05 04 00000000 0001 04 00000000 0002 04 00000000 0003 04 00000000 0004 04 00000000 0005",
    ] {
        assert_eq!(decode_command(&hex(bad)), None, "{bad}");
    }
    let long_name = format!("02 00000008 1001 {} 0000 0000", "61".repeat(0x1001));
    assert_eq!(
        decode_command(&hex(&long_name)),
        None,
        "name of 4,097 bytes"
    );
    for bad in [
        "42 0000000a 00",
        "49 0003",
        "44 0003 000c 08 0000",
        "41 00000008 0003 0009 0000 ffff",
    ] {
        assert_eq!(decode_notice(&hex(bad)), None, "{bad}");
    }

    // Sealing under the pair key above: user 9 (Alice) to user 12 (Bob), channel 3 messages
    // "hi" then "yo" (associated data: kind 0, channel 3), and Bob's response "ok" to a
    // request Alice sealed with her counter 2 (associated data: kind 2, that counter).
    const HI: &str = "0000000000000000 1e80 7516dd1444127fecc1ca5af99b59a62c";
    const YO: &str = "0000000000000001 8018 c113fd029a791748c67b6daf7aae2cf0";
    const OK: &str = "0000000000000000 2f59 b4ee515a7c51726009df30f9960ef1b5";
    const OK_AAD: [u8; 9] = [2, 0, 0, 0, 0, 0, 0, 0, 2];
    let sealed = seal_pair(&pair_key, 9, 12, &[0, 3], &[b"hi", b"yo"]);
    assert_eq!(sealed, [hex(HI), hex(YO)]);
    assert_eq!(seal_pair(&pair_key, 12, 9, &OK_AAD, &[b"ok"]), [hex(OK)]);
    assert_eq!(
        open_pair(&pair_key, 12, 9, &[0, 3], &hex(HI)).as_deref(),
        Some(&b"hi"[..])
    );
    assert_eq!(
        open_pair(&pair_key, 12, 9, &[0, 3], &hex(YO)).as_deref(),
        Some(&b"yo"[..])
    );
    assert_eq!(
        open_pair(&pair_key, 9, 12, &OK_AAD, &hex(OK)).as_deref(),
        Some(&b"ok"[..])
    );
    // As the answer to another request of Alice's: not opened.
    let mut other = OK_AAD;
    other[8] = 1;
    assert_eq!(open_pair(&pair_key, 9, 12, &other, &hex(OK)), None);
    // Another channel, kind, direction or counter, or a flipped bit: not opened.
    let hi = hex(HI);
    assert_eq!(open_pair(&pair_key, 12, 9, &[0, 2], &hi), None);
    assert_eq!(open_pair(&pair_key, 12, 9, &[1, 3], &hi), None);
    assert_eq!(open_pair(&pair_key, 9, 12, &[0, 3], &hi), None);
    let mut moved = hi.clone();
    moved[7] = 1;
    assert_eq!(open_pair(&pair_key, 12, 9, &[0, 3], &moved), None);
    let mut flipped = hi.clone();
    flipped[8] ^= 1;
    assert_eq!(open_pair(&pair_key, 12, 9, &[0, 3], &flipped), None);

    // "hi" as the hub forwards it to Bob: channel 3, owner 9 (written by the hub), redirect
    // target 12, 26 bytes of sealed payload.
    let frame = Frame {
        header: MessageHeader {
            redirect: Some(12),
            ..message(3, 9, 0x10)
        },
        payload: &hi,
    };
    let frame_hex = format!("32 0009 0010 000c 1a {HI}");
    let mut buf = [0u8; 64];
    let n = frame.encode_to(&mut buf).expect("fits");
    assert_eq!(&buf[..n], &hex(&frame_hex)[..]);
    let bytes = hex(&frame_hex);
    assert_eq!(Frames::new(&bytes).next(), Some(Ok(frame)));
}
