//! The Plugin service against a fake pod network, driven over a real connection by a
//! runtime-side ttRPC client on logical connection 1, as a runtime drives it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeNetwork, discard_log};
use cri_hook::network::NetworkError;
use cri_hook::plugin::Plugin;
use cri_hook::pod::{OWNER_ANNOTATION, SANDBOX_ANNOTATION};
use nri::api::{PLUGIN_SERVICE, PLUGIN_SERVICE_CONN, method, pb};
use nri::conn::{Connection, ConnectionBuilder};
use nri::ttrpc::{CallError, Client, Code};
use prost::Message;
use tokio::net::UnixStream;

const TIMEOUT: Duration = Duration::from_secs(2);

struct Setup {
    plugin: Arc<Plugin<FakeNetwork>>,
    runtime: Client,
    _plugin_conn: Connection,
    _runtime_conn: Connection,
}

fn setup() -> Setup {
    let (a, b) = UnixStream::pair().unwrap();
    let plugin = Plugin::new(
        FakeNetwork::default(),
        Duration::from_millis(1500),
        discard_log(),
    );
    let plugin_conn = ConnectionBuilder::new(discard_log())
        .serve(PLUGIN_SERVICE_CONN, plugin.service())
        .start(a);
    let mut builder = ConnectionBuilder::new(discard_log());
    let runtime = builder.client(PLUGIN_SERVICE_CONN);
    let runtime_conn = builder.start(b);
    Setup {
        plugin,
        runtime,
        _plugin_conn: plugin_conn,
        _runtime_conn: runtime_conn,
    }
}

impl Setup {
    fn net(&self) -> &FakeNetwork {
        self.plugin.network()
    }

    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.runtime
            .call(PLUGIN_SERVICE, method, request, TIMEOUT)
            .await
    }

    async fn run(&self, pod: &pb::PodSandbox) -> Result<pb::RunPodSandboxResponse, CallError> {
        self.call(
            method::RUN_POD_SANDBOX,
            &pb::RunPodSandboxRequest {
                pod: Some(pod.clone()),
            },
        )
        .await
    }

    async fn remove(
        &self,
        pod: &pb::PodSandbox,
    ) -> Result<pb::RemovePodSandboxResponse, CallError> {
        self.call(
            method::REMOVE_POD_SANDBOX,
            &pb::RemovePodSandboxRequest {
                pod: Some(pod.clone()),
            },
        )
        .await
    }
}

fn sandbox(name: &str, id: &str, netns: Option<&str>) -> pb::PodSandbox {
    pb::PodSandbox {
        id: id.into(),
        name: name.into(),
        namespace: "default".into(),
        uid: format!("uid-{name}"),
        linux: netns.map(|path| pb::LinuxPodSandbox {
            namespaces: vec![pb::LinuxNamespace {
                r#type: "network".into(),
                path: path.into(),
            }],
            ..Default::default()
        }),
        pid: 42,
        ..Default::default()
    }
}

const ID_A: &str = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000001";
const ID_B: &str = "bbbbbbbbbbbb0000000000000000000000000000000000000000000000000002";

