//! [`Sysctl`] of the [`FakeSystem`]: forwarding, DAD, `route_localnet`, the neighbour
//! tables' thresholds.

use std::path::Path;

use super::FakeSystem;
use crate::names::IfName;
use crate::neigh::{self, Thresholds};
use crate::ports::Family;
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

    async fn disable_ipv6(&self, link: &IfName) -> Result<(), SystemError> {
        let mut m = self.call(format!("disable_ipv6 {link}")).await?;
        m.link_mut(None, link)?;
        Ok(())
    }

    async fn enable_route_localnet(&self, link: &IfName) -> Result<(), SystemError> {
        let mut m = self.call(format!("enable_route_localnet {link}")).await?;
        m.link_mut(None, link)?;
        m.route_localnet.insert(link.to_string());
        Ok(())
    }

    async fn neighbour_thresholds(&self, family: Family) -> Result<Thresholds, SystemError> {
        let m = self
            .call(format!("neighbour_thresholds {}", family.name()))
            .await?;
        Ok(match family {
            Family::V4 => m.neigh.0,
            Family::V6 => m.neigh.1,
        })
    }

    async fn set_neighbour_thresholds(
        &self,
        family: Family,
        values: Thresholds,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!(
                "set_neighbour_thresholds {} {values}",
                family.name()
            ))
            .await?;
        if let Some(why) = &m.neigh_read_only {
            return Err(SystemError::other(
                format!("{}.gc_thresh*", neigh::sysctl_prefix(family)),
                why.clone(),
            ));
        }
        match family {
            Family::V4 => m.neigh.0 = values,
            Family::V6 => m.neigh.1 = values,
        }
        Ok(())
    }
}
