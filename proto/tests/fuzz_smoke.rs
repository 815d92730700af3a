//! Runs the fuzz target bodies on seeded pseudo-random inputs, so ordinary CI exercises them
//! (`cargo test -p shoal-proto --features fuzzing --test fuzz_smoke`); `fuzz/` runs them under
//! libFuzzer.
#![cfg(feature = "fuzzing")]

use shoal_proto::fuzzing::{endpoint_input, parse_packet};

fn inputs() -> impl Iterator<Item = Vec<u8>> {
    let mut state = 0x5eed_u64;
    (0..2_000).map(move |i| {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let len = (next() % 600) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Steer many inputs into valid-looking Data packets with frames.
        if i % 3 == 0 && v.len() > 20 {
            v[0] = 0x16;
            v[13] = 0x30 | (v[13] & 0x0f);
        }
        v
    })
}

#[test]
fn parse_packet_body_holds_on_random_input() {
    for input in inputs() {
        parse_packet(&input);
    }
}

#[test]
fn endpoint_input_body_holds_on_random_input() {
    let all: Vec<u8> = inputs()
        .take(400)
        .flat_map(|mut v| {
            v.extend_from_slice(&[0xff, 0xfe]);
            v
        })
        .collect();
    for chunk in all.chunks(4_000) {
        endpoint_input(chunk);
    }
}
