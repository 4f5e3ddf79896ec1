//! The cameras TOML (`advguard watch --config`): the `[[camera]]`/`[metrics]` parser and the
//! alert tables (`[[sink]]`, `[spool]`, `[alerts]`) with `${ENV}` expansion and sink checks.
#![no_main]
use advguard::alert::config::{AlertFile, resolve_sinks};
use advguard::watch::config::WatchFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = WatchFile::parse(text, "fuzz.toml");
    if let Ok(f) = AlertFile::parse(text) {
        let _ = resolve_sinks(&f.sink);
        let _ = f.spool.resolved_path();
    }
});
