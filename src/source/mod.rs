//! Sources fill the world. Two implement the same contract: [`file`] (a directory of
//! manifests) and [`kube`] (an API server). The world, translation, xDS and status do not know
//! which one runs.
//!
//! The contract: a source is a stream of [`Batch`]es ([`Batches`]). The first batch is marked
//! `initial` and holds the source's complete state (possibly empty); nothing is served before
//! it. Every later batch is a set of changes, applied to the world atomically. The stream ends
//! only when the source cannot go on.

pub mod file;
pub mod kube;

use tokio::sync::mpsc;

use crate::world::{Kept, SourceEvent};

/// One atomic set of changes from a source.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<SourceEvent>,
    /// Objects held at their last good version because where they come from cannot be read
    /// now (a file that no longer parses).
    pub kept: Vec<Kept>,
    /// Origins that read cleanly again: what they hold is current again.
    pub healthy: Vec<String>,
    /// How many problems the source found (each already logged with what to do).
    pub problems: usize,
    /// The batch that completes the source's initial state.
    pub initial: bool,
}

/// What a source delivers.
pub type Batches = mpsc::Receiver<Batch>;
