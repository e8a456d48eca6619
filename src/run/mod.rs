//! What runs one job.
pub mod launch;
pub mod orphans;
pub mod recorder;
pub mod shim;
pub mod spool;
pub mod supervisor;
pub mod users;
