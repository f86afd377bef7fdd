//! A small unary ttRPC implementation (containerd/ttrpc protocol 1.2, PROTOCOL.md §1), on
//! tokio and prost: the frame codec ([`frame`]), statuses ([`status`]), and the client and
//! server halves of one logical connection ([`client`], [`server`]), which
//! [`crate::conn`] runs over the NRI multiplexer, and the queue both halves send through
//! ([`outgoing`]).
//!
//! Layering: [`frame`] and [`status`] at the bottom, [`outgoing`] beside them, [`client`]
//! and [`server`] on those; nothing here imports [`crate::conn`], which builds on it.

pub mod client;
pub mod frame;
pub mod outgoing;
pub mod server;
pub mod status;

pub use client::{CallError, CallErrorKind, Client};
pub use server::{Reply, RequestContext, Service};
pub use status::{Code, Status};
