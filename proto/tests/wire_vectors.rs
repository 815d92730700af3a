//! The test vectors of `docs/wire.md`, checked both ways byte for byte: each hex string
//! decodes to the packet shown, and the packet encodes to exactly those bytes.

use shoal_proto::wire::{
    ChunkInfo, CloseCode, DataHeader, DecodeError, Frame, Frames, MessageHeader, Packet,
    RejectCode, SendType, HELLO_LEN,
};

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
    let v = format!("11 5348 4f4c 0102 0304 0506 0708 {}", "00".repeat(35));
    check(
        &v,
        Packet::Hello {
            protocol_id: 0x5348_4f4c,
            client_nonce: 0x0102_0304_0506_0708,
        },
    );
    assert_eq!(hex(&v).len(), HELLO_LEN);
}

#[test]
fn challenge_vector() {
    check(
        &format!("12 0102030405060708 {COOKIE_HEX}"),
        Packet::Challenge {
            client_nonce: 0x0102_0304_0506_0708,
            cookie: cookie(),
        },
    );
}

#[test]
fn connect_vector() {
    check(
        &format!("13 53484f4c 0102030405060708 {COOKIE_HEX} 0000000000004321 00400000 0002 6869"),
        Packet::Connect {
            protocol_id: 0x5348_4f4c,
            client_nonce: 0x0102_0304_0506_0708,
            cookie: cookie(),
            channel_layout: 0x4321,
            reassembly_budget: 4 << 20,
            data: b"hi",
        },
    );
}

#[test]
fn accept_vector() {
    check(
        "14 0102030405060708 deadbeef 0007 00400000",
        Packet::Accept {
            client_nonce: 0x0102_0304_0506_0708,
            connection_id: 0xdead_beef,
            user_id: 7,
            reassembly_budget: 4 << 20,
        },
    );
}

#[test]
fn reject_vectors() {
    let nonce = 0x0102_0304_0506_0708;
    check(
        "15 0102030405060708 01 0000",
        Packet::Reject {
            client_nonce: nonce,
            code: RejectCode::Full,
        },
    );
    check(
        "15 0102030405060708 02 0193",
        Packet::Reject {
            client_nonce: nonce,
            code: RejectCode::Refused(403),
        },
    );
    check(
        "15 0102030405060708 03 0000",
        Packet::Reject {
            client_nonce: nonce,
            code: RejectCode::ChannelMismatch,
        },
    );
}

#[test]
fn disconnect_vectors() {
    check(
        "17 deadbeef 01 002a",
        Packet::Disconnect {
            connection_id: 0xdead_beef,
            code: CloseCode::Application(42),
        },
    );
    check(
        "17 deadbeef 02 0000",
        Packet::Disconnect {
            connection_id: 0xdead_beef,
            code: CloseCode::ProtocolViolation,
        },
    );
}

#[test]
fn ack_only_data_vector() {
    check(
        "16 deadbeef 0003 0002 00000003",
        Packet::Data {
            header: DataHeader {
                connection_id: 0xdead_beef,
                packet_seq: 3,
                ack: 2,
                ack_bits: 0b11,
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
    let packet_hex = format!("16 deadbeef 0102 00ff 80000001 {frames_hex}");
    let frames_bytes = hex(frames_hex);
    check(
        &packet_hex,
        Packet::Data {
            header: DataHeader {
                connection_id: 0xdead_beef,
                packet_seq: 0x0102,
                ack: 0x00ff,
                ack_bits: 0x8000_0001,
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
        ("21", DecodeError::UnknownVersion(2)),
        ("1f", DecodeError::UnknownPacketType(15)),
        ("10", DecodeError::UnknownPacketType(0)),
        ("14 0102", DecodeError::Truncated),
        ("17 deadbeef 01 002a ff", DecodeError::TrailingBytes),
        ("17 deadbeef 09 0000", DecodeError::BadField),
        ("15 0102030405060708 01 0001", DecodeError::BadField),
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
