//! The chaos suite: the real daemon in throwaway node namespaces, made to crash, churned
//! under `kill -9`, interfered with from outside, starved of disk, and driven by a
//! misbehaving NRI runtime. Each module says what it asserts; every test cleans up after
//! itself (also on failure) and skips loudly when not root.
//!
//! Run alone: `cargo test -p nh-tests --test chaos` (after `cargo test --workspace --no-run`
//! or `make test` has built the test-only `netns-holder-fault`).

mod churn;
mod common;
mod crash;
mod disk;
mod fault_switch;
mod interference;
mod nri;
