//! The debug builds' fault hook, and the words for a panic.
//!
//! `SISY_TEST_FAULT=<service>:<panic|end>[:<file>]` makes the named service (or, for
//! `supervisor`, every run's supervisor task) panic or return, once `<file>` exists when one
//! is given. The integration tests use it, since no real trigger makes a service die;
//! release builds ignore the variable. Does not own watching the services (guardian).

use std::any::Any;
use std::time::Duration;

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// The test fault hook for `name` (see the module doc): resolves when the service is to
/// end, panics when it is to panic, and never resolves otherwise.
pub(crate) async fn fault(name: &str) {
    let Some((mode, file)) = fault_for(name) else {
        return std::future::pending().await;
    };
    if let Some(file) = file {
        while !std::path::Path::new(&file).exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if mode == "panic" {
        panic!("test fault injected into the {name} service (SISY_TEST_FAULT)");
    }
    tracing::warn!(
        service = name,
        "test fault: the service ends (SISY_TEST_FAULT)"
    );
}

/// `SISY_TEST_FAULT`'s mode and file for `name`, in debug builds only.
fn fault_for(name: &str) -> Option<(String, Option<String>)> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let spec = std::env::var("SISY_TEST_FAULT").ok()?;
    let mut parts = spec.splitn(3, ':');
    if parts.next()? != name {
        return None;
    }
    let mode = parts.next().unwrap_or("panic").to_string();
    Some((mode, parts.next().map(str::to_string)))
}

/// Panics when the fault hook names `name` (for code that is not a service loop: a run's
/// supervisor task).
pub(crate) fn fault_point(name: &str) {
    if fault_for(name).is_some() {
        panic!("test fault injected into the {name} (SISY_TEST_FAULT)");
    }
}
