//! A minimal plugin built on the stub ([`nri::stub`]) against the runtime-side test peer
//! ([`common::RawPeer`], the runtime's end at the byte level): it dials the runtime's
//! socket, registers with its name and index, is configured (answering its event mask),
//! synchronized (a split Synchronize joined into one call), answers RunPodSandbox and a
//! pod event sent as StateChange, and after the runtime restarts dials and registers again.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{RawPeer, discard_log};
use nri::api::{
    PLUGIN_SERVICE, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE, RUNTIME_SERVICE_CONN, method,
};
use nri::pb;
use nri::proto::ttrpc::{Request, Response};
use nri::run::{Backoff, Identity, Transport};
use nri::stub;
use nri::ttrpc::frame::{self, Decoded, MessageType};
use nri::ttrpc::{Code, Status};
use prost::Message;
use tokio::net::{UnixListener, UnixStream};

/// A plugin that records what it was told, and refuses pods named `refused`.
#[derive(Default)]
struct Recorder {
    configured: Mutex<Vec<String>>,
    synchronized: Mutex<Vec<(usize, usize)>>,
    started: Mutex<Vec<String>>,
    removed: Mutex<Vec<String>>,
}

impl stub::Plugin for Recorder {
    fn events(&self) -> Vec<pb::Event> {
        vec![pb::Event::RunPodSandbox, pb::Event::RemovePodSandbox]
    }

    fn configure(&self, request: &pb::ConfigureRequest) -> Result<(), Status> {
        self.configured
            .lock()
            .unwrap()
            .push(request.runtime_name.clone());
        Ok(())
    }

    async fn synchronize(
        &self,
        pods: Vec<pb::PodSandbox>,
        containers: Vec<pb::Container>,
    ) -> Result<Vec<pb::ContainerUpdate>, Status> {
        self.synchronized
            .lock()
            .unwrap()
            .push((pods.len(), containers.len()));
        Ok(Vec::new())
    }

    async fn run_pod_sandbox(&self, pod: pb::PodSandbox) -> Result<(), Status> {
        if pod.name == "refused" {
            return Err(Status::new(Code::FailedPrecondition, "refused by the test"));
        }
        self.started.lock().unwrap().push(pod.name);
        Ok(())
    }

    async fn remove_pod_sandbox(&self, pod: pb::PodSandbox) -> Result<(), Status> {
        self.removed.lock().unwrap().push(pod.name);
        Ok(())
    }
}

fn pod(name: &str) -> pb::PodSandbox {
    pb::PodSandbox {
        id: format!("sandbox-{name}"),
        name: name.into(),
        namespace: "default".into(),
        ..Default::default()
    }
}

/// Waits for the plugin's RegisterPlugin on the runtime connection; returns its stream id
/// and request.
async fn registration(peer: &mut RawPeer) -> (u32, pb::RegisterPluginRequest) {
    loop {
        match peer.next_item(Duration::from_secs(5)).await {
            Some((RUNTIME_SERVICE_CONN, Decoded::Frame(f))) if f.kind == MessageType::Request => {
                let request = Request::decode(f.body.as_slice()).unwrap();
                assert_eq!(
                    (request.service.as_str(), request.method.as_str()),
                    (RUNTIME_SERVICE, method::REGISTER_PLUGIN)
                );
                let register = pb::RegisterPluginRequest::decode(request.payload.as_slice());
                return (f.stream_id, register.unwrap());
            }
            Some(_) => continue,
            None => panic!("no RegisterPlugin"),
        }
    }
}

/// Answers the RegisterPlugin on `stream_id` with OK (no status, as containerd does).
async fn accept_registration(peer: &mut RawPeer, stream_id: u32) {
    let body = Response {
        status: None,
        payload: pb::Empty {}.encode_to_vec(),
    }
    .encode_to_vec();
    let message = frame::encode(stream_id, MessageType::Response, 0, &body).unwrap();
    peer.send_message(RUNTIME_SERVICE_CONN, &message).await;
}

/// Calls the plugin on `stream_id` and returns the status and the answer's payload.
async fn call(
    peer: &mut RawPeer,
    stream_id: u32,
    method: &str,
    payload: Vec<u8>,
) -> (Status, Vec<u8>) {
    peer.request(
        PLUGIN_SERVICE_CONN,
        stream_id,
        PLUGIN_SERVICE,
        method,
        payload,
        Duration::from_secs(2),
    )
    .await;
    let response = peer.response(PLUGIN_SERVICE_CONN, stream_id).await;
    (
        Status::from_proto(response.status.as_ref()),
        response.payload,
    )
}

/// Accepts the plugin's next connection.
async fn accept(listener: &UnixListener) -> RawPeer {
    let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("the plugin did not connect")
        .unwrap();
    RawPeer::new(stream)
}

