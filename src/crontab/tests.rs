//! Unit tests of crontab import: line syntax, variables, `%` and SHELL translation, names.

use super::*;

fn user_opts() -> ImportOptions {
    ImportOptions {
        system: false,
        source: "alice".to_owned(),
        run_as: Some("alice".to_owned()),
        pool: "default".to_owned(),
        timezone: None,
    }
}

fn system_opts() -> ImportOptions {
    ImportOptions {
        system: true,
        source: "crontab".to_owned(),
        run_as: None,
        pool: "web".to_owned(),
        timezone: None,
    }
}

/// Parses a file that must have no errors.
fn jobs(text: &str, opts: &ImportOptions) -> Vec<JobDef> {
    let import = parse(text, opts);
    assert!(import.errors.is_empty(), "{:?}", import.errors);
    import.jobs
}

fn only_error(text: &str, opts: &ImportOptions) -> Note {
    let import = parse(text, opts);
    assert!(import.jobs.is_empty(), "{:?}", import.jobs);
    assert_eq!(import.errors.len(), 1, "{:?}", import.errors);
    import.errors[0].clone()
}

fn has_note(import: &Import, line: usize, words: &str) -> bool {
    import
        .notes
        .iter()
        .any(|n| n.line == line && n.message.contains(words))
}

/// What `/bin/sh -c command` prints, with stdin from /dev/null as the guardian runs it.
fn run_sh(command: &str) -> String {
    let output = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run /bin/sh");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn env_of(job: &JobDef, name: &str) -> Option<String> {
    job.env.get(name).map(|v| v.as_str().unwrap().to_owned())
}

#[test]
fn comments_blank_lines_and_crlf_are_handled() {
    let text = "# a comment\r\n\r\n   \t# indented comment\r\n  \r\n*/5 * * * * echo hi\r\n";
    let jobs = jobs(text, &user_opts());
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].command, "echo hi");
    assert_eq!(jobs[0].schedule, "*/5 * * * *");
    assert_eq!(jobs[0].line, 5);
    assert_eq!(jobs[0].run_as.as_deref(), Some("alice"));
    assert_eq!(jobs[0].pool, "default");
}

#[test]
fn a_hash_inside_an_entry_belongs_to_the_command() {
    let jobs = jobs("0 1 * * * echo a # not a comment\n", &user_opts());
    assert_eq!(jobs[0].command, "echo a # not a comment");
}

#[test]
fn blanks_between_fields_are_normalised_in_the_schedule() {
    let jobs = jobs("0  1\t*  * *\t  ls -l   \n", &user_opts());
    assert_eq!(jobs[0].schedule, "0 1 * * *");
    assert_eq!(jobs[0].command, "ls -l");
}

#[test]
fn variables_go_to_the_env_of_later_entries_only() {
    let text = "0 0 * * * first\nPATH=/opt/bin:/usr/bin\nFOO = bar baz  \n0 1 * * * second\nFOO=other\n0 2 * * * third\n";
    let jobs = jobs(text, &user_opts());
    assert!(jobs[0].env.is_empty());
    assert_eq!(
        env_of(&jobs[1], "PATH").as_deref(),
        Some("/opt/bin:/usr/bin")
    );
    assert_eq!(env_of(&jobs[1], "FOO").as_deref(), Some("bar baz"));
    assert_eq!(env_of(&jobs[2], "FOO").as_deref(), Some("other"));
}

#[test]
fn quoted_values_lose_one_pair_of_matching_quotes() {
    let text = "A='x y'\nB=\"it's\"\nC='unbalanced\nD=\"\"\n\"E\"=1\n0 0 * * * true\n";
    let job = &jobs(text, &user_opts())[0];
    assert_eq!(env_of(job, "A").as_deref(), Some("x y"));
    assert_eq!(env_of(job, "B").as_deref(), Some("it's"));
    assert_eq!(env_of(job, "C").as_deref(), Some("'unbalanced"));
    assert_eq!(env_of(job, "D").as_deref(), Some(""));
    assert_eq!(env_of(job, "E").as_deref(), Some("1"));
}

