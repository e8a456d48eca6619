#!/usr/bin/env bash
# Builds the Debian package: target/debian/sisyphus_VERSION_ARCH.deb
#
#   packaging/build-deb.sh
#
# Needs cargo-deb (`cargo install cargo-deb`). Builds the release binary, generates the man
# pages and shell completions from the CLI definition (`cargo xtask generate`), then packages
# them with the unit and the example config as described in Cargo.toml's
# [package.metadata.deb].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -f $HOME/.cargo/env ]]; then source "$HOME/.cargo/env"; fi
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb is missing: cargo install cargo-deb" >&2; exit 1; }
cargo build --release --locked --bin sisy
# Generated assets live in ./target/generated whatever CARGO_TARGET_DIR says: Cargo.toml
# names them by that path.
rm -rf target/generated
cargo --locked xtask generate --out target/generated
cargo deb --no-build --locked "$@"
