# Multi-stage build: the web panel (Node), a Rust builder that embeds it (cargo feature `panel`),
# then a small non-root runtime image.
FROM node:22-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
COPY --from=web /web/dist web/dist
RUN cargo build --release --bin claude-relay --features panel && strip target/release/claude-relay

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /data relay && mkdir -p /data /etc/claude-relay && chown relay /data
COPY --from=build /src/target/release/claude-relay /usr/local/bin/claude-relay
COPY conf/relay.yaml /etc/claude-relay/relay.yaml
USER relay
WORKDIR /data
ENV RELAY_DATA_DIR=/data RELAY_LISTEN=0.0.0.0:3000 RELAY_ADMIN_LISTEN=0.0.0.0:3001
EXPOSE 3000 3001
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/claude-relay", "--config", "/etc/claude-relay/relay.yaml"]
