//! Stopping work from another thread: a [`CancelToken`] is handed to a long call (a conversion,
//! a registration, a replication, an export); [`CancelToken::cancel`] makes that call stop
//! soon after (within 100 ms) and return [`Error::Cancelled`], leaving
//! no output behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A flag shared by its clones: cancel one and every clone is cancelled. The default token is
/// never cancelled unless someone cancels it.
///
/// ```
/// let token = ims::CancelToken::new();
/// let watcher = token.clone();
/// assert!(!watcher.is_cancelled());
/// token.cancel();
/// assert!(watcher.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every call holding a clone of this token to stop. Cannot be undone.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called on this token or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Error::Cancelled)` once cancelled: for the checks between steps of long work.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}
