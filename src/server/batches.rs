//! The Stream* list RPCs: the objects a List call returns, sent in batches as they are read.
//!
//! A List call converts every selected object before answering; a stream converts (and for statistics,
//! reads) one batch at a time, and the next batch only when the client has taken the previous one, so the
//! converted objects in memory stay one batch whatever the number of pods.

use std::future::Future;
use std::pin::Pin;
use tonic::Status;

/// Objects per streamed message: large enough that framing costs nothing, small enough to stay far below
/// the 4 MiB message limit kubelet's client keeps (a pod with labels and annotations is a few KiB at most).
pub(super) const BATCH: usize = 100;

/// A server stream of batches, as the generated RuntimeService and ImageService traits take it.
pub(crate) type Batches<R> = Pin<Box<dyn futures::Stream<Item = Result<R, Status>> + Send>>;

/// Streams `selected` (records already chosen by the List call's cheap filters) as messages built by
/// `wrap`, each from the items `read` produces for up to [`BATCH`] of them. `read` may drop records (a
/// filter that needs the converted object) and may fail, which ends the stream with that error.
pub(super) fn in_batches<S, T, R, F, Fut>(
    selected: Vec<S>,
    read: F,
    wrap: fn(Vec<T>) -> R,
) -> Batches<R>
where
    S: Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
    F: FnMut(Vec<S>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<T>, Status>> + Send + 'static,
{
    let start = (Some(selected.into_iter()), read);
    Box::pin(futures::stream::unfold(
        start,
        move |(rest, mut read)| async move {
            let mut rest = rest?;
            loop {
                let batch: Vec<S> = rest.by_ref().take(BATCH).collect();
                if batch.is_empty() {
                    return None;
                }
                match read(batch).await {
                    Ok(items) if items.is_empty() => continue,
                    Ok(items) => return Some((Ok(wrap(items)), (Some(rest), read))),
                    Err(status) => return Some((Err(status), (None, read))),
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn batches_keep_order_skip_empty_reads_and_stop_after_an_error() {
        let evens = |batch: Vec<usize>| async move {
            Ok::<_, Status>(
                batch
                    .into_iter()
                    .filter(|n| n % 2 == 0 || *n >= BATCH * 2)
                    .collect(),
            )
        };
        let odd_first_batch: Vec<usize> = (0..BATCH * 3)
            .map(|n| if n < BATCH { 1 } else { n })
            .collect();
        let got: Vec<Vec<usize>> = in_batches(odd_first_batch, evens, |v| v)
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(got.len(), 2, "the all-odd first batch sends nothing");
        assert_eq!(got[0].len(), BATCH / 2);
        assert_eq!(got[1], (BATCH * 2..BATCH * 3).collect::<Vec<_>>());

        let failing =
            |_: Vec<usize>| async { Err::<Vec<usize>, _>(Status::internal("read failed")) };
        let got: Vec<_> = in_batches((0..BATCH * 2).collect(), failing, |v| v)
            .collect()
            .await;
        assert_eq!(got.len(), 1);
        assert!(got[0].is_err());
    }
}
