//! Waiting for something another task or process makes true (a push
//! delivered, a connection remade), without a fixed sleep.

use std::time::Duration;

/// Polls before giving up: 4,000 attempts 5 ms apart, 20 s in all.
pub const ATTEMPTS: usize = 4_000;
const PAUSE: Duration = Duration::from_millis(5);

/// Polls `condition` until it holds, at most [`ATTEMPTS`] times; returns
/// whether it did.
pub async fn eventually(mut condition: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..ATTEMPTS {
        if condition().await {
            return true;
        }
        tokio::time::sleep(PAUSE).await;
    }
    false
}
