//! Arbitrary bytes as a packet: decoding never panics and decode → encode is the identity.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_proto::fuzzing::parse_packet(data));
