//! The `posbridge` binary: parse arguments, hand them to the library, turn errors into one line
//! on standard error and a non-zero exit.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let command = posbridge_sim::cli::parse();
    match posbridge_sim::cli::run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, so scripts and operators can grep it; `{:#}` joins the context chain.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
