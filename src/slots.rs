//! Bounded fan-out over nodes: at most `--max-parallel` nodes in flight at once.
//!
//! Every node costs the jumpbox a connection (two with a jump host), the node's sshd a
//! handshake and a few processes; past some hundreds of nodes that is what runs out first
//! (file descriptors, the bastion's CPU, a lab switch's ARP table). Nodes beyond the limit wait
//! for a slot, and the output says so, so a long run never looks hung without a reason.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default `--max-parallel`: covers the scale lab's 32 nodes at once, and 128 in two waves.
pub const DEFAULT_MAX_PARALLEL: usize = 64;

/// Slots for nodes in flight. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeSlots {
    sem: Arc<Semaphore>,
    max: usize,
}

impl NodeSlots {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        NodeSlots { sem: Arc::new(Semaphore::new(max)), max }
    }
    pub fn max(&self) -> usize {
        self.max
    }
    /// The note to print when `nodes` will not all fit at once.
    pub fn queued_note(&self, nodes: usize) -> Option<String> {
        (nodes > self.max).then(|| {
            format!("{} of {nodes} nodes queued: at most {} in flight (--max-parallel)", nodes - self.max, self.max)
        })
    }
    /// A slot: at once if one is free, else after waiting for one (`Slot::queued` says which).
    pub async fn acquire(&self) -> Slot {
        match self.sem.clone().try_acquire_owned() {
            Ok(p) => Slot { _permit: p, queued: false },
            Err(_) => {
                let p = self.sem.clone().acquire_owned().await.expect("semaphore never closed");
                Slot { _permit: p, queued: true }
            }
        }
    }
    /// Whether a node asking now would have to wait.
    pub fn full(&self) -> bool {
        self.sem.available_permits() == 0
    }
}

/// A node's place in flight; freed on drop.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// The node had to wait for it.
    pub queued: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn third_node_waits_for_a_slot() {
        let slots = NodeSlots::new(2);
        assert_eq!(slots.queued_note(2), None);
        assert_eq!(slots.queued_note(5).as_deref(), Some("3 of 5 nodes queued: at most 2 in flight (--max-parallel)"));
        let a = slots.acquire().await;
        let _b = slots.acquire().await;
        assert!(!a.queued && slots.full());
        let s2 = slots.clone();
        let third = tokio::spawn(async move { s2.acquire().await.queued });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!third.is_finished(), "a third node must wait while two are in flight");
        drop(a);
        assert!(third.await.unwrap(), "and know it was queued");
    }
}
