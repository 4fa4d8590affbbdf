//! The `nnquant` command line: argument parsing and printing only; the work is in the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    restore_sigpipe();
    nnquant::fsio::interrupt::install();
    exit_cleanly_when_stdout_fails();
    let cli = nnquant::cli::Cli::parse();
    match nnquant::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One paragraph: the outermost context first, then each cause.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`nnquant inspect … | head`) is an
/// error that `println!` turns into a panic (exit 101). A command-line tool should end quietly
/// there, as `cat` and `grep` do: restore the default action (terminated by SIGPIPE, status 141
/// in a shell).
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default at start-up, before any thread
    // exists; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `println!` panics when standard output cannot be written (`> /dev/full`, a closed socket):
/// turn exactly that panic into the usual one-paragraph error and exit code 2. Any other panic
/// keeps the default report (it is a bug).
fn exit_cleanly_when_stdout_fails() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(cause) = msg.strip_prefix("failed printing to stdout: ") {
            eprintln!("error: cannot write to standard output: {cause}");
            std::process::exit(2);
        }
        default(info)
    }));
}
