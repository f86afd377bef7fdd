//! Property-based fuzzing (proptest) of the decoders that read what the runtime sends: the
//! ttRPC frame decoder, the mux decoder and the whole trunk pipeline (mux, ttRPC frames,
//! then the protobuf envelope), and of the sending side's framing rule.
//!
//! Hostile input must never make a decoder panic, and any split of a byte stream into
//! reads must decode exactly like the stream read at once.

use nri::mux::{
    FrameSplit, GO_FRAME_LIMIT, MUX_HEADER_LEN, MuxDecoder, TrunkDecoder, encode_frame,
    frame_message,
};
use nri::pb;
use nri::proto::ttrpc::{Request, Response};
use nri::ttrpc::frame::{self, Decoded, Frame, FrameDecoder, MAX_BODY_LEN, MessageType};
use proptest::prelude::*;
use prost::Message;

/// Feeds `data` to a fresh trunk decoder in pieces cut at `cuts` (positions modulo the length).
fn trunk_decode(conns: &[u32], data: &[u8], cuts: &[usize]) -> Vec<(u32, Decoded)> {
    let mut decoder = TrunkDecoder::new(conns);
    let mut out = Vec::new();
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| if data.is_empty() { 0 } else { c % data.len() })
        .collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    for pair in points.windows(2) {
        decoder.feed(&data[pair[0]..pair[1]], &mut out);
    }
    out
}

/// Decodes every frame body as the envelope (and NRI messages inside), as the plugin
/// would; the results do not matter, only that nothing panics.
fn decode_everything(items: &[(u32, Decoded)]) {
    for (_, item) in items {
        if let Decoded::Frame(f) = item {
            if let Ok(request) = Request::decode(f.body.as_slice()) {
                let _ = pb::SynchronizeRequest::decode(request.payload.as_slice());
                let _ = pb::RunPodSandboxRequest::decode(request.payload.as_slice());
                let _ = pb::StateChangeEvent::decode(request.payload.as_slice());
                let _ = pb::ConfigureRequest::decode(request.payload.as_slice());
            }
            let _ = Response::decode(f.body.as_slice());
        }
    }
}

fn message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::Request),
        Just(MessageType::Response),
        Just(MessageType::Data),
        any::<u8>().prop_map(MessageType::from_byte),
    ]
}

