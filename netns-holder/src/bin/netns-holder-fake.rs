//! `netns-holder-fake`: TEST ONLY. The `netns-holder` binary for the API tests, whose
//! `serve --fake` serves the in-memory fake kernel.
//!
//! Built only with the cargo feature `fake` (`required-features`), so a production build
//! (`cargo build`, `make demo`, `make build`) never writes this file. The tests used to run
//! `target/debug/netns-holder serve --fake`, a path that every build of the package
//! rewrites: a production build of it running meanwhile (a `make demo` or `cargo build`
//! next to `make test`, or another clone sharing the target directory) left a binary
//! without `--fake` there, and the daemon the test started exited at once ("unexpected
//! argument '--fake'") while the test waited 20 s for it.

use std::process::ExitCode;

#[path = "../main.rs"]
mod daemon;

fn main() -> ExitCode {
    daemon::main()
}
