//! `netns-holder-fault`: TEST ONLY. The `netns-holder` binary with the crash switch of
//! [`netns_holder_core::executor::fault`] armed from `NETNS_HOLDER_FAULT`
//! (`crash-after-step:create:K` or `crash-after-step:remove:K`): the daemon aborts right
//! after step K of the first such plan, like a `kill -9` there.
//!
//! Built only with the cargo feature `fault-injection` (`required-features`), which only the
//! test crate enables; production builds have neither this binary nor the switch.

use std::process::ExitCode;

use netns_holder_core::executor::fault;

#[path = "../main.rs"]
mod daemon;

fn main() -> ExitCode {
    if let Some(spec) = std::env::var_os(fault::ENV) {
        match spec.to_str().map(fault::parse) {
            Some(Ok(armed)) => fault::arm(armed),
            Some(Err(e)) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            None => {
                eprintln!("error: {} is not valid UTF-8", fault::ENV);
                return ExitCode::from(2);
            }
        }
    }
    daemon::main()
}
