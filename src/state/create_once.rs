//! One create at a time per CRI name, for kubelet's retries.
//!
//! kubelet gives up on a RunPodSandbox or CreateContainer after its deadline and sends the same
//! request again while the first attempt still runs. The retry waits here for that attempt and
//! gets its id; only when the attempt failed does the retry make its own. Pods and containers
//! each hold one [`CreateOnce`], keyed by their name keys.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The outcome slot of one name's attempts: the id of the attempt that succeeded, if one has.
type Slot = Arc<tokio::sync::Mutex<Option<String>>>;

#[derive(Debug, Default)]
pub struct CreateOnce {
    /// Slots of the names with an attempt running or waiting; a name leaves with its last one.
    slots: Mutex<HashMap<String, Slot>>,
}

impl CreateOnce {
    /// Run `create` for `key` unless another attempt for `key` is running: then wait for it,
    /// and take its id if it succeeded, or run `create` after it if it failed.
    pub async fn run<E, F, Fut>(&self, key: &str, create: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
    {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        let result = {
            let mut done = slot.lock().await;
            match done.as_ref() {
                Some(id) => Ok(id.clone()),
                None => {
                    let result = create().await;
                    if let Ok(id) = &result {
                        *done = Some(id.clone());
                    }
                    result
                }
            }
        };
        self.release(key, slot);
        result
    }

    /// Forget `key`'s slot once no other attempt holds it: a waiter that cloned it keeps it.
    /// Clones happen under the map's lock, so the count is exact there.
    fn release(&self, key: &str, slot: Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&slot) <= 2 {
            slots.remove(key);
        }
    }

    /// How many names have an attempt running or waiting.
    pub fn in_flight(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_retry_while_the_first_attempt_runs_gets_its_id() {
        let once = Arc::new(CreateOnce::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (once, runs) = (once.clone(), runs.clone());
            tokio::spawn(async move {
                once.run::<String, _, _>("pod_ns_uid_0", || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = started_tx.send(());
                    let _ = finish_rx.await;
                    Ok("id-1".to_string())
                })
                .await
            })
        };
        started_rx.await.unwrap();
        let retry = {
            let (once, runs) = (once.clone(), runs.clone());
            tokio::spawn(async move {
                once.run::<String, _, _>("pod_ns_uid_0", || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok("id-2".to_string())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !retry.is_finished(),
            "the retry waits for the first attempt"
        );
        finish_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), "id-1");
        assert_eq!(retry.await.unwrap().unwrap(), "id-1");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the retry made nothing");
        assert_eq!(once.in_flight(), 0, "the name is forgotten afterwards");
    }

    #[tokio::test]
    async fn a_retry_after_a_failed_attempt_makes_its_own() {
        let once = Arc::new(CreateOnce::default());
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let once = once.clone();
            tokio::spawn(async move {
                once.run("c_pod_0", || async move {
                    let _ = started_tx.send(());
                    let _ = finish_rx.await;
                    Err("no space left")
                })
                .await
            })
        };
        started_rx.await.unwrap();
        let retry = {
            let once = once.clone();
            tokio::spawn(async move {
                once.run::<&str, _, _>("c_pod_0", || async { Ok("id-2".to_string()) })
                    .await
            })
        };
        finish_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Err("no space left"));
        assert_eq!(retry.await.unwrap().unwrap(), "id-2");
        assert_eq!(once.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_names_do_not_wait_for_each_other() {
        let once = Arc::new(CreateOnce::default());
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let once = once.clone();
            tokio::spawn(async move {
                once.run::<(), _, _>("a", || async move {
                    let _ = started_tx.send(());
                    let _ = finish_rx.await;
                    Ok("id-a".to_string())
                })
                .await
            })
        };
        started_rx.await.unwrap();
        let b = tokio::time::timeout(
            Duration::from_secs(5),
            once.run::<(), _, _>("b", || async { Ok("id-b".to_string()) }),
        )
        .await
        .expect("b does not wait for a");
        assert_eq!(b.unwrap(), "id-b");
        assert_eq!(once.in_flight(), 1);
        finish_tx.send(()).unwrap();
        assert_eq!(slow.await.unwrap().unwrap(), "id-a");
        assert_eq!(once.in_flight(), 0);
    }
}
