//! Replays every file of `tests/corpus/` (see its README): the decoders must agree however
//! the bytes are read and never panic, and a live plugin connection fed the file must
//! survive it and still answer a probe request. The live plugin here is a minimal plugin
//! on the stub ([`nri::stub`]); `cri-hook/tests/corpus_plugin.rs` replays the same files
//! against netns-holder's plugin.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{RawPeer, discard_log};
use nri::api::{PLUGIN_SERVICE, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use nri::conn::ConnectionBuilder;
use nri::mux::TrunkDecoder;
use nri::pb;
use nri::proto::ttrpc::{Request, Response};
use nri::stub;
use nri::ttrpc::frame::Decoded;
use nri::ttrpc::{Code, Status};
use prost::Message;
use tokio::net::UnixStream;

/// A minimal plugin on the stub: subscribes to the pod events and does nothing.
struct Minimal;

impl stub::Plugin for Minimal {
    fn events(&self) -> Vec<pb::Event> {
        vec![
            pb::Event::RunPodSandbox,
            pb::Event::StopPodSandbox,
            pb::Event::RemovePodSandbox,
        ]
    }
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 30, "corpus has only {} files", files.len());
    files
}

fn decode_in(data: &[u8], chunk: usize) -> (Vec<(u32, Decoded)>, bool) {
    let mut decoder = TrunkDecoder::new(&[1, 2]);
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        decoder.feed(piece, &mut out);
    }
    (out, decoder.is_idle())
}

#[test]
fn corpus_decodes_the_same_however_it_is_read() {
    for (name, data) in corpus() {
        let (whole, idle) = decode_in(&data, data.len());
        let (bytewise, idle1) = decode_in(&data, 1);
        let (sevens, idle7) = decode_in(&data, 7);
        assert_eq!(whole, bytewise, "{name}");
        assert_eq!(whole, sevens, "{name}");
        assert_eq!((idle, idle), (idle1, idle7), "{name}");
        for (_, item) in &whole {
            if let Decoded::Frame(f) = item {
                if let Ok(r) = Request::decode(f.body.as_slice()) {
                    let _ = pb::SynchronizeRequest::decode(r.payload.as_slice());
                    let _ = pb::ConfigureRequest::decode(r.payload.as_slice());
                }
                let _ = Response::decode(f.body.as_slice());
            }
        }
    }
}

#[test]
fn corpus_expectations() {
    let files: std::collections::BTreeMap<String, Vec<u8>> = corpus().into_iter().collect();
    let (items, _) = decode_in(&files["synchronize_large_4096_rest.bin"], 4096);
    assert!(matches!(&items[..], [(1, Decoded::Frame(f))] if f.body.len() > 4096));
    let (items, idle) = decode_in(&files["ttrpc_oversize_announced.bin"], 1000);
    assert!(
        items.is_empty() && !idle,
        "an oversize body is still being discarded"
    );
    let (items, _) = decode_in(&files["reserved_and_unknown_conns.bin"], 3);
    assert!(items.is_empty());
    let (items, _) = decode_in(&files["register_plugin_example.bin"], 5);
    let [(2, Decoded::Frame(f))] = &items[..] else {
        panic!("{items:?}")
    };
    let request = Request::decode(f.body.as_slice()).unwrap();
    assert_eq!(request.service, "nri.pkg.api.v1alpha1.Runtime");
    assert_eq!(request.method, "RegisterPlugin");
    assert_eq!(request.timeout_nano, 5_000_000_000);
    let register = pb::RegisterPluginRequest::decode(request.payload.as_slice()).unwrap();
    assert_eq!(
        (register.plugin_name.as_str(), register.plugin_idx.as_str()),
        ("netshim", "10")
    );
}

#[tokio::test]
async fn a_live_connection_survives_every_corpus_file() {
    for (name, data) in corpus() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let plugin = Arc::new(Minimal);
        let mut builder = ConnectionBuilder::new(discard_log());
        let _client = builder.client(RUNTIME_SERVICE_CONN);
        let connection = builder
            .serve(PLUGIN_SERVICE_CONN, stub::service(plugin.clone()))
            .start(ours);
        let mut peer = RawPeer::new(theirs);
        peer.send_raw(&data).await;
        let (_, idle) = decode_in(&data, data.len());
        if idle {
            // Stream ids must rise: the probe uses one above any in the corpus.
            let probe = 0x7fff_fff1;
            peer.request(
                PLUGIN_SERVICE_CONN,
                probe,
                PLUGIN_SERVICE,
                "Shutdown",
                Vec::new(),
                Duration::from_secs(2),
            )
            .await;
            let response = peer.response(PLUGIN_SERVICE_CONN, probe).await;
            assert!(
                Status::from_proto(response.status.as_ref()).is_ok(),
                "{name}: probe answered {response:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            connection.close_reason(),
            None,
            "{name}: the connection closed"
        );
        drop(Arc::clone(&plugin));
    }
}

#[tokio::test]
async fn hostile_requests_get_the_go_server_statuses() {
    let files: std::collections::BTreeMap<String, Vec<u8>> = corpus().into_iter().collect();
    for (file, stream_id, code) in [
        ("even_stream_id.bin", 2, Code::InvalidArgument),
        ("streaming_flag.bin", 17, Code::Unimplemented),
        ("garbage_request_body.bin", 23, Code::InvalidArgument),
        ("request_invalid_utf8.bin", 25, Code::InvalidArgument),
        ("payload_not_configure.bin", 31, Code::InvalidArgument),
        ("unknown_service_and_method.bin", 33, Code::Unimplemented),
        ("unknown_service_and_method.bin", 35, Code::Unimplemented),
    ] {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let plugin = Arc::new(Minimal);
        let connection = ConnectionBuilder::new(discard_log())
            .serve(PLUGIN_SERVICE_CONN, stub::service(plugin.clone()))
            .start(ours);
        let mut peer = RawPeer::new(theirs);
        peer.send_raw(&files[file]).await;
        let response = peer.response(PLUGIN_SERVICE_CONN, stream_id).await;
        let status = Status::from_proto(response.status.as_ref());
        assert_eq!(status.code(), code, "{file}: {status}");
        drop(connection);
    }
}
