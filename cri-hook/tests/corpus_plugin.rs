//! Replays the `nri` crate's corpus (`nri/tests/corpus/`, see its README) against
//! netns-holder's plugin: a live plugin connection fed each file must survive it and still
//! answer a probe request, and hostile requests get the Go server's statuses. (The decoder
//! checks of the corpus, and the same replay on a minimal stub plugin, are
//! `nri/tests/corpus.rs`.)

mod common;
#[path = "../../nri/tests/common/mod.rs"]
mod peer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeNetwork, discard_log};
use cri_hook::plugin::Plugin;
use nri::api::{PLUGIN_SERVICE, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use nri::conn::ConnectionBuilder;
use nri::mux::TrunkDecoder;
use nri::ttrpc::frame::Decoded;
use nri::ttrpc::{Code, Status};
use peer::RawPeer;
use tokio::net::UnixStream;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nri/tests/corpus");
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

#[tokio::test]
async fn a_live_connection_survives_every_corpus_file() {
    for (name, data) in corpus() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let plugin = Plugin::new(
            FakeNetwork::default(),
            Duration::from_millis(200),
            discard_log(),
        );
        let mut builder = ConnectionBuilder::new(discard_log());
        let _client = builder.client(RUNTIME_SERVICE_CONN);
        let connection = builder
            .serve(PLUGIN_SERVICE_CONN, plugin.service())
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
        let plugin = Plugin::new(
            FakeNetwork::default(),
            Duration::from_millis(200),
            discard_log(),
        );
        let connection = ConnectionBuilder::new(discard_log())
            .serve(PLUGIN_SERVICE_CONN, plugin.service())
            .start(ours);
        let mut peer = RawPeer::new(theirs);
        peer.send_raw(&files[file]).await;
        let response = peer.response(PLUGIN_SERVICE_CONN, stream_id).await;
        let status = Status::from_proto(response.status.as_ref());
        assert_eq!(status.code(), code, "{file}: {status}");
        drop(connection);
    }
}
