//! Alert spool record bytes → the record decoder; a record that decodes must re-encode to
//! one that decodes to the same event.
#![no_main]
use advguard::alert::spool::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((t, ev)) = decode_record(0, data) {
        let again = decode_record(0, &encode_record(&ev, t)).expect("re-encoded record decodes");
        assert_eq!(again.0, t);
        assert_eq!(again.1, ev);
    }
});
