//! Arbitrary datagrams into a server endpoint: nothing panics and nothing amplifies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_proto::fuzzing::endpoint_input(data));
