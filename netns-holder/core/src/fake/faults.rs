//! Fault injection and introspection of the [`FakeSystem`]: failing chosen calls, a
//! "crash" after N calls, and what the model holds.

use std::net::IpAddr;
use std::path::Path;

use super::{FakeSystem, HOST, Snapshot};
use crate::kernel::{LinkInfo, PauseProcess, RunningPause};
use crate::names::IfName;

impl FakeSystem {
    /// Every call made so far, in order (including failed ones).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Number of calls made so far.
    pub fn call_count(&self) -> usize {
        self.lock().calls.len()
    }

    /// Makes call number `n` (1-based, counting every call since the model was created)
    /// fail once.
    pub fn fail_call(&self, n: usize) {
        self.lock().fail_calls.insert(n);
    }

    /// Makes every call whose record contains `needle` fail (e.g. `"add_address"` or
    /// `"delete_link nh"`).
    pub fn fail_on(&self, needle: &str) {
        self.lock().fail_matching.push(needle.to_string());
    }

    /// Clears all injected failures (not a crash).
    pub fn clear_failures(&self) {
        let mut m = self.lock();
        m.fail_calls.clear();
        m.fail_matching.clear();
    }

    /// After call number `n` (counting every call since the model was created), every
    /// further call fails until [`FakeSystem::revive`], as if the daemon had died there.
    pub fn crash_after(&self, n: usize) {
        self.lock().crash_after = Some(n);
    }

    /// Ends a simulated crash: calls work again.
    pub fn revive(&self) {
        let mut m = self.lock();
        m.crash_after = None;
        m.crashed = false;
    }

    /// Whether a simulated crash is in effect.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Whether each call yields to the async scheduler first (default `true`, so that
    /// concurrent callers interleave).
    pub fn set_yield(&self, yield_each_call: bool) {
        self.lock().yield_each_call = yield_each_call;
    }

    /// Sets what [`Netlink::default_route_mtu`] reports.
    pub fn set_default_route_mtu(&self, mtu: Option<u32>) {
        self.lock().default_route_mtu = mtu;
    }

    /// A summary of the model.
    pub fn snapshot(&self) -> Snapshot {
        let m = self.lock();
        Snapshot {
            mounts: m.mounts.keys().cloned().collect(),
            namespaces: m.nets.len() - 1,
            host_links: m.nets[&HOST].links.keys().cloned().collect(),
            processes: m
                .processes
                .iter()
                .map(|(pid, p)| RunningPause {
                    id: p.id,
                    process: PauseProcess {
                        pid: *pid,
                        start_time: p.start_time,
                    },
                })
                .collect(),
        }
    }

    /// Link names inside the namespace at `path` (`None` if it is not mounted).
    pub fn links_in(&self, path: &Path) -> Option<Vec<String>> {
        let m = self.lock();
        let id = m.mounts.get(path)?;
        Some(m.nets[id].links.keys().cloned().collect())
    }

    /// Default routes `(device, gateway)` inside the namespace at `path`.
    pub fn routes_in(&self, path: &Path) -> Vec<(String, IpAddr)> {
        let m = self.lock();
        m.mounts
            .get(path)
            .map(|id| m.nets[id].routes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether loopback is up and DAD is off for `link` inside the namespace at `path`.
    pub fn loopback_and_dad(&self, path: &Path, link: &str) -> Option<(bool, bool)> {
        let m = self.lock();
        let net = &m.nets[m.mounts.get(path)?];
        Some((net.loopback_up, net.dad_off.contains(link)))
    }

    /// IP forwarding state (IPv4, IPv6).
    pub fn forwarding(&self) -> (bool, bool) {
        self.lock().forwarding
    }

    /// State of a link, without recording a call.
    pub fn peek_link(&self, netns: Option<&Path>, link: &str) -> Option<LinkInfo> {
        let m = self.lock();
        let id = m.net_id(netns).ok()?;
        m.nets[&id].links.get(link).map(|l| LinkInfo {
            up: l.up,
            mtu: l.mtu,
            master: l.master.clone().and_then(|n| IfName::new(n).ok()),
            addresses: l.addresses.iter().copied().collect(),
        })
    }
}
