use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::time::{Instant, Sleep};

use super::{Activity, TimeoutError, activity::RequestLimit};
use crate::deadline::deadline_from;

/// One request of a multiplexed protocol (an HTTP/2 stream with a body) held to the
/// request timeout on its own, from its dispatch until its handler answers: the
/// connection's single request clock cannot time streams that overlap. The minimum rate
/// counts the connection's bytes since the stream began.
#[derive(Debug)]
pub(crate) struct StreamDeadline {
    activity: Arc<Activity>,
    limit: RequestLimit,
    started: Instant,
    bytes_at_start: u64,
    sleep: Pin<Box<Sleep>>,
}

impl StreamDeadline {
    pub(crate) fn start(activity: &Arc<Activity>, limit: RequestLimit) -> Self {
        let started = Instant::now();
        Self {
            activity: activity.clone(),
            limit,
            started,
            bytes_at_start: activity.bytes_read(),
            sleep: Box::pin(tokio::time::sleep_until(deadline_from(started, limit.base))),
        }
    }

    /// Ready once the deadline has passed; the connection is then closed with a
    /// request timeout.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let received = self
                .activity
                .bytes_read()
                .saturating_sub(self.bytes_at_start);
            let allowed = self.limit.allowance(received);
            let due = deadline_from(self.started, allowed);
            if Instant::now() >= due {
                self.activity.force_expiry(TimeoutError::Request(allowed));
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(due);
        }
    }
}
