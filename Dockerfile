# syntax=docker/dockerfile:1
#
# One image for every cartstream service: the whole workspace built in release, every `cartstream-*`
# binary in /usr/local/bin. docker-compose.yml picks the binary per service with `command:`.
#
#   docker build -t cartstream:dev .

FROM rust:1.95.0-bookworm AS builder
# cmake: rdkafka's cmake-build feature; libssl-dev + pkg-config: rdkafka's ssl feature (openssl-sys).
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the registry and incremental artefacts between builds; binaries are copied
# out in the same step because the target/ cache mount is gone once it ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -name 'cartstream-*' ! -name '*.d' -perm -u+x \
         -exec cp {} /out/ \; \
    && ls /out | grep -q . || { echo "no cartstream-* binary was built" >&2; exit 1; }

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/cartstream --create-home cartstream
COPY --from=builder /out/ /usr/local/bin/
USER cartstream
WORKDIR /var/lib/cartstream
# Services listen for /metrics, /healthz and /readyz here (METRICS_ADDR=0.0.0.0:9100 in compose).
EXPOSE 9100
CMD ["cartstream-producer", "--help"]
