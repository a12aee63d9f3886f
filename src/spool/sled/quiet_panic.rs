//! Catching the panics sled makes on a damaged spool without Rust's panic
//! text on stderr. [`catch_quietly`] is `catch_unwind` with a panic hook
//! around it that keeps a caught panic's message, place and backtrace for
//! the log at debug level (the relay's own error says what it means), in
//! place of `thread 'main' panicked at …/sled…` printed before it.
//!
//! The hook is process-global while other threads may panic at the same
//! moment, so it keeps quiet only for panics of a thread inside a catch (a
//! thread-local depth, so nested catches work) and hands every other panic
//! to the hook that was there before. It is installed by the first catch
//! under way and the previous hook is restored by the last one to end,
//! under one lock, so catches on several threads at once never lose a hook.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::{Cell, RefCell};
use std::panic::{self, PanicHookInfo, UnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

thread_local! {
    /// How many catches this thread is inside.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// What the hook kept of this thread's last caught panic.
    static CAUGHT: RefCell<Option<Caught>> = const { RefCell::new(None) };
}

/// The hook before ours, while catches are under way, and how many are.
struct Installed {
    catches: usize,
    previous: Option<Arc<Hook>>,
}

static INSTALLED: Mutex<Installed> = Mutex::new(Installed {
    catches: 0,
    previous: None,
});

/// What the hook kept of a caught panic.
struct Caught {
    message: String,
    location: String,
    backtrace: Backtrace,
}

/// `std::panic::catch_unwind`, without Rust's panic text on stderr for a
/// panic of `f` (it goes to the log at debug level instead).
pub fn catch_quietly<F, R>(f: F) -> Result<R, Box<dyn Any + Send + 'static>>
where
    F: FnOnce() -> R + UnwindSafe,
{
    let _hook = HookInUse::enter();
    DEPTH.with(|depth| depth.set(depth.get() + 1));
    let result = panic::catch_unwind(f);
    DEPTH.with(|depth| depth.set(depth.get() - 1));
    if result.is_err() {
        if let Some(caught) = CAUGHT.with(RefCell::take) {
            let backtrace = match caught.backtrace.status() {
                BacktraceStatus::Captured => caught.backtrace.to_string(),
                _ => String::new(),
            };
            tracing::debug!(
                panic = %caught.message,
                location = %caught.location,
                backtrace = %backtrace,
                "sled panicked (caught: the error it leads to says what it means)"
            );
        }
    }
    result
}

/// Our hook installed for as long as this lives.
struct HookInUse;

impl HookInUse {
    fn enter() -> HookInUse {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        if installed.catches == 0 {
            let previous: Arc<Hook> = Arc::new(panic::take_hook());
            let forward = Arc::clone(&previous);
            panic::set_hook(Box::new(move |info| {
                if !keep_quiet(info) {
                    forward(info)
                }
            }));
            installed.previous = Some(previous);
        }
        installed.catches += 1;
        HookInUse
    }
}

impl Drop for HookInUse {
    fn drop(&mut self) {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        installed.catches -= 1;
        // `set_hook` may not be called while this thread panics; ours then
        // stays, and it forwards whatever is not caught.
        if installed.catches > 0 || std::thread::panicking() {
            return;
        }
        if let Some(previous) = installed.previous.take() {
            // Dropping ours lets go of its handle on the previous hook.
            drop(panic::take_hook());
            match Arc::try_unwrap(previous) {
                Ok(previous) => panic::set_hook(previous),
                Err(shared) => panic::set_hook(Box::new(move |info| shared(info))),
            }
        }
    }
}

/// Keeps the panic for the log if this thread is inside a catch; false if
/// it is not (the previous hook then prints it as always).
fn keep_quiet(info: &PanicHookInfo<'_>) -> bool {
    let inside = DEPTH.try_with(Cell::get).unwrap_or(0) > 0;
    if inside {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| {
                info.payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
            })
            .unwrap_or_else(|| "no message".into());
        let location = info.location().map_or_else(String::new, |l| {
            format!("{}:{}:{}", l.file(), l.line(), l.column())
        });
        let caught = Caught {
            message,
            location,
            backtrace: Backtrace::capture(),
        };
        let _ = CAUGHT.try_with(|kept| *kept.borrow_mut() = Some(caught));
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_is_returned_as_catch_unwind_returns_it() {
        let page = std::hint::black_box(7);
        let caught = catch_quietly(|| -> u8 { panic!("damaged page {page}") });
        let payload = caught.expect_err("the panic is caught");
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some("damaged page 7")
        );
        assert_eq!(catch_quietly(|| 5).ok(), Some(5));
    }

    #[test]
    fn nested_catches_and_panics_of_other_threads_are_each_handled() {
        let outer = catch_quietly(|| {
            let inner = catch_quietly(|| -> () { panic!("inner") });
            assert!(inner.is_err());
            // A panic on another thread, not inside a catch, goes to the
            // previous hook, and the thread's join sees it as always.
            let other = std::thread::spawn(|| -> () { panic!("elsewhere") }).join();
            assert!(other.is_err());
            panic!("outer")
        });
        assert!(outer.is_err());
    }
}
