#![no_main]
//! `cbgate::fuzzing::journal_record` on arbitrary bytes: every decoder of stored
//! records (see that function for the properties). Recovery must never panic on any
//! record contents.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cbgate::fuzzing::journal_record(data));
