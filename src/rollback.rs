//! An undo stack for multi-step creates (CRI-O's resource cleaner): every step that changes the
//! host pushes its undo; a failure runs them in reverse, a success commits and forgets them.

use std::future::Future;
use std::pin::Pin;

type Undo = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Default)]
pub struct Rollback {
    undos: Vec<(&'static str, Undo)>,
}

impl Rollback {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remember how to undo a step that just succeeded. Futures are lazy: nothing runs until
    /// [`Rollback::run`].
    pub fn push(&mut self, what: &'static str, undo: impl Future<Output = ()> + Send + 'static) {
        self.undos.push((what, Box::pin(undo)));
    }

    /// Undo every step, newest first.
    /// Stack `other`'s undos on top of this guard's, in their order: they are undone first.
    /// For steps that ran side by side, each with its own guard.
    pub fn absorb(&mut self, mut other: Rollback) {
        self.undos.append(&mut other.undos);
    }

    pub async fn run(mut self) {
        while let Some((what, undo)) = self.undos.pop() {
            tracing::debug!(step = what, "rolling back");
            undo.await;
        }
    }

    /// The create succeeded: keep everything.
    pub fn commit(mut self) {
        self.undos.clear();
    }

    /// Commit on success; on failure log `what` failed for `id` and undo every step. Returns the
    /// result unchanged, so a create ends with `rb.finish(result, "container", &id).await`.
    pub async fn finish<T, E: std::fmt::Display>(
        self,
        result: Result<T, E>,
        what: &str,
        id: &str,
    ) -> Result<T, E> {
        match result {
            Ok(v) => {
                self.commit();
                Ok(v)
            }
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "{what} create failed, rolling back");
                self.run().await;
                Err(e)
            }
        }
    }
}

impl Drop for Rollback {
    /// A create that was abandoned mid-way (its future dropped) still gets cleaned up.
    fn drop(&mut self) {
        if self.undos.is_empty() {
            return;
        }
        let undos = std::mem::take(&mut self.undos);
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                for (_, undo) in undos.into_iter().rev() {
                    undo.await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn undoes_in_reverse_and_commit_forgets() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut rb = Rollback::new();
        for i in 0..3 {
            let l = log.clone();
            rb.push("step", async move { l.lock().unwrap().push(i) });
        }
        rb.run().await;
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);

        let mut rb = Rollback::new();
        let l = log.clone();
        rb.push("step", async move { l.lock().unwrap().push(9) });
        rb.commit();
        tokio::task::yield_now().await;
        assert_eq!(log.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn finish_commits_ok_and_undoes_err() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut rb = Rollback::new();
        let l = log.clone();
        rb.push("step", async move { l.lock().unwrap().push(1) });
        assert_eq!(rb.finish(Ok::<_, String>(7), "x", "id").await, Ok(7));
        tokio::task::yield_now().await;
        assert!(log.lock().unwrap().is_empty());
        let mut rb = Rollback::new();
        let l = log.clone();
        rb.push("step", async move { l.lock().unwrap().push(2) });
        let r: Result<(), String> = rb.finish(Err("boom".into()), "x", "id").await;
        assert_eq!(r, Err("boom".to_string()));
        assert_eq!(*log.lock().unwrap(), vec![2]);
    }

    #[tokio::test]
    async fn dropped_guard_still_undoes() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut rb = Rollback::new();
        rb.push("step", async move {
            let _ = tx.send(());
        });
        drop(rb);
        rx.await.unwrap();
    }
}
