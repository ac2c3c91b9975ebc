//! The `flowlab` binary: the command line (and, later, the desktop app).

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use flowlab::cli::{Cli, run};

fn main() -> ExitCode {
    // candle's own thread pool fights gemm's on small machines; one candle thread
    // (gemm still uses all cores) measured 1.3-2.6x faster on 2 cores.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet this early in main.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    let Some(cmd) = cli.command else {
        Cli::command().print_help().ok();
        println!();
        return ExitCode::SUCCESS;
    };
    match run(&cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