#[tokio::test]
async fn configure_subscribes_to_pod_events() {
    let s = setup();
    let answer: pb::ConfigureResponse = s
        .call(
            method::CONFIGURE,
            &pb::ConfigureRequest {
                runtime_name: "containerd".into(),
                runtime_version: "v2.3.4".into(),
                registration_timeout: 5000,
                request_timeout: 2000,
                nri_version: "v0.12.0".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(answer.events, 0x7);
    // Field 2 on the wire (PROTOCOL.md §1.7).
    assert_eq!(answer.encode_to_vec(), vec![0x10, 0x07]);
}

#[tokio::test]
async fn run_pod_sandbox_ensures_idempotently() {
    let s = setup();
    let pod = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    s.run(&pod).await.unwrap();
    s.run(&pod).await.unwrap();
    assert_eq!(s.net().names(), ["default_web_aaaaaaaaaaaa"]);
    let pods = s.net().pods.lock().unwrap();
    let wired = pods.values().next().unwrap();
    assert_eq!(wired.netns, "/var/run/netns/cni-a");
    assert_eq!(wired.annotations[OWNER_ANNOTATION], "nri");
    assert_eq!(wired.annotations[SANDBOX_ANNOTATION], ID_A);
}

#[tokio::test]
async fn state_change_carries_the_same_events() {
    let s = setup();
    let pod = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    for (event, expected) in [
        (pb::Event::RunPodSandbox, vec!["default_web_aaaaaaaaaaaa"]),
        (pb::Event::StopPodSandbox, vec!["default_web_aaaaaaaaaaaa"]),
        (pb::Event::CreateContainer, vec!["default_web_aaaaaaaaaaaa"]),
        (pb::Event::RemovePodSandbox, vec![]),
    ] {
        let _: pb::Empty = s
            .call(
                method::STATE_CHANGE,
                &pb::StateChangeEvent {
                    event: event as i32,
                    pod: Some(pod.clone()),
                    container: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(s.net().names(), expected, "after {event:?}");
    }
}

#[tokio::test]
async fn ports_annotation_is_published_at_run_and_released_at_stop() {
    let s = setup();
    let mut pod = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    pod.annotations.insert(
        "netns-holder.io/ports".into(),
        "8080:80,[::]:53:5353/udp".into(),
    );
    s.run(&pod).await.unwrap();
    let stop = |pod: &pb::PodSandbox| pb::StopPodSandboxRequest {
        pod: Some(pod.clone()),
    };
    let _: pb::StopPodSandboxResponse =
        s.call(method::STOP_POD_SANDBOX, &stop(&pod)).await.unwrap();
    // A sandbox never wired (host network) and one whose pod is not ours: nothing to release.
    let _: pb::StopPodSandboxResponse = s
        .call(
            method::STOP_POD_SANDBOX,
            &stop(&sandbox("host", ID_B, None)),
        )
        .await
        .unwrap();
    s.net().insert("default_other_bbbbbbbbbbbb", &[]);
    let _: pb::StopPodSandboxResponse = s
        .call(
            method::STOP_POD_SANDBOX,
            &stop(&sandbox("other", ID_B, None)),
        )
        .await
        .unwrap();
    assert_eq!(
        *s.net().calls.lock().unwrap(),
        [
            "ensure default_web_aaaaaaaaaaaa ports [tcp 8080 -> 80, udp [::]:53 -> 5353]",
            "get default_web_aaaaaaaaaaaa",
            "release_ports default_web_aaaaaaaaaaaa",
            "get default_host_bbbbbbbbbbbb",
            "get default_other_bbbbbbbbbbbb",
        ]
    );
    assert_eq!(
        s.net().names(),
        ["default_other_bbbbbbbbbbbb", "default_web_aaaaaaaaaaaa"]
    );
    // A failing daemon fails the Stop (the runtime only logs it) naming the pod.
    *s.net().fail.lock().unwrap() = Some(NetworkError::Unreachable {
        message: "cannot connect to netns-holder at /x.sock".into(),
    });
    let err = s
        .call::<_, pb::StopPodSandboxResponse>(method::STOP_POD_SANDBOX, &stop(&pod))
        .await
        .unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("default/web"), "{status}");
}

#[tokio::test]
async fn skip_option_and_host_network_are_left_alone() {
    let s = setup();
    let mut skipped = sandbox("skipped", ID_A, Some("/var/run/netns/cni-a"));
    skipped
        .annotations
        .insert("netns-holder.io/skip".into(), "true".into());
    s.run(&skipped).await.unwrap();
    s.run(&sandbox("host", ID_B, None)).await.unwrap();
    assert!(s.net().names().is_empty());
    assert!(s.net().calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_annotation_fails_the_pod_naming_it() {
    let s = setup();
    let mut pod = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    pod.annotations
        .insert("netns-holder.io/skip".into(), "yes please".into());
    let err = s.run(&pod).await.unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("netns-holder.io/skip"),
        "{status}"
    );
    assert!(
        status.message().contains("\"yes please\" is not a boolean"),
        "{status}"
    );
    assert!(status.message().contains("default/web"), "{status}");
    assert!(s.net().names().is_empty());
}

#[tokio::test]
async fn many_malformed_annotations_make_a_large_reply() {
    let s = setup();
    let mut pod = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    for i in 0..300 {
        pod.annotations
            .insert(format!("netns-holder.io/unknown-option-{i:05}"), "x".into());
    }
    let err = s.run(&pod).await.unwrap_err();
    let status = err.status().unwrap();
    assert!(
        status.message().len() >= 20 * 1024,
        "{}",
        status.message().len()
    );
    assert!(status.message().contains("300 malformed"));
}

#[tokio::test]
async fn remove_touches_only_our_pod_for_this_sandbox() {
    let s = setup();
    let pod = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    // A manual pod with the derived name, and ours for another sandbox id: both kept.
    s.net().insert("default_web_aaaaaaaaaaaa", &[]);
    s.remove(&pod).await.unwrap();
    assert_eq!(s.net().names(), ["default_web_aaaaaaaaaaaa"]);
    s.net().pods.lock().unwrap().clear();
    s.net().insert(
        "default_web_aaaaaaaaaaaa",
        &[(OWNER_ANNOTATION, "nri"), (SANDBOX_ANNOTATION, ID_B)],
    );
    s.remove(&pod).await.unwrap();
    assert_eq!(s.net().names(), ["default_web_aaaaaaaaaaaa"]);
    // Ours: removed; removing again is fine.
    s.net().pods.lock().unwrap().clear();
    s.run(&pod).await.unwrap();
    s.remove(&pod).await.unwrap();
    s.remove(&pod).await.unwrap();
    assert!(s.net().names().is_empty());
}

#[tokio::test]
async fn split_synchronize_echoes_more_and_reconciles_at_the_end() {
    let s = setup();
    s.net().insert(
        "stale",
        &[(OWNER_ANNOTATION, "nri"), (SANDBOX_ANNOTATION, "dead")],
    );
    s.net().insert("manual", &[("purpose", "by hand")]);
    let parts = [
        (
            vec![sandbox("web", ID_A, Some("/var/run/netns/cni-a"))],
            true,
        ),
        (vec![sandbox("host", ID_B, None)], true),
        (vec![], false),
    ];
    for (pods, more) in parts {
        let answer: pb::SynchronizeResponse = s
            .call(
                method::SYNCHRONIZE,
                &pb::SynchronizeRequest {
                    pods,
                    containers: vec![pb::Container {
                        id: "c1".into(),
                        pod_sandbox_id: ID_A.into(),
                        state: pb::ContainerState::ContainerRunning as i32,
                        ..Default::default()
                    }],
                    more,
                },
            )
            .await
            .unwrap();
        assert_eq!(answer.more, more);
        assert!(answer.update.is_empty());
        if more {
            // Nothing happens before the last part.
            assert!(s.net().calls.lock().unwrap().is_empty());
        }
    }
    assert_eq!(s.net().names(), ["default_web_aaaaaaaaaaaa", "manual"]);
}

#[tokio::test]
async fn unreachable_or_hanging_daemon_fails_fast() {
    let s = setup();
    let pod = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    *s.net().fail.lock().unwrap() = Some(NetworkError::Unreachable {
        message: "cannot connect to netns-holder at /nowhere: No such file or directory".into(),
    });
    let err = s.run(&pod).await.unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("/nowhere"), "{status}");

    *s.net().fail.lock().unwrap() = None;
    *s.net().delay.lock().unwrap() = Duration::from_secs(10);
    let started = Instant::now();
    let err = s.run(&pod).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.status().unwrap().code(), Code::Unavailable, "{err}");
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_millis(1950),
        "answered after {elapsed:?}: must be well inside the 2 s budget"
    );
}

#[tokio::test]
async fn daemon_codes_that_mean_something_else_to_the_runtime_are_mapped() {
    let s = setup();
    let pod = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    for (daemon, expected) in [
        (tonic::Code::Unimplemented, Code::Internal),
        (tonic::Code::DeadlineExceeded, Code::Unavailable),
        (tonic::Code::ResourceExhausted, Code::ResourceExhausted),
        (tonic::Code::FailedPrecondition, Code::FailedPrecondition),
    ] {
        *s.net().fail.lock().unwrap() = Some(NetworkError::Rejected {
            method: "AttachPod",
            code: daemon,
            message: "daemon says no".into(),
        });
        let err = s.run(&pod).await.unwrap_err();
        assert_eq!(err.status().unwrap().code(), expected, "{daemon:?}");
    }
}

#[tokio::test]
async fn methods_not_served_are_unimplemented() {
    let s = setup();
    for name in ["CreateContainer", "PostStartContainer", "Bogus"] {
        let err = s
            .runtime
            .call_raw(PLUGIN_SERVICE, name, vec![], TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err.status().unwrap().code(), Code::Unimplemented, "{name}");
    }
    let _: pb::Empty = s.call(method::SHUTDOWN, &pb::Empty {}).await.unwrap();
    // StateChange is never UNIMPLEMENTED, whatever the event.
    for event in [0, 5, 11, 14, 99] {
        let _: pb::Empty = s
            .call(
                method::STATE_CHANGE,
                &pb::StateChangeEvent {
                    event,
                    pod: None,
                    container: None,
                },
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_pod_another_network_plugin_wired_starts_and_is_left_alone() {
    let s = setup();
    s.net()
        .wired_elsewhere
        .lock()
        .unwrap()
        .insert("/var/run/netns/cni-a".into(), vec!["eth0".into()]);
    let plain = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    s.run(&plain).await.unwrap();
    assert!(s.net().names().is_empty(), "nothing made");
    // Stop and Remove find no pod of ours and succeed.
    s.remove(&plain).await.unwrap();

    // Asking us for host ports on such a pod fails it, naming the annotation and the links.
    let mut annotated = sandbox("web", ID_A, Some("/var/run/netns/cni-a"));
    annotated
        .annotations
        .insert("netns-holder.io/ports".into(), "18082:8080/tcp".into());
    let err = s.run(&annotated).await.unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    for needle in [
        "default/web",
        "netns-holder.io/ports",
        "tcp 18082 -> 8080",
        "another network plugin",
        "eth0",
        "/var/run/netns/cni-a",
    ] {
        assert!(status.message().contains(needle), "{needle}: {status}");
    }
    assert!(s.net().names().is_empty());
}
