//! Runs the fuzz target bodies on seeded pseudo-random inputs, so ordinary CI exercises them
//! (`cargo test -p shoal-proto --features fuzzing --test fuzz_smoke`); `fuzz/` runs them under
//! libFuzzer.
#![cfg(feature = "fuzzing")]

use shoal_proto::fuzzing::wire::VERSION;
use shoal_proto::fuzzing::{endpoint_input, endpoint_ops, parse_packet};

/// The first byte of a `Data` packet (version in the high nibble, type 6).
const DATA: u8 = VERSION << 4 | 6;

/// A deterministic xorshift stream.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn inputs() -> impl Iterator<Item = Vec<u8>> {
    let mut next = rng(0x5eed);
    (0..2_000).map(move |i| {
        let len = (next() % 600) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Steer many inputs into valid-looking Data packets with frames.
        if i % 3 == 0 && v.len() > 20 {
            v[0] = DATA;
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

#[test]
fn endpoint_ops_body_holds_on_random_input() {
    // Random bytes decode to random operation sequences (`arbitrary` reads enum tags and
    // lengths from them); a few hundred inputs of up to 4 KiB run in a few seconds in debug.
    let mut next = rng(0x0b5e_55ed);
    for _ in 0..300 {
        let len = (next() % 4_096) as usize;
        let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        endpoint_ops(&input);
    }
}

#[test]
fn hub_control_body_holds_on_random_input() {
    use shoal_proto::fuzzing::hub::{encode_command_create, encode_command_join};
    // Random steps (split at ff fe), plus steps steered at the two paths random bytes rarely
    // reach: well-formed commands on the control channel (op byte 0: member 0, raw control)
    // and `HubClient` calls (op byte 9..=14: action 3 or 4).
    let mut next = rng(0x4ab5);
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for i in 0..150 {
        let mut input = Vec::new();
        for _ in 0..(next() % 12) {
            let len = (next() % 40) as usize;
            let mut step: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            match (i + step.len()) % 4 {
                0 => {
                    step = vec![(next() % 3) as u8];
                    step.extend(encode_command_create(1, b"b", b"", b"m", 0, 1));
                }
                1 => {
                    step = vec![(next() % 3) as u8];
                    step.extend(encode_command_join(2, b"a", b"", b"m"));
                }
                2 if !step.is_empty() => step[0] = 9 + (step[0] % 6),
                _ => {}
            }
            input.extend(step);
            input.extend([0xff, 0xfe]);
        }
        inputs.push(input);
    }
    for input in inputs {
        shoal_proto::fuzzing::hub_control(&input);
    }
}

/// Inputs libFuzzer found, kept so they stay fixed.
#[test]
fn endpoint_ops_regressions_hold() {
    // The server timed the honest connection out; nine seconds later the client's packet
    // drew "unknown connection" and it ended with `PeerReset`, which the model did not know.
    endpoint_ops(include_bytes!(
        "fuzz_regressions/endpoint_ops_server_dropped_then_peer_reset.bin"
    ));
}
