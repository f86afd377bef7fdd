//! [`KernelEvents`] of the [`FakeSystem`]: the events its model emits as the real kernel does.

use super::FakeSystem;
use crate::kernel::KernelEvent;
use crate::system::{KernelEvents, SystemError};

impl KernelEvents for FakeSystem {
    async fn subscribe(
        &self,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<KernelEvent>, SystemError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().subscribers.push(tx);
        Ok(rx)
    }
}
