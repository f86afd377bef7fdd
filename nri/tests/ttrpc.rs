//! The ttRPC client and server over the NRI multiplexer, end to end on a socketpair:
//! calls both ways, statuses (UNIMPLEMENTED for unknown services and methods), deadlines
//! (`timeout_nano` on the server, the local timeout on the client), the 4 MiB limit both
//! ways (RESOURCE_EXHAUSTED without losing the connection), concurrency, the §2.4 framing of
//! what is sent, and closing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{RawPeer, discard_log};
use nri::conn::ConnectionBuilder;
use nri::ttrpc::frame::{self, MAX_BODY_LEN, MessageType};
use nri::ttrpc::server::{Reply, RequestContext, Service, unimplemented};
use nri::ttrpc::{CallErrorKind, Code, Status};
use tokio::net::UnixStream;

const ECHO: &str = "test.Echo";

/// Echo: returns the payload; Sleep: waits (payload = ms as text); Fail: ALREADY_EXISTS;
/// Big: answers that many zero bytes (payload = count as text).
struct Echo;

fn number(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload).unwrap().parse().unwrap()
}

impl Service for Echo {
    fn name(&self) -> &str {
        ECHO
    }

    fn call(&self, method: &str, payload: Vec<u8>, _ctx: RequestContext) -> Reply {
        match method {
            "Echo" => Box::pin(async move { Ok(payload) }),
            "Sleep" => Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(number(&payload))).await;
                Ok(b"slept".to_vec())
            }),
            "Fail" => Box::pin(async { Err(Status::new(Code::AlreadyExists, "nope")) }),
            "Big" => Box::pin(async move { Ok(vec![0; number(&payload) as usize]) }),
            other => unimplemented(ECHO, other),
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn calls_both_ways_and_statuses() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut builder_a = ConnectionBuilder::new(discard_log());
    let client_a = builder_a.client(2);
    let _conn_a = builder_a.serve(1, Arc::new(Echo)).start(a);
    let mut builder_b = ConnectionBuilder::new(discard_log());
    let client_b = builder_b.client(1);
    let _conn_b = builder_b.serve(2, Arc::new(Echo)).start(b);

    let answer = client_b
        .call_raw(ECHO, "Echo", b"to a".to_vec(), SECOND)
        .await
        .unwrap();
    assert_eq!(answer, b"to a");
    let answer = client_a
        .call_raw(ECHO, "Echo", b"to b".to_vec(), SECOND)
        .await
        .unwrap();
    assert_eq!(answer, b"to b");

    let err = client_b
        .call_raw(ECHO, "Fail", vec![], SECOND)
        .await
        .unwrap_err();
    assert_eq!(err.status().unwrap().code(), Code::AlreadyExists);
    assert!(err.to_string().contains("test.Echo/Fail"), "{err}");
    for (service, method) in [(ECHO, "Nope"), ("no.Such", "Echo")] {
        let err = client_b
            .call_raw(service, method, vec![], SECOND)
            .await
            .unwrap_err();
        assert_eq!(
            err.status().unwrap().code(),
            Code::Unimplemented,
            "{service}/{method}: never NOT_FOUND"
        );
    }
}

#[tokio::test]
async fn client_timeout_and_server_deadline() {
    let (a, b) = UnixStream::pair().unwrap();
    let _server = ConnectionBuilder::new(discard_log())
        .serve(1, Arc::new(Echo))
        .start(a);
    let mut builder = ConnectionBuilder::new(discard_log());
    let client = builder.client(1);
    let _conn = builder.start(b);
    // The server enforces timeout_nano (100 ms) and answers DEADLINE_EXCEEDED; the client
    // (waiting up to 100 ms as well) may see either that or its own timeout.
    let err = client
        .call_raw(ECHO, "Sleep", b"500".to_vec(), Duration::from_millis(100))
        .await
        .unwrap_err();
    match err.kind {
        CallErrorKind::Timeout(_) => {}
        CallErrorKind::Status(ref s) => assert_eq!(s.code(), Code::DeadlineExceeded),
        ref other => panic!("{other:?}"),
    }
    // The connection is still good.
    assert_eq!(
        client
            .call_raw(ECHO, "Echo", b"x".to_vec(), SECOND)
            .await
            .unwrap(),
        b"x"
    );

    // Raw: the server's DEADLINE_EXCEEDED status.
    let (a, b) = UnixStream::pair().unwrap();
    let _server = ConnectionBuilder::new(discard_log())
        .serve(1, Arc::new(Echo))
        .start(a);
    let mut peer = RawPeer::new(b);
    peer.request(
        1,
        1,
        ECHO,
        "Sleep",
        b"2000".to_vec(),
        Duration::from_millis(50),
    )
    .await;
    let response = peer.response(1, 1).await;
    assert_eq!(
        Status::from_proto(response.status.as_ref()).code(),
        Code::DeadlineExceeded
    );
}

