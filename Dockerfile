# syntax=docker/dockerfile:1
# Images of the distributed deployment (docker-compose.yml), from one build of the binary:
#   builder    compiles `framework` (release) on the Rust toolchain image
#   framework  the binary on debian:bookworm-slim, with idcards/models/expectations and the Olist
#              sample under /opt/olist (gateway, bronze workers, one-off commands)
#   airflow    apache/airflow with the binary, for the tasks of the generated DAGs
#
#   docker build --target framework -t olist-lake/framework .
#   docker run --rm olist-lake/framework validate
#
# The builder and the runtime images are all Debian bookworm (apache/airflow too), so the binary
# finds the same glibc everywhere.

ARG RUST_VERSION=1.95
ARG AIRFLOW_VERSION=3.1.8

FROM rust:${RUST_VERSION}-bookworm AS builder
# librdkafka is compiled from source by rdkafka-sys (cmake/configure, a C/C++ toolchain, Python
# for its build scripts); zlib and OpenSSL through pkg-config.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake pkg-config python3 libssl-dev libcurl4-openssl-dev zlib1g-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY framework ./framework
# The binary embeds the idcard JSON Schema (include_str!).
COPY idcards ./idcards
# The registry and target caches survive between builds (BuildKit); the binary is copied out
# of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p framework --bin framework \
 && install -m 0755 target/release/framework /usr/local/bin/framework

FROM debian:bookworm-slim AS framework
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 olist \
 && useradd --system --uid 10001 --gid olist --home-dir /opt/olist --shell /usr/sbin/nologin olist
COPY --from=builder /usr/local/bin/framework /usr/local/bin/framework
WORKDIR /opt/olist
COPY idcards ./idcards
COPY models ./models
COPY expectations ./expectations
COPY data/olist_sample ./data/olist_sample
# ./lake is the default lake (no FRAMEWORK_LAKE): writable by the runtime user. docker-compose.yml
# sets FRAMEWORK_LAKE=s3://lakehouse/olist (MinIO); /lake is a spare mount point for a local lake.
RUN mkdir -p /opt/olist/lake /opt/olist/keys /opt/olist/gateway-state /lake && chown olist:olist /opt/olist/lake /opt/olist/keys /opt/olist/gateway-state && chmod 1777 /lake
ENV FRAMEWORK_IDCARDS=/opt/olist/idcards \
    FRAMEWORK_MODELS=/opt/olist/models \
    FRAMEWORK_EXPECTATIONS=/opt/olist/expectations \
    FRAMEWORK_DATA=/opt/olist/data/olist_sample
USER olist
ENTRYPOINT ["framework"]
CMD ["--help"]

FROM apache/airflow:${AIRFLOW_VERSION} AS airflow
COPY --from=builder /usr/local/bin/framework /usr/local/bin/framework
USER root
RUN mkdir -p /lake && chmod 1777 /lake
USER airflow
# The idcards, models, expectations and sample are mounted at /opt/olist by docker-compose.yml.
ENV FRAMEWORK_IDCARDS=/opt/olist/idcards \
    FRAMEWORK_MODELS=/opt/olist/models \
    FRAMEWORK_EXPECTATIONS=/opt/olist/expectations \
    FRAMEWORK_DATA=/opt/olist/data/olist_sample
