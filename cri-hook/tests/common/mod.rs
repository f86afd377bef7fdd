//! Helpers shared by the integration tests: a recording fake [`PodNetwork`]. (The raw,
//! byte-level stand-in for the runtime end of the NRI socket, `RawPeer`, is the `nri`
//! crate's test helper, `nri/tests/common/mod.rs`.)

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use cri_hook::network::{NetworkError, NetworkPod, PodNetwork, Wiring};
use netns_holder_core::names::PodName;
use netns_holder_core::ports::PortMapping;
use tokio::time::Instant;

/// A logger that drops everything.
pub fn discard_log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// An in-memory pod network that records calls.
#[derive(Default)]
pub struct FakeNetwork {
    pub pods: Mutex<BTreeMap<PodName, NetworkPod>>,
    pub calls: Mutex<Vec<String>>,
    /// Every call fails with this, if set.
    pub fail: Mutex<Option<NetworkError>>,
    /// Every call first sleeps this long.
    pub delay: Mutex<Duration>,
    /// Pods whose ports were released.
    pub released: Mutex<std::collections::BTreeSet<PodName>>,
    /// Namespaces another network plugin wired, with the links in them.
    pub wired_elsewhere: Mutex<BTreeMap<String, Vec<String>>>,
}

impl FakeNetwork {
    pub fn names(&self) -> Vec<String> {
        self.pods
            .lock()
            .unwrap()
            .keys()
            .map(|n| n.to_string())
            .collect()
    }

    pub fn insert(&self, name: &str, annotations: &[(&str, &str)]) {
        let name = PodName::new(name).unwrap();
        self.pods.lock().unwrap().insert(
            name.clone(),
            NetworkPod {
                name,
                annotations: annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ips: vec!["10.0.0.99/24".into()],
                netns: "/run/netns/manual".into(),
            },
        );
    }

    async fn enter(&self, call: String, deadline: Instant) -> Result<(), NetworkError> {
        self.calls.lock().unwrap().push(call);
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero()
            && tokio::time::timeout_at(deadline, tokio::time::sleep(delay))
                .await
                .is_err()
        {
            return Err(NetworkError::Timeout {
                socket: "/fake".into(),
                method: "Fake",
                after: delay,
            });
        }
        match self.fail.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl PodNetwork for FakeNetwork {
    async fn ensure(
        &self,
        name: &PodName,
        netns: &Path,
        annotations: BTreeMap<String, String>,
        ports: &[PortMapping],
        deadline: Instant,
    ) -> Result<Wiring, NetworkError> {
        let shown: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let call = if shown.is_empty() {
            format!("ensure {name}")
        } else {
            format!("ensure {name} ports [{}]", shown.join(", "))
        };
        self.enter(call, deadline).await?;
        if let Some(links) = self
            .wired_elsewhere
            .lock()
            .unwrap()
            .get(&netns.display().to_string())
        {
            return Ok(Wiring::WiredElsewhere {
                links: links.clone(),
            });
        }
        let mut pods = self.pods.lock().unwrap();
        let n = pods.len();
        let pod = pods.entry(name.clone()).or_insert_with(|| NetworkPod {
            name: name.clone(),
            annotations: annotations.clone(),
            ips: vec![format!("10.0.0.{}/24", n + 2)],
            netns: netns.display().to_string(),
        });
        if pod.annotations != annotations || pod.netns != netns.display().to_string() {
            return Err(NetworkError::Rejected {
                method: "AttachPod",
                code: tonic::Code::AlreadyExists,
                message: format!("pod {name} exists with other parameters"),
            });
        }
        Ok(Wiring::Ours(pod.clone()))
    }

    async fn get(
        &self,
        name: &PodName,
        deadline: Instant,
    ) -> Result<Option<NetworkPod>, NetworkError> {
        self.enter(format!("get {name}"), deadline).await?;
        Ok(self.pods.lock().unwrap().get(name).cloned())
    }

    async fn release_ports(&self, name: &PodName, deadline: Instant) -> Result<bool, NetworkError> {
        self.enter(format!("release_ports {name}"), deadline)
            .await?;
        let pods = self.pods.lock().unwrap();
        Ok(pods.contains_key(name) && self.released.lock().unwrap().insert(name.clone()))
    }

    async fn remove(&self, name: &PodName, deadline: Instant) -> Result<bool, NetworkError> {
        self.enter(format!("remove {name}"), deadline).await?;
        Ok(self.pods.lock().unwrap().remove(name).is_some())
    }

    async fn list(&self, deadline: Instant) -> Result<Vec<NetworkPod>, NetworkError> {
        self.enter("list".into(), deadline).await?;
        Ok(self.pods.lock().unwrap().values().cloned().collect())
    }
}
