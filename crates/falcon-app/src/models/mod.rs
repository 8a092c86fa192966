//! The models a worker serves: the repository file that names them (`repository`), the
//! served set with a queue, metrics and statistics per model (`registry`), and the
//! statistics themselves (`stats`).

mod registry;
pub mod repository;
mod stats;

pub use registry::{IndexEntry, Loaded, ModelChangeError, ModelLoader, QueueShape, Registry, ServedModel};
pub use repository::{DEFAULT_MODEL, ModelSpec, Repository, RepositoryError};
pub use stats::{ModelStats, StatsSnapshot, Timed};
