//! A whole spool file (redb) of mutated bytes → `Spool::open` (verify, salvage, quarantine)
//! → drain every record for one sink. Must end in events or errors, never a panic.
#![no_main]
use advguard::alert::spool::Spool;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| {
        let base = std::env::var_os("ADVGUARD_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let d = base.join(format!("advguard-fuzz-spool-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz scratch dir");
        d
    });
    // Remove what the previous input left (its file and any quarantined copy).
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let path = dir.join("spool.redb");
    std::fs::write(&path, data).expect("write fuzz spool");
    let names = ["a".to_string(), "b".to_string()];
    let Ok(spool) = Spool::open(&path, 64, &names) else {
        return;
    };
    for _ in 0..128 {
        match spool.next_for("a") {
            Ok(Some(r)) => {
                if spool.ack("a", r.seq).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    let _ = spool.backlog("b");
    let _ = spool.len();
});
