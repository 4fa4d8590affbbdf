//! A clean end on SIGINT, SIGTERM and SIGHUP: the temporary files of an output transaction are
//! removed, child process groups (cargo, QEMU) are killed, and the process exits with 128 + the
//! signal's number, as a shell reports a signal death (the process dies of the signal).
//!
//! Signals are received on an ordinary thread (signal-hook's iterator), not in a signal handler,
//! so the clean-up may take locks and touch the file system. The same lock guards the rename
//! phase of an output transaction ([`critical_section`]): a signal that arrives while outputs are
//! renamed into place waits until all of them are, so a command leaves either all its new
//! outputs or none.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

/// The signal being handled (0: none), set before the clean-up waits for the lock.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// What must be undone if the process is interrupted now.
#[derive(Default)]
pub struct Pending {
    /// Temporary files and directories of output transactions that are not yet renamed.
    temps: Vec<PathBuf>,
    /// Process groups of running children (their leaders' pids).
    children: Vec<u32>,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    temps: Vec::new(),
    children: Vec::new(),
});

fn pending() -> MutexGuard<'static, Pending> {
    // A panic while the lock was held leaves the data intact (plain vectors): keep using it.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start receiving SIGINT/SIGTERM/SIGHUP (once per process; the CLI calls it at start-up).
/// Without it (library use) the registry below is kept but signals keep their default action.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            else {
                return; // keep the default actions
            };
            std::thread::Builder::new()
                .name("nnquant-signals".into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        SIGNAL.store(sig, Ordering::SeqCst);
                        clean_up();
                        die_of(sig);
                    }
                })
                .ok();
        }
    });
}

/// End the process as the signal's default action would (a shell sees 128 + signal).
fn die_of(sig: i32) -> ! {
    #[cfg(unix)]
    {
        signal_hook::low_level::emulate_default_handler(sig).ok();
    }
    std::process::exit(128 + sig)
}

/// Undo everything registered: remove temporaries, kill children's process groups.
fn clean_up() {
    clean_up_locked(&pending());
}

fn clean_up_locked(p: &Pending) {
    for t in &p.temps {
        if t.is_dir() {
            std::fs::remove_dir_all(t).ok();
        } else {
            std::fs::remove_file(t).ok();
        }
    }
    #[cfg(unix)]
    for &pid in &p.children {
        // SAFETY: kill(2) on a process group we created; no memory is involved. SIGKILL: QEMU
        // and cargo's compilers must not outlive us, whatever they are doing.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
    }
    if !p.children.is_empty() || !p.temps.is_empty() {
        // Whoever reads our stderr may be gone (`2>&1 | head`): the note must not turn the
        // signal's death into a SIGPIPE one, nor panic.
        #[cfg(unix)]
        // SAFETY: changing a signal disposition; the process is about to end.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "error: interrupted; stopped {} child process group(s), removed {} unfinished output(s)",
            p.children.len(),
            p.temps.len()
        );
    }
}

/// Remove `path` when the process is interrupted, until [`forget_temp`].
pub fn register_temp(path: PathBuf) {
    pending().temps.push(path);
}

/// `path` was renamed into place or removed: no longer the signal thread's business.
pub fn forget_temp(path: &std::path::Path) {
    pending().temps.retain(|t| t != path);
}

/// Kill the process group led by `pid` when the process is interrupted (spawn the child with
/// `process_group(0)`), until the returned guard is dropped.
pub fn register_child(pid: u32) -> ChildGuard {
    pending().children.push(pid);
    ChildGuard { pid }
}

/// Keeps a child process group registered for clean-up while alive.
pub struct ChildGuard {
    pid: u32,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = self.pid;
        pending().children.retain(|&c| c != pid);
    }
}

/// Hold off the clean-up of an interruption while the guard lives (the rename phase of an
/// output transaction).
pub fn critical_section() -> MutexGuard<'static, Pending> {
    pending()
}

/// End a critical section. If a signal arrived during it, exit now with its status (the
/// section's work is complete; the clean-up has nothing left to undo), instead of racing the
/// signal thread to a successful exit code.
pub fn end_critical_section(guard: MutexGuard<'static, Pending>) {
    let sig = SIGNAL.load(Ordering::SeqCst);
    if sig != 0 {
        clean_up_locked(&guard);
        die_of(sig);
    }
    drop(guard);
}

impl Pending {
    /// [`forget_temp`] for a caller that already holds the lock.
    pub fn forget_temp(&mut self, path: &std::path::Path) {
        self.temps.retain(|t| t != path);
    }
}
