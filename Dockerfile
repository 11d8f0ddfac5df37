# syntax=docker/dockerfile:1
# The audrey-federation sidecar image, as the Helm chart's default image refers to it
# (ghcr.io/audrey-federation/audrey-federation:<appVersion>).
#
#   docker build -t ghcr.io/audrey-federation/audrey-federation:0.1.0 .
#
# Stage 1 builds the release binary exactly as `cargo build --release --locked` does; stage 2
# is a distroless base (glibc, CA certificates, no shell) running as the non-root user 65532,
# the uid the chart's securityContext expects.

FROM rust:1.95-bookworm AS build
# aws-lc-rs (rustls' crypto provider) builds C code: it needs cmake, clang is optional.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the bench target, so its source must be present.
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin audrey-federation \
 && install -D -m 0755 target/release/audrey-federation /out/audrey-federation

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/audrey-federation /usr/local/bin/audrey-federation
USER 65532:65532
# proxy, admin (/healthz, /readyz, /metrics)
EXPOSE 8443 9464
VOLUME ["/var/lib/audrey-federation"]
ENTRYPOINT ["/usr/local/bin/audrey-federation"]
CMD ["run", "--config", "/etc/audrey-federation/config.toml"]
