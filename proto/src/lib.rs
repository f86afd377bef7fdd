//! Protobuf definitions (filled in by the cri-hook and API work).