#[tokio::test]
async fn a_stub_plugin_registers_answers_run_pod_sandbox_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let plugin = Arc::new(Recorder::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(stub::run(
        plugin.clone(),
        Transport::Dial(socket.clone()),
        Identity {
            name: "stub-test".into(),
            index: "42".into(),
        },
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        async {
            let _ = stopped.await;
        },
        discard_log(),
    ));

    let mut peer = accept(&listener).await;
    let (register_id, register) = registration(&mut peer).await;
    assert_eq!(
        (register.plugin_name.as_str(), register.plugin_idx.as_str()),
        ("stub-test", "42")
    );
    // Configure before the RegisterPlugin answer, as a runtime may (the plugin serves
    // connection 1 before it registers).
    let configure = pb::ConfigureRequest {
        runtime_name: "test-runtime".into(),
        runtime_version: "v0".into(),
        request_timeout: 2000,
        ..Default::default()
    };
    let (status, payload) = call(&mut peer, 1, method::CONFIGURE, configure.encode_to_vec()).await;
    assert!(status.is_ok(), "{status}");
    let configured = pb::ConfigureResponse::decode(payload.as_slice()).unwrap();
    assert_eq!(configured.events, 0x1 | 0x4);
    accept_registration(&mut peer, register_id).await;

    // A split Synchronize: the first part is echoed `more`, the last one reaches the plugin.
    let part = pb::SynchronizeRequest {
        pods: vec![pod("a")],
        containers: Vec::new(),
        more: true,
    };
    let (status, payload) = call(&mut peer, 3, method::SYNCHRONIZE, part.encode_to_vec()).await;
    assert!(status.is_ok(), "{status}");
    assert!(
        pb::SynchronizeResponse::decode(payload.as_slice())
            .unwrap()
            .more
    );
    let last = pb::SynchronizeRequest {
        pods: vec![pod("b")],
        containers: Vec::new(),
        more: false,
    };
    let (status, payload) = call(&mut peer, 5, method::SYNCHRONIZE, last.encode_to_vec()).await;
    assert!(status.is_ok(), "{status}");
    assert!(
        !pb::SynchronizeResponse::decode(payload.as_slice())
            .unwrap()
            .more
    );
    assert_eq!(*plugin.synchronized.lock().unwrap(), [(2, 0)]);

    let run = pb::RunPodSandboxRequest {
        pod: Some(pod("web")),
    };
    let (status, payload) = call(&mut peer, 7, method::RUN_POD_SANDBOX, run.encode_to_vec()).await;
    assert!(status.is_ok(), "{status}");
    pb::RunPodSandboxResponse::decode(payload.as_slice()).unwrap();
    assert_eq!(*plugin.started.lock().unwrap(), ["web"]);

    // The plugin's error is the runtime's answer.
    let run = pb::RunPodSandboxRequest {
        pod: Some(pod("refused")),
    };
    let (status, _) = call(&mut peer, 9, method::RUN_POD_SANDBOX, run.encode_to_vec()).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");

    // A pod event sent as StateChange (runtimes before NRI v0.12) reaches the same method.
    let event = pb::StateChangeEvent {
        event: pb::Event::RemovePodSandbox as i32,
        pod: Some(pod("web")),
        container: None,
    };
    let (status, _) = call(&mut peer, 11, method::STATE_CHANGE, event.encode_to_vec()).await;
    assert!(status.is_ok(), "{status}");
    assert_eq!(*plugin.removed.lock().unwrap(), ["web"]);

    // Unknown methods are UNIMPLEMENTED.
    let (status, _) = call(&mut peer, 13, "CreateContainer", Vec::new()).await;
    assert_eq!(status.code(), Code::Unimplemented, "{status}");

    // The runtime restarts: the plugin dials again and registers again.
    drop(peer);
    let mut peer = accept(&listener).await;
    let (register_id, register) = registration(&mut peer).await;
    assert_eq!(register.plugin_name, "stub-test");
    accept_registration(&mut peer, register_id).await;
    let (status, _) = call(&mut peer, 1, method::CONFIGURE, configure.encode_to_vec()).await;
    assert!(status.is_ok(), "{status}");
    assert_eq!(
        *plugin.configured.lock().unwrap(),
        ["test-runtime", "test-runtime"]
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the plugin did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_stub_plugin_on_an_inherited_socket_ends_with_it() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = {
        use std::os::fd::IntoRawFd as _;
        ours.into_std().unwrap().into_raw_fd()
    };
    let plugin = Arc::new(Recorder::default());
    let running = tokio::spawn(stub::run(
        plugin,
        Transport::Inherited(fd),
        Identity {
            name: "stub-test".into(),
            index: "42".into(),
        },
        Backoff::default(),
        std::future::pending(),
        discard_log(),
    ));
    let mut peer = RawPeer::new(theirs);
    let (register_id, _) = registration(&mut peer).await;
    accept_registration(&mut peer, register_id).await;
    let (status, _) = call(&mut peer, 1, method::SHUTDOWN, Vec::new()).await;
    assert!(status.is_ok(), "{status}");
    drop(peer);
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the plugin did not end with its socket")
        .unwrap()
        .unwrap();
}
