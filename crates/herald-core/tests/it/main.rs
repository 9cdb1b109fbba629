//! The broker core through its storage boundary: a `Broker` over a `LocalStore` in a temporary
//! directory, with the clock paused where time matters. Callers that hang up mid-call are
//! played by [`hang_up_after`].

mod groups;
mod queues;
mod requests;

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Polls `future` until it has been pending `pendings` times, then drops it: a caller that hangs
/// up at its `pendings`-th `.await` (as the HTTP layer drops a handler when its client closes the
/// connection). `Some` with the output when it finished first.
pub async fn hang_up_after<F: Future>(future: F, pendings: usize) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut pending = 0;
    std::future::poll_fn(|context| match future.as_mut().poll(context) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending if pending >= pendings => Poll::Ready(None),
        Poll::Pending => {
            pending += 1;
            Poll::Pending
        }
    })
    .await
}

/// Waits (in real time, up to 10 s) until `check` answers `Some`, and returns that. For work a
/// hung-up call left running in the background.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
