//! Flow-matching mathematics: schedulers, affine probability paths and training-time sampling.
//!
//! Convention everywhere in FlowLab: **t = 0 is the source (noise, x_0 ~ N(0, I)
//! by default, see [`Source`]) and t = 1 is the data (x_1)**. Sampling integrates the learned velocity from
//! t = 0 to t = 1.

pub mod change;
pub mod coupling;
pub mod manifold;
pub mod path;
pub mod scheduler;
pub mod source;
pub mod time;

pub use change::SchedulerChange;
pub use coupling::Coupling;
pub use manifold::Manifold;
pub use path::{AffinePath, PathSample};
pub use scheduler::{Scheduler, SchedulerOutput};
pub use source::Source;
pub use time::TimeSampling;
