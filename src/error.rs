//! The library's typed error. Every fallible public function returns [`Result`].
//!
//! Messages are written for the person using FlowLab: they say what failed and
//! name the file involved, so the CLI and the app can show them unchanged.

use std::path::PathBuf;

/// Everything that can go wrong inside the FlowLab engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, device error, ...).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A data file (IDX, gzip) is corrupt, truncated or of the wrong kind.
    #[error("bad data file {path}: {reason}")]
    DataFile {
        /// The file involved (or the name of an embedded asset).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A checkpoint file cannot be used.
    #[error("cannot load checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The training loss (or gradient) became NaN or infinite; the weights of the
    /// last good step were kept.
    #[error(
        "training diverged at step {step}: the {what} is {value} (not finite); the weights of step {last_good_step} were kept — try a lower learning rate or gradient clipping"
    )]
    NonFinite {
        /// The step that produced the non-finite value.
        step: u64,
        /// The last step whose update was applied.
        last_good_step: u64,
        /// "loss" or "gradient norm".
        what: &'static str,
        /// The offending value.
        value: f32,
    },

    /// A computation was stopped on request before it finished.
    #[error("interrupted")]
    Interrupted,
}

/// Shorthand for results of the FlowLab engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// An [`Error::DataFile`] for `path`.
    pub fn data(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::DataFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Checkpoint`] for `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Config`].
    pub fn config(reason: impl Into<String>) -> Self {
        Error::Config(reason.into())
    }
}