#[test]
fn cron_tz_applies_only_to_later_entries() {
    let text =
        "0 2 * * * before\nCRON_TZ=Europe/Amsterdam\n0 2 * * * after\nCRON_TZ=\n0 2 * * * reset\n";
    let import = parse(text, &user_opts());
    assert!(import.errors.is_empty());
    let zones: Vec<&str> = import.jobs.iter().map(|j| j.timezone.as_str()).collect();
    assert_eq!(zones, ["UTC", "Europe/Amsterdam", "UTC"]);
    assert!(import.jobs.iter().all(|j| !j.env.contains_key("CRON_TZ")));
    assert!(has_note(&import, 1, "CRON_TZ"), "{:?}", import.notes);
}

#[test]
fn a_default_zone_applies_where_no_cron_tz_does() {
    let opts = ImportOptions {
        timezone: Some("America/New_York".to_owned()),
        ..user_opts()
    };
    let text =
        "0 2 * * * before\nCRON_TZ=Europe/Amsterdam\n0 2 * * * after\nCRON_TZ=\n0 2 * * * reset\n";
    let import = parse(text, &opts);
    let zones: Vec<&str> = import.jobs.iter().map(|j| j.timezone.as_str()).collect();
    assert_eq!(
        zones,
        ["America/New_York", "Europe/Amsterdam", "America/New_York"]
    );
    assert!(!has_note(&import, 1, "CRON_TZ"), "{:?}", import.notes);
    // The zone is part of the name: the same entry read in another zone is another job.
    assert_ne!(
        import.jobs[0].name,
        jobs("0 2 * * * before\n", &user_opts())[0].name
    );
}

#[test]
fn an_unknown_cron_tz_is_an_error_for_its_line() {
    let import = parse("CRON_TZ=Mars/Olympus\n0 2 * * * x\n", &user_opts());
    assert_eq!(import.errors.len(), 1);
    assert_eq!(import.errors[0].line, 1);
    assert!(import.errors[0].message.contains("Mars/Olympus"));
}

#[test]
fn tz_is_an_environment_variable_not_the_schedule_zone() {
    let import = parse("TZ=Asia/Tokyo\n0 2 * * * date\n", &user_opts());
    let job = &import.jobs[0];
    assert_eq!(job.timezone, "UTC");
    assert_eq!(env_of(job, "TZ").as_deref(), Some("Asia/Tokyo"));
    assert!(has_note(&import, 1, "CRON_TZ"));
}

#[test]
fn another_shell_wraps_the_commands_after_it() {
    let text = "0 0 * * * plain\nSHELL=/bin/bash\n0 1 * * * echo \"it's $((1+1))\" | tr a-z A-Z\nSHELL=/bin/sh\n0 2 * * * plain again\n";
    let import = parse(text, &user_opts());
    let jobs = &import.jobs;
    assert_eq!(jobs[0].command, "plain");
    assert_eq!(
        jobs[1].command,
        r#"exec /bin/bash -c 'echo "it'\''s $((1+1))" | tr a-z A-Z'"#
    );
    assert_eq!(env_of(&jobs[1], "SHELL").as_deref(), Some("/bin/bash"));
    assert_eq!(jobs[2].command, "plain again");
    assert!(!jobs[2].env.contains_key("SHELL"));
    assert!(has_note(&import, 2, "exec /bin/bash -c"));
    if std::path::Path::new("/bin/bash").exists() {
        assert_eq!(run_sh(&jobs[1].command), "IT'S 2\n");
    }
}

#[test]
fn percent_text_reaches_standard_input_through_sh() {
    let import = parse("0 0 * * * cat%line one%line two%\n", &user_opts());
    let job = &import.jobs[0];
    assert_eq!(
        job.command,
        "exec <<'SISY_STDIN'\nline one\nline two\n\nSISY_STDIN\ncat"
    );
    assert_eq!(run_sh(&job.command), "line one\nline two\n\n");
    assert!(has_note(&import, 1, "standard input"));
}