/// Mux frames with hostile lengths: real payloads, or headers announcing more than follows.
fn hostile_trunk() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0u32), Just(1), Just(2), Just(3), any::<u32>()],
            prop_oneof![
                Just(None),
                Just(Some(0u32)),
                Just(Some(4096)),
                Just(Some(4097)),
                Just(Some(u32::MAX)),
                any::<u32>().prop_map(Some),
            ],
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        0..12,
    )
    .prop_map(|frames| {
        let mut out = Vec::new();
        for (conn, announced, payload) in frames {
            out.extend_from_slice(&conn.to_be_bytes());
            let len = announced.unwrap_or(payload.len() as u32);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&payload);
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn frame_decoder_never_panics(data in prop::collection::vec(any::<u8>(), 0..2048),
                                  cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        let mut rest = data.as_slice();
        for cut in cuts {
            let at = if rest.is_empty() { 0 } else { cut % rest.len() };
            decoder.feed(&rest[..at], &mut out);
            rest = &rest[at..];
        }
        decoder.feed(rest, &mut out);
        for item in &out {
            if let Decoded::Frame(f) = item {
                prop_assert!(f.body.len() <= MAX_BODY_LEN);
            }
        }
    }

    #[test]
    fn frames_round_trip_under_any_split(
        frames in prop::collection::vec(
            (any::<u32>(), message_type(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..6000)),
            0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (stream_id, kind, flags, body) in frames {
            stream.extend(frame::encode(stream_id, kind, flags, &body).unwrap());
            expected.push(Decoded::Frame(Frame { stream_id, kind, flags, body }));
        }
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| if stream.is_empty() { 0 } else { c % stream.len() }).collect();
        points.extend([0, stream.len()]);
        points.sort_unstable();
        points.dedup();
        for pair in points.windows(2) {
            decoder.feed(&stream[pair[0]..pair[1]], &mut out);
        }
        prop_assert_eq!(out, expected);
        prop_assert!(decoder.is_idle());
    }

    #[test]
    fn mux_decoder_never_panics_and_conserves_bytes(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut whole = Vec::new();
        MuxDecoder::new().feed(&data, |conn, bytes| whole.extend(bytes.iter().map(|b| (conn, *b))));
        let mut bytewise = Vec::new();
        let mut decoder = MuxDecoder::new();
        for byte in &data {
            decoder.feed(std::slice::from_ref(byte), |conn, bytes| {
                bytewise.extend(bytes.iter().map(|b| (conn, *b)));
            });
        }
        // The same payload bytes, attributed to the same connections, however it is read;
        // every other byte was a header byte.
        prop_assert!(whole.len() <= data.len());
        prop_assert_eq!(whole, bytewise);
    }

    #[test]
    fn trunk_pipeline_never_panics_on_random_bytes(
        data in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = trunk_decode(&[1, 2], &data, &[]);
        let split = trunk_decode(&[1, 2], &data, &cuts);
        prop_assert_eq!(&whole, &split);
        decode_everything(&whole);
    }

    #[test]
    fn trunk_pipeline_never_panics_on_hostile_frames(
        data in hostile_trunk(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = trunk_decode(&[1, 2], &data, &[]);
        let split = trunk_decode(&[1, 2], &data, &cuts);
        prop_assert_eq!(&whole, &split);
        decode_everything(&whole);
    }

    #[test]
    fn envelope_decoding_never_panics(body in prop::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(request) = Request::decode(body.as_slice()) {
            let _ = pb::SynchronizeRequest::decode(request.payload.as_slice());
        }
        let _ = Response::decode(body.as_slice());
        let _ = pb::PodSandbox::decode(body.as_slice());
        let _ = pb::Container::decode(body.as_slice());
    }

    #[test]
    fn framing_rule_holds_and_trunk_reassembles(
        messages in prop::collection::vec(
            (prop_oneof![Just(1u32), Just(2u32)], any::<u32>(), prop::collection::vec(any::<u8>(), 0..12_000)),
            1..6),
        junk in prop::collection::vec((3u32..10, prop::collection::vec(any::<u8>(), 0..100)), 0..4),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut trunk = Vec::new();
        let mut expected = Vec::new();
        for (i, (conn, stream_id, body)) in messages.into_iter().enumerate() {
            let message = frame::encode(stream_id, MessageType::Request, 0, &body).unwrap();
            let mut framed = Vec::new();
            let split = frame_message(conn, &message, &mut framed);
            // The §2.4 rule: a message that fits is one frame, a bigger one is exactly
            // [4096, rest]; the frame starting a message never exceeds 4096 bytes.
            match split {
                FrameSplit::One(n) => prop_assert!(n == message.len() && n <= GO_FRAME_LIMIT),
                FrameSplit::Two(a, b) => {
                    prop_assert_eq!(a, GO_FRAME_LIMIT);
                    prop_assert_eq!(a + b, message.len());
                }
            }
            let overhead = match split { FrameSplit::One(_) => MUX_HEADER_LEN, FrameSplit::Two(..) => 2 * MUX_HEADER_LEN };
            prop_assert_eq!(framed.len(), message.len() + overhead);
            trunk.extend(framed);
            if let Some((junk_conn, payload)) = junk.get(i) {
                encode_frame(*junk_conn, payload, &mut trunk);
            }
            expected.push((conn, Decoded::Frame(Frame { stream_id, kind: MessageType::Request, flags: 0, body })));
        }
        let out = trunk_decode(&[1, 2], &trunk, &cuts);
        // Per connection, order is preserved (across connections it is the trunk order).
        prop_assert_eq!(out, expected);
    }
}
