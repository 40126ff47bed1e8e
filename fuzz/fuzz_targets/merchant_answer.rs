#![no_main]
//! `cbgate::fuzzing::merchant_answer` on arbitrary bytes (see that function for the properties).
libfuzzer_sys::fuzz_target!(|data: &[u8]| cbgate::fuzzing::merchant_answer(data));
