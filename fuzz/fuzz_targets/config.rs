#![no_main]
//! `cbgate::fuzzing::config` on arbitrary bytes (see that function for the properties).
libfuzzer_sys::fuzz_target!(|data: &[u8]| cbgate::fuzzing::config(data));
