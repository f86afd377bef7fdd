//! [`Sysctl`] of the [`FakeSystem`]: forwarding, DAD, `route_localnet`.

use std::path::Path;

use super::FakeSystem;
use crate::names::IfName;
use crate::system::{Sysctl, SystemError};

impl Sysctl for FakeSystem {
    async fn enable_forwarding(&self, ipv6: bool) -> Result<(), SystemError> {
        let mut m = self.call(format!("enable_forwarding ipv6={ipv6}")).await?;
        m.forwarding.0 = true;
        m.forwarding.1 |= ipv6;
        Ok(())
    }

    async fn disable_dad(&self, netns: &Path, link: &IfName) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("disable_dad {link} {}", netns.display()))
            .await?;
        m.link_mut(Some(netns), link)?;
        let id = m.net_id(Some(netns))?;
        m.net(id).dad_off.insert(link.to_string());
        Ok(())
    }

    async fn enable_route_localnet(&self, link: &IfName) -> Result<(), SystemError> {
        let mut m = self.call(format!("enable_route_localnet {link}")).await?;
        m.link_mut(None, link)?;
        m.route_localnet.insert(link.to_string());
        Ok(())
    }
}
