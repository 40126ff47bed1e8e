#![no_main]
//! `cbgate::fuzzing::terminal_request` on arbitrary bytes (see that function for the properties).
libfuzzer_sys::fuzz_target!(|data: &[u8]| cbgate::fuzzing::terminal_request(data));
