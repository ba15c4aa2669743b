//! The tasks waiting for an endpoint to become ready, woken when the membership changes so that
//! they route over the new set instead of waiting on endpoints that may never answer.

use std::{
    sync::{Mutex, PoisonError},
    task::Waker,
};

/// Registered wakers, each in a slot held by the waiting balancer or request until it stops
/// waiting. Used only on the paths that wait: a request to a ready endpoint never locks it.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Waiters {
    /// Registers `waker` in `slot`, taking a slot if it has none, or updates the waker it holds.
    pub(crate) fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match *slot {
            Some(i) => match &mut slots.wakers[i] {
                Some(held) if held.will_wake(waker) => {}
                held => *held = Some(waker.clone()),
            },
            None => {
                let i = match slots.free.pop() {
                    Some(i) => {
                        slots.wakers[i] = Some(waker.clone());
                        i
                    }
                    None => {
                        slots.wakers.push(Some(waker.clone()));
                        slots.wakers.len() - 1
                    }
                };
                *slot = Some(i);
            }
        }
    }

    /// Registers `waker` in `slot` as the task starts waiting, then wakes it at once if
    /// `changed` says a change was published before the registration, which woke nobody.
    pub(crate) fn wait(
        &self,
        slot: &mut Option<usize>,
        waker: &Waker,
        changed: impl FnOnce() -> bool,
    ) {
        self.register(slot, waker);
        if changed() {
            waker.wake_by_ref();
        }
    }

    /// Gives `slot` back, if it holds one; takes no lock otherwise.
    #[inline]
    pub(crate) fn deregister(&self, slot: &mut Option<usize>) {
        if let Some(i) = slot.take() {
            self.free(i);
        }
    }

    #[inline(never)]
    fn free(&self, i: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.wakers[i] = None;
        slots.free.push(i);
    }

    /// Wakes every registered task; each stays registered until it polls again.
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.wakers.iter().flatten().cloned().collect()
        };
        // Outside the lock: a waker may run code that registers again.
        for waker in wakers {
            waker.wake();
        }
    }

    /// How many tasks are registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.wakers.len() - slots.free.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::Wake,
    };

    use super::*;

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn registered_tasks_are_woken_until_they_deregister_and_slots_are_reused() {
        let waiters = Waiters::default();
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let (mut a, mut b) = (None, None);
        waiters.register(&mut a, &waker);
        waiters.register(&mut a, &waker);
        waiters.register(&mut b, &waker);
        assert_eq!(waiters.len(), 2);
        waiters.wake_all();
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);

        waiters.deregister(&mut a);
        assert_eq!(a, None);
        waiters.wake_all();
        assert_eq!(counter.0.load(Ordering::SeqCst), 3);

        let mut c = None;
        waiters.register(&mut c, &waker);
        assert_eq!(c, Some(0), "the freed slot is reused");
        waiters.deregister(&mut b);
        waiters.deregister(&mut c);
        assert_eq!(waiters.len(), 0);
    }
}