#[test]
fn standard_input_belongs_to_the_whole_command_as_in_cron() {
    // Under cron the data is the shell's stdin: the first command of a list reads it,
    // and a trailing comment cannot swallow it.
    let jobs = jobs("0 0 * * * cat; echo done # note%data\n", &user_opts());
    assert_eq!(run_sh(&jobs[0].command), "data\ndone\n");
}

#[test]
fn an_empty_standard_input_is_empty() {
    let jobs = jobs("0 0 * * * wc -c%\n", &user_opts());
    assert_eq!(run_sh(&jobs[0].command).trim(), "0");
}

#[test]
fn escaped_percent_is_a_literal_percent() {
    let parsed = jobs(r"0 0 * * * date +\%Y-\%m \\n%100\% sure%x\y", &user_opts());
    assert_eq!(
        parsed[0].command,
        "exec <<'SISY_STDIN'\n100% sure\nx\\y\nSISY_STDIN\ndate +%Y-%m \\\\n"
    );
    let plain = jobs(r"0 0 * * * date +\%F", &user_opts());
    assert_eq!(plain[0].command, "date +%F");
    let run = jobs(r"0 0 * * * cat; echo 'a\%b'%100\% sure%x\y", &user_opts());
    assert_eq!(run_sh(&run[0].command), "100% sure\nx\\y\na%b\n");
}

#[test]
fn the_here_document_delimiter_never_occurs_in_the_data() {
    let jobs = jobs("0 0 * * * cat%SISY_STDIN%SISY_STDIN_1%end\n", &user_opts());
    assert!(jobs[0].command.starts_with("exec <<'SISY_STDIN_2'\n"));
    assert_eq!(run_sh(&jobs[0].command), "SISY_STDIN\nSISY_STDIN_1\nend\n");
}

#[test]
fn shell_and_standard_input_combine() {
    let text = "SHELL=/bin/bash\n0 0 * * * tr a-z A-Z%it's here\n";
    let job = &jobs(text, &user_opts())[0];
    assert_eq!(
        job.command,
        "exec <<'SISY_STDIN'\nit's here\nSISY_STDIN\nexec /bin/bash -c 'tr a-z A-Z'"
    );
    if std::path::Path::new("/bin/bash").exists() {
        assert_eq!(run_sh(&job.command), "IT'S HERE\n");
    }
}

#[test]
fn reboot_is_refused_with_a_way_out() {
    let error = only_error("@reboot /usr/local/bin/warm-cache\n", &user_opts());
    assert_eq!(error.line, 1);
    assert!(error.message.contains("no boot-time jobs"));
    assert!(error.message.contains("systemd"));
    let error = only_error("@REBOOT root x\n", &system_opts());
    assert!(error.message.contains("@reboot"));
}

#[test]
fn macros_are_accepted() {
    let text = "@hourly a\n@daily b\n@midnight c\n@weekly d\n@monthly e\n@yearly f\n@annually g\n";
    let jobs = jobs(text, &user_opts());
    assert_eq!(jobs.len(), 7);
    assert_eq!(jobs[1].schedule, "@daily");
    assert_eq!(jobs[1].command, "b");
}

#[test]
fn a_bad_schedule_is_refused_naming_the_field() {
    let error = only_error("# x\n61 * * * * echo\n", &user_opts());
    assert_eq!(error.line, 2);
    assert!(error.message.contains("minute"), "{}", error.message);
    let error = only_error("0 0 * * funday echo\n", &user_opts());
    assert!(error.message.contains("day-of-week"), "{}", error.message);
    let error = only_error("@fortnightly echo\n", &user_opts());
    assert!(error.message.contains("@fortnightly"), "{}", error.message);
}

