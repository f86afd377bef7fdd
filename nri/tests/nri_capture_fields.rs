//! Our NRI protos against what a real containerd 2.3.4 (NRI v0.12.0) sent
//! (`tests/captures/containerd-2.3.4/nri/*.decoded.jsonl`): every runtime-to-plugin payload
//! decodes, and re-encoding it keeps every field, so no field containerd sends is unknown
//! to us (prost drops unknown fields, which would shorten the re-encoding).
//!
//! Byte-for-byte identity is too strict: Go marshals map entries in random order while
//! prost sorts them (BTreeMap). So the check is: the same length, and the same fields at
//! every level once sibling fields are sorted (see [`canonical`]).

use std::path::PathBuf;

use nri::pb;
use prost::Message;
use serde_json::Value;

/// The captures directory.
fn captures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/captures/containerd-2.3.4/nri")
}

/// The `ttrpc` records of a decoded capture file.
fn records(file: &str) -> Vec<Value> {
    let path = captures().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|v| v["kind"] == "ttrpc")
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    assert_eq!(s.len() % 2, 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Reads a varint at `*pos`.
fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// One wire field: its tag varint value and its value bytes (without the length prefix).
type Field<'a> = (u64, &'a [u8]);

/// Splits a message into its fields; None if `bytes` is not a well-formed message.
fn fields(bytes: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let tag = varint(bytes, &mut pos)?;
        if tag >> 3 == 0 {
            return None;
        }
        let start = pos;
        let end = match tag & 7 {
            0 => {
                varint(bytes, &mut pos)?;
                pos
            }
            1 => pos + 8,
            2 => {
                let len = usize::try_from(varint(bytes, &mut pos)?).ok()?;
                let start = pos;
                pos = start.checked_add(len)?;
                if pos > bytes.len() {
                    return None;
                }
                out.push((tag, &bytes[start..pos]));
                continue;
            }
            5 => pos + 4,
            _ => return None,
        };
        if end > bytes.len() {
            return None;
        }
        pos = end;
        out.push((tag, &bytes[start..end]));
    }
    Some(out)
}

/// A canonical form of a message: its fields sorted, each length-delimited value that
/// parses as a message canonicalized in turn (a string that happens to parse is
/// canonicalized the same way on both sides, so equality still means "same fields").
fn canonical(bytes: &[u8], depth: usize) -> String {
    match fields(bytes) {
        Some(list) if depth < 16 => {
            let mut parts: Vec<String> = list
                .into_iter()
                .map(|(tag, value)| {
                    let inner = if tag & 7 == 2 && !value.is_empty() {
                        canonical(value, depth + 1)
                    } else {
                        format!("{value:02x?}")
                    };
                    format!("{tag}:{inner}")
                })
                .collect();
            parts.sort();
            format!("{{{}}}", parts.join(","))
        }
        _ => format!("{bytes:02x?}"),
    }
}

/// Decodes `payload` as `M`, re-encodes it and checks that nothing was lost.
fn assert_lossless<M: Message + Default>(what: &str, payload: &[u8]) -> M {
    let message =
        M::decode(payload).unwrap_or_else(|e| panic!("{what}: payload does not decode: {e}"));
    let again = message.encode_to_vec();
    assert_eq!(
        again.len(),
        payload.len(),
        "{what}: re-encoding changed the length (a field we do not declare was dropped?)"
    );
    assert_eq!(
        canonical(&again, 0),
        canonical(payload, 0),
        "{what}: re-encoding changed the fields"
    );
    message
}

#[test]
fn synchronize_after_restart_has_the_container_user_and_loses_nothing() {
    let sync = records("02-after-restart.decoded.jsonl")
        .into_iter()
        .find(|r| r["call"] == "nri.pkg.api.v1alpha1.Plugin/Synchronize")
        .expect("the capture has a Synchronize request");
    let payload = hex(sync["payload_hex"].as_str().unwrap());
    assert_eq!(payload.len(), 4835, "payload_len of the capture");
    let request: pb::SynchronizeRequest = assert_lossless("Synchronize", &payload);
    assert_eq!(request.pods.len(), 2);
    assert_eq!(request.containers.len(), 1);
    let container = &request.containers[0];
    assert_eq!(
        container.id,
        "310857ea6ca45ceb02b6825a7594797f264164903de07aa19fcaa6675cd58e2c"
    );
    // Field 21 on the wire is 0xaa 0x01 (tag), length 3, then additional_gids packed: [0].
    let user = container.user.as_ref().expect("Container.user (field 21)");
    assert_eq!(
        *user,
        pb::User {
            uid: 0,
            gid: 0,
            additional_gids: vec![0]
        }
    );
    let needle = [0xaa, 0x01, 0x03, 0x1a, 0x01, 0x00];
    assert!(
        payload.windows(needle.len()).any(|w| w == needle),
        "the captured bytes hold field 21 as expected"
    );
}

#[test]
fn every_runtime_request_in_the_captures_decodes_without_loss() {
    let mut checked = 0;
    for file in [
        "01-first-connection.decoded.jsonl",
        "02-after-restart.decoded.jsonl",
    ] {
        for record in records(file) {
            if record["dir"] != "runtime->plugin" || record["payload_hex"].is_null() {
                continue;
            }
            let payload = hex(record["payload_hex"].as_str().unwrap());
            let ty = record["payload_type"].as_str().unwrap_or_default();
            let what = format!("{file} raw_i {} {ty}", record["raw_i"]);
            match ty.trim_start_matches("nri.pkg.api.v1alpha1.") {
                "Empty" => drop(assert_lossless::<pb::Empty>(&what, &payload)),
                "ConfigureRequest" => {
                    drop(assert_lossless::<pb::ConfigureRequest>(&what, &payload))
                }
                "SynchronizeRequest" => {
                    drop(assert_lossless::<pb::SynchronizeRequest>(&what, &payload))
                }
                "RunPodSandboxRequest" => {
                    drop(assert_lossless::<pb::RunPodSandboxRequest>(&what, &payload))
                }
                "StopPodSandboxRequest" => drop(assert_lossless::<pb::StopPodSandboxRequest>(
                    &what, &payload,
                )),
                "RemovePodSandboxRequest" => drop(assert_lossless::<pb::RemovePodSandboxRequest>(
                    &what, &payload,
                )),
                other => panic!("{what}: no check for payload type {other:?}"),
            }
            checked += 1;
        }
    }
    // 01: RegisterPlugin answer, Configure, Synchronize, 8 pod events; 02: answer,
    // Configure, Synchronize.
    assert!(checked >= 14, "only {checked} runtime payloads checked");
}

#[test]
fn canonical_form_sees_a_dropped_field() {
    // The check above must be able to fail: a container without its user field differs.
    let full = pb::Container {
        id: "c".into(),
        user: Some(pb::User {
            uid: 0,
            gid: 0,
            additional_gids: vec![0],
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let without = pb::Container {
        id: "c".into(),
        ..Default::default()
    }
    .encode_to_vec();
    assert_ne!(canonical(&full, 0), canonical(&without, 0));
    // Map order does not matter to it.
    let a = [0x2a, 0x02, 0x08, 0x01, 0x2a, 0x02, 0x08, 0x02];
    let b = [0x2a, 0x02, 0x08, 0x02, 0x2a, 0x02, 0x08, 0x01];
    assert_eq!(canonical(&a, 0), canonical(&b, 0));
}
