//! The `siamese` command: a thin layer over the libraries. Arguments are parsed by clap,
//! turned once into library configs (a `TrainConfig` for training), and handed over;
//! errors become one line on stderr and a non-zero exit code.

mod args;
mod commands;
mod export;
mod gallery;
mod report;
mod text;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

fn main() -> ExitCode {
    // Training reallocates the same large buffers every step; keeping freed memory
    // (instead of returning it to the OS) made training about 1.4x faster.
    siamese_model::kernels::retain_freed_memory();
    // candle's element-wise thread pool spins next to the fused kernels' threads;
    // without it training ran about 1.1x faster on 2 cores.
    // SAFETY: the first line of `main`, before any thread exists.
    #[allow(unsafe_code)]
    unsafe {
        siamese_model::kernels::candle_ops_on_calling_thread();
    }
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return bad_arguments(e),
    };
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line of cause and context, outermost first.
            eprintln!("error: {}", text::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap writes them; a usage error becomes one line like
/// every other error (clap's first line; its usage block and tips are dropped), exit 2.
fn bad_arguments(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("error: invalid arguments");
    eprintln!("{first} (see --help)");
    ExitCode::from(2)
}
