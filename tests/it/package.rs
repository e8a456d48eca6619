//! The Debian package: built with cargo-deb, unpacked into a throwaway root, and the
//! installed binary run. Needs cargo-deb (`.ci/run` installs it); without it the test says
//! so and passes only outside CI.

use std::path::Path;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_package_installs_a_working_sisy_with_its_unit_config_and_docs() {
    if !have("cargo-deb") || !have("dpkg-deb") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have cargo-deb and dpkg-deb (see .ci/run)"
        );
        eprintln!("skipped: cargo-deb or dpkg-deb is not installed");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let build = Command::new(repo.join("packaging/build-deb.sh"))
        .arg("--output")
        .arg(out.path())
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "build-deb failed: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let info = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: sisyphus"), "{info}");
    let root = tempfile::tempdir().unwrap();
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path())
        .status()
        .unwrap();
    assert!(status.success());

    let sisy = root.path().join("usr/bin/sisy");
    let version = Command::new(&sisy).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("sisy {}", env!("CARGO_PKG_VERSION"))
    );
    let check = Command::new(&sisy)
        .args([
            "schedule",
            "check",
            "@daily",
            "--after",
            "2026-11-22T07:00:00Z",
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        "2026-11-23 00:00:00 UTC (+00:00)  2026-11-23 00:00:00 UTC\n"
    );

    // The shipped config is valid as it is (every key commented out: the defaults).
    let config = root.path().join("etc/sisyphus/guardian.toml");
    let checked = Command::new(&sisy)
        .args(["guardian", "--check-config", "--config"])
        .arg(&config)
        .env(
            "SISY_DATABASE_URL",
            "postgres://sisy:hunter2@db.invalid/sisyphus",
        )
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        printed.contains("capacity = 16") && !printed.contains("hunter2"),
        "{printed}"
    );

    for file in [
        "usr/lib/systemd/system/sisyphus-guardian.service",
        "usr/share/man/man1/sisy.1.gz",
        "usr/share/man/man1/sisy-guardian.1.gz",
        "usr/share/bash-completion/completions/sisy",
        "usr/share/doc/sisyphus/sisyphus-guardian-hardening.conf",
    ] {
        assert!(root.path().join(file).exists(), "the package lacks /{file}");
    }
    let ctrl = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --ctrl-tarfile {} | tar -xO ./conffiles",
            deb.display()
        ))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ctrl.stdout).contains("/etc/sisyphus/guardian.toml"));
}
