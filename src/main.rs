//! The `flowlab` binary: the desktop app (no subcommand) and the command line.

use std::process::ExitCode;

use clap::Parser as _;
use flowlab::cli::{Cli, run};

// glibc's malloc returns large tensor buffers to the kernel and takes page faults
// to get them back on every step (~16% of a training step); mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // candle's own thread pool fights gemm's on small machines; one candle thread
    // (gemm still uses all cores) measured 1.3-2.6x faster on 2 cores.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet this early in main.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    // Never hand freed memory back to the kernel: every training step frees and
    // reallocates the same tensor sizes, and re-faulting the pages costs more than
    // the memory saved. (15 is `mi_option_purge_delay`; -1 means never purge.)
    // SAFETY: setting a mimalloc option is thread-safe and takes plain integers.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let cli = Cli::parse();
    let Some(cmd) = cli.command else {
        return open_app(&cli);
    };
    match run(&cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// No subcommand: the desktop app (or the help, in a build without the GUI).
#[cfg(feature = "gui")]
fn open_app(cli: &Cli) -> ExitCode {
    use flowlab::app::{Opening, Pretrained};
    let open = match (&cli.open, &cli.pretrained) {
        (Some(f), _) => Some(Opening::File(f.clone())),
        (None, Some(name)) => match Pretrained::from_name(name) {
            Some(p) => Some(Opening::Pretrained(p)),
            None => {
                eprintln!("error: --pretrained must be moons or mnist, got {name:?}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => None,
    };
    match flowlab::app::run(open) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// No subcommand: the desktop app (or the help, in a build without the GUI).
#[cfg(not(feature = "gui"))]
fn open_app(_cli: &Cli) -> ExitCode {
    use clap::CommandFactory as _;
    Cli::command().print_help().ok();
    println!();
    ExitCode::SUCCESS
}
