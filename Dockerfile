# baton in a container: a static (musl) binary on an empty base image, run as a non-root user.
#
#   docker build --build-arg BATON_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" -t baton .
#   docker run -p 8080:8080 baton
#   docker run -p 8080:8080 -v "$PWD/config:/app/config:ro" baton    # your own config
#
# Layout inside the image:
#   /baton         the binary (the entrypoint)
#   /app           working directory
#   /app/config    default.toml (+ <BATON_ENV>.toml); mount a directory here to replace it
#   /app/run       pid and state files (owned by 65532; with a read-only root file system,
#                  mount a writable volume here)
#   /app/data      the SQLite database (database.url's default, sqlite://data/baton.db), owned
#                  by 65532: mount a volume here, or the data goes with the container. With
#                  PostgreSQL (BATON_DATABASE__URL=postgres://...) nothing is written here.
#
# baton runs as PID 1 here, so it starts its supervisor: PID 1 keeps the sockets and never
# exits during an upgrade, `docker kill --signal USR2` starts a new worker and drains the old
# one while the container keeps running, USR1/HUP reload the configuration, and
# `docker stop` (SIGTERM) drains and exits 0 within lifecycle.shutdown_timeout (30s by
# default: keep `docker stop -t` above it).
#
# Two ways to get the binary into the image; both end in the same layout:
# - `runtime` (the default, last stage): builds it from source in a Rust image.
# - `prebuilt`: takes it from a context prepared on the host, for machines without access to
#   an image registry (no Rust image to pull) and for CI, which already built the binary:
#     cargo build --release --target x86_64-unknown-linux-musl
#     context/ = baton (that binary, stripped), config/, empty run/ and data/
#     podman build --format docker --target prebuilt -f Dockerfile context/
#   scripts/container-test.sh does exactly this.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
# build: the static binary, from source.
FROM rust:${RUST_VERSION}-slim AS build
ARG TARGET=x86_64-unknown-linux-musl
# No .git in the build context: the build id comes from here (see build.rs).
ARG BATON_GIT_COMMIT=unknown
# SQLite is compiled in (C), and so is ring's crypto for TLS to PostgreSQL: a musl C compiler.
# Not pinned: the Rust image's Debian release decides the version, and a pin would break at its
# next point release; the compiler only builds, it is not in the image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add "${TARGET}"
WORKDIR /src
COPY . .
# The release profile keeps line tables for backtraces; the image drops them (38 MB -> 6 MB).
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target "${TARGET}" --bin baton \
    && mkdir -p /out/run /out/data \
    && cp "target/${TARGET}/release/baton" /out/baton

# ---------------------------------------------------------------------------------------------
# image: everything but the binary, shared by the two final stages.
FROM scratch AS image
WORKDIR /app
COPY config/ /app/config/
# Inside the container the server listens on all interfaces; publish it with -p. The admin
# listener (/-/status, /metrics) stays on the container's loopback unless configured.
ENV BATON_SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080
# SIGTERM drains (lame duck, then graceful); a second one exits at once.
STOPSIGNAL SIGTERM
USER 65532:65532
# Exec form: there is no shell in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/baton", "health"]
ENTRYPOINT ["/baton"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
# prebuilt: the binary from the build context (see the top of this file).
FROM image AS prebuilt
COPY baton /baton
COPY --chown=65532:65532 run/ /app/run/
COPY --chown=65532:65532 data/ /app/data/

# ---------------------------------------------------------------------------------------------
# runtime (default): the binary built above.
FROM image AS runtime
COPY --from=build /out/baton /baton
COPY --from=build --chown=65532:65532 /out/run/ /app/run/
COPY --from=build --chown=65532:65532 /out/data/ /app/data/