#[test]
fn entries_without_a_command_are_refused() {
    assert!(
        only_error("* * * *\n", &user_opts())
            .message
            .contains("5 time fields")
    );
    assert!(
        only_error("* * * * *  \n", &user_opts())
            .message
            .contains("no command")
    );
    assert!(
        only_error("@daily\n", &user_opts())
            .message
            .contains("no command")
    );
    assert!(
        only_error("* * * * * %only input\n", &user_opts())
            .message
            .contains("no command")
    );
}

#[test]
fn other_lines_are_refused() {
    let error = only_error("echo hello\n", &user_opts());
    assert!(
        error.message.contains("neither an entry nor"),
        "{}",
        error.message
    );
    let import = parse("bad line\n0 0 * * * ok\nfoo bar=1\n", &user_opts());
    assert_eq!(
        import.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
        [1, 3]
    );
}

#[test]
fn system_crontabs_take_the_user_from_the_user_column() {
    let text = "0 3 * * * backup /usr/local/bin/backup --full\n@daily root apt-get update\n";
    let import = parse(text, &system_opts());
    assert!(import.errors.is_empty());
    assert_eq!(import.jobs[0].run_as.as_deref(), Some("backup"));
    assert_eq!(import.jobs[0].command, "/usr/local/bin/backup --full");
    assert_eq!(import.jobs[1].run_as.as_deref(), Some("root"));
    assert_eq!(import.jobs[1].pool, "web");
    assert!(has_note(&import, 2, "root"));
}

#[test]
fn system_entries_need_a_user_and_a_command() {
    let error = only_error("0 3 * * * root\n", &system_opts());
    assert!(
        error.message.contains("too few fields"),
        "{}",
        error.message
    );
    let error = only_error("0 3 * * * /usr/bin/backup --full\n", &system_opts());
    assert!(
        error.message.contains("not a user name"),
        "{}",
        error.message
    );
}

#[test]
fn run_as_of_a_user_crontab_comes_from_the_options() {
    let mut opts = user_opts();
    opts.run_as = None;
    let import = parse("0 0 * * * x\n0 1 * * * y\n", &opts);
    assert_eq!(import.jobs[0].run_as, None);
    assert_eq!(
        import
            .notes
            .iter()
            .filter(|n| n.message.contains("default_user"))
            .count(),
        1
    );
    let mut opts = system_opts();
    opts.run_as = Some("bob".to_owned());
    let import = parse("0 0 * * * alice x\n", &opts);
    assert_eq!(import.jobs[0].run_as.as_deref(), Some("alice"));
    assert!(has_note(&import, 0, "ignored"));
}

const DEBIAN_ETC_CRONTAB: &str = "\
# /etc/crontab: system-wide crontab
# Unlike any other crontab you don't have to run the `crontab'
# command to install the new version when you edit this file
# and files in /etc/cron.d. These files also have username fields,
# that none of the other crontabs do.

SHELL=/bin/sh
# You can also override PATH, but by default, newer versions inherit it from the environment
#PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin

# Example of job definition:
# .---------------- minute (0 - 59)
# |  .------------- hour (0 - 23)
# |  |  .---------- day of month (1 - 31)
# |  |  |  .------- month (1 - 12) OR jan,feb,mar,apr ...
# |  |  |  |  .---- day of week (0 - 6) (Sunday=0 or 7) OR sun,mon,tue,wed,thu,fri,sat
# |  |  |  |  |
# *  *  *  *  * user-name command to be executed
17 *\t* * *\troot\tcd / && run-parts --report /etc/cron.hourly
25 6\t* * *\troot\ttest -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.daily; }
47 6\t* * 7\troot\ttest -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.weekly; }
52 6\t1 * *\troot\ttest -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.monthly; }
#
";

