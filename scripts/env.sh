# Shared settings of the scripts: build output and the Python venv live outside the clone, in the
# user's cache folder, so every clone on a machine reuses them.
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/olist-lake"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
VENV="$CACHE_DIR/venv"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Every clone builds into the same folder, and cargo gives a workspace crate's build the same
# name in each clone and calls it up to date when the clone's files are older than the build: a
# clone edited before another clone was built would run the other clone's code (seen on
# 2026-12-06: a clone's tests ran a second clone's binaries). So when the last clone to claim the
# folder was another one, this clone's Rust files are touched and the crate is built again (the
# dependencies stay cached). Two clones building at the same moment can still swap builds.
claim_target_dir() {
  local marker="$CARGO_TARGET_DIR/.claimed-by"
  if [ "$(cat "$marker" 2>/dev/null)" != "$REPO" ]; then
    find "$REPO/framework" -type f -name '*.rs' -exec touch {} +
    mkdir -p "$CARGO_TARGET_DIR"
    echo "$REPO" > "$marker"
  fi
}
claim_target_dir

# The Python venv with deltalake and pandas (independent Delta reader in tests; benchmark peer).
ensure_venv() {
  local stamp="$VENV/.requirements.sha"
  local want
  want="$(sha256sum "$REPO/bench/requirements.txt" | cut -d' ' -f1)"
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== setting up the Python venv at $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -r "$REPO/bench/requirements.txt"
    echo "$want" > "$stamp"
  fi
  export FRAMEWORK_TEST_PYTHON="$VENV/bin/python"
}

# Airflow 3 in its own venv, for the tests that import and run the generated DAGs (~1 min once).
ensure_airflow() {
  local venv="$CACHE_DIR/airflow-venv"
  local stamp="$venv/.requirements.sha"
  local want
  want="$(sha256sum "$REPO/bench/requirements-airflow.txt" | cut -d' ' -f1)"
  if [ ! -x "$venv/bin/airflow" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== setting up the Airflow venv at $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r "$REPO/bench/requirements-airflow.txt"
    echo "$want" > "$stamp"
  fi
  export FRAMEWORK_TEST_AIRFLOW="$venv/bin"
}

# s3s-fs, an S3-compatible server on a folder, for the tests of a lake on an object store
# (compiled once by cargo, ~3 min). 0.14.1: later versions need a newer rustc.
ensure_s3fs() {
  if ! command -v s3s-fs >/dev/null 2>&1; then
    echo "== installing the s3s-fs object store (cargo install, once)"
    cargo install s3s-fs --version 0.14.1 --features binary --locked
  fi
  FRAMEWORK_TEST_S3FS="$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")"
  export FRAMEWORK_TEST_S3FS
}

# Tansu, the Kafka-protocol broker the Kafka tests start (compiled once by cargo, ~10 min).
ensure_tansu() {
  if ! command -v tansu >/dev/null 2>&1; then
    echo "== installing the Tansu broker (cargo install, once)"
    cargo install tansu --locked --features dynostore,libsql
  fi
  FRAMEWORK_TEST_TANSU="$(command -v tansu || echo "$HOME/.cargo/bin/tansu")"
  export FRAMEWORK_TEST_TANSU
}
