//! The guardian's background services, each found by its name.
pub mod claimer;
pub mod dispatcher;
pub mod heartbeat;
pub mod listener;
pub mod reaper;
pub mod scheduler;