#[test]
fn a_debian_etc_crontab_imports() {
    let import = parse(DEBIAN_ETC_CRONTAB, &system_opts());
    assert!(import.errors.is_empty(), "{:?}", import.errors);
    let summary: Vec<(usize, &str, &str)> = import
        .jobs
        .iter()
        .map(|j| (j.line, j.schedule.as_str(), j.run_as.as_deref().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (19, "17 * * * *", "root"),
            (20, "25 6 * * *", "root"),
            (21, "47 6 * * 7", "root"),
            (22, "52 6 1 * *", "root"),
        ]
    );
    assert_eq!(
        import.jobs[1].command,
        "test -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.daily; }"
    );
    assert!(
        import
            .jobs
            .iter()
            .all(|j| j.env.is_empty() && j.timezone == "UTC")
    );
    assert!(has_note(&import, 19, "no CRON_TZ"));
    let names: HashSet<&str> = import.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names.len(), 4);
}

#[test]
fn names_are_stable_and_identical_entries_get_a_suffix() {
    let text = "0 0 * * * backup\n0 0 * * * backup\n0 0 * * * backup\n";
    let first = parse(text, &user_opts());
    let names: Vec<&str> = first.jobs.iter().map(|j| j.name.as_str()).collect();
    let base = names[0];
    assert!(base.starts_with("cron-alice-") && base.len() == "cron-alice-".len() + 8);
    assert_eq!(names[1], format!("{base}-2"));
    assert_eq!(names[2], format!("{base}-3"));
    assert!(has_note(&first, 2, "line 1"));
    // Moving the entry and reformatting its blanks keeps the name; content changes it.
    let moved = jobs(
        "# new comment\n\nFOO=1\n0  0 * * *   backup\n",
        &user_opts(),
    );
    assert_eq!(moved[0].name, base);
    let other = jobs("0 0 * * * backup2\n", &user_opts());
    assert_ne!(other[0].name, base);
    let zoned = jobs("CRON_TZ=Europe/Paris\n0 0 * * * backup\n", &user_opts());
    assert_ne!(zoned[0].name, base);
    // The hash is ours, so this value holds across Rust versions.
    assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a([]), 0xcbf2_9ce4_8422_2325);
    assert_ne!(fnv1a64(&["ab", "c"]), fnv1a64(&["a", "bc"]));
}

#[test]
fn names_are_safe_whatever_the_source() {
    let mut opts = user_opts();
    opts.source = "my crontab;rm -rf /".to_owned();
    let name = jobs("0 0 * * * x\n", &opts)[0].name.clone();
    assert!(name.starts_with("cron-my-crontab-rm--rf-"), "{name}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    );
    opts.source = "///".to_owned();
    assert!(
        jobs("0 0 * * * x\n", &opts)[0]
            .name
            .starts_with("cron-crontab-")
    );
}

#[test]
fn mail_variables_are_explained_not_applied() {
    let text = "MAILTO=ops@example.com\nMAILFROM=cron@example.com\n0 0 * * * x\n";
    let import = parse(text, &user_opts());
    assert!(import.errors.is_empty());
    assert!(has_note(&import, 1, "MAILTO is not applied"));
    assert!(has_note(&import, 1, "sisy.runs"));
    assert!(has_note(&import, 2, "MAILFROM"));
    assert!(import.jobs[0].env.is_empty());
}

#[test]
fn user_variables_and_random_delay_are_explained_not_applied() {
    let text = "HOME=/srv\nLOGNAME=x\nUSER=x\nRANDOM_DELAY=15\n0 0 * * * x\n";
    let import = parse(text, &user_opts());
    assert!(import.jobs[0].env.is_empty());
    assert!(has_note(&import, 1, "workdir"));
    assert!(has_note(&import, 2, "runs as"));
    assert!(has_note(&import, 3, "LOGNAME"));
    assert!(has_note(&import, 4, "jitter = '15 minutes'"));
}

#[test]
fn the_do_not_log_prefix_is_accepted() {
    let import = parse("-*/10 * * * * x\n", &user_opts());
    assert!(import.errors.is_empty());
    assert_eq!(import.jobs[0].schedule, "*/10 * * * *");
    assert!(has_note(&import, 1, "do not log"));
}
