//! Third-party code that panics on bad input instead of erring (tract on some mutated models,
//! redb on some damaged files; both found by fuzzing) runs under [`contain`]: the panic
//! becomes an error message, printed by nobody, and the caller turns it into its own typed
//! error. Every other panic goes to the hook that was installed before (the default one, or
//! libFuzzer's, which aborts: so a fuzz target still finds panics that escape).

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    /// Set while a contained call runs: its panic message is kept, not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) the hook that records the panics of contained calls on their thread.
fn install_quiet_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) {
                let msg = match (
                    info.payload().downcast_ref::<&str>(),
                    info.payload().downcast_ref::<String>(),
                ) {
                    (Some(s), _) => s.to_string(),
                    (_, Some(s)) => s.clone(),
                    _ => "unknown panic".to_string(),
                };
                let at = info
                    .location()
                    .map(|l| format!(" at {l}"))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
            } else {
                prev(info)
            }
        }));
    });
}

/// Runs `f`; a panic inside it is returned as its message (with its location).
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_hook();
    let was = QUIET.with(|q| q.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r.map_err(|_| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "unknown panic".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_its_message_and_values_pass_through() {
        assert_eq!(contain(|| 7), Ok(7));
        let v: Vec<u8> = vec![];
        let e = contain(|| v[3]).unwrap_err();
        assert!(
            e.contains("index out of bounds") && e.contains("contain.rs"),
            "{e}"
        );
        // Nested: the inner panic is the inner call's error; the outer call returns normally.
        let inner = contain(|| contain(|| panic!("inner")).unwrap_err()).unwrap();
        assert!(inner.starts_with("inner at "), "{inner}");
    }
}
