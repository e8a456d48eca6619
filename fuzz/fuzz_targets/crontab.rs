//! Fuzz target for the crontab importer: `crontab::parse` on any text, read both as a user
//! crontab and as a system one (`/etc/crontab`, with a user field).
//!
//! Beyond "does not panic" it checks what the CLI relies on when it inserts the jobs: job
//! names are unique within the file (`sisy.jobs.name` is UNIQUE), and every job, note and
//! error points at a line of the file.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use sisyphus::crontab::{self, ImportOptions};

fuzz_target!(|data: &[u8]| {
    // The CLI refuses a file that is not UTF-8 before parsing; lossy decoding lets every
    // input reach the parser instead of being thrown away.
    let text = String::from_utf8_lossy(data);
    let lines = text.split('\n').count();
    let user = ImportOptions {
        system: false,
        source: "fuzz".to_owned(),
        run_as: None,
        pool: "default".to_owned(),
        timezone: None,
    };
    let system = ImportOptions {
        system: true,
        source: "crontab".to_owned(),
        run_as: Some("alice".to_owned()),
        pool: "web".to_owned(),
        timezone: Some("Europe/Amsterdam".to_owned()),
    };
    for opts in [user, system] {
        let import = crontab::parse(&text, &opts);
        let mut names = HashSet::new();
        for job in &import.jobs {
            assert!(names.insert(&job.name), "duplicate name {}", job.name);
            assert!((1..=lines).contains(&job.line), "line {}", job.line);
        }
        for note in import.notes.iter().chain(&import.errors) {
            assert!(note.line <= lines, "note on line {}", note.line);
        }
    }
});