#[tokio::test]
async fn four_mib_limit_both_ways() {
    let (a, b) = UnixStream::pair().unwrap();
    let _server = ConnectionBuilder::new(discard_log())
        .serve(1, Arc::new(Echo))
        .start(a);
    let mut builder = ConnectionBuilder::new(discard_log());
    let client = builder.client(1);
    let _conn = builder.start(b);
    // A payload just under the limit goes through both ways.
    let payload = vec![7u8; MAX_BODY_LEN - 64];
    let answer = client
        .call_raw(ECHO, "Echo", payload.clone(), SECOND * 5)
        .await
        .unwrap();
    assert_eq!(answer.len(), payload.len());
    // A request over the limit is refused locally.
    let err = client
        .call_raw(ECHO, "Echo", vec![0; MAX_BODY_LEN + 1], SECOND)
        .await
        .unwrap_err();
    assert!(matches!(err.kind, CallErrorKind::TooLarge(_)), "{err}");
    // A reply over the limit becomes RESOURCE_EXHAUSTED.
    let err = client
        .call_raw(
            ECHO,
            "Big",
            (MAX_BODY_LEN + 1).to_string().into_bytes(),
            SECOND * 5,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.status().unwrap().code(),
        Code::ResourceExhausted,
        "{err}"
    );
    assert_eq!(
        client
            .call_raw(ECHO, "Echo", b"ok".to_vec(), SECOND)
            .await
            .unwrap(),
        b"ok"
    );
}

#[tokio::test]
async fn oversize_frame_is_answered_and_the_connection_survives() {
    let (a, b) = UnixStream::pair().unwrap();
    let _server = ConnectionBuilder::new(discard_log())
        .serve(1, Arc::new(Echo))
        .start(a);
    let mut peer = RawPeer::new(b);
    let length = MAX_BODY_LEN + 10;
    let mut message = frame::FrameHeader {
        length: length as u32,
        stream_id: 1,
        kind: MessageType::Request,
        flags: 0,
    }
    .to_bytes()
    .to_vec();
    message.extend(std::iter::repeat_n(0x55, length));
    peer.send_message(1, &message).await;
    let response = peer.response(1, 1).await;
    let status = Status::from_proto(response.status.as_ref());
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    peer.request(1, 3, ECHO, "Echo", b"after".to_vec(), SECOND)
        .await;
    assert_eq!(peer.response(1, 3).await.payload, b"after");
}

#[tokio::test]
async fn large_replies_follow_the_go_framing_rule() {
    let (a, b) = UnixStream::pair().unwrap();
    let _server = ConnectionBuilder::new(discard_log())
        .serve(1, Arc::new(Echo))
        .start(a);
    let mut peer = RawPeer::new(b);
    // RawPeer asserts the rule on every frame it receives.
    for (i, size) in [0usize, 4000, 4076, 4077, 20_000, 100_000, 1 << 20]
        .iter()
        .enumerate()
    {
        let stream_id = 2 * i as u32 + 1;
        peer.request(
            1,
            stream_id,
            ECHO,
            "Big",
            size.to_string().into_bytes(),
            SECOND * 5,
        )
        .await;
        assert_eq!(peer.response(1, stream_id).await.payload.len(), *size);
    }
    assert!(
        peer.frames.iter().any(|(_, len)| *len > 4096),
        "some reply was split [4096, rest]"
    );
}

#[tokio::test]
async fn concurrent_calls_keep_stream_ids_rising() {
    let (a, b) = UnixStream::pair().unwrap();
    let _server = ConnectionBuilder::new(discard_log())
        .serve(1, Arc::new(Echo))
        .start(a);
    let mut builder = ConnectionBuilder::new(discard_log());
    let client = builder.client(1);
    let _conn = builder.start(b);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        let client = client.clone();
        tasks.spawn(async move {
            let payload = vec![(i % 251) as u8; (i as usize * 37) % 9000];
            let answer = client
                .call_raw(ECHO, "Echo", payload.clone(), SECOND * 5)
                .await
                .unwrap();
            assert_eq!(answer, payload);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn closing_fails_pending_calls_at_once() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = ConnectionBuilder::new(discard_log())
        .serve(1, Arc::new(Echo))
        .start(a);
    let mut builder = ConnectionBuilder::new(discard_log());
    let client = builder.client(1);
    let conn = builder.start(b);
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call_raw(ECHO, "Sleep", b"5000".to_vec(), SECOND * 10)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    drop(server);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err.kind, CallErrorKind::Closed(_)), "{err}");
    assert!(started.elapsed() < SECOND);
    assert!(conn.closed().await.contains("end of file"));
    let err = client
        .call_raw(ECHO, "Echo", vec![], SECOND)
        .await
        .unwrap_err();
    assert!(matches!(err.kind, CallErrorKind::Closed(_)), "{err}");
}
