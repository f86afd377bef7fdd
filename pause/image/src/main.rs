//! Builds the pause OCI image.

fn main() {}
