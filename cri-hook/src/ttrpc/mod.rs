//! A small unary ttRPC implementation (containerd/ttrpc protocol 1.2, PROTOCOL.md §1), on
//! tokio and prost: the frame codec ([`frame`]), statuses ([`status`]), and the client and
//! server halves of one logical connection ([`client`], [`server`]), which
//! [`crate::conn`] runs over the NRI multiplexer.

pub mod client;
pub mod frame;
pub mod server;
pub mod status;

pub use client::{CallError, CallErrorKind, Client};
pub use server::{Reply, RequestContext, Service};
pub use status::{Code, Status};
