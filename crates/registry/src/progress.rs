//! Byte progress of blob transfers, for progress bars.

use std::sync::Arc;

/// Which way a blob moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a registry into a layout.
    Pull,
    /// From a layout to a registry.
    Push,
}

/// How far one blob's transfer has come. Reported when it starts, about every
/// [`PROGRESS_STEP`] bytes, and when it ends (`done == total`); a retried transfer starts
/// again from zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Pull or push.
    pub direction: Direction,
    /// The image reference the blob belongs to.
    pub reference: String,
    /// The blob's digest.
    pub digest: String,
    /// Bytes moved so far.
    pub done: u64,
    /// The blob's size, from its descriptor.
    pub total: u64,
}

/// Where transfer progress goes.
pub type ProgressSink = Arc<dyn Fn(&Transfer) + Send + Sync>;

/// How many bytes pass between two reports of one blob.
pub const PROGRESS_STEP: u64 = 1 << 20;

/// Counts bytes of one transfer and reports them to a sink, at most once per step.
pub(crate) struct Meter {
    sink: Option<ProgressSink>,
    transfer: Transfer,
    reported: u64,
}

impl Meter {
    pub(crate) fn new(
        sink: Option<&ProgressSink>,
        direction: Direction,
        reference: &str,
        digest: &str,
        total: u64,
    ) -> Meter {
        let meter = Meter {
            sink: sink.cloned(),
            transfer: Transfer {
                direction,
                reference: reference.to_owned(),
                digest: digest.to_owned(),
                done: 0,
                total,
            },
            reported: 0,
        };
        meter.report();
        meter
    }

    pub(crate) fn add(&mut self, bytes: usize) {
        self.transfer.done += bytes as u64;
        if self.transfer.done >= self.reported + PROGRESS_STEP {
            self.reported = self.transfer.done;
            self.report();
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.transfer.done >= self.transfer.total
    }

    pub(crate) fn finish(&mut self) {
        if self.reported != self.transfer.done || self.transfer.done == 0 {
            self.reported = self.transfer.done;
            self.report();
        }
    }

    fn report(&self) {
        if let Some(sink) = &self.sink {
            sink(&self.transfer);
        }
    }
}
