//! Arbitrary bytes as hub control messages (decode never panics, decode → encode is the
//! identity), then as steps driving a hub and three members: arbitrary commands, relayed
//! messages and requests, lying notices, client calls; the hub's rooms stay consistent.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_proto::fuzzing::hub_control(data));
