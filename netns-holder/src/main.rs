//! netns-holder: the node daemon (its API and wiring arrive with the daemon work).

fn main() {
    eprintln!("netns-holder: the daemon is not built yet");
    std::process::exit(2);
}
