//! `preln`: parse the command line, run the command, turn errors into messages and exit codes.

mod cli;
mod commands;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    preln_ops::keep_freed_memory();
    report_panics_as_errors();
    // Which fast paths this machine can take, probed once before any command runs.
    preln_ops::caps::init();
    match std::panic::catch_unwind(|| commands::run(cli)) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            // Stopped by a signal: the status a shell expects (130 for Ctrl-C, 143 for SIGTERM).
            match preln_train::interrupt::requested() {
                Some(sig) => std::process::ExitCode::from(preln_train::interrupt::exit_code(sig) as u8),
                None => std::process::ExitCode::FAILURE,
            }
        }
        // The hook has printed the message.
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

/// tch's tensor methods panic when libtorch throws (a shape mismatch, an out-of-range index, an
/// allocation that fails). Such a panic is reported as an error: libtorch's message, which names
/// the op and shapes, without its C++ stack trace, and where in preln it happened.
/// `RUST_BACKTRACE=1` keeps Rust's default report, backtrace included.
fn report_panics_as_errors() {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: {}{at}", without_cpp_backtrace(payload));
    }));
}

/// libtorch's exception text up to its C++ stack trace ("Exception raised from ..."), with tch's
/// `Torch("...")` wrapper and escaped newlines undone.
fn without_cpp_backtrace(msg: &str) -> String {
    const TCH: &str = "called `Result::unwrap()` on an `Err` value: Torch(\"";
    let msg = msg.replace("\\n", "\n");
    let (body, wrapped) = match msg.strip_prefix(TCH) {
        Some(body) => (body, true),
        None => (msg.as_str(), false),
    };
    let body = body.split("\nException raised from").next().unwrap_or(body).trim_end();
    let body = if wrapped { body.strip_suffix("\")").unwrap_or(body) } else { body };
    format!("{}{}", if wrapped { "libtorch: " } else { "" }, body.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpp_backtrace_is_cut_from_libtorch_messages() {
        let tch = "called `Result::unwrap()` on an `Err` value: Torch(\"mat1 and mat2 shapes cannot be multiplied \
                   (3x4 and 5x6)\\nException raised from meta at /pytorch/aten/src/ATen/native/LinearAlgebra.cpp:197 \
                   (most recent call first):\\nframe #0: c10::Error::Error(...)\\n\")";
        assert_eq!(without_cpp_backtrace(tch), "libtorch: mat1 and mat2 shapes cannot be multiplied (3x4 and 5x6)");
        assert_eq!(without_cpp_backtrace("plain message (x)"), "plain message (x)");
        let short = "called `Result::unwrap()` on an `Err` value: Torch(\"index 7 is out of bounds (size 3)\")";
        assert_eq!(without_cpp_backtrace(short), "libtorch: index 7 is out of bounds (size 3)");
    }
}
