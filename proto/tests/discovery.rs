//! LAN discovery's codec under arbitrary input: decoding never panics, and whatever decodes
//! encodes back to the same bytes (so there is one encoding of each message).

use proptest::prelude::*;
use shoal_proto::discovery::{
    Request, Response, MAGIC, MAX_APP_DATA, MAX_QUERY_LEN, MAX_RESPONSE_LEN, REQUEST_LEN,
};

/// Arbitrary bytes, half of them starting with the discovery magic and a valid kind byte so
/// the decoder gets past its first checks.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::sample::select(vec![0x11u8, 0x12, 0x13, 0x21]),
        prop::collection::vec(any::<u8>(), 0..700),
    )
        .prop_map(|(prefixed, kind, tail)| {
            if prefixed {
                let mut v = MAGIC.to_vec();
                v.push(kind);
                v.extend(tail);
                v
            } else {
                tail
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics_and_round_trips(bytes in datagram()) {
        if let Ok(request) = Request::decode(&bytes) {
            let mut buf = [0u8; REQUEST_LEN];
            prop_assert_eq!(request.encode(&mut buf), Ok(bytes.len()));
            prop_assert_eq!(&buf[..], &bytes[..]);
        }
        if let Ok(response) = Response::decode(&bytes) {
            let mut buf = [0u8; MAX_RESPONSE_LEN];
            prop_assert_eq!(response.encode(&mut buf), Ok(bytes.len()));
            prop_assert_eq!(&buf[..bytes.len()], &bytes[..]);
        }
    }

    /// Valid encodings, then a byte flipped, the end cut or bytes added: whatever still
    /// decodes encodes back to the same bytes, and the unchanged ones always decode (the
    /// arbitrary bytes above almost never reach a successful decode).
    #[test]
    fn mutated_encodings_decode_only_to_themselves(
        response in any::<bool>(),
        nonce in any::<u64>(),
        port in 1..=u16::MAX,
        body in prop::collection::vec(any::<u8>(), 0..=MAX_QUERY_LEN.min(MAX_APP_DATA)),
        // 0 none, 1 a byte flipped, 2 the end cut, 3 bytes added.
        mutation in 0u8..4,
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in 1usize..40,
        tail in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let mut buf = [0u8; MAX_RESPONSE_LEN];
        let len = if response {
            Response { protocol_id: 7, nonce, port, data: &body }.encode(&mut buf)
        } else {
            Request { protocol_id: 7, nonce, query: &body }.encode(&mut buf)
        }
        .expect("encodes");
        let mut bytes = buf[..len].to_vec();
        match mutation {
            1 => bytes[at.index(len)] ^= flip,
            2 => bytes.truncate(len.saturating_sub(cut)),
            3 => bytes.extend_from_slice(&tail),
            _ => {}
        }
        let mut again = [0u8; MAX_RESPONSE_LEN];
        let decoded = if response {
            Response::decode(&bytes).map(|r| r.encode(&mut again))
        } else {
            Request::decode(&bytes).map(|r| r.encode(&mut again))
        };
        match decoded {
            Ok(encoded) => {
                prop_assert_eq!(encoded, Ok(bytes.len()));
                prop_assert_eq!(&again[..bytes.len()], &bytes[..]);
            }
            Err(_) => prop_assert!(mutation != 0, "a valid encoding did not decode"),
        }
    }

    #[test]
    fn encoded_messages_decode(
        protocol_id in any::<u32>(),
        nonce in any::<u64>(),
        port in 1..=u16::MAX,
        query in prop::collection::vec(any::<u8>(), 0..=MAX_QUERY_LEN),
        data in prop::collection::vec(any::<u8>(), 0..=MAX_APP_DATA),
    ) {
        let mut buf = [0u8; MAX_RESPONSE_LEN];
        let request = Request { protocol_id, nonce, query: &query };
        let len = request.encode(&mut buf).expect("encodes");
        prop_assert_eq!(Request::decode(&buf[..len]), Ok(request));
        let response = Response { protocol_id, nonce, port, data: &data };
        let len = response.encode(&mut buf).expect("encodes");
        prop_assert_eq!(Response::decode(&buf[..len]), Ok(response));
        // Every truncation is an error, not a panic.
        for cut in 0..len {
            prop_assert!(Response::decode(&buf[..cut]).is_err());
        }
    }
}
