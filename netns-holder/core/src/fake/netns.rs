//! [`Namespaces`] of the [`FakeSystem`]: bind-mounted network namespaces.

use std::path::{Path, PathBuf};

use super::FakeSystem;
use crate::kernel::NetnsId;
use crate::kernel::PauseProcess;
use crate::system::{Namespaces, SystemError};

impl Namespaces for FakeSystem {
    /// The lexical rules only: the fake's namespaces are not on the real filesystem.
    fn check_attach_path(
        &self,
        path: &Path,
        netns_dir: &Path,
    ) -> Result<(), crate::netns_path::NetnsPathError> {
        crate::netns_path::check_attach_path_lexically(path, netns_dir).map(|_| ())
    }

    async fn create_netns(&self, path: &Path) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("create_netns {}", path.display()))
            .await?;
        if m.mounts.contains_key(path) {
            return Err(SystemError::AlreadyExists {
                object: format!("netns {}", path.display()),
            });
        }
        let id = m.new_net();
        m.mounts.insert(path.to_path_buf(), id);
        Ok(())
    }

    fn creates_in_flight(&self, count: usize) {
        self.lock().creates_in_flight.push(count);
    }

    fn reserve_pooled_link(&self, _netns: &Path) -> Option<crate::names::IfName> {
        let mut m = self.lock();
        (!m.pool_links.is_empty()).then(|| m.pool_links.remove(0))
    }

    fn release_pooled_link(&self, netns: &Path) {
        self.lock().released.push(netns.to_path_buf());
    }

    async fn delete_netns(&self, path: &Path) -> Result<bool, SystemError> {
        let mut m = self
            .call(format!("delete_netns {}", path.display()))
            .await?;
        let existed = m.unmount(path).is_some();
        m.collect_namespaces();
        Ok(existed)
    }

    async fn netns_exists(&self, path: &Path) -> Result<bool, SystemError> {
        let m = self
            .call(format!("netns_exists {}", path.display()))
            .await?;
        Ok(m.mounts.contains_key(path))
    }

    async fn netns_id(&self, path: &Path) -> Result<Option<NetnsId>, SystemError> {
        let m = self.call(format!("netns_id {}", path.display())).await?;
        Ok(m.mounts.get(path).map(|&ino| NetnsId { dev: 4, ino }))
    }

    async fn list_netns(&self, dir: &Path) -> Result<Vec<PathBuf>, SystemError> {
        let m = self.call(format!("list_netns {}", dir.display())).await?;
        Ok(m.mounts
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    async fn restore_netns(&self, path: &Path, holder: &PauseProcess) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("restore_netns {} {}", path.display(), holder.pid))
            .await?;
        let net = m
            .processes
            .get(&holder.pid)
            .filter(|p| p.start_time == holder.start_time)
            .map(|p| p.net)
            .ok_or_else(|| SystemError::NotFound {
                object: format!("pause {holder}"),
            })?;
        if m.mounts.contains_key(path) {
            return Err(SystemError::AlreadyExists {
                object: format!("netns {}", path.display()),
            });
        }
        m.mounts.insert(path.to_path_buf(), net);
        Ok(())
    }
}
