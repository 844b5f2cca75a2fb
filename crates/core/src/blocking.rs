//! The one way async code runs long synchronous work (archives, rootfs, context tars): on
//! tokio's blocking threads, so the async threads stay free for downloads and uploads.

use std::future::Future;

/// Starts `work` on a blocking thread now (not when first polled, so it can run alongside
/// what the caller does next) and gives its result when awaited. A panic in `work` goes on
/// in the caller, as if it had run there.
pub(crate) fn blocking<T, F>(work: F) -> impl Future<Output = T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let handle = tokio::task::spawn_blocking(work);
    async move {
        match handle.await {
            Ok(t) => t,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only a runtime shutting down cancels blocking work, and then nobody waits.
                Err(e) => unreachable!("blocking work was cancelled: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_starts_before_it_is_awaited() {
        let (tx, rx) = std::sync::mpsc::channel();
        let done = blocking(move || tx.send(7).unwrap());
        // The work has run (or is running) although `done` was never polled.
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)), Ok(7));
        done.await;
    }

    #[tokio::test]
    async fn results_come_back() {
        assert_eq!(blocking(|| 6 * 7).await, 42);
    }
}
