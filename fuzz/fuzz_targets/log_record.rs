//! Decoding a request-log record from the disk spool: bytes read back after a crash or from
//! a damaged disk decode to a record or an error, never a panic; a record that decodes
//! encodes to bytes that decode to a record encoding the same again (compared as bytes: a
//! NaN float is not equal to itself).
#![no_main]

use falcon_app::adapters::request_log::LogRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok((record, flags)) = LogRecord::decode(bytes) {
        let mut once = Vec::new();
        record.encode(flags, &mut once);
        let (decoded, flags_again) = LogRecord::decode(&once).unwrap_or_else(|e| panic!("re-encoded record: {e}"));
        assert_eq!(flags_again, flags);
        let mut twice = Vec::new();
        decoded.encode(flags_again, &mut twice);
        assert_eq!(once, twice, "a decoded record re-encodes to itself");
    }
});
