//! The plan of a re-import, from entries and jobs written out by hand.

use serde_json::{Map, Value, json};

use super::*;

fn entry(name: &str, schedule: &str, command: &str) -> JobDef {
    JobDef {
        name: name.to_owned(),
        command: command.to_owned(),
        schedule: schedule.to_owned(),
        timezone: "UTC".to_owned(),
        run_as: None,
        env: Map::new(),
        pool: "default".to_owned(),
        line: 1,
    }
}

fn job(id: i64, name: &str, schedule: &str, command: &str, source: Option<&str>) -> Existing {
    Existing {
        id,
        name: name.to_owned(),
        source: source.map(str::to_owned),
        command: command.to_owned(),
        schedule: Some(schedule.to_owned()),
        timezone: "UTC".to_owned(),
        pool: "default".to_owned(),
        run_as: None,
        env: Env::Values(json!({})),
        suspended: false,
    }
}

const OPTS: Options = Options {
    source: "/etc/cron.d/x",
    suspend_removed: false,
    adopt: false,
};

fn summary(changes: &[Change]) -> Vec<(Action, &str, Option<i64>, Option<&str>)> {
    changes
        .iter()
        .map(|c| (c.action, c.name.as_str(), c.id, c.was.as_deref()))
        .collect()
}

#[test]
fn same_names_are_unchanged_or_updated() {
    let mut env_changed = entry("b", "0 2 * * *", "backup");
    env_changed
        .env
        .insert("A".into(), Value::String("2".into()));
    let wanted = [entry("a", "* * * * *", "check"), env_changed];
    let existing = [
        job(1, "a", "* * * * *", "check", Some(OPTS.source)),
        job(2, "b", "0 2 * * *", "backup", Some(OPTS.source)),
    ];
    let changes = plan(&wanted, &existing, &OPTS).unwrap();
    assert_eq!(
        summary(&changes),
        [
            (Action::Unchanged, "a", Some(1), None),
            (Action::Update, "b", Some(2), None)
        ]
    );
    assert_eq!(changes[1].fields, ["env"]);
}

#[test]
fn an_edited_entry_updates_its_job_in_place() {
    // New schedule (same command), new command (same schedule), one gone, one new.
    let wanted = [
        entry("b2", "0 3 * * *", "backup"),
        entry("r2", "0 4 * * *", "report --all"),
        entry("n", "0 5 * * *", "new"),
    ];
    let existing = [
        job(1, "b1", "0 2 * * *", "backup", Some(OPTS.source)),
        job(2, "r1", "0 4 * * *", "report", Some(OPTS.source)),
        job(3, "gone", "0 6 * * *", "old", Some(OPTS.source)),
    ];
    let changes = plan(&wanted, &existing, &OPTS).unwrap();
    assert_eq!(
        summary(&changes),
        [
            (Action::Update, "b2", Some(1), Some("b1")),
            (Action::Update, "r2", Some(2), Some("r1")),
            (Action::Create, "n", None, None),
            (Action::Remove, "gone", Some(3), None),
        ]
    );
    assert_eq!(changes[0].fields, ["name", "schedule"]);
    assert_eq!(changes[1].fields, ["name", "command"]);
}

#[test]
fn ambiguous_edits_are_not_paired() {
    // Two jobs ran `backup`; one entry of `backup` remains with a new schedule: which job it
    // continues is a guess, so neither is renamed.
    let wanted = [entry("b3", "0 3 * * *", "backup")];
    let existing = [
        job(1, "b1", "0 1 * * *", "backup", Some(OPTS.source)),
        job(2, "b2", "0 2 * * *", "backup", Some(OPTS.source)),
    ];
    let changes = plan(&wanted, &existing, &OPTS).unwrap();
    assert_eq!(
        summary(&changes),
        [
            (Action::Create, "b3", None, None),
            (Action::Remove, "b1", Some(1), None),
            (Action::Remove, "b2", Some(2), None),
        ]
    );
}

#[test]
fn removed_entries_can_be_suspended_instead() {
    let opts = Options {
        suspend_removed: true,
        ..OPTS
    };
    let mut already = job(2, "z", "0 2 * * *", "b", Some(OPTS.source));
    already.suspended = true;
    let existing = [job(1, "y", "0 1 * * *", "a", Some(OPTS.source)), already];
    let changes = plan(&[], &existing, &opts).unwrap();
    assert_eq!(
        summary(&changes),
        [
            (Action::Suspend, "y", Some(1), None),
            (Action::Unchanged, "z", Some(2), None)
        ]
    );
}

#[test]
fn other_jobs_are_never_taken_over() {
    let wanted = [entry("a", "* * * * *", "check")];
    let by_hand = [job(1, "a", "0 1 * * *", "mine", None)];
    let err = plan(&wanted, &by_hand, &OPTS).unwrap_err().to_string();
    assert!(err.contains("'a'") && err.contains("--adopt"), "{err}");
    let other = [job(1, "a", "* * * * *", "check", Some("/elsewhere"))];
    let err = plan(&wanted, &other, &OPTS).unwrap_err().to_string();
    assert!(err.contains("imported from '/elsewhere'"), "{err}");
    // Jobs of another source that no entry names are none of this import's business.
    let unrelated = [job(1, "z", "* * * * *", "check", Some("/elsewhere"))];
    let changes = plan(&wanted, &unrelated, &OPTS).unwrap();
    assert_eq!(summary(&changes), [(Action::Create, "a", None, None)]);
    // --adopt takes over a job without a source, never one of another source.
    let adopt = Options {
        adopt: true,
        ..OPTS
    };
    let changes = plan(&wanted, &by_hand, &adopt).unwrap();
    assert_eq!(summary(&changes), [(Action::Update, "a", Some(1), None)]);
    assert_eq!(changes[0].fields, ["command", "schedule", "source"]);
    assert!(plan(&wanted, &other, &adopt).is_err());
}

#[test]
fn env_known_by_names_only_shows_a_changed_name_but_not_a_changed_value() {
    let names = |n: &[&str]| Env::Names(n.iter().map(|s| s.to_string()).collect());
    assert!(!env_differs(
        &names(&["b", "A"]),
        &json!({"A": "1", "b": "2"})
    ));
    assert!(env_differs(&names(&["A"]), &json!({"A": "1", "b": "2"})));
    assert!(env_differs(&names(&["A"]), &json!({})));
    assert!(env_differs(
        &Env::Values(json!({"A": "1"})),
        &json!({"A": "2"})
    ));
}
