//! cri-hook: runtime adapters (NRI plugin, OCI hook, CNI entry) for netns-holder.

fn main() {
    eprintln!("cri-hook: not built yet");
    std::process::exit(2);
}
