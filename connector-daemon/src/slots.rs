//! Fair shares of what one daemon does at once: a total, and a share no single owner (an
//! organization, an endpoint) may go past, so one owner's burst never starves the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `total` slots at once in the daemon, and at most `per_owner` for one owner.
pub struct Slots {
    total: Arc<Semaphore>,
    per_owner: usize,
    owners: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A slot taken; dropping it gives it back.
pub struct Slot {
    _owner: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Slots {
    /// `total` may be `Semaphore::MAX_PERMITS` for shares alone.
    pub fn new(total: usize, per_owner: usize) -> Slots {
        Slots { total: Arc::new(Semaphore::new(total.max(1))), per_owner: per_owner.max(1), owners: Mutex::default() }
    }

    /// Waits for a slot of the owner's, then for one of the daemon's: an owner past its share
    /// waits behind its own work, not in the daemon's queue.
    pub async fn take(&self, owner: &str) -> Slot {
        let mine = {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            // An owner nobody holds or waits for a slot of is forgotten.
            owners.retain(|_, slots| Arc::strong_count(slots) > 1);
            owners.entry(owner.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_owner))).clone()
        };
        // Neither semaphore is ever closed.
        let owner = mine.acquire_owned().await.expect("an open semaphore");
        let total = self.total.clone().acquire_owned().await.expect("an open semaphore");
        Slot { _owner: owner, _total: total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_owner_cannot_take_every_slot() {
        let slots = Slots::new(3, 2);
        let soon = |owner: &'static str| tokio::time::timeout(Duration::from_millis(50), slots.take(owner));
        let a1 = soon("a").await.expect("a slot");
        let _a2 = soon("a").await.expect("a second slot");
        assert!(soon("a").await.is_err(), "a third waits: the owner has its share");
        let _b1 = soon("b").await.expect("another owner is not starved");
        assert!(soon("c").await.is_err(), "the daemon's total holds");
        drop(a1);
        soon("a").await.expect("a slot again once one came back");
    }
}
