//! Call statuses: gRPC status codes as ttRPC uses them verbatim (PROTOCOL.md §1.5), and
//! their wire form `google.rpc.Status`.
//!
//! On the wire a Response without a status is OK (containerd sends none, §10.1); we send an
//! explicit status on every Response, as Go ttRPC servers do (`0a 00` for OK, §1.7).

use std::fmt;

use crate::proto::google::rpc::Status as StatusProto;
use thiserror::Error;

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 0.
    Ok,
    /// 1.
    Cancelled,
    /// 2: also what a wire code outside 0..=16 is read as.
    Unknown,
    /// 3.
    InvalidArgument,
    /// 4.
    DeadlineExceeded,
    /// 5.
    NotFound,
    /// 6.
    AlreadyExists,
    /// 7.
    PermissionDenied,
    /// 8: oversized messages.
    ResourceExhausted,
    /// 9.
    FailedPrecondition,
    /// 10.
    Aborted,
    /// 11.
    OutOfRange,
    /// 12: unknown service or method. NRI >= v0.12 falls back to StateChange on this code.
    Unimplemented,
    /// 13.
    Internal,
    /// 14.
    Unavailable,
    /// 15.
    DataLoss,
    /// 16.
    Unauthenticated,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code for a wire value; values outside 0..=16 are [`Code::Unknown`].
    pub fn from_i32(value: i32) -> Self {
        usize::try_from(value)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .unwrap_or(Self::Unknown)
    }

    /// The wire value.
    pub fn as_i32(self) -> i32 {
        // ALL is in numeric order and every variant is in it.
        Self::ALL.iter().position(|c| *c == self).unwrap_or(2) as i32
    }

    /// The canonical upper-case name, e.g. `UNIMPLEMENTED`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_i32())
    }
}

/// A call outcome: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{code}: {message}")]
pub struct Status {
    code: Code,
    message: String,
}

impl Status {
    /// A status with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// OK.
    pub fn ok() -> Self {
        Self::new(Code::Ok, "")
    }

    /// INVALID_ARGUMENT.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// UNIMPLEMENTED.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    /// RESOURCE_EXHAUSTED.
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, message)
    }

    /// INTERNAL.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the code is OK.
    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }

    /// The status carried by a Response; absent means OK.
    pub fn from_proto(proto: Option<&StatusProto>) -> Self {
        match proto {
            None => Self::ok(),
            Some(p) => Self::new(Code::from_i32(p.code), p.message.clone()),
        }
    }

    /// The wire form (always present, as Go servers send it).
    pub fn to_proto(&self) -> StatusProto {
        StatusProto {
            code: self.code.as_i32(),
            message: self.message.clone(),
            details: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn codes_round_trip() {
        for (i, code) in Code::ALL.iter().enumerate() {
            assert_eq!(code.as_i32(), i as i32);
            assert_eq!(Code::from_i32(i as i32), *code);
        }
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        assert_eq!(Code::from_i32(99), Code::Unknown);
        assert_eq!(Code::Unimplemented.as_i32(), 12);
        assert_eq!(Code::NotFound.as_i32(), 5);
    }

    #[test]
    fn absent_status_is_ok() {
        assert!(Status::from_proto(None).is_ok());
    }

    #[test]
    fn ok_status_encodes_empty() {
        // The Response field holding it then reads `0a 00` (PROTOCOL.md §1.7).
        assert!(Status::ok().to_proto().encode_to_vec().is_empty());
    }

    #[test]
    fn unimplemented_wire_bytes() {
        // PROTOCOL.md §1.7: `0a 18 08 0c 12 14 "method RunPodSandbox"` is the Response.
        let proto = Status::unimplemented("method RunPodSandbox").to_proto();
        let mut expected = vec![0x08, 0x0c, 0x12, 0x14];
        expected.extend_from_slice(b"method RunPodSandbox");
        assert_eq!(proto.encode_to_vec(), expected);
    }
}
