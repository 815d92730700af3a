//! Sequences of operations (datagrams, crafted packets, replays, time, application calls, the
//! honest link) against a server and two clients: the invariants hold after every one.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_proto::fuzzing::endpoint_ops(data));
