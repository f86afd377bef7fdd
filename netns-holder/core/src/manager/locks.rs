//! Per-pod-name async mutexes whose entries disappear when unused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::names::PodName;

/// Per-key async mutexes whose entries disappear when unused.
#[derive(Default)]
pub(super) struct KeyedLocks {
    pub(super) map: Mutex<HashMap<PodName, Arc<tokio::sync::Mutex<()>>>>,
}

pub(super) struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    name: PodName,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    /// Whether somebody holds or awaits the lock of `name`.
    pub(super) fn busy(&self, name: &PodName) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    pub(super) async fn lock(&self, name: &PodName) -> KeyGuard<'_> {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(name.clone()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        KeyGuard {
            locks: self,
            name: name.clone(),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        // Every waiter cloned the Arc under this map lock, so a count of 1 (the map's own)
        // means nobody holds or awaits this mutex.
        if map
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.name);
        }
    }
}
